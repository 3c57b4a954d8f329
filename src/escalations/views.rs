//! What a caller may see of escalations and grants (`http/` maps these views to the
//! bodies of `crate::wire::escalations`).

use std::time::Duration;

use uuid::Uuid;

use super::sweeper::sweep;
use super::{EscalationError, MAX_LIST, MAX_WAIT, WAIT_POLL, store_err};
use crate::auth::{AgentKind, AgentPrincipal, Principal, effective_roles};
use crate::domain::{Escalation, EscalationEvent, EscalationState, Grant, agent_holder, now, person_holder};
use crate::policy::escalation as rules;
use crate::state::AppState;
use crate::store::{EscalationFilter, GrantFilter};

/// A request with what the caller may see of it.
#[derive(Debug, Clone)]
pub struct EscalationView {
    /// The request.
    pub escalation: Escalation,
    /// Its destructive scopes.
    pub destructive_scopes: Vec<String>,
    /// Its grant, once approved.
    pub grant: Option<GrantView>,
    /// Its history, oldest first.
    pub history: Vec<EscalationEvent>,
    /// The approvals page for it.
    pub url: String,
    /// Whether the duration asked for was cut to the environment's maximum.
    pub duration_capped: bool,
    /// The requesting registered agent's owner (also its `sponsor`, so their approval
    /// never counts toward this request).
    pub owner: Option<String>,
}

/// A grant as the API shows it.
#[derive(Debug, Clone)]
pub struct GrantView {
    /// The grant.
    pub grant: Grant,
    /// `active`, `revoked` or `ended`.
    pub status: &'static str,
    /// Who holds it, readable (`bob`, `agent <client id>`).
    pub holder_name: String,
}

/// The approvals page URL for request `id`.
pub fn page_url(state: &AppState, id: Uuid) -> String {
    format!(
        "{}/approvals#req-{id}",
        state.settings.public_url.trim_end_matches('/')
    )
}

async fn holder_name(state: &AppState, holder: &str) -> String {
    if let Some(id) = holder.strip_prefix("user:").and_then(|s| Uuid::parse_str(s).ok()) {
        match state.store.user_by_id(id).await {
            Ok(u) => u.username,
            Err(_) => holder.to_string(),
        }
    } else if let Some(cid) = holder.strip_prefix("agent:") {
        format!("agent {cid}")
    } else {
        holder.to_string()
    }
}

pub(super) async fn grant_view(state: &AppState, grant: Grant) -> GrantView {
    GrantView {
        status: grant.status(state.now()),
        holder_name: holder_name(state, &grant.holder).await,
        grant,
    }
}

pub(super) async fn view(
    state: &AppState,
    e: Escalation,
    capped: bool,
) -> Result<EscalationView, EscalationError> {
    let grant = match state.store.grant_of_escalation(e.id).await.map_err(store_err)? {
        Some(g) => Some(grant_view(state, g).await),
        None => None,
    };
    let history = state.store.escalation_history(e.id).await.map_err(store_err)?;
    Ok(EscalationView {
        destructive_scopes: rules::destructive_of(&state.settings, &e.scopes),
        url: page_url(state, e.id),
        owner: e.agent_owner().map(str::to_string),
        escalation: e,
        grant,
        history,
        duration_capped: capped,
    })
}

/// Whether `principal` may see request `e`.
pub(super) fn may_view(state: &AppState, principal: &Principal, e: &Escalation) -> bool {
    match principal {
        Principal::Person(auth) => {
            let roles = effective_roles(state, auth);
            e.requester_user_id == Some(auth.user.id)
                || e.sponsor_user_id == Some(auth.user.id)
                || e.holder == person_holder(auth.user.id)
                || state.settings.is_admin(&roles)
                || is_approver_for(state, &roles, &e.environment)
        }
        Principal::Agent(a) => is_agents_own(a, e),
    }
}

pub(super) fn is_agents_own(a: &AgentPrincipal, e: &Escalation) -> bool {
    match &a.kind {
        AgentKind::Registered(agent) => e.holder == agent_holder(&agent.client_id),
        AgentKind::Delegated { user, actor } => {
            e.sponsor_user_id == Some(user.id) && e.requester == *actor && e.environment == a.environment
        }
    }
}

