//! Build triggers in Cloud Build's BuildTrigger shape (spec §9), so that files written by
//! `gcloud builds triggers export` load as they are: reading a trigger file with every problem at
//! its line and column, and deciding whether a GitHub push, a pull request or a `/gcbrun` comment
//! fires a trigger (with Cloud Build's comment control), and if not, why.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::core::config::decode::{self, Fields};
use crate::core::config::{self, BuildConfig, validate};
use crate::core::diag::{Diagnostics, FieldPath};
use crate::core::glob::Glob;
use crate::core::plan;
use crate::core::substitute::{self, Values};
use crate::core::webhooks::{
    Comment, Delivery, GCBRUN, GitRef, PullRequest, PullRequestEvent, Push, RefKind, Repository,
};

mod repository;
pub mod webhook;

pub use repository::{BadRepository, BadServer, GitHubServer, names_repository};
pub use webhook::{Filter, WebhookTrigger};

/// What one trigger made of a delivery: the build it queued, or why it queued none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerResult {
    pub trigger: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A trigger as loaded: what it listens to, which files count, and the build it starts.
#[derive(Debug, Clone)]
pub struct Trigger {
    pub name: String,
    pub description: String,
    pub github: Option<GitHub>,
    pub included_files: Vec<Glob>,
    pub ignored_files: Vec<Glob>,
    pub substitutions: BTreeMap<String, String>,
    pub build: BuildSource,
    /// Never fires on pushes; it can still be run by hand.
    pub disabled: bool,
    pub tags: Vec<String>,
    /// Its builds may reach the machine through the engine (privileged containers, host paths
    /// and namespaces…), as Woodpecker's trusted repositories; builder's own field, not gcloud's.
    pub trusted: bool,
    /// The Secret Manager secrets (by NAME of `projects/P/secrets/NAME/versions/V`) its builds
    /// may read; none if it lists none, as Woodpecker's per-repository secrets. Builder's own
    /// field, not gcloud's: Cloud Build grants secrets to the trigger's service account.
    pub secrets: BTreeSet<String>,
    /// Requests to its webhook URL fire it (`webhookConfig`); its `github` is then the
    /// repository of its `sourceToBuild`, which no GitHub delivery fires.
    pub webhook: Option<WebhookTrigger>,
    /// Its builds wait PENDING for a person's approval before they are queued
    /// (`approvalConfig.approvalRequired`).
    pub approval_required: bool,
    /// How many of its builds (by group) run at once (`concurrency`, builder's own field).
    pub concurrency: Option<Concurrency>,
}

/// A trigger's `concurrency`: at most `limit` builds of one group run at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Concurrency {
    /// The group's name, its substitutions expanded with the build's when it is queued.
    pub group: String,
    /// At least 1.
    pub limit: u32,
    pub on_conflict: OnConflict,
}

/// A build's concurrency group (a trigger's `concurrency`), its name expanded: at most `limit`
/// builds of one group are WORKING at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConcurrencyGroup {
    pub name: String,
    /// At least 1.
    pub limit: u32,
}

impl ConcurrencyGroup {
    /// Why a build of this group waits, with the group's `working` builds: `None` below its
    /// limit.
    pub fn waiting(&self, working: &[String]) -> Option<String> {
        self.at_limit(working).then(|| {
            let (builds, verb) = match working {
                [one] => (format!("build {one}"), "is"),
                many => (format!("builds {}", many.join(", ")), "are"),
            };
            format!(
                "waiting for concurrency group {} (limit {}): {builds} {verb} running",
                self.name, self.limit
            )
        })
    }

    /// Why a build of this group that skips a full group (`onConflict: SKIP`) is not queued,
    /// with the group's `unfinished` builds (queued or running): `None` below its limit.
    pub fn full(&self, unfinished: &[String]) -> Option<String> {
        self.at_limit(unfinished).then(|| {
            format!(
                "skipped: concurrency group {} is at its limit ({}): {} queued or running",
                self.name,
                self.limit,
                unfinished.join(", ")
            )
        })
    }

    fn at_limit(&self, builds: &[String]) -> bool {
        builds.len() >= usize::try_from(self.limit).unwrap_or(usize::MAX)
    }
}

/// What becomes of a build whose group is at its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnConflict {
    /// It waits QUEUED until a build of its group ends.
    Queue,
    /// Queueing it cancels the group's older builds still queued or running.
    CancelOlder,
    /// It is not queued.
    Skip,
}

impl OnConflict {
    const NAMES: [(&'static str, OnConflict); 3] = [
        ("QUEUE", OnConflict::Queue),
        ("CANCEL_OLDER", OnConflict::CancelOlder),
        ("SKIP", OnConflict::Skip),
    ];

    pub fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, mode)| *mode == self)
            .map_or("QUEUE", |(name, _)| name)
    }
}

impl Concurrency {
    /// The group of a build with `substitutions` (its built-ins and the trigger's own).
    pub fn group_of(&self, substitutions: &Values) -> ConcurrencyGroup {
        ConcurrencyGroup {
            // Plain references to values of at most 4000 bytes each: within the expansion's
            // bounds but for a group name written to pass them, which is then kept as written.
            name: substitute::expand(&self.group, substitutions, false)
                .unwrap_or_else(|_| self.group.clone()),
            limit: self.limit,
        }
    }
}

/// Where a triggered build's config comes from.
#[derive(Debug, Clone)]
pub enum BuildSource {
    /// A config file in the pushed commit, relative to the repository root.
    File(String),
    Inline(Box<BuildConfig>),
    /// The first of `cloudbuild.yaml`, `cloudbuild.yml`, `cloudbuild.json` in the repository.
    Autodetect,
}

/// The repository a trigger listens to, and its push or pull-request filter (at most one).
#[derive(Debug, Clone)]
pub struct GitHub {
    pub owner: String,
    pub name: String,
    pub push: Option<PushFilter>,
    pub pull_request: Option<PullRequestFilter>,
}

/// `github.pullRequest`: which pull requests build, by their base branch, and who must approve.
#[derive(Debug, Clone)]
pub struct PullRequestFilter {
    /// RE2 syntax, searched in the base branch's name.
    pub pattern: Regex,
    pub invert: bool,
    pub comment_control: CommentControl,
    /// A new build of a pull request cancels the trigger's older builds of it that are still
    /// queued or running (`cancelSuperseded`, builder's own field, off by default: Cloud Build
    /// lets them run).
    pub cancel_superseded: bool,
}

/// Cloud Build's `PullRequestFilter.CommentControl` (spec §9.4). Absent, it is
/// `COMMENTS_DISABLED`, the API's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CommentControl {
    /// Every pull request builds.
    #[default]
    Disabled,
    /// A pull request builds after a writer's `/gcbrun` comment, or when a writer opened it with
    /// `/gcbrun` in its description.
    Enabled,
    /// Writers' pull requests build at once; others wait for a writer's `/gcbrun`.
    EnabledForExternalContributorsOnly,
}

impl CommentControl {
    const NAMES: [(&'static str, CommentControl); 3] = [
        ("COMMENTS_DISABLED", CommentControl::Disabled),
        ("COMMENTS_ENABLED", CommentControl::Enabled),
        (
            "COMMENTS_ENABLED_FOR_EXTERNAL_CONTRIBUTORS_ONLY",
            CommentControl::EnabledForExternalContributorsOnly,
        ),
    ];

    pub fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, mode)| *mode == self)
            .map_or("COMMENTS_DISABLED", |(name, _)| name)
    }
}

/// What a pull request's build may have besides its code, once comment control let it build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Approval {
    /// The build may read the trigger's secrets (and be trusted, if the trigger is): its code is
    /// the base repository's own, or a writer vouched for it (wrote it under comment control, or
    /// commented `/gcbrun`). A fork's pull request otherwise gets neither.
    pub secrets: bool,
}

#[derive(Debug, Clone)]
pub struct PushFilter {
    pub kind: RefKind,
    /// RE2 syntax, searched in the short ref name (`main`, `v1.2.0`), not matched whole.
    pub pattern: Regex,
    pub invert: bool,
}

