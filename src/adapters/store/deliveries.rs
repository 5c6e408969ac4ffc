//! The deliveries aggregate: webhook deliveries as received, the trigger results they led to,
//! the ones still waiting for their push's changed files, and the latest state of each pull
//! request a delivery described.

use std::collections::HashMap;
use std::time::SystemTime;

use sqlx::{Database, Encode, Executor, IntoArguments, QueryBuilder, Row, Sqlite, Type};

use super::queue::GroupFull;
use super::{Columns, Error, QueuedBuild, SqliteStore, json, millis, queue, time};
use crate::core::triggers::TriggerResult;
use crate::core::webhooks::PullRequest;

/// Delivery states.
pub(super) const PENDING: &str = "PENDING";
pub(super) const DONE: &str = "DONE";

/// How many rejected deliveries are kept, the newest: a sample to show why senders are refused,
/// while [`Deliveries::rejected_deliveries`] counts them all.
pub const REJECTED_KEPT: u32 = 1000;
/// The counter of rejected deliveries in the `counters` table.
pub(super) const REJECTED: &str = "rejected_deliveries";

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
    /// The pull request it describes, in its repository (`owner/name`): kept, replacing what an
    /// earlier delivery said, for the `/gcbrun` comments that follow.
    pub pull_request: Option<(String, PullRequest)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// Recorded with its builds, but for those that skip a full group (see
    /// [`super::Queue::queue_builds`]): their trigger results say why instead.
    New(Vec<GroupFull>),
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
/// - a build that skips a full group is queued only if its group has room when it is, counted
///   in that transaction, as [`super::Queue::queue_builds`] does; its trigger result says why
///   if it is not;
/// - a verified delivery id, and a verified body digest, is recorded once: a redelivery or a
///   replay, in the store or earlier in the same batch, is [`Recorded::Duplicate`] and queues
///   nothing;
/// - of rejected (unverified) deliveries only the newest [`REJECTED_KEPT`] are kept, and all are
///   counted;
/// - a pending delivery (recorded with a payload) is completed at most once, and its builds are
///   queued with its completion;
/// - the pull request a new verified delivery describes is kept with it, in the same
///   transaction, replacing the one an earlier delivery described.
#[async_trait::async_trait]
pub trait Deliveries: Send + Sync {
    /// Records deliveries and queues their builds, all in one transaction (one write to disk for
    /// all of them). A verified delivery whose id is already recorded changes nothing: a
    /// redelivery never queues a second build. `dropped` rejected deliveries that were not kept
    /// (the writer was behind) are counted with them.
    async fn record_deliveries(
        &self,
        deliveries: &[NewDelivery],
        dropped: u64,
    ) -> Result<Vec<Recorded>, Error>;

    /// Deliveries whose triggers wait for the push's changed files, oldest first.
    async fn pending_deliveries(&self) -> Result<Vec<PendingDelivery>, Error>;

    /// Finishes deciding a pending delivery: its trigger results replace the recorded ones and
    /// its builds are queued (but for those that skip a full group, which it returns, and whose
    /// results say why), in one transaction, at most once (`None` if it was not pending).
    async fn complete_delivery(
        &self,
        id: &str,
        results: &[TriggerResult],
        builds: &[QueuedBuild],
    ) -> Result<Option<Vec<GroupFull>>, Error>;

    /// The newest deliveries first.
    async fn list_deliveries(&self, limit: u32) -> Result<Vec<DeliveryRecord>, Error>;

    /// How many rejected deliveries were ever recorded, kept or not.
    async fn rejected_deliveries(&self) -> Result<u64, Error>;

    /// Pull request `number` of `repository` (`owner/name`, in any case) as the latest delivery
    /// that described it said.
    async fn pull_request(
        &self,
        repository: &str,
        number: u64,
    ) -> Result<Option<PullRequest>, Error>;
}

/// Statements both dialects share.
pub(super) const COUNT_REJECTED: &str = "INSERT INTO counters (name, value) VALUES ($1, $2) \
     ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value";
pub(super) const REJECTED_COUNT: &str = "SELECT value FROM counters WHERE name = $1";
pub(super) const PENDING_DELIVERIES: &str =
    "SELECT id, event, payload, results FROM deliveries WHERE state = $1 ORDER BY seq";
