//! The HTTP face of `builder serve` (axum): `POST /webhooks/github`, the JSON API under `/v1`
//! (its OpenAPI document at `/openapi.json`) and the web console at `/` ([`console`]).
//! Handlers only translate between HTTP and [`Service`] calls: status codes, headers, bodies,
//! and the API token of mutating requests (and of reads, if the server says so). What gets
//! through is decided by `core::access` ([`Access`] applies it): the Host names the server
//! answers to, console sessions, the login throttle, page sizes, the seats of log followers.
//! Served over TLS ([`tls`]) when given a certificate.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Extension;
use axum::Router;
use axum::body::Bytes;
use axum::extract::connect_info::Connected;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::IncomingStream;
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::core::access::{
    FollowerSeats, HostAllowlist, LoginThrottle, MAX_NOTIFICATIONS, SessionKey, limit_within,
    page_limit,
};
use crate::core::build::{Decision, Status};
use crate::core::wire;
use crate::pipeline::service::{
    BuildQuery, Failed, Follower, Headers, ManualRun, Receipt, Rejection, Service, Submission,
};

/// GitHub caps webhook payloads at 25 MB.
const MAX_DELIVERY: usize = 25 * 1024 * 1024;
/// The largest source archive `builder submit --server` may upload.
const MAX_UPLOAD: usize = 1024 * 1024 * 1024;
/// The most lines a followed log reads at once: a long log streams in pieces.
const FOLLOW_PAGE: u32 = 5000;
/// The most lines one page of a log (`GET …/log` without `follow`) holds, and its default: a
/// long log is read a page at a time, never whole into the server's memory.
const LOG_PAGE: u32 = 5000;
const OPENAPI: &str = include_str!("openapi.json");

mod console;
mod kfp;
pub mod tls;

/// Failed logins a client may make within [`LOGIN_WINDOW`] before it must wait.
const LOGIN_FAILURES: usize = 5;
const LOGIN_WINDOW: Duration = Duration::from_secs(60);
/// Clients whose failed logins are remembered at once (the throttle's memory bound).
const LOGIN_CLIENTS: usize = 10_000;
/// What a refused follower is told to wait before trying again.
const FOLLOW_RETRY: &str = "5";

