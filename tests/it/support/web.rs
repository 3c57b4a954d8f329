//! The web pages as a browser without JavaScript uses them: cookies, hidden fields, the
//! sign-in form and the approvals page.

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, SET_COOKIE};

use super::app::TestApp;

/// The `Set-Cookie` header that sets cookie `name`, if any.
pub fn set_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_string)
}

/// `name=value` of a `Set-Cookie` header, as a browser sends it back.
pub fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap_or_default().to_string()
}

/// The value of a hidden field `name` in a page.
pub fn hidden(page: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = page
        .find(&marker)
        .unwrap_or_else(|| panic!("no field {name} in:\n{page}"))
        + marker.len();
    page[start..].split('"').next().unwrap_or_default().to_string()
}

/// The sign-in form of `/approvals` as a fresh browser gets it: the pre-session cookie
/// (`name=value`) and the form's CSRF token.
pub async fn sign_in_form(app: &TestApp) -> (String, String) {
    let r = app.client.get(app.url("/approvals")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let cookie = cookie_pair(&set_cookie(r.headers(), "airlock_csrf").expect("a pre-session cookie"));
    let token = hidden(&r.text().await.unwrap(), "csrf");
    (cookie, token)
}

/// `POST /login` with a pre-session cookie, a token and extra headers.
pub async fn post_sign_in(
    app: &TestApp,
    cookie: &str,
    token: &str,
    username: &str,
    password: &str,
    code: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = app
        .client
        .post(app.url("/login"))
        .header("cookie", cookie)
        .form(&[
            ("csrf", token),
            ("next", "approvals"),
            ("username", username),
            ("password", password),
            ("code", code),
        ]);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

/// Sign `username` in on the web as a browser would; their session cookie (`name=value`).
pub async fn web_session(app: &TestApp, username: &str, password: &str, code: &str) -> String {
    let (cookie, token) = sign_in_form(app).await;
    let r = post_sign_in(app, &cookie, &token, username, password, code, &[]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "web sign-in of {username}");
    cookie_pair(&set_cookie(r.headers(), "airlock_web").expect("a session cookie"))
}

/// `GET /approvals` with `cookies` (`name=value; ...`), which must answer 200.
pub async fn get_approvals(app: &TestApp, cookies: &str) -> reqwest::Response {
    let r = app
        .client
        .get(app.url("/approvals"))
        .header("cookie", cookies)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r
}

/// The approvals page for a session, and its CSRF token.
pub async fn approvals_page(app: &TestApp, session: &str) -> (String, String) {
    let page = get_approvals(app, session).await.text().await.unwrap();
    let token = hidden(&page, "csrf");
    (page, token)
}
