//! Running a planned build on this machine's engine and recording it as it goes, for `builder
//! submit` and the server alike: its events are recorded as they happen and its outcome at the
//! end; builds whose process died mid-build are swept and closed.
//!
//! # Who runs a build
//!
//! A build is held by one process, its [`Holder`], through a [`Lease`] in the store that the
//! holder renews every [`HEARTBEAT`]; renewing also reads whether a cancel was asked for, so a
//! cancel from any process or machine stops the build within a heartbeat. A build whose lease
//! has run out ([`LEASE`] without a renewal) is abandoned, whichever machine held it, and any
//! process closes it. A holder also keeps an exclusive lock on `<holders>/<id>.lock` for as long
//! as it lives; the operating system releases it however the process ends, so on the holder's
//! own machine a build whose holder died is closed at once, without waiting for its lease (and
//! process ids, which are reused and differ between PID namespaces, play no part).

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::error::TryRecvError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::adapters::runtime::{Backend, LogStream, RuntimeError};
use crate::adapters::store::{self, Lease, LogLine, Renewal, Store};
use crate::core::build::{Outcome, Status, StepResult};
use crate::pipeline::execute::{self, Event};
use crate::pipeline::live::{LiveLog, LiveLogs};

/// How long a claim on a build lasts without a renewal: long enough for a busy machine to miss
/// several heartbeats, short enough that another machine takes an abandoned build over soon.
pub const LEASE: Duration = Duration::from_secs(30);
/// How often a holder renews its leases, and so how soon it sees a cancel.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// This process as the holder of the builds it runs (see the module doc). Dropping it releases
/// its lock and removes the file.
pub struct Holder {
    id: String,
    path: PathBuf,
    _lock: File,
}

impl Holder {
    /// A new holder with a new id, its lock file in `dir`.
    pub fn take(dir: &Path) -> std::io::Result<Holder> {
        std::fs::create_dir_all(dir)?;
        let id = uuid::Uuid::new_v4().to_string();
        let path = dir.join(format!("{id}.lock"));
        // Locked before it takes its name, so that a sweep never finds it unlocked.
        let staging = dir.join(format!("{id}.lock.new"));
        let lock = File::create(&staging)?;
        lock.lock()?;
        std::fs::rename(&staging, &path)?;
        Ok(Holder {
            id,
            path,
            _lock: lock,
        })
    }

