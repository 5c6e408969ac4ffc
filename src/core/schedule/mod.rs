//! Schedules: a cron expression in a time zone that runs a trigger (of a branch, a tag or a
//! commit, with extra substitutions), as Cloud Scheduler runs Cloud Build triggers; read from
//! schedule files with every problem at its line and column; and the scheduler's decisions, as
//! pure functions of the schedule, its stored state and the time, so that tests drive them with a
//! clock of their own.
//!
//! The policies are Kubernetes CronJob's:
//! * `concurrencyPolicy`: `Allow` starts a run whatever the previous one does; `Forbid` skips a
//!   run while the previous run's build is still queued or working; `Replace` cancels that build
//!   and starts the new run.
//! * `startingDeadlineSeconds`: a run found due later than this after its time (the server was
//!   down, or its clock jumped ahead) is skipped. Without it, a late run starts however late.
//!
//! Whatever the downtime or the clock does, one evaluation starts at most one run: of the runs
//! due since the stored next run, only the latest may start; the earlier ones are recorded as
//! skipped. A clock that goes back starts nothing until it reaches the stored next run again.

pub mod cron;

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use chrono_tz::Tz;
use serde::{Serialize, Serializer};

use crate::core::config::decode::{self, Fields, hint};
use crate::core::config::validate;
use crate::core::diag::{Diagnostics, FieldPath, Pos};
pub use cron::Cron;

/// The substitution every scheduled build gets: the schedule's name.
pub const SCHEDULE_NAME: &str = "_SCHEDULE_NAME";
/// The substitution every scheduled build gets: the time the run was scheduled for, in RFC 3339
/// (UTC, e.g. `2024-03-11T02:00:00Z`; `${_SCHEDULED_TIME:0:10}` is its date).
pub const SCHEDULED_TIME: &str = "_SCHEDULED_TIME";
/// How many skipped runs one record counts at most.
pub const MAX_COUNTED: u32 = 10_000;

/// A schedule as loaded.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Schedule {
    pub name: String,
    pub description: String,
    #[serde(rename = "schedule", serialize_with = "as_text")]
    pub cron: Cron,
    #[serde(serialize_with = "as_text")]
    pub time_zone: Tz,
    /// The trigger it runs.
    pub trigger: String,
    #[serde(flatten)]
    pub target: Target,
    /// Extra substitutions of every run (user keys).
    pub substitutions: BTreeMap<String, String>,
    /// Written in the file: no run starts (the API's pause is kept in the store instead).
    pub suspend: bool,
    pub concurrency_policy: ConcurrencyPolicy,
    #[serde(rename = "startingDeadlineSeconds")]
    pub starting_deadline: Option<u64>,
}

/// What a run builds, as a manual run of the trigger names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Target {
    Branch(String),
    Tag(String),
    Commit(String),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub enum ConcurrencyPolicy {
    #[default]
    Allow,
    Forbid,
    Replace,
}

/// What the store keeps of a schedule between evaluations (and restarts).
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    /// The next run's time: the runs before it were started or skipped. Claiming a run moves it
    /// on atomically, so two schedulers on one store start each run once.
    pub next_run: DateTime<Utc>,
    /// The expression and zone `next_run` was computed for (see [`Schedule::spec`]).
    pub spec: String,
    pub last_run: Option<LastRun>,
    /// Paused through the API.
    pub paused: bool,
    /// Why the last attempt to start the due run failed, if it did.
    pub last_error: Option<String>,
}

/// The run started last: the time it was scheduled for and its build.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LastRun {
    pub scheduled_time: DateTime<Utc>,
    pub build: String,
}

/// Runs that did not start, and why: `count` runs scheduled from `first` to `last`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Skipped {
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
    /// At most [`MAX_COUNTED`].
    pub count: u32,
    pub reason: String,
}

/// What to do with a schedule whose next run is due.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The scheduled time of the run to start now, if one starts.
    pub start: Option<DateTime<Utc>>,
    /// The previous run's build, to cancel (`Replace`).
    pub replace: Option<String>,
    pub skipped: Vec<Skipped>,
    /// The state's next run from now on.
    pub next_run: DateTime<Utc>,
}

