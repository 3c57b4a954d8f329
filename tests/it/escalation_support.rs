//! Shared helpers for the escalation tests: people with TOTP, their sessions, and the
//! `/v1/escalations` and token calls they make.
//!
//! TOTP codes are single-use and the server accepts only the current time step ±1, so a
//! person has at most three fresh codes per 30-second step. [`Person::code`] hands out
//! the next unused step and, when none is left, waits for the clock to provide one.

#![allow(dead_code)]

use std::time::Duration;

use airlock::domain::User;
use airlock::people;
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::harness::TestApp;

/// Password of every test person.
pub const PASSWORD: &str = "correct horse battery";
/// RFC 8693 grant type.
pub const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// RFC 8693 subject token type.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// Airlock's actor token type.
pub const PROCESS_TYPE: &str = "urn:airlock:params:oauth:token-type:process";

/// A person with TOTP enrolled and a CLI session signed in with a code.
pub struct Person {
    /// The stored user.
    pub user: User,
    /// TOTP secret.
    pub secret: Vec<u8>,
    /// Next unused time step.
    pub next_step: i64,
    /// Session access token.
    pub token: String,
}

fn current_step() -> i64 {
    airlock::totp::step_at(time::OffsetDateTime::now_utc().unix_timestamp())
}

impl Person {
    /// A fresh, never used, currently accepted TOTP code (waits for the next time step
    /// when this person has used all three accepted ones).
    pub async fn code(&mut self) -> String {
        loop {
            let now = current_step();
            if self.next_step < now - 1 {
                self.next_step = now - 1;
            }
            if self.next_step <= now + 1 {
                let code = airlock::totp::code_at(&self.secret, self.next_step);
                self.next_step += 1;
                return code;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Username.
    pub fn name(&self) -> &str {
        &self.user.username
    }
}

/// Create `username` with `roles`, enrol TOTP, sign in with a code.
pub async fn person_with_totp(app: &TestApp, username: &str, roles: &[&str]) -> Person {
    let user = people::create_user(
        &app.state,
        "test",
        username,
        &SecretString::from(PASSWORD.to_string()),
        roles.iter().map(|r| r.to_string()).collect(),
    )
    .await
    .expect("person created");
    let (secret, step) = app.enrol_totp(&user.username, PASSWORD).await;
    let user = people::find_user(&app.state, username).await.unwrap();
    let mut p = Person {
        user,
        secret,
        next_step: step + 1,
        token: String::new(),
    };
    let code = p.code().await;
    let resp = app
        .client
        .post(app.url("/v1/sessions"))
        .json(&json!({ "username": username, "password": PASSWORD, "totp_code": code }))
        .send()
        .await
        .unwrap();
    let (status, body) = status_json(resp).await;
    assert_eq!(status, StatusCode::OK, "sign-in of {username}: {body}");
    p.token = body["access_token"].as_str().unwrap().to_string();
    p
}

/// Status and JSON body.
pub async fn status_json(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// `POST path` with a bearer token and a JSON body.
pub async fn post(app: &TestApp, path: &str, bearer: &str, body: Value) -> (StatusCode, Value) {
    let resp = app
        .client
        .post(app.url(path))
        .bearer_auth(bearer)
        .json(&body)
        .send()
        .await
        .expect("request sent");
    status_json(resp).await
}

/// `GET path` with a bearer token.
pub async fn get(app: &TestApp, path: &str, bearer: &str) -> (StatusCode, Value) {
    let resp = app
        .client
        .get(app.url(path))
        .bearer_auth(bearer)
        .send()
        .await
        .expect("request sent");
    status_json(resp).await
}

/// `POST /v1/escalations`.
pub async fn request(
    app: &TestApp,
    bearer: &str,
    env: &str,
    scopes: &[&str],
    duration: &str,
    reason: &str,
) -> (StatusCode, Value) {
    post(
        app,
        "/v1/escalations",
        bearer,
        json!({ "environment": env, "scopes": scopes, "duration": duration, "reason": reason }),
    )
    .await
}

/// A pending request that must be accepted; its id.
pub async fn request_ok(app: &TestApp, bearer: &str, env: &str, scopes: &[&str], duration: &str) -> String {
    let (status, body) = request(
        app,
        bearer,
        env,
        scopes,
        duration,
        "run migration 0042 (TICKET-118)",
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "request accepted: {body}");
    body["id"].as_str().unwrap().to_string()
}

/// Approve request `id` as `p` with a fresh code.
pub async fn approve(app: &TestApp, p: &mut Person, id: &str) -> (StatusCode, Value) {
    let code = p.code().await;
    let token = p.token.clone();
    post(
        app,
        &format!("/v1/escalations/{id}/approve"),
        &token,
        json!({ "totp": code }),
    )
    .await
}

/// Deny request `id` as `bearer`.
pub async fn deny(app: &TestApp, bearer: &str, id: &str, reason: &str) -> (StatusCode, Value) {
    post(
        app,
        &format!("/v1/escalations/{id}/deny"),
        bearer,
        json!({ "reason": reason }),
    )
    .await
}

/// Cancel request `id` as `bearer`.
pub async fn cancel(app: &TestApp, bearer: &str, id: &str) -> (StatusCode, Value) {
    let resp = app
        .client
        .post(app.url(&format!("/v1/escalations/{id}/cancel")))
        .bearer_auth(bearer)
        .send()
        .await
        .expect("request sent");
    status_json(resp).await
}

/// `GET /v1/escalations/{id}` (optionally `?wait=`).
pub async fn show(app: &TestApp, bearer: &str, id: &str, wait: Option<u64>) -> (StatusCode, Value) {
    let path = match wait {
        Some(w) => format!("/v1/escalations/{id}?wait={w}"),
        None => format!("/v1/escalations/{id}"),
    };
    get(app, &path, bearer).await
}

/// Confirm a fresh code for `p`'s session.
pub async fn step_up(app: &TestApp, p: &mut Person) {
    let code = p.code().await;
    let token = p.token.clone();
    let resp = app
        .client
        .post(app.url("/v1/me/step-up"))
        .bearer_auth(&token)
        .json(&json!({ "code": code }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT, "step-up of {}", p.name());
}

/// RFC 8693 exchange of a session token for an environment token.
pub async fn exchange(
    app: &TestApp,
    env: &str,
    subject: &str,
    scope: Option<&str>,
    actor: Option<&str>,
) -> (StatusCode, Value) {
    let mut form = vec![
        ("grant_type", EXCHANGE),
        ("subject_token", subject),
        ("subject_token_type", ACCESS_TOKEN_TYPE),
    ];
    if let Some(s) = scope {
        form.push(("scope", s));
    }
    if let Some(a) = actor {
        form.push(("actor_token", a));
        form.push(("actor_token_type", PROCESS_TYPE));
    }
    let resp = app
        .client
        .post(app.url(&format!("/envs/{env}/token")))
        .form(&form)
        .send()
        .await
        .expect("request sent");
    status_json(resp).await
}

/// The claims of a JWT, without verifying it (tests verify with a JWT library elsewhere).
pub fn claims(token: &str) -> Value {
    use base64::Engine;
    let part = token.split('.').nth(1).expect("JWT payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

/// An environment's JWKS, fetched over HTTP as a resource server would.
pub async fn jwks(app: &TestApp, env: &str) -> jsonwebtoken::jwk::JwkSet {
    app.client
        .get(app.url(&format!("/envs/{env}/jwks.json")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Validate as a resource server of an environment would: EdDSA pinned, key by `kid`,
/// `iss`, `aud` and the times required.
pub fn validate(
    token: &str,
    keys: &jsonwebtoken::jwk::JwkSet,
    iss: &str,
    aud: &str,
) -> Result<Value, jsonwebtoken::errors::Error> {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
    let header = decode_header(token)?;
    let kid = header.kid.unwrap_or_default();
    let jwk = keys.find(&kid).ok_or_else(|| {
        jsonwebtoken::errors::Error::from(jsonwebtoken::errors::ErrorKind::InvalidSignature)
    })?;
    let mut v = Validation::new(Algorithm::EdDSA);
    v.set_issuer(&[iss]);
    v.set_audience(&[aud]);
    v.set_required_spec_claims(&["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]);
    Ok(decode::<Value>(token, &DecodingKey::from_jwk(jwk)?, &v)?.claims)
}
