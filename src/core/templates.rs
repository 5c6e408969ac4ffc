//! Pipeline templates as versioned OCI artifacts (the `templates:` extension of the build config):
//! which version a file name carries, how versions sort, and the manifest a template is pushed
//! with. No I/O; `registry` moves the bytes.
//!
//! Media types. The manifest is an OCI image manifest (the kind every registry stores) with
//! `artifactType` [`ARTIFACT_TYPE`], the empty config, and the template as its only layer,
//! [`LAYER_YAML`] or [`LAYER_JSON`] after the compiled file's format, so that a client can tell a
//! pipeline template from any other YAML without reading it. A registry that refuses
//! `artifactType` gets the OCI 1.0 convention instead: the artifact type as the config's media
//! type (as ORAS does).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::io::Read;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::core::glob::Glob;

pub const ARTIFACT_TYPE: &str = "application/vnd.builder.pipeline-template.v1";
pub const LAYER_YAML: &str = "application/vnd.builder.pipeline-template.layer.v1+yaml";
pub const LAYER_JSON: &str = "application/vnd.builder.pipeline-template.layer.v1+json";
pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";
/// The empty config's content, `{}`.
pub const EMPTY_JSON: &[u8] = b"{}";

pub const VERSION: &str = "org.opencontainers.image.version";
pub const CREATED: &str = "org.opencontainers.image.created";
pub const REVISION: &str = "org.opencontainers.image.revision";
pub const SOURCE: &str = "org.opencontainers.image.source";
pub const TITLE: &str = "org.opencontainers.image.title";
/// The build that pushed a template, for the console's link to it.
pub const BUILD: &str = "dev.builder.template.build";
/// Set on a template a build pushed with `allowVersionOverwrite: true`: its version tag is no
/// more fixed than the build said, so the KFP API may move or delete it too.
pub const OVERWRITE: &str = "dev.builder.template.allow-version-overwrite";

/// One `templates:` entry, substituted: the build pushes every file its globs match.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    pub paths: Vec<String>,
    pub repository: String,
    pub version_regex: String,
    pub tags: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    pub allow_version_overwrite: bool,
    pub max_size_bytes: u64,
}

/// A template pushed, as the build's results record it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PushedTemplate {
    /// The file, relative to `/workspace`.
    pub file: String,
    pub repository: String,
    pub version: String,
    /// Every tag that now names the manifest: the version first.
    pub tags: Vec<String>,
    pub digest: String,
    /// False when the registry already held this content under the version.
    pub uploaded: bool,
}

/// A file of the workspace that a target's globs match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Relative to `/workspace`.
    pub file: String,
    pub content: Vec<u8>,
}

/// The most a template file may hold whatever its target's `maxSizeBytes` says, and the most all
/// the templates of a build may hold together: they are read into the server's memory, and the
/// sizes come from the archive's headers, which the build's code wrote (a sparse file claims a
/// terabyte in a few blocks).
pub const MAX_FILE_BYTES: u64 = 64 << 20;
pub const MAX_TOTAL_BYTES: u64 = 256 << 20;

/// Reads a tar of `/workspace` (its entries under `workspace/`, as the engine archives a
/// directory) and keeps, for each target, the regular files its globs match, in path order. A
/// matched file over its target's limit or [`MAX_FILE_BYTES`], or files together over
/// [`MAX_TOTAL_BYTES`], are an error that names the file; sizes are checked before reading.
pub fn collect(archive: impl Read, targets: &[Target]) -> Result<Vec<Vec<Found>>, String> {
    let globs = targets
        .iter()
        .map(|t| t.paths.iter().map(|p| Glob::new(p)).collect())
        .collect::<Result<Vec<Vec<Glob>>, String>>()?;
    let mut found = vec![Vec::new(); targets.len()];
    let mut total: u64 = 0;
    let reading = |e: std::io::Error| format!("reading /workspace: {e}");
    let mut archive = tar::Archive::new(archive);
    for entry in archive.entries().map_err(reading)? {
        let mut entry = entry.map_err(reading)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry
            .path()
            .map_err(reading)?
            .to_string_lossy()
            .into_owned();
        let Some(file) = path.strip_prefix("workspace/").map(str::to_string) else {
            continue;
        };
        let size = entry.size();
        let mut content = None;
        for (i, target) in targets.iter().enumerate() {
            if !globs[i].iter().any(|g| g.matches(&file)) {
                continue;
            }
            if size > target.max_size_bytes {
                return Err(format!(
                    "/workspace/{file} is {size} bytes, more than the {} bytes templates may \
                     have (maxSizeBytes)",
                    target.max_size_bytes
                ));
            }
            if size > MAX_FILE_BYTES {
                return Err(format!(
                    "/workspace/{file} is {size} bytes, more than the {MAX_FILE_BYTES} bytes \
                     this server reads for a template, whatever maxSizeBytes says"
                ));
            }
            if content.is_none() {
                total += size;
                if total > MAX_TOTAL_BYTES {
                    return Err(format!(
                        "/workspace/{file} takes the build's templates past the \
                         {MAX_TOTAL_BYTES} bytes this server reads for one build"
                    ));
                }
                let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
                entry.read_to_end(&mut bytes).map_err(reading)?;
                content = Some(bytes);
            }
            found[i].push(Found {
                file: file.clone(),
                content: content.clone().unwrap_or_default(),
            });
        }
    }
    for files in &mut found {
        files.sort_by(|a, b| a.file.cmp(&b.file));
    }
    Ok(found)
}

