//! Integration tests of the Docker backend against the real engine and the registry on 127.0.0.1:5000
//! (both started by `scripts/dev-env.sh`), in two parts:
//! * the conformance suite of the `Backend` contract ([`conformance`]): each check takes any
//!   backend, so a second one runs the same checks by adding its own `#[tokio::test]`s; here
//!   they run against `DockerBackend`, each under a build id of its own, and end by checking
//!   that the build left nothing behind;
//! * the engine API the Docker backend is built of ([`Engine`]): each test labels what it
//!   creates with its own value of `builder.test` and ends by checking that nothing carrying that
//!   label is left.

use std::future::Future;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use builder::adapters::runtime::docker::engine::{
    ContainerSpec, Engine, Labels, Mount, MountSource,
};
use builder::adapters::runtime::{DockerBackend, LogChunk, LogStream, Resources, RuntimeError};
use futures_util::{StreamExt, TryStreamExt};
use tokio::io::AsyncWriteExt;

const LABEL: &str = "builder.test";
const BUSYBOX: &str = "builder/busybox:latest";
/// Upper bound for anything a test waits on; reaching it is a failure, not a synchronisation.
const DEADLINE: Duration = Duration::from_secs(60);

/// One test's engine connection and unique id (used in names and as its label value).
struct Harness {
    runtime: Engine,
    id: String,
}

struct Output {
    code: i64,
    stdout: String,
    stderr: String,
}

impl Harness {
    async fn new(test: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .subsec_nanos();
        let id = format!(
            "rt-{test}-{}-{nanos}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let runtime = Engine::connect()
            .await
            .expect("Docker engine (run scripts/dev-env.sh as root)");
        Self { runtime, id }
    }

    fn name(&self, what: &str) -> String {
        format!("{}-{what}", self.id)
    }

    fn labels(&self) -> Labels {
        Labels::from([(LABEL.to_owned(), self.id.clone())])
    }

    fn spec(&self, what: &str, args: &[&str]) -> ContainerSpec {
        ContainerSpec {
            name: self.name(what),
            image: BUSYBOX.to_owned(),
            entrypoint: None,
            args: args.iter().map(|arg| arg.to_string()).collect(),
            env: Vec::new(),
            working_dir: String::new(),
            user: None,
            mounts: Vec::new(),
            network: None,
            labels: self.labels(),
            privileged: false,
            stdin_open: false,
        }
    }

    /// The whole lifecycle: create, start, follow logs while waiting, remove.
    async fn run(&self, spec: &ContainerSpec) -> Output {
        self.run_seeded(spec, None).await
    }

    /// [`Harness::run`], uploading `seed` (a path and a tar) into the created container first.
    async fn run_seeded(&self, spec: &ContainerSpec, seed: Option<(&str, Vec<u8>)>) -> Output {
        let runtime = &self.runtime;
        runtime.create_container(spec).await.expect("create");
        if let Some((path, archive)) = seed {
            runtime
                .upload(&spec.name, path, archive)
                .await
                .expect("upload");
        }
        let output = runtime.attach_output(&spec.name).await.expect("attach");
        runtime.start_container(&spec.name).await.expect("start");
        let logs = tokio::spawn(output.try_collect::<Vec<_>>());
        let code = within("wait", runtime.wait_container(&spec.name))
            .await
            .expect("wait");
        let chunks = within("logs to end", logs)
            .await
            .expect("log task")
            .expect("logs");
        runtime.remove_container(&spec.name).await.expect("remove");
        let (stdout, stderr) = split(&chunks);
        Output {
            code,
            stdout,
            stderr,
        }
    }

    async fn assert_no_leaks(&self) {
        let left = self.runtime.labelled(LABEL, &self.id).await.expect("list");
        assert_eq!(left, Resources::default(), "left behind by {}", self.id);
    }
}

async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within {DEADLINE:?}"))
}

fn split(chunks: &[LogChunk]) -> (String, String) {
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    for chunk in chunks {
        match chunk.stream {
            LogStream::Stdout => stdout.extend_from_slice(&chunk.bytes),
            LogStream::Stderr => stderr.extend_from_slice(&chunk.bytes),
        }
    }
    (
        String::from_utf8(stdout).expect("utf-8 stdout"),
        String::from_utf8(stderr).expect("utf-8 stderr"),
    )
}

fn volume(name: &str, target: &str) -> Mount {
    Mount {
        source: MountSource::Volume(name.to_owned()),
        target: target.to_owned(),
        read_only: false,
    }
}

