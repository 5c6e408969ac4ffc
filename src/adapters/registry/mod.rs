//! Registry access for images and pipeline templates alike: whose credentials go to which
//! registry (a Docker `config.json` with its helpers), how a registry is reached (HTTPS with the
//! system's and the user's CAs; plain HTTP only for loopback and the hosts the user lists as
//! insecure, after HTTPS failed, as the engine does), and templates pushed, listed and pulled as
//! OCI artifacts over `oci-client` (its only user). The manifests themselves are `templates`'.

pub mod credentials;
mod tags;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth as OciAuth;
use oci_client::{Client, Reference, RegistryOperation};
use serde::Serialize;
use tokio::sync::Mutex;

use crate::adapters::runtime::{self, RegistryAuth, RuntimeError};
use crate::core::image;
use crate::core::templates::{self, Provenance, PushedTemplate};
pub use credentials::{Credential, DockerConfig};

/// Where a registry's CA certificates live, as the Docker engine reads them:
/// `/etc/docker/certs.d/HOST:PORT/*.crt`.
const ENGINE_CERTS: &str = "/etc/docker/certs.d";

/// Hosts reached over plain HTTP when HTTPS fails, whatever the settings say.
const LOOPBACK: [&str; 4] = ["localhost", "127.0.0.1", "::1", "[::1]"];

#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// A Docker `config.json` to read credentials from; `None` reads the user's own, if any.
    pub docker_config: Option<PathBuf>,
    /// Hosts (`host` or `host:port`) that may be reached over plain HTTP, besides loopback.
    pub insecure: Vec<String>,
    /// PEM files of CAs to trust besides the system's.
    pub ca_files: Vec<PathBuf>,
}

/// Every registry a build or a command talks to, with one connection per host.
#[derive(Clone)]
pub struct Registries {
    inner: Arc<Inner>,
}

struct Inner {
    docker_config: Option<DockerConfig>,
    insecure: Vec<String>,
    certificates: Vec<Certificate>,
    connections: Mutex<HashMap<String, Arc<Connection>>>,
}

struct Connection {
    host: String,
    client: Client,
    auth: OciAuth,
    credential: Option<Credential>,
    /// `http` or `https`, as `client` reaches the host.
    scheme: &'static str,
    /// For the one call `oci-client` lacks, deleting a manifest; trusts what `client` trusts.
    http: reqwest::Client,
}

/// Why a registry operation failed. All are the build's FAILURE: the registry and its
/// credentials are the user's.
#[derive(Debug, Clone, PartialEq)]
pub enum RegistryError {
    Unauthorized {
        registry: String,
        credential: Option<(String, String)>,
        detail: String,
    },
    Unreachable {
        registry: String,
        detail: String,
    },
    NotFound(String),
    VersionExists {
        reference: String,
        file: String,
    },
    Refused {
        registry: String,
        detail: String,
    },
    /// A local problem: a settings file, a template.
    Invalid(String),
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unauthorized {
                registry,
                credential: Some((user, source)),
                detail,
            } => write!(
                f,
                "registry {registry} refused the credentials of {user:?} (from {source}): {detail}"
            ),
            Self::Unauthorized {
                registry,
                credential: None,
                detail,
            } => write!(
                f,
                "registry {registry} asks for credentials and none are configured for it \
                 ({detail}); run `docker login {registry}` or add them to the Docker config file"
            ),
            Self::Unreachable { registry, detail } => {
                write!(f, "registry {registry} is unreachable: {detail}")
            }
            Self::NotFound(what) => write!(f, "{what} does not exist"),
            Self::VersionExists { reference, file } => write!(
                f,
                "{reference} already exists with other content than {file}; versions are \
                 immutable: bump the version in the file name, or allow the version to move \
                 (allowVersionOverwrite: true, or --allow-overwrite)"
            ),
            Self::Refused { registry, detail } => {
                write!(f, "registry {registry} refused the request: {detail}")
            }
            Self::Invalid(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for RegistryError {}

/// One template to push: the file's bytes and where they go.
#[derive(Debug, Clone)]
pub struct TemplateUpload<'a> {
    /// The file as the build names it, relative to `/workspace`.
    pub file: &'a str,
    pub content: Bytes,
    pub repository: &'a str,
    pub version: &'a str,
    /// Tags that move to this version, such as `latest`.
    pub tags: &'a [String],
    pub annotations: &'a BTreeMap<String, String>,
    pub allow_version_overwrite: bool,
    pub provenance: &'a Provenance,
}

/// One version of a template repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateVersion {
    pub version: String,
    pub tags: Vec<String>,
    pub digest: String,
    pub created: Option<String>,
    pub file: Option<String>,
}

