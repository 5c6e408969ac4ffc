//! The runtime seam: how the executor runs one build's steps on a backend.
//!
//! [`Backend`] is a step-level trait, after woodpecker's (`SetupWorkflow`, `StartStep`,
//! `WaitStep`, `TailStep`, `DestroyStep`, `DestroyWorkflow`): the executor says *what* runs (a
//! build of steps, each an image with a command) and *when* (the step graph, timeouts, cancels);
//! a backend decides *how* (containers, volumes, networks, how to hold a step started ahead, how
//! to read files back). Its doc comments are the lifecycle contract every backend keeps and the
//! executor relies on; `tests/runtime.rs` checks it against [`DockerBackend`], and the
//! executor's own tests check that the executor keeps its side with a fake backend.
//!
//! The vocabulary ([`BuildSpec`], [`StepSpec`], [`LogChunk`], [`RuntimeError`], …) is plain data,
//! so no engine types leak out of this module.

pub mod docker;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;

use crate::core::alias::Aliases;

pub use docker::DockerBackend;

/// One build, as a backend sets it up: its steps are all known up front, so that the backend
/// can prepare what they share (the workspace, volumes, a network) in one go.
#[derive(Clone)]
pub struct BuildSpec {
    /// Unique among the builds a backend ever sees; every later call names the build by it.
    pub id: String,
    /// A directory whose contents become the workspace; `None` starts it empty.
    pub source: Option<PathBuf>,
    /// Where the workspace is in every step (`/workspace`): shared by all steps, filled from
    /// `source`, readable with [`Backend::read_workspace`].
    pub workspace: String,
    /// Where the home directory is in every step (`/builder/home`), shared by all steps.
    pub home: String,
    /// Where each step finds a directory of its own (`/builder/outputs`), whose `output` file
    /// [`Backend::step_outputs`] reads once the build's steps have ended.
    pub outputs: String,
    /// The steps, addressed by their index in every step call.
    pub steps: Vec<StepSpec>,
    /// Credentials for the registries step images come from and images are pushed to; asked
    /// only when a registry is actually contacted.
    pub credentials: Arc<dyn Credentials>,
    /// What the steps' own pulls, pushes and builds resolve image names with, as the plan
    /// resolved the step images: `docker pull ubuntu` gets the alias, under the name written.
    pub aliases: Aliases,
    /// Whether the steps may reach the machine through the engine (privileged containers, host
    /// paths and namespaces, devices…); an untrusted build is kept to its own objects.
    pub trusted: bool,
}

impl fmt::Debug for BuildSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BuildSpec")
            .field("id", &self.id)
            .field("source", &self.source)
            .field("steps", &self.steps)
            .field("trusted", &self.trusted)
            .finish_non_exhaustive()
    }
}

/// One step: an image and the command to run in it. `Debug` shows the names of its environment
/// variables only: their values include secrets.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct StepSpec {
    /// The image as the config names it: it runs if the backend has an image of that name (an
    /// earlier step may have built it), as on Cloud Build.
    pub name: String,
    /// The image that runs otherwise (the alias or mirror the plan resolved), fetched if need be.
    pub image: String,
    /// Replaces the image's entrypoint (and, as with `docker run --entrypoint`, its default
    /// command). Ignored when there is a `script`.
    pub entrypoint: Option<String>,
    /// A script run as the step's command: an executable file, its `#!` line its interpreter
    /// (`/bin/sh` without one), with `args` after it.
    pub script: Option<String>,
    /// Arguments after the entrypoint. Empty means the image's default command.
    pub args: Vec<String>,
    /// `KEY=value` entries, added to the image's environment (an entry here wins); secrets
    /// included, so a backend never logs the values.
    pub env: Vec<String>,
    /// Absolute working directory; empty means the image's.
    pub dir: String,
    /// The build's named volumes this step mounts: shared with every step that names them.
    pub volumes: Vec<Volume>,
}

