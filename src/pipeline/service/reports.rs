//! The reporter: tells GitHub where triggered builds are (issue 19), from a task of its own that
//! never holds a build up. Its work list is the store's (`store::Reports`): a report row per
//! build queued while reporting is on, written with the build, and the build's status in its
//! record. The reporter wakes when this process queues, starts or ends a build, and on a tick
//! for what other processes did; it sends each build's current status when it differs from the
//! one GitHub last accepted, so a build that moved on meanwhile is reported once, as it is now.
//! It claims the reports it sends ([`CLAIM`]), so that replicas never send one twice at once.
//! A failed report is tried again with a doubling delay ([`retry_at`]); after its last attempt, or at once when
//! GitHub refuses it (a bad token, a repository the App cannot reach), that status's report is
//! given up and the failure stays on the build's record. The build's own outcome never depends
//! on it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, error, info_span, warn};

use super::*;
use crate::adapters::github::{Forge, ReportError};
use crate::adapters::store::{BuildRecord, OpenReport, ReportFailure};
use crate::core::github::{self, FAILED_STEP_LINES, FailedStep, Repo, Report};

/// How often the reporter looks at the store without being woken.
const TICK: Duration = Duration::from_secs(1);
/// How many reports one look takes at most.
const BATCH: u32 = 100;
/// How long the reports one look takes are this process's alone (replicas share the store): a
/// process that dies with reports claimed delays them by this much.
const CLAIM: Duration = Duration::from_secs(60);

/// How builds are reported to GitHub.
pub struct Reporting {
    pub forge: Arc<dyn Forge>,
    /// The console's address as GitHub's users reach it (`https://ci.example.com`): a build's
    /// page is `{public_url}/builds/{id}`.
    pub public_url: String,
}

impl Service {
    /// Wakes the worker, the reporter and the notifier: a build was queued or ended.
    pub(super) fn wake(&self) {
        self.queued.notify_one();
        self.moved();
    }

    /// Wakes the reporter and the notifier: a build was queued, started or ended.
    pub(super) fn moved(&self) {
        self.report_due.notify_one();
        self.events_due.notify_one();
    }

