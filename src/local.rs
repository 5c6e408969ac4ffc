//! Running builds on this machine's engine from the command line: a prepared build is recorded,
//! executed and its events recorded as they happen; builds whose process died mid-build are
//! swept and closed at the next start.
//!
//! A running build's process holds an exclusive lock on `<running>/<id>.lock` for as long as it
//! runs. The operating system releases it when the process ends, however it ends, so a lock that
//! can be taken marks a build whose process died (unlike process ids, which are reused and differ
//! between PID namespaces).

use std::fs::{File, TryLockError};
use std::path::Path;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::build::{Outcome, Status, StepResult};
use crate::execute::{self, Event};
use crate::runtime::{Backend, LogStream};
use crate::store::{self, Store};
use crate::submit::Prepared;

/// Runs a prepared build to its end, recording it; `show` sees every event first.
pub async fn run(
    store: &dyn Store,
    running: &Path,
    runtime: Arc<dyn Backend>,
    prepared: Prepared,
    cancel: CancellationToken,
    show: impl FnMut(&Event),
) -> Result<Outcome, store::Error> {
    let run = prepared.run;
    // Taken before the record exists, so no other process ever sees the build unlocked.
    let lock = RunningLock::take(running, &run.build_id).map_err(store::Error::Io)?;
    store
        .create_build(&run.build_id, &prepared.source, &run.build)
        .await?;
    store.start_build(&run.build_id).await?;
    let outcome = record(store, runtime, run, cancel, show).await;
    drop(lock);
    outcome
}

/// Executes a build whose record exists (and is WORKING), recording its events as they happen
/// and its outcome at the end; `show` sees every event first. The caller holds its
/// [`RunningLock`].
pub async fn record(
    store: &dyn Store,
    runtime: Arc<dyn Backend>,
    run: execute::Run,
    cancel: CancellationToken,
    mut show: impl FnMut(&Event),
) -> Result<Outcome, store::Error> {
    let build_id = run.build_id.clone();
    let (events, mut received) = tokio::sync::mpsc::unbounded_channel();
    let execution = tokio::spawn(execute::execute(runtime, run, events, cancel));
    // A failing write must not abandon the build: its containers are only removed when
    // `execute` runs to its end, so events are drained whatever happens to the record.
    let mut recording: Result<(), store::Error> = Ok(());
    let mut lines = Vec::new();
    while let Some(event) = received.recv().await {
        show(&event);
        if recording.is_ok() {
            recording =
                record_event(store, &build_id, event, &mut lines, received.is_empty()).await;
        }
    }
    let outcome = execution.await.unwrap_or_else(|e| {
        let failure = format!("the build's task failed: {e}");
        Outcome::ended(Status::InternalError, Vec::new(), Some(failure))
    });
    // The outcome is recorded even if a write failed before: no build is left WORKING.
    let logs = match recording {
        Ok(()) => store.append_logs(&build_id, &lines).await,
        failed => failed,
    };
    let finished = store.finish_build(&build_id, &outcome).await;
    logs.and(finished)?;
    Ok(outcome)
}

/// The lock a running build's process holds on `<running>/<id>.lock` (see the module doc);
/// dropping it removes the file and releases the lock.
pub struct RunningLock {
    path: std::path::PathBuf,
    _file: File,
}

impl RunningLock {
    pub fn take(running: &Path, build_id: &str) -> std::io::Result<Self> {
        std::fs::create_dir_all(running)?;
        let path = running.join(format!("{build_id}.lock"));
        let file = File::create(&path)?;
        file.lock()?;
        Ok(Self { path, _file: file })
    }
}

impl Drop for RunningLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Writes what an event changes in the record. Log lines are written as soon as a burst of them
/// ends (`idle`), so followers see them live.
async fn record_event(
    store: &dyn Store,
    build_id: &str,
    event: Event,
    lines: &mut Vec<(usize, LogStream, String)>,
    idle: bool,
) -> Result<(), store::Error> {
    match event {
        Event::Line { step, stream, text } => {
            lines.push((step, stream, text));
            if idle {
                store.append_logs(build_id, &std::mem::take(lines)).await?;
            }
        }
        Event::StepStarted { step } => {
            let working = StepResult {
                status: Status::Working,
                start_time: Some(std::time::SystemTime::now()),
                ..StepResult::queued()
            };
            store.update_step(build_id, step, &working).await?;
        }
        Event::StepFinished { step, result } => {
            store.append_logs(build_id, &std::mem::take(lines)).await?;
            store.update_step(build_id, step, &result).await?;
        }
        Event::PushStarted
        | Event::Pushing { .. }
        | Event::Pushed(_)
        | Event::PushingTemplate { .. }
        | Event::PushedTemplate(_) => {}
    }
    Ok(())
}

/// Closes builds left unfinished by a process that no longer runs: removes their containers,
/// volumes and networks and records them as INTERNAL_ERROR. Returns their ids.
pub async fn recover(
    store: &dyn Store,
    running: &Path,
    runtime: &dyn Backend,
) -> Result<Vec<String>, String> {
    let unfinished = store.unfinished_builds().await.map_err(|e| e.to_string())?;
    let mut recovered = Vec::new();
    for id in unfinished {
        let lock_path = running.join(format!("{id}.lock"));
        // Held while the build is swept and closed, so that two processes never both do it.
        let lock = match File::open(&lock_path) {
            Ok(file) => match file.try_lock() {
                Ok(()) => Some(file),
                Err(TryLockError::WouldBlock) => continue,
                Err(TryLockError::Error(e)) => return Err(format!("{}: {e}", lock_path.display())),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("{}: {e}", lock_path.display())),
        };
        runtime.sweep(&id).await.map_err(|e| e.to_string())?;
        let steps = store
            .get_build(&id)
            .await
            .map_err(|e| e.to_string())?
            .map(|b| b.steps.into_iter().map(|s| close(s.result)).collect())
            .unwrap_or_default();
        let failure = "the process running this build ended before the build did";
        let outcome = Outcome::ended(Status::InternalError, steps, Some(failure.into()));
        store
            .finish_build(&id, &outcome)
            .await
            .map_err(|e| e.to_string())?;
        let _ = std::fs::remove_file(&lock_path);
        drop(lock);
        recovered.push(id);
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
