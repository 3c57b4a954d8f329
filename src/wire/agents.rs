//! Agents on the wire: `/v1/agents` (the admin API), and the JSON `airlock agent` prints.
//!
//! An agent is shown in the order of its fields (the body was always the agent row
//! itself); the answer that carries a new secret always went through a
//! `serde_json::Value`, so it is sent [`Sorted`](super::Sorted).

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// An agent as the API shows it (never its secret or the secret's hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agent {
    /// Internal id.
    pub id: Uuid,
    /// OAuth client id, `agt_...`.
    pub client_id: String,
    /// Name, unique within its environment.
    pub name: String,
    /// The one environment it can ever get tokens for.
    pub environment: String,
    /// Scopes it may ask for.
    pub allowed_scopes: Vec<String>,
    /// Scopes it gets when it asks for none.
    pub default_scopes: Vec<String>,
    /// A disabled agent authenticates nowhere.
    pub disabled: bool,
    /// Created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last change.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// The owner's id (`null` for agents registered before owners existed).
    #[serde(default)]
    pub owner_id: Option<Uuid>,
    /// The owner's username (`null` likewise).
    #[serde(default)]
    pub owner: Option<String>,
}

impl From<&crate::domain::Agent> for Agent {
    fn from(a: &crate::domain::Agent) -> Agent {
        Agent {
            id: a.id,
            client_id: a.client_id.clone(),
            name: a.name.clone(),
            environment: a.environment.clone(),
            allowed_scopes: a.allowed_scopes.clone(),
            default_scopes: a.default_scopes.clone(),
            disabled: a.disabled,
            created_at: a.created_at,
            updated_at: a.updated_at,
            owner_id: a.owner_id,
            owner: a.owner.clone(),
        }
    }
}

/// An agent with its new secret, shown once (`POST /v1/agents`, `.../reset`). Sent
/// [`Sorted`](super::Sorted). Deliberately not `Debug`.
#[derive(Serialize, Deserialize)]
pub struct AgentCreated {
    /// The agent.
    #[serde(flatten)]
    pub agent: Agent,
    /// Its secret (RFC 7591's name).
    #[serde(serialize_with = "super::expose")]
    pub client_secret: SecretString,
}

/// `POST /v1/agents`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAgent {
    /// Scopes it gets when it asks for none (default: every allowed non-destructive one).
    #[serde(default)]
    pub default_scopes: Vec<String>,
    /// Its one environment.
    pub environment: String,
    /// Name, unique within the environment.
    pub name: String,
    /// Username of the person who answers for the agent (required once people exist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Scopes it may ask for.
    pub scopes: Vec<String>,
}

/// `GET /v1/agents?env=E`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentFilter {
    /// Only this environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Sorted, compact};
    use serde_json::json;

    fn agent() -> Agent {
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        Agent {
            id: Uuid::nil(),
            client_id: "agt_1".into(),
            name: "bot".into(),
            environment: "dev".into(),
            allowed_scopes: vec!["db:read".into()],
            default_scopes: vec!["db:read".into()],
            disabled: false,
            created_at: t,
            updated_at: t,
            owner_id: None,
            owner: None,
        }
    }

    #[test]
    fn an_agent_keeps_its_field_order_and_its_nulls() {
        let text = compact(&agent());
        assert!(
            text.starts_with(
                r#"{"id":"00000000-0000-0000-0000-000000000000","client_id":"agt_1","name":"bot""#
            ),
            "{text}"
        );
        assert!(text.ends_with(r#""owner_id":null,"owner":null}"#), "{text}");
    }

    #[test]
    fn an_agent_with_its_secret_comes_out_sorted() {
        let created = Sorted(AgentCreated {
            agent: agent(),
            client_secret: SecretString::from("airlock_secret_x"),
        });
        let mut expected = serde_json::to_value(agent()).unwrap();
        expected["client_secret"] = json!("airlock_secret_x");
        assert_eq!(compact(&created), compact(&expected));
        let back: AgentCreated = serde_json::from_str(&compact(&created)).unwrap();
        assert_eq!(back.agent, agent());
    }
}
