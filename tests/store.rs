//! The store contract (`tests/store_contract/`) on both stores, each part on a fresh database:
//! the embedded SQLite store, and PostgreSQL (the server `BUILDER_TEST_POSTGRES` names, by
//! default the one `scripts/dev-env.sh` starts), where each test makes a database of its own and
//! drops it after. Then what only PostgreSQL is for: claimers on several connections at once.

use std::future::Future;

use builder::adapters::runtime::LogStream;
use builder::adapters::store::{
    BuildQuery, Builds as _, Change, DATABASE, Error, Logs as _, PostgresStore, Queue as _,
    QueuedBuild, ResourceKind, ResourceWrite, Resources as _, SqliteStore, Store,
};
use builder::core::build::Request;
use builder::core::triggers::ConcurrencyGroup;

mod common;
mod store_contract;

use common::postgres::{migrated_by_a_newer_builder, on_a_fresh_database};

async fn on_a_fresh_store<F: Future<Output = ()>>(check: impl FnOnce(&'static dyn Store) -> F) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join(DATABASE)).await.unwrap();
    // Leaked for the test's duration: the contract's functions borrow it across awaits.
    check(Box::leak(Box::new(store))).await;
}

async fn on_a_fresh_postgres<F: Future<Output = ()>>(check: impl FnOnce(&'static dyn Store) -> F) {
    on_a_fresh_database(|url| async move {
        let store = PostgresStore::open(&url).await.unwrap();
        // Leaked for the test's duration: the contract's functions borrow it across awaits.
        check(Box::leak(Box::new(store))).await;
    })
    .await;
}

/// Each contract function, on SQLite and on PostgreSQL.
macro_rules! on_both_stores {
    ($($check:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $check() {
                    super::on_a_fresh_store(super::store_contract::$check).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $check() {
                    super::on_a_fresh_postgres(super::store_contract::$check).await;
                }
            )*
        }
    };
}

on_both_stores!(
    a_build_is_recorded_as_it_runs,
    the_queue_hands_each_build_out_once_oldest_first,
    a_group_at_its_limit_waits_for_its_builds_to_end,
    a_build_that_skips_a_full_group_is_queued_only_while_it_has_room,
    leases_hold_builds_until_they_run_out,
    queued_builds_expire_past_their_ttl,
    pending_builds_wait_for_one_decision,
    pools_hand_builds_to_their_own_workers,
    deliveries_queue_their_builds_once,
    replays_and_rejections_are_bounded,
    the_latest_delivery_of_a_pull_request_is_kept,
    a_scheduled_run_is_claimed_once,
    a_schedule_keeps_its_skipped_runs_pause_and_error,
    reports_follow_their_build_until_its_end_is_told,
    reports_claimed_at_once_go_to_one_reporter_each,
    every_status_a_build_takes_is_published_once_in_order,
    notifications_are_due_until_delivered_or_given_up,
    retention_removes_what_is_old_and_finished_only,
    an_upload_is_read_back_whole_in_chunks,
    resources_are_kept_by_kind_and_name,
    workers_beat_and_list_their_builds,
);

/// Stores opened on one new SQLite database at once (processes do: `submit --async` and a
/// follower of its log) all open it: one migrates, the others find it migrated.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_stores_opened_at_once_on_a_new_database_all_open() {
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DATABASE);
        let opens = (0..4).map(|_| {
            let path = path.clone();
            tokio::spawn(async move { SqliteStore::open(&path).await.map(drop) })
        });
        for opened in futures_util::future::join_all(opens).await {
            opened.unwrap().expect("the store opens");
        }
    }
}

/// What four claimers, each on a connection of its own (as four machines would be), claim from
/// the database at `url` at once, each claiming until it finds nothing to claim.
async fn claim_on_four_machines(url: &str) -> Vec<String> {
    let mut claimers = tokio::task::JoinSet::new();
    for claimer in 0..4 {
        let store = PostgresStore::open(url).await.unwrap();
        claimers.spawn(async move {
            let lease = store_contract::lease(&format!("claimer-{claimer}"), 30);
            let mut claimed = Vec::new();
            while let Some(build) = store.claim_queued(&lease, None).await.unwrap() {
                claimed.push(build.id);
            }
            claimed
        });
    }
    let mut claimed = Vec::new();
    while let Some(ids) = claimers.join_next().await {
        claimed.extend(ids.unwrap());
    }
    claimed
}

/// Claimers on connections of their own (as four machines would be) take 200 queued builds at
/// once: each build is claimed exactly once.
#[tokio::test]
async fn postgres_concurrent_claimers_take_each_build_once() {
    on_a_fresh_database(|url| async move {
        let builds: Vec<QueuedBuild> = (0..200)
            .map(|i| QueuedBuild {
                id: format!("c-{i:03}"),
                trigger: Some("t".into()),
                schedule: None,
                delivery: None,
                source: serde_json::json!({"kind": "none"}),
                substitutions: Default::default(),
                request: Request::Upload {
                    upload: None,
                    config: String::new(),
                    config_name: "cloudbuild.yaml".into(),
                    overrides: Default::default(),
                    secrets: Default::default(),
                },
                pool: None,
                queue_ttl: None,
                report: false,
                approval_required: false,
                concurrency: None,
                skips_full_group: false,
            })
            .collect();
        let queuer = PostgresStore::open(&url).await.unwrap();
        queuer.queue_builds(&builds).await.unwrap();
        let mut claimed = claim_on_four_machines(&url).await;
        claimed.sort();
        let queued: Vec<String> = builds.into_iter().map(|b| b.id).collect();
        assert_eq!(claimed, queued, "each build claimed once");
    })
    .await;
}

