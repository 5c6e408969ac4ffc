//! The notifications part of the store's contract (`store::Notifications`, issue 20).

use std::time::{Duration, SystemTime};

use builder::adapters::store::{Attempt, NewNotification, Store};
use builder::core::build::{Outcome, Status};

use super::{CLAIMED, lease, queued};

fn statuses(events: &[builder::adapters::store::BuildEvent], id: &str) -> Vec<Status> {
    events
        .iter()
        .filter(|event| event.build_id == id)
        .map(|event| event.status)
        .collect()
}

/// Every status a build takes is an event, in order, whichever statement moved it: queued,
/// claimed, finished; queued and cancelled. Published, an event is gone; claimed, it is no one
/// else's until the claim ends.
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

    let now = SystemTime::now();
    let events = store.claim_events(now, now + CLAIMED, 100).await.unwrap();
    assert_eq!(
        statuses(&events, "n-1"),
        [Status::Queued, Status::Working, Status::Success]
    );
    assert_eq!(
        statuses(&events, "n-2"),
        [Status::Queued, Status::Cancelled]
    );
    assert!(events.windows(2).all(|pair| pair[0].seq < pair[1].seq));
    // Claimed: no one gets them again before the claim's end.
    assert_eq!(
        store.claim_events(now, now + CLAIMED, 100).await.unwrap(),
        []
    );

    let (first, rest) = events.split_first().unwrap();
    store
        .publish(first.seq, &first.build_id, first.status, &[], now)
        .await
        .unwrap();
    let claim_ended = now + CLAIMED + Duration::from_secs(1);
    let again = store
        .claim_events(claim_ended, claim_ended + CLAIMED, 100)
        .await
        .unwrap();
    assert_eq!(
        again, rest,
        "the published event is gone, the others come back"
    );
}

/// A published event's notifications are due until delivered or given up; a failed attempt
/// waits for its retry time; every attempt is kept in order; a notification whose filter could
/// not say is kept, never due.
pub async fn notifications_are_due_until_delivered_or_given_up(store: &dyn Store) {
    store.queue_builds(&[queued("m-1", "t")]).await.unwrap();
    let now = SystemTime::now();
    let event = store
        .claim_events(now, now + CLAIMED, 10)
        .await
        .unwrap()
        .remove(0);
    let made = |notifier: &str, unsendable: Option<&str>| NewNotification {
        notifier: notifier.into(),
        message: format!("{{\"to\": \"{notifier}\"}}"),
        unsendable: unsendable.map(str::to_string),
    };
    store
        .publish(
            event.seq,
            "m-1",
            Status::Queued,
            &[
                made("hook", None),
                made("picky", Some("the filter cannot say")),
            ],
            now,
        )
        .await
        .unwrap();

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
    store.attempted(hook.id, &failed, now).await.unwrap();
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
    store.attempted(hook.id, &delivered, retry).await.unwrap();
    let much_later = retry + Duration::from_secs(3600);
    assert_eq!(claim(much_later).await.unwrap(), []);

    let recent = store.recent_notifications(10).await.unwrap();
    assert_eq!(recent.len(), 2);
    let hook_record = recent.iter().find(|n| n.notifier == "hook").unwrap();
    assert!(hook_record.delivered && hook_record.done);
    assert_eq!((hook_record.attempts, hook_record.next_attempt), (2, None));
    let picky = recent.iter().find(|n| n.notifier == "picky").unwrap();
    assert!(picky.done && !picky.delivered);
    assert_eq!(picky.error.as_deref(), Some("the filter cannot say"));
    let attempts = store.attempts(hook.id).await.unwrap();
    let errors: Vec<_> = attempts.iter().map(|(_, error)| error.clone()).collect();
    assert_eq!(errors, [Some("the target answered 500".to_string()), None]);
}
