//! The one place that builds access-token claims and signs them with an environment's
//! key. Every grant decides *whether* and *what*; this writes the token, records
//! `token.issued`, and only then lets the token out (invariant 7): if signing or the
//! audit write fails, the caller gets `temporarily_unavailable` and the token is
//! dropped unseen.

use std::time::Duration;

use time::OffsetDateTime;
use uuid::Uuid;

use super::{OAuthError, TokenResponse};
use crate::config::EnvironmentSettings;
use crate::domain::{Grant, NewAuditEvent, Outcome};
use crate::state::AppState;
use crate::token::{self, AccessClaims, Actor};

/// Who a token is for, as the grant established it.
pub(crate) enum Holder<'a> {
    /// A registered agent (client credentials).
    Agent {
        /// Its client id: the token's `sub` and `client_id`.
        client_id: &'a str,
    },
    /// A person, through a token exchange from one of their sessions.
    Person {
        /// Their stable id (the token's `sub`).
        id: Uuid,
        /// Their username (the `username` claim, for display).
        username: &'a str,
        /// The session exchanged from (`sid`): ending it ends the token.
        session: Uuid,
        /// The process acting for them, if any (`act`).
        act: Option<Actor>,
    },
}

/// What a grant decided to issue.
pub(crate) struct Issue<'a> {
    /// The environment.
    pub env: &'a EnvironmentSettings,
    /// Whose token.
    pub holder: Holder<'a>,
    /// The scopes granted.
    pub scopes: Vec<String>,
    /// Issued at.
    pub at: OffsetDateTime,
    /// How long it lives (already capped by policy, the grant and the session).
    pub lifetime: Duration,
    /// The grant it is minted under, if any.
    pub grant: Option<&'a Grant>,
    /// The audit trail's name for the grant type.
    pub grant_type: &'static str,
    /// The audit actor (`agent:…` or `user:…`).
    pub actor: String,
}

/// Sign the token `issue` describes, record it, and answer it.
pub(crate) async fn issue(state: &AppState, issue: Issue<'_>) -> Result<TokenResponse, OAuthError> {
    let Issue {
        env,
        holder,
        scopes,
        at,
        lifetime,
        grant,
        grant_type,
        actor,
    } = issue;
    let env_name = env.name.as_str();
    let iat = at.unix_timestamp();
    let (sub, username, client_id, act, sid, audit_subject) = match &holder {
        Holder::Agent { client_id } => (
            client_id.to_string(),
            None,
            client_id.to_string(),
            None,
            None,
            client_id.to_string(),
        ),
        Holder::Person {
            id,
            username,
            session,
            act,
        } => (
            id.to_string(),
            Some(username.to_string()),
            crate::domain::CLI_CLIENT_ID.to_string(),
            act.clone(),
            Some(session.to_string()),
            username.to_string(),
        ),
    };
    let claims = AccessClaims {
        iss: env.issuer(&state.settings.public_url),
        sub,
        username,
        aud: env.audience.clone(),
        client_id,
        scope: scopes.join(" "),
        env: env_name.to_string(),
        iat,
        nbf: iat,
        exp: iat + lifetime.as_secs() as i64,
        jti: Uuid::new_v4().to_string(),
        act,
        grant: grant.map(|g| g.id.to_string()),
        sid,
    };
    let signer = state.keys.signer(&env.key_set()).ok_or_else(|| {
        tracing::error!(env = env_name, "no signing key for the environment");
        OAuthError::Unavailable
    })?;
    let access_token = token::sign(&signer, &claims).map_err(|e| {
        tracing::error!(error = ?e, "signing failed");
        OAuthError::Unavailable
    })?;
    let mut event = NewAuditEvent::new("token.issued", actor, Outcome::Success)
        .env(env_name)
        .subject(audit_subject)
        .detail("jti", claims.jti.clone())
        .detail("kid", signer.kid.clone())
        .detail("scope", claims.scope.clone())
        .detail("exp", claims.exp)
        .detail("grant_type", grant_type);
    if let Holder::Person { session, .. } = &holder {
        event = event
            .detail("session", session.to_string())
            .detail("act", claims.act.as_ref().map(|a| a.sub.clone()));
    }
    let event = event.detail("grant", claims.grant.clone());
    // Invariant 7: no token leaves unless its audit event has committed.
    if let Err(e) = state.store.append_audit(event).await {
        tracing::error!(error = ?e, "cannot record an issuance; the token is discarded");
        return Err(OAuthError::Unavailable);
    }
    tracing::info!(env = env_name, client_id = %claims.client_id, jti = %claims.jti, "token issued");
    Ok(TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in: lifetime.as_secs(),
        scope: claims.scope,
        issued_token_type: match holder {
            Holder::Agent { .. } => None,
            Holder::Person { .. } => Some(super::ACCESS_TOKEN_TYPE),
        },
    })
}
