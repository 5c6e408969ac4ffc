//! The web console of `builder serve`, at `/`: server-rendered pages over the same [`Service`]
//! calls as the JSON API (builds, a build and its live log, triggers, schedules, deliveries,
//! workers, notifications) and forms for its actions. Handlers translate between HTTP and the
//! service; [`pages`] renders, escaping every value by construction. The one script,
//! `console.js`, follows logs over the API's server-sent events and refreshes the parts of a page
//! that are still running.
//!
//! Actions need the API token: the login form takes it and opens a session, a cookie that
//! expires (`core::access::SessionKey`: never the token itself), that scripts cannot read
//! (`HttpOnly`), that other sites' pages never send (`SameSite=Strict`, which is also what stops
//! cross-site form posts) and that travels only over TLS when the server speaks it (`Secure`).
//! Failed logins are throttled per client (429 with `Retry-After`). Every response carries a
//! Content-Security-Policy that allows nothing but this server's own script and style.

use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Form, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::{Access, Client, Served};
use crate::core::build::{Decision, Status};
use crate::core::substitute::Values;
use crate::pipeline::service::{BuildQuery, Failed, ManualRun, Service};

mod pages;

/// The cookie that carries a session after logging in.
const SESSION_COOKIE: &str = "builder_session";
/// Builds on one page of the list.
const PAGE_SIZE: u32 = 50;
/// Recent builds shown on a trigger's page.
const RECENT_BUILDS: u32 = 10;
const DELIVERIES_SHOWN: u32 = 100;
const NOTIFICATIONS_SHOWN: u32 = 100;
/// The newest retention passes the deliveries page shows.
const RETENTION_PASSES_SHOWN: u32 = 5;

const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

/// The console's routes, with the security headers on every response.
pub(super) fn router() -> Router<Served> {
    Router::new()
        .route("/", get(builds))
        .route("/builds/{id}", get(build))
        .route("/builds/{id}/cancel", post(cancel))
        .route("/builds/{id}/retry", post(retry))
        .route("/builds/{id}/approve", post(decide::<true>))
        .route("/builds/{id}/reject", post(decide::<false>))
        .route("/triggers", get(triggers))
        .route("/triggers/{name}", get(trigger))
        .route("/triggers/{name}/run", post(run_trigger))
        .route("/schedules", get(schedules))
        .route("/schedules/{name}", get(schedule))
        .route("/schedules/{name}/{action}", post(schedule_action))
        .route("/deliveries", get(deliveries))
        .route("/workers", get(workers))
        .route("/notifications", get(notifications))
        .route("/templates", get(templates))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/assets/console.css", get(stylesheet))
        .route("/assets/console.js", get(script))
        .layer(axum::middleware::map_response(secure))
}

async fn secure(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let set = |headers: &mut HeaderMap, name, value| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        CONTENT_SECURITY_POLICY,
    );
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::REFERRER_POLICY, "same-origin");
    response
}

async fn stylesheet() -> impl IntoResponse {
    let css = include_str!("console.css");
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], css)
}

async fn script() -> impl IntoResponse {
    let js = include_str!("console.js");
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        js,
    )
}

/// The session cookie's value, if the request carries one.
pub(super) fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|cookies| cookies.split(';'))
        .find_map(|cookie| {
            let (name, value) = cookie.trim().split_once('=')?;
            (name == SESSION_COOKIE).then(|| value.to_string())
        })
}

/// Who is asking: whether they logged in with the API token, and the page they asked for.
struct Visitor {
    logged_in: bool,
    path: String,
    /// The request came from one of this server's pages (or says nothing of where it came from).
    same_origin: bool,
}

impl Visitor {
    fn of(access: &Access, headers: &HeaderMap, path: String) -> Self {
        Visitor {
            logged_in: access.in_session(headers),
            path,
            same_origin: same_origin(headers),
        }
    }

    fn to_login(&self) -> Redirect {
        Redirect::to(&format!("/login?next={}", url_encode(&self.path)))
    }
}

