//! The queries and commands the API serves: builds and their logs, deliveries, triggers, and
//! builds asked for by hand (a trigger's run, a retry, a submitted upload).

use std::time::Duration;

use bytes::Bytes;

use std::sync::atomic::Ordering;

use tokio::sync::{broadcast, watch};

use super::fetch::FetchFailed;
use super::*;
use crate::adapters::store::{page_full, waiting_for};

/// How often a followed log that is not running in this process (queued, or run by another
/// process) is read again when the store tells nothing of changes; a build running here wakes
/// its followers itself.
const FOLLOW_POLL: Duration = Duration::from_millis(250);
/// How often it is read again when the store tells its changes (see [`Service::listen`]): only
/// for a change lost while the store's connection was made again.
const FOLLOW_HEARD: Duration = Duration::from_secs(5);

/// A follower of a build's log ([`Service::follow`]).
pub struct Follower {
    service: Arc<Service>,
    /// The build as it was when the follow began, its step statuses updated from the live log.
    build: wire::Build,
    /// The build's live log once it runs in this process, and the follower's wake-up.
    live: Option<(Arc<LiveLog>, watch::Receiver<u64>)>,
    /// Whether the last read may have left lines behind (it was a full page), or was the first.
    more: bool,
    /// The builds other processes changed since the last read.
    changed: broadcast::Receiver<String>,
}

impl Service {
    pub async fn builds(&self, query: &BuildQuery) -> Result<Vec<wire::Build>, Failed> {
        let builds = self.store.list_builds(query).await?;
        Ok(builds.into_iter().map(wire::Build::from).collect())
    }

    /// A build, with what GitHub was told of it.
    pub async fn build(&self, id: &str) -> Result<wire::Build, Failed> {
        let build = self
            .store
            .get_build(id)
            .await?
            .ok_or_else(|| Failed::NotFound(format!("no build {id:?}")))?;
        let waiting_for = waiting_for(&*self.store, &build).await?;
        let mut build = wire::Build::from(build);
        build.waiting_for = waiting_for;
        build.github = self.store.report_of(&build.id).await?.map(Into::into);
        Ok(build)
    }

    /// The build's log lines after `after` (0: all), and the build as it was just before they
    /// were read: if it had finished, no line follows these.
    /// A build's log lines after `after`: the first `limit` of them, or all.
    pub async fn log(
        &self,
        id: &str,
        after: i64,
        limit: Option<u32>,
    ) -> Result<(Vec<wire::LogLine>, wire::Build), Failed> {
        let build = self.build(id).await?;
        let lines = self.store.logs(&build.id, after, limit).await?;
        Ok((lines.into_iter().map(wire::LogLine::from).collect(), build))
    }

    /// Follows a build's log: see [`Follower::next`].
    pub async fn follow(self: &Arc<Self>, id: &str) -> Result<Follower, Failed> {
        // Heard from before the first read, so that no change after it is missed.
        let changed = self.changed.subscribe();
        let build = self.build(id).await?;
        Ok(Follower {
            service: self.clone(),
            build,
            live: None,
            more: true,
            changed,
        })
    }

    pub async fn deliveries(&self, limit: u32) -> Result<Vec<wire::Delivery>, Failed> {
        let deliveries = self.store.list_deliveries(limit).await?;
        Ok(deliveries.into_iter().map(wire::Delivery::from).collect())
    }

    /// The processes that run builds, live or not.
    pub async fn workers(&self) -> Result<Vec<wire::Worker>, Failed> {
        let workers = self.store.list_workers().await?;
        let now = std::time::SystemTime::now();
        Ok(workers
            .into_iter()
            .map(|worker| wire::Worker::at(worker, now))
            .collect())
    }

    pub fn trigger(&self, name: &str) -> Result<Trigger, Failed> {
        self.triggers.get(name)
    }

