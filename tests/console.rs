//! The web console in a real browser: Debian's Chromium, headless, driven over WebDriver
//! (chromedriver) by fantoccini, against a real `builder serve` whose builds are started by
//! signed GitHub deliveries and run on the real engine. Screenshots of the pages go to
//! `target/screenshots/` for a reviewer to look at.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use tempfile::TempDir;

mod common;

use common::browser::{Browser, eventually};
use common::server::{Server, TOKEN, ZERO, push_payload, sign};
use common::{Repository, leftovers};

/// A trigger file `NAME.yaml` for pushes to branches of acme/app matching `branch`.
fn trigger(dir: &Path, name: &str, branch: &str) {
    let yaml = format!(
        "name: {name}\nfilename: cloudbuild.yaml\n\
         github: {{owner: acme, name: app, push: {{branch: '{branch}'}}}}\n"
    );
    std::fs::write(dir.join(format!("{name}.yaml")), yaml).unwrap();
}

/// Pushes `config` to `branch` of acme/app and delivers the push, signed; returns the delivery's
/// answer.
fn push(server: &Server, repository: &Repository, branch: &str, config: &str) -> Value {
    let commit = repository.commit(
        &[("cloudbuild.yaml", config)],
        "change",
        &format!("HEAD:refs/heads/{branch}"),
    );
    let body = push_payload(&format!("refs/heads/{branch}"), ZERO, &commit, "change");
    let delivery = uuid::Uuid::new_v4().to_string();
    let (status, answer) = server.deliver("push", &delivery, &body, &sign(&body));
    assert!(status == 200 || status == 202, "{status} {answer}");
    answer
}

/// A step that says hello (with a script tag and colours), then runs until cancelled.
const LONG_RUNNING: &str = r#"steps:
- id: talk
  name: builder/busybox
  args: ['sh', '-c', 'echo first line; echo "<script>document.title=1</script>"; printf "\033[32mgreen\033[0m\n"; sleep 300']
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_pushed_build_shows_up_logs_live_and_is_cancelled_from_its_page() {
    let repository = Repository::new();
    let (data, triggers) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    trigger(triggers.path(), "every-branch", ".*");
    let server = Server::start(data.path(), triggers.path(), &repository.mirrors(), 2);
    let browser = Browser::open(&server).await;
    browser.log_in().await;

    let branch = "feature/<script>document.title=2</script>";
    let answer = push(&server, &repository, branch, LONG_RUNNING);
    let id = answer["builds"][0].as_str().unwrap().to_string();

    // The list shows the build by itself (it refreshes while builds run), its branch as text.
    browser.goto("/").await;
    let row = format!("#builds a[href='/builds/{id}']");
    eventually("the build in the list", || async {
        (!browser.text(&row).await.is_empty()).then_some(())
    })
    .await;
    assert_eq!(browser.text("#builds .branch").await, branch);
    browser.assert_no_injected_script().await;
    browser.screenshot("builds").await;

    // The build page shows the step's lines while it still runs.
    browser.goto(&format!("/builds/{id}")).await;
    eventually("the first log line while the step runs", || async {
        browser
            .text("#log-0")
            .await
            .contains("first line")
            .then_some(())
    })
    .await;
    let build = server.get(&format!("/v1/builds/{id}"));
    assert_eq!(build["steps"][0]["status"], "WORKING", "{build}");
    eventually("every line", || async {
        browser.text("#log-0").await.contains("green").then_some(())
    })
    .await;
    let log = browser.text("#log-0").await;
    assert!(log.contains("<script>document.title=1</script>"), "{log}");
    assert_eq!(browser.text("#log-0 .fg-green").await, "green");
    browser.assert_no_injected_script().await;
    browser.screenshot("build-running").await;

    // Cancel from the page: the build ends CANCELLED and leaves no container.
    browser
        .eval("document.getElementById('cancel').click()")
        .await;
    let build = server.finished(&id);
    assert_eq!(build["status"], "CANCELLED", "{build}");
    eventually("the build's containers to be gone", || async {
        leftovers(&id).is_empty().then_some(())
    })
    .await;
    eventually("the page to show the cancelled build", || async {
        browser
            .text("#summary .status")
            .await
            .contains("CANCELLED")
            .then_some(())
    })
    .await;
    browser.screenshot("build-cancelled").await;
}

