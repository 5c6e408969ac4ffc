//! Build triggers in Cloud Build's BuildTrigger shape (spec §9), so that files written by
//! `gcloud builds triggers export` load as they are: reading a trigger file with every problem at
//! its line and column, and deciding whether a GitHub push fires a trigger, and if not, why.

use std::collections::BTreeMap;
use std::fmt;

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::core::config::decode::{self, Fields};
use crate::core::config::{self, BuildConfig, validate};
use crate::core::diag::{Diagnostics, FieldPath};
use crate::core::glob::Glob;
use crate::core::plan;
use crate::core::substitute::Values;
use crate::core::webhooks::{Delivery, GitRef, Push, RefKind, Repository};

/// What one trigger made of a delivery: the build it queued, or why it queued none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerResult {
    pub trigger: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A trigger as loaded: what it listens to, which files count, and the build it starts.
#[derive(Debug, Clone)]
pub struct Trigger {
    pub name: String,
    pub description: String,
    pub github: Option<GitHub>,
    pub included_files: Vec<Glob>,
    pub ignored_files: Vec<Glob>,
    pub substitutions: BTreeMap<String, String>,
    pub build: BuildSource,
    /// Never fires on pushes; it can still be run by hand.
    pub disabled: bool,
    pub tags: Vec<String>,
    /// Its builds may reach the machine through the engine (privileged containers, host paths
    /// and namespaces…), as Woodpecker's trusted repositories; builder's own field, not gcloud's.
    pub trusted: bool,
}

/// Where a triggered build's config comes from.
#[derive(Debug, Clone)]
pub enum BuildSource {
    /// A config file in the pushed commit, relative to the repository root.
    File(String),
    Inline(Box<BuildConfig>),
    /// The first of `cloudbuild.yaml`, `cloudbuild.yml`, `cloudbuild.json` in the repository.
    Autodetect,
}

/// The repository a trigger listens to, and its push filter (`None`: a pull-request trigger,
/// which builder does not run).
#[derive(Debug, Clone)]
pub struct GitHub {
    pub owner: String,
    pub name: String,
    pub push: Option<PushFilter>,
}

#[derive(Debug, Clone)]
pub struct PushFilter {
    pub kind: RefKind,
    /// RE2 syntax, searched in the short ref name (`main`, `v1.2.0`), not matched whole.
    pub pattern: Regex,
    pub invert: bool,
}

/// Why a trigger did not fire for a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    Disabled,
    NotGitHub,
    PullRequestsOnly,
    OtherRepository,
    OtherRefKind(RefKind),
    /// The delivery is not a push of a branch or tag (it says what it is).
    NotAPush(String),
    RefNotMatched {
        pattern: String,
        invert: bool,
    },
    Deleted,
    SkipCi,
    AllChangesIgnored,
    NothingIncludedChanged,
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Disabled => f.write_str("the trigger is disabled"),
            Self::NotGitHub => f.write_str("the trigger has no `github` event source"),
            Self::PullRequestsOnly => f.write_str("the trigger is for pull requests, not pushes"),
            Self::OtherRepository => f.write_str("the push is to another repository"),
            Self::OtherRefKind(RefKind::Branch) => f.write_str("the trigger is for branch pushes"),
            Self::OtherRefKind(RefKind::Tag) => f.write_str("the trigger is for tag pushes"),
            Self::RefNotMatched {
                pattern,
                invert: false,
            } => write!(f, "the ref does not match {pattern:?}"),
            Self::RefNotMatched {
                pattern,
                invert: true,
            } => write!(f, "the ref matches {pattern:?} and invertRegex is set"),
            Self::NotAPush(what) => write!(f, "{what} starts no build"),
            Self::Deleted => f.write_str("deleting a branch or tag starts no build"),
            Self::SkipCi => f.write_str("the head commit's message asks to skip CI"),
            Self::AllChangesIgnored => f.write_str("every changed file matches ignoredFiles"),
            Self::NothingIncludedChanged => {
                f.write_str("no changed file (after ignoredFiles) matches includedFiles")
            }
        }
    }
}

