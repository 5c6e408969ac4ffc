//! `builder serve` and `builder worker`: their settings, from flags and the environment first,
//! then a settings file (`--config FILE`, the same settings in camelCase, one file for both),
//! then defaults; and the process around the service: its log, the store, the engine, the
//! listener (serve's), its supervised tasks (see [`super::supervise`]), graceful shutdown.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Args, ValueEnum};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

use super::supervise::Supervisor;
use super::{default_data_dir, interrupt, secret};
use crate::adapters::github::{Credentials, GitHub, Secret};
use crate::adapters::notify::Senders;
use crate::adapters::registry::{self, Registries};
use crate::adapters::runtime::{Backend, DockerBackend};
use crate::adapters::source;
use crate::adapters::source::git::Rewrites;
use crate::adapters::store;
use crate::adapters::store::{PostgresStore, SqliteStore, Store};
use crate::core::access::HostAllowlist;
use crate::core::alias::Aliases;
use crate::core::config::duration;
use crate::core::plan::pool_id;
use crate::core::retention::Policy;
use crate::core::triggers::GitHubServer;
use crate::edges::api;
use crate::pipeline::execute::DEFAULT_LOG_LIMIT;
use crate::pipeline::service::{
    self, FetchPolicy, Schedules, Service, SystemClock, TriggerFiles, WorkerSettings,
};
use crate::pipeline::{self, Machine};

/// How long a console login lasts unless the settings say otherwise.
const DEFAULT_SESSION: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

/// The settings of a process that runs builds, or queues them: `builder serve` and `builder
/// worker` share them (and a settings file).
#[derive(Args)]
pub(super) struct RunArgs {
    /// A settings file (YAML): any of the settings below in camelCase (`listen`, `dataDir`,
    /// `aliases`, `triggers`, `schedules`, `webhookSecretFile`, `apiTokenFile`, `gitUrlRewrites`,
    /// `githubUrl`, `gitFetchStall`, `gitFetchAttempts`, `maxConcurrentBuilds`, `secretsDir`,
    /// `project`, `store`, `registryConfig`, `insecureRegistries`, `registryCas`,
    /// `readsNeedToken`, `logFormat`, `trusted`, `allowedHosts`, `tlsCert`, `tlsKey`,
    /// `sessionLifetime`, `maxFollowers`, `maxFollowersPerBuild`, `submitSecrets`, `retainDays`,
    /// `retentionInterval`,
    /// `githubApiUrl`, `githubTokenFile`, `githubAppId`, `githubAppKeyFile`,
    /// `githubAppInstallation`, `publicUrl`, `logLimit`, `maxUploadBytes`, `maxUploadEntries`,
    /// `leaseSeconds`, `pool`, `noListen`, `pollMs`); flags and the environment win.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory of trigger files (YAML or JSON, as `gcloud builds triggers export` writes them),
    /// read at start; triggers created through the API are kept in the store
    /// [default: DATA_DIR/triggers].
    #[arg(long, value_name = "DIR")]
    triggers: Option<PathBuf>,
    /// Fetch repositories whose clone URL starts with FROM from TO instead (repeatable), e.g.
    /// `https://github.com/=/srv/git/` for local mirrors.
    #[arg(long = "git-url-rewrite", value_name = "FROM=TO")]
    git_url_rewrites: Vec<String>,
    /// The GitHub server triggers' repositories are on: builds fetch `URL/OWNER/NAME.git` of
    /// their trigger's repository, and a push whose `clone_url` names another place builds
    /// nothing [default: https://github.com].
    #[arg(long, value_name = "URL")]
    github_url: Option<String>,
    /// A fetch of a repository that makes no progress for this many seconds is given up and
    /// tried again [default: 60].
    #[arg(long, value_name = "SECONDS")]
    git_fetch_stall: Option<u64>,
    /// How many times a fetch is tried (with a pause that doubles from 5 s) before a delivery's
    /// file-filtered triggers, or a build, fail with its error [default: 5].
    #[arg(long, value_name = "N")]
    git_fetch_attempts: Option<u32>,
    /// How many builds may run at once here; the rest wait in the queue (0: only queue them)
    /// [default: 2].
    #[arg(long, value_name = "N")]
    max_concurrent_builds: Option<usize>,
    /// Directory of local secret values for availableSecrets.secretManager (see README).
    #[arg(long, env = "BUILDER_SECRETS_DIR", value_name = "DIR")]
    secrets_dir: Option<PathBuf>,
    /// The value of $PROJECT_ID [default: local].
    #[arg(long, env = "BUILDER_PROJECT")]
    project: Option<String>,
    /// Where builds, deliveries and logs are kept: `sqlite://PATH` [default: DATA_DIR/builds.db],
    /// or `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`, a database several servers and
    /// workers share.
    #[arg(long, env = "BUILDER_STORE", value_name = "URL")]
    store: Option<String>,
    /// How the log on stderr is written: `text` for people, `json` (one object a line) for
    /// machines; `RUST_LOG` filters it (e.g. `builder=debug`) [default: text, at `info`].
    #[arg(long, value_enum, env = "BUILDER_LOG_FORMAT", value_name = "FORMAT")]
    log_format: Option<LogFormat>,
    /// Every build run here may reach the machine through the engine (privileged containers,
    /// host paths…); without it, only those of triggers marked `trusted: true`.
    #[arg(long)]
    trusted: bool,
    /// How long this process's claim on a build it runs lasts unless renewed (it renews every
    /// second): if it dies, another process ends its builds INTERNAL_ERROR after this long
    /// [default: 30, at least 3].
    #[arg(long, env = "BUILDER_LEASE_SECONDS", value_name = "SECONDS")]
    lease_seconds: Option<u64>,
    /// Do not LISTEN to a PostgreSQL store: find builds queued and log lines written by other
    /// processes by polling (for a connection pooler that does not pass LISTEN/NOTIFY, as
    /// PgBouncer in transaction mode).
    #[arg(long)]
    no_listen: bool,
    /// How many bytes of its steps' output each build's log keeps; past it, one line says where
    /// the log was cut, and the steps run on unlogged [default: 104857600, 100 MiB].
    #[arg(long, value_name = "BYTES")]
    log_limit: Option<u64>,
    /// The most bytes of file contents an uploaded source (`submit --server`) may unpack to; a
    /// build whose upload holds more fails, naming this limit [default: 4294967296, 4 GiB].
    #[arg(long, value_name = "BYTES")]
    max_upload_bytes: Option<u64>,
    /// The most entries (files, directories, links) an uploaded source may hold
    /// [default: 100000].
    #[arg(long, value_name = "N")]
    max_upload_entries: Option<u64>,
}

