//! Every example in `configs/` is something users copy, so each one runs here as its README says:
//! `builder submit` of the example directory against the real engine and registry, with what it
//! pushes checked in the registry and what it deploys checked while it serves.

use std::path::Path;
use std::process::Command;

use assert_cmd::cargo::CommandCargoExt;
use common::registry_digest;

mod common;

/// What `builder submit` of a directory printed, and whether it succeeded.
struct Submitted {
    success: bool,
    stdout: String,
}

impl Submitted {
    fn build_id(&self) -> &str {
        self.field("ID: ")
    }

    /// The digest the summary printed for `image`.
    fn digest(&self, image: &str) -> &str {
        self.field(&format!("IMAGE: {image} "))
    }

    fn field(&self, prefix: &str) -> &str {
        let line = self
            .stdout
            .lines()
            .find_map(|line| line.strip_prefix(prefix));
        line.unwrap_or_else(|| panic!("no {prefix:?} line in:\n{}", self.stdout))
    }

    fn assert_succeeded(&self) {
        assert!(self.success, "the build failed:\n{}", self.stdout);
    }
}

fn submit(dir: &Path, substitutions: &str, data: &Path) -> Submitted {
    submit_with(dir, substitutions, data, &[])
}

/// [`submit`] with more arguments.
fn submit_with(dir: &Path, substitutions: &str, data: &Path, extra: &[&str]) -> Submitted {
    let mut command = Command::cargo_bin("builder").unwrap();
    command
        .env("BUILDER_DATA_DIR", data)
        .arg("submit")
        .args(extra)
        .arg(dir)
        .arg("--config")
        .arg(dir.join("cloudbuild.yaml"));
    if !substitutions.is_empty() {
        command.args(["--substitutions", substitutions]);
    }
    let out = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let success = out.status.success() && stdout.contains("STATUS: SUCCESS");
    Submitted {
        success,
        stdout: stdout + &String::from_utf8_lossy(&out.stderr),
    }
}

/// A value unique to this run, usable as a tag or name part.
fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{:07x}", (std::process::id() << 12 ^ nanos) & 0xfff_ffff)
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn quickstart_pushes_its_image() {
    let data = tempfile::TempDir::new().unwrap();
    let tag = unique();
    let built = submit(
        Path::new("configs/quickstart"),
        &format!("_TAG={tag}"),
        data.path(),
    );
    built.assert_succeeded();
    let digest = built.digest(&format!("localhost:5000/quickstart:{tag}"));
    assert_eq!(registry_digest("quickstart", &tag).as_deref(), Some(digest));
}

#[test]
fn trainer_image_is_tested_built_and_pushed_with_the_commit_tag_and_latest() {
    let data = tempfile::TempDir::new().unwrap();
    let short_sha = unique();
    let built = submit(
        Path::new("configs/trainer-image"),
        &format!("SHORT_SHA={short_sha}"),
        data.path(),
    );
    built.assert_succeeded();
    assert!(built.stdout.contains("Ran 2 tests"), "{}", built.stdout);
    for tag in [short_sha.as_str(), "latest"] {
        let digest = built.digest(&format!("localhost:5000/ml/trainer:{tag}"));
        assert_eq!(registry_digest("ml/trainer", tag).as_deref(), Some(digest));
    }
}

