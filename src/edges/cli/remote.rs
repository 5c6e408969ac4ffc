//! The commands that are requests to `builder serve` (`--server URL`): builds, triggers,
//! schedules, and `submit`, printed as their local counterparts print.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use super::{
    BuildsCommand, SchedulesCommand, SubmitArgs, TriggersCommand, print_builds, print_step,
    print_summary, secret, step_label,
};
use crate::adapters::source;
use crate::core::build::Decision;
use crate::edges::client::{Client, Progress, Submission};

pub(super) fn client(server: Option<String>, token_file: Option<PathBuf>) -> Result<Client> {
    let server = server.context(
        "this command is a request to `builder serve`: pass --server URL (or set BUILDER_SERVER)",
    )?;
    let token = secret(&token_file, "BUILDER_API_TOKEN")?;
    let token = (!token.is_empty()).then(|| String::from_utf8_lossy(&token).into_owned());
    Ok(Client::new(&server, token))
}

fn block_on<T>(future: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Runtime::new()?.block_on(future)
}

pub(super) fn builds(command: BuildsCommand, client: Client) -> Result<ExitCode> {
    block_on(async {
        match command {
            BuildsCommand::List { limit } => print_builds(&client.builds(limit).await?)?,
            BuildsCommand::Describe { id } => {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&client.build(&id).await?)?
                )?;
            }
            BuildsCommand::Log { id, stream: false } => {
                let build = client.build(&id).await?;
                let ids: Vec<_> = build.steps.iter().map(|s| s.id.clone()).collect();
                // Printed a page at a time: a long log is never whole in memory, here or there.
                let mut after = Some(0);
                while let Some(from) = after {
                    let (lines, next) = client.log_page(&build.id, from).await?;
                    for line in lines {
                        outln!("{}: {}", step_label(&ids, line.step), line.text)?;
                    }
                    after = next;
                }
            }
            BuildsCommand::Log { id, stream: true } => {
                follow(&client, &id).await?;
            }
            BuildsCommand::Cancel { id } => {
                client.cancel(&id).await?;
                eprintln!("Cancelled build [{id}].");
            }
            BuildsCommand::Approve { id, comment } => {
                let build = client.approve(&id, Decision::Approved, comment).await?;
                eprintln!("Approved build [{}]: it is {}.", build.id, build.status);
            }
            BuildsCommand::Reject { id, comment } => {
                let build = client.approve(&id, Decision::Rejected, comment).await?;
                eprintln!("Rejected build [{}]: it is {}.", build.id, build.status);
            }
            BuildsCommand::Retry { id } => {
                let retry = client.retry(&id).await?;
                eprintln!("Created build [{retry}], a retry of [{id}].");
                outln!("{retry}")?;
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub(super) fn triggers(command: TriggersCommand, client: Client) -> Result<ExitCode> {
    block_on(async {
        match command {
            TriggersCommand::List => {
                for trigger in client.triggers().await? {
                    let disabled = if trigger["disabled"] == true {
                        " (disabled)"
                    } else {
                        ""
                    };
                    outln!(
                        "{}{disabled}: {}",
                        trigger["name"].as_str().unwrap_or_default(),
                        trigger["rule"].as_str().unwrap_or_default()
                    )?;
                }
            }
            TriggersCommand::Describe { name } => {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&client.trigger(&name).await?)?
                )?;
            }
            TriggersCommand::Run(args) => {
                let run = json!({
                    "branch": args.branch,
                    "tag": args.tag,
                    "commit": args.sha,
                    "substitutions": args.substitutions.unwrap_or_default(),
                });
                let id = client.run_trigger(&args.name, &run).await?;
                eprintln!("Created build [{id}].");
                outln!("{id}")?;
            }
            TriggersCommand::Import { file } => {
                let bytes = std::fs::read(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                let (trigger, _) = crate::core::triggers::load(&bytes).map_err(|d| {
                    anyhow::anyhow!("{}", d.render(&file.display().to_string()).trim_end())
                })?;
                let answer = client.import_trigger(&bytes, &trigger.name).await?;
                for warning in answer["warnings"].as_array().into_iter().flatten() {
                    eprintln!("{}", warning.as_str().unwrap_or_default());
                }
                outln!("{}", answer["trigger"]["name"].as_str().unwrap_or_default())?;
            }
            TriggersCommand::Test(_) => unreachable!("`triggers test` runs here"),
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub(super) fn schedules(command: SchedulesCommand, client: Client) -> Result<ExitCode> {
    block_on(async {
        match command {
            SchedulesCommand::List => {
                for schedule in client.schedules().await? {
                    outln!("{}", schedule_line(&schedule))?;
                }
            }
            SchedulesCommand::Describe { name } => {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&client.schedule(&name).await?)?
                )?;
            }
            SchedulesCommand::RunNow { name } => {
                let id = client.run_schedule(&name).await?;
                eprintln!("Created build [{id}].");
                outln!("{id}")?;
            }
            SchedulesCommand::Pause { name } => {
                client.pause_schedule(&name, true).await?;
                eprintln!("Paused schedule [{name}].");
            }
            SchedulesCommand::Resume { name } => {
                let schedule = client.pause_schedule(&name, false).await?;
                eprintln!("Resumed schedule [{name}].");
                outln!("{}", schedule_line(&schedule))?;
            }
            SchedulesCommand::Preview(_) => unreachable!("`schedules preview` runs here"),
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `NAME: EXPR (ZONE), next UTC (LOCAL), last SCHEDULED build ID STATUS`, and whether it is
/// suspended or paused.
fn schedule_line(schedule: &Value) -> String {
    let text = |value: &Value| value.as_str().unwrap_or("-").to_string();
    let mut line = format!(
        "{}: {} ({}), next {} ({})",
        text(&schedule["name"]),
        text(&schedule["schedule"]),
        text(&schedule["timeZone"]),
        text(&schedule["nextRun"]["utc"]),
        text(&schedule["nextRun"]["local"]),
    );
    let last = &schedule["lastRun"];
    if !last.is_null() {
        line += &format!(
            ", last {} build {} {}",
            text(&last["scheduledTime"]),
            text(&last["build"]),
            text(&last["status"])
        );
    }
    for (field, word) in [("suspend", "suspended"), ("paused", "paused")] {
        if schedule[field] == true {
            line += &format!(" ({word})");
        }
    }
    line
}

/// `builder submit --server`: the source packed as a local submit packs it, uploaded; the build
/// followed and summed up as a local submit prints it, with the same exit codes.
pub(super) fn submit(args: SubmitArgs, client: Client) -> Result<ExitCode> {
    if args.trusted {
        anyhow::bail!(
            "--trusted is the server's to give: start it with `builder serve --trusted`, or mark \
             a trigger `trusted: true`"
        );
    }
    if let Some(name) = args.secrets.first() {
        anyhow::bail!(
            "--secret is the server's to give: the server lets submitted builds read the secrets \
             of its `submitSecrets` setting (`builder serve --submit-secret {name}`)"
        );
    }
    let (config, config_name) = match &args.tag {
        Some(image) => (
            crate::pipeline::submit::tag_config(image),
            "--tag".to_string(),
        ),
        None => (
            std::fs::read_to_string(&args.config).with_context(|| {
                format!("cannot read the build config {}", args.config.display())
            })?,
            args.config.display().to_string(),
        ),
    };
    let archive = if args.no_source {
        None
    } else {
        let listing = source::list_files(&args.source, args.ignore_file.as_deref())?;
        let mut archive = Vec::new();
        let summary = source::pack(&args.source, &listing.files, &mut archive)?;
        eprintln!(
            "Uploading {} file(s), {} bytes compressed.",
            summary.files,
            archive.len()
        );
        Some(archive)
    };
    block_on(async {
        let upload = match archive {
            Some(archive) => Some(client.upload(archive).await?),
            None => None,
        };
        let substitutions = args.substitutions.substitutions.unwrap_or_default();
        let id = client
            .submit(&Submission {
                config: &config,
                config_name: &config_name,
                substitutions: &substitutions,
                upload: upload.as_deref(),
                require_approval: args.require_approval,
            })
            .await?;
        eprintln!("Created build [{id}].");
        if args.require_approval {
            eprintln!("It waits for approval: `builder builds approve {id}`.");
        }
        if args.detach {
            outln!("{id}")?;
            return Ok(ExitCode::SUCCESS);
        }
        outln!("starting build \"{id}\"\n\nBUILD")?;
        let build = follow(&client, &id).await?;
        print_summary(&build, false)
    })
}

/// Prints a build's progress as it runs, as a local build prints it; returns its record.
async fn follow(client: &Client, id: &str) -> Result<crate::core::wire::Build> {
    // Each step's id, learnt from its start, which comes before its lines.
    let mut ids: Vec<Option<String>> = Vec::new();
    // Printing stops at the first failed write; the build is followed to its end regardless.
    let mut printed = Ok(());
    let build = client
        .follow(id, |seen| match seen {
            Progress::Step {
                step,
                id,
                status,
                detail,
            } => {
                if ids.len() <= step {
                    ids.resize(step + 1, None);
                }
                ids[step] = id;
                if printed.is_ok() {
                    printed = print_step(&ids, step, status, detail.as_deref());
                }
            }
            Progress::Line { step, text } => {
                if printed.is_ok() {
                    printed = outln!("{}: {text}", step_label(&ids, step));
                }
            }
        })
        .await?;
    printed?;
    Ok(build)
}
