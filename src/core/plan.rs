//! Planning: a validated config plus the substitution values of one build (its context, built-ins
//! and overrides) become a [`ResolvedBuild`]: every field substituted, every step with its final
//! image, arguments, full environment, working directory, volumes and the steps it waits for.
//!
//! Substitution follows Cloud Build (spec §4): references are classified on the written template,
//! MUST_MATCH is checked in both directions unless the build is loose, trigger builds are always
//! loose and dynamic, and substituted image names, tags and locations are checked afterwards.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::core::alias::Aliases;
use crate::core::config::model::{
    BuildConfig, DEFAULT_TEMPLATE_LIMIT, DEFAULT_VERSION_REGEX, SubstitutionOption, Volume,
};
use crate::core::config::tree::MAX_EXPANDED_BYTES;
use crate::core::config::validate::{self, check_image, check_step_name, clean, clean_tags};
use crate::core::config::{self, Loaded};
use crate::core::diag::{Diagnostics, FieldPath};
use crate::core::glob::Glob;
use crate::core::substitute::{self, Values};
use crate::core::{image, templates};

/// Where `/workspace` and `HOME` live inside every step, as on Cloud Build.
pub const WORKSPACE: &str = "/workspace";
pub const HOME: &str = "/builder/home";
pub const BUILDER_OUTPUT: &str = "/builder/outputs";

/// How the build was started: a trigger forces ALLOW_LOOSE and dynamic substitutions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Context {
    #[default]
    Manual,
    Trigger,
}

/// The built-ins this machine supplies to every build, whoever starts it: the build's id, the
/// project (`--project`, `BUILDER_PROJECT`) and `local` as the region the build runs in.
pub fn machine_built_ins(project_id: &str, build_id: &str) -> Values {
    Values::from([
        ("BUILD_ID".to_string(), build_id.to_string()),
        ("PROJECT_ID".to_string(), project_id.to_string()),
        ("LOCATION".to_string(), "local".to_string()),
    ])
}

/// The values one build supplies besides its config.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub context: Context,
    /// Built-in values the source or the server knows (`BUILD_ID`, `COMMIT_SHA`, `BRANCH_NAME`…).
    pub built_ins: Values,
    /// `--substitutions` of a manual build, or a trigger's `substitutions`: user keys, and for
    /// manual builds the overridable built-ins.
    pub overrides: Values,
    /// Which image runs for each step's `name`.
    pub aliases: Aliases,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedBuild {
    pub steps: Vec<ResolvedStep>,
    pub images: Vec<String>,
    /// Where the `images` a registry mirror sends elsewhere are pushed (`gcr.io/p/app` →
    /// `localhost:5000/p/app:latest`); the others are pushed under their own names.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub push_to: BTreeMap<String, String>,
    pub tags: Vec<String>,
    /// Build timeout in seconds.
    pub timeout: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_ttl: Option<f64>,
    pub options: ResolvedOptions,
    /// The pool of workers that runs the build: the last part of `options.pool.name`
    /// (`projects/P/locations/L/workerPools/ID`, or a bare `ID`); `None` for the default pool.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretRef>,
    #[serde(skip_serializing_if = "Artifacts::is_empty")]
    pub artifacts: Artifacts,
    /// Pipeline templates pushed after `images` (this service's extension).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub templates: Vec<templates::Target>,
    pub substitutions: Values,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedStep {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The image as the config names it (substituted).
    pub name: String,
    /// The image that runs when the engine has none named `name` (an earlier step may build
    /// one): `name` through the image aliases and registry mirrors.
    pub image: String,
    /// What the user should know of `image`: it has another version than `name` asks for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_warning: Option<String>,
    pub args: Vec<String>,
    /// The whole environment the container gets, `KEY=VALUE`, sorted by key; secrets excluded.
    pub env: Vec<String>,
    pub dir: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secret_env: Vec<String>,
    /// Step timeout in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
    pub allow_failure: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_exit_codes: Vec<i64>,
    /// Indices of the steps this one waits for; empty means it starts with the build.
    pub dependencies: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedOptions {
    pub substitution_option: SubstitutionOption,
    pub dynamic_substitutions: bool,
    pub automap_substitutions: bool,
}

/// A Secret Manager secret a step receives as `env`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    pub env: String,
    pub version_name: String,
}

impl SecretRef {
    /// `NAME` and `V` of its `projects/P/secrets/NAME/versions/V`. Planning refuses any other
    /// form; one that got here anyway is its own NAME, at `latest`.
    pub fn name_and_version(&self) -> (&str, &str) {
        let parts: Vec<&str> = self.version_name.split('/').collect();
        match parts.as_slice() {
            [_, _, _, name, _, version] => (name, version),
            _ => (&self.version_name, "latest"),
        }
    }
}

/// The Secret Manager secrets a build may read, by NAME (`projects/P/secrets/NAME/versions/V`,
/// any project, any version), and what grants them. A build reads only what it was granted, so
/// that whoever can push a config cannot name every secret on the machine (issue 17).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretScope {
    pub names: BTreeSet<String>,
    pub grant: Grant,
}

