//! Fetching a repository's mirror for the service, off the async threads and bounded in time: a
//! fetch that makes no progress for a while, or that runs past its deadline, is given up, and
//! failed fetches are tried again after a growing pause.
//!
//! git2 cannot be interrupted from outside (see `source::git::Watch`): a fetch given up is asked
//! to stop, which it does at its next report of progress; one blocked on a server that never
//! answers keeps its blocking thread until the connection ends, while the service goes on
//! without it.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::*;
use crate::adapters::source::git::{GitError, Watch};

/// How fetches are bounded and retried (`builder serve`'s `--git-fetch-*` settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchPolicy {
    /// A fetch that reports no progress for this long is given up.
    pub stall: Duration,
    /// A fetch, and reading the mirror after it, is given up after this long whatever its
    /// progress.
    pub deadline: Duration,
    /// How many times a fetch is tried before its failure is final (at least 1).
    pub attempts: u32,
    /// The pause before the second try; it doubles before each next one, up to
    /// [`MAX_BACKOFF`].
    pub backoff: Duration,
}

impl Default for FetchPolicy {
    fn default() -> Self {
        FetchPolicy {
            stall: Duration::from_secs(60),
            deadline: Duration::from_secs(600),
            attempts: 5,
            backoff: Duration::from_secs(5),
        }
    }
}

/// The longest pause between two tries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

impl FetchPolicy {
    /// The pause after failed try `attempt` (1 for the first).
    pub fn backoff_after(&self, attempt: u32) -> Duration {
        let doubled = self
            .backoff
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)));
        doubled.min(MAX_BACKOFF)
    }
}

/// Why a fetch (and what read the mirror after it) failed.
#[derive(Debug)]
pub enum FetchFailed {
    Git(GitError),
    /// No progress for `after`.
    Stalled {
        url: String,
        after: Duration,
    },
    /// Not done after `after`.
    TimedOut {
        url: String,
        after: Duration,
    },
    /// The blocking task panicked.
    Task(tokio::task::JoinError),
    /// The service is stopping, or the build it was for was cancelled.
    Cancelled,
}

impl std::fmt::Display for FetchFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchFailed::Git(e) => e.fmt(f),
            FetchFailed::Stalled { url, after } => write!(
                f,
                "fetching {url} made no progress for {}s",
                after.as_secs()
            ),
            FetchFailed::TimedOut { url, after } => {
                write!(f, "fetching {url} took longer than {}s", after.as_secs())
            }
            FetchFailed::Task(e) => e.fmt(f),
            FetchFailed::Cancelled => f.write_str("cancelled"),
        }
    }
}

/// A fetch that failed every time it was tried.
#[derive(Debug)]
pub struct Exhausted {
    pub attempts: u32,
    /// The last try's failure.
    pub last: FetchFailed,
}

impl std::fmt::Display for Exhausted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.attempts {
            1 => self.last.fmt(f),
            n => write!(f, "{} (tried {n} times)", self.last),
        }
    }
}

/// Stops a fetch when its watcher goes away.
struct StopOnDrop(Watch);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// How often a fetch's watcher looks at its progress.
const LOOK: Duration = Duration::from_millis(100);

impl Service {
    /// Updates the mirror of `url` (rewritten by the settings) and reads it with `read`, on a
    /// blocking thread, once, within the settings' [`FetchPolicy`].
    pub(super) async fn read_mirror<T: Send + 'static>(
        &self,
        url: &str,
        read: impl FnOnce(&Mirror) -> Result<T, GitError> + Send + 'static,
    ) -> Result<T, FetchFailed> {
        let policy = self.settings.fetch;
        let watch = Watch::default();
        let (cache, rewrites) = (
            self.settings.data_dir.join(super::retention::MIRRORS),
            self.settings.rewrites.clone(),
        );
        // Whoever stops waiting (a deadline, a cancel dropping this future) stops the fetch.
        let _stop = StopOnDrop(watch.clone());
        let (fetching, owned_url) = (watch.clone(), url.to_string());
        let mut task = tokio::task::spawn_blocking(move || {
            read(&Mirror::update(&cache, &owned_url, &rewrites, &fetching)?)
        });
        let started = Instant::now();
        let (mut seen, mut moved) = (watch.progress(), started);
        let mut look = tokio::time::interval(LOOK);
        let given_up = loop {
            tokio::select! {
                joined = &mut task => {
                    return joined.map_err(FetchFailed::Task)?.map_err(FetchFailed::Git);
                }
                _ = look.tick() => {}
            }
            let now = Instant::now();
            if watch.progress() != seen {
                (seen, moved) = (watch.progress(), now);
            }
            let url = url.to_string();
            if now - started >= policy.deadline {
                break FetchFailed::TimedOut {
                    url,
                    after: policy.deadline,
                };
            }
            if !watch.fetched() && now - moved >= policy.stall {
                break FetchFailed::Stalled {
                    url,
                    after: policy.stall,
                };
            }
        };
        // The task is left to end by itself (dropping its handle does not stop a blocking task),
        // told to stop by `_stop`.
        Err(given_up)
    }

    /// [`read_mirror`](Self::read_mirror), tried up to the policy's number of attempts with a
    /// growing pause between them, until `cancel`.
    pub(super) async fn read_mirror_retried<T: Send + 'static>(
        &self,
        url: &str,
        read: impl Fn(&Mirror) -> Result<T, GitError> + Clone + Send + 'static,
        cancel: &CancellationToken,
    ) -> Result<T, Exhausted> {
        let policy = self.settings.fetch;
        let attempts = policy.attempts.max(1);
        let mut attempt = 1;
        loop {
            let tried = tokio::select! {
                tried = self.read_mirror(url, read.clone()) => tried,
                () = cancel.cancelled() => Err(FetchFailed::Cancelled),
            };
            let last = match tried {
                Ok(value) => return Ok(value),
                Err(FetchFailed::Cancelled) => {
                    return Err(Exhausted {
                        attempts: attempt,
                        last: FetchFailed::Cancelled,
                    });
                }
                Err(last) if attempt >= attempts => return Err(Exhausted { attempts, last }),
                Err(last) => last,
            };
            let pause = policy.backoff_after(attempt);
            warn!(url, attempt, error = %last, pause = ?pause, "fetch failed; trying again");
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = cancel.cancelled() => {
                    return Err(Exhausted { attempts: attempt, last: FetchFailed::Cancelled });
                }
            }
            attempt += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_doubles_up_to_its_ceiling() {
        let policy = FetchPolicy {
            backoff: Duration::from_secs(5),
            ..FetchPolicy::default()
        };
        let pauses: Vec<u64> = (1..=9).map(|n| policy.backoff_after(n).as_secs()).collect();
        assert_eq!(pauses, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(policy.backoff_after(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn an_exhausted_fetch_says_how_often_it_was_tried() {
        let stalled = |attempts| Exhausted {
            attempts,
            last: FetchFailed::Stalled {
                url: "https://github.com/acme/app.git".into(),
                after: Duration::from_secs(60),
            },
        };
        assert_eq!(
            stalled(1).to_string(),
            "fetching https://github.com/acme/app.git made no progress for 60s"
        );
        assert_eq!(
            stalled(3).to_string(),
            "fetching https://github.com/acme/app.git made no progress for 60s (tried 3 times)"
        );
    }
}
