//! A template repository's tags as a whole, for the KFP view of the template store: the
//! repositories under a path (the registry's catalog), every tag read with the manifest it
//! names, a version pushed under a tag of its own, a tag set to what another names, and one tag
//! removed without the others.

use bytes::Bytes;
use oci_client::RegistryOperation;

use super::{Connection, Registries, RegistryError, TemplateUpload, reference, split};
use crate::core::templates::{self, Tagged};

/// How many repositories one catalog request asks for.
const CATALOG_PAGE: usize = 1000;
/// Marks the copy of a manifest made to remove one tag (see [`Registries::remove_tag`]).
const REMOVING: &str = "dev.builder.template.removing-tag";

impl Registries {
    /// The repositories under `root` (`host[:port]/path`), as `host[:port]/path/...`, read from
    /// the registry's catalog page by page.
    pub async fn repositories(&self, root: &str) -> Result<Vec<String>, RegistryError> {
        let (host, path) = split(root)?;
        let connection = self.connect(host).await?;
        let probe = reference(host, path, "latest");
        let prefix = format!("{path}/");
        let mut found = Vec::new();
        let mut last: Option<String> = None;
        loop {
            let page = connection
                .client
                .catalog(
                    &probe,
                    &connection.auth,
                    Some(CATALOG_PAGE),
                    last.as_deref(),
                )
                .await
                .map_err(|e| connection.error(e, &format!("the catalog of {host}")))?;
            let count = page.repositories.len();
            last = page.repositories.last().cloned();
            found.extend(
                page.repositories
                    .into_iter()
                    .filter(|r| r.starts_with(&prefix))
                    .map(|r| format!("{host}/{r}")),
            );
            if count < CATALOG_PAGE {
                return Ok(found);
            }
        }
    }

    /// Every tag of `repository` that names a pipeline template, with its manifest's digest and
    /// what the manifest says.
    pub async fn template_tags(&self, repository: &str) -> Result<Vec<Tagged>, RegistryError> {
        let (host, path) = split(repository)?;
        let connection = self.connect(host).await?;
        let listed = connection
            .client
            .list_tags(
                &reference(host, path, "latest"),
                &connection.auth,
                None,
                None,
            )
            .await
            .map_err(|e| connection.error(e, repository))?;
        let mut tagged = Vec::new();
        for tag in listed.tags {
            let Some((bytes, manifest)) = connection.manifest(&reference(host, path, &tag)).await?
            else {
                continue;
            };
            if let Some(stored) = templates::stored(&bytes) {
                tagged.push(Tagged {
                    tag,
                    manifest,
                    stored,
                });
            }
        }
        Ok(tagged)
    }

    /// Pushes a template as a new manifest under `tag` alone (its version is `upload.version`).
    pub async fn push_under(
        &self,
        upload: &TemplateUpload<'_>,
        tag: &str,
    ) -> Result<(), RegistryError> {
        let (host, path) = split(upload.repository)?;
        let connection = self.connect(host).await?;
        connection
            .push_new(&reference(host, path, tag), upload)
            .await
            .map(drop)
    }

    /// Sets `tag` to the manifest that `from` names.
    pub async fn copy_tag(
        &self,
        repository: &str,
        from: &str,
        tag: &str,
    ) -> Result<(), RegistryError> {
        let (host, path) = split(repository)?;
        let connection = self.connect(host).await?;
        let (manifest, _) = connection
            .manifest(&reference(host, path, from))
            .await?
            .ok_or_else(|| RegistryError::NotFound(format!("{repository}:{from}")))?;
        connection
            .put_manifest(&reference(host, path, tag), manifest)
            .await
    }

    /// Removes `tag` and nothing else. A registry deletes manifests, not tags, and deleting a
    /// manifest untags every tag that names it: the tag is first set to a copy of its manifest
    /// that only it names (an annotation makes the copy unique), then that copy is deleted.
    /// The registry must allow deletes (`storage.delete.enabled`).
    pub async fn remove_tag(&self, repository: &str, tag: &str) -> Result<(), RegistryError> {
        let (host, path) = split(repository)?;
        let connection = self.connect(host).await?;
        let tagged = reference(host, path, tag);
        let (manifest, _) = connection
            .manifest(&tagged)
            .await?
            .ok_or_else(|| RegistryError::NotFound(format!("{repository}:{tag}")))?;
        let mut value: serde_json::Value = serde_json::from_slice(&manifest).map_err(|e| {
            RegistryError::Invalid(format!("the manifest of {repository}:{tag}: {e}"))
        })?;
        value["annotations"][REMOVING] = tag.into();
        let copy = Bytes::from(serde_json::to_vec(&value).expect("a JSON value serializes"));
        let digest = templates::digest(&copy);
        connection.put_manifest(&tagged, copy).await?;
        connection.delete_manifest(path, &digest).await
    }
}

impl Connection {
    /// `DELETE /v2/{path}/manifests/{digest}` with this connection's credentials.
    async fn delete_manifest(&self, path: &str, digest: &str) -> Result<(), RegistryError> {
        let name = format!("{}/{path}@{digest}", self.host);
        let target = reference(&self.host, path, "latest");
        let token = self
            .client
            .auth(&target, &self.auth, RegistryOperation::Push)
            .await
            .map_err(|e| self.error(e, &name))?;
        let url = format!(
            "{}://{}/v2/{path}/manifests/{digest}",
            self.scheme, self.host
        );
        let mut request = self.http.delete(&url);
        request = match (token, &self.credential) {
            (Some(token), _) => request.bearer_auth(token),
            (None, Some(credential)) => {
                request.basic_auth(&credential.username, Some(&credential.secret))
            }
            (None, None) => request,
        };
        let response = request
            .send()
            .await
            .map_err(|e| RegistryError::Unreachable {
                registry: self.host.clone(),
                detail: super::chain(&e),
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = response.text().await.unwrap_or_default();
        Err(match status.as_u16() {
            404 => RegistryError::NotFound(name),
            401 | 403 => RegistryError::Unauthorized {
                registry: self.host.clone(),
                credential: self
                    .credential
                    .as_ref()
                    .map(|c| (c.username.clone(), c.source.clone())),
                detail: body,
            },
            // Distribution answers 405 UNSUPPORTED when deletes are off.
            405 => RegistryError::Refused {
                registry: self.host.clone(),
                detail: format!(
                    "it does not allow deletes ({body}); enable them (storage.delete.enabled: true)"
                ),
            },
            _ => RegistryError::Refused {
                registry: self.host.clone(),
                detail: format!("{status} for DELETE {url}: {body}"),
            },
        })
    }
}
