//! The background task that expires requests and records ended grants, so that happens
//! even when nobody calls the API.

use time::OffsetDateTime;

use super::{SWEEP_BATCH, SWEEP_INTERVAL, announce};
use crate::domain::{Escalation, Grant, NewAuditEvent, Outcome};
use crate::state::AppState;
use crate::store::StoreError;

fn expired_event(e: &Escalation) -> NewAuditEvent {
    NewAuditEvent::new("escalation.expired", "system", Outcome::Success)
        .env(e.environment.clone())
        .subject(e.id.to_string())
        .detail("approvals", e.approvals.len())
        .detail("quorum", e.quorum)
}

fn ended_event(g: &Grant) -> NewAuditEvent {
    NewAuditEvent::new("grant.ended", "system", Outcome::Success)
        .env(g.environment.clone())
        .subject(g.id.to_string())
        .detail("escalation", g.escalation_id.to_string())
}

/// One pass of the background task: expire overdue requests, record ended grants.
/// Returns how many of each it handled.
pub async fn sweep(state: &AppState, at: OffsetDateTime) -> Result<(usize, usize), StoreError> {
    let expired = state
        .store
        .expire_escalations(at, SWEEP_BATCH, expired_event)
        .await?;
    for e in &expired {
        tracing::info!(id = %e.id, "escalation expired");
        announce(state, "escalation.expired", e, None, None);
    }
    let ended = state.store.end_grants(at, SWEEP_BATCH, ended_event).await?;
    if !expired.is_empty() || !ended.is_empty() {
        state.changes.notify_waiters();
    }
    Ok((expired.len(), ended.len()))
}

/// Run [`sweep`] every [`SWEEP_INTERVAL`] until the returned handle is aborted.
pub fn spawn_sweeper(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = sweep(&state, state.now()).await {
                tracing::warn!(error = ?e, "escalation sweep failed; retrying");
            }
        }
    })
}