impl fmt::Debug for StepSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let env: Vec<&str> = (self.env.iter())
            .map(|entry| entry.split_once('=').map_or(entry.as_str(), |(key, _)| key))
            .collect();
        f.debug_struct("StepSpec")
            .field("name", &self.name)
            .field("image", &self.image)
            .field("entrypoint", &self.entrypoint)
            .field("script", &self.script)
            .field("args", &self.args)
            .field("env", &env)
            .field("dir", &self.dir)
            .field("volumes", &self.volumes)
            .finish()
    }
}

/// A named volume of the build, and where a step sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub name: String,
    /// Absolute path inside the step.
    pub path: String,
}

/// The image a step runs, as [`Backend::step_image`] chose it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepImage {
    /// The step's written name or its fallback image.
    pub name: String,
    /// What identifies the image's content (Docker: its local id): two look-ups with the same
    /// `name` and `id` found the same image.
    pub id: String,
    /// The manifest digest its registry recorded for it; `None` for images that were only built
    /// or imported locally.
    pub digest: Option<String>,
}

/// Registry credentials, asked for by image reference.
#[async_trait::async_trait]
pub trait Credentials: Send + Sync {
    /// The credentials for `image`'s registry; `None` for anonymous access.
    async fn auth(&self, image: &str) -> Result<Option<RegistryAuth>, RuntimeError>;
}

/// Which output stream a [`LogChunk`] came from: the logs' own word for it.
pub use crate::core::logs::LogStream;

/// A piece of a step's output, exactly as the backend framed it: not a line. Frames split long
/// lines (at 16 KiB) and need not end in `\n`, so callers assemble lines per stream themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    pub stream: LogStream,
    pub bytes: Bytes,
}

/// Credentials for one registry. `Debug` hides the password so it cannot end up in logs.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryAuth {
    pub username: String,
    pub password: String,
    /// Registry host (and port) the credentials are for, e.g. `127.0.0.1:5000`.
    pub server: String,
}

impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("server", &self.server)
            .finish()
    }
}

/// Names of a backend's resources (containers, volumes, networks), by kind, sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub containers: Vec<String>,
    pub volumes: Vec<String>,
    pub networks: Vec<String>,
}

impl Resources {
    pub fn is_empty(&self) -> bool {
        self.containers.is_empty() && self.volumes.is_empty() && self.networks.is_empty()
    }
}

/// Why a runtime call failed. A container exiting non-zero is not one of these: it is an outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeError {
    /// The engine cannot be reached (no socket, connection refused, no answer).
    EngineUnavailable { detail: String },
    /// An image is not local and could not be pulled: it does not exist, its registry cannot be
    /// reached, or the credentials were refused. Also returned for pushing a tag that is not local.
    ImageNotFound { image: String, detail: String },
    /// The registry refused or failed a push, or the push reported no digest.
    PushFailed { image: String, detail: String },
    /// The container's command cannot be run: it is not in the image, is not executable, or
    /// there is none (an image without ENTRYPOINT and CMD, and no command given). `detail` is the
    /// engine's reason, as `exec: "bash": executable file not found in $PATH`. This is the
    /// step's failure, as `docker run` makes it on Cloud Build, not the engine's.
    NotExecutable { detail: String },
    /// The caller passed something the backend cannot express (a malformed image reference, a
    /// non-UTF-8 bind path, a build that was not set up); retrying will not help.
    Invalid(String),
    /// The build's source directory could not be read into the workspace.
    Source(String),
    /// The credentials for a registry could not be found (a helper failed, a config file is
    /// malformed); the text is the registry module's.
    Credentials(String),
    /// The engine refused a request or failed while serving it; the text says which and why.
    Engine(String),
}

