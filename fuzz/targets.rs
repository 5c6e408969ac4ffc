//! The bodies of the fuzz targets, one per parser of untrusted input. Each takes any bytes and
//! must return without panicking, hanging or exhausting memory; what it returns is not judged
//! here (the unit tests beside each parser do that). Shared by `fuzz_targets/` (libFuzzer) and
//! `tests/fuzz_corpus.rs` (the saved corpus, replayed on stable).

// Each fuzz binary includes this file and calls one of its bodies.
#![allow(dead_code)]

use builder::adapters::source;
use builder::core::{access, github, logs, plan, schedule, substitute, triggers, webhooks};

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

/// A delivery's body under each event builder reads (the first byte picks it), decided by a
/// pull-request trigger when it is a pull request or a comment, and its signature header checked
/// against a body.
pub fn webhook(data: &[u8]) {
    const EVENTS: [&str; 7] = [
        "push",
        "ping",
        "pull_request",
        "create",
        "delete",
        "issue_comment",
        "check_run",
    ];
    const TRIGGER: &[u8] = b"name: pr\nfilename: cloudbuild.yaml\ngithub: {owner: o, name: r, \
        pullRequest: {branch: ^main$, commentControl: COMMENTS_ENABLED}}\n";
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let event = EVENTS[usize::from(pick) % EVENTS.len()];
    if let Ok(delivery) = webhooks::parse(event, body) {
        let _ = triggers::push_of(&delivery);
        let (trigger, _) = triggers::load(TRIGGER).unwrap();
        match &delivery {
            webhooks::Delivery::PullRequest(event) => {
                let _ = trigger.fires_on_pull_request(event);
                let _ = trigger.pull_request_built_ins(&event.repository, &event.pull_request);
            }
            webhooks::Delivery::Comment(comment) => {
                let _ = trigger.fires_on_comment(comment, None);
            }
            _ => {}
        }
    }
    let _ = webhooks::verify(b"secret", body, std::str::from_utf8(data).ok());
}

/// A `.gcloudignore`'s rules, judging files and directories at several depths: what `builder
/// submit` would upload (the rules and their matcher, without the directory walk).
pub fn gcloudignore(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let paths = [
        ("a.py", false),
        ("src", true),
        ("src/b.rs", false),
        ("src/gen", true),
        ("src/gen/c.txt", false),
        (".git", true),
        (".git/HEAD", false),
        ("d/e", true),
        ("d/e/f", false),
    ];
    let _ = source::ignored_by(&text, &paths);
}

/// An uploaded source archive measured as it arrives, and unpacked into an empty workspace.
pub fn archive(data: &[u8]) {
    let _ = source::measure(data, &source::Limits::default());
    let dir = tempfile::tempdir().unwrap();
    let _ = source::unpack(data, dir.path(), &source::Limits::default());
}

/// A trigger file and a schedule file, as written through the API.
pub fn trigger(data: &[u8]) {
    let _ = triggers::load(data);
    let _ = schedule::load(data, &["main"]);
}

