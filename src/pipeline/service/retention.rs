//! The retention task of `builder serve` (issue 18): a pass at its start and then every
//! `Policy::every` removes, as `core::retention` decides, the finished builds and the deliveries
//! older than the policy's window (a batch per transaction, `store::Retention`), and the uploads no
//! build the store keeps was submitted over, then from the data directory the workspaces of builds
//! that are over (a crash left them), and the git mirrors no trigger and no kept build fetches.
//! Each pass is logged and recorded in the store, for the console.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Service;
use crate::adapters::source::git::{self, GitError};
use crate::adapters::store::{self, References};
use crate::core::retention::{BATCH, Entry, GRACE, Pass, Policy, Removed, leftovers};

/// The data directory's folder of the workspaces of builds being run (one per build id).
pub(super) const WORKSPACES: &str = "workspaces";
/// The data directory's folder of git mirrors.
pub(super) const MIRRORS: &str = "git";

/// What stopped a pass short.
#[derive(Debug)]
pub enum Unfinished {
    Store(store::Error),
    /// A folder of the data directory could not be listed.
    Listing {
        dir: PathBuf,
        error: std::io::Error,
    },
    Mirrors(GitError),
    /// The blocking task that clears the disk panicked.
    Task(tokio::task::JoinError),
}

impl std::fmt::Display for Unfinished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unfinished::Store(e) => e.fmt(f),
            Unfinished::Listing { dir, error } => write!(f, "{}: {error}", dir.display()),
            Unfinished::Mirrors(e) => e.fmt(f),
            Unfinished::Task(e) => e.fmt(f),
        }
    }
}

impl From<store::Error> for Unfinished {
    fn from(e: store::Error) -> Self {
        Unfinished::Store(e)
    }
}

impl Service {
    /// Runs a pass now and every `policy.every` until `shutdown`. A pass that fails is logged and
    /// recorded with what it removed until then; the next one tries again.
    pub async fn run_retention(&self, policy: Policy, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(policy.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => return,
            }
            let pass = self.retention_pass(&policy).await;
            let took_ms = pass.took.as_millis() as u64;
            match &pass.error {
                None => info!(removed = %pass.removed, took_ms, "retention pass"),
                Some(error) => {
                    warn!(removed = %pass.removed, took_ms, error, "retention pass stopped short")
                }
            }
            if let Err(e) = self.store.record_pass(&pass).await {
                warn!(error = %e, "recording the retention pass failed");
            }
        }
    }

    /// The newest retention passes first, at most `limit`.
    pub async fn retention_passes(&self, limit: u32) -> Result<Vec<Pass>, super::Failed> {
        Ok(self.store.retention_passes(limit).await?)
    }

    async fn retention_pass(&self, policy: &Policy) -> Pass {
        let started = Instant::now();
        let mut removed = Removed::default();
        let error = self.remove_old(policy, &mut removed).await.err();
        Pass {
            finished: SystemTime::now(),
            took: started.elapsed(),
            removed,
            error: error.map(|e| e.to_string()),
        }
    }

    async fn remove_old(&self, policy: &Policy, removed: &mut Removed) -> Result<(), Unfinished> {
        let now = SystemTime::now();
        if let Some(before) = policy.cutoff(now) {
            // A batch per transaction: SQLite's writer is held for one batch at a time.
            loop {
                let batch = self.store.remove_builds(before, BATCH).await?;
                removed.builds += batch;
                if batch < u64::from(BATCH) {
                    break;
                }
            }
            loop {
                let batch = self.store.remove_deliveries(before, BATCH).await?;
                removed.deliveries += batch;
                if batch < u64::from(BATCH) {
                    break;
                }
            }
        }
        // After the builds went: what they alone referred to is no longer needed. An upload is
        // made before its build is queued: one in its grace period may be about to be used.
        let made_before = now - GRACE;
        loop {
            let batch = self.store.remove_uploads(made_before, BATCH).await?;
            removed.uploads += batch;
            if batch < u64::from(BATCH) {
                break;
            }
        }
        let References {
            unfinished,
            clone_urls,
        } = self.store.references().await?;
        let triggers = self.triggers.all();
        let fetched = triggers
            .iter()
            .filter_map(|trigger| trigger.source_url(&self.settings.github, None).ok())
            .chain(clone_urls);
        let mirrors: BTreeSet<String> = fetched
            .map(|url| git::mirror_of(&url, &self.settings.rewrites))
            .collect();
        let data_dir = self.settings.data_dir.clone();
        // Listing and removing trees of files blocks for as long as they are big.
        let (from_disk, ended) = tokio::task::spawn_blocking(move || {
            let mut from_disk = Removed::default();
            let ended = clear_disk(&data_dir, &unfinished, &mirrors, now, &mut from_disk);
            (from_disk, ended)
        })
        .await
        .map_err(Unfinished::Task)?;
        removed.workspaces = from_disk.workspaces;
        removed.mirrors = from_disk.mirrors;
        ended
    }
}

/// Removes from `data_dir` the workspaces not of `unfinished` builds and the mirrors not in
/// `mirrors`, each untouched for the grace period, counting them
/// in `removed`. One that cannot be removed is logged and left for the next pass.
fn clear_disk(
    data_dir: &Path,
    unfinished: &BTreeSet<String>,
    mirrors: &BTreeSet<String>,
    now: SystemTime,
    removed: &mut Removed,
) -> Result<(), Unfinished> {
    let dir = data_dir.join(WORKSPACES);
    let workspaces = entries(&dir)?;
    for name in leftovers(&workspaces, unfinished, now) {
        let path = dir.join(name);
        removed.workspaces += u64::from(removal(&path, std::fs::remove_dir_all(&path)));
    }
    let dir = data_dir.join(MIRRORS);
    let found: Vec<Entry> = git::mirrors(&dir)
        .map_err(Unfinished::Mirrors)?
        .into_iter()
        .map(|(name, modified)| Entry { name, modified })
        .collect();
    for name in leftovers(&found, mirrors, now) {
        match git::remove_mirror(&dir, name) {
            Ok(gone) => removed.mirrors += u64::from(gone),
            Err(e) => warn!(error = %e, "removing a git mirror failed"),
        }
    }
    Ok(())
}

/// Whether `path` was removed, logging why not (one already gone counts as not removed).
fn removal(path: &Path, removed: std::io::Result<()>) -> bool {
    match removed {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "removing a leftover failed");
            false
        }
    }
}

/// The entries of `dir` (none if it does not exist), by file name, with their modification
/// times.
fn entries(dir: &Path) -> Result<Vec<Entry>, Unfinished> {
    let listing = |error| Unfinished::Listing {
        dir: dir.to_path_buf(),
        error,
    };
    let read = match std::fs::read_dir(dir) {
        Ok(read) => read,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(listing(e)),
    };
    let mut found = Vec::new();
    for entry in read {
        let entry = entry.map_err(listing)?;
        let file_name = entry.file_name();
        // A name that is not UTF-8 is no build's id.
        let Some(name) = file_name.to_str() else {
            continue;
        };
        // One removed meanwhile (its build ended) is not a leftover.
        let Ok(modified) = entry.metadata().and_then(|m| m.modified()) else {
            continue;
        };
        found.push(Entry {
            name: name.to_string(),
            modified,
        });
    }
    Ok(found)
}
