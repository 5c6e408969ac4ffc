//! `builder serve`: its settings, from flags and the environment first, then a settings file
//! (`--config FILE`, the same settings in camelCase), then defaults; and the process around the
//! service: its log, the store, the engine, the listener, its supervised tasks (see
//! [`super::supervise`]), graceful shutdown.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use clap::{Args, ValueEnum};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

use super::supervise::Supervisor;
use super::{default_data_dir, interrupt, secret};
use crate::adapters::registry::{self, Registries};
use crate::adapters::runtime::DockerBackend;
use crate::adapters::source::git::Rewrites;
use crate::adapters::store;
use crate::adapters::store::{PostgresStore, SqliteStore, Store};
use crate::core::alias::Aliases;
use crate::edges::api;
use crate::pipeline::Machine;
use crate::pipeline::service::{self, Schedules, Service, SystemClock, TriggerFiles};

#[derive(Args)]
pub(super) struct ServeArgs {
    /// A settings file (YAML): any of the settings below in camelCase (`listen`, `dataDir`,
    /// `aliases`, `triggers`, `schedules`, `webhookSecretFile`, `apiTokenFile`, `gitUrlRewrites`,
    /// `maxConcurrentBuilds`, `secretsDir`, `project`, `store`, `registryConfig`,
    /// `insecureRegistries`, `registryCas`, `readsNeedToken`, `logFormat`, `trusted`); flags and
    /// the environment win.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Directory of trigger files (YAML or JSON, as `gcloud builds triggers export` writes them);
    /// triggers created through the API are written there too [default: DATA_DIR/triggers].
    #[arg(long, value_name = "DIR")]
    triggers: Option<PathBuf>,
    /// Directory of schedule files (YAML or JSON; see configs/schedules): cron schedules that run
    /// triggers [default: DATA_DIR/schedules].
    #[arg(long, value_name = "DIR")]
    schedules: Option<PathBuf>,
    /// File holding the GitHub webhook's secret (or set BUILDER_WEBHOOK_SECRET).
    #[arg(long, value_name = "FILE")]
    webhook_secret_file: Option<PathBuf>,
    /// File holding the token that API requests which change anything must carry (or set
    /// BUILDER_API_TOKEN); without one, such requests are refused.
    #[arg(long, value_name = "FILE")]
    api_token_file: Option<PathBuf>,
    /// Fetch repositories whose clone URL starts with FROM from TO instead (repeatable), e.g.
    /// `https://github.com/=/srv/git/` for local mirrors.
    #[arg(long = "git-url-rewrite", value_name = "FROM=TO")]
    git_url_rewrites: Vec<String>,
    /// How many builds may run at once; the rest wait in the queue (0: only queue them)
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
    /// or `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`, a database several servers share.
    #[arg(long, env = "BUILDER_STORE", value_name = "URL")]
    store: Option<String>,
    /// Reading (the console's pages and the API's GET requests) needs the API token too; by
    /// default anyone who reaches the server may read, and only actions need the token.
    #[arg(long)]
    reads_need_token: bool,
    /// Serve the KFP registry API (`/kfp/{project}/{repository}`, for kfp's `RegistryClient`)
    /// over the template store at HOST[:PORT]/PATH: a package is the OCI repository
    /// `PATH/{project}/{repository}/{package}`, the one `templates:` pushes to.
    #[arg(long, env = "BUILDER_KFP_REGISTRY", value_name = "HOST[:PORT]/PATH")]
    kfp_registry: Option<String>,
    /// How the server's log on stderr is written: `text` for people, `json` (one object a line)
    /// for machines; `RUST_LOG` filters it (e.g. `builder=debug`) [default: text, at `info`].
    #[arg(long, value_enum, env = "BUILDER_LOG_FORMAT", value_name = "FORMAT")]
    log_format: Option<LogFormat>,
    /// Every build this server runs may reach the machine through the engine (privileged
    /// containers, host paths…); without it, only those of triggers marked `trusted: true`.
    #[arg(long)]
    trusted: bool,
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
    log_format: Option<LogFormat>,
    #[serde(default)]
    trusted: bool,
}

