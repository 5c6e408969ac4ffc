//! The KFP registry API's use cases over the template store: one OCI repository per package,
//! `{root}/{project}/{repository}/{package}` on the registry the server's `kfpRegistry` names
//! (`core::kfp` says how its tags read as versions and tags). What `templates:` and
//! `builder templates` push there is listed here, and what is uploaded here they list: one store.

use bytes::Bytes;

use super::{Failed, Internal, Service};
use crate::adapters::registry::{Registries, RegistryError, TemplateUpload};
use crate::core::kfp::{self, Refusal, Version, wire};
use crate::core::templates::{self, Provenance, Tagged};

/// One package's versions as the console lists them.
#[derive(Debug, Clone)]
pub struct Listing {
    pub project: String,
    pub repository: String,
    pub package: String,
    pub versions: Vec<Version>,
}

/// One KFP repository (`/kfp/{project}/{repository}`) of the server.
pub struct KfpRepository {
    registries: Registries,
    /// `{root}/{project}/{repository}`, the OCI repositories of its packages under it.
    base: String,
}

impl From<Refusal> for Failed {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Invalid(message) => Failed::Invalid(message),
            Refusal::Conflict(message) => Failed::Conflict(message),
        }
    }
}

impl From<RegistryError> for Failed {
    fn from(error: RegistryError) -> Self {
        match error {
            RegistryError::NotFound(_) => Failed::NotFound(error.to_string()),
            RegistryError::Invalid(_) => Failed::Invalid(error.to_string()),
            RegistryError::VersionExists { .. } => Failed::Conflict(error.to_string()),
            _ => Failed::Internal(Internal::Registry(error)),
        }
    }
}

impl Service {
    /// The registry path KFP packages live under, or why there is none.
    fn kfp_root(&self) -> Result<&str, Failed> {
        self.settings.kfp_registry.as_deref().ok_or_else(|| {
            Failed::NotFound(
                "this server does not serve the KFP registry API: start it with \
                 --kfp-registry HOST[:PORT]/PATH (kfpRegistry in its settings file)"
                    .into(),
            )
        })
    }

    /// The KFP repository `project/repository`.
    pub fn kfp(&self, project: &str, repository: &str) -> Result<KfpRepository, Failed> {
        let root = self.kfp_root()?;
        kfp::check_name("project", project)?;
        kfp::check_name("repository", repository)?;
        Ok(KfpRepository {
            registries: self.settings.machine.registries.clone(),
            base: format!("{root}/{project}/{repository}"),
        })
    }

    /// Every package of every KFP repository, for the console.
    pub async fn kfp_catalog(&self) -> Result<Vec<Listing>, Failed> {
        let root = self.kfp_root()?;
        let registries = &self.settings.machine.registries;
        let mut listings = Vec::new();
        for oci in registries.repositories(root).await? {
            let relative = oci.strip_prefix(&format!("{root}/")).unwrap_or(&oci);
            let [project, repository, package] = relative.split('/').collect::<Vec<_>>()[..] else {
                continue;
            };
            let versions = kfp::versions(&registries.template_tags(&oci).await?);
            if !versions.is_empty() {
                listings.push(Listing {
                    project: project.into(),
                    repository: repository.into(),
                    package: package.into(),
                    versions,
                });
            }
        }
        Ok(listings)
    }
}

impl KfpRepository {
    fn oci(&self, package: &str) -> Result<String, Failed> {
        kfp::check_name("package", package)?;
        Ok(format!("{}/{package}", self.base))
    }

    /// The tags of a package; none when its repository does not exist.
    async fn tags_of(&self, package: &str) -> Result<Vec<Tagged>, Failed> {
        let registries = &self.registries;
        match registries.template_tags(&self.oci(package)?).await {
            Err(RegistryError::NotFound(_)) => Ok(Vec::new()),
            found => Ok(found?),
        }
    }

    /// The versions of a package; a package without any does not exist.
    async fn versions_of(&self, package: &str) -> Result<(Vec<Tagged>, Vec<Version>), Failed> {
        let tagged = self.tags_of(package).await?;
        let versions = kfp::versions(&tagged);
        if versions.is_empty() {
            return Err(Failed::NotFound(format!(
                "package {package:?} does not exist in {}",
                self.base
            )));
        }
        Ok((tagged, versions))
    }