/// Serves on `listener` (over TLS if `tls` is given) until `shutdown` resolves, finishing the
/// requests in flight; followed logs end then too (a browser tab left open on a running build
/// would hold the server up).
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<tls::Acceptor>,
    service: Arc<Service>,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let stopping = CancellationToken::new();
    let stop = stopping.clone();
    let state = Served {
        service,
        access: Arc::new(Access::new(settings, tls.is_some())),
    };
    let app = router(state)
        .layer(Extension(stopping))
        .into_make_service_with_connect_info::<Client>();
    let shutdown = async move {
        shutdown.await;
        stop.cancel();
    };
    match tls {
        Some(acceptor) => {
            let listener = tls::Listener::new(listener, acceptor);
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

/// The address a request came from, for the login throttle: the peer of the connection, which
/// behind a proxy is the proxy.
#[derive(Debug, Clone, Copy)]
struct Client(SocketAddr);

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for Client {
    fn connect_info(stream: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Client(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, tls::Listener>> for Client {
    fn connect_info(stream: IncomingStream<'_, tls::Listener>) -> Self {
        Client(*stream.remote_addr())
    }
}

/// What the HTTP edge lets through, as `builder serve`'s settings say.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The API token that mutating requests (and the console's login) must carry.
    pub token: Option<String>,
    /// Reading builds, logs, triggers, schedules and deliveries needs the token too.
    pub reads_need_token: bool,
    /// The names a request's `Host` may carry.
    pub hosts: HostAllowlist,
    /// How long a console session lasts after its login.
    pub session_lifetime: Duration,
    /// Logs followed at once on this server, and on one build.
    pub max_followers: usize,
    pub max_followers_per_build: usize,
}

/// Who may do what on this server, and how much: [`Settings`] and the state their decisions
/// keep (failed logins, followers' seats). The service knows nothing of it.
#[derive(Debug)]
pub struct Access {
    token: Option<String>,
    reads_need_token: bool,
    hosts: HostAllowlist,
    /// The key of console sessions (none without a token: no one can log in).
    sessions: Option<SessionKey>,
    session_lifetime: Duration,
    /// The session cookie says `Secure`: the server speaks TLS.
    secure: bool,
    logins: Mutex<LoginThrottle>,
    seats: Arc<Mutex<FollowerSeats>>,
}

impl Access {
    fn new(settings: Settings, secure: bool) -> Self {
        Access {
            sessions: settings
                .token
                .as_ref()
                .map(|token| SessionKey::derive(token.as_bytes())),
            token: settings.token,
            reads_need_token: settings.reads_need_token,
            hosts: settings.hosts,
            session_lifetime: settings.session_lifetime,
            secure,
            logins: Mutex::new(LoginThrottle::new(
                LOGIN_FAILURES,
                LOGIN_WINDOW,
                LOGIN_CLIENTS,
            )),
            seats: Arc::new(Mutex::new(FollowerSeats::new(
                settings.max_followers,
                settings.max_followers_per_build,
            ))),
        }
    }

    /// Whether `token` is the API token; compared in constant time (through digests of both).
    pub fn authorizes(&self, token: &str) -> bool {
        use sha2::{Digest, Sha256};
        self.token
            .as_ref()
            .is_some_and(|expected| Sha256::digest(expected) == Sha256::digest(token))
    }

    /// Whether a request with these headers may read: reads are open, or it carries the API
    /// token or an open console session.
    fn may_read(&self, headers: &HeaderMap) -> bool {
        !self.reads_need_token
            || bearer_token(headers).is_some_and(|token| self.authorizes(&token))
            || self.in_session(headers)
    }

    /// Whether the request carries a console session cookie that is still open.
    fn in_session(&self, headers: &HeaderMap) -> bool {
        let (Some(key), Some(cookie)) = (&self.sessions, console::session_cookie(headers)) else {
            return false;
        };
        key.verify(&cookie, unix_now()).is_ok()
    }

    /// A new console session's cookie value and its lifetime.
    fn open_session(&self) -> Option<(String, Duration)> {
        let expires = unix_now().saturating_add(self.session_lifetime.as_secs());
        let key = self.sessions.as_ref()?;
        Some((key.issue(expires), self.session_lifetime))
    }

    /// `Err(wait)`: `client` failed to log in too often and must wait.
    fn login_allowed(&self, client: SocketAddr) -> Result<(), Duration> {
        let mut logins = self.logins.lock().unwrap_or_else(|e| e.into_inner());
        logins.check(client.ip(), Instant::now())
    }

    /// Counts a login of `client` that gave a wrong token (`false`) or the right one.
    fn login_tried(&self, client: SocketAddr, succeeded: bool) {
        let mut logins = self.logins.lock().unwrap_or_else(|e| e.into_inner());
        if succeeded {
            logins.succeeded(client.ip());
        } else {
            logins.failed(client.ip(), Instant::now());
        }
    }

    /// A follower's seat on `build`'s log, given back when dropped.
    fn seat(&self, build: &str) -> Result<Seat, crate::core::access::NoSeat> {
        let mut seats = self.seats.lock().unwrap_or_else(|e| e.into_inner());
        seats.take(build)?;
        Ok(Seat {
            seats: self.seats.clone(),
            build: build.to_string(),
        })
    }
}

/// A follower's seat, held as long as its stream lives.
struct Seat {
    seats: Arc<Mutex<FollowerSeats>>,
    build: String,
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut seats = self.seats.lock().unwrap_or_else(|e| e.into_inner());
        seats.leave(&self.build);
    }
}

/// Seconds since the Unix epoch (a clock before it reads as the epoch: every session expired).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// What the handlers are given: the service, and who may use it.
#[derive(Clone)]
struct Served {
    service: Arc<Service>,
    access: Arc<Access>,
}

impl axum::extract::FromRef<Served> for Arc<Service> {
    fn from_ref(served: &Served) -> Self {
        served.service.clone()
    }
}

impl axum::extract::FromRef<Served> for Arc<Access> {
    fn from_ref(served: &Served) -> Self {
        served.access.clone()
    }
}

fn router(state: Served) -> Router {
    Router::new()
        .route("/webhooks/github", post(github_delivery))
        .route("/v1/webhooks/{trigger}", post(webhook_trigger))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/openapi.json",
            get(|| async { ([("content-type", "application/json")], OPENAPI) }),
        )
        .route("/v1/builds", get(list_builds).post(submit_build))
        .route(
            "/v1/uploads",
            post(upload_source).layer(DefaultBodyLimit::max(MAX_UPLOAD)),
        )
        .route("/v1/builds/{id}", get(get_build).post(build_method))
        .route("/v1/builds/{id}/log", get(build_log))
        .route("/v1/builds/{id}/cancel", post(cancel_build))
        .route("/v1/builds/{id}/retry", post(retry_build))
        .route("/v1/deliveries", get(list_deliveries))
        .route("/v1/workers", get(list_workers))
        .route("/v1/notifications", get(list_notifications))
        .route(
            "/v1/triggers",
            get(list_triggers).post(create::<TriggerFile>),
        )
        .route(
            "/v1/triggers/{name}",
            get(get_trigger)
                .put(replace::<TriggerFile>)
                .delete(delete::<TriggerFile>),
        )
        .route("/v1/triggers/{name}/run", post(run_trigger))
        .route(
            "/v1/schedules",
            get(list_schedules).post(create::<ScheduleFile>),
        )
        .route(
            "/v1/schedules/{name}",
            get(get_schedule)
                .put(replace::<ScheduleFile>)
                .delete(delete::<ScheduleFile>),
        )
        .route("/v1/schedules/{name}/run", post(run_schedule))
        .route("/v1/schedules/{name}/pause", post(pause_schedule::<true>))
        .route("/v1/schedules/{name}/resume", post(pause_schedule::<false>))
        .route_layer(axum::middleware::from_fn_with_state(
            state.access.clone(),
            guard_reads,
        ))
        .merge(console::router())
        .merge(kfp::router())
        .layer(axum::middleware::from_fn_with_state(
            state.access.clone(),
            guard_host,
        ))
        .with_state(state)
}

/// Refuses a request whose `Host` is not one of this server's names (421), before anything
/// else: a page that rebinds its own name to this server's address sends its name.
async fn guard_host(
    State(access): State<Arc<Access>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // HTTP/1.1 requires it; an absolute-form target's authority stands for it.
    let host = request
        .headers()
        .get(axum::http::header::HOST)
        .and_then(|host| host.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()));
    match host {
        Some(host) if access.hosts.allows(host) => next.run(request).await,
        Some(host) => error(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "this server does not answer to the name {host:?}: add it to its allowedHosts \
                 (--allowed-host NAME) if it is this server's"
            ),
        ),
        None => error(StatusCode::BAD_REQUEST, "the request has no Host header"),
    }
}

