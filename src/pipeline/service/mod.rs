//! The build service behind `builder serve`: receiving GitHub deliveries, deciding which triggers
//! they fire, queueing those builds durably, and running the queue on the local engine, a bounded
//! number of builds at once. The HTTP layer (`api`) only turns requests into these calls.
//!
//! One concern a file: `intake` takes deliveries, `queue` runs the queue, `fetch` fetches
//! repositories, `commands`
//! answers the API's queries and commands, `schedules` runs the schedules, `resources` keeps the
//! triggers and schedules of the files and of the store; this module holds
//! the service they share and what the API asks of it (a submission, a trigger's run by hand).
//!
//! Nothing accepted is lost and nothing is built twice:
//! * a delivery is recorded, with the builds of the triggers it fires, in one transaction before
//!   it is answered (deliveries that arrive meanwhile share that transaction); a redelivery (same
//!   `X-GitHub-Delivery`) finds its record and queues nothing. A delivery that queues nothing (a
//!   ping, another event, a push no trigger wants, a forged one) is answered at once and recorded
//!   just after: a crash may lose its record, never a build;
//! * triggers with `includedFiles`/`ignoredFiles` need the push's changed files, computed from the
//!   repository after the answer, each delivery on a task of its own (`fetch`: bounded in time,
//!   retried): the delivery stays PENDING (with its body) until they are decided, and its
//!   remaining builds are queued with that decision, in one transaction, once; a fetch that
//!   failed every try completes it with each trigger's reason;
//! * a build is claimed from the queue atomically; one that was running when the server died is
//!   swept and closed as INTERNAL_ERROR at the next start (as `builder submit` does), queued ones
//!   run then.

use std::collections::BTreeSet;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, broadcast, mpsc};
use tokio::task::JoinHandle;

use crate::adapters::registry::RegistryError;
use crate::adapters::runtime::Backend;
use crate::adapters::source;
use crate::adapters::source::git::{Mirror, Rewrites};
pub use crate::adapters::store::BuildQuery;
use crate::adapters::store::{self, NewDelivery, QueuedBuild, Recorded, Store};
use crate::core::build::{ApprovalResult, Decision, Outcome, Request, Status};
use crate::core::plan::{Context, Grant, SecretScope};
use crate::core::substitute::Values;
use crate::core::triggers::{self, BuildSource, GitHubServer, OnConflict, Trigger, TriggerResult};
use crate::core::webhooks::{self, Delivery, GitRef, Push, Repository, Signature, SignatureError};
use crate::core::wire;
use crate::pipeline::execute::Run;
use crate::pipeline::live::{LiveLog, LiveLogs, Snapshot};
use crate::pipeline::{self, Machine, Reading, Recipe};
pub use commands::Follower;
use queue::CHANGES_WAITING;
pub use queue::{TICK, WorkerSettings};
pub use schedules::{Clock, LastRunView, ScheduleView, Schedules, SystemClock};
pub use trigger_files::{TriggerFiles, Triggers};

mod commands;
mod fetch;
mod files;
mod intake;
mod kfp;
mod notifications;
mod queue;
mod reports;
mod resources;
mod retention;
mod rows;
mod schedules;
mod trigger_files;
mod webhook_triggers;

pub use fetch::FetchPolicy;
pub use intake::{Admitted, Headers, Receipt, Rejection, Unrecorded};
use intake::{Written, write_deliveries};
pub use kfp::{KfpRepository, Listing};
pub use notifications::{Notifying, load_notifiers};
pub use reports::Reporting;
pub use resources::Defined;
pub use retention::Unfinished as RetentionStopped;
pub use webhook_triggers::WebhookRun;

/// How many times an outgoing call (a report to GitHub, a notification) is tried before it is
/// given up.
const ATTEMPTS: u32 = 5;
/// The delay before the first retry; each next one is twice the last (1, 2, 4, 8 s).
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// When an outgoing call that failed for the `attempts`th time is tried again: after a doubling
/// delay, if trying again may work and its attempts are not spent; `None` gives it up.
fn retry_at(attempts: u32, may_work: bool, now: SystemTime) -> Option<SystemTime> {
    (may_work && attempts < ATTEMPTS).then(|| now + FIRST_RETRY * 2u32.pow(attempts - 1))
}

