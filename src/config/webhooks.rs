//! Webhook settings: where escalation events are posted, how they are signed, and the
//! rules that keep the destination and the secret sound.

use std::fmt;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use super::load::read_secret_file;
use super::{ConfigError, Mode};

/// Events a webhook can subscribe to (the default is all of them).
pub const WEBHOOK_EVENTS: &[&str] = &[
    "escalation.created",
    "escalation.decided",
    "escalation.expired",
    "grant.revoked",
];

/// Shortest webhook signing secret accepted, in bytes.
pub const WEBHOOK_SECRET_MIN_BYTES: usize = 16;

/// Most delivery attempts a webhook may configure.
pub const WEBHOOK_MAX_ATTEMPTS_CEILING: u32 = 10;

/// Longest per-attempt timeout a webhook may configure.
pub const WEBHOOK_TIMEOUT_CEILING: Duration = Duration::from_secs(60);

/// Longest wait between two delivery attempts (and the ceiling of `retry_base`).
pub const WEBHOOK_BACKOFF_CEILING: Duration = Duration::from_secs(300);

/// One webhook: where escalation and grant notifications are POSTed, signed with a secret.
///
/// SECURITY: the URL may itself be a credential (Slack incoming-webhook URLs are), so
/// `Debug`, the redacted dumps and validation messages show only its scheme and host;
/// the secret is never serialised or printed.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// Where to POST (http or https; plain http only to loopback in production mode).
    pub url: String,
    /// HMAC-SHA256 key for `X-Airlock-Signature`, at least 16 bytes. Exactly one of
    /// `secret` and `secret_file` is required.
    #[serde(default, skip_serializing)]
    pub secret: Option<SecretString>,
    /// File holding the secret (surrounding whitespace is trimmed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// Events sent to this webhook; see [`WEBHOOK_EVENTS`].
    #[serde(default = "default_webhook_events")]
    pub events: Vec<String>,
    /// Deadline of one attempt.
    #[serde(default = "default_webhook_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Attempts per notification, 1 to 10.
    #[serde(default = "default_webhook_max_attempts")]
    pub max_attempts: u32,
    /// Wait before the first retry; doubles on each further one, up to 5 minutes.
    #[serde(default = "default_webhook_retry_base", with = "humantime_serde")]
    pub retry_base: Duration,
}

fn default_webhook_events() -> Vec<String> {
    WEBHOOK_EVENTS.iter().map(|e| e.to_string()).collect()
}

fn default_webhook_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_webhook_max_attempts() -> u32 {
    5
}

fn default_webhook_retry_base() -> Duration {
    Duration::from_secs(2)
}

impl WebhookSettings {
    /// A webhook to `url` signed with `secret`, with the default events and timings.
    pub fn new(url: impl Into<String>, secret: SecretString) -> WebhookSettings {
        WebhookSettings {
            url: url.into(),
            secret: Some(secret),
            secret_file: None,
            events: default_webhook_events(),
            timeout: default_webhook_timeout(),
            max_attempts: default_webhook_max_attempts(),
            retry_base: default_webhook_retry_base(),
        }
    }

    /// The signing secret: inline, or read from `secret_file` (trimmed).
    pub fn signing_secret(&self) -> Result<SecretString, ConfigError> {
        match (&self.secret, &self.secret_file) {
            (Some(s), None) => Ok(s.clone()),
            (None, Some(path)) => read_secret_file(path, "secret_file").map(SecretString::from),
            (Some(_), Some(_)) => Err(ConfigError::Invalid(vec![
                "set either secret or secret_file, not both".into(),
            ])),
            (None, None) => Err(ConfigError::Invalid(vec![
                "a secret is required: set secret or secret_file (e.g. `openssl rand -hex 32`)".into(),
            ])),
        }
    }

    /// Whether this webhook wants `event`.
    pub fn wants(&self, event: &str) -> bool {
        self.events.iter().any(|e| e == event)
    }