/// A build that waits for approval says who may decide, and is approved from its page with a
/// comment: it runs, and its page shows who approved it.
#[tokio::test(flavor = "multi_thread")]
async fn a_pending_build_is_approved_from_its_page() {
    let repository = Repository::new();
    let (data, triggers) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    std::fs::write(
        triggers.path().join("deploy.yaml"),
        "name: deploy\nfilename: cloudbuild.yaml\n\
         github: {owner: acme, name: app, push: {branch: '.*'}}\n\
         approvalConfig: {approvalRequired: true}\n",
    )
    .unwrap();
    let server = Server::start(data.path(), triggers.path(), &repository.mirrors(), 2);
    let browser = Browser::open(&server).await;
    browser.log_in().await;
    let config = "steps:\n- name: builder/busybox\n  args: [echo, deployed]\n";
    let answer = push(&server, &repository, "main", config);
    let id = answer["builds"][0].as_str().unwrap().to_string();

    browser.goto(&format!("/builds/{id}")).await;
    assert!(browser.text("#summary .status").await.contains("PENDING"));
    let approval = browser.text("#approval").await;
    assert!(approval.contains("anyone with the API token"), "{approval}");
    browser.screenshot("build-pending").await;
    browser
        .eval("document.querySelector('#decide input[name=comment]').value = 'looks good'")
        .await;
    browser
        .eval("document.getElementById('approve').click()")
        .await;
    let build = server.finished(&id);
    assert_eq!(build["status"], "SUCCESS", "{build}");
    let result = &build["approval"]["result"];
    assert_eq!(result["approverAccount"], "console", "{build}");
    assert_eq!(result["comment"], "looks good", "{build}");
    eventually("the page to show the approval", || async {
        let approval = browser.text("#approval").await;
        approval.contains("APPROVED by console").then_some(())
    })
    .await;
    browser.screenshot("build-approved").await;
}

