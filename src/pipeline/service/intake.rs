//! Taking GitHub deliveries: checking their signature, deciding which triggers they fire,
//! recording them with their builds in one transaction before answering, and deciding later the
//! triggers that wait for a push's changed files.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, error, info, info_span, warn};

use super::fetch::{Exhausted, FetchFailed};
use super::*;
use crate::adapters::source::git::{ChangedFiles, GitError};
use crate::adapters::store::{GroupFull, PendingDelivery};
use crate::core::triggers::{Approval, OnConflict};
use crate::core::webhooks::{CheckRunEvent, Comment, PullRequest, PullRequestEvent};

/// Writes deliveries as they come, each transaction taking every delivery that arrived while the
/// one before it was being written: one write to disk for all of them, so that durably recording
/// each delivery before answering it does not cost one disk write each.
/// Rejected deliveries that `dropped` counts (dropped unrecorded, see `Service::record_later`)
/// are counted with the next batch.
pub(super) async fn write_deliveries(
    store: Arc<dyn Store>,
    mut queue: mpsc::Receiver<(NewDelivery, Written)>,
    dropped: Arc<AtomicU64>,
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
        let uncounted = dropped.swap(0, Ordering::SeqCst);
        match store.record_deliveries(&deliveries, uncounted).await {
            Ok(recorded) => {
                for (waiter, recorded) in waiting.into_iter().zip(recorded) {
                    let _ = waiter.send(Ok(recorded));
                }
            }
            Err(e) => {
                // Counted with a later batch, as the rejected ones of this one are not.
                dropped.fetch_add(uncounted, Ordering::SeqCst);
                let e = Arc::new(e);
                for waiter in waiting {
                    let _ = waiter.send(Err(Unrecorded::Store(e.clone())));
                }
            }
        }
    }
}

/// The record of a delivery refused for its signature: its headers are bounded by then.
fn rejected(delivery: String, event: String, error: SignatureError) -> NewDelivery {
    NewDelivery {
        id: delivery,
        event,
        verified: false,
        digest: None,
        summary: error.to_string(),
        payload: None,
        results: Vec::new(),
        builds: Vec::new(),
        pull_request: None,
    }
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

/// "pull request #7 synchronize: fix → main of acme/app (1a2b3c4)".
fn pull_request_summary(event: &PullRequestEvent) -> String {
    let pull_request = &event.pull_request;
    format!(
        "pull request #{} {}: {} → {} of {} ({})",
        pull_request.number,
        event.action,
        pull_request.head_branch,
        pull_request.base_branch,
        event.repository.full_name,
        &pull_request.head_sha[..7]
    )
}

/// "comment by octocat (OWNER) on pull request #7 of acme/app: /gcbrun".
fn comment_summary(comment: &Comment) -> String {
    let on = if comment.on_pull_request {
        "pull request"
    } else {
        "issue"
    };
    let asks = if comment.asks_for_build() {
        ": /gcbrun"
    } else {
        ""
    };
    format!(
        "comment {} by {} ({}) on {on} #{} of {}{asks}",
        comment.action,
        comment.author,
        comment.author_association,
        comment.number,
        comment.repository.full_name
    )
}

/// A delivery that may fire triggers, read for deciding them.
enum Read<'d> {
    Push(&'d Push),
    PullRequest(&'d PullRequestEvent),
    Comment {
        comment: &'d Comment,
        /// The commented pull request as its latest delivery described it, if the comment asks
        /// for a build and one was received (boxed: it is far larger than the others).
        pull_request: Option<Box<PullRequest>>,
    },
}

/// Why a delivery fires no trigger, before any is asked.
enum Unread {
    /// It is not an event that builds (a ping, another event): the reason is recorded.
    Ignored(String),
    /// The commented pull request could not be read.
    Store(Arc<store::Error>),
}

/// What a trigger that fires builds.
enum Target<'a> {
    Push(&'a Push),
    PullRequest {
        repository: &'a Repository,
        pull_request: &'a PullRequest,
        approval: Approval,
    },
}

impl Target<'_> {
    /// What the target is, for people.
    fn what(&self) -> &'static str {
        match self {
            Target::Push(_) => "push",
            Target::PullRequest { .. } => "pull request",
        }
    }
}

