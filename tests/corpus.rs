//! Every real config of the shared corpus (`corpus/cloudbuild/` of the shared directory, see
//! [`shared_dir`]) goes through `builder config validate`'s code path. Valid files must load
//! without errors; the only rejections allowed are listed below, each with the reason Cloud Build
//! (or YAML itself) rejects the file too.

use std::path::{Path, PathBuf};

use builder::core::plan;

/// Where the shared data lives: `BUILDER_SHARED_DIR` if set, else `../shared` beside the
/// checkout (where the team's worktrees have it).
fn shared_dir() -> PathBuf {
    match std::env::var_os("BUILDER_SHARED_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"),
    }
}

/// Files rejected, with the reason. Each is a problem Cloud Build or gcloud raises as well.
const REJECTED: &[(&str, &str)] = &[
    // Not YAML at all (the corpus manifest marks them as invalid).
    (
        "GoogleCloudPlatform__cloud-builders-community__velero__examples__cloudbuild-velero-version.yaml",
        "did not find expected '-'",
    ),
    (
        "GoogleCloudPlatform__mlops-on-gcp__immersion__kubeflow_pipelines__cicd__labs__cloudbuild.yaml",
        "invalid trailing content",
    ),
    (
        "GoogleCloudPlatform__training-data-analyst__courses__machine_learning__deepdive2__production_ml__labs__samples__contrib__versioned-pipeline-ci-samples__helloworld-ci-sample__cloudbuild.yaml",
        "illegal placement of ':'",
    ),
    (
        "fjordllc__bootcamp__.cloudbuild__cloudbuild-delete.yaml",
        "did not find expected key",
    ),
    // gcloud refuses built-in names as keys of the config's `substitutions`.
    (
        "0xDracarys__lfs-automated-build__cloudbuild-web.yaml",
        "substitution key SHORT_SHA does not respect format",
    ),
    (
        "GoogleCloudPlatform__cloud-build-local__integration_tests__cloudbuild_builtin_substitutions.yaml",
        "substitution key COMMIT_SHA does not respect format",
    ),
    // Templates with placeholders left in: an encrypted value written as `[ENCRYPTED_API_KEY]`
    // (a YAML list), substitution values written as `[Your …]`, `name: # TODO`.
    (
        "GoogleCloudPlatform__cloud-builders-community__jfrog__examples__cloudbuild.yaml",
        "expected a string, found a list",
    ),
    (
        "GoogleCloudPlatform__training-data-analyst__courses__machine_learning__deepdive2__production_ml__labs__samples__contrib__versioned-pipeline-ci-samples__kaggle-ci-sample__cloudbuild.yaml",
        "expected a string, found a list",
    ),
    (
        "GoogleCloudPlatform__training-data-analyst__courses__machine_learning__deepdive2__production_ml__labs__samples__contrib__versioned-pipeline-ci-samples__mnist-ci-sample__cloudbuild.yaml",
        "expected a string, found a list",
    ),
    (
        "GoogleCloudPlatform__mlops-on-gcp__immersion__kubeflow_pipelines__cicd__labs__cloudbuild_vertex.yaml",
        "steps[0].name: build step 0 must specify name",
    ),
    // A KMS secret defined but used by no step: Cloud Build's `defined without being used`.
    (
        "GoogleCloudPlatform__cloud-builders-community__firebase__examples__cloudbuild.yaml",
        "is defined without being used",
    ),
    // Shell or environment variables written `$VAR` in args: Cloud Build rejects these in every
    // mode with "key in the template … is not a valid built-in substitution" (spec §4.4).
    (
        "GoogleCloudPlatform__cloud-builders-community__pypi-tools__examples__cleartext-cloudbuild.yaml",
        "\"PYPI_USERNAME\" is not a valid built-in substitution",
    ),
    (
        "GoogleCloudPlatform__cloud-builders-community__pypi-tools__examples__kms-cloudbuild.yaml",
        "\"PYPI_USERNAME\" is not a valid built-in substitution",
    ),
    (
        "GoogleCloudPlatform__cloud-builders-community__vault__examples__cloudbuild-vault-token-renew.yaml",
        "\"VAULT_INCR\" is not a valid built-in substitution",
    ),
    (
        "GoogleCloudPlatform__google-auth-library-perl__cloudbuild.json",
        "\"LD_LIBRARY_PATH\" is not a valid built-in substitution",
    ),
    (
        "Micro-cosm__micro-go-start__cloudbuild.prod.json",
        "\"DEBUG\" is not a valid built-in substitution",
    ),
    (
        "kubeflow__pipelines__test__cloudbuild__batch_build.yaml",
        "\"NODE_VERSION\" is not a valid built-in substitution",
    ),
    (
        "kubeflow__pipelines__test__cloudbuild__frontend.yaml",
        "\"NODE_VERSION\" is not a valid built-in substitution",
    ),
    // An input to tfjs's own config generator, not a config: it carries the generator's field.
    (
        "tensorflow__tfjs__scripts__cloudbuild_general_config.yml",
        "waitedForByPackages: unused: unknown field",
    ),
];

