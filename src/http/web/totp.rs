//! Setting up an authenticator app: `GET /totp` starts enrolment and shows the key (as a
//! QR code and as text), `POST /totp` turns it on with the first code.

use std::net::{IpAddr, SocketAddr};

use axum::Extension;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use maud::html;

use super::CSRF_FIELD;
use super::form::read_form;
use super::layout::{Nav, Tone, error_message, forbidden_page, message_page, page, text, unavailable_page};
use super::session::{refuse_cross_site, session_csrf_ok};
use super::sign_in::{Next, SignInForm, signed_in_or};
use super::words::{capitalised, group};
use crate::people::{self, ManageError};
use crate::state::AppState;

/// `GET /totp`: start enrolment and show the secret.
pub(super) async fn show_totp(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let auth = match signed_in_or(
        &state,
        &headers,
        SignInForm {
            next: Next::Totp,
            ..SignInForm::default()
        },
    )
    .await
    {
        Ok(a) => a,
        Err(r) => return r,
    };
    let nav = Nav::of(&state, &auth);
    if auth.user.totp_enrolled() {
        return already_enrolled_page(&nav);
    }
    match people::totp_begin(&state, &auth).await {
        Ok(enrolment) => totp_page(&nav, Some(&enrolment), StatusCode::OK, None),
        Err(ManageError::Conflict(_)) => already_enrolled_page(&nav),
        Err(_) => unavailable_page(Some(&nav)),
    }
}

/// `POST /totp`: activate with the first code.
pub(super) async fn activate_totp(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let peer: Option<IpAddr> = peer.map(|Extension(ConnectInfo(a))| a.ip());
    if let Some(refused) = refuse_cross_site(&state, &headers) {
        return refused;
    }
    let form = match read_form(&state, &headers, body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let auth = match signed_in_or(
        &state,
        &headers,
        SignInForm {
            next: Next::Totp,
            message: Some("Your sign-in has ended. Sign in again, then start over.".into()),
            status: StatusCode::UNAUTHORIZED,
            ..SignInForm::default()
        },
    )
    .await
    {
        Ok(a) => a,
        Err(r) => return r,
    };
    let nav = Nav::of(&state, &auth);
    if !session_csrf_ok(&state, &auth, &form) {
        return forbidden_page(Some(&nav));
    }
    if auth.user.totp_enrolled() {
        return already_enrolled_page(&nav);
    }
    let code = form.get("code").unwrap_or_default();
    let activated = match people::totp_activate(&state, peer, &auth, code).await {
        // The person just proved the code: this browser session counts as TOTP-verified.
        Ok(()) => state
            .store
            .step_up_session(auth.session.id, crate::domain::now())
            .await
            .map_err(|_| ManageError::Unavailable),
        Err(e) => Err(e),
    };
    match activated {
        Ok(()) => message_page(
            StatusCode::OK,
            "Authenticator app set up",
            Some(&nav),
            Tone::Notice,
            "Your authenticator app is set up. From now on, signing in asks for a code from it.",
        ),
        Err(ManageError::Invalid(m)) => totp_page(&nav, None, StatusCode::BAD_REQUEST, Some(&m)),
        Err(e @ ManageError::Throttled(_)) => message_page(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many attempts",
            Some(&nav),
            Tone::Error,
            &e.to_string(),
        ),
        Err(ManageError::Conflict(m)) => message_page(
            StatusCode::CONFLICT,
            "Nothing to activate",
            Some(&nav),
            Tone::Error,
            &m,
        ),
        Err(_) => unavailable_page(Some(&nav)),
    }
}

fn totp_page(
    nav: &Nav,
    enrolment: Option<&people::TotpEnrolment>,
    status: StatusCode,
    message: Option<&str>,
) -> Response {
    let qr = enrolment
        .map(|e| crate::totp::qr_svg_data_url(&e.otpauth_uri))
        .filter(|qr| !qr.is_empty());
    let body = html! {
        @if let Some(e) = enrolment {
            p { "Scan this QR code with your authenticator app, or type the key into it by hand." }
            @if let Some(qr) = &qr {
                img class="qr" id="qr" src=(text(qr)) alt="QR code holding your authenticator key"
                    width="240" height="240";
            }
            p { "Key: " span class="secret" id="totp-secret" { (text(&group(&e.secret, 4))) } }
        } @else {
            p {
                "Enter the current code from the authenticator app you just set up. \
                 To start over with a new key, " a href="totp" { "reload this page" } "."
            }
        }
        @if let Some(m) = message {
            (error_message(&capitalised(m)))
        }
        form method="post" action="totp" id="activate" {
            input type="hidden" name=(CSRF_FIELD) value=(text(&nav.csrf));
            label for="code" { "Code from the app" }
            input type="text" id="code" name="code" inputmode="numeric" autocomplete="one-time-code"
                maxlength="8" required;
            button type="submit" { "Turn on" }
        }
    };
    page(status, "Set up your authenticator app", Some(nav), body)
}

fn already_enrolled_page(nav: &Nav) -> Response {
    let message = format!(
        "Your authenticator app is already set up. To replace it, ask an admin to reset it \
         (`airlock user reset {} --totp`).",
        nav.username
    );
    message_page(
        StatusCode::OK,
        "Authenticator app already set up",
        Some(nav),
        Tone::Notice,
        &message,
    )
}
