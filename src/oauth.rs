//! The token endpoint's decisions (RFC 6749), independent of HTTP.
//!
//! Every decision made here, issuance or refusal, is written to the audit trail and
//! committed before the answer exists (invariant 7). If the audit write fails the
//! caller gets `temporarily_unavailable` and the token that was signed is dropped
//! unseen.

use std::net::IpAddr;

use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use uuid::Uuid;

use crate::app::AppState;
use crate::domain::{Agent, NewAuditEvent, Outcome, looks_like_client_id, now};
use crate::policy::{self, AuthFailure, ScopeRefusal};
use crate::store::StoreError;
use crate::token::{self, AccessClaims};

/// Longest client id or secret read from a request.
pub const MAX_CREDENTIAL_LEN: usize = 256;

/// An RFC 6749 section 5.2 error, plus the HTTP-level ones the endpoint can answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OAuthError {
    /// `invalid_request` (400).
    InvalidRequest(String),
    /// `invalid_client` (401). Never says why.
    InvalidClient,
    /// `invalid_scope` (400).
    InvalidScope(String),
    /// `unsupported_grant_type` (400).
    UnsupportedGrantType(String),
    /// `access_denied` (403).
    AccessDenied(String),
    /// Unknown environment (404, in the OAuth shape).
    UnknownEnvironment(String),
    /// `temporarily_unavailable` (503): the decision could not be recorded.
    Unavailable,
    /// `invalid_grant` (400): a bad, expired or reused grant (refresh token, device code, session).
    InvalidGrant(String),
    /// `authorization_pending` (400, RFC 8628).
    AuthorizationPending,
    /// `slow_down` (400, RFC 8628): poll less often.
    SlowDown,
    /// `expired_token` (400, RFC 8628).
    ExpiredToken,
    /// `insufficient_user_authentication` (403, the RFC 9470 error code): confirm a fresh
    /// TOTP code (step up) first, then ask again.
    StepUpRequired(String),
}

/// A successful token response (RFC 6749 section 5.1). Deliberately not `Debug`.
#[derive(Clone, Serialize)]
pub struct TokenResponse {
    /// The JWT.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until expiry.
    pub expires_in: u64,
    /// Granted scopes, space-separated.
    pub scope: String,
    /// RFC 8693 section 2.2.1: present on token-exchange responses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued_token_type: Option<&'static str>,
}

/// Client credentials as presented, by either method.
pub struct ClientCredentials {
    /// As presented; untrusted.
    pub client_id: String,
    /// As presented.
    pub client_secret: SecretString,
}

/// Record a refusal; if even that cannot be recorded, the answer becomes 503.
async fn refuse(state: &AppState, event: NewAuditEvent, error: OAuthError) -> OAuthError {
    match state.store.append_audit(event).await {
        Ok(_) => error,
        Err(e) => {
            tracing::error!(error = ?e, "cannot record a refusal; failing closed");
            OAuthError::Unavailable
        }
    }
}

/// Record a policy refusal of an authenticated `principal`, within its budget (see
/// [`crate::refusals`]); if an admitted refusal cannot be recorded, the answer becomes 503.
pub(crate) async fn refuse_principal(
    state: &AppState,
    principal: &str,
    event: NewAuditEvent,
    error: OAuthError,
) -> OAuthError {
    match state
        .refusals
        .record(state.store.as_ref(), principal, event)
        .await
    {
        Ok(()) => error,
        Err(e) => {
            tracing::error!(error = ?e, "cannot record a refusal; failing closed");
            OAuthError::Unavailable
        }
    }
}

/// Record a refusal of an unauthenticated caller, within that address's budget
/// (see [`crate::refusals`]).
async fn refuse_anonymous(
    state: &AppState,
    peer: Option<IpAddr>,
    env: &str,
    reason: &'static str,
    event: NewAuditEvent,
    error: OAuthError,
) -> OAuthError {
    if state.refusals.admit(peer, env, reason) {
        let event = match peer {
            Some(ip) => event.detail("client_address", ip.to_string()),
            None => event,
        };
        refuse(state, event, error).await
    } else {
        error
    }
}

/// The audited refusal of a request that never reached client authentication.
pub async fn refuse_request(
    state: &AppState,
    peer: Option<IpAddr>,
    env: &str,
    error: OAuthError,
) -> OAuthError {
    let reason = match &error {
        OAuthError::UnsupportedGrantType(_) => "unsupported_grant_type",
        OAuthError::InvalidClient => "no_client_credentials",
        _ => "invalid_request",
    };
    let event = NewAuditEvent::new("token.refused", "anonymous", Outcome::Refused)
        .env(env)
        .detail("reason", reason);
    refuse_anonymous(state, peer, env, reason, event, error).await
}

