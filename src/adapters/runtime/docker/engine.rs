//! The Docker engine's container-level API, through bollard: the only file that uses bollard.
//! [`Engine`] is what the Docker backend ([`super::DockerBackend`]) is built of; its methods'
//! doc comments are the contract that backend relies on, and `tests/runtime.rs` checks them.
//!
//! Engine behaviours this file works around, each noted where it is handled:
//! * bollard's default API version is newer than older engines (Debian's 20.10 speaks 1.41), so
//!   the version is negotiated at connect.
//! * bollard reports a non-zero exit from `wait` as an error; here it is an exit code.
//! * Pulling with an empty tag pulls every tag of a repository, so references are split into
//!   repository and tag (default `latest`) here, minding `host:port/` registry prefixes.
//! * bollard's push progress type has no `aux` field, so the pushed digest is read from the
//!   engine's `<tag>: digest: sha256:… size: N` progress status.
//! * Engines before API 1.44 create a second network of an existing name, after which removal by
//!   name fails, so an existing network is looked up before creating one, and duplicates made by
//!   callers racing past that look-up are removed again.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerSummary, HostConfig, HostConfigLogConfig, Mount as DockerMount,
    MountTmpfsOptions, MountType, MountVolumeOptions, Network, NetworkCreateRequest, Volume,
    VolumeCreateRequest,
};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
    DownloadFromContainerOptionsBuilder, KillContainerOptionsBuilder, ListContainersOptionsBuilder,
    ListNetworksOptionsBuilder, ListVolumesOptionsBuilder, PushImageOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveVolumeOptionsBuilder, TagImageOptionsBuilder,
    UploadToContainerOptionsBuilder,
};
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};

use crate::adapters::runtime::{LogChunk, LogStream, RegistryAuth, Resources, RuntimeError};

/// Labels on containers, volumes and networks; sorted so specs compare and print deterministically.
pub type Labels = BTreeMap<String, String>;

/// Everything needed to create one container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerSpec {
    /// Engine-wide unique name; every later call addresses the container by it.
    pub name: String,
    /// Image reference; it must already be local (see [`Engine::ensure_image`]).
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
    /// Gives the container a stdin that [`Engine::attach_stdin`] writes to; otherwise
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
    /// A named volume made by [`Engine::create_volume`], mounted as it is: the engine
    /// does not copy the image's files at `target` into it, even when it is empty.
    Volume(String),
    /// An existing host path (a directory, or a socket such as `/var/run/docker.sock`).
    Bind(PathBuf),
    /// A new, empty in-memory filesystem private to the container and gone with it, its root
    /// directory with permission bits `mode` (e.g. `0o1777`). The engine mounts it `noexec`,
    /// `nosuid` and `nodev`, with no size limit beyond its default (half the host's memory).
    Tmpfs { mode: u32 },
}

/// A local image, as [`Engine::ensure_image`] found or pulled it.
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

/// One Docker engine, as the Docker backend uses it: containers, volumes, networks, images.
///
/// # Lifecycle of a step container
///
/// 1. [`ensure_image`](Self::ensure_image): creation never pulls.
/// 2. [`create_volume`](Self::create_volume) / [`create_network`](Self::create_network) for what
///    the spec refers to.
/// 3. [`create_container`](Self::create_container), then optionally [`upload`](Self::upload) to
///    seed a volume it mounts (a created container already has its volumes attached).
/// 4. [`attach_output`](Self::attach_output), then [`start_container`](Self::start_container):
///    the engine keeps no log, so output written before the attach is lost. A container created
///    with `stdin_open` may get its [`attach_stdin`](Self::attach_stdin) writer before or after
///    its start.
/// 5. Reading the attached output and [`wait_container`](Self::wait_container), concurrently.
///    The output ends on its own once the container's output is closed (at its exit at the
///    latest), so awaiting it after `wait` returns is bounded.
/// 6. [`remove_container`](Self::remove_container), always: after success, failure, a failed
///    create or start, or [`stop_container`](Self::stop_container). Containers are never
///    auto-removed, so the exit code stays readable until this call.
///
/// When the build ends, [`remove_network`](Self::remove_network) and
/// [`remove_volume`](Self::remove_volume) (after every container using them is removed).
///
/// # Rules
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
#[derive(Debug, Clone)]
pub struct Engine {
    docker: Docker,
}

impl Engine {
    /// Connects to the engine named by `DOCKER_HOST`, or the local socket `/var/run/docker.sock`.
    pub async fn connect() -> Result<Self, RuntimeError> {
        Self::negotiate(Docker::connect_with_defaults()).await
    }

    /// Connects to the engine at `host` (`unix:///path`, `tcp://host:port` or `http://…`).
    pub async fn connect_to(host: &str) -> Result<Self, RuntimeError> {
        Self::negotiate(Docker::connect_with_host(host)).await
    }