#[test]
fn every_valid_corpus_config_validates_and_the_rest_are_rejected_with_a_location() {
    let corpus = shared_dir().join("corpus/cloudbuild");
    let entries = std::fs::read_dir(&corpus).unwrap_or_else(|e| {
        panic!(
            "cannot read the shared corpus at {}: {e}; set BUILDER_SHARED_DIR to the directory \
             that holds corpus/cloudbuild/ (see README, \"Shared test data\")",
            corpus.display()
        )
    });
    let mut files: Vec<_> = entries
        .map(|entry| entry.expect("readable corpus").path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 769);
    let mut problems = Vec::new();
    let mut accepted = 0;
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let rendered = validate(path, &name);
        match (REJECTED.iter().find(|(file, _)| *file == name), rendered) {
            (None, None) => accepted += 1,
            (None, Some(errors)) => problems.push(format!("unexpected errors:\n{errors}")),
            (Some((_, reason)), None) => {
                problems.push(format!("{name}: accepted, expected {reason:?}"))
            }
            (Some((_, reason)), Some(errors)) => {
                let located = errors.lines().all(|line| {
                    line.starts_with(&format!("{name}:"))
                        && line
                            .split(':')
                            .nth(2)
                            .is_some_and(|col| col.parse::<usize>().is_ok())
                });
                if !errors.contains(reason) || !located {
                    problems.push(format!(
                        "{name}: expected {reason:?} with line and column, got:\n{errors}"
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_eq!(accepted, files.len() - REJECTED.len());
}

/// The rendered errors (not warnings) for a file, or `None` when it is valid.
fn validate(path: &Path, name: &str) -> Option<String> {
    let bytes = std::fs::read(path).unwrap();
    let diagnostics = match plan::load(&bytes) {
        Ok(loaded) => loaded.diagnostics,
        Err(diagnostics) => diagnostics,
    };
    let errors: String = diagnostics
        .errors()
        .map(|d| d.render(name) + "\n")
        .collect();
    (!errors.is_empty()).then_some(errors)
}

/// Every real `pull_request` and `issue_comment` delivery of the shared corpus
/// (`corpus/github-webhooks/`) is read: a pull request's head, base and author, a comment's
/// author and whether it is on a pull request. Events are told apart by their shape, as the
/// files carry no `X-GitHub-Event`: a review or review comment also names its pull request.
#[test]
fn every_pull_request_and_comment_delivery_parses() {
    use builder::core::webhooks::{self, Delivery};
    let dir = shared_dir().join("corpus/github-webhooks");
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (set BUILDER_SHARED_DIR)", dir.display()));
    let (mut pull_requests, mut comments) = (0, 0);
    for entry in entries {
        let path = entry.unwrap().path();
        let body = std::fs::read(&path).unwrap();
        let payload: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let has = |key: &str| payload.get(key).is_some_and(|v| !v.is_null());
        let event = if has("pull_request") && !has("review") && !has("comment") {
            "pull_request"
        } else if has("issue") && has("comment") {
            "issue_comment"
        } else {
            continue;
        };
        match webhooks::parse(event, &body) {
            Ok(Delivery::PullRequest(event)) => {
                pull_requests += 1;
                let pull_request = &event.pull_request;
                assert!(pull_request.number > 0, "{}", path.display());
                assert_eq!(pull_request.head_sha.len(), 40, "{}", path.display());
                assert!(!pull_request.base_branch.is_empty(), "{}", path.display());
            }
            Ok(Delivery::Comment(comment)) => {
                comments += 1;
                assert!(!comment.author.is_empty(), "{}", path.display());
            }
            other => panic!("{}: {other:?}", path.display()),
        }
    }
    // The corpus as it is: 43 pull requests, 9 comments.
    assert_eq!((pull_requests, comments), (43, 9));
}