#[derive(Args)]
pub(super) struct ServeArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Directory of schedule files (YAML or JSON; see configs/schedules): cron schedules that run
    /// triggers, read at start; schedules created through the API are kept in the store
    /// [default: DATA_DIR/schedules].
    #[arg(long, value_name = "DIR")]
    schedules: Option<PathBuf>,
    /// File holding the GitHub webhook's secret (or set BUILDER_WEBHOOK_SECRET).
    #[arg(long, value_name = "FILE")]
    webhook_secret_file: Option<PathBuf>,
    /// File holding the token that API requests which change anything must carry (or set
    /// BUILDER_API_TOKEN); without one, such requests are refused.
    #[arg(long, value_name = "FILE")]
    api_token_file: Option<PathBuf>,
    /// Reading (the console's pages and the API's GET requests) needs the API token too; by
    /// default anyone who reaches the server may read, and only actions need the token.
    #[arg(long)]
    reads_need_token: bool,
    /// Serve the KFP registry API (`/kfp/{project}/{repository}`, for kfp's `RegistryClient`)
    /// over the template store at HOST[:PORT]/PATH: a package is the OCI repository
    /// `PATH/{project}/{repository}/{package}`, the one `templates:` pushes to.
    #[arg(long, env = "BUILDER_KFP_REGISTRY", value_name = "HOST[:PORT]/PATH")]
    kfp_registry: Option<String>,
    /// Notifier configs in Cloud Build's shape (`apiVersion: cloud-build-notifiers/v1`, kind
    /// HTTPNotifier, SlackNotifier or SMTPNotifier): one file, or a directory of them, one
    /// notifier each. Every status a build takes is published to those whose filter selects it.
    #[arg(long, value_name = "PATH")]
    notifications: Option<PathBuf>,
    /// Run no builds here: `builder worker` processes sharing the store (`--store
    /// postgres://…`) run them. The server still queues builds, answers the API and closes the
    /// builds of workers that died.
    #[arg(long)]
    no_worker: bool,
    /// A name this server answers to in a request's Host (repeatable; `*` for any): its public
    /// name, the one GitHub's webhook and browsers use. IP addresses and `localhost` always
    /// pass; any other name is refused (421), which stops DNS rebinding.
    #[arg(long = "allowed-host", value_name = "NAME")]
    allowed_hosts: Vec<String>,
    /// Serve HTTPS with this certificate chain (PEM), with --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// How long a console login lasts (e.g. `12h`, `30m`) [default: 12h].
    #[arg(long, value_name = "DURATION")]
    session_lifetime: Option<String>,
    /// Logs followed at once (server-sent events, `--stream`); more are answered 503
    /// [default: 64].
    #[arg(long, value_name = "N")]
    max_followers: Option<usize>,
    /// Followers of one build's log at once [default: 16].
    #[arg(long, value_name = "N")]
    max_followers_per_build: Option<usize>,
    /// A secret that builds submitted to this server (`builder submit --server`) may read
    /// (repeatable): NAME of `projects/P/secrets/NAME/versions/V`. Without any, they read none;
    /// a trigger's builds read the trigger's `secrets` instead.
    #[arg(long = "submit-secret", value_name = "NAME", value_parser = super::parse_secret_name)]
    submit_secrets: Vec<String>,
    /// Remove builds (with their steps, logs and reports) this many days after they finished,
    /// and deliveries this many days after they came; without it, they are kept. Uploads no
    /// kept build was submitted with, workspaces crashed builds left and git mirrors no trigger
    /// and no kept build fetches are removed either way.
    #[arg(long, value_name = "DAYS")]
    retain_days: Option<u32>,
    /// How long from one retention pass to the next; the first runs at the start (e.g. `1h`,
    /// `30m`) [default: 1h].
    #[arg(long, value_name = "DURATION")]
    retention_interval: Option<String>,
    #[command(flatten)]
    github: GitHubArgs,
}

