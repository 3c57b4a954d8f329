//! Plain data shared by every layer: agents, signing keys, audit events.
//!
//! No I/O here. Types that hold secrets never derive `Debug` over the secret.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// Prefix of agent client ids.
pub const CLIENT_ID_PREFIX: &str = "agt_";

/// The CLI's public client id (device flow, refresh, token exchange); the `client_id`
/// of every token a person holds.
pub const CLI_CLIENT_ID: &str = "airlock-cli";

/// A new client id: `agt_` and 32 hex digits.
pub fn new_client_id() -> String {
    format!("{CLIENT_ID_PREFIX}{}", Uuid::new_v4().simple())
}

/// Whether `s` has the shape of a client id. Used before echoing a presented id into
/// the audit trail, so a secret pasted into the wrong field is never recorded.
pub fn looks_like_client_id(s: &str) -> bool {
    s.len() == CLIENT_ID_PREFIX.len() + 32
        && s.starts_with(CLIENT_ID_PREFIX)
        && s[CLIENT_ID_PREFIX.len()..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// Current time truncated to microseconds, the precision both stores keep.
pub fn now() -> OffsetDateTime {
    truncate_micros(OffsetDateTime::now_utc())
}

/// Drop sub-microsecond precision.
pub fn truncate_micros(t: OffsetDateTime) -> OffsetDateTime {
    let nanos = t.nanosecond();
    t.replace_nanosecond(nanos - nanos % 1000).unwrap_or(t)
}

/// A machine identity bound to one environment for its whole life (invariant 2). How it
/// looks on the wire is `crate::wire::Agent` (never with its secret's hash).
#[derive(Clone, PartialEq, Eq)]
pub struct Agent {
    /// Internal id.
    pub id: Uuid,
    /// OAuth client id, `agt_...`.
    pub client_id: String,
    /// Human-friendly name, unique within its environment.
    pub name: String,
    /// The one environment this agent can ever get tokens for.
    pub environment: String,
    /// Scopes it may ask for.
    pub allowed_scopes: Vec<String>,
    /// Scopes it gets when it asks for none.
    pub default_scopes: Vec<String>,
    /// A disabled agent authenticates nowhere.
    pub disabled: bool,
    /// Creation time.
    pub created_at: OffsetDateTime,
    /// Last change.
    pub updated_at: OffsetDateTime,
    /// The person who answers for this agent, fixed at registration. They sponsor its
    /// escalation requests, so their approval never counts toward them. `None` only for
    /// agents registered before any person existed (or before owners were recorded).
    pub owner_id: Option<Uuid>,
    /// The owner's username, as of reading.
    pub owner: Option<String>,
    /// Keyed hash of the secret.
    pub secret_hash: Vec<u8>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("client_id", &self.client_id)
            .field("name", &self.name)
            .field("environment", &self.environment)
            .field("allowed_scopes", &self.allowed_scopes)
            .field("disabled", &self.disabled)
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

/// Which key set a signing key belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeySet {
    /// An environment's access-token keys.
    Environment(String),
    /// Airlock's own session-token key, accepted by no environment.
    Session,
}

impl KeySet {
    /// Stored form: `env:NAME` or `session`.
    pub fn as_db(&self) -> String {
        match self {
            KeySet::Environment(e) => format!("env:{e}"),
            KeySet::Session => "session".into(),
        }
    }

    /// Parse the stored form.
    pub fn from_db(s: &str) -> Option<KeySet> {
        if s == "session" {
            Some(KeySet::Session)
        } else {
            s.strip_prefix("env:").map(|e| KeySet::Environment(e.to_string()))
        }
    }
}

/// A signing key as stored: public half in clear, private half sealed.
#[derive(Clone)]
pub struct StoredKey {
    /// RFC 7638 thumbprint of the public key.
    pub kid: String,
    /// Key set it signs for.
    pub keyset: KeySet,
    /// Ed25519 public key.
    pub public_key: Vec<u8>,
    /// Private key sealed under the master key with the kid as context.
    pub sealed_private_key: Vec<u8>,
    /// `active` keys sign; `retired` keys are still published for verification.
    pub status: KeyStatus,
    /// Creation time.
    pub created_at: OffsetDateTime,
}

/// Lifecycle of a signing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    /// Signs new tokens.
    Active,
    /// Published in the JWKS, signs nothing.
    Retired,
}

impl KeyStatus {
    /// Stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Retired => "retired",
        }
    }
}

