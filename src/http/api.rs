//! Airlock's own resources under `/v1`: sign-in, the caller's own account and TOTP,
//! and the admin API for people and agents. JSON in and out, documented in
//! `/v1/openapi.json`. Admin endpoints need an admin role with TOTP enrolled.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use secrecy::SecretString;

use super::error::ApiError;
use super::extract::{AppJson, Caller};
use crate::agents::{self, NewAgent};
use crate::auth;
use crate::domain::User;
use crate::people;
use crate::state::AppState;
use crate::wire::agents::{self as wire_agents, AgentCreated, AgentFilter};
use crate::wire::people::{Code, Me, MeSession, NewUser, Reauthenticate, ResetUser, SignIn};
use crate::wire::{self, Sorted};

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

/// A person as the admin API shows them: their roles in effect are those their roles
/// give with their TOTP enrolment.
fn user_body(state: &AppState, u: &User) -> wire::User {
    wire::User {
        created_at: u.created_at,
        disabled: u.disabled,
        effective_roles: crate::policy::effective_roles(&state.settings, &u.roles, u.totp_enrolled()),
        id: u.id,
        roles: u.roles.clone(),
        totp_enrolled: u.totp_enrolled(),
        updated_at: u.updated_at,
        username: u.username.clone(),
    }
}

async fn show_me(State(state): State<AppState>, caller: Caller) -> Json<Me> {
    let (user, session) = (&caller.0.user, &caller.0.session);
    Json(Me {
        created_at: user.created_at,
        disabled: user.disabled,
        // For this session: admin and approver roles count only with TOTP here.
        effective_roles: auth::effective_roles(&state, &caller.0),
        id: user.id,
        roles: user.roles.clone(),
        session: MeSession {
            created_at: session.created_at,
            expires_at: session.expires_at,
            id: session.id,
            totp_verified: session.totp_verified,
        },
        stepped_up: auth::is_stepped_up(&state, &caller.0),
        totp_enrolled: user.totp_enrolled(),
        updated_at: user.updated_at,
        username: user.username.clone(),
    })
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
) -> Result<Json<Vec<wire::User>>, ApiError> {
    caller.require_admin(&state)?;
    let users = state
        .store
        .users()
        .await
        .map_err(|_| ApiError::Unavailable("the store is unavailable"))?;
    Ok(Json(users.iter().map(|u| user_body(&state, u)).collect()))
}

async fn create_user(
    State(state): State<AppState>,
    caller: Caller,
    AppJson(body): AppJson<NewUser>,
) -> Result<(StatusCode, Json<wire::User>), ApiError> {
    caller.require_admin_change(&state)?;
    let u = people::create_user(
        &state,
        &caller.actor(),
        &body.username,
        &body.password,
        body.roles,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(user_body(&state, &u))))
}

async fn show_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(username): Path<String>,
) -> Result<Json<wire::User>, ApiError> {
    caller.require_admin(&state)?;
    let u = people::find_user(&state, &username).await?;
    Ok(Json(user_body(&state, &u)))
}

async fn set_user_disabled(
    state: AppState,
    caller: Caller,
    username: String,
    disabled: bool,
) -> Result<Json<wire::User>, ApiError> {
    caller.require_admin_change(&state)?;
    if disabled && people::normalize_username(&username).as_deref() == Some(caller.0.user.username.as_str()) {
        return Err(ApiError::Conflict("you cannot disable yourself".into()));
    }
    let u = people::set_user_disabled(&state, &caller.actor(), &username, disabled).await?;
    Ok(Json(user_body(&state, &u)))
}

async fn disable_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(username): Path<String>,
) -> Result<Json<wire::User>, ApiError> {
    set_user_disabled(state, caller, username, true).await
}

async fn enable_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(username): Path<String>,
) -> Result<Json<wire::User>, ApiError> {
    set_user_disabled(state, caller, username, false).await
}

async fn reset_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(username): Path<String>,
    AppJson(body): AppJson<ResetUser>,
) -> Result<Json<wire::User>, ApiError> {
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
    Ok(Json(user_body(&state, &u)))
}

async fn list_agents(
    State(state): State<AppState>,
    caller: Caller,
    Query(filter): Query<AgentFilter>,
) -> Result<Json<Vec<wire_agents::Agent>>, ApiError> {
    caller.require_admin(&state)?;
    let list = state
        .store
        .agents(filter.env.as_deref())
        .await
        .map_err(|_| ApiError::Unavailable("the store is unavailable"))?;
    Ok(Json(list.iter().map(wire_agents::Agent::from).collect()))
}

/// An agent with its new secret, shown this once (never cached).
fn agent_with_secret(a: &crate::domain::Agent, secret: SecretString) -> Response {
    let mut r = super::tokens::no_store_json(Sorted(AgentCreated {
        agent: a.into(),
        client_secret: secret,
    }));
    *r.status_mut() = StatusCode::CREATED;
    r
}

async fn create_agent(
    State(state): State<AppState>,
    caller: Caller,
    AppJson(body): AppJson<wire::NewAgent>,
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
    Ok(agent_with_secret(&a, secret))
}

async fn show_agent(
    State(state): State<AppState>,
    caller: Caller,
    Path(reference): Path<String>,
) -> Result<Json<wire_agents::Agent>, ApiError> {
    caller.require_admin(&state)?;
    Ok(Json(
        (&agents::find(state.store.as_ref(), &reference).await?).into(),
    ))
}

async fn disable_agent(
    State(state): State<AppState>,
    caller: Caller,
    Path(reference): Path<String>,
) -> Result<Json<wire_agents::Agent>, ApiError> {
    caller.require_admin_change(&state)?;
    let a = agents::set_disabled(state.store.as_ref(), &reference, true, &caller.actor()).await?;
    Ok(Json((&a).into()))
}

async fn enable_agent(
    State(state): State<AppState>,
    caller: Caller,
    Path(reference): Path<String>,
) -> Result<Json<wire_agents::Agent>, ApiError> {
    caller.require_admin_change(&state)?;
    let a = agents::set_disabled(state.store.as_ref(), &reference, false, &caller.actor()).await?;
    Ok(Json((&a).into()))
}

async fn reset_agent(
    State(state): State<AppState>,
    caller: Caller,
    Path(reference): Path<String>,
) -> Result<Response, ApiError> {
    caller.require_admin_change(&state)?;
    let (a, secret) =
        agents::rotate_secret(state.store.as_ref(), &state.hasher, &reference, &caller.actor()).await?;
    let mut r = agent_with_secret(&a, secret);
    *r.status_mut() = StatusCode::OK;
    Ok(r)
}
