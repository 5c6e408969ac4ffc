//! The `builder` command line: parses arguments and calls the library. Exit codes: 0 success,
//! 1 invalid input or a build that did not succeed, 2 usage error (clap's own).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::adapters::registry::{self, Registries};
use crate::adapters::runtime::DockerBackend;
use crate::adapters::store::{Builds as _, Logs as _, SqliteStore, waiting_for};
use crate::adapters::{secrets, source};
use crate::core::alias::Aliases;
use crate::core::build::Status;
use crate::core::config::{Loaded, duration, validate};
use crate::core::diag::{Diagnostics, FieldPath};
use crate::core::plan::{self, Context, Inputs};
use crate::core::schedule::{self, Cron, Times};
use crate::core::substitute::Values;
use crate::core::triggers::webhook::{self, Refused};
use crate::core::{triggers, webhooks, wire};
use crate::pipeline;
use crate::pipeline::execute::{DEFAULT_LOG_LIMIT, Event};
use crate::pipeline::submit;

/// The most log lines `builds log` reads and prints at once.
const LOG_PAGE: u32 = 10_000;

/// `println!` that returns the write's error instead of panicking on it (see [`output`]).
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::edges::cli::output::write_fmt(format_args!("{}\n", format_args!($($arg)*)))
    };
}

mod output;
mod remote;
mod serve;
mod supervise;
mod templates;

#[derive(Parser)]
#[command(
    name = "builder",
    version,
    about = "Runs Google Cloud Build configs on machines you own"
)]
pub struct Cli {
    /// Where builds are recorded (default: $XDG_DATA_HOME/builder or ~/.local/share/builder).
    #[arg(long, global = true, env = "BUILDER_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Image aliases and registry mirrors over the shipped table (see builders/aliases.yaml).
    #[arg(long, global = true, env = "BUILDER_ALIASES", value_name = "FILE")]
    aliases: Option<PathBuf>,
    /// Talk to `builder serve` at URL (e.g. http://127.0.0.1:8080) instead of this machine's
    /// records and engine.
    #[arg(long, global = true, env = "BUILDER_SERVER", value_name = "URL")]
    server: Option<String>,
    /// File holding the server's API token, for requests that change anything (or set
    /// BUILDER_API_TOKEN).
    #[arg(long, global = true, value_name = "FILE")]
    token_file: Option<PathBuf>,
    #[command(flatten)]
    registry: RegistryArgs,
    #[command(subcommand)]
    command: Command,
}

/// How registries are reached, for images and templates alike.
#[derive(Args, Clone, Default)]
struct RegistryArgs {
    /// A Docker config file with registry credentials (`auths`, `credHelpers`, `credsStore`)
    /// [default: $DOCKER_CONFIG/config.json, else ~/.docker/config.json].
    #[arg(
        long,
        global = true,
        env = "BUILDER_REGISTRY_CONFIG",
        value_name = "FILE"
    )]
    registry_config: Option<PathBuf>,
    /// A registry that may be reached over plain HTTP when HTTPS fails (repeatable; loopback
    /// always may).
    #[arg(long = "insecure-registry", global = true, value_name = "HOST[:PORT]")]
    insecure_registries: Vec<String>,
    /// A CA certificate (PEM) to trust for registries, besides the system's and those in
    /// /etc/docker/certs.d/HOST/ (repeatable).
    #[arg(long = "registry-ca", global = true, value_name = "FILE")]
    registry_cas: Vec<PathBuf>,
}

