//! A client of `builder serve`'s API (plain HTTP), for the command line: builds and their logs,
//! triggers, schedules, and submitting a source. Answers come back as the API's wire types
//! (`core::wire`), which the CLI also prints local builds as.

use std::fmt;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, BodyStream, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::core::build::{Decision, Status};
use crate::core::wire::{Build, LogLine};

/// A build to queue (`POST /v1/builds`): a config over an uploaded source (or none).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Submission<'a> {
    pub config: &'a str,
    pub config_name: &'a str,
    pub substitutions: &'a crate::core::substitute::Values,
    pub upload: Option<&'a str>,
    /// It waits PENDING until someone approves it. Sent only when set, so that a server from
    /// before approvals still takes other submissions.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub require_approval: bool,
}

pub struct Client {
    base: String,
    token: Option<String>,
    http: HttpClient<HttpConnector, Full<Bytes>>,
}

#[derive(Debug)]
pub enum ClientError {
    /// The server could not be reached at all.
    Unreachable { url: String, detail: String },
    /// The server answered with an error.
    Refused { status: u16, message: String },
    /// The answer was not what the API promises.
    Unexpected(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreachable { url, detail } => write!(
                f,
                "cannot reach builder serve at {url} ({detail}); is it running, and is --server right?"
            ),
            Self::Refused { status, message } => {
                write!(f, "the server refused ({status}): {message}")
            }
            Self::Unexpected(message) => write!(f, "unexpected answer from the server: {message}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// What a followed build reports, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    Step {
        step: usize,
        /// The step's `id`, if the config gave one.
        id: Option<String>,
        status: Status,
        detail: Option<String>,
    },
    Line {
        step: usize,
        text: String,
    },
}

impl Client {
    /// A client of the server at `base` (`http://HOST:PORT`), sending `token` with requests
    /// that change anything.
    pub fn new(base: &str, token: Option<String>) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: HttpClient::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut request = Request::builder().method(method).uri(&url);
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request =
            request
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| ClientError::Unreachable {
                    url: url.clone(),
                    detail: e.to_string(),
                })?;
        let response = self
            .http
            .request(request)
            .await
            .map_err(|e| ClientError::Unreachable {
                url: self.base.clone(),
                detail: e.to_string(),
            })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let answer = read(response).await.unwrap_or(Value::Null);
        let message = answer["error"]["message"]
            .as_str()
            .map_or_else(|| status.to_string(), str::to_string);
        Err(ClientError::Refused {
            status: status.as_u16(),
            message,
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<T, ClientError> {
        let answer = read(self.send(method, path, body).await?).await?;
        serde_json::from_value(answer).map_err(|e| ClientError::Unexpected(e.to_string()))
    }

    async fn field<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        name: &str,
    ) -> Result<T, ClientError> {
        let mut answer: Value = self.call(method, path, body).await?;
        serde_json::from_value(answer[name].take())
            .map_err(|e| ClientError::Unexpected(format!("{name}: {e}")))
    }

    pub async fn builds(&self, limit: u32) -> Result<Vec<Build>, ClientError> {
        self.field(
            Method::GET,
            &format!("/v1/builds?limit={limit}"),
            Vec::new(),
            "builds",
        )
        .await
    }

    pub async fn build(&self, id: &str) -> Result<Build, ClientError> {
        self.call(Method::GET, &format!("/v1/builds/{id}"), Vec::new())
            .await
    }

    /// A page of the build's log as stored now: the lines after line `after`, and the `after`
    /// of the next page if there may be one.
    pub async fn log_page(
        &self,
        id: &str,
        after: i64,
    ) -> Result<(Vec<LogLine>, Option<i64>), ClientError> {
        #[derive(serde::Deserialize)]
        struct Page {
            lines: Vec<LogLine>,
            next: Option<i64>,
        }
        let path = format!("/v1/builds/{id}/log?after={after}");
        let page: Page = self.call(Method::GET, &path, Vec::new()).await?;
        Ok((page.lines, page.next))
    }

    pub async fn cancel(&self, id: &str) -> Result<(), ClientError> {
        self.call::<Value>(Method::POST, &format!("/v1/builds/{id}/cancel"), Vec::new())
            .await
            .map(drop)
    }

    /// Queues a retry; returns the new build's id.
    pub async fn retry(&self, id: &str) -> Result<String, ClientError> {
        self.field(
            Method::POST,
            &format!("/v1/builds/{id}/retry"),
            Vec::new(),
            "build",
        )
        .await
    }

    pub async fn triggers(&self) -> Result<Vec<Value>, ClientError> {
        self.field(Method::GET, "/v1/triggers", Vec::new(), "triggers")
            .await
    }

    pub async fn trigger(&self, name: &str) -> Result<Value, ClientError> {
        self.call(Method::GET, &format!("/v1/triggers/{name}"), Vec::new())
            .await
    }

    /// Creates a trigger from a trigger file, or replaces the one it names; returns the trigger
    /// and its warnings.
    pub async fn import_trigger(&self, file: &[u8], name: &str) -> Result<Value, ClientError> {
        match self.call(Method::POST, "/v1/triggers", file.to_vec()).await {
            Err(ClientError::Refused { status: 409, .. }) => {
                self.call(Method::PUT, &format!("/v1/triggers/{name}"), file.to_vec())
                    .await
            }
            created => created,
        }
    }

    /// Runs a trigger by hand (`run` holds one of `branch`, `tag`, `commit`, and
    /// `substitutions`); returns the build's id.
    pub async fn run_trigger(&self, name: &str, run: &Value) -> Result<String, ClientError> {
        self.field(
            Method::POST,
            &format!("/v1/triggers/{name}/run"),
            run.to_string().into_bytes(),
            "build",
        )
        .await
    }

    pub async fn schedules(&self) -> Result<Vec<Value>, ClientError> {
        self.field(Method::GET, "/v1/schedules", Vec::new(), "schedules")
            .await
    }

    pub async fn schedule(&self, name: &str) -> Result<Value, ClientError> {
        self.call(Method::GET, &format!("/v1/schedules/{name}"), Vec::new())
            .await
    }

    /// Starts a schedule's run now; returns its build's id.
    pub async fn run_schedule(&self, name: &str) -> Result<String, ClientError> {
        self.field(
            Method::POST,
            &format!("/v1/schedules/{name}/run"),
            Vec::new(),
            "build",
        )
        .await
    }

    /// Pauses or resumes a schedule; returns it.
    pub async fn pause_schedule(&self, name: &str, paused: bool) -> Result<Value, ClientError> {
        let action = if paused { "pause" } else { "resume" };
        self.call(
            Method::POST,
            &format!("/v1/schedules/{name}/{action}"),
            Vec::new(),
        )
        .await
    }

    /// Uploads a packed source (tar.gz); returns its id for [`Client::submit`].
    pub async fn upload(&self, archive: Vec<u8>) -> Result<String, ClientError> {
        self.field(Method::POST, "/v1/uploads", archive, "upload")
            .await
    }

    /// Queues a build; returns its id.
    pub async fn submit(&self, submission: &Submission<'_>) -> Result<String, ClientError> {
        self.field(
            Method::POST,
            "/v1/builds",
            serde_json::to_vec(submission).unwrap_or_default(),
            "build",
        )
        .await
    }

    /// Approves or rejects a PENDING build (`POST /v1/builds/ID:approve`, Cloud Build's body);
    /// returns the build as decided.
    pub async fn approve(
        &self,
        id: &str,
        decision: Decision,
        comment: Option<String>,
    ) -> Result<Build, ClientError> {
        let request = json!({"approvalResult": {"decision": decision, "comment": comment}});
        self.call(
            Method::POST,
            &format!("/v1/builds/{id}:approve"),
            request.to_string().into_bytes(),
        )
        .await
    }

    /// Follows a build until it ends, calling `seen` with its progress as it comes; returns
    /// the build's record at the end.
    pub async fn follow(
        &self,
        id: &str,
        mut seen: impl FnMut(Progress),
    ) -> Result<Build, ClientError> {
        let response = self
            .send(
                Method::GET,
                &format!("/v1/builds/{id}/log?follow=true"),
                Vec::new(),
            )
            .await?;
        let mut body = BodyStream::new(response.into_body());
        let mut pending = String::new();
        let mut event = String::new();
        while let Some(frame) = body.next().await {
            let frame = frame.map_err(|e| ClientError::Unexpected(e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            pending.push_str(&String::from_utf8_lossy(&data));
            while let Some(end) = pending.find('\n') {
                let line: String = pending.drain(..=end).collect();
                let line = line.trim_end_matches(['\n', '\r']);
                if let Some(name) = line.strip_prefix("event: ") {
                    event = name.to_string();
                    continue;
                }
                let Some(data) = line.strip_prefix("data: ") else {
                    continue;
                };
                let data: Value = serde_json::from_str(data)
                    .map_err(|e| ClientError::Unexpected(e.to_string()))?;
                let step = data["step"].as_u64().unwrap_or_default() as usize;
                match event.as_str() {
                    "line" => seen(Progress::Line {
                        step,
                        text: data["text"].as_str().unwrap_or_default().to_string(),
                    }),
                    "step" => {
                        let status = serde_json::from_value(data["status"].clone())
                            .map_err(|e| ClientError::Unexpected(e.to_string()))?;
                        let text = |key: &str| data[key].as_str().map(str::to_string);
                        seen(Progress::Step {
                            step,
                            id: text("id"),
                            status,
                            detail: text("detail"),
                        });
                    }
                    "end" => return self.build(id).await,
                    "error" => {
                        let message = data["error"].as_str().unwrap_or_default().to_string();
                        return Err(ClientError::Unexpected(message));
                    }
                    _ => {}
                }
            }
        }
        Err(ClientError::Unexpected(
            "the log ended before the build did".into(),
        ))
    }
}

async fn read(response: hyper::Response<hyper::body::Incoming>) -> Result<Value, ClientError> {
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| ClientError::Unexpected(e.to_string()))?
        .to_bytes();
    serde_json::from_slice(&body)
        .map_err(|e| ClientError::Unexpected(format!("{e}: {}", String::from_utf8_lossy(&body))))
}
