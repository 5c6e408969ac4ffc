//! The store's contract, as every implementation of `builder::adapters::store::Store` must keep it: each
//! function here takes a fresh, empty store and checks one part of the contract through the
//! trait alone. `tests/store.rs` runs them on the embedded SQLite store; a second store (the
//! PostgreSQL one several machines share) runs the same functions unchanged, from a test file of
//! its own that includes this module and hands it its own fresh stores.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use builder::adapters::runtime::LogStream;
use builder::adapters::store::{
    BuildQuery, Error, GroupFull, Lease, NewDelivery, OpenReport, PASSES_KEPT, QueuedBuild,
    REJECTED_KEPT, Recorded, Renewal, ReportFailure, ReportRecord, ResourceKind, ResourceWrite,
    Store, UPLOAD_CHUNK_SIZE, Unfinished, WORKERS_KEPT, Worker, waiting_for,
};
use builder::core::build::Decision as Verdict;
use builder::core::build::{
    ApprovalResult, ApprovalState, Outcome, PushedImage, Request, Status, StepResult,
};
use builder::core::plan::ResolvedBuild;
use builder::core::retention::{Pass, Removed};
use builder::core::schedule::{Decision, Skipped};
use builder::core::substitute::Values;
use builder::core::triggers::{ConcurrencyGroup, TriggerResult};
use builder::core::webhooks::PullRequest;
use chrono::{DateTime, Utc};

mod notifications;
pub use notifications::*;

/// How long the tests' report claims hold.
const CLAIMED: Duration = Duration::from_secs(30);

