//! The retention aggregate (issue 18): removing finished builds (with their steps, logs and
//! reports, which go with their build's row), deliveries older than a time, and the uploads no
//! kept build was submitted over, a batch per transaction; what the builds the store keeps refer
//! to (their repositories, and which are unfinished), for the pass that clears the disk; and the
//! record of each pass.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use super::{Columns, Error, SqliteStore, millis, time};
use crate::core::build::Status;
use crate::core::retention::{Pass, Removed};

/// How many passes are kept, the newest.
pub const PASSES_KEPT: u32 = 100;

/// What the builds the store keeps refer to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct References {
    /// The builds still waiting for approval, queued or running.
    pub unfinished: BTreeSet<String>,
    /// The repositories triggered builds fetch (their `cloneUrl`).
    pub clone_urls: BTreeSet<String>,
}

/// Removing what is old. A caller may rely on:
///
/// - [`Retention::remove_builds`] removes only finished builds (never a pending, queued or
///   running one), and with a build its steps, log and report: none of them is found after;
/// - each call removes at most `limit` rows in one transaction, and says how many it removed: a
///   caller repeats it until it removes fewer;
/// - [`Retention::remove_deliveries`] never removes a pending delivery (its triggers wait for
///   its changed files);
/// - [`Retention::remove_uploads`] never removes an upload a build the store keeps was submitted
///   over (a retry submits its build's upload again), and takes its chunks with it;
/// - [`Retention::retention_passes`] returns the newest passes first, at most
///   [`PASSES_KEPT`] of them.
#[async_trait::async_trait]
pub trait Retention: Send + Sync {
    /// Removes at most `limit` of the builds that finished before `before`.
    async fn remove_builds(&self, before: SystemTime, limit: u32) -> Result<u64, Error>;

    /// Removes at most `limit` of the deliveries received before `before`, oldest first.
    async fn remove_deliveries(&self, before: SystemTime, limit: u32) -> Result<u64, Error>;

    /// Removes at most `limit` of the uploads made before `before` that no build the store keeps
    /// was submitted over, oldest first.
    async fn remove_uploads(&self, before: SystemTime, limit: u32) -> Result<u64, Error>;

    /// What the builds the store keeps refer to.
    async fn references(&self) -> Result<References, Error>;

    /// Records a pass, forgetting the oldest beyond [`PASSES_KEPT`].
    async fn record_pass(&self, pass: &Pass) -> Result<(), Error>;

    /// The newest passes first, at most `limit`.
    async fn retention_passes(&self, limit: u32) -> Result<Vec<Pass>, Error>;
}

/// Statements both dialects share. A build's steps, log chunks (and old log lines) and report go
/// with its row (`ON DELETE CASCADE`). `create_time` is before `finish_time`, so the condition
/// on it reads only old builds from the index on it, however many newer ones there are.
pub(super) const REMOVE_BUILDS: &str = "DELETE FROM builds WHERE id IN (SELECT id FROM builds \
     WHERE create_time < $1 AND COALESCE(finish_time, create_time) < $1 \
     AND status NOT IN ($2, $3, $5) ORDER BY create_time LIMIT $4)";
pub(super) const REMOVE_DELIVERIES: &str = "DELETE FROM deliveries WHERE seq IN (SELECT seq \
     FROM deliveries WHERE receive_time < $1 AND state <> $2 ORDER BY seq LIMIT $3)";
pub(super) const UNFINISHED_IDS: &str = "SELECT id FROM builds WHERE status IN ($1, $2, $3)";
pub(super) const RECORD_PASS: &str = "INSERT INTO retention_passes \
     (finish_time, took_ms, builds, deliveries, uploads, workspaces, mirrors, error) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
pub(super) const FORGET_PASSES: &str = "DELETE FROM retention_passes WHERE seq <= \
     (SELECT seq FROM retention_passes ORDER BY seq DESC LIMIT 1 OFFSET $1)";
pub(super) const PASSES: &str = "SELECT * FROM retention_passes ORDER BY seq DESC LIMIT $1";

/// The distinct values of `field` of the builds' `source` (JSON), as `value`, where
/// `field_of(FIELD)` is the dialect's expression for it.
pub(super) fn distinct_sources(field_of: impl Fn(&str) -> String, field: &str) -> String {
    let value = field_of(field);
    format!("SELECT DISTINCT {value} AS value FROM builds WHERE {value} IS NOT NULL")
}

