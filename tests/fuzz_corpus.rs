//! Replays every input the fuzzers saved (`fuzz/corpus/TARGET/`) through the same bodies the fuzz
//! targets run, on stable: an input that once crashed a parser, kept in the corpus, fails here.

#[path = "../fuzz/targets.rs"]
mod targets;

use std::path::Path;

fn replay(target: &str, body: fn(&[u8])) {
    let dir = Path::new("fuzz/corpus").join(target);
    let mut inputs = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        body(&std::fs::read(&path).unwrap());
        inputs += 1;
    }
    assert!(inputs > 0, "{} holds no inputs", dir.display());
}

#[test]
fn config() {
    replay("config", targets::config);
}

#[test]
fn substitute() {
    replay("substitute", targets::substitute);
}

#[test]
fn webhook() {
    replay("webhook", targets::webhook);
}

#[test]
fn webhook_trigger() {
    replay("webhook_trigger", targets::webhook_trigger);
}

#[test]
fn gcloudignore() {
    replay("gcloudignore", targets::gcloudignore);
}

#[test]
fn archive() {
    replay("archive", targets::archive);
}

#[test]
fn trigger() {
    replay("trigger", targets::trigger);
}

#[test]
fn access() {
    replay("access", targets::access);
}

#[test]
fn github_report() {
    replay("github_report", targets::github_report);
}

#[test]
fn logs() {
    replay("logs", targets::logs);
}

#[test]
fn framing() {
    replay("framing", targets::framing);
}

#[test]
fn context_scan() {
    replay("context_scan", targets::context_scan);
}
