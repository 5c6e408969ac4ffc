//! Helpers shared by the integration tests; each test crate uses some of them.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

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