/// What grants a build its secrets: the setting a refusal points to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// The `secrets` list of the trigger that queued the build (a push, a manual run, a
    /// schedule).
    Trigger(String),
    /// `builder submit --secret NAME` on this machine.
    Submit,
    /// The server's `submitSecrets` setting, for builds submitted to it.
    Server,
}

impl Grant {
    /// How to grant secret `name`.
    fn allowing(&self, name: &str) -> String {
        match self {
            Grant::Trigger(trigger) => {
                format!("add {name} to `secrets` in trigger {trigger:?}")
            }
            Grant::Submit => format!("pass --secret {name} to builder submit"),
            Grant::Server => format!(
                "add {name} to the server's `submitSecrets` setting (builder serve \
                 --submit-secret {name})"
            ),
        }
    }
}

impl SecretScope {
    /// A scope that grants nothing, with the setting that would.
    pub fn none(grant: Grant) -> Self {
        Self {
            names: BTreeSet::new(),
            grant,
        }
    }

    /// An error at the `versionName` of each of a build's `secrets` (in the order of
    /// `availableSecrets.secretManager`, as [`ResolvedBuild::secrets`]) that the scope does not
    /// grant, naming the secret and the setting that grants it.
    pub fn check(&self, secrets: &[SecretRef]) -> Diagnostics {
        let mut diagnostics = Diagnostics::default();
        let readable = if self.names.is_empty() {
            "none".to_string()
        } else {
            self.names.iter().cloned().collect::<Vec<_>>().join(", ")
        };
        for (i, secret) in secrets.iter().enumerate() {
            let (name, _) = secret.name_and_version();
            if !self.names.contains(name) {
                let path = FieldPath::root()
                    .key("availableSecrets")
                    .key("secretManager")
                    .index(i)
                    .key("versionName");
                diagnostics.error(
                    &path,
                    format!(
                        "this build may not read secret {name:?} (it may read: {readable}); to \
                         allow it, {}",
                        self.grant.allowing(name)
                    ),
                );
            }
        }
        diagnostics
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Artifacts {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub objects_location: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub objects_paths: Vec<String>,
}

impl Artifacts {
    fn is_empty(&self) -> bool {
        self.objects_location.is_none() && self.objects_paths.is_empty()
    }
}

/// Resolves a config for one build. The diagnostics carry field paths; the caller locates them.
pub fn resolve(config: &BuildConfig, inputs: &Inputs) -> Result<ResolvedBuild, Diagnostics> {
    let mut diagnostics = Diagnostics::default();
    let trigger = inputs.context == Context::Trigger;
    let loose = trigger || config.options.substitution_option == SubstitutionOption::AllowLoose;
    let dynamic = trigger || config.options.dynamic_substitutions;
    let automap = config.options.automap_substitutions
        || config
            .steps
            .iter()
            .any(|s| s.automap_substitutions == Some(true));

    let (built_ins, user) = split_inputs(config, inputs, &mut diagnostics);
    let values = match substitute::resolve_values(&user, &built_ins, dynamic) {
        Ok(values) => values,
        Err(e) => {
            diagnostics.error(&FieldPath::root().key("substitutions"), e.to_string());
            return Err(diagnostics);
        }
    };

    let mut fields = Templates::new(dynamic, &values);
    let build = fields.apply(config);
    fields.check_references(loose, &mut diagnostics);
    if !loose && !automap {
        // Without dynamic substitutions a value is inserted verbatim (spec §4.3 point 5), so a
        // `$_B` inside another value is text, not a use of `_B`.
        let used_in_values: BTreeSet<String> = user
            .values()
            .filter(|_| dynamic)
            .flat_map(|v| substitute::references(v, dynamic))
            .map(|r| r.key)
            .collect();
        let unused: Vec<&String> = user
            .keys()
            .filter(|key| !fields.used.contains(*key) && !used_in_values.contains(*key))
            .collect();
        report_unused(&unused, &mut diagnostics);
    }
    check_substituted(&build, &mut diagnostics);
    let options = ResolvedOptions {
        substitution_option: if loose {
            SubstitutionOption::AllowLoose
        } else {
            SubstitutionOption::MustMatch
        },
        dynamic_substitutions: dynamic,
        automap_substitutions: config.options.automap_substitutions,
    };
    let build = build.finish(config, values, options, &inputs.aliases, &mut diagnostics);
    if diagnostics.has_errors() {
        return Err(diagnostics);
    }
    Ok(build)
}

/// The one error Cloud Build gives for user substitutions no field uses: its messages for each
/// key joined by `;`. It points at the key when there is one, else at `substitutions`.
fn report_unused(keys: &[&String], diagnostics: &mut Diagnostics) {
    let path = FieldPath::root().key("substitutions");
    let path = match keys {
        [] => return,
        [key] => path.key(key),
        _ => path,
    };
    let message = keys
        .iter()
        .map(|key| format!("key {key:?} in the substitution data is not matched in the template"))
        .collect::<Vec<_>>()
        .join(";");
    let them = if keys.len() == 1 { "it" } else { "them" };
    diagnostics.error(
        &path,
        format!("{message} (remove {them}, or set options.substitutionOption: ALLOW_LOOSE)"),
    );
}

/// Loads a config as `builder config validate` judges it: parsed, decoded, validated, and its
/// substitution templates checked. `Err` when the bytes are not a document at all.
pub fn load(bytes: &[u8]) -> Result<Loaded, Diagnostics> {
    load_with(bytes, |_| {})
}

/// [`load`] with an adjustment of the decoded config before it is judged (see
/// [`config::load_with`]).
pub fn load_with(
    bytes: &[u8],
    adjust: impl FnOnce(&mut BuildConfig),
) -> Result<Loaded, Diagnostics> {
    let mut loaded = config::load_with(bytes, adjust)?;
    loaded.add(check_templates(&loaded.config));
    Ok(loaded)
}

/// The substitution problems a config has whatever values a build brings: references to keys that
/// are neither user keys nor built-ins, and malformed dynamic expressions.
pub fn check_templates(config: &BuildConfig) -> Diagnostics {
    let mut diagnostics = Diagnostics::default();
    let values = Values::new();
    let mut templates = Templates::new(config.options.dynamic_substitutions, &values);
    templates.apply(config);
    templates.check_references(true, &mut diagnostics);
    diagnostics
}

/// Splits the inputs into the built-in values (every built-in defined, empty when unknown) and the
/// user values (config defaults, overridden by the inputs).
fn split_inputs(
    config: &BuildConfig,
    inputs: &Inputs,
    diagnostics: &mut Diagnostics,
) -> (Values, Values) {
    let mut built_ins: Values = substitute::BUILT_INS
        .iter()
        .map(|k| (k.to_string(), String::new()))
        .collect();
    built_ins.extend(inputs.built_ins.clone());
    let mut user = config.substitutions.clone();
    let path = FieldPath::root().key("substitutions");
    for (key, value) in &inputs.overrides {
        if substitute::is_user_key(key) {
            user.insert(key.clone(), value.clone());
        } else if inputs.context == Context::Manual && substitute::is_overridable_built_in(key) {
            built_ins.insert(key.clone(), value.clone());
        } else {
            diagnostics.error(
                &path,
                format!(
                    "substitution key {key:?} does not respect format \"^_[A-Z0-9_]+$\" and is not an overridable built-in substitutions"
                ),
            );
        }
    }
    derive_built_ins(&mut built_ins);
    (built_ins, user)
}

/// Fills the built-ins that follow from others, where they are not given: `SHORT_SHA` and
/// `REVISION_ID` from `COMMIT_SHA`, `REF_NAME` from `BRANCH_NAME` or `TAG_NAME` (spec §4.1, §9.2).
pub fn derive_built_ins(built_ins: &mut Values) {
    let commit = built_ins.get("COMMIT_SHA").cloned().unwrap_or_default();
    // REF_NAME is the branch or the tag name of a trigger build (spec §4.1, §9.2).
    let reference = [built_ins.get("BRANCH_NAME"), built_ins.get("TAG_NAME")]
        .into_iter()
        .flatten()
        .find(|v| !v.is_empty())
        .cloned()
        .unwrap_or_default();
    for (key, derived) in [
        ("SHORT_SHA", commit.chars().take(7).collect::<String>()),
        ("REVISION_ID", commit),
        ("REF_NAME", reference),
    ] {
        if built_ins.get(key).is_none_or(String::is_empty) {
            built_ins.insert(key.to_string(), derived);
        }
    }
}

/// Substitutes fields and remembers every reference it met, with the field it was in.
struct Templates<'a> {
    dynamic: bool,
    values: &'a Values,
    /// Bytes the substituted fields add up to so far: a build's fields together expand to at
    /// most what its YAML may expand to, so that many fields each under their own limit cannot
    /// exhaust memory either.
    expanded: usize,
    references: Vec<(FieldPath, String)>,
    used: BTreeSet<String>,
    errors: Vec<(FieldPath, String)>,
}

impl<'a> Templates<'a> {
    fn new(dynamic: bool, values: &'a Values) -> Self {
        Self {
            dynamic,
            values,
            expanded: 0,
            references: Vec::new(),
            used: BTreeSet::new(),
            errors: Vec::new(),
        }
    }

