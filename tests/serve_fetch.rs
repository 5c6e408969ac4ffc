//! Issue 18, point 5: a fetch failure loses nothing and stalls nothing. A real `builder serve`
//! whose repositories are served from local bare repositories, from a port that refuses
//! connections, or from a server that accepts connections and never answers.

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

mod common;

use common::Repository;
use common::server::{DEADLINE, Server, ZERO, push_payload, sign};

/// A server that accepts connections and never answers; it counts what it accepted.
struct Silent {
    port: u16,
    accepted: Arc<AtomicUsize>,
}

impl Silent {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            // Held open, never read or written, for as long as the test runs.
            let mut held = Vec::new();
            for stream in listener.incoming().map_while(Result::ok) {
                held.push(stream);
                count.fetch_add(1, Ordering::SeqCst);
            }
        });
        Silent { port, accepted }
    }

    /// Waits until a fetch is connected.
    fn wait_for_a_fetch(&self) {
        let start = Instant::now();
        while self.accepted.load(Ordering::SeqCst) == 0 {
            assert!(start.elapsed() < DEADLINE, "no fetch reached the server");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A port nothing listens on: connections to it are refused.
fn refusing_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Trigger files: `NAME.yaml` on repository acme/`repository`, pushes to main, with
/// `includedFiles: ['src/**']` if `filtered`.
fn triggers(triggers: &[(&str, &str, bool)]) -> TempDir {
    let dir = TempDir::new().unwrap();
    for (name, repository, filtered) in triggers {
        let filter = if *filtered {
            "includedFiles: ['src/**']\n"
        } else {
            ""
        };
        let yaml = format!(
            "name: {name}\nfilename: cloudbuild.yaml\n\
             github: {{owner: acme, name: {repository}, push: {{branch: ^main$}}}}\n{filter}"
        );
        std::fs::write(dir.path().join(format!("{name}.yaml")), yaml).unwrap();
    }
    dir
}

const CONFIG: &str = "steps:\n- name: builder/busybox\n  args: [echo, built]\n";

/// The served repository with one commit on main: the config and a file under `src/`.
fn app() -> (Repository, String) {
    let repository = Repository::new();
    let commit = repository.commit(
        &[("cloudbuild.yaml", CONFIG), ("src/app.py", "1")],
        "c",
        "main",
    );
    (repository, commit)
}

/// `FROM=TO` that serves acme/`name` from `port` on this machine, over HTTP.
fn served_by(name: &str, port: u16) -> String {
    format!("https://github.com/acme/{name}=http://127.0.0.1:{port}/acme/{name}")
}

/// A push of `commit` as a new branch main of acme/`name`.
fn push_to(name: &str, commit: &str) -> Vec<u8> {
    let mut payload: Value =
        serde_json::from_slice(&push_payload("refs/heads/main", ZERO, commit, "c")).unwrap();
    let repository = &mut payload["repository"];
    repository["name"] = json!(name);
    repository["full_name"] = json!(format!("acme/{name}"));
    repository["clone_url"] = json!(format!("https://github.com/acme/{name}.git"));
    serde_json::to_vec(&payload).unwrap()
}

/// What trigger `name` made of a delivery.
fn result<'a>(delivery: &'a Value, name: &str) -> &'a Value {
    let results = delivery["results"].as_array().unwrap();
    results
        .iter()
        .find(|r| r["trigger"] == name)
        .unwrap_or_else(|| panic!("no result for {name}: {delivery}"))
}

fn pending(server: &Server, id: &str) -> bool {
    let deliveries = server.get("/v1/deliveries")["deliveries"].clone();
    let found = deliveries
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == id);
    found.unwrap_or_else(|| panic!("no delivery {id}: {deliveries}"))["pending"] == true
}

