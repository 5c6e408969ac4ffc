//! A build as Cloud Build's `Build` resource (v1 REST reference,
//! <https://cloud.google.com/build/docs/api/reference/rest/v1/projects.builds#Build>): the JSON
//! Cloud Build publishes on its `cloud-builds` Pub/Sub topic at each status change, which
//! notifiers read. Made from the API's JSON of a build (`wire::Build`) and its resolved plan.
//!
//! Written as proto3 JSON is: camelCase names, enums by name, times RFC 3339 in UTC (`Z`),
//! durations in seconds (`"600s"`), and a field at its default (empty, zero, false, absent) left
//! out, as Cloud Build's own JSON leaves it out. No secret value is ever in it: a build's plan
//! holds none (steps' environments exclude secrets, `availableSecrets` names versions), and a
//! clone URL loses any credentials it carries.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::core::build::{Status, rfc3339};
use crate::core::plan::{BUILDER_OUTPUT, HOME, WORKSPACE};
use crate::core::substitute;
use crate::core::wire;

/// Cloud Build's `Build` resource for `build` (v1 REST reference, camelCase, times RFC 3339 with
/// `Z`, durations as "600s"), as Cloud Build publishes it on its `cloud-builds` Pub/Sub topic.
/// `project` is the builder project id (Machine.project); `build_page` is the build's console URL
/// (goes into `logUrl`).
pub fn build_resource(build: &wire::Build, project: &str, build_page: &str) -> Value {
    // `null` while queued; a plan that does not read as one (written before a field changed its
    // type) counts as none, and the resource has what the record alone says.
    let parsed: Option<Plan> = serde_json::from_value(build.plan.clone()).ok();
    let plan = parsed.as_ref();
    let steps = steps(build, plan);
    let source = source(build, project);
    let mut resource = json!({
        "id": build.id,
        "name": format!("projects/{project}/locations/global/builds/{}", build.id),
        "projectId": project,
        "status": status_name(build.status),
        "statusDetail": build.failure.as_deref().or(build.waiting_for.as_deref()),
        "source": source,
        // The commit a triggered build ran is already fixed, so its provenance is its source.
        "sourceProvenance": source.get("gitSource").map(|git| json!({"resolvedGitSource": git})),
        "steps": steps,
        "results": results(build, plan),
        "createTime": rfc3339::format(build.create_time),
        "startTime": build.start_time.map(rfc3339::format),
        "finishTime": build.finish_time.map(rfc3339::format),
        "logUrl": build_page,
        // builder's triggers have names, not ids: the name is what identifies one.
        "buildTriggerId": build.trigger,
        "approval": build.approval,
        "failureInfo": failure_info(build, plan),
        "timing": {"BUILD": build_timing(build)},
        // What only a plan knows: the config's fields, resolved.
        "images": plan.map(|plan| &plan.images),
        "tags": plan.map(|plan| &plan.tags),
        "timeout": plan.and_then(|plan| plan.timeout).map(duration),
        "queueTtl": plan.and_then(|plan| plan.queue_ttl).map(duration),
        "options": plan.map(|plan| options(plan, project)),
        "availableSecrets": plan.map(|plan| json!({"secretManager": plan.secrets})),
        "artifacts": plan.map(|plan| json!({"objects": {
            "location": plan.artifacts.objects_location,
            "paths": plan.artifacts.objects_paths,
        }})),
        "warnings": plan.map(warnings),
    });
    prune(&mut resource);
    // A map's values are kept as they are, empty ones too (proto3 JSON writes every map entry).
    let substitutions = substitutions(build, plan);
    if !substitutions.is_empty() {
        resource["substitutions"] = json!(substitutions);
    }
    resource
}

/// `status` as Cloud Build's `Build.Status` names it. builder's names are Cloud Build's, but for
/// REJECTED, which `Build.Status` does not have (a rejected build's status is not documented,
/// spec §7): a rejected build shows as CANCELLED (it never ran, a person stopped it) and its
/// `approval.state` says REJECTED. A message's `status` attribute must be this name too.
pub fn status_name(status: Status) -> &'static str {
    match status {
        Status::Rejected => Status::Cancelled.as_str(),
        status => status.as_str(),
    }
}