#[test]
fn pipeline_templates_are_compiled_pushed_with_their_version_and_pulled_back_byte_for_byte() {
    let data = tempfile::TempDir::new().unwrap();
    let dir = Path::new("configs/pipeline-templates");
    let version = std::fs::read_to_string(dir.join("VERSION")).unwrap();
    let version = version.trim();
    let repository = format!("127.0.0.1:5000/test/training-pipeline-{}", unique());
    let built = submit(
        dir,
        &format!("_TEMPLATE_REPOSITORY={repository}"),
        data.path(),
    );
    built.assert_succeeded();
    let file = format!("dist/training-pipeline_v{version}.yaml");
    let digest = built.field(&format!("TEMPLATE: {repository}:{version} "));
    assert_eq!(
        registry_digest(&repository["127.0.0.1:5000/".len()..], "latest").as_deref(),
        Some(digest)
    );
    // The bytes pulled back are those compiled: the check step printed their sha256.
    let out = data.path().join("pulled.yaml");
    let pulled = Command::cargo_bin("builder")
        .unwrap()
        .args([
            "templates",
            "pull",
            &format!("{repository}:{version}"),
            "-o",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(pulled.status.success(), "{pulled:?}");
    let sha = Command::new("sha256sum").arg(&out).output().unwrap();
    let sha = String::from_utf8_lossy(&sha.stdout);
    let sha = sha.split_whitespace().next().unwrap();
    assert!(
        built.stdout.contains(&format!("{sha}  {file}")),
        "{}",
        built.stdout
    );
}

#[test]
fn the_pipeline_templates_trigger_fires_only_when_the_template_sources_change() {
    let text = std::fs::read("configs/triggers/pipeline-templates.yaml").unwrap();
    let (trigger, _) = builder::core::triggers::load(&text).unwrap();
    let fires = |file: &str| trigger.files_fire(&[file.to_string()]).is_ok();
    for source in [
        "pipeline.py",
        "VERSION",
        "requirements.txt",
        "check_template.py",
    ] {
        assert!(
            fires(&format!("configs/pipeline-templates/{source}")),
            "{source}"
        );
    }
    for other in [
        "configs/pipeline-templates/README.md",
        "configs/trainer-image/trainer.Dockerfile",
        "README.md",
    ] {
        assert!(!fires(other), "{other}");
    }
}

/// Removes a test's deployment, whatever the test's outcome.
struct Deployment(String);

impl Deployment {
    /// The build whose revision serves, and whether it answers its health check.
    fn serving(&self) -> (String, bool) {
        let revision = docker(&[
            "inspect",
            "--format",
            r#"{{index .Config.Labels "builder.revision"}}"#,
            &self.0,
        ]);
        let address = docker(&["port", &self.0, "8080"]);
        let health = Command::new("curl")
            .args(["-sf", &format!("http://{address}/healthz")])
            .output()
            .unwrap();
        (revision, health.status.success())
    }

    fn containers(&self) -> String {
        let filter = format!("label=builder.service={}", self.0);
        docker(&["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"])
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for name in self.containers().lines() {
            docker(&["rm", "-f", name]);
        }
    }
}

#[test]
fn dashboard_revisions_replace_each_other_only_when_healthy() {
    let data = tempfile::TempDir::new().unwrap();
    let service = Deployment(format!("test-dashboard-{}", unique()));
    let substitutions = format!("_SERVICE={}", service.0);
    let dir = Path::new("configs/dashboard");
    // Its deploy outlives the build: it needs the engine itself (configs/dashboard/README.md).
    let submit = |dir: &Path, substitutions: &str, data: &Path| {
        submit_with(dir, substitutions, data, &["--trusted"])
    };
    for _ in 0..2 {
        let built = submit(dir, &substitutions, data.path());
        built.assert_succeeded();
        assert_eq!(service.serving(), (built.build_id().to_string(), true));
        assert_eq!(service.containers(), service.0);
    }
    let healthy = service.serving();

    // A revision that cannot start (its data does not parse) fails the deploy, and the previous
    // revision keeps serving.
    let broken = tempfile::TempDir::new().unwrap();
    for file in std::fs::read_dir(dir).unwrap() {
        let file = file.unwrap().path();
        std::fs::copy(&file, broken.path().join(file.file_name().unwrap())).unwrap();
    }
    std::fs::write(broken.path().join("metrics.json"), "[").unwrap();
    let built = submit(broken.path(), &substitutions, data.path());
    assert!(!built.success, "{}", built.stdout);
    assert!(
        built.stdout.contains("keeps its current revision"),
        "{}",
        built.stdout
    );
    assert_eq!(service.serving(), healthy);
    assert_eq!(service.containers(), service.0);
}

#[test]
fn every_notifier_example_loads() {
    let (notifiers, warnings) =
        builder::pipeline::service::load_notifiers(Path::new("configs/notifications")).unwrap();
    assert_eq!(warnings, "");
    let mut names: Vec<_> = notifiers.iter().map(|n| n.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["deploys", "failures-by-mail", "team-chat"]);
}

#[test]
fn every_trigger_example_loads() {
    let (triggers, warnings) =
        builder::pipeline::service::TriggerFiles::load(Path::new("configs/triggers")).unwrap();
    assert_eq!(warnings, "");
    let mut names: Vec<_> = triggers.all().iter().map(|t| t.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["dashboard", "pipeline-templates", "release-tags"]);
}