    /// Creates a trigger from a trigger file (YAML or JSON), or replaces the one named
    /// `replacing`, in the store (see `resources`); returns it with its warnings.
    pub async fn put_trigger(
        &self,
        bytes: &[u8],
        replacing: Option<&str>,
    ) -> Result<(Trigger, String), Failed> {
        let (trigger, warnings) = triggers::load(bytes)
            .map_err(|d| Failed::Invalid(d.render("trigger").trim_end().to_string()))?;
        self.put_resource(&self.triggers, &trigger, bytes, replacing)
            .await?;
        Ok((trigger, warnings.render("trigger")))
    }

    /// Deletes a trigger the API created, that no schedule runs.
    pub async fn delete_trigger(&self, name: &str) -> Result<(), Failed> {
        if let Some(schedule) = self.schedule_running(name) {
            return Err(Failed::Conflict(format!(
                "schedule {:?} runs trigger {name:?}",
                schedule.name
            )));
        }
        self.delete_resource(&self.triggers, name).await
    }

    /// Cancels a build: a pending or queued one never runs, a running one is stopped by its
    /// holder, in whichever process or machine, within a heartbeat (its status becomes CANCELLED
    /// when its steps have stopped).
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

    /// Decides a PENDING build's approval, as `approver` (who the request came from): approved,
    /// it is queued for the workers, its `queueTtl` counted from now; rejected, it ends REJECTED
    /// and never runs. A build that is not PENDING is a conflict naming its status.
    pub async fn decide_approval(
        &self,
        id: &str,
        decision: Decision,
        approver: &str,
        comment: Option<String>,
    ) -> Result<wire::Build, Failed> {
        let build = self.build(id).await?;
        let result = ApprovalResult {
            approver_account: approver.to_string(),
            approval_time: std::time::SystemTime::now(),
            decision,
            comment: comment.filter(|comment| !comment.is_empty()),
        };
        if !self.store.decide_approval(&build.id, &result).await? {
            let build = self.build(id).await?;
            return Err(Failed::Conflict(format!(
                "build {} is {}, not PENDING: only a build waiting for approval is approved or \
                 rejected",
                build.id, build.status
            )));
        }
        if decision == Decision::Approved {
            self.wake();
        }
        self.build(&build.id).await
    }

    /// Queues a new build of what a triggered build ran: the same commit and substitutions, with
    /// the secrets its grant gives now.
    pub async fn retry(&self, id: &str) -> Result<String, Failed> {
        let build = self.build(id).await?;
        let original = self.store.queued_request(&build.id).await?.ok_or_else(|| {
            Failed::Conflict(format!(
                "build {} was not started by a trigger; submit its source again",
                build.id
            ))
        })?;
        let retry = self.retried(original, None);
        self.store
            .queue_builds(std::slice::from_ref(&retry))
            .await?;
        self.wake();
        Ok(retry.id)
    }

    /// A new build of what `original` was queued to run, asked for by `delivery` (a check run's
    /// re-run) or by hand, reported to GitHub as new builds are: under its trigger's context, on
    /// its commit.
    pub(super) fn retried(&self, original: QueuedBuild, delivery: Option<&str>) -> QueuedBuild {
        let mut retry = QueuedBuild {
            id: uuid::Uuid::new_v4().to_string(),
            delivery: delivery.map(str::to_string),
            report: self.settings.reporting.is_some(),
            ..original
        };
        // A retry reads what its grant gives now, not what it gave the original: a secret taken
        // off the trigger (or off `submitSecrets`) since is not read again. An unapproved fork's
        // build stays without them.
        match &mut retry.request {
            Request::Push {
                trigger,
                secrets,
                approved,
                ..
            } => {
                *secrets = match self.triggers.get(trigger) {
                    Ok(trigger) if *approved => trigger.secrets,
                    _ => Default::default(),
                }
            }
            Request::Upload { secrets, .. } => secrets.clone_from(&self.settings.submit_secrets),
        }
        retry
    }

    /// Queues a build of a trigger by hand, as `gcloud builds triggers run` does: of a branch's
    /// or tag's head or of a commit, with extra substitutions. File filters and `disabled` do not
    /// apply to manual runs.
    pub async fn run_trigger(&self, name: &str, run: ManualRun) -> Result<String, Failed> {
        let build = self.manual_build(name, run).await?;
        let skipped = self
            .store
            .queue_builds(std::slice::from_ref(&build))
            .await?;
        self.queued_by_hand(&build, skipped).await?;
        Ok(build.id)
    }

