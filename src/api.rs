//! The HTTP face of `builder serve` (axum): `POST /webhooks/github` and the JSON API under `/v1`.
//! Handlers only translate between HTTP and [`Service`] calls: status codes, headers, bodies.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use crate::service::{Incoming, Receipt, Rejection, Service};

/// GitHub caps webhook payloads at 25 MB.
const MAX_DELIVERY: usize = 25 * 1024 * 1024;

/// Serves on `listener` until `shutdown` resolves, finishing the requests in flight.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: Arc<Service>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(service))
        .with_graceful_shutdown(shutdown)
        .await
}

fn router(service: Arc<Service>) -> Router {
    Router::new()
        .route("/webhooks/github", post(github_delivery))
        .layer(DefaultBodyLimit::max(MAX_DELIVERY))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/v1/builds", get(list_builds))
        .route("/v1/builds/{id}", get(get_build))
        .route("/v1/builds/{id}/log", get(build_log))
        .route("/v1/deliveries", get(list_deliveries))
        .route("/v1/triggers", get(list_triggers))
        .with_state(service)
}

async fn github_delivery(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let incoming = Incoming {
        event: header("X-GitHub-Event"),
        delivery: header("X-GitHub-Delivery"),
        signature: header(crate::webhooks::SIGNATURE_HEADER),
        body: &body,
    };
    match service.receive(incoming).await {
        Ok(receipt @ Receipt::Accepted { .. }) => {
            (StatusCode::ACCEPTED, axum::Json(receipt)).into_response()
        }
        Ok(receipt) => (StatusCode::OK, axum::Json(receipt)).into_response(),
        Err(rejection) => {
            let status = match rejection {
                Rejection::Unauthorized(_) => StatusCode::UNAUTHORIZED,
                Rejection::BadRequest(_) => StatusCode::BAD_REQUEST,
                Rejection::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            error(status, rejection.to_string())
        }
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = json!({"error": {"code": status.as_u16(), "message": message.into()}});
    (status, axum::Json(body)).into_response()
}

fn internal(e: impl std::fmt::Display) -> Response {
    error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

#[derive(Deserialize)]
struct Page {
    #[serde(default = "default_limit")]
    limit: u32,
}

fn default_limit() -> u32 {
    50
}

async fn list_builds(State(service): State<Arc<Service>>, Query(page): Query<Page>) -> Response {
    match service.store().list_builds(page.limit).await {
        Ok(builds) => axum::Json(json!({ "builds": builds })).into_response(),
        Err(e) => internal(e),
    }
}

async fn get_build(State(service): State<Arc<Service>>, Path(id): Path<String>) -> Response {
    match service.store().get_build(&id).await {
        Ok(Some(build)) => axum::Json(build).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no build {id:?}")),
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
struct After {
    #[serde(default)]
    after: i64,
}

async fn build_log(
    State(service): State<Arc<Service>>,
    Path(id): Path<String>,
    Query(after): Query<After>,
) -> Response {
    match service.store().logs(&id, after.after).await {
        Ok(lines) => {
            let lines: Vec<_> = lines
                .into_iter()
                .map(|l| json!({"seq": l.seq, "step": l.step, "text": l.text}))
                .collect();
            axum::Json(json!({ "lines": lines })).into_response()
        }
        Err(e) => internal(e),
    }
}

async fn list_deliveries(
    State(service): State<Arc<Service>>,
    Query(page): Query<Page>,
) -> Response {
    match service.store().list_deliveries(page.limit).await {
        Ok(deliveries) => axum::Json(json!({ "deliveries": deliveries })).into_response(),
        Err(e) => internal(e),
    }
}

async fn list_triggers(State(service): State<Arc<Service>>) -> Response {
    let triggers: Vec<_> = service
        .triggers()
        .iter()
        .map(|t| json!({"name": t.name, "description": t.description, "disabled": t.disabled}))
        .collect();
    axum::Json(json!({ "triggers": triggers })).into_response()
}