pub(super) fn serve(
    args: ServeArgs,
    data_dir: Option<PathBuf>,
    aliases: Option<PathBuf>,
    registry: registry::Settings,
) -> Result<ExitCode> {
    let file = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            serde_saphyr::from_str::<SettingsFile>(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        None => SettingsFile::default(),
    };
    let data_dir = data_dir.or(file.data_dir).unwrap_or_else(default_data_dir);
    let aliases = Aliases::load(aliases.or(file.aliases).as_deref()).map_err(anyhow::Error::msg)?;
    let webhook_secret = secret(
        &args.webhook_secret_file.or(file.webhook_secret_file),
        "BUILDER_WEBHOOK_SECRET",
    )?;
    if webhook_secret.is_empty() {
        anyhow::bail!(
            "no webhook secret: pass --webhook-secret-file FILE or set BUILDER_WEBHOOK_SECRET \
             (the secret configured on the GitHub webhook)"
        );
    }
    let api_token = secret(
        &args.api_token_file.or(file.api_token_file),
        "BUILDER_API_TOKEN",
    )?;
    let log_format = args.log_format.or(file.log_format).unwrap_or_default();
    let reads_need_token = args.reads_need_token || file.reads_need_token;
    if reads_need_token && api_token.is_empty() {
        anyhow::bail!(
            "reads need the API token, and there is none: pass --api-token-file FILE or set \
             BUILDER_API_TOKEN"
        );
    }
    let triggers_dir = args
        .triggers
        .or(file.triggers)
        .unwrap_or_else(|| data_dir.join("triggers"));
    let (triggers, warnings) = TriggerFiles::load(&triggers_dir).map_err(anyhow::Error::msg)?;
    eprint!("{warnings}");
    let schedules_dir = args
        .schedules
        .or(file.schedules)
        .unwrap_or_else(|| data_dir.join("schedules"));
    let (schedules, warnings) =
        Schedules::load(&schedules_dir, &triggers.all()).map_err(anyhow::Error::msg)?;
    eprint!("{warnings}");
    let rewrites = args
        .git_url_rewrites
        .iter()
        .chain(&file.git_url_rewrites)
        .map(|pair| pair.parse())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("git URL rewrite: {e}"))?;
    let store_url = store_url(args.store.or(file.store), &data_dir)?;
    let registries = Registries::new(&registry::Settings {
        docker_config: registry.docker_config.or(file.registry_config),
        insecure: [registry.insecure, file.insecure_registries].concat(),
        ca_files: [registry.ca_files, file.registry_cas].concat(),
    })
    .map_err(anyhow::Error::msg)?;
    if let Some(root) = args.kfp_registry.as_ref().or(file.kfp_registry.as_ref())
        && !root.trim_end_matches('/').contains('/')
    {
        anyhow::bail!(
            "--kfp-registry {root:?}: name a path on the registry too, HOST[:PORT]/PATH \
             (e.g. 127.0.0.1:5000/kfp)"
        );
    }
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let settings = service::Settings {
        data_dir,
        machine: Machine {
            project: args
                .project
                .or(file.project)
                .unwrap_or_else(|| "local".into()),
            aliases,
            secrets_dir: args.secrets_dir.or(file.secrets_dir),
            registries,
            trusted: args.trusted || file.trusted,
        },
        webhook_secret,
        rewrites: Rewrites::new(rewrites),
        max_concurrent_builds: args
            .max_concurrent_builds
            .or(file.max_concurrent_builds)
            .unwrap_or(2),
        kfp_registry: args
            .kfp_registry
            .or(file.kfp_registry)
            .map(|root| root.trim_end_matches('/').to_string()),
    };
    let access = api::Access {
        token: (!api_token.is_empty()).then(|| String::from_utf8_lossy(&api_token).into_owned()),
        reads_need_token,
    };
    start_log(log_format)?;
    tokio::runtime::Runtime::new()?.block_on(async {
        let store = open_store(store_url).await?;
        let runtime = DockerBackend::connect().await?;
        let count = format!(
            "{} triggers, {} schedules",
            triggers.all().len(),
            schedules.len()
        );
        let service = Arc::new(Service::new(
            store,
            Arc::new(runtime),
            triggers,
            schedules,
            Arc::new(SystemClock),
            settings,
        ));
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        info!("listening on http://{} ({count})", listener.local_addr()?);
        let shutdown = CancellationToken::new();
        let mut tasks = Supervisor::default();
        let writer = service
            .delivery_writer()
            .expect("a new service has its delivery writer");
        tasks.spawn("delivery writer", async { Ok(writer.await?) });
        tasks.spawn("queue", {
            let (service, shutdown) = (service.clone(), shutdown.clone());
            async move { Ok(service.run(shutdown).await?) }
        });
        tasks.spawn("scheduler", {
            let (service, shutdown) = (service.clone(), shutdown.clone());
            async move {
                service.run_schedules(shutdown).await;
                Ok(())
            }
        });
        // The server holds the last reference to the service once the others have ended: the
        // delivery writer ends when it goes.
        tasks.spawn("http server", {
            let stop = shutdown.clone().cancelled_owned();
            async move { Ok(api::serve(listener, service, access, stop).await?) }
        });
        let mut failed = tokio::select! {
            _ = interrupt() => {
                info!("shutting down; cancelling running builds");
                false
            }
            Some((task, ended)) = tasks.next() => {
                let error = ended.err().map(|e| e.to_string());
                error!(task, error, "a task of the server ended; stopping the server");
                true
            }
        };
        shutdown.cancel();
        while let Some((task, ended)) = tasks.next().await {
            if let Err(e) = ended {
                error!(task, error = %e, "a task of the server failed while stopping");
                failed = true;
            }
        }
        Ok(if failed {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        })
    })
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
