//! The build record: every build's status, step results, substitutions, source, results and log
//! lines, and the service's queue, webhook deliveries and schedules, behind the [`Store`] interface; kept by
//! [`SqliteStore`] in an embedded SQLite database in the data directory, so builds can be listed,
//! described and their logs read after the fact, and nothing accepted is lost.
//!
//! This is the only module that speaks SQL. Times are stored as unix milliseconds.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use futures_util::TryStreamExt as _;
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{QueryBuilder, Row, Sqlite, sqlite::SqliteRow};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::adapters::runtime::LogStream;
use crate::core::build::{Outcome, PushedImage, Status, StepResult};
use crate::core::logs::{self, ChunkError};
use crate::core::plan::ResolvedBuild;
use crate::core::schedule::{Decision, LastRun, MAX_COUNTED, Skipped, State};
use crate::core::templates::PushedTemplate;

/// Why the store could not do what was asked: the store's own words, whatever database is
/// behind it.
#[derive(Debug)]
pub enum Error {
    /// The database refused or failed a statement, or could not be reached.
    Database(sqlx::Error),
    /// The store's directory cannot be made.
    Io(std::io::Error),
    /// A record that must exist does not.
    Missing(&'static str),
    /// A log's chunk cannot be written or read back.
    Log(ChunkError),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Database(e) => write!(f, "the store's database: {e}"),
            Error::Io(e) => write!(f, "the store's files: {e}"),
            Error::Missing(what) => write!(f, "the store has no {what}"),
            Error::Log(e) => write!(f, "the store's logs: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Database(e) => Some(e),
            Error::Io(e) => Some(e),
            Error::Log(e) => Some(e),
            Error::Missing(_) => None,
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

/// A build as recorded (and as the API serves it).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildRecord {
    pub id: String,
    pub status: Status,
    #[serde(with = "required_rfc3339")]
    pub create_time: SystemTime,
    #[serde(default, with = "crate::core::build::rfc3339")]
    pub start_time: Option<SystemTime>,
    #[serde(default, with = "crate::core::build::rfc3339")]
    pub finish_time: Option<SystemTime>,
    /// The trigger that started it; `None` for `builder submit` builds.
    pub trigger: Option<String>,
    /// The schedule that started it.
    #[serde(default)]
    pub schedule: Option<String>,
    pub source: serde_json::Value,
    pub substitutions: serde_json::Value,
    pub plan: serde_json::Value,
    pub images: Vec<PushedImage>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub templates: Vec<PushedTemplate>,
    pub failure: Option<String>,
    pub steps: Vec<StepRecord>,
    /// What each step wrote to `$BUILDER_OUTPUT/output`, base64, at the step's index (empty for
    /// the others): Cloud Build's `results.buildStepOutputs`.
    #[serde(default)]
    pub build_step_outputs: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepRecord {
    pub index: usize,
    pub id: Option<String>,
    pub name: String,
    #[serde(flatten)]
    pub result: StepResult,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    pub seq: i64,
    pub step: usize,
    pub stream: LogStream,
    pub text: String,
}

/// Which builds [`Store::list_builds`] returns.
#[derive(Debug, Clone)]
pub struct BuildQuery {
    pub status: Option<Status>,
    pub trigger: Option<String>,
    pub schedule: Option<String>,
    /// Builds of this branch (their `BRANCH_NAME`).
    pub branch: Option<String>,
    pub limit: u32,
    /// How many of the newest matching builds to skip (paging).
    pub offset: u32,
    /// Only builds older than this one (paging that reads no more rows however deep it goes).
    pub before: Option<String>,
}

impl Default for BuildQuery {
    fn default() -> Self {
        Self {
            status: None,
            trigger: None,
            schedule: None,
            branch: None,
            limit: 50,
            offset: 0,
            before: None,
        }
    }
}

/// Delivery states.
const PENDING: &str = "PENDING";
const DONE: &str = "DONE";

/// A webhook delivery to record. With a `payload` it is recorded PENDING: some triggers wait for
/// the push's changed files (see [`Store::complete_delivery`]).
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub id: String,
    pub event: String,
    pub verified: bool,
    pub summary: String,
    pub payload: Option<Vec<u8>>,
    pub results: Vec<TriggerResult>,
    /// The builds it queues.
    pub builds: Vec<QueuedBuild>,
}

/// What one trigger made of a delivery: the build it queued, or why it queued none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerResult {
    pub trigger: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    New,
    /// A verified delivery with this id was already recorded.
    Duplicate,
}

#[derive(Debug, Clone)]
pub struct PendingDelivery {
    pub id: String,
    pub event: String,
    pub payload: Vec<u8>,
    pub results: Vec<TriggerResult>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryRecord {
    pub id: String,
    pub event: String,
    #[serde(with = "required_rfc3339")]
    pub receive_time: SystemTime,
    pub verified: bool,
    pub summary: String,
    /// Some triggers still wait for the push's changed files.
    pub pending: bool,
    pub results: Vec<TriggerResult>,
}

/// A build the service queues: recorded QUEUED with what it is to run, its plan resolved when
/// it starts.
#[derive(Debug, Clone)]
pub struct QueuedBuild {
    pub id: String,
    /// The trigger that queued it; `None` for a submitted build.
    pub trigger: Option<String>,
    /// The schedule that ran the trigger.
    pub schedule: Option<String>,
    pub delivery: Option<String>,
    pub source: serde_json::Value,
    pub substitutions: serde_json::Value,
    pub request: serde_json::Value,
}

/// A process's claim on the builds it runs: who it is, and how long a claim lasts unless it is
/// renewed. A build whose claim ran out is anyone's to close, on any machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub holder: String,
    pub duration: Duration,
}

impl Lease {
    fn until(&self) -> i64 {
        millis(SystemTime::now() + self.duration)
    }
}

/// What renewing a lease found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Still held, renewed; the build is to be stopped if a cancel was asked for.
    Held { cancel_requested: bool },
    /// Finished, or taken over by another process (which closes it): stop running it.
    Lost,
}

