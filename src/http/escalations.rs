//! `/v1/escalations` and `/v1/grants`: thin handlers over [`crate::escalations`].
//!
//! Requests may come from a person's session or from an environment access token (an
//! agent). Decisions (approve, deny) only ever from a person's session: an environment
//! token is answered 403 whatever its scopes, and the attempt is audited.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{AnyCaller, AppJson, AppQuery};
use crate::auth::Principal;
use crate::domain::{NewAuditEvent, Outcome};
use crate::escalations::{self as esc, NewRequest};
use crate::state::AppState;
use crate::wire::Sorted;
use crate::wire::escalations::{
    self as wire, Approve, DurationField, EscalationList, EscalationQuery, GrantList, GrantQuery,
    NewEscalation, Reason, WaitQuery,
};

/// Routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/escalations", get(list).post(create))
        .route("/v1/escalations/{id}", get(show))
        .route("/v1/escalations/{id}/approve", post(approve))
        .route("/v1/escalations/{id}/deny", post(deny))
        .route("/v1/escalations/{id}/cancel", post(cancel))
        .route("/v1/grants", get(list_grants))
        .route("/v1/grants/{id}/revoke", post(revoke_grant))
}

fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::NotFound("request"))
}

/// A duration as `"30m"` or a number of seconds.
fn duration_of(field: &DurationField) -> Result<Duration, ApiError> {
    match field {
        DurationField::Seconds(s) => Ok(Duration::from_secs(*s)),
        DurationField::Text(t) if t.len() <= 32 => humantime::parse_duration(t.trim())
            .map_err(|_| ApiError::BadRequest("duration must look like 30m, 2h or 90s".into())),
        DurationField::Text(_) => Err(ApiError::BadRequest("duration is too long".into())),
    }
}

/// Bound the fields of a new request and read its duration.
fn into_request(body: NewEscalation) -> Result<NewRequest, ApiError> {
    if body.environment.len() > 64 || body.scopes.iter().any(|s| s.len() > 128) || body.reason.len() > 4096 {
        return Err(ApiError::BadRequest("a field is too long".into()));
    }
    Ok(NewRequest {
        duration: duration_of(&body.duration)?,
        environment: body.environment,
        scopes: body.scopes,
        reason: body.reason,
    })
}

/// A request as the API shows it.
fn view_body(v: esc::EscalationView) -> wire::EscalationView {
    let e = v.escalation;
    wire::EscalationView {
        id: e.id,
        environment: e.environment,
        scopes: e.scopes,
        duration_secs: e.duration_secs,
        reason: e.reason,
        requester_kind: e.requester_kind,
        requester: e.requester,
        requester_user_id: e.requester_user_id,
        sponsor: e.sponsor,
        sponsor_user_id: e.sponsor_user_id,
        holder: e.holder,
        holder_actor: e.holder_actor,
        quorum: e.quorum,
        state: e.state,
        created_at: e.created_at,
        expires_at: e.expires_at,
        decided_at: e.decided_at,
        decided_by: e.decided_by,
        decision_reason: e.decision_reason,
        approvals: e.approvals.iter().map(wire::Approval::from).collect(),
        destructive_scopes: v.destructive_scopes,
        grant: v.grant.map(grant_body),
        history: v.history.into_iter().map(wire::HistoryEntry::from).collect(),
        url: v.url,
        duration_capped: v.duration_capped,
        owner: v.owner,
    }
}

/// A grant as the API shows it.
fn grant_body(v: esc::GrantView) -> wire::GrantView {
    let g = v.grant;
    wire::GrantView {
        id: g.id,
        escalation_id: g.escalation_id,
        environment: g.environment,
        scopes: g.scopes,
        holder: g.holder,
        holder_actor: g.holder_actor,
        starts_at: g.starts_at,
        ends_at: g.ends_at,
        session_id: g.session_id,
        revoked_at: g.revoked_at,
        revoked_by: g.revoked_by,
        revoked_reason: g.revoked_reason,
        status: v.status.into(),
        holder_name: v.holder_name,
    }
}

/// Parse and bound a `POST /v1/escalations` body exactly as the handler does (after the
/// content-type check): JSON without unknown fields, bounded lengths, a duration as
/// `"30m"` or seconds. Public so the fuzz targets run this very code.
pub fn parse_create_body(bytes: &[u8]) -> Result<NewRequest, ApiError> {
    into_request(AppJson::<NewEscalation>::from_bytes(bytes)?)
}

async fn create(
    State(state): State<AppState>,
    AnyCaller(principal): AnyCaller,
    AppJson(body): AppJson<NewEscalation>,
) -> Result<Response, ApiError> {
    let req = into_request(body)?;
    let view = esc::create(&state, &principal, req).await?;
    Ok((StatusCode::CREATED, Json(view_body(view))).into_response())
}

