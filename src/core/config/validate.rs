//! The rules and limits Cloud Build applies to a config before it runs (spec §2), checked on the
//! written config. Everything is collected; nothing stops at the first problem.
//!
//! Values that contain substitutions (`$_IMAGE`, `${TAG_NAME}`) can only be judged once they are
//! substituted, so image names and tags are checked here only when they are literal, and again by
//! the planner after substitution ([`check_image`], [`clean_tags`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Component, Path};
use std::sync::LazyLock;
use std::time::Duration;

use regex::Regex;

use super::decode::hint;
use super::duration;
use super::model::*;
use crate::core::diag::{Diagnostics, FieldPath};
use crate::core::{image, templates};

pub const MAX_STEPS: usize = 300;
pub const MAX_ARGS: usize = 100;
pub const MAX_ARG_LEN: usize = 10_000;
pub const MAX_ENV: usize = 100;
pub const MAX_ENV_LEN: usize = 1000;
pub const MAX_SUBSTITUTIONS: usize = 200;
pub const MAX_SUBSTITUTION_KEY_LEN: usize = 100;
pub const MAX_SUBSTITUTION_VALUE_LEN: usize = 4000;
pub const MAX_TAGS: usize = 64;
pub const MAX_IMAGES: usize = 100;
pub const MAX_SECRET_VALUES: usize = 100;
pub const MAX_SECRET_VALUE_LEN: usize = 65536;
pub const MAX_FIELD_LEN: usize = 1000;
pub const MAX_ARTIFACT_PATHS: usize = 100;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

static USER_KEY: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^_[A-Z0-9_]+$").expect("regex"));
static TAG: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^[\w][\w.-]{0,127}$").expect("regex"));
static VOLUME_NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$").expect("regex"));

/// Checks a decoded config against every rule that does not depend on substitution values.
pub fn validate(config: &BuildConfig, diagnostics: &mut Diagnostics) {
    let root = FieldPath::root();
    check_steps(config, diagnostics);
    check_env(
        &root.key("options").key("env"),
        &config.options.env,
        "invalid .options.env field: ",
        diagnostics,
    );
    check_timeouts(config, diagnostics);
    check_volumes(config, diagnostics);
    check_substitution_keys(
        &config.substitutions,
        &root.key("substitutions"),
        diagnostics,
    );
    check_secrets(config, diagnostics);
    check_artifacts(config, diagnostics);
    check_templates(&config.templates, diagnostics);
    // `artifacts.images` stands for `images` when only it is given (spec §2.7).
    let images = if config.images.is_empty() {
        root.key("artifacts").key("images")
    } else {
        root.key("images")
    };
    let image_list = if config.images.is_empty() {
        &config.artifacts.images
    } else {
        &config.images
    };
    for (i, name) in image_list.iter().enumerate() {
        if !name.contains('$') {
            check_image(&images.index(i), name, diagnostics);
        }
    }
    if image_list.len() > MAX_IMAGES {
        diagnostics.error(
            &images,
            format!("cannot specify more than {MAX_IMAGES} images to build"),
        );
    }
    // Templated tags are checked after substitution; blanking them (rather than filtering them
    // out) keeps the indices, so each error points at the tag it is about.
    let literal_tags: Vec<String> = config
        .tags
        .iter()
        .map(|t| {
            if t.contains('$') {
                String::new()
            } else {
                t.clone()
            }
        })
        .collect();
    clean_tags(&literal_tags, &root.key("tags"), diagnostics);
}