impl Decision {
    /// This decision with the run it starts skipped instead, for `reason` (its trigger's
    /// concurrency group was full, `onConflict: SKIP`): recorded as a skipped run, and the
    /// previous run not replaced.
    pub fn start_skipped(&self, reason: String) -> Decision {
        let mut skipped = self.skipped.clone();
        skipped.extend(self.start.map(|at| Skipped {
            first: at,
            last: at,
            count: 1,
            reason,
        }));
        Decision {
            start: None,
            replace: None,
            skipped,
            next_run: self.next_run,
        }
    }
}

/// A time in UTC and in the zone of a schedule.
#[derive(Debug, Serialize)]
pub struct Times {
    pub utc: String,
    pub local: String,
}

impl Times {
    pub fn of(at: DateTime<Utc>, zone: Tz) -> Self {
        Self {
            utc: at.to_rfc3339_opts(SecondsFormat::Secs, true),
            local: at
                .with_timezone(&zone)
                .to_rfc3339_opts(SecondsFormat::Secs, true),
        }
    }
}

impl Schedule {
    /// What the stored next run depends on: when the file changes it, the schedule starts afresh.
    pub fn spec(&self) -> String {
        format!("{} {}", self.cron, self.time_zone.name())
    }

    /// The first run of a schedule never seen before: the next fire time after `now`.
    pub fn first_run(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.next_after(self.time_zone, now)
    }

    /// What to do at `now` given the stored `state`, and whether the previous run's build is
    /// still queued or working; `None` while the next run is not due.
    pub fn decide(
        &self,
        state: &State,
        previous_active: bool,
        now: DateTime<Utc>,
    ) -> Option<Decision> {
        let due = state.next_run;
        if now < due {
            return None;
        }
        let zone = self.time_zone;
        let next_run = self.cron.next_after(zone, now)?;
        let at_or_after_due = |at: Option<DateTime<Utc>>| at.filter(|t| *t >= due).unwrap_or(due);
        let latest = at_or_after_due(self.cron.latest_at_or_before(zone, now));
        let late = (now - latest).num_seconds();
        // Runs passed over after failed attempts to start them say why.
        let failed = match &state.last_error {
            Some(error) => format!("; the last attempt to start it failed: {error}"),
            None => String::new(),
        };
        if let Some(deadline) = self.starting_deadline.filter(|d| late > *d as i64) {
            let reason = format!(
                "missed: found due {late}s after its time, past startingDeadlineSeconds \
                 ({deadline}); the server was down or its clock jumped ahead{failed}"
            );
            // Every run since `due` missed its deadline for the same reason: one record.
            return Some(Decision {
                start: None,
                replace: None,
                skipped: vec![self.skipped(due, latest, reason)],
                next_run,
            });
        }
        let previous = state.last_run.as_ref().map(|run| run.build.clone());
        let policy = self.concurrency_policy;
        let refusal = if self.suspend {
            Some("the schedule is suspended (`suspend: true` in its file)".to_string())
        } else if state.paused {
            Some("the schedule is paused".to_string())
        } else if previous_active && policy == ConcurrencyPolicy::Forbid {
            Some(format!(
                "the previous run (build {}) is still queued or working (concurrencyPolicy: \
                 Forbid)",
                previous.as_deref().unwrap_or_default()
            ))
        } else {
            None
        };
        let mut skipped = Vec::new();
        if latest > due {
            // Fire times are whole minutes: the one before `latest` is at or before this.
            let before = latest - TimeDelta::seconds(1);
            let last = at_or_after_due(self.cron.latest_at_or_before(zone, before));
            let reason = format!(
                "missed while the server was down or its clock jumped ahead; only the latest \
                 missed run may start{failed}"
            );
            skipped.push(self.skipped(due, last, reason));
        }
        let start = match refusal {
            Some(reason) => {
                skipped.push(self.skipped(latest, latest, reason));
                None
            }
            None => Some(latest),
        };
        let replace = previous
            .filter(|_| start.is_some() && previous_active && policy == ConcurrencyPolicy::Replace);
        Some(Decision {
            start,
            replace,
            skipped,
            next_run,
        })
    }

    fn skipped(&self, first: DateTime<Utc>, last: DateTime<Utc>, reason: String) -> Skipped {
        let later = self.cron.upcoming(self.time_zone, first);
        let count = 1 + later
            .take_while(|at| *at <= last)
            .take(MAX_COUNTED as usize - 1)
            .count() as u32;
        Skipped {
            first,
            last,
            count,
            reason,
        }
    }

