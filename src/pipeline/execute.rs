//! Runs a [`ResolvedBuild`] as Cloud Build does (spec §3, §5–7) on a [`Backend`]: each step runs
//! over one shared `/workspace`, started as soon as the steps it waits for are done, so
//! independent steps run at once (and created while those run, possibly started ahead and held
//! until then); then the `images:` and `templates:` are pushed and their digests recorded.
//!
//! The executor owns the step graph, timeouts, cancels, events, masking and outcomes; how steps
//! run is the backend's. A failing step, a timeout or a cancel is an outcome, not an error: it
//! becomes the build's status. Whatever happens, the build is torn down at the end.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use futures_util::{StreamExt, TryStreamExt};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::sync::{Semaphore, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, sleep_until};
use tokio_util::io::{StreamReader, SyncIoBridge};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, info_span};

use crate::adapters::registry::{Registries, RegistryError, TemplateUpload};
use crate::adapters::runtime::{
    Backend, BuildSpec, LogStream, RuntimeError, StepImage, StepSpec, Volume,
};
use crate::core::alias::Aliases;
use crate::core::build::{Outcome, PushedImage, Status, StepResult, rfc3339};
use crate::core::image;
/// A build's log limit unless told otherwise (`Run::log_limit`).
pub use crate::core::logs::DEFAULT_LOG_LIMIT;
use crate::core::logs::{Admit, LineAssembler, LogLimit, Masker};
use crate::core::plan::{BUILDER_OUTPUT, HOME, ResolvedBuild, ResolvedStep, WORKSPACE};
use crate::core::templates::{self, Found, Provenance, PushedTemplate};

/// How long a stopped step may take to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// How long a step's output may stay idle once the step has stopped before it is given up: a
/// long log may take the engine longer than this to deliver, and is read to its end.
const OUTPUT_DRAIN: Duration = Duration::from_secs(30);
/// How many steps may be created ahead of their start at once: enough to hide creation behind the
/// running steps, few enough that a long build does not create all its steps up front.
const CREATE_AHEAD: usize = 2;
/// How much of a step's `$BUILDER_OUTPUT/output` its results keep, as on Cloud Build.
const STEP_OUTPUT_LIMIT: usize = 50 * 1024;

/// One build to run.
pub struct Run {
    pub build_id: String,
    pub build: ResolvedBuild,
    /// A directory whose contents become `/workspace`; `None` starts it empty.
    pub workspace: Option<PathBuf>,
    /// Values of the build's secret env names.
    pub secrets: BTreeMap<String, String>,
    /// Credentials and connections for pulling step images and pushing results.
    pub registries: Registries,
    /// Whether the steps may reach the machine through the engine (a trusted trigger, or a
    /// setting of `submit` or the server's).
    pub trusted: bool,
    /// What the steps' own pulls, pushes and builds resolve image names with.
    pub aliases: Aliases,
    /// How many bytes of its steps' output the build's log keeps (see [`LogLimit`]).
    pub log_limit: u64,
}

/// What happens while a build runs, in order for each step.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    StepStarted {
        step: usize,
    },
    Line {
        step: usize,
        stream: LogStream,
        text: String,
    },
    StepFinished {
        step: usize,
        result: StepResult,
    },
    /// The results are being pushed: once, before the first image or template.
    PushStarted,
    PushingTemplate {
        file: String,
        reference: String,
    },
    PushedTemplate(PushedTemplate),
    Pushing {
        image: String,
    },
    Pushed(PushedImage),
}

/// Runs the build to its end and cleans up after it. `cancel` stops it (status CANCELLED).
pub async fn execute(
    backend: Arc<dyn Backend>,
    run: Run,
    events: Events,
    cancel: CancellationToken,
) -> Outcome {
    let masker = match Masker::new(run.secrets.values().map(String::as_str)) {
        Ok(masker) => masker,
        Err(detail) => return internal_error(&run, detail),
    };
    let context = Arc::new(StepContext {
        backend: backend.clone(),
        build_id: run.build_id.clone(),
        events,
        masker,
        log_limit: Arc::new(Mutex::new(LogLimit::new(run.log_limit))),
        registries: run.registries.clone(),
    });
    let spec = build_spec(&run);
    // The build's timeout counts from here (Cloud Build counts from startTime): preparing,
    // steps and pushing all fall within it, and so does a cancel.
    let deadline = Instant::now() + Duration::from_secs_f64(run.build.timeout);
    let mut outcome = tokio::select! {
        prepared = backend.setup_build(&spec) => match prepared {
            Ok(()) => run_steps(&context, &run.build, deadline, cancel.clone()).await,
            Err(e) => internal_error(&run, e.to_string()),
        },
        () = cancel.cancelled() => conclude(&run.build, queued(&run.build), Some(Stop::Cancelled)),
        () = sleep_until(deadline) => conclude(&run.build, queued(&run.build), Some(Stop::BuildTimeout)),
    };
    read_step_outputs(&context, &mut outcome).await;
    if outcome.status == Status::Success {
        let push = async {
            if !run.build.images.is_empty() || !run.build.templates.is_empty() {
                context.emit(Event::PushStarted).await;
            }
            outcome.images = push_images(&context, &run.build).await?;
            outcome.templates = push_templates(&context, &run).await?;
            Ok(())
        };
        let pushed = tokio::select! {
            pushed = push => pushed,
            () = cancel.cancelled() => Err(Ended::Cancelled("the build was cancelled while pushing results".into())),
            () = sleep_until(deadline) => Err(Ended::Timeout("the build timed out while pushing results".into())),
        };
        if let Err(ended) = pushed {
            outcome.status = ended.status();
            outcome.failure = Some(ended.into_detail());
        }
    }
    if let Err(e) = backend.teardown_build(&run.build_id).await {
        let cleanup = format!("cleaning up the build's containers and volumes failed: {e}");
        add_failure(&mut outcome, cleanup);
    }
    outcome
}

