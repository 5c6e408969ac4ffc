//! The notifications part of the store's contract (`store::Notifications`, issue 20).

use std::time::{Duration, SystemTime};

use builder::adapters::store::{Attempt, BuildEvent, NewNotification, Store};
use builder::core::build::{Outcome, Status};

use super::{CLAIMED, lease, queued};

/// Every status a build takes is an event, in order, whichever statement moved it: queued,
/// claimed, finished; queued and cancelled. A build's next event is claimable only once the one
/// before it is published; claimed, an event is no one else's until the claim ends; published,
/// it is gone; and a publish under a claim that ran out records nothing.
pub async fn every_status_a_build_takes_is_published_once_in_order(store: &dyn Store) {
    store
        .queue_builds(&[queued("n-1", "t"), queued("n-2", "t")])
        .await
        .unwrap();
    let a = lease("a", 30);
    assert_eq!(
        store.claim_queued(&a, None).await.unwrap().unwrap().id,
        "n-1"
    );
    let outcome = Outcome::ended(Status::Success, Vec::new(), None);
    store.finish_build("n-1", &outcome, &a).await.unwrap();
    assert!(store.cancel_queued("n-2").await.unwrap());

    let mut now = SystemTime::now();
    let mut published: Vec<(String, Status)> = Vec::new();
    loop {
        let until = now + CLAIMED;
        let events = store.claim_events(now, until, 100).await.unwrap();
        if events.is_empty() {
            break;
        }
        // One of each build at a time, the oldest first.
        let mut builds: Vec<&str> = events.iter().map(|e| e.build_id.as_str()).collect();
        builds.sort();
        builds.dedup();
        assert_eq!(builds.len(), events.len(), "{events:?}");
        // Claimed: no one gets them again before the claim's end.
        assert_eq!(store.claim_events(now, until, 100).await.unwrap(), []);
        for event in &events {
            assert!(store.publish(event, until, &[], now).await.unwrap());
            published.push((event.build_id.clone(), event.status));
        }
        now += Duration::from_millis(1);
    }
    let of = |id: &str| -> Vec<Status> {
        published
            .iter()
            .filter(|(build, _)| build == id)
            .map(|(_, status)| *status)
            .collect()
    };
    assert_eq!(
        of("n-1"),
        [Status::Queued, Status::Working, Status::Success]
    );
    assert_eq!(of("n-2"), [Status::Queued, Status::Cancelled]);

    // A claim that ran out: another claimer takes the event; the first one's publish is refused.
    store.queue_builds(&[queued("n-3", "t")]).await.unwrap();
    let first = store
        .claim_events(now, now + CLAIMED, 10)
        .await
        .unwrap()
        .remove(0);
    let later = now + CLAIMED + Duration::from_secs(1);
    let second = store
        .claim_events(later, later + CLAIMED, 10)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(first.seq, second.seq);
    let made = NewNotification {
        notifier: "hook".into(),
        message: "{}".into(),
        unsendable: None,
    };
    let late = store
        .publish(&first, now + CLAIMED, std::slice::from_ref(&made), later)
        .await
        .unwrap();
    assert!(!late);
    assert_eq!(store.recent_notifications(10).await.unwrap(), []);
    assert!(
        store
            .publish(&second, later + CLAIMED, &[made], later)
            .await
            .unwrap()
    );
    assert_eq!(store.recent_notifications(10).await.unwrap().len(), 1);
}

/// A published event's notifications are due until delivered or given up, a build's to one
/// notifier one at a time; a failed attempt
/// waits for its retry time; every attempt is kept in order; an attempt recorded under a claim
/// that ran out changes nothing; a notification whose filter could not say is kept, never due.
pub async fn notifications_are_due_until_delivered_or_given_up(store: &dyn Store) {
    store.queue_builds(&[queued("m-1", "t")]).await.unwrap();
    let now = SystemTime::now();
    let event: BuildEvent = store
        .claim_events(now, now + CLAIMED, 10)
        .await
        .unwrap()
        .remove(0);
    let made = |notifier: &str, unsendable: Option<&str>| NewNotification {
        notifier: notifier.into(),
        message: format!("{{\"to\": \"{notifier}\"}}"),
        unsendable: unsendable.map(str::to_string),
    };
    // The hook's second waits for its first: a notifier gets a build's notifications in order.
    let notifications = [
        made("hook", None),
        made("picky", Some("the filter cannot say")),
        made("hook", None),
    ];
    assert!(
        store
            .publish(&event, now + CLAIMED, &notifications, now)
            .await
            .unwrap()
    );

    let claim = |at: SystemTime| store.claim_notifications(at, at + CLAIMED, 10);
    let due = claim(now).await.unwrap();
    assert_eq!(due.len(), 1);
    let hook = &due[0];
    assert_eq!(
        (
            hook.build_id.as_str(),
            hook.status,
            hook.notifier.as_str(),
            hook.attempts
        ),
        ("m-1", Status::Queued, "hook", 0)
    );
    assert_eq!(hook.message, "{\"to\": \"hook\"}");
    assert_eq!(claim(now).await.unwrap(), [], "claimed");

    let failed = Attempt {
        number: 1,
        error: Some("the target answered 500".into()),
        retry_at: Some(now + Duration::from_secs(60)),
    };
    // Under another claim than the one that took it: nothing changes.
    let wrong_claim = now + CLAIMED + Duration::from_secs(5);
    assert!(
        !store
            .attempted(hook.id, &failed, wrong_claim, now)
            .await
            .unwrap()
    );
    assert!(store.attempts(hook.id).await.unwrap().is_empty());
    assert!(
        store
            .attempted(hook.id, &failed, now + CLAIMED, now)
            .await
            .unwrap()
    );
    let claim_ended = now + CLAIMED + Duration::from_secs(1);
    assert_eq!(
        claim(claim_ended).await.unwrap(),
        [],
        "waiting for its retry"
    );
    let retry = now + Duration::from_secs(61);
    let due = claim(retry).await.unwrap();
    assert_eq!((due.len(), due[0].attempts), (1, 1));
    let delivered = Attempt {
        number: 2,
        error: None,
        retry_at: None,
    };
    assert!(
        store
            .attempted(hook.id, &delivered, retry + CLAIMED, retry)
            .await
            .unwrap()
    );
    // Done: a late record of the same attempt changes nothing.
    assert!(
        !store
            .attempted(hook.id, &delivered, retry + CLAIMED, retry)
            .await
            .unwrap()
    );
    let much_later = retry + Duration::from_secs(3600);
    let second = claim(much_later).await.unwrap();
    assert_eq!(second.len(), 1);
    assert!(second[0].id > hook.id && second[0].notifier == "hook");

    let recent = store.recent_notifications(10).await.unwrap();
    assert_eq!(recent.len(), 3);
    let hook_record = recent.iter().find(|n| n.id == hook.id).unwrap();
    assert!(hook_record.delivered && hook_record.done);
    assert_eq!((hook_record.attempts, hook_record.next_attempt), (2, None));
    let picky = recent.iter().find(|n| n.notifier == "picky").unwrap();
    assert!(picky.done && !picky.delivered);
    assert_eq!(picky.error.as_deref(), Some("the filter cannot say"));
    let attempts = store.attempts(hook.id).await.unwrap();
    let errors: Vec<_> = attempts.iter().map(|(_, error)| error.clone()).collect();
    assert_eq!(errors, [Some("the target answered 500".to_string()), None]);
}
