//! The service's schedules: schedule files in one directory (`--schedules DIR`) and those
//! created through the API, kept in the store (see `resources`); the scheduler that starts their
//! runs through the trigger-run path, and what the API shows of them.
//!
//! The scheduler reads the time from a [`Clock`] (the machine's in `builder serve`, one of their
//! own in tests) and asks [`Schedule::decide`] what to do with each due run; the decision is
//! carried out by one compare-and-set in the store (the run's build queued in the same
//! transaction), so a restart neither repeats nor loses a run and schedulers sharing a store start
//! each run once.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::resources::Defined;
use super::{Failed, Internal, ManualRun, Service, Triggers, files};
use crate::adapters::store::QueuedBuild;
use crate::core::build::Status;
use crate::core::schedule::{self, LastRun, Schedule, State, Target, Times};
use crate::core::wire;

/// Where the scheduler reads the time.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// The machine's clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// The longest the scheduler sleeps: it notices a machine clock that jumped within this.
const POLL: Duration = Duration::from_secs(5);
/// How long after a failed start (an unreachable repository) the due run is tried again.
const RETRY: TimeDelta = TimeDelta::seconds(60);
/// How many skipped-run records a schedule's description shows.
const SKIPPED_SHOWN: u32 = 20;

/// The schedules of the files and of the store.
pub type Schedules = Defined<Schedule, Arc<Vec<Schedule>>>;

impl Schedules {
    /// Loads every schedule file of `dir` (creating it if missing); each must name one of
    /// `triggers`. `Err` holds the problems of all the files that have any; `Ok` carries the
    /// warnings.
    pub fn load(dir: &Path, triggers: &Triggers) -> Result<(Self, String), String> {
        let names: Vec<&str> = triggers.iter().map(|t| t.name.as_str()).collect();
        let load = |bytes: &[u8]| schedule::load(bytes, &names);
        let (loaded, warnings) = files::load_dir(dir, load, |s: &Schedule| &s.name)?;
        Ok((Self::new(loaded), warnings))
    }

    fn get(&self, name: &str) -> Result<Schedule, Failed> {
        self.all()
            .iter()
            .find(|s| s.name == name)
            .cloned()
            .ok_or_else(|| Failed::NotFound(format!("no schedule {name:?}")))
    }
}

/// A schedule as the API shows it: its file's fields, and what the store knows.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleView {
    #[serde(flatten)]
    pub schedule: Schedule,
    pub paused: bool,
    /// When the next run is due (it is skipped if the schedule is suspended or paused by then).
    pub next_run: Times,
    pub last_run: Option<LastRunView>,
    /// Why the last attempt to start the due run failed.
    pub last_error: Option<String>,
    /// The newest records first; in a single schedule's description only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped_runs: Option<Vec<wire::SkippedRun>>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LastRunView {
    #[serde(flatten)]
    pub run: LastRun,
    /// The build's status (none if its record is gone).
    pub status: Option<Status>,
}

impl Service {
    /// Every schedule, with its next and last run.
    pub async fn schedules(&self) -> Result<Vec<ScheduleView>, Failed> {
        let mut views = Vec::new();
        for schedule in self.schedules.all().iter() {
            views.push(self.view(schedule, false).await?);
        }
        Ok(views)
    }

    /// How many schedules there are, of the files and of the store.
    pub fn schedule_count(&self) -> usize {
        self.schedules.all().len()
    }

    /// One schedule, with its skipped runs too.
    pub async fn schedule(&self, name: &str) -> Result<ScheduleView, Failed> {
        self.view(&self.schedules.get(name)?, true).await
    }

    /// Creates a schedule from a schedule file (YAML or JSON) that names an existing trigger, or
    /// replaces the one named `replacing`, in the store (see `resources`); returns it with its
    /// warnings.
    pub async fn put_schedule(
        &self,
        bytes: &[u8],
        replacing: Option<&str>,
    ) -> Result<(Schedule, String), Failed> {
        let triggers = self.triggers.all();
        let names: Vec<&str> = triggers.iter().map(|t| t.name.as_str()).collect();
        let (schedule, warnings) = schedule::load(bytes, &names)
            .map_err(|d| Failed::Invalid(d.render("schedule").trim_end().to_string()))?;
        self.put_resource(&self.schedules, &schedule, bytes, replacing)
            .await?;
        Ok((schedule, warnings.render("schedule")))
    }

