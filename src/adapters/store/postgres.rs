//! [`PostgresStore`]: the store in a PostgreSQL database that several servers and machines
//! share. The aggregates' contracts are SQLite's, and so are the rows (read by the same code) and
//! most statements; what differs is how changes that must happen once are made so: SQLite has
//! one writer at a time, PostgreSQL locks rows. The queue's claim skips the builds other claimers
//! hold locked (`FOR UPDATE SKIP LOCKED`), so claimers on many machines neither wait on each other
//! nor take the same build; a compare-and-set (taking a build over, claiming a scheduled run,
//! completing a delivery) is an UPDATE whose condition PostgreSQL checks again on the row's
//! newest version once a concurrent writer commits, so one of them wins.

use std::str::FromStr;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use sqlx::Row as _;
use sqlx::postgres::types::Oid;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Postgres};

use super::builds::{self, BuildQuery, BuildRecord, Builds};
use super::deliveries::{self, Deliveries, DeliveryRecord, NewDelivery, PendingDelivery, Recorded};
use super::logs::{self, LogLine, Logs};
use super::notifications::{
    self, Attempt, BuildEvent, DueNotification, NewNotification, NotificationRecord, Notifications,
};
use super::queue::{self, Claimed, GroupFull, Lease, Queue, QueuedBuild, Renewal, Unfinished};
use super::reports::{self, OpenReport, ReportFailure, ReportRecord, Reports};
use super::resources::{self, ResourceKind, ResourceWrite, Resources};
use super::retention::{self, References, Retention};
use super::schedules::{self, Schedules, SkippedRun};
use super::uploads::{self, Uploads};
use super::workers::{self, Worker, WorkerRecord, Workers};
use super::{APPLIED_MIGRATION, Change, Error, Store, json, millis, newer_schema};
use crate::adapters::runtime::LogStream;
use crate::core::build::{ApprovalResult, Outcome, Status, StepResult};
use crate::core::plan::ResolvedBuild;
use crate::core::retention::Pass;
use crate::core::schedule::{Decision, MAX_COUNTED, State};
use crate::core::triggers::TriggerResult;
use crate::core::webhooks::PullRequest;

type Transaction = sqlx::Transaction<'static, Postgres>;

/// The identity of the database a connection is in: another database made under the same name
/// (dropped and created again) has another.
const THIS_DATABASE: &str = "SELECT oid FROM pg_database WHERE datname = current_database()";

