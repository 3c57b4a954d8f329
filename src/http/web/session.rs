//! Who is signed in (the session cookie), the cookies' attributes, and the two checks
//! every POST passes before its form is used: not sent from another site or origin, and
//! carrying the right CSRF token.

use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use subtle::ConstantTimeEq;

use super::CSRF_FIELD;
use super::form::Form;
use super::layout::{cross_site_page, unavailable_page};
use crate::auth::{self, Authenticated, SessionError};
use crate::state::AppState;

/// The person signed in by this request's cookie; `Err` is the page to answer with.
pub(super) async fn signed_in(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<Authenticated>, Response> {
    let policy = CookiePolicy::of(state);
    let Some(cookie) = cookie_value(headers, policy.session_name()) else {
        return Ok(None);
    };
    match auth::authenticate_web(state, cookie).await {
        Ok(a) => Ok(Some(a)),
        Err(SessionError::Invalid) => Ok(None),
        Err(SessionError::Unavailable) => Err(unavailable_page(None)),
    }
}

/// Cookie attributes, fixed by `public_url`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CookiePolicy {
    secure: bool,
}

impl CookiePolicy {
    pub(super) fn of(state: &AppState) -> CookiePolicy {
        CookiePolicy {
            secure: !plain_http_on_loopback(&state.settings.public_url),
        }
    }

    pub(super) fn session_name(self) -> &'static str {
        if self.secure {
            "__Host-airlock"
        } else {
            "airlock_web"
        }
    }

    pub(super) fn csrf_name(self) -> &'static str {
        // SECURITY: `__Host-` also here, so a sibling subdomain cannot plant the cookie
        // half of the double submit.
        if self.secure {
            "__Host-airlock_csrf"
        } else {
            "airlock_csrf"
        }
    }

    /// The one-shot message the approvals page shows after a POST.
    pub(super) fn flash_name(self) -> &'static str {
        if self.secure {
            "__Host-airlock_flash"
        } else {
            "airlock_flash"
        }
    }

    /// A `Set-Cookie` value; `max_age` 0 clears the cookie.
    pub(super) fn set(self, name: &str, value: &str, max_age: u64) -> String {
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

pub(super) fn append_cookie(response: &mut Response, cookie: &str) {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// The first cookie called `name` in the request.
pub(super) fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
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
pub(super) fn refuse_cross_site(state: &AppState, headers: &HeaderMap) -> Option<Response> {
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
pub(super) fn login_csrf(state: &AppState, pre_session: &str) -> String {
    hex::encode(state.hasher.hash("login-csrf", pre_session))
}

/// A CSRF cookie we could have set: 32 random bytes, URL-safe base64.
pub(super) fn well_formed_csrf_cookie(value: &str) -> bool {
    value.len() == 43
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The CSRF token of a signed-in person's forms: HMAC-SHA256 of the web session id
/// under a key derived from the master key. Unforgeable without the key, and it dies
/// with the session.
pub(super) fn session_csrf(state: &AppState, auth: &Authenticated) -> String {
    hex::encode(state.hasher.hash("csrf", &auth.session.id.to_string()))
}

pub(super) fn session_csrf_ok(state: &AppState, auth: &Authenticated, form: &Form) -> bool {
    let presented = form.get(CSRF_FIELD).unwrap_or_default();
    tokens_match(&session_csrf(state, auth), presented)
}

/// Constant-time equality of two tokens; an empty token never matches.
pub(super) fn tokens_match(expected: &str, presented: &str) -> bool {
    !expected.is_empty() && bool::from(expected.as_bytes().ct_eq(presented.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