pub fn lease(holder: &str, seconds: u64) -> Lease {
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

pub fn queued(id: &str, trigger: &str) -> QueuedBuild {
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
            // Kept with the build, so that whoever runs it grants the same.
            secrets: ["db-pass".to_string()].into(),
        },
        pool: None,
        queue_ttl: None,
        report: false,
        approval_required: false,
        concurrency: None,
        skips_full_group: false,
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
    store.start_build("b-1", &submitter).await.unwrap();
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
    store
        .update_step("b-1", 0, &working, &submitter)
        .await
        .unwrap();
    let lines = |texts: &[&str]| -> Vec<(usize, LogStream, String)> {
        texts
            .iter()
            .map(|t| (0, LogStream::Stdout, t.to_string()))
            .collect()
    };
    store
        .append_logs("b-1", &lines(&["one", "two"]), &submitter)
        .await
        .unwrap();
    store
        .append_logs("b-1", &lines(&["three"]), &submitter)
        .await
        .unwrap();
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
    store
        .finish_build("b-1", &outcome, &submitter)
        .await
        .unwrap();
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

/// Concurrency groups: a build whose group has `limit` builds WORKING is not claimed, and
/// waits QUEUED until one of them ends; builds of another group, or of none, are claimed
/// meanwhile.
pub async fn a_group_at_its_limit_waits_for_its_builds_to_end(store: &dyn Store) {
    let in_group = |id: &str, name: &str, limit: u32| QueuedBuild {
        concurrency: Some(ConcurrencyGroup {
            name: name.into(),
            limit,
        }),
        ..queued(id, "t")
    };
    store
        .queue_builds(&[
            in_group("g-1", "deploy", 1),
            in_group("g-2", "deploy", 1),
            in_group("g-3", "other", 1),
            queued("g-4", "t"),
        ])
        .await
        .unwrap();
    let worker = lease("w", 30);
    let claim = async || {
        store
            .claim_queued(&worker, None)
            .await
            .unwrap()
            .map(|claimed| claimed.id)
    };
    assert_eq!(claim().await.as_deref(), Some("g-1"));
    assert_eq!(claim().await.as_deref(), Some("g-3"), "another group");
    assert_eq!(claim().await.as_deref(), Some("g-4"), "no group");
    assert_eq!(claim().await, None, "g-2's group is at its limit");
    let again = store.queued_request("g-2").await.unwrap().expect("queued");
    assert_eq!(
        again.concurrency,
        Some(ConcurrencyGroup {
            name: "deploy".into(),
            limit: 1
        })
    );
    let waiting = store.get_build("g-2").await.unwrap().expect("queued");
    assert_eq!(
        waiting_for(store, &waiting).await.unwrap().as_deref(),
        Some("waiting for concurrency group deploy (limit 1): build g-1 is running")
    );
    let outcome = Outcome::ended(Status::Success, Vec::new(), None);
    store.finish_build("g-1", &outcome, &worker).await.unwrap();
    assert_eq!(waiting_for(store, &waiting).await.unwrap(), None);
    assert_eq!(claim().await.as_deref(), Some("g-2"), "g-1 ended");
}

/// Builds that skip a full group (their trigger's `onConflict: SKIP`): each is queued only while
/// its group has fewer than `limit` builds queued or running, counted in the transaction that
/// queues it, whatever queues it (a batch's earlier builds count for its later ones); one left
/// out is returned with why, and its delivery's result says so instead of naming it, or its
/// schedule records its run as skipped. A build that does not skip is queued however full.
pub async fn a_build_that_skips_a_full_group_is_queued_only_while_it_has_room(store: &dyn Store) {
    let skipping = |id: &str| QueuedBuild {
        concurrency: Some(ConcurrencyGroup {
            name: "deploy".into(),
            limit: 2,
        }),
        skips_full_group: true,
        ..queued(id, "t")
    };
    let full = |build: &str, builds: &str| GroupFull {
        build: build.into(),
        reason: format!(
            "skipped: concurrency group deploy is at its limit (2): {builds} queued or running"
        ),
    };
    let left_out = store
        .queue_builds(&[skipping("k-1"), skipping("k-2"), skipping("k-3")])
        .await
        .unwrap();
    assert_eq!(left_out, [full("k-3", "k-1, k-2")]);
    assert!(store.get_build("k-3").await.unwrap().is_none());

    // Running counts as much as queued.
    let worker = lease("w", 30);
    let claimed = store.claim_queued(&worker, None).await.unwrap();
    assert_eq!(claimed.map(|c| c.id).as_deref(), Some("k-1"));
    let result = |build: &str| TriggerResult {
        trigger: "t".into(),
        build_id: Some(build.into()),
        reason: None,
    };
    let skipped = |full: &GroupFull| TriggerResult {
        trigger: "t".into(),
        build_id: None,
        reason: Some(full.reason.clone()),
    };
    let delivery = |id: &str, builds: Vec<QueuedBuild>, payload: Option<&[u8]>| NewDelivery {
        id: id.into(),
        event: "push".into(),
        verified: true,
        digest: Some(format!("body of {id}")),
        summary: String::new(),
        payload: payload.map(<[u8]>::to_vec),
        results: builds.iter().map(|build| result(&build.id)).collect(),
        builds,
        pull_request: None,
    };
    let recorded = store
        .record_deliveries(&[delivery("k-d", vec![skipping("k-4")], None)], 0)
        .await
        .unwrap();
    let k4 = full("k-4", "k-1, k-2");
    assert_eq!(recorded, [Recorded::New(vec![k4.clone()])]);
    assert!(store.get_build("k-4").await.unwrap().is_none());
    let results_of = async |id: &str| {
        let listed = store.list_deliveries(10).await.unwrap();
        let delivery = listed.into_iter().find(|d| d.id == id).expect("recorded");
        delivery.results
    };
    assert_eq!(results_of("k-d").await, [skipped(&k4)]);

    // k-1 ends: room for one of two builds a pending delivery queues.
    let outcome = Outcome::ended(Status::Success, Vec::new(), None);
    store.finish_build("k-1", &outcome, &worker).await.unwrap();
    store
        .record_deliveries(&[delivery("k-p", Vec::new(), Some(b"{}"))], 0)
        .await
        .unwrap();
    let (k5, k6) = (skipping("k-5"), skipping("k-6"));
    let results = [result("k-5"), result("k-6")];
    let completed = store
        .complete_delivery("k-p", &results, &[k5, k6])
        .await
        .unwrap();
    let k6 = full("k-6", "k-2, k-5");
    assert_eq!(completed, Some(vec![k6.clone()]));
    assert_eq!(results_of("k-p").await, [result("k-5"), skipped(&k6)]);

    // A schedule's run whose build is left out is recorded as skipped; one by hand changes
    // nothing.
    let (nine, ten) = (time("2024-03-11T09:00:00Z"), time("2024-03-11T10:00:00Z"));
    store
        .sync_schedule("deploys", "0 * * * * UTC", nine)
        .await
        .unwrap();
    let decision = Decision {
        start: Some(nine),
        replace: None,
        skipped: Vec::new(),
        next_run: ten,
    };
    let claimed = store
        .claim_scheduled_run("deploys", nine, &decision, Some(&skipping("k-7")))
        .await
        .unwrap();
    let k7 = full("k-7", "k-2, k-5");
    assert_eq!(claimed, Some(vec![k7.clone()]));
    let runs = store.skipped_runs("deploys", 10).await.unwrap();
    let seen: Vec<_> = runs.into_iter().map(|run| run.skipped).collect();
    assert_eq!(
        seen,
        [Skipped {
            first: nine,
            last: nine,
            count: 1,
            reason: k7.reason
        }]
    );
    let by_hand = store
        .queue_schedule_run("deploys", ten, &skipping("k-8"))
        .await
        .unwrap();
    assert_eq!(by_hand, [full("k-8", "k-2, k-5")]);
    let state = store
        .schedule_state("deploys")
        .await
        .unwrap()
        .expect("synced");
    assert_eq!((state.next_run, state.last_run), (ten, None));
    for id in ["k-7", "k-8"] {
        assert!(store.get_build(id).await.unwrap().is_none(), "{id}");
    }

    let waits = QueuedBuild {
        skips_full_group: false,
        ..skipping("k-9")
    };
    assert_eq!(store.queue_builds(&[waits]).await.unwrap(), []);
    assert!(store.get_build("k-9").await.unwrap().is_some());
}

/// The queue: builds are claimed oldest first, each once, held by their claimer from then on;
/// a queued build can be cancelled until it is claimed; what it was to run stays readable.
pub async fn the_queue_hands_each_build_out_once_oldest_first(store: &dyn Store) {
    store
        .queue_builds(&[queued("q-1", "t"), queued("q-2", "t")])
        .await
        .unwrap();
    let (a, b) = (lease("a", 30), lease("b", 30));
    let first = store.claim_queued(&a, None).await.unwrap().expect("queued");
    assert_eq!(first.id, "q-1");
    assert_eq!(first.request.unwrap(), queued("q-1", "t").request);
    assert!(
        !store.cancel_queued("q-1").await.unwrap(),
        "claimed already"
    );
    assert!(store.cancel_queued("q-2").await.unwrap());
    assert!(store.claim_queued(&b, None).await.unwrap().is_none());
    let build = store.get_build("q-2").await.unwrap().expect("recorded");
    assert_eq!(build.status, Status::Cancelled);
    let again = store
        .queued_request("q-1")
        .await
        .unwrap()
        .expect("queued by the service");
    assert_eq!(again.trigger.as_deref(), Some("t"));
    assert_eq!(again.request, queued("q-1", "t").request);

    store.set_plan("q-1", &plan(3), &a).await.unwrap();
    let build = store.get_build("q-1").await.unwrap().expect("recorded");
    assert_eq!((build.status, build.steps.len()), (Status::Working, 3));
}

/// Pools: a claim takes only builds of its pool (the default pool's are `None`'s); a build its
/// claimer gives back to the queue for another pool waits for that pool's workers, and only its
/// holder may give it back.
pub async fn pools_hand_builds_to_their_own_workers(store: &dyn Store) {
    let in_pool = |id: &str, pool: Option<&str>| QueuedBuild {
        pool: pool.map(str::to_string),
        ..queued(id, "t")
    };
    store
        .queue_builds(&[in_pool("p-1", Some("gpu")), in_pool("p-2", None)])
        .await
        .unwrap();
    let (default, gpu) = (lease("default", 30), lease("gpu", 30));
    assert_eq!(
        store
            .claim_queued(&default, None)
            .await
            .unwrap()
            .expect("queued")
            .id,
        "p-2"
    );
    assert!(store.claim_queued(&default, None).await.unwrap().is_none());
    assert!(
        store
            .claim_queued(&gpu, Some("arm"))
            .await
            .unwrap()
            .is_none()
    );
    let again = store.queued_request("p-1").await.unwrap().expect("queued");
    assert_eq!(again.pool.as_deref(), Some("gpu"));
    assert_eq!(
        store
            .claim_queued(&gpu, Some("gpu"))
            .await
            .unwrap()
            .expect("queued")
            .id,
        "p-1"
    );

    // p-2's config names the pool `arm`: given back, it waits for that pool's workers.
    assert!(
        !store.requeue("p-2", &gpu, Some("arm"), None).await.unwrap(),
        "not its holder"
    );
    assert!(
        store
            .requeue("p-2", &default, Some("arm"), None)
            .await
            .unwrap()
    );
    assert!(
        !store
            .requeue("p-2", &default, Some("arm"), None)
            .await
            .unwrap(),
        "no longer held"
    );
    let build = store.get_build("p-2").await.unwrap().expect("recorded");
    assert_eq!((build.status, build.start_time), (Status::Queued, None));
    assert_eq!(
        store.renew_lease("p-2", &default).await.unwrap(),
        Renewal::Lost
    );
    assert!(store.claim_queued(&default, None).await.unwrap().is_none());
    let arm = lease("arm", 30);
    assert_eq!(
        store
            .claim_queued(&arm, Some("arm"))
            .await
            .unwrap()
            .expect("queued")
            .id,
        "p-2"
    );
}

/// Queue TTLs: a build still QUEUED past its TTL is expired, once, with the failure given, and
/// is never claimed after; one within its TTL, or claimed in time, is not; a build
/// given back to the queue for its pool gets its TTL counted from when it was first queued; a
/// retry's request keeps the TTL.
pub async fn queued_builds_expire_past_their_ttl(store: &dyn Store) {
    let with_ttl = |id: &str, seconds: Option<u64>| QueuedBuild {
        queue_ttl: seconds.map(Duration::from_secs),
        ..queued(id, "t")
    };
    store
        .queue_builds(&[
            with_ttl("e-1", Some(60)),
            with_ttl("e-2", None),
            with_ttl("e-3", Some(3600)),
            with_ttl("e-4", Some(60)),
        ])
        .await
        .unwrap();
    let retried = store.queued_request("e-1").await.unwrap().expect("queued");
    assert_eq!(retried.queue_ttl, Some(Duration::from_secs(60)));
    // e-1 is claimed in time (after a hand-back); e-2's config, read by its claimer, gives it
    // 60 s for its pool; e-3 and e-4 wait.
    let worker = &lease("w", 30);
    let claim = |expected: &'static str| async move {
        let claimed = store.claim_queued(worker, None).await.unwrap();
        assert_eq!(claimed.expect("queued").id, expected);
    };
    claim("e-1").await;
    let ttl = Some(Duration::from_secs(60));
    assert!(store.requeue("e-1", worker, None, ttl).await.unwrap());
    let now = SystemTime::now();
    assert_eq!(
        store.expire_queued(now, "too long").await.unwrap(),
        Vec::<String>::new(),
        "none is past its TTL yet"
    );
    claim("e-1").await;
    claim("e-2").await;
    let gpu = Some(Duration::from_secs(60));
    assert!(
        store
            .requeue("e-2", worker, Some("gpu"), gpu)
            .await
            .unwrap()
    );

    let later = now + Duration::from_secs(61);
    let mut expired = store.expire_queued(later, "too long").await.unwrap();
    expired.sort();
    assert_eq!(expired, ["e-2", "e-4"]);
    assert!(
        store
            .expire_queued(later, "again")
            .await
            .unwrap()
            .is_empty(),
        "once"
    );
    for id in ["e-2", "e-4"] {
        let build = store.get_build(id).await.unwrap().expect("recorded");
        assert_eq!(build.status, Status::Expired);
        assert_eq!(build.failure.as_deref(), Some("too long"));
        assert!(build.finish_time.is_some());
    }
    assert!(
        store
            .claim_queued(&lease("gpu", 30), Some("gpu"))
            .await
            .unwrap()
            .is_none()
    );
    for (id, status) in [("e-1", Status::Working), ("e-3", Status::Queued)] {
        let build = store.get_build(id).await.unwrap().expect("recorded");
        assert_eq!(build.status, status, "{id}");
    }
}

