//! `builder config validate` and `builder config resolve` as a user runs them: exit codes (0
//! success, 1 invalid input, 2 usage error), diagnostics on stderr as
//! `FILE:LINE:COL: FIELD.PATH: message`, and the resolved build on stdout as JSON or YAML.

use std::path::Path;

use assert_cmd::cargo::cargo_bin_cmd;
use serde_json::{Value, json};
use tempfile::TempDir;

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

/// Writes `files` into a new temporary directory.
fn dir(files: &[(&str, &[u8])]) -> TempDir {
    let dir = tempfile::tempdir().expect("temporary directory");
    for (name, contents) in files {
        std::fs::write(dir.path().join(name), contents).expect("write a config");
    }
    dir
}

/// Runs `builder ARGS` in `dir`, so diagnostics name files as given: exit code, stdout, stderr.
fn run(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let output = cargo_bin_cmd!("builder")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("builder runs");
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).expect("UTF-8 output");
    (
        output.status.code().expect("an exit code"),
        text(output.stdout),
        text(output.stderr),
    )
}

/// Runs `builder config resolve FILE ARGS` on `yaml` and parses its JSON output.
fn resolve_json(yaml: &str, args: &[&str]) -> Value {
    let dir = dir(&[("cloudbuild.yaml", yaml.as_bytes())]);
    let mut all = vec!["config", "resolve", "cloudbuild.yaml"];
    all.extend(args);
    let (code, stdout, stderr) = run(dir.path(), &all);
    assert_eq!((code, stderr.as_str()), (0, ""), "{yaml}");
    serde_json::from_str(&stdout).expect("JSON on stdout")
}