/// Where serve reports triggered builds on GitHub.
#[derive(Args)]
pub(super) struct GitHubArgs {
    /// GitHub's REST API, where triggered builds are reported: `https://HOST/api/v3` for GitHub
    /// Enterprise Server [default: https://api.github.com].
    #[arg(long, env = "BUILDER_GITHUB_API_URL", value_name = "URL")]
    github_api_url: Option<String>,
    /// File holding a GitHub token with `statuses: write` (or set BUILDER_GITHUB_TOKEN): each
    /// triggered build is reported as a commit status.
    #[arg(long, value_name = "FILE")]
    github_token_file: Option<PathBuf>,
    /// A GitHub App's id: triggered builds are reported as commit statuses and check runs, with
    /// the App's installation tokens (needs --github-app-key-file).
    #[arg(long, env = "BUILDER_GITHUB_APP_ID", value_name = "ID")]
    github_app_id: Option<u64>,
    /// The GitHub App's private key (PEM, as GitHub hands it out).
    #[arg(long, value_name = "FILE")]
    github_app_key_file: Option<PathBuf>,
    /// The App's installation to use [default: the one GitHub names for each repository].
    #[arg(long, env = "BUILDER_GITHUB_APP_INSTALLATION", value_name = "ID")]
    github_app_installation: Option<u64>,
    /// The console's address as its users reach it, for the links GitHub shows beside a
    /// commit (`{URL}/builds/{id}`) [default: http:// and the address the server listens on].
    #[arg(long, env = "BUILDER_PUBLIC_URL", value_name = "URL")]
    public_url: Option<String>,
}

#[derive(Args)]
pub(super) struct WorkerArgs {
    #[command(flatten)]
    run: RunArgs,
    /// The pool whose builds this worker runs: builds whose `options.pool.name` ends in
    /// `/workerPools/NAME` (or is NAME) [default: the default pool, builds that name none].
    #[arg(long, env = "BUILDER_POOL", value_name = "NAME")]
    pool: Option<String>,
    /// This worker's name, in the store's leases and in the failure of a build it abandons
    /// (letters, digits, '.', '_', '-') [default: HOSTNAME-PID].
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// How often this worker reads the queue when nothing woke it, in milliseconds
    /// [default: 2000].
    #[arg(long, value_name = "MS")]
    poll_ms: Option<u64>,
}

