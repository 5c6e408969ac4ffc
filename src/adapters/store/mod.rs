//! The build record: every build's status, step results, substitutions, source, results and log
//! lines, and the service's queue, webhook deliveries, schedules' state and the triggers and
//! schedules created through the API, behind one trait per
//! aggregate ([`Builds`], [`Logs`], [`Queue`], [`Deliveries`], [`Schedules`], [`Reports`],
//! [`Retention`], [`Uploads`], [`Resources`], [`Workers`]) that [`Store`]
//! combines; kept by [`SqliteStore`] in an embedded SQLite database in the data directory, or by
//! [`PostgresStore`] in a PostgreSQL database that several servers and machines share, so builds
//! can be listed, described and their logs read after the fact, and nothing accepted is lost.
//!
//! This is the only module that speaks SQL. Both dialects keep the same columns (times as unix
//! milliseconds, structured values as JSON text), so rows are read by the same code
//! ([`Columns`]); each dialect writes its own statements where the two differ.

mod builds;
mod deliveries;
mod logs;
mod notifications;
mod postgres;
mod queue;
mod reports;
mod resources;
mod retention;
mod schedules;
mod uploads;
mod workers;

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::migrate::MigrateError;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
};
use sqlx::{Postgres, Row as _, Sqlite};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::core::build::Status;
use crate::core::logs::ChunkError;

pub use builds::{BuildQuery, BuildRecord, Builds, StepRecord};
pub use deliveries::{
    Deliveries, DeliveryRecord, NewDelivery, PendingDelivery, REJECTED_KEPT, Recorded,
};
pub use logs::{LogLine, Logs, PAGE_BYTES, page_full, page_take};
pub use notifications::{
    Attempt, BuildEvent, DueNotification, NewNotification, NotificationRecord, Notifications,
};
pub use postgres::{Changes, PostgresStore};
use queue::queue;
pub use queue::{Claimed, GroupFull, Lease, Queue, QueuedBuild, Renewal, Unfinished, waiting_for};
pub use reports::{OpenReport, ReportFailure, ReportRecord, Reports};
pub use resources::{ResourceKind, ResourceWrite, Resources};
pub use retention::{PASSES_KEPT, References, Retention};
pub use schedules::{Schedules, SkippedRun};
pub use uploads::{UPLOAD_CHUNK_SIZE, Uploads};
pub use workers::{WORKERS_KEPT, Worker, WorkerRecord, Workers};

/// Why the store could not do what was asked: the store's own words, whatever database is
/// behind it.
#[derive(Debug)]
pub enum Error {
    /// The database refused or failed a statement, or could not be reached.
    Database(sqlx::Error),
    /// The database server at `url` (its password left out) cannot be reached or refused us.
    Unreachable { url: String, error: sqlx::Error },
    /// The database was migrated by a newer builder than this one: this one does not know its
    /// migration `version` and would misread what the newer one writes.
    NewerSchema { version: i64, description: String },
    /// The store's directory cannot be made.
    Io(std::io::Error),
    /// A record that must exist does not.
    Missing(&'static str),
    /// A value the store keeps as JSON cannot be read back (another version wrote it).
    Unreadable {
        what: &'static str,
        error: serde_json::Error,
    },
    /// A log's chunk cannot be written or read back.
    Log(ChunkError),
    /// A write for a build by a process that no longer holds it (another process took it over
    /// and closed it): refused, so that a build is never written by two processes.
    NotHeld { build: String },
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Database(e) => write!(f, "the store's database: {e}"),
            Error::Unreachable { url, error } => write!(f, "the database {url}: {error}"),
            Error::NewerSchema {
                version,
                description,
            } => write!(
                f,
                "the database has migration {version} ({description}), which this builder does \
                 not know: a newer builder migrated it; run that version"
            ),
            Error::Io(e) => write!(f, "the store's files: {e}"),
            Error::Missing(what) => write!(f, "the store has no {what}"),
            Error::Log(e) => write!(f, "the store's logs: {e}"),
            Error::NotHeld { build } => write!(
                f,
                "build {build} is no longer held by this process: another process took it over"
            ),
            Error::Unreadable { what, error } => {
                write!(f, "the store's {what} is unreadable: {error}")
            }
        }
    }
}

impl Error {
    /// Whether the failure may pass by itself: the database server could not be reached in
    /// time, was shutting down or starting, or lost the connection (SQLSTATE classes 08 and
    /// 57P). Each write is one transaction, so a write that failed so was not made, unless only
    /// its commit's answer was lost (a log chunk written again is then refused by its key rather
    /// than doubled); it may be made again.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Database(sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut) => true,
            Error::Database(sqlx::Error::Database(e)) => e
                .code()
                .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
            _ => false,
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Database(e) | Error::Unreachable { error: e, .. } => Some(e),
            Error::Io(e) => Some(e),
            Error::Log(e) => Some(e),
            Error::Missing(_) | Error::NewerSchema { .. } | Error::NotHeld { .. } => None,
            Error::Unreadable { error, .. } => Some(error),
        }
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::Database(e)
    }
}

