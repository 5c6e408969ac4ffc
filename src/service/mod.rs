//! The build service behind `builder serve`: receiving GitHub deliveries, deciding which triggers
//! they fire, queueing those builds durably, and running the queue on the local engine, a bounded
//! number of builds at once. The HTTP layer (`api`) only turns requests into these calls.
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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, error, info, info_span, warn};

use crate::build::{Outcome, Status};
use crate::execute::Run;
use crate::pipeline::{self, Machine, Reading, Recipe};
use crate::plan::Context;
use crate::runtime::Backend;
use crate::source::git::{Mirror, Rewrites};
pub use crate::store::{BuildQuery, BuildRecord, DeliveryRecord, StepRecord};
use crate::store::{LogLine, NewDelivery, QueuedBuild, Recorded, Store, TriggerResult};
use crate::substitute::Values;
use crate::triggers::{self, BuildSource, Trigger};
use crate::webhooks::{self, Delivery, GitRef, Push, Repository, SignatureError};
pub use schedules::{Clock, LastRunView, ScheduleView, Schedules, SystemClock};
pub use trigger_files::{TriggerFiles, Triggers};

mod files;
mod schedules;
mod trigger_files;

/// How the service is set up.
pub struct Settings {
    pub data_dir: PathBuf,
    /// What this machine adds to every build: `$PROJECT_ID`, aliases, secrets, registries.
    pub machine: Machine,
    pub webhook_secret: Vec<u8>,
    pub rewrites: Rewrites,
    pub max_concurrent_builds: usize,
    /// The token that mutating API requests must carry; none refuses them.
    pub api_token: Option<String>,
    /// Reading builds, logs, triggers, schedules and deliveries needs the token too.
    pub reads_need_token: bool,
}

/// A delivery as it arrived: its headers and raw body.
pub struct Incoming<'a> {
    pub event: Option<&'a str>,
    pub delivery: Option<&'a str>,
    pub signature: Option<&'a str>,
    pub body: &'a [u8],
}

/// How a delivery was taken.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", tag = "result")]
pub enum Receipt {
    /// Recorded; `builds` were queued, and `pending` says whether triggers with file filters
    /// are still to decide.
    Accepted { builds: Vec<String>, pending: bool },
    /// This delivery was already received.
    Duplicate,
    /// A ping, or an event that starts no build; recorded.
    Ignored { reason: String },
}

/// Why a delivery was refused; nothing was queued.
#[derive(Debug, Clone, PartialEq)]
pub enum Rejection {
    /// Not from GitHub (or not signed with our secret): recorded as rejected.
    Unauthorized(SignatureError),
    BadRequest(String),
    /// The record could not be written; GitHub will redeliver.
    Unavailable(String),
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unauthorized(e) => write!(f, "{e}"),
            Self::BadRequest(message) | Self::Unavailable(message) => f.write_str(message),
        }
    }
}

/// Why a request of the API failed.
#[derive(Debug)]
pub enum Failed {
    NotFound(String),
    /// The request is malformed or names something that does not exist in the repository.
    Invalid(String),
    /// The resource is not in a state that allows it.
    Conflict(String),
    Internal(String),
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotFound(m) | Self::Invalid(m) | Self::Conflict(m) | Self::Internal(m) => {
                f.write_str(m)
            }
        }
    }
}

