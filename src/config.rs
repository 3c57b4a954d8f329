//! Settings: layered loading, validation and secret handling.
//!
//! Layers, each overriding the one before: the built-in `config/default.toml` (compiled
//! into the binary so `airlock serve` works from any directory), then the operator's file
//! (`--config FILE` / `AIRLOCK_CONFIG`), then `AIRLOCK_*` environment variables with `__`
//! between nested keys (`AIRLOCK_ENVIRONMENTS__PROD__MAX_TTL=10m`). Every secret can also
//! come from a file named by `*_FILE` (`AIRLOCK_MASTER_KEY_FILE`, `AIRLOCK_DATABASE_URL_FILE`).
//!
//! [`Settings::validate`] enforces the rules that keep DESIGN.md's invariants true at
//! start-up: a quorum of zero must never mean "no approval needed" (invariant 4), a
//! production environment can never auto-approve (invariant 3), destructive scopes are
//! never auto-approved (invariant 5), and no environment may issue long-lived tokens
//! (invariant 6).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// The configuration compiled into the binary: `config/default.toml`.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// The longest `max_ttl` any environment may configure.
pub const MAX_TTL_CEILING: Duration = Duration::from_secs(24 * 3600);

/// Seconds in a day, for the duration ceilings below.
const DAY: u64 = 24 * 3600;

/// A problem when `value` of `field` is above `ceiling_secs`.
fn over_ceiling(field: &str, value: Duration, ceiling_secs: u64) -> Option<String> {
    (value > Duration::from_secs(ceiling_secs)).then(|| {
        format!(
            "{field} ({}) is above its ceiling of {}; choose a shorter duration",
            humantime::format_duration(value),
            humantime::format_duration(Duration::from_secs(ceiling_secs))
        )
    })
}

/// The most concurrent HTTP connections `limits.max_connections` may allow.
pub const MAX_CONNECTIONS_CEILING: usize = 65_536;

/// Top-level keys an `AIRLOCK_*` variable may set. Anything else starting with
/// `AIRLOCK_` that is not in [`NON_CONFIG_VARS`] is reported as a likely typo.
const CONFIG_KEYS: &[&str] = &[
    "mode",
    "listen",
    "public_url",
    "database_url",
    "database_url_file",
    "data_dir",
    "log_format",
    "master_key",
    "master_key_file",
    "database",
    "limits",
    "scopes",
    "environments",
    "roles",
    "auth",
    "webhooks",
];

/// `AIRLOCK_*` variables that are not configuration: they belong to the CLI, the agent
/// runner's child processes, or the test suite.
pub const NON_CONFIG_VARS: &[&str] = &[
    "AIRLOCK_CONFIG",
    "AIRLOCK_TOKEN",
    "AIRLOCK_TOKEN_FILE",
    "AIRLOCK_ENV",
    "AIRLOCK_CLIENT_SECRET",
    "AIRLOCK_SERVER",
    "AIRLOCK_LISTEN",
    "AIRLOCK_SESSION_FILE",
    "AIRLOCK_LOG",
    "AIRLOCK_TEST_POSTGRES_URL",
    "AIRLOCK_REQUIRE_POSTGRES",
    "AIRLOCK_REQUIRE_BROWSER",
];

/// Whether the server runs with development conveniences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Generates a master key on first run if none is configured.
    Development,
    /// Refuses to start without an explicit master key.
    Production,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, coloured when the terminal supports it.
    Pretty,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Whether an environment is production.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// dev, staging and the like.
    Nonprod,
    /// Production: tokens only for prod-bound agents or approved grants.
    Prod,
}

/// All settings of one Airlock process.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Development or production.
    pub mode: Mode,
    /// Address the HTTP server binds.
    pub listen: String,
    /// External base URL; issuers are `{public_url}/envs/{env}`.
    pub public_url: String,
    /// `sqlite://path` or `postgres://...`.
    pub database_url: String,
    /// File holding the database URL (for URLs carrying a password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_url_file: Option<PathBuf>,
    /// Where development mode keeps its generated master key.
    pub data_dir: PathBuf,
    /// Log output format.
    pub log_format: LogFormat,
    /// 32-byte master key, base64 (standard or URL-safe alphabet).
    #[serde(default, skip_serializing)]
    pub master_key: Option<SecretString>,
    /// File holding the master key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_key_file: Option<PathBuf>,
    /// Connection pool tuning.
    pub database: DatabaseSettings,
    /// Request size and time bounds.
    pub limits: LimitSettings,
    /// The scope catalogue.
    pub scopes: BTreeMap<String, ScopeSettings>,
    /// Environments by name.
    pub environments: BTreeMap<String, EnvironmentSettings>,
    /// Roles of people, by name.
    pub roles: BTreeMap<String, RoleSettings>,
    /// Sign-in, sessions, TOTP and throttling.
    pub auth: AuthSettings,
    /// Webhooks told about escalations and grants, by name (`[webhooks.NAME]`).
    #[serde(default)]
    pub webhooks: BTreeMap<String, WebhookSettings>,
}

/// What holders of a role may do.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleSettings {
    /// Environments they may get tokens for, with the scopes allowed in each.
    #[serde(default)]
    pub tokens: BTreeMap<String, Vec<String>>,
    /// Environments where they may request escalations.
    #[serde(default)]
    pub escalate: Vec<String>,
    /// Manage people and agents.
    #[serde(default)]
    pub admin: bool,
}

