//! The scheduler driven by a clock of the test's own (no sleeping for real minutes), against a
//! real SqliteStore and a real git repository whose branch each run resolves: runs fire once at
//! their local time across daylight-saving changes, policies decide against a still-queued or a
//! still-running build, restarts and downtime neither repeat nor pile up runs, and two schedulers
//! on one store (SQLite, and PostgreSQL as `serve` replicas share it) start each run once.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use builder::adapters::registry::{self, Registries};
use builder::adapters::runtime::DockerBackend;
use builder::adapters::source::git::Rewrites;
use builder::adapters::store::{Builds as _, PostgresStore, Queue as _, SqliteStore, Store};
use builder::core::alias::Aliases;
use builder::core::build::{Outcome, Status};
use builder::core::wire::Build;
use builder::pipeline::execute::DEFAULT_LOG_LIMIT;
use builder::pipeline::service::{
    BuildQuery, Clock, Failed, Schedules, Service, Settings, TriggerFiles, WorkerSettings,
};
use builder::pipeline::{Lease, Machine};
use chrono::{DateTime, TimeDelta, Utc};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

mod common;

use common::Repository;
use common::postgres::on_a_fresh_database;

/// A clock the test sets.
struct TestClock(Mutex<DateTime<Utc>>);

impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
}

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().to_utc()
}

const QUICK: &str =
    "steps:\n- name: builder/busybox\n  args: [echo, '$_SCHEDULE_NAME $_SCHEDULED_TIME']\n";
const SLOW: &str = "steps:\n- name: builder/busybox\n  args: [sh, -c, 'echo started; sleep 600']\n";

/// A server's worth of state on disk: the repository "acme/app" whose main holds `config`, a
/// trigger `app` that builds it, schedule files, and the data directory with the store.
struct Setup {
    repository: Repository,
    data: TempDir,
    triggers: TempDir,
    schedules: TempDir,
    clock: Arc<TestClock>,
}

impl Setup {
    fn new(config: &str, schedules: &[(&str, &str)]) -> Self {
        Self::with_trigger(config, "", schedules)
    }

    /// A setup whose trigger `app` has the fields `trigger` too.
    fn with_trigger(config: &str, trigger: &str, schedules: &[(&str, &str)]) -> Self {
        let repository = Repository::new();
        repository.commit(&[("cloudbuild.yaml", config)], "app", "main");
        let triggers = TempDir::new().unwrap();
        std::fs::write(
            triggers.path().join("app.yaml"),
            format!(
                "name: app\nfilename: cloudbuild.yaml\n\
                 github: {{owner: acme, name: app, push: {{branch: ^main$}}}}\n{trigger}"
            ),
        )
        .unwrap();
        let dir = TempDir::new().unwrap();
        for (name, yaml) in schedules {
            let file = format!("name: {name}\ntrigger: app\nbranch: main\n{yaml}");
            std::fs::write(dir.path().join(format!("{name}.yaml")), file).unwrap();
        }
        Self {
            repository,
            data: TempDir::new().unwrap(),
            triggers,
            schedules: dir,
            clock: Arc::new(TestClock(Mutex::new(utc("2024-01-01T00:00:00Z")))),
        }
    }

    fn set_time(&self, at: &str) {
        *self.clock.0.lock().unwrap() = utc(at);
    }

    /// A service on this setup's files and store, as a fresh `builder serve` process would have
    /// (a restart is a new one).
    async fn service(&self) -> (Arc<Service>, SqliteStore) {
        let store = SqliteStore::open(&self.data.path().join("builds.db"))
            .await
            .unwrap();
        (self.service_on(Arc::new(store.clone())).await, store)
    }

