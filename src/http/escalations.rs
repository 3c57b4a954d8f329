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
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{AnyCaller, AppJson, AppQuery};
use crate::auth::Principal;
use crate::domain::{NewAuditEvent, Outcome};
use crate::escalations::{self as esc, NewRequest};
use crate::state::AppState;

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
#[derive(Deserialize)]
#[serde(untagged)]
enum DurationField {
    Seconds(u64),
    Text(String),
}

impl DurationField {
    fn get(&self) -> Result<Duration, ApiError> {
        match self {
            DurationField::Seconds(s) => Ok(Duration::from_secs(*s)),
            DurationField::Text(t) if t.len() <= 32 => humantime::parse_duration(t.trim())
                .map_err(|_| ApiError::BadRequest("duration must look like 30m, 2h or 90s".into())),
            DurationField::Text(_) => Err(ApiError::BadRequest("duration is too long".into())),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    environment: String,
    scopes: Vec<String>,
    duration: DurationField,
    reason: String,
}

impl CreateBody {
    /// Bound the fields and read the duration.
    fn into_request(self) -> Result<NewRequest, ApiError> {
        if self.environment.len() > 64
            || self.scopes.iter().any(|s| s.len() > 128)
            || self.reason.len() > 4096
        {
            return Err(ApiError::BadRequest("a field is too long".into()));
        }
        Ok(NewRequest {
            duration: self.duration.get()?,
            environment: self.environment,
            scopes: self.scopes,
            reason: self.reason,
        })
    }
}

/// Parse and bound a `POST /v1/escalations` body exactly as the handler does (after the
/// content-type check): JSON without unknown fields, bounded lengths, a duration as
/// `"30m"` or seconds. Public so the fuzz targets run this very code.
pub fn parse_create_body(bytes: &[u8]) -> Result<NewRequest, ApiError> {
    AppJson::<CreateBody>::from_bytes(bytes)?.into_request()
}

async fn create(
    State(state): State<AppState>,
    AnyCaller(principal): AnyCaller,
    AppJson(body): AppJson<CreateBody>,
) -> Result<Response, ApiError> {
    let req = body.into_request()?;
    let view = esc::create(&state, &principal, req).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    pending: bool,
    environment: Option<String>,
    limit: Option<u32>,
}

async fn list(
    State(state): State<AppState>,
    AnyCaller(principal): AnyCaller,
    AppQuery(q): AppQuery<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let q = esc::ListQuery {
        pending: q.pending,
        environment: q.environment,
        limit: q.limit,
    };
    let items = esc::list(&state, &principal, &q).await?;
    Ok(Json(json!({ "escalations": items })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShowQuery {
    /// Seconds to wait for the request to leave `pending`.
    wait: Option<u64>,
}

async fn show(
    State(state): State<AppState>,
    AnyCaller(principal): AnyCaller,
    Path(id): Path<String>,
    AppQuery(q): AppQuery<ShowQuery>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let view = esc::get(&state, &principal, id, q.wait.map(Duration::from_secs)).await?;
    Ok(Json(view).into_response())
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproveBody {
    totp: String,
}

async fn approve(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    AnyCaller(principal): AnyCaller,
    Path(id): Path<String>,
    AppJson(body): AppJson<ApproveBody>,
) -> Result<Response, ApiError> {
    let auth = person_only(&state, principal, &id, "approve").await?;
    let id = parse_id(&id)?;
    let peer = peer.map(|Extension(ConnectInfo(a))| a.ip());
    if body.totp.len() > 16 {
        return Err(ApiError::BadRequest("the TOTP code is 6 digits".into()));
    }
    let view = esc::approve(&state, peer, &auth, id, &body.totp).await?;
    Ok(Json(view).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    reason: String,
}

async fn deny(
    State(state): State<AppState>,
    AnyCaller(principal): AnyCaller,
    Path(id): Path<String>,
    AppJson(body): AppJson<ReasonBody>,
) -> Result<Response, ApiError> {
    let auth = person_only(&state, principal, &id, "deny").await?;
    let id = parse_id(&id)?;
    let view = esc::deny(&state, &auth, id, &body.reason).await?;
    Ok(Json(view).into_response())
}

async fn cancel(
    State(state): State<AppState>,
    AnyCaller(principal): AnyCaller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let view = esc::cancel(&state, &principal, id).await?;
    Ok(Json(view).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantQuery {
    #[serde(default)]
    active: bool,
    environment: Option<String>,
}

async fn list_grants(
    State(state): State<AppState>,
    AnyCaller(principal): AnyCaller,
    AppQuery(q): AppQuery<GrantQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let items = esc::grants(&state, &principal, q.active, q.environment).await?;
    Ok(Json(json!({ "grants": items })))
}

async fn revoke_grant(
    State(state): State<AppState>,
    AnyCaller(principal): AnyCaller,
    Path(id): Path<String>,
    AppJson(body): AppJson<ReasonBody>,
) -> Result<Response, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::NotFound("grant"))?;
    let view = esc::revoke_grant(&state, &principal, id, &body.reason)
        .await
        .map_err(|e| match e {
            esc::EscalationError::NotFound => ApiError::NotFound("grant"),
            other => other.into(),
        })?;
    Ok(Json(view).into_response())
}
