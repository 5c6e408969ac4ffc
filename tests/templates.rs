//! Pipeline templates as OCI artifacts and registry credentials, end to end: the real binary
//! against the registry `scripts/dev-env.sh` starts (no auth, plain HTTP on loopback) and a
//! registry with htpasswd auth over TLS with a CA each test makes (`scripts/auth-registry.sh`),
//! on the engine's bridge address so that neither the engine nor builder treats it as loopback.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{REGISTRY, build_id, builder, describe, source, submit};
use tempfile::TempDir;

mod common;

/// A repository no other test run uses.
fn unique(name: &str) -> String {
    format!("{REGISTRY}/test/{name}-{}", uuid::Uuid::new_v4().simple())
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn run(command: &mut Command) -> Output {
    command.output().expect("builder runs")
}

fn templates(data: &Path, args: &[&str]) -> Output {
    run(builder(data).arg("templates").args(args))
}

/// The manifest a tag names, as JSON, read with curl.
fn manifest(repository: &str, tag: &str) -> serde_json::Value {
    let path = repository.strip_prefix(&format!("{REGISTRY}/")).unwrap();
    let output = Command::new("curl")
        .args([
            "-sf",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json",
        ])
        .arg(format!("http://{REGISTRY}/v2/{path}/manifests/{tag}"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "no manifest for {repository}:{tag}"
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn templates_are_pushed_listed_and_pulled_with_immutable_versions_and_moving_tags() {
    let data = TempDir::new().unwrap();
    let dir = TempDir::new().unwrap();
    let repository = unique("pipeline");
    let write = |name: &str, content: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path.display().to_string()
    };
    let push = |file: &str, extra: &[&str]| {
        let mut args = vec!["push", file, "--repository", &repository];
        args.extend(extra);
        templates(data.path(), &args)
    };

    let first = write("training-pipeline_v1.9.0.yaml", "pipeline: 1.9.0\n");
    let pushed = push(&first, &["--tag", "latest"]);
    assert!(pushed.status.success(), "{}", text(&pushed));
    assert!(text(&pushed).contains(":1.9.0,latest pushed: digest sha256:"));

    // The manifest: artifact type, empty config, one layer of the template's own type, and the
    // standard annotations.
    let found = manifest(&repository, "1.9.0");
    assert_eq!(
        found["artifactType"],
        "application/vnd.builder.pipeline-template.v1"
    );
    assert_eq!(
        found["config"]["mediaType"],
        "application/vnd.oci.empty.v1+json"
    );
    assert_eq!(
        found["layers"][0]["mediaType"],
        "application/vnd.builder.pipeline-template.layer.v1+yaml"
    );
    let annotations = &found["annotations"];
    assert_eq!(annotations["org.opencontainers.image.version"], "1.9.0");
    assert_eq!(
        annotations["org.opencontainers.image.title"],
        "training-pipeline_v1.9.0.yaml"
    );
    assert!(annotations["org.opencontainers.image.created"].is_string());

    // Re-pushing the same content is a no-op: same digest, nothing uploaded.
    let again = push(&first, &["--tag", "latest"]);
    assert!(
        text(&again).contains(":1.9.0,latest unchanged"),
        "{}",
        text(&again)
    );

    // Other content under an existing version is refused, unless the version may move.
    let changed = write("training-pipeline_v1.9.0.yaml", "pipeline: changed\n");
    let refused = push(&changed, &[]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused).contains("1.9.0 already exists with other content"),
        "{}",
        text(&refused)
    );
    let moved = push(&changed, &["--allow-overwrite"]);
    assert!(moved.status.success(), "{}", text(&moved));

    // Later versions; `latest` follows the push that names it.
    for version in ["1.10.0", "1.0.0"] {
        let file = write(&format!("training-pipeline_v{version}.yaml"), version);
        let tag: &[&str] = if version == "1.10.0" {
            &["--tag", "latest"]
        } else {
            &[]
        };
        assert!(push(&file, tag).status.success());
    }
    let explicit = write("no-version.yaml", "explicit\n");
    assert!(
        push(&explicit, &["--version", "2.0.0-rc.1"])
            .status
            .success()
    );
    let unversioned = push(&explicit, &[]);
    assert!(
        text(&unversioned).contains("the file name carries no version"),
        "{}",
        text(&unversioned)
    );

    let listed = templates(data.path(), &["list", &repository, "--format", "json"]);
    assert!(listed.status.success(), "{}", text(&listed));
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let versions: Vec<(&str, Vec<&str>)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let tags = v["tags"].as_array().unwrap();
            (
                v["version"].as_str().unwrap(),
                tags.iter().map(|t| t.as_str().unwrap()).collect(),
            )
        })
        .collect();
    assert_eq!(
        versions,
        [
            ("1.0.0", vec!["1.0.0"]),
            ("1.9.0", vec!["1.9.0"]),
            ("1.10.0", vec!["1.10.0", "latest"]),
            ("2.0.0-rc.1", vec!["2.0.0-rc.1"]),
        ]
    );

    // Pull gives back the exact bytes, by version or by tag.
    let out = dir.path().join("pulled.yaml");
    let pull = |reference: String| {
        let output = templates(
            data.path(),
            &["pull", &reference, "-o", out.to_str().unwrap()],
        );
        assert!(output.status.success(), "{}", text(&output));
        std::fs::read_to_string(&out).unwrap()
    };
    assert_eq!(pull(format!("{repository}:1.9.0")), "pipeline: changed\n");
    assert_eq!(pull(format!("{repository}:latest")), "1.10.0");
    let missing = templates(data.path(), &["pull", &format!("{repository}:9.9.9")]);
    assert!(
        text(&missing).contains(":9.9.9 does not exist"),
        "{}",
        text(&missing)
    );
}

