//! `grant_type=urn:ietf:params:oauth:grant-type:token-exchange` (RFC 8693): a person's
//! session token in, an environment token out, within the person's roles (invariant 3);
//! production or a destructive scope needs a grant bound to one stepped-up session.

use std::net::IpAddr;
use std::time::Duration;

use super::issue::{Holder, Issue};
use super::refusal::{known_scopes, record, record_refusal, refusal_error};
use super::{ACCESS_TOKEN_TYPE, OAuthError, PROCESS_TOKEN_TYPE, TokenResponse};
use crate::auth::{Authenticated, SessionError, authenticate_session, effective_roles};
use crate::config::EnvironmentSettings;
use crate::domain::{NewAuditEvent, Outcome};
use crate::policy;
use crate::state::AppState;
use crate::store::StoreError;
use crate::token::Actor;

/// Parameters of an RFC 8693 exchange.
pub struct ExchangeRequest<'a> {
    /// The session access token.
    pub subject_token: &'a str,
    /// Must be [`ACCESS_TOKEN_TYPE`].
    pub subject_token_type: &'a str,
    /// Name of the process acting for the person, if any.
    pub actor_token: Option<&'a str>,
    /// Must be [`PROCESS_TOKEN_TYPE`] when `actor_token` is given.
    pub actor_token_type: Option<&'a str>,
    /// Requested scopes.
    pub scope: Option<&'a str>,
}

fn actor_from(token: Option<&str>, typ: Option<&str>) -> Result<Option<Actor>, OAuthError> {
    match (token, typ) {
        (None, None) => Ok(None),
        (Some(name), Some(PROCESS_TOKEN_TYPE)) => {
            let clean: String = name
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || "._-".contains(*c))
                .take(64)
                .collect();
            if clean.is_empty() {
                return Err(OAuthError::InvalidRequest(
                    "actor_token must name the process".into(),
                ));
            }
            Ok(Some(Actor {
                sub: format!("process:{clean}"),
            }))
        }
        _ => Err(OAuthError::InvalidRequest(format!(
            "actor_token and actor_token_type go together; the only actor type is {PROCESS_TOKEN_TYPE}"
        ))),
    }
}