/// A version regex as written: it must compile and capture the version in a group.
pub fn version_regex(text: &str) -> Result<Regex, String> {
    let regex = Regex::new(text).map_err(|e| format!("invalid regular expression: {e}"))?;
    if regex.captures_len() < 2 {
        return Err(format!(
            "{text:?} has no capture group; put the version in parentheses, e.g. _v(\\d+\\.\\d+\\.\\d+)\\.yaml$"
        ));
    }
    Ok(regex)
}

/// The version a file name carries: the first capture group of `regex`, searched in the name.
pub fn version_of(file: &str, regex: &Regex) -> Result<String, String> {
    let name = file.rsplit('/').next().unwrap_or(file);
    let found = regex
        .captures(name)
        .and_then(|c| c.get(1))
        .map(|m| m.as_str().to_string())
        .filter(|v| is_tag(v));
    found.ok_or_else(|| {
        format!(
            "{file}: the file name carries no version: the regex `{regex}` captures none in {name:?}"
        )
    })
}

/// A registry tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn is_tag(text: &str) -> bool {
    let mut chars = text.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        && text.len() <= 128
}

/// Semantic version order (`1.10.0` after `1.9.0`, `2.0.0-rc.1` before `2.0.0`); versions that
/// are not semantic sort after those that are, by text.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    match (semver(a), semver(b)) {
        (Some(x), Some(y)) => x.0.cmp(&y.0).then_with(|| match (&x.1, &y.1) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            (Some(p), Some(q)) => compare_prerelease(p, q),
        }),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

type Semver<'a> = (Vec<u64>, Option<Vec<&'a str>>);

/// `MAJOR.MINOR.PATCH[-pre.release][+build]`, the numbers and the prerelease identifiers.
fn semver(text: &str) -> Option<Semver<'_>> {
    let text = text.strip_prefix('v').unwrap_or(text);
    let core = text.split('+').next()?;
    let (numbers, prerelease) = match core.split_once('-') {
        Some((numbers, pre)) => (numbers, Some(pre.split('.').collect())),
        None => (core, None),
    };
    let numbers: Vec<u64> = numbers
        .split('.')
        .map(|n| n.parse().ok())
        .collect::<Option<_>>()?;
    (numbers.len() == 3).then_some((numbers, prerelease))
}

fn compare_prerelease(a: &[&str], b: &[&str]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        let order = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(m), Ok(n)) => m.cmp(&n),
            (Ok(_), Err(_)) => Ordering::Less,
            (Err(_), Ok(_)) => Ordering::Greater,
            (Err(_), Err(_)) => x.cmp(y),
        };
        if order != Ordering::Equal {
            return order;
        }
    }
    a.len().cmp(&b.len())
}

/// `sha256:<hex>` of some bytes.
pub fn digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// What a template's manifest says besides its content.
#[derive(Debug, Clone, Default)]
pub struct Provenance {
    /// RFC 3339.
    pub created: String,
    /// The commit the template was built from.
    pub revision: Option<String>,
    /// The repository it was built from.
    pub source: Option<String>,
    /// The build that pushed it.
    pub build: Option<String>,
}

