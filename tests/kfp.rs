//! The KFP registry API of `builder serve`, driven by Kubeflow's own client: the real `kfp`
//! package from PyPI, in a venv this test makes once (cached in the target directory), against a
//! real server over the registry `scripts/dev-env.sh` starts. Packages compiled by the SDK's own
//! compiler; a template pushed by a real build (`templates:`) read back through the SDK.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use common::server::{Server, TOKEN};
use common::{REGISTRY, build_id, builder, source, submit};
use tempfile::TempDir;

mod common;

/// The kfp release the example workflow pins (`configs/pipeline-templates/requirements.txt`).
const KFP: &str = "kfp~=2.17.0";

/// Python with `kfp` installed: a venv under the target directory, made on first use.
fn python() -> PathBuf {
    static MADE: Mutex<()> = Mutex::new(());
    let _made = MADE.lock().unwrap_or_else(|e| e.into_inner());
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kfp-venv");
    let python = venv.join("bin/python");
    let ready = |python: &Path| {
        Command::new(python)
            .args(["-c", "import kfp.registry, kfp.compiler"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !ready(&python) {
        let made = Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv)
            .status()
            .unwrap();
        assert!(made.success(), "python3 -m venv failed");
        let installed = Command::new(venv.join("bin/pip"))
            .args(["install", "-q", KFP])
            .status()
            .unwrap();
        assert!(installed.success(), "pip install {KFP} failed");
        assert!(ready(&python), "kfp does not import after installing it");
    }
    python
}

/// Runs `code` after a prelude that makes `client` (with the API token) and `reader` (without),
/// both `RegistryClient`s of `host`.
fn sdk(host: &str, code: &str) -> Output {
    let prelude = "import hashlib, json, os, sys\n\
        from kfp.registry import ApiAuth, RegistryClient\n\
        client = RegistryClient(host=os.environ['KFP_HOST'], auth=ApiAuth(os.environ['KFP_TOKEN']))\n\
        reader = RegistryClient(host=os.environ['KFP_HOST'])\n";
    // A file, not `-c`: the compiler reads a component's source from its file.
    let script = tempfile::Builder::new().suffix(".py").tempfile().unwrap();
    std::fs::write(script.path(), format!("{prelude}{code}")).unwrap();
    Command::new(python())
        .arg(script.path())
        .env("KFP_HOST", host)
        .env("KFP_TOKEN", TOKEN)
        // No credentials or context of the user's own.
        .env("HOME", std::env::temp_dir())
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `code` and returns what it printed; it must succeed.
fn ok(host: &str, code: &str) -> String {
    let output = sdk(host, code);
    assert!(output.status.success(), "{code}\n{}", text(&output));
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// Runs `code`, which must fail; returns the error the SDK raised.
fn refused(host: &str, code: &str) -> String {
    let output = sdk(host, code);
    assert!(!output.status.success(), "{code}\n{}", text(&output));
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn serve(data: &Path, root: &str, extra: &[&str]) -> Server {
    let triggers = data.join("triggers");
    std::fs::create_dir_all(&triggers).unwrap();
    let mut args = vec!["--kfp-registry", root];
    args.extend(extra);
    Server::start_with(data, &triggers, data, 1, &args)
}

/// Compiles a one-step pipeline named `name` with the SDK's compiler into `path`.
fn compile(name: &str, greeting: &str, path: &Path) {
    ok(
        "http://unused",
        &format!(
            "from kfp import compiler, dsl\n\
             @dsl.component(base_image='python:3.11')\n\
             def hello(text: str) -> str:\n    return text\n\
             @dsl.pipeline(name='{name}')\n\
             def pipeline(text: str = '{greeting}'):\n    hello(text=text)\n\
             compiler.Compiler().compile(pipeline, '{}')\n",
            path.display()
        ),
    );
}

#[test]
fn kfps_registry_client_uploads_lists_downloads_and_tags_over_the_template_store() {
    let data = TempDir::new().unwrap();
    let root = format!("{REGISTRY}/test/kfp-{}", uuid::Uuid::new_v4().simple());
    let server = serve(data.path(), &root, &[]);
    let host = format!("{}/kfp/ml/pipelines", server.url);
    let dir = TempDir::new().unwrap();
    let (a, b) = (dir.path().join("a.yaml"), dir.path().join("b.yaml"));
    compile("hello-pipeline", "first", &a);
    compile("hello-pipeline", "second", &b);
    let digest = |path: &Path| {
        use sha2::{Digest, Sha256};
        let hash = Sha256::digest(std::fs::read(path).unwrap());
        format!(
            "sha256:{}",
            hash.iter().map(|b| format!("{b:02x}")).collect::<String>()
        )
    };
    let (version_a, version_b) = (digest(&a), digest(&b));

    // Upload with tags; the same bytes again are the same version.
    let upload = |file: &Path, tags: &str| {
        format!(
            "print('/'.join(client.upload_pipeline('{}', tags={tags})))",
            file.display()
        )
    };
    let first = ok(&host, &upload(&a, "['v1', 'latest']"));
    assert_eq!(first, format!("hello-pipeline/{version_a}"));
    assert_eq!(ok(&host, &upload(&a, "None")), first);
    assert_eq!(
        ok(&host, &upload(&b, "'v2'")),
        format!("hello-pipeline/{version_b}")
    );

    // Listed as packages, versions and tags, in the shapes the SDK reads.
    let listed = ok(
        &host,
        "print(json.dumps([reader.list_packages(), reader.list_versions('hello-pipeline'), \
         reader.list_tags('hello-pipeline'), reader.get_tag('hello-pipeline', 'latest'), \
         reader.get_package('hello-pipeline')]))",
    );
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let [packages, versions, tags, latest, package] = listed.as_array().unwrap().as_slice() else {
        panic!("{listed}");
    };
    assert_eq!(packages.as_array().unwrap().len(), 1, "{packages}");
    assert_eq!(packages[0]["name"], "packages/hello-pipeline");
    assert!(packages[0]["createTime"].is_string(), "{packages}");
    assert_eq!(package["name"], "packages/hello-pipeline");
    let names: Vec<&str> = versions
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    let name_of = |version: &str| format!("packages/hello-pipeline/versions/{version}");
    assert_eq!(names, [name_of(&version_a), name_of(&version_b)]);
    assert!(versions[0]["updateTime"].is_string(), "{versions}");
    assert_eq!(
        versions[0]["metadata"]["tags"],
        serde_json::json!(["latest", "v1"])
    );
    let tag_pairs: Vec<(String, String)> = tags
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().into(),
                t["version"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        tag_pairs,
        [
            (
                "packages/hello-pipeline/tags/latest".into(),
                name_of(&version_a)
            ),
            (
                "packages/hello-pipeline/tags/v1".into(),
                name_of(&version_a)
            ),
            (
                "packages/hello-pipeline/tags/v2".into(),
                name_of(&version_b)
            ),
        ]
    );
    assert_eq!(latest["version"], name_of(&version_a));

    // Downloads by version and by tag, byte for byte.
    let download = |reference: &str, out: &str| {
        ok(
            &host,
            &format!(
                "print(reader.download_pipeline('hello-pipeline', {reference}, file_name='{}'))",
                dir.path().join(out).display()
            ),
        )
    };
    let read = |name: &str| std::fs::read(dir.path().join(name)).unwrap();
    download(&format!("version='{version_a}'"), "by-version.yaml");
    assert_eq!(read("by-version.yaml"), std::fs::read(&a).unwrap());
    download("tag='v2'", "by-tag.yaml");
    assert_eq!(read("by-tag.yaml"), std::fs::read(&b).unwrap());

    // A tag moves; a tag that exists is not created over other content; one tag is deleted and
    // the others that named the same version stay.
    ok(
        &host,
        &format!("client.update_tag('hello-pipeline', '{version_b}', 'latest')"),
    );
    download("tag='latest'", "latest.yaml");
    assert_eq!(read("latest.yaml"), std::fs::read(&b).unwrap());
    ok(
        &host,
        &format!("client.create_tag('hello-pipeline', '{version_a}', 'stable')"),
    );
    let exists = refused(
        &host,
        &format!("client.create_tag('hello-pipeline', '{version_a}', 'v2')"),
    );
    assert!(
        exists.contains("409 Client Error: tag \"v2\" already exists"),
        "{exists}"
    );
    ok(&host, "client.delete_tag('hello-pipeline', 'v1')");
    let tags = ok(
        &host,
        "print(sorted(t['name'].split('/')[-1] for t in reader.list_tags('hello-pipeline')))",
    );
    assert_eq!(tags, "['latest', 'stable', 'v2']");
    let gone = refused(
        &host,
        "reader.download_pipeline('hello-pipeline', tag='v1')",
    );
    assert!(gone.contains("404 Client Error"), "{gone}");

    // A tagged version is not deleted; an untagged one is.
    let tagged = refused(
        &host,
        &format!("client.delete_version('hello-pipeline', '{version_b}')"),
    );
    assert!(
        tagged.contains("409 Client Error: version sha256:"),
        "{tagged}"
    );
    assert!(tagged.contains("is tagged latest, v2"), "{tagged}");
    ok(&host, "client.delete_tag('hello-pipeline', 'stable')");
    assert_eq!(
        ok(
            &host,
            &format!("print(client.delete_version('hello-pipeline', '{version_a}'))")
        ),
        "True"
    );
    let versions = ok(&host, "print(len(reader.list_versions('hello-pipeline')))");
    assert_eq!(versions, "1");

    // Writes need the token.
    let anonymous = refused(
        &host,
        &format!("reader.upload_pipeline('{}', tags='x')", a.display()),
    );
    assert!(
        anonymous.contains("401 Client Error: changing a KFP repository needs the API token"),
        "{anonymous}"
    );

    // One store: `builder templates list` sees what the SDK uploaded.
    let listed = builder(data.path())
        .args(["templates", "list"])
        .arg(format!("{root}/ml/pipelines/hello-pipeline"))
        .output()
        .unwrap();
    assert!(listed.status.success(), "{}", text(&listed));
    assert!(text(&listed).contains(&version_b), "{}", text(&listed));

    // Bad input: not a pipeline spec, over the size limit.
    let not_spec = dir.path().join("cloudbuild.yaml");
    std::fs::write(&not_spec, "steps: []\n").unwrap();
    let refusal = refused(&host, &upload(&not_spec, "None"));
    assert!(
        refusal.contains("400 Client Error: the uploaded file is not a KFP pipeline spec (it has no pipelineInfo.name)"),
        "{refusal}"
    );
    let big = dir.path().join("big.yaml");
    let mut content = b"pipelineInfo:\n  name: big\n# ".to_vec();
    content.resize(64 * 1024 * 1024 + 1, b'x');
    std::fs::write(&big, content).unwrap();
    let refusal = refused(&host, &upload(&big, "None"));
    assert!(
        refusal.contains("bytes, more than the 67108864 bytes this server stores"),
        "{refusal}"
    );
    std::fs::remove_file(&big).unwrap();

    // A package goes with all its versions and tags.
    assert_eq!(
        ok(&host, "print(client.delete_package('hello-pipeline'))"),
        "True"
    );
    assert_eq!(ok(&host, "print(reader.list_packages())"), "[]");
    server.stop();
}

const BUILD: &str = r#"steps:
- name: builder/busybox
  script: |
    mkdir -p dist
    printf 'pipelineInfo:\n  name: built-pipeline\nschemaVersion: 2.1.0\n' > dist/built-pipeline_v1.0.0.yaml
templates:
- paths: ['dist/built-pipeline_v*.yaml']
  repository: $_REPOSITORY
  tags: [latest]
"#;

#[test]
fn a_template_a_build_pushed_is_a_kfp_version_whose_version_tag_stays() {
    let data = TempDir::new().unwrap();
    let root = format!("{REGISTRY}/test/kfp-{}", uuid::Uuid::new_v4().simple());
    let dir = source(BUILD, &[]);
    let substitutions = format!("_REPOSITORY={root}/ml/pipelines/built-pipeline");
    let built = submit(
        data.path(),
        dir.path(),
        &["--substitutions", &substitutions],
    );
    assert!(built.status.success(), "{}", text(&built));
    let build = build_id(&text(&built));
    let server = serve(data.path(), &root, &[]);
    let host = format!("{}/kfp/ml/pipelines", server.url);
    let expected = "pipelineInfo:\n  name: built-pipeline\nschemaVersion: 2.1.0\n";
    let out = TempDir::new().unwrap();
    for tag in ["1.0.0", "latest"] {
        let file = out.path().join(format!("{tag}.yaml"));
        ok(
            &host,
            &format!(
                "reader.download_pipeline('built-pipeline', tag='{tag}', file_name='{}')",
                file.display()
            ),
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), expected);
    }
    let metadata = ok(
        &host,
        "print(json.dumps(reader.list_versions('built-pipeline')[0]['metadata']))",
    );
    let metadata: serde_json::Value = serde_json::from_str(&metadata).unwrap();
    assert_eq!(metadata["build"], build.as_str());
    assert_eq!(metadata["tags"], serde_json::json!(["1.0.0", "latest"]));

    // The build's version tag names its content for good; `latest` moves.
    let other = out.path().join("other.yaml");
    std::fs::write(&other, "pipelineInfo:\n  name: built-pipeline\n# other\n").unwrap();
    let upload = |tags: &str| {
        format!(
            "print(client.upload_pipeline('{}', tags='{tags}'))",
            other.display()
        )
    };
    let protected = refused(&host, &upload("1.0.0"));
    assert!(
        protected.contains(&format!(
            "409 Client Error: tag \"1.0.0\" is the version a build's templates: pushed by build {build}"
        )),
        "{protected}"
    );
    ok(&host, &upload("latest"));
    let refusal = refused(&host, "client.delete_tag('built-pipeline', '1.0.0')");
    assert!(refusal.contains("409 Client Error"), "{refusal}");
    let latest = ok(
        &host,
        "print(reader.get_tag('built-pipeline', 'latest')['version'])",
    );
    assert!(!latest.ends_with(&expected_digest(expected)), "{latest}");

    // The console's Templates page: the package, its versions with their tags, the build that
    // pushed one, and links that download through the KFP API.
    let page = Command::new("curl")
        .args(["-sf", &format!("{}/templates", server.url)])
        .output()
        .unwrap();
    let page = String::from_utf8(page.stdout).unwrap();
    assert!(page.contains("ml/pipelines: built-pipeline"), "{page}");
    assert!(
        page.contains(&format!("href=\"/builds/{build}\"")),
        "{page}"
    );
    let download = format!(
        "/kfp/ml/pipelines/built-pipeline/sha256:{}",
        expected_digest(expected)
    );
    assert!(page.contains(&format!("href=\"{download}\"")), "{page}");
    assert!(
        page.contains("href=\"/kfp/ml/pipelines/built-pipeline/1.0.0\""),
        "{page}"
    );
    let downloaded = Command::new("curl")
        .args(["-sf", &format!("{}{download}", server.url)])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(downloaded.stdout).unwrap(), expected);
    server.stop();
}

fn expected_digest(content: &str) -> String {
    use sha2::{Digest, Sha256};
    let hash = Sha256::digest(content.as_bytes());
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn reads_follow_the_servers_read_policy_and_the_examples_consumer_downloads_by_tag() {
    let data = TempDir::new().unwrap();
    let root = format!("{REGISTRY}/test/kfp-{}", uuid::Uuid::new_v4().simple());
    let server = serve(data.path(), &root, &["--reads-need-token"]);
    let host = format!("{}/kfp/ml/pipelines", server.url);
    let refusal = refused(&host, "reader.list_packages()");
    assert!(
        refusal.contains("401 Client Error: reading needs the API token"),
        "{refusal}"
    );
    assert_eq!(ok(&host, "print(client.list_packages())"), "[]");

    // The example workflow's consumer, given the token, downloads what `templates` pushed to the
    // repository its build pushes to.
    let dir = TempDir::new().unwrap();
    let spec = dir.path().join("training-pipeline_v1.0.0.yaml");
    std::fs::write(&spec, "pipelineInfo:\n  name: training-pipeline\n").unwrap();
    let pushed = builder(data.path())
        .args(["templates", "push"])
        .arg(&spec)
        .args(["--tag", "latest", "--repository"])
        .arg(format!("{root}/ml/pipelines/training-pipeline"))
        .output()
        .unwrap();
    assert!(pushed.status.success(), "{}", text(&pushed));
    let out = dir.path().join("downloaded.yaml");
    let consumer = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("configs/pipeline-templates/consumer/download.py");
    let downloaded = Command::new(python())
        .arg(consumer)
        .arg("1.0.0")
        .arg(&out)
        .env("KFP_REGISTRY", &host)
        .env("BUILDER_API_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(downloaded.status.success(), "{}", text(&downloaded));
    assert!(
        text(&downloaded).contains("training-pipeline 1.0.0 (sha256:"),
        "{}",
        text(&downloaded)
    );
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&spec).unwrap());
    server.stop();
}
