//! The OAuth side as clients and resource servers use it: token requests, introspection,
//! the device flow, and JWTs decoded or validated against an environment's JWKS.

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use reqwest::StatusCode;
use secrecy::ExposeSecret;
use serde_json::Value;

use super::api::status_json;
use super::app::{TestAgent, TestApp};

/// RFC 8693 grant type.
pub const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// RFC 8693 subject token type.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// Airlock's actor token type.
pub const PROCESS_TYPE: &str = "urn:airlock:params:oauth:token-type:process";
/// RFC 8628 grant type.
pub const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// An access token of `agent`'s own environment that must be issued.
pub async fn access_token(app: &TestApp, env: &str, agent: &TestAgent, scope: &str) -> String {
    let (status, body) = status_json(app.token(env, agent, Some(scope)).await).await;
    assert_eq!(status, StatusCode::OK, "{env} token for {scope}: {body}");
    body["access_token"].as_str().unwrap().to_string()
}

/// RFC 8693 exchange of a session token for an environment token.
pub async fn exchange(
    app: &TestApp,
    env: &str,
    subject: &str,
    scope: Option<&str>,
    actor: Option<&str>,
) -> (StatusCode, Value) {
    status_json(app.exchange(env, subject, scope, actor).await).await
}

/// `POST /oauth/token` with `form`.
pub async fn oauth_token(app: &TestApp, form: &[(&str, &str)]) -> reqwest::Response {
    app.client
        .post(app.url("/oauth/token"))
        .form(form)
        .send()
        .await
        .expect("request sent")
}

/// The CLI's refresh-token grant.
pub async fn refresh(app: &TestApp, refresh_token: &str) -> reqwest::Response {
    oauth_token(
        app,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", "airlock-cli"),
        ],
    )
    .await
}

/// `POST /oauth/device_authorization` for `client_id`.
pub async fn device_authorization(app: &TestApp, client_id: &str) -> reqwest::Response {
    app.client
        .post(app.url("/oauth/device_authorization"))
        .form(&[("client_id", client_id)])
        .send()
        .await
        .expect("request sent")
}

/// One poll of `/oauth/token` with a device code, as the CLI does it.
pub async fn device_poll(app: &TestApp, device_code: &str) -> reqwest::Response {
    oauth_token(
        app,
        &[
            ("grant_type", DEVICE_GRANT),
            ("device_code", device_code),
            ("client_id", "airlock-cli"),
        ],
    )
    .await
}

/// RFC 7662 introspection at `env`, as the resource server `caller` (an agent).
pub async fn introspect(app: &TestApp, env: &str, caller: &TestAgent, token: &str) -> (StatusCode, Value) {
    let resp = app
        .client
        .post(app.url(&format!("/envs/{env}/introspect")))
        .basic_auth(&caller.client_id, Some(caller.secret.expose_secret()))
        .form(&[("token", token)])
        .send()
        .await
        .expect("request sent");
    status_json(resp).await
}

/// [`introspect`], which must answer 200; the answer.
pub async fn introspect_ok(app: &TestApp, env: &str, caller: &TestAgent, token: &str) -> Value {
    let (status, body) = introspect(app, env, caller, token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// The decoded JSON of one part (0 header, 1 claims) of a compact JWS, unverified.
pub fn jwt_part(token: &str, part: usize) -> Value {
    use base64::Engine;
    let token = token.trim();
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT has three parts: {token:?}");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(parts[part])
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON")
}

/// The claims of a JWT, without verifying it (see [`validate`]).
pub fn claims(token: &str) -> Value {
    jwt_part(token, 1)
}

/// An environment's JWKS, fetched over HTTP as a resource server would.
pub async fn jwks(app: &TestApp, env: &str) -> JwkSet {
    jwks_at(app, &format!("/envs/{env}/jwks.json")).await
}

/// The JWKS at `path`.
pub async fn jwks_at(app: &TestApp, path: &str) -> JwkSet {
    app.client
        .get(app.url(path))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// What a resource server of an environment checks: EdDSA pinned, `iss`, `aud` and the
/// times required.
pub fn validation(iss: &str, aud: &str) -> Validation {
    let mut v = Validation::new(Algorithm::EdDSA);
    v.set_issuer(&[iss]);
    v.set_audience(&[aud]);
    v.set_required_spec_claims(&["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]);
    v
}

/// Validate with `v`, the key found by `kid` in `keys` (no such key: a bad signature).
pub fn validate_with<T: serde::de::DeserializeOwned>(
    token: &str,
    keys: &JwkSet,
    v: &Validation,
) -> Result<T, jsonwebtoken::errors::Error> {
    let header = decode_header(token)?;
    let kid = header.kid.unwrap_or_default();
    let jwk = keys.find(&kid).ok_or_else(|| {
        jsonwebtoken::errors::Error::from(jsonwebtoken::errors::ErrorKind::InvalidSignature)
    })?;
    Ok(decode::<T>(token, &DecodingKey::from_jwk(jwk)?, v)?.claims)
}

/// Validate as a resource server of an environment would ([`validation`]); the claims.
pub fn validate(
    token: &str,
    keys: &JwkSet,
    iss: &str,
    aud: &str,
) -> Result<Value, jsonwebtoken::errors::Error> {
    validate_with(token, keys, &validation(iss, aud))
}