/// Sign-in, sessions, TOTP and throttling.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// Lifetime of a session access token.
    #[serde(with = "humantime_serde")]
    pub session_access_ttl: Duration,
    /// A session ends after this long unused.
    #[serde(with = "humantime_serde")]
    pub session_idle_timeout: Duration,
    /// A session ends after this long in any case.
    #[serde(with = "humantime_serde")]
    pub session_lifetime: Duration,
    /// Everyone must enrol TOTP before getting tokens.
    pub require_totp: bool,
    /// Shortest password accepted.
    pub password_min_length: usize,
    /// Argon2id verifications at once.
    pub max_concurrent_password_checks: usize,
    /// How long a sign-in waits for a verification slot before a 503.
    #[serde(with = "humantime_serde")]
    pub password_queue_timeout: Duration,
    /// Failures before delays start, per account and address, per address, and per
    /// session for TOTP codes.
    pub throttle_free_failures: u32,
    /// Failures before delays start for an account from all addresses together (and
    /// for a person's TOTP codes from all sessions): far above `throttle_free_failures`,
    /// so a stranger cannot lock the real person out, yet guessing spread over many
    /// addresses is still bounded.
    pub throttle_account_ceiling: u32,
    /// Longest delay.
    #[serde(with = "humantime_serde")]
    pub throttle_max_delay: Duration,
    /// Lifetime of an RFC 8628 device code.
    #[serde(with = "humantime_serde")]
    pub device_code_lifetime: Duration,
    /// Minimum polling interval of the device flow.
    #[serde(with = "humantime_serde")]
    pub device_poll_interval: Duration,
    /// Lifetime of a browser sign-in.
    #[serde(with = "humantime_serde")]
    pub web_session_lifetime: Duration,
    /// How long a started TOTP enrolment waits for its first code (from the session
    /// that started it).
    #[serde(with = "humantime_serde")]
    pub totp_enrolment_lifetime: Duration,
    /// How long a step-up (a fresh TOTP code) allows admin changes.
    #[serde(with = "humantime_serde")]
    pub step_up_lifetime: Duration,
}

/// Connection pool tuning.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Pool size.
    pub max_connections: u32,
    /// SQLite lock wait before failing closed.
    #[serde(with = "humantime_serde")]
    pub busy_timeout: Duration,
    /// Pool acquire wait before failing closed.
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
}

/// Request size and time bounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// Largest body the token endpoint reads.
    pub max_body_bytes: usize,
    /// Whole-request deadline.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How many escalation requests one principal may create.
    #[serde(default)]
    pub escalation_rate: EscalationRateSettings,
    /// How many refusals are audited one by one before the rest are only counted.
    #[serde(default)]
    pub refusals: RefusalSettings,
    /// Longest a client may take to send a request line and headers; also how long a
    /// kept-alive connection may sit idle. Closes slow-header (slowloris) connections.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Most HTTP connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
}

/// At most `requests` escalation requests created by one principal in any `per`: a burst
/// of `requests` at once is allowed, then one more each time the oldest leaves the
/// window. Counted in the store, so every replica sharing the database counts together,
/// and cancelled requests still count (a create/cancel loop is bounded too).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EscalationRateSettings {
    /// Requests allowed per window, 1 to 10000.
    pub requests: u32,
    /// The sliding window, 1s to 24h.
    #[serde(with = "humantime_serde")]
    pub per: Duration,
}

impl Default for EscalationRateSettings {
    fn default() -> Self {
        EscalationRateSettings {
            requests: 10,
            per: Duration::from_secs(60),
        }
    }
}

/// Budgets of individually audited refusals, per window (see [`crate::refusals`]).
/// Beyond a budget a refusal is still refused, and counted into a `*.suppressed` event
/// written when the window ends. Kept per server process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RefusalSettings {
    /// Length of a window, and how often summaries are written (1s to 1h).
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Anonymous refusals audited one by one per address (an IPv4 address, an IPv6 /64).
    pub per_address: u32,
    /// Anonymous refusals audited one by one, all addresses together.
    pub all_addresses: u32,
    /// Refusals of one authenticated principal audited one by one.
    pub per_principal: u32,
}

impl Default for RefusalSettings {
    fn default() -> Self {
        RefusalSettings {
            window: Duration::from_secs(10),
            per_address: 30,
            all_addresses: 300,
            per_principal: 30,
        }
    }
}

/// Largest refusal budget per window.
pub const REFUSAL_BUDGET_CEILING: u32 = 100_000;

/// One scope of the catalogue.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeSettings {
    /// Shown to people deciding on escalations.
    #[serde(default)]
    pub description: String,
    /// Needs an approved grant in every environment.
    #[serde(default)]
    pub destructive: bool,
}

/// One environment.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentSettings {
    /// prod or nonprod.
    pub tier: Tier,
    /// The `aud` of this environment's tokens; unique across environments.
    pub audience: String,
    /// Lifetime of a token when nothing shorter is asked for.
    #[serde(with = "humantime_serde")]
    pub default_ttl: Duration,
    /// No token of this environment lives longer.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// Scopes of the catalogue offered here; absent means all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    /// Escalation policy (every field has a default; see [`ApprovalSettings::default`]).
    #[serde(default)]
    pub approval: ApprovalSettings,
}

/// Escalation policy of one environment. Missing keys take their defaults: quorum 1,
/// approver role `approver`, pending for 1h, grants of at most 1h, no auto-approval.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApprovalSettings {
    /// Distinct approvers needed; at least 1.
    pub quorum: u32,
    /// Role whose holders may approve here.
    pub approver_role: String,
    /// How long a request may stay pending.
    #[serde(with = "humantime_serde")]
    pub pending_timeout: Duration,
    /// Longest grant.
    #[serde(with = "humantime_serde")]
    pub max_grant_duration: Duration,
    /// Approve non-destructive requests without a human (nonprod only).
    pub auto_approve: bool,
}

impl Default for ApprovalSettings {
    fn default() -> Self {
        ApprovalSettings {
            quorum: 1,
            approver_role: "approver".into(),
            pending_timeout: Duration::from_secs(3600),
            max_grant_duration: Duration::from_secs(3600),
            auto_approve: false,
        }
    }
}

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
    fn problems(&self, at: &str, mode: Mode) -> Vec<String> {
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

/// A configuration that cannot be used, with every problem found.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The layers could not be read or parsed.
    #[error("cannot read configuration: {0}")]
    Load(String),
    /// The settings parse but break a rule.
    #[error("invalid configuration:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<String>),
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("mode", &self.mode)
            .field("listen", &self.listen)
            .field("public_url", &self.public_url)
            .field("database_url", &redact_url(&self.database_url))
            .field("master_key", &self.master_key.as_ref().map(|_| "[redacted]"))
            .field("environments", &self.environments.keys())
            .field("webhooks", &self.webhooks)
            .finish_non_exhaustive()
    }
}

