//! Airlock's own authorization server, for people: RFC 8414 metadata, the session JWKS,
//! RFC 8628 device authorization, and `/oauth/token` for the device-code and refresh
//! grants. The tokens it issues are accepted by no environment (invariant 3).

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::json;

use super::tokens::{no_store_json, read_form_body};
use crate::domain::KeySet;
use crate::oauth::{self, DEVICE_CODE_GRANT, Endpoint, OAuthError, parse_params};
use crate::state::AppState;

/// Routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/.well-known/oauth-authorization-server", get(metadata))
        .route("/oauth/jwks.json", get(jwks))
        .route("/oauth/device_authorization", post(device_authorization))
        .route("/oauth/token", post(token))
}

async fn metadata(State(state): State<AppState>) -> Response {
    let base = &state.settings.public_url;
    Json(json!({
        "issuer": base,
        "token_endpoint": format!("{base}/oauth/token"),
        "device_authorization_endpoint": format!("{base}/oauth/device_authorization"),
        "jwks_uri": format!("{base}/oauth/jwks.json"),
        "grant_types_supported": [DEVICE_CODE_GRANT, "refresh_token"],
        "token_endpoint_auth_methods_supported": ["none"],
        "response_types_supported": [],
        "service_documentation": format!("{base}/v1/openapi.json"),
    }))
    .into_response()
}

async fn jwks(State(state): State<AppState>) -> Result<Response, OAuthError> {
    let keys = state.keys.jwks(&KeySet::Session).ok_or(OAuthError::Unavailable)?;
    Ok(Json(json!({ "keys": keys })).into_response())
}

fn peer_ip(peer: Option<Extension<ConnectInfo<SocketAddr>>>) -> Option<std::net::IpAddr> {
    peer.map(|Extension(ConnectInfo(a))| a.ip())
}

async fn device_authorization(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let bytes = match read_form_body(&state, &headers, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let params = match parse_params(&bytes) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let client_id = params.client_id.unwrap_or_default();
    let user_agent = headers
        .get(axum::http::header::USER_AGENT)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    match oauth::device_authorize(&state, peer_ip(peer), user_agent.as_deref(), &client_id).await {
        Ok(d) => no_store_json(d),
        Err(e) => e.into_response(),
    }
}

async fn token(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let bytes = match read_form_body(&state, &headers, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let authorization = headers
        .get(axum::http::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    match oauth::dispatch(&state, Endpoint::People, None, &bytes, authorization).await {
        Ok(issued) => no_store_json(issued),
        Err(e) => e.into_response(),
    }
}
