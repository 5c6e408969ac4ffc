//! The schedules aggregate: each schedule's state (next run, last run, paused, last error) and
//! the runs it skipped.

use chrono::{DateTime, Utc};
use sqlx::AssertSqlSafe;

use super::queue::GroupFull;
use super::{Columns, Error, QueuedBuild, SqliteStore, Transaction, instant, queue};
use crate::core::schedule::{Decision, LastRun, MAX_COUNTED, Skipped, State};

/// A run a schedule skipped, as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct SkippedRun {
    pub skipped: Skipped,
    pub record_time: DateTime<Utc>,
}

/// Schedules' state, kept so that every server sharing the store sees the same. A caller may rely
/// on: a schedule's state is created at its first sync and kept while its spec is the same; a due
/// run is claimed once ([`Schedules::claim_scheduled_run`] is a compare-and-set on the next run,
/// in the transaction that records the skipped runs and queues the run's build); a run's build
/// that skips a full group is queued only if its group has room, counted in that transaction
/// (as [`super::Queue::queue_builds`] does), and the run is recorded as skipped if not.
#[async_trait::async_trait]
pub trait Schedules: Send + Sync {
    /// A schedule's state: created with `first_run` as its next run if the store has none, or
    /// if it was computed for another `spec` (the file changed the expression or time zone).
    async fn sync_schedule(
        &self,
        name: &str,
        spec: &str,
        first_run: DateTime<Utc>,
    ) -> Result<State, Error>;

    /// A schedule's state, `None` before its first sync.
    async fn schedule_state(&self, name: &str) -> Result<Option<State>, Error>;

    /// Carries out `decision` for the run due at `due`, in one transaction and only if the
    /// schedule's next run is still `due` (`None`: another scheduler claimed it): records the
    /// skipped runs (one continuing the newest record of the same reason grows it), moves the
    /// next run on and queues `build`, the run it starts; if that build skips a full group, it
    /// is returned and the run recorded as skipped with its reason instead
    /// ([`Decision::start_skipped`]).
    async fn claim_scheduled_run(
        &self,
        name: &str,
        due: DateTime<Utc>,
        decision: &Decision,
        build: Option<&QueuedBuild>,
    ) -> Result<Option<Vec<GroupFull>>, Error>;

    /// Queues a run started by hand, which becomes the schedule's last run; if its build skips
    /// a full group, it is returned and nothing changes.
    async fn queue_schedule_run(
        &self,
        name: &str,
        scheduled_time: DateTime<Utc>,
        build: &QueuedBuild,
    ) -> Result<Vec<GroupFull>, Error>;

    /// Pauses (the scheduler starts no run) or resumes a schedule.
    async fn set_schedule_paused(&self, name: &str, paused: bool) -> Result<(), Error>;

    /// Keeps why starting the due run failed (`None` once it has not).
    async fn set_schedule_error(&self, name: &str, error: Option<&str>) -> Result<(), Error>;

    /// A schedule's newest skipped-run records first.
    async fn skipped_runs(&self, name: &str, limit: u32) -> Result<Vec<SkippedRun>, Error>;
}

/// Statements both dialects share.
pub(super) const SYNC_SCHEDULE: &str = "INSERT INTO schedules (name, spec, next_run) \
     VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, \
     next_run = excluded.next_run, last_error = NULL WHERE schedules.spec <> excluded.spec";
pub(super) const SCHEDULE: &str = "SELECT * FROM schedules WHERE name = $1";
pub(super) const CLAIM_RUN: &str = "UPDATE schedules SET next_run = $1, last_error = NULL \
     WHERE name = $2 AND next_run = $3";
pub(super) const INSERT_SKIPPED: &str = "INSERT INTO skipped_runs \
     (schedule, first_time, last_time, count, reason, record_time) \
     VALUES ($1, $2, $3, $4, $5, $6)";
pub(super) const START_RUN: &str =
    "UPDATE schedules SET last_scheduled = $1, last_build_id = $2 WHERE name = $3";
pub(super) const SET_PAUSED: &str = "UPDATE schedules SET paused = $1 WHERE name = $2";
pub(super) const SET_ERROR: &str = "UPDATE schedules SET last_error = $1 WHERE name = $2";
pub(super) const SKIPPED_RUNS: &str = "SELECT first_time, last_time, count, reason, record_time \
     FROM skipped_runs WHERE schedule = $1 ORDER BY seq DESC LIMIT $2";

