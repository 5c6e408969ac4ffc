//! The store's contract, as every implementation of `builder::adapters::store::Store` must keep it: each
//! function here takes a fresh, empty store and checks one part of the contract through the
//! trait alone. `tests/store.rs` runs them on the embedded SQLite store; a second store (the
//! PostgreSQL one several machines share) runs the same functions unchanged, from a test file of
//! its own that includes this module and hands it its own fresh stores.

use std::time::Duration;

use builder::adapters::runtime::LogStream;
use builder::adapters::store::{
    BuildQuery, Lease, NewDelivery, QueuedBuild, REJECTED_KEPT, Recorded, Renewal, Store,
    Unfinished,
};
use builder::core::build::{Outcome, PushedImage, Request, Status, StepResult};
use builder::core::plan::ResolvedBuild;
use builder::core::schedule::{Decision, Skipped};
use builder::core::substitute::Values;
use builder::core::triggers::TriggerResult;
use chrono::{DateTime, Utc};

fn lease(holder: &str, seconds: u64) -> Lease {
    Lease {
        holder: holder.into(),
        duration: Duration::from_secs(seconds),
    }
}

fn plan(steps: usize) -> ResolvedBuild {
    let yaml = format!(
        "steps:\n{}",
        "- name: builder/busybox\n".repeat(steps.max(1))
    );
    let loaded = builder::core::config::load(yaml.as_bytes()).expect("a config");
    builder::core::plan::resolve(&loaded.config, &Default::default()).expect("a plan")
}

fn queued(id: &str, trigger: &str) -> QueuedBuild {
    QueuedBuild {
        id: id.into(),
        trigger: Some(trigger.into()),
        schedule: None,
        delivery: None,
        source: serde_json::json!({"kind": "none"}),
        substitutions: Values::from([("BRANCH_NAME".into(), "main".into())]),
        request: Request::Upload {
            upload: None,
            config: format!("# the config of {id}"),
            config_name: "cloudbuild.yaml".into(),
            overrides: Values::new(),
        },
    }
}

fn time(text: &str) -> DateTime<Utc> {
    text.parse().expect("an RFC 3339 time")
}

/// A build run at once (`builder submit`): recorded QUEUED with its steps, held by its creator,
/// WORKING once started; steps and numbered log lines recorded as they come; its outcome at the
/// end; found by its id or a unique prefix of it, newest first in lists.
pub async fn a_build_is_recorded_as_it_runs(store: &dyn Store) {
    let submitter = lease("submit", 30);
    store
        .create_build(
            "b-1",
            &serde_json::json!({"kind": "none"}),
            &plan(2),
            &submitter,
        )
        .await
        .unwrap();
    let build = store.get_build("b-1").await.unwrap().expect("recorded");
    assert_eq!(build.status, Status::Queued);
    assert_eq!(build.steps.len(), 2);
    assert!(
        build
            .steps
            .iter()
            .all(|s| s.result.status == Status::Queued)
    );
    store.start_build("b-1").await.unwrap();
    let build = store
        .get_build("b-")
        .await
        .unwrap()
        .expect("by a unique prefix");
    assert_eq!(
        (build.status, build.start_time.is_some()),
        (Status::Working, true)
    );

    let working = StepResult {
        status: Status::Working,
        ..StepResult::queued()
    };
    store.update_step("b-1", 0, &working).await.unwrap();
    let lines = |texts: &[&str]| -> Vec<(usize, LogStream, String)> {
        texts
            .iter()
            .map(|t| (0, LogStream::Stdout, t.to_string()))
            .collect()
    };
    store
        .append_logs("b-1", &lines(&["one", "two"]))
        .await
        .unwrap();
    store.append_logs("b-1", &lines(&["three"])).await.unwrap();
    let logged = store.logs("b-1", 0, None).await.unwrap();
    let numbered: Vec<(i64, &str)> = logged.iter().map(|l| (l.seq, l.text.as_str())).collect();
    assert_eq!(numbered, [(1, "one"), (2, "two"), (3, "three")]);
    let after_first = store.logs("b-1", 1, Some(1)).await.unwrap();
    assert_eq!(after_first.len(), 1);
    assert_eq!(after_first[0].text, "two");

    let done = StepResult {
        status: Status::Success,
        exit_code: Some(0),
        output: Some(b"{\"ok\": 1}".to_vec()),
        ..StepResult::queued()
    };
    let outcome = Outcome {
        images: vec![PushedImage {
            name: "gcr.io/p/app".into(),
            digest: "sha256:0".into(),
            pushed_to: Some("localhost:5000/p/app:latest".into()),
        }],
        ..Outcome::ended(
            Status::Success,
            vec![done.clone(), StepResult::queued()],
            None,
        )
    };
    store.finish_build("b-1", &outcome).await.unwrap();
    let build = store.get_build("b-1").await.unwrap().expect("recorded");
    assert_eq!(build.status, Status::Success);
    assert!(build.finish_time.is_some());
    assert_eq!(build.images, outcome.images);
    assert_eq!(build.steps[0].result.exit_code, Some(0));
    assert_eq!(build.steps[0].result.output, done.output);
    assert_eq!(build.build_step_outputs, ["eyJvayI6IDF9", ""]);

    store
        .create_build(
            "b-2",
            &serde_json::json!({"kind": "none"}),
            &plan(1),
            &submitter,
        )
        .await
        .unwrap();
    let newest: Vec<String> = store
        .list_builds(&BuildQuery::default())
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(newest, ["b-2", "b-1"]);
    assert!(
        store.get_build("b-").await.unwrap().is_none(),
        "an ambiguous prefix"
    );
    assert!(store.get_build("nope").await.unwrap().is_none());
}

