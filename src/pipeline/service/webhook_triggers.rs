//! Webhook triggers' requests (`POST /v1/webhooks/TRIGGER?secret=…`, issue 19): the secret
//! checked against the trigger's `webhookConfig.secret` (read as `secretEnv` values are), the
//! body's values bound to the trigger's substitutions, its `filter` judged over them, and the
//! head of its `sourceToBuild` queued as a manual run of the trigger would be.

use tracing::info;

use super::*;
use crate::adapters::secrets;
use crate::core::plan::SecretRef;
use crate::core::triggers::webhook;

/// What a webhook request did: the build it queued, or why none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookRun {
    pub build: Option<String>,
    pub reason: Option<String>,
}

impl WebhookRun {
    fn skipped(reason: String) -> Self {
        info!(%reason, "webhook request builds nothing");
        WebhookRun {
            build: None,
            reason: Some(reason),
        }
    }
}

impl Service {
    /// Takes a request to trigger `name`'s webhook with `secret` (the query's) and `body`.
    pub async fn webhook(
        &self,
        name: &str,
        secret: Option<&str>,
        body: &[u8],
    ) -> Result<WebhookRun, Failed> {
        let trigger = self.trigger(name)?;
        let Some(config) = &trigger.webhook else {
            return Err(Failed::NotFound(format!(
                "trigger {name:?} is not a webhook trigger"
            )));
        };
        let expected = self.webhook_secret(&config.secret)?;
        if !secret.is_some_and(|given| webhooks::same_secret(given.as_bytes(), expected.as_bytes()))
        {
            return Err(Failed::Forbidden(format!(
                "the request's secret is not trigger {name:?}'s"
            )));
        }
        if trigger.disabled {
            return Ok(WebhookRun::skipped(format!("trigger {name:?} is disabled")));
        }
        let body = webhook::read_body(body).map_err(Failed::Invalid)?;
        let values = webhook::bind(&trigger.substitutions, &body);
        if let Some(filter) = &config.filter {
            match filter.admits(&values) {
                Ok(true) => {}
                Ok(false) => {
                    return Ok(WebhookRun::skipped(format!(
                        "the filter {} is false",
                        filter.source()
                    )));
                }
                Err(e) => {
                    return Ok(WebhookRun::skipped(format!(
                        "the filter {} does not evaluate: {e}",
                        filter.source()
                    )));
                }
            }
        }
        let (branch, tag) = match &config.git_ref {
            GitRef::Branch(branch) => (Some(branch.clone()), None),
            GitRef::Tag(tag) => (None, Some(tag.clone())),
        };
        let run = ManualRun {
            branch,
            tag,
            commit: None,
            substitutions: values,
        };
        let id = self.run_trigger(name, run).await?;
        Ok(WebhookRun {
            build: Some(id),
            reason: None,
        })
    }

    /// The value of the trigger's secret version, looked up as a build's `secretEnv` is
    /// (`BUILDER_SECRET_<NAME>`, then the secrets directory). Missing, it is the server's
    /// problem, not the sender's.
    fn webhook_secret(&self, version_name: &str) -> Result<String, Failed> {
        let secret = SecretRef {
            env: "secret".into(),
            version_name: version_name.to_string(),
        };
        let dir = self.settings.machine.secrets_dir.as_deref();
        let mut values = secrets::resolve(std::slice::from_ref(&secret), dir, |name| {
            std::env::var(name).ok()
        })
        .map_err(|e| Failed::Conflict(format!("the trigger's webhook secret: {e}")))?;
        Ok(values.remove("secret").unwrap_or_default())
    }
}
