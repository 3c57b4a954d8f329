//! The web pages: sign-in, device approval, TOTP enrolment and the escalation approvals
//! page, in a real headless Chromium driven over WebDriver (fantoccini + Debian's
//! `chromedriver`), and their security measures (headers, cookies, CSRF) checked at the
//! HTTP level with reqwest.
//!
//! Browser tests are skipped with a notice when `/usr/bin/chromedriver` is missing,
//! unless `AIRLOCK_REQUIRE_BROWSER=1` (CI) turns the skip into a failure. Set
//! `AIRLOCK_SCREENSHOT_DIR` to save a screenshot of the device approval page.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use airlock::people;
use data_encoding::BASE32_NOPAD;
use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::support::{
    self, Backend, PASSWORD, Terminal, TestApp, code_now, cookie_pair, developer, device_authorization,
    device_poll, enrolled, free_port, get_approvals, hidden, person, session_token, set_cookie, spawn_app,
    spawn_app_with, status_and_json, wrong_code,
};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// Longest wait for a page element; pages answer in milliseconds.
const WAIT: Duration = Duration::from_secs(15);
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

crate::both_backends!(
    the_device_flow_signs_in_with_password_and_totp_in_a_real_browser,
    a_device_request_from_another_address_is_flagged_with_its_program,
    airlock_login_is_approved_in_the_browser_and_then_mints_a_staging_token,
    denying_in_the_browser_makes_the_terminal_get_access_denied,
    a_wrong_password_or_totp_code_shows_an_error_and_signs_nobody_in,
    enrolling_totp_on_the_web_page_turns_it_on,
    pages_send_strict_headers_and_cookies_and_refuse_posts_without_csrf,
    cookies_are_secure_and_host_prefixed_unless_public_url_is_plain_http_on_loopback,
    a_throttled_sign_in_says_when_to_retry_and_oversized_forms_are_refused,
    carol_approves_bobs_prod_request_in_the_browser_and_his_waiting_cli_returns,
    who_may_not_approve_sees_why_and_an_approver_denies_with_a_reason,
    the_approvals_page_checks_csrf_escapes_text_and_redirects_after_each_decision,
);

// --- the browser ----------------------------------------------------------------------

fn require_browser() -> bool {
    std::env::var("AIRLOCK_REQUIRE_BROWSER").is_ok_and(|v| v == "1" || v == "true")
}

