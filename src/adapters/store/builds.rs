//! The builds aggregate: a build's record from its creation to its outcome (status, plan, steps,
//! images, failure), and the queries that list and find builds.

use std::collections::HashMap;
use std::time::SystemTime;

use base64::Engine as _;
use sqlx::{Database, Encode, QueryBuilder, Row, Type};

use super::{
    Columns, Error, Lease, SqliteStore, Transaction, json, millis, parse_json, status, time,
};
use crate::core::build::{
    Approval, ApprovalConfig, ApprovalResult, ApprovalState, Decision, Outcome, PushedImage,
    Status, StepResult,
};
use crate::core::plan::ResolvedBuild;
use crate::core::substitute::Values;
use crate::core::templates::PushedTemplate;
use crate::core::triggers::ConcurrencyGroup;

/// A build as recorded (the API serves it as a `wire::Build`).
#[derive(Debug, Clone)]
pub struct BuildRecord {
    pub id: String,
    pub status: Status,
    pub create_time: SystemTime,
    pub start_time: Option<SystemTime>,
    pub finish_time: Option<SystemTime>,
    /// The trigger that started it; `None` for `builder submit` builds.
    pub trigger: Option<String>,
    /// The schedule that started it.
    pub schedule: Option<String>,
    pub source: serde_json::Value,
    pub substitutions: Values,
    /// `null` until the build has a plan.
    pub plan: serde_json::Value,
    pub images: Vec<PushedImage>,
    pub templates: Vec<PushedTemplate>,
    pub failure: Option<String>,
    pub steps: Vec<StepRecord>,
    /// What each step wrote to `$BUILDER_OUTPUT/output`, base64, at the step's index (empty for
    /// the others): Cloud Build's `results.buildStepOutputs`.
    pub build_step_outputs: Vec<String>,
    /// For a build that needs a person's approval: its state, and the decision once made.
    pub approval: Option<Approval>,
    /// The concurrency group of a build its trigger puts in one.
    pub concurrency: Option<ConcurrencyGroup>,
}

/// A step of a build as recorded.
#[derive(Debug, Clone)]
pub struct StepRecord {
    pub index: usize,
    pub id: Option<String>,
    pub name: String,
    pub result: StepResult,
}

/// Which builds [`Builds::list_builds`] returns.
#[derive(Debug, Clone)]
pub struct BuildQuery {
    pub status: Option<Status>,
    pub trigger: Option<String>,
    pub schedule: Option<String>,
    /// Builds of this branch (their `BRANCH_NAME`).
    pub branch: Option<String>,
    pub limit: u32,
    /// How many of the newest matching builds to skip (paging).
    pub offset: u32,
    /// Only builds older than this one (paging that reads no more rows however deep it goes).
    pub before: Option<String>,
}

impl Default for BuildQuery {
    fn default() -> Self {
        Self {
            status: None,
            trigger: None,
            schedule: None,
            branch: None,
            limit: 50,
            offset: 0,
            before: None,
        }
    }
}

/// Statements both dialects share.
pub(super) const CREATE_BUILD: &str = "INSERT INTO builds \
     (id, status, create_time, source, substitutions, plan, holder, lease_until) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
pub(super) const START_BUILD: &str = "UPDATE builds SET status = $1, start_time = $2 WHERE id = $3";
/// The fence of a holder's writes for a build: the build is unfinished and still the holder's.
/// Run first in the write's transaction (PostgreSQL also locks the row, so that a take-over
/// waits for the write, or the write for the take-over).
pub(super) const FENCE: &str =
    "SELECT 1 FROM builds WHERE id = $1 AND holder = $2 AND status IN ($3, $4)";
pub(super) const FINISH_BUILD: &str = "UPDATE builds SET status = $1, finish_time = $2, \
     images = $3, templates = $4, failure = $5 WHERE id = $6";
pub(super) const SET_PLAN: &str = "UPDATE builds SET plan = $1, substitutions = $2 WHERE id = $3";
pub(super) const STEPS_OF_BUILD: &str = "SELECT * FROM steps WHERE build_id = $1 ORDER BY idx";
pub(super) const SET_STEP: &str = "UPDATE steps SET status = $1, exit_code = $2, \
     start_time = $3, finish_time = $4, image_digest = $5, detail = $6, output = $7 \
     WHERE build_id = $8 AND idx = $9";
