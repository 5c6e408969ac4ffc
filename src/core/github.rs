//! What builder tells GitHub about a triggered build: a commit status and a check run in the
//! shapes of GitHub's REST API (`POST /repos/{owner}/{repo}/statuses/{sha}`, `POST`/`PATCH
//! /repos/{owner}/{repo}/check-runs`), made from a build's status, its trigger and its failed
//! step. Values only: sending them is `adapters::github`'s, when and how often `service`'s.

use std::time::SystemTime;

use serde::Serialize;

use crate::core::build::Status;

/// GitHub's limit on a commit status's description.
const DESCRIPTION_LIMIT: usize = 140;
/// GitHub's limit on a check run's summary and text.
const OUTPUT_LIMIT: usize = 65_535;
/// How many of the failed step's last lines a check run shows.
pub const FAILED_STEP_LINES: usize = 20;

/// A repository on GitHub, as its API's paths name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repo {
    pub owner: String,
    pub name: String,
}

impl Repo {
    /// `owner/name`, a push payload's `repository.full_name`; `None` for anything else.
    pub fn parse(full_name: &str) -> Option<Repo> {
        let (owner, name) = full_name.split_once('/')?;
        let valid = |part: &str| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        (valid(owner) && valid(name) && name != "." && name != "..").then(|| Repo {
            owner: owner.to_string(),
            name: name.to_string(),
        })
    }
}

impl std::fmt::Display for Repo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.owner, self.name)
    }
}

/// A commit status's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Success,
    Failure,
    Error,
}

/// A check run's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Queued,
    InProgress,
    Completed,
}

/// A completed check run's conclusion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Conclusion {
    Success,
    Failure,
    Cancelled,
    TimedOut,
}

/// The commit status of a build in `status`: GitHub has four states, so a build that did not
/// run to its verdict (an internal error, a cancel, an expiry) is an `error`, as Cloud Build
/// reports it; a timeout is a failure of the build, and so is a rejected approval (the change
/// was refused, and a branch protection must not take it for a passing build).
pub fn state(status: Status) -> State {
    match status {
        Status::Pending | Status::Queued | Status::Working => State::Pending,
        Status::Success => State::Success,
        Status::Failure | Status::Timeout | Status::Rejected => State::Failure,
        Status::InternalError | Status::Cancelled | Status::Expired => State::Error,
    }
}

/// The check run of a build in `status`: its status, and its conclusion once completed. A
/// build waiting for approval is queued; a rejected one never ran, as a cancelled one.
pub fn check(status: Status) -> (CheckStatus, Option<Conclusion>) {
    let conclusion = match status {
        Status::Pending | Status::Queued => return (CheckStatus::Queued, None),
        Status::Working => return (CheckStatus::InProgress, None),
        Status::Success => Conclusion::Success,
        Status::Failure | Status::InternalError => Conclusion::Failure,
        Status::Timeout => Conclusion::TimedOut,
        Status::Cancelled | Status::Expired | Status::Rejected => Conclusion::Cancelled,
    };
    (CheckStatus::Completed, Some(conclusion))
}

/// A status's and a check run's name: Cloud Build's `<trigger name> (<project>)`.
pub fn context(trigger: &str, project: &str) -> String {
    format!("{trigger} ({project})")
}

/// What a build is, in the words GitHub shows beside the commit.
fn headline(status: Status) -> &'static str {
    match status {
        Status::Pending => "Waiting for approval",
        Status::Queued => "Queued",
        Status::Working => "Running",
        Status::Success => "Build successful",
        Status::Failure => "Build failed",
        Status::InternalError => "Build could not run",
        Status::Timeout => "Build timed out",
        Status::Cancelled => "Build cancelled",
        Status::Expired => "Build expired in the queue",
        Status::Rejected => "Build rejected",
    }
}

/// `text` cut to at most `limit` characters, with `…` where it was cut.
fn cut(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(limit - 1).collect();
    cut.push('…');
    cut
}

