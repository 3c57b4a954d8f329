//! Escalations: requests for production or destructive access, their human approval,
//! the grants they become, and the background task that expires them.
//!
//! The rules are pure functions in [`crate::policy::escalation`]; the exactly-once
//! state changes are single transactions in the store ([`crate::store::EscalationStore`]).
//! This module authenticates the caller, applies the rules, checks each approver's
//! fresh TOTP code, and announces what happened (audit trail, local waiters, webhooks).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::app::AppState;
use crate::config::Tier;
use crate::domain::{
    Agent, Approval, Escalation, EscalationEvent, EscalationState, Grant, KeySet, NewAuditEvent, Outcome,
    RequesterKind, User, agent_holder, now, person_holder,
};
use crate::people::{self, Authenticated, SessionError, SignInError};
use crate::policy::escalation::{self as rules, ApprovalRefusal, RequestRefusal, Requester};
use crate::store::{ApproveOutcome, Creation, CreationLimit, EscalationFilter, GrantFilter, StoreError};
use crate::token::{self, AccessClaims};

/// Longest `?wait=` a caller may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// How often a waiting request re-reads the store (changes made by other processes).
const WAIT_POLL: Duration = Duration::from_millis(500);
/// How often the background task looks for expired requests and ended grants.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Most rows one sweep handles (the rest wait for the next tick).
const SWEEP_BATCH: u32 = 200;
/// Most requests one holder may have pending at once: enough for any real need, and a
/// bound on what a misbehaving agent can put in front of approvers (and their webhooks).
pub const MAX_PENDING_PER_HOLDER: usize = 20;
/// Most requests or grants one list returns.
pub const MAX_LIST: u32 = 200;

/// Who is calling an escalation endpoint.
#[derive(Debug, Clone)]
pub enum Principal {
    /// A person with a live session.
    Person(Authenticated),
    /// A process holding an environment access token.
    Agent(AgentPrincipal),
}

/// A caller authenticated by an environment access token.
#[derive(Debug, Clone)]
pub struct AgentPrincipal {
    /// The token's environment.
    pub environment: String,
    /// What kind of process.
    pub kind: AgentKind,
}

/// The two kinds of token-holding callers.
#[derive(Debug, Clone)]
pub enum AgentKind {
    /// A registered agent (client credentials).
    Registered(Agent),
    /// A process acting for a person (token exchange with an actor).
    Delegated {
        /// The person.
        user: User,
        /// `process:NAME`.
        actor: String,
    },
}

impl Principal {
    /// Whose budgets a call counts against (escalation creations, audited refusals): the
    /// agent, or the person, together with every process acting for them (a process name
    /// is the caller's choice, so a new name must not buy a new budget).
    pub fn budget_key(&self) -> String {
        match self {
            Principal::Person(a) => format!("user:{}", a.user.username),
            Principal::Agent(AgentPrincipal {
                kind: AgentKind::Registered(a),
                ..
            }) => format!("agent:{}", a.client_id),
            Principal::Agent(AgentPrincipal {
                kind: AgentKind::Delegated { user, .. },
                ..
            }) => format!("user:{}", user.username),
        }
    }

    /// Audit actor.
    pub fn actor(&self) -> String {
        match self {
            Principal::Person(a) => format!("user:{}", a.user.username),
            Principal::Agent(AgentPrincipal {
                kind: AgentKind::Registered(a),
                ..
            }) => format!("agent:{}", a.client_id),
            Principal::Agent(AgentPrincipal {
                kind: AgentKind::Delegated { user, actor },
                ..
            }) => format!("{actor} for user:{}", user.username),
        }
    }
}

/// Why an escalation call failed. Each maps to one HTTP answer.
#[derive(Debug)]
pub enum EscalationError {
    /// 401.
    Unauthenticated,
    /// 403 with the reason.
    Forbidden(String),
    /// 400 with what to change.
    BadRequest(String),
    /// 404.
    NotFound,
    /// 404: no such environment.
    UnknownEnvironment,
    /// 409: the request is no longer pending (or the grant no longer active).
    Conflict(String),
    /// 429: too many requests created lately; try again in `retry_after_secs`.
    RateLimited {
        /// What happened and when to try again.
        message: String,
        /// Seconds until one more request is accepted (at least 1).
        retry_after_secs: u64,
    },
    /// The approver's TOTP code was refused (401 / 429 / 503).
    Totp(SignInError),
    /// 503: fail closed.
    Unavailable,
}

fn store_err(e: StoreError) -> EscalationError {
    match e {
        StoreError::NotFound => EscalationError::NotFound,
        other => {
            tracing::error!(error = ?other, "escalation store call failed");
            EscalationError::Unavailable
        }
    }
}

