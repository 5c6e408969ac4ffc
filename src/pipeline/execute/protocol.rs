//! The executor's side of the [`Backend`] contract, checked with a fake backend that records
//! every call: the order of the calls, and a teardown after every outcome (success, failure,
//! timeouts, a cancel, a failed setup, a panic in a step task). Steps "run" in no time here, and
//! tokio's clock is paused, so timeouts fire as soon as everything else waits. What a real
//! engine does is `tests/runtime.rs`'s and `tests/execute.rs`'s to check.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use tokio_util::sync::CancellationToken;

use super::{DEFAULT_LOG_LIMIT, Event, Run, execute};
use crate::adapters::registry::{Registries, Settings};
use crate::adapters::runtime::{
    Backend, BuildSpec, LogChunk, LogStream, Resources, RuntimeError, StepImage,
};
use crate::core::alias::Aliases;
use crate::core::build::{Outcome, Status};
use crate::core::plan::{Inputs, resolve};

/// One call the executor made, with the step it named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Setup,
    StepImage(usize, bool),
    Create(usize, bool),
    Start(usize),
    Logs(usize),
    Wait(usize),
    Stop(usize),
    Outputs,
    MissingCommand(usize),
    Remove(usize),
    ReadWorkspace,
    ImageExists,
    Push,
    Teardown,
    Sweep,
    Leftovers,
}

/// What a step of the fake does once started.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Runs {
    /// Exits at once with this code.
    Exits(i64),
    /// Runs until stopped, then exits with 143.
    UntilStopped,
    /// `start_step` panics, in the step's task.
    Panics,
}

/// A backend that runs nothing and records everything.
struct Fake {
    calls: Mutex<Vec<Call>>,
    steps: BTreeMap<usize, Runs>,
    setup: Option<RuntimeError>,
    /// What `step_image` finds for a step, by call, last first (then `sha256:1`): a different
    /// id at a step's turn than ahead of it means an earlier step rebuilt its image.
    image_ids: Mutex<HashMap<usize, Vec<&'static str>>>,
    stops: Mutex<HashMap<usize, CancellationToken>>,
}

impl Fake {
    fn new(steps: impl IntoIterator<Item = (usize, Runs)>) -> Self {
        Self {
            calls: Mutex::default(),
            steps: steps.into_iter().collect(),
            setup: None,
            image_ids: Mutex::default(),
            stops: Mutex::default(),
        }
    }

    fn record(&self, call: Call) {
        self.calls.lock().unwrap().push(call);
    }

    fn runs(&self, step: usize) -> Runs {
        self.steps.get(&step).copied().unwrap_or(Runs::Exits(0))
    }

    fn stop_token(&self, step: usize) -> CancellationToken {
        self.stops.lock().unwrap().entry(step).or_default().clone()
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait]
impl Backend for Fake {
    async fn ping(&self) -> Result<String, RuntimeError> {
        Ok("fake".to_string())
    }

    async fn setup_build(&self, _build: &BuildSpec) -> Result<(), RuntimeError> {
        self.record(Call::Setup);
        self.setup.clone().map_or(Ok(()), Err)
    }

    async fn step_image(
        &self,
        _build: &str,
        step: usize,
        fetch: bool,
    ) -> Result<Option<StepImage>, RuntimeError> {
        self.record(Call::StepImage(step, fetch));
        let id = self
            .image_ids
            .lock()
            .unwrap()
            .get_mut(&step)
            .and_then(Vec::pop);
        let id = id.unwrap_or("sha256:1");
        Ok(Some(StepImage {
            name: "builder/busybox".to_string(),
            id: id.to_string(),
            digest: None,
        }))
    }

    async fn create_step(
        &self,
        _build: &str,
        step: usize,
        _image: &StepImage,
        ahead: bool,
    ) -> Result<(), RuntimeError> {
        self.record(Call::Create(step, ahead));
        Ok(())
    }