fn check_steps(config: &BuildConfig, diagnostics: &mut Diagnostics) {
    let steps_path = FieldPath::root().key("steps");
    if config.steps.is_empty() {
        diagnostics.error(
            &steps_path,
            "config must list at least one step or specify remote_config (builder reads no \
             remote_config: list the steps)",
        );
    }
    if config.steps.len() > MAX_STEPS {
        diagnostics.error(
            &steps_path,
            format!(
                "cannot specify more than {MAX_STEPS} build steps (found {})",
                config.steps.len()
            ),
        );
    }
    let mut ids: HashMap<&str, usize> = HashMap::new();
    let all_ids: Vec<&str> = config
        .steps
        .iter()
        .filter_map(|s| s.id.as_deref())
        .collect();
    for (i, step) in config.steps.iter().enumerate() {
        let path = steps_path.index(i);
        let label = step_label(i, step);
        if step.name.is_empty() {
            diagnostics.error(
                &path.key("name"),
                format!("build step {i} must specify name (the builder image the step runs)"),
            );
        } else if !step.name.contains('$') {
            check_step_name(&path.key("name"), &step.name, diagnostics);
        }
        check_lengths(&path, i, step, diagnostics);
        check_env(
            &path.key("env"),
            &step.env,
            &format!("{label}: "),
            diagnostics,
        );
        if step.script.is_some() {
            for (field, set) in [
                ("args", !step.args.is_empty()),
                ("entrypoint", step.entrypoint.is_some()),
            ] {
                if set {
                    diagnostics.error(
                        &path.key(field),
                        "a step with `script` cannot also set `args` or `entrypoint`",
                    );
                }
            }
        }
        for (j, code) in step.allow_exit_codes.iter().enumerate() {
            if !(0..=255).contains(code) {
                diagnostics.error(
                    &path.key("allowExitCodes").index(j),
                    format!("exit code {code} is out of range 0..255"),
                );
            }
        }
        for (j, wait) in step.wait_for.iter().enumerate() {
            if wait == "-" || ids.contains_key(wait.as_str()) {
                continue;
            }
            let why = if all_ids.contains(&wait.as_str()) {
                " (it is the id of a later step; a step can only wait for earlier steps)".into()
            } else {
                let earlier: Vec<&str> = ids.keys().copied().collect();
                hint(wait, &earlier)
            };
            diagnostics.error(
                &path.key("waitFor").index(j),
                format!("{label} depends on {wait:?}, which has not been defined{why}"),
            );
        }
        if let Some(id) = step.id.as_deref() {
            if id == "-" {
                diagnostics.error(
                    &path.key("id"),
                    format!(
                        "{label}: the ID cannot be \"-\" which is reserved as a dependency for \
                         build steps that should run first"
                    ),
                );
            } else if let Some(first) = ids.insert(id, i) {
                diagnostics.error(
                    &path.key("id"),
                    format!("{label}: the ID is not unique (steps[{first}] has it too)"),
                );
            }
        }
    }
}

/// `build step #2 - "build"`, or `build step #2` for a step without an id: how Cloud Build names
/// a step in its errors.
fn step_label(index: usize, step: &Step) -> String {
    match &step.id {
        Some(id) => format!("build step #{index} - {id:?}"),
        None => format!("build step #{index}"),
    }
}

fn check_lengths(path: &FieldPath, i: usize, step: &Step, diagnostics: &mut Diagnostics) {
    if step.args.len() > MAX_ARGS {
        diagnostics.error(
            &path.key("args"),
            format!(
                "build step {i} too many args (max: {MAX_ARGS}; found {})",
                step.args.len()
            ),
        );
    }
    for (j, arg) in step.args.iter().enumerate() {
        if arg.len() > MAX_ARG_LEN {
            diagnostics.error(
                &path.key("args").index(j),
                format!("build step {i} arg {j} too long (max: {MAX_ARG_LEN})"),
            );
        }
    }
    for (field, value) in [("name", Some(&step.name)), ("dir", step.dir.as_ref())] {
        if value.is_some_and(|v| v.len() > MAX_FIELD_LEN) {
            diagnostics.error(
                &path.key(field),
                format!("build step {i} {field} too long (max: {MAX_FIELD_LEN})"),
            );
        }
    }
}

/// `KEY=VALUE` entries of `env` and `options.env`; `whose` starts each message as Cloud Build
/// starts it (`build step #0: `, `invalid .options.env field: `).
fn check_env(path: &FieldPath, env: &[String], whose: &str, diagnostics: &mut Diagnostics) {
    if env.len() > MAX_ENV {
        diagnostics.error(
            path,
            format!("{whose}too many envs (max: {MAX_ENV}; found {})", env.len()),
        );
    }
    for (i, entry) in env.iter().enumerate() {
        if !entry.contains('=') {
            diagnostics.error(
                &path.index(i),
                format!("{whose}the Env entry {entry:?} must be of the form \"KEY=VALUE\""),
            );
        } else if entry.len() > MAX_ENV_LEN {
            diagnostics.error(
                &path.index(i),
                format!("{whose}env {i} too long (max: {MAX_ENV_LEN})"),
            );
        }
    }
}

fn check_timeouts(config: &BuildConfig, diagnostics: &mut Diagnostics) {
    let build_timeout = config.timeout.unwrap_or(DEFAULT_TIMEOUT);
    if build_timeout > MAX_TIMEOUT {
        diagnostics.error(
            &FieldPath::root().key("timeout"),
            format!(
                "timeout exceeds the timeout limit of {}",
                duration::go_format(MAX_TIMEOUT)
            ),
        );
    }
    for (i, step) in config.steps.iter().enumerate() {
        if let Some(timeout) = step.timeout.filter(|t| *t > build_timeout) {
            let hint = if config.timeout.is_some() {
                "raise the build's `timeout`"
            } else {
                "the default build timeout; set the build's `timeout`"
            };
            diagnostics.error(
                &FieldPath::root().key("steps").index(i).key("timeout"),
                format!(
                    "invalid .timeout in build step #{i}: build step timeout {} must be <= build \
                     timeout {} ({hint})",
                    duration::go_format(timeout),
                    duration::go_format(build_timeout)
                ),
            );
        }
    }
}

