//! Notifiers (issue 20), configured as Cloud Build's are (`apiVersion: cloud-build-notifiers/v1`,
//! one notifier per file: `HTTPNotifier`, `SlackNotifier` or `SMTPNotifier`), and what they send:
//! Cloud Build's Pub/Sub message for each status a build takes (the `Build` resource as JSON in
//! `data`, base64, with attributes `buildId` and `status`), selected by each notifier's CEL
//! `filter` over `build`.
//!
//! Secrets are named in `spec.secrets` (`{name, value: projects/P/secrets/S/versions/V}`) and
//! referred to from the delivery by name (`{secretRef: name}`), as Cloud Build's configs do; the
//! values are looked up when a message is sent, never kept here.

use std::time::SystemTime;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::core::build::Status;
use crate::core::build_resource::status_name;
use crate::core::config::decode::{self, Fields};
use crate::core::diag::{Diagnostics, FieldPath};
use crate::core::triggers::webhook::Filter;

pub const API_VERSION: &str = "cloud-build-notifiers/v1";
/// The header that carries an HTTP notification's signature: `sha256=` and the hex HMAC-SHA256
/// of the body, as GitHub signs its deliveries, so that a receiver checks it the same way.
pub const SIGNATURE_HEADER: &str = "X-Builder-Signature-256";
/// Cloud Build's topic, named in a message's `subscription` as a push subscription would be.
const TOPIC: &str = "cloud-builds";

/// One notifier config.
#[derive(Debug, Clone)]
pub struct Notifier {
    /// `metadata.name`: names its notifications.
    pub name: String,
    pub filter: Option<BuildFilter>,
    pub target: Target,
}

/// Where a notifier's messages go. A `…_secret` is a Secret Manager version name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A POST of the message to `url`, signed when there is a signing secret.
    Http {
        url: String,
        signing_secret: Option<String>,
    },
    /// A POST of a Slack message to the incoming-webhook URL the secret holds.
    Slack {
        webhook_url_secret: String,
    },
    Smtp(Smtp),
}

/// A mail through an SMTP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Smtp {
    pub server: String,
    pub port: u16,
    /// The account it logs in as (with the password), and the envelope's sender.
    pub sender: String,
    /// The mail's `From`.
    pub from: String,
    pub recipients: Vec<String>,
    pub password_secret: Option<String>,
}

impl Target {
    /// The secret versions this target sends with.
    pub fn secrets(&self) -> Vec<&str> {
        match self {
            Target::Http { signing_secret, .. } => {
                signing_secret.iter().map(String::as_str).collect()
            }
            Target::Slack { webhook_url_secret } => vec![webhook_url_secret.as_str()],
            Target::Smtp(smtp) => smtp.password_secret.iter().map(String::as_str).collect(),
        }
    }
}

/// A CEL filter over `build` (the Build resource's JSON), with Cloud Build's enum constants
/// (`Build.Status.SUCCESS`), compiled when the notifier is loaded.
#[derive(Debug, Clone)]
pub struct BuildFilter(Filter);

impl BuildFilter {
    /// Compiles `source`; the parser's message when it is not CEL.
    pub fn compile(source: &str) -> Result<BuildFilter, String> {
        Filter::compile(source).map(BuildFilter)
    }

    pub fn source(&self) -> &str {
        self.0.source()
    }

    /// Whether the filter selects `build` (a Build resource); an error when it does not
    /// evaluate to a boolean (a key the build lacks, a type mismatch).
    pub fn selects(&self, build: &Value) -> Result<bool, String> {
        let mut context = cel::Context::default();
        let statuses: serde_json::Map<String, Value> = Status::ALL
            .iter()
            .map(|status| (status.as_str().to_string(), json!(status.as_str())))
            .collect();
        context
            .add_variable("Build", json!({ "Status": statuses }))
            .map_err(|e| e.to_string())?;
        // As over Cloud Build's proto, a field the JSON leaves out (its default) reads as its
        // default: `build.buildTriggerId == "deploy"` is false, not an error, for a manual build.
        let mut build = build.clone();
        if let Some(fields) = build.as_object_mut() {
            for (field, default) in [
                ("buildTriggerId", json!("")),
                ("statusDetail", json!("")),
                ("substitutions", json!({})),
                ("tags", json!([])),
                ("images", json!([])),
            ] {
                fields.entry(field).or_insert(default);
            }
        }
        context
            .add_variable("build", build)
            .map_err(|e| e.to_string())?;
        self.0.holds(&context)
    }
}