/// Refuses the API's reads without the token when the server says reads need it. The console's
/// session cookie counts too: its script follows logs through this API.
async fn guard_reads(
    State(access): State<Arc<Access>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let method = request.method();
    let reading = method == axum::http::Method::GET || method == axum::http::Method::HEAD;
    let reads_api = request.uri().path().starts_with("/v1/");
    if reading && reads_api && !access.may_read(request.headers()) {
        return error(
            StatusCode::UNAUTHORIZED,
            "reading needs the API token on this server: `Authorization: Bearer TOKEN`",
        );
    }
    next.run(request).await
}

fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("authorization")?.to_str().ok()?;
    Some(value.strip_prefix("Bearer ")?.to_string())
}

/// A GitHub delivery: its headers are judged before its body is read, so that a request that
/// cannot be GitHub's costs no 25 MB buffer.
async fn github_delivery(
    State(service): State<Arc<Service>>,
    request: axum::extract::Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let admitted = service.admit(Headers {
        event: header("X-GitHub-Event"),
        delivery: header("X-GitHub-Delivery"),
        signature: header(crate::core::webhooks::SIGNATURE_HEADER),
    });
    let admitted = match admitted {
        Ok(admitted) => admitted,
        Err(rejection) => return rejected(rejection),
    };
    let body = match axum::body::to_bytes(body, MAX_DELIVERY).await {
        Ok(body) => body,
        Err(_) => {
            let message = format!("the body is not readable or is over {MAX_DELIVERY} bytes");
            return error(StatusCode::PAYLOAD_TOO_LARGE, message);
        }
    };
    match service.receive(admitted, &body).await {
        Ok(receipt @ Receipt::Accepted { .. }) => {
            (StatusCode::ACCEPTED, axum::Json(receipt)).into_response()
        }
        Ok(receipt) => (StatusCode::OK, axum::Json(receipt)).into_response(),
        Err(rejection) => rejected(rejection),
    }
}

