//! How a config resolves for one build, pinned by table tests written from the spec
//! (`../shared/reference/cloudbuild-spec.md` §2–§5): built-ins per context, overrides, the
//! template scanner, MUST_MATCH and ALLOW_LOOSE, dynamic substitutions, automap, which fields are
//! substituted, the checks after substitution, a step's environment, working directory and
//! dependencies, and timeouts.
//!
//! Every case goes through the public API as `builder config resolve` does: `config::load`, and
//! `plan::resolve` when loading found no error. A case expects values at JSON pointers into the
//! resolved build, or the exact error lines, rendered `FILE:LINE:COL: FIELD.PATH: message`.
//! Proptests at the end check that loading and resolving never panic.

use builder::core::config;
use builder::core::plan::{self, Context, Inputs};
use builder::core::substitute::Values;
use proptest::prelude::*;
use serde_json::{Value, json};

const FILE: &str = "cloudbuild.yaml";
const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

/// What a case expects.
enum Want {
    /// Values at JSON pointers into the resolved build (`/steps/0/args`); `null` for absent.
    At(Vec<(&'static str, Value)>),
    /// The error lines, in order (warnings are not listed).
    Errors(Vec<String>),
}

fn at(pointer: &'static str, value: Value) -> Want {
    Want::At(vec![(pointer, value)])
}

/// The arguments of the first step.
fn args(expected: &[&str]) -> Want {
    at("/steps/0/args", json!(expected))
}

fn errors(lines: &[&str]) -> Want {
    Want::Errors(lines.iter().map(|l| l.to_string()).collect())
}

fn values(pairs: &[(&str, &str)]) -> Values {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A manual build (`gcloud builds submit`) with these `--substitutions`.
fn manual(overrides: &[(&str, &str)]) -> Inputs {
    Inputs {
        overrides: values(overrides),
        ..Inputs::default()
    }
}

/// A manual build whose server or source knows these built-ins.
fn manual_with(built_ins: &[(&str, &str)], overrides: &[(&str, &str)]) -> Inputs {
    Inputs {
        built_ins: values(built_ins),
        ..manual(overrides)
    }
}

/// A trigger build with these built-ins and trigger `substitutions`.
fn trigger(built_ins: &[(&str, &str)], overrides: &[(&str, &str)]) -> Inputs {
    Inputs {
        context: Context::Trigger,
        ..manual_with(built_ins, overrides)
    }
}

/// Loads and resolves `yaml`: the build as JSON, or the rendered error lines.
fn resolve(yaml: &str, inputs: &Inputs) -> Result<Value, Vec<String>> {
    let rendered = |diagnostics: &builder::core::diag::Diagnostics| -> Vec<String> {
        diagnostics.errors().map(|d| d.render(FILE)).collect()
    };
    let loaded = config::load(yaml.as_bytes()).map_err(|d| rendered(&d))?;
    if loaded.diagnostics.has_errors() {
        return Err(rendered(&loaded.diagnostics));
    }
    match plan::resolve(&loaded.config, inputs) {
        Ok(build) => Ok(serde_json::to_value(build).expect("a resolved build serializes")),
        Err(mut diagnostics) => {
            diagnostics.locate(&loaded.tree);
            Err(rendered(&diagnostics))
        }
    }
}

fn check(yaml: &str, inputs: &Inputs, want: &Want) {
    match (resolve(yaml, inputs), want) {
        (Ok(build), Want::At(expected)) => {
            for (pointer, value) in expected {
                let got = build.pointer(pointer).unwrap_or(&Value::Null);
                assert_eq!(got, value, "{pointer} of\n{yaml}");
            }
        }
        (Err(got), Want::Errors(expected)) => assert_eq!(&got, expected, "errors of\n{yaml}"),
        (Ok(build), Want::Errors(expected)) => {
            panic!("expected {expected:#?}, resolved\n{yaml}\nto {build:#}")
        }
        (Err(got), Want::At(_)) => panic!("expected a build, got {got:#?} for\n{yaml}"),
    }
}

fn table<S: AsRef<str>>(rows: Vec<(S, Inputs, Want)>) {
    for (yaml, inputs, want) in &rows {
        check(yaml.as_ref(), inputs, want);
    }
}

// §4.1 Built-in variables.

/// Every built-in a source supplies, in one step's arguments.
const SOURCE_BUILT_INS: &str = "steps: [{name: ubuntu, args: [$BRANCH_NAME, $TAG_NAME, $REF_NAME, \
    $COMMIT_SHA, $SHORT_SHA, $REVISION_ID, $REPO_NAME, $REPO_FULL_NAME]}]";

#[test]
fn built_ins_per_context() {
    let sha7 = &SHA[..7];
    table(vec![
        // A manual build with no source: every built-in is "", and none is "unmatched".
        (SOURCE_BUILT_INS, manual(&[]), args(&[""; 8])),
        (
            "steps: [{name: ubuntu, args: ['$PROJECT_ID|$BUILD_ID|$PROJECT_NUMBER|$LOCATION|\
             $TRIGGER_NAME|$TRIGGER_BUILD_CONFIG_PATH|$SERVICE_ACCOUNT_EMAIL|$SERVICE_ACCOUNT']}]",
            manual(&[]),
            args(&["|||||||"]),
        ),
        (
            "steps: [{name: ubuntu, args: ['$PROJECT_ID', '${BUILD_ID}', '$LOCATION']}]",
            manual_with(
                &[
                    ("PROJECT_ID", "proj"),
                    ("BUILD_ID", "b-1"),
                    ("LOCATION", "eu"),
                ],
                &[],
            ),
            args(&["proj", "b-1", "eu"]),
        ),
        // A trigger build on a branch; REF_NAME, SHORT_SHA and REVISION_ID follow (§9.2).
        (
            SOURCE_BUILT_INS,
            trigger(
                &[
                    ("BRANCH_NAME", "main"),
                    ("COMMIT_SHA", SHA),
                    ("REPO_NAME", "app"),
                    ("REPO_FULL_NAME", "org/app"),
                ],
                &[],
            ),
            args(&["main", "", "main", SHA, sha7, SHA, "app", "org/app"]),
        ),
        // On a tag: BRANCH_NAME is "".
        (
            SOURCE_BUILT_INS,
            trigger(&[("TAG_NAME", "v1.2.0"), ("COMMIT_SHA", SHA)], &[]),
            args(&["", "v1.2.0", "v1.2.0", SHA, sha7, SHA, "", ""]),
        ),
        // SHORT_SHA is the first 7 characters, or the whole value when shorter.
        (
            "steps: [{name: ubuntu, args: [$SHORT_SHA]}]",
            trigger(&[("COMMIT_SHA", "abc")], &[]),
            args(&["abc"]),
        ),
        // Values the trigger supplies itself are kept.
        (
            "steps: [{name: ubuntu, args: [$SHORT_SHA, $REF_NAME]}]",
            trigger(
                &[
                    ("COMMIT_SHA", SHA),
                    ("SHORT_SHA", "short"),
                    ("BRANCH_NAME", "main"),
                    ("REF_NAME", "refs"),
                ],
                &[],
            ),
            args(&["short", "refs"]),
        ),
    ]);
}

/// `--substitutions` may override every built-in but PROJECT_ID and BUILD_ID, in manual builds
/// only; any other key without a leading `_` is refused, with the service's message (§4.1).
#[test]
fn overriding_built_ins() {
    let refused = |key: &str, at: &str| {
        format!(
            "{FILE}:{at}: substitutions: substitution key \"{key}\" does not respect format \
             \"^_[A-Z0-9_]+$\" and is not an overridable built-in substitutions"
        )
    };
    table(vec![
        (
            SOURCE_BUILT_INS,
            manual(&[("BRANCH_NAME", "dev"), ("COMMIT_SHA", SHA)]),
            args(&["dev", "", "dev", SHA, &SHA[..7], SHA, "", ""]),
        ),
        (
            SOURCE_BUILT_INS,
            manual_with(
                &[("BRANCH_NAME", "main")],
                &[
                    ("BRANCH_NAME", "dev"),
                    ("REPO_NAME", "r"),
                    ("SHORT_SHA", "s"),
                ],
            ),
            args(&["dev", "", "dev", "", "s", "", "r", ""]),
        ),
    ]);
    for key in [
        "TRIGGER_NAME",
        "COMMIT_SHA",
        "REVISION_ID",
        "SHORT_SHA",
        "REPO_NAME",
        "REPO_FULL_NAME",
        "BRANCH_NAME",
        "TAG_NAME",
        "REF_NAME",
        "TRIGGER_BUILD_CONFIG_PATH",
        "SERVICE_ACCOUNT_EMAIL",
        "SERVICE_ACCOUNT",
    ] {
        let yaml = format!("steps: [{{name: ubuntu, args: ['${key}']}}]");
        check(&yaml, &manual(&[(key, "over")]), &args(&["over"]));
    }
    let yaml = "steps: [{name: ubuntu}]";
    for key in ["PROJECT_ID", "BUILD_ID", "TEST_DATA", "_lower", "_", "HOME"] {
        let want = Want::Errors(vec![refused(key, "1:1")]);
        check(yaml, &manual(&[(key, "x")]), &want);
    }
    // A trigger's substitutions are user keys only.
    check(
        yaml,
        &trigger(&[], &[("COMMIT_SHA", SHA)]),
        &Want::Errors(vec![refused("COMMIT_SHA", "1:1")]),
    );
    // The error points at the config's `substitutions` when it has one.
    check(
        "steps: [{name: ubuntu, args: [$_A]}]\nsubstitutions: {_A: a}\n",
        &manual(&[("BUILD_ID", "x")]),
        &Want::Errors(vec![refused("BUILD_ID", "2:16")]),
    );
}

// §4.2 User-defined keys.

#[test]
fn user_keys_and_their_precedence() {
    let yaml = "steps: [{name: ubuntu, args: [$_A, $_B]}]\nsubstitutions: {_A: a, _B: b}\n";
    table(vec![
        (yaml, manual(&[]), args(&["a", "b"])),
        // `--substitutions` and a trigger's substitutions override the config's defaults.
        (yaml, manual(&[("_A", "flag")]), args(&["flag", "b"])),
        (yaml, trigger(&[], &[("_B", "trig")]), args(&["a", "trig"])),
        (yaml, manual(&[("_A", "")]), args(&["", "b"])),
        (
            "steps: [{name: ubuntu, args: [$_1VARIABLE, $__, $_NEW]}]\n\
             substitutions: {_1VARIABLE: one, __: two}\n",
            manual(&[("_NEW", "new")]),
            args(&["one", "two", "new"]),
        ),
        // Keys of the config's `substitutions` must be user keys; built-in names are refused.
        (
            "steps: [{name: ubuntu}]\nsubstitutions: {REPO_NAME: x, _lower: y, Variable: z}\n",
            manual(&[]),
            errors(&[
                "cloudbuild.yaml:2:28: substitutions.REPO_NAME: substitution key REPO_NAME does not respect format ^_[A-Z0-9_]+$",
                "cloudbuild.yaml:2:39: substitutions._lower: substitution key _lower does not respect format ^_[A-Z0-9_]+$",
                "cloudbuild.yaml:2:52: substitutions.Variable: substitution key Variable does not respect format ^_[A-Z0-9_]+$",
            ]),
        ),
    ]);
}

// §4.3 Template syntax.

/// One step's single argument `template`, with every key the rows use defined, loose so that the
/// rows need not use all of them.
fn scan(template: &str) -> String {
    format!(
        "steps: [{{name: ubuntu, args: ['{template}']}}]\n\
         substitutions: {{_FOO: foo, _VAR: var, _VAR_FOO: varfoo}}\n\
         options: {{substitutionOption: ALLOW_LOOSE}}\n"
    )
}

#[test]
fn scanning() {
    for (template, expected) in [
        // `$$` is a literal `$` that never starts a reference.
        ("$$_FOO", "$_FOO"),
        ("$$$_FOO", "$foo"),
        ("$$$$_VAR", "$$_VAR"),
        ("$${_VAR}_FOO", "${_VAR}_FOO"),
        ("cost: $$5", "cost: $5"),
        // `$KEY` takes the longest run of `[A-Z0-9_]`; `${KEY}` ends at its brace.
        ("$_VAR_FOO", "varfoo"),
        ("$_VARfoo", "varfoo"),
        ("${_VAR}_FOO", "var_FOO"),
        ("${_VAR}${_FOO}", "varfoo"),
        ("$_VAR-$_FOO.$_VAR", "var-foo.var"),
        ("$_VAR}x", "var}x"),
        // A `$` that does not start a valid reference stays literal.
        (
            "$foo ${foo} $1 $@ $- ${_VAR $",
            "$foo ${foo} $1 $@ $- ${_VAR $",
        ),
        // Bash operators are text without dynamic substitutions.
        ("${_VAR:-x} ${_VAR,,}", "${_VAR:-x} ${_VAR,,}"),
        // Loose: an undefined user key is "".
        ("[$_UNDEFINED]", "[]"),
    ] {
        check(&scan(template), &manual(&[]), &args(&[expected]));
    }
}

#[test]
fn not_a_valid_built_in() {
    let line = |at: &str, key: &str| {
        format!(
            "{FILE}:{at}: steps[0].args[0]: key in the template \"{key}\" is not a valid built-in \
             substitution; write $${key} for a shell or environment variable"
        )
    };
    // The message, its hint and its location, in a multi-line file.
    check(
        "steps:\n- name: bash\n  args: ['-c', 'echo $HOME']\n",
        &manual(&[]),
        &errors(&[
            "cloudbuild.yaml:3:16: steps[0].args[1]: key in the template \"HOME\" is not a valid \
             built-in substitution; write $$HOME for a shell or environment variable",
        ]),
    );
    for (template, key) in [
        ("${PATH}", "PATH"),
        ("$BAR}FOO", "BAR"),
        // Greedy: `BRANCH_NAME_` is not `BRANCH_NAME` followed by `_`.
        ("$BRANCH_NAME_$COMMIT_SHA", "BRANCH_NAME_"),
        // The step's output directory is an environment variable, not a substitution.
        ("$BUILDER_OUTPUT/output", "BUILDER_OUTPUT"),
    ] {
        let want = Want::Errors(vec![line("1:31", key)]);
        check(&scan(template), &manual(&[]), &want);
        // An error in every mode, triggers included.
        check(&scan(template), &trigger(&[], &[]), &want);
    }
}

#[test]
fn values_are_inserted_verbatim_without_dynamic_substitutions() {
    table(vec![
        (
            "steps: [{name: ubuntu, args: [$_A]}]\nsubstitutions: {_A: '${PROJECT_ID}/$_B'}\n\
             options: {substitutionOption: ALLOW_LOOSE}\n",
            manual_with(&[("PROJECT_ID", "p")], &[]),
            args(&["${PROJECT_ID}/$_B"]),
        ),
        // So `$_B` in `_A`'s value is not a use of `_B`.
        (
            "steps: [{name: ubuntu, args: [$_A]}]\nsubstitutions: {_A: '$_B', _B: b}\n",
            manual(&[]),
            errors(&[
                "cloudbuild.yaml:2:32: substitutions._B: key \"_B\" in the substitution data is \
                 not matched in the template (remove it, or set options.substitutionOption: ALLOW_LOOSE)",
            ]),
        ),
    ]);
}

// §4.4 Classification, MUST_MATCH and ALLOW_LOOSE.

#[test]
fn must_match_and_allow_loose() {
    let undefined = "cloudbuild.yaml:1:31: steps[0].args[0]: key in the template \"_X\" is not \
        matched in the substitution data (define it under `substitutions`, pass --substitutions \
        _X=VALUE, or set options.substitutionOption: ALLOW_LOOSE)";
    let unused = |at: &str, key: &str| {
        format!(
            "{FILE}:{at}: substitutions.{key}: key \"{key}\" in the substitution data is not \
             matched in the template (remove it, or set options.substitutionOption: ALLOW_LOOSE)"
        )
    };
    let uses_x = "steps: [{name: ubuntu, args: ['$_X']}]\n";
    let defines_ab = "steps: [{name: ubuntu}]\nsubstitutions: {_A: a, _B: b}\n";
    table(vec![
        (uses_x, manual(&[]), errors(&[undefined])),
        (
            defines_ab,
            manual(&[]),
            // Cloud Build's one message for them all, its parts joined by `;`.
            errors(&[
                "cloudbuild.yaml:2:16: substitutions: key \"_A\" in the substitution data is \
                 not matched in the template;key \"_B\" in the substitution data is not matched \
                 in the template (remove them, or set options.substitutionOption: ALLOW_LOOSE)",
            ]),
        ),
        // A key only given with --substitutions must be used too.
        (
            "steps: [{name: ubuntu}]\n",
            manual(&[("_FLAG", "x")]),
            Want::Errors(vec![unused("1:1", "_FLAG")]),
        ),
        // An escaped occurrence is not a use.
        (
            "steps: [{name: ubuntu, args: ['$$_X']}]\nsubstitutions: {_X: x}\n",
            manual(&[]),
            Want::Errors(vec![unused("2:21", "_X")]),
        ),
        // ALLOW_LOOSE, in either spelling: undefined keys are "", unused keys are fine.
        (
            "steps: [{name: ubuntu, args: ['[$_X]']}]\noptions: {substitutionOption: ALLOW_LOOSE}\n",
            manual(&[]),
            args(&["[]"]),
        ),
        (
            "steps: [{name: ubuntu}]\nsubstitutions: {_A: a}\noptions: {substitution_option: ALLOW_LOOSE}\n",
            manual(&[]),
            at("/options/substitutionOption", json!("ALLOW_LOOSE")),
        ),
        // A trigger build is loose and dynamic whatever the config says.
        (
            "steps: [{name: ubuntu, args: ['[$_X]', '${_A^^}']}]\nsubstitutions: {_A: a, _B: b}\n\
             options: {substitutionOption: MUST_MATCH, dynamicSubstitutions: false}\n",
            trigger(&[], &[]),
            Want::At(vec![
                ("/steps/0/args", json!(["[]", "A"])),
                (
                    "/options",
                    json!({"substitutionOption": "ALLOW_LOOSE", "dynamicSubstitutions": true,
                           "automapSubstitutions": false}),
                ),
            ]),
        ),
    ]);
}

/// Names, images and tags are checked once substituted (§2.5, §4.4 last point, §6).
#[test]
fn checks_after_substitution() {
    let on_branch = || trigger(&[("BRANCH_NAME", "feature/x")], &[]);
    table(vec![
        (
            "steps: [{name: 'gcr.io/p/app:$BRANCH_NAME'}]\n",
            on_branch(),
            errors(&[
                "cloudbuild.yaml:1:16: steps[0].name: invalid build step name \
                 \"gcr.io/p/app:feature/x\" (not an image reference: \
                 [HOST[:PORT]/]PATH[:TAG][@DIGEST])",
            ]),
        ),
        (
            "steps: [{name: ubuntu}]\nimages: [ok, 'gcr.io/p/app:$BRANCH_NAME']\n",
            on_branch(),
            errors(&[
                "cloudbuild.yaml:2:14: images[1]: invalid image name \"gcr.io/p/app:feature/x\"",
            ]),
        ),
        (
            "steps: [{name: ubuntu}]\nartifacts: {images: ['gcr.io/p/app:$BRANCH_NAME']}\n",
            on_branch(),
            errors(&[
                "cloudbuild.yaml:2:22: artifacts.images[0]: invalid image name \"gcr.io/p/app:feature/x\"",
            ]),
        ),
        (
            "steps: [{name: '$_IMAGE'}]\nsubstitutions: {_IMAGE: gcr.io/p/App}\n",
            manual(&[]),
            errors(&[
                "cloudbuild.yaml:1:16: steps[0].name: invalid build step name \"gcr.io/p/App\" \
                 (image names are lower case; only the tag may have upper case letters)",
            ]),
        ),
        (
            "steps: [{name: ubuntu}]\ntags: [ci, $BRANCH_NAME]\n",
            on_branch(),
            errors(&[
                r#"cloudbuild.yaml:2:12: tags[1]: invalid build tag "feature/x": must match format "^[\w][\w.-]{0,127}$""#,
            ]),
        ),
        // Empty tags are dropped and duplicates removed, the first kept.
        (
            "steps: [{name: ubuntu}]\ntags: [$_EMPTY, ci, $_CI, $TAG_NAME, v1, ci]\n\
             substitutions: {_EMPTY: '', _CI: ci}\n",
            manual(&[]),
            at("/tags", json!(["ci", "v1"])),
        ),
        // `images` comes from `artifacts.images` when only that is given.
        (
            "steps: [{name: ubuntu}]\nartifacts: {images: ['gcr.io/p/app:$SHORT_SHA']}\n",
            trigger(&[("COMMIT_SHA", SHA)], &[]),
            at("/images", json!(["gcr.io/p/app:0123456"])),
        ),
    ]);
}

// §4.5 Which fields get substituted.

#[test]
fn substituted_fields() {
    // One key per field, under MUST_MATCH: resolving without "not matched" errors shows that
    // every field is scanned and counts as a use.
    let yaml = "\
steps:
- name: 'gcr.io/p/$_NAME'
  args: ['$_ARG']
  env: ['E=$_ENV']
  dir: '$_DIR'
  entrypoint: '$_EP'
  secretEnv: [PW]
images: ['gcr.io/p/$_IMG']
tags: ['$_TAG']
logsBucket: 'gs://$_BUCKET'
serviceAccount: 'projects/p/serviceAccounts/$_SA'
options:
  env: ['G=$_GENV']
  pool: {name: 'projects/p/locations/l/workerPools/$_POOL'}
availableSecrets:
  secretManager: [{versionName: 'projects/$PROJECT_ID/secrets/$_SECRET/versions/1', env: PW}]
artifacts:
  objects: {location: 'gs://$_LOC', paths: ['$_PATH/*']}
  mavenArtifacts: [{repository: 'https://$_MVN', path: a.jar, artifactId: a, groupId: g, version: '1'}]
  pythonPackages: [{repository: 'https://$_PY', paths: [dist/*]}]
substitutions:
  {_NAME: n, _ARG: a, _ENV: e, _DIR: d, _EP: ep, _IMG: i, _TAG: t, _BUCKET: b, _SA: sa,
   _GENV: g, _POOL: pool, _SECRET: s, _LOC: loc, _PATH: out, _MVN: m, _PY: py}
";
    let inputs = manual_with(&[("PROJECT_ID", "proj")], &[]);
    check(
        yaml,
        &inputs,
        &Want::At(vec![
            ("/steps/0/name", json!("gcr.io/p/n")),
            ("/steps/0/args", json!(["a"])),
            (
                "/steps/0/env",
                json!([
                    "BUILDER_OUTPUT=/builder/outputs",
                    "E=e",
                    "G=g",
                    "HOME=/builder/home"
                ]),
            ),
            ("/steps/0/dir", json!("/workspace/d")),
            ("/steps/0/entrypoint", json!("ep")),
            ("/images", json!(["gcr.io/p/i"])),
            ("/tags", json!(["t"])),
            (
                "/secrets",
                json!([{"env": "PW", "versionName": "projects/proj/secrets/s/versions/1"}]),
            ),
            (
                "/artifacts",
                json!({"objectsLocation": "gs://loc", "objectsPaths": ["out/*"]}),
            ),
        ]),
    );
    // Fields kept only for their uses are still checked: each gives its own error.
    for (field, value, at) in [
        ("logsBucket", "gs://$FOO", "2:13"),
        ("serviceAccount", "$FOO", "2:17"),
    ] {
        let yaml = format!("steps: [{{name: ubuntu}}]\n{field}: '{value}'\n");
        let line = format!(
            "{FILE}:{at}: {field}: key in the template \"FOO\" is not a valid built-in \
             substitution; write $$FOO for a shell or environment variable"
        );
        check(&yaml, &manual(&[]), &Want::Errors(vec![line]));
    }
}

#[test]
fn fields_not_substituted() {
    let yaml = "\
steps:
- {name: ubuntu, id: 'id-$_S', script: 'echo $_S $HOME $$X'}
- {name: ubuntu, waitFor: ['id-$_S']}
substitutions: {_S: s}
";
    // `_S` appears only in `script`, `id` and `waitFor`: unused; `$HOME` in a script is fine.
    check(
        yaml,
        &manual(&[]),
        &errors(&[
            "cloudbuild.yaml:4:21: substitutions._S: key \"_S\" in the substitution data is not \
             matched in the template (remove it, or set options.substitutionOption: ALLOW_LOOSE)",
        ]),
    );
    check(
        &format!("{yaml}options: {{substitutionOption: ALLOW_LOOSE}}\n"),
        &manual(&[]),
        &Want::At(vec![
            ("/steps/0/id", json!("id-$_S")),
            ("/steps/0/script", json!("echo $_S $HOME $$X")),
            ("/steps/1/dependencies", json!([0])),
        ]),
    );
}

// §4.6 Dynamic substitutions.

/// Each bash operator, on `_V` = `Hello/World.tar.gz`, `_L` = `hello world`, `_E` = `""`, `_U`
/// undefined and the built-in BUILD_ID.
const OPERATORS: &[(&str, &str)] = &[
    ("${_V}", "Hello/World.tar.gz"),
    ("${_V:0:5}", "Hello"),
    ("${_V:6}", "World.tar.gz"),
    ("${_V: -6}", "tar.gz"),
    ("${_V:6:-7}", "World"),
    ("${BUILD_ID:0:8}", "0123abcd"),
    ("${_V#*/}", "World.tar.gz"),
    ("${_V##*.}", "gz"),
    ("${_V%.*}", "Hello/World.tar"),
    ("${_V%%.*}", "Hello/World"),
    ("${_V/o/0}", "Hell0/World.tar.gz"),
    ("${_V//o/0}", "Hell0/W0rld.tar.gz"),
    ("${_V/#Hello/Bye}", "Bye/World.tar.gz"),
    ("${_V/%gz/bz2}", "Hello/World.tar.bz2"),
    (r"${_V//\//-}", "Hello-World.tar.gz"),
    ("${_L^}", "Hello world"),
    ("${_L^^}", "HELLO WORLD"),
    ("${_V,}", "hello/World.tar.gz"),
    ("${_V,,}", "hello/world.tar.gz"),
    ("${#_V}", "18"),
    ("${_U:-def}", "def"),
    ("${_U-def}", "def"),
    ("${_E:-def}", "def"),
    ("${_E-def}", ""),
    ("${_V:+alt}", "alt"),
    ("${_U:+alt}", ""),
    ("${_U:-${_V%%/*}}", "Hello"),
    ("v$$1-${_L// /_}", "v$1-hello_world"),
];

fn dynamic(args: &str, substitutions: &str) -> String {
    format!(
        "steps: [{{name: ubuntu, args: ['{args}']}}]\n\
         substitutions: {{_V: Hello/World.tar.gz, _L: hello world, _E: '', {substitutions}}}\n\
         options: {{dynamicSubstitutions: true, substitutionOption: ALLOW_LOOSE}}\n"
    )
}

#[test]
fn dynamic_operators_in_args_and_in_values() {
    let inputs = manual_with(&[("BUILD_ID", "0123abcd-ef")], &[]);
    for (template, expected) in OPERATORS {
        check(&dynamic(template, "_X: x"), &inputs, &args(&[expected]));
        // The same expansion in a value that another template refers to.
        let value = format!("_X: '{template}'");
        check(
            &dynamic("[$_X]", &value),
            &inputs,
            &args(&[&format!("[{expected}]")]),
        );
    }
}

#[test]
fn dynamic_values_refer_to_each_other() {
    let on = "options: {dynamicSubstitutions: true}\n";
    let inputs = manual_with(&[("PROJECT_ID", "proj"), ("BUILD_ID", "0123abcd-ef")], &[]);
    table(vec![
        // A chain, under MUST_MATCH: `_SHORT`, used only by `_VM`, counts as used.
        (
            format!(
                "steps: [{{name: ubuntu, args: [$_VM, $_IMAGE]}}]\n{on}substitutions:\n  \
                 _VM: 'vm-${{_SHORT}}'\n  _SHORT: '${{BUILD_ID:0:8}}'\n  \
                 _IMAGE: 'gcr.io/${{PROJECT_ID}}/test-image'\n"
            ),
            inputs.clone(),
            args(&["vm-0123abcd", "gcr.io/proj/test-image"]),
        ),
        // An override is seen by the values that refer to it; `$$` is a `$` in a value.
        (
            format!(
                "steps: [{{name: ubuntu, args: [$_B]}}]\n{on}substitutions: {{_A: a, _B: '$$HOME/${{_A^^}}'}}\n"
            ),
            manual(&[("_A", "over")]),
            args(&["$HOME/OVER"]),
        ),
        (
            format!(
                "steps: [{{name: ubuntu, args: [$_A]}}]\n{on}substitutions: {{_A: '$_B', _B: '${{_A}}'}}\n"
            ),
            manual(&[]),
            errors(&[
                "cloudbuild.yaml:3:16: substitutions: cycle in substitutions: _A -> _B -> _A",
            ]),
        ),
        (
            format!(
                "steps: [{{name: ubuntu, args: [$_A]}}]\n{on}substitutions: {{_A: '${{_A^^}}'}}\n"
            ),
            manual(&[]),
            errors(&["cloudbuild.yaml:3:16: substitutions: cycle in substitutions: _A -> _A"]),
        ),
        (
            format!("steps: [{{name: ubuntu, args: [$_A]}}]\n{on}substitutions: {{_A: '${{_B'}}\n"),
            manual(&[]),
            errors(&[
                "cloudbuild.yaml:3:16: substitutions: invalid value for substitution _A: \
                      unterminated `${_B`: missing `}` (at byte 0)",
            ]),
        ),
        (
            format!("steps: [{{name: ubuntu, args: ['${{_A:}}']}}]\n{on}"),
            manual(&[]),
            errors(&[
                "cloudbuild.yaml:1:31: steps[0].args[0]: missing substring offset in `${_A:}` (at byte 4)",
            ]),
        ),
    ]);
}

// §4.7 automapSubstitutions, and §3 a step's environment.

#[test]
fn automap_and_environment() {
    /// The environment a step gets: every entry applied in order, a later one winning.
    fn env(entries: &[&str]) -> Value {
        let mut env = std::collections::BTreeMap::new();
        for entry in ["HOME=/builder/home", "BUILDER_OUTPUT=/builder/outputs"]
            .iter()
            .chain(entries)
        {
            let (key, value) = entry.split_once('=').expect("KEY=VALUE");
            env.insert(key, value);
        }
        json!(
            env.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
        )
    }
    // Every built-in of §4.1, as automap exposes them here.
    const AUTOMAPPED: [&str; 16] = [
        "PROJECT_ID=proj",
        "BUILD_ID=",
        "PROJECT_NUMBER=",
        "LOCATION=",
        "TRIGGER_NAME=",
        "COMMIT_SHA=",
        "REVISION_ID=",
        "SHORT_SHA=",
        "REPO_NAME=",
        "REPO_FULL_NAME=",
        "BRANCH_NAME=",
        "TAG_NAME=",
        "REF_NAME=",
        "TRIGGER_BUILD_CONFIG_PATH=",
        "SERVICE_ACCOUNT_EMAIL=",
        "SERVICE_ACCOUNT=",
    ];
    let automapped = |more: &[&str]| env(&[&AUTOMAPPED[..], more].concat());
    let inputs = manual_with(&[("PROJECT_ID", "proj")], &[]);
    table(vec![
        // Build level: every substitution in every step, unless the step says no; a key used
        // only through automap (in a script) is not "unmatched" under MUST_MATCH.
        (
            "steps: [{name: ubuntu, script: 'echo $_USER'}, {name: ubuntu, automapSubstitutions: false}]\n\
             substitutions: {_USER: me}\noptions: {automapSubstitutions: true}\n",
            inputs.clone(),
            Want::At(vec![
                ("/steps/0/env", automapped(&["_USER=me"])),
                ("/steps/1/env", env(&[])),
                ("/options/automapSubstitutions", json!(true)),
            ]),
        ),
        // Step level alone.
        (
            "steps: [{name: ubuntu, script: 'echo $_USER', automap_substitutions: true}, {name: ubuntu}]\n\
             substitutions: {_USER: me}\n",
            inputs.clone(),
            Want::At(vec![
                ("/steps/0/env", automapped(&["_USER=me"])),
                ("/steps/1/env", env(&[])),
                ("/options/automapSubstitutions", json!(false)),
            ]),
        ),
        // Without automap a use in a script does not count.
        (
            "steps: [{name: ubuntu, script: 'echo $_USER'}]\nsubstitutions: {_USER: me}\n",
            inputs.clone(),
            errors(&[
                "cloudbuild.yaml:2:24: substitutions._USER: key \"_USER\" in the substitution \
                      data is not matched in the template (remove it, or set \
                      options.substitutionOption: ALLOW_LOOSE)",
            ]),
        ),
        // Precedence: HOME and BUILDER_OUTPUT < automap < options.env < step env.
        (
            "steps:\n- {name: ubuntu, env: ['_X=step', 'HOME=/root', 'S=1']}\n- {name: ubuntu}\n\
             substitutions: {_X: auto}\n\
             options: {automapSubstitutions: true, env: ['_X=global', 'BUILDER_OUTPUT=/out', 'G=a=b']}\n",
            inputs.clone(),
            Want::At(vec![
                (
                    "/steps/0/env",
                    automapped(&[
                        "_X=auto",
                        "_X=global",
                        "BUILDER_OUTPUT=/out",
                        "G=a=b",
                        "_X=step",
                        "HOME=/root",
                        "S=1",
                    ]),
                ),
                (
                    "/steps/1/env",
                    automapped(&["_X=auto", "_X=global", "BUILDER_OUTPUT=/out", "G=a=b"]),
                ),
            ]),
        ),
        // No automap: only HOME, BUILDER_OUTPUT, options.env and the step's env, sorted by key.
        (
            "steps: [{name: ubuntu, env: ['B=$_X', 'A=1']}]\nsubstitutions: {_X: x}\n\
             options: {env: ['B=global', 'C=$PROJECT_ID']}\n",
            inputs,
            at("/steps/0/env", env(&["B=global", "C=proj", "B=x", "A=1"])),
        ),
    ]);
}

// §2.2 `dir`.

#[test]
fn working_directory() {
    let leaves = |dir: &str| format!("{FILE}:1:29: steps[0].dir: dir {dir:?} leaves /workspace");
    for (dir, expected) in [
        ("''", Ok("/workspace")),
        (".", Ok("/workspace")),
        ("app", Ok("/workspace/app")),
        ("foo/bar/../baz", Ok("/workspace/foo/baz")),
        ("./a//b/", Ok("/workspace/a/b")),
        ("/abs/dir", Ok("/abs/dir")),
        ("/abs/../etc", Ok("/etc")),
        ("$_D", Ok("/workspace/sub")),
        ("..", Err("..")),
        ("a/../../b", Err("a/../../b")),
        ("$_UP", Err("../x")),
    ] {
        let yaml = format!(
            "steps: [{{name: ubuntu, dir: {dir}}}]\nsubstitutions: {{_D: sub, _UP: ../x}}\n\
             options: {{substitutionOption: ALLOW_LOOSE}}\n"
        );
        let want = match expected {
            Ok(path) => at("/steps/0/dir", json!(path)),
            Err(dir) => Want::Errors(vec![leaves(dir)]),
        };
        check(&yaml, &manual(&[]), &want);
    }
}

// §5 Step ordering.

#[test]
fn dependencies() {
    // The dependencies of every step, in order.
    let check_deps = |yaml: &str, expected: Value| {
        let build = resolve(yaml, &manual(&[])).unwrap_or_else(|e| panic!("{e:#?}"));
        let steps = build["steps"].as_array().expect("steps");
        let got: Vec<&Value> = steps.iter().map(|s| &s["dependencies"]).collect();
        assert_eq!(json!(got), expected, "{yaml}");
    };
    // No waitFor: every earlier step, so the build is serial.
    check_deps(
        "steps: [{name: a}, {name: b}, {name: c}]",
        json!([[], [0], [0, 1]]),
    );
    // `-` alone: starts with the build; `-` beside ids is ignored; duplicates count once.
    check_deps(
        "steps: [{name: a, id: a}, {name: b, waitFor: ['-']}, {name: c, waitFor: ['-', a]}, \
         {name: d, wait_for: [a, a]}]",
        json!([[], [], [0], [0]]),
    );
    // Fan-out and fan-in; a later step without waitFor waits for all.
    check_deps(
        "steps:\n- {name: a, id: a}\n- {name: b, id: b, waitFor: ['-']}\n\
         - {name: c, id: c, waitFor: [a, b]}\n- {name: d, waitFor: [b]}\n- {name: e}\n",
        json!([[], [], [0, 1], [1], [0, 1, 2, 3]]),
    );
    table(vec![
        (
            "steps: [{name: a, id: build}, {name: b, waitFor: [buld]}]",
            manual(&[]),
            errors(&[
                "cloudbuild.yaml:1:51: steps[1].waitFor[0]: build step #1 depends on \"buld\", \
                 which has not been defined; did you mean \"build\"?",
            ]),
        ),
        (
            "steps: [{name: a, waitFor: [later]}, {name: b, id: later}]",
            manual(&[]),
            errors(&[
                "cloudbuild.yaml:1:29: steps[0].waitFor[0]: build step #0 depends on \"later\", \
                 which has not been defined (it is the id of a later step; a step can only wait \
                 for earlier steps)",
            ]),
        ),
    ]);
}

// §2.1 and §2.2 timeouts.

#[test]
fn timeouts() {
    table(vec![
        (
            "steps: [{name: a}]",
            manual(&[]),
            at("/timeout", json!(3600.0)),
        ),
        (
            "steps: [{name: a}]\ntimeout: 600s",
            manual(&[]),
            at("/timeout", json!(600.0)),
        ),
        (
            "steps: [{name: a}]\ntimeout: 3.5s",
            manual(&[]),
            at("/timeout", json!(3.5)),
        ),
        (
            "steps: [{name: a}]\ntimeout: 45m",
            manual(&[]),
            at("/timeout", json!(2700.0)),
        ),
        (
            "steps: [{name: a, timeout: 30s}, {name: b}]\ntimeout: 24h",
            manual(&[]),
            Want::At(vec![
                ("/timeout", json!(86400.0)),
                ("/steps/0/timeout", json!(30.0)),
                ("/steps/1/timeout", Value::Null),
            ]),
        ),
        (
            "steps: [{name: a, timeout: 2h}]",
            manual(&[]),
            errors(&[
                "cloudbuild.yaml:1:28: steps[0].timeout: invalid .timeout in build step #0: \
                 build step timeout 2h0m0s must be <= build timeout 1h0m0s (the default build \
                 timeout; set the build's `timeout`)",
            ]),
        ),
        (
            "steps: [{name: a}]\ntimeout: 86401s",
            manual(&[]),
            errors(&[
                "cloudbuild.yaml:2:10: timeout: timeout exceeds the timeout limit of 24h0m0s",
            ]),
        ),
    ]);
}

// Loading and resolving never panic.

/// Text made of YAML punctuation, config keys and substitution-shaped values.
fn yamlish() -> impl Strategy<Value = String> {
    let tokens = prop::sample::select(vec![
        "steps",
        "name",
        "args",
        "env",
        "dir",
        "id",
        "waitFor",
        "wait_for",
        "script",
        "options",
        "substitutions",
        "images",
        "tags",
        "timeout",
        "automapSubstitutions",
        ":",
        ": ",
        "- ",
        "-",
        "\n",
        "\n  ",
        "\n    ",
        " ",
        "\t",
        "[",
        "]",
        "{",
        "}",
        ",",
        "'",
        "\"",
        "&a ",
        "*a",
        "<<: ",
        "!!str ",
        "? ",
        "|",
        ">",
        "#",
        "---",
        "...",
        "~",
        "null",
        "true",
        "1",
        "600s",
        "ubuntu",
        "$_X",
        "${_X}",
        "$$",
        "${_X:-d}",
        "_X",
        "$HOME",
        "\\",
        "%",
        "@",
        "é",
        "\u{feff}",
        "\r\n",
        "\0",
    ]);
    prop::collection::vec(tokens, 0..64).prop_map(|t| t.concat())
}

/// A string for a templated field.
fn template() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "",
        "x",
        "ubuntu",
        "Bad",
        "$_V",
        "${_V}",
        "$$_V",
        "${_V:-d}",
        "${_V:1:2}",
        "${_A//a/b}",
        "$HOME",
        "${_V",
        "${#_V}",
        "$_A$_V",
        "${_V^^}",
        "${BUILD_ID:0:8}",
        "é$_V",
        "${_V:}",
        "../$_D",
        "/abs",
        "a=$_V",
        "gcr.io/p/app:$BRANCH_NAME",
        "$_V/x",
        "${_A:-${_V,,}}",
    ])
    .prop_map(String::from)
}

fn step() -> impl Strategy<Value = Value> {
    let id = prop::sample::select(vec!["", "a", "b", "c", "-"]);
    let waits = prop::collection::vec(prop::sample::select(vec!["-", "a", "b", "c", "zz"]), 0..3);
    (
        template(),
        prop::collection::vec(template(), 0..3),
        prop::collection::vec(template(), 0..2),
        prop::option::of(template()),
        id,
        waits,
        prop::option::of(any::<bool>()),
        prop::option::of(prop::sample::select(vec!["30s", "2h", "soon"])),
        prop::option::of(template()),
    )
        .prop_map(
            |(name, args, env, dir, id, waits, automap, timeout, script)| {
                let mut step = json!({"name": name, "args": args, "env": env});
                let fields = [
                    ("dir", dir.map(Value::from)),
                    ("id", (!id.is_empty()).then(|| Value::from(id))),
                    ("waitFor", (!waits.is_empty()).then(|| json!(waits))),
                    ("automapSubstitutions", automap.map(Value::from)),
                    ("timeout", timeout.map(Value::from)),
                    ("script", script.map(Value::from)),
                ];
                for (key, value) in fields {
                    if let Some(value) = value {
                        step[key] = value;
                    }
                }
                step
            },
        )
}

/// A config from a small grammar, as JSON text (JSON is YAML).
fn grammar() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec!["_V", "_A", "_D", "_UNUSED", "BRANCH_NAME", "_bad"]);
    (
        prop::collection::vec(step(), 0..4),
        prop::collection::btree_map(key, template(), 0..4),
        prop::sample::select(vec!["MUST_MATCH", "ALLOW_LOOSE"]),
        any::<(bool, bool)>(),
        prop::collection::vec(template(), 0..2),
        prop::collection::vec(template(), 0..3),
        prop::collection::vec(template(), 0..2),
        prop::option::of(prop::sample::select(vec!["600s", "1h", "25h"])),
    )
        .prop_map(
            |(steps, substitutions, option, (dynamic, automap), env, tags, images, timeout)| {
                let mut config = json!({
                    "steps": steps,
                    "substitutions": substitutions,
                    "options": {"substitutionOption": option, "dynamicSubstitutions": dynamic,
                                "automapSubstitutions": automap, "env": env},
                    "tags": tags,
                    "images": images,
                });
                if let Some(timeout) = timeout {
                    config["timeout"] = json!(timeout);
                }
                config.to_string()
            },
        )
}

