//! The Kubeflow Pipelines registry protocol over builder's template store, as the `kfp` SDK's
//! `RegistryClient` speaks it with its default context (`kfp/registry/context/default_pkg_dev.json`):
//! what an upload must hold (a pipeline spec with `pipelineInfo.name`), the names versions and
//! tags have, how a template repository's OCI tags read as KFP versions and tags, which tags the
//! API may not move, and the JSON shapes the SDK reads. No I/O; `registry` moves the bytes.
//!
//! The mapping. A KFP package is one OCI repository, `{root}/{project}/{repository}/{package}`
//! on the server's registry; a KFP version is the `sha256:` digest of a template's bytes (the
//! layer's digest, whatever the manifest around it says); every OCI tag that names a template is
//! a KFP tag of its version, except the anchors: a version uploaded through the API is kept by
//! the OCI tag `sha256-<hex>` ([`anchor`]), which the KFP view shows as the version itself.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::core::templates::{self, Tagged};

/// What the SDK puts before a version's hex digits, and refuses in a tag.
pub const VERSION_PREFIX: &str = "sha256:";
/// What an anchor tag starts with: a version's digest with `-` for `:` (tags cannot hold `:`).
const ANCHOR_PREFIX: &str = "sha256-";

/// Why a KFP request is refused, before or after looking at the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The request itself is wrong: 400.
    Invalid(String),
    /// The store's state does not allow it: 409.
    Conflict(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Invalid(message) | Self::Conflict(message) => f.write_str(message),
        }
    }
}

/// The package an uploaded pipeline spec names: `pipelineInfo.name` of its first YAML document
/// (the compiler writes a platform spec as a second one) or of its JSON.
pub fn package_name(content: &[u8]) -> Result<String, Refusal> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Spec {
        pipeline_info: Option<Info>,
    }
    #[derive(Deserialize)]
    struct Info {
        name: Option<String>,
    }
    let not_a_spec = |why: &str| {
        Refusal::Invalid(format!(
            "the uploaded file is not a KFP pipeline spec ({why}); upload the YAML that \
             kfp.compiler.Compiler().compile wrote"
        ))
    };
    let text = std::str::from_utf8(content).map_err(|_| not_a_spec("it is not UTF-8 text"))?;
    let documents: Vec<serde_json::Value> = serde_saphyr::from_multiple(text)
        .map_err(|e| not_a_spec(&format!("it is not YAML: {}", first_line(&e.to_string()))))?;
    let spec = documents
        .into_iter()
        .next()
        .and_then(|document| serde_json::from_value::<Spec>(document).ok());
    let name = spec
        .and_then(|spec| spec.pipeline_info?.name)
        .ok_or_else(|| not_a_spec("it has no pipelineInfo.name"))?;
    check_name("package", &name)?;
    Ok(name)
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}

/// A project, repository or package name is one path component of an OCI repository: lowercase
/// letters and digits separated by single `.`, `_` or `-` (the KFP compiler writes
/// `pipelineInfo.name` so). `packages` is the API's own word, not a package.
pub fn check_name(what: &str, name: &str) -> Result<(), Refusal> {
    let component = name.len() <= 128
        && name.split(['.', '_', '-']).all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        });
    if component && !(what == "package" && name == "packages") {
        Ok(())
    } else {
        Err(Refusal::Invalid(format!(
            "{name:?} is not a {what} name builder can store: lowercase letters and digits \
             separated by single '.', '_' or '-' (a package's is the pipeline spec's \
             pipelineInfo.name)"
        )))
    }
}

/// A tag as the API may set it: a registry tag that does not look like a version.
pub fn check_tag(tag: &str) -> Result<(), Refusal> {
    if tag.starts_with(VERSION_PREFIX) || tag.starts_with(ANCHOR_PREFIX) {
        return Err(Refusal::Invalid(format!(
            "{tag:?} is not a tag: names starting with sha256 are versions"
        )));
    }
    if !templates::is_tag(tag) {
        return Err(Refusal::Invalid(format!(
            "{tag:?} is not a valid tag: it must match ^[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}$"
        )));
    }
    Ok(())
}