/// Volume rules shared by step and global volumes (spec §2.8).
fn check_volumes(config: &BuildConfig, diagnostics: &mut Diagnostics) {
    let global_path = FieldPath::root().key("options").key("volumes");
    check_volume_list(&global_path, &config.options.volumes, diagnostics);
    let global_paths: BTreeSet<String> = config
        .options
        .volumes
        .iter()
        .map(|v| clean(&v.path))
        .collect();
    if !config.options.volumes.is_empty() && config.steps.len() < 2 {
        diagnostics.error(
            &global_path,
            "Global volumes defined but there are fewer than two steps",
        );
    }
    let mut users: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, step) in config.steps.iter().enumerate() {
        let path = FieldPath::root().key("steps").index(i).key("volumes");
        check_volume_list(&path, &step.volumes, diagnostics);
        for (j, volume) in step.volumes.iter().enumerate() {
            users.entry(&volume.name).or_default().push(i);
            let label = step_label(i, step);
            if config.options.volumes.iter().any(|g| g.name == volume.name) {
                diagnostics.error(
                    &path.index(j).key("name"),
                    format!(
                        "{label}: volume name {:?} conflicts with global volume",
                        volume.name
                    ),
                );
            }
            // Compared cleaned, unlike Cloud Build: `/g/` and `/g` are one mount point.
            if global_paths.contains(&clean(&volume.path)) {
                diagnostics.error(
                    &path.index(j).key("path"),
                    format!(
                        "{label}: volume path {:?} conflicts with global volume",
                        volume.path
                    ),
                );
            }
        }
    }
    for (name, steps) in users {
        if steps.len() < 2 && !name.is_empty() {
            let path = FieldPath::root()
                .key("steps")
                .index(steps[0])
                .key("volumes");
            diagnostics.error(&path, format!("Volume {name:?} is only used by one step"));
        }
    }
}

fn check_volume_list(path: &FieldPath, volumes: &[Volume], diagnostics: &mut Diagnostics) {
    let mut names = BTreeSet::new();
    let mut paths = BTreeSet::new();
    for (i, volume) in volumes.iter().enumerate() {
        let path = path.index(i);
        if !VOLUME_NAME.is_match(&volume.name) {
            diagnostics.error(
                &path.key("name"),
                format!(
                    "volume name {:?} does not match \"{}\"",
                    volume.name,
                    VOLUME_NAME.as_str()
                ),
            );
        }
        let cleaned = clean(&volume.path);
        if !cleaned.starts_with('/') {
            diagnostics.error(
                &path.key("path"),
                format!("path {:?} is not valid, must be absolute", volume.path),
            );
        } else if ["/workspace", "/builder/home", "/var/run/docker.sock"]
            .contains(&cleaned.as_str())
        {
            diagnostics.error(
                &path.key("path"),
                format!("path {:?} is reserved", volume.path),
            );
        } else if cleaned.starts_with("/cloudbuild/") {
            diagnostics.error(
                &path.key("path"),
                format!(
                    "volume path {:?} cannot start with /cloudbuild/",
                    volume.path
                ),
            );
        }
        if !names.insert(&volume.name) {
            diagnostics.error(
                &path.key("name"),
                format!(
                    "volume name {:?} is defined in more than one volume entry",
                    volume.name
                ),
            );
        }
        if !paths.insert(cleaned.clone()) {
            diagnostics.error(
                &path.key("path"),
                format!("volume path {cleaned:?} is defined in more than one volume entry"),
            );
        }
    }
}

