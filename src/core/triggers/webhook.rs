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

use crate::core::substitute::Values;
use crate::core::webhooks::GitRef;

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

/// A CEL `filter` over a build's substitutions, compiled when the trigger is loaded.
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
        match self.program.execute(&context) {
            Ok(cel::Value::Bool(admits)) => Ok(admits),
            Ok(other) => Err(format!("it is {other:?}, not a boolean")),
            Err(e) => Err(e.to_string()),
        }
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
    fn a_body_must_be_json() {
        assert_eq!(read_body(br#"{"a": 1}"#), Ok(json!({"a": 1})));
        assert!(
            read_body(b"a=1")
                .unwrap_err()
                .starts_with("the body is not JSON")
        );
    }
}