/// How the files `target` changed are read from its repository's mirror: a push's from its
/// `before`, a pull request's from its merge base with its base branch (its head, a fork's too,
/// fetched as `refs/pull/N/head`).
fn changed_files(
    target: &Target<'_>,
) -> impl Fn(&Mirror) -> Result<Vec<String>, GitError> + Clone + Send + 'static {
    type Diff = fn(&Mirror, &str, &str) -> Result<ChangedFiles, GitError>;
    let (diff, from, to): (Diff, _, _) = match target {
        Target::Push(push) => (
            Mirror::changed_files,
            push.before.clone(),
            push.after.clone(),
        ),
        Target::PullRequest { pull_request, .. } => (
            Mirror::pull_request_files,
            pull_request.base_branch.clone(),
            pull_request.head_sha.clone(),
        ),
    };
    move |mirror: &Mirror| Ok(diff(mirror, &from, &to)?.files)
}

/// What became of a pending delivery's decision.
pub(super) enum Decided {
    /// It was completed, builds queued or not.
    Completed,
    /// It stays pending, to be decided again: the server is stopping, or the store failed.
    Pending,
}

impl Read<'_> {
    fn repository(&self) -> &Repository {
        match self {
            Read::Push(push) => &push.repository,
            Read::PullRequest(event) => &event.repository,
            Read::Comment { comment, .. } => &comment.repository,
        }
    }

    fn summary(&self) -> String {
        match self {
            Read::Push(push) => summary(push),
            Read::PullRequest(event) => pull_request_summary(event),
            Read::Comment { comment, .. } => comment_summary(comment),
        }
    }

    /// Whether `trigger` fires, as far as can be told without the changed files.
    fn fires(&self, trigger: &Trigger) -> Result<Target<'_>, triggers::Skip> {
        match self {
            Read::Push(push) => trigger.fires_on_ref(push).map(|()| Target::Push(push)),
            Read::PullRequest(event) => {
                trigger
                    .fires_on_pull_request(event)
                    .map(|approval| Target::PullRequest {
                        repository: &event.repository,
                        pull_request: &event.pull_request,
                        approval,
                    })
            }
            Read::Comment {
                comment,
                pull_request,
            } => {
                let approval = trigger.fires_on_comment(comment, pull_request.as_deref())?;
                let pull_request = pull_request
                    .as_deref()
                    .ok_or(triggers::Skip::UnknownPullRequest(comment.number))?;
                Ok(Target::PullRequest {
                    repository: &comment.repository,
                    pull_request,
                    approval,
                })
            }
        }
    }
}

/// A delivery's headers, judged before its body is read (see [`Service::admit`]).
pub struct Headers<'a> {
    pub event: Option<&'a str>,
    pub delivery: Option<&'a str>,
    pub signature: Option<&'a str>,
}

/// Headers that [`Service::admit`] let through: the body may be read and given to
/// [`Service::receive`].
pub struct Admitted {
    delivery: String,
    event: String,
    signature: Signature,
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
#[derive(Debug, Clone)]
pub enum Rejection {
    /// Not from GitHub (or not signed with our secret): recorded as rejected.
    Unauthorized(SignatureError),
    BadRequest(String),
    /// The record could not be written: nothing of the delivery was kept. GitHub does not
    /// redeliver by itself; its sender has to (the webhook's "Recent Deliveries" page).
    Unavailable(Unrecorded),
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unauthorized(e) => write!(f, "{e}"),
            Self::BadRequest(message) => f.write_str(message),
            Self::Unavailable(e) => e.fmt(f),
        }
    }
}

/// Why a delivery was not recorded.
#[derive(Debug, Clone)]
pub enum Unrecorded {
    /// The service is shutting down: its delivery writer has stopped.
    Stopping,
    /// The store failed the batch the delivery was written in; every delivery of the batch
    /// shares its error.
    Store(Arc<store::Error>),
}

impl std::fmt::Display for Unrecorded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unrecorded::Stopping => f.write_str("the service is stopping"),
            Unrecorded::Store(e) => e.fmt(f),
        }
    }
}

