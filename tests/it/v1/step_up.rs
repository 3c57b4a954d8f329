//! A session alone is not enough for what matters: admin changes need a recent step-up
//! with a fresh TOTP code, a step-up expires, a destructive grant is bound to the one
//! stepped-up session that first used it, and a device-flow login may approve only
//! after the CLI itself steps up.

use airlock::people;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::*;

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
    let Some(app) = spawn_app_with(backend, |s| {
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
    app.advance(std::time::Duration::from_millis(1300));
    let (status, body) = post(&app, "/v1/users/root/disable", token, json!({})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("step_up_required"))
    );
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
    let (status, second) = status_json(sign_in(&app, "bob", PASSWORD, Some(&code)).await).await;
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
    let resp = device_poll(&app, device["device_code"].as_str().unwrap()).await;
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

crate::both_backends!(
    admin_changes_need_a_recent_step_up,
    a_step_up_expires,
    a_destructive_staging_grant_is_bound_to_one_stepped_up_session,
    a_device_flow_login_needs_a_cli_step_up_before_it_can_approve,
);
