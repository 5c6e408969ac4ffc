//! What a retention pass of `builder serve` removes (issue 18), as decisions over values: the
//! finished builds and the deliveries older than the policy's window (the cut-off the store
//! removes before), the uploads no kept build was submitted over, and on disk the crash workspaces
//! and git mirrors that nothing needs.
//! The caller lists what exists, what the store still refers to and the time; it removes what
//! this says, and records what it removed ([`Pass`]).

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

/// No upload, workspace or mirror younger than this is removed, needed or not: an upload is made before the
/// build that uses it is queued, a workspace or a mirror moments before its build's record says
/// so, and a pass must never win that race.
pub const GRACE: Duration = Duration::from_secs(3600);

/// How many builds (with their steps, logs and reports) or deliveries one transaction removes: a
/// pass holds SQLite's writer for one batch at a time, never for the whole backlog, so deliveries
/// and logs are written between batches.
pub const BATCH: u32 = 100;

const DAY: Duration = Duration::from_secs(24 * 3600);

/// What is kept, and how often a pass looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Finished builds and deliveries are removed this many days (at least 1) after they
    /// finished or arrived; `None` keeps them all, as builder always did.
    pub days: Option<u32>,
    /// How long from one pass to the next (the first runs at the start).
    pub every: Duration,
}

impl Policy {
    /// What finished (a build) or arrived (a delivery) before this time goes, if anything does.
    pub fn cutoff(&self, now: SystemTime) -> Option<SystemTime> {
        let days = self.days?;
        let cutoff = now
            .checked_sub(DAY * days)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        Some(cutoff.max(SystemTime::UNIX_EPOCH))
    }
}

/// Something on disk a pass may remove: a workspace (its build's id), a mirror (its directory's name), and when it was last written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub modified: SystemTime,
}

/// The entries to remove: those no one `needed` and untouched for [`GRACE`] (one written in the
/// future, by a clock that moved back, is young).
pub fn leftovers<'e>(
    entries: &'e [Entry],
    needed: &BTreeSet<String>,
    now: SystemTime,
) -> Vec<&'e str> {
    entries
        .iter()
        .filter(|entry| !needed.contains(&entry.name))
        .filter(|entry| {
            now.duration_since(entry.modified)
                .is_ok_and(|age| age >= GRACE)
        })
        .map(|entry| entry.name.as_str())
        .collect()
}

/// What one pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    /// Finished builds, with their steps, logs and GitHub reports.
    pub builds: u64,
    /// Deliveries, verified or rejected (the sample of rejected ones).
    pub deliveries: u64,
    /// Uploaded sources no build the store keeps was submitted with.
    pub uploads: u64,
    /// Workspaces of builds that are over (their process died before removing them).
    pub workspaces: u64,
    /// Git mirrors no trigger and no build the store keeps fetches from.
    pub mirrors: u64,
}

impl std::fmt::Display for Removed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} builds, {} deliveries, {} uploads, {} workspaces, {} mirrors",
            self.builds, self.deliveries, self.uploads, self.workspaces, self.mirrors
        )
    }
}

/// A pass as recorded: when it ended, how long it took, what it removed, and what stopped it
/// short, if something did (what it removed until then is counted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pass {
    pub finished: SystemTime,
    pub took: Duration,
    pub removed: Removed,
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn the_cutoff_is_the_window_before_now_and_none_keeps_everything() {
        let now = at(100 * 86_400);
        let policy = |days| Policy {
            days,
            every: Duration::from_secs(3600),
        };
        assert_eq!(policy(Some(30)).cutoff(now), Some(at(70 * 86_400)));
        assert_eq!(policy(Some(365)).cutoff(now), Some(SystemTime::UNIX_EPOCH));
        assert_eq!(policy(None).cutoff(now), None);
    }

    #[test]
    fn only_old_entries_nothing_needs_are_left_over() {
        let now = at(10_000);
        let entry = |name: &str, modified| Entry {
            name: name.into(),
            modified,
        };
        let entries = [
            entry("old-needed", at(0)),
            entry("old", at(0)),
            entry("just-old-enough", now - GRACE),
            entry("young", now - GRACE + Duration::from_secs(1)),
            entry("from-the-future", at(20_000)),
        ];
        let needed = BTreeSet::from(["old-needed".to_string()]);
        assert_eq!(
            leftovers(&entries, &needed, now),
            ["old", "just-old-enough"]
        );
    }
}