/// Reads a notifier config (YAML or JSON). `Err` holds the diagnostics when it is not a usable
/// notifier, a filter that is not CEL among them; `Ok` carries the warnings.
pub fn load(bytes: &[u8]) -> Result<(Notifier, Diagnostics), Diagnostics> {
    match decode::document(bytes, notifier)? {
        (Some(notifier), warnings) => Ok((notifier, warnings)),
        // Nothing is missing without an error saying what.
        (None, diagnostics) => Err(diagnostics),
    }
}

const KINDS: [&str; 3] = ["HTTPNotifier", "SlackNotifier", "SMTPNotifier"];

fn notifier(f: &mut Fields) -> Option<Notifier> {
    let api_version = f.string("apiVersion");
    if api_version.as_deref() != Some(API_VERSION) {
        let path = f.path().key("apiVersion");
        let found = api_version.map_or("nothing".to_string(), |v| format!("{v:?}"));
        f.diagnostics()
            .error(&path, format!("expected {API_VERSION:?}, found {found}"));
    }
    let kind = f.enumeration("kind", &KINDS);
    if kind.is_none() && !f.diagnostics().has_errors() {
        let path = f.path().key("kind");
        f.diagnostics()
            .error(&path, format!("required: one of {}", KINDS.join(", ")));
    }
    let name = f.object("metadata", |f| f.string("name")).flatten();
    if name.as_deref().is_none_or(str::is_empty) {
        let path = f.path().key("metadata").key("name");
        f.diagnostics().error(
            &path,
            "required: the notifier's name, which its notifications carry",
        );
    }
    let spec = f.object("spec", |f| {
        spec(f, kind?, name.as_deref().unwrap_or_default())
    });
    let (filter, target) = spec.flatten()?;
    Some(Notifier {
        name: name?,
        filter,
        target,
    })
}

/// A `{secretRef: NAME}` as read, with where it was written.
struct SecretRef {
    name: String,
    path: FieldPath,
}

fn spec(f: &mut Fields, kind: &str, name: &str) -> Option<(Option<BuildFilter>, Target)> {
    let mut refs = Vec::new();
    let notification = f.object("notification", |f| {
        let filter = f.string("filter").and_then(|source| {
            BuildFilter::compile(&source)
                .map_err(|e| {
                    let path = f.path().key("filter");
                    f.diagnostics().error(
                        &path,
                        format!("notifier {name:?}: the filter is not CEL: {e}"),
                    );
                })
                .ok()
        });
        for field in ["params", "template"] {
            if f.take(field).is_some() {
                f.warn_unsupported(field, "messages have one shape per kind");
            }
        }
        let target = f
            .object("delivery", |f| delivery(f, kind, &mut refs))
            .flatten();
        if target.is_none() && !f.diagnostics().has_errors() {
            let path = f.path().key("delivery");
            f.diagnostics()
                .error(&path, "required: where notifications go");
        }
        (filter, target)
    });
    let secrets = f.objects("secrets", |f| (f.string("name"), f.string("value")));
    let (filter, target) = notification?;
    let mut target = target?;
    let mut resolve = |secret: &mut String| {
        let Some(reference) = refs.iter().find(|r| r.name == *secret) else {
            return;
        };
        match secrets
            .iter()
            .find(|(n, _)| n.as_deref() == Some(&reference.name))
        {
            Some((_, Some(version))) => *secret = version.clone(),
            _ => f.diagnostics().error(
                &reference.path,
                format!(
                    "no secret {:?} in spec.secrets (a `{{name, value: \
                     projects/P/secrets/S/versions/V}}` entry)",
                    reference.name
                ),
            ),
        }
    };
    match &mut target {
        Target::Http { signing_secret, .. } => signing_secret.iter_mut().for_each(&mut resolve),
        Target::Slack { webhook_url_secret } => resolve(webhook_url_secret),
        Target::Smtp(smtp) => smtp.password_secret.iter_mut().for_each(&mut resolve),
    }
    Some((filter, target))
}

