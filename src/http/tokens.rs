//! `POST /envs/{env}/token`: RFC 6749 token endpoint of one environment.
//!
//! The request is parsed by hand so every malformed input gets an RFC 6749 answer
//! (never an extractor's plain-text rejection): the body is bounded, the content type
//! must be form-encoded, parameters may not repeat (section 3.2), and a client may use
//! one authentication method only (section 2.3).

use axum::body::{Body, to_bytes};
use std::net::SocketAddr;

use axum::Extension;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};

use super::error::oauth_status;
use super::extract::EnvPath;
use crate::oauth::{self, Endpoint, OAuthError, parse_params};
use crate::state::AppState;
use secrecy::ExposeSecret;

/// Token routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/envs/{env}/token", post(issue_token))
        .route("/envs/{env}/introspect", post(introspect))
}

async fn issue_token(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    env: EnvPath,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let bytes = match read_form_body(&state, &headers, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let peer = peer.map(|Extension(ConnectInfo(addr))| addr.ip());
    let authorization = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    match oauth::dispatch(
        &state,
        Endpoint::Environment(env.env()),
        peer,
        &bytes,
        authorization,
    )
    .await
    {
        Ok(issued) => no_store_json(issued),
        Err(e) => e.into_response(),
    }
}

/// `POST /envs/{env}/introspect` (RFC 7662): a resource server of the environment,
/// authenticated as one of its agents, asks whether a token is active.
async fn introspect(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    env: EnvPath,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let bytes = match read_form_body(&state, &headers, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let peer = peer.map(|Extension(ConnectInfo(addr))| addr.ip());
    let params = match parse_params(&bytes) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let authorization = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    let creds = match oauth::parse_client_credentials(authorization, params.client_id, params.client_secret) {
        Ok(Some(c)) => c,
        Ok(None) => return OAuthError::InvalidClient.into_response(),
        Err(e) => return e.into_response(),
    };
    let Some(token) = params.token else {
        return OAuthError::InvalidRequest("token is required".into()).into_response();
    };
    match oauth::introspect(&state, peer, env.env(), creds, token.expose_secret()).await {
        Ok(answer) => no_store_json(answer),
        Err(e) => e.into_response(),
    }
}

/// Read a bounded `application/x-www-form-urlencoded` body, or the OAuth-shaped 415/413.
pub(super) async fn read_form_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<axum::body::Bytes, Response> {
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"));
    if !form {
        return Err(oauth_status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "this endpoint takes application/x-www-form-urlencoded",
        ));
    }
    let limit = state.settings.limits.max_body_bytes;
    to_bytes(body, limit).await.map_err(|_| {
        oauth_status(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the request body is larger than {limit} bytes"),
        )
    })
}

/// A successful token response with the no-store headers of RFC 6749 section 5.1.
pub(super) fn no_store_json(body: impl serde::Serialize) -> Response {
    let mut r = Json(body).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}