    /// The URL for display: scheme, host and port only.
    pub fn redacted_url(&self) -> String {
        redact_webhook_url(&self.url)
    }

    /// Problems of this webhook, each prefixed with `at` (`webhooks.NAME`).
    pub(super) fn problems(&self, at: &str, mode: Mode) -> Vec<String> {
        let mut problems = Vec::new();
        match url::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                if mode == Mode::Production && u.scheme() == "http" && !is_loopback(&u) {
                    problems.push(format!(
                        "{at}.url {} must use https when mode = \"production\" (plain http only to a loopback address)",
                        self.redacted_url()
                    ));
                }
                if !u.username().is_empty() || u.password().is_some() {
                    problems.push(format!(
                        "{at}.url must not carry a user name or password; the signature authenticates Airlock"
                    ));
                }
            }
            // SECURITY: never echo the URL; its path may be a credential.
            _ => problems.push(format!(
                "{at}.url is not an http(s) URL with a host, e.g. https://hooks.example.com/airlock"
            )),
        }
        match self.signing_secret() {
            Ok(secret) if secret.expose_secret().len() < WEBHOOK_SECRET_MIN_BYTES => problems.push(format!(
                "{at}.secret is shorter than {WEBHOOK_SECRET_MIN_BYTES} bytes; generate one with `openssl rand -hex 32`"
            )),
            Ok(_) => {}
            Err(ConfigError::Invalid(p)) => problems.extend(p.into_iter().map(|m| format!("{at}: {m}"))),
            Err(ConfigError::Load(m)) => problems.push(format!("{at}: {m}")),
        }
        if self.events.is_empty() {
            problems.push(format!(
                "{at}.events is empty; list some of {WEBHOOK_EVENTS:?} or remove the webhook"
            ));
        }
        for event in &self.events {
            if !WEBHOOK_EVENTS.contains(&event.as_str()) {
                problems.push(format!(
                    "{at}.events names unknown event {event:?}; known events are {WEBHOOK_EVENTS:?}"
                ));
            }
        }
        if self.timeout.is_zero() || self.timeout > WEBHOOK_TIMEOUT_CEILING {
            problems.push(format!("{at}.timeout must be between 1ms and 60s"));
        }
        if !(1..=WEBHOOK_MAX_ATTEMPTS_CEILING).contains(&self.max_attempts) {
            problems.push(format!(
                "{at}.max_attempts is {}; it must be between 1 and {WEBHOOK_MAX_ATTEMPTS_CEILING}",
                self.max_attempts
            ));
        }
        if self.retry_base.is_zero() || self.retry_base > WEBHOOK_BACKOFF_CEILING {
            problems.push(format!("{at}.retry_base must be between 1ms and 5m"));
        }
        problems
    }
}

impl fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("url", &self.redacted_url())
            .field("secret", &self.secret.as_ref().map(|_| "[redacted]"))
            .field("secret_file", &self.secret_file)
            .field("events", &self.events)
            .field("timeout", &self.timeout)
            .field("max_attempts", &self.max_attempts)
            .field("retry_base", &self.retry_base)
            .finish()
    }
}

/// A webhook URL for display: `scheme://host[:port]/…`, never its user info, path or
/// query (a Slack webhook URL's path is its credential).
///
/// ```
/// use airlock::config::redact_webhook_url;
/// assert_eq!(
///     redact_webhook_url("https://hooks.slack.com/services/T0/B0/s3cr3t"),
///     "https://hooks.slack.com/…"
/// );
/// ```
pub fn redact_webhook_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(host), Some(port)) => format!("{}://{host}:{port}/…", u.scheme()),
            (Some(host), None) => format!("{}://{host}/…", u.scheme()),
            (None, _) => "[redacted]".into(),
        },
        Err(_) => "[redacted]".into(),
    }
}

fn is_loopback(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}
