//! What the attack on the built system found about people (issue 8, items 1, 2, 3, 11):
//! TOTP enrolment is throttled, bound to its session and short-lived; a stranger's
//! failed sign-ins do not lock the real person out, nor block an approver's approval;
//! a destructive grant is bound to one stepped-up session in every environment; and a
//! device-flow login carries no approver rights until the CLI itself steps up.

use std::net::IpAddr;
use std::time::Duration;

use airlock::people;
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::both_backends;
use crate::escalation_support::*;
use crate::harness::{Backend, TestApp, spawn_app, spawn_app_with};

/// A client whose connections come from `ip` (any 127.0.0.0/8 address reaches the
/// server on loopback), so a test can be a stranger at another address.
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().expect("address"))
        .build()
        .expect("client")
}

async fn sign_in_from(
    app: &TestApp,
    client: &reqwest::Client,
    username: &str,
    password: &str,
    code: Option<&str>,
) -> (StatusCode, Value) {
    let mut body = json!({ "username": username, "password": password });
    if let Some(c) = code {
        body["totp_code"] = json!(c);
    }
    let resp = client
        .post(app.url("/v1/sessions"))
        .json(&body)
        .send()
        .await
        .expect("sign-in sent");
    status_json(resp).await
}

/// Fail sign-in as `username` from `client` until the server throttles it.
async fn fail_until_throttled(app: &TestApp, client: &reqwest::Client, username: &str) {
    for _ in 0..12 {
        let (status, body) = sign_in_from(app, client, username, "not the password", None).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            return;
        }
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }
    panic!("failed sign-ins as {username} were never throttled");
}

async fn plain_person(app: &TestApp, username: &str, roles: &[&str]) {
    people::create_user(
        &app.state,
        "test",
        username,
        &SecretString::from(PASSWORD.to_string()),
        roles.iter().map(|r| r.to_string()).collect(),
    )
    .await
    .expect("person created");
}

/// A six-digit code that the secret does not produce around now.
fn wrong_code(secret: &[u8]) -> String {
    let step = airlock::totp::step_at(time::OffsetDateTime::now_utc().unix_timestamp());
    let valid: Vec<String> = (step - 2..=step + 2)
        .map(|s| airlock::totp::code_at(secret, s))
        .collect();
    (0..100u32)
        .map(|i| format!("{:06}", (314_159 + i * 7_919) % 1_000_000))
        .find(|c| !valid.contains(c))
        .expect("a wrong code")
}

