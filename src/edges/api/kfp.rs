//! The KFP registry API under `/kfp/{project}/{repository}`: the URLs, methods and bodies of the
//! `kfp` SDK's default registry context (`kfp/registry/context/default_pkg_dev.json`), which
//! `RegistryClient(host="http://SERVER/kfp/PROJECT/REPOSITORY", auth=ApiAuth(TOKEN))` uses for
//! any host that is not Artifact Registry. Reads follow the server's read policy; writes need
//! the API token as a bearer token. A refusal's message is in the JSON body and also in the
//! status line, because `requests`' `HTTPError`, all the SDK shows, quotes only the status line.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::{Access, Served, bearer_token, console, error, status_of};
use crate::core::kfp::{self, Done, TagRequest};
use crate::core::templates::MAX_FILE_BYTES;
use crate::pipeline::service::{Failed, KfpRepository, Service};

/// Room for the form's boundaries and headers around a template of the largest size, so that a
/// file just over it is refused with the template limit's message rather than the body's.
const FORM_OVERHEAD: u64 = 1 << 20;
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

/// The repository a request names, if the request may do what it asks: a write needs the API
/// token, a read what the server's read policy says (the console's session counts, for its
/// download links).
fn repository<'a>(
    service: &'a Service,
    access: &Access,
    headers: &HeaderMap,
    (project, repository): (&str, &str),
    writing: bool,
) -> Result<KfpRepository<'a>, Refused> {
    let token = bearer_token(headers);
    if writing && !token.as_deref().is_some_and(|t| access.authorizes(t)) {
        return Err(Refused(
            StatusCode::UNAUTHORIZED,
            "changing a KFP repository needs the API token: RegistryClient(host, \
             auth=kfp.registry.ApiAuth(TOKEN)), sent as Authorization: Bearer TOKEN"
                .into(),
        ));
    }
    let token = token.or_else(|| console::session_token(headers));
    if !access.may_read(token.as_deref()) {
        return Err(Refused(
            StatusCode::UNAUTHORIZED,
            "reading needs the API token on this server: RegistryClient(host, \
             auth=kfp.registry.ApiAuth(TOKEN))"
                .into(),
        ));
    }
    service
        .kfp(project, repository)
        .map_err(|failed| Refused(status_of(&failed), failed.to_string()))
}

async fn upload(
    State(service): State<Arc<Service>>,
    State(access): State<Arc<Access>>,
    Path((project, repo)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let kfp = match repository(&service, &access, &headers, (&project, &repo), true) {
        Ok(kfp) => kfp,
        Err(refused) => return refused.into_response(),
    };
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

async fn list_packages(
    State(service): State<Arc<Service>>,
    State(access): State<Arc<Access>>,
    Path((project, repo)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    match repository(&service, &access, &headers, (&project, &repo), false) {
        Ok(kfp) => json(
            kfp.packages()
                .await
                .map(|packages| serde_json::json!({ "packages": packages })),
        ),
        Err(refused) => refused.into_response(),
    }
}

async fn get_package(
    State(service): State<Arc<Service>>,
    State(access): State<Arc<Access>>,
    Path((project, repo, package)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    match repository(&service, &access, &headers, (&project, &repo), false) {
        Ok(kfp) => json(kfp.package(&package).await),
        Err(refused) => refused.into_response(),
    }
}

async fn delete_package(
    State(service): State<Arc<Service>>,
    State(access): State<Arc<Access>>,
    Path((project, repo, package)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    match repository(&service, &access, &headers, (&project, &repo), true) {
        Ok(kfp) => json(
            kfp.delete_package(&package)
                .await
                .map(|()| Done { done: true }),
        ),
        Err(refused) => refused.into_response(),
    }
}

async fn list_versions(
    State(service): State<Arc<Service>>,
    State(access): State<Arc<Access>>,
    Path((project, repo, package)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    match repository(&service, &access, &headers, (&project, &repo), false) {
        Ok(kfp) => json(
            kfp.versions(&package)
                .await
                .map(|versions| serde_json::json!({ "versions": versions })),
        ),
        Err(refused) => refused.into_response(),
    }
}

async fn get_version(
    State(service): State<Arc<Service>>,
    State(access): State<Arc<Access>>,
    Path((project, repo, package, version)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    match repository(&service, &access, &headers, (&project, &repo), false) {
        Ok(kfp) => json(kfp.get_version(&package, &version).await),
        Err(refused) => refused.into_response(),
    }
}

async fn delete_version(
    State(service): State<Arc<Service>>,
    State(access): State<Arc<Access>>,
    Path((project, repo, package, version)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    match repository(&service, &access, &headers, (&project, &repo), true) {
        Ok(kfp) => json(
            kfp.delete_version(&package, &version)
                .await
                .map(|()| Done { done: true }),
        ),
        Err(refused) => refused.into_response(),
    }
}

async fn list_tags(
    State(service): State<Arc<Service>>,
    State(access): State<Arc<Access>>,
    Path((project, repo, package)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    match repository(&service, &access, &headers, (&project, &repo), false) {
        Ok(kfp) => json(
            kfp.tags(&package)
                .await
                .map(|tags| serde_json::json!({ "tags": tags })),
        ),
        Err(refused) => refused.into_response(),
    }
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

async fn create_tag(
    State(service): State<Arc<Service>>,
    State(access): State<Arc<Access>>,
    Path((project, repo, package)): Path<(String, String, String)>,
    Query(query): Query<CreateTag>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let kfp = match repository(&service, &access, &headers, (&project, &repo), true) {
        Ok(kfp) => kfp,
        Err(refused) => return refused.into_response(),
    };
    match tag_request(&body) {
        Ok(request) => json(
            kfp.set_tag(&package, &query.tag_id, &request.version, true)
                .await,
        ),
        Err(refused) => refused.into_response(),
    }
}

async fn get_tag(
    State(service): State<Arc<Service>>,
    State(access): State<Arc<Access>>,
    Path((project, repo, package, tag)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    match repository(&service, &access, &headers, (&project, &repo), false) {
        Ok(kfp) => json(kfp.tag(&package, &tag).await),
        Err(refused) => refused.into_response(),
    }
}

async fn update_tag(
    State(service): State<Arc<Service>>,
    State(access): State<Arc<Access>>,
    Path((project, repo, package, tag)): Path<(String, String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let kfp = match repository(&service, &access, &headers, (&project, &repo), true) {
        Ok(kfp) => kfp,
        Err(refused) => return refused.into_response(),
    };
    match tag_request(&body) {
        Ok(request) => json(kfp.set_tag(&package, &tag, &request.version, false).await),
        Err(refused) => refused.into_response(),
    }
}

async fn delete_tag(
    State(service): State<Arc<Service>>,
    State(access): State<Arc<Access>>,
    Path((project, repo, package, tag)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    match repository(&service, &access, &headers, (&project, &repo), true) {
        Ok(kfp) => json(
            kfp.delete_tag(&package, &tag)
                .await
                .map(|()| Done { done: true }),
        ),
        Err(refused) => refused.into_response(),
    }
}

async fn download(
    State(service): State<Arc<Service>>,
    State(access): State<Arc<Access>>,
    Path((project, repo, package, reference)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let kfp = match repository(&service, &access, &headers, (&project, &repo), false) {
        Ok(kfp) => kfp,
        Err(refused) => return refused.into_response(),
    };
    match kfp.download(&package, &reference).await {
        Ok(bytes) => {
            let name = format!(
                "attachment; filename=\"{package}_{}.yaml\"",
                reference.trim_start_matches(kfp::VERSION_PREFIX)
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
