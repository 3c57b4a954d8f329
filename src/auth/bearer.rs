//! Bearer tokens of any kind: a session token (a person) or an environment access token
//! (an agent, or a process acting for a person), and whether an access token is still live.

use uuid::Uuid;

use super::session::{Authenticated, SessionError, authenticate_session};
use crate::domain::{Agent, CLI_CLIENT_ID, User};
use crate::state::AppState;
use crate::store::StoreError;
use crate::token::{self, AccessClaims};

/// Who is calling an escalation endpoint.
#[derive(Debug, Clone)]
pub enum Principal {
    /// A person with a live session.
    Person(Authenticated),
    /// A process holding an environment access token.
    Agent(AgentPrincipal),
}

/// A caller authenticated by an environment access token.
#[derive(Debug, Clone)]
pub struct AgentPrincipal {
    /// The token's environment.
    pub environment: String,
    /// What kind of process.
    pub kind: AgentKind,
}

/// The two kinds of token-holding callers.
#[derive(Debug, Clone)]
pub enum AgentKind {
    /// A registered agent (client credentials).
    Registered(Agent),
    /// A process acting for a person (token exchange with an actor).
    Delegated {
        /// The person.
        user: User,
        /// `process:NAME`.
        actor: String,
    },
}

impl Principal {
    /// Whose budgets a call counts against (escalation creations, audited refusals): the
    /// agent, or the person, together with every process acting for them (a process name
    /// is the caller's choice, so a new name must not buy a new budget).
    pub fn budget_key(&self) -> String {
        match self {
            Principal::Person(a) => format!("user:{}", a.user.username),
            Principal::Agent(AgentPrincipal {
                kind: AgentKind::Registered(a),
                ..
            }) => format!("agent:{}", a.client_id),
            Principal::Agent(AgentPrincipal {
                kind: AgentKind::Delegated { user, .. },
                ..
            }) => format!("user:{}", user.username),
        }
    }

    /// Audit actor.
    pub fn actor(&self) -> String {
        match self {
            Principal::Person(a) => format!("user:{}", a.user.username),
            Principal::Agent(AgentPrincipal {
                kind: AgentKind::Registered(a),
                ..
            }) => format!("agent:{}", a.client_id),
            Principal::Agent(AgentPrincipal {
                kind: AgentKind::Delegated { user, actor },
                ..
            }) => format!("{actor} for user:{}", user.username),
        }
    }
}

/// Why a bearer token does not identify a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// Not a live token of any kind (401).
    Unauthenticated,
    /// The store failed (503: fail closed).
    Unavailable,
}

fn store_err(e: StoreError) -> AuthError {
    match e {
        StoreError::NotFound => AuthError::Unauthenticated,
        other => {
            tracing::error!(error = ?other, "caller look-up failed");
            AuthError::Unavailable
        }
    }
}

/// Authenticate `Authorization: Bearer` where people and processes may both call (the
/// escalation endpoints): a session token (a person) or an environment access token (an
/// agent or delegated process).
pub async fn authenticate(state: &AppState, bearer: &str) -> Result<Principal, AuthError> {
    match authenticate_session(state, bearer).await {
        Ok(auth) => return Ok(Principal::Person(auth)),
        Err(SessionError::Unavailable) => return Err(AuthError::Unavailable),
        Err(SessionError::Invalid) => {}
    }
    let claims = verify_env_token(state, bearer).ok_or(AuthError::Unauthenticated)?;
    // As at introspection: an ended session, a disabled principal or a revoked grant ends
    // the token here too.
    match token_is_live(state, &claims.env, &claims).await {
        Ok(true) => {}
        Ok(false) => return Err(AuthError::Unauthenticated),
        Err(e) => return Err(store_err(e)),
    }
    let kind = if claims.client_id == CLI_CLIENT_ID {
        let id = Uuid::parse_str(&claims.sub).map_err(|_| AuthError::Unauthenticated)?;
        let user = match state.store.user_by_id(id).await {
            Ok(u) if !u.disabled => u,
            Ok(_) | Err(StoreError::NotFound) => return Err(AuthError::Unauthenticated),
            Err(e) => return Err(store_err(e)),
        };
        let actor = claims
            .act
            .map(|a| a.sub)
            .unwrap_or_else(|| "process:unnamed".to_string());
        AgentKind::Delegated { user, actor }
    } else {
        let agent = match state.store.agent_by_client_id(&claims.sub).await {
            Ok(a) => a,
            Err(StoreError::NotFound) => return Err(AuthError::Unauthenticated),
            Err(e) => return Err(store_err(e)),
        };
        // SECURITY: invariant 2 again: a token only ever speaks for its own environment.
        if agent.disabled || agent.environment != claims.env {
            return Err(AuthError::Unauthenticated);
        }
        AgentKind::Registered(agent)
    };
    Ok(Principal::Agent(AgentPrincipal {
        environment: claims.env,
        kind,
    }))
}

/// Verify `token` as an access token of any environment (each with its own keys,
/// issuer and audience).
pub fn verify_env_token(state: &AppState, token: &str) -> Option<AccessClaims> {
    let at = state.now().unix_timestamp();
    state.settings.environments.values().find_map(|env| {
        let jwks = state.keys.jwks(&env.key_set())?;
        token::verify(
            token,
            &jwks,
            &env.issuer(&state.settings.public_url),
            &env.audience,
            at,
            0,
        )
        .ok()
        .filter(|c| c.env == env.name)
    })
}

/// Whether a token minted under grant `id` may still be used (introspection).
pub async fn grant_is_active(state: &AppState, id: &str) -> Result<bool, StoreError> {
    let Ok(id) = Uuid::parse_str(id) else {
        return Ok(false);
    };
    match state.store.grant(id).await {
        Ok(g) => Ok(g.is_active(state.now())),
        Err(StoreError::NotFound) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether a verified access token of `env_name` is still good: its agent or person is
/// enabled (an agent still of that environment), the session it was exchanged from (if
/// any) has not ended, and the grant it was minted under (if any) is active.
pub async fn token_is_live(
    state: &AppState,
    env_name: &str,
    claims: &AccessClaims,
) -> Result<bool, StoreError> {
    let principal_live = if claims.client_id == CLI_CLIENT_ID {
        let Ok(id) = Uuid::parse_str(&claims.sub) else {
            return Ok(false);
        };
        match state.store.user_by_id(id).await {
            Ok(u) => !u.disabled,
            Err(StoreError::NotFound) => false,
            Err(e) => return Err(e),
        }
    } else {
        match state.store.agent_by_client_id(&claims.sub).await {
            Ok(a) => !a.disabled && a.environment == env_name,
            Err(StoreError::NotFound) => false,
            Err(e) => return Err(e),
        }
    };
    if !principal_live {
        return Ok(false);
    }
    if let Some(sid) = &claims.sid {
        let Ok(sid) = Uuid::parse_str(sid) else {
            return Ok(false);
        };
        match state.store.session(sid).await {
            Ok(s) if s.revoked_at.is_none() && s.expires_at > state.now() => {}
            Ok(_) | Err(StoreError::NotFound) => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    if let Some(grant) = &claims.grant {
        return grant_is_active(state, grant).await;
    }
    Ok(true)
}
