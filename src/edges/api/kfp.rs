//! The KFP registry API under `/kfp/{project}/{repository}`: the URLs, methods and bodies of the
//! `kfp` SDK's default registry context (`kfp/registry/context/default_pkg_dev.json`), which
//! `RegistryClient(host="http://SERVER/kfp/PROJECT/REPOSITORY", auth=ApiAuth(TOKEN))` uses for
//! any host that is not Artifact Registry. Reads follow the server's read policy; writes need
//! the API token as a bearer token. A refusal's message is in the JSON body and also in the
//! status line, because `requests`' `HTTPError`, all the SDK shows, quotes only the status line.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::{Served, bearer_token, error, status_of};
use crate::core::kfp::{self, Done, TagRequest};
use crate::core::templates::MAX_FILE_BYTES;
use crate::pipeline::service::{Failed, KfpRepository};

/// Room for the form's boundaries and headers around a template of the largest size, so that a
/// file just over it is refused with the template limit's message rather than the body's.
const FORM_OVERHEAD: u64 = 1 << 20;
/// What a delete answers; `delete_package` and `delete_version` read `done`.
const DONE: Done = Done { done: true };
/// The longest message a status line carries; the body has all of it.
const REASON_LENGTH: usize = 400;

pub(super) fn router() -> Router<Served> {
    let limit = usize::try_from(MAX_FILE_BYTES + FORM_OVERHEAD).unwrap_or(usize::MAX);
    Router::new()
        .route(
            "/kfp/{project}/{repository}",
            post(upload).layer(DefaultBodyLimit::max(limit)),
        )
        .route("/kfp/{project}/{repository}/packages", get(list_packages))
        .route(
            "/kfp/{project}/{repository}/packages/{package}",
            get(get_package).delete(delete_package),
        )
        .route(
            "/kfp/{project}/{repository}/packages/{package}/versions",
            get(list_versions),
        )
        .route(
            "/kfp/{project}/{repository}/packages/{package}/versions/{version}",
            get(get_version).delete(delete_version),
        )
        .route(
            "/kfp/{project}/{repository}/packages/{package}/tags",
            get(list_tags).post(create_tag),
        )
        .route(
            "/kfp/{project}/{repository}/packages/{package}/tags/{tag}",
            get(get_tag).patch(update_tag).delete(delete_tag),
        )
        .route(
            "/kfp/{project}/{repository}/{package}/{reference}",
            get(download),
        )
}

/// A refusal with its message in the status line too.
fn refuse(status: StatusCode, message: &str) -> Response {
    let mut response = error(status, message);
    let reason: String = message
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { ' ' })
        .take(REASON_LENGTH)
        .collect();
    if let Ok(reason) = hyper::ext::ReasonPhrase::try_from(reason.into_bytes()) {
        response.extensions_mut().insert(reason);
    }
    response
}

/// A refusal decided before the service is asked: who may do what, a malformed body.
struct Refused(StatusCode, String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        refuse(self.0, &self.1)
    }
}

fn failed(failed: Failed) -> Response {
    refuse(status_of(&failed), &failed.to_string())
}

fn json<T: serde::Serialize>(result: Result<T, Failed>) -> Response {
    match result {
        Ok(value) => axum::Json(value).into_response(),
        Err(e) => failed(e),
    }
}

/// The repository a read names, if the server's read policy lets the request read (the
/// console's session counts, for its download links).
struct Reading(KfpRepository);

/// The repository a write names, if the request carries the API token.
struct Writing(KfpRepository);

impl FromRequestParts<Served> for Reading {
    type Rejection = Refused;

    async fn from_request_parts(parts: &mut Parts, served: &Served) -> Result<Self, Refused> {
        if !served.access.may_read(&parts.headers) {
            return Err(Refused(
                StatusCode::UNAUTHORIZED,
                "reading needs the API token on this server: RegistryClient(host, \
                 auth=kfp.registry.ApiAuth(TOKEN))"
                    .into(),
            ));
        }
        repository(parts, served).await.map(Reading)
    }
}

impl FromRequestParts<Served> for Writing {
    type Rejection = Refused;

    async fn from_request_parts(parts: &mut Parts, served: &Served) -> Result<Self, Refused> {
        let token = bearer_token(&parts.headers);
        if !token.is_some_and(|t| served.access.authorizes(&t)) {
            return Err(Refused(
                StatusCode::UNAUTHORIZED,
                "changing a KFP repository needs the API token: RegistryClient(host, \
                 auth=kfp.registry.ApiAuth(TOKEN)), sent as Authorization: Bearer TOKEN"
                    .into(),
            ));
        }
        repository(parts, served).await.map(Writing)
    }
}