/// `scripts/auth-registry.sh`, stopped when dropped.
struct AuthRegistry {
    child: Child,
    host: String,
    dir: TempDir,
}

const USER: &str = "alice";
const PASSWORD: &str = "s3cret-pw";

impl AuthRegistry {
    fn start() -> Self {
        let host = bridge_address();
        let port = free_port();
        let dir = TempDir::new().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/auth-registry.sh");
        let child = Command::new(script)
            .arg(dir.path())
            .args([&host, &port.to_string(), USER, PASSWORD])
            .spawn()
            .expect("scripts/auth-registry.sh (run scripts/dev-env.sh first)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect((host.as_str(), port)).is_err() {
            assert!(Instant::now() < deadline, "the auth registry did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            child,
            host: format!("{host}:{port}"),
            dir,
        }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// A Docker config file holding `user:password` for this registry.
    fn docker_config(&self, name: &str, user: &str, password: &str) -> PathBuf {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let path = self.dir.path().join(name);
        let config = serde_json::json!({"auths": {(&self.host): {"auth": auth}}});
        std::fs::write(&path, config.to_string()).unwrap();
        path
    }
}

impl Drop for AuthRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The engine's bridge address: not loopback, so TLS is verified, yet reachable by the engine.
fn bridge_address() -> String {
    let output = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "docker0"])
        .output()
        .expect("ip");
    let text = String::from_utf8_lossy(&output.stdout);
    let address = text
        .split_whitespace()
        .skip_while(|word| *word != "inet")
        .nth(1)
        .expect("docker0 has an address (scripts/dev-env.sh starts dockerd)");
    address.split('/').next().unwrap().to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn registries_with_htpasswd_over_tls_take_credentials_from_docker_config_files_and_helpers() {
    let registry = AuthRegistry::start();
    let data = TempDir::new().unwrap();
    let template = data.path().join("auth_v0.1.0.yaml");
    std::fs::write(&template, "secured: true\n").unwrap();
    let repository = format!("{}/ml/secured", registry.host);
    let ca = registry.ca();
    let with = |config: &Path, args: &[&str]| {
        let mut command = builder(data.path());
        command
            .arg("--registry-config")
            .arg(config)
            .arg("--registry-ca")
            .arg(&ca)
            .arg("templates")
            .args(args);
        run(&mut command)
    };
    let push = [
        "push",
        template.to_str().unwrap(),
        "--repository",
        &repository,
    ];

    let good = registry.docker_config("good.json", USER, PASSWORD);
    let pushed = with(&good, &push);
    assert!(pushed.status.success(), "{}", text(&pushed));
    let listed = with(&good, &["list", &repository]);
    assert!(text(&listed).contains("0.1.0"), "{}", text(&listed));
    let pulled = with(&good, &["pull", &format!("{repository}:0.1.0")]);
    assert_eq!(pulled.stdout, b"secured: true\n");

    // Wrong and missing credentials: a 401 that names the registry and where the credentials
    // came from.
    let bad = registry.docker_config("bad.json", USER, "wrong");
    let refused = with(&bad, &["list", &repository]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused).contains(&format!(
            "registry {} refused the credentials of \"alice\" (from {})",
            registry.host,
            bad.display()
        )),
        "{}",
        text(&refused)
    );
    let none = registry.dir.path().join("none.json");
    std::fs::write(&none, "{}").unwrap();
    let anonymous = with(&none, &["list", &repository]);
    assert!(
        text(&anonymous).contains("asks for credentials and none are configured"),
        "{}",
        text(&anonymous)
    );

