//! Runs a [`ResolvedBuild`] as Cloud Build does (spec §3, §5–7): each step is a container over
//! one shared `/workspace`, started as soon as the steps it waits for are done, so independent
//! steps run at once (and created and started while those run, held at a [`gate`] until then);
//! then the `images:` are pushed and their digests recorded.
//!
//! A failing step, a timeout or a cancel is an outcome, not an error: it becomes the build's
//! status. Whatever happens, every container, volume and network of the build is removed at the
//! end (they all carry the build's label, so one sweep finds them).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::{StreamExt, TryStreamExt};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, sleep_until};
use tokio_util::io::{StreamReader, SyncIoBridge};
use tokio_util::sync::CancellationToken;

use crate::build::{Outcome, PushedImage, Status, StepResult, rfc3339};
use crate::logs::{LineAssembler, Masker};
use crate::plan::{BUILDER_OUTPUT, HOME, ResolvedBuild, ResolvedStep, WORKSPACE};
use crate::registry::{Registries, RegistryError, TemplateUpload};
use crate::runtime::{
    ContainerRuntime, ContainerSpec, ImageInfo, Labels, LogStream, Mount, MountSource,
    RuntimeError, Stdin,
};
use crate::templates::{self, Found, Provenance, PushedTemplate};
use crate::{gate, image};

/// Label carried by every resource of a build, with the build id as value.
pub const BUILD_LABEL: &str = "builder.build";
const STEP_LABEL: &str = "builder.step";
/// How long a stopped step may take to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// How long a step's output may take to end once its container has stopped.
const OUTPUT_DRAIN: Duration = Duration::from_secs(30);
/// The network Cloud Build steps can name in nested `docker build --network=cloudbuild`.
const SHARED_NETWORK: &str = "cloudbuild";
const DOCKER_SOCKET: &str = "/var/run/docker.sock";
/// How many steps may have their container created ahead of their start at once: enough to hide
/// creation behind the running steps, few enough that a long build does not create all its
/// containers up front.
const CREATE_AHEAD: usize = 2;
/// The command of the containers builder creates only to reach a build's volumes through the
/// engine's archive API. They are never started, but the engine refuses to create a container
/// without a command, and many images (`docker import`, `FROM scratch`, distroless) have none.
const NEVER_STARTED: &str = "/builder/never-started";
/// How much of a step's `$BUILDER_OUTPUT/output` its results keep, as on Cloud Build.
pub const STEP_OUTPUT_LIMIT: usize = 50 * 1024;

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
    runtime: Arc<dyn ContainerRuntime>,
    run: Run,
    events: UnboundedSender<Event>,
    cancel: CancellationToken,
) -> Outcome {
    let masker = match Masker::new(run.secrets.values().map(String::as_str)) {
        Ok(masker) => masker,
        Err(detail) => return internal_error(&run, detail),
    };
    let context = Arc::new(StepContext {
        runtime: runtime.clone(),
        build_id: run.build_id.clone(),
        events,
        masker,
        secrets: run.secrets.clone(),
        registries: run.registries.clone(),
    });
    // The build's timeout counts from here (Cloud Build counts from startTime): preparing,
    // steps and pushing all fall within it, and so does a cancel.
    let deadline = Instant::now() + Duration::from_secs_f64(run.build.timeout);
    let mut outcome = tokio::select! {
        prepared = prepare(&context, &run) => match prepared {
            Ok(()) => run_steps(&context, &run.build, deadline, cancel.clone()).await,
            Err(detail) => internal_error(&run, detail),
        },
        () = cancel.cancelled() => conclude(&run.build, queued(&run.build), Some(Stop::Cancelled)),
        () = sleep_until(deadline) => conclude(&run.build, queued(&run.build), Some(Stop::BuildTimeout)),
    };
    if outcome.status == Status::Success {
        let stopped = |status: Status, why: &str| (status, format!("{why} while pushing results"));
        let push = async {
            if !run.build.images.is_empty() || !run.build.templates.is_empty() {
                context.emit(Event::PushStarted);
            }
            outcome.images = push_images(&context, &run.build).await?;
            outcome.templates = push_templates(&context, &run).await?;
            Ok(())
        };
        let pushed = tokio::select! {
            pushed = push => pushed,
            () = cancel.cancelled() => Err(stopped(Status::Cancelled, "the build was cancelled")),
            () = sleep_until(deadline) => Err(stopped(Status::Timeout, "the build timed out")),
        };
        if let Err((status, detail)) = pushed {
            outcome.status = status;
            outcome.failure = Some(detail);
        }
    }
    // A failed cleanup is reported beside the build's own outcome, never instead of it.
    if let Err(e) = runtime.sweep(BUILD_LABEL, &run.build_id).await {
        let cleanup = format!("cleaning up the build's containers and volumes failed: {e}");
        outcome.failure = Some(match outcome.failure.take() {
            Some(failure) => format!("{failure}; then {cleanup}"),
            None => cleanup,
        });
    }
    outcome
}

