//! Turns a source tree into a [`BuildConfig`], as gcloud reads a config: every key in camelCase or
//! snake_case, unknown keys rejected with a "did you mean" hint, fields Cloud Build has but this
//! service cannot honour accepted with a warning, and a single value where a list is expected
//! accepted with a warning (real configs write `waitFor: step-a`).
//!
//! Decoding never stops at the first problem: a field of the wrong shape is reported and left at
//! its default, and the rest of the file is still read.

use std::collections::BTreeMap;
use std::time::Duration;

use super::duration;
use super::model::*;
use super::tree::{self, Node, Value};
use crate::core::diag::{Diagnostics, FieldPath, snake_case};

/// The largest disk a build may ask for, in GB (spec §2.3, the schema documentation).
pub const MAX_DISK_SIZE_GB: i64 = 4000;

/// Reads a whole config. The root must be a mapping.
pub fn build_config(root: &Node, diagnostics: &mut Diagnostics) -> BuildConfig {
    let Some(mut fields) = Fields::of(root, FieldPath::root(), diagnostics) else {
        return BuildConfig::default();
    };
    let config = BuildConfig {
        steps: fields.objects("steps", step),
        timeout: fields.duration("timeout"),
        queue_ttl: fields.duration("queueTtl"),
        substitutions: fields.string_map("substitutions"),
        tags: fields.strings("tags"),
        images: fields.strings("images"),
        options: fields.object("options", options).unwrap_or_default(),
        secrets: fields.objects("secrets", |f| KmsSecret {
            kms_key_name: f.string("kmsKeyName").unwrap_or_default(),
            secret_env: f.string_map("secretEnv"),
        }),
        available_secrets: fields
            .object("availableSecrets", available_secrets)
            .unwrap_or_default(),
        artifacts: fields.object("artifacts", artifacts).unwrap_or_default(),
        templates: fields.objects("templates", template_push),
        logs_bucket: fields.unsupported_string("logsBucket", "build logs stay on this machine"),
        service_account: fields
            .unsupported_string("serviceAccount", "steps run with the engine's credentials"),
        source: source(&mut fields),
    };
    fields.finish();
    config
}

/// Whether the config names a `source` to build (Cloud Build's `Source`: one of these kinds).
/// Its contents are not read: builder fetches no such source.
fn source(f: &mut Fields) -> bool {
    const KINDS: &[&str] = &[
        "storageSource",
        "repoSource",
        "gitSource",
        "storageSourceManifest",
        "connectedRepository",
        "developerConnectConfig",
    ];
    let named = f
        .object("source", |s| {
            for kind in KINDS {
                s.take(kind);
            }
        })
        .is_some();
    if named {
        f.warn_unsupported(
            "source",
            "builder fetches no Cloud Storage or repository source; `builder submit --no-source` \
             runs with an empty /workspace",
        );
    }
    named
}

fn step(f: &mut Fields) -> Step {
    Step {
        name: f.string("name").unwrap_or_default(),
        args: f.strings("args"),
        env: f.strings("env"),
        dir: f.string("dir"),
        id: f.string("id"),
        wait_for: f.strings("waitFor"),
        entrypoint: f.string("entrypoint"),
        secret_env: f.strings("secretEnv"),
        volumes: f.objects("volumes", volume),
        timeout: f.duration("timeout"),
        script: f.string("script"),
        allow_failure: f.bool("allowFailure").unwrap_or(false),
        allow_exit_codes: f.integers("allowExitCodes"),
        automap_substitutions: f.bool("automapSubstitutions"),
    }
}

fn volume(f: &mut Fields) -> Volume {
    Volume {
        name: f.string("name").unwrap_or_default(),
        path: f.string("path").unwrap_or_default(),
    }
}