/// Where a delivery's writer learns how it was written.
pub(super) type Written = oneshot::Sender<Result<Recorded, Unrecorded>>;

/// The most deliveries written in one transaction.
const MAX_BATCH: usize = 256;
/// The most deliveries waiting for the writer. Beyond it a delivery that queues builds waits for
/// room (its sender waits for its answer anyway), and a record that queues nothing is dropped:
/// a flood of forged requests may not grow the server's memory.
pub(super) const MAX_WAITING: usize = 4 * MAX_BATCH;

impl Service {
    /// Judges a delivery's headers before its body is read: each present and of a length GitHub's
    /// have, and a signature that can be one. A request without a signature is refused (and
    /// counted as rejected) without reading a body of up to 25 MB.
    pub fn admit(&self, headers: Headers<'_>) -> Result<Admitted, Rejection> {
        let bounded = |value: Option<&str>, name: &str| match value {
            None => Err(Rejection::BadRequest(format!("no {name} header"))),
            Some(value) if value.len() > webhooks::MAX_HEADER_LEN => {
                Err(Rejection::BadRequest(format!(
                    "the {name} header is longer than {} bytes",
                    webhooks::MAX_HEADER_LEN
                )))
            }
            Some(value) => Ok(value.to_string()),
        };
        let delivery = bounded(headers.delivery, "X-GitHub-Delivery")?;
        let event = bounded(headers.event, "X-GitHub-Event")?;
        match Signature::parse(headers.signature) {
            Ok(signature) => Ok(Admitted {
                delivery,
                event,
                signature,
            }),
            Err(e) => {
                info!(delivery_id = delivery, event, rejection = %e, "delivery refused");
                self.record_later(rejected(delivery, event, e));
                Err(Rejection::Unauthorized(e))
            }
        }
    }

    /// Takes an admitted delivery: verified over its raw body before anything reads it, then
    /// recorded with the builds it queues. Answers without waiting for any fetch or build.
    pub async fn receive(&self, admitted: Admitted, body: &[u8]) -> Result<Receipt, Rejection> {
        let span = info_span!(
            "delivery",
            delivery_id = admitted.delivery,
            event = admitted.event
        );
        let taken = self.take(admitted, body).instrument(span.clone()).await;
        let _entered = span.enter();
        match &taken {
            Ok(receipt) => debug!(?receipt, "delivery taken"),
            Err(Rejection::Unavailable(e)) => error!(error = %e, "delivery not recorded"),
            Err(rejection) => info!(%rejection, "delivery refused"),
        }
        taken
    }