/// How the server writes its log.
#[derive(Debug, Default, Clone, Copy, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The settings file.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SettingsFile {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    aliases: Option<PathBuf>,
    triggers: Option<PathBuf>,
    schedules: Option<PathBuf>,
    webhook_secret_file: Option<PathBuf>,
    api_token_file: Option<PathBuf>,
    #[serde(default)]
    git_url_rewrites: Vec<String>,
    github_url: Option<String>,
    git_fetch_stall: Option<u64>,
    git_fetch_attempts: Option<u32>,
    max_concurrent_builds: Option<usize>,
    secrets_dir: Option<PathBuf>,
    project: Option<String>,
    store: Option<String>,
    registry_config: Option<PathBuf>,
    #[serde(default)]
    insecure_registries: Vec<String>,
    #[serde(default)]
    registry_cas: Vec<PathBuf>,
    #[serde(default)]
    reads_need_token: bool,
    kfp_registry: Option<String>,
    notifications: Option<PathBuf>,
    log_format: Option<LogFormat>,
    #[serde(default)]
    trusted: bool,
    #[serde(default)]
    no_listen: bool,
    poll_ms: Option<u64>,
    #[serde(default)]
    allowed_hosts: Vec<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    session_lifetime: Option<String>,
    max_followers: Option<usize>,
    max_followers_per_build: Option<usize>,
    #[serde(default)]
    submit_secrets: Vec<String>,
    retain_days: Option<u32>,
    retention_interval: Option<String>,
    github_api_url: Option<String>,
    github_token_file: Option<PathBuf>,
    github_app_id: Option<u64>,
    github_app_key_file: Option<PathBuf>,
    github_app_installation: Option<u64>,
    public_url: Option<String>,
    log_limit: Option<u64>,
    max_upload_bytes: Option<u64>,
    max_upload_entries: Option<u64>,
    lease_seconds: Option<u64>,
    pool: Option<String>,
}

/// What `serve` and `worker` both make of their settings.
struct Common {
    file: SettingsFile,
    data_dir: PathBuf,
    triggers: TriggerFiles,
    store_url: StoreUrl,
    log_format: LogFormat,
    /// The service's settings but serve's own: the webhook secret, the KFP registry, the
    /// secrets of submissions, GitHub reporting.
    settings: service::Settings,
    max_concurrent_builds: usize,
    lease: Duration,
    /// Whether the store's changes are listened to.
    hear_store: bool,
}

impl Common {
    fn read(
        run: RunArgs,
        data_dir: Option<PathBuf>,
        aliases: Option<PathBuf>,
        registry: registry::Settings,
    ) -> Result<Common> {
        let file = match &run.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                serde_saphyr::from_str::<SettingsFile>(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            }
            None => SettingsFile::default(),
        };
        let data_dir = data_dir
            .or(file.data_dir.clone())
            .unwrap_or_else(default_data_dir);
        let aliases = Aliases::load(aliases.or(file.aliases.clone()).as_deref())
            .map_err(anyhow::Error::msg)?;
        let triggers_dir = run
            .triggers
            .or(file.triggers.clone())
            .unwrap_or_else(|| data_dir.join("triggers"));
        let (triggers, warnings) = TriggerFiles::load(&triggers_dir).map_err(anyhow::Error::msg)?;
        eprint!("{warnings}");
        let rewrites = run
            .git_url_rewrites
            .iter()
            .chain(&file.git_url_rewrites)
            .map(|pair| pair.parse())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("git URL rewrite: {e}"))?;
        let github = match run.github_url.or(file.github_url.clone()) {
            Some(url) => url.parse().map_err(anyhow::Error::msg)?,
            None => GitHubServer::default(),
        };
        let defaults = FetchPolicy::default();
        let fetch = FetchPolicy {
            stall: run
                .git_fetch_stall
                .or(file.git_fetch_stall)
                .map_or(defaults.stall, Duration::from_secs),
            attempts: run
                .git_fetch_attempts
                .or(file.git_fetch_attempts)
                .unwrap_or(defaults.attempts),
            ..defaults
        };
        if fetch.attempts == 0 || fetch.stall.is_zero() {
            anyhow::bail!("--git-fetch-attempts and --git-fetch-stall take a number above 0");
        }
        let store_url = store_url(run.store.or(file.store.clone()), &data_dir)?;
        let registries = Registries::new(&registry::Settings {
            docker_config: registry.docker_config.or(file.registry_config.clone()),
            insecure: [registry.insecure, file.insecure_registries.clone()].concat(),
            ca_files: [registry.ca_files, file.registry_cas.clone()].concat(),
        })
        .map_err(anyhow::Error::msg)?;
        let lease = match run.lease_seconds.or(file.lease_seconds) {
            // A lease must outlast a few missed heartbeats, or a busy machine loses its builds.
            Some(seconds) if Duration::from_secs(seconds) < 3 * pipeline::HEARTBEAT => {
                anyhow::bail!("the lease: {seconds}s is too short, give at least 3 seconds")
            }
            Some(seconds) => Duration::from_secs(seconds),
            None => pipeline::LEASE,
        };
        let settings = service::Settings {
            data_dir: data_dir.clone(),
            machine: Machine {
                project: run
                    .project
                    .or(file.project.clone())
                    .unwrap_or_else(|| "local".into()),
                aliases,
                secrets_dir: run.secrets_dir.or(file.secrets_dir.clone()),
                registries,
                trusted: run.trusted || file.trusted,
                log_limit: run
                    .log_limit
                    .or(file.log_limit)
                    .unwrap_or(DEFAULT_LOG_LIMIT),
            },
            webhook_secret: Vec::new(),
            submit_secrets: Default::default(),
            github,
            rewrites: Rewrites::new(rewrites),
            fetch,
            kfp_registry: None,
            reporting: None,
            notifying: None,
            upload_limits: {
                let default = source::Limits::default();
                source::Limits {
                    bytes: run
                        .max_upload_bytes
                        .or(file.max_upload_bytes)
                        .unwrap_or(default.bytes),
                    entries: run
                        .max_upload_entries
                        .or(file.max_upload_entries)
                        .unwrap_or(default.entries),
                }
            },
        };
        Ok(Common {
            hear_store: !(run.no_listen || file.no_listen),
            max_concurrent_builds: run
                .max_concurrent_builds
                .or(file.max_concurrent_builds)
                .unwrap_or(2),
            log_format: run.log_format.or(file.log_format).unwrap_or_default(),
            file,
            data_dir,
            triggers,
            store_url,
            settings,
            lease,
        })
    }
}