fn options(f: &mut Fields) -> Options {
    let substitution_option =
        match f.enumeration("substitutionOption", &["MUST_MATCH", "ALLOW_LOOSE"]) {
            Some("ALLOW_LOOSE") => SubstitutionOption::AllowLoose,
            _ => SubstitutionOption::MustMatch,
        };
    const MACHINE_TYPES: &[&str] = &[
        "UNSPECIFIED",
        "N1_HIGHCPU_8",
        "N1_HIGHCPU_32",
        "E2_HIGHCPU_8",
        "E2_HIGHCPU_32",
        "E2_MEDIUM",
    ];
    const LOGGING: &[&str] = &[
        "LOGGING_UNSPECIFIED",
        "LEGACY",
        "GCS_ONLY",
        "STACKDRIVER_ONLY",
        "CLOUD_LOGGING_ONLY",
        "NONE",
    ];
    const HOST_ONLY: &str = "builds run on this machine";
    f.unsupported_enum("machineType", MACHINE_TYPES, HOST_ONLY);
    f.unsupported_enum("logging", LOGGING, "logs are kept by builder");
    f.unsupported_enum(
        "logStreamingOption",
        &["STREAM_DEFAULT", "STREAM_ON", "STREAM_OFF"],
        "logs are always streamed",
    );
    f.unsupported_enum(
        "requestedVerifyOption",
        &["NOT_VERIFIED", "VERIFIED"],
        "no provenance is generated",
    );
    f.unsupported_enum(
        "defaultLogsBucketBehavior",
        &[
            "DEFAULT_LOGS_BUCKET_BEHAVIOR_UNSPECIFIED",
            "REGIONAL_USER_OWNED_BUCKET",
            "LEGACY_BUCKET",
        ],
        "logs are kept by builder",
    );
    f.unsupported_enums(
        "sourceProvenanceHash",
        &["NONE", "SHA256", "MD5", "SHA512"],
        "no source provenance hashes are computed",
    );
    f.unsupported_integer("diskSizeGb", 0..=MAX_DISK_SIZE_GB, HOST_ONLY);
    f.unsupported_scalar("workerPool", HOST_ONLY);
    f.unsupported_scalar("pubsubTopic", "no Pub/Sub notifications are sent");
    if f.bool("enableStructuredLogging").is_some() {
        f.warn_unsupported("enableStructuredLogging", "logs are kept by builder");
    }
    let pool_name = f.object("pool", |pool| pool.string("name")).flatten();
    if pool_name.is_some() {
        f.warn_unsupported("pool", HOST_ONLY);
    }
    Options {
        env: f.strings("env"),
        secret_env: f.strings("secretEnv"),
        volumes: f.objects("volumes", volume),
        substitution_option,
        dynamic_substitutions: f.bool("dynamicSubstitutions").unwrap_or(false),
        automap_substitutions: f.bool("automapSubstitutions").unwrap_or(false),
        pool_name,
    }
}

fn available_secrets(f: &mut Fields) -> AvailableSecrets {
    AvailableSecrets {
        secret_manager: f.objects("secretManager", |s| SecretManagerSecret {
            version_name: s.string("versionName").unwrap_or_default(),
            env: s.string("env").unwrap_or_default(),
        }),
        inline: f.objects("inline", |s| InlineSecret {
            kms_key_name: s.string("kmsKeyName").unwrap_or_default(),
            env_map: s.string_map("envMap"),
        }),
    }
}

/// The upload kinds Cloud Build sends to Google services, with their string and list fields.
const UPLOADS: &[(&str, &[&str], &[&str])] = &[
    (
        "mavenArtifacts",
        &[
            "repository",
            "path",
            "deployFolder",
            "artifactId",
            "groupId",
            "version",
        ],
        &[],
    ),
    ("pythonPackages", &["repository"], &["paths"]),
    ("npmPackages", &["repository", "packagePath"], &[]),
    (
        "goModules",
        &[
            "repositoryName",
            "repositoryLocation",
            "repositoryProjectId",
            "sourcePath",
            "modulePath",
            "moduleVersion",
        ],
        &[],
    ),
    ("oci", &["file", "registryPath"], &["tags"]),
    ("genericArtifacts", &["folder", "registryPath"], &[]),
];