    async fn negotiate(docker: Result<Docker, BollardError>) -> Result<Self, RuntimeError> {
        let connect = |error| engine_error("connecting to the Docker engine", error);
        // bollard asks for its own (newest) API version unless told the engine's; older engines
        // refuse that with "client version … is too new".
        let docker = docker
            .map_err(connect)?
            .negotiate_version()
            .await
            .map_err(connect)?;
        Ok(Self { docker })
    }

    /// Sends `signal`; `false` when there is no running container to receive it.
    async fn signal(&self, name: &str, signal: &str) -> Result<bool, RuntimeError> {
        let options = KillContainerOptionsBuilder::default()
            .signal(signal)
            .build();
        match self.docker.kill_container(name, Some(options)).await {
            Ok(()) => Ok(true),
            // 404: no such container; 409: it is not running (created or already exited).
            Err(error) if has_status(&error, 404) || has_status(&error, 409) => Ok(false),
            Err(error) => Err(engine_error(
                format_args!("sending {signal} to container {name:?}"),
                error,
            )),
        }
    }

    async fn inspect_image(
        &self,
        image: &str,
        repository: &str,
    ) -> Result<ImageInfo, BollardError> {
        let inspect = self.docker.inspect_image(image).await?;
        // RepoDigests holds `repository@digest` for each repository the image was pulled from or
        // pushed to; only the requested repository's digest describes this reference.
        let digest = inspect
            .repo_digests
            .into_iter()
            .flatten()
            .find_map(|entry| {
                let (name, digest) = entry.split_once('@')?;
                (familiar(name) == familiar(repository)).then(|| digest.to_owned())
            });
        let config = inspect.config.unwrap_or_default();
        Ok(ImageInfo {
            id: inspect.id.unwrap_or_default(),
            digest,
            entrypoint: config.entrypoint.unwrap_or_default(),
            cmd: config.cmd.unwrap_or_default(),
        })
    }

    /// The networks that pass one engine filter (`name`, `label`…).
    async fn networks(&self, filter: &str, value: &str) -> Result<Vec<Network>, BollardError> {
        let filters = HashMap::from([(filter, vec![value])]);
        let options = ListNetworksOptionsBuilder::default()
            .filters(&filters)
            .build();
        self.docker.list_networks(Some(options)).await
    }

    /// Ids of the networks called exactly `name`, sorted.
    async fn networks_named(&self, name: &str) -> Result<Vec<String>, BollardError> {
        let networks = self.networks("name", name).await?;
        // The name filter matches substrings, hence the exact comparison.
        let ids = networks
            .into_iter()
            .filter(|network| network.name.as_deref() == Some(name))
            .filter_map(|network| network.id);
        Ok(sorted(ids))
    }