fn rejected(rejection: Rejection) -> Response {
    let status = match rejection {
        Rejection::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        Rejection::BadRequest(_) => StatusCode::BAD_REQUEST,
        Rejection::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, rejection.to_string())
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = json!({"error": {"code": status.as_u16(), "message": message.into()}});
    (status, axum::Json(body)).into_response()
}

/// A service answer as an HTTP response.
fn respond<T: serde::Serialize>(result: Result<T, Failed>) -> Response {
    match result {
        Ok(value) => axum::Json(value).into_response(),
        Err(failed) => error(status_of(&failed), failed.to_string()),
    }
}

/// The status code of a failed service call, for the API and the console alike. Both answer
/// every failure through here, so this is where an internal one is logged, once.
fn status_of(failed: &Failed) -> StatusCode {
    match failed {
        Failed::NotFound(_) => StatusCode::NOT_FOUND,
        Failed::Invalid(_) => StatusCode::BAD_REQUEST,
        Failed::Conflict(_) => StatusCode::CONFLICT,
        Failed::Forbidden(_) => StatusCode::FORBIDDEN,
        Failed::Internal(error) => {
            tracing::error!(%error, "request failed");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

/// A mutating request that carried the API token (`Authorization: Bearer TOKEN`).
struct Authorized;

impl FromRequestParts<Served> for Authorized {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        served: &Served,
    ) -> Result<Self, Self::Rejection> {
        match bearer_token(&parts.headers) {
            Some(token) if served.access.authorizes(&token) => Ok(Authorized),
            _ => Err(error(
                StatusCode::UNAUTHORIZED,
                "this request needs the API token: `Authorization: Bearer TOKEN` \
                 (the server's --api-token-file or BUILDER_API_TOKEN)",
            )),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BuildFilter {
    status: Option<String>,
    trigger: Option<String>,
    schedule: Option<String>,
    branch: Option<String>,
    #[serde(default = "default_limit")]
    limit: u32,
    #[serde(default)]
    offset: u32,
    before: Option<String>,
}

fn default_limit() -> u32 {
    50
}

async fn list_builds(
    State(service): State<Arc<Service>>,
    Query(filter): Query<BuildFilter>,
) -> Response {
    let status = match filter.status.as_deref().map(Status::parse) {
        Some(None) => return error(StatusCode::BAD_REQUEST, "unknown status"),
        Some(status) => status,
        None => None,
    };
    let limit = match page_limit(filter.limit) {
        Ok(limit) => limit,
        Err(refused) => return error(StatusCode::BAD_REQUEST, refused),
    };
    let query = BuildQuery {
        status,
        trigger: filter.trigger,
        schedule: filter.schedule,
        branch: filter.branch,
        limit,
        offset: filter.offset,
        before: filter.before,
    };
    respond(
        service
            .builds(&query)
            .await
            .map(|builds| json!({ "builds": builds })),
    )
}

async fn upload_source(
    State(service): State<Arc<Service>>,
    _: Authorized,
    body: Bytes,
) -> Response {
    respond(service.upload(body).await.map(|id| json!({ "upload": id })))
}

async fn submit_build(State(service): State<Arc<Service>>, _: Authorized, body: Bytes) -> Response {
    let submission: Submission = match serde_json::from_slice(&body) {
        Ok(submission) => submission,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("build request: {e}")),
    };
    respond(
        service
            .submit(submission)
            .await
            .map(|id| json!({ "build": id })),
    )
}

async fn get_build(State(service): State<Arc<Service>>, Path(id): Path<String>) -> Response {
    respond(service.build(&id).await)
}

#[derive(Deserialize)]
struct LogQuery {
    #[serde(default)]
    after: i64,
    /// Follow the log as server-sent events until the build ends.
    #[serde(default)]
    follow: bool,
    /// Followed lines come as one `lines` event per read rather than one `line` event each.
    #[serde(default)]
    batched: bool,
    /// The most lines of a page (without `follow`): at most [`LOG_PAGE`], its default.
    limit: Option<u32>,
}

async fn build_log(
    State(service): State<Arc<Service>>,
    State(access): State<Arc<Access>>,
    Extension(stopping): Extension<CancellationToken>,
    Path(id): Path<String>,
    Query(query): Query<LogQuery>,
) -> Response {
    if query.follow {
        // The seat is taken first: a refused follower costs the store nothing.
        let seat = match access.seat(&id) {
            Ok(seat) => seat,
            Err(no_seat) => {
                let mut response = error(StatusCode::SERVICE_UNAVAILABLE, no_seat.to_string());
                response.headers_mut().insert(
                    axum::http::header::RETRY_AFTER,
                    axum::http::HeaderValue::from_static(FOLLOW_RETRY),
                );
                return response;
            }
        };
        return match service.follow(&id).await {
            Ok(follower) => {
                let events = follow(follower, query.after, query.batched)
                    .take_until(stopping.cancelled_owned())
                    // The seat goes back when the stream ends or its client goes.
                    .map(move |event| {
                        let _held = &seat;
                        event
                    });
                Sse::new(events)
                    .keep_alive(KeepAlive::default())
                    .into_response()
            }
            Err(failed) => respond::<()>(Err(failed)),
        };
    }
    let limit = query.limit.unwrap_or(LOG_PAGE);
    if limit > LOG_PAGE {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "limit {limit} is over the most lines one page of a log holds, {LOG_PAGE}: page on with `after`"
            ),
        );
    }
    // `next`: a full page may have more after it, read with `after=next`.
    respond(
        service
            .log(&id, query.after, Some(limit))
            .await
            .map(|(lines, build)| {
                let next = lines
                    .last()
                    .filter(|_| lines.len() == limit as usize)
                    .map(|line| line.seq);
                json!({ "lines": lines, "finished": build.status.is_final(), "next": next })
            }),
    )
}

/// A build's progress as server-sent events: `step` events when a step starts and when it ends
/// (data `{step, id, name, status, detail}`), `line` events between them (their `id` is the line's sequence
/// number, so a client can resume with `after`; data `{step, stream, text}`), and one `end`
/// event with the build's status and failure. `batched`: the lines of each read as one `lines`
/// event instead (data `[{seq, step, stream, text}]`, its `id` the last line's number): a browser
/// dispatches each event as a task, and a long log's backlog is otherwise hundreds of thousands.
fn follow(
    follower: Follower,
    after: i64,
    batched: bool,
) -> impl Stream<Item = Result<Event, Infallible>> {
    // The last status announced for each step.
    let announced: Vec<Status> = Vec::new();
    futures_util::stream::unfold(Some((follower, after, announced)), move |state| {
        async move {
            let (mut follower, mut after, mut announced) = state?;
            loop {
                // Waits until there is something new.
                let (lines, build) = match follower.next(after, FOLLOW_PAGE).await {
                    Ok(log) => log,
                    Err(failed) => {
                        let data = json!({ "error": failed.to_string() }).to_string();
                        let end = Event::default().event("error").data(data);
                        return Some((vec![Ok(end)], None));
                    }
                };
                announced.resize(build.steps.len(), Status::Queued);
                let step_event = |step: &wire::Step, status: Status, detail: &Option<String>| {
                    let data = json!({
                        "step": step.index, "id": step.id, "name": step.name, "status": status,
                        "detail": detail
                    });
                    Ok(Event::default().event("step").data(data.to_string()))
                };
                let mut events = Vec::new();
                for (step, seen) in build.steps.iter().zip(&mut announced) {
                    if *seen == Status::Queued && step.result.status != Status::Queued {
                        *seen = Status::Working;
                        events.push(step_event(step, Status::Working, &None));
                    }
                }
                match lines.last() {
                    Some(last) if batched => {
                        let event = Event::default().event("lines").id(last.seq.to_string());
                        events.push(Ok(event.data(to_json(&lines))));
                    }
                    _ => {
                        for line in &lines {
                            let data = FollowedLine {
                                step: line.step,
                                stream: line.stream,
                                text: &line.text,
                            };
                            let event = Event::default().event("line").id(line.seq.to_string());
                            events.push(Ok(event.data(to_json(&data))));
                        }
                    }
                }
                for (step, seen) in build.steps.iter().zip(&mut announced) {
                    if !seen.is_final() && step.result.status.is_final() {
                        *seen = step.result.status;
                        events.push(step_event(step, *seen, &step.result.detail));
                    }
                }
                after = lines.last().map_or(after, |line| line.seq);
                // The status was read before the lines: a final build whose lines fit in this
                // read has no more to send.
                let caught_up = !follower.more();
                if build.status.is_final() && caught_up {
                    let data = json!({"status": build.status, "failure": build.failure});
                    events.push(Ok(Event::default().event("end").data(data.to_string())));
                    return Some((events, None));
                }
                if !events.is_empty() {
                    return Some((events, Some((follower, after, announced))));
                }
            }
        }
    })
    .flat_map(futures_util::stream::iter)
}

/// A line as a `line` event carries it (its number is the event's id).
#[derive(serde::Serialize)]
struct FollowedLine<'a> {
    step: usize,
    stream: wire::Stream,
    text: &'a str,
}

/// `value` as JSON text, serialized directly: a `json!` value is a map built per line first,
/// which cost a followed log of short lines more than reading it (measured with `perf`).
fn to_json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).expect("log lines serialize: their keys are strings")
}

