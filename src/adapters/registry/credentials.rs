//! Registry credentials from a Docker `config.json`, as `docker login` leaves them: a per-registry
//! credential helper (`credHelpers`), then the default store (`credsStore`), then the inline
//! `auths` entries. Helpers are the `docker-credential-NAME` programs on `PATH`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use base64::Engine;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

/// A user name and secret for one registry, with where they were found (for error messages).
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    pub secret: String,
    pub source: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct File {
    #[serde(default)]
    auths: BTreeMap<String, Entry>,
    creds_store: Option<String>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct Entry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// A loaded `config.json`.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    path: PathBuf,
    file: File,
}

impl DockerConfig {
    /// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
    pub fn default_path() -> Option<PathBuf> {
        let dir = match std::env::var_os("DOCKER_CONFIG") {
            Some(dir) => PathBuf::from(dir),
            None => PathBuf::from(std::env::var_os("HOME")?).join(".docker"),
        };
        Some(dir.join("config.json"))
    }

    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let file = serde_json::from_slice(&text).map_err(|e| {
            format!(
                "{}:{}:{}: not a Docker config file: {e}",
                path.display(),
                e.line(),
                e.column()
            )
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    /// The credentials for `host` (`host[:port]`), if the file has any.
    pub async fn lookup(&self, host: &str) -> Result<Option<Credential>, String> {
        let keys: BTreeMap<&str, &str> = self
            .file
            .auths
            .keys()
            .chain(self.file.cred_helpers.keys())
            .map(|key| (normalize(key), key.as_str()))
            .collect();
        let key = keys.get(host).copied();
        let helper = key
            .and_then(|k| self.file.cred_helpers.get(k))
            .or(self.file.creds_store.as_ref());
        if let Some(helper) = helper
            && let Some(found) = run_helper(helper, key.unwrap_or(host)).await?
        {
            return Ok(Some(found));
        }
        let Some(entry) = key.and_then(|k| self.file.auths.get(k)) else {
            return Ok(None);
        };
        let source = self.path.display().to_string();
        if let (Some(username), Some(password)) = (&entry.username, &entry.password) {
            return Ok(Some(Credential {
                username: username.clone(),
                secret: password.clone(),
                source,
            }));
        }
        let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) else {
            return Ok(None);
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|text| {
                let (user, secret) = text.split_once(':')?;
                Some((user.to_string(), secret.to_string()))
            });
        let (username, secret) = decoded
            .ok_or_else(|| format!("{source}: auths.{host}.auth is not base64 of USER:PASSWORD"))?;
        Ok(Some(Credential {
            username,
            secret,
            source,
        }))
    }
}

/// `https://index.docker.io/v1/` → `docker.io`, `https://host:5000` → `host:5000`.
fn normalize(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key);
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io",
        host => host,
    }
}

/// Asks `docker-credential-NAME get` for `server`'s credentials (the credential helper protocol).
async fn run_helper(name: &str, server: &str) -> Result<Option<Credential>, String> {
    #[derive(Deserialize)]
    struct Answer {
        #[serde(rename = "Username")]
        username: String,
        #[serde(rename = "Secret")]
        secret: String,
    }
    let program = format!("docker-credential-{name}");
    let mut child = tokio::process::Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running the credential helper {program}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(server.as_bytes())
            .await
            .map_err(|e| format!("writing to {program}: {e}"))?;
    }
    let output = child
        .wait_with_output()
        .await
        .map_err(|e| format!("running {program}: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        if stdout.contains("credentials not found") {
            return Ok(None);
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!(
            "{program} get {server}: {}",
            format!("{stdout} {stderr}").trim()
        ));
    }
    let answer: Answer = serde_json::from_str(&stdout)
        .map_err(|e| format!("{program} get {server}: unreadable answer: {e}"))?;
    Ok(Some(Credential {
        username: answer.username,
        secret: answer.secret,
        source: program,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, json: &str) -> DockerConfig {
        let path = dir.join("config.json");
        std::fs::write(&path, json).unwrap();
        DockerConfig::load(&path).unwrap()
    }

    #[tokio::test]
    async fn inline_auths_are_found_under_any_spelling_of_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(
            dir.path(),
            r#"{"auths": {"https://reg.example:5000/v2/": {"auth": "YWxpY2U6czNjcmV0"},
                          "https://index.docker.io/v1/": {"auth": "Ym9iOnB3"}}}"#,
        );
        let alice = config.lookup("reg.example:5000").await.unwrap().unwrap();
        assert_eq!(
            (alice.username.as_str(), alice.secret.as_str()),
            ("alice", "s3cret")
        );
        assert_eq!(
            config.lookup("docker.io").await.unwrap().unwrap().username,
            "bob"
        );
        assert_eq!(config.lookup("other.example").await.unwrap(), None);
    }
}
