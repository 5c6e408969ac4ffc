//! The store contract (`tests/store_contract/`) on both stores, each part on a fresh database:
//! the embedded SQLite store, and PostgreSQL (the server `BUILDER_TEST_POSTGRES` names, by
//! default the one `scripts/dev-env.sh` starts), where each test makes a database of its own and
//! drops it after. Then what only PostgreSQL is for: claimers on several connections at once.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use builder::adapters::store::{
    DATABASE, Error, Lease, PostgresStore, Queue as _, QueuedBuild, SqliteStore, Store,
};
use builder::core::build::Request;
use futures_util::FutureExt as _;
use sqlx::Connection as _;

mod store_contract;

async fn on_a_fresh_store<F: Future<Output = ()>>(check: impl FnOnce(&'static dyn Store) -> F) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join(DATABASE)).await.unwrap();
    // Leaked for the test's duration: the contract's functions borrow it across awaits.
    check(Box::leak(Box::new(store))).await;
}

/// The PostgreSQL server the tests use, as a URL to its `postgres` database.
fn postgres_server() -> String {
    std::env::var("BUILDER_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://builder:builder@127.0.0.1:5432/postgres".into())
}

/// A database of its own on the test server, dropped once `check` is done with its URL, whether
/// it passed or panicked.
async fn on_a_fresh_database<F: Future<Output = ()>>(check: impl FnOnce(String) -> F) {
    let server = postgres_server();
    let name = format!("builder_test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&server)
        .await
        .unwrap_or_else(|e| panic!("the test server {server} (scripts/dev-env.sh starts it): {e}"));
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap();
    let (base, _) = server.rsplit_once('/').expect("a URL with a database");
    let checked = AssertUnwindSafe(check(format!("{base}/{name}")))
        .catch_unwind()
        .await;
    // FORCE ends the connections the store under test still holds.
    let drop = format!("DROP DATABASE {name} WITH (FORCE)");
    sqlx::raw_sql(sqlx::AssertSqlSafe(drop))
        .execute(&mut admin)
        .await
        .unwrap();
    if let Err(panic) = checked {
        std::panic::resume_unwind(panic);
    }
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
    leases_hold_builds_until_they_run_out,
    deliveries_queue_their_builds_once,
    replays_and_rejections_are_bounded,
    a_scheduled_run_is_claimed_once,
    a_schedule_keeps_its_skipped_runs_pause_and_error,
);

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
                },
            })
            .collect();
        let queuer = PostgresStore::open(&url).await.unwrap();
        queuer.queue_builds(&builds).await.unwrap();
        let mut claimers = tokio::task::JoinSet::new();
        for claimer in 0..4 {
            let store = PostgresStore::open(&url).await.unwrap();
            claimers.spawn(async move {
                let lease = Lease {
                    holder: format!("claimer-{claimer}"),
                    duration: std::time::Duration::from_secs(30),
                };
                let mut claimed = Vec::new();
                while let Some(build) = store.claim_queued(&lease).await.unwrap() {
                    claimed.push(build.id);
                }
                claimed
            });
        }
        let mut claimed: Vec<String> = Vec::new();
        while let Some(ids) = claimers.join_next().await {
            claimed.extend(ids.unwrap());
        }
        claimed.sort();
        let queued: Vec<String> = builds.into_iter().map(|b| b.id).collect();
        assert_eq!(claimed, queued, "each build claimed once");
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
        drop(PostgresStore::open(&url).await.unwrap());
        let mut connection = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::raw_sql(
            "INSERT INTO _sqlx_migrations \
             (version, description, success, checksum, execution_time) \
             VALUES (9999, 'worker pools', TRUE, '\\x00', 0)",
        )
        .execute(&mut connection)
        .await
        .unwrap();
        connection.close().await.unwrap();
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
