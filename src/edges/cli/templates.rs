//! `builder templates`: pipeline templates pushed, listed and pulled as OCI artifacts, straight
//! to the registry (no server), with the same rules as a build's `templates:`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};

use super::{JsonFormat, parse_pair};
use crate::adapters::registry::{Registries, TemplateUpload};
use crate::core::build::rfc3339;
use crate::core::config::model::{DEFAULT_TEMPLATE_LIMIT, DEFAULT_VERSION_REGEX};
use crate::core::image;
use crate::core::templates::{self, Provenance};

#[derive(Subcommand)]
pub(super) enum TemplatesCommand {
    /// Push a template under a version and move tags to it, as a build's `templates:` does.
    Push(PushArgs),
    /// A repository's template versions in semantic version order, with tags, digests and
    /// creation times.
    List {
        /// `HOST[:PORT]/PATH`.
        repository: String,
        /// Print JSON instead of a table.
        #[arg(long, value_enum)]
        format: Option<JsonFormat>,
    },
    /// The exact bytes pushed as REPOSITORY:VERSION (or any of its tags).
    Pull {
        #[arg(value_name = "REPOSITORY:VERSION")]
        reference: String,
        /// Write to FILE instead of stdout.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

#[derive(Args)]
pub(super) struct PushArgs {
    /// The compiled template (YAML or JSON).
    file: PathBuf,
    /// `HOST[:PORT]/PATH`, without a tag.
    #[arg(long)]
    repository: String,
    /// The version to push it as [default: taken from the file name by --version-regex].
    #[arg(long, conflicts_with = "version_regex")]
    version: Option<String>,
    /// Its first capture group, searched in the file name, is the version
    /// [default: _v(\d+\.\d+\.\d+)\.(?:ya?ml|json)$].
    #[arg(long, value_name = "RE")]
    version_regex: Option<String>,
    /// A tag to move to this version, such as `latest` (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// An annotation for the manifest (repeatable).
    #[arg(long = "annotation", value_name = "KEY=VALUE", value_parser = parse_pair)]
    annotations: Vec<(String, String)>,
    /// Let an existing version with other content move to this file's content.
    #[arg(long)]
    allow_overwrite: bool,
    /// The largest template accepted.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_TEMPLATE_LIMIT.unsigned_abs())]
    max_size_bytes: u64,
}

pub(super) fn run(command: TemplatesCommand, registries: Registries) -> Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    match command {
        TemplatesCommand::Push(args) => runtime.block_on(push(args, &registries)),
        TemplatesCommand::List { repository, format } => {
            check_repository(&repository)?;
            let versions = runtime.block_on(registries.list_templates(&repository))?;
            if format.is_some() {
                outln!("{}", serde_json::to_string_pretty(&versions)?)?;
                return Ok(ExitCode::SUCCESS);
            }
            outln!("{:<16} {:<24} {:<73} CREATED", "VERSION", "TAGS", "DIGEST")?;
            for version in versions {
                outln!(
                    "{:<16} {:<24} {:<73} {}",
                    version.version,
                    version.tags.join(","),
                    version.digest,
                    version.created.as_deref().unwrap_or("-")
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        TemplatesCommand::Pull { reference, output } => {
            let Some((repository, version)) = reference
                .rsplit_once(':')
                .filter(|(repository, version)| !version.contains('/') && !repository.is_empty())
            else {
                bail!(
                    "{reference:?}: expected REPOSITORY:VERSION, e.g. localhost:5000/ml/pipeline:1.2.0"
                );
            };
            check_repository(repository)?;
            let bytes = runtime.block_on(registries.pull_template(repository, version))?;
            match output {
                Some(path) => std::fs::write(&path, &bytes)
                    .with_context(|| format!("cannot write {}", path.display()))?,
                None => super::output::write(&bytes)?,
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn push(args: PushArgs, registries: &Registries) -> Result<ExitCode> {
    check_repository(&args.repository)?;
    let name = args.file.display().to_string();
    let size = std::fs::metadata(&args.file)
        .with_context(|| format!("cannot read {name}"))?
        .len();
    if size > args.max_size_bytes {
        bail!(
            "{name} is {size} bytes, more than the {} bytes templates may have (--max-size-bytes)",
            args.max_size_bytes
        );
    }
    let content = std::fs::read(&args.file).with_context(|| format!("cannot read {name}"))?;
    let version = match args.version {
        Some(version) => version,
        None => {
            let regex = args
                .version_regex
                .as_deref()
                .unwrap_or(DEFAULT_VERSION_REGEX);
            let regex = templates::version_regex(regex).map_err(anyhow::Error::msg)?;
            templates::version_of(&name, &regex).map_err(anyhow::Error::msg)?
        }
    };
    for tag in std::iter::once(&version).chain(&args.tags) {
        if !templates::is_tag(tag) {
            bail!("{tag:?} is not a valid tag: it must match ^[\\w][\\w.-]{{0,127}}$");
        }
    }
    let annotations: BTreeMap<String, String> = args.annotations.into_iter().collect();
    let provenance = Provenance {
        created: rfc3339::format(std::time::SystemTime::now()),
        ..Provenance::default()
    };
    let pushed = registries
        .push_template(&TemplateUpload {
            file: &name,
            content: content.into(),
            repository: &args.repository,
            version: &version,
            tags: &args.tags,
            annotations: &annotations,
            allow_version_overwrite: args.allow_overwrite,
            provenance: &provenance,
        })
        .await?;
    let what = if pushed.uploaded {
        "pushed"
    } else {
        "unchanged"
    };
    outln!(
        "{}:{} {what}: digest {}",
        pushed.repository,
        pushed.tags.join(","),
        pushed.digest
    )?;
    Ok(ExitCode::SUCCESS)
}

fn check_repository(repository: &str) -> Result<()> {
    image::validate(repository).map_err(anyhow::Error::msg)?;
    if image::has_tag_or_digest(repository) {
        bail!("{repository:?} names a tag or digest; name the repository only");
    }
    Ok(())
}