/// A visitor who may read the page asked for; others are sent to the login form first.
struct Reader(Visitor);

impl FromRequestParts<Served> for Reader {
    type Rejection = Redirect;

    async fn from_request_parts(parts: &mut Parts, served: &Served) -> Result<Self, Redirect> {
        let page = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let visitor = Visitor::of(&served.access, &parts.headers, page.to_string());
        if visitor.logged_in || !served.access.reads_need_token {
            Ok(Reader(visitor))
        } else {
            Err(visitor.to_login())
        }
    }
}

/// A visitor who may act; others are sent to the login form first, to come back to the page
/// the action belongs to (`/builds/ID` for `/builds/ID/cancel`). A form posted from another
/// origin (another port of this host, a sibling subdomain: `SameSite` lets those through)
/// never acts.
struct Actor(Visitor);

impl FromRequestParts<Served> for Actor {
    type Rejection = Redirect;

    async fn from_request_parts(parts: &mut Parts, served: &Served) -> Result<Self, Redirect> {
        let action = parts.uri.path();
        let page = action.rsplit_once('/').map_or("/", |(page, _)| page);
        let visitor = Visitor::of(&served.access, &parts.headers, page.to_string());
        if visitor.logged_in && visitor.same_origin {
            Ok(Actor(visitor))
        } else {
            Err(visitor.to_login())
        }
    }
}

/// A page, or the page that says what went wrong.
fn page(visitor: &Visitor, result: Result<maud::Markup, Failed>) -> Response {
    match result {
        Ok(markup) => markup.into_response(),
        Err(failed) => problem(visitor, failed),
    }
}

fn problem(visitor: &Visitor, failed: Failed) -> Response {
    let page = pages::problem(visitor, &failed.to_string());
    (super::status_of(&failed), page).into_response()
}

/// After an action: on to `location` (the action's page if `None`), or the page that says why
/// it failed.
fn then_to(visitor: &Visitor, result: Result<Option<String>, Failed>) -> Response {
    match result {
        Ok(location) => Redirect::to(location.as_deref().unwrap_or(&visitor.path)).into_response(),
        Err(failed) => problem(visitor, failed),
    }
}

/// The builds list's filters, as its form sends them (empty fields are no filter).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct BuildFilter {
    #[serde(default)]
    status: String,
    #[serde(default)]
    trigger: String,
    #[serde(default)]
    branch: String,
    #[serde(default)]
    before: String,
}

impl BuildFilter {
    fn query(&self) -> Result<BuildQuery, Failed> {
        let given = |value: &String| Some(value.trim().to_string()).filter(|v| !v.is_empty());
        let status = match given(&self.status) {
            Some(status) => Some(
                Status::parse(&status)
                    .ok_or_else(|| Failed::Invalid(format!("no such status: {status}")))?,
            ),
            None => None,
        };
        Ok(BuildQuery {
            status,
            trigger: given(&self.trigger),
            branch: given(&self.branch),
            before: given(&self.before),
            // One more than a page tells whether there is a next page.
            limit: PAGE_SIZE + 1,
            ..BuildQuery::default()
        })
    }

    /// The list's address with these filters and `before` for paging.
    fn link(&self, before: Option<&str>) -> String {
        let pairs = [
            ("status", self.status.as_str()),
            ("trigger", self.trigger.as_str()),
            ("branch", self.branch.as_str()),
            ("before", before.unwrap_or_default()),
        ];
        let query: Vec<String> = pairs
            .iter()
            .filter(|(_, value)| !value.is_empty())
            .map(|(name, value)| format!("{name}={}", url_encode(value)))
            .collect();
        if query.is_empty() {
            "/".into()
        } else {
            format!("/?{}", query.join("&"))
        }
    }
}