/// Says `what` went wrong beside the build's own outcome, never instead of it.
fn add_failure(outcome: &mut Outcome, what: String) {
    outcome.failure = Some(match outcome.failure.take() {
        Some(failure) => format!("{failure}; then {what}"),
        None => what,
    });
}

fn internal_error(run: &Run, detail: String) -> Outcome {
    Outcome::ended(Status::InternalError, queued(&run.build), Some(detail))
}

/// Every step of the build, not started.
fn queued(build: &ResolvedBuild) -> Vec<StepResult> {
    build.steps.iter().map(|_| StepResult::queued()).collect()
}

/// The build as the backend sets it up: the plan's steps with their secrets, and where the
/// workspace, the home directory and the step outputs are (the plan's paths, which its
/// environment variables name).
fn build_spec(run: &Run) -> BuildSpec {
    let step = |step: &ResolvedStep| {
        let mut env = step.env.clone();
        env.extend(
            step.secret_env
                .iter()
                .filter_map(|key| Some(format!("{key}={}", run.secrets.get(key)?))),
        );
        StepSpec {
            name: step.name.clone(),
            image: step.image.clone(),
            entrypoint: step.entrypoint.clone(),
            script: step.script.clone(),
            args: step.args.clone(),
            env,
            dir: step.dir.clone(),
            volumes: step
                .volumes
                .iter()
                .map(|v| Volume {
                    name: v.name.clone(),
                    path: v.path.clone(),
                })
                .collect(),
        }
    };
    BuildSpec {
        id: run.build_id.clone(),
        source: run.workspace.clone(),
        workspace: WORKSPACE.to_string(),
        home: HOME.to_string(),
        outputs: BUILDER_OUTPUT.to_string(),
        steps: run.build.steps.iter().map(step).collect(),
        credentials: Arc::new(run.registries.clone()),
        trusted: run.trusted,
        aliases: run.aliases.clone(),
    }
}

/// Everything a step task needs, shared by all of a build's steps.
struct StepContext {
    backend: Arc<dyn Backend>,
    build_id: String,
    events: Events,
    masker: Masker,
    /// Shared by the steps: the limit is the build's.
    log_limit: Arc<Mutex<LogLimit>>,
    registries: Registries,
}

impl StepContext {
    async fn emit(&self, event: Event) {
        self.events.send(vec![event]).await;
    }
}

/// Why the remaining steps are being stopped.
#[derive(Clone, Copy, PartialEq)]
enum Stop {
    /// This step failed and does not tolerate it.
    StepFailed(usize),
    BuildTimeout,
    Cancelled,
}

