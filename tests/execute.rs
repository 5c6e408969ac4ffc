//! Integration tests of the executor against the real Docker engine and the registry on
//! 127.0.0.1:5000 (both started by `scripts/dev-env.sh`). Each test runs a small YAML config
//! through `config::load`, `plan::resolve` and `execute::execute` under its own build id, then
//! checks that nothing labelled with that id (or named after it) is left on the engine.
//! Every wait has a deadline: a regression fails a test, it never hangs it.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use base64::Engine as _;
use builder::adapters::registry::{Registries, Settings};
use builder::adapters::runtime::docker::BUILD_LABEL;
use builder::adapters::runtime::docker::engine::Engine;
use builder::adapters::runtime::{Backend, DockerBackend, LogStream};
use builder::core::alias::Aliases;
use builder::core::build::{Outcome, PushedImage, Status};
use builder::core::plan::{Inputs, resolve};
use builder::core::substitute::Values;
use builder::pipeline::execute::{DEFAULT_LOG_LIMIT, Event, Received, Run, events, execute};
use common::{REGISTRY, registry_digest};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

mod common;

/// Upper bound for a whole build or for one awaited event; reaching it is a failure.
const DEADLINE: Duration = Duration::from_secs(120);
/// A step body that runs until stopped. It exits on SIGTERM (a shell as PID 1 would ignore it), so
/// a stopped step ends at once instead of after the executor's grace period.
const SLEEP: &str = "trap 'exit 143' TERM; sleep 600 & wait";

/// A build under way, with the events seen so far.
struct Running {
    id: String,
    runtime: Arc<DockerBackend>,
    outcome: JoinHandle<Outcome>,
    events: Received,
    seen: Vec<Event>,
    cancel: CancellationToken,
}

/// A build id unique to this test and process, also used to name images.
fn unique(test: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("test-{test}-{}-{n}", std::process::id())
}

/// Loads, validates and resolves `yaml`, lets `adjust` fill in the run, and starts it.
async fn start(test: &str, yaml: &str, adjust: impl FnOnce(&mut Run)) -> Running {
    let id = unique(test);
    let loaded = builder::core::config::load(yaml.as_bytes()).expect("a YAML document");
    assert!(
        !loaded.diagnostics.has_errors(),
        "{}",
        loaded.diagnostics.render("test.yaml")
    );
    let inputs = Inputs {
        built_ins: Values::from([
            ("BUILD_ID".to_string(), id.clone()),
            ("PROJECT_ID".to_string(), "test-project".to_string()),
        ]),
        // The shipped table, as a user gets it.
        aliases: Aliases::load(None).expect("the shipped alias table"),
        ..Inputs::default()
    };
    let build = match resolve(&loaded.config, &inputs) {
        Ok(build) => build,
        Err(diagnostics) => panic!("{}", diagnostics.render("test.yaml")),
    };
    let mut run = Run {
        build_id: id.clone(),
        build,
        workspace: None,
        secrets: BTreeMap::new(),
        registries: Registries::new(&Settings::default()).expect("registry settings"),
        trusted: false,
        aliases: Aliases::load(None).expect("the shipped alias table"),
        log_limit: DEFAULT_LOG_LIMIT,
    };
    adjust(&mut run);
    let runtime = Arc::new(
        DockerBackend::connect()
            .await
            .expect("Docker engine (run scripts/dev-env.sh as root)"),
    );
    let (sender, events) = events();
    let cancel = CancellationToken::new();
    let outcome = tokio::spawn(execute(runtime.clone(), run, sender, cancel.clone()));
    Running {
        id,
        runtime,
        outcome,
        events,
        seen: Vec::new(),
        cancel,
    }
}

/// A test that fails while its build runs leaves the build's containers behind (its runtime stops
/// before the executor cleans up), so the guard removes them with the CLI.
impl Drop for Running {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let label = format!("label={BUILD_LABEL}={}", self.id);
        for (kind, remove) in [("container", "rm -f"), ("network", "rm"), ("volume", "rm")] {
            let Ok(listed) = Command::new("docker")
                .args([kind, "ls", "-q", "--filter", &label])
                .args((kind == "container").then_some("-a"))
                .output()
            else {
                return;
            };
            for name in String::from_utf8_lossy(&listed.stdout).split_whitespace() {
                let _ = Command::new("docker")
                    .arg(kind)
                    .args(remove.split(' '))
                    .arg(name)
                    .output();
            }
        }
    }
}

impl Running {
    /// Waits until `step` has printed `text`.
    async fn until_line(&mut self, step: usize, text: &str) {
        self.until(
            &format!("step {step} printing {text:?}"),
            |e| matches!(e, Event::Line { step: s, text: t, .. } if *s == step && t == text),
        )
        .await;
    }