    async fn start_step(&self, _build: &str, step: usize) -> Result<(), RuntimeError> {
        self.record(Call::Start(step));
        assert_ne!(
            self.runs(step),
            Runs::Panics,
            "step {step} panics, as asked"
        );
        Ok(())
    }

    fn step_logs(
        &self,
        _build: &str,
        step: usize,
    ) -> BoxStream<'static, Result<LogChunk, RuntimeError>> {
        self.record(Call::Logs(step));
        let line = stream::once(async move {
            Ok(LogChunk {
                stream: LogStream::Stdout,
                bytes: Bytes::from(format!("step {step}\n")),
            })
        });
        // The output ends when the step does.
        let stop = self.stop_token(step);
        let end = match self.runs(step) {
            Runs::UntilStopped => stream::once(async move { stop.cancelled().await })
                .filter_map(|()| async { None })
                .boxed(),
            _ => stream::empty().boxed(),
        };
        line.chain(end).boxed()
    }

    async fn wait_step(&self, _build: &str, step: usize) -> Result<i64, RuntimeError> {
        self.record(Call::Wait(step));
        match self.runs(step) {
            Runs::Exits(code) => Ok(code),
            Runs::UntilStopped | Runs::Panics => {
                self.stop_token(step).cancelled().await;
                Ok(143)
            }
        }
    }

    async fn stop_step(
        &self,
        _build: &str,
        step: usize,
        _grace: Duration,
    ) -> Result<(), RuntimeError> {
        self.record(Call::Stop(step));
        self.stop_token(step).cancel();
        Ok(())
    }

    async fn step_outputs(
        &self,
        _build: &str,
        _limit: usize,
    ) -> Result<Vec<Option<Vec<u8>>>, RuntimeError> {
        self.record(Call::Outputs);
        Ok(Vec::new())
    }

    async fn missing_command(&self, _build: &str, step: usize) -> Option<String> {
        self.record(Call::MissingCommand(step));
        None
    }

    async fn remove_step(&self, _build: &str, step: usize) -> Result<(), RuntimeError> {
        self.record(Call::Remove(step));
        Ok(())
    }

    async fn read_workspace(
        &self,
        _build: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, RuntimeError>>, RuntimeError> {
        self.record(Call::ReadWorkspace);
        Ok(stream::empty().boxed())
    }

    async fn image_exists(&self, _build: &str, _image: &str) -> Result<bool, RuntimeError> {
        self.record(Call::ImageExists);
        Ok(true)
    }

    async fn push_image(
        &self,
        _build: &str,
        _image: &str,
        _target: &str,
    ) -> Result<String, RuntimeError> {
        self.record(Call::Push);
        Ok("sha256:2".to_string())
    }

    async fn teardown_build(&self, _build: &str) -> Result<(), RuntimeError> {
        self.record(Call::Teardown);
        Ok(())
    }

    async fn sweep(&self, _build: &str) -> Result<Resources, RuntimeError> {
        self.record(Call::Sweep);
        Ok(Resources::default())
    }

    async fn leftovers(&self, _build: &str) -> Result<Resources, RuntimeError> {
        self.record(Call::Leftovers);
        Ok(Resources::default())
    }

    async fn builds(&self) -> Result<Vec<String>, RuntimeError> {
        unreachable!("the executor never lists builds")
    }
}

/// Where a step is in its lifecycle, as the calls so far put it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Absent,
    Created,
    Started,
    Exited,
}

