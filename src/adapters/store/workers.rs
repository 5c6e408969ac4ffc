//! The workers aggregate: the processes that run builds (`builder worker`, and `builder serve`
//! with its own worker), as each tells the store it is alive, so that anyone sharing the store
//! sees who claims which pool's builds, how many at once, and who stopped beating. A worker's
//! running builds are not kept here: they are the builds its leases hold.

use std::time::{Duration, SystemTime};

use sqlx::query::Query;
use sqlx::{Database, Encode, Type};

use super::{Columns, Error, Lease, SqliteStore, millis, time};
use crate::core::build::Status;

/// How long the row of a worker that stopped beating (it died, or its machine did) is kept:
/// shown as not live meanwhile, then removed, so that the table does not grow with every
/// process that ever ran.
pub const WORKERS_KEPT: Duration = Duration::from_secs(24 * 60 * 60);

/// A process that runs builds, as it beats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worker {
    /// Its id is its lease's holder (the builds it runs name it), and it is live for as long
    /// after a beat as its lease lasts.
    pub lease: Lease,
    /// The machine it runs on.
    pub host: String,
    /// The pool whose builds it claims; `None`: the default pool.
    pub pool: Option<String>,
    /// How many builds it runs at once.
    pub capacity: usize,
}

/// A worker as the store has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerRecord {
    pub id: String,
    pub host: String,
    pub pool: Option<String>,
    pub capacity: usize,
    pub start_time: SystemTime,
    pub heartbeat: SystemTime,
    /// Its last heartbeat plus its lease: past this, it is not live (its builds' leases have
    /// run out too).
    pub expires: SystemTime,
    /// The builds it holds that are WORKING, oldest first.
    pub builds: Vec<String>,
}

impl WorkerRecord {
    /// Whether it beat within its lease before `now`.
    pub fn live(&self, now: SystemTime) -> bool {
        self.expires > now
    }
}

/// The processes that run builds. A caller may rely on:
///
/// - [`Workers::beat_worker`] registers a worker at its first beat (its start time) and only
///   moves its heartbeat after;
/// - a worker removed ([`Workers::remove_worker`]) is listed no more; one that stopped beating is
///   listed with its last heartbeat until [`WORKERS_KEPT`] after it, then removed by anyone's
///   beat;
/// - a listed worker's builds are the WORKING builds its lease holds.
#[async_trait::async_trait]
pub trait Workers: Send + Sync {
    /// Records that `worker` is alive at `now` (registering it if it is new), and removes the
    /// workers with no heartbeat in the [`WORKERS_KEPT`] before `now`.
    async fn beat_worker(&self, worker: &Worker, now: SystemTime) -> Result<(), Error>;

    /// Removes a worker that stops.
    async fn remove_worker(&self, id: &str) -> Result<(), Error>;

    /// Every worker, by pool, host and id, with its running builds.
    async fn list_workers(&self) -> Result<Vec<WorkerRecord>, Error>;
}

/// Statements both dialects share.
const BEAT_WORKER: &str = "INSERT INTO workers \
     (id, host, pool, capacity, start_time, heartbeat, expires) VALUES ($1, $2, $3, $4, $5, $5, $6) \
     ON CONFLICT (id) DO UPDATE SET heartbeat = excluded.heartbeat, expires = excluded.expires";
const REMOVE_STALE_WORKERS: &str = "DELETE FROM workers WHERE heartbeat < $1";
pub(super) const REMOVE_WORKER: &str = "DELETE FROM workers WHERE id = $1";
/// Each worker with each WORKING build it holds (`$1`), a row each (one with a NULL `build` for
/// a worker that holds none), its builds oldest first.
pub(super) const LIST_WORKERS: &str = "SELECT w.id, w.host, w.pool, w.capacity, w.start_time, \
     w.heartbeat, w.expires, b.id AS build FROM workers w \
     LEFT JOIN builds b ON b.holder = w.id AND b.status = $1 \
     ORDER BY w.pool, w.host, w.id, b.start_time, b.id";

/// A beat's values: its worker's row, then the stale workers' limit.
pub(super) struct Beat<'w> {
    id: &'w str,
    host: &'w str,
    pool: &'w str,
    capacity: i64,
    now: i64,
    expires: i64,
    stale_before: i64,
}

impl Beat<'_> {
    /// The statement that registers its worker or moves its heartbeat.
    pub(super) fn upsert<DB>(&self) -> Query<'_, DB, DB::Arguments>
    where
        DB: Database,
        for<'t> &'t str: Encode<'t, DB> + Type<DB>,
        for<'t> i64: Encode<'t, DB> + Type<DB>,
    {
        sqlx::query(BEAT_WORKER)
            .bind(self.id)
            .bind(self.host)
            .bind(self.pool)
            .bind(self.capacity)
            .bind(self.now)
            .bind(self.expires)
    }

    /// The statement that removes the workers with no heartbeat for [`WORKERS_KEPT`].
    pub(super) fn remove_stale<DB>(&self) -> Query<'_, DB, DB::Arguments>
    where
        DB: Database,
        for<'t> i64: Encode<'t, DB> + Type<DB>,
    {
        sqlx::query(REMOVE_STALE_WORKERS).bind(self.stale_before)
    }
}

pub(super) fn beat(worker: &Worker, now: SystemTime) -> Beat<'_> {
    Beat {
        id: &worker.lease.holder,
        host: &worker.host,
        pool: worker.pool.as_deref().unwrap_or_default(),
        capacity: i64::try_from(worker.capacity).unwrap_or(i64::MAX),
        now: millis(now),
        expires: millis(now + worker.lease.duration),
        stale_before: millis(
            now.checked_sub(WORKERS_KEPT)
                .unwrap_or(std::time::UNIX_EPOCH),
        ),
    }
}

/// The workers of [`LIST_WORKERS`]' rows, each with its builds.
pub(super) fn worker_records(rows: &[impl Columns]) -> Vec<WorkerRecord> {
    let mut workers: Vec<WorkerRecord> = Vec::new();
    for row in rows {
        let id: String = row.column("id");
        if workers.last().is_none_or(|last| last.id != id) {
            workers.push(WorkerRecord {
                id,
                host: row.column("host"),
                pool: Some(row.column::<String>("pool")).filter(|pool| !pool.is_empty()),
                capacity: usize::try_from(row.column::<i64>("capacity")).unwrap_or(0),
                start_time: time(row.column("start_time")),
                heartbeat: time(row.column("heartbeat")),
                expires: time(row.column("expires")),
                builds: Vec::new(),
            });
        }
        if let (Some(worker), Some(build)) = (workers.last_mut(), row.column("build")) {
            worker.builds.push(build);
        }
    }
    workers
}

#[async_trait::async_trait]
impl Workers for SqliteStore {
    async fn beat_worker(&self, worker: &Worker, now: SystemTime) -> Result<(), Error> {
        let beat = beat(worker, now);
        let (_turn, mut tx) = self.write().await?;
        beat.remove_stale().execute(&mut *tx).await?;
        beat.upsert().execute(&mut *tx).await?;
        Ok(tx.commit().await?)
    }

    async fn remove_worker(&self, id: &str) -> Result<(), Error> {
        let (_turn, mut tx) = self.write().await?;
        sqlx::query(REMOVE_WORKER)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        Ok(tx.commit().await?)
    }

    async fn list_workers(&self) -> Result<Vec<WorkerRecord>, Error> {
        let rows = sqlx::query(LIST_WORKERS)
            .bind(Status::Working.as_str())
            .fetch_all(&self.pool)
            .await?;
        Ok(worker_records(&rows))
    }
}