/// The plan's fields the resource shows, as the plan is stored (`ResolvedBuild` as JSON); what
/// a plan lacks reads as empty.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Plan {
    steps: Vec<PlanStep>,
    images: Vec<String>,
    tags: Vec<String>,
    timeout: Option<f64>,
    queue_ttl: Option<f64>,
    options: PlanOptions,
    pool: Option<String>,
    secrets: Vec<SecretVersion>,
    artifacts: PlanArtifacts,
    /// Only whether there are any: their push is part of the build's results push.
    templates: Vec<Value>,
    substitutions: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct PlanStep {
    id: Option<String>,
    name: String,
    image_warning: Option<String>,
    args: Vec<String>,
    env: Vec<String>,
    dir: String,
    entrypoint: Option<String>,
    script: Option<String>,
    volumes: Vec<Volume>,
    secret_env: Vec<String>,
    timeout: Option<f64>,
    allow_failure: bool,
    allow_exit_codes: Vec<i64>,
    dependencies: Vec<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct PlanOptions {
    substitution_option: String,
    dynamic_substitutions: bool,
    automap_substitutions: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct PlanArtifacts {
    objects_location: Option<String>,
    objects_paths: Vec<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default)]
struct Volume {
    name: String,
    path: String,
}

/// A Secret Manager version a step gets as `env`: names only.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
struct SecretVersion {
    env: String,
    version_name: String,
}

/// The plan's `options`, as Cloud Build shows a build's (proto3 JSON leaves out MUST_MATCH, the
/// enum's zero, as it leaves out false).
fn options(plan: &Plan, project: &str) -> Value {
    json!({
        "substitutionOption": Some(&plan.options.substitution_option)
            .filter(|option| *option != "MUST_MATCH"),
        "dynamicSubstitutions": plan.options.dynamic_substitutions,
        "automapSubstitutions": plan.options.automap_substitutions,
        "pool": plan.pool.as_ref().map(|pool| {
            json!({"name": format!("projects/{project}/locations/global/workerPools/{pool}")})
        }),
    })
}

/// What the user should know of the plan: a step's image runs at another version than its name
/// asks for.
fn warnings(plan: &Plan) -> Vec<Value> {
    plan.steps
        .iter()
        .filter_map(|step| step.image_warning.as_ref())
        .map(|text| json!({"text": text, "priority": "WARNING"}))
        .collect()
}

/// The steps: as the plan resolved them, with how each ran; a build not yet planned shows the
/// steps its record has (none, while it waits).
fn steps(build: &wire::Build, plan: Option<&Plan>) -> Vec<Value> {
    let plan_steps = plan.map_or(&[][..], |plan| &plan.steps[..]);
    let count = plan_steps
        .len()
        .max(build.steps.iter().map(|s| s.index + 1).max().unwrap_or(0));
    (0..count)
        .map(|index| {
            let record = build.steps.iter().find(|s| s.index == index);
            let mut step = match plan_steps.get(index) {
                Some(planned) => planned_step(planned, index, plan_steps, plan),
                None => json!({
                    "name": record.map(|r| r.name.as_str()),
                    "id": record.and_then(|r| r.id.as_deref()),
                }),
            };
            if let Some(record) = record {
                let result = &record.result;
                step["status"] = json!(status_name(result.status));
                step["exitCode"] = json!(result.exit_code);
                step["timing"] = json!({
                    "startTime": result.start_time.map(rfc3339::format),
                    "endTime": result.end_time.map(rfc3339::format),
                });
            }
            step
        })
        .collect()
}

/// A planned step as its config wrote it, substituted. The plan keeps the resolved step, so the
/// written form is read back: `dir` relative to `/workspace`, `waitFor` from the steps it waits
/// for, and `env` without what builder gives every step (`HOME`, `BUILDER_OUTPUT`) nor, with
/// `options.automapSubstitutions`, the substitutions. `options.env` and `options.volumes` stay in
/// each step's `env` and `volumes`, where the plan put them.
fn planned_step(step: &PlanStep, index: usize, steps: &[PlanStep], plan: Option<&Plan>) -> Value {
    let automapped = plan
        .filter(|plan| plan.options.automap_substitutions)
        .map(|plan| &plan.substitutions);
    let env: Vec<&String> = step
        .env
        .iter()
        .filter(|entry| {
            let Some((key, value)) = entry.split_once('=') else {
                return true;
            };
            let given = matches!(
                (key, value),
                ("HOME", HOME) | ("BUILDER_OUTPUT", BUILDER_OUTPUT)
            );
            let mapped =
                automapped.is_some_and(|values| values.get(key).is_some_and(|v| v == value));
            !given && !mapped
        })
        .collect();
    let dir = match step.dir.strip_prefix(WORKSPACE) {
        Some("") => "",
        Some(relative) => relative.strip_prefix('/').unwrap_or(&step.dir),
        None => &step.dir,
    };
    json!({
        "name": step.name,
        "id": step.id,
        "args": step.args,
        "env": env,
        "dir": dir,
        "entrypoint": step.entrypoint,
        "script": step.script,
        "waitFor": wait_for(&step.dependencies, index, steps),
        "secretEnv": step.secret_env,
        "volumes": step.volumes,
        "timeout": step.timeout.map(duration),
        "allowFailure": step.allow_failure,
        "allowExitCodes": step.allow_exit_codes,
    })
}

/// `waitFor` for a step that waits for `dependencies` (indices): nothing when it waits for every
/// earlier step (Cloud Build's default), `-` when for none, else the ids of those it waits for
/// (a step is waited for by its id, so each has one).
fn wait_for(dependencies: &[usize], index: usize, steps: &[PlanStep]) -> Vec<String> {
    if dependencies.iter().copied().eq(0..index) {
        return Vec::new();
    }
    if dependencies.is_empty() {
        return vec!["-".to_string()];
    }
    dependencies
        .iter()
        .filter_map(|&i| steps.get(i)?.id.clone())
        .collect()
}

/// What the build made: pushed images with digests, each step's builder image digest and output
/// (by step index, empty where there is none).
fn results(build: &wire::Build, plan: Option<&Plan>) -> Value {
    let count = plan.map_or(0, |plan| plan.steps.len());
    let mut step_images = vec![String::new(); count];
    for step in &build.steps {
        if let Some(digest) = &step.result.image_digest {
            if step.index >= step_images.len() {
                step_images.resize(step.index + 1, String::new());
            }
            step_images[step.index] = digest.clone();
        }
    }
    let any = |list: &[String]| list.iter().any(|s| !s.is_empty());
    json!({
        "images": build.images.iter().map(|image| {
            json!({"name": image.name, "digest": image.digest})
        }).collect::<Vec<_>>(),
        "buildStepImages": Some(&step_images).filter(|list| any(list)),
        "buildStepOutputs": Some(&build.build_step_outputs).filter(|list| any(list)),
    })
}

/// `timing.BUILD`: from the first step's start to the last step's end, once the build is over.
fn build_timing(build: &wire::Build) -> Value {
    let results = build.steps.iter().map(|s| &s.result);
    let start = results.clone().filter_map(|r| r.start_time).min();
    let end = results
        .filter_map(|r| r.end_time)
        .max()
        .filter(|_| build.status.is_final());
    match start {
        Some(start) => json!({
            "startTime": rfc3339::format(start),
            "endTime": end.map(rfc3339::format),
        }),
        None => Value::Null,
    }
}

/// Where the source came from, as Cloud Build records it.
///
/// A trigger's commit is a `gitSource` (a Git repository by URL at a revision): `repoSource`
/// names a Cloud Source Repository by project and name, which a GitHub repository is not. An
/// upload is a `storageSource` as `gcloud builds submit` makes one, an archive in the project's
/// `PROJECT_cloudbuild` bucket, the object named after the stored upload (or, for a `builder
/// submit` on one machine, which keeps no archive, after the build). No source: none.
fn source(build: &wire::Build, project: &str) -> Value {
    let text = |key: &str| build.source.get(key).and_then(Value::as_str);
    match text("kind") {
        Some("github") => json!({"gitSource": {
            "url": text("cloneUrl").map(without_credentials),
            "revision": text("commit"),
        }}),
        Some("upload") => {
            let object = match (text("upload"), text("dir")) {
                (Some(upload), _) => upload,
                (None, Some(_)) => build.id.as_str(),
                (None, None) => return Value::Null,
            };
            json!({"storageSource": {
                "bucket": format!("{project}_cloudbuild"),
                "object": format!("source/{object}.tgz"),
            }})
        }
        _ => Value::Null,
    }
}

/// `url` without the user and password a URL may carry before its host.
fn without_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority = rest.split('/').next().unwrap_or_default();
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://{host}{}", &rest[authority.len()..]),
        None => url.to_string(),
    }
}