/// Replace the password of a URL with `***` for display.
///
/// ```
/// use airlock::config::redact_url;
/// assert_eq!(redact_url("postgres://app:hunter2@db/airlock"), "postgres://app:***@db/airlock");
/// assert!(!redact_url("host=db password=hunter2").contains("hunter2"));
/// ```
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            // sqlx also takes `?password=` (and TLS key passphrases) in the query.
            if u.query().is_some() {
                let pairs: Vec<(String, String)> = u
                    .query_pairs()
                    .map(|(k, v)| {
                        let secret = k.to_ascii_lowercase().contains("password");
                        (
                            k.into_owned(),
                            if secret { "***".to_string() } else { v.into_owned() },
                        )
                    })
                    .collect();
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string()
        }
        // Not a URL we can parse: show only the scheme, never the rest.
        Err(_) => match url.split_once(':') {
            Some((scheme, _)) => format!("{scheme}:[redacted]"),
            None => "[redacted]".to_string(),
        },
    }
}

/// Where the layers come from.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The operator's file, layered over the defaults.
    pub file: Option<PathBuf>,
    /// Read `AIRLOCK_*` variables from the process environment.
    pub env: bool,
}

impl Settings {
    /// Load every layer, resolve `*_FILE` secrets, and validate.
    pub fn load(sources: &Sources) -> Result<Settings, ConfigError> {
        let mut settings = Self::load_unvalidated(sources)?;
        settings.resolve_files()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Load the layers without resolving files or validating (for `config check`
    /// to report problems in order).
    pub fn load_unvalidated(sources: &Sources) -> Result<Settings, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(file) = &sources.file {
            if !file.exists() {
                return Err(ConfigError::Load(format!(
                    "config file {} does not exist",
                    file.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        if sources.env {
            figment = figment.merge(
                Env::prefixed("AIRLOCK_")
                    .split("__")
                    .filter(|key| is_config_key(key.as_str())),
            );
        }
        figment
            .extract::<Settings>()
            .map_err(|e| ConfigError::Load(e.to_string()))
    }

    /// Read secrets that were given as files.
    fn resolve_files(&mut self) -> Result<(), ConfigError> {
        if let Some(path) = &self.database_url_file {
            self.database_url = read_secret_file(path, "database_url_file")?;
        }
        Ok(())
    }

    /// Check every rule; report all problems at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.environments.is_empty() {
            problems.push("no environments are defined; add at least one [environments.NAME] table".into());
        }
        match url::Url::parse(&self.public_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {
                if self.public_url.ends_with('/') {
                    problems.push(format!(
                        "public_url {:?} must not end with '/'; issuers are built as public_url + \"/envs/NAME\"",
                        self.public_url
                    ));
                }
                if self.mode == Mode::Production && u.scheme() != "https" {
                    problems.push("public_url must use https when mode = \"production\"".into());
                }
            }
            _ => problems.push(format!(
                "public_url {:?} is not an http(s) URL; set it to the address clients use, e.g. https://airlock.example.com",
                self.public_url
            )),
        }
        if !(self.database_url.starts_with("sqlite:")
            || self.database_url.starts_with("postgres://")
            || self.database_url.starts_with("postgresql://"))
        {
            problems.push(format!(
                "database_url {} has an unsupported scheme; use sqlite://PATH or postgres://USER@HOST/DB",
                redact_url(&self.database_url)
            ));
        }
        if self.database.max_connections == 0 {
            problems.push("database.max_connections must be at least 1".into());
        }
        if self.auth.throttle_account_ceiling < self.auth.throttle_free_failures {
            problems.push(
                "auth.throttle_account_ceiling must be at least auth.throttle_free_failures \
                 (it bounds an account's failures from all addresses together)"
                    .into(),
            );
        }
        if self.auth.totp_enrolment_lifetime < Duration::from_secs(1)
            || self.auth.totp_enrolment_lifetime > Duration::from_secs(3600)
        {
            problems.push("auth.totp_enrolment_lifetime must be between 1s and 1h".into());
        }
        if self.limits.max_body_bytes < 256 || self.limits.max_body_bytes > 1024 * 1024 {
            problems.push("limits.max_body_bytes must be between 256 and 1048576".into());
        }
        problems.extend(self.limit_problems());
        if self.limits.header_read_timeout < Duration::from_secs(1)
            || self.limits.header_read_timeout > Duration::from_secs(120)
        {
            problems.push(format!(
                "limits.header_read_timeout ({}) must be between 1s and 2m; 10s suits most clients",
                humantime::format_duration(self.limits.header_read_timeout)
            ));
        }
        if self.limits.max_connections == 0 || self.limits.max_connections > MAX_CONNECTIONS_CEILING {
            problems.push(format!(
                "limits.max_connections ({}) must be between 1 and {MAX_CONNECTIONS_CEILING}; keep it below \
                 the process's open-file limit (ulimit -n) minus the database pool",
                self.limits.max_connections
            ));
        }
        if self.master_key.is_some() && self.master_key_file.is_some() {
            problems.push("set either master_key or master_key_file, not both".into());
        }
        for name in self.scopes.keys() {
            if !valid_scope_name(name) {
                problems.push(format!(
                    "scope {name:?} is not a valid scope name (letters, digits and ':_.-', 1-64 characters)"
                ));
            }
        }
        let mut audiences: BTreeMap<&str, &str> = BTreeMap::new();
        for (name, env) in &self.environments {
            let at = format!("environments.{name}");
            if !valid_env_name(name) {
                problems.push(format!(
                    "{at}: environment names are 1-32 characters of a-z, 0-9 and '-', starting with a letter"
                ));
            }
            if env.audience.trim().is_empty() {
                problems.push(format!("{at}.audience must not be empty"));
            } else if let Some(other) = audiences.insert(&env.audience, name) {
                problems.push(format!(
                    "{at}.audience {:?} is also the audience of environment {other:?}; every environment needs its own",
                    env.audience
                ));
            }
            if env.default_ttl.is_zero() {
                problems.push(format!("{at}.default_ttl must be longer than zero"));
            }
            if env.max_ttl < env.default_ttl {
                problems.push(format!(
                    "{at}.max_ttl ({}) is below default_ttl ({}); raise max_ttl or lower default_ttl",
                    humantime::format_duration(env.max_ttl),
                    humantime::format_duration(env.default_ttl)
                ));
            }
            if env.max_ttl > MAX_TTL_CEILING {
                problems.push(format!(
                    "{at}.max_ttl ({}) is above the 24h ceiling; Airlock issues short-lived tokens only",
                    humantime::format_duration(env.max_ttl)
                ));
            }
            if let Some(scopes) = &env.scopes {
                for scope in scopes {
                    if !self.scopes.contains_key(scope) {
                        problems.push(format!(
                            "{at}.scopes names unknown scope {scope:?}; define it under [scopes.\"{scope}\"] or remove it"
                        ));
                    }
                }
            }
            let approval = &env.approval;
            if approval.quorum < 1 {
                problems.push(format!(
                    "{at}.approval.quorum is {}; it must be at least 1 (a quorum of 0 would mean no approval at all)",
                    approval.quorum
                ));
            }
            if approval.auto_approve && env.tier == Tier::Prod {
                problems.push(format!(
                    "{at}.approval.auto_approve must be false: {name} is a prod-tier environment and production always needs a human"
                ));
            }
            if approval.approver_role.trim().is_empty() {
                problems.push(format!("{at}.approval.approver_role must not be empty"));
            }
            if approval.pending_timeout.is_zero() || approval.max_grant_duration.is_zero() {
                problems.push(format!(
                    "{at}.approval.pending_timeout and max_grant_duration must be longer than zero"
                ));
            }
            for (field, value) in [
                ("pending_timeout", approval.pending_timeout),
                ("max_grant_duration", approval.max_grant_duration),
            ] {
                problems.extend(over_ceiling(&format!("{at}.approval.{field}"), value, 30 * DAY));
            }
        }
        for (name, role) in &self.roles {
            let at = format!("roles.{name}");
            for (env, scopes) in &role.tokens {
                if !self.environments.contains_key(env) {
                    problems.push(format!("{at}.tokens names unknown environment {env:?}"));
                    continue;
                }
                for scope in scopes {
                    if !self.env_offers_scope(&self.environments[env], scope) {
                        problems.push(format!(
                            "{at}.tokens.{env} names scope {scope:?}, which environment {env} does not offer"
                        ));
                    }
                }
            }
            for env in &role.escalate {
                if !self.environments.contains_key(env) {
                    problems.push(format!("{at}.escalate names unknown environment {env:?}"));
                }
            }
        }
        for (name, env) in &self.environments {
            if !self.roles.contains_key(&env.approval.approver_role) {
                problems.push(format!(
                    "environments.{name}.approval.approver_role {:?} is not a role; define [roles.{}]",
                    env.approval.approver_role, env.approval.approver_role
                ));
            }
        }
        for (name, hook) in &self.webhooks {
            let at = format!("webhooks.{name}");
            if !valid_env_name(name) {
                problems.push(format!(
                    "{at}: webhook names are 1-32 characters of a-z, 0-9 and '-', starting with a letter"
                ));
            }
            problems.extend(hook.problems(&at, self.mode));
        }
        let auth = &self.auth;
        if auth.password_min_length < 12 {
            problems.push("auth.password_min_length must be at least 12".into());
        }
        if auth.max_concurrent_password_checks == 0 {
            problems.push("auth.max_concurrent_password_checks must be at least 1".into());
        }
        if auth.session_access_ttl.is_zero() || auth.session_access_ttl > Duration::from_secs(3600) {
            problems.push("auth.session_access_ttl must be between 1s and 1h".into());
        }
        // Every duration has a ceiling, so no date arithmetic on it can overflow whatever
        // the file says (a bounded input, like every other).
        for (field, value, ceiling) in [
            ("auth.session_idle_timeout", auth.session_idle_timeout, 90 * DAY),
            ("auth.session_lifetime", auth.session_lifetime, 90 * DAY),
            ("auth.password_queue_timeout", auth.password_queue_timeout, 300),
            ("auth.throttle_max_delay", auth.throttle_max_delay, 7 * DAY),
            ("auth.device_code_lifetime", auth.device_code_lifetime, DAY),
            ("auth.device_poll_interval", auth.device_poll_interval, 3600),
            ("auth.web_session_lifetime", auth.web_session_lifetime, 7 * DAY),
            ("auth.step_up_lifetime", auth.step_up_lifetime, DAY),
            ("database.busy_timeout", self.database.busy_timeout, 600),
            ("database.acquire_timeout", self.database.acquire_timeout, 600),
            ("limits.request_timeout", self.limits.request_timeout, 3600),
        ] {
            problems.extend(over_ceiling(field, value, ceiling));
        }
        if auth.session_idle_timeout > auth.session_lifetime {
            problems.push("auth.session_idle_timeout must not exceed auth.session_lifetime".into());
        }
        if auth.device_poll_interval.is_zero() || auth.device_code_lifetime <= auth.device_poll_interval {
            problems
                .push("auth.device_code_lifetime must be longer than auth.device_poll_interval (> 0)".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Problems of the escalation rate and refusal budgets.
    fn limit_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let rate = &self.limits.escalation_rate;
        if !(1..=10_000).contains(&rate.requests) {
            problems.push(format!(
                "limits.escalation_rate.requests is {}; it must be between 1 and 10000",
                rate.requests
            ));
        }
        if rate.per < Duration::from_secs(1) || rate.per > Duration::from_secs(24 * 3600) {
            problems.push("limits.escalation_rate.per must be between 1s and 24h".into());
        }
        let r = &self.limits.refusals;
        if r.window < Duration::from_secs(1) || r.window > Duration::from_secs(3600) {
            problems.push("limits.refusals.window must be between 1s and 1h".into());
        }
        for (name, value) in [
            ("per_address", r.per_address),
            ("all_addresses", r.all_addresses),
            ("per_principal", r.per_principal),
        ] {
            if !(1..=REFUSAL_BUDGET_CEILING).contains(&value) {
                problems.push(format!(
                    "limits.refusals.{name} is {value}; it must be between 1 and {REFUSAL_BUDGET_CEILING}"
                ));
            }
        }
        if r.all_addresses < r.per_address {
            problems.push(format!(
                "limits.refusals.all_addresses ({}) is below per_address ({}); raise all_addresses",
                r.all_addresses, r.per_address
            ));
        }
        problems
    }

    /// The environment named `name`, if configured.
    pub fn environment(&self, name: &str) -> Option<&EnvironmentSettings> {
        self.environments.get(name)
    }

    /// Scopes offered in `env` (the catalogue, or the environment's subset of it).
    pub fn env_offers_scope(&self, env: &EnvironmentSettings, scope: &str) -> bool {
        self.scopes.contains_key(scope)
            && env
                .scopes
                .as_ref()
                .is_none_or(|list| list.iter().any(|s| s == scope))
    }

    /// Whether any of `roles` is an admin role.
    pub fn is_admin(&self, roles: &[String]) -> bool {
        roles.iter().any(|r| self.roles.get(r).is_some_and(|r| r.admin))
    }

    /// The issuer of environment `name`.
    pub fn issuer(&self, name: &str) -> String {
        format!("{}/envs/{name}", self.public_url)
    }

    /// The effective settings as TOML with secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        let mut value = toml::Value::try_from(self).unwrap_or(toml::Value::Table(Default::default()));
        if let toml::Value::Table(t) = &mut value {
            t.insert(
                "database_url".into(),
                toml::Value::String(redact_url(&self.database_url)),
            );
            if self.master_key.is_some() {
                t.insert("master_key".into(), toml::Value::String("[redacted]".into()));
            }
            if let Some(toml::Value::Table(hooks)) = t.get_mut("webhooks") {
                for (name, hook) in hooks.iter_mut() {
                    let (Some(settings), toml::Value::Table(h)) = (self.webhooks.get(name), hook) else {
                        continue;
                    };
                    h.insert("url".into(), toml::Value::String(settings.redacted_url()));
                    if settings.secret.is_some() {
                        h.insert("secret".into(), toml::Value::String("[redacted]".into()));
                    }
                }
            }
        }
        toml::to_string_pretty(&value).unwrap_or_default()
    }

    /// The effective settings as JSON with secrets redacted.
    pub fn to_redacted_json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(o) = value.as_object_mut() {
            o.insert("database_url".into(), redact_url(&self.database_url).into());
            if self.master_key.is_some() {
                o.insert("master_key".into(), "[redacted]".into());
            }
            if let Some(hooks) = o.get_mut("webhooks").and_then(|h| h.as_object_mut()) {
                for (name, hook) in hooks.iter_mut() {
                    let (Some(settings), Some(h)) = (self.webhooks.get(name), hook.as_object_mut()) else {
                        continue;
                    };
                    h.insert("url".into(), settings.redacted_url().into());
                    if settings.secret.is_some() {
                        h.insert("secret".into(), "[redacted]".into());
                    }
                }
            }
        }
        value
    }

    /// The master key material as configured, if any (inline or from its file).
    pub fn configured_master_key(&self) -> Result<Option<SecretString>, ConfigError> {
        if let Some(k) = &self.master_key {
            return Ok(Some(SecretString::from(k.expose_secret().trim().to_string())));
        }
        if let Some(path) = &self.master_key_file {
            return Ok(Some(SecretString::from(read_secret_file(
                path,
                "master_key_file",
            )?)));
        }
        Ok(None)
    }
}

fn read_secret_file(path: &Path, what: &str) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| ConfigError::Load(format!("cannot read {what} {}: {e}", path.display())))
}

fn is_config_key(key: &str) -> bool {
    // figment may hand us the key before or after `__` is turned into `.`.
    let top = key.split("__").next().unwrap_or_default();
    let top = top.split('.').next().unwrap_or_default().to_ascii_lowercase();
    CONFIG_KEYS.contains(&top.as_str())
}

/// `AIRLOCK_*` variables that are neither configuration nor known to the CLI: likely typos.
pub fn unexpected_env_vars() -> Vec<String> {
    std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| k.starts_with("AIRLOCK_"))
        .filter(|k| !NON_CONFIG_VARS.contains(&k.as_str()))
        .filter(|k| {
            let rest = k["AIRLOCK_".len()..].to_ascii_lowercase();
            let top = rest.split("__").next().unwrap_or_default().to_string();
            !CONFIG_KEYS.contains(&top.as_str())
        })
        .collect()
}

/// Environment names: 1-32 of `a-z0-9-`, starting with a letter.
pub fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && name.len() <= 32
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Scope names: 1-64 of letters, digits and `:_.-` (a subset of RFC 6749's scope-token).
pub fn valid_scope_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '.' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_with(extra: &str) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("extra.toml");
        std::fs::write(&path, extra).unwrap();
        Settings::load(&Sources {
            file: Some(path),
            env: false,
        })
    }

