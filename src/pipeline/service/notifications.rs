//! The notifier (issue 20): publishes every status a build takes, as Cloud Build does on its
//! `cloud-builds` topic, to the notifiers whose filters select it; from a task of its own, so
//! that no notifier fails or slows a build. The store writes an event for each status a build
//! takes, whichever process moved it (`store::Notifications`). The notifier wakes when this
//! process moves a build, and on a tick for what other processes did:
//!
//! 1. one loop claims the events not yet published (a build's in the order taken) and, for
//!    each, makes the Pub/Sub message of the build at that status, asks every notifier's filter
//!    about it, and records a notification for each that selects it (one for a filter that
//!    cannot say, with why), the event removed in the same transaction;
//! 2. another claims the notifications due (a build's to one notifier one at a time, in order)
//!    and sends them, [`SENDING`] at once, claiming more as each ends; each attempt within its
//!    time limit and recorded: a failure is tried again with a doubling delay, and given up
//!    after its last attempt or at once when the target refuses it.
//!
//! What a claim took and did not finish before the claim's end (a slow target, a shutdown) is
//! left for the next claim, and a record made after it changes nothing: replicas sharing the
//! store never publish or send one thing twice at once. A server publishes each event to its
//! own notifiers: servers sharing a store load the same notifier configs. A server with no
//! notifiers publishes each event to none, which removes it. The newest
//! notifications, with their attempts, are read for the API and the console.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, error, info_span, warn};

use super::files::load_dir;
use super::*;
use crate::adapters::notify::Deliver;
use crate::adapters::store::{Attempt, BuildEvent, DueNotification, NewNotification};
use crate::core::build_resource::build_resource;
use crate::core::notify::{self, Notifier};

/// How often the notifier looks at the store without being woken.
const TICK: Duration = Duration::from_secs(1);
/// How many events or notifications one look takes at most.
const BATCH: u32 = 100;
/// How many notifications are sent at once.
const SENDING: usize = 16;
/// How long what one look takes is this process's alone (replicas share the store): a process
/// that dies with them claimed delays them by this much.
const CLAIM: Duration = Duration::from_secs(60);

/// Where builds' status changes go.
pub struct Notifying {
    pub notifiers: Vec<Notifier>,
    pub deliver: Arc<dyn Deliver>,
    /// The console's address as its users reach it: a build's page, the message's `logUrl`, is
    /// `{public_url}/builds/{id}`.
    pub public_url: String,
}

/// The notifiers configured at `path`: one notifier config file, or a directory of them (each
/// `*.yaml`, `*.yml` or `*.json` file one notifier, no two with one name). `Err` holds every
/// problem at its file, line and column; `Ok` carries the warnings.
pub fn load_notifiers(path: &Path) -> Result<(Vec<Notifier>, String), String> {
    if path.is_dir() {
        let (loaded, warnings) = load_dir(path, notify::load, |n: &Notifier| &n.name)?;
        return Ok((loaded.into_iter().map(|(_, n)| n).collect(), warnings));
    }
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| format!("{shown}: {e}"))?;
    match notify::load(&bytes) {
        Ok((notifier, warnings)) => Ok((vec![notifier], warnings.render(&shown))),
        Err(problems) => Err(problems.render(&shown)),
    }
}

impl Service {
    /// Runs until `shutdown`, publishing builds' status changes (see the module doc): one loop
    /// publishes events, another sends, so that a target that does not answer holds up neither
    /// the publishing nor the other targets' notifications beyond their turn.
    pub async fn run_notifications(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(notifying) = &self.settings.notifying else {
            return;
        };
        let recorded = Notify::new();
        tokio::join!(
            self.run_publishing(notifying, &recorded, &shutdown),
            self.run_sending(&recorded, &shutdown),
        );
    }

