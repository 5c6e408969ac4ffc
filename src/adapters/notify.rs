//! Sends notifications (issue 20) to where notifiers point: an HTTP endpoint (the Pub/Sub
//! message, signed), a Slack incoming webhook, a mail through an SMTP server.

use std::path::PathBuf;
use std::time::Duration;

use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use reqwest::StatusCode;
use serde_json::Value;

use crate::adapters::secrets;
use crate::core::notify::{self, SIGNATURE_HEADER, Smtp, Target};
use crate::core::webhooks;

/// How long one attempt may take, whatever the target: a target that hangs holds up no other
/// for longer, and never a build.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a notification was not delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryError {
    /// Whether trying again may work: a target that could not be reached, timed out, answered
    /// 5xx, 408 or 429, or a mail server's transient refusal. Other refusals need the operator.
    pub retry: bool,
    pub message: String,
}

impl std::fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Delivers a notification's message to a target. The contract, for any implementation:
///
/// - `message` is the Pub/Sub message (JSON) exactly as recorded; what goes to the target is it
///   (HTTP) or made from the build it carries (Slack, mail);
/// - an attempt ends within its own time limit, delivered or not: the caller may wait on it;
/// - an error never holds a secret's value (a Slack webhook's URL is one).
#[async_trait::async_trait]
pub trait Deliver: Send + Sync {
    async fn deliver(&self, target: &Target, message: &str) -> Result<(), DeliveryError>;
}

/// Delivers over the network, with secrets looked up as builds' are (`adapters::secrets`).
pub struct Senders {
    http: reqwest::Client,
    secrets_dir: Option<PathBuf>,
}

impl Senders {
    pub fn new(secrets_dir: Option<PathBuf>) -> Result<Senders, String> {
        let http = reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            .user_agent(concat!("builder/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot make an HTTP client: {e}"))?;
        Ok(Senders { http, secrets_dir })
    }

    fn secret(&self, version: &str) -> Result<String, DeliveryError> {
        secrets::value(version, self.secrets_dir.as_deref(), |name| {
            std::env::var(name).ok()
        })
        .map_err(|message| DeliveryError {
            retry: false,
            message,
        })
    }

    async fn post(
        &self,
        url: &str,
        body: Vec<u8>,
        signature: Option<String>,
    ) -> Result<(), DeliveryError> {
        let mut request = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        if let Some(signature) = signature {
            request = request.header(SIGNATURE_HEADER, signature);
        }
        // Without the URL: a Slack webhook's is a secret.
        let unreachable = |e: reqwest::Error| DeliveryError {
            retry: true,
            message: format!("the target could not be reached: {}", e.without_url()),
        };
        let response = request.body(body).send().await.map_err(unreachable)?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let answer = response.text().await.unwrap_or_default();
        let answer: String = answer.chars().take(200).collect();
        Err(DeliveryError {
            retry: status.is_server_error()
                || status == StatusCode::REQUEST_TIMEOUT
                || status == StatusCode::TOO_MANY_REQUESTS,
            message: format!("the target answered {status}: {}", answer.trim()),
        })
    }

    async fn mail(&self, smtp: &Smtp, build: &Value) -> Result<(), DeliveryError> {
        let refused = |message: String| DeliveryError {
            retry: false,
            message,
        };
        let mailbox = |address: &str| {
            address
                .parse::<Mailbox>()
                .map_err(|e| refused(format!("{address:?} is not a mail address: {e}")))
        };
        let (subject, text) = notify::mail(build);
        let mut mail = Message::builder()
            .from(mailbox(&smtp.from)?)
            .subject(subject);
        for recipient in &smtp.recipients {
            mail = mail.to(mailbox(recipient)?);
        }
        let mail = mail
            .header(ContentType::TEXT_PLAIN)
            .body(text)
            .map_err(|e| refused(format!("the mail cannot be made: {e}")))?;
        let tls = TlsParameters::new(smtp.server.clone())
            .map_err(|e| refused(format!("TLS to {}: {e}", smtp.server)))?;
        // Port 465 speaks TLS from the start; others upgrade with STARTTLS when the server
        // offers it, as Cloud Build's SMTP notifier (Go's net/smtp) does, and, as Go's PLAIN
        // auth, never log in over plain text but to this machine: with a password, STARTTLS is
        // required.
        let local = matches!(smtp.server.as_str(), "localhost" | "127.0.0.1" | "::1");
        let tls = match smtp.port {
            465 => Tls::Wrapper(tls),
            _ if smtp.password_secret.is_some() && !local => Tls::Required(tls),
            _ => Tls::Opportunistic(tls),
        };
        let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.server)
            .port(smtp.port)
            .tls(tls)
            .timeout(Some(ATTEMPT_TIMEOUT));
        if let Some(password) = &smtp.password_secret {
            transport = transport.credentials(Credentials::new(
                smtp.sender.clone(),
                self.secret(password)?,
            ));
        }
        transport
            .build()
            .send(mail)
            .await
            .map(drop)
            .map_err(|e| DeliveryError {
                retry: !e.is_permanent(),
                message: format!("the mail server {}:{}: {e}", smtp.server, smtp.port),
            })
    }
}

#[async_trait::async_trait]
impl Deliver for Senders {
    async fn deliver(&self, target: &Target, message: &str) -> Result<(), DeliveryError> {
        let build = || {
            serde_json::from_str(message)
                .ok()
                .as_ref()
                .and_then(notify::message_build)
                .ok_or_else(|| DeliveryError {
                    retry: false,
                    message: "the recorded message carries no build".into(),
                })
        };
        match target {
            Target::Http {
                url,
                signing_secret,
            } => {
                let signature = match signing_secret {
                    Some(secret) => Some(webhooks::sign(
                        self.secret(secret)?.as_bytes(),
                        message.as_bytes(),
                    )),
                    None => None,
                };
                self.post(url, message.as_bytes().to_vec(), signature).await
            }
            Target::Slack { webhook_url_secret } => {
                let url = self.secret(webhook_url_secret)?;
                let body = notify::slack_body(&build()?).to_string().into_bytes();
                self.post(url.trim(), body, None).await
            }
            Target::Smtp(smtp) => {
                tokio::time::timeout(ATTEMPT_TIMEOUT * 2, self.mail(smtp, &build()?))
                    .await
                    .unwrap_or_else(|_| {
                        Err(DeliveryError {
                            retry: true,
                            message: format!(
                                "the mail server {}:{} did not answer in time",
                                smtp.server, smtp.port
                            ),
                        })
                    })
            }
        }
    }
}