    fn problems(extra: &str) -> Vec<String> {
        match load_with(extra) {
            Err(ConfigError::Invalid(p)) => p,
            other => panic!("expected validation problems, got {other:?}"),
        }
    }

    #[test]
    fn every_duration_has_a_ceiling_so_date_arithmetic_cannot_overflow() {
        // Arrange: durations far beyond any sensible value (and beyond what a date can
        // hold once added to now), in the auth, database, limits and approval tables.
        let p = problems(
            "[auth]\nsession_lifetime = \"1000000years\"\nsession_idle_timeout = \"500000years\"\n\
             step_up_lifetime = \"400days\"\n[database]\nbusy_timeout = \"2h\"\n\
             [limits]\nrequest_timeout = \"3h\"\n\
             [environments.staging.approval]\npending_timeout = \"100000years\"\nmax_grant_duration = \"31days\"\n",
        );
        // Assert: each one is named, with its ceiling.
        for field in [
            "auth.session_lifetime",
            "auth.session_idle_timeout",
            "auth.step_up_lifetime",
            "database.busy_timeout",
            "limits.request_timeout",
            "environments.staging.approval.pending_timeout",
            "environments.staging.approval.max_grant_duration",
        ] {
            assert!(
                p.iter()
                    .any(|m| m.starts_with(field) && m.contains("above its ceiling")),
                "{field}: {p:?}"
            );
        }
    }

