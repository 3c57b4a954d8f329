//! Refusals at the token endpoints, each written to the audit trail before the answer
//! exists (invariant 7), within the budgets of [`crate::refusals`].

use std::net::IpAddr;

use super::OAuthError;
use crate::domain::{NewAuditEvent, Outcome};
use crate::policy::HumanRefusal;
use crate::state::AppState;

/// Record a refusal; if even that cannot be recorded, the answer becomes 503.
pub(super) async fn refuse(state: &AppState, event: NewAuditEvent, error: OAuthError) -> OAuthError {
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
pub(super) async fn refuse_anonymous(
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

/// The requested scopes as the audit trail may record them: names from the catalogue
/// only. SECURITY: anything else is counted, never copied, since a caller controls it
/// (a token pasted as a scope must not reach the trail).
pub(super) fn requested_for_audit(
    settings: &crate::config::Settings,
    scope: Option<&str>,
) -> serde_json::Value {
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

/// Write a token-endpoint decision to the audit trail; if it cannot be written, the
/// request fails closed (invariant 7).
pub(super) async fn record(state: &AppState, event: NewAuditEvent) -> Result<(), OAuthError> {
    state
        .store
        .append_audit(event)
        .await
        .map(|_| ())
        .map_err(|_| OAuthError::Unavailable)
}

/// Write a policy refusal of `principal` at the token endpoint, within its budget (see
/// [`crate::refusals`]); an admitted refusal that cannot be written fails closed.
pub(super) async fn record_refusal(
    state: &AppState,
    principal: &str,
    event: NewAuditEvent,
) -> Result<(), OAuthError> {
    state
        .refusals
        .record(state.store.as_ref(), principal, event)
        .await
        .map_err(|_| OAuthError::Unavailable)
}

pub(super) fn known_scopes(state: &AppState, raw: &str) -> Vec<String> {
    raw.split(' ')
        .filter(|s| state.settings.scopes.contains_key(*s))
        .map(str::to_string)
        .collect()
}

pub(super) fn refusal_error(r: &HumanRefusal, env: &str) -> OAuthError {
    if r.is_access_denied() {
        OAuthError::AccessDenied(r.description(env))
    } else {
        OAuthError::InvalidScope(r.description(env))
    }
}
