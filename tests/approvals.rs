//! Approvals end to end (issue 20): a real `builder serve`, builds that wait PENDING for a person
//! (`submit --server --require-approval`, a trigger's `approvalConfig`), approved through the CLI
//! and run on the real engine, rejected through the API and never run, and decisions on builds
//! that are not PENDING refused with their status.

use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;

mod common;

use common::Repository;
use common::server::{Server, TOKEN};

/// A build that waits for approval past its `queueTtl` does not expire: approved through the
/// CLI, it runs to SUCCESS with the approval recorded; a second decision is refused.
#[test]
fn an_approved_build_runs_however_long_it_waited() {
    let repository = Repository::new();
    let triggers = TempDir::new().unwrap();
    let data = TempDir::new().unwrap();
    let config = data.path().join("cloudbuild.yaml");
    std::fs::write(
        &config,
        "steps:\n- name: builder/busybox\n  args: [echo, approved]\nqueueTtl: 2s\n",
    )
    .unwrap();
    let server = Server::start(data.path(), triggers.path(), &repository.mirrors(), 2);
    let id = server.submit_async(&config, &["--require-approval"]);

    // Past its queueTtl and the server's expiry ticks: still waiting, saying who may approve.
    std::thread::sleep(Duration::from_millis(4500));
    let build = server.get(&format!("/v1/builds/{id}"));
    assert_eq!(build["status"], "PENDING", "{build}");
    assert_eq!(
        build["approval"],
        json!({"state": "PENDING", "config": {"approvalRequired": true}})
    );
    let page = server.get_text(&format!("/builds/{id}"));
    assert!(
        page.contains("anyone with the API token may approve"),
        "{page}"
    );
    assert!(page.contains("id=\"approve\""), "{page}");

    let (code, out) = server.cli(&["builds", "approve", &id, "--comment", "ship it"]);
    assert_eq!(code, 0, "{out}");
    let build = server.finished(&id);
    assert_eq!(build["status"], "SUCCESS", "{build}");
    assert_eq!(server.log(&id), ["approved"]);
    let result = &build["approval"]["result"];
    assert_eq!(build["approval"]["state"], "APPROVED", "{build}");
    assert_eq!(result["approverAccount"], "api-token");
    assert_eq!(result["decision"], "APPROVED");
    assert_eq!(result["comment"], "ship it");
    assert!(result["approvalTime"].as_str().unwrap() > build["createTime"].as_str().unwrap());

    let (code, out) = server.cli(&["builds", "describe", &id]);
    assert_eq!(code, 0, "{out}");
    let described: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(described["approval"], build["approval"]);

    // Decided once: a finished build is not PENDING.
    let (code, out) = server.cli(&["builds", "reject", &id]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("is SUCCESS, not PENDING"), "{out}");
    let (code, answer) = server.post(
        &format!("/v1/builds/{id}:approve"),
        r#"{"approvalResult": {"decision": "APPROVED"}}"#,
        TOKEN,
    );
    assert_eq!(code, 409, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("SUCCESS"),
        "{answer}"
    );
}

/// A trigger's `approvalConfig` holds its builds PENDING: one rejected through the API (with the
/// token, in Cloud Build's body) ends REJECTED and never runs; another is cancelled while it
/// waits.
#[test]
fn a_rejected_build_never_runs() {
    let repository = Repository::new();
    let triggers = TempDir::new().unwrap();
    std::fs::write(
        triggers.path().join("deploy.yaml"),
        "name: deploy\nfilename: cloudbuild.yaml\n\
         github: {owner: acme, name: app, push: {branch: ^main$}}\n\
         approvalConfig: {approvalRequired: true}\n",
    )
    .unwrap();
    let data = TempDir::new().unwrap();
    let server = Server::start(data.path(), triggers.path(), &repository.mirrors(), 2);
    let config = "steps:\n- name: builder/busybox\n  args: [echo, deployed]\n";
    let builds = server.push_builds(&repository, config, &[("d-1", "first"), ("d-2", "second")]);
    let (rejected, cancelled) = (&builds[0], &builds[1]);
    let build = server.get(&format!("/v1/builds/{rejected}"));
    assert_eq!(build["status"], "PENDING", "{build}");

    let approve = format!("/v1/builds/{rejected}:approve");
    let body = r#"{"approvalResult": {"decision": "REJECTED", "comment": "not today"}}"#;
    assert_eq!(server.post(&approve, body, "wrong").0, 401);
    let (code, build) = server.post(&approve, body, TOKEN);
    assert_eq!(code, 200, "{build}");
    assert_eq!(build["status"], "REJECTED");
    assert_eq!(build["approval"]["state"], "REJECTED");
    assert_eq!(build["approval"]["result"]["decision"], "REJECTED");
    assert_eq!(build["approval"]["result"]["comment"], "not today");
    assert_eq!(build["approval"]["result"]["approverAccount"], "api-token");

    let (code, answer) = server.post(&format!("/v1/builds/{cancelled}/cancel"), "", TOKEN);
    assert_eq!(code, 200, "{answer}");
    let build = server.get(&format!("/v1/builds/{cancelled}"));
    assert_eq!(build["status"], "CANCELLED", "{build}");
    assert_eq!(build["approval"]["state"], "CANCELLED");

    // Long enough for a worker to have taken either, had it been queued.
    std::thread::sleep(Duration::from_secs(3));
    for id in [rejected, cancelled] {
        let build = server.get(&format!("/v1/builds/{id}"));
        assert!(build["startTime"].is_null(), "never started: {build}");
        assert_eq!(build["steps"], json!([]), "{build}");
        assert!(server.log(id).is_empty());
    }
    let build = server.get(&format!("/v1/builds/{rejected}"));
    assert_eq!(build["status"], "REJECTED", "{build}");
    let (code, answer) = server.post(&approve, body, TOKEN);
    assert_eq!(code, 409, "{answer}");
    let listed = server.get("/v1/builds?status=REJECTED");
    assert_eq!(listed["builds"][0]["id"], rejected.as_str());
}