/// `grant_type=client_credentials` at environment `env_name`.
pub async fn client_credentials(
    state: &AppState,
    peer: Option<IpAddr>,
    env_name: &str,
    creds: ClientCredentials,
    scope: Option<&str>,
) -> Result<TokenResponse, OAuthError> {
    let env = state
        .settings
        .environment(env_name)
        .ok_or_else(|| OAuthError::UnknownEnvironment(env_name.to_string()))?;

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

    let at = now();
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
    let iat = at.unix_timestamp();
    let claims = AccessClaims {
        iss: state.settings.issuer(env_name),
        sub: agent.client_id.clone(),
        username: None,
        aud: env.audience.clone(),
        client_id: agent.client_id.clone(),
        scope: scopes.join(" "),
        env: env_name.to_string(),
        iat,
        nbf: iat,
        exp: iat + lifetime.as_secs() as i64,
        jti: Uuid::new_v4().to_string(),
        act: None,
        grant: grant.as_ref().map(|g| g.id.to_string()),
        sid: None,
    };
    let signer = state
        .keys
        .signer(&crate::domain::KeySet::Environment(env_name.to_string()))
        .ok_or(OAuthError::Unavailable)?;
    let access_token = token::sign(&signer, &claims).map_err(|e| {
        tracing::error!(error = ?e, "signing failed");
        OAuthError::Unavailable
    })?;
    let event = NewAuditEvent::new("token.issued", actor, Outcome::Success)
        .env(env_name)
        .subject(agent.client_id.clone())
        .detail("jti", claims.jti.clone())
        .detail("kid", signer.kid.clone())
        .detail("scope", claims.scope.clone())
        .detail("exp", claims.exp)
        .detail("grant_type", "client_credentials")
        .detail("grant", claims.grant.clone());
    // Invariant 7: no token leaves unless its audit event has committed.
    if let Err(e) = state.store.append_audit(event).await {
        tracing::error!(error = ?e, "cannot record an issuance; the token is discarded");
        return Err(OAuthError::Unavailable);
    }
    tracing::info!(env = env_name, client_id = %agent.client_id, jti = %claims.jti, "token issued");
    Ok(TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in: lifetime.as_secs(),
        scope: claims.scope,
        issued_token_type: None,
    })
}

/// Authenticate an agent's client credentials at environment `env_name` (invariant 2:
/// only an agent of that environment authenticates there). Every failure is audited
/// and answered `invalid_client`.
async fn authenticate_client(
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

/// Whether a verified access token of `env_name` is still good: its agent or person is
/// enabled (an agent still of that environment), the session it was exchanged from (if
/// any) has not ended, and the grant it was minted under (if any) is active.
pub async fn token_is_live(
    state: &AppState,
    env_name: &str,
    claims: &AccessClaims,
) -> Result<bool, StoreError> {
    let principal_live = if claims.client_id == crate::people::CLI_CLIENT_ID {
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
            Ok(s) if s.revoked_at.is_none() && s.expires_at > now() => {}
            Ok(_) | Err(StoreError::NotFound) => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    if let Some(grant) = &claims.grant {
        return crate::escalations::grant_is_active(state, grant).await;
    }
    Ok(true)
}

/// RFC 7662 introspection at environment `env_name`, for a resource server that
/// authenticates as an agent of that environment. A token is active only if it verifies
/// for this environment (key, issuer, audience, time), its agent or person is still
/// enabled, and the grant it was minted under (if any) is neither revoked nor ended.
pub async fn introspect(
    state: &AppState,
    peer: Option<IpAddr>,
    env_name: &str,
    creds: ClientCredentials,
    token: &str,
) -> Result<serde_json::Value, OAuthError> {
    let env = state
        .settings
        .environment(env_name)
        .ok_or_else(|| OAuthError::UnknownEnvironment(env_name.to_string()))?;
    authenticate_client(state, peer, env_name, &creds).await?;
    let inactive = serde_json::json!({ "active": false });
    let Some(jwks) = state
        .keys
        .jwks(&crate::domain::KeySet::Environment(env_name.to_string()))
    else {
        return Err(OAuthError::Unavailable);
    };
    let Ok(claims) = token::verify(
        token,
        &jwks,
        &state.settings.issuer(env_name),
        &env.audience,
        now().unix_timestamp(),
        0,
    ) else {
        return Ok(inactive);
    };
    if claims.env != env_name {
        return Ok(inactive);
    }
    match token_is_live(state, env_name, &claims).await {
        Ok(true) => {}
        Ok(false) => return Ok(inactive),
        Err(_) => return Err(OAuthError::Unavailable),
    }
    let mut out = serde_json::json!({
        "active": true,
        "scope": claims.scope,
        "client_id": claims.client_id,
        "sub": claims.sub,
        "aud": claims.aud,
        "iss": claims.iss,
        "exp": claims.exp,
        "iat": claims.iat,
        "nbf": claims.nbf,
        "jti": claims.jti,
        "token_type": "Bearer",
        "env": claims.env,
    });
    if let Some(username) = claims.username {
        out["username"] = serde_json::json!(username);
    }
    if let Some(act) = claims.act {
        out["act"] = serde_json::json!({ "sub": act.sub });
    }
    if let Some(grant) = claims.grant {
        out["grant"] = serde_json::json!(grant);
    }
    Ok(out)
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

/// The requested scopes as the audit trail may record them: names from the catalogue
/// only. SECURITY: anything else is counted, never copied, since a caller controls it
/// (a token pasted as a scope must not reach the trail).
fn requested_for_audit(settings: &crate::config::Settings, scope: Option<&str>) -> serde_json::Value {
    let Some(raw) = scope else {
        return serde_json::Value::Null;
    };
    let mut known: Vec<&str> = Vec::new();
    let mut unknown = 0usize;
    for token in raw.split(' ').filter(|t| !t.is_empty()) {
        match settings.scopes.get_key_value(token) {
            Some((name, _)) if !known.contains(&name.as_str()) => known.push(name.as_str()),
            Some(_) => {}
            None => unknown += 1,
        }
    }
    serde_json::json!({ "known": known, "unknown_count": unknown })
}
