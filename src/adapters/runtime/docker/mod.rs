//! The Docker backend: a build's steps as containers on one Docker engine ([`engine::Engine`]).
//!
//! What a build is made of here, all labelled `builder.build=<id>` and named after the build:
//! * volumes for the workspace, the home directory, each named volume, each step's output
//!   directory (a volume rather than a tmpfs, so that it can be read once the step has exited),
//!   and the gate's shell;
//! * a network of the build's own, which steps join and which `--network cloudbuild` names in
//!   what steps ask of the engine;
//! * a container per step, with the build's own engine endpoint ([`proxy`]) mounted as
//!   `/var/run/docker.sock`, so that steps drive the engine within the build's scope;
//! * one container made only to reach the volumes through the engine's archive API (the seed:
//!   it fills the workspace, and reads the outputs and the workspace back), created from a step
//!   image with a command of builder's own and never started, so that images without CMD or
//!   ENTRYPOINT work; it stays until the teardown, so that no step waits for its removal and
//!   reading back needs no container of its own.
//!
//! A step created ahead of its turn is started at the [`gate`], which holds it before its
//! command until [`Backend::start_step`] releases it.

pub mod engine;
pub mod gate;
pub mod proxy;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use tokio_util::io::{StreamReader, SyncIoBridge};
use tracing::Instrument as _;

use self::engine::{ContainerSpec, Engine, ImageInfo, Labels, Mount, MountSource, Stdin};
use self::proxy::{Endpoint, Scope};
use super::{Backend, BuildSpec, LogChunk, Resources, RuntimeError, StepImage, StepSpec};

/// Label carried by every resource of a build, with the build id as value.
pub const BUILD_LABEL: &str = "builder.build";
/// Label carried by a step's container, with the step's index as value.
const STEP_LABEL: &str = "builder.step";
/// Label of the containers builder makes only to reach a build's volumes: the build's endpoint
/// hides them from its steps, which could otherwise remove them (`docker rm -f $(docker ps -aq)`).
const VOLUMES_LABEL: &str = "builder.volumes";
/// Where steps find the engine, and where the engine's own socket is unless `DOCKER_HOST` says.
const DOCKER_SOCKET: &str = "/var/run/docker.sock";
/// The command of the containers made only to reach a build's volumes through the engine's
/// archive API. They are never started, but the engine refuses to create a container without a
/// command, and many images (`docker import`, `FROM scratch`, distroless) have none.
const NEVER_STARTED: &str = "/builder/never-started";

/// A [`Backend`] on one Docker engine.
#[derive(Clone)]
pub struct DockerBackend {
    engine: Engine,
    /// The engine's Unix socket, which the builds' endpoints forward to; `None` for an engine
    /// reached over TCP, whose host could not mount an endpoint's socket.
    engine_socket: Option<PathBuf>,
    /// Where each build's endpoint has a directory of its own (root's only), named by its id.
    endpoints: PathBuf,
    /// The builds set up and not torn down yet, by id.
    builds: Arc<Mutex<HashMap<String, Arc<Build>>>>,
}

/// What the backend keeps of a build between calls.
struct Build {
    spec: BuildSpec,
    /// The build's engine endpoint, from early in its setup to its teardown.
    endpoint: Mutex<Option<Arc<Endpoint>>>,
    /// What [`Backend::step_image`] found, by image id, for [`Backend::create_step`].
    images: Mutex<HashMap<String, ImageInfo>>,
    /// The stdin of each step held at the gate, until its release.
    held: Mutex<HashMap<usize, Stdin>>,
    /// Each step's output, attached before its command runs, until `step_logs` takes it.
    attached: Mutex<HashMap<usize, Output>>,
    /// Whether the seed container was made (it was not when no step image could be had).
    seeded: std::sync::atomic::AtomicBool,
    /// The removal of the build's network, begun once its steps were over, for the teardown to
    /// wait for.
    network_removal: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// A step's output as [`Engine::attach_output`] streams it.
type Output = BoxStream<'static, Result<LogChunk, RuntimeError>>;

impl DockerBackend {
    /// Connects to the engine named by `DOCKER_HOST`, or the local socket `/var/run/docker.sock`.
    pub async fn connect() -> Result<Self, RuntimeError> {
        let host = std::env::var("DOCKER_HOST").unwrap_or_default();
        Ok(Self::on(Engine::connect().await?, &host))
    }

