//! Building the script's requests, and the authenticators that answer its TOTP prompts.

use std::time::Duration;

use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, RequestBuilder};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use crate::support::{self, ACCESS_TOKEN_TYPE, EXCHANGE, PROCESS_TYPE};
use crate::support::{TestAgent, TestApp};

/// A person's authenticator. Each code is for a time step after the last one used (the
/// server accepts a step once), and never for the previous step, which could pass out of
/// the accepted window before the server checks it. At most the current and next steps
/// are used; beyond them it waits for the clock.
pub(super) struct Totp {
    pub(super) secret: Vec<u8>,
    pub(super) next: i64,
}

fn step_now() -> i64 {
    airlock::totp::step_at(time::OffsetDateTime::now_utc().unix_timestamp())
}

impl Totp {
    pub(super) async fn code(&mut self) -> String {
        loop {
            let now = step_now();
            let step = self.next.max(now);
            if step <= now + 1 {
                self.next = step + 1;
                return airlock::totp::code_at(&self.secret, step);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// A code no step near now has.
    pub(super) fn wrong(&self) -> String {
        let now = step_now();
        (0u32..)
            .map(|k| format!("{:06}", (k * 271_829 + 314_159) % 1_000_000))
            .find(|c| (now - 3..=now + 3).all(|s| airlock::totp::code_at(&self.secret, s) != *c))
            .expect("a wrong code")
    }
}

impl From<&support::Person> for Totp {
    fn from(p: &support::Person) -> Totp {
        Totp {
            secret: p.secret.clone(),
            next: p.next_step,
        }
    }
}

pub(super) fn get(app: &TestApp, path: &str) -> RequestBuilder {
    app.client.get(app.url(path))
}

pub(super) fn post(app: &TestApp, path: &str) -> RequestBuilder {
    app.client.post(app.url(path))
}

pub(super) fn request(app: &TestApp, method: Method, path: &str) -> RequestBuilder {
    app.client.request(method, app.url(path))
}

/// A form POST.
pub(super) fn form(app: &TestApp, path: &str, fields: &[(&str, &str)]) -> RequestBuilder {
    post(app, path).form(fields)
}

/// A raw form-encoded body.
pub(super) fn raw_form(app: &TestApp, path: &str, body: String) -> RequestBuilder {
    post(app, path)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(body)
}

pub(super) fn secret(agent: &TestAgent) -> &str {
    agent.secret.expose_secret()
}

/// A client-credentials request with Basic authentication.
pub(super) fn client_credentials(
    app: &TestApp,
    env: &str,
    agent: &TestAgent,
    scope: Option<&str>,
) -> RequestBuilder {
    let mut fields = vec![("grant_type", "client_credentials")];
    if let Some(s) = scope {
        fields.push(("scope", s));
    }
    form(app, &format!("/envs/{env}/token"), &fields).basic_auth(&agent.client_id, Some(secret(agent)))
}

/// An RFC 8693 exchange of a session token.
pub(super) fn exchange(
    app: &TestApp,
    env: &str,
    subject: &str,
    scope: Option<&str>,
    actor: Option<&str>,
) -> RequestBuilder {
    let mut fields = vec![
        ("grant_type", EXCHANGE),
        ("subject_token", subject),
        ("subject_token_type", ACCESS_TOKEN_TYPE),
    ];
    if let Some(s) = scope {
        fields.push(("scope", s));
    }
    if let Some(a) = actor {
        fields.push(("actor_token", a));
        fields.push(("actor_token_type", PROCESS_TYPE));
    }
    form(app, &format!("/envs/{env}/token"), &fields)
}

/// An introspection request authenticated as `agent`.
pub(super) fn introspect(app: &TestApp, env: &str, agent: &TestAgent, token: &str) -> RequestBuilder {
    form(app, &format!("/envs/{env}/introspect"), &[("token", token)])
        .basic_auth(&agent.client_id, Some(secret(agent)))
}

pub(super) fn sign_in(app: &TestApp, username: &str, password: &str, code: Option<&str>) -> RequestBuilder {
    let mut body = json!({ "username": username, "password": password });
    if let Some(c) = code {
        body["totp_code"] = json!(c);
    }
    post(app, "/v1/sessions").json(&body)
}

/// The sign-in form as a browser posts it.
pub(super) fn login_form(
    app: &TestApp,
    csrf: Option<&str>,
    next: &str,
    username: &str,
    password: &str,
    code: &str,
) -> RequestBuilder {
    let mut fields: Vec<(&str, &str)> = Vec::new();
    if let Some(c) = csrf {
        fields.push(("csrf", c));
    }
    fields.extend([
        ("next", next),
        ("username", username),
        ("password", password),
        ("code", code),
    ]);
    form(app, "/login", &fields)
}

pub(super) fn bearer_get(app: &TestApp, path: &str, token: &str) -> RequestBuilder {
    get(app, path).bearer_auth(token)
}

pub(super) fn bearer_post(app: &TestApp, path: &str, token: &str, body: Value) -> RequestBuilder {
    post(app, path).bearer_auth(token).json(&body)
}

pub(super) fn escalation(env: &str, scopes: &[&str], duration: &str, reason: &str) -> Value {
    json!({ "environment": env, "scopes": scopes, "duration": duration, "reason": reason })
}

/// The session id in a session access token.
pub(super) fn sid(token: &str) -> String {
    support::claims(token)["sid"]
        .as_str()
        .expect("a session token")
        .to_string()
}

/// A body larger than any limit.
pub(super) fn oversized(n: usize) -> String {
    "a".repeat(n)
}

/// A user code's form: `A` for a capital letter, `a` for a small one, `9` for a digit
/// (`BCDF-GHJK` is `AAAA-AAAA`).
pub(super) fn shape(v: &str) -> String {
    v.chars()
        .map(|c| match c {
            'A'..='Z' => 'A',
            'a'..='z' => 'a',
            '0'..='9' => '9',
            other => other,
        })
        .collect()
}

/// A TOTP key's form: base32, and the lengths of its groups as shown (`32`, `4+4+...`).
pub(super) fn key_shape(v: &str) -> String {
    let base32 = v
        .chars()
        .all(|c| c == ' ' || c.is_ascii_uppercase() || ('2'..='7').contains(&c));
    let groups: Vec<String> = v.split(' ').map(|g| g.len().to_string()).collect();
    format!(
        "{} {}",
        if base32 { "base32" } else { "not base32" },
        groups.join("+")
    )
}