    fn one(&mut self, path: FieldPath, template: &str) -> String {
        for reference in substitute::references(template, self.dynamic) {
            self.used.insert(reference.key.clone());
            self.references.push((path.clone(), reference.key));
        }
        if self.expanded > MAX_EXPANDED_BYTES {
            // Refused once, at the field that crossed the limit; expanding the rest is wasted work.
            return template.to_string();
        }
        match substitute::expand(template, self.values, self.dynamic) {
            Ok(expanded) => {
                self.expanded += expanded.len();
                if self.expanded > MAX_EXPANDED_BYTES {
                    self.errors.push((
                        path,
                        format!(
                            "the build's fields expand to more than {MAX_EXPANDED_BYTES} bytes"
                        ),
                    ));
                }
                expanded
            }
            Err(e) => {
                self.errors.push((path, e.to_string()));
                template.to_string()
            }
        }
    }

    fn opt(&mut self, path: FieldPath, template: Option<&String>) -> Option<String> {
        template.map(|t| self.one(path, t))
    }

    fn list(&mut self, path: &FieldPath, templates: &[String]) -> Vec<String> {
        templates
            .iter()
            .enumerate()
            .map(|(i, t)| self.one(path.index(i), t))
            .collect()
    }

    /// Substitutes every field Cloud Build substitutes (spec §4.5). `script`, `id` and `waitFor`
    /// are left as written.
    fn apply(&mut self, config: &BuildConfig) -> Draft {
        let root = FieldPath::root();
        let steps = config
            .steps
            .iter()
            .enumerate()
            .map(|(i, step)| {
                let path = root.key("steps").index(i);
                DraftStep {
                    name: self.one(path.key("name"), &step.name),
                    args: self.list(&path.key("args"), &step.args),
                    env: self.list(&path.key("env"), &step.env),
                    dir: self.opt(path.key("dir"), step.dir.as_ref()),
                    entrypoint: self.opt(path.key("entrypoint"), step.entrypoint.as_ref()),
                }
            })
            .collect();
        let options = root.key("options");
        let artifacts = root.key("artifacts");
        for upload in &config.artifacts.uploads {
            let path = artifacts.key(upload.kind).index(upload.index);
            for (name, value) in &upload.fields {
                self.one(path.key(name), value);
            }
            for (name, values) in &upload.lists {
                self.list(&path.key(name), values);
            }
        }
        self.opt(root.key("logsBucket"), config.logs_bucket.as_ref());
        self.opt(root.key("serviceAccount"), config.service_account.as_ref());
        let pool = self.opt(
            options.key("pool").key("name"),
            config.options.pool_name.as_ref(),
        );
        let objects = config.artifacts.objects.as_ref();
        let templates = config
            .templates
            .iter()
            .enumerate()
            .map(|(i, template)| {
                let path = root.key("templates").index(i);
                templates::Target {
                    paths: self.list(&path.key("paths"), &template.paths),
                    repository: self.one(path.key("repository"), &template.repository),
                    // Not substituted: `$` is the regex's end anchor.
                    version_regex: template
                        .version_regex
                        .clone()
                        .unwrap_or_else(|| DEFAULT_VERSION_REGEX.to_string()),
                    tags: self.list(&path.key("tags"), &template.tags),
                    annotations: template
                        .annotations
                        .iter()
                        .map(|(key, value)| {
                            let value = self.one(path.key("annotations").key(key), value);
                            (key.clone(), value)
                        })
                        .collect(),
                    allow_version_overwrite: template.allow_version_overwrite,
                    max_size_bytes: template
                        .max_size_bytes
                        .unwrap_or(DEFAULT_TEMPLATE_LIMIT)
                        .unsigned_abs(),
                }
            })
            .collect();
        Draft {
            templates,
            steps,
            pool,
            global_env: self.list(&options.key("env"), &config.options.env),
            images: self.list(&root.key("images"), &config.images),
            artifact_images: self.list(&artifacts.key("images"), &config.artifacts.images),
            tags: self.list(&root.key("tags"), &config.tags),
            objects_location: objects
                .map(|o| self.one(artifacts.key("objects").key("location"), &o.location)),
            objects_paths: objects
                .map(|o| self.list(&artifacts.key("objects").key("paths"), &o.paths))
                .unwrap_or_default(),
            secrets: config
                .available_secrets
                .secret_manager
                .iter()
                .enumerate()
                .map(|(i, s)| SecretRef {
                    env: s.env.clone(),
                    version_name: self.one(
                        root.key("availableSecrets")
                            .key("secretManager")
                            .index(i)
                            .key("versionName"),
                        &s.version_name,
                    ),
                })
                .collect(),
        }
    }

