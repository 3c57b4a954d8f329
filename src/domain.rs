//! Plain data shared by every layer: agents, signing keys, audit events.
//!
//! No I/O here. Types that hold secrets never derive `Debug` over the secret.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// Prefix of agent client ids.
pub const CLIENT_ID_PREFIX: &str = "agt_";

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

/// A machine identity bound to one environment for its whole life (invariant 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Keyed hash of the secret; never serialised.
    #[serde(skip)]
    pub secret_hash: Vec<u8>,
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
