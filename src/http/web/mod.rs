//! The web pages people use: sign-in, device approval (RFC 8628 section 3.3), TOTP
//! enrolment and the escalation approvals page ([`approvals`]). Rendered on the server,
//! with no JavaScript at all, plain enough for a phone.
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
//!   is a 403 before anything else happens.
//! - Every page has a strict Content-Security-Policy (no script, styles only from
//!   `/static/airlock.css`, images only from it or `data:`), `X-Frame-Options: DENY`,
//!   `Referrer-Policy: no-referrer` and `Cache-Control: no-store`.
//! - Every dynamic value is HTML-escaped; a password is never written into a page.
//! - Form bodies are bounded by `limits.max_body_bytes`, as on the token endpoint.
//! - Redirects go only to this module's own pages, named by a fixed list.

use std::net::{IpAddr, SocketAddr};

use axum::body::{Body, to_bytes};
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router, middleware};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::SecretString;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::app::AppState;
use crate::people::{self, Authenticated, DeviceError, ManageError, SessionError, SignInError};

mod approvals;

/// The only stylesheet (the CSP forbids inline styles).
const STYLESHEET: &str = include_str!("airlock.css");

/// Content-Security-Policy of every page: no script at all.
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

/// Name of the hidden CSRF field in every form that posts.
const CSRF_FIELD: &str = "csrf";

/// Bytes of randomness in the sign-in form's pre-session id (its CSRF cookie).
const CSRF_COOKIE_BYTES: usize = 32;

/// How long the sign-in form's CSRF cookie lives.
const CSRF_COOKIE_MAX_AGE_SECS: u64 = 3600;

/// Most fields a form may have (ours have at most six).
const MAX_FIELDS: usize = 16;

/// Web routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/device", get(show_device).post(decide_device))
        .route(
            "/approvals",
            get(approvals::show_approvals).post(approvals::decide_escalation),
        )
        .route("/login", get(|| async { see_other("device") }).post(sign_in))
        .route("/logout", post(sign_out))
        .route("/totp", get(show_totp).post(activate_totp))
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

// --- pages --------------------------------------------------------------------------