/// A build as GitHub is told of it.
#[derive(Debug, Clone)]
pub struct Report {
    pub repo: Repo,
    /// The commit built.
    pub sha: String,
    pub build_id: String,
    pub status: Status,
    /// [`context`]'s name.
    pub context: String,
    /// The console's page of the build.
    pub target_url: String,
    /// Why the build failed, in a sentence, as its record has it.
    pub failure: Option<String>,
    pub start_time: Option<SystemTime>,
    pub finish_time: Option<SystemTime>,
    /// The step that failed, if one did: its label and its last lines.
    pub failed_step: Option<FailedStep>,
}

/// A failed step, for a check run's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedStep {
    /// Its id, or `step N`.
    pub label: String,
    /// Its last [`FAILED_STEP_LINES`] lines.
    pub lines: Vec<String>,
}

/// The body of `POST /repos/{owner}/{repo}/statuses/{sha}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommitStatus {
    pub state: State,
    pub target_url: String,
    pub description: String,
    pub context: String,
}

/// The body of `POST /repos/{owner}/{repo}/check-runs` (with `name` and `head_sha`) and of its
/// `PATCH` (without them: a check run's commit does not change).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckRun {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_sha: Option<String>,
    pub details_url: String,
    pub external_id: String,
    pub status: CheckStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conclusion: Option<Conclusion>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    pub output: CheckOutput,
}

/// A check run's `output`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckOutput {
    pub title: String,
    pub summary: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// GitHub's `YYYY-MM-DDTHH:MM:SSZ`.
