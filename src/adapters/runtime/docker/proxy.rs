//! A build's own engine endpoint: the Unix socket its steps see as `/var/run/docker.sock`.
//!
//! It forwards the Docker Engine API to the engine's socket and judges requests on the way, so
//! that a build reaches only what is its own:
//! * **Scope.** What a step creates (containers, networks, volumes) gets the build's label, so
//!   the end-of-build sweep removes it; lists get a label filter (images stay shared); naming
//!   another build's container, network, volume or exec answers 404 as for a missing one.
//! * **Refused** (403, the message names the setting that allows it): privileged containers,
//!   host paths, host namespaces, devices, added capabilities, unconfined security options,
//!   volume driver options and other network drivers. A trusted build may do all of these.
//! * **Rewritten.** A bind of the workspace becomes the build's workspace volume; the network
//!   `cloudbuild` is the build's own network.
//! * **Offline images.** `docker pull NAME` and `docker push NAME` go through the aliases and
//!   mirrors as step images do, the image ending up under NAME; `docker build` first makes its
//!   Dockerfile's images local the same way (read from the context as it streams by, see
//!   [`context`]). BuildKit builds (`/session`, `version=2`) carry the Dockerfile inside their
//!   session, which is passed through unread: their images are not resolved.
//!
//! A classic `docker build` is taken off the step's connection ([`split`]) and relayed by hand
//! ([`relay`]): its context (often hundreds of megabytes) moves between the two sockets on a
//! thread of its own, in the kernel once its Dockerfile's images are settled: a third of the CPU
//! that hyper's decoding, re-encoding and hand-offs between tasks took (bench/README.md).
//!
//! Everything else passes through untouched and unbuffered, version prefixes (`/v1.41/…`)
//! included: bodies stream both ways, and a request the engine upgrades (attach, exec, BuildKit's
//! `/session` and `/grpc`) becomes a byte pipe once the engine's `101` head is through.
//!
//! Each request gets its own connection to the engine: a Unix socket connects in microseconds,
//! and a connection of its own is what lets an upgraded request keep it.

pub mod context;
pub mod framing;
pub mod names;
mod relay;
mod split;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, BodyStream, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::http::request::Parts;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, error, info, warn};

use self::context::{ContextScan, Resolve};
use self::names::Names;
use self::split::Split;
use super::engine::Reference;
use super::{BUILD_LABEL, VOLUMES_LABEL, lock};
use crate::adapters::runtime::Credentials;
use crate::core::alias::{Aliases, Via};
use crate::core::dockerfile;

/// The largest JSON body judged here (a container's create request is a few KiB).
const JSON_LIMIT: usize = 4 * 1024 * 1024;
/// The largest container list read here, to show the build's names in it (a container's
/// entry is about 1 KiB).
const LIST_LIMIT: usize = 64 * 1024 * 1024;

/// Classic `docker build`s a build's endpoint relays at once; more wait their turn (a step
/// runs a few at most).
const RELAYS: usize = 8;

/// The network name Cloud Build steps use; it stands for the build's own network.
pub const CLOUDBUILD_NETWORK: &str = "cloudbuild";

/// A body of either side: the other side's, streamed, or one made here. (`io::Error` rather
/// than a boxed error: hyper's bound on a boxed one trips the compiler's `Send` inference.)
pub type Body = UnsyncBoxBody<Bytes, io::Error>;

/// What the endpoint knows of its build.
#[derive(Clone)]
pub struct Scope {
    /// The build's id: the value of its label.
    pub build: String,
    /// The engine network of the build, which `cloudbuild` stands for.
    pub network: String,
    /// Where the workspace is in steps (`/workspace`).
    pub workspace: String,
    /// The engine volume that is the workspace.
    pub workspace_volume: String,
    /// Whether the refused requests are allowed.
    pub trusted: bool,
    /// What pulls, pushes and builds resolve image names with.
    pub aliases: Aliases,
    /// For the registries that aliases and mirrors send pulls and pushes to.
    pub credentials: Arc<dyn Credentials>,
}

/// A running endpoint; dropping it stops it.
pub struct Endpoint {
    socket: PathBuf,
    stop: CancellationToken,
    ended: watch::Receiver<Option<String>>,
}

