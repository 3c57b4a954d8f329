//! Airlock's own resources under `/v1`: sign-in, the caller's own account and TOTP,
//! and the admin API for people and agents. JSON in and out, documented in
//! `/v1/openapi.json`. Admin endpoints need an admin role with TOTP enrolled.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::extract::{AppJson, Caller};
use crate::agents::{self, NewAgent};
use crate::auth;
use crate::domain::{Agent, User};
use crate::people;
use crate::state::AppState;

/// The OpenAPI description of every route.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/sessions", post(create_session))
        .route("/v1/sessions/current", delete(end_session))
        .route("/v1/me", get(show_me))
        .route("/v1/me/step-up", post(step_up))
        .route("/v1/me/totp", post(begin_totp))
        .route("/v1/me/totp/activate", post(activate_totp))
        .route("/v1/users", get(list_users).post(create_user))
        .route("/v1/users/{username}", get(show_user))
        .route("/v1/users/{username}/disable", post(disable_user))
        .route("/v1/users/{username}/enable", post(enable_user))
        .route("/v1/users/{username}/reset", post(reset_user))
        .route("/v1/agents", get(list_agents).post(create_agent))
        .route("/v1/agents/{agent}", get(show_agent))
        .route("/v1/agents/{agent}/disable", post(disable_agent))
        .route("/v1/agents/{agent}/enable", post(enable_agent))
        .route("/v1/agents/{agent}/reset", post(reset_agent))
}

async fn openapi() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    username: String,
    password: SecretString,
    #[serde(default)]
    totp_code: Option<String>,
}

async fn create_session(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let peer = peer.map(|Extension(ConnectInfo(a))| a.ip());
    // A flooding address the store has blocked is answered before any parsing or hashing.
    if let Some(secs) = people::address_blocked_for(&state, peer) {
        people::audit_throttled(&state, peer, "password")
            .await
            .map_err(ApiError::SignIn)?;
        return Err(ApiError::SignIn(people::SignInError::Throttled(secs)));
    }
    let body: SignIn = serde_json::from_slice(&body).map_err(|_| {
        ApiError::BadRequest("the JSON fields do not match this endpoint (see /v1/openapi.json)".into())
    })?;
    let user = people::sign_in(
        &state,
        peer,
        &body.username,
        body.password,
        body.totp_code.as_deref(),
        "password",
    )
    .await
    .map_err(ApiError::SignIn)?;
    let tokens = people::start_cli_session(&state, &user, "password")
        .await
        .map_err(|_| ApiError::Unavailable("cannot start a session; retry shortly"))?;
    Ok(super::tokens::no_store_json(tokens))
}