/// Chromium under a chromedriver of our own, in a process group of our own.
struct Browser {
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// A fresh browser with an empty profile; `None` (skip) without chromedriver.
    async fn start() -> Option<Browser> {
        if !Path::new(CHROMEDRIVER).exists() {
            if require_browser() {
                panic!(
                    "AIRLOCK_REQUIRE_BROWSER=1 but {CHROMEDRIVER} is missing: apt-get install chromium chromium-driver"
                );
            }
            eprintln!(
                "notice: skipping a browser test: install chromium and chromium-driver to run it \
                 (AIRLOCK_REQUIRE_BROWSER=1 makes this a failure)"
            );
            return None;
        }
        let profile = tempfile::tempdir().expect("profile dir");
        let caps = json!({
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                // The machine has no internet; without these Chromium stalls on start-up.
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                    "--window-size=412,915",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }
        });
        let caps = caps.as_object().expect("object").clone();
        // reqwest and fantoccini's hyper-rustls between them enable both of rustls's
        // providers, so rustls cannot pick one by itself.
        let _ = rustls::crypto::ring::default_provider().install_default();
        // The free port can be taken between probing and chromedriver binding it: retry.
        for _ in 0..3 {
            let port = free_port();
            let mut driver = Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .kill_on_drop(true)
                .spawn()
                .expect("chromedriver starts");
            let url = format!("http://127.0.0.1:{port}");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let attempt = ClientBuilder::rustls()
                    .expect("rustls")
                    .capabilities(caps.clone())
                    .connect(&url)
                    .await;
                match attempt {
                    Ok(client) => {
                        return Some(Browser {
                            client,
                            driver,
                            _profile: profile,
                        });
                    }
                    Err(_) if driver.try_wait().ok().flatten().is_some() => break,
                    Err(e) if Instant::now() > deadline => {
                        panic!("chromedriver did not start a browser: {e}")
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
        panic!("chromedriver exited three times; is a port free?");
    }

    /// Quit the browser, then make sure nothing of the driver's group is left.
    async fn close(mut self) {
        let _ = self.client.clone().close().await;
        self.kill_group();
        let _ = self.driver.wait().await;
    }

    fn kill_group(&self) {
        // The group was created for this driver (`process_group(0)`), so its id is the
        // driver's pid; Chromium's processes are in it too.
        if let Some(pid) = self.driver.id() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A failed test never leaves a browser behind.
        self.kill_group();
    }
}

async fn element(c: &Client, css: &str) -> fantoccini::elements::Element {
    c.wait()
        .at_most(WAIT)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no element {css}: {e}"))
}

async fn fill(c: &Client, css: &str, text: &str) {
    let e = element(c, css).await;
    e.clear().await.expect("clear");
    e.send_keys(text).await.expect("type");
}

async fn click(c: &Client, css: &str) {
    element(c, css).await.click().await.expect("click");
}

async fn text_of(c: &Client, css: &str) -> String {
    element(c, css).await.text().await.expect("text")
}

async fn value_of(c: &Client, css: &str) -> String {
    element(c, css)
        .await
        .prop("value")
        .await
        .expect("value")
        .unwrap_or_default()
}

/// Wait until the element's text contains `needle` (the page after a submit).
async fn wait_for_text(c: &Client, css: &str, needle: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(e) = c.find(Locator::Css(css)).await
            && let Ok(t) = e.text().await
            && t.contains(needle)
        {
            return t;
        }
        if Instant::now() > deadline {
            let source = c.source().await.unwrap_or_default();
            panic!("{css} never said {needle:?}; the page is:\n{source}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Fill and submit the sign-in form.
async fn sign_in(c: &Client, username: &str, password: &str, code: Option<&str>) {
    fill(c, "#username", username).await;
    fill(c, "#password", password).await;
    fill(c, "#code", code.unwrap_or_default()).await;
    click(c, "#sign-in-button").await;
}

async fn cookie_names(c: &Client) -> Vec<String> {
    c.get_all_cookies()
        .await
        .expect("cookies")
        .iter()
        .map(|k| k.name().to_string())
        .collect()
}

async fn maybe_screenshot(c: &Client, name: &str) {
    if let Ok(dir) = std::env::var("AIRLOCK_SCREENSHOT_DIR") {
        let png = c.screenshot().await.expect("screenshot");
        std::fs::write(Path::new(&dir).join(format!("{name}.png")), png).expect("write screenshot");
    }
}

// --- people and the device flow -------------------------------------------------------

/// `POST /oauth/device_authorization` as the CLI does it.
async fn start_device_flow(app: &TestApp) -> Value {
    let r = device_authorization(app, airlock::domain::CLI_CLIENT_ID).await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.expect("json")
}

/// One poll of `/oauth/token` with the device code.
async fn poll(app: &TestApp, device_code: &str) -> (StatusCode, Value) {
    status_and_json(device_poll(app, device_code).await).await
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("no {key} in {v}"))
}

// --- the tests --------------------------------------------------------------------------

async fn the_device_flow_signs_in_with_password_and_totp_in_a_real_browser(backend: Backend) {
    // Arrange
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let Some(browser) = Browser::start().await else {
        return;
    };
    let c = &browser.client;
    let mut alice = enrolled(&app, "alice", &["developer"]).await;
    let device = start_device_flow(&app).await;
    let device_code = str_of(&device, "device_code");
    let user_code = str_of(&device, "user_code");
    let (_, pending) = poll(&app, device_code).await;
    assert_eq!(pending["error"], "authorization_pending");

    // Act: open the link the terminal shows, sign in with password and TOTP, approve.
    c.goto(str_of(&device, "verification_uri_complete"))
        .await
        .expect("open page");
    let code = alice.fresh_code().await;
    sign_in(c, alice.name(), PASSWORD, Some(&code)).await;
    let request = text_of(c, "#request").await;
    assert_eq!(request, "A terminal is asking to sign in as alice.");
    assert_eq!(text_of(c, "#user-code").await, user_code);
    // Where and when the request came from (RFC 8628 section 5.4).
    let origin = text_of(c, "#origin").await;
    assert!(
        origin.starts_with("Requested ") && origin.contains("from 127.0.0.1"),
        "{origin}"
    );
    assert_eq!(
        text_of(c, "#user-agent").await,
        "a program that did not say what it is"
    );
    assert!(!present(c, "#elsewhere").await, "same address: no warning");
    maybe_screenshot(c, &format!("device-approval-{backend:?}").to_lowercase()).await;
    click(c, "#approve").await;
    let result = wait_for_text(c, "#result", "Approved").await;

    // Assert
    assert_eq!(result, "Approved: return to your terminal.");
    let (status, tokens) = poll(&app, device_code).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    assert!(!str_of(&tokens, "access_token").is_empty());
    assert!(str_of(&tokens, "refresh_token").starts_with("airlock_refresh_"));
    assert_eq!(tokens["username"], "alice");
    browser.close().await;
}

async fn a_device_request_from_another_address_is_flagged_with_its_program(backend: Backend) {
    // Arrange: a program at another address starts a login (device-code phishing,
    // RFC 8628 section 5.4) and alice opens its link.
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let Some(browser) = Browser::start().await else {
        return;
    };
    let c = &browser.client;
    let mut alice = enrolled(&app, "alice", &["developer"]).await;
    let elsewhere = reqwest::Client::builder()
        .local_address("127.0.0.7".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let r = elsewhere
        .post(app.url("/oauth/device_authorization"))
        .header("user-agent", "helpful-agent/1.0 \u{202e}(trusted)")
        .form(&[("client_id", airlock::domain::CLI_CLIENT_ID)])
        .send()
        .await
        .expect("device authorization");
    let device: Value = r.json().await.expect("json");

    // Act
    c.goto(str_of(&device, "verification_uri_complete"))
        .await
        .expect("open page");
    let code = alice.fresh_code().await;
    sign_in(c, alice.name(), PASSWORD, Some(&code)).await;

    // Assert: the page names the program (cleaned) and the other address, and warns.
    let origin = text_of(c, "#origin").await;
    assert!(origin.contains("from 127.0.0.7"), "{origin}");
    assert_eq!(text_of(c, "#user-agent").await, "helpful-agent/1.0 (trusted)");
    let warning = text_of(c, "#elsewhere").await;
    assert!(
        warning.contains("different address than this browser (127.0.0.1)"),
        "{warning}"
    );
    maybe_screenshot(c, &format!("device-elsewhere-{backend:?}").to_lowercase()).await;
    browser.close().await;
}

async fn airlock_login_is_approved_in_the_browser_and_then_mints_a_staging_token(backend: Backend) {
    // Arrange: a server that lets the CLI poll every second.
    let Some(app) = spawn_app_with(backend, |s| {
        s.auth.device_poll_interval = Duration::from_secs(1);
    })
    .await
    else {
        return;
    };
    let Some(browser) = Browser::start().await else {
        return;
    };
    let c = &browser.client;
    let mut alice = enrolled(&app, "alice", &["developer"]).await;
    let t = Terminal::without_server();

    // Act: `airlock login` prints the page to open; the browser signs in and approves.
    let login = t.spawn(&["login", "--server", &app.base]);
    let line = login.stderr_line("/device?user_code=", WAIT).await;
    let url = line
        .split_whitespace()
        .find(|w| w.contains("/device?user_code="))
        .expect("a verification URL")
        .to_string();
    c.goto(&url).await.expect("open page");
    let code = alice.fresh_code().await;
    sign_in(c, alice.name(), PASSWORD, Some(&code)).await;
    click(c, "#approve").await;
    wait_for_text(c, "#result", "Approved").await;
    let login = login.finish_within(Duration::from_secs(60)).await;
    let (status, stdout, stderr) = (login.status, login.stdout, login.stderr);

    // Assert: logged in, and the session mints a staging token.
    assert!(status.success(), "airlock login failed: {stdout}\n{stderr}");
    let token = t
        .run(&["token", "--env", "staging", "--scope", "db:read"], "")
        .await;
    let out = &token.stdout;
    assert!(
        token.status.success(),
        "airlock token failed: {out}\n{}",
        token.stderr
    );
    let jwt = out.trim();
    assert_eq!(jwt.split('.').count(), 3, "not a JWT: {jwt}");
    browser.close().await;
}

async fn denying_in_the_browser_makes_the_terminal_get_access_denied(backend: Backend) {
    // Arrange
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let Some(browser) = Browser::start().await else {
        return;
    };
    let c = &browser.client;
    let bob = developer(&app, "bob").await;
    let device = start_device_flow(&app).await;

    // Act
    c.goto(str_of(&device, "verification_uri_complete"))
        .await
        .expect("open page");
    sign_in(c, &bob.username, PASSWORD, None).await;
    assert_eq!(text_of(c, "#user-code").await, str_of(&device, "user_code"));
    click(c, "#deny").await;
    let result = wait_for_text(c, "#result", "Denied").await;

    // Assert
    assert!(result.starts_with("Denied."), "{result}");
    let (status, answer) = poll(&app, str_of(&device, "device_code")).await;
    assert!(status.is_client_error(), "{status}");
    assert_eq!(answer["error"], "access_denied", "{answer}");
    browser.close().await;
}

async fn a_wrong_password_or_totp_code_shows_an_error_and_signs_nobody_in(backend: Backend) {
    // Arrange
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let Some(browser) = Browser::start().await else {
        return;
    };
    let c = &browser.client;
    let alice = enrolled(&app, "alice", &["developer"]).await;
    let device = start_device_flow(&app).await;
    let user_code = str_of(&device, "user_code");
    c.goto(str_of(&device, "verification_uri_complete"))
        .await
        .expect("open page");

    // Act + Assert: a wrong password.
    sign_in(c, "alice", "not the password at all", None).await;
    wait_for_text(c, "#message", "Wrong username or password").await;

    // The right password without a code: asked for the code, password not kept.
    sign_in(c, "alice", PASSWORD, None).await;
    wait_for_text(c, "#message", "Enter the code from your authenticator app").await;
    assert_eq!(value_of(c, "#username").await, "alice");
    assert_eq!(value_of(c, "#password").await, "");
    assert!(!c.source().await.expect("source").contains(PASSWORD));

    // The right password with a wrong code.
    sign_in(c, "alice", PASSWORD, Some(&wrong_code(&alice.secret))).await;
    wait_for_text(c, "#message", "That code is wrong or was already used").await;
    maybe_screenshot(c, &format!("sign-in-error-{backend:?}").to_lowercase()).await;

    // Nobody is signed in and nothing was decided.
    let names = cookie_names(c).await;
    assert!(names.iter().any(|n| n == "airlock_csrf"), "{names:?}");
    assert!(!names.iter().any(|n| n == "airlock_web"), "{names:?}");
    let csrf = c.get_named_cookie("airlock_csrf").await.expect("csrf cookie");
    assert_eq!(csrf.http_only(), Some(true));
    assert_eq!(format!("{:?}", csrf.same_site()), "Some(Strict)");
    assert!(people::pending_device(&app.state, user_code).await.is_ok());
    c.goto(&app.url("/device")).await.expect("open page");
    element(c, "#sign-in").await;
    browser.close().await;
}

async fn enrolling_totp_on_the_web_page_turns_it_on(backend: Backend) {
    // Arrange
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let Some(browser) = Browser::start().await else {
        return;
    };
    let c = &browser.client;
    let carol = developer(&app, "carol").await;

    // Act: sign in on /totp, read the key off the page, type the first code.
    c.goto(&app.url("/totp")).await.expect("open page");
    sign_in(c, &carol.username, PASSWORD, None).await;
    let shown = text_of(c, "#totp-secret").await;
    let secret = BASE32_NOPAD
        .decode(shown.replace(' ', "").as_bytes())
        .expect("the page shows a base32 key");
    let qr = element(c, "#qr").await;
    let src = qr.attr("src").await.expect("src").unwrap_or_default();
    assert!(src.starts_with("data:image/svg+xml;base64,"), "{src}");
    // The QR image and the stylesheet load under the page's CSP.
    let width = c
        .execute(
            "return arguments[0].naturalWidth",
            vec![serde_json::to_value(&qr).expect("element")],
        )
        .await
        .expect("naturalWidth");
    assert!(
        width.as_u64().is_some_and(|w| w > 0),
        "the QR code did not render"
    );
    let header = element(c, "header").await;
    assert_eq!(
        header.css_value("background-color").await.expect("css"),
        "rgba(31, 45, 61, 1)"
    );
    maybe_screenshot(c, &format!("totp-enrolment-{backend:?}").to_lowercase()).await;
    fill(c, "#code", &code_now(&secret)).await;
    click(c, "#activate button").await;
    let result = wait_for_text(c, "#result", "set up").await;

    // Assert
    assert!(result.starts_with("Your authenticator app is set up"), "{result}");
    let carol_now = people::find_user(&app.state, "carol").await.expect("carol");
    assert!(carol_now.totp_enrolled());
    c.goto(&app.url("/totp")).await.expect("open page");
    wait_for_text(c, "#result", "already set up").await;
    browser.close().await;
}

// --- HTTP-level checks (no browser needed) --------------------------------------------

/// The value of the cookie `name` set by a response, with its attributes.
fn assert_page_headers(headers: &HeaderMap) {
    assert_eq!(headers["content-security-policy"], CSP);
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/html"));
}

fn assert_no_inline_script_or_style(page: &str) {
    for bad in ["<script", "style=", "<style", "javascript:"] {
        assert!(!page.contains(bad), "page contains {bad}:\n{page}");
    }
}

async fn pages_send_strict_headers_and_cookies_and_refuse_posts_without_csrf(backend: Backend) {
    // Arrange
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let mut alice = enrolled(&app, "alice", &["developer"]).await;
    let device = start_device_flow(&app).await;
    let user_code = str_of(&device, "user_code").to_string();
    let http = &app.client;

    // The sign-in page: strict headers, a double-submit CSRF cookie.
    let r = http
        .get(app.url(&format!("/device?user_code={user_code}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_page_headers(r.headers());
    let csrf_cookie = set_cookie(r.headers(), "airlock_csrf").expect("a CSRF cookie");
    for attr in ["; HttpOnly", "; SameSite=Strict", "; Path=/"] {
        assert!(csrf_cookie.contains(attr), "{csrf_cookie}");
    }
    assert!(
        !csrf_cookie.contains("Secure"),
        "plain http on loopback: {csrf_cookie}"
    );
    let page = r.text().await.unwrap();
    assert_no_inline_script_or_style(&page);
    let login_csrf = hidden(&page, "csrf");
    // The form token is the server's HMAC of the pre-session id in the cookie, not a copy
    // of it (a copy would let anyone who can plant the cookie pick the pair).
    assert_eq!(login_csrf.len(), 64, "hex HMAC-SHA256");
    assert_ne!(cookie_pair(&csrf_cookie), format!("airlock_csrf={login_csrf}"));

    let login = |cookie: Option<String>, csrf: Option<&str>, password: &str, code: &str| {
        let mut form = vec![
            ("next", "https://evil.example/".to_string()),
            ("user_code", user_code.clone()),
            ("username", "alice".into()),
            ("password", password.into()),
            ("code", code.into()),
        ];
        if let Some(t) = csrf {
            form.push(("csrf", t.into()));
        }
        let mut req = http.post(app.url("/login")).form(&form);
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        req.send()
    };

    // Act + Assert: sign-in without either half of the double submit is refused.
    let code = alice.fresh_code().await;
    let r = login(Some(cookie_pair(&csrf_cookie)), None, PASSWORD, &code)
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_page_headers(r.headers());
    assert!(set_cookie(r.headers(), "airlock_web").is_none());
    let r = login(None, Some(&login_csrf), PASSWORD, &code).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(set_cookie(r.headers(), "airlock_web").is_none());

    // A wrong password is a 401 page with the message, and no session.
    let r = login(
        Some(cookie_pair(&csrf_cookie)),
        Some(&login_csrf),
        "wrong password!!",
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(set_cookie(r.headers(), "airlock_web").is_none());
    assert!(r.text().await.unwrap().contains("Wrong username or password"));

    // The right one: a strict session cookie, and a redirect only to our own page.
    let r = login(
        Some(cookie_pair(&csrf_cookie)),
        Some(&login_csrf),
        PASSWORD,
        &code,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], format!("device?user_code={user_code}"));
    let session_cookie = set_cookie(r.headers(), "airlock_web").expect("a session cookie");
    let max_age = app.state.settings.auth.web_session_lifetime.as_secs();
    for attr in [
        "; HttpOnly".to_string(),
        "; SameSite=Strict".into(),
        "; Path=/".into(),
        format!("; Max-Age={max_age}"),
    ] {
        assert!(session_cookie.contains(&attr), "{session_cookie}");
    }
    let session = cookie_pair(&session_cookie);

    // The approval page carries the session's CSRF token.
    let r = http
        .get(app.url(&format!("/device?user_code={user_code}")))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_page_headers(r.headers());
    let page = r.text().await.unwrap();
    assert_no_inline_script_or_style(&page);
    assert!(page.contains("A terminal is asking to sign in as <strong>alice</strong>"));
    let token = hidden(&page, "csrf");
    assert_eq!(token.len(), 64, "hex HMAC-SHA256");

    // POST /device without the token, or with another one, is a 403 that decides nothing.
    let decide = |csrf: Option<&str>| {
        let mut form = vec![("decision", "approve"), ("user_code", user_code.as_str())];
        if let Some(t) = csrf {
            form.push(("csrf", t));
        }
        http.post(app.url("/device"))
            .header("cookie", &session)
            .form(&form)
            .send()
    };
    for csrf in [None, Some(login_csrf.as_str()), Some(&"0".repeat(64))] {
        let r = decide(csrf).await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "csrf {csrf:?}");
        assert_page_headers(r.headers());
        assert!(people::pending_device(&app.state, &user_code).await.is_ok());
    }
    let (_, pending) = poll(&app, str_of(&device, "device_code")).await;
    assert_eq!(pending["error"], "authorization_pending");

    // With the token it works (so the 403s were the CSRF check).
    let r = decide(Some(&token)).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("Approved: return to your terminal.")
    );
    let r = decide(Some(&token)).await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::BAD_REQUEST,
        "a decided code is not pending"
    );

    // Typed input is escaped.
    let r = http
        .get(app.url("/device?user_code=%3Cscript%3Ealert(1)%3C%2Fscript%3E"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let page = r.text().await.unwrap();
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{page}");
    assert_no_inline_script_or_style(&page);

    // The stylesheet is CSS.
    let r = http.get(app.url("/static/airlock.css")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );

    // Sign-out needs the token too, then ends the session and clears the cookie.
    let r = http
        .post(app.url("/logout"))
        .header("cookie", &session)
        .form(&[("csrf", "nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = http
        .post(app.url("/logout"))
        .header("cookie", &session)
        .form(&[("csrf", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let cleared = set_cookie(r.headers(), "airlock_web").expect("cookie cleared");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    let r = http
        .get(app.url("/device"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert!(
        r.text().await.unwrap().contains("id=\"sign-in\""),
        "the session has ended"
    );
}

async fn cookies_are_secure_and_host_prefixed_unless_public_url_is_plain_http_on_loopback(backend: Backend) {
    // Arrange: the same server, but published over https.
    let Some(app) = spawn_app_with(backend, |s| {
        s.public_url = "https://airlock.example.com".into();
    })
    .await
    else {
        return;
    };
    developer(&app, "dave").await;

    // Act
    let r = app.client.get(app.url("/device")).send().await.unwrap();
    let csrf_cookie = set_cookie(r.headers(), "__Host-airlock_csrf").expect("a __Host- CSRF cookie");
    let page = r.text().await.unwrap();
    let r = app
        .client
        .post(app.url("/login"))
        .header("cookie", cookie_pair(&csrf_cookie))
        .form(&[
            ("csrf", hidden(&page, "csrf").as_str()),
            ("next", "totp"),
            ("username", "dave"),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], "totp");
    let session_cookie = set_cookie(r.headers(), "__Host-airlock").expect("a __Host- session cookie");
    for cookie in [&csrf_cookie, &session_cookie] {
        for attr in ["; HttpOnly", "; SameSite=Strict", "; Path=/", "; Secure"] {
            assert!(cookie.contains(attr), "{cookie}");
        }
        assert!(!cookie.contains("Domain"), "{cookie}");
    }
    assert!(set_cookie(r.headers(), "airlock_web").is_none());
}

async fn a_throttled_sign_in_says_when_to_retry_and_oversized_forms_are_refused(backend: Backend) {
    // Arrange
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    developer(&app, "erin").await;
    let r = app.client.get(app.url("/device")).send().await.unwrap();
    let csrf_cookie = cookie_pair(&set_cookie(r.headers(), "airlock_csrf").expect("a CSRF cookie"));
    let csrf = hidden(&r.text().await.unwrap(), "csrf");
    let attempt = |password: &str| {
        app.client
            .post(app.url("/login"))
            .header("cookie", &csrf_cookie)
            .form(&[
                ("csrf", csrf.as_str()),
                ("username", "erin"),
                ("password", password),
            ])
            .send()
    };

    // Act: more wrong passwords than the free allowance, then one more try.
    let free = app.state.settings.auth.throttle_free_failures;
    for _ in 0..=free {
        let r = attempt("not erin's password").await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = attempt(PASSWORD).await.unwrap();

    // Assert: a 429 page that says when to retry, and no session.
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_page_headers(r.headers());
    assert!(r.headers().contains_key("retry-after"));
    assert!(set_cookie(r.headers(), "airlock_web").is_none());
    let page = r.text().await.unwrap();
    assert!(page.contains("Too many failed sign-ins; try again in "), "{page}");

    // A form larger than the token endpoint's limit, or not a form at all, is refused.
    let limit = app.state.settings.limits.max_body_bytes;
    let r = app
        .client
        .post(app.url("/login"))
        .header("cookie", &csrf_cookie)
        .form(&[("csrf", csrf.as_str()), ("username", &"a".repeat(limit))])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_page_headers(r.headers());
    let r = app
        .client
        .post(app.url("/login"))
        .header("cookie", &csrf_cookie)
        .json(&json!({ "csrf": csrf, "username": "erin", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

// --- the approvals page ------------------------------------------------------------------

/// The reason bob gives in the approvals tests.
const MIGRATION: &str = "run migration 0042 (TICKET-118)";

/// The id of the only pending request, once there is one.
async fn pending_request(app: &TestApp) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let pending = app
            .store()
            .escalations(&airlock::store::EscalationFilter {
                state: Some(airlock::domain::EscalationState::Pending),
                environment: None,
                holder: None,
                limit: 10,
            })
            .await
            .expect("escalations");
        if let [only] = pending.as_slice() {
            return only.id.to_string();
        }
        assert!(pending.len() < 2, "more than one pending request");
        assert!(Instant::now() < deadline, "no request was made");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sign out with the header's button.
async fn sign_out(c: &Client) {
    click(c, "#sign-out button").await;
    wait_for_text(c, "#result", "signed out").await;
}

/// Whether the page has an element for `css` right now.
async fn present(c: &Client, css: &str) -> bool {
    c.find(Locator::Css(css)).await.is_ok()
}

/// `GET /approvals` with `cookies`: the page, and the flash cookie it sets (clears).
async fn approvals_page(app: &TestApp, cookies: String) -> (String, Option<String>) {
    let r = get_approvals(app, &cookies).await;
    assert_page_headers(r.headers());
    let cleared = set_cookie(r.headers(), "airlock_flash");
    (r.text().await.unwrap(), cleared)
}

async fn carol_approves_bobs_prod_request_in_the_browser_and_his_waiting_cli_returns(backend: Backend) {
    // Arrange: bob signed in on the CLI; carol, an approver with TOTP.
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let Some(browser) = Browser::start().await else {
        return;
    };
    let c = &browser.client;
    developer(&app, "bob").await;
    let mut carol = enrolled(&app, "carol", &["approver"]).await;
    let t = Terminal::new(&app);
    let login = t.login("bob").await;
    assert!(login.status.success(), "airlock login: {}", login.stderr);

    // Act: bob asks for prod and waits; carol signs in, reads the request, approves.
    let escalate = t.spawn(&[
        "escalate",
        "--env",
        "prod",
        "--scope",
        "db:write",
        "--duration",
        "30m",
        "--reason",
        MIGRATION,
        "--wait",
    ]);
    let id = pending_request(&app).await;
    c.goto(&app.url("/approvals")).await.expect("open page");
    let code = carol.code().await;
    sign_in(c, "carol", PASSWORD, Some(&code)).await;
    let card = format!("#req-{id}");
    assert_eq!(text_of(c, &format!("{card} .requester")).await, "bob");
    let env = text_of(c, &format!("{card} .environment")).await;
    assert!(env.to_lowercase().contains("prod production"), "{env}");
    assert_eq!(text_of(c, &format!("{card} .scopes")).await, "db:write");
    assert!(!present(c, &format!("{card} .destructive")).await);
    assert_eq!(text_of(c, &format!("{card} .duration")).await, "30 minutes");
    assert_eq!(text_of(c, &format!("{card} .reason")).await, MIGRATION);
    assert_eq!(text_of(c, &format!("{card} .approvals")).await, "0 of 1");
    let age = text_of(c, &format!("{card} .age")).await;
    assert!(age.contains("expires in"), "{age}");
    maybe_screenshot(c, &format!("approvals-{backend:?}").to_lowercase()).await;
    fill(c, &format!("#code-{id}"), &carol.code().await).await;
    click(c, &format!("#approve-{id} button")).await;
    let flash = wait_for_text(c, "#flash", "Approved").await;

    // Assert: the page says so, and bob's waiting command returns with the news.
    assert!(
        flash.starts_with("Approved bob's request for db:write in prod. The grant lasts until "),
        "{flash}"
    );
    let outcome = text_of(c, &format!("#recent #outcome-{id}")).await;
    assert!(outcome.starts_with("Approved by carol"), "{outcome}");
    assert!(!present(c, &format!("#pending {card}")).await);
    let out = escalate.finish_within(Duration::from_secs(60)).await;
    let (status, stdout, stderr) = (out.status, out.stdout, out.stderr);
    assert!(status.success(), "airlock escalate: {status}\n{stdout}\n{stderr}");
    let said = format!("{stdout}\n{stderr}");
    assert!(said.contains(&id), "the request id was not printed:\n{said}");
    assert!(said.contains("Approved by carol."), "{said}");
    // Reloading the page shows the state and decides nothing again.
    c.refresh().await.expect("reload");
    element(c, &format!("#recent {card}")).await;
    assert!(!present(c, "#flash").await);
    browser.close().await;
}

async fn who_may_not_approve_sees_why_and_an_approver_denies_with_a_reason(backend: Backend) {
    // Arrange: bob's request with a destructive scope and markup in its reason.
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let Some(browser) = Browser::start().await else {
        return;
    };
    let c = &browser.client;
    developer(&app, "bob").await;
    let bob = session_token(&app, "bob", None).await;
    let mut erin = enrolled(&app, "erin", &["admin"]).await;
    let mut carol = enrolled(&app, "carol", &["approver"]).await;
    person(&app, "dave", &["approver"]).await;
    let reason = r#"<b>drop</b> the "old" tables & vacuum (TICKET-7)"#;
    let (status, body) = support::request(&app, &bob, "prod", &["db:write", "db:drop"], "2h", reason).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = str_of(&body, "id").to_string();
    let card = format!("#req-{id}");

    // Act + Assert: an admin without the approver role sees the request and why she may
    // not decide it, and no buttons.
    c.goto(&app.url("/approvals")).await.expect("open page");
    let code = erin.code().await;
    sign_in(c, "erin", PASSWORD, Some(&code)).await;
    assert_eq!(
        text_of(c, &format!("#why-{id}")).await,
        "Approving requests for 'prod' needs the 'approver' role, which you do not have."
    );
    assert!(!present(c, &format!("#approve-{id}")).await);
    assert!(!present(c, &format!("#deny-{id}")).await);
    assert_eq!(text_of(c, &format!("{card} .reason")).await, reason);
    let destructive = text_of(c, &format!("{card} .destructive")).await;
    assert!(
        destructive.to_lowercase() == "db:drop destructive",
        "{destructive}"
    );
    // The duration was cut to prod's max_grant_duration.
    assert_eq!(text_of(c, &format!("{card} .duration")).await, "1 hour");
    sign_out(c).await;

    // bob sees his own request, and that he cannot decide it.
    c.goto(&app.url("/approvals")).await.expect("open page");
    sign_in(c, "bob", PASSWORD, None).await;
    assert_eq!(
        text_of(c, &format!("#why-{id}")).await,
        "You cannot decide your own request."
    );
    element(c, "#not-an-approver").await;
    sign_out(c).await;

    // dave holds the approver role but has no authenticator app: the role is not in
    // effect, he sees no request, and the page says what to do.
    c.goto(&app.url("/approvals")).await.expect("open page");
    sign_in(c, "dave", PASSWORD, None).await;
    let notice = wait_for_text(c, "#role-needs-totp", "authenticator page").await;
    assert!(
        notice.starts_with("Your role approver approves requests for dev, prod, staging only"),
        "{notice}"
    );
    element(c, "#none-pending").await;
    assert!(!present(c, &card).await);
    sign_out(c).await;

    // With a code she may deny; a reason is required.
    c.goto(&app.url("/approvals")).await.expect("open page");
    let code = carol.code().await;
    sign_in(c, "carol", PASSWORD, Some(&code)).await;
    element(c, &format!("#approve-{id}")).await;
    fill(c, &format!("#reason-{id}"), "not during the release freeze").await;
    click(c, &format!("#deny-{id} button")).await;
    let flash = wait_for_text(c, "#flash", "Denied").await;
    assert_eq!(
        flash,
        "Denied bob's request for db:write, db:drop in prod. The requester can see your reason."
    );
    let outcome = text_of(c, &format!("#outcome-{id}")).await;
    assert!(
        outcome.starts_with("Denied by carol: not during the release freeze"),
        "{outcome}"
    );
    click(c, &format!("#history-{id} summary")).await;
    let history = wait_for_text(c, &format!("#history-{id} ol"), "denied by carol").await;
    assert!(history.contains("asked by"), "{history}");
    maybe_screenshot(c, &format!("approvals-denied-{backend:?}").to_lowercase()).await;
    let (_, shown) = support::show(&app, &bob, &id, None).await;
    assert_eq!(shown["state"], "denied", "{shown}");
    browser.close().await;
}

async fn the_approvals_page_checks_csrf_escapes_text_and_redirects_after_each_decision(backend: Backend) {
    // Arrange: a request whose reason is markup; carol signs in over plain HTTP.
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let http = &app.client;
    developer(&app, "bob").await;
    let bob = session_token(&app, "bob", None).await;
    let mut carol = enrolled(&app, "carol", &["approver"]).await;
    let reason = r#"<script>alert("x")</script> run migration 0042"#;
    let (status, body) = support::request(&app, &bob, "prod", &["db:write"], "30m", reason).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = str_of(&body, "id").to_string();
    let still_pending = || async {
        let (_, shown) = support::show(&app, &bob, &id, None).await;
        shown["state"] == "pending"
    };

    let r = http.get(app.url("/approvals")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_page_headers(r.headers());
    let csrf_cookie = cookie_pair(&set_cookie(r.headers(), "airlock_csrf").expect("a CSRF cookie"));
    let page = r.text().await.unwrap();
    assert!(page.contains("id=\"sign-in\""), "{page}");
    assert_eq!(hidden(&page, "next"), "approvals");
    let code = carol.code().await;
    let r = http
        .post(app.url("/login"))
        .header("cookie", &csrf_cookie)
        .form(&[
            ("csrf", hidden(&page, "csrf").as_str()),
            ("next", "approvals"),
            ("username", "carol"),
            ("password", PASSWORD),
            ("code", code.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], "approvals");
    let session = cookie_pair(&set_cookie(r.headers(), "airlock_web").expect("a session cookie"));

    // Act + Assert: the page escapes the reason and carries the session's CSRF token.
    let (page, _) = approvals_page(&app, session.clone()).await;
    assert_no_inline_script_or_style(&page);
    assert!(page.contains(&format!("id=\"req-{id}\"")), "{page}");
    assert!(
        page.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; run migration 0042"),
        "{page}"
    );
    let token = hidden(&page, "csrf");
    assert_eq!(token.len(), 64);
    let decide = |fields: Vec<(&'static str, String)>| {
        http.post(app.url("/approvals"))
            .header("cookie", &session)
            .form(&fields)
            .send()
    };
    let approve = |csrf: Option<&str>, code: &str| {
        let mut f = vec![
            ("id", id.clone()),
            ("decision", "approve".to_string()),
            ("code", code.to_string()),
        ];
        if let Some(t) = csrf {
            f.push(("csrf", t.to_string()));
        }
        f
    };

    // Without the CSRF token, or with another one: 403, nothing decided.
    for csrf in [None, Some("0".repeat(64))] {
        let r = decide(approve(csrf.as_deref(), "123456")).await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "csrf {csrf:?}");
        assert_page_headers(r.headers());
        assert!(still_pending().await);
    }

    // A wrong code: back to the page (303), which says so once.
    let r = decide(approve(Some(&token), &wrong_code(&carol.secret)))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], "approvals");
    let flash = set_cookie(r.headers(), "airlock_flash").expect("a flash cookie");
    for attr in ["; HttpOnly", "; SameSite=Strict", "; Path=/", "; Max-Age=60"] {
        assert!(flash.contains(attr), "{flash}");
    }
    let (page, cleared) = approvals_page(&app, format!("{session}; {}", cookie_pair(&flash))).await;
    assert!(
        page.contains("That code is wrong or was already used; wait for the next one. Nothing was approved."),
        "{page}"
    );
    assert!(cleared.is_some_and(|c| c.contains("Max-Age=0")));
    assert!(still_pending().await);

    // A flash message nobody sealed for this session is not shown.
    let forged = format!(
        "airlock_flash={}.{}",
        base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            "nApproved everything"
        ),
        "0".repeat(64)
    );
    let (page, _) = approvals_page(&app, format!("{session}; {forged}")).await;
    assert!(!page.contains("Approved everything"));
    assert!(!page.contains("id=\"flash\""));

    // The right code approves; the page shows it once.
    let r = decide(approve(Some(&token), &carol.code().await)).await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let flash = cookie_pair(&set_cookie(r.headers(), "airlock_flash").expect("a flash cookie"));
    let (page, _) = approvals_page(&app, format!("{session}; {flash}")).await;
    assert!(
        page.contains("Approved bob&#39;s request for db:write in prod."),
        "{page}"
    );
    assert!(!still_pending().await);

    // Sending the form again decides nothing and says why (the API's 409).
    let r = decide(approve(Some(&token), "123456")).await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let flash = cookie_pair(&set_cookie(r.headers(), "airlock_flash").expect("a flash cookie"));
    let (page, _) = approvals_page(&app, format!("{session}; {flash}")).await;
    assert!(
        page.contains(&format!("Request {id} is approved; it can no longer be decided.")),
        "{page}"
    );

    // A denial without a reason is refused with a readable message.
    let (status, body) = support::request(&app, &bob, "prod", &["db:read"], "30m", MIGRATION).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let other = str_of(&body, "id").to_string();
    let r = decide(vec![
        ("csrf", token.clone()),
        ("id", other.clone()),
        ("decision", "deny".into()),
        ("reason", "  ".into()),
    ])
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let flash = cookie_pair(&set_cookie(r.headers(), "airlock_flash").expect("a flash cookie"));
    let (page, _) = approvals_page(&app, format!("{session}; {flash}")).await;
    assert!(page.contains("Give a reason for the denial."), "{page}");

    // Forms are bounded like every other page's.
    let limit = app.state.settings.limits.max_body_bytes;
    let r = decide(vec![
        ("csrf", token.clone()),
        ("id", other.clone()),
        ("decision", "deny".into()),
        ("reason", "a".repeat(limit)),
    ])
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let (_, shown) = support::show(&app, &bob, &other, None).await;
    assert_eq!(shown["state"], "pending");
}
