//! Agent management, shared by the CLI and the admin API.
//!
//! Invariant 2: an agent's environment is chosen here, once; no function changes it
//! (and the schema refuses it). Invariant 8: the secret is returned once to the caller
//! and only its keyed hash is stored.
//!
//! Invariant 4: every agent registered once people exist has an owner, an enabled
//! person fixed at registration. The owner sponsors the agent's escalation requests, so
//! someone who holds the agent's secret and is also its owner can never be the
//! approval the agent needs.

use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

use crate::config::{Settings, valid_scope_name};
use crate::domain::{Agent, NewAuditEvent, Outcome, User, looks_like_client_id, new_client_id, now};
use crate::people::normalize_username;
use crate::secrets::{SecretHasher, new_agent_secret};
use crate::store::{AgentChange, Store, StoreError};

/// Why an agent operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Bad input; the message says what to change.
    #[error("{0}")]
    Invalid(String),
    /// No such agent.
    #[error("no agent {0}")]
    NotFound(String),
    /// An agent of that name exists in that environment.
    #[error("an agent named {name:?} already exists in environment {env:?}")]
    NameTaken {
        /// Name.
        name: String,
        /// Environment.
        env: String,
    },
    /// The store failed.
    #[error("the store is unavailable: {0}")]
    Store(#[source] StoreError),
}

impl From<StoreError> for AgentError {
    fn from(e: StoreError) -> Self {
        AgentError::Store(e)
    }
}

/// What to register.
#[derive(Debug, Clone)]
pub struct NewAgent {
    /// Name, unique within the environment.
    pub name: String,
    /// The one environment.
    pub environment: String,
    /// Scopes it may request.
    pub scopes: Vec<String>,
    /// Scopes it gets by default; empty means every allowed non-destructive scope.
    pub default_scopes: Vec<String>,
    /// Username of the person who answers for it. Required once any person exists.
    pub owner: Option<String>,
}

/// What to tell a caller who registers an agent without an owner once people exist.
pub const OWNER_REQUIRED: &str = "name the agent's owner: pass --owner USER (\"owner\" in the API), \
     an existing person who answers for the agent; the owner's approval never counts toward the \
     agent's own escalation requests";

