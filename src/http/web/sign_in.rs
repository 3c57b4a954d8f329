//! Signing in and out: `POST /login` (password, and a TOTP code when one is set up),
//! `POST /logout`, and the sign-in form every page shows to someone not signed in, which
//! comes back to where they were going.

use std::net::{IpAddr, SocketAddr};

use axum::Extension;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use maud::html;
use secrecy::SecretString;

use super::CSRF_FIELD;
use super::form::read_form;
use super::layout::{
    Nav, Tone, error_message, forbidden_page, message_page, page, see_other, text, unavailable_page,
};
use super::session::{
    CookiePolicy, append_cookie, cookie_value, login_csrf, refuse_cross_site, session_csrf_ok, signed_in,
    tokens_match, well_formed_csrf_cookie,
};
use super::words::capitalised;
use crate::auth::Authenticated;
use crate::people::{self, SignInError};
use crate::state::AppState;

/// Bytes of randomness in the sign-in form's pre-session id (its CSRF cookie).
const CSRF_COOKIE_BYTES: usize = 32;

/// How long the sign-in form's CSRF cookie lives.
const CSRF_COOKIE_MAX_AGE_SECS: u64 = 3600;

/// Where a successful sign-in goes: one of a fixed list of our own pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    Device,
    Totp,
    Approvals,
}

impl Next {
    fn parse(raw: Option<&str>) -> Next {
        match raw {
            Some("totp") => Next::Totp,
            Some("approvals") => Next::Approvals,
            _ => Next::Device,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Next::Device => "device",
            Next::Totp => "totp",
            Next::Approvals => "approvals",
        }
    }
}

/// The signed-in person, or (as the response) the sign-in page `form` describes, which
/// comes back to where the person was going.
pub(super) async fn signed_in_or(
    state: &AppState,
    headers: &HeaderMap,
    form: SignInForm,
) -> Result<Authenticated, Response> {
    match signed_in(state, headers).await {
        Ok(Some(a)) => Ok(a),
        Ok(None) => Err(sign_in_page(state, headers, form)),
        Err(r) => Err(r),
    }
}