async fn builds(
    State(service): State<Arc<Service>>,
    Reader(visitor): Reader,
    Query(filter): Query<BuildFilter>,
) -> Response {
    let result = async {
        let mut builds = service.builds(&filter.query()?).await?;
        let older = (builds.len() > PAGE_SIZE as usize).then(|| {
            builds.truncate(PAGE_SIZE as usize);
            filter.link(builds.last().map(|b| b.id.as_str()))
        });
        let triggers: Vec<String> = service.triggers().iter().map(|t| t.name.clone()).collect();
        Ok(pages::builds(&visitor, &filter, &triggers, &builds, older))
    }
    .await;
    page(&visitor, result)
}

async fn build(
    State(service): State<Arc<Service>>,
    Reader(visitor): Reader,
    Path(id): Path<String>,
) -> Response {
    let result = service.build(&id).await.map(|b| pages::build(&visitor, &b));
    page(&visitor, result)
}

async fn cancel(
    State(service): State<Arc<Service>>,
    Actor(visitor): Actor,
    Path(id): Path<String>,
) -> Response {
    then_to(&visitor, service.cancel(&id).await.map(|()| None))
}

async fn retry(
    State(service): State<Arc<Service>>,
    Actor(visitor): Actor,
    Path(id): Path<String>,
) -> Response {
    let retried = service.retry(&id).await;
    then_to(&visitor, retried.map(|id| Some(format!("/builds/{id}"))))
}

/// The approver of a decision made on the console: a session opened with the API token, which
/// has no name of its own.
const CONSOLE_APPROVER: &str = "console";

/// The approval form's comment.
#[derive(Deserialize)]
struct DecisionForm {
    #[serde(default)]
    comment: String,
}

/// Approves (`APPROVED`) or rejects a PENDING build.
async fn decide<const APPROVED: bool>(
    State(service): State<Arc<Service>>,
    Actor(visitor): Actor,
    Path(id): Path<String>,
    Form(form): Form<DecisionForm>,
) -> Response {
    let decision = if APPROVED {
        Decision::Approved
    } else {
        Decision::Rejected
    };
    let decided = service
        .decide_approval(&id, decision, CONSOLE_APPROVER, Some(form.comment))
        .await;
    then_to(&visitor, decided.map(|_| None))
}

async fn triggers(State(service): State<Arc<Service>>, Reader(visitor): Reader) -> Response {
    let triggers: Vec<_> = service.triggers().iter().map(|t| t.summary()).collect();
    pages::triggers(&visitor, &triggers).into_response()
}

async fn trigger(
    State(service): State<Arc<Service>>,
    Reader(visitor): Reader,
    Path(name): Path<String>,
) -> Response {
    let result = async {
        let trigger = service.trigger(&name)?.summary();
        let query = BuildQuery {
            trigger: Some(name.clone()),
            limit: RECENT_BUILDS,
            ..BuildQuery::default()
        };
        let builds = service.builds(&query).await?;
        Ok(pages::trigger(&visitor, &trigger, &builds))
    }
    .await;
    page(&visitor, result)
}

/// The run form of a trigger's page.
#[derive(Deserialize)]
struct RunForm {
    /// `branch`, `tag` or `commit`.
    kind: String,
    value: String,
    /// `KEY=VALUE` lines.
    #[serde(default)]
    substitutions: String,
}

impl RunForm {
    fn run(self) -> Result<ManualRun, Failed> {
        let mut substitutions = Values::new();
        for line in self.substitutions.lines().filter(|l| !l.trim().is_empty()) {
            let (key, value) = line.split_once('=').ok_or_else(|| {
                Failed::Invalid(format!("substitution {line:?}: expected KEY=VALUE"))
            })?;
            substitutions.insert(key.trim().to_string(), value.to_string());
        }
        let value = Some(self.value.trim().to_string());
        let mut run = ManualRun {
            substitutions,
            ..ManualRun::default()
        };
        match self.kind.as_str() {
            "branch" => run.branch = value,
            "tag" => run.tag = value,
            "commit" => run.commit = value,
            other => return Err(Failed::Invalid(format!("no such kind of run: {other}"))),
        }
        Ok(run)
    }
}