/// The substitutions Cloud Build keeps with a build: the user's and the built-ins the build's
/// source gave (a trigger's `BRANCH_NAME`, `COMMIT_SHA`…), as resolved once the build is planned.
/// Built-ins with no value and those every build has from its machine (`PROJECT_ID`, `BUILD_ID`,
/// `LOCATION`…) are not stored with a Cloud Build build.
fn substitutions(build: &wire::Build, plan: Option<&Plan>) -> BTreeMap<String, String> {
    const MACHINE: [&str; 6] = [
        "PROJECT_ID",
        "BUILD_ID",
        "PROJECT_NUMBER",
        "LOCATION",
        "SERVICE_ACCOUNT_EMAIL",
        "SERVICE_ACCOUNT",
    ];
    let values = plan.map_or(&build.substitutions, |plan| &plan.substitutions);
    values
        .iter()
        .filter(|(key, value)| {
            substitute::is_user_key(key) || (!value.is_empty() && !MACHINE.contains(&key.as_str()))
        })
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

/// Why a FAILURE failed, when the record tells (Cloud Build sets `failureInfo` on FAILURE only):
/// the source could not be fetched (builder's own words for it), a step failed that the build
/// does not tolerate, the images were not built, or else, the steps having passed, the push of
/// the build's images or templates failed.
fn failure_info(build: &wire::Build, plan: Option<&Plan>) -> Value {
    if build.status != Status::Failure {
        return Value::Null;
    }
    let failure = build.failure.as_deref().unwrap_or_default();
    let step_failed = build.steps.iter().any(|step| {
        let result = &step.result;
        let planned = plan.and_then(|plan| plan.steps.get(step.index));
        matches!(result.status, Status::Failure | Status::Timeout)
            && !planned.is_some_and(|planned| match &planned.allow_exit_codes[..] {
                [] => planned.allow_failure,
                codes => result.exit_code.is_some_and(|code| codes.contains(&code)),
            })
    });
    let pushes = plan.is_some_and(|plan| !plan.images.is_empty() || !plan.templates.is_empty());
    let kind = if failure.starts_with("fetching the source failed")
        || failure.starts_with("reading the uploaded source failed")
    {
        Some("FETCH_SOURCE_FAILED")
    } else if step_failed {
        Some("USER_BUILD_STEP")
    } else if failure.starts_with("failed to find one or more images") {
        Some("PUSH_IMAGE_NOT_FOUND")
    } else if pushes {
        Some("PUSH_FAILED")
    } else {
        None
    };
    json!({"type": kind, "detail": failure})
}

/// Seconds as a protobuf `Duration` in JSON: whole seconds, or 3, 6 or 9 fractional digits.
fn duration(seconds: f64) -> String {
    let nanos = (seconds * 1e9).round() as u64;
    let (whole, fraction) = (nanos / 1_000_000_000, nanos % 1_000_000_000);
    match fraction {
        0 => format!("{whole}s"),
        f if f % 1_000_000 == 0 => format!("{whole}.{:03}s", f / 1_000_000),
        f if f % 1_000 == 0 => format!("{whole}.{:06}s", f / 1_000),
        f => format!("{whole}.{f:09}s"),
    }
}

/// Leaves out every message field at its default, as proto3 JSON does: null, `""`, `0`, `false`,
/// `[]`, `{}`. A list keeps its elements (`buildStepImages` has `""` for steps without a digest).
fn prune(value: &mut Value) {
    match value {
        Value::Object(fields) => {
            for field in fields.values_mut() {
                prune(field);
            }
            fields.retain(|_, field| !is_default(field));
        }
        Value::Array(items) => items.iter_mut().for_each(prune),
        _ => {}
    }
}

fn is_default(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(items) => items.is_empty(),
        Value::Object(fields) => fields.is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::core::build::{
        Approval, ApprovalConfig, ApprovalResult, ApprovalState, Decision, PushedImage, StepResult,
    };
    use crate::core::plan::{Context, Inputs, load, machine_built_ins, resolve};
    use crate::core::substitute::Values;

    const PAGE: &str = "https://ci.example.com/builds/b-1";

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + seconds)
    }

    fn values(pairs: &[(&str, &str)]) -> Values {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The plan of `yaml` as a trigger's build of `main` at commit `c0ffee…` stores it.
    fn plan(yaml: &str) -> Value {
        let loaded = load(yaml.as_bytes()).expect("a config");
        assert!(!loaded.diagnostics.has_errors(), "{:?}", loaded.diagnostics);
        let mut built_ins = machine_built_ins("proj", "b-1");
        built_ins.extend(values(&[
            ("COMMIT_SHA", "c0ffee0000000000000000000000000000000000"),
            ("BRANCH_NAME", "main"),
            ("REPO_NAME", "app"),
            ("REPO_FULL_NAME", "acme/app"),
            ("TRIGGER_NAME", "deploy"),
        ]));
        let inputs = Inputs {
            context: Context::Trigger,
            built_ins,
            overrides: values(&[("_SERVICE", "web")]),
            ..Inputs::default()
        };
        let resolved = resolve(&loaded.config, &inputs).expect("a plan");
        serde_json::to_value(resolved).expect("a plan's JSON")
    }

    fn step(index: usize, id: Option<&str>, name: &str, result: StepResult) -> wire::Step {
        wire::Step {
            index,
            id: id.map(str::to_string),
            name: name.to_string(),
            result,
        }
    }

    fn ran(status: Status, exit_code: i64, start: u64, end: u64) -> StepResult {
        StepResult {
            status,
            exit_code: Some(exit_code),
            start_time: Some(at(start)),
            end_time: Some(at(end)),
            image_digest: Some(format!("sha256:{start:064}")),
            ..StepResult::queued()
        }
    }

    /// A build of trigger `deploy` at `status`, queued with nothing run.
    fn queued() -> wire::Build {
        wire::Build {
            id: "b-1".into(),
            status: Status::Queued,
            create_time: at(0),
            start_time: None,
            finish_time: None,
            trigger: Some("deploy".into()),
            schedule: None,
            source: json!({
                "kind": "github",
                "repository": "acme/app",
                "cloneUrl": "https://x-token:hunter2@github.com/acme/app.git",
                "ref": "main",
                "commit": "c0ffee0000000000000000000000000000000000",
            }),
            substitutions: values(&[
                ("BRANCH_NAME", "main"),
                ("COMMIT_SHA", "c0ffee0000000000000000000000000000000000"),
                ("TAG_NAME", ""),
                ("_SERVICE", "web"),
            ]),
            plan: Value::Null,
            images: Vec::new(),
            templates: Vec::new(),
            failure: None,
            steps: Vec::new(),
            build_step_outputs: Vec::new(),
            approval: None,
            waiting_for: None,
            github: None,
        }
    }

    const CONFIG: &str = r#"
steps:
  - id: test
    name: gcr.io/cloud-builders/docker
    args: [build, -t, "gcr.io/$PROJECT_ID/$_SERVICE:$SHORT_SHA", .]
    env: [MODE=ci]
    dir: app
    timeout: 90.5s
  - id: lint
    name: busybox
    entrypoint: sh
    args: [-c, "exit 3"]
    waitFor: ["-"]
    secretEnv: [TOKEN]
    allowExitCodes: [3]
  - name: busybox
    script: echo done
    waitFor: [test]
    allowFailure: true
images: ["gcr.io/$PROJECT_ID/$_SERVICE:$SHORT_SHA"]
tags: [deploy, "$_SERVICE"]
timeout: 1200s
queueTtl: 300s
availableSecrets:
  secretManager:
    - versionName: projects/proj/secrets/token/versions/3
      env: TOKEN
"#;

    /// [`CONFIG`] run to its end: its first step failed, so nothing was pushed.
    fn failed() -> wire::Build {
        let digest = |n: u64| format!("sha256:{n:064}");
        wire::Build {
            status: Status::Failure,
            start_time: Some(at(10)),
            finish_time: Some(at(60)),
            plan: plan(CONFIG),
            failure: Some(
                "build step 0 \"gcr.io/cloud-builders/docker\" failed: step exited with \
                 non-zero status: 1"
                    .into(),
            ),
            steps: vec![
                step(
                    0,
                    Some("test"),
                    "gcr.io/cloud-builders/docker",
                    ran(Status::Failure, 1, 11, 40),
                ),
                step(1, Some("lint"), "busybox", ran(Status::Failure, 3, 11, 12)),
                step(2, None, "busybox", StepResult::queued()),
            ],
            build_step_outputs: vec![String::new(), "b2s=".into(), String::new()],
            images: vec![PushedImage {
                name: "gcr.io/proj/web:c0ffee0".into(),
                digest: digest(7),
                pushed_to: None,
            }],
            ..queued()
        }
    }

    #[test]
    fn a_failed_build_renders_its_config_its_steps_and_why() {
        let resource = build_resource(&failed(), "proj", PAGE);
        let step = |i: usize| &resource["steps"][i];
        assert_eq!(resource["id"], "b-1");
        assert_eq!(
            resource["name"],
            "projects/proj/locations/global/builds/b-1"
        );
        assert_eq!(resource["projectId"], "proj");
        assert_eq!(resource["status"], "FAILURE");
        assert_eq!(
            resource["statusDetail"],
            "build step 0 \"gcr.io/cloud-builders/docker\" failed: step exited with non-zero \
             status: 1"
        );
        assert_eq!(resource["failureInfo"]["type"], "USER_BUILD_STEP");
        assert_eq!(resource["failureInfo"]["detail"], resource["statusDetail"]);
        assert_eq!(resource["createTime"], "2023-11-14T22:13:20.000Z");
        assert_eq!(resource["startTime"], "2023-11-14T22:13:30.000Z");
        assert_eq!(resource["finishTime"], "2023-11-14T22:14:20.000Z");
        assert_eq!(resource["logUrl"], PAGE);
        assert_eq!(resource["buildTriggerId"], "deploy");
        assert_eq!(resource["timeout"], "1200s");
        assert_eq!(resource["queueTtl"], "300s");
        assert_eq!(resource["images"], json!(["gcr.io/proj/web:c0ffee0"]));
        assert_eq!(resource["tags"], json!(["deploy", "web"]));
        assert_eq!(
            resource["source"],
            json!({"gitSource": {
                "url": "https://github.com/acme/app.git",
                "revision": "c0ffee0000000000000000000000000000000000",
            }})
        );
        assert_eq!(
            resource["sourceProvenance"]["resolvedGitSource"],
            resource["source"]["gitSource"]
        );
        // Trigger builds are loose and dynamic; automap is off, so it is left out.
        assert_eq!(
            resource["options"],
            json!({"substitutionOption": "ALLOW_LOOSE", "dynamicSubstitutions": true})
        );
        assert_eq!(
            resource["availableSecrets"],
            json!({"secretManager": [
                {"env": "TOKEN", "versionName": "projects/proj/secrets/token/versions/3"},
            ]})
        );
        // The user's values, and the built-ins the push gave, resolved; no empty built-in, none
        // of the machine's.
        assert_eq!(
            resource["substitutions"],
            json!({
                "BRANCH_NAME": "main",
                "COMMIT_SHA": "c0ffee0000000000000000000000000000000000",
                "REF_NAME": "main",
                "REPO_FULL_NAME": "acme/app",
                "REPO_NAME": "app",
                "REVISION_ID": "c0ffee0000000000000000000000000000000000",
                "SHORT_SHA": "c0ffee0",
                "TRIGGER_NAME": "deploy",
                "_SERVICE": "web",
            })
        );
        assert_eq!(
            step(0),
            &json!({
                "id": "test",
                "name": "gcr.io/cloud-builders/docker",
                "args": ["build", "-t", "gcr.io/proj/web:c0ffee0", "."],
                "env": ["MODE=ci"],
                "dir": "app",
                "timeout": "90.500s",
                "status": "FAILURE",
                "exitCode": 1,
                "timing": {
                    "startTime": "2023-11-14T22:13:31.000Z",
                    "endTime": "2023-11-14T22:14:00.000Z",
                },
            })
        );
        assert_eq!(step(1)["waitFor"], json!(["-"]));
        assert_eq!(step(1)["entrypoint"], "sh");
        assert_eq!(step(1)["secretEnv"], json!(["TOKEN"]));
        assert_eq!(step(1)["allowExitCodes"], json!([3]));
        assert_eq!(step(2)["waitFor"], json!(["test"]));
        assert_eq!(step(2)["script"], "echo done");
        assert_eq!(step(2)["allowFailure"], true);
        assert_eq!(step(2)["status"], "QUEUED");
        assert!(step(2).get("timing").is_none() && step(2).get("exitCode").is_none());
        assert_eq!(
            resource["results"],
            json!({
                "images": [{"name": "gcr.io/proj/web:c0ffee0", "digest": format!("sha256:{:064}", 7)}],
                "buildStepImages": [format!("sha256:{:064}", 11), format!("sha256:{:064}", 11), ""],
                "buildStepOutputs": ["", "b2s=", ""],
            })
        );
        assert_eq!(
            resource["timing"],
            json!({"BUILD": {
                "startTime": "2023-11-14T22:13:31.000Z",
                "endTime": "2023-11-14T22:14:00.000Z",
            }})
        );
        let text = resource.to_string();
        assert!(!text.contains("hunter2"), "a credential leaked: {text}");
    }

    #[test]
    fn a_queued_build_has_only_what_its_record_says() {
        let resource = build_resource(&queued(), "proj", PAGE);
        assert_eq!(
            resource,
            json!({
                "id": "b-1",
                "name": "projects/proj/locations/global/builds/b-1",
                "projectId": "proj",
                "status": "QUEUED",
                "source": {"gitSource": {
                    "url": "https://github.com/acme/app.git",
                    "revision": "c0ffee0000000000000000000000000000000000",
                }},
                "sourceProvenance": {"resolvedGitSource": {
                    "url": "https://github.com/acme/app.git",
                    "revision": "c0ffee0000000000000000000000000000000000",
                }},
                "createTime": "2023-11-14T22:13:20.000Z",
                "logUrl": PAGE,
                "buildTriggerId": "deploy",
                "substitutions": {
                    "BRANCH_NAME": "main",
                    "COMMIT_SHA": "c0ffee0000000000000000000000000000000000",
                    "_SERVICE": "web",
                },
            })
        );
    }

    #[test]
    fn failures_name_their_kind_when_the_record_tells() {
        let kind = |build: &wire::Build| build_resource(build, "p", PAGE)["failureInfo"].clone();
        let fetch = wire::Build {
            status: Status::Failure,
            failure: Some("fetching the source failed: no such commit".into()),
            ..queued()
        };
        assert_eq!(
            kind(&fetch),
            json!({"type": "FETCH_SOURCE_FAILED", "detail": "fetching the source failed: no such commit"})
        );
        let passed = |failure: &str| wire::Build {
            failure: Some(failure.into()),
            steps: (0..3)
                .map(|i| step(i, None, "busybox", ran(Status::Success, 0, 1, 2)))
                .collect(),
            ..failed()
        };
        let missing = "failed to find one or more images after execution of build steps: [\"x\"]";
        assert_eq!(kind(&passed(missing))["type"], "PUSH_IMAGE_NOT_FOUND");
        assert_eq!(
            kind(&passed("pushing gcr.io/x failed"))["type"],
            "PUSH_FAILED"
        );
        // A step the build tolerates is not why it failed; the push is.
        let tolerated = wire::Build {
            steps: vec![
                step(0, None, "docker", ran(Status::Success, 0, 1, 2)),
                step(1, None, "busybox", ran(Status::Failure, 3, 1, 2)),
                step(2, None, "busybox", ran(Status::Failure, 1, 2, 3)),
            ],
            ..passed("pushing gcr.io/x failed")
        };
        assert_eq!(kind(&tolerated)["type"], "PUSH_FAILED");
        let config = wire::Build {
            status: Status::Failure,
            failure: Some("the config has errors".into()),
            ..queued()
        };
        assert_eq!(kind(&config), json!({"detail": "the config has errors"}));
        assert_eq!(
            kind(&wire::Build {
                status: Status::Timeout,
                ..failed()
            }),
            Value::Null
        );
    }

    #[test]
    fn a_rejected_build_is_a_cancelled_one_whose_approval_says_why() {
        let build = wire::Build {
            status: Status::Rejected,
            finish_time: Some(at(30)),
            approval: Some(Approval {
                state: ApprovalState::Rejected,
                config: ApprovalConfig {
                    approval_required: true,
                },
                result: Some(ApprovalResult {
                    approver_account: "api-token".into(),
                    approval_time: at(30),
                    decision: Decision::Rejected,
                    comment: Some("not today".into()),
                }),
            }),
            ..queued()
        };
        let resource = build_resource(&build, "proj", PAGE);
        assert_eq!(resource["status"], "CANCELLED");
        assert_eq!(
            resource["approval"],
            json!({
                "state": "REJECTED",
                "config": {"approvalRequired": true},
                "result": {
                    "approverAccount": "api-token",
                    "approvalTime": "2023-11-14T22:13:50.000Z",
                    "decision": "REJECTED",
                    "comment": "not today",
                },
            })
        );
        for status in Status::ALL {
            assert_ne!(status_name(status), "REJECTED");
        }
    }

    #[test]
    fn uploads_are_storage_sources_and_no_source_is_none() {
        let source = |source: Value| {
            let build = wire::Build {
                trigger: None,
                source,
                ..queued()
            };
            build_resource(&build, "proj", PAGE).get("source").cloned()
        };
        assert_eq!(
            source(json!({"kind": "upload", "upload": "u-9"})),
            Some(
                json!({"storageSource": {"bucket": "proj_cloudbuild", "object": "source/u-9.tgz"}})
            )
        );
        assert_eq!(
            source(json!({"kind": "upload", "dir": "/src/app", "files": 3, "bytes": 10})),
            Some(
                json!({"storageSource": {"bucket": "proj_cloudbuild", "object": "source/b-1.tgz"}})
            )
        );
        assert_eq!(source(json!({"kind": "upload", "upload": null})), None);
        assert_eq!(source(json!({"kind": "none"})), None);
    }

    #[test]
    fn durations_are_protobuf_durations() {
        assert_eq!(duration(600.0), "600s");
        assert_eq!(duration(1.5), "1.500s");
        assert_eq!(duration(0.000_25), "0.000250s");
        assert_eq!(duration(2.000_000_001), "2.000000001s");
    }

    /// Cloud Build's `Build` resource, message by message: each field's JSON name and what it
    /// holds (another message, `map:` of one, or `""` for a scalar, a list of scalars or a map of
    /// strings). From the v1 REST reference
    /// (<https://cloud.google.com/build/docs/api/reference/rest/v1/projects.builds#Build> and the
    /// types it links: BuildStep, Results, BuiltImage, Source, GitSource, StorageSource,
    /// SourceProvenance, BuildOptions, PoolOption, Secrets, SecretManagerSecret, InlineSecret,
    /// Artifacts, ArtifactObjects, BuildApproval, ApprovalConfig, ApprovalResult, FailureInfo,
    /// Warning, TimeSpan, Volume), as the discovery document behind it names them.
    const DOCUMENTED: &[(&str, &[(&str, &str)])] = &[
        (
            "Build",
            &[
                ("name", ""),
                ("id", ""),
                ("projectId", ""),
                ("status", ""),
                ("statusDetail", ""),
                ("source", "Source"),
                ("steps", "BuildStep"),
                ("results", "Results"),
                ("createTime", ""),
                ("startTime", ""),
                ("finishTime", ""),
                ("timeout", ""),
                ("images", ""),
                ("queueTtl", ""),
                ("artifacts", "Artifacts"),
                ("logsBucket", ""),
                ("sourceProvenance", "SourceProvenance"),
                ("buildTriggerId", ""),
                ("options", "BuildOptions"),
                ("logUrl", ""),
                ("substitutions", ""),
                ("tags", ""),
                ("secrets", "Secret"),
                ("timing", "map:TimeSpan"),
                ("approval", "BuildApproval"),
                ("serviceAccount", ""),
                ("availableSecrets", "Secrets"),
                ("warnings", "Warning"),
                ("failureInfo", "FailureInfo"),
            ],
        ),
        (
            "BuildStep",
            &[
                ("name", ""),
                ("env", ""),
                ("args", ""),
                ("dir", ""),
                ("id", ""),
                ("waitFor", ""),
                ("entrypoint", ""),
                ("secretEnv", ""),
                ("volumes", "Volume"),
                ("timing", "TimeSpan"),
                ("pullTiming", "TimeSpan"),
                ("timeout", ""),
                ("status", ""),
                ("allowFailure", ""),
                ("exitCode", ""),
                ("allowExitCodes", ""),
                ("script", ""),
                ("automapSubstitutions", ""),
            ],
        ),
        (
            "Results",
            &[
                ("images", "BuiltImage"),
                ("buildStepImages", ""),
                ("artifactManifest", ""),
                ("numArtifacts", ""),
                ("buildStepOutputs", ""),
                ("artifactTiming", "TimeSpan"),
                ("pythonPackages", ""),
                ("mavenArtifacts", ""),
                ("npmPackages", ""),
            ],
        ),
        (
            "BuiltImage",
            &[("name", ""), ("digest", ""), ("pushTiming", "TimeSpan")],
        ),
        (
            "Source",
            &[
                ("storageSource", "StorageSource"),
                ("repoSource", ""),
                ("gitSource", "GitSource"),
                ("storageSourceManifest", ""),
                ("connectedRepository", ""),
            ],
        ),
        ("GitSource", &[("url", ""), ("dir", ""), ("revision", "")]),
        (
            "StorageSource",
            &[
                ("bucket", ""),
                ("object", ""),
                ("generation", ""),
                ("sourceFetcher", ""),
            ],
        ),
        (
            "SourceProvenance",
            &[
                ("resolvedStorageSource", "StorageSource"),
                ("resolvedRepoSource", ""),
                ("resolvedStorageSourceManifest", ""),
                ("resolvedConnectedRepository", ""),
                ("resolvedGitSource", "GitSource"),
                ("fileHashes", ""),
            ],
        ),
        (
            "BuildOptions",
            &[
                ("sourceProvenanceHash", ""),
                ("requestedVerifyOption", ""),
                ("machineType", ""),
                ("diskSizeGb", ""),
                ("substitutionOption", ""),
                ("dynamicSubstitutions", ""),
                ("automapSubstitutions", ""),
                ("logStreamingOption", ""),
                ("workerPool", ""),
                ("pool", "PoolOption"),
                ("logging", ""),
                ("env", ""),
                ("secretEnv", ""),
                ("volumes", "Volume"),
                ("defaultLogsBucketBehavior", ""),
            ],
        ),
        ("PoolOption", &[("name", "")]),
        (
            "Secrets",
            &[
                ("secretManager", "SecretManagerSecret"),
                ("inline", "InlineSecret"),
            ],
        ),
        ("SecretManagerSecret", &[("versionName", ""), ("env", "")]),
        ("InlineSecret", &[("kmsKeyName", ""), ("envMap", "")]),
        ("Secret", &[("kmsKeyName", ""), ("secretEnv", "")]),
        (
            "Artifacts",
            &[
                ("images", ""),
                ("objects", "ArtifactObjects"),
                ("mavenArtifacts", ""),
                ("pythonPackages", ""),
                ("npmPackages", ""),
            ],
        ),
        (
            "ArtifactObjects",
            &[("location", ""), ("paths", ""), ("timing", "TimeSpan")],
        ),
        (
            "BuildApproval",
            &[
                ("state", ""),
                ("config", "ApprovalConfig"),
                ("result", "ApprovalResult"),
            ],
        ),
        ("ApprovalConfig", &[("approvalRequired", "")]),
        (
            "ApprovalResult",
            &[
                ("approverAccount", ""),
                ("approvalTime", ""),
                ("decision", ""),
                ("comment", ""),
                ("url", ""),
            ],
        ),
        ("FailureInfo", &[("type", ""), ("detail", "")]),
        ("Warning", &[("text", ""), ("priority", "")]),
        ("TimeSpan", &[("startTime", ""), ("endTime", "")]),
        ("Volume", &[("name", ""), ("path", "")]),
    ];

    /// Every key of `value`, read as a `message`, that the reference does not document, by path.
    fn undocumented(value: &Value, message: &str, path: &str, found: &mut Vec<String>) {
        let fields = DOCUMENTED
            .iter()
            .find(|(name, _)| *name == message)
            .unwrap_or_else(|| panic!("{message} is not in the table"))
            .1;
        let items = match value {
            Value::Array(items) => items.iter().collect(),
            value => vec![value],
        };
        for item in items {
            let Value::Object(object) = item else {
                found.push(format!("{path}: a {message} that is not an object"));
                continue;
            };
            for (key, field) in object {
                let path = format!("{path}.{key}");
                match fields.iter().find(|(name, _)| name == key) {
                    None => found.push(path),
                    Some((_, "")) => {}
                    Some((_, kind)) => match kind.strip_prefix("map:") {
                        Some(message) => {
                            for (entry, value) in field.as_object().into_iter().flatten() {
                                undocumented(value, message, &format!("{path}.{entry}"), found);
                            }
                        }
                        None => undocumented(field, kind, &path, found),
                    },
                }
            }
        }
    }

    #[test]
    fn every_key_is_a_documented_field_of_the_build_resource() {
        let rich = wire::Build {
            approval: Some(Approval {
                state: ApprovalState::Approved,
                config: ApprovalConfig {
                    approval_required: true,
                },
                result: Some(ApprovalResult {
                    approver_account: "api-token".into(),
                    approval_time: at(5),
                    decision: Decision::Approved,
                    comment: Some("ship it".into()),
                }),
            }),
            plan: plan(&format!(
                "{CONFIG}options:\n  automapSubstitutions: true\n  pool:\n    name: gpu\n\
                 artifacts:\n  objects:\n    location: gs://bucket/out/\n    paths: [a.txt]\n"
            )),
            ..failed()
        };
        let resource = build_resource(&rich, "proj", PAGE);
        // The rich build has every part the function writes.
        for key in [
            "approval",
            "artifacts",
            "availableSecrets",
            "failureInfo",
            "options",
            "results",
            "source",
            "sourceProvenance",
            "steps",
            "substitutions",
            "timing",
        ] {
            assert!(resource.get(key).is_some(), "no {key} in {resource:#}");
        }
        assert!(resource["options"]["pool"].is_object(), "{resource:#}");
        let mut found = Vec::new();
        undocumented(&resource, "Build", "build", &mut found);
        assert!(found.is_empty(), "not Cloud Build's fields: {found:?}");
    }
}