fn timestamp(time: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(time)
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

impl Report {
    pub fn commit_status(&self) -> CommitStatus {
        let description = match (&self.failure, self.status.is_final()) {
            (Some(failure), true) => format!("{}: {failure}", headline(self.status)),
            _ => headline(self.status).to_string(),
        };
        CommitStatus {
            state: state(self.status),
            target_url: self.target_url.clone(),
            description: cut(&description, DESCRIPTION_LIMIT),
            context: self.context.clone(),
        }
    }

    /// The check run, to create it (`create`) or to update the one created before.
    pub fn check_run(&self, create: bool) -> CheckRun {
        let (status, conclusion) = check(self.status);
        let mut summary = format!(
            "{} ([build {}]({}))",
            headline(self.status),
            self.build_id,
            self.target_url
        );
        if let Some(failure) = &self.failure {
            summary.push_str("\n\n");
            summary.push_str(failure);
        }
        let text = self.failed_step.as_ref().map(|step| {
            // An indented code block: no line of the log can end it, as one could end a fence.
            let head = cut(
                &format!("The last lines of {}:\n\n", step.label),
                OUTPUT_LIMIT / 2,
            );
            let lines: Vec<String> = step
                .lines
                .iter()
                .map(|line| format!("    {line}"))
                .collect();
            let lines = lines.join("\n");
            // The end of the log is what explains a failure: a cut keeps it.
            let room = OUTPUT_LIMIT - head.chars().count();
            let skip = lines.chars().count().saturating_sub(room);
            format!("{head}{}", lines.chars().skip(skip).collect::<String>())
        });
        CheckRun {
            name: create.then(|| self.context.clone()),
            head_sha: create.then(|| self.sha.clone()),
            details_url: self.target_url.clone(),
            external_id: self.build_id.clone(),
            status,
            started_at: self.start_time.map(timestamp),
            conclusion,
            completed_at: conclusion.and(self.finish_time.map(timestamp)),
            output: CheckOutput {
                title: headline(self.status).to_string(),
                summary: cut(&summary, OUTPUT_LIMIT),
                text,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn report(status: Status) -> Report {
        Report {
            repo: Repo::parse("acme/app").unwrap(),
            sha: "a".repeat(40),
            build_id: "b-1".into(),
            status,
            context: context("main", "local"),
            target_url: "https://ci.example.com/builds/b-1".into(),
            failure: None,
            start_time: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            finish_time: None,
            failed_step: None,
        }
    }

    #[test]
    fn repositories_are_owner_and_name() {
        assert_eq!(
            Repo::parse("acme/my-app.rs"),
            Some(Repo {
                owner: "acme".into(),
                name: "my-app.rs".into()
            })
        );
        for bad in [
            "acme",
            "acme/",
            "/app",
            "acme/app/x",
            "acme/..",
            "ac me/app",
            "a/b?c",
        ] {
            assert_eq!(Repo::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn every_status_has_a_state_and_a_check_run() {
        let states: Vec<_> = Status::ALL.into_iter().map(state).collect();
        use State::*;
        assert_eq!(
            states,
            [
                Pending, Pending, Pending, Success, Failure, Error, Failure, Error, Error, Failure
            ]
        );
        assert_eq!(check(Status::Pending), (CheckStatus::Queued, None));
        assert_eq!(
            check(Status::Rejected),
            (CheckStatus::Completed, Some(Conclusion::Cancelled))
        );
        assert_eq!(check(Status::Queued), (CheckStatus::Queued, None));
        assert_eq!(check(Status::Working), (CheckStatus::InProgress, None));
        assert_eq!(
            check(Status::Timeout),
            (CheckStatus::Completed, Some(Conclusion::TimedOut))
        );
    }

    #[test]
    fn a_commit_status_names_the_trigger_and_links_the_build() {
        let status = report(Status::Working).commit_status();
        assert_eq!(
            serde_json::to_value(&status).unwrap(),
            serde_json::json!({
                "state": "pending",
                "target_url": "https://ci.example.com/builds/b-1",
                "description": "Running",
                "context": "main (local)",
            })
        );
        let mut failed = report(Status::Failure);
        failed.failure = Some("x".repeat(300));
        let description = failed.commit_status().description;
        assert_eq!(description.chars().count(), DESCRIPTION_LIMIT);
        assert!(description.starts_with("Build failed: xxx") && description.ends_with('…'));
    }

    #[test]
    fn a_check_run_is_created_with_its_commit_and_updated_without() {
        let created = serde_json::to_value(report(Status::Queued).check_run(true)).unwrap();
        assert_eq!(created["name"], "main (local)");
        assert_eq!(created["head_sha"], "a".repeat(40));
        assert_eq!(created["status"], "queued");
        assert_eq!(created["started_at"], "2023-11-14T22:13:20Z");
        assert!(created.get("conclusion").is_none());
        let mut failed = report(Status::Failure);
        failed.finish_time = failed.start_time;
        failed.failure = Some("step 0 exited with 3".into());
        failed.failed_step = Some(FailedStep {
            label: "step 0".into(),
            lines: vec!["compiling".into(), "error: ```oops``` ````".into()],
        });
        let updated = serde_json::to_value(failed.check_run(false)).unwrap();
        assert!(updated.get("name").is_none() && updated.get("head_sha").is_none());
        assert_eq!(updated["status"], "completed");
        assert_eq!(updated["conclusion"], "failure");
        assert_eq!(updated["completed_at"], "2023-11-14T22:13:20Z");
        assert_eq!(updated["output"]["title"], "Build failed");
        assert!(
            updated["output"]["summary"]
                .as_str()
                .unwrap()
                .ends_with("\n\nstep 0 exited with 3")
        );
        assert_eq!(
            updated["output"]["text"],
            "The last lines of step 0:\n\n    compiling\n    error: ```oops``` ````"
        );
    }

    #[test]
    fn a_long_log_keeps_its_end_within_github_s_limit() {
        let mut failed = report(Status::Failure);
        failed.failed_step = Some(FailedStep {
            label: "build".into(),
            lines: vec!["x".repeat(70_000), "the error".into()],
        });
        let text = failed.check_run(false).output.text.unwrap();
        assert!(text.chars().count() <= OUTPUT_LIMIT);
        assert!(
            text.ends_with("\n    the error"),
            "{}",
            &text[text.len() - 20..]
        );
    }
}
