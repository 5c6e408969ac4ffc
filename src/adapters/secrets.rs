//! Secret values for `availableSecrets.secretManager`, from a local source instead of Google's
//! Secret Manager. A secret `projects/P/secrets/NAME/versions/V` is looked up, first match wins:
//!
//! 1. the environment variable `BUILDER_SECRET_<NAME>` (NAME upper-cased, `-` and `.` as `_`);
//! 2. the file `<dir>/NAME/V` in the secrets directory;
//! 3. the file `<dir>/NAME` (any version).
//!
//! The directory is `--secrets-dir` or `BUILDER_SECRETS_DIR`. Values are used byte for byte, and
//! must be UTF-8 text (they become environment variables).
//!
//! Which secrets a build may read is decided before (`core::plan::SecretScope`): this looks up
//! only what a build was granted.

use std::collections::BTreeMap;
use std::path::Path;

use crate::core::plan::SecretRef;

pub const ENV_PREFIX: &str = "BUILDER_SECRET_";

/// Every secret's value by its env name, or one message naming each secret that is missing.
pub fn resolve(
    secrets: &[SecretRef],
    dir: Option<&Path>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>, String> {
    let mut values = BTreeMap::new();
    let mut missing = Vec::new();
    for secret in secrets {
        let (name, version) = secret.name_and_version();
        let variable = variable(name);
        let from_file = |path: &Path| {
            std::fs::read(path)
                .ok()
                .map(|bytes| (path.to_path_buf(), bytes))
        };
        let value = env(&variable).map(Ok).or_else(|| {
            let dir = dir?;
            let (path, bytes) =
                from_file(&dir.join(name).join(version)).or_else(|| from_file(&dir.join(name)))?;
            Some(
                String::from_utf8(bytes)
                    .map_err(|_| format!("{} is not UTF-8 text", path.display())),
            )
        });
        match value {
            Some(Ok(value)) => {
                values.insert(secret.env.clone(), value);
            }
            Some(Err(problem)) => missing.push(problem),
            None => missing.push(format!(
                "{} (for {}): set {variable} or write it to <secrets-dir>/{name}",
                secret.version_name, secret.env
            )),
        }
    }
    if missing.is_empty() {
        Ok(values)
    } else {
        Err(format!("secrets not usable: {}", missing.join("; ")))
    }
}

/// The value of one secret version (`projects/P/secrets/NAME/versions/V`), looked up as a
/// build's are: a webhook trigger's secret, say.
pub fn value(
    version_name: &str,
    dir: Option<&Path>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let secret = SecretRef {
        env: "secret".into(),
        version_name: version_name.to_string(),
    };
    let mut values = resolve(std::slice::from_ref(&secret), dir, env)?;
    Ok(values.remove(&secret.env).unwrap_or_default())
}

fn variable(name: &str) -> String {
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("{ENV_PREFIX}{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(env: &str, name: &str) -> SecretRef {
        SecretRef {
            env: env.into(),
            version_name: format!("projects/p/secrets/{name}/versions/2"),
        }
    }

    #[test]
    fn environment_then_versioned_file_then_plain_file() {
        let dir = std::env::temp_dir().join(format!("builder-secrets-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("versioned")).unwrap();
        std::fs::write(dir.join("versioned/2"), "v2").unwrap();
        std::fs::write(dir.join("plain"), "p\n").unwrap();
        let env = |key: &str| (key == "BUILDER_SECRET_DB_PASS").then(|| "from-env".to_string());
        let found = resolve(
            &[
                secret("A", "db-pass"),
                secret("B", "versioned"),
                secret("C", "plain"),
            ],
            Some(&dir),
            env,
        )
        .unwrap();
        assert_eq!(found["A"], "from-env");
        assert_eq!(found["B"], "v2");
        assert_eq!(found["C"], "p\n");
        let error = resolve(&[secret("D", "absent")], Some(&dir), |_| None).unwrap_err();
        assert!(error.contains("set BUILDER_SECRET_ABSENT or write it to <secrets-dir>/absent"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
