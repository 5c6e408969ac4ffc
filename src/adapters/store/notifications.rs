//! The notifications aggregate (issue 20): every status a build takes, as an event the store's
//! own triggers write (`build_events`), and the messages the notifier makes of them for each
//! notifier whose filter selects them, with every attempt at delivering one.

use std::time::SystemTime;

use sqlx::sqlite::SqliteRow;

use super::{Columns, Error, SqliteStore, millis, status, time};
use crate::core::build::Status;

/// A status a build took, not yet turned into notifications.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildEvent {
    /// Its place among every build's events: a build's events are published in this order.
    pub seq: i64,
    pub build_id: String,
    pub status: Status,
}

/// A notification to record for an event: a message for `notifier` to send, or, when the
/// notifier's filter could not be evaluated, why it never will be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNotification {
    pub notifier: String,
    pub message: String,
    pub unsendable: Option<String>,
}

/// A notification due to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueNotification {
    pub id: i64,
    pub build_id: String,
    pub status: Status,
    pub notifier: String,
    pub message: String,
    /// How many attempts were made before this one.
    pub attempts: u32,
}

/// The result of one attempt at a notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// Which attempt it was, from 1.
    pub number: u32,
    /// `None`: delivered.
    pub error: Option<String>,
    /// When to try again after a failure; `None` gives the notification up.
    pub retry_at: Option<SystemTime>,
}

/// A notification as the console lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationRecord {
    pub id: i64,
    pub build_id: String,
    pub status: Status,
    pub notifier: String,
    pub create_time: SystemTime,
    pub attempts: u32,
    pub delivered: bool,
    /// Delivered or given up.
    pub done: bool,
    /// The last attempt's failure, or why it was never sent.
    pub error: Option<String>,
    /// When the next attempt is due, for one not done.
    pub next_attempt: Option<SystemTime>,
}

/// What the notifier reads and records. A caller may rely on:
///
/// - every status a build takes (the one it is recorded with, then each change) is an event, in
///   the order taken, whichever process or statement moved it;
/// - a build's event is not claimable while an earlier event of the build is unpublished: a
///   build's notifications are recorded in the order of its statuses;
/// - an event claimed is not returned again, to any caller, before the claim's end, unless it
///   was published first: replicas sharing the store never publish one event twice at once;
/// - [`Notifications::publish`] records the event's notifications and removes the event at once
///   (one transaction), and only under the claim it names: a notifier that dies in between
///   publishes it again, never half, and one whose claim ran out publishes nothing;
/// - a notification is due from its record until it is delivered or given up, once its retry
///   time has come and a build's earlier notifications to its notifier are done: each
///   notifier receives a build's statuses in order; claims of notifications keep the same
///   promise as claims of events;
/// - [`Notifications::attempted`] records an attempt only under the claim it names, so an attempt
///   made after the claim ran out (another may have made it meanwhile) changes nothing;
/// - every attempt recorded is kept, in order, with the notification.
#[async_trait::async_trait]
pub trait Notifications: Send + Sync {
    /// At most `limit` events not yet published, oldest first, each claimed until `until`.
    async fn claim_events(
        &self,
        now: SystemTime,
        until: SystemTime,
        limit: u32,
    ) -> Result<Vec<BuildEvent>, Error>;

    /// Records `notifications` of `event` (made at `now`) and removes the event, if the claim
    /// that ends at `claimed_until` still holds it; `false` (nothing recorded) if not.
    async fn publish(
        &self,
        event: &BuildEvent,
        claimed_until: SystemTime,
        notifications: &[NewNotification],
        now: SystemTime,
    ) -> Result<bool, Error>;

    /// At most `limit` notifications due at `now`, oldest first, each claimed until `until`.
    async fn claim_notifications(
        &self,
        now: SystemTime,
        until: SystemTime,
        limit: u32,
    ) -> Result<Vec<DueNotification>, Error>;

    /// Records an attempt at notification `id`, made at `now` under the claim that ends at
    /// `claimed_until`; `false` (nothing recorded) if that claim no longer holds it.
    async fn attempted(
        &self,
        id: i64,
        attempt: &Attempt,
        claimed_until: SystemTime,
        now: SystemTime,
    ) -> Result<bool, Error>;

    /// The newest `limit` notifications, newest first.
    async fn recent_notifications(&self, limit: u32) -> Result<Vec<NotificationRecord>, Error>;