/// A build that was started and is not finished, with who holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfinished {
    pub id: String,
    /// `None` for a build recorded before builds had holders.
    pub holder: Option<String>,
    /// Whether its holder's claim ran out.
    pub expired: bool,
}

/// A run a schedule skipped, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SkippedRun {
    #[serde(flatten)]
    pub skipped: Skipped,
    pub record_time: DateTime<Utc>,
}

/// Where builds, their steps and logs, and the service's deliveries are kept. [`SqliteStore`] is
/// the embedded default; a PostgreSQL store will implement it for servers that share the work.
/// Every change that must happen once (claiming a queued build, recording a delivery with its
/// builds, completing a pending delivery) is one atomic statement or transaction here.
#[async_trait::async_trait]
pub trait Store: Send + Sync {
    /// Records a new build to be run at once by `lease`'s holder: QUEUED, with every step
    /// QUEUED, and held from the start so that no other process takes it for abandoned.
    async fn create_build(
        &self,
        id: &str,
        source: &serde_json::Value,
        plan: &ResolvedBuild,
        lease: &Lease,
    ) -> Result<(), Error>;

    /// Marks a build its holder created as WORKING.
    async fn start_build(&self, id: &str) -> Result<(), Error>;

    /// Extends the holder's claim on a running build by its duration, and tells whether a cancel
    /// was asked for; [`Renewal::Lost`] when the build is finished or no longer the holder's.
    async fn renew_lease(&self, id: &str, lease: &Lease) -> Result<Renewal, Error>;

    /// Asks a WORKING build's holder to stop it (it sees this at its next renewal); `false` if
    /// the build is not WORKING.
    async fn request_cancel(&self, id: &str) -> Result<bool, Error>;

    /// Makes `lease`'s holder the holder of an unfinished build, if it is still held by
    /// `previous` (compare-and-set: of processes closing abandoned builds, one wins each).
    async fn take_over(
        &self,
        id: &str,
        previous: Option<&str>,
        lease: &Lease,
    ) -> Result<bool, Error>;

    async fn update_step(&self, id: &str, index: usize, result: &StepResult) -> Result<(), Error>;

    /// Appends log lines of a build, numbering them after the ones already stored; they are
    /// stored as one compressed chunk, so a caller appends many at once.
    async fn append_logs(
        &self,
        id: &str,
        lines: &[(usize, LogStream, String)],
    ) -> Result<(), Error>;

    /// Records how the build ended: its status, every step's result, pushed images, failure.
    async fn finish_build(&self, id: &str, outcome: &Outcome) -> Result<(), Error>;

    /// The builds that were started and not finished: running ones, and builds recorded to be
    /// run at once (not queued for the service) that never ran.
    async fn unfinished_builds(&self) -> Result<Vec<Unfinished>, Error>;

    /// Records deliveries and queues their builds, all in one transaction (one write to disk for
    /// all of them). A verified delivery whose id is already recorded changes nothing: a
    /// redelivery never queues a second build.
    async fn record_deliveries(&self, deliveries: &[NewDelivery]) -> Result<Vec<Recorded>, Error>;

    /// Deliveries whose triggers wait for the push's changed files, oldest first.
    async fn pending_deliveries(&self) -> Result<Vec<PendingDelivery>, Error>;

    /// Finishes deciding a pending delivery: its trigger results replace the recorded ones and
    /// its builds are queued, in one transaction, at most once (`false` if it was not pending).
    async fn complete_delivery(
        &self,
        id: &str,
        results: &[TriggerResult],
        builds: &[QueuedBuild],
    ) -> Result<bool, Error>;

    /// The newest deliveries first.
    async fn list_deliveries(&self, limit: u32) -> Result<Vec<DeliveryRecord>, Error>;

    /// Takes the oldest queued build for `lease`'s holder to run: it is WORKING and held from
    /// now on. Returns its id and what it is to run.
    async fn claim_queued(
        &self,
        lease: &Lease,
    ) -> Result<Option<(String, serde_json::Value)>, Error>;

    /// Queues builds (a retry, a manual run).
    async fn queue_builds(&self, builds: &[QueuedBuild]) -> Result<(), Error>;

    /// What a build queued by the service was to run, to queue it again; `None` for builds
    /// that did not come from the queue (a local `builder submit`).
    async fn queued_request(&self, id: &str) -> Result<Option<QueuedBuild>, Error>;

    /// Cancels a build that is still QUEUED; `false` if it is not (any more).
    async fn cancel_queued(&self, id: &str) -> Result<bool, Error>;

    /// Records the plan a claimed build resolved to, with its steps QUEUED.
    async fn set_plan(&self, id: &str, plan: &ResolvedBuild) -> Result<(), Error>;

    /// The newest builds first, as `query` selects them.
    async fn list_builds(&self, query: &BuildQuery) -> Result<Vec<BuildRecord>, Error>;

    /// A build by id, or by a unique prefix of its id.
    async fn get_build(&self, id: &str) -> Result<Option<BuildRecord>, Error>;

    /// A build's log lines after `after` (0 for all), in order: the first `limit` of them, or
    /// all.
    async fn logs(&self, id: &str, after: i64, limit: Option<u32>) -> Result<Vec<LogLine>, Error>;

    /// A schedule's state: created with `first_run` as its next run if the store has none, or
    /// if it was computed for another `spec` (the file changed the expression or time zone).
    async fn sync_schedule(
        &self,
        name: &str,
        spec: &str,
        first_run: DateTime<Utc>,
    ) -> Result<State, Error>;

    async fn schedule_state(&self, name: &str) -> Result<Option<State>, Error>;

    /// Carries out `decision` for the run due at `due`, in one transaction and only if the
    /// schedule's next run is still `due` (`false`: another scheduler claimed it): records the
    /// skipped runs (one continuing the newest record of the same reason grows it), moves the
    /// next run on and queues `build`, the run it starts.
    async fn claim_scheduled_run(
        &self,
        name: &str,
        due: DateTime<Utc>,
        decision: &Decision,
        build: Option<&QueuedBuild>,
    ) -> Result<bool, Error>;

