//! Taking GitHub deliveries: checking their signature, deciding which triggers they fire,
//! recording them with their builds in one transaction before answering, and deciding later the
//! triggers that wait for a push's changed files.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument as _, debug, error, info, info_span, warn};

use super::*;
use crate::adapters::source::git::GitError;
use crate::adapters::store::PendingDelivery;

/// Writes deliveries as they come, each transaction taking every delivery that arrived while the
/// one before it was being written: one write to disk for all of them, so that durably recording
/// each delivery before answering it does not cost one disk write each.
pub(super) async fn write_deliveries(
    store: Arc<dyn Store>,
    mut queue: mpsc::Receiver<(NewDelivery, Written)>,
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
    /// The record could not be written; GitHub will redeliver.
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
        };
        let delivery =
            webhooks::parse(event, body).map_err(|e| Rejection::BadRequest(e.to_string()))?;
        let push = match triggers::push_of(&delivery) {
            Ok(push) => push,
            Err(skip) => {
                let reason = skip.to_string();
                self.record_later(record(reason.clone()));
                return Ok(Receipt::Ignored { reason });
            }
        };
        let mut accepted = record(summary(push));
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
        accepted.payload = pending.then(|| body.to_vec());
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
        if self.recorder.try_send((delivery, written)).is_err() {
            debug!("delivery record dropped: the writer is behind");
        }
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

    /// Decides the triggers of every pending delivery from the changed files of its push.
    pub(super) async fn decide_pending(&self) {
        let pending = match self.store.pending_deliveries().await {
            Ok(pending) => pending,
            Err(e) => {
                warn!(error = %e, "reading pending deliveries failed");
                return;
            }
        };
        for delivery in pending {
            let span = info_span!("delivery", delivery_id = %delivery.id, event = %delivery.event);
            self.decide(delivery).instrument(span).await;
        }
    }

    /// Decides a pending delivery's file-filtered triggers from its push's changed files, and
    /// queues their builds with that decision.
    async fn decide(&self, delivery: PendingDelivery) {
        let Ok(Delivery::Push(push)) = webhooks::parse(&delivery.event, &delivery.payload) else {
            return;
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
            error!(error = %e, "recording the delivery's builds failed");
        }
    }

    async fn changed_files(&self, push: &Push) -> Result<Vec<String>, ChangesUnknown> {
        let url = push.repository.clone_url.clone();
        let cache = self.settings.data_dir.join("git");
        let rewrites = self.settings.rewrites.clone();
        let (before, after) = (push.before.clone(), push.after.clone());
        tokio::task::spawn_blocking(move || {
            let mirror = Mirror::update(&cache, &url, &rewrites)?;
            Ok(mirror.changed_files(&before, &after)?.files)
        })
        .await
        .map_err(ChangesUnknown::Task)?
        .map_err(ChangesUnknown::Git)
    }
}

/// Why a push's changed files are unknown: its trigger results say so.
#[derive(Debug)]
enum ChangesUnknown {
    /// The repository's mirror could not be updated or compared.
    Git(GitError),
    /// The blocking task that reads the mirror panicked or was cancelled.
    Task(tokio::task::JoinError),
}

impl std::fmt::Display for ChangesUnknown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChangesUnknown::Git(e) => e.fmt(f),
            ChangesUnknown::Task(e) => e.fmt(f),
        }
    }
}