/// The upload form's `tags` field: comma-separated, as `upload_pipeline` joins a list.
pub fn upload_tags(field: &str) -> Result<Vec<String>, Refusal> {
    let mut tags: Vec<String> = Vec::new();
    for tag in field.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        check_tag(tag)?;
        if !tags.iter().any(|t| t == tag) {
            tags.push(tag.to_string());
        }
    }
    Ok(tags)
}

/// A version as the SDK writes it: `sha256:` and 64 lowercase hex digits.
pub fn check_version(version: &str) -> Result<(), Refusal> {
    let hex = version.strip_prefix(VERSION_PREFIX).unwrap_or_default();
    if hex.len() == 64
        && hex
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    {
        Ok(())
    } else {
        Err(Refusal::Invalid(format!(
            "{version:?} is not a version: versions are sha256: and 64 hex digits"
        )))
    }
}

/// The version a tag request names: `packages/{package}/versions/{version}`.
pub fn requested_version(package: &str, named: &str) -> Result<String, Refusal> {
    let version = named
        .strip_prefix(&format!("packages/{package}/versions/"))
        .ok_or_else(|| {
            Refusal::Invalid(format!(
                "the tag's version {named:?} is not of the form packages/{package}/versions/sha256:..."
            ))
        })?;
    check_version(version)?;
    Ok(version.to_string())
}

/// The OCI tag that keeps a version uploaded through the API.
pub fn anchor(version: &str) -> String {
    version.replacen(VERSION_PREFIX, ANCHOR_PREFIX, 1)
}

fn is_anchor(tag: &str) -> bool {
    tag.starts_with(ANCHOR_PREFIX)
}

/// One KFP version: a template's content, with the tags that name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// `sha256:` of the template's bytes.
    pub digest: String,
    /// The KFP tags, anchors left out, sorted.
    pub tags: Vec<String>,
    /// A tag the registry can read the content by (an anchor if there is one).
    pub reference: String,
    /// The earliest creation time its manifests record, RFC 3339.
    pub created: Option<String>,
    pub build: Option<String>,
    pub file: Option<String>,
}

/// The versions of one repository, oldest first, from its tags.
pub fn versions(tagged: &[Tagged]) -> Vec<Version> {
    let mut by_content: BTreeMap<&str, Version> = BTreeMap::new();
    for entry in tagged {
        let version = by_content
            .entry(entry.stored.content.as_str())
            .or_insert_with(|| Version {
                digest: entry.stored.content.clone(),
                tags: Vec::new(),
                reference: entry.tag.clone(),
                created: None,
                build: None,
                file: None,
            });
        if is_anchor(&entry.tag) {
            version.reference = entry.tag.clone();
        } else {
            version.tags.push(entry.tag.clone());
        }
        // The earliest manifest is the one that brought the content: its build and file name.
        let earlier = match (&entry.stored.created, &version.created) {
            (Some(this), Some(seen)) => this < seen,
            (Some(_), None) => true,
            (None, _) => version.file.is_none(),
        };
        if earlier {
            version.created = entry.stored.created.clone().or(version.created.take());
            version.build = entry.stored.build.clone();
            version.file = entry.stored.file_name.clone();
        }
    }
    let mut versions: Vec<Version> = by_content.into_values().collect();
    for version in &mut versions {
        version.tags.sort();
    }
    versions.sort_by(|a, b| a.created.cmp(&b.created).then(a.digest.cmp(&b.digest)));
    versions
}

/// Whether `tag` may be set to `version` (the content digest) over what it names now: a tag that
/// names other content moves unless it is a protected version tag.
pub fn may_move(tag: &str, version: &str, tagged: &[Tagged]) -> Result<(), Refusal> {
    match tagged.iter().find(|t| t.tag == tag) {
        Some(current) if current.stored.content != version && current.protected() => {
            Err(Refusal::Conflict(protected(tag, current)))
        }
        _ => Ok(()),
    }
}

