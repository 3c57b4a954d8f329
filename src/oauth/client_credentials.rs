//! `grant_type=client_credentials` (RFC 6749 section 4.4): an agent of the environment
//! authenticates with its secret (invariant 2) and gets a token within its scopes; a
//! destructive scope needs a grant (invariant 5).

use std::net::IpAddr;

use secrecy::ExposeSecret;

use super::issue::{Holder, Issue};
use super::refusal::{refuse, refuse_anonymous, refuse_principal, requested_for_audit};
use super::{ClientCredentials, OAuthError, TokenResponse};
use crate::config::EnvironmentSettings;
use crate::domain::{Agent, NewAuditEvent, Outcome, looks_like_client_id};
use crate::policy::{self, AuthFailure, ScopeRefusal};
use crate::state::AppState;
use crate::store::StoreError;

/// `grant_type=client_credentials` at environment `env`.
pub async fn client_credentials(
    state: &AppState,
    peer: Option<IpAddr>,
    env: &EnvironmentSettings,
    creds: ClientCredentials,
    scope: Option<&str>,
) -> Result<TokenResponse, OAuthError> {
    let env_name = env.name.as_str();

    let agent = authenticate_client(state, peer, env_name, &creds).await?;
    let actor = format!("agent:{}", agent.client_id);

    let refused = |reason: &str| {
        NewAuditEvent::new("token.refused", actor.clone(), Outcome::Refused)
            .env(env_name)
            .subject(agent.client_id.clone())
            .detail("reason", reason.to_string())
            .detail("requested", requested_for_audit(&state.settings, scope))
    };
    let plan = match policy::agent_scope_plan(&state.settings, env, &agent, scope) {
        Ok(p) => p,
        Err(refusal) => {
            return Err(refuse_principal(
                state,
                &actor,
                refused(refusal.reason()),
                OAuthError::InvalidScope(refusal.description(env_name)),
            )
            .await);
        }
    };
    // Invariant 5: a destructive scope (or one the agent does not have by itself) needs
    // an active grant held by this agent that covers every such scope asked for.
    let holder = crate::domain::agent_holder(&agent.client_id);
    let mut plan = plan;
    let grant = if plan.needs_grant.is_empty() {
        if scope.is_some() {
            None
        } else {
            // No scope asked: the agent's defaults, plus what its active grant (the one
            // ending last) gives, so an agent under `airlock agent run` gets an approved
            // scope at its next refresh, until the grant ends.
            let found = crate::escalations::covering_grant(state, &holder, env_name, &[], None)
                .await
                .map_err(|e| {
                    tracing::error!(error = ?e, "grant look-up failed");
                    OAuthError::Unavailable
                })?;
            if let Some(g) = &found {
                for s in &g.scopes {
                    if !plan.wanted.contains(s) {
                        plan.wanted.push(s.clone());
                    }
                }
            }
            found
        }
    } else {
        let found = crate::escalations::covering_grant(state, &holder, env_name, &plan.needs_grant, None)
            .await
            .map_err(|e| {
                tracing::error!(error = ?e, "grant look-up failed");
                OAuthError::Unavailable
            })?;
        if found.is_none() {
            let refusal = policy::agent_refusal(&state.settings, &plan.needs_grant);
            let error = match refusal {
                ScopeRefusal::Destructive(_) => OAuthError::AccessDenied(refusal.description(env_name)),
                _ => OAuthError::InvalidScope(refusal.description(env_name)),
            };
            return Err(refuse_principal(state, &actor, refused(refusal.reason()), error).await);
        }
        found
    };
    let scopes = plan.wanted;

    let at = state.now();
    let mut lifetime = policy::token_lifetime(env);
    if let Some(g) = &grant {
        // Invariant 6: never past the grant's end.
        lifetime = crate::policy::escalation::grant_token_lifetime(lifetime, g, at);
        if lifetime.is_zero() {
            return Err(refuse_principal(
                state,
                &actor,
                refused("grant_ended"),
                OAuthError::AccessDenied("the grant has ended; ask for a new escalation".into()),
            )
            .await);
        }
    }
    super::issue::issue(
        state,
        Issue {
            env,
            holder: Holder::Agent {
                client_id: &agent.client_id,
            },
            scopes,
            at,
            lifetime,
            grant: grant.as_ref(),
            grant_type: "client_credentials",
            actor,
        },
    )
    .await
}

/// Authenticate an agent's client credentials at environment `env_name` (invariant 2:
/// only an agent of that environment authenticates there). Every failure is audited
/// and answered `invalid_client`.
pub(super) async fn authenticate_client(
    state: &AppState,
    peer: Option<IpAddr>,
    env_name: &str,
    creds: &ClientCredentials,
) -> Result<Agent, OAuthError> {
    // Authenticate. Look-up failures other than "not found" fail closed. A client id with
    // a control character names no agent (client ids are `agt_` and hex): it is an unknown
    // client, refused and audited like any other, without asking the store (PostgreSQL
    // cannot even compare a text holding NUL, which would be a 503).
    let agent: Option<Agent> = if creds.client_id.chars().any(char::is_control) {
        None
    } else {
        match state.store.agent_by_client_id(&creds.client_id).await {
            Ok(a) => Some(a),
            Err(StoreError::NotFound) => None,
            Err(e) => {
                tracing::error!(error = ?e, "agent look-up failed");
                return Err(OAuthError::Unavailable);
            }
        }
    };
    // SECURITY: hash even for unknown clients so timing does not tell them apart.
    const DUMMY: [u8; 32] = [0u8; 32];
    let stored = agent.as_ref().map(|a| a.secret_hash.as_slice()).unwrap_or(&DUMMY);
    let secret_ok = state
        .hasher
        .verify(&creds.client_id, creds.client_secret.expose_secret(), stored)
        && agent.is_some();
    if let Err(failure) = policy::authenticate_agent(agent.as_ref(), secret_ok, env_name) {
        tracing::debug!(
            reason = failure.reason(),
            env = env_name,
            "client authentication failed"
        );
        let event = auth_failure_event(env_name, &creds.client_id, agent.as_ref(), failure);
        // Cross-environment use proves a real credential: always audited on its own.
        if failure == AuthFailure::CrossEnvironment {
            return Err(refuse(state, event, OAuthError::InvalidClient).await);
        }
        let error = OAuthError::InvalidClient;
        return Err(refuse_anonymous(state, peer, env_name, failure.reason(), event, error).await);
    }
    // authenticate_agent refuses a missing agent, so this is always Some.
    agent.ok_or(OAuthError::InvalidClient)
}

fn auth_failure_event(
    env: &str,
    presented: &str,
    agent: Option<&Agent>,
    failure: AuthFailure,
) -> NewAuditEvent {
    // SECURITY: only echo a presented id that has the shape of one, so a secret pasted
    // into the client_id field never reaches the audit trail.
    let presented = if looks_like_client_id(presented) {
        presented.to_string()
    } else {
        "[malformed]".into()
    };
    match (failure, agent) {
        (AuthFailure::CrossEnvironment, Some(agent)) => {
            tracing::warn!(client_id = %agent.client_id, agent_env = %agent.environment, env, "cross-environment credential use");
            NewAuditEvent::new(
                "cross_environment_attempt",
                format!("agent:{}", agent.client_id),
                Outcome::Refused,
            )
            .env(env)
            .subject(agent.client_id.clone())
            .detail("agent_environment", agent.environment.clone())
            .detail("reason", failure.reason())
        }
        _ => NewAuditEvent::new("token.refused", "anonymous", Outcome::Refused)
            .env(env)
            .subject(presented)
            .detail("reason", failure.reason()),
    }
}
