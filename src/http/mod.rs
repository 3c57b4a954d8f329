//! HTTP: routes and the layers around them.
//!
//! Only this module imports axum. Handlers are thin: they parse, call library
//! functions (`oauth`, `agents`), and map errors through `error.rs`.
//!
//! SECURITY: the request span records the matched route template, never the raw URI
//! or headers, so query strings and `Authorization` never reach the logs.

mod api;
mod discovery;
pub mod error;
mod escalations;
mod extract;
mod health;
mod serve;
mod session;
mod tokens;
mod web;

// The pure parsers of outside input behind the handlers, public so the fuzz targets
// (fuzz/) exercise the production code rather than a copy.
pub use escalations::parse_create_body;

use std::time::Duration;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use crate::state::AppState;
use error::{ApiError, oauth_status};
pub use serve::{ConnectionLimits, serve};

/// Largest body any route accepts; the token endpoint applies its own, smaller limit.
const GLOBAL_BODY_LIMIT: usize = 64 * 1024;

/// The whole application router.
pub fn router(state: AppState) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let timeout: Duration = state.settings.limits.request_timeout;
    Router::new()
        .merge(health::router())
        .merge(discovery::router())
        .merge(tokens::router())
        .merge(session::router())
        .merge(api::router())
        .merge(escalations::router())
        .merge(web::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        // Bounds every body extractor; the token endpoint reads its body with its own, smaller limit.
        .layer(axum::extract::DefaultBodyLimit::max(GLOBAL_BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(timeout, deadline))
        .layer(axum::middleware::from_fn(no_control_characters))
        .layer(
            tower::ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
                .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
                    let route = req
                        .extensions()
                        .get::<MatchedPath>()
                        .map(|p| p.as_str().to_owned())
                        .unwrap_or_else(|| "unmatched".into());
                    let id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    tracing::info_span!("request", method = %req.method(), route = %route, request_id = %id)
                }))
                .layer(PropagateRequestIdLayer::new(request_id))
                .layer(CatchPanicLayer::custom(|_| {
                    ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response()
                }))
                .layer(SetResponseHeaderLayer::overriding(
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                )),
        )
}

/// Bound every request; a request past its deadline gets a 503 in the shape its
/// endpoint speaks (OAuth or `/v1`), with `Retry-After`.
async fn deadline(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    let oauth = is_oauth_path(req.uri().path());
    // A long-poll on an escalation (`?wait=`) may take up to its own, bounded wait.
    let limit = if req.uri().path().starts_with("/v1/escalations/")
        && req.uri().query().is_some_and(|q| q.contains("wait="))
    {
        limit + crate::escalations::MAX_WAIT
    } else {
        limit
    };
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) if oauth => crate::oauth::OAuthError::Unavailable.into_response(),
        Err(_) => ApiError::Unavailable("the request took too long; retry shortly").into_response(),
    }
}

/// Refuse a request whose path or query, once percent-decoded, holds a control character
/// (`%00`, `%01`, ...), before any handler sees it: no identifier (environment, username,
/// agent reference, escalation id, list filter) ever contains one, and some cannot even be
/// looked up (PostgreSQL rejects NUL in text, which would be a 503). The answer is the
/// endpoint's usual 400 for a malformed request, in its shape.
async fn no_control_characters(req: Request, next: Next) -> Response {
    let uri = req.uri();
    let decoded_path = percent_encoding::percent_decode_str(uri.path()).decode_utf8_lossy();
    let bad_path = decoded_path.chars().any(char::is_control);
    let bad_query = uri.query().is_some_and(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .any(|(k, v)| k.chars().chain(v.chars()).any(char::is_control))
    });
    if !(bad_path || bad_query) {
        return next.run(req).await;
    }
    let message = "the path or query holds a control character; identifiers never do";
    if is_oauth_path(uri.path()) {
        crate::oauth::OAuthError::InvalidRequest(message.into()).into_response()
    } else {
        ApiError::BadRequest(message.into()).into_response()
    }
}

async fn not_found(uri: Uri) -> Response {
    if is_oauth_path(uri.path()) {
        oauth_status(StatusCode::NOT_FOUND, "no such endpoint")
    } else {
        ApiError::NotFound("resource").into_response()
    }
}

async fn method_not_allowed(uri: Uri) -> Response {
    if is_oauth_path(uri.path()) {
        let mut r = oauth_status(
            StatusCode::METHOD_NOT_ALLOWED,
            "this endpoint does not take that method",
        );
        if uri.path().ends_with("/token") {
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
        }
        r
    } else {
        ApiError::MethodNotAllowed.into_response()
    }
}

fn is_oauth_path(path: &str) -> bool {
    path.starts_with("/envs/") || path.starts_with("/.well-known/") || path.starts_with("/oauth/")
}