    #[test]
    fn the_default_configuration_is_valid() {
        let s = Settings::load(&Sources::default()).unwrap();
        assert_eq!(s.environments.len(), 3);
        assert_eq!(s.environments["prod"].tier, Tier::Prod);
        assert!(s.scopes["db:drop"].destructive);
        assert!(s.scopes["volume:delete"].destructive);
        assert!(!s.scopes["db:read"].destructive);
        // prod has the shortest lifetimes
        let prod = &s.environments["prod"];
        for env in s.environments.values() {
            assert!(prod.max_ttl <= env.max_ttl);
            assert!(prod.default_ttl <= env.default_ttl);
        }
    }

    #[test]
    fn max_ttl_below_default_ttl_is_refused() {
        let p = problems("[environments.dev]\ndefault_ttl = \"30m\"\nmax_ttl = \"10m\"\n");
        assert!(
            p.iter()
                .any(|m| m.contains("environments.dev.max_ttl") && m.contains("below default_ttl")),
            "{p:?}"
        );
    }

    #[test]
    fn the_default_limits_match_their_documented_values() {
        let s = Settings::load(&Sources::default()).unwrap();
        let rate = &s.limits.escalation_rate;
        assert_eq!((rate.requests, rate.per), (10, Duration::from_secs(60)));
        let r = &s.limits.refusals;
        assert_eq!(r.window, Duration::from_secs(10));
        assert_eq!((r.per_address, r.all_addresses, r.per_principal), (30, 300, 30));
        // The file and the code agree, so an operator file without these tables gets them too.
        let d = RefusalSettings::default();
        assert_eq!(
            (d.window, d.per_address, d.all_addresses, d.per_principal),
            (r.window, 30, 300, 30)
        );
        let d = EscalationRateSettings::default();
        assert_eq!((d.requests, d.per), (rate.requests, rate.per));
    }