impl RegistryArgs {
    fn settings(self) -> registry::Settings {
        registry::Settings {
            docker_config: self.registry_config,
            insecure: self.insecure_registries,
            ca_files: self.registry_cas,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Check and resolve build configs without running them.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run a build from a local source directory, like `gcloud builds submit`.
    Submit(SubmitArgs),
    /// Recorded builds.
    #[command(subcommand)]
    Builds(BuildsCommand),
    /// Run the build service: GitHub webhooks, triggers, the build queue and the API.
    Serve(Box<serve::ServeArgs>),
    /// Run builds on this machine's engine, claimed from the store that `builder serve`
    /// queues them in (`--store postgres://…`), for one pool.
    Worker(serve::WorkerArgs),
    /// Build triggers: what GitHub pushes start builds.
    #[command(subcommand)]
    Triggers(TriggersCommand),
    /// Pipeline templates as versioned OCI artifacts in a registry.
    #[command(subcommand)]
    Templates(templates::TemplatesCommand),
    /// Cron schedules that run triggers.
    #[command(subcommand)]
    Schedules(SchedulesCommand),
}

#[derive(Subcommand)]
enum SchedulesCommand {
    /// The next times a unix-cron expression fires, in UTC and in a time zone; needs no server.
    Preview(PreviewArgs),
    /// The server's schedules, with their next and last runs (needs --server).
    List,
    /// One schedule, with the runs it skipped and why (needs --server).
    Describe { name: String },
    /// Start a run now, whatever the schedule's time, policies or pause (needs --server).
    RunNow { name: String },
    /// Skip the schedule's runs, recording them as skipped, until it is resumed (needs --server).
    Pause { name: String },
    /// Resume a paused schedule; the runs missed meanwhile do not start (needs --server).
    Resume { name: String },
}

#[derive(Args)]
struct PreviewArgs {
    /// Five fields: minute hour day-of-month month day-of-week, e.g. "0 3 * * MON".
    expression: String,
    /// The IANA time zone the expression is read in.
    #[arg(long, default_value = "UTC", value_name = "TZ")]
    time_zone: String,
    /// Fire times after this time (RFC 3339) [default: now].
    #[arg(long, value_name = "RFC3339")]
    from: Option<String>,
    /// How many fire times.
    #[arg(long, default_value_t = 5, value_name = "N")]
    count: usize,
    /// Print JSON instead of text.
    #[arg(long, value_enum)]
    format: Option<JsonFormat>,
}

#[derive(Subcommand)]
enum TriggersCommand {
    /// The server's triggers, with their rules in words (needs --server).
    List,
    /// One trigger (needs --server).
    Describe { name: String },
    /// Run a trigger by hand, like `gcloud builds triggers run` (needs --server).
    Run(TriggerRunArgs),
    /// Create a trigger from a file as `gcloud builds triggers export` writes it, or replace the
    /// one it names (needs --server).
    Import {
        /// The trigger file (YAML or JSON).
        file: PathBuf,
    },
    /// Whether a GitHub delivery, or a request to a webhook trigger, would fire a trigger, why or
    /// why not, and the substitutions its build would get; runs nothing. Exit 0 either way, 1 for an invalid trigger or delivery.
    Test(TriggerTestArgs),
}

#[derive(Args)]
struct TriggerTestArgs {
    /// The trigger file (YAML or JSON, as `gcloud builds triggers export` writes it).
    #[arg(long, value_name = "FILE")]
    trigger: PathBuf,
    /// The delivery's `X-GitHub-Event`, or `webhook` for a request to a webhook trigger's URL.
    #[arg(long, default_value = "push")]
    event_type: String,
    /// The delivery's JSON body (e.g. one of webhooks/github/), or the webhook request's.
    #[arg(long, value_name = "PAYLOAD.json")]
    event: PathBuf,
    /// A query parameter of the webhook request (repeatable): `secret=VALUE` is checked against
    /// the trigger's secret, read as secretEnv values are.
    #[arg(long = "query", value_name = "KEY=VALUE", value_parser = parse_pair)]
    query: Vec<(String, String)>,
    /// Directory of local secret values, for a webhook trigger's secret (see README).
    #[arg(long, env = "BUILDER_SECRETS_DIR", value_name = "DIR")]
    secrets_dir: Option<PathBuf>,
    /// A file the push (or pull request) changed, relative to the repository root (repeatable).
    #[arg(long = "changed-file", value_name = "PATH")]
    changed_files: Vec<String>,
    /// An `issue_comment` delivery on the pull request of `--event` (repeatable): each is judged
    /// in order, as a `/gcbrun` that may build it.
    #[arg(long = "comment", value_name = "ISSUE_COMMENT.json")]
    comments: Vec<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, value_enum)]
    format: Option<JsonFormat>,
}

#[derive(Args)]
struct TriggerRunArgs {
    name: String,
    /// Build the head of this branch.
    #[arg(long, conflicts_with_all = ["tag", "sha"])]
    branch: Option<String>,
    /// Build what this tag points to.
    #[arg(long, conflicts_with = "sha")]
    tag: Option<String>,
    /// Build this commit.
    #[arg(long)]
    sha: Option<String>,
    /// Extra user substitutions: `_KEY=VALUE,...`.
    #[arg(long, value_name = "KEY=VALUE,...", value_parser = parse_substitutions)]
    substitutions: Option<Values>,
}

#[derive(Clone, Copy, ValueEnum)]
enum JsonFormat {
    Json,
}