fn artifacts(f: &mut Fields) -> Artifacts {
    let images = f.strings("images");
    let objects = f.object("objects", |o| ArtifactObjects {
        location: o.string("location").unwrap_or_default(),
        paths: o.strings("paths"),
    });
    if objects.is_some() {
        f.warn_unsupported("objects", "there is no Cloud Storage to upload to");
    }
    let mut uploads = Vec::new();
    for &(kind, strings, lists) in UPLOADS {
        let found = f.objects(kind, |u| ArtifactUpload {
            kind,
            index: 0,
            fields: strings
                .iter()
                .filter_map(|&name| Some((name, u.string(name)?)))
                .collect(),
            lists: lists.iter().map(|&name| (name, u.strings(name))).collect(),
        });
        if !found.is_empty() {
            f.warn_unsupported(kind, "there is no Artifact Registry to upload to");
        }
        uploads.extend(
            found
                .into_iter()
                .enumerate()
                .map(|(index, upload)| ArtifactUpload { index, ..upload }),
        );
    }
    Artifacts {
        images,
        objects,
        uploads,
    }
}

fn template_push(f: &mut Fields) -> TemplatePush {
    TemplatePush {
        paths: f.strings("paths"),
        repository: f.string("repository").unwrap_or_default(),
        version_regex: f.string("versionRegex"),
        tags: f.strings("tags"),
        annotations: f.string_map("annotations"),
        allow_version_overwrite: f.bool("allowVersionOverwrite").unwrap_or(false),
        max_size_bytes: f.integer("maxSizeBytes"),
    }
}

/// Reads a document that is one mapping (a trigger file, a schedule file) with `read`, every
/// problem at its line and column. `Err` holds the diagnostics when there are errors; `Ok` carries
/// the warnings.
pub(crate) fn document<T>(
    bytes: &[u8],
    read: impl FnOnce(&mut Fields) -> T,
) -> Result<(T, Diagnostics), Diagnostics> {
    let mut diagnostics = Diagnostics::default();
    let text = String::from_utf8_lossy(bytes);
    let root = match tree::parse(text.strip_prefix('\u{feff}').unwrap_or(&text)) {
        Ok(root) => root,
        Err(e) => {
            diagnostics.error_at(&FieldPath::root(), e.pos, e.message);
            return Err(diagnostics);
        }
    };
    let value = Fields::of(&root, FieldPath::root(), &mut diagnostics).map(|mut f| {
        let value = read(&mut f);
        f.finish();
        value
    });
    diagnostics.locate(&root);
    match value {
        Some(value) if !diagnostics.has_errors() => Ok((value, diagnostics)),
        _ => Err(diagnostics),
    }
}

/// Reads the fields of one mapping, remembering which keys were asked for so that
/// [`Fields::finish`] can report the rest as unknown.
pub(crate) struct Fields<'a, 'd> {
    node: &'a Node,
    path: FieldPath,
    diagnostics: &'d mut Diagnostics,
    known: Vec<&'static str>,
}

impl<'a, 'd> Fields<'a, 'd> {
    pub(crate) fn of(
        node: &'a Node,
        path: FieldPath,
        diagnostics: &'d mut Diagnostics,
    ) -> Option<Self> {
        if !matches!(node.value, Value::Map(_)) {
            let message = if path == FieldPath::root() {
                format!(
                    "Could not parse as a dictionary: a build config must be a mapping, found {}",
                    node.kind()
                )
            } else {
                format!("expected a mapping, found {}", node.kind())
            };
            diagnostics.error_at(&path, node.pos, message);
            return None;
        }
        Some(Self {
            node,
            path,
            diagnostics,
            known: Vec::new(),
        })
    }

    /// The value of `name` (or its snake_case spelling), with its path; `None` when absent or null.
    pub(crate) fn take(&mut self, name: &'static str) -> Option<(&'a Node, FieldPath)> {
        self.known.push(name);
        let path = self.path.key(name);
        let snake = snake_case(name);
        let camel = self.node.get(name);
        let snaked = (snake != name).then(|| self.node.get(&snake)).flatten();
        if let (Some(_), Some(second)) = (camel, snaked) {
            self.diagnostics.error_at(
                &path,
                second.pos,
                format!("written both as `{name}` and as `{snake}`"),
            );
        }
        camel
            .or(snaked)
            .filter(|node| node.value != Value::Null)
            .map(|node| (node, path))
    }