fn inputs() -> impl Strategy<Value = Inputs> {
    let key = prop::sample::select(vec![
        "_V",
        "_A",
        "_X",
        "PROJECT_ID",
        "COMMIT_SHA",
        "BRANCH_NAME",
        "TAG_NAME",
    ]);
    let pairs =
        || prop::collection::btree_map(key.clone().prop_map(String::from), template(), 0..3);
    (any::<bool>(), pairs(), pairs()).prop_map(|(is_trigger, built_ins, overrides)| Inputs {
        context: if is_trigger {
            Context::Trigger
        } else {
            Context::Manual
        },
        built_ins,
        overrides,
        ..Inputs::default()
    })
}

/// Loads, resolves whatever loaded (valid or not) and renders every diagnostic.
fn load_and_resolve(bytes: &[u8], inputs: &Inputs) -> Option<plan::ResolvedBuild> {
    let loaded = match config::load(bytes) {
        Ok(loaded) => loaded,
        Err(diagnostics) => {
            assert!(diagnostics.has_errors());
            return None;
        }
    };
    loaded.diagnostics.render(FILE);
    plan::check_templates(&loaded.config).render(FILE);
    match plan::resolve(&loaded.config, inputs) {
        Ok(build) => Some(build),
        Err(mut diagnostics) => {
            assert!(diagnostics.has_errors());
            diagnostics.locate(&loaded.tree);
            diagnostics.render(FILE);
            None
        }
    }
}

