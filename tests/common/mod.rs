//! Helpers shared by the integration tests.

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