/// A path with `.`, `..` and repeated `/` resolved lexically, as Go's `path.Clean`.
pub fn clean(path: &str) -> String {
    let absolute = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(part) => parts.push(part.to_str().unwrap_or_default()),
            Component::ParentDir if parts.last().is_some_and(|p| *p != "..") => {
                parts.pop();
            }
            Component::ParentDir if !absolute => parts.push(".."),
            _ => {}
        }
    }
    let joined = parts.join("/");
    match (absolute, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

/// Keys written in a config's (or trigger's) `substitutions`.
pub fn check_substitution_keys(
    substitutions: &BTreeMap<String, String>,
    path: &FieldPath,
    diagnostics: &mut Diagnostics,
) {
    if substitutions.len() > MAX_SUBSTITUTIONS {
        diagnostics.error(
            path,
            format!(
                "number of substitutions {} exceeded (max: {MAX_SUBSTITUTIONS})",
                substitutions.len()
            ),
        );
    }
    for (key, value) in substitutions {
        let path = path.key(key);
        if !USER_KEY.is_match(key) {
            diagnostics.error(
                &path,
                format!("substitution key {key} does not respect format ^_[A-Z0-9_]+$"),
            );
        } else if key.len() > MAX_SUBSTITUTION_KEY_LEN {
            diagnostics.error(
                &path,
                format!("substitution key {key:?} too long (max: {MAX_SUBSTITUTION_KEY_LEN})"),
            );
        }
        if value.len() > MAX_SUBSTITUTION_VALUE_LEN {
            // Cloud Build quotes the whole value; its start is enough to recognise it.
            let start: String = value.chars().take(40).collect();
            diagnostics.error(
                &path,
                format!(
                    "substitution value \"{}…\" too long (max: {MAX_SUBSTITUTION_VALUE_LEN})",
                    start.escape_debug()
                ),
            );
        }
    }
}

/// `secrets`, `availableSecrets` and the `secretEnv` lists that use them (spec §2.6, the checks
/// cloud-build-local makes, in its words).
fn check_secrets(config: &BuildConfig, diagnostics: &mut Diagnostics) {
    let root = FieldPath::root();
    // Every defined secret env name, with the path that defines it.
    let mut defined: Vec<(String, FieldPath)> = Vec::new();
    let mut kms_keys = BTreeSet::new();
    for (i, secret) in config.secrets.iter().enumerate() {
        let path = root.key("secrets").index(i);
        if !kms_keys.insert(&secret.kms_key_name) {
            diagnostics.error(
                &path.key("kmsKeyName"),
                format!(
                    "kmsKeyName {:?} is used by more than one secret",
                    secret.kms_key_name
                ),
            );
        }
        if secret.secret_env.is_empty() {
            diagnostics.error(&path, format!("secret {i} defines no secretEnvs"));
        }
        for (name, value) in &secret.secret_env {
            let path = path.key("secretEnv").key(name);
            check_secret_value(&path, name, value, diagnostics);
            defined.push((name.clone(), path));
        }
    }
    let available = root.key("availableSecrets");
    for (i, secret) in config.available_secrets.secret_manager.iter().enumerate() {
        let path = available.key("secretManager").index(i);
        if secret.env.is_empty() {
            diagnostics.error(
                &path.key("env"),
                "required: the env name steps use in `secretEnv`",
            );
        }
        if !is_secret_version(&secret.version_name) && !secret.version_name.contains('$') {
            diagnostics.error(
                &path.key("versionName"),
                format!(
                    "{:?} is not of the form projects/*/secrets/*/versions/*",
                    secret.version_name
                ),
            );
        }
        defined.push((secret.env.clone(), path.key("env")));
    }
    for (i, secret) in config.available_secrets.inline.iter().enumerate() {
        let path = available.key("inline").index(i);
        for (name, value) in &secret.env_map {
            let path = path.key("envMap").key(name);
            check_secret_value(&path, name, value, diagnostics);
            defined.push((name.clone(), path));
        }
    }
    if defined.len() > MAX_SECRET_VALUES {
        diagnostics.error(
            &root,
            format!("build defines more than {MAX_SECRET_VALUES} secret values"),
        );
    }
    let mut seen = BTreeSet::new();
    for (name, path) in &defined {
        if !seen.insert(name) {
            diagnostics.error(
                path,
                format!("secretEnv {name:?} is defined more than once"),
            );
        }
    }
    let global_path = root.key("options").key("secretEnv");
    // Every use of a secret env name, with the path that uses it.
    let mut uses: Vec<(&String, FieldPath)> = Vec::new();
    let mut global = BTreeSet::new();
    for (i, name) in config.options.secret_env.iter().enumerate() {
        if !global.insert(name) {
            diagnostics.error(
                &global_path.index(i),
                format!("Build uses global secretEnv {name:?} more than once"),
            );
        }
        uses.push((name, global_path.index(i)));
    }
    let global_env = env_keys(&config.options.env);
    for (i, step) in config.steps.iter().enumerate() {
        let path = root.key("steps").index(i).key("secretEnv");
        let mut own = BTreeSet::new();
        for (j, name) in step.secret_env.iter().enumerate() {
            if global.contains(name) {
                diagnostics.error(
                    &path.index(j),
                    format!("Step {i} uses the global secretEnv {name:?}"),
                );
            } else if !own.insert(name) {
                diagnostics.error(
                    &path.index(j),
                    format!("Step {i} uses the secretEnv {name:?} more than once"),
                );
            }
            uses.push((name, path.index(j)));
        }
        let env = env_keys(&step.env);
        for name in own.iter().chain(global.iter()) {
            if env.contains(name.as_str()) || global_env.contains(name.as_str()) {
                diagnostics.error(
                    &path,
                    format!("step {i} has secret and non-secret env {name:?}"),
                );
            }
        }
    }
    for (name, path) in &uses {
        if !seen.contains(name) {
            diagnostics.error(
                path,
                format!("secretEnv {name:?} is used without being defined"),
            );
        }
    }
    for (name, path) in &defined {
        if !uses.iter().any(|(used, _)| *used == name) {
            diagnostics.error(
                path,
                format!("secretEnv {name:?} is defined without being used"),
            );
        }
    }
    if !config.secrets.is_empty() || !config.available_secrets.inline.is_empty() {
        let field = if config.secrets.is_empty() {
            available.key("inline")
        } else {
            root.key("secrets")
        };
        diagnostics.warning(
            &field,
            "KMS-encrypted secrets cannot be decrypted by builder; a build that uses them fails (use availableSecrets.secretManager)",
        );
    }
}

/// A KMS-encrypted value (`secrets`, `availableSecrets.inline`): builder cannot decrypt it, but
/// Cloud Build bounds its size, so a config it refuses is refused here too.
fn check_secret_value(path: &FieldPath, name: &str, value: &str, diagnostics: &mut Diagnostics) {
    if value.len() > MAX_SECRET_VALUE_LEN {
        diagnostics.error(
            path,
            format!("secretEnv value for {name:?} cannot exceed {MAX_SECRET_VALUE_LEN}B"),
        );
    }
}

/// `projects/*/secrets/*/versions/*`, the secret's name and version in Secret Manager's
/// character set (which also keeps them from naming a path outside the local secrets directory).
pub fn is_secret_version(name: &str) -> bool {
    let parts: Vec<&str> = name.split('/').collect();
    parts.len() == 6
        && parts[0] == "projects"
        && !parts[1].is_empty()
        && parts[2] == "secrets"
        && is_secret_id(parts[3])
        && parts[4] == "versions"
        && is_secret_id(parts[5])
}

/// A secret's NAME as a grant lists it (a trigger's `secrets`, `--secret`, `submitSecrets`).
pub fn check_secret_name(name: &str) -> Result<(), String> {
    if is_secret_id(name) {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a secret's name: write NAME of projects/P/secrets/NAME/versions/V \
             (letters, digits, - and _)"
        ))
    }
}

