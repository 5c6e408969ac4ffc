//! A local GitHub REST API for the tests, made from GitHub's own OpenAPI description of the
//! operations builder uses (`/work/shared/reference/github-rest/api.github.com.subset.json`, or
//! `BUILDER_GITHUB_OPENAPI`): a real HTTP server on a free port that accepts exactly what the
//! description allows and refuses anything else, and records every request with its verdict.
//!
//! A request is matched on its method and its path against the description's templates; its
//! path parameters are checked against their schemas; `Accept` must be GitHub's media type;
//! `Authorization` must carry the credential the operation takes (the token, or with an App: a
//! JWT the App's public key verifies for the App's own operations, an installation token it
//! issued for the others); the JSON body is validated against the operation's `requestBody`
//! schema by [`validate`]. It answers with the operation's success code and its example
//! answer, with the ids and tokens this server gives.
//!
//! [`validate`] covers exactly the constructs of the description's request bodies (`type`,
//! `nullable`, `enum`, `required`, `properties`, `additionalProperties`, `items`, `maxItems`,
//! `maxLength`, `anyOf`, `format: date-time`). It is stricter than JSON Schema on one point, on
//! purpose: an object whose schema lists its `properties` refuses a property it does not list
//! unless `additionalProperties` allows it, so that a misspelt field builder sends fails the
//! test instead of being ignored as GitHub would ignore it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Where GitHub's description is.
fn description_path() -> String {
    std::env::var("BUILDER_GITHUB_OPENAPI")
        .unwrap_or_else(|_| "/work/shared/reference/github-rest/api.github.com.subset.json".into())
}

/// One operation of the description.
#[derive(Debug, Clone)]
pub struct Operation {
    pub id: String,
    pub method: Method,
    /// The path template's segments, `{name}` for a parameter.
    segments: Vec<String>,
    parameters: Value,
    body: Option<(bool, Value)>,
    success: (u16, Value),
}

/// GitHub's operations, from the description.
pub fn operations() -> Vec<Operation> {
    let text = std::fs::read_to_string(description_path()).expect("GitHub's description");
    let description: Value = serde_json::from_str(&text).unwrap();
    let mut operations = Vec::new();
    for (path, methods) in description["paths"].as_object().unwrap() {
        for (method, operation) in methods.as_object().unwrap() {
            let body = operation.get("requestBody").map(|body| {
                (
                    body["required"].as_bool().unwrap_or(false),
                    body["content"]["application/json"]["schema"].clone(),
                )
            });
            let (code, answer) = operation["responses"]
                .as_object()
                .unwrap()
                .iter()
                .find(|(code, _)| code.starts_with('2'))
                .expect("a success answer");
            let example = answer["content"]["application/json"]["examples"]
                .as_object()
                .and_then(|examples| examples.values().next())
                .map(|example| example["value"].clone())
                .unwrap_or(Value::Null);
            operations.push(Operation {
                id: operation["operationId"].as_str().unwrap().to_string(),
                method: method.to_uppercase().parse().unwrap(),
                segments: path.split('/').skip(1).map(str::to_string).collect(),
                parameters: operation["parameters"].clone(),
                body,
                success: (code.parse().unwrap(), example),
            });
        }
    }
    operations
}

impl Operation {
    /// The path parameters of `path` if it is this operation's template.
    fn path_parameters(&self, path: &str) -> Option<Vec<(String, String)>> {
        let parts: Vec<&str> = path.split('/').skip(1).collect();
        if parts.len() != self.segments.len() {
            return None;
        }
        let mut found = Vec::new();
        for (segment, part) in self.segments.iter().zip(parts) {
            match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => found.push((name.to_string(), part.to_string())),
                None if segment == part => {}
                None => return None,
            }
        }
        Some(found)
    }

    fn check_parameters(&self, found: &[(String, String)]) -> Result<(), String> {
        for (name, value) in found {
            let schema = self
                .parameters
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["in"] == "path" && p["name"] == name.as_str())
                .map(|p| &p["schema"])
                .ok_or_else(|| format!("path parameter {name} is not described"))?;
            if value.is_empty() {
                return Err(format!("path parameter {name} is empty"));
            }
            let value = match schema["type"].as_str() {
                Some("integer") => json!(value.parse::<i64>().map_err(|_| {
                    format!("path parameter {name}: {value:?} is not an integer")
                })?),
                _ => json!(value),
            };
            validate(schema, &value, name)?;
        }
        Ok(())
    }
}

