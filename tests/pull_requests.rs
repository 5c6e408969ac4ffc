//! Pull-request triggers end to end: a real `builder serve`, real `pull_request` and
//! `issue_comment` deliveries from the shared corpus (`corpus/github-webhooks/`) rewritten to
//! name acme/app, a fork's branch and its commit, and re-signed as GitHub signs them; the head
//! commit served from a local bare repository only as `refs/pull/N/head`, as GitHub keeps a
//! fork's commits in the base repository.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tempfile::TempDir;

mod common;

use common::Repository;
use common::github::{GitHubApi, Received};
use common::server::{DEADLINE, Server, TOKEN, sign};

/// Where the shared data lives: `BUILDER_SHARED_DIR` if set, else `../shared` beside the
/// checkout.
fn shared_dir() -> PathBuf {
    match std::env::var_os("BUILDER_SHARED_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"),
    }
}

fn corpus(file: &str) -> Value {
    let path = shared_dir().join("corpus/github-webhooks").join(file);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap()
}

/// Points a real payload's `repository` at acme/app.
fn in_acme_app(payload: &mut Value) {
    let repository = &mut payload["repository"];
    repository["name"] = json!("app");
    repository["full_name"] = json!("acme/app");
    repository["owner"]["login"] = json!("acme");
    repository["clone_url"] = json!("https://github.com/acme/app.git");
}

/// A real fork's pull request (pipelines-as-code's: chmouel's fork into
/// openshift-pipelines), rewritten as pull request #7 of `someone`'s fork of acme/app, from
/// branch `feature` at `head` into `main`, by an author with `association`.
fn pull_request(action: &str, head: &str, association: &str) -> Vec<u8> {
    let mut payload =
        corpus("openshift-pipelines__pipelines-as-code__test__fixtures__pull-req.json");
    in_acme_app(&mut payload);
    payload["action"] = json!(action);
    payload["number"] = json!(7);
    let pull_request = &mut payload["pull_request"];
    pull_request["number"] = json!(7);
    pull_request["state"] = json!("open");
    pull_request["user"]["login"] = json!("someone");
    pull_request["author_association"] = json!(association);
    pull_request["body"] = json!("Adds the app");
    pull_request["head"]["ref"] = json!("feature");
    pull_request["head"]["sha"] = json!(head);
    pull_request["head"]["repo"]["full_name"] = json!("someone/app");
    pull_request["head"]["repo"]["clone_url"] = json!("https://github.com/someone/app.git");
    pull_request["base"]["ref"] = json!("main");
    serde_json::to_vec(&payload).unwrap()
}

/// A real comment (octokit's example, on an issue), rewritten as `body` on pull request #7 of
/// acme/app by `login` with `association`.
fn comment(body: &str, login: &str, association: &str) -> Vec<u8> {
    let mut payload =
        corpus("octokit__webhooks-examples__api.github.com__issue_comment__created.0.payload.json");
    in_acme_app(&mut payload);
    payload["issue"]["number"] = json!(7);
    payload["issue"]["pull_request"] =
        json!({"url": "https://api.github.com/repos/acme/app/pulls/7"});
    payload["comment"]["body"] = json!(body);
    payload["comment"]["user"]["login"] = json!(login);
    payload["comment"]["author_association"] = json!(association);
    serde_json::to_vec(&payload).unwrap()
}

/// `prs` builds every pull request into main; `src` those that change `src/`; `gated` those of
/// writers, and others once a writer comments /gcbrun; `secret` every one, with a config that
/// reads the secret the trigger grants.
fn triggers() -> TempDir {
    let dir = TempDir::new().unwrap();
    let trigger = |name: &str, file: &str, extra: &str| {
        let yaml = format!(
            "name: {name}\nfilename: {file}\n\
             github:\n  owner: acme\n  name: app\n  pullRequest:\n    branch: ^main$\n{extra}"
        );
        std::fs::write(dir.path().join(format!("{name}.yaml")), yaml).unwrap();
    };
    trigger(
        "prs",
        "cloudbuild.yaml",
        "substitutions: {_PR_NUMBER: '0'}\n",
    );
    trigger("src", "cloudbuild.yaml", "includedFiles: ['src/**']\n");
    trigger(
        "gated",
        "cloudbuild.yaml",
        "    commentControl: COMMENTS_ENABLED_FOR_EXTERNAL_CONTRIBUTORS_ONLY\n",
    );
    trigger("secret", "secret.yaml", "secrets: [deploy-key]\n");
    dir
}