#[test]
fn issue_18_a_fetch_that_never_answers_holds_up_nothing_and_its_delivery_survives_a_restart() {
    let (repository, commit) = app();
    let triggers = triggers(&[
        ("app", "app", false),
        ("app-src", "app", true),
        ("slow-src", "slow", true),
    ]);
    let data = TempDir::new().unwrap();
    let silent = Silent::start();
    let slow = served_by("slow", silent.port);
    let server = Server::start_with(
        data.path(),
        triggers.path(),
        &repository.mirrors(),
        2,
        &["--git-url-rewrite", &slow, "--git-fetch-stall", "600"],
    );

    // Answered at once, and kept pending while its fetch hangs.
    let body = push_to("slow", &commit);
    let (code, receipt) = server.deliver("push", "slow-1", &body, &sign(&body));
    assert_eq!(code, 202, "{receipt}");
    assert_eq!(receipt["pending"], true, "{receipt}");
    silent.wait_for_a_fetch();

    // Meanwhile another delivery is decided, and builds are claimed and run.
    let body = push_to("app", &commit);
    let (code, receipt) = server.deliver("push", "app-1", &body, &sign(&body));
    assert_eq!(code, 202, "{receipt}");
    let delivery = server.decided("app-1");
    for trigger in ["app", "app-src"] {
        let id = result(&delivery, trigger)["buildId"].as_str().unwrap();
        assert_eq!(server.finished(id)["status"], "SUCCESS", "{trigger}");
    }
    assert!(pending(&server, "slow-1"));

    // Killed while the fetch hangs: the delivery is still pending in the store, and the next
    // start decides it, from a repository that answers now.
    server.kill();
    let answering = format!(
        "https://github.com/acme/slow={}/acme/app",
        repository.mirrors().display()
    );
    let server = Server::start_with(
        data.path(),
        triggers.path(),
        &repository.mirrors(),
        2,
        &["--git-url-rewrite", &answering],
    );
    let delivery = server.decided("slow-1");
    let id = result(&delivery, "slow-src")["buildId"]
        .as_str()
        .unwrap_or_else(|| panic!("{delivery}"));
    assert_eq!(server.finished(id)["status"], "SUCCESS");
}

#[test]
fn issue_18_a_fetch_that_fails_every_try_ends_its_delivery_and_its_build_saying_why() {
    let (repository, commit) = app();
    let triggers = triggers(&[
        ("refused", "refused", true),
        ("silent", "silent", true),
        ("refused-build", "refused", false),
    ]);
    let data = TempDir::new().unwrap();
    let silent = Silent::start();
    let refused = served_by("refused", refusing_port());
    let silent_rewrite = served_by("silent", silent.port);
    let server = Server::start_with(
        data.path(),
        triggers.path(),
        &repository.mirrors(),
        2,
        &[
            "--git-url-rewrite",
            &refused,
            "--git-url-rewrite",
            &silent_rewrite,
            "--git-fetch-stall",
            "1",
            "--git-fetch-attempts",
            "2",
        ],
    );

    let body = push_to("silent", &commit);
    let (code, receipt) = server.deliver("push", "silent-1", &body, &sign(&body));
    assert_eq!(
        (code, &receipt["pending"]),
        (202, &json!(true)),
        "{receipt}"
    );
    let delivery = server.decided("silent-1");
    assert_eq!(
        result(&delivery, "silent")["reason"],
        format!(
            "the push's changed files could not be read: fetching \
             https://github.com/acme/silent.git made no progress for 1s (tried 2 times)"
        ),
        "{delivery}"
    );
    // A try is one connection: the second came after the first was given up, which released
    // the mirror's lock although its thread still waits on the server.
    assert_eq!(silent.accepted.load(Ordering::SeqCst), 2);

    let body = push_to("refused", &commit);
    let (code, receipt) = server.deliver("push", "refused-1", &body, &sign(&body));
    assert_eq!(code, 202, "{receipt}");
    let delivery = server.decided("refused-1");
    let reason = result(&delivery, "refused")["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("the push's changed files could not be read: ")
            && reason.contains("https://github.com/acme/refused.git")
            && reason.to_lowercase().contains("connection refused")
            && reason.ends_with("(tried 2 times)"),
        "{reason}"
    );
    // The trigger without file filters queued its build at once; its checkout fails the same
    // way, and the build says so.
    let id = result(&delivery, "refused-build")["buildId"]
        .as_str()
        .unwrap();
    let build = server.finished(id);
    assert_eq!(build["status"], "FAILURE", "{build}");
    let failure = build["failure"].as_str().unwrap();
    assert!(
        failure.starts_with("fetching the source failed: ")
            && failure.to_lowercase().contains("connection refused")
            && failure.ends_with("(tried 2 times)"),
        "{failure}"
    );
}
