//! Secrets are scoped (issue 17): a build reads only the Secret Manager secrets it was granted,
//! by `builder submit --secret NAME`, by its trigger's `secrets`, or by the server's
//! `submitSecrets` for submitted builds. A config naming another is refused before any step
//! runs, with its location and the setting that grants it, and no value reaches a log. Real
//! `builder submit` and `builder serve` processes, a signed GitHub push, the real engine.

use std::path::Path;

use assert_cmd::cargo::CommandCargoExt;
use serde_json::Value;
use tempfile::TempDir;

mod common;

use common::server::{Server, TOKEN, ZERO, push_payload, sign};
use common::{Repository, build_id, builder, source, submit};

/// The value of secret `db-pass`; it must never be seen in a log or a record.
const VALUE: &str = "s3cret-Db-Value-8817";
/// The value of `root-key`, a secret of the machine that no build here is granted.
const ROOT_KEY: &str = "Root-Key-Value-4402";

/// A build that prints secret `NAME` (of project `p`, version 1) as `$PW`.
fn config(name: &str) -> String {
    format!(
        "steps:\n- name: builder/busybox\n  script: |\n    echo \"password: $PW\"\n  secretEnv: [PW]\n\
         availableSecrets:\n  secretManager:\n  - versionName: projects/p/secrets/{name}/versions/1\n    env: PW\n"
    )
}

/// A secrets directory holding `db-pass` and `root-key`.
fn secrets_dir() -> TempDir {
    let dir = TempDir::new().unwrap();
    std::fs::write(dir.path().join("db-pass"), VALUE).unwrap();
    std::fs::write(dir.path().join("root-key"), ROOT_KEY).unwrap();
    dir
}

/// Asserts that no secret value is in `text`.
fn assert_no_value(text: &str) {
    assert!(
        !text.contains(VALUE) && !text.contains(ROOT_KEY),
        "a secret's value leaked:\n{text}"
    );
}

/// A server with the secrets of [`secrets_dir`] and `extra` arguments, and the directories
/// (its data, the secrets) that must live as long as it.
fn serve(repository: &Repository, triggers: &Path, extra: &[&str]) -> (Server, [TempDir; 2]) {
    let (data, secrets) = (TempDir::new().unwrap(), secrets_dir());
    let mut args = vec!["--secrets-dir", secrets.path().to_str().unwrap()];
    args.extend(extra);
    let server = Server::start_with(data.path(), triggers, &repository.mirrors(), 2, &args);
    (server, [data, secrets])
}

/// Stops `server`; its own log holds no secret's value either.
fn stop(server: Server) {
    let log = server.log.clone();
    drop(server);
    assert_no_value(&std::fs::read_to_string(log).unwrap());
}

