//! Deciding a request: approvals with a fresh TOTP code each (invariant 4), denials and
//! cancellations, each exactly once.

use std::net::IpAddr;

use uuid::Uuid;

use super::grants::grant_event;
use super::views::{EscalationView, is_agents_own, is_approver_for, may_view, view};
use super::{EscalationError, announce, check_note, store_err};
use crate::auth::{Authenticated, Principal, effective_roles};
use crate::domain::{Approval, Escalation, EscalationState, NewAuditEvent, Outcome};
use crate::people;
use crate::policy::escalation::{self as rules, ApprovalRefusal};
use crate::state::AppState;
use crate::store::{ApproveOutcome, StoreError};

fn not_pending(e: &Escalation) -> EscalationError {
    let state = if e.state == EscalationState::Pending {
        "expired"
    } else {
        e.state.as_str()
    };
    EscalationError::Conflict(format!(
        "request {} is {state}; it can no longer be decided",
        e.id
    ))
}

async fn refuse_decision(
    state: &AppState,
    auth: &Authenticated,
    e: &Escalation,
    action: &str,
    refusal: &ApprovalRefusal,
) -> Result<(), EscalationError> {
    let event = NewAuditEvent::new(
        "escalation.decision_refused",
        format!("user:{}", auth.user.username),
        Outcome::Refused,
    )
    .env(e.environment.clone())
    .subject(e.id.to_string())
    .detail("action", action.to_string())
    .detail("reason", refusal.reason());
    // Within the person's budget of audited refusals (see crate::refusals).
    let principal = format!("user:{}", auth.user.username);
    state
        .refusals
        .record(state.store.as_ref(), &principal, event)
        .await
        .map_err(store_err)
}

/// Load a request for a decision by `auth`: it must exist, be pending, and `auth` must be
/// an eligible approver.
async fn decidable(
    state: &AppState,
    auth: &Authenticated,
    id: Uuid,
    action: &str,
) -> Result<Escalation, EscalationError> {
    let e = state.store.escalation(id).await.map_err(store_err)?;
    let roles = effective_roles(state, auth);
    // Someone who may not see it, and holds no approver role there, learns nothing.
    let principal = Principal::Person(auth.clone());
    if !may_view(state, &principal, &e) && !is_approver_for(state, &auth.user.roles, &e.environment) {
        let refusal = ApprovalRefusal::NotApprover {
            role: String::new(),
            needs_totp: false,
        };
        refuse_decision(state, auth, &e, action, &refusal).await?;
        return Err(EscalationError::NotFound);
    }
    if let Err(refusal) = rules::check_approver(&state.settings, &e, auth.user.id, &auth.user.roles, &roles) {
        refuse_decision(state, auth, &e, action, &refusal).await?;
        return Err(EscalationError::Forbidden(refusal.message(&e.environment)));
    }
    if e.state != EscalationState::Pending || e.expires_at <= state.now() {
        return Err(not_pending(&e));
    }
    Ok(e)
}

/// Map a store conflict on a decision to a 409 naming the request's state now.
async fn conflict(state: &AppState, id: Uuid) -> EscalationError {
    match state.store.escalation(id).await {
        Ok(e) => not_pending(&e),
        Err(e) => store_err(e),
    }
}

