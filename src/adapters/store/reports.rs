//! The reports aggregate: what GitHub was told of each triggered build (issue 19). A build
//! queued with [`QueuedBuild::report`](super::QueuedBuild) gets a row in the transaction that
//! queues it; the reporter reads the rows whose build's status differs from the one GitHub last
//! accepted, and records each attempt's result.

use std::time::SystemTime;

use super::{Columns, Error, SqliteStore, millis, status};
use crate::core::build::Status;

/// A build whose status GitHub has not been told yet, and is due to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenReport {
    pub build_id: String,
    /// The build's status now.
    pub status: Status,
    /// The status GitHub last accepted.
    pub reported: Option<Status>,
    /// The check run that reports the build, once created.
    pub check_run: Option<u64>,
    /// The status whose report failed last, and how many times.
    pub failing: Option<Status>,
    pub attempts: u32,
}

/// A report that did not reach GitHub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportFailure {
    /// The status it was to report.
    pub status: Status,
    /// How many times reporting that status has failed, this one included.
    pub attempts: u32,
    pub error: String,
    /// When to try again; `None` gives that status's report up (a lasting failure).
    pub retry_at: Option<SystemTime>,
}

/// What GitHub was told of a build, for its page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRecord {
    pub reported: Option<Status>,
    /// The last failure, if the last attempt failed: the status it was to report, how many
    /// times it failed, the error, and whether builder gave it up.
    pub failure: Option<(Status, u32, String, bool)>,
}

/// What GitHub was told of triggered builds. A caller may rely on:
///
/// - a build queued with `report` has a report from the transaction that queued it;
/// - [`Reports::claim_reports`] returns a build while its status is not the one last reported,
///   not given up, and its retry time has come; never once its final status is reported or
///   given up;
/// - a report claimed is not returned again, to any caller, before the claim's end, unless its
///   [`report_sent`](Reports::report_sent) or [`report_failed`](Reports::report_failed) came
///   first: replicas sharing the store never send one report twice at once, and a report whose
///   claimer died is sent by another after the claim's end;
/// - [`Reports::report_sent`] clears the last failure, and keeps the check run when it is told
///   none.
#[async_trait::async_trait]
pub trait Reports: Send + Sync {
    /// At most `limit` reports due at `now`, oldest build first, each claimed until `until`.
    async fn claim_reports(
        &self,
        now: SystemTime,
        until: SystemTime,
        limit: u32,
    ) -> Result<Vec<OpenReport>, Error>;

    /// GitHub accepted `status` for the build (and `check_run` reports it, if any).
    async fn report_sent(
        &self,
        id: &str,
        status: Status,
        check_run: Option<u64>,
    ) -> Result<(), Error>;

    /// Reporting the build failed.
    async fn report_failed(&self, id: &str, failure: &ReportFailure) -> Result<(), Error>;

    /// What GitHub was told of the build; `None` if it is not reported.
    async fn report_of(&self, id: &str) -> Result<Option<ReportRecord>, Error>;
}

/// Statements both dialects share.
pub(super) const OPEN_REPORTS: &str = "SELECT r.build_id, b.status, r.reported, r.check_run_id, \
     r.failing, r.attempts FROM github_reports r JOIN builds b ON b.id = r.build_id \
     WHERE r.done = $1 AND r.next_attempt <= $2 AND r.reported IS DISTINCT FROM b.status \
     AND NOT (r.lasting AND r.failing = b.status) \
     ORDER BY b.create_time, b.id LIMIT $3";
/// A claim, if the report is still due at `$3` (compare and set: of claimers reading it at once,
/// one changes the row): it is not due before the claim's end `$1`.
pub(super) const CLAIM_REPORT: &str = "UPDATE github_reports SET next_attempt = $1 \
     WHERE build_id = $2 AND next_attempt <= $3";
