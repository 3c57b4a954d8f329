//! The `/v1` API as a person's or an agent's client calls it: each call answers the status
//! and the JSON body (or the body as a string when it is not JSON).

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::app::TestApp;
use super::people::Person;

/// The reason of a request that is long enough to be accepted.
pub const REASON: &str = "run migration 0042 (TICKET-118)";

/// Status and JSON body.
pub async fn status_json(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// `POST path` with a bearer token and a JSON body.
pub async fn post(app: &TestApp, path: &str, bearer: &str, body: Value) -> (StatusCode, Value) {
    status_json(app.post_json(path, bearer, body).await).await
}

/// `GET path` with a bearer token.
pub async fn get(app: &TestApp, path: &str, bearer: &str) -> (StatusCode, Value) {
    status_json(app.get(path, bearer).await).await
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
    let (status, body) = request(app, bearer, env, scopes, duration, REASON).await;
    assert_eq!(status, StatusCode::CREATED, "request accepted: {body}");
    body["id"].as_str().unwrap().to_string()
}

/// Approve request `id` as `p` with a fresh code.
pub async fn approve(app: &TestApp, p: &mut Person, id: &str) -> (StatusCode, Value) {
    let code = p.code().await;
    let token = p.token.clone();
    approve_with_code(app, &token, id, &code).await
}

/// Approve request `id` as `bearer` with an explicit code.
pub async fn approve_with_code(app: &TestApp, bearer: &str, id: &str, code: &str) -> (StatusCode, Value) {
    post(
        app,
        &format!("/v1/escalations/{id}/approve"),
        bearer,
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
