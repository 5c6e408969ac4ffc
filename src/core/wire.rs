//! The API's JSON: builds, their steps and log lines, webhook deliveries, a schedule's skipped
//! runs, the workers and the notifications of builds' statuses, as `builder serve` serves them
//! and its client reads them. These are not the store's rows: the service turns rows
//! into these, so the database and the API change apart. Names and optional fields follow Cloud
//! Build's `Build` resource (camelCase, times as RFC 3339 text).

use std::time::SystemTime;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::core::build::{Approval, PushedImage, Status, StepResult};
use crate::core::schedule::Skipped;
use crate::core::substitute::Values;
use crate::core::templates::PushedTemplate;
use crate::core::triggers::TriggerResult;

/// A build.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Build {
    pub id: String,
    pub status: Status,
    #[serde(with = "crate::core::build::rfc3339::required")]
    pub create_time: SystemTime,
    #[serde(default, with = "crate::core::build::rfc3339")]
    pub start_time: Option<SystemTime>,
    #[serde(default, with = "crate::core::build::rfc3339")]
    pub finish_time: Option<SystemTime>,
    /// The trigger that started it; `None` for `builder submit` builds.
    pub trigger: Option<String>,
    /// The schedule that started it.
    #[serde(default)]
    pub schedule: Option<String>,
    /// Where its source came from: `kind` (`github`, `upload`, `none`) and what that kind has.
    pub source: serde_json::Value,
    pub substitutions: Values,
    /// The resolved plan, once the build has one (`null` while it is queued).
    pub plan: serde_json::Value,
    pub images: Vec<PushedImage>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub templates: Vec<PushedTemplate>,
    pub failure: Option<String>,
    pub steps: Vec<Step>,
    /// What each step wrote to `$BUILDER_OUTPUT/output`, base64, at the step's index (empty for
    /// the others): Cloud Build's `results.buildStepOutputs`.
    #[serde(default)]
    pub build_step_outputs: Vec<String>,
    /// For a build that needs a person's approval: whether it has it, and the decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
    /// Why a QUEUED build is not claimed yet: its concurrency group is at its limit (shown with
    /// one build, not in lists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// What GitHub was told of the build, for a build reported to it (shown with one build, not
    /// in lists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github: Option<GithubReport>,
}

/// What GitHub was told of a build: the status it last accepted, and the last attempt's failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GithubReport {
    /// The build status GitHub last accepted (as a commit status: QUEUED and WORKING are
    /// `pending`).
    pub reported: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<ReportFailure>,
}

/// A report that did not reach GitHub.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportFailure {
    /// The build status it was to report.
    pub status: Status,
    pub attempts: u32,
    pub error: String,
    /// Whether builder gave it up (after its retries, or at once when GitHub refused it).
    pub lasting: bool,
}

/// A step of a build, with how it ran.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    pub index: usize,
    pub id: Option<String>,
    pub name: String,
    #[serde(flatten)]
    pub result: StepResult,
}

/// A line a build's step wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    /// Its number in the build's log, from 1: a reader that follows a log asks for the lines
    /// after the last one it has.
    pub seq: i64,
    pub step: usize,
    pub stream: Stream,
    pub text: String,
}

/// Which of a step's streams a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// A webhook delivery as received, and what each trigger made of it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    pub id: String,
    pub event: String,
    #[serde(with = "crate::core::build::rfc3339::required")]
    pub receive_time: SystemTime,
    pub verified: bool,
    pub summary: String,
    /// Some triggers still wait for the push's changed files.
    pub pending: bool,
    pub results: Vec<TriggerResult>,
}

/// A run a schedule skipped (or several in a row, for one reason), and when that was recorded.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SkippedRun {
    #[serde(flatten)]
    pub skipped: Skipped,
    pub record_time: DateTime<Utc>,
}

/// A process that runs builds (`builder worker`, or `builder serve`'s own), as it last told the
/// store it is alive.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Worker {
    /// Its holder id, which its builds' leases name.
    pub id: String,
    pub host: String,
    /// The pool whose builds it claims; `None`: the default pool.
    pub pool: Option<String>,
    /// How many builds it runs at once.
    pub capacity: usize,
    /// The builds it is running.
    pub builds: Vec<String>,
    #[serde(with = "crate::core::build::rfc3339::required")]
    pub start_time: SystemTime,
    #[serde(with = "crate::core::build::rfc3339::required")]
    pub last_heartbeat: SystemTime,
    /// Whether it beat within its lease: a worker that is not live died (or lost the store), and
    /// its builds are closed as abandoned.
    pub live: bool,
}

/// A build's status told to a notifier (`serve --notifications`), and what became of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    pub id: i64,
    pub build_id: String,
    /// The status it tells of.
    pub status: Status,
    pub notifier: String,
    #[serde(with = "crate::core::build::rfc3339::required")]
    pub create_time: SystemTime,
    /// How many attempts were made at sending it.
    pub attempts: u32,
    pub delivered: bool,
    /// Delivered or given up: no attempt follows.
    pub done: bool,
    /// The last attempt's failure, or why it was never sent.
    pub error: Option<String>,
    /// When the next attempt is due, for one not done.
    #[serde(with = "crate::core::build::rfc3339")]
    pub next_attempt: Option<SystemTime>,
    /// Each attempt, in order.
    pub history: Vec<NotificationAttempt>,
}

/// One attempt at sending a notification.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NotificationAttempt {
    #[serde(with = "crate::core::build::rfc3339::required")]
    pub time: SystemTime,
    /// Why it failed; `None`: delivered.
    pub error: Option<String>,
}