    /// Waits until an event that `wanted` accepts has been seen.
    async fn until(&mut self, what: &str, wanted: impl Fn(&Event) -> bool) {
        while !self.seen.iter().any(&wanted) {
            match tokio::time::timeout(DEADLINE, self.events.recv()).await {
                Ok(Some(event)) => self.seen.push(event),
                _ => panic!("never saw {what}; events: {:#?}", self.seen),
            }
        }
    }

    /// Waits for the outcome and all events, then checks that the build left nothing behind.
    async fn finish(mut self) -> (Outcome, Vec<Event>) {
        // The events are read meanwhile: the executor waits for room for them.
        let outcome = tokio::time::timeout(DEADLINE, async {
            loop {
                tokio::select! {
                    outcome = &mut self.outcome => break outcome,
                    Some(event) = self.events.recv() => self.seen.push(event),
                }
            }
        })
        .await
        .expect("the build ends before the deadline")
        .expect("execute does not panic");
        while let Some(event) = self.events.recv().await {
            self.seen.push(event);
        }
        let left = self.runtime.leftovers(&self.id).await.unwrap();
        assert!(left.is_empty(), "build {} leaked {left:?}", self.id);
        let named = docker(&["ps", "-aq", "--filter", &format!("name=-{}-", self.id)]);
        assert_eq!(named, "", "containers named after build {}", self.id);
        (outcome, std::mem::take(&mut self.seen))
    }
}

async fn run(test: &str, yaml: &str) -> (Outcome, Vec<Event>) {
    start(test, yaml, |_| {}).await.finish().await
}

/// The lines step `step` printed, on both streams, in order.
fn lines(events: &[Event], step: usize) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Line { step: s, text, .. } if *s == step => Some(text.clone()),
            _ => None,
        })
        .collect()
}

fn statuses(outcome: &Outcome) -> Vec<Status> {
    outcome.steps.iter().map(|s| s.status).collect()
}