/// The delivery of a notifier of `kind`; each secret it refers to is its reference's name,
/// resolved by the caller against `spec.secrets`.
fn delivery(f: &mut Fields, kind: &str, refs: &mut Vec<SecretRef>) -> Option<Target> {
    let mut secret_ref = |f: &mut Fields, field: &'static str| {
        let path = f.path().key(field).key("secretRef");
        let name = f.object(field, |f| f.string("secretRef")).flatten()?;
        refs.push(SecretRef {
            name: name.clone(),
            path,
        });
        Some(name)
    };
    match kind {
        "HTTPNotifier" => {
            let url = required(f, "url", "the address messages are POSTed to")?;
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                let path = f.path().key("url");
                f.diagnostics().error(
                    &path,
                    format!("{url:?}: the http:// or https:// prefix is required"),
                );
                return None;
            }
            Some(Target::Http {
                url,
                signing_secret: secret_ref(f, "signingSecret"),
            })
        }
        "SlackNotifier" => {
            let webhook_url_secret = secret_ref(f, "webhookUrl");
            if webhook_url_secret.is_none() {
                let path = f.path().key("webhookUrl");
                f.diagnostics().error(
                    &path,
                    "required: `{secretRef: NAME}`, the secret holding the incoming webhook's URL",
                );
            }
            Some(Target::Slack {
                webhook_url_secret: webhook_url_secret?,
            })
        }
        _ => {
            let server = required(f, "server", "the SMTP server's host name");
            let port = required(f, "port", "the SMTP server's port").and_then(|port| {
                port.parse::<u16>()
                    .ok()
                    .filter(|port| *port > 0)
                    .or_else(|| {
                        let path = f.path().key("port");
                        f.diagnostics()
                            .error(&path, format!("{port:?} is not a port number"));
                        None
                    })
            });
            let sender = required(f, "sender", "the account mail is sent as");
            let from = f.string("from");
            let recipients = f.strings("recipients");
            if recipients.is_empty() {
                let path = f.path().key("recipients");
                f.diagnostics()
                    .error(&path, "required: at least one address to mail");
            }
            let password_secret = secret_ref(f, "password");
            let sender = sender?;
            Some(Target::Smtp(Smtp {
                server: server?,
                port: port?,
                from: from.unwrap_or_else(|| sender.clone()),
                sender,
                recipients,
                password_secret,
            }))
        }
    }
}

fn required(f: &mut Fields, field: &'static str, what: &str) -> Option<String> {
    let value = f.string(field).filter(|value| !value.is_empty());
    if value.is_none() {
        let path = f.path().key(field);
        f.diagnostics().error(&path, format!("required: {what}"));
    }
    value
}

/// `build` (a Build resource, as it is now) as it was when it took `status`, which it may have
/// left since: with that status, and without what it did after (a queued build's start, a
/// running build's end, results and steps' outcomes, an approval's decision). A build still at
/// `status` is told whole.
pub fn at_status(build: &mut Value, status: Status) {
    let name = status_name(status);
    if build["status"] == name {
        return;
    }
    build["status"] = name.into();
    let Some(fields) = build.as_object_mut() else {
        return;
    };
    if !status.is_final() {
        for later in [
            "finishTime",
            "results",
            "failureInfo",
            "statusDetail",
            "timing",
        ] {
            fields.remove(later);
        }
        for step in fields
            .get_mut("steps")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
            .filter_map(Value::as_object_mut)
        {
            for later in ["status", "timing", "exitCode", "pullTiming"] {
                step.remove(later);
            }
        }
    }
    if matches!(status, Status::Pending | Status::Queued) {
        fields.remove("startTime");
    }
    if status == Status::Pending
        && let Some(approval) = fields.get_mut("approval").and_then(Value::as_object_mut)
    {
        approval.remove("result");
        approval.insert("state".into(), "PENDING".into());
    }
}