    pub(crate) fn string(&mut self, name: &'static str) -> Option<String> {
        let (node, path) = self.take(name)?;
        self.scalar_text(node, &path, "a string")
    }

    fn scalar_text(&mut self, node: &Node, path: &FieldPath, expected: &str) -> Option<String> {
        match node.scalar() {
            Some(scalar) => Some(scalar.text.clone()),
            None => {
                self.diagnostics.error_at(
                    path,
                    node.pos,
                    format!("expected {expected}, found {}", node.kind()),
                );
                None
            }
        }
    }

    /// A list of strings; a single scalar is read as a one-element list, with a warning.
    pub(crate) fn strings(&mut self, name: &'static str) -> Vec<String> {
        let Some((node, path)) = self.take(name) else {
            return Vec::new();
        };
        match &node.value {
            Value::Seq(items) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| self.scalar_text(item, &path.index(i), "a string"))
                .collect(),
            Value::Scalar(scalar) => {
                self.diagnostics.warning(
                    &path,
                    format!(
                        "a single value where a list is expected; read as [{:?}] (write `{name}: [{}]`)",
                        scalar.text, scalar.text
                    ),
                );
                vec![scalar.text.clone()]
            }
            _ => {
                self.diagnostics.error_at(
                    &path,
                    node.pos,
                    format!("expected a list of strings, found {}", node.kind()),
                );
                Vec::new()
            }
        }
    }

    pub(crate) fn integer(&mut self, name: &'static str) -> Option<i64> {
        let (node, path) = self.take(name)?;
        self.integer_at(node, &path)
    }

    fn integer_at(&mut self, node: &Node, path: &FieldPath) -> Option<i64> {
        let text = self.scalar_text(node, path, "an integer")?;
        let parsed = text.parse::<i64>().ok();
        if parsed.is_none() {
            self.diagnostics.error_at(
                path,
                node.pos,
                format!("expected an integer, found {text:?}"),
            );
        }
        parsed
    }

    fn integers(&mut self, name: &'static str) -> Vec<i64> {
        let Some((node, path)) = self.take(name) else {
            return Vec::new();
        };
        let items = match &node.value {
            Value::Seq(items) => items.iter().collect(),
            Value::Scalar(_) => vec![node],
            _ => Vec::new(),
        };
        if items.is_empty() && node.value != Value::Seq(Vec::new()) {
            self.diagnostics.error_at(
                &path,
                node.pos,
                format!("expected a list of integers, found {}", node.kind()),
            );
        }
        items
            .into_iter()
            .enumerate()
            .filter_map(|(i, item)| self.integer_at(item, &path.index(i)))
            .collect()
    }

    pub(crate) fn bool(&mut self, name: &'static str) -> Option<bool> {
        let (node, path) = self.take(name)?;
        let text = self.scalar_text(node, &path, "true or false")?;
        match text.as_str() {
            "true" | "True" | "TRUE" => Some(true),
            "false" | "False" | "FALSE" => Some(false),
            _ => {
                self.diagnostics.error_at(
                    &path,
                    node.pos,
                    format!("expected true or false, found {text:?}"),
                );
                None
            }
        }
    }

    fn duration(&mut self, name: &'static str) -> Option<Duration> {
        let (node, path) = self.take(name)?;
        let text = self.scalar_text(node, &path, "a duration such as \"600s\"")?;
        match duration::parse(&text) {
            Ok(duration) => Some(duration),
            Err(message) => {
                self.diagnostics.error_at(&path, node.pos, message);
                None
            }
        }
    }

    /// A map of user-chosen keys to strings (`substitutions`, `secretEnv`, `envMap`): its keys are
    /// names, not fields, so they keep their spelling.
    pub(crate) fn string_map(&mut self, name: &'static str) -> BTreeMap<String, String> {
        let Some((node, path)) = self.take(name) else {
            return BTreeMap::new();
        };
        if !matches!(node.value, Value::Map(_)) {
            self.diagnostics.error_at(
                &path,
                node.pos,
                format!(
                    "expected a mapping of names to strings, found {}",
                    node.kind()
                ),
            );
            return BTreeMap::new();
        }
        let mut map = BTreeMap::new();
        for (key, value) in node.entries() {
            let Some(key) = self.scalar_text(key, &path, "a name") else {
                continue;
            };
            let entry_path = path.key(&key);
            let value = match value.value {
                Value::Null => Some(String::new()),
                _ => self.scalar_text(value, &entry_path, "a string"),
            };
            if let Some(value) = value {
                map.insert(key, value);
            }
        }
        map
    }

    pub(crate) fn object<T>(
        &mut self,
        name: &'static str,
        read: impl FnOnce(&mut Fields) -> T,
    ) -> Option<T> {
        let (node, path) = self.take(name)?;
        let mut fields = Fields::of(node, path, self.diagnostics)?;
        let value = read(&mut fields);
        fields.finish();
        Some(value)
    }

    /// A list of mappings; a single mapping is read as a one-element list, with a warning.
    pub(crate) fn objects<T>(
        &mut self,
        name: &'static str,
        mut read: impl FnMut(&mut Fields) -> T,
    ) -> Vec<T> {
        let Some((node, path)) = self.take(name) else {
            return Vec::new();
        };
        let items: Vec<&Node> = match &node.value {
            Value::Seq(items) => items.iter().collect(),
            Value::Map(_) => {
                self.diagnostics.warning(
                    &path,
                    "a single mapping where a list is expected; read as a list of one",
                );
                vec![node]
            }
            _ => {
                self.diagnostics.error_at(
                    &path,
                    node.pos,
                    format!("expected a list, found {}", node.kind()),
                );
                Vec::new()
            }
        };
        items
            .into_iter()
            .enumerate()
            .filter_map(|(i, item)| {
                if item.value == Value::Null {
                    // `- # comment` followed by `- name: …` makes an empty item; skipping it is
                    // what the author meant.
                    self.diagnostics.warning(
                        &path.index(i),
                        "an empty list item (a comment after `-` does not start the item); skipped",
                    );
                    return None;
                }
                let mut fields = Fields::of(item, path.index(i), self.diagnostics)?;
                let value = read(&mut fields);
                fields.finish();
                Some(value)
            })
            .collect()
    }

    pub(crate) fn enumeration(
        &mut self,
        name: &'static str,
        allowed: &[&'static str],
    ) -> Option<&'static str> {
        let (node, path) = self.take(name)?;
        let text = self.scalar_text(node, &path, "one of the listed values")?;
        let found = allowed
            .iter()
            .find(|a| a.eq_ignore_ascii_case(&text))
            .copied();
        if found.is_none() {
            self.diagnostics.error_at(
                &path,
                node.pos,
                format!(
                    "unknown value {text:?}; expected one of {}{}",
                    allowed.join(", "),
                    hint(&text, allowed)
                ),
            );
        }
        found
    }

    /// Checks an accepted-but-ignored enum field's value, then warns that it is ignored.
    fn unsupported_enum(&mut self, name: &'static str, allowed: &[&'static str], why: &str) {
        if self.enumeration(name, allowed).is_some() {
            self.warn_unsupported(name, why);
        }
    }

    fn unsupported_enums(&mut self, name: &'static str, allowed: &[&'static str], why: &str) {
        let values = self.strings(name);
        let path = self.path.key(name);
        for (i, value) in values.iter().enumerate() {
            if !allowed.contains(&value.as_str()) {
                self.diagnostics.error(
                    &path.index(i),
                    format!(
                        "unknown value {value:?}; expected one of {}",
                        allowed.join(", ")
                    ),
                );
            }
        }
        if !values.is_empty() {
            self.warn_unsupported(name, why);
        }
    }

    /// Checks an accepted-but-ignored integer field (written as a number or a string, as the
    /// API's int64 is) against the range Cloud Build accepts, then warns that it is ignored.
    fn unsupported_integer(
        &mut self,
        name: &'static str,
        range: std::ops::RangeInclusive<i64>,
        why: &str,
    ) {
        let Some((node, path)) = self.take(name) else {
            return;
        };
        let Some(value) = self.integer_at(node, &path) else {
            return;
        };
        if range.contains(&value) {
            self.warn_unsupported(name, why);
        } else {
            self.diagnostics.error_at(
                &path,
                node.pos,
                format!(
                    "{name} {value} is out of range: Cloud Build accepts {} to {}",
                    range.start(),
                    range.end()
                ),
            );
        }
    }

    pub(crate) fn unsupported_scalar(&mut self, name: &'static str, why: &str) {
        if self.string(name).is_some() {
            self.warn_unsupported(name, why);
        }
    }

    fn unsupported_string(&mut self, name: &'static str, why: &str) -> Option<String> {
        let value = self.string(name);
        if value.is_some() {
            self.warn_unsupported(name, why);
        }
        value
    }

    pub(crate) fn warn_unsupported(&mut self, name: &'static str, why: &str) {
        self.diagnostics.warning(
            &self.path.key(name),
            format!("not honoured by builder ({why}); ignored"),
        );
    }

    /// Where this mapping is, for problems found in its values after reading them.
    pub(crate) fn path(&self) -> &FieldPath {
        &self.path
    }

    pub(crate) fn diagnostics(&mut self) -> &mut Diagnostics {
        self.diagnostics
    }

    /// Reports every key that no reader asked for.
    pub(crate) fn finish(self) {
        for (key, _) in self.node.entries() {
            let Some(text) = key.scalar().map(|s| s.text.as_str()) else {
                self.diagnostics
                    .error_at(&self.path, key.pos, "a field name must be a string");
                continue;
            };
            let is_known = self
                .known
                .iter()
                .any(|&k| k == text || snake_case(k) == text);
            if !is_known {
                self.diagnostics.error_at(
                    &self.path.key(text),
                    key.pos,
                    format!("unused: unknown field{}", hint(text, &self.known)),
                );
            }
        }
    }
}