async fn cancel_build(
    State(service): State<Arc<Service>>,
    _: Authorized,
    Path(id): Path<String>,
) -> Response {
    respond(
        service
            .cancel(&id)
            .await
            .map(|()| json!({ "cancelled": id })),
    )
}

/// The approver of a decision made with the API token: the token has no name of its own.
const API_APPROVER: &str = "api-token";

/// Cloud Build's `ApproveBuildRequest`: `{"approvalResult": {"decision": …, "comment": …}}`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApproveBuild {
    approval_result: ApprovalAnswer,
}

#[derive(Deserialize)]
struct ApprovalAnswer {
    decision: Decision,
    #[serde(default)]
    comment: Option<String>,
}

/// `POST /v1/builds/ID:METHOD`, Cloud Build's custom methods on a build: `:approve` (which
/// approves or rejects, as its body decides). A path segment holds the id and the method, so
/// they are told apart here rather than by the router.
async fn build_method(
    State(service): State<Arc<Service>>,
    _: Authorized,
    Path(id_and_method): Path<String>,
    body: Bytes,
) -> Response {
    let Some(id) = id_and_method.strip_suffix(":approve") else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no method {id_and_method:?}: POST /v1/builds/ID:approve"),
        );
    };
    let request: ApproveBuild = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "an approval is {{\"approvalResult\": {{\"decision\": \"APPROVED\" or \
                     \"REJECTED\", \"comment\": \"…\"}}}}: {e}"
                ),
            );
        }
    };
    let answer = request.approval_result;
    respond(
        service
            .decide_approval(id, answer.decision, API_APPROVER, answer.comment)
            .await,
    )
}