    fn version<'v>(
        &self,
        package: &str,
        versions: &'v [Version],
        digest: &str,
    ) -> Result<&'v Version, Failed> {
        kfp::check_version(digest)?;
        versions
            .iter()
            .find(|v| v.digest == digest)
            .ok_or_else(|| Failed::NotFound(format!("package {package:?} has no version {digest}")))
    }

    /// Stores an uploaded pipeline spec: its package from `pipelineInfo.name`, its version the
    /// digest of its bytes (the same bytes again add nothing), then moves `tags` to it, all
    /// checked before anything is written. Returns (package, version).
    pub async fn upload(
        &self,
        content: Bytes,
        file_name: Option<&str>,
        tags: &str,
    ) -> Result<(String, String), Failed> {
        if content.len() as u64 > templates::MAX_FILE_BYTES {
            return Err(Failed::Invalid(format!(
                "the pipeline spec is {} bytes, more than the {} bytes this server stores for a \
                 template",
                content.len(),
                templates::MAX_FILE_BYTES
            )));
        }
        let package = kfp::package_name(&content)?;
        let tags = kfp::upload_tags(tags)?;
        let repository = self.oci(&package)?;
        let tagged = self.tags_of(&package).await?;
        let version = templates::digest(&content);
        for tag in &tags {
            kfp::may_move(tag, &version, &tagged)?;
        }
        let registries = &self.registries;
        let reference = match kfp::versions(&tagged)
            .into_iter()
            .find(|v| v.digest == version)
        {
            Some(existing) => existing.reference,
            None => {
                let anchor = kfp::anchor(&version);
                // The client's file name titles the template if it is a plain one (a tag's
                // characters: no path, nothing to escape).
                let file = file_name
                    .filter(|name| templates::is_tag(name))
                    .map_or_else(|| format!("{package}.yaml"), str::to_string);
                let provenance = Provenance {
                    created: crate::core::build::rfc3339::format(std::time::SystemTime::now()),
                    ..Provenance::default()
                };
                let upload = TemplateUpload {
                    file: &file,
                    content,
                    repository: &repository,
                    version: &version,
                    tags: &[],
                    annotations: &Default::default(),
                    allow_version_overwrite: false,
                    provenance: &provenance,
                };
                registries.push_under(&upload, &anchor).await?;
                tracing::info!(%repository, %version, "KFP version uploaded");
                anchor
            }
        };
        for tag in &tags {
            let current = tagged.iter().find(|t| &t.tag == tag);
            if current.is_none_or(|t| t.stored.content != version) {
                registries.copy_tag(&repository, &reference, tag).await?;
            }
        }
        Ok((package, version))
    }

    pub async fn packages(&self) -> Result<Vec<wire::Package>, Failed> {
        let registries = &self.registries;
        let mut packages = Vec::new();
        for oci in registries.repositories(&self.base).await? {
            let Some(package) = oci.strip_prefix(&format!("{}/", self.base)) else {
                continue;
            };
            if package.contains('/') {
                continue;
            }
            let versions = kfp::versions(&self.tags_of(package).await?);
            if !versions.is_empty() {
                packages.push(wire::package(package, &versions));
            }
        }
        Ok(packages)
    }

    pub async fn package(&self, package: &str) -> Result<wire::Package, Failed> {
        let (_, versions) = self.versions_of(package).await?;
        Ok(wire::package(package, &versions))
    }

    /// Deletes every version of a package, refused if one of its tags is a build's version.
    pub async fn delete_package(&self, package: &str) -> Result<(), Failed> {
        let (tagged, _) = self.versions_of(package).await?;
        for entry in &tagged {
            kfp::may_delete(&entry.tag, &tagged)?;
        }
        let repository = self.oci(package)?;
        let registries = &self.registries;
        for entry in &tagged {
            registries.remove_tag(&repository, &entry.tag).await?;
        }
        tracing::info!(%repository, "KFP package deleted");
        Ok(())
    }

    pub async fn versions(&self, package: &str) -> Result<Vec<wire::PackageVersion>, Failed> {
        let (_, versions) = self.versions_of(package).await?;
        Ok(versions.iter().map(|v| wire::version(package, v)).collect())
    }

    pub async fn get_version(
        &self,
        package: &str,
        digest: &str,
    ) -> Result<wire::PackageVersion, Failed> {
        let (_, versions) = self.versions_of(package).await?;
        Ok(wire::version(
            package,
            self.version(package, &versions, digest)?,
        ))
    }

    /// Deletes a version no tag names.
    pub async fn delete_version(&self, package: &str, digest: &str) -> Result<(), Failed> {
        let (tagged, versions) = self.versions_of(package).await?;
        let version = self.version(package, &versions, digest)?;
        kfp::may_delete_version(version)?;
        let repository = self.oci(package)?;
        let registries = &self.registries;
        for entry in tagged.iter().filter(|t| t.stored.content == digest) {
            registries.remove_tag(&repository, &entry.tag).await?;
        }
        tracing::info!(%repository, version = %digest, "KFP version deleted");
        Ok(())
    }

    pub async fn tags(&self, package: &str) -> Result<Vec<wire::Tag>, Failed> {
        let (_, versions) = self.versions_of(package).await?;
        Ok(versions
            .iter()
            .flat_map(|v| v.tags.iter().map(|t| wire::tag(package, t, &v.digest)))
            .collect())
    }

    pub async fn tag(&self, package: &str, tag: &str) -> Result<wire::Tag, Failed> {
        kfp::check_tag(tag)?;
        let (tagged, _) = self.versions_of(package).await?;
        let found = tagged
            .iter()
            .find(|t| t.tag == tag)
            .ok_or_else(|| Failed::NotFound(format!("package {package:?} has no tag {tag:?}")))?;
        Ok(wire::tag(package, tag, &found.stored.content))
    }

    /// Sets `tag` to the version `version_name` names (`packages/{p}/versions/sha256:…`).
    /// Creating a tag that names other content is a conflict; updating one needs it to exist.
    /// Either way a build's version tag does not move.
    pub async fn set_tag(
        &self,
        package: &str,
        tag: &str,
        version_name: &str,
        creating: bool,
    ) -> Result<wire::Tag, Failed> {
        kfp::check_tag(tag)?;
        let digest = kfp::requested_version(package, version_name)?;
        let (tagged, versions) = self.versions_of(package).await?;
        let version = self.version(package, &versions, &digest)?;
        let current = tagged.iter().find(|t| t.tag == tag);
        match current {
            Some(current) if creating && current.stored.content != digest => {
                return Err(Failed::Conflict(format!(
                    "tag {tag:?} already exists on version {}; update it to move it",
                    current.stored.content
                )));
            }
            None if !creating => {
                return Err(Failed::NotFound(format!(
                    "package {package:?} has no tag {tag:?}; create it"
                )));
            }
            _ => {}
        }
        kfp::may_move(tag, &digest, &tagged)?;
        if current.is_none_or(|t| t.stored.content != digest) {
            let repository = self.oci(package)?;
            let registries = &self.registries;
            registries
                .copy_tag(&repository, &version.reference, tag)
                .await?;
            tracing::info!(%repository, %tag, version = %digest, "KFP tag set");
        }
        Ok(wire::tag(package, tag, &digest))
    }

    pub async fn delete_tag(&self, package: &str, tag: &str) -> Result<(), Failed> {
        kfp::check_tag(tag)?;
        let (tagged, _) = self.versions_of(package).await?;
        if !tagged.iter().any(|t| t.tag == tag) {
            return Err(Failed::NotFound(format!(
                "package {package:?} has no tag {tag:?}"
            )));
        }
        kfp::may_delete(tag, &tagged)?;
        let repository = self.oci(package)?;
        let registries = &self.registries;
        registries.remove_tag(&repository, tag).await?;
        tracing::info!(%repository, %tag, "KFP tag deleted");
        Ok(())
    }

    /// The bytes of a version (`sha256:…`) or of what a tag names, exactly as stored.
    pub async fn download(&self, package: &str, version_or_tag: &str) -> Result<Bytes, Failed> {
        let reference = if version_or_tag.starts_with(kfp::VERSION_PREFIX) {
            let (_, versions) = self.versions_of(package).await?;
            self.version(package, &versions, version_or_tag)?
                .reference
                .clone()
        } else {
            kfp::check_tag(version_or_tag)?;
            version_or_tag.to_string()
        };
        let registries = &self.registries;
        let bytes = registries
            .pull_template(&self.oci(package)?, &reference)
            .await
            .map_err(|e| match e {
                RegistryError::NotFound(_) => Failed::NotFound(format!(
                    "package {package:?} has no version or tag {version_or_tag:?}"
                )),
                other => other.into(),
            })?;
        Ok(bytes)
    }
}
