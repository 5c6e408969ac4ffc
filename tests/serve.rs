//! `builder serve` end to end: a real `builder serve` process, real GitHub push payloads (from
//! `webhooks/`) rewritten to name a repository served from a local bare git repository, signed
//! with the webhook secret as GitHub signs them, and builds that run on the real engine.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::cargo::CommandCargoExt;
use serde_json::{Value, json};
use tempfile::TempDir;

mod common;

const SECRET: &str = "It's a Secret to Everybody";
const DEADLINE: Duration = Duration::from_secs(120);

/// A repository "acme/app", served from a bare repository that the server fetches through its
/// `--git-url-rewrite`, with a working clone to commit and push from.
struct Repository {
    root: TempDir,
}

impl Repository {
    fn new() -> Self {
        let root = TempDir::new().unwrap();
        let repository = Self { root };
        repository.git(&["init", "-q", "--bare", "github/acme/app.git"]);
        repository.git(&["clone", "-q", "github/acme/app.git", "work"]);
        repository
    }

    fn mirrors(&self) -> PathBuf {
        self.root.path().join("github")
    }

    fn git(&self, args: &[&str]) -> String {
        self.git_in(self.root.path(), args)
    }

    fn git_in(&self, dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .current_dir(dir)
            .args(["-c", "user.name=Test", "-c", "user.email=test@example.com"])
            .args(["-c", "init.defaultBranch=main"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Writes `files` (path, contents) into the working clone, commits them with `message` and
    /// pushes `refspec`; returns the commit.
    fn commit(&self, files: &[(&str, &str)], message: &str, refspec: &str) -> String {
        let work = self.root.path().join("work");
        for (path, contents) in files {
            let path = work.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, contents).unwrap();
        }
        self.git_in(&work, &["add", "-A"]);
        self.git_in(&work, &["commit", "-q", "--allow-empty", "-m", message]);
        self.git_in(&work, &["push", "-q", "-f", "origin", refspec]);
        self.git_in(&work, &["rev-parse", "HEAD"])
    }
}

/// A running `builder serve`, killed when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(data: &Path, triggers: &Path, mirrors: &Path, max_builds: u32) -> Self {
        let mut child = Command::cargo_bin("builder")
            .unwrap()
            .env("BUILDER_DATA_DIR", data)
            .env("BUILDER_WEBHOOK_SECRET", SECRET)
            .args(["serve", "--listen", "127.0.0.1:0", "--triggers"])
            .arg(triggers)
            .arg("--git-url-rewrite")
            .arg(format!("https://github.com/={}/", mirrors.display()))
            .args(["--max-concurrent-builds", &max_builds.to_string()])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let url = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|line| {
                Some(
                    line.split("listening on ")
                        .nth(1)?
                        .split(' ')
                        .next()?
                        .to_string(),
                )
            })
            .expect("the server says where it listens");
        // Keep draining stderr so the server never blocks on it.
        std::thread::spawn(move || lines.for_each(drop));
        Self { child, url }
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// POSTs a delivery; returns the status code and the JSON answer.
    fn deliver(&self, event: &str, id: &str, body: &[u8], signature: &str) -> (u16, Value) {
        let body_file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(body_file.path(), body).unwrap();
        let out = Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}", "-X", "POST"])
            .args(["-H", "Content-Type: application/json"])
            .args(["-H", &format!("X-GitHub-Event: {event}")])
            .args(["-H", &format!("X-GitHub-Delivery: {id}")])
            .args(["-H", &format!("X-Hub-Signature-256: {signature}")])
            .arg("--data-binary")
            .arg(format!("@{}", body_file.path().display()))
            .arg(format!("{}/webhooks/github", self.url))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (answer, code) = text.rsplit_once('\n').unwrap();
        (
            code.parse().unwrap(),
            serde_json::from_str(answer).unwrap_or(Value::Null),
        )
    }

    fn get(&self, path: &str) -> Value {
        let out = Command::new("curl")
            .args(["-sf", &format!("{}{path}", self.url)])
            .output()
            .unwrap();
        assert!(out.status.success(), "GET {path}");
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The build once it has finished.
    fn finished(&self, id: &str) -> Value {
        let start = Instant::now();
        loop {
            let build = self.get(&format!("/v1/builds/{id}"));
            if !matches!(build["status"].as_str(), Some("QUEUED" | "WORKING")) {
                return build;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "build {id} did not finish: {build}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The delivery's record once every trigger has decided.
    fn decided(&self, id: &str) -> Value {
        let start = Instant::now();
        loop {
            let deliveries = self.get("/v1/deliveries");
            let found = deliveries["deliveries"]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["id"] == id && d["verified"] == true)
                .cloned();
            if let Some(delivery) = found.filter(|d| d["pending"] == false) {
                return delivery;
            }
            assert!(start.elapsed() < DEADLINE, "delivery {id} not decided");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log(&self, id: &str) -> Vec<String> {
        let log = self.get(&format!("/v1/builds/{id}/log"));
        log["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["text"].as_str().unwrap().to_string())
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real push payload from `webhooks/`, rewritten to say that `refname` of acme/app moved from
/// `before` to `after` with `message`.
fn push_payload(refname: &str, before: &str, after: &str, message: &str) -> Vec<u8> {
    let mut payload: Value =
        serde_json::from_slice(include_bytes!("../webhooks/github/push/branch-update.json"))
            .unwrap();
    payload["ref"] = json!(refname);
    payload["before"] = json!(before);
    payload["after"] = json!(after);
    payload["created"] = json!(before == ZERO);
    payload["deleted"] = json!(after == ZERO);
    payload["head_commit"]["id"] = json!(after);
    payload["head_commit"]["message"] = json!(message);
    let repository = &mut payload["repository"];
    repository["name"] = json!("app");
    repository["full_name"] = json!("acme/app");
    repository["owner"]["login"] = json!("acme");
    repository["owner"]["name"] = json!("acme");
    repository["clone_url"] = json!("https://github.com/acme/app.git");
    serde_json::to_vec(&payload).unwrap()
}

const ZERO: &str = "0000000000000000000000000000000000000000";

fn sign(body: &[u8]) -> String {
    builder::webhooks::sign(SECRET.as_bytes(), body)
}

/// Trigger files: `main` builds every push to main; `src` only pushes to main that change `src/`;
/// `release` builds tags `v*`.
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
}

#[test]
fn forged_and_malformed_deliveries_queue_nothing() {
    let repository = Repository::new();
    let triggers = triggers();
    let data = TempDir::new().unwrap();
    let server = Server::start(data.path(), triggers.path(), &repository.mirrors(), 2);
    let commit = repository.commit(&[("cloudbuild.yaml", CONFIG)], "c", "main");
    let body = push_payload("refs/heads/main", ZERO, &commit, "c");

    let forged = builder::webhooks::sign(b"not the secret", &body);
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
    let deliveries = server.get("/v1/deliveries")["deliveries"].clone();
    let rejected = deliveries
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["verified"] == false)
        .count();
    assert_eq!(rejected, 3, "{deliveries}");
    // A forged delivery does not claim its id: the genuine one with that id still builds.
    let (code, receipt) = server.deliver("push", "f-1", &body, &sign(&body));
    assert_eq!(code, 202, "{receipt}");
}

#[test]
fn a_build_accepted_before_a_crash_runs_once_after_the_restart() {
    let repository = Repository::new();
    let triggers = triggers();
    let data = TempDir::new().unwrap();
    let commit = repository.commit(
        &[("cloudbuild.yaml", CONFIG), ("version.txt", "v")],
        "c",
        "main",
    );
    let body = push_payload("refs/heads/main", ZERO, &commit, "c");

    // Builds are only queued by this server; it is killed right after the answer.
    let server = Server::start(data.path(), triggers.path(), &repository.mirrors(), 0);
    let (code, receipt) = server.deliver("push", "k-1", &body, &sign(&body));
    assert_eq!(code, 202, "{receipt}");
    server.kill();

    let server = Server::start(data.path(), triggers.path(), &repository.mirrors(), 2);
    let id = build_of(&server.decided("k-1"), "main")
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(server.finished(&id)["status"], "SUCCESS");
    server.kill();
    let server = Server::start(data.path(), triggers.path(), &repository.mirrors(), 2);
    let builds = server.get("/v1/builds")["builds"].clone();
    assert_eq!(builds.as_array().unwrap().len(), 1, "{builds}");
    assert_eq!(builds[0]["status"], "SUCCESS");
}