    #[test]
    fn escalation_rates_and_refusal_budgets_are_checked() {
        let p = problems(
            "[limits.escalation_rate]\nrequests = 0\nper = \"0s\"\n[limits.refusals]\nwindow = \"2h\"\nper_address = 50\nall_addresses = 40\nper_principal = 0\n",
        );
        for needle in [
            "limits.escalation_rate.requests is 0",
            "limits.escalation_rate.per",
            "limits.refusals.window",
            "limits.refusals.per_principal is 0",
            "all_addresses (40) is below per_address (50)",
        ] {
            assert!(p.iter().any(|m| m.contains(needle)), "{needle}: {p:?}");
        }
    }

    #[test]
    fn max_ttl_above_a_day_is_refused() {
        let p = problems("[environments.dev]\nmax_ttl = \"25h\"\n");
        assert!(p.iter().any(|m| m.contains("24h ceiling")), "{p:?}");
    }

    #[test]
    fn auto_approval_in_prod_is_refused() {
        let p = problems("[environments.prod.approval]\nauto_approve = true\n");
        assert!(
            p.iter()
                .any(|m| m.contains("environments.prod.approval.auto_approve")),
            "{p:?}"
        );
    }

    #[test]
    fn an_environment_without_an_approval_section_gets_the_default_policy() {
        let s = load_with(
            "[environments.qa]\ntier = \"nonprod\"\naudience = \"airlock:qa\"\ndefault_ttl = \"5m\"\nmax_ttl = \"10m\"\n",
        )
        .expect("valid with the default policy");
        let qa = &s.environments["qa"].approval;
        assert_eq!(qa.quorum, 1);
        assert_eq!(qa.approver_role, "approver");
        assert_eq!(qa.pending_timeout, Duration::from_secs(3600));
        assert!(!qa.auto_approve);
    }

    #[test]
    fn a_quorum_of_zero_is_refused() {
        let p = problems("[environments.staging.approval]\nquorum = 0\n");
        assert!(
            p.iter()
                .any(|m| m.contains("quorum is 0") && m.contains("at least 1")),
            "{p:?}"
        );
    }

    #[test]
    fn an_unknown_scope_in_an_environment_is_refused() {
        let p = problems("[environments.dev]\nscopes = [\"db:read\", \"db:nuke\"]\n");
        assert!(p.iter().any(|m| m.contains("unknown scope \"db:nuke\"")), "{p:?}");
    }

    #[test]
    fn an_environment_without_required_fields_is_refused() {
        match load_with("[environments.qa]\ntier = \"nonprod\"\n") {
            Err(ConfigError::Load(m)) => assert!(m.contains("missing field"), "{m}"),
            other => panic!("expected a load error, got {other:?}"),
        }
    }

    #[test]
    fn an_unknown_key_is_refused() {
        match load_with("[environments.dev]\nmax_tll = \"10m\"\n") {
            Err(ConfigError::Load(m)) => assert!(m.contains("max_tll"), "{m}"),
            other => panic!("expected a load error, got {other:?}"),
        }
    }

