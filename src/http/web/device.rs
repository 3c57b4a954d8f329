//! Device approval (RFC 8628 section 3.3): `GET /device` to enter or confirm the code a
//! terminal shows, `POST /device` to approve or deny it.

use std::net::{IpAddr, SocketAddr};

use axum::Extension;
use axum::body::Body;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use maud::html;

use super::CSRF_FIELD;
use super::form::read_form;
use super::layout::{Nav, Tone, error_message, forbidden_page, message_page, page, text, unavailable_page};
use super::session::{refuse_cross_site, session_csrf_ok};
use super::sign_in::{Next, SignInForm, signed_in_or};
use crate::people::{self, DeviceError};
use crate::state::AppState;
use crate::throttle;

/// What a person sees for a code that is not pending.
const UNKNOWN_CODE: &str = "That code is unknown, has expired or was already used. Check the code your \
                            terminal shows, or run `airlock login` again for a new one.";

/// `GET /device[?user_code=...]`: sign in, then enter or confirm the code.
pub(super) async fn show_device(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let browser: Option<IpAddr> = peer.map(|Extension(ConnectInfo(a))| a.ip());
    let typed = query
        .as_deref()
        .and_then(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "user_code")
                .map(|(_, v)| v.into_owned())
        })
        .filter(|v| !v.trim().is_empty());
    let auth = match signed_in_or(
        &state,
        &headers,
        SignInForm {
            next: Next::Device,
            user_code: typed.as_deref().and_then(people::normalize_user_code),
            ..SignInForm::default()
        },
    )
    .await
    {
        Ok(a) => a,
        Err(r) => return r,
    };
    let nav = Nav::of(&state, &auth);
    let Some(typed) = typed else {
        return enter_code_page(&nav, StatusCode::OK, None, "");
    };
    match people::pending_device(&state, &typed).await {
        Ok(code) => confirm_page(&nav, &code, browser),
        Err(DeviceError::Unknown) => {
            enter_code_page(&nav, StatusCode::BAD_REQUEST, Some(UNKNOWN_CODE), &typed)
        }
        Err(DeviceError::Unavailable) => unavailable_page(Some(&nav)),
    }
}

/// `POST /device`: approve or deny a code.
pub(super) async fn decide_device(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    if let Some(refused) = refuse_cross_site(&state, &headers) {
        return refused;
    }
    let form = match read_form(&state, &headers, body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let user_code = form.get("user_code").and_then(people::normalize_user_code);
    let auth = match signed_in_or(
        &state,
        &headers,
        SignInForm {
            next: Next::Device,
            user_code: user_code.clone(),
            message: Some("Your sign-in has ended. Sign in again to decide on the code.".into()),
            status: StatusCode::UNAUTHORIZED,
            ..SignInForm::default()
        },
    )
    .await
    {
        Ok(a) => a,
        Err(r) => return r,
    };
    // SECURITY: the CSRF check comes before anything is decided.
    if !session_csrf_ok(&state, &auth, &form) {
        return forbidden_page(Some(&Nav::of(&state, &auth)));
    }
    let nav = Nav::of(&state, &auth);
    let approve = match form.get("decision") {
        Some("approve") => true,
        Some("deny") => false,
        _ => {
            return message_page(
                StatusCode::BAD_REQUEST,
                "Choose Approve or Deny",
                Some(&nav),
                Tone::Error,
                "The form did not say whether to approve or deny. Go back and press one of the buttons.",
            );
        }
    };
    let Some(user_code) = user_code else {
        return enter_code_page(&nav, StatusCode::BAD_REQUEST, Some(UNKNOWN_CODE), "");
    };
    match people::decide_device(&state, &auth, &user_code, approve).await {
        Ok(()) if approve => message_page(
            StatusCode::OK,
            "Approved",
            Some(&nav),
            Tone::Notice,
            "Approved: return to your terminal.",
        ),
        Ok(()) => message_page(
            StatusCode::OK,
            "Denied",
            Some(&nav),
            Tone::Notice,
            "Denied. The terminal that asked will not be signed in.",
        ),
        Err(DeviceError::Unknown) => enter_code_page(&nav, StatusCode::BAD_REQUEST, Some(UNKNOWN_CODE), ""),
        Err(DeviceError::Unavailable) => unavailable_page(Some(&nav)),
    }
}

fn enter_code_page(nav: &Nav, status: StatusCode, message: Option<&str>, typed: &str) -> Response {
    let typed: String = typed.chars().take(32).collect();
    let body = html! {
        p { "Enter the code your terminal shows." }
        @if let Some(m) = message {
            (error_message(m))
        }
        form method="get" action="device" id="enter-code" {
            label for="user_code" { "Code" }
            input type="text" id="user_code" name="user_code" value=(text(&typed)) autocomplete="off"
                autocapitalize="characters" spellcheck="false" maxlength="32" required autofocus;
            button type="submit" { "Continue" }
        }
    };
    page(status, "Approve a sign-in", Some(nav), body)
}

fn confirm_page(nav: &Nav, request: &crate::domain::DeviceCode, browser: Option<IpAddr>) -> Response {
    let user_code = request.user_code.as_str();
    // RFC 8628 section 5.4: give the person what they need to judge the request.
    let age = (crate::domain::now() - request.created_at).whole_seconds().max(0);
    let when = if age < 120 {
        format!("{age} seconds ago")
    } else {
        format!("{} minutes ago", age / 60)
    };
    let from = request.client_address.as_deref().unwrap_or("an unknown address");
    let program = request
        .client_user_agent
        .as_deref()
        .unwrap_or("a program that did not say what it is");
    // SECURITY: device-code phishing. A code started on another machine (an agent, or
    // someone who sent this link) is the typical attack: say so plainly when the
    // request did not come from where this browser is.
    let same_place = match (request.client_address.as_deref(), browser) {
        (Some(client), Some(browser)) => client
            .parse::<IpAddr>()
            .is_ok_and(|c| throttle::address_group(c) == throttle::address_group(browser)),
        _ => false,
    };
    let browser = browser.map(|b| b.to_string()).unwrap_or_else(|| "unknown".into());
    let body = html! {
        p id="request" { "A terminal is asking to sign in as " strong { (text(&nav.username)) } "." }
        p { "Code: " span class="code" id="user-code" { (text(user_code)) } }
        p id="origin" {
            "Requested " (text(&when)) " from " strong { (text(from)) } " by "
            strong id="user-agent" { (text(program)) } "."
        }
        @if !same_place {
            p class="error" id="elsewhere" role="alert" {
                "This request came from a different address than this browser (" (text(&browser)) "). \
                 If you did not start " code { "airlock login" } " on that machine yourself, deny: \
                 someone may be trying to get you to sign them in."
            }
        }
        p {
            "Only approve if this is the code your terminal shows. If you did not just run\n"
            code { "airlock login" } ", deny. Approver and admin rights in that terminal need\n"
            code { "airlock step-up" } " with your authenticator there."
        }
        form method="post" action="device" class="decide" id="decide" {
            input type="hidden" name=(CSRF_FIELD) value=(text(&nav.csrf));
            input type="hidden" name="user_code" value=(text(user_code));
            button type="submit" name="decision" value="approve" class="approve" id="approve" { "Approve" }
            button type="submit" name="decision" value="deny" class="deny" id="deny" { "Deny" }
        }
    };
    page(StatusCode::OK, "Approve a sign-in", Some(nav), body)
}
