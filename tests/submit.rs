//! `builder submit` end to end, as a user runs it: the real binary against the real engine and
//! registry (started by `scripts/dev-env.sh`), each test with its own build record directory.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{build_id, builder, describe, leftovers, source, submit, submit_command};
use tempfile::TempDir;

mod common;

/// Starts a submit and reads its stdout until a step prints `ready` (within 60 s); returns the
/// child and the build id.
fn start_until_ready(data_dir: &Path, source: &Path) -> (Child, String) {
    start_command_until_ready(submit_command(data_dir, source))
}

/// [`start_until_ready`] for a submit command prepared by the caller.
fn start_command_until_ready(mut command: Command) -> (Child, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (sender, lines) = std::sync::mpsc::channel();
    // Reads to the end, so the child never blocks on a full pipe once nobody listens.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = sender.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut id = String::new();
    loop {
        let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        else {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("the step did not print `ready` within 60 s");
        };
        if let Some(rest) = line.strip_prefix("starting build \"") {
            id = rest.trim_end_matches('"').to_string();
        }
        if line.ends_with(": ready") {
            return (child, id);
        }
    }
}

const WAIT_FOREVER: &str =
    "steps:\n- name: builder/busybox\n  script: |\n    echo ready\n    exec sleep 1000\n";

#[test]
fn a_successful_build_prints_and_records_its_image_digest() {
    let data = TempDir::new().unwrap();
    let tag = format!("127.0.0.1:5000/submit-test/app:{}", std::process::id());
    let config = format!(
        "steps:\n- name: builder/busybox\n  args: [sh, -c, 'echo hi > greeting']\n\
         - name: gcr.io/cloud-builders/docker\n  args: [build, -t, '{tag}', .]\nimages: ['{tag}']\n"
    );
    let dir = source(
        &config,
        &[(
            "Dockerfile",
            "FROM builder/busybox:latest\nCOPY greeting /\n",
        )],
    );
    let out = submit(data.path(), dir.path(), &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Step #1: Successfully tagged"), "{stdout}");
    let id = build_id(&stdout);
    let record = describe(data.path(), &id);
    assert_eq!(record["status"], "SUCCESS");
    assert_eq!(record["images"][0]["name"], tag.as_str());
    let digest = record["images"][0]["digest"].as_str().unwrap();
    assert!(stdout.contains(&format!("IMAGE: {tag} {digest}")));
    assert_eq!(record["steps"][1]["status"], "SUCCESS");
    assert_eq!(leftovers(&id), "");
    let log = builder(data.path())
        .args(["builds", "log", &id])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&log.stdout).contains("Step #1: Successfully tagged"));
    Command::new("docker").args(["rmi", &tag]).output().unwrap();
}

#[test]
fn a_failing_build_exits_1_with_cloud_builds_message() {
    let data = TempDir::new().unwrap();
    let dir = source(
        "steps:\n- name: builder/busybox\n  args: [sh, -c, 'exit 3']\n",
        &[],
    );
    let out = submit(data.path(), dir.path(), &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains(
        "ERROR: build step 0 \"builder/busybox\" failed: step exited with non-zero status: 3"
    ));
    let record = describe(data.path(), &build_id(&stdout));
    assert_eq!(record["status"], "FAILURE");
    assert_eq!(record["steps"][0]["exitCode"], 3);
}

#[test]
fn tag_builds_the_dockerfile_and_pushes_it() {
    let data = TempDir::new().unwrap();
    let dir = source(
        "unused: true\n",
        &[("Dockerfile", "FROM builder/busybox:latest\n")],
    );
    let tag = format!("127.0.0.1:5000/submit-test/tagged:{}", std::process::id());
    let out = builder(data.path())
        .arg("submit")
        .arg(dir.path())
        .args(["--tag", &tag])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("IMAGE: {tag} sha256:")));
    Command::new("docker").args(["rmi", &tag]).output().unwrap();
    let empty = TempDir::new().unwrap();
    let out = builder(data.path())
        .arg("submit")
        .arg(empty.path())
        .args(["--tag", &tag])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Dockerfile required when specifying --tag")
    );
}

#[test]
fn ctrl_c_cancels_the_build_and_leaves_nothing() {
    let data = TempDir::new().unwrap();
    let dir = source(WAIT_FOREVER, &[]);
    let (mut child, id) = start_until_ready(data.path(), dir.path());
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert_eq!(describe(data.path(), &id)["status"], "CANCELLED");
    assert_eq!(leftovers(&id), "");
}