pub(super) fn is_approver_for(state: &AppState, roles: &[String], env: &str) -> bool {
    state
        .settings
        .environment(env)
        .is_some_and(|e| roles.contains(&e.approval.approver_role))
}

/// `GET /v1/escalations/{id}`, optionally waiting up to `wait` for it to leave `pending`.
pub async fn get(
    state: &AppState,
    principal: &Principal,
    id: Uuid,
    wait: Option<Duration>,
) -> Result<EscalationView, EscalationError> {
    let mut e = state.store.escalation(id).await.map_err(store_err)?;
    // Someone who may not see it learns nothing, not even that it exists.
    if !may_view(state, principal, &e) {
        return Err(EscalationError::NotFound);
    }
    // Overdue but not yet swept: expire it now (audited, once), so the answer is true.
    if e.state == EscalationState::Pending && e.expires_at <= state.now() {
        sweep(state, state.now()).await.map_err(store_err)?;
        e = state.store.escalation(id).await.map_err(store_err)?;
    }
    if let Some(wait) = wait.map(|w| w.min(MAX_WAIT)) {
        let deadline = tokio::time::Instant::now() + wait;
        // A shutting-down server answers every waiter at once with the current state;
        // the caller polls again (another replica, or this one restarted).
        let mut stopping = state.stopping.subscribe();
        while e.state == EscalationState::Pending && e.expires_at > state.now() {
            let notified = state.changes.notified();
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() || *stopping.borrow_and_update() {
                break;
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(left.min(WAIT_POLL)) => {}
                _ = stopping.changed() => {}
            }
            e = state.store.escalation(id).await.map_err(store_err)?;
        }
        if e.state == EscalationState::Pending && e.expires_at <= state.now() {
            sweep(state, state.now()).await.map_err(store_err)?;
            e = state.store.escalation(id).await.map_err(store_err)?;
        }
    }
    view(state, e, false).await
}

/// What to list.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Only pending requests.
    pub pending: bool,
    /// Only this environment.
    pub environment: Option<String>,
    /// At most this many.
    pub limit: Option<u32>,
}

/// `GET /v1/escalations`: the requests the caller may see, newest first.
pub async fn list(
    state: &AppState,
    principal: &Principal,
    q: &ListQuery,
) -> Result<Vec<EscalationView>, EscalationError> {
    let filter = EscalationFilter {
        state: q.pending.then_some(EscalationState::Pending),
        environment: q.environment.clone(),
        holder: None,
        limit: MAX_LIST * 5,
    };
    let limit = q.limit.unwrap_or(MAX_LIST).clamp(1, MAX_LIST) as usize;
    let mut out = Vec::new();
    for e in state.store.escalations(&filter).await.map_err(store_err)? {
        if out.len() >= limit {
            break;
        }
        // A pending request past its deadline is expired, whether or not the sweeper has run.
        if q.pending && e.expires_at <= state.now() {
            continue;
        }
        if may_view(state, principal, &e) {
            out.push(view(state, e, false).await?);
        }
    }
    Ok(out)
}

pub(super) fn may_see_grant(state: &AppState, principal: &Principal, g: &Grant) -> bool {
    match principal {
        Principal::Person(auth) => {
            let roles = effective_roles(state, auth);
            g.holder == person_holder(auth.user.id)
                || state.settings.is_admin(&roles)
                || is_approver_for(state, &roles, &g.environment)
        }
        Principal::Agent(a) => match &a.kind {
            AgentKind::Registered(agent) => g.holder == agent_holder(&agent.client_id),
            AgentKind::Delegated { user, actor } => {
                g.holder == person_holder(user.id) && g.holder_actor.as_deref() == Some(actor.as_str())
            }
        },
    }
}

/// `GET /v1/grants`: the grants the caller may see, newest first.
pub async fn grants(
    state: &AppState,
    principal: &Principal,
    active_only: bool,
    environment: Option<String>,
) -> Result<Vec<GrantView>, EscalationError> {
    let filter = GrantFilter {
        holder: None,
        environment,
        active_at: active_only.then(now),
        limit: MAX_LIST * 5,
    };
    let mut out = Vec::new();
    for g in state.store.grants(&filter).await.map_err(store_err)? {
        if out.len() >= MAX_LIST as usize {
            break;
        }
        if may_see_grant(state, principal, &g) {
            out.push(grant_view(state, g).await);
        }
    }
    Ok(out)
}