/// Why a trigger did not fire for a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    Disabled,
    NotGitHub,
    PullRequestsOnly,
    PushesOnly,
    OtherRepository,
    OtherRefKind(RefKind),
    /// The delivery is not a push of a branch or tag (it says what it is).
    NotAPush(String),
    RefNotMatched {
        pattern: String,
        invert: bool,
    },
    Deleted,
    SkipCi,
    AllChangesIgnored,
    NothingIncludedChanged,
    /// A pull request's action that starts no build (`closed`, `labeled`…).
    PullRequestAction(String),
    /// An `edited` pull request whose base branch stayed.
    EditedOnly,
    BaseNotMatched {
        pattern: String,
        invert: bool,
    },
    /// Comment control holds the pull request until a writer comments `/gcbrun`.
    AwaitingApproval {
        author: String,
        association: String,
        control: CommentControl,
    },
    /// A comment's action other than `created`.
    CommentAction(String),
    /// A comment on an issue that is not a pull request.
    NotAPullRequest,
    NoGcbrun,
    /// A `/gcbrun` from someone who cannot write to the repository.
    NotAWriter {
        author: String,
        association: String,
    },
    /// The commented pull request is known, and closed.
    PullRequestClosed(u64),
    /// No delivery of the commented pull request was received, so its head is unknown.
    UnknownPullRequest(u64),
    /// The trigger's repository has no URL on the server (see [`GitHubServer::repository_url`]).
    BadRepository(BadRepository),
    /// The push's `clone_url` names another place than the trigger's repository on the server.
    OtherCloneUrl {
        clone_url: String,
        expected: String,
    },
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Disabled => f.write_str("the trigger is disabled"),
            Self::NotGitHub => f.write_str("the trigger has no `github` event source"),
            Self::PullRequestsOnly => f.write_str("the trigger is for pull requests, not pushes"),
            Self::PushesOnly => f.write_str("the trigger is for pushes, not pull requests"),
            Self::OtherRepository => f.write_str("the event is in another repository"),
            Self::OtherRefKind(RefKind::Branch) => f.write_str("the trigger is for branch pushes"),
            Self::OtherRefKind(RefKind::Tag) => f.write_str("the trigger is for tag pushes"),
            Self::RefNotMatched {
                pattern,
                invert: false,
            } => write!(f, "the ref does not match {pattern:?}"),
            Self::RefNotMatched {
                pattern,
                invert: true,
            } => write!(f, "the ref matches {pattern:?} and invertRegex is set"),
            Self::NotAPush(what) => write!(f, "{what} starts no build"),
            Self::Deleted => f.write_str("deleting a branch or tag starts no build"),
            Self::SkipCi => f.write_str("the head commit's message asks to skip CI"),
            Self::AllChangesIgnored => f.write_str("every changed file matches ignoredFiles"),
            Self::NothingIncludedChanged => {
                f.write_str("no changed file (after ignoredFiles) matches includedFiles")
            }
            Self::PullRequestAction(action) => {
                write!(f, "a pull request {action:?} delivery starts no build")
            }
            Self::EditedOnly => {
                f.write_str("editing a pull request starts no build unless its base branch changed")
            }
            Self::BaseNotMatched {
                pattern,
                invert: false,
            } => write!(f, "the base branch does not match {pattern:?}"),
            Self::BaseNotMatched {
                pattern,
                invert: true,
            } => write!(
                f,
                "the base branch matches {pattern:?} and invertRegex is set"
            ),
            Self::AwaitingApproval {
                author,
                association,
                control: CommentControl::Enabled,
            } => write!(
                f,
                "commentControl is COMMENTS_ENABLED: the pull request waits for a writer's \
                 {GCBRUN} comment (or a writer's pull request with {GCBRUN} in its description; \
                 {author} is {association})"
            ),
            Self::AwaitingApproval {
                author,
                association,
                control,
            } => write!(
                f,
                "commentControl is {}: the pull request of {author} ({association}), who cannot \
                 write to the repository, waits for a writer's {GCBRUN} comment",
                control.name()
            ),
            Self::CommentAction(action) => {
                write!(f, "a comment {action:?} delivery starts no build")
            }
            Self::NotAPullRequest => f.write_str("the comment is on an issue, not a pull request"),
            Self::NoGcbrun => write!(f, "the comment does not contain {GCBRUN}"),
            Self::NotAWriter {
                author,
                association,
            } => write!(
                f,
                "the {GCBRUN} comment is from {author} ({association}), who cannot write to the \
                 repository: only an OWNER's, MEMBER's or COLLABORATOR's starts a build"
            ),
            Self::PullRequestClosed(number) => write!(f, "pull request #{number} is closed"),
            Self::UnknownPullRequest(number) => write!(
                f,
                "no pull_request delivery of #{number} was received, so its head commit is \
                 unknown: push to it or reopen it"
            ),
            Self::BadRepository(e) => e.fmt(f),
            Self::OtherCloneUrl {
                clone_url,
                expected,
            } => write!(
                f,
                "the push's clone_url {clone_url:?} is not the trigger's repository {expected}: \
                 builds fetch only from the server's GitHub URL"
            ),
        }
    }
}

/// The push a delivery carries, or why it starts no build.
pub fn push_of(delivery: &Delivery) -> Result<&Push, Skip> {
    match delivery {
        Delivery::Push(push) => Ok(push),
        Delivery::Ping(_) => Err(Skip::NotAPush("a ping".into())),
        Delivery::PushToOtherRef { ref_name } => {
            Err(Skip::NotAPush(format!("a push to {ref_name}")))
        }
        Delivery::PullRequest(_) => Err(Skip::NotAPush("a pull request event".into())),
        Delivery::Comment(_) => Err(Skip::NotAPush("a comment".into())),
        Delivery::CheckRun(_) => Err(Skip::NotAPush("a check run event".into())),
        Delivery::Ignored { event } => Err(Skip::NotAPush(format!("a {event:?} event"))),
    }
}

/// The pull-request actions that build: a new pull request, new commits, a reopened one (and an
/// `edited` one whose base changed, see [`Trigger::fires_on_pull_request`]).
const BUILDING_ACTIONS: [&str; 3] = ["opened", "reopened", "synchronize"];

/// What `delivery` means for `trigger`: the push it builds, or why it starts no build.
pub fn evaluate<'d>(
    trigger: &Trigger,
    delivery: &'d Delivery,
    changed_files: &[String],
) -> Result<&'d Push, Skip> {
    let push = push_of(delivery)?;
    trigger.fires(push, changed_files)?;
    Ok(push)
}

impl Trigger {
    /// Whether `push`, which changed `changed_files`, fires this trigger (spec §9.2, §9.3).
    pub fn fires(&self, push: &Push, changed_files: &[String]) -> Result<(), Skip> {
        self.fires_on_ref(push)?;
        self.files_fire(changed_files)
    }

    /// Whether `push` fires this trigger as far as can be told without its changed files.
    pub fn fires_on_ref(&self, push: &Push) -> Result<(), Skip> {
        if self.disabled {
            return Err(Skip::Disabled);
        }
        let github = self.github.as_ref().ok_or(Skip::NotGitHub)?;
        let filter = github.push.as_ref().ok_or(Skip::PullRequestsOnly)?;
        github.listens_to(&push.repository)?;
        if push.git_ref.kind() != filter.kind {
            return Err(Skip::OtherRefKind(filter.kind));
        }
        if filter.pattern.is_match(push.git_ref.name()) == filter.invert {
            return Err(Skip::RefNotMatched {
                pattern: filter.pattern.as_str().to_string(),
                invert: filter.invert,
            });
        }
        if push.is_deletion() {
            return Err(Skip::Deleted);
        }
        if push.skips_ci() {
            return Err(Skip::SkipCi);
        }
        Ok(())
    }

    /// This trigger's pull-request filter, for an event in `repository`.
    fn pull_request_filter(&self, repository: &Repository) -> Result<&PullRequestFilter, Skip> {
        if self.disabled {
            return Err(Skip::Disabled);
        }
        let github = self.github.as_ref().ok_or(Skip::NotGitHub)?;
        let filter = github.pull_request.as_ref().ok_or(Skip::PushesOnly)?;
        github.listens_to(repository)?;
        Ok(filter)
    }

    /// Whether a `pull_request` delivery fires this trigger as far as can be told without the
    /// pull request's changed files, under its comment control (spec §9.4).
    pub fn fires_on_pull_request(&self, event: &PullRequestEvent) -> Result<Approval, Skip> {
        let filter = self.pull_request_filter(&event.repository)?;
        let action = event.action.as_str();
        if action == "edited" && !event.base_changed {
            return Err(Skip::EditedOnly);
        }
        if action != "edited" && !BUILDING_ACTIONS.contains(&action) {
            return Err(Skip::PullRequestAction(event.action.clone()));
        }
        let pull_request = &event.pull_request;
        filter.base_matches(pull_request)?;
        let fork = pull_request.is_fork(&event.repository);
        let held = || Skip::AwaitingApproval {
            author: pull_request.author.clone(),
            association: pull_request.author_association.clone(),
            control: filter.comment_control,
        };
        match filter.comment_control {
            CommentControl::Disabled => Ok(Approval { secrets: !fork }),
            CommentControl::Enabled if pull_request.approved_by_description() => {
                Ok(Approval { secrets: true })
            }
            CommentControl::EnabledForExternalContributorsOnly
                if pull_request.author_is_writer() =>
            {
                Ok(Approval { secrets: true })
            }
            CommentControl::Enabled | CommentControl::EnabledForExternalContributorsOnly => {
                Err(held())
            }
        }
    }