/// The push a delivery carries, or why it starts no build.
pub fn push_of(delivery: &Delivery) -> Result<&Push, Skip> {
    match delivery {
        Delivery::Push(push) => Ok(push),
        Delivery::Ping(_) => Err(Skip::NotAPush("a ping".into())),
        Delivery::PushToOtherRef { ref_name } => {
            Err(Skip::NotAPush(format!("a push to {ref_name}")))
        }
        Delivery::Ignored { event } => Err(Skip::NotAPush(format!("a {event:?} event"))),
    }
}

/// What `delivery` means for `trigger`: the push it builds, or why it starts no build.
pub fn evaluate<'d>(
    trigger: &Trigger,
    delivery: &'d Delivery,
    changed_files: &[String],
) -> Result<&'d Push, Skip> {
    let push = push_of(delivery)?;
    trigger.fires(push, changed_files)?;
    Ok(push)
}

impl Trigger {
    /// Whether `push`, which changed `changed_files`, fires this trigger (spec §9.2, §9.3).
    pub fn fires(&self, push: &Push, changed_files: &[String]) -> Result<(), Skip> {
        self.fires_on_ref(push)?;
        self.files_fire(changed_files)
    }

    /// Whether `push` fires this trigger as far as can be told without its changed files.
    pub fn fires_on_ref(&self, push: &Push) -> Result<(), Skip> {
        if self.disabled {
            return Err(Skip::Disabled);
        }
        let github = self.github.as_ref().ok_or(Skip::NotGitHub)?;
        let filter = github.push.as_ref().ok_or(Skip::PullRequestsOnly)?;
        // GitHub's owner and repository names are case-insensitive.
        if !github.owner.eq_ignore_ascii_case(&push.repository.owner)
            || !github.name.eq_ignore_ascii_case(&push.repository.name)
        {
            return Err(Skip::OtherRepository);
        }
        if push.git_ref.kind() != filter.kind {
            return Err(Skip::OtherRefKind(filter.kind));
        }
        if filter.pattern.is_match(push.git_ref.name()) == filter.invert {
            return Err(Skip::RefNotMatched {
                pattern: filter.pattern.as_str().to_string(),
                invert: filter.invert,
            });
        }
        if push.is_deletion() {
            return Err(Skip::Deleted);
        }
        if push.skips_ci() {
            return Err(Skip::SkipCi);
        }
        Ok(())
    }

