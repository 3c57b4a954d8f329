//! The two error bodies. Airlock's own resources (`/v1/...`) answer
//! `{"error":{"code":..,"message":..}}`; the OAuth endpoints answer RFC 6749 section 5.2
//! `{"error":..,"error_description":..}`. Both always had their keys in this order
//! (alphabetical, from `json!`), which is also their declaration order here.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// The error body of `/v1/...`: `{"error":{"code":..,"message":..}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiErrorBody {
    /// What went wrong.
    pub error: ApiErrorDetail,
}

/// The inside of [`ApiErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiErrorDetail {
    /// Stable, public error code (`unauthenticated`, `totp_invalid`, `conflict`, ...).
    pub code: Cow<'static, str>,
    /// For the person: what happened and what to do.
    pub message: String,
}

impl ApiErrorBody {
    /// The body for `code` and `message`.
    pub fn new(code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> ApiErrorBody {
        ApiErrorBody {
            error: ApiErrorDetail {
                code: code.into(),
                message: message.into(),
            },
        }
    }
}

/// An RFC 6749 section 5.2 error body: `{"error":..,"error_description":..}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthErrorBody {
    /// The RFC 6749 (or RFC 8628, RFC 9470) error code.
    pub error: Cow<'static, str>,
    /// For the person. Airlock always sends one; other servers may not.
    #[serde(default)]
    pub error_description: String,
}

impl OAuthErrorBody {
    /// The body for `error` and `description`.
    pub fn new(error: impl Into<Cow<'static, str>>, description: impl Into<String>) -> OAuthErrorBody {
        OAuthErrorBody {
            error: error.into(),
            error_description: description.into(),
        }
    }
}

/// Either error body, as a client reads an answer it did not expect to fail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ErrorBody {
    /// `/v1/...`.
    Api(ApiErrorBody),
    /// An OAuth endpoint.
    OAuth(OAuthErrorBody),
}

impl ErrorBody {
    /// Parse an error answer; `None` when it is neither shape (a proxy's page, say).
    pub fn parse(body: &[u8]) -> Option<ErrorBody> {
        serde_json::from_slice(body).ok()
    }

    /// The stable code: `error.code`, or the OAuth `error`.
    pub fn code(&self) -> &str {
        match self {
            ErrorBody::Api(b) => &b.error.code,
            ErrorBody::OAuth(b) => &b.error,
        }
    }

    /// The text for the person: `error.message`, or the OAuth description (its code
    /// when it has none).
    pub fn message(&self) -> &str {
        match self {
            ErrorBody::Api(b) => &b.error.message,
            ErrorBody::OAuth(b) if b.error_description.is_empty() => &b.error,
            ErrorBody::OAuth(b) => &b.error_description,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::compact;
    use serde_json::json;

    #[test]
    fn both_bodies_keep_their_bytes() {
        let api = ApiErrorBody::new("not_found", "user not found");
        assert_eq!(
            compact(&api),
            compact(&json!({ "error": { "code": "not_found", "message": "user not found" } }))
        );
        let oauth = OAuthErrorBody::new("invalid_client", "client authentication failed");
        assert_eq!(
            compact(&oauth),
            compact(
                &json!({ "error": "invalid_client", "error_description": "client authentication failed" })
            )
        );
    }

    #[test]
    fn a_client_reads_either_body_and_nothing_else() {
        let api = ErrorBody::parse(br#"{"error":{"code":"totp_invalid","message":"wrong code"}}"#).unwrap();
        assert_eq!((api.code(), api.message()), ("totp_invalid", "wrong code"));
        let oauth = ErrorBody::parse(br#"{"error":"invalid_grant","error_description":"ended"}"#).unwrap();
        assert_eq!((oauth.code(), oauth.message()), ("invalid_grant", "ended"));
        let bare = ErrorBody::parse(br#"{"error":"slow_down"}"#).unwrap();
        assert_eq!(bare.message(), "slow_down");
        assert!(ErrorBody::parse(b"<html>bad gateway</html>").is_none());
        assert!(ErrorBody::parse(br#"{"status":"ok"}"#).is_none());
    }
}