/// The database's file name in the data directory.
pub const DATABASE: &str = "builds.db";

/// The store in an embedded SQLite database.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    writer: Arc<Mutex<()>>,
    /// The database's path, and the file (device, inode) that was opened there.
    path: PathBuf,
    file: (u64, u64),
}

/// Where builds, their steps and logs, and the service's deliveries are kept: every aggregate,
/// and whether the store is still the one opened. [`SqliteStore`] is the embedded default; a
/// [`PostgresStore`] is for servers and machines that share the work. Every change that must
/// happen once (claiming a queued build, recording a delivery with its builds, completing a
/// pending delivery, claiming a scheduled run) is one atomic statement or transaction.
#[async_trait::async_trait]
pub trait Store:
    Builds
    + Logs
    + Queue
    + Deliveries
    + Schedules
    + Reports
    + Notifications
    + Retention
    + Uploads
    + Resources
    + Workers
{
    /// Fails once the store is no longer the one opened. SQLite goes on reading and writing a
    /// database file that was removed (or replaced) under it, and everything written from then
    /// on is lost with the process: a server must stop instead.
    async fn check(&self) -> Result<(), Error>;

    /// The changes processes sharing the store make, told as they commit, on a connection of
    /// their own; `None` for a store that tells none (SQLite: the processes of one machine, which
    /// wake their own and poll for the others'). A change may be lost while the connection is
    /// made again: who waits on them polls too, seldom.
    async fn changes(&self) -> Result<Option<Changes>, Error>;
}

/// What a process sharing the store did, as [`Store::changes`] tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A build was queued, or queued again, for the workers of `pool` (`''`: the default pool).
    Queued { pool: String },
    /// A build's status or a step of it changed, or it has new log lines.
    Build { id: String },
    /// A trigger or schedule the API keeps was created, replaced or deleted.
    Resources,
}

impl SqliteStore {
    /// A transaction that writes, and this process's turn to write. Writers of one process take
    /// turns here, in order, rather than in SQLite's busy handler, which sleeps (1, 2, 5 … 100 ms)
    /// between tries. The transaction takes the database's write lock at once (`BEGIN
    /// IMMEDIATE`), waiting up to the busy timeout for other processes: a deferred one that reads
    /// first fails at once with SQLITE_BUSY when another connection wrote in between.
    async fn write(&self) -> Result<(OwnedMutexGuard<()>, Transaction<'static>), Error> {
        let turn = self.writer.clone().lock_owned().await;
        Ok((turn, self.pool.begin_with("BEGIN IMMEDIATE").await?))
    }

    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<SqliteStore, Error> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(Error::Io)?;
        }
        // Processes opening a new database at once (`submit --async` and a follower of its log)
        // would each create it, turn it to WAL and run the migrations (sqlx takes no lock to
        // migrate SQLite), and all but one fail ("database is locked", "table … already
        // exists"). They take turns on a lock file beside the database until it is migrated.
        let mut lock_name = path.as_os_str().to_owned();
        lock_name.push(".migrating");
        // Waited for on a blocking thread: the runtime's own go on (the holder's among them).
        let migrating = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::create(&lock_name)?;
            file.lock()?;
            Ok(file)
        })
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))?
        .map_err(Error::Io)?;
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        // Created by a connection of its own: the pool's connections must never create it, or a
        // database removed under the store would come back empty on the next connection.
        sqlx::Connection::close(
            sqlx::ConnectOptions::connect(&options.clone().create_if_missing(true)).await?,
        )
        .await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        let migrated = sqlx::migrate!("migrations/sqlite").run(&pool).await;
        drop(migrating);
        if let Some(version) = newer_schema(migrated)? {
            let description = sqlx::query_scalar(APPLIED_MIGRATION)
                .bind(version)
                .fetch_one(&pool)
                .await?;
            return Err(Error::NewerSchema {
                version,
                description,
            });
        }
        let file = identity(path).map_err(Error::Io)?;
        Ok(SqliteStore {
            pool,
            writer: Arc::default(),
            path: path.to_path_buf(),
            file,
        })
    }
}

/// The description of an applied migration (`$1` its version), in sqlx's own table.
const APPLIED_MIGRATION: &str = "SELECT description FROM _sqlx_migrations WHERE version = $1";

/// The version of a migration the database has and the binary does not (a newer builder
/// migrated it), from running the binary's migrations; other failures are the database's.
fn newer_schema(migrated: Result<(), MigrateError>) -> Result<Option<i64>, Error> {
    match migrated {
        Ok(()) => Ok(None),
        Err(MigrateError::VersionMissing(version)) => Ok(Some(version)),
        Err(e) => Err(Error::Database(e.into())),
    }
}