pub(super) fn serve(
    args: ServeArgs,
    data_dir: Option<PathBuf>,
    aliases: Option<PathBuf>,
    registry: registry::Settings,
) -> Result<ExitCode> {
    let Common {
        file,
        data_dir,
        triggers,
        store_url,
        log_format,
        mut settings,
        max_concurrent_builds,
        lease,
        hear_store,
    } = Common::read(args.run, data_dir, aliases, registry)?;
    for name in &file.submit_secrets {
        crate::core::config::validate::check_secret_name(name)
            .map_err(|e| anyhow::anyhow!("submitSecrets: {e}"))?;
    }
    let reporting = github(&args.github, &file)?;
    let public_url = args.github.public_url.clone().or(file.public_url.clone());
    // Read at start: a notifier that cannot work (a filter that is not CEL) stops the server.
    let notifiers = match args.notifications.or(file.notifications.clone()) {
        Some(path) => {
            let (notifiers, warnings) =
                service::load_notifiers(&path).map_err(anyhow::Error::msg)?;
            eprint!("{warnings}");
            notifiers
        }
        None => Vec::new(),
    };
    let senders = Senders::new(settings.machine.secrets_dir.clone()).map_err(anyhow::Error::msg)?;
    settings.webhook_secret = secret(
        &args.webhook_secret_file.or(file.webhook_secret_file),
        "BUILDER_WEBHOOK_SECRET",
    )?;
    if settings.webhook_secret.is_empty() {
        anyhow::bail!(
            "no webhook secret: pass --webhook-secret-file FILE or set BUILDER_WEBHOOK_SECRET \
             (the secret configured on the GitHub webhook)"
        );
    }
    let api_token = secret(
        &args.api_token_file.or(file.api_token_file),
        "BUILDER_API_TOKEN",
    )?;
    let reads_need_token = args.reads_need_token || file.reads_need_token;
    if reads_need_token && api_token.is_empty() {
        anyhow::bail!(
            "reads need the API token, and there is none: pass --api-token-file FILE or set \
             BUILDER_API_TOKEN"
        );
    }
    let schedules_dir = args
        .schedules
        .or(file.schedules)
        .unwrap_or_else(|| data_dir.join("schedules"));
    if let Some(root) = args.kfp_registry.as_ref().or(file.kfp_registry.as_ref())
        && !root.trim_end_matches('/').contains('/')
    {
        anyhow::bail!(
            "--kfp-registry {root:?}: name a path on the registry too, HOST[:PORT]/PATH \
             (e.g. 127.0.0.1:5000/kfp)"
        );
    }
    settings.kfp_registry = args
        .kfp_registry
        .or(file.kfp_registry)
        .map(|root| root.trim_end_matches('/').to_string());
    settings.submit_secrets = args
        .submit_secrets
        .into_iter()
        .chain(file.submit_secrets)
        .collect();
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    // The server's own worker runs builds of the default pool, as a single machine always did.
    let worker = (!args.no_worker).then(|| WorkerSettings {
        name: pipeline::default_name(),
        pool: None,
        max_concurrent_builds,
        lease,
        poll: service::TICK,
    });
    let session_lifetime = match args.session_lifetime.or(file.session_lifetime) {
        Some(text) => duration::parse(&text)
            .ok()
            .filter(|lifetime| lifetime.as_secs() > 0)
            .with_context(|| {
                format!("the session lifetime {text:?}: expected a duration such as 12h or 30m")
            })?,
        None => DEFAULT_SESSION,
    };
    let retention = retention(
        args.retain_days.or(file.retain_days),
        args.retention_interval.or(file.retention_interval),
    )?;
    let tls = match (
        args.tls_cert.or(file.tls_cert),
        args.tls_key.or(file.tls_key),
    ) {
        (Some(cert), Some(key)) => {
            Some(api::tls::Acceptor::load(&cert, &key).map_err(anyhow::Error::msg)?)
        }
        (None, None) => None,
        _ => anyhow::bail!("TLS needs both a certificate and its key: tlsCert and tlsKey"),
    };
    let access = api::Settings {
        token: (!api_token.is_empty()).then(|| String::from_utf8_lossy(&api_token).into_owned()),
        reads_need_token,
        hosts: HostAllowlist::new(args.allowed_hosts.iter().chain(&file.allowed_hosts))
            .map_err(anyhow::Error::msg)?,
        session_lifetime,
        max_followers: args.max_followers.or(file.max_followers).unwrap_or(64),
        max_followers_per_build: args
            .max_followers_per_build
            .or(file.max_followers_per_build)
            .unwrap_or(16),
    };
    start_log(log_format)?;
    tokio::runtime::Runtime::new()?.block_on(async {
        let store = open_store(store_url).await?;
        // The stored triggers first: a schedule's file may name one.
        triggers.reread_stored(&*store).await?;
        let (schedules, warnings) =
            Schedules::load(&schedules_dir, &triggers.all()).map_err(anyhow::Error::msg)?;
        eprint!("{warnings}");
        let runtime = DockerBackend::connect().await?;
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let address = listener.local_addr()?;
        let mut settings = settings;
        if public_url.is_none() && !notifiers.is_empty() {
            warn!(
                "no --public-url: notifications link builds to this server's listening address, \
                 which only this machine may reach"
            );
        }
        let public_url = public_url.unwrap_or_else(|| {
            let scheme = if tls.is_some() { "https" } else { "http" };
            format!("{scheme}://{address}")
        });
        settings.reporting = reporting.map(|forge| service::Reporting {
            forge: Arc::new(forge),
            public_url: public_url.clone(),
        });
        let reporting = settings.reporting.is_some();
        let notifier_count = notifiers.len();
        settings.notifying = Some(service::Notifying {
            notifiers,
            deliver: Arc::new(senders),
            public_url,
        });
        let service = Arc::new(Service::new(
            store,
            Arc::new(runtime),
            triggers,
            schedules,
            Arc::new(SystemClock),
            settings,
        ));
        service.reread_resources().await?;
        let count = format!(
            "{} triggers, {} schedules, {notifier_count} notifiers",
            service.triggers().len(),
            service.schedule_count()
        );
        let scheme = if tls.is_some() { "https" } else { "http" };
        info!("listening on {scheme}://{address} ({count})");
        let shutdown = CancellationToken::new();
        let mut tasks = Supervisor::default();
        let writer = service
            .delivery_writer()
            .expect("a new service has its delivery writer");
        tasks.spawn("delivery writer", async { Ok(writer.await?) });
        if hear_store {
            listen_to_the_store(&mut tasks, &service, &shutdown);
        }
        read_resources_again(&mut tasks, &service, &shutdown);
        // Without a worker of its own, the server closes the builds of workers that died.
        tasks.spawn("queue", {
            let (service, shutdown) = (service.clone(), shutdown.clone());
            let recover = worker.is_none();
            async move { Ok(service.run(recover, shutdown).await?) }
        });
        if let Some(worker) = worker {
            tasks.spawn("worker", {
                let (service, shutdown) = (service.clone(), shutdown.clone());
                async move { Ok(service.run_worker(worker, shutdown).await?) }
            });
        }
        tasks.spawn("retention", {
            let (service, shutdown) = (service.clone(), shutdown.clone());
            async move {
                service.run_retention(retention, shutdown).await;
                Ok(())
            }
        });
        tasks.spawn("scheduler", {
            let (service, shutdown) = (service.clone(), shutdown.clone());
            async move {
                service.run_schedules(shutdown).await;
                Ok(())
            }
        });
        // Reports are the server's, whichever process runs the build: it finds their moves on
        // its tick.
        if reporting {
            tasks.spawn("github reporter", {
                let (service, shutdown) = (service.clone(), shutdown.clone());
                async move {
                    service.run_reports(shutdown).await;
                    Ok(())
                }
            });
        }
        // Every status a build takes is published (to no notifier, without any): the store
        // keeps each until then.
        tasks.spawn("notifier", {
            let (service, shutdown) = (service.clone(), shutdown.clone());
            async move {
                service.run_notifications(shutdown).await;
                Ok(())
            }
        });
        // The server holds the last reference to the service once the others have ended: the
        // delivery writer ends when it goes.
        tasks.spawn("http server", {
            let stop = shutdown.clone().cancelled_owned();
            async move { Ok(api::serve(listener, tls, service, access, stop).await?) }
        });
        Ok(until_stopped(tasks, shutdown).await)
    })
}