    // A credential helper named by `credHelpers`, found on PATH as Docker finds it.
    let bin = registry.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let helper = bin.join("docker-credential-test");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\nread server\n[ \"$server\" = {} ] || {{ echo credentials not found; exit 1; }}\n\
             echo '{{\"ServerURL\":\"'$server'\",\"Username\":\"{USER}\",\"Secret\":\"{PASSWORD}\"}}'\n",
            registry.host
        ),
    )
    .unwrap();
    let executable = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(&helper, executable).unwrap();
    let helped = registry.dir.path().join("helper.json");
    let config = serde_json::json!({"credHelpers": {(&registry.host): "test"}});
    std::fs::write(&helped, config.to_string()).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let mut command = builder(data.path());
    command
        .env("PATH", path)
        .arg("--registry-config")
        .arg(&helped)
        .arg("--registry-ca")
        .arg(&ca)
        .args(["templates", "list", &repository]);
    let listed = run(&mut command);
    assert!(text(&listed).contains("0.1.0"), "{}", text(&listed));

    // Without its CA the registry's certificate is not trusted: it is not loopback.
    let untrusted = run(builder(data.path())
        .arg("--registry-config")
        .arg(&good)
        .args(["templates", "list", &repository]));
    assert!(
        text(&untrusted).contains("certificate verify failed"),
        "{}",
        text(&untrusted)
    );
}

const TEMPLATE_BUILD: &str = r#"
steps:
- name: builder/busybox
  script: |
    mkdir -p dist
    printf 'pipelineSpec: {name: demo}\n' > dist/demo_v1.2.0.yaml
    printf 'older\n' > dist/demo_v1.1.0.yaml
    printf 'other\n' > dist/unversioned.yaml
    sha256sum dist/demo_v1.2.0.yaml
templates:
- paths: ['dist/demo_*.yaml']
  repository: $_REPOSITORY
  tags: [latest]
  annotations:
    team: ml
    commit: $_COMMIT
"#;

#[test]
fn a_build_pushes_its_templates_after_its_steps_and_records_them() {
    let data = TempDir::new().unwrap();
    let repository = unique("built");
    let dir = source(TEMPLATE_BUILD, &[]);
    let substitutions = format!("_REPOSITORY={repository},_COMMIT=abc123");
    let output = submit(
        data.path(),
        dir.path(),
        &["--substitutions", &substitutions],
    );
    assert!(output.status.success(), "{}", text(&output));
    let printed = text(&output);
    assert!(
        printed.contains(&format!("TEMPLATE: {repository}:1.2.0 sha256:")),
        "{printed}"
    );
    let record = describe(data.path(), &build_id(&printed));
    let pushed = record["templates"].as_array().unwrap();
    assert_eq!(pushed.len(), 2);
    assert_eq!(pushed[0]["file"], "dist/demo_v1.1.0.yaml");
    assert_eq!(pushed[0]["tags"], serde_json::json!(["1.1.0"]));
    assert_eq!(pushed[1]["tags"], serde_json::json!(["1.2.0", "latest"]));
    let digest = pushed[1]["digest"].as_str().unwrap();
    assert_eq!(
        common::registry_digest(&repository[REGISTRY.len() + 1..], "latest").as_deref(),
        Some(digest)
    );
    assert_eq!(
        manifest(&repository, "1.2.0")["annotations"]["commit"],
        "abc123"
    );

    // The bytes pulled back are those the step wrote: their sha256 is in the step's log.
    let pulled = templates(data.path(), &["pull", &format!("{repository}:latest")]);
    let sha = sha256(&pulled.stdout);
    assert!(
        printed.contains(&format!("{sha}  dist/demo_v1.2.0.yaml")),
        "{printed}"
    );

    // The same build again changes nothing.
    let again = submit(
        data.path(),
        dir.path(),
        &["--substitutions", &substitutions],
    );
    assert!(text(&again).contains("(unchanged)"), "{}", text(&again));
}

fn sha256(bytes: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), bytes).unwrap();
    let output = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// A build whose `templates:` cannot be pushed fails (FAILURE, not INTERNAL_ERROR) and says why.
