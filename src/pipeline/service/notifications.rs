//! The notifier (issue 20): publishes every status a build takes, as Cloud Build does on its
//! `cloud-builds` topic, to the notifiers whose filters select it; from a task of its own, so
//! that no notifier fails or slows a build. The store writes an event for each status a build
//! takes, whichever process moved it (`store::Notifications`). The notifier wakes when this
//! process moves a build, and on a tick for what other processes did:
//!
//! 1. it claims the events not yet published and, for each, makes the Pub/Sub message of the
//!    build at that status, asks every notifier's filter about it, and records a notification
//!    for each that selects it (one for a filter that cannot say, with why), the event removed
//!    in the same transaction;
//! 2. it claims the notifications due and sends them, all at once, each attempt within its time
//!    limit and recorded: a failure is tried again with a doubling delay, and given up after
//!    its last attempt or at once when the target refuses it.
//!
//! A server with no notifiers publishes each event to none, which removes it. The newest
//! notifications, with their attempts, are read for the API and the console.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info_span, warn};

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
    /// Runs until `shutdown`, publishing builds' status changes (see the module doc).
    pub async fn run_notifications(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(notifying) = &self.settings.notifying else {
            return;
        };
        loop {
            let now = SystemTime::now();
            match self.store.claim_events(now, now + CLAIM, BATCH).await {
                Ok(events) => {
                    for event in events {
                        let span = info_span!("publish", build_id = %event.build_id);
                        self.publish(notifying, event).instrument(span).await;
                    }
                }
                Err(e) => warn!(error = %e, "reading the builds' status changes failed"),
            }
            let now = SystemTime::now();
            match self
                .store
                .claim_notifications(now, now + CLAIM, BATCH)
                .await
            {
                Ok(due) => {
                    let service: &Service = &self;
                    futures_util::stream::iter(in_order(due))
                        .for_each_concurrent(SENDING, |notifications| async move {
                            for notification in notifications {
                                let span = info_span!("notify",
                                    build_id = %notification.build_id,
                                    notifier = %notification.notifier);
                                let sent = service.notify(notifying, notification);
                                sent.instrument(span).await;
                            }
                        })
                        .await
                }
                Err(e) => warn!(error = %e, "reading the notifications due failed"),
            }
            tokio::select! {
                () = self.events_due.notified() => {}
                () = tokio::time::sleep(TICK) => {}
                () = shutdown.cancelled() => return,
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

    /// Records the notifications of `event`, and removes it.
    async fn publish(&self, notifying: &Notifying, event: BuildEvent) {
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
            Err(e) => return warn!(error = %e, "reading the build to publish failed"),
        };
        let published = self
            .store
            .publish(
                event.seq,
                &event.build_id,
                event.status,
                &new,
                SystemTime::now(),
            )
            .await;
        match published {
            Ok(()) => debug!(status = %event.status, notifications = new.len(), "published"),
            Err(e) => warn!(error = %e, "recording the notifications failed"),
        }
    }

    /// Makes one attempt at `notification`, and records it.
    async fn notify(&self, notifying: &Notifying, notification: DueNotification) {
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
        if let Err(e) = self
            .store
            .attempted(notification.id, &attempt, SystemTime::now())
            .await
        {
            warn!(error = %e, "recording the notification's attempt failed");
        }
    }
}

/// `due` in runs to send at once: the notifications of one build to one notifier, in the order
/// its statuses were taken (a receiver sees QUEUED before WORKING unless one was retried).
fn in_order(due: Vec<DueNotification>) -> Vec<Vec<DueNotification>> {
    let mut runs: Vec<Vec<DueNotification>> = Vec::new();
    for notification in due {
        let same = |run: &&mut Vec<DueNotification>| {
            run[0].build_id == notification.build_id && run[0].notifier == notification.notifier
        };
        match runs.iter_mut().find(same) {
            Some(run) => run.push(notification),
            None => runs.push(vec![notification]),
        }
    }
    runs
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
    fn a_builds_notifications_to_one_notifier_go_one_after_the_other_in_order() {
        let due = |id: i64, build: &str, notifier: &str| DueNotification {
            id,
            build_id: build.into(),
            status: Status::Queued,
            notifier: notifier.into(),
            message: String::new(),
            attempts: 0,
        };
        let runs = in_order(vec![
            due(1, "a", "hook"),
            due(2, "a", "mail"),
            due(3, "b", "hook"),
            due(4, "a", "hook"),
        ]);
        let ids: Vec<Vec<i64>> = runs
            .iter()
            .map(|run| run.iter().map(|n| n.id).collect())
            .collect();
        assert_eq!(ids, [vec![1, 4], vec![2], vec![3]]);
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