/// The manifest of one template, as the bytes to push (keys sorted, so equal inputs give equal
/// digests). `legacy` selects the config-media-type convention for registries that refuse
/// `artifactType`.
pub fn manifest(
    file_name: &str,
    content: &[u8],
    version: &str,
    provenance: &Provenance,
    extra: &BTreeMap<String, String>,
    legacy: bool,
) -> Vec<u8> {
    let layer_type = if file_name.ends_with(".json") {
        LAYER_JSON
    } else {
        LAYER_YAML
    };
    let mut annotations = extra.clone();
    annotations.insert(VERSION.into(), version.into());
    annotations.insert(TITLE.into(), file_name.into());
    annotations.insert(CREATED.into(), provenance.created.clone());
    for (key, value) in [
        (REVISION, &provenance.revision),
        (SOURCE, &provenance.source),
        (BUILD, &provenance.build),
    ] {
        if let Some(value) = value {
            annotations.insert(key.into(), value.clone());
        }
    }
    let config_type = if legacy { ARTIFACT_TYPE } else { EMPTY_CONFIG };
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": config_type, "digest": digest(EMPTY_JSON), "size": EMPTY_JSON.len()},
        "layers": [{
            "mediaType": layer_type,
            "digest": digest(content),
            "size": content.len(),
            "annotations": {TITLE: file_name},
        }],
        "annotations": annotations,
    });
    if !legacy {
        manifest["artifactType"] = ARTIFACT_TYPE.into();
    }
    serde_json::to_vec(&manifest).expect("a JSON value serializes")
}

/// What a pushed manifest holds, read back from the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The template layer's digest: equal content, whatever the annotations.
    pub content: String,
    pub file_name: Option<String>,
    pub version: Option<String>,
    pub created: Option<String>,
    pub build: Option<String>,
    /// Whether its version tag may move ([`OVERWRITE`]).
    pub movable: bool,
}

/// One OCI tag of a template repository with the manifest it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tagged {
    pub tag: String,
    /// The manifest's digest.
    pub manifest: String,
    pub stored: Stored,
}

impl Tagged {
    /// A build's version tag (the version its file name carried) stays where the build put it,
    /// unless the build allowed its version to move (`allowVersionOverwrite`).
    pub fn protected(&self) -> bool {
        self.stored.version.as_deref() == Some(self.tag.as_str()) && !self.stored.movable
    }
}