/// Whether an audited decision went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Done: issued, created, changed.
    Success,
    /// Refused by policy or authentication.
    Refused,
}

impl Outcome {
    /// Stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Refused => "refused",
        }
    }

    /// Parse the stored form.
    pub fn parse(s: &str) -> Option<Outcome> {
        match s {
            "success" => Some(Outcome::Success),
            "refused" => Some(Outcome::Refused),
            _ => None,
        }
    }
}

/// An audit event before it takes its place in the chain.
///
/// SECURITY: `details` must never contain a secret or a token. Callers put ids
/// (`jti`, `client_id`, `kid`) and reasons there, nothing else.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewAuditEvent {
    /// Unique id (UUIDv7, time-ordered).
    pub id: Uuid,
    /// When the decision was made.
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// What happened, e.g. `token.issued`, `cross_environment_attempt`.
    pub kind: String,
    /// Who did it: `agent:agt_...`, `cli:alice`, `system`, `anonymous`.
    pub actor: String,
    /// Environment concerned, if any.
    pub environment: Option<String>,
    /// What it was done to (a client id, a key id), if anything.
    pub subject: Option<String>,
    /// Success or refusal.
    pub outcome: Outcome,
    /// Structured, secret-free details.
    pub details: serde_json::Value,
}

impl NewAuditEvent {
    /// A new event stamped now.
    pub fn new(kind: &str, actor: impl Into<String>, outcome: Outcome) -> NewAuditEvent {
        NewAuditEvent {
            id: Uuid::now_v7(),
            time: now(),
            kind: kind.to_string(),
            actor: actor.into(),
            environment: None,
            subject: None,
            outcome,
            details: serde_json::Value::Object(Default::default()),
        }
    }

    /// Set the environment.
    pub fn env(mut self, env: impl Into<String>) -> Self {
        self.environment = Some(env.into());
        self
    }

    /// Set the subject.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// Add one detail.
    pub fn detail(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        if let serde_json::Value::Object(map) = &mut self.details {
            map.insert(key.to_string(), value.into());
        }
        self
    }
}

/// An audit event in the chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the chain, from 1, without gaps.
    pub seq: i64,
    /// The event.
    #[serde(flatten)]
    pub event: NewAuditEvent,
    /// Hash of the previous record (zeros for the first), hex.
    #[serde(with = "hex::serde")]
    pub prev_hash: Vec<u8>,
    /// Hash of this record, hex.
    #[serde(with = "hex::serde")]
    pub hash: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_have_a_recognisable_shape() {
        let id = new_client_id();
        assert!(looks_like_client_id(&id));
        assert!(!looks_like_client_id("airlock_secret_abc"));
        assert!(!looks_like_client_id(&format!("{id}x")));
    }
}

/// A person who signs in. How they look on the wire is `crate::wire::User`.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    /// Internal id; the `sub` of their tokens.
    pub id: Uuid,
    /// Sign-in name, unique, lowercase.
    pub username: String,
    /// Argon2id PHC string.
    pub password_hash: String,
    /// Role names from the configuration.
    pub roles: Vec<String>,
    /// Active TOTP secret, sealed under the master key.
    pub totp_sealed: Option<Vec<u8>>,
    /// TOTP secret awaiting its first code.
    pub totp_pending_sealed: Option<Vec<u8>>,
    /// Last TOTP time step used (replay protection).
    pub totp_last_step: Option<i64>,
    /// A disabled person signs in nowhere and their sessions are ended.
    pub disabled: bool,
    /// Creation time.
    pub created_at: OffsetDateTime,
    /// Last change.
    pub updated_at: OffsetDateTime,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("username", &self.username)
            .field("roles", &self.roles)
            .field("totp_enrolled", &self.totp_sealed.is_some())
            .field("disabled", &self.disabled)
            .finish_non_exhaustive()
    }
}

impl User {
    /// Whether TOTP is enrolled and active.
    pub fn totp_enrolled(&self) -> bool {
        self.totp_sealed.is_some()
    }
}

/// Kind of session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionKind {
    /// CLI: session access tokens and a rotating refresh token.
    Cli,
    /// Browser: an opaque cookie for the sign-in pages.
    Web,
}

impl SessionKind {
    /// Stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionKind::Cli => "cli",
            SessionKind::Web => "web",
        }
    }
}

