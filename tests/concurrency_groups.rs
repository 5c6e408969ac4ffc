//! Concurrency per trigger end to end (issue 20): a real `builder serve` with room for two builds
//! at once, and a trigger whose `concurrency` group takes one: its two builds run one after the
//! other, and the second says, while it waits, which build it waits for; one whose group's
//! `onConflict` is `CANCEL_OLDER` cancels the group's running build; one whose group says `SKIP`
//! is not queued while the group is full, and its delivery says why, however many deliveries
//! arrive at once.

use std::process::Command;

use chrono::DateTime;
use serde_json::Value;
use tempfile::TempDir;

mod common;

use common::Repository;
use common::server::{Server, ZERO, push_payload, sign};

fn time(build: &Value, field: &str) -> DateTime<chrono::FixedOffset> {
    DateTime::parse_from_rfc3339(build[field].as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{field} of {build}: {e}"))
}

/// A server with room for `max_builds` builds and trigger `deploy` of `acme/app`'s `main` with
/// `concurrency`; the directories it needs live as long as it.
fn serve_deploy(concurrency: &str, max_builds: u32) -> (Server, Repository, [TempDir; 2]) {
    let repository = Repository::new();
    let triggers = TempDir::new().unwrap();
    std::fs::write(
        triggers.path().join("deploy.yaml"),
        format!(
            "name: deploy\nfilename: cloudbuild.yaml\n\
             github: {{owner: acme, name: app, push: {{branch: ^main$}}}}\n\
             concurrency: {concurrency}\n"
        ),
    )
    .unwrap();
    let data = TempDir::new().unwrap();
    let server = Server::start(
        data.path(),
        triggers.path(),
        &repository.mirrors(),
        max_builds,
    );
    (server, repository, [triggers, data])
}

#[test]
fn builds_of_one_group_run_one_after_the_other() {
    let (server, repository, _dirs) = serve_deploy("{group: deploy, limit: 1}", 2);
    let config = "steps:\n- name: builder/busybox\n  args: [sleep, '3']\n";
    let builds = server.push_builds(&repository, config, &[("d-1", "first"), ("d-2", "second")]);
    let (first, second) = (&builds[0], &builds[1]);
    server.build_when(first, |build| build["status"] == "WORKING");
    let waiting = server.get(&format!("/v1/builds/{second}"));
    assert_eq!(waiting["status"], "QUEUED", "{waiting}");
    let why = format!("waiting for concurrency group deploy (limit 1): build {first} is running");
    assert_eq!(waiting["waitingFor"], why.as_str(), "{waiting}");
    let page = server.get_text(&format!("/builds/{second}"));
    assert!(page.contains(&why), "{page}");
    let (code, described) = server.cli(&["builds", "describe", second]);
    assert_eq!(code, 0, "{described}");
    assert!(described.contains(&why), "{described}");

    let first = server.finished(first);
    let second = server.finished(second);
    assert_eq!(first["status"], "SUCCESS", "{first}");
    assert_eq!(second["status"], "SUCCESS", "{second}");
    assert!(
        time(&second, "startTime") >= time(&first, "finishTime"),
        "the second started after the first finished: {first} {second}"
    );
    assert!(second["waitingFor"].is_null(), "{second}");
}

#[test]
fn cancel_older_cancels_the_groups_running_build() {
    let (server, repository, _dirs) =
        serve_deploy("{group: deploy-$BRANCH_NAME, onConflict: CANCEL_OLDER}", 2);
    let config = "steps:\n- name: builder/busybox\n  args: [sleep, '4']\n";
    let first = server.push_builds(&repository, config, &[("d-1", "first")]);
    server.build_when(&first[0], |build| build["status"] == "WORKING");
    let second = server.push_builds(&repository, config, &[("d-2", "second")]);
    let first = server.finished(&first[0]);
    assert_eq!(first["status"], "CANCELLED", "{first}");
    let second = server.finished(&second[0]);
    assert_eq!(second["status"], "SUCCESS", "{second}");
}

#[test]
fn skip_queues_nothing_while_the_group_is_full() {
    let (server, repository, _dirs) = serve_deploy("{group: deploy, onConflict: SKIP}", 2);
    let config = "steps:\n- name: builder/busybox\n  args: [sleep, '3']\n";
    let first = server.push_builds(&repository, config, &[("d-1", "first")]);
    server.build_when(&first[0], |build| build["status"] == "WORKING");
    let skipped = server.push_decided(&repository, config, "d-2", "second");
    let result = &skipped["results"][0];
    assert!(result["buildId"].is_null(), "{skipped}");
    let why = format!(
        "skipped: concurrency group deploy is at its limit (1): {} queued or running",
        first[0]
    );
    assert_eq!(result["reason"], why.as_str(), "{skipped}");
    assert_eq!(server.finished(&first[0])["status"], "SUCCESS");
    let later = server.push_builds(&repository, config, &[("d-3", "third")]);
    assert_eq!(server.finished(&later[0])["status"], "SUCCESS");
}

/// Delivers `pushes` (delivery id, body) as push events all at once: one curl making every
/// request in parallel, each on a connection of its own. Returns their status codes.
fn deliver_at_once(server: &Server, pushes: &[(String, Vec<u8>)]) -> Vec<u16> {
    let bodies = TempDir::new().unwrap();
    let mut curl = Command::new("curl");
    curl.args(["-s", "-Z", "--parallel-immediate", "--parallel-max", "100"]);
    for (i, (delivery, body)) in pushes.iter().enumerate() {
        let file = bodies.path().join(delivery);
        std::fs::write(&file, body).unwrap();
        if i > 0 {
            curl.arg("--next");
        }
        curl.args(["-o", "/dev/null", "-w", "%{http_code}\\n", "-X", "POST"])
            .args(["-H", "Content-Type: application/json"])
            .args(["-H", "X-GitHub-Event: push"])
            .args(["-H", &format!("X-GitHub-Delivery: {delivery}")])
            .args(["-H", &format!("X-Hub-Signature-256: {}", sign(body))])
            .arg("--data-binary")
            .arg(format!("@{}", file.display()))
            .arg(format!("{}/webhooks/github", server.url));
    }
    let out = curl.output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|code| code.parse().unwrap_or(0))
        .collect()
}