proptest! {
    #[test]
    fn loading_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        load_and_resolve(&bytes, &Inputs::default());
    }

    #[test]
    fn loading_yamlish_text_never_panics(text in yamlish(), inputs in inputs()) {
        load_and_resolve(text.as_bytes(), &inputs);
    }

    #[test]
    fn resolving_generated_configs_never_panics(config in grammar(), inputs in inputs()) {
        prop_assert!(config::load(config.as_bytes()).is_ok(), "JSON always loads: {config}");
        if let Some(build) = load_and_resolve(config.as_bytes(), &inputs) {
            for (i, step) in build.steps.iter().enumerate() {
                prop_assert!(step.dependencies.iter().all(|&d| d < i));
                prop_assert!(step.dir.starts_with('/'));
                prop_assert!(step.env.iter().any(|e| e.starts_with("HOME=")));
                prop_assert!(step.env.is_sorted_by_key(|e| e.split_once('=').map(|(k, _)| k.to_string())));
            }
        }
    }
}

// builder's extension: `templates:`.

#[test]
fn templates_resolve_with_substitutions_and_their_mistakes_are_located() {
    let ok = "steps: [{name: ubuntu}]\ntemplates:\n- paths: ['dist/*.yaml']\n  \
              repository: localhost:5000/ml/$_NAME\n  tags: [latest, $SHORT_SHA]\n  \
              annotations: {commit: $COMMIT_SHA}\n";
    let built_ins = [("COMMIT_SHA", SHA), ("SHORT_SHA", "0123456")];
    check(
        ok,
        &manual_with(&built_ins, &[("_NAME", "pipeline")]),
        &Want::At(vec![
            (
                "/templates/0/repository",
                json!("localhost:5000/ml/pipeline"),
            ),
            ("/templates/0/tags", json!(["latest", "0123456"])),
            ("/templates/0/annotations/commit", json!(SHA)),
            (
                "/templates/0/versionRegex",
                json!(r"_v(\d+\.\d+\.\d+)\.(?:ya?ml|json)$"),
            ),
            ("/templates/0/maxSizeBytes", json!(16 << 20)),
            ("/templates/0/allowVersionOverwrite", json!(false)),
        ]),
    );
    table(vec![
        (
            "steps: [{name: ubuntu}]\ntemplates:\n- versionRegex: '_v.*'\n  maxSizeBytes: 0\n",
            manual(&[]),
            errors(&[
                "cloudbuild.yaml:3:3: templates[0].paths: list the template files to push, as globs relative to /workspace",
                "cloudbuild.yaml:3:3: templates[0].repository: name the repository to push to, e.g. localhost:5000/ml/training-pipeline",
                "cloudbuild.yaml:3:17: templates[0].versionRegex: \"_v.*\" has no capture group; put the version in parentheses, e.g. _v(\\d+\\.\\d+\\.\\d+)\\.yaml$",
                "cloudbuild.yaml:4:17: templates[0].maxSizeBytes: must be a positive number of bytes",
            ]),
        ),
        (
            "steps: [{name: ubuntu}]\ntemplates:\n- paths: ['../x', '/abs/*.yaml', 'a/[b']\n  \
             repository: $_REPO\n  tags: ['bad tag']\n",
            manual(&[("_REPO", "localhost:5000/ml/t:1.0")]),
            errors(&[
                "cloudbuild.yaml:3:11: templates[0].paths[0]: \"../x\" leaves /workspace; write it relative to /workspace",
                "cloudbuild.yaml:3:19: templates[0].paths[1]: \"/abs/*.yaml\" leaves /workspace; write it relative to /workspace",
                "cloudbuild.yaml:3:34: templates[0].paths[2]: glob \"a/[b\" has an unclosed `[`",
                "cloudbuild.yaml:4:15: templates[0].repository: \"localhost:5000/ml/t:1.0\" names a tag or digest; name the repository only (versions come from the file names, other tags from `tags`)",
                "cloudbuild.yaml:5:10: templates[0].tags[0]: invalid tag \"bad tag\": must match ^[\\w][\\w.-]{0,127}$",
            ]),
        ),
    ]);
}