    #[test]
    fn connection_limits_have_bounds() {
        let s = Settings::load(&Sources::default()).unwrap();
        assert_eq!(s.limits.header_read_timeout, Duration::from_secs(10));
        assert_eq!(s.limits.max_connections, 512);
        let p = problems("[limits]\nheader_read_timeout = \"0s\"\nmax_connections = 0\n");
        assert!(
            p.iter().any(|m| m.contains("limits.header_read_timeout")),
            "{p:?}"
        );
        assert!(p.iter().any(|m| m.contains("limits.max_connections")), "{p:?}");
        let p = problems("[limits]\nheader_read_timeout = \"1h\"\nmax_connections = 1000000\n");
        assert_eq!(p.len(), 2, "{p:?}");
    }

    #[test]
    fn shared_audiences_are_refused() {
        let p = problems("[environments.staging]\naudience = \"airlock:prod\"\n");
        assert!(p.iter().any(|m| m.contains("also the audience")), "{p:?}");
    }

    #[test]
    fn all_problems_are_reported_together() {
        let p = problems(
            "[environments.prod.approval]\nauto_approve = true\nquorum = 0\n[environments.dev]\nmax_ttl = \"1s\"\n",
        );
        assert!(p.len() >= 3, "{p:?}");
    }

    #[test]
    fn environment_and_scope_names_are_checked() {
        assert!(valid_env_name("prod-eu1"));
        for bad in ["", "Prod", "1prod", "pr od", "prod/x", &"a".repeat(33)] {
            assert!(!valid_env_name(bad), "{bad:?}");
        }
        assert!(valid_scope_name("db:read") && valid_scope_name("s3.bucket-x_y"));
        for bad in ["", "db read", "db\"x", &"s".repeat(65)] {
            assert!(!valid_scope_name(bad), "{bad:?}");
        }
        let p = problems(
            "[environments.Bad-Env]\ntier = \"nonprod\"\naudience = \"x\"\ndefault_ttl = \"1m\"\nmax_ttl = \"1m\"\n[environments.Bad-Env.approval]\nquorum = 1\napprover_role = \"approver\"\npending_timeout = \"1h\"\nmax_grant_duration = \"1h\"\nauto_approve = false\n",
        );
        assert!(
            p.iter()
                .any(|m| m.contains("environments.Bad-Env") && m.contains("environment names")),
            "{p:?}"
        );
    }

    #[test]
    fn database_passwords_are_redacted() {
        assert_eq!(redact_url("postgres://u:hunter2@db/x"), "postgres://u:***@db/x");
        assert!(!redact_url("host=db password=hunter2").contains("hunter2"));
        let q = redact_url("postgres://u@db/x?sslmode=require&password=hunter2");
        assert!(!q.contains("hunter2") && q.contains("sslmode=require"), "{q}");
    }

    const HOOK_SECRET: &str = "whsec-0123456789abcdef";

    fn hook(body: &str) -> String {
        format!("[webhooks.ops]\nurl = \"https://hooks.example.com/services/T0/B0/tok3n\"\n{body}")
    }

    /// The webhook problems of a config (none when it loads).
    fn webhook_problems(extra: &str) -> Vec<String> {
        match load_with(extra) {
            Ok(_) => vec![],
            Err(ConfigError::Invalid(p)) => p.into_iter().filter(|p| p.contains("webhooks.")).collect(),
            Err(e) => panic!("expected validation problems, got {e:?}"),
        }
    }

    #[test]
    fn a_webhook_gets_default_events_and_timings() {
        let s = load_with(&hook(&format!("secret = \"{HOOK_SECRET}\"\n"))).unwrap();
        let ops = &s.webhooks["ops"];
        assert_eq!(ops.events, WEBHOOK_EVENTS);
        assert_eq!(ops.timeout, Duration::from_secs(5));
        assert_eq!(ops.max_attempts, 5);
        assert_eq!(ops.retry_base, Duration::from_secs(2));
        assert!(ops.wants("grant.revoked"));
        assert_eq!(ops.signing_secret().unwrap().expose_secret(), HOOK_SECRET);
        // No webhook unless the operator configures one.
        assert!(Settings::load(&Sources::default()).unwrap().webhooks.is_empty());
    }

    #[test]
    fn a_webhook_without_a_secret_is_refused() {
        let p = webhook_problems(&hook(""));
        assert!(
            p.iter()
                .any(|m| m.contains("webhooks.ops") && m.contains("secret is required")),
            "{p:?}"
        );
    }