    /// Carries on once the store was asked to queue `build`, of a trigger run by hand (or of a
    /// schedule run now): refused (409) with the reason if it skips a full group and so was not
    /// queued (`skipped`, see [`store::Queue::queue_builds`]); else as any queued build
    /// ([`Self::on_queued`]).
    pub(super) async fn queued_by_hand(
        &self,
        build: &QueuedBuild,
        skipped: Vec<store::GroupFull>,
    ) -> Result<(), Failed> {
        if let Some(full) = skipped.into_iter().next() {
            return Err(Failed::Conflict(full.reason));
        }
        self.on_queued(std::slice::from_ref(build)).await;
        Ok(())
    }

    /// The build a manual run of trigger `name` queues (the branch or tag resolved to its
    /// commit in the repository), not queued yet.
    pub(super) async fn manual_build(
        &self,
        name: &str,
        run: ManualRun,
    ) -> Result<QueuedBuild, Failed> {
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
        let url = trigger
            .source_url(&self.settings.github, None)
            .map_err(|skip| Failed::Invalid(format!("trigger {name:?}: {skip}")))?;
        let repository = Repository {
            owner: github.owner.clone(),
            name: github.name.clone(),
            full_name: format!("{}/{}", github.owner, github.name),
            clone_url: url.clone(),
        };
        // Tried once: the caller is waiting, and can ask again.
        let commit = self
            .read_mirror(&url, move |mirror| mirror.resolve(&reference))
            .await
            .map_err(|failed| match failed {
                FetchFailed::Task(e) => Failed::Internal(Internal::Task(e)),
                failed => Failed::Invalid(failed.to_string()),
            })?
            .ok_or_else(|| {
                Failed::Invalid(format!(
                    "{} has no such branch or tag",
                    repository.full_name
                ))
            })?;
        check_user_keys(&run.substitutions)?;
        let mut trigger = trigger.clone();
        trigger.substitutions.extend(run.substitutions);
        Ok(self.queued_build(&trigger, &repository, &url, git_ref.as_ref(), &commit, None))
    }

    /// Keeps an uploaded source archive (a tar.gz as `builder submit` packs it) in the store for
    /// a build to come, wherever it runs; returns its id. One that unpacks past the server's
    /// limits (`maxUploadBytes`, `maxUploadEntries`), or is no tar.gz, is refused before it is
    /// kept.
    pub async fn upload(&self, archive: Bytes) -> Result<String, Failed> {
        let (measured, limits) = (archive.clone(), self.settings.upload_limits);
        // Decompressing is CPU-bound for as long as the archive is big: off the async threads.
        resolving(move || crate::adapters::source::measure(measured.as_ref(), &limits))
            .await
            .map_err(|e| Failed::Internal(Internal::Task(e)))?
            .map_err(|refused| Failed::Invalid(format!("the upload: {refused}")))?;
        let id = uuid::Uuid::new_v4().to_string();
        self.store.put_upload(&id, &archive).await?;
        Ok(id)
    }

    /// Queues a submitted build, after checking its config and substitutions as a manual
    /// build's (every problem located in the config's text).
    pub async fn submit(&self, submission: Submission) -> Result<String, Failed> {
        let id = uuid::Uuid::new_v4().to_string();
        if let Some(upload) = &submission.upload
            && !self.store.attach_upload(upload, &id).await?
        {
            return Err(Failed::Invalid(format!("no upload {upload:?}")));
        }
        let id = uuid::Uuid::new_v4().to_string();
        let request = Request::Upload {
            upload: submission.upload.clone(),
            config: submission.config,
            config_name: submission.config_name,
            overrides: submission.substitutions.clone(),
            secrets: self.settings.submit_secrets.clone(),
        };
        // Resolved now to refuse a bad config before it is queued, and for its pool.
        let (build_id, machine) = (id.clone(), self.settings.machine.clone());
        let (request, pool, queue_ttl) =
            resolving(move || check_submission(&build_id, request, &machine))
                .await
                .map_err(|e| Failed::Internal(Internal::Task(e)))?
                .map_err(|refused| Failed::Invalid(refused.to_string()))?;
        let build = QueuedBuild {
            pool,
            queue_ttl,
            source: serde_json::json!({"kind": "upload", "upload": submission.upload}),
            substitutions: submission.substitutions,
            request,
            trigger: None,
            schedule: None,
            delivery: None,
            report: false,
            approval_required: submission.require_approval,
            concurrency: None,
            skips_full_group: false,
            id,
        };
        self.store
            .queue_builds(std::slice::from_ref(&build))
            .await?;
        self.wake();
        Ok(build.id)
    }

