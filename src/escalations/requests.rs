//! Asking for an escalation: who may ask for what, the per-holder limits, and the
//! request as stored.

use std::time::Duration;

use uuid::Uuid;

use super::grants::grant_event;
use super::views::{EscalationView, view};
use super::{EscalationError, MAX_PENDING_PER_HOLDER, announce, store_err};
use crate::auth::{AgentKind, AgentPrincipal, Principal, effective_roles};
use crate::domain::{
    Escalation, EscalationState, NewAuditEvent, Outcome, RequesterKind, agent_holder, person_holder,
};
use crate::policy::escalation::{self as rules, RequestRefusal, Requester};
use crate::state::AppState;
use crate::store::{Creation, CreationLimit, EscalationFilter};

/// A request as asked for.
#[derive(Debug, Clone)]
pub struct NewRequest {
    /// Environment.
    pub environment: String,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Asked duration.
    pub duration: Duration,
    /// Why.
    pub reason: String,
}

fn requester_of(state: &AppState, principal: &Principal) -> Requester {
    match principal {
        Principal::Person(auth) => Requester::Person {
            user_id: auth.user.id,
            username: auth.user.username.clone(),
            roles: effective_roles(state, auth),
        },
        Principal::Agent(AgentPrincipal {
            environment,
            kind: AgentKind::Registered(agent),
        }) => Requester::Agent {
            client_id: agent.client_id.clone(),
            environment: environment.clone(),
        },
        Principal::Agent(AgentPrincipal {
            environment,
            kind: AgentKind::Delegated { user, actor },
        }) => Requester::Delegated {
            user_id: user.id,
            username: user.username.clone(),
            roles: crate::policy::effective_roles(&state.settings, &user.roles, false),
            actor: actor.clone(),
            environment: environment.clone(),
        },
    }
}