pub(super) const INSERT_STEP: &str =
    "INSERT INTO steps (build_id, idx, step_id, name, status) VALUES ($1, $2, $3, $4, $5)";

/// A build's record through its life. A build is created by the process that runs it at once
/// ([`Builds::create_build`], held by that process's lease) or queued ([`super::Queue`]) and given
/// its plan when it is claimed ([`Builds::set_plan`]); it is then started, its steps are updated as
/// they run, and it is finished once. A caller may rely on:
///
/// - a created or planned build has one QUEUED step per step of its plan, at the plan's indexes;
/// - [`Builds::get_build`] and [`Builds::list_builds`] see every write that returned before them;
/// - [`Builds::finish_build`] writes every step's result and the build's end in one transaction;
/// - lists are newest first (by creation time, then id) and stable across pages;
/// - every write for a build but its creation is fenced by the writer's [`Lease`]: it is
///   refused ([`Error::NotHeld`]), writing nothing, unless the build is unfinished and held by
///   that lease's holder, so that a process whose build was taken over writes no more of it.
#[async_trait::async_trait]
pub trait Builds: Send + Sync {
    /// Records a new build to be run at once by `lease`'s holder: QUEUED, with every step
    /// QUEUED, and held from the start so that no other process takes it for abandoned.
    async fn create_build(
        &self,
        id: &str,
        source: &serde_json::Value,
        plan: &ResolvedBuild,
        lease: &Lease,
    ) -> Result<(), Error>;

    /// Marks a build its holder created as WORKING.
    async fn start_build(&self, id: &str, lease: &Lease) -> Result<(), Error>;

    /// Records one step's result while the build runs.
    async fn update_step(
        &self,
        id: &str,
        index: usize,
        result: &StepResult,
        lease: &Lease,
    ) -> Result<(), Error>;

    /// Records how the build ended: its status, every step's result, pushed images, failure.
    async fn finish_build(&self, id: &str, outcome: &Outcome, lease: &Lease) -> Result<(), Error>;

    /// Records the plan a claimed build resolved to, with its steps QUEUED.
    async fn set_plan(&self, id: &str, plan: &ResolvedBuild, lease: &Lease) -> Result<(), Error>;

    /// The newest builds first, as `query` selects them.
    async fn list_builds(&self, query: &BuildQuery) -> Result<Vec<BuildRecord>, Error>;

    /// A build by id, or by a unique prefix of its id.
    async fn get_build(&self, id: &str) -> Result<Option<BuildRecord>, Error>;
}

#[async_trait::async_trait]
impl Builds for SqliteStore {
    async fn create_build(
        &self,
        id: &str,
        source: &serde_json::Value,
        plan: &ResolvedBuild,
        lease: &Lease,
    ) -> Result<(), Error> {
        let (_turn, mut tx) = self.write().await?;
        sqlx::query(CREATE_BUILD)
            .bind(id)
            .bind(Status::Queued.as_str())
            .bind(millis(SystemTime::now()))
            .bind(source.to_string())
            .bind(json(&plan.substitutions))
            .bind(json(plan))
            .bind(&lease.holder)
            .bind(lease.until())
            .execute(&mut *tx)
            .await?;
        insert_steps(&mut tx, id, plan).await?;
        Ok(tx.commit().await?)
    }

    async fn start_build(&self, id: &str, lease: &Lease) -> Result<(), Error> {
        let (_turn, mut tx) = self.write().await?;
        fence(&mut tx, id, lease).await?;
        sqlx::query(START_BUILD)
            .bind(Status::Working.as_str())
            .bind(millis(SystemTime::now()))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        Ok(tx.commit().await?)
    }

    async fn update_step(
        &self,
        id: &str,
        index: usize,
        result: &StepResult,
        lease: &Lease,
    ) -> Result<(), Error> {
        let (_turn, mut tx) = self.write().await?;
        fence(&mut tx, id, lease).await?;
        set_step(&mut tx, id, index, result).await?;
        Ok(tx.commit().await?)
    }