    /// A service on this setup's files and `store`.
    async fn service_on(&self, store: Arc<dyn Store>) -> Arc<Service> {
        let (triggers, _) = TriggerFiles::load(self.triggers.path()).unwrap();
        let (schedules, _) = Schedules::load(self.schedules.path(), &triggers.all()).unwrap();
        let rewrite = format!(
            "https://github.com/={}/",
            self.repository.mirrors().display()
        );
        let settings = Settings {
            data_dir: self.data.path().to_path_buf(),
            machine: Machine {
                project: "test".into(),
                aliases: Aliases::load(None).unwrap(),
                registries: Registries::new(&registry::Settings::default()).unwrap(),
                secrets_dir: None,
                trusted: false,
                log_limit: DEFAULT_LOG_LIMIT,
            },
            webhook_secret: b"secret".to_vec(),
            submit_secrets: Default::default(),
            github: Default::default(),
            rewrites: Rewrites::new([rewrite.parse().unwrap()]),
            fetch: Default::default(),
            kfp_registry: None,
            reporting: None,
            notifying: None,
            upload_limits: Default::default(),
        };
        let service = Service::new(
            store,
            Arc::new(DockerBackend::connect().await.unwrap()),
            triggers,
            schedules,
            self.clock.clone(),
            settings,
        );
        Arc::new(service)
    }
}

/// Sets the clock to `at` and evaluates the schedules once.
async fn tick(setup: &Setup, service: &Service, at: &str) {
    setup.set_time(at);
    service.evaluate_schedules().await;
}

/// The builds of `schedule`, oldest first.
async fn builds(service: &Service, schedule: &str) -> Vec<Build> {
    let query = BuildQuery {
        schedule: Some(schedule.into()),
        limit: 1000,
        ..BuildQuery::default()
    };
    let mut builds = service.builds(&query).await.unwrap();
    builds.reverse();
    builds
}

/// The `_SCHEDULED_TIME` of each build of `schedule`, oldest first.
async fn scheduled_times(service: &Service, schedule: &str) -> Vec<String> {
    builds(service, schedule)
        .await
        .iter()
        .map(|b| b.substitutions["_SCHEDULED_TIME"].clone())
        .collect()
}

