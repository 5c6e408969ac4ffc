//! The tests' local GitHub API (`tests/common/github.rs`) itself: its schema validator on the
//! constructs GitHub's description uses, and the server refusing what the description does not
//! allow, so that a test that passes against it says something about builder.

mod common;

use std::process::Command;

use common::github::{Auth, GitHubApi, operations, validate};
use common::server::status_and_answer;
use serde_json::{Value, json};

const TOKEN: &str = "ghp_test_token";
const SHA: &str = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";

/// The `requestBody` schema of `operation`.
fn body_schema(operation: &str) -> Value {
    let text =
        std::fs::read_to_string("/work/shared/reference/github-rest/api.github.com.subset.json")
            .unwrap();
    let description: Value = serde_json::from_str(&text).unwrap();
    description["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|methods| methods.as_object().unwrap().values())
        .find(|o| o["operationId"] == operation)
        .map(|o| o["requestBody"]["content"]["application/json"]["schema"].clone())
        .unwrap()
}

#[test]
fn the_validator_checks_types_enums_required_fields_and_unknown_properties() {
    let status = body_schema("repos/create-commit-status");
    let ok = json!({"state": "success", "target_url": null, "context": "ci"});
    assert_eq!(validate(&status, &ok, "body"), Ok(()));
    let refused = [
        (json!({"context": "ci"}), "body: state is required"),
        (
            json!({"state": "done"}),
            "body.state: \"done\" is not one of",
        ),
        (json!({"state": 1}), "body.state: expected string"),
        (
            json!({"state": "error", "colour": "red"}),
            "body.colour is not described",
        ),
        (
            json!({"state": "error", "context": null}),
            "body.context: null is not allowed",
        ),
        (json!(["state"]), "body: expected object"),
    ];
    for (body, expected) in refused {
        let error = validate(&status, &body, "body").unwrap_err();
        assert!(error.starts_with(expected), "{body}: {error}");
    }
}

#[test]
fn the_validator_checks_nested_objects_lengths_dates_and_any_of() {
    let create = body_schema("checks/create");
    let run = json!({"name": "ci", "head_sha": SHA, "status": "in_progress",
        "started_at": "2026-01-02T03:04:05Z",
        "output": {"title": "t", "summary": "s", "text": "x"}});
    assert_eq!(validate(&create, &run, "body"), Ok(()));
    let mut untitled = run.clone();
    untitled["output"] = json!({"summary": "s"});
    let mut long = run.clone();
    long["output"]["summary"] = json!("s".repeat(65_536));
    let mut undated = run.clone();
    undated["started_at"] = json!("yesterday");
    let mut annotated = run.clone();
    annotated["output"]["annotations"] = json!([{"path": "a", "start_line": 1}]);
    for (body, expected) in [
        (untitled, "body.output: title is required"),
        (long, "body.output.summary: longer than 65535"),
        (undated, "body.started_at: \"yesterday\" is not a date-time"),
        (
            annotated,
            "body.output.annotations[0]: end_line is required",
        ),
    ] {
        let error = validate(&create, &body, "body").unwrap_err();
        assert!(error.starts_with(expected), "{error}");
    }
    // An update that completes a run must say how it concluded.
    let update = body_schema("checks/update");
    let completed = json!({"status": "completed", "conclusion": "failure"});
    assert_eq!(validate(&update, &completed, "body"), Ok(()));
    let error = validate(&update, &json!({"status": "completed"}), "body").unwrap_err();
    assert_eq!(error, "body: matches none of anyOf");
}

#[test]
fn the_description_has_the_operations_builder_uses() {
    let ids: Vec<String> = operations().into_iter().map(|o| o.id).collect();
    for id in [
        "repos/create-commit-status",
        "checks/create",
        "checks/update",
        "apps/create-installation-access-token",
        "apps/get-repo-installation",
    ] {
        assert!(ids.iter().any(|i| i == id), "{id} in {ids:?}");
    }
}

/// Sends a request as builder would, with `changes` to its headers; the status and answer.
fn send(
    api: &GitHubApi,
    method: &str,
    path: &str,
    body: Option<&Value>,
    headers: &[&str],
) -> (u16, Value) {
    let mut curl = Command::new("curl");
    curl.args(["-s", "-w", "\n%{http_code}", "-X", method]);
    for header in headers {
        curl.args(["-H", header]);
    }
    if let Some(body) = body {
        curl.args(["--data-binary", &body.to_string()]);
    }
    let out = curl.arg(format!("{}{path}", api.url)).output().unwrap();
    status_and_answer(&out)
}

const GOOD: &[&str] = &[
    "Accept: application/vnd.github+json",
    "Authorization: Bearer ghp_test_token",
    "Content-Type: application/json",
    "User-Agent: test",
];

#[test]
fn the_server_answers_what_the_description_allows_and_refuses_the_rest() {
    let api = GitHubApi::start(Auth::Token(TOKEN.into()));
    let statuses = format!("/repos/acme/app/statuses/{SHA}");
    let body =
        json!({"state": "pending", "target_url": "https://ci/b/1", "context": "main (local)"});
    let (code, answer) = send(&api, "POST", &statuses, Some(&body), GOOD);
    assert_eq!(code, 201, "{answer}");
    assert_eq!(
        (&answer["state"], &answer["context"]),
        (&json!("pending"), &json!("main (local)"))
    );
    assert!(answer["id"].is_u64());

    let without = |name: &str| -> Vec<&str> {
        GOOD.iter()
            .copied()
            .filter(|h| !h.starts_with(name))
            .collect()
    };
    let wrong_token = [
        &without("Authorization")[..],
        &["Authorization: Bearer nope"],
    ]
    .concat();
    let refusals: Vec<(u16, (u16, Value))> = vec![
        (405, send(&api, "GET", &statuses, None, GOOD)),
        (
            404,
            send(&api, "POST", "/repos/acme/app/commits", Some(&body), GOOD),
        ),
        (
            422,
            send(
                &api,
                "POST",
                &statuses,
                Some(&json!({"context": "c"})),
                GOOD,
            ),
        ),
        (
            422,
            send(&api, "POST", &statuses, Some(&json!({"state": "ok"})), GOOD),
        ),
        (
            422,
            send(
                &api,
                "POST",
                &statuses,
                Some(&json!({"state": "error", "extra": 1})),
                GOOD,
            ),
        ),
        (422, send(&api, "POST", &statuses, None, GOOD)),
        (
            422,
            send(&api, "POST", &statuses, Some(&body), &without("Accept")),
        ),
        (
            401,
            send(
                &api,
                "POST",
                &statuses,
                Some(&body),
                &without("Authorization"),
            ),
        ),
        (
            401,
            send(&api, "POST", &statuses, Some(&body), &wrong_token),
        ),
        (
            422,
            send(
                &api,
                "PATCH",
                "/repos/acme/app/check-runs/abc",
                Some(&json!({"status": "queued"})),
                GOOD,
            ),
        ),
    ];
    for (expected, (code, answer)) in &refusals {
        assert_eq!(code, expected, "{answer}");
        assert!(answer["message"].is_string());
    }
    let received = api.received();
    assert_eq!(received.len(), 1 + refusals.len());
    assert_eq!(
        received[0].operation.as_deref(),
        Some("repos/create-commit-status")
    );
    assert_eq!(received[0].refusal, None);
    assert!(
        received[1..].iter().all(|r| r.refusal.is_some()),
        "{received:#?}"
    );
}

/// A JWT for App 7 signed with the private key in `pem`.
fn jwt(pem: &std::path::Path) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({"iat": now - 60, "exp": now + 300, "iss": "7"});
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(pem).unwrap()).unwrap();
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