fn internal_error(run: &Run, detail: String) -> Outcome {
    Outcome::ended(Status::InternalError, queued(&run.build), Some(detail))
}

/// Every step of the build, not started.
fn queued(build: &ResolvedBuild) -> Vec<StepResult> {
    build.steps.iter().map(|_| StepResult::queued()).collect()
}

/// Everything a step task needs, shared by all of a build's steps.
struct StepContext {
    runtime: Arc<dyn ContainerRuntime>,
    build_id: String,
    events: UnboundedSender<Event>,
    masker: Masker,
    secrets: BTreeMap<String, String>,
    registries: Registries,
}

impl StepContext {
    fn name(&self, what: &str) -> String {
        format!("builder-{}-{what}", self.build_id)
    }

    /// The container of step `index`, created and started by different tasks.
    fn step_name(&self, index: usize) -> String {
        self.name(&format!("step-{index}"))
    }

    fn labels(&self, step: Option<usize>) -> Labels {
        let mut labels = Labels::from([(BUILD_LABEL.to_string(), self.build_id.clone())]);
        if let Some(step) = step {
            labels.insert(STEP_LABEL.to_string(), step.to_string());
        }
        labels
    }

    /// The image a step runs, if it is local. As on Cloud Build, an image the engine has under
    /// the step's written name runs as is (an earlier step may have built it); only then do the
    /// aliases and mirrors count.
    async fn local_step_image(
        &self,
        step: &ResolvedStep,
    ) -> Result<Option<(String, ImageInfo)>, RuntimeError> {
        for image in [&step.name, &step.image] {
            if let Some(info) = self.runtime.local_image(image).await? {
                return Ok(Some((image.clone(), info)));
            }
        }
        Ok(None)
    }

    /// The image a step runs, made local: pulled through its alias or mirror, with its
    /// registry's credentials, when the engine has neither it nor the written name.
    async fn step_image(&self, step: &ResolvedStep) -> Result<(String, ImageInfo), RuntimeError> {
        if let Some(found) = self.local_step_image(step).await? {
            return Ok(found);
        }
        let auth = self
            .registries
            .engine_auth(&step.image)
            .await
            .map_err(|e| RuntimeError::Invalid(e.to_string()))?;
        let info = self
            .runtime
            .ensure_image(&step.image, auth.as_ref())
            .await?;
        Ok((step.image.clone(), info))
    }

    /// A container made only to reach the build's volumes through, never started.
    fn volume_access(&self, what: &str, image: String, mounts: Vec<Mount>) -> ContainerSpec {
        ContainerSpec {
            name: self.name(what),
            image,
            entrypoint: Some(vec![NEVER_STARTED.to_string()]),
            mounts,
            labels: self.labels(None),
            ..ContainerSpec::default()
        }
    }

    fn emit(&self, event: Event) {
        // A build runs to its end even when nobody listens any more.
        let _ = self.events.send(event);
    }
}

/// Creates the build's network and volumes, makes every volume writable by any user and fills
/// `/workspace`. The networks are created meanwhile: nothing before the first step needs them.
async fn prepare(context: &StepContext, run: &Run) -> Result<(), String> {
    let networks = async {
        let labels = context.labels(None);
        let shared = Labels::from([("builder.shared".to_string(), SHARED_NETWORK.to_string())]);
        context
            .runtime
            .create_network(SHARED_NETWORK, &shared)
            .await?;
        context
            .runtime
            .create_network(&context.name("network"), &labels)
            .await
    };
    // Both run to their end even when one fails: a container request dropped in flight could
    // still create its container after the sweep has looked.
    let (networks, volumes) = tokio::join!(networks, prepare_volumes(context, run));
    networks.map_err(|e| format!("preparing the build: {e}"))?;
    volumes
}