/// A log followed while its build runs (a browser tab left open) does not hold up a stopping
/// server: the stream ends, the build is cancelled, the server exits.
#[test]
fn stopping_the_server_ends_followed_logs() {
    let repository = Repository::new();
    let (data, triggers) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    trigger(triggers.path(), "main", "^main$");
    let server = Server::start(data.path(), triggers.path(), &repository.mirrors(), 1);
    let answer = push(&server, &repository, "main", LONG_RUNNING);
    let id = answer["builds"][0].as_str().unwrap().to_string();
    let url = format!("{}/v1/builds/{id}/log?follow=true&batched=true", server.url);
    let mut follower = Command::new("curl")
        .args(["-sN", &url])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stream = std::io::BufReader::new(follower.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("first line") {
        line.clear();
        assert!(std::io::BufRead::read_line(&mut stream, &mut line).unwrap() > 0);
    }
    // The step sleeps for 300 s: only an ended stream lets the server exit before.
    assert!(server.stop().success());
    assert!(follower.wait().unwrap().success());
    assert!(leftovers(&id).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_log_of_100000_lines_streams_onto_the_page() {
    let repository = Repository::new();
    let (data, triggers) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    trigger(triggers.path(), "main", "^main$");
    let server = Server::start(data.path(), triggers.path(), &repository.mirrors(), 1);
    let config = "steps:\n- name: builder/busybox\n  args: ['seq', '1', '100000']\n";
    let answer = push(&server, &repository, "main", config);
    let id = answer["builds"][0].as_str().unwrap().to_string();
    assert_eq!(server.finished(&id)["status"], "SUCCESS");

    let browser = Browser::open(&server).await;
    browser.goto(&format!("/builds/{id}")).await;
    eventually("all 100,000 lines on the page", || async {
        let lines = browser
            .eval("document.getElementById('log-0').dataset.lines")
            .await;
        (lines == "100000").then_some(())
    })
    .await;
    let log = browser
        .eval("document.getElementById('log-0').textContent")
        .await;
    let log = log.as_str().unwrap();
    assert_eq!(log.lines().count(), 100_000);
    assert!(log.starts_with("1\n2\n3\n") && log.ends_with("\n99999\n100000\n"));
    // The log pane is scrolled to its end.
    let at_end = "(p => p.scrollTop + p.clientHeight >= p.scrollHeight - 4)\
                  (document.getElementById('log-0'))";
    assert_eq!(browser.eval(at_end).await, true);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_deliveries_page_explains_a_push_that_started_nothing() {
    let repository = Repository::new();
    let (data, triggers) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    trigger(triggers.path(), "main", "^main$");
    let schedules = data.path().join("schedules");
    std::fs::create_dir_all(&schedules).unwrap();
    std::fs::write(
        schedules.join("nightly.yaml"),
        "name: nightly\nschedule: 0 3 * * *\ntimeZone: Europe/Berlin\ntrigger: main\nbranch: main\n",
    )
    .unwrap();
    let server = Server::start(data.path(), triggers.path(), &repository.mirrors(), 0);
    let answer = push(&server, &repository, "docs", "steps: []\n");
    assert_eq!(answer["builds"], json!([]), "{answer}");

    let browser = Browser::open(&server).await;
    browser.goto("/deliveries").await;
    let explained = browser.text("table.deliveries tbody tr").await;
    assert!(
        explained.contains("push of branch docs to acme/app"),
        "{explained}"
    );
    assert!(explained.contains("No trigger fired."), "{explained}");
    assert!(
        explained.contains("main: did not fire: the ref does not match \"^main$\""),
        "{explained}"
    );
    browser.screenshot("deliveries").await;

    browser.goto("/triggers").await;
    let rule = browser.text("main table").await;
    assert!(
        rule.contains("pushes to branches matching \"^main$\" of acme/app"),
        "{rule}"
    );
    browser.screenshot("triggers").await;
    browser.goto("/schedules").await;
    let schedule = browser.text("main table tbody").await;
    assert!(
        schedule.contains("0 3 * * *") && schedule.contains("Europe/Berlin"),
        "{schedule}"
    );
    browser.screenshot("schedules").await;
}

/// Not in the browser: the headers and the read setting, as any client sees them.
#[test]
fn pages_carry_a_content_security_policy_and_reads_can_need_the_token() {
    let repository = Repository::new();
    let (data, triggers) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let server = Server::start_with(
        data.path(),
        triggers.path(),
        &repository.mirrors(),
        0,
        &["--reads-need-token"],
    );
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["-s", "-i"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let page = curl(&[&format!("{}/", server.url)]);
    assert!(page.starts_with("HTTP/1.1 303"), "{page}");
    assert!(page.contains("location: /login?next=%2F"), "{page}");
    assert!(page.contains("content-security-policy: default-src 'none'; script-src 'self'"));
    let api = curl(&[&format!("{}/v1/builds", server.url)]);
    assert!(api.starts_with("HTTP/1.1 401"), "{api}");

    let wrong = curl(&["-d", "token=nope&next=/", &format!("{}/login", server.url)]);
    assert!(
        wrong.starts_with("HTTP/1.1 401") && !wrong.contains("set-cookie"),
        "{wrong}"
    );
    let login = curl(&[
        "-d",
        &format!("token={TOKEN}&next=/triggers"),
        &format!("{}/login", server.url),
    ]);
    assert!(login.contains("location: /triggers"), "{login}");
    let cookie = login
        .lines()
        .find_map(|line| line.strip_prefix("set-cookie: "))
        .expect("a session cookie")
        .to_string();
    assert!(
        cookie.contains("; HttpOnly") && cookie.contains("; SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_string();
    let page = curl(&[
        "-H",
        &format!("Cookie: {session}"),
        &format!("{}/", server.url),
    ]);
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    let api = curl(&[
        "-H",
        &format!("Cookie: {session}"),
        &format!("{}/v1/builds", server.url),
    ]);
    assert!(api.starts_with("HTTP/1.1 200"), "{api}");
}

/// The Workers page, reached from the navigation, lists the server's own worker (the default
/// pool, its `--max-concurrent-builds`, live) with the build it runs.
#[tokio::test(flavor = "multi_thread")]
async fn the_workers_page_lists_the_servers_own_worker_and_its_build() {
    let repository = Repository::new();
    let (data, triggers) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    trigger(triggers.path(), "every-branch", ".*");
    let server = Server::start(data.path(), triggers.path(), &repository.mirrors(), 2);
    let answer = push(&server, &repository, "main", LONG_RUNNING);
    let id = answer["builds"][0].as_str().unwrap().to_string();
    server.build_when(&id, |build| build["status"] == "WORKING");

    let browser = Browser::open(&server).await;
    browser.goto("/").await;
    browser
        .eval("document.querySelector(\"nav a[href='/workers']\").click()")
        .await;
    let row = format!("table.workers a[href='/builds/{id}']");
    eventually("the worker with its build", || async {
        (!browser.text(&row).await.is_empty()).then_some(())
    })
    .await;
    let listed = browser.text("table.workers tbody tr").await;
    assert!(listed.contains("default2"), "{listed}");
    assert!(listed.ends_with("yes"), "{listed}");
    browser.screenshot("workers").await;
    server.stop();
}