/// Starts every step whose dependencies are done, until all are done or the build stops.
///
/// A step whose dependencies have all started or been created ahead (up to [`CREATE_AHEAD`] such
/// steps at a time) is created meanwhile, `ahead` (the backend may start it held), so that it
/// only has to be released once they are done. Steps created ahead that then never start are
/// left to the build's teardown.
async fn run_steps(
    context: &Arc<StepContext>,
    build: &ResolvedBuild,
    deadline: Instant,
    cancel: CancellationToken,
) -> Outcome {
    let mut results = queued(build);
    let mut started = vec![false; build.steps.len()];
    let mut running = JoinSet::new();
    let mut step_of_task = std::collections::HashMap::new();
    // Every creation task, awaited before returning, so that none creates a step after the
    // teardown has looked; and the creations made ahead, by step, until their step starts.
    let mut creating = JoinSet::new();
    let mut ahead: BTreeMap<usize, Creation> = BTreeMap::new();
    let stop_steps = CancellationToken::new();
    let deadline = sleep_until(deadline);
    tokio::pin!(deadline);
    // A build cancelled while it was being prepared starts no step.
    let mut stopped: Option<Stop> = cancel.is_cancelled().then_some(Stop::Cancelled);
    loop {
        if stopped.is_none() {
            for (i, step) in build.steps.iter().enumerate() {
                let ready = step
                    .dependencies
                    .iter()
                    .all(|&d| is_done(&build.steps[d], &results[d]));
                if !started[i] && ready {
                    started[i] = true;
                    results[i].status = Status::Working;
                    let creation = ahead.remove(&i).unwrap_or_else(|| {
                        create_step(&mut creating, context, i, false, &stop_steps)
                    });
                    let (context, step, token) =
                        (context.clone(), step.clone(), stop_steps.clone());
                    // Inside the build's span, if the caller runs it in one: a panic in a
                    // step's task is logged with the step.
                    let span = info_span!("step", step = i, step_id = step.id.as_deref());
                    let task = running.spawn(
                        async move { (i, run_step(&context, i, &step, creation, token).await) }
                            .instrument(span),
                    );
                    step_of_task.insert(task.id(), i);
                }
            }
            // Every step not started now waits for a dependency that is not done yet.
            for (i, step) in build.steps.iter().enumerate() {
                if ahead.len() >= CREATE_AHEAD {
                    break;
                }
                if !started[i]
                    && !ahead.contains_key(&i)
                    && step
                        .dependencies
                        .iter()
                        .all(|&d| started[d] || ahead.contains_key(&d))
                {
                    let creation = create_step(&mut creating, context, i, true, &stop_steps);
                    ahead.insert(i, creation);
                }
            }
        }
        if running.is_empty() {
            break;
        }
        tokio::select! {
            joined = running.join_next_with_id() => {
                let Some(joined) = joined else { continue };
                let (i, result) = match joined {
                    Ok((_, ended)) => ended,
                    Err(e) => (step_of_task[&e.id()], panicked(e)),
                };
                let slot = &mut results[i];
                *slot = result;
                context.emit(Event::StepFinished { step: i, result: slot.clone() }).await;
                if !is_done(&build.steps[i], slot) && stopped.is_none() {
                    stopped = Some(Stop::StepFailed(i));
                    stop_steps.cancel();
                }
            }
            () = &mut deadline, if stopped.is_none() => {
                stopped = Some(Stop::BuildTimeout);
                stop_steps.cancel();
            }
            () = cancel.cancelled(), if stopped.is_none() => {
                stopped = Some(Stop::Cancelled);
                stop_steps.cancel();
            }
        }
    }
    // The build has stopped (or every step started), so these end promptly.
    while creating.join_next().await.is_some() {}
    conclude(build, results, stopped)
}

/// The build's status from how its steps ended and why it stopped.
fn conclude(build: &ResolvedBuild, mut results: Vec<StepResult>, stopped: Option<Stop>) -> Outcome {
    let (status, failure) = match stopped {
        None => (Status::Success, None),
        Some(Stop::Cancelled) => (
            Status::Cancelled,
            Some("the build was cancelled".to_string()),
        ),
        Some(Stop::BuildTimeout) => {
            // Steps the build's timeout interrupted ended because of it.
            for result in results.iter_mut().filter(|r| r.status == Status::Cancelled) {
                result.status = Status::Timeout;
            }
            let limit = build.timeout;
            (
                Status::Timeout,
                Some(format!(
                    "the build timed out after {limit}s; raise `timeout` in the config"
                )),
            )
        }
        Some(Stop::StepFailed(i)) => {
            let result = &results[i];
            let status = match result.status {
                Status::Timeout => Status::Timeout,
                Status::InternalError => Status::InternalError,
                _ => Status::Failure,
            };
            let why = result.detail.clone().unwrap_or_default();
            (
                status,
                Some(format!(
                    "build step {i} {:?} failed: {why}",
                    build.steps[i].name
                )),
            )
        }
    };
    Outcome::ended(status, results, failure)
}

/// Whether dependants may start: success, or a failure the step tolerates (`allowExitCodes`
/// decides when given, else `allowFailure`).
fn is_done(step: &ResolvedStep, result: &StepResult) -> bool {
    match result.status {
        Status::Success => true,
        Status::Failure | Status::Timeout if !step.allow_exit_codes.is_empty() => result
            .exit_code
            .is_some_and(|code| step.allow_exit_codes.contains(&code)),
        Status::Failure | Status::Timeout => step.allow_failure,
        _ => false,
    }
}

fn panicked(error: tokio::task::JoinError) -> StepResult {
    StepResult {
        status: Status::InternalError,
        detail: Some(format!("the step's task failed: {error}")),
        ..StepResult::queued()
    }
}

