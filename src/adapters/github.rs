//! GitHub's REST API, for what builder tells it about triggered builds: commit statuses with a
//! token or a GitHub App's installation token, and check runs with an App (GitHub gives check
//! runs to Apps only). The service sees the [`Forge`] trait; this module owns the HTTP
//! (`reqwest`, its second owner) and the App's authentication: a JWT signed with the App's
//! private key (`jsonwebtoken`, its only user) buys an installation token, kept until shortly
//! before it expires.
//!
//! Tokens never leave this module: they are [`Secret`]s (whose `Debug` shows nothing), sent in
//! headers marked sensitive, and an error names the operation, GitHub's status code and
//! GitHub's own message, never a request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, HeaderValue, USER_AGENT};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use crate::core::github::{Repo, Report};

/// How long one request to GitHub may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// An installation token is renewed this long before it expires (GitHub's last an hour).
const RENEW_BEFORE: Duration = Duration::from_secs(5 * 60);
/// An App's JWT lasts this long (GitHub allows at most 10 minutes), from a minute before now,
/// for clocks that drift.
const JWT_LIFETIME: Duration = Duration::from_secs(9 * 60);
/// The API version builder speaks.
const API_VERSION: &str = "2022-11-28";
/// How much of GitHub's message an error keeps.
const MESSAGE_LIMIT: usize = 300;

/// Tells GitHub where a build is. `check_run` is the check run an earlier report created, if
/// any; the answer is the check run now reporting the build (`None` without an App).
#[async_trait::async_trait]
pub trait Forge: Send + Sync {
    async fn report(
        &self,
        report: &Report,
        check_run: Option<u64>,
    ) -> Result<Option<u64>, ReportError>;
}

/// A value that must not be shown: `Debug` prints `Secret(..)`.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// How builder signs in to GitHub.
pub enum Credentials {
    /// A personal or fine-grained access token (`statuses: write`): commit statuses only.
    Token(Secret),
    /// A GitHub App: commit statuses and check runs, with tokens of the installation on the
    /// repository (`installation`, or the one GitHub names for each repository).
    App {
        id: u64,
        key: jsonwebtoken::EncodingKey,
        installation: Option<u64>,
    },
}

impl Credentials {
    /// An App's credentials from its id and its private key (PEM, as GitHub hands it out).
    pub fn app(id: u64, key_pem: &[u8], installation: Option<u64>) -> Result<Credentials, String> {
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(key_pem)
            .map_err(|e| format!("not an RSA private key in PEM: {e}"))?;
        Ok(Credentials::App {
            id,
            key,
            installation,
        })
    }
}

/// Why a report did not reach GitHub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportError {
    /// Whether trying again may work: GitHub's 5xx and 429, a connection that failed or timed
    /// out. A refusal (401, 403, 404, 422) needs the operator.
    pub retry: bool,
    pub message: String,
}

impl std::fmt::Display for ReportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ReportError {}

/// An installation token and when it expires.
struct InstallationToken {
    token: Secret,
    expires: SystemTime,
}

/// GitHub's REST API at one base URL (`https://api.github.com`, or
/// `https://HOST/api/v3` for GitHub Enterprise Server).
pub struct GitHub {
    http: reqwest::Client,
    api: String,
    credentials: Credentials,
    /// Installation tokens by installation id.
    tokens: Mutex<HashMap<u64, InstallationToken>>,
    /// The App's installation on each repository, as GitHub named it.
    installations: Mutex<HashMap<String, u64>>,
}

#[derive(Serialize)]
struct Claims {
    iat: u64,
    exp: u64,
    iss: String,
}

#[derive(Deserialize)]
struct AccessToken {
    token: String,
    expires_at: String,
}

#[derive(Deserialize)]
struct Identified {
    id: u64,
}

