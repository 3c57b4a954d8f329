//! Discovery: RFC 8414 metadata and the RFC 7517 JWKS, one pair per environment.
//!
//! Each environment publishes only its own keys, so a verifier configured from one
//! environment's metadata cannot accept another environment's tokens (invariant 1).

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::extract::EnvPath;
use crate::oauth::OAuthError;
use crate::state::AppState;

/// Discovery routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/.well-known/oauth-authorization-server/envs/{env}",
            get(env_metadata),
        )
        .route("/envs/{env}/jwks.json", get(env_jwks))
}

fn cacheable(mut r: Response) -> Response {
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    r
}

async fn env_metadata(State(state): State<AppState>, env: EnvPath) -> Result<Response, OAuthError> {
    let settings = &state.settings;
    let env = env.env();
    let issuer = env.issuer(&settings.public_url);
    let body = json!({
        "issuer": issuer,
        "token_endpoint": format!("{issuer}/token"),
        "jwks_uri": format!("{issuer}/jwks.json"),
        "introspection_endpoint": format!("{issuer}/introspect"),
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "grant_types_supported": ["client_credentials", crate::oauth::TOKEN_EXCHANGE_GRANT],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "response_types_supported": [],
        "scopes_supported": settings
            .scopes
            .keys()
            .filter(|s| settings.env_offers_scope(env, s))
            .collect::<Vec<_>>(),
        "access_token_signing_alg_values_supported": ["EdDSA"],
    });
    Ok(cacheable(Json(body).into_response()))
}

async fn env_jwks(State(state): State<AppState>, env: EnvPath) -> Result<Response, OAuthError> {
    let keys = state
        .keys
        .jwks(&env.env().key_set())
        .ok_or(OAuthError::Unavailable)?;
    Ok(cacheable(Json(json!({ "keys": keys })).into_response()))
}