/// Runs one step to its end. Never returns early without removing it.
async fn run_step(
    context: &StepContext,
    index: usize,
    step: &ResolvedStep,
    creation: Creation,
    stop: CancellationToken,
) -> StepResult {
    let (backend, build) = (&context.backend, context.build_id.as_str());
    let mut result = StepResult {
        status: Status::Working,
        start_time: Some(SystemTime::now()),
        ..StepResult::queued()
    };
    context.emit(Event::StepStarted { step: index }).await;
    let mut output = None;
    let ended = tokio::select! {
        ended = start_and_wait(context, index, step, creation, &stop, &mut output) => ended,
        () = stop.cancelled() => Err(stopped()),
    };
    if ended.is_err() {
        // Stopping is safe whatever state the step reached.
        let _ = backend.stop_step(build, index, STOP_GRACE).await;
    }
    // The output ends once the step has exited; the bound is for a stop that failed, and
    // counts from the output's last progress.
    if let Some((mut output, progress)) = output {
        let mut seen = progress.load(Ordering::Relaxed);
        while tokio::time::timeout(OUTPUT_DRAIN, &mut output)
            .await
            .is_err()
        {
            let now = progress.load(Ordering::Relaxed);
            if now == seen {
                output.abort();
                break;
            }
            seen = now;
        }
    }
    let ended = match ended {
        Ok((code, digest)) if code != 0 => match backend.missing_command(build, index).await {
            Some(why) => {
                context
                    .emit(Event::Line {
                        step: index,
                        stream: LogStream::Stderr,
                        text: why,
                    })
                    .await;
                Ok((NOT_EXECUTABLE, digest))
            }
            None => Ok((code, digest)),
        },
        ended => ended,
    };
    let _ = backend.remove_step(build, index).await;
    match ended {
        Ok((code, digest)) => {
            result.exit_code = Some(code);
            result.image_digest = digest;
            if code == 0 {
                result.status = Status::Success;
            } else {
                result.status = Status::Failure;
                result.detail = Some(format!("step exited with non-zero status: {code}"));
            }
        }
        Err(ended) => {
            result.status = ended.status();
            result.detail = Some(ended.into_detail());
        }
    }
    result.end_time = Some(SystemTime::now());
    result
}

/// The image a step was created from (`None`: not created ahead, because its image is not at
/// hand yet), or why the step failed.
type Creation = oneshot::Receiver<Result<Option<StepImage>, Ended>>;

fn stopped() -> Ended {
    Ended::Cancelled("stopped because the build stopped".to_string())
}

/// The exit code of a step whose command cannot run, as a shell and `docker run` give it.
const NOT_EXECUTABLE: i64 = 127;

/// How a runtime error ends a step: a missing image or a command that cannot run is the
/// config's failure, the rest ours.
fn step_error(e: RuntimeError) -> Ended {
    match e {
        RuntimeError::NotExecutable { detail } => Ended::Failure(detail),
        RuntimeError::ImageNotFound { .. } => Ended::Failure(format!(
            "{e}; to run a local image instead, map the name with an image alias \
                 (--aliases FILE or BUILDER_ALIASES, over builders/aliases.yaml)"
        )),
        e => Ended::InternalError(e.to_string()),
    }
}

/// Spawns, into `creating`, the creation of step `index` (see [`create`]).
fn create_step(
    creating: &mut JoinSet<()>,
    context: &Arc<StepContext>,
    index: usize,
    ahead: bool,
    stop: &CancellationToken,
) -> Creation {
    let (sender, creation) = oneshot::channel();
    let (context, stop) = (context.clone(), stop.clone());
    creating.spawn(async move {
        let _ = sender.send(create(&context, index, ahead, &stop).await);
    });
    creation
}

/// The creation half of a step: its image (fetched if need be), then the step itself. Ahead of
/// the step's turn, only an image already at hand is used: an earlier step may be about to
/// build it (`docker build -t app` then `name: app`), and must not be pre-empted by a pull.
async fn create(
    context: &StepContext,
    index: usize,
    ahead: bool,
    stop: &CancellationToken,
) -> Result<Option<StepImage>, Ended> {
    let (backend, build) = (&context.backend, context.build_id.as_str());
    let found = if ahead {
        backend.step_image(build, index, false).await
    } else {
        // A pull may take long and is safe to abandon. The creation is not: one dropped in
        // flight may still create the step, unseen by its removal.
        tokio::select! {
            found = backend.step_image(build, index, true) => found,
            () = stop.cancelled() => return Err(stopped()),
        }
    };
    let Some(image) = found.map_err(step_error)? else {
        return Ok(None);
    };
    backend
        .create_step(build, index, &image, ahead)
        .await
        .map_err(step_error)?;
    Ok(Some(image))
}

