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

use std::collections::HashMap;
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

/// How long a claim on a build lasts without a renewal, unless the process says otherwise (`serve
/// --lease`, `worker --lease`): long enough for a busy machine to miss several heartbeats, short
/// enough that another machine takes an abandoned build over soon.
pub const LEASE: Duration = Duration::from_secs(30);
/// How often a holder renews its leases, and so how soon it sees a cancel; and how often a worker
/// tells the store it is alive (`store::Workers`).
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// This process as the holder of the builds it runs (see the module doc). Dropping it releases
/// its lock and removes the file.
pub struct Holder {
    id: String,
    duration: Duration,
    path: PathBuf,
    _lock: File,
}

impl Holder {
    /// A new holder for the process called `name` (see [`check_name`]), whose claims last
    /// `duration` unless renewed, its lock file in `dir`. Its id is the name and a new UUID: the
    /// name for people (a build it abandons names it), the UUID so that a process that comes
    /// back under the same name never passes for the one that died.
    pub fn take(dir: &Path, name: &str, duration: Duration) -> std::io::Result<Holder> {
        std::fs::create_dir_all(dir)?;
        let id = format!("{name}.{}", uuid::Uuid::new_v4());
        let path = dir.join(format!("{id}.lock"));
        // Locked before it takes its name, so that a sweep never finds it unlocked.
        let staging = dir.join(format!("{id}.lock.new"));
        let lock = File::create(&staging)?;
        lock.lock()?;
        std::fs::rename(&staging, &path)?;
        Ok(Holder {
            id,
            duration,
            path,
            _lock: lock,
        })
    }

