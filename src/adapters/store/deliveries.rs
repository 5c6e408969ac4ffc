//! The deliveries aggregate: webhook deliveries as received, the trigger results they led to,
//! and the ones still waiting for their push's changed files.

use std::collections::HashMap;
use std::time::SystemTime;

use sqlx::{QueryBuilder, Row, Sqlite};

use super::{Error, QueuedBuild, SqliteStore, json, millis, queue, time};
use crate::core::triggers::TriggerResult;

/// Delivery states.
const PENDING: &str = "PENDING";
const DONE: &str = "DONE";

/// How many rejected deliveries are kept, the newest: a sample to show why senders are refused,
/// while [`Deliveries::rejected_deliveries`] counts them all.
pub const REJECTED_KEPT: u32 = 1000;
/// The counter of rejected deliveries in the `counters` table.
const REJECTED: &str = "rejected_deliveries";

/// A webhook delivery to record. With a `payload` it is recorded PENDING: some triggers wait for
/// the push's changed files (see [`Deliveries::complete_delivery`]).
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub id: String,
    pub event: String,
    pub verified: bool,
    /// The SHA-256 of a verified delivery's body (see [`Recorded::Duplicate`]).
    pub digest: Option<String>,
    pub summary: String,
    pub payload: Option<Vec<u8>>,
    pub results: Vec<TriggerResult>,
    /// The builds it queues.
    pub builds: Vec<QueuedBuild>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    New,
    /// A verified delivery with this id, or with this body, was already recorded.
    Duplicate,
}

#[derive(Debug, Clone)]
pub struct PendingDelivery {
    pub id: String,
    pub event: String,
    pub payload: Vec<u8>,
    pub results: Vec<TriggerResult>,
}

/// A delivery as recorded.
#[derive(Debug, Clone)]
pub struct DeliveryRecord {
    pub id: String,
    pub event: String,
    pub receive_time: SystemTime,
    pub verified: bool,
    pub summary: String,
    /// Some triggers still wait for the push's changed files.
    pub pending: bool,
    pub results: Vec<TriggerResult>,
}

/// Webhook deliveries. A caller may rely on:
///
/// - a delivery is recorded with the builds it queues in one transaction: both or neither;
/// - a verified delivery id, and a verified body digest, is recorded once: a redelivery or a
///   replay, in the store or earlier in the same batch, is [`Recorded::Duplicate`] and queues
///   nothing;
/// - of rejected (unverified) deliveries only the newest [`REJECTED_KEPT`] are kept, and all are
///   counted;
/// - a pending delivery (recorded with a payload) is completed at most once, and its builds are
///   queued with its completion.
#[async_trait::async_trait]
pub trait Deliveries: Send + Sync {
    /// Records deliveries and queues their builds, all in one transaction (one write to disk for
    /// all of them). A verified delivery whose id is already recorded changes nothing: a
    /// redelivery never queues a second build.
    async fn record_deliveries(&self, deliveries: &[NewDelivery]) -> Result<Vec<Recorded>, Error>;

    /// Deliveries whose triggers wait for the push's changed files, oldest first.
    async fn pending_deliveries(&self) -> Result<Vec<PendingDelivery>, Error>;

    /// Finishes deciding a pending delivery: its trigger results replace the recorded ones and
    /// its builds are queued, in one transaction, at most once (`false` if it was not pending).
    async fn complete_delivery(
        &self,
        id: &str,
        results: &[TriggerResult],
        builds: &[QueuedBuild],
    ) -> Result<bool, Error>;

    /// The newest deliveries first.
    async fn list_deliveries(&self, limit: u32) -> Result<Vec<DeliveryRecord>, Error>;

    /// How many rejected deliveries were ever recorded, kept or not.
    async fn rejected_deliveries(&self) -> Result<u64, Error>;
}