/// The step as created ahead, if it is still made from the image the step's name now stands
/// for; otherwise (it was not created, or an earlier step rebuilt the image) created anew.
async fn created_for_start(
    context: &StepContext,
    index: usize,
    creation: Creation,
    stop: &CancellationToken,
) -> Result<StepImage, Ended> {
    let lost = || Ended::InternalError("the task creating the step failed".to_string());
    let (backend, build) = (&context.backend, context.build_id.as_str());
    if let Some(created) = creation.await.unwrap_or_else(|_| Err(lost()))? {
        let current = backend
            .step_image(build, index, false)
            .await
            .map_err(step_error)?;
        if current.as_ref() == Some(&created) {
            return Ok(created);
        }
        backend
            .remove_step(build, index)
            .await
            .map_err(step_error)?;
    }
    create(context, index, false, stop).await?.ok_or_else(lost)
}

/// Waits for the step to be created, starts it, starts streaming its output (into `output`,
/// which the caller awaits), and waits for its exit code within the step's timeout. Returns
/// the exit code and the builder image's digest.
async fn start_and_wait(
    context: &StepContext,
    index: usize,
    step: &ResolvedStep,
    creation: Creation,
    stop: &CancellationToken,
    output: &mut Option<Output>,
) -> Result<(i64, Option<String>), Ended> {
    let (backend, build) = (&context.backend, context.build_id.as_str());
    let created = created_for_start(context, index, creation, stop).await?;
    if let Some(warning) = step
        .image_warning
        .as_ref()
        .filter(|_| created.name != step.name)
    {
        context
            .emit(Event::Line {
                step: index,
                stream: LogStream::Stderr,
                text: format!("[builder] warning: {warning}"),
            })
            .await;
    }
    match backend.start_step(build, index).await {
        // As `docker run` makes it: the step's failure, exit code 127.
        Err(RuntimeError::NotExecutable { detail }) => {
            context
                .emit(Event::Line {
                    step: index,
                    stream: LogStream::Stderr,
                    text: detail,
                })
                .await;
            return Ok((NOT_EXECUTABLE, created.digest));
        }
        started => started.map_err(step_error)?,
    }
    // Forwarded while the step runs, so its lines are seen live, even if it is stopped.
    let progress = Arc::new(AtomicUsize::new(0));
    let forwarding = tokio::spawn(forward_output(context, index, progress.clone()));
    *output = Some((forwarding, progress));
    let waited = match step.timeout {
        Some(limit) => tokio::time::timeout(
            Duration::from_secs_f64(limit),
            backend.wait_step(build, index),
        )
        .await
        .map_err(|_| {
            Ended::Timeout(format!(
                "step timed out after {limit}s; raise the step's `timeout`"
            ))
        }),
        None => Ok(backend.wait_step(build, index).await),
    };
    let code = waited?.map_err(step_error)?;
    Ok((code, created.digest))
}

/// What each step that ran wrote to `$BUILDER_OUTPUT/output`, its first [`STEP_OUTPUT_LIMIT`]
/// bytes (Cloud Build's `results.buildStepOutputs`), read once the steps have ended so that
/// nothing is read between two steps. A failed read is said beside the build's outcome.
async fn read_step_outputs(context: &StepContext, outcome: &mut Outcome) {
    if outcome.steps.iter().all(|step| step.exit_code.is_none()) {
        return;
    }
    match context
        .backend
        .step_outputs(&context.build_id, STEP_OUTPUT_LIMIT)
        .await
    {
        Ok(outputs) => {
            for (step, output) in outcome.steps.iter_mut().zip(outputs) {
                step.output = output;
            }
        }
        Err(e) => add_failure(
            outcome,
            format!("reading the steps' $BUILDER_OUTPUT failed: {e}"),
        ),
    }
}

/// The task forwarding a step's output, and how many pieces of output it has read.
type Output = (JoinHandle<()>, Arc<AtomicUsize>);

/// How many bytes of events may wait for their recorder: a step that prints faster than its lines
/// are recorded is held up (the engine stops reading its output) rather than filling memory. In
/// bytes, not events: 256 lines of 256 KiB are 64 MiB, 256 lines of `seq` 2 KiB. An event costs
/// its text and its own size ([`cost`]), so a flood of empty lines is bounded too.
pub const EVENTS_BYTES: usize = 1024 * 1024;

/// The executor's side of its events' way to the recorder, bounded by [`EVENTS_BYTES`].
#[derive(Clone)]
pub struct Events {
    sender: UnboundedSender<Event>,
    /// The bytes events may still take: taken by the sender, given back once the recorder has
    /// the events (no permit travels with an event).
    room: Arc<Semaphore>,
}