/// Creates the build's volumes, makes every one writable by any user and fills `/workspace`.
async fn prepare_volumes(context: &StepContext, run: &Run) -> Result<(), String> {
    let runtime = &context.runtime;
    let labels = context.labels(None);
    // Each build volume, and where the seed container mounts it.
    let user_volumes = run.build.steps.iter().flat_map(|s| &s.volumes);
    let gate = gate::available().then(|| ("gate".to_string(), gate::DIR.to_string()));
    let outputs =
        (0..run.build.steps.len()).map(|i| (outputs_volume(i), format!("{BUILDER_OUTPUT}/{i}")));
    let volumes: BTreeMap<String, String> = [
        ("workspace".to_string(), WORKSPACE.to_string()),
        ("home".to_string(), HOME.to_string()),
    ]
    .into_iter()
    .chain(gate)
    .chain(outputs)
    .chain(user_volumes.map(|v| (user_volume(&v.name), format!("/builder/volumes/{}", v.name))))
    .collect();
    let created = futures_util::future::join_all(volumes.keys().map(|volume| {
        let name = context.name(volume);
        let labels = &labels;
        async move { runtime.create_volume(&name, labels).await }
    }))
    .await;
    created
        .into_iter()
        .collect::<Result<(), _>>()
        .map_err(|e| format!("preparing the build: {e}"))?;
    let archive = seed_archive(run.workspace.as_deref(), volumes.values())
        .map_err(|e| format!("packing the workspace: {e}"))?;
    // The engine copies files into a volume only through a container that mounts it; it is
    // created, never started, so any local image will do: the first step image there is. With
    // none, no step can run either, and the steps report the missing images.
    let Some(image) = seed_image(context, &run.build)
        .await
        .map_err(|e| format!("filling /workspace: {e}"))?
    else {
        return Ok(());
    };
    let mounts = volumes
        .iter()
        .map(|(volume, path)| volume_mount(&context.name(volume), path))
        .collect();
    let seed = context.volume_access("seed", image, mounts);
    let seeding = async {
        runtime.create_container(&seed).await?;
        runtime.upload(&seed.name, "/", archive).await?;
        runtime.remove_container(&seed.name).await
    };
    seeding
        .await
        .map_err(|e| format!("filling /workspace: {e}"))
}