/// Checks the calls against the lifecycle that [`Backend`] documents; returns the steps
/// started, in order. `Err` says which call broke it.
fn check_protocol(
    calls: &[Call],
    dependencies: &[Vec<usize>],
    panicked: &[usize],
) -> Result<Vec<usize>, String> {
    let mut phase = vec![Phase::Absent; dependencies.len()];
    let mut chosen = vec![false; dependencies.len()];
    let mut exited = vec![false; dependencies.len()];
    let mut started = Vec::new();
    let (first, last) = (calls.first(), calls.last());
    if first != Some(&Call::Setup) || last != Some(&Call::Teardown) {
        return Err("the first call is not setup_build or the last not teardown_build".into());
    }
    let inner = &calls[1..calls.len() - 1];
    for (n, call) in inner.iter().enumerate() {
        let broke = |why: &str| Err(format!("call {} ({call:?}): {why}", n + 1));
        match *call {
            Call::Setup | Call::Teardown => return broke("only once, first or last"),
            Call::Sweep | Call::Leftovers => return broke("not the executor's to call"),
            Call::StepImage(step, _) => chosen[step] = true,
            Call::Create(step, _) => {
                if phase[step] != Phase::Absent {
                    return broke("created twice without a removal");
                }
                if !chosen[step] {
                    return broke("created from an image step_image did not choose");
                }
                phase[step] = Phase::Created;
            }
            Call::Start(step) => {
                if phase[step] != Phase::Created {
                    return broke("started without being created, or twice");
                }
                if let Some(d) = dependencies[step].iter().find(|&&d| !exited[d]) {
                    return broke(&format!("started before step {d} it waits for ended"));
                }
                phase[step] = Phase::Started;
                started.push(step);
            }
            Call::Logs(step) | Call::Wait(step) => {
                if phase[step] != Phase::Started {
                    return broke("followed or waited for before its start");
                }
            }
            // Safe in any state, by the contract.
            Call::Stop(_) => {}
            Call::MissingCommand(step) => {
                // The executor asks why a step failed once it waited for it to exit.
                if phase[step] != Phase::Started && phase[step] != Phase::Exited {
                    return broke("read before it ran");
                }
                phase[step] = Phase::Exited;
            }
            Call::Remove(step) => {
                if matches!(phase[step], Phase::Started | Phase::Exited) {
                    exited[step] = true;
                }
                phase[step] = Phase::Absent;
            }
            Call::Outputs => {
                let running =
                    |(step, p): (usize, &Phase)| *p == Phase::Started && !panicked.contains(&step);
                if phase.iter().enumerate().any(running) {
                    return broke("step outputs read while a step still runs");
                }
            }
            Call::ReadWorkspace | Call::ImageExists | Call::Push => {
                if phase.iter().any(|p| *p != Phase::Absent) {
                    return broke("results read while a step still exists");
                }
            }
        }
    }
    // Every step that ran was removed, but one whose task panicked: that is the teardown's.
    // Steps created ahead whose turn never came may be left to the teardown too.
    for (step, phase) in phase.iter().enumerate() {
        if matches!(phase, Phase::Started | Phase::Exited) && !panicked.contains(&step) {
            return Err(format!("step {step} ran and was never removed"));
        }
    }
    Ok(started)
}

const BUILD_ID: &str = "protocol";

/// Runs `yaml` on `fake`, cancelling it when `cancel_after` steps have started; returns the
/// outcome and the calls, checked against the lifecycle.
async fn run(
    yaml: &str,
    fake: Fake,
    cancel_at_start_of: Option<usize>,
) -> (Outcome, Vec<Call>, Vec<usize>) {
    let loaded = crate::core::config::load(yaml.as_bytes()).expect("a YAML document");
    assert!(
        !loaded.diagnostics.has_errors(),
        "{}",
        loaded.diagnostics.render("t.yaml")
    );
    let build = resolve(&loaded.config, &Inputs::default()).expect("a valid build");
    let dependencies: Vec<Vec<usize>> =
        build.steps.iter().map(|s| s.dependencies.clone()).collect();
    let run = Run {
        build_id: BUILD_ID.to_string(),
        build,
        workspace: None,
        secrets: BTreeMap::new(),
        registries: Registries::new(&Settings::default()).expect("registry settings"),
        trusted: false,
        aliases: Aliases::default(),
        log_limit: DEFAULT_LOG_LIMIT,
    };
    let fake = Arc::new(fake);
    let (events, mut received) = super::events();
    let cancel = CancellationToken::new();
    let execution = tokio::spawn(execute(fake.clone(), run, events, cancel.clone()));
    while let Some(event) = received.recv().await {
        if let (Event::StepStarted { step }, Some(at)) = (&event, cancel_at_start_of)
            && *step == at
        {
            cancel.cancel();
        }
    }
    let outcome = execution.await.expect("execute does not panic");
    let calls = fake.calls();
    let panicked: Vec<usize> = (fake.steps.iter())
        .filter_map(|(step, runs)| (*runs == Runs::Panics).then_some(*step))
        .collect();
    let started = check_protocol(&calls, &dependencies, &panicked)
        .unwrap_or_else(|why| panic!("{why}\ncalls: {calls:#?}"));
    (outcome, calls, started)
}

