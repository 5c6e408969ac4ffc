//! A headless Chromium driven over WebDriver (its own chromedriver, fantoccini), for the tests
//! and the benchmark of the web console.

use std::future::Future;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};
use serde_json::{Value, json};
use tempfile::TempDir;

use super::server::{DEADLINE, Server, TOKEN};

/// Chromium as the issue prescribes it here: headless, as root, and quiet on a closed network.
const CHROMIUM_ARGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--window-size=1280,1000",
];

/// A headless Chromium behind its own chromedriver; both end when dropped, even on a panic.
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: TempDir,
    /// The console's address.
    base: String,
}

impl Browser {
    pub async fn open(server: &Server) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its Chromium in its process group: stopping the group stops them all.
            .process_group(0)
            .spawn()
            .expect("chromedriver (scripts/dev-env.sh installs Debian's chromium-driver)");
        let profile = TempDir::new().unwrap();
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|a| a.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let capabilities = json!({
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args}
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let webdriver = format!("http://127.0.0.1:{port}");
        let client = eventually("chromedriver to start a session", || async {
            ClientBuilder::native()
                .capabilities(capabilities.clone())
                .connect(&webdriver)
                .await
                .ok()
        })
        .await;
        Self {
            client,
            driver,
            _profile: profile,
            base: server.url.clone(),
        }
    }

    pub async fn goto(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap();
    }

    /// The value of a JavaScript expression on the current page.
    pub async fn eval(&self, expression: &str) -> Value {
        let script = format!("return {expression};");
        self.client.execute(&script, vec![]).await.unwrap()
    }

    pub async fn text(&self, selector: &str) -> String {
        let expression = format!(
            "document.querySelector({})?.textContent ?? ''",
            json!(selector)
        );
        self.eval(&expression).await.as_str().unwrap().to_string()
    }

    pub async fn log_in(&self) {
        self.goto("/login").await;
        let script = "document.querySelector('input[name=token]').value = arguments[0];\
                      document.querySelector('form.login').submit();";
        self.client
            .execute(script, vec![json!(TOKEN)])
            .await
            .unwrap();
        eventually("the login to land on the builds page", || async {
            (self.eval("location.pathname").await == "/").then_some(())
        })
        .await;
    }

    /// Saves what the page looks like as `target/screenshots/NAME.png`.
    pub async fn screenshot(&self, name: &str) {
        let dir = screenshots();
        std::fs::create_dir_all(&dir).unwrap();
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    /// Nothing a push or a log put on the page ran as a script: the page's only script is the
    /// console's own, and the title is the page's.
    pub async fn assert_no_injected_script(&self) {
        assert_eq!(
            self.eval("[...document.scripts].map(s => s.src)").await,
            json!([format!("{}/assets/console.js", self.base)])
        );
        let title = self.eval("document.title").await;
        assert!(title.as_str().unwrap().ends_with(" · builder"), "{title}");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.driver.wait();
    }
}

pub fn screenshots() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots")
}

/// Polls `check` until it gives a value, for at most [`DEADLINE`].
pub async fn eventually<T, F: Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