/// Runs the docker CLI and returns its trimmed stdout; a failure fails the test.
fn docker(args: &[&str]) -> String {
    let output = Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI");
    assert!(
        output.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[tokio::test]
async fn independent_steps_run_at_once() {
    // Each step waits for the other's marker: both finish only if they run at the same time.
    let yaml = r#"
steps:
- name: builder/busybox
  waitFor: ['-']
  script: touch a; until [ -e b ]; do sleep 0.1; done
- name: builder/busybox
  waitFor: ['-']
  script: touch b; until [ -e a ]; do sleep 0.1; done
timeout: 60s
"#;
    let (outcome, _) = run("concurrent", yaml).await;
    assert_eq!(outcome.status, Status::Success, "{outcome:?}");
}

#[tokio::test]
async fn steps_without_wait_for_run_in_order() {
    let yaml = r#"
steps:
- name: builder/busybox
  script: echo first > order
- name: builder/busybox
  script: cat order
"#;
    let (outcome, events) = run("serial", yaml).await;
    assert_eq!(outcome.status, Status::Success, "{outcome:?}");
    assert_eq!(lines(&events, 1), ["first"]);
    let started: Vec<usize> = events
        .iter()
        .filter_map(|e| match e {
            Event::StepStarted { step } => Some(*step),
            _ => None,
        })
        .collect();
    assert_eq!(started, [0, 1]);
}

#[tokio::test]
async fn volumes_are_shared_and_other_paths_do_not_persist() {
    let yaml = r#"
steps:
- name: builder/busybox
  volumes: [{name: shared, path: /cache}]
  script: echo kept > /cache/file; echo lost > /tmp/file; echo lost > /root/file
- name: builder/busybox
  volumes: [{name: shared, path: /elsewhere/cache}]
  script: cat /elsewhere/cache/file; ls /tmp/file /root/file 2>/dev/null; echo done
"#;
    let (outcome, events) = run("volumes", yaml).await;
    assert_eq!(outcome.status, Status::Success, "{outcome:?}");
    assert_eq!(lines(&events, 1), ["kept", "done"]);
}

#[tokio::test]
async fn environment_follows_cloud_build() {
    let yaml = r#"
options:
  env: [GLOBAL=global, BOTH=global]
  automapSubstitutions: true
substitutions: {_USER: someone}
steps:
- name: builder/busybox
  env: [BOTH=step]
  script: |
    echo "$GLOBAL $BOTH $HOME $BUILDER_OUTPUT $_USER $PROJECT_ID"
    echo from-step-0 > "$HOME/note"
- name: builder/busybox
  automapSubstitutions: false
  script: |
    echo "$GLOBAL $BOTH [$_USER] [$PROJECT_ID]"
    cat "$HOME/note"
"#;
    let (outcome, events) = run("env", yaml).await;
    assert_eq!(outcome.status, Status::Success, "{outcome:?}");
    assert_eq!(
        lines(&events, 0),
        ["global step /builder/home /builder/outputs someone test-project"]
    );
    assert_eq!(lines(&events, 1), ["global global [] []", "from-step-0"]);
}

#[tokio::test]
async fn dir_is_the_working_directory() {
    let yaml = r#"
steps:
- name: builder/busybox
  dir: sub/../made/here
  script: pwd; echo x > file
- name: builder/busybox
  script: cat made/here/file
- name: builder/busybox
  dir: /absolute
  script: pwd
"#;
    let (outcome, events) = run("dir", yaml).await;
    assert_eq!(outcome.status, Status::Success, "{outcome:?}");
    assert_eq!(lines(&events, 0), ["/workspace/made/here"]);
    assert_eq!(lines(&events, 1), ["x"]);
    assert_eq!(lines(&events, 2), ["/absolute"]);
}

#[tokio::test]
async fn a_failing_step_stops_the_build() {
    let id = unique("failure-image");
    // A local image listed in `images:` that must not be pushed, because a step fails.
    let image = format!("{REGISTRY}/test/{id}:t");
    docker(&["tag", "builder/busybox:latest", &image]);
    let yaml = format!(
        r#"
steps:
- id: long
  name: builder/busybox
  waitFor: ['-']
  script: touch started; {SLEEP}
- id: fail
  name: builder/busybox
  waitFor: ['-']
  script: until [ -e started ]; do sleep 0.1; done; exit 3
- name: builder/busybox
  waitFor: [fail]
  script: echo never
images: ['{image}']
timeout: 60s
"#
    );
    let (outcome, events) = run("failure", &yaml).await;
    docker(&["rmi", &image]);
    assert_eq!(outcome.status, Status::Failure, "{outcome:?}");
    assert_eq!(
        outcome.failure.as_deref(),
        Some(r#"build step 1 "builder/busybox" failed: step exited with non-zero status: 3"#)
    );
    assert_eq!(
        statuses(&outcome),
        [Status::Cancelled, Status::Failure, Status::Queued]
    );
    assert_eq!(outcome.steps[1].exit_code, Some(3));
    assert!(outcome.images.is_empty());
    assert!(!events.iter().any(|e| matches!(e, Event::Pushing { .. })));
    assert_eq!(registry_digest(&format!("test/{id}"), "t"), None);
}

#[tokio::test]
async fn tolerated_failures_let_the_build_succeed() {
    let yaml = r#"
steps:
- name: builder/busybox
  allowFailure: true
  script: exit 1
- name: builder/busybox
  allowExitCodes: [5]
  script: exit 5
- name: builder/busybox
  script: echo reached
"#;
    let (outcome, events) = run("allow-failure", yaml).await;
    assert_eq!(outcome.status, Status::Success, "{outcome:?}");
    assert_eq!(
        statuses(&outcome),
        [Status::Failure, Status::Failure, Status::Success]
    );
    let codes: Vec<_> = outcome.steps.iter().map(|s| s.exit_code).collect();
    assert_eq!(codes, [Some(1), Some(5), Some(0)]);
    assert_eq!(lines(&events, 2), ["reached"]);
}

#[tokio::test]
async fn allow_exit_codes_take_precedence_over_allow_failure() {
    let yaml = r#"
steps:
- name: builder/busybox
  allowFailure: true
  allowExitCodes: [5]
  script: exit 6
- name: builder/busybox
  script: echo never
"#;
    let (outcome, _) = run("allow-exit-codes", yaml).await;
    assert_eq!(outcome.status, Status::Failure, "{outcome:?}");
    assert_eq!(statuses(&outcome), [Status::Failure, Status::Queued]);
    assert_eq!(outcome.steps[0].exit_code, Some(6));
}

#[tokio::test]
async fn a_step_timeout_times_the_build_out() {
    let yaml = format!(
        r#"
steps:
- name: builder/busybox
  timeout: 1s
  script: {SLEEP}
- name: builder/busybox
  script: echo never
timeout: 60s
"#
    );
    let (outcome, _) = run("step-timeout", &yaml).await;
    assert_eq!(outcome.status, Status::Timeout, "{outcome:?}");
    assert_eq!(statuses(&outcome), [Status::Timeout, Status::Queued]);
}

#[tokio::test]
async fn the_build_timeout_interrupts_the_running_step() {
    let yaml = format!(
        r#"
steps:
- name: builder/busybox
  script: {SLEEP}
- name: builder/busybox
  script: echo never
timeout: 2s
"#
    );
    let (outcome, _) = run("build-timeout", &yaml).await;
    assert_eq!(outcome.status, Status::Timeout, "{outcome:?}");
    assert_eq!(statuses(&outcome), [Status::Timeout, Status::Queued]);
}

#[tokio::test]
async fn cancel_stops_the_running_step() {
    let yaml = format!(
        r#"
steps:
- name: builder/busybox
  script: echo ready; {SLEEP}
- name: builder/busybox
  script: echo never
"#
    );
    let mut running = start("cancel", &yaml, |_| {}).await;
    running.until_line(0, "ready").await;
    running.cancel.cancel();
    let (outcome, _) = running.finish().await;
    assert_eq!(outcome.status, Status::Cancelled, "{outcome:?}");
    assert_eq!(statuses(&outcome), [Status::Cancelled, Status::Queued]);
}

/// A push to a registry that does not answer is retried; a cancel meanwhile ends the build.
#[tokio::test]
async fn cancel_stops_the_push() {
    let image = format!("127.0.0.1:5999/test/{}:t", unique("cancel-push"));
    let yaml = format!(
        "steps:\n- name: builder/busybox\n  script: echo 'FROM builder/busybox:latest' > Dockerfile\n\
         - name: gcr.io/cloud-builders/docker\n  args: [build, -q, -t, '{image}', .]\nimages: ['{image}']\n"
    );
    let mut running = start("cancel-push", &yaml, |_| {}).await;
    running
        .until("the push", |e| matches!(e, Event::Pushing { .. }))
        .await;
    running.cancel.cancel();
    let (outcome, _) = running.finish().await;
    docker(&["rmi", &image]);
    assert_eq!(outcome.status, Status::Cancelled, "{outcome:?}");
    assert_eq!(
        outcome.failure.as_deref(),
        Some("the build was cancelled while pushing results")
    );
}

#[tokio::test]
async fn a_build_cancelled_before_it_starts_runs_nothing() {
    let yaml = "steps: [{name: builder/busybox, script: echo never}]\n";
    let running = start("cancel-early", yaml, |_| {}).await;
    running.cancel.cancel();
    let (outcome, events) = running.finish().await;
    assert_eq!(outcome.status, Status::Cancelled, "{outcome:?}");
    assert_eq!(statuses(&outcome), [Status::Queued]);
    assert_eq!(events, []);
}

#[tokio::test]
async fn secrets_are_masked() {
    let secret = "s3cr3t-Value-42";
    let encoded = base64::engine::general_purpose::STANDARD.encode(secret);
    let yaml = r#"
availableSecrets:
  secretManager:
  - {versionName: projects/p/secrets/token/versions/1, env: TOKEN}
steps:
- name: builder/busybox
  secretEnv: [TOKEN]
  script: |
    echo "plain: $TOKEN"
    printf %s "$TOKEN" | base64
    echo "$TOKEN" >&2
"#;
    let running = start("masking", yaml, |run| {
        run.secrets.insert("TOKEN".into(), secret.into());
    })
    .await;
    let (outcome, events) = running.finish().await;
    assert_eq!(outcome.status, Status::Success, "{outcome:?}");
    // Sorted: the engine does not order lines across stdout and stderr.
    let mut lines = lines(&events, 0);
    lines.sort();
    assert_eq!(lines, ["[MASKED]", "[MASKED]", "plain: [MASKED]"]);
    let text = format!("{events:?}");
    assert!(!text.contains(secret) && !text.contains(&encoded), "{text}");
}

#[tokio::test]
async fn images_are_pushed_with_their_digest() {
    let id = unique("push-image");
    let repository = format!("test/{id}");
    let image = format!("{REGISTRY}/{repository}:t");
    let yaml = format!(
        r#"
steps:
- name: builder/busybox
  script: printf 'FROM builder/busybox:latest\nCOPY id /id\n' > Dockerfile; echo {id} > id
- name: gcr.io/cloud-builders/docker
  args: [build, -t, '{image}', .]
images: ['{image}']
"#
    );
    let (outcome, events) = run("push", &yaml).await;
    docker(&["rmi", &image]);
    assert_eq!(outcome.status, Status::Success, "{outcome:?}");
    assert_eq!(outcome.images.len(), 1);
    assert_eq!(outcome.images[0].name, image);
    let digest = registry_digest(&repository, "t").expect("the registry has the image");
    assert_eq!(outcome.images[0].digest, digest);
    assert!(events.contains(&Event::Pushed(outcome.images[0].clone())));
    let manifest = format!("http://{REGISTRY}/v2/{repository}/manifests/{digest}");
    let deleted = Command::new("curl")
        .args(["-sf", "-X", "DELETE", &manifest])
        .status();
    assert!(deleted.expect("curl").success(), "deleting {manifest}");
}

/// A step may run an image an earlier step built (spec §2.2), also when an older image of the
/// same name is already local: the step must run the new one.
#[tokio::test]
async fn a_step_runs_the_image_an_earlier_step_built() {
    let id = unique("built-image");
    let image = format!("builder-test/{id}:latest");
    for (round, expected) in [("first", "first"), ("second", "second")] {
        let yaml = format!(
            r#"
steps:
- name: builder/busybox
  script: printf 'FROM builder/busybox:latest\nCMD ["echo", "{round}"]\n' > Dockerfile
- name: gcr.io/cloud-builders/docker
  args: [build, -q, -t, '{image}', .]
- name: '{image}'
"#
        );
        let (outcome, events) = run("built-image", &yaml).await;
        assert_eq!(outcome.status, Status::Success, "{outcome:?}");
        let printed = events
            .iter()
            .any(|e| matches!(e, Event::Line { step: 2, text, .. } if text == expected));
        assert!(printed, "step 2 did not print {expected:?}: {events:?}");
    }
    docker(&["rmi", &image]);
}

#[tokio::test]
async fn steps_started_ahead_run_as_the_engine_would_start_them() {
    // Step 0 runs long enough for steps 1 and 2 to be started ahead, held until their turn, and
    // lists them running (step 3 is started once step 1 runs); then they run an executable found on PATH (not busybox's applet of
    // that name), and the image's own entrypoint, with the environment the engine gives.
    let yaml = r#"
steps:
- name: gcr.io/cloud-builders/docker
  entrypoint: sh
  args:
  - -c
  - |
    mkdir bin && printf '#!/bin/sh\necho "found on PATH: $*"\n' > bin/ls && chmod +x bin/ls
    sleep 1
    docker ps --filter label=builder.build=$BUILD_ID --format '{{.Label "builder.step"}}' | sort
- name: builder/debian
  env: ['PATH=/workspace/bin:/usr/bin:/bin']
  args: [ls, -l]
- name: gcr.io/cloud-builders/docker
  args: [--version]
- name: builder/busybox
  args: [env]
"#;
    let (outcome, events) = run("ahead", yaml).await;
    assert_eq!(outcome.status, Status::Success, "{outcome:?}");
    assert_eq!(lines(&events, 0), ["0", "1", "2"]);
    assert_eq!(lines(&events, 1), ["found on PATH: -l"]);
    assert!(
        lines(&events, 2)[0].starts_with("Docker version"),
        "{events:?}"
    );
    let env = lines(&events, 3);
    assert!(env.contains(&"HOME=/builder/home".to_string()), "{env:?}");
    // A shell the gate ran would have exported these.
    let shell_vars = env
        .iter()
        .filter(|v| v.starts_with("PWD=") || v.starts_with("SHLVL="));
    assert_eq!(shell_vars.count(), 0, "{env:?}");
}

#[tokio::test]
async fn images_never_built_fail_the_build() {
    let missing = format!("{REGISTRY}/test/{}:t", unique("never-built"));
    let yaml =
        format!("steps: [{{name: builder/busybox, args: ['true']}}]\nimages: ['{missing}']\n");
    let (outcome, _) = run("push-missing", &yaml).await;
    assert_eq!(outcome.status, Status::Failure, "{outcome:?}");
    assert_eq!(
        outcome.failure,
        Some(format!(
            "failed to find one or more images after execution of build steps: [{missing:?}]"
        ))
    );
}

#[tokio::test]
async fn a_missing_step_image_fails_the_build() {
    let yaml = r#"
steps:
- name: localhost:5000/does-not-exist:1
- name: builder/busybox
  args: ['true']
"#;
    let (outcome, _) = run("missing-image", yaml).await;
    assert_eq!(outcome.status, Status::Failure, "{outcome:?}");
    let failure = outcome.failure.clone().unwrap_or_default();
    assert!(
        failure.starts_with(r#"build step 0 "localhost:5000/does-not-exist:1" failed:"#)
            && failure.contains(r#"image "localhost:5000/does-not-exist:1" not found"#),
        "{failure}"
    );
    assert_eq!(statuses(&outcome), [Status::Failure, Status::Queued]);
}

/// The second step's container is created while the first runs; its missing image is reported
/// when it would start, as its own failure.
#[tokio::test]
async fn a_later_step_with_a_missing_image_fails_when_it_starts() {
    let yaml = r#"
steps:
- name: builder/busybox
  script: sleep 1; echo first
- name: localhost:5000/does-not-exist:1
"#;
    let (outcome, events) = run("missing-image-later", yaml).await;
    assert_eq!(outcome.status, Status::Failure, "{outcome:?}");
    assert_eq!(statuses(&outcome), [Status::Success, Status::Failure]);
    assert_eq!(lines(&events, 0), ["first"]);
    let failure = outcome.failure.clone().unwrap_or_default();
    assert!(
        failure.starts_with(r#"build step 1 "localhost:5000/does-not-exist:1" failed:"#),
        "{failure}"
    );
}

#[tokio::test]
async fn a_non_root_builder_writes_to_the_workspace_home_and_volumes() {
    let image = "builder-test/nobody:latest";
    let mut build = Command::new("docker")
        .args(["build", "-q", "-t", image, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("docker build");
    let dockerfile = "FROM builder/busybox:latest\nUSER 65534\n";
    build
        .stdin
        .take()
        .unwrap()
        .write_all(dockerfile.as_bytes())
        .unwrap();
    assert!(build.wait().unwrap().success(), "docker build {image}");
    // A seeded workspace too: its directory (a temporary one, mode 0700) must not set the mode.
    let source = tempfile::tempdir().unwrap();
    std::fs::write(source.path().join("seeded.txt"), "seeded\n").unwrap();
    let yaml = format!(
        r#"
steps:
- name: {image}
  volumes: [{{name: cache, path: /cache}}]
  script: |
    id -u; cat seeded.txt
    echo workspace > by-nobody; echo home > "$HOME/by-nobody"; echo volume > /cache/by-nobody
    echo output > "$BUILDER_OUTPUT/output"
- name: builder/busybox
  volumes: [{{name: cache, path: /cache}}]
  script: cat by-nobody "$HOME/by-nobody" /cache/by-nobody
"#
    );
    let dir = source.path().to_path_buf();
    let running = start("non-root", &yaml, |run| run.workspace = Some(dir)).await;
    let (outcome, events) = running.finish().await;
    assert_eq!(outcome.status, Status::Success, "{outcome:?} {events:?}");
    assert_eq!(lines(&events, 0), ["65534", "seeded"]);
    assert_eq!(lines(&events, 1), ["workspace", "home", "volume"]);
}

#[tokio::test]
async fn scripts_and_output_streams() {
    let yaml = r#"
steps:
- name: builder/busybox
  script: |
    tr '\0' ' ' < /proc/$$/cmdline; echo
    echo to-stderr >&2
    printf 'no newline'
- name: builder/busybox
  allowFailure: true
  script: |
    #!/bin/sh -e
    tr '\0' ' ' < /proc/$$/cmdline; echo
    false
    echo unreachable
"#;
    let (outcome, events) = run("script", yaml).await;
    assert_eq!(outcome.status, Status::Success, "{outcome:?}");
    // Lines keep their order within a stream; the engine does not order them across streams.
    let stream = |wanted: LogStream| -> Vec<String> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Line {
                    step: 0,
                    stream,
                    text,
                } if *stream == wanted => Some(text.clone()),
                _ => None,
            })
            .collect()
    };
    assert_eq!(
        stream(LogStream::Stdout),
        ["/bin/sh /builder/scripts/step-0 ", "no newline"]
    );
    assert_eq!(stream(LogStream::Stderr), ["to-stderr"]);
    assert_eq!(lines(&events, 1), ["/bin/sh -e /builder/scripts/step-1 "]);
    assert_eq!(outcome.steps[1].exit_code, Some(1));
}

#[tokio::test]
async fn the_workspace_is_seeded_from_a_directory() {
    let source = tempfile::tempdir().unwrap();
    std::fs::create_dir(source.path().join("sub")).unwrap();
    std::fs::write(source.path().join("top.txt"), "top\n").unwrap();
    std::fs::write(source.path().join("sub/inner.txt"), "inner\n").unwrap();
    let yaml = "steps: [{name: builder/busybox, args: [cat, top.txt, sub/inner.txt]}]\n";
    let dir = source.path().to_path_buf();
    let running = start("seed", yaml, |run| run.workspace = Some(dir)).await;
    let (outcome, events) = running.finish().await;
    assert_eq!(outcome.status, Status::Success, "{outcome:?}");
    assert_eq!(lines(&events, 0), ["top", "inner"]);
}

/// Every build creates the shared `cloudbuild` network if it is missing; builds starting at once
/// must not leave two of that name (engines before API 1.44 allow it), or a nested
/// `docker build --network cloudbuild` fails as ambiguous.
#[tokio::test]
async fn networks_created_at_once_end_up_one() {
    let id = unique("network");
    let runtime = Engine::connect().await.expect("Docker engine");
    let labels = BTreeMap::from([(BUILD_LABEL.to_string(), id.clone())]);
    let creations = (0..6).map(|_| runtime.create_network(&id, &labels));
    for created in futures_util::future::join_all(creations).await {
        created.expect("create network");
    }
    let named = docker(&["network", "ls", "-q", "--filter", &format!("name=^{id}$")]);
    assert_eq!(named.lines().count(), 1, "{named}");
    runtime.sweep(BUILD_LABEL, &id).await.expect("sweep");
    let left = runtime.labelled(BUILD_LABEL, &id).await.unwrap();
    assert!(left.is_empty(), "{left:?}");
}

/// An image with neither CMD nor ENTRYPOINT, as `docker import` (or `FROM scratch`) makes it:
/// Debian's static busybox and a few of its applets.
fn image_without_command() -> &'static str {
    const IMAGE: &str = "builder-test/no-command:latest";
    static IMPORTED: std::sync::Once = std::sync::Once::new();
    IMPORTED.call_once(|| {
        let root = tempfile::TempDir::new().unwrap();
        let bin = root.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
        for applet in ["sh", "true", "echo", "mkdir", "sleep", "head", "cat"] {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
        let mut tar = Command::new("tar")
            .args(["-C", root.path().to_str().unwrap(), "-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let imported = Command::new("docker")
            .args(["import", "-c", "ENV PATH=/bin", "-", IMAGE])
            .stdin(tar.stdout.take().unwrap())
            .output()
            .unwrap();
        assert!(tar.wait().unwrap().success());
        assert!(imported.status.success(), "{imported:?}");
    });
    let config = docker(&[
        "image",
        "inspect",
        "-f",
        "{{json .Config.Cmd}} {{json .Config.Entrypoint}}",
        IMAGE,
    ]);
    assert_eq!(config, "null null", "{IMAGE} has a command");
    IMAGE
}

/// Nothing builder creates on its own behalf depends on a step image's command: the container
/// that fills the workspace, the ones held ahead of their turn, the one that reads templates.
#[tokio::test]
async fn step_images_without_a_command_run() {
    let image = image_without_command();
    let repository = format!("{REGISTRY}/test/{}", unique("no-command"));
    let yaml = format!(
        r#"
steps:
- name: {image}
  args: [sh, -c, 'sleep 1; mkdir -p dist; echo "kind: Pipeline" > dist/t_v1.0.0.yaml']
- name: {image}
  args: [cat, dist/t_v1.0.0.yaml]
templates:
- paths: ['dist/*.yaml']
  repository: {repository}
"#
    );
    let (outcome, events) = run("no-command", &yaml).await;
    assert_eq!(outcome.status, Status::Success, "{outcome:?}");
    assert_eq!(lines(&events, 1), ["kind: Pipeline"]);
    assert_eq!(outcome.templates.len(), 1, "{outcome:?}");
}

/// A command the image does not have is the step's FAILURE with exit code 127, whether the step
/// starts with the build or was held ahead of its turn; a step that names no command for an
/// image without one fails too.
#[tokio::test]
async fn a_missing_executable_fails_the_step_wherever_it_sits() {
    for (yaml, step) in [
        ("steps: [{name: builder/busybox, args: [no-such-tool]}]", 0),
        (
            "steps:\n- {name: builder/busybox, args: [sleep, '1']}\n- {name: builder/busybox, args: [no-such-tool]}",
            1,
        ),
    ] {
        let (outcome, events) = run("missing-executable", yaml).await;
        assert_eq!(outcome.status, Status::Failure, "{outcome:?}");
        let result = &outcome.steps[step];
        assert_eq!(
            (result.status, result.exit_code),
            (Status::Failure, Some(127)),
            "{outcome:?}"
        );
        assert_eq!(
            lines(&events, step),
            [r#"exec: "no-such-tool": executable file not found in $PATH"#]
        );
    }
    let yaml = format!("steps: [{{name: {}}}]", image_without_command());
    let (outcome, _) = run("no-command-at-all", &yaml).await;
    assert_eq!(outcome.status, Status::Failure, "{outcome:?}");
    let detail = outcome.steps[0].detail.clone().unwrap_or_default();
    assert!(detail.contains("no ENTRYPOINT and no CMD"), "{detail}");
}

/// A script whose `#!` interpreter is not in the image names the interpreter, first or held.
#[tokio::test]
async fn a_script_with_a_missing_interpreter_names_it() {
    let script = "'#!/usr/bin/env bash\n echo never'";
    for (yaml, step) in [
        (
            format!("steps: [{{name: builder/busybox, script: {script}}}]"),
            0,
        ),
        (
            format!(
                "steps:\n- {{name: builder/busybox, args: [sleep, '1']}}\n- {{name: builder/busybox, script: {script}}}"
            ),
            1,
        ),
    ] {
        let (outcome, events) = run("missing-interpreter", &yaml).await;
        let result = &outcome.steps[step];
        assert_eq!(
            (result.status, result.exit_code),
            (Status::Failure, Some(127)),
            "{outcome:?}"
        );
        let said = lines(&events, step);
        assert!(
            said.iter()
                .any(|l| l.contains(r#"interpreter "/usr/bin/env""#)),
            "{said:?}"
        );
    }
}

/// As on Cloud Build, an image the engine has under the step's written name runs before any
/// alias or mirror is consulted: `gcr.io/P/tool`, tagged by an earlier step, is not fetched
/// from the mirror `localhost:5000/P/tool`.
#[tokio::test]
async fn a_written_name_the_engine_has_runs_before_its_mirror() {
    let tool = format!("gcr.io/test-project/{}", unique("tool"));
    let yaml = format!(
        r#"
steps:
- name: gcr.io/cloud-builders/docker
  args: [tag, 'builder/busybox:latest', '{tool}']
- name: '{tool}'
  args: [echo, ran]
"#
    );
    let (outcome, events) = run("written-name", &yaml).await;
    docker(&["rmi", &tool]);
    assert_eq!(outcome.status, Status::Success, "{outcome:?}");
    assert_eq!(lines(&events, 1), ["ran"]);
}

/// `images:` of a mirrored registry are pushed through the mirror (`gcr.io/P/app` to
/// `localhost:5000/P/app`), recorded under their written name with where they went; a name
/// without a tag is also recorded as `:latest`, as Cloud Build does. PUSH is said once.
#[tokio::test]
async fn images_are_pushed_through_the_mirrors() {
    let app = unique("mirrored");
    let written = format!("gcr.io/test-project/{app}");
    let tagged = format!("gcr.io/test-project/{app}:v1");
    let yaml = format!(
        r#"
steps:
- name: gcr.io/cloud-builders/docker
  args: [tag, 'builder/busybox:latest', '{written}']
- name: gcr.io/cloud-builders/docker
  args: [tag, 'builder/busybox:latest', '{tagged}']
images: ['{written}', '{tagged}']
"#
    );
    let (outcome, events) = run("mirrored-push", &yaml).await;
    docker(&["rmi", &written, &tagged]);
    docker(&["rmi", &format!("localhost:5000/test-project/{app}:latest")]);
    docker(&["rmi", &format!("localhost:5000/test-project/{app}:v1")]);
    assert_eq!(outcome.status, Status::Success, "{outcome:?}");
    let repository = format!("test-project/{app}");
    let latest = registry_digest(&repository, "latest").expect("pushed to the mirror");
    let v1 = registry_digest(&repository, "v1").expect("pushed to the mirror");
    let pushed = |name: &str, digest: &str, to: &str| PushedImage {
        name: name.to_string(),
        digest: digest.to_string(),
        pushed_to: Some(format!("localhost:5000/{repository}:{to}")),
    };
    assert_eq!(
        outcome.images,
        [
            pushed(&written, &latest, "latest"),
            pushed(&format!("{written}:latest"), &latest, "latest"),
            pushed(&tagged, &v1, "v1"),
        ]
    );
    let push_phases = events.iter().filter(|e| **e == Event::PushStarted).count();
    assert_eq!(push_phases, 1, "{events:?}");
}

/// What a step writes to `$BUILDER_OUTPUT/output` is kept at its index, its first 50 KiB; steps
/// that write nothing keep nothing.
#[tokio::test]
async fn step_outputs_are_kept_at_their_index() {
    let yaml = r#"
steps:
- name: builder/busybox
  script: |
    echo -n '{"revision": 3}' > $BUILDER_OUTPUT/output
- name: builder/busybox
  args: ['true']
- name: builder/busybox
  script: head -c 60000 /dev/zero > $BUILDER_OUTPUT/output
"#;
    let (outcome, _) = run("step-outputs", yaml).await;
    assert_eq!(outcome.status, Status::Success, "{outcome:?}");
    let outputs: Vec<Option<usize>> = outcome
        .steps
        .iter()
        .map(|s| s.output.as_ref().map(Vec::len))
        .collect();
    assert_eq!(outputs, [Some(15), None, Some(50 * 1024)]);
    assert_eq!(
        outcome.steps[0].output.as_deref(),
        Some(&br#"{"revision": 3}"#[..])
    );
}

/// A step asking for another Python than the stand-in has is warned in its log, before it runs.
#[tokio::test]
async fn a_python_version_that_does_not_run_is_warned_in_the_log() {
    let yaml = "steps: [{name: 'python:3.12-slim', args: [python3, -c, 'print(42)']}]";
    let (outcome, events) = run("python-version", yaml).await;
    assert_eq!(outcome.status, Status::Success, "{outcome:?}");
    let said = lines(&events, 0);
    assert!(
        said[0].starts_with(
            r#"[builder] warning: "python:3.12-slim" runs builder/python:latest, which has version 3.11"#
        ),
        "{said:?}"
    );
    assert_eq!(said[1..], ["42"]);
}