/// The statement that grows the newest skipped-run record, if it continues the same reason and
/// nothing ran since; `least` is the dialect's function of the smaller of two values (a name of
/// the store's own, never input, so the statement is safe to run).
pub(super) fn grow_skipped(least: &str) -> String {
    format!(
        "UPDATE skipped_runs SET last_time = $1, count = {least}(count + $2, $3), \
         record_time = $4 WHERE seq = (SELECT MAX(seq) FROM skipped_runs WHERE schedule = $5) \
         AND reason = $6 \
         AND last_time >= COALESCE((SELECT last_scheduled FROM schedules WHERE name = $5), 0)"
    )
}

impl SqliteStore {
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
}

#[async_trait::async_trait]
impl Schedules for SqliteStore {
    async fn sync_schedule(
        &self,
        name: &str,
        spec: &str,
        first_run: DateTime<Utc>,
    ) -> Result<State, Error> {
        let (_turn, mut tx) = self.write().await?;
        sqlx::query(SYNC_SCHEDULE)
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
    ) -> Result<Option<Vec<GroupFull>>, Error> {
        let (_turn, mut tx) = self.write().await?;
        let claimed = sqlx::query(CLAIM_RUN)
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
            Some(build) => queue(&mut tx, std::slice::from_ref(build)).await?,
            None => Vec::new(),
        };
        let decision = started_or_skipped(decision, &full);
        let now = Utc::now().timestamp_millis();
        for skipped in &decision.skipped {
            // The newest record grows while the same reason goes on and nothing ran since.
            let grown = sqlx::query(AssertSqlSafe(grow_skipped("MIN")))
                .bind(skipped.last.timestamp_millis())
                .bind(i64::from(skipped.count))
                .bind(i64::from(MAX_COUNTED))
                .bind(now)
                .bind(name)
                .bind(&skipped.reason)
                .execute(&mut *tx)
                .await?;
            if grown.rows_affected() == 0 {
                sqlx::query(INSERT_SKIPPED)
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
        let (_turn, mut tx) = self.write().await?;
        let full = queue(&mut tx, std::slice::from_ref(build)).await?;
        if full.is_empty() {
            set_last_run(&mut tx, name, scheduled_time, build).await?;
        }
        tx.commit().await?;
        Ok(full)
    }

    async fn set_schedule_paused(&self, name: &str, paused: bool) -> Result<(), Error> {
        self.set_schedule(SET_PAUSED, name, paused).await
    }

    async fn set_schedule_error(&self, name: &str, error: Option<&str>) -> Result<(), Error> {
        self.set_schedule(SET_ERROR, name, error).await
    }

    async fn skipped_runs(&self, name: &str, limit: u32) -> Result<Vec<SkippedRun>, Error> {
        let rows = sqlx::query(SKIPPED_RUNS)
            .bind(name)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(skipped_run).collect())
    }
}

/// Makes a schedule's run, its build queued, the schedule's last run.
async fn set_last_run(
    tx: &mut Transaction<'_>,
    name: &str,
    scheduled_time: DateTime<Utc>,
    build: &QueuedBuild,
) -> Result<(), Error> {
    sqlx::query(START_RUN)
        .bind(scheduled_time.timestamp_millis())
        .bind(&build.id)
        .bind(name)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// `decision` as carried out once the build of the run it starts was queued, or was not
/// because it skips a full group (`full`).
pub(super) fn started_or_skipped(decision: &Decision, full: &[GroupFull]) -> Decision {
    match full.first() {
        Some(full) => decision.start_skipped(full.reason.clone()),
        None => decision.clone(),
    }
}

async fn read_schedule<'e>(
    executor: impl sqlx::SqliteExecutor<'e>,
    name: &str,
) -> Result<Option<State>, Error> {
    let row = sqlx::query(SCHEDULE)
        .bind(name)
        .fetch_optional(executor)
        .await?;
    Ok(row.as_ref().map(schedule_state))
}

pub(super) fn schedule_state(row: &impl Columns) -> State {
    let last_build: Option<String> = row.column("last_build_id");
    let last_scheduled: Option<i64> = row.column("last_scheduled");
    State {
        next_run: instant(row.column("next_run")),
        spec: row.column("spec"),
        last_run: last_build.zip(last_scheduled).map(|(build, at)| LastRun {
            scheduled_time: instant(at),
            build,
        }),
        paused: row.column("paused"),
        last_error: row.column("last_error"),
    }
}

pub(super) fn skipped_run(row: &impl Columns) -> SkippedRun {
    SkippedRun {
        skipped: Skipped {
            first: instant(row.column("first_time")),
            last: instant(row.column("last_time")),
            count: row.column::<i64>("count") as u32,
            reason: row.column("reason"),
        },
        record_time: instant(row.column("record_time")),
    }
}