/// A signed-in person's session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Session id (`sid` claim).
    pub id: Uuid,
    /// Whose.
    pub user_id: Uuid,
    /// CLI or web.
    pub kind: SessionKind,
    /// Keyed hash of the web cookie (web sessions only); never serialised.
    #[serde(skip)]
    pub secret_hash: Option<Vec<u8>>,
    /// Start.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last use (idle timeout).
    #[serde(with = "time::serde::rfc3339")]
    pub last_used_at: OffsetDateTime,
    /// Absolute end.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// When it was revoked, if it was.
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    /// Why.
    pub revoked_reason: Option<String>,
    /// Signed in with a TOTP code (admin and approver roles count only then).
    pub totp_verified: bool,
    /// Last confirmation with a fresh TOTP code (admin changes need a recent one).
    #[serde(with = "time::serde::rfc3339::option")]
    pub stepped_up_at: Option<OffsetDateTime>,
}

/// State of a device authorization (RFC 8628).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    /// Waiting for the person.
    Pending,
    /// Approved; the next poll gets the session.
    Approved,
    /// Denied.
    Denied,
    /// Approved and redeemed.
    Consumed,
}

impl DeviceStatus {
    /// Stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Pending => "pending",
            DeviceStatus::Approved => "approved",
            DeviceStatus::Denied => "denied",
            DeviceStatus::Consumed => "consumed",
        }
    }

    /// Parse the stored form.
    pub fn parse(s: &str) -> Option<DeviceStatus> {
        Some(match s {
            "pending" => DeviceStatus::Pending,
            "approved" => DeviceStatus::Approved,
            "denied" => DeviceStatus::Denied,
            "consumed" => DeviceStatus::Consumed,
            _ => return None,
        })
    }
}

/// A device authorization request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCode {
    /// Internal id.
    pub id: Uuid,
    /// Hash of the device code (the code itself is only ever with the CLI).
    pub device_code_hash: Vec<u8>,
    /// What the person types, `XXXX-XXXX`.
    pub user_code: String,
    /// The public client that asked.
    pub client_id: String,
    /// Where it stands.
    pub status: DeviceStatus,
    /// Current minimum polling interval, seconds.
    pub interval_secs: i64,
    /// Start.
    pub created_at: OffsetDateTime,
    /// End.
    pub expires_at: OffsetDateTime,
    /// Last poll.
    pub last_polled_at: Option<OffsetDateTime>,
    /// Who approved or denied.
    pub user_id: Option<Uuid>,
    /// Whether the approving browser session was signed in with TOTP.
    pub totp_verified: bool,
    /// Address the request came from (shown on the approval page).
    pub client_address: Option<String>,
    /// The requesting program's `User-Agent` (cleaned and bounded), shown on the page.
    pub client_user_agent: Option<String>,
}

/// The state of one throttle key after counting an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// Attempts in the current window, this one included.
    pub attempts: i64,
    /// No attempt is considered before this (Unix microseconds; 0 = not blocked).
    pub blocked_until_us: i64,
}

/// Where an escalation request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EscalationState {
    /// Waiting for approvers.
    Pending,
    /// Quorum reached: a grant exists.
    Approved,
    /// An approver said no.
    Denied,
    /// Nobody decided in time.
    Expired,
    /// The requester (or an admin) withdrew it.
    Cancelled,
}

impl EscalationState {
    /// Stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            EscalationState::Pending => "pending",
            EscalationState::Approved => "approved",
            EscalationState::Denied => "denied",
            EscalationState::Expired => "expired",
            EscalationState::Cancelled => "cancelled",
        }
    }

    /// Parse the stored form.
    pub fn parse(s: &str) -> Option<EscalationState> {
        Some(match s {
            "pending" => EscalationState::Pending,
            "approved" => EscalationState::Approved,
            "denied" => EscalationState::Denied,
            "expired" => EscalationState::Expired,
            "cancelled" => EscalationState::Cancelled,
            _ => return None,
        })
    }
}

/// Who asked for an escalation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequesterKind {
    /// A signed-in person.
    Person,
    /// A registered agent, or a process acting for a person (its sponsor).
    Agent,
}

impl RequesterKind {
    /// Stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            RequesterKind::Person => "person",
            RequesterKind::Agent => "agent",
        }
    }
}