/// How the service is set up.
pub struct Settings {
    pub data_dir: PathBuf,
    /// What this machine adds to every build: `$PROJECT_ID`, aliases, secrets, registries.
    pub machine: Machine,
    pub webhook_secret: Vec<u8>,
    /// The secrets builds submitted to the server (`builder submit --server`, `POST /v1/builds`)
    /// may read: `submitSecrets`. A trigger's builds read its own list instead.
    pub submit_secrets: BTreeSet<String>,
    /// The GitHub server triggers' repositories are fetched from (see [`GitHubServer`]).
    pub github: GitHubServer,
    /// Applied to the URL derived from `github`, e.g. to fetch from local mirrors.
    pub rewrites: Rewrites,
    /// How fetches of repositories are bounded and retried.
    pub fetch: FetchPolicy,
    /// `HOST[:PORT]/PATH`: where the KFP registry API keeps packages, one OCI repository each
    /// (`PATH/{project}/{repository}/{package}`); `None` serves no KFP API.
    pub kfp_registry: Option<String>,
    /// Where triggered builds are reported on GitHub; `None` reports nothing.
    pub reporting: Option<Reporting>,
    /// Where builds' status changes are published; `None` publishes none.
    pub notifying: Option<Notifying>,
    /// How much an uploaded source may unpack to.
    pub upload_limits: source::Limits,
}

/// Why a request of the API failed.
#[derive(Debug)]
pub enum Failed {
    NotFound(String),
    /// The request is malformed or names something that does not exist in the repository.
    Invalid(String),
    /// The resource is not in a state that allows it.
    Conflict(String),
    /// The request does not carry what lets it through (a webhook trigger's secret).
    Forbidden(String),
    /// The service's own failure, not the request's: logged where it is answered.
    Internal(Internal),
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotFound(m) | Self::Invalid(m) | Self::Conflict(m) | Self::Forbidden(m) => {
                f.write_str(m)
            }
            Self::Internal(e) => e.fmt(f),
        }
    }
}

/// What failed inside the service, with its source.
#[derive(Debug)]
pub enum Internal {
    Store(store::Error),
    /// A blocking task (updating a repository's mirror) panicked or was cancelled.
    Task(tokio::task::JoinError),
    /// A schedule whose expression has no run after now: its file was checked at load, so this
    /// is not the caller's doing.
    NoNextRun {
        schedule: String,
    },
    /// The registry that keeps templates answered what the API cannot pass on as the caller's.
    Registry(RegistryError),
}

impl std::fmt::Display for Internal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Internal::Store(e) => e.fmt(f),
            Internal::Task(e) => e.fmt(f),
            Internal::NoNextRun { schedule } => write!(f, "schedule {schedule:?} has no next run"),
            Internal::Registry(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Internal {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Internal::Store(e) => Some(e),
            Internal::Task(e) => Some(e),
            Internal::NoNextRun { .. } => None,
            Internal::Registry(e) => Some(e),
        }
    }
}

impl From<store::Error> for Failed {
    fn from(e: store::Error) -> Self {
        Self::Internal(Internal::Store(e))
    }
}

/// A manual run of a trigger: exactly one of `branch`, `tag`, `commit`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ManualRun {
    pub branch: Option<String>,
    pub tag: Option<String>,
    pub commit: Option<String>,
    #[serde(default)]
    pub substitutions: Values,
}

/// `builder submit --server`'s request: the config's text, the substitutions, and the source
/// uploaded before (`POST /v1/uploads`), if any.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Submission {
    pub config: String,
    /// The config's file name, for messages.
    #[serde(default = "default_config_name")]
    pub config_name: String,
    #[serde(default)]
    pub substitutions: Values,
    pub upload: Option<String>,
    /// The build waits PENDING for a person's approval before it is queued.
    #[serde(default)]
    pub require_approval: bool,
}

fn default_config_name() -> String {
    "cloudbuild.yaml".into()
}