#[test]
fn a_build_whose_process_died_is_cleaned_up_by_the_next_start() {
    let data = TempDir::new().unwrap();
    let dir = source(WAIT_FOREVER, &[]);
    let (mut child, id) = start_until_ready(data.path(), dir.path());
    child.kill().unwrap();
    child.wait().unwrap();
    assert_ne!(
        leftovers(&id),
        "",
        "the killed build's step should still be there"
    );
    let quick = source("steps:\n- name: builder/busybox\n  args: ['true']\n", &[]);
    let out = submit(data.path(), quick.path(), &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("Cleaned up build [{id}]")));
    let record = describe(data.path(), &id);
    assert_eq!(record["status"], "INTERNAL_ERROR");
    assert_eq!(record["steps"][0]["status"], "INTERNAL_ERROR");
    assert_eq!(leftovers(&id), "");
}

/// A build held by a process of another machine (its holder has no lock file here) is left
/// alone while its lease lasts, and closed by the next start once the lease has run out.
#[test]
fn a_build_held_elsewhere_is_closed_only_once_its_lease_runs_out() {
    use builder::adapters::store::{Builds as _, DATABASE, Lease, Queue as _, SqliteStore};
    let data = TempDir::new().unwrap();
    let id = uuid::Uuid::new_v4().to_string();
    let elsewhere = |seconds| Lease {
        holder: "a process of another machine".into(),
        duration: Duration::from_secs(seconds),
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store = runtime.block_on(async {
        let store = SqliteStore::open(&data.path().join(DATABASE))
            .await
            .unwrap();
        let plan = builder::core::plan::resolve(
            &builder::core::config::load(b"steps: [{name: builder/busybox}]")
                .unwrap()
                .config,
            &Default::default(),
        )
        .unwrap();
        let source = serde_json::json!({"kind": "none"});
        store
            .create_build(&id, &source, &plan, &elsewhere(30))
            .await
            .unwrap();
        store.start_build(&id, &elsewhere(30)).await.unwrap();
        store
    });
    let quick = source("steps:\n- name: builder/busybox\n  args: ['true']\n", &[]);
    let cleaned = format!("Cleaned up build [{id}]");
    let out = submit(data.path(), quick.path(), &[]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains(&cleaned));
    assert_eq!(describe(data.path(), &id)["status"], "WORKING");

    runtime.block_on(async {
        store.renew_lease(&id, &elsewhere(0)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    });
    let out = submit(data.path(), quick.path(), &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains(&cleaned));
    assert_eq!(describe(data.path(), &id)["status"], "INTERNAL_ERROR");
}

#[test]
fn an_unreachable_engine_says_what_to_run() {
    let data = TempDir::new().unwrap();
    let dir = source("steps:\n- name: builder/busybox\n", &[]);
    let out = submit_command(data.path(), dir.path())
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("scripts/dev-env.sh"));
}

#[test]
fn invalid_configs_and_missing_secrets_are_refused_before_anything_runs() {
    let data = TempDir::new().unwrap();
    let dir = source("steps:\n- name: builder/busybox\n  args: [$HOME]\n", &[]);
    let out = submit(data.path(), dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(":3:10: steps[0].args[0]: key in the template \"HOME\" is not a valid built-in substitution"), "{stderr}");
    let secret = "steps:\n- name: builder/busybox\n  secretEnv: [PW]\navailableSecrets:\n  secretManager:\n  - {versionName: projects/p/secrets/absent-pw/versions/1, env: PW}\n";
    let dir = source(secret, &[]);
    let out = submit(data.path(), dir.path(), &["--secret", "absent-pw"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("set BUILDER_SECRET_ABSENT_PW"));
    // gcloud's rule: a config that names its own source takes no upload.
    let dir = source(
        "steps:\n- name: builder/busybox\nsource: {storageSource: {bucket: b, object: o}}\n",
        &[],
    );
    let out = submit(data.path(), dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "cloudbuild.yaml:3:9: source: config cannot specify source without the flag --no-source"
        ),
        "{stderr}"
    );
}

#[test]
fn async_returns_at_once_and_the_log_can_be_followed() {
    let data = TempDir::new().unwrap();
    let dir = source(
        "steps:\n- name: builder/busybox\n  script: |\n    echo first\n    sleep 1\n    echo second\n",
        &[],
    );
    let out = submit(data.path(), dir.path(), &["--async"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let status = describe(data.path(), &id)["status"].clone();
    assert!(status == "QUEUED" || status == "WORKING", "{status}");
    let log = builder(data.path())
        .args(["builds", "log", "--stream", &id])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&log.stdout),
        "Step #0: first\nStep #0: second\n"
    );
    assert_eq!(describe(data.path(), &id)["status"], "SUCCESS");
    assert_eq!(leftovers(&id), "");
}

#[test]
fn an_unreachable_registry_fails_the_push_and_says_what_to_run() {
    let data = TempDir::new().unwrap();
    let image = "127.0.0.1:5999/unreachable/app:1";
    let config = format!(
        "steps:\n- name: gcr.io/cloud-builders/docker\n  args: [build, -t, '{image}', .]\nimages: ['{image}']\n"
    );
    let dir = source(&config, &[("Dockerfile", "FROM builder/busybox:latest\n")]);
    let out = submit(data.path(), dir.path(), &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("scripts/dev-env.sh starts one on 127.0.0.1:5000"),
        "{stdout}"
    );
    assert_eq!(
        describe(data.path(), &build_id(&stdout))["status"],
        "FAILURE"
    );
    Command::new("docker")
        .args(["rmi", image])
        .output()
        .unwrap();
}

#[test]
fn the_timeout_flag_is_judged_as_if_the_config_said_it() {
    let data = TempDir::new().unwrap();
    let dir = source(
        "steps:\n- name: builder/busybox\n  args: ['true']\n  timeout: 2h\n",
        &[],
    );
    let out = submit(data.path(), dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("must be <= build timeout 1h0m0s (the default build timeout")
    );
    let out = submit(data.path(), dir.path(), &["--timeout", "3h"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = submit(data.path(), dir.path(), &["--timeout", "48h"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("timeout exceeds the timeout limit of 24h0m0s")
    );
}

#[test]
fn a_running_build_is_left_alone_by_another_submit() {
    let data = TempDir::new().unwrap();
    let dir = source(WAIT_FOREVER, &[]);
    let (mut child, id) = start_until_ready(data.path(), dir.path());
    let quick = source("steps:\n- name: builder/busybox\n  args: ['true']\n", &[]);
    let out = submit(data.path(), quick.path(), &[]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("Cleaned up"));
    assert_eq!(describe(data.path(), &id)["status"], "WORKING");
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(130));
    assert_eq!(leftovers(&id), "");
}

/// The workspace directories in `parent`.
fn workspaces(parent: &Path) -> Vec<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(parent)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("builder-workspace-")
        })
        .collect();
    found.sort();
    found
}