fn failed_build(config: &str, substitutions: &str) -> (String, serde_json::Value) {
    let data = TempDir::new().unwrap();
    let dir = source(config, &[]);
    let output = submit(data.path(), dir.path(), &["--substitutions", substitutions]);
    assert!(text(&output).contains("\nID: "), "{}", text(&output));
    let record = describe(data.path(), &build_id(&text(&output)));
    assert_eq!(record["status"], "FAILURE", "{record}");
    (record["failure"].as_str().unwrap().to_string(), record)
}

#[test]
fn template_pushes_that_cannot_happen_fail_the_build_and_say_why() {
    let repository = unique("failing");
    let substitutions = format!("_REPOSITORY={repository}");
    let with_templates = |templates: &str| {
        format!(
            "steps:\n- name: builder/busybox\n  script: |\n    mkdir -p dist\n    \
             printf '{}' > dist/big_v1.0.0.yaml\n    printf x > dist/plain.yaml\n\
             templates:\n{templates}",
            "y".repeat(64)
        )
    };
    let (nothing, _) = failed_build(
        &with_templates("- paths: ['out/*.yaml']\n  repository: $_REPOSITORY\n"),
        &substitutions,
    );
    assert!(
        nothing.contains("templates[0].paths: no file of /workspace matches [\"out/*.yaml\"]"),
        "{nothing}"
    );
    let (unversioned, _) = failed_build(
        &with_templates("- paths: ['dist/plain.yaml']\n  repository: $_REPOSITORY\n"),
        &substitutions,
    );
    assert!(
        unversioned.contains("dist/plain.yaml: the file name carries no version: the regex `_v("),
        "{unversioned}"
    );
    let (large, _) = failed_build(
        &with_templates(
            "- paths: ['dist/big_*']\n  repository: $_REPOSITORY\n  maxSizeBytes: 10\n",
        ),
        &substitutions,
    );
    assert!(
        large.contains("/workspace/dist/big_v1.0.0.yaml is 64 bytes, more than the 10 bytes"),
        "{large}"
    );
    let (unreachable, _) = failed_build(
        &with_templates("- paths: ['dist/big_*']\n  repository: $_REPOSITORY\n"),
        "_REPOSITORY=127.0.0.1:9/ml/t",
    );
    assert!(
        unreachable.contains("registry 127.0.0.1:9 is unreachable"),
        "{unreachable}"
    );
}

#[test]
fn images_and_templates_reach_a_registry_that_asks_for_credentials() {
    let registry = AuthRegistry::start();
    // The engine trusts a registry's CA from its certs.d, as `docker push` does.
    let certs = PathBuf::from("/etc/docker/certs.d").join(&registry.host);
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(registry.ca(), certs.join("ca.crt")).unwrap();
    let config = "steps:\n- name: builder/busybox\n  script: |\n    mkdir -p dist\n    \
         printf 'a: 1\\n' > dist/t_v3.0.0.yaml\n\
         - name: builder/docker\n  args: [tag, builder/busybox, $_HOST/ml/busybox:1]\n\
         images: [$_HOST/ml/busybox:1]\n\
         templates:\n- paths: ['dist/*.yaml']\n  repository: $_HOST/ml/t\n";
    let good = registry.docker_config("good.json", USER, PASSWORD);
    let data = TempDir::new().unwrap();
    let dir = source(config, &[]);
    let output = run(common::submit_command(data.path(), dir.path())
        .arg("--registry-config")
        .arg(&good)
        .args(["--substitutions", &format!("_HOST={}", registry.host)]));
    let printed = text(&output);
    assert!(output.status.success(), "{printed}");
    assert!(
        printed.contains(&format!("IMAGE: {}/ml/busybox:1 sha256:", registry.host)),
        "{printed}"
    );
    assert!(
        printed.contains(&format!("TEMPLATE: {}/ml/t:3.0.0 sha256:", registry.host)),
        "{printed}"
    );

    // Wrong credentials: FAILURE, and the message names the registry.
    let bad = registry.docker_config("bad.json", USER, "wrong");
    let data = TempDir::new().unwrap();
    let output = run(common::submit_command(data.path(), dir.path())
        .arg("--registry-config")
        .arg(&bad)
        .args(["--substitutions", &format!("_HOST={}", registry.host)]));
    let record = describe(data.path(), &build_id(&text(&output)));
    assert_eq!(record["status"], "FAILURE", "{record}");
    let failure = record["failure"].as_str().unwrap();
    assert!(failure.contains(&registry.host), "{failure}");
    let _ = std::fs::remove_dir_all(certs);
}
