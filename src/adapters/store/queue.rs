//! The queue aggregate: builds queued for the service, claimed one at a time, and the leases
//! by which a process holds the builds it runs.

use std::time::{Duration, SystemTime};

use sqlx::{QueryBuilder, Row, Sqlite};

use super::{Error, SqliteStore, Transaction, json, millis, parse_json};
use crate::core::build::{Request, Status};
use crate::core::substitute::Values;

/// A build the service queues: recorded QUEUED with what it is to run, its plan resolved when
/// it starts.
#[derive(Debug, Clone)]
pub struct QueuedBuild {
    pub id: String,
    /// The trigger that queued it; `None` for a submitted build.
    pub trigger: Option<String>,
    /// The schedule that ran the trigger.
    pub schedule: Option<String>,
    pub delivery: Option<String>,
    pub source: serde_json::Value,
    pub substitutions: Values,
    pub request: Request,
}

/// A build claimed from the queue, WORKING and held by its claimer from now on.
#[derive(Debug)]
pub struct Claimed {
    pub id: String,
    /// What it is to run, or why it cannot be read (another version of builder queued it): the
    /// claimer ends the build with that reason.
    pub request: Result<Request, serde_json::Error>,
}

/// A process's claim on the builds it runs: who it is, and how long a claim lasts unless it is
/// renewed. A build whose claim ran out is anyone's to close, on any machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub holder: String,
    pub duration: Duration,
}

impl Lease {
    pub(super) fn until(&self) -> i64 {
        millis(SystemTime::now() + self.duration)
    }
}

/// What renewing a lease found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Still held, renewed; the build is to be stopped if a cancel was asked for.
    Held { cancel_requested: bool },
    /// Finished, or taken over by another process (which closes it): stop running it.
    Lost,
}

/// A build that was started and is not finished, with who holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfinished {
    pub id: String,
    /// `None` for a build recorded before builds had holders.
    pub holder: Option<String>,
    /// Whether its holder's claim ran out.
    pub expired: bool,
}

/// The queue and its leases. A queued build waits QUEUED until one process claims it; from then
/// on (and from its creation, for a build run at once) it is held by that process's [`Lease`]
/// until it is finished. A caller may rely on:
///
/// - [`Queue::claim_queued`] hands each queued build out once, oldest first;
/// - a lease is renewed only by its holder, and only while the build is unfinished; a renewal
///   reports a cancel asked for since ([`Queue::request_cancel`]);
/// - a build whose lease ran out is [`Unfinished::expired`], and [`Queue::take_over`] gives it to
///   one process only (compare-and-set on its holder);
/// - a build cancelled while QUEUED is never claimed.
#[async_trait::async_trait]
pub trait Queue: Send + Sync {
    /// Extends the holder's claim on a running build by its duration, and tells whether a cancel
    /// was asked for; [`Renewal::Lost`] when the build is finished or no longer the holder's.
    async fn renew_lease(&self, id: &str, lease: &Lease) -> Result<Renewal, Error>;

    /// Asks a WORKING build's holder to stop it (it sees this at its next renewal); `false` if
    /// the build is not WORKING.
    async fn request_cancel(&self, id: &str) -> Result<bool, Error>;

    /// Makes `lease`'s holder the holder of an unfinished build, if it is still held by
    /// `previous` (compare-and-set: of processes closing abandoned builds, one wins each).
    async fn take_over(
        &self,
        id: &str,
        previous: Option<&str>,
        lease: &Lease,
    ) -> Result<bool, Error>;

    /// The builds that were started and not finished: running ones, and builds recorded to be
    /// run at once (not queued for the service) that never ran.
    async fn unfinished_builds(&self) -> Result<Vec<Unfinished>, Error>;

    /// Takes the oldest queued build for `lease`'s holder to run: it is WORKING and held from
    /// now on.
    async fn claim_queued(&self, lease: &Lease) -> Result<Option<Claimed>, Error>;

    /// Queues builds (a retry, a manual run).
    async fn queue_builds(&self, builds: &[QueuedBuild]) -> Result<(), Error>;

    /// What a build queued by the service was to run, to queue it again; `None` for builds
    /// that did not come from the queue (a local `builder submit`).
    async fn queued_request(&self, id: &str) -> Result<Option<QueuedBuild>, Error>;