    async fn finish_build(&self, id: &str, outcome: &Outcome, lease: &Lease) -> Result<(), Error> {
        let (_turn, mut tx) = self.write().await?;
        fence(&mut tx, id, lease).await?;
        for (index, result) in outcome.steps.iter().enumerate() {
            set_step(&mut tx, id, index, result).await?;
        }
        sqlx::query(FINISH_BUILD)
            .bind(outcome.status.as_str())
            .bind(millis(SystemTime::now()))
            .bind(json(&outcome.images))
            .bind(json(&outcome.templates))
            .bind(&outcome.failure)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        Ok(tx.commit().await?)
    }

    async fn set_plan(&self, id: &str, plan: &ResolvedBuild, lease: &Lease) -> Result<(), Error> {
        let (_turn, mut tx) = self.write().await?;
        fence(&mut tx, id, lease).await?;
        sqlx::query(SET_PLAN)
            .bind(json(plan))
            .bind(json(&plan.substitutions))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        insert_steps(&mut tx, id, plan).await?;
        Ok(tx.commit().await?)
    }

    async fn list_builds(&self, query: &BuildQuery) -> Result<Vec<BuildRecord>, Error> {
        let rows = select_builds(SQLITE_BRANCH, "SELECT *", query)
            .build()
            .fetch_all(&self.pool)
            .await?;
        let ids: Vec<String> = rows.iter().map(|row| row.get("id")).collect();
        let step_rows = sqlx::query(
            "SELECT * FROM steps WHERE build_id IN (SELECT value FROM json_each($1)) \
             ORDER BY build_id, idx",
        )
        .bind(json(&ids))
        .fetch_all(&self.pool)
        .await?;
        Ok(build_records(&rows, &step_rows))
    }