/// `GET /device[?user_code=...]`: sign in, then enter or confirm the code.
async fn show_device(
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

/// The signed-in person, or (as the response) the sign-in page `form` describes, which
/// comes back to where the person was going.
async fn signed_in_or(
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

/// What a person sees for a code that is not pending.
const UNKNOWN_CODE: &str = "That code is unknown, has expired or was already used. Check the code your \
                            terminal shows, or run `airlock login` again for a new one.";

/// `POST /device`: approve or deny a code.
async fn decide_device(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
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

/// Where a successful sign-in goes: one of a fixed list of our own pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
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

/// `POST /login`: check the password (and TOTP code), start a web session, go back.
async fn sign_in(
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
async fn sign_out(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
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

/// `GET /totp`: start enrolment and show the secret.
async fn show_totp(State(state): State<AppState>, headers: HeaderMap) -> Response {
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
async fn activate_totp(
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

// --- page bodies --------------------------------------------------------------------

/// What the sign-in form shows.
struct SignInForm {
    next: Next,
    /// A normalised user code, carried to the device page.
    user_code: Option<String>,
    /// A normalised username to prefill (never the password).
    username: Option<String>,
    message: Option<String>,
    /// The password was right and a code is needed (or the code was wrong).
    totp_asked: bool,
    status: StatusCode,
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
    let mut body = format!("<p>{}</p>\n", escape(lead));
    if let Some(code) = &f.user_code {
        body.push_str(&format!(
            "<p>Code from your terminal: <span class=\"code\">{}</span></p>\n",
            escape(code)
        ));
    }
    if let Some(m) = &f.message {
        body.push_str(&format!(
            "<p class=\"error\" id=\"message\" role=\"alert\">{}</p>\n",
            escape(m)
        ));
    }
    let username = f.username.as_deref().unwrap_or_default();
    let (focus_user, focus_password) = if username.is_empty() {
        (" autofocus", "")
    } else {
        ("", " autofocus")
    };
    let code_hint = if f.totp_asked {
        "(required for your account)"
    } else {
        "(if you set one up)"
    };
    body.push_str(&format!(
        r#"<form method="post" action="login" id="sign-in">
<input type="hidden" name="{CSRF_FIELD}" value="{token}">
<input type="hidden" name="next" value="{next}">
{carried}<label for="username">Username</label>
<input type="text" id="username" name="username" value="{username}" autocomplete="username" autocapitalize="none" spellcheck="false" required{focus_user}>
<label for="password">Password</label>
<input type="password" id="password" name="password" autocomplete="current-password" required{focus_password}>
<label for="code">Authenticator code <span class="hint">{code_hint}</span></label>
<input type="text" id="code" name="code" inputmode="numeric" autocomplete="one-time-code" maxlength="8">
<button type="submit" id="sign-in-button">Sign in</button>
</form>
"#,
        token = escape(&token),
        next = f.next.as_str(),
        carried = f
            .user_code
            .as_deref()
            .map(|c| format!(
                "<input type=\"hidden\" name=\"user_code\" value=\"{}\">\n",
                escape(c)
            ))
            .unwrap_or_default(),
        username = escape(username),
    ));
    let mut r = html(f.status, "Sign in", None, &body);
    if fresh {
        append_cookie(
            &mut r,
            &policy.set(policy.csrf_name(), &pre_session, CSRF_COOKIE_MAX_AGE_SECS),
        );
    }
    r
}

fn enter_code_page(nav: &Nav, status: StatusCode, message: Option<&str>, typed: &str) -> Response {
    let mut body = String::from("<p>Enter the code your terminal shows.</p>\n");
    if let Some(m) = message {
        body.push_str(&format!(
            "<p class=\"error\" id=\"message\" role=\"alert\">{}</p>\n",
            escape(m)
        ));
    }
    let typed: String = typed.chars().take(32).collect();
    body.push_str(&format!(
        r#"<form method="get" action="device" id="enter-code">
<label for="user_code">Code</label>
<input type="text" id="user_code" name="user_code" value="{}" autocomplete="off" autocapitalize="characters" spellcheck="false" maxlength="32" required autofocus>
<button type="submit">Continue</button>
</form>
"#,
        escape(&typed)
    ));
    html(status, "Approve a sign-in", Some(nav), &body)
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
            .is_ok_and(|c| people::address_group(c) == people::address_group(browser)),
        _ => false,
    };
    let warning = if same_place {
        String::new()
    } else {
        format!(
            "<p class=\"error\" id=\"elsewhere\" role=\"alert\">This request came from a \
             different address than this browser ({browser}). If you did not start \
             <code>airlock login</code> on that machine yourself, deny: someone may be trying \
             to get you to sign them in.</p>\n",
            browser = escape(&browser.map(|b| b.to_string()).unwrap_or_else(|| "unknown".into())),
        )
    };
    let body = format!(
        r#"<p id="request">A terminal is asking to sign in as <strong>{user}</strong>.</p>
<p>Code: <span class="code" id="user-code">{code}</span></p>
<p id="origin">Requested {when} from <strong>{from}</strong> by <strong id="user-agent">{program}</strong>.</p>
{warning}<p>Only approve if this is the code your terminal shows. If you did not just run
<code>airlock login</code>, deny. Approver and admin rights in that terminal need
<code>airlock step-up</code> with your authenticator there.</p>
<form method="post" action="device" class="decide" id="decide">
<input type="hidden" name="{CSRF_FIELD}" value="{csrf}">
<input type="hidden" name="user_code" value="{code}">
<button type="submit" name="decision" value="approve" class="approve" id="approve">Approve</button>
<button type="submit" name="decision" value="deny" class="deny" id="deny">Deny</button>
</form>
"#,
        user = escape(&nav.username),
        code = escape(user_code),
        csrf = escape(&nav.csrf),
        when = escape(&when),
        from = escape(from),
        program = escape(program),
    );
    html(StatusCode::OK, "Approve a sign-in", Some(nav), &body)
}

fn totp_page(
    nav: &Nav,
    enrolment: Option<&people::TotpEnrolment>,
    status: StatusCode,
    message: Option<&str>,
) -> Response {
    let mut body = String::new();
    if let Some(e) = enrolment {
        body.push_str(
            "<p>Scan this QR code with your authenticator app, or type the key into it by hand.</p>\n",
        );
        let qr = crate::totp::qr_svg_data_url(&e.otpauth_uri);
        if !qr.is_empty() {
            body.push_str(&format!(
                "<img class=\"qr\" id=\"qr\" src=\"{}\" alt=\"QR code holding your authenticator key\" \
                 width=\"240\" height=\"240\">\n",
                escape(&qr)
            ));
        }
        body.push_str(&format!(
            "<p>Key: <span class=\"secret\" id=\"totp-secret\">{}</span></p>\n",
            escape(&group(&e.secret, 4))
        ));
    } else {
        body.push_str(
            "<p>Enter the current code from the authenticator app you just set up. \
             To start over with a new key, <a href=\"totp\">reload this page</a>.</p>\n",
        );
    }
    if let Some(m) = message {
        body.push_str(&format!(
            "<p class=\"error\" id=\"message\" role=\"alert\">{}</p>\n",
            escape(&capitalised(m))
        ));
    }
    body.push_str(&format!(
        r#"<form method="post" action="totp" id="activate">
<input type="hidden" name="{CSRF_FIELD}" value="{csrf}">
<label for="code">Code from the app</label>
<input type="text" id="code" name="code" inputmode="numeric" autocomplete="one-time-code" maxlength="8" required>
<button type="submit">Turn on</button>
</form>
"#,
        csrf = escape(&nav.csrf)
    ));
    html(status, "Set up your authenticator app", Some(nav), &body)
}

fn already_enrolled_page(nav: &Nav) -> Response {
    let text = format!(
        "Your authenticator app is already set up. To replace it, ask an admin to reset it \
         (`airlock user reset {} --totp`).",
        nav.username
    );
    message_page(
        StatusCode::OK,
        "Authenticator app already set up",
        Some(nav),
        Tone::Notice,
        &text,
    )
}

fn forbidden_page(nav: Option<&Nav>) -> Response {
    message_page(
        StatusCode::FORBIDDEN,
        "Form expired",
        nav,
        Tone::Error,
        "This form has expired or did not come from Airlock, so nothing was done. \
         Go back, reload the page and try again.",
    )
}

/// The answer to a form posted from another site or origin.
fn cross_site_page() -> Response {
    message_page(
        StatusCode::FORBIDDEN,
        "Refused: form from another site",
        None,
        Tone::Error,
        "This form was sent from a page that is not Airlock's own, so nothing was done. \
         If you meant to do this, open Airlock's page yourself and use the form there.",
    )
}

fn unavailable_page(nav: Option<&Nav>) -> Response {
    let mut r = message_page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Try again shortly",
        nav,
        Tone::Error,
        "Airlock cannot record this right now, so nothing was done. Try again in a few seconds.",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

#[derive(Clone, Copy)]
enum Tone {
    Notice,
    Error,
}

fn message_page(status: StatusCode, title: &str, nav: Option<&Nav>, tone: Tone, text: &str) -> Response {
    let class = match tone {
        Tone::Notice => "notice",
        Tone::Error => "error",
    };
    let body = format!(
        "<p class=\"{class}\" id=\"result\" role=\"status\">{}</p>\n",
        escape(text)
    );
    html(status, title, nav, &body)
}

/// The signed-in person, as the header shows them (with the sign-out form's token).
struct Nav {
    username: String,
    csrf: String,
}

impl Nav {
    fn of(state: &AppState, auth: &Authenticated) -> Nav {
        Nav {
            username: auth.user.username.clone(),
            csrf: session_csrf(state, auth),
        }
    }
}

/// A whole HTML document. Links are relative, so the pages also work behind a proxy
/// that serves Airlock under a path prefix.
fn html(status: StatusCode, title: &str, nav: Option<&Nav>, body: &str) -> Response {
    document(status, title, nav, body, false)
}

/// [`html`], with room for a list (`wide`) or a single narrow form.
fn document(status: StatusCode, title: &str, nav: Option<&Nav>, body: &str, wide: bool) -> Response {
    let main = if wide { "<main class=\"wide\">" } else { "<main>" };
    let header_right = match nav {
        Some(n) => format!(
            r#"<form method="post" action="logout" id="sign-out">
<input type="hidden" name="{CSRF_FIELD}" value="{}">
<span class="who" id="who">{}</span>
<button type="submit">Sign out</button>
</form>"#,
            escape(&n.csrf),
            escape(&n.username)
        ),
        None => String::new(),
    };
    let doc = format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{title} · Airlock</title>
<link rel="stylesheet" href="static/airlock.css">
</head>
<body>
<header><span class="brand">Airlock</span>{header_right}</header>
{main}
<h1>{title}</h1>
{body}</main>
</body>
</html>
"#,
        title = escape(title),
    );
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], doc).into_response()
}

fn see_other(location: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

// --- sessions, cookies and CSRF -----------------------------------------------------

/// The person signed in by this request's cookie; `Err` is the page to answer with.
async fn signed_in(state: &AppState, headers: &HeaderMap) -> Result<Option<Authenticated>, Response> {
    let policy = CookiePolicy::of(state);
    let Some(cookie) = cookie_value(headers, policy.session_name()) else {
        return Ok(None);
    };
    match people::authenticate_web(state, cookie).await {
        Ok(a) => Ok(Some(a)),
        Err(SessionError::Invalid) => Ok(None),
        Err(SessionError::Unavailable) => Err(unavailable_page(None)),
    }
}

/// Cookie attributes, fixed by `public_url`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CookiePolicy {
    secure: bool,
}

impl CookiePolicy {
    fn of(state: &AppState) -> CookiePolicy {
        CookiePolicy {
            secure: !plain_http_on_loopback(&state.settings.public_url),
        }
    }

    fn session_name(self) -> &'static str {
        if self.secure {
            "__Host-airlock"
        } else {
            "airlock_web"
        }
    }

    fn csrf_name(self) -> &'static str {
        // SECURITY: `__Host-` also here, so a sibling subdomain cannot plant the cookie
        // half of the double submit.
        if self.secure {
            "__Host-airlock_csrf"
        } else {
            "airlock_csrf"
        }
    }

    /// The one-shot message the approvals page shows after a POST.
    fn flash_name(self) -> &'static str {
        if self.secure {
            "__Host-airlock_flash"
        } else {
            "airlock_flash"
        }
    }

    /// A `Set-Cookie` value; `max_age` 0 clears the cookie.
    fn set(self, name: &str, value: &str, max_age: u64) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!("{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}")
    }
}