    pub fn lease(&self) -> Lease {
        Lease {
            holder: self.id.clone(),
            duration: LEASE,
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The lock of `holder`, taken, when it is a holder of this machine (its file is in `dir`) whose
/// process has ended; held while its builds are closed, so that two processes never both do it.
fn ended_holder(dir: &Path, holder: &str) -> std::io::Result<Option<File>> {
    match File::open(dir.join(format!("{holder}.lock"))) {
        Ok(file) => match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(e),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Who sees a build's events as it is recorded (`builder submit` prints them): each event
/// first, then the end of each burst of events, when what it gathered is due.
pub trait Onlooker {
    fn event(&mut self, event: &Event);

    /// No event is waiting: a burst has ended.
    fn idle(&mut self) {}
}

impl<F: FnMut(&Event)> Onlooker for F {
    fn event(&mut self, event: &Event) {
        self(event)
    }
}

/// Records a new build from `source`, held by `lease`'s holder, and runs it to its end,
/// recording it; `show` sees every event first.
pub async fn run(
    store: &dyn Store,
    lease: &Lease,
    runtime: Arc<dyn Backend>,
    source: &serde_json::Value,
    run: execute::Run,
    cancel: CancellationToken,
    show: &mut impl Onlooker,
) -> Result<Outcome, store::Error> {
    store
        .create_build(&run.build_id, source, &run.build, lease)
        .await?;
    store.start_build(&run.build_id).await?;
    let build_id = run.build_id.clone();
    let recorded = record(store, runtime, run, cancel.clone(), None, show);
    held(store, &build_id, lease, &cancel, recorded).await
}

/// Runs `work` on a build while keeping its lease: renewed every [`HEARTBEAT`] until `work` ends.
/// A cancel asked for through the store, or the lease lost (another process closed the build),
/// cancels `cancel`. A renewal that fails is tried again at the next beat: the lease outlasts
/// several.
pub async fn held<T>(
    store: &dyn Store,
    build_id: &str,
    lease: &Lease,
    cancel: &CancellationToken,
    work: impl Future<Output = T>,
) -> T {
    let renewals = async {
        let mut beats = tokio::time::interval(HEARTBEAT);
        beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            beats.tick().await;
            match store.renew_lease(build_id, lease).await {
                Ok(Renewal::Held {
                    cancel_requested: true,
                })
                | Ok(Renewal::Lost) => cancel.cancel(),
                Ok(Renewal::Held { .. }) | Err(_) => {}
            }
        }
    };
    tokio::select! {
        done = work => done,
        never = renewals => never,
    }
}

/// How much text a stored chunk of log holds: enough to compress well and to cost one write per
/// thousands of short lines, little enough to page through cheaply.
const CHUNK_BYTES: usize = 128 * 1024;
/// How long a line may wait in memory before it is stored: after a crash, the log is readable up
/// to the lines older than this.
const STORE_WITHIN: Duration = Duration::from_secs(1);

/// Executes a build whose record exists (and is WORKING), recording its events as they happen
/// and its outcome at the end; `show` sees every event first, and `live` (the followers in this
/// process) sees the lines and steps at once. Its holder keeps its lease meanwhile ([`held`]).
///
/// Lines are stored in chunks ([`CHUNK_BYTES`]), at the latest [`STORE_WITHIN`] after they
/// came, and whenever a step ends.
pub async fn record(
    store: &dyn Store,
    runtime: Arc<dyn Backend>,
    run: execute::Run,
    cancel: CancellationToken,
    live: Option<&LiveLogs>,
    show: &mut impl Onlooker,
) -> Result<Outcome, store::Error> {
    let build_id = run.build_id.clone();
    let log = live.map(|live| live.start(&build_id, run.build.steps.len()));
    let (events, mut received) = tokio::sync::mpsc::unbounded_channel();
    let execution = tokio::spawn(execute::execute(runtime, run, events, cancel));
    // A failing write must not abandon the build: its containers are only removed when
    // `execute` runs to its end, so events are drained whatever happens to the record.
    let mut recording: Result<(), store::Error> = Ok(());
    let mut lines = Pending::new(log.as_deref());
    loop {
        let event = match received.try_recv() {
            // Taken without waiting, so the task yields now and then for the others (the
            // step's output among them) while a long burst is recorded.
            Ok(event) => {
                tokio::task::consume_budget().await;
                event
            }
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => {
                // A burst of lines has ended: its followers see it now.
                lines.publish();
                show.idle();
                let due = lines.due();
                tokio::select! {
                    event = received.recv() => match event {
                        Some(event) => event,
                        None => break,
                    },
                    () = tokio::time::sleep_until(due.unwrap_or_else(far_future)), if due.is_some() => {
                        if recording.is_ok() {
                            recording = lines.store(store, &build_id).await;
                        }
                        continue;
                    }
                }
            }
        };
        show.event(&event);
        if recording.is_ok() {
            recording = record_event(store, &build_id, event, &mut lines).await;
        }
    }
    let outcome = execution.await.unwrap_or_else(|e| {
        let failure = format!("the build's task failed: {e}");
        Outcome::ended(Status::InternalError, Vec::new(), Some(failure))
    });
    // The outcome is recorded even if a write failed before: no build is left WORKING.
    let logs = match recording {
        Ok(()) => lines.store(store, &build_id).await,
        failed => failed,
    };
    let finished = store.finish_build(&build_id, &outcome).await;
    if let (Some(live), Some(log)) = (live, &log) {
        log.end((outcome.status, outcome.failure.clone()));
        live.remove(&build_id);
    }
    logs.and(finished)?;
    Ok(outcome)
}

/// An instant no flush waits for: the timer's branch is disabled then.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

/// A build's lines not stored yet, and which of them its live log has.
struct Pending<'a> {
    lines: Vec<(usize, LogStream, String)>,
    /// The size of `lines` as printed.
    bytes: usize,
    /// The number the next line gets: a build is recorded once, by its holder, from line 1.
    next_seq: i64,
    /// When the oldest of `lines` came.
    since: Option<Instant>,
    live: Option<&'a LiveLog>,
    /// How many of `lines` the live log has.
    published: usize,
}

impl<'a> Pending<'a> {
    fn new(live: Option<&'a LiveLog>) -> Self {
        Pending {
            lines: Vec::new(),
            bytes: 0,
            next_seq: 1,
            since: None,
            live,
            published: 0,
        }
    }

    fn add(&mut self, step: usize, stream: LogStream, text: String) {
        self.since.get_or_insert_with(Instant::now);
        self.next_seq += 1;
        // Each line counts its newline too: a flood of empty lines makes chunks as well.
        self.bytes += text.len() + 1;
        self.lines.push((step, stream, text));
    }

    /// Whether enough has gathered to be stored as a chunk, or waited long enough.
    fn full(&self) -> bool {
        self.bytes >= CHUNK_BYTES || self.due().is_some_and(|due| due <= Instant::now())
    }

    /// When the lines must be stored at the latest.
    fn due(&self) -> Option<Instant> {
        Some(self.since? + STORE_WITHIN)
    }

    /// Gives the live log the lines it does not have yet.
    fn publish(&mut self) {
        let Some(live) = self.live else { return };
        let first = self.next_seq - self.lines.len() as i64;
        let new = self.lines[self.published..].iter().enumerate();
        live.push(new.map(|(i, (step, stream, text))| LogLine {
            seq: first + (self.published + i) as i64,
            step: *step,
            stream: *stream,
            text: text.clone(),
        }));
        self.published = self.lines.len();
    }

    /// Stores the lines as a chunk.
    async fn store(&mut self, store: &dyn Store, build_id: &str) -> Result<(), store::Error> {
        if self.lines.is_empty() {
            return Ok(());
        }
        self.publish();
        store.append_logs(build_id, &self.lines).await?;
        if let Some(live) = self.live {
            live.stored(self.next_seq - 1);
        }
        self.lines.clear();
        self.bytes = 0;
        self.since = None;
        self.published = 0;
        Ok(())
    }
}

/// Writes what an event changes in the record, and tells the live log.
async fn record_event(
    store: &dyn Store,
    build_id: &str,
    event: Event,
    lines: &mut Pending<'_>,
) -> Result<(), store::Error> {
    match event {
        Event::Line { step, stream, text } => {
            lines.add(step, stream, text);
            if lines.full() {
                lines.store(store, build_id).await?;
            }
        }
        Event::StepStarted { step } => {
            let working = StepResult {
                status: Status::Working,
                start_time: Some(std::time::SystemTime::now()),
                ..StepResult::queued()
            };
            store.update_step(build_id, step, &working).await?;
            if let Some(live) = lines.live {
                live.set_step(step, (Status::Working, None));
            }
        }
        Event::StepFinished { step, result } => {
            lines.store(store, build_id).await?;
            store.update_step(build_id, step, &result).await?;
            if let Some(live) = lines.live {
                live.set_step(step, (result.status, result.detail));
            }
        }
        Event::PushStarted
        | Event::Pushing { .. }
        | Event::Pushed(_)
        | Event::PushingTemplate { .. }
        | Event::PushedTemplate(_) => {}
    }
    Ok(())
}

/// Why closing abandoned builds stopped short.
#[derive(Debug)]
pub enum RecoverError {
    Store(store::Error),
    /// The holders' lock files cannot be read.
    Holders {
        dir: PathBuf,
        error: std::io::Error,
    },
    /// An abandoned build's containers, volumes and networks cannot be removed.
    Sweep(RuntimeError),
}

impl std::fmt::Display for RecoverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecoverError::Store(e) => e.fmt(f),
            RecoverError::Holders { dir, error } => write!(f, "{}: {error}", dir.display()),
            RecoverError::Sweep(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for RecoverError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RecoverError::Store(e) => Some(e),
            RecoverError::Holders { error, .. } => Some(error),
            RecoverError::Sweep(e) => Some(e),
        }
    }
}

impl From<store::Error> for RecoverError {
    fn from(e: store::Error) -> Self {
        RecoverError::Store(e)
    }
}

/// Closes builds left unfinished by a process that no longer runs: those whose lease ran out,
/// and those whose holder on this machine (its lock file in `holders`) has ended. Removes their
/// containers, volumes and networks and records them as INTERNAL_ERROR. Returns their ids.
pub async fn recover(
    store: &dyn Store,
    holders: &Path,
    lease: &Lease,
    runtime: &dyn Backend,
) -> Result<Vec<String>, RecoverError> {
    let unfinished = store.unfinished_builds().await?;
    let mut recovered = Vec::new();
    for build in unfinished {
        let ended = match &build.holder {
            Some(holder) => {
                ended_holder(holders, holder).map_err(|error| RecoverError::Holders {
                    dir: holders.to_path_buf(),
                    error,
                })?
            }
            None => None,
        };
        let abandoned = build.expired || ended.is_some();
        if !abandoned
            || !store
                .take_over(&build.id, build.holder.as_deref(), lease)
                .await?
        {
            continue;
        }
        runtime
            .sweep(&build.id)
            .await
            .map_err(RecoverError::Sweep)?;
        let steps = store
            .get_build(&build.id)
            .await?
            .map(|b| b.steps.into_iter().map(|s| close(s.result)).collect())
            .unwrap_or_default();
        let failure = "the process running this build ended before the build did";
        let outcome = Outcome::ended(Status::InternalError, steps, Some(failure.into()));
        store.finish_build(&build.id, &outcome).await?;
        if let (Some(holder), Some(_lock)) = (&build.holder, ended) {
            let _ = std::fs::remove_file(holders.join(format!("{holder}.lock")));
        }
        recovered.push(build.id);
    }
    Ok(recovered)
}

/// A step that was running when its process died did not finish.
fn close(result: StepResult) -> StepResult {
    match result.status {
        Status::Working => StepResult {
            status: Status::InternalError,
            ..result
        },
        _ => result,
    }
}
