//! `builder serve` end to end: a real `builder serve` process, real GitHub push payloads (from
//! `webhooks/`) rewritten to name a repository served from a local bare git repository, signed
//! with the webhook secret as GitHub signs them, and builds that run on the real engine.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::cargo::CommandCargoExt;
use serde_json::{Value, json};
use tempfile::TempDir;

mod common;

use common::Repository;
use common::server::{DEADLINE, SECRET, Server, TOKEN, ZERO, push_payload, sign};

/// Commits and pushes to main the app the triggers build: `CONFIG` and its `version.txt`.
fn commit_app(repository: &Repository) -> String {
    repository.commit(
        &[("cloudbuild.yaml", CONFIG), ("version.txt", "v")],
        "c",
        "main",
    )
}

/// Trigger files: `main` builds every push to main; `src` only pushes to main that change `src/`;
/// `release` builds tags `v*`; `features` every branch but main; `code` pushes to main that
/// change more than docs.
fn triggers() -> TempDir {
    let dir = TempDir::new().unwrap();
    let trigger = |name: &str, push: &str, extra: &str| {
        let yaml = format!(
            "name: {name}\nfilename: cloudbuild.yaml\n\
             github: {{owner: acme, name: app, push: {{{push}}}}}\n{extra}"
        );
        std::fs::write(dir.path().join(format!("{name}.yaml")), yaml).unwrap();
    };
    trigger(
        "main",
        "branch: ^main$",
        "substitutions: {_GREETING: hello}\n",
    );
    trigger("src", "branch: ^main$", "includedFiles: ['src/**']\n");
    trigger("release", "tag: ^v", "");
    trigger("features", "branch: ^main$, invertRegex: true", "");
    trigger("code", "branch: ^main$", "ignoredFiles: ['docs/**']\n");
    dir
}

const CONFIG: &str = "steps:\n- name: builder/busybox\n  \
    args: [sh, -c, 'echo \"$_GREETING $BRANCH_NAME$TAG_NAME $SHORT_SHA $TRIGGER_NAME\"; cat version.txt']\n\
    substitutions: {_GREETING: hi}\n";

fn build_of<'a>(delivery: &'a Value, trigger: &str) -> &'a Value {
    let results = delivery["results"].as_array().unwrap();
    let result = results.iter().find(|r| r["trigger"] == trigger);
    &result.unwrap_or_else(|| panic!("no result for {trigger}: {delivery}"))["buildId"]
}

