//! The one build pipeline that `builder submit` and the server share: a [`Recipe`] (a config and
//! what it resolves with) is checked, resolved for a build id on this [`Machine`] and given its
//! secrets ([`plan`]), then run on the engine and recorded as it goes ([`record`]); builds whose
//! process died are closed ([`record::recover`]).
//!
//! Where the source comes from (an upload, a commit) and where the recipe's config is read from
//! (a file, `--tag`, a trigger) is the caller's; every rule about what a build may be, and the
//! words for refusing it, are here, once.
//!
//! The layer's other modules drive it: [`execute`] runs a plan on a runtime backend, [`submit`]
//! prepares `builder submit`'s source and recipe, [`service`] runs the server's intake, queue,
//! schedules and commands.

pub mod execute;
pub mod live;
pub mod record;
pub mod service;
pub mod submit;

use std::path::PathBuf;

use crate::adapters::registry::Registries;
use crate::adapters::secrets;
use crate::core::alias::Aliases;
use crate::core::config::BuildConfig;
use crate::core::config::tree::Node;
use crate::core::diag::{Diagnostics, FieldPath};
use crate::core::plan::{self, Context, Inputs, ResolvedBuild, SecretScope};
use crate::core::substitute::Values;
use crate::pipeline::execute::Run;

pub use crate::adapters::store::Lease;
pub use record::{
    HEARTBEAT, Holder, LEASE, Onlooker, RecoverError, check_name, default_name, held, holder_name,
    host_name, record, recover, run, sweep_finished,
};

/// The directory under a data directory where the holders of running builds keep their locks.
pub const HOLDERS: &str = "holders";

/// What this machine adds to every build it prepares.
#[derive(Clone)]
pub struct Machine {
    /// The value of `$PROJECT_ID`.
    pub project: String,
    pub aliases: Aliases,
    /// Where local secrets are looked up (see [`secrets`]).
    pub secrets_dir: Option<PathBuf>,
    pub registries: Registries,
    /// Every build here may reach the machine through the engine (`submit --trusted`, `serve
    /// --trusted`); otherwise only a trusted trigger's may.
    pub trusted: bool,
    /// How many bytes of its steps' output a build's log keeps (`--log-limit`, `logLimit`).
    pub log_limit: u64,
}

/// A checked config and what it resolves with.
pub struct Recipe {
    pub config: BuildConfig,
    /// The config's tree, to locate problems found when resolving; `None` for a trigger's inline
    /// build.
    pub tree: Option<Node>,
    /// The config's name, for messages.
    pub file: String,
    pub context: Context,
    /// Built-ins the source knows (`COMMIT_SHA`, `BRANCH_NAME`…); the machine's are added.
    pub built_ins: Values,
    pub overrides: Values,
    /// The config's warnings, rendered with their locations.
    pub warnings: String,
    /// Whether its build may reach the machine through the engine (see `execute::Run`).
    pub trusted: bool,
    /// The secrets its build may read.
    pub secrets: SecretScope,
}