    /// Queues a run started by hand, which becomes the schedule's last run.
    async fn queue_schedule_run(
        &self,
        name: &str,
        scheduled_time: DateTime<Utc>,
        build: &QueuedBuild,
    ) -> Result<(), Error>;

    async fn set_schedule_paused(&self, name: &str, paused: bool) -> Result<(), Error>;

    /// Keeps why starting the due run failed (`None` once it has not).
    async fn set_schedule_error(&self, name: &str, error: Option<&str>) -> Result<(), Error>;

    /// A schedule's newest skipped-run records first.
    async fn skipped_runs(&self, name: &str, limit: u32) -> Result<Vec<SkippedRun>, Error>;

    /// Fails once the store is no longer the one opened. SQLite goes on reading and writing a
    /// database file that was removed (or replaced) under it, and everything written from then
    /// on is lost with the process: a server must stop instead.
    async fn check(&self) -> Result<(), Error>;
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

    /// Changes a schedule's state with `sql` (`$1` the value, `$2` the schedule's name).
    async fn set_schedule<'q, T>(
        &self,
        sql: &'static str,
        name: &'q str,
        value: T,
    ) -> Result<(), Error>
    where
        T: sqlx::Encode<'q, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite> + Send + 'q,
    {
        let (_turn, mut tx) = self.write().await?;
        sqlx::query(sql)
            .bind(value)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        Ok(tx.commit().await?)
    }

    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<SqliteStore, Error> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(Error::Io)?;
        }
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
        sqlx::migrate!("migrations/sqlite")
            .run(&pool)
            .await
            .map_err(sqlx::Error::from)?;
        let file = identity(path).map_err(Error::Io)?;
        Ok(SqliteStore {
            pool,
            writer: Arc::default(),
            path: path.to_path_buf(),
            file,
        })
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

    async fn create_build(
        &self,
        id: &str,
        source: &serde_json::Value,
        plan: &ResolvedBuild,
        lease: &Lease,
    ) -> Result<(), Error> {
        let (_turn, mut tx) = self.write().await?;
        sqlx::query(
            "INSERT INTO builds (id, status, create_time, source, substitutions, plan, holder, lease_until) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(id)
        .bind(Status::Queued.as_str())
        .bind(millis(SystemTime::now()))
        .bind(source.to_string())
        .bind(json(&plan.substitutions))
        .bind(json(plan))
        .bind(&lease.holder)
        .bind(lease.until())
        .execute(&mut *tx)
        .await?;
        insert_steps(&mut tx, id, plan).await?;
        Ok(tx.commit().await?)
    }

    async fn start_build(&self, id: &str) -> Result<(), Error> {
        let (_turn, mut tx) = self.write().await?;
        sqlx::query("UPDATE builds SET status = $1, start_time = $2 WHERE id = $3")
            .bind(Status::Working.as_str())
            .bind(millis(SystemTime::now()))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        Ok(tx.commit().await?)
    }

    async fn renew_lease(&self, id: &str, lease: &Lease) -> Result<Renewal, Error> {
        let (_turn, mut tx) = self.write().await?;
        let renewed: Option<bool> = sqlx::query_scalar(
            "UPDATE builds SET lease_until = $1 WHERE id = $2 AND holder = $3 AND status IN ($4, $5) \
             RETURNING cancel_requested != 0",
        )
        .bind(lease.until())
        .bind(id)
        .bind(&lease.holder)
        .bind(Status::Queued.as_str())
        .bind(Status::Working.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(match renewed {
            Some(cancel_requested) => Renewal::Held { cancel_requested },
            None => Renewal::Lost,
        })
    }

    async fn request_cancel(&self, id: &str) -> Result<bool, Error> {
        let (_turn, mut tx) = self.write().await?;
        let updated =
            sqlx::query("UPDATE builds SET cancel_requested = 1 WHERE id = $1 AND status = $2")
                .bind(id)
                .bind(Status::Working.as_str())
                .execute(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(updated.rows_affected() == 1)
    }

    async fn take_over(
        &self,
        id: &str,
        previous: Option<&str>,
        lease: &Lease,
    ) -> Result<bool, Error> {
        let (_turn, mut tx) = self.write().await?;
        let updated = sqlx::query(
            "UPDATE builds SET holder = $1, lease_until = $2 \
             WHERE id = $3 AND holder IS $4 AND status IN ($5, $6)",
        )
        .bind(&lease.holder)
        .bind(lease.until())
        .bind(id)
        .bind(previous)
        .bind(Status::Queued.as_str())
        .bind(Status::Working.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(updated.rows_affected() == 1)
    }

    async fn update_step(&self, id: &str, index: usize, result: &StepResult) -> Result<(), Error> {
        let (_turn, mut tx) = self.write().await?;
        set_step(&mut tx, id, index, result).await?;
        Ok(tx.commit().await?)
    }

    async fn append_logs(
        &self,
        id: &str,
        lines: &[(usize, LogStream, String)],
    ) -> Result<(), Error> {
        if lines.is_empty() {
            return Ok(());
        }
        // Compressed before this process's turn to write, which it holds as short as it can.
        let chunk = logs::encode_chunk(lines.iter().map(|(s, o, t)| (*s, *o, t.as_str())))
            .map_err(Error::Log)?;
        let (_turn, mut tx) = self.write().await?;
        let next: i64 = sqlx::query_scalar(
            "SELECT COALESCE((SELECT first_seq + lines FROM log_chunks WHERE build_id = $1 \
             ORDER BY first_seq DESC LIMIT 1), 1)",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO log_chunks (build_id, first_seq, lines, data) VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(next)
        .bind(lines.len() as i64)
        .bind(chunk)
        .execute(&mut *tx)
        .await?;
        Ok(tx.commit().await?)
    }

    async fn finish_build(&self, id: &str, outcome: &Outcome) -> Result<(), Error> {
        let (_turn, mut tx) = self.write().await?;
        for (index, result) in outcome.steps.iter().enumerate() {
            set_step(&mut tx, id, index, result).await?;
        }
        sqlx::query("UPDATE builds SET status = $1, finish_time = $2, images = $3, templates = $4, failure = $5 WHERE id = $6")
            .bind(outcome.status.as_str())
            .bind(millis(SystemTime::now()))
            .bind(json(&outcome.images))
            .bind(json(&outcome.templates))
            .bind(&outcome.failure)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        Ok(tx.commit().await?)
    }

    async fn unfinished_builds(&self) -> Result<Vec<Unfinished>, Error> {
        let rows = sqlx::query(
            "SELECT id, holder, COALESCE(lease_until < $1, 1) AS expired FROM builds \
             WHERE status = $2 OR (status = $3 AND request IS NULL)",
        )
        .bind(millis(SystemTime::now()))
        .bind(Status::Working.as_str())
        .bind(Status::Queued.as_str())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| Unfinished {
                id: row.get("id"),
                holder: row.get("holder"),
                expired: row.get("expired"),
            })
            .collect())
    }

    async fn record_deliveries(&self, deliveries: &[NewDelivery]) -> Result<Vec<Recorded>, Error> {
        if deliveries.is_empty() {
            return Ok(Vec::new());
        }
        let (_turn, mut tx) = self.write().await?;
        // One statement for all the deliveries and one for their builds: each statement is a
        // round trip to SQLite's thread, and the writer holds every waiting request meanwhile.
        let now = millis(SystemTime::now());
        let mut insert = QueryBuilder::<Sqlite>::new(
            "INSERT INTO deliveries (id, event, receive_time, verified, summary, state, payload, results) ",
        );
        insert.push_values(deliveries, |mut row, delivery| {
            let state = if delivery.payload.is_some() {
                PENDING
            } else {
                DONE
            };
            row.push_bind(&delivery.id)
                .push_bind(&delivery.event)
                .push_bind(now)
                .push_bind(delivery.verified)
                .push_bind(&delivery.summary)
                .push_bind(state)
                .push_bind(&delivery.payload)
                .push_bind(json(&delivery.results));
        });
        insert.push(" ON CONFLICT DO NOTHING RETURNING id");
        let mut inserted: HashMap<String, usize> = HashMap::new();
        for row in insert.build().fetch_all(&mut *tx).await? {
            *inserted.entry(row.get("id")).or_default() += 1;
        }
        // Rows go in in order: of a repeated id, the first ones went in, the later ones conflicted.
        let recorded: Vec<Recorded> = deliveries
            .iter()
            .map(|delivery| match inserted.get_mut(&delivery.id) {
                Some(count) if *count > 0 => {
                    *count -= 1;
                    Recorded::New
                }
                _ => Recorded::Duplicate,
            })
            .collect();
        let builds: Vec<QueuedBuild> = deliveries
            .iter()
            .zip(&recorded)
            .filter(|(_, recorded)| **recorded == Recorded::New)
            .flat_map(|(delivery, _)| delivery.builds.iter().cloned())
            .collect();
        queue(&mut tx, &builds).await?;
        tx.commit().await?;
        Ok(recorded)
    }

    async fn pending_deliveries(&self) -> Result<Vec<PendingDelivery>, Error> {
        let rows = sqlx::query(
            "SELECT id, event, payload, results FROM deliveries WHERE state = $1 ORDER BY seq",
        )
        .bind(PENDING)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| PendingDelivery {
                id: row.get("id"),
                event: row.get("event"),
                payload: row.get("payload"),
                results: serde_json::from_str(row.get("results")).unwrap_or_default(),
            })
            .collect())
    }

    async fn complete_delivery(
        &self,
        id: &str,
        results: &[TriggerResult],
        builds: &[QueuedBuild],
    ) -> Result<bool, Error> {
        let (_turn, mut tx) = self.write().await?;
        let updated = sqlx::query(
            "UPDATE deliveries SET state = $1, payload = NULL, results = $2 \
             WHERE id = $3 AND verified = 1 AND state = $4",
        )
        .bind(DONE)
        .bind(json(results))
        .bind(id)
        .bind(PENDING)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Ok(false);
        }
        queue(&mut tx, builds).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn list_deliveries(&self, limit: u32) -> Result<Vec<DeliveryRecord>, Error> {
        let rows = sqlx::query(
            "SELECT id, event, receive_time, verified, summary, state, results FROM deliveries \
             ORDER BY seq DESC LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| DeliveryRecord {
                id: row.get("id"),
                event: row.get("event"),
                receive_time: time(row.get("receive_time")),
                verified: row.get("verified"),
                summary: row.get("summary"),
                pending: row.get::<String, _>("state") == PENDING,
                results: serde_json::from_str(row.get("results")).unwrap_or_default(),
            })
            .collect())
    }

    async fn claim_queued(
        &self,
        lease: &Lease,
    ) -> Result<Option<(String, serde_json::Value)>, Error> {
        let (_turn, mut tx) = self.write().await?;
        let row = sqlx::query(
            "UPDATE builds SET status = $1, start_time = $2, holder = $3, lease_until = $4 WHERE id = \
             (SELECT id FROM builds WHERE status = $5 AND request IS NOT NULL \
              ORDER BY create_time, id LIMIT 1) \
             RETURNING id, request",
        )
        .bind(Status::Working.as_str())
        .bind(millis(SystemTime::now()))
        .bind(&lease.holder)
        .bind(lease.until())
        .bind(Status::Queued.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(row.map(|row| (row.get("id"), parse_json(row.get("request")))))
    }

    async fn queue_builds(&self, builds: &[QueuedBuild]) -> Result<(), Error> {
        let (_turn, mut tx) = self.write().await?;
        queue(&mut tx, builds).await?;
        Ok(tx.commit().await?)
    }

    async fn queued_request(&self, id: &str) -> Result<Option<QueuedBuild>, Error> {
        let row = sqlx::query(
            "SELECT id, trigger_name, schedule_name, delivery_id, source, substitutions, request FROM builds \
             WHERE id = $1 AND request IS NOT NULL",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|row| QueuedBuild {
            id: row.get("id"),
            trigger: row.get("trigger_name"),
            schedule: row.get("schedule_name"),
            delivery: row.get("delivery_id"),
            source: parse_json(row.get("source")),
            substitutions: parse_json(row.get("substitutions")),
            request: parse_json(row.get("request")),
        }))
    }

    async fn cancel_queued(&self, id: &str) -> Result<bool, Error> {
        let (_turn, mut tx) = self.write().await?;
        let updated = sqlx::query(
            "UPDATE builds SET status = $1, finish_time = $2 WHERE id = $3 AND status = $4",
        )
        .bind(Status::Cancelled.as_str())
        .bind(millis(SystemTime::now()))
        .bind(id)
        .bind(Status::Queued.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(updated.rows_affected() == 1)
    }

    async fn set_plan(&self, id: &str, plan: &ResolvedBuild) -> Result<(), Error> {
        let (_turn, mut tx) = self.write().await?;
        sqlx::query("UPDATE builds SET plan = $1, substitutions = $2 WHERE id = $3")
            .bind(json(plan))
            .bind(json(&plan.substitutions))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        insert_steps(&mut tx, id, plan).await?;
        Ok(tx.commit().await?)
    }

    async fn list_builds(&self, query: &BuildQuery) -> Result<Vec<BuildRecord>, Error> {
        let rows = select_builds("SELECT *", query)
            .build()
            .fetch_all(&self.pool)
            .await?;
        let ids: Vec<String> = rows.iter().map(|row| row.get("id")).collect();
        let mut steps: HashMap<String, Vec<StepRecord>> = HashMap::new();
        let step_rows = sqlx::query(
            "SELECT * FROM steps WHERE build_id IN (SELECT value FROM json_each($1)) \
             ORDER BY build_id, idx",
        )
        .bind(json(&ids))
        .fetch_all(&self.pool)
        .await?;
        for row in &step_rows {
            let build: String = row.get("build_id");
            steps.entry(build).or_default().push(step_record(row));
        }
        Ok(rows
            .iter()
            .map(|row| {
                let id: String = row.get("id");
                build_record(row, steps.remove(&id).unwrap_or_default())
            })
            .collect())
    }

    async fn get_build(&self, id: &str) -> Result<Option<BuildRecord>, Error> {
        // A prefix is a range of the primary key: ids are ASCII, below U+10FFFF.
        let rows = sqlx::query(
            "SELECT * FROM builds WHERE id >= $1 AND id < $1 || char(1114111) \
             ORDER BY id = $1 DESC LIMIT 2",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        let row = match rows.as_slice() {
            [row] => row,
            [first, _] if first.get::<String, _>("id") == id => first,
            _ => return Ok(None),
        };
        let steps = sqlx::query("SELECT * FROM steps WHERE build_id = $1 ORDER BY idx")
            .bind(row.get::<String, _>("id"))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(step_record)
            .collect();
        Ok(Some(build_record(row, steps)))
    }

    async fn logs(&self, id: &str, after: i64, limit: Option<u32>) -> Result<Vec<LogLine>, Error> {
        let limit = limit.map_or(usize::MAX, |limit| limit as usize);
        let rows = sqlx::query(
            "SELECT seq, step, stream, text FROM log_lines WHERE build_id = $1 AND seq > $2 \
             ORDER BY seq LIMIT $3",
        )
        .bind(id)
        .bind(after)
        .bind(i64::try_from(limit).unwrap_or(-1))
        .fetch_all(&self.pool)
        .await?;
        // A build has rows there only if it was logged before chunks, and then only there.
        if !rows.is_empty() {
            return Ok(rows.iter().map(line_row).collect());
        }
        // From the chunk that holds line `after + 1`, read chunk by chunk until the page is full.
        let mut chunks = sqlx::query(
            "SELECT first_seq, data FROM log_chunks WHERE build_id = $1 AND first_seq >= \
             COALESCE((SELECT first_seq FROM log_chunks WHERE build_id = $1 AND first_seq <= $2 \
             ORDER BY first_seq DESC LIMIT 1), 0) ORDER BY first_seq",
        )
        .bind(id)
        .bind(after + 1)
        .fetch(&self.pool);
        let mut page = Vec::new();
        while page.len() < limit
            && let Some(row) = chunks.try_next().await?
        {
            let first: i64 = row.get("first_seq");
            let lines = logs::decode_chunk(row.get("data")).map_err(Error::Log)?;
            let skip = usize::try_from(after + 1 - first).unwrap_or(0);
            let wanted = limit - page.len();
            page.extend(lines.into_iter().enumerate().skip(skip).take(wanted).map(
                |(i, (step, stream, text))| LogLine {
                    seq: first + i as i64,
                    step,
                    stream,
                    text,
                },
            ));
        }
        Ok(page)
    }

    async fn sync_schedule(
        &self,
        name: &str,
        spec: &str,
        first_run: DateTime<Utc>,
    ) -> Result<State, Error> {
        let (_turn, mut tx) = self.write().await?;
        sqlx::query(
            "INSERT INTO schedules (name, spec, next_run) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, next_run = excluded.next_run, \
             last_error = NULL WHERE schedules.spec <> excluded.spec",
        )
        .bind(name)
        .bind(spec)
        .bind(first_run.timestamp_millis())
        .execute(&mut *tx)
        .await?;
        let state = read_schedule(&mut *tx, name).await?;
        tx.commit().await?;
        state.ok_or(Error::Missing("schedule it has just written"))
    }

    async fn schedule_state(&self, name: &str) -> Result<Option<State>, Error> {
        read_schedule(&self.pool, name).await
    }

    async fn claim_scheduled_run(
        &self,
        name: &str,
        due: DateTime<Utc>,
        decision: &Decision,
        build: Option<&QueuedBuild>,
    ) -> Result<bool, Error> {
        let (_turn, mut tx) = self.write().await?;
        let claimed = sqlx::query(
            "UPDATE schedules SET next_run = $1, last_error = NULL WHERE name = $2 AND next_run = $3",
        )
        .bind(decision.next_run.timestamp_millis())
        .bind(name)
        .bind(due.timestamp_millis())
        .execute(&mut *tx)
        .await?;
        if claimed.rows_affected() == 0 {
            return Ok(false);
        }
        let now = Utc::now().timestamp_millis();
        for skipped in &decision.skipped {
            // The newest record grows while the same reason goes on and nothing ran since.
            let grown = sqlx::query(
                "UPDATE skipped_runs SET last_time = $1, count = MIN(count + $2, $3), record_time = $4 \
                 WHERE seq = (SELECT MAX(seq) FROM skipped_runs WHERE schedule = $5) AND reason = $6 \
                 AND last_time >= COALESCE((SELECT last_scheduled FROM schedules WHERE name = $5), 0)",
            )
            .bind(skipped.last.timestamp_millis())
            .bind(i64::from(skipped.count))
            .bind(i64::from(MAX_COUNTED))
            .bind(now)
            .bind(name)
            .bind(&skipped.reason)
            .execute(&mut *tx)
            .await?;
            if grown.rows_affected() == 0 {
                sqlx::query(
                    "INSERT INTO skipped_runs (schedule, first_time, last_time, count, reason, record_time) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(name)
                .bind(skipped.first.timestamp_millis())
                .bind(skipped.last.timestamp_millis())
                .bind(i64::from(skipped.count))
                .bind(&skipped.reason)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
        }
        if let (Some(scheduled_time), Some(build)) = (decision.start, build) {
            start_run(&mut tx, name, scheduled_time, build).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn queue_schedule_run(
        &self,
        name: &str,
        scheduled_time: DateTime<Utc>,
        build: &QueuedBuild,
    ) -> Result<(), Error> {
        let (_turn, mut tx) = self.write().await?;
        start_run(&mut tx, name, scheduled_time, build).await?;
        Ok(tx.commit().await?)
    }

    async fn set_schedule_paused(&self, name: &str, paused: bool) -> Result<(), Error> {
        let sql = "UPDATE schedules SET paused = $1 WHERE name = $2";
        self.set_schedule(sql, name, paused).await
    }

    async fn set_schedule_error(&self, name: &str, error: Option<&str>) -> Result<(), Error> {
        let sql = "UPDATE schedules SET last_error = $1 WHERE name = $2";
        self.set_schedule(sql, name, error).await
    }

    async fn skipped_runs(&self, name: &str, limit: u32) -> Result<Vec<SkippedRun>, Error> {
        let rows = sqlx::query(
            "SELECT first_time, last_time, count, reason, record_time FROM skipped_runs \
             WHERE schedule = $1 ORDER BY seq DESC LIMIT $2",
        )
        .bind(name)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| SkippedRun {
                skipped: Skipped {
                    first: instant(row.get("first_time")),
                    last: instant(row.get("last_time")),
                    count: row.get::<i64, _>("count") as u32,
                    reason: row.get("reason"),
                },
                record_time: instant(row.get("record_time")),
            })
            .collect())
    }
}

type Transaction<'t> = sqlx::Transaction<'t, sqlx::Sqlite>;

/// Queues a schedule's run and makes it the schedule's last run.
async fn start_run(
    tx: &mut Transaction<'_>,
    name: &str,
    scheduled_time: DateTime<Utc>,
    build: &QueuedBuild,
) -> Result<(), Error> {
    sqlx::query("UPDATE schedules SET last_scheduled = $1, last_build_id = $2 WHERE name = $3")
        .bind(scheduled_time.timestamp_millis())
        .bind(&build.id)
        .bind(name)
        .execute(&mut **tx)
        .await?;
    queue(tx, std::slice::from_ref(build)).await
}

async fn read_schedule<'e>(
    executor: impl sqlx::SqliteExecutor<'e>,
    name: &str,
) -> Result<Option<State>, Error> {
    let row = sqlx::query("SELECT * FROM schedules WHERE name = $1")
        .bind(name)
        .fetch_optional(executor)
        .await?;
    Ok(row.map(|row| {
        let last_build: Option<String> = row.get("last_build_id");
        let last_scheduled: Option<i64> = row.get("last_scheduled");
        State {
            next_run: instant(row.get("next_run")),
            spec: row.get("spec"),
            last_run: last_build.zip(last_scheduled).map(|(build, at)| LastRun {
                scheduled_time: instant(at),
                build,
            }),
            paused: row.get("paused"),
            last_error: row.get("last_error"),
        }
    }))
}

async fn set_step(
    tx: &mut Transaction<'_>,
    id: &str,
    index: usize,
    result: &StepResult,
) -> Result<(), Error> {
    sqlx::query(
        "UPDATE steps SET status = $1, exit_code = $2, start_time = $3, finish_time = $4, image_digest = $5, detail = $6, \
         output = $7 WHERE build_id = $8 AND idx = $9",
    )
    .bind(result.status.as_str())
    .bind(result.exit_code)
    .bind(result.start_time.map(millis))
    .bind(result.end_time.map(millis))
    .bind(&result.image_digest)
    .bind(&result.detail)
    .bind(&result.output)
    .bind(id)
    .bind(index as i64)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_steps(
    tx: &mut Transaction<'_>,
    id: &str,
    plan: &ResolvedBuild,
) -> Result<(), Error> {
    for (index, step) in plan.steps.iter().enumerate() {
        sqlx::query(
            "INSERT INTO steps (build_id, idx, step_id, name, status) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(index as i64)
        .bind(&step.id)
        .bind(&step.name)
        .bind(Status::Queued.as_str())
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Builds one statement inserts at most: SQLite takes at most 32,766 values in one.
const BUILDS_PER_INSERT: usize = 1000;

async fn queue(tx: &mut Transaction<'_>, builds: &[QueuedBuild]) -> Result<(), Error> {
    let now = millis(SystemTime::now());
    for builds in builds.chunks(BUILDS_PER_INSERT) {
        queue_chunk(tx, builds, now).await?;
    }
    Ok(())
}

async fn queue_chunk(
    tx: &mut Transaction<'_>,
    builds: &[QueuedBuild],
    now: i64,
) -> Result<(), Error> {
    let mut insert = QueryBuilder::<Sqlite>::new(
        "INSERT INTO builds (id, status, create_time, source, substitutions, plan, trigger_name, \
         delivery_id, request, schedule_name) ",
    );
    insert.push_values(builds, |mut row, build| {
        row.push_bind(&build.id)
            .push_bind(Status::Queued.as_str())
            .push_bind(now)
            .push_bind(build.source.to_string())
            .push_bind(build.substitutions.to_string())
            .push_bind("null")
            .push_bind(&build.trigger)
            .push_bind(&build.delivery)
            .push_bind(build.request.to_string())
            .push_bind(&build.schedule);
    });
    insert.build().execute(&mut **tx).await?;
    Ok(())
}

/// A time that is always there, as RFC 3339 text.
mod required_rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
        crate::core::build::rfc3339::serialize(&Some(*time), serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SystemTime, D::Error> {
        crate::core::build::rfc3339::deserialize(deserializer)?
            .ok_or_else(|| serde::de::Error::custom("a time is required"))
    }
}

/// The builds `query` selects, newest first: only the filters it gives, so that SQLite serves
/// them from their index (migration 0006).
fn select_builds(columns: &str, query: &BuildQuery) -> QueryBuilder<Sqlite> {
    let mut sql = QueryBuilder::new(columns);
    sql.push(" FROM builds WHERE true");
    if let Some(status) = query.status {
        sql.push(" AND status = ").push_bind(status.as_str());
    }
    if let Some(trigger) = &query.trigger {
        sql.push(" AND trigger_name = ").push_bind(trigger);
    }
    if let Some(schedule) = &query.schedule {
        sql.push(" AND schedule_name = ").push_bind(schedule);
    }
    if let Some(branch) = &query.branch {
        sql.push(" AND json_extract(substitutions, '$.BRANCH_NAME') = ")
            .push_bind(branch);
    }
    if let Some(before) = &query.before {
        sql.push(" AND (create_time, id) < (SELECT create_time, id FROM builds WHERE id = ")
            .push_bind(before)
            .push(")");
    }
    sql.push(" ORDER BY create_time DESC, id DESC LIMIT ")
        .push_bind(i64::from(query.limit))
        .push(" OFFSET ")
        .push_bind(i64::from(query.offset));
    sql
}

fn build_record(row: &SqliteRow, steps: Vec<StepRecord>) -> BuildRecord {
    BuildRecord {
        id: row.get("id"),
        status: status(row.get("status")),
        create_time: time(row.get("create_time")),
        start_time: row.get::<Option<i64>, _>("start_time").map(time),
        finish_time: row.get::<Option<i64>, _>("finish_time").map(time),
        trigger: row.get("trigger_name"),
        schedule: row.get("schedule_name"),
        source: parse_json(row.get("source")),
        substitutions: parse_json(row.get("substitutions")),
        plan: parse_json(row.get("plan")),
        images: serde_json::from_str(row.get("images")).unwrap_or_default(),
        templates: serde_json::from_str(row.get("templates")).unwrap_or_default(),
        failure: row.get("failure"),
        build_step_outputs: steps
            .iter()
            .map(|step| {
                let output = step.result.output.as_deref().unwrap_or_default();
                base64::engine::general_purpose::STANDARD.encode(output)
            })
            .collect(),
        steps,
    }
}

fn step_record(row: &SqliteRow) -> StepRecord {
    StepRecord {
        index: row.get::<i64, _>("idx") as usize,
        id: row.get("step_id"),
        name: row.get("name"),
        result: StepResult {
            status: status(row.get("status")),
            exit_code: row.get("exit_code"),
            start_time: row.get::<Option<i64>, _>("start_time").map(time),
            end_time: row.get::<Option<i64>, _>("finish_time").map(time),
            image_digest: row.get("image_digest"),
            detail: row.get("detail"),
            output: row.get("output"),
        },
    }
}

fn line_row(row: &sqlx::sqlite::SqliteRow) -> LogLine {
    LogLine {
        seq: row.get("seq"),
        step: row.get::<i64, _>("step") as usize,
        stream: if row.get::<String, _>("stream") == "stderr" {
            LogStream::Stderr
        } else {
            LogStream::Stdout
        },
        text: row.get("text"),
    }
}

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
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join(DATABASE)).await.unwrap();
        (dir, store)
    }

    fn queued(trigger: &str, branch: &str) -> QueuedBuild {
        QueuedBuild {
            id: uuid::Uuid::new_v4().to_string(),
            trigger: Some(trigger.into()),
            schedule: None,
            delivery: None,
            source: serde_json::json!({"kind": "none"}),
            substitutions: serde_json::json!({"BRANCH_NAME": branch}),
            request: serde_json::json!({}),
        }
    }

    fn lease(holder: &str, seconds: u64) -> Lease {
        Lease {
            holder: holder.into(),
            duration: Duration::from_secs(seconds),
        }
    }

    /// The queue's protocol between processes: a claim is its holder's until it runs out; only
    /// the holder renews it; a cancel reaches the holder at its renewal; of two processes taking
    /// an abandoned build over, one wins.
    #[tokio::test]
    async fn leases_hold_builds_for_their_holder_until_they_run_out() {
        let (_dir, store) = store().await;
        let build = queued("t", "main");
        store
            .queue_builds(std::slice::from_ref(&build))
            .await
            .unwrap();
        let (a, b) = (lease("a", 30), lease("b", 30));
        let (claimed, _) = store.claim_queued(&a).await.unwrap().expect("queued");
        assert_eq!(claimed, build.id);
        assert_eq!(store.claim_queued(&b).await.unwrap(), None);
        let held = Renewal::Held {
            cancel_requested: false,
        };
        assert_eq!(store.renew_lease(&build.id, &a).await.unwrap(), held);
        assert_eq!(
            store.renew_lease(&build.id, &b).await.unwrap(),
            Renewal::Lost
        );
        let unfinished = |expired| Unfinished {
            id: build.id.clone(),
            holder: Some("a".into()),
            expired,
        };
        assert_eq!(
            store.unfinished_builds().await.unwrap(),
            [unfinished(false)]
        );

        assert!(store.request_cancel(&build.id).await.unwrap());
        assert_eq!(
            store.renew_lease(&build.id, &a).await.unwrap(),
            Renewal::Held {
                cancel_requested: true
            }
        );

        // A renewal that gives no time left: the claim has run out.
        store.renew_lease(&build.id, &lease("a", 0)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(store.unfinished_builds().await.unwrap(), [unfinished(true)]);
        assert!(store.take_over(&build.id, Some("a"), &b).await.unwrap());
        assert!(
            !store
                .take_over(&build.id, Some("a"), &lease("c", 30))
                .await
                .unwrap()
        );
        assert_eq!(
            store.renew_lease(&build.id, &a).await.unwrap(),
            Renewal::Lost
        );

        let outcome = Outcome::ended(Status::InternalError, Vec::new(), None);
        store.finish_build(&build.id, &outcome).await.unwrap();
        assert_eq!(
            store.renew_lease(&build.id, &b).await.unwrap(),
            Renewal::Lost
        );
        assert!(!store.request_cancel(&build.id).await.unwrap());
        assert_eq!(store.unfinished_builds().await.unwrap(), []);
    }

    /// Each filter of the builds list, and the page after a build, is read from an index in
    /// page order: never a scan of the table nor a sort of every matching row.
    #[tokio::test]
    async fn build_pages_are_read_from_indexes() {
        let (_dir, store) = store().await;
        let some = || Some("x".to_string());
        let filters = [
            BuildQuery::default(),
            BuildQuery {
                status: Some(Status::Failure),
                ..Default::default()
            },
            BuildQuery {
                trigger: some(),
                ..Default::default()
            },
            BuildQuery {
                schedule: some(),
                ..Default::default()
            },
            BuildQuery {
                branch: some(),
                ..Default::default()
            },
        ];
        for filter in filters {
            for query in [
                filter.clone(),
                BuildQuery {
                    before: some(),
                    ..filter.clone()
                },
            ] {
                let plan: Vec<String> = select_builds("EXPLAIN QUERY PLAN SELECT *", &query)
                    .build()
                    .fetch_all(&store.pool)
                    .await
                    .unwrap()
                    .iter()
                    .map(|row| row.get("detail"))
                    .collect();
                let scans_or_sorts = |step: &String| {
                    step.contains("TEMP B-TREE")
                        || (step.starts_with("SCAN builds") && !step.contains("INDEX"))
                };
                assert!(!plan.iter().any(scans_or_sorts), "{query:?}: {plan:?}");
            }
        }
    }

    fn delivery(id: &str, verified: bool, builds: Vec<QueuedBuild>) -> NewDelivery {
        NewDelivery {
            id: id.into(),
            event: "push".into(),
            verified,
            summary: String::new(),
            payload: None,
            results: Vec::new(),
            builds,
        }
    }

    /// A batch is written in one statement per table; a verified id seen before, in the store or
    /// earlier in the same batch, is a duplicate and queues nothing.
    #[tokio::test]
    async fn a_batch_of_deliveries_queues_the_builds_of_new_ones_only() {
        let (_dir, store) = store().await;
        let first = store
            .record_deliveries(&[
                delivery("a", true, vec![queued("t", "main")]),
                delivery("a", true, vec![queued("t", "main")]),
                delivery("forged", false, vec![]),
                delivery("forged", false, vec![]),
            ])
            .await
            .unwrap();
        use Recorded::{Duplicate, New};
        assert_eq!(first, [New, Duplicate, New, New]);
        let again = store
            .record_deliveries(&[
                delivery("b", true, vec![queued("t", "main"), queued("u", "main")]),
                delivery("a", true, vec![queued("t", "main")]),
            ])
            .await
            .unwrap();
        assert_eq!(again, [New, Duplicate]);
        let builds = store.list_builds(&BuildQuery::default()).await.unwrap();
        assert_eq!(builds.len(), 3);
    }

    #[tokio::test]
    async fn build_pages_follow_each_other_newest_first() {
        let (_dir, store) = store().await;
        let builds: Vec<QueuedBuild> = (0..5)
            .map(|i| queued("t", if i % 2 == 0 { "main" } else { "dev" }))
            .collect();
        for build in &builds {
            store
                .queue_builds(std::slice::from_ref(build))
                .await
                .unwrap();
        }
        // Builds of the same millisecond are told apart by their ids.
        sqlx::query("UPDATE builds SET create_time = 1000 WHERE rowid % 2 = 0")
            .execute(&store.pool)
            .await
            .unwrap();
        let page = |before: Option<String>, branch: Option<&str>| {
            let query = BuildQuery {
                limit: 2,
                before,
                branch: branch.map(str::to_string),
                ..Default::default()
            };
            let store = store.clone();
            async move {
                let ids = store.list_builds(&query).await.unwrap();
                ids.into_iter().map(|b| b.id).collect::<Vec<_>>()
            }
        };
        let mut all = Vec::new();
        let mut before = None;
        loop {
            let ids = page(before, None).await;
            let Some(last) = ids.last().cloned() else {
                break;
            };
            all.extend(ids);
            before = Some(last);
        }
        let mut expected: Vec<(i64, String)> = Vec::new();
        for id in builds.iter().map(|b| &b.id) {
            let row = sqlx::query("SELECT create_time FROM builds WHERE id = $1")
                .bind(id)
                .fetch_one(&store.pool)
                .await
                .unwrap();
            expected.push((row.get("create_time"), id.clone()));
        }
        expected.sort_by(|a, b| b.cmp(a));
        let expected: Vec<String> = expected.into_iter().map(|(_, id)| id).collect();
        assert_eq!(all, expected);
        let main: Vec<String> = all
            .iter()
            .filter(|id| {
                builds
                    .iter()
                    .any(|b| &b.id == *id && b.substitutions["BRANCH_NAME"] == "main")
            })
            .take(2)
            .cloned()
            .collect();
        assert_eq!(page(None, Some("main")).await, main);
    }
}