/// A Secret Manager secret's id (the NAME of `projects/P/secrets/NAME/versions/V`), or a
/// version's: letters, digits, `-` and `_`.
fn is_secret_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn env_keys(env: &[String]) -> BTreeSet<&str> {
    env.iter()
        .filter_map(|e| e.split_once('=').map(|(k, _)| k))
        .collect()
}

fn check_artifacts(config: &BuildConfig, diagnostics: &mut Diagnostics) {
    let path = FieldPath::root().key("artifacts");
    let artifacts = &config.artifacts;
    if !artifacts.images.is_empty()
        && !config.images.is_empty()
        && artifacts.images != config.images
    {
        diagnostics.error(
            &path.key("images"),
            "cannot specify different .images and .artifacts.images",
        );
    }
    let Some(objects) = &artifacts.objects else {
        return;
    };
    let path = path.key("objects");
    if objects.location.is_empty() {
        diagnostics.error(&path.key("location"), ".artifacts.location field is empty");
    } else if !objects.location.starts_with("gs://") && !objects.location.contains('$') {
        diagnostics.error(
            &path.key("location"),
            format!(
                "invalid .artifacts.location value {:?}; Google Cloud Storage URLs must begin with 'gs://'",
                objects.location
            ),
        );
    }
    if objects.paths.is_empty() {
        diagnostics.error(&path.key("paths"), ".artifacts.paths field empty");
    }
    if objects.paths.len() > MAX_ARTIFACT_PATHS {
        diagnostics.error(
            &path.key("paths"),
            format!(
                ".artifacts.paths field has length {}, but cannot specify more than {MAX_ARTIFACT_PATHS}",
                objects.paths.len()
            ),
        );
    }
    let mut seen = BTreeSet::new();
    for (i, p) in objects.paths.iter().enumerate() {
        if p.chars().any(char::is_whitespace) {
            diagnostics.error(
                &path.key("paths").index(i),
                format!(".artifacts.paths {p:?} contains whitespace"),
            );
        }
        if !seen.insert(p) {
            diagnostics.error(
                &path.key("paths").index(i),
                format!(".artifacts.paths field has duplicate paths; remove duplicates [{p}]"),
            );
        }
    }
}

/// The rules of `templates:` that hold before substitution; repositories, tags and globs are
/// checked once substituted (`plan`).
fn check_templates(templates: &[TemplatePush], diagnostics: &mut Diagnostics) {
    for (i, template) in templates.iter().enumerate() {
        let path = FieldPath::root().key("templates").index(i);
        if template.paths.is_empty() {
            diagnostics.error(
                &path.key("paths"),
                "list the template files to push, as globs relative to /workspace",
            );
        }
        if template.repository.is_empty() {
            diagnostics.error(
                &path.key("repository"),
                "name the repository to push to, e.g. localhost:5000/ml/training-pipeline",
            );
        }
        if let Some(regex) = &template.version_regex
            && let Err(message) = templates::version_regex(regex)
        {
            diagnostics.error(&path.key("versionRegex"), message);
        }
        if template.max_size_bytes.is_some_and(|size| size <= 0) {
            diagnostics.error(
                &path.key("maxSizeBytes"),
                "must be a positive number of bytes",
            );
        }
    }
}