/// The schedule's skipped-run records, oldest first: (first, last, count, reason).
async fn skipped(service: &Service, schedule: &str) -> Vec<(String, String, u64, String)> {
    let view = serde_json::to_value(service.schedule(schedule).await.unwrap()).unwrap();
    let mut records: Vec<_> = view["skippedRuns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["first"].as_str().unwrap().to_string(),
                r["last"].as_str().unwrap().to_string(),
                r["count"].as_u64().unwrap(),
                r["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    records.reverse();
    records
}

/// Ends a build `worker` holds, as its worker would.
async fn finish(store: &SqliteStore, id: &str, worker: &Lease) {
    let outcome = Outcome::ended(Status::Success, Vec::new(), None);
    store.finish_build(id, &outcome, worker).await.unwrap();
}

#[tokio::test]
async fn a_run_fires_once_at_its_time_and_its_build_carries_the_schedule() {
    let setup = Setup::new(QUICK, &[("hourly", "schedule: 0 * * * *\n")]);
    let (service, _) = setup.service().await;
    let commit = setup.repository.git(&["-C", "work", "rev-parse", "HEAD"]);

    tick(&setup, &service, "2024-03-11T09:30:00Z").await;
    tick(&setup, &service, "2024-03-11T09:59:59Z").await;
    assert!(builds(&service, "hourly").await.is_empty());
    for at in [
        "2024-03-11T10:00:01Z",
        "2024-03-11T10:00:06Z",
        "2024-03-11T10:59:00Z",
    ] {
        tick(&setup, &service, at).await;
    }
    let fired = builds(&service, "hourly").await;
    let [build] = fired.as_slice() else {
        panic!("{fired:?}")
    };
    assert_eq!(build.status, Status::Queued);
    assert_eq!(
        (build.trigger.as_deref(), build.schedule.as_deref()),
        (Some("app"), Some("hourly"))
    );
    assert_eq!(build.source["commit"], commit.as_str());
    assert_eq!(build.substitutions["_SCHEDULE_NAME"], "hourly");
    assert_eq!(
        build.substitutions["_SCHEDULED_TIME"],
        "2024-03-11T10:00:00Z"
    );
    assert_eq!(build.substitutions["BRANCH_NAME"], "main");

    let view = serde_json::to_value(service.schedule("hourly").await.unwrap()).unwrap();
    assert_eq!(view["lastRun"]["build"], build.id.as_str());
    assert_eq!(view["lastRun"]["status"], "QUEUED");
    assert_eq!(view["nextRun"]["utc"], "2024-03-11T11:00:00Z");
    assert_eq!(view["skippedRuns"], serde_json::json!([]));
}

/// The test's clock moves 10 minutes at a time; between the two windows, the months skipped
/// are past the deadline.
const NEW_YORK: &str = "timeZone: America/New_York\nstartingDeadlineSeconds: 900\n";

#[tokio::test]
async fn each_local_run_fires_once_across_both_daylight_saving_changes() {
    let skipped_hour = format!("schedule: 30 2 * * *\n{NEW_YORK}");
    let repeated_hour = format!("schedule: 30 1 * * *\n{NEW_YORK}");
    let setup = Setup::new(
        QUICK,
        &[
            ("skipped-hour", &skipped_hour),
            ("repeated-hour", &repeated_hour),
        ],
    );
    let (service, _) = setup.service().await;
    // Every 10 minutes through the spring-forward (2024-03-10) and the fall-back (2024-11-03).
    for (start, days) in [("2024-03-09T04:00:00Z", 3), ("2024-11-02T04:00:00Z", 3)] {
        let mut at = utc(start);
        let end = at + TimeDelta::days(days);
        while at < end {
            tick(&setup, &service, &at.to_rfc3339()).await;
            at += TimeDelta::minutes(10);
        }
    }
    // 02:30 does not exist on 10 March: it fires once, at 03:00 EDT (07:00 UTC).
    assert_eq!(
        scheduled_times(&service, "skipped-hour").await,
        [
            "2024-03-09T07:30:00Z",
            "2024-03-10T07:00:00Z",
            "2024-03-11T06:30:00Z",
            "2024-11-02T06:30:00Z",
            "2024-11-03T07:30:00Z",
            "2024-11-04T07:30:00Z",
        ]
    );
    // 01:30 happens twice on 3 November: it fires at the first, 01:30 EDT (05:30 UTC).
    assert_eq!(
        scheduled_times(&service, "repeated-hour").await,
        [
            "2024-03-09T06:30:00Z",
            "2024-03-10T06:30:00Z",
            "2024-03-11T05:30:00Z",
            "2024-11-02T05:30:00Z",
            "2024-11-03T05:30:00Z",
            "2024-11-04T06:30:00Z",
        ]
    );
}

#[tokio::test]
async fn forbid_skips_a_run_while_the_previous_build_is_queued_or_working() {
    let setup = Setup::new(
        QUICK,
        &[("forbid", "schedule: 0 * * * *\nconcurrencyPolicy: Forbid\n")],
    );
    let (service, store) = setup.service().await;
    tick(&setup, &service, "2024-03-11T09:30:00Z").await;
    tick(&setup, &service, "2024-03-11T10:00:00Z").await;
    let first = builds(&service, "forbid").await[0].id.clone();
    // Still queued at 11:00, working (a worker took it) at 12:00: both runs are skipped.
    tick(&setup, &service, "2024-03-11T11:00:00Z").await;
    let worker = Lease {
        holder: "a worker".into(),
        duration: Duration::from_secs(30),
    };
    let claimed = store.claim_queued(&worker, None).await.unwrap().unwrap();
    assert_eq!(claimed.id, first);
    tick(&setup, &service, "2024-03-11T12:00:00Z").await;
    assert_eq!(builds(&service, "forbid").await.len(), 1);
    let reason = format!(
        "the previous run (build {first}) is still queued or working (concurrencyPolicy: Forbid)"
    );
    assert_eq!(
        skipped(&service, "forbid").await,
        [(
            "2024-03-11T11:00:00Z".to_string(),
            "2024-03-11T12:00:00Z".to_string(),
            2,
            reason
        )]
    );
    // Once it has finished, the next run starts.
    finish(&store, &first, &worker).await;
    tick(&setup, &service, "2024-03-11T13:00:00Z").await;
    assert_eq!(
        scheduled_times(&service, "forbid").await,
        ["2024-03-11T10:00:00Z", "2024-03-11T13:00:00Z"]
    );
}

/// Schedule `hourly` of trigger `app`, whose builds are in group `deploy` with `on_conflict`,
/// and its service, once its 10:00 run has started.
async fn hourly_in_group(on_conflict: &str) -> (Setup, Arc<Service>) {
    let setup = Setup::with_trigger(
        QUICK,
        &format!("concurrency: {{group: deploy, onConflict: {on_conflict}}}\n"),
        &[("hourly", "schedule: 0 * * * *\n")],
    );
    let (service, _) = setup.service().await;
    tick(&setup, &service, "2024-03-11T09:30:00Z").await;
    tick(&setup, &service, "2024-03-11T10:00:00Z").await;
    (setup, service)
}

/// A scheduled run takes its trigger's concurrency as the trigger's other builds do: with
/// `SKIP`, a run whose group is full queues nothing and is recorded as skipped, saying why, and
/// a run by hand is refused with the same reason; once the group has room, the next run starts.
#[tokio::test]
async fn a_run_whose_skipping_group_is_full_is_recorded_as_skipped() {
    let (setup, service) = hourly_in_group("SKIP").await;
    let first = builds(&service, "hourly").await[0].id.clone();
    tick(&setup, &service, "2024-03-11T11:00:00Z").await;
    assert_eq!(builds(&service, "hourly").await.len(), 1);
    let reason =
        format!("skipped: concurrency group deploy is at its limit (1): {first} queued or running");
    let at = "2024-03-11T11:00:00Z".to_string();
    assert_eq!(
        skipped(&service, "hourly").await,
        [(at.clone(), at, 1, reason.clone())]
    );
    let view = serde_json::to_value(service.schedule("hourly").await.unwrap()).unwrap();
    assert_eq!(view["lastRun"]["build"], first.as_str());
    match service.run_schedule("hourly").await {
        Err(Failed::Conflict(refusal)) => assert_eq!(refusal, reason),
        other => panic!("{other:?}"),
    }
    assert_eq!(builds(&service, "hourly").await.len(), 1);

    service.cancel(&first).await.unwrap();
    tick(&setup, &service, "2024-03-11T12:00:00Z").await;
    assert_eq!(
        scheduled_times(&service, "hourly").await,
        ["2024-03-11T10:00:00Z", "2024-03-11T12:00:00Z"]
    );
}

/// With `CANCEL_OLDER`, a scheduled run's build cancels the older builds of its group.
#[tokio::test]
async fn a_run_of_a_cancel_older_group_cancels_its_older_builds() {
    let (setup, service) = hourly_in_group("CANCEL_OLDER").await;
    tick(&setup, &service, "2024-03-11T11:00:00Z").await;
    let statuses: Vec<Status> = builds(&service, "hourly")
        .await
        .iter()
        .map(|build| build.status)
        .collect();
    assert_eq!(statuses, [Status::Cancelled, Status::Queued]);
}

/// Waits until `id` has `status`.
async fn wait_for(service: &Service, id: &str, status: Status) -> Build {
    let start = Instant::now();
    loop {
        let build = service.build(id).await.unwrap();
        if build.status == status {
            return build;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "build {id} is {} not {status}: {:?}",
            build.status,
            build.failure
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `id`'s step has started (its first line is logged).
async fn started(service: &Service, id: &str) {
    let start = Instant::now();
    while service.log(id, 0, Some(1)).await.unwrap().0.is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "build {id} did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn replace_cancels_the_running_build_and_starts_the_new_run() {
    let setup = Setup::new(
        SLOW,
        &[(
            "replace",
            "schedule: 0 * * * *\nconcurrencyPolicy: Replace\n",
        )],
    );
    let (service, _) = setup.service().await;
    let shutdown = CancellationToken::new();
    let worker = WorkerSettings {
        name: "test".into(),
        pool: None,
        max_concurrent_builds: 1,
        lease: Duration::from_secs(30),
        poll: builder::pipeline::service::TICK,
    };
    let queue = tokio::spawn(service.clone().run_worker(worker, shutdown.clone()));
    tick(&setup, &service, "2024-03-11T09:30:00Z").await;
    tick(&setup, &service, "2024-03-11T10:00:00Z").await;
    let first = builds(&service, "replace").await[0].id.clone();
    started(&service, &first).await;

    tick(&setup, &service, "2024-03-11T11:00:00Z").await;
    let cancelled = wait_for(&service, &first, Status::Cancelled).await;
    assert_eq!(cancelled.schedule.as_deref(), Some("replace"));
    let runs = builds(&service, "replace").await;
    assert_eq!(runs.len(), 2);
    started(&service, &runs[1].id).await;
    shutdown.cancel();
    queue.await.unwrap().unwrap();
    wait_for(&service, &runs[1].id, Status::Cancelled).await;
    for build in [&first, &runs[1].id] {
        let left = std::process::Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=builder.build={build}"),
            ])
            .output()
            .unwrap();
        assert!(left.stdout.is_empty(), "build {build} left containers");
    }

    // A previous run that is only queued is cancelled before it ever runs.
    tick(&setup, &service, "2024-03-11T12:00:00Z").await;
    tick(&setup, &service, "2024-03-11T13:00:00Z").await;
    let runs = builds(&service, "replace").await;
    let statuses: Vec<Status> = runs.iter().map(|b| b.status).collect();
    assert_eq!(
        statuses,
        [
            Status::Cancelled,
            Status::Cancelled,
            Status::Cancelled,
            Status::Queued
        ]
    );
}

#[tokio::test]
async fn a_restart_neither_repeats_nor_loses_a_run() {
    let setup = Setup::new(QUICK, &[("hourly", "schedule: 0 * * * *\n")]);
    {
        let (service, _) = setup.service().await;
        tick(&setup, &service, "2024-03-11T09:30:00Z").await;
    }
    // Down over 10:00 for a few seconds: the new process starts the run.
    let (service, _) = setup.service().await;
    tick(&setup, &service, "2024-03-11T10:00:04Z").await;
    drop(service);
    // Restarted again within the same hour: nothing starts twice.
    let (service, _) = setup.service().await;
    tick(&setup, &service, "2024-03-11T10:00:09Z").await;
    tick(&setup, &service, "2024-03-11T10:40:00Z").await;
    tick(&setup, &service, "2024-03-11T11:00:00Z").await;
    assert_eq!(
        scheduled_times(&service, "hourly").await,
        ["2024-03-11T10:00:00Z", "2024-03-11T11:00:00Z"]
    );
    assert!(skipped(&service, "hourly").await.is_empty());
}

#[tokio::test]
async fn downtime_within_the_starting_deadline_starts_the_latest_run_and_beyond_it_none() {
    let setup = Setup::new(
        QUICK,
        &[(
            "deadline",
            "schedule: 0 * * * *\nstartingDeadlineSeconds: 600\n",
        )],
    );
    let (service, _) = setup.service().await;
    tick(&setup, &service, "2024-03-11T09:30:00Z").await;
    // Down until 13:05: 13:00 is 5 minutes late, within the deadline; 10:00 to 12:00 are skipped.
    let (service, _) = setup.service().await;
    tick(&setup, &service, "2024-03-11T13:05:00Z").await;
    // Down until 16:20: 16:00 is 20 minutes late, past the deadline; nothing starts.
    let (service, _) = setup.service().await;
    tick(&setup, &service, "2024-03-11T16:20:00Z").await;
    tick(&setup, &service, "2024-03-11T17:00:30Z").await;
    assert_eq!(
        scheduled_times(&service, "deadline").await,
        ["2024-03-11T13:00:00Z", "2024-03-11T17:00:00Z"]
    );
    let records = skipped(&service, "deadline").await;
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(
        (records[0].0.as_str(), records[0].1.as_str(), records[0].2),
        ("2024-03-11T10:00:00Z", "2024-03-11T12:00:00Z", 3)
    );
    assert!(records[0].3.starts_with("missed while the server was down"));
    assert_eq!(
        (records[1].0.as_str(), records[1].1.as_str(), records[1].2),
        ("2024-03-11T14:00:00Z", "2024-03-11T16:00:00Z", 3)
    );
    assert!(
        records[1]
            .3
            .contains("found due 1200s after its time, past startingDeadlineSeconds (600)"),
        "{}",
        records[1].3
    );
}

#[tokio::test]
async fn a_machine_clock_that_jumps_starts_no_burst_of_runs() {
    let setup = Setup::new(QUICK, &[("minutely", "schedule: '* * * * *'\n")]);
    let (service, _) = setup.service().await;
    tick(&setup, &service, "2024-03-11T09:30:30Z").await;
    tick(&setup, &service, "2024-03-11T09:31:00Z").await;
    // Three days ahead: one run, the 4000-odd minutes between recorded as skipped.
    tick(&setup, &service, "2024-03-14T09:31:10Z").await;
    // Back by a day, then to where it was: nothing runs again.
    tick(&setup, &service, "2024-03-13T09:00:00Z").await;
    tick(&setup, &service, "2024-03-14T09:31:20Z").await;
    tick(&setup, &service, "2024-03-14T09:32:00Z").await;
    assert_eq!(
        scheduled_times(&service, "minutely").await,
        [
            "2024-03-11T09:31:00Z",
            "2024-03-14T09:31:00Z",
            "2024-03-14T09:32:00Z"
        ]
    );
    let records = skipped(&service, "minutely").await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].2, 3 * 24 * 60 - 1);
}

#[tokio::test]
async fn two_schedulers_on_one_store_start_each_run_once() {
    let setup = Setup::new(QUICK, &[("hourly", "schedule: 0 * * * *\n")]);
    let (one, _) = setup.service().await;
    let (two, _) = setup.service().await;
    each_run_starts_once(&setup, &one, &two).await;
}

/// The same on PostgreSQL, the store `serve` replicas share: two schedulers, each with its own
/// connections, evaluating at the same moments, start each run once.
#[tokio::test(flavor = "multi_thread")]
async fn two_schedulers_on_postgres_start_each_run_once() {
    on_a_fresh_database(|url| async move {
        let setup = Setup::new(QUICK, &[("hourly", "schedule: 0 * * * *\n")]);
        let store = || async { Arc::new(PostgresStore::open(&url).await.unwrap()) };
        let one = setup.service_on(store().await).await;
        let two = setup.service_on(store().await).await;
        each_run_starts_once(&setup, &one, &two).await;
    })
    .await;
}

/// Two schedulers on one store evaluate an hourly schedule at the same moments, and after
/// downtime: each run starts once, and the runs skipped meanwhile are recorded once.
async fn each_run_starts_once(setup: &Setup, one: &Service, two: &Service) {
    tick(setup, one, "2024-03-11T09:30:00Z").await;
    for hour in 10..16 {
        setup.set_time(&format!("2024-03-11T{hour}:00:01Z"));
        tokio::join!(one.evaluate_schedules(), two.evaluate_schedules());
    }
    // Both after downtime: one run, one record of the skipped ones.
    setup.set_time("2024-03-11T19:00:02Z");
    tokio::join!(one.evaluate_schedules(), two.evaluate_schedules());
    let times = scheduled_times(one, "hourly").await;
    assert_eq!(times.len(), 7, "{times:?}");
    assert_eq!(times[6], "2024-03-11T19:00:00Z");
    let records = skipped(two, "hourly").await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].2, 3);
}