/// Register an agent; returns it and its secret, which is never available again.
pub async fn create(
    store: &dyn Store,
    settings: &Settings,
    hasher: &SecretHasher,
    new: NewAgent,
    actor: &str,
) -> Result<(Agent, SecretString), AgentError> {
    let env = settings.environment(&new.environment).ok_or_else(|| {
        AgentError::Invalid(format!(
            "unknown environment {:?}; configured: {}",
            new.environment,
            settings
                .environments
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    let name = new.name.trim();
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(AgentError::Invalid(
            "agent names are 1-64 characters of letters, digits, '-', '_' and '.'".into(),
        ));
    }
    if new.scopes.is_empty() {
        return Err(AgentError::Invalid("give the agent at least one --scope".into()));
    }
    let mut allowed: Vec<String> = Vec::new();
    for s in &new.scopes {
        if !valid_scope_name(s) || !settings.env_offers_scope(env, s) {
            return Err(AgentError::Invalid(format!(
                "scope {s:?} is not offered in environment {:?}; known scopes: {}",
                new.environment,
                settings.scopes.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        if !allowed.contains(s) {
            allowed.push(s.clone());
        }
    }
    let defaults: Vec<String> = if new.default_scopes.is_empty() {
        allowed
            .iter()
            .filter(|s| !settings.scopes[*s].destructive)
            .cloned()
            .collect()
    } else {
        for s in &new.default_scopes {
            if !allowed.contains(s) {
                return Err(AgentError::Invalid(format!(
                    "default scope {s:?} is not among the agent's --scope list"
                )));
            }
            if settings.scopes[s].destructive {
                return Err(AgentError::Invalid(format!(
                    "default scope {s:?} is destructive; destructive scopes are only ever issued under an approved escalation"
                )));
            }
        }
        new.default_scopes.clone()
    };
    let owner = owner_of(store, new.owner.as_deref()).await?;
    let secret = new_agent_secret().map_err(|e| AgentError::Invalid(e.to_string()))?;
    let client_id = new_client_id();
    let created = now();
    let agent = Agent {
        id: Uuid::new_v4(),
        secret_hash: hasher.hash(&client_id, secret.expose_secret()).to_vec(),
        client_id,
        name: name.to_string(),
        environment: new.environment.clone(),
        allowed_scopes: allowed,
        default_scopes: defaults,
        disabled: false,
        created_at: created,
        updated_at: created,
        owner_id: owner.as_ref().map(|u| u.id),
        owner: owner.map(|u| u.username),
    };
    let event = NewAuditEvent::new("agent.created", actor, Outcome::Success)
        .env(agent.environment.clone())
        .subject(agent.client_id.clone())
        .detail("name", agent.name.clone())
        .detail("scopes", agent.allowed_scopes.clone())
        .detail("owner", agent.owner.clone());
    match store.create_agent(&agent, event).await {
        Ok(()) => Ok((agent, secret)),
        Err(StoreError::Conflict) => Err(AgentError::NameTaken {
            name: agent.name,
            env: agent.environment,
        }),
        Err(e) => Err(e.into()),
    }
}

/// The person named as owner: an existing, enabled person. No name is accepted only
/// while nobody exists yet (the first run, before the first admin).
async fn owner_of(store: &dyn Store, named: Option<&str>) -> Result<Option<User>, AgentError> {
    let Some(raw) = named.map(str::trim).filter(|s| !s.is_empty()) else {
        // SECURITY: once people exist, an agent without an owner would have nobody
        // whose approval is excluded from its quorum.
        if store.users().await?.is_empty() {
            return Ok(None);
        }
        return Err(AgentError::Invalid(OWNER_REQUIRED.into()));
    };
    let unknown = || {
        AgentError::Invalid(format!(
            "there is no person {:?} to own the agent; the owner must be an existing person \
             (see `airlock user list`)",
            raw.chars().take(64).collect::<String>()
        ))
    };
    let username = normalize_username(raw).ok_or_else(unknown)?;
    let user = match store.user_by_username(&username).await {
        Ok(u) => u,
        Err(StoreError::NotFound) => return Err(unknown()),
        Err(e) => return Err(e.into()),
    };
    if user.disabled {
        return Err(AgentError::Invalid(format!(
            "{username} is disabled; an agent's owner must be an enabled person"
        )));
    }
    Ok(Some(user))
}

/// Find an agent by client id, or by `ENV/NAME`, or by a name unique across environments.
pub async fn find(store: &dyn Store, reference: &str) -> Result<Agent, AgentError> {
    let not_found = || AgentError::NotFound(reference.to_string());
    if looks_like_client_id(reference) {
        return store.agent_by_client_id(reference).await.map_err(|e| match e {
            StoreError::NotFound => not_found(),
            e => e.into(),
        });
    }
    if let Some((env, name)) = reference.split_once('/') {
        return store.agent_by_name(env, name).await.map_err(|e| match e {
            StoreError::NotFound => not_found(),
            e => e.into(),
        });
    }
    let mut matches: Vec<Agent> = store
        .agents(None)
        .await?
        .into_iter()
        .filter(|a| a.name == reference)
        .collect();
    match matches.len() {
        0 => Err(not_found()),
        1 => Ok(matches.remove(0)),
        _ => Err(AgentError::Invalid(format!(
            "several environments have an agent named {reference:?}; use ENV/{reference} or the client id"
        ))),
    }
}

/// Disable or re-enable an agent.
pub async fn set_disabled(
    store: &dyn Store,
    reference: &str,
    disabled: bool,
    actor: &str,
) -> Result<Agent, AgentError> {
    let agent = find(store, reference).await?;
    let kind = if disabled {
        "agent.disabled"
    } else {
        "agent.enabled"
    };
    let event = NewAuditEvent::new(kind, actor, Outcome::Success)
        .env(agent.environment.clone())
        .subject(agent.client_id.clone());
    Ok(store
        .update_agent(agent.id, AgentChange::Disabled(disabled), event)
        .await?)
}

/// Replace an agent's secret; the old one stops working at once.
pub async fn rotate_secret(
    store: &dyn Store,
    hasher: &SecretHasher,
    reference: &str,
    actor: &str,
) -> Result<(Agent, SecretString), AgentError> {
    let agent = find(store, reference).await?;
    let secret = new_agent_secret().map_err(|e| AgentError::Invalid(e.to_string()))?;
    let hash = hasher.hash(&agent.client_id, secret.expose_secret()).to_vec();
    let event = NewAuditEvent::new("agent.secret_rotated", actor, Outcome::Success)
        .env(agent.environment.clone())
        .subject(agent.client_id.clone());
    let agent = store
        .update_agent(agent.id, AgentChange::SecretHash(hash), event)
        .await?;
    Ok((agent, secret))
}