    /// The trigger as the API and the console show it, with its rule in words.
    pub fn summary(&self) -> serde_json::Value {
        let rule = match &self.github {
            None => "never fires on pushes (no `github` source)".to_string(),
            Some(GitHub { push: None, .. }) => "never fires here (pull requests)".to_string(),
            Some(GitHub {
                owner,
                name,
                push: Some(filter),
            }) => {
                let kind = match filter.kind {
                    RefKind::Branch => "branches",
                    RefKind::Tag => "tags",
                };
                let matching = if filter.invert {
                    "not matching"
                } else {
                    "matching"
                };
                let mut rule = format!(
                    "pushes to {kind} {matching} {:?} of {owner}/{name}",
                    filter.pattern.as_str()
                );
                let globs = |globs: &[Glob]| {
                    globs
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                if !self.ignored_files.is_empty() {
                    rule += &format!(", except changes only to {}", globs(&self.ignored_files));
                }
                if !self.included_files.is_empty() {
                    rule += &format!(", that change {}", globs(&self.included_files));
                }
                rule
            }
        };
        let config = match &self.build {
            BuildSource::File(path) => path.clone(),
            BuildSource::Inline(_) => "inline".to_string(),
            BuildSource::Autodetect => "autodetect".to_string(),
        };
        serde_json::json!({
            "name": self.name,
            "description": self.description,
            "disabled": self.disabled,
            "trusted": self.trusted,
            "rule": rule,
            "config": config,
            "substitutions": self.substitutions,
            "tags": self.tags,
        })
    }

    /// Whether deciding needs the push's changed files.
    pub fn has_file_filters(&self) -> bool {
        !self.included_files.is_empty() || !self.ignored_files.is_empty()
    }

    /// The built-in substitutions of this trigger's build of `commit` in `repository`, reached
    /// through `git_ref` (none for a commit run by hand) (spec §9.2).
    pub fn built_ins(
        &self,
        repository: &Repository,
        git_ref: Option<&GitRef>,
        commit: &str,
    ) -> Values {
        let (branch, tag) = match git_ref {
            Some(GitRef::Branch(name)) => (name.as_str(), ""),
            Some(GitRef::Tag(name)) => ("", name.as_str()),
            None => ("", ""),
        };
        let config_path = match &self.build {
            BuildSource::File(path) => path.as_str(),
            BuildSource::Inline(_) | BuildSource::Autodetect => "",
        };
        let mut built_ins = [
            ("COMMIT_SHA", commit),
            ("BRANCH_NAME", branch),
            ("TAG_NAME", tag),
            ("REPO_NAME", &repository.name),
            ("REPO_FULL_NAME", &repository.full_name),
            ("TRIGGER_NAME", &self.name),
            ("TRIGGER_BUILD_CONFIG_PATH", config_path),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
        plan::derive_built_ins(&mut built_ins);
        built_ins
    }

    /// The file filters: ignored files are dropped first, so ignored wins over included; with
    /// no ignored globs and no changed files the filters do not apply.
    pub fn files_fire(&self, changed: &[String]) -> Result<(), Skip> {
        if self.ignored_files.is_empty() && changed.is_empty() {
            return Ok(());
        }
        let matches = |globs: &[Glob], file: &str| globs.iter().any(|g| g.matches(file));
        let left: Vec<&String> = changed
            .iter()
            .filter(|file| !matches(&self.ignored_files, file))
            .collect();
        if left.is_empty() {
            return Err(Skip::AllChangesIgnored);
        }
        if !self.included_files.is_empty()
            && !left.iter().any(|file| matches(&self.included_files, file))
        {
            return Err(Skip::NothingIncludedChanged);
        }
        Ok(())
    }
}

/// What Cloud Build records about a trigger; exports carry it, and it means nothing here.
const METADATA: &[&str] = &["id", "createTime", "resourceName"];
/// Fields of exported triggers that builder reads but cannot honour, and why.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("serviceAccount", "steps run with the engine's credentials"),
    ("approvalConfig", "builds are not held for approval"),
    ("includeBuildLogs", "builds post no GitHub checks"),
    ("filter", "CEL filters are not evaluated"),
    ("pubsubConfig", "only GitHub pushes fire triggers"),
    ("webhookConfig", "only GitHub pushes fire triggers"),
    ("triggerTemplate", "only GitHub pushes fire triggers"),
    ("repositoryEventConfig", "only GitHub pushes fire triggers"),
    (
        "sourceToBuild",
        "manual runs build the trigger's repository",
    ),
    ("gitFileSource", "set `filename` instead"),
];

/// Reads a trigger file (YAML or JSON). `Err` holds the diagnostics when it is not a usable
/// trigger; `Ok` carries the warnings.
pub fn load(bytes: &[u8]) -> Result<(Trigger, Diagnostics), Diagnostics> {
    decode::document(bytes, trigger)
}

fn trigger(f: &mut Fields) -> Trigger {
    let name = name(f, "trigger");
    for &field in METADATA {
        f.take(field);
    }
    for &(field, why) in UNSUPPORTED {
        if f.take(field).is_some() {
            f.warn_unsupported(field, why);
        }
    }
    let substitutions = f.string_map("substitutions");
    let path = f.path().key("substitutions");
    validate::check_substitution_keys(&substitutions, &path, f.diagnostics());
    let included_files = globs(f, "includedFiles");
    let ignored_files = globs(f, "ignoredFiles");
    Trigger {
        name,
        description: f.string("description").unwrap_or_default(),
        github: f.object("github", github),
        included_files,
        ignored_files,
        substitutions,
        build: build_source(f),
        disabled: f.bool("disabled").unwrap_or(false),
        tags: f.strings("tags"),
        trusted: f.bool("trusted").unwrap_or(false),
    }
}

/// The `name` of a `kind` of resource (a trigger, a schedule), checked against Cloud Build's rule
/// for trigger names.
pub(crate) fn name(f: &mut Fields, kind: &str) -> String {
    let name = f.string("name").unwrap_or_default();
    let valid_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    let ends = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    let valid = (1..=64).contains(&name.len())
        && valid_chars
        && ends(name.chars().next())
        && ends(name.chars().last());
    if !valid {
        let path = f.path().key("name");
        f.diagnostics().error(
            &path,
            format!(
                "{kind} name {name:?}: 1 to 64 letters, digits and dashes, starting and ending \
                 with a letter or digit"
            ),
        );
    }
    name
}

fn globs(f: &mut Fields, field: &'static str) -> Vec<Glob> {
    let path = f.path().key(field);
    let texts = f.strings(field);
    let mut globs = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        match Glob::new(text) {
            Ok(glob) => globs.push(glob),
            Err(message) => f.diagnostics().error(&path.index(i), message),
        }
    }
    globs
}