async fn retry_build(
    State(service): State<Arc<Service>>,
    _: Authorized,
    Path(id): Path<String>,
) -> Response {
    respond(service.retry(&id).await.map(|id| json!({ "build": id })))
}

#[derive(Deserialize)]
struct Limit {
    #[serde(default = "default_limit")]
    limit: u32,
}

async fn list_deliveries(
    State(service): State<Arc<Service>>,
    Query(page): Query<Limit>,
) -> Response {
    let limit = page_limit(page.limit);
    listed("deliveries", limit, |limit| service.deliveries(limit)).await
}

/// `{KEY: [...]}`: what `list` returns for `limit`, or 400 naming why the limit is refused.
async fn listed<T: serde::Serialize, F: Future<Output = Result<Vec<T>, Failed>>>(
    key: &str,
    limit: Result<u32, String>,
    list: impl FnOnce(u32) -> F,
) -> Response {
    match limit {
        Ok(limit) => respond(list(limit).await.map(|rows| json!({ key: rows }))),
        Err(refused) => error(StatusCode::BAD_REQUEST, refused),
    }
}

async fn list_workers(State(service): State<Arc<Service>>) -> Response {
    respond(
        service
            .workers()
            .await
            .map(|workers| json!({ "workers": workers })),
    )
}

async fn list_notifications(
    State(service): State<Arc<Service>>,
    Query(page): Query<Limit>,
) -> Response {
    let limit = limit_within(page.limit, MAX_NOTIFICATIONS);
    listed("notifications", limit, |limit| service.notifications(limit)).await
}

async fn list_triggers(State(service): State<Arc<Service>>) -> Response {
    let triggers: Vec<_> = service.triggers().iter().map(|t| t.summary()).collect();
    axum::Json(json!({ "triggers": triggers })).into_response()
}

async fn get_trigger(State(service): State<Arc<Service>>, Path(name): Path<String>) -> Response {
    respond(service.trigger(&name).map(|t| t.summary()))
}