/// Checks `value` against `schema` (see the module doc for what is covered); the error names
/// the first problem's place (`output.title`).
pub fn validate(schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if value.is_null() {
        return match schema["nullable"].as_bool() {
            Some(true) => Ok(()),
            _ => Err(format!("{at}: null is not allowed")),
        };
    }
    if let Some(kind) = schema["type"].as_str() {
        let fits = match kind {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            other => return Err(format!("{at}: schema type {other} is not supported")),
        };
        if !fits {
            return Err(format!("{at}: expected {kind}, got {value}"));
        }
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        return Err(format!("{at}: {value} is not one of {allowed:?}"));
    }
    if let (Some(limit), Some(text)) = (schema["maxLength"].as_u64(), value.as_str())
        && text.chars().count() as u64 > limit
    {
        return Err(format!("{at}: longer than {limit} characters"));
    }
    if schema["format"] == "date-time"
        && let Some(text) = value.as_str()
        && chrono::DateTime::parse_from_rfc3339(text).is_err()
    {
        return Err(format!("{at}: {text:?} is not a date-time"));
    }
    if let Some(items) = value.as_array() {
        if let Some(limit) = schema["maxItems"].as_u64()
            && items.len() as u64 > limit
        {
            return Err(format!("{at}: more than {limit} items"));
        }
        for (i, item) in items.iter().enumerate() {
            validate(&schema["items"], item, &format!("{at}[{i}]"))?;
        }
    }
    if let Some(object) = value.as_object() {
        for required in schema["required"].as_array().into_iter().flatten() {
            let name = required.as_str().unwrap();
            if !object.contains_key(name) {
                return Err(format!("{at}: {name} is required"));
            }
        }
        let properties = schema["properties"].as_object();
        for (name, field) in object {
            let place = format!("{at}.{name}");
            match (
                properties.and_then(|p| p.get(name)),
                &schema["additionalProperties"],
            ) {
                (Some(property), _) => validate(property, field, &place)?,
                (None, Value::Object(_)) => {
                    validate(&schema["additionalProperties"], field, &place)?
                }
                (None, Value::Bool(true)) => {}
                // Closed unless it says otherwise, where it lists its properties.
                (None, Value::Bool(false)) => return Err(format!("{place} is not allowed")),
                (None, _) if properties.is_some() => {
                    return Err(format!("{place} is not described"));
                }
                (None, _) => {}
            }
        }
    }
    if let Some(choices) = schema["anyOf"].as_array()
        && !choices
            .iter()
            .any(|choice| validate(choice, value, at).is_ok())
    {
        return Err(format!("{at}: matches none of anyOf"));
    }
    Ok(())
}

/// How the API authenticates.
#[derive(Clone)]
pub enum Auth {
    /// Every operation takes this token.
    Token(String),
    /// A GitHub App: its own operations take a JWT its public key verifies, the others a token
    /// this server issued for `installation`.
    App {
        id: u64,
        public_key_pem: Vec<u8>,
        installation: u64,
    },
}

/// A request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: Method,
    pub path: String,
    /// The operation it matched.
    pub operation: Option<String>,
    pub authorization: Option<String>,
    pub body: Value,
    /// What the server answered.
    pub status: u16,
    /// Why it was refused, if it was refused for not being what the description allows.
    pub refusal: Option<String>,
}

struct State {
    operations: Vec<Operation>,
    auth: Auth,
    received: Mutex<Vec<Received>>,
    /// Answers to give instead, in order, to the next requests of an operation (by id), of
    /// those whose body has that `state` if one is given.
    failures: Mutex<VecDeque<(String, Option<String>, u16)>>,
    /// An operation that always fails with this code.
    broken: Mutex<Option<(String, u16)>>,
    /// Installation tokens issued.
    issued: Mutex<Vec<String>>,
    next_id: Mutex<u64>,
}

/// The local GitHub API, serving until dropped.
pub struct GitHubApi {
    pub url: String,
    state: Arc<State>,
    _runtime: tokio::runtime::Runtime,
}