#[test]
fn pushes_build_the_pushed_commit_with_the_built_ins_and_only_as_the_triggers_say() {
    let repository = Repository::new();
    let triggers = triggers();
    let data = TempDir::new().unwrap();
    let server = Server::start(data.path(), triggers.path(), &repository.mirrors(), 2);

    let first = repository.commit(
        &[
            ("cloudbuild.yaml", CONFIG),
            ("version.txt", "one"),
            ("docs/a.md", "a"),
        ],
        "first",
        "main",
    );
    let body = push_payload("refs/heads/main", ZERO, &first, "first");
    let (code, receipt) = server.deliver("push", "d-1", &body, &sign(&body));
    assert_eq!(code, 202, "{receipt}");
    let delivery = server.decided("d-1");
    // A new branch: every file counts as changed, so `src` sees no change under src/.
    assert_eq!(build_of(&delivery, "src"), &Value::Null, "{delivery}");
    let id = build_of(&delivery, "main").as_str().unwrap().to_string();
    let build = server.finished(&id);
    assert_eq!(build["status"], "SUCCESS", "{build}");
    assert_eq!(build["source"]["commit"], first);
    assert_eq!(
        server.log(&id),
        [
            format!("hello main {} main", &first[..7]),
            "one".to_string()
        ]
    );

    // A redelivery queues nothing.
    let (code, receipt) = server.deliver("push", "d-1", &body, &sign(&body));
    assert_eq!((code, &receipt["result"]), (200, &json!("duplicate")));

    // A change under src/ fires `src` too, computed from the repository's diff.
    let second = repository.commit(&[("src/app.py", "print(1)")], "second", "main");
    let body = push_payload("refs/heads/main", &first, &second, "second");
    assert_eq!(server.deliver("push", "d-2", &body, &sign(&body)).0, 202);
    let delivery = server.decided("d-2");
    for trigger in ["main", "src"] {
        let id = build_of(&delivery, trigger).as_str().unwrap().to_string();
        assert_eq!(server.finished(&id)["status"], "SUCCESS");
    }

    // `[skip ci]` and a deleted branch start nothing; a tag push fires `release`.
    let third = repository.commit(&[("src/app.py", "print(2)")], "third [skip ci]", "main");
    let body = push_payload("refs/heads/main", &second, &third, "third [skip ci]");
    let (code, receipt) = server.deliver("push", "d-3", &body, &sign(&body));
    assert_eq!((code, &receipt["builds"]), (202, &json!([])), "{receipt}");
    let body = push_payload("refs/heads/main", &third, ZERO, "");
    let (_, receipt) = server.deliver("push", "d-4", &body, &sign(&body));
    assert_eq!(receipt["builds"], json!([]), "{receipt}");
    repository.git_in(
        &repository.root.path().join("work"),
        &["tag", "v1.0.0", &second],
    );
    repository.git_in(
        &repository.root.path().join("work"),
        &["push", "-q", "origin", "v1.0.0"],
    );
    let body = push_payload("refs/tags/v1.0.0", ZERO, &second, "second");
    let (_, receipt) = server.deliver("push", "d-5", &body, &sign(&body));
    let id = receipt["builds"][0].as_str().unwrap().to_string();
    assert_eq!(server.finished(&id)["status"], "SUCCESS");
    assert_eq!(
        server.log(&id)[0],
        format!("hi v1.0.0 {} release", &second[..7])
    );

    // `invertRegex`: a feature branch fires `features` and nothing else.
    let feature = repository.commit(&[("src/f.py", "f")], "feature", "HEAD:feature/x");
    let body = push_payload("refs/heads/feature/x", ZERO, &feature, "feature");
    assert_eq!(server.deliver("push", "d-6", &body, &sign(&body)).0, 202);
    let delivery = server.decided("d-6");
    let fired: Vec<_> = delivery["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["buildId"].is_string())
        .map(|r| r["trigger"].as_str().unwrap())
        .collect();
    assert_eq!(fired, ["features"], "{delivery}");
    let id = build_of(&delivery, "features")
        .as_str()
        .unwrap()
        .to_string();
    let build = server.finished(&id);
    assert_eq!(
        build["substitutions"]["BRANCH_NAME"], "feature/x",
        "{build}"
    );

    // `ignoredFiles`: a push to main that only changes docs does not fire `code`, and says why.
    let work = repository.root.path().join("work");
    repository.git_in(&work, &["reset", "-q", "--hard", &third]);
    let docs = repository.commit(&[("docs/b.md", "b")], "docs", "main");
    let body = push_payload("refs/heads/main", &third, &docs, "docs");
    assert_eq!(server.deliver("push", "d-7", &body, &sign(&body)).0, 202);
    let delivery = server.decided("d-7");
    let results = delivery["results"].as_array().unwrap();
    let code = results.iter().find(|r| r["trigger"] == "code").unwrap();
    assert_eq!(
        code["reason"], "every changed file matches ignoredFiles",
        "{delivery}"
    );
    let id = build_of(&delivery, "main").as_str().unwrap().to_string();
    assert_eq!(server.finished(&id)["status"], "SUCCESS");
}

#[test]
fn forged_and_malformed_deliveries_queue_nothing() {
    let repository = Repository::new();
    let triggers = triggers();
    let data = TempDir::new().unwrap();
    let server = Server::start(data.path(), triggers.path(), &repository.mirrors(), 2);
    let commit = repository.commit(&[("cloudbuild.yaml", CONFIG)], "c", "main");
    let body = push_payload("refs/heads/main", ZERO, &commit, "c");

    let forged = builder::core::webhooks::sign(b"not the secret", &body);
    let (code, answer) = server.deliver("push", "f-1", &body, &forged);
    assert_eq!(code, 401, "{answer}");
    let mut tampered = body.clone();
    tampered.extend_from_slice(b" ");
    assert_eq!(
        server.deliver("push", "f-2", &tampered, &sign(&body)).0,
        401
    );
    assert_eq!(server.deliver("push", "f-3", &body, "").0, 401);
    let truncated = &body[..body.len() / 2];
    assert_eq!(
        server.deliver("push", "f-4", truncated, &sign(truncated)).0,
        400
    );
    let (code, answer) = server.deliver(
        "ping",
        "p-1",
        b"{\"zen\":\"hi\"}",
        &sign(b"{\"zen\":\"hi\"}"),
    );
    assert_eq!((code, &answer["result"]), (200, &json!("ignored")));

    assert_eq!(server.get("/v1/builds")["builds"], json!([]));
    // Rejected deliveries are recorded just after their answer.
    let rejected = || {
        let deliveries = server.get("/v1/deliveries")["deliveries"].clone();
        let rejected = deliveries.as_array().unwrap().iter();
        rejected.filter(|d| d["verified"] == false).count()
    };
    let start = Instant::now();
    while rejected() < 3 && start.elapsed() < DEADLINE {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(rejected(), 3);
    // A forged delivery does not claim its id: the genuine one with that id still builds.
    let (code, receipt) = server.deliver("push", "f-1", &body, &sign(&body));
    assert_eq!(code, 202, "{receipt}");
    let id = receipt["builds"][0].as_str().unwrap();
    assert_eq!(
        server.finished(id)["status"],
        "FAILURE",
        "the commit has no version.txt"
    );

    // The same signed body under a new id is a replay: the id is not signed.
    let (code, answer) = server.deliver("push", "f-1-replayed", &body, &sign(&body));
    assert_eq!(
        (code, &answer["result"]),
        (200, &json!("duplicate")),
        "{answer}"
    );
    // Headers longer than GitHub's are refused, and not kept.
    let (code, answer) = server.deliver("push", &"x".repeat(65), &body, &sign(&body));
    assert_eq!(code, 400, "{answer}");
    // Without a signature the body is not waited for: the answer comes before it is sent.
    let mut raw = std::net::TcpStream::connect(server.url.trim_start_matches("http://")).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        raw,
        "POST /webhooks/github HTTP/1.1\r\nHost: localhost\r\nX-GitHub-Event: push\r\n\
         X-GitHub-Delivery: f-7\r\nContent-Length: 20000000\r\n\r\n"
    )
    .unwrap();
    let mut answer = [0; 12];
    raw.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 401");
    assert_eq!(
        server.get("/v1/deliveries")["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["id"].as_str().is_some_and(|id| id.len() > 64))
            .count(),
        0
    );

    // Over GitHub's 25 MB: refused before anything reads it.
    let oversized = vec![b' '; 26 * 1024 * 1024];
    assert_eq!(
        server
            .deliver("push", "f-5", &oversized, &sign(&oversized))
            .0,
        413
    );

    // Issue 18: builds fetch the trigger's repository, never the payload's `clone_url`. Here it
    // names a place that holds the very commit (the served bare repository, as a file:// URL
    // and as a path) or another host: nothing is fetched from it and nothing is queued, and
    // the delivery's record says why.
    // Every build of the genuine push is queued by then.
    server.decided("f-1");
    let builds = || server.get("/v1/builds")["builds"].as_array().unwrap().len();
    let before = builds();
    let served = repository.mirrors().join("acme/app.git");
    for (n, elsewhere) in [
        format!("file://{}", served.display()),
        served.display().to_string(),
        "https://git.internal.example/acme/app.git".to_string(),
    ]
    .iter()
    .enumerate()
    {
        let mut payload: Value = serde_json::from_slice(&body).unwrap();
        payload["repository"]["clone_url"] = json!(elsewhere);
        // Its own commit, so that it is no replay of the genuine push above.
        payload["head_commit"]["message"] = json!(format!("elsewhere {n}"));
        let body = serde_json::to_vec(&payload).unwrap();
        let id = format!("f-elsewhere-{n}");
        let (code, receipt) = server.deliver("push", &id, &body, &sign(&body));
        assert_eq!((code, &receipt["builds"]), (202, &json!([])), "{receipt}");
        let delivery = server.decided(&id);
        let main = delivery["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["trigger"] == "main")
            .unwrap();
        assert_eq!(
            main["reason"],
            format!(
                "the push's clone_url {elsewhere:?} is not the trigger's repository \
                 https://github.com/acme/app.git: builds fetch only from the server's GitHub URL"
            ),
            "{delivery}"
        );
    }
    assert_eq!(builds(), before);
}

/// Starts `builder serve`, which must refuse to start (exit 1); returns what it said.
fn refused_start(data: &Path, triggers: &Path) -> String {
    let out = Command::cargo_bin("builder")
        .unwrap()
        .env("BUILDER_DATA_DIR", data)
        .env("BUILDER_WEBHOOK_SECRET", SECRET)
        .args(["serve", "--listen", "127.0.0.1:0", "--triggers"])
        .arg(triggers)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_trigger_file_with_a_bad_pattern_stops_the_server_with_its_location() {
    let triggers = TempDir::new().unwrap();
    std::fs::write(
        triggers.path().join("bad.yaml"),
        "name: bad\nfilename: cloudbuild.yaml\nincludedFiles: ['src/[a-']\n",
    )
    .unwrap();
    let data = TempDir::new().unwrap();
    let stderr = refused_start(data.path(), triggers.path());
    assert!(
        stderr.contains("bad.yaml:3:17: includedFiles[0]: glob"),
        "{stderr}"
    );
}

#[test]
fn a_build_accepted_before_a_crash_runs_once_after_the_restart() {
    let repository = Repository::new();
    let triggers = triggers();
    let data = TempDir::new().unwrap();
    let commit = commit_app(&repository);
    let body = push_payload("refs/heads/main", ZERO, &commit, "c");

    // Builds are only queued by this server; it is killed right after the answer.
    let server = Server::start(data.path(), triggers.path(), &repository.mirrors(), 0);
    let (code, receipt) = server.deliver("push", "k-1", &body, &sign(&body));
    assert_eq!(code, 202, "{receipt}");
    server.kill();

    let server = Server::start(data.path(), triggers.path(), &repository.mirrors(), 2);
    let delivery = server.decided("k-1");
    for trigger in ["main", "code"] {
        let id = build_of(&delivery, trigger).as_str().unwrap().to_string();
        assert_eq!(server.finished(&id)["status"], "SUCCESS");
    }
    server.kill();
    let server = Server::start(data.path(), triggers.path(), &repository.mirrors(), 2);
    // One build for each trigger the push fired (`main` and `code`), each run once.
    let builds = server.get("/v1/builds")["builds"].clone();
    let mut ran: Vec<_> = builds
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["trigger"].as_str().unwrap(),
                b["status"].as_str().unwrap(),
            )
        })
        .collect();
    ran.sort();
    assert_eq!(ran, [("code", "SUCCESS"), ("main", "SUCCESS")], "{builds}");
}

/// Two builds of one server killed mid-step are both closed as soon as it starts again, not the
/// second only once its lease runs out (found by bench/chaos.sh).
#[test]
fn every_build_of_a_killed_server_is_closed_at_the_restart_without_waiting_for_its_lease() {
    let repository = Repository::new();
    let triggers = triggers();
    let data = TempDir::new().unwrap();
    let sleeping = "steps:\n- name: builder/busybox\n  args: [sleep, '600']\n";
    let commit = repository.commit(&[("cloudbuild.yaml", sleeping)], "c", "main");
    let body = push_payload("refs/heads/main", ZERO, &commit, "c");

    // The push fires `main` and `code`: two builds, both running when the server is killed.
    let server = Server::start(data.path(), triggers.path(), &repository.mirrors(), 2);
    let (code, receipt) = server.deliver("push", "k-1", &body, &sign(&body));
    assert_eq!(code, 202, "{receipt}");
    let delivery = server.decided("k-1");
    let ids: Vec<String> = ["main", "code"]
        .iter()
        .map(|trigger| build_of(&delivery, trigger).as_str().unwrap().to_string())
        .collect();
    let start = Instant::now();
    while !ids.iter().all(|id| {
        let build = server.get(&format!("/v1/builds/{id}"));
        build["steps"][0]["status"] == "WORKING"
    }) {
        assert!(start.elapsed() < DEADLINE, "the steps did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
    server.kill();
    let killed = Instant::now();

    let server = Server::start(data.path(), triggers.path(), &repository.mirrors(), 2);
    for id in &ids {
        let build = server.finished(id);
        assert_eq!(build["status"], "INTERNAL_ERROR", "{build}");
    }
    let closed_in = killed.elapsed();
    // Without a renewal a lease lasts 30 s: the second build would wait that long.
    assert!(
        closed_in < Duration::from_secs(20),
        "closed {closed_in:?} after the kill"
    );
    for id in &ids {
        assert_eq!(common::leftovers(id), "", "build {id}");
    }
}

/// Follows a build's log as server-sent events; `seen` is called with each `line` event's text
/// as it arrives, and the `end` event's data is returned.
fn follow(server: &Server, id: &str, mut seen: impl FnMut(&str)) -> Value {
    let mut curl = Command::new("curl")
        .args([
            "-sN",
            &format!("{}/v1/builds/{id}/log?follow=true", server.url),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut event = String::new();
    let mut end = None;
    for line in BufReader::new(curl.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(name) = line.strip_prefix("event: ") {
            event = name.to_string();
        } else if let Some(data) = line.strip_prefix("data: ") {
            let data: Value = serde_json::from_str(data).unwrap();
            match event.as_str() {
                "line" => seen(data["text"].as_str().unwrap()),
                "step" => {}
                "end" => {
                    end = Some(data);
                    break;
                }
                other => panic!("unexpected event {other}: {data}"),
            }
        }
    }
    curl.kill().ok();
    curl.wait().unwrap();
    end.expect("the log ended without an end event")
}

#[test]
fn the_api_cancels_retries_and_runs_triggers_with_the_token() {
    let repository = Repository::new();
    let triggers = triggers();
    let data = TempDir::new().unwrap();
    let main = commit_app(&repository);
    let slow_config =
        "steps:\n- name: builder/busybox\n  args: [sh, -c, 'echo started; sleep 600']\n";
    let slow = repository.commit(&[("cloudbuild.yaml", slow_config)], "slow", "HEAD:slow");

    // Queued only: a queued build is cancelled, with the token only.
    let server = Server::start(data.path(), triggers.path(), &repository.mirrors(), 0);
    let body = push_payload("refs/heads/main", ZERO, &main, "c");
    let (_, receipt) = server.deliver("push", "a-1", &body, &sign(&body));
    let queued = receipt["builds"][0].as_str().unwrap().to_string();
    let cancel = format!("/v1/builds/{queued}/cancel");
    assert_eq!(server.post(&cancel, "", "wrong").0, 401);
    assert_eq!(server.post(&cancel, "", TOKEN).0, 200);
    assert_eq!(
        server.get(&format!("/v1/builds/{queued}"))["status"],
        "CANCELLED"
    );
    assert_eq!(server.post(&cancel, "", TOKEN).0, 409);

    // A manual run names exactly one existing branch, tag or commit.
    let run = "/v1/triggers/main/run";
    let (code, answer) = server.post(
        run,
        r#"{"branch": "main", "substitutions": {"_GREETING": "manual"}}"#,
        TOKEN,
    );
    assert_eq!(code, 200, "{answer}");
    let manual = answer["build"].as_str().unwrap().to_string();
    assert_eq!(server.post(run, r#"{"branch": "nope"}"#, TOKEN).0, 400);
    assert_eq!(
        server
            .post(run, r#"{"branch": "main", "tag": "v1"}"#, TOKEN)
            .0,
        400
    );
    assert_eq!(server.post(run, r#"{"branch": "main"}"#, "").0, 401);
    assert_eq!(
        server
            .post("/v1/triggers/none/run", r#"{"branch": "main"}"#, TOKEN)
            .0,
        404
    );
    server.kill();

    // Running: the manual run, then its retry, build the same commit.
    let server = Server::start(data.path(), triggers.path(), &repository.mirrors(), 2);
    let mut lines = Vec::new();
    let end = follow(&server, &manual, |line| lines.push(line.to_string()));
    assert_eq!(end["status"], "SUCCESS");
    assert_eq!(
        lines,
        [format!("manual main {} main", &main[..7]), "v".to_string()]
    );
    let (code, answer) = server.post(&format!("/v1/builds/{manual}/retry"), "", TOKEN);
    assert_eq!(code, 200, "{answer}");
    let retried = server.finished(answer["build"].as_str().unwrap());
    assert_eq!(
        (&retried["status"], &retried["source"]["commit"]),
        (&json!("SUCCESS"), &json!(main))
    );

    // A running build is stopped by a cancel, and leaves nothing behind.
    let (_, answer) = server.post(run, &format!(r#"{{"commit": "{slow}"}}"#), TOKEN);
    let running = answer["build"].as_str().unwrap().to_string();
    let end = follow(&server, &running, |line| {
        assert_eq!(line, "started");
        let cancel = format!("/v1/builds/{running}/cancel");
        assert_eq!(server.post(&cancel, "", TOKEN).0, 200);
    });
    assert_eq!(end["status"], "CANCELLED");
    let left = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=builder.build={running}"),
        ])
        .output()
        .unwrap();
    assert!(left.stdout.is_empty());

    let openapi = server.get("/openapi.json");
    assert!(openapi["paths"]["/v1/triggers/{name}/run"]["post"].is_object());
}

#[test]
fn triggers_are_created_replaced_and_deleted_through_the_api_and_kept_in_the_store() {
    let repository = Repository::new();
    let triggers = TempDir::new().unwrap();
    let data = TempDir::new().unwrap();
    let server = Server::start(data.path(), triggers.path(), &repository.mirrors(), 2);
    let trigger = "name: api\nfilename: cloudbuild.yaml\n\
                   github: {owner: acme, name: app, push: {branch: ^main$}}\n";
    let (code, answer) = server.post("/v1/triggers", trigger, TOKEN);
    assert_eq!(code, 200, "{answer}");
    assert_eq!(
        answer["trigger"]["rule"],
        "pushes to branches matching \"^main$\" of acme/app"
    );
    assert_eq!(server.post("/v1/triggers", trigger, TOKEN).0, 409);
    assert_eq!(server.post("/v1/triggers", trigger, "").0, 401);
    let (code, answer) = server.post("/v1/triggers", &trigger.replace("^main$", "(main"), TOKEN);
    assert_eq!(code, 400);
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("trigger:3:"), "{message}");

    let commit = commit_app(&repository);
    let body = push_payload("refs/heads/main", ZERO, &commit, "c");
    let (_, receipt) = server.deliver("push", "t-1", &body, &sign(&body));
    let id = receipt["builds"][0].as_str().unwrap().to_string();
    assert_eq!(server.finished(&id)["status"], "SUCCESS");

    let disabled = format!("{trigger}disabled: true\n");
    assert_eq!(
        server
            .request("PUT", "/v1/triggers/api", &disabled, TOKEN)
            .0,
        200
    );
    let renamed = disabled.replace("name: api", "name: other");
    assert_eq!(
        server.request("PUT", "/v1/triggers/api", &renamed, TOKEN).0,
        400
    );
    server.kill();

    // The store keeps them, not the triggers directory: a restart finds the replaced one.
    assert!(!triggers.path().join("api.yaml").exists());
    let fixed = triggers.path().join("fixed.yaml");
    std::fs::write(&fixed, disabled.replace("name: api", "name: fixed")).unwrap();
    let server = Server::start(data.path(), triggers.path(), &repository.mirrors(), 2);
    assert_eq!(server.get("/v1/triggers/api")["disabled"], true);
    // A file's trigger is the operator's: the API neither replaces nor deletes it.
    for (method, body) in [
        ("PUT", trigger.replace("name: api", "name: fixed")),
        ("DELETE", "".into()),
    ] {
        let (code, answer) = server.request(method, "/v1/triggers/fixed", &body, TOKEN);
        assert_eq!(code, 409, "{answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert_eq!(
            message,
            format!(
                "trigger \"fixed\" is defined by the file {}: change it there",
                fixed.display()
            )
        );
    }
    // A push of another commit: the same body again would be a replay, which queues nothing
    // whatever the triggers say.
    let commit = commit_app(&repository);
    let body = push_payload("refs/heads/main", ZERO, &commit, "c");
    let (_, receipt) = server.deliver("push", "t-2", &body, &sign(&body));
    assert_eq!(receipt["builds"], json!([]));
    assert_eq!(
        server.request("DELETE", "/v1/triggers/api", "", TOKEN).0,
        200
    );
    let listed = server.get("/v1/triggers")["triggers"].clone();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["name"], "fixed");
}

#[test]
fn the_cli_submits_follows_and_manages_through_the_server() {
    let repository = Repository::new();
    let triggers = TempDir::new().unwrap();
    let data = TempDir::new().unwrap();
    let server = Server::start(data.path(), triggers.path(), &repository.mirrors(), 2);

    // `submit --server` uploads the source and prints what a local submit prints.
    let source = TempDir::new().unwrap();
    let config = "steps:\n- id: show\n  name: builder/busybox\n  args: [cat, file.txt]\n";
    std::fs::write(source.path().join("cloudbuild.yaml"), config).unwrap();
    std::fs::write(source.path().join("file.txt"), "uploaded\n").unwrap();
    let dir = source.path().to_str().unwrap();
    let config_path = source.path().join("cloudbuild.yaml");
    let (code, out) = server.cli(&["submit", dir, "--config", config_path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    for expected in [
        "Starting Step #0 - \"show\"",
        "Step #0 - \"show\": uploaded",
        "STATUS: SUCCESS",
    ] {
        assert!(out.contains(expected), "{expected:?} missing:\n{out}");
    }
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("ID: "))
        .unwrap()
        .to_string();
    std::fs::write(&config_path, config.replace("file.txt", "missing.txt")).unwrap();
    let (code, out) = server.cli(&["submit", dir, "--config", config_path.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("STATUS: FAILURE"), "{out}");
    std::fs::write(
        &config_path,
        "steps:\n- name: builder/busybox\n  waitFor: [nope]\n",
    )
    .unwrap();
    let (code, out) = server.cli(&["submit", dir, "--config", config_path.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(":3:"), "the error is located: {out}");

    let (code, out) = server.cli(&["builds", "list"]);
    assert!(code == 0 && out.contains(&id), "{out}");
    let (_, out) = server.cli(&["builds", "log", &id]);
    assert_eq!(out.trim(), "Step #0 - \"show\": uploaded");
    let (code, retry) = server.cli(&["builds", "retry", &id]);
    assert_eq!(code, 0, "{retry}");
    let retry = retry.lines().next().unwrap().to_string();
    let (code, out) = server.cli(&["builds", "log", "--stream", &retry]);
    assert!(code == 0 && out.contains("uploaded"), "{out}");

    // Triggers: imported from a file, listed in words, run by hand.
    let file = triggers.path().join("../import.yaml");
    std::fs::write(&file, "name: imported\nfilename: cloudbuild.yaml\ngithub: {owner: acme, name: app, push: {branch: ^main$}}\n").unwrap();
    let (code, out) = server.cli(&["triggers", "import", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let (_, out) = server.cli(&["triggers", "list"]);
    assert_eq!(
        out.trim(),
        "imported: pushes to branches matching \"^main$\" of acme/app"
    );
    commit_app(&repository);
    let (code, run) = server.cli(&["triggers", "run", "imported", "--branch", "main"]);
    assert_eq!(code, 0, "{run}");
    let run = run.lines().next().unwrap().to_string();
    assert_eq!(server.finished(&run)["status"], "SUCCESS");

    // Changes need the token.
    let out = Command::cargo_bin("builder")
        .unwrap()
        .env_remove("BUILDER_API_TOKEN")
        .args(["builds", "cancel", &run, "--server", &server.url])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("API token"));
}

/// A store removed under a running server (an operator's `rm`, a volume unmounted) would be
/// written on to no end, as SQLite writes to a removed file: the server stops instead, with a
/// failure and its log (as JSON here) naming the task that found the store gone.
#[test]
fn a_server_whose_store_is_removed_stops_with_a_failure_naming_the_task() {
    let triggers = self::triggers();
    let data = TempDir::new().unwrap();
    let server = Server::start_with(
        data.path(),
        triggers.path(),
        data.path(),
        0,
        &["--log-format", "json"],
    );
    for file in ["builds.db", "builds.db-wal", "builds.db-shm"] {
        std::fs::remove_file(data.path().join(file)).unwrap();
    }
    let log = server.log.clone();
    assert_eq!(server.exited().code(), Some(1));
    // The log is copied from the server's stderr by a thread that may not have caught up yet.
    // Tasks that write before the store is checked log their own disk I/O errors first; the
    // failure sought is the supervisor's, which names the task.
    let start = Instant::now();
    let failure = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let failure = text
            .lines()
            .map(|line| serde_json::from_str::<Value>(line).unwrap())
            .find(|line| line["level"] == "ERROR" && !line["task"].is_null());
        if let Some(failure) = failure {
            break failure;
        }
        assert!(start.elapsed() < DEADLINE, "no error logged:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(failure["task"], "queue", "{failure}");
    let error = failure["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("builds.db was removed while the store had it open"),
        "{failure}"
    );
}

#[test]
fn a_build_that_waits_in_the_queue_longer_than_its_queue_ttl_expires() {
    let repository = Repository::new();
    let triggers = TempDir::new().unwrap();
    let data = TempDir::new().unwrap();
    let config = data.path().join("cloudbuild.yaml");
    std::fs::write(
        &config,
        "steps:\n- name: builder/busybox\n  args: ['true']\nqueueTtl: 1s\n",
    )
    .unwrap();
    let server = Server::start(data.path(), triggers.path(), &repository.mirrors(), 0);
    let id = server.submit_async(&config, &[]);
    std::thread::sleep(Duration::from_millis(1500));
    server.kill();
    let server = Server::start(data.path(), triggers.path(), &repository.mirrors(), 2);
    let build = server.finished(&id);
    assert_eq!(build["status"], "EXPIRED", "{build}");
    assert!(
        build["failure"].as_str().unwrap().contains("queueTtl"),
        "{build}"
    );
}

#[test]
fn settings_come_from_a_file_with_flags_first() {
    let triggers = self::triggers();
    let data = TempDir::new().unwrap();
    let secret_file = data.path().join("secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    // The shipped example reads, and every setting it names is one the server knows.
    let example = std::fs::read_to_string("configs/service/serve.yaml").unwrap();
    let settings = example
        // Unusable, so the server only starts because the flag wins.
        .replace("127.0.0.1:8080", "not-an-address")
        .replace(
            "/var/lib/builder/builds.db",
            &data.path().join("other.db").display().to_string(),
        )
        .replace("/var/lib/builder", &data.path().display().to_string())
        .replace(
            "/etc/builder/triggers",
            &triggers.path().display().to_string(),
        )
        .replace(
            "/etc/builder/schedules",
            &data.path().join("schedules").display().to_string(),
        )
        .replace(
            "/etc/builder/webhook-secret",
            &secret_file.display().to_string(),
        )
        .replace("/etc/builder/api-token", &secret_file.display().to_string())
        .replace(
            "/etc/builder/github-token",
            &secret_file.display().to_string(),
        );
    let file = data.path().join("serve.yaml");
    std::fs::write(&file, settings).unwrap();
    let mut child = Command::cargo_bin("builder")
        .unwrap()
        .env_remove("BUILDER_DATA_DIR")
        .args(["serve", "--config"])
        .arg(&file)
        .args(["--listen", "127.0.0.1:0", "--max-concurrent-builds", "0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let first = stderr.lines().next().unwrap().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        first.contains("listening on http://127.0.0.1:")
            && first.contains("(5 triggers, 0 schedules, 0 notifiers)"),
        "{first}"
    );
    assert!(
        data.path().join("other.db").is_file(),
        "the store URL was used"
    );

    std::fs::write(&file, "listen: 127.0.0.1:0\nmaxBuilds: 3\n").unwrap();
    let out = Command::cargo_bin("builder")
        .unwrap()
        .args(["serve", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("maxBuilds"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A grant names secrets, not versions of them.
    let whole = "projects/p/secrets/db/versions/1";
    std::fs::write(&file, format!("submitSecrets: [{whole}]\n")).unwrap();
    let out = Command::cargo_bin("builder")
        .unwrap()
        .args(["serve", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(&format!("submitSecrets: {whole:?} is not a secret's name")),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A config that shows what a scheduled run gets: its schedule's name, the date of its time
/// (a dynamic substitution, as trigger builds have them) and the schedule's substitutions.
const SCHEDULED_CONFIG: &str = "steps:\n- name: builder/busybox\n  \
    args: [echo, '$_SCHEDULE_NAME ${_SCHEDULED_TIME:0:10} $_GREETING $BRANCH_NAME']\n";

#[test]
fn a_schedule_due_within_the_test_builds_on_the_engine_and_is_managed_from_the_cli() {
    let repository = Repository::new();
    let triggers = triggers();
    let data = TempDir::new().unwrap();
    repository.commit(&[("cloudbuild.yaml", SCHEDULED_CONFIG)], "c", "main");
    // The default schedules directory: DATA_DIR/schedules.
    let schedules = data.path().join("schedules");
    std::fs::create_dir_all(&schedules).unwrap();
    std::fs::write(
        schedules.join("every-minute.yaml"),
        "name: every-minute\nschedule: '* * * * *'\ntrigger: main\nbranch: main\n\
         concurrencyPolicy: Forbid\nsubstitutions: {_GREETING: scheduled}\n",
    )
    .unwrap();
    let server = Server::start(data.path(), triggers.path(), &repository.mirrors(), 2);
    let (code, out) = server.cli(&["schedules", "list"]);
    assert!(
        code == 0 && out.starts_with("every-minute: * * * * * (UTC), next "),
        "{out}"
    );

    // Due at the next minute: its build runs on the engine.
    let start = Instant::now();
    let id = loop {
        let builds = server.get("/v1/builds?schedule=every-minute")["builds"].clone();
        if let Some(id) = builds[0]["id"].as_str() {
            break id.to_string();
        }
        assert!(start.elapsed() < DEADLINE, "the schedule did not fire");
        std::thread::sleep(Duration::from_millis(500));
    };
    let build = server.finished(&id);
    assert_eq!(build["status"], "SUCCESS", "{build}");
    assert_eq!(build["schedule"], "every-minute");
    let scheduled_time = build["substitutions"]["_SCHEDULED_TIME"].as_str().unwrap();
    assert!(scheduled_time.ends_with(":00Z"), "{scheduled_time}");
    assert_eq!(
        server.log(&id),
        [format!(
            "every-minute {} scheduled main",
            &scheduled_time[..10]
        )]
    );
    let (_, described) = server.cli(&["schedules", "describe", "every-minute"]);
    let described: Value = serde_json::from_str(&described).unwrap();
    assert_eq!(described["lastRun"]["build"], id.as_str(), "{described}");
    assert_eq!(described["lastRun"]["scheduledTime"], scheduled_time);

    // Paused from the CLI, with the token only; run now all the same.
    assert_eq!(
        server.post("/v1/schedules/every-minute/pause", "", "").0,
        401
    );
    let (code, out) = server.cli(&["schedules", "pause", "every-minute"]);
    assert_eq!(code, 0, "{out}");
    let (_, out) = server.cli(&["schedules", "list"]);
    assert!(out.trim_end().ends_with("(paused)"), "{out}");
    let (code, out) = server.cli(&["schedules", "run-now", "every-minute"]);
    assert_eq!(code, 0, "{out}");
    let manual = out.lines().next().unwrap().to_string();
    assert_eq!(server.finished(&manual)["status"], "SUCCESS");
    let (code, out) = server.cli(&["schedules", "resume", "every-minute"]);
    assert!(code == 0 && !out.contains("(paused)"), "{out}");
    assert_eq!(
        server.request("DELETE", "/v1/triggers/main", "", TOKEN).0,
        409,
        "a trigger that a schedule runs stays"
    );
}

#[test]
fn a_schedule_naming_no_trigger_stops_the_server_with_its_location() {
    let triggers = triggers();
    let data = TempDir::new().unwrap();
    let schedules = data.path().join("schedules");
    std::fs::create_dir_all(&schedules).unwrap();
    std::fs::write(
        schedules.join("nightly.yaml"),
        "name: nightly\nschedule: 0 2 * * *\ntrigger: mainn\nbranch: main\n",
    )
    .unwrap();
    let stderr = refused_start(data.path(), triggers.path());
    assert!(
        stderr.contains(
            "nightly.yaml:3:10: trigger: no trigger \"mainn\" on this server; did you mean \"main\"?"
        ),
        "{stderr}"
    );
}

/// Issue 22: a long log, followed while its build runs (from the server's memory) and read after
/// it (from the store's chunks), comes whole and in order both ways, with stderr apart.
#[test]
fn issue_22_a_long_log_is_followed_and_read_back_whole_and_in_order() {
    let repository = Repository::new();
    let triggers = TempDir::new().unwrap();
    let data = TempDir::new().unwrap();
    let server = Server::start(data.path(), triggers.path(), &repository.mirrors(), 2);
    let config = TempDir::new().unwrap();
    let config_path = config.path().join("cloudbuild.yaml");
    // Lines of ~100 bytes: 4 MB, dozens of chunks and more than the server's ring.
    let pad = "0".repeat(90);
    let config_text = format!(
        "steps:\n- name: builder/busybox\n  script: |\n    seq 1 30000 | sed 's/^/{pad} /'\n    \
         echo apart >&2\n    seq 30001 40000 | sed 's/^/{pad} /'\n"
    );
    std::fs::write(&config_path, config_text).unwrap();
    let id = server.submit_async(&config_path, &[]);
    let mut followed = Vec::new();
    let end = follow(&server, &id, |line| followed.push(line.to_string()));
    assert_eq!(end["status"], "SUCCESS");
    let expected: Vec<String> = (1..=40_000).map(|i| format!("{pad} {i}")).collect();
    // The stderr line comes after the lines before it on stdout, whichever order the engine
    // interleaved the streams in; compared apart from them.
    let apart = |lines: &mut Vec<String>| {
        let at = lines
            .iter()
            .position(|l| l == "apart")
            .expect("the stderr line");
        lines.remove(at);
    };
    apart(&mut followed);
    let differs = |lines: &[String]| {
        let at = lines.iter().zip(&expected).position(|(a, b)| a != b);
        format!(
            "{} lines, not {}; first difference at {at:?}",
            lines.len(),
            expected.len()
        )
    };
    assert!(
        followed == expected,
        "the followed log: {}",
        differs(&followed)
    );
    let lines = server.log_lines(&id);
    let stderr: Vec<&Value> = lines.iter().filter(|l| l["stream"] == "stderr").collect();
    assert_eq!(stderr.len(), 1);
    assert_eq!(stderr[0]["text"], "apart");
    let seqs: Vec<i64> = lines.iter().map(|l| l["seq"].as_i64().unwrap()).collect();
    assert!(seqs.iter().copied().eq(1..=40_001), "numbered 1.. in order");
    let mut texts: Vec<String> = lines
        .iter()
        .map(|l| l["text"].as_str().unwrap().to_string())
        .collect();
    apart(&mut texts);
    assert!(texts == expected, "the stored log: {}", differs(&texts));
    // Paging by line number reads across chunks.
    let page = server.get(&format!("/v1/builds/{id}/log?after=29990"));
    assert_eq!(page["lines"][0]["seq"], 29_991);
}

/// An upload that unpacks past the server's limits is refused when it arrives, naming the limit:
/// it is never kept, and no build is queued over it.
#[test]
fn issue_18_an_upload_over_a_limit_is_refused_naming_the_limit() {
    let (triggers, data, mirrors) = (
        TempDir::new().unwrap(),
        TempDir::new().unwrap(),
        TempDir::new().unwrap(),
    );
    let server = Server::start_with(
        data.path(),
        triggers.path(),
        mirrors.path(),
        1,
        &["--max-upload-bytes", "1000", "--max-upload-entries", "3"],
    );
    let config = "steps:\n- name: builder/busybox\n  args: [ls]\n";
    // Within both limits: the config and a 900-byte file.
    let within = TempDir::new().unwrap();
    std::fs::write(within.path().join("cloudbuild.yaml"), config).unwrap();
    std::fs::write(within.path().join("data"), "x".repeat(900 - config.len())).unwrap();
    let over_bytes = TempDir::new().unwrap();
    std::fs::write(over_bytes.path().join("cloudbuild.yaml"), config).unwrap();
    std::fs::write(over_bytes.path().join("data"), "x".repeat(2000)).unwrap();
    let over_entries = TempDir::new().unwrap();
    std::fs::write(over_entries.path().join("cloudbuild.yaml"), config).unwrap();
    for file in ["a", "b", "c"] {
        std::fs::write(over_entries.path().join(file), "x").unwrap();
    }
    let cases = [
        (&within, None),
        (
            &over_bytes,
            Some("more than 1000 bytes, the server's limit (maxUploadBytes)"),
        ),
        (
            &over_entries,
            Some("more than 3 entries, the server's limit (maxUploadEntries)"),
        ),
    ];
    for (source, refused) in cases {
        let dir = source.path().to_str().unwrap();
        let config = source.path().join("cloudbuild.yaml");
        let (code, out) = server.cli(&["submit", dir, "--config", config.to_str().unwrap()]);
        match refused {
            None => assert!(code == 0 && out.contains("STATUS: SUCCESS"), "{out}"),
            Some(message) => assert!(
                code == 1 && out.contains(message) && !out.contains("Created build"),
                "{message:?} missing, or a build queued:\n{out}"
            ),
        }
    }
    let builds = server.get("/v1/builds");
    assert_eq!(
        builds["builds"].as_array().map(Vec::len),
        Some(1),
        "{builds}"
    );
}
