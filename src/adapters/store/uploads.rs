//! The uploads aggregate: the source archives `builder submit --server` sends, kept in the store
//! that every process shares, so that a build submitted to one server is unpacked by the worker
//! that claims it, on any machine. An archive is stored as chunks of [`UPLOAD_CHUNK_SIZE`] bytes, written in
//! one transaction (an upload is whole or absent) and read one chunk at a time.

use super::{Error, SqliteStore, millis};

/// The bytes of an archive one row holds: large enough that a 1 GiB upload is 256 rows, small
/// enough that a reader holds little at once.
pub const UPLOAD_CHUNK_SIZE: usize = 4 << 20;

/// The archives of submitted builds. A caller may rely on: an upload is readable in full as soon
/// as [`Uploads::put_upload`] returns, by every process sharing the store, and never partly; its
/// chunks, from 0, concatenate to the archive, and there is always a chunk 0.
#[async_trait::async_trait]
pub trait Uploads: Send + Sync {
    /// Keeps `archive` under the new upload id `id`.
    async fn put_upload(&self, id: &str, archive: &[u8]) -> Result<(), Error>;

    /// Records that `build` is submitted over the upload `id`, if no build was before (the first
    /// is kept: a retry names the same upload); `false` if there is no such upload.
    async fn attach_upload(&self, id: &str, build: &str) -> Result<bool, Error>;

    /// Chunk `seq` of the upload `id`; `None` past its last chunk, or (for chunk 0) if there is
    /// no such upload.
    async fn upload_chunk(&self, id: &str, seq: i64) -> Result<Option<Vec<u8>>, Error>;
}

/// Statements both dialects share.
pub(super) const INSERT_UPLOAD: &str =
    "INSERT INTO uploads (id, create_time, size, build_id) VALUES ($1, $2, $3, NULL)";
pub(super) const INSERT_CHUNK: &str =
    "INSERT INTO upload_chunks (upload_id, seq, data) VALUES ($1, $2, $3)";
pub(super) const ATTACH_UPLOAD: &str =
    "UPDATE uploads SET build_id = COALESCE(build_id, $1) WHERE id = $2";
pub(super) const UPLOAD_CHUNK: &str =
    "SELECT data FROM upload_chunks WHERE upload_id = $1 AND seq = $2";

/// The archive's chunks with their numbers; one empty chunk for an empty archive.
pub(super) fn chunks(archive: &[u8]) -> Vec<(i64, &[u8])> {
    if archive.is_empty() {
        return vec![(0, archive)];
    }
    (0..).zip(archive.chunks(UPLOAD_CHUNK_SIZE)).collect()
}

/// The upload's row values: its creation time and size.
pub(super) fn row(archive: &[u8]) -> (i64, i64) {
    (millis(std::time::SystemTime::now()), archive.len() as i64)
}

#[async_trait::async_trait]
impl Uploads for SqliteStore {
    async fn put_upload(&self, id: &str, archive: &[u8]) -> Result<(), Error> {
        let (create_time, size) = row(archive);
        let (_turn, mut tx) = self.write().await?;
        sqlx::query(INSERT_UPLOAD)
            .bind(id)
            .bind(create_time)
            .bind(size)
            .execute(&mut *tx)
            .await?;
        for (seq, data) in chunks(archive) {
            sqlx::query(INSERT_CHUNK)
                .bind(id)
                .bind(seq)
                .bind(data)
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx.commit().await?)
    }

    async fn attach_upload(&self, id: &str, build: &str) -> Result<bool, Error> {
        let (_turn, mut tx) = self.write().await?;
        let attached = sqlx::query(ATTACH_UPLOAD)
            .bind(build)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(attached == 1)
    }

    async fn upload_chunk(&self, id: &str, seq: i64) -> Result<Option<Vec<u8>>, Error> {
        Ok(sqlx::query_scalar(UPLOAD_CHUNK)
            .bind(id)
            .bind(seq)
            .fetch_optional(&self.pool)
            .await?)
    }
}