    /// The containers (in any state), volumes and networks that pass the engine's `label`
    /// filter (`key=value`, or `key` for any value).
    async fn with_label(
        &self,
        label: &str,
    ) -> Result<(Vec<ContainerSummary>, Vec<Volume>, Vec<Network>), BollardError> {
        let filters = HashMap::from([("label", vec![label])]);
        let containers = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await?;
        let volumes = self
            .docker
            .list_volumes(Some(
                ListVolumesOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await?
            .volumes
            .unwrap_or_default();
        let networks = self.networks("label", label).await?;
        Ok((containers, volumes, networks))
    }

    async fn list_labelled(&self, label: &str) -> Result<Resources, BollardError> {
        let (containers, volumes, networks) = self.with_label(label).await?;
        let containers = containers
            .into_iter()
            .flat_map(|container| container.names.unwrap_or_default())
            // The engine reports container names with a leading `/`.
            .map(|name| name.trim_start_matches('/').to_owned());
        Ok(Resources {
            containers: sorted(containers),
            volumes: sorted(volumes.into_iter().map(|volume| volume.name)),
            networks: sorted(networks.into_iter().filter_map(|network| network.name)),
        })
    }
}

impl Engine {
    /// Checks that the engine answers; returns its version for the logs.
    pub async fn ping(&self) -> Result<String, RuntimeError> {
        let version = self
            .docker
            .version()
            .await
            .map_err(|error| engine_error("asking the Docker engine for its version", error))?;
        Ok(format!(
            "Docker Engine {} (API {})",
            version.version.as_deref().unwrap_or("unknown"),
            version.api_version.as_deref().unwrap_or("unknown"),
        ))
    }

    /// The local image `image`, if the engine has it; never pulls.
    pub async fn local_image(&self, image: &str) -> Result<Option<ImageInfo>, RuntimeError> {
        let reference = Reference::parse(image)?;
        match self.inspect_image(image, reference.repository).await {
            Ok(info) => Ok(Some(info)),
            Err(error) if has_status(&error, 404) => Ok(None),
            Err(error) => Err(engine_error(
                format_args!("inspecting image {image:?}"),
                error,
            )),
        }
    }

    /// Makes `image` local: when present returns its info; otherwise pulls it (with `auth` if
    /// given), then returns its info. `name`, `name:tag` and `name@sha256:…` are accepted, with
    /// `latest` as the default tag and an optional `host:port/` registry prefix.
    pub async fn ensure_image(
        &self,
        image: &str,
        auth: Option<&RegistryAuth>,
    ) -> Result<ImageInfo, RuntimeError> {
        let reference = Reference::parse(image)?;
        if let Some(info) = self.local_image(image).await? {
            return Ok(info);
        }
        let options = CreateImageOptionsBuilder::default()
            .from_image(reference.repository)
            .tag(reference.tag)
            .build();
        let pulled = self
            .docker
            .create_image(Some(options), None, auth.map(credentials))
            .try_for_each(|_progress| async { Ok(()) })
            .await;
        if let Err(error) = pulled {
            return Err(match unreachable(&error) {
                Some(detail) => RuntimeError::EngineUnavailable { detail },
                None => RuntimeError::ImageNotFound {
                    image: image.to_owned(),
                    detail: format!(
                        "it is not local and pulling it failed ({}); check the name and tag, \
                         that its registry is reachable, and the credentials",
                        message(&error)
                    ),
                },
            });
        }
        self.local_image(image)
            .await?
            .ok_or_else(|| RuntimeError::ImageNotFound {
                image: image.to_owned(),
                detail: "the pull finished but the engine does not have it".into(),
            })
    }

    /// Creates a named volume, or keeps the existing one of that name (with its labels).
    pub async fn create_volume(&self, name: &str, labels: &Labels) -> Result<(), RuntimeError> {
        let request = VolumeCreateRequest {
            name: Some(name.to_owned()),
            labels: Some(to_map(labels)),
            ..Default::default()
        };
        // The engine answers with the existing volume when the name is taken.
        self.docker
            .create_volume(request)
            .await
            .map(drop)
            .map_err(|error| engine_error(format_args!("creating volume {name:?}"), error))
    }

    /// Creates a bridge network, or keeps the existing one of that name (with its labels).
    pub async fn create_network(&self, name: &str, labels: &Labels) -> Result<(), RuntimeError> {
        let context = format!("creating network {name:?}");
        let failed = |error| engine_error(&context, error);
        if self.networks_named(name).await.map_err(failed)?.is_empty() {
            let request = NetworkCreateRequest {
                name: name.to_owned(),
                driver: Some("bridge".to_owned()),
                labels: Some(to_map(labels)),
                ..Default::default()
            };
            self.docker.create_network(request).await.map_err(failed)?;
        }
        // Callers that looked at once all found none and all created one (two builds preparing
        // the shared network). They converge on the same survivor: each removes networks of the
        // name in id order until one is left, skipping those in use.
        let ids = self.networks_named(name).await.map_err(failed)?;
        let mut left = ids.len();
        for id in &ids {
            if left <= 1 {
                break;
            }
            if self.remove_network(id).await.is_ok() {
                left -= 1;
            }
        }
        Ok(())
    }

    /// Creates, but does not start, a container. Its image must be local. A spec with no
    /// entrypoint and no args, of an image with neither, is [`RuntimeError::NotExecutable`].
    pub async fn create_container(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        let labels = to_map(&spec.labels);
        let mounts = spec
            .mounts
            .iter()
            .map(|mount| {
                let (typ, source, volume_options) = match &mount.source {
                    MountSource::Volume(volume) => (
                        MountType::VOLUME,
                        Some(volume.clone()),
                        // Should the volume not exist, the engine creates it; with these labels
                        // the sweep still finds it. `no_copy`: the engine would otherwise fill an
                        // empty volume from the image at start and give its root the owner and
                        // mode of the image's directory there, undoing the mode an upload set.
                        Some(MountVolumeOptions {
                            labels: Some(labels.clone()),
                            no_copy: Some(true),
                            ..Default::default()
                        }),
                    ),
                    MountSource::Bind(path) => {
                        let path = path.to_str().ok_or_else(|| {
                            RuntimeError::Invalid(format!(
                                "bind mount source {path:?} of container {:?} is not valid UTF-8",
                                spec.name
                            ))
                        })?;
                        (MountType::BIND, Some(path.to_owned()), None)
                    }
                    MountSource::Tmpfs { .. } => (MountType::TMPFS, None, None),
                };
                let tmpfs_options = match mount.source {
                    MountSource::Tmpfs { mode } => Some(MountTmpfsOptions {
                        mode: Some(i64::from(mode)),
                        ..Default::default()
                    }),
                    _ => None,
                };
                Ok(DockerMount {
                    target: Some(mount.target.clone()),
                    source,
                    read_only: Some(mount.read_only),
                    typ: Some(typ),
                    volume_options,
                    tmpfs_options,
                    ..Default::default()
                })
            })
            .collect::<Result<Vec<_>, RuntimeError>>()?;
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            entrypoint: spec.entrypoint.clone(),
            // No `Cmd` lets the image's default command apply.
            cmd: (!spec.args.is_empty()).then(|| spec.args.clone()),
            env: Some(spec.env.clone()),
            working_dir: (!spec.working_dir.is_empty()).then(|| spec.working_dir.clone()),
            user: spec.user.clone(),
            labels: Some(labels),
            // `StdinOnce`: the stdin ends when its one writer disconnects.
            open_stdin: Some(spec.stdin_open),
            stdin_once: Some(spec.stdin_open),
            attach_stdin: Some(spec.stdin_open),
            host_config: Some(HostConfig {
                mounts: Some(mounts),
                network_mode: spec.network.clone(),
                privileged: Some(spec.privileged),
                // Never: an auto-removed container can vanish before its exit code is read
                // (moby#20848); removal is the caller's explicit last step.
                auto_remove: Some(false),
                // No log of the engine's own: the output is read once, through an attach made
                // before the start (`attach_output`), and kept by builder. A second copy in the
                // engine (its default, a JSON file) cost it more than the container's work: 5.7 s
                // against 1.1 s for `seq 1 3000000` (bench/logs.sh).
                log_config: Some(HostConfigLogConfig {
                    typ: Some("none".to_owned()),
                    config: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        self.docker
            .create_container(Some(options), body)
            .await
            .map(drop)
            .map_err(|error| match not_executable(&error) {
                Some(detail) => RuntimeError::NotExecutable { detail },
                None => engine_error(
                    format_args!("creating container {:?} from {:?}", spec.name, spec.image),
                    error,
                ),
            })
    }

    /// Extracts the tar archive `tar` into the existing directory `path` of a created (not
    /// necessarily started) container, through its mounts.
    ///
    /// Entries keep the mode and owner recorded in the archive, except the archive's root entry
    /// (`./`): the engine skips it, so `path` keeps its own mode. To set the mode of the directory
    /// itself (e.g. to make a volume's root writable for non-root steps), extract into its parent
    /// with the directory as a named entry: upload to `/` an archive holding `workspace/` (mode
    /// 0777) followed by `workspace/…`.
    pub async fn upload(
        &self,
        container: &str,
        path: &str,
        tar: Vec<u8>,
    ) -> Result<(), RuntimeError> {
        let options = UploadToContainerOptionsBuilder::default()
            .path(path)
            .build();
        self.docker
            .upload_to_container(container, Some(options), bollard::body_full(tar.into()))
            .await
            .map_err(|error| {
                engine_error(
                    format_args!("uploading into {path:?} of container {container:?}"),
                    error,
                )
            })
    }

    /// The tar archive of `path` in a created (not necessarily started) container, read through
    /// its mounts: the inverse of [`upload`](Self::upload). The archive's entries are named
    /// after `path`'s last component (`workspace/dist/t.yaml` for `/workspace`).
    pub fn download(
        &self,
        container: &str,
        path: &str,
    ) -> BoxStream<'static, Result<Bytes, RuntimeError>> {
        let options = DownloadFromContainerOptionsBuilder::default()
            .path(path)
            .build();
        let what = format!("downloading {path:?} of container {container:?}");
        self.docker
            .download_from_container(container, Some(options))
            .map_err(move |error| engine_error(format_args!("{what}"), error))
            .boxed()
    }

    /// Starts a created container. A command that is not in the image or not executable is
    /// [`RuntimeError::NotExecutable`]; the container is then created but never ran.
    pub async fn start_container(&self, name: &str) -> Result<(), RuntimeError> {
        self.docker
            .start_container(name, None)
            .await
            .map_err(|error| match not_executable(&error) {
                Some(detail) => RuntimeError::NotExecutable { detail },
                None => engine_error(format_args!("starting container {name:?}"), error),
            })
    }

    /// The stdin of a container created with `stdin_open`; there is one writer per container.
    pub async fn attach_stdin(&self, name: &str) -> Result<Stdin, RuntimeError> {
        let options = AttachContainerOptionsBuilder::default()
            .stdin(true)
            .stream(true)
            .build();
        // Nothing comes back on a stdin-only attach; the writer alone keeps the connection open.
        Ok(self.attach(name, options).await?.input)
    }

    /// Attaches to a container's streams as `options` choose.
    async fn attach(
        &self,
        name: &str,
        options: bollard::query_parameters::AttachContainerOptions,
    ) -> Result<bollard::container::AttachContainerResults, RuntimeError> {
        self.docker
            .attach_container(name, Some(options))
            .await
            .map_err(|error| engine_error(format_args!("attaching to container {name:?}"), error))
    }

    /// Attaches to the output of a created container, stdout and stderr kept apart: call it
    /// before [`start_container`](Self::start_container) (the engine passes on only what is
    /// written after the attach), or, for a container held at the gate, before its release. The
    /// output comes as the container writes it, straight from the engine (as `docker run` gets
    /// it); the engine keeps no log of it to read again (see `create_container`).
    ///
    /// The stream ends once the container's output is closed, a last line without a newline
    /// included: at its exit, or earlier if its command closed its stdout and stderr and went on
    /// (its exit is [`wait_container`](Self::wait_container)'s). An attach that breaks (the
    /// engine's connection lost) ends the stream with the error.
    pub async fn attach_output(
        &self,
        name: &str,
    ) -> Result<BoxStream<'static, Result<LogChunk, RuntimeError>>, RuntimeError> {
        let options = AttachContainerOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .stream(true)
            .build();
        // The engine attaches before it answers, so nothing written after this call is missed.
        let attached = self.attach(name, options).await?;
        // Nothing is written to the container's stdin through this attach.
        drop(attached.input);
        let name = name.to_owned();
        Ok(attached
            .output
            .map(move |output| match output {
                Ok(LogOutput::StdErr { message }) => Ok(LogChunk {
                    stream: LogStream::Stderr,
                    bytes: message,
                }),
                // Without a TTY the engine sends only stdout and stderr frames; anything else is
                // output too, so it goes with stdout rather than being dropped.
                Ok(other) => Ok(LogChunk {
                    stream: LogStream::Stdout,
                    bytes: other.into_bytes(),
                }),
                Err(error) => Err(engine_error(
                    format_args!("reading the output of container {name:?}"),
                    error,
                )),
            })
            .boxed())
    }

    /// Waits, without a time limit, until the started container is not running and returns its
    /// exit code (non-zero is not an error; 137 means it was killed).
    pub async fn wait_container(&self, name: &str) -> Result<i64, RuntimeError> {
        match self.docker.wait_container(name, None).next().await {
            Some(Ok(response)) => Ok(response.status_code),
            // bollard turns a non-zero exit into an error; for us it is the step's outcome.
            Some(Err(BollardError::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(error)) => Err(engine_error(
                format_args!("waiting for container {name:?}"),
                error,
            )),
            None => Err(RuntimeError::Engine(format!(
                "waiting for container {name:?}: the engine closed the wait without an exit status"
            ))),
        }
    }

    /// Sends SIGTERM, and SIGKILL if the container still runs after `grace`. Returns once it has
    /// stopped. Safe on a created, exited or missing container.
    pub async fn stop_container(&self, name: &str, grace: Duration) -> Result<(), RuntimeError> {
        // SIGTERM first so the step can clean up. The engine's own stop would do this too, but
        // it answers only once the container is gone, which bollard's 120 s request timeout cuts
        // short for long grace periods; timing the grace here has no such limit.
        if !self.signal(name, "SIGTERM").await? {
            return Ok(());
        }
        if let Ok(exited) = tokio::time::timeout(grace, self.wait_container(name)).await {
            return exited.map(drop);
        }
        if !self.signal(name, "SIGKILL").await? {
            return Ok(());
        }
        self.wait_container(name).await.map(drop)
    }

    /// Removes a container in any state (a running one is killed, without grace) with its
    /// anonymous volumes. A missing container is `Ok`.
    pub async fn remove_container(&self, name: &str) -> Result<(), RuntimeError> {
        // `v` also removes anonymous volumes (an image's VOLUME lines), which carry no labels
        // and would otherwise leak.
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        let removed = self.docker.remove_container(name, Some(options)).await;
        gone(removed, format_args!("removing container {name:?}"))
    }

    /// Removes a volume no container uses any more. A missing volume is `Ok`.
    pub async fn remove_volume(&self, name: &str) -> Result<(), RuntimeError> {
        let options = RemoveVolumeOptionsBuilder::default().build();
        let removed = self.docker.remove_volume(name, Some(options)).await;
        gone(removed, format_args!("removing volume {name:?}"))
    }

    /// Removes a network no container is attached to any more. A missing network is `Ok`.
    pub async fn remove_network(&self, name: &str) -> Result<(), RuntimeError> {
        let removed = self.docker.remove_network(name).await;
        gone(removed, format_args!("removing network {name:?}"))
    }

    /// Removes every container, then network, then volume labelled `key=value`, the crash sweep.
    /// Returns what it removed. When some removals fail it still attempts the rest, then returns
    /// an error naming the failures; calling it again is safe.
    pub async fn sweep(&self, key: &str, value: &str) -> Result<Resources, RuntimeError> {
        let found = self.labelled(key, value).await?;
        let (mut failures, mut network_failures) = (Vec::new(), Vec::new());
        // Containers first: they hold the networks and volumes. Each kind at once.
        let remove_container = |name: String| async move { self.remove_container(&name).await };
        let containers = remove_all(found.containers, remove_container, &mut failures).await;
        let remove_network = |name: String| async move { self.remove_network(&name).await };
        let remove_volume = |name: String| async move { self.remove_volume(&name).await };
        let (networks, volumes) = futures_util::join!(
            remove_all(found.networks, remove_network, &mut network_failures),
            remove_all(found.volumes, remove_volume, &mut failures),
        );
        failures.extend(network_failures);
        let removed = Resources {
            containers,
            networks,
            volumes,
        };
        if failures.is_empty() {
            Ok(removed)
        } else {
            Err(RuntimeError::Engine(format!(
                "sweeping resources labelled {key}={value}: {}",
                failures.join("; ")
            )))
        }
    }

    /// Lists the containers (in any state), volumes and networks labelled `key=value`.
    pub async fn labelled(&self, key: &str, value: &str) -> Result<Resources, RuntimeError> {
        let label = format!("{key}={value}");
        self.list_labelled(&label).await.map_err(|error| {
            engine_error(format_args!("listing resources labelled {label}"), error)
        })
    }

    /// The values the label `key` has on containers (in any state), volumes and networks: for
    /// `builder.build`, the builds that have something on this engine.
    pub async fn label_values(&self, key: &str) -> Result<Vec<String>, RuntimeError> {
        let (containers, volumes, networks) = self.with_label(key).await.map_err(|error| {
            engine_error(format_args!("listing resources labelled {key}"), error)
        })?;
        let containers = containers
            .into_iter()
            .filter_map(|container| container.labels?.remove(key));
        let volumes = volumes
            .into_iter()
            .filter_map(|mut volume| volume.labels.remove(key));
        let networks = networks
            .into_iter()
            .filter_map(|network| network.labels?.remove(key));
        let mut builds = sorted(containers.chain(volumes).chain(networks));
        builds.dedup();
        Ok(builds)
    }

    /// Gives the local image `image` the further name `tag` (`name[:tag]`, default tag
    /// `latest`), moving that name if another image had it. A missing `image` is
    /// [`RuntimeError::ImageNotFound`].
    pub async fn tag_image(&self, image: &str, tag: &str) -> Result<(), RuntimeError> {
        let target = Reference::parse(tag)?;
        let options = TagImageOptionsBuilder::default()
            .repo(target.repository)
            .tag(target.tag)
            .build();
        match self.docker.tag_image(image, Some(options)).await {
            Err(error) if has_status(&error, 404) => Err(RuntimeError::ImageNotFound {
                image: image.to_owned(),
                detail: "there is no local image by that name to tag".to_owned(),
            }),
            tagged => tagged.map_err(|error| {
                engine_error(format_args!("tagging image {image:?} as {tag:?}"), error)
            }),
        }
    }

    /// Pushes the local tag `image` (`name[:tag]`, default tag `latest`) to its registry and
    /// returns the manifest digest (`sha256:…`) the registry reported for it.
    pub async fn push_image(
        &self,
        image: &str,
        auth: Option<&RegistryAuth>,
    ) -> Result<String, RuntimeError> {
        let reference = Reference::parse(image)?;
        if reference.is_digest() {
            return Err(RuntimeError::Invalid(format!(
                "cannot push {image:?}: a digest reference names content already in a registry; \
                 push a tag"
            )));
        }
        // Checked up front: for a missing tag of a repository that does exist locally, the engine
        // accepts the push and only fails it mid-stream with a message.
        match self.docker.inspect_image(image).await {
            Ok(_) => {}
            Err(error) if has_status(&error, 404) => {
                return Err(RuntimeError::ImageNotFound {
                    image: image.to_owned(),
                    detail: "there is no local image by that name to push; build or tag it first"
                        .to_owned(),
                });
            }
            Err(error) => {
                return Err(engine_error(
                    format_args!("inspecting image {image:?}"),
                    error,
                ));
            }
        }
        let options = PushImageOptionsBuilder::default()
            .tag(reference.tag)
            .build();
        let mut progress = self
            .docker
            .push_image(reference.repository, Some(options), auth.map(credentials))
            .boxed();
        let mut digest = None;
        while let Some(event) = progress.next().await {
            match event {
                Ok(event) => {
                    if let Some(found) = event
                        .status
                        .as_deref()
                        .and_then(|status| pushed_digest(status, reference.tag))
                    {
                        digest = Some(found.to_owned());
                    }
                }
                Err(error) => {
                    return Err(match unreachable(&error) {
                        Some(detail) => RuntimeError::EngineUnavailable { detail },
                        None => RuntimeError::PushFailed {
                            image: image.to_owned(),
                            detail: message(&error),
                        },
                    });
                }
            }
        }
        digest.ok_or_else(|| RuntimeError::PushFailed {
            image: image.to_owned(),
            detail: "the engine finished the push without reporting the manifest digest".to_owned(),
        })
    }
}

/// An image reference split the way the engine's pull and push endpoints take it.
#[derive(Debug)]
pub(super) struct Reference<'a> {
    /// `[host[:port]/]path`, without tag or digest.
    pub(super) repository: &'a str,
    /// A tag, or a digest (`algorithm:hex`).
    pub(super) tag: &'a str,
}

impl<'a> Reference<'a> {
    /// Accepts `name`, `name:tag`, `name@digest` and `name:tag@digest` (the digest wins, as in
    /// the engine). The tag defaults to `latest`: an empty tag would pull every tag.
    pub(super) fn parse(image: &'a str) -> Result<Self, RuntimeError> {
        let invalid = |reason: &str| {
            RuntimeError::Invalid(format!("invalid image reference {image:?}: {reason}"))
        };
        if image.is_empty() || image.contains(char::is_whitespace) {
            return Err(invalid("it is empty or contains whitespace"));
        }
        let (name, digest) = match image.split_once('@') {
            Some((name, digest)) => (name, Some(digest)),
            None => (image, None),
        };
        // A `:` is a tag separator only after the last `/`; before it, it belongs to `host:port`.
        let last_component = name.rfind('/').map_or(0, |slash| slash + 1);
        let (repository, tag) = match name[last_component..].rfind(':') {
            Some(colon) => {
                let colon = last_component + colon;
                (&name[..colon], Some(&name[colon + 1..]))
            }
            None => (name, None),
        };
        if repository.is_empty() || repository.ends_with('/') {
            return Err(invalid("the repository name is missing"));
        }
        let tag = match (digest, tag) {
            (Some(digest), _) => {
                if !digest
                    .split_once(':')
                    .is_some_and(|(algorithm, hex)| !algorithm.is_empty() && !hex.is_empty())
                {
                    return Err(invalid("the digest is not of the form algorithm:hex"));
                }
                digest
            }
            (None, Some("")) => return Err(invalid("the tag after ':' is empty")),
            (None, Some(tag)) => tag,
            (None, None) => "latest",
        };
        Ok(Self { repository, tag })
    }

    pub(super) fn is_digest(&self) -> bool {
        self.tag.contains(':')
    }
}

/// The repository as the engine prints it in `RepoDigests`: Docker Hub's defaults left out.
fn familiar(repository: &str) -> &str {
    let repository = repository.strip_prefix("docker.io/").unwrap_or(repository);
    repository.strip_prefix("library/").unwrap_or(repository)
}

/// The digest from the engine's push status `<tag>: digest: sha256:… size: N`.
fn pushed_digest<'s>(status: &'s str, tag: &str) -> Option<&'s str> {
    let rest = status.strip_prefix(tag)?.strip_prefix(": digest: ")?;
    rest.split_whitespace().next()
}

fn credentials(auth: &RegistryAuth) -> DockerCredentials {
    DockerCredentials {
        username: Some(auth.username.clone()),
        password: Some(auth.password.clone()),
        serveraddress: Some(auth.server.clone()),
        ..Default::default()
    }
}

/// Runs `remove` on all `names` at once; returns the names removed, and adds what failed to
/// `failures`.
async fn remove_all<F>(
    names: Vec<String>,
    remove: impl Fn(String) -> F,
    failures: &mut Vec<String>,
) -> Vec<String>
where
    F: Future<Output = Result<(), RuntimeError>>,
{
    let results = futures_util::future::join_all(names.iter().cloned().map(remove)).await;
    let mut removed = Vec::new();
    for (name, result) in names.into_iter().zip(results) {
        match result {
            Ok(()) => removed.push(name),
            Err(error) => failures.push(error.to_string()),
        }
    }
    removed
}

fn to_map(labels: &Labels) -> HashMap<String, String> {
    labels
        .iter()
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

fn sorted(names: impl Iterator<Item = String>) -> Vec<String> {
    let mut names: Vec<_> = names.collect();
    names.sort();
    names
}

/// A removal's result: removing what is already gone (404) is success, so removals are
/// idempotent.
fn gone(removed: Result<(), BollardError>, context: impl fmt::Display) -> Result<(), RuntimeError> {
    match removed {
        Err(error) if !has_status(&error, 404) => Err(engine_error(context, error)),
        _ => Ok(()),
    }
}

fn has_status(error: &BollardError, status: u16) -> bool {
    matches!(error, BollardError::DockerResponseServerError { status_code, .. } if *status_code == status)
}

/// The engine's own words for a refused request, without bollard's wrapping.
fn message(error: &BollardError) -> String {
    match error {
        BollardError::DockerResponseServerError { message, .. } => message.clone(),
        BollardError::DockerStreamError { error } => error.clone(),
        other => other.to_string(),
    }
}

/// `Some(detail)` when `error` means the engine itself could not be reached.
fn unreachable(error: &BollardError) -> Option<String> {
    match error {
        BollardError::SocketNotFoundError(path) => Some(format!("no socket at {path}")),
        BollardError::RequestTimeoutError => Some("the engine did not answer in time".to_owned()),
        BollardError::HyperLegacyError { .. }
        | BollardError::HyperResponseError { .. }
        | BollardError::IOError { .. }
        | BollardError::UnsupportedURISchemeError { .. } => Some(with_causes(error)),
        _ => None,
    }
}

/// `error` followed by its causes: hyper's own text ("client error (Connect)") omits the reason.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // bollard's wrappers repeat their source's text in their own.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The reason, when the engine refused to create or start a container because its command
/// cannot run: none given to an image that has none, or runc's `exec: "bash": executable file
/// not found in $PATH` (also `stat …: no such file or directory` and `permission denied`).
fn not_executable(error: &BollardError) -> Option<String> {
    let BollardError::DockerResponseServerError { message, .. } = error else {
        return None;
    };
    if message.contains("No command specified") {
        return Some(
            "the image has no command (no ENTRYPOINT and no CMD) and the step gives none; \
             set the step's `entrypoint` or `args`"
                .to_owned(),
        );
    }
    let exec = &message[message.find("exec: ")?..];
    Some(exec.strip_suffix(": unknown").unwrap_or(exec).to_owned())
}

fn engine_error(context: impl fmt::Display, error: BollardError) -> RuntimeError {
    match unreachable(&error) {
        Some(detail) => RuntimeError::EngineUnavailable { detail },
        None => RuntimeError::Engine(format!("{context}: {}", message(&error))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(image: &str, expect: Option<(&str, &str)>) {
        let parsed = Reference::parse(image).ok();
        let parsed = parsed.map(|reference| (reference.repository, reference.tag));
        assert_eq!(parsed, expect, "{image}");
    }

    #[test]
    fn a_command_that_cannot_run_is_told_apart_from_other_refusals() {
        let refused = |message: &str| BollardError::DockerResponseServerError {
            status_code: 400,
            message: message.to_owned(),
        };
        assert_eq!(
            not_executable(&refused(
                "failed to create shim task: OCI runtime create failed: runc create failed: \
                 unable to start container process: exec: \"bash\": executable file not found \
                 in $PATH: unknown"
            ))
            .as_deref(),
            Some("exec: \"bash\": executable file not found in $PATH")
        );
        assert!(
            not_executable(&refused("No command specified"))
                .unwrap()
                .contains("no ENTRYPOINT and no CMD")
        );
        assert_eq!(not_executable(&refused("conflict: name in use")), None);
    }

    #[test]
    fn references_split_into_repository_and_tag() {
        check("busybox", Some(("busybox", "latest")));
        check("busybox:1.36", Some(("busybox", "1.36")));
        check(
            "gcr.io/cloud-builders/docker",
            Some(("gcr.io/cloud-builders/docker", "latest")),
        );
        check(
            "localhost:5000/nope",
            Some(("localhost:5000/nope", "latest")),
        );
        check("localhost:5000/nope:1", Some(("localhost:5000/nope", "1")));
        check("127.0.0.1:5000/a/b:v2", Some(("127.0.0.1:5000/a/b", "v2")));
        check(
            "127.0.0.1:5000/a@sha256:ab",
            Some(("127.0.0.1:5000/a", "sha256:ab")),
        );
        check("a:tag@sha256:ab", Some(("a", "sha256:ab")));
        check("", None);
        check("a:", None);
        check("a b", None);
        check("localhost:5000/", None);
        check("a@sha256", None);
        check(":tag", None);
    }

    #[test]
    fn pushed_digest_is_read_from_the_tag_status() {
        let status = "v1: digest: sha256:0123abcd size: 527";
        assert_eq!(pushed_digest(status, "v1"), Some("sha256:0123abcd"));
        assert_eq!(pushed_digest(status, "v2"), None);
        assert_eq!(pushed_digest("Pushed", "v1"), None);
    }

    #[test]
    fn familiar_names_drop_docker_hub_defaults() {
        assert_eq!(familiar("docker.io/library/busybox"), "busybox");
        assert_eq!(familiar("docker.io/me/app"), "me/app");
        assert_eq!(
            familiar("127.0.0.1:5000/test/busybox"),
            "127.0.0.1:5000/test/busybox"
        );
    }
}