/// `; did you mean "waitFor"?` when a candidate is close enough to be a typo.
pub fn hint(word: &str, candidates: &[&str]) -> String {
    let lower = word.to_ascii_lowercase().replace('_', "");
    candidates
        .iter()
        .map(|c| (strsim::levenshtein(&lower, &c.to_ascii_lowercase()), c))
        .filter(|(distance, c)| *distance <= (c.len() / 3).max(1))
        .min()
        .map(|(_, c)| format!("; did you mean \"{c}\"?"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::tree;

    fn decode(text: &str) -> (BuildConfig, String) {
        let root = tree::parse(text).unwrap();
        let mut diagnostics = Diagnostics::default();
        let config = build_config(&root, &mut diagnostics);
        diagnostics.locate(&root);
        (config, diagnostics.render("c.yaml"))
    }

    #[test]
    fn reads_every_spelling() {
        let (config, out) = decode(
            "steps:\n- name: a\n  wait_for: ['-']\n  allowFailure: true\n  allow_exit_codes: [1, 2]\n\
             options:\n  substitution_option: ALLOW_LOOSE\n  dynamic_substitutions: true\n\
             timeout: 45m\n",
        );
        assert_eq!(out, "");
        assert_eq!(config.steps[0].wait_for, ["-"]);
        assert!(config.steps[0].allow_failure);
        assert_eq!(config.steps[0].allow_exit_codes, [1, 2]);
        assert_eq!(
            config.options.substitution_option,
            SubstitutionOption::AllowLoose
        );
        assert!(config.options.dynamic_substitutions);
        assert_eq!(config.timeout, Some(Duration::from_secs(2700)));
    }

    #[test]
    fn unknown_fields_get_a_hint() {
        let (_, out) = decode("steps:\n- name: a\n  waitfor: [b]\n  argz: [x]\nstep: []\n");
        assert_eq!(
            out,
            "c.yaml:3:3: steps[0].waitfor: unused: unknown field; did you mean \"waitFor\"?\n\
             c.yaml:4:3: steps[0].argz: unused: unknown field; did you mean \"args\"?\n\
             c.yaml:5:1: step: unused: unknown field; did you mean \"steps\"?\n"
        );
    }

    #[test]
    fn single_values_become_lists_with_a_warning() {
        let (config, out) = decode("steps:\n- name: a\n  waitFor: step-a\n");
        assert_eq!(config.steps[0].wait_for, ["step-a"]);
        assert!(out.starts_with("c.yaml:3:12: warning: steps[0].waitFor: a single value"));
    }

    #[test]
    fn unsupported_fields_warn_and_bad_enums_fail() {
        let (config, out) = decode(
            "steps: [{name: a}]\nlogsBucket: gs://b\noptions:\n  machineType: E2_HIGHCPU_8\n  logging: LOUD\n  pool: {name: p}\n",
        );
        assert_eq!(config.logs_bucket.as_deref(), Some("gs://b"));
        assert_eq!(config.options.pool_name.as_deref(), Some("p"));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert!(lines[0].starts_with("c.yaml:2:13: warning: logsBucket: not honoured"));
        assert!(lines[2].starts_with("c.yaml:5:12: options.logging: unknown value \"LOUD\""));
    }

    /// Accepted-but-ignored fields whose values Cloud Build bounds are bounded here too.
    #[test]
    fn ignored_fields_are_range_checked() {
        let (_, out) = decode(
            "steps: [{name: a}]\noptions:\n  diskSizeGb: '4000'\n  enableStructuredLogging: true\n",
        );
        assert!(
            out.contains("c.yaml:3:15: warning: options.diskSizeGb: not honoured"),
            "{out}"
        );
        assert!(
            out.contains("warning: options.enableStructuredLogging: not honoured"),
            "{out}"
        );
        let (_, out) = decode(
            "steps: [{name: a}]\noptions:\n  diskSizeGb: 4001\n  enableStructuredLogging: sure\n",
        );
        assert_eq!(
            out,
            "c.yaml:3:15: options.diskSizeGb: diskSizeGb 4001 is out of range: Cloud Build \
             accepts 0 to 4000\n\
             c.yaml:4:28: options.enableStructuredLogging: expected true or false, found \"sure\"\n"
        );
        let (_, out) = decode("steps: [{name: a}]\noptions: {diskSizeGb: -1}\n");
        assert!(out.contains("diskSizeGb -1 is out of range"), "{out}");
        let (_, out) = decode("steps: [{name: a}]\noptions: {diskSizeGb: 200GB}\n");
        assert!(
            out.contains("expected an integer, found \"200GB\""),
            "{out}"
        );
    }

    #[test]
    fn a_source_is_read_and_warned_about() {
        let (config, out) = decode("steps: [{name: a}]\nsource: {repoSource: {repoName: r}}\n");
        assert!(config.source);
        assert!(
            out.starts_with("c.yaml:2:9: warning: source: not honoured"),
            "{out}"
        );
        let (_, out) = decode("steps: [{name: a}]\nsource: {s3: {}}\n");
        assert!(out.contains("source.s3: unused: unknown field"), "{out}");
    }

    #[test]
    fn wrong_shapes_are_reported_and_reading_goes_on() {
        let (config, out) =
            decode("steps:\n- name: [a]\n  args: {x: 1}\n- name: b\ntimeout: soon\n");
        assert_eq!(config.steps.len(), 2);
        assert_eq!(config.steps[1].name, "b");
        assert_eq!(
            out,
            "c.yaml:2:9: steps[0].name: expected a string, found a list\n\
             c.yaml:3:9: steps[0].args: expected a list of strings, found a mapping\n\
             c.yaml:5:10: timeout: invalid duration \"soon\"; write seconds such as \"600s\" or units such as \"45m\" or \"2h\"\n"
        );
        let (config, out) = decode("steps:\n- # first\n- name: a\n");
        assert_eq!(config.steps.len(), 1);
        assert!(
            out.contains(": warning: steps[0]: an empty list item"),
            "{out}"
        );
        let (_, out) = decode("- a\n- b\n");
        assert_eq!(
            out,
            "c.yaml:1:1: Could not parse as a dictionary: a build config must be a mapping, found a list\n"
        );
    }
}
