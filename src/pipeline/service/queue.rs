//! Running the queue: claiming queued builds under this process's lease, preparing each (its
//! commit or upload, its plan) and running it through the pipeline, a bounded number at once;
//! closing builds abandoned by processes that ended.

use std::io::Seek as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::io::AsyncWriteExt as _;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, error, info, info_span, warn};

use super::fetch::Exhausted;
use super::intake::Decided;
use super::*;
use crate::adapters::source::SourceError;
use crate::adapters::store::{Change, Claimed};

/// The span of a claimed build's work: its id, and its trigger if one queued it.
fn build_span(claimed: &Claimed) -> tracing::Span {
    let trigger = claimed.request.as_ref().ok().and_then(Request::trigger);
    info_span!("build", build_id = %claimed.id, trigger)
}

/// Why a claimed build could not be made ready to run; the build ends with it, never running.
#[derive(Debug)]
enum Unprepared {
    /// Its queued request is not one this version reads.
    Request(serde_json::Error),
    /// Its workspace directory cannot be made.
    Workspace(std::io::Error),
    /// Its uploaded source (this id) is not in the store.
    UploadGone(String),
    /// Its uploaded source could not be read from the store.
    UploadUnread(crate::adapters::store::Error),
    /// Its uploaded source cannot be unpacked into the workspace.
    Unpack(SourceError),
    /// Its trigger was deleted after it was queued.
    TriggerGone(String),
    /// Where its commit is fetched from is not its trigger's repository.
    Source(String),
    /// Its commit could not be fetched and checked out.
    Fetch(Exhausted),
    /// A blocking task of its preparation (unpacking, resolving) panicked or was cancelled.
    Task(tokio::task::JoinError),
    /// The config file its trigger names cannot be read from the commit.
    Config {
        path: String,
        error: std::io::Error,
    },
    /// The commit has none of the config files autodetection looks for.
    NoConfig,
    /// Its config or secrets.
    Refused(pipeline::Refused),
    Store(crate::adapters::store::Error),
    /// Its config names another pool than the one it was claimed from: not a failure, the
    /// build goes back to the queue for that pool's workers, with its config's `queueTtl`.
    OtherPool {
        pool: Option<String>,
        queue_ttl: Option<std::time::Duration>,
    },
}

impl std::fmt::Display for Unprepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unprepared::Request(e) => write!(f, "the queued build's request is unreadable: {e}"),
            Unprepared::Workspace(e) => e.fmt(f),
            Unprepared::UploadGone(id) => write!(f, "the uploaded source {id} is gone"),
            Unprepared::UploadUnread(e) => write!(f, "reading the uploaded source failed: {e}"),
            Unprepared::Unpack(e) => e.fmt(f),
            Unprepared::Task(e) => e.fmt(f),
            Unprepared::TriggerGone(trigger) => write!(f, "trigger {trigger:?} no longer exists"),
            Unprepared::Source(message) => f.write_str(message),
            Unprepared::Fetch(e) => write!(f, "fetching the source failed: {e}"),
            Unprepared::Config { path, error } => {
                write!(
                    f,
                    "cannot read the build config {path} in the commit: {error}"
                )
            }
            Unprepared::NoConfig => {
                f.write_str("the commit has no cloudbuild.yaml, cloudbuild.yml or cloudbuild.json")
            }
            Unprepared::Refused(refused) => refused.fmt(f),
            Unprepared::Store(e) => write!(f, "recording the build's plan failed: {e}"),
            Unprepared::OtherPool { pool, .. } => {
                write!(
                    f,
                    "the build is for the pool {:?}",
                    pool.as_deref().unwrap_or("")
                )
            }
        }
    }
}

impl From<pipeline::Refused> for Unprepared {
    fn from(refused: pipeline::Refused) -> Self {
        Unprepared::Refused(refused)
    }
}

/// How often the queue looks at the store without being woken: builds other processes queued
/// or abandoned are found, a claim that failed is tried again, and a store that is gone is
/// noticed (see [`Store::check`]) even on an idle server.
pub const TICK: std::time::Duration = std::time::Duration::from_secs(2);