    /// Each attempt at notification `id`, in order: when, and its failure (`None`: delivered).
    async fn attempts(&self, id: i64) -> Result<Vec<(SystemTime, Option<String>)>, Error>;
}

/// Statements both dialects share.
pub(super) const EVENTS_DUE: &str = "SELECT seq, build_id, status FROM build_events ev \
     WHERE claimed_until <= $1 AND NOT EXISTS (SELECT 1 FROM build_events earlier \
     WHERE earlier.build_id = ev.build_id AND earlier.seq < ev.seq) ORDER BY seq LIMIT $2";
/// A claim, if the event is still unclaimed at `$3` (compare and set: of claimers reading it at
/// once, one changes the row).
pub(super) const CLAIM_EVENT: &str =
    "UPDATE build_events SET claimed_until = $1 WHERE seq = $2 AND claimed_until <= $3";
/// The event's removal, under the claim that ends at `$2`.
pub(super) const REMOVE_EVENT: &str =
    "DELETE FROM build_events WHERE seq = $1 AND claimed_until = $2";
pub(super) const INSERT_NOTIFICATION: &str = "INSERT INTO notifications \
     (build_id, status, notifier, message, create_time, done, error) \
     VALUES ($1, $2, $3, $4, $5, $6, $7)";
/// A build's notifications to one notifier go one at a time, in order: the earliest not done.
pub(super) const NOTIFICATIONS_DUE: &str = "SELECT id, build_id, status, notifier, message, \
     attempts FROM notifications n WHERE NOT done AND next_attempt <= $1 AND NOT EXISTS \
     (SELECT 1 FROM notifications earlier WHERE earlier.build_id = n.build_id \
     AND earlier.notifier = n.notifier AND NOT earlier.done AND earlier.id < n.id) \
     ORDER BY id LIMIT $2";
pub(super) const CLAIM_NOTIFICATION: &str = "UPDATE notifications SET next_attempt = $1 \
     WHERE id = $2 AND NOT done AND next_attempt <= $3";
pub(super) const RECORD_ATTEMPT: &str = "INSERT INTO notification_attempts \
     (notification_id, attempt, time, error) VALUES ($1, $2, $3, $4)";
/// The notification after an attempt, under the claim that ends at `$7` (which moved its
/// `next_attempt` there).
pub(super) const AFTER_ATTEMPT: &str = "UPDATE notifications SET attempts = $1, \
     next_attempt = $2, done = $3, delivered = $4, error = $5 \
     WHERE id = $6 AND NOT done AND next_attempt = $7";
pub(super) const RECENT_NOTIFICATIONS: &str = "SELECT id, build_id, status, notifier, \
     create_time, attempts, delivered, done, error, next_attempt FROM notifications \
     ORDER BY create_time DESC, id DESC LIMIT $1";
pub(super) const ATTEMPTS: &str = "SELECT time, error FROM notification_attempts \
     WHERE notification_id = $1 ORDER BY attempt";

pub(super) fn event(row: &impl Columns) -> BuildEvent {
    BuildEvent {
        seq: row.column("seq"),
        build_id: row.column("build_id"),
        status: status(row.column("status")),
    }
}

pub(super) fn due(row: &impl Columns) -> DueNotification {
    DueNotification {
        id: row.column("id"),
        build_id: row.column("build_id"),
        status: status(row.column("status")),
        notifier: row.column("notifier"),
        message: row.column("message"),
        attempts: row.column::<i64>("attempts") as u32,
    }
}

pub(super) fn record(row: &impl Columns) -> NotificationRecord {
    let done = row.column("done");
    NotificationRecord {
        id: row.column("id"),
        build_id: row.column("build_id"),
        status: status(row.column("status")),
        notifier: row.column("notifier"),
        create_time: time(row.column("create_time")),
        attempts: row.column::<i64>("attempts") as u32,
        delivered: row.column("delivered"),
        done,
        error: row.column("error"),
        next_attempt: (!done).then(|| time(row.column("next_attempt"))),
    }
}

pub(super) fn attempt(row: &impl Columns) -> (SystemTime, Option<String>) {
    (time(row.column("time")), row.column("error"))
}

/// `AFTER_ATTEMPT`'s values: the next attempt's time, whether it is done, whether delivered.
pub(super) fn after_attempt(attempt: &Attempt) -> (i64, bool, bool) {
    let delivered = attempt.error.is_none();
    let done = delivered || attempt.retry_at.is_none();
    (attempt.retry_at.map_or(0, millis), done, delivered)
}