/// The queue: builds are claimed oldest first, each once, held by their claimer from then on;
/// a queued build can be cancelled until it is claimed; what it was to run stays readable.
pub async fn the_queue_hands_each_build_out_once_oldest_first(store: &dyn Store) {
    store
        .queue_builds(&[queued("q-1", "t"), queued("q-2", "t")])
        .await
        .unwrap();
    let (a, b) = (lease("a", 30), lease("b", 30));
    let first = store.claim_queued(&a).await.unwrap().expect("queued");
    assert_eq!(first.id, "q-1");
    assert_eq!(first.request.unwrap(), queued("q-1", "t").request);
    assert!(
        !store.cancel_queued("q-1").await.unwrap(),
        "claimed already"
    );
    assert!(store.cancel_queued("q-2").await.unwrap());
    assert!(store.claim_queued(&b).await.unwrap().is_none());
    let build = store.get_build("q-2").await.unwrap().expect("recorded");
    assert_eq!(build.status, Status::Cancelled);
    let again = store
        .queued_request("q-1")
        .await
        .unwrap()
        .expect("queued by the service");
    assert_eq!(again.trigger.as_deref(), Some("t"));

    store.set_plan("q-1", &plan(3)).await.unwrap();
    let build = store.get_build("q-1").await.unwrap().expect("recorded");
    assert_eq!((build.status, build.steps.len()), (Status::Working, 3));
}

/// Leases: a claim is its holder's until it runs out; only the holder renews it; a cancel
/// reaches the holder at its renewal; of processes taking an abandoned build over, one wins; a
/// finished build is nobody's.
pub async fn leases_hold_builds_until_they_run_out(store: &dyn Store) {
    store.queue_builds(&[queued("l-1", "t")]).await.unwrap();
    let (a, b) = (lease("a", 30), lease("b", 30));
    store.claim_queued(&a).await.unwrap().expect("queued");
    let held = |cancel_requested| Renewal::Held { cancel_requested };
    assert_eq!(store.renew_lease("l-1", &a).await.unwrap(), held(false));
    assert_eq!(store.renew_lease("l-1", &b).await.unwrap(), Renewal::Lost);
    let unfinished = |holder: &str, expired| Unfinished {
        id: "l-1".into(),
        holder: Some(holder.into()),
        expired,
    };
    assert_eq!(
        store.unfinished_builds().await.unwrap(),
        [unfinished("a", false)]
    );
    assert!(store.request_cancel("l-1").await.unwrap());
    assert_eq!(store.renew_lease("l-1", &a).await.unwrap(), held(true));

    store.renew_lease("l-1", &lease("a", 0)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        store.unfinished_builds().await.unwrap(),
        [unfinished("a", true)]
    );
    assert!(store.take_over("l-1", Some("a"), &b).await.unwrap());
    assert!(
        !store
            .take_over("l-1", Some("a"), &lease("c", 30))
            .await
            .unwrap()
    );
    assert_eq!(store.renew_lease("l-1", &a).await.unwrap(), Renewal::Lost);
    assert_eq!(
        store.unfinished_builds().await.unwrap(),
        [unfinished("b", false)]
    );

    let outcome = Outcome::ended(Status::InternalError, Vec::new(), None);
    store.finish_build("l-1", &outcome).await.unwrap();
    assert_eq!(store.renew_lease("l-1", &b).await.unwrap(), Renewal::Lost);
    assert!(!store.request_cancel("l-1").await.unwrap());
    assert_eq!(store.unfinished_builds().await.unwrap(), []);
}