#[tokio::test]
async fn paused_runs_are_skipped_and_recorded_and_run_now_starts_one_at_once() {
    let setup = Setup::new(
        QUICK,
        &[
            ("hourly", "schedule: 0 * * * *\n"),
            ("off", "schedule: 0 * * * *\nsuspend: true\n"),
        ],
    );
    let (service, _) = setup.service().await;
    tick(&setup, &service, "2024-03-11T09:30:00Z").await;
    service.pause_schedule("hourly", true).await.unwrap();
    for at in [
        "2024-03-11T10:00:00Z",
        "2024-03-11T11:00:00Z",
        "2024-03-11T11:30:00Z",
    ] {
        tick(&setup, &service, at).await;
    }
    assert!(builds(&service, "hourly").await.is_empty());
    assert_eq!(
        skipped(&service, "hourly").await,
        [(
            "2024-03-11T10:00:00Z".to_string(),
            "2024-03-11T11:00:00Z".to_string(),
            2,
            "the schedule is paused".to_string()
        )]
    );
    // Run now: whatever the pause; it becomes the last run.
    let id = service.run_schedule("hourly").await.unwrap();
    let build = service.build(&id).await.unwrap();
    assert_eq!(
        build.substitutions["_SCHEDULED_TIME"],
        "2024-03-11T11:30:00Z"
    );
    let view =
        serde_json::to_value(service.pause_schedule("hourly", false).await.unwrap()).unwrap();
    assert_eq!(view["lastRun"]["build"], id.as_str());
    assert_eq!(view["paused"], false);
    tick(&setup, &service, "2024-03-11T12:00:00Z").await;
    assert_eq!(
        scheduled_times(&service, "hourly").await,
        ["2024-03-11T11:30:00Z", "2024-03-11T12:00:00Z"]
    );
    // A schedule suspended in its file stays so; the trigger a schedule runs stays.
    assert!(matches!(
        service.pause_schedule("off", false).await,
        Err(Failed::Conflict(_))
    ));
    assert!(matches!(
        service.delete_trigger("app").await,
        Err(Failed::Conflict(_))
    ));
    assert!(
        skipped(&service, "off").await[0]
            .3
            .contains("suspend: true")
    );
}