/// Cloud Build's Pub/Sub message for `build` (a Build resource) taking `status`, as a push
/// subscription delivers it: the build's JSON in `data` (base64), attributes `buildId` and
/// `status`, `messageId` and `publishTime`.
pub fn pubsub_message(
    build: &Value,
    status: Status,
    message_id: &str,
    publish_time: SystemTime,
    project: &str,
) -> Value {
    let data = base64::engine::general_purpose::STANDARD.encode(build.to_string());
    let publish_time = chrono::DateTime::<chrono::Utc>::from(publish_time)
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    json!({
        "message": {
            "attributes": {
                "buildId": build["id"],
                "status": status_name(status),
            },
            "data": data,
            "messageId": message_id,
            "publishTime": publish_time,
        },
        "subscription": format!("projects/{project}/subscriptions/{TOPIC}"),
    })
}

/// The Build resource a Pub/Sub message carries; `None` if `message` is not one.
pub fn message_build(message: &Value) -> Option<Value> {
    let data = message["message"]["data"].as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// One line that says what happened to `build`: its status, trigger and commit.
pub fn summary(build: &Value) -> String {
    let id = build["id"].as_str().unwrap_or_default();
    let status = build["status"].as_str().unwrap_or_default();
    let trigger = build["substitutions"]["TRIGGER_NAME"]
        .as_str()
        .filter(|name| !name.is_empty())
        .map_or(String::new(), |name| format!(" of trigger {name}"));
    let commit = build["substitutions"]["SHORT_SHA"]
        .as_str()
        .filter(|sha| !sha.is_empty())
        .map_or(String::new(), |sha| format!(" at {sha}"));
    format!("Build {id}{trigger}{commit}: {status}")
}

/// A Slack incoming webhook's body for `build`: its status, trigger, commit and a link to its
/// page (`logUrl`), as text and as blocks.
pub fn slack_body(build: &Value) -> Value {
    let summary = summary(build);
    let link = build["logUrl"].as_str().unwrap_or_default();
    let mut fields = vec![
        json!({"type": "mrkdwn", "text": format!("*Status*\n{}", build["status"].as_str().unwrap_or_default())}),
    ];
    for (label, key) in [
        ("Trigger", "TRIGGER_NAME"),
        ("Commit", "COMMIT_SHA"),
        ("Branch", "BRANCH_NAME"),
    ] {
        if let Some(value) = build["substitutions"][key]
            .as_str()
            .filter(|v| !v.is_empty())
        {
            fields.push(json!({"type": "mrkdwn", "text": format!("*{label}*\n{value}")}));
        }
    }
    json!({
        "text": format!("{summary} {link}"),
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": format!("<{link}|{summary}>")}},
            {"type": "section", "fields": fields},
        ],
    })
}

