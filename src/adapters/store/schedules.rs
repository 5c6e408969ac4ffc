//! The schedules aggregate: each schedule's state (next run, last run, paused, last error) and
//! the runs it skipped.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{Error, QueuedBuild, SqliteStore, Transaction, instant, queue};
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
/// in the transaction that records the skipped runs and queues the run's build).
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

    /// Pauses (the scheduler starts no run) or resumes a schedule.
    async fn set_schedule_paused(&self, name: &str, paused: bool) -> Result<(), Error>;

    /// Keeps why starting the due run failed (`None` once it has not).
    async fn set_schedule_error(&self, name: &str, error: Option<&str>) -> Result<(), Error>;

    /// A schedule's newest skipped-run records first.
    async fn skipped_runs(&self, name: &str, limit: u32) -> Result<Vec<SkippedRun>, Error>;
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