/// Approvals: a build that needs one waits PENDING, never claimed nor expired however long past
/// its TTL; it is decided once (of two decisions at once, one is made), with who, when, what and
/// why; approved, it is QUEUED with its TTL counted from the approval; rejected, it ends REJECTED
/// and is never claimed; cancelled while PENDING, its approval is CANCELLED; a retry of it waits
/// for approval again.
pub async fn pending_builds_wait_for_one_decision(store: &dyn Store) {
    let pending = |id: &str| QueuedBuild {
        approval_required: true,
        queue_ttl: Some(Duration::from_secs(60)),
        ..queued(id, "t")
    };
    store
        .queue_builds(&[
            pending("a-0"),
            pending("a-1"),
            pending("a-2"),
            pending("a-3"),
        ])
        .await
        .unwrap();
    let worker = &lease("w", 30);
    assert!(store.claim_queued(worker, None).await.unwrap().is_none());
    let long_after = SystemTime::now() + Duration::from_secs(3600);
    assert!(
        store
            .expire_queued(long_after, "too long")
            .await
            .unwrap()
            .is_empty(),
        "a pending build does not expire"
    );
    let build = store.get_build("a-1").await.unwrap().expect("recorded");
    assert_eq!(build.status, Status::Pending);
    let approval = build.approval.expect("an approval");
    assert_eq!(approval.state, ApprovalState::Pending);
    assert!(approval.config.approval_required);
    assert_eq!(approval.result, None);

    // Approved an hour after it was queued: its TTL counts from then.
    let decided = |decision, who: &str| ApprovalResult {
        approver_account: who.into(),
        approval_time: SystemTime::now() + Duration::from_secs(3600),
        decision,
        comment: Some(format!("{who} says so")),
    };
    let approved = decided(Verdict::Approved, "alice");
    let refused = decided(Verdict::Rejected, "bob");
    let (alice, bob) = tokio::join!(
        store.decide_approval("a-0", &approved),
        store.decide_approval("a-0", &refused),
    );
    let (alice, bob) = (alice.unwrap(), bob.unwrap());
    assert!(alice != bob, "decided once: {alice} {bob}");
    let build = store.get_build("a-0").await.unwrap().expect("recorded");
    let winner = build.approval.and_then(|a| a.result).expect("a decision");
    assert_eq!(winner.approver_account, if alice { "alice" } else { "bob" });
    assert_eq!(build.status, winner.decision.status());

    assert!(store.decide_approval("a-1", &approved).await.unwrap());
    let build = store.get_build("a-1").await.unwrap().expect("recorded");
    assert_eq!(build.status, Status::Queued);
    let approval = build.approval.expect("an approval");
    assert_eq!(approval.state, ApprovalState::Approved);
    let result = approval.result.expect("a decision");
    assert_eq!(result.approver_account, "alice");
    assert_eq!(result.decision, Verdict::Approved);
    assert_eq!(result.comment.as_deref(), Some("alice says so"));
    let recorded = |time: SystemTime| time.duration_since(SystemTime::UNIX_EPOCH).unwrap();
    assert_eq!(
        recorded(result.approval_time).as_millis(),
        recorded(approved.approval_time).as_millis()
    );
    let retried = store.queued_request("a-1").await.unwrap().expect("queued");
    assert!(retried.approval_required, "a retry waits for approval too");
    assert_eq!(retried.queue_ttl, Some(Duration::from_secs(60)));
    let past_ttl = SystemTime::now() + Duration::from_secs(120);
    assert!(
        store
            .expire_queued(past_ttl, "too long")
            .await
            .unwrap()
            .is_empty(),
        "the TTL counts from the approval"
    );
    assert!(
        !store
            .decide_approval("a-1", &decided(Verdict::Rejected, "bob"))
            .await
            .unwrap(),
        "not PENDING any more"
    );

    let rejected = decided(Verdict::Rejected, "bob");
    assert!(store.decide_approval("a-2", &rejected).await.unwrap());
    let build = store.get_build("a-2").await.unwrap().expect("recorded");
    assert_eq!(build.status, Status::Rejected);
    assert!(build.finish_time.is_some());
    assert_eq!(
        build.approval.expect("an approval").state,
        ApprovalState::Rejected
    );

    assert!(store.cancel_queued("a-3").await.unwrap());
    let build = store.get_build("a-3").await.unwrap().expect("recorded");
    assert_eq!(build.status, Status::Cancelled);
    let approval = build.approval.expect("an approval");
    assert_eq!(
        (approval.state, approval.result),
        (ApprovalState::Cancelled, None)
    );
    assert!(!store.decide_approval("a-3", &approved).await.unwrap());

    let claimed = store.claim_queued(worker, None).await.unwrap();
    assert_eq!(
        claimed.expect("an approved build").id,
        if alice { "a-0" } else { "a-1" }
    );
    store.queue_builds(&[queued("a-4", "t")]).await.unwrap();
    let plain = store.get_build("a-4").await.unwrap().expect("recorded");
    assert_eq!((plain.status, plain.approval), (Status::Queued, None));
}