/// Reads a manifest pushed by [`manifest`]; anything else (an image, an index) is `None`.
pub fn stored(manifest: &[u8]) -> Option<Stored> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Manifest {
        artifact_type: Option<String>,
        config: Descriptor,
        layers: Vec<Descriptor>,
        #[serde(default)]
        annotations: BTreeMap<String, String>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Descriptor {
        media_type: String,
        digest: String,
    }
    let manifest: Manifest = serde_json::from_slice(manifest).ok()?;
    let artifact_type = manifest
        .artifact_type
        .as_deref()
        .unwrap_or(&manifest.config.media_type);
    let [layer] = manifest.layers.as_slice() else {
        return None;
    };
    let is_template = artifact_type == ARTIFACT_TYPE
        && (layer.media_type == LAYER_YAML || layer.media_type == LAYER_JSON);
    is_template.then(|| {
        let annotation = |key: &str| manifest.annotations.get(key).cloned();
        Stored {
            content: layer.digest.clone(),
            file_name: annotation(TITLE),
            version: annotation(VERSION),
            created: annotation(CREATED),
            build: annotation(BUILD),
            movable: annotation(OVERWRITE).is_some_and(|v| v == "true"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::model::DEFAULT_VERSION_REGEX;

    #[test]
    fn versions_come_from_file_names() {
        let default = version_regex(DEFAULT_VERSION_REGEX).unwrap();
        assert_eq!(
            version_of("dist/training-pipeline_v1.2.3.yaml", &default),
            Ok("1.2.3".into())
        );
        assert_eq!(
            version_of("inference_v0.10.0.json", &default),
            Ok("0.10.0".into())
        );
        let error = version_of("dist/training-pipeline.yaml", &default).unwrap_err();
        assert!(error.starts_with("dist/training-pipeline.yaml: the file name carries no version"));
        assert!(error.contains(DEFAULT_VERSION_REGEX), "{error}");
        // The directory is not searched, only the name.
        assert!(version_of("v_v1.0.0.yaml/x.yaml", &default).is_err());
        assert!(
            version_regex("_v.*")
                .unwrap_err()
                .contains("no capture group")
        );
        assert!(
            version_regex("(")
                .unwrap_err()
                .contains("invalid regular expression")
        );
    }

    fn target(paths: &[&str], max_size_bytes: u64) -> Target {
        Target {
            paths: paths.iter().map(|p| p.to_string()).collect(),
            repository: "localhost:5000/t".into(),
            version_regex: DEFAULT_VERSION_REGEX.into(),
            tags: Vec::new(),
            annotations: BTreeMap::new(),
            allow_version_overwrite: false,
            max_size_bytes,
        }
    }

    #[test]
    fn a_size_claimed_by_an_archive_header_is_checked_before_reading() {
        // A header that claims a terabyte (as a sparse file's does) and no data after it: refused
        // by the server's ceiling before anything is allocated, whatever maxSizeBytes allows.
        let mut header = tar::Header::new_gnu();
        header.set_path("workspace/dist/t_v1.0.0.yaml").unwrap();
        header.set_size(1 << 40);
        header.set_mode(0o644);
        header.set_cksum();
        let error = collect(
            header.as_bytes().as_slice(),
            &[target(&["dist/*"], u64::MAX)],
        )
        .unwrap_err();
        assert!(
            error.contains("is 1099511627776 bytes, more than the 67108864 bytes this server"),
            "{error}"
        );
    }

    #[test]
    fn matched_files_are_collected_from_the_workspace_archive() {
        let mut archive = tar::Builder::new(Vec::new());
        for (path, content) in [
            ("workspace/dist/b_v1.0.0.yaml", "b"),
            ("workspace/dist/a_v2.0.0.yaml", "a"),
            ("workspace/dist/nested/c_v1.0.0.yaml", "c"),
            ("workspace/README.md", "r"),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(content.len() as u64);
            header.set_mode(0o644);
            archive
                .append_data(&mut header, path, content.as_bytes())
                .unwrap();
        }
        let archive = archive.into_inner().unwrap();
        let targets = [
            target(&["dist/*.yaml"], 10),
            target(&["**/*.md", "dist/a*"], 10),
        ];
        let found = collect(archive.as_slice(), &targets).unwrap();
        let files = |i: usize| found[i].iter().map(|f| f.file.as_str()).collect::<Vec<_>>();
        assert_eq!(files(0), ["dist/a_v2.0.0.yaml", "dist/b_v1.0.0.yaml"]);
        assert_eq!(files(1), ["README.md", "dist/a_v2.0.0.yaml"]);
        assert_eq!(found[0][0].content, b"a");
        let error = collect(archive.as_slice(), &[target(&["dist/*"], 0)]).unwrap_err();
        assert!(
            error.contains("/workspace/dist/b_v1.0.0.yaml is 1 bytes"),
            "{error}"
        );
    }

    #[test]
    fn versions_sort_as_semantic_versions() {
        let mut versions = vec![
            "1.10.0",
            "1.9.0",
            "2.0.0",
            "2.0.0-rc.1",
            "2.0.0-rc.10",
            "2.0.0-beta",
            "nightly",
            "1.9.0+build.5",
            "0.1.0",
        ];
        versions.sort_by(|a, b| compare_versions(a, b));
        assert_eq!(
            versions,
            [
                "0.1.0",
                "1.9.0",
                "1.9.0+build.5",
                "1.10.0",
                "2.0.0-beta",
                "2.0.0-rc.1",
                "2.0.0-rc.10",
                "2.0.0",
                "nightly"
            ]
        );
    }

    #[test]
    fn manifests_carry_the_artifact_type_and_read_back() {
        let provenance = Provenance {
            created: "2026-11-23T10:00:00Z".into(),
            revision: Some("abc".into()),
            source: None,
            build: Some("b-1".into()),
        };
        let extra = BTreeMap::from([("team".to_string(), "ml".to_string())]);
        let bytes = manifest(
            "t_v1.0.0.yaml",
            b"a: 1\n",
            "1.0.0",
            &provenance,
            &extra,
            false,
        );
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value["artifactType"], ARTIFACT_TYPE);
        assert_eq!(value["config"]["mediaType"], EMPTY_CONFIG);
        assert_eq!(
            value["config"]["digest"],
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        assert_eq!(value["layers"][0]["mediaType"], LAYER_YAML);
        assert_eq!(value["annotations"][REVISION], "abc");
        assert_eq!(value["annotations"]["team"], "ml");
        assert!(value["annotations"].get(SOURCE).is_none());
        let read = stored(&bytes).unwrap();
        assert_eq!(read.content, digest(b"a: 1\n"));
        assert_eq!(read.version.as_deref(), Some("1.0.0"));
        assert_eq!(read.file_name.as_deref(), Some("t_v1.0.0.yaml"));
        assert_eq!(read.build.as_deref(), Some("b-1"));
        assert!(!read.movable);

        let legacy = manifest("t_v1.0.0.json", b"{}", "1.0.0", &provenance, &extra, true);
        let value: serde_json::Value = serde_json::from_slice(&legacy).unwrap();
        assert!(value.get("artifactType").is_none());
        assert_eq!(value["config"]["mediaType"], ARTIFACT_TYPE);
        assert_eq!(value["layers"][0]["mediaType"], LAYER_JSON);
        assert_eq!(stored(&legacy).unwrap().content, digest(b"{}"));
        assert_eq!(
            stored(br#"{"config":{"mediaType":"x","digest":"d"},"layers":[]}"#),
            None
        );
    }
}