    async fn take(&self, admitted: Admitted, body: &[u8]) -> Result<Receipt, Rejection> {
        let Admitted {
            delivery,
            event,
            signature,
        } = admitted;
        if let Err(e) = signature.verify(&self.settings.webhook_secret, body) {
            self.record_later(rejected(delivery, event, e));
            return Err(Rejection::Unauthorized(e));
        }
        let (delivery_id, event) = (delivery.as_str(), event.as_str());
        let digest = webhooks::body_digest(body);
        let record = |summary: String| NewDelivery {
            id: delivery_id.to_string(),
            event: event.to_string(),
            verified: true,
            digest: Some(digest.clone()),
            summary,
            payload: None,
            results: Vec::new(),
            builds: Vec::new(),
            pull_request: None,
        };
        let delivery =
            webhooks::parse(event, body).map_err(|e| Rejection::BadRequest(e.to_string()))?;
        if let Delivery::CheckRun(run) = &delivery {
            return self.rerun(run, record(String::new())).await;
        }
        let read = match self.read(&delivery).await {
            Ok(read) => read,
            Err(Unread::Ignored(reason)) => {
                self.record_later(record(reason.clone()));
                return Ok(Receipt::Ignored { reason });
            }
            Err(Unread::Store(e)) => return Err(Rejection::Unavailable(Unrecorded::Store(e))),
        };
        let mut accepted = record(read.summary());
        let mut pending = false;
        // Only the triggers of the delivery's repository are worth a line in its record.
        let triggers = self.triggers.all();
        let repository = read.repository();
        for trigger in triggers.of_repository(&repository.owner, &repository.name) {
            match self.fires_from(trigger, &read) {
                Err(skip) => accepted.results.push(skipped(trigger, skip)),
                Ok(_) if trigger.has_file_filters() => pending = true,
                Ok((target, url)) => {
                    let build = self.target_build(trigger, &target, &url, delivery_id);
                    accepted.results.push(queued(trigger, &build));
                    accepted.builds.push(build);
                }
            }
        }
        // A pull request's record, and a /gcbrun's reasons, must outlast a crash: the comments
        // that follow need the one, and whoever typed the other asks why nothing built.
        let kept = match &read {
            Read::PullRequest(event) => {
                accepted.pull_request = Some((
                    event.repository.full_name.clone(),
                    event.pull_request.clone(),
                ));
                true
            }
            Read::Comment { comment, .. } => comment.asks_for_build(),
            Read::Push(_) => false,
        };
        accepted.payload = pending.then(|| body.to_vec());
        if accepted.builds.is_empty() && !pending && !kept {
            self.record_later(accepted);
            let builds = Vec::new();
            return Ok(Receipt::Accepted { builds, pending });
        }
        let builds = accepted.builds.clone();
        match self.record(accepted).await? {
            Recorded::New(skipped) => {
                if pending {
                    self.pending.store(true, Ordering::SeqCst);
                    self.work.notify_one();
                }
                let queued = without(builds, &skipped);
                if !queued.is_empty() {
                    self.cancel_superseded(&queued).await;
                    self.on_queued(&queued).await;
                }
                let builds = queued.into_iter().map(|build| build.id).collect();
                Ok(Receipt::Accepted { builds, pending })
            }
            Recorded::Duplicate => Ok(Receipt::Duplicate),
        }
    }

    /// A check run's "Re-run": a new build of the build it reports (its external id), recorded
    /// with the delivery. Only a build of the delivery's repository and commit is run again, so
    /// a check run another app (or another repository's) made names nothing here.
    async fn rerun(
        &self,
        run: &CheckRunEvent,
        mut accepted: NewDelivery,
    ) -> Result<Receipt, Rejection> {
        let rerun = match self.rerun_of(run).await {
            Ok(rerun) => rerun,
            Err(Unread::Ignored(reason)) => {
                accepted.summary = reason.clone();
                self.record_later(accepted);
                return Ok(Receipt::Ignored { reason });
            }
            Err(Unread::Store(e)) => return Err(Rejection::Unavailable(Unrecorded::Store(e))),
        };
        let (original, trigger) = rerun;
        let build = self.retried(original, Some(&accepted.id));
        accepted.summary = format!(
            "re-run of check run {} on {} ({}): build {}",
            run.id,
            run.repository.full_name,
            &run.head_sha[..7],
            run.external_id.as_deref().unwrap_or_default()
        );
        accepted.results.push(TriggerResult {
            trigger,
            build_id: Some(build.id.clone()),
            reason: None,
        });
        let builds = vec![build.id.clone()];
        accepted.builds.push(build);
        match self.record(accepted).await? {
            // A retry skips no group: it was asked for.
            Recorded::New(_) => {
                self.wake();
                Ok(Receipt::Accepted {
                    builds,
                    pending: false,
                })
            }
            Recorded::Duplicate => Ok(Receipt::Duplicate),
        }
    }

