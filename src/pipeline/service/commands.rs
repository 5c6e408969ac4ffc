//! The queries and commands the API serves: builds and their logs, deliveries, triggers, and
//! builds asked for by hand (a trigger's run, a retry, a submitted upload).

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;

use super::*;

/// How often a followed log that is not running in this process (queued, or run by another
/// process) is read again; a build running here wakes its followers itself.
const FOLLOW_POLL: Duration = Duration::from_millis(250);

/// A follower of a build's log ([`Service::follow`]).
pub struct Follower {
    service: Arc<Service>,
    /// The build as it was when the follow began, its step statuses updated from the live log.
    build: wire::Build,
    /// The build's live log once it runs in this process, and the follower's wake-up.
    live: Option<(Arc<LiveLog>, watch::Receiver<u64>)>,
    /// Whether the last read may have left lines behind (it was a full page), or was the first.
    more: bool,
}

impl Service {
    pub async fn builds(&self, query: &BuildQuery) -> Result<Vec<wire::Build>, Failed> {
        let builds = self.store.list_builds(query).await?;
        Ok(builds.into_iter().map(wire::Build::from).collect())
    }

    pub async fn build(&self, id: &str) -> Result<wire::Build, Failed> {
        let build = self.store.get_build(id).await?;
        build
            .map(wire::Build::from)
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
    ) -> Result<(Vec<wire::LogLine>, wire::Build), Failed> {
        let build = self.build(id).await?;
        let lines = self.store.logs(&build.id, after, limit).await?;
        Ok((lines.into_iter().map(wire::LogLine::from).collect(), build))
    }

    /// Follows a build's log: see [`Follower::next`].
    pub async fn follow(self: &Arc<Self>, id: &str) -> Result<Follower, Failed> {
        let build = self.build(id).await?;
        Ok(Follower {
            service: self.clone(),
            build,
            live: None,
            more: true,
        })
    }

    pub async fn deliveries(&self, limit: u32) -> Result<Vec<wire::Delivery>, Failed> {
        let deliveries = self.store.list_deliveries(limit).await?;
        Ok(deliveries.into_iter().map(wire::Delivery::from).collect())
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
        .map_err(|e| Failed::Internal(Internal::Task(e)))?
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
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(Failed::file(&dir))?;
        let file = dir.join(format!("{id}.tar.gz"));
        tokio::fs::write(&file, archive)
            .await
            .map_err(Failed::file(&file))?;
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
            substitutions: submission.substitutions,
            request,
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

    pub(super) fn upload_path(&self, upload: &str) -> PathBuf {
        self.settings
            .data_dir
            .join("uploads")
            .join(format!("{upload}.tar.gz"))
    }

    pub fn triggers(&self) -> Triggers {
        self.triggers.all()
    }
}

impl Follower {
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
                        tokio::time::sleep(FOLLOW_POLL).await;
                    }
                    // It may have started here meanwhile.
                    if self.service.live.get(&self.build.id).is_some() {
                        continue;
                    }
                    let (lines, build) =
                        self.service.log(&self.build.id, after, Some(limit)).await?;
                    self.more = lines.len() == limit as usize;
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
            self.more = lines.len() == limit as usize;
            update(&mut self.build, snapshot);
            let lines = lines.into_iter().map(wire::LogLine::from).collect();
            return Ok((lines, self.build.clone()));
        }
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