pub(super) const KEEP_PULL_REQUEST: &str = "INSERT INTO pull_requests \
     (repository, number, pull_request) VALUES ($1, $2, $3) ON CONFLICT (repository, number) \
     DO UPDATE SET pull_request = excluded.pull_request";
pub(super) const PULL_REQUEST: &str =
    "SELECT pull_request FROM pull_requests WHERE repository = $1 AND number = $2";
/// The results of verified delivery `$2`, some of whose builds were not queued after all.
pub(super) const SET_RESULTS: &str =
    "UPDATE deliveries SET results = $1 WHERE id = $2 AND verified = TRUE";
pub(super) const LIST_DELIVERIES: &str = "SELECT id, event, receive_time, verified, summary, \
     state, results FROM deliveries ORDER BY seq DESC LIMIT $1";

#[async_trait::async_trait]
impl Deliveries for SqliteStore {
    async fn record_deliveries(
        &self,
        deliveries: &[NewDelivery],
        dropped: u64,
    ) -> Result<Vec<Recorded>, Error> {
        if deliveries.is_empty() && dropped == 0 {
            return Ok(Vec::new());
        }
        let (_turn, mut tx) = self.write().await?;
        // One statement for all the deliveries and one for their builds: each statement is a
        // round trip to SQLite's thread, and the writer holds every waiting request meanwhile.
        // A batch of nothing but a count of dropped rejections inserts no row.
        let inserted: Vec<String> = if deliveries.is_empty() {
            Vec::new()
        } else {
            insert_deliveries::<Sqlite>(deliveries)
                .build()
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|row| row.get("id"))
                .collect()
        };
        let (recorded, builds) = recorded(deliveries, inserted);
        let skipped = queue(&mut tx, &builds).await?;
        let recorded = with_skipped(deliveries, recorded, &skipped);
        set_results(&mut tx, skipped_results(deliveries, &recorded)).await?;
        for (repository, number, pull_request) in pull_requests(deliveries, &recorded) {
            sqlx::query(KEEP_PULL_REQUEST)
                .bind(repository)
                .bind(number)
                .bind(pull_request)
                .execute(&mut *tx)
                .await?;
        }
        let rejected = deliveries.iter().filter(|d| !d.verified).count() as u64;
        if rejected + dropped > 0 {
            sqlx::query(COUNT_REJECTED)
                .bind(REJECTED)
                .bind(i64::try_from(rejected + dropped).unwrap_or(i64::MAX))
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
        let count: Option<i64> = sqlx::query_scalar(REJECTED_COUNT)
            .bind(REJECTED)
            .fetch_optional(&self.pool)
            .await?;
        Ok(rejected_count(count))
    }

    async fn pending_deliveries(&self) -> Result<Vec<PendingDelivery>, Error> {
        let rows = sqlx::query(PENDING_DELIVERIES)
            .bind(PENDING)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(pending_delivery).collect())
    }

    async fn pull_request(
        &self,
        repository: &str,
        number: u64,
    ) -> Result<Option<PullRequest>, Error> {
        let text: Option<String> = sqlx::query_scalar(PULL_REQUEST)
            .bind(repository.to_ascii_lowercase())
            .bind(number as i64)
            .fetch_optional(&self.pool)
            .await?;
        read_pull_request(text)
    }

    async fn complete_delivery(
        &self,
        id: &str,
        results: &[TriggerResult],
        builds: &[QueuedBuild],
    ) -> Result<Option<Vec<GroupFull>>, Error> {
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
            return Ok(None);
        }
        let skipped = queue(&mut tx, builds).await?;
        set_results(&mut tx, completed_results(id, results, &skipped)).await?;
        tx.commit().await?;
        Ok(Some(skipped))
    }

    async fn list_deliveries(&self, limit: u32) -> Result<Vec<DeliveryRecord>, Error> {
        let rows = sqlx::query(LIST_DELIVERIES)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(delivery_record).collect())
    }
}

