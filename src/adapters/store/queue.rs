//! The queue aggregate: builds queued for the service, claimed one at a time, and the leases
//! by which a process holds the builds it runs.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use sqlx::{
    AssertSqlSafe, Database, Encode, Executor, FromRow, IntoArguments, QueryBuilder, Sqlite, Type,
};

use super::{Columns, Error, SqliteStore, Transaction, json, millis, parse_json};
use crate::core::build::{ApprovalResult, ApprovalState, Request, Status};
use crate::core::substitute::Values;
use crate::core::triggers::ConcurrencyGroup;

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
    /// The pool whose workers may run it (see `ResolvedBuild::pool`); `None` for the default
    /// pool.
    pub pool: Option<String>,
    /// How long it may wait QUEUED before it is EXPIRED ([`Queue::expire_queued`]): its
    /// `queueTtl`, when its config is known as it is queued (a submission's; a trigger's config
    /// is read from its commit when it is claimed, see [`Queue::requeue`]).
    pub queue_ttl: Option<Duration>,
    /// Whether its statuses are to be reported to GitHub: it then has a report
    /// ([`super::Reports`]) from the transaction that queues it.
    pub report: bool,
    /// It waits PENDING for a person's approval ([`Queue::decide_approval`]) before it is
    /// QUEUED; its `queue_ttl` counts from the approval.
    pub approval_required: bool,
    /// The trigger's concurrency group it belongs to, its name expanded: it is not claimed
    /// while its group has `limit` builds WORKING.
    pub concurrency: Option<ConcurrencyGroup>,
    /// Its trigger's concurrency says `SKIP`: it is queued only if its group has fewer than
    /// `limit` builds queued or running, counted in the transaction that queues it; else it is
    /// left out ([`GroupFull`]).
    pub skips_full_group: bool,
}

/// A build left out of the queue: its trigger skips a full group (`onConflict: SKIP`), and its
/// group had `limit` builds queued or running when it was to be queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupFull {
    pub build: String,
    /// In the trigger's result: the group, its limit and its builds queued or running.
    pub reason: String,
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
/// - a build cancelled while QUEUED is never claimed;
/// - a claim takes only builds of the claimer's pool, and [`Queue::requeue`] moves a claimed
///   build to another pool, QUEUED again, only while its claimer holds it;
/// - a build still QUEUED past its `queueTtl` is EXPIRED by [`Queue::expire_queued`], once, and
///   is never claimed after (a claim and an expiry of one build: one wins);
/// - a PENDING build (one that waits for approval) is never claimed nor expired; it is decided
///   once ([`Queue::decide_approval`], compare-and-set on PENDING), and its `queueTtl` counts
///   from its approval.
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

    /// Takes the oldest queued build of `pool` (`None`: the default pool) for `lease`'s holder
    /// to run: it is WORKING and held from now on.
    async fn claim_queued(
        &self,
        lease: &Lease,
        pool: Option<&str>,
    ) -> Result<Option<Claimed>, Error>;

    /// Gives a build its holder claimed back to the queue, for the workers of `pool`: its
    /// config names another pool than the one it was claimed from (a trigger's config is only
    /// read from its commit), and may give it a `queue_ttl`, counted from when it was first
    /// queued. `false` if `lease`'s holder no longer holds it.
    async fn requeue(
        &self,
        id: &str,
        lease: &Lease,
        pool: Option<&str>,
        queue_ttl: Option<Duration>,
    ) -> Result<bool, Error>;

    /// Ends EXPIRED the builds still QUEUED at `now` past their `queueTtl` (whose pool has no
    /// worker, or none free in time), with `failure`; returns their ids.
    async fn expire_queued(&self, now: SystemTime, failure: &str) -> Result<Vec<String>, Error>;

    /// Queues builds (a retry, a manual run), but for those that skip a full group, which it
    /// returns: the count and the insert are one decision, so builds queued at once from
    /// anywhere put at most `limit` of a group in the queue.
    async fn queue_builds(&self, builds: &[QueuedBuild]) -> Result<Vec<GroupFull>, Error>;

    /// What a build queued by the service was to run, to queue it again; `None` for builds
    /// that did not come from the queue (a local `builder submit`).
    async fn queued_request(&self, id: &str) -> Result<Option<QueuedBuild>, Error>;

    /// Cancels a build that is still QUEUED, or PENDING (its approval then CANCELLED too);
    /// `false` if it is neither (any more).
    async fn cancel_queued(&self, id: &str) -> Result<bool, Error>;

    /// Decides a PENDING build's approval with `result`: approved, it is QUEUED (its `queueTtl`
    /// counted from the decision's time); rejected, it ends REJECTED. `false`, deciding nothing,
    /// if it is not PENDING (any more): of two decisions at once, one is made.
    async fn decide_approval(&self, id: &str, result: &ApprovalResult) -> Result<bool, Error>;

    /// The builds of concurrency group `group` in either of `statuses` (twice the same for
    /// one), in the order they were started, then queued.
    async fn group_builds(&self, group: &str, statuses: [Status; 2]) -> Result<Vec<String>, Error>;
}

