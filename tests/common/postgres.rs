//! The PostgreSQL server the tests use (`BUILDER_TEST_POSTGRES`, by default the one
//! `scripts/dev-env.sh` starts), and a database of its own for each test, dropped after.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt as _;
use sqlx::Connection as _;

/// The PostgreSQL server the tests use, as a URL to its `postgres` database.
pub fn postgres_server() -> String {
    std::env::var("BUILDER_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://builder:builder@127.0.0.1:5432/postgres".into())
}

/// A database of its own on the test server, dropped once `check` is done with its URL, whether
/// it passed or panicked.
pub async fn on_a_fresh_database<F: Future<Output = ()>>(check: impl FnOnce(String) -> F) {
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

/// Migrates the database at `url` as this builder does, then records a migration `version`
/// (`description`) it does not know, as a newer builder that migrated it further would have.
pub async fn migrated_by_a_newer_builder(url: &str, version: i64, description: &str) {
    drop(
        builder::adapters::store::PostgresStore::open(url)
            .await
            .unwrap(),
    );
    let mut connection = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations \
         (version, description, success, checksum, execution_time) \
         VALUES ($1, $2, TRUE, '\\x00', 0)",
    )
    .bind(version)
    .bind(description)
    .execute(&mut connection)
    .await
    .unwrap();
    connection.close().await.unwrap();
}

/// A PostgreSQL server of the test's own (Debian's binaries, a fresh cluster in a temporary
/// directory, run as the `postgres` user), for tests that stop and start it: the shared server
/// of [`postgres_server`] is other tests' too. Stopped and removed when dropped.
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    pub port: u16,
}

impl PrivatePostgres {
    /// Makes the cluster (trust authentication, superuser `builder`) and starts it on a free
    /// port of the loopback.
    pub fn start() -> PrivatePostgres {
        let dir = tempfile::tempdir().unwrap();
        let chown = std::process::Command::new("chown")
            .arg("postgres:postgres")
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(chown.success());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = PrivatePostgres { dir, port };
        server.pg(
            "initdb",
            &["--auth=trust", "--username=builder", "--no-sync"],
        );
        server.ctl("start");
        server
    }

    /// A URL to its database `postgres`.
    pub fn url(&self) -> String {
        format!("postgres://builder@127.0.0.1:{}/postgres", self.port)
    }

    /// `pg_ctl ACTION` (`start`, `stop`: fast, ending every connection), waited for.
    pub fn ctl(&self, action: &str) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {}",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log");
        let log = log.display().to_string();
        self.pg(
            "pg_ctl",
            &[action, "-w", "-m", "fast", "-o", &options, "-l", &log],
        );
    }

    /// Runs one of Debian's PostgreSQL programs as `postgres` on the cluster, with `args`.
    fn pg(&self, program: &str, args: &[&str]) {
        let out = self.run(program, args);
        assert!(
            out.status.success(),
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn run(&self, program: &str, args: &[&str]) -> std::process::Output {
        std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(newest_postgres().join("bin").join(program))
            .args(args)
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .output()
            .unwrap()
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.run("pg_ctl", &["stop", "-m", "immediate"]);
    }
}

/// The newest installed PostgreSQL's directory, `/usr/lib/postgresql/VERSION`.
fn newest_postgres() -> std::path::PathBuf {
    let root = std::path::Path::new("/usr/lib/postgresql");
    let newest = std::fs::read_dir(root)
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .max()
        .expect("Debian's PostgreSQL (scripts/dev-env.sh)");
    root.join(newest.to_string())
}
