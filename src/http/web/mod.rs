//! The web pages people use: sign-in ([`sign_in`]), device approval (RFC 8628 section
//! 3.3, [`device`]), TOTP enrolment ([`totp`]) and the escalation approvals page
//! ([`approvals`]). Rendered on the server, with no JavaScript at all, plain enough for a
//! phone. [`layout`] holds the document around every page and the shared pieces.
//!
//! SECURITY, in one place:
//! - Cookies are `HttpOnly; SameSite=Strict; Path=/; Secure` and `__Host-` prefixed. The
//!   `Secure` flag (and with it the prefix) is dropped only when `public_url` is plain
//!   `http://` on a loopback host, where a browser would not send a Secure cookie at all.
//! - Every POST is refused (403) when the browser says it comes from another site or
//!   origin (`Sec-Fetch-Site` other than `same-origin`/`none`, or an `Origin` that is not
//!   `public_url`'s), before the form is even read. A client that sends neither header
//!   (not a browser) still needs the CSRF token.
//! - Every POST carries a CSRF token: for signed-in forms an HMAC of the web session id
//!   under a key derived from the master key; for the sign-in form (no session yet) an
//!   HMAC of a random pre-session id held in a cookie. Without the `__Host-` prefix
//!   (plain http on loopback) another local port can plant that cookie, but not a
//!   matching token. Either is compared in constant time, and a missing or wrong token
//!   is a 403 before anything else happens ([`session`]).
//! - Every page has a strict Content-Security-Policy (no script, styles only from
//!   `/static/airlock.css`, images only from it or `data:`), `X-Frame-Options: DENY`,
//!   `Referrer-Policy: no-referrer` and `Cache-Control: no-store`.
//! - Pages are `maud` templates, checked at compile time: every value spliced into one
//!   is HTML-escaped by the template engine, so no call can be forgotten. A password is
//!   never written into a page.
//! - Form bodies are bounded by `limits.max_body_bytes`, as on the token endpoint
//!   ([`form`]).
//! - Redirects go only to this module's own pages, named by a fixed list.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Router, middleware};

use crate::state::AppState;

mod approvals;
mod device;
mod form;
mod layout;
mod session;
mod sign_in;
mod totp;
mod words;

/// The only stylesheet (the CSP forbids inline styles).
const STYLESHEET: &str = include_str!("airlock.css");

/// Content-Security-Policy of every page: no script at all.
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

/// Name of the hidden CSRF field in every form that posts.
const CSRF_FIELD: &str = "csrf";

/// Web routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/device", get(device::show_device).post(device::decide_device))
        .route(
            "/approvals",
            get(approvals::show_approvals).post(approvals::decide_escalation),
        )
        .route(
            "/login",
            get(|| async { layout::see_other("device") }).post(sign_in::sign_in),
        )
        .route("/logout", post(sign_in::sign_out))
        .route("/totp", get(totp::show_totp).post(totp::activate_totp))
        .route("/static/airlock.css", get(serve_stylesheet))
        .layer(middleware::map_response(page_headers))
}

/// The security headers of every response of this module.
async fn page_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

async fn serve_stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        STYLESHEET,
    )
        .into_response()
}
