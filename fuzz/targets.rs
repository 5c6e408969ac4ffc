//! The bodies of the fuzz targets, one per parser of untrusted input. Each takes any bytes and
//! must return without panicking, hanging or exhausting memory; what it returns is not judged
//! here (the unit tests beside each parser do that). Shared by `fuzz_targets/` (libFuzzer) and
//! `tests/fuzz_corpus.rs` (the saved corpus, replayed on stable).

// Each fuzz binary includes this file and calls one of its bodies.
#![allow(dead_code)]

use builder::adapters::source;
use builder::core::{plan, schedule, substitute, triggers, webhooks};

/// A build config as a pusher writes it: loaded, decoded, validated and, if valid, resolved.
pub fn config(data: &[u8]) {
    if let Ok(loaded) = plan::load(data)
        && !loaded.diagnostics.has_errors()
    {
        let _ = plan::resolve(&loaded.config, &plan::Inputs::default());
    }
}

/// A template on the first line, `KEY=VALUE` substitutions on the others, expanded in both modes
/// and resolved as dynamic values that may refer to each other.
pub fn substitute(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.lines();
    let template = lines.next().unwrap_or_default();
    let values: substitute::Values = lines
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for dynamic in [false, true] {
        let _ = substitute::references(template, dynamic);
        let _ = substitute::expand(template, &values, dynamic);
        let _ = substitute::resolve_values(&values, &substitute::Values::new(), dynamic);
    }
}

/// A delivery's body under each event builder reads (the first byte picks it), and its signature
/// header checked against a body.
pub fn webhook(data: &[u8]) {
    const EVENTS: [&str; 5] = ["push", "ping", "pull_request", "create", "delete"];
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let event = EVENTS[usize::from(pick) % EVENTS.len()];
    if let Ok(delivery) = webhooks::parse(event, body) {
        let _ = triggers::push_of(&delivery);
    }
    let _ = webhooks::verify(b"secret", body, std::str::from_utf8(data).ok());
}

/// A `.gcloudignore` over a small tree: what `builder submit` would upload.
pub fn gcloudignore(data: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    for file in ["a.py", "src/b.rs", "src/gen/c.txt", ".git/HEAD", "d/e/f"] {
        let path = dir.path().join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x").unwrap();
    }
    std::fs::write(dir.path().join(".gcloudignore"), data).unwrap();
    let _ = source::list_files(dir.path(), None);
}

/// An uploaded source archive unpacked into an empty workspace.
pub fn archive(data: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let _ = source::unpack(data, dir.path());
}

/// A trigger file and a schedule file, as written through the API.
pub fn trigger(data: &[u8]) {
    let _ = triggers::load(data);
    let _ = schedule::load(data, &["main"]);
}