/// What the API creates, replaces and deletes from a file's bytes (YAML or JSON), as the
/// operator's files hold them: a trigger or a schedule.
trait FromFile {
    /// Creates one, or replaces the one named `replacing`: its JSON and its warnings.
    fn put(
        service: &Service,
        body: &[u8],
        replacing: Option<&str>,
    ) -> impl Future<Output = Result<serde_json::Value, Failed>> + Send;

    fn delete(service: &Service, name: &str) -> impl Future<Output = Result<(), Failed>> + Send;
}

struct TriggerFile;

impl FromFile for TriggerFile {
    async fn put(
        service: &Service,
        body: &[u8],
        replacing: Option<&str>,
    ) -> Result<serde_json::Value, Failed> {
        let (trigger, warnings) = service.put_trigger(body, replacing).await?;
        let warnings: Vec<_> = warnings.lines().collect();
        Ok(json!({ "trigger": trigger.summary(), "warnings": warnings }))
    }

    async fn delete(service: &Service, name: &str) -> Result<(), Failed> {
        service.delete_trigger(name).await
    }
}

struct ScheduleFile;

impl FromFile for ScheduleFile {
    async fn put(
        service: &Service,
        body: &[u8],
        replacing: Option<&str>,
    ) -> Result<serde_json::Value, Failed> {
        let (schedule, warnings) = service.put_schedule(body, replacing).await?;
        let warnings: Vec<_> = warnings.lines().collect();
        Ok(json!({ "schedule": schedule, "warnings": warnings }))
    }

    async fn delete(service: &Service, name: &str) -> Result<(), Failed> {
        service.delete_schedule(name).await
    }
}

/// `POST /v1/triggers`, `POST /v1/schedules`.
async fn create<R: FromFile>(
    State(service): State<Arc<Service>>,
    _: Authorized,
    body: Bytes,
) -> Response {
    respond(R::put(&service, &body, None).await)
}

/// `PUT /v1/triggers/NAME`, `PUT /v1/schedules/NAME`.
async fn replace<R: FromFile>(
    State(service): State<Arc<Service>>,
    _: Authorized,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    respond(R::put(&service, &body, Some(&name)).await)
}

/// `DELETE /v1/triggers/NAME`, `DELETE /v1/schedules/NAME`.
async fn delete<R: FromFile>(
    State(service): State<Arc<Service>>,
    _: Authorized,
    Path(name): Path<String>,
) -> Response {
    let deleted = R::delete(&service, &name).await;
    respond(deleted.map(|()| json!({ "deleted": name })))
}

/// A webhook trigger's query: Cloud Build's `key` (an API key there; the secret is what
/// authenticates here, so it is not read) and the trigger's `secret`.
#[derive(serde::Deserialize)]
struct WebhookQuery {
    secret: Option<String>,
}

/// A request to a webhook trigger (Cloud Build's `webhookConfig`): authenticated by the
/// trigger's secret, not the API token, as senders outside (GitLab, a script) hold only that.
async fn webhook_trigger(
    State(service): State<Arc<Service>>,
    Path(trigger): Path<String>,
    Query(query): Query<WebhookQuery>,
    body: Bytes,
) -> Response {
    respond(
        service
            .webhook(&trigger, query.secret.as_deref(), &body)
            .await,
    )
}

async fn run_trigger(
    State(service): State<Arc<Service>>,
    _: Authorized,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let run: ManualRun = match serde_json::from_slice(&body) {
        Ok(run) => run,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("run request: {e}")),
    };
    respond(
        service
            .run_trigger(&name, run)
            .await
            .map(|id| json!({ "build": id })),
    )
}

async fn list_schedules(State(service): State<Arc<Service>>) -> Response {
    respond(
        service
            .schedules()
            .await
            .map(|schedules| json!({ "schedules": schedules })),
    )
}

async fn get_schedule(State(service): State<Arc<Service>>, Path(name): Path<String>) -> Response {
    respond(service.schedule(&name).await)
}

async fn run_schedule(
    State(service): State<Arc<Service>>,
    _: Authorized,
    Path(name): Path<String>,
) -> Response {
    respond(
        service
            .run_schedule(&name)
            .await
            .map(|id| json!({ "build": id })),
    )
}

/// `POST /v1/schedules/NAME/pause` (`PAUSED`) and `/resume`.
async fn pause_schedule<const PAUSED: bool>(
    State(service): State<Arc<Service>>,
    _: Authorized,
    Path(name): Path<String>,
) -> Response {
    respond(service.pause_schedule(&name, PAUSED).await)
}
