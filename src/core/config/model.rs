//! The build config as written: every field of Cloud Build's `Build` resource that a
//! `cloudbuild.yaml` may carry (spec §2), before substitution. Fields that this service cannot
//! honour but that take substitutions (`logsBucket`, `serviceAccount`, `options.pool.name`, the
//! artifact repositories) are kept so that substitution checks count their uses as Cloud Build does.

use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct BuildConfig {
    pub steps: Vec<Step>,
    pub timeout: Option<Duration>,
    pub queue_ttl: Option<Duration>,
    pub substitutions: BTreeMap<String, String>,
    pub tags: Vec<String>,
    pub images: Vec<String>,
    pub options: Options,
    pub secrets: Vec<KmsSecret>,
    pub available_secrets: AvailableSecrets,
    pub artifacts: Artifacts,
    pub templates: Vec<TemplatePush>,
    pub logs_bucket: Option<String>,
    pub service_account: Option<String>,
    /// Whether the config names a `source` (Cloud Storage, a repository) for the service to
    /// fetch: gcloud accepts that only with `--no-source`, and builder fetches nothing.
    pub source: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Step {
    pub name: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub dir: Option<String>,
    pub id: Option<String>,
    pub wait_for: Vec<String>,
    pub entrypoint: Option<String>,
    pub secret_env: Vec<String>,
    pub volumes: Vec<Volume>,
    pub timeout: Option<Duration>,
    pub script: Option<String>,
    pub allow_failure: bool,
    pub allow_exit_codes: Vec<i64>,
    pub automap_substitutions: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Volume {
    pub name: String,
    pub path: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Options {
    pub env: Vec<String>,
    pub secret_env: Vec<String>,
    pub volumes: Vec<Volume>,
    pub substitution_option: SubstitutionOption,
    pub dynamic_substitutions: bool,
    pub automap_substitutions: bool,
    pub pool_name: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SubstitutionOption {
    #[default]
    MustMatch,
    AllowLoose,
}

/// A legacy KMS-encrypted secret: env name → base64 ciphertext.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KmsSecret {
    pub kms_key_name: String,
    pub secret_env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct AvailableSecrets {
    pub secret_manager: Vec<SecretManagerSecret>,
    pub inline: Vec<InlineSecret>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SecretManagerSecret {
    pub version_name: String,
    pub env: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct InlineSecret {
    pub kms_key_name: String,
    pub env_map: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Artifacts {
    pub images: Vec<String>,
    pub objects: Option<ArtifactObjects>,
    /// Uploads to Google services (`mavenArtifacts`, `pythonPackages`, `npmPackages`, `goModules`,
    /// `oci`, `genericArtifacts`): parsed, checked, substituted, not performed.
    pub uploads: Vec<ArtifactUpload>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ArtifactObjects {
    pub location: String,
    pub paths: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ArtifactUpload {
    /// The field it came from, e.g. `mavenArtifacts`, and its index there.
    pub kind: &'static str,
    pub index: usize,
    /// Its string fields by name (camelCase); list fields are joined in `lists`.
    pub fields: BTreeMap<&'static str, String>,
    pub lists: BTreeMap<&'static str, Vec<String>>,
}

/// One entry of `templates:`, this service's own extension (not a Cloud Build field): files of
/// `/workspace` pushed as versioned OCI artifacts once every step succeeded and `images:` are
/// pushed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TemplatePush {
    /// Globs relative to `/workspace`.
    pub paths: Vec<String>,
    /// Where the artifacts go, `host[:port]/path`, without a tag.
    pub repository: String,
    /// Its first capture group, searched in the file name, is the version; `None` means
    /// [`DEFAULT_VERSION_REGEX`].
    pub version_regex: Option<String>,
    /// Tags that move to the newest version pushed, such as `latest`.
    pub tags: Vec<String>,
    pub annotations: BTreeMap<String, String>,
    /// Lets a version tag that exists with other content move to the new content.
    pub allow_version_overwrite: bool,
    /// The largest template accepted, in bytes; `None` means [`DEFAULT_TEMPLATE_LIMIT`].
    pub max_size_bytes: Option<i64>,
}

/// `training-pipeline_v1.2.3.yaml` → `1.2.3`.
pub const DEFAULT_VERSION_REGEX: &str = r"_v(\d+\.\d+\.\d+)\.(?:ya?ml|json)$";

/// Compiled pipelines are kilobytes; a glob that catches a dataset should fail, not upload it.
pub const DEFAULT_TEMPLATE_LIMIT: i64 = 16 << 20;