    /// Connects to the engine at `host` (`unix:///path`, `tcp://host:port` or `http://…`).
    pub async fn connect_to(host: &str) -> Result<Self, RuntimeError> {
        Ok(Self::on(Engine::connect_to(host).await?, host))
    }

    fn on(engine: Engine, host: &str) -> Self {
        let engine_socket = match host.strip_prefix("unix://") {
            Some(path) => Some(PathBuf::from(path)),
            None if host.is_empty() => Some(PathBuf::from(DOCKER_SOCKET)),
            None => None,
        };
        Self {
            engine,
            engine_socket,
            endpoints: std::env::temp_dir().join("builder-endpoints"),
            builds: Arc::default(),
        }
    }

    /// Starts the build's engine endpoint.
    fn start_endpoint(&self, build: &Build) -> Result<(), RuntimeError> {
        let spec = &build.spec;
        let engine = self.engine_socket.clone().ok_or_else(|| {
            RuntimeError::Invalid(
                "steps reach the engine through an endpoint of their build's, a socket the \
                 engine mounts into them: the engine must run on this machine, behind a Unix \
                 socket (DOCKER_HOST=unix://…), not over TCP"
                    .into(),
            )
        })?;
        let scope = Scope {
            build: spec.id.clone(),
            network: name(&spec.id, "network"),
            workspace: spec.workspace.clone(),
            workspace_volume: name(&spec.id, "workspace"),
            trusted: spec.trusted,
            aliases: spec.aliases.clone(),
            credentials: spec.credentials.clone(),
        };
        let socket = self.endpoints.join(&spec.id).join("docker.sock");
        let endpoint = Endpoint::start(socket, engine, scope).map_err(|e| {
            RuntimeError::Engine(format!("starting the build's engine endpoint: {e}"))
        })?;
        *lock(&build.endpoint) = Some(Arc::new(endpoint));
        Ok(())
    }

    fn build(&self, build: &str) -> Result<Arc<Build>, RuntimeError> {
        lock(&self.builds)
            .get(build)
            .cloned()
            .ok_or_else(|| RuntimeError::Invalid(format!("build {build:?} is not set up")))
    }

    /// The image a step runs, if it is local: as on Cloud Build, an image the engine has under
    /// the step's written name runs as is (an earlier step may have built it); only then do the
    /// aliases and mirrors count.
    async fn local_step_image(
        &self,
        build: &Build,
        step: usize,
    ) -> Result<Option<StepImage>, RuntimeError> {
        let spec = step_spec(build, step)?;
        for image in [&spec.name, &spec.image] {
            if let Some(info) = self.engine.local_image(image).await? {
                return Ok(Some(build.remember(image, info)));
            }
        }
        Ok(None)
    }

    /// The image step `step` runs, made local: pulled through its alias or mirror, with its
    /// registry's credentials, when the engine has neither it nor the written name.
    async fn fetch_step_image(
        &self,
        build: &Build,
        step: usize,
    ) -> Result<StepImage, RuntimeError> {
        if let Some(found) = self.local_step_image(build, step).await? {
            return Ok(found);
        }
        let image = &step_spec(build, step)?.image;
        let auth = build.spec.credentials.auth(image).await?;
        let info = self.engine.ensure_image(image, auth.as_ref()).await?;
        Ok(build.remember(image, info))
    }