/// The config's own default for `_PR_NUMBER` must not win over the pull request's.
const CONFIG: &str = "steps:\n- name: builder/busybox\n  \
    args: [sh, -c, 'echo \"$_PR_NUMBER $_HEAD_BRANCH $_BASE_BRANCH $BRANCH_NAME $SHORT_SHA $_HEAD_REPO_URL $TRIGGER_NAME\"; cat src/app.py']\n\
    substitutions: {_PR_NUMBER: none}\n";

const SECRET_CONFIG: &str = "steps:\n- name: builder/busybox\n  \
    entrypoint: sh\n  args: [-c, 'test \"$$KEY\" = s3cr3t && echo read']\n  secretEnv: [KEY]\n\
    availableSecrets:\n  secretManager:\n  - {versionName: projects/p/secrets/deploy-key/versions/1, env: KEY}\n";

fn result<'a>(delivery: &'a Value, trigger: &str) -> &'a Value {
    let results = delivery["results"].as_array().unwrap();
    results
        .iter()
        .find(|r| r["trigger"] == trigger)
        .unwrap_or_else(|| panic!("no result for {trigger}: {delivery}"))
}

fn build_id(delivery: &Value, trigger: &str) -> String {
    let result = result(delivery, trigger);
    result["buildId"]
        .as_str()
        .unwrap_or_else(|| panic!("{trigger} built nothing: {result}"))
        .to_string()
}

#[test]
fn fork_pull_requests_build_their_head_under_comment_control() {
    let repository = Repository::new();
    let work = repository.root.path().join("work");
    repository.commit(
        &[
            ("cloudbuild.yaml", CONFIG),
            ("secret.yaml", SECRET_CONFIG),
            ("src/app.py", "print('main')"),
            ("README.md", "app"),
        ],
        "main",
        "main",
    );
    // The fork's commit reaches the base repository only as refs/pull/7/head.
    repository.git_in(&work, &["checkout", "-q", "-b", "feature"]);
    let head = repository.commit(
        &[("src/app.py", "print('feature')")],
        "feature",
        "HEAD:refs/pull/7/head",
    );
    let secrets = TempDir::new().unwrap();
    std::fs::write(secrets.path().join("deploy-key"), "s3cr3t").unwrap();
    let triggers = triggers();
    let data = TempDir::new().unwrap();
    let secrets_dir = secrets.path().to_str().unwrap();
    let server = Server::start_with(
        data.path(),
        triggers.path(),
        &repository.mirrors(),
        2,
        &["--secrets-dir", secrets_dir],
    );

    // A contributor's fork opens the pull request.
    let body = pull_request("opened", &head, "CONTRIBUTOR");
    let (code, receipt) = server.deliver("pull_request", "pr-1", &body, &sign(&body));
    assert_eq!(code, 202, "{receipt}");
    let delivery = server.decided("pr-1");
    assert_eq!(
        delivery["summary"],
        format!(
            "pull request #7 opened: feature → main of acme/app ({})",
            &head[..7]
        )
    );
    let prs = server.finished(&build_id(&delivery, "prs"));
    assert_eq!(prs["status"], "SUCCESS", "{prs}");
    assert_eq!(prs["source"]["commit"], head);
    assert_eq!(prs["source"]["pullRequest"]["number"], 7);
    assert_eq!(
        server.log(prs["id"].as_str().unwrap()),
        [
            format!(
                "7 feature main feature {} https://github.com/someone/app.git prs",
                &head[..7]
            ),
            "print('feature')".to_string()
        ]
    );
    // The files changed from the merge base with main: src/app.py.
    let src = server.finished(&build_id(&delivery, "src"));
    assert_eq!(src["status"], "SUCCESS", "{src}");
    let gated = result(&delivery, "gated");
    assert_eq!(gated["buildId"], Value::Null);
    assert!(
        gated["reason"]
            .as_str()
            .unwrap()
            .contains("waits for a writer's /gcbrun comment"),
        "{gated}"
    );
    // The fork's code is not given the trigger's secret.
    let secret = server.finished(&build_id(&delivery, "secret"));
    assert_eq!(secret["status"], "FAILURE", "{secret}");
    assert!(
        secret["failure"]
            .as_str()
            .unwrap()
            .contains("may not read the trigger's secrets"),
        "{secret}"
    );

    // A /gcbrun from someone who cannot write builds nothing, and the delivery says why.
    let body = comment("/gcbrun please", "drive-by", "CONTRIBUTOR");
    let (code, receipt) = server.deliver("issue_comment", "c-1", &body, &sign(&body));
    assert_eq!((code, &receipt["builds"]), (202, &json!([])), "{receipt}");
    let delivery = server.decided("c-1");
    for trigger in ["prs", "src", "gated", "secret"] {
        let result = result(&delivery, trigger);
        assert_eq!(result["buildId"], Value::Null, "{result}");
        assert_eq!(
            result["reason"],
            "the /gcbrun comment is from drive-by (CONTRIBUTOR), who cannot write to the \
             repository: only an OWNER's, MEMBER's or COLLABORATOR's starts a build"
        );
    }

    // A writer's /gcbrun builds the recorded head, with the secrets this time.
    let body = comment("/gcbrun", "maintainer", "OWNER");
    let (code, receipt) = server.deliver("issue_comment", "c-2", &body, &sign(&body));
    assert_eq!(code, 202, "{receipt}");
    let delivery = server.decided("c-2");
    for trigger in ["prs", "src", "gated", "secret"] {
        let build = server.finished(&build_id(&delivery, trigger));
        assert_eq!(build["status"], "SUCCESS", "{trigger}: {build}");
        assert_eq!(build["source"]["commit"], head);
    }
    let secret = build_id(&delivery, "secret");
    assert_eq!(server.log(&secret), ["read"]);
    // prs and src had built this head already; the comment built it again.
    for (trigger, earlier) in [("prs", &prs), ("src", &src)] {
        assert_ne!(
            build_id(&delivery, trigger),
            earlier["id"].as_str().unwrap()
        );
    }

    // Editing the title, or closing, builds nothing.
    let body = pull_request("edited", &head, "CONTRIBUTOR");
    let (_, receipt) = server.deliver("pull_request", "pr-2", &body, &sign(&body));
    assert_eq!(receipt["builds"], json!([]), "{receipt}");
    assert!(
        result(&server.decided("pr-2"), "prs")["reason"]
            .as_str()
            .unwrap()
            .contains("unless its base branch changed")
    );
}