/// `POST /v1/escalations/{id}/approve`: an eligible approver's approval, confirmed with a
/// fresh TOTP code. Completes the request when the quorum is reached.
pub async fn approve(
    state: &AppState,
    peer: Option<IpAddr>,
    auth: &Authenticated,
    id: Uuid,
    totp_code: &str,
) -> Result<EscalationView, EscalationError> {
    let e = decidable(state, auth, id, "approve").await?;
    // SECURITY: invariant 4. Each approval needs its own fresh code; the time step is
    // consumed, so one code never approves twice.
    people::confirm_totp(state, peer, auth, totp_code, "escalation approval")
        .await
        .map_err(EscalationError::Totp)?;
    let at = state.now();
    let actor = format!("user:{}", auth.user.username);
    let approval = Approval {
        approver_id: auth.user.id,
        approver: auth.user.username.clone(),
        approved_at: at,
    };
    let grant_id = Uuid::new_v4();
    let on_approval = NewAuditEvent::new("escalation.approval", actor.clone(), Outcome::Success)
        .env(e.environment.clone())
        .subject(e.id.to_string())
        .detail("totp", "fresh")
        .detail("session", auth.session.id.to_string());
    let mut preview = e.clone();
    preview.approvals.push(approval.clone());
    let on_grant = grant_event(&preview, &rules::grant_for(&preview, grant_id, at), &actor)
        .detail("event", "escalation.approved");
    let outcome = match state
        .store
        .approve_escalation(id, &approval, at, grant_id, on_approval, on_grant)
        .await
    {
        Ok(o) => o,
        Err(StoreError::Conflict) => return Err(conflict(state, id).await),
        Err(other) => return Err(store_err(other)),
    };
    state.changes.notify_waiters();
    match outcome {
        ApproveOutcome::Granted(e, g) => {
            tracing::info!(id = %e.id, grant = %g.id, "escalation approved");
            announce(
                state,
                "escalation.decided",
                &e,
                Some(&g),
                Some(&auth.user.username),
            );
            view(state, e, false).await
        }
        ApproveOutcome::Recorded(e) => view(state, e, false).await,
        ApproveOutcome::AlreadyApproved(e) => Err(EscalationError::Conflict(format!(
            "you have already approved request {}; it needs another approver",
            e.id
        ))),
    }
}

/// `POST /v1/escalations/{id}/deny`: one eligible approver's "no" ends the request.
pub async fn deny(
    state: &AppState,
    auth: &Authenticated,
    id: Uuid,
    reason: &str,
) -> Result<EscalationView, EscalationError> {
    let reason = check_note(reason, "reason for the denial")?;
    let e = decidable(state, auth, id, "deny").await?;
    let event = NewAuditEvent::new(
        "escalation.denied",
        format!("user:{}", auth.user.username),
        Outcome::Success,
    )
    .env(e.environment.clone())
    .subject(e.id.to_string())
    .detail("reason", reason.clone());
    let e = match state
        .store
        .finish_escalation(
            id,
            EscalationState::Denied,
            &auth.user.username,
            Some(&reason),
            state.now(),
            event,
        )
        .await
    {
        Ok(e) => e,
        Err(StoreError::Conflict) => return Err(conflict(state, id).await),
        Err(other) => return Err(store_err(other)),
    };
    state.changes.notify_waiters();
    announce(state, "escalation.decided", &e, None, Some(&auth.user.username));
    view(state, e, false).await
}

/// `POST /v1/escalations/{id}/cancel`: the requester (or its sponsor, or an admin)
/// withdraws a pending request.
pub async fn cancel(
    state: &AppState,
    principal: &Principal,
    id: Uuid,
) -> Result<EscalationView, EscalationError> {
    let e = state.store.escalation(id).await.map_err(store_err)?;
    if !may_view(state, principal, &e) {
        return Err(EscalationError::NotFound);
    }
    let allowed = match principal {
        Principal::Person(auth) => {
            e.requester_user_id == Some(auth.user.id)
                || e.sponsor_user_id == Some(auth.user.id)
                || state.settings.is_admin(&effective_roles(state, auth))
        }
        Principal::Agent(a) => is_agents_own(a, &e),
    };
    if !allowed {
        return Err(EscalationError::Forbidden(
            "only the requester, its sponsor or an admin can cancel a request".into(),
        ));
    }
    if e.state != EscalationState::Pending || e.expires_at <= state.now() {
        return Err(not_pending(&e));
    }
    let actor = principal.actor();
    // Recorded as deciders are elsewhere: a person by name, an agent by its actor.
    let by = match principal {
        Principal::Person(auth) => auth.user.username.clone(),
        Principal::Agent(_) => actor.clone(),
    };
    let event = NewAuditEvent::new("escalation.cancelled", actor.clone(), Outcome::Success)
        .env(e.environment.clone())
        .subject(e.id.to_string());
    let e = match state
        .store
        .finish_escalation(id, EscalationState::Cancelled, &by, None, state.now(), event)
        .await
    {
        Ok(e) => e,
        Err(StoreError::Conflict) => return Err(conflict(state, id).await),
        Err(other) => return Err(store_err(other)),
    };
    state.changes.notify_waiters();
    announce(state, "escalation.decided", &e, None, Some(&actor));
    view(state, e, false).await
}