    pub fn lease(&self) -> Lease {
        Lease {
            holder: self.id.clone(),
            duration: self.duration,
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The name of the process a holder id belongs to (see [`Holder::take`]); a holder id of an older
/// builder, a bare UUID, is its own name.
pub fn holder_name(holder: &str) -> &str {
    match holder.rsplit_once('.') {
        Some((name, id)) if uuid::Uuid::parse_str(id).is_ok() => name,
        _ => holder,
    }
}

/// A process's name when it is given none: this machine's host name and the process id, which
/// tell people which machine and process ran a build.
pub fn default_name() -> String {
    format!("{}-{}", host_name(), std::process::id())
}

/// This machine's host name, in the characters a process name may have (see [`check_name`]).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|host| host.trim().replace(|c: char| !name_char(c), "-"))
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Refuses a process name that could not name its lock file, or that is not readable in a
/// message: 1 to 64 letters, digits, `.`, `_` or `-`.
pub fn check_name(name: &str) -> Result<(), String> {
    if (1..=64).contains(&name.len()) && name.chars().all(name_char) && !name.starts_with('.') {
        Ok(())
    } else {
        Err(format!(
            "the name {name:?}: use 1 to 64 letters, digits, '.', '_' or '-', not starting with '.'"
        ))
    }
}

fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Where a build's holder ran, as this machine's holders' directory tells.
enum Whereabouts {
    /// On this machine, and its process has ended (its lock is taken, see [`whereabouts`]).
    EndedHere,
    /// On this machine, still running.
    RunningHere,
    /// On another machine (no lock file here).
    Elsewhere,
}

/// Where `holder` ran. The lock of one that ended here is taken into `ended`, held while its
/// builds are closed, so that two processes never both do it.
fn whereabouts(
    dir: &Path,
    holder: &str,
    ended: &mut HashMap<String, File>,
) -> std::io::Result<Whereabouts> {
    if ended.contains_key(holder) {
        return Ok(Whereabouts::EndedHere);
    }
    match File::open(dir.join(format!("{holder}.lock"))) {
        Ok(file) => match file.try_lock() {
            Ok(()) => {
                ended.insert(holder.to_owned(), file);
                Ok(Whereabouts::EndedHere)
            }
            Err(TryLockError::WouldBlock) => Ok(Whereabouts::RunningHere),
            Err(TryLockError::Error(e)) => Err(e),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Whereabouts::Elsewhere),
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
    store.start_build(&run.build_id, lease).await?;
    let build_id = run.build_id.clone();
    let recorded = record(store, lease, runtime, run, cancel.clone(), None, show);
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

/// How much text a stored chunk of log holds when the store keeps up: enough to compress well
/// and to cost one write per thousands of short lines, little enough to page through cheaply.
const CHUNK_BYTES: usize = 128 * 1024;
/// How much memory a chunk's lines may take while the one before it is being written: a store
/// slower than the step's output (each commit waits for the disk's fsync, 7 to 17 ms here) gets
/// fewer, larger chunks instead of holding the step up, and memory stays bounded. In memory, not
/// text ([`memory`]): a MiB of `seq`'s lines is 7 MiB in memory.
const CHUNK_MAX_BYTES: usize = 1024 * 1024;

/// What a line waiting to be stored takes in memory: its text, its place in the chunk, and the
/// allocator's own word and rounding.
fn memory(text: &str) -> usize {
    std::mem::size_of::<(usize, LogStream, String)>() + text.len().next_multiple_of(16) + 16
}
/// How long a line may wait in memory before it is stored: after a crash, the log is readable up
/// to the lines older than this.
const STORE_WITHIN: Duration = Duration::from_secs(1);

/// Executes a build whose record exists (and is WORKING), recording its events as they happen
/// and its outcome at the end; `show` sees every event first, and `live` (the followers in this
/// process) sees the lines and steps at once. Its holder keeps `lease` meanwhile ([`held`]), and
/// every write is fenced by it: once another process has taken the build over, nothing more of
/// it is written here (the lost lease cancels the run at the next heartbeat).
///
/// Lines are stored in chunks ([`CHUNK_BYTES`]), at the latest [`STORE_WITHIN`] after they
/// came, and whenever a step ends, by a writer beside the recorder ([`write_chunks`]): the events
/// go on being taken while a chunk is written.
pub async fn record(
    store: &dyn Store,
    lease: &Lease,
    runtime: Arc<dyn Backend>,
    run: execute::Run,
    cancel: CancellationToken,
    live: Option<&LiveLogs>,
    show: &mut impl Onlooker,
) -> Result<Outcome, store::Error> {
    let build_id = run.build_id.clone();
    let log = live.map(|live| live.start(&build_id, run.build.steps.len()));
    let (events, mut received) = execute::events();
    let execution = tokio::spawn(execute::execute(runtime, run, events, cancel));
    // One chunk waits for the writer at most, beside the one it writes.
    let (chunks, to_write) = tokio::sync::mpsc::channel(1);
    let (stored, written) = tokio::sync::watch::channel(0);
    let writer = write_chunks(store, &build_id, lease, log.as_deref(), to_write, stored);
    let recorder = async {
        // A failing write must not abandon the build: its containers are only removed when
        // `execute` runs to its end, so events are drained whatever happens to the record.
        let mut recording: Result<(), store::Error> = Ok(());
        let mut lines = Pending::new(log.as_deref(), chunks, written);
        loop {
            let event = match received.try_recv() {
                // Taken without waiting, so the task yields now and then for the others (the
                // step's output among them, and the writer) while a long burst is recorded.
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
                            lines.send().await;
                            continue;
                        }
                    }
                }
            };
            show.event(&event);
            if recording.is_ok() {
                recording = record_event(store, &build_id, lease, event, &mut lines).await;
            }
        }
        // The rest goes to the writer, whose end the build's end waits for.
        lines.send().await;
        recording
    };
    let (recording, writing) = tokio::join!(recorder, writer);
    let outcome = execution.await.unwrap_or_else(|e| {
        let failure = format!("the build's task failed: {e}");
        Outcome::ended(Status::InternalError, Vec::new(), Some(failure))
    });
    // The outcome is recorded even if a write failed before: no build is left WORKING.
    let logs = writing.and(recording);
    let finished = retried(lease, || store.finish_build(&build_id, &outcome, lease)).await;
    if let (Some(live), Some(log)) = (live, &log) {
        log.end((outcome.status, outcome.failure.clone()));
        live.remove(&build_id);
    }
    logs.and(finished)?;
    Ok(outcome)
}

/// Makes a write of a build's record, and makes it again while it fails for a reason that passes
/// (`store::Error::is_transient`: the database restarting, a connection lost), after a doubling
/// pause, for as long as the lease lasts: the build goes on meanwhile, and past the lease another
/// process may close it, whose take-over the write's fence would refuse anyway.
async fn retried<T, F>(lease: &Lease, mut write: impl FnMut() -> F) -> Result<T, store::Error>
where
    F: Future<Output = Result<T, store::Error>>,
{
    let give_up = Instant::now() + lease.duration;
    let mut pause = Duration::from_millis(100);
    loop {
        match write().await {
            Err(e) if e.is_transient() && Instant::now() + pause < give_up => {
                tracing::warn!(error = %e, "writing the build's record failed; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            written => return written,
        }
    }
}

/// An instant no flush waits for: the timer's branch is disabled then.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

/// Lines of a build, numbered from `.0` on, to store as one chunk.
type Chunk = (i64, Vec<(usize, LogStream, String)>);

/// The writer of a build's log: stores each chunk of `chunks` in order, tells the live log and
/// `stored` (the number of the last line stored) after each, until the recorder is done. Stops
/// at the first failed write: a later chunk stored after a lost one would leave a gap.
async fn write_chunks(
    store: &dyn Store,
    build_id: &str,
    lease: &Lease,
    live: Option<&LiveLog>,
    mut chunks: tokio::sync::mpsc::Receiver<Chunk>,
    stored: tokio::sync::watch::Sender<i64>,
) -> Result<(), store::Error> {
    while let Some((first, lines)) = chunks.recv().await {
        retried(lease, || store.append_logs(build_id, &lines, lease)).await?;
        let last = first + lines.len() as i64 - 1;
        if let Some(live) = live {
            live.stored(last);
        }
        stored.send_replace(last);
    }
    Ok(())
}

/// A build's lines not handed to its writer yet, and which of them its live log has.
struct Pending<'a> {
    lines: Vec<(usize, LogStream, String)>,
    /// The size of `lines` as printed.
    bytes: usize,
    /// What `lines` take in memory ([`memory`]).
    memory: usize,
    /// The number the next line gets: a build is recorded once, by its holder, from line 1.
    next_seq: i64,
    /// When the oldest of `lines` came.
    since: Option<Instant>,
    live: Option<&'a LiveLog>,
    /// How many of `lines` the live log has.
    published: usize,
    /// To the writer ([`write_chunks`]).
    chunks: tokio::sync::mpsc::Sender<Chunk>,
    /// The number of the last line the writer stored.
    written: tokio::sync::watch::Receiver<i64>,
}

impl<'a> Pending<'a> {
    fn new(
        live: Option<&'a LiveLog>,
        chunks: tokio::sync::mpsc::Sender<Chunk>,
        written: tokio::sync::watch::Receiver<i64>,
    ) -> Self {
        Pending {
            lines: Vec::new(),
            bytes: 0,
            memory: 0,
            next_seq: 1,
            since: None,
            live,
            published: 0,
            chunks,
            written,
        }
    }

    fn add(&mut self, step: usize, stream: LogStream, text: String) {
        self.since.get_or_insert_with(Instant::now);
        self.next_seq += 1;
        // Each line counts its newline too: a flood of empty lines makes chunks as well.
        self.bytes += text.len() + 1;
        self.memory += memory(&text);
        self.lines.push((step, stream, text));
    }

    /// Whether the lines are to go to the writer now: enough has gathered and the writer is done
    /// with the chunk before (else they gather on, up to [`CHUNK_MAX_BYTES`]), or they waited
    /// long enough.
    fn ready(&self) -> bool {
        let idle = *self.written.borrow() == self.next_seq - 1 - self.lines.len() as i64;
        (self.bytes >= CHUNK_BYTES && idle)
            || self.memory >= CHUNK_MAX_BYTES
            || self.due().is_some_and(|due| due <= Instant::now())
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

    /// Hands the lines to the writer as a chunk, once it has room for it. A writer that stopped
    /// (a failed write, which it returns) stores nothing more: the lines are dropped.
    async fn send(&mut self) {
        if self.lines.is_empty() {
            return;
        }
        self.publish();
        let first = self.next_seq - self.lines.len() as i64;
        let _ = self
            .chunks
            .send((first, std::mem::take(&mut self.lines)))
            .await;
        self.bytes = 0;
        self.memory = 0;
        self.since = None;
        self.published = 0;
    }

    /// Hands the lines to the writer and waits until every line so far is stored, or the writer
    /// stopped.
    async fn flush(&mut self) {
        self.send().await;
        let last = self.next_seq - 1;
        let _ = self.written.wait_for(|&stored| stored >= last).await;
    }
}

/// Writes what an event changes in the record, and tells the live log.
async fn record_event(
    store: &dyn Store,
    build_id: &str,
    lease: &Lease,
    event: Event,
    lines: &mut Pending<'_>,
) -> Result<(), store::Error> {
    match event {
        Event::Line { step, stream, text } => {
            lines.add(step, stream, text);
            if lines.ready() {
                lines.send().await;
            }
        }
        Event::StepStarted { step } => {
            let working = StepResult {
                status: Status::Working,
                start_time: Some(std::time::SystemTime::now()),
                ..StepResult::queued()
            };
            retried(lease, || store.update_step(build_id, step, &working, lease)).await?;
            if let Some(live) = lines.live {
                live.set_step(step, (Status::Working, None));
            }
        }
        Event::StepFinished { step, result } => {
            // A step's end is recorded after its lines.
            lines.flush().await;
            retried(lease, || store.update_step(build_id, step, &result, lease)).await?;
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
/// and those whose holder on this machine (its lock file in `holders`) has ended. Records them
/// as INTERNAL_ERROR with a failure naming that process, and removes their containers, volumes
/// and networks if they are on this machine's engine (a build of another machine is swept there,
/// by its worker when it comes back: [`sweep_finished`]). Returns their ids.
pub async fn recover(
    store: &dyn Store,
    holders: &Path,
    lease: &Lease,
    runtime: &dyn Backend,
) -> Result<Vec<String>, RecoverError> {
    let unfinished = store.unfinished_builds().await?;
    let mut recovered = Vec::new();
    // The locks of ended holders, held until every build is looked at: a holder's lock file
    // removed after its first build would leave its other builds to wait for their leases.
    let mut ended = HashMap::new();
    for build in unfinished {
        let whereabouts = match &build.holder {
            Some(holder) => {
                whereabouts(holders, holder, &mut ended).map_err(|error| RecoverError::Holders {
                    dir: holders.to_path_buf(),
                    error,
                })?
            }
            // Recorded before builds had holders, when every build ran on one machine.
            None => Whereabouts::RunningHere,
        };
        let ended_here = matches!(whereabouts, Whereabouts::EndedHere);
        // A lease of this very process ran out while it was too busy to renew it: it still runs
        // the build, and its next renewal puts the lease right.
        let ours = build.holder.as_deref() == Some(lease.holder.as_str());
        if ours
            || !(build.expired || ended_here)
            || !store
                .take_over(&build.id, build.holder.as_deref(), lease)
                .await?
        {
            continue;
        }
        if !matches!(whereabouts, Whereabouts::Elsewhere) {
            runtime
                .sweep(&build.id)
                .await
                .map_err(RecoverError::Sweep)?;
        }
        let steps = store
            .get_build(&build.id)
            .await?
            .map(|b| b.steps.into_iter().map(|s| close(s.result)).collect())
            .unwrap_or_default();
        let name = build.holder.as_deref().map_or("?", holder_name);
        let failure = if ended_here {
            format!("{name}, the process running this build, ended before the build did")
        } else {
            format!(
                "{name}, the process running this build, stopped renewing its lease: it ended, \
                 or lost the store"
            )
        };
        let outcome = Outcome::ended(Status::InternalError, steps, Some(failure));
        store.finish_build(&build.id, &outcome, lease).await?;
        recovered.push(build.id);
    }
    for holder in ended.keys() {
        let _ = std::fs::remove_file(holders.join(format!("{holder}.lock")));
    }
    Ok(recovered)
}

/// Removes what builds the store knows to be over left on this machine's engine: a worker that
/// comes back runs this before it claims anything, for the builds it was running when it died
/// (closed meanwhile by another process, on another machine). Builds still running, and builds
/// the store does not know (another store's), are left alone. Returns the ids swept.
pub async fn sweep_finished(
    store: &dyn Store,
    runtime: &dyn Backend,
) -> Result<Vec<String>, RecoverError> {
    let mut swept = Vec::new();
    for id in runtime.builds().await.map_err(RecoverError::Sweep)? {
        let over = store
            .get_build(&id)
            .await?
            .is_some_and(|build| build.id == id && build.status.is_final());
        if over {
            runtime.sweep(&id).await.map_err(RecoverError::Sweep)?;
            swept.push(id);
        }
    }
    Ok(swept)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A holder's id carries its process's name, which a build it abandons is closed with; the
    /// bare UUIDs of older builders are their own names.
    #[test]
    fn a_holder_is_named_after_its_process() {
        let dir = tempfile::tempdir().unwrap();
        let holder = Holder::take(dir.path(), "gpu-1.example", LEASE).unwrap();
        let lease = holder.lease();
        assert_eq!(holder_name(&lease.holder), "gpu-1.example");
        assert_ne!(
            lease.holder,
            Holder::take(dir.path(), "gpu-1.example", LEASE).unwrap().id
        );
        let old = uuid::Uuid::new_v4().to_string();
        assert_eq!(holder_name(&old), old);
        assert_eq!(holder_name("a.b"), "a.b");
    }

    #[test]
    fn a_name_must_do_as_a_file_name() {
        assert_eq!(check_name("worker_2.rack-3"), Ok(()));
        assert!(check_name(&default_name()).is_ok(), "{}", default_name());
        for bad in ["", "a/b", "..", ".hidden", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