#[derive(Subcommand)]
enum BuildsCommand {
    /// The newest builds first.
    List {
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// A build's record: status, steps, substitutions, source, results.
    Describe {
        /// Build id (or a unique prefix of it).
        id: String,
    },
    /// A build's log, as it was streamed.
    Log {
        /// Build id (or a unique prefix of it).
        id: String,
        /// Follow the log of an unfinished build until it ends.
        #[arg(long)]
        stream: bool,
    },
    /// Cancel a pending, queued or running build (needs --server).
    Cancel { id: String },
    /// Approve a build that waits PENDING for approval: it is queued and runs (needs --server).
    Approve {
        id: String,
        /// Why, recorded with the approval.
        #[arg(long)]
        comment: Option<String>,
    },
    /// Reject a build that waits PENDING for approval: it ends REJECTED and never runs (needs
    /// --server).
    Reject {
        id: String,
        /// Why, recorded with the rejection.
        #[arg(long)]
        comment: Option<String>,
    },
    /// Queue a new build of what a triggered or submitted build ran (needs --server).
    Retry { id: String },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Report every problem in build configs, warnings included (on stderr).
    Validate {
        /// Config files (YAML or JSON).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the build a config resolves to: final steps, environment, dependencies, substitutions.
    Resolve(ResolveArgs),
}

#[derive(Args)]
struct ResolveArgs {
    /// Config file (YAML or JSON).
    file: PathBuf,
    #[command(flatten)]
    substitutions: SubstitutionArgs,
    /// Resolve as a manual build or as a trigger build (always ALLOW_LOOSE and dynamic).
    #[arg(long, value_enum, default_value_t = Context::Manual)]
    context: Context,
    /// A built-in's value, as a trigger or the server would supply it (repeatable), e.g.
    /// `--builtin BRANCH_NAME=main --builtin COMMIT_SHA=…`.
    #[arg(long = "builtin", value_name = "KEY=VALUE", value_parser = parse_pair)]
    built_ins: Vec<(String, String)>,
    #[command(flatten)]
    project: ProjectArgs,
    #[arg(long, value_enum, default_value_t = Format::Json)]
    format: Format,
}

#[derive(Args)]
struct SubstitutionArgs {
    /// User substitutions and overridable built-ins: `_KEY=VALUE,_OTHER=VALUE`; values with
    /// commas use gcloud's alternate delimiter, `^;^_A=x,y;_B=z`.
    #[arg(long, value_name = "KEY=VALUE,...", value_parser = parse_substitutions)]
    substitutions: Option<Values>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Json,
    Yaml,
}

#[derive(Args)]
struct SubmitArgs {
    /// The source directory to upload into /workspace.
    #[arg(default_value = ".", conflicts_with = "no_source")]
    source: PathBuf,
    /// Run with an empty /workspace.
    #[arg(long)]
    no_source: bool,
    /// The build config (YAML or JSON).
    #[arg(long, default_value = "cloudbuild.yaml", conflicts_with = "tag")]
    config: PathBuf,
    /// Build SOURCE's Dockerfile into IMAGE and push it, instead of reading a config.
    #[arg(long, short = 't', value_name = "IMAGE")]
    tag: Option<String>,
    #[command(flatten)]
    substitutions: SubstitutionArgs,
    /// The build's timeout, overriding the config's: seconds, or units such as `10m`, `2h`.
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Print, sorted, the files that would be uploaded, and exit.
    #[arg(long)]
    list_files: bool,
    /// Return once the build is checked and started; follow it with `builder builds log --stream ID`.
    #[arg(long = "async")]
    detach: bool,
    /// Queue the build PENDING until someone approves it (`builder builds approve`); needs
    /// --server.
    #[arg(long)]
    require_approval: bool,
    /// The id to give the build (used by `--async` to hand a build to a background process).
    #[arg(long, hide = true)]
    build_id: Option<String>,
    /// Ignore file to use instead of SOURCE/.gcloudignore.
    #[arg(long, value_name = "FILE")]
    ignore_file: Option<PathBuf>,
    /// Directory of local secret values for availableSecrets.secretManager (see README).
    #[arg(long, env = "BUILDER_SECRETS_DIR", value_name = "DIR")]
    secrets_dir: Option<PathBuf>,
    /// A secret the build may read (repeatable): NAME of
    /// `projects/P/secrets/NAME/versions/V` in availableSecrets.secretManager. A config naming
    /// another secret is refused (see README, "Security model").
    #[arg(long = "secret", value_name = "NAME", value_parser = parse_secret_name)]
    secrets: Vec<String>,
    /// Let the build's steps reach this machine through the engine: privileged containers,
    /// host paths, host namespaces, devices, added capabilities (see README, "Security model").
    #[arg(long)]
    trusted: bool,
    /// How many bytes of its steps' output the build's log keeps; past it, one line says where
    /// the log was cut, and the steps run on unlogged. Of a build run here, not on `--server`.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_LOG_LIMIT)]
    log_limit: u64,
    #[command(flatten)]
    project: ProjectArgs,
}

/// The project builds belong to, shared by the commands that resolve a config as this machine
/// runs it.
#[derive(Args)]
struct ProjectArgs {
    /// The value of $PROJECT_ID.
    #[arg(long, env = "BUILDER_PROJECT", default_value = "local")]
    project: String,
}

pub fn run(cli: Cli) -> ExitCode {
    let data_dir = cli.data_dir.clone().unwrap_or_else(default_data_dir);
    let aliases = || Aliases::load(cli.aliases.as_deref()).map_err(anyhow::Error::msg);
    let registries =
        || Registries::new(&cli.registry.clone().settings()).map_err(anyhow::Error::msg);
    let result = match cli.command {
        Command::Config(ConfigCommand::Validate { files }) => validate(&files),
        Command::Config(ConfigCommand::Resolve(args)) => aliases().and_then(|a| resolve(&args, a)),
        Command::Submit(args) if !args.list_files && cli.server.is_some() => {
            remote::client(cli.server, cli.token_file).and_then(|c| remote::submit(args, c))
        }
        Command::Submit(args) => aliases()
            .and_then(|a| Ok((a, registries()?)))
            .and_then(|(a, r)| submit(args, a, r, &data_dir)),
        Command::Templates(command) => registries().and_then(|r| templates::run(command, r)),
        Command::Builds(command) if cli.server.is_some() => {
            remote::client(cli.server, cli.token_file).and_then(|c| remote::builds(command, c))
        }
        Command::Builds(command) => builds(command, &data_dir),
        Command::Triggers(TriggersCommand::Test(args)) => test_trigger(&args),
        Command::Triggers(command) => {
            remote::client(cli.server, cli.token_file).and_then(|c| remote::triggers(command, c))
        }
        Command::Schedules(SchedulesCommand::Preview(args)) => preview_schedule(&args),
        Command::Schedules(command) => {
            remote::client(cli.server, cli.token_file).and_then(|c| remote::schedules(command, c))
        }
        Command::Worker(args) => {
            serve::worker(args, cli.data_dir, cli.aliases, cli.registry.settings())
        }
        Command::Serve(args) => {
            serve::serve(*args, cli.data_dir, cli.aliases, cli.registry.settings())
        }
    };
    match result {
        Ok(code) => code,
        Err(e) if output::is_closed(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn validate(files: &[PathBuf]) -> Result<ExitCode> {
    let mut failed = false;
    for file in files {
        let loaded = load(file)?;
        failed |= loaded.is_none_or(|l| l.diagnostics.has_errors());
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn resolve(args: &ResolveArgs, aliases: Aliases) -> Result<ExitCode> {
    let Some(mut loaded) = load(&args.file)? else {
        return Ok(ExitCode::from(1));
    };
    if loaded.diagnostics.has_errors() {
        return Ok(ExitCode::from(1));
    }
    let inputs = Inputs {
        context: args.context,
        // `config resolve` runs no build, so `$BUILD_ID` stays empty unless `--builtin` sets it.
        built_ins: plan::machine_built_ins(&args.project.project, "")
            .into_iter()
            .chain(args.built_ins.iter().cloned())
            .collect(),
        overrides: args.substitutions.substitutions.clone().unwrap_or_default(),
        aliases,
    };
    match plan::resolve(&loaded.config, &inputs) {
        Ok(build) => {
            let mut warnings = Diagnostics::default();
            for (i, step) in build.steps.iter().enumerate() {
                if let Some(warning) = &step.image_warning {
                    warnings.warning(
                        &FieldPath::root().key("steps").index(i).key("name"),
                        warning,
                    );
                }
            }
            // Loading printed its own diagnostics already.
            loaded.diagnostics = Default::default();
            loaded.add(warnings);
            eprint!(
                "{}",
                loaded.diagnostics.render(&args.file.display().to_string())
            );
            let out = match args.format {
                Format::Json => serde_json::to_string_pretty(&build)? + "\n",
                Format::Yaml => serde_saphyr::to_string(&build)?,
            };
            output::write(out.as_bytes())?;
            Ok(ExitCode::SUCCESS)
        }
        Err(diagnostics) => {
            let name = args.file.display().to_string();
            loaded.diagnostics = Default::default();
            loaded.add(diagnostics);
            eprint!("{}", loaded.diagnostics.render(&name));
            Ok(ExitCode::from(1))
        }
    }
}

/// Reads and checks a config, printing its diagnostics on stderr. `None` when it is not a
/// document at all.
fn load(file: &Path) -> Result<Option<Loaded>> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let name = file.display().to_string();
    match plan::load(&bytes) {
        Ok(loaded) => {
            eprint!("{}", loaded.diagnostics.render(&name));
            Ok(Some(loaded))
        }
        Err(diagnostics) => {
            eprint!("{}", diagnostics.render(&name));
            Ok(None)
        }
    }
}

/// A secret from a file (trimmed) or else an environment variable; empty if neither is set.
fn secret(file: &Option<PathBuf>, variable: &str) -> Result<Vec<u8>> {
    Ok(match (file, std::env::var(variable)) {
        (Some(file), _) => std::fs::read(file)
            .with_context(|| format!("cannot read {}", file.display()))?
            .trim_ascii()
            .to_vec(),
        (None, Ok(secret)) => secret.into_bytes(),
        (None, Err(_)) => Vec::new(),
    })
}

fn test_trigger(args: &TriggerTestArgs) -> Result<ExitCode> {
    let name = args.trigger.display().to_string();
    let trigger = match triggers::load(&read_input(&args.trigger)?) {
        Ok((trigger, warnings)) => {
            eprint!("{}", warnings.render(&name));
            trigger
        }
        Err(diagnostics) => {
            eprint!("{}", diagnostics.render(&name));
            return Ok(ExitCode::from(1));
        }
    };
    let event = read_input(&args.event)?;
    let (event, comments) = if args.event_type == "webhook" {
        (test_webhook(args, &trigger, &event)?, Vec::new())
    } else {
        test_delivery(args, &trigger, &event)?
    };
    if args.format.is_some() {
        let mut report = event.report();
        report["trigger"] = trigger.name.clone().into();
        if !comments.is_empty() {
            let judged: Vec<_> = comments
                .iter()
                .map(|(file, verdict)| {
                    let mut report = verdict.report();
                    report["comment"] = file.clone().into();
                    report
                })
                .collect();
            report["comments"] = judged.into();
        }
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    event.print(&format!("trigger {:?}", trigger.name))?;
    for (file, verdict) in &comments {
        verdict.print(&format!("after comment {file}, trigger {:?}", trigger.name))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn read_input(file: &Path) -> Result<Vec<u8>> {
    std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))
}

/// What a GitHub delivery `event` (`--event-type`), then each `--comment` on it, would build.
fn test_delivery(
    args: &TriggerTestArgs,
    trigger: &triggers::Trigger,
    event: &[u8],
) -> Result<(Verdict, Vec<(String, Verdict)>)> {
    let delivery = webhooks::parse(&args.event_type, event)
        .with_context(|| args.event.display().to_string())?;
    let files = &args.changed_files;
    let judged = |fired: Result<(Values, Option<bool>), triggers::Skip>| Verdict {
        built_ins: (fired.and_then(|values| trigger.files_fire(files).map(|()| values)))
            .map_err(|skip| skip.to_string()),
        substitutions: trigger.substitutions.clone(),
    };
    let (event, pull_request) = match &delivery {
        webhooks::Delivery::PullRequest(event) => {
            let fired = trigger.fires_on_pull_request(event).map(|approval| {
                pull_request_values(trigger, &event.repository, &event.pull_request, approval)
            });
            (judged(fired), Some(event))
        }
        other => {
            let fired = triggers::push_of(other)
                .and_then(|push| trigger.fires_on_ref(push).map(|()| push))
                .map(|push| {
                    let built_ins =
                        trigger.built_ins(&push.repository, Some(&push.git_ref), push.commit());
                    (built_ins, None)
                });
            (judged(fired), None)
        }
    };
    let mut comments = Vec::new();
    for file in &args.comments {
        let Some(pull_request) = pull_request else {
            bail!("--comment needs a pull request: --event-type pull_request");
        };
        let webhooks::Delivery::Comment(comment) =
            webhooks::parse("issue_comment", &read_input(file)?)
                .with_context(|| file.display().to_string())?
        else {
            bail!("{}: not an issue_comment delivery", file.display());
        };
        let fired = trigger
            .fires_on_comment(&comment, Some(&pull_request.pull_request))
            .map(|approval| {
                let repository = &pull_request.repository;
                pull_request_values(trigger, repository, &pull_request.pull_request, approval)
            });
        comments.push((file.display().to_string(), judged(fired)));
    }
    Ok((event, comments))
}

/// What a request to webhook trigger `trigger` with `--query` and body `event` would build: the
/// server's own judgment, with the trigger's secret read here.
fn test_webhook(
    args: &TriggerTestArgs,
    trigger: &triggers::Trigger,
    event: &[u8],
) -> Result<Verdict> {
    let Some(config) = &trigger.webhook else {
        bail!("trigger {:?} has no webhookConfig", trigger.name);
    };
    let expected = secrets::value(&config.secret, args.secrets_dir.as_deref(), |name| {
        std::env::var(name).ok()
    })
    .map_err(|e| anyhow::anyhow!("the trigger's webhook secret: {e}"))?;
    let secret = (args.query.iter())
        .find(|(key, _)| key == "secret")
        .map(|(_, value)| value.as_str());
    let (built_ins, substitutions) = match webhook::judge(trigger, config, &expected, secret, event)
    {
        Ok(values) => (Ok((trigger.webhook_built_ins(config), None)), values),
        Err(Refused::Invalid(reason)) => bail!("{}: {reason}", args.event.display()),
        Err(Refused::Forbidden(reason) | Refused::Skipped(reason)) => {
            (Err(reason), trigger.substitutions.clone())
        }
    };
    Ok(Verdict {
        built_ins,
        substitutions,
    })
}

/// A pull request build's values as `triggers test` shows them: the built-ins with the pull
/// request's own (`_PR_NUMBER`…), and whether it may read the trigger's secrets.
fn pull_request_values(
    trigger: &triggers::Trigger,
    repository: &webhooks::Repository,
    pull_request: &webhooks::PullRequest,
    approval: triggers::Approval,
) -> (Values, Option<bool>) {
    let (mut built_ins, values) = trigger.pull_request_built_ins(repository, pull_request);
    built_ins.extend(values);
    (built_ins, Some(approval.secrets))
}

/// What `triggers test` found for one event: the build's built-ins (and for a pull request,
/// whether it may read the trigger's secrets), or why it does not build.
struct Verdict {
    built_ins: Result<(Values, Option<bool>), String>,
    substitutions: Values,
}

impl Verdict {
    fn report(&self) -> serde_json::Value {
        let built_ins = self.built_ins.as_ref().ok();
        let mut report = serde_json::json!({
            "builds": built_ins.is_some(),
            "reason": self.built_ins.as_ref().err().map(ToString::to_string),
            "builtIns": built_ins.map(|(values, _)| values),
            "substitutions": built_ins.map(|_| &self.substitutions),
        });
        if let Some((_, Some(secrets))) = built_ins {
            report["secrets"] = (*secrets).into();
        }
        report
    }

    fn print(&self, what: &str) -> Result<()> {
        match &self.built_ins {
            Err(reason) => outln!("{what} does not build: {reason}")?,
            Ok((built_ins, secrets)) => {
                outln!("{what} builds")?;
                for (key, value) in built_ins.iter().chain(&self.substitutions) {
                    outln!("  {key}={value}")?;
                }
                if let Some(secrets) = secrets {
                    let may = if *secrets { "may" } else { "may not" };
                    outln!("  (it {may} read the trigger's secrets)")?;
                }
            }
        }
        Ok(())
    }
}

/// Prints the next fire times of an expression; a bad expression is shown with a caret under the
/// field at fault.
fn preview_schedule(args: &PreviewArgs) -> Result<ExitCode> {
    let cron = match Cron::parse(&args.expression) {
        Ok(cron) => cron,
        Err(e) => {
            eprintln!(
                "error: invalid cron expression: {e}\n  {}\n  {}^",
                args.expression,
                " ".repeat(e.offset)
            );
            return Ok(ExitCode::from(1));
        }
    };
    let zone = schedule::time_zone(&args.time_zone).map_err(anyhow::Error::msg)?;
    let from = match &args.from {
        Some(text) => chrono::DateTime::parse_from_rfc3339(text)
            .with_context(|| {
                format!("--from {text:?}: expected RFC 3339, e.g. 2024-03-10T00:00:00Z")
            })?
            .to_utc(),
        None => chrono::Utc::now(),
    };
    let runs: Vec<Times> = cron
        .upcoming(zone, from)
        .take(args.count)
        .map(|at| Times::of(at, zone))
        .collect();
    if args.format.is_some() {
        let report = serde_json::json!({
            "schedule": cron.to_string(),
            "timeZone": zone.name(),
            "runs": runs,
        });
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!("{:<22}  LOCAL ({})", "UTC", zone.name())?;
    for run in runs {
        outln!("{:<22}  {}", run.utc, run.local)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn default_data_dir() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("builder")
}

async fn open_store(data_dir: &Path) -> Result<SqliteStore> {
    let path = data_dir.join(crate::adapters::store::DATABASE);
    SqliteStore::open(&path)
        .await
        .with_context(|| format!("cannot open the build record {}", path.display()))
}

fn builds(command: BuildsCommand, data_dir: &Path) -> Result<ExitCode> {
    tokio::runtime::Runtime::new()?.block_on(async {
        let store = open_store(data_dir).await?;
        let find = |id: String| {
            let store = store.clone();
            async move {
                store
                    .get_build(&id)
                    .await?
                    .with_context(|| format!("no build {id:?} (or the prefix is ambiguous)"))
            }
        };
        match command {
            BuildsCommand::List { limit } => {
                let query = crate::adapters::store::BuildQuery {
                    limit,
                    ..Default::default()
                };
                let builds = store.list_builds(&query).await?;
                print_builds(
                    &builds
                        .into_iter()
                        .map(wire::Build::from)
                        .collect::<Vec<_>>(),
                )?;
            }
            BuildsCommand::Describe { id } => {
                let found = find(id).await?;
                let waiting = waiting_for(&store, &found).await?;
                let mut build = wire::Build::from(found);
                build.waiting_for = waiting;
                outln!("{}", serde_json::to_string_pretty(&build)?)?;
            }
            BuildsCommand::Log { id, stream } => {
                let build = find(id).await?;
                let steps: Vec<Option<String>> = build.steps.iter().map(|s| s.id.clone()).collect();
                let mut seen = 0;
                loop {
                    // Read the status first: lines written before it was final are then all read.
                    let finished = !stream || find(build.id.clone()).await?.status.is_final();
                    // A page at a time, each printed in one write: a log of millions of lines
                    // is neither held in memory nor written a line per call.
                    loop {
                        let lines = store.logs(&build.id, seen, Some(LOG_PAGE)).await?;
                        let mut page = String::new();
                        for line in &lines {
                            let label = step_label(&steps, line.step);
                            page.extend([label.as_str(), ": ", &line.text, "\n"]);
                        }
                        output::write(page.as_bytes())?;
                        seen = lines.last().map_or(seen, |line| line.seq);
                        let texts = lines.iter().map(|line| line.text.as_str());
                        if !crate::adapters::store::page_full(texts, LOG_PAGE as usize) {
                            break;
                        }
                    }
                    if finished {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            BuildsCommand::Cancel { .. }
            | BuildsCommand::Retry { .. }
            | BuildsCommand::Approve { .. }
            | BuildsCommand::Reject { .. } => {
                anyhow::bail!(
                    "cancel, retry, approve and reject are requests to `builder serve`: pass \
                     --server URL (Ctrl-C cancels a build that `builder submit` runs here)"
                )
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// One line per build, newest first.
fn print_builds(builds: &[wire::Build]) -> Result<()> {
    outln!(
        "{:<36}  {:<20}  {:>9}  {:<14}  IMAGES",
        "ID",
        "CREATE_TIME",
        "DURATION",
        "STATUS"
    )?;
    for build in builds {
        let images: Vec<&str> = build.images.iter().map(|i| i.name.as_str()).collect();
        outln!(
            "{:<36}  {:<20}  {:>9}  {:<14}  {}",
            build.id,
            timestamp(build.create_time),
            duration_between(build.start_time, build.finish_time),
            build.status,
            images.join(",")
        )?;
    }
    Ok(())
}

/// How `submit` ends, as gcloud prints it; the exit code follows the status.
fn print_summary(build: &wire::Build, interrupted: bool) -> Result<ExitCode> {
    outln!("DONE\n{}", "-".repeat(80))?;
    if let Some(failure) = &build.failure {
        outln!("ERROR: {failure}")?;
    }
    outln!(
        "ID: {}\nSTATUS: {}\nDURATION: {}",
        build.id,
        build.status,
        duration_between(build.start_time, build.finish_time)
    )?;
    for image in &build.images {
        outln!("IMAGE: {} {}", image.name, image.digest)?;
    }
    for template in &build.templates {
        outln!(
            "TEMPLATE: {}:{} {}",
            template.repository,
            template.version,
            template.digest
        )?;
    }
    if build.status == Status::Timeout {
        eprintln!(
            "Your build timed out. Use the [--timeout=DURATION] flag to change the timeout threshold."
        );
    }
    Ok(match build.status {
        Status::Success => ExitCode::SUCCESS,
        _ if interrupted => ExitCode::from(130),
        _ => ExitCode::from(1),
    })
}

fn timestamp(time: std::time::SystemTime) -> String {
    let mut text = crate::core::build::rfc3339::format(time);
    text.truncate(19);
    text + "Z"
}

fn duration_between(
    start: Option<std::time::SystemTime>,
    end: Option<std::time::SystemTime>,
) -> String {
    match (start, end) {
        (Some(start), Some(end)) => format!(
            "{:.1}s",
            end.duration_since(start).unwrap_or_default().as_secs_f64()
        ),
        _ => "-".into(),
    }
}

/// `Step #2 - "build"`, or `Step #2` for a step without an id, as Cloud Build labels log lines.
fn step_label(ids: &[Option<String>], step: usize) -> String {
    match ids.get(step).and_then(Option::as_deref) {
        Some(id) => format!("Step #{step} - {id:?}"),
        None => format!("Step #{step}"),
    }
}

fn submit(
    args: SubmitArgs,
    aliases: Aliases,
    registries: Registries,
    data_dir: &Path,
) -> Result<ExitCode> {
    if args.list_files {
        let listing = source::list_files(&args.source, args.ignore_file.as_deref())?;
        eprintln!("{}", listing.rules);
        for file in listing.files {
            outln!("{file}")?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.require_approval {
        anyhow::bail!(
            "--require-approval queues the build on `builder serve` for someone to approve: pass \
             --server URL (a build submitted here runs at once)"
        );
    }
    if args.detach {
        return submit_detached(args, aliases, registries, data_dir);
    }
    let request = request_of(args, aliases, registries);
    let prepared = match submit::prepare(request) {
        Ok(prepared) => prepared,
        Err(refused) => {
            eprintln!("{refused}");
            return Ok(ExitCode::from(1));
        }
    };
    eprint!("{}", prepared.warnings);
    for dir in &prepared.swept {
        eprintln!(
            "Removed workspace {}, left by a submit that ended.",
            dir.display()
        );
    }
    if let Some(uploaded) = &prepared.uploaded {
        eprintln!(
            "Creating temporary archive of {} file(s) totalling {} before compression.",
            uploaded.files,
            human_bytes(uploaded.bytes)
        );
    }
    tokio::runtime::Runtime::new()?.block_on(run_locally(prepared, data_dir))
}

fn request_of(args: SubmitArgs, aliases: Aliases, registries: Registries) -> submit::Request {
    submit::Request {
        machine: pipeline::Machine {
            project: args.project.project,
            aliases,
            secrets_dir: args.secrets_dir,
            registries,
            trusted: args.trusted,
            log_limit: args.log_limit,
        },
        build_id: args.build_id,
        source: (!args.no_source).then_some(args.source),
        ignore_file: args.ignore_file,
        recipe: match args.tag {
            Some(image) => submit::Recipe::Tag(image),
            None => submit::Recipe::Config(args.config),
        },
        substitutions: args.substitutions.substitutions.unwrap_or_default(),
        timeout: args.timeout,
        secrets: args.secrets.into_iter().collect(),
    }
}

/// `--async`: checks the build here, then hands it to a background `builder submit` with the
/// same arguments and a chosen build id, and returns.
fn submit_detached(
    args: SubmitArgs,
    aliases: Aliases,
    registries: Registries,
    data_dir: &Path,
) -> Result<ExitCode> {
    let mut command = std::process::Command::new(std::env::current_exe()?);
    let build_id = uuid::Uuid::new_v4().to_string();
    let arguments = std::env::args_os().skip(1).filter(|a| a != "--async");
    command.args(arguments).args(["--build-id", &build_id]);
    let check = submit::Request {
        build_id: Some(build_id.clone()),
        ..request_of(args, aliases, registries)
    };
    if let Err(refused) = submit::check(&check) {
        eprintln!("{refused}");
        return Ok(ExitCode::from(1));
    }
    // The background process's own messages go to a file, shown if it fails to start.
    let log_dir = data_dir.join("async");
    std::fs::create_dir_all(&log_dir)?;
    let log_path = log_dir.join(format!("{build_id}.log"));
    let mut child = std::os::unix::process::CommandExt::process_group(&mut command, 0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path)?)
        .spawn()
        .context("starting the background build")?;
    // "Created" means recorded: wait until the background process has written the record.
    let failed_to_start = |why: String| {
        let said = std::fs::read_to_string(&log_path).unwrap_or_default();
        anyhow::anyhow!(
            "the background build did not start ({why}):\n{}",
            said.trim_end()
        )
    };
    tokio::runtime::Runtime::new()?.block_on(async {
        let store = open_store(data_dir).await?;
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while store.get_build(&build_id).await?.is_none() {
            if let Some(status) = child.try_wait()? {
                return Err(failed_to_start(status.to_string()));
            }
            if std::time::Instant::now() > deadline {
                return Err(failed_to_start(
                    "it did not record the build within 120 s".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    })?;
    eprintln!("Created build [{build_id}].");
    eprintln!("Follow it with: builder builds log --stream {build_id}");
    outln!("{build_id}")?;
    Ok(ExitCode::SUCCESS)
}

/// Runs a prepared build on the local engine, printing its log as Cloud Build does and recording
/// it in the store.
async fn run_locally(prepared: submit::Prepared, data_dir: &Path) -> Result<ExitCode> {
    // Connecting negotiates the API version with the engine: that answer is its check.
    let (store, runtime) = tokio::join!(open_store(data_dir), DockerBackend::connect());
    let (store, runtime) = (store?, runtime.map_err(|e| anyhow::anyhow!("{e}"))?);
    let holders = data_dir.join(pipeline::HOLDERS);
    let holder = pipeline::Holder::take(&holders, &pipeline::default_name(), pipeline::LEASE)?;
    let lease = holder.lease();
    for id in pipeline::recover(&store, &holders, &lease, &runtime)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
    {
        eprintln!("Cleaned up build [{id}], left unfinished by a process that ended.");
    }
    let build_id = prepared.run.build_id.clone();
    let ids: Vec<Option<String>> = prepared
        .run
        .build
        .steps
        .iter()
        .map(|s| s.id.clone())
        .collect();
    let cancel = tokio_util::sync::CancellationToken::new();
    let interrupted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    tokio::spawn({
        let (cancel, interrupted, build_id) =
            (cancel.clone(), interrupted.clone(), build_id.clone());
        async move {
            if interrupt().await {
                interrupted.store(true, std::sync::atomic::Ordering::SeqCst);
                eprintln!("Cancelling build [{build_id}]… (again to quit at once)");
                cancel.cancel();
            }
            if interrupt().await {
                eprintln!("Quitting; the next `builder submit` removes what the build left.");
                std::process::exit(130);
            }
        }
    });
    eprintln!("Created build [{build_id}].");
    outln!("starting build \"{build_id}\"\n\nBUILD")?;
    // Once output fails (its reader went away) printing stops, but the build runs to its end:
    // stopping halfway would leave its containers to the next submit.
    let mut printer = Printer {
        ids: &ids,
        labels: (0..ids.len()).map(|step| step_label(&ids, step)).collect(),
        buffer: String::new(),
        printed: Ok(()),
    };
    let outcome = pipeline::run(
        &store,
        &lease,
        Arc::new(runtime),
        &prepared.source,
        prepared.run,
        cancel,
        &mut printer,
    )
    .await?;
    printer.flush();
    printer.printed?;
    let build = store
        .get_build(&build_id)
        .await?
        .context("the build's record vanished")?;
    debug_assert_eq!(build.status, outcome.status);
    print_summary(
        &wire::Build::from(build),
        interrupted.load(std::sync::atomic::Ordering::SeqCst),
    )
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM; false if neither can be watched.
async fn interrupt() -> bool {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => tokio::select! {
            result = tokio::signal::ctrl_c() => result.is_ok(),
            _ = terminate.recv() => true,
        },
        Err(_) => tokio::signal::ctrl_c().await.is_ok(),
    }
}

/// How much printed text `submit` gathers before it writes it: one write for many lines, so
/// that a step printing millions of lines is not slowed down by a write each.
const PRINT_BUFFER: usize = 64 * 1024;

/// Prints a local build's events as Cloud Build does, a burst of them at a time.
struct Printer<'a> {
    ids: &'a [Option<String>],
    /// Each step's `Step #N - "id"`, made once: millions of lines print it.
    labels: Vec<String>,
    buffer: String,
    /// The first failed write: nothing is printed after it.
    printed: Result<()>,
}

impl Printer<'_> {
    fn flush(&mut self) {
        if self.printed.is_ok() && !self.buffer.is_empty() {
            self.printed = output::write(self.buffer.as_bytes());
        }
        self.buffer.clear();
    }
}

impl pipeline::Onlooker for Printer<'_> {
    fn event(&mut self, event: &Event) {
        if self.printed.is_err() {
            return;
        }
        match event {
            Event::Line { step, text, .. } if *step < self.labels.len() => {
                let label = &self.labels[*step];
                self.buffer.extend([label.as_str(), ": ", text, "\n"]);
            }
            _ => event_text(self.ids, event, &mut self.buffer),
        }
        if self.buffer.len() >= PRINT_BUFFER {
            self.flush();
        }
    }

    fn idle(&mut self) {
        self.flush();
    }
}

/// An event's line as Cloud Build prints it, added to `out`.
fn event_text(ids: &[Option<String>], event: &Event, out: &mut String) {
    use std::fmt::Write as _;
    // Writing to a String cannot fail.
    let _ = match event {
        Event::StepStarted { step } => {
            writeln!(out, "{}", step_text(ids, *step, Status::Working, None))
        }
        Event::Line { step, text, .. } => writeln!(out, "{}: {text}", step_label(ids, *step)),
        Event::StepFinished { step, result } => writeln!(
            out,
            "{}",
            step_text(ids, *step, result.status, result.detail.as_deref())
        ),
        Event::PushStarted => writeln!(out, "PUSH"),
        Event::Pushing { image } => writeln!(out, "Pushing {image}"),
        Event::Pushed(image) => writeln!(out, "{}: digest: {}", image.name, image.digest),
        Event::PushingTemplate { file, reference } => {
            writeln!(out, "Pushing template {file} to {reference}")
        }
        Event::PushedTemplate(template) => writeln!(
            out,
            "{}:{}: digest: {}{}",
            template.repository,
            template.tags.join(","),
            template.digest,
            if template.uploaded {
                ""
            } else {
                " (unchanged)"
            }
        ),
    };
}

/// A step's start (`Working`) or end, as Cloud Build prints them.
fn print_step(
    ids: &[Option<String>],
    step: usize,
    status: Status,
    detail: Option<&str>,
) -> Result<()> {
    outln!("{}", step_text(ids, step, status, detail))
}

fn step_text(ids: &[Option<String>], step: usize, status: Status, detail: Option<&str>) -> String {
    let label = step_label(ids, step);
    match (status, detail) {
        (Status::Working, _) => format!("Starting {label}"),
        (Status::Success, _) | (_, None) => format!("Finished {label}"),
        (status, Some(detail)) => format!("Finished {label} ({status}: {detail})"),
    }
}

fn human_bytes(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / f64::from(1 << 20)),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} bytes"),
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    duration::parse(text)
}

/// `--secret NAME`, `--submit-secret NAME`.
fn parse_secret_name(text: &str) -> Result<String, String> {
    validate::check_secret_name(text).map(|()| text.to_string())
}

fn parse_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_string(), value.to_string()))
        }
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

/// gcloud's dict flag syntax: entries split on `,` (or on the delimiter named by a leading
/// `^DELIM^`), each split on its first `=`.
pub fn parse_substitutions(text: &str) -> Result<Values, String> {
    let (delimiter, body) = match text.strip_prefix('^').and_then(|rest| rest.split_once('^')) {
        Some((delimiter, body)) if !delimiter.is_empty() => (delimiter, body),
        _ => (",", text),
    };
    body.split(delimiter)
        .filter(|entry| !entry.trim().is_empty())
        .map(parse_pair)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutions_flag_like_gcloud() {
        let parsed = parse_substitutions("_A=1,_B=x=y, _C = z ,").unwrap();
        assert_eq!(parsed["_A"], "1");
        assert_eq!(parsed["_B"], "x=y");
        assert_eq!(parsed["_C"], " z ");
        let parsed = parse_substitutions("^;^_A=a,b;_B=c").unwrap();
        assert_eq!(parsed["_A"], "a,b");
        assert_eq!(parsed["_B"], "c");
        assert!(
            parse_substitutions("_A")
                .unwrap_err()
                .contains("not KEY=VALUE")
        );
    }
}