impl fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EngineUnavailable { detail } => write!(
                f,
                "cannot reach the Docker engine ({detail}); start it with `scripts/dev-env.sh` \
                 (as root) or point DOCKER_HOST at a running engine"
            ),
            Self::ImageNotFound { image, detail } => {
                write!(f, "image {image:?} not found: {detail}")
            }
            Self::PushFailed { image, detail } => {
                write!(f, "pushing image {image:?} failed: {detail}")
            }
            Self::NotExecutable { detail } => f.write_str(detail),
            Self::Invalid(message)
            | Self::Source(message)
            | Self::Credentials(message)
            | Self::Engine(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for RuntimeError {}

/// Runs one build's steps on a backend (a container engine, a cluster).
///
/// # Lifecycle
///
/// ```text
/// setup_build ─► for each step, in the executor's order, several at once:
///                  step_image ─► create_step ─► start_step ─► step_logs ∥ wait_step
///                  ─► missing_command ─► remove_step
///                  (stop_step at any point after create_step; remove_step always)
///            ─► step_outputs (once some step ran)
///            ─► read_workspace, image_exists, push_image (results of a successful build)
///            ─► teardown_build, always
/// ```
///
/// 1. [`setup_build`](Self::setup_build) once, before any step call. Whether it succeeds or
///    fails, [`teardown_build`](Self::teardown_build) follows.
/// 2. A step is created once its turn is near: [`step_image`](Self::step_image) chooses (and
///    fetches) its image, [`create_step`](Self::create_step) creates what runs it. With `ahead`,
///    the steps it waits for are still running: the backend may then already start it, *held*
///    before its command, so that [`start_step`](Self::start_step) only has to release it.
///    At its turn, a step created ahead is checked against `step_image` again (an earlier step
///    may have rebuilt its image) and created anew, after `remove_step`, if that changed.
/// 3. [`start_step`](Self::start_step) at its turn, then [`step_logs`](Self::step_logs) and
///    [`wait_step`](Self::wait_step) concurrently. The logs end on their own once the step's
///    output is closed (at its exit at the latest) and drained.
/// 4. Once it exited with a non-zero code, [`missing_command`](Self::missing_command) may say
///    why. What the steps left in their output directories is read once they have all ended
///    ([`step_outputs`](Self::step_outputs)): nothing is read between two steps.
/// 5. [`remove_step`](Self::remove_step), always: after an exit, a failed create or start, or
///    [`stop_step`](Self::stop_step). Steps created ahead whose turn never came may be left to
///    `teardown_build`.
/// 6. [`teardown_build`](Self::teardown_build), always, last: it removes everything the build
///    made, including what step calls abandoned midway made.
///
/// # Rules every backend keeps
///
/// * Every resource a build makes can be found by the build's id, so [`sweep`](Self::sweep)
///   removes a build's leftovers after a crash, from another process.
/// * Stop and removals are idempotent and safe in any state, including for a step never
///   created, and after a failed `setup_build`.
/// * Outcomes are not errors: a non-zero exit code is `Ok(code)`. A command that cannot run
///   is [`RuntimeError::NotExecutable`] from `start_step`, or, for a step started ahead, exit
///   code 127 with the reason in its output; a step image that cannot be had is
///   [`RuntimeError::ImageNotFound`].
/// * Nothing here bounds how long a step may run: timeouts and cancels are the executor's
///   (`wait_step` under a timeout, then `stop_step`).
/// * Dropping a returned future or stream abandons only the request, never the step; the
///   executor runs `create_step` to its end, so that a step is never created after its removal.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// Checks that the backend answers; returns its version for the logs.
    async fn ping(&self) -> Result<String, RuntimeError>;

    /// Makes what the build's steps share: the workspace (filled from `source`), the home
    /// directory, the named volumes, each step's output directory, a network of the build's
    /// own.
    async fn setup_build(&self, build: &BuildSpec) -> Result<(), RuntimeError>;

    /// The image step `step` would run if it were created now: its written name if the backend
    /// has that image, else its fallback image. With `fetch`, a fallback that is not at hand is
    /// fetched (pulled, with the build's credentials); without, it is `Ok(None)`. Safe to
    /// abandon.
    async fn step_image(
        &self,
        build: &str,
        step: usize,
        fetch: bool,
    ) -> Result<Option<StepImage>, RuntimeError>;

    /// Creates what runs step `step` from `image` (as `step_image` returned it), not started;
    /// with `ahead`, possibly started and held before its command (see the lifecycle). A step
    /// that names no command, of an image with none, is [`RuntimeError::NotExecutable`].
    async fn create_step(
        &self,
        build: &str,
        step: usize,
        image: &StepImage,
        ahead: bool,
    ) -> Result<(), RuntimeError>;

    /// Runs the created step's command: starts it, or releases it if it is held. A command that
    /// is not in the image or not executable is [`RuntimeError::NotExecutable`].
    async fn start_step(&self, build: &str, step: usize) -> Result<(), RuntimeError>;

    /// The started step's output from its start, stdout and stderr kept apart, as the backend
    /// framed it (not lines), read once. Nothing is lost at the end, not even a last line
    /// without a newline; the stream ends once the step's output is closed (at its exit, or
    /// earlier if its command closed it) and drained, or with an error if the backend lost it.
    fn step_logs(
        &self,
        build: &str,
        step: usize,
    ) -> BoxStream<'static, Result<LogChunk, RuntimeError>>;

    /// Waits, without a time limit, until the started step has exited; returns its exit code
    /// (137: it was killed).
    async fn wait_step(&self, build: &str, step: usize) -> Result<i64, RuntimeError>;

    /// Asks the step to end (SIGTERM), and ends it (SIGKILL) if it still runs after `grace`.
    /// Returns once it no longer runs.
    async fn stop_step(
        &self,
        build: &str,
        step: usize,
        grace: Duration,
    ) -> Result<(), RuntimeError>;

    /// What each step left in its output directory: the first `limit` bytes of its `output`
    /// file, at the step's index (`None`: it wrote none, or never ran). Once per build, after
    /// its steps have ended: what the backend makes to read them is removed by
    /// `teardown_build`.
    async fn step_outputs(
        &self,
        build: &str,
        limit: usize,
    ) -> Result<Vec<Option<Vec<u8>>>, RuntimeError>;

    /// After a non-zero exit: why the step's command could not run, when the backend can tell
    /// more than the exit code does (127 is also a command's own). Docker: the interpreter a
    /// script's `#!` line names is not in the image.
    async fn missing_command(&self, build: &str, step: usize) -> Option<String>;

    /// Removes the step, running or not. A step never created is `Ok`.
    async fn remove_step(&self, build: &str, step: usize) -> Result<(), RuntimeError>;

    /// A tar archive of the workspace as the steps left it, its entries under the workspace's
    /// directory name (`workspace/dist/t.yaml`). Once per build, after its last step: what the
    /// backend makes to read it is removed by `teardown_build`.
    async fn read_workspace(
        &self,
        build: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, RuntimeError>>, RuntimeError>;

    /// Whether the backend has the image `image` (built by a step, or fetched).
    async fn image_exists(&self, build: &str, image: &str) -> Result<bool, RuntimeError>;

    /// Pushes the image `image` to the registry of `target` (`image` itself, or the name a
    /// registry mirror gives it) with the build's credentials; returns the manifest digest the
    /// registry reported. A push the registry refused or dropped is
    /// [`RuntimeError::PushFailed`]: trying again may help.
    async fn push_image(
        &self,
        build: &str,
        image: &str,
        target: &str,
    ) -> Result<String, RuntimeError>;

    /// Removes everything of the build and forgets it. When some removals fail it still
    /// attempts the rest, then returns an error naming the failures.
    async fn teardown_build(&self, build: &str) -> Result<(), RuntimeError>;

    /// Removes every leftover of the build `build`, whichever process made it (a build whose
    /// process died); returns what it removed. Calling it again is safe.
    async fn sweep(&self, build: &str) -> Result<Resources, RuntimeError>;

    /// What of the build `build` exists on the backend: empty once it is torn down or swept.
    async fn leftovers(&self, build: &str) -> Result<Resources, RuntimeError>;

    /// The builds that have something on the backend (running, or left by a process that died),
    /// whichever process made them, sorted.
    async fn builds(&self) -> Result<Vec<String>, RuntimeError>;
}

#[cfg(test)]
mod tests {
    use super::StepSpec;

    #[test]
    fn a_steps_debug_shows_its_environment_names_not_their_values() {
        let step = StepSpec {
            env: vec!["TOKEN=s3cr3t".to_string(), "EMPTY".to_string()],
            ..StepSpec::default()
        };
        let shown = format!("{step:?}");
        assert!(shown.contains(r#"env: ["TOKEN", "EMPTY"]"#), "{shown}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }
}
