//! Container runtime: the seam between the executor and the container engine.
//!
//! [`ContainerRuntime`] is a small async trait whose doc comments are the lifecycle contract every
//! implementation keeps and every caller may rely on. Its vocabulary ([`ContainerSpec`],
//! [`LogChunk`], [`RuntimeError`], …) is plain data, so no engine types leak out of this module.
//! [`docker::DockerRuntime`] is the implementation on the Docker Engine API.

pub mod docker;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;

pub use docker::DockerRuntime;

/// Labels on containers, volumes and networks; sorted so specs compare and print deterministically.
pub type Labels = BTreeMap<String, String>;

/// How long a log stream keeps draining, with no output arriving, after its container has exited.
///
/// The engine normally closes a followed log stream when the container exits, but it has been seen
/// to stay open (fussybeaver/bollard#251); this bound is what keeps [`ContainerRuntime::logs`]
/// from hanging in that case.
pub const LOG_DRAIN_IDLE: Duration = Duration::from_secs(2);

/// Everything needed to create one container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerSpec {
    /// Engine-wide unique name; every later call addresses the container by it.
    pub name: String,
    /// Image reference; it must already be local (see [`ContainerRuntime::ensure_image`]).
    pub image: String,
    /// Replaces the image's entrypoint when set. As with `docker run --entrypoint`, the image's
    /// default command is then dropped too, so only `args` follow it.
    pub entrypoint: Option<Vec<String>>,
    /// Arguments after the entrypoint. Empty means the image's default command.
    pub args: Vec<String>,
    /// `KEY=value` entries, added to the image's environment (an entry here wins).
    pub env: Vec<String>,
    /// Absolute working directory; empty means the image's. The engine creates it if missing,
    /// owned by root, so a non-root step can only write there if a parent was made writable.
    pub working_dir: String,
    /// `uid`, `uid:gid` or a user name known to the image; `None` runs as the image's user.
    pub user: Option<String>,
    pub mounts: Vec<Mount>,
    /// Network to join; `None` is the engine's default bridge.
    pub network: Option<String>,
    pub labels: Labels,
    /// Full privileges, needed by steps that drive the engine through its socket.
    pub privileged: bool,
    /// Gives the container a stdin that [`ContainerRuntime::attach_stdin`] writes to; otherwise
    /// its stdin is empty, as with `docker run` without `-i`.
    pub stdin_open: bool,
}

/// A volume or host directory mounted into a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: MountSource,
    /// Absolute path inside the container.
    pub target: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSource {
    /// A named volume made by [`ContainerRuntime::create_volume`], mounted as it is: the engine
    /// does not copy the image's files at `target` into it, even when it is empty.
    Volume(String),
    /// An existing host path (a directory, or a socket such as `/var/run/docker.sock`).
    Bind(PathBuf),
    /// A new, empty in-memory filesystem private to the container and gone with it, its root
    /// directory with permission bits `mode` (e.g. `0o1777`). The engine mounts it `noexec`,
    /// `nosuid` and `nodev`, with no size limit beyond its default (half the host's memory).
    Tmpfs { mode: u32 },
}

/// Which output stream a [`LogChunk`] came from.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// A piece of a container's output, exactly as the engine framed it: not a line. Frames split long
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

/// A local image, as [`ContainerRuntime::ensure_image`] found or pulled it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// Local image id (`sha256:…`, the config digest).
    pub id: String,
    /// Manifest digest (`sha256:…`) the image's repository recorded for it; `None` for images that
    /// were only built or imported locally and never pulled from or pushed to that repository.
    pub digest: Option<String>,
    /// The image's default entrypoint and command (either may be empty).
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
}

/// The writing end of a container's stdin. Shutting it down (or dropping it) ends the stdin: the
/// container reads end-of-file after what was written.
pub type Stdin = std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>;