    /// The first step image that is local or can be pulled, for a container that only reaches
    /// the build's volumes; a missing one is the step's failure to report, not the build's.
    async fn volume_image(&self, build: &Build) -> Result<Option<String>, RuntimeError> {
        for step in 0..build.spec.steps.len() {
            match self.fetch_step_image(build, step).await {
                Ok(image) => return Ok(Some(image.name)),
                Err(RuntimeError::ImageNotFound { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Creates the build's networks and volumes, makes every volume writable by any user and
    /// fills the workspace. The networks are created meanwhile: nothing before the first step
    /// needs them.
    async fn setup(&self, build: &Build) -> Result<(), RuntimeError> {
        let id = &build.spec.id;
        self.start_endpoint(build)?;
        let (network, labels) = (name(id, "network"), labels(id, None));
        let network = self.engine.create_network(&network, &labels);
        // Both run to their end even when one fails: a container request dropped in flight could
        // still create its container after the teardown has looked.
        let (network, volumes) = tokio::join!(network, self.setup_volumes(build));
        network.map_err(|e| RuntimeError::Engine(format!("preparing the build: {e}")))?;
        volumes
    }

    /// Creates the build's volumes, makes every one writable by any user and fills the
    /// workspace.
    async fn setup_volumes(&self, build: &Build) -> Result<(), RuntimeError> {
        let spec = &build.spec;
        let labels = labels(&spec.id, None);
        // Each build volume, and where the seed container mounts it.
        let user_volumes = spec.steps.iter().flat_map(|s| &s.volumes);
        let gate = gate::available().then(|| ("gate".to_string(), gate::DIR.to_string()));
        let outputs =
            (0..spec.steps.len()).map(|i| (outputs_volume(i), format!("{}/{i}", spec.outputs)));
        let volumes: BTreeMap<String, String> = [
            ("workspace".to_string(), spec.workspace.clone()),
            ("home".to_string(), spec.home.clone()),
        ]
        .into_iter()
        .chain(gate)
        .chain(outputs)
        .chain(user_volumes.map(|v| (user_volume(&v.name), format!("/builder/volumes/{}", v.name))))
        .collect();
        let created = futures_util::future::join_all(volumes.keys().map(|volume| {
            let name = name(&spec.id, volume);
            let labels = &labels;
            async move { self.engine.create_volume(&name, labels).await }
        }))
        .await;
        created
            .into_iter()
            .collect::<Result<(), _>>()
            .map_err(|e| RuntimeError::Engine(format!("preparing the build: {e}")))?;
        let archive = seed_archive(spec.source.as_deref(), volumes.values())
            .map_err(|e| RuntimeError::Source(format!("packing the workspace: {e}")))?;
        let filling = |e| RuntimeError::Engine(format!("filling /workspace: {e}"));
        // The engine copies files into a volume only through a container that mounts it; it is
        // created, never started, so any local image will do: the first step image there is.
        // With none, no step can run either, and the steps report the missing images.
        let Some(image) = self.volume_image(build).await.map_err(filling)? else {
            return Ok(());
        };
        let mounts = volumes
            .iter()
            .map(|(volume, path)| volume_mount(&name(&spec.id, volume), path))
            .collect();
        let seed = volume_access(&spec.id, image, mounts);
        self.engine.create_container(&seed).await.map_err(filling)?;
        build.seeded.store(true, Ordering::Relaxed);
        self.engine
            .upload(&seed.name, "/", archive)
            .await
            .map_err(filling)
    }

    /// The seed container, which mounts every volume of the build, to read them back through.
    fn seed(&self, build: &Build) -> Option<String> {
        (build.seeded.load(Ordering::Relaxed)).then(|| seed_name(&build.spec.id))
    }
}

#[async_trait]
impl Backend for DockerBackend {
    async fn ping(&self) -> Result<String, RuntimeError> {
        self.engine.ping().await
    }

    async fn setup_build(&self, spec: &BuildSpec) -> Result<(), RuntimeError> {
        let build = Arc::new(Build {
            spec: spec.clone(),
            endpoint: Mutex::default(),
            images: Mutex::default(),
            held: Mutex::default(),
            attached: Mutex::default(),
            seeded: Default::default(),
            network_removal: Mutex::default(),
        });
        // Known before anything is made, so that a teardown after a failed setup finds it.
        lock(&self.builds).insert(spec.id.clone(), build.clone());
        self.setup(&build).await
    }

    async fn step_image(
        &self,
        build: &str,
        step: usize,
        fetch: bool,
    ) -> Result<Option<StepImage>, RuntimeError> {
        let build = self.build(build)?;
        if fetch {
            self.fetch_step_image(&build, step).await.map(Some)
        } else {
            self.local_step_image(&build, step).await
        }
    }

    async fn create_step(
        &self,
        build: &str,
        step: usize,
        image: &StepImage,
        ahead: bool,
    ) -> Result<(), RuntimeError> {
        let build = self.build(build)?;
        let info = lock(&build.images).get(&image.id).cloned();
        let info = info.ok_or_else(|| {
            RuntimeError::Invalid(format!(
                "image {:?} was not chosen by step_image",
                image.name
            ))
        })?;
        let step_spec = step_spec(&build, step)?;
        let endpoint = lock(&build.endpoint).clone();
        let socket = endpoint.as_ref().map(|e| e.socket().to_path_buf());
        let socket = socket.ok_or_else(|| {
            RuntimeError::Invalid(format!("build {:?} has no engine endpoint", build.spec.id))
        })?;
        let mut spec = container_spec(&build.spec, step, step_spec, &image.name, socket);
        let name = spec.name.clone();
        // Ahead of its turn, the container is started too, held at the gate until then.
        let command = gate::command(spec.entrypoint.as_deref(), &spec.args, &info);
        let hold = ahead && gate::available() && !command.is_empty();
        if hold {
            spec.entrypoint = Some(gate::held(command));
            spec.args = Vec::new();
            spec.stdin_open = true;
            spec.mounts.push(Mount {
                read_only: true,
                ..volume_mount(&self::name(&build.spec.id, "gate"), gate::DIR)
            });
        }
        self.engine.create_container(&spec).await?;
        if let Some(script) = &step_spec.script {
            // Packing a file in memory: this cannot fail short of running out of memory.
            let archive =
                script_file(step, script).map_err(|e| RuntimeError::Engine(e.to_string()))?;
            self.engine.upload(&name, "/", archive).await?;
        }
        if hold {
            let stdin = self.engine.attach_stdin(&name).await?;
            let output = self.engine.attach_output(&name).await?;
            self.engine.start_container(&name).await?;
            lock(&build.held).insert(step, stdin);
            lock(&build.attached).insert(step, output);
        }
        Ok(())
    }

    async fn start_step(&self, build: &str, step: usize) -> Result<(), RuntimeError> {
        let known = self.build(build)?;
        let held = lock(&known.held).remove(&step);
        match held {
            Some(stdin) => gate::release(stdin)
                .await
                .map_err(|e| RuntimeError::Engine(format!("releasing the step's container: {e}"))),
            None => {
                let name = step_name(build, step);
                let output = self.engine.attach_output(&name).await?;
                self.engine.start_container(&name).await?;
                lock(&known.attached).insert(step, output);
                Ok(())
            }
        }
    }

    fn step_logs(
        &self,
        build: &str,
        step: usize,
    ) -> BoxStream<'static, Result<LogChunk, RuntimeError>> {
        let attached = (self.build(build).ok()).and_then(|b| lock(&b.attached).remove(&step));
        // The attach is the only copy of the output: the engine keeps no log of a step's.
        attached.unwrap_or_else(|| {
            let taken = format!(
                "step {step} of build {build:?} was not started here, or its output was read \
                 already"
            );
            futures_util::stream::once(async { Err(RuntimeError::Invalid(taken)) }).boxed()
        })
    }

    async fn wait_step(&self, build: &str, step: usize) -> Result<i64, RuntimeError> {
        let endpoint = self
            .build(build)
            .ok()
            .and_then(|b| lock(&b.endpoint).clone());
        let container = step_name(build, step);
        let wait = self.engine.wait_container(&container);
        let Some(endpoint) = endpoint else {
            return wait.await;
        };
        // A step that uses the engine would hang or fail obscurely without its endpoint.
        tokio::select! {
            code = wait => code,
            reason = endpoint.died() => Err(RuntimeError::Engine(format!(
                "the build's engine endpoint (the step's /var/run/docker.sock) died: {reason}"
            ))),
        }
    }

    async fn stop_step(
        &self,
        build: &str,
        step: usize,
        grace: Duration,
    ) -> Result<(), RuntimeError> {
        self.engine
            .stop_container(&step_name(build, step), grace)
            .await
    }

    async fn step_outputs(
        &self,
        build: &str,
        limit: usize,
    ) -> Result<Vec<Option<Vec<u8>>>, RuntimeError> {
        let known = self.build(build)?;
        // The steps are over, and so is their network's use: it goes meanwhile (the engine takes
        // a tenth of a second), while the outputs are read and the teardown removes the seed
        // container. A container a step left on it keeps it there for the teardown's sweep.
        let (engine, network) = (self.engine.clone(), name(build, "network"));
        let removal = tokio::spawn(
            async move {
                if let Err(e) = engine.remove_network(&network).await {
                    tracing::debug!(error = %e, "the build's network stays for its teardown");
                }
            }
            .in_current_span(),
        );
        *lock(&known.network_removal) = Some(removal);
        self.read_outputs(&known, limit).await
    }

    async fn missing_command(&self, build: &str, step: usize) -> Option<String> {
        let known = self.build(build).ok()?;
        let spec = known.spec.steps.get(step)?;
        let interpreter = spec.script.as_deref().and_then(interpreter)?;
        // The engine says only "no such file or directory", of the script.
        match self
            .engine
            .download(&step_name(build, step), interpreter)
            .next()
            .await
        {
            Some(Ok(_)) => None,
            _ => Some(format!(
                "the script's interpreter {interpreter:?} (its #! line) is not in the step's \
                 image {:?}",
                spec.name
            )),
        }
    }

    async fn remove_step(&self, build: &str, step: usize) -> Result<(), RuntimeError> {
        if let Ok(known) = self.build(build) {
            // An unreleased gate lets its container end without running the step's command.
            lock(&known.held).remove(&step);
            lock(&known.attached).remove(&step);
        }
        self.engine.remove_container(&step_name(build, step)).await
    }

    async fn read_workspace(
        &self,
        build: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, RuntimeError>>, RuntimeError> {
        let known = self.build(build)?;
        let seed = self
            .seed(&known)
            .ok_or_else(|| RuntimeError::Invalid("no step image is local".to_string()))?;
        Ok(self.engine.download(&seed, &known.spec.workspace))
    }

    async fn image_exists(&self, _build: &str, image: &str) -> Result<bool, RuntimeError> {
        Ok(self.engine.local_image(image).await?.is_some())
    }

    async fn push_image(
        &self,
        build: &str,
        image: &str,
        target: &str,
    ) -> Result<String, RuntimeError> {
        let credentials = self.build(build)?.spec.credentials.clone();
        if target != image {
            self.engine.tag_image(image, target).await?;
        }
        let auth = credentials.auth(target).await?;
        self.engine.push_image(target, auth.as_ref()).await
    }

    async fn teardown_build(&self, build: &str) -> Result<(), RuntimeError> {
        // Dropped first: an unreleased gate's stdin ends, so its container ends on its own.
        let known = lock(&self.builds).remove(build);
        let network_removal = known.and_then(|known| lock(&known.network_removal).take());
        // The seed container goes while the network does; what either leaves, the sweep finds.
        let seed = async {
            if let Err(e) = self.engine.remove_container(&seed_name(build)).await {
                tracing::debug!(error = %e, "the seed container stays for the sweep");
            }
        };
        let network = async {
            if let Some(removal) = network_removal {
                let _ = removal.await;
            }
        };
        tokio::join!(seed, network);
        self.sweep(build).await.map(drop)
    }

    async fn sweep(&self, build: &str) -> Result<Resources, RuntimeError> {
        // A dead process's endpoint directory; its socket serves no one.
        let dir = self.endpoints.join(build);
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(error = %e, dir = %dir.display(), "removing an endpoint directory");
        }
        self.engine.sweep(BUILD_LABEL, build).await
    }

    async fn leftovers(&self, build: &str) -> Result<Resources, RuntimeError> {
        self.engine.labelled(BUILD_LABEL, build).await
    }

    async fn builds(&self) -> Result<Vec<String>, RuntimeError> {
        self.engine.label_values(BUILD_LABEL).await
    }
}

impl DockerBackend {
    /// What each step left in its output directory, read from the seed container (which mounts
    /// step INDEX's output volume at `OUTPUTS/INDEX`) in one archive.
    async fn read_outputs(
        &self,
        build: &Build,
        limit: usize,
    ) -> Result<Vec<Option<Vec<u8>>>, RuntimeError> {
        let steps = build.spec.steps.len();
        let Some(seed) = self.seed(build) else {
            return Ok(vec![None; steps]);
        };
        let outputs = build.spec.outputs.trim_end_matches('/');
        // The archive's entries are under the directory's own name.
        let top = outputs.rsplit('/').next().unwrap_or_default().to_string();
        let archive = self
            .engine
            .download(&seed, outputs)
            .map_err(io::Error::other);
        let archive = SyncIoBridge::new(StreamReader::new(archive));
        tokio::task::spawn_blocking(move || output_files(archive, &top, steps, limit))
            .await
            .map_err(io::Error::other)
            .and_then(|read| read)
            .map_err(|e| RuntimeError::Engine(e.to_string()))
    }
}

impl Build {
    /// Keeps what an image look-up found, for creating the step's container from it.
    fn remember(&self, name: &str, info: ImageInfo) -> StepImage {
        let image = StepImage {
            name: name.to_string(),
            id: info.id.clone(),
            digest: info.digest.clone(),
        };
        lock(&self.images).insert(info.id.clone(), info);
        image
    }
}

/// The maps here are only held for an insert or a removal, which cannot leave them
/// inconsistent, so a panic elsewhere while one was held does not make it unusable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn step_spec(build: &Build, step: usize) -> Result<&StepSpec, RuntimeError> {
    build.spec.steps.get(step).ok_or_else(|| {
        RuntimeError::Invalid(format!("build {:?} has no step {step}", build.spec.id))
    })
}

/// The engine-wide name of a build's resource.
fn name(build: &str, what: &str) -> String {
    format!("builder-{build}-{what}")
}

/// The container of step `step`; every step call finds it by this name.
fn step_name(build: &str, step: usize) -> String {
    name(build, &format!("step-{step}"))
}

fn labels(build: &str, step: Option<usize>) -> Labels {
    let mut labels = Labels::from([(BUILD_LABEL.to_string(), build.to_string())]);
    if let Some(step) = step {
        labels.insert(STEP_LABEL.to_string(), step.to_string());
    }
    labels
}

/// The suffix of the engine volume that backs a config's named volume.
fn user_volume(name: &str) -> String {
    format!("volume-{name}")
}

/// The suffix of the engine volume that is step `index`'s output directory.
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

fn seed_name(build: &str) -> String {
    name(build, "seed")
}

/// The seed container, made only to reach the build's volumes through, never started.
fn volume_access(build: &str, image: String, mounts: Vec<Mount>) -> ContainerSpec {
    let mut labels = labels(build, None);
    labels.insert(VOLUMES_LABEL.to_string(), "seed".to_string());
    ContainerSpec {
        name: seed_name(build),
        image,
        entrypoint: Some(vec![NEVER_STARTED.to_string()]),
        mounts,
        labels,
        ..ContainerSpec::default()
    }
}

/// A tar for `/` of the seed container: the directory's contents under `workspace/`, the gate's
/// shell (when the gate is available, its volume is among the mount points), then each
/// volume's mount point as a directory entry with mode 0777, so that builders running as any
/// user can write to `/workspace`, `HOME` and the named volumes (the engine applies a named
/// directory entry's mode to the volume's root). Last, because the contents start with an entry
/// for the directory itself, with its own mode (0700 for a temporary directory). Symlinks are
/// stored, not followed.
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

/// The first `limit` bytes of each step's `TOP/INDEX/output` in an archive of the directory
/// `TOP` of every step's output directory, by index.
fn output_files(
    archive: impl io::Read,
    top: &str,
    steps: usize,
    limit: usize,
) -> io::Result<Vec<Option<Vec<u8>>>> {
    use std::io::Read;
    let mut outputs = vec![None; steps];
    let mut archive = tar::Archive::new(archive);
    for entry in archive.entries()? {
        let entry = entry?;
        let path = entry.path()?.into_owned();
        let index = match path.iter().map(|c| c.to_str()).collect::<Vec<_>>()[..] {
            [Some(dir), Some(index), Some("output")] if dir == top => index.parse::<usize>().ok(),
            _ => None,
        };
        if let Some(slot) = index.and_then(|i| outputs.get_mut(i))
            && entry.header().entry_type().is_file()
        {
            let mut output = Vec::new();
            entry.take(limit as u64).read_to_end(&mut output)?;
            *slot = Some(output);
        }
    }
    Ok(outputs)
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

/// The container of step `index` of `build`, `step`, running `image`.
fn container_spec(
    build: &BuildSpec,
    index: usize,
    step: &StepSpec,
    image: &str,
    endpoint: PathBuf,
) -> ContainerSpec {
    let id = &build.id;
    let mut mounts = vec![
        volume_mount(&name(id, "workspace"), &build.workspace),
        volume_mount(&name(id, "home"), &build.home),
        Mount {
            source: MountSource::Bind(endpoint),
            target: DOCKER_SOCKET.to_string(),
            read_only: false,
        },
        // Writable by any user: the seed container gave the volume's root mode 0777.
        volume_mount(&name(id, &outputs_volume(index)), &build.outputs),
    ];
    mounts.extend(
        step.volumes
            .iter()
            .map(|v| volume_mount(&name(id, &user_volume(&v.name)), &v.path)),
    );
    let entrypoint = match (&step.script, &step.entrypoint) {
        (Some(_), _) => Some(vec![script_path(index)]),
        (None, Some(entrypoint)) => Some(vec![entrypoint.clone()]),
        (None, None) => None,
    };
    ContainerSpec {
        name: step_name(id, index),
        image: image.to_string(),
        entrypoint,
        args: step.args.clone(),
        env: step.env.clone(),
        working_dir: step.dir.clone(),
        mounts,
        network: Some(name(id, "network")),
        labels: labels(id, Some(index)),
        // Cloud Build runs steps privileged; here the mounted socket is what lets steps use the
        // engine, and privileged containers are refused by engines in user namespaces.
        privileged: false,
        ..ContainerSpec::default()
    }
}
