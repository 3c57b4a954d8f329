//! The only error types that become HTTP responses.
//!
//! `/v1` resources answer `{"error":{"code":..,"message":..}}`; OAuth endpoints answer
//! RFC 6749 section 5.2 `{"error":..,"error_description":..}`. Internal failures are
//! logged with their cause and answered with a fixed message: no internals on the wire.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::oauth::OAuthError;
use crate::wire::{ApiErrorBody, OAuthErrorBody};

/// Errors of Airlock's own JSON resources.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401: no valid session; sign in again.
    #[error("authentication required")]
    Unauthenticated,
    /// 403 with what is missing.
    #[error("{0}")]
    Forbidden(String),
    /// 403: confirm a fresh TOTP code first.
    #[error("step-up required")]
    StepUpRequired,
    /// 400 with what to change.
    #[error("{0}")]
    BadRequest(String),
    /// 409.
    #[error("{0}")]
    Conflict(String),
    /// 429 with `Retry-After`: too many requests lately; the message says when to retry.
    #[error("{message}")]
    RateLimited {
        /// What happened and when to try again.
        message: String,
        /// Seconds until a retry can succeed.
        retry_after_secs: u64,
    },
    /// A sign-in that did not succeed (401, 429 or 503).
    #[error("sign-in failed")]
    SignIn(crate::people::SignInError),
    /// 404 with a resource name.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// 405.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 503: a dependency is down; fail closed.
    #[error("service unavailable")]
    Unavailable(&'static str),
    /// 500: logged, never shown.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, String) {
        use crate::people::SignInError as S;
        match self {
            ApiError::Unauthenticated => (
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "sign in first (`airlock login`); your session may have ended".into(),
            ),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, "forbidden", m.clone()),
            ApiError::StepUpRequired => (
                StatusCode::FORBIDDEN,
                "step_up_required",
                "confirm a fresh TOTP code first: run `airlock step-up` (it lasts a few minutes)".into(),
            ),
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "invalid_request", m.clone()),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, "conflict", m.clone()),
            ApiError::RateLimited { message, .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "rate_limited", message.clone())
            }
            ApiError::SignIn(e) => {
                let status = match e {
                    S::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
                    S::Busy | S::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::UNAUTHORIZED,
                };
                (status, e.code(), e.message())
            }
            ApiError::NotFound(what) => (StatusCode::NOT_FOUND, "not_found", format!("{what} not found")),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this method is not allowed on this resource".into(),
            ),
            ApiError::Unavailable(why) => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable", (*why).to_string())
            }
            ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error".into(),
            ),
        }
    }
}

impl From<crate::people::ManageError> for ApiError {
    fn from(e: crate::people::ManageError) -> Self {
        use crate::people::ManageError as M;
        match e {
            M::Invalid(m) => ApiError::BadRequest(m),
            M::NotFound => ApiError::NotFound("user"),
            M::Conflict(m) => ApiError::Conflict(m),
            M::Busy => ApiError::Unavailable("too busy; retry shortly"),
            M::Unavailable => ApiError::Unavailable("the store is unavailable; retry shortly"),
            M::Throttled(secs) => ApiError::SignIn(crate::people::SignInError::Throttled(secs)),
        }
    }
}

impl From<crate::agents::AgentError> for ApiError {
    fn from(e: crate::agents::AgentError) -> Self {
        use crate::agents::AgentError as A;
        match e {
            A::Invalid(m) => ApiError::BadRequest(m),
            A::NotFound(_) => ApiError::NotFound("agent"),
            e @ A::NameTaken { .. } => ApiError::Conflict(e.to_string()),
            A::Store(_) => ApiError::Unavailable("the store is unavailable; retry shortly"),
        }
    }
}