/// Claimers on connections of their own take the builds of two concurrency groups at once,
/// none ending: however their claims interleave, each group gets exactly its limit WORKING.
#[tokio::test]
async fn postgres_concurrent_claimers_keep_each_group_to_its_limit() {
    on_a_fresh_database(|url| async move {
        let builds: Vec<QueuedBuild> = [("a", 2), ("b", 1)]
            .into_iter()
            .flat_map(|(name, limit)| {
                (0..10).map(move |i| QueuedBuild {
                    concurrency: Some(ConcurrencyGroup {
                        name: name.into(),
                        limit,
                    }),
                    ..store_contract::queued(&format!("{name}-{i}"), "t")
                })
            })
            .collect();
        let queuer = PostgresStore::open(&url).await.unwrap();
        queuer.queue_builds(&builds).await.unwrap();
        let claimed = claim_on_four_machines(&url).await;
        let of = |group: &str| claimed.iter().filter(|id| id.starts_with(group)).count();
        assert_eq!((of("a-"), of("b-")), (2, 1), "{claimed:?}");
    })
    .await;
}

/// Queuers on connections of their own (as servers sharing the database would be) each queue a
/// build of one group that skips when full, all at once: each counts the group under its lock,
/// so the group's limit are queued and the others left out, however they interleave.
#[tokio::test]
async fn postgres_concurrent_queuers_keep_a_skipping_group_to_its_limit() {
    on_a_fresh_database(|url| async move {
        let mut stores = Vec::new();
        for _ in 0..8 {
            stores.push(PostgresStore::open(&url).await.unwrap());
        }
        let mut queuers = tokio::task::JoinSet::new();
        for (queuer, store) in stores.into_iter().enumerate() {
            let build = QueuedBuild {
                concurrency: Some(ConcurrencyGroup {
                    name: "deploy".into(),
                    limit: 3,
                }),
                skips_full_group: true,
                ..store_contract::queued(&format!("k-{queuer}"), "t")
            };
            queuers.spawn(async move { store.queue_builds(&[build]).await.unwrap().len() });
        }
        let mut left_out = 0;
        while let Some(skipped) = queuers.join_next().await {
            left_out += skipped.unwrap();
        }
        let store = PostgresStore::open(&url).await.unwrap();
        let queued = store.list_builds(&BuildQuery::default()).await.unwrap();
        assert_eq!((queued.len(), left_out), (3, 5));
    })
    .await;
}

/// A listener on its own connection hears what another store sharing the database does, as it
/// commits: a build queued (with its pool), then the build's moves and log lines; a lease's
/// renewal tells nothing; then a trigger the API keeps created and deleted. SQLite tells nothing.
#[tokio::test]
async fn postgres_changes_are_told_to_listeners() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(&dir.path().join(DATABASE)).await.unwrap();
    assert!(sqlite.changes().await.unwrap().is_none());
    on_a_fresh_database(|url| async move {
        let (writer, listener) = (
            PostgresStore::open(&url).await.unwrap(),
            PostgresStore::open(&url).await.unwrap(),
        );
        let mut changes = listener.changes().await.unwrap().expect("PostgreSQL tells");
        let mut next = async || {
            tokio::time::timeout(std::time::Duration::from_secs(10), changes.next())
                .await
                .expect("a change within 10 s")
                .unwrap()
        };
        let mut build = store_contract::queued("n-1", "t");
        build.pool = Some("gpu".into());
        writer.queue_builds(&[build]).await.unwrap();
        assert_eq!(next().await, Change::Queued { pool: "gpu".into() });
        assert_eq!(next().await, Change::Build { id: "n-1".into() });
        let lease = store_contract::lease("w", 30);
        writer
            .claim_queued(&lease, Some("gpu"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(next().await, Change::Build { id: "n-1".into() });
        writer.renew_lease("n-1", &lease).await.unwrap();
        writer
            .append_logs("n-1", &[(0, LogStream::Stdout, "a line".into())], &lease)
            .await
            .unwrap();
        assert_eq!(next().await, Change::Build { id: "n-1".into() });
        let trigger = ResourceKind::Trigger;
        let created = ResourceWrite::Create(b"name: t\n");
        writer.write_resource(trigger, "t", created).await.unwrap();
        assert_eq!(next().await, Change::Resources);
        let deleted = ResourceWrite::Delete;
        writer.write_resource(trigger, "t", deleted).await.unwrap();
        assert_eq!(next().await, Change::Resources);
    })
    .await;
}

/// An unreachable server fails the start with an error that names its URL, without the
/// password.
#[tokio::test]
async fn postgres_unreachable_is_named_without_its_password() {
    // Port 1 on the loopback: nothing listens there.
    let url = "postgres://builder:hunter2@127.0.0.1:1/builds";
    let error = PostgresStore::open(url)
        .await
        .err()
        .expect("nothing listens on port 1");
    assert!(matches!(error, Error::Unreachable { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.starts_with("the database postgres://builder@127.0.0.1:1/builds: "),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
}

/// A database a newer builder migrated further (it has a migration this one does not know) is
/// refused, naming that migration.
#[tokio::test]
async fn postgres_newer_schema_is_refused_naming_its_migration() {
    on_a_fresh_database(|url| async move {
        migrated_by_a_newer_builder(&url, 9999, "worker pools").await;
        let error = PostgresStore::open(&url).await.err().expect("refused");
        assert!(
            matches!(&error, Error::NewerSchema { version: 9999, description } if description == "worker pools"),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(message.contains("migration 9999 (worker pools)"), "{message}");
    })
    .await;
}