    /// Deletes a schedule the API created: its runs stop, and its builds stay.
    pub async fn delete_schedule(&self, name: &str) -> Result<(), Failed> {
        self.delete_resource(&self.schedules, name).await
    }

    async fn view(&self, schedule: &Schedule, with_skipped: bool) -> Result<ScheduleView, Failed> {
        let state = self.schedule_state(schedule).await?;
        let last_run = match state.last_run {
            Some(run) => {
                let build = self.store.get_build(&run.build).await?;
                Some(LastRunView {
                    run,
                    status: build.map(|b| b.status),
                })
            }
            None => None,
        };
        let skipped_runs = if with_skipped {
            let runs = self
                .store
                .skipped_runs(&schedule.name, SKIPPED_SHOWN)
                .await?;
            Some(runs.into_iter().map(wire::SkippedRun::from).collect())
        } else {
            None
        };
        Ok(ScheduleView {
            schedule: schedule.clone(),
            paused: state.paused,
            next_run: Times::of(state.next_run, schedule.time_zone),
            last_run,
            last_error: state.last_error,
            skipped_runs,
        })
    }

    /// Starts a run now, whatever the schedule's time, policies or pause (as `gcloud scheduler
    /// jobs run` does); it becomes the schedule's last run. Returns its build's id. Its
    /// trigger's concurrency applies as to a trigger run by hand: a full group that the trigger
    /// skips refuses it (409).
    pub async fn run_schedule(&self, name: &str) -> Result<String, Failed> {
        let schedule = &self.schedules.get(name)?;
        self.schedule_state(schedule).await?;
        let now = self.clock.now();
        let build = self.scheduled_build(schedule, now).await?;
        let skipped = self
            .store
            .queue_schedule_run(&schedule.name, now, &build)
            .await?;
        self.queued_by_hand(&build, skipped).await?;
        Ok(build.id)
    }

    /// Pauses a schedule (its runs are skipped, and recorded as such, until it is resumed), or
    /// resumes it: the runs missed meanwhile do not start.
    pub async fn pause_schedule(&self, name: &str, paused: bool) -> Result<ScheduleView, Failed> {
        let schedule = &self.schedules.get(name)?;
        if !paused && schedule.suspend {
            return Err(Failed::Conflict(format!(
                "schedule {name:?} is suspended in its file: set `suspend: false` there"
            )));
        }
        self.schedule_state(schedule).await?;
        self.store.set_schedule_paused(name, paused).await?;
        self.view(schedule, false).await
    }

    /// Whether a schedule runs the trigger named `trigger`.
    pub(super) fn schedule_running(&self, trigger: &str) -> Option<Schedule> {
        let schedules = self.schedules.all();
        schedules.iter().find(|s| s.trigger == trigger).cloned()
    }