/// The first step image that is local or can be pulled, for a container that only reaches the
/// build's volumes; a missing one is the step's failure to report, not the build's
/// preparation's.
async fn seed_image(
    context: &StepContext,
    build: &ResolvedBuild,
) -> Result<Option<String>, RuntimeError> {
    for step in &build.steps {
        match context.step_image(step).await {
            Ok((image, _)) => return Ok(Some(image)),
            Err(RuntimeError::ImageNotFound { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// A tar for `/` of the seed container: the directory's contents under `workspace/`, the gate's
/// shell (when the gate is available, its volume is among the mount points), then each
/// volume's mount point as a directory entry with mode 0777, so that builders running as any user
/// can write to `/workspace`, `HOME` and the named volumes (the engine applies a named directory
/// entry's mode to the volume's root). Last, because the contents start with an entry for the
/// directory itself, with its own mode (0700 for a temporary directory). Symlinks are stored,
/// not followed.
fn seed_archive<'a>(
    dir: Option<&Path>,
    mount_points: impl IntoIterator<Item = &'a String>,
) -> io::Result<Vec<u8>> {
    let mut archive = tar::Builder::new(Vec::new());
    archive.follow_symlinks(false);
    if let Some(dir) = dir {
        archive.append_dir_all("workspace", dir)?;
    }
    if gate::available() {
        gate::append_shell(&mut archive)?;
    }
    for path in mount_points {
        append_dir(&mut archive, path)?;
    }
    archive.into_inner()
}

/// Appends the absolute directory `path` as an entry with mode 0777.
fn append_dir(archive: &mut tar::Builder<Vec<u8>>, path: &str) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_mode(0o777);
    header.set_size(0);
    let name = format!("{}/", path.trim_matches('/'));
    archive.append_data(&mut header, name, io::empty())
}

/// The suffix of the engine volume that backs a config's named volume.
fn user_volume(name: &str) -> String {
    format!("volume-{name}")
}

/// The suffix of the engine volume that is step `index`'s `$BUILDER_OUTPUT`: a volume rather
/// than a tmpfs, so that what the step wrote can still be read once it has exited.
fn outputs_volume(index: usize) -> String {
    format!("step-{index}-outputs")
}

fn volume_mount(volume: &str, target: &str) -> Mount {
    Mount {
        source: MountSource::Volume(volume.to_string()),
        target: target.to_string(),
        read_only: false,
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
/// A step whose dependencies have all started or been created ahead (up to [`CREATE_AHEAD`] such steps at a
/// time) gets its container created meanwhile, and started, held at the [`gate`], so that it
/// only has to be released once they are done. The containers of steps that then never start are left to the
/// build's final sweep.
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
    // Every creation task, awaited before returning, so that none creates a container after the
    // sweep has looked; and the creations made ahead, by step, until their step starts.
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
                        create_step(&mut creating, context, i, step, false, &stop_steps)
                    });
                    let (context, step, token) =
                        (context.clone(), step.clone(), stop_steps.clone());
                    let task = running.spawn(async move {
                        (i, run_step(&context, i, &step, creation, token).await)
                    });
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
                    let creation = create_step(&mut creating, context, i, step, true, &stop_steps);
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
                context.emit(Event::StepFinished { step: i, result: slot.clone() });
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

/// Runs one step's container to its end. Never returns early without removing the container.
async fn run_step(
    context: &StepContext,
    index: usize,
    step: &ResolvedStep,
    creation: Creation,
    stop: CancellationToken,
) -> StepResult {
    let mut result = StepResult {
        status: Status::Working,
        start_time: Some(SystemTime::now()),
        ..StepResult::queued()
    };
    context.emit(Event::StepStarted { step: index });
    let name = context.step_name(index);
    let mut output = None;
    let ended = tokio::select! {
        ended = start_and_wait(context, index, step, &name, creation, &stop, &mut output) => ended,
        () = stop.cancelled() => Err(stopped()),
    };
    if ended.is_err() {
        // Stopping is safe whatever state the container reached.
        let _ = context.runtime.stop_container(&name, STOP_GRACE).await;
    }
    // The output ends once the container has exited; the bound is for a stop that failed.
    if let Some(mut output) = output
        && tokio::time::timeout(OUTPUT_DRAIN, &mut output)
            .await
            .is_err()
    {
        output.abort();
    }
    if ended.is_ok() {
        result.output = step_output(context, index, &name).await;
    }
    let ended = match ended {
        Ok((code, digest)) if code != 0 => {
            let code = match missing_interpreter(context, step, &name).await {
                Some(why) => {
                    context.emit(Event::Line {
                        step: index,
                        stream: LogStream::Stderr,
                        text: why,
                    });
                    NOT_EXECUTABLE
                }
                None => code,
            };
            Ok((code, digest))
        }
        ended => ended,
    };
    let _ = context.runtime.remove_container(&name).await;
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
        Err((status, detail)) => {
            result.status = status;
            result.detail = Some(detail);
        }
    }
    result.end_time = Some(SystemTime::now());
    result
}

/// A step's container, created (and, if `held`, started at the gate) from an image.
struct Created {
    /// The image's name: the step's written name or its alias (see
    /// [`StepContext::local_step_image`]).
    image: String,
    image_id: String,
    digest: Option<String>,
    held: Option<Stdin>,
}

/// How a step's container was created (`None`: not created ahead, because its image is not
/// local yet), or why the step failed.
type Creation = oneshot::Receiver<Result<Option<Created>, (Status, String)>>;

fn stopped() -> (Status, String) {
    (
        Status::Cancelled,
        "stopped because the build stopped".to_string(),
    )
}

/// The exit code of a step whose command cannot run, as a shell and `docker run` give it.
const NOT_EXECUTABLE: i64 = 127;

/// How a runtime error ends a step: a missing image or a command that cannot run is the
/// config's failure, the rest ours.
fn step_error(e: RuntimeError) -> (Status, String) {
    match e {
        RuntimeError::NotExecutable { detail } => (Status::Failure, detail),
        RuntimeError::ImageNotFound { .. } => (
            Status::Failure,
            format!(
                "{e}; to run a local image instead, map the name with an image alias \
                 (--aliases FILE or BUILDER_ALIASES, over builders/aliases.yaml)"
            ),
        ),
        e => (Status::InternalError, e.to_string()),
    }
}

/// Spawns, into `creating`, the creation of step `index`'s container (see [`create`]).
fn create_step(
    creating: &mut JoinSet<()>,
    context: &Arc<StepContext>,
    index: usize,
    step: &ResolvedStep,
    ahead: bool,
    stop: &CancellationToken,
) -> Creation {
    let (sender, creation) = oneshot::channel();
    let (context, step, stop) = (context.clone(), step.clone(), stop.clone());
    creating.spawn(async move {
        let _ = sender.send(create(&context, index, &step, ahead, &stop).await);
    });
    creation
}

/// The creation half of a step: its image (pulled if need be), its container and its script.
/// Ahead of the step's turn, only an image that is already local is used: an earlier step may
/// be about to build it (`docker build -t app` then `name: app`), and must not be pre-empted by
/// a pull.
async fn create(
    context: &StepContext,
    index: usize,
    step: &ResolvedStep,
    ahead: bool,
    stop: &CancellationToken,
) -> Result<Option<Created>, (Status, String)> {
    let runtime = &context.runtime;
    let (image_name, image) = if ahead {
        match context.local_step_image(step).await.map_err(step_error)? {
            Some(found) => found,
            None => return Ok(None),
        }
    } else {
        // A pull may take long and is safe to abandon. The container requests are not: one
        // dropped in flight may still create the container, unseen by the step's removal.
        tokio::select! {
            found = context.step_image(step) => found.map_err(step_error)?,
            () = stop.cancelled() => return Err(stopped()),
        }
    };
    let name = context.step_name(index);
    let mut spec = container_spec(context, index, step, &name, &image_name);
    // Ahead of its turn, the container is started too, held at the gate until then.
    let command = gate::command(spec.entrypoint.as_deref(), &spec.args, &image);
    let hold = ahead && gate::available() && !command.is_empty();
    if hold {
        spec.entrypoint = Some(gate::held(command));
        spec.args = Vec::new();
        spec.stdin_open = true;
        spec.mounts.push(Mount {
            read_only: true,
            ..volume_mount(&context.name("gate"), gate::DIR)
        });
    }
    runtime.create_container(&spec).await.map_err(step_error)?;
    if let Some(script) = &step.script {
        let archive =
            script_file(index, script).map_err(|e| (Status::InternalError, e.to_string()))?;
        runtime
            .upload(&name, "/", archive)
            .await
            .map_err(step_error)?;
    }
    let held = if hold {
        let stdin = runtime.attach_stdin(&name).await.map_err(step_error)?;
        runtime.start_container(&name).await.map_err(step_error)?;
        Some(stdin)
    } else {
        None
    };
    Ok(Some(Created {
        image: image_name,
        image_id: image.id,
        digest: image.digest,
        held,
    }))
}

/// The container made ahead for a step, if it is still made from the image the step's name
/// now stands for; otherwise (none was made, or an earlier step rebuilt the image) a new one.
async fn created_for_start(
    context: &StepContext,
    index: usize,
    step: &ResolvedStep,
    creation: Creation,
    stop: &CancellationToken,
) -> Result<Created, (Status, String)> {
    let lost = || {
        (
            Status::InternalError,
            "the task creating the step's container failed".to_string(),
        )
    };
    let runtime = &context.runtime;
    if let Some(created) = creation.await.unwrap_or_else(|_| Err(lost()))? {
        let current = context.local_step_image(step).await.map_err(step_error)?;
        if current
            .is_some_and(|(name, image)| name == created.image && image.id == created.image_id)
        {
            return Ok(created);
        }
        runtime
            .remove_container(&context.step_name(index))
            .await
            .map_err(step_error)?;
    }
    create(context, index, step, false, stop)
        .await?
        .ok_or_else(lost)
}

/// Waits for the step's container to be created, starts it, starts streaming its output (into
/// `output`, which the caller awaits), and waits for its exit code within the step's timeout.
/// Returns the exit code and the builder image's digest.
async fn start_and_wait(
    context: &StepContext,
    index: usize,
    step: &ResolvedStep,
    name: &str,
    creation: Creation,
    stop: &CancellationToken,
    output: &mut Option<JoinHandle<()>>,
) -> Result<(i64, Option<String>), (Status, String)> {
    let runtime = &context.runtime;
    let created = created_for_start(context, index, step, creation, stop).await?;
    if let Some(warning) = step
        .image_warning
        .as_ref()
        .filter(|_| created.image != step.name)
    {
        context.emit(Event::Line {
            step: index,
            stream: LogStream::Stderr,
            text: format!("[builder] warning: {warning}"),
        });
    }
    match created.held {
        Some(stdin) => gate::release(stdin).await.map_err(|e| {
            (
                Status::InternalError,
                format!("releasing the step's container: {e}"),
            )
        })?,
        None => match runtime.start_container(name).await {
            // As a held step's gate does, and `docker run`: the step's failure, exit code 127.
            Err(RuntimeError::NotExecutable { detail }) => {
                context.emit(Event::Line {
                    step: index,
                    stream: LogStream::Stderr,
                    text: detail,
                });
                return Ok((NOT_EXECUTABLE, created.digest));
            }
            started => started.map_err(step_error)?,
        },
    }
    // Forwarded while the step runs, so its lines are seen live, even if it is stopped.
    *output = Some(tokio::spawn(forward_output(context, index, name)));
    let waited = match step.timeout {
        Some(limit) => {
            tokio::time::timeout(Duration::from_secs_f64(limit), runtime.wait_container(name))
                .await
                .map_err(|_| {
                    (
                        Status::Timeout,
                        format!("step timed out after {limit}s; raise the step's `timeout`"),
                    )
                })
        }
        None => Ok(runtime.wait_container(name).await),
    };
    let code = waited?.map_err(step_error)?;
    Ok((code, created.digest))
}

/// What the step wrote to `$BUILDER_OUTPUT/output`, its first [`STEP_OUTPUT_LIMIT`] bytes, read
/// through its exited container (Cloud Build's `results.buildStepOutputs`). `None` when it
/// wrote nothing there; a failed read is said in the step's log.
async fn step_output(context: &StepContext, step: usize, container: &str) -> Option<Vec<u8>> {
    let archive = context
        .runtime
        .download(container, BUILDER_OUTPUT)
        .map_err(io::Error::other);
    let archive = SyncIoBridge::new(StreamReader::new(archive));
    let read = tokio::task::spawn_blocking(move || output_file(archive))
        .await
        .map_err(io::Error::other)
        .and_then(|read| read);
    read.unwrap_or_else(|e| {
        context.emit(Event::Line {
            step,
            stream: LogStream::Stderr,
            text: format!("[builder] reading the step's $BUILDER_OUTPUT/output failed: {e}"),
        });
        None
    })
}

/// The first [`STEP_OUTPUT_LIMIT`] bytes of `outputs/output` in an archive of
/// `$BUILDER_OUTPUT`; the rest of the archive is not read.
fn output_file(archive: impl io::Read) -> io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let mut archive = tar::Archive::new(archive);
    for entry in archive.entries()? {
        let entry = entry?;
        if entry.header().entry_type().is_file() && *entry.path()? == *Path::new("outputs/output") {
            let mut output = Vec::new();
            entry
                .take(STEP_OUTPUT_LIMIT as u64)
                .read_to_end(&mut output)?;
            return Ok(Some(output));
        }
    }
    Ok(None)
}

/// Why a failed script step could not start, when the interpreter its `#!` line names is not in
/// its image: the engine says only "no such file or directory", of the script.
async fn missing_interpreter(
    context: &StepContext,
    step: &ResolvedStep,
    container: &str,
) -> Option<String> {
    let interpreter = step.script.as_deref().and_then(interpreter)?;
    match context
        .runtime
        .download(container, interpreter)
        .next()
        .await
    {
        Some(Ok(_)) => None,
        _ => Some(format!(
            "the script's interpreter {interpreter:?} (its #! line) is not in the step's image \
             {:?}",
            step.name
        )),
    }
}

/// The absolute path of the interpreter a script's `#!` line names.
fn interpreter(script: &str) -> Option<&str> {
    let line = script.strip_prefix("#!")?.lines().next()?;
    line.split_whitespace()
        .next()
        .filter(|path| path.starts_with('/'))
}

/// Where a step's `script` is written in its container.
fn script_path(index: usize) -> String {
    format!("/builder/scripts/step-{index}")
}

/// The step's script as a tar for `/` holding one executable file (without a shebang it runs
/// with `/bin/sh`, as on Cloud Build).
fn script_file(index: usize, script: &str) -> io::Result<Vec<u8>> {
    let mut archive = tar::Builder::new(Vec::new());
    let body = if script.starts_with("#!") {
        script.to_string()
    } else {
        format!("#!/bin/sh\n{script}")
    };
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o755);
    header.set_size(body.len() as u64);
    archive.append_data(
        &mut header,
        script_path(index).trim_start_matches('/'),
        body.as_bytes(),
    )?;
    archive.into_inner()
}