/// The credentials a backend asks for when it pulls a step image or pushes an image.
#[async_trait::async_trait]
impl runtime::Credentials for Registries {
    async fn auth(&self, image: &str) -> Result<Option<RegistryAuth>, RuntimeError> {
        self.engine_auth(image)
            .await
            .map_err(|e| RuntimeError::Credentials(e.to_string()))
    }
}

impl Registries {
    pub fn new(settings: &Settings) -> Result<Self, String> {
        let docker_config = match &settings.docker_config {
            Some(path) => Some(DockerConfig::load(path)?),
            None => DockerConfig::default_path()
                .filter(|path| path.exists())
                .map(|path| DockerConfig::load(&path))
                .transpose()?,
        };
        let certificates = settings
            .ca_files
            .iter()
            .map(|path| certificate(path))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            inner: Arc::new(Inner {
                docker_config,
                insecure: settings.insecure.clone(),
                certificates,
                connections: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The credentials configured for `host`, if any.
    pub async fn credential(&self, host: &str) -> Result<Option<Credential>, RegistryError> {
        let Some(config) = &self.inner.docker_config else {
            return Ok(None);
        };
        config.lookup(host).await.map_err(RegistryError::Invalid)
    }

    /// The credentials the engine needs to push or pull `image`.
    pub async fn engine_auth(&self, image: &str) -> Result<Option<RegistryAuth>, RegistryError> {
        let server = image::registry_host(image);
        Ok(self.credential(server).await?.map(|c| RegistryAuth {
            username: c.username,
            password: c.secret,
            server: server.to_string(),
        }))
    }

    fn is_insecure(&self, host: &str) -> bool {
        let name = host.rsplit_once(':').map_or(host, |(name, _)| name);
        LOOPBACK.contains(&name)
            || LOOPBACK.contains(&host)
            || self.inner.insecure.iter().any(|h| h == host || h == name)
    }

    async fn connect(&self, host: &str) -> Result<Arc<Connection>, RegistryError> {
        let mut connections = self.inner.connections.lock().await;
        if let Some(found) = connections.get(host) {
            return Ok(found.clone());
        }
        let credential = self.credential(host).await?;
        let auth = credential.as_ref().map_or(OciAuth::Anonymous, |c| {
            OciAuth::Basic(c.username.clone(), c.secret.clone())
        });
        let mut certificates = self.inner.certificates.clone();
        certificates.extend(engine_certificates(host));
        let insecure = self.is_insecure(host);
        let config = |protocol| ClientConfig {
            protocol,
            accept_invalid_certificates: insecure,
            extra_root_certificates: certificates.clone(),
            ..ClientConfig::default()
        };
        let mut client = Client::new(config(ClientProtocol::Https));
        let mut scheme = "https";
        if insecure && !answers(&client, host).await {
            client = Client::new(config(ClientProtocol::Http));
            scheme = "http";
        }
        let mut http = reqwest::Client::builder().danger_accept_invalid_certs(insecure);
        for certificate in &certificates {
            let pem = reqwest::Certificate::from_pem(&certificate.data)
                .map_err(|e| RegistryError::Invalid(format!("a CA certificate: {e}")))?;
            http = http.add_root_certificate(pem);
        }
        let http = http
            .build()
            .map_err(|e| RegistryError::Invalid(format!("an HTTP client for {host}: {e}")))?;
        let connection = Arc::new(Connection {
            host: host.to_string(),
            client,
            auth,
            credential,
            scheme,
            http,
        });
        connections.insert(host.to_string(), connection.clone());
        Ok(connection)
    }

    /// Pushes one template under its version, then moves `tags` to it. Content the version
    /// already holds is not pushed again; other content is refused unless the version may move.
    pub async fn push_template(
        &self,
        upload: &TemplateUpload<'_>,
    ) -> Result<PushedTemplate, RegistryError> {
        let (host, path) = split(upload.repository)?;
        let connection = self.connect(host).await?;
        let at = |tag: &str| reference(host, path, tag);
        let versioned = at(upload.version);
        let content_digest = templates::digest(&upload.content);
        let existing = connection.manifest(&versioned).await?;
        let same = existing
            .as_ref()
            .and_then(|(bytes, _)| templates::stored(bytes))
            .is_some_and(|stored| stored.content == content_digest);
        let (manifest, digest, uploaded) = match existing {
            Some((bytes, digest)) if same => (bytes, digest, false),
            Some(_) if !upload.allow_version_overwrite => {
                return Err(RegistryError::VersionExists {
                    reference: format!("{}:{}", upload.repository, upload.version),
                    file: upload.file.to_string(),
                });
            }
            _ => {
                let (manifest, digest) = connection.push_new(&versioned, upload).await?;
                (manifest, digest, true)
            }
        };
        for tag in upload.tags {
            let tagged = at(tag);
            let current = connection.manifest(&tagged).await?;
            if current.is_none_or(|(_, current)| current != digest) {
                connection.put_manifest(&tagged, manifest.clone()).await?;
            }
        }
        Ok(PushedTemplate {
            file: upload.file.to_string(),
            repository: upload.repository.to_string(),
            version: upload.version.to_string(),
            tags: std::iter::once(upload.version.to_string())
                .chain(upload.tags.iter().cloned())
                .collect(),
            digest,
            uploaded,
        })
    }

    /// The template versions of a repository, in semantic version order, with every tag that
    /// names each.
    pub async fn list_templates(
        &self,
        repository: &str,
    ) -> Result<Vec<TemplateVersion>, RegistryError> {
        let mut versions: BTreeMap<String, TemplateVersion> = BTreeMap::new();
        for tagged in self.template_tags(repository).await? {
            let stored = tagged.stored;
            let entry = versions
                .entry(tagged.manifest.clone())
                .or_insert(TemplateVersion {
                    version: stored.version.unwrap_or_else(|| tagged.tag.clone()),
                    tags: Vec::new(),
                    digest: tagged.manifest,
                    created: stored.created,
                    file: stored.file_name,
                });
            entry.tags.push(tagged.tag);
        }
        let mut versions: Vec<TemplateVersion> = versions.into_values().collect();
        for version in &mut versions {
            let own = version.version.clone();
            version.tags.sort_by_key(|tag| (tag != &own, tag.clone()));
        }
        versions.sort_by(|a, b| templates::compare_versions(&a.version, &b.version));
        Ok(versions)
    }

    /// The exact bytes pushed as `repository:version`.
    pub async fn pull_template(
        &self,
        repository: &str,
        version: &str,
    ) -> Result<Bytes, RegistryError> {
        let (host, path) = split(repository)?;
        let connection = self.connect(host).await?;
        let reference = reference(host, path, version);
        let name = format!("{repository}:{version}");
        let (bytes, _) = connection
            .manifest(&reference)
            .await?
            .ok_or_else(|| RegistryError::NotFound(name.clone()))?;
        let stored = templates::stored(&bytes)
            .ok_or_else(|| RegistryError::Invalid(format!("{name} is not a pipeline template")))?;
        let mut content = Vec::new();
        connection
            .client
            .pull_blob(&reference, stored.content.as_str(), &mut content)
            .await
            .map_err(|e| connection.error(e, &name))?;
        if templates::digest(&content) != stored.content {
            return Err(RegistryError::Refused {
                registry: host.to_string(),
                detail: format!("the content of {name} does not match its digest"),
            });
        }
        Ok(Bytes::from(content))
    }
}

impl Connection {
    /// The manifest a tag names, with its digest; `None` when the tag does not exist.
    async fn manifest(
        &self,
        reference: &Reference,
    ) -> Result<Option<(Bytes, String)>, RegistryError> {
        match self
            .client
            .pull_manifest_raw(reference, &self.auth, &[templates::MANIFEST])
            .await
        {
            Ok(found) => Ok(Some(found)),
            Err(e) => match self.error(e, &reference.whole()) {
                RegistryError::NotFound(_) => Ok(None),
                error => Err(error),
            },
        }
    }

    /// Uploads the empty config, the template and its manifest; returns the manifest pushed and
    /// its digest.
    async fn push_new(
        &self,
        reference: &Reference,
        upload: &TemplateUpload<'_>,
    ) -> Result<(Bytes, String), RegistryError> {
        let name = reference.whole();
        self.client
            .auth(reference, &self.auth, RegistryOperation::Push)
            .await
            .map_err(|e| self.error(e, &name))?;
        for blob in [
            Bytes::from_static(templates::EMPTY_JSON),
            upload.content.clone(),
        ] {
            let digest = templates::digest(&blob);
            let exists = self
                .client
                .blob_exists(reference, &digest)
                .await
                .map_err(|e| self.error(e, &name))?;
            if !exists {
                self.client
                    .push_blob(reference, blob, &digest)
                    .await
                    .map_err(|e| self.error(e, &name))?;
            }
        }
        let file_name = upload.file.rsplit('/').next().unwrap_or(upload.file);
        let mut annotations = upload.annotations.clone();
        if upload.allow_version_overwrite {
            annotations.insert(templates::OVERWRITE.into(), "true".into());
        }
        let manifest = |legacy| {
            Bytes::from(templates::manifest(
                file_name,
                &upload.content,
                upload.version,
                upload.provenance,
                &annotations,
                legacy,
            ))
        };
        let current = manifest(false);
        match self.put_manifest(reference, current.clone()).await {
            Err(RegistryError::Refused { .. }) => {
                // A registry from before OCI 1.1 may refuse `artifactType`.
                let legacy = manifest(true);
                self.put_manifest(reference, legacy.clone()).await?;
                let digest = templates::digest(&legacy);
                Ok((legacy, digest))
            }
            Err(error) => Err(error),
            Ok(()) => {
                let digest = templates::digest(&current);
                Ok((current, digest))
            }
        }
    }

    async fn put_manifest(
        &self,
        reference: &Reference,
        manifest: Bytes,
    ) -> Result<(), RegistryError> {
        let content_type = templates::MANIFEST.parse().expect("a valid header value");
        self.client
            .push_manifest_raw(reference, manifest, content_type)
            .await
            .map(drop)
            .map_err(|e| self.error(e, &reference.whole()))
    }

    /// What went wrong, in the user's terms.
    fn error(&self, error: OciDistributionError, what: &str) -> RegistryError {
        let registry = self.host.clone();
        let unauthorized = |detail: String| RegistryError::Unauthorized {
            registry: registry.clone(),
            credential: self
                .credential
                .as_ref()
                .map(|c| (c.username.clone(), c.source.clone())),
            detail,
        };
        match error {
            OciDistributionError::RequestError(e) if e.is_connect() || e.is_timeout() => {
                RegistryError::Unreachable {
                    registry,
                    detail: chain(&e),
                }
            }
            OciDistributionError::UnauthorizedError { url } => {
                unauthorized(format!("401 Unauthorized for {url}"))
            }
            OciDistributionError::AuthenticationFailure(reason) => unauthorized(reason),
            OciDistributionError::ServerError {
                code: 401 | 403,
                message,
                ..
            } => unauthorized(message),
            OciDistributionError::RegistryError { envelope, .. }
                if envelope.errors.iter().any(|e| {
                    matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)
                }) =>
            {
                unauthorized(envelope.to_string())
            }
            OciDistributionError::ImageManifestNotFoundError(_)
            | OciDistributionError::ServerError { code: 404, .. } => {
                RegistryError::NotFound(what.to_string())
            }
            OciDistributionError::RegistryError { envelope, .. }
                if envelope.errors.iter().any(|e| {
                    matches!(
                        e.code,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::NotFound
                    )
                }) =>
            {
                RegistryError::NotFound(what.to_string())
            }
            other => RegistryError::Refused {
                registry,
                detail: chain(&other),
            },
        }
    }
}

/// Whether the registry answers over HTTPS at all (any HTTP status counts).
async fn answers(client: &Client, host: &str) -> bool {
    let probe = reference(host, "probe", "latest");
    !matches!(
        client
            .auth(&probe, &OciAuth::Anonymous, RegistryOperation::Pull)
            .await,
        Err(OciDistributionError::RequestError(_))
    )
}

/// `host[:port]/path` → (`host[:port]`, `path`); a repository must name its registry.
fn split(repository: &str) -> Result<(&str, &str), RegistryError> {
    let host = image::registry_host(repository);
    repository
        .strip_prefix(host)
        .and_then(|rest| rest.strip_prefix('/'))
        .map(|path| (host, path))
        .ok_or_else(|| {
            RegistryError::Invalid(format!(
                "{repository:?} does not name its registry; write HOST[:PORT]/PATH, e.g. \
                 localhost:5000/ml/training-pipeline"
            ))
        })
}

fn certificate(path: &Path) -> Result<Certificate, String> {
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Certificate {
        encoding: CertificateEncoding::Pem,
        data,
    })
}

/// The CAs the engine trusts for `host`.
fn engine_certificates(host: &str) -> Vec<Certificate> {
    let Ok(entries) = std::fs::read_dir(Path::new(ENGINE_CERTS).join(host)) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| Some(entry.ok()?.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "crt"))
        .filter_map(|path| certificate(&path).ok())
        .collect()
}