/// Whether `tag` may be deleted.
pub fn may_delete(tag: &str, tagged: &[Tagged]) -> Result<(), Refusal> {
    match tagged.iter().find(|t| t.tag == tag) {
        Some(current) if current.protected() => Err(Refusal::Conflict(protected(tag, current))),
        _ => Ok(()),
    }
}

fn protected(tag: &str, current: &Tagged) -> String {
    let build = current
        .stored
        .build
        .as_deref()
        .map_or(String::new(), |b| format!(" by build {b}"));
    format!(
        "tag {tag:?} is the version a build's templates: pushed{build} from its file name; \
         versions are immutable unless the build sets allowVersionOverwrite: true"
    )
}

/// Whether `version` may be deleted: only when no tag names it.
pub fn may_delete_version(version: &Version) -> Result<(), Refusal> {
    if version.tags.is_empty() {
        Ok(())
    } else {
        Err(Refusal::Conflict(format!(
            "version {} is tagged {}; delete or move its tags first",
            version.digest,
            version.tags.join(", ")
        )))
    }
}

/// The JSON shapes the SDK reads.
pub mod wire {
    use super::Version;
    use serde::Serialize;

    #[derive(Debug, Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Package {
        pub name: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub create_time: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub update_time: Option<String>,
    }

    #[derive(Debug, Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct PackageVersion {
        pub name: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub create_time: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub update_time: Option<String>,
        pub metadata: VersionMetadata,
    }

    /// What builder knows of a version besides its name: its tags and where it came from.
    #[derive(Debug, Serialize)]
    #[serde(rename_all = "camelCase")]
    pub struct VersionMetadata {
        pub tags: Vec<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub build: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub file_name: Option<String>,
    }

    #[derive(Debug, Serialize)]
    pub struct Tag {
        pub name: String,
        pub version: String,
    }

    pub fn package(name: &str, versions: &[Version]) -> Package {
        let times = versions.iter().filter_map(|v| v.created.clone());
        Package {
            name: format!("packages/{name}"),
            create_time: times.clone().min(),
            update_time: times.max(),
        }
    }

    pub fn version(package: &str, version: &Version) -> PackageVersion {
        PackageVersion {
            name: version_name(package, &version.digest),
            create_time: version.created.clone(),
            update_time: version.created.clone(),
            metadata: VersionMetadata {
                tags: version.tags.clone(),
                build: version.build.clone(),
                file_name: version.file.clone(),
            },
        }
    }

    pub fn tag(package: &str, tag: &str, digest: &str) -> Tag {
        Tag {
            name: format!("packages/{package}/tags/{tag}"),
            version: version_name(package, digest),
        }
    }

    pub fn version_name(package: &str, digest: &str) -> String {
        format!("packages/{package}/versions/{digest}")
    }
}

/// The upload form as `upload_pipeline` posts it (`multipart/form-data`): the file (`content`)
/// with its file name, and the `tags` field.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct UploadForm {
    pub content: Option<Vec<u8>>,
    pub file_name: Option<String>,
    pub tags: String,
}