    async fn get_build(&self, id: &str) -> Result<Option<BuildRecord>, Error> {
        // A prefix is a range of the primary key: ids are ASCII, below U+10FFFF.
        let rows = sqlx::query(
            "SELECT * FROM builds WHERE id >= $1 AND id < $1 || char(1114111) \
             ORDER BY id = $1 DESC LIMIT 2",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        let Some(row) = by_prefix(&rows, id) else {
            return Ok(None);
        };
        let steps = sqlx::query(STEPS_OF_BUILD)
            .bind(row.get::<String, _>("id"))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(step_record)
            .collect();
        Ok(Some(build_record(row, steps)))
    }
}

/// Refuses a write for build `id` unless `lease`'s holder holds it, unfinished ([`FENCE`]).
pub(super) async fn fence(tx: &mut Transaction<'_>, id: &str, lease: &Lease) -> Result<(), Error> {
    let held = sqlx::query(FENCE)
        .bind(id)
        .bind(&lease.holder)
        .bind(Status::Queued.as_str())
        .bind(Status::Working.as_str())
        .fetch_optional(&mut **tx)
        .await?;
    held.map(drop).ok_or_else(|| Error::NotHeld {
        build: id.to_string(),
    })
}

async fn set_step(
    tx: &mut Transaction<'_>,
    id: &str,
    index: usize,
    result: &StepResult,
) -> Result<(), Error> {
    sqlx::query(SET_STEP)
        .bind(result.status.as_str())
        .bind(result.exit_code)
        .bind(result.start_time.map(millis))
        .bind(result.end_time.map(millis))
        .bind(&result.image_digest)
        .bind(&result.detail)
        .bind(&result.output)
        .bind(id)
        .bind(index as i64)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn insert_steps(
    tx: &mut Transaction<'_>,
    id: &str,
    plan: &ResolvedBuild,
) -> Result<(), Error> {
    for (index, step) in plan.steps.iter().enumerate() {
        sqlx::query(INSERT_STEP)
            .bind(id)
            .bind(index as i64)
            .bind(&step.id)
            .bind(&step.name)
            .bind(Status::Queued.as_str())
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// A build's branch in SQLite, as its index (migration 0006) has it.
const SQLITE_BRANCH: &str = "json_extract(substitutions, '$.BRANCH_NAME')";

/// The builds `query` selects, newest first: only the filters it gives, so that the database
/// serves them from their index (`branch` is the dialect's expression of a build's branch, as
/// its index has it).
pub(super) fn select_builds<DB>(branch: &str, columns: &str, query: &BuildQuery) -> QueryBuilder<DB>
where
    DB: Database<Arguments: Default>,
    for<'t> &'t str: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
{
    let mut sql = QueryBuilder::new(columns);
    sql.push(" FROM builds WHERE true");
    if let Some(status) = query.status {
        sql.push(" AND status = ").push_bind(status.as_str());
    }
    if let Some(trigger) = &query.trigger {
        sql.push(" AND trigger_name = ").push_bind(trigger.as_str());
    }
    if let Some(schedule) = &query.schedule {
        sql.push(" AND schedule_name = ")
            .push_bind(schedule.as_str());
    }
    if let Some(wanted) = &query.branch {
        sql.push(format!(" AND {branch} = "))
            .push_bind(wanted.as_str());
    }
    if let Some(before) = &query.before {
        sql.push(" AND (create_time, id) < (SELECT create_time, id FROM builds WHERE id = ")
            .push_bind(before.as_str())
            .push(")");
    }
    sql.push(" ORDER BY create_time DESC, id DESC LIMIT ")
        .push_bind(i64::from(query.limit))
        .push(" OFFSET ")
        .push_bind(i64::from(query.offset));
    sql
}

/// Builds' records from their rows and their steps' rows (in build and index order).
pub(super) fn build_records(rows: &[impl Columns], step_rows: &[impl Columns]) -> Vec<BuildRecord> {
    let mut steps: HashMap<String, Vec<StepRecord>> = HashMap::new();
    for row in step_rows {
        let build: String = row.column("build_id");
        steps.entry(build).or_default().push(step_record(row));
    }
    rows.iter()
        .map(|row| {
            let id: String = row.column("id");
            build_record(row, steps.remove(&id).unwrap_or_default())
        })
        .collect()
}

/// The build whose id is `id` or starts with it, of the (at most two) rows a lookup by prefix
/// found, the exact id first: `None` if there is none, or two.
pub(super) fn by_prefix<'r, R: Columns>(rows: &'r [R], id: &str) -> Option<&'r R> {
    match rows {
        [row] => Some(row),
        [first, _] if first.column::<String>("id") == id => Some(first),
        _ => None,
    }
}

pub(super) fn build_record(row: &impl Columns, steps: Vec<StepRecord>) -> BuildRecord {
    BuildRecord {
        concurrency: super::queue::concurrency_group(row),
        id: row.column("id"),
        status: status(row.column("status")),
        create_time: time(row.column("create_time")),
        start_time: row.column::<Option<i64>>("start_time").map(time),
        finish_time: row.column::<Option<i64>>("finish_time").map(time),
        trigger: row.column("trigger_name"),
        schedule: row.column("schedule_name"),
        source: parse_json(row.column("source")),
        substitutions: serde_json::from_str(&row.column::<String>("substitutions"))
            .unwrap_or_default(),
        plan: parse_json(row.column("plan")),
        images: serde_json::from_str(&row.column::<String>("images")).unwrap_or_default(),
        templates: serde_json::from_str(&row.column::<String>("templates")).unwrap_or_default(),
        failure: row.column("failure"),
        approval: approval(row),
        build_step_outputs: steps
            .iter()
            .map(|step| {
                let output = step.result.output.as_deref().unwrap_or_default();
                base64::engine::general_purpose::STANDARD.encode(output)
            })
            .collect(),
        steps,
    }
}

/// A build's approval, from its columns (migration 0023).
fn approval(row: &impl Columns) -> Option<Approval> {
    let state = ApprovalState::parse(&row.column::<Option<String>>("approval_state")?)?;
    let decision = match state {
        ApprovalState::Approved => Some(Decision::Approved),
        ApprovalState::Rejected => Some(Decision::Rejected),
        ApprovalState::Pending | ApprovalState::Cancelled => None,
    };
    let result = decision.and_then(|decision| {
        Some(ApprovalResult {
            approver_account: row.column("approver"),
            approval_time: time(row.column::<Option<i64>>("approval_time")?),
            decision,
            comment: row.column("approval_comment"),
        })
    });
    Some(Approval {
        state,
        config: ApprovalConfig {
            approval_required: true,
        },
        result,
    })
}

pub(super) fn step_record(row: &impl Columns) -> StepRecord {
    StepRecord {
        index: row.column::<i64>("idx") as usize,
        id: row.column("step_id"),
        name: row.column("name"),
        result: StepResult {
            status: status(row.column("status")),
            exit_code: row.column("exit_code"),
            start_time: row.column::<Option<i64>>("start_time").map(time),
            end_time: row.column::<Option<i64>>("finish_time").map(time),
            image_digest: row.column("image_digest"),
            detail: row.column("detail"),
            output: row.column("output"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::store::test_support::{queued, store};
    use crate::adapters::store::{Queue as _, QueuedBuild};

    /// Each filter of the builds list, and the page after a build, is read from an index in
    /// page order: never a scan of the table nor a sort of every matching row.
    #[tokio::test]
    async fn build_pages_are_read_from_indexes() {
        let (_dir, store) = store().await;
        let some = || Some("x".to_string());
        let filters = [
            BuildQuery::default(),
            BuildQuery {
                status: Some(Status::Failure),
                ..Default::default()
            },
            BuildQuery {
                trigger: some(),
                ..Default::default()
            },
            BuildQuery {
                schedule: some(),
                ..Default::default()
            },
            BuildQuery {
                branch: some(),
                ..Default::default()
            },
        ];
        for filter in filters {
            for query in [
                filter.clone(),
                BuildQuery {
                    before: some(),
                    ..filter.clone()
                },
            ] {
                let explain = "EXPLAIN QUERY PLAN SELECT *";
                let plan: Vec<String> =
                    select_builds::<sqlx::Sqlite>(SQLITE_BRANCH, explain, &query)
                        .build()
                        .fetch_all(&store.pool)
                        .await
                        .unwrap()
                        .iter()
                        .map(|row| row.get("detail"))
                        .collect();
                let scans_or_sorts = |step: &String| {
                    step.contains("TEMP B-TREE")
                        || (step.starts_with("SCAN builds") && !step.contains("INDEX"))
                };
                assert!(!plan.iter().any(scans_or_sorts), "{query:?}: {plan:?}");
            }
        }
    }

    #[tokio::test]
    async fn build_pages_follow_each_other_newest_first() {
        let (_dir, store) = store().await;
        let builds: Vec<QueuedBuild> = (0..5)
            .map(|i| queued("t", if i % 2 == 0 { "main" } else { "dev" }))
            .collect();
        for build in &builds {
            store
                .queue_builds(std::slice::from_ref(build))
                .await
                .unwrap();
        }
        // Builds of the same millisecond are told apart by their ids.
        sqlx::query("UPDATE builds SET create_time = 1000 WHERE rowid % 2 = 0")
            .execute(&store.pool)
            .await
            .unwrap();
        let page = |before: Option<String>, branch: Option<&str>| {
            let query = BuildQuery {
                limit: 2,
                before,
                branch: branch.map(str::to_string),
                ..Default::default()
            };
            let store = store.clone();
            async move {
                let ids = store.list_builds(&query).await.unwrap();
                ids.into_iter().map(|b| b.id).collect::<Vec<_>>()
            }
        };
        let mut all = Vec::new();
        let mut before = None;
        loop {
            let ids = page(before, None).await;
            let Some(last) = ids.last().cloned() else {
                break;
            };
            all.extend(ids);
            before = Some(last);
        }
        let mut expected: Vec<(i64, String)> = Vec::new();
        for id in builds.iter().map(|b| &b.id) {
            let row = sqlx::query("SELECT create_time FROM builds WHERE id = $1")
                .bind(id)
                .fetch_one(&store.pool)
                .await
                .unwrap();
            expected.push((row.get("create_time"), id.clone()));
        }
        expected.sort_by(|a, b| b.cmp(a));
        let expected: Vec<String> = expected.into_iter().map(|(_, id)| id).collect();
        assert_eq!(all, expected);
        let main: Vec<String> = all
            .iter()
            .filter(|id| {
                builds
                    .iter()
                    .any(|b| &b.id == *id && b.substitutions["BRANCH_NAME"] == "main")
            })
            .take(2)
            .cloned()
            .collect();
        assert_eq!(page(None, Some("main")).await, main);
    }
}