/// `builder worker`: claims builds of its pool from the shared store and runs them on this
/// machine's engine, with the same service as `serve`'s own worker.
pub(super) fn worker(
    args: WorkerArgs,
    data_dir: Option<PathBuf>,
    aliases: Option<PathBuf>,
    registry: registry::Settings,
) -> Result<ExitCode> {
    let Common {
        file,
        triggers,
        store_url,
        log_format,
        settings,
        max_concurrent_builds,
        lease,
        hear_store,
        ..
    } = Common::read(args.run, data_dir, aliases, registry)?;
    let name = args.name.unwrap_or_else(pipeline::default_name);
    pipeline::check_name(&name).map_err(|e| anyhow::anyhow!("--name: {e}"))?;
    let pool = args.pool.or(file.pool);
    let worker = WorkerSettings {
        name,
        pool: pool.as_deref().and_then(pool_id).map(str::to_string),
        max_concurrent_builds,
        lease,
        poll: match args.poll_ms.or(file.poll_ms) {
            Some(0) => anyhow::bail!("--poll-ms takes a number above 0"),
            Some(ms) => Duration::from_millis(ms),
            None => service::TICK,
        },
    };
    start_log(log_format)?;
    tokio::runtime::Runtime::new()?.block_on(async {
        let store = open_store(store_url).await?;
        let runtime = DockerBackend::connect().await?;
        // Checked at once: a worker exists to run builds, and cannot without its engine.
        let version = Backend::ping(&runtime).await?;
        info!("engine: {version}");
        let service = Arc::new(Service::new(
            store,
            Arc::new(runtime),
            triggers,
            Schedules::default(),
            Arc::new(SystemClock),
            settings,
        ));
        // A build's trigger may be one the API keeps.
        service.reread_resources().await?;
        let shutdown = CancellationToken::new();
        let mut tasks = Supervisor::default();
        if hear_store {
            listen_to_the_store(&mut tasks, &service, &shutdown);
        }
        read_resources_again(&mut tasks, &service, &shutdown);
        tasks.spawn("worker", {
            let shutdown = shutdown.clone();
            async move { Ok(service.run_worker(worker, shutdown).await?) }
        });
        Ok(until_stopped(tasks, shutdown).await)
    })
}

