//! Webhook triggers' requests (`POST /v1/webhooks/TRIGGER?secret=…`, issue 19): the secret
//! checked against the trigger's `webhookConfig.secret` (read as `secretEnv` values are), the
//! body's values bound to the trigger's substitutions, its `filter` judged over them, and the
//! head of its `sourceToBuild` queued as a manual run of the trigger would be.

use tracing::info;

use super::*;
use crate::adapters::secrets;
use crate::core::triggers::webhook::{self, Refused};

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
        let values = match webhook::judge(&trigger, config, &expected, secret, body) {
            Ok(values) => values,
            Err(Refused::Forbidden(reason)) => return Err(Failed::Forbidden(reason)),
            Err(Refused::Invalid(reason)) => return Err(Failed::Invalid(reason)),
            Err(Refused::Skipped(reason)) => return Ok(WebhookRun::skipped(reason)),
        };
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
        let dir = self.settings.machine.secrets_dir.as_deref();
        secrets::value(version_name, dir, |name| std::env::var(name).ok())
            .map_err(|e| Failed::Conflict(format!("the trigger's webhook secret: {e}")))
    }
}