/// A row of either dialect, read by the code both share: a column's value by its name. Both
/// dialects' columns decode to the same Rust types (a boolean is SQLite's integer or
/// PostgreSQL's boolean), so a record is made from a row in one place.
trait Columns {
    fn column<T>(&self, name: &str) -> T
    where
        T: for<'r> sqlx::Decode<'r, Sqlite>
            + sqlx::Type<Sqlite>
            + for<'r> sqlx::Decode<'r, Postgres>
            + sqlx::Type<Postgres>;
}

impl Columns for SqliteRow {
    fn column<T>(&self, name: &str) -> T
    where
        T: for<'r> sqlx::Decode<'r, Sqlite>
            + sqlx::Type<Sqlite>
            + for<'r> sqlx::Decode<'r, Postgres>
            + sqlx::Type<Postgres>,
    {
        self.get(name)
    }
}

impl Columns for sqlx::postgres::PgRow {
    fn column<T>(&self, name: &str) -> T
    where
        T: for<'r> sqlx::Decode<'r, Sqlite>
            + sqlx::Type<Sqlite>
            + for<'r> sqlx::Decode<'r, Postgres>
            + sqlx::Type<Postgres>,
    {
        self.get(name)
    }
}

/// The error of a database file that is no longer the one the store opened.
fn moved(path: &Path, what: &str) -> Error {
    Error::Io(std::io::Error::other(format!(
        "the database {} was {what} while the store had it open",
        path.display()
    )))
}

/// The file at `path`: its device and inode.
fn identity(path: &Path) -> std::io::Result<(u64, u64)> {
    let metadata = std::fs::metadata(path)?;
    Ok((metadata.dev(), metadata.ino()))
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn check(&self) -> Result<(), Error> {
        match identity(&self.path) {
            Ok(file) if file == self.file => Ok(()),
            Ok(_) => Err(moved(&self.path, "replaced by another file")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(moved(&self.path, "removed")),
            Err(e) => Err(Error::Io(e)),
        }
    }

    async fn changes(&self) -> Result<Option<Changes>, Error> {
        Ok(None)
    }
}

type Transaction<'t> = sqlx::Transaction<'t, sqlx::Sqlite>;

/// Statuses are written only by this module, from [`Status::as_str`].
fn status(text: String) -> Status {
    Status::parse(&text).unwrap_or(Status::InternalError)
}

fn json<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

fn parse_json(text: String) -> serde_json::Value {
    serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
}

fn millis(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn time(millis: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(millis.max(0) as u64)
}

fn instant(millis: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(millis).unwrap_or_default()
}

#[cfg(test)]
mod test_support {
    use super::*;
    use crate::core::build::Request;
    use crate::core::substitute::Values;

    pub(super) async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join(DATABASE)).await.unwrap();
        (dir, store)
    }

    pub(super) fn queued(trigger: &str, branch: &str) -> QueuedBuild {
        QueuedBuild {
            id: uuid::Uuid::new_v4().to_string(),
            trigger: Some(trigger.into()),
            schedule: None,
            delivery: None,
            source: serde_json::json!({"kind": "none"}),
            substitutions: Values::from([("BRANCH_NAME".into(), branch.into())]),
            request: Request::Upload {
                upload: None,
                config: String::new(),
                config_name: "cloudbuild.yaml".into(),
                overrides: Values::new(),
                secrets: Default::default(),
            },
            pool: None,
            queue_ttl: None,
            report: false,
            approval_required: false,
            concurrency: None,
            skips_full_group: false,
        }
    }

    pub(super) fn lease(holder: &str, seconds: u64) -> Lease {
        Lease {
            holder: holder.into(),
            duration: Duration::from_secs(seconds),
        }
    }

    /// A build queued and claimed in `store`: its id and the lease that holds it.
    pub(super) async fn running(store: &SqliteStore) -> (String, Lease) {
        let build = queued("t", "main");
        store
            .queue_builds(std::slice::from_ref(&build))
            .await
            .unwrap();
        let holder = lease("a", 30);
        store.claim_queued(&holder, None).await.unwrap();
        (build.id, holder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only failures that pass by themselves are transient: a store gone for good, a write
    /// refused by its fence or a statement the database refused are not.
    #[test]
    fn transient_failures_are_the_connections() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(Error::Database(sqlx::Error::Io(io)).is_transient());
        assert!(Error::Database(sqlx::Error::PoolTimedOut).is_transient());
        assert!(!Error::Database(sqlx::Error::RowNotFound).is_transient());
        assert!(!Error::Missing("database it opened: it was dropped").is_transient());
        assert!(!Error::NotHeld { build: "b".into() }.is_transient());
    }
}