/// Whether `public_url` is `http://` on a loopback host: the only case where cookies
/// go without `Secure` (a browser would not send a Secure cookie over plain HTTP).
fn plain_http_on_loopback(public_url: &str) -> bool {
    let Ok(url) = url::Url::parse(public_url) else {
        return false;
    };
    url.scheme() == "http"
        && match url.host() {
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        }
}

fn append_cookie(response: &mut Response, cookie: &str) {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// The first cookie called `name` in the request.
fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// The page to answer with when the browser says this POST was sent from another site
/// or origin; `None` when it may go on to the CSRF token check.
fn refuse_cross_site(state: &AppState, headers: &HeaderMap) -> Option<Response> {
    if !posted_from_elsewhere(&state.settings.public_url, headers) {
        return None;
    }
    // No header values in the log: they are the sender's to choose.
    tracing::info!("refused a form posted from another site or origin");
    Some(cross_site_page())
}

/// SECURITY: whether the browser says a POST comes from a page that is not ours.
/// Browsers set `Sec-Fetch-Site` and `Origin` themselves; a page cannot forge them.
/// - `Sec-Fetch-Site`: only `same-origin` (our own page) or `none` (the person's own
///   action, such as a bookmark) pass. `same-site` is refused too: another port on the
///   same loopback host is same-site, and that is exactly who could plant cookies.
/// - `Origin`: must be `public_url`'s origin. Our pages send `Referrer-Policy:
///   no-referrer`, under which browsers send `Origin: null` on their own form posts
///   (Fetch standard, "append a request `Origin` header"), so `null` passes only when
///   `Sec-Fetch-Site` vouches for the request.
/// - Neither header (not a browser): not refused here; the CSRF token still decides.
fn posted_from_elsewhere(public_url: &str, headers: &HeaderMap) -> bool {
    let fetch_site = match headers.get("sec-fetch-site") {
        None => None,
        Some(v) => match v.to_str().map(str::to_ascii_lowercase).as_deref() {
            Ok("same-origin") => Some(true),
            Ok("none") => Some(true),
            _ => return true,
        },
    };
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    let Ok(origin) = origin.to_str() else {
        return true;
    };
    if origin.trim() == "null" {
        return fetch_site.is_none();
    }
    let own = url::Url::parse(public_url).map(|u| u.origin());
    let sent = url::Url::parse(origin.trim()).map(|u| u.origin());
    match (own, sent) {
        (Ok(own), Ok(sent)) => !own.is_tuple() || own != sent,
        _ => true,
    }
}

/// The sign-in form's CSRF token: HMAC-SHA256 of the pre-session id (the cookie) under
/// a key derived from the master key, so only this server can mint a matching pair.
fn login_csrf(state: &AppState, pre_session: &str) -> String {
    hex::encode(state.hasher.hash("login-csrf", pre_session))
}

/// A CSRF cookie we could have set: 32 random bytes, URL-safe base64.
fn well_formed_csrf_cookie(value: &str) -> bool {
    value.len() == 43
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The CSRF token of a signed-in person's forms: HMAC-SHA256 of the web session id
/// under a key derived from the master key. Unforgeable without the key, and it dies
/// with the session.
fn session_csrf(state: &AppState, auth: &Authenticated) -> String {
    hex::encode(state.hasher.hash("csrf", &auth.session.id.to_string()))
}

fn session_csrf_ok(state: &AppState, auth: &Authenticated, form: &Form) -> bool {
    let presented = form.get(CSRF_FIELD).unwrap_or_default();
    tokens_match(&session_csrf(state, auth), presented)
}

/// Constant-time equality of two tokens; an empty token never matches.
fn tokens_match(expected: &str, presented: &str) -> bool {
    !expected.is_empty() && bool::from(expected.as_bytes().ct_eq(presented.as_bytes()))
}

// --- forms --------------------------------------------------------------------------

/// A parsed form body. Values are wiped from memory when it is dropped (one of them
/// is a password).
struct Form {
    fields: Vec<(String, Zeroizing<String>)>,
}

impl Form {
    fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Read a bounded `application/x-www-form-urlencoded` body; `Err` is the page to answer.
async fn read_form(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Form, Response> {
    let form_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"));
    if !form_type {
        return Err(message_page(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Unexpected form",
            None,
            Tone::Error,
            "This page takes an HTML form. Go back and submit the form again.",
        ));
    }
    let limit = state.settings.limits.max_body_bytes;
    let bytes = to_bytes(body, limit).await.map_err(|_| {
        message_page(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Form too large",
            None,
            Tone::Error,
            "The form was larger than Airlock accepts. Go back and try again.",
        )
    })?;
    let mut fields: Vec<(String, Zeroizing<String>)> = Vec::new();
    for (key, value) in url::form_urlencoded::parse(&bytes) {
        if fields.len() >= MAX_FIELDS || fields.iter().any(|(k, _)| *k == key) {
            return Err(message_page(
                StatusCode::BAD_REQUEST,
                "Unexpected form",
                None,
                Tone::Error,
                "The form had repeated or unexpected fields. Go back, reload the page and try again.",
            ));
        }
        fields.push((key.into_owned(), Zeroizing::new(value.into_owned())));
    }
    Ok(Form { fields })
}

// --- text ---------------------------------------------------------------------------

/// HTML-escape text for element content and quoted attribute values.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `ABCDEFGH` as `ABCD EFGH`: a key is easier to type in groups.
fn group(s: &str, n: usize) -> String {
    let chars: Vec<char> = s.chars().collect();
    chars
        .chunks(n)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join(" ")
}

fn capitalised(s: &str) -> String {
    let mut out = s.to_owned();
    if let Some(first) = out.get_mut(0..1) {
        first.make_ascii_uppercase();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_both_quotes() {
        assert_eq!(
            escape(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
        assert_eq!(escape("BCDF-GHJK"), "BCDF-GHJK");
    }

    #[test]
    fn secure_cookies_are_relaxed_only_for_plain_http_on_loopback() {
        for url in [
            "http://127.0.0.1:8080",
            "http://localhost:8080",
            "http://[::1]:8080",
        ] {
            assert!(plain_http_on_loopback(url), "{url}");
        }
        for url in [
            "https://127.0.0.1:8080",
            "https://airlock.example.com",
            "http://airlock.example.com",
            "http://10.0.0.5:8080",
            "http://localhost.example.com",
            "not a url",
        ] {
            assert!(!plain_http_on_loopback(url), "{url}");
        }
        let secure = CookiePolicy { secure: true };
        assert_eq!(secure.session_name(), "__Host-airlock");
        assert_eq!(
            secure.set("__Host-airlock", "v", 900),
            "__Host-airlock=v; Path=/; Max-Age=900; HttpOnly; SameSite=Strict; Secure"
        );
        let local = CookiePolicy { secure: false };
        assert_eq!(local.session_name(), "airlock_web");
        assert!(!local.set("airlock_web", "v", 900).contains("Secure"));
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("airlock_web_x=no; airlock_web=yes; other=1"),
        );
        assert_eq!(cookie_value(&h, "airlock_web"), Some("yes"));
        assert_eq!(cookie_value(&h, "airlock"), None);
    }

    #[test]
    fn tokens_compare_exactly_and_empty_never_matches() {
        assert!(tokens_match("abc", "abc"));
        assert!(!tokens_match("abc", "abd"));
        assert!(!tokens_match("abc", "ab"));
        assert!(!tokens_match("", ""));
    }

    #[test]
    fn posts_from_another_site_or_origin_are_recognised() {
        let own = "http://127.0.0.1:8080";
        let posted = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            posted_from_elsewhere(own, &h)
        };
        // Not a browser, or our own page.
        assert!(!posted(&[]));
        assert!(!posted(&[("sec-fetch-site", "same-origin")]));
        assert!(!posted(&[("sec-fetch-site", "none")]));
        assert!(!posted(&[("origin", "http://127.0.0.1:8080")]));
        assert!(!posted(&[("sec-fetch-site", "same-origin"), ("origin", "null")]));
        // Another site, another port of the same host, or an origin we cannot vouch for.
        assert!(posted(&[("sec-fetch-site", "cross-site")]));
        assert!(posted(&[("sec-fetch-site", "same-site")]));
        assert!(posted(&[("sec-fetch-site", "something-new")]));
        assert!(posted(&[("origin", "http://127.0.0.1:9999")]));
        assert!(posted(&[("origin", "https://127.0.0.1:8080")]));
        assert!(posted(&[("origin", "http://localhost.evil.example")]));
        assert!(posted(&[("origin", "null")]));
        assert!(posted(&[("origin", "not a url")]));
        assert!(posted(&[
            ("sec-fetch-site", "same-origin"),
            ("origin", "http://evil.example")
        ]));
        // A public_url with a path still has the scheme, host and port as its origin.
        let mut h = HeaderMap::new();
        h.insert("origin", HeaderValue::from_static("https://airlock.example.com"));
        assert!(!posted_from_elsewhere("https://airlock.example.com/airlock", &h));
    }

    #[test]
    fn keys_are_grouped_for_typing() {
        assert_eq!(group("ABCDEFGHIJ", 4), "ABCD EFGH IJ");
    }
}
