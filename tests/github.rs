//! Status on GitHub (issue 19) end to end: a real `builder serve` with a trigger, a real push
//! payload (`webhooks/`) re-signed and naming a repository served from a local bare repository,
//! builds on the real engine, and the tests' local GitHub API (`tests/common/github.rs`, which
//! accepts only what GitHub's description allows) recording what builder told it.

mod common;

use std::path::Path;

use common::Repository;
use common::github::{Auth, GitHubApi, Received};
use common::server::{DEADLINE, Server, ZERO, push_payload, sign};
use serde_json::json;
use tempfile::TempDir;

const TOKEN: &str = "ghp_builder_test_token_31337";
const PUBLIC_URL: &str = "https://ci.example.com";
const CONTEXT: &str = "main (local)";
const PASSING: &str = "steps:\n- name: builder/busybox\n  args: [sh, -c, 'echo built']\n";
/// A step that writes 22 lines and fails.
const FAILING: &str = "steps:\n- id: compile\n  name: builder/busybox\n  \
    args: [sh, -c, 'for i in $(seq 1 22); do echo line $i; done; exit 3']\n";

/// The trigger `main`: pushes to acme/app's main.
fn triggers() -> TempDir {
    let dir = TempDir::new().unwrap();
    let yaml = "name: main\nfilename: cloudbuild.yaml\n\
                github: {owner: acme, name: app, push: {branch: ^main$}}\n";
    std::fs::write(dir.path().join("main.yaml"), yaml).unwrap();
    dir
}

/// A server reporting to `api` with `auth` (its flags), a push of `config` to main delivered to
/// it; the server, its data directory, the build's id and the commit.
struct Pushed {
    server: Server,
    data: TempDir,
    id: String,
    commit: String,
    triggers: TempDir,
    repository: Repository,
}

fn push(api: &GitHubApi, config: &str, auth: &[&str]) -> Pushed {
    let repository = Repository::new();
    let triggers = triggers();
    let data = TempDir::new().unwrap();
    let mut args = vec!["--github-api-url", &api.url, "--public-url", PUBLIC_URL];
    args.extend(auth);
    let server = Server::start_with(
        data.path(),
        triggers.path(),
        &repository.mirrors(),
        1,
        &args,
    );
    let commit = repository.commit(&[("cloudbuild.yaml", config)], "c", "main");
    let body = push_payload("refs/heads/main", ZERO, &commit, "c");
    let (code, receipt) = server.deliver("push", "d-1", &body, &sign(&body));
    assert_eq!(code, 202, "{receipt}");
    let delivery = server.decided("d-1");
    let id = delivery["results"][0]["buildId"]
        .as_str()
        .unwrap_or_else(|| panic!("no build: {delivery}"))
        .to_string();
    Pushed {
        server,
        data,
        id,
        commit,
        triggers,
        repository,
    }
}

/// A token file outside the server's data directory.
fn token_file(dir: &Path) -> String {
    let path = dir.join("github-token");
    std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
    path.display().to_string()
}

fn of<'a>(received: &'a [Received], operation: &str) -> Vec<&'a Received> {
    received
        .iter()
        .filter(|r| r.operation.as_deref() == Some(operation))
        .collect()
}

/// Whether GitHub accepted a commit status in `state`.
fn accepted_state(received: &[Received], state: &str) -> bool {
    of(received, "repos/create-commit-status")
        .iter()
        .any(|r| r.status == 201 && r.body["state"] == state)
}

/// Every file under `dir`, for a secret that must not be in any.
fn files_holding(dir: &Path, secret: &str) -> Vec<String> {
    let mut holding = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            holding.extend(files_holding(&path, secret));
        } else if let Ok(bytes) = std::fs::read(&path)
            && bytes.windows(secret.len()).any(|w| w == secret.as_bytes())
        {
            holding.push(path.display().to_string());
        }
    }
    holding
}