/// Hears the store's changes (`Service::listen`) on a task of its own.
fn listen_to_the_store(
    tasks: &mut Supervisor,
    service: &Arc<Service>,
    shutdown: &CancellationToken,
) {
    tasks.spawn("store listener", {
        let (service, shutdown) = (service.clone(), shutdown.clone());
        async move { Ok(service.listen(shutdown).await?) }
    });
}

/// Reads the triggers and schedules the store keeps again when they change
/// (`Service::run_resources`), on a task of its own.
fn read_resources_again(
    tasks: &mut Supervisor,
    service: &Arc<Service>,
    shutdown: &CancellationToken,
) {
    tasks.spawn("stored triggers and schedules", {
        let (service, shutdown) = (service.clone(), shutdown.clone());
        async move {
            service.run_resources(shutdown).await;
            Ok(())
        }
    });
}

/// Waits for an interrupt or for one of `tasks` to end, then stops them all: exit code 1 if a
/// task ended by itself or failed.
async fn until_stopped(mut tasks: Supervisor, shutdown: CancellationToken) -> ExitCode {
    let mut failed = tokio::select! {
        _ = interrupt() => {
            info!("shutting down; cancelling running builds");
            false
        }
        Some((task, ended)) = tasks.next() => {
            let error = ended.err().map(|e| e.to_string());
            error!(task, error, "a task of the process ended; stopping it");
            true
        }
    };
    shutdown.cancel();
    while let Some((task, ended)) = tasks.next().await {
        if let Err(e) = ended {
            error!(task, error = %e, "a task of the process failed while stopping");
            failed = true;
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// How often retention passes run unless the settings say otherwise.
const DEFAULT_RETENTION_INTERVAL: Duration = Duration::from_secs(3600);

/// The retention policy of the `retainDays` and `retentionInterval` settings.
fn retention(days: Option<u32>, interval: Option<String>) -> Result<Policy> {
    if days == Some(0) {
        anyhow::bail!("retainDays: give at least 1 day, or leave it out to keep every build");
    }
    let every = match interval {
        Some(text) => duration::parse(&text)
            .ok()
            .filter(|every| !every.is_zero())
            .with_context(|| {
                format!("the retention interval {text:?}: expected a duration such as 1h or 30m")
            })?,
        None => DEFAULT_RETENTION_INTERVAL,
    };
    Ok(Policy { days, every })
}

/// The GitHub API that triggered builds are reported to, and the console's public address,
/// if a token or an App is set.
fn github(args: &GitHubArgs, file: &SettingsFile) -> Result<Option<GitHub>> {
    let token = secret(
        &args
            .github_token_file
            .clone()
            .or(file.github_token_file.clone()),
        "BUILDER_GITHUB_TOKEN",
    )?;
    let app = args.github_app_id.or(file.github_app_id);
    let key_file = args
        .github_app_key_file
        .as_ref()
        .or(file.github_app_key_file.as_ref());
    let credentials = match (token.is_empty(), app, key_file) {
        (true, None, None) => return Ok(None),
        (false, None, None) => {
            let token = String::from_utf8(token).context("the GitHub token is not UTF-8")?;
            Credentials::Token(Secret::new(token))
        }
        (true, Some(id), Some(key_file)) => {
            let key = std::fs::read(key_file)
                .with_context(|| format!("cannot read {}", key_file.display()))?;
            let installation = args
                .github_app_installation
                .or(file.github_app_installation);
            Credentials::app(id, &key, installation)
                .map_err(|e| anyhow::anyhow!("{}: {e}", key_file.display()))?
        }
        (true, Some(_), None) => anyhow::bail!("--github-app-id needs --github-app-key-file"),
        (true, None, Some(_)) => anyhow::bail!("--github-app-key-file needs --github-app-id"),
        (false, _, _) => anyhow::bail!(
            "a GitHub token and a GitHub App are both set: report with one (an App also makes \
             check runs)"
        ),
    };
    let api = args
        .github_api_url
        .clone()
        .or(file.github_api_url.clone())
        .unwrap_or_else(|| "https://api.github.com".into());
    if !(api.starts_with("https://") || api.starts_with("http://")) {
        anyhow::bail!("the GitHub API URL {api:?}: expected http:// or https://");
    }
    Ok(Some(
        GitHub::new(&api, credentials).map_err(anyhow::Error::msg)?,
    ))
}

/// Sends the server's log (`tracing`) to stderr in `format`, filtered by `RUST_LOG` (`info`
/// without it). A panic is logged as an error too, in the span it happened in (a build's, a
/// delivery's), so that a JSON log holds it whole.
fn start_log(format: LogFormat) -> Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) => EnvFilter::builder()
            .parse(&directives)
            .with_context(|| format!("RUST_LOG={directives:?}"))?,
        Err(_) => EnvFilter::new("info"),
    };
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => log.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => log.json().flatten_event(true).try_init(),
    }
    .map_err(|e| anyhow::anyhow!("cannot start the log: {e}"))?;
    std::panic::set_hook(Box::new(|panic| error!(%panic, "panicked")));
    Ok(())
}