/// One person's approval of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// The approver's user id.
    pub approver_id: Uuid,
    /// Their username.
    pub approver: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub approved_at: OffsetDateTime,
}

/// A request for production or destructive access, waiting for (or past) human sign-off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Escalation {
    /// Id.
    pub id: Uuid,
    /// Target environment.
    pub environment: String,
    /// Scopes asked for.
    pub scopes: Vec<String>,
    /// How long the grant lasts once approved (already capped by policy).
    pub duration_secs: i64,
    /// Why (shown to approvers).
    pub reason: String,
    /// Person or agent.
    pub requester_kind: RequesterKind,
    /// Username, agent client id, or `process:NAME` of a delegated process.
    pub requester: String,
    /// The requesting person's id, when a person asked.
    pub requester_user_id: Option<Uuid>,
    /// The person who launched the requesting process (the `act` chain), or the owner of
    /// the requesting registered agent; their approval never counts toward the quorum.
    pub sponsor: Option<String>,
    /// The sponsor's id.
    pub sponsor_user_id: Option<Uuid>,
    /// Who will hold the grant: `user:<id>` or `agent:<client_id>`.
    pub holder: String,
    /// For a delegated process: the only actor the grant covers.
    pub holder_actor: Option<String>,
    /// Distinct approvals needed.
    pub quorum: u32,
    /// Where it stands.
    pub state: EscalationState,
    /// Created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Pending until.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// When it left `pending`.
    #[serde(with = "time::serde::rfc3339::option")]
    pub decided_at: Option<OffsetDateTime>,
    /// Who ended it (approver who completed the quorum, denier, canceller, `system`).
    pub decided_by: Option<String>,
    /// The denial or cancellation reason.
    pub decision_reason: Option<String>,
    /// Approvals so far, oldest first.
    pub approvals: Vec<Approval>,
}

impl Escalation {
    /// The owner of the requesting registered agent, who sponsors its requests (their
    /// approval never counts). `None` for people, delegated processes and unowned agents.
    pub fn agent_owner(&self) -> Option<&str> {
        if self.requester_kind == RequesterKind::Agent && self.holder.starts_with("agent:") {
            self.sponsor.as_deref()
        } else {
            None
        }
    }
}

/// One step in a request's history (also in the audit trail).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EscalationEvent {
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// `created`, `approval`, `approved`, `denied`, `cancelled`, `expired`, `grant_bound`,
    /// `grant_revoked`, `grant_ended`.
    pub kind: String,
    /// Who.
    pub actor: String,
    /// Free text (a reason), if any.
    pub note: Option<String>,
}

/// Access an approved escalation gives: environment, scopes, holder, and a time window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Id (the `grant` claim of tokens minted under it).
    pub id: Uuid,
    /// The request it came from.
    pub escalation_id: Uuid,
    /// Environment.
    pub environment: String,
    /// Scopes covered.
    pub scopes: Vec<String>,
    /// `user:<id>` or `agent:<client_id>`.
    pub holder: String,
    /// For a delegated process: the only actor it covers.
    pub holder_actor: Option<String>,
    /// Start (approval time).
    #[serde(with = "time::serde::rfc3339")]
    pub starts_at: OffsetDateTime,
    /// End: no token under this grant lives past it.
    #[serde(with = "time::serde::rfc3339")]
    pub ends_at: OffsetDateTime,
    /// The session a person's prod-tier grant is bound to after their step-up.
    pub session_id: Option<Uuid>,
    /// When revoked.
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    /// By whom.
    pub revoked_by: Option<String>,
    /// Why.
    pub revoked_reason: Option<String>,
}

impl Grant {
    /// Whether tokens may be minted (and are valid) under this grant at `at`.
    pub fn is_active(&self, at: OffsetDateTime) -> bool {
        self.revoked_at.is_none() && self.starts_at <= at && at < self.ends_at
    }

    /// `active`, `revoked` or `ended` at `at`.
    pub fn status(&self, at: OffsetDateTime) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if at >= self.ends_at {
            "ended"
        } else {
            "active"
        }
    }
}

/// `2025-03-01 14:03:09 UTC`: a time as people read it in the CLI and on the pages.
pub fn utc_stamp(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Grant holder key of a person.
pub fn person_holder(user_id: Uuid) -> String {
    format!("user:{user_id}")
}

/// Grant holder key of a registered agent.
pub fn agent_holder(client_id: &str) -> String {
    format!("agent:{client_id}")
}