/// Leases: a claim is its holder's until it runs out; only the holder renews it; a cancel
/// reaches the holder at its renewal; of processes taking an abandoned build over, one wins; a
/// finished build is nobody's.
pub async fn leases_hold_builds_until_they_run_out(store: &dyn Store) {
    store.queue_builds(&[queued("l-1", "t")]).await.unwrap();
    let (a, b) = (lease("a", 30), lease("b", 30));
    store.claim_queued(&a, None).await.unwrap().expect("queued");
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

    // Taken over, the build is no longer written by its old holder: each write is refused
    // whole, and the new holder's go through.
    let not_held = |written: Result<(), Error>| match written {
        Err(Error::NotHeld { build }) => assert_eq!(build, "l-1"),
        other => panic!("a write without the lease: {other:?}"),
    };
    let line = [(0, LogStream::Stdout, "late".to_string())];
    not_held(store.append_logs("l-1", &line, &a).await);
    not_held(store.set_plan("l-1", &plan(1), &a).await);
    store.set_plan("l-1", &plan(1), &b).await.unwrap();
    not_held(store.update_step("l-1", 0, &StepResult::queued(), &a).await);
    not_held(store.start_build("l-1", &a).await);
    let outcome = Outcome::ended(Status::InternalError, Vec::new(), None);
    not_held(store.finish_build("l-1", &outcome, &a).await);
    assert!(store.logs("l-1", 0, None).await.unwrap().is_empty());
    assert_eq!(
        store
            .get_build("l-1")
            .await
            .unwrap()
            .expect("recorded")
            .status,
        Status::Working
    );
    store.finish_build("l-1", &outcome, &b).await.unwrap();
    not_held(store.finish_build("l-1", &outcome, &b).await);
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
        pull_request: None,
    };
    let recorded = store
        .record_deliveries(
            &[
                delivery("d-1", vec![queued("d-1-build", "t")], None),
                delivery("d-1", vec![queued("d-1-again", "t")], None),
            ],
            0,
        )
        .await
        .unwrap();
    assert_eq!(recorded, [Recorded::New(Vec::new()), Recorded::Duplicate]);
    assert!(store.get_build("d-1-build").await.unwrap().is_some());
    assert!(store.get_build("d-1-again").await.unwrap().is_none());

    store
        .record_deliveries(&[delivery("d-2", Vec::new(), Some(b"{}"))], 0)
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
    assert_eq!(
        store
            .complete_delivery("d-2", &results, &builds)
            .await
            .unwrap(),
        Some(Vec::new())
    );
    assert_eq!(
        store
            .complete_delivery("d-2", &results, &builds)
            .await
            .unwrap(),
        None
    );
    assert!(store.pending_deliveries().await.unwrap().is_empty());
    let listed = store.list_deliveries(10).await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&"d-1") && ids.contains(&"d-2"));
    let d2 = listed.iter().find(|d| d.id == "d-2").unwrap();
    assert_eq!((d2.pending, d2.results.as_slice()), (false, &results[..]));
}