#[test]
fn a_schedule_with_a_bad_expression_or_an_unknown_trigger_is_refused_with_its_location() {
    let triggers = TempDir::new().unwrap();
    std::fs::write(
        triggers.path().join("app.yaml"),
        "name: app\nfilename: cloudbuild.yaml\n",
    )
    .unwrap();
    let (triggers, _) = TriggerFiles::load(triggers.path()).unwrap();
    let dir = TempDir::new().unwrap();
    let write = |name: &str, yaml: &str| std::fs::write(dir.path().join(name), yaml).unwrap();
    write(
        "a.yaml",
        "name: a\nschedule: 0 3 * * MOM\ntrigger: app\nbranch: main\n",
    );
    write(
        "b.yaml",
        "name: b\nschedule: 0 3 * * 1\ntimeZone: Mars/Olympus\ntrigger: ap\nbranch: main\n",
    );
    let errors = Schedules::load(dir.path(), &triggers.all()).err().unwrap();
    let at = |file: &str| Path::new(dir.path()).join(file).display().to_string();
    for expected in [
        format!("{}:2:19: schedule: day of week: \"MOM\"", at("a.yaml")),
        format!(
            "{}:3:11: timeZone: unknown time zone \"Mars/Olympus\"",
            at("b.yaml")
        ),
        format!(
            "{}:4:10: trigger: no trigger \"ap\" on this server; did you mean \"app\"?",
            at("b.yaml")
        ),
    ] {
        assert!(
            errors.contains(&expected),
            "{expected:?} missing:\n{errors}"
        );
    }
}