/// Why `build` waits QUEUED, if its concurrency group is at its limit: the group's name, limit
/// and WORKING builds, in a sentence.
pub async fn waiting_for(
    store: &(impl Queue + ?Sized),
    build: &super::BuildRecord,
) -> Result<Option<String>, Error> {
    let Some(group) = build
        .concurrency
        .as_ref()
        .filter(|_| build.status == Status::Queued)
    else {
        return Ok(None);
    };
    let working = store
        .group_builds(&group.name, [Status::Working; 2])
        .await?;
    Ok(group.waiting(&working))
}

/// Statements both dialects share.
pub(super) const RENEW_LEASE: &str = "UPDATE builds SET lease_until = $1 \
     WHERE id = $2 AND holder = $3 AND status IN ($4, $5) RETURNING cancel_requested";
pub(super) const REQUEST_CANCEL: &str =
    "UPDATE builds SET cancel_requested = TRUE WHERE id = $1 AND status = $2";
pub(super) const TAKE_OVER: &str = "UPDATE builds SET holder = $1, lease_until = $2 \
     WHERE id = $3 AND holder IS NOT DISTINCT FROM $4 AND status IN ($5, $6)";
pub(super) const UNFINISHED: &str = "SELECT id, holder, COALESCE(lease_until < $1, TRUE) AS expired \
     FROM builds WHERE status = $2 OR (status = $3 AND request IS NULL)";
/// The claim of the oldest queued build whose concurrency group (if any) is below its limit,
/// without its end: `)` on SQLite, whose one writer
/// claims at a time; PostgreSQL's claimers skip the rows others have locked.
pub(super) const CLAIM_QUEUED: &str = "UPDATE builds \
     SET status = $1, start_time = $2, holder = $3, lease_until = $4 WHERE id = \
     (SELECT id FROM builds AS queued WHERE status = $5 AND request IS NOT NULL AND pool = $6 \
     AND (concurrency_group IS NULL OR concurrency_limit > (SELECT COUNT(*) FROM builds AS running \
     WHERE running.concurrency_group = queued.concurrency_group AND running.status = $1)) \
     ORDER BY create_time, id LIMIT 1";
/// The builds of group `$1` that are `$2` or `$3`, as [`Queue::group_builds`] orders them (the
/// unstarted last in both dialects: SQLite sorts NULL first, PostgreSQL last).
pub(super) const GROUP_BUILDS: &str = "SELECT id FROM builds \
     WHERE concurrency_group = $1 AND status IN ($2, $3) \
     ORDER BY start_time IS NULL, start_time, create_time, id";
/// The statuses of a group's builds that fill it for those that skip a full group.
pub(super) const UNFINISHED_IN_GROUP: [Status; 2] = [Status::Queued, Status::Working];
/// How many builds of group `$1` are `$2` (WORKING).
pub(super) const GROUP_WORKING: &str =
    "SELECT COUNT(*) FROM builds WHERE concurrency_group = $1 AND status = $2";
