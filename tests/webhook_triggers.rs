//! Webhook triggers (issue 19) end to end: a real `builder serve`, a trigger with
//! `webhookConfig` whose secret is read as a build's secrets are, requests POSTed to its URL
//! with bodies whose values its substitutions bind, a CEL filter over them, and the head of its
//! `sourceToBuild` built on the real engine from a local bare repository.

mod common;

use common::Repository;
use common::server::Server;
use serde_json::{Value, json};
use tempfile::TempDir;

const SECRET: &str = "hook-s3cr3t";

/// The trigger `hook`: main of acme/app, `_REF` and `_WHO` bound from the body, built only
/// for pushes to main.
fn triggers() -> TempDir {
    let dir = TempDir::new().unwrap();
    let yaml = "name: hook\nfilename: cloudbuild.yaml\n\
        webhookConfig: {secret: projects/p/secrets/hook-secret/versions/1}\n\
        sourceToBuild: {uri: 'https://github.com/acme/app', ref: refs/heads/main, repoType: GITHUB}\n\
        substitutions:\n  _REF: $(body.ref)\n  _WHO: '$(body.user.name) (#$(body.commits[0].id))'\n\
        filter: _REF == \"refs/heads/main\" && _WHO != \"\"\n";
    std::fs::write(dir.path().join("hook.yaml"), yaml).unwrap();
    dir
}

/// POSTs `body` to trigger `trigger`'s webhook with `query`, without the API token.
fn call(server: &Server, trigger: &str, query: &str, body: &str) -> (u16, Value) {
    server.request("POST", &format!("/v1/webhooks/{trigger}?{query}"), body, "")
}

#[test]
fn a_webhook_request_with_the_secret_builds_the_trigger_s_source_with_the_body_s_values() {
    let repository = Repository::new();
    let config = "steps:\n- name: builder/busybox\n  args: [echo, '$_REF by $_WHO']\n";
    let commit = repository.commit(&[("cloudbuild.yaml", config)], "c", "main");
    let secrets = TempDir::new().unwrap();
    std::fs::write(secrets.path().join("hook-secret"), SECRET).unwrap();
    let triggers = triggers();
    let data = TempDir::new().unwrap();
    let server = Server::start_with(
        data.path(),
        triggers.path(),
        &repository.mirrors(),
        1,
        &["--secrets-dir", secrets.path().to_str().unwrap()],
    );
    let push = json!({
        "ref": "refs/heads/main",
        "user": {"name": "Ada"},
        "commits": [{"id": "c0ffee"}],
    });

    // Without the secret, or with another, nothing builds.
    for query in ["key=k", "key=k&secret=hook-s3cr3", "secret=HOOK-S3CR3T"] {
        let (code, answer) = call(&server, "hook", query, &push.to_string());
        assert_eq!(code, 403, "{query}: {answer}");
    }
    let (code, _) = call(&server, "nothing", "secret=x", &push.to_string());
    assert_eq!(code, 404);

    let query = format!("key=any&secret={SECRET}");
    let (code, answer) = call(&server, "hook", &query, &push.to_string());
    assert_eq!(code, 200, "{answer}");
    let id = answer["build"].as_str().unwrap();
    let build = server.finished(id);
    assert_eq!(build["status"], "SUCCESS", "{build}");
    assert_eq!(build["source"]["commit"], commit);
    assert_eq!(build["trigger"], "hook");
    assert_eq!(server.log(id), ["refs/heads/main by Ada (#c0ffee)"]);

    // The filter decides: another branch, or a body without the user, builds nothing.
    let tag = json!({"ref": "refs/tags/v1", "user": {"name": "Ada"}});
    let (code, answer) = call(&server, "hook", &query, &tag.to_string());
    assert_eq!((code, &answer["build"]), (200, &Value::Null), "{answer}");
    assert!(
        answer["reason"]
            .as_str()
            .unwrap()
            .starts_with("the filter _REF == \"refs/heads/main\""),
        "{answer}"
    );
    // A body that is not JSON is refused.
    assert_eq!(call(&server, "hook", &query, "a=1").0, 400);
    let openapi = server.get("/openapi.json");
    assert!(openapi["paths"]["/v1/webhooks/{trigger}"]["post"].is_object());
}
