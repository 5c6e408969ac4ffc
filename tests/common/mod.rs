//! Helpers shared by the integration tests; each test crate uses some of them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use assert_cmd::cargo::CommandCargoExt;
use tempfile::TempDir;

pub mod browser;
pub mod github;
pub mod postgres;
pub mod server;

/// The local registry `scripts/dev-env.sh` starts.
pub const REGISTRY: &str = "127.0.0.1:5000";

/// The registry's `Docker-Content-Digest` for `repository:tag`, `None` when it has no such tag.
pub fn registry_digest(repository: &str, tag: &str) -> Option<String> {
    let mut curl = Command::new("curl");
    curl.arg("-sfI");
    for accepted in [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    ] {
        curl.args(["-H", &format!("Accept: {accepted}")]);
    }
    let url = format!("http://{REGISTRY}/v2/{repository}/manifests/{tag}");
    let output = curl.arg(url).output().expect("curl");
    let headers = String::from_utf8_lossy(&output.stdout);
    headers.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("docker-content-digest")
            .then(|| value.trim().to_string())
    })
}

/// Runs git in `dir`, independent of the user's and the system's git config; returns its
/// trimmed output.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "user.name=Builder Test",
            "-c",
            "user.email=test@example.com",
        ])
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        output.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("UTF-8 output")
        .trim()
        .to_owned()
}

/// `builder` with its own record directory, talking to the default engine.
pub fn builder(data_dir: &Path) -> Command {
    let mut command = Command::cargo_bin("builder").unwrap();
    command
        .env("BUILDER_DATA_DIR", data_dir)
        .env_remove("DOCKER_HOST");
    command
}

/// A source directory holding `cloudbuild.yaml` and the given extra files.
pub fn source(config: &str, files: &[(&str, &str)]) -> TempDir {
    let dir = TempDir::new().unwrap();
    std::fs::write(dir.path().join("cloudbuild.yaml"), config).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

/// `builder submit SOURCE --config SOURCE/cloudbuild.yaml`, ready for more arguments.
pub fn submit_command(data_dir: &Path, source: &Path) -> Command {
    let mut command = builder(data_dir);
    command
        .arg("submit")
        .arg(source)
        .arg("--config")
        .arg(source.join("cloudbuild.yaml"));
    command
}

pub fn submit(data_dir: &Path, source: &Path, extra: &[&str]) -> std::process::Output {
    submit_command(data_dir, source)
        .args(extra)
        .output()
        .unwrap()
}

pub fn describe(data_dir: &Path, id: &str) -> serde_json::Value {
    let out = builder(data_dir)
        .args(["builds", "describe", id])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The id in `ID: …` of a finished submit's summary.
pub fn build_id(stdout: &str) -> String {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("ID: "))
        .expect("a summary with the build id");
    line["ID: ".len()..].to_string()
}

/// A repository "acme/app", served from a bare repository that the server fetches through its
/// `--git-url-rewrite`, with a working clone to commit and push from.
pub struct Repository {
    pub root: TempDir,
}

impl Repository {
    pub fn new() -> Self {
        let root = TempDir::new().unwrap();
        let repository = Self { root };
        repository.git(&["init", "-q", "--bare", "github/acme/app.git"]);
        repository.git(&["clone", "-q", "github/acme/app.git", "work"]);
        repository
    }

    pub fn mirrors(&self) -> PathBuf {
        self.root.path().join("github")
    }

    pub fn git(&self, args: &[&str]) -> String {
        self.git_in(self.root.path(), args)
    }

    pub fn git_in(&self, dir: &Path, args: &[&str]) -> String {
        git(dir, args)
    }

    /// Writes `files` (path, contents) into the working clone, commits them with `message` and
    /// pushes `refspec`; returns the commit.
    pub fn commit(&self, files: &[(&str, &str)], message: &str, refspec: &str) -> String {
        let work = self.root.path().join("work");
        for (path, contents) in files {
            let path = work.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, contents).unwrap();
        }
        self.git_in(&work, &["add", "-A"]);
        self.git_in(&work, &["commit", "-q", "--allow-empty", "-m", message]);
        self.git_in(&work, &["push", "-q", "-f", "origin", refspec]);
        self.git_in(&work, &["rev-parse", "HEAD"])
    }
}

/// Containers, volumes and networks that still carry the build's label.
pub fn leftovers(id: &str) -> String {
    let filter = format!("label=builder.build={id}");
    ["ps -aq", "volume ls -q", "network ls -q"]
        .iter()
        .map(|list| {
            let mut args: Vec<&str> = list.split(' ').collect();
            args.extend(["--filter", &filter]);
            let out = Command::new("docker").args(&args).output().unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        })
        .collect::<Vec<_>>()
        .join(" ")
        .trim()
        .to_string()
}

/// The docker CLI, talking to the engine at `host` (`None`: the default engine).
pub fn docker_on(host: Option<&str>) -> Command {
    let mut command = Command::new("docker");
    match host {
        Some(host) => command.args(["-H", host]),
        None => command.env_remove("DOCKER_HOST"),
    };
    command
}

/// The second engine `scripts/second-engine.sh` starts (or finds running), as a `DOCKER_HOST`:
/// its own data, containers, networks and bridge, as another machine's engine would be.
pub fn second_engine() -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/second-engine.sh");
    let out = Command::new(&script).output().unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}