/// Twelve pushes delivered at once to a `SKIP` group of limit 2 (on a server that runs nothing,
/// so its builds stay queued): the group's count and the build's insert are one decision in the
/// store, so two builds are queued, and every other delivery says why it queued none.
#[test]
fn skip_queues_at_most_the_limit_from_deliveries_arriving_at_once() {
    let (server, repository, _dirs) =
        serve_deploy("{group: deploy, limit: 2, onConflict: SKIP}", 0);
    let pushes: Vec<(String, Vec<u8>)> = (0..12)
        .map(|i| {
            let config = format!("steps:\n- name: builder/busybox\n  args: [echo, '{i}']\n");
            let message = format!("push {i}");
            let commit = repository.commit(&[("cloudbuild.yaml", &config)], &message, "main");
            let body = push_payload("refs/heads/main", ZERO, &commit, &message);
            (format!("d-{i}"), body)
        })
        .collect();
    assert_eq!(deliver_at_once(&server, &pushes), [202; 12]);
    let results: Vec<Value> = pushes
        .iter()
        .map(|(delivery, _)| server.decided(delivery)["results"][0].clone())
        .collect();
    let queued: Vec<&str> = results
        .iter()
        .filter_map(|result| result["buildId"].as_str())
        .collect();
    assert_eq!(queued.len(), 2, "{results:?}");
    let listed = server.get("/v1/builds");
    assert_eq!(
        listed["builds"].as_array().map(Vec::len),
        Some(2),
        "{listed}"
    );
    for result in results.iter().filter(|result| result["buildId"].is_null()) {
        let reason = result["reason"].as_str().unwrap_or_default();
        assert!(
            reason.starts_with("skipped: concurrency group deploy is at its limit (2): ")
                && queued.iter().all(|id| reason.contains(id))
                && reason.ends_with(" queued or running"),
            "{result}"
        );
    }
}
