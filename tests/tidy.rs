//! The architecture's rules, checked on the source text: every module says what it owns, each
//! outside engine is reached from exactly one module, each layer keeps to the modules below it
//! (ARCHITECTURE.md), and no debugging leftovers ship.

use std::path::{Path, PathBuf};

fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// Crates that only one module (a file, or a directory) may use, with that module.
const OWNERS: &[(&str, &str)] = &[
    ("bollard", "src/runtime/docker/engine.rs"),
    ("sqlx", "src/store.rs"),
    ("granit_parser", "src/config/tree.rs"),
    ("hmac", "src/webhooks.rs"),
    ("axum", "src/api/"),
    ("hyper_util", "src/client.rs"),
    ("git2", "src/source/git.rs"),
    ("oci_client", "src/registry/mod.rs"),
    ("chrono_tz", "src/schedule/"),
];

/// Paths each layer may not use: the pure core does no I/O and knows nothing of engines, records
/// or the command line; the executor knows nothing of records, the command line or any one
/// backend; the runtime knows nothing of plans, statuses or records.
const LAYERS: &[(&[&str], &[&str])] = &[
    (
        &[
            "src/diag.rs",
            "src/image.rs",
            "src/build.rs",
            "src/plan.rs",
            "src/config/",
            "src/substitute/",
            "src/triggers/",
            "src/schedule/",
            "src/webhooks.rs",
            "src/templates.rs",
            "src/glob.rs",
        ],
        &[
            "crate::runtime",
            "crate::registry",
            "crate::execute",
            "crate::store",
            "crate::cli",
            "crate::local",
            "crate::submit",
            "tokio::",
            "std::fs",
        ],
    ),
    (
        &["src/execute.rs"],
        &[
            "crate::runtime::docker",
            "crate::store",
            "crate::cli",
            "crate::local",
            "crate::submit",
        ],
    ),
    (
        &["src/api/"],
        &[
            "crate::store",
            "crate::execute",
            "crate::runtime",
            "crate::triggers",
            "crate::plan",
            "crate::source",
        ],
    ),
    (
        &["src/runtime/"],
        &[
            "crate::plan",
            "crate::execute",
            "crate::store",
            "crate::cli",
            "crate::config",
            "crate::build",
        ],
    ),
];

#[test]
fn modules_follow_the_architecture() {
    let mut problems = Vec::new();
    for file in sources(Path::new("src")) {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file.to_string_lossy().replace('\\', "/");
        if !text.starts_with("//!") {
            problems.push(format!(
                "{name}: does not start with a `//!` doc saying what it owns"
            ));
        }
        for (krate, owner) in OWNERS {
            if !name.starts_with(owner) && text.contains(&format!("{krate}::")) {
                problems.push(format!("{name}: uses {krate}, which only {owner} may use"));
            }
        }
        for (files, forbidden) in LAYERS {
            if !files.iter().any(|f| name.starts_with(f)) {
                continue;
            }
            for path in forbidden.iter().filter(|p| text.contains(*p)) {
                problems.push(format!("{name}: uses {path}, which its layer may not"));
            }
        }
        for leftover in ["dbg!(", "todo!(", "unimplemented!("] {
            if text.contains(leftover) {
                problems.push(format!("{name}: contains {leftover}"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