    /// Classifies every reference met (spec §4.4): a key that is neither a user key nor a
    /// built-in is an error in every mode; an undefined user key is an error unless loose.
    fn check_references(&self, loose: bool, diagnostics: &mut Diagnostics) {
        for (path, message) in &self.errors {
            diagnostics.error(path, message.clone());
        }
        let mut reported = BTreeSet::new();
        for (path, key) in &self.references {
            if !reported.insert((path.to_string(), key.clone())) {
                continue;
            }
            if !substitute::is_user_key(key) && !substitute::is_built_in(key) {
                diagnostics.error(
                    path,
                    format!(
                        "key in the template {key:?} is not a valid built-in substitution; \
                         write $${key} for a shell or environment variable"
                    ),
                );
            } else if !loose && substitute::is_user_key(key) && !self.values.contains_key(key) {
                diagnostics.error(
                    path,
                    format!(
                        "key in the template {key:?} is not matched in the substitution data \
                         (define it under `substitutions`, pass --substitutions {key}=VALUE, \
                         or set options.substitutionOption: ALLOW_LOOSE)"
                    ),
                );
            }
        }
    }
}

/// Substituted fields, before the steps are assembled.
struct Draft {
    steps: Vec<DraftStep>,
    templates: Vec<templates::Target>,
    global_env: Vec<String>,
    images: Vec<String>,
    artifact_images: Vec<String>,
    tags: Vec<String>,
    objects_location: Option<String>,
    objects_paths: Vec<String>,
    secrets: Vec<SecretRef>,
    pool: Option<String>,
}

struct DraftStep {
    name: String,
    args: Vec<String>,
    env: Vec<String>,
    dir: Option<String>,
    entrypoint: Option<String>,
}

/// The checks that need substituted values (spec §4.4 last point).
fn check_substituted(build: &Draft, diagnostics: &mut Diagnostics) {
    let root = FieldPath::root();
    for (i, step) in build.steps.iter().enumerate() {
        check_step_name(
            &root.key("steps").index(i).key("name"),
            &step.name,
            diagnostics,
        );
    }
    for (i, image) in build.images.iter().enumerate() {
        check_image(&root.key("images").index(i), image, diagnostics);
    }
    // `artifacts.images` is the image list when `images` is not given (spec §2.7).
    if build.images.is_empty() {
        for (i, image) in build.artifact_images.iter().enumerate() {
            check_image(
                &root.key("artifacts").key("images").index(i),
                image,
                diagnostics,
            );
        }
    }
    if let Some(location) = &build.objects_location
        && !location.starts_with("gs://")
    {
        diagnostics.error(
            &root.key("artifacts").key("objects").key("location"),
            format!("invalid .artifacts.location value {location:?}; Google Cloud Storage URLs must begin with 'gs://'"),
        );
    }
    for (i, target) in build.templates.iter().enumerate() {
        check_template(&root.key("templates").index(i), target, diagnostics);
    }
    for (i, secret) in build.secrets.iter().enumerate() {
        if !validate::is_secret_version(&secret.version_name) {
            diagnostics.error(
                &root
                    .key("availableSecrets")
                    .key("secretManager")
                    .index(i)
                    .key("versionName"),
                format!(
                    "{:?} is not of the form projects/*/secrets/*/versions/*",
                    secret.version_name
                ),
            );
        }
    }
}

/// A substituted `templates:` entry: a repository without tag or digest, tags a registry takes,
/// globs that stay inside `/workspace`.
fn check_template(path: &FieldPath, target: &templates::Target, diagnostics: &mut Diagnostics) {
    let repository = &target.repository;
    match image::validate(repository) {
        Err(message) => diagnostics.error(&path.key("repository"), message),
        Ok(()) if image::has_tag_or_digest(repository) => diagnostics.error(
            &path.key("repository"),
            format!(
                "{repository:?} names a tag or digest; name the repository only (versions \
                     come from the file names, other tags from `tags`)"
            ),
        ),
        Ok(()) => {}
    }
    for (i, tag) in target.tags.iter().enumerate() {
        if !templates::is_tag(tag) {
            diagnostics.error(
                &path.key("tags").index(i),
                format!("invalid tag {tag:?}: must match ^[\\w][\\w.-]{{0,127}}$"),
            );
        }
    }
    for (i, glob) in target.paths.iter().enumerate() {
        let outside = glob.starts_with('/') || glob.split('/').any(|part| part == "..");
        let checked = if outside {
            Err(format!(
                "{glob:?} leaves /workspace; write it relative to /workspace"
            ))
        } else {
            Glob::new(glob).map(drop)
        };
        if let Err(message) = checked {
            diagnostics.error(&path.key("paths").index(i), message);
        }
    }
}

impl Draft {
    fn finish(
        self,
        config: &BuildConfig,
        values: Values,
        options: ResolvedOptions,
        aliases: &Aliases,
        diagnostics: &mut Diagnostics,
    ) -> ResolvedBuild {
        let root = FieldPath::root();
        let tags = clean_tags(&self.tags, &root.key("tags"), diagnostics);
        let images = if self.images.is_empty() {
            self.artifact_images
        } else {
            self.images
        };
        let ids: BTreeMap<&str, usize> = config
            .steps
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((s.id.as_deref()?, i)))
            .collect();
        let steps = self
            .steps
            .into_iter()
            .zip(&config.steps)
            .enumerate()
            .map(|(i, (draft, step))| {
                let automap = step
                    .automap_substitutions
                    .unwrap_or(config.options.automap_substitutions);
                let dir = working_dir(draft.dir.as_deref()).unwrap_or_else(|message| {
                    diagnostics.error(&root.key("steps").index(i).key("dir"), message);
                    WORKSPACE.to_string()
                });
                let resolved = aliases.resolve(&draft.name);
                ResolvedStep {
                    id: step.id.clone(),
                    image: resolved.image,
                    image_warning: resolved.version_mismatch,
                    name: draft.name,
                    args: draft.args,
                    env: environment(automap.then_some(&values), &self.global_env, &draft.env),
                    dir,
                    entrypoint: draft.entrypoint,
                    script: step.script.clone(),
                    volumes: config
                        .options
                        .volumes
                        .iter()
                        .chain(&step.volumes)
                        .cloned()
                        .collect(),
                    secret_env: config
                        .options
                        .secret_env
                        .iter()
                        .chain(&step.secret_env)
                        .cloned()
                        .collect(),
                    timeout: step.timeout.map(|t| t.as_secs_f64()),
                    allow_failure: step.allow_failure,
                    allow_exit_codes: step.allow_exit_codes.clone(),
                    dependencies: dependencies(i, &step.wait_for, &ids),
                }
            })
            .collect();
        let push_to = images
            .iter()
            .filter_map(|image| Some((image.clone(), aliases.mirror(image)?)))
            .collect();
        ResolvedBuild {
            steps,
            images,
            push_to,
            tags,
            timeout: config
                .timeout
                .unwrap_or(validate::DEFAULT_TIMEOUT)
                .as_secs_f64(),
            queue_ttl: config.queue_ttl.map(|t| t.as_secs_f64()),
            options,
            pool: self.pool.as_deref().and_then(pool_id).map(str::to_string),
            secrets: self.secrets,
            templates: self.templates,
            artifacts: Artifacts {
                objects_location: self.objects_location,
                objects_paths: self.objects_paths,
            },
            substitutions: values,
        }
    }
}