fn github(f: &mut Fields) -> GitHub {
    f.unsupported_scalar(
        "enterpriseConfigResourceName",
        "the repository is fetched from its clone URL",
    );
    if f.take("pullRequest").is_some() {
        f.warn_unsupported("pullRequest", "pull-request triggers never fire here");
    }
    GitHub {
        owner: f.string("owner").unwrap_or_default(),
        name: f.string("name").unwrap_or_default(),
        push: f.object("push", push_filter).flatten(),
    }
}

fn push_filter(f: &mut Fields) -> Option<PushFilter> {
    let branch = f.string("branch");
    let tag = f.string("tag");
    let invert = f.bool("invertRegex").unwrap_or(false);
    let (kind, field, pattern) = match (branch, tag) {
        (Some(branch), None) => (RefKind::Branch, "branch", branch),
        (None, Some(tag)) => (RefKind::Tag, "tag", tag),
        (branch, _) => {
            let path = f.path().clone();
            let message = if branch.is_some() {
                "set either `branch` or `tag`, not both"
            } else {
                "set `branch` or `tag` (a regular expression)"
            };
            f.diagnostics().error(&path, message);
            return None;
        }
    };
    match Regex::new(&pattern) {
        Ok(pattern) => Some(PushFilter {
            kind,
            pattern,
            invert,
        }),
        Err(e) => {
            let path = f.path().key(field);
            f.diagnostics()
                .error(&path, format!("invalid regular expression: {e}"));
            None
        }
    }
}

/// A path relative to the repository root that stays inside it.
fn is_repository_path(path: &str) -> bool {
    let path = std::path::Path::new(path);
    path.components()
        .all(|c| matches!(c, std::path::Component::Normal(_)))
        && path.components().next().is_some()
}

