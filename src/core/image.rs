//! Docker image references (`gcr.io/project/app:tag@sha256:…`): validity as Cloud Build checks it
//! after substitution, and splitting a reference into repository and tag for pushing.

use std::sync::LazyLock;

use regex::Regex;

/// The distribution reference grammar: optional registry host (with port), lower-case path
/// components, optional tag, optional digest.
static REFERENCE: LazyLock<Regex> = LazyLock::new(|| {
    let domain = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?/)?";
    let component = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*";
    // `\w` as Docker's grammar (Go's regexp) means it: ASCII. Unicode's would also make the
    // compiled grammar megabytes.
    let tag = r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?";
    let digest = r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?";
    Regex::new(&format!(
        "^{domain}{component}(?:/{component})*{tag}{digest}$"
    ))
    .expect("the reference grammar is a valid regex")
});

/// Checks a reference, with Cloud Build's messages.
pub fn validate(reference: &str) -> Result<(), String> {
    if REFERENCE.is_match(reference) && reference.len() <= 1000 {
        return Ok(());
    }
    if REFERENCE.is_match(&reference.to_ascii_lowercase()) {
        return Err(format!(
            "invalid image name {reference:?} contains uppercase letters"
        ));
    }
    Err(format!("invalid image name {reference:?}"))
}

/// The registry a reference points at: its first component when that is a host (it has a `.` or
/// a `:`, or is `localhost`), else Docker Hub, as the engine decides.
pub fn registry_host(reference: &str) -> &str {
    match reference.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first,
        _ => "docker.io",
    }
}

/// Whether a reference names a tag or a digest rather than only a repository.
pub fn has_tag_or_digest(reference: &str) -> bool {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    reference.contains('@') || last.contains(':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_tags_and_digests() {
        assert_eq!(registry_host("localhost:5000/ml/t"), "localhost:5000");
        assert_eq!(registry_host("gcr.io/p/app:1"), "gcr.io");
        assert_eq!(registry_host("localhost/app"), "localhost");
        assert_eq!(registry_host("library/python"), "docker.io");
        assert_eq!(registry_host("python:3.11"), "docker.io");
        assert!(!has_tag_or_digest("localhost:5000/ml/t"));
        assert!(has_tag_or_digest("localhost:5000/ml/t:1"));
        assert!(has_tag_or_digest("gcr.io/p/app@sha256:00"));
    }

    #[test]
    fn cloud_build_examples() {
        for valid in [
            "ubuntu",
            "gcr.io/works/folder:Tag",
            "gcr.io/cloud-builders/docker",
            "localhost:5000/a/b:1.0",
            "python:3.11-slim",
            "us-docker.pkg.dev/p/r/img@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(validate(valid), Ok(()), "{valid}");
        }
        assert_eq!(
            validate("UBUNTU:latest"),
            Err("invalid image name \"UBUNTU:latest\" contains uppercase letters".into())
        );
        for invalid in [
            "gcr.io/:broken",
            "gcr.io/p/app:feature/x",
            "gcr.io/p/app:café",
            "",
            "a b",
            "gcr.io/p/",
        ] {
            assert_eq!(
                validate(invalid),
                Err(format!("invalid image name {invalid:?}"))
            );
        }
        assert!(
            validate("gcr.io/project/Broken")
                .unwrap_err()
                .contains("uppercase")
        );
    }
}