impl GitHubApi {
    pub fn start(auth: Auth) -> GitHubApi {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let state = Arc::new(State {
            operations: operations(),
            auth,
            received: Mutex::default(),
            failures: Mutex::default(),
            broken: Mutex::default(),
            issued: Mutex::default(),
            next_id: Mutex::new(1000),
        });
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new().fallback({
            let state = state.clone();
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let state = state.clone();
                async move { state.answer(method, uri, headers, body) }
            }
        });
        runtime.spawn(async move { axum::serve(listener, app).await });
        GitHubApi {
            url,
            state,
            _runtime: runtime,
        }
    }

    /// The API of GitHub App 7, installed as installation 42, its private key written under
    /// `keys`; the key file's path, for `--github-app-key-file`.
    pub fn start_app(keys: &std::path::Path) -> (GitHubApi, String) {
        let (private, public) = rsa_key_pair(keys);
        let api = GitHubApi::start(Auth::App {
            id: 7,
            public_key_pem: public,
            installation: 42,
        });
        (api, private.display().to_string())
    }

    /// The next `count` requests of `operation` (of those whose body's `state` is `state`, if
    /// given) are answered `code`.
    pub fn fail_next(&self, operation: &str, state: Option<&str>, count: usize, code: u16) {
        let mut failures = self.state.failures.lock().unwrap();
        let failure = (operation.to_string(), state.map(str::to_string), code);
        failures.extend(std::iter::repeat_n(failure, count));
    }

    /// Every request of `operation` is answered `code`.
    pub fn break_operation(&self, operation: &str, code: u16) {
        *self.state.broken.lock().unwrap() = Some((operation.to_string(), code));
    }

    /// Every operation answers as described again.
    pub fn repair(&self) {
        *self.state.broken.lock().unwrap() = None;
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// The installation tokens this server issued.
    pub fn issued(&self) -> Vec<String> {
        self.state.issued.lock().unwrap().clone()
    }

    /// The requests received until `done` holds for them, waiting at most `deadline`.
    pub fn wait_for(
        &self,
        deadline: Duration,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let start = std::time::Instant::now();
        loop {
            let received = self.received();
            if done(&received) {
                return received;
            }
            assert!(
                start.elapsed() < deadline,
                "GitHub did not receive what was expected: {received:#?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn refuse(code: StatusCode, message: &str) -> Response {
    let body = json!({
        "message": message,
        "documentation_url": "https://docs.github.com/rest",
    });
    (code, axum::Json(body)).into_response()
}

impl State {
    fn answer(&self, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
        let path = uri.path().to_string();
        let authorization = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let (operation, outcome) = self.judge(&method, &path, &headers, &body);
        let (response, status, refusal) = match outcome {
            Ok(()) => {
                let operation = operation.as_ref().unwrap();
                match self.injected_failure(&operation.id, &parsed) {
                    Some(code) => {
                        let code = StatusCode::from_u16(code).unwrap();
                        (refuse(code, "Server Error"), code.as_u16(), None)
                    }
                    None => {
                        let (code, answer) = self.success(operation, &parsed);
                        let code = StatusCode::from_u16(code).unwrap();
                        (
                            (code, axum::Json(answer)).into_response(),
                            code.as_u16(),
                            None,
                        )
                    }
                }
            }
            Err((code, why)) => (refuse(code, &why), code.as_u16(), Some(why)),
        };
        self.received.lock().unwrap().push(Received {
            method,
            path,
            operation: operation.map(|o| o.id),
            authorization,
            body: parsed,
            status,
            refusal,
        });
        response
    }

    fn injected_failure(&self, operation: &str, body: &Value) -> Option<u16> {
        if let Some((broken, code)) = &*self.broken.lock().unwrap()
            && broken == operation
        {
            return Some(*code);
        }
        let mut failures = self.failures.lock().unwrap();
        let index = failures.iter().position(|(id, state, _)| {
            id == operation
                && state
                    .as_ref()
                    .is_none_or(|state| body["state"] == state.as_str())
        })?;
        failures.remove(index).map(|(_, _, code)| code)
    }

    /// The operation the request is, and whether the description allows it as it is.
    fn judge(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> (Option<Operation>, Result<(), (StatusCode, String)>) {
        let by_path: Vec<(&Operation, Vec<(String, String)>)> = self
            .operations
            .iter()
            .filter_map(|o| Some((o, o.path_parameters(path)?)))
            .collect();
        let Some((operation, parameters)) = by_path.iter().find(|(o, _)| o.method == method) else {
            let why = if by_path.is_empty() {
                (StatusCode::NOT_FOUND, format!("no operation at {path}"))
            } else {
                let why = format!("{method} is not an operation of {path}");
                (StatusCode::METHOD_NOT_ALLOWED, why)
            };
            return (None, Err(why));
        };
        let operation = (*operation).clone();
        let checked = self.check(&operation, parameters, headers, body);
        (Some(operation), checked)
    }

    fn check(
        &self,
        operation: &Operation,
        parameters: &[(String, String)],
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), (StatusCode, String)> {
        let unprocessable = |why: String| (StatusCode::UNPROCESSABLE_ENTITY, why);
        operation
            .check_parameters(parameters)
            .map_err(unprocessable)?;
        let accept = headers.get("accept").and_then(|v| v.to_str().ok());
        if accept != Some("application/vnd.github+json") {
            return Err(unprocessable(format!("Accept is {accept:?}")));
        }
        if headers.get("user-agent").is_none() {
            return Err((StatusCode::FORBIDDEN, "no User-Agent".into()));
        }
        self.authenticate(operation, headers)
            .map_err(|why| (StatusCode::UNAUTHORIZED, why))?;
        match (&operation.body, body.is_empty()) {
            (None, true) | (Some((false, _)), true) => Ok(()),
            (None, false) => Err(unprocessable("a body where none is described".into())),
            (Some((true, _)), true) => Err(unprocessable("the body is required".into())),
            (Some((_, schema)), false) => {
                if headers.get("content-type").and_then(|v| v.to_str().ok())
                    != Some("application/json")
                {
                    return Err(unprocessable("Content-Type is not application/json".into()));
                }
                let value: Value = serde_json::from_slice(body)
                    .map_err(|e| unprocessable(format!("the body is not JSON: {e}")))?;
                validate(schema, &value, "body").map_err(unprocessable)
            }
        }
    }

    fn authenticate(&self, operation: &Operation, headers: &HeaderMap) -> Result<(), String> {
        let credential = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or("no Bearer Authorization")?;
        let app_operation = matches!(
            operation.id.as_str(),
            "apps/create-installation-access-token" | "apps/get-repo-installation"
        );
        match &self.auth {
            Auth::Token(token) if !app_operation && credential == token => Ok(()),
            Auth::Token(_) => Err("Bad credentials".into()),
            Auth::App {
                id, public_key_pem, ..
            } if app_operation => verify_jwt(credential, *id, public_key_pem),
            Auth::App { .. } => {
                if self.issued.lock().unwrap().iter().any(|t| t == credential) {
                    Ok(())
                } else {
                    Err("not an installation token this server issued".into())
                }
            }
        }
    }

    /// The operation's answer: its example, with this server's ids and tokens.
    fn success(&self, operation: &Operation, body: &Value) -> (u16, Value) {
        let (code, mut answer) = operation.success.clone();
        let id = {
            let mut next = self.next_id.lock().unwrap();
            *next += 1;
            *next
        };
        match operation.id.as_str() {
            "apps/create-installation-access-token" => {
                let token = format!("ghs_installation_{id}");
                self.issued.lock().unwrap().push(token.clone());
                answer["token"] = json!(token);
                let expires = SystemTime::now() + Duration::from_secs(3600);
                answer["expires_at"] = json!(
                    chrono::DateTime::<chrono::Utc>::from(expires)
                        .format("%Y-%m-%dT%H:%M:%SZ")
                        .to_string()
                );
            }
            "apps/get-repo-installation" => {
                if let Auth::App { installation, .. } = &self.auth {
                    answer["id"] = json!(installation);
                }
            }
            _ => {
                answer["id"] = json!(id);
                for field in [
                    "state",
                    "context",
                    "status",
                    "conclusion",
                    "name",
                    "head_sha",
                ] {
                    if let Some(value) = body.get(field) {
                        answer[field] = value.clone();
                    }
                }
            }
        }
        (code, answer)
    }
}

/// Checks an App's JWT as GitHub does: RS256 by the App's key, issued by the App, at most ten
/// minutes long, not issued in the future.
fn verify_jwt(token: &str, app: u64, public_key_pem: &[u8]) -> Result<(), String> {
    #[derive(serde::Deserialize)]
    struct Claims {
        iat: u64,
        exp: u64,
        iss: String,
    }
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(public_key_pem).map_err(|e| e.to_string())?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_issuer(&[app.to_string()]);
    let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation)
        .map_err(|e| format!("JWT: {e}"))?
        .claims;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if claims.exp - claims.iat > 600 || claims.iat > now + 60 || claims.iss != app.to_string() {
        return Err("JWT: not a GitHub App's".into());
    }
    Ok(())
}

/// A new RSA key pair, as `openssl` makes it: the private key in PKCS#1 PEM (as GitHub hands an
/// App's key out) and the public key in PEM.
pub fn rsa_key_pair(dir: &std::path::Path) -> (std::path::PathBuf, Vec<u8>) {
    let private = dir.join("app.pem");
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let key = private.to_str().unwrap();
    run(&["genrsa", "-traditional", "-out", key, "2048"]);
    let public = run(&["rsa", "-in", key, "-pubout"]);
    (private, public)
}
