//! The shapes every error answer must have: `/v1` errors (`{"error":{"code","message"}}`)
//! and RFC 6749 errors of the OAuth endpoints (`{"error","error_description"}`).

use reqwest::StatusCode;
use serde_json::Value;

/// Status and body of an answer whose body must be JSON.
pub async fn status_and_json(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    let body: Value = resp.json().await.expect("JSON body");
    (status, body)
}

/// Assert a `/v1` error answer: status, stable `error.code`, a message.
#[track_caller]
pub fn assert_api_error(status: StatusCode, body: &Value, want: StatusCode, code: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
}

/// Assert an RFC 6749 error answer of a token endpoint: status, `error`, and no token.
#[track_caller]
pub fn assert_oauth_error(status: StatusCode, body: &Value, want: StatusCode, error: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["error"], error, "{body}");
    assert!(
        body.get("access_token").is_none(),
        "no token on a refusal: {body}"
    );
}

/// [`assert_api_error`] on a response with a JSON body; the body.
pub async fn expect_api_error(resp: reqwest::Response, status: StatusCode, code: &str) -> Value {
    let (got, body) = status_and_json(resp).await;
    assert_api_error(got, &body, status, code);
    body
}

/// An RFC 6749 error answer with a JSON body: status, `error`, a description; the body.
pub async fn expect_oauth_error(resp: reqwest::Response, status: StatusCode, error: &str) -> Value {
    let (got, body) = status_and_json(resp).await;
    assert_eq!(got, status, "{body}");
    assert_eq!(body["error"], error, "{body}");
    assert!(body["error_description"].is_string(), "{body}");
    body
}