/// Reads a `multipart/form-data` body (RFC 7578) given its `Content-Type`; parts other than
/// `content` and `tags` are ignored.
pub fn upload_form(content_type: &str, body: &[u8]) -> Result<UploadForm, Refusal> {
    let invalid = |why: &str| {
        Refusal::Invalid(format!(
            "the upload is not the form upload_pipeline sends (multipart/form-data with a \
             `content` file): {why}"
        ))
    };
    let (kind, parameters) = content_type.split_once(';').unwrap_or((content_type, ""));
    if !kind.trim().eq_ignore_ascii_case("multipart/form-data") {
        return Err(invalid(&format!("its Content-Type is {content_type:?}")));
    }
    let boundary = parameters
        .split(';')
        .filter_map(|p| p.trim().split_once('='))
        .find(|(key, _)| key.eq_ignore_ascii_case("boundary"))
        .map(|(_, value)| value.trim_matches('"'))
        .filter(|b| !b.is_empty())
        .ok_or_else(|| invalid("no boundary"))?;
    // Every delimiter but the first follows a CRLF; with one in front, all look alike.
    let delimiter = format!("\r\n--{boundary}");
    let mut text = Vec::with_capacity(body.len() + 2);
    text.extend_from_slice(b"\r\n");
    text.extend_from_slice(body);
    let finder = aho_corasick::AhoCorasick::new([delimiter.as_bytes()])
        .map_err(|_| invalid("a boundary too long"))?;
    // A delimiter is the boundary followed by CRLF, or by `--` at the end; the same bytes
    // followed by anything else are content.
    let delimiters: Vec<(usize, usize)> = finder
        .find_iter(&text)
        .filter(|m| text[m.end()..].starts_with(b"\r\n") || text[m.end()..].starts_with(b"--"))
        .map(|m| (m.start(), m.end()))
        .collect();
    if delimiters.is_empty() {
        return Err(invalid("no part"));
    }
    let mut form = UploadForm::default();
    for (i, &(_, start)) in delimiters.iter().enumerate() {
        let end = delimiters.get(i + 1).map_or(text.len(), |d| d.0);
        let part = &text[start..end];
        if part.starts_with(b"--") {
            break;
        }
        let part = part
            .strip_prefix(b"\r\n")
            .ok_or_else(|| invalid("a part without headers"))?;
        let split = aho_corasick::AhoCorasick::new([b"\r\n\r\n"])
            .map_err(|_| invalid("a part's headers"))?
            .find(part)
            .ok_or_else(|| invalid("a part's headers do not end"))?;
        let headers = String::from_utf8_lossy(&part[..split.start()]);
        let value = &part[split.end()..];
        let disposition = headers
            .lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-disposition"))
            .map(|(_, value)| value.to_string())
            .unwrap_or_default();
        let parameter = |key: &str| {
            disposition
                .split(';')
                .filter_map(|p| p.trim().split_once('='))
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v.trim_matches('"').to_string())
        };
        match parameter("name").as_deref() {
            Some("content") => {
                form.content = Some(value.to_vec());
                form.file_name = parameter("filename");
            }
            Some("tags") => form.tags = String::from_utf8_lossy(value).into_owned(),
            _ => {}
        }
    }
    Ok(form)
}

/// A tag request's body, as `create_tag` and `update_tag` send it.
#[derive(Debug, Deserialize)]
pub struct TagRequest {
    pub version: String,
}

/// The answer to a delete: `delete_package` and `delete_version` read `done`.
#[derive(Debug, Serialize)]
pub struct Done {
    pub done: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::templates::Stored;

    fn stored(content: &str, version: &str, created: &str, movable: bool) -> Stored {
        Stored {
            content: content.into(),
            file_name: Some(format!("p_{version}.yaml")),
            version: Some(version.into()),
            created: Some(created.into()),
            build: Some("b1".into()),
            movable,
        }
    }

    fn tagged(tag: &str, stored: &Stored) -> Tagged {
        Tagged {
            tag: tag.into(),
            manifest: format!("m-{}", stored.content),
            stored: stored.clone(),
        }
    }

