//! Notifications end to end (issue 20): a real `builder serve --notifications DIR` publishes
//! every status a build takes as Cloud Build's Pub/Sub message, to an HTTP endpoint that checks
//! its signature, a Slack incoming webhook that checks its body, and Debian's aiosmtpd, a real SMTP
//! server, whose mailbox receives the mail; a target that never answers holds up no build; and a
//! filter that is not CEL stops the server, naming the file, line and notifier.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use assert_cmd::cargo::CommandCargoExt;
use base64::Engine as _;
use hmac::{KeyInit, Mac};
use serde_json::Value;
use tempfile::TempDir;

mod common;

use common::Repository;
use common::server::{DEADLINE, SECRET, Server};

const HOOK_KEY: &str = "the hook's signing key";

/// An HTTP request as a target received it.
struct Received {
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A local HTTP target: every request it receives goes to the channel; it answers 200, or, when
/// `answers` is false, holds the connection open without a word.
fn target(answers: bool) -> (String, mpsc::Receiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let Some(request) = read_request(&stream) else {
                continue;
            };
            if tx.send(request).is_err() {
                return;
            }
            if answers {
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
            } else {
                held.push(stream);
            }
        }
    });
    (url, rx)
}

fn read_request(stream: &TcpStream) -> Option<Received> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split(' ').nth(1)?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (key, value) = line.split_once(':')?;
        headers.push((key.trim().to_string(), value.trim().to_string()));
    }
    let length = headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, value)| value.parse().unwrap());
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Received {
        path,
        headers,
        body,
    })
}

/// Debian's aiosmtpd on a free port, delivering into the Maildir `mailbox`; killed when dropped.
struct MailServer {
    child: Child,
    port: u16,
}

impl MailServer {
    fn start(mailbox: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("/usr/bin/python3")
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(mailbox)
            .stderr(Stdio::null())
            .spawn()
            .expect("aiosmtpd (python3-aiosmtpd, installed by scripts/dev-env.sh)");
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < DEADLINE, "aiosmtpd did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        MailServer { child, port }
    }
}

impl Drop for MailServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

fn notifier(kind: &str, name: &str, filter: &str, delivery: &str, secrets: &str) -> String {
    format!(
        "apiVersion: cloud-build-notifiers/v1\nkind: {kind}\nmetadata:\n  name: {name}\n\
         spec:\n  notification:\n{filter}    delivery:\n{delivery}{secrets}"
    )
}

fn build_config(dir: &Path) -> std::path::PathBuf {
    let config = dir.join("cloudbuild.yaml");
    std::fs::write(
        &config,
        "steps:\n- name: builder/busybox\n  id: hello\n  args: [echo, hello]\n",
    )
    .unwrap();
    config
}

fn next(rx: &mpsc::Receiver<Received>) -> Received {
    rx.recv_timeout(DEADLINE).expect("a notification")
}

/// The keys of a Build resource that Cloud Build's REST reference documents: the messages'
/// `data` may hold no other (v1 `Build`, https://cloud.google.com/build/docs/api/reference/rest/v1/projects.builds).
const BUILD_FIELDS: &[&str] = &[
    "name",
    "id",
    "projectId",
    "status",
    "statusDetail",
    "source",
    "steps",
    "results",
    "createTime",
    "startTime",
    "finishTime",
    "timeout",
    "images",
    "queueTtl",
    "artifacts",
    "logsBucket",
    "sourceProvenance",
    "buildTriggerId",
    "options",
    "logUrl",
    "substitutions",
    "tags",
    "secrets",
    "timing",
    "approval",
    "serviceAccount",
    "availableSecrets",
    "warnings",
    "gitConfig",
    "failureInfo",
    "dependencies",
];