/// The pool a pool name means: its last `/`-separated part, so that Cloud Build's
/// `projects/P/locations/L/workerPools/ID` and a worker's `--pool ID` name the same pool; `None`
/// for an empty name (the default pool).
pub fn pool_id(name: &str) -> Option<&str> {
    name.rsplit('/').next().filter(|id| !id.is_empty())
}

/// A step's working directory: relative to `/workspace`, which it may not leave; absolute paths
/// are used as written (their contents do not persist between steps, as on Cloud Build).
fn working_dir(dir: Option<&str>) -> Result<String, String> {
    let Some(dir) = dir.filter(|d| !d.is_empty()) else {
        return Ok(WORKSPACE.to_string());
    };
    if dir.starts_with('/') {
        return Ok(clean(dir));
    }
    let relative = clean(dir);
    if relative == ".." || relative.starts_with("../") {
        return Err(format!("dir {dir:?} leaves /workspace"));
    }
    Ok(clean(&format!("{WORKSPACE}/{relative}")))
}

/// The container's environment: `HOME` and `BUILDER_OUTPUT` first, then the automapped
/// substitutions, `options.env`, and the step's `env`; a later definition of a key wins.
fn environment(automapped: Option<&Values>, global: &[String], own: &[String]) -> Vec<String> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert("HOME".into(), HOME.into());
    env.insert("BUILDER_OUTPUT".into(), BUILDER_OUTPUT.into());
    for (key, value) in automapped.into_iter().flatten() {
        env.insert(key.clone(), value.clone());
    }
    for entry in global.iter().chain(own) {
        if let Some((key, value)) = entry.split_once('=') {
            env.insert(key.to_string(), value.to_string());
        }
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Cloud Build's `waitFor` rules: nothing listed means every earlier step; `-` alone means the
/// build's start; `-` beside ids is ignored. Only earlier steps count (validation reports the
/// rest), so even an unvalidated config never yields a step that waits for itself or a later one.
fn dependencies(index: usize, wait_for: &[String], ids: &BTreeMap<&str, usize>) -> Vec<usize> {
    if wait_for.is_empty() {
        return (0..index).collect();
    }
    let mut waits: Vec<usize> = wait_for
        .iter()
        .filter_map(|w| ids.get(w.as_str()).copied())
        .filter(|&i| i < index)
        .collect();
    waits.sort_unstable();
    waits.dedup();
    waits
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `yaml` loaded, and resolved as a manual build with these `--substitutions`.
    fn resolved(
        yaml: &str,
        overrides: &[(&str, &str)],
    ) -> (Loaded, Result<ResolvedBuild, Diagnostics>) {
        let loaded = load(yaml.as_bytes()).expect("a config");
        assert!(!loaded.diagnostics.has_errors(), "{:?}", loaded.diagnostics);
        let inputs = Inputs {
            overrides: overrides
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Inputs::default()
        };
        let build = resolve(&loaded.config, &inputs);
        (loaded, build)
    }

    /// The rendered errors of resolving `yaml` as a manual build with these `--substitutions`.
    fn errors(yaml: &str, overrides: &[(&str, &str)]) -> String {
        let (loaded, build) = resolved(yaml, overrides);
        let mut diagnostics = build.expect_err("errors");
        diagnostics.locate(&loaded.tree);
        diagnostics.render("c.yaml")
    }

    /// `options.pool.name` is substituted, and Cloud Build's full name and a bare id name the
    /// same pool.
    #[test]
    fn a_builds_pool_is_the_last_part_of_its_substituted_name() {
        let pool = |yaml: &str| {
            let loaded = load(yaml.as_bytes()).expect("a config");
            let inputs = Inputs {
                overrides: [("_POOL".to_string(), "gpu".to_string())].into(),
                ..Inputs::default()
            };
            resolve(&loaded.config, &inputs).expect("resolves").pool
        };
        let full = "steps: [{name: a}]\noptions: {pool: {name: projects/p/locations/l/workerPools/$_POOL}}\n";
        assert_eq!(pool(full).as_deref(), Some("gpu"));
        let bare = "steps: [{name: a}]\noptions: {pool: {name: $_POOL}}\n";
        assert_eq!(pool(bare).as_deref(), Some("gpu"));
        let options = "steps: [{name: a}]\noptions: {substitutionOption: ALLOW_LOOSE}\n";
        assert_eq!(pool(options), None);
        assert_eq!(pool_id("projects/p/locations/l/workerPools/"), None);
    }

    #[test]
    fn a_build_expands_to_at_most_its_yaml_limit() {
        // Ten steps of ten args, each arg 4,000 bytes × 250 = 1,000,000 bytes: every field under
        // its own limit, but the ninth takes the build past 8 MiB, and only it is reported.
        let args = format!("[{}]", vec!["$_A".repeat(250); 10].join(", "));
        let steps: Vec<String> = (0..10)
            .map(|_| format!("{{name: a, args: {args}}}"))
            .collect();
        let yaml = format!(
            "steps: [{}]\nsubstitutions: {{_A: {}}}\n",
            steps.join(", "),
            "x".repeat(4000)
        );
        let errors = errors(&yaml, &[]);
        assert_eq!(errors.lines().count(), 1, "{errors}");
        assert!(
            errors
                .contains("steps[0].args[8]: the build's fields expand to more than 8388608 bytes"),
            "{errors}"
        );
    }

    #[test]
    fn unused_substitutions_are_one_error_joined_by_semicolons() {
        assert_eq!(
            errors(
                "steps: [{name: a}]\nsubstitutions: {_A: x, _B: y}\n",
                &[("_C", "z")]
            ),
            "c.yaml:2:16: substitutions: key \"_A\" in the substitution data is not matched in \
             the template;key \"_B\" in the substitution data is not matched in the template;\
             key \"_C\" in the substitution data is not matched in the template (remove them, \
             or set options.substitutionOption: ALLOW_LOOSE)\n"
        );
        assert_eq!(
            errors(
                "steps: [{name: a, args: [$_A]}]\nsubstitutions: {_A: x, _B: y}\n",
                &[]
            ),
            "c.yaml:2:28: substitutions._B: key \"_B\" in the substitution data is not matched \
             in the template (remove it, or set options.substitutionOption: ALLOW_LOOSE)\n"
        );
    }

    /// The rendered refusals of `scope` for `yaml`'s secrets, resolved with `overrides`.
    fn out_of_scope(yaml: &str, overrides: &[(&str, &str)], scope: &SecretScope) -> String {
        let (loaded, build) = resolved(yaml, overrides);
        let mut diagnostics = scope.check(&build.expect("a build").secrets);
        diagnostics.locate(&loaded.tree);
        diagnostics.render("c.yaml")
    }

    #[test]
    fn a_build_reads_only_the_secrets_its_scope_names() {
        let yaml = "steps: [{name: a, secretEnv: [A, B]}]\n\
                    availableSecrets:\n  secretManager:\n\
                    \x20 - {versionName: projects/p/secrets/db-pass/versions/2, env: A}\n\
                    \x20 - {versionName: 'projects/p/secrets/$_OTHER/versions/latest', env: B}\n\
                    substitutions: {_OTHER: token}\n";
        let scope = |names: &[&str], grant: Grant| SecretScope {
            names: names.iter().map(|n| n.to_string()).collect(),
            grant,
        };
        // Any project and version of a granted NAME.
        let both = scope(&["db-pass", "token"], Grant::Submit);
        assert_eq!(out_of_scope(yaml, &[], &both), "");
        // The name is judged once substituted: an override cannot reach another secret.
        assert_eq!(
            out_of_scope(yaml, &[("_OTHER", "root-key")], &both),
            "c.yaml:5:19: availableSecrets.secretManager[1].versionName: this build may not read \
             secret \"root-key\" (it may read: db-pass, token); to allow it, pass --secret \
             root-key to builder submit\n"
        );
        assert_eq!(
            out_of_scope(
                yaml,
                &[],
                &scope(&["token"], Grant::Trigger("release".into()))
            ),
            "c.yaml:4:19: availableSecrets.secretManager[0].versionName: this build may not read \
             secret \"db-pass\" (it may read: token); to allow it, add db-pass to `secrets` in \
             trigger \"release\"\n"
        );
        let refused = out_of_scope(yaml, &[], &SecretScope::none(Grant::Server));
        assert_eq!(refused.lines().count(), 2, "{refused}");
        assert!(
            refused.contains(
                "secret \"token\" (it may read: none); to allow it, add token to the server's \
                 `submitSecrets` setting (builder serve --submit-secret token)"
            ),
            "{refused}"
        );
        // A build without secrets needs no grant.
        assert_eq!(
            out_of_scope(
                "steps: [{name: a}]\n",
                &[],
                &SecretScope::none(Grant::Submit)
            ),
            ""
        );
    }

    #[test]
    fn substituted_values_are_judged_in_cloud_builds_words() {
        assert_eq!(
            errors("steps: [{name: a}]\n", &[("PROJECT_ID", "p")]),
            "c.yaml:1:1: substitutions: substitution key \"PROJECT_ID\" does not respect format \
             \"^_[A-Z0-9_]+$\" and is not an overridable built-in substitutions\n"
        );
        assert_eq!(
            errors(
                "steps: [{name: $_STEP}]\nsubstitutions: {_STEP: x}\n",
                &[("_STEP", "gcr.io/p/Tool")]
            ),
            "c.yaml:1:16: steps[0].name: invalid build step name \"gcr.io/p/Tool\" (image names \
             are lower case; only the tag may have upper case letters)\n"
        );
    }
}