/// Pull requests: the one a new verified delivery describes is kept with it, replaced by the
/// next delivery's, found by repository in any case; a redelivery or a forged delivery changes
/// nothing.
pub async fn the_latest_delivery_of_a_pull_request_is_kept(store: &dyn Store) {
    let described = |head: char, open: bool| PullRequest {
        number: 9,
        open,
        author: "someone".into(),
        author_association: "CONTRIBUTOR".into(),
        body: String::new(),
        head_branch: "fix".into(),
        head_sha: head.to_string().repeat(40),
        head_repository: Some("someone/app".into()),
        head_repo_url: "https://github.com/someone/app.git".into(),
        base_branch: "main".into(),
    };
    let delivery = |id: &str, verified: bool, pull_request: PullRequest| NewDelivery {
        id: id.into(),
        event: "pull_request".into(),
        verified,
        digest: verified.then(|| format!("body of {id}")),
        summary: String::new(),
        payload: None,
        results: Vec::new(),
        builds: Vec::new(),
        pull_request: Some(("Acme/App".into(), pull_request)),
    };
    assert_eq!(store.pull_request("acme/app", 9).await.unwrap(), None);
    store
        .record_deliveries(&[delivery("p-1", true, described('a', true))], 0)
        .await
        .unwrap();
    assert_eq!(
        store.pull_request("ACME/app", 9).await.unwrap(),
        Some(described('a', true))
    );
    store
        .record_deliveries(
            &[
                delivery("p-2", true, described('b', false)),
                delivery("p-1", true, described('c', true)),
                delivery("forged", false, described('d', true)),
            ],
            0,
        )
        .await
        .unwrap();
    assert_eq!(
        store.pull_request("acme/app", 9).await.unwrap(),
        Some(described('b', false))
    );
    assert_eq!(store.pull_request("acme/app", 10).await.unwrap(), None);
    assert_eq!(store.pull_request("acme/other", 9).await.unwrap(), None);
}

