//! Docker image references (`gcr.io/project/app:tag@sha256:…`): validity as Cloud Build checks it
//! after substitution, and splitting a reference into repository and tag for pushing.

use std::sync::LazyLock;

use regex::Regex;

/// The distribution reference grammar: optional registry host (with port), lower-case path
/// components, optional tag, optional digest.
static REFERENCE: LazyLock<Regex> = LazyLock::new(|| {
    let domain = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?/)?";
    let component = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*";
    let tag = r"(?::[\w][\w.-]{0,127})?";
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

#[cfg(test)]
mod tests {
    use super::*;

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
