//! The resources aggregate: the triggers and schedules created through the API, each kept as the
//! text the API received, so that every process sharing the store serves and fires the same ones
//! (the files of `--triggers` and `--schedules` are the operator's, read by each process).

use super::{Error, SqliteStore, millis};

/// What kind of resource a row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceKind {
    Trigger,
    Schedule,
}

impl ResourceKind {
    /// Its name in the store, and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Trigger => "trigger",
            ResourceKind::Schedule => "schedule",
        }
    }
}

impl std::fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A write of one resource.
#[derive(Debug, Clone, Copy)]
pub enum ResourceWrite<'a> {
    /// Keeps the body as a new resource; nothing is written if the name exists.
    Create(&'a [u8]),
    /// Replaces an existing resource's body.
    Replace(&'a [u8]),
    Delete,
}

/// The resources the API keeps, by kind and name. A caller may rely on: a write is seen by every
/// process sharing the store once it returns; a name is created once (of two processes creating
/// it at once, one is told it exists); only an existing resource is replaced or deleted.
#[async_trait::async_trait]
pub trait Resources: Send + Sync {
    /// Writes the resource `kind` `name`; whether it was written (`false`: a created one
    /// exists, a replaced or deleted one does not).
    async fn write_resource(
        &self,
        kind: ResourceKind,
        name: &str,
        write: ResourceWrite<'_>,
    ) -> Result<bool, Error>;

    /// Every resource of `kind`, as (name, body), in name order.
    async fn resources(&self, kind: ResourceKind) -> Result<Vec<(String, Vec<u8>)>, Error>;
}

/// Statements both dialects share.
const CREATE_RESOURCE: &str = "INSERT INTO api_resources (kind, name, body, update_time) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (kind, name) DO NOTHING";
const REPLACE_RESOURCE: &str =
    "UPDATE api_resources SET body = $3, update_time = $4 WHERE kind = $1 AND name = $2";
const DELETE_RESOURCE: &str = "DELETE FROM api_resources WHERE kind = $1 AND name = $2";
pub(super) const RESOURCES: &str =
    "SELECT name, body FROM api_resources WHERE kind = $1 ORDER BY name";

/// The statement of `write` on the resource, with its values bound.
pub(super) fn write_statement<'q, DB: sqlx::Database>(
    kind: ResourceKind,
    name: &'q str,
    write: ResourceWrite<'q>,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments>
where
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    &'q [u8]: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let (statement, body) = match write {
        ResourceWrite::Create(body) => (CREATE_RESOURCE, Some(body)),
        ResourceWrite::Replace(body) => (REPLACE_RESOURCE, Some(body)),
        ResourceWrite::Delete => (DELETE_RESOURCE, None),
    };
    let query = sqlx::query(statement).bind(kind.as_str()).bind(name);
    match body {
        Some(body) => query.bind(body).bind(millis(std::time::SystemTime::now())),
        None => query,
    }
}

#[async_trait::async_trait]
impl Resources for SqliteStore {
    async fn write_resource(
        &self,
        kind: ResourceKind,
        name: &str,
        write: ResourceWrite<'_>,
    ) -> Result<bool, Error> {
        let (_turn, mut tx) = self.write().await?;
        let query = write_statement::<sqlx::Sqlite>(kind, name, write);
        let written = query.execute(&mut *tx).await?.rows_affected();
        tx.commit().await?;
        Ok(written == 1)
    }

    async fn resources(&self, kind: ResourceKind) -> Result<Vec<(String, Vec<u8>)>, Error> {
        let query = sqlx::query_as(RESOURCES).bind(kind.as_str());
        Ok(query.fetch_all(&self.pool).await?)
    }
}
