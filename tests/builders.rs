//! Each builder's README example is a build config; each must run, through the default image
//! aliases, against the real engine (the images come from `builders/build.sh`); and the aliases
//! themselves, as `builder config resolve` shows them.

use std::process::Command;

use assert_cmd::cargo::CommandCargoExt;

/// The first ```yaml block of a README.
fn example(readme: &str) -> Option<String> {
    let start = readme.find("```yaml\n")? + "```yaml\n".len();
    let end = readme[start..].find("```")? + start;
    Some(readme[start..end].to_string())
}

#[test]
fn every_builder_example_runs() {
    let mut builders: Vec<_> = std::fs::read_dir("builders")
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|dir| dir.join("Dockerfile").is_file())
        .collect();
    builders.sort();
    assert!(builders.len() >= 5, "{builders:?}");
    let data = tempfile::TempDir::new().unwrap();
    for builder in builders {
        let readme = std::fs::read_to_string(builder.join("README.md")).unwrap();
        let config =
            example(&readme).unwrap_or_else(|| panic!("{}: no yaml example", builder.display()));
        let file = data.path().join("cloudbuild.yaml");
        std::fs::write(&file, &config).unwrap();
        let out = Command::cargo_bin("builder")
            .unwrap()
            .env("BUILDER_DATA_DIR", data.path())
            .env_remove("BUILDER_ALIASES")
            .args(["submit", "--no-source", "--config"])
            .arg(&file)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("STATUS: SUCCESS"),
            "{} example failed:\n{config}\n{stdout}\n{}",
            builder.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn resolve_shows_the_written_name_and_the_image_that_runs() {
    let dir = tempfile::TempDir::new().unwrap();
    let config = dir.path().join("cloudbuild.yaml");
    std::fs::write(
        &config,
        "steps:\n- name: ubuntu\n- name: gcr.io/my-project/tool:1\n- name: my/own:2\n",
    )
    .unwrap();
    let resolve = |aliases: Option<&std::path::Path>| {
        let mut command = Command::cargo_bin("builder").unwrap();
        command
            .env_remove("BUILDER_ALIASES")
            .args(["config", "resolve"])
            .arg(&config);
        if let Some(file) = aliases {
            command.arg("--aliases").arg(file);
        }
        let out = command.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let build: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let steps = build["steps"].as_array().unwrap().clone();
        steps
            .iter()
            .map(|s| {
                (
                    s["name"].as_str().unwrap().to_string(),
                    s["image"].as_str().unwrap().to_string(),
                )
            })
            .collect::<Vec<_>>()
    };
    let pair = |name: &str, image: &str| (name.to_string(), image.to_string());
    assert_eq!(
        resolve(None),
        [
            pair("ubuntu", "builder/shell:latest"),
            pair(
                "gcr.io/my-project/tool:1",
                "localhost:5000/my-project/tool:1"
            ),
            pair("my/own:2", "my/own:2"),
        ]
    );
    let aliases = dir.path().join("aliases.yaml");
    std::fs::write(
        &aliases,
        "aliases:\n  ubuntu: my/ubuntu:24.04\n  'my/own:*': builder/shell:latest\n",
    )
    .unwrap();
    assert_eq!(
        resolve(Some(&aliases)),
        [
            pair("ubuntu", "my/ubuntu:24.04"),
            pair(
                "gcr.io/my-project/tool:1",
                "localhost:5000/my-project/tool:1"
            ),
            pair("my/own:2", "builder/shell:latest"),
        ]
    );
}