async fn list(
    State(state): State<AppState>,
    AnyCaller(principal): AnyCaller,
    AppQuery(q): AppQuery<EscalationQuery>,
) -> Result<Json<EscalationList>, ApiError> {
    let q = esc::ListQuery {
        pending: q.pending,
        environment: q.environment,
        limit: q.limit,
    };
    let items = esc::list(&state, &principal, &q).await?;
    Ok(Json(EscalationList {
        escalations: items.into_iter().map(|v| Sorted(view_body(v))).collect(),
    }))
}

async fn show(
    State(state): State<AppState>,
    AnyCaller(principal): AnyCaller,
    Path(id): Path<String>,
    AppQuery(q): AppQuery<WaitQuery>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let view = esc::get(&state, &principal, id, q.wait.map(Duration::from_secs)).await?;
    Ok(Json(view_body(view)).into_response())
}

/// Only a person's session decides. An agent's attempt is refused and audited.
async fn person_only(
    state: &AppState,
    principal: Principal,
    id: &str,
    action: &str,
) -> Result<crate::auth::Authenticated, ApiError> {
    match principal {
        Principal::Person(auth) => Ok(auth),
        agent @ Principal::Agent(_) => {
            // Within the principal's budget of audited refusals (see crate::refusals): an
            // agent looping on approve cannot flood the trail, and its first attempts in
            // every window are still recorded one by one.
            let principal = agent.budget_key();
            let mut event =
                NewAuditEvent::new("escalation.decision_refused", agent.actor(), Outcome::Refused)
                    .detail("action", action.to_string())
                    .detail("reason", "agent_token");
            // Name the request and its environment when it exists; never echo a bad id.
            if let Ok(uuid) = parse_id(id) {
                event = event.subject(uuid.to_string());
                if let Ok(e) = state.store.escalation(uuid).await {
                    event = event.env(e.environment);
                }
            }
            state
                .refusals
                .record(state.store.as_ref(), &principal, event)
                .await
                .map_err(|_| ApiError::Unavailable("the store is unavailable; retry shortly"))?;
            Err(ApiError::Forbidden(
                "only a person with the approver role can decide a request; an agent's token never can"
                    .into(),
            ))
        }
    }
}

async fn approve(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    AnyCaller(principal): AnyCaller,
    Path(id): Path<String>,
    AppJson(body): AppJson<Approve>,
) -> Result<Response, ApiError> {
    let auth = person_only(&state, principal, &id, "approve").await?;
    let id = parse_id(&id)?;
    let peer = peer.map(|Extension(ConnectInfo(a))| a.ip());
    if body.totp.len() > 16 {
        return Err(ApiError::BadRequest("the TOTP code is 6 digits".into()));
    }
    let view = esc::approve(&state, peer, &auth, id, &body.totp).await?;
    Ok(Json(view_body(view)).into_response())
}

async fn deny(
    State(state): State<AppState>,
    AnyCaller(principal): AnyCaller,
    Path(id): Path<String>,
    AppJson(body): AppJson<Reason>,
) -> Result<Response, ApiError> {
    let auth = person_only(&state, principal, &id, "deny").await?;
    let id = parse_id(&id)?;
    let view = esc::deny(&state, &auth, id, &body.reason).await?;
    Ok(Json(view_body(view)).into_response())
}

async fn cancel(
    State(state): State<AppState>,
    AnyCaller(principal): AnyCaller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let view = esc::cancel(&state, &principal, id).await?;
    Ok(Json(view_body(view)).into_response())
}

async fn list_grants(
    State(state): State<AppState>,
    AnyCaller(principal): AnyCaller,
    AppQuery(q): AppQuery<GrantQuery>,
) -> Result<Json<GrantList>, ApiError> {
    let items = esc::grants(&state, &principal, q.active, q.environment).await?;
    Ok(Json(GrantList {
        grants: items.into_iter().map(|g| Sorted(grant_body(g))).collect(),
    }))
}

async fn revoke_grant(
    State(state): State<AppState>,
    AnyCaller(principal): AnyCaller,
    Path(id): Path<String>,
    AppJson(body): AppJson<Reason>,
) -> Result<Response, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::NotFound("grant"))?;
    let view = esc::revoke_grant(&state, &principal, id, &body.reason)
        .await
        .map_err(|e| match e {
            esc::EscalationError::NotFound => ApiError::NotFound("grant"),
            other => other.into(),
        })?;
    Ok(Json(grant_body(view)).into_response())
}