    /// Runs until `shutdown`, reporting builds as they move (see the module doc); returns at once
    /// if reporting is off.
    pub async fn run_reports(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(reporting) = &self.settings.reporting else {
            return;
        };
        loop {
            let now = SystemTime::now();
            let claimed_until = now + CLAIM;
            match self.store.claim_reports(now, claimed_until, BATCH).await {
                Ok(claimed) => {
                    for report in claimed {
                        if shutdown.is_cancelled() {
                            return;
                        }
                        // The rest may be another replica's by now: claimed again later.
                        if SystemTime::now() >= claimed_until {
                            break;
                        }
                        let span = info_span!("report", build_id = %report.build_id);
                        self.send(reporting, report).instrument(span).await;
                    }
                }
                Err(e) => warn!(error = %e, "reading the reports due failed"),
            }
            tokio::select! {
                () = self.report_due.notified() => {}
                () = tokio::time::sleep(TICK) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Sends one build's status, and records how that went.
    async fn send(&self, reporting: &Reporting, open: OpenReport) {
        let build = match self.store.get_build(&open.build_id).await {
            Ok(Some(build)) => build,
            Ok(None) => return,
            Err(e) => return warn!(error = %e, "reading the build to report failed"),
        };
        let status = build.status;
        let sent = match self.report(reporting, &build).await {
            Ok(report) => reporting.forge.report(&report, open.check_run).await,
            Err(e) => Err(e),
        };
        let recorded = match sent {
            Ok(check_run) => {
                debug!(%status, "reported to GitHub");
                self.store.report_sent(&build.id, status, check_run).await
            }
            Err(e) => {
                let failure = failure(&open, status, e, SystemTime::now());
                match failure.retry_at {
                    Some(_) => warn!(error = %failure.error, attempts = failure.attempts,
                        "reporting to GitHub failed; trying again"),
                    None => error!(error = %failure.error, attempts = failure.attempts,
                        "reporting to GitHub failed; given up"),
                }
                self.store.report_failed(&build.id, &failure).await
            }
        };
        if let Err(e) = recorded {
            warn!(error = %e, "recording the report failed");
        }
    }

    /// What GitHub is to be told of `build`; an error if its record cannot be reported (it
    /// names no GitHub repository and commit, or no trigger).
    async fn report(
        &self,
        reporting: &Reporting,
        build: &BuildRecord,
    ) -> Result<Report, ReportError> {
        let unreportable = |what: &str| ReportError {
            retry: false,
            message: format!("the build cannot be reported: {what}"),
        };
        let repository = build.source["repository"].as_str().unwrap_or_default();
        let repo = Repo::parse(repository)
            .ok_or_else(|| unreportable("its repository is not OWNER/NAME"))?;
        let sha = build.source["commit"].as_str().unwrap_or_default();
        // The commit goes into a URL's path: a name GitHub would read as another path is refused.
        if sha.is_empty() || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(unreportable("its commit is not a SHA"));
        }
        let trigger = build
            .trigger
            .as_deref()
            .ok_or_else(|| unreportable("it has no trigger"))?;
        let failed_step = match build.status {
            Status::Failure | Status::Timeout => self.failed_step(build).await,
            _ => None,
        };
        Ok(Report {
            repo,
            sha: sha.to_string(),
            build_id: build.id.clone(),
            status: build.status,
            context: github::context(trigger, &self.settings.machine.project),
            target_url: format!(
                "{}/builds/{}",
                reporting.public_url.trim_end_matches('/'),
                build.id
            ),
            failure: build.failure.clone(),
            start_time: build.start_time,
            finish_time: build.finish_time,
            failed_step,
        })
    }

    /// The build's first failed step and its last lines; `None` if no step failed or the log
    /// cannot be read (the report goes without it).
    async fn failed_step(&self, build: &BuildRecord) -> Option<FailedStep> {
        let step = build
            .steps
            .iter()
            .find(|step| matches!(step.result.status, Status::Failure | Status::Timeout))?;
        let lines = match self.store.logs(&build.id, 0, None).await {
            Ok(lines) => lines,
            Err(e) => {
                warn!(error = %e, "reading the failed step's log failed");
                return None;
            }
        };
        let mut last: std::collections::VecDeque<String> = Default::default();
        for line in lines.into_iter().filter(|line| line.step == step.index) {
            if last.len() == FAILED_STEP_LINES {
                last.pop_front();
            }
            last.push_back(line.text);
        }
        Some(FailedStep {
            label: match &step.id {
                Some(id) => format!("step {} ({id})", step.index),
                None => format!("step {}", step.index),
            },
            lines: last.into(),
        })
    }
}

/// The record of a failed report of `status`: its attempts counted since that status's first
/// failure, and a retry after a doubling delay unless GitHub refused it or the attempts ran out.
fn failure(
    open: &OpenReport,
    status: Status,
    error: ReportError,
    now: SystemTime,
) -> ReportFailure {
    let attempts = match open.failing {
        Some(failing) if failing == status => open.attempts + 1,
        _ => 1,
    };
    ReportFailure {
        status,
        attempts,
        retry_at: retry_at(attempts, error.retry, now),
        error: error.message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(failing: Option<Status>, attempts: u32) -> OpenReport {
        OpenReport {
            build_id: "b".into(),
            status: Status::Working,
            reported: Some(Status::Queued),
            check_run: None,
            failing,
            attempts,
        }
    }

    fn error(retry: bool) -> ReportError {
        ReportError {
            retry,
            message: "GitHub answered 500".into(),
        }
    }

    #[test]
    fn retries_wait_twice_as_long_each_time_then_give_up() {
        let now = SystemTime::UNIX_EPOCH;
        let mut last = open(None, 0);
        let mut delays = Vec::new();
        loop {
            let failure = failure(&last, Status::Working, error(true), now);
            let Some(at) = failure.retry_at else {
                assert_eq!(failure.attempts, ATTEMPTS);
                break;
            };
            delays.push(at.duration_since(now).unwrap().as_secs());
            last = open(Some(Status::Working), failure.attempts);
        }
        assert_eq!(delays, [1, 2, 4, 8]);
    }

    #[test]
    fn a_refusal_is_given_up_at_once_and_a_new_status_starts_counting_again() {
        let now = SystemTime::UNIX_EPOCH;
        let refused = failure(&open(None, 0), Status::Working, error(false), now);
        assert_eq!((refused.attempts, refused.retry_at), (1, None));
        let moved_on = failure(
            &open(Some(Status::Working), 3),
            Status::Success,
            error(true),
            now,
        );
        assert_eq!(moved_on.attempts, 1);
        assert!(moved_on.retry_at.is_some());
    }
}
