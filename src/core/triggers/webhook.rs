//! Webhook triggers (issue 19), Cloud Build's `webhookConfig`: any sender (GitLab, Gitea, a
//! script) POSTs a body to the trigger's URL with the trigger's secret; the trigger's
//! substitutions bind values from the body (`_REF: $(body.ref)`), a CEL `filter` over the
//! substitutions decides whether it builds, and what it builds is its `sourceToBuild`.
//!
//! The body is untrusted: it is read as JSON within serde_json's nesting limit, and a binding
//! only reads it.

use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use super::Trigger;
use crate::core::substitute::Values;
use crate::core::webhooks::{self, GitRef, Repository};

/// `webhookConfig` with the `sourceToBuild` it builds.
#[derive(Debug, Clone)]
pub struct WebhookTrigger {
    /// The Secret Manager version (`projects/P/secrets/NAME/versions/V`) whose value the
    /// request's `secret` must be.
    pub secret: String,
    /// What a request builds: the head of this branch or tag of the trigger's repository.
    pub git_ref: GitRef,
    pub filter: Option<Filter>,
}

/// A CEL `filter`, compiled when the trigger (or notifier) is loaded: a webhook trigger's is over
/// a build's substitutions.
#[derive(Clone)]
pub struct Filter {
    source: String,
    program: Arc<cel::Program>,
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Filter").field(&self.source).finish()
    }
}