fn build_source(f: &mut Fields) -> BuildSource {
    let filename = f.string("filename");
    let autodetect = f.bool("autodetect") == Some(true);
    match (filename, f.take("build")) {
        (Some(file), None) => {
            if !is_repository_path(&file) {
                let path = f.path().key("filename");
                f.diagnostics().error(
                    &path,
                    format!("{file:?} is not a relative path inside the repository"),
                );
            }
            BuildSource::File(file)
        }
        (None, Some((node, path))) => {
            BuildSource::Inline(Box::new(config::embedded(node, &path, f.diagnostics())))
        }
        (None, None) if autodetect => BuildSource::Autodetect,
        (filename, _) => {
            let message = if filename.is_some() {
                "set either `filename` or `build`, not both"
            } else {
                "set `filename` (the config's path in the repository) or an inline `build`"
            };
            f.diagnostics().error(&FieldPath::root(), message);
            BuildSource::Autodetect
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::webhooks::HeadCommit;

    fn trigger(yaml: &str) -> Trigger {
        match load(yaml.as_bytes()) {
            Ok((trigger, _)) => trigger,
            Err(diagnostics) => panic!("{}", diagnostics.render("trigger.yaml")),
        }
    }

    fn errors(yaml: &str) -> String {
        load(yaml.as_bytes())
            .expect_err("refused")
            .render("trigger.yaml")
    }

    fn push(git_ref: GitRef) -> Push {
        Push {
            repository: Repository {
                owner: "Acme-ML".into(),
                name: "training-pipeline".into(),
                full_name: "Acme-ML/training-pipeline".into(),
                clone_url: "https://github.com/Acme-ML/training-pipeline.git".into(),
            },
            git_ref,
            before: "1".repeat(40),
            after: "2".repeat(40),
            created: false,
            deleted: false,
            forced: false,
            head_commit: None,
        }
    }

    fn files(changed: &[&str]) -> Vec<String> {
        changed.iter().map(|f| f.to_string()).collect()
    }

    fn branch(name: &str) -> GitRef {
        GitRef::Branch(name.into())
    }

    const MAIN: &str = "name: t\nfilename: cloudbuild.yaml\n\
        github: {owner: acme-ml, name: training-pipeline, push: {branch: ^main$}}\n";

    #[test]
    fn the_shipped_trainer_trigger_loads_and_fires_on_trainer_changes_only() {
        let (trigger, warnings) = load(include_bytes!(
            "../../../configs/trainer-image/trigger.yaml"
        ))
        .unwrap();
        assert_eq!(warnings.iter().count(), 0);
        assert!(matches!(&trigger.build, BuildSource::File(f) if f == "cloudbuild.yaml"));
        let fires = |changed: &[&str]| trigger.fires(&push(branch("main")), &files(changed));
        assert_eq!(fires(&["training-pipeline/trainer/train.py"]), Ok(()));
        assert_eq!(fires(&["trainer.Dockerfile", "README.md"]), Ok(()));
        assert_eq!(fires(&["README.md"]), Err(Skip::NothingIncludedChanged));
    }

    #[test]
    fn branch_patterns_are_searched_and_can_be_inverted() {
        let unanchored = trigger(&MAIN.replace("^main$", "main"));
        assert_eq!(
            unanchored.fires(&push(branch("release/main-2")), &[]),
            Ok(())
        );
        let anchored = trigger(MAIN);
        assert_eq!(anchored.fires(&push(branch("main")), &[]), Ok(()));
        assert!(matches!(
            anchored.fires(&push(branch("mainline")), &[]),
            Err(Skip::RefNotMatched { invert: false, .. })
        ));
        let inverted = trigger(&MAIN.replace("^main$}", "^main$, invertRegex: true}"));
        assert_eq!(inverted.fires(&push(branch("feature/x")), &[]), Ok(()));
        assert!(matches!(
            inverted.fires(&push(branch("main")), &[]),
            Err(Skip::RefNotMatched { invert: true, .. })
        ));
    }

    #[test]
    fn branch_triggers_ignore_tags_and_other_repositories() {
        let main = trigger(MAIN);
        assert_eq!(
            main.fires(&push(GitRef::Tag("main".into())), &[]),
            Err(Skip::OtherRefKind(RefKind::Branch))
        );
        let mut elsewhere = push(branch("main"));
        elsewhere.repository.name = "other".into();
        assert_eq!(main.fires(&elsewhere, &[]), Err(Skip::OtherRepository));
        let tags = trigger(&MAIN.replace("branch: ^main$", r"tag: ^v\d+"));
        assert_eq!(tags.fires(&push(GitRef::Tag("v1.4.0".into())), &[]), Ok(()));
        let disabled = trigger(&format!("{MAIN}disabled: true\n"));
        assert_eq!(
            disabled.fires(&push(branch("main")), &[]),
            Err(Skip::Disabled)
        );
    }

    /// A real delivery, parsed.
    fn delivery(body: &[u8]) -> Push {
        match crate::core::webhooks::parse("push", body) {
            Ok(crate::core::webhooks::Delivery::Push(push)) => push,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn real_pushes_set_the_built_ins_and_deletions_or_skip_ci_build_nothing() {
        let drone = "name: drone\nfilename: ci/cloudbuild.yaml\n\
                     github: {owner: bradrydzewski, name: drone-test-go, push: {tag: ^v}}\n";
        let tags = trigger(drone);
        let created = delivery(include_bytes!(
            "../../../webhooks/github/push/tag-created.json"
        ));
        assert_eq!(tags.fires(&created, &[]), Ok(()));
        let built_ins = tags.built_ins(
            &created.repository,
            Some(&created.git_ref),
            created.commit(),
        );
        let expected = [
            ("BRANCH_NAME", ""),
            ("COMMIT_SHA", created.after.as_str()),
            ("REF_NAME", "v0.0.1"),
            ("REVISION_ID", created.after.as_str()),
            ("SHORT_SHA", &created.after[..7]),
            ("REPO_FULL_NAME", "bradrydzewski/drone-test-go"),
            ("REPO_NAME", "drone-test-go"),
            ("TAG_NAME", "v0.0.1"),
            ("TRIGGER_BUILD_CONFIG_PATH", "ci/cloudbuild.yaml"),
            ("TRIGGER_NAME", "drone"),
        ];
        let expected: Values = expected
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(built_ins, expected);
        let deleted = delivery(include_bytes!(
            "../../../webhooks/github/push/tag-deleted.json"
        ));
        assert_eq!(tags.fires(&deleted, &[]), Err(Skip::Deleted));

        let mut skipped = push(branch("main"));
        skipped.head_commit = Some(HeadCommit {
            id: skipped.after.clone(),
            message: "docs: typo [skip ci]".into(),
        });
        assert_eq!(trigger(MAIN).fires(&skipped, &[]), Err(Skip::SkipCi));
    }

    #[test]
    fn ignored_files_win_over_included_files() {
        let filtered = trigger(&format!(
            "{MAIN}includedFiles: ['src/*']\nignoredFiles: ['**/README.md']\n"
        ));
        let fires = |changed: &[&str]| filtered.fires(&push(branch("main")), &files(changed));
        assert_eq!(fires(&["src/README.md"]), Err(Skip::AllChangesIgnored));
        assert_eq!(fires(&["src/README.md", "src/a.py"]), Ok(()));
        assert_eq!(fires(&["src/sub/a.py"]), Err(Skip::NothingIncludedChanged));
        // With ignored globs, a push that changed nothing has nothing left to build.
        assert_eq!(fires(&[]), Err(Skip::AllChangesIgnored));
        let included_only = trigger(&format!("{MAIN}includedFiles: ['src/*']\n"));
        assert_eq!(included_only.fires(&push(branch("main")), &[]), Ok(()));
    }

    #[test]
    fn exported_triggers_load_with_warnings_for_what_is_not_honoured() {
        let exported = format!(
            "createTime: '2024-01-01T00:00:00Z'\nid: 0a1b\nserviceAccount: projects/p/sa\n{MAIN}\
             substitutions: {{_ENV: prod}}\ntags: [ml]\n"
        );
        let (trigger, warnings) = load(exported.as_bytes()).unwrap();
        assert_eq!(trigger.substitutions["_ENV"], "prod");
        assert_eq!(trigger.tags, ["ml"]);
        let rendered = warnings.render("trigger.yaml");
        assert_eq!(
            rendered,
            "trigger.yaml:3:17: warning: serviceAccount: not honoured by builder \
             (steps run with the engine's credentials); ignored\n"
        );
    }

    #[test]
    fn an_inline_build_is_validated_where_it_is_written() {
        let inline = "name: t\ngithub: {owner: o, name: r, push: {branch: .}}\nbuild:\n  \
                      steps:\n  - name: ubuntu\n    waitFor: [nope]\n";
        let rendered = errors(inline);
        assert!(
            rendered.contains("trigger.yaml:6:15: build.steps[0].waitFor[0]"),
            "{rendered}"
        );
        let good = trigger("name: t\nbuild: {steps: [{name: ubuntu}]}\n");
        assert!(matches!(good.build, BuildSource::Inline(_)));
    }

    #[test]
    fn bad_triggers_are_refused_with_their_locations() {
        let rendered = errors(&MAIN.replace("^main$", "(main"));
        assert!(rendered.contains("trigger.yaml:3:"), "{rendered}");
        assert!(rendered.contains("github.push.branch: invalid regular expression"));
        let rendered = errors(&format!("{MAIN}includedFiles: ['ok/*', 'src/[a-']\n"));
        assert!(
            rendered.contains("trigger.yaml:4:25: includedFiles[1]: glob"),
            "{rendered}"
        );
        let rendered = errors(&MAIN.replace("branch: ^main$", "branch: a, tag: b"));
        assert!(rendered.contains("not both"), "{rendered}");
        assert!(errors(&MAIN.replace("name: t", "name: -t")).contains("trigger name"));
        let outside = MAIN.replace("cloudbuild.yaml", "../x.yaml");
        assert!(errors(&outside).contains("not a relative path inside the repository"));
        assert!(errors(&MAIN.replace("filename: cloudbuild.yaml\n", "")).contains("`filename`"));
        let rendered = errors(&format!("{MAIN}includeFiles: [a]\n"));
        assert!(
            rendered.contains("did you mean \"includedFiles\""),
            "{rendered}"
        );
        let rendered = errors(&format!("{MAIN}substitutions: {{ENV: x}}\n"));
        assert!(rendered.contains("substitutions.ENV"), "{rendered}");
    }
}