/// `$6`, the queue TTL in milliseconds, is NULL for none: NULL added to the time the build was
/// queued (its approval's, if it waited for one).
pub(super) const REQUEUE: &str = "UPDATE builds SET status = $1, pool = $2, holder = NULL, \
     lease_until = NULL, start_time = NULL, \
     queue_deadline = COALESCE(approval_time, create_time) + $6 \
     WHERE id = $3 AND holder = $4 AND status = $5";
pub(super) const EXPIRE_QUEUED: &str = "UPDATE builds SET status = $1, finish_time = $2, \
     failure = $3 WHERE status = $4 AND queue_deadline <= $2 RETURNING id";
pub(super) const QUEUED_REQUEST: &str = "SELECT id, trigger_name, schedule_name, delivery_id, \
     source, substitutions, request, pool, \
     queue_deadline - COALESCE(approval_time, create_time) AS queue_ttl, \
     approval_state IS NOT NULL AS approval_required, concurrency_group, concurrency_limit \
     FROM builds WHERE id = $1 AND request IS NOT NULL";
/// `$4` QUEUED, `$5` PENDING (whose approval becomes `$6`, CANCELLED).
pub(super) const CANCEL_QUEUED: &str = "UPDATE builds SET status = $1, finish_time = $2, \
     approval_state = CASE WHEN status = $5 THEN $6 ELSE approval_state END \
     WHERE id = $3 AND status IN ($4, $5)";
/// The decision of a PENDING build (`$8`): the deadline moves by the time it waited for it.
pub(super) const DECIDE_APPROVAL: &str = "UPDATE builds SET status = $1, approval_state = $2, \
     approver = $3, approval_time = $4, approval_comment = $5, finish_time = $6, \
     queue_deadline = $4 + (queue_deadline - create_time) WHERE id = $7 AND status = $8";

#[async_trait::async_trait]
impl Queue for SqliteStore {
    async fn renew_lease(&self, id: &str, lease: &Lease) -> Result<Renewal, Error> {
        let (_turn, mut tx) = self.write().await?;
        let renewed: Option<bool> = sqlx::query_scalar(RENEW_LEASE)
            .bind(lease.until())
            .bind(id)
            .bind(&lease.holder)
            .bind(Status::Queued.as_str())
            .bind(Status::Working.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(renewal(renewed))
    }

    async fn request_cancel(&self, id: &str) -> Result<bool, Error> {
        let (_turn, mut tx) = self.write().await?;
        let updated = sqlx::query(REQUEST_CANCEL)
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
        let updated = sqlx::query(TAKE_OVER)
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
        let rows = sqlx::query(UNFINISHED)
            .bind(millis(SystemTime::now()))
            .bind(Status::Working.as_str())
            .bind(Status::Queued.as_str())
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(unfinished).collect())
    }

    async fn claim_queued(
        &self,
        lease: &Lease,
        pool: Option<&str>,
    ) -> Result<Option<Claimed>, Error> {
        let (_turn, mut tx) = self.write().await?;
        let row = claim_queued::<Sqlite>(
            format!("{CLAIM_QUEUED}) RETURNING id, request"),
            lease,
            pool,
        )
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(row.as_ref().map(claimed))
    }

    async fn requeue(
        &self,
        id: &str,
        lease: &Lease,
        pool: Option<&str>,
        queue_ttl: Option<Duration>,
    ) -> Result<bool, Error> {
        let (_turn, mut tx) = self.write().await?;
        let updated = sqlx::query(REQUEUE)
            .bind(Status::Queued.as_str())
            .bind(pool.unwrap_or_default())
            .bind(id)
            .bind(&lease.holder)
            .bind(Status::Working.as_str())
            .bind(queue_ttl.map(ttl_millis))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(updated.rows_affected() == 1)
    }

    async fn expire_queued(&self, now: SystemTime, failure: &str) -> Result<Vec<String>, Error> {
        let (_turn, mut tx) = self.write().await?;
        let expired = sqlx::query_scalar(EXPIRE_QUEUED)
            .bind(Status::Expired.as_str())
            .bind(millis(now))
            .bind(failure)
            .bind(Status::Queued.as_str())
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(expired)
    }