    pub fn triggers(&self) -> Triggers {
        self.triggers.all()
    }
}

impl Follower {
    /// Whether the last read was a full page, so more lines may follow it at once: a build that
    /// had ended before that read has more lines to send only then.
    pub fn more(&self) -> bool {
        self.more
    }

    /// The lines after `after` (at most `limit`), and the build as it was just before they were
    /// read (if it had finished, no line follows these); as [`Service::log`] answers, but waiting
    /// until there is something new. A build running in this process is read from its live log,
    /// and from the store only for lines that have left it; any other is read from the store.
    pub async fn next(
        &mut self,
        after: i64,
        limit: u32,
    ) -> Result<(Vec<wire::LogLine>, wire::Build), Failed> {
        loop {
            if self.live.is_none() {
                if let Some(log) = self.service.live.get(&self.build.id) {
                    let changes = log.subscribe();
                    // A queued build's steps are known once it has been claimed.
                    self.build = self.service.build(&self.build.id).await?;
                    self.live = Some((log, changes));
                    self.more = true;
                } else {
                    if !std::mem::take(&mut self.more) {
                        self.until_changed().await;
                    }
                    // It may have started here meanwhile.
                    if self.service.live.get(&self.build.id).is_some() {
                        continue;
                    }
                    let (lines, build) =
                        self.service.log(&self.build.id, after, Some(limit)).await?;
                    self.more = page_full(lines.iter().map(|l| l.text.as_str()), limit as usize);
                    self.build = build.clone();
                    return Ok((lines, build));
                }
            }
            let Some((log, changes)) = &mut self.live else {
                continue;
            };
            if !std::mem::take(&mut self.more) {
                // The sender lives as long as the log this follower holds.
                let _ = changes.changed().await;
            }
            changes.borrow_and_update();
            let snapshot = log.read(after, limit as usize);
            let lines = match &snapshot.lines {
                Some(lines) => lines.clone(),
                // They have left the ring, so they are stored.
                None => {
                    self.service
                        .store
                        .logs(&self.build.id, after, Some(limit))
                        .await?
                }
            };
            self.more = page_full(lines.iter().map(|l| l.text.as_str()), limit as usize);
            update(&mut self.build, snapshot);
            let lines = lines.into_iter().map(wire::LogLine::from).collect();
            return Ok((lines, self.build.clone()));
        }
    }
}

impl Follower {
    /// Waits until another process changed the build, as the store tells, or for the poll:
    /// [`FOLLOW_HEARD`] while the store tells changes, [`FOLLOW_POLL`] otherwise.
    async fn until_changed(&mut self) {
        let poll = if self.service.hearing.load(Ordering::SeqCst) {
            FOLLOW_HEARD
        } else {
            FOLLOW_POLL
        };
        let id = &self.build.id;
        let changed = async {
            loop {
                match self.changed.recv().await {
                    Ok(changed) if changed == *id => return,
                    Ok(_) => {}
                    // Some were missed: one may have been this build's.
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    // The service outlives its followers.
                    Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
                }
            }
        };
        let _ = tokio::time::timeout(poll, changed).await;
    }
}

/// The build record with what its live log says of its steps and its end.
fn update(build: &mut wire::Build, snapshot: Snapshot) {
    for (step, (status, detail)) in build.steps.iter_mut().zip(snapshot.steps) {
        step.result.status = status;
        step.result.detail = detail;
    }
    if let Some((status, failure)) = snapshot.ended {
        build.status = status;
        build.failure = failure;
    }
}