/// What a look lists and how each is claimed: the statement listing what is due (`$1` now, `$2`
/// how many), the claim (`$1` the claim's end, `$2` the key, `$3` now: a compare and set, so of
/// claimers reading a row at once one changes it), how a row reads, and its key.
pub(super) type Claims<R, T> = (&'static str, &'static str, fn(&R) -> T, fn(&T) -> i64);

/// Of what `claims` lists as due at `now`, at most `limit`, those this caller claimed until
/// `until`.
async fn claim_due<T>(
    tx: &mut sqlx::SqliteConnection,
    (due, claim, read, key): Claims<SqliteRow, T>,
    now: SystemTime,
    until: SystemTime,
    limit: u32,
) -> Result<Vec<T>, Error> {
    let rows = sqlx::query(due)
        .bind(millis(now))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
    let mut claimed = Vec::new();
    for item in rows.iter().map(read) {
        let changed = sqlx::query(claim)
            .bind(millis(until))
            .bind(key(&item))
            .bind(millis(now))
            .execute(&mut *tx)
            .await?;
        if changed.rows_affected() == 1 {
            claimed.push(item);
        }
    }
    Ok(claimed)
}

#[async_trait::async_trait]
impl Notifications for SqliteStore {
    async fn claim_events(
        &self,
        now: SystemTime,
        until: SystemTime,
        limit: u32,
    ) -> Result<Vec<BuildEvent>, Error> {
        let (_turn, mut tx) = self.write().await?;
        let due: Claims<_, _> = (EVENTS_DUE, CLAIM_EVENT, event, |e| e.seq);
        let claimed = claim_due(&mut tx, due, now, until, limit).await?;
        tx.commit().await?;
        Ok(claimed)
    }

    async fn publish(
        &self,
        event: &BuildEvent,
        claimed_until: SystemTime,
        notifications: &[NewNotification],
        now: SystemTime,
    ) -> Result<bool, Error> {
        let (_turn, mut tx) = self.write().await?;
        let removed = sqlx::query(REMOVE_EVENT)
            .bind(event.seq)
            .bind(millis(claimed_until))
            .execute(&mut *tx)
            .await?;
        if removed.rows_affected() == 0 {
            return Ok(false);
        }
        for notification in notifications {
            sqlx::query(INSERT_NOTIFICATION)
                .bind(&event.build_id)
                .bind(event.status.as_str())
                .bind(&notification.notifier)
                .bind(&notification.message)
                .bind(millis(now))
                .bind(notification.unsendable.is_some())
                .bind(&notification.unsendable)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn claim_notifications(
        &self,
        now: SystemTime,
        until: SystemTime,
        limit: u32,
    ) -> Result<Vec<DueNotification>, Error> {
        let (_turn, mut tx) = self.write().await?;
        let due: Claims<_, _> = (NOTIFICATIONS_DUE, CLAIM_NOTIFICATION, due, |n| n.id);
        let claimed = claim_due(&mut tx, due, now, until, limit).await?;
        tx.commit().await?;
        Ok(claimed)
    }

    async fn attempted(
        &self,
        id: i64,
        attempt: &Attempt,
        claimed_until: SystemTime,
        now: SystemTime,
    ) -> Result<bool, Error> {
        let (next_attempt, done, delivered) = after_attempt(attempt);
        let (_turn, mut tx) = self.write().await?;
        let updated = sqlx::query(AFTER_ATTEMPT)
            .bind(i64::from(attempt.number))
            .bind(next_attempt)
            .bind(done)
            .bind(delivered)
            .bind(&attempt.error)
            .bind(id)
            .bind(millis(claimed_until))
            .execute(&mut *tx)
            .await?;
        if updated.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query(RECORD_ATTEMPT)
            .bind(id)
            .bind(i64::from(attempt.number))
            .bind(millis(now))
            .bind(&attempt.error)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn recent_notifications(&self, limit: u32) -> Result<Vec<NotificationRecord>, Error> {
        let rows = sqlx::query(RECENT_NOTIFICATIONS)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(record).collect())
    }

    async fn attempts(&self, id: i64) -> Result<Vec<(SystemTime, Option<String>)>, Error> {
        let rows = sqlx::query(ATTEMPTS).bind(id).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(attempt).collect())
    }
}