    async fn queue_builds(&self, builds: &[QueuedBuild]) -> Result<Vec<GroupFull>, Error> {
        let (_turn, mut tx) = self.write().await?;
        let skipped = queue(&mut tx, builds).await?;
        tx.commit().await?;
        Ok(skipped)
    }

    async fn queued_request(&self, id: &str) -> Result<Option<QueuedBuild>, Error> {
        let row = sqlx::query(QUEUED_REQUEST)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(queued_build).transpose()
    }

    async fn group_builds(&self, group: &str, statuses: [Status; 2]) -> Result<Vec<String>, Error> {
        Ok(sqlx::query_scalar(GROUP_BUILDS)
            .bind(group)
            .bind(statuses[0].as_str())
            .bind(statuses[1].as_str())
            .fetch_all(&self.pool)
            .await?)
    }

    async fn cancel_queued(&self, id: &str) -> Result<bool, Error> {
        let (_turn, mut tx) = self.write().await?;
        let updated = cancel_queued(id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(updated.rows_affected() == 1)
    }

    async fn decide_approval(&self, id: &str, result: &ApprovalResult) -> Result<bool, Error> {
        let (_turn, mut tx) = self.write().await?;
        let updated = decide_approval(id, result).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(updated.rows_affected() == 1)
    }
}

/// `claim`, [`CLAIM_QUEUED`] ended in its dialect, for `lease`'s holder from `pool`.
pub(super) fn claim_queued<'q, DB>(
    claim: String,
    lease: &'q Lease,
    pool: Option<&'q str>,
) -> sqlx::query::Query<'q, DB, DB::Arguments>
where
    DB: Database,
    for<'t> &'t str: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
{
    sqlx::query(AssertSqlSafe(claim))
        .bind(Status::Working.as_str())
        .bind(millis(SystemTime::now()))
        .bind(lease.holder.as_str())
        .bind(lease.until())
        .bind(Status::Queued.as_str())
        .bind(pool.unwrap_or_default())
}

/// [`CANCEL_QUEUED`] of build `id`, in either dialect.
pub(super) fn cancel_queued<DB>(id: &str) -> sqlx::query::Query<'_, DB, DB::Arguments>
where
    DB: Database,
    for<'t> &'t str: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
{
    sqlx::query(CANCEL_QUEUED)
        .bind(Status::Cancelled.as_str())
        .bind(millis(SystemTime::now()))
        .bind(id)
        .bind(Status::Queued.as_str())
        .bind(Status::Pending.as_str())
        .bind(ApprovalState::Cancelled.as_str())
}

/// [`DECIDE_APPROVAL`] of build `id` with `result`, in either dialect.
pub(super) fn decide_approval<'q, DB>(
    id: &'q str,
    result: &'q ApprovalResult,
) -> sqlx::query::Query<'q, DB, DB::Arguments>
where
    DB: Database,
    for<'t> &'t str: Encode<'t, DB> + Type<DB>,
    for<'t> Option<&'t str>: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
    for<'t> Option<i64>: Encode<'t, DB> + Type<DB>,
{
    let time = millis(result.approval_time);
    let status = result.decision.status();
    sqlx::query(DECIDE_APPROVAL)
        .bind(status.as_str())
        .bind(result.decision.state().as_str())
        .bind(result.approver_account.as_str())
        .bind(time)
        .bind(result.comment.as_deref())
        .bind(status.is_final().then_some(time))
        .bind(id)
        .bind(Status::Pending.as_str())
}

/// What a renewal's statement returned: whether a cancel was asked for, if it renewed.
pub(super) fn renewal(renewed: Option<bool>) -> Renewal {
    match renewed {
        Some(cancel_requested) => Renewal::Held { cancel_requested },
        None => Renewal::Lost,
    }
}

pub(super) fn unfinished(row: &impl Columns) -> Unfinished {
    Unfinished {
        id: row.column("id"),
        holder: row.column("holder"),
        expired: row.column("expired"),
    }
}

