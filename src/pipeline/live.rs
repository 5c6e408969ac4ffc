//! The logs of the builds this process runs, in memory while they run, so that their followers
//! (the API's followed logs: the console, `builder submit --server` streaming) are fed at once
//! and without reading the store: per running build, a bounded ring of its newest lines and its
//! steps' statuses, and a `watch` that wakes its followers when they change.
//!
//! A line leaves the ring only once it is stored, so a follower that fell behind the ring reads
//! what it missed from the store, then carries on from the ring. The recorder is the only writer;
//! a build run on another machine would feed its ring from lines shipped over the network.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use crate::adapters::store::{LogLine, page_take};
use crate::core::build::Status;

/// The memory a running build's ring keeps beyond its lines not stored yet: enough for a follower
/// a moment behind a fast step (one further behind reads the store), little beside the build's
/// own memory.
pub const RING_BYTES: usize = 1024 * 1024;

/// What a line costs in the ring: its text, its place, and the allocator's word and rounding of
/// the text (a million short lines are mostly the latter two).
fn cost(line: &LogLine) -> usize {
    line.text.capacity().next_multiple_of(16) + 16 + std::mem::size_of::<LogLine>()
}

/// The running builds' live logs, by build id.
#[derive(Default)]
pub struct LiveLogs {
    builds: Mutex<HashMap<String, Arc<LiveLog>>>,
}

impl LiveLogs {
    /// A new live log for a build about to run, with `steps` steps, all QUEUED.
    pub fn start(&self, build_id: &str, steps: usize) -> Arc<LiveLog> {
        let log = Arc::new(LiveLog::new(steps));
        lock(&self.builds).insert(build_id.to_string(), log.clone());
        log
    }

    /// The live log of a build running in this process.
    pub fn get(&self, build_id: &str) -> Option<Arc<LiveLog>> {
        lock(&self.builds).get(build_id).cloned()
    }

    /// Forgets a build that has ended: its followers keep the log they hold, which says so.
    pub fn remove(&self, build_id: &str) {
        lock(&self.builds).remove(build_id);
    }
}

/// A poisoned lock only means a panic elsewhere while it was held; its state stays usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One running build's recent lines and steps, and the wake-up of its followers.
pub struct LiveLog {
    state: Mutex<Ring>,
    /// Bumped at every change; followers wait on it.
    changed: watch::Sender<u64>,
}

/// A step's status and why it ended so, if it did not succeed.
pub type StepState = (Status, Option<String>);

struct Ring {
    lines: VecDeque<LogLine>,
    /// What `lines` cost ([`cost`]).
    bytes: usize,
    /// The number of the last line stored: lines up to it may leave the ring.
    stored: i64,
    steps: Vec<StepState>,
    ended: Option<StepState>,
}

/// What a follower reads from a live log at once.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The lines after the follower's last one, at most as many as it asked for; `None` when
    /// some of those have already left the ring (they are in the store).
    pub lines: Option<Vec<LogLine>>,
    pub steps: Vec<StepState>,
    /// The build's status and failure once it has ended, with every line in the ring or stored.
    pub ended: Option<StepState>,
}

impl LiveLog {
    fn new(steps: usize) -> LiveLog {
        LiveLog {
            state: Mutex::new(Ring {
                lines: VecDeque::new(),
                bytes: 0,
                stored: 0,
                steps: vec![(Status::Queued, None); steps],
                ended: None,
            }),
            changed: watch::Sender::new(0),
        }
    }

    fn change(&self, change: impl FnOnce(&mut Ring)) {
        change(&mut lock(&self.state));
        self.changed.send_modify(|version| *version += 1);
    }

    /// Adds lines (numbered after those already added).
    pub fn push(&self, lines: impl IntoIterator<Item = LogLine>) {
        self.change(|ring| {
            for line in lines {
                ring.bytes += cost(&line);
                ring.lines.push_back(line);
            }
            ring.evict();
        });
    }

    /// The lines up to `seq` are in the store: they may leave the ring.
    pub fn stored(&self, seq: i64) {
        let mut ring = lock(&self.state);
        ring.stored = ring.stored.max(seq);
        ring.evict();
    }

    pub fn set_step(&self, step: usize, state: StepState) {
        self.change(|ring| {
            if let Some(slot) = ring.steps.get_mut(step) {
                *slot = state;
            }
        });
    }

