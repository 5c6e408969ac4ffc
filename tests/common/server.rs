//! A real `builder serve` for the tests that drive it: started on a free port with the webhook
//! secret and the API token below, requests through curl, and GitHub push payloads from
//! `webhooks/` signed as GitHub signs them.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::cargo::CommandCargoExt;
use serde_json::{Value, json};

pub const SECRET: &str = "It's a Secret to Everybody";
pub const TOKEN: &str = "api-token";
pub const DEADLINE: Duration = Duration::from_secs(120);

/// The status code and JSON answer of a `curl -w '\n%{http_code}'` request.
pub fn status_and_answer(out: &std::process::Output) -> (u16, Value) {
    let text = String::from_utf8_lossy(&out.stdout);
    let (answer, code) = text.rsplit_once('\n').unwrap();
    (
        code.parse().unwrap(),
        serde_json::from_str(answer).unwrap_or(Value::Null),
    )
}

/// A running `builder serve`, stopped when dropped (see its `Drop`).
pub struct Server {
    child: Child,
    pub url: String,
    /// Where the server's stderr goes.
    pub log: PathBuf,
}

impl Server {
    pub fn start(data: &Path, triggers: &Path, mirrors: &Path, max_builds: u32) -> Self {
        Self::start_with(data, triggers, mirrors, max_builds, &[])
    }