    /// The queued build a re-run asks for again, and its trigger; why there is none.
    async fn rerun_of(&self, run: &CheckRunEvent) -> Result<(QueuedBuild, String), Unread> {
        let ignored = |reason: String| Err(Unread::Ignored(reason));
        let store = |e| Unread::Store(Arc::new(e));
        if !run.is_rerun() {
            return ignored(format!(
                "check run {}: only a re-run (rerequested) builds",
                run.action
            ));
        }
        let Some(id) = run.external_id.as_deref() else {
            return ignored(format!(
                "check run {} names no build (it has no external id): builder did not make it",
                run.id
            ));
        };
        let original = match self.store.get_build(id).await.map_err(store)? {
            Some(build) => build,
            None => {
                return ignored(format!(
                    "check run {} names build {id:?}: no such build",
                    run.id
                ));
            }
        };
        let repository = original.source["repository"].as_str().unwrap_or_default();
        let commit = original.source["commit"].as_str().unwrap_or_default();
        if !repository.eq_ignore_ascii_case(&run.repository.full_name) || commit != run.head_sha {
            return ignored(format!(
                "check run {} names build {id}, of {repository} ({commit}), not of {} ({})",
                run.id, run.repository.full_name, run.head_sha
            ));
        }
        match self.store.queued_request(id).await.map_err(store)? {
            Some(queued) => {
                let trigger = queued.trigger.clone().unwrap_or_default();
                Ok((queued, trigger))
            }
            None => ignored(format!(
                "check run {} names build {id}, which no trigger started",
                run.id
            )),
        }
    }

    /// Cancels, for each of `queued` that is a pull request's build of a trigger that says so
    /// (`cancelSuperseded`), the trigger's other builds of that pull request still queued or
    /// running: they built a head that is no longer the pull request's. Done after the new
    /// builds are recorded, so a crash in between leaves the old builds running, never the pull
    /// request unbuilt; each cancel is reported to GitHub as any cancel is.
    async fn cancel_superseded(&self, queued: &[QueuedBuild]) {
        for build in queued {
            let (Some(name), Some(number)) = (
                build.trigger.as_deref(),
                build.source["pullRequest"]["number"].as_u64(),
            ) else {
                continue;
            };
            if !self
                .triggers
                .get(name)
                .is_ok_and(|trigger| trigger.cancels_superseded())
            {
                continue;
            }
            let older = match self.superseded(build, name, number).await {
                Ok(older) => older,
                Err(e) => {
                    warn!(error = %e, trigger = name, "finding superseded builds failed");
                    continue;
                }
            };
            for other in older {
                match self.cancel(&other.id).await {
                    Ok(()) => info!(
                        build_id = other.id,
                        superseded_by = build.id,
                        trigger = name,
                        "cancelled a superseded pull request build"
                    ),
                    // It ended meanwhile.
                    Err(Failed::Conflict(_)) => {}
                    Err(e) => {
                        warn!(error = %e, build_id = other.id, "cancelling a superseded build failed")
                    }
                }
            }
        }
    }

    /// Carries on once `queued` are recorded, whatever queued them: wakes the workers and
    /// cancels the older builds of the groups whose trigger says `CANCEL_OLDER`.
    pub(super) async fn on_queued(&self, queued: &[QueuedBuild]) {
        self.wake();
        self.cancel_older(queued).await;
    }

    /// Cancels, for each of `queued` whose trigger's concurrency says `CANCEL_OLDER`, the other
    /// builds of its group still queued or running. Done after the new builds are recorded, as
    /// [`Self::cancel_superseded`] is, so a crash in between leaves the older builds, never the
    /// group without its newest.
    async fn cancel_older(&self, queued: &[QueuedBuild]) {
        for build in queued {
            let (Some(name), Some(group)) = (build.trigger.as_deref(), &build.concurrency) else {
                continue;
            };
            let cancels = self.triggers.get(name).is_ok_and(|trigger| {
                trigger
                    .concurrency
                    .as_ref()
                    .is_some_and(|concurrency| concurrency.on_conflict == OnConflict::CancelOlder)
            });
            if !cancels {
                continue;
            }
            let older = match self
                .store
                .group_builds(&group.name, [Status::Queued, Status::Working])
                .await
            {
                Ok(older) => older,
                Err(e) => {
                    warn!(error = %e, group = group.name, "finding a group's older builds failed");
                    continue;
                }
            };
            let newer = |id: &String| queued.iter().any(|new| &new.id == id);
            for other in older.iter().filter(|id| !newer(id)) {
                match self.cancel(other).await {
                    Ok(()) => info!(
                        build_id = other,
                        cancelled_by = build.id,
                        group = group.name,
                        "cancelled an older build of a concurrency group"
                    ),
                    // It ended meanwhile.
                    Err(Failed::Conflict(_)) => {}
                    Err(e) => {
                        warn!(error = %e, build_id = other, "cancelling an older build failed")
                    }
                }
            }
        }
    }