    /// Whether an `issue_comment` delivery fires this trigger: a writer's `/gcbrun` on an open
    /// pull request into a matching base branch builds it, whatever the comment control (spec
    /// §9.4). `pull_request` is the commented one as its latest delivery described it, if any
    /// was received (the comment's own delivery does not carry its head).
    pub fn fires_on_comment(
        &self,
        comment: &Comment,
        pull_request: Option<&PullRequest>,
    ) -> Result<Approval, Skip> {
        let filter = self.pull_request_filter(&comment.repository)?;
        if comment.action != "created" {
            return Err(Skip::CommentAction(comment.action.clone()));
        }
        if !comment.on_pull_request {
            return Err(Skip::NotAPullRequest);
        }
        if !comment.asks_for_build() {
            return Err(Skip::NoGcbrun);
        }
        if !comment.by_writer() {
            return Err(Skip::NotAWriter {
                author: comment.author.clone(),
                association: comment.author_association.clone(),
            });
        }
        let pull_request = pull_request.ok_or(Skip::UnknownPullRequest(comment.number))?;
        if !pull_request.open {
            return Err(Skip::PullRequestClosed(comment.number));
        }
        filter.base_matches(pull_request)?;
        Ok(Approval { secrets: true })
    }

    /// The built-in substitutions of this trigger's build of `pull_request` into `repository`,
    /// as Cloud Build sets them: the head commit and branch as `COMMIT_SHA` and `BRANCH_NAME`
    /// (and `REF_NAME`); and the values only pull-request builds have (`_HEAD_BRANCH`,
    /// `_BASE_BRANCH`, `_HEAD_REPO_URL`, `_PR_NUMBER`), apart, since those are user keys that
    /// the config's own `substitutions` defaults must not replace.
    pub fn pull_request_built_ins(
        &self,
        repository: &Repository,
        pull_request: &PullRequest,
    ) -> (Values, Values) {
        let head = GitRef::Branch(pull_request.head_branch.clone());
        let built_ins = self.built_ins(repository, Some(&head), &pull_request.head_sha);
        let values = [
            ("_HEAD_BRANCH", pull_request.head_branch.clone()),
            ("_BASE_BRANCH", pull_request.base_branch.clone()),
            ("_HEAD_REPO_URL", pull_request.head_repo_url.clone()),
            ("_PR_NUMBER", pull_request.number.to_string()),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_string(), value))
        .collect();
        (built_ins, values)
    }

    /// A new build of a pull request cancels this trigger's older unfinished builds of it.
    pub fn cancels_superseded(&self) -> bool {
        self.github
            .as_ref()
            .and_then(|github| github.pull_request.as_ref())
            .is_some_and(|filter| filter.cancel_superseded)
    }

    /// The trigger as the API and the console show it, with its rule in words.
    pub fn summary(&self) -> serde_json::Value {
        let rule = match (&self.webhook, &self.github) {
            (Some(webhook), Some(github)) => {
                let when = webhook
                    .filter
                    .as_ref()
                    .map_or(String::new(), |f| format!(", when {}", f.source()));
                format!(
                    "webhook requests build the head of {} of {}/{}{when}",
                    webhook.git_ref.name(),
                    github.owner,
                    github.name
                )
            }
            _ => self.github_rule(),
        };
        self.summary_with(rule)
    }

    /// A GitHub trigger's rule in words.
    fn github_rule(&self) -> String {
        match &self.github {
            None => "never fires on pushes (no `github` source)".to_string(),
            Some(GitHub {
                push: None,
                pull_request: None,
                ..
            }) => "never fires (no `push` or `pullRequest` filter)".to_string(),
            Some(GitHub {
                owner,
                name,
                push,
                pull_request,
            }) => {
                let matching = |invert: bool| if invert { "not matching" } else { "matching" };
                let mut rule = match (push, pull_request) {
                    (Some(filter), _) => {
                        let kind = match filter.kind {
                            RefKind::Branch => "branches",
                            RefKind::Tag => "tags",
                        };
                        format!(
                            "pushes to {kind} {} {:?} of {owner}/{name}",
                            matching(filter.invert),
                            filter.pattern.as_str()
                        )
                    }
                    (None, Some(filter)) => format!(
                        "pull requests into branches {} {:?} of {owner}/{name} ({}{})",
                        matching(filter.invert),
                        filter.pattern.as_str(),
                        filter.comment_control.name(),
                        if filter.cancel_superseded {
                            ", a new build cancelling the older ones"
                        } else {
                            ""
                        }
                    ),
                    (None, None) => unreachable!("matched above"),
                };
                let globs = |globs: &[Glob]| {
                    globs
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                if !self.ignored_files.is_empty() {
                    rule += &format!(", except changes only to {}", globs(&self.ignored_files));
                }
                if !self.included_files.is_empty() {
                    rule += &format!(", that change {}", globs(&self.included_files));
                }
                rule
            }
        }
    }

    /// The trigger as the API shows it, with its `rule` in words.
    fn summary_with(&self, rule: String) -> serde_json::Value {
        let config = match &self.build {
            BuildSource::File(path) => path.clone(),
            BuildSource::Inline(_) => "inline".to_string(),
            BuildSource::Autodetect => "autodetect".to_string(),
        };
        serde_json::json!({
            "name": self.name,
            "description": self.description,
            "disabled": self.disabled,
            "trusted": self.trusted,
            "approvalRequired": self.approval_required,
            "concurrency": self.concurrency.as_ref().map(|concurrency| serde_json::json!({
                "group": concurrency.group,
                "limit": concurrency.limit,
                "onConflict": concurrency.on_conflict.name(),
            })),
            "secrets": self.secrets,
            "rule": rule,
            "config": config,
            "substitutions": self.substitutions,
            "tags": self.tags,
        })
    }

    /// The URL this trigger's builds fetch from on `server`, from its repository's owner and
    /// name; with `push`, the push's `clone_url` must name that same repository. A pull request's
    /// build fetches from it too: a fork's head is the base repository's `refs/pull/N/head`.
    pub fn source_url(&self, server: &GitHubServer, push: Option<&Push>) -> Result<String, Skip> {
        let github = self.github.as_ref().ok_or(Skip::NotGitHub)?;
        let url = server
            .repository_url(&github.owner, &github.name)
            .map_err(Skip::BadRepository)?;
        match push {
            Some(push) if !names_repository(&push.repository.clone_url, &url) => {
                Err(Skip::OtherCloneUrl {
                    clone_url: push.repository.clone_url.clone(),
                    expected: url,
                })
            }
            _ => Ok(url),
        }
    }

    /// Whether deciding needs the push's (or pull request's) changed files.
    pub fn has_file_filters(&self) -> bool {
        !self.included_files.is_empty() || !self.ignored_files.is_empty()
    }

    /// The built-in substitutions of this trigger's build of `commit` in `repository`, reached
    /// through `git_ref` (none for a commit run by hand) (spec §9.2).
    pub fn built_ins(
        &self,
        repository: &Repository,
        git_ref: Option<&GitRef>,
        commit: &str,
    ) -> Values {
        let (branch, tag) = match git_ref {
            Some(GitRef::Branch(name)) => (name.as_str(), ""),
            Some(GitRef::Tag(name)) => ("", name.as_str()),
            None => ("", ""),
        };
        let config_path = match &self.build {
            BuildSource::File(path) => path.as_str(),
            BuildSource::Inline(_) | BuildSource::Autodetect => "",
        };
        let mut built_ins = [
            ("COMMIT_SHA", commit),
            ("BRANCH_NAME", branch),
            ("TAG_NAME", tag),
            ("REPO_NAME", &repository.name),
            ("REPO_FULL_NAME", &repository.full_name),
            ("TRIGGER_NAME", &self.name),
            ("TRIGGER_BUILD_CONFIG_PATH", config_path),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
        plan::derive_built_ins(&mut built_ins);
        built_ins
    }

    /// The file filters: ignored files are dropped first, so ignored wins over included; with
    /// no ignored globs and no changed files the filters do not apply.
    pub fn files_fire(&self, changed: &[String]) -> Result<(), Skip> {
        if self.ignored_files.is_empty() && changed.is_empty() {
            return Ok(());
        }
        let matches = |globs: &[Glob], file: &str| globs.iter().any(|g| g.matches(file));
        let left: Vec<&String> = changed
            .iter()
            .filter(|file| !matches(&self.ignored_files, file))
            .collect();
        if left.is_empty() {
            return Err(Skip::AllChangesIgnored);
        }
        if !self.included_files.is_empty()
            && !left.iter().any(|file| matches(&self.included_files, file))
        {
            return Err(Skip::NothingIncludedChanged);
        }
        Ok(())
    }
}

/// What Cloud Build records about a trigger; exports carry it, and it means nothing here.
const METADATA: &[&str] = &["id", "createTime", "resourceName"];
/// Fields of exported triggers that builder reads but cannot honour, and why.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("serviceAccount", "steps run with the engine's credentials"),
    ("includeBuildLogs", "builds post no GitHub checks"),
    (
        "pubsubConfig",
        "only GitHub events and webhooks fire triggers",
    ),
    (
        "triggerTemplate",
        "only GitHub events and webhooks fire triggers",
    ),
    (
        "repositoryEventConfig",
        "only GitHub events and webhooks fire triggers",
    ),
    ("gitFileSource", "set `filename` instead"),
];