pub(super) fn claimed(row: &impl Columns) -> Claimed {
    Claimed {
        id: row.column("id"),
        request: serde_json::from_str(&row.column::<String>("request")),
    }
}

pub(super) fn queued_build(row: &impl Columns) -> Result<QueuedBuild, Error> {
    let unreadable = |what| move |error| Error::Unreadable { what, error };
    Ok(QueuedBuild {
        id: row.column("id"),
        trigger: row.column("trigger_name"),
        schedule: row.column("schedule_name"),
        delivery: row.column("delivery_id"),
        source: parse_json(row.column("source")),
        substitutions: serde_json::from_str(&row.column::<String>("substitutions"))
            .map_err(unreadable("build's substitutions"))?,
        request: serde_json::from_str(&row.column::<String>("request"))
            .map_err(unreadable("queued build's request"))?,
        pool: Some(row.column::<String>("pool")).filter(|pool| !pool.is_empty()),
        queue_ttl: row
            .column::<Option<i64>>("queue_ttl")
            .map(|ttl| Duration::from_millis(ttl.max(0).unsigned_abs())),
        // Whoever queues it again decides.
        report: false,
        approval_required: row.column("approval_required"),
        concurrency: concurrency_group(row),
        // Whoever queues it again decides.
        skips_full_group: false,
    })
}

/// The concurrency group a row records, from its `concurrency_group` and `concurrency_limit`.
pub(super) fn concurrency_group(row: &impl Columns) -> Option<ConcurrencyGroup> {
    let name = row.column::<Option<String>>("concurrency_group")?;
    let limit = row.column::<Option<i64>>("concurrency_limit").unwrap_or(1);
    Some(ConcurrencyGroup {
        name,
        limit: u32::try_from(limit.max(1)).unwrap_or(u32::MAX),
    })
}