    /// The substitutions of the run scheduled for `scheduled_time`: the schedule's own, then
    /// [`SCHEDULE_NAME`] and [`SCHEDULED_TIME`].
    pub fn run_substitutions(&self, scheduled_time: DateTime<Utc>) -> BTreeMap<String, String> {
        let mut substitutions = self.substitutions.clone();
        substitutions.insert(SCHEDULE_NAME.into(), self.name.clone());
        substitutions.insert(
            SCHEDULED_TIME.into(),
            scheduled_time.to_rfc3339_opts(SecondsFormat::Secs, true),
        );
        substitutions
    }
}

fn as_text<T: std::fmt::Display, S: Serializer>(
    value: &T,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

/// The time zone named `name`, or why there is none.
pub fn time_zone(name: &str) -> Result<Tz, String> {
    name.parse().map_err(|_| {
        let names: Vec<&str> = chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name()).collect();
        format!(
            "unknown time zone {name:?}: expected an IANA name such as \"Europe/Berlin\" or \
             \"America/New_York\"{}",
            hint(name, &names)
        )
    })
}

/// Reads a schedule file (YAML or JSON); `triggers` are the names of the triggers it may run.
/// `Err` holds the diagnostics when it is not a usable schedule; `Ok` carries the warnings.
pub fn load(bytes: &[u8], triggers: &[&str]) -> Result<(Schedule, Diagnostics), Diagnostics> {
    decode::document(bytes, |f| schedule(f, triggers))
}

fn schedule(f: &mut Fields, triggers: &[&str]) -> Schedule {
    let name = crate::core::triggers::name(f, "schedule");
    let cron = cron(f);
    let time_zone = match f.take("timeZone") {
        None => Tz::UTC,
        Some((node, path)) => {
            let text = node.scalar().map_or("", |s| s.text.as_str());
            time_zone(text).unwrap_or_else(|message| {
                f.diagnostics().error_at(&path, node.pos, message);
                Tz::UTC
            })
        }
    };
    let trigger = f.string("trigger").unwrap_or_default();
    if !triggers.contains(&trigger.as_str()) {
        let path = f.path().key("trigger");
        let message = if trigger.is_empty() {
            "set `trigger`: the name of the trigger each run runs".to_string()
        } else {
            format!(
                "no trigger {trigger:?} on this server{}",
                hint(&trigger, triggers)
            )
        };
        f.diagnostics().error(&path, message);
    }
    let target = target(f);
    let substitutions = f.string_map("substitutions");
    let path = f.path().key("substitutions");
    validate::check_substitution_keys(&substitutions, &path, f.diagnostics());
    for key in [SCHEDULE_NAME, SCHEDULED_TIME] {
        if substitutions.contains_key(key) {
            f.diagnostics()
                .error(&path.key(key), "set by the scheduler for every run");
        }
    }
    let concurrency_policy =
        match f.enumeration("concurrencyPolicy", &["Allow", "Forbid", "Replace"]) {
            Some("Forbid") => ConcurrencyPolicy::Forbid,
            Some("Replace") => ConcurrencyPolicy::Replace,
            _ => ConcurrencyPolicy::Allow,
        };
    let starting_deadline = f.take("startingDeadlineSeconds").and_then(|(node, path)| {
        let text = node.scalar().map_or("", |s| s.text.as_str());
        let seconds = text.parse::<u64>().ok();
        if seconds.is_none() {
            f.diagnostics().error_at(
                &path,
                node.pos,
                format!("expected a whole number of seconds, found {text:?}"),
            );
        }
        seconds
    });
    Schedule {
        name,
        description: f.string("description").unwrap_or_default(),
        cron,
        time_zone,
        trigger,
        target,
        substitutions,
        suspend: f.bool("suspend").unwrap_or(false),
        concurrency_policy,
        starting_deadline,
    }
}

/// The `schedule` field; a problem is located at the field of the expression it is in.
fn cron(f: &mut Fields) -> Cron {
    let fallback = || Cron::parse("0 0 1 1 *").expect("a valid expression");
    let Some((node, path)) = f.take("schedule") else {
        f.diagnostics().error(
            &FieldPath::root(),
            format!("set `schedule`: a unix-cron expression of {}", cron::FORMAT),
        );
        return fallback();
    };
    let Some(scalar) = node.scalar() else {
        let message = format!("expected a unix-cron expression, found {}", node.kind());
        f.diagnostics().error_at(&path, node.pos, message);
        return fallback();
    };
    Cron::parse(&scalar.text).unwrap_or_else(|e| {
        // On one line, the error's offset in the text is its column offset (after a quote).
        let pos = if scalar.text.contains('\n') {
            node.pos
        } else {
            Pos {
                line: node.pos.line,
                col: node.pos.col + usize::from(scalar.quoted) + e.offset,
            }
        };
        let message =
            format!("{e} (check an expression with `builder schedules preview \"EXPR\"`)");
        f.diagnostics().error_at(&path, pos, message);
        fallback()
    })
}