    /// Publishes the events due, as they come; wakes the sender when it recorded some.
    async fn run_publishing(
        &self,
        notifying: &Notifying,
        recorded: &Notify,
        shutdown: &CancellationToken,
    ) {
        loop {
            let now = SystemTime::now();
            let claimed_until = now + CLAIM;
            match self.store.claim_events(now, claimed_until, BATCH).await {
                Ok(events) => {
                    for event in events {
                        // The rest may be another replica's by now: claimed again later.
                        if shutdown.is_cancelled() || SystemTime::now() >= claimed_until {
                            break;
                        }
                        let span = info_span!("publish", build_id = %event.build_id);
                        let published = self.publish(notifying, &event, claimed_until);
                        if published.instrument(span).await {
                            recorded.notify_one();
                        }
                    }
                }
                Err(e) => warn!(error = %e, "reading the builds' status changes failed"),
            }
            tokio::select! {
                () = self.events_due.notified() => {}
                () = tokio::time::sleep(TICK) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Sends the notifications due, as they come, [`SENDING`] at once, each on a task of its
    /// own: a send that is slow takes one place, and the others go on being claimed and sent
    /// meanwhile (tasks, not futures this loop polls: a send holding the store's write turn
    /// must go on while this loop waits for the store).
    async fn run_sending(self: &Arc<Self>, recorded: &Notify, shutdown: &CancellationToken) {
        let mut sending = JoinSet::new();
        loop {
            let room = SENDING - sending.len();
            let now = SystemTime::now();
            let claimed_until = now + CLAIM;
            if room > 0 {
                let claimed = self
                    .store
                    .claim_notifications(now, claimed_until, room as u32)
                    .await;
                match claimed {
                    Ok(due) => {
                        for notification in due {
                            let span = info_span!("notify",
                                build_id = %notification.build_id,
                                notifier = %notification.notifier);
                            let service = self.clone();
                            let sent = async move {
                                service.notify(notification, claimed_until).await;
                            };
                            sending.spawn(sent.instrument(span));
                        }
                    }
                    Err(e) => warn!(error = %e, "reading the notifications due failed"),
                }
            }
            tokio::select! {
                Some(ended) = sending.join_next(), if !sending.is_empty() => {
                    if let Err(e) = ended {
                        error!(error = %e, "sending a notification failed");
                    }
                }
                () = recorded.notified() => {}
                () = tokio::time::sleep(TICK) => {}
                // What is being sent is claimed: sent again once the claim runs out.
                () = shutdown.cancelled() => return sending.abort_all(),
            }
        }
    }

    /// The newest notifications first, at most `limit`, each with its attempts.
    pub async fn notifications(&self, limit: u32) -> Result<Vec<wire::Notification>, Failed> {
        let recent = self.store.recent_notifications(limit).await?;
        let mut listed = Vec::with_capacity(recent.len());
        for notification in recent {
            let attempts = self.store.attempts(notification.id).await?;
            listed.push(wire::Notification::with_history(notification, attempts));
        }
        Ok(listed)
    }

    /// Records the notifications of `event`, and removes it, under the claim that ends at
    /// `claimed_until`; whether it recorded any.
    async fn publish(
        &self,
        notifying: &Notifying,
        event: &BuildEvent,
        claimed_until: SystemTime,
    ) -> bool {
        let new = match self.store.get_build(&event.build_id).await {
            Ok(Some(build)) => {
                let page = format!(
                    "{}/builds/{}",
                    notifying.public_url.trim_end_matches('/'),
                    build.id
                );
                let project = &self.settings.machine.project;
                let mut resource = build_resource(&build.into(), project, &page);
                notify::at_status(&mut resource, event.status);
                let message = notify::pubsub_message(
                    &resource,
                    event.status,
                    &event.seq.to_string(),
                    SystemTime::now(),
                    project,
                );
                notifications(&notifying.notifiers, &resource, &message.to_string())
            }
            // Removed meanwhile (retention): nothing to tell.
            Ok(None) => Vec::new(),
            Err(e) => {
                warn!(error = %e, "reading the build to publish failed");
                return false;
            }
        };
        let published = self
            .store
            .publish(event, claimed_until, &new, SystemTime::now())
            .await;
        match published {
            Ok(true) => {
                debug!(status = %event.status, notifications = new.len(), "published");
                !new.is_empty()
            }
            Ok(false) => {
                debug!("the event's claim ran out before it was published: another publishes it");
                false
            }
            Err(e) => {
                warn!(error = %e, "recording the notifications failed");
                false
            }
        }
    }

    /// Makes one attempt at `notification`, and records it under the claim that ends at
    /// `claimed_until`.
    async fn notify(&self, notification: DueNotification, claimed_until: SystemTime) {
        let Some(notifying) = &self.settings.notifying else {
            return;
        };
        let number = notification.attempts + 1;
        let sent = match notifying
            .notifiers
            .iter()
            .find(|n| n.name == notification.notifier)
        {
            Some(notifier) => {
                notifying
                    .deliver
                    .deliver(&notifier.target, &notification.message)
                    .await
            }
            None => Err(crate::adapters::notify::DeliveryError {
                retry: false,
                message: format!(
                    "no notifier {:?} is configured any more",
                    notification.notifier
                ),
            }),
        };
        let attempt = match sent {
            Ok(()) => {
                debug!(status = %notification.status, "notified");
                Attempt {
                    number,
                    error: None,
                    retry_at: None,
                }
            }
            Err(e) => {
                let retry_at = retry_at(number, e.retry, SystemTime::now());
                warn!(error = %e, attempt = number, given_up = retry_at.is_none(), "a notification failed");
                Attempt {
                    number,
                    error: Some(e.message),
                    retry_at,
                }
            }
        };
        let recorded = self
            .store
            .attempted(notification.id, &attempt, claimed_until, SystemTime::now())
            .await;
        match recorded {
            Ok(true) => {}
            Ok(false) => warn!("the notification's claim ran out before its attempt was recorded"),
            Err(e) => warn!(error = %e, "recording the notification's attempt failed"),
        }
    }
}

/// The notifications of the build `resource` whose Pub/Sub message is `message`: one for each
/// notifier whose filter selects it, or cannot say (then never sent, with why).
fn notifications(
    notifiers: &[Notifier],
    resource: &serde_json::Value,
    message: &str,
) -> Vec<NewNotification> {
    notifiers
        .iter()
        .filter_map(|notifier| {
            let selected = notifier
                .filter
                .as_ref()
                .map_or(Ok(true), |filter| filter.selects(resource));
            let unsendable = match selected {
                Ok(false) => return None,
                Ok(true) => None,
                Err(e) => Some(format!("the filter cannot say: {e}")),
            };
            Some(NewNotification {
                notifier: notifier.name.clone(),
                message: message.to_string(),
                unsendable,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::notify::{BuildFilter, Target};

    fn notifier(name: &str, filter: Option<&str>) -> Notifier {
        Notifier {
            name: name.into(),
            filter: filter.map(|f| BuildFilter::compile(f).unwrap()),
            target: Target::Http {
                url: "http://127.0.0.1:9/".into(),
                signing_secret: None,
            },
        }
    }

    #[test]
    fn each_notifier_gets_what_its_filter_selects_and_a_filter_that_cannot_say_is_kept_unsent() {
        let notifiers = [
            notifier("all", None),
            notifier("failures", Some("build.status == Build.Status.FAILURE")),
            notifier("main", Some("build.substitutions.BRANCH_NAME == 'main'")),
        ];
        let resource = serde_json::json!({"id": "b", "status": "SUCCESS", "substitutions": {}});
        let made = notifications(&notifiers, &resource, "{}");
        let names: Vec<_> = made.iter().map(|n| n.notifier.as_str()).collect();
        assert_eq!(names, ["all", "main"]);
        assert_eq!(made[0].unsendable, None);
        assert!(
            made[1]
                .unsendable
                .as_deref()
                .unwrap()
                .starts_with("the filter cannot say")
        );
    }
}