#[test]
fn the_server_gives_apps_installation_tokens_for_a_jwt_of_their_key_only() {
    let (ours, theirs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (private, public) = common::github::rsa_key_pair(ours.path());
    let (other, _) = common::github::rsa_key_pair(theirs.path());
    let api = GitHubApi::start(Auth::App {
        id: 7,
        public_key_pem: public,
        installation: 42,
    });
    let with = |credential: &str, path: &str, body: Option<&Value>| {
        let authorization = format!("Authorization: Bearer {credential}");
        let mut headers = vec![GOOD[0], GOOD[3], authorization.as_str()];
        if body.is_some() {
            headers.push(GOOD[2]);
        }
        send(&api, "POST", path, body, &headers)
    };
    let tokens = "/app/installations/42/access_tokens";
    for credential in ["not-a-jwt".to_string(), jwt(&other)] {
        let (code, answer) = with(&credential, tokens, None);
        assert_eq!(code, 401, "{answer}");
    }
    let received = api.received();
    assert!(
        received
            .iter()
            .all(|r| r.refusal.as_deref().unwrap().starts_with("JWT"))
    );
    let (code, answer) = with(&jwt(&private), tokens, None);
    assert_eq!(code, 201, "{answer}");
    let token = answer["token"].as_str().unwrap();
    assert_eq!(api.issued(), [token]);
    // An installation token is what the repository's operations take, and only one it issued;
    // a JWT is not.
    let statuses = format!("/repos/acme/app/statuses/{SHA}");
    let body = json!({"state": "success"});
    assert_eq!(with(token, &statuses, Some(&body)).0, 201);
    assert_eq!(with(&jwt(&private), &statuses, Some(&body)).0, 401);
    assert_eq!(with("ghs_forged", &statuses, Some(&body)).0, 401);
}