    #[test]
    fn the_package_is_the_specs_pipeline_name() {
        let spec = b"# PIPELINE DEFINITION\n# Name: training-pipeline\ncomponents: {}\npipelineInfo:\n  name: training-pipeline\nschemaVersion: 2.1.0\n---\nplatforms:\n  kubernetes: {}\n";
        assert_eq!(package_name(spec), Ok("training-pipeline".into()));
        assert_eq!(
            package_name(br#"{"pipelineInfo": {"name": "p"}}"#),
            Ok("p".into())
        );
        let error = package_name(b"steps: []\n").unwrap_err().to_string();
        assert!(error.contains("no pipelineInfo.name"), "{error}");
        let error = package_name(b"pipelineInfo:\n  name: Has Spaces\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("not a package name"), "{error}");
        assert!(package_name(b"\xff\xfe").is_err());
        assert!(package_name(b"a: [").is_err());
    }

    #[test]
    fn the_upload_form_is_read_as_requests_writes_it() {
        let body = b"--b0\r\nContent-Disposition: form-data; name=\"tags\"\r\n\r\nv1,latest\r\n\
            --b0\r\nContent-Disposition: form-data; name=\"content\"; filename=\"p.yaml\"\r\n\
            \r\na: 1\r\n--b0x\r\n\r\n--b0--\r\n";
        let form = upload_form("multipart/form-data; boundary=b0", body).unwrap();
        assert_eq!(form.tags, "v1,latest");
        assert_eq!(form.file_name.as_deref(), Some("p.yaml"));
        assert_eq!(form.content.as_deref(), Some(&b"a: 1\r\n--b0x\r\n"[..]));
        assert!(upload_form("application/json", body).is_err());
        assert!(upload_form("multipart/form-data", body).is_err());
        let none = upload_form("multipart/form-data; boundary=\"zz\"", body).unwrap_err();
        assert!(none.to_string().contains("no part"), "{none}");
    }

    #[test]
    fn tags_and_versions_are_told_apart() {
        assert_eq!(
            upload_tags("v1, latest,,v1"),
            Ok(vec!["v1".into(), "latest".into()])
        );
        assert!(upload_tags("sha256:abc").is_err());
        assert!(upload_tags("sha256-abc").is_err());
        assert!(upload_tags("a/b").is_err());
        let version = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            requested_version("p", &format!("packages/p/versions/{version}")),
            Ok(version.clone())
        );
        assert!(requested_version("q", &format!("packages/p/versions/{version}")).is_err());
        assert!(check_version("sha256:ABC").is_err());
        assert_eq!(anchor(&version), format!("sha256-{}", "a".repeat(64)));
    }

    #[test]
    fn tags_group_by_content_and_version_tags_are_protected() {
        let built = stored("sha256:1", "1.0.0", "2026-01-01T00:00:00Z", false);
        let uploaded = Stored {
            build: None,
            ..stored("sha256:2", "sha256:2", "2026-01-02T00:00:00Z", false)
        };
        let tags = [
            tagged("1.0.0", &built),
            tagged("latest", &built),
            tagged("sha256-2", &uploaded),
            tagged("v2", &uploaded),
        ];
        let versions = versions(&tags);
        assert_eq!(versions.len(), 2);
        assert_eq!(versions[0].digest, "sha256:1");
        assert_eq!(versions[0].tags, ["1.0.0", "latest"]);
        assert_eq!(versions[0].build.as_deref(), Some("b1"));
        assert_eq!(versions[1].tags, ["v2"]);
        assert_eq!(versions[1].reference, "sha256-2");

        assert!(may_move("latest", "sha256:2", &tags).is_ok());
        assert!(may_move("1.0.0", "sha256:1", &tags).is_ok());
        let refused = may_move("1.0.0", "sha256:2", &tags).unwrap_err();
        assert!(matches!(refused, Refusal::Conflict(_)));
        assert!(refused.to_string().contains("allowVersionOverwrite"));
        assert!(may_delete("1.0.0", &tags).is_err());
        assert!(may_delete("latest", &tags).is_ok());
        let movable = [tagged(
            "1.0.0",
            &stored("sha256:1", "1.0.0", "2026-01-01T00:00:00Z", true),
        )];
        assert!(may_move("1.0.0", "sha256:2", &movable).is_ok());
        assert!(may_delete_version(&versions[1]).is_err());
    }

    #[test]
    fn the_wire_shapes_are_the_sdks() {
        let built = stored("sha256:1", "1.0.0", "2026-01-01T00:00:00Z", false);
        let versions = versions(&[tagged("1.0.0", &built)]);
        let json = serde_json::to_value(wire::version("p", &versions[0])).unwrap();
        assert_eq!(json["name"], "packages/p/versions/sha256:1");
        assert_eq!(json["createTime"], "2026-01-01T00:00:00Z");
        assert_eq!(json["metadata"]["tags"][0], "1.0.0");
        let json = serde_json::to_value(wire::package("p", &versions)).unwrap();
        assert_eq!(json["updateTime"], "2026-01-01T00:00:00Z");
        let json = serde_json::to_value(wire::tag("p", "latest", "sha256:1")).unwrap();
        assert_eq!(json["version"], "packages/p/versions/sha256:1");
    }
}
