//! `builder submit`: what `gcloud builds submit` does, on this machine. The source directory is
//! packed by the upload rules (`.gcloudignore`), unpacked into a fresh workspace the way a server
//! receives an upload, the config is resolved as a manual build, and the secrets it was granted
//! (`--secret NAME`) are looked up locally. The result is a [`Run`] for the executor.
//!
//! A workspace directory's process holds a lock on its `lock` file for as long as it uses it. The
//! operating system releases the lock however the process ends, so a workspace whose lock can be
//! taken was left by a process that died (SIGKILL runs no destructor); the next submit removes it.
//! Process ids would not do: they are reused, and differ between PID namespaces.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;

use crate::adapters::source::{self, ArchiveSummary};
use crate::core::plan::{Context, Grant, SecretScope};
use crate::core::substitute::Values;
use crate::pipeline::execute::Run;
use crate::pipeline::{self, Machine, Reading};

/// Where the build's steps come from.
pub enum Recipe {
    /// A config file (YAML or JSON).
    Config(PathBuf),
    /// gcloud's `--tag IMAGE`: build the source's Dockerfile and push it.
    Tag(String),
}

pub struct Request {
    /// The build's id; a new one when `None`.
    pub build_id: Option<String>,
    /// The source directory; `None` is `--no-source`.
    pub source: Option<PathBuf>,
    pub ignore_file: Option<PathBuf>,
    pub recipe: Recipe,
    pub substitutions: Values,
    pub timeout: Option<Duration>,
    pub machine: Machine,
    /// The secrets the build may read (`--secret NAME`).
    pub secrets: BTreeSet<String>,
}

/// A build ready to run. The workspace directory lives as long as this value.
pub struct Prepared {
    pub run: Run,
    pub uploaded: Option<ArchiveSummary>,
    /// Where the source came from, for the build's record.
    pub source: serde_json::Value,
    pub warnings: String,
    /// Workspaces left by submits whose process died, removed before this one was made.
    pub swept: Vec<PathBuf>,
    _workspace: Option<Workspace>,
}

/// Why a submission was refused before anything ran.
#[derive(Debug)]
pub enum Refused {
    /// The build itself: its config or its secrets.
    Build(pipeline::Refused),
    /// Its source or its config file cannot be read.
    Source(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Build(refused) => refused.fmt(f),
            Refused::Source(message) => f.write_str(message),
        }
    }
}

impl From<pipeline::Refused> for Refused {
    fn from(refused: pipeline::Refused) -> Self {
        Refused::Build(refused)
    }
}

/// What `submit` refuses before anything is uploaded or run: the config, its plan for a manual
/// build, and its secrets. Returns the run (its workspace not set yet) and the config's warnings.
pub fn check(request: &Request) -> Result<(Run, String), Refused> {
    let build_id = request
        .build_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let recipe = recipe(request)?;
    let run = pipeline::plan(&build_id, &recipe, &request.machine)?;
    Ok((run, recipe.warnings))
}

/// [`check`], then the upload of the source into a fresh workspace.
pub fn prepare(request: Request) -> Result<Prepared, Refused> {
    let (mut run, warnings) = check(&request)?;
    let swept = sweep_workspaces(&std::env::temp_dir());
    let (workspace, uploaded) = match &request.source {
        Some(dir) => {
            let (workspace, summary) = upload(dir, request.ignore_file.as_deref())?;
            (Some(workspace), Some(summary))
        }
        None => (None, None),
    };
    let source = match (&request.source, &uploaded) {
        (Some(dir), Some(summary)) => serde_json::json!({
            "kind": "upload",
            "dir": std::path::absolute(dir).unwrap_or_else(|_| dir.clone()),
            "files": summary.files,
            "bytes": summary.bytes,
        }),
        _ => serde_json::json!({"kind": "none"}),
    };
    run.workspace = workspace.as_ref().map(Workspace::source);
    Ok(Prepared {
        source,
        run,
        uploaded,
        warnings,
        swept,
        _workspace: workspace,
    })
}

/// The config file, or `--tag`'s, read as a manual build's recipe.
fn recipe(request: &Request) -> Result<pipeline::Recipe, Refused> {
    let (bytes, file) = match &request.recipe {
        Recipe::Config(path) => {
            let bytes = std::fs::read(path).map_err(|e| {
                Refused::Source(format!(
                    "cannot read the build config {}: {e}",
                    path.display()
                ))
            })?;
            (bytes, path.display().to_string())
        }
        Recipe::Tag(image) => {
            let has_dockerfile = request
                .source
                .as_ref()
                .is_some_and(|dir| dir.join("Dockerfile").is_file());
            if !has_dockerfile {
                return Err(Refused::Source(
                    "Dockerfile required when specifying --tag".into(),
                ));
            }
            (tag_config(image).into_bytes(), "--tag".to_string())
        }
    };
    let reading = Reading {
        file,
        context: Context::Manual,
        built_ins: Values::new(),
        overrides: request.substitutions.clone(),
        timeout: request.timeout,
        uploads: request.source.is_some(),
        // `--trusted` is the machine's (`Machine::trusted`).
        trusted: false,
        secrets: SecretScope {
            names: request.secrets.clone(),
            grant: Grant::Submit,
        },
    };
    Ok(pipeline::Recipe::load(&bytes, reading)?)
}