async fn run_trigger(
    State(service): State<Arc<Service>>,
    Actor(visitor): Actor,
    Path(name): Path<String>,
    Form(form): Form<RunForm>,
) -> Response {
    let result = match form.run() {
        Ok(run) => service.run_trigger(&name, run).await,
        Err(failed) => Err(failed),
    };
    then_to(&visitor, result.map(|id| Some(format!("/builds/{id}"))))
}

async fn schedules(State(service): State<Arc<Service>>, Reader(visitor): Reader) -> Response {
    let result = service.schedules().await;
    page(&visitor, result.map(|s| pages::schedules(&visitor, &s)))
}

async fn schedule(
    State(service): State<Arc<Service>>,
    Reader(visitor): Reader,
    Path(name): Path<String>,
) -> Response {
    let result = service.schedule(&name).await;
    page(&visitor, result.map(|s| pages::schedule(&visitor, &s)))
}

/// `run`, `pause` or `resume` a schedule.
async fn schedule_action(
    State(service): State<Arc<Service>>,
    Actor(visitor): Actor,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    let result = match action.as_str() {
        "run" => service
            .run_schedule(&name)
            .await
            .map(|id| Some(format!("/builds/{id}"))),
        "pause" | "resume" => service
            .pause_schedule(&name, action == "pause")
            .await
            .map(|_| None),
        _ => Err(Failed::NotFound(format!("no such action: {action}"))),
    };
    then_to(&visitor, result)
}

async fn deliveries(State(service): State<Arc<Service>>, Reader(visitor): Reader) -> Response {
    let result = async {
        let deliveries = service.deliveries(DELIVERIES_SHOWN).await?;
        let passes = service.retention_passes(RETENTION_PASSES_SHOWN).await?;
        Ok(pages::deliveries(&visitor, &deliveries, &passes))
    };
    page(&visitor, result.await)
}

async fn workers(State(service): State<Arc<Service>>, Reader(visitor): Reader) -> Response {
    let result = service.workers().await;
    page(&visitor, result.map(|w| pages::workers(&visitor, &w)))
}

async fn notifications(State(service): State<Arc<Service>>, Reader(visitor): Reader) -> Response {
    let result = service.notifications(NOTIFICATIONS_SHOWN).await;
    page(&visitor, result.map(|n| pages::notifications(&visitor, &n)))
}

async fn templates(State(service): State<Arc<Service>>, Reader(visitor): Reader) -> Response {
    let result = service.kfp_catalog().await;
    page(&visitor, result.map(|l| pages::templates(&visitor, &l)))
}

#[derive(Deserialize)]
struct Next {
    #[serde(default)]
    next: String,
}

impl Next {
    /// Where to go after logging in: a path of this server, never another site.
    fn path(&self) -> String {
        // Browsers read `\` as `/` and drop tabs and newlines: `/\host` is `//host`.
        let odd = |c: char| c == '\\' || c.is_whitespace() || c.is_control();
        let local = self.next.starts_with('/')
            && !self.next.starts_with("//")
            && !self.next.chars().any(odd);
        if local { self.next.clone() } else { "/".into() }
    }
}

async fn login_form(
    State(access): State<Arc<Access>>,
    headers: HeaderMap,
    Query(next): Query<Next>,
) -> Response {
    let visitor = Visitor::of(&access, &headers, next.path());
    pages::login(&visitor, None).into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
    #[serde(flatten)]
    next: Next,
}

async fn login(
    State(access): State<Arc<Access>>,
    ConnectInfo(Client(client)): ConnectInfo<Client>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let visitor = Visitor::of(&access, &headers, form.next.path());
    if let Err(wait) = access.login_allowed(client) {
        // Whole seconds, rounded up: a client that waits as told is let in.
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let message = format!("Too many wrong tokens from your address: try again in {seconds} s.");
        let page = pages::login(&visitor, Some(&message));
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, seconds.to_string())],
            page,
        )
            .into_response();
    }
    let right = access.authorizes(form.token.trim());
    access.login_tried(client, right);
    let session = right.then(|| access.open_session()).flatten();
    let Some((session, lifetime)) = session else {
        let page = pages::login(&visitor, Some("That is not the server's API token."));
        return (StatusCode::UNAUTHORIZED, page).into_response();
    };
    let cookie = session_cookie_header(&access, &session, lifetime.as_secs());
    ([(header::SET_COOKIE, cookie)], Redirect::to(&visitor.path)).into_response()
}