/// A webhook trigger's request body (anyone who has the trigger's URL sends it): read as JSON,
/// its values bound to substitutions by path, and a filter judged over them.
pub fn webhook_trigger(data: &[u8]) {
    use triggers::webhook;
    let Ok(body) = webhook::read_body(data) else {
        return;
    };
    let substitutions = [
        ("_REF", "$(body.ref)"),
        (
            "_DEEP",
            "$(body.a.b[0].c) and $(body[1])$(body.)$(body[x])$(body",
        ),
        ("_ALL", "$(body)"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let values = webhook::bind(&substitutions, &body);
    let filter = webhook::Filter::compile(r#"_REF == "refs/heads/main" && _DEEP != "x""#).unwrap();
    let _ = filter.admits(&values);
}

/// What a request to `builder serve` carries that the server reads before anything else: a
/// `Host` header against the allowlist and a console session cookie against a key.
pub fn access(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(list) = access::HostAllowlist::new(["builder.example.com:443"]) {
        let _ = list.allows(&text);
    }
    let _ = access::HostAllowlist::new([text.as_ref()]);
    let _ = access::SessionKey::derive(b"token").verify(&text, 1_000);
}

/// What GitHub is told of a build, from what a pusher and a build control: a payload's
/// repository name on the first line, the build's failure on the second, its failed step's log
/// lines after; every status's commit status and check run made (descriptions
/// and outputs are cut by characters to GitHub's limits).
pub fn github_report(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.lines();
    let repo = github::Repo::parse(lines.next().unwrap_or_default()).unwrap_or(github::Repo {
        owner: "o".into(),
        name: "r".into(),
    });
    let failure = lines.next().map(str::to_string);
    let step = github::FailedStep {
        label: "step 0".into(),
        lines: lines.map(str::to_string).collect(),
    };
    for status in builder::core::build::Status::ALL {
        let report = github::Report {
            repo: repo.clone(),
            sha: "0".repeat(40),
            build_id: "b".into(),
            status,
            context: github::context("t", "p"),
            target_url: "https://ci/builds/b".into(),
            failure: failure.clone(),
            start_time: None,
            finish_time: None,
            failed_step: Some(step.clone()),
        };
        let _ = format!("{:?}", report.commit_status());
        let _ = format!("{:?}", report.check_run(true));
    }
}

/// A step's output as the engine frames it: the first byte picks the frame size, the next one the
/// length of a secret taken from what follows; the rest is the output, assembled into masked
/// lines (cut at 256 KiB, never inside the secret).
pub fn logs(data: &[u8]) {
    let [size, secret, rest @ ..] = data else {
        return;
    };
    let (secret, output) = rest.split_at(usize::from(*secret).min(rest.len()));
    let secret = String::from_utf8_lossy(secret);
    let Ok(masker) = logs::Masker::new([secret.as_ref()]) else {
        return;
    };
    let mut assembler = logs::LineAssembler::new(masker);
    for frame in output.chunks(usize::from(*size).max(1)) {
        let _ = assembler.push(frame);
    }
    let _ = assembler.finish();
}

/// A request body as a build's engine endpoint follows it on a step's connection (chunked, the
/// framing it reads itself): read whole and in pieces of the size the first byte picks, it has
/// the same data and ends at the same byte, or is refused both ways.
pub fn framing(data: &[u8]) {
    use builder::adapters::runtime::docker::proxy::framing::{Body, Chunked};
    fn follow(body: &[u8], piece: usize) -> Option<(Vec<u8>, Option<usize>)> {
        let mut framing = Body::Chunked(Chunked::default());
        let mut data = Vec::new();
        for (n, part) in body.chunks(piece).enumerate() {
            let ended = framing
                .feed(part, |range| data.extend_from_slice(&part[range]))
                .ok()?;
            if let Some(end) = ended {
                return Some((data, Some(n * piece + end)));
            }
        }
        Some((data, None))
    }
    let Some((&piece, body)) = data.split_first() else {
        return;
    };
    let whole = follow(body, body.len().max(1));
    assert_eq!(whole, follow(body, usize::from(piece).max(1)));
}

/// A `docker build` context as a build's engine endpoint scans it for its Dockerfile (a step
/// sends it): fed whole, and in pieces of the size the first byte picks with what the scan
/// passes over skipped unread, it finds the same Dockerfile, or none both ways.
pub fn context_scan(data: &[u8]) {
    use builder::adapters::runtime::docker::proxy::context::{Scanned, TarScan};
    let Some((&piece, archive)) = data.split_first() else {
        return;
    };
    let piece = usize::from(piece).max(1);
    let whole = TarScan::new("Dockerfile").feed(archive);
    let mut scan = TarScan::new("Dockerfile");
    let mut at = 0;
    let mut pieces = Scanned::More;
    while pieces == Scanned::More && at < archive.len() {
        let skipped = scan.skippable().min(piece as u64) as usize;
        if skipped > 0 {
            scan.skip(skipped as u64);
            at += skipped.min(archive.len() - at);
        } else {
            let end = (at + piece).min(archive.len());
            pieces = scan.feed(&archive[at..end]);
            at = end;
        }
    }
    assert_eq!(whole, pieces);
}