/// The recorder's side: the events taken give their bytes back to the executor.
pub struct Received {
    receiver: UnboundedReceiver<Event>,
    room: Arc<Semaphore>,
    /// The bytes of the events taken not given back yet: given back by the eighth of the room,
    /// and all before the recorder waits, so that a burst of short lines is not a semaphore
    /// release (a lock) each.
    owed: usize,
}

/// A channel for one build's events, bounded by [`EVENTS_BYTES`].
pub fn events() -> (Events, Received) {
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    let room = Arc::new(Semaphore::new(EVENTS_BYTES));
    let events = Events {
        sender,
        room: room.clone(),
    };
    let received = Received {
        receiver,
        room,
        owed: 0,
    };
    (events, received)
}

/// What an event takes of the room: its text and itself, at most all of it (a line longer than
/// the room goes alone).
fn cost(event: &Event) -> usize {
    let text = match event {
        Event::Line { text, .. } => text.len(),
        _ => 0,
    };
    (text + std::mem::size_of::<Event>()).min(EVENTS_BYTES)
}

impl Events {
    /// Sends `events` in order, each once there is room for it: as many at once as the room
    /// takes, so that many short lines cost one wait. Stops quietly once the recorder is gone (a
    /// build runs to its end even when nobody listens any more).
    async fn send(&self, events: Vec<Event>) {
        let mut events = events.into_iter();
        loop {
            let (mut count, mut bytes) = (0, 0);
            for event in events.as_slice() {
                let more = cost(event);
                if count > 0 && bytes + more > EVENTS_BYTES {
                    break;
                }
                (count, bytes) = (count + 1, bytes + more);
            }
            if count == 0 {
                return;
            }
            // At most EVENTS_BYTES, which fits a u32.
            let Ok(permit) = self.room.acquire_many(bytes as u32).await else {
                return;
            };
            permit.forget();
            for event in events.by_ref().take(count) {
                if self.sender.send(event).is_err() {
                    return;
                }
            }
        }
    }
}

impl Received {
    fn taken(&mut self, event: Event) -> Event {
        self.owed += cost(&event);
        if self.owed >= EVENTS_BYTES / 8 {
            self.give_back();
        }
        event
    }

    fn give_back(&mut self) {
        self.room.add_permits(std::mem::take(&mut self.owed));
    }

    /// The next event, waiting for it; `None` once the build's executor is done.
    pub async fn recv(&mut self) -> Option<Event> {
        self.give_back();
        let event = self.receiver.recv().await?;
        Some(self.taken(event))
    }

    /// The next event if one waits.
    pub fn try_recv(&mut self) -> Result<Event, TryRecvError> {
        match self.receiver.try_recv() {
            Ok(event) => Ok(self.taken(event)),
            Err(e) => {
                self.give_back();
                Err(e)
            }
        }
    }
}

/// Streams a started step's output as masked lines, counting the pieces read in `progress`; the
/// future ends with the output. Once the build's log limit is reached, the output is still read
/// to its end (the step is never held up by a full log) but no longer passed on.
fn forward_output(
    context: &StepContext,
    step: usize,
    progress: Arc<AtomicUsize>,
) -> impl Future<Output = ()> + use<> {
    let mut chunks = context.backend.step_logs(&context.build_id, step);
    let events = context.events.clone();
    let masker = context.masker.clone();
    let log_limit = context.log_limit.clone();
    async move {
        let mut assemblers: BTreeMap<LogStream, LineAssembler> = BTreeMap::new();
        let limit = || log_limit.lock().unwrap_or_else(PoisonError::into_inner);
        // The lines the log keeps, as events.
        let kept = |stream: LogStream, lines: Vec<String>| -> Vec<Event> {
            let mut limit = limit();
            let mut kept = Vec::with_capacity(lines.len());
            for text in lines {
                let (stream, text) = match limit.admit(&text) {
                    Admit::Keep => (stream, text),
                    Admit::Cut(notice) => (LogStream::Stderr, notice),
                    Admit::Drop => break,
                };
                kept.push(Event::Line { step, stream, text });
            }
            kept
        };
        let send = async |lines: Vec<Event>| events.send(lines).await;
        while let Some(chunk) = chunks.next().await {
            progress.fetch_add(1, Ordering::Relaxed);
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    let text = format!("[builder] reading the step's output failed: {e}");
                    let stream = LogStream::Stderr;
                    send(vec![Event::Line { step, stream, text }]).await;
                    break;
                }
            };
            // Past the limit, the output is only drained.
            if limit().reached() {
                continue;
            }
            let assembler = (assemblers.entry(chunk.stream))
                .or_insert_with(|| LineAssembler::new(masker.clone()));
            send(kept(chunk.stream, assembler.push(&chunk.bytes))).await;
        }
        for (stream, assembler) in assemblers {
            send(kept(stream, assembler.finish())).await;
        }
    }
}