impl Endpoint {
    /// Serves `scope`'s endpoint at `socket` (its directory is made, readable by root only;
    /// the socket by anyone who can reach it: steps run as any user), forwarding to the engine
    /// at `engine`.
    pub fn start(socket: PathBuf, engine: PathBuf, scope: Scope) -> io::Result<Self> {
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        // A socket left by a process that died with the same build id.
        match std::fs::remove_file(&socket) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(&socket)?;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666))?;
        let stop = CancellationToken::new();
        let (report, ended) = watch::channel(None);
        let span = tracing::info_span!("engine_endpoint", build_id = %scope.build);
        let proxy = Arc::new(Proxy {
            names: Names::new(&scope.build),
            scope,
            engine,
            stop: stop.clone(),
            known: Default::default(),
            local: Default::default(),
            relays: Arc::new(tokio::sync::Semaphore::new(RELAYS)),
        });
        let serving = tokio::spawn(accept(listener, proxy).instrument(span.clone()));
        let stopped = stop.clone();
        // Supervises the accept loop: an end the teardown did not ask for fails the build.
        tokio::spawn(async move {
            let reason = match serving.await {
                Ok(Ok(())) if stopped.is_cancelled() => return,
                Ok(Ok(())) => "it stopped accepting connections".to_string(),
                Ok(Err(e)) => format!("accepting a connection failed: {e}"),
                Err(e) => format!("its task failed: {e}"),
            };
            error!(parent: &span, %reason, "the build's engine endpoint died");
            report.send_replace(Some(reason));
        });
        Ok(Self {
            socket,
            stop,
            ended,
        })
    }

    /// Where the socket is on this machine.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Resolves, with the reason, once the endpoint has died; never after a deliberate stop.
    pub async fn died(&self) -> String {
        let mut ended = self.ended.clone();
        let reason = ended.wait_for(Option::is_some).await.map(|r| r.clone());
        match reason {
            Ok(reason) => reason.unwrap_or_default(),
            Err(_) => std::future::pending().await,
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.stop.cancel();
        // Steps are gone by now; a leftover socket would only mislead. The directory is the
        // build's alone.
        let _ = std::fs::remove_file(&self.socket);
        if let Some(dir) = self.socket.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Accepts connections until stopped; each is served on a task of its own.
async fn accept(listener: UnixListener, proxy: Arc<Proxy>) -> io::Result<()> {
    loop {
        let stream = tokio::select! {
            () = proxy.stop.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) if transient(&e) => {
                    warn!(error = %e, "accepting a step's connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(e) => return Err(e),
            },
        };
        tokio::spawn(serve(proxy.clone(), stream).in_current_span());
    }
}

/// Serves a step's connection: hyper its requests, the relay a classic `docker build` taken off
/// it ([`split`]).
async fn serve(proxy: Arc<Proxy>, stream: UnixStream) {
    let stop = proxy.stop.clone();
    let stream = Arc::new(stream);
    let (split, mut taken) = Split::new(stream.clone());
    let service = service_fn({
        let proxy = proxy.clone();
        move |request| {
            let proxy = proxy.clone();
            async move { Ok::<_, Infallible>(proxy.handle(request).await) }
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(split), service)
        .with_upgrades();
    tokio::select! {
        served = connection => if let Err(e) = served {
            debug!(error = %e, "a step's connection ended");
        },
        () = stop.cancelled() => return,
    }
    // Hyper is done with the connection (it saw it end where the build's head was taken, if
    // one was: the head was sent before).
    if let Ok(taken) = taken.try_recv()
        && let Ok(stream) = Arc::try_unwrap(stream)
        && let Ok(_relaying) = proxy.relays.clone().acquire_owned().await
    {
        tokio::select! {
            () = relay::relay(proxy, stream, taken) => {}
            () = stop.cancelled() => {}
        }
    }
}

/// Errors that accepting survives: a client gone before its accept, too many open files.
fn transient(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
    ) || matches!(error.raw_os_error(), Some(23 | 24 | 105 | 12))
}

/// Why a request is not forwarded as it came, as the engine's JSON error shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// Not this build's, or missing: the engine's own words for a missing object.
    NotFound(String),
    /// Allowed to trusted builds only.
    Refused(String),
    /// Malformed: the engine would refuse it too.
    Invalid(String),
    /// The engine could not be reached or answered nonsense.
    Engine(String),
}

impl Denial {
    /// The answer to the step, naming its containers as it did.
    fn response(&self, names: &Names) -> Response<Body> {
        let (status, body) = self.answer(names);
        json_response(status, &body)
    }

    /// The answer's status and JSON body.
    fn answer(&self, names: &Names) -> (StatusCode, Value) {
        let (status, message) = match self {
            Denial::NotFound(message) => (StatusCode::NOT_FOUND, message),
            Denial::Refused(message) => (StatusCode::FORBIDDEN, message),
            Denial::Invalid(message) => (StatusCode::BAD_REQUEST, message),
            Denial::Engine(message) => (StatusCode::BAD_GATEWAY, message),
        };
        (status, json!({ "message": names.unscoped(message) }))
    }
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut response = Response::new(full(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// The refusal of `what` (the Docker setting that asks for it, named as the CLI and the API
/// name it) in a build that is not trusted.
fn refused(what: &str) -> Denial {
    Denial::Refused(format!(
        "builder: this build may not use {what}: it could reach the build machine or other \
         builds; a trusted build may (`trusted: true` in its trigger, `builder submit \
         --trusted`, or `builder serve --trusted`)"
    ))
}

/// Kinds of engine objects a build owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Container,
    Network,
    Volume,
}

impl Kind {
    fn missing(self, id: &str) -> Denial {
        Denial::NotFound(match self {
            Kind::Container => format!("No such container: {id}"),
            Kind::Network => format!("network {id} not found"),
            Kind::Volume => format!("get {id}: no such volume"),
        })
    }
}

/// The objects a request names that must be the build's, found while judging its body.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Named {
    containers: Vec<String>,
    networks: Vec<String>,
    /// Named volumes: the build's own, or made for it if missing.
    volumes: Vec<String>,
}

struct Proxy {
    scope: Scope,
    /// The container names the build gave, scoped to it.
    names: Names,
    engine: PathBuf,
    stop: CancellationToken,
    /// Full ids of containers and execs known to be the build's (made through the endpoint, or
    /// looked up): the CLI names what it made by id, and an id is never reused, so these need
    /// no look-up (a `docker run` names its container four times).
    known: std::sync::Mutex<std::collections::HashSet<String>>,
    /// The Dockerfile images found or made local in this build, by the name written: a later
    /// `docker build` from them needs no look-up. An inspect answers slowly while the engine
    /// unpacks a context, and when the Dockerfile comes last in it the last chunk waits for
    /// that answer. Emptied when a step removes an image through the endpoint.
    local: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Classic builds relayed at once: each holds two threads and a pipe.
    relays: Arc<tokio::sync::Semaphore>,
}

impl Proxy {
    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Body> {
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let request = request.map(|body| body.map_err(io::Error::other).boxed_unsync());
        match self.route(request).await {
            Ok(response) => response,
            Err(denial) => {
                match &denial {
                    Denial::Engine(detail) => {
                        warn!(%method, %path, %detail, "engine request failed")
                    }
                    other => debug!(%method, %path, denial = ?other, "request denied"),
                }
                denial.response(&self.names)
            }
        }
    }

    async fn route(self: &Arc<Self>, request: Request<Body>) -> Result<Response<Body>, Denial> {
        let path = api_path(request.uri().path()).trim_matches('/').to_string();
        let segments: Vec<&str> = path.split('/').collect();
        let method = request.method().clone();
        let get = method == Method::GET;
        let post = method == Method::POST;
        match segments.as_slice() {
            ["containers", "create"] if post => self.create_container(request).await,
            ["containers", "json"] if get => self.list_containers(request).await,
            ["networks"] | ["volumes"] | ["events"] if get => {
                self.forward(self.filtered(request)?).await
            }
            ["containers" | "networks" | "volumes", "prune"] if post => {
                self.forward(self.filtered(request)?).await
            }
            ["networks", "create"] if post => self.create_network(request).await,
            ["volumes", "create"] if post => self.create_volume(request).await,
            ["containers", id, rest @ ..] => self.container_request(request, id, rest).await,
            ["exec", id, ..] => {
                self.own_exec(id).await?;
                self.forward(request).await
            }
            ["networks", id, rest @ ..] => self.network_request(request, id, rest).await,
            ["volumes", name] => {
                self.own(Kind::Volume, name).await?;
                self.forward(request).await
            }
            ["commit"] if post => {
                let (mut parts, body) = request.into_parts();
                let container = query_value(parts.uri.query(), "container").unwrap_or_default();
                let engine = self.own_container(&container).await?;
                let query = with_pair(parts.uri.query(), "container", &engine);
                parts.uri = with_query(parts.uri.path(), &query)?;
                self.forward(Request::from_parts(parts, body)).await
            }
            // A classic build comes here only on a connection `split` stopped following; its
            // context then passes unscanned, as BuildKit's does.
            ["build"] if post => {
                let (mut parts, body) = request.into_parts();
                // The engine would read a form body's fields over the query's.
                let form = parts.headers.get(header::CONTENT_TYPE).is_some_and(|kind| {
                    let kind = kind.as_bytes().to_ascii_lowercase();
                    kind.starts_with(b"application/x-www-form-urlencoded")
                        || kind.starts_with(b"multipart/form-data")
                });
                if form {
                    return Err(Denial::Invalid(
                        "builder: a build's body is its context, not a form".into(),
                    ));
                }
                parts.uri = self.build_network(&parts.uri).await?;
                self.forward(Request::from_parts(parts, body)).await
            }
            ["images", ..] if method == Method::DELETE => {
                self.forget_local_images();
                self.forward(request).await
            }
            ["images", "prune"] if post => {
                self.forget_local_images();
                self.forward(request).await
            }
            ["images", "create"] if post => self.pull(request).await,
            ["images", name @ .., "push"] if post && !name.is_empty() => {
                let name = name.join("/");
                self.push(request, &name).await
            }
            [
                "plugins" | "swarm" | "services" | "nodes" | "secrets" | "configs",
                ..,
            ] if !get => {
                if self.scope.trusted {
                    self.forward(request).await
                } else {
                    Err(refused(
                        "plugins or swarm services (/plugins, /swarm, /services)",
                    ))
                }
            }
            _ => self.forward(request).await,
        }
    }

    /// Sends `request` to the engine as it is, and the engine's answer back as it comes; an
    /// upgraded request becomes a pipe between the two once the engine's answer head is sent.
    async fn forward(&self, mut request: Request<Body>) -> Result<Response<Body>, Denial> {
        let downstream = request
            .headers()
            .contains_key(header::UPGRADE)
            .then(|| hyper::upgrade::on(&mut request));
        let mut response = self.send(request).await?;
        if response.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(downstream) = downstream
        {
            let upstream = hyper::upgrade::on(&mut response);
            let stop = self.stop.clone();
            tokio::spawn(
                async move {
                    let (step, engine) = match tokio::try_join!(downstream, upstream) {
                        Ok(both) => both,
                        Err(e) => return debug!(error = %e, "an upgrade did not complete"),
                    };
                    let (mut step, mut engine) = (TokioIo::new(step), TokioIo::new(engine));
                    tokio::select! {
                        piped = tokio::io::copy_bidirectional(&mut step, &mut engine) => {
                            if let Err(e) = piped {
                                debug!(error = %e, "an upgraded connection ended");
                            }
                        }
                        () = stop.cancelled() => {}
                    }
                }
                .in_current_span(),
            );
        }
        Ok(response.map(|body| body.map_err(io::Error::other).boxed_unsync()))
    }

    /// A connection of its own to the engine.
    async fn connect(&self) -> Result<UnixStream, Denial> {
        UnixStream::connect(&self.engine)
            .await
            .map_err(|e| self.unreachable(&e))
    }

    fn unreachable(&self, error: &dyn std::fmt::Display) -> Denial {
        Denial::Engine(format!(
            "builder could not reach the Docker engine at {}: {error}",
            self.engine.display()
        ))
    }

    /// One request to the engine, on a connection of its own.
    async fn send(&self, request: Request<Body>) -> Result<Response<Incoming>, Denial> {
        let stream = self.connect().await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.unreachable(&e))?;
        tokio::spawn(
            async move {
                if let Err(e) = connection.with_upgrades().await {
                    debug!(error = %e, "a connection to the engine ended");
                }
            }
            .in_current_span(),
        );
        sender
            .send_request(request)
            .await
            .map_err(|e| self.unreachable(&e))
    }

    /// A request of builder's own to the engine: its status and JSON answer (`Null` if none).
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), Denial> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "docker");
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let body = body.map_or_else(Bytes::new, |v| Bytes::from(v.to_string()));
        let request = request
            .body(full(body))
            .map_err(|e| Denial::Invalid(e.to_string()))?;
        let response = self.send(request).await?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| Denial::Engine(format!("reading the engine's answer to {path}: {e}")))?
            .to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, value))
    }

    /// The object `id` of `kind`, if it exists and is the build's.
    async fn owned(&self, kind: Kind, id: &str) -> Result<Option<bool>, Denial> {
        let path = match kind {
            Kind::Container => format!("/containers/{id}/json"),
            Kind::Network => format!("/networks/{id}"),
            Kind::Volume => format!("/volumes/{id}"),
        };
        let (status, found) = self.call(Method::GET, &path, None).await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(Denial::Engine(format!(
                "looking up {id:?}: the engine answered {status}: {}",
                message(&found)
            )));
        }
        let labels = match kind {
            Kind::Container => found.pointer("/Config/Labels"),
            Kind::Network | Kind::Volume => found.get("Labels"),
        };
        let label = labels
            .and_then(|l| l.get(BUILD_LABEL))
            .and_then(Value::as_str);
        // builder's own container of the build's volumes is not the steps'.
        let builders = labels.and_then(|l| l.get(VOLUMES_LABEL)).is_some();
        Ok(Some(label == Some(self.scope.build.as_str()) && !builders))
    }

    /// Succeeds if `id` is the build's; otherwise the engine's answer for a missing object.
    async fn own(&self, kind: Kind, id: &str) -> Result<(), Denial> {
        if kind == Kind::Container && self.is_known(id) {
            return Ok(());
        }
        match self.owned(kind, id).await? {
            Some(true) => Ok(()),
            _ => Err(kind.missing(id)),
        }
    }

    fn is_known(&self, id: &str) -> bool {
        lock(&self.known).contains(id)
    }

    /// Remembers the id in a create's answer (`{"Id": …}`) as the build's; the answer, and
    /// the id if it was one.
    async fn remember(
        &self,
        response: Response<Body>,
    ) -> Result<(Response<Body>, Option<String>), Denial> {
        if !response.status().is_success() {
            return Ok((response, None));
        }
        let (parts, body) = response.into_parts();
        let limited = Limited::new(body, JSON_LIMIT).collect().await;
        let bytes = limited
            .map_err(|e| Denial::Engine(format!("reading the engine's answer: {e}")))?
            .to_bytes();
        let created: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let id = created
            .get("Id")
            .and_then(Value::as_str)
            .map(str::to_string);
        if let Some(id) = &id {
            lock(&self.known).insert(id.clone());
        }
        Ok((Response::from_parts(parts, full(bytes)), id))
    }

    /// The engine's name for the container the build calls `reference`, if it is the build's;
    /// otherwise the engine's answer for a missing one, in the build's words.
    async fn own_container(&self, reference: &str) -> Result<String, Denial> {
        let engine = self.names.engine(reference);
        match self.own(Kind::Container, &engine).await {
            Err(Denial::NotFound(_)) => Err(Kind::Container.missing(reference)),
            owned => owned.map(|()| engine),
        }
    }

    /// A request on the container `id` (as the build names it), which must be the build's:
    /// sent with the engine's name for it, answered with the build's names.
    async fn container_request(
        &self,
        request: Request<Body>,
        id: &str,
        rest: &[&str],
    ) -> Result<Response<Body>, Denial> {
        let engine = self.own_container(id).await?;
        let (mut parts, body) = request.into_parts();
        if engine != id {
            parts.uri = with_segment(&parts.uri, "containers", id, &engine)?;
        }
        let request = Request::from_parts(parts, body);
        let method = request.method().clone();
        let answer = match (&method, rest) {
            (&Method::POST, ["exec"]) => return self.create_exec(request).await,
            (&Method::POST, ["rename"]) => {
                let (mut parts, body) = request.into_parts();
                let name = query_value(parts.uri.query(), "name").unwrap_or_default();
                let query = with_pair(parts.uri.query(), "name", &self.names.scoped(&name));
                parts.uri = with_query(parts.uri.path(), &query)?;
                let answer = self.forward(Request::from_parts(parts, body)).await?;
                if answer.status().is_success() {
                    self.names.freed(id);
                    self.names.gave(&name, None);
                }
                answer
            }
            _ => self.forward(request).await?,
        };
        let status = answer.status();
        if status.is_success() {
            if method == Method::DELETE && rest.is_empty() {
                self.names.freed(id);
            }
            if method == Method::GET && rest == ["json"] {
                return edited(answer, JSON_LIMIT, |c| self.names.inspected(c)).await;
            }
            return Ok(answer);
        }
        self.unscoped(answer).await
    }

    /// An engine's error answer with the build's names in its message.
    async fn unscoped(&self, answer: Response<Body>) -> Result<Response<Body>, Denial> {
        let status = answer.status();
        if status.is_success() || status.is_informational() || status.is_redirection() {
            return Ok(answer);
        }
        edited(answer, JSON_LIMIT, |error| {
            if let Some(Value::String(message)) = error.get_mut("message") {
                *message = self.names.unscoped(message);
            }
        })
        .await
    }

    /// `docker ps`: the build's containers (its label as a filter), their names as the build
    /// gave them, and `--filter name=…` applied to those names.
    async fn list_containers(&self, request: Request<Body>) -> Result<Response<Body>, Denial> {
        let (mut parts, body) = request.into_parts();
        let label = format!("{BUILD_LABEL}={}", self.scope.build);
        let mut names = Vec::new();
        let query = with_filters(parts.uri.query(), |filters| {
            add_filter(filters, "label", &label)?;
            names = filter_values(filters.remove("name"))?;
            for key in ["before", "since"] {
                if let Some(values) = filters.remove(key) {
                    for value in filter_values(Some(values))? {
                        add_filter(filters, key, &self.names.engine(&value))?;
                    }
                }
            }
            Ok(())
        })?;
        let names = names
            .iter()
            .map(|name| {
                regex::Regex::new(name)
                    .map_err(|e| Denial::Invalid(format!("invalid filter 'name={name}': {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        parts.uri = with_query(parts.uri.path(), &query)?;
        let answer = self.forward(Request::from_parts(parts, body)).await?;
        if !answer.status().is_success() {
            return self.unscoped(answer).await;
        }
        edited(answer, LIST_LIMIT, |list| {
            if let Some(list) = list.as_array_mut() {
                list.retain(|c| c.pointer(&format!("/Labels/{VOLUMES_LABEL}")).is_none());
            }
            self.names.listed(list, &names)
        })
        .await
    }

    async fn own_exec(&self, id: &str) -> Result<(), Denial> {
        if self.is_known(id) {
            return Ok(());
        }
        let (status, exec) = self
            .call(Method::GET, &format!("/exec/{id}/json"), None)
            .await?;
        let container = exec.get("ContainerID").and_then(Value::as_str);
        match container {
            Some(container) if status.is_success() => self
                .own(Kind::Container, container)
                .await
                .map_err(|_| Denial::NotFound(format!("No such exec instance: {id}"))),
            _ => Err(Denial::NotFound(format!("No such exec instance: {id}"))),
        }
    }

    /// The request with the build's label added to its `filters`.
    fn filtered(&self, request: Request<Body>) -> Result<Request<Body>, Denial> {
        let (mut parts, body) = request.into_parts();
        let label = format!("{BUILD_LABEL}={}", self.scope.build);
        let query = with_label_filter(parts.uri.query(), &label)?;
        parts.uri = with_query(parts.uri.path(), &query)?;
        Ok(Request::from_parts(parts, body))
    }

    /// `docker create`/`run`: the body judged, a given name scoped to the build (and an alias
    /// on its network, where the build's steps resolve it).
    async fn create_container(&self, request: Request<Body>) -> Result<Response<Body>, Denial> {
        let (mut parts, mut body) = json_request(request).await?;
        self.names.scope_references(&mut body);
        let named = judge_container(&mut body, &self.scope)?;
        let name = query_value(parts.uri.query(), "name").filter(|name| !name.is_empty());
        if let Some(name) = &name {
            let query = with_pair(parts.uri.query(), "name", &self.names.scoped(name));
            parts.uri = with_query(parts.uri.path(), &query)?;
            names::aliased(&mut body, name.trim_start_matches('/'));
        }
        self.check(&named).await?;
        let created = self.forward(rebuilt(parts, &body)).await?;
        let (created, id) = self.remember(created).await?;
        if let (Some(name), Some(id)) = (&name, &id) {
            self.names.gave(name, Some(id));
        }
        self.unscoped(created).await
    }

    async fn create_exec(&self, request: Request<Body>) -> Result<Response<Body>, Denial> {
        let (parts, body) = json_request(request).await?;
        if !self.scope.trusted && body.get("Privileged").and_then(Value::as_bool) == Some(true) {
            return Err(refused(
                "privileged exec (docker exec --privileged, Privileged)",
            ));
        }
        let created = self.forward(rebuilt(parts, &body)).await?;
        self.remember(created).await.map(|(created, _)| created)
    }

    async fn create_network(&self, request: Request<Body>) -> Result<Response<Body>, Denial> {
        let (parts, mut body) = json_request(request).await?;
        judge_network(&mut body, &self.scope)?;
        self.forward(rebuilt(parts, &body)).await
    }

    async fn create_volume(&self, request: Request<Body>) -> Result<Response<Body>, Denial> {
        let (parts, mut body) = json_request(request).await?;
        judge_volume(&mut body, &self.scope)?;
        self.forward(rebuilt(parts, &body)).await
    }

    /// A `docker build`'s target with its network judged as a container's (`cloudbuild` is the
    /// build's).
    async fn build_network(&self, target: &hyper::Uri) -> Result<hyper::Uri, Denial> {
        let network = query_value(target.query(), "networkmode");
        match network.as_deref() {
            Some(CLOUDBUILD_NETWORK) => {
                let query = with_pair(target.query(), "networkmode", &self.scope.network);
                return with_query(target.path(), &query);
            }
            Some("host") if !self.scope.trusted => {
                return Err(refused(
                    "the host's network (docker build --network host, networkmode)",
                ));
            }
            Some("" | "default" | "bridge" | "none" | "host") | None => {}
            Some(network) => self.own(Kind::Network, network).await?,
        }
        Ok(target.clone())
    }

    /// A classic `docker build` to `target` ([`relay`]): its target as the engine gets it, and
    /// the scan that makes its Dockerfile's images local as its context streams by.
    async fn classic_build(
        self: &Arc<Self>,
        target: &hyper::Uri,
    ) -> Result<(hyper::Uri, ContextScan), Denial> {
        let target = self.build_network(target).await?;
        let query = target.query();
        let name = query_value(query, "dockerfile").unwrap_or_else(|| "Dockerfile".into());
        let build_args: BTreeMap<String, Option<String>> = query_value(query, "buildargs")
            .filter(|args| !args.is_empty())
            .map(|args| serde_json::from_str(&args))
            .transpose()
            .map_err(|e| Denial::Invalid(format!("invalid buildargs: {e}")))?
            .unwrap_or_default();
        let build_args: BTreeMap<String, String> = (build_args.into_iter())
            .filter_map(|(name, value)| Some((name, value?)))
            .collect();
        let proxy = self.clone();
        let dockerfile = name.clone();
        let resolve: Resolve = Box::new(move |text| {
            Box::pin(async move {
                let images = dockerfile::images(&text, &build_args)
                    .map_err(|e| Denial::Invalid(format!("reading {dockerfile}: {e}")))?;
                for image in images {
                    proxy.ensure(&image).await?;
                }
                Ok(())
            })
        });
        Ok((target, ContextScan::new(&name, resolve)))
    }

    /// Makes the Dockerfile's image `written` local under that name, through its alias or
    /// mirror. An image the engine has, or that no alias or mirror names, is left to the engine.
    async fn ensure(&self, written: &str) -> Result<(), Denial> {
        if lock(&self.local).contains(written) {
            return Ok(());
        }
        if self.image_exists(written).await? {
            lock(&self.local).insert(written.to_string());
            return Ok(());
        }
        let resolved = self.scope.aliases.resolve(written);
        let reference = Reference::parse(written).map_err(|e| Denial::Invalid(e.to_string()))?;
        if resolved.via == Via::Written || reference.is_digest() {
            return Ok(());
        }
        let image = resolved.image;
        if !self.image_exists(&image).await? {
            let pulled = self.pull_quietly(&image).await;
            pulled.map_err(|detail| {
                Denial::Engine(format!(
                    "builder: the Dockerfile's image {written:?} is {image:?} here (image \
                     aliases and mirrors), which could not be pulled: {detail}"
                ))
            })?;
        }
        self.tag(&image, written).await?;
        info!(%written, %image, "a Dockerfile's image resolved");
        lock(&self.local).insert(written.to_string());
        Ok(())
    }

    /// An image removed by a step may be one a Dockerfile's `FROM` was found as.
    fn forget_local_images(&self) {
        lock(&self.local).clear();
    }

    /// Pulls `image` with the build's credentials; the error the engine reported, if any.
    async fn pull_quietly(&self, image: &str) -> Result<(), String> {
        let reference = Reference::parse(image).map_err(|e| e.to_string())?;
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("fromImage", reference.repository)
            .append_pair("tag", reference.tag)
            .finish();
        let request = Request::post(format!("/images/create?{query}"))
            .header(header::HOST, "docker")
            .body(full(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let (mut parts, body) = request.into_parts();
        self.authorize(&mut parts, image)
            .await
            .map_err(|d| format!("{d:?}"))?;
        let response = self
            .send(Request::from_parts(parts, body))
            .await
            .map_err(|d| format!("{d:?}"))?;
        let status = response.status();
        let progress = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        // The engine reports a failed pull as a JSON line with `error` after a 200.
        let failure = progress.split(|b| *b == b'\n').find_map(|line| {
            let line: Value = serde_json::from_slice(line).ok()?;
            line.get("error")
                .map(|e| e.as_str().unwrap_or_default().to_string())
        });
        match failure {
            Some(error) => Err(error),
            None if !status.is_success() => Err(String::from_utf8_lossy(&progress).into()),
            None => Ok(()),
        }
    }

    /// `docker pull NAME`: a name the aliases or mirrors send elsewhere is pulled from there
    /// (unless the engine has it) and tagged as NAME, as a step image is resolved. Every tag
    /// (`-a`) and digests go as written.
    async fn pull(self: &Arc<Self>, request: Request<Body>) -> Result<Response<Body>, Denial> {
        let query = request.uri().query();
        let from = query_value(query, "fromImage").filter(|f| !f.is_empty());
        let tag = query_value(query, "tag").unwrap_or_default();
        let Some(from) = from.filter(|_| !tag.is_empty() && !tag.contains(':')) else {
            return self.forward(request).await;
        };
        let written = format!("{from}:{tag}");
        let resolved = self.scope.aliases.resolve(&written);
        if resolved.via == Via::Written {
            return self.forward(request).await;
        }
        let image = resolved.image;
        if self.image_exists(&image).await? {
            self.tag(&image, &written).await?;
            let status = format!("Status: {written} is {image} here (image aliases and mirrors)");
            return Ok(json_response(StatusCode::OK, &json!({ "status": status })));
        }
        let (mut parts, _) = request.into_parts();
        let reference = Reference::parse(&image).map_err(|e| Denial::Invalid(e.to_string()))?;
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("fromImage", reference.repository)
            .append_pair("tag", reference.tag)
            .finish();
        parts.uri = with_query(parts.uri.path(), &query)?;
        self.authorize(&mut parts, &image).await?;
        let response = self
            .forward(Request::from_parts(parts, full(Bytes::new())))
            .await?;
        if !response.status().is_success() {
            return Ok(response);
        }
        let proxy = self.clone();
        let tagged = async move { proxy.tag_pulled(&image, &written).await };
        Ok(response.map(|body| followed_by(body, tagged)))
    }

    /// After a pull's progress: the pulled image tagged as written, or the error line to add.
    async fn tag_pulled(&self, image: &str, written: &str) -> Option<Bytes> {
        let tagged = match self.image_exists(image).await {
            Ok(true) => self.tag(image, written).await,
            // The pull's progress has said why.
            Ok(false) => Ok(()),
            Err(denial) => Err(denial),
        };
        tagged.err().map(|denial| {
            let message = format!("{denial:?}");
            let line = json!({ "errorDetail": { "message": message }, "error": message });
            Bytes::from(line.to_string() + "\n")
        })
    }

    /// `docker push NAME`: a name a registry mirror sends elsewhere is tagged with the mirror's
    /// name and pushed there, with the build's credentials, as the build's `images` are.
    async fn push(&self, request: Request<Body>, name: &str) -> Result<Response<Body>, Denial> {
        let tag = query_value(request.uri().query(), "tag").filter(|t| !t.is_empty());
        let Some(tag) = tag else {
            return self.forward(request).await;
        };
        let written = format!("{name}:{tag}");
        let target = self.scope.aliases.mirror(&written);
        let Some(target) = target.filter(|target| *target != written) else {
            return self.forward(request).await;
        };
        self.tag(&written, &target).await?;
        let reference = Reference::parse(&target).map_err(|e| Denial::Invalid(e.to_string()))?;
        let (mut parts, body) = request.into_parts();
        let path = parts.uri.path();
        let version = &path[..path.len() - api_path(path).len()];
        let path = format!("{version}/images/{}/push", reference.repository);
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("tag", reference.tag)
            .finish();
        parts.uri = with_query(&path, &query)?;
        self.authorize(&mut parts, &target).await?;
        self.forward(Request::from_parts(parts, body)).await
    }

    /// Sets the credentials for `image`'s registry on a pull or push request, replacing the
    /// CLI's (which are for the name it was given).
    async fn authorize(&self, parts: &mut Parts, image: &str) -> Result<(), Denial> {
        let auth = self.scope.credentials.auth(image).await;
        let auth = auth.map_err(|e| Denial::Engine(e.to_string()))?;
        // Anonymous is `{}`: the engine refuses a push without the header.
        let json = match auth {
            Some(auth) => json!({
                "username": auth.username,
                "password": auth.password,
                "serveraddress": auth.server,
            }),
            None => json!({}),
        };
        let encoded = base64::engine::general_purpose::URL_SAFE.encode(json.to_string());
        let value =
            header::HeaderValue::from_str(&encoded).map_err(|e| Denial::Invalid(e.to_string()))?;
        parts.headers.insert("X-Registry-Auth", value);
        Ok(())
    }

    async fn image_exists(&self, image: &str) -> Result<bool, Denial> {
        let (status, answer) = self
            .call(Method::GET, &format!("/images/{image}/json"), None)
            .await?;
        match status {
            StatusCode::NOT_FOUND => Ok(false),
            status if status.is_success() => Ok(true),
            _ => Err(Denial::Engine(format!(
                "looking up image {image:?}: {}",
                message(&answer)
            ))),
        }
    }

    /// Tags the local `image` as `name`.
    async fn tag(&self, image: &str, name: &str) -> Result<(), Denial> {
        let reference = Reference::parse(name).map_err(|e| Denial::Invalid(e.to_string()))?;
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("repo", reference.repository)
            .append_pair("tag", reference.tag)
            .finish();
        let (status, answer) = self
            .call(Method::POST, &format!("/images/{image}/tag?{query}"), None)
            .await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(Denial::Engine(format!(
                "tagging {image:?} as {name:?}: {}",
                message(&answer)
            )))
        }
    }

    /// A request on the network `id` (`cloudbuild` is the build's): it must be the build's,
    /// and so must the container a connect or disconnect names.
    async fn network_request(
        &self,
        request: Request<Body>,
        id: &str,
        rest: &[&str],
    ) -> Result<Response<Body>, Denial> {
        let network = if id == CLOUDBUILD_NETWORK {
            self.scope.network.as_str()
        } else {
            id
        };
        self.own(Kind::Network, network).await?;
        let (mut parts, body) = request.into_parts();
        if network != id {
            parts.uri = with_segment(&parts.uri, "networks", id, network)?;
        }
        if matches!(rest, ["connect" | "disconnect"]) {
            let (parts, mut body) = json_request(Request::from_parts(parts, body)).await?;
            let container = body.get("Container").and_then(Value::as_str);
            let container = container.unwrap_or_default().to_string();
            let engine = self.own_container(&container).await?;
            // A given name resolves on the networks a container joins later too.
            let given = (self.names.given(&container)).or_else(|| self.names.name_of(&container));
            if let Some(body) = body.as_object_mut() {
                body.insert("Container".into(), Value::from(engine));
                if let Some(name) = given.filter(|_| rest == ["connect"]) {
                    let endpoint =
                        (body.entry("EndpointConfig")).or_insert_with(|| Value::Object(Map::new()));
                    names::alias(endpoint, &name);
                }
            }
            let answer = self.forward(rebuilt(parts, &body)).await?;
            return self.unscoped(answer).await;
        }
        self.forward(Request::from_parts(parts, body)).await
    }

    /// Checks what a create request names: containers and networks must be the build's; named
    /// volumes too, and those missing are made for the build (the engine would make them without
    /// the build's label, out of the sweep's reach). Not 404: the CLI takes a 404 from a
    /// create for a missing image, and would try to pull it.
    async fn check(&self, named: &Named) -> Result<(), Denial> {
        let invalid = |denial| match denial {
            Denial::NotFound(message) => Denial::Invalid(message),
            other => other,
        };
        for container in &named.containers {
            self.own(Kind::Container, container)
                .await
                .map_err(invalid)?;
        }
        for network in &named.networks {
            self.own(Kind::Network, network).await.map_err(invalid)?;
        }
        for volume in &named.volumes {
            match self.owned(Kind::Volume, volume).await? {
                Some(true) => {}
                Some(false) => return Err(invalid(Kind::Volume.missing(volume))),
                None => {
                    let mut body = json!({ "Name": volume });
                    judge_volume(&mut body, &self.scope)?;
                    let (status, answer) = self
                        .call(Method::POST, "/volumes/create", Some(&body))
                        .await?;
                    if !status.is_success() {
                        return Err(Denial::Engine(format!(
                            "creating volume {volume:?}: {}",
                            message(&answer)
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}

/// The path without its API version prefix (`/v1.41/containers/json` → `/containers/json`).
pub fn api_path(path: &str) -> &str {
    let Some(rest) = path.strip_prefix("/v") else {
        return path;
    };
    let end = rest.find('/').unwrap_or(rest.len());
    let version = &rest[..end];
    let is_version = version.split('.').count() == 2
        && version
            .split('.')
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()));
    if is_version { &rest[end..] } else { path }
}

/// `path?query` as a request target.
fn with_query(path: &str, query: &str) -> Result<hyper::Uri, Denial> {
    format!("{path}?{query}")
        .parse()
        .map_err(|e| Denial::Invalid(format!("{e}")))
}

/// `body`, then what `last` adds (if anything) once it has ended.
fn followed_by(body: Body, last: impl Future<Output = Option<Bytes>> + Send + 'static) -> Body {
    let last = futures_util::stream::once(last)
        .filter_map(|line| std::future::ready(line.map(|line| Ok(Frame::data(line)))));
    StreamBody::new(BodyStream::new(body).chain(last)).boxed_unsync()
}

/// The first value of `key` in a query string.
fn query_value(query: Option<&str>, key: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// The query with `label` added to its `filters` (JSON: `{"label": ["k=v"]}`, or the older
/// `{"label": {"k=v": true}}`); the engine ANDs label filters, so the user's still apply.
pub fn with_label_filter(query: Option<&str>, label: &str) -> Result<String, Denial> {
    with_filters(query, |filters| add_filter(filters, "label", label))
}

/// The query with its `filters` (JSON: `{"KEY": ["VALUE"]}`, or the older
/// `{"KEY": {"VALUE": true}}`) changed by `edit`.
fn with_filters(
    query: Option<&str>,
    edit: impl FnOnce(&mut Map<String, Value>) -> Result<(), Denial>,
) -> Result<String, Denial> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut filters = match pairs.iter().find(|(k, _)| k == "filters") {
        Some((_, v)) if !v.is_empty() => {
            serde_json::from_str(v).map_err(|e| Denial::Invalid(format!("invalid filter: {e}")))?
        }
        _ => Value::Object(Map::new()),
    };
    let Some(filters_map) = filters.as_object_mut() else {
        return Err(Denial::Invalid("invalid filter: not an object".into()));
    };
    edit(filters_map)?;
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs.iter().filter(|(k, _)| k != "filters") {
        query.append_pair(k, v);
    }
    query.append_pair("filters", &filters.to_string());
    Ok(query.finish())
}

/// Adds `value` to the filter `key`, in the form the query uses.
fn add_filter(filters: &mut Map<String, Value>, key: &str, value: &str) -> Result<(), Denial> {
    match filters
        .entry(key)
        .or_insert_with(|| Value::Array(Vec::new()))
    {
        Value::Array(values) => values.push(Value::from(value)),
        Value::Object(values) => {
            values.insert(value.to_string(), Value::Bool(true));
        }
        _ => return Err(Denial::Invalid(format!("invalid filter: {key}"))),
    }
    Ok(())
}

/// The values of a filter taken out of `filters`, in either form.
fn filter_values(filter: Option<Value>) -> Result<Vec<String>, Denial> {
    let values = match filter {
        None => return Ok(Vec::new()),
        Some(Value::Array(values)) => values,
        Some(Value::Object(values)) => values.into_iter().map(|(k, _)| Value::from(k)).collect(),
        Some(_) => return Err(Denial::Invalid("invalid filter: not a list".into())),
    };
    values
        .into_iter()
        .map(|value| match value {
            Value::String(value) => Ok(value),
            _ => Err(Denial::Invalid("invalid filter: not a string".into())),
        })
        .collect()
}

/// The request target with the path's object `from` (after `/KIND/`) named `to`.
fn with_segment(uri: &hyper::Uri, kind: &str, from: &str, to: &str) -> Result<hyper::Uri, Denial> {
    let path = uri
        .path()
        .replacen(&format!("/{kind}/{from}"), &format!("/{kind}/{to}"), 1);
    match uri.query() {
        Some(query) => with_query(&path, query),
        None => path.parse().map_err(|e| Denial::Invalid(format!("{e}"))),
    }
}

/// An engine's JSON answer (at most `limit`) changed by `edit`; one that is no JSON as it came.
async fn edited(
    answer: Response<Body>,
    limit: usize,
    edit: impl FnOnce(&mut Value),
) -> Result<Response<Body>, Denial> {
    let (mut parts, body) = answer.into_parts();
    let bytes = Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| Denial::Engine(format!("reading the engine's answer: {e}")))?
        .to_bytes();
    let bytes = match serde_json::from_slice::<Value>(&bytes) {
        Ok(mut value) => {
            edit(&mut value);
            Bytes::from(value.to_string())
        }
        Err(_) => bytes,
    };
    // The length is the new body's own; hyper sets it.
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::TRANSFER_ENCODING);
    Ok(Response::from_parts(parts, full(bytes)))
}

/// The query with `key` set to `value`.
fn with_pair(query: Option<&str>, key: &str, value: &str) -> String {
    let mut rewritten = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        rewritten.append_pair(&k, if k == key { value } else { &v });
    }
    rewritten.finish()
}

/// Reads a JSON request body (at most [`JSON_LIMIT`]); an empty one is `{}`.
async fn json_request(request: Request<Body>) -> Result<(Parts, Value), Denial> {
    let (parts, body) = request.into_parts();
    let bytes = Limited::new(body, JSON_LIMIT)
        .collect()
        .await
        .map_err(|e| Denial::Invalid(format!("reading the request body: {e}")))?
        .to_bytes();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok((parts, Value::Object(Map::new())));
    }
    let value = serde_json::from_slice(&bytes)
        .map_err(|e| Denial::Invalid(format!("invalid JSON body: {e}")))?;
    Ok((parts, value))
}

/// The request again, with `body` as its JSON body.
fn rebuilt(mut parts: Parts, body: &Value) -> Request<Body> {
    // The new length is the body's own; hyper sets it.
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::TRANSFER_ENCODING);
    Request::from_parts(parts, full(body.to_string()))
}

/// The engine's error message in an answer.
fn message(answer: &Value) -> String {
    answer
        .get("message")
        .and_then(Value::as_str)
        .map_or_else(|| answer.to_string(), str::to_string)
}

/// Sets the build's label on an object's `Labels`, over any value given.
fn label(object: &mut Value, key: &str, scope: &Scope) -> Result<(), Denial> {
    let body = object
        .as_object_mut()
        .ok_or_else(|| Denial::Invalid("the request body is not a JSON object".into()))?;
    let labels = body.entry(key).or_insert_with(|| Value::Object(Map::new()));
    if labels.is_null() {
        *labels = Value::Object(Map::new());
    }
    let labels = labels
        .as_object_mut()
        .ok_or_else(|| Denial::Invalid(format!("{key} is not an object")))?;
    labels.insert(BUILD_LABEL.to_string(), Value::from(scope.build.as_str()));
    Ok(())
}

fn strings(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

fn nonempty(value: Option<&Value>) -> bool {
    match value {
        Some(Value::Array(items)) => !items.is_empty(),
        Some(Value::Object(items)) => !items.is_empty(),
        Some(Value::String(text)) => !text.is_empty(),
        _ => false,
    }
}

/// What a namespace mode (`NetworkMode`, `PidMode`, `IpcMode`) names: the host's is refused,
/// another container's must be the build's.
fn judge_namespace(
    mode: Option<&str>,
    setting: &str,
    scope: &Scope,
    named: &mut Named,
) -> Result<(), Denial> {
    match mode {
        Some("host") if !scope.trusted => Err(refused(setting)),
        Some(mode) => {
            if let Some(container) = mode.strip_prefix("container:") {
                named.containers.push(container.to_string());
            }
            Ok(())
        }
        None => Ok(()),
    }
}

/// A create-container body judged and rewritten for the build: its label set, refusals
/// checked, workspace binds turned into its volume, `cloudbuild` into its network. Returns
/// what it names that must be the build's.
pub fn judge_container(body: &mut Value, scope: &Scope) -> Result<Named, Denial> {
    label(body, "Labels", scope)?;
    let mut named = Named::default();
    let Some(object) = body.as_object_mut() else {
        return Err(Denial::Invalid(
            "the request body is not a JSON object".into(),
        ));
    };
    let host = object
        .entry("HostConfig")
        .or_insert_with(|| Value::Object(Map::new()));
    if host.is_null() {
        *host = Value::Object(Map::new());
    }
    let host = host
        .as_object_mut()
        .ok_or_else(|| Denial::Invalid("HostConfig is not an object".into()))?;
    let trusted = scope.trusted;
    if !trusted && host.get("Privileged").and_then(Value::as_bool) == Some(true) {
        return Err(refused(
            "privileged containers (docker run --privileged, HostConfig.Privileged)",
        ));
    }
    for (key, setting) in [
        (
            "Devices",
            "devices (docker run --device, HostConfig.Devices)",
        ),
        (
            "DeviceRequests",
            "device requests (docker run --gpus, HostConfig.DeviceRequests)",
        ),
        (
            "DeviceCgroupRules",
            "device cgroup rules (docker run --device-cgroup-rule)",
        ),
        (
            "CapAdd",
            "added capabilities (docker run --cap-add, HostConfig.CapAdd)",
        ),
    ] {
        if !trusted && nonempty(host.get(key)) {
            return Err(refused(setting));
        }
    }
    let unconfined = strings(host.get("SecurityOpt")).into_iter().find(|option| {
        let option = option.replace(':', "=");
        option.ends_with("=unconfined") || option == "label=disable"
    });
    if let Some(option) = unconfined
        && !trusted
    {
        return Err(refused(&format!(
            "the security option {option:?} (docker run --security-opt, HostConfig.SecurityOpt)"
        )));
    }
    let mode = |key: &str| host.get(key).and_then(Value::as_str).map(str::to_string);
    judge_namespace(
        mode("PidMode").as_deref(),
        "the host's PID namespace (docker run --pid host, HostConfig.PidMode)",
        scope,
        &mut named,
    )?;
    judge_namespace(
        mode("IpcMode").as_deref(),
        "the host's IPC namespace (docker run --ipc host, HostConfig.IpcMode)",
        scope,
        &mut named,
    )?;
    for (key, setting) in [
        (
            "UTSMode",
            "the host's UTS namespace (docker run --uts host, HostConfig.UTSMode)",
        ),
        (
            "UsernsMode",
            "the host's user namespace (docker run --userns host, HostConfig.UsernsMode)",
        ),
        (
            "CgroupnsMode",
            "the host's cgroup namespace (docker run --cgroupns host, HostConfig.CgroupnsMode)",
        ),
    ] {
        if !trusted && mode(key).as_deref() == Some("host") {
            return Err(refused(setting));
        }
    }
    // The network: `cloudbuild` is the build's; another named network must be the build's.
    let network = match mode("NetworkMode").as_deref() {
        Some(CLOUDBUILD_NETWORK) => {
            host.insert("NetworkMode".into(), Value::from(scope.network.as_str()));
            None
        }
        Some("host") if !trusted => {
            return Err(refused(
                "the host's network (docker run --network host, HostConfig.NetworkMode)",
            ));
        }
        Some(mode) if mode.starts_with("container:") => {
            named
                .containers
                .push(mode["container:".len()..].to_string());
            None
        }
        Some("" | "default" | "bridge" | "none" | "host") | None => None,
        Some(network) => Some(network.to_string()),
    };
    named.networks.extend(network);
    for container in strings(host.get("VolumesFrom")) {
        let id = container.split(':').next().unwrap_or_default();
        named.containers.push(id.to_string());
    }
    for link in strings(host.get("Links")) {
        let id = link.split(':').next().unwrap_or_default();
        named
            .containers
            .push(id.trim_start_matches('/').to_string());
    }
    // Binds: `SOURCE:TARGET[:OPTIONS]`, SOURCE a host path or a volume name.
    let mut binds = Vec::new();
    for bind in strings(host.get("Binds")) {
        let (source, rest) = bind.split_once(':').unwrap_or((bind.as_str(), ""));
        let source = judge_source(source, scope, &mut named)?;
        binds.push(Value::from(if rest.is_empty() {
            source
        } else {
            format!("{source}:{rest}")
        }));
    }
    if !binds.is_empty() {
        host.insert("Binds".into(), Value::Array(binds));
    }
    if let Some(Value::Array(mounts)) = host.get_mut("Mounts") {
        for mount in mounts {
            judge_mount(mount, scope, &mut named)?;
        }
    }
    // `docker run --network cloudbuild` also names it among the endpoints.
    if let Some(Value::Object(endpoints)) = object
        .get_mut("NetworkingConfig")
        .and_then(|c| c.get_mut("EndpointsConfig"))
    {
        if let Some(endpoint) = endpoints.remove(CLOUDBUILD_NETWORK) {
            endpoints.insert(scope.network.clone(), endpoint);
        }
        for network in endpoints.keys() {
            if network != &scope.network
                && !matches!(network.as_str(), "bridge" | "host" | "none" | "default")
            {
                named.networks.push(network.clone());
            }
        }
    }
    Ok(named)
}

/// The source of a bind as it will be mounted: the workspace's volume for the workspace, a
/// volume name as it is (it must be the build's), a host path refused.
fn judge_source(source: &str, scope: &Scope, named: &mut Named) -> Result<String, Denial> {
    if !source.starts_with('/') {
        named.volumes.push(source.to_string());
        return Ok(source.to_string());
    }
    let path = source.trim_end_matches('/');
    if path == scope.workspace {
        return Ok(scope.workspace_volume.clone());
    }
    if path.starts_with(&format!("{}/", scope.workspace)) {
        // API 1.41 has no volume subpath (1.45's VolumeOptions.Subpath); a bind of the volume's
        // directory on the host would follow symlinks a step can plant, out of the workspace.
        return Err(Denial::Refused(format!(
            "builder: a bind of {source:?}, a directory under {0}, cannot be mounted: the \
             engine (API 1.41) cannot mount part of a volume; bind {0} itself (`-v {0}:/src`) \
             and use the directory under it (`-w /src/…`)",
            scope.workspace
        )));
    }
    if scope.trusted {
        return Ok(source.to_string());
    }
    Err(refused(&format!(
        "the host path {source:?} (docker run -v, HostConfig.Binds or Mounts of type bind); \
         only {} can be bound, and becomes the build's workspace",
        scope.workspace
    )))
}

/// One of `HostConfig.Mounts`, judged as a bind's source is.
fn judge_mount(mount: &mut Value, scope: &Scope, named: &mut Named) -> Result<(), Denial> {
    let Some(mount) = mount.as_object_mut() else {
        return Err(Denial::Invalid("a mount is not an object".into()));
    };
    let kind = mount
        .get("Type")
        .and_then(Value::as_str)
        .unwrap_or("volume");
    let source = mount
        .get("Source")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    match kind {
        "bind" => {
            let judged = judge_source(&source, scope, named)?;
            if judged == scope.workspace_volume {
                mount.insert("Type".into(), Value::from("volume"));
                mount.insert("Source".into(), Value::from(judged));
                mount.remove("BindOptions");
            }
        }
        "volume" => {
            let options = mount
                .get("VolumeOptions")
                .and_then(|o| o.pointer("/DriverConfig/Options"));
            if !scope.trusted && nonempty(options) {
                return Err(refused(
                    "volume driver options (docker run --mount volume-opt=…), which can bind \
                     host paths",
                ));
            }
            if !source.is_empty() {
                named.volumes.push(source);
            }
        }
        "tmpfs" => {}
        other if !scope.trusted => {
            return Err(refused(&format!("mounts of type {other:?}")));
        }
        _ => {}
    }
    Ok(())
}

/// A create-network body judged for the build: its label set, only the bridge driver.
pub fn judge_network(body: &mut Value, scope: &Scope) -> Result<(), Denial> {
    label(body, "Labels", scope)?;
    let driver = body.get("Driver").and_then(Value::as_str).unwrap_or("");
    if !scope.trusted && !matches!(driver, "" | "bridge") {
        return Err(refused(&format!(
            "the network driver {driver:?} (docker network create --driver); bridge networks \
             are allowed"
        )));
    }
    Ok(())
}

/// A create-volume body judged for the build: its label set, the local driver without
/// options (`type=none,o=bind,device=/` would bind a host path).
pub fn judge_volume(body: &mut Value, scope: &Scope) -> Result<(), Denial> {
    label(body, "Labels", scope)?;
    let driver = body.get("Driver").and_then(Value::as_str).unwrap_or("");
    if !scope.trusted && (!matches!(driver, "" | "local") || nonempty(body.get("DriverOpts"))) {
        return Err(refused(
            "volume drivers and driver options (docker volume create --driver, --opt), which \
             can bind host paths",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::runtime::{RegistryAuth, RuntimeError};

    struct Anonymous;

    #[async_trait::async_trait]
    impl Credentials for Anonymous {
        async fn auth(&self, _: &str) -> Result<Option<RegistryAuth>, RuntimeError> {
            Ok(None)
        }
    }

    fn scope(trusted: bool) -> Scope {
        Scope {
            build: "b1".into(),
            network: "builder-b1-network".into(),
            workspace: "/workspace".into(),
            workspace_volume: "builder-b1-workspace".into(),
            trusted,
            aliases: Aliases::default(),
            credentials: Arc::new(Anonymous),
        }
    }

    #[test]
    fn version_prefixes_are_only_stripped_for_matching() {
        assert_eq!(api_path("/v1.41/containers/json"), "/containers/json");
        assert_eq!(api_path("/containers/json"), "/containers/json");
        assert_eq!(api_path("/volumes/x"), "/volumes/x");
        assert_eq!(api_path("/v1.41"), "");
    }

    #[test]
    fn label_filters_add_to_the_users() {
        let query = with_label_filter(
            Some("all=1&filters=%7B%22label%22%3A%5B%22a%3Db%22%5D%7D"),
            "builder.build=b1",
        )
        .unwrap();
        let filters = query_value(Some(&query), "filters").unwrap();
        assert_eq!(filters, r#"{"label":["a=b","builder.build=b1"]}"#);
        assert_eq!(query_value(Some(&query), "all").as_deref(), Some("1"));
        let old = with_label_filter(
            Some("filters=%7B%22label%22%3A%7B%22a%22%3Atrue%7D%7D"),
            "l=1",
        )
        .unwrap();
        assert_eq!(
            query_value(Some(&old), "filters").unwrap(),
            r#"{"label":{"a":true,"l=1":true}}"#
        );
        assert!(with_label_filter(Some("filters=nope"), "l").is_err());
    }

    #[test]
    fn containers_get_the_build_label_workspace_and_network() {
        let mut body = json!({
            "Image": "x",
            "Labels": {"builder.build": "other", "mine": "1"},
            "HostConfig": {
                "Binds": ["/workspace:/src:ro", "cache:/cache"],
                "Mounts": [{"Type": "bind", "Source": "/workspace/", "Target": "/w"}],
                "NetworkMode": "cloudbuild",
            },
            "NetworkingConfig": {"EndpointsConfig": {"cloudbuild": {"Aliases": ["db"]}}},
        });
        let named = judge_container(&mut body, &scope(false)).unwrap();
        assert_eq!(body["Labels"], json!({"builder.build": "b1", "mine": "1"}));
        assert_eq!(
            body["HostConfig"]["Binds"],
            json!(["builder-b1-workspace:/src:ro", "cache:/cache"])
        );
        assert_eq!(body["HostConfig"]["Mounts"][0]["Type"], "volume");
        assert_eq!(
            body["HostConfig"]["Mounts"][0]["Source"],
            "builder-b1-workspace"
        );
        assert_eq!(body["HostConfig"]["NetworkMode"], "builder-b1-network");
        assert_eq!(
            body["NetworkingConfig"]["EndpointsConfig"],
            json!({"builder-b1-network": {"Aliases": ["db"]}})
        );
        assert_eq!(
            named,
            Named {
                volumes: vec!["cache".into()],
                ..Named::default()
            }
        );
    }

    #[test]
    fn what_reaches_the_host_is_refused_unless_trusted() {
        let cases = [
            (json!({"HostConfig": {"Privileged": true}}), "--privileged"),
            (
                json!({"HostConfig": {"Binds": ["/:/h"]}}),
                "host path \"/\"",
            ),
            (
                json!({"HostConfig": {"Mounts": [{"Type": "bind", "Source": "/etc", "Target": "/e"}]}}),
                "host path \"/etc\"",
            ),
            (
                json!({"HostConfig": {"NetworkMode": "host"}}),
                "--network host",
            ),
            (json!({"HostConfig": {"PidMode": "host"}}), "--pid host"),
            (json!({"HostConfig": {"IpcMode": "host"}}), "--ipc host"),
            (json!({"HostConfig": {"UTSMode": "host"}}), "--uts host"),
            (
                json!({"HostConfig": {"Devices": [{"PathOnHost": "/dev/sda"}]}}),
                "--device",
            ),
            (
                json!({"HostConfig": {"CapAdd": ["SYS_ADMIN"]}}),
                "--cap-add",
            ),
            (
                json!({"HostConfig": {"SecurityOpt": ["seccomp=unconfined"]}}),
                "seccomp=unconfined",
            ),
            (
                json!({"HostConfig": {"SecurityOpt": ["apparmor:unconfined"]}}),
                "apparmor:unconfined",
            ),
        ];
        for (body, words) in cases {
            let mut refused_body = body.clone();
            match judge_container(&mut refused_body, &scope(false)) {
                Err(Denial::Refused(message)) => {
                    assert!(message.contains(words), "{message}");
                    assert!(message.contains("trusted: true"), "{message}");
                }
                other => panic!("{body} was {other:?}"),
            }
            let mut trusted_body = body.clone();
            assert!(
                judge_container(&mut trusted_body, &scope(true)).is_ok(),
                "{body}"
            );
        }
    }

    #[test]
    fn paths_under_the_workspace_are_refused_with_the_way_out() {
        let mut body = json!({"HostConfig": {"Binds": ["/workspace/sub:/x"]}});
        let Err(Denial::Refused(message)) = judge_container(&mut body, &scope(true)) else {
            panic!("not refused");
        };
        assert!(message.contains("-v /workspace:/src"), "{message}");
    }

    #[test]
    fn other_containers_and_networks_named_are_checked() {
        let mut body = json!({"HostConfig": {
            "NetworkMode": "theirs",
            "PidMode": "container:db",
            "VolumesFrom": ["data:ro"],
            "Links": ["/web:web"],
        }});
        let named = judge_container(&mut body, &scope(false)).unwrap();
        assert_eq!(named.containers, ["db", "data", "web"]);
        assert_eq!(named.networks, ["theirs"]);
    }

    #[test]
    fn volumes_and_networks_get_the_label_and_lose_host_reach() {
        let mut volume = json!({"Name": "v", "Labels": null});
        judge_volume(&mut volume, &scope(false)).unwrap();
        assert_eq!(volume["Labels"], json!({"builder.build": "b1"}));
        let mut bound =
            json!({"Name": "v", "DriverOpts": {"type": "none", "o": "bind", "device": "/"}});
        assert!(matches!(
            judge_volume(&mut bound, &scope(false)),
            Err(Denial::Refused(_))
        ));
        let mut network = json!({"Name": "n", "Driver": "macvlan"});
        assert!(matches!(
            judge_network(&mut network, &scope(false)),
            Err(Denial::Refused(_))
        ));
        assert_eq!(network["Labels"], json!({"builder.build": "b1"}));
    }
}