/// How many changed builds wait for followers that have not read them yet; one that falls
/// further behind reads its build again.
pub(super) const CHANGES_WAITING: usize = 1024;

/// The failure of a build that waited QUEUED past its `queueTtl`.
const EXPIRED_IN_QUEUE: &str = "the build waited in the queue longer than its queueTtl: no \
     worker of its pool took it in time";

/// How a process runs builds: `builder serve`'s own worker and `builder worker` alike.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Who it is, in its leases and in the failure of a build it abandons (see
    /// `pipeline::check_name`).
    pub name: String,
    /// The pool whose builds it claims (`options.pool.name`'s last part); `None`: the default
    /// pool, builds that name none.
    pub pool: Option<String>,
    /// How many builds it runs at once; 0 runs none.
    pub max_concurrent_builds: usize,
    /// How long its claim on a build lasts unless renewed (every second): how soon another
    /// process closes the builds of a worker that died.
    pub lease: std::time::Duration,
    /// How often it reads the queue when nothing woke it, and looks for abandoned builds.
    pub poll: std::time::Duration,
}

/// How soon the store's changes are listened for again after its connection was lost.
const HEAR_AGAIN: std::time::Duration = std::time::Duration::from_secs(1);

impl Service {
    /// Hears what other processes sharing the store do, as it tells them (PostgreSQL's
    /// LISTEN/NOTIFY, see [`Store::changes`]), until `shutdown`: a build queued wakes this
    /// process's worker, a build changed wakes its followers here, and a stored trigger or
    /// schedule changed has them read again (see [`Service::run_resources`]). With a store that tells
    /// nothing (SQLite), waits for `shutdown`: the polls find others' work. While the store cannot
    /// be reached (its server restarting, `store::Error::is_transient`) it tries again every
    /// [`HEAR_AGAIN`], and followers poll meanwhile, as the rest of the process waits the outage
    /// out; ends with any other error.
    pub async fn listen(
        self: Arc<Self>,
        shutdown: CancellationToken,
    ) -> Result<(), crate::adapters::store::Error> {
        let Some(mut changes) = self.store.changes().await? else {
            shutdown.cancelled().await;
            return Ok(());
        };
        self.hearing.store(true, Ordering::SeqCst);
        let heard = loop {
            let change = tokio::select! {
                change = changes.next() => change,
                () = shutdown.cancelled() => break Ok(()),
            };
            match change {
                Ok(change) => {
                    self.hearing.store(true, Ordering::SeqCst);
                    match change {
                        Change::Queued { .. } => self.queued.notify_one(),
                        // No follower of it here is no error.
                        Change::Build { id } => drop(self.changed.send(id)),
                        Change::Resources => self.resources_changed.notify_one(),
                    }
                }
                Err(e) if e.is_transient() => {
                    self.hearing.store(false, Ordering::SeqCst);
                    warn!(error = %e, "hearing the store's changes failed; trying again");
                    tokio::select! {
                        () = tokio::time::sleep(HEAR_AGAIN) => {}
                        () = shutdown.cancelled() => break Ok(()),
                    }
                }
                Err(e) => break Err(e),
            }
        };
        self.hearing.store(false, Ordering::SeqCst);
        heard
    }