fn container_spec(
    context: &StepContext,
    index: usize,
    step: &ResolvedStep,
    name: &str,
    image: &str,
) -> ContainerSpec {
    let mut mounts = vec![
        volume_mount(&context.name("workspace"), WORKSPACE),
        volume_mount(&context.name("home"), HOME),
        Mount {
            source: MountSource::Bind(PathBuf::from(DOCKER_SOCKET)),
            target: DOCKER_SOCKET.to_string(),
            read_only: false,
        },
        // Writable by any user: the seed container gave the volume's root mode 0777.
        volume_mount(&context.name(&outputs_volume(index)), BUILDER_OUTPUT),
    ];
    mounts.extend(
        step.volumes
            .iter()
            .map(|v| volume_mount(&context.name(&user_volume(&v.name)), &v.path)),
    );
    let mut env = step.env.clone();
    env.extend(
        step.secret_env
            .iter()
            .filter_map(|key| Some(format!("{key}={}", context.secrets.get(key)?))),
    );
    let entrypoint = match (&step.script, &step.entrypoint) {
        (Some(_), _) => Some(vec![script_path(index)]),
        (None, Some(entrypoint)) => Some(vec![entrypoint.clone()]),
        (None, None) => None,
    };
    ContainerSpec {
        name: name.to_string(),
        image: image.to_string(),
        entrypoint,
        args: step.args.clone(),
        env,
        working_dir: step.dir.clone(),
        mounts,
        network: Some(context.name("network")),
        labels: context.labels(Some(index)),
        // Cloud Build also runs steps privileged; here the mounted socket is what lets steps use
        // the engine, and privileged containers are refused by engines in user namespaces.
        privileged: false,
        ..ContainerSpec::default()
    }
}