    /// The build has ended, every line of it pushed and stored.
    pub fn end(&self, state: StepState) {
        self.change(|ring| ring.ended = Some(state));
    }

    /// A receiver that wakes at every change after it was made.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The lines after `after` (a page of at most `limit`, as the store pages: [`page_take`]),
    /// the steps and whether the build ended, as one consistent view.
    pub fn read(&self, after: i64, limit: usize) -> Snapshot {
        let ring = lock(&self.state);
        let first = ring.lines.front().map_or(ring.stored + 1, |line| line.seq);
        let lines = (after + 1 >= first).then(|| {
            let skip = usize::try_from(after + 1 - first)
                .map_or(ring.lines.len(), |skip| skip.min(ring.lines.len()));
            let page = page_take(ring.lines.range(skip..).map(|l| l.text.as_str()), limit, 0);
            ring.lines.range(skip..).take(page).cloned().collect()
        });
        Snapshot {
            lines,
            steps: ring.steps.clone(),
            ended: ring.ended.clone(),
        }
    }
}

impl Ring {
    /// Drops the oldest stored lines while the ring holds more than it should.
    fn evict(&mut self) {
        while self.bytes > RING_BYTES
            && let Some(front) = self.lines.front()
            && front.seq <= self.stored
        {
            self.bytes -= cost(front);
            self.lines.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::logs::LogStream;

    fn line(seq: i64, text: &str) -> LogLine {
        LogLine {
            seq,
            step: 0,
            stream: LogStream::Stdout,
            text: text.to_string(),
        }
    }

    fn seqs(snapshot: &Snapshot) -> Option<Vec<i64>> {
        Some(snapshot.lines.as_ref()?.iter().map(|l| l.seq).collect())
    }

    #[tokio::test]
    async fn followers_read_pages_and_are_woken() {
        let live = LiveLogs::default();
        let log = live.start("b", 2);
        let mut changes = log.subscribe();
        assert_eq!(seqs(&log.read(0, 10)), Some(vec![]));
        log.push((1..=5).map(|seq| line(seq, "x")));
        changes.changed().await.unwrap();
        assert_eq!(seqs(&log.read(0, 2)), Some(vec![1, 2]));
        assert_eq!(seqs(&log.read(2, 10)), Some(vec![3, 4, 5]));
        assert_eq!(seqs(&log.read(5, 10)), Some(vec![]));
        log.set_step(1, (Status::Failure, Some("exit 1".into())));
        changes.changed().await.unwrap();
        let snapshot = log.read(5, 10);
        assert_eq!(snapshot.steps[1], (Status::Failure, Some("exit 1".into())));
        assert_eq!(snapshot.ended, None);
        log.end((Status::Failure, None));
        live.remove("b");
        assert!(live.get("b").is_none());
        // A follower holding the log still sees the end.
        assert_eq!(log.read(5, 10).ended, Some((Status::Failure, None)));
    }

    /// A follower's page from the ring is bounded by bytes as the store's pages are.
    #[test]
    fn a_page_of_long_lines_is_bounded_by_bytes() {
        let log = LiveLogs::default().start("b", 1);
        let long = "y".repeat(crate::adapters::store::PAGE_BYTES / 3 + 1);
        log.push((1..=8).map(|seq| line(seq, &long)));
        assert_eq!(seqs(&log.read(0, 5000)), Some(vec![1, 2, 3]));
        assert_eq!(seqs(&log.read(3, 2)), Some(vec![4, 5]));
        assert_eq!(seqs(&log.read(6, 5000)), Some(vec![7, 8]));
    }

    #[test]
    fn only_stored_lines_leave_a_full_ring() {
        let log = LiveLogs::default().start("b", 1);
        let big = "y".repeat(RING_BYTES / 2 - std::mem::size_of::<LogLine>() - 32);
        log.push((1..=4).map(|seq| line(seq, &big)));
        // Nothing stored yet: nothing leaves, however full (a page ends past a MiB: three lines).
        assert_eq!(seqs(&log.read(0, 10)), Some(vec![1, 2, 3]));
        assert_eq!(seqs(&log.read(3, 10)), Some(vec![4]));
        log.stored(3);
        // Down to the bound, the unstored line kept.
        assert_eq!(seqs(&log.read(0, 10)), None);
        assert_eq!(seqs(&log.read(1, 10)), None);
        assert_eq!(seqs(&log.read(2, 10)), Some(vec![3, 4]));
    }
}
