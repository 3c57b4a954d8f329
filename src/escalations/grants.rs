//! Grants: the access an approved request gives, finding the one that covers a token
//! request, and revoking one.

use uuid::Uuid;

use super::views::{GrantView, grant_view, may_see_grant};
use super::{EscalationError, announce, check_note, store_err};
use crate::auth::Principal;
use crate::domain::{Escalation, Grant, NewAuditEvent, Outcome};
use crate::policy::escalation as rules;
use crate::state::AppState;
use crate::store::{GrantFilter, StoreError};

pub(super) fn grant_event(e: &Escalation, g: &Grant, by: &str) -> NewAuditEvent {
    NewAuditEvent::new("grant.created", by.to_string(), Outcome::Success)
        .env(e.environment.clone())
        .subject(g.id.to_string())
        .detail("escalation", e.id.to_string())
        .detail("holder", g.holder.clone())
        .detail("scopes", g.scopes.clone())
        .detail(
            "approvers",
            e.approvals.iter().map(|a| a.approver.clone()).collect::<Vec<_>>(),
        )
        .detail(
            "ends_at",
            g.ends_at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        )
}

/// `POST /v1/grants/{id}/revoke`: the holder, an approver of its environment or an admin
/// ends a grant now. Tokens minted under it stop being active; no new ones are minted.
pub async fn revoke_grant(
    state: &AppState,
    principal: &Principal,
    id: Uuid,
    reason: &str,
) -> Result<GrantView, EscalationError> {
    let reason = check_note(reason, "reason for the revocation")?;
    let g = state.store.grant(id).await.map_err(store_err)?;
    if !may_see_grant(state, principal, &g) {
        return Err(EscalationError::NotFound);
    }
    let actor = principal.actor();
    let event = NewAuditEvent::new("grant.revoked", actor.clone(), Outcome::Success)
        .env(g.environment.clone())
        .subject(g.id.to_string())
        .detail("escalation", g.escalation_id.to_string());
    let g = match state
        .store
        .revoke_grant(id, &actor, &reason, state.now(), event)
        .await
    {
        Ok(g) => g,
        Err(StoreError::Conflict) => {
            return Err(EscalationError::Conflict(format!(
                "grant {id} is already revoked or has ended"
            )));
        }
        Err(other) => return Err(store_err(other)),
    };
    state.changes.notify_waiters();
    if let Ok(e) = state.store.escalation(g.escalation_id).await {
        announce(state, "grant.revoked", &e, Some(&g), Some(&actor));
    }
    Ok(grant_view(state, g).await)
}

/// The active grant of `holder` in `env` that covers every scope of `needed` for a token
/// minted now by `actor` (the delegated process, if any).
pub async fn covering_grant(
    state: &AppState,
    holder: &str,
    env: &str,
    needed: &[String],
    actor: Option<&str>,
) -> Result<Option<Grant>, StoreError> {
    let at = state.now();
    let grants = state
        .store
        .grants(&GrantFilter {
            holder: Some(holder.to_string()),
            environment: Some(env.to_string()),
            active_at: Some(at),
            limit: 1000,
        })
        .await?;
    Ok(rules::covering_grant(&grants, holder, env, needed, actor, at).cloned())
}