/// A tar archive of directories (`None`) and files, owned by root, with the given modes.
fn archive(entries: &[(&str, u32, Option<&str>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, mode, content) in entries {
        let mut header = tar::Header::new_ustar();
        header.set_mode(*mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        let data = content.unwrap_or_default().as_bytes();
        header.set_entry_type(match content {
            Some(_) => tar::EntryType::Regular,
            None => tar::EntryType::Directory,
        });
        header.set_size(data.len() as u64);
        builder
            .append_data(&mut header, path, data)
            .expect("tar entry");
    }
    builder.into_inner().expect("tar")
}

/// Local image references a test made; untagged when it ends, even by a failed assertion.
struct Tags(Vec<String>);

impl Drop for Tags {
    fn drop(&mut self) {
        // Untagging only: the image itself is `builder/busybox`, which stays.
        let _ = Command::new("docker").arg("rmi").args(&self.0).output();
    }
}

/// The `Backend` contract, as checks over any backend. Step images are `builder/busybox`
/// (`scripts/dev-env.sh` makes it); a backend under test must have it at hand.
mod conformance {
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::time::Duration;

    use builder::adapters::runtime::{
        Backend, BuildSpec, Credentials, RegistryAuth, Resources, RuntimeError, StepImage,
        StepSpec, Volume,
    };
    use builder::core::alias::Aliases;
    use futures_util::TryStreamExt;

    use super::{BUSYBOX, split, within};

    /// Anonymous access to every registry.
    struct Anonymous;

    #[async_trait::async_trait]
    impl Credentials for Anonymous {
        async fn auth(&self, _image: &str) -> Result<Option<RegistryAuth>, RuntimeError> {
            Ok(None)
        }
    }

    /// A step of `builder/busybox` running `script` in the workspace, its `HOME` the build's
    /// (as the plan sets it).
    pub fn script(script: &str) -> StepSpec {
        StepSpec {
            name: BUSYBOX.to_owned(),
            image: BUSYBOX.to_owned(),
            script: Some(script.to_owned()),
            env: vec!["HOME=/builder/home".to_owned()],
            dir: "/workspace".to_owned(),
            ..StepSpec::default()
        }
    }

    pub fn build(id: &str, source: Option<PathBuf>, steps: Vec<StepSpec>) -> BuildSpec {
        BuildSpec {
            id: id.to_owned(),
            source,
            workspace: "/workspace".to_owned(),
            home: "/builder/home".to_owned(),
            outputs: "/builder/outputs".to_owned(),
            steps,
            credentials: Arc::new(Anonymous),
            trusted: false,
            aliases: Aliases::load(None).expect("the shipped alias table"),
        }
    }

    /// What a step printed and how it ended.
    pub struct Ran {
        pub code: i64,
        pub stdout: String,
        pub stderr: String,
    }

    /// Chooses step `step`'s image (fetching it), creates and starts the step, follows it while
    /// waiting for it, and removes it.
    pub async fn run(backend: &dyn Backend, build: &str, step: usize) -> Ran {
        let image = backend.step_image(build, step, true).await.expect("image");
        let image = image.expect("an image, fetched if need be");
        backend
            .create_step(build, step, &image, false)
            .await
            .expect("create");
        let ran = started(backend, build, step).await;
        backend.remove_step(build, step).await.expect("remove");
        ran
    }

    /// Starts the created step `step`, follows it while waiting for it.
    pub async fn started(backend: &dyn Backend, build: &str, step: usize) -> Ran {
        backend.start_step(build, step).await.expect("start");
        let (code, chunks) = within(
            "the step's end",
            futures_util::future::join(
                backend.wait_step(build, step),
                backend.step_logs(build, step).try_collect::<Vec<_>>(),
            ),
        )
        .await;
        let (stdout, stderr) = split(&chunks.expect("logs"));
        Ran {
            code: code.expect("wait"),
            stdout,
            stderr,
        }
    }

    pub async fn torn_down(backend: &dyn Backend, build: &str) {
        backend.teardown_build(build).await.expect("teardown");
        let left = backend.leftovers(build).await.expect("leftovers");
        assert_eq!(left, Resources::default(), "left behind by {build}");
    }

    /// Steps share the workspace (filled from the source), the home directory and named
    /// volumes; output keeps its streams apart, a last line without a newline included; the
    /// exit code is an outcome; a step's output file and the workspace can be read back.
    pub async fn a_build_shares_its_workspace_and_reads_back(backend: &dyn Backend, id: &str) {
        let source = tempfile::tempdir().expect("source dir");
        std::fs::write(source.path().join("in.txt"), "from the source\n").expect("source file");
        let cache = vec![Volume {
            name: "cache".to_owned(),
            path: "/cache".to_owned(),
        }];
        let first = StepSpec {
            volumes: cache.clone(),
            ..script(
                "cat in.txt; echo oops >&2; echo made > made.txt; echo home > \"$HOME/h\"
                 echo cached > /cache/c; printf 0123456789 > /builder/outputs/output
                 printf 'no newline'; exit 3",
            )
        };
        let second = StepSpec {
            volumes: cache,
            ..script("cat made.txt \"$HOME/h\" /cache/c")
        };
        let spec = build(id, Some(source.path().to_owned()), vec![first, second]);
        backend.setup_build(&spec).await.expect("setup");
        let image = backend.step_image(id, 0, true).await.unwrap().unwrap();
        backend.create_step(id, 0, &image, false).await.unwrap();
        let ran = started(backend, id, 0).await;
        assert_eq!(ran.code, 3);
        assert_eq!(ran.stdout, "from the source\nno newline");
        assert_eq!(ran.stderr, "oops\n");
        backend.remove_step(id, 0).await.expect("remove");
        let ran = run(backend, id, 1).await;
        assert_eq!((ran.code, ran.stdout.as_str()), (0, "made\nhome\ncached\n"));
        // Each step's output file, its first bytes, readable once the steps have ended.
        let outputs = backend.step_outputs(id, 4).await.expect("outputs");
        assert_eq!(outputs, [Some(b"0123".to_vec()), None]);

        let archive: Vec<u8> = backend
            .read_workspace(id)
            .await
            .expect("workspace")
            .map_ok(|chunk| chunk.to_vec())
            .try_concat()
            .await
            .expect("archive");
        let mut names = Vec::new();
        for entry in tar::Archive::new(&archive[..]).entries().expect("tar") {
            names.push(
                entry
                    .unwrap()
                    .path()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
        assert!(
            names.contains(&"workspace/made.txt".to_owned()),
            "{names:?}"
        );
        torn_down(backend, id).await;
    }

    /// A step created ahead does not run its command until started; then it runs as if it
    /// had been started at once.
    pub async fn a_step_created_ahead_waits_for_its_start(backend: &dyn Backend, id: &str) {
        let held = StepSpec {
            args: vec!["held".to_owned()],
            ..script("touch ran; echo \"$1 in $(pwd)\"")
        };
        let steps = vec![held, script("ls ran")];
        backend
            .setup_build(&build(id, None, steps))
            .await
            .expect("setup");
        let image = backend.step_image(id, 0, false).await.expect("image");
        let image: StepImage = image.expect("builder/busybox is at hand");
        backend
            .create_step(id, 0, &image, true)
            .await
            .expect("create ahead");
        assert_eq!(
            run(backend, id, 1).await.code,
            1,
            "step 0 ran before its start"
        );
        let ran = started(backend, id, 0).await;
        assert_eq!((ran.code, ran.stdout.as_str()), (0, "held in /workspace\n"));
        backend.remove_step(id, 0).await.expect("remove");
        assert_eq!(run(backend, id, 1).await.code, 0);
        torn_down(backend, id).await;
    }

    /// A step that names its written image runs it when the backend has it, else its fallback;
    /// a fallback not at hand is `None` without fetching and `ImageNotFound` with.
    pub async fn the_written_name_wins_over_the_fallback(backend: &dyn Backend, id: &str) {
        let absent = format!("localhost:5000/absent/{id}:1");
        let steps = vec![
            StepSpec {
                name: absent.clone(),
                ..script("true")
            },
            StepSpec {
                image: absent.clone(),
                ..script("true")
            },
            StepSpec {
                name: absent.clone(),
                image: absent.clone(),
                ..script("true")
            },
        ];
        backend
            .setup_build(&build(id, None, steps))
            .await
            .expect("setup");
        let chosen = |step| async move {
            let image = backend.step_image(id, step, false).await.expect("image");
            image.map(|image| image.name)
        };
        assert_eq!(chosen(0).await.as_deref(), Some(BUSYBOX));
        assert_eq!(chosen(1).await.as_deref(), Some(BUSYBOX));
        assert_eq!(chosen(2).await, None);
        let error = backend.step_image(id, 2, true).await.expect_err("absent");
        assert!(
            matches!(&error, RuntimeError::ImageNotFound { image, .. } if *image == absent),
            "{error:?}"
        );
        torn_down(backend, id).await;
    }

    /// A stopped step ends (SIGTERM first); stop and removal are safe in any state, for steps
    /// never created too.
    pub async fn stop_and_removal_are_safe_in_any_state(backend: &dyn Backend, id: &str) {
        let steps = vec![script(
            "trap 'echo terminated; exit 7' TERM; echo ready; sleep 1000 & wait",
        )];
        backend
            .setup_build(&build(id, None, steps))
            .await
            .expect("setup");
        let grace = Duration::from_secs(600);
        backend
            .stop_step(id, 0, grace)
            .await
            .expect("stop, never created");
        backend
            .remove_step(id, 0)
            .await
            .expect("remove, never created");
        let image = backend.step_image(id, 0, true).await.unwrap().unwrap();
        backend
            .create_step(id, 0, &image, false)
            .await
            .expect("create");
        backend.start_step(id, 0).await.expect("start");
        let mut logs = backend.step_logs(id, 0);
        let mut stdout = String::new();
        within("ready", async {
            while !stdout.contains("ready\n") {
                let chunk = logs.try_next().await.expect("logs").expect("output");
                stdout.push_str(std::str::from_utf8(&chunk.bytes).expect("utf-8"));
            }
        })
        .await;
        // A grace longer than the deadline: finishing in time means SIGTERM alone ended it.
        within("stop", backend.stop_step(id, 0, grace))
            .await
            .expect("stop");
        assert_eq!(backend.wait_step(id, 0).await, Ok(7));
        backend.stop_step(id, 0, grace).await.expect("stop, exited");
        backend.remove_step(id, 0).await.expect("remove");
        backend.remove_step(id, 0).await.expect("remove again");
        torn_down(backend, id).await;
        backend.teardown_build(id).await.expect("teardown again");
    }

    /// A command that cannot run fails the step as `docker run` does, started at once or ahead;
    /// a script's missing interpreter is named.
    pub async fn a_command_that_cannot_run_is_the_steps_failure(backend: &dyn Backend, id: &str) {
        let missing = StepSpec {
            args: vec!["no-such-tool".to_owned()],
            script: None,
            ..script("")
        };
        let interpreter = script("#!/usr/bin/env bash\necho never");
        let steps = vec![missing.clone(), missing, interpreter];
        backend
            .setup_build(&build(id, None, steps))
            .await
            .expect("setup");
        let image = backend.step_image(id, 0, true).await.unwrap().unwrap();
        backend
            .create_step(id, 0, &image, false)
            .await
            .expect("create");
        let error = backend.start_step(id, 0).await.expect_err("not executable");
        assert!(
            matches!(&error, RuntimeError::NotExecutable { detail } if detail.contains("no-such-tool")),
            "{error:?}"
        );
        backend.remove_step(id, 0).await.expect("remove");
        backend
            .create_step(id, 1, &image, true)
            .await
            .expect("create ahead");
        let ran = started(backend, id, 1).await;
        assert_eq!(ran.code, 127);
        assert!(ran.stderr.contains("no-such-tool"), "{}", ran.stderr);
        backend.remove_step(id, 1).await.expect("remove");
        backend
            .create_step(id, 2, &image, false)
            .await
            .expect("create");
        let code = match backend.start_step(id, 2).await {
            Ok(()) => backend.wait_step(id, 2).await.expect("wait"),
            Err(RuntimeError::NotExecutable { .. }) => 127,
            Err(e) => panic!("{e:?}"),
        };
        assert_ne!(code, 0);
        let why = backend.missing_command(id, 2).await.unwrap_or_default();
        assert!(why.contains(r#"interpreter "/usr/bin/env""#), "{why}");
        backend.remove_step(id, 2).await.expect("remove");
        torn_down(backend, id).await;
    }

    /// A setup that fails (its source cannot be read) is torn down like any other.
    pub async fn a_failed_setup_is_torn_down(backend: &dyn Backend, id: &str) {
        let source = PathBuf::from(format!("/nonexistent/{id}"));
        let spec = build(id, Some(source), vec![script("true")]);
        let error = backend.setup_build(&spec).await.expect_err("no source");
        assert!(matches!(error, RuntimeError::Source(_)), "{error:?}");
        torn_down(backend, id).await;
    }

    /// A build whose process died (a fresh backend knows nothing of it) is swept by its id.
    pub async fn a_build_left_by_a_dead_process_is_swept(
        dead: &dyn Backend,
        fresh: &dyn Backend,
        id: &str,
    ) {
        dead.setup_build(&build(id, None, vec![script("sleep 1000")]))
            .await
            .expect("setup");
        let image = dead.step_image(id, 0, true).await.unwrap().unwrap();
        dead.create_step(id, 0, &image, true)
            .await
            .expect("create ahead");
        dead.start_step(id, 0).await.expect("start");
        let swept = within("sweep", fresh.sweep(id)).await.expect("sweep");
        assert!(
            !swept.containers.is_empty() && !swept.volumes.is_empty(),
            "{swept:?}"
        );
        assert_eq!(fresh.leftovers(id).await.unwrap(), Resources::default());
        assert_eq!(fresh.sweep(id).await.unwrap(), Resources::default());
        // What the dead process still knows of the build is its own; its teardown is safe.
        torn_down(dead, id).await;
    }
}

async fn docker_backend() -> DockerBackend {
    DockerBackend::connect()
        .await
        .expect("Docker engine (run scripts/dev-env.sh as root)")
}

/// A build id unique to this test and process.
fn build_id(test: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("conformance-{test}-{}-{n}", std::process::id())
}

#[tokio::test]
async fn docker_backend_shares_its_workspace_and_reads_back() {
    let backend = docker_backend().await;
    conformance::a_build_shares_its_workspace_and_reads_back(&backend, &build_id("share")).await;
}

/// The build's network goes while its steps' outputs are read, off the teardown's path; the
/// container that reads them is the one that filled the workspace.
#[tokio::test]
async fn docker_backend_removes_the_network_once_the_steps_are_over() {
    use builder::adapters::runtime::Backend;
    let backend = docker_backend().await;
    let id = build_id("network");
    let step = conformance::script("printf done > /builder/outputs/output");
    let spec = conformance::build(&id, None, vec![step]);
    backend.setup_build(&spec).await.expect("setup");
    assert_eq!(conformance::run(&backend, &id, 0).await.code, 0);
    let before = backend.leftovers(&id).await.expect("leftovers");
    assert_eq!(before.networks.len(), 1, "{before:?}");
    let outputs = backend.step_outputs(&id, 10).await.expect("outputs");
    assert_eq!(outputs, [Some(b"done".to_vec())]);
    let after = backend.leftovers(&id).await.expect("leftovers");
    assert!(after.networks.is_empty(), "{after:?}");
    assert_eq!(after.containers, [format!("builder-{id}-seed")]);
    conformance::torn_down(&backend, &id).await;
}

#[tokio::test]
async fn docker_backend_holds_a_step_created_ahead_until_its_start() {
    let backend = docker_backend().await;
    conformance::a_step_created_ahead_waits_for_its_start(&backend, &build_id("ahead")).await;
}

#[tokio::test]
async fn docker_backend_prefers_the_written_name() {
    let backend = docker_backend().await;
    conformance::the_written_name_wins_over_the_fallback(&backend, &build_id("name")).await;
}

#[tokio::test]
async fn docker_backend_stops_and_removes_in_any_state() {
    let backend = docker_backend().await;
    conformance::stop_and_removal_are_safe_in_any_state(&backend, &build_id("stop")).await;
}

#[tokio::test]
async fn docker_backend_fails_a_command_that_cannot_run() {
    let backend = docker_backend().await;
    conformance::a_command_that_cannot_run_is_the_steps_failure(&backend, &build_id("exec")).await;
}

#[tokio::test]
async fn docker_backend_tears_down_a_failed_setup() {
    let backend = docker_backend().await;
    conformance::a_failed_setup_is_torn_down(&backend, &build_id("failed-setup")).await;
}

#[tokio::test]
async fn docker_backend_sweeps_a_dead_process_build() {
    let (dead, fresh) = (docker_backend().await, docker_backend().await);
    conformance::a_build_left_by_a_dead_process_is_swept(&dead, &fresh, &build_id("sweep")).await;
}

#[tokio::test]
async fn ping_reports_the_engine_version() {
    let harness = Harness::new("ping").await;
    let version = harness.runtime.ping().await.expect("ping");
    assert!(version.starts_with("Docker Engine "), "{version}");
    harness.assert_no_leaks().await;
}

#[tokio::test]
async fn a_missing_engine_says_how_to_start_one() {
    let error = Engine::connect_to("unix:///nonexistent/docker.sock")
        .await
        .expect_err("no engine there");
    assert!(
        matches!(error, RuntimeError::EngineUnavailable { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("scripts/dev-env.sh"), "{error}");
}

#[tokio::test]
async fn run_keeps_streams_apart_and_exit_codes() {
    let harness = Harness::new("run").await;
    let runtime = &harness.runtime;
    let workspace = harness.name("workspace");
    runtime
        .create_volume(&workspace, &harness.labels())
        .await
        .expect("volume");
    let host_dir = std::env::temp_dir().join(&harness.id);
    std::fs::create_dir(&host_dir).expect("host dir");
    std::fs::write(host_dir.join("input"), "from the host\n").expect("host file");

    let mut failing = harness.spec(
        "failing",
        &[
            "sh",
            "-c",
            "echo \"$GREETING from $(pwd)\"; cat /host/input; echo oops >&2; exit 3",
        ],
    );
    failing.env = vec!["GREETING=hello".to_owned()];
    failing.working_dir = "/workspace/sub".to_owned();
    failing.mounts = vec![
        volume(&workspace, "/workspace"),
        Mount {
            source: MountSource::Bind(host_dir.clone()),
            target: "/host".to_owned(),
            read_only: false,
        },
    ];
    let output = harness.run(&failing).await;
    assert_eq!(output.code, 3);
    assert_eq!(output.stdout, "hello from /workspace/sub\nfrom the host\n");
    assert_eq!(output.stderr, "oops\n");

    // An entrypoint replaces the image's; output attached before the start and read after the
    // exit is all there.
    let mut late = harness.spec("late", &["done"]);
    late.entrypoint = Some(vec!["echo".to_owned()]);
    runtime.create_container(&late).await.expect("create");
    let output = runtime.attach_output(&late.name).await.expect("attach");
    runtime.start_container(&late.name).await.expect("start");
    let code = within("wait", runtime.wait_container(&late.name)).await;
    assert_eq!(code, Ok(0));
    let chunks: Vec<_> = within("output", output.try_collect()).await.expect("logs");
    assert_eq!(split(&chunks), ("done\n".to_owned(), String::new()));
    runtime.remove_container(&late.name).await.expect("remove");

    runtime
        .remove_volume(&workspace)
        .await
        .expect("remove volume");
    std::fs::remove_dir_all(&host_dir).expect("remove host dir");
    harness.assert_no_leaks().await;
}

#[tokio::test]
async fn containers_share_a_named_volume_and_a_network() {
    let harness = Harness::new("share").await;
    let runtime = &harness.runtime;
    let shared = harness.name("shared");
    let network = harness.name("net");
    runtime
        .create_volume(&shared, &harness.labels())
        .await
        .expect("volume");
    runtime
        .create_network(&network, &harness.labels())
        .await
        .expect("network");
    // Creating again keeps the one network, so removal by name stays unambiguous.
    runtime
        .create_network(&network, &harness.labels())
        .await
        .expect("network again");

    let mut writer = harness.spec("writer", &["sh", "-c", "echo shared > /data/note"]);
    writer.mounts = vec![volume(&shared, "/data")];
    writer.network = Some(network.clone());
    assert_eq!(harness.run(&writer).await.code, 0);

    let mut reader = harness.spec("reader", &["cat", "/elsewhere/note"]);
    reader.mounts = vec![volume(&shared, "/elsewhere")];
    reader.network = Some(network.clone());
    let output = harness.run(&reader).await;
    assert_eq!((output.code, output.stdout.as_str()), (0, "shared\n"));

    runtime
        .remove_network(&network)
        .await
        .expect("remove network");
    runtime.remove_volume(&shared).await.expect("remove volume");
    harness.assert_no_leaks().await;
}

#[tokio::test]
async fn a_non_root_step_writes_into_a_workspace_seeded_through_its_parent() {
    let harness = Harness::new("nonroot").await;
    let runtime = &harness.runtime;
    let workspace = harness.name("workspace");
    runtime
        .create_volume(&workspace, &harness.labels())
        .await
        .expect("volume");
    let mut step = harness.spec(
        "step",
        &[
            "sh",
            "-c",
            "id -u; cat hello.txt; echo new > new.txt && stat -c '%u %a' new.txt .",
        ],
    );
    step.user = Some("65534".to_owned());
    step.working_dir = "/workspace".to_owned();
    step.mounts = vec![volume(&workspace, "/workspace")];
    // The `workspace/` entry's mode lands on the volume's root: uploaded to `/`, it is a named
    // entry, not the archive root the engine skips.
    let seed = archive(&[
        ("workspace/", 0o777, None),
        ("workspace/hello.txt", 0o644, Some("hello\n")),
    ]);
    let output = harness.run_seeded(&step, Some(("/", seed))).await;
    assert_eq!(output.code, 0, "{}", output.stderr);
    assert_eq!(output.stdout, "65534\nhello\n65534 644\n0 777\n");
    runtime
        .remove_volume(&workspace)
        .await
        .expect("remove volume");
    harness.assert_no_leaks().await;
}

#[tokio::test]
async fn a_tmpfs_mount_is_empty_has_its_mode_and_is_writable_by_any_user() {
    let harness = Harness::new("tmpfs").await;
    let mut step = harness.spec(
        "step",
        &[
            "sh",
            "-c",
            "ls -A /out; stat -c '%a' /out; echo x > /out/f && cat /out/f",
        ],
    );
    step.user = Some("65534".to_owned());
    step.mounts = vec![Mount {
        source: MountSource::Tmpfs { mode: 0o1777 },
        target: "/out".to_owned(),
        read_only: false,
    }];
    let output = harness.run(&step).await;
    assert_eq!(output.code, 0, "{}", output.stderr);
    assert_eq!(output.stdout, "1777\nx\n");
    harness.assert_no_leaks().await;
}

/// Pins the engine behaviour that `Engine::upload` documents: the mode of an archive's
/// `./` entry is not applied to the target directory.
#[tokio::test]
async fn the_engine_ignores_the_archive_root_entry() {
    let harness = Harness::new("rootentry").await;
    let runtime = &harness.runtime;
    let workspace = harness.name("workspace");
    runtime
        .create_volume(&workspace, &harness.labels())
        .await
        .expect("volume");
    let mut step = harness.spec(
        "step",
        &[
            "sh",
            "-c",
            "cat /workspace/hello.txt; stat -c %a /workspace",
        ],
    );
    step.user = Some("65534".to_owned());
    step.mounts = vec![volume(&workspace, "/workspace")];
    let seed = archive(&[("./", 0o777, None), ("./hello.txt", 0o644, Some("hello\n"))]);
    let output = harness.run_seeded(&step, Some(("/workspace", seed))).await;
    assert_eq!(output.code, 0, "{}", output.stderr);
    assert_eq!(output.stdout, "hello\n755\n");
    runtime
        .remove_volume(&workspace)
        .await
        .expect("remove volume");
    harness.assert_no_leaks().await;
}

#[tokio::test]
async fn stop_kills_after_the_grace_and_removal_is_idempotent() {
    let harness = Harness::new("stop").await;
    let runtime = &harness.runtime;
    // `sleep` as PID 1 ignores SIGTERM, so only the SIGKILL after the grace ends it.
    let sleeper = harness.spec("sleeper", &["sleep", "1000"]);
    runtime.create_container(&sleeper).await.expect("create");
    // Before the start there is nothing to stop.
    runtime
        .stop_container(&sleeper.name, Duration::from_secs(1))
        .await
        .expect("stop created");
    runtime.start_container(&sleeper.name).await.expect("start");
    within(
        "stop",
        runtime.stop_container(&sleeper.name, Duration::from_secs(1)),
    )
    .await
    .expect("stop");
    assert_eq!(runtime.wait_container(&sleeper.name).await, Ok(137));
    runtime
        .stop_container(&sleeper.name, Duration::from_secs(1))
        .await
        .expect("stop exited");
    runtime
        .remove_container(&sleeper.name)
        .await
        .expect("remove");
    runtime
        .remove_container(&sleeper.name)
        .await
        .expect("remove again");
    runtime
        .stop_container(&sleeper.name, Duration::from_secs(1))
        .await
        .expect("stop missing");
    let missing = harness.name("missing");
    runtime
        .remove_volume(&missing)
        .await
        .expect("missing volume");
    runtime
        .remove_network(&missing)
        .await
        .expect("missing network");
    harness.assert_no_leaks().await;
}

#[tokio::test]
async fn stop_sends_sigterm_first() {
    let harness = Harness::new("sigterm").await;
    let runtime = &harness.runtime;
    let step = harness.spec(
        "step",
        &[
            "sh",
            "-c",
            "trap 'echo terminated; exit 7' TERM; echo ready; sleep 1000 & wait",
        ],
    );
    runtime.create_container(&step).await.expect("create");
    let mut logs = runtime.attach_output(&step.name).await.expect("attach");
    runtime.start_container(&step.name).await.expect("start");
    // The trap is set once `ready` is printed; a SIGTERM before that would be ignored.
    let mut stdout = String::new();
    within("ready", async {
        while !stdout.contains("ready\n") {
            let chunk = logs.next().await.expect("output").expect("logs");
            stdout.push_str(std::str::from_utf8(&chunk.bytes).expect("utf-8"));
        }
    })
    .await;
    // A grace longer than the deadline: finishing in time means SIGTERM alone ended it.
    within(
        "stop",
        runtime.stop_container(&step.name, Duration::from_secs(600)),
    )
    .await
    .expect("stop");
    assert_eq!(runtime.wait_container(&step.name).await, Ok(7));
    let rest: Vec<_> = within("logs", logs.try_collect()).await.expect("logs");
    assert_eq!(split(&rest).0, "terminated\n");
    runtime.remove_container(&step.name).await.expect("remove");
    harness.assert_no_leaks().await;
}

#[tokio::test]
async fn an_attached_stdin_holds_what_was_written_until_its_writer_ends() {
    let harness = Harness::new("stdin").await;
    let runtime = &harness.runtime;
    let cat = ContainerSpec {
        stdin_open: true,
        ..harness.spec("cat", &["cat"])
    };
    runtime.create_container(&cat).await.expect("create");
    let mut stdin = runtime.attach_stdin(&cat.name).await.expect("attach");
    let output = runtime.attach_output(&cat.name).await.expect("attach");
    runtime.start_container(&cat.name).await.expect("start");
    stdin
        .write_all(b"written after the start\n")
        .await
        .expect("write");
    stdin.shutdown().await.expect("shutdown");
    // `cat` ends only at the end of its stdin.
    let code = within("wait", runtime.wait_container(&cat.name)).await;
    assert_eq!(code.expect("wait"), 0);
    let chunks: Vec<_> = output.try_collect().await.expect("output");
    assert_eq!(split(&chunks).0, "written after the start\n");
    runtime.remove_container(&cat.name).await.expect("remove");

    // Without `stdin_open`, stdin is empty.
    let output = harness.run(&harness.spec("no-stdin", &["cat"])).await;
    assert_eq!((output.code, output.stdout.as_str()), (0, ""));
    harness.assert_no_leaks().await;
}

#[tokio::test]
async fn ensure_image_finds_local_images_and_names_missing_ones() {
    let harness = Harness::new("images").await;
    let runtime = &harness.runtime;
    let local = runtime.ensure_image(BUSYBOX, None).await.expect("local");
    assert!(local.id.starts_with("sha256:"), "{local:?}");
    // Imported locally, never pulled or pushed under this name.
    assert_eq!(local.digest, None);
    assert_eq!(
        (local.entrypoint, local.cmd),
        (vec![], vec!["sh".to_string()])
    );

    for image in ["localhost:5000/nope:1", "127.0.0.1:1/unreachable:1"] {
        let error = runtime.ensure_image(image, None).await.expect_err(image);
        assert!(
            matches!(&error, RuntimeError::ImageNotFound { image: named, .. } if named == image),
            "{error:?}"
        );
        assert!(error.to_string().contains(image), "{error}");
    }
    let error = runtime.ensure_image("a:", None).await.expect_err("invalid");
    assert!(matches!(error, RuntimeError::Invalid(_)), "{error:?}");
    harness.assert_no_leaks().await;
}

#[tokio::test]
async fn a_tag_names_the_same_local_image_and_a_missing_image_is_not_found() {
    let harness = Harness::new("tag").await;
    let runtime = &harness.runtime;
    let tag = format!("builder-test/tagged:{}", harness.id);
    runtime.tag_image(BUSYBOX, &tag).await.expect("tagged");
    let (original, tagged) = (
        runtime.local_image(BUSYBOX).await.unwrap().expect("local"),
        runtime.local_image(&tag).await.unwrap().expect("tagged"),
    );
    std::process::Command::new("docker")
        .args(["rmi", &tag])
        .output()
        .expect("docker rmi");
    assert_eq!(original.id, tagged.id);
    let error = runtime
        .tag_image("builder-test/never-made:1", &tag)
        .await
        .expect_err("missing");
    assert!(
        matches!(&error, RuntimeError::ImageNotFound { image, .. } if image == "builder-test/never-made:1"),
        "{error:?}"
    );
}

#[tokio::test]
async fn push_returns_the_digest_the_registry_serves_and_pulls_find_it() {
    let harness = Harness::new("push").await;
    let runtime = &harness.runtime;
    let tag = &harness.id;
    let image = format!("127.0.0.1:5000/test/busybox:{tag}");
    let by_tag = format!("localhost:5000/test/busybox:{tag}");
    let mut tags = Tags(vec![image.clone(), by_tag.clone()]);
    let status = Command::new("docker")
        .args(["tag", BUSYBOX, &image])
        .status()
        .expect("docker tag");
    assert!(status.success(), "docker tag: {status}");

    let digest = runtime.push_image(&image, None).await.expect("push");
    let curl = Command::new("curl")
        .args(["-sSfI", "-H"])
        .arg(
            "Accept: application/vnd.docker.distribution.manifest.v2+json, \
             application/vnd.oci.image.manifest.v1+json",
        )
        .arg(format!(
            "http://127.0.0.1:5000/v2/test/busybox/manifests/{tag}"
        ))
        .output()
        .expect("curl");
    assert!(curl.status.success(), "curl: {curl:?}");
    let headers = String::from_utf8(curl.stdout).expect("headers");
    let served = headers
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("docker-content-digest")
                .then(|| value.trim().to_owned())
        })
        .expect("Docker-Content-Digest header");
    assert_eq!(digest, served);

    // Pulled back under the tag (via `localhost`) and by digest, the image reports that digest.
    let by_digest = format!("127.0.0.1:5000/test/busybox@{digest}");
    tags.0.push(by_digest.clone());
    for reference in [&by_tag, &by_digest] {
        let info = runtime.ensure_image(reference, None).await.expect("pull");
        assert_eq!(info.digest.as_deref(), Some(digest.as_str()), "{reference}");
    }

    let absent = format!("127.0.0.1:5000/test/busybox:absent-{tag}");
    let error = runtime.push_image(&absent, None).await.expect_err("absent");
    assert!(
        matches!(&error, RuntimeError::ImageNotFound { image, .. } if *image == absent),
        "{error:?}"
    );

    harness.assert_no_leaks().await;
}

#[tokio::test]
async fn sweep_removes_every_labelled_resource() {
    let harness = Harness::new("sweep").await;
    let runtime = &harness.runtime;
    let labels = harness.labels();
    let volume_name = harness.name("volume");
    let network = harness.name("net");
    runtime
        .create_volume(&volume_name, &labels)
        .await
        .expect("volume");
    runtime
        .create_network(&network, &labels)
        .await
        .expect("network");

    let mut created = harness.spec("created", &["true"]);
    created.mounts = vec![volume(&volume_name, "/data")];
    created.network = Some(network.clone());
    runtime.create_container(&created).await.expect("create");
    // Mounting a volume nobody created makes the engine create it; it still gets the labels.
    let implicit = harness.name("implicit");
    let mut running = harness.spec("running", &["sleep", "1000"]);
    running.mounts = vec![volume(&volume_name, "/data"), volume(&implicit, "/other")];
    running.network = Some(network.clone());
    runtime.create_container(&running).await.expect("create");
    runtime.start_container(&running.name).await.expect("start");

    let mut expected = Resources {
        containers: vec![created.name.clone(), running.name.clone()],
        volumes: vec![implicit.clone(), volume_name.clone()],
        networks: vec![network.clone()],
    };
    expected.containers.sort();
    expected.volumes.sort();
    let found = runtime.labelled(LABEL, &harness.id).await.expect("list");
    assert_eq!(found, expected);
    let swept = within("sweep", runtime.sweep(LABEL, &harness.id))
        .await
        .expect("sweep");
    assert_eq!(swept, expected);
    harness.assert_no_leaks().await;
    let again = runtime
        .sweep(LABEL, &harness.id)
        .await
        .expect("sweep again");
    assert_eq!(again, Resources::default());
}
