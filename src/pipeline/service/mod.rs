//! The build service behind `builder serve`: receiving GitHub deliveries, deciding which triggers
//! they fire, queueing those builds durably, and running the queue on the local engine, a bounded
//! number of builds at once. The HTTP layer (`api`) only turns requests into these calls.
//!
//! One concern a file: `intake` takes deliveries, `queue` runs the queue, `commands`
//! answers the API's queries and commands, `schedules` runs the schedules; this module holds
//! the service they share and what the API asks of it (a submission, a trigger's run by hand).
//!
//! Nothing accepted is lost and nothing is built twice:
//! * a delivery is recorded, with the builds of the triggers it fires, in one transaction before
//!   it is answered (deliveries that arrive meanwhile share that transaction); a redelivery (same
//!   `X-GitHub-Delivery`) finds its record and queues nothing. A delivery that queues nothing (a
//!   ping, another event, a push no trigger wants, a forged one) is answered at once and recorded
//!   just after: a crash may lose its record, never a build;
//! * triggers with `includedFiles`/`ignoredFiles` need the push's changed files, computed from the
//!   repository after the answer: the delivery stays PENDING (with its body) until they are
//!   decided, and its remaining builds are queued with that decision, in one transaction, once;
//! * a build is claimed from the queue atomically; one that was running when the server died is
//!   swept and closed as INTERNAL_ERROR at the next start (as `builder submit` does), queued ones
//!   run then.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use crate::adapters::registry::RegistryError;
use crate::adapters::runtime::Backend;
use crate::adapters::source::git::{Mirror, Rewrites};
pub use crate::adapters::store::BuildQuery;
use crate::adapters::store::{self, NewDelivery, QueuedBuild, Recorded, Store};
use crate::core::build::{Outcome, Request, Status};
use crate::core::plan::Context;
use crate::core::substitute::Values;
use crate::core::triggers::{self, BuildSource, Trigger, TriggerResult};
use crate::core::webhooks::{self, Delivery, GitRef, Push, Repository, Signature, SignatureError};
use crate::core::wire;
use crate::pipeline::execute::Run;
use crate::pipeline::live::{LiveLog, LiveLogs, Snapshot};
use crate::pipeline::{self, Machine, Reading, Recipe};
pub use commands::Follower;
pub use schedules::{Clock, LastRunView, ScheduleView, Schedules, SystemClock};
pub use trigger_files::{TriggerFiles, Triggers};

mod commands;
mod files;
mod intake;
mod kfp;
mod queue;
mod rows;
mod schedules;
mod trigger_files;

pub use intake::{Admitted, Headers, Receipt, Rejection, Unrecorded};
use intake::{Written, write_deliveries};
pub use kfp::{KfpRepository, Listing};

/// How the service is set up.
pub struct Settings {
    pub data_dir: PathBuf,
    /// What this machine adds to every build: `$PROJECT_ID`, aliases, secrets, registries.
    pub machine: Machine,
    pub webhook_secret: Vec<u8>,
    pub rewrites: Rewrites,
    pub max_concurrent_builds: usize,
    /// `HOST[:PORT]/PATH`: where the KFP registry API keeps packages, one OCI repository each
    /// (`PATH/{project}/{repository}/{package}`); `None` serves no KFP API.
    pub kfp_registry: Option<String>,
}

/// Why a request of the API failed.
#[derive(Debug)]
pub enum Failed {
    NotFound(String),
    /// The request is malformed or names something that does not exist in the repository.
    Invalid(String),
    /// The resource is not in a state that allows it.
    Conflict(String),
    /// The service's own failure, not the request's: logged where it is answered.
    Internal(Internal),
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotFound(m) | Self::Invalid(m) | Self::Conflict(m) => f.write_str(m),
            Self::Internal(e) => e.fmt(f),
        }
    }
}

/// What failed inside the service, with its source.
#[derive(Debug)]
pub enum Internal {
    Store(store::Error),
    /// A file or directory the service keeps (an upload, a trigger file).
    File {
        path: PathBuf,
        error: std::io::Error,
    },
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
            Internal::File { path, error } => write!(f, "{}: {error}", path.display()),
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
            Internal::File { error, .. } => Some(error),
            Internal::Task(e) => Some(e),
            Internal::NoNextRun { .. } => None,
            Internal::Registry(e) => Some(e),
        }
    }
}

impl Failed {
    /// A failure to read or write `path`, one of the service's own files.
    fn file(path: &Path) -> impl Fn(std::io::Error) -> Failed {
        let path = path.to_path_buf();
        move |error| {
            Failed::Internal(Internal::File {
                path: path.clone(),
                error,
            })
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
    /// Woken when builds are queued or deliveries wait for their changed files.
    work: Notify,
    /// Whether some delivery may wait for its changed files: the store is asked only then.
    pending: AtomicBool,
    /// Deliveries on their way to the store (see `intake::write_deliveries`).
    recorder: mpsc::Sender<(NewDelivery, Written)>,
    /// The task that writes them, until the process takes it to watch.
    writer: Mutex<Option<JoinHandle<()>>>,
    /// The logs of the builds this process runs, for their followers.
    live: LiveLogs,
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
        let (recorder, queue) = mpsc::channel(intake::MAX_WAITING);
        let writer = tokio::spawn(write_deliveries(store.clone(), queue));
        Self {
            store,
            runtime,
            triggers,
            schedules,
            clock,
            retries: Default::default(),
            settings,
            work: Notify::new(),
            // A previous run may have left some.
            pending: AtomicBool::new(true),
            recorder,
            writer: Mutex::new(Some(writer)),
            live: LiveLogs::default(),
        }
    }

    /// The task that writes deliveries (see `intake::write_deliveries`), for the process to watch:
    /// without it no delivery is recorded, so its end must end the server. It ends once the
    /// service is dropped. Given once; `None` after.
    pub fn delivery_writer(&self) -> Option<JoinHandle<()>> {
        self.writer.lock().expect("delivery writer").take()
    }

    /// A build of `commit` for `trigger`, reached through `git_ref` (none for a commit run by
    /// hand), queued from `delivery` if one fired it.
    fn queued_build(
        &self,
        trigger: &Trigger,
        repository: &Repository,
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
            clone_url: repository.clone_url.clone(),
            commit: commit.to_string(),
            built_ins,
            overrides: trigger.substitutions.clone(),
        };
        QueuedBuild {
            id: uuid::Uuid::new_v4().to_string(),
            trigger: Some(trigger.name.clone()),
            schedule: None,
            delivery: delivery.map(str::to_string),
            source: serde_json::json!({
                "kind": "github",
                "repository": repository.full_name,
                "cloneUrl": repository.clone_url,
                "ref": git_ref.map(GitRef::name),
                "commit": commit,
            }),
            substitutions,
            request,
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

/// A submitted build's config, checked as a manual build's.
fn upload_recipe(request: &Request) -> Result<Recipe, pipeline::Refused> {
    let Request::Upload {
        upload,
        config,
        config_name,
        overrides,
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
    };
    Recipe::load(config.as_bytes(), reading)
}