impl From<crate::store::Error> for Failed {
    fn from(e: crate::store::Error) -> Self {
        Self::Internal(e.to_string())
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

/// What a queued build runs, kept in its record until it runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
enum Request {
    /// A trigger's build of a commit.
    #[serde(rename_all = "camelCase")]
    Push {
        trigger: String,
        clone_url: String,
        commit: String,
        built_ins: Values,
        overrides: Values,
    },
    /// `builder submit --server`: an uploaded source (or none) and the config's text.
    #[serde(rename_all = "camelCase")]
    Upload {
        upload: Option<String>,
        config: String,
        config_name: String,
        overrides: Values,
    },
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
    /// Deliveries on their way to the store (see [`write_deliveries`]).
    recorder: mpsc::UnboundedSender<(NewDelivery, Written)>,
    /// The task that writes them, until the process takes it to watch.
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// Where a delivery's writer learns how it was written.
type Written = oneshot::Sender<Result<Recorded, String>>;

/// The most deliveries written in one transaction.
const MAX_BATCH: usize = 256;

/// How often the queue looks at the store without being woken: builds other processes queued
/// or abandoned are found, a claim that failed is tried again, and a store that is gone is
/// noticed (see [`Store::check`]) even on an idle server.
const TICK: std::time::Duration = std::time::Duration::from_secs(2);

/// Writes deliveries as they come, each transaction taking every delivery that arrived while the
/// one before it was being written: one write to disk for all of them, so that durably recording
/// each delivery before answering it does not cost one disk write each.
async fn write_deliveries(
    store: Arc<dyn Store>,
    mut queue: mpsc::UnboundedReceiver<(NewDelivery, Written)>,
) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let (deliveries, waiting): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        match store.record_deliveries(&deliveries).await {
            Ok(recorded) => {
                for (waiter, recorded) in waiting.into_iter().zip(recorded) {
                    let _ = waiter.send(Ok(recorded));
                }
            }
            Err(e) => {
                for waiter in waiting {
                    let _ = waiter.send(Err(e.to_string()));
                }
            }
        }
    }
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
        let (recorder, queue) = mpsc::unbounded_channel();
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
        }
    }

    /// The task that writes deliveries (see [`write_deliveries`]), for the process to watch:
    /// without it no delivery is recorded, so its end must end the server. It ends once the
    /// service is dropped. Given once; `None` after.
    pub fn delivery_writer(&self) -> Option<JoinHandle<()>> {
        self.writer.lock().expect("delivery writer").take()
    }

    pub async fn builds(&self, query: &BuildQuery) -> Result<Vec<BuildRecord>, Failed> {
        Ok(self.store.list_builds(query).await?)
    }

    pub async fn build(&self, id: &str) -> Result<BuildRecord, Failed> {
        self.store
            .get_build(id)
            .await?
            .ok_or_else(|| Failed::NotFound(format!("no build {id:?}")))
    }

    /// The build's log lines after `after` (0: all), and the build as it was just before they
    /// were read: if it had finished, no line follows these.
    /// A build's log lines after `after`: the first `limit` of them, or all.
    pub async fn log(
        &self,
        id: &str,
        after: i64,
        limit: Option<u32>,
    ) -> Result<(Vec<LogLine>, BuildRecord), Failed> {
        let build = self.build(id).await?;
        Ok((self.store.logs(&build.id, after, limit).await?, build))
    }

    pub async fn deliveries(&self, limit: u32) -> Result<Vec<DeliveryRecord>, Failed> {
        Ok(self.store.list_deliveries(limit).await?)
    }

    pub fn trigger(&self, name: &str) -> Result<Trigger, Failed> {
        self.triggers.get(name)
    }

    /// Creates a trigger from a trigger file (YAML or JSON), or replaces the one named
    /// `replacing`; returns it with its warnings.
    pub fn put_trigger(
        &self,
        bytes: &[u8],
        replacing: Option<&str>,
    ) -> Result<(Trigger, String), Failed> {
        self.triggers.put(bytes, replacing)
    }

    /// Deletes a trigger that no schedule runs.
    pub fn delete_trigger(&self, name: &str) -> Result<(), Failed> {
        if let Some(schedule) = self.schedule_running(name) {
            return Err(Failed::Conflict(format!(
                "schedule {:?} runs trigger {name:?}",
                schedule.name
            )));
        }
        self.triggers.delete(name)
    }

    /// Cancels a build: a queued one never runs, a running one is stopped by its holder, in
    /// whichever process or machine, within a heartbeat (its status becomes CANCELLED when its
    /// steps have stopped).
    pub async fn cancel(&self, id: &str) -> Result<(), Failed> {
        let build = self.build(id).await?;
        if self.store.cancel_queued(&build.id).await?
            || self.store.request_cancel(&build.id).await?
        {
            return Ok(());
        }
        let build = self.build(id).await?;
        Err(Failed::Conflict(format!(
            "build {} is already {}",
            build.id, build.status
        )))
    }

    /// Queues a new build of what a triggered build ran: the same commit and substitutions.
    pub async fn retry(&self, id: &str) -> Result<String, Failed> {
        let build = self.build(id).await?;
        let original = self.store.queued_request(&build.id).await?.ok_or_else(|| {
            Failed::Conflict(format!(
                "build {} was not started by a trigger; submit its source again",
                build.id
            ))
        })?;
        let retry = QueuedBuild {
            id: uuid::Uuid::new_v4().to_string(),
            delivery: None,
            ..original
        };
        self.store
            .queue_builds(std::slice::from_ref(&retry))
            .await?;
        self.work.notify_one();
        Ok(retry.id)
    }

    /// Queues a build of a trigger by hand, as `gcloud builds triggers run` does: of a branch's
    /// or tag's head or of a commit, with extra substitutions. File filters and `disabled` do not
    /// apply to manual runs.
    pub async fn run_trigger(&self, name: &str, run: ManualRun) -> Result<String, Failed> {
        let build = self.manual_build(name, run).await?;
        self.store
            .queue_builds(std::slice::from_ref(&build))
            .await?;
        self.work.notify_one();
        Ok(build.id)
    }

    /// The build a manual run of trigger `name` queues (the branch or tag resolved to its
    /// commit in the repository), not queued yet.
    async fn manual_build(&self, name: &str, run: ManualRun) -> Result<QueuedBuild, Failed> {
        let trigger = &self.trigger(name)?;
        let github = trigger.github.as_ref().ok_or_else(|| {
            Failed::Invalid(format!("trigger {name:?} names no GitHub repository"))
        })?;
        let (git_ref, reference) = match (&run.branch, &run.tag, &run.commit) {
            (Some(branch), None, None) => (
                Some(GitRef::Branch(branch.clone())),
                format!("refs/heads/{branch}"),
            ),
            (None, Some(tag), None) => (Some(GitRef::Tag(tag.clone())), format!("refs/tags/{tag}")),
            (None, None, Some(commit)) => (None, commit.clone()),
            _ => {
                return Err(Failed::Invalid(
                    "give exactly one of branch, tag or commit".into(),
                ));
            }
        };
        let repository = Repository {
            owner: github.owner.clone(),
            name: github.name.clone(),
            full_name: format!("{}/{}", github.owner, github.name),
            clone_url: format!("https://github.com/{}/{}.git", github.owner, github.name),
        };
        let url = repository.clone_url.clone();
        let cache = self.settings.data_dir.join("git");
        let rewrites = self.settings.rewrites.clone();
        let commit = tokio::task::spawn_blocking(move || {
            Mirror::update(&cache, &url, &rewrites)?.resolve(&reference)
        })
        .await
        .map_err(|e| Failed::Internal(e.to_string()))?
        .map_err(|e| Failed::Invalid(e.to_string()))?
        .ok_or_else(|| {
            Failed::Invalid(format!(
                "{} has no such branch or tag",
                repository.full_name
            ))
        })?;
        check_user_keys(&run.substitutions)?;
        let mut trigger = trigger.clone();
        trigger.substitutions.extend(run.substitutions);
        Ok(self.queued_build(&trigger, &repository, git_ref.as_ref(), &commit, None))
    }

    /// Keeps an uploaded source archive (a tar.gz as `builder submit` packs it) for a build to
    /// come; returns its id.
    pub async fn upload(&self, archive: &[u8]) -> Result<String, Failed> {
        let id = uuid::Uuid::new_v4().to_string();
        let dir = self.settings.data_dir.join("uploads");
        let failed = |e: std::io::Error| Failed::Internal(format!("{}: {e}", dir.display()));
        tokio::fs::create_dir_all(&dir).await.map_err(failed)?;
        tokio::fs::write(dir.join(format!("{id}.tar.gz")), archive)
            .await
            .map_err(failed)?;
        Ok(id)
    }

    /// Queues a submitted build, after checking its config and substitutions as a manual
    /// build's (every problem located in the config's text).
    pub async fn submit(&self, submission: Submission) -> Result<String, Failed> {
        if let Some(upload) = &submission.upload
            && (uuid::Uuid::parse_str(upload).is_err() || !self.upload_path(upload).is_file())
        {
            return Err(Failed::Invalid(format!("no upload {upload:?}")));
        }
        let id = uuid::Uuid::new_v4().to_string();
        let request = Request::Upload {
            upload: submission.upload.clone(),
            config: submission.config,
            config_name: submission.config_name,
            overrides: submission.substitutions.clone(),
        };
        // Resolved now only to refuse a bad config before it is queued.
        let invalid = |refused: pipeline::Refused| Failed::Invalid(refused.to_string());
        let recipe = upload_recipe(&request).map_err(invalid)?;
        pipeline::resolve(&id, &recipe, &self.settings.machine).map_err(invalid)?;
        let build = QueuedBuild {
            source: serde_json::json!({"kind": "upload", "upload": submission.upload}),
            substitutions: serde_json::json!(submission.substitutions),
            request: serde_json::to_value(&request).map_err(|e| Failed::Internal(e.to_string()))?,
            trigger: None,
            schedule: None,
            delivery: None,
            id,
        };
        self.store
            .queue_builds(std::slice::from_ref(&build))
            .await?;
        self.work.notify_one();
        Ok(build.id)
    }

    fn upload_path(&self, upload: &str) -> PathBuf {
        self.settings
            .data_dir
            .join("uploads")
            .join(format!("{upload}.tar.gz"))
    }

    /// Whether `token` is the API token; compared in constant time (through digests of both).
    pub fn authorizes(&self, token: &str) -> bool {
        use sha2::{Digest, Sha256};
        self.settings
            .api_token
            .as_ref()
            .is_some_and(|expected| Sha256::digest(expected) == Sha256::digest(token))
    }

    /// Whether a request that presents `token` (or none) may read.
    pub fn may_read(&self, token: Option<&str>) -> bool {
        !self.settings.reads_need_token || token.is_some_and(|token| self.authorizes(token))
    }

    pub fn triggers(&self) -> Triggers {
        self.triggers.all()
    }

    /// Takes a delivery: verified over its raw body before anything reads it, then recorded with
    /// the builds it queues. Answers without waiting for any fetch or build.
    pub async fn receive(&self, incoming: Incoming<'_>) -> Result<Receipt, Rejection> {
        let span = info_span!(
            "delivery",
            delivery_id = incoming.delivery,
            event = incoming.event
        );
        let taken = self.take(incoming).instrument(span.clone()).await;
        let _entered = span.enter();
        match &taken {
            Ok(receipt) => debug!(?receipt, "delivery taken"),
            Err(Rejection::Unavailable(e)) => error!(error = %e, "delivery not recorded"),
            Err(rejection) => info!(%rejection, "delivery refused"),
        }
        taken
    }

    async fn take(&self, incoming: Incoming<'_>) -> Result<Receipt, Rejection> {
        let delivery_id = incoming
            .delivery
            .ok_or_else(|| Rejection::BadRequest("no X-GitHub-Delivery header".into()))?;
        let event = incoming
            .event
            .ok_or_else(|| Rejection::BadRequest("no X-GitHub-Event header".into()))?;
        let record = |verified, summary: String| NewDelivery {
            id: delivery_id.to_string(),
            event: event.to_string(),
            verified,
            summary,
            payload: None,
            results: Vec::new(),
            builds: Vec::new(),
        };
        if let Err(e) = webhooks::verify(
            &self.settings.webhook_secret,
            incoming.body,
            incoming.signature,
        ) {
            self.record_later(record(false, e.to_string()));
            return Err(Rejection::Unauthorized(e));
        }
        let delivery = webhooks::parse(event, incoming.body)
            .map_err(|e| Rejection::BadRequest(e.to_string()))?;
        let push = match triggers::push_of(&delivery) {
            Ok(push) => push,
            Err(skip) => {
                let reason = skip.to_string();
                self.record_later(record(true, reason.clone()));
                return Ok(Receipt::Ignored { reason });
            }
        };
        let mut accepted = record(true, summary(push));
        let mut pending = false;
        // Only the triggers of the pushed repository are worth a line in its record.
        let triggers = self.triggers.all();
        let repository = &push.repository;
        for trigger in triggers.of_repository(&repository.owner, &repository.name) {
            match trigger.fires_on_ref(push) {
                Err(skip) => accepted.results.push(skipped(trigger, skip)),
                Ok(()) if trigger.has_file_filters() => pending = true,
                Ok(()) => {
                    let build = self.pushed_build(trigger, push, delivery_id);
                    accepted.results.push(queued(trigger, &build));
                    accepted.builds.push(build);
                }
            }
        }
        accepted.payload = pending.then(|| incoming.body.to_vec());
        let builds: Vec<String> = accepted.builds.iter().map(|b| b.id.clone()).collect();
        if builds.is_empty() && !pending {
            self.record_later(accepted);
            return Ok(Receipt::Accepted { builds, pending });
        }
        match self.record(accepted).await? {
            Recorded::New => {
                if pending {
                    self.pending.store(true, Ordering::SeqCst);
                }
                if pending || !builds.is_empty() {
                    self.work.notify_one();
                }
                Ok(Receipt::Accepted { builds, pending })
            }
            Recorded::Duplicate => Ok(Receipt::Duplicate),
        }
    }

    /// Hands a delivery that queues nothing to the recorder without waiting for it to be written:
    /// its record is for people to read, and losing the last few to a crash loses no build.
    fn record_later(&self, delivery: NewDelivery) {
        let (written, _) = oneshot::channel();
        let _ = self.recorder.send((delivery, written));
    }

    /// Hands a delivery to the recorder and waits until it is written (see [`write_deliveries`]).
    async fn record(&self, delivery: NewDelivery) -> Result<Recorded, Rejection> {
        let stopped = || Rejection::Unavailable("the service is stopping".into());
        let (sender, written) = oneshot::channel();
        self.recorder
            .send((delivery, sender))
            .map_err(|_| stopped())?;
        written
            .await
            .map_err(|_| stopped())?
            .map_err(Rejection::Unavailable)
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
            substitutions: serde_json::json!(substitutions),
            request: serde_json::to_value(&request).unwrap_or_default(),
        }
    }

    /// The build `push` queues for `trigger`.
    fn pushed_build(&self, trigger: &Trigger, push: &Push, delivery: &str) -> QueuedBuild {
        let commit = push.commit();
        self.queued_build(
            trigger,
            &push.repository,
            Some(&push.git_ref),
            commit,
            Some(delivery),
        )
    }

    /// Runs until `shutdown`: decides pending deliveries and runs queued builds, at most
    /// `max_concurrent_builds` at once (0 queues builds without running any). On shutdown, or
    /// once the store is gone (the error), running builds are cancelled and waited for.
    pub async fn run(
        self: Arc<Self>,
        shutdown: CancellationToken,
    ) -> Result<(), crate::store::Error> {
        let holders = self.settings.data_dir.join(pipeline::HOLDERS);
        let holder = pipeline::Holder::take(&holders).map_err(crate::store::Error::Io)?;
        let lease = holder.lease();
        let slots = Arc::new(Semaphore::new(self.settings.max_concurrent_builds));
        let mut builds = tokio::task::JoinSet::new();
        // Every running build's cancel is a child of this.
        let stopping = shutdown.child_token();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ended = loop {
            if let Err(e) = self.store.check().await {
                break Err(e);
            }
            // Builds abandoned by a process that ended, here or on another machine.
            if let Err(e) =
                pipeline::recover(self.store.as_ref(), &holders, &lease, self.runtime.as_ref())
                    .await
            {
                error!(error = %e, "closing abandoned builds failed");
            }
            if self.pending.swap(false, Ordering::SeqCst) {
                self.decide_pending().await;
            }
            while let Ok(slot) = slots.clone().try_acquire_owned() {
                match self.store.claim_queued(&lease).await {
                    Ok(Some((id, request))) => {
                        let service = self.clone();
                        let span = build_span(&id, &request);
                        let (lease, cancel) = (lease.clone(), stopping.child_token());
                        builds.spawn(
                            async move {
                                info!("build started");
                                service.run_build(&id, request, &lease, cancel).await;
                                drop(slot);
                            }
                            .instrument(span),
                        );
                    }
                    Ok(None) => break,
                    Err(e) => {
                        warn!(error = %e, "reading the queue failed; trying again");
                        break;
                    }
                }
            }
            // Woken by this process's work; the tick finds what other processes queued or
            // abandoned.
            tokio::select! {
                () = self.work.notified() => {}
                _ = tick.tick() => {}
                Some(joined) = builds.join_next() => {
                    // The panic itself was logged in the build's span; the queue goes on.
                    if let Err(e) = joined {
                        error!(error = %e, "a build's task failed");
                    }
                }
                () = shutdown.cancelled() => break Ok(()),
            }
        };
        stopping.cancel();
        while builds.join_next().await.is_some() {}
        drop(holder);
        ended
    }

    /// Decides the triggers of every pending delivery from the changed files of its push.
    async fn decide_pending(&self) {
        let pending = match self.store.pending_deliveries().await {
            Ok(pending) => pending,
            Err(e) => {
                warn!(error = %e, "reading pending deliveries failed");
                return;
            }
        };
        for delivery in pending {
            let Ok(Delivery::Push(push)) = webhooks::parse(&delivery.event, &delivery.payload)
            else {
                continue;
            };
            let changed = self.changed_files(&push).await;
            let mut results = delivery.results;
            let mut builds = Vec::new();
            let triggers = self.triggers.all();
            let repository = &push.repository;
            for trigger in triggers.of_repository(&repository.owner, &repository.name) {
                if !trigger.has_file_filters() || trigger.fires_on_ref(&push).is_err() {
                    continue;
                }
                let decision = match &changed {
                    Ok(files) => trigger.files_fire(files).map_err(|skip| skip.to_string()),
                    Err(e) => Err(format!("the push's changed files are unknown: {e}")),
                };
                match decision {
                    Ok(()) => {
                        let build = self.pushed_build(trigger, &push, &delivery.id);
                        results.push(queued(trigger, &build));
                        builds.push(build);
                    }
                    Err(reason) => results.push(TriggerResult {
                        trigger: trigger.name.clone(),
                        build_id: None,
                        reason: Some(reason),
                    }),
                }
            }
            if let Err(e) = self
                .store
                .complete_delivery(&delivery.id, &results, &builds)
                .await
            {
                error!(delivery_id = %delivery.id, error = %e, "recording the delivery's builds failed");
            }
        }
    }

    async fn changed_files(&self, push: &Push) -> Result<Vec<String>, String> {
        let url = push.repository.clone_url.clone();
        let cache = self.settings.data_dir.join("git");
        let rewrites = self.settings.rewrites.clone();
        let (before, after) = (push.before.clone(), push.after.clone());
        tokio::task::spawn_blocking(move || {
            let mirror = Mirror::update(&cache, &url, &rewrites).map_err(|e| e.to_string())?;
            let changed = mirror
                .changed_files(&before, &after)
                .map_err(|e| e.to_string())?;
            Ok(changed.files)
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Runs a claimed build: its commit checked out, its config resolved, its steps executed and
    /// recorded. Whatever fails, the build ends with a status and a reason.
    async fn run_build(
        &self,
        id: &str,
        request: serde_json::Value,
        lease: &pipeline::Lease,
        cancel: CancellationToken,
    ) {
        let run = self.prepare_and_record(id, request, cancel.clone());
        pipeline::held(self.store.as_ref(), id, lease, &cancel, run).await;
    }

    /// [`run_build`](Self::run_build)'s work, while its lease is kept.
    async fn prepare_and_record(
        &self,
        id: &str,
        request: serde_json::Value,
        cancel: CancellationToken,
    ) {
        let workspace = self.settings.data_dir.join("workspaces").join(id);
        match self.prepare(id, request, &workspace).await {
            Ok(run) if let Some(waited) = self.expired(id, run.build.queue_ttl).await => {
                let failure = format!(
                    "the build waited {waited:.0}s in the queue, longer than its queueTtl ({}s)",
                    run.build.queue_ttl.unwrap_or_default()
                );
                self.fail(id, Status::Expired, failure).await;
            }
            Ok(run) => {
                let recorded = pipeline::record(
                    self.store.as_ref(),
                    self.runtime.clone(),
                    run,
                    cancel,
                    |_| {},
                )
                .await;
                match recorded {
                    Ok(outcome) => info!(status = %outcome.status, "build finished"),
                    Err(e) => error!(error = %e, "recording the build failed"),
                }
            }
            Err(unprepared) => {
                let status = match unprepared {
                    Unprepared::Store(_) => Status::InternalError,
                    _ => Status::Failure,
                };
                self.fail(id, status, unprepared.to_string()).await
            }
        }
        let _ = std::fs::remove_dir_all(&workspace);
    }

    /// How long the build waited in the queue, if that is longer than its `queue_ttl` (seconds).
    async fn expired(&self, id: &str, queue_ttl: Option<f64>) -> Option<f64> {
        let build = self.store.get_build(id).await.ok()??;
        let started = build.start_time.unwrap_or_else(std::time::SystemTime::now);
        let waited = started
            .duration_since(build.create_time)
            .ok()?
            .as_secs_f64();
        (waited > queue_ttl?).then_some(waited)
    }

    /// Puts the build's source into `workspace` and plans the build: a trigger build's commit, or
    /// a submitted build's upload.
    async fn prepare(
        &self,
        id: &str,
        request: serde_json::Value,
        workspace: &Path,
    ) -> Result<Run, Unprepared> {
        let request: Request = serde_json::from_value(request).map_err(Unprepared::Request)?;
        let recipe = match &request {
            Request::Push { .. } => self.checkout(&request, workspace).await?,
            Request::Upload { upload, .. } => {
                let source = |e: &dyn std::fmt::Display| Unprepared::Source(e.to_string());
                std::fs::create_dir_all(workspace).map_err(|e| source(&e))?;
                if let Some(upload) = upload {
                    let archive = std::fs::File::open(self.upload_path(upload))
                        .map_err(|e| source(&format_args!("the uploaded source is gone: {e}")))?;
                    crate::source::unpack(archive, workspace).map_err(|e| source(&e))?;
                }
                upload_recipe(&request)?
            }
        };
        let mut run = pipeline::plan(id, &recipe, &self.settings.machine)?;
        run.workspace = Some(workspace.to_path_buf());
        self.store
            .set_plan(id, &run.build)
            .await
            .map_err(Unprepared::Store)?;
        Ok(run)
    }

    /// Checks out a trigger build's commit into `workspace`, and reads its trigger's config.
    async fn checkout(&self, request: &Request, workspace: &Path) -> Result<Recipe, Unprepared> {
        let Request::Push {
            trigger,
            clone_url,
            commit,
            built_ins,
            overrides,
        } = request
        else {
            unreachable!("only pushes are checked out");
        };
        let source = Unprepared::Source;
        let trigger = &self
            .triggers
            .get(trigger)
            .map_err(|_| source(format!("trigger {trigger:?} no longer exists")))?;
        let (url, cache) = (clone_url.clone(), self.settings.data_dir.join("git"));
        let rewrites = self.settings.rewrites.clone();
        let (commit, dest) = (commit.clone(), workspace.to_path_buf());
        tokio::task::spawn_blocking(move || {
            let mirror = Mirror::update(&cache, &url, &rewrites)?;
            mirror.checkout(&commit, &dest)
        })
        .await
        .map_err(|e| source(e.to_string()))?
        .map_err(|e| source(format!("fetching the source failed: {e}")))?;
        let mut built_ins = built_ins.clone();
        let recipe = |file: String, built_ins: Values| Reading {
            file,
            context: Context::Trigger,
            built_ins,
            overrides: overrides.clone(),
            timeout: None,
            // gcloud's refusal of a config's own `source` is for uploads it makes.
            uploads: false,
        };
        match &trigger.build {
            BuildSource::Inline(config) => Ok(Recipe {
                config: (**config).clone(),
                tree: None,
                file: format!("trigger {}", trigger.name),
                context: Context::Trigger,
                built_ins,
                overrides: overrides.clone(),
                warnings: String::new(),
            }),
            BuildSource::File(path) => {
                let bytes = std::fs::read(workspace.join(path)).map_err(|e| {
                    source(format!(
                        "cannot read the build config {path} in the commit: {e}"
                    ))
                })?;
                Ok(Recipe::load(&bytes, recipe(path.clone(), built_ins))?)
            }
            // Cloud Build's autodetection: the first config file the commit has.
            BuildSource::Autodetect => {
                let (bytes, file) = ["cloudbuild.yaml", "cloudbuild.yml", "cloudbuild.json"]
                    .into_iter()
                    .find_map(|name| {
                        Some((std::fs::read(workspace.join(name)).ok()?, name.to_string()))
                    })
                    .ok_or_else(|| {
                        source(
                            "the commit has no cloudbuild.yaml, cloudbuild.yml or cloudbuild.json"
                                .into(),
                        )
                    })?;
                built_ins.insert("TRIGGER_BUILD_CONFIG_PATH".into(), file.clone());
                Ok(Recipe::load(&bytes, recipe(file, built_ins))?)
            }
        }
    }

    /// Ends a build that never got to run its steps.
    async fn fail(&self, id: &str, status: Status, failure: String) {
        info!(%status, %failure, "build finished before its steps");
        let outcome = Outcome::ended(status, Vec::new(), Some(failure));
        if let Err(e) = self.store.finish_build(id, &outcome).await {
            error!(error = %e, "recording the build failed");
        }
    }
}

/// The span of a claimed build's work: its id, and its trigger if one queued it.
fn build_span(id: &str, request: &serde_json::Value) -> tracing::Span {
    let trigger = request.get("trigger").and_then(serde_json::Value::as_str);
    info_span!("build", build_id = %id, trigger)
}

/// Refuses substitution keys that are not user keys (`_NAME`).
fn check_user_keys(substitutions: &Values) -> Result<(), Failed> {
    match substitutions
        .keys()
        .find(|k| !crate::substitute::is_user_key(k))
    {
        Some(key) => Err(Failed::Invalid(format!(
            "substitution key {key:?} does not respect format ^_[A-Z0-9_]+$"
        ))),
        None => Ok(()),
    }
}

/// Why a claimed build could not be made ready to run; the build ends with it, never running.
#[derive(Debug)]
enum Unprepared {
    /// Its queued request is not one this version reads.
    Request(serde_json::Error),
    /// Its source: the commit, the upload, the config file in it.
    Source(String),
    /// Its config or secrets.
    Refused(pipeline::Refused),
    Store(crate::store::Error),
}

impl std::fmt::Display for Unprepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unprepared::Request(e) => write!(f, "the queued build's request is unreadable: {e}"),
            Unprepared::Source(message) => f.write_str(message),
            Unprepared::Refused(refused) => refused.fmt(f),
            Unprepared::Store(e) => write!(f, "recording the build's plan failed: {e}"),
        }
    }
}

impl From<pipeline::Refused> for Unprepared {
    fn from(refused: pipeline::Refused) -> Self {
        Unprepared::Refused(refused)
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
    };
    Recipe::load(config.as_bytes(), reading)
}

fn skipped(trigger: &Trigger, skip: triggers::Skip) -> TriggerResult {
    TriggerResult {
        trigger: trigger.name.clone(),
        build_id: None,
        reason: Some(skip.to_string()),
    }
}

fn queued(trigger: &Trigger, build: &QueuedBuild) -> TriggerResult {
    TriggerResult {
        trigger: trigger.name.clone(),
        build_id: Some(build.id.clone()),
        reason: None,
    }
}

/// "push of branch main to acme/app (1a2b3c4)".
fn summary(push: &Push) -> String {
    let kind = match push.git_ref.kind() {
        webhooks::RefKind::Branch => "branch",
        webhooks::RefKind::Tag => "tag",
    };
    let what = if push.is_deletion() {
        "deletion"
    } else {
        "push"
    };
    format!(
        "{what} of {kind} {} to {} ({})",
        push.git_ref.name(),
        push.repository.full_name,
        &push.commit()[..7.min(push.commit().len())]
    )
}