    /// Runs the server's side of the queue until `shutdown`: decides pending deliveries, and
    /// with `recover` (a server that runs no builds itself) closes builds abandoned by
    /// processes that ended. Ends with the error once the store is gone.
    pub async fn run(
        self: Arc<Self>,
        recover: bool,
        shutdown: CancellationToken,
    ) -> Result<(), crate::adapters::store::Error> {
        let holders = self.settings.data_dir.join(pipeline::HOLDERS);
        let holder = pipeline::Holder::take(&holders, &pipeline::default_name(), pipeline::LEASE)
            .map_err(crate::adapters::store::Error::Io)?;
        let lease = holder.lease();
        // Every deciding delivery's cancel is a child of this.
        let stopping = shutdown.child_token();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut recovery_due = recover;
        let mut expiry_due = true;
        // The tasks deciding pending deliveries, and whether some wait for one of them to end.
        let mut deciding = tokio::task::JoinSet::new();
        let mut more_pending = false;
        let ended = loop {
            if let Err(e) = self.store_gone().await {
                break Err(e);
            }
            if std::mem::take(&mut recovery_due) {
                self.recover(&holders, &lease).await;
            }
            if std::mem::take(&mut expiry_due) {
                self.expire_queued().await;
            }
            // Decided on tasks of their own: a fetch never holds up the loop.
            if self.pending.swap(false, Ordering::SeqCst) {
                match self.decide_pending(&mut deciding, &stopping).await {
                    Ok(left) => more_pending = left,
                    Err(e) => {
                        warn!(error = %e, "reading pending deliveries failed; trying again");
                        more_pending = true;
                    }
                }
            }
            tokio::select! {
                () = self.work.notified() => {}
                _ = tick.tick() => {
                    recovery_due = recover;
                    expiry_due = true;
                    if more_pending {
                        self.pending.store(true, Ordering::SeqCst);
                    }
                }
                Some(joined) = deciding.join_next() => {
                    let stays = match joined {
                        Ok(Decided::Pending) => true,
                        Ok(Decided::Completed) => false,
                        Err(e) => {
                            error!(error = %e, "deciding a delivery failed");
                            false
                        }
                    };
                    if std::mem::take(&mut more_pending) {
                        self.pending.store(true, Ordering::SeqCst);
                    }
                    // Decided again at the next tick, not at once: what failed may take a while.
                    more_pending |= stays;
                }
                () = shutdown.cancelled() => break Ok(()),
            }
        };
        stopping.cancel();
        // Cancelled, they leave their deliveries PENDING for the next start.
        while deciding.join_next().await.is_some() {}
        drop(holder);
        ended
    }

    /// The store's error once it is gone for good (its database dropped, its file removed): the
    /// queue ends then. A store that cannot be reached for now (a PostgreSQL server restarting,
    /// a network cut) is only warned of: the queue goes on trying at its tick, and running builds
    /// retry their writes meanwhile.
    async fn store_gone(&self) -> Result<(), crate::adapters::store::Error> {
        match self.store.check().await {
            Err(e) if e.is_transient() => {
                warn!(error = %e, "the store cannot be reached; trying again");
                Ok(())
            }
            checked => checked,
        }
    }

    /// Ends EXPIRED the queued builds past their `queueTtl`. A claim checks the TTL of the build
    /// it takes, but a build whose pool has no live worker is never claimed: the server's tick
    /// expires it, on whichever replica comes first (the store's update happens once).
    async fn expire_queued(&self) {
        let expired = self
            .store
            .expire_queued(std::time::SystemTime::now(), EXPIRED_IN_QUEUE)
            .await;
        match expired {
            Ok(ids) if ids.is_empty() => {}
            Ok(ids) => {
                for id in ids {
                    info!(build_id = %id, "the build expired in the queue");
                }
                self.moved();
            }
            Err(e) => warn!(error = %e, "expiring queued builds failed; trying again"),
        }
    }

    /// Closes builds abandoned by processes that ended, here or on another machine.
    async fn recover(&self, holders: &Path, lease: &pipeline::Lease) {
        let recovered =
            pipeline::recover(self.store.as_ref(), holders, lease, self.runtime.as_ref()).await;
        match recovered {
            Ok(ids) => {
                for id in ids {
                    info!(build_id = %id, "closed a build its process abandoned");
                }
            }
            Err(e) => error!(error = %e, "closing abandoned builds failed"),
        }
    }

