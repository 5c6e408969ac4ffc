//! The console's speed: the builds page's first and a deep page with 10,000 builds in the store,
//! against the HTTP floor (`/healthz`) and the JSON API's same page in the same run; and a
//! 100,000-line log in headless Chromium: how long until every line is on the page, how long
//! the page stops answering at worst while it renders, against the log's own transfer time.
//!
//! `cargo bench --bench console` (needs what scripts/dev-env.sh installs: the engine for the
//! log's build, Chromium and chromedriver). Sizes: BUILDS (10000), LINES (100000), ROUNDS (200).
//! `cargo test --all-targets` runs it too, without `--bench`: then at small sizes (100, 1000,
//! 5), as a check that it still works.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tempfile::TempDir;

// The tests' harness: a real `builder serve`, a headless Chromium.
#[path = "../tests/common/mod.rs"]
mod common;

use common::browser::Browser;
use common::server::{Server, TOKEN};

type Http = Client<HttpConnector, Full<Bytes>>;

fn size(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `builder serve` over `data` without triggers, running at most `builds` builds at once.
fn serve(data: &TempDir, builds: u32) -> Server {
    let triggers = data.path().join("triggers");
    std::fs::create_dir_all(&triggers).unwrap();
    Server::start(data.path(), &triggers, data.path(), builds)
}

async fn request(http: &Http, method: &str, url: &str, body: Option<Value>) -> (u16, Bytes) {
    let request = Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::new(
            body.map(|b| b.to_string().into()).unwrap_or_default(),
        ))
        .unwrap();
    let response = http.request(request).await.unwrap();
    let status = response.status().as_u16();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

async fn submit(http: &Http, url: &str, config: &str) -> String {
    let (status, body) = request(
        http,
        "POST",
        &format!("{url}/v1/builds"),
        Some(json!({"config": config})),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answer: Value = serde_json::from_slice(&body).unwrap();
    answer["build"].as_str().unwrap().to_string()
}

fn median_and_p95(mut times: Vec<Duration>) -> (Duration, Duration) {
    times.sort();
    (times[times.len() / 2], times[times.len() * 95 / 100])
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    let benchmarking = std::env::args().any(|arg| arg == "--bench");
    let full = |full, check| if benchmarking { full } else { check };
    let (builds, lines, rounds) = (
        size("BUILDS", full(10_000, 100)),
        size("LINES", full(100_000, 1000)),
        size("ROUNDS", full(200, 5)),
    );
    let data = tempfile::tempdir().unwrap();
    let http: Http = Client::builder(TokioExecutor::new()).build_http();

    // The log: a real build that prints LINES lines.
    let server = serve(&data, 1);
    let url = server.url.clone();
    let config = format!("steps:\n- name: builder/busybox\n  args: ['seq', '1', '{lines}']\n");
    let log_build = submit(&http, &url, &config).await;
    loop {
        let (_, body) = request(&http, "GET", &format!("{url}/v1/builds/{log_build}"), None).await;
        let build: Value = serde_json::from_slice(&body).unwrap();
        match build["status"].as_str() {
            Some("QUEUED" | "WORKING") => tokio::time::sleep(Duration::from_millis(200)).await,
            Some("SUCCESS") => break,
            other => panic!("the log's build ended {other:?}"),
        }
    }
    drop(server);

    // BUILDS builds more, queued and never run.
    let server = serve(&data, 0);
    let url = server.url.clone();
    let seeding = Instant::now();
    let mut ids = Vec::with_capacity(builds);
    for _ in 0..builds {
        ids.push(
            submit(
                &http,
                &url,
                "steps:\n- name: builder/busybox\n  args: ['true']\n",
            )
            .await,
        );
    }
    eprintln!(
        "seeded {builds} builds in {:.1}s",
        seeding.elapsed().as_secs_f64()
    );
    let deep = &ids[50.min(builds - 1)];
    let cases = [
        ("GET /healthz (HTTP floor)", "/healthz".to_string()),
        (
            "GET /v1/builds?limit=50 (API, first page)",
            "/v1/builds?limit=50".into(),
        ),
        ("GET / (console, first page)", "/".into()),
        (
            "GET /?before=… (console, last page)",
            format!("/?before={deep}"),
        ),
        (
            "GET /?status=FAILURE (console, no match)",
            "/?status=FAILURE".into(),
        ),
    ];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); cases.len()];
    for _ in 0..rounds {
        for (case, (_, path)) in cases.iter().enumerate() {
            let start = Instant::now();
            let (status, _) = request(&http, "GET", &format!("{url}{path}"), None).await;
            times[case].push(start.elapsed());
            assert_eq!(status, 200, "{path}");
        }
    }
    println!("\nbuilds pages, {builds} builds in the store, {rounds} rounds interleaved\n");
    println!("{:<46} {:>10} {:>10}", "case", "median", "p95");
    for ((name, _), times) in cases.iter().zip(times) {
        let (median, p95) = median_and_p95(times);
        println!("{name:<46} {:>10} {:>10}", ms(median), ms(p95));
    }

    // The log's own transfer: the followed stream read to its end, without rendering.
    let start = Instant::now();
    let (_, body) = request(
        &http,
        "GET",
        &format!("{url}/v1/builds/{log_build}/log?follow=true&batched=true"),
        None,
    )
    .await;
    let transfer = start.elapsed();
    assert!(String::from_utf8_lossy(&body).contains("event: end"));

    let browser = Browser::open(&server).await;
    let count = "return Number(document.getElementById('log-0')?.dataset.lines ?? 0)";
    // A script's round trip on an idle page: the floor of the responsiveness figure.
    browser.goto("/triggers").await;
    let page = &browser.client;
    let mut idle = Vec::new();
    for _ in 0..20 {
        let start = Instant::now();
        page.execute("return 1", vec![]).await.unwrap();
        idle.push(start.elapsed());
    }
    let start = Instant::now();
    browser.goto(&format!("/builds/{log_build}")).await;
    let loaded = start.elapsed();
    // Tasks over 50 ms on the page's main thread from here on, as the Long Tasks API reports them.
    let observe = "window.longTasks = []; new PerformanceObserver(list => window.longTasks.push(\
                   ...list.getEntries().map(e => e.duration))).observe({type: 'longtask', buffered: true})";
    page.execute(observe, vec![]).await.unwrap();
    let mut worst = Duration::ZERO;
    loop {
        let asked = Instant::now();
        let shown = page.execute(count, vec![]).await.unwrap();
        worst = worst.max(asked.elapsed());
        if shown.as_u64() == Some(lines as u64) {
            break;
        }
    }
    let all_shown = start.elapsed();
    let long_tasks = page
        .execute("return window.longTasks", vec![])
        .await
        .unwrap();
    let long_tasks: Vec<f64> = serde_json::from_value(long_tasks).unwrap();
    let longest = Duration::from_secs_f64(long_tasks.iter().copied().fold(0.0, f64::max) / 1000.0);
    println!("\na log of {lines} lines in headless Chromium\n");
    let row = |name: &str, value: String| println!("{name:<46} {value:>10}");
    row("the log's stream read to its end (floor)", ms(transfer));
    row("build page loaded (WebDriver goto)", ms(loaded));
    row("every line on the page", ms(all_shown));
    row(
        "script round trip, idle page (median)",
        ms(median_and_p95(idle).0),
    );
    row("script round trip while rendering (worst)", ms(worst));
    row(
        "tasks over 50 ms while rendering",
        long_tasks.len().to_string(),
    );
    row("the longest of them", ms(longest));
}