#[async_trait::async_trait]
impl Deliveries for SqliteStore {
    async fn record_deliveries(&self, deliveries: &[NewDelivery]) -> Result<Vec<Recorded>, Error> {
        if deliveries.is_empty() {
            return Ok(Vec::new());
        }
        let (_turn, mut tx) = self.write().await?;
        // One statement for all the deliveries and one for their builds: each statement is a
        // round trip to SQLite's thread, and the writer holds every waiting request meanwhile.
        let now = millis(SystemTime::now());
        let mut insert = QueryBuilder::<Sqlite>::new(
            "INSERT INTO deliveries \
             (id, event, receive_time, verified, digest, summary, state, payload, results) ",
        );
        insert.push_values(deliveries, |mut row, delivery| {
            let state = if delivery.payload.is_some() {
                PENDING
            } else {
                DONE
            };
            row.push_bind(&delivery.id)
                .push_bind(&delivery.event)
                .push_bind(now)
                .push_bind(delivery.verified)
                .push_bind(&delivery.digest)
                .push_bind(&delivery.summary)
                .push_bind(state)
                .push_bind(&delivery.payload)
                .push_bind(json(&delivery.results));
        });
        insert.push(" ON CONFLICT DO NOTHING RETURNING id");
        let mut inserted: HashMap<String, usize> = HashMap::new();
        for row in insert.build().fetch_all(&mut *tx).await? {
            *inserted.entry(row.get("id")).or_default() += 1;
        }
        // Rows go in in order: of a repeated id, the first ones went in, the later ones conflicted.
        let recorded: Vec<Recorded> = deliveries
            .iter()
            .map(|delivery| match inserted.get_mut(&delivery.id) {
                Some(count) if *count > 0 => {
                    *count -= 1;
                    Recorded::New
                }
                _ => Recorded::Duplicate,
            })
            .collect();
        let builds: Vec<QueuedBuild> = deliveries
            .iter()
            .zip(&recorded)
            .filter(|(_, recorded)| **recorded == Recorded::New)
            .flat_map(|(delivery, _)| delivery.builds.iter().cloned())
            .collect();
        queue(&mut tx, &builds).await?;
        let rejected = deliveries.iter().filter(|d| !d.verified).count();
        if rejected > 0 {
            sqlx::query(
                "INSERT INTO counters (name, value) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            )
            .bind(REJECTED)
            .bind(rejected as i64)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "DELETE FROM deliveries WHERE verified = 0 AND seq < \
                 (SELECT seq FROM deliveries WHERE verified = 0 ORDER BY seq DESC LIMIT 1 OFFSET $1)",
            )
            .bind(REJECTED_KEPT - 1)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(recorded)
    }

    async fn rejected_deliveries(&self) -> Result<u64, Error> {
        let count: Option<i64> = sqlx::query_scalar("SELECT value FROM counters WHERE name = $1")
            .bind(REJECTED)
            .fetch_optional(&self.pool)
            .await?;
        Ok(count.unwrap_or(0).try_into().unwrap_or(0))
    }

    async fn pending_deliveries(&self) -> Result<Vec<PendingDelivery>, Error> {
        let rows = sqlx::query(
            "SELECT id, event, payload, results FROM deliveries WHERE state = $1 ORDER BY seq",
        )
        .bind(PENDING)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| PendingDelivery {
                id: row.get("id"),
                event: row.get("event"),
                payload: row.get("payload"),
                results: serde_json::from_str(row.get("results")).unwrap_or_default(),
            })
            .collect())
    }

    async fn complete_delivery(
        &self,
        id: &str,
        results: &[TriggerResult],
        builds: &[QueuedBuild],
    ) -> Result<bool, Error> {
        let (_turn, mut tx) = self.write().await?;
        let updated = sqlx::query(
            "UPDATE deliveries SET state = $1, payload = NULL, results = $2 \
             WHERE id = $3 AND verified = 1 AND state = $4",
        )
        .bind(DONE)
        .bind(json(results))
        .bind(id)
        .bind(PENDING)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Ok(false);
        }
        queue(&mut tx, builds).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn list_deliveries(&self, limit: u32) -> Result<Vec<DeliveryRecord>, Error> {
        let rows = sqlx::query(
            "SELECT id, event, receive_time, verified, summary, state, results FROM deliveries \
             ORDER BY seq DESC LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| DeliveryRecord {
                id: row.get("id"),
                event: row.get("event"),
                receive_time: time(row.get("receive_time")),
                verified: row.get("verified"),
                summary: row.get("summary"),
                pending: row.get::<String, _>("state") == PENDING,
                results: serde_json::from_str(row.get("results")).unwrap_or_default(),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::store::BuildQuery;
    use crate::adapters::store::Builds as _;
    use crate::adapters::store::test_support::{queued, store};

    fn delivery(id: &str, verified: bool, builds: Vec<QueuedBuild>) -> NewDelivery {
        NewDelivery {
            id: id.into(),
            event: "push".into(),
            verified,
            digest: verified.then(|| format!("body of {id}")),
            summary: String::new(),
            payload: None,
            results: Vec::new(),
            builds,
        }
    }

    /// A batch is written in one statement per table; a verified id seen before, in the store or
    /// earlier in the same batch, is a duplicate and queues nothing.
    #[tokio::test]
    async fn a_batch_of_deliveries_queues_the_builds_of_new_ones_only() {
        let (_dir, store) = store().await;
        let first = store
            .record_deliveries(&[
                delivery("a", true, vec![queued("t", "main")]),
                delivery("a", true, vec![queued("t", "main")]),
                delivery("forged", false, vec![]),
                delivery("forged", false, vec![]),
            ])
            .await
            .unwrap();
        use Recorded::{Duplicate, New};
        assert_eq!(first, [New, Duplicate, New, New]);
        let again = store
            .record_deliveries(&[
                delivery("b", true, vec![queued("t", "main"), queued("u", "main")]),
                delivery("a", true, vec![queued("t", "main")]),
            ])
            .await
            .unwrap();
        assert_eq!(again, [New, Duplicate]);
        let builds = store.list_builds(&BuildQuery::default()).await.unwrap();
        assert_eq!(builds.len(), 3);
    }
}