/// How many times a push that the registry refused or dropped is tried, as Cloud Build retries.
const PUSH_ATTEMPTS: u32 = 3;

/// Pushes `images:` once every step succeeded: all must exist before any is pushed. An image a
/// registry mirror sends elsewhere is tagged with the mirror's name and pushed there, recorded
/// under its written name. An error carries the build's status: FAILURE for the config's images
/// and registries, INTERNAL_ERROR for our engine.
async fn push_images(
    context: &StepContext,
    build: &ResolvedBuild,
) -> Result<Vec<PushedImage>, Ended> {
    let (backend, id) = (&context.backend, context.build_id.as_str());
    let ours = |e: RuntimeError| Ended::InternalError(e.to_string());
    let mut missing = Vec::new();
    for image in &build.images {
        if !backend.image_exists(id, image).await.map_err(ours)? {
            missing.push(image.clone());
        }
    }
    if !missing.is_empty() {
        return Err(Ended::Failure(format!(
            "failed to find one or more images after execution of build steps: {missing:?}"
        )));
    }
    let mut pushed = Vec::new();
    for image in &build.images {
        let target = build.push_to.get(image).unwrap_or(image);
        context
            .emit(Event::Pushing {
                image: target.clone(),
            })
            .await;
        let digest = push_image(context, image, target).await?;
        let pushed_to = (target != image).then(|| target.clone());
        // As on Cloud Build, a name without a tag is recorded both as written and as `:latest`.
        let latest = (!image::has_tag_or_digest(image)).then(|| format!("{image}:latest"));
        for name in std::iter::once(image.clone()).chain(latest) {
            let image = PushedImage {
                name,
                digest: digest.clone(),
                pushed_to: pushed_to.clone(),
            };
            context.emit(Event::Pushed(image.clone())).await;
            pushed.push(image);
        }
    }
    Ok(pushed)
}

/// Pushes `image` as `target` with its registry's credentials, retrying what the registry
/// refused or dropped; returns its digest.
async fn push_image(context: &StepContext, image: &str, target: &str) -> Result<String, Ended> {
    let mut attempt = 1;
    loop {
        let pushed = context
            .backend
            .push_image(&context.build_id, image, target)
            .await;
        match pushed {
            Ok(digest) => return Ok(digest),
            Err(RuntimeError::PushFailed { .. }) if attempt < PUSH_ATTEMPTS => {
                tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
                attempt += 1;
            }
            Err(e @ RuntimeError::PushFailed { .. }) => {
                return Err(Ended::Failure(format!(
                    "{e}; check that the image's registry is running and reachable \
                     (scripts/dev-env.sh starts one on 127.0.0.1:5000)"
                )));
            }
            // The config's registries and their credentials.
            Err(e @ RuntimeError::Credentials(_)) => return Err(Ended::Failure(e.to_string())),
            Err(e) => return Err(Ended::InternalError(e.to_string())),
        }
    }
}

/// Why a step, or the push of a build's results, ended before it succeeded: the status it ends
/// with, and why in a sentence for the record.
#[derive(Debug)]
enum Ended {
    /// The config's doing: an image it names, a command that cannot run, its registries and
    /// their credentials, its templates.
    Failure(String),
    /// builder's or its engine's.
    InternalError(String),
    Timeout(String),
    /// Stopped by a cancel, or because the build stopped.
    Cancelled(String),
}

impl Ended {
    fn status(&self) -> Status {
        match self {
            Ended::Failure(_) => Status::Failure,
            Ended::InternalError(_) => Status::InternalError,
            Ended::Timeout(_) => Status::Timeout,
            Ended::Cancelled(_) => Status::Cancelled,
        }
    }

    fn into_detail(self) -> String {
        match self {
            Ended::Failure(detail)
            | Ended::InternalError(detail)
            | Ended::Timeout(detail)
            | Ended::Cancelled(detail) => detail,
        }
    }
}

/// Registry errors are the config's: its registries, their credentials.
fn failure(error: RegistryError) -> Ended {
    Ended::Failure(error.to_string())
}