fn target(f: &mut Fields) -> Target {
    let targets = [
        f.string("branch").map(Target::Branch),
        f.string("tag").map(Target::Tag),
        f.string("commit").map(Target::Commit),
    ];
    let mut given = targets.into_iter().flatten();
    match (given.next(), given.next()) {
        (Some(target), None) => target,
        (first, _) => {
            let message = if first.is_some() {
                "set only one of `branch`, `tag` and `commit`"
            } else {
                "set `branch`, `tag` or `commit`: what each run builds"
            };
            f.diagnostics().error(&FieldPath::root(), message);
            Target::Branch(String::new())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRIGGERS: &[&str] = &["trainer-image", "dashboard"];
    const WEEKLY: &str = "name: weekly\nschedule: 0 3 * * MON\ntimeZone: Europe/Berlin\n\
                          trigger: trainer-image\nbranch: main\n";

    fn schedule(yaml: &str) -> Schedule {
        match load(yaml.as_bytes(), TRIGGERS) {
            Ok((schedule, _)) => schedule,
            Err(diagnostics) => panic!("{}", diagnostics.render("schedule.yaml")),
        }
    }

    fn errors(yaml: &str) -> String {
        load(yaml.as_bytes(), TRIGGERS)
            .expect_err("refused")
            .render("schedule.yaml")
    }

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    fn state(next_run: &str) -> State {
        State {
            next_run: utc(next_run),
            spec: String::new(),
            last_run: Some(LastRun {
                scheduled_time: utc("2024-01-01T00:00:00Z"),
                build: "b-1".into(),
            }),
            paused: false,
            last_error: None,
        }
    }

    #[test]
    fn the_shipped_schedules_load_against_the_shipped_triggers() {
        let (weekly, warnings) = load(
            include_bytes!("../../../configs/schedules/trainer-image-weekly.yaml"),
            &["trainer-image"],
        )
        .unwrap();
        assert_eq!(warnings.iter().count(), 0);
        assert_eq!(weekly.trigger, "trainer-image");
        assert_eq!(weekly.concurrency_policy, ConcurrencyPolicy::Forbid);
    }

    #[test]
    fn a_schedule_reads_its_fields_and_defaults() {
        let weekly = schedule(WEEKLY);
        assert_eq!(weekly.spec(), "0 3 * * MON Europe/Berlin");
        assert_eq!(weekly.target, Target::Branch("main".into()));
        assert_eq!(weekly.concurrency_policy, ConcurrencyPolicy::Allow);
        assert_eq!((weekly.suspend, weekly.starting_deadline), (false, None));
        // Monday 2024-03-11 03:00 CET.
        assert_eq!(
            weekly.first_run(utc("2024-03-06T00:00:00Z")),
            Some(utc("2024-03-11T02:00:00Z"))
        );
        let full = schedule(&format!(
            "{WEEKLY}concurrencyPolicy: Replace\nstartingDeadlineSeconds: 600\nsuspend: true\n\
             substitutions: {{_TARGET: prod}}\n"
        ));
        assert_eq!(full.concurrency_policy, ConcurrencyPolicy::Replace);
        assert_eq!((full.suspend, full.starting_deadline), (true, Some(600)));
        let run = full.run_substitutions(utc("2024-03-11T02:00:00Z"));
        assert_eq!(
            serde_json::to_value(&run).unwrap(),
            serde_json::json!({
                "_SCHEDULED_TIME": "2024-03-11T02:00:00Z",
                "_SCHEDULE_NAME": "weekly",
                "_TARGET": "prod"
            })
        );
        let json = serde_json::to_value(&full).unwrap();
        assert_eq!(json["schedule"], "0 3 * * MON");
        assert_eq!(json["timeZone"], "Europe/Berlin");
        assert_eq!(json["branch"], "main");
        assert_eq!(
            schedule(&WEEKLY.replace("timeZone: Europe/Berlin\n", "")).time_zone,
            Tz::UTC
        );
    }

    #[test]
    fn bad_schedules_are_refused_at_their_location_with_a_hint() {
        let rendered = errors(&WEEKLY.replace("0 3 * * MON", "0 25 * * MON"));
        assert!(
            rendered.starts_with("schedule.yaml:2:13: schedule: hour: 25 is out of range 0-23"),
            "{rendered}"
        );
        assert!(rendered.contains("builder schedules preview"), "{rendered}");
        let rendered = errors(&WEEKLY.replace("0 3 * * MON", "'0 3 * * MOM'"));
        assert!(
            rendered.contains("schedule.yaml:2:20: schedule: day of week: \"MOM\""),
            "{rendered}"
        );
        let rendered = errors(&WEEKLY.replace("Europe/Berlin", "Europe/Berln"));
        assert!(
            rendered
                .starts_with("schedule.yaml:3:11: timeZone: unknown time zone \"Europe/Berln\""),
            "{rendered}"
        );
        assert!(
            rendered.contains("did you mean \"Europe/Berlin\""),
            "{rendered}"
        );
        let rendered = errors(&WEEKLY.replace("trigger: trainer-image", "trigger: trainer-imag"));
        assert!(
            rendered.contains(
                "schedule.yaml:4:10: trigger: no trigger \"trainer-imag\" on this server; did \
                 you mean \"trainer-image\"?"
            ),
            "{rendered}"
        );
        assert!(
            errors(&WEEKLY.replace("branch: main", "tag: v1\nbranch: main")).contains("only one")
        );
        assert!(
            errors(&WEEKLY.replace("branch: main\n", ""))
                .contains("set `branch`, `tag` or `commit`")
        );
        let rendered = errors(&format!("{WEEKLY}concurrencyPolicy: Never\n"));
        assert!(
            rendered.contains("schedule.yaml:6:20: concurrencyPolicy"),
            "{rendered}"
        );
        let rendered = errors(&format!("{WEEKLY}startingDeadlineSeconds: 1h\n"));
        assert!(rendered.contains("whole number of seconds"), "{rendered}");
        let rendered = errors(&format!("{WEEKLY}substitutions: {{_SCHEDULE_NAME: x}}\n"));
        assert!(
            rendered.contains("substitutions._SCHEDULE_NAME: set by the scheduler"),
            "{rendered}"
        );
        let rendered = errors(&format!("{WEEKLY}timezone: UTC\n"));
        assert!(rendered.contains("did you mean \"timeZone\""), "{rendered}");
        assert!(errors("name: x\ntrigger: dashboard\nbranch: main\n").contains("set `schedule`"));
    }

    #[test]
    fn a_due_run_starts_and_the_next_one_is_scheduled() {
        let hourly = schedule(&WEEKLY.replace("0 3 * * MON", "0 * * * *"));
        let state = state("2024-03-11T02:00:00Z");
        assert_eq!(
            hourly.decide(&state, false, utc("2024-03-11T01:59:59Z")),
            None
        );
        let decision = hourly
            .decide(&state, false, utc("2024-03-11T02:00:03Z"))
            .unwrap();
        assert_eq!(
            decision,
            Decision {
                start: Some(utc("2024-03-11T02:00:00Z")),
                replace: None,
                skipped: Vec::new(),
                next_run: utc("2024-03-11T03:00:00Z"),
            }
        );
    }

    #[test]
    fn a_start_skipped_is_recorded_after_the_runs_skipped_before_it() {
        let (missed, due, next) = (
            utc("2024-03-11T01:00:00Z"),
            utc("2024-03-11T02:00:00Z"),
            utc("2024-03-11T03:00:00Z"),
        );
        let skip = |at, reason: &str| Skipped {
            first: at,
            last: at,
            count: 1,
            reason: reason.into(),
        };
        let decision = Decision {
            start: Some(due),
            replace: Some("previous".into()),
            skipped: vec![skip(missed, "missed")],
            next_run: next,
        };
        assert_eq!(
            decision.start_skipped("its group is full".into()),
            Decision {
                start: None,
                replace: None,
                skipped: vec![skip(missed, "missed"), skip(due, "its group is full")],
                next_run: next,
            }
        );
    }

    #[test]
    fn after_downtime_only_the_latest_missed_run_starts_within_the_deadline() {
        let hourly = schedule(&format!(
            "{}startingDeadlineSeconds: 600\n",
            WEEKLY.replace("0 3 * * MON", "0 * * * *")
        ));
        let state = state("2024-03-11T02:00:00Z");
        // Down from 01:30 to 05:05: the 02:00, 03:00 and 04:00 runs are skipped, 05:00 starts.
        let decision = hourly
            .decide(&state, false, utc("2024-03-11T05:05:00Z"))
            .unwrap();
        assert_eq!(decision.start, Some(utc("2024-03-11T05:00:00Z")));
        assert_eq!(decision.next_run, utc("2024-03-11T06:00:00Z"));
        let [skipped] = decision.skipped.as_slice() else {
            panic!("{decision:?}")
        };
        assert_eq!(
            (skipped.first, skipped.last, skipped.count),
            (utc("2024-03-11T02:00:00Z"), utc("2024-03-11T04:00:00Z"), 3)
        );
        assert!(
            skipped
                .reason
                .starts_with("missed while the server was down")
        );
        // Back at 05:11, the 05:00 run is past its deadline too: nothing starts.
        let decision = hourly
            .decide(&state, false, utc("2024-03-11T05:11:00Z"))
            .unwrap();
        assert_eq!(decision.start, None);
        let [skipped] = decision.skipped.as_slice() else {
            panic!("{decision:?}")
        };
        assert_eq!(
            (skipped.last, skipped.count),
            (utc("2024-03-11T05:00:00Z"), 4)
        );
        assert!(
            skipped
                .reason
                .contains("found due 660s after its time, past startingDeadlineSeconds (600)"),
            "{}",
            skipped.reason
        );
    }

    #[test]
    fn a_clock_jump_starts_one_run_at_most() {
        let minutely = schedule(&WEEKLY.replace("0 3 * * MON", "'* * * * *'"));
        let state = state("2024-03-11T02:00:00Z");
        // A year ahead: one run, a year of minutes counted as skipped (up to the cap).
        let decision = minutely
            .decide(&state, false, utc("2025-03-11T02:00:30Z"))
            .unwrap();
        assert_eq!(decision.start, Some(utc("2025-03-11T02:00:00Z")));
        assert_eq!(decision.skipped[0].count, MAX_COUNTED);
        assert_eq!(decision.next_run, utc("2025-03-11T02:01:00Z"));
        // Back before the stored next run: nothing is due.
        assert_eq!(
            minutely.decide(&state, false, utc("2024-03-10T00:00:00Z")),
            None
        );
    }

    #[test]
    fn concurrency_policies_decide_against_a_running_previous_run() {
        let with = |policy: &str| {
            schedule(&format!(
                "{}concurrencyPolicy: {policy}\n",
                WEEKLY.replace("0 3 * * MON", "0 * * * *")
            ))
        };
        let state = state("2024-03-11T02:00:00Z");
        let now = utc("2024-03-11T02:00:01Z");
        let allowed = with("Allow").decide(&state, true, now).unwrap();
        assert_eq!((allowed.start.is_some(), allowed.replace), (true, None));
        let forbidden = with("Forbid").decide(&state, true, now).unwrap();
        assert_eq!(forbidden.start, None);
        assert_eq!(
            forbidden.skipped[0].reason,
            "the previous run (build b-1) is still queued or working (concurrencyPolicy: Forbid)"
        );
        assert_eq!(forbidden.next_run, utc("2024-03-11T03:00:00Z"));
        assert!(
            with("Forbid")
                .decide(&state, false, now)
                .unwrap()
                .start
                .is_some()
        );
        let replaced = with("Replace").decide(&state, true, now).unwrap();
        assert_eq!(replaced.start, Some(utc("2024-03-11T02:00:00Z")));
        assert_eq!(replaced.replace.as_deref(), Some("b-1"));
        assert_eq!(
            with("Replace").decide(&state, false, now).unwrap().replace,
            None
        );
    }

    #[test]
    fn suspended_and_paused_schedules_skip_their_runs() {
        let suspended = schedule(&format!("{WEEKLY}suspend: true\n"));
        let mut state = state("2024-03-11T02:00:00Z");
        let now = utc("2024-03-11T02:00:00Z");
        let decision = suspended.decide(&state, false, now).unwrap();
        assert_eq!(decision.start, None);
        assert!(decision.skipped[0].reason.contains("suspend: true"));
        state.paused = true;
        let decision = schedule(WEEKLY).decide(&state, false, now).unwrap();
        assert_eq!(decision.skipped[0].reason, "the schedule is paused");
        assert_eq!(decision.next_run, utc("2024-03-18T02:00:00Z"));
    }
}