    /// A server started with `extra` arguments too.
    pub fn start_with(
        data: &Path,
        triggers: &Path,
        mirrors: &Path,
        max_builds: u32,
        extra: &[&str],
    ) -> Self {
        let mut child = Command::cargo_bin("builder")
            .unwrap()
            .env("BUILDER_DATA_DIR", data)
            .env("BUILDER_WEBHOOK_SECRET", SECRET)
            .env("BUILDER_API_TOKEN", TOKEN)
            .args(["serve", "--listen", "127.0.0.1:0", "--triggers"])
            .arg(triggers)
            .arg("--git-url-rewrite")
            .arg(format!("https://github.com/={}/", mirrors.display()))
            .args(["--max-concurrent-builds", &max_builds.to_string()])
            .args(extra)
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
        // Keep draining stderr so the server never blocks on it; kept for a failing test.
        let log = data.join("server.log");
        let mut file = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                use std::io::Write;
                let _ = writeln!(file, "{line}");
            }
        });
        Self { child, url, log }
    }

    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Stops the server as an operator does (SIGTERM) and waits for it to exit.
    pub fn stop(self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        self.exited()
    }

    /// Waits for the server to exit by itself.
    pub fn exited(mut self) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(start.elapsed() < DEADLINE, "the server did not stop");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// POSTs a delivery; returns the status code and the JSON answer.
    pub fn deliver(&self, event: &str, id: &str, body: &[u8], signature: &str) -> (u16, Value) {
        deliver_to(&self.url, event, id, body, signature)
    }

    /// POSTs `body` to `path` with `token`; returns the status code and the JSON answer.
    pub fn post(&self, path: &str, body: &str, token: &str) -> (u16, Value) {
        self.request("POST", path, body, token)
    }

    pub fn request(&self, method: &str, path: &str, body: &str, token: &str) -> (u16, Value) {
        let out = Command::new("curl")
            .args([
                "-s",
                "-w",
                "\n%{http_code}",
                "-X",
                method,
                "--data-binary",
                body,
            ])
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .arg(format!("{}{path}", self.url))
            .output()
            .unwrap();
        status_and_answer(&out)
    }

    /// Runs `builder ARGS --server URL` with the API token; exit code and stdout (stderr
    /// appended).
    pub fn cli(&self, args: &[&str]) -> (i32, String) {
        let out = Command::cargo_bin("builder")
            .unwrap()
            .env("BUILDER_API_TOKEN", TOKEN)
            .args(args)
            .args(["--server", &self.url])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code().unwrap(), text)
    }

    /// Submits `config` (no source) with `extra` flags and returns at once: the build's id.
    pub fn submit_async(&self, config: &Path, extra: &[&str]) -> String {
        let mut args = vec!["submit", "--no-source", "--async"];
        args.extend(extra);
        args.extend(["--config", config.to_str().unwrap()]);
        let (code, out) = self.cli(&args);
        assert_eq!(code, 0, "{out}");
        out.lines().next().unwrap().to_string()
    }

    pub fn get(&self, path: &str) -> Value {
        serde_json::from_str(&self.get_text(path)).unwrap()
    }

    /// A page of the console, as text.
    pub fn get_text(&self, path: &str) -> String {
        let out = Command::new("curl")
            .args(["-sf", &format!("{}{path}", self.url)])
            .output()
            .unwrap();
        assert!(out.status.success(), "GET {path}");
        String::from_utf8(out.stdout).unwrap()
    }

    /// The build's record once `done` holds for it.
    pub fn build_when(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let build = self.get(&format!("/v1/builds/{id}"));
            if done(&build) {
                return build;
            }
            assert!(start.elapsed() < DEADLINE, "build {id}: {build}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Pushes to `main` of `repository`, one commit of `config` as `cloudbuild.yaml` for each
    /// `(delivery id, message)`, each delivered and decided: the build each queued, in order.
    pub fn push_builds(
        &self,
        repository: &super::Repository,
        config: &str,
        pushes: &[(&str, &str)],
    ) -> Vec<String> {
        pushes
            .iter()
            .map(|(delivery, message)| {
                let decided = self.push_decided(repository, config, delivery, message);
                decided["results"][0]["buildId"]
                    .as_str()
                    .unwrap_or_else(|| panic!("a build queued: {decided}"))
                    .to_string()
            })
            .collect()
    }

    /// A push to `main` of `repository` (a commit of `config` as `cloudbuild.yaml`), delivered
    /// as `delivery`: its record once every trigger has decided.
    pub fn push_decided(
        &self,
        repository: &super::Repository,
        config: &str,
        delivery: &str,
        message: &str,
    ) -> Value {
        let commit = repository.commit(&[("cloudbuild.yaml", config)], message, "main");
        let body = push_payload("refs/heads/main", ZERO, &commit, message);
        let (code, receipt) = self.deliver("push", delivery, &body, &sign(&body));
        assert_eq!(code, 202, "{receipt}");
        self.decided(delivery)
    }

    /// The build once it has finished.
    pub fn finished(&self, id: &str) -> Value {
        let start = Instant::now();
        loop {
            let build = self.get(&format!("/v1/builds/{id}"));
            if !matches!(
                build["status"].as_str(),
                Some("PENDING" | "QUEUED" | "WORKING")
            ) {
                return build;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "build {id} did not finish: {build}\nserver log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The delivery's record once every trigger has decided.
    pub fn decided(&self, id: &str) -> Value {
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

    /// The build's log as stored, every page of it.
    pub fn log(&self, id: &str) -> Vec<String> {
        self.log_lines(id)
            .iter()
            .map(|line| line["text"].as_str().unwrap().to_string())
            .collect()
    }

    /// Every line of a build's log as the API gives them (`seq`, `step`, `stream`, `text`),
    /// read a page at a time.
    pub fn log_lines(&self, id: &str) -> Vec<Value> {
        let mut lines = Vec::new();
        let mut after = Some(0);
        while let Some(from) = after {
            let mut page = self.get(&format!("/v1/builds/{id}/log?after={from}"));
            lines.append(page["lines"].as_array_mut().unwrap());
            after = page["next"].as_i64();
        }
        lines
    }
}

/// POSTs a delivery to the server at `url`; returns the status code (0: no answer) and the
/// JSON answer.
pub fn deliver_to(url: &str, event: &str, id: &str, body: &[u8], signature: &str) -> (u16, Value) {
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
        .arg(format!("{}/webhooks/github", url))
        .output()
        .unwrap();
    status_and_answer(&out)
}

/// A test's server is stopped as an operator stops it (SIGTERM), so that it cancels its builds
/// and removes their containers; killed only if it does not end in time.
impl Drop for Server {
    fn drop(&mut self) {
        // Already ended (killed on purpose): its pid may be another process's by now.
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real push payload from `webhooks/`, rewritten to say that `refname` of acme/app moved from
/// `before` to `after` with `message`.
pub fn push_payload(refname: &str, before: &str, after: &str, message: &str) -> Vec<u8> {
    let mut payload: Value = serde_json::from_slice(include_bytes!(
        "../../webhooks/github/push/branch-update.json"
    ))
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

pub const ZERO: &str = "0000000000000000000000000000000000000000";

pub fn sign(body: &[u8]) -> String {
    builder::core::webhooks::sign(SECRET.as_bytes(), body)
}