/// A queue TTL as the store keeps it, in milliseconds (saturated: a TTL past `i64::MAX` ms is
/// forever for all purposes).
pub(super) fn ttl_millis(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

/// Builds one INSERT queues at most: SQLite takes at most 32,766 values in one (PostgreSQL
/// 65,535).
pub(super) const BUILDS_PER_INSERT: usize = 1000;

/// Queues `builds` in SQLite transaction `tx`, but for those that skip a full group, which it
/// returns: the one writer counts the groups and inserts before any other write.
pub(super) async fn queue(
    tx: &mut Transaction<'_>,
    builds: &[QueuedBuild],
) -> Result<Vec<GroupFull>, Error> {
    queue_in(tx, builds, None).await
}

/// Queues `builds` in `tx`, in either dialect, but for those that skip a full group, which it
/// returns. Each group they skip is counted before any build is inserted, once `lock` (a
/// statement of the group's name, `$1`), if the dialect needs one, has taken the group for the
/// transaction; groups are taken in the order of their names, so that two transactions that
/// take the same ones wait for each other rather than deadlock.
pub(super) async fn queue_in<DB>(
    tx: &mut sqlx::Transaction<'_, DB>,
    builds: &[QueuedBuild],
    lock: Option<&'static str>,
) -> Result<Vec<GroupFull>, Error>
where
    DB: Database<Arguments: Default + IntoArguments<DB>>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'r> (String,): FromRow<'r, DB::Row>,
    for<'t> &'t str: Encode<'t, DB> + Type<DB>,
    for<'t> String: Encode<'t, DB> + Type<DB>,
    for<'t> Option<String>: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
    for<'t> Option<i64>: Encode<'t, DB> + Type<DB>,
    for<'t> Option<&'t str>: Encode<'t, DB> + Type<DB>,
{
    let mut unfinished = HashMap::new();
    for group in skipping_groups(builds) {
        if let Some(lock) = lock {
            sqlx::query(lock).bind(group).execute(&mut **tx).await?;
        }
        let [first, second] = UNFINISHED_IN_GROUP;
        let ids = sqlx::query_scalar(GROUP_BUILDS)
            .bind(group)
            .bind(first.as_str())
            .bind(second.as_str())
            .fetch_all(&mut **tx)
            .await?;
        unfinished.insert(group.to_string(), ids);
    }
    let (admitted, skipped) = admit(builds, unfinished);
    let now = millis(SystemTime::now());
    for builds in admitted.chunks(BUILDS_PER_INSERT) {
        let mut insert = QueryBuilder::<DB>::new(
            "INSERT INTO builds (id, status, create_time, source, substitutions, plan, trigger_name, \
             delivery_id, request, schedule_name, pool, queue_deadline, approval_state, \
             concurrency_group, concurrency_limit) ",
        );
        insert.push_values(builds, |mut row, build| {
            let (status, approval) = if build.approval_required {
                (Status::Pending, Some(ApprovalState::Pending.as_str()))
            } else {
                (Status::Queued, None)
            };
            row.push_bind(build.id.as_str())
                .push_bind(status.as_str())
                .push_bind(now)
                .push_bind(build.source.to_string())
                .push_bind(json(&build.substitutions))
                .push_bind("null")
                .push_bind(build.trigger.clone())
                .push_bind(build.delivery.clone())
                .push_bind(json(&build.request))
                .push_bind(build.schedule.clone())
                .push_bind(build.pool.clone().unwrap_or_default())
                .push_bind(
                    build
                        .queue_ttl
                        .map(|ttl| now.saturating_add(ttl_millis(ttl))),
                )
                .push_bind(approval)
                .push_bind(build.concurrency.as_ref().map(|group| group.name.clone()))
                .push_bind(
                    build
                        .concurrency
                        .as_ref()
                        .map(|group| i64::from(group.limit)),
                );
        });
        insert.build().execute(&mut **tx).await?;
    }
    for build in admitted.iter().filter(|build| build.report) {
        sqlx::query(super::reports::INSERT_REPORT)
            .bind(build.id.as_str())
            .execute(&mut **tx)
            .await?;
    }
    Ok(skipped)
}

/// The groups of `builds` that some of them skip when full, by name: the groups whose builds
/// queued or running [`admit`] is to be given (PostgreSQL locks them in this order).
pub(super) fn skipping_groups(builds: &[QueuedBuild]) -> BTreeSet<&str> {
    builds
        .iter()
        .filter(|build| build.skips_full_group)
        .filter_map(|build| build.concurrency.as_ref())
        .map(|group| group.name.as_str())
        .collect()
}

/// Which of `builds` go into the queue, in order, given the builds queued or running of each
/// of [`skipping_groups`] (`unfinished`): one that skips a full group does not, and says why;
/// each one admitted fills its group for those after it (unless it waits PENDING for approval).
pub(super) fn admit(
    builds: &[QueuedBuild],
    mut unfinished: HashMap<String, Vec<String>>,
) -> (Vec<&QueuedBuild>, Vec<GroupFull>) {
    let (mut admitted, mut skipped) = (Vec::new(), Vec::new());
    for build in builds {
        let counted = build
            .concurrency
            .as_ref()
            .and_then(|group| Some((group, unfinished.get_mut(&group.name)?)));
        if let Some((group, filled)) = counted {
            if build.skips_full_group
                && let Some(reason) = group.full(filled)
            {
                let build = build.id.clone();
                skipped.push(GroupFull { build, reason });
                continue;
            }
            if !build.approval_required {
                filled.push(build.id.clone());
            }
        }
        admitted.push(build);
    }
    (admitted, skipped)
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
        let claimed = store.claim_queued(&a, None).await.unwrap().expect("queued");
        assert_eq!(claimed.id, build.id);
        assert!(store.claim_queued(&b, None).await.unwrap().is_none());
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
        store.finish_build(&build.id, &outcome, &b).await.unwrap();
        assert_eq!(
            store.renew_lease(&build.id, &b).await.unwrap(),
            Renewal::Lost
        );
        assert!(!store.request_cancel(&build.id).await.unwrap());
        assert_eq!(store.unfinished_builds().await.unwrap(), []);
    }
}