/// A mail's subject and body for `build`.
pub fn mail(build: &Value) -> (String, String) {
    let summary = summary(build);
    let link = build["logUrl"].as_str().unwrap_or_default();
    let detail = build["statusDetail"]
        .as_str()
        .map_or(String::new(), |detail| format!("\n{detail}\n"));
    (summary.clone(), format!("{summary}\n{detail}\n{link}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HTTP: &str = "apiVersion: cloud-build-notifiers/v1
kind: HTTPNotifier
metadata:
  name: deploys
spec:
  notification:
    filter: build.status in [Build.Status.SUCCESS, Build.Status.FAILURE] && build.substitutions[\"BRANCH_NAME\"] == \"main\"
    delivery:
      url: http://127.0.0.1:9/hook
      signingSecret:
        secretRef: hook-key
  secrets:
  - name: hook-key
    value: projects/p/secrets/hook-key/versions/latest
";

    fn build(status: &str, branch: &str) -> Value {
        json!({"id": "b1", "status": status, "substitutions": {"BRANCH_NAME": branch}})
    }

    #[test]
    fn an_http_notifier_filters_builds_by_status_and_branch_and_resolves_its_secret() {
        let (notifier, warnings) = load(HTTP.as_bytes()).unwrap();
        assert!(warnings.render("n.yaml").is_empty());
        assert_eq!(notifier.name, "deploys");
        assert_eq!(
            notifier.target,
            Target::Http {
                url: "http://127.0.0.1:9/hook".into(),
                signing_secret: Some("projects/p/secrets/hook-key/versions/latest".into()),
            }
        );
        let filter = notifier.filter.unwrap();
        assert_eq!(filter.selects(&build("SUCCESS", "main")), Ok(true));
        assert_eq!(filter.selects(&build("FAILURE", "main")), Ok(true));
        assert_eq!(filter.selects(&build("WORKING", "main")), Ok(false));
        assert_eq!(filter.selects(&build("SUCCESS", "dev")), Ok(false));
        let no_branch = json!({"id": "b1", "status": "SUCCESS", "substitutions": {}});
        assert!(filter.selects(&no_branch).is_err());
        // A field the resource leaves out reads as its default, as over Cloud Build's proto.
        let by_trigger = BuildFilter::compile("build.buildTriggerId == 'deploy'").unwrap();
        assert_eq!(by_trigger.selects(&json!({"id": "b1"})), Ok(false));
    }

    #[test]
    fn a_filter_that_is_not_cel_is_located_and_names_the_notifier() {
        let yaml = HTTP.replace("filter: build.status in", "filter: build.status in in");
        let problems = load(yaml.as_bytes()).unwrap_err().render("n.yaml");
        assert!(problems.contains("n.yaml:7:"), "{problems}");
        assert!(problems.contains("spec.notification.filter"), "{problems}");
        assert!(problems.contains("notifier \"deploys\""), "{problems}");
    }

    #[test]
    fn slack_and_smtp_notifiers_read_as_cloud_builds_are_written() {
        let slack = "apiVersion: cloud-build-notifiers/v1
kind: SlackNotifier
metadata: {name: team}
spec:
  notification:
    delivery:
      webhookUrl: {secretRef: webhook-url}
  secrets:
  - {name: webhook-url, value: projects/p/secrets/slack/versions/1}
";
        let (notifier, _) = load(slack.as_bytes()).unwrap();
        assert!(notifier.filter.is_none());
        assert_eq!(
            notifier.target.secrets(),
            ["projects/p/secrets/slack/versions/1"]
        );
        let smtp = "apiVersion: cloud-build-notifiers/v1
kind: SMTPNotifier
metadata: {name: mail}
spec:
  notification:
    filter: build.status == Build.Status.FAILURE
    delivery:
      server: 127.0.0.1
      port: '2525'
      sender: ci@example.com
      recipients: [team@example.com]
";
        let (notifier, _) = load(smtp.as_bytes()).unwrap();
        assert_eq!(
            notifier.target,
            Target::Smtp(Smtp {
                server: "127.0.0.1".into(),
                port: 2525,
                sender: "ci@example.com".into(),
                from: "ci@example.com".into(),
                recipients: vec!["team@example.com".into()],
                password_secret: None,
            })
        );
    }

    #[test]
    fn bad_configs_say_where_and_what() {
        let cases = [
            (HTTP.replace("cloud-build-notifiers/v1", "v2"), "apiVersion"),
            (HTTP.replace("HTTPNotifier", "PagerNotifier"), "kind"),
            (HTTP.replace("name: deploys", "name: ''"), "metadata.name"),
            (
                HTTP.replace("http://127.0.0.1:9/hook", "127.0.0.1:9"),
                "delivery.url",
            ),
            (
                HTTP.replace("- name: hook-key", "- name: other"),
                "signingSecret.secretRef",
            ),
            (
                HTTP.replace("    delivery:", "    deliveries:"),
                "deliveries",
            ),
        ];
        for (yaml, field) in cases {
            let problems = load(yaml.as_bytes()).unwrap_err().render("n.yaml");
            assert!(problems.contains(field), "{field}: {problems}");
        }
    }

    #[test]
    fn the_message_is_cloud_builds_pubsub_push_with_the_build_in_its_data() {
        let build = build("SUCCESS", "main");
        let message = pubsub_message(&build, Status::Success, "7", SystemTime::UNIX_EPOCH, "proj");
        assert_eq!(message["message"]["attributes"]["buildId"], "b1");
        assert_eq!(message["message"]["attributes"]["status"], "SUCCESS");
        assert_eq!(
            message["message"]["publishTime"],
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(
            message["subscription"],
            "projects/proj/subscriptions/cloud-builds"
        );
        assert_eq!(message_build(&message), Some(build));
    }

    #[test]
    fn a_status_the_build_has_left_is_told_without_what_came_after() {
        let now = json!({"id": "b", "status": "SUCCESS", "startTime": "t1", "finishTime": "t2",
                         "results": {}, "createTime": "t0",
                         "steps": [{"name": "n", "status": "SUCCESS", "timing": {}}],
                         "approval": {"state": "APPROVED", "result": {"decision": "APPROVED"}}});
        let mut pending = now.clone();
        at_status(&mut pending, Status::Pending);
        assert_eq!(
            pending,
            json!({"id": "b", "status": "PENDING", "createTime": "t0", "steps": [{"name": "n"}],
                   "approval": {"state": "PENDING"}})
        );
        let mut working = now.clone();
        at_status(&mut working, Status::Working);
        assert_eq!(working["startTime"], "t1");
        assert_eq!(working["approval"]["state"], "APPROVED");
        assert!(working.get("finishTime").is_none() && working.get("results").is_none());
        let mut ended = now.clone();
        at_status(&mut ended, Status::Success);
        assert_eq!(ended, now);
        // Still queued, waiting for its group: told whole, the reason with it.
        let waiting = json!({"id": "b", "status": "QUEUED", "statusDetail": "waiting for group"});
        let mut queued = waiting.clone();
        at_status(&mut queued, Status::Queued);
        assert_eq!(queued, waiting);
    }

    #[test]
    fn a_rejected_build_is_told_cancelled_as_cloud_build_knows_no_rejected() {
        let mut rejected = json!({"id": "b", "status": "CANCELLED"});
        at_status(&mut rejected, Status::Rejected);
        let message = pubsub_message(
            &rejected,
            Status::Rejected,
            "1",
            SystemTime::UNIX_EPOCH,
            "p",
        );
        assert_eq!(message["message"]["attributes"]["status"], "CANCELLED");
        assert_eq!(message_build(&message).unwrap()["status"], "CANCELLED");
    }

    #[test]
    fn slack_and_mail_say_the_status_trigger_commit_and_link() {
        let build = json!({
            "id": "b1", "status": "FAILURE", "logUrl": "http://ci/builds/b1",
            "statusDetail": "step 0 failed",
            "substitutions": {"TRIGGER_NAME": "deploy", "SHORT_SHA": "abc1234",
                              "COMMIT_SHA": "abc1234ff", "BRANCH_NAME": "main"},
        });
        let body = slack_body(&build).to_string();
        for part in [
            "FAILURE",
            "deploy",
            "abc1234ff",
            "http://ci/builds/b1",
            "main",
        ] {
            assert!(body.contains(part), "{part}: {body}");
        }
        let (subject, text) = mail(&build);
        assert_eq!(subject, "Build b1 of trigger deploy at abc1234: FAILURE");
        assert!(text.contains("step 0 failed") && text.contains("http://ci/builds/b1"));
    }
}