/// Why a build was refused before anything ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The config's problems, rendered one per line with their locations.
    Invalid(String),
    /// Secrets the config names that this machine does not have, cannot decrypt, or that the
    /// build may not read (outside its [`SecretScope`]).
    Secrets(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Invalid(diagnostics) => f.write_str(diagnostics.trim_end()),
            Refused::Secrets(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for Refused {}

/// What a recipe is read with besides its config's bytes.
pub struct Reading {
    /// The config's name, for messages.
    pub file: String,
    pub context: Context,
    pub built_ins: Values,
    pub overrides: Values,
    /// `--timeout`: judged as if the config said it.
    pub timeout: Option<std::time::Duration>,
    /// Whether a source is uploaded with the build: then the config may not name its own.
    pub uploads: bool,
    /// Whether the build may reach the machine through the engine (a trusted trigger's).
    pub trusted: bool,
    /// The secrets the build may read.
    pub secrets: SecretScope,
}

impl Recipe {
    /// Reads and checks a config: every problem, located, refuses it.
    pub fn load(bytes: &[u8], reading: Reading) -> Result<Recipe, Refused> {
        let timeout = reading.timeout;
        let mut loaded = plan::load_with(bytes, |config| {
            if timeout.is_some() {
                config.timeout = timeout;
            }
        })
        .map_err(|d| Refused::Invalid(d.render(&reading.file)))?;
        loaded.add(check_source(&loaded.config, reading.uploads));
        let rendered = loaded.diagnostics.render(&reading.file);
        if loaded.diagnostics.has_errors() {
            return Err(Refused::Invalid(rendered));
        }
        Ok(Recipe {
            config: loaded.config,
            tree: Some(loaded.tree),
            file: reading.file,
            context: reading.context,
            built_ins: reading.built_ins,
            overrides: reading.overrides,
            warnings: rendered,
            trusted: reading.trusted,
            secrets: reading.secrets,
        })
    }
}

/// gcloud refuses a config that names its own `source` unless nothing is uploaded (spec §1).
fn check_source(config: &BuildConfig, uploads: bool) -> Diagnostics {
    let mut diagnostics = Diagnostics::default();
    if config.source && uploads {
        diagnostics.error(
            &FieldPath::root().key("source"),
            "config cannot specify source without the flag --no-source",
        );
    }
    diagnostics
}

/// The build `recipe` resolves to as build `build_id` on `machine`: what is refused before a
/// build is queued, secrets outside the recipe's scope included.
pub fn resolve(
    build_id: &str,
    recipe: &Recipe,
    machine: &Machine,
) -> Result<ResolvedBuild, Refused> {
    let config = &recipe.config;
    if !config.secrets.is_empty() || !config.available_secrets.inline.is_empty() {
        return Err(Refused::Secrets(
            "KMS-encrypted secrets (`secrets`, `availableSecrets.inline`) are not supported here: \
             builder cannot decrypt them; use availableSecrets.secretManager with a local secret"
                .into(),
        ));
    }
    let mut built_ins = recipe.built_ins.clone();
    built_ins.extend(plan::machine_built_ins(&machine.project, build_id));
    let inputs = Inputs {
        context: recipe.context,
        built_ins,
        overrides: recipe.overrides.clone(),
        aliases: machine.aliases.clone(),
    };
    let located = |mut diagnostics: Diagnostics| {
        if let Some(tree) = &recipe.tree {
            diagnostics.locate(tree);
        }
        diagnostics.render(&recipe.file)
    };
    let build = plan::resolve(config, &inputs).map_err(|d| Refused::Invalid(located(d)))?;
    // Judged on the substituted names: a substitution cannot reach another secret.
    let out_of_scope = recipe.secrets.check(&build.secrets);
    if out_of_scope.has_errors() {
        return Err(Refused::Secrets(
            located(out_of_scope).trim_end().to_string(),
        ));
    }
    Ok(build)
}

/// The run `recipe` resolves to as build `build_id` on `machine` ([`resolve`]), with its secrets:
/// what is refused before a build runs. Its workspace is not set yet.
pub fn plan(build_id: &str, recipe: &Recipe, machine: &Machine) -> Result<Run, Refused> {
    let build = resolve(build_id, recipe, machine)?;
    let secrets = secrets::resolve(&build.secrets, machine.secrets_dir.as_deref(), |key| {
        std::env::var(key).ok()
    })
    .map_err(Refused::Secrets)?;
    Ok(Run {
        build_id: build_id.to_string(),
        build,
        workspace: None,
        secrets,
        registries: machine.registries.clone(),
        trusted: recipe.trusted || machine.trusted,
        aliases: machine.aliases.clone(),
        log_limit: machine.log_limit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_with_a_source_needs_no_source() {
        let loaded = plan::load(b"steps: [{name: ubuntu}]\nsource: {storageSource: {bucket: b}}\n")
            .expect("a config");
        assert!(!loaded.diagnostics.has_errors());
        let mut refused = check_source(&loaded.config, true);
        refused.locate(&loaded.tree);
        assert_eq!(
            refused.render("c.yaml"),
            "c.yaml:2:9: source: config cannot specify source without the flag --no-source\n"
        );
        assert!(!check_source(&loaded.config, false).has_errors());
    }
}