/// An error with its causes, which for network errors say what actually happened.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text = format!("{text}: {said}");
        }
        source = cause.source();
    }
    text
}

/// `host/path:tag`.
fn reference(host: &str, path: &str, tag: &str) -> Reference {
    Reference::with_tag(host.into(), path.into(), tag.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_name_their_registry() {
        assert_eq!(split("localhost:5000/ml/t"), Ok(("localhost:5000", "ml/t")));
        assert_eq!(split("reg.example/t"), Ok(("reg.example", "t")));
        assert!(split("ml/training").is_err());
    }

    #[test]
    fn loopback_and_listed_hosts_are_insecure() {
        let registries = Registries::new(&Settings {
            docker_config: Some(PathBuf::from("/dev/null")),
            insecure: vec!["reg.lan:5000".into(), "plain.lan".into()],
            ca_files: Vec::new(),
        });
        // /dev/null is not a config file: the settings are refused with the path named.
        assert!(registries.err().unwrap().contains("/dev/null"));
        let registries = Registries {
            inner: Arc::new(Inner {
                docker_config: None,
                insecure: vec!["reg.lan:5000".into(), "plain.lan".into()],
                certificates: Vec::new(),
                connections: Mutex::new(HashMap::new()),
            }),
        };
        for host in [
            "localhost:5000",
            "127.0.0.1",
            "[::1]:5000",
            "reg.lan:5000",
            "plain.lan:443",
        ] {
            assert!(registries.is_insecure(host), "{host}");
        }
        for host in ["reg.lan:5001", "gcr.io", "localhost.example"] {
            assert!(!registries.is_insecure(host), "{host}");
        }
    }
}