#[test]
fn submit_reads_only_the_secrets_named_on_its_command_line() {
    let data = TempDir::new().unwrap();
    let secrets = secrets_dir();
    let dir = secrets.path().to_str().unwrap();
    let src = source(&config("db-pass"), &[]);

    // Granted: the step gets the value, masked in what is printed and stored.
    let out = submit(
        data.path(),
        src.path(),
        &["--secrets-dir", dir, "--secret", "db-pass"],
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("Step #0: password: [MASKED]"), "{stdout}");
    assert_no_value(&format!("{stdout}{stderr}"));
    let log = builder(data.path())
        .args(["builds", "log", &build_id(&stdout)])
        .output()
        .unwrap();
    assert_no_value(&String::from_utf8_lossy(&log.stdout));

    // Not granted: refused before any build is recorded, at the config's line, naming the
    // secret and the flag, whatever the machine has (a file, an environment variable).
    let refused = |src: &Path, extra: &[&str]| {
        let out = builder(data.path())
            .env("BUILDER_SECRET_ROOT_KEY", ROOT_KEY)
            .arg("submit")
            .arg(src)
            .arg("--config")
            .arg(src.join("cloudbuild.yaml"))
            .args(["--secrets-dir", dir])
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert_no_value(&text);
        text
    };
    let text = refused(src.path(), &[]);
    let config_file = src.path().join("cloudbuild.yaml");
    assert!(
        text.contains(&format!(
            "{}:8:18: availableSecrets.secretManager[0].versionName: this build may not read \
             secret \"db-pass\" (it may read: none); to allow it, pass --secret db-pass to \
             builder submit",
            config_file.display()
        )),
        "{text}"
    );
    let root = source(&config("root-key"), &[]);
    let text = refused(root.path(), &["--secret", "db-pass"]);
    assert!(
        text.contains("may not read secret \"root-key\" (it may read: db-pass)"),
        "{text}"
    );
    // A substitution cannot lead a granted config to another secret.
    let substituted = source(&config("$_NAME"), &[]);
    let text = refused(
        substituted.path(),
        &["--secret", "db-pass", "--substitutions", "_NAME=root-key"],
    );
    assert!(text.contains("secret \"root-key\""), "{text}");
    // `--async` checks before it starts anything.
    let text = refused(src.path(), &["--async"]);
    assert!(text.contains("pass --secret db-pass"), "{text}");
    let builds = builder(data.path())
        .args(["builds", "list"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&builds.stdout);
    assert_eq!(listed.lines().filter(|l| l.contains("SUCCESS")).count(), 1);
    assert_eq!(listed.lines().filter(|l| l.contains("FAILURE")).count(), 0);
}

/// A trigger file: pushes to main of acme/app build its `cloudbuild.yaml`; `extra` lines added.
fn trigger(name: &str, extra: &str) -> String {
    format!(
        "name: {name}\nfilename: cloudbuild.yaml\n\
         github: {{owner: acme, name: app, push: {{branch: ^main$}}}}\n{extra}"
    )
}

/// Two triggers of one repository, fired by one signed push: the one that lists the secret
/// reads it, the other's build fails before its steps with the trigger's setting named.
#[test]
fn a_triggered_build_reads_only_what_its_trigger_lists() {
    let repository = Repository::new();
    let commit = repository.commit(&[("cloudbuild.yaml", &config("db-pass"))], "c", "main");
    let triggers = TempDir::new().unwrap();
    let (server, _dirs) = serve(&repository, triggers.path(), &[]);
    // Created through the API, which replaces them below (a trigger file is the operator's).
    for (name, extra) in [("granted", "secrets: [db-pass]\n"), ("plain", "")] {
        let (code, answer) = server.post("/v1/triggers", &trigger(name, extra), TOKEN);
        assert_eq!(code, 200, "{answer}");
    }
    assert_eq!(
        server.get("/v1/triggers/granted")["secrets"],
        serde_json::json!(["db-pass"])
    );
    let body = push_payload("refs/heads/main", ZERO, &commit, "c");
    let (code, receipt) = server.deliver("push", "s-1", &body, &sign(&body));
    assert_eq!(code, 202, "{receipt}");
    let delivery = server.decided("s-1");
    let build_of = |trigger: &str| -> String {
        let results = delivery["results"].as_array().unwrap();
        let result = results.iter().find(|r| r["trigger"] == trigger).unwrap();
        result["buildId"].as_str().unwrap().to_string()
    };

    let granted = server.finished(&build_of("granted"));
    assert_eq!(granted["status"], "SUCCESS", "{granted}");
    let log = server.log(&build_of("granted"));
    assert_eq!(log, ["password: [MASKED]"]);

    let plain = server.finished(&build_of("plain"));
    assert_eq!(plain["status"], "FAILURE", "{plain}");
    let failure = plain["failure"].as_str().unwrap_or_default();
    assert_eq!(
        failure,
        "cloudbuild.yaml:8:18: availableSecrets.secretManager[0].versionName: this build may not \
         read secret \"db-pass\" (it may read: none); to allow it, add db-pass to `secrets` in \
         trigger \"plain\"",
        "{plain}"
    );
    assert_eq!(server.log(&build_of("plain")), Vec::<String>::new());

    // A retry reads what its trigger grants now: the secret taken off `granted` and given to
    // `plain` (through the API, which replaces them in the store).
    let retried = |name: &str, secrets: &str| {
        let path = format!("/v1/triggers/{name}");
        let replaced = server.request("PUT", &path, &trigger(name, secrets), TOKEN);
        assert_eq!(replaced.0, 200, "{}", replaced.1);
        let retry = format!("/v1/builds/{}/retry", build_of(name));
        let (code, answer) = server.post(&retry, "", TOKEN);
        assert_eq!(code, 200, "{answer}");
        answer["build"].as_str().unwrap().to_string()
    };
    let (plain, granted) = (
        retried("plain", "secrets: [db-pass]\n"),
        retried("granted", ""),
    );
    assert_eq!(server.finished(&plain)["status"], "SUCCESS");
    let revoked = server.finished(&granted);
    assert_eq!(revoked["status"], "FAILURE", "{revoked}");
    assert!(
        revoked["failure"]
            .as_str()
            .unwrap_or_default()
            .contains("to allow it, add db-pass to `secrets` in trigger \"granted\""),
        "{revoked}"
    );

    for id in [build_of("granted"), build_of("plain"), plain, granted] {
        assert_no_value(&server.get(&format!("/v1/builds/{id}")).to_string());
        assert_no_value(&server.log(&id).join("\n"));
    }
    stop(server);
}

/// Builds submitted to a server read what its `--submit-secret` grants, and nothing else; the
/// client cannot grant more.
#[test]
fn a_submitted_build_reads_only_the_servers_submit_secrets() {
    let repository = Repository::new();
    let triggers = TempDir::new().unwrap();
    let (server, _dirs) = serve(
        &repository,
        triggers.path(),
        &["--submit-secret", "db-pass"],
    );
    let remote = |config: &str, extra: &[&str]| -> (i32, String) {
        let src = source(config, &[]);
        let out = std::process::Command::cargo_bin("builder")
            .unwrap()
            .env("BUILDER_API_TOKEN", TOKEN)
            .arg("submit")
            .arg(src.path())
            .arg("--config")
            .arg(src.path().join("cloudbuild.yaml"))
            .args(["--server", &server.url])
            .args(extra)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert_no_value(&text);
        (out.status.code().unwrap(), text)
    };
    let (code, out) = remote(&config("db-pass"), &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Step #0: password: [MASKED]"), "{out}");

    let (code, out) = remote(&config("root-key"), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "availableSecrets.secretManager[0].versionName: this build may not read secret \
             \"root-key\" (it may read: db-pass); to allow it, add root-key to the server's \
             `submitSecrets` setting (builder serve --submit-secret root-key)"
        ),
        "{out}"
    );
    let (code, out) = remote(&config("root-key"), &["--secret", "root-key"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("--secret is the server's to give"), "{out}");

    let builds: Value = server.get("/v1/builds");
    assert_eq!(
        builds["builds"].as_array().map(Vec::len),
        Some(1),
        "only the granted build was queued: {builds}"
    );
    stop(server);
}
