//! The store contract (`tests/store_contract/`) on the embedded SQLite store, each part on a
//! fresh database.

use std::future::Future;

use builder::adapters::store::{DATABASE, SqliteStore, Store};

mod store_contract;

async fn on_a_fresh_store<F: Future<Output = ()>>(check: impl FnOnce(&'static dyn Store) -> F) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join(DATABASE)).await.unwrap();
    // Leaked for the test's duration: the contract's functions borrow it across awaits.
    check(Box::leak(Box::new(store))).await;
}

#[tokio::test]
async fn a_build_is_recorded_as_it_runs() {
    on_a_fresh_store(store_contract::a_build_is_recorded_as_it_runs).await;
}

#[tokio::test]
async fn the_queue_hands_each_build_out_once_oldest_first() {
    on_a_fresh_store(store_contract::the_queue_hands_each_build_out_once_oldest_first).await;
}

#[tokio::test]
async fn leases_hold_builds_until_they_run_out() {
    on_a_fresh_store(store_contract::leases_hold_builds_until_they_run_out).await;
}

#[tokio::test]
async fn deliveries_queue_their_builds_once() {
    on_a_fresh_store(store_contract::deliveries_queue_their_builds_once).await;
}

#[tokio::test]
async fn replays_and_rejections_are_bounded() {
    on_a_fresh_store(store_contract::replays_and_rejections_are_bounded).await;
}

#[tokio::test]
async fn a_scheduled_run_is_claimed_once() {
    on_a_fresh_store(store_contract::a_scheduled_run_is_claimed_once).await;
}

#[tokio::test]
async fn a_schedule_keeps_its_skipped_runs_pause_and_error() {
    on_a_fresh_store(store_contract::a_schedule_keeps_its_skipped_runs_pause_and_error).await;
}