/// Schedules: a schedule's state starts at its first run and is kept while its spec is; a run
/// is claimed once, by compare-and-set on its time, with the build it starts.
/// Deliveries from strangers: a signed body replayed under a new id queues nothing, and of
/// rejected deliveries only the newest are kept, while all are counted, those dropped unkept too.
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
        pull_request: None,
    };
    let first = store
        .record_deliveries(&[delivery("r-1", true, vec![queued("r-1-build", "t")])], 0)
        .await
        .unwrap();
    let replay = store
        .record_deliveries(&[delivery("r-2", true, vec![queued("r-2-build", "t")])], 0)
        .await
        .unwrap();
    assert_eq!(
        (first, replay),
        (vec![Recorded::New(Vec::new())], vec![Recorded::Duplicate])
    );
    assert!(store.get_build("r-2-build").await.unwrap().is_none());

    let forged: Vec<NewDelivery> = (0..REJECTED_KEPT + 5)
        .map(|i| delivery(&format!("forged-{i}"), false, Vec::new()))
        .collect();
    for batch in forged.chunks(300) {
        store.record_deliveries(batch, 0).await.unwrap();
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

    // Rejections dropped unrecorded (the writer was behind) are counted, with a batch or alone.
    store
        .record_deliveries(&[delivery("forged-x", false, Vec::new())], 3)
        .await
        .unwrap();
    assert_eq!(store.record_deliveries(&[], 2).await.unwrap(), []);
    assert_eq!(
        store.rejected_deliveries().await.unwrap(),
        u64::from(REJECTED_KEPT + 5) + 1 + 3 + 2
    );
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
    assert_eq!(
        store
            .claim_scheduled_run("nightly", nine, &decision, Some(&build))
            .await
            .unwrap(),
        Some(Vec::new())
    );
    let other = queued("s-2", "t");
    assert_eq!(
        store
            .claim_scheduled_run("nightly", nine, &decision, Some(&other))
            .await
            .unwrap(),
        None
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
                .is_some()
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
            .is_some()
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

/// Reports to GitHub: a build queued with `report` has one from its queueing; it is open while
/// its status is not the one last reported and its retry time has come; a failure stays on
/// record until a report is sent; a status given up is not open again, a new one is; the check
/// run is kept; a final status reported closes it.
pub async fn reports_follow_their_build_until_its_end_is_told(store: &dyn Store) {
    let mut reported = queued("r-1", "t");
    reported.report = true;
    store
        .queue_builds(&[reported, queued("r-2", "t")])
        .await
        .unwrap();
    let now = SystemTime::now();
    let claim = |at: SystemTime| store.claim_reports(at, at + CLAIMED, 10);
    let open = |status, reported, check_run, failing, attempts| OpenReport {
        build_id: "r-1".into(),
        status,
        reported,
        check_run,
        failing,
        attempts,
    };
    assert_eq!(
        claim(now).await.unwrap(),
        [open(Status::Queued, None, None, None, 0)]
    );
    assert_eq!(store.report_of("r-2").await.unwrap(), None);
    store
        .report_sent("r-1", Status::Queued, Some(5))
        .await
        .unwrap();
    assert_eq!(claim(now).await.unwrap(), []);

    let a = lease("a", 30);
    let claimed = store.claim_queued(&a, None).await.unwrap();
    assert_eq!(claimed.expect("queued").id, "r-1");
    let working = open(Status::Working, Some(Status::Queued), Some(5), None, 0);
    assert_eq!(claim(now).await.unwrap(), std::slice::from_ref(&working));
    // Claimed: no one gets it again before the claim's end, anyone after.
    assert_eq!(claim(now).await.unwrap(), []);
    let claim_ended = now + CLAIMED + Duration::from_secs(1);
    assert_eq!(claim(claim_ended).await.unwrap(), [working]);

    // A failure waits for its retry time, and is on record meanwhile.
    let failure = ReportFailure {
        status: Status::Working,
        attempts: 1,
        error: "GitHub answered 500".into(),
        retry_at: Some(now + Duration::from_secs(60)),
    };
    store.report_failed("r-1", &failure).await.unwrap();
    assert_eq!(claim(now).await.unwrap(), []);
    let later = now + Duration::from_secs(61);
    assert_eq!(
        claim(later).await.unwrap(),
        [open(
            Status::Working,
            Some(Status::Queued),
            Some(5),
            Some(Status::Working),
            1
        )]
    );
    assert_eq!(
        store.report_of("r-1").await.unwrap(),
        Some(ReportRecord {
            reported: Some(Status::Queued),
            failure: Some((Status::Working, 1, "GitHub answered 500".into(), false)),
        })
    );
    // Given up: not open again for that status, open for the next.
    let given_up = ReportFailure {
        attempts: 2,
        retry_at: None,
        ..failure
    };
    store.report_failed("r-1", &given_up).await.unwrap();
    assert_eq!(claim(later).await.unwrap(), []);
    let outcome = Outcome::ended(Status::Success, Vec::new(), None);
    store.finish_build("r-1", &outcome, &a).await.unwrap();
    assert_eq!(
        claim(later).await.unwrap(),
        [open(
            Status::Success,
            Some(Status::Queued),
            Some(5),
            Some(Status::Working),
            2
        )]
    );
    store
        .report_sent("r-1", Status::Success, None)
        .await
        .unwrap();
    assert_eq!(
        store.report_of("r-1").await.unwrap(),
        Some(ReportRecord {
            reported: Some(Status::Success),
            failure: None,
        })
    );
    assert_eq!(claim(later).await.unwrap(), []);
}

/// Reporters claiming at once (replicas sharing the store) share the reports due out: each is
/// given to one of them.
pub async fn reports_claimed_at_once_go_to_one_reporter_each(store: &dyn Store) {
    let builds: Vec<QueuedBuild> = (0..20)
        .map(|i| {
            let mut build = queued(&format!("c-{i:02}"), "t");
            build.report = true;
            build
        })
        .collect();
    store.queue_builds(&builds).await.unwrap();
    let now = SystemTime::now();
    let claim = || store.claim_reports(now, now + CLAIMED, 7);
    let mut claimed = Vec::new();
    loop {
        let (a, b, c) = tokio::join!(claim(), claim(), claim());
        let round: Vec<String> = [a, b, c]
            .into_iter()
            .flat_map(|claimed| claimed.unwrap())
            .map(|report| report.build_id)
            .collect();
        if round.is_empty() {
            break;
        }
        claimed.extend(round);
    }
    claimed.sort();
    let every: Vec<String> = (0..20).map(|i| format!("c-{i:02}")).collect();
    assert_eq!(claimed, every);
}

/// Retention: finished builds older than the cut-off go with their steps, logs and reports, a
/// batch at a time; queued and running builds stay however old; deliveries older than the
/// cut-off go but pending ones; what the kept builds refer to is told; the newest passes are
/// kept.
pub async fn retention_removes_what_is_old_and_finished_only(store: &dyn Store) {
    let a = lease("a", 30);
    let mut old: Vec<QueuedBuild> = ["a-old-1", "a-old-2"].map(|id| queued(id, "t")).into();
    for build in &mut old {
        build.report = true;
        build.source =
            serde_json::json!({"kind": "upload", "upload": format!("{}-upload", build.id)});
    }
    store.queue_builds(&old).await.unwrap();
    for build in &old {
        let claimed = store.claim_queued(&a, None).await.unwrap().expect("queued");
        assert_eq!(claimed.id, build.id);
        let line = vec![(0, LogStream::Stdout, "a line".to_string())];
        store.append_logs(&build.id, &line, &a).await.unwrap();
        let outcome = Outcome::ended(Status::Success, Vec::new(), None);
        store.finish_build(&build.id, &outcome, &a).await.unwrap();
    }
    let mut running = queued("b-running", "t");
    running.source =
        serde_json::json!({"kind": "github", "cloneUrl": "https://github.com/acme/app.git"});
    let mut waiting = queued("c-queued", "t");
    waiting.source = serde_json::json!({"kind": "upload", "upload": "c-upload"});
    store.queue_builds(&[running, waiting]).await.unwrap();
    let claimed = store.claim_queued(&a, None).await.unwrap().expect("queued");
    assert_eq!(claimed.id, "b-running");

    let references = store.references().await.unwrap();
    assert_eq!(
        references.unfinished,
        ["b-running".to_string(), "c-queued".to_string()].into()
    );
    assert_eq!(
        references.clone_urls,
        ["https://github.com/acme/app.git".to_string()].into()
    );

    let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
    assert_eq!(store.remove_builds(an_hour_ago, 10).await.unwrap(), 0);
    let later = SystemTime::now() + Duration::from_secs(1);
    assert_eq!(store.remove_builds(later, 1).await.unwrap(), 1);
    assert_eq!(store.remove_builds(later, 10).await.unwrap(), 1);
    assert_eq!(store.remove_builds(later, 10).await.unwrap(), 0);
    for id in ["a-old-1", "a-old-2"] {
        assert!(store.get_build(id).await.unwrap().is_none(), "{id}");
        assert!(store.logs(id, 0, None).await.unwrap().is_empty(), "{id}");
        assert_eq!(store.report_of(id).await.unwrap(), None, "{id}");
    }
    for id in ["b-running", "c-queued"] {
        assert!(store.get_build(id).await.unwrap().is_some(), "{id}");
    }
    // The queued build's upload stays; the old builds' went with them, as did one no build used.
    for upload in ["a-old-1-upload", "c-upload", "unused-upload"] {
        store.put_upload(upload, b"archive").await.unwrap();
    }
    assert_eq!(store.remove_uploads(an_hour_ago, 10).await.unwrap(), 0);
    assert_eq!(store.remove_uploads(later, 1).await.unwrap(), 1);
    assert_eq!(store.remove_uploads(later, 10).await.unwrap(), 1);
    assert_eq!(store.remove_uploads(later, 10).await.unwrap(), 0);
    assert!(store.upload_chunk("c-upload", 0).await.unwrap().is_some());
    assert_eq!(store.upload_chunk("unused-upload", 0).await.unwrap(), None);

    let delivery = |id: &str, verified: bool, payload: Option<&[u8]>| NewDelivery {
        id: id.into(),
        event: "push".into(),
        verified,
        digest: verified.then(|| format!("body of {id}")),
        summary: String::new(),
        payload: payload.map(<[u8]>::to_vec),
        results: Vec::new(),
        builds: Vec::new(),
        pull_request: None,
    };
    store
        .record_deliveries(
            &[
                delivery("done", true, None),
                delivery("forged", false, None),
                delivery("pending", true, Some(b"{}")),
            ],
            0,
        )
        .await
        .unwrap();
    assert_eq!(store.remove_deliveries(an_hour_ago, 10).await.unwrap(), 0);
    let later = SystemTime::now() + Duration::from_secs(1);
    assert_eq!(store.remove_deliveries(later, 1).await.unwrap(), 1);
    assert_eq!(store.remove_deliveries(later, 10).await.unwrap(), 1);
    let left: Vec<String> = store
        .list_deliveries(10)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(left, ["pending"]);
    assert_eq!(store.rejected_deliveries().await.unwrap(), 1);

    let pass = |builds: u64| Pass {
        finished: SystemTime::UNIX_EPOCH + Duration::from_secs(builds),
        took: Duration::from_millis(1500),
        removed: Removed {
            builds,
            deliveries: 2,
            uploads: 3,
            workspaces: 4,
            mirrors: 5,
        },
        error: (builds % 2 == 1).then(|| "the store's database: gone".to_string()),
    };
    let kept = u64::from(PASSES_KEPT);
    for builds in 0..kept + 2 {
        store.record_pass(&pass(builds)).await.unwrap();
    }
    let passes = store.retention_passes(1000).await.unwrap();
    assert_eq!(passes.len() as u64, kept);
    assert_eq!(passes[0], pass(kept + 1));
    assert_eq!(passes.last(), Some(&pass(2)));
}

/// Uploads: an archive is read back whole, chunk by chunk from 0; an empty one is one empty
/// chunk; builds are submitted over an upload that exists, any number of them (retries), and an
/// unknown upload has no chunk and takes no build; an upload's id is taken once.
pub async fn an_upload_is_read_back_whole_in_chunks(store: &dyn Store) {
    let archive: Vec<u8> = (0..UPLOAD_CHUNK_SIZE * 2 + 10)
        .map(|i| (i % 251) as u8)
        .collect();
    store.put_upload("u-1", &archive).await.unwrap();
    store.put_upload("u-empty", &[]).await.unwrap();
    let mut read = Vec::new();
    for seq in 0.. {
        match store.upload_chunk("u-1", seq).await.unwrap() {
            Some(chunk) => read.extend(chunk),
            None => break,
        }
    }
    assert_eq!(read.len(), archive.len());
    assert!(read == archive, "the archive read back differs");
    assert_eq!(
        store.upload_chunk("u-empty", 0).await.unwrap(),
        Some(vec![])
    );
    assert_eq!(store.upload_chunk("u-empty", 1).await.unwrap(), None);
    assert_eq!(store.upload_chunk("u-none", 0).await.unwrap(), None);

    assert!(store.attach_upload("u-1", "b-1").await.unwrap());
    assert!(store.attach_upload("u-1", "b-2").await.unwrap());
    assert!(!store.attach_upload("u-none", "b-3").await.unwrap());
    assert!(matches!(
        store.put_upload("u-1", b"again").await,
        Err(Error::Database(_))
    ));
}

pub async fn resources_are_kept_by_kind_and_name(store: &dyn Store) {
    use ResourceKind::{Schedule, Trigger};
    use ResourceWrite::{Create, Delete, Replace};
    let write = async |kind, name, write| store.write_resource(kind, name, write).await.unwrap();
    assert!(store.resources(Trigger).await.unwrap().is_empty());
    assert!(write(Trigger, "b", Create(b"name: b\n")).await);
    assert!(write(Trigger, "a", Create(b"name: a\n")).await);
    assert!(
        !write(Trigger, "a", Create(b"again")).await,
        "a name is created once"
    );
    // Kinds are apart: a schedule may share a trigger's name.
    assert!(write(Schedule, "a", Create(b"s")).await);
    assert!(write(Trigger, "a", Replace(b"name: a\n# 2\n")).await);
    assert!(!write(Trigger, "none", Replace(b"x")).await);
    let read = |name: &str, body: &[u8]| (name.to_string(), body.to_vec());
    assert_eq!(
        store.resources(Trigger).await.unwrap(),
        [read("a", b"name: a\n# 2\n"), read("b", b"name: b\n")],
        "in name order, as last written"
    );
    assert!(write(Trigger, "a", Delete).await);
    assert!(!write(Trigger, "a", Delete).await);
    assert_eq!(
        store.resources(Trigger).await.unwrap(),
        [read("b", b"name: b\n")]
    );
    assert_eq!(store.resources(Schedule).await.unwrap(), [read("a", b"s")]);
}

/// Workers: registered at their first beat, their heartbeat moved by each one after (their start
/// kept), listed by pool with the WORKING builds their leases hold and live until their lease
/// runs out after their last beat; one that stops is removed, and one that stopped beating a
/// day ago is removed by anyone's beat.
pub async fn workers_beat_and_list_their_builds(store: &dyn Store) {
    // Milliseconds, as the store keeps times.
    let now = UNIX_EPOCH
        + Duration::from_millis(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64,
        );
    let worker = |holder: &str, pool: Option<&str>, capacity| Worker {
        lease: lease(holder, 30),
        host: "machine-1".into(),
        pool: pool.map(Into::into),
        capacity,
    };
    let (a, b) = (worker("a.1", None, 2), worker("b.1", Some("gpu"), 1));
    let started = now - Duration::from_secs(10);
    store.beat_worker(&a, started).await.unwrap();
    store.beat_worker(&b, now).await.unwrap();
    store
        .queue_builds(&[queued("w-1", "t"), queued("w-2", "t")])
        .await
        .unwrap();
    store
        .claim_queued(&a.lease, None)
        .await
        .unwrap()
        .expect("queued");
    // Held by a process that is no worker (`builder submit`'s): no worker's.
    store
        .claim_queued(&lease("submit", 30), None)
        .await
        .unwrap()
        .expect("queued");
    store.beat_worker(&a, now).await.unwrap();

    let workers = store.list_workers().await.unwrap();
    let ids: Vec<&str> = workers.iter().map(|w| w.id.as_str()).collect();
    assert_eq!(ids, ["a.1", "b.1"], "the default pool first");
    let listed = &workers[0];
    assert_eq!(
        (
            listed.host.as_str(),
            listed.pool.as_deref(),
            listed.capacity
        ),
        ("machine-1", None, 2)
    );
    assert_eq!((listed.start_time, listed.heartbeat), (started, now));
    assert_eq!(listed.expires, now + Duration::from_secs(30));
    assert_eq!(listed.builds, ["w-1"]);
    assert_eq!(
        (workers[1].pool.as_deref(), workers[1].capacity),
        (Some("gpu"), 1)
    );
    assert!(workers[1].builds.is_empty());
    assert!(listed.live(now + Duration::from_secs(29)));
    assert!(!listed.live(now + Duration::from_secs(31)));

    let outcome = Outcome::ended(Status::Success, Vec::new(), None);
    store.finish_build("w-1", &outcome, &a.lease).await.unwrap();
    store.remove_worker("b.1").await.unwrap();
    let workers = store.list_workers().await.unwrap();
    assert_eq!(workers.len(), 1);
    assert!(workers[0].builds.is_empty(), "finished");

    // A day without a heartbeat: gone at the next beat of anyone; a little less: kept.
    let dead = worker("dead.1", None, 1);
    let dying = worker("dying.1", None, 1);
    store
        .beat_worker(&dead, now - WORKERS_KEPT - Duration::from_secs(1))
        .await
        .unwrap();
    store
        .beat_worker(&dying, now - WORKERS_KEPT + Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(store.list_workers().await.unwrap().len(), 3);
    store.beat_worker(&a, now).await.unwrap();
    let ids: Vec<String> = store
        .list_workers()
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.id)
        .collect();
    assert_eq!(ids, ["a.1", "dying.1"]);
}