/// Names of labelled engine resources, by kind, sorted.
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
    /// The caller passed something the engine cannot express (a malformed image reference, a
    /// non-UTF-8 bind path); retrying will not help.
    Invalid(String),
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
            Self::Invalid(message) | Self::Engine(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for RuntimeError {}

/// Runs build steps as containers on a container engine.
///
/// # Lifecycle of a step container
///
/// 1. [`ensure_image`](Self::ensure_image): creation never pulls.
/// 2. [`create_volume`](Self::create_volume) / [`create_network`](Self::create_network) for what
///    the spec refers to.
/// 3. [`create_container`](Self::create_container), then optionally [`upload`](Self::upload) to
///    seed a volume it mounts (a created container already has its volumes attached).
/// 4. [`start_container`](Self::start_container). A container created with `stdin_open` may get
///    its [`attach_stdin`](Self::attach_stdin) writer before or after its start.
/// 5. [`logs`](Self::logs) and [`wait_container`](Self::wait_container), concurrently. The log
///    stream ends on its own once the container has exited, so awaiting it after `wait` returns is
///    bounded (see [`LOG_DRAIN_IDLE`]).
/// 6. [`remove_container`](Self::remove_container), always: after success, failure, a failed
///    create or start, or [`stop_container`](Self::stop_container). Containers are never
///    auto-removed, so the exit code stays readable until this call.
///
/// When the build ends, [`remove_network`](Self::remove_network) and
/// [`remove_volume`](Self::remove_volume) (after every container using them is removed).
///
/// # Rules every implementation keeps
///
/// * Names are chosen by the caller and must be unique on the engine (put the build id in them);
///   every call addresses a resource by name.
/// * Labels passed at creation are stored on the resource, so [`sweep`](Self::sweep) can find
///   leftovers after a crash. Give every resource the build's label.
/// * Stop and removals are idempotent and safe in any state, including for missing resources.
///   Run them on a path a build's cancellation cannot reach.
/// * Outcomes are not errors: a non-zero exit code is `Ok(code)`.
/// * Nothing here bounds how long a container may run; step timeouts are the caller's
///   (`tokio::time::timeout` around `wait_container`, then `stop_container`).
/// * Dropping a returned future or stream abandons only the request, never the container.
#[async_trait::async_trait]
pub trait ContainerRuntime: Send + Sync {
    /// Checks that the engine answers; returns its version for the logs.
    async fn ping(&self) -> Result<String, RuntimeError>;

    /// The local image `image`, if the engine has it; never pulls.
    async fn local_image(&self, image: &str) -> Result<Option<ImageInfo>, RuntimeError>;

    /// Makes `image` local: when present returns its info; otherwise pulls it (with `auth` if
    /// given), then returns its info. `name`, `name:tag` and `name@sha256:…` are accepted, with
    /// `latest` as the default tag and an optional `host:port/` registry prefix.
    async fn ensure_image(
        &self,
        image: &str,
        auth: Option<&RegistryAuth>,
    ) -> Result<ImageInfo, RuntimeError>;

    /// Creates a named volume, or keeps the existing one of that name (with its labels).
    async fn create_volume(&self, name: &str, labels: &Labels) -> Result<(), RuntimeError>;

    /// Creates a bridge network, or keeps the existing one of that name (with its labels).
    async fn create_network(&self, name: &str, labels: &Labels) -> Result<(), RuntimeError>;

    /// Creates, but does not start, a container. Its image must be local. A spec with no
    /// entrypoint and no args, of an image with neither, is [`RuntimeError::NotExecutable`].
    async fn create_container(&self, spec: &ContainerSpec) -> Result<(), RuntimeError>;

    /// Extracts the tar archive `tar` into the existing directory `path` of a created (not
    /// necessarily started) container, through its mounts.
    ///
    /// Entries keep the mode and owner recorded in the archive, except the archive's root entry
    /// (`./`): the engine skips it, so `path` keeps its own mode. To set the mode of the directory
    /// itself (e.g. to make a volume's root writable for non-root steps), extract into its parent
    /// with the directory as a named entry: upload to `/` an archive holding `workspace/` (mode
    /// 0777) followed by `workspace/…`.
    async fn upload(&self, container: &str, path: &str, tar: Vec<u8>) -> Result<(), RuntimeError>;

    /// The tar archive of `path` in a created (not necessarily started) container, read through
    /// its mounts: the inverse of [`upload`](Self::upload). The archive's entries are named
    /// after `path`'s last component (`workspace/dist/t.yaml` for `/workspace`).
    fn download(
        &self,
        container: &str,
        path: &str,
    ) -> BoxStream<'static, Result<Bytes, RuntimeError>>;

    /// Starts a created container. A command that is not in the image or not executable is
    /// [`RuntimeError::NotExecutable`]; the container is then created but never ran.
    async fn start_container(&self, name: &str) -> Result<(), RuntimeError>;

    /// The stdin of a container created with `stdin_open`; there is one writer per container.
    async fn attach_stdin(&self, name: &str) -> Result<Stdin, RuntimeError>;

    /// The container's output from its start, stdout and stderr kept apart.
    ///
    /// Call it after [`start_container`](Self::start_container) returned (before that there is
    /// nothing to follow) and before removal; calling it after the container exited still yields
    /// everything it wrote. Output arrives while the container runs, and none is lost at its end,
    /// not even a last line without a newline. The stream ends once the container has exited and
    /// its output is drained; it never waits more than [`LOG_DRAIN_IDLE`] for output after the
    /// exit.
    fn logs(&self, name: &str) -> BoxStream<'static, Result<LogChunk, RuntimeError>>;

    /// Waits, without a time limit, until the started container is not running and returns its
    /// exit code (non-zero is not an error; 137 means it was killed).
    async fn wait_container(&self, name: &str) -> Result<i64, RuntimeError>;

    /// Sends SIGTERM, and SIGKILL if the container still runs after `grace`. Returns once it has
    /// stopped. Safe on a created, exited or missing container.
    async fn stop_container(&self, name: &str, grace: Duration) -> Result<(), RuntimeError>;

    /// Removes a container in any state (a running one is killed, without grace) with its
    /// anonymous volumes. A missing container is `Ok`.
    async fn remove_container(&self, name: &str) -> Result<(), RuntimeError>;

    /// Removes a volume no container uses any more. A missing volume is `Ok`.
    async fn remove_volume(&self, name: &str) -> Result<(), RuntimeError>;

    /// Removes a network no container is attached to any more. A missing network is `Ok`.
    async fn remove_network(&self, name: &str) -> Result<(), RuntimeError>;

    /// Removes every container, then network, then volume labelled `key=value`, the crash sweep.
    /// Returns what it removed. When some removals fail it still attempts the rest, then returns
    /// an error naming the failures; calling it again is safe.
    async fn sweep(&self, key: &str, value: &str) -> Result<Resources, RuntimeError>;

    /// Lists the containers (in any state), volumes and networks labelled `key=value`.
    async fn labelled(&self, key: &str, value: &str) -> Result<Resources, RuntimeError>;

    /// Gives the local image `image` the further name `tag` (`name[:tag]`, default tag
    /// `latest`), moving that name if another image had it. A missing `image` is
    /// [`RuntimeError::ImageNotFound`].
    async fn tag_image(&self, image: &str, tag: &str) -> Result<(), RuntimeError>;

    /// Pushes the local tag `image` (`name[:tag]`, default tag `latest`) to its registry and
    /// returns the manifest digest (`sha256:…`) the registry reported for it.
    async fn push_image(
        &self,
        image: &str,
        auth: Option<&RegistryAuth>,
    ) -> Result<String, RuntimeError>;
}
