//! The sections of the settings: people and sessions, the database, limits, and each
//! environment with its escalation policy.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Tier;

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

/// One environment.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentSettings {
    /// Its name (the key of its `[environments.NAME]` table), set when settings load.
    #[serde(skip)]
    pub name: String,
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

impl EnvironmentSettings {
    /// The `iss` of its tokens: `{public_url}/envs/{name}`.
    pub fn issuer(&self, public_url: &str) -> String {
        format!("{public_url}/envs/{}", self.name)
    }

    /// The key set that signs its tokens (invariant 1: its own).
    pub fn key_set(&self) -> crate::domain::KeySet {
        crate::domain::KeySet::Environment(self.name.clone())
    }

    /// Whether it is production.
    pub fn is_prod(&self) -> bool {
        self.tier == Tier::Prod
    }
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