/// Streams a started container's output as masked lines; the future ends with the output.
fn forward_output(
    context: &StepContext,
    step: usize,
    name: &str,
) -> impl Future<Output = ()> + use<> {
    let mut chunks = context.runtime.logs(name);
    let events = context.events.clone();
    let masker = context.masker.clone();
    async move {
        let mut assemblers: BTreeMap<LogStream, LineAssembler> = BTreeMap::new();
        let send = |stream: LogStream, text: String| {
            let _ = events.send(Event::Line {
                step,
                stream,
                text: masker.mask(&text),
            });
        };
        while let Some(chunk) = chunks.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    send(
                        LogStream::Stderr,
                        format!("[builder] reading the step's output failed: {e}"),
                    );
                    break;
                }
            };
            for text in assemblers
                .entry(chunk.stream)
                .or_default()
                .push(&chunk.bytes)
            {
                send(chunk.stream, text);
            }
        }
        for (stream, assembler) in assemblers {
            if let Some(text) = assembler.finish() {
                send(stream, text);
            }
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
) -> Result<Vec<PushedImage>, Failed> {
    let runtime = &context.runtime;
    let ours = |e: RuntimeError| (Status::InternalError, e.to_string());
    let mut missing = Vec::new();
    for image in &build.images {
        if runtime.local_image(image).await.map_err(ours)?.is_none() {
            missing.push(image.clone());
        }
    }
    if !missing.is_empty() {
        return Err((
            Status::Failure,
            format!(
                "failed to find one or more images after execution of build steps: {missing:?}"
            ),
        ));
    }
    let mut pushed = Vec::new();
    for image in &build.images {
        let target = build.push_to.get(image).unwrap_or(image);
        context.emit(Event::Pushing {
            image: target.clone(),
        });
        if target != image {
            runtime.tag_image(image, target).await.map_err(ours)?;
        }
        let digest = push_image(context, target).await?;
        let pushed_to = (target != image).then(|| target.clone());
        // As on Cloud Build, a name without a tag is recorded both as written and as `:latest`.
        let latest = (!image::has_tag_or_digest(image)).then(|| format!("{image}:latest"));
        for name in std::iter::once(image.clone()).chain(latest) {
            let image = PushedImage {
                name,
                digest: digest.clone(),
                pushed_to: pushed_to.clone(),
            };
            context.emit(Event::Pushed(image.clone()));
            pushed.push(image);
        }
    }
    Ok(pushed)
}