    /// Runs the scheduler until `shutdown`: evaluates the schedules when the next run is due,
    /// and at least every few seconds.
    pub async fn run_schedules(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let wake = self.evaluate_schedules().await;
            let wait = (wake - self.clock.now()).to_std().unwrap_or_default();
            tokio::select! {
                () = tokio::time::sleep(wait.min(POLL)) => {}
                () = shutdown.cancelled() => break,
            }
        }
    }

    /// Evaluates every schedule at the clock's time: starts or skips the runs that are due.
    /// Returns when one is due next.
    pub async fn evaluate_schedules(&self) -> DateTime<Utc> {
        let now = self.clock.now();
        let mut wake = now + TimeDelta::from_std(POLL).unwrap_or_default();
        for schedule in self.schedules.all().iter() {
            match self.evaluate(schedule, now).await {
                Ok(next) => wake = wake.min(next),
                Err(e) => {
                    error!(schedule = %schedule.name, error = %e, "evaluating the schedule failed")
                }
            }
        }
        wake
    }

    /// Carries out what [`Schedule::decide`] says of `schedule` at `now`; returns when it is
    /// due next.
    async fn evaluate(
        &self,
        schedule: &Schedule,
        now: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, Failed> {
        let name = &schedule.name;
        let retry = self.retries.lock().expect("retries").get(name).copied();
        if let Some(retry) = retry.filter(|at| now < *at) {
            return Ok(retry);
        }
        let state = self.schedule_state(schedule).await?;
        let active = match &state.last_run {
            Some(run) => self
                .store
                .get_build(&run.build)
                .await?
                .is_some_and(|build| !build.status.is_final()),
            None => false,
        };
        let Some(decision) = schedule.decide(&state, active, now) else {
            return Ok(state.next_run);
        };
        let build = match decision.start {
            Some(at) => match self.scheduled_build(schedule, at).await {
                Ok(build) => Some(build),
                Err(failed) => {
                    // Tried again later, until the run is superseded or past its deadline.
                    let error = failed.to_string();
                    warn!(schedule = %name, %error, "starting the schedule's run failed; trying again");
                    self.store.set_schedule_error(name, Some(&error)).await?;
                    self.retries
                        .lock()
                        .expect("retries")
                        .insert(name.clone(), now + RETRY);
                    return Ok(now + RETRY);
                }
            },
            None => None,
        };
        self.retries.lock().expect("retries").remove(name);
        let claimed = self
            .store
            .claim_scheduled_run(name, state.next_run, &decision, build.as_ref())
            .await?;
        let Some(skipped) = claimed else {
            return Ok(decision.next_run);
        };
        // The run's build is queued as a trigger's by hand is: with its trigger's concurrency.
        // One that skips its full group was recorded as a skipped run, replacing nothing.
        if let Some(full) = skipped.first() {
            info!(schedule = %name, reason = %full.reason, "the schedule's run is skipped");
        } else if let Some(build) = &build {
            if let Some(previous) = &decision.replace
                && let Err(failed) = self.cancel(previous).await
            {
                let error = format!("replacing build {previous} failed: {failed}");
                error!(schedule = %name, %error, "replacing the schedule's last build failed");
                self.store.set_schedule_error(name, Some(&error)).await?;
            }
            self.on_queued(std::slice::from_ref(build)).await;
        }
        Ok(decision.next_run)
    }

    /// A schedule's stored state, started afresh (its next run after now) when the store has
    /// none or its file changed the expression or time zone.
    async fn schedule_state(&self, schedule: &Schedule) -> Result<State, Failed> {
        let spec = schedule.spec();
        match self.store.schedule_state(&schedule.name).await? {
            Some(state) if state.spec == spec => Ok(state),
            _ => {
                let first = schedule.first_run(self.clock.now()).ok_or_else(|| {
                    Failed::Internal(Internal::NoNextRun {
                        schedule: schedule.name.clone(),
                    })
                })?;
                Ok(self
                    .store
                    .sync_schedule(&schedule.name, &spec, first)
                    .await?)
            }
        }
    }

    /// The build of `schedule`'s run scheduled for `at`: its trigger run by hand, with the
    /// schedule's substitutions and name.
    async fn scheduled_build(
        &self,
        schedule: &Schedule,
        at: DateTime<Utc>,
    ) -> Result<QueuedBuild, Failed> {
        let mut run = ManualRun {
            substitutions: schedule.run_substitutions(at),
            ..ManualRun::default()
        };
        match &schedule.target {
            Target::Branch(branch) => run.branch = Some(branch.clone()),
            Target::Tag(tag) => run.tag = Some(tag.clone()),
            Target::Commit(commit) => run.commit = Some(commit.clone()),
        }
        let mut build = self.manual_build(&schedule.trigger, run).await?;
        build.schedule = Some(schedule.name.clone());
        Ok(build)
    }
}

/// The retry times of schedules whose due run failed to start.
pub(super) type Retries = std::sync::Mutex<HashMap<String, DateTime<Utc>>>;