/// `grant_type=token-exchange` at environment `env_name`: a session token in, an
/// environment token out, within the person's roles.
pub async fn exchange(
    state: &AppState,
    peer: Option<IpAddr>,
    env: &EnvironmentSettings,
    req: ExchangeRequest<'_>,
) -> Result<TokenResponse, OAuthError> {
    let env_name = env.name.as_str();
    if req.subject_token_type != ACCESS_TOKEN_TYPE {
        return Err(OAuthError::InvalidRequest(format!(
            "subject_token_type must be {ACCESS_TOKEN_TYPE}"
        )));
    }
    let act = actor_from(req.actor_token, req.actor_token_type)?;
    let auth = match authenticate_session(state, req.subject_token).await {
        Ok(a) => a,
        Err(SessionError::Unavailable) => return Err(OAuthError::Unavailable),
        Err(SessionError::Invalid) => {
            let event = NewAuditEvent::new("token.refused", "anonymous", Outcome::Refused)
                .env(env_name)
                .detail("reason", "invalid_session")
                .detail("grant_type", "token-exchange");
            if state.refusals.admit(peer, env_name, "invalid_session") {
                state
                    .store
                    .append_audit(event)
                    .await
                    .map_err(|_| OAuthError::Unavailable)?;
            }
            return Err(OAuthError::InvalidGrant(
                "the session is not valid; run `airlock login`".into(),
            ));
        }
    };
    let user = &auth.user;
    let actor = format!("user:{}", user.username);
    let refuse = |reason: &str| {
        NewAuditEvent::new("token.refused", actor.clone(), Outcome::Refused)
            .env(env_name)
            .subject(user.username.clone())
            .detail("reason", reason.to_string())
            .detail("grant_type", "token-exchange")
            .detail("act", act.as_ref().map(|a| a.sub.clone()))
    };
    // Policy refusals of this person count against their budget (see crate::refusals).
    let audit_refusal = |event: NewAuditEvent| record_refusal(state, &actor, event);
    if state.settings.auth.require_totp && !user.totp_enrolled() {
        audit_refusal(refuse("totp_not_enrolled")).await?;
        return Err(OAuthError::AccessDenied(
            "this server requires TOTP for everyone: run `airlock totp enroll` first".into(),
        ));
    }
    let roles = effective_roles(state, &auth);
    let plan = match policy::human_scope_plan(&state.settings, env, &roles, req.scope) {
        Ok(p) => p,
        Err(refusal) => {
            let event =
                refuse(refusal.reason()).detail("requested", req.scope.map(|s| known_scopes(state, s)));
            audit_refusal(event).await?;
            return Err(refusal_error(&refusal, env_name));
        }
    };
    // Invariants 3 and 5: production, a destructive scope, or anything the roles do not
    // give needs an active grant of this person covering all of it.
    let grant = if plan.needs_grant.is_empty() {
        None
    } else {
        let holder = crate::domain::person_holder(user.id);
        let actor_sub = act.as_ref().map(|a| a.sub.as_str());
        let found =
            crate::escalations::covering_grant(state, &holder, env_name, &plan.needs_grant, actor_sub)
                .await
                .map_err(|_| OAuthError::Unavailable)?;
        let Some(grant) = found else {
            let refusal = policy::human_refusal(&state.settings, env, &roles, &plan.needs_grant);
            audit_refusal(
                refuse(refusal.reason()).detail("requested", known_scopes(state, &plan.wanted.join(" "))),
            )
            .await?;
            return Err(refusal_error(&refusal, env_name));
        };
        // A grant that reaches production, or covers a destructive scope in any
        // environment, is bound to one session after a fresh step-up.
        let destructive = grant
            .scopes
            .iter()
            .any(|s| crate::policy::escalation::is_destructive(&state.settings, s));
        if env.is_prod() || destructive {
            bind_grant(state, &auth, &grant, &refuse).await?;
        }
        Some(grant)
    };
    let scopes = plan.wanted;
    let at = state.now();
    let mut lifetime = policy::token_lifetime(env).min(Duration::from_secs(
        (auth.session.expires_at - at).whole_seconds().max(0) as u64,
    ));
    if let Some(g) = &grant {
        // Invariant 6: never past the grant's end.
        lifetime = crate::policy::escalation::grant_token_lifetime(lifetime, g, at);
        if lifetime.is_zero() {
            audit_refusal(refuse("grant_ended")).await?;
            return Err(OAuthError::AccessDenied(
                "the grant has ended; ask for a new escalation".into(),
            ));
        }
    }
    let response = super::issue::issue(
        state,
        Issue {
            env,
            holder: Holder::Person {
                id: user.id,
                username: &user.username,
                session: auth.session.id,
                act,
            },
            scopes,
            at,
            lifetime,
            grant: grant.as_ref(),
            grant_type: "token-exchange",
            actor,
        },
    )
    .await?;
    let _ = state.store.touch_session(auth.session.id, at).await;
    Ok(response)
}

/// Invariants 3 and 5 for people: a prod-tier grant, or one covering a destructive
/// scope, is used only from the session that first used it, and that first use needs a
/// TOTP code confirmed after the grant started (so a copied session file cannot use it).
async fn bind_grant(
    state: &AppState,
    auth: &Authenticated,
    grant: &crate::domain::Grant,
    refuse: &(dyn Fn(&str) -> NewAuditEvent + Sync),
) -> Result<(), OAuthError> {
    let other_session = || {
        OAuthError::AccessDenied(format!(
            "this grant is bound to the session that first used it; use that session, \
             or ask for a new escalation: {}",
            crate::policy::escalate_command(&grant.environment, &grant.scopes)
        ))
    };
    let audit = |event: NewAuditEvent| record(state, event);
    match grant.session_id {
        Some(sid) if sid == auth.session.id => return Ok(()),
        Some(_) => {
            audit(refuse("grant_bound_to_other_session")).await?;
            return Err(other_session());
        }
        None => {}
    }
    let stepped_up = auth
        .session
        .stepped_up_at
        .is_some_and(|t| t >= grant.starts_at && state.now() - t < state.settings.auth.step_up_lifetime);
    if !stepped_up {
        audit(refuse("step_up_required")).await?;
        return Err(OAuthError::StepUpRequired(
            "your first token under this grant needs a fresh TOTP code: \
             run `airlock step-up`, then ask again (`airlock token --env ENV` does this for you)"
                .replace("ENV", &grant.environment),
        ));
    }
    let event = NewAuditEvent::new(
        "grant.bound",
        format!("user:{}", auth.user.username),
        Outcome::Success,
    )
    .env(grant.environment.clone())
    .subject(grant.id.to_string())
    .detail("session", auth.session.id.to_string());
    match state
        .store
        .bind_grant_session(grant.id, auth.session.id, state.now(), event)
        .await
    {
        Ok(()) => Ok(()),
        Err(StoreError::Conflict) => {
            audit(refuse("grant_bound_to_other_session")).await?;
            Err(other_session())
        }
        Err(_) => Err(OAuthError::Unavailable),
    }
}