/// Pushes one local tag with its registry's credentials, retrying what the registry refused or
/// dropped; returns its digest.
async fn push_image(context: &StepContext, image: &str) -> Result<String, Failed> {
    let auth = context
        .registries
        .engine_auth(image)
        .await
        .map_err(failure)?;
    let mut attempt = 1;
    loop {
        match context.runtime.push_image(image, auth.as_ref()).await {
            Ok(digest) => return Ok(digest),
            Err(RuntimeError::PushFailed { .. }) if attempt < PUSH_ATTEMPTS => {
                tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
                attempt += 1;
            }
            Err(e @ RuntimeError::PushFailed { .. }) => {
                return Err((
                    Status::Failure,
                    format!(
                        "{e}; check that the image's registry is running and reachable \
                         (scripts/dev-env.sh starts one on 127.0.0.1:5000)"
                    ),
                ));
            }
            Err(e) => return Err((Status::InternalError, e.to_string())),
        }
    }
}

/// A failed push: the build's status and why.
type Failed = (Status, String);

/// Registry errors are the config's: its registries, their credentials.
fn failure(error: RegistryError) -> Failed {
    (Status::Failure, error.to_string())
}

/// Pushes `templates:` once the images are pushed: the files of `/workspace` that each entry's
/// globs match, each under the version its name carries. The tags move to the highest version.
async fn push_templates(context: &StepContext, run: &Run) -> Result<Vec<PushedTemplate>, Failed> {
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
    };
    let mut pushed = Vec::new();
    for (i, (target, files)) in targets.iter().zip(found).enumerate() {
        if files.is_empty() {
            return Err((
                Status::Failure,
                format!(
                    "templates[{i}].paths: no file of /workspace matches {:?}",
                    target.paths
                ),
            ));
        }
        let failed = |e: String| (Status::Failure, format!("templates[{i}]: {e}"));
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
            context.emit(Event::PushingTemplate {
                file: file.file.clone(),
                reference: format!("{}:{version}", target.repository),
            });
            let template = context
                .registries
                .push_template(&upload)
                .await
                .map_err(failure)?;
            context.emit(Event::PushedTemplate(template.clone()));
            pushed.push(template);
        }
    }
    Ok(pushed)
}