pub(super) const REPORT_SENT: &str = "UPDATE github_reports SET reported = $1, \
     check_run_id = COALESCE($2, check_run_id), failing = NULL, attempts = 0, error = NULL, \
     lasting = $3, next_attempt = 0, done = $4 WHERE build_id = $5";
pub(super) const REPORT_FAILED: &str = "UPDATE github_reports SET failing = $1, attempts = $2, \
     error = $3, lasting = $4, next_attempt = $5, done = $6 WHERE build_id = $7";
pub(super) const REPORT_OF: &str = "SELECT reported, failing, attempts, error, lasting \
     FROM github_reports WHERE build_id = $1";
/// The report rows of queued builds, in the queueing transaction.
pub(super) const INSERT_REPORT: &str = "INSERT INTO github_reports (build_id) VALUES ($1)";

pub(super) fn open_report(row: &impl Columns) -> OpenReport {
    OpenReport {
        build_id: row.column("build_id"),
        status: status(row.column("status")),
        reported: row.column::<Option<String>>("reported").map(status),
        check_run: row
            .column::<Option<i64>>("check_run_id")
            .map(|id| id as u64),
        failing: row.column::<Option<String>>("failing").map(status),
        attempts: row.column::<i64>("attempts") as u32,
    }
}

pub(super) fn report_record(row: &impl Columns) -> ReportRecord {
    let failure = row.column::<Option<String>>("failing").map(|failing| {
        (
            status(failing),
            row.column::<i64>("attempts") as u32,
            row.column::<Option<String>>("error").unwrap_or_default(),
            row.column::<bool>("lasting"),
        )
    });
    ReportRecord {
        reported: row.column::<Option<String>>("reported").map(status),
        failure,
    }
}

/// `report_failed`'s values: whether it is lasting, its retry time, whether the row is done.
pub(super) fn failed_values(failure: &ReportFailure) -> (bool, i64, bool) {
    let lasting = failure.retry_at.is_none();
    (
        lasting,
        failure.retry_at.map_or(0, millis),
        lasting && failure.status.is_final(),
    )
}

#[async_trait::async_trait]
impl Reports for SqliteStore {
    async fn claim_reports(
        &self,
        now: SystemTime,
        until: SystemTime,
        limit: u32,
    ) -> Result<Vec<OpenReport>, Error> {
        let (_turn, mut tx) = self.write().await?;
        let rows = sqlx::query(OPEN_REPORTS)
            .bind(false)
            .bind(millis(now))
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await?;
        let mut claimed = Vec::new();
        for report in rows.iter().map(open_report) {
            let claim = sqlx::query(CLAIM_REPORT)
                .bind(millis(until))
                .bind(&report.build_id)
                .bind(millis(now))
                .execute(&mut *tx)
                .await?;
            if claim.rows_affected() == 1 {
                claimed.push(report);
            }
        }
        tx.commit().await?;
        Ok(claimed)
    }

    async fn report_sent(
        &self,
        id: &str,
        status: Status,
        check_run: Option<u64>,
    ) -> Result<(), Error> {
        let (_turn, mut tx) = self.write().await?;
        sqlx::query(REPORT_SENT)
            .bind(status.as_str())
            .bind(check_run.map(|id| id as i64))
            .bind(false)
            .bind(status.is_final())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        Ok(tx.commit().await?)
    }

    async fn report_failed(&self, id: &str, failure: &ReportFailure) -> Result<(), Error> {
        let (lasting, next_attempt, done) = failed_values(failure);
        let (_turn, mut tx) = self.write().await?;
        sqlx::query(REPORT_FAILED)
            .bind(failure.status.as_str())
            .bind(i64::from(failure.attempts))
            .bind(&failure.error)
            .bind(lasting)
            .bind(next_attempt)
            .bind(done)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        Ok(tx.commit().await?)
    }

    async fn report_of(&self, id: &str) -> Result<Option<ReportRecord>, Error> {
        let row = sqlx::query(REPORT_OF)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(report_record))
    }
}