/// The store in a PostgreSQL database.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// The database that was opened (see [`THIS_DATABASE`]).
    database: Oid,
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`) and
    /// brings its schema up to date; refuses a database a newer builder migrated further.
    pub async fn open(url: &str) -> Result<PostgresStore, Error> {
        let unreachable = |error| Error::Unreachable {
            url: without_password(url),
            error,
        };
        let options = PgConnectOptions::from_str(url).map_err(unreachable)?;
        // The pool connects at once, so an unreachable server fails the start, not a request.
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(unreachable)?;
        // sqlx takes an advisory lock for the migrations: servers starting together take turns.
        let migrated = sqlx::migrate!("migrations/postgres").run(&pool).await;
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
        let database = sqlx::query_scalar(THIS_DATABASE).fetch_one(&pool).await?;
        Ok(PostgresStore { pool, database })
    }

    async fn write(&self) -> Result<Transaction, Error> {
        Ok(self.pool.begin().await?)
    }

    /// Of what `claims` lists as due at `now`, at most `limit`, those this caller claimed until
    /// `until` (see [`notifications::Claims`]).
    async fn claim_due<T>(
        &self,
        (due, claim, read, key): notifications::Claims<PgRow, T>,
        now: SystemTime,
        until: SystemTime,
        limit: u32,
    ) -> Result<Vec<T>, Error> {
        let rows = sqlx::query(due)
            .bind(millis(now))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        let mut claimed = Vec::new();
        for item in rows.iter().map(read) {
            let changed = sqlx::query(claim)
                .bind(millis(until))
                .bind(key(&item))
                .bind(millis(now))
                .execute(&self.pool)
                .await?;
            if changed.rows_affected() == 1 {
                claimed.push(item);
            }
        }
        Ok(claimed)
    }
}

/// `url` without its password (in its user part or a `password` parameter), to name it in
/// errors and logs.
fn without_password(url: &str) -> String {
    let (head, query) = url
        .split_once('?')
        .map_or((url, None), |(h, q)| (h, Some(q)));
    let head = match head.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            match authority.rsplit_once('@') {
                Some((user, host)) => {
                    let user = user.split_once(':').map_or(user, |(name, _)| name);
                    format!("{scheme}://{user}@{host}{path}")
                }
                None => head.to_string(),
            }
        }
        None => head.to_string(),
    };
    let kept: Vec<&str> = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter(|parameter| !parameter.starts_with("password="))
        .collect();
    if kept.is_empty() {
        head
    } else {
        format!("{head}?{}", kept.join("&"))
    }
}

#[async_trait::async_trait]
impl Store for PostgresStore {
    /// Fails once the database is not the one opened (dropped, or made again under its name), or
    /// cannot be reached.
    async fn check(&self) -> Result<(), Error> {
        let database: Option<Oid> = sqlx::query_scalar(THIS_DATABASE)
            .fetch_optional(&self.pool)
            .await?;
        match database {
            Some(database) if database == self.database => Ok(()),
            _ => Err(Error::Missing("database it opened: it was dropped")),
        }
    }

    async fn changes(&self) -> Result<Option<Changes>, Error> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen_all([QUEUED, BUILD, RESOURCES]).await?;
        Ok(Some(Changes(listener)))
    }
}

/// The channels the triggers of migrations 0010 and 0013 notify.
const QUEUED: &str = "builder_queued";
const BUILD: &str = "builder_build";
const RESOURCES: &str = "builder_resources";

/// The changes of a [`PostgresStore`], heard on a connection that LISTENs (see
/// [`Store::changes`]).
pub struct Changes(PgListener);

impl Changes {
    /// The next change; waits for one. A lost connection is made again here (what was notified
    /// meanwhile is lost); an error means it could not be.
    pub async fn next(&mut self) -> Result<Change, Error> {
        loop {
            let notification = self.0.recv().await?;
            let payload = notification.payload().to_string();
            match notification.channel() {
                QUEUED => return Ok(Change::Queued { pool: payload }),
                BUILD => return Ok(Change::Build { id: payload }),
                RESOURCES => return Ok(Change::Resources),
                _ => continue,
            }
        }
    }
}

#[async_trait::async_trait]
impl Builds for PostgresStore {
    async fn create_build(
        &self,
        id: &str,
        source: &serde_json::Value,
        plan: &ResolvedBuild,
        lease: &Lease,
    ) -> Result<(), Error> {
        let mut tx = self.write().await?;
        sqlx::query(builds::CREATE_BUILD)
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

    async fn start_build(&self, id: &str, lease: &Lease) -> Result<(), Error> {
        let mut tx = self.write().await?;
        fence(&mut tx, id, lease).await?;
        sqlx::query(builds::START_BUILD)
            .bind(Status::Working.as_str())
            .bind(millis(SystemTime::now()))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        Ok(tx.commit().await?)
    }

    async fn update_step(
        &self,
        id: &str,
        index: usize,
        result: &StepResult,
        lease: &Lease,
    ) -> Result<(), Error> {
        let mut tx = self.write().await?;
        fence(&mut tx, id, lease).await?;
        set_step(&mut tx, id, index, result).await?;
        Ok(tx.commit().await?)
    }

    async fn finish_build(&self, id: &str, outcome: &Outcome, lease: &Lease) -> Result<(), Error> {
        let mut tx = self.write().await?;
        fence(&mut tx, id, lease).await?;
        for (index, result) in outcome.steps.iter().enumerate() {
            set_step(&mut tx, id, index, result).await?;
        }
        sqlx::query(builds::FINISH_BUILD)
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

    async fn set_plan(&self, id: &str, plan: &ResolvedBuild, lease: &Lease) -> Result<(), Error> {
        let mut tx = self.write().await?;
        fence(&mut tx, id, lease).await?;
        sqlx::query(builds::SET_PLAN)
            .bind(json(plan))
            .bind(json(&plan.substitutions))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        insert_steps(&mut tx, id, plan).await?;
        Ok(tx.commit().await?)
    }

    async fn list_builds(&self, query: &BuildQuery) -> Result<Vec<BuildRecord>, Error> {
        let rows = builds::select_builds::<Postgres>(BRANCH, "SELECT *", query)
            .build()
            .fetch_all(&self.pool)
            .await?;
        let ids: Vec<String> = rows.iter().map(|row| row.get("id")).collect();
        let step_rows =
            sqlx::query("SELECT * FROM steps WHERE build_id = ANY($1) ORDER BY build_id, idx")
                .bind(ids)
                .fetch_all(&self.pool)
                .await?;
        Ok(builds::build_records(&rows, &step_rows))
    }

    async fn get_build(&self, id: &str) -> Result<Option<BuildRecord>, Error> {
        // A prefix is a range of the primary key, which sorts by bytes (COLLATE "C").
        let rows = sqlx::query(
            "SELECT * FROM builds WHERE id >= $1 AND id < $1 || chr(1114111) \
             ORDER BY id = $1 DESC LIMIT 2",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        let Some(row) = builds::by_prefix(&rows, id) else {
            return Ok(None);
        };
        let steps = sqlx::query(builds::STEPS_OF_BUILD)
            .bind(row.get::<String, _>("id"))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(builds::step_record)
            .collect();
        Ok(Some(builds::build_record(row, steps)))
    }
}

/// A build's branch, as its index (migration 0001) has it.
const BRANCH: &str = "((substitutions::jsonb) ->> 'BRANCH_NAME')";

async fn set_step(
    tx: &mut Transaction,
    id: &str,
    index: usize,
    result: &StepResult,
) -> Result<(), Error> {
    sqlx::query(builds::SET_STEP)
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

async fn insert_steps(tx: &mut Transaction, id: &str, plan: &ResolvedBuild) -> Result<(), Error> {
    for (index, step) in plan.steps.iter().enumerate() {
        sqlx::query(builds::INSERT_STEP)
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

#[async_trait::async_trait]
impl Logs for PostgresStore {
    async fn append_logs(
        &self,
        id: &str,
        lines: &[(usize, LogStream, String)],
        lease: &Lease,
    ) -> Result<(), Error> {
        if lines.is_empty() {
            return Ok(());
        }
        let chunk = logs::encode(lines)?;
        let mut tx = self.write().await?;
        // The fence locks the build's row: appends to one build take turns on it, so that each
        // numbers its lines after the last one's (on SQLite they take turns as every write does).
        fence(&mut tx, id, lease).await?;
        let next: i64 = sqlx::query_scalar(logs::NEXT_CHUNK)
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        sqlx::query(logs::INSERT_CHUNK)
            .bind(id)
            .bind(next)
            .bind(lines.len() as i64)
            .bind(chunk)
            .execute(&mut *tx)
            .await?;
        Ok(tx.commit().await?)
    }

    async fn logs(&self, id: &str, after: i64, limit: Option<u32>) -> Result<Vec<LogLine>, Error> {
        let chunks = sqlx::query(logs::CHUNKS_FROM)
            .bind(id)
            .bind(after + 1)
            .fetch(&self.pool);
        logs::read_chunks(chunks, after, limit).await
    }
}

#[async_trait::async_trait]
impl Queue for PostgresStore {
    async fn renew_lease(&self, id: &str, lease: &Lease) -> Result<Renewal, Error> {
        let renewed: Option<bool> = sqlx::query_scalar(queue::RENEW_LEASE)
            .bind(lease.until())
            .bind(id)
            .bind(&lease.holder)
            .bind(Status::Queued.as_str())
            .bind(Status::Working.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(queue::renewal(renewed))
    }

    async fn request_cancel(&self, id: &str) -> Result<bool, Error> {
        let updated = sqlx::query(queue::REQUEST_CANCEL)
            .bind(id)
            .bind(Status::Working.as_str())
            .execute(&self.pool)
            .await?;
        Ok(updated.rows_affected() == 1)
    }

    async fn take_over(
        &self,
        id: &str,
        previous: Option<&str>,
        lease: &Lease,
    ) -> Result<bool, Error> {
        let updated = sqlx::query(queue::TAKE_OVER)
            .bind(&lease.holder)
            .bind(lease.until())
            .bind(id)
            .bind(previous)
            .bind(Status::Queued.as_str())
            .bind(Status::Working.as_str())
            .execute(&self.pool)
            .await?;
        Ok(updated.rows_affected() == 1)
    }

    async fn unfinished_builds(&self) -> Result<Vec<Unfinished>, Error> {
        let rows = sqlx::query(queue::UNFINISHED)
            .bind(millis(SystemTime::now()))
            .bind(Status::Working.as_str())
            .bind(Status::Queued.as_str())
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(queue::unfinished).collect())
    }

    /// Claimers skip the rows others have locked. Two claimers of two builds of one group could
    /// each count the group's WORKING builds without the other's: so each claim, once made,
    /// counts its group again under the group's advisory lock (taken until it commits), and
    /// one that finds the group past its limit is undone and tried again; the group is then
    /// at its limit for the next try, which passes its builds over.
    async fn claim_queued(
        &self,
        lease: &Lease,
        pool: Option<&str>,
    ) -> Result<Option<Claimed>, Error> {
        let claim = format!(
            "{} FOR UPDATE SKIP LOCKED) RETURNING id, request, concurrency_group, concurrency_limit",
            queue::CLAIM_QUEUED
        );
        loop {
            let mut tx = self.write().await?;
            let Some(row) = queue::claim_queued::<Postgres>(claim.clone(), lease, pool)
                .fetch_optional(&mut *tx)
                .await?
            else {
                return Ok(None);
            };
            if let Some(group) = queue::concurrency_group(&row) {
                sqlx::query(LOCK_GROUP)
                    .bind(&group.name)
                    .execute(&mut *tx)
                    .await?;
                let working: i64 = sqlx::query_scalar(queue::GROUP_WORKING)
                    .bind(&group.name)
                    .bind(Status::Working.as_str())
                    .fetch_one(&mut *tx)
                    .await?;
                if working > i64::from(group.limit) {
                    tx.rollback().await?;
                    continue;
                }
            }
            tx.commit().await?;
            return Ok(Some(queue::claimed(&row)));
        }
    }

    async fn requeue(
        &self,
        id: &str,
        lease: &Lease,
        pool: Option<&str>,
        queue_ttl: Option<Duration>,
    ) -> Result<bool, Error> {
        let updated = sqlx::query(queue::REQUEUE)
            .bind(Status::Queued.as_str())
            .bind(pool.unwrap_or_default())
            .bind(id)
            .bind(&lease.holder)
            .bind(Status::Working.as_str())
            .bind(queue_ttl.map(queue::ttl_millis))
            .execute(&self.pool)
            .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// A claim in flight holds its row locked (`FOR UPDATE SKIP LOCKED`): the expiry's UPDATE
    /// waits for it and then finds the build no longer QUEUED, so one of them wins.
    async fn expire_queued(&self, now: SystemTime, failure: &str) -> Result<Vec<String>, Error> {
        Ok(sqlx::query_scalar(queue::EXPIRE_QUEUED)
            .bind(Status::Expired.as_str())
            .bind(millis(now))
            .bind(failure)
            .bind(Status::Queued.as_str())
            .fetch_all(&self.pool)
            .await?)
    }

    async fn queue_builds(&self, builds: &[QueuedBuild]) -> Result<Vec<GroupFull>, Error> {
        let mut tx = self.write().await?;
        let skipped = queue_in(&mut tx, builds).await?;
        tx.commit().await?;
        Ok(skipped)
    }

    async fn queued_request(&self, id: &str) -> Result<Option<QueuedBuild>, Error> {
        let row = sqlx::query(queue::QUEUED_REQUEST)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(queue::queued_build).transpose()
    }

    async fn group_builds(&self, group: &str, statuses: [Status; 2]) -> Result<Vec<String>, Error> {
        Ok(sqlx::query_scalar(queue::GROUP_BUILDS)
            .bind(group)
            .bind(statuses[0].as_str())
            .bind(statuses[1].as_str())
            .fetch_all(&self.pool)
            .await?)
    }

    async fn cancel_queued(&self, id: &str) -> Result<bool, Error> {
        let updated = queue::cancel_queued::<Postgres>(id)
            .execute(&self.pool)
            .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// One UPDATE whose condition (PENDING) PostgreSQL checks again on the row's newest version
    /// once a concurrent decision commits: of two decisions at once, one is made.
    async fn decide_approval(&self, id: &str, result: &ApprovalResult) -> Result<bool, Error> {
        let updated = queue::decide_approval::<Postgres>(id, result)
            .execute(&self.pool)
            .await?;
        Ok(updated.rows_affected() == 1)
    }
}

/// Refuses a write for build `id` unless `lease`'s holder holds it, unfinished
/// (`builds::FENCE`), and locks the build's row until the write's transaction ends: a take-over
/// waits for the write, or the write sees the take-over.
async fn fence(tx: &mut Transaction, id: &str, lease: &Lease) -> Result<(), Error> {
    let held = sqlx::query(AssertSqlSafe(format!("{} FOR UPDATE", builds::FENCE)))
        .bind(id)
        .bind(&lease.holder)
        .bind(Status::Queued.as_str())
        .bind(Status::Working.as_str())
        .fetch_optional(&mut **tx)
        .await?;
    held.map(drop).ok_or_else(|| Error::NotHeld {
        build: id.to_string(),
    })
}

/// Takes concurrency group `$1`'s advisory lock until the transaction ends: of the
/// transactions that count a group's builds to claim or to queue one, one at a time does, and a
/// statement after the lock sees what those that held it before committed.
const LOCK_GROUP: &str = "SELECT pg_advisory_xact_lock(hashtext($1))";

/// Queues `builds` in a transaction, but for those that skip a full group, which it returns:
/// each group they skip is counted under its lock ([`LOCK_GROUP`]).
async fn queue_in(tx: &mut Transaction, builds: &[QueuedBuild]) -> Result<Vec<GroupFull>, Error> {
    queue::queue_in(tx, builds, Some(LOCK_GROUP)).await
}

#[async_trait::async_trait]
impl Deliveries for PostgresStore {
    async fn record_deliveries(
        &self,
        deliveries: &[NewDelivery],
        dropped: u64,
    ) -> Result<Vec<Recorded>, Error> {
        if deliveries.is_empty() && dropped == 0 {
            return Ok(Vec::new());
        }
        let mut tx = self.write().await?;
        // A batch of nothing but a count of dropped rejections inserts no row.
        let inserted: Vec<String> = if deliveries.is_empty() {
            Vec::new()
        } else {
            deliveries::insert_deliveries::<Postgres>(deliveries)
                .build()
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|row| row.get("id"))
                .collect()
        };
        let (recorded, builds) = deliveries::recorded(deliveries, inserted);
        let skipped = queue_in(&mut tx, &builds).await?;
        let recorded = deliveries::with_skipped(deliveries, recorded, &skipped);
        let updates = deliveries::skipped_results(deliveries, &recorded);
        deliveries::set_results(&mut tx, updates).await?;
        for (repository, number, pull_request) in deliveries::pull_requests(deliveries, &recorded) {
            sqlx::query(deliveries::KEEP_PULL_REQUEST)
                .bind(repository)
                .bind(number)
                .bind(pull_request)
                .execute(&mut *tx)
                .await?;
        }
        let rejected = deliveries.iter().filter(|d| !d.verified).count() as u64;
        if rejected + dropped > 0 {
            sqlx::query(deliveries::COUNT_REJECTED)
                .bind(deliveries::REJECTED)
                .bind(i64::try_from(rejected + dropped).unwrap_or(i64::MAX))
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "DELETE FROM deliveries WHERE NOT verified AND seq < \
                 (SELECT seq FROM deliveries WHERE NOT verified ORDER BY seq DESC LIMIT 1 OFFSET $1)",
            )
            .bind(i64::from(deliveries::REJECTED_KEPT - 1))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(recorded)
    }

    async fn pull_request(
        &self,
        repository: &str,
        number: u64,
    ) -> Result<Option<PullRequest>, Error> {
        let text: Option<String> = sqlx::query_scalar(deliveries::PULL_REQUEST)
            .bind(repository.to_ascii_lowercase())
            .bind(number as i64)
            .fetch_optional(&self.pool)
            .await?;
        deliveries::read_pull_request(text)
    }

    async fn pending_deliveries(&self) -> Result<Vec<PendingDelivery>, Error> {
        let rows = sqlx::query(deliveries::PENDING_DELIVERIES)
            .bind(deliveries::PENDING)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(deliveries::pending_delivery).collect())
    }

    async fn complete_delivery(
        &self,
        id: &str,
        results: &[TriggerResult],
        builds: &[QueuedBuild],
    ) -> Result<Option<Vec<GroupFull>>, Error> {
        let mut tx = self.write().await?;
        let updated = sqlx::query(
            "UPDATE deliveries SET state = $1, payload = NULL, results = $2 \
             WHERE id = $3 AND verified AND state = $4",
        )
        .bind(deliveries::DONE)
        .bind(json(results))
        .bind(id)
        .bind(deliveries::PENDING)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Ok(None);
        }
        let skipped = queue_in(&mut tx, builds).await?;
        let update = deliveries::completed_results(id, results, &skipped);
        deliveries::set_results(&mut tx, update).await?;
        tx.commit().await?;
        Ok(Some(skipped))
    }

    async fn list_deliveries(&self, limit: u32) -> Result<Vec<DeliveryRecord>, Error> {
        let rows = sqlx::query(deliveries::LIST_DELIVERIES)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(deliveries::delivery_record).collect())
    }

    async fn rejected_deliveries(&self) -> Result<u64, Error> {
        let count: Option<i64> = sqlx::query_scalar(deliveries::REJECTED_COUNT)
            .bind(deliveries::REJECTED)
            .fetch_optional(&self.pool)
            .await?;
        Ok(deliveries::rejected_count(count))
    }
}

#[async_trait::async_trait]
impl Schedules for PostgresStore {
    async fn sync_schedule(
        &self,
        name: &str,
        spec: &str,
        first_run: DateTime<Utc>,
    ) -> Result<State, Error> {
        let mut tx = self.write().await?;
        sqlx::query(schedules::SYNC_SCHEDULE)
            .bind(name)
            .bind(spec)
            .bind(first_run.timestamp_millis())
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query(schedules::SCHEDULE)
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        row.as_ref()
            .map(schedules::schedule_state)
            .ok_or(Error::Missing("schedule it has just written"))
    }

    async fn schedule_state(&self, name: &str) -> Result<Option<State>, Error> {
        let row = sqlx::query(schedules::SCHEDULE)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(schedules::schedule_state))
    }

    async fn claim_scheduled_run(
        &self,
        name: &str,
        due: DateTime<Utc>,
        decision: &Decision,
        build: Option<&QueuedBuild>,
    ) -> Result<Option<Vec<GroupFull>>, Error> {
        let mut tx = self.write().await?;
        let claimed = sqlx::query(schedules::CLAIM_RUN)
            .bind(decision.next_run.timestamp_millis())
            .bind(name)
            .bind(due.timestamp_millis())
            .execute(&mut *tx)
            .await?;
        if claimed.rows_affected() == 0 {
            return Ok(None);
        }
        let started = decision.start.and(build);
        let full = match started {
            Some(build) => queue_in(&mut tx, std::slice::from_ref(build)).await?,
            None => Vec::new(),
        };
        let decision = schedules::started_or_skipped(decision, &full);
        let now = Utc::now().timestamp_millis();
        let grow = schedules::grow_skipped("LEAST");
        for skipped in &decision.skipped {
            let grown = sqlx::query(AssertSqlSafe(grow.clone()))
                .bind(skipped.last.timestamp_millis())
                .bind(i64::from(skipped.count))
                .bind(i64::from(MAX_COUNTED))
                .bind(now)
                .bind(name)
                .bind(&skipped.reason)
                .execute(&mut *tx)
                .await?;
            if grown.rows_affected() == 0 {
                sqlx::query(schedules::INSERT_SKIPPED)
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
            set_last_run(&mut tx, name, scheduled_time, build).await?;
        }
        tx.commit().await?;
        Ok(Some(full))
    }

    async fn queue_schedule_run(
        &self,
        name: &str,
        scheduled_time: DateTime<Utc>,
        build: &QueuedBuild,
    ) -> Result<Vec<GroupFull>, Error> {
        let mut tx = self.write().await?;
        let full = queue_in(&mut tx, std::slice::from_ref(build)).await?;
        if full.is_empty() {
            set_last_run(&mut tx, name, scheduled_time, build).await?;
        }
        tx.commit().await?;
        Ok(full)
    }

    async fn set_schedule_paused(&self, name: &str, paused: bool) -> Result<(), Error> {
        sqlx::query(schedules::SET_PAUSED)
            .bind(paused)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn set_schedule_error(&self, name: &str, error: Option<&str>) -> Result<(), Error> {
        sqlx::query(schedules::SET_ERROR)
            .bind(error)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn skipped_runs(&self, name: &str, limit: u32) -> Result<Vec<SkippedRun>, Error> {
        let rows = sqlx::query(schedules::SKIPPED_RUNS)
            .bind(name)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(schedules::skipped_run).collect())
    }
}

#[async_trait::async_trait]
impl Reports for PostgresStore {
    async fn claim_reports(
        &self,
        now: SystemTime,
        until: SystemTime,
        limit: u32,
    ) -> Result<Vec<OpenReport>, Error> {
        let rows = sqlx::query(reports::OPEN_REPORTS)
            .bind(false)
            .bind(millis(now))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        let mut claimed = Vec::new();
        for report in rows.iter().map(reports::open_report) {
            let claim = sqlx::query(reports::CLAIM_REPORT)
                .bind(millis(until))
                .bind(&report.build_id)
                .bind(millis(now))
                .execute(&self.pool)
                .await?;
            if claim.rows_affected() == 1 {
                claimed.push(report);
            }
        }
        Ok(claimed)
    }

    async fn report_sent(
        &self,
        id: &str,
        status: Status,
        check_run: Option<u64>,
    ) -> Result<(), Error> {
        sqlx::query(reports::REPORT_SENT)
            .bind(status.as_str())
            .bind(check_run.map(|id| id as i64))
            .bind(false)
            .bind(status.is_final())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn report_failed(&self, id: &str, failure: &ReportFailure) -> Result<(), Error> {
        let (lasting, next_attempt, done) = reports::failed_values(failure);
        sqlx::query(reports::REPORT_FAILED)
            .bind(failure.status.as_str())
            .bind(i64::from(failure.attempts))
            .bind(&failure.error)
            .bind(lasting)
            .bind(next_attempt)
            .bind(done)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn report_of(&self, id: &str) -> Result<Option<ReportRecord>, Error> {
        let row = sqlx::query(reports::REPORT_OF)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(reports::report_record))
    }
}

/// PostgreSQL's expression for a field of a build's `source`.
fn source_field(field: &str) -> String {
    format!("((source::jsonb) ->> '{field}')")
}

#[async_trait::async_trait]
impl Retention for PostgresStore {
    async fn remove_builds(&self, before: SystemTime, limit: u32) -> Result<u64, Error> {
        let removed = sqlx::query(retention::REMOVE_BUILDS)
            .bind(millis(before))
            .bind(Status::Queued.as_str())
            .bind(Status::Working.as_str())
            .bind(i64::from(limit))
            .bind(Status::Pending.as_str())
            .execute(&self.pool)
            .await?;
        Ok(removed.rows_affected())
    }

    async fn remove_deliveries(&self, before: SystemTime, limit: u32) -> Result<u64, Error> {
        let removed = sqlx::query(retention::REMOVE_DELIVERIES)
            .bind(millis(before))
            .bind(deliveries::PENDING)
            .bind(i64::from(limit))
            .execute(&self.pool)
            .await?;
        Ok(removed.rows_affected())
    }

    async fn remove_uploads(&self, before: SystemTime, limit: u32) -> Result<u64, Error> {
        let removed = sqlx::query(AssertSqlSafe(retention::remove_uploads(source_field)))
            .bind(millis(before))
            .bind(i64::from(limit))
            .execute(&self.pool)
            .await?;
        Ok(removed.rows_affected())
    }

    async fn references(&self) -> Result<References, Error> {
        let unfinished = sqlx::query_scalar(retention::UNFINISHED_IDS)
            .bind(Status::Queued.as_str())
            .bind(Status::Working.as_str())
            .bind(Status::Pending.as_str())
            .fetch_all(&self.pool)
            .await?;
        let distinct = |field| async move {
            let query = retention::distinct_sources(source_field, field);
            sqlx::query_scalar::<_, String>(AssertSqlSafe(query))
                .fetch_all(&self.pool)
                .await
        };
        Ok(References {
            unfinished: unfinished.into_iter().collect(),
            clone_urls: distinct("cloneUrl").await?.into_iter().collect(),
        })
    }

    async fn record_pass(&self, pass: &Pass) -> Result<(), Error> {
        let mut tx = self.write().await?;
        let mut insert = sqlx::query(retention::RECORD_PASS);
        for value in retention::pass_values(pass) {
            insert = insert.bind(value);
        }
        insert.bind(&pass.error).execute(&mut *tx).await?;
        sqlx::query(retention::FORGET_PASSES)
            .bind(i64::from(retention::PASSES_KEPT))
            .execute(&mut *tx)
            .await?;
        Ok(tx.commit().await?)
    }

    async fn retention_passes(&self, limit: u32) -> Result<Vec<Pass>, Error> {
        let rows = sqlx::query(retention::PASSES)
            .bind(i64::from(limit.min(retention::PASSES_KEPT)))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(retention::pass).collect())
    }
}

/// Makes a schedule's run, its build queued, the schedule's last run.
async fn set_last_run(
    tx: &mut Transaction,
    name: &str,
    scheduled_time: DateTime<Utc>,
    build: &QueuedBuild,
) -> Result<(), Error> {
    sqlx::query(schedules::START_RUN)
        .bind(scheduled_time.timestamp_millis())
        .bind(&build.id)
        .bind(name)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[async_trait::async_trait]
impl Uploads for PostgresStore {
    async fn put_upload(&self, id: &str, archive: &[u8]) -> Result<(), Error> {
        let (create_time, size) = uploads::row(archive);
        let mut tx = self.write().await?;
        sqlx::query(uploads::INSERT_UPLOAD)
            .bind(id)
            .bind(create_time)
            .bind(size)
            .execute(&mut *tx)
            .await?;
        for (seq, data) in uploads::chunks(archive) {
            sqlx::query(uploads::INSERT_CHUNK)
                .bind(id)
                .bind(seq)
                .bind(data)
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx.commit().await?)
    }

    async fn attach_upload(&self, id: &str, build: &str) -> Result<bool, Error> {
        let attached = sqlx::query(uploads::ATTACH_UPLOAD)
            .bind(build)
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(attached == 1)
    }

    async fn upload_chunk(&self, id: &str, seq: i64) -> Result<Option<Vec<u8>>, Error> {
        Ok(sqlx::query_scalar(uploads::UPLOAD_CHUNK)
            .bind(id)
            .bind(seq)
            .fetch_optional(&self.pool)
            .await?)
    }
}

#[async_trait::async_trait]
impl Resources for PostgresStore {
    async fn write_resource(
        &self,
        kind: ResourceKind,
        name: &str,
        write: ResourceWrite<'_>,
    ) -> Result<bool, Error> {
        let query = resources::write_statement::<Postgres>(kind, name, write);
        Ok(query.execute(&self.pool).await?.rows_affected() == 1)
    }

    async fn resources(&self, kind: ResourceKind) -> Result<Vec<(String, Vec<u8>)>, Error> {
        let query = sqlx::query_as(resources::RESOURCES).bind(kind.as_str());
        Ok(query.fetch_all(&self.pool).await?)
    }
}

#[async_trait::async_trait]
impl Workers for PostgresStore {
    async fn beat_worker(&self, worker: &Worker, now: SystemTime) -> Result<(), Error> {
        let beat = workers::beat(worker, now);
        let mut tx = self.write().await?;
        beat.remove_stale().execute(&mut *tx).await?;
        beat.upsert().execute(&mut *tx).await?;
        Ok(tx.commit().await?)
    }

    async fn remove_worker(&self, id: &str) -> Result<(), Error> {
        sqlx::query(workers::REMOVE_WORKER)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn list_workers(&self) -> Result<Vec<WorkerRecord>, Error> {
        let rows = sqlx::query(workers::LIST_WORKERS)
            .bind(Status::Working.as_str())
            .fetch_all(&self.pool)
            .await?;
        Ok(workers::worker_records(&rows))
    }
}

#[async_trait::async_trait]
impl Notifications for PostgresStore {
    async fn claim_events(
        &self,
        now: SystemTime,
        until: SystemTime,
        limit: u32,
    ) -> Result<Vec<BuildEvent>, Error> {
        let due: notifications::Claims<_, _> = (
            notifications::EVENTS_DUE,
            notifications::CLAIM_EVENT,
            notifications::event,
            |e| e.seq,
        );
        self.claim_due(due, now, until, limit).await
    }

    async fn publish(
        &self,
        event: &BuildEvent,
        claimed_until: SystemTime,
        new: &[NewNotification],
        now: SystemTime,
    ) -> Result<bool, Error> {
        let mut tx = self.write().await?;
        let removed = sqlx::query(notifications::REMOVE_EVENT)
            .bind(event.seq)
            .bind(millis(claimed_until))
            .execute(&mut *tx)
            .await?;
        if removed.rows_affected() == 0 {
            return Ok(false);
        }
        for notification in new {
            sqlx::query(notifications::INSERT_NOTIFICATION)
                .bind(&event.build_id)
                .bind(event.status.as_str())
                .bind(&notification.notifier)
                .bind(&notification.message)
                .bind(millis(now))
                .bind(notification.unsendable.is_some())
                .bind(&notification.unsendable)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn claim_notifications(
        &self,
        now: SystemTime,
        until: SystemTime,
        limit: u32,
    ) -> Result<Vec<DueNotification>, Error> {
        let due: notifications::Claims<_, _> = (
            notifications::NOTIFICATIONS_DUE,
            notifications::CLAIM_NOTIFICATION,
            notifications::due,
            |n| n.id,
        );
        self.claim_due(due, now, until, limit).await
    }

    async fn attempted(
        &self,
        id: i64,
        attempt: &Attempt,
        claimed_until: SystemTime,
        now: SystemTime,
    ) -> Result<bool, Error> {
        let (next_attempt, done, delivered) = notifications::after_attempt(attempt);
        let mut tx = self.write().await?;
        let updated = sqlx::query(notifications::AFTER_ATTEMPT)
            .bind(i64::from(attempt.number))
            .bind(next_attempt)
            .bind(done)
            .bind(delivered)
            .bind(&attempt.error)
            .bind(id)
            .bind(millis(claimed_until))
            .execute(&mut *tx)
            .await?;
        if updated.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query(notifications::RECORD_ATTEMPT)
            .bind(id)
            .bind(i64::from(attempt.number))
            .bind(millis(now))
            .bind(&attempt.error)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn recent_notifications(&self, limit: u32) -> Result<Vec<NotificationRecord>, Error> {
        let rows = sqlx::query(notifications::RECENT_NOTIFICATIONS)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(notifications::record).collect())
    }

    async fn attempts(&self, id: i64) -> Result<Vec<(SystemTime, Option<String>)>, Error> {
        let rows = sqlx::query(notifications::ATTEMPTS)
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(notifications::attempt).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::without_password;

    #[test]
    fn a_url_is_named_without_its_password() {
        for (url, named) in [
            (
                "postgres://builder:s3cr@t@db.example:5432/builds",
                "postgres://builder@db.example:5432/builds",
            ),
            (
                "postgres://builder@db/builds",
                "postgres://builder@db/builds",
            ),
            (
                "postgres://db/builds?user=b&password=x&sslmode=require",
                "postgres://db/builds?user=b&sslmode=require",
            ),
            ("postgres://u:p@db", "postgres://u@db"),
        ] {
            assert_eq!(without_password(url), named, "{url}");
        }
    }
}
