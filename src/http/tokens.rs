//! `POST /envs/{env}/token`: RFC 6749 token endpoint of one environment.
//!
//! The request is parsed by hand so every malformed input gets an RFC 6749 answer
//! (never an extractor's plain-text rejection): the body is bounded, the content type
//! must be form-encoded, parameters may not repeat (section 3.2), and a client may use
//! one authentication method only (section 2.3).

use axum::body::{Body, to_bytes};
use axum::extract::rejection::PathRejection;
use std::net::{IpAddr, SocketAddr};

use axum::Extension;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use secrecy::SecretString;

use super::error::oauth_status;
use crate::app::AppState;
use crate::oauth::{self, ClientCredentials, MAX_CREDENTIAL_LEN, OAuthError};
use crate::people;
use secrecy::ExposeSecret;

/// Token routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/envs/{env}/token", post(issue_token))
        .route("/envs/{env}/introspect", post(introspect))
}

/// Parameters we read; others are ignored as RFC 6749 section 3.2 requires.
#[derive(Default)]
pub struct TokenParams {
    /// `grant_type`.
    pub grant_type: Option<String>,
    /// `scope`: space-separated.
    pub scope: Option<String>,
    /// `client_id` (client_secret_post, or beside Basic).
    pub client_id: Option<String>,
    /// `client_secret` (client_secret_post).
    pub client_secret: Option<SecretString>,
    /// `subject_token` (RFC 8693).
    pub subject_token: Option<SecretString>,
    /// `subject_token_type` (RFC 8693).
    pub subject_token_type: Option<String>,
    /// `actor_token` (RFC 8693).
    pub actor_token: Option<String>,
    /// `actor_token_type` (RFC 8693).
    pub actor_token_type: Option<String>,
    /// `device_code` (RFC 8628).
    pub device_code: Option<SecretString>,
    /// `refresh_token`.
    pub refresh_token: Option<SecretString>,
    /// `token` (RFC 7662 introspection).
    pub token: Option<SecretString>,
}