/// Reads a trigger file (YAML or JSON). `Err` holds the diagnostics when it is not a usable
/// trigger; `Ok` carries the warnings.
pub fn load(bytes: &[u8]) -> Result<(Trigger, Diagnostics), Diagnostics> {
    decode::document(bytes, trigger)
}

fn trigger(f: &mut Fields) -> Trigger {
    let name = name(f, "trigger");
    for &field in METADATA {
        f.take(field);
    }
    for &(field, why) in UNSUPPORTED {
        if f.take(field).is_some() {
            f.warn_unsupported(field, why);
        }
    }
    let substitutions = f.string_map("substitutions");
    let path = f.path().key("substitutions");
    validate::check_substitution_keys(&substitutions, &path, f.diagnostics());
    let included_files = globs(f, "includedFiles");
    let ignored_files = globs(f, "ignoredFiles");
    let mut github = f.object("github", github);
    let webhook = webhook_trigger(f, &name, &mut github);
    let concurrency = f
        .object("concurrency", |f| concurrency(f, &substitutions))
        .flatten();
    Trigger {
        name,
        description: f.string("description").unwrap_or_default(),
        github,
        webhook,
        included_files,
        ignored_files,
        substitutions,
        build: build_source(f),
        disabled: f.bool("disabled").unwrap_or(false),
        tags: f.strings("tags"),
        trusted: f.bool("trusted").unwrap_or(false),
        secrets: secret_names(f),
        approval_required: f
            .object("approvalConfig", |f| {
                f.bool("approvalRequired").unwrap_or(false)
            })
            .unwrap_or(false),
        concurrency,
    }
}

/// The built-in substitutions a triggered build has when it is queued ([`Trigger::built_ins`]),
/// which is when its concurrency group is named; the others (`BUILD_ID`, `PROJECT_ID`,
/// `LOCATION`, …) are set when it runs.
const QUEUED_BUILT_INS: &[&str] = &[
    "BRANCH_NAME",
    "COMMIT_SHA",
    "REF_NAME",
    "REPO_FULL_NAME",
    "REPO_NAME",
    "REVISION_ID",
    "SHORT_SHA",
    "TAG_NAME",
    "TRIGGER_BUILD_CONFIG_PATH",
    "TRIGGER_NAME",
];

/// `concurrency`: its group must name something (its references the trigger's substitutions
/// or the built-ins its builds have when they are queued), its limit be at least 1.
fn concurrency(f: &mut Fields, substitutions: &BTreeMap<String, String>) -> Option<Concurrency> {
    let group = f.string("group");
    let group_path = f.path().key("group");
    match &group {
        None => f
            .diagnostics()
            .error(&group_path, "a concurrency group needs its `group`"),
        Some(group) if group.is_empty() => f
            .diagnostics()
            .error(&group_path, "a concurrency group's name is empty"),
        Some(group) => {
            for reference in substitute::references(group, false) {
                let key = reference.key;
                let known = if substitute::is_user_key(&key) {
                    substitutions.contains_key(&key)
                } else {
                    substitute::is_built_in(&key)
                };
                let unresolved = if !known {
                    Some(format!(
                        "`${key}` does not resolve: it is neither in the trigger's \
                         `substitutions` nor a built-in substitution"
                    ))
                } else if substitute::is_built_in(&key) && !QUEUED_BUILT_INS.contains(&&*key) {
                    Some(format!(
                        "`${key}` does not resolve when the build is queued, which is when its \
                         group is named: it is set only when the build runs (a build has {} \
                         by then)",
                        QUEUED_BUILT_INS.join(", ")
                    ))
                } else {
                    None
                };
                if let Some(message) = unresolved {
                    f.diagnostics().error(&group_path, message);
                }
            }
        }
    }
    let limit = match f.integer("limit") {
        None => Some(1),
        Some(limit) => u32::try_from(limit)
            .ok()
            .filter(|limit| *limit >= 1)
            .or_else(|| {
                let path = f.path().key("limit");
                f.diagnostics()
                    .error(&path, format!("a limit is at least 1, found {limit}"));
                None
            }),
    };
    let on_conflict = match f.enumeration("onConflict", &OnConflict::NAMES.map(|(name, _)| name)) {
        None => Some(OnConflict::Queue),
        Some(name) => OnConflict::NAMES
            .iter()
            .find(|(known, _)| *known == name)
            .map(|(_, mode)| *mode),
    };
    Some(Concurrency {
        group: group?,
        limit: limit?,
        on_conflict: on_conflict?,
    })
}

/// `webhookConfig`, its `sourceToBuild` (the repository, into `github`) and its `filter`,
/// compiled now: a filter that is not CEL is an error at `filter`, naming trigger `name`.
fn webhook_trigger(
    f: &mut Fields,
    name: &str,
    github: &mut Option<GitHub>,
) -> Option<WebhookTrigger> {
    let filter = f.string("filter").and_then(|source| {
        Filter::compile(&source)
            .map_err(|e| {
                let path = f.path().key("filter");
                f.diagnostics().error(
                    &path,
                    format!("trigger {name:?}: the filter is not CEL: {e}"),
                );
            })
            .ok()
    });
    let secret = f.object("webhookConfig", |f| {
        f.take("state");
        let secret = f.string("secret").unwrap_or_default();
        if !validate::is_secret_version(&secret) {
            let path = f.path().key("secret");
            f.diagnostics().error(
                &path,
                format!("{secret:?} is not projects/P/secrets/NAME/versions/V"),
            );
        }
        secret
    });
    let source = f.object("sourceToBuild", source_to_build).flatten();
    let Some(secret) = secret else {
        if filter.is_some() || source.is_some() {
            f.diagnostics().error(
                &FieldPath::root(),
                "`filter` and `sourceToBuild` are for webhook triggers: set `webhookConfig`",
            );
        }
        return None;
    };
    if github.is_some() {
        f.diagnostics().error(
            &FieldPath::root(),
            "set either `github` or `webhookConfig`, not both",
        );
    }
    let Some((owner, repository, git_ref)) = source else {
        f.diagnostics().error(
            &FieldPath::root(),
            "a webhook trigger builds its `sourceToBuild`: set it ({uri, ref, repoType: GITHUB})",
        );
        return None;
    };
    *github = Some(GitHub {
        owner,
        name: repository,
        push: None,
        pull_request: None,
    });
    Some(WebhookTrigger {
        secret,
        git_ref,
        filter,
    })
}

/// `sourceToBuild`: a GitHub repository's URL (`https://github.com/OWNER/NAME`, its owner and
/// name: it is fetched from the server's GitHub as any trigger's) and the branch or tag
/// (`refs/heads/B`, `refs/tags/T`) whose head a request builds.
fn source_to_build(f: &mut Fields) -> Option<(String, String, GitRef)> {
    let repo_type = f.string("repoType").unwrap_or_default();
    if repo_type != "GITHUB" {
        let path = f.path().key("repoType");
        f.diagnostics().error(
            &path,
            format!("repository type {repo_type:?}: builder builds GITHUB repositories only"),
        );
    }
    let uri = f.string("uri").unwrap_or_default();
    let full_ref = f.string("ref").unwrap_or_default();
    let segments: Vec<&str> = uri
        .trim_end_matches('/')
        .trim_end_matches(".git")
        .rsplit('/')
        .take(2)
        .collect();
    let repository = match segments.as_slice() {
        [name, owner] if uri.contains("://") && !name.is_empty() && !owner.is_empty() => {
            Some((owner.to_string(), name.to_string()))
        }
        _ => {
            let path = f.path().key("uri");
            f.diagnostics().error(
                &path,
                format!("{uri:?} is not a repository's URL (https://github.com/OWNER/NAME)"),
            );
            None
        }
    };
    let git_ref = GitRef::from_full_name(&full_ref);
    if git_ref.is_none() {
        let path = f.path().key("ref");
        f.diagnostics().error(
            &path,
            format!("{full_ref:?} is not a branch (refs/heads/B) or a tag (refs/tags/T)"),
        );
    }
    let (owner, name) = repository?;
    Some((owner, name, git_ref?))
}

/// `secrets`: the NAMEs of Secret Manager secrets, each checked as one (a whole
/// `projects/P/secrets/NAME/versions/V` is refused: the grant is for every project and version).
fn secret_names(f: &mut Fields) -> BTreeSet<String> {
    let path = f.path().key("secrets");
    let names = f.strings("secrets");
    for (i, name) in names.iter().enumerate() {
        if let Err(message) = validate::check_secret_name(name) {
            f.diagnostics().error(&path.index(i), message);
        }
    }
    names.into_iter().collect()
}

/// The `name` of a `kind` of resource (a trigger, a schedule), checked against Cloud Build's rule
/// for trigger names.
pub(crate) fn name(f: &mut Fields, kind: &str) -> String {
    let name = f.string("name").unwrap_or_default();
    let valid_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    let ends = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    let valid = (1..=64).contains(&name.len())
        && valid_chars
        && ends(name.chars().next())
        && ends(name.chars().last());
    if !valid {
        let path = f.path().key("name");
        f.diagnostics().error(
            &path,
            format!(
                "{kind} name {name:?}: 1 to 64 letters, digits and dashes, starting and ending \
                 with a letter or digit"
            ),
        );
    }
    name
}