/// The files each template target matches, read from the workspace volume through a container
/// that mounts it (created, never started).
async fn workspace_files(context: &StepContext, run: &Run) -> Result<Vec<Vec<Found>>, Failed> {
    let runtime = &context.runtime;
    let ours = |e: RuntimeError| (Status::InternalError, format!("reading /workspace: {e}"));
    let image = seed_image(context, &run.build)
        .await
        .map_err(ours)?
        .ok_or_else(|| ours(RuntimeError::Invalid("no step image is local".to_string())))?;
    let mounts = vec![Mount {
        read_only: true,
        ..volume_mount(&context.name("workspace"), WORKSPACE)
    }];
    let reader = context.volume_access("templates", image, mounts);
    runtime.create_container(&reader).await.map_err(ours)?;
    let archive = runtime
        .download(&reader.name, WORKSPACE)
        .map_err(std::io::Error::other);
    let archive = SyncIoBridge::new(StreamReader::new(archive));
    let targets = run.build.templates.clone();
    let collected =
        tokio::task::spawn_blocking(move || templates::collect(archive, &targets)).await;
    runtime.remove_container(&reader.name).await.map_err(ours)?;
    match collected {
        Ok(Ok(found)) => Ok(found),
        Ok(Err(e)) => Err((Status::Failure, format!("templates: {e}"))),
        Err(e) => Err((Status::InternalError, format!("reading /workspace: {e}"))),
    }
}