    /// Cancels a build that is still QUEUED; `false` if it is not (any more).
    async fn cancel_queued(&self, id: &str) -> Result<bool, Error>;
}

#[async_trait::async_trait]
impl Queue for SqliteStore {
    async fn renew_lease(&self, id: &str, lease: &Lease) -> Result<Renewal, Error> {
        let (_turn, mut tx) = self.write().await?;
        let renewed: Option<bool> = sqlx::query_scalar(
            "UPDATE builds SET lease_until = $1 WHERE id = $2 AND holder = $3 AND status IN ($4, $5) \
             RETURNING cancel_requested != 0",
        )
        .bind(lease.until())
        .bind(id)
        .bind(&lease.holder)
        .bind(Status::Queued.as_str())
        .bind(Status::Working.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(match renewed {
            Some(cancel_requested) => Renewal::Held { cancel_requested },
            None => Renewal::Lost,
        })
    }

    async fn request_cancel(&self, id: &str) -> Result<bool, Error> {
        let (_turn, mut tx) = self.write().await?;
        let updated =
            sqlx::query("UPDATE builds SET cancel_requested = 1 WHERE id = $1 AND status = $2")
                .bind(id)
                .bind(Status::Working.as_str())
                .execute(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(updated.rows_affected() == 1)
    }

    async fn take_over(
        &self,
        id: &str,
        previous: Option<&str>,
        lease: &Lease,
    ) -> Result<bool, Error> {
        let (_turn, mut tx) = self.write().await?;
        let updated = sqlx::query(
            "UPDATE builds SET holder = $1, lease_until = $2 \
             WHERE id = $3 AND holder IS $4 AND status IN ($5, $6)",
        )
        .bind(&lease.holder)
        .bind(lease.until())
        .bind(id)
        .bind(previous)
        .bind(Status::Queued.as_str())
        .bind(Status::Working.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(updated.rows_affected() == 1)
    }

    async fn unfinished_builds(&self) -> Result<Vec<Unfinished>, Error> {
        let rows = sqlx::query(
            "SELECT id, holder, COALESCE(lease_until < $1, 1) AS expired FROM builds \
             WHERE status = $2 OR (status = $3 AND request IS NULL)",
        )
        .bind(millis(SystemTime::now()))
        .bind(Status::Working.as_str())
        .bind(Status::Queued.as_str())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| Unfinished {
                id: row.get("id"),
                holder: row.get("holder"),
                expired: row.get("expired"),
            })
            .collect())
    }

    async fn claim_queued(&self, lease: &Lease) -> Result<Option<Claimed>, Error> {
        let (_turn, mut tx) = self.write().await?;
        let row = sqlx::query(
            "UPDATE builds SET status = $1, start_time = $2, holder = $3, lease_until = $4 WHERE id = \
             (SELECT id FROM builds WHERE status = $5 AND request IS NOT NULL \
              ORDER BY create_time, id LIMIT 1) \
             RETURNING id, request",
        )
        .bind(Status::Working.as_str())
        .bind(millis(SystemTime::now()))
        .bind(&lease.holder)
        .bind(lease.until())
        .bind(Status::Queued.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(row.map(|row| Claimed {
            id: row.get("id"),
            request: serde_json::from_str(row.get("request")),
        }))
    }

    async fn queue_builds(&self, builds: &[QueuedBuild]) -> Result<(), Error> {
        let (_turn, mut tx) = self.write().await?;
        queue(&mut tx, builds).await?;
        Ok(tx.commit().await?)
    }

    async fn queued_request(&self, id: &str) -> Result<Option<QueuedBuild>, Error> {
        let row = sqlx::query(
            "SELECT id, trigger_name, schedule_name, delivery_id, source, substitutions, request FROM builds \
             WHERE id = $1 AND request IS NOT NULL",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let unreadable = |what| move |error| Error::Unreadable { what, error };
        Ok(Some(QueuedBuild {
            id: row.get("id"),
            trigger: row.get("trigger_name"),
            schedule: row.get("schedule_name"),
            delivery: row.get("delivery_id"),
            source: parse_json(row.get("source")),
            substitutions: serde_json::from_str(row.get("substitutions"))
                .map_err(unreadable("build's substitutions"))?,
            request: serde_json::from_str(row.get("request"))
                .map_err(unreadable("queued build's request"))?,
        }))
    }

    async fn cancel_queued(&self, id: &str) -> Result<bool, Error> {
        let (_turn, mut tx) = self.write().await?;
        let updated = sqlx::query(
            "UPDATE builds SET status = $1, finish_time = $2 WHERE id = $3 AND status = $4",
        )
        .bind(Status::Cancelled.as_str())
        .bind(millis(SystemTime::now()))
        .bind(id)
        .bind(Status::Queued.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(updated.rows_affected() == 1)
    }
}

/// Builds one statement inserts at most: SQLite takes at most 32,766 values in one.
const BUILDS_PER_INSERT: usize = 1000;

pub(super) async fn queue(tx: &mut Transaction<'_>, builds: &[QueuedBuild]) -> Result<(), Error> {
    let now = millis(SystemTime::now());
    for builds in builds.chunks(BUILDS_PER_INSERT) {
        queue_chunk(tx, builds, now).await?;
    }
    Ok(())
}

async fn queue_chunk(
    tx: &mut Transaction<'_>,
    builds: &[QueuedBuild],
    now: i64,
) -> Result<(), Error> {
    let mut insert = QueryBuilder::<Sqlite>::new(
        "INSERT INTO builds (id, status, create_time, source, substitutions, plan, trigger_name, \
         delivery_id, request, schedule_name) ",
    );
    insert.push_values(builds, |mut row, build| {
        row.push_bind(&build.id)
            .push_bind(Status::Queued.as_str())
            .push_bind(now)
            .push_bind(build.source.to_string())
            .push_bind(json(&build.substitutions))
            .push_bind("null")
            .push_bind(&build.trigger)
            .push_bind(&build.delivery)
            .push_bind(json(&build.request))
            .push_bind(&build.schedule);
    });
    insert.build().execute(&mut **tx).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::store::Builds as _;
    use crate::adapters::store::test_support::{lease, queued, store};
    use crate::core::build::Outcome;

    /// The queue's protocol between processes: a claim is its holder's until it runs out; only
    /// the holder renews it; a cancel reaches the holder at its renewal; of two processes taking
    /// an abandoned build over, one wins.
    #[tokio::test]
    async fn leases_hold_builds_for_their_holder_until_they_run_out() {
        let (_dir, store) = store().await;
        let build = queued("t", "main");
        store
            .queue_builds(std::slice::from_ref(&build))
            .await
            .unwrap();
        let (a, b) = (lease("a", 30), lease("b", 30));
        let claimed = store.claim_queued(&a).await.unwrap().expect("queued");
        assert_eq!(claimed.id, build.id);
        assert!(store.claim_queued(&b).await.unwrap().is_none());
        let held = Renewal::Held {
            cancel_requested: false,
        };
        assert_eq!(store.renew_lease(&build.id, &a).await.unwrap(), held);
        assert_eq!(
            store.renew_lease(&build.id, &b).await.unwrap(),
            Renewal::Lost
        );
        let unfinished = |expired| Unfinished {
            id: build.id.clone(),
            holder: Some("a".into()),
            expired,
        };
        assert_eq!(
            store.unfinished_builds().await.unwrap(),
            [unfinished(false)]
        );

        assert!(store.request_cancel(&build.id).await.unwrap());
        assert_eq!(
            store.renew_lease(&build.id, &a).await.unwrap(),
            Renewal::Held {
                cancel_requested: true
            }
        );

        // A renewal that gives no time left: the claim has run out.
        store.renew_lease(&build.id, &lease("a", 0)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(store.unfinished_builds().await.unwrap(), [unfinished(true)]);
        assert!(store.take_over(&build.id, Some("a"), &b).await.unwrap());
        assert!(
            !store
                .take_over(&build.id, Some("a"), &lease("c", 30))
                .await
                .unwrap()
        );
        assert_eq!(
            store.renew_lease(&build.id, &a).await.unwrap(),
            Renewal::Lost
        );

        let outcome = Outcome::ended(Status::InternalError, Vec::new(), None);
        store.finish_build(&build.id, &outcome).await.unwrap();
        assert_eq!(
            store.renew_lease(&build.id, &b).await.unwrap(),
            Renewal::Lost
        );
        assert!(!store.request_cancel(&build.id).await.unwrap());
        assert_eq!(store.unfinished_builds().await.unwrap(), []);
    }
}
