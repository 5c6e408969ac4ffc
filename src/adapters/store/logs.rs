//! The logs aggregate: a build's log lines, numbered in the order they were appended, kept as
//! compressed chunks of consecutive lines (`core::logs::encode_chunk`), each indexed by its first
//! line's number and its line count, so that a page of lines reads only the chunks it spans.
//! Builds logged before chunks (migration 0009) keep one row per line in `log_lines`.

use futures_util::{Stream, TryStreamExt as _};
use sqlx::Row;

use super::{Columns, Error, SqliteStore};
use crate::adapters::runtime::LogStream;
use crate::core::logs;

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
    /// Appends log lines of a build, numbering them after the ones already stored; they are
    /// stored as one chunk, so a caller appends many at once.
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
        if lines.is_empty() {
            return Ok(());
        }
        // Compressed before this process's turn to write, which it holds as short as it can.
        let chunk = encode(lines)?;
        let (_turn, mut tx) = self.write().await?;
        let next: i64 = sqlx::query_scalar(NEXT_CHUNK)
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        sqlx::query(INSERT_CHUNK)
            .bind(id)
            .bind(next)
            .bind(lines.len() as i64)
            .bind(chunk)
            .execute(&mut *tx)
            .await?;
        Ok(tx.commit().await?)
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
        let chunks = sqlx::query(CHUNKS_FROM)
            .bind(id)
            .bind(after + 1)
            .fetch(&self.pool);
        read_chunks(chunks, after, limit).await
    }
}

/// Statements both dialects share.
pub(super) const NEXT_CHUNK: &str = "SELECT COALESCE((SELECT first_seq + lines FROM log_chunks \
     WHERE build_id = $1 ORDER BY first_seq DESC LIMIT 1), 1)";
pub(super) const INSERT_CHUNK: &str =
    "INSERT INTO log_chunks (build_id, first_seq, lines, data) VALUES ($1, $2, $3, $4)";
/// A build's chunks (`$1`) from the one that holds line `$2` on, in order.
pub(super) const CHUNKS_FROM: &str = "SELECT first_seq, data FROM log_chunks \
     WHERE build_id = $1 AND first_seq >= COALESCE((SELECT first_seq FROM log_chunks \
     WHERE build_id = $1 AND first_seq <= $2 ORDER BY first_seq DESC LIMIT 1), 0) \
     ORDER BY first_seq";

/// `lines` as one chunk.
pub(super) fn encode(lines: &[(usize, LogStream, String)]) -> Result<Vec<u8>, Error> {
    logs::encode_chunk(lines.iter().map(|(s, o, t)| (*s, *o, t.as_str()))).map_err(Error::Log)
}

/// The lines after `after`, the first `limit` of them, from `chunks` ([`CHUNKS_FROM`]'s rows):
/// read chunk by chunk until the page is full.
pub(super) async fn read_chunks<R: Columns>(
    chunks: impl Stream<Item = Result<R, sqlx::Error>>,
    after: i64,
    limit: usize,
) -> Result<Vec<LogLine>, Error> {
    let mut chunks = std::pin::pin!(chunks);
    let mut page = Vec::new();
    while page.len() < limit
        && let Some(row) = chunks.try_next().await?
    {
        let first: i64 = row.column("first_seq");
        let lines = logs::decode_chunk(&row.column::<Vec<u8>>("data")).map_err(Error::Log)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::store::Queue as _;
    use crate::adapters::store::test_support::{queued, store};

    /// Lines are numbered across chunks, and a page starts in the chunk that holds its first
    /// line, wherever that falls.
    #[tokio::test]
    async fn pages_by_line_number_across_chunks() {
        let (_dir, store) = store().await;
        let build = queued("t", "main");
        store
            .queue_builds(std::slice::from_ref(&build))
            .await
            .unwrap();
        let id = build.id.as_str();
        let chunk = |range: std::ops::RangeInclusive<i64>| -> Vec<(usize, LogStream, String)> {
            range
                .map(|i| (0, LogStream::Stdout, i.to_string()))
                .collect()
        };
        store.append_logs(id, &chunk(1..=3)).await.unwrap();
        store.append_logs(id, &[]).await.unwrap();
        store.append_logs(id, &chunk(4..=10)).await.unwrap();
        store.append_logs(id, &chunk(11..=11)).await.unwrap();
        let page = |after: i64, limit: Option<u32>| {
            let store = store.clone();
            async move {
                let lines = store.logs(id, after, limit).await.unwrap();
                for line in &lines {
                    assert_eq!(line.text, line.seq.to_string());
                }
                lines.iter().map(|l| l.seq).collect::<Vec<_>>()
            }
        };
        assert_eq!(page(0, None).await, (1..=11).collect::<Vec<_>>());
        assert_eq!(page(0, Some(2)).await, [1, 2]);
        assert_eq!(page(2, Some(3)).await, [3, 4, 5]);
        assert_eq!(page(3, Some(2)).await, [4, 5]);
        assert_eq!(page(7, Some(10)).await, [8, 9, 10, 11]);
        assert_eq!(page(10, None).await, [11]);
        assert!(page(11, None).await.is_empty());
        assert!(store.logs("other", 0, None).await.unwrap().is_empty());
    }
}