impl Filter {
    /// Compiles `source`; the parser's message when it is not CEL.
    pub fn compile(source: &str) -> Result<Filter, String> {
        let program = cel::Program::compile(source).map_err(|e| e.to_string())?;
        Ok(Filter {
            source: source.to_string(),
            program: Arc::new(program),
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the filter holds for `values` (each a CEL string variable, as Cloud Build's
    /// substitutions are); an error when it does not evaluate to a boolean (a name that is not a
    /// substitution, a type mismatch).
    pub fn admits(&self, values: &Values) -> Result<bool, String> {
        let mut context = cel::Context::default();
        for (name, value) in values {
            context.add_variable_from_value(name.as_str(), value.as_str());
        }
        self.holds(&context)
    }

    /// Whether the filter holds with the variables of `context`; an error when it does not
    /// evaluate to a boolean.
    pub fn holds(&self, context: &cel::Context) -> Result<bool, String> {
        match self.program.execute(context) {
            Ok(cel::Value::Bool(holds)) => Ok(holds),
            Ok(other) => Err(format!("it is {other:?}, not a boolean")),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Why a request to a webhook trigger builds nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The request's secret is missing or not the trigger's.
    Forbidden(String),
    /// The body is not JSON.
    Invalid(String),
    /// A request taken, that builds nothing: the trigger is disabled, or its filter is not true.
    Skipped(String),
}

/// What a request with the query's `secret` and `body` makes `trigger` (whose webhook is
/// `config`, and the value of whose secret version is `expected`) build: its substitutions,
/// bound from the body; or why nothing. The server and `builder triggers test` both judge
/// requests here.
pub fn judge(
    trigger: &Trigger,
    config: &WebhookTrigger,
    expected: &str,
    secret: Option<&str>,
    body: &[u8],
) -> Result<Values, Refused> {
    let name = &trigger.name;
    if !secret.is_some_and(|given| webhooks::same_secret(given.as_bytes(), expected.as_bytes())) {
        return Err(Refused::Forbidden(format!(
            "the request's secret is not trigger {name:?}'s"
        )));
    }
    if trigger.disabled {
        return Err(Refused::Skipped(format!("trigger {name:?} is disabled")));
    }
    let body = read_body(body).map_err(Refused::Invalid)?;
    let values = bind(&trigger.substitutions, &body);
    let Some(filter) = &config.filter else {
        return Ok(values);
    };
    match filter.admits(&values) {
        Ok(true) => Ok(values),
        Ok(false) => Err(Refused::Skipped(format!(
            "the filter {} is false",
            filter.source()
        ))),
        Err(e) => Err(Refused::Skipped(format!(
            "the filter {} does not evaluate: {e}",
            filter.source()
        ))),
    }
}

impl Trigger {
    /// The built-ins of a build of the webhook's `sourceToBuild` known before a request comes:
    /// its commit is the head of the ref when one does.
    pub fn webhook_built_ins(&self, config: &WebhookTrigger) -> Values {
        let (owner, name) = (self.github.as_ref())
            .map(|github| (github.owner.clone(), github.name.clone()))
            .unwrap_or_default();
        let repository = Repository {
            full_name: format!("{owner}/{name}"),
            owner,
            name,
            clone_url: String::new(),
        };
        let mut built_ins = self.built_ins(&repository, Some(&config.git_ref), "");
        built_ins.retain(|_, value| !value.is_empty());
        built_ins
    }
}

/// A request's body as JSON; why not, for its sender.
pub fn read_body(body: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))
}

/// `substitutions` with every `$(body.PATH)` in their values replaced by what `body` holds
/// there: a string as it is, another scalar or an object or array as JSON text, and nothing
/// for a path the body does not have (Cloud Build's payload bindings). `PATH` is keys separated
/// by dots, and `[N]` for an array's item.
pub fn bind(substitutions: &Values, body: &Value) -> Values {
    substitutions
        .iter()
        .map(|(key, value)| (key.clone(), bind_value(value, body)))
        .collect()
}

const BINDING: &str = "$(body";

fn bind_value(value: &str, body: &Value) -> String {
    let mut bound = String::new();
    let mut rest = value;
    while let Some(start) = rest.find(BINDING) {
        let after = &rest[start + BINDING.len()..];
        let Some(end) = after.find(')') else {
            break;
        };
        let path = &after[..end];
        // `$(bodyx)` is not a binding: the path is empty or starts with `.` or `[`.
        if !(path.is_empty() || path.starts_with('.') || path.starts_with('[')) {
            bound.push_str(&rest[..start + BINDING.len()]);
            rest = after;
            continue;
        }
        bound.push_str(&rest[..start]);
        bound.push_str(&text(lookup(body, path)));
        rest = &after[end + 1..];
    }
    bound.push_str(rest);
    bound
}

/// What `path` (`.a.b[0].c`) names in `value`.
fn lookup<'v>(value: &'v Value, path: &str) -> Option<&'v Value> {
    let mut at = value;
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(key) = rest.strip_prefix('.') {
            let end = key.find(['.', '[']).unwrap_or(key.len());
            at = at.get(&key[..end])?;
            rest = &key[end..];
        } else if let Some(index) = rest.strip_prefix('[') {
            let end = index.find(']')?;
            at = at.get(index[..end].parse::<usize>().ok()?)?;
            rest = &index[end + 1..];
        } else {
            return None;
        }
    }
    Some(at)
}

fn text(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn values(pairs: &[(&str, &str)]) -> Values {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn binds_values_from_the_body_by_path() {
        let body = json!({
            "ref": "refs/heads/main",
            "repository": {"name": "app", "id": 7, "topics": ["a", "b"]},
            "commits": [{"id": "1a2b"}],
            "missing": null,
        });
        let bound = bind(
            &values(&[
                ("_REF", "$(body.ref)"),
                (
                    "_NAME",
                    "repo $(body.repository.name) #$(body.repository.id)",
                ),
                ("_FIRST", "$(body.commits[0].id)"),
                ("_TOPICS", "$(body.repository.topics)"),
                (
                    "_NONE",
                    "[$(body.missing)$(body.nowhere)$(body.commits[9])]",
                ),
                ("_PLAIN", "$(bodyx) $(body.ref"),
            ]),
            &body,
        );
        assert_eq!(
            bound,
            values(&[
                ("_REF", "refs/heads/main"),
                ("_NAME", "repo app #7"),
                ("_FIRST", "1a2b"),
                ("_TOPICS", "[\"a\",\"b\"]"),
                ("_NONE", "[]"),
                ("_PLAIN", "$(bodyx) $(body.ref"),
            ])
        );
    }

    #[test]
    fn a_filter_holds_or_not_over_the_substitutions_and_says_why_it_cannot_say() {
        let filter =
            Filter::compile(r#"_REF == "refs/heads/main" && _ACTION != "closed""#).expect("CEL");
        let main = values(&[("_REF", "refs/heads/main"), ("_ACTION", "opened")]);
        assert_eq!(filter.admits(&main), Ok(true));
        let other = values(&[("_REF", "refs/heads/dev"), ("_ACTION", "opened")]);
        assert_eq!(filter.admits(&other), Ok(false));
        let unbound = filter
            .admits(&values(&[("_ACTION", "opened")]))
            .unwrap_err();
        assert!(unbound.contains("_REF"), "{unbound}");
        let not_a_boolean = Filter::compile("_REF").unwrap().admits(&main);
        assert!(not_a_boolean.unwrap_err().contains("not a boolean"));
        assert!(Filter::compile("_REF ==").is_err());
        assert!(Filter::compile(r#"_REF.startsWith("refs/tags/")"#).is_ok());
    }

    #[test]
    fn a_request_is_judged_by_its_secret_then_its_body_then_the_filter() {
        let yaml = "name: hook\nfilename: cloudbuild.yaml\n\
            webhookConfig: {secret: projects/p/secrets/s/versions/1}\n\
            sourceToBuild: {uri: 'https://github.com/acme/app', ref: refs/heads/main, repoType: GITHUB}\n\
            substitutions: {_REF: $(body.ref)}\nfilter: _REF == \"refs/heads/main\"\n";
        let (mut trigger, _) = crate::core::triggers::load(yaml.as_bytes()).expect("a trigger");
        let config = trigger.webhook.clone().expect("a webhook trigger");
        let main = br#"{"ref": "refs/heads/main"}"#;
        let judged = |trigger: &Trigger, secret, body: &[u8]| {
            judge(trigger, &config, "s3cr3t", secret, body)
        };
        assert_eq!(
            judged(&trigger, Some("s3cr3t"), main),
            Ok(values(&[("_REF", "refs/heads/main")]))
        );
        for secret in [None, Some(""), Some("S3CR3T")] {
            assert!(matches!(
                judged(&trigger, secret, main),
                Err(Refused::Forbidden(_))
            ));
        }
        assert!(matches!(
            judged(&trigger, Some("s3cr3t"), b"a=1"),
            Err(Refused::Invalid(_))
        ));
        assert_eq!(
            judged(&trigger, Some("s3cr3t"), br#"{"ref": "refs/tags/v1"}"#),
            Err(Refused::Skipped(
                "the filter _REF == \"refs/heads/main\" is false".into()
            ))
        );
        assert_eq!(
            trigger.webhook_built_ins(&config),
            values(&[
                ("BRANCH_NAME", "main"),
                ("REF_NAME", "main"),
                ("REPO_FULL_NAME", "acme/app"),
                ("REPO_NAME", "app"),
                ("TRIGGER_BUILD_CONFIG_PATH", "cloudbuild.yaml"),
                ("TRIGGER_NAME", "hook"),
            ])
        );
        trigger.disabled = true;
        assert_eq!(
            judged(&trigger, Some("s3cr3t"), main),
            Err(Refused::Skipped("trigger \"hook\" is disabled".into()))
        );
    }

    #[test]
    fn a_body_must_be_json() {
        assert_eq!(read_body(br#"{"a": 1}"#), Ok(json!({"a": 1})));
        assert!(
            read_body(b"a=1")
                .unwrap_err()
                .starts_with("the body is not JSON")
        );
    }
}