/// An image name after substitution.
pub fn check_image(path: &FieldPath, name: &str, diagnostics: &mut Diagnostics) {
    if let Err(message) = image::validate(name) {
        diagnostics.error(path, message);
    }
}

/// A step's `name` after substitution: an image reference, in Cloud Build's words for a step.
pub fn check_step_name(path: &FieldPath, name: &str, diagnostics: &mut Diagnostics) {
    if image::validate(name).is_err() {
        let why = if image::validate(&name.to_ascii_lowercase()).is_ok() {
            "image names are lower case; only the tag may have upper case letters"
        } else {
            "not an image reference: [HOST[:PORT]/]PATH[:TAG][@DIGEST]"
        };
        diagnostics.error(path, format!("invalid build step name {name:?} ({why})"));
    }
}

/// Build tags after substitution: empty ones dropped, duplicates removed (the first kept), the
/// rest checked against Cloud Build's format.
pub fn clean_tags(tags: &[String], path: &FieldPath, diagnostics: &mut Diagnostics) -> Vec<String> {
    let mut kept: Vec<String> = Vec::new();
    for (i, tag) in tags.iter().enumerate() {
        if tag.is_empty() || kept.contains(tag) {
            continue;
        }
        if !TAG.is_match(tag) {
            diagnostics.error(
                &path.index(i),
                format!("invalid build tag {tag:?}: must match format \"^[\\w][\\w.-]{{0,127}}$\""),
            );
        }
        kept.push(tag.clone());
    }
    if kept.len() > MAX_TAGS {
        diagnostics.error(
            path,
            format!("number of tags {} exceeded (max: {MAX_TAGS})", kept.len()),
        );
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::{decode, tree};

    /// Decodes and validates `text`, returning the rendered diagnostics.
    fn check(text: &str) -> String {
        let root = tree::parse(text).unwrap();
        let mut diagnostics = Diagnostics::default();
        let config = decode::build_config(&root, &mut diagnostics);
        validate(&config, &mut diagnostics);
        diagnostics.locate(&root);
        diagnostics.render("c.yaml")
    }

    #[test]
    fn a_valid_config_has_no_diagnostics() {
        let out = check(
            "steps:\n- {name: ubuntu, id: a, volumes: [{name: v1, path: /v}]}\n\
             - {name: gcr.io/cloud-builders/docker, id: b, waitFor: [a], volumes: [{name: v1, path: /w}]}\n\
             - {name: ubuntu, waitFor: ['-'], env: ['A=1'], secretEnv: [PW]}\n\
             availableSecrets:\n  secretManager:\n  - {versionName: projects/p/secrets/pw/versions/1, env: PW}\n\
             tags: [ci, '', ci]\ntimeout: 2h\n",
        );
        assert_eq!(out, "");
    }

    #[test]
    fn step_rules_in_cloud_builds_words() {
        assert_eq!(
            check("steps: []\n"),
            "c.yaml:1:8: steps: config must list at least one step or specify remote_config \
             (builder reads no remote_config: list the steps)\n"
        );
        assert_eq!(
            check("steps:\n- {name: a, id: build}\n- name: b\n  waitFor: [buld]\n"),
            "c.yaml:4:13: steps[1].waitFor[0]: build step #1 depends on \"buld\", which has not \
             been defined; did you mean \"build\"?\n"
        );
        assert_eq!(
            check("steps:\n- {name: a, id: first, waitFor: [later]}\n- {name: b, id: later}\n"),
            "c.yaml:2:34: steps[0].waitFor[0]: build step #0 - \"first\" depends on \"later\", \
             which has not been defined (it is the id of a later step; a step can only wait for \
             earlier steps)\n"
        );
        let out = check(
            "steps:\n- {name: a, id: x}\n- {name: b, id: x}\n- {name: c, id: '-'}\n\
             - {name: d, script: echo, args: [x]}\n- {name: 'Bad', env: [NOEQ], allowExitCodes: [256]}\n\
             - {args: [x]}\n",
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 7, "{out}");
        assert!(lines[0].contains(
            "steps[1].id: build step #1 - \"x\": the ID is not unique (steps[0] has it too)"
        ));
        assert!(lines[1].contains(
            "steps[2].id: build step #2 - \"-\": the ID cannot be \"-\" which is reserved as a \
             dependency for build steps that should run first"
        ));
        assert!(lines[2].contains("steps[3].args: a step with `script` cannot also set"));
        assert!(lines[3].contains(
            "steps[4].name: invalid build step name \"Bad\" (image names are lower case"
        ));
        assert!(lines[4].contains(
            "steps[4].env[0]: build step #4: the Env entry \"NOEQ\" must be of the form \"KEY=VALUE\""
        ));
        assert!(lines[5].contains("exit code 256 is out of range"));
        assert!(lines[6].contains(
            "c.yaml:7:3: steps[5].name: build step 5 must specify name (the builder image the step runs)"
        ));
        assert!(check("steps: [{name: 'gcr.io/:broken'}]\n").contains(
            "steps[0].name: invalid build step name \"gcr.io/:broken\" (not an image reference"
        ));
    }

    #[test]
    fn limits_in_cloud_builds_words() {
        let many = |n: usize, item: &str| vec![item; n].join(", ");
        let out = check(&format!(
            "steps:\n- name: a\n  args: [{}]\n  env: [{}]\n  dir: {}\n- {{name: b, args: [{}]}}\n\
             options: {{env: [{}, NOEQ]}}\nimages: [{}]\n",
            many(101, "x"),
            many(101, "A=1"),
            "d".repeat(1001),
            "y".repeat(10_001),
            many(101, "B=2"),
            many(101, "gcr.io/p/app"),
        ));
        for expected in [
            "c.yaml:3:9: steps[0].args: build step 0 too many args (max: 100; found 101)",
            "c.yaml:4:8: steps[0].env: build step #0: too many envs (max: 100; found 101)",
            "c.yaml:5:8: steps[0].dir: build step 0 dir too long (max: 1000)",
            "c.yaml:6:20: steps[1].args[0]: build step 1 arg 0 too long (max: 10000)",
            "c.yaml:7:16: options.env: invalid .options.env field: too many envs (max: 100; found 102)",
            "options.env[101]: invalid .options.env field: the Env entry \"NOEQ\" must be of the form",
            "c.yaml:8:9: images: cannot specify more than 100 images to build",
        ] {
            assert!(out.contains(expected), "missing {expected:?} in\n{out}");
        }
        let steps = many(301, "{name: a}");
        assert!(
            check(&format!("steps: [{steps}]\n"))
                .contains("steps: cannot specify more than 300 build steps (found 301)")
        );
        let tags = (0..65)
            .map(|i| format!("t{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        assert!(
            check(&format!("steps: [{{name: a}}]\ntags: [{tags}]\n"))
                .contains("tags: number of tags 65 exceeded (max: 64)")
        );
    }

    #[test]
    fn timeouts_in_cloud_builds_words() {
        assert_eq!(
            check("steps: [{name: a}]\ntimeout: 25h\n"),
            "c.yaml:2:10: timeout: timeout exceeds the timeout limit of 24h0m0s\n"
        );
        assert!(check("steps: [{name: a}]\ntimeout: 24h\n").is_empty());
        assert_eq!(
            check("steps: [{name: a, timeout: 2h}]\n"),
            "c.yaml:1:28: steps[0].timeout: invalid .timeout in build step #0: build step timeout \
             2h0m0s must be <= build timeout 1h0m0s (the default build timeout; set the build's \
             `timeout`)\n"
        );
        assert!(
            check("steps: [{name: a, timeout: 2h}]\ntimeout: 90m\n")
                .contains("must be <= build timeout 1h30m0s (raise the build's `timeout`)")
        );
        assert!(check("steps: [{name: a, timeout: 2h}]\ntimeout: 3h\n").is_empty());
    }

    #[test]
    fn volume_rules() {
        let out = check(
            "steps:\n- name: a\n  volumes: [{name: x, path: rel}, {name: ok, path: /workspace}, {name: ok, path: /cloudbuild/a}]\n\
             - {name: b, volumes: [{name: ok, path: /a}, {name: g1, path: /g}, {name: ok2, path: /a/}]}\n\
             options: {volumes: [{name: g1, path: /g}]}\n",
        );
        for expected in [
            "volume name \"x\" does not match",
            "path \"rel\" is not valid, must be absolute",
            "path \"/workspace\" is reserved",
            "cannot start with /cloudbuild/",
            "steps[0].volumes[2].name: volume name \"ok\" is defined in more than one volume entry",
            "steps[1].volumes[1].name: build step #1: volume name \"g1\" conflicts with global volume",
            "steps[1].volumes[1].path: build step #1: volume path \"/g\" conflicts with global volume",
            "steps[1].volumes[2].path: volume path \"/a\" is defined in more than one volume entry",
            "Volume \"x\" is only used by one step",
        ] {
            assert!(out.contains(expected), "missing {expected:?} in\n{out}");
        }
        assert!(
            check("steps: [{name: a}]\noptions: {volumes: [{name: g1, path: /g}]}\n")
                .contains("fewer than two steps")
        );
        assert_eq!(clean("/a/b/../c//./d"), "/a/c/d");
        assert_eq!(clean("foo/../.."), "..");
    }

    #[test]
    fn substitution_keys_and_tags() {
        let out = check(
            "steps: [{name: a}]\nsubstitutions: {_OK: 1, REPO_NAME: x, _lower: y, _: z}\ntags: ['feature/x']\n",
        );
        assert!(out.contains(
            "substitutions.REPO_NAME: substitution key REPO_NAME does not respect format"
        ));
        assert!(out.contains("substitutions._lower:"));
        assert!(out.contains("substitutions._:"));
        assert!(out.contains("tags[0]: invalid build tag \"feature/x\""));
        let keys: String = (0..201).map(|i| format!("_K{i}: v, ")).collect();
        let out = check(&format!(
            "steps: [{{name: a}}]\nsubstitutions: {{{keys}_{}: v, _LONG: {}}}\n",
            "K".repeat(100),
            "v".repeat(4001)
        ));
        for expected in [
            "c.yaml:2:16: substitutions: number of substitutions 203 exceeded (max: 200)",
            "too long (max: 100)",
            "substitutions._LONG: substitution value \"vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv…\" \
             too long (max: 4000)",
        ] {
            assert!(out.contains(expected), "missing {expected:?} in\n{out}");
        }
        assert!(out.contains(&format!(
            "substitution key \"_{}\" too long",
            "K".repeat(100)
        )));
        let mut diagnostics = Diagnostics::default();
        let tags = ["a", "", "b", "a"].map(String::from);
        assert_eq!(
            clean_tags(&tags, &FieldPath::root(), &mut diagnostics),
            ["a", "b"]
        );
    }

    #[test]
    fn secret_rules() {
        let out = check(
            "steps:\n- {name: a, secretEnv: [A, A, G, MISSING], env: [A=1]}\n- {name: b}\n\
             options: {secretEnv: [G, G]}\n\
             availableSecrets:\n  secretManager:\n  - {versionName: projects/p/secrets/a/versions/1, env: A}\n\
             \x20 - {versionName: projects/p/secrets/g/versions/1, env: G}\n\
             \x20 - {versionName: nope, env: UNUSED}\n",
        );
        for expected in [
            "Step 0 uses the secretEnv \"A\" more than once",
            "Step 0 uses the global secretEnv \"G\"",
            "secretEnv \"MISSING\" is used without being defined",
            "Build uses global secretEnv \"G\" more than once",
            "step 0 has secret and non-secret env \"A\"",
            "secretEnv \"UNUSED\" is defined without being used",
            "\"nope\" is not of the form projects/*/secrets/*/versions/*",
        ] {
            assert!(out.contains(expected), "missing {expected:?} in\n{out}");
        }
        assert!(check("steps: [{name: a, secretEnv: [K]}]\nsecrets: [{kmsKeyName: k, secretEnv: {K: abc}}]\n")
            .contains("warning: secrets: KMS-encrypted secrets cannot be decrypted"));
        // Ignored, but bounded as Cloud Build bounds it.
        let out = check(&format!(
            "steps: [{{name: a, secretEnv: [K]}}]\navailableSecrets: {{inline: [{{kmsKeyName: k, envMap: {{K: {}}}}}]}}\n",
            "c".repeat(65537)
        ));
        assert!(
            out.contains(
                "availableSecrets.inline[0].envMap.K: secretEnv value for \"K\" cannot exceed 65536B"
            ),
            "{out}"
        );
    }

    #[test]
    fn secret_names_cannot_be_paths() {
        assert!(is_secret_version(
            "projects/<P>/secrets/db-pw/versions/latest"
        ));
        assert!(!is_secret_version("projects/p/secrets/../versions/x"));
        assert!(!is_secret_version("projects/p/secrets/pw/versions/.."));
        assert!(!is_secret_version("projects/p/secrets/pw/versions/1/extra"));
    }

    #[test]
    fn artifact_rules() {
        let out = check(
            "steps: [{name: a}]\nimages: [x]\nartifacts:\n  images: [y]\n  objects: {location: s3://b, paths: [a, a, 'b c']}\n",
        );
        for expected in [
            "cannot specify different .images and .artifacts.images",
            "Google Cloud Storage URLs must begin with 'gs://'",
            "c.yaml:5:42: artifacts.objects.paths[1]: .artifacts.paths field has duplicate paths; \
             remove duplicates [a]",
            "contains whitespace",
        ] {
            assert!(out.contains(expected), "missing {expected:?} in\n{out}");
        }
        let paths = vec!["p"; 101].join(", ");
        let out = check(&format!(
            "steps: [{{name: a}}]\nartifacts: {{objects: {{location: '', paths: [{paths}]}}}}\n"
        ));
        for expected in [
            "artifacts.objects.location: .artifacts.location field is empty",
            "artifacts.objects.paths: .artifacts.paths field has length 101, but cannot specify \
             more than 100",
        ] {
            assert!(out.contains(expected), "missing {expected:?} in\n{out}");
        }
    }
}