fn statuses(outcome: &Outcome) -> Vec<Status> {
    outcome.steps.iter().map(|s| s.status).collect()
}

/// Two steps in order, then two at once, then one after both: each chosen, created (ahead
/// where its turn had not come), started in the graph's order, waited for, read and removed.
#[tokio::test(start_paused = true)]
async fn a_successful_build_keeps_the_lifecycle() {
    let yaml = "steps:
- {id: a, name: builder/busybox}
- {id: b, name: builder/busybox}
- {id: c, name: builder/busybox, waitFor: [b]}
- {id: d, name: builder/busybox, waitFor: [b]}
- {id: e, name: builder/busybox, waitFor: [c, d]}
images: [app]
";
    let (outcome, calls, started) = run(yaml, Fake::new([]), None).await;
    assert_eq!(outcome.status, Status::Success, "{outcome:?}");
    assert_eq!(started[..2], [0, 1]);
    assert_eq!(started[4], 4);
    assert!(
        calls.contains(&Call::Create(1, true)),
        "step 1 is created ahead: {calls:?}"
    );
    let push = calls.iter().position(|c| *c == Call::Push).expect("pushed");
    let last_removal = calls
        .iter()
        .rposition(|c| matches!(c, Call::Remove(_)))
        .unwrap();
    let outputs = calls
        .iter()
        .position(|c| *c == Call::Outputs)
        .expect("read");
    assert!(last_removal < outputs && outputs < push, "{calls:?}");
    for step in 0..5 {
        let of_step =
            |c: &&Call| matches!(c, Call::Start(s) | Call::Wait(s) | Call::Remove(s) if *s == step);
        let lifecycle: Vec<_> = calls.iter().filter(of_step).copied().collect();
        assert_eq!(
            lifecycle,
            [Call::Start(step), Call::Wait(step), Call::Remove(step)]
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_step_stops_the_others_and_the_build_is_torn_down() {
    let yaml = "steps:
- {name: builder/busybox, waitFor: ['-']}
- {name: builder/busybox, waitFor: ['-']}
- {name: builder/busybox}
";
    let fake = Fake::new([(0, Runs::UntilStopped), (1, Runs::Exits(3))]);
    let (outcome, calls, _) = run(yaml, fake, None).await;
    assert_eq!(outcome.status, Status::Failure, "{outcome:?}");
    assert_eq!(
        statuses(&outcome),
        [Status::Cancelled, Status::Failure, Status::Queued]
    );
    // The failure was asked whether the command could run; the stopped step was stopped.
    assert!(calls.contains(&Call::MissingCommand(1)), "{calls:?}");
    assert!(calls.contains(&Call::Stop(0)), "{calls:?}");
    assert!(!calls.contains(&Call::Start(2)), "{calls:?}");
}

#[tokio::test(start_paused = true)]
async fn timeouts_stop_the_step_and_the_build_is_torn_down() {
    let step_timeout =
        "steps:\n- {name: builder/busybox, timeout: 5s}\n- {name: builder/busybox}\n";
    let build_timeout =
        "steps:\n- {name: builder/busybox}\n- {name: builder/busybox}\ntimeout: 5s\n";
    for yaml in [step_timeout, build_timeout] {
        let fake = Fake::new([(0, Runs::UntilStopped)]);
        let (outcome, calls, _) = run(yaml, fake, None).await;
        assert_eq!(outcome.status, Status::Timeout, "{outcome:?}");
        assert_eq!(statuses(&outcome), [Status::Timeout, Status::Queued]);
        let stop = calls
            .iter()
            .position(|c| *c == Call::Stop(0))
            .expect("stopped");
        let removal = calls
            .iter()
            .position(|c| *c == Call::Remove(0))
            .expect("removed");
        assert!(stop < removal, "{calls:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_cancel_stops_the_running_step_and_the_build_is_torn_down() {
    let yaml = "steps:\n- {name: builder/busybox}\n- {name: builder/busybox}\n";
    let fake = Fake::new([(0, Runs::UntilStopped)]);
    let (outcome, calls, _) = run(yaml, fake, Some(0)).await;
    assert_eq!(outcome.status, Status::Cancelled, "{outcome:?}");
    assert_eq!(statuses(&outcome), [Status::Cancelled, Status::Queued]);
    assert!(calls.contains(&Call::Stop(0)), "{calls:?}");
}

#[tokio::test(start_paused = true)]
async fn a_failed_setup_runs_no_step_and_is_torn_down() {
    let fake = Fake {
        setup: Some(RuntimeError::Engine(
            "preparing the build: no room".to_string(),
        )),
        ..Fake::new([])
    };
    let (outcome, calls, _) = run("steps: [{name: builder/busybox}]", fake, None).await;
    assert_eq!(outcome.status, Status::InternalError, "{outcome:?}");
    assert_eq!(
        outcome.failure.as_deref(),
        Some("preparing the build: no room")
    );
    assert_eq!(calls, [Call::Setup, Call::Teardown]);
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_a_step_task_is_an_internal_error_and_the_build_is_torn_down() {
    let yaml = "steps:\n- {name: builder/busybox}\n- {name: builder/busybox}\n";
    let fake = Fake::new([(0, Runs::Panics)]);
    let (outcome, calls, _) = run(yaml, fake, None).await;
    assert_eq!(outcome.status, Status::InternalError, "{outcome:?}");
    assert_eq!(statuses(&outcome), [Status::InternalError, Status::Queued]);
    let detail = outcome.steps[0].detail.clone().unwrap_or_default();
    assert!(detail.contains("the step's task failed"), "{detail}");
    assert!(!calls.contains(&Call::Start(1)), "{calls:?}");
}

/// An earlier step rebuilt the image a step created ahead runs: at its turn it is removed and
/// created anew, from the new image, before it starts.
#[tokio::test(start_paused = true)]
async fn a_step_created_ahead_from_an_image_rebuilt_since_is_created_anew() {
    let yaml = "steps:\n- {name: builder/busybox}\n- {name: builder/busybox}\n";
    let fake = Fake::new([]);
    // Ahead of its turn, at its turn, and once created anew.
    let ids = vec!["sha256:1", "sha256:new", "sha256:old"];
    *fake.image_ids.lock().unwrap() = HashMap::from([(1, ids)]);
    let (outcome, calls, _) = run(yaml, fake, None).await;
    assert_eq!(outcome.status, Status::Success, "{outcome:?}");
    let of_step_1: Vec<_> = calls
        .iter()
        .filter(|c| {
            matches!(
                c,
                Call::StepImage(1, _) | Call::Create(1, _) | Call::Remove(1) | Call::Start(1)
            )
        })
        .copied()
        .collect();
    assert_eq!(
        of_step_1,
        [
            Call::StepImage(1, false),
            Call::Create(1, true),
            Call::StepImage(1, false),
            Call::Remove(1),
            Call::StepImage(1, true),
            Call::Create(1, false),
            Call::Start(1),
            Call::Remove(1),
        ]
    );
}
