//! The logs aggregate: a build's log lines, numbered in the order they were appended.

use super::{Columns, Error, SqliteStore};
use crate::adapters::runtime::LogStream;

/// A line of a build's log as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    pub seq: i64,
    pub step: usize,
    pub stream: LogStream,
    pub text: String,
}

/// A build's log lines. A caller may rely on: lines are numbered from 1 in the order they were
/// appended, across calls, with no gaps; a read after `seq` returns the lines appended after it,
/// so a reader that follows a build reads each line once by passing the last `seq` it saw.
#[async_trait::async_trait]
pub trait Logs: Send + Sync {
    /// Appends log lines of a build, numbering them after the ones already stored.
    async fn append_logs(
        &self,
        id: &str,
        lines: &[(usize, LogStream, String)],
    ) -> Result<(), Error>;

    /// A build's log lines after `after` (0 for all), in order: the first `limit` of them, or
    /// all.
    async fn logs(&self, id: &str, after: i64, limit: Option<u32>) -> Result<Vec<LogLine>, Error>;
}

/// Statements both dialects share.
pub(super) const NEXT_LINE: &str =
    "SELECT COALESCE(MAX(seq), 0) + 1 FROM log_lines WHERE build_id = $1";
pub(super) const INSERT_LINE: &str =
    "INSERT INTO log_lines (build_id, seq, step, stream, text) VALUES ($1, $2, $3, $4, $5)";
/// A build's lines after `$2`, the first `$3` of them.
pub(super) const LINES: &str = "SELECT seq, step, stream, text FROM log_lines \
     WHERE build_id = $1 AND seq > $2 ORDER BY seq LIMIT $3";

#[async_trait::async_trait]
impl Logs for SqliteStore {
    async fn append_logs(
        &self,
        id: &str,
        lines: &[(usize, LogStream, String)],
    ) -> Result<(), Error> {
        let (_turn, mut tx) = self.write().await?;
        let next: i64 = sqlx::query_scalar(NEXT_LINE)
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        for (offset, (step, stream, text)) in lines.iter().enumerate() {
            sqlx::query(INSERT_LINE)
                .bind(id)
                .bind(next + offset as i64)
                .bind(*step as i64)
                .bind(stream_name(*stream))
                .bind(text)
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx.commit().await?)
    }

    async fn logs(&self, id: &str, after: i64, limit: Option<u32>) -> Result<Vec<LogLine>, Error> {
        let rows = sqlx::query(LINES)
            .bind(id)
            .bind(after)
            .bind(limit.map_or(-1, i64::from))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(log_line).collect())
    }
}

pub(super) fn log_line(row: &impl Columns) -> LogLine {
    LogLine {
        seq: row.column("seq"),
        step: row.column::<i64>("step") as usize,
        stream: if row.column::<String>("stream") == "stderr" {
            LogStream::Stderr
        } else {
            LogStream::Stdout
        },
        text: row.column("text"),
    }
}

pub(super) fn stream_name(stream: LogStream) -> &'static str {
    match stream {
        LogStream::Stdout => "stdout",
        LogStream::Stderr => "stderr",
    }
}