/// Pushes `templates:` once the images are pushed: the files of `/workspace` that each entry's
/// globs match, each under the version its name carries. The tags move to the highest version.
async fn push_templates(context: &StepContext, run: &Run) -> Result<Vec<PushedTemplate>, Ended> {
    let targets = &run.build.templates;
    if targets.is_empty() {
        return Ok(Vec::new());
    }
    let found = workspace_files(context, run).await?;
    let values = &run.build.substitutions;
    let provenance = Provenance {
        created: rfc3339::format(std::time::SystemTime::now()),
        revision: values.get("COMMIT_SHA").filter(|v| !v.is_empty()).cloned(),
        source: values
            .get("REPO_FULL_NAME")
            .filter(|v| !v.is_empty())
            .map(|name| format!("https://github.com/{name}")),
        build: Some(run.build_id.clone()),
    };
    let mut pushed = Vec::new();
    for (i, (target, files)) in targets.iter().zip(found).enumerate() {
        if files.is_empty() {
            return Err(Ended::Failure(format!(
                "templates[{i}].paths: no file of /workspace matches {:?}",
                target.paths
            )));
        }
        let failed = |e: String| Ended::Failure(format!("templates[{i}]: {e}"));
        let regex = templates::version_regex(&target.version_regex).map_err(failed)?;
        let versions = files
            .iter()
            .map(|f| templates::version_of(&f.file, &regex))
            .collect::<Result<Vec<_>, _>>()
            .map_err(failed)?;
        let newest = versions
            .iter()
            .max_by(|a, b| templates::compare_versions(a, b))
            .cloned();
        for (file, version) in files.into_iter().zip(versions) {
            let tags = if Some(&version) == newest.as_ref() {
                target.tags.as_slice()
            } else {
                &[]
            };
            let upload = TemplateUpload {
                file: &file.file,
                content: file.content.into(),
                repository: &target.repository,
                version: &version,
                tags,
                annotations: &target.annotations,
                allow_version_overwrite: target.allow_version_overwrite,
                provenance: &provenance,
            };
            context
                .emit(Event::PushingTemplate {
                    file: file.file.clone(),
                    reference: format!("{}:{version}", target.repository),
                })
                .await;
            let template = context
                .registries
                .push_template(&upload)
                .await
                .map_err(failure)?;
            context.emit(Event::PushedTemplate(template.clone())).await;
            pushed.push(template);
        }
    }
    Ok(pushed)
}

/// The files each template target matches, read from the backend's workspace.
async fn workspace_files(context: &StepContext, run: &Run) -> Result<Vec<Vec<Found>>, Ended> {
    let ours = |e: RuntimeError| Ended::InternalError(format!("reading /workspace: {e}"));
    let archive = context
        .backend
        .read_workspace(&context.build_id)
        .await
        .map_err(ours)?
        .map_err(io::Error::other);
    let archive = SyncIoBridge::new(StreamReader::new(archive));
    let targets = run.build.templates.clone();
    let collected =
        tokio::task::spawn_blocking(move || templates::collect(archive, &targets)).await;
    match collected {
        Ok(Ok(found)) => Ok(found),
        Ok(Err(e)) => Err(Ended::Failure(format!("templates: {e}"))),
        Err(e) => Err(Ended::InternalError(format!("reading /workspace: {e}"))),
    }
}

#[cfg(test)]
mod protocol;

#[cfg(test)]
mod tests {
    use super::*;

    fn line(bytes: usize) -> Event {
        Event::Line {
            step: 0,
            stream: LogStream::Stdout,
            text: "x".repeat(bytes),
        }
    }

    /// Events wait for their recorder by bytes, not by count: lines of 256 KiB hold the step up
    /// once about a MiB of them waits, and each line taken makes room for the next.
    #[tokio::test]
    async fn events_waiting_are_bounded_by_bytes() {
        let (events, mut received) = events();
        let sending = tokio::spawn(async move {
            events
                .send((0..16).map(|_| line(256 * 1024)).collect())
                .await;
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let waiting = received.receiver.len();
        assert_eq!(
            waiting,
            EVENTS_BYTES / cost(&line(256 * 1024)),
            "lines waiting"
        );
        assert!(!sending.is_finished());
        for _ in 0..16 {
            received.recv().await.expect("every line comes");
        }
        sending.await.unwrap();
        // Short lines: many at once, bounded all the same.
        let (events, received) = self::events();
        let sending = tokio::spawn(async move {
            events.send((0..100_000).map(|_| line(8)).collect()).await;
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let waiting = received.receiver.len();
        assert_eq!(waiting, EVENTS_BYTES / cost(&line(8)), "lines waiting");
        assert!(!sending.is_finished());
    }

    /// A line longer than the whole room still goes, alone.
    #[tokio::test]
    async fn a_line_longer_than_the_room_goes_alone() {
        let (events, mut received) = events();
        let sending = tokio::spawn(async move {
            events
                .send(vec![line(8), line(3 * EVENTS_BYTES), line(8)])
                .await;
        });
        for expected in [8, 3 * EVENTS_BYTES, 8] {
            match received.recv().await {
                Some(Event::Line { text, .. }) => assert_eq!(text.len(), expected),
                other => panic!("{other:?}"),
            }
        }
        sending.await.unwrap();
    }
}