/// The parts of a request's path: its repository, and what in it the request is about.
#[derive(Deserialize)]
struct At {
    project: String,
    repository: String,
    #[serde(default)]
    package: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    tag: String,
    #[serde(default)]
    reference: String,
}

async fn repository(parts: &mut Parts, served: &Served) -> Result<KfpRepository, Refused> {
    let Path(at) = Path::<At>::from_request_parts(parts, served)
        .await
        .map_err(|e| Refused(StatusCode::BAD_REQUEST, e.body_text()))?;
    served
        .service
        .kfp(&at.project, &at.repository)
        .map_err(|failed| Refused(status_of(&failed), failed.to_string()))
}

async fn upload(Writing(kfp): Writing, headers: HeaderMap, body: Bytes) -> Response {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let form = match kfp::upload_form(content_type, &body) {
        Ok(form) => form,
        Err(refusal) => return failed(refusal.into()),
    };
    let Some(content) = form.content else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "the upload has no `content` file: upload_pipeline(FILE_NAME, tags=...)",
        );
    };
    match kfp
        .upload(content.into(), form.file_name.as_deref(), &form.tags)
        .await
    {
        // `upload_pipeline` splits this text at its `/`.
        Ok((package, version)) => format!("{package}/{version}").into_response(),
        Err(e) => failed(e),
    }
}

async fn list_packages(Reading(kfp): Reading) -> Response {
    let packages = kfp.packages().await;
    json(packages.map(|packages| serde_json::json!({ "packages": packages })))
}

async fn get_package(Reading(kfp): Reading, Path(at): Path<At>) -> Response {
    json(kfp.package(&at.package).await)
}

async fn delete_package(Writing(kfp): Writing, Path(at): Path<At>) -> Response {
    json(kfp.delete_package(&at.package).await.map(|()| DONE))
}

async fn list_versions(Reading(kfp): Reading, Path(at): Path<At>) -> Response {
    let versions = kfp.versions(&at.package).await;
    json(versions.map(|versions| serde_json::json!({ "versions": versions })))
}

async fn get_version(Reading(kfp): Reading, Path(at): Path<At>) -> Response {
    json(kfp.get_version(&at.package, &at.version).await)
}

async fn delete_version(Writing(kfp): Writing, Path(at): Path<At>) -> Response {
    let deleted = kfp.delete_version(&at.package, &at.version).await;
    json(deleted.map(|()| DONE))
}

async fn list_tags(Reading(kfp): Reading, Path(at): Path<At>) -> Response {
    let tags = kfp.tags(&at.package).await;
    json(tags.map(|tags| serde_json::json!({ "tags": tags })))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateTag {
    tag_id: String,
}

/// The body of a tag request: `{"name": "", "version": "packages/P/versions/sha256:…"}`.
fn tag_request(body: &[u8]) -> Result<TagRequest, Refused> {
    serde_json::from_slice(body).map_err(|e| {
        Refused(
            StatusCode::BAD_REQUEST,
            format!(
                "a tag request is {{\"version\": \"packages/PACKAGE/versions/sha256:...\"}}: {e}"
            ),
        )
    })
}

/// Creating (`tag` from the query) or updating (from the path) a tag.
async fn set_tag(
    kfp: KfpRepository,
    package: &str,
    tag: &str,
    body: &[u8],
    creating: bool,
) -> Response {
    match tag_request(body) {
        Ok(request) => json(kfp.set_tag(package, tag, &request.version, creating).await),
        Err(refused) => refused.into_response(),
    }
}

async fn create_tag(
    Writing(kfp): Writing,
    Path(at): Path<At>,
    Query(query): Query<CreateTag>,
    body: Bytes,
) -> Response {
    set_tag(kfp, &at.package, &query.tag_id, &body, true).await
}

async fn update_tag(Writing(kfp): Writing, Path(at): Path<At>, body: Bytes) -> Response {
    set_tag(kfp, &at.package, &at.tag, &body, false).await
}

async fn get_tag(Reading(kfp): Reading, Path(at): Path<At>) -> Response {
    json(kfp.tag(&at.package, &at.tag).await)
}

async fn delete_tag(Writing(kfp): Writing, Path(at): Path<At>) -> Response {
    json(kfp.delete_tag(&at.package, &at.tag).await.map(|()| DONE))
}

async fn download(Reading(kfp): Reading, Path(at): Path<At>) -> Response {
    match kfp.download(&at.package, &at.reference).await {
        Ok(bytes) => {
            let name = format!(
                "attachment; filename=\"{}_{}.yaml\"",
                at.package,
                at.reference.trim_start_matches(kfp::VERSION_PREFIX)
            );
            (
                [
                    ("content-type", "application/yaml".to_string()),
                    ("content-disposition", name),
                ],
                bytes,
            )
                .into_response()
        }
        Err(e) => failed(e),
    }
}
