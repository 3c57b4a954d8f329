//! Findings of the issue-3 review, each pinned by a test: a copied session alone cannot
//! enrol TOTP or change who may do what, and bursts cannot slip past the throttle.

use airlock::people;
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::harness::{Backend, TestApp, spawn_app};

const PASSWORD: &str = "correct horse battery staple";

async fn person(app: &TestApp, name: &str, roles: &[&str]) -> airlock::domain::User {
    people::create_user(
        &app.state,
        "test",
        name,
        &SecretString::from(PASSWORD.to_string()),
        roles.iter().map(|r| r.to_string()).collect(),
    )
    .await
    .unwrap()
}

/// Enrol with the previous step's code; returns the secret and that step.
async fn enrol(app: &TestApp, user: &airlock::domain::User) -> (Vec<u8>, i64) {
    app.enrol_totp(&user.username, PASSWORD).await
}

async fn sign_in(app: &TestApp, username: &str, password: &str, code: Option<&str>) -> reqwest::Response {
    let mut body = json!({ "username": username, "password": password });
    if let Some(c) = code {
        body["totp_code"] = json!(c);
    }
    app.client
        .post(app.url("/v1/sessions"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn post(app: &TestApp, path: &str, bearer: &str, body: Value) -> (StatusCode, Value) {
    let r = app
        .client
        .post(app.url(path))
        .bearer_auth(bearer)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn a_session_alone_cannot_enrol_totp(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    person(&app, "root", &["admin"]).await;
    let s: Value = sign_in(&app, "root", PASSWORD, None).await.json().await.unwrap();
    let token = s["access_token"].as_str().unwrap();

    // What an agent holding the session file would try.
    let (status, body) = post(&app, "/v1/me/totp", token, json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = post(
        &app,
        "/v1/me/totp",
        token,
        json!({ "password": "guess guess guess" }),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        !people::find_user(&app.state, "root")
            .await
            .unwrap()
            .totp_enrolled()
    );
    assert!(
        people::find_user(&app.state, "root")
            .await
            .unwrap()
            .totp_pending_sealed
            .is_none()
    );

    // The person, who knows the password, can.
    let (status, body) = post(&app, "/v1/me/totp", token, json!({ "password": PASSWORD })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["otpauth_uri"].as_str().unwrap().starts_with("otpauth://"));
}

async fn admin_changes_need_a_recent_step_up(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let root = person(&app, "root", &["admin"]).await;
    let (secret, step) = enrol(&app, &root).await;
    let code = |s| airlock::totp::code_at(&secret, s);
    let s: Value = sign_in(&app, "root", PASSWORD, Some(&code(step + 1)))
        .await
        .json()
        .await
        .unwrap();
    let token = s["access_token"].as_str().unwrap();

    // Reading works with a TOTP-verified session; changing needs a step-up.
    let r = app
        .client
        .get(app.url("/v1/users"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let new_user = json!({ "username": "mallory", "password": PASSWORD, "roles": ["approver"] });
    let (status, body) = post(&app, "/v1/users", token, new_user.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"]["code"], "step_up_required", "{body}");
    let agent = json!({ "name": "prod-bot", "environment": "prod", "scopes": ["db:write"] });
    let (status, body) = post(&app, "/v1/agents", token, agent.clone()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("step_up_required"))
    );
    assert!(
        people::find_user(&app.state, "mallory").await.is_err(),
        "nothing was created"
    );

    // A wrong code does not step up; a fresh one does.
    let (status, _) = post(&app, "/v1/me/step-up", token, json!({ "code": "000000" })).await;
    assert!(status == StatusCode::UNAUTHORIZED || status == StatusCode::TOO_MANY_REQUESTS);
    let (status, body) = post(&app, "/v1/me/step-up", token, json!({ "code": code(step + 2) })).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, body) = post(&app, "/v1/users", token, new_user).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(
        app.audit_kinds()
            .await
            .iter()
            .any(|e| e.event.kind == "session.stepped_up")
    );
}

async fn a_step_up_expires(backend: Backend) {
    let Some(app) = crate::harness::spawn_app_with(backend, |s| {
        s.auth.step_up_lifetime = std::time::Duration::from_secs(1);
    })
    .await
    else {
        return;
    };
    let root = person(&app, "root", &["admin"]).await;
    let (secret, step) = enrol(&app, &root).await;
    let s: Value = sign_in(
        &app,
        "root",
        PASSWORD,
        Some(&airlock::totp::code_at(&secret, step + 1)),
    )
    .await
    .json()
    .await
    .unwrap();
    let token = s["access_token"].as_str().unwrap();
    let (status, _) = post(
        &app,
        "/v1/me/step-up",
        token,
        json!({ "code": airlock::totp::code_at(&secret, step + 2) }),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    let (status, body) = post(&app, "/v1/users/root/disable", token, json!({})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("step_up_required"))
    );
}

async fn a_concurrent_burst_cannot_slip_past_the_throttle(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    person(&app, "alice", &["developer"]).await;
    let mut burst = tokio::task::JoinSet::new();
    for i in 0..24 {
        let (client, url) = (app.client.clone(), app.url("/v1/sessions"));
        burst.spawn(async move {
            let body = json!({ "username": "alice", "password": format!("wrong guess number {i}") });
            client.post(url).json(&body).send().await.unwrap().status()
        });
    }
    let mut verified = 0;
    let mut throttled = 0;
    while let Some(status) = burst.join_next().await {
        match status.unwrap() {
            StatusCode::UNAUTHORIZED => verified += 1,
            StatusCode::TOO_MANY_REQUESTS => throttled += 1,
            other => panic!("unexpected {other}"),
        }
    }
    let free = app.state.settings.auth.throttle_free_failures as usize;
    // The free attempts, plus one let through as the block starts: never the whole burst.
    assert!(verified <= free + 1, "{verified} guesses were checked");
    assert_eq!(verified + throttled, 24);
}

async fn spraying_many_accounts_from_one_address_is_throttled(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    for name in ["a1", "a2", "a3", "a4", "a5", "a6"] {
        person(&app, name, &["developer"]).await;
    }
    let mut statuses = Vec::new();
    for name in ["a1", "a2", "a3", "a4", "a5", "a6"] {
        statuses.push(sign_in(&app, name, "a wrong password here", None).await.status());
    }
    // Each account saw one failure only; the address saw six.
    assert!(statuses.contains(&StatusCode::TOO_MANY_REQUESTS), "{statuses:?}");
    assert_eq!(statuses[0], StatusCode::UNAUTHORIZED);
}

crate::both_backends!(
    a_session_alone_cannot_enrol_totp,
    admin_changes_need_a_recent_step_up,
    a_step_up_expires,
    a_concurrent_burst_cannot_slip_past_the_throttle,
    spraying_many_accounts_from_one_address_is_throttled,
);
