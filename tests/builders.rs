//! Each builder's README example is a build config; each must run, through the default image
//! aliases, against the real engine (the images come from `builders/build.sh`); and the aliases
//! themselves, as `builder config resolve` shows them. Then the behaviours of the images the
//! builders stand in for that real configs rely on, each through a real `builder submit`.

use std::process::Command;

use assert_cmd::cargo::CommandCargoExt;
use common::{registry_digest, source, submit_command};

mod common;

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

/// Submits `config` with `files` as its source, through the shipped alias table only; returns
/// whether the build succeeded and everything it printed (the steps' lines are on stdout).
fn build(config: &str, files: &[(&str, &str)]) -> (bool, String) {
    let data = tempfile::TempDir::new().unwrap();
    let dir = source(config, files);
    let out = submit_command(data.path(), dir.path())
        .env_remove("BUILDER_ALIASES")
        .output()
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let succeeded = out.status.success() && printed.contains("STATUS: SUCCESS");
    (succeeded, printed)
}

/// Asserts that the build succeeded and printed each of `expected`.
fn assert_succeeds_printing(config: &str, files: &[(&str, &str)], expected: &[&str]) {
    let (succeeded, printed) = build(config, files);
    assert!(succeeded, "the build failed:\n{config}\n{printed}");
    for line in expected {
        assert!(printed.contains(line), "no `{line}` in:\n{printed}");
    }
}

/// A value no earlier run of a test can have left behind (in the registry, say).
fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{}-{nanos}", std::process::id())
}

/// gcr.io/cloud-builders/docker is Ubuntu with bash and make: configs run bash in it as the
/// entrypoint and as a script's interpreter through /usr/bin/env, and run make.
#[test]
fn the_docker_builder_runs_bash_scripts_and_make() {
    let config = "steps:
- name: gcr.io/cloud-builders/docker
  entrypoint: bash
  args: [-c, 'words=(bash entrypoint); echo \"$${words[*]} ok\"']
- name: gcr.io/cloud-builders/docker
  script: |
    #!/usr/bin/env bash
    set -euo pipefail
    [[ -x /usr/bin/docker ]] && echo \"env-bash script ok\"
- name: gcr.io/cloud-builders/docker
  entrypoint: make
  args: [greet]
";
    let makefile = "greet:\n\t@echo \"make $(MAKE_VERSION) ok\"\n";
    assert_succeeds_printing(
        config,
        &[("Makefile", makefile)],
        &["bash entrypoint ok", "env-bash script ok", "make 4"],
    );
}

/// `docker buildx create --use` succeeds, and `buildx build --push` builds on the engine and
/// pushes each tag: the image is then in the registry.
#[test]
fn buildx_build_push_puts_the_image_in_the_registry() {
    let tag = unique();
    let repository = "builders-test/buildx";
    let config = format!(
        "steps:
- name: gcr.io/cloud-builders/docker
  args: [buildx, create, --use, --name, multi, --driver, docker-container, --bootstrap]
- name: gcr.io/cloud-builders/docker
  script: |
    #!/usr/bin/env bash
    set -euo pipefail
    platform=\"$(docker version -f '{{{{.Server.Os}}}}/{{{{.Server.Arch}}}}')\"
    docker buildx build --platform \"$platform\" -t localhost:5000/{repository}:{tag} \\
      --build-arg MARK={tag} --push .
- name: localhost:5000/{repository}:{tag}
  args: [cat, /mark]
"
    );
    let dockerfile = "FROM builder/busybox:latest\nARG MARK\nRUN echo \"mark $MARK\" > /mark\n";
    assert_succeeds_printing(
        &config,
        &[("Dockerfile", dockerfile)],
        &["multi", &format!("mark {tag}")],
    );
    assert!(
        registry_digest(repository, &tag).is_some(),
        "{repository}:{tag} is not in the registry"
    );
}

/// What buildx cannot do on the engine's builder is refused before anything runs, naming the
/// flag and why.
#[test]
fn buildx_refuses_what_it_cannot_do_naming_the_flag() {
    let step = |args: &str| {
        format!("- name: gcr.io/cloud-builders/docker\n  allowFailure: true\n  args: {args}\n")
    };
    let config = format!(
        "steps:\n{}{}{}",
        step("[buildx, build, --platform, 'linux/amd64,linux/arm64', -t, x, .]"),
        step("[buildx, build, --cache-to, 'type=inline', -t, x, .]"),
        step("[buildx, build, --frobnicate, -t, x, .]"),
    );
    let (_, printed) = build(&config, &[("Dockerfile", "FROM builder/busybox:latest\n")]);
    for refusal in [
        "--platform linux/amd64,linux/arm64: several platforms need a multi-platform builder",
        "--cache-to: the engine's build cannot export its cache",
        "unknown flag --frobnicate",
    ] {
        assert!(printed.contains(refusal), "no `{refusal}` in:\n{printed}");
    }
    // Each refused step failed, rather than building something else.
    assert_eq!(
        printed.matches("exited with non-zero status: 1").count(),
        3,
        "{printed}"
    );
}

/// The bash image's entrypoint runs `bash ARGS` when the first arg is an option, and ARGS as a
/// command otherwise.
#[test]
fn the_bash_image_takes_bash_options_or_a_command() {
    let config = "steps:
- name: bash
  args: ['-c', 'echo \"bash -c ok in $${BASH_VERSION%%.*}\"']
- name: bash:5.2
  args: [echo, command ok]
";
    assert_succeeds_printing(config, &[], &["bash -c ok in 5", "command ok"]);
}

/// alpine and busybox run busybox's ash, which knows `[[ ]]` (Debian's dash does not).
#[test]
fn alpine_and_busybox_run_an_ash_that_knows_double_brackets() {
    let config = "steps:
- name: alpine
  entrypoint: sh
  args: ['-c', '[[ \"$(echo a b)\" == \"a b\" ]] && echo alpine brackets ok']
- name: busybox:1.36
  args: [sh, -c, '[[ -d /workspace ]] && echo busybox brackets ok']
";
    assert_succeeds_printing(config, &[], &["alpine brackets ok", "busybox brackets ok"]);
}

/// A `python:3.X` step that runs `python3.X` by name runs Debian's Python, warned of it.
#[test]
fn a_python_step_naming_its_interpreter_runs_warned() {
    let config = "steps:
- name: python:3.8-slim
  entrypoint: python3.8
  args: [-c, 'import sys; print(\"major\", sys.version_info[0])']
";
    assert_succeeds_printing(config, &[], &["major 3", "which has version 3.11, not 3.8"]);
}

/// `apk` cannot install anything offline; it fails saying how to map alpine to an image of the
/// user's own.
#[test]
fn apk_fails_naming_the_alias_setting() {
    let (succeeded, printed) = build(
        "steps:\n- name: alpine:3.19\n  args: [apk, add, --no-cache, curl]\n",
        &[],
    );
    assert!(!succeeded, "apk add succeeded:\n{printed}");
    for hint in ["--aliases FILE", "BUILDER_ALIASES", "'alpine:*':"] {
        assert!(printed.contains(hint), "no `{hint}` in:\n{printed}");
    }
}