/// Start enrolment from `token`'s session; the new secret.
async fn begin_enrolment(app: &TestApp, token: &str) -> Vec<u8> {
    let (status, body) = post(app, "/v1/me/totp", token, json!({ "password": PASSWORD })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    data_encoding::BASE32_NOPAD
        .decode(body["secret"].as_str().expect("secret").as_bytes())
        .expect("base32")
}

fn current_code(secret: &[u8]) -> String {
    airlock::totp::code_at(
        secret,
        airlock::totp::step_at(time::OffsetDateTime::now_utc().unix_timestamp()),
    )
}

async fn activate(app: &TestApp, token: &str, code: &str) -> (StatusCode, Value) {
    post(app, "/v1/me/totp/activate", token, json!({ "code": code })).await
}

async fn totp_activation_counts_wrong_codes_and_is_throttled(backend: Backend) {
    // Arrange: a person with a pending enrolment (as with a copied session file).
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    plain_person(&app, "dora", &["developer"]).await;
    let (status, session) = sign_in_from(&app, &app.client, "dora", PASSWORD, None).await;
    assert_eq!(status, StatusCode::OK, "{session}");
    let token = session["access_token"].as_str().unwrap().to_string();
    let secret = begin_enrolment(&app, &token).await;
    let wrong = wrong_code(&secret);

    // Act: guess.
    let mut throttled = None;
    for attempt in 1..=8 {
        let (status, body) = activate(&app, &token, &wrong).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            throttled = Some((attempt, body));
            break;
        }
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }

    // Assert: a few free guesses, then delays, like every other code check; even the
    // right code waits out the delay; every wrong guess is in the audit trail.
    let (attempt, body) = throttled.expect("activation guesses are throttled");
    assert!(attempt <= 6, "throttled only at attempt {attempt}");
    assert_eq!(body["error"]["code"], "throttled", "{body}");
    let resp = app
        .client
        .post(app.url("/v1/me/totp/activate"))
        .bearer_auth(&token)
        .json(&json!({ "code": current_code(&secret) }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(resp.headers().contains_key("retry-after"));
    let user = people::find_user(&app.state, "dora").await.unwrap();
    assert!(!user.totp_enrolled(), "no enrolment while throttled");
    let failures = app
        .audit_kinds()
        .await
        .into_iter()
        .filter(|r| r.event.kind == "login.failed" && r.event.details["via"] == "totp-enrolment")
        .count();
    assert!(failures >= 3, "wrong enrolment codes are audited ({failures})");
}

async fn a_pending_enrolment_is_finished_only_from_its_session_and_expires(backend: Backend) {
    // Arrange: two sessions of one person; enrolments last 2 s here.
    let Some(app) = spawn_app_with(backend, |s| {
        s.auth.totp_enrolment_lifetime = Duration::from_secs(2);
    })
    .await
    else {
        return;
    };
    plain_person(&app, "dora", &["developer"]).await;
    let (_, a) = sign_in_from(&app, &app.client, "dora", PASSWORD, None).await;
    let (_, b) = sign_in_from(&app, &app.client, "dora", PASSWORD, None).await;
    let a = a["access_token"].as_str().unwrap().to_string();
    let b = b["access_token"].as_str().unwrap().to_string();

    // Act + Assert: another session cannot finish A's enrolment, even with the code.
    let secret = begin_enrolment(&app, &a).await;
    let (status, body) = activate(&app, &b, &current_code(&secret)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("another session"),
        "{body}"
    );

    // An enrolment left too long expires.
    let secret = begin_enrolment(&app, &a).await;
    tokio::time::sleep(Duration::from_millis(3_200)).await;
    let (status, body) = activate(&app, &a, &current_code(&secret)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("expired"),
        "{body}"
    );
    assert!(
        !people::find_user(&app.state, "dora")
            .await
            .unwrap()
            .totp_enrolled()
    );

    // The session that started it, in time, finishes it.
    let secret = begin_enrolment(&app, &a).await;
    let (status, body) = activate(&app, &a, &current_code(&secret)).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert!(
        people::find_user(&app.state, "dora")
            .await
            .unwrap()
            .totp_enrolled()
    );
}

async fn a_strangers_failed_sign_ins_do_not_lock_the_person_out(backend: Backend) {
    // Arrange
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    plain_person(&app, "erin", &["developer"]).await;
    let stranger = client_from("127.0.0.2");

    // Act: the stranger guesses until throttled.
    fail_until_throttled(&app, &stranger, "erin").await;

    // Assert: erin, from her own address, signs in at once; the stranger stays blocked,
    // even with the right password.
    let (status, body) = sign_in_from(&app, &app.client, "erin", PASSWORD, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = sign_in_from(&app, &stranger, "erin", PASSWORD, None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
}

async fn the_account_ceiling_stops_guessing_spread_over_addresses(backend: Backend) {
    // Arrange: 2 free failures per address, a ceiling of 4 for the account.
    let Some(app) = spawn_app_with(backend, |s| {
        s.auth.throttle_free_failures = 2;
        s.auth.throttle_account_ceiling = 4;
    })
    .await
    else {
        return;
    };
    plain_person(&app, "erin", &["developer"]).await;

    // Act: one failure from each of five addresses, none of them over its own limit.
    for i in 2..=6 {
        let client = client_from(&format!("127.0.0.{i}"));
        let (status, body) = sign_in_from(&app, &client, "erin", "not the password", None).await;
        assert!(
            status == StatusCode::UNAUTHORIZED || status == StatusCode::TOO_MANY_REQUESTS,
            "{status} {body}"
        );
    }

    // Assert: the account is now delayed for everyone, a fresh address included.
    let (status, body) = sign_in_from(&app, &client_from("127.0.0.9"), "erin", PASSWORD, None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
}

async fn hammering_from_one_address_cannot_use_up_the_account_ceiling(backend: Backend) {
    // Arrange: a ceiling of 4 for the account, 2 free failures per address.
    let Some(app) = spawn_app_with(backend, |s| {
        s.auth.throttle_free_failures = 2;
        s.auth.throttle_account_ceiling = 4;
    })
    .await
    else {
        return;
    };
    plain_person(&app, "erin", &["developer"]).await;
    let stranger = client_from("127.0.0.2");

    // Act: a concurrent burst of far more attempts than the ceiling, all from one
    // address (a burst reaches the store before any process has cached a block).
    let mut burst = tokio::task::JoinSet::new();
    for i in 0..16 {
        let (client, url) = (stranger.clone(), app.url("/v1/sessions"));
        burst.spawn(async move {
            let body = json!({ "username": "erin", "password": format!("guess number {i}") });
            client.post(url).json(&body).send().await.unwrap().status()
        });
    }
    while let Some(status) = burst.join_next().await {
        let status = status.unwrap();
        assert!(
            status == StatusCode::UNAUTHORIZED || status == StatusCode::TOO_MANY_REQUESTS,
            "{status}"
        );
    }

    // Assert: attempts the address limit refused never reached the account's ceiling.
    let (status, body) = sign_in_from(&app, &app.client, "erin", PASSWORD, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn failed_sign_ins_never_block_an_approvers_approval(backend: Backend) {
    // Arrange: bob asks; a stranger hammers carol's account from another address and
    // from carol's own.
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let bob = person_with_totp(&app, "bob", &["developer"]).await;
    let mut carol = person_with_totp(&app, "carol", &["approver"]).await;
    let id = request_ok(&app, &bob.token, "staging", &["db:drop"], "30m").await;
    fail_until_throttled(&app, &client_from("127.0.0.2"), "carol").await;
    fail_until_throttled(&app, &app.client, "carol").await;

    // Act
    let (status, body) = approve(&app, &mut carol, &id).await;

    // Assert
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "approved", "{body}");
}

async fn a_destructive_staging_grant_is_bound_to_one_stepped_up_session(backend: Backend) {
    // Arrange: bob holds an approved staging db:drop grant; he has a second session.
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let mut bob = person_with_totp(&app, "bob", &["developer"]).await;
    let mut carol = person_with_totp(&app, "carol", &["approver"]).await;
    let id = request_ok(&app, &bob.token, "staging", &["db:drop"], "30m").await;
    let (status, body) = approve(&app, &mut carol, &id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let code = bob.code().await;
    let (status, second) = sign_in_from(&app, &app.client, "bob", PASSWORD, Some(&code)).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    let second = second["access_token"].as_str().unwrap().to_string();

    // Act + Assert: the first use needs a step-up made after the grant started.
    let (status, body) = exchange(&app, "staging", &bob.token, Some("db:drop"), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"], "insufficient_user_authentication", "{body}");
    step_up(&app, &mut bob).await;
    let (status, body) = exchange(&app, "staging", &bob.token, Some("db:drop"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // From then on the grant belongs to that session: the other one (or a copy of the
    // session file signed in elsewhere) is refused, stepped up or not.
    let (status, body) = exchange(&app, "staging", &second, Some("db:drop"), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"], "access_denied", "{body}");
    let refused: Vec<_> = app
        .audit_kinds()
        .await
        .into_iter()
        .filter(|r| r.event.kind == "token.refused")
        .map(|r| r.event.details["reason"].clone())
        .collect();
    assert!(refused.contains(&json!("step_up_required")), "{refused:?}");
    assert!(
        refused.contains(&json!("grant_bound_to_other_session")),
        "{refused:?}"
    );
}

async fn a_device_flow_login_needs_a_cli_step_up_before_it_can_approve(backend: Backend) {
    // Arrange: carol (an approver, signed in with TOTP in her browser) approves a device
    // code that someone else's program started.
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let bob = person_with_totp(&app, "bob", &["developer"]).await;
    let mut carol = person_with_totp(&app, "carol", &["approver"]).await;
    let id = request_ok(&app, &bob.token, "staging", &["db:drop"], "30m").await;
    let resp = client_from("127.0.0.3")
        .post(app.url("/oauth/device_authorization"))
        .header("user-agent", "agent-runner/2.1")
        .form(&[("client_id", airlock::domain::CLI_CLIENT_ID)])
        .send()
        .await
        .unwrap();
    let (status, device) = status_json(resp).await;
    assert_eq!(status, StatusCode::OK, "{device}");
    let browser = airlock::auth::authenticate_session(&app.state, &carol.token)
        .await
        .expect("carol's session");
    assert!(browser.session.totp_verified, "carol signed in with TOTP");
    people::decide_device(&app.state, &browser, device["user_code"].as_str().unwrap(), true)
        .await
        .expect("approved");
    let stored = app
        .store()
        .device_code_by_user_code(device["user_code"].as_str().unwrap())
        .await
        .expect("device code");
    assert_eq!(stored.client_user_agent.as_deref(), Some("agent-runner/2.1"));
    assert_eq!(stored.client_address.as_deref(), Some("127.0.0.3"));
    let resp = app
        .client
        .post(app.url("/oauth/token"))
        .form(&[
            ("grant_type", airlock::oauth::DEVICE_CODE_GRANT),
            ("device_code", device["device_code"].as_str().unwrap()),
            ("client_id", airlock::domain::CLI_CLIENT_ID),
        ])
        .send()
        .await
        .unwrap();
    let (status, tokens) = status_json(resp).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let device_token = tokens["access_token"].as_str().unwrap().to_string();

    // Act + Assert: the device-flow session may not approve ...
    let code = carol.code().await;
    let (status, body) = post(
        &app,
        &format!("/v1/escalations/{id}/approve"),
        &device_token,
        json!({ "totp": code }),
    )
    .await;
    assert!(
        status == StatusCode::FORBIDDEN || status == StatusCode::NOT_FOUND,
        "{status} {body}"
    );
    let (_, shown) = show(&app, &bob.token, &id, None).await;
    assert_eq!(shown["state"], "pending", "{shown}");

    // ... until the terminal itself confirms carol's code.
    carol.token = device_token;
    step_up(&app, &mut carol).await;
    let (status, body) = approve(&app, &mut carol, &id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "approved", "{body}");
}

#[test]
fn user_agents_are_cleaned_and_bounded_before_they_are_shown() {
    assert_eq!(
        people::clean_user_agent("curl/8.0\u{202e}txt.exe\n\u{0}x").as_deref(),
        Some("curl/8.0 txt.exe x")
    );
    assert_eq!(people::clean_user_agent(" \u{7} "), None);
    let long = "a".repeat(1_000);
    assert!(people::clean_user_agent(&long).unwrap().chars().count() <= 161);
}

both_backends!(
    totp_activation_counts_wrong_codes_and_is_throttled,
    a_pending_enrolment_is_finished_only_from_its_session_and_expires,
    a_strangers_failed_sign_ins_do_not_lock_the_person_out,
    the_account_ceiling_stops_guessing_spread_over_addresses,
    hammering_from_one_address_cannot_use_up_the_account_ceiling,
    failed_sign_ins_never_block_an_approvers_approval,
    a_destructive_staging_grant_is_bound_to_one_stepped_up_session,
    a_device_flow_login_needs_a_cli_step_up_before_it_can_approve,
);