async fn issue_token(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    env: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (env, bytes) = match env_and_form(&state, env, &headers, body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let peer = peer.map(|Extension(ConnectInfo(addr))| addr.ip());
    match token_request(&state, peer, &env, &headers, &bytes).await {
        Ok(tokens) => {
            let mut r = Json(tokens).into_response();
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r.headers_mut()
                .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
            r
        }
        Err(e) => e.into_response(),
    }
}

/// `POST /envs/{env}/introspect` (RFC 7662): a resource server of the environment,
/// authenticated as one of its agents, asks whether a token is active.
async fn introspect(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    env: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (env, bytes) = match env_and_form(&state, env, &headers, body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let peer = peer.map(|Extension(ConnectInfo(addr))| addr.ip());
    let params = match parse_params(&bytes) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let creds = match client_credentials(&headers, params.client_id, params.client_secret) {
        Ok(Some(c)) => c,
        Ok(None) => return OAuthError::InvalidClient.into_response(),
        Err(e) => return e.into_response(),
    };
    let Some(token) = params.token else {
        return OAuthError::InvalidRequest("token is required".into()).into_response();
    };
    match oauth::introspect(&state, peer, &env, creds, token.expose_secret()).await {
        Ok(answer) => no_store_json(answer),
        Err(e) => e.into_response(),
    }
}

/// The environment of the path (404 in the OAuth shape if unknown) and the bounded form body.
async fn env_and_form(
    state: &AppState,
    env: Result<Path<String>, PathRejection>,
    headers: &HeaderMap,
    body: Body,
) -> Result<(String, axum::body::Bytes), Response> {
    let Ok(Path(env)) = env else {
        return Err(OAuthError::UnknownEnvironment("(not valid UTF-8)".into()).into_response());
    };
    if state.settings.environment(&env).is_none() {
        return Err(OAuthError::UnknownEnvironment(env.chars().take(64).collect()).into_response());
    }
    let bytes = read_form_body(state, headers, body).await?;
    Ok((env, bytes))
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

async fn token_request(
    state: &AppState,
    peer: Option<IpAddr>,
    env: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<oauth::TokenResponse, OAuthError> {
    let params = match parse_params(body) {
        Ok(p) => p,
        Err(e) => return Err(oauth::refuse_request(state, peer, env, e).await),
    };
    let grant_type = match params.grant_type.as_deref() {
        None => {
            let e = OAuthError::InvalidRequest("grant_type is required".into());
            return Err(oauth::refuse_request(state, peer, env, e).await);
        }
        Some("client_credentials") => "client_credentials",
        Some(people::TOKEN_EXCHANGE_GRANT) => {
            let Some(subject) = params.subject_token.as_ref() else {
                let e = OAuthError::InvalidRequest("subject_token is required".into());
                return Err(oauth::refuse_request(state, peer, env, e).await);
            };
            let req = people::ExchangeRequest {
                subject_token: subject.expose_secret(),
                subject_token_type: params.subject_token_type.as_deref().unwrap_or_default(),
                actor_token: params.actor_token.as_deref(),
                actor_token_type: params.actor_token_type.as_deref(),
                scope: params.scope.as_deref(),
            };
            return people::exchange(state, peer, env, req).await;
        }
        Some(other) => {
            let e = OAuthError::UnsupportedGrantType(other.chars().take(64).collect());
            return Err(oauth::refuse_request(state, peer, env, e).await);
        }
    };
    debug_assert_eq!(grant_type, "client_credentials");
    let creds = match client_credentials(headers, params.client_id, params.client_secret) {
        Ok(Some(c)) => c,
        // No credentials at all, or a non-Basic Authorization scheme: authentication failed.
        Ok(None) => {
            return Err(oauth::refuse_request(state, peer, env, OAuthError::InvalidClient).await);
        }
        Err(e) => return Err(oauth::refuse_request(state, peer, env, e).await),
    };
    oauth::client_credentials(state, peer, env, creds, params.scope.as_deref()).await
}

/// Parse a form-encoded token, device-authorization or introspection body: parameters
/// may not repeat (RFC 6749 section 3.2) and there are at most 32 of them. Public so the
/// fuzz targets run this very code.
pub fn parse_params(body: &[u8]) -> Result<TokenParams, OAuthError> {
    let mut p = TokenParams::default();
    let mut seen: Vec<String> = Vec::new();
    for (key, value) in url::form_urlencoded::parse(body) {
        if seen.iter().any(|k| *k == key) {
            return Err(OAuthError::InvalidRequest(format!(
                "parameter '{}' appears more than once",
                key.chars().take(32).collect::<String>()
            )));
        }
        if seen.len() >= 32 {
            return Err(OAuthError::InvalidRequest("too many parameters".into()));
        }
        seen.push(key.to_string());
        match key.as_ref() {
            "grant_type" => p.grant_type = Some(value.into_owned()),
            "scope" => p.scope = Some(value.into_owned()),
            "client_id" => p.client_id = Some(value.into_owned()),
            "client_secret" => p.client_secret = Some(SecretString::from(value.into_owned())),
            "subject_token" => p.subject_token = Some(SecretString::from(value.into_owned())),
            "subject_token_type" => p.subject_token_type = Some(value.into_owned()),
            "actor_token" => p.actor_token = Some(value.into_owned()),
            "actor_token_type" => p.actor_token_type = Some(value.into_owned()),
            "device_code" => p.device_code = Some(SecretString::from(value.into_owned())),
            "refresh_token" => p.refresh_token = Some(SecretString::from(value.into_owned())),
            "token" => p.token = Some(SecretString::from(value.into_owned())),
            _ => {}
        }
    }
    Ok(p)
}

/// Credentials from `Authorization: Basic` (client_secret_basic) or the body
/// (client_secret_post), never both. `Ok(None)`: no credentials, or another scheme.
/// Public so the fuzz targets run this very code.
pub fn client_credentials(
    headers: &HeaderMap,
    body_id: Option<String>,
    body_secret: Option<SecretString>,
) -> Result<Option<ClientCredentials>, OAuthError> {
    let basic = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(value) => {
            let value = value.to_str().map_err(|_| OAuthError::InvalidClient)?;
            let Some((scheme, rest)) = value.split_once(' ') else {
                return Ok(None);
            };
            if !scheme.eq_ignore_ascii_case("basic") {
                return Ok(None);
            }
            Some(decode_basic(rest.trim()).ok_or(OAuthError::InvalidClient)?)
        }
    };
    match (basic, body_id, body_secret) {
        (Some(_), _, Some(_)) => Err(OAuthError::InvalidRequest(
            "use one client authentication method: Authorization: Basic or client_secret in the body, not both"
                .into(),
        )),
        (Some((id, secret)), body_id, None) => {
            // RFC 6749 allows client_id in the body alongside Basic; it must then agree.
            if body_id.is_some_and(|b| b != id) {
                return Err(OAuthError::InvalidRequest("client_id disagrees with the Authorization header".into()));
            }
            Ok(Some(ClientCredentials { client_id: id, client_secret: secret }))
        }
        (None, Some(id), Some(secret)) => {
            if id.len() > MAX_CREDENTIAL_LEN {
                return Err(OAuthError::InvalidClient);
            }
            Ok(Some(ClientCredentials { client_id: id, client_secret: secret }))
        }
        (None, _, _) => Ok(None),
    }
}

/// Decode `base64(urlencode(id) ":" urlencode(secret))` (RFC 6749 section 2.3.1).
fn decode_basic(encoded: &str) -> Option<(String, SecretString)> {
    if encoded.len() > 4 * MAX_CREDENTIAL_LEN {
        return None;
    }
    let raw = zeroize::Zeroizing::new(STANDARD.decode(encoded).ok()?);
    let text = std::str::from_utf8(&raw).ok()?;
    let (id, secret) = text.split_once(':')?;
    // application/x-www-form-urlencoded of one value: '+' is a space, '%XX' a byte;
    // a raw '&' or '=' cannot occur in a correctly encoded value.
    let decode = |s: &str| -> Option<String> {
        if s.contains(['&', '=']) {
            return None;
        }
        let spaced = s.replace('+', " ");
        percent_encoding::percent_decode_str(&spaced)
            .decode_utf8()
            .ok()
            .map(|v| v.into_owned())
    };
    let id = decode(id)?;
    let secret = decode(secret)?;
    if id.is_empty() || id.len() > MAX_CREDENTIAL_LEN || secret.len() > MAX_CREDENTIAL_LEN {
        return None;
    }
    Some((id, SecretString::from(secret)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_decoded() {
        let (id, secret) = decode_basic(&STANDARD.encode("agt_x:a%2Bb%3Ac")).unwrap();
        assert_eq!(id, "agt_x");
        assert_eq!(secret.expose_secret(), "a+b:c");
        assert!(decode_basic("!!!").is_none());
        assert!(decode_basic(&STANDARD.encode("no-colon")).is_none());
        assert!(decode_basic(&STANDARD.encode("agt_x:secret&junk")).is_none());
    }

    #[test]
    fn repeated_parameters_are_refused() {
        assert!(parse_params(b"grant_type=a&grant_type=b").is_err());
        assert!(parse_params(b"grant_type=a&scope=b").is_ok());
    }
}