/// The statement that records `deliveries`, returning the id of each one that went in (a
/// verified one whose id or body is recorded already conflicts and does not).
pub(super) fn insert_deliveries<DB>(deliveries: &[NewDelivery]) -> QueryBuilder<DB>
where
    DB: Database<Arguments: Default>,
    for<'t> &'t str: Encode<'t, DB> + Type<DB>,
    for<'t> String: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
    for<'t> bool: Encode<'t, DB> + Type<DB>,
    for<'t> Option<String>: Encode<'t, DB> + Type<DB>,
    for<'t> Option<Vec<u8>>: Encode<'t, DB> + Type<DB>,
{
    let now = millis(SystemTime::now());
    let mut insert = QueryBuilder::<DB>::new(
        "INSERT INTO deliveries \
         (id, event, receive_time, verified, digest, summary, state, payload, results) ",
    );
    insert.push_values(deliveries, |mut row, delivery| {
        let state = if delivery.payload.is_some() {
            PENDING
        } else {
            DONE
        };
        row.push_bind(delivery.id.as_str())
            .push_bind(delivery.event.as_str())
            .push_bind(now)
            .push_bind(delivery.verified)
            .push_bind(delivery.digest.clone())
            .push_bind(delivery.summary.as_str())
            .push_bind(state)
            .push_bind(delivery.payload.clone())
            .push_bind(json(&delivery.results));
    });
    insert.push(" ON CONFLICT DO NOTHING RETURNING id");
    insert
}

/// What became of each of `deliveries`, given the ids of those that went in, and the builds of
/// the new ones, to queue.
pub(super) fn recorded(
    deliveries: &[NewDelivery],
    inserted: Vec<String>,
) -> (Vec<Recorded>, Vec<QueuedBuild>) {
    let mut inserted_ids: HashMap<String, usize> = HashMap::new();
    for id in inserted {
        *inserted_ids.entry(id).or_default() += 1;
    }
    // Rows go in in order: of a repeated id, the first ones went in, the later ones conflicted.
    let recorded: Vec<Recorded> = deliveries
        .iter()
        .map(|delivery| match inserted_ids.get_mut(&delivery.id) {
            Some(count) if *count > 0 => {
                *count -= 1;
                Recorded::New(Vec::new())
            }
            _ => Recorded::Duplicate,
        })
        .collect();
    let builds = deliveries
        .iter()
        .zip(&recorded)
        .filter(|(_, recorded)| matches!(recorded, Recorded::New(_)))
        .flat_map(|(delivery, _)| delivery.builds.iter().cloned())
        .collect();
    (recorded, builds)
}

/// `recorded`, each new delivery of `deliveries` with those of its builds that `skipped` names.
pub(super) fn with_skipped(
    deliveries: &[NewDelivery],
    recorded: Vec<Recorded>,
    skipped: &[GroupFull],
) -> Vec<Recorded> {
    deliveries
        .iter()
        .zip(recorded)
        .map(|(delivery, recorded)| match recorded {
            Recorded::New(_) => Recorded::New(
                skipped
                    .iter()
                    .filter(|full| delivery.builds.iter().any(|build| build.id == full.build))
                    .cloned()
                    .collect(),
            ),
            duplicate => duplicate,
        })
        .collect()
}

/// The id and new results (JSON) of each new delivery of `deliveries` some of whose builds
/// were skipped ([`with_skipped`]).
pub(super) fn skipped_results<'d>(
    deliveries: &'d [NewDelivery],
    recorded: &'d [Recorded],
) -> impl Iterator<Item = (&'d str, String)> + 'd {
    deliveries
        .iter()
        .zip(recorded)
        .filter_map(|(delivery, recorded)| match recorded {
            Recorded::New(skipped) if !skipped.is_empty() => Some((
                delivery.id.as_str(),
                json(&results_skipping(&delivery.results, skipped)),
            )),
            _ => None,
        })
}

/// The id and new results (JSON) of completed delivery `id` if some of its `builds` were
/// skipped.
pub(super) fn completed_results<'d>(
    id: &'d str,
    results: &[TriggerResult],
    skipped: &[GroupFull],
) -> Option<(&'d str, String)> {
    (!skipped.is_empty()).then(|| (id, json(&results_skipping(results, skipped))))
}