/// gcloud's one-step build for `--tag` (spec §8), as a config.
pub fn tag_config(image: &str) -> String {
    serde_json::json!({
        "steps": [{
            "name": "gcr.io/cloud-builders/docker",
            "args": ["build", "--network", "cloudbuild", "--no-cache", "-t", image, "."],
        }],
        "images": [image],
    })
    .to_string()
}

/// Packs the source as an upload and unpacks it into a fresh directory, as a server would.
fn upload(dir: &Path, ignore_file: Option<&Path>) -> Result<(Workspace, ArchiveSummary), Refused> {
    let failed = |e: source::SourceError| Refused::Source(e.to_string());
    if !dir.is_dir() {
        return Err(Refused::Source(format!(
            "could not find source [{}]",
            dir.display()
        )));
    }
    let listing = source::list_files(dir, ignore_file).map_err(failed)?;
    let mut archive = Vec::new();
    let summary = source::pack(dir, &listing.files, &mut archive).map_err(failed)?;
    let workspace = Workspace::create(&std::env::temp_dir())
        .map_err(|e| Refused::Source(format!("cannot create a workspace: {e}")))?;
    // The archive was packed here, from the user's own files: no server limit applies.
    let everything = source::Limits {
        bytes: u64::MAX,
        entries: u64::MAX,
    };
    source::unpack(archive.as_slice(), &workspace.source(), &everything).map_err(failed)?;
    Ok((workspace, summary))
}

const WORKSPACE_PREFIX: &str = "builder-workspace-";
const WORKSPACE_LOCK: &str = "lock";

/// `PARENT/builder-workspace-XXXX/`: the upload in `source/` (which becomes `/workspace`, so the
/// lock cannot live there) and the `lock` this process holds while it exists (see the module
/// doc). Dropping it removes the directory.
struct Workspace {
    dir: TempDir,
    _lock: File,
}

impl Workspace {
    fn create(parent: &Path) -> std::io::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(WORKSPACE_PREFIX)
            .tempdir_in(parent)?;
        // Locked before it takes its name, so that a sweep never finds it unlocked.
        let staging = dir.path().join("lock.new");
        let lock = File::create(&staging)?;
        lock.lock()?;
        std::fs::rename(&staging, dir.path().join(WORKSPACE_LOCK))?;
        std::fs::create_dir(dir.path().join("source"))?;
        Ok(Self { dir, _lock: lock })
    }

    fn source(&self) -> PathBuf {
        self.dir.path().join("source")
    }
}

/// Removes the workspaces in `parent` whose process died, and returns them. A workspace without a
/// `lock` is still being made (or not builder's); one that cannot be opened or removed belongs to
/// another user, whose next submit sweeps it: neither stops this submit.
fn sweep_workspaces(parent: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut swept = Vec::new();
    for entry in entries.flatten() {
        let is_workspace = entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.starts_with(WORKSPACE_PREFIX));
        let dir = entry.path();
        let Some(lock) = is_workspace
            .then(|| File::open(dir.join(WORKSPACE_LOCK)).ok())
            .flatten()
        else {
            continue;
        };
        // Held while removing, so that two sweeps never both remove it.
        if lock.try_lock().is_ok() && std::fs::remove_dir_all(&dir).is_ok() {
            swept.push(dir);
        }
    }
    swept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_workspaces_whose_lock_is_free_are_swept() {
        let parent = TempDir::new().unwrap();
        let live = Workspace::create(parent.path()).unwrap();
        let dead = Workspace::create(parent.path()).unwrap();
        let dead_dir = dead.dir.path().to_path_buf();
        // A process that died: its directory stays, its lock is released.
        std::mem::forget(dead.dir);
        drop(dead._lock);
        let unlocked_stranger = parent.path().join("builder-workspace-no-lock");
        std::fs::create_dir(&unlocked_stranger).unwrap();
        assert_eq!(
            sweep_workspaces(parent.path()),
            std::slice::from_ref(&dead_dir)
        );
        assert!(!dead_dir.exists());
        assert!(live.source().is_dir());
        assert!(unlocked_stranger.is_dir());
        assert_eq!(sweep_workspaces(parent.path()), Vec::<PathBuf>::new());
    }
}