/// Authenticate `Authorization: Bearer` for the escalation endpoints: a session token
/// (a person) or an environment access token (an agent or delegated process).
pub async fn authenticate(state: &AppState, bearer: &str) -> Result<Principal, EscalationError> {
    match people::authenticate_session(state, bearer).await {
        Ok(auth) => return Ok(Principal::Person(auth)),
        Err(SessionError::Unavailable) => return Err(EscalationError::Unavailable),
        Err(SessionError::Invalid) => {}
    }
    let claims = verify_env_token(state, bearer).ok_or(EscalationError::Unauthenticated)?;
    // As at introspection: an ended session, a disabled principal or a revoked grant ends
    // the token here too.
    match crate::oauth::token_is_live(state, &claims.env, &claims).await {
        Ok(true) => {}
        Ok(false) => return Err(EscalationError::Unauthenticated),
        Err(e) => return Err(store_err(e)),
    }
    let kind = if claims.client_id == people::CLI_CLIENT_ID {
        let id = Uuid::parse_str(&claims.sub).map_err(|_| EscalationError::Unauthenticated)?;
        let user = match state.store.user_by_id(id).await {
            Ok(u) if !u.disabled => u,
            Ok(_) | Err(StoreError::NotFound) => return Err(EscalationError::Unauthenticated),
            Err(e) => return Err(store_err(e)),
        };
        let actor = claims
            .act
            .map(|a| a.sub)
            .unwrap_or_else(|| "process:unnamed".to_string());
        AgentKind::Delegated { user, actor }
    } else {
        let agent = match state.store.agent_by_client_id(&claims.sub).await {
            Ok(a) => a,
            Err(StoreError::NotFound) => return Err(EscalationError::Unauthenticated),
            Err(e) => return Err(store_err(e)),
        };
        // SECURITY: invariant 2 again: a token only ever speaks for its own environment.
        if agent.disabled || agent.environment != claims.env {
            return Err(EscalationError::Unauthenticated);
        }
        AgentKind::Registered(agent)
    };
    Ok(Principal::Agent(AgentPrincipal {
        environment: claims.env,
        kind,
    }))
}

/// Verify `token` as an access token of any environment (each with its own keys,
/// issuer and audience).
pub fn verify_env_token(state: &AppState, token: &str) -> Option<AccessClaims> {
    let at = now().unix_timestamp();
    state.settings.environments.iter().find_map(|(name, env)| {
        let jwks = state.keys.jwks(&KeySet::Environment(name.clone()))?;
        token::verify(token, &jwks, &state.settings.issuer(name), &env.audience, at, 0)
            .ok()
            .filter(|c| &c.env == name)
    })
}

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