/// Replaces the results of the verified deliveries `updates` names (id, results as JSON), in
/// either dialect.
pub(super) async fn set_results<'d, DB>(
    tx: &mut sqlx::Transaction<'_, DB>,
    updates: impl IntoIterator<Item = (&'d str, String)>,
) -> Result<(), Error>
where
    DB: Database<Arguments: IntoArguments<DB>>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'t> &'t str: Encode<'t, DB> + Type<DB>,
    for<'t> String: Encode<'t, DB> + Type<DB>,
{
    for (id, results) in updates {
        sqlx::query(SET_RESULTS)
            .bind(results)
            .bind(id)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// `results` with those of the builds `skipped` names saying why they were not queued.
fn results_skipping(results: &[TriggerResult], skipped: &[GroupFull]) -> Vec<TriggerResult> {
    results
        .iter()
        .map(|result| {
            let full = skipped
                .iter()
                .find(|full| result.build_id.as_ref() == Some(&full.build));
            match full {
                Some(full) => TriggerResult {
                    trigger: result.trigger.clone(),
                    build_id: None,
                    reason: Some(full.reason.clone()),
                },
                None => result.clone(),
            }
        })
        .collect()
}

/// The pull requests the new verified ones of `deliveries` describe, as rows of
/// `pull_requests`: the repository in lowercase (GitHub's names are case-insensitive), the
/// number, the JSON.
pub(super) fn pull_requests<'d>(
    deliveries: &'d [NewDelivery],
    recorded: &'d [Recorded],
) -> impl Iterator<Item = (String, i64, String)> + 'd {
    deliveries
        .iter()
        .zip(recorded)
        .filter(|(delivery, recorded)| delivery.verified && matches!(recorded, Recorded::New(_)))
        .filter_map(|(delivery, _)| delivery.pull_request.as_ref())
        .map(|(repository, pull_request)| {
            (
                repository.to_ascii_lowercase(),
                pull_request.number as i64,
                json(pull_request),
            )
        })
}

pub(super) fn read_pull_request(text: Option<String>) -> Result<Option<PullRequest>, Error> {
    text.map(|text| {
        serde_json::from_str(&text).map_err(|error| Error::Unreadable {
            what: "pull request",
            error,
        })
    })
    .transpose()
}

pub(super) fn rejected_count(count: Option<i64>) -> u64 {
    count.unwrap_or(0).try_into().unwrap_or(0)
}

pub(super) fn pending_delivery(row: &impl Columns) -> PendingDelivery {
    PendingDelivery {
        id: row.column("id"),
        event: row.column("event"),
        payload: row.column("payload"),
        results: serde_json::from_str(&row.column::<String>("results")).unwrap_or_default(),
    }
}

pub(super) fn delivery_record(row: &impl Columns) -> DeliveryRecord {
    DeliveryRecord {
        id: row.column("id"),
        event: row.column("event"),
        receive_time: time(row.column("receive_time")),
        verified: row.column("verified"),
        summary: row.column("summary"),
        pending: row.column::<String>("state") == PENDING,
        results: serde_json::from_str(&row.column::<String>("results")).unwrap_or_default(),
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
            pull_request: None,
        }
    }

    /// A batch is written in one statement per table; a verified id seen before, in the store or
    /// earlier in the same batch, is a duplicate and queues nothing.
    #[tokio::test]
    async fn a_batch_of_deliveries_queues_the_builds_of_new_ones_only() {
        let (_dir, store) = store().await;
        let first = store
            .record_deliveries(
                &[
                    delivery("a", true, vec![queued("t", "main")]),
                    delivery("a", true, vec![queued("t", "main")]),
                    delivery("forged", false, vec![]),
                    delivery("forged", false, vec![]),
                ],
                0,
            )
            .await
            .unwrap();
        use Recorded::Duplicate;
        let new = || Recorded::New(Vec::new());
        assert_eq!(first, [new(), Duplicate, new(), new()]);
        let again = store
            .record_deliveries(
                &[
                    delivery("b", true, vec![queued("t", "main"), queued("u", "main")]),
                    delivery("a", true, vec![queued("t", "main")]),
                ],
                0,
            )
            .await
            .unwrap();
        assert_eq!(again, [new(), Duplicate]);
        let builds = store.list_builds(&BuildQuery::default()).await.unwrap();
        assert_eq!(builds.len(), 3);
    }
}
