//! The logs aggregate: a build's log lines, numbered in the order they were appended, kept as
//! compressed chunks of consecutive lines (`core::logs::encode_chunk`), each indexed by its first
//! line's number and its line count, so that a page of lines reads only the chunks it spans.
//! Builds logged before chunks (migration 0009) keep one row per line in `log_lines`.

use futures_util::{Stream, TryStreamExt as _};
use sqlx::Row;

use super::{Columns, Error, Lease, SqliteStore};
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
    /// stored as one chunk, so a caller appends many at once. Fenced by `lease`, as the writes of
    /// [`super::Builds`] are.
    async fn append_logs(
        &self,
        id: &str,
        lines: &[(usize, LogStream, String)],
        lease: &Lease,
    ) -> Result<(), Error>;

    /// A build's log lines after `after` (0 for all), in order: all of them, or a page of at most
    /// `limit`, which ends early at the line that takes its text to [`PAGE_BYTES`] (so a page
    /// costs about that much memory whatever its lines' length); [`page_full`] says whether
    /// another may follow it.
    async fn logs(&self, id: &str, after: i64, limit: Option<u32>) -> Result<Vec<LogLine>, Error>;
}

/// How much text a page of log lines holds, beyond its last line: a page of 5,000 lines cut at
/// 256 KiB would be 1.3 GB, held several times over on its way to a follower (lines, JSON, the
/// event).
pub const PAGE_BYTES: usize = 1024 * 1024;

/// Whether a page of lines (their texts) read with `limit` is full, by count or by
/// [`PAGE_BYTES`]: more lines may follow it at once. A page that ends the log exactly there is
/// full too, and the next read is empty.
pub fn page_full<'a>(texts: impl ExactSizeIterator<Item = &'a str>, limit: usize) -> bool {
    texts.len() >= limit || texts.map(str::len).sum::<usize>() >= PAGE_BYTES
}

/// How many of `texts` a page of at most `limit` lines takes: up to the one that takes it to
/// [`PAGE_BYTES`], after `bytes` already in it.
pub fn page_take<'a>(
    texts: impl Iterator<Item = &'a str>,
    limit: usize,
    mut bytes: usize,
) -> usize {
    texts
        .take(limit)
        .take_while(|text| {
            let room = bytes < PAGE_BYTES;
            bytes += text.len();
            room
        })
        .count()
}

#[async_trait::async_trait]
impl Logs for SqliteStore {
    async fn append_logs(
        &self,
        id: &str,
        lines: &[(usize, LogStream, String)],
        lease: &Lease,
    ) -> Result<(), Error> {
        if lines.is_empty() {
            return Ok(());
        }
        // Compressed before this process's turn to write, which it holds as short as it can.
        let chunk = encode(lines)?;
        let (_turn, mut tx) = self.write().await?;
        super::builds::fence(&mut tx, id, lease).await?;
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
        let rows = sqlx::query(
            "SELECT seq, step, stream, text FROM log_lines WHERE build_id = $1 AND seq > $2 \
             ORDER BY seq LIMIT $3",
        )
        .bind(id)
        .bind(after)
        .bind(limit.map_or(-1, i64::from))
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

/// The lines after `after` from `chunks` ([`CHUNKS_FROM`]'s rows): all of them, or a page of at
/// most `limit` ([`Logs::logs`]), read chunk by chunk until the page is full.
pub(super) async fn read_chunks<R: Columns>(
    chunks: impl Stream<Item = Result<R, sqlx::Error>>,
    after: i64,
    limit: Option<u32>,
) -> Result<Vec<LogLine>, Error> {
    let mut chunks = std::pin::pin!(chunks);
    let limit = limit.map(|limit| limit as usize);
    let mut page: Vec<LogLine> = Vec::new();
    let mut bytes = 0;
    while limit.is_none_or(|limit| page.len() < limit && bytes < PAGE_BYTES)
        && let Some(row) = chunks.try_next().await?
    {
        let first: i64 = row.column("first_seq");
        let lines = logs::decode_chunk(&row.column::<Vec<u8>>("data")).map_err(Error::Log)?;
        let skip = usize::try_from(after + 1 - first).unwrap_or(0);
        let wanted = match limit {
            Some(limit) => {
                let texts = lines.iter().skip(skip).map(|(_, _, text)| text.as_str());
                page_take(texts, limit - page.len(), bytes)
            }
            None => usize::MAX,
        };
        page.extend(lines.into_iter().enumerate().skip(skip).take(wanted).map(
            |(i, (step, stream, text))| {
                bytes += text.len();
                LogLine {
                    seq: first + i as i64,
                    step,
                    stream,
                    text,
                }
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
    use crate::adapters::store::test_support::{running, store};

    /// Lines are numbered across chunks, and a page starts in the chunk that holds its first
    /// line, wherever that falls.
    #[tokio::test]
    async fn pages_by_line_number_across_chunks() {
        let (_dir, store) = store().await;
        let (id, holder) = running(&store).await;
        let id = id.as_str();
        let chunk = |range: std::ops::RangeInclusive<i64>| -> Vec<(usize, LogStream, String)> {
            range
                .map(|i| (0, LogStream::Stdout, i.to_string()))
                .collect()
        };
        for lines in [chunk(1..=3), Vec::new(), chunk(4..=10), chunk(11..=11)] {
            store.append_logs(id, &lines, &holder).await.unwrap();
        }
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

    /// A page of long lines ends at the line that takes it past PAGE_BYTES, within a chunk or
    /// across chunks, and says it is full; all of them are still one read away without a limit.
    #[tokio::test]
    async fn a_page_of_long_lines_is_bounded_by_bytes() {
        let (_dir, store) = store().await;
        let (id, holder) = running(&store).await;
        let id = id.as_str();
        let long = "x".repeat(300 * 1024);
        let lines = |n: usize| vec![(0, LogStream::Stdout, long.clone()); n];
        // 5 lines in one chunk, then 5 in chunks of one.
        store.append_logs(id, &lines(5), &holder).await.unwrap();
        for _ in 0..5 {
            store.append_logs(id, &lines(1), &holder).await.unwrap();
        }
        let mut after = 0;
        let mut pages = Vec::new();
        loop {
            let page = store.logs(id, after, Some(1000)).await.unwrap();
            let full = page_full(page.iter().map(|l| l.text.as_str()), 1000);
            pages.push(page.iter().map(|l| l.seq).collect::<Vec<_>>());
            after = page.last().map_or(after, |line| line.seq);
            if !full {
                break;
            }
        }
        assert_eq!(pages, [vec![1, 2, 3, 4], vec![5, 6, 7, 8], vec![9, 10]]);
        assert_eq!(store.logs(id, 0, None).await.unwrap().len(), 10);
        assert_eq!(store.logs(id, 2, Some(1)).await.unwrap()[0].seq, 3);
    }
}