/// A request with what the caller may see of it.
#[derive(Debug, Clone, Serialize)]
pub struct EscalationView {
    /// The request.
    #[serde(flatten)]
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
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub duration_capped: bool,
    /// The requesting registered agent's owner (also its `sponsor`, so their approval
    /// never counts toward this request).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// A grant as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct GrantView {
    /// The grant.
    #[serde(flatten)]
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

async fn grant_view(state: &AppState, grant: Grant) -> GrantView {
    GrantView {
        status: grant.status(now()),
        holder_name: holder_name(state, &grant.holder).await,
        grant,
    }
}

async fn view(state: &AppState, e: Escalation, capped: bool) -> Result<EscalationView, EscalationError> {
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

fn requester_of(state: &AppState, principal: &Principal) -> Requester {
    match principal {
        Principal::Person(auth) => Requester::Person {
            user_id: auth.user.id,
            username: auth.user.username.clone(),
            roles: people::effective_roles(state, auth),
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
    let at = now();
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
        let wait = (retry_at - now()).as_seconds_f64().ceil().max(1.0) as u64;
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

fn grant_event(e: &Escalation, g: &Grant, by: &str) -> NewAuditEvent {
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

/// Whether `principal` may see request `e`.
fn may_view(state: &AppState, principal: &Principal, e: &Escalation) -> bool {
    match principal {
        Principal::Person(auth) => {
            let roles = people::effective_roles(state, auth);
            e.requester_user_id == Some(auth.user.id)
                || e.sponsor_user_id == Some(auth.user.id)
                || e.holder == person_holder(auth.user.id)
                || state.settings.is_admin(&roles)
                || is_approver_for(state, &roles, &e.environment)
        }
        Principal::Agent(a) => is_agents_own(a, e),
    }
}

fn is_agents_own(a: &AgentPrincipal, e: &Escalation) -> bool {
    match &a.kind {
        AgentKind::Registered(agent) => e.holder == agent_holder(&agent.client_id),
        AgentKind::Delegated { user, actor } => {
            e.sponsor_user_id == Some(user.id) && e.requester == *actor && e.environment == a.environment
        }
    }
}

fn is_approver_for(state: &AppState, roles: &[String], env: &str) -> bool {
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
    if e.state == EscalationState::Pending && e.expires_at <= now() {
        sweep(state, now()).await.map_err(store_err)?;
        e = state.store.escalation(id).await.map_err(store_err)?;
    }
    if let Some(wait) = wait.map(|w| w.min(MAX_WAIT)) {
        let deadline = tokio::time::Instant::now() + wait;
        // A shutting-down server answers every waiter at once with the current state;
        // the caller polls again (another replica, or this one restarted).
        let mut stopping = state.stopping.subscribe();
        while e.state == EscalationState::Pending && e.expires_at > now() {
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
        if e.state == EscalationState::Pending && e.expires_at <= now() {
            sweep(state, now()).await.map_err(store_err)?;
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
        if q.pending && e.expires_at <= now() {
            continue;
        }
        if may_view(state, principal, &e) {
            out.push(view(state, e, false).await?);
        }
    }
    Ok(out)
}

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
    let roles = people::effective_roles(state, auth);
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
    if e.state != EscalationState::Pending || e.expires_at <= now() {
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
    let at = now();
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

/// Check a free-text note (denial or revocation reason): trimmed, not empty, one line of
/// plain text, at most [`rules::MAX_NOTE_CHARS`]. `what` names it in the error. Public
/// so the fuzz targets run this very code.
pub fn check_note(raw: &str, what: &str) -> Result<String, EscalationError> {
    let t = raw.trim();
    if t.is_empty() {
        return Err(EscalationError::BadRequest(format!("give a {what}")));
    }
    if rules::has_control_chars(t) {
        return Err(EscalationError::BadRequest(format!(
            "the {what} must be plain text on one line, without control characters"
        )));
    }
    if t.chars().count() > rules::MAX_NOTE_CHARS {
        return Err(EscalationError::BadRequest(format!(
            "the {what} must be at most {} characters",
            rules::MAX_NOTE_CHARS
        )));
    }
    Ok(t.to_string())
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
            now(),
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
                || state.settings.is_admin(&people::effective_roles(state, auth))
        }
        Principal::Agent(a) => is_agents_own(a, &e),
    };
    if !allowed {
        return Err(EscalationError::Forbidden(
            "only the requester, its sponsor or an admin can cancel a request".into(),
        ));
    }
    if e.state != EscalationState::Pending || e.expires_at <= now() {
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
        .finish_escalation(id, EscalationState::Cancelled, &by, None, now(), event)
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

fn may_see_grant(state: &AppState, principal: &Principal, g: &Grant) -> bool {
    match principal {
        Principal::Person(auth) => {
            let roles = people::effective_roles(state, auth);
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
    let g = match state.store.revoke_grant(id, &actor, &reason, now(), event).await {
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
    let at = now();
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

/// Whether a token minted under grant `id` may still be used (introspection).
pub async fn grant_is_active(state: &AppState, id: &str) -> Result<bool, StoreError> {
    let Ok(id) = Uuid::parse_str(id) else {
        return Ok(false);
    };
    match state.store.grant(id).await {
        Ok(g) => Ok(g.is_active(now())),
        Err(StoreError::NotFound) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether `env` is a prod-tier environment.
pub fn is_prod(state: &AppState, env: &str) -> bool {
    state
        .settings
        .environment(env)
        .is_none_or(|e| e.tier == Tier::Prod)
}

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
            if let Err(e) = sweep(&state, now()).await {
                tracing::warn!(error = ?e, "escalation sweep failed; retrying");
            }
        }
    })
}

/// Queue webhook notifications (never blocks, never fails the caller).
fn announce(
    state: &AppState,
    event: &'static str,
    e: &Escalation,
    grant: Option<&Grant>,
    actor: Option<&str>,
) {
    let requester = match (&e.requester_kind, &e.sponsor) {
        (RequesterKind::Person, _) => e.requester.clone(),
        (RequesterKind::Agent, Some(s)) => format!("{} (for {s})", e.requester),
        (RequesterKind::Agent, None) => format!("agent {}", e.requester),
    };
    state.notifier.notify(crate::notify::Notification {
        event,
        escalation_id: e.id,
        environment: e.environment.clone(),
        scopes: e.scopes.clone(),
        destructive_scopes: rules::destructive_of(&state.settings, &e.scopes),
        requester,
        sponsor: e.sponsor.clone(),
        reason: e.reason.clone(),
        state: e.state.as_str().to_string(),
        actor: actor.map(str::to_string),
        grant_id: grant.map(|g| g.id),
        grant_ends_at: grant.map(|g| g.ends_at),
        duration_secs: e.duration_secs.max(0) as u64,
        url: page_url(state, e.id),
    });
}

/// Shared wake-up for waiters in this process.
pub fn changes() -> Arc<tokio::sync::Notify> {
    Arc::new(tokio::sync::Notify::new())
}