#[test]
fn validate_exits_0_or_1_with_diagnostics_on_stderr() {
    let valid = b"steps:\n- name: ubuntu\n  args: [echo, '$$HOME']\n".as_slice();
    let dir = dir(&[
        ("valid.yaml", valid),
        ("valid.json", br#"{"steps": [{"name": "ubuntu"}]}"#),
        (
            "warned.yaml",
            b"steps: [{name: ubuntu}]\nlogsBucket: gs://logs\n",
        ),
        (
            "invalid.yaml",
            b"steps:\n- name: Ubuntu\n  waitFor: [build]\n  env: [NOEQ]\ntimeout: 25h\n",
        ),
        (
            "shell.yaml",
            b"steps:\n- name: bash\n  args: ['-c', 'echo $HOME']\n",
        ),
    ]);
    for (args, code, stderr) in [
        (&["valid.yaml", "valid.json"][..], 0, ""),
        // A warning does not fail validation.
        (
            &["warned.yaml"],
            0,
            "warned.yaml:2:13: warning: logsBucket: not honoured by builder (build logs stay on \
             this machine); ignored\n",
        ),
        // Every problem, in file order.
        (
            &["invalid.yaml"],
            1,
            "invalid.yaml:2:9: steps[0].name: invalid build step name \"Ubuntu\" (image names are \
             lower case; only the tag may have upper case letters)\n\
             invalid.yaml:3:13: steps[0].waitFor[0]: build step #0 depends on \"build\", which has \
             not been defined\n\
             invalid.yaml:4:9: steps[0].env[0]: build step #0: the Env entry \"NOEQ\" must be of \
             the form \"KEY=VALUE\"\n\
             invalid.yaml:5:10: timeout: timeout exceeds the timeout limit of 24h0m0s\n",
        ),
        (
            &["shell.yaml"],
            1,
            "shell.yaml:3:16: steps[0].args[1]: key in the template \"HOME\" is not a valid \
             built-in substitution; write $$HOME for a shell or environment variable\n",
        ),
        // Several files: any invalid one fails the run; each is reported under its own name.
        (
            &["valid.yaml", "shell.yaml", "valid.json"],
            1,
            "shell.yaml:3:16: steps[0].args[1]: key in the template \"HOME\" is not a valid \
             built-in substitution; write $$HOME for a shell or environment variable\n",
        ),
    ] {
        let mut all = vec!["config", "validate"];
        all.extend(args);
        assert_eq!(
            run(dir.path(), &all),
            (code, String::new(), stderr.to_string()),
            "{args:?}"
        );
    }
}

/// Files that are not a build config at all: one error with a location, exit 1.
#[test]
fn unreadable_configs_give_one_located_error() {
    // Nine levels of ten aliases each: 10^9 nodes once expanded.
    let mut bomb = String::from("a: &a [x,x,x,x,x,x,x,x,x,x]\n");
    for (prev, name) in "abcdefgh".chars().zip("bcdefghi".chars()) {
        let refs = vec![format!("*{prev}"); 10].join(",");
        bomb += &format!("{name}: &{name} [{refs}]\n");
    }
    let huge = format!("steps: [{{name: ubuntu}}]\n{}\n", "#".repeat(5 << 20));
    let cases: [(&str, &[u8], String); 9] = [
        (
            "bomb.yaml",
            bomb.as_bytes(),
            "6:8: document expands to more than 200000 nodes (an alias bomb?)".into(),
        ),
        (
            "binary.png",
            b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR",
            "1:1: not a text file: invalid UTF-8".into(),
        ),
        (
            "latin1.yaml",
            b"steps: [{name: ubuntu}]\n# caf\xe9\n",
            "2:6: not a text file: invalid UTF-8".into(),
        ),
        (
            "empty.yaml",
            b"",
            "1:1: the file is empty; a build config is a mapping with at least `steps`".into(),
        ),
        (
            "list.yaml",
            b"- name: ubuntu\n",
            "1:1: Could not parse as a dictionary: a build config must be a mapping, found a list"
                .into(),
        ),
        (
            "scalar.yaml",
            b"cloudbuild\n",
            "1:1: Could not parse as a dictionary: a build config must be a mapping, found a \
             scalar"
                .into(),
        ),
        (
            "huge.yaml",
            huge.as_bytes(),
            format!(
                "1:1: file is {} bytes; the limit is 4194304 bytes",
                huge.len()
            ),
        ),
        (
            "unclosed.yaml",
            b"steps: [{name: ubuntu}\n",
            "1:8: unclosed bracket '['".into(),
        ),
        (
            "two.yaml",
            b"steps: [{name: a}]\n---\nsteps: [{name: b}]\n",
            "2:1: a build config holds one YAML document; found a second `---`".into(),
        ),
    ];
    let files: Vec<(&str, &[u8])> = cases
        .iter()
        .map(|(name, bytes, _)| (*name, *bytes))
        .collect();
    let dir = dir(&files);
    for (name, _, error) in &cases {
        for command in ["validate", "resolve"] {
            assert_eq!(
                run(dir.path(), &["config", command, name]),
                (1, String::new(), format!("{name}:{error}\n")),
                "config {command} {name}"
            );
        }
    }
}

/// `python:3.X` runs Debian's Python whatever X is: resolving says so where the step names it.
#[test]
fn resolve_warns_of_a_python_version_that_does_not_run() {
    let yaml = "steps:\n- name: python:3.11\n- name: 'python:3.12-slim'\n";
    let dir = dir(&[("cloudbuild.yaml", yaml.as_bytes())]);
    let (code, stdout, stderr) = run(dir.path(), &["config", "resolve", "cloudbuild.yaml"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.starts_with(
            "cloudbuild.yaml:3:9: warning: steps[1].name: \"python:3.12-slim\" runs \
             builder/python:latest, which has version 3.11, not 3.12;"
        ) && stderr.lines().count() == 1,
        "{stderr}"
    );
    let build: Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    assert_eq!(build["steps"][0].get("imageWarning"), None);
}

#[test]
fn resolve_prints_the_build_as_json() {
    let build = resolve_json(
        "steps:\n\
         - {name: 'gcr.io/cloud-builders/docker', id: build, args: [build, -t, '$_IMAGE', .], dir: app}\n\
         - {name: '$_IMAGE', waitFor: ['-'], env: ['A=1'], timeout: 60s}\n\
         images: ['$_IMAGE']\ntags: [ci]\n\
         substitutions: {_IMAGE: 'gcr.io/p/app'}\n",
        &[],
    );
    let keys: Vec<&String> = build.as_object().expect("an object").keys().collect();
    assert_eq!(
        keys,
        [
            "images",
            "options",
            "pushTo",
            "steps",
            "substitutions",
            "tags",
            "timeout"
        ]
    );
    assert_eq!(
        build["steps"][0],
        json!({
            "id": "build",
            "name": "gcr.io/cloud-builders/docker",
            "image": "builder/docker:latest",
            "args": ["build", "-t", "gcr.io/p/app", "."],
            "env": ["BUILDER_OUTPUT=/builder/outputs", "HOME=/builder/home"],
            "dir": "/workspace/app",
            "allowFailure": false,
            "dependencies": [],
        })
    );
    assert_eq!(build["steps"][1]["name"], "gcr.io/p/app");
    assert_eq!(build["steps"][1]["image"], "localhost:5000/p/app:latest");
    assert_eq!(build["steps"][1]["timeout"], 60.0);
    assert_eq!(build["steps"][1]["dependencies"], json!([]));
    assert_eq!(build["images"], json!(["gcr.io/p/app"]));
    assert_eq!(
        build["pushTo"],
        json!({"gcr.io/p/app": "localhost:5000/p/app:latest"})
    );
    assert_eq!(build["tags"], json!(["ci"]));
    assert_eq!(build["timeout"], 3600.0);
    assert_eq!(
        build["options"],
        json!({"substitutionOption": "MUST_MATCH", "dynamicSubstitutions": false,
               "automapSubstitutions": false})
    );
    assert_eq!(build["substitutions"]["_IMAGE"], "gcr.io/p/app");
    assert_eq!(build["substitutions"]["BRANCH_NAME"], "");
}

/// `$PROJECT_ID` is the project `builder submit` would run under: `--project`, else
/// `BUILDER_PROJECT`, else `local` (issue 14, point 6).
#[test]
fn resolve_knows_the_project_as_submit_does() {
    let yaml = "steps: [{name: 'gcr.io/$PROJECT_ID/tool', args: ['$LOCATION']}]\n\
                images: ['gcr.io/$PROJECT_ID/app']\n";
    let dir = dir(&[("cloudbuild.yaml", yaml.as_bytes())]);
    for (flag, variable, project) in [
        (None, None, "local"),
        (None, Some("from-env"), "from-env"),
        (Some("from-flag"), Some("from-env"), "from-flag"),
    ] {
        let mut command = cargo_bin_cmd!("builder");
        command
            .current_dir(dir.path())
            .args(["config", "resolve", "cloudbuild.yaml"])
            .env_remove("BUILDER_PROJECT");
        if let Some(flag) = flag {
            command.args(["--project", flag]);
        }
        if let Some(variable) = variable {
            command.env("BUILDER_PROJECT", variable);
        }
        let output = command.output().expect("builder runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!((output.status.code(), stderr.as_ref()), (Some(0), ""));
        let build: Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
        assert_eq!(build["images"], json!([format!("gcr.io/{project}/app")]));
        assert_eq!(build["steps"][0]["name"], format!("gcr.io/{project}/tool"));
        assert_eq!(build["steps"][0]["args"], json!(["local"]));
        assert_eq!(build["substitutions"]["PROJECT_ID"], project);
    }
}

#[test]
fn resolve_prints_the_same_build_as_yaml() {
    let yaml = "steps:\n- {name: ubuntu, args: ['$_A', '0123'], env: ['X=true']}\n\
                - {name: ubuntu, id: two, script: 'echo hi'}\nsubstitutions: {_A: 'null'}\n";
    let dir = dir(&[("cloudbuild.yaml", yaml.as_bytes())]);
    let output = |format: &str| {
        let (code, stdout, stderr) = run(
            dir.path(),
            &["config", "resolve", "--format", format, "cloudbuild.yaml"],
        );
        assert_eq!((code, stderr.as_str()), (0, ""), "--format {format}");
        stdout
    };
    let json: Value = serde_json::from_str(&output("json")).expect("JSON");
    let from_yaml: Value = serde_saphyr::from_str(&output("yaml")).expect("YAML");
    assert_eq!(from_yaml, json);
    // Strings that look like other YAML types stay strings.
    assert_eq!(json["steps"][0]["args"], json!(["null", "0123"]));
}

#[test]
fn substitutions_flag_takes_gcloud_syntax() {
    let yaml = "steps: [{name: ubuntu, args: ['$_A', '$_B']}]\nsubstitutions: {_A: a, _B: b}\n";
    for (flag, expected) in [
        ("_A=x,_B=y", ["x", "y"]),
        ("_B=1+1=2", ["a", "1+1=2"]),
        // gcloud's alternate delimiter lets values hold commas.
        ("^;^_A=x,y;_B=z", ["x,y", "z"]),
        ("^:^_A=a,b:_B=", ["a,b", ""]),
    ] {
        let build = resolve_json(yaml, &["--substitutions", flag]);
        assert_eq!(build["steps"][0]["args"], json!(expected), "{flag}");
    }
}

#[test]
fn trigger_context_with_built_ins() {
    let build = resolve_json(
        "steps: [{name: 'gcr.io/p/app:$SHORT_SHA', args: ['$REF_NAME', '${_X:-none}', '$_UNSET']}]\n\
         substitutions: {_UNUSED: u}\n",
        &[
            "--context",
            "trigger",
            "--builtin",
            "BRANCH_NAME=main",
            "--builtin",
            &format!("COMMIT_SHA={SHA}"),
            "--substitutions",
            "_X=",
        ],
    );
    assert_eq!(build["steps"][0]["name"], "gcr.io/p/app:0123456");
    assert_eq!(build["steps"][0]["args"], json!(["main", "none", ""]));
    assert_eq!(build["options"]["substitutionOption"], "ALLOW_LOOSE");
    assert_eq!(build["options"]["dynamicSubstitutions"], true);
    let substitutions = &build["substitutions"];
    for (key, value) in [
        ("BRANCH_NAME", "main"),
        ("TAG_NAME", ""),
        ("REF_NAME", "main"),
        ("COMMIT_SHA", SHA),
        ("REVISION_ID", SHA),
        ("SHORT_SHA", "0123456"),
        ("_X", ""),
        ("_UNUSED", "u"),
    ] {
        assert_eq!(substitutions[key], value, "{key}");
    }
}

#[test]
fn resolve_errors_exit_1_with_diagnostics() {
    let dir = dir(&[
        (
            "unmatched.yaml",
            b"steps:\n- name: ubuntu\n  args: ['$_TYPO']\nsubstitutions:\n  _NAME: x\n",
        ),
        ("plain.yaml", b"steps: [{name: ubuntu}]\n"),
        ("invalid.yaml", b"steps: []\n"),
    ]);
    for (args, stderr) in [
        (
            &["unmatched.yaml"][..],
            "unmatched.yaml:3:10: steps[0].args[0]: key in the template \"_TYPO\" is not matched \
             in the substitution data (define it under `substitutions`, pass --substitutions \
             _TYPO=VALUE, or set options.substitutionOption: ALLOW_LOOSE)\n\
             unmatched.yaml:5:10: substitutions._NAME: key \"_NAME\" in the substitution data is \
             not matched in the template (remove it, or set options.substitutionOption: ALLOW_LOOSE)\n",
        ),
        (
            &["plain.yaml", "--substitutions", "PROJECT_ID=p"],
            "plain.yaml:1:1: substitutions: substitution key \"PROJECT_ID\" does not respect \
             format \"^_[A-Z0-9_]+$\" and is not an overridable built-in substitutions\n",
        ),
        (
            &["invalid.yaml"],
            "invalid.yaml:1:8: steps: config must list at least one step or specify remote_config \
             (builder reads no remote_config: list the steps)\n",
        ),
    ] {
        let mut all = vec!["config", "resolve"];
        all.extend(args);
        assert_eq!(
            run(dir.path(), &all),
            (1, String::new(), stderr.to_string()),
            "{args:?}"
        );
    }
    let (code, stdout, stderr) = run(dir.path(), &["config", "validate", "missing.yaml"]);
    assert_eq!((code, stdout.as_str()), (1, ""));
    assert!(
        stderr.starts_with("error: cannot read missing.yaml: "),
        "{stderr}"
    );
}

#[test]
fn usage_errors_exit_2() {
    let dir = dir(&[("ok.yaml", b"steps: [{name: ubuntu}]\n")]);
    for args in [
        &["frobnicate"][..],
        &["config", "frobnicate", "ok.yaml"],
        &["config", "validate"],
        &["config", "validate", "--strict", "ok.yaml"],
        &["config", "resolve", "ok.yaml", "--context", "nightly"],
        &["config", "resolve", "ok.yaml", "--format", "xml"],
        &["config", "resolve", "ok.yaml", "--builtin", "BRANCH_NAME"],
        &["config", "resolve", "ok.yaml", "--substitutions", "_A"],
    ] {
        let (code, stdout, stderr) = run(dir.path(), args);
        assert_eq!((code, stdout.as_str()), (2, ""), "{args:?}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
    }
}

/// A pull request held by comment control, then a non-writer's `/gcbrun` and a writer's, judged
/// in order.
#[test]
fn triggers_test_explains_a_pull_request_and_its_comments_in_order() {
    let trigger = b"name: prs\nfilename: cloudbuild.yaml\n\
        github: {owner: bradrydzewski, name: drone-test-go, \
        pullRequest: {branch: patch, commentControl: COMMENTS_ENABLED}}\n";
    let comment = |login: &str, association: &str| {
        serde_json::to_vec(&json!({
            "action": "created",
            "issue": {"number": 1, "pull_request": {"url": "https://api.github.com/x"}},
            "comment": {"user": {"login": login}, "author_association": association,
                        "body": "/gcbrun"},
            "repository": {"owner": {"login": "bradrydzewski"}, "name": "drone-test-go",
                           "full_name": "bradrydzewski/drone-test-go",
                           "clone_url": "https://github.com/bradrydzewski/drone-test-go.git"}
        }))
        .unwrap()
    };
    let (stranger, owner) = (comment("drive-by", "NONE"), comment("brad", "OWNER"));
    let dir = dir(&[
        ("trigger.yaml", trigger.as_slice()),
        ("stranger.json", stranger.as_slice()),
        ("owner.json", owner.as_slice()),
    ]);
    let opened = std::fs::canonicalize("webhooks/github/pull_request/opened.json").unwrap();
    let args = [
        "triggers",
        "test",
        "--trigger",
        "trigger.yaml",
        "--event-type",
        "pull_request",
        "--event",
        opened.to_str().unwrap(),
        "--comment",
        "stranger.json",
        "--comment",
        "owner.json",
    ];
    let (code, stdout, stderr) = run(dir.path(), &[&args[..], &["--format", "json"]].concat());
    assert_eq!(code, 0, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["builds"], json!(false));
    assert!(
        report["reason"]
            .as_str()
            .unwrap()
            .contains("COMMENTS_ENABLED"),
        "{report}"
    );
    let comments = report["comments"].as_array().unwrap();
    assert_eq!(comments[0]["comment"], json!("stranger.json"));
    assert_eq!(comments[0]["builds"], json!(false));
    assert!(
        comments[0]["reason"]
            .as_str()
            .unwrap()
            .contains("cannot write")
    );
    assert_eq!(comments[1]["builds"], json!(true));
    assert_eq!(comments[1]["secrets"], json!(true));
    assert_eq!(comments[1]["builtIns"]["_PR_NUMBER"], json!("1"));
    assert_eq!(
        comments[1]["builtIns"]["_BASE_BRANCH"],
        json!("bradrydzewski-patch-1")
    );
    assert_eq!(comments[1]["builtIns"]["BRANCH_NAME"], json!("master"));

    let (code, stdout, _) = run(dir.path(), &args);
    assert_eq!(code, 0);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("trigger \"prs\" does not build: commentControl is COMMENTS_ENABLED")
    );
    assert!(lines[1].starts_with(
        "after comment stranger.json, trigger \"prs\" does not build: the /gcbrun comment is from drive-by (NONE)"
    ));
    assert_eq!(lines[2], "after comment owner.json, trigger \"prs\" builds");
    assert!(lines.contains(&"  _PR_NUMBER=1"), "{stdout}");
    assert_eq!(lines.last(), Some(&"  (it may read the trigger's secrets)"));
}

#[test]
fn triggers_test_says_whether_a_real_delivery_builds_and_with_what() {
    let trigger = b"name: hello\nfilename: ci/cloudbuild.yaml\n\
        github: {owner: Codertocat, name: Hello-World, push: {branch: ^master$}}\n\
        ignoredFiles: ['**/*.md']\nsubstitutions: {_ENV: dev}\n";
    let dir = dir(&[("trigger.yaml", trigger)]);
    let push = std::fs::canonicalize("webhooks/github/push/branch-update.json").unwrap();
    let push = push.to_str().unwrap();
    let test = |extra: &[&str]| {
        let mut args = vec![
            "triggers",
            "test",
            "--trigger",
            "trigger.yaml",
            "--event",
            push,
        ];
        args.extend(extra);
        run(dir.path(), &args)
    };

    let (code, stdout, _) = test(&["--changed-file", "src/app.py", "--format", "json"]);
    assert_eq!(code, 0);
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["builds"], json!(true));
    assert_eq!(report["builtIns"]["BRANCH_NAME"], json!("master"));
    assert_eq!(report["builtIns"]["SHORT_SHA"], json!("199eddf"));
    assert_eq!(
        report["builtIns"]["REPO_FULL_NAME"],
        json!("Codertocat/Hello-World")
    );
    assert_eq!(
        report["builtIns"]["TRIGGER_BUILD_CONFIG_PATH"],
        json!("ci/cloudbuild.yaml")
    );
    assert_eq!(report["substitutions"], json!({"_ENV": "dev"}));

    let (code, stdout, _) = test(&["--changed-file", "docs/README.md"]);
    assert_eq!(code, 0);
    assert_eq!(
        stdout,
        "trigger \"hello\" does not build: every changed file matches ignoredFiles\n"
    );

    let (code, stdout, _) = test(&["--event-type", "ping"]);
    assert_eq!(
        (code, stdout.as_str()),
        (
            0,
            "trigger \"hello\" does not build: a ping starts no build\n"
        )
    );

    std::fs::write(
        dir.path().join("trigger.yaml"),
        b"name: hello\nfilename: x\ngithub: {owner: o, name: r, push: {branch: '(x'}}\n",
    )
    .unwrap();
    let (code, _, stderr) = test(&[]);
    assert_eq!(code, 1);
    assert!(
        stderr.starts_with("trigger.yaml:3:")
            && stderr.contains("github.push.branch: invalid regular expression"),
        "{stderr}"
    );
}

#[test]
fn schedules_preview_prints_fire_times_in_utc_and_local_time_without_a_server() {
    let here = dir(&[]);
    let preview = |args: &[&str]| {
        let mut all = vec!["schedules", "preview"];
        all.extend(args);
        run(here.path(), &all)
    };
    let (code, stdout, stderr) = preview(&[
        "30 2 * * *",
        "--time-zone",
        "America/New_York",
        "--from",
        "2024-03-09T00:00:00Z",
        "--count",
        "2",
    ]);
    assert_eq!((code, stderr.as_str()), (0, ""));
    assert_eq!(
        stdout,
        "UTC                     LOCAL (America/New_York)\n\
         2024-03-09T07:30:00Z    2024-03-09T02:30:00-05:00\n\
         2024-03-10T07:00:00Z    2024-03-10T03:00:00-04:00\n"
    );
    let (code, stdout, _) = preview(&[
        "0 3 * * MON",
        "--time-zone",
        "Europe/Berlin",
        "--from",
        "2024-10-21T00:00:00Z",
        "--count",
        "2",
        "--format",
        "json",
    ]);
    assert_eq!(code, 0);
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["runs"][0]["local"], "2024-10-21T03:00:00+02:00");
    assert_eq!(report["runs"][1]["utc"], "2024-10-28T02:00:00Z");

    let (code, _, stderr) = preview(&["0 25 * * *"]);
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
        "error: invalid cron expression: hour: 25 is out of range 0-23\n  0 25 * * *\n    ^\n"
    );
    let (code, _, stderr) = preview(&["0 3 * * *", "--time-zone", "Europe/Berln"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("did you mean \"Europe/Berlin\""),
        "{stderr}"
    );
}

/// A reader that stops reading (`builder builds list | head`) ends a command quietly with exit 0,
/// instead of a panic on the closed pipe (issue 14, point 11).
#[test]
fn a_closed_stdout_ends_commands_quietly() {
    let bin = assert_cmd::cargo::cargo_bin!("builder");
    let data = tempfile::tempdir().expect("temporary directory");
    let dir = dir(&[("cloudbuild.yaml", b"steps: [{name: ubuntu}]\n")]);
    for args in [
        &["builds", "list"][..],
        &["config", "resolve", "cloudbuild.yaml"],
        &["schedules", "preview", "* * * * *", "--count", "3"],
    ] {
        // The read end is gone before the command starts: its first write meets a closed pipe.
        let (reader, writer) = std::io::pipe().expect("a pipe");
        drop(reader);
        let output = std::process::Command::new(bin)
            .current_dir(dir.path())
            .env("BUILDER_DATA_DIR", data.path())
            .args(args)
            .stdout(writer)
            .output()
            .expect("builder runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            (output.status.code(), stderr.as_ref()),
            (Some(0), ""),
            "{args:?}"
        );
    }
    // As a shell runs it: `head` leaves after one line of many.
    let output = std::process::Command::new("bash")
        .args([
            "-c",
            r#"set -o pipefail; "$0" schedules preview '* * * * *' --count 100000 | head -n 1"#,
        ])
        .arg(bin)
        .output()
        .expect("bash runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!((output.status.code(), stderr.as_ref()), (Some(0), ""));
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("UTC"));
}

/// A request to a webhook trigger judged as the server judges it: its secret, its body's values
/// bound to the substitutions, and its CEL filter over them.
#[test]
fn triggers_test_explains_a_webhook_request() {
    let trigger = b"name: hook\nfilename: cloudbuild.yaml\n\
        webhookConfig: {secret: projects/p/secrets/hook-secret/versions/1}\n\
        sourceToBuild: {uri: 'https://github.com/acme/app', ref: refs/heads/main, repoType: GITHUB}\n\
        substitutions: {_REF: $(body.ref), _WHO: $(body.user.name)}\n\
        filter: _REF == \"refs/heads/main\"\n";
    let main = br#"{"ref": "refs/heads/main", "user": {"name": "Ada"}}"#;
    let tag = br#"{"ref": "refs/tags/v1", "user": {"name": "Ada"}}"#;
    let dir = dir(&[
        ("hook.yaml", trigger.as_slice()),
        ("main.json", main.as_slice()),
        ("tag.json", tag.as_slice()),
        ("form.txt", b"a=1".as_slice()),
    ]);
    std::fs::create_dir(dir.path().join("secrets")).unwrap();
    std::fs::write(dir.path().join("secrets/hook-secret"), "s3cr3t").unwrap();
    let test = |event: &str, extra: &[&str]| {
        let mut args = vec![
            "triggers",
            "test",
            "--trigger",
            "hook.yaml",
            "--event-type",
            "webhook",
            "--event",
            event,
            "--secrets-dir",
            "secrets",
        ];
        args.extend(extra);
        run(dir.path(), &args)
    };

    let (code, stdout, stderr) = test("main.json", &["--query", "secret=s3cr3t"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout,
        "trigger \"hook\" builds\n  BRANCH_NAME=main\n  REF_NAME=main\n  REPO_FULL_NAME=acme/app\n  \
         REPO_NAME=app\n  TRIGGER_BUILD_CONFIG_PATH=cloudbuild.yaml\n  TRIGGER_NAME=hook\n  \
         _REF=refs/heads/main\n  _WHO=Ada\n"
    );
    let (_, stdout, _) = test(
        "tag.json",
        &["--query", "secret=s3cr3t", "--format", "json"],
    );
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["builds"], json!(false), "{report}");
    assert_eq!(
        report["reason"],
        json!("the filter _REF == \"refs/heads/main\" is false")
    );
    for query in [&[][..], &["--query", "key=k", "--query", "secret=S3CR3T"]] {
        let (code, stdout, _) = test("main.json", query);
        assert_eq!(code, 0);
        assert_eq!(
            stdout,
            "trigger \"hook\" does not build: the request's secret is not trigger \"hook\"'s\n"
        );
    }
    let (code, _, stderr) = test("form.txt", &["--query", "secret=s3cr3t"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("form.txt: the body is not JSON"),
        "{stderr}"
    );
    // Without the trigger's secret, the request cannot be judged.
    std::fs::remove_file(dir.path().join("secrets/hook-secret")).unwrap();
    let (code, _, stderr) = test("main.json", &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("BUILDER_SECRET_HOOK_SECRET"), "{stderr}");
}