#[test]
fn every_status_is_published_signed_over_http_and_the_end_reaches_slack_and_a_mailbox() {
    let repository = Repository::new();
    let (triggers, data, secrets, notifiers, mailbox) = (
        TempDir::new().unwrap(),
        TempDir::new().unwrap(),
        TempDir::new().unwrap(),
        TempDir::new().unwrap(),
        TempDir::new().unwrap(),
    );
    let (hook_url, hook) = target(true);
    let (slack_url, slack) = target(true);
    // A Maildir aiosmtpd makes: it makes none inside a directory that exists.
    let maildir = mailbox.path().join("Maildir");
    let mail = MailServer::start(&maildir);
    write(secrets.path(), "hook-key", HOOK_KEY);
    write(
        secrets.path(),
        "slack-url",
        &format!("{slack_url}/services/T0/B0/x"),
    );
    let secret = |name: &str| {
        format!(
            "  secrets:\n  - name: {name}\n    value: projects/p/secrets/{name}/versions/latest\n"
        )
    };
    write(
        notifiers.path(),
        "hook.yaml",
        &notifier(
            "HTTPNotifier",
            "hook",
            "",
            &format!(
                "      url: {hook_url}/builds\n      signingSecret:\n        secretRef: key\n"
            ),
            &secret("key").replace("secrets/key/", "secrets/hook-key/"),
        ),
    );
    let at_the_end = "    filter: build.status in [Build.Status.SUCCESS, Build.Status.FAILURE]\n";
    write(
        notifiers.path(),
        "slack.yaml",
        &notifier(
            "SlackNotifier",
            "team-chat",
            at_the_end,
            "      webhookUrl:\n        secretRef: slack-url\n",
            &secret("slack-url"),
        ),
    );
    write(
        notifiers.path(),
        "mail.yaml",
        &notifier(
            "SMTPNotifier",
            "team-mail",
            at_the_end,
            &format!(
                "      server: 127.0.0.1\n      port: '{}'\n      sender: ci@example.com\n      \
                 recipients: [team@example.com]\n",
                mail.port
            ),
            "",
        ),
    );
    let server = Server::start_with(
        data.path(),
        triggers.path(),
        &repository.mirrors(),
        2,
        &[
            "--notifications",
            notifiers.path().to_str().unwrap(),
            "--secrets-dir",
            secrets.path().to_str().unwrap(),
        ],
    );
    let id = server.submit_async(&build_config(data.path()), &[]);
    server.finished(&id);

    // Every status, in order, each a Pub/Sub push message whose data is the build at it.
    let (mut statuses, mut ended) = (Vec::new(), Value::Null);
    while statuses.last().map(String::as_str) != Some("SUCCESS") {
        let request = next(&hook);
        assert_eq!(request.path, "/builds");
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(HOOK_KEY.as_bytes()).unwrap();
        mac.update(&request.body);
        let expected: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            request.header("x-builder-signature-256"),
            Some(format!("sha256={expected}").as_str())
        );
        let message = request.json();
        let attributes = &message["message"]["attributes"];
        assert_eq!(attributes["buildId"], id.as_str(), "{message}");
        let data = base64::engine::general_purpose::STANDARD
            .decode(message["message"]["data"].as_str().unwrap())
            .unwrap();
        let build: Value = serde_json::from_slice(&data).unwrap();
        assert_eq!(build["id"], id.as_str());
        assert_eq!(build["status"], attributes["status"]);
        assert_eq!(build["projectId"], "local");
        assert_eq!(build["logUrl"], format!("{}/builds/{id}", server.url));
        for key in build.as_object().unwrap().keys() {
            assert!(
                BUILD_FIELDS.contains(&key.as_str()),
                "{key} is no Build field"
            );
        }
        statuses.push(attributes["status"].as_str().unwrap().to_string());
        ended = build;
    }
    assert_eq!(statuses, ["QUEUED", "WORKING", "SUCCESS"]);
    // The end's message carries the steps as they ran.
    assert_eq!(ended["steps"][0]["id"], "hello", "{ended}");
    assert_eq!(ended["steps"][0]["status"], "SUCCESS", "{ended}");
    assert!(ended["finishTime"].is_string(), "{ended}");

    // Slack: only the end, as its filter says, with the status and the build's page.
    let posted = next(&slack);
    assert_eq!(posted.path, "/services/T0/B0/x");
    let body = posted.json();
    let text = body["text"].as_str().unwrap();
    assert!(text.contains("SUCCESS") && text.contains(&id), "{body}");
    assert!(
        body["blocks"]
            .to_string()
            .contains(&format!("/builds/{id}")),
        "{body}"
    );
    assert!(slack.recv_timeout(Duration::from_secs(2)).is_err());

    // The mailbox: one mail, from the sender to the team, saying how the build ended.
    let new = maildir.join("new");
    let start = Instant::now();
    let mail_text = loop {
        let files: Vec<_> = std::fs::read_dir(&new)
            .map(|entries| entries.filter_map(Result::ok).collect())
            .unwrap_or_default();
        if let Some(file) = files.first() {
            assert_eq!(files.len(), 1);
            break std::fs::read_to_string(file.path()).unwrap();
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no mail arrived: {}",
            std::fs::read_to_string(&server.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(mail_text.contains("To: team@example.com"), "{mail_text}");
    assert!(mail_text.contains("From: ci@example.com"), "{mail_text}");
    assert!(
        mail_text.contains(&format!("Subject: Build {id}: SUCCESS")),
        "{mail_text}"
    );
    drop(mail);
}

#[test]
fn a_target_that_never_answers_holds_up_no_build_and_no_other_notifier() {
    let repository = Repository::new();
    let (triggers, data, notifiers) = (
        TempDir::new().unwrap(),
        TempDir::new().unwrap(),
        TempDir::new().unwrap(),
    );
    let (url, silent) = target(false);
    write(
        notifiers.path(),
        "silent.yaml",
        &notifier(
            "HTTPNotifier",
            "silent",
            "",
            &format!("      url: {url}/\n"),
            "",
        ),
    );
    let (url, prompt) = target(true);
    let prompt_notifier = notifier(
        "HTTPNotifier",
        "prompt",
        "",
        &format!("      url: {url}/\n"),
        "",
    );
    write(notifiers.path(), "prompt.yaml", &prompt_notifier);
    let server = Server::start_with(
        data.path(),
        triggers.path(),
        &repository.mirrors(),
        2,
        &["--notifications", notifiers.path().to_str().unwrap()],
    );
    let config = build_config(data.path());
    let first = server.submit_async(&config, &[]);
    // The target holds the first message unanswered while the build runs to its end, and the
    // next build after it.
    let held = next(&silent);
    assert_eq!(
        held.json()["message"]["attributes"]["buildId"],
        first.as_str()
    );
    assert_eq!(server.finished(&first)["status"], "SUCCESS");
    let second = server.submit_async(&config, &[]);
    assert_eq!(server.finished(&second)["status"], "SUCCESS");
    // Meanwhile the other notifier got every status of both builds, in order for each.
    let mut told = Vec::new();
    while told.len() < 6 {
        let message = next(&prompt).json();
        let attributes = &message["message"]["attributes"];
        told.push(format!("{} {}", attributes["buildId"], attributes["status"]).replace('"', ""));
    }
    let of = |id: &str| -> Vec<String> {
        told.iter()
            .filter_map(|line| line.strip_prefix(&format!("{id} ")).map(str::to_string))
            .collect()
    };
    assert_eq!(of(&first), ["QUEUED", "WORKING", "SUCCESS"], "{told:?}");
    assert_eq!(of(&second), ["QUEUED", "WORKING", "SUCCESS"], "{told:?}");
    // The silent one still holds the first build's QUEUED (an attempt may take 10 s), and so
    // has none of that build's later statuses: a notifier gets a build's statuses in order.
    for request in silent.try_iter() {
        let message = request.json();
        assert_ne!(message["message"]["attributes"]["buildId"], first.as_str());
    }
}

#[test]
fn a_filter_that_is_not_cel_stops_the_server_naming_the_file_line_and_notifier() {
    let (triggers, data, notifiers) = (
        TempDir::new().unwrap(),
        TempDir::new().unwrap(),
        TempDir::new().unwrap(),
    );
    write(
        notifiers.path(),
        "broken.yaml",
        &notifier(
            "HTTPNotifier",
            "deploys",
            "    filter: build.status ==\n",
            "      url: http://127.0.0.1:9/\n",
            "",
        ),
    );
    let out = Command::cargo_bin("builder")
        .unwrap()
        .env("BUILDER_DATA_DIR", data.path())
        .env("BUILDER_WEBHOOK_SECRET", SECRET)
        .args(["serve", "--listen", "127.0.0.1:0", "--triggers"])
        .arg(triggers.path())
        .arg("--notifications")
        .arg(notifiers.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("broken.yaml:7:") && stderr.contains("spec.notification.filter"),
        "{stderr}"
    );
    assert!(stderr.contains("notifier \"deploys\""), "{stderr}");
}