/// Deliveries: recorded with the builds they queue in one step; a redelivery of a verified id
/// queues nothing; one that waits for its push's changed files is pending until completed, once.
pub async fn deliveries_queue_their_builds_once(store: &dyn Store) {
    let delivery = |id: &str, builds: Vec<QueuedBuild>, payload: Option<&[u8]>| NewDelivery {
        id: id.into(),
        event: "push".into(),
        verified: true,
        digest: Some(format!("body of {id}")),
        summary: format!("push {id}"),
        payload: payload.map(<[u8]>::to_vec),
        results: Vec::new(),
        builds,
    };
    let recorded = store
        .record_deliveries(&[
            delivery("d-1", vec![queued("d-1-build", "t")], None),
            delivery("d-1", vec![queued("d-1-again", "t")], None),
        ])
        .await
        .unwrap();
    assert_eq!(recorded, [Recorded::New, Recorded::Duplicate]);
    assert!(store.get_build("d-1-build").await.unwrap().is_some());
    assert!(store.get_build("d-1-again").await.unwrap().is_none());

    store
        .record_deliveries(&[delivery("d-2", Vec::new(), Some(b"{}"))])
        .await
        .unwrap();
    let pending = store.pending_deliveries().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(
        (pending[0].id.as_str(), pending[0].payload.as_slice()),
        ("d-2", &b"{}"[..])
    );
    let results = [TriggerResult {
        trigger: "t".into(),
        build_id: Some("d-2-build".into()),
        reason: None,
    }];
    let builds = [queued("d-2-build", "t")];
    assert!(
        store
            .complete_delivery("d-2", &results, &builds)
            .await
            .unwrap()
    );
    assert!(
        !store
            .complete_delivery("d-2", &results, &builds)
            .await
            .unwrap()
    );
    assert!(store.pending_deliveries().await.unwrap().is_empty());
    let listed = store.list_deliveries(10).await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&"d-1") && ids.contains(&"d-2"));
    let d2 = listed.iter().find(|d| d.id == "d-2").unwrap();
    assert_eq!((d2.pending, d2.results.as_slice()), (false, &results[..]));
}

/// Schedules: a schedule's state starts at its first run and is kept while its spec is; a run
/// is claimed once, by compare-and-set on its time, with the build it starts.
/// Deliveries from strangers: a signed body replayed under a new id queues nothing, and of
/// rejected deliveries only the newest are kept, while all are counted.
pub async fn replays_and_rejections_are_bounded(store: &dyn Store) {
    let delivery = |id: &str, verified: bool, builds: Vec<QueuedBuild>| NewDelivery {
        id: id.into(),
        event: "push".into(),
        verified,
        digest: verified.then(|| "the same body".to_string()),
        summary: String::new(),
        payload: None,
        results: Vec::new(),
        builds,
    };
    let first = store
        .record_deliveries(&[delivery("r-1", true, vec![queued("r-1-build", "t")])])
        .await
        .unwrap();
    let replay = store
        .record_deliveries(&[delivery("r-2", true, vec![queued("r-2-build", "t")])])
        .await
        .unwrap();
    assert_eq!(
        (first, replay),
        (vec![Recorded::New], vec![Recorded::Duplicate])
    );
    assert!(store.get_build("r-2-build").await.unwrap().is_none());

    let forged: Vec<NewDelivery> = (0..REJECTED_KEPT + 5)
        .map(|i| delivery(&format!("forged-{i}"), false, Vec::new()))
        .collect();
    for batch in forged.chunks(300) {
        store.record_deliveries(batch).await.unwrap();
    }
    assert_eq!(
        store.rejected_deliveries().await.unwrap(),
        u64::from(REJECTED_KEPT + 5)
    );
    let listed = store.list_deliveries(REJECTED_KEPT + 100).await.unwrap();
    let kept: Vec<&str> = listed
        .iter()
        .filter(|d| !d.verified)
        .map(|d| d.id.as_str())
        .collect();
    assert_eq!(kept.len(), REJECTED_KEPT as usize);
    assert_eq!(kept[0], format!("forged-{}", REJECTED_KEPT + 4));
    assert!(!kept.contains(&"forged-4"));
    assert!(listed.iter().any(|d| d.id == "r-1"));
}