/// The store a `store` setting names.
enum StoreUrl {
    Sqlite(PathBuf),
    /// A `postgres://` (or `postgresql://`) URL, as PostgreSQL's clients take it.
    Postgres(String),
}

/// The store a `store` setting names: `sqlite://PATH` (the default, `DATA_DIR/builds.db`) or a
/// PostgreSQL URL.
fn store_url(url: Option<String>, data_dir: &std::path::Path) -> Result<StoreUrl> {
    let Some(url) = url else {
        return Ok(StoreUrl::Sqlite(data_dir.join(store::DATABASE)));
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(StoreUrl::Postgres(url));
    }
    match url.strip_prefix("sqlite://") {
        Some(path) if !path.is_empty() => Ok(StoreUrl::Sqlite(PathBuf::from(path))),
        // Not echoed: a mistyped PostgreSQL URL may carry a password.
        _ => anyhow::bail!(
            "the store setting: expected sqlite://PATH or postgres://USER@HOST/DATABASE"
        ),
    }
}

/// Opens the store, bringing its schema up to date.
async fn open_store(url: StoreUrl) -> Result<Arc<dyn Store>> {
    Ok(match url {
        StoreUrl::Sqlite(path) => Arc::new(
            SqliteStore::open(&path)
                .await
                .with_context(|| format!("cannot open the store {}", path.display()))?,
        ),
        // The store's error names the server without its password.
        StoreUrl::Postgres(url) => Arc::new(
            PostgresStore::open(&url)
                .await
                .context("cannot open the store")?,
        ),
    })
}
