//! `builder serve` facing the internet (issue 18, point 8), against a real server process:
//! bounded pages, bounded log followers, the Host allowlist, the shipped settings, HTTPS,
//! console sessions and the login throttle. Requests go through curl, or as raw HTTP where a
//! test needs a Host of its own or a stream held open.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use assert_cmd::cargo::CommandCargoExt;
use tempfile::TempDir;

mod common;

use common::server::{DEADLINE, SECRET, Server, TOKEN, ZERO, push_payload, sign};

/// A server with one trigger, `main` (pushes to main of acme/app), that only queues builds.
fn server(data: &TempDir, extra: &[&str]) -> Server {
    let triggers = data.path().join("triggers");
    std::fs::create_dir_all(&triggers).unwrap();
    std::fs::write(
        triggers.join("main.yaml"),
        "name: main\nfilename: cloudbuild.yaml\ngithub: {owner: acme, name: app, push: {branch: ^main$}}\n",
    )
    .unwrap();
    Server::start_with(data.path(), &triggers, data.path(), 0, extra)
}

/// Queues a build by a signed push of `commit` (40 hex digits) to main; returns its id.
fn queue(server: &Server, commit: &str) -> String {
    let body = push_payload("refs/heads/main", ZERO, commit, "c");
    let (status, answer) = server.deliver("push", commit, &body, &sign(&body));
    assert_eq!(status, 202, "{answer}");
    answer["builds"][0].as_str().unwrap().to_string()
}

/// A request through curl: its status, headers (lowercase names) and body.
fn curl(url: &str, args: &[&str]) -> (u16, String, String) {
    let out = Command::new("curl")
        .args(["-s", "-i"])
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .map_or(0, |code| code.parse().unwrap());
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// Sends a GET of `path` with `Host: host` over a connection of its own and reads the status
/// line and headers; the connection stays open for a stream's body.
fn raw_get(server: &Server, path: &str, host: &str) -> (u16, String, TcpStream) {
    let address = server.url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head, stream)
}

fn commit(n: u32) -> String {
    format!("{n:040x}")
}

#[test]
fn issue_18_a_page_over_the_cap_is_refused_with_the_cap() {
    let data = TempDir::new().unwrap();
    let server = server(&data, &[]);
    for list in ["/v1/builds", "/v1/deliveries"] {
        let (status, _, body) = curl(&format!("{}{list}?limit=1001", server.url), &[]);
        assert_eq!(status, 400, "{list}: {body}");
        assert!(
            body.contains("limit 1001") && body.contains("1000"),
            "{body}"
        );
        let (status, _, body) = curl(&format!("{}{list}?limit=1000", server.url), &[]);
        assert_eq!(status, 200, "{list}: {body}");
    }
}