pub async fn a_scheduled_run_is_claimed_once(store: &dyn Store) {
    let (nine, ten) = (time("2024-03-11T09:00:00Z"), time("2024-03-11T10:00:00Z"));
    let state = store
        .sync_schedule("nightly", "0 * * * * UTC", nine)
        .await
        .unwrap();
    assert_eq!((state.next_run, state.paused), (nine, false));
    let kept = store
        .sync_schedule("nightly", "0 * * * * UTC", ten)
        .await
        .unwrap();
    assert_eq!(kept.next_run, nine, "the same spec keeps its state");
    let decision = Decision {
        start: Some(nine),
        replace: None,
        skipped: Vec::new(),
        next_run: ten,
    };
    let build = queued("s-1", "t");
    assert!(
        store
            .claim_scheduled_run("nightly", nine, &decision, Some(&build))
            .await
            .unwrap()
    );
    let other = queued("s-2", "t");
    assert!(
        !store
            .claim_scheduled_run("nightly", nine, &decision, Some(&other))
            .await
            .unwrap()
    );
    assert!(store.get_build("s-2").await.unwrap().is_none());
    let state = store
        .schedule_state("nightly")
        .await
        .unwrap()
        .expect("synced");
    assert_eq!(state.next_run, ten);
    assert_eq!(state.last_run.map(|r| r.build).as_deref(), Some("s-1"));
    let changed = store
        .sync_schedule("nightly", "30 * * * * UTC", ten)
        .await
        .unwrap();
    assert_eq!(changed.spec, "30 * * * * UTC");
}

/// A schedule's other state: skipped runs are recorded with the run they were claimed with, the
/// newest record of a reason growing while nothing ran since; a run started by hand becomes the
/// last run; pause and the last error are kept until changed.
pub async fn a_schedule_keeps_its_skipped_runs_pause_and_error(store: &dyn Store) {
    let hour = |h: u32| time(&format!("2024-03-11T{h:02}:00:00Z"));
    store
        .sync_schedule("hourly", "0 * * * * UTC", hour(9))
        .await
        .unwrap();
    let skip = |due: DateTime<Utc>| Decision {
        start: None,
        replace: None,
        skipped: vec![Skipped {
            first: due,
            last: due,
            count: 1,
            reason: "the last run is still running".into(),
        }],
        next_run: due + chrono::Duration::hours(1),
    };
    for due in [hour(9), hour(10)] {
        assert!(
            store
                .claim_scheduled_run("hourly", due, &skip(due), None)
                .await
                .unwrap()
        );
    }
    let runs = store.skipped_runs("hourly", 10).await.unwrap();
    let seen: Vec<_> = runs
        .iter()
        .map(|r| (r.skipped.first, r.skipped.last, r.skipped.count))
        .collect();
    assert_eq!(seen, [(hour(9), hour(10), 2)], "one record grown");

    let by_hand = time("2024-03-11T10:30:00Z");
    store
        .queue_schedule_run("hourly", by_hand, &queued("s-hand", "t"))
        .await
        .unwrap();
    assert!(store.get_build("s-hand").await.unwrap().is_some());
    let state = store
        .schedule_state("hourly")
        .await
        .unwrap()
        .expect("synced");
    let last = state.last_run.expect("a last run");
    assert_eq!(
        (last.build.as_str(), last.scheduled_time),
        ("s-hand", by_hand)
    );
    assert_eq!(state.next_run, hour(11), "a run by hand moves no next run");
    assert!(
        store
            .claim_scheduled_run("hourly", hour(11), &skip(hour(11)), None)
            .await
            .unwrap()
    );
    let runs = store.skipped_runs("hourly", 10).await.unwrap();
    let seen: Vec<_> = runs
        .iter()
        .map(|r| (r.skipped.first, r.skipped.count))
        .collect();
    assert_eq!(
        seen,
        [(hour(11), 1), (hour(9), 2)],
        "a new record after a run"
    );
    assert_eq!(store.skipped_runs("hourly", 1).await.unwrap().len(), 1);

    store.set_schedule_paused("hourly", true).await.unwrap();
    store
        .set_schedule_error("hourly", Some("no trigger t"))
        .await
        .unwrap();
    let state = store
        .schedule_state("hourly")
        .await
        .unwrap()
        .expect("synced");
    assert_eq!(
        (state.paused, state.last_error.as_deref()),
        (true, Some("no trigger t"))
    );
    store.set_schedule_paused("hourly", false).await.unwrap();
    store.set_schedule_error("hourly", None).await.unwrap();
    let state = store
        .schedule_state("hourly")
        .await
        .unwrap()
        .expect("synced");
    assert_eq!((state.paused, state.last_error), (false, None));
    assert!(store.schedule_state("other").await.unwrap().is_none());
}