#[test]
fn a_triggered_build_is_reported_as_commit_statuses_with_a_token_that_stays_secret() {
    let api = GitHubApi::start(Auth::Token(TOKEN.into()));
    let secrets = TempDir::new().unwrap();
    let file = token_file(secrets.path());
    let pushed = push(&api, PASSING, &["--github-token-file", &file]);
    let build = pushed.server.finished(&pushed.id);
    assert_eq!(build["status"], "SUCCESS", "{build}");
    let received = api.wait_for(DEADLINE, |r| accepted_state(r, "success"));

    assert!(
        received.iter().all(|r| r.refusal.is_none()),
        "{received:#?}"
    );
    let statuses = of(&received, "repos/create-commit-status");
    let states: Vec<&str> = statuses
        .iter()
        .map(|r| r.body["state"].as_str().unwrap())
        .collect();
    // Pending while queued or running (a report that found the build moved on sends it as it
    // is now), then the verdict.
    assert_eq!(states.last(), Some(&"success"), "{states:?}");
    assert!(states.len() >= 2 && states[..states.len() - 1].iter().all(|s| *s == "pending"));
    for status in &statuses {
        assert_eq!(
            status.path,
            format!("/repos/acme/app/statuses/{}", pushed.commit)
        );
        assert_eq!(status.body["context"], CONTEXT);
        let page = format!("{PUBLIC_URL}/builds/{}", pushed.id);
        assert_eq!(status.body["target_url"], page.as_str());
        assert_eq!(
            status.authorization.as_deref(),
            Some(&*format!("Bearer {TOKEN}"))
        );
    }
    let first = statuses[0].body["description"].as_str().unwrap();
    assert!(["Queued", "Running"].contains(&first), "{first}");
    // A token makes no check runs: GitHub gives them to Apps only.
    assert!(of(&received, "checks/create").is_empty());

    let build = pushed
        .server
        .build_when(&pushed.id, |b| b["github"]["reported"] == "SUCCESS");
    assert_eq!(build["github"].get("failure"), None, "{build}");
    let page = pushed.server.get_text(&format!("/builds/{}", pushed.id));
    assert!(page.contains("On GitHub"), "{page}");

    // The token is in no log, record or file of the server's.
    drop(pushed.server);
    assert_eq!(
        files_holding(pushed.data.path(), TOKEN),
        Vec::<String>::new()
    );
}

#[test]
fn a_github_app_reports_check_runs_with_the_failed_step_s_last_lines() {
    let keys = TempDir::new().unwrap();
    let (api, key) = GitHubApi::start_app(keys.path());
    let pushed = push(
        &api,
        FAILING,
        &["--github-app-id", "7", "--github-app-key-file", &key],
    );
    let build = pushed.server.finished(&pushed.id);
    assert_eq!(build["status"], "FAILURE", "{build}");
    let concluded = |r: &[Received]| {
        of(r, "checks/update")
            .iter()
            .chain(&of(r, "checks/create"))
            .any(|r| r.status < 300 && r.body["conclusion"] == "failure")
    };
    let received = api.wait_for(DEADLINE, |r| accepted_state(r, "failure") && concluded(r));
    assert!(
        received.iter().all(|r| r.refusal.is_none()),
        "{received:#?}"
    );

    // The installation is found, its token bought once with the App's JWT (the server verified
    // both with the App's public key) and used for every report.
    assert_eq!(
        received[0].operation.as_deref(),
        Some("apps/get-repo-installation")
    );
    let bought = of(&received, "apps/create-installation-access-token");
    assert_eq!(bought.len(), 1);
    assert_eq!(bought[0].path, "/app/installations/42/access_tokens");
    let token = format!("Bearer {}", api.issued()[0]);
    let reports: Vec<&Received> = received
        .iter()
        .filter(|r| {
            r.path.starts_with("/repos/acme/app/")
                && r.operation.as_deref() != Some("apps/get-repo-installation")
        })
        .collect();
    assert!(
        reports
            .iter()
            .all(|r| r.authorization.as_ref() == Some(&token)),
        "{reports:#?}"
    );

    let created = of(&received, "checks/create");
    assert_eq!(
        created.len(),
        1,
        "one check run, updated after: {received:#?}"
    );
    assert_eq!(created[0].body["name"], CONTEXT);
    assert_eq!(created[0].body["head_sha"], pushed.commit.as_str());
    assert_eq!(created[0].body["external_id"], pushed.id.as_str());
    let last = of(&received, "checks/update")
        .last()
        .copied()
        .unwrap_or(created[0])
        .clone();
    assert_eq!(last.body["status"], "completed");
    assert_eq!(last.body["conclusion"], "failure");
    let text = last.body["output"]["text"].as_str().unwrap();
    assert!(
        text.starts_with("The last lines of step 0 (compile):"),
        "{text}"
    );
    assert!(
        text.contains("\n    line 3\n    line 4\n") && text.ends_with("\n    line 22"),
        "{text}"
    );
    assert!(
        !text.contains("    line 2\n"),
        "only the last 20 lines: {text}"
    );
    let build = pushed
        .server
        .build_when(&pushed.id, |b| b["github"]["reported"] == "FAILURE");
    assert_eq!(build["status"], "FAILURE");
}