    #[test]
    fn a_webhook_with_both_secret_and_secret_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hook.secret");
        std::fs::write(&file, HOOK_SECRET).unwrap();
        let p = webhook_problems(&hook(&format!(
            "secret = \"{HOOK_SECRET}\"\nsecret_file = {:?}\n",
            file.display().to_string()
        )));
        assert!(p.iter().any(|m| m.contains("not both")), "{p:?}");
    }

    #[test]
    fn a_webhook_secret_can_come_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hook.secret");
        std::fs::write(&file, format!("{HOOK_SECRET}\n")).unwrap();
        let s = load_with(&hook(&format!(
            "secret_file = {:?}\n",
            file.display().to_string()
        )))
        .unwrap();
        assert_eq!(
            s.webhooks["ops"].signing_secret().unwrap().expose_secret(),
            HOOK_SECRET
        );

        let missing = dir.path().join("absent");
        let p = webhook_problems(&hook(&format!(
            "secret_file = {:?}\n",
            missing.display().to_string()
        )));
        assert!(p.iter().any(|m| m.contains("cannot read secret_file")), "{p:?}");
    }

    #[test]
    fn a_short_webhook_secret_is_refused() {
        let p = webhook_problems(&hook("secret = \"tooshort\"\n"));
        assert!(p.iter().any(|m| m.contains("shorter than 16 bytes")), "{p:?}");
        assert!(!p.iter().any(|m| m.contains("tooshort")), "{p:?}");
    }

    #[test]
    fn a_bad_webhook_url_is_refused_without_being_echoed() {
        for url in [
            "ftp://hooks.example.com/x",
            "not a url tok3n",
            "https://",
            "unix:/run/tok3n",
        ] {
            let p = webhook_problems(&format!(
                "[webhooks.ops]\nurl = {url:?}\nsecret = \"{HOOK_SECRET}\"\n"
            ));
            assert!(
                p.iter()
                    .any(|m| m.contains("webhooks.ops.url is not an http(s) URL")),
                "{url}: {p:?}"
            );
            assert!(!p.iter().any(|m| m.contains("tok3n")), "{url}: {p:?}");
        }
        let p = webhook_problems(&format!(
            "[webhooks.ops]\nurl = \"https://u:pw@hooks.example.com/\"\nsecret = \"{HOOK_SECRET}\"\n"
        ));
        assert!(p.iter().any(|m| m.contains("user name or password")), "{p:?}");
    }

    #[test]
    fn plain_http_webhooks_are_refused_in_production_except_to_loopback() {
        let prod = "mode = \"production\"\npublic_url = \"https://airlock.example.com\"\n";
        for (url, ok) in [
            ("http://hooks.example.com/x", false),
            ("https://hooks.example.com/x", true),
            ("http://127.0.0.1:9000/x", true),
            ("http://localhost:9000/x", true),
            ("http://[::1]:9000/x", true),
        ] {
            let p = webhook_problems(&format!(
                "{prod}[webhooks.ops]\nurl = {url:?}\nsecret = \"{HOOK_SECRET}\"\n"
            ));
            assert_eq!(p.is_empty(), ok, "{url}: {p:?}");
        }
        // Development mode allows plain http anywhere.
        assert!(
            load_with(&format!(
                "[webhooks.ops]\nurl = \"http://hooks.example.com/x\"\nsecret = \"{HOOK_SECRET}\"\n"
            ))
            .is_ok()
        );
    }

    #[test]
    fn unknown_webhook_events_and_bad_timings_are_refused() {
        let p = webhook_problems(&hook(&format!(
            "secret = \"{HOOK_SECRET}\"\nevents = [\"escalation.created\", \"escalation.approved\"]\nmax_attempts = 11\ntimeout = \"0s\"\nretry_base = \"10m\"\n"
        )));
        assert!(
            p.iter()
                .any(|m| m.contains("unknown event \"escalation.approved\"")),
            "{p:?}"
        );
        assert!(p.iter().any(|m| m.contains("max_attempts is 11")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("webhooks.ops.timeout")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("webhooks.ops.retry_base")), "{p:?}");
        let p = webhook_problems(&hook(&format!("secret = \"{HOOK_SECRET}\"\nevents = []\n")));
        assert!(p.iter().any(|m| m.contains("events is empty")), "{p:?}");
        let p = webhook_problems(&hook(&format!("secret = \"{HOOK_SECRET}\"\nmax_attempts = 0\n")));
        assert!(p.iter().any(|m| m.contains("max_attempts is 0")), "{p:?}");
    }

    #[test]
    fn webhook_names_are_checked() {
        let p = webhook_problems(&format!(
            "[webhooks.Ops_Team]\nurl = \"https://hooks.example.com/\"\nsecret = \"{HOOK_SECRET}\"\n"
        ));
        assert!(
            p.iter()
                .any(|m| m.contains("webhooks.Ops_Team") && m.contains("webhook names")),
            "{p:?}"
        );
    }

    #[test]
    fn webhook_secrets_and_url_paths_are_redacted() {
        let s = load_with(&hook(&format!("secret = \"{HOOK_SECRET}\"\n"))).unwrap();
        let toml = s.to_redacted_toml();
        let json = s.to_redacted_json().to_string();
        let debug = format!("{s:?}");
        for shown in [&toml, &json, &debug] {
            assert!(!shown.contains(HOOK_SECRET), "{shown}");
            assert!(!shown.contains("tok3n"), "{shown}");
            assert!(shown.contains("hooks.example.com"), "{shown}");
        }
        assert!(toml.contains("secret = \"[redacted]\""), "{toml}");
        assert_eq!(s.to_redacted_json()["webhooks"]["ops"]["secret"], "[redacted]");
        assert_eq!(
            s.to_redacted_json()["webhooks"]["ops"]["url"],
            "https://hooks.example.com/…"
        );
        assert_eq!(
            redact_webhook_url("http://127.0.0.1:9000/a?token=x"),
            "http://127.0.0.1:9000/…"
        );
        assert_eq!(redact_webhook_url("nonsense tok3n"), "[redacted]");
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn webhooks_can_be_configured_from_environment_variables() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("AIRLOCK_WEBHOOKS__OPS__URL", "https://hooks.example.com/x");
            jail.set_env("AIRLOCK_WEBHOOKS__OPS__SECRET", HOOK_SECRET);
            jail.set_env("AIRLOCK_WEBHOOKS__OPS__MAX_ATTEMPTS", "3");
            let s = Settings::load(&Sources {
                file: None,
                env: true,
            })
            .unwrap();
            assert_eq!(s.webhooks["ops"].max_attempts, 3);
            assert_eq!(
                s.webhooks["ops"].signing_secret().unwrap().expose_secret(),
                HOOK_SECRET
            );
            assert!(
                unexpected_env_vars()
                    .iter()
                    .all(|v| !v.starts_with("AIRLOCK_WEBHOOKS"))
            );
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn environment_variables_override_files() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("AIRLOCK_ENVIRONMENTS__PROD__MAX_TTL", "10m");
            jail.set_env("AIRLOCK_LISTEN", "127.0.0.1:9999");
            jail.set_env("AIRLOCK_TOKEN", "not config");
            let s = Settings::load(&Sources {
                file: None,
                env: true,
            })
            .unwrap();
            assert_eq!(s.environments["prod"].max_ttl, Duration::from_secs(600));
            assert_eq!(s.listen, "127.0.0.1:9999");
            Ok(())
        });
    }
}