pub struct Service {
    store: Arc<dyn Store>,
    runtime: Arc<dyn Backend>,
    triggers: TriggerFiles,
    schedules: Schedules,
    /// The scheduler's time.
    clock: Arc<dyn Clock>,
    /// When schedules whose run failed to start are tried again.
    retries: schedules::Retries,
    settings: Settings,
    /// Woken when deliveries wait for their changed files.
    work: Notify,
    /// Woken when builds are queued: this process's worker, if it has one, claims them.
    queued: Notify,
    /// Woken when builds are queued, start or end: the reporter has something to tell GitHub.
    report_due: Notify,
    /// Woken with `report_due`: the notifier has statuses to publish.
    events_due: Notify,
    /// Woken when the store tells that the triggers or schedules it keeps changed.
    resources_changed: Notify,
    /// Whether some delivery may wait for its changed files: the store is asked only then.
    pending: AtomicBool,
    /// The pending deliveries being decided (see `intake::decide_pending`).
    undecided: Mutex<HashSet<String>>,
    /// Deliveries on their way to the store (see `intake::write_deliveries`).
    recorder: mpsc::Sender<(NewDelivery, Written)>,
    /// Rejected deliveries dropped unrecorded while the writer was behind: counted with its
    /// next batch, so that the count stays exact while the sample stays bounded.
    dropped: Arc<AtomicU64>,
    /// Where the task that writes them reads them, until a process that takes deliveries
    /// starts it (a `builder worker` takes none).
    deliveries: Mutex<Option<mpsc::Receiver<(NewDelivery, Written)>>>,
    /// The logs of the builds this process runs, for their followers.
    live: LiveLogs,
    /// The builds other processes sharing the store changed, as it tells them (see
    /// [`Service::listen`]): followers of builds run elsewhere wait on this.
    changed: broadcast::Sender<String>,
    /// Whether the store tells this process of changes now: followers then poll seldom.
    hearing: AtomicBool,
}

impl Service {
    pub fn new(
        store: Arc<dyn Store>,
        runtime: Arc<dyn Backend>,
        triggers: TriggerFiles,
        schedules: Schedules,
        clock: Arc<dyn Clock>,
        settings: Settings,
    ) -> Self {
        let (recorder, deliveries) = mpsc::channel(intake::MAX_WAITING);
        Self {
            store,
            runtime,
            triggers,
            schedules,
            clock,
            retries: Default::default(),
            settings,
            work: Notify::new(),
            queued: Notify::new(),
            report_due: Notify::new(),
            events_due: Notify::new(),
            resources_changed: Notify::new(),
            // A previous run may have left some.
            pending: AtomicBool::new(true),
            undecided: Mutex::default(),
            recorder,
            dropped: Arc::default(),
            deliveries: Mutex::new(Some(deliveries)),
            live: LiveLogs::default(),
            changed: broadcast::channel(CHANGES_WAITING).0,
            hearing: AtomicBool::new(false),
        }
    }

    /// Starts the task that writes deliveries (see `intake::write_deliveries`), for the process
    /// to watch: without it no delivery is recorded, so its end must end the server. It ends
    /// once the service is dropped. Started once; `None` after.
    pub fn delivery_writer(&self) -> Option<JoinHandle<()>> {
        let deliveries = self.deliveries.lock().expect("delivery writer").take()?;
        Some(tokio::spawn(write_deliveries(
            self.store.clone(),
            deliveries,
            self.dropped.clone(),
        )))
    }

    /// A build of `commit` for `trigger`, fetched from `url` (its [`Trigger::source_url`]),
    /// reached through `git_ref` (none for a commit run by hand), queued from `delivery` if one
    /// fired it.
    fn queued_build(
        &self,
        trigger: &Trigger,
        repository: &Repository,
        url: &str,
        git_ref: Option<&GitRef>,
        commit: &str,
        delivery: Option<&str>,
    ) -> QueuedBuild {
        let built_ins = trigger.built_ins(repository, git_ref, commit);
        let substitutions: Values = built_ins
            .iter()
            .chain(&trigger.substitutions)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let request = Request::Push {
            trigger: trigger.name.clone(),
            clone_url: url.to_string(),
            commit: commit.to_string(),
            built_ins,
            overrides: trigger.substitutions.clone(),
            secrets: trigger.secrets.clone(),
            approved: true,
        };
        QueuedBuild {
            id: uuid::Uuid::new_v4().to_string(),
            trigger: Some(trigger.name.clone()),
            schedule: None,
            delivery: delivery.map(str::to_string),
            source: serde_json::json!({
                "kind": "github",
                "repository": repository.full_name,
                "cloneUrl": url,
                "ref": git_ref.map(GitRef::name),
                "commit": commit,
            }),
            request,
            // Its config is read from the commit when it is claimed: a worker of the default
            // pool reads it and gives it back to the queue for the pool it names.
            pool: None,
            queue_ttl: None,
            report: self.settings.reporting.is_some(),
            approval_required: trigger.approval_required,
            concurrency: trigger
                .concurrency
                .as_ref()
                .map(|concurrency| concurrency.group_of(&substitutions)),
            skips_full_group: trigger
                .concurrency
                .as_ref()
                .is_some_and(|concurrency| concurrency.on_conflict == OnConflict::Skip),
            // After the group, expanded with them.
            substitutions,
        }
    }
}