/// `POST /login`: check the password (and TOTP code), start a web session, go back.
pub(super) async fn sign_in(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Some(refused) = refuse_cross_site(&state, &headers) {
        return refused;
    }
    let form = match read_form(&state, &headers, body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    // SECURITY: login CSRF, checked before the password is even looked at: the token
    // must be the server's HMAC of the pre-session id in the cookie. A planted cookie
    // with a token of the planter's choosing fails.
    let policy = CookiePolicy::of(&state);
    let cookie = cookie_value(&headers, policy.csrf_name()).filter(|c| well_formed_csrf_cookie(c));
    let field = form.get(CSRF_FIELD).unwrap_or_default();
    if !cookie.is_some_and(|c| tokens_match(&login_csrf(&state, c), field)) {
        return forbidden_page(None);
    }
    let next = Next::parse(form.get("next"));
    let user_code = form.get("user_code").and_then(people::normalize_user_code);
    let raw_username = form.get("username").unwrap_or_default();
    let password = SecretString::from(form.get("password").unwrap_or_default().to_owned());
    let code = form.get("code").map(str::trim).filter(|c| !c.is_empty());
    let peer: Option<IpAddr> = peer.map(|Extension(ConnectInfo(a))| a.ip());
    let user = match people::sign_in(&state, peer, raw_username, password, code, "web").await {
        Ok(u) => u,
        Err(e) => {
            let status = match e {
                SignInError::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
                SignInError::Busy | SignInError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                SignInError::InvalidCredentials | SignInError::TotpRequired | SignInError::TotpInvalid => {
                    StatusCode::UNAUTHORIZED
                }
            };
            let message = capitalised(&e.message());
            let mut r = sign_in_page(
                &state,
                &headers,
                SignInForm {
                    next,
                    user_code,
                    username: people::normalize_username(raw_username),
                    message: Some(message),
                    totp_asked: matches!(e, SignInError::TotpRequired | SignInError::TotpInvalid),
                    status,
                },
            );
            if let SignInError::Throttled(secs) = e
                && let Ok(v) = HeaderValue::from_str(&secs.to_string())
            {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return r;
        }
    };
    let (_, cookie) = match people::start_web_session(&state, &user).await {
        Ok(s) => s,
        Err(_) => return unavailable_page(None),
    };
    let location = match (next, user_code) {
        (Next::Totp, _) => "totp".to_owned(),
        (Next::Approvals, _) => "approvals".to_owned(),
        (Next::Device, Some(code)) => format!("device?user_code={code}"),
        (Next::Device, None) => "device".to_owned(),
    };
    let max_age = state.settings.auth.web_session_lifetime.as_secs();
    let mut r = see_other(&location);
    append_cookie(&mut r, &policy.set(policy.session_name(), &cookie, max_age));
    r
}

/// `POST /logout`: end the web session and clear its cookie.
pub(super) async fn sign_out(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    if let Some(refused) = refuse_cross_site(&state, &headers) {
        return refused;
    }
    let form = match read_form(&state, &headers, body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let policy = CookiePolicy::of(&state);
    let signed_in = match signed_in(&state, &headers).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    if let Some(auth) = signed_in {
        if !session_csrf_ok(&state, &auth, &form) {
            return forbidden_page(Some(&Nav::of(&state, &auth)));
        }
        if people::end_session(&state, &auth, "logout").await.is_err() {
            return unavailable_page(Some(&Nav::of(&state, &auth)));
        }
    }
    let mut r = message_page(
        StatusCode::OK,
        "Signed out",
        None,
        Tone::Notice,
        "You are signed out of Airlock in this browser.",
    );
    append_cookie(&mut r, &policy.set(policy.session_name(), "", 0));
    r
}

/// What the sign-in form shows.
pub(super) struct SignInForm {
    pub(super) next: Next,
    /// A normalised user code, carried to the device page.
    pub(super) user_code: Option<String>,
    /// A normalised username to prefill (never the password).
    pub(super) username: Option<String>,
    pub(super) message: Option<String>,
    /// The password was right and a code is needed (or the code was wrong).
    pub(super) totp_asked: bool,
    pub(super) status: StatusCode,
}

impl Default for SignInForm {
    fn default() -> Self {
        SignInForm {
            next: Next::Device,
            user_code: None,
            username: None,
            message: None,
            totp_asked: false,
            status: StatusCode::OK,
        }
    }
}

fn sign_in_page(state: &AppState, headers: &HeaderMap, f: SignInForm) -> Response {
    let policy = CookiePolicy::of(state);
    // Reuse a well-formed pre-session cookie (several tabs keep working); otherwise make one.
    let existing = cookie_value(headers, policy.csrf_name()).filter(|c| well_formed_csrf_cookie(c));
    let (pre_session, fresh) = match existing {
        Some(c) => (c.to_owned(), false),
        None => {
            let mut bytes = [0u8; CSRF_COOKIE_BYTES];
            if crate::secrets::random_bytes(&mut bytes).is_err() {
                return unavailable_page(None);
            }
            (URL_SAFE_NO_PAD.encode(bytes), true)
        }
    };
    let token = login_csrf(state, &pre_session);
    let lead = match f.next {
        Next::Device => "Sign in to approve the sign-in your terminal asked for.",
        Next::Totp => "Sign in to set up your authenticator app.",
        Next::Approvals => {
            "Sign in to review requests for production or destructive access. \
             To approve, sign in with your authenticator code."
        }
    };
    let username = f.username.as_deref().unwrap_or_default();
    let code_hint = if f.totp_asked {
        "(required for your account)"
    } else {
        "(if you set one up)"
    };
    let body = html! {
        p { (text(lead)) }
        @if let Some(code) = &f.user_code {
            p { "Code from your terminal: " span class="code" { (text(code)) } }
        }
        @if let Some(m) = &f.message {
            (error_message(m))
        }
        form method="post" action="login" id="sign-in" {
            input type="hidden" name=(CSRF_FIELD) value=(text(&token));
            input type="hidden" name="next" value=(f.next.as_str());
            @if let Some(code) = &f.user_code {
                input type="hidden" name="user_code" value=(text(code));
            }
            label for="username" { "Username" }
            input type="text" id="username" name="username" value=(text(username)) autocomplete="username"
                autocapitalize="none" spellcheck="false" required autofocus[username.is_empty()];
            label for="password" { "Password" }
            input type="password" id="password" name="password" autocomplete="current-password" required
                autofocus[!username.is_empty()];
            label for="code" { "Authenticator code " span class="hint" { (code_hint) } }
            input type="text" id="code" name="code" inputmode="numeric" autocomplete="one-time-code"
                maxlength="8";
            button type="submit" id="sign-in-button" { "Sign in" }
        }
    };
    let mut r = page(f.status, "Sign in", None, body);
    if fresh {
        append_cookie(
            &mut r,
            &policy.set(policy.csrf_name(), &pre_session, CSRF_COOKIE_MAX_AGE_SECS),
        );
    }
    r
}