#[test]
fn issue_18_followers_past_their_seats_are_answered_503_and_seats_come_back() {
    let data = TempDir::new().unwrap();
    let server = server(
        &data,
        &["--max-followers", "2", "--max-followers-per-build", "1"],
    );
    let (a, b, c) = (
        queue(&server, &commit(1)),
        queue(&server, &commit(2)),
        queue(&server, &commit(3)),
    );
    let follow = |id: &str| {
        raw_get(
            &server,
            &format!("/v1/builds/{id}/log?follow=true"),
            "localhost",
        )
    };

    // Queued builds: their followers read the store, the history path.
    let (status, _, held_a) = follow(&a);
    assert_eq!(status, 200);
    let (status, head, _) = follow(&a);
    assert_eq!(status, 503, "a second follower of one build");
    assert!(head.contains("retry-after: 5"), "{head}");
    let (status, _, _held_b) = follow(&b);
    assert_eq!(status, 200);
    let (status, _, _) = follow(&c);
    assert_eq!(status, 503, "a third follower on the server");

    // The message says which limit and which setting.
    let (_, _, body) = curl(
        &format!("{}/v1/builds/{c}/log?follow=true", server.url),
        &[],
    );
    assert!(body.contains("maxFollowers"), "{body}");

    // A follower that goes gives its seat back (the server sees it at its next write, a
    // keep-alive at the latest).
    drop(held_a);
    let start = Instant::now();
    loop {
        let (status, _, _held_c) = follow(&c);
        if status == 200 {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "the seat never came back");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn issue_18_requests_for_other_names_are_refused_and_listed_names_pass() {
    let data = TempDir::new().unwrap();
    let server = server(&data, &["--allowed-host", "builder.example.com"]);
    // A DNS-rebinding page sends its own name.
    for path in ["/v1/builds", "/", "/healthz"] {
        let (status, _, _) = raw_get(&server, path, "rebind.evil.example");
        assert_eq!(status, 421, "{path}");
    }
    let (_, _, body) = curl(
        &format!("{}/v1/builds", server.url),
        &["-H", "Host: rebind.evil.example:8080"],
    );
    assert!(
        body.contains("rebind.evil.example") && body.contains("allowedHosts"),
        "{body}"
    );
    for host in [
        "localhost:8080",
        "127.0.0.1",
        "[::1]:80",
        "Builder.Example.com:443",
    ] {
        let (status, _, _) = raw_get(&server, "/v1/builds", host);
        assert_eq!(status, 200, "{host}");
    }

    // The webhook too: GitHub sends the public name, which must be listed.
    let body = push_payload("refs/heads/main", ZERO, &commit(7), "c");
    let deliver = |host: &str| {
        let file = data.path().join("delivery.json");
        std::fs::write(&file, &body).unwrap();
        curl(
            &format!("{}/webhooks/github", server.url),
            &[
                "-X",
                "POST",
                "-H",
                &format!("Host: {host}"),
                "-H",
                "X-GitHub-Event: push",
                "-H",
                &format!("X-GitHub-Delivery: {host}"),
                "-H",
                &format!("X-Hub-Signature-256: {}", sign(&body)),
                "--data-binary",
                &format!("@{}", file.display()),
            ],
        )
        .0
    };
    assert_eq!(deliver("hooks.evil.example"), 421);
    assert_eq!(deliver("builder.example.com"), 202);

    // A URL where a name belongs would refuse everything: the server does not start.
    let out = Command::cargo_bin("builder")
        .unwrap()
        .env("BUILDER_DATA_DIR", data.path())
        .env("BUILDER_WEBHOOK_SECRET", SECRET)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(["--allowed-host", "https://builder.example.com"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("\"https://builder.example.com\"") && stderr.contains("no scheme"),
        "{stderr}"
    );
}

#[test]
fn issue_18_the_shipped_settings_listen_on_loopback_and_close_reads() {
    let example = std::fs::read_to_string("configs/service/serve.yaml").unwrap();
    let setting = |name: &str| {
        example
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} in configs/service/serve.yaml"))
            .trim()
            .to_string()
    };
    let listen: std::net::SocketAddr = setting("listen").parse().unwrap();
    assert!(listen.ip().is_loopback(), "{listen}");
    assert_eq!(setting("readsNeedToken"), "true");
}

/// A self-signed certificate for `localhost` and 127.0.0.1, made by the openssl CLI: (cert, key).
fn self_signed(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

#[test]
fn issue_18_tls_serves_https_to_a_client_that_trusts_the_certificate() {
    let data = TempDir::new().unwrap();
    let (cert, key) = self_signed(data.path());
    let server = server(
        &data,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );
    let cacert = cert.to_str().unwrap();
    let (status, _, body) = curl(&format!("{}/healthz", server.url), &["--cacert", cacert]);
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    // Not trusted without the certificate, and no plain HTTP on the port.
    let (status, _, _) = curl(&format!("{}/healthz", server.url), &[]);
    assert_eq!(status, 0);
    let plain = server.url.replace("https://", "http://");
    let (status, _, _) = curl(&format!("{plain}/healthz"), &[]);
    assert_ne!(status, 200);

    // Over TLS the session cookie is `Secure`.
    let (status, head, _) = curl(
        &format!("{}/login", server.url),
        &[
            "--cacert",
            cacert,
            "--data-urlencode",
            &format!("token={TOKEN}"),
        ],
    );
    assert_eq!(status, 303, "{head}");
    let cookie = head.lines().find(|l| l.starts_with("set-cookie:")).unwrap();
    assert!(cookie.contains("; secure"), "{cookie}");

    // A certificate without its key is refused at start.
    let out = Command::cargo_bin("builder")
        .unwrap()
        .env("BUILDER_DATA_DIR", data.path())
        .env("BUILDER_WEBHOOK_SECRET", SECRET)
        .args(["serve", "--listen", "127.0.0.1:0", "--tls-cert", cacert])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--tls-key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Logs in with `token`; returns the status, the headers and the `Set-Cookie` line (lowercase).
fn log_in(server: &Server, token: &str) -> (u16, String, String) {
    let (status, head, _) = curl(
        &format!("{}/login", server.url),
        &["--data-urlencode", &format!("token={token}")],
    );
    let cookie = head
        .lines()
        .find(|l| l.starts_with("set-cookie:"))
        .unwrap_or_default()
        .to_string();
    (status, head, cookie)
}

/// The session cookie's `name=value`, as a browser sends it back (case kept).
fn session_of(server: &Server) -> String {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-c", "-", "--data-urlencode"])
        .arg(format!("token={TOKEN}"))
        .arg(format!("{}/login", server.url))
        .output()
        .unwrap();
    let jar = String::from_utf8_lossy(&out.stdout);
    let line = jar
        .lines()
        .find(|l| l.contains("builder_session"))
        .unwrap_or_else(|| panic!("no session cookie in {jar}"));
    let fields: Vec<&str> = line.split('\t').collect();
    format!("{}={}", fields[5], fields[6])
}

fn reads_with_cookie(server: &Server, cookie: &str) -> u16 {
    curl(
        &format!("{}/v1/builds", server.url),
        &["-H", &format!("Cookie: {cookie}")],
    )
    .0
}

#[test]
fn issue_18_a_console_session_is_not_the_token_expires_and_holds_across_replicas() {
    let (one, two) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    // Two replicas of one service: one store, one token.
    let store = format!("sqlite://{}", one.path().join("shared.db").display());
    let settings = [
        "--reads-need-token",
        "--session-lifetime",
        "3s",
        "--store",
        &store,
    ];
    let server = server(&one, &settings);
    let replica = self::server(&two, &settings);

    let (status, _, set_cookie) = log_in(&server, TOKEN);
    assert_eq!(status, 303);
    for attribute in ["httponly", "samesite=strict", "max-age=3", "path=/"] {
        assert!(set_cookie.contains(attribute), "{attribute}: {set_cookie}");
    }
    assert!(
        !set_cookie.contains("; secure"),
        "no TLS here: {set_cookie}"
    );
    assert!(!set_cookie.contains(TOKEN), "{set_cookie}");

    let session = session_of(&server);
    assert_eq!(reads_with_cookie(&server, &session), 200);
    // The other replica takes it: nothing is kept per server.
    assert_eq!(reads_with_cookie(&replica, &session), 200);
    // The raw token as a cookie (what the console used to keep) is no session.
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(TOKEN);
    assert_eq!(
        reads_with_cookie(&server, &format!("builder_session={raw}")),
        401
    );
    assert_eq!(
        reads_with_cookie(&server, &format!("builder_session={TOKEN}")),
        401
    );

    // Logging out removes the cookie from the browser.
    let (status, head, _) = curl(
        &format!("{}/logout", server.url),
        &["-X", "POST", "-H", &format!("Cookie: {session}")],
    );
    assert_eq!(status, 303);
    assert!(
        head.contains("builder_session=; path=/; max-age=0"),
        "{head}"
    );

    // It expires: the session of 3 s is refused once they have passed.
    let start = Instant::now();
    while reads_with_cookie(&server, &session) == 200 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the session never expired"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(reads_with_cookie(&replica, &session), 401);
}

#[test]
fn issue_18_wrong_tokens_at_login_are_throttled_per_client() {
    let data = TempDir::new().unwrap();
    let server = server(&data, &[]);
    for attempt in 0..5 {
        let (status, _, _) = log_in(&server, "wrong");
        assert_eq!(status, 401, "attempt {attempt}");
    }
    // The sixth within the minute waits, even with the right token.
    for token in ["wrong", TOKEN] {
        let (status, head, _) = log_in(&server, token);
        assert_eq!(status, 429, "{head}");
        let wait: u64 = head
            .lines()
            .find_map(|l| l.strip_prefix("retry-after: "))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&wait), "{wait}");
    }
    // Other requests are not throttled.
    assert_eq!(curl(&format!("{}/v1/builds", server.url), &[]).0, 200);
}

/// `GET …/log` pages (issue 18, point 4): a log longer than a page comes a page at a time with
/// the `after` of the next, a page over the cap is refused, and `builds log` prints it whole.
#[test]
fn issue_18_a_log_longer_than_a_page_is_read_a_page_at_a_time() {
    let data = tempfile::tempdir().unwrap();
    let triggers = data.path().join("triggers");
    std::fs::create_dir_all(&triggers).unwrap();
    let server = Server::start_with(data.path(), &triggers, data.path(), 1, &[]);
    let config = "steps:\n- name: builder/busybox\n  args: [seq, '1', '12000']\n";
    let (status, answer) = server.post(
        "/v1/builds",
        &serde_json::json!({ "config": config }).to_string(),
        TOKEN,
    );
    assert_eq!(status, 200, "{answer}");
    let id = answer["build"].as_str().unwrap().to_string();
    assert_eq!(server.finished(&id)["status"], "SUCCESS");

    let texts = |page: &serde_json::Value| -> Vec<String> {
        let lines = page["lines"].as_array().unwrap().iter();
        lines
            .map(|l| l["text"].as_str().unwrap().to_string())
            .collect()
    };
    let first = server.get(&format!("/v1/builds/{id}/log"));
    assert_eq!(texts(&first).len(), 5000);
    assert_eq!(first["next"], 5000);
    let page = server.get(&format!("/v1/builds/{id}/log?after=5000&limit=100"));
    assert_eq!(texts(&page).first().map(String::as_str), Some("5001"));
    assert_eq!(
        (texts(&page).len(), &page["next"]),
        (100, &serde_json::json!(5100))
    );
    let last = server.get(&format!("/v1/builds/{id}/log?after=10000"));
    assert_eq!(
        (texts(&last).len(), &last["next"]),
        (2000, &serde_json::Value::Null)
    );
    let (status, _, body) = curl(
        &format!("{}/v1/builds/{id}/log?limit=5001", server.url),
        &[],
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        server.log(&id),
        (1..=12000).map(|n| n.to_string()).collect::<Vec<_>>()
    );

    let out = Command::cargo_bin("builder")
        .unwrap()
        .args(["builds", "log", &id, "--server", &server.url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(printed.lines().count(), 12000);
    assert!(
        printed.lines().last().unwrap().ends_with(": 12000"),
        "{printed:.200}"
    );
}