/// A real check run's re-run (octokit's example), rewritten as GitHub sends it for builder's
/// check run of `build` on `head` of acme/app.
fn rerun(build: &str, head: &str) -> Vec<u8> {
    let mut payload =
        corpus("octokit__webhooks-examples__api.github.com__check_run__rerequested.7.payload.json");
    in_acme_app(&mut payload);
    payload["check_run"]["id"] = json!(1000);
    payload["check_run"]["external_id"] = json!(build);
    payload["check_run"]["head_sha"] = json!(head);
    payload["check_run"]["check_suite"]["head_sha"] = json!(head);
    serde_json::to_vec(&payload).unwrap()
}

/// The requests of `operation` GitHub accepted.
fn check_runs<'a>(received: &'a [Received], operation: &str) -> Vec<&'a Received> {
    received
        .iter()
        .filter(|r| r.operation.as_deref() == Some(operation) && r.status < 300)
        .collect()
}

#[test]
fn re_runs_build_again_and_a_new_push_cancels_the_older_build_when_its_trigger_says_so() {
    let repository = Repository::new();
    let work = repository.root.path().join("work");
    repository.commit(&[("README.md", "app")], "main", "main");
    repository.git_in(&work, &["checkout", "-q", "-b", "feature"]);
    let slow = "steps:\n- name: builder/busybox\n  args: [sleep, '120']\n";
    let quick = "steps:\n- name: builder/busybox\n  args: [echo, built]\n";
    let first = repository.commit(
        &[("cloudbuild.yaml", slow)],
        "slow",
        "HEAD:refs/pull/7/head",
    );
    let second = repository.commit(
        &[("cloudbuild.yaml", quick)],
        "quick",
        "HEAD:refs/pull/7/head",
    );
    // `ci` cancels its superseded builds; `keep` does not (the default).
    let triggers = TempDir::new().unwrap();
    for (name, extra) in [("ci", "    cancelSuperseded: true\n"), ("keep", "")] {
        let yaml = format!(
            "name: {name}\nfilename: cloudbuild.yaml\n\
             github:\n  owner: acme\n  name: app\n  pullRequest:\n    branch: ^main$\n{extra}"
        );
        std::fs::write(triggers.path().join(format!("{name}.yaml")), yaml).unwrap();
    }
    let keys = TempDir::new().unwrap();
    let (api, key) = GitHubApi::start_app(keys.path());
    let data = TempDir::new().unwrap();
    let server = Server::start_with(
        data.path(),
        triggers.path(),
        &repository.mirrors(),
        4,
        &[
            "--github-api-url",
            &api.url,
            "--github-app-id",
            "7",
            "--github-app-key-file",
            &key,
        ],
    );

    // A writer opens the pull request at the slow commit; both triggers' builds start.
    let body = pull_request("opened", &first, "OWNER");
    let (code, receipt) = server.deliver("pull_request", "pr-1", &body, &sign(&body));
    assert_eq!(code, 202, "{receipt}");
    let opened = server.decided("pr-1");
    let (old_ci, old_keep) = (build_id(&opened, "ci"), build_id(&opened, "keep"));
    let working = |b: &Value| b["status"] == "WORKING";
    server.build_when(&old_ci, working);
    server.build_when(&old_keep, working);

    // A push to the pull request: `ci`'s running build is cancelled, `keep`'s runs on.
    let body = pull_request("synchronize", &second, "OWNER");
    let (code, receipt) = server.deliver("pull_request", "pr-2", &body, &sign(&body));
    assert_eq!(code, 202, "{receipt}");
    let pushed = server.decided("pr-2");
    let new_ci = build_id(&pushed, "ci");
    let cancelled = server.finished(&old_ci);
    assert_eq!(cancelled["status"], "CANCELLED", "{cancelled}");
    let built = server.finished(&new_ci);
    assert_eq!(built["status"], "SUCCESS", "{built}");
    assert_eq!(built["source"]["commit"], second);
    assert_eq!(
        server.get(&format!("/v1/builds/{old_keep}"))["status"],
        "WORKING",
        "a trigger that does not say so cancels nothing"
    );
    let (code, answer) = server.post(&format!("/v1/builds/{old_keep}/cancel"), "", TOKEN);
    assert_eq!(code, 200, "{answer}");
    server.finished(&build_id(&pushed, "keep"));

    // GitHub is told the old head's check run was cancelled, and its status is an error.
    let cancelled_run = |r: &[Received]| {
        check_runs(r, "checks/update")
            .iter()
            .any(|r| r.body["conclusion"] == "cancelled")
    };
    let status_of = |r: &[Received], sha: &str, state: &str| {
        check_runs(r, "repos/create-commit-status").iter().any(|s| {
            s.path.ends_with(sha) && s.body["state"] == state && s.body["context"] == "ci (local)"
        })
    };
    let received = api.wait_for(DEADLINE, |r| {
        cancelled_run(r) && status_of(r, &first, "error") && status_of(r, &second, "success")
    });
    assert!(
        received.iter().all(|r| r.refusal.is_none()),
        "{received:#?}"
    );

    // "Re-run" on the new head's check run builds that commit again, reported under the same
    // name on the same commit.
    let body = rerun(&new_ci, &second);
    let (code, receipt) = server.deliver("check_run", "rerun-1", &body, &sign(&body));
    assert_eq!(code, 202, "{receipt}");
    let rerun_id = receipt["builds"][0].as_str().unwrap().to_string();
    let delivery = server.decided("rerun-1");
    assert_eq!(build_id(&delivery, "ci"), rerun_id);
    let again = server.finished(&rerun_id);
    assert_eq!(again["status"], "SUCCESS", "{again}");
    assert_eq!(again["source"]["commit"], second);
    // A retry through the API is reported as well.
    let (code, answer) = server.post(&format!("/v1/builds/{new_ci}/retry"), "", TOKEN);
    assert_eq!(code, 200, "{answer}");
    let retry_id = answer["build"].as_str().unwrap().to_string();
    assert_eq!(server.finished(&retry_id)["status"], "SUCCESS");
    let created_for = |r: &[Received], id: &str| {
        check_runs(r, "checks/create").iter().any(|c| {
            c.body["external_id"] == id
                && c.body["name"] == "ci (local)"
                && c.body["head_sha"] == second.as_str()
        })
    };
    let concluded = |r: &[Received]| {
        check_runs(r, "checks/update")
            .iter()
            .filter(|u| u.body["conclusion"] == "success")
            .count()
    };
    let before = concluded(&received);
    api.wait_for(DEADLINE, |r| {
        created_for(r, &rerun_id) && created_for(r, &retry_id) && concluded(r) >= before + 2
    });

    // A re-run of a check run builder did not make, or naming a build of another commit, builds
    // nothing, and says why.
    for (id, build, head, why) in [
        ("rerun-2", "", second.as_str(), "builder did not make it"),
        (
            "rerun-3",
            new_ci.as_str(),
            first.as_str(),
            "not of acme/app",
        ),
    ] {
        let body = rerun(build, head);
        let (code, receipt) = server.deliver("check_run", id, &body, &sign(&body));
        assert_eq!(code, 200, "{receipt}");
        assert_eq!(receipt["result"], "ignored", "{receipt}");
        assert!(
            receipt["reason"].as_str().unwrap().contains(why),
            "{receipt}"
        );
    }
}