    /// Hands a delivery that queues nothing to the recorder without waiting for it to be written:
    /// its record is for people to read, and losing the last few to a crash loses no build.
    fn record_later(&self, delivery: NewDelivery) {
        hand_over(&self.recorder, &self.dropped, delivery);
    }

    /// Hands a delivery to the recorder and waits until it is written (see [`write_deliveries`]).
    async fn record(&self, delivery: NewDelivery) -> Result<Recorded, Rejection> {
        let stopped = || Rejection::Unavailable(Unrecorded::Stopping);
        let (sender, written) = oneshot::channel();
        self.recorder
            .send((delivery, sender))
            .await
            .map_err(|_| stopped())?;
        written
            .await
            .map_err(|_| stopped())?
            .map_err(Rejection::Unavailable)
    }

    /// What a delivery says, with what deciding its triggers needs: a comment's pull request as
    /// the latest delivery of it described it (the comment's own delivery lacks its head).
    async fn read<'d>(&self, delivery: &'d Delivery) -> Result<Read<'d>, Unread> {
        match delivery {
            Delivery::PullRequest(event) => Ok(Read::PullRequest(event)),
            Delivery::Comment(comment) => {
                let asks = comment.on_pull_request && comment.asks_for_build();
                let pull_request = if asks {
                    self.store
                        .pull_request(&comment.repository.full_name, comment.number)
                        .await
                        .map_err(|e| Unread::Store(Arc::new(e)))?
                        .map(Box::new)
                } else {
                    None
                };
                Ok(Read::Comment {
                    comment,
                    pull_request,
                })
            }
            other => triggers::push_of(other)
                .map(Read::Push)
                .map_err(|skip| Unread::Ignored(skip.to_string())),
        }
    }

    /// Whether `read` fires `trigger` (as far as can be told without the changed files), and if
    /// so what it builds and the URL its build fetches from: the trigger's repository on the
    /// server's GitHub. A push's `clone_url` must name it; a pull request's head, a fork's too,
    /// is fetched from it as `refs/pull/N/head`, so nothing the pull request says is fetched.
    fn fires_from<'r>(
        &self,
        trigger: &Trigger,
        read: &'r Read<'_>,
    ) -> Result<(Target<'r>, String), triggers::Skip> {
        let target = read.fires(trigger)?;
        let push = match &target {
            Target::Push(push) => Some(*push),
            Target::PullRequest { .. } => None,
        };
        let url = trigger.source_url(&self.settings.github, push)?;
        Ok((target, url))
    }

    /// The build `target` queues for `trigger`, fetched from `url`: a pull request's is of its
    /// head commit, reached through its head branch, with the pull request's own values and
    /// approval.
    fn target_build(
        &self,
        trigger: &Trigger,
        target: &Target<'_>,
        url: &str,
        delivery: &str,
    ) -> QueuedBuild {
        match target {
            Target::Push(push) => self.queued_build(
                trigger,
                &push.repository,
                url,
                Some(&push.git_ref),
                push.commit(),
                Some(delivery),
            ),
            Target::PullRequest {
                repository,
                pull_request,
                approval,
            } => {
                let head = GitRef::Branch(pull_request.head_branch.clone());
                let mut build = self.queued_build(
                    trigger,
                    repository,
                    url,
                    Some(&head),
                    &pull_request.head_sha,
                    Some(delivery),
                );
                let (_, values) = trigger.pull_request_built_ins(repository, pull_request);
                build.substitutions.extend(values.clone());
                if let Request::Push {
                    overrides,
                    secrets,
                    approved,
                    ..
                } = &mut build.request
                {
                    // Over the trigger's substitutions: they are facts of the pull request.
                    overrides.extend(values);
                    *approved = approval.secrets;
                    // Unapproved, it is granted none of its trigger's secrets either.
                    if !approval.secrets {
                        secrets.clear();
                    }
                }
                build.source["pullRequest"] = serde_json::json!({
                    "number": pull_request.number,
                    "headBranch": pull_request.head_branch,
                    "baseBranch": pull_request.base_branch,
                    "headRepository": pull_request.head_repository,
                });
                build
            }
        }
    }

    /// Starts deciding the pending deliveries that no task of `deciding` decides yet, each on a
    /// task of its own, at most [`MAX_DECIDING`] at once: a slow fetch holds up only its own
    /// delivery, never the queue or other deliveries. Whether some were left for later, when a
    /// decision ends.
    pub(super) async fn decide_pending(
        self: &Arc<Self>,
        deciding: &mut tokio::task::JoinSet<Decided>,
        stopping: &CancellationToken,
    ) -> Result<bool, store::Error> {
        let pending = self.store.pending_deliveries().await?;
        let mut left = false;
        for delivery in pending {
            let mut undecided = self.undecided.lock().expect("undecided deliveries");
            if undecided.contains(&delivery.id) {
                continue;
            }
            if undecided.len() >= MAX_DECIDING {
                left = true;
                break;
            }
            undecided.insert(delivery.id.clone());
            drop(undecided);
            let span = info_span!("delivery", delivery_id = %delivery.id, event = %delivery.event);
            let (service, cancel) = (self.clone(), stopping.child_token());
            deciding.spawn(
                async move {
                    let _decided = Deciding(&service, delivery.id.clone());
                    service.decide(delivery, &cancel).await
                }
                .instrument(span),
            );
        }
        Ok(left)
    }

    /// Decides a pending delivery's file-filtered triggers from its push's (or pull request's)
    /// changed files, and queues their builds with that decision. The fetch is tried again on
    /// failure; once the tries are exhausted the delivery is completed with each trigger saying
    /// why it did not build. Cancelled (the server stopping), or its commented pull request
    /// unreadable, it stays PENDING for a later try.
    async fn decide(&self, delivery: PendingDelivery, cancel: &CancellationToken) -> Decided {
        let mut results = delivery.results;
        let parsed = match webhooks::parse(&delivery.event, &delivery.payload) {
            Ok(parsed) => parsed,
            // It was read when recorded: only a change of this code gets here.
            Err(e) => {
                error!(error = %e, "a pending delivery no longer reads; completed as it is");
                self.complete(&delivery.id, &results, &[]).await;
                return Decided::Completed;
            }
        };
        let read = match self.read(&parsed).await {
            Ok(read) => read,
            Err(Unread::Ignored(reason)) => {
                error!(%reason, "a pending delivery builds nothing; completed as it is");
                self.complete(&delivery.id, &results, &[]).await;
                return Decided::Completed;
            }
            Err(Unread::Store(e)) => {
                warn!(error = %e, "reading the delivery's pull request failed; it stays pending");
                return Decided::Pending;
            }
        };
        let triggers = self.triggers.all();
        let repository = read.repository();
        let waiting: Vec<(&Trigger, Target<'_>, String)> = triggers
            .of_repository(&repository.owner, &repository.name)
            .filter(|trigger| trigger.has_file_filters())
            .filter_map(|trigger| {
                let (target, url) = self.fires_from(trigger, &read).ok()?;
                Some((trigger, target, url))
            })
            .collect();
        // Every trigger that waits builds the same target from the same repository.
        let changed = match waiting.first() {
            None => Ok(Vec::new()),
            Some((_, target, url)) => {
                let files = changed_files(target);
                self.read_mirror_retried(url, files, cancel).await
            }
        };
        if let Err(Exhausted {
            last: FetchFailed::Cancelled,
            ..
        }) = changed
        {
            info!("deciding the delivery stopped; it stays pending");
            return Decided::Pending;
        }
        let mut builds = Vec::new();
        for (trigger, target, url) in waiting {
            let decision = match &changed {
                Ok(files) => trigger.files_fire(files).map_err(|skip| skip.to_string()),
                Err(e) => Err(format!(
                    "the {}'s changed files could not be read: {e}",
                    target.what()
                )),
            };
            match decision {
                Ok(()) => {
                    let build = self.target_build(trigger, &target, &url, &delivery.id);
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
        if let Err(e) = &changed {
            warn!(error = %e, "the delivery's file-filtered triggers did not build");
        }
        self.complete(&delivery.id, &results, &builds).await;
        Decided::Completed
    }

    /// The builds of trigger `name` for pull request `number` that are unfinished and were
    /// queued before `build`: only older ones, so that two deliveries of one pull request
    /// decided at once do not cancel each other's builds.
    async fn superseded(
        &self,
        build: &QueuedBuild,
        name: &str,
        number: u64,
    ) -> Result<Vec<store::BuildRecord>, store::Error> {
        let Some(queued_at) = self
            .store
            .get_build(&build.id)
            .await?
            .map(|b| b.create_time)
        else {
            return Ok(Vec::new());
        };
        let mut older = Vec::new();
        for status in [Status::Pending, Status::Queued, Status::Working] {
            let query = BuildQuery {
                status: Some(status),
                trigger: Some(name.to_string()),
                limit: SUPERSEDED_PAGE,
                ..BuildQuery::default()
            };
            let builds = self.store.list_builds(&query).await?;
            older.extend(builds.into_iter().filter(|other| {
                other.source["pullRequest"]["number"].as_u64() == Some(number)
                    && (other.create_time, &other.id) < (queued_at, &build.id)
            }));
        }
        Ok(older)
    }

    /// Completes a pending delivery with its results and builds (but for those the store
    /// skipped for their full group).
    async fn complete(&self, id: &str, results: &[TriggerResult], builds: &[QueuedBuild]) {
        match self.store.complete_delivery(id, results, builds).await {
            Ok(Some(skipped)) => {
                let queued = without(builds.to_vec(), &skipped);
                if !queued.is_empty() {
                    self.cancel_superseded(&queued).await;
                    self.on_queued(&queued).await;
                }
            }
            Ok(None) => {}
            Err(e) => error!(error = %e, "recording the delivery's builds failed"),
        }
    }
}

/// `builds` but for those the store did not queue, their group being full.
fn without(builds: Vec<QueuedBuild>, skipped: &[GroupFull]) -> Vec<QueuedBuild> {
    builds
        .into_iter()
        .filter(|build| !skipped.iter().any(|full| full.build == build.id))
        .collect()
}

/// The most unfinished builds of one trigger read when looking for superseded ones.
const SUPERSEDED_PAGE: u32 = 1000;

/// The most pending deliveries decided at once (each may be fetching).
const MAX_DECIDING: usize = 8;

/// A delivery being decided, for as long as its task lives (a panic included): then it is no
/// longer, and the queue is told to look at the pending deliveries again.
struct Deciding<'a>(&'a Service, String);

impl Drop for Deciding<'_> {
    fn drop(&mut self) {
        let Deciding(service, id) = self;
        if let Ok(mut undecided) = service.undecided.lock() {
            undecided.remove(id);
        }
    }
}

/// Hands `delivery` to the writer without waiting. One the writer has no room for is dropped,
/// and counted in `dropped` if it was rejected: the writer adds that to the stored count with
/// its next batch.
fn hand_over(
    recorder: &mpsc::Sender<(NewDelivery, Written)>,
    dropped: &AtomicU64,
    delivery: NewDelivery,
) {
    let (written, _) = oneshot::channel();
    let rejected = !delivery.verified;
    if recorder.try_send((delivery, written)).is_err() {
        debug!("delivery record dropped: the writer is behind");
        if rejected {
            dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::store::SqliteStore;

    /// A flood that outruns the writer keeps a bounded sample, and the exact count.
    #[tokio::test]
    async fn rejections_dropped_while_the_writer_is_behind_are_still_counted() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(&dir.path().join(store::DATABASE))
                .await
                .unwrap(),
        );
        let (recorder, queue) = mpsc::channel(2);
        let dropped = Arc::new(AtomicU64::new(0));
        for i in 0..10 {
            let forged = rejected(
                format!("forged-{i}"),
                "push".into(),
                SignatureError::Mismatch,
            );
            hand_over(&recorder, &dropped, forged);
        }
        drop(recorder);
        write_deliveries(store.clone(), queue, dropped.clone()).await;
        assert_eq!(store.rejected_deliveries().await.unwrap(), 10);
        assert_eq!(store.list_deliveries(100).await.unwrap().len(), 2);
    }
}
