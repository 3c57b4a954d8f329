//! TOTP enrolment over `/v1/me/totp`: it needs the password, not just a session; wrong
//! activation codes are counted and throttled; and a pending enrolment is finished only
//! from the session that began it, before it expires.

use std::time::Duration;

use airlock::people;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::*;

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

/// Start enrolment from `token`'s session; the new secret.
async fn begin_enrolment(app: &TestApp, token: &str) -> Vec<u8> {
    let (status, body) = post(app, "/v1/me/totp", token, json!({ "password": PASSWORD })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    data_encoding::BASE32_NOPAD
        .decode(body["secret"].as_str().expect("secret").as_bytes())
        .expect("base32")
}

async fn activate(app: &TestApp, token: &str, code: &str) -> (StatusCode, Value) {
    post(app, "/v1/me/totp/activate", token, json!({ "code": code })).await
}

async fn totp_activation_counts_wrong_codes_and_is_throttled(backend: Backend) {
    // Arrange: a person with a pending enrolment (as with a copied session file).
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    person(&app, "dora", &["developer"]).await;
    let (status, session) = status_json(sign_in(&app, "dora", PASSWORD, None).await).await;
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
        .json(&json!({ "code": code_now(&secret) }))
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
    person(&app, "dora", &["developer"]).await;
    let (_, a) = status_json(sign_in(&app, "dora", PASSWORD, None).await).await;
    let (_, b) = status_json(sign_in(&app, "dora", PASSWORD, None).await).await;
    let a = a["access_token"].as_str().unwrap().to_string();
    let b = b["access_token"].as_str().unwrap().to_string();

    // Act + Assert: another session cannot finish A's enrolment, even with the code.
    let secret = begin_enrolment(&app, &a).await;
    let (status, body) = activate(&app, &b, &code_now(&secret)).await;
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
    app.advance(Duration::from_millis(3_200));
    let (status, body) = activate(&app, &a, &code_now(&secret)).await;
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
    let (status, body) = activate(&app, &a, &code_now(&secret)).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert!(
        people::find_user(&app.state, "dora")
            .await
            .unwrap()
            .totp_enrolled()
    );
}

crate::both_backends!(
    a_session_alone_cannot_enrol_totp,
    totp_activation_counts_wrong_codes_and_is_throttled,
    a_pending_enrolment_is_finished_only_from_its_session_and_expires,
);
