//! The build record: every build's status, step results, substitutions, source, results and log
//! lines, kept in an embedded SQLite database in the user's data directory, so builds can be
//! listed, described and their logs read after the fact.
//!
//! This is the only module that speaks SQL. Times are stored as unix milliseconds.

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{Row, sqlite::SqliteRow};

use crate::build::{Outcome, PushedImage, Status, StepResult};
use crate::plan::ResolvedBuild;
use crate::runtime::LogStream;

pub type Error = sqlx::Error;

#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
}

/// A build as recorded.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildRecord {
    pub id: String,
    pub status: Status,
    #[serde(serialize_with = "rfc3339_required")]
    pub create_time: SystemTime,
    #[serde(with = "crate::build::rfc3339")]
    pub start_time: Option<SystemTime>,
    #[serde(with = "crate::build::rfc3339")]
    pub finish_time: Option<SystemTime>,
    pub source: serde_json::Value,
    pub substitutions: serde_json::Value,
    pub plan: serde_json::Value,
    pub images: Vec<PushedImage>,
    pub failure: Option<String>,
    pub steps: Vec<StepRecord>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepRecord {
    pub index: usize,
    pub id: Option<String>,
    pub name: String,
    #[serde(flatten)]
    pub result: StepResult,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    pub seq: i64,
    pub step: usize,
    pub stream: LogStream,
    pub text: String,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<Store, Error> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(Error::Io)?;
        }
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::migrate!("migrations/sqlite").run(&pool).await?;
        Ok(Store { pool })
    }

    /// Records a new build as QUEUED, with every step QUEUED.
    pub async fn create_build(
        &self,
        id: &str,
        source: &serde_json::Value,
        plan: &ResolvedBuild,
    ) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO builds (id, status, create_time, source, substitutions, plan) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(Status::Queued.as_str())
        .bind(millis(SystemTime::now()))
        .bind(source.to_string())
        .bind(json(&plan.substitutions))
        .bind(json(plan))
        .execute(&mut *tx)
        .await?;
        for (index, step) in plan.steps.iter().enumerate() {
            sqlx::query("INSERT INTO steps (build_id, idx, step_id, name, status) VALUES ($1, $2, $3, $4, $5)")
                .bind(id)
                .bind(index as i64)
                .bind(&step.id)
                .bind(&step.name)
                .bind(Status::Queued.as_str())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    }

    pub async fn start_build(&self, id: &str) -> Result<(), Error> {
        sqlx::query("UPDATE builds SET status = $1, start_time = $2 WHERE id = $3")
            .bind(Status::Working.as_str())
            .bind(millis(SystemTime::now()))
            .bind(id)
            .execute(&self.pool)
            .await
            .map(drop)
    }

    pub async fn update_step(
        &self,
        id: &str,
        index: usize,
        result: &StepResult,
    ) -> Result<(), Error> {
        sqlx::query(
            "UPDATE steps SET status = $1, exit_code = $2, start_time = $3, finish_time = $4, image_digest = $5, detail = $6 \
             WHERE build_id = $7 AND idx = $8",
        )
        .bind(result.status.as_str())
        .bind(result.exit_code)
        .bind(result.start_time.map(millis))
        .bind(result.end_time.map(millis))
        .bind(&result.image_digest)
        .bind(&result.detail)
        .bind(id)
        .bind(index as i64)
        .execute(&self.pool)
        .await
        .map(drop)
    }

    /// Appends log lines of a build, numbering them after the ones already stored.
    pub async fn append_logs(
        &self,
        id: &str,
        lines: &[(usize, LogStream, String)],
    ) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        let next: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM log_lines WHERE build_id = $1",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        for (offset, (step, stream, text)) in lines.iter().enumerate() {
            sqlx::query("INSERT INTO log_lines (build_id, seq, step, stream, text) VALUES ($1, $2, $3, $4, $5)")
                .bind(id)
                .bind(next + offset as i64)
                .bind(*step as i64)
                .bind(stream_name(*stream))
                .bind(text)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    }

    /// Records how the build ended: its status, every step's result, pushed images, failure.
    pub async fn finish_build(&self, id: &str, outcome: &Outcome) -> Result<(), Error> {
        for (index, result) in outcome.steps.iter().enumerate() {
            self.update_step(id, index, result).await?;
        }
        sqlx::query("UPDATE builds SET status = $1, finish_time = $2, images = $3, failure = $4 WHERE id = $5")
            .bind(outcome.status.as_str())
            .bind(millis(SystemTime::now()))
            .bind(json(&outcome.images))
            .bind(&outcome.failure)
            .bind(id)
            .execute(&self.pool)
            .await
            .map(drop)
    }

    /// Ids of the builds not yet finished.
    pub async fn unfinished_builds(&self) -> Result<Vec<String>, Error> {
        sqlx::query_scalar("SELECT id FROM builds WHERE status IN ($1, $2)")
            .bind(Status::Queued.as_str())
            .bind(Status::Working.as_str())
            .fetch_all(&self.pool)
            .await
    }

    /// The newest builds first.
    pub async fn list_builds(&self, limit: u32) -> Result<Vec<BuildRecord>, Error> {
        let ids: Vec<String> =
            sqlx::query_scalar("SELECT id FROM builds ORDER BY create_time DESC, id LIMIT $1")
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
        let mut builds = Vec::with_capacity(ids.len());
        for id in ids {
            builds.extend(self.get_build(&id).await?);
        }
        Ok(builds)
    }

    /// A build by id, or by a unique prefix of its id.
    pub async fn get_build(&self, id: &str) -> Result<Option<BuildRecord>, Error> {
        let rows = sqlx::query(
            "SELECT * FROM builds WHERE id = $1 OR id LIKE $2 || '%' ORDER BY id = $1 DESC LIMIT 2",
        )
        .bind(id)
        .bind(id.replace(['%', '_'], ""))
        .fetch_all(&self.pool)
        .await?;
        let row = match rows.as_slice() {
            [row] => row,
            [first, _] if first.get::<String, _>("id") == id => first,
            _ => return Ok(None),
        };
        let id: String = row.get("id");
        let steps = sqlx::query("SELECT * FROM steps WHERE build_id = $1 ORDER BY idx")
            .bind(&id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(step_record)
            .collect();
        Ok(Some(BuildRecord {
            status: status(row.get("status")),
            create_time: time(row.get("create_time")),
            start_time: row.get::<Option<i64>, _>("start_time").map(time),
            finish_time: row.get::<Option<i64>, _>("finish_time").map(time),
            source: parse_json(row.get("source")),
            substitutions: parse_json(row.get("substitutions")),
            plan: parse_json(row.get("plan")),
            images: serde_json::from_str(row.get("images")).unwrap_or_default(),
            failure: row.get("failure"),
            steps,
            id,
        }))
    }

    /// A build's log lines after `after` (0 for all), in order.
    pub async fn logs(&self, id: &str, after: i64) -> Result<Vec<LogLine>, Error> {
        let rows = sqlx::query("SELECT seq, step, stream, text FROM log_lines WHERE build_id = $1 AND seq > $2 ORDER BY seq")
            .bind(id)
            .bind(after)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|row| LogLine {
                seq: row.get("seq"),
                step: row.get::<i64, _>("step") as usize,
                stream: if row.get::<String, _>("stream") == "stderr" {
                    LogStream::Stderr
                } else {
                    LogStream::Stdout
                },
                text: row.get("text"),
            })
            .collect())
    }
}

fn rfc3339_required<S: serde::Serializer>(
    time: &SystemTime,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&crate::build::rfc3339::format(*time))
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
        },
    }
}

fn stream_name(stream: LogStream) -> &'static str {
    match stream {
        LogStream::Stdout => "stdout",
        LogStream::Stderr => "stderr",
    }
}

/// Statuses are written only by this module, from [`Status::as_str`].
fn status(text: String) -> Status {
    Status::parse(&text).unwrap_or(Status::InternalError)
}

fn json<T: Serialize>(value: &T) -> String {
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
