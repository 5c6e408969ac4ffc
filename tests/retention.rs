//! Retention (issue 18, point 9) against a real server process and engine: builds that finished
//! longer ago than `--retain-days` vanish from the API and the store with their logs, newer,
//! running and queued ones stay however old; old deliveries, orphaned uploads, crash workspaces
//! and unused git mirrors go; the pass is in the server's log and on the console. Time is moved
//! by writing older times into the store, as the passing days would.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::Connection as _;

mod common;

use common::server::{DEADLINE, Server, TOKEN};

const FORTY_DAYS_MS: i64 = 40 * 24 * 3600 * 1000;

/// Runs `statements` on the server's database (SQLite in its data directory), returning the
/// first column of the last one's rows.
fn sql(data: &Path, statements: &[&str]) -> Vec<i64> {
    let url = format!("sqlite://{}", data.join("builds.db").display());
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let mut last = Vec::new();
        for statement in statements {
            last = sqlx::query_scalar(sqlx::AssertSqlSafe(statement.to_string()))
                .fetch_all(&mut db)
                .await
                .unwrap();
        }
        last
    })
}

fn submit(server: &Server, script: &str) -> String {
    let config = format!("steps:\n- name: builder/busybox\n  args: [sh, -c, '{script}']\n");
    let (status, answer) = server.post(
        "/v1/builds",
        &json!({ "config": config }).to_string(),
        TOKEN,
    );
    assert_eq!(status, 200, "{answer}");
    answer["build"].as_str().unwrap().to_string()
}

fn status_of(server: &Server, id: &str) -> Value {
    server.get(&format!("/v1/builds/{id}"))["status"].clone()
}

/// Sets a file's or directory's modification time to two hours ago (past the grace period).
fn age(path: &Path) {
    let out = Command::new("touch")
        .args(["-d", "2 hours ago"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn issue_18_retention_removes_old_finished_builds_and_leftovers_and_shows_the_pass() {
    let data = tempfile::tempdir().unwrap();
    let triggers = data.path().join("triggers");
    std::fs::create_dir_all(&triggers).unwrap();
    let server = Server::start_with(
        data.path(),
        &triggers,
        data.path(),
        1,
        &["--retain-days", "30", "--retention-interval", "2s"],
    );
    let old = submit(&server, "echo old");
    server.finished(&old);
    let new = submit(&server, "echo new");
    server.finished(&new);
    let running = submit(&server, "echo running; sleep 600");
    // One at a time: this one waits behind the running one.
    let queued = submit(&server, "echo queued");
    let start = Instant::now();
    while status_of(&server, &running) != "WORKING" {
        assert!(start.elapsed() < DEADLINE, "the build did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, _) = server.deliver("push", "forged-1", b"{}", "sha256=00");
    assert_eq!(status, 401);

    // Leftovers: a crash's workspace of the old build and a mirror no trigger or build fetches,
    // on disk; in the store, an upload no build was submitted over, made two hours ago, and a
    // fresh one, in its grace period.
    let workspace = data.path().join("workspaces").join(&old);
    let mirror = data
        .path()
        .join("git/example.org-gone.git-0123456789abcdef");
    for dir in [&workspace, &mirror] {
        std::fs::create_dir_all(dir.join("inside")).unwrap();
        age(dir);
    }
    let made = |id: &str, ago_ms: i64| {
        format!(
            "INSERT INTO uploads (id, create_time, size, build_id) VALUES \
             ('{id}', CAST(strftime('%s', 'now') AS INTEGER) * 1000 - {ago_ms}, 0, NULL)"
        )
    };
    sql(
        data.path(),
        &[&made("orphan", 2 * 3600 * 1000), &made("fresh", 60 * 1000)],
    );

    // Forty days pass for the old build, the running and the queued one, and the forged delivery.
    let back =
        |table: &str, columns: &str, ids: &str| format!("UPDATE {table} SET {columns} WHERE {ids}");
    sql(
        data.path(),
        &[
            &back(
                "builds",
                &format!(
                    "create_time = create_time - {FORTY_DAYS_MS}, \
                     finish_time = finish_time - {FORTY_DAYS_MS}"
                ),
                &format!("id IN ('{old}', '{running}', '{queued}')"),
            ),
            &back(
                "deliveries",
                &format!("receive_time = receive_time - {FORTY_DAYS_MS}"),
                "verified = 0",
            ),
        ],
    );

    let start = Instant::now();
    while server
        .request("GET", &format!("/v1/builds/{old}"), "", TOKEN)
        .0
        != 404
    {
        assert!(
            start.elapsed() < DEADLINE,
            "the old build stayed\n{}",
            std::fs::read_to_string(&server.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let console = server.get_text("/deliveries");
    assert!(console.contains("Retention"), "{console}");
    let counts = sql(
        data.path(),
        &[&format!(
            "SELECT (SELECT COUNT(*) FROM builds WHERE id = '{old}') \
             + (SELECT COUNT(*) FROM steps WHERE build_id = '{old}') \
             + (SELECT COUNT(*) FROM log_chunks WHERE build_id = '{old}')"
        )],
    );
    assert_eq!(counts, [0], "the old build's rows are gone");
    assert_eq!(status_of(&server, &new), "SUCCESS");
    assert_eq!(status_of(&server, &running), "WORKING");
    assert_eq!(status_of(&server, &queued), "QUEUED");
    assert_eq!(server.log(&new), ["new"]);
    let deliveries = server.get("/v1/deliveries");
    assert_eq!(deliveries["deliveries"], json!([]), "{deliveries}");

    // The disk is cleared by the same pass, after the store.
    let start = Instant::now();
    while workspace.exists() || mirror.exists() {
        assert!(start.elapsed() < DEADLINE, "leftovers stayed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let uploads = sql(
        data.path(),
        &[
            "SELECT COUNT(*) FROM uploads WHERE id = 'orphan'",
            "SELECT COUNT(*) FROM uploads WHERE id = 'fresh'",
        ],
    );
    assert_eq!(
        uploads,
        [1],
        "the orphaned upload went; one in its grace period stays"
    );
    // A pass may fall between the leftovers' making and the days' passing: what the passes
    // removed is counted over all of them, each thing once.
    let passes = sql(
        data.path(),
        &[
            "SELECT SUM(builds) * 10000 + SUM(deliveries) * 1000 + SUM(uploads) * 100 \
           + SUM(workspaces) * 10 + SUM(mirrors) FROM retention_passes",
        ],
    );
    assert_eq!(
        passes,
        [11111],
        "the passes removed the build, the delivery, the upload, the workspace and the mirror"
    );
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(
        log.lines()
            .any(|line| line.contains("retention pass") && line.contains("1 builds")),
        "{log}"
    );
    let (status, _) = server.post(&format!("/v1/builds/{running}/cancel"), "", TOKEN);
    assert_eq!(status, 200);
    server.finished(&running);
}
