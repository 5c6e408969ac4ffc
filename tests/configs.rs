//! Every example in `configs/` is something users copy, so each one must run: `builder submit`
//! of each example directory (its own `cloudbuild.yaml`) succeeds against the real engine.

use std::path::PathBuf;
use std::process::Command;

use assert_cmd::cargo::CommandCargoExt;

#[test]
fn every_example_build_succeeds() {
    let mut examples: Vec<PathBuf> = std::fs::read_dir("configs")
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|dir| dir.join("cloudbuild.yaml").is_file())
        .collect();
    examples.sort();
    assert!(!examples.is_empty());
    let data = tempfile::TempDir::new().unwrap();
    for example in examples {
        let out = Command::cargo_bin("builder")
            .unwrap()
            .env("BUILDER_DATA_DIR", data.path())
            .arg("submit")
            .arg(&example)
            .arg("--config")
            .arg(example.join("cloudbuild.yaml"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("STATUS: SUCCESS"),
            "{} failed:\n{stdout}\n{}",
            example.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