async fn end_session(State(state): State<AppState>, caller: Caller) -> Result<StatusCode, ApiError> {
    people::end_session(&state, &caller.0, "logout").await?;
    Ok(StatusCode::NO_CONTENT)
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn user_json(state: &AppState, u: &User) -> serde_json::Value {
    json!({
        "id": u.id,
        "username": u.username,
        "roles": u.roles,
        "effective_roles": crate::policy::effective_roles(&state.settings, &u.roles, u.totp_enrolled()),
        "totp_enrolled": u.totp_enrolled(),
        "disabled": u.disabled,
        "created_at": rfc3339(u.created_at),
        "updated_at": rfc3339(u.updated_at),
    })
}

async fn show_me(State(state): State<AppState>, caller: Caller) -> Json<serde_json::Value> {
    let mut me = user_json(&state, &caller.0.user);
    me["effective_roles"] = json!(auth::effective_roles(&state, &caller.0));
    me["stepped_up"] = json!(auth::is_stepped_up(&state, &caller.0));
    me["session"] = json!({
        "id": caller.0.session.id,
        "totp_verified": caller.0.session.totp_verified,
        "created_at": rfc3339(caller.0.session.created_at),
        "expires_at": rfc3339(caller.0.session.expires_at),
    });
    Json(me)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Reauthenticate {
    password: SecretString,
}

/// Enrolment needs the password again: a copied session alone must not be able to bind
/// an authenticator of its own choosing to the account.
async fn begin_totp(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    caller: Caller,
    AppJson(body): AppJson<Reauthenticate>,
) -> Result<Response, ApiError> {
    let peer = peer.map(|Extension(ConnectInfo(a))| a.ip());
    let user = &caller.0.user;
    if user.totp_enrolled() {
        return Err(ApiError::Conflict(format!(
            "TOTP is already enrolled; an admin can reset it (`airlock user reset {} --totp`)",
            user.username
        )));
    }
    people::sign_in(
        &state,
        peer,
        &user.username,
        body.password,
        None,
        "totp-enrolment",
    )
    .await
    .map_err(ApiError::SignIn)?;
    let e = people::totp_begin(&state, &caller.0).await?;
    Ok(super::tokens::no_store_json(e))
}

async fn step_up(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    caller: Caller,
    AppJson(body): AppJson<Code>,
) -> Result<StatusCode, ApiError> {
    let peer = peer.map(|Extension(ConnectInfo(a))| a.ip());
    people::step_up(&state, peer, &caller.0, &body.code)
        .await
        .map_err(ApiError::SignIn)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Code {
    code: String,
}

async fn activate_totp(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    caller: Caller,
    AppJson(body): AppJson<Code>,
) -> Result<StatusCode, ApiError> {
    let peer = peer.map(|Extension(ConnectInfo(a))| a.ip());
    people::totp_activate(&state, peer, &caller.0, &body.code).await?;
    // The person just proved the code: this session counts as signed in with TOTP.
    state
        .store
        .step_up_session(caller.0.session.id, state.now())
        .await
        .map_err(|_| ApiError::Unavailable("the store is unavailable; retry shortly"))?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_users(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require_admin(&state)?;
    let users = state
        .store
        .users()
        .await
        .map_err(|_| ApiError::Unavailable("the store is unavailable"))?;
    Ok(Json(json!(
        users.iter().map(|u| user_json(&state, u)).collect::<Vec<_>>()
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    username: String,
    password: SecretString,
    #[serde(default)]
    roles: Vec<String>,
}

async fn create_user(
    State(state): State<AppState>,
    caller: Caller,
    AppJson(body): AppJson<NewUser>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    caller.require_admin_change(&state)?;
    let u = people::create_user(
        &state,
        &caller.actor(),
        &body.username,
        &body.password,
        body.roles,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(user_json(&state, &u))))
}

async fn show_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(username): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require_admin(&state)?;
    let u = people::find_user(&state, &username).await?;
    Ok(Json(user_json(&state, &u)))
}

async fn set_user_disabled(
    state: AppState,
    caller: Caller,
    username: String,
    disabled: bool,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require_admin_change(&state)?;
    if disabled && people::normalize_username(&username).as_deref() == Some(caller.0.user.username.as_str()) {
        return Err(ApiError::Conflict("you cannot disable yourself".into()));
    }
    let u = people::set_user_disabled(&state, &caller.actor(), &username, disabled).await?;
    Ok(Json(user_json(&state, &u)))
}

async fn disable_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(username): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    set_user_disabled(state, caller, username, true).await
}

async fn enable_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(username): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    set_user_disabled(state, caller, username, false).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetUser {
    #[serde(default)]
    password: Option<SecretString>,
    #[serde(default)]
    reset_totp: bool,
    #[serde(default)]
    roles: Option<Vec<String>>,
}

async fn reset_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(username): Path<String>,
    AppJson(body): AppJson<ResetUser>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require_admin_change(&state)?;
    let u = people::reset_user(
        &state,
        &caller.actor(),
        &username,
        body.password.as_ref(),
        body.reset_totp,
        body.roles,
    )
    .await?;
    Ok(Json(user_json(&state, &u)))
}

#[derive(Deserialize)]
struct AgentFilter {
    env: Option<String>,
}

async fn list_agents(
    State(state): State<AppState>,
    caller: Caller,
    Query(filter): Query<AgentFilter>,
) -> Result<Json<Vec<Agent>>, ApiError> {
    caller.require_admin(&state)?;
    let list = state
        .store
        .agents(filter.env.as_deref())
        .await
        .map_err(|_| ApiError::Unavailable("the store is unavailable"))?;
    Ok(Json(list))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateAgent {
    name: String,
    environment: String,
    scopes: Vec<String>,
    #[serde(default)]
    default_scopes: Vec<String>,
    /// Username of the person who answers for the agent (required once people exist).
    #[serde(default)]
    owner: Option<String>,
}

fn agent_with_secret(a: &Agent, secret: &SecretString) -> Response {
    let mut v = serde_json::to_value(a).unwrap_or_default();
    v["client_secret"] = json!(secret.expose_secret());
    let mut r = super::tokens::no_store_json(v);
    *r.status_mut() = StatusCode::CREATED;
    r
}

async fn create_agent(
    State(state): State<AppState>,
    caller: Caller,
    AppJson(body): AppJson<CreateAgent>,
) -> Result<Response, ApiError> {
    caller.require_admin_change(&state)?;
    let new = NewAgent {
        name: body.name,
        environment: body.environment,
        scopes: body.scopes,
        default_scopes: body.default_scopes,
        owner: body.owner,
    };
    let (a, secret) = agents::create(
        state.store.as_ref(),
        &state.settings,
        &state.hasher,
        new,
        &caller.actor(),
    )
    .await?;
    Ok(agent_with_secret(&a, &secret))
}

async fn show_agent(
    State(state): State<AppState>,
    caller: Caller,
    Path(reference): Path<String>,
) -> Result<Json<Agent>, ApiError> {
    caller.require_admin(&state)?;
    Ok(Json(agents::find(state.store.as_ref(), &reference).await?))
}

async fn disable_agent(
    State(state): State<AppState>,
    caller: Caller,
    Path(reference): Path<String>,
) -> Result<Json<Agent>, ApiError> {
    caller.require_admin_change(&state)?;
    Ok(Json(
        agents::set_disabled(state.store.as_ref(), &reference, true, &caller.actor()).await?,
    ))
}

async fn enable_agent(
    State(state): State<AppState>,
    caller: Caller,
    Path(reference): Path<String>,
) -> Result<Json<Agent>, ApiError> {
    caller.require_admin_change(&state)?;
    Ok(Json(
        agents::set_disabled(state.store.as_ref(), &reference, false, &caller.actor()).await?,
    ))
}

async fn reset_agent(
    State(state): State<AppState>,
    caller: Caller,
    Path(reference): Path<String>,
) -> Result<Response, ApiError> {
    caller.require_admin_change(&state)?;
    let (a, secret) =
        agents::rotate_secret(state.store.as_ref(), &state.hasher, &reference, &caller.actor()).await?;
    let mut r = agent_with_secret(&a, &secret);
    *r.status_mut() = StatusCode::OK;
    Ok(r)
}