    /// Runs queued builds of `worker`'s pool until `shutdown`, at most `max_concurrent_builds` at
    /// once, on this machine's engine: `builder serve`'s worker, and `builder worker`'s. First
    /// registers in the store as a worker (beating every [`pipeline::HEARTBEAT`] from then on)
    /// and sweeps what builds that are over left on the engine (this worker's, if it died); on
    /// each tick closes builds abandoned by processes that ended. On shutdown, or once the store
    /// is gone (the error), running builds are cancelled and waited for, and the worker removed
    /// from the store.
    pub async fn run_worker(
        self: Arc<Self>,
        worker: WorkerSettings,
        shutdown: CancellationToken,
    ) -> Result<(), crate::adapters::store::Error> {
        let holders = self.settings.data_dir.join(pipeline::HOLDERS);
        let holder = pipeline::Holder::take(&holders, &worker.name, worker.lease)
            .map_err(crate::adapters::store::Error::Io)?;
        let lease = holder.lease();
        info!(worker = %worker.name, pool = worker.pool.as_deref().unwrap_or(""), "worker started");
        // Registered under its holder id, and beating at its leases' pace from then on.
        let registered = store::Worker {
            lease: lease.clone(),
            host: pipeline::host_name(),
            pool: worker.pool.clone(),
            capacity: worker.max_concurrent_builds,
        };
        self.beat(&registered).await;
        let mut beats = tokio::time::interval(pipeline::HEARTBEAT);
        beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        beats.reset();
        self.recover(&holders, &lease).await;
        match pipeline::sweep_finished(self.store.as_ref(), self.runtime.as_ref()).await {
            Ok(swept) => {
                for id in swept {
                    info!(build_id = %id, "removed what a finished build left on the engine");
                }
            }
            Err(e) => error!(error = %e, "sweeping the engine failed"),
        }
        let slots = Arc::new(Semaphore::new(worker.max_concurrent_builds));
        let mut builds = tokio::task::JoinSet::new();
        // Every running build's cancel is a child of this.
        let stopping = shutdown.child_token();
        let mut tick = tokio::time::interval(worker.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.reset();
        // Abandoned builds are looked for on the tick only: the worker wakes for every build
        // queued here, and the look reads every unfinished one.
        let mut recovery_due = false;
        let ended = 'worker: loop {
            if let Err(e) = self.store_gone().await {
                break Err(e);
            }
            if std::mem::take(&mut recovery_due) {
                self.recover(&holders, &lease).await;
            }
            while let Ok(slot) = slots.clone().try_acquire_owned() {
                match self
                    .store
                    .claim_queued(&lease, worker.pool.as_deref())
                    .await
                {
                    Ok(Some(claimed)) => {
                        let service = self.clone();
                        let span = build_span(&claimed);
                        let (lease, cancel) = (lease.clone(), stopping.child_token());
                        let pool = worker.pool.clone();
                        builds.spawn(
                            async move {
                                info!("build started");
                                service.moved();
                                let Claimed { id, request } = claimed;
                                service.run_build(&id, request, &lease, pool, cancel).await;
                                service.moved();
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
            // Woken by builds queued in this process, or by other processes through the store
            // (`listen`); the tick finds what was queued unheard, or abandoned. A heartbeat
            // only beats: the queue is not read again for it, and it comes last, after the tick.
            loop {
                tokio::select! {
                    biased;
                    () = self.queued.notified() => {}
                    _ = tick.tick() => recovery_due = true,
                    Some(joined) = builds.join_next() => {
                        // The panic itself was logged in the build's span; the queue goes on.
                        if let Err(e) = joined {
                            error!(error = %e, "a build's task failed");
                        }
                    }
                    () = shutdown.cancelled() => break 'worker Ok(()),
                    _ = beats.tick() => {
                        self.beat(&registered).await;
                        continue;
                    }
                }
                break;
            }
        };
        stopping.cancel();
        // Alive while its cancelled builds end, as their leases are.
        loop {
            tokio::select! {
                joined = builds.join_next() => if joined.is_none() { break },
                _ = beats.tick() => self.beat(&registered).await,
            }
        }
        if let Err(e) = self.store.remove_worker(&lease.holder).await {
            warn!(error = %e, "removing the worker from the store failed: it shows as not live");
        }
        drop(holder);
        ended
    }

    /// Tells the store this worker is alive, giving up at the next beat: a store that cannot be
    /// reached holds no beat longer, so the worker's loop goes on (its tick's look at the store
    /// says it cannot be reached). A beat that fails is only warned of: the worker shows as not
    /// live only past its lease.
    async fn beat(&self, worker: &store::Worker) {
        let beat = self.store.beat_worker(worker, std::time::SystemTime::now());
        match tokio::time::timeout(pipeline::HEARTBEAT, beat).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(error = %e, "telling the store the worker is alive failed; trying again")
            }
            Err(_) => debug!("telling the store the worker is alive took a heartbeat; given up"),
        }
    }

    /// Runs a claimed build: its commit checked out, its config resolved, its steps executed and
    /// recorded. Whatever fails, the build ends with a status and a reason.
    async fn run_build(
        &self,
        id: &str,
        request: Result<Request, serde_json::Error>,
        lease: &pipeline::Lease,
        pool: Option<String>,
        cancel: CancellationToken,
    ) {
        let run = self.prepare_and_record(id, request, lease, pool, cancel.clone());
        pipeline::held(self.store.as_ref(), id, lease, &cancel, run).await;
    }

    /// [`run_build`](Self::run_build)'s work, while its lease is kept.
    async fn prepare_and_record(
        &self,
        id: &str,
        request: Result<Request, serde_json::Error>,
        lease: &pipeline::Lease,
        pool: Option<String>,
        cancel: CancellationToken,
    ) {
        let workspace = self
            .settings
            .data_dir
            .join(super::retention::WORKSPACES)
            .join(id);
        match self
            .prepare(id, request, &workspace, lease, pool.as_deref(), &cancel)
            .await
        {
            Err(Unprepared::OtherPool { pool, queue_ttl }) => {
                let requeued = self
                    .store
                    .requeue(id, lease, pool.as_deref(), queue_ttl)
                    .await;
                match requeued {
                    Ok(true) => info!(
                        pool = pool.as_deref().unwrap_or(""),
                        "the build's config names another pool: queued for its workers"
                    ),
                    Ok(false) => warn!("the build was taken over before it could be queued again"),
                    Err(e) => error!(error = %e, "queueing the build for its pool failed"),
                }
            }
            Ok(run) if let Some(waited) = self.expired(id, run.build.queue_ttl).await => {
                let failure = format!(
                    "the build waited {waited:.0}s in the queue, longer than its queueTtl ({}s)",
                    run.build.queue_ttl.unwrap_or_default()
                );
                self.fail(id, lease, Status::Expired, failure).await;
            }
            Ok(run) => {
                let recorded = pipeline::record(
                    self.store.as_ref(),
                    lease,
                    self.runtime.clone(),
                    run,
                    cancel,
                    Some(&self.live),
                    &mut |_: &pipeline::execute::Event| {},
                )
                .await;
                match recorded {
                    Ok(outcome) => info!(status = %outcome.status, "build finished"),
                    Err(e) => error!(error = %e, "recording the build failed"),
                }
            }
            Err(unprepared) => {
                let status = match unprepared {
                    Unprepared::Store(_) | Unprepared::OtherPool { .. } => Status::InternalError,
                    // A cancel during the fetch (asked for, or the server stopping) is a
                    // cancel, whatever the fetch made of it.
                    _ if cancel.is_cancelled() => Status::Cancelled,
                    _ => Status::Failure,
                };
                self.fail(id, lease, status, unprepared.to_string()).await
            }
        }
        let _ = std::fs::remove_dir_all(&workspace);
    }

    /// How long the build waited in the queue, if that is longer than its `queue_ttl` (seconds):
    /// from its approval, for a build that waited for one.
    async fn expired(&self, id: &str, queue_ttl: Option<f64>) -> Option<f64> {
        let build = self.store.get_build(id).await.ok()??;
        let started = build.start_time.unwrap_or_else(std::time::SystemTime::now);
        let queued = build
            .approval
            .and_then(|approval| approval.result)
            .map_or(build.create_time, |result| result.approval_time);
        let waited = started.duration_since(queued).ok()?.as_secs_f64();
        (waited > queue_ttl?).then_some(waited)
    }

    /// Puts the build's source into `workspace` and plans the build: a trigger build's commit, or
    /// a submitted build's upload.
    async fn prepare(
        &self,
        id: &str,
        request: Result<Request, serde_json::Error>,
        workspace: &Path,
        lease: &pipeline::Lease,
        pool: Option<&str>,
        cancel: &CancellationToken,
    ) -> Result<Run, Unprepared> {
        let request = request.map_err(Unprepared::Request)?;
        let recipe = match &request {
            Request::Push { .. } => self.checkout(&request, workspace, cancel).await?,
            Request::Upload { upload, .. } => {
                let (dest, limits) = (workspace.to_path_buf(), self.settings.upload_limits);
                let archive = match upload {
                    Some(upload) => Some(self.fetch_upload(upload).await?),
                    None => None,
                };
                // Unpacking is disk- and CPU-bound for as long as the archive is big: off the
                // async threads, which answer requests meanwhile.
                let request = request.clone();
                tokio::task::spawn_blocking(move || {
                    std::fs::create_dir_all(&dest).map_err(Unprepared::Workspace)?;
                    if let Some(archive) = archive {
                        crate::adapters::source::unpack(archive, &dest, &limits)
                            .map_err(Unprepared::Unpack)?;
                    }
                    upload_recipe(&request).map_err(Unprepared::Refused)
                })
                .await
                .map_err(Unprepared::Task)??
            }
        };
        let (build_id, machine) = (id.to_owned(), self.settings.machine.clone());
        let mut run = resolving(move || pipeline::plan(&build_id, &recipe, &machine))
            .await
            .map_err(Unprepared::Task)??;
        if run.build.pool.as_deref() != pool {
            return Err(Unprepared::OtherPool {
                pool: run.build.pool,
                queue_ttl: queue_ttl(run.build.queue_ttl),
            });
        }
        run.workspace = Some(workspace.to_path_buf());
        self.store
            .set_plan(id, &run.build, lease)
            .await
            .map_err(Unprepared::Store)?;
        Ok(run)
    }

    /// The uploaded archive `upload`, copied from the store a chunk at a time into a file of this
    /// machine's data directory that has no name (it goes with its last handle, however the
    /// process ends), read from its start.
    async fn fetch_upload(&self, upload: &str) -> Result<std::fs::File, Unprepared> {
        let file = tempfile::tempfile_in(&self.settings.data_dir).map_err(Unprepared::Workspace)?;
        let mut file = tokio::fs::File::from_std(file);
        for seq in 0.. {
            match self.store.upload_chunk(upload, seq).await {
                Ok(Some(chunk)) => file
                    .write_all(&chunk)
                    .await
                    .map_err(Unprepared::Workspace)?,
                Ok(None) if seq == 0 => return Err(Unprepared::UploadGone(upload.to_string())),
                Ok(None) => break,
                Err(e) => return Err(Unprepared::UploadUnread(e)),
            }
        }
        file.flush().await.map_err(Unprepared::Workspace)?;
        let mut file = file.into_std().await;
        file.rewind().map_err(Unprepared::Workspace)?;
        Ok(file)
    }

    /// Checks out a trigger build's commit into `workspace`, and reads its trigger's config.
    async fn checkout(
        &self,
        request: &Request,
        workspace: &Path,
        cancel: &CancellationToken,
    ) -> Result<Recipe, Unprepared> {
        let Request::Push {
            trigger,
            clone_url,
            commit,
            built_ins,
            overrides,
            approved,
            ..
        } = request
        else {
            unreachable!("only pushes are checked out");
        };
        // Created through another server's API a moment ago, maybe, and not read here yet.
        if self.triggers.get(trigger).is_err()
            && let Err(e) = self.reread_resources().await
        {
            warn!(error = %e, "reading the stored triggers failed");
        }
        let trigger = &self
            .triggers
            .get(trigger)
            .map_err(|_| Unprepared::TriggerGone(trigger.clone()))?;
        // Fetched from where the trigger says now, which must be where it said when the build
        // was queued (builds queued by an older version may carry a push's `clone_url`).
        let url = trigger
            .source_url(&self.settings.github, None)
            .map_err(|skip| Unprepared::Source(skip.to_string()))?;
        if *clone_url != url {
            return Err(Unprepared::Source(format!(
                "the build was queued to fetch {clone_url}, but its trigger's repository is {url} \
                 now"
            )));
        }
        let (commit, dest) = (commit.clone(), workspace.to_path_buf());
        let check_out = move |mirror: &Mirror| mirror.checkout(&commit, &dest);
        self.read_mirror_retried(&url, check_out, cancel)
            .await
            .map_err(Unprepared::Fetch)?;
        let mut built_ins = built_ins.clone();
        // Code no writer vouched for (a fork's pull request) does not get the machine either.
        let trusted = trigger.trusted && *approved;
        let recipe = |file: String, built_ins: Values| Reading {
            file,
            context: Context::Trigger,
            built_ins,
            overrides: overrides.clone(),
            timeout: None,
            // gcloud's refusal of a config's own `source` is for uploads it makes.
            uploads: false,
            trusted,
            secrets: secret_scope(request),
        };
        let recipe = match &trigger.build {
            BuildSource::Inline(config) => Recipe {
                config: (**config).clone(),
                tree: None,
                file: format!("trigger {}", trigger.name),
                context: Context::Trigger,
                built_ins,
                overrides: overrides.clone(),
                warnings: String::new(),
                trusted,
                secrets: secret_scope(request),
            },
            BuildSource::File(path) => {
                let bytes =
                    read_in_checkout(workspace, path).map_err(|error| Unprepared::Config {
                        path: path.clone(),
                        error,
                    })?;
                let reading = recipe(path.clone(), built_ins);
                resolving(move || Recipe::load(&bytes, reading))
                    .await
                    .map_err(Unprepared::Task)??
            }
            // Cloud Build's autodetection: the first config file the commit has.
            BuildSource::Autodetect => {
                let (bytes, file) = ["cloudbuild.yaml", "cloudbuild.yml", "cloudbuild.json"]
                    .into_iter()
                    .find_map(|name| {
                        Some((read_in_checkout(workspace, name).ok()?, name.to_string()))
                    })
                    .ok_or(Unprepared::NoConfig)?;
                built_ins.insert("TRIGGER_BUILD_CONFIG_PATH".into(), file.clone());
                let reading = recipe(file, built_ins);
                resolving(move || Recipe::load(&bytes, reading))
                    .await
                    .map_err(Unprepared::Task)??
            }
        };
        if !approved && !recipe.config.available_secrets.secret_manager.is_empty() {
            return Err(Unprepared::Refused(pipeline::Refused::Secrets(
                "a pull request from a fork may not read the trigger's secrets \
                 (availableSecrets) until a writer approves it with a /gcbrun comment"
                    .into(),
            )));
        }
        Ok(recipe)
    }

    /// Ends a build that never got to run its steps.
    async fn fail(&self, id: &str, lease: &pipeline::Lease, status: Status, failure: String) {
        info!(%status, %failure, "build finished before its steps");
        let outcome = Outcome::ended(status, Vec::new(), Some(failure));
        if let Err(e) = self.store.finish_build(id, &outcome, lease).await {
            error!(error = %e, "recording the build failed");
        }
    }
}

/// Reads a file of a checkout, refusing one that resolves outside it: the commit is the pusher's,
/// and a `cloudbuild.yaml` that is a symlink to `/etc/…` or to the server's own files would
/// otherwise be read, and shown in errors, with the server's rights.
fn read_in_checkout(checkout: &Path, file: &str) -> std::io::Result<Vec<u8>> {
    let root = checkout.canonicalize()?;
    let resolved = root.join(file).canonicalize()?;
    if !resolved.starts_with(&root) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "it resolves to a path outside the commit",
        ));
    }
    std::fs::read(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_that_links_out_of_the_checkout_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "token").unwrap();
        let checkout = tempfile::tempdir().unwrap();
        let root = checkout.path();
        std::fs::write(root.join("real.yaml"), "steps: []").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.join("cloudbuild.yaml"))
            .unwrap();
        std::os::unix::fs::symlink("real.yaml", root.join("inside.yaml")).unwrap();
        let error = read_in_checkout(root, "cloudbuild.yaml").unwrap_err();
        assert_eq!(
            error.to_string(),
            "it resolves to a path outside the commit"
        );
        assert!(read_in_checkout(root, "../secret").is_err());
        assert_eq!(read_in_checkout(root, "inside.yaml").unwrap(), b"steps: []");
    }
}