/// A submit killed with SIGKILL leaves its workspace directory; the next submit removes it, and
/// not the workspace of a submit still running (issue 14, point 11).
#[test]
fn a_killed_submits_workspace_is_removed_by_the_next_submit() {
    let data = TempDir::new().unwrap();
    // The submits' own temporary directory, so that only theirs are looked at.
    let tmp = TempDir::new().unwrap();
    let dir = source(WAIT_FOREVER, &[]);
    let in_tmp = |mut command: Command| {
        command.env("TMPDIR", tmp.path());
        command
    };
    let (mut running, running_id) =
        start_command_until_ready(in_tmp(submit_command(data.path(), dir.path())));
    let running_workspace = workspaces(tmp.path());
    assert_eq!(running_workspace.len(), 1);
    let (mut killed, killed_id) =
        start_command_until_ready(in_tmp(submit_command(data.path(), dir.path())));
    killed.kill().unwrap();
    killed.wait().unwrap();
    let left: Vec<_> = workspaces(tmp.path())
        .into_iter()
        .filter(|w| !running_workspace.contains(w))
        .collect();
    assert_eq!(
        left.len(),
        1,
        "the killed submit's workspace should still be there"
    );

    let quick = source("steps:\n- name: builder/busybox\n  args: ['true']\n", &[]);
    let out = in_tmp(submit_command(data.path(), quick.path()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("Removed workspace {}", left[0].display())),
        "{stderr}"
    );
    assert_eq!(workspaces(tmp.path()), running_workspace);
    assert_eq!(leftovers(&killed_id), "");

    Command::new("kill")
        .args(["-INT", &running.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(running.wait().unwrap().code(), Some(130));
    assert_eq!(workspaces(tmp.path()), Vec::<std::path::PathBuf>::new());
    assert_eq!(leftovers(&running_id), "");
}

/// Issue 22: a long log reads back from the store whole and in order, as `submit` printed it:
/// stdout and stderr, a line past 256 KiB cut with its mark, a secret masked.
#[test]
fn issue_22_a_long_log_reads_back_as_it_was_printed() {
    let data = TempDir::new().unwrap();
    let config = r#"steps:
- id: many
  name: builder/busybox
  script: |
    seq 1 30000
    echo to-stderr >&2
    head -c 600000 /dev/zero | tr '\0' x
    echo
    echo "the secret is $SECRET_VALUE"
  secretEnv: [SECRET_VALUE]
availableSecrets:
  secretManager:
  - versionName: projects/p/secrets/value/versions/latest
    env: SECRET_VALUE
"#;
    let dir = source(config, &[]);
    let secrets = TempDir::new().unwrap();
    std::fs::write(secrets.path().join("value"), "hunter22").unwrap();
    let out = submit(
        data.path(),
        dir.path(),
        &[
            "--secrets-dir",
            secrets.path().to_str().unwrap(),
            "--secret",
            "value",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let prefix = "Step #0 - \"many\": ";
    let printed: Vec<&str> = stdout.lines().filter(|l| l.starts_with(prefix)).collect();
    let id = build_id(&stdout);
    let log = builder(data.path())
        .args(["builds", "log", &id])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&log.stdout);
    let logged: Vec<&str> = log.lines().collect();
    assert!(
        logged == printed,
        "the stored log differs from the printed one"
    );
    // The stderr line may come anywhere after the first stdout lines: the engine reads the
    // streams apart.
    let (stderr, stdout): (Vec<&str>, Vec<&str>) =
        logged.iter().partition(|l| l.ends_with(": to-stderr"));
    assert_eq!(stderr.len(), 1);
    assert_eq!(stdout.len(), 30_000 + 3 + 1);
    let numbers: Vec<String> = (1..=30_000).map(|i| format!("{prefix}{i}")).collect();
    assert!(
        stdout[..30_000] == numbers,
        "the numbers are not whole and in order"
    );
    let cut = " [builder: line cut at 256 KiB, it goes on in the next line]";
    let pieces: Vec<usize> = stdout[30_000..30_003]
        .iter()
        .map(|l| l.len() - prefix.len())
        .collect();
    assert_eq!(
        pieces,
        [
            262_144 + cut.len(),
            262_144 + cut.len(),
            600_000 - 2 * 262_144
        ]
    );
    assert!(stdout[30_000].ends_with(cut));
    assert_eq!(stdout[30_003], format!("{prefix}the secret is [MASKED]"));
}

/// Issue 22: the log of a build whose `submit` was killed (SIGKILL) mid-step reads back whole
/// up to its last stored line: a step's lines are stored within a second, while it still runs.
#[test]
fn issue_22_a_killed_submits_log_is_readable_up_to_its_last_stored_line() {
    let data = TempDir::new().unwrap();
    let config = "steps:\n- name: builder/busybox\n  script: |\n    seq 1 20000\n    echo ready\n    exec sleep 1000\n";
    let dir = source(config, &[]);
    let (mut child, id) = start_until_ready(data.path(), dir.path());
    let log = || {
        let out = builder(data.path())
            .args(["builds", "log", &id])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !log().contains("Step #0: ready") {
        assert!(
            Instant::now() < deadline,
            "the lines were not stored while the step ran"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let expected: Vec<String> = (1..=20_000)
        .map(|i| format!("Step #0: {i}"))
        .chain(["Step #0: ready".to_string()])
        .collect();
    assert!(log().lines().eq(expected.iter().map(String::as_str)));
    // The next submit cleans up after the killed one.
    let quick = source("steps:\n- name: builder/busybox\n  args: ['true']\n", &[]);
    submit(data.path(), quick.path(), &[]);
    assert_eq!(leftovers(&id), "");
}

/// Runs `config` (secrets from `secrets`, a name and a value each) with `submit` and `extra`
/// arguments; returns what it printed and the build's log as `builds log` reads it back, each
/// a line a `Step #…` line, after checking that the build succeeded.
fn logged(config: &str, secrets: &[(&str, &str)], extra: &[&str]) -> (Vec<String>, Vec<String>) {
    let data = TempDir::new().unwrap();
    let dir = source(config, &[]);
    let values = TempDir::new().unwrap();
    for (name, value) in secrets {
        std::fs::write(values.path().join(name), value).unwrap();
    }
    let mut arguments = vec!["--secrets-dir", values.path().to_str().unwrap()];
    for (name, _) in secrets {
        arguments.extend(["--secret", name]);
    }
    arguments.extend(extra);
    let out = submit(data.path(), dir.path(), &arguments);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let steps = |text: &str| -> Vec<String> {
        (text.lines())
            .filter(|l| l.starts_with("Step #"))
            .map(str::to_owned)
            .collect()
    };
    let log = builder(data.path())
        .args(["builds", "log", &build_id(&stdout)])
        .output()
        .unwrap();
    (steps(&stdout), steps(&String::from_utf8_lossy(&log.stdout)))
}

/// Issue 22: a step's output is read from the engine once, as it is written. A burst that ends
/// with the step's exit, on both streams, and a step that exits at once after a last line
/// without a newline, are printed and logged whole, each line once and in order.
#[test]
fn issue_22_a_burst_at_the_exit_is_logged_whole_and_once() {
    let config = r#"steps:
- id: burst
  name: builder/busybox
  script: |
    seq 1 100000
    seq 1 1000 | sed 's/^/e/' >&2
- id: at-once
  name: builder/busybox
  args: ['sh', '-c', 'printf last']
"#;
    let (printed, logged) = logged(config, &[], &[]);
    assert!(
        logged == printed,
        "the stored log differs from the printed one"
    );
    let burst = "Step #0 - \"burst\": ";
    let (stderr, stdout): (Vec<&str>, Vec<&str>) = (logged.iter())
        .filter_map(|l| l.strip_prefix(burst))
        .partition(|l| l.starts_with('e'));
    let numbers: Vec<String> = (1..=100_000).map(|i| i.to_string()).collect();
    assert!(stdout == numbers, "stdout is not whole, once and in order");
    let errors: Vec<String> = (1..=1000).map(|i| format!("e{i}")).collect();
    assert!(stderr == errors, "stderr is not whole, once and in order");
    let at_once: Vec<&String> = (logged.iter())
        .filter(|l| l.starts_with("Step #1"))
        .collect();
    assert_eq!(at_once, ["Step #1 - \"at-once\": last"]);
}

/// Issue 18: a build's log keeps its steps' output up to `--log-limit` bytes, then one line
/// says where and why it was cut; the steps run on to their end, their output drained.
#[test]
fn issue_18_a_builds_log_stops_at_its_limit_and_its_steps_run_on() {
    let config = r#"steps:
- id: loud
  name: builder/busybox
  args: ['seq', '1', '100000']
- id: after
  name: builder/busybox
  args: ['echo', 'past the limit']
"#;
    let (printed, logged) = logged(config, &[], &["--log-limit", "100000"]);
    assert!(
        logged == printed,
        "the stored log differs from the printed one"
    );
    // What fits: lines of `seq` with their newlines, up to 100,000 bytes.
    let mut kept = Vec::new();
    let mut bytes = 0;
    for i in 1.. {
        let line = i.to_string();
        bytes += line.len() + 1;
        if bytes > 100_000 {
            break;
        }
        kept.push(format!("Step #0 - \"loud\": {line}"));
    }
    let (notice, lines) = logged.split_last().expect("a log");
    assert!(lines == kept, "the log is not the output up to its limit");
    assert!(
        notice.starts_with("Step #0 - \"loud\": [builder] log truncated at 100000 bytes")
            && notice.contains("--log-limit"),
        "{notice}"
    );
}

/// Issue 18: a secret printed across the cut of a line at 256 KiB is masked: the cut moves to
/// just before it, so that it is whole in the next piece.
#[test]
fn issue_18_a_secret_across_a_line_cut_is_masked() {
    let config = r#"steps:
- id: long
  name: builder/busybox
  secretEnv: [SECRET_VALUE]
  script: |
    head -c 262140 /dev/zero | tr '\0' x
    printf '%s and after\n' "$SECRET_VALUE"
availableSecrets:
  secretManager:
  - versionName: projects/p/secrets/value/versions/latest
    env: SECRET_VALUE
"#;
    let secret = "hunter22-across-the-cut";
    let (printed, logged) = logged(config, &[("value", secret)], &[]);
    assert!(
        logged == printed,
        "the stored log differs from the printed one"
    );
    let cut = " [builder: line cut at 256 KiB, it goes on in the next line]";
    let prefix = "Step #0 - \"long\": ";
    assert_eq!(logged.len(), 2);
    assert!(
        logged[0] == format!("{prefix}{}{cut}", "x".repeat(262_140)),
        "the first piece ends before the secret"
    );
    assert_eq!(logged[1], format!("{prefix}[MASKED] and after"));
    assert!(!logged.iter().any(|l| l.contains("hunter22")));
}
