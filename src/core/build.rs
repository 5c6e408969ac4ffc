//! What a build is: what a queued build is to run, its status and each step's once planned, as
//! Cloud Build names them, and the results it records (pushed images with digests, builder image
//! digests).

use std::collections::BTreeSet;
use std::time::SystemTime;

use crate::core::substitute::Values;
use crate::core::templates::PushedTemplate;
use serde::{Deserialize, Serialize};

/// What a queued build is to run, kept in its record until it runs: the service queues it, the
/// store keeps it, and the process that claims the build prepares it from this.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Request {
    /// A trigger's build of a commit.
    #[serde(rename_all = "camelCase")]
    Push {
        trigger: String,
        clone_url: String,
        commit: String,
        built_ins: Values,
        overrides: Values,
        /// The secrets the build may read: its trigger's `secrets` when it was queued. A request
        /// queued before builds had a scope has none: it may read no secret.
        #[serde(default)]
        secrets: BTreeSet<String>,
        /// The build may read its trigger's secrets (and be trusted, if its trigger is): false
        /// for a fork's pull request that no writer approved. Builds queued before this field
        /// existed were all pushes, which may.
        #[serde(default = "may")]
        approved: bool,
    },
    /// `builder submit --server`: an uploaded source (or none) and the config's text.
    #[serde(rename_all = "camelCase")]
    Upload {
        upload: Option<String>,
        config: String,
        config_name: String,
        overrides: Values,
        /// The secrets the build may read: the server's `submitSecrets` when it was submitted.
        #[serde(default)]
        secrets: BTreeSet<String>,
    },
}

fn may() -> bool {
    true
}

impl Request {
    /// The trigger whose build this is.
    pub fn trigger(&self) -> Option<&str> {
        match self {
            Request::Push { trigger, .. } => Some(trigger),
            Request::Upload { .. } => None,
        }
    }
}

/// Build and step statuses (Cloud Build's `Build.Status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// Waiting for a person's approval ([`Approval`]); no worker claims it.
    Pending,
    Queued,
    Working,
    Success,
    Failure,
    InternalError,
    Timeout,
    Cancelled,
    Expired,
    /// Its approval was refused: it never runs.
    Rejected,
}

impl Status {
    pub fn is_final(self) -> bool {
        !matches!(self, Status::Pending | Status::Queued | Status::Working)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::Queued => "QUEUED",
            Status::Working => "WORKING",
            Status::Success => "SUCCESS",
            Status::Failure => "FAILURE",
            Status::InternalError => "INTERNAL_ERROR",
            Status::Timeout => "TIMEOUT",
            Status::Cancelled => "CANCELLED",
            Status::Expired => "EXPIRED",
            Status::Rejected => "REJECTED",
        }
    }

    pub const ALL: [Status; 10] = [
        Status::Pending,
        Status::Queued,
        Status::Working,
        Status::Success,
        Status::Failure,
        Status::InternalError,
        Status::Timeout,
        Status::Cancelled,
        Status::Expired,
        Status::Rejected,
    ];

    pub fn parse(text: &str) -> Option<Status> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A build that waits for a person's decision before it is queued (Cloud Build's
/// `BuildApproval`): asked for by its trigger's `approvalConfig` or `submit --require-approval`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    pub state: ApprovalState,
    pub config: ApprovalConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ApprovalResult>,
}

/// Cloud Build's `BuildApproval.State`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ApprovalState {
    Pending,
    Approved,
    Rejected,
    /// The build was cancelled while it waited.
    Cancelled,
}

impl ApprovalState {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalState::Pending => "PENDING",
            ApprovalState::Approved => "APPROVED",
            ApprovalState::Rejected => "REJECTED",
            ApprovalState::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(text: &str) -> Option<ApprovalState> {
        [
            ApprovalState::Pending,
            ApprovalState::Approved,
            ApprovalState::Rejected,
            ApprovalState::Cancelled,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// Cloud Build's `ApprovalConfig`: who may approve is not configurable here (anyone with the API
/// token may), so it says only that approval is required.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalConfig {
    pub approval_required: bool,
}

/// Cloud Build's `ApprovalResult`: who decided, when, what, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalResult {
    pub approver_account: String,
    #[serde(with = "rfc3339::required")]
    pub approval_time: SystemTime,
    pub decision: Decision,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// Cloud Build's `ApprovalResult.Decision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Decision {
    Approved,
    Rejected,
}

impl Decision {
    /// The approval's state once this decision is made.
    pub fn state(self) -> ApprovalState {
        match self {
            Decision::Approved => ApprovalState::Approved,
            Decision::Rejected => ApprovalState::Rejected,
        }
    }

    /// The build's status once this decision is made: queued for the workers, or ended.
    pub fn status(self) -> Status {
        match self {
            Decision::Approved => Status::Queued,
            Decision::Rejected => Status::Rejected,
        }
    }
}

/// How one step ended (or that it never started: `Queued`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepResult {
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "rfc3339")]
    pub start_time: Option<SystemTime>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "rfc3339")]
    pub end_time: Option<SystemTime>,
    /// Digest of the builder image the step ran, when the engine knows one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    /// Why the step failed, in a sentence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The first 50 KiB the step wrote to `$BUILDER_OUTPUT/output`. Records show it as Cloud
    /// Build does, in the build's `buildStepOutputs`.
    #[serde(skip)]
    pub output: Option<Vec<u8>>,
}

impl StepResult {
    pub fn queued() -> Self {
        Self {
            status: Status::Queued,
            exit_code: None,
            start_time: None,
            end_time: None,
            image_digest: None,
            detail: None,
            output: None,
        }
    }
}

/// Times as RFC 3339 text, as Cloud Build's API writes them.
pub mod rfc3339 {
    use std::time::SystemTime;

    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn format(time: SystemTime) -> String {
        DateTime::<Utc>::from(time).to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    pub fn serialize<S: Serializer>(
        time: &Option<SystemTime>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match time {
            Some(time) => serializer.serialize_str(&format(*time)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<SystemTime>, D::Error> {
        let text: Option<String> = Option::deserialize(deserializer)?;
        text.map(|t| {
            DateTime::parse_from_rfc3339(&t)
                .map(SystemTime::from)
                .map_err(serde::de::Error::custom)
        })
        .transpose()
    }

    /// A time that is always there, as RFC 3339 text.
    pub mod required {
        use std::time::SystemTime;

        use serde::{Deserializer, Serializer};

        pub fn serialize<S: Serializer>(
            time: &SystemTime,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            super::serialize(&Some(*time), serializer)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<SystemTime, D::Error> {
            super::deserialize(deserializer)?
                .ok_or_else(|| serde::de::Error::custom("a time is required"))
        }
    }
}

/// An image of `images:` as pushed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushedImage {
    /// The name as `images:` writes it (Cloud Build's `results.images[].name`).
    pub name: String,
    pub digest: String,
    /// Where it was pushed, when a registry mirror sent it elsewhere than its name
    /// (`gcr.io/p/app` to `localhost:5000/p/app:latest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushed_to: Option<String>,
}

/// How a build ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    pub status: Status,
    pub steps: Vec<StepResult>,
    pub images: Vec<PushedImage>,
    /// `templates:` as pushed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub templates: Vec<PushedTemplate>,
    /// Why the build did not succeed, in a sentence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

impl Outcome {
    /// A build that ended with nothing pushed.
    pub fn ended(status: Status, steps: Vec<StepResult>, failure: Option<String>) -> Self {
        Self {
            status,
            steps,
            images: Vec::new(),
            templates: Vec::new(),
            failure,
        }
    }
}