/// `POST /v1/escalations`: record a request (or refuse it, audited).
pub async fn create(
    state: &AppState,
    principal: &Principal,
    req: NewRequest,
) -> Result<EscalationView, EscalationError> {
    let requester = requester_of(state, principal);
    let actor = requester.actor();
    let budget_key = principal.budget_key();
    // Policy refusals count against the principal's budget of audited refusals;
    // cross-environment attempts never do (see crate::refusals).
    let refused = |event: NewAuditEvent| state.refusals.record(state.store.as_ref(), &budget_key, event);
    let plan = match rules::check_request(
        &state.settings,
        &requester,
        &req.environment,
        &req.scopes,
        req.duration,
        &req.reason,
    ) {
        Ok(p) => p,
        Err(refusal) => {
            let known = state.settings.environment(&req.environment).is_some();
            let event = NewAuditEvent::new(
                if matches!(refusal, RequestRefusal::CrossEnvironment { .. }) {
                    "cross_environment_attempt"
                } else {
                    "escalation.refused"
                },
                actor,
                Outcome::Refused,
            )
            .detail("reason", refusal.reason())
            .detail("action", "escalation.request")
            .detail("scopes", known_scopes(state, &req.scopes));
            let event = if known {
                event.env(req.environment.clone())
            } else {
                event
            };
            if matches!(refusal, RequestRefusal::CrossEnvironment { .. }) {
                state.store.append_audit(event).await.map_err(store_err)?;
            } else {
                refused(event).await.map_err(store_err)?;
            }
            let message = refusal.message(&req.environment);
            return Err(match refusal {
                RequestRefusal::UnknownEnvironment => EscalationError::UnknownEnvironment,
                RequestRefusal::CrossEnvironment { .. } | RequestRefusal::NotEscalatable => {
                    EscalationError::Forbidden(message)
                }
                _ => EscalationError::BadRequest(message),
            });
        }
    };
    let at = state.now();
    let (kind, requester_name, requester_user_id, sponsor, sponsor_user_id, holder, holder_actor) =
        match &requester {
            Requester::Person {
                user_id, username, ..
            } => (
                RequesterKind::Person,
                username.clone(),
                Some(*user_id),
                None,
                None,
                person_holder(*user_id),
                None,
            ),
            Requester::Agent { client_id, .. } => {
                // SECURITY: a registered agent's owner sponsors its requests, so an owner
                // who also holds the agent's secret is never the approval it needs.
                let (owner, owner_id) = match registered_owner(principal) {
                    Some((id, name)) => (Some(name), Some(id)),
                    None => (None, None),
                };
                (
                    RequesterKind::Agent,
                    client_id.clone(),
                    None,
                    owner,
                    owner_id,
                    agent_holder(client_id),
                    None,
                )
            }
            Requester::Delegated {
                user_id,
                username,
                actor,
                ..
            } => (
                RequesterKind::Agent,
                actor.clone(),
                None,
                Some(username.clone()),
                Some(*user_id),
                person_holder(*user_id),
                Some(actor.clone()),
            ),
        };
    let mut escalation = Escalation {
        id: Uuid::new_v4(),
        environment: req.environment.clone(),
        scopes: req.scopes.clone(),
        duration_secs: plan.duration.as_secs() as i64,
        reason: req.reason.trim().to_string(),
        requester_kind: kind,
        requester: requester_name,
        requester_user_id,
        sponsor,
        sponsor_user_id,
        holder,
        holder_actor,
        quorum: plan.quorum,
        state: EscalationState::Pending,
        created_at: at,
        expires_at: at + plan.pending_timeout,
        decided_at: None,
        decided_by: None,
        decision_reason: None,
        approvals: Vec::new(),
    };
    let pending = state
        .store
        .escalations(&EscalationFilter {
            state: Some(EscalationState::Pending),
            environment: None,
            holder: Some(escalation.holder.clone()),
            limit: MAX_PENDING_PER_HOLDER as u32 + 1,
        })
        .await
        .map_err(store_err)?;
    if pending.iter().filter(|p| p.expires_at > at).count() >= MAX_PENDING_PER_HOLDER {
        let event = NewAuditEvent::new("escalation.refused", actor, Outcome::Refused)
            .env(req.environment.clone())
            .detail("reason", "too_many_pending");
        refused(event).await.map_err(store_err)?;
        return Err(EscalationError::Conflict(format!(
            "you already have {MAX_PENDING_PER_HOLDER} pending requests; list them with \
             `airlock escalations list --pending`, cancel some with `airlock cancel ID`, or wait for a decision"
        )));
    }
    let created = NewAuditEvent::new("escalation.requested", actor.clone(), Outcome::Success)
        .env(req.environment.clone())
        .subject(escalation.id.to_string())
        .detail("scopes", escalation.scopes.clone())
        .detail("duration_secs", escalation.duration_secs)
        .detail("sponsor", escalation.sponsor.clone())
        .detail("quorum", escalation.quorum)
        .detail("duration_capped", plan.capped);
    let mut events = vec![created];
    let grant = if plan.auto_approve {
        escalation.state = EscalationState::Approved;
        escalation.decided_at = Some(at);
        escalation.decided_by = Some("policy:auto_approve".into());
        let g = rules::grant_for(&escalation, Uuid::new_v4(), at);
        events.push(grant_event(&escalation, &g, "policy:auto_approve"));
        Some(g)
    } else {
        None
    };
    // Bounds what one principal can put in front of approvers and their webhooks, even
    // in a create/cancel loop: creations are counted, not pending requests.
    let rate = &state.settings.limits.escalation_rate;
    let limit = CreationLimit {
        requests: rate.requests,
        per: rate.per,
    };
    let created = state
        .store
        .create_escalation_within(&escalation, grant.as_ref(), events, limit)
        .await
        .map_err(store_err)?;
    if let Creation::Limited { retry_at } = created {
        let wait = (retry_at - state.now()).as_seconds_f64().ceil().max(1.0) as u64;
        let event = NewAuditEvent::new("escalation.refused", actor, Outcome::Refused)
            .env(req.environment.clone())
            .detail("reason", "rate_limited")
            .detail("retry_after_secs", wait);
        refused(event).await.map_err(store_err)?;
        return Err(EscalationError::RateLimited {
            message: format!(
                "you have created {} escalation requests in the last {}; try again in {wait} second{} \
                 (at {}); cancelling a request does not give it back",
                rate.requests,
                humantime::format_duration(rate.per),
                if wait == 1 { "" } else { "s" },
                retry_at
                    .replace_nanosecond(0)
                    .unwrap_or(retry_at)
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
            ),
            retry_after_secs: wait,
        });
    }
    tracing::info!(id = %escalation.id, env = %escalation.environment, "escalation requested");
    announce(state, "escalation.created", &escalation, grant.as_ref(), None);
    if grant.is_some() {
        announce(
            state,
            "escalation.decided",
            &escalation,
            grant.as_ref(),
            Some("policy:auto_approve"),
        );
    }
    view(state, escalation, plan.capped).await
}

/// The owner (id, username) of a calling registered agent, if it has one.
fn registered_owner(principal: &Principal) -> Option<(Uuid, String)> {
    match principal {
        Principal::Agent(AgentPrincipal {
            kind: AgentKind::Registered(agent),
            ..
        }) => agent
            .owner_id
            .map(|id| (id, agent.owner.clone().unwrap_or_else(|| id.to_string()))),
        _ => None,
    }
}

/// The catalogue scopes among `asked`, each once, at most [`crate::policy::MAX_SCOPES_PER_REQUEST`]:
/// what a refusal's audit event may record of caller-controlled input.
fn known_scopes(state: &AppState, asked: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in asked {
        if state.settings.scopes.contains_key(s) && !out.contains(s) {
            out.push(s.clone());
        }
        if out.len() >= crate::policy::MAX_SCOPES_PER_REQUEST {
            break;
        }
    }
    out
}
