//! The logs aggregate: a build's log lines, numbered in the order they were appended.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::{Error, SqliteStore};
use crate::adapters::runtime::LogStream;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

#[async_trait::async_trait]
impl Logs for SqliteStore {
    async fn append_logs(
        &self,
        id: &str,
        lines: &[(usize, LogStream, String)],
    ) -> Result<(), Error> {
        let (_turn, mut tx) = self.write().await?;
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
        Ok(tx.commit().await?)
    }

    async fn logs(&self, id: &str, after: i64, limit: Option<u32>) -> Result<Vec<LogLine>, Error> {
        let rows = sqlx::query(
            "SELECT seq, step, stream, text FROM log_lines WHERE build_id = $1 AND seq > $2 \
             ORDER BY seq LIMIT $3",
        )
        .bind(id)
        .bind(after)
        .bind(limit.map_or(-1, i64::from))
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

fn stream_name(stream: LogStream) -> &'static str {
    match stream {
        LogStream::Stdout => "stdout",
        LogStream::Stderr => "stderr",
    }
}