/// Refuses substitution keys that are not user keys (`_NAME`).
fn check_user_keys(substitutions: &Values) -> Result<(), Failed> {
    match substitutions
        .keys()
        .find(|k| !crate::core::substitute::is_user_key(k))
    {
        Some(key) => Err(Failed::Invalid(format!(
            "substitution key {key:?} does not respect format ^_[A-Z0-9_]+$"
        ))),
        None => Ok(()),
    }
}

/// The secrets a queued build may read, as its request carries them: its trigger's, or the
/// server's for submissions, as they were when it was queued.
fn secret_scope(request: &Request) -> SecretScope {
    let (names, grant) = match request {
        Request::Push {
            trigger, secrets, ..
        } => (secrets, Grant::Trigger(trigger.clone())),
        Request::Upload { secrets, .. } => (secrets, Grant::Server),
    };
    SecretScope {
        names: names.clone(),
        grant,
    }
}

/// Runs CPU-bound resolving (loading a config, expanding its aliases, substituting, planning) on
/// the blocking pool: it takes as long as the config makes it, and a hostile config must hold one
/// blocking thread, never the async threads that answer every other request.
async fn resolving<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    tokio::task::spawn_blocking(work).await
}

/// A submission's request once its config resolves as build `build_id` on `machine`, and the
/// pool it names.
fn check_submission(
    build_id: &str,
    request: Request,
    machine: &Machine,
) -> Result<(Request, Option<String>, Option<Duration>), pipeline::Refused> {
    let recipe = upload_recipe(&request)?;
    let resolved = pipeline::resolve(build_id, &recipe, machine)?;
    Ok((request, resolved.pool, queue_ttl(resolved.queue_ttl)))
}

/// A resolved build's `queueTtl` (seconds) as the queue keeps it; none if it is not a duration
/// (validation refuses a negative one).
fn queue_ttl(seconds: Option<f64>) -> Option<Duration> {
    Duration::try_from_secs_f64(seconds?).ok()
}

/// A submitted build's config, checked as a manual build's.
fn upload_recipe(request: &Request) -> Result<Recipe, pipeline::Refused> {
    let Request::Upload {
        upload,
        config,
        config_name,
        overrides,
        ..
    } = request
    else {
        unreachable!("only uploads carry their config");
    };
    let reading = Reading {
        file: config_name.clone(),
        context: Context::Manual,
        built_ins: Values::new(),
        overrides: overrides.clone(),
        timeout: None,
        uploads: upload.is_some(),
        // Trust is the server's setting (`Machine::trusted`), never the uploader's.
        trusted: false,
        secrets: secret_scope(request),
    };
    Recipe::load(config.as_bytes(), reading)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::registry::{self, Registries};
    use crate::core::alias::Aliases;

    /// Ordering, not time: on one async thread, the task that resolves is polled first; if it
    /// resolved there, it would finish before the other request is even looked at.
    #[tokio::test(flavor = "current_thread")]
    async fn a_config_is_resolved_off_the_async_thread_while_others_are_answered() {
        let machine = Machine {
            project: "test".into(),
            aliases: Aliases::load(None).unwrap(),
            secrets_dir: None,
            registries: Registries::new(&registry::Settings::default()).unwrap(),
            trusted: false,
            log_limit: crate::pipeline::execute::DEFAULT_LOG_LIMIT,
        };
        let step = "- name: builder/busybox\n  args: [echo, '${_A}${_A}${_A}']\n";
        let request = Request::Upload {
            upload: None,
            config: format!("steps:\n{}substitutions: {{_A: abc}}\n", step.repeat(300)),
            config_name: "cloudbuild.yaml".into(),
            overrides: Values::new(),
            secrets: Default::default(),
        };
        let order = Arc::new(Mutex::new(Vec::new()));
        let submit = tokio::spawn({
            let order = order.clone();
            async move {
                let checked = resolving(move || check_submission("id", request, &machine)).await;
                order.lock().unwrap().push("resolved");
                checked
            }
        });
        let other = tokio::spawn({
            let order = order.clone();
            async move { order.lock().unwrap().push("answered") }
        });
        other.await.unwrap();
        submit.await.unwrap().unwrap().expect("the config resolves");
        assert_eq!(*order.lock().unwrap(), ["answered", "resolved"]);
    }
}