#[test]
fn a_report_github_refuses_for_a_while_is_tried_again() {
    let api = GitHubApi::start(Auth::Token(TOKEN.into()));
    // The verdict's first report fails: only a retry reports it.
    api.fail_next("repos/create-commit-status", Some("success"), 1, 500);
    let secrets = TempDir::new().unwrap();
    let file = token_file(secrets.path());
    let pushed = push(&api, PASSING, &["--github-token-file", &file]);
    let build = pushed.server.finished(&pushed.id);
    assert_eq!(build["status"], "SUCCESS");
    let received = api.wait_for(DEADLINE, |r| accepted_state(r, "success"));
    let verdicts: Vec<u16> = of(&received, "repos/create-commit-status")
        .iter()
        .filter(|r| r.body["state"] == "success")
        .map(|r| r.status)
        .collect();
    assert_eq!(verdicts, [500, 201]);
    let build = pushed
        .server
        .build_when(&pushed.id, |b| b["github"]["reported"] == "SUCCESS");
    assert_eq!(build["github"], json!({"reported": "SUCCESS"}));
}

#[test]
fn a_github_that_always_fails_leaves_the_build_as_it_ended_and_says_so_on_its_page() {
    let api = GitHubApi::start(Auth::Token(TOKEN.into()));
    api.break_operation("repos/create-commit-status", 502);
    let secrets = TempDir::new().unwrap();
    let file = token_file(secrets.path());
    let pushed = push(&api, PASSING, &["--github-token-file", &file]);
    let build = pushed.server.finished(&pushed.id);
    assert_eq!(build["status"], "SUCCESS", "{build}");
    let build = pushed.server.build_when(&pushed.id, |b| {
        b["github"]["failure"]["lasting"] == true && b["github"]["failure"]["status"] == "SUCCESS"
    });
    assert_eq!(build["status"], "SUCCESS");
    let failure = &build["github"]["failure"];
    assert_eq!(failure["attempts"], 5, "{build}");
    assert_eq!(
        failure["error"],
        "reporting the commit status: GitHub answered 502 Bad Gateway: Server Error"
    );
    let successes = of(&api.received(), "repos/create-commit-status")
        .into_iter()
        .filter(|r| r.body["state"] == "success")
        .count();
    assert_eq!(successes, 5);
    let page = pushed.server.get_text(&format!("/builds/{}", pushed.id));
    assert!(page.contains("given up after 5 attempts"), "{page}");
}

#[test]
fn a_build_that_ended_while_github_failed_is_reported_by_the_next_server() {
    let api = GitHubApi::start(Auth::Token(TOKEN.into()));
    api.break_operation("repos/create-commit-status", 500);
    let secrets = TempDir::new().unwrap();
    let file = token_file(secrets.path());
    let auth = ["--github-token-file", file.as_str()];
    let pushed = push(&api, PASSING, &auth);
    assert_eq!(pushed.server.finished(&pushed.id)["status"], "SUCCESS");
    // Killed while the end's report waits for its retry: nothing but the store remembers it.
    pushed.server.kill();
    assert!(!accepted_state(&api.received(), "success"));
    api.repair();
    let mut args = vec!["--github-api-url", &api.url, "--public-url", PUBLIC_URL];
    args.extend(auth);
    let server = Server::start_with(
        pushed.data.path(),
        pushed.triggers.path(),
        &pushed.repository.mirrors(),
        1,
        &args,
    );
    api.wait_for(DEADLINE, |r| accepted_state(r, "success"));
    let build = server.build_when(&pushed.id, |b| b["github"]["reported"] == "SUCCESS");
    assert_eq!(build["github"], json!({"reported": "SUCCESS"}));
}

#[test]
fn github_settings_that_cannot_work_stop_the_server_with_why() {
    let data = TempDir::new().unwrap();
    let secrets = TempDir::new().unwrap();
    let file = token_file(secrets.path());
    let key = secrets.path().join("not-a-key.pem");
    std::fs::write(&key, "not a key").unwrap();
    let key = key.display().to_string();
    for (args, expected) in [
        (
            vec!["--github-app-id", "7"],
            "--github-app-id needs --github-app-key-file",
        ),
        (
            vec![
                "--github-token-file",
                &file,
                "--github-app-id",
                "7",
                "--github-app-key-file",
                &key,
            ],
            "a GitHub token and a GitHub App are both set",
        ),
        (
            vec!["--github-app-id", "7", "--github-app-key-file", &key],
            "not an RSA private key in PEM",
        ),
        (
            vec![
                "--github-token-file",
                &file,
                "--github-api-url",
                "api.github.com",
            ],
            "expected http:// or https://",
        ),
    ] {
        let out = common::builder(data.path())
            .env("BUILDER_WEBHOOK_SECRET", "s")
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains(TOKEN), "{stderr}");
    }
}