/// Ends the session in this browser. Sessions are stateless (`core::access::SessionKey`): a
/// copy of the cookie taken before stays valid until it expires, or until the token changes.
async fn logout(State(access): State<Arc<Access>>) -> Response {
    let cookie = session_cookie_header(&access, "", 0);
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}

/// A `Set-Cookie` value for the session cookie: `value` for `max_age` seconds (0: removed).
fn session_cookie_header(access: &Access, value: &str, max_age: u64) -> String {
    let secure = if access.secure { "; Secure" } else { "" };
    format!(
        "{SESSION_COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
    )
}

/// Whether a request's `Origin`, which browsers send with every form post, is this server.
fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    match (text(header::ORIGIN), text(header::HOST)) {
        (None, _) => true,
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_some_and(|(_, authority)| authority == host),
        (Some(_), None) => false,
    }
}

/// Percent-encodes everything but unreserved characters, for a query value or a path segment.
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        let value = format!("a=1; {SESSION_COOKIE}=v1.9.x-y_z; b=2");
        headers.insert(header::COOKIE, value.parse().unwrap());
        assert_eq!(session_cookie(&headers).as_deref(), Some("v1.9.x-y_z"));
        assert_eq!(session_cookie(&HeaderMap::new()), None);
    }

    #[test]
    fn logging_in_never_sends_elsewhere() {
        let next = |next: &str| Next { next: next.into() }.path();
        assert_eq!(next("/builds/1?x=2"), "/builds/1?x=2");
        assert_eq!(next("//evil.example/"), "/");
        assert_eq!(next("https://evil.example/"), "/");
        assert_eq!(next("/\\evil.example"), "/");
        assert_eq!(next("/\t/evil.example"), "/");
    }

    #[test]
    fn forms_act_only_from_this_origin() {
        let headers = |origin: Option<&str>| {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, "127.0.0.1:8080".parse().unwrap());
            if let Some(origin) = origin {
                headers.insert(header::ORIGIN, origin.parse().unwrap());
            }
            headers
        };
        assert!(same_origin(&headers(Some("http://127.0.0.1:8080"))));
        assert!(same_origin(&headers(None)));
        assert!(!same_origin(&headers(Some("http://127.0.0.1:9090"))));
        assert!(!same_origin(&headers(Some("null"))));
    }

    #[test]
    fn filters_link_back_to_themselves() {
        let filter = BuildFilter {
            branch: "feature/<x> & y".into(),
            status: "FAILURE".into(),
            ..BuildFilter::default()
        };
        assert_eq!(
            filter.link(Some("abc")),
            "/?status=FAILURE&branch=feature%2F%3Cx%3E%20%26%20y&before=abc"
        );
        assert_eq!(BuildFilter::default().link(None), "/");
        assert!(matches!(
            BuildFilter {
                status: "DONE".into(),
                ..BuildFilter::default()
            }
            .query(),
            Err(Failed::Invalid(_))
        ));
    }

    #[test]
    fn a_run_form_is_a_manual_run() {
        let form = RunForm {
            kind: "tag".into(),
            value: " v1.2 ".into(),
            substitutions: "_A=1\n\n_B = x=y\n".into(),
        };
        let run = form.run().unwrap();
        assert_eq!(run.tag.as_deref(), Some("v1.2"));
        assert_eq!(run.substitutions["_A"], "1");
        assert_eq!(run.substitutions["_B"], " x=y");
        let bad = RunForm {
            kind: "branch".into(),
            value: "main".into(),
            substitutions: "_A".into(),
        };
        assert!(matches!(bad.run(), Err(Failed::Invalid(_))));
    }
}
