//! Running the queue: claiming queued builds under this process's lease, preparing each (its
//! commit or upload, its plan) and running it through the pipeline, a bounded number at once;
//! closing builds abandoned by processes that ended.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, error, info, info_span, warn};

use super::*;
use crate::adapters::source::SourceError;
use crate::adapters::source::git::GitError;
use crate::adapters::store::Claimed;

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
    /// Its uploaded source is no longer kept.
    UploadGone(std::io::Error),
    /// Its uploaded source cannot be unpacked into the workspace.
    Unpack(SourceError),
    /// Its trigger was deleted after it was queued.
    TriggerGone(String),
    /// Its commit could not be fetched and checked out.
    Fetch(GitError),
    /// The blocking task that fetches the commit panicked or was cancelled.
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
}

impl std::fmt::Display for Unprepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unprepared::Request(e) => write!(f, "the queued build's request is unreadable: {e}"),
            Unprepared::Workspace(e) => e.fmt(f),
            Unprepared::UploadGone(e) => write!(f, "the uploaded source is gone: {e}"),
            Unprepared::Unpack(e) => e.fmt(f),
            Unprepared::TriggerGone(trigger) => write!(f, "trigger {trigger:?} no longer exists"),
            Unprepared::Fetch(e) => write!(f, "fetching the source failed: {e}"),
            Unprepared::Task(e) => e.fmt(f),
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
const TICK: std::time::Duration = std::time::Duration::from_secs(2);

impl Service {
    /// Runs until `shutdown`: decides pending deliveries and runs queued builds, at most
    /// `max_concurrent_builds` at once (0 queues builds without running any). On shutdown, or
    /// once the store is gone (the error), running builds are cancelled and waited for.
    pub async fn run(
        self: Arc<Self>,
        shutdown: CancellationToken,
    ) -> Result<(), crate::adapters::store::Error> {
        let holders = self.settings.data_dir.join(pipeline::HOLDERS);
        let holder = pipeline::Holder::take(&holders).map_err(crate::adapters::store::Error::Io)?;
        let lease = holder.lease();
        let slots = Arc::new(Semaphore::new(self.settings.max_concurrent_builds));
        let mut builds = tokio::task::JoinSet::new();
        // Every running build's cancel is a child of this.
        let stopping = shutdown.child_token();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Abandoned builds are looked for at the start and then on the tick only: the queue
        // wakes for every delivery that queues a build, and the look reads every unfinished one.
        let mut recovery_due = true;
        let ended = loop {
            if let Err(e) = self.store.check().await {
                break Err(e);
            }
            // Builds abandoned by a process that ended, here or on another machine.
            if std::mem::take(&mut recovery_due)
                && let Err(e) =
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
                    Ok(Some(claimed)) => {
                        let service = self.clone();
                        let span = build_span(&claimed);
                        let (lease, cancel) = (lease.clone(), stopping.child_token());
                        builds.spawn(
                            async move {
                                info!("build started");
                                let Claimed { id, request } = claimed;
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
                _ = tick.tick() => recovery_due = true,
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

    /// Runs a claimed build: its commit checked out, its config resolved, its steps executed and
    /// recorded. Whatever fails, the build ends with a status and a reason.
    async fn run_build(
        &self,
        id: &str,
        request: Result<Request, serde_json::Error>,
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
        request: Result<Request, serde_json::Error>,
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
        request: Result<Request, serde_json::Error>,
        workspace: &Path,
    ) -> Result<Run, Unprepared> {
        let request = request.map_err(Unprepared::Request)?;
        let recipe = match &request {
            Request::Push { .. } => self.checkout(&request, workspace).await?,
            Request::Upload { upload, .. } => {
                std::fs::create_dir_all(workspace).map_err(Unprepared::Workspace)?;
                if let Some(upload) = upload {
                    let archive = std::fs::File::open(self.upload_path(upload))
                        .map_err(Unprepared::UploadGone)?;
                    crate::adapters::source::unpack(archive, workspace)
                        .map_err(Unprepared::Unpack)?;
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
        let trigger = &self
            .triggers
            .get(trigger)
            .map_err(|_| Unprepared::TriggerGone(trigger.clone()))?;
        let (url, cache) = (clone_url.clone(), self.settings.data_dir.join("git"));
        let rewrites = self.settings.rewrites.clone();
        let (commit, dest) = (commit.clone(), workspace.to_path_buf());
        tokio::task::spawn_blocking(move || {
            let mirror = Mirror::update(&cache, &url, &rewrites)?;
            mirror.checkout(&commit, &dest)
        })
        .await
        .map_err(Unprepared::Task)?
        .map_err(Unprepared::Fetch)?;
        let mut built_ins = built_ins.clone();
        let recipe = |file: String, built_ins: Values| Reading {
            file,
            context: Context::Trigger,
            built_ins,
            overrides: overrides.clone(),
            timeout: None,
            // gcloud's refusal of a config's own `source` is for uploads it makes.
            uploads: false,
            trusted: trigger.trusted,
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
                trusted: trigger.trusted,
            }),
            BuildSource::File(path) => {
                let bytes =
                    read_in_checkout(workspace, path).map_err(|error| Unprepared::Config {
                        path: path.clone(),
                        error,
                    })?;
                Ok(Recipe::load(&bytes, recipe(path.clone(), built_ins))?)
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