fn globs(f: &mut Fields, field: &'static str) -> Vec<Glob> {
    let path = f.path().key(field);
    let texts = f.strings(field);
    let mut globs = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        match Glob::new(text) {
            Ok(glob) => globs.push(glob),
            Err(message) => f.diagnostics().error(&path.index(i), message),
        }
    }
    globs
}

fn github(f: &mut Fields) -> GitHub {
    f.unsupported_scalar(
        "enterpriseConfigResourceName",
        "the repository is fetched from its clone URL",
    );
    let push = f.object("push", push_filter).flatten();
    let pull_request = f.object("pullRequest", pull_request_filter).flatten();
    if push.is_some() && pull_request.is_some() {
        let path = f.path().clone();
        f.diagnostics()
            .error(&path, "set either `push` or `pullRequest`, not both");
    }
    GitHub {
        owner: f.string("owner").unwrap_or_default(),
        name: f.string("name").unwrap_or_default(),
        push,
        pull_request,
    }
}

impl GitHub {
    /// Whether an event in `repository` is for this trigger. GitHub's owner and repository names
    /// are case-insensitive.
    fn listens_to(&self, repository: &Repository) -> Result<(), Skip> {
        if self.owner.eq_ignore_ascii_case(&repository.owner)
            && self.name.eq_ignore_ascii_case(&repository.name)
        {
            Ok(())
        } else {
            Err(Skip::OtherRepository)
        }
    }
}

impl PullRequestFilter {
    fn base_matches(&self, pull_request: &PullRequest) -> Result<(), Skip> {
        if self.pattern.is_match(&pull_request.base_branch) == self.invert {
            return Err(Skip::BaseNotMatched {
                pattern: self.pattern.as_str().to_string(),
                invert: self.invert,
            });
        }
        Ok(())
    }
}

fn pull_request_filter(f: &mut Fields) -> Option<PullRequestFilter> {
    let invert = f.bool("invertRegex").unwrap_or(false);
    let cancel_superseded = f.bool("cancelSuperseded").unwrap_or(false);
    let comment_control = match f.string("commentControl") {
        None => CommentControl::default(),
        Some(name) => match CommentControl::NAMES
            .iter()
            .find(|(known, _)| *known == name)
        {
            Some((_, mode)) => *mode,
            None => {
                let path = f.path().key("commentControl");
                let known: Vec<&str> = CommentControl::NAMES.iter().map(|(n, _)| *n).collect();
                f.diagnostics().error(
                    &path,
                    format!(
                        "unknown comment control {name:?}: one of {}",
                        known.join(", ")
                    ),
                );
                CommentControl::default()
            }
        },
    };
    let Some(branch) = f.string("branch") else {
        let path = f.path().clone();
        f.diagnostics().error(
            &path,
            "set `branch` (a regular expression for the base branch)",
        );
        return None;
    };
    match Regex::new(&branch) {
        Ok(pattern) => Some(PullRequestFilter {
            pattern,
            invert,
            comment_control,
            cancel_superseded,
        }),
        Err(e) => {
            let path = f.path().key("branch");
            f.diagnostics()
                .error(&path, format!("invalid regular expression: {e}"));
            None
        }
    }
}

fn push_filter(f: &mut Fields) -> Option<PushFilter> {
    let branch = f.string("branch");
    let tag = f.string("tag");
    let invert = f.bool("invertRegex").unwrap_or(false);
    let (kind, field, pattern) = match (branch, tag) {
        (Some(branch), None) => (RefKind::Branch, "branch", branch),
        (None, Some(tag)) => (RefKind::Tag, "tag", tag),
        (branch, _) => {
            let path = f.path().clone();
            let message = if branch.is_some() {
                "set either `branch` or `tag`, not both"
            } else {
                "set `branch` or `tag` (a regular expression)"
            };
            f.diagnostics().error(&path, message);
            return None;
        }
    };
    match Regex::new(&pattern) {
        Ok(pattern) => Some(PushFilter {
            kind,
            pattern,
            invert,
        }),
        Err(e) => {
            let path = f.path().key(field);
            f.diagnostics()
                .error(&path, format!("invalid regular expression: {e}"));
            None
        }
    }
}

/// A path relative to the repository root that stays inside it.
fn is_repository_path(path: &str) -> bool {
    let path = std::path::Path::new(path);
    path.components()
        .all(|c| matches!(c, std::path::Component::Normal(_)))
        && path.components().next().is_some()
}