impl From<crate::auth::SessionError> for ApiError {
    fn from(e: crate::auth::SessionError) -> Self {
        match e {
            crate::auth::SessionError::Invalid => ApiError::Unauthenticated,
            crate::auth::SessionError::Unavailable => {
                ApiError::Unavailable("the store is unavailable; retry shortly")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(e) = &self {
            tracing::error!(error = ?e, "internal error");
        }
        let (status, code, message) = self.parts();
        let mut response = (status, Json(ApiErrorBody::new(code, message))).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match (&self, status) {
            (ApiError::SignIn(crate::people::SignInError::Throttled(secs)), _)
            | (
                ApiError::RateLimited {
                    retry_after_secs: secs,
                    ..
                },
                _,
            ) => {
                if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                    headers.insert(header::RETRY_AFTER, v);
                }
            }
            (_, StatusCode::SERVICE_UNAVAILABLE) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            (_, StatusCode::UNAUTHORIZED) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Bearer realm="airlock""#),
                );
            }
            _ => {}
        }
        response
    }
}

impl OAuthError {
    fn parts(&self) -> (StatusCode, &'static str, String) {
        match self {
            OAuthError::InvalidRequest(m) => (StatusCode::BAD_REQUEST, "invalid_request", m.clone()),
            OAuthError::InvalidClient => (
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication failed".into(),
            ),
            OAuthError::InvalidScope(m) => (StatusCode::BAD_REQUEST, "invalid_scope", m.clone()),
            OAuthError::UnsupportedGrantType(g) => (
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                format!("grant_type '{g}' is not supported at this endpoint"),
            ),
            OAuthError::AccessDenied(m) => (StatusCode::FORBIDDEN, "access_denied", m.clone()),
            OAuthError::StepUpRequired(m) => (
                StatusCode::FORBIDDEN,
                "insufficient_user_authentication",
                m.clone(),
            ),
            OAuthError::UnknownEnvironment(e) => (
                StatusCode::NOT_FOUND,
                "invalid_request",
                format!(
                    "no environment named '{}'",
                    e.chars().take(64).collect::<String>()
                ),
            ),
            OAuthError::InvalidGrant(m) => (StatusCode::BAD_REQUEST, "invalid_grant", m.clone()),
            OAuthError::AuthorizationPending => (
                StatusCode::BAD_REQUEST,
                "authorization_pending",
                "the code has not been approved yet".into(),
            ),
            OAuthError::SlowDown => (StatusCode::BAD_REQUEST, "slow_down", "poll less often".into()),
            OAuthError::ExpiredToken => (
                StatusCode::BAD_REQUEST,
                "expired_token",
                "the device code expired; start again with `airlock login`".into(),
            ),
            OAuthError::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the decision could not be recorded; nothing was issued; retry shortly".into(),
            ),
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let (status, code, description) = self.parts();
        let mut response = (status, Json(OAuthErrorBody::new(code, description))).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Basic realm="airlock", error="invalid_client""#),
            );
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// An OAuth-shaped error with an explicit status (413, 415, 405 at OAuth endpoints).
pub fn oauth_status(status: StatusCode, description: &str) -> Response {
    let mut response = (status, Json(OAuthErrorBody::new("invalid_request", description))).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

impl From<crate::escalations::EscalationError> for ApiError {
    fn from(e: crate::escalations::EscalationError) -> Self {
        use crate::escalations::EscalationError as E;
        match e {
            E::Unauthenticated => ApiError::Unauthenticated,
            E::Forbidden(m) => ApiError::Forbidden(m),
            E::BadRequest(m) => ApiError::BadRequest(m),
            E::NotFound => ApiError::NotFound("request"),
            E::UnknownEnvironment => ApiError::NotFound("environment"),
            E::Conflict(m) => ApiError::Conflict(m),
            E::RateLimited {
                message,
                retry_after_secs,
            } => ApiError::RateLimited {
                message,
                retry_after_secs,
            },
            E::Totp(e) => ApiError::SignIn(e),
            E::Unavailable => ApiError::Unavailable("the store is unavailable; retry shortly"),
        }
    }
}
