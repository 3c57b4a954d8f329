//! People: created through the library, with TOTP enrolled as a person would, signed in
//! over HTTP.
//!
//! TOTP codes are single-use and the server accepts only the current time step ±1, so a
//! person has at most three fresh codes per 30-second step. [`Person::code`] hands out
//! the next unused step and, when none is left, waits for the clock to provide one.

use std::time::Duration;

use airlock::domain::User;
use airlock::people;
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};

use super::api::status_json;
use super::app::TestApp;

/// Password of every test person.
pub const PASSWORD: &str = "correct horse battery staple";

/// Create `username` with `roles` and [`PASSWORD`] through the library.
pub async fn person(app: &TestApp, username: &str, roles: &[&str]) -> User {
    people::create_user(
        &app.state,
        "test",
        username,
        &SecretString::from(PASSWORD.to_string()),
        roles.iter().map(|r| r.to_string()).collect(),
    )
    .await
    .expect("person created")
}

/// A developer without TOTP (developers may ask for prod escalations).
pub async fn developer(app: &TestApp, username: &str) -> User {
    person(app, username, &["developer"]).await
}

/// The stored id of `username`, as a person's tokens name it in `sub`.
pub async fn user_id(app: &TestApp, username: &str) -> String {
    people::find_user(&app.state, username)
        .await
        .expect("person")
        .id
        .to_string()
}

/// Enrol TOTP for `user` with the previous time step's code (accepted: the server allows
/// ±1); returns the secret and that step. Steps must increase, so the current step and
/// the next one stay available for a sign-in and a step-up.
pub async fn enrol(app: &TestApp, user: &User) -> (Vec<u8>, i64) {
    let (secret, step) = app.enrol_totp(&user.username, PASSWORD).await;
    let user = people::find_user(&app.state, &user.username).await.unwrap();
    assert!(user.totp_enrolled());
    (secret, step)
}

/// The current TOTP time step.
pub fn current_step() -> i64 {
    airlock::totp::step_at(time::OffsetDateTime::now_utc().unix_timestamp())
}

/// The code of the current time step.
pub fn code_now(secret: &[u8]) -> String {
    airlock::totp::code_at(secret, current_step())
}

/// A well-formed six-digit code that `secret` does not produce around now (two steps
/// either side), so the server refuses it whatever the clock does meanwhile.
pub fn wrong_code(secret: &[u8]) -> String {
    let now = current_step();
    let valid: Vec<String> = (now - 2..=now + 2)
        .map(|s| airlock::totp::code_at(secret, s))
        .collect();
    (0..)
        .map(|i| format!("{:06}", (123_456 + i * 7_919) % 1_000_000))
        .find(|c| !valid.contains(c))
        .expect("a wrong code")
}

/// A person with TOTP enrolled and, once signed in, a CLI session.
pub struct Person {
    /// The stored user.
    pub user: User,
    /// TOTP secret.
    pub secret: Vec<u8>,
    /// Next unused time step.
    pub next_step: i64,
    /// Session access token (empty until signed in).
    pub token: String,
}

impl Person {
    /// A fresh, never used, currently accepted TOTP code (waits for the next time step
    /// when this person has used all three accepted ones).
    pub async fn code(&mut self) -> String {
        self.code_from(-1).await
    }

    /// As [`Person::code`], but never the previous step: for a code typed into a page,
    /// which must still be accepted when the clock moves on meanwhile.
    pub async fn fresh_code(&mut self) -> String {
        self.code_from(0).await
    }

    /// The first unused step no earlier than `now + earliest` and at most one step ahead.
    async fn code_from(&mut self, earliest: i64) -> String {
        loop {
            let now = current_step();
            if self.next_step < now + earliest {
                self.next_step = now + earliest;
            }
            if self.next_step <= now + 1 {
                let code = airlock::totp::code_at(&self.secret, self.next_step);
                self.next_step += 1;
                return code;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The code [`Person::code`] would hand out next, without using it up.
    pub fn peek_code(&self) -> String {
        airlock::totp::code_at(&self.secret, self.next_step.max(current_step() - 1))
    }

    /// Username.
    pub fn name(&self) -> &str {
        &self.user.username
    }
}

/// A person with `roles` and TOTP enrolled, signed in nowhere yet, so their next two
/// codes come without waiting for the clock.
pub async fn enrolled(app: &TestApp, username: &str, roles: &[&str]) -> Person {
    person(app, username, roles).await;
    let (secret, step) = app.enrol_totp(username, PASSWORD).await;
    Person {
        user: people::find_user(&app.state, username).await.expect("person"),
        secret,
        next_step: step + 1,
        token: String::new(),
    }
}

/// Create `username` with `roles`, enrol TOTP, sign in with a code.
pub async fn person_with_totp(app: &TestApp, username: &str, roles: &[&str]) -> Person {
    let mut p = enrolled(app, username, roles).await;
    let code = p.code().await;
    p.token = session_token(app, username, Some(&code)).await;
    p
}

/// A person without TOTP, signed in with the password only; their session token.
pub async fn person_without_totp(app: &TestApp, username: &str, roles: &[&str]) -> String {
    person(app, username, roles).await;
    session_token(app, username, None).await
}

/// `POST /v1/sessions` from `client` (whose address the server sees).
pub async fn sign_in_from(
    app: &TestApp,
    client: &reqwest::Client,
    username: &str,
    password: &str,
    code: Option<&str>,
) -> reqwest::Response {
    let mut body = json!({ "username": username, "password": password });
    if let Some(c) = code {
        body["totp_code"] = json!(c);
    }
    client
        .post(app.url("/v1/sessions"))
        .json(&body)
        .send()
        .await
        .expect("request sent")
}

/// `POST /v1/sessions`.
pub async fn sign_in(app: &TestApp, username: &str, password: &str, code: Option<&str>) -> reqwest::Response {
    sign_in_from(app, &app.client, username, password, code).await
}

/// Sign in with the right password; the session's tokens.
pub async fn session(app: &TestApp, username: &str, code: Option<&str>) -> Value {
    let (status, body) = status_json(sign_in(app, username, PASSWORD, code).await).await;
    assert_eq!(status, StatusCode::OK, "sign-in of {username}: {body}");
    body
}

/// Sign in with the right password; the session's access token.
pub async fn session_token(app: &TestApp, username: &str, code: Option<&str>) -> String {
    session(app, username, code).await["access_token"]
        .as_str()
        .expect("access_token")
        .to_string()
}

/// Confirm a fresh code for `p`'s session.
pub async fn step_up(app: &TestApp, p: &mut Person) {
    let code = p.code().await;
    let token = p.token.clone();
    let resp = app
        .post_json("/v1/me/step-up", &token, json!({ "code": code }))
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT, "step-up of {}", p.name());
}

/// An admin (`root`) with TOTP enrolled, signed in and stepped up; the session access
/// token, good for admin changes.
pub async fn admin_session(app: &TestApp) -> String {
    let root = person(app, "root", &["admin"]).await;
    let (secret, step) = enrol(app, &root).await;
    // The activation used this step; the next two are still accepted (±1 around now).
    let token = session_token(app, "root", Some(&airlock::totp::code_at(&secret, step + 1))).await;
    // Admin changes need a recent step-up with a fresh code.
    let resp = app
        .post_json(
            "/v1/me/step-up",
            &token,
            json!({ "code": airlock::totp::code_at(&secret, step + 2) }),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT, "step-up");
    token
}