fn build_source(f: &mut Fields) -> BuildSource {
    let filename = f.string("filename");
    let autodetect = f.bool("autodetect") == Some(true);
    match (filename, f.take("build")) {
        (Some(file), None) => {
            if !is_repository_path(&file) {
                let path = f.path().key("filename");
                f.diagnostics().error(
                    &path,
                    format!("{file:?} is not a relative path inside the repository"),
                );
            }
            BuildSource::File(file)
        }
        (None, Some((node, path))) => {
            BuildSource::Inline(Box::new(config::embedded(node, &path, f.diagnostics())))
        }
        (None, None) if autodetect => BuildSource::Autodetect,
        (filename, _) => {
            let message = if filename.is_some() {
                "set either `filename` or `build`, not both"
            } else {
                "set `filename` (the config's path in the repository) or an inline `build`"
            };
            f.diagnostics().error(&FieldPath::root(), message);
            BuildSource::Autodetect
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::webhooks::HeadCommit;

    fn trigger(yaml: &str) -> Trigger {
        match load(yaml.as_bytes()) {
            Ok((trigger, _)) => trigger,
            Err(diagnostics) => panic!("{}", diagnostics.render("trigger.yaml")),
        }
    }

    fn errors(yaml: &str) -> String {
        load(yaml.as_bytes())
            .expect_err("refused")
            .render("trigger.yaml")
    }

    fn push(git_ref: GitRef) -> Push {
        Push {
            repository: Repository {
                owner: "Acme-ML".into(),
                name: "training-pipeline".into(),
                full_name: "Acme-ML/training-pipeline".into(),
                clone_url: "https://github.com/Acme-ML/training-pipeline.git".into(),
            },
            git_ref,
            before: "1".repeat(40),
            after: "2".repeat(40),
            created: false,
            deleted: false,
            forced: false,
            head_commit: None,
        }
    }

    fn files(changed: &[&str]) -> Vec<String> {
        changed.iter().map(|f| f.to_string()).collect()
    }

    fn branch(name: &str) -> GitRef {
        GitRef::Branch(name.into())
    }

    const MAIN: &str = "name: t\nfilename: cloudbuild.yaml\n\
        github: {owner: acme-ml, name: training-pipeline, push: {branch: ^main$}}\n";

    #[test]
    fn the_shipped_trainer_trigger_loads_and_fires_on_trainer_changes_only() {
        let (trigger, warnings) = load(include_bytes!(
            "../../../configs/trainer-image/trigger.yaml"
        ))
        .unwrap();
        assert_eq!(warnings.iter().count(), 0);
        assert!(matches!(&trigger.build, BuildSource::File(f) if f == "cloudbuild.yaml"));
        let fires = |changed: &[&str]| trigger.fires(&push(branch("main")), &files(changed));
        assert_eq!(fires(&["training-pipeline/trainer/train.py"]), Ok(()));
        assert_eq!(fires(&["trainer.Dockerfile", "README.md"]), Ok(()));
        assert_eq!(fires(&["README.md"]), Err(Skip::NothingIncludedChanged));
    }

    #[test]
    fn branch_patterns_are_searched_and_can_be_inverted() {
        let unanchored = trigger(&MAIN.replace("^main$", "main"));
        assert_eq!(
            unanchored.fires(&push(branch("release/main-2")), &[]),
            Ok(())
        );
        let anchored = trigger(MAIN);
        assert_eq!(anchored.fires(&push(branch("main")), &[]), Ok(()));
        assert!(matches!(
            anchored.fires(&push(branch("mainline")), &[]),
            Err(Skip::RefNotMatched { invert: false, .. })
        ));
        let inverted = trigger(&MAIN.replace("^main$}", "^main$, invertRegex: true}"));
        assert_eq!(inverted.fires(&push(branch("feature/x")), &[]), Ok(()));
        assert!(matches!(
            inverted.fires(&push(branch("main")), &[]),
            Err(Skip::RefNotMatched { invert: true, .. })
        ));
    }

    #[test]
    fn branch_triggers_ignore_tags_and_other_repositories() {
        let main = trigger(MAIN);
        assert_eq!(
            main.fires(&push(GitRef::Tag("main".into())), &[]),
            Err(Skip::OtherRefKind(RefKind::Branch))
        );
        let mut elsewhere = push(branch("main"));
        elsewhere.repository.name = "other".into();
        assert_eq!(main.fires(&elsewhere, &[]), Err(Skip::OtherRepository));
        let tags = trigger(&MAIN.replace("branch: ^main$", r"tag: ^v\d+"));
        assert_eq!(tags.fires(&push(GitRef::Tag("v1.4.0".into())), &[]), Ok(()));
        let disabled = trigger(&format!("{MAIN}disabled: true\n"));
        assert_eq!(
            disabled.fires(&push(branch("main")), &[]),
            Err(Skip::Disabled)
        );
    }

    #[test]
    fn builds_fetch_the_trigger_s_repository_and_refuse_a_clone_url_elsewhere() {
        let main = trigger(MAIN);
        let github = GitHubServer::default();
        let expected = "https://github.com/acme-ml/training-pipeline.git";
        assert_eq!(main.source_url(&github, None).as_deref(), Ok(expected));
        // The payload's spelling of the name may differ in case.
        let pushed = push(branch("main"));
        assert_eq!(
            main.source_url(&github, Some(&pushed)).as_deref(),
            Ok(expected)
        );
        for elsewhere in [
            "file:///srv/git/Acme-ML/training-pipeline.git",
            "/srv/git/Acme-ML/training-pipeline.git",
            "https://internal.example/Acme-ML/training-pipeline.git",
        ] {
            let mut pushed = push(branch("main"));
            pushed.repository.clone_url = elsewhere.into();
            let refused = main.source_url(&github, Some(&pushed)).unwrap_err();
            assert_eq!(
                refused.to_string(),
                format!(
                    "the push's clone_url {elsewhere:?} is not the trigger's repository \
                     {expected}: builds fetch only from the server's GitHub URL"
                )
            );
        }
        // On a GitHub Enterprise server, GitHub's own URL is elsewhere.
        let enterprise: GitHubServer = "https://ghe.example.com".parse().unwrap();
        assert!(matches!(
            main.source_url(&enterprise, Some(&pushed)),
            Err(Skip::OtherCloneUrl { .. })
        ));
        assert_eq!(
            main.source_url(&enterprise, None).as_deref(),
            Ok("https://ghe.example.com/acme-ml/training-pipeline.git")
        );
        let climbing = trigger(&MAIN.replace("name: training-pipeline", "name: '..'"));
        assert!(matches!(
            climbing.source_url(&github, None),
            Err(Skip::BadRepository(_))
        ));
    }

    /// A real delivery, parsed.
    fn delivery(body: &[u8]) -> Push {
        match crate::core::webhooks::parse("push", body) {
            Ok(crate::core::webhooks::Delivery::Push(push)) => push,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn real_pushes_set_the_built_ins_and_deletions_or_skip_ci_build_nothing() {
        let drone = "name: drone\nfilename: ci/cloudbuild.yaml\n\
                     github: {owner: bradrydzewski, name: drone-test-go, push: {tag: ^v}}\n";
        let tags = trigger(drone);
        let created = delivery(include_bytes!(
            "../../../webhooks/github/push/tag-created.json"
        ));
        assert_eq!(tags.fires(&created, &[]), Ok(()));
        let built_ins = tags.built_ins(
            &created.repository,
            Some(&created.git_ref),
            created.commit(),
        );
        let expected = [
            ("BRANCH_NAME", ""),
            ("COMMIT_SHA", created.after.as_str()),
            ("REF_NAME", "v0.0.1"),
            ("REVISION_ID", created.after.as_str()),
            ("SHORT_SHA", &created.after[..7]),
            ("REPO_FULL_NAME", "bradrydzewski/drone-test-go"),
            ("REPO_NAME", "drone-test-go"),
            ("TAG_NAME", "v0.0.1"),
            ("TRIGGER_BUILD_CONFIG_PATH", "ci/cloudbuild.yaml"),
            ("TRIGGER_NAME", "drone"),
        ];
        let expected: Values = expected
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(built_ins, expected);
        let deleted = delivery(include_bytes!(
            "../../../webhooks/github/push/tag-deleted.json"
        ));
        assert_eq!(tags.fires(&deleted, &[]), Err(Skip::Deleted));

        let mut skipped = push(branch("main"));
        skipped.head_commit = Some(HeadCommit {
            id: skipped.after.clone(),
            message: "docs: typo [skip ci]".into(),
        });
        assert_eq!(trigger(MAIN).fires(&skipped, &[]), Err(Skip::SkipCi));
    }

    #[test]
    fn ignored_files_win_over_included_files() {
        let filtered = trigger(&format!(
            "{MAIN}includedFiles: ['src/*']\nignoredFiles: ['**/README.md']\n"
        ));
        let fires = |changed: &[&str]| filtered.fires(&push(branch("main")), &files(changed));
        assert_eq!(fires(&["src/README.md"]), Err(Skip::AllChangesIgnored));
        assert_eq!(fires(&["src/README.md", "src/a.py"]), Ok(()));
        assert_eq!(fires(&["src/sub/a.py"]), Err(Skip::NothingIncludedChanged));
        // With ignored globs, a push that changed nothing has nothing left to build.
        assert_eq!(fires(&[]), Err(Skip::AllChangesIgnored));
        let included_only = trigger(&format!("{MAIN}includedFiles: ['src/*']\n"));
        assert_eq!(included_only.fires(&push(branch("main")), &[]), Ok(()));
    }

    #[test]
    fn exported_triggers_load_with_warnings_for_what_is_not_honoured() {
        let exported = format!(
            "createTime: '2024-01-01T00:00:00Z'\nid: 0a1b\nserviceAccount: projects/p/sa\n{MAIN}\
             substitutions: {{_ENV: prod}}\ntags: [ml]\n"
        );
        let (trigger, warnings) = load(exported.as_bytes()).unwrap();
        assert_eq!(trigger.substitutions["_ENV"], "prod");
        assert_eq!(trigger.tags, ["ml"]);
        let rendered = warnings.render("trigger.yaml");
        assert_eq!(
            rendered,
            "trigger.yaml:3:17: warning: serviceAccount: not honoured by builder \
             (steps run with the engine's credentials); ignored\n"
        );
    }

    #[test]
    fn an_inline_build_is_validated_where_it_is_written() {
        let inline = "name: t\ngithub: {owner: o, name: r, push: {branch: .}}\nbuild:\n  \
                      steps:\n  - name: ubuntu\n    waitFor: [nope]\n";
        let rendered = errors(inline);
        assert!(
            rendered.contains("trigger.yaml:6:15: build.steps[0].waitFor[0]"),
            "{rendered}"
        );
        let good = trigger("name: t\nbuild: {steps: [{name: ubuntu}]}\n");
        assert!(matches!(good.build, BuildSource::Inline(_)));
    }

    const PR: &str = "name: pr\nfilename: cloudbuild.yaml\n\
        github:\n  owner: acme-ml\n  name: training-pipeline\n  pullRequest:\n    branch: ^main$\n";

    fn pr_trigger(control: Option<&str>) -> Trigger {
        let line = control.map_or(String::new(), |c| format!("    commentControl: {c}\n"));
        trigger(&format!("{PR}{line}"))
    }

    fn pr_event(action: &str, writer: bool, fork: bool, body: &str) -> PullRequestEvent {
        let base = push(branch("main")).repository;
        PullRequestEvent {
            action: action.into(),
            base_changed: false,
            pull_request: PullRequest {
                number: 7,
                open: true,
                author: "someone".into(),
                author_association: if writer { "MEMBER" } else { "CONTRIBUTOR" }.into(),
                body: body.into(),
                head_branch: "feature/x".into(),
                head_sha: "3".repeat(40),
                head_repository: Some(if fork {
                    "someone/training-pipeline".into()
                } else {
                    base.full_name.clone()
                }),
                head_repo_url: "https://github.com/someone/training-pipeline.git".into(),
                base_branch: "main".into(),
            },
            repository: base,
        }
    }

    fn pr_comment(association: &str, body: &str) -> Comment {
        Comment {
            action: "created".into(),
            repository: push(branch("main")).repository,
            number: 7,
            on_pull_request: true,
            author: "reviewer".into(),
            author_association: association.into(),
            body: body.into(),
        }
    }

    /// Every comment control mode, for writers' and others' pull requests, from forks and from
    /// the repository itself: whether the pull request builds at once, whether a writer's or a
    /// non-writer's `/gcbrun` builds it, and whether the build may read the trigger's secrets.
    #[test]
    fn comment_control_decides_who_builds_and_who_gets_secrets() {
        use CommentControl::*;
        let held = |control| {
            move |writer: bool| Skip::AwaitingApproval {
                author: "someone".into(),
                association: if writer { "MEMBER" } else { "CONTRIBUTOR" }.into(),
                control,
            }
        };
        let ok = |secrets| Ok(Approval { secrets });
        // (control, writer, fork) → the pull request's own delivery.
        let cases = [
            (None, false, false, ok(true)),
            (None, false, true, ok(false)),
            (None, true, false, ok(true)),
            (None, true, true, ok(false)),
            (Some("COMMENTS_DISABLED"), true, true, ok(false)),
            (
                Some("COMMENTS_ENABLED"),
                false,
                false,
                Err(held(Enabled)(false)),
            ),
            (
                Some("COMMENTS_ENABLED"),
                false,
                true,
                Err(held(Enabled)(false)),
            ),
            (
                Some("COMMENTS_ENABLED"),
                true,
                false,
                Err(held(Enabled)(true)),
            ),
            (
                Some("COMMENTS_ENABLED"),
                true,
                true,
                Err(held(Enabled)(true)),
            ),
            (
                Some("COMMENTS_ENABLED_FOR_EXTERNAL_CONTRIBUTORS_ONLY"),
                false,
                false,
                Err(held(EnabledForExternalContributorsOnly)(false)),
            ),
            (
                Some("COMMENTS_ENABLED_FOR_EXTERNAL_CONTRIBUTORS_ONLY"),
                false,
                true,
                Err(held(EnabledForExternalContributorsOnly)(false)),
            ),
            (
                Some("COMMENTS_ENABLED_FOR_EXTERNAL_CONTRIBUTORS_ONLY"),
                true,
                false,
                ok(true),
            ),
            (
                Some("COMMENTS_ENABLED_FOR_EXTERNAL_CONTRIBUTORS_ONLY"),
                true,
                true,
                ok(true),
            ),
        ];
        for (control, writer, fork, expected) in cases {
            let trigger = pr_trigger(control);
            for action in ["opened", "reopened", "synchronize"] {
                let event = pr_event(action, writer, fork, "");
                assert_eq!(
                    trigger.fires_on_pull_request(&event),
                    expected,
                    "{control:?} writer={writer} fork={fork} {action}"
                );
            }
            // Whatever the mode, a writer's /gcbrun builds, with the secrets; a non-writer's
            // never builds, and says why.
            let pull_request = pr_event("opened", writer, fork, "").pull_request;
            for association in ["OWNER", "MEMBER", "COLLABORATOR"] {
                assert_eq!(
                    trigger
                        .fires_on_comment(&pr_comment(association, "/gcbrun"), Some(&pull_request)),
                    ok(true),
                    "{control:?} {association}"
                );
            }
            for association in ["CONTRIBUTOR", "FIRST_TIME_CONTRIBUTOR", "NONE"] {
                let refused = trigger
                    .fires_on_comment(
                        &pr_comment(association, "LGTM /gcbrun"),
                        Some(&pull_request),
                    )
                    .unwrap_err();
                assert_eq!(
                    refused,
                    Skip::NotAWriter {
                        author: "reviewer".into(),
                        association: association.into()
                    }
                );
                assert!(refused.to_string().contains("cannot write"), "{refused}");
            }
        }
        // COMMENTS_ENABLED: a writer's pull request whose description says /gcbrun builds.
        let enabled = pr_trigger(Some("COMMENTS_ENABLED"));
        for fork in [false, true] {
            let event = pr_event("synchronize", true, fork, "Fixes #3\n\n/gcbrun");
            assert_eq!(enabled.fires_on_pull_request(&event), ok(true));
            let other = pr_event("opened", false, fork, "/gcbrun");
            assert!(enabled.fires_on_pull_request(&other).is_err());
        }
    }

    #[test]
    fn pull_requests_build_on_their_base_branch_and_building_actions_only() {
        let base = pr_trigger(None);
        for action in ["closed", "labeled", "assigned", "ready_for_review"] {
            assert_eq!(
                base.fires_on_pull_request(&pr_event(action, true, false, "")),
                Err(Skip::PullRequestAction(action.into()))
            );
        }
        let mut edited = pr_event("edited", true, false, "");
        assert_eq!(base.fires_on_pull_request(&edited), Err(Skip::EditedOnly));
        edited.base_changed = true;
        assert!(base.fires_on_pull_request(&edited).is_ok());
        let mut elsewhere = pr_event("opened", true, false, "");
        elsewhere.pull_request.base_branch = "release".into();
        assert!(matches!(
            base.fires_on_pull_request(&elsewhere),
            Err(Skip::BaseNotMatched { invert: false, .. })
        ));
        // The head branch does not matter, only the base.
        elsewhere.pull_request.head_branch = "main".into();
        assert!(base.fires_on_pull_request(&elsewhere).is_err());
        let inverted = trigger(&PR.replace("^main$", "^main$\n    invertRegex: true"));
        assert!(inverted.fires_on_pull_request(&elsewhere).is_ok());
        let mut other = pr_event("opened", true, false, "");
        other.repository.name = "other".into();
        assert_eq!(
            base.fires_on_pull_request(&other),
            Err(Skip::OtherRepository)
        );
        // Push triggers ignore pull requests and pull-request triggers ignore pushes.
        assert_eq!(
            trigger(MAIN).fires_on_pull_request(&pr_event("opened", true, false, "")),
            Err(Skip::PushesOnly)
        );
        assert_eq!(
            base.fires(&push(branch("main")), &[]),
            Err(Skip::PullRequestsOnly)
        );
    }

    const WEBHOOK: &str = "name: hook\nfilename: cloudbuild.yaml\n\
        webhookConfig: {secret: projects/p/secrets/hook-secret/versions/1}\n\
        sourceToBuild: {uri: 'https://github.com/acme/app', ref: refs/heads/main, repoType: GITHUB}\n\
        substitutions: {_REF: $(body.ref)}\n";

    #[test]
    fn webhook_triggers_build_their_source_when_their_filter_compiles() {
        let filtered = format!("{WEBHOOK}filter: _REF == \"refs/heads/main\"\n");
        let hook = trigger(&filtered);
        let webhook = hook.webhook.as_ref().expect("a webhook trigger");
        assert_eq!(webhook.secret, "projects/p/secrets/hook-secret/versions/1");
        assert_eq!(webhook.git_ref, GitRef::Branch("main".into()));
        let github = hook.github.as_ref().unwrap();
        assert_eq!(
            (github.owner.as_str(), github.name.as_str()),
            ("acme", "app")
        );
        assert_eq!(
            hook.summary()["rule"],
            "webhook requests build the head of main of acme/app, when _REF == \"refs/heads/main\""
        );
        // A filter that is not CEL is located, and names the trigger.
        let refused = errors(&format!("{WEBHOOK}filter: _REF == \n"));
        assert!(
            refused.starts_with("trigger.yaml:6:")
                && refused.contains("filter: trigger \"hook\": the filter is not CEL"),
            "{refused}"
        );
        for (yaml, expected) in [
            (
                WEBHOOK.replace("refs/heads/main", "main"),
                "\"main\" is not a branch (refs/heads/B) or a tag (refs/tags/T)",
            ),
            (
                WEBHOOK.replace("GITHUB", "GITLAB"),
                "builder builds GITHUB repositories only",
            ),
            (
                WEBHOOK.replace("projects/p/secrets/hook-secret/versions/1", "hook-secret"),
                "is not projects/P/secrets/NAME/versions/V",
            ),
            (
                "name: f\nfilename: c.yaml\nfilter: 'true'\n".to_string(),
                "`filter` and `sourceToBuild` are for webhook triggers",
            ),
        ] {
            let refused = errors(&yaml);
            assert!(refused.contains(expected), "{refused}");
        }
    }

    #[test]
    fn cancelling_superseded_builds_is_asked_for_and_off_by_default() {
        assert!(!pr_trigger(None).cancels_superseded());
        let cancelling = trigger(&format!("{PR}    cancelSuperseded: true\n"));
        assert!(cancelling.cancels_superseded());
        assert_eq!(
            cancelling.summary()["rule"],
            "pull requests into branches matching \"^main$\" of acme-ml/training-pipeline \
             (COMMENTS_DISABLED, a new build cancelling the older ones)"
        );
        let refused = errors(&format!("{PR}    cancelSuperseded: maybe\n"));
        assert!(
            refused.contains("github.pullRequest.cancelSuperseded"),
            "{refused}"
        );
    }

    #[test]
    fn comments_build_only_as_a_new_gcbrun_on_a_known_open_pull_request() {
        let trigger = pr_trigger(Some("COMMENTS_ENABLED"));
        let pull_request = pr_event("opened", false, true, "").pull_request;
        let writer = pr_comment("OWNER", "/gcbrun");
        assert_eq!(
            trigger.fires_on_comment(&writer, None),
            Err(Skip::UnknownPullRequest(7))
        );
        let mut closed = pull_request.clone();
        closed.open = false;
        assert_eq!(
            trigger.fires_on_comment(&writer, Some(&closed)),
            Err(Skip::PullRequestClosed(7))
        );
        let mut edited = writer.clone();
        edited.action = "edited".into();
        assert_eq!(
            trigger.fires_on_comment(&edited, Some(&pull_request)),
            Err(Skip::CommentAction("edited".into()))
        );
        let mut on_issue = writer.clone();
        on_issue.on_pull_request = false;
        assert_eq!(
            trigger.fires_on_comment(&on_issue, Some(&pull_request)),
            Err(Skip::NotAPullRequest)
        );
        assert_eq!(
            trigger.fires_on_comment(&pr_comment("OWNER", "LGTM"), Some(&pull_request)),
            Err(Skip::NoGcbrun)
        );
        let mut release = pull_request.clone();
        release.base_branch = "release".into();
        assert!(matches!(
            trigger.fires_on_comment(&writer, Some(&release)),
            Err(Skip::BaseNotMatched { .. })
        ));
    }

    #[test]
    fn pull_request_builds_get_cloud_builds_built_ins() {
        let trigger = pr_trigger(None);
        let event = pr_event("opened", false, true, "");
        let (built_ins, values) =
            trigger.pull_request_built_ins(&event.repository, &event.pull_request);
        let sha = "3".repeat(40);
        for (key, value) in [
            ("COMMIT_SHA", sha.as_str()),
            ("SHORT_SHA", "3333333"),
            ("BRANCH_NAME", "feature/x"),
            ("REF_NAME", "feature/x"),
            ("TAG_NAME", ""),
            ("REPO_FULL_NAME", "Acme-ML/training-pipeline"),
            ("TRIGGER_NAME", "pr"),
        ] {
            assert_eq!(built_ins[key], value, "{key}");
        }
        let expected: Values = [
            ("_BASE_BRANCH", "main"),
            ("_HEAD_BRANCH", "feature/x"),
            (
                "_HEAD_REPO_URL",
                "https://github.com/someone/training-pipeline.git",
            ),
            ("_PR_NUMBER", "7"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(values, expected);
    }

    #[test]
    fn an_unknown_comment_control_is_located() {
        let rendered = errors(&format!("{PR}    commentControl: ALWAYS\n"));
        assert_eq!(
            rendered,
            "trigger.yaml:8:21: github.pullRequest.commentControl: unknown comment control \
             \"ALWAYS\": one of COMMENTS_DISABLED, COMMENTS_ENABLED, \
             COMMENTS_ENABLED_FOR_EXTERNAL_CONTRIBUTORS_ONLY\n"
        );
        let both = PR.replace("  pullRequest:", "  push: {branch: main}\n  pullRequest:");
        assert!(errors(&both).contains("not both"));
        let no_branch = PR.replace("    branch: ^main$\n", "    invertRegex: true\n");
        assert!(errors(&no_branch).contains("set `branch`"));
    }

    #[test]
    fn bad_triggers_are_refused_with_their_locations() {
        let rendered = errors(&MAIN.replace("^main$", "(main"));
        assert!(rendered.contains("trigger.yaml:3:"), "{rendered}");
        assert!(rendered.contains("github.push.branch: invalid regular expression"));
        let rendered = errors(&format!("{MAIN}includedFiles: ['ok/*', 'src/[a-']\n"));
        assert!(
            rendered.contains("trigger.yaml:4:25: includedFiles[1]: glob"),
            "{rendered}"
        );
        let rendered = errors(&MAIN.replace("branch: ^main$", "branch: a, tag: b"));
        assert!(rendered.contains("not both"), "{rendered}");
        assert!(errors(&MAIN.replace("name: t", "name: -t")).contains("trigger name"));
        let outside = MAIN.replace("cloudbuild.yaml", "../x.yaml");
        assert!(errors(&outside).contains("not a relative path inside the repository"));
        assert!(errors(&MAIN.replace("filename: cloudbuild.yaml\n", "")).contains("`filename`"));
        let rendered = errors(&format!("{MAIN}includeFiles: [a]\n"));
        assert!(
            rendered.contains("did you mean \"includedFiles\""),
            "{rendered}"
        );
        let rendered = errors(&format!("{MAIN}substitutions: {{ENV: x}}\n"));
        assert!(rendered.contains("substitutions.ENV"), "{rendered}");
    }

    #[test]
    fn concurrency_groups_are_read_with_located_errors() {
        assert_eq!(trigger(MAIN).concurrency, None);
        let grouped = trigger(&format!(
            "{MAIN}substitutions: {{_SERVICE: api}}\n\
             concurrency: {{group: \"deploy-$_SERVICE-$BRANCH_NAME\", limit: 2, onConflict: QUEUE}}\n"
        ));
        let concurrency = grouped.concurrency.expect("a concurrency");
        assert_eq!(concurrency.limit, 2);
        assert_eq!(concurrency.on_conflict, OnConflict::Queue);
        let values = Values::from([
            ("_SERVICE".to_string(), "api".to_string()),
            ("BRANCH_NAME".to_string(), "main".to_string()),
        ]);
        assert_eq!(concurrency.group_of(&values).name, "deploy-api-main");
        let cancelling = trigger(&format!(
            "{MAIN}concurrency: {{group: deploy, onConflict: CANCEL_OLDER}}\n"
        ));
        assert_eq!(
            cancelling.concurrency.map(|c| c.on_conflict),
            Some(OnConflict::CancelOlder)
        );
        let defaults = trigger(&format!("{MAIN}concurrency: {{group: deploy}}\n"))
            .concurrency
            .expect("a concurrency");
        assert_eq!(
            (defaults.limit, defaults.on_conflict),
            (1, OnConflict::Queue)
        );
        let unresolved = errors(&format!(
            "{MAIN}concurrency: {{group: \"deploy-$_SERVICE\"}}\n"
        ));
        assert!(
            unresolved.contains("concurrency.group")
                && unresolved.contains("$_SERVICE")
                && unresolved.contains(":4:"),
            "{unresolved}"
        );
        let zero = errors(&format!("{MAIN}concurrency: {{group: deploy, limit: 0}}\n"));
        assert!(
            zero.contains("concurrency.limit") && zero.contains("at least 1"),
            "{zero}"
        );
        let mode = errors(&format!(
            "{MAIN}concurrency: {{group: deploy, onConflict: WAIT}}\n"
        ));
        assert!(mode.contains("concurrency.onConflict"), "{mode}");
        let nameless = errors(&format!("{MAIN}concurrency: {{limit: 1}}\n"));
        assert!(nameless.contains("concurrency.group"), "{nameless}");
    }

    /// A group is named when its build is queued: a built-in set only when the build runs
    /// (`BUILD_ID`, `PROJECT_ID`, …) would name every build's group alike (as empty), so it is
    /// refused at `concurrency.group`; those a triggered build has by then are taken.
    #[test]
    fn a_concurrency_group_names_only_what_is_known_when_its_build_is_queued() {
        for group in [
            "deploy-$BUILD_ID",
            "deploy-${PROJECT_ID}",
            "$LOCATION-deploy",
        ] {
            let refused = errors(&format!("{MAIN}concurrency: {{group: \"{group}\"}}\n"));
            let key = group
                .trim_start_matches("deploy-")
                .trim_end_matches("-deploy")
                .replace(['{', '}'], "");
            assert!(
                refused.contains(":4:")
                    && refused.contains("concurrency.group")
                    && refused.contains(&format!(
                        "`{key}` does not resolve when the build is queued"
                    )),
                "{refused}"
            );
        }
        let group: String = QUEUED_BUILT_INS
            .iter()
            .map(|key| format!("-${key}"))
            .collect();
        let known = trigger(&format!(
            "{MAIN}concurrency: {{group: \"deploy{group}\"}}\n"
        ));
        assert!(known.concurrency.is_some());
        // They are the built-ins a triggered build is queued with.
        let repository = push(GitRef::Branch("main".into())).repository;
        let built_ins = known.built_ins(&repository, None, &"1".repeat(40));
        let keys: Vec<&str> = built_ins.keys().map(String::as_str).collect();
        assert_eq!(keys, QUEUED_BUILT_INS);
    }

    #[test]
    fn approval_config_holds_builds_for_approval() {
        assert!(!trigger(MAIN).approval_required);
        let held = trigger(&format!(
            "{MAIN}approvalConfig: {{approvalRequired: true}}\n"
        ));
        assert!(held.approval_required);
        assert_eq!(held.summary()["approvalRequired"], true);
        let (_, warnings) = load(format!("{MAIN}approvalConfig: {{}}\n").as_bytes()).unwrap();
        assert_eq!(warnings.iter().count(), 0, "no longer unsupported");
        let rendered = errors(&format!(
            "{MAIN}approvalConfig: {{approvalRequired: maybe}}\n"
        ));
        assert!(
            rendered.contains("approvalConfig.approvalRequired") && rendered.contains(":4:"),
            "{rendered}"
        );
        let rendered = errors(&format!("{MAIN}approvalConfig: {{required: true}}\n"));
        assert!(rendered.contains("approvalConfig.required"), "{rendered}");
    }

    #[test]
    fn a_trigger_lists_the_secrets_its_builds_may_read_by_name() {
        assert!(trigger(MAIN).secrets.is_empty());
        let listed = trigger(&format!("{MAIN}secrets: [db-pass, API_TOKEN]\n"));
        assert_eq!(
            listed.secrets,
            BTreeSet::from(["API_TOKEN".to_string(), "db-pass".to_string()])
        );
        let rendered = errors(&format!(
            "{MAIN}secrets: [ok, projects/p/secrets/db/versions/1]\n"
        ));
        assert!(
            rendered.contains(
                "trigger.yaml:4:15: secrets[1]: \"projects/p/secrets/db/versions/1\" is not a \
                 secret's name: write NAME of projects/P/secrets/NAME/versions/V"
            ),
            "{rendered}"
        );
    }
}
