//! The notifications a server sent, as its API and console list them (issue 20): a real
//! `builder serve --notifications` tells a build's SUCCESS to a local HTTP target that refuses
//! the first attempt, and `GET /v1/notifications` and the console's Notifications page show it
//! delivered at the second, with the first attempt's failure kept.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

mod common;

use common::leftovers;
use common::server::{DEADLINE, Server, TOKEN};

/// An HTTP target on a free port that answers 500 to its first request and 200 to the others;
/// each request's body goes to the receiver. Its thread ends with the test's process.
fn flaky_target() -> (String, mpsc::Receiver<Value>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let (bodies, received) = mpsc::channel();
    std::thread::spawn(move || {
        for (answered, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { continue };
            let mut reader = BufReader::new(&stream);
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let _ = bodies.send(serde_json::from_slice(&body).unwrap_or(Value::Null));
            let status = if answered == 0 {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let answer =
                format!("HTTP/1.1 {status}\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbusy");
            let _ = (&stream).write_all(answer.as_bytes());
        }
    });
    (url, received)
}

/// A notifier file for one HTTP notifier named `hook` that is told of successes only.
fn notifier_file(dir: &std::path::Path, url: &str) -> std::path::PathBuf {
    let path = dir.join("notifier.yaml");
    std::fs::write(
        &path,
        format!(
            "apiVersion: cloud-build-notifiers/v1\nkind: HTTPNotifier\nmetadata:\n  name: hook\n\
             spec:\n  notification:\n    filter: build.status == Build.Status.SUCCESS\n    \
             delivery:\n      url: {url}\n"
        ),
    )
    .unwrap();
    path
}

/// The API lists the notification of a build's SUCCESS delivered at its second attempt, the
/// first's 500 in its history; the console's page shows the build, the notifier and the result.
#[test]
fn a_notification_retried_then_delivered_is_listed_with_its_attempts() {
    let data = TempDir::new().unwrap();
    let triggers = TempDir::new().unwrap();
    let mirrors = TempDir::new().unwrap();
    let (url, received) = flaky_target();
    let notifiers = notifier_file(data.path(), &url);
    let server = Server::start_with(
        data.path(),
        triggers.path(),
        mirrors.path(),
        2,
        &["--notifications", notifiers.to_str().unwrap()],
    );
    let config = data.path().join("cloudbuild.yaml");
    std::fs::write(
        &config,
        "steps:\n- name: builder/busybox\n  args: [echo, told]\n",
    )
    .unwrap();
    let id = server.submit_async(&config, &[]);
    assert_eq!(server.finished(&id)["status"], "SUCCESS");

    let start = Instant::now();
    let notification = loop {
        let listed = server.get("/v1/notifications");
        let delivered = listed["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| {
                n["buildId"] == id.as_str() && n["status"] == "SUCCESS" && n["delivered"] == true
            });
        if let Some(notification) = delivered {
            break notification.clone();
        }
        assert!(
            start.elapsed() < DEADLINE,
            "not delivered: {listed}\nserver log:\n{}",
            std::fs::read_to_string(&server.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(notification["notifier"], "hook", "{notification}");
    assert_eq!(notification["attempts"], 2, "{notification}");
    assert_eq!(notification["done"], true, "{notification}");
    assert_eq!(notification["error"], Value::Null, "{notification}");
    assert_eq!(notification["nextAttempt"], Value::Null, "{notification}");
    let history = notification["history"].as_array().unwrap();
    assert_eq!(history.len(), 2, "{notification}");
    let first_error = history[0]["error"].as_str().unwrap();
    assert!(first_error.contains("500"), "{first_error}");
    assert_eq!(history[1]["error"], Value::Null, "{notification}");
    let time = |value: &Value| {
        chrono::DateTime::parse_from_rfc3339(value.as_str().unwrap()).expect("RFC 3339")
    };
    let created = time(&notification["createTime"]);
    assert!(created <= time(&history[0]["time"]));
    // The second attempt waited out the first retry's delay.
    assert!(
        time(&history[1]["time"]) - time(&history[0]["time"]) >= chrono::TimeDelta::seconds(1),
        "{notification}"
    );
    // Both attempts carried the build's Pub/Sub message at SUCCESS, and there was no third.
    for _ in 0..2 {
        let message = received.recv_timeout(DEADLINE).unwrap();
        assert_eq!(message["message"]["attributes"]["buildId"], id.as_str());
        assert_eq!(message["message"]["attributes"]["status"], "SUCCESS");
    }
    assert!(received.recv_timeout(Duration::from_secs(1)).is_err());

    let page = server.get_text("/notifications");
    assert!(page.contains(&format!("href=\"/builds/{id}\"")), "{page}");
    assert!(page.contains("<td>hook</td>"), "{page}");
    assert!(
        page.contains("<td class=\"result\">delivered</td>"),
        "{page}"
    );
    assert!(page.contains(first_error), "{page}");
    // Nothing is being sent any more: the page does not refresh itself.
    assert!(!page.contains("data-live"), "{page}");
    assert!(page.contains("<a href=\"/notifications\">Notifications</a>"));
    assert_eq!(leftovers(&id), "", "build {id} left things behind");
}

/// The list is read as the other reads are: with `--reads-need-token`, only with the token; and a
/// `limit` over 500 is refused naming the cap.
#[test]
fn the_list_needs_the_token_when_reads_do_and_caps_its_limit() {
    let data = TempDir::new().unwrap();
    let triggers = TempDir::new().unwrap();
    let mirrors = TempDir::new().unwrap();
    let server = Server::start_with(
        data.path(),
        triggers.path(),
        mirrors.path(),
        1,
        &["--reads-need-token"],
    );
    let (code, answer) = server.request("GET", "/v1/notifications", "", "wrong");
    assert_eq!(code, 401, "{answer}");
    let (code, answer) = server.request("GET", "/v1/notifications?limit=500", "", TOKEN);
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["notifications"], serde_json::json!([]));
    let (code, answer) = server.request("GET", "/v1/notifications?limit=501", "", TOKEN);
    assert_eq!(code, 400, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("501") && message.contains("500"),
        "{message}"
    );
}