/// The statement that removes uploads no build refers to (`$1` made before, `$2` at most), where
/// `field_of(FIELD)` is the dialect's expression for a field of a build's `source`. An upload's
/// chunks go with its row (`ON DELETE CASCADE`).
pub(super) fn remove_uploads(field_of: impl Fn(&str) -> String) -> String {
    let upload = field_of("upload");
    format!(
        "DELETE FROM uploads WHERE id IN (SELECT id FROM uploads WHERE create_time < $1 \
         AND id NOT IN (SELECT {upload} FROM builds WHERE {upload} IS NOT NULL) \
         ORDER BY create_time LIMIT $2)"
    )
}

/// A pass's bindings, in [`RECORD_PASS`]'s order.
pub(super) fn pass_values(pass: &Pass) -> [i64; 7] {
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let removed = &pass.removed;
    [
        millis(pass.finished),
        i64::try_from(pass.took.as_millis()).unwrap_or(i64::MAX),
        count(removed.builds),
        count(removed.deliveries),
        count(removed.uploads),
        count(removed.workspaces),
        count(removed.mirrors),
    ]
}

pub(super) fn pass(row: &impl Columns) -> Pass {
    let count = |name| row.column::<i64>(name).try_into().unwrap_or(0);
    Pass {
        finished: time(row.column("finish_time")),
        took: Duration::from_millis(count("took_ms")),
        removed: Removed {
            builds: count("builds"),
            deliveries: count("deliveries"),
            uploads: count("uploads"),
            workspaces: count("workspaces"),
            mirrors: count("mirrors"),
        },
        error: row.column("error"),
    }
}

/// SQLite's expression for a field of `source`.
fn sqlite_field(field: &str) -> String {
    format!("json_extract(source, '$.{field}')")
}

#[async_trait::async_trait]
impl Retention for SqliteStore {
    async fn remove_builds(&self, before: SystemTime, limit: u32) -> Result<u64, Error> {
        let (_turn, mut tx) = self.write().await?;
        let removed = sqlx::query(REMOVE_BUILDS)
            .bind(millis(before))
            .bind(Status::Queued.as_str())
            .bind(Status::Working.as_str())
            .bind(i64::from(limit))
            .bind(Status::Pending.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(removed.rows_affected())
    }

    async fn remove_deliveries(&self, before: SystemTime, limit: u32) -> Result<u64, Error> {
        let (_turn, mut tx) = self.write().await?;
        let removed = sqlx::query(REMOVE_DELIVERIES)
            .bind(millis(before))
            .bind(super::deliveries::PENDING)
            .bind(i64::from(limit))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(removed.rows_affected())
    }

    async fn remove_uploads(&self, before: SystemTime, limit: u32) -> Result<u64, Error> {
        let (_turn, mut tx) = self.write().await?;
        let removed = sqlx::query(sqlx::AssertSqlSafe(remove_uploads(sqlite_field)))
            .bind(millis(before))
            .bind(i64::from(limit))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(removed.rows_affected())
    }

    async fn references(&self) -> Result<References, Error> {
        let unfinished = sqlx::query_scalar(UNFINISHED_IDS)
            .bind(Status::Queued.as_str())
            .bind(Status::Working.as_str())
            .bind(Status::Pending.as_str())
            .fetch_all(&self.pool)
            .await?;
        let distinct = |field| async move {
            let query = distinct_sources(sqlite_field, field);
            sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(query))
                .fetch_all(&self.pool)
                .await
        };
        Ok(References {
            unfinished: unfinished.into_iter().collect(),
            clone_urls: distinct("cloneUrl").await?.into_iter().collect(),
        })
    }

    async fn record_pass(&self, pass: &Pass) -> Result<(), Error> {
        let (_turn, mut tx) = self.write().await?;
        let mut insert = sqlx::query(RECORD_PASS);
        for value in pass_values(pass) {
            insert = insert.bind(value);
        }
        insert.bind(&pass.error).execute(&mut *tx).await?;
        sqlx::query(FORGET_PASSES)
            .bind(i64::from(PASSES_KEPT))
            .execute(&mut *tx)
            .await?;
        Ok(tx.commit().await?)
    }

    async fn retention_passes(&self, limit: u32) -> Result<Vec<Pass>, Error> {
        let rows = sqlx::query(PASSES)
            .bind(i64::from(limit.min(PASSES_KEPT)))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(pass).collect())
    }
}