impl GitHub {
    pub fn new(api: &str, credentials: Credentials) -> Result<GitHub, String> {
        let mut headers = HeaderMap::new();
        headers.insert(
            ACCEPT,
            HeaderValue::from_static("application/vnd.github+json"),
        );
        headers.insert(
            "X-GitHub-Api-Version",
            HeaderValue::from_static(API_VERSION),
        );
        // GitHub refuses requests without one.
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("builder/", env!("CARGO_PKG_VERSION"))),
        );
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot make an HTTP client: {e}"))?;
        Ok(GitHub {
            http,
            api: api.trim_end_matches('/').to_string(),
            credentials,
            tokens: Mutex::default(),
            installations: Mutex::default(),
        })
    }

    /// Sends `body` (if any) to `path` with `token`; the answer's JSON.
    async fn call<T: for<'de> Deserialize<'de>>(
        &self,
        operation: &str,
        method: Method,
        path: &str,
        token: &Secret,
        body: Option<&impl Serialize>,
    ) -> Result<T, ReportError> {
        let mut authorization =
            HeaderValue::from_str(&format!("Bearer {}", token.0)).map_err(|_| ReportError {
                retry: false,
                message: format!("{operation}: the token is not a valid header value"),
            })?;
        authorization.set_sensitive(true);
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.api))
            .header(AUTHORIZATION, authorization);
        if let Some(body) = body {
            let body = serde_json::to_vec(body).expect("report bodies serialize");
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let failed = |retry: bool, detail: String| ReportError {
            retry,
            message: format!("{operation}: {detail}"),
        };
        // reqwest's errors name the URL, which holds no secret, and not the headers.
        let response = request
            .send()
            .await
            .map_err(|e| failed(true, format!("GitHub could not be reached: {e}")))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| failed(true, format!("reading GitHub's answer: {e}")))?;
        if !status.is_success() {
            return Err(failed(
                status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS,
                format!("GitHub answered {status}{}", github_message(&bytes)),
            ));
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            failed(
                false,
                format!("GitHub's answer is not what it should be: {e}"),
            )
        })
    }

    /// The token to report on `repo` with.
    async fn token(&self, repo: &Repo) -> Result<Secret, ReportError> {
        let (id, key, installation) = match &self.credentials {
            Credentials::Token(token) => return Ok(token.clone()),
            Credentials::App {
                id,
                key,
                installation,
            } => (*id, key, *installation),
        };
        let known = self
            .installations
            .lock()
            .expect("installations")
            .get(&repo.to_string())
            .copied();
        let installation = match installation.or(known) {
            Some(installation) => installation,
            None => {
                let path = format!("/repos/{}/{}/installation", repo.owner, repo.name);
                let found: Identified = self
                    .call(
                        "finding the App's installation",
                        Method::GET,
                        &path,
                        &jwt(id, key)?,
                        None::<&()>,
                    )
                    .await?;
                self.installations
                    .lock()
                    .expect("installations")
                    .insert(repo.to_string(), found.id);
                found.id
            }
        };
        if let Some(cached) = self.tokens.lock().expect("tokens").get(&installation)
            && SystemTime::now() + RENEW_BEFORE < cached.expires
        {
            return Ok(cached.token.clone());
        }
        let path = format!("/app/installations/{installation}/access_tokens");
        let fresh: AccessToken = self
            .call(
                "getting an installation token",
                Method::POST,
                &path,
                &jwt(id, key)?,
                None::<&()>,
            )
            .await?;
        let expires = chrono::DateTime::parse_from_rfc3339(&fresh.expires_at)
            .map_err(|e| ReportError {
                retry: false,
                message: format!("getting an installation token: its expires_at: {e}"),
            })?
            .into();
        let token = Secret(fresh.token);
        self.tokens.lock().expect("tokens").insert(
            installation,
            InstallationToken {
                token: token.clone(),
                expires,
            },
        );
        Ok(token)
    }
}

/// GitHub's `message` in an error's answer, as `: message`, cut short.
fn github_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Answer {
        message: String,
    }
    match serde_json::from_slice::<Answer>(body) {
        Ok(answer) => format!(
            ": {}",
            answer
                .message
                .chars()
                .take(MESSAGE_LIMIT)
                .collect::<String>()
        ),
        Err(_) => String::new(),
    }
}

/// The App's JWT: RS256, issued by the App, a minute in the past to a clock's drift.
fn jwt(app: u64, key: &jsonwebtoken::EncodingKey) -> Result<Secret, ReportError> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let claims = Claims {
        iat: now - 60,
        exp: now - 60 + JWT_LIFETIME.as_secs(),
        iss: app.to_string(),
    };
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    jsonwebtoken::encode(&header, &claims, key)
        .map(Secret)
        .map_err(|e| ReportError {
            retry: false,
            message: format!("signing the App's JWT: {e}"),
        })
}

#[async_trait::async_trait]
impl Forge for GitHub {
    async fn report(
        &self,
        report: &Report,
        check_run: Option<u64>,
    ) -> Result<Option<u64>, ReportError> {
        let token = self.token(&report.repo).await?;
        let Repo { owner, name } = &report.repo;
        let path = format!("/repos/{owner}/{name}/statuses/{}", report.sha);
        let _: Identified = self
            .call(
                "reporting the commit status",
                Method::POST,
                &path,
                &token,
                Some(&report.commit_status()),
            )
            .await?;
        if !matches!(self.credentials, Credentials::App { .. }) {
            return Ok(None);
        }
        let run: Identified = match check_run {
            None => {
                let path = format!("/repos/{owner}/{name}/check-runs");
                let body = report.check_run(true);
                self.call(
                    "creating the check run",
                    Method::POST,
                    &path,
                    &token,
                    Some(&body),
                )
                .await?
            }
            Some(id) => {
                let path = format!("/repos/{owner}/{name}/check-runs/{id}");
                let body = report.check_run(false);
                self.call(
                    "updating the check run",
                    Method::PATCH,
                    &path,
                    &token,
                    Some(&body),
                )
                .await?
            }
        };
        Ok(Some(run.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_never_shown() {
        let secret = Secret::new("ghp_very_secret".into());
        assert_eq!(format!("{secret:?}"), "Secret(..)");
        let credentials = Credentials::Token(secret);
        let Credentials::Token(token) = &credentials else {
            unreachable!()
        };
        assert!(!format!("{token:?}").contains("ghp_"));
    }

    #[test]
    fn github_s_message_is_kept_short_and_other_answers_are_not_echoed() {
        assert_eq!(
            github_message(br#"{"message":"Bad credentials","documentation_url":"x"}"#),
            ": Bad credentials"
        );
        assert_eq!(github_message(b"<html>oops</html>"), "");
        let long = format!(r#"{{"message":"{}"}}"#, "m".repeat(1000));
        assert_eq!(github_message(long.as_bytes()).len(), 2 + MESSAGE_LIMIT);
    }

    #[test]
    fn a_key_that_is_not_rsa_pem_is_refused() {
        let error = Credentials::app(1, b"not a key", None).err().unwrap();
        assert!(
            error.starts_with("not an RSA private key in PEM"),
            "{error}"
        );
    }
}