#[tokio::test]
async fn a_run_whose_trigger_cannot_run_is_retried_then_skipped_with_the_error() {
    let setup = Setup::new(QUICK, &[]);
    std::fs::write(
        setup.schedules.path().join("gone.yaml"),
        "name: gone\nschedule: 0 * * * *\ntrigger: app\nbranch: gone\nstartingDeadlineSeconds: 120\n",
    )
    .unwrap();
    let (service, _) = setup.service().await;
    tick(&setup, &service, "2024-03-11T09:30:00Z").await;
    tick(&setup, &service, "2024-03-11T10:00:00Z").await;
    let view = serde_json::to_value(service.schedule("gone").await.unwrap()).unwrap();
    assert_eq!(
        view["lastError"], "acme/app has no such branch or tag",
        "{view}"
    );
    assert_eq!(view["nextRun"]["utc"], "2024-03-11T10:00:00Z", "still due");
    // Past the deadline: skipped, with the error; the next run is scheduled.
    tick(&setup, &service, "2024-03-11T10:03:00Z").await;
    assert!(builds(&service, "gone").await.is_empty());
    let records = skipped(&service, "gone").await;
    assert!(
        records[0]
            .3
            .ends_with("the last attempt to start it failed: acme/app has no such branch or tag"),
        "{records:?}"
    );
    let view = serde_json::to_value(service.schedule("gone").await.unwrap()).unwrap();
    assert_eq!(view["lastError"], serde_json::Value::Null);
    assert_eq!(view["nextRun"]["utc"], "2024-03-11T11:00:00Z");
}
