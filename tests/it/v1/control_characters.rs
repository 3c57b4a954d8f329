//! Control and format characters in what callers send: identifiers, list filters and
//! path segments get each endpoint's normal refusal, and reasons and notes holding
//! invisible characters are refused.

use reqwest::StatusCode;
use secrecy::ExposeSecret;
use serde_json::json;

use crate::support::{
    Backend, TestApp, get, person_with_totp, post, request, request_ok, spawn_app, status_json,
};

/// Token-endpoint refusals for unknown clients, as audited.
async fn unknown_client_refusals(app: &TestApp) -> usize {
    app.audit_kinds()
        .await
        .iter()
        .filter(|r| r.event.kind == "token.refused" && r.event.details["reason"] == "unknown_client")
        .count()
}

/// NUL and other control characters in a client id, a list filter or a path segment get
/// the endpoint's normal refusal on both backends (PostgreSQL cannot even compare a text
/// holding NUL), and the token endpoint's refusal is audited.
async fn control_characters_in_identifiers_get_the_normal_refusal(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let agent = app.create_agent("dev", "ci", &["db:read"]).await;
    let bob = person_with_totp(&app, "bob", &["developer"]).await;
    let secret = agent.secret.expose_secret().to_string();
    let before = unknown_client_refusals(&app).await;

    // Token endpoint: client_id in Basic and in the form body.
    for bad in ['\0', '\u{1}', '\u{7f}'] {
        let id = format!("{}{bad}", agent.client_id);
        let basic = app
            .client
            .post(app.url("/envs/dev/token"))
            .basic_auth(&id, Some(&secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .expect("sent");
        let (status, body) = status_json(basic).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "Basic {bad:?}: {body}");
        assert_eq!(body["error"], "invalid_client", "Basic {bad:?}");
        let form = app
            .client
            .post(app.url("/envs/dev/token"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", id.as_str()),
                ("client_secret", secret.as_str()),
            ])
            .send()
            .await
            .expect("sent");
        let (status, body) = status_json(form).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "form {bad:?}: {body}");
        assert_eq!(body["error"], "invalid_client", "form {bad:?}");
    }
    assert_eq!(
        unknown_client_refusals(&app).await - before,
        6,
        "every refusal is audited as an unknown client"
    );

    // List filters and path segments: the usual 400, in each endpoint's shape.
    for bad in ["%00", "%01", "%1B"] {
        for path in [
            format!("/v1/escalations?environment=prod{bad}"),
            format!("/v1/escalations?pending=true&environment={bad}"),
            format!("/v1/grants?environment=prod{bad}"),
            format!("/v1/users/bob{bad}"),
            format!("/v1/agents/dev%2Fci{bad}"),
            format!("/v1/escalations/{bad}"),
        ] {
            let (status, body) = get(&app, &path, &bob.token).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
            assert_eq!(body["error"]["code"], "invalid_request", "{path}: {body}");
        }
        let resp = app
            .client
            .post(app.url(&format!("/envs/dev{bad}/token")))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .expect("sent");
        let (status, body) = status_json(resp).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "path env {bad}: {body}");
        assert_eq!(body["error"], "invalid_request", "path env {bad}: {body}");
        let resp = app
            .client
            .get(app.url(&format!("/.well-known/oauth-authorization-server/envs/{bad}")))
            .send()
            .await
            .expect("sent");
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "metadata {bad}");
    }

    // The same requests without the control character still work.
    let (status, body) = get(&app, "/v1/escalations?environment=prod", &bob.token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = get(&app, "/v1/grants?environment=prod", &bob.token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ok = app.token("dev", &agent, Some("db:read")).await;
    assert_eq!(ok.status(), StatusCode::OK);
}

/// Zero-width and other format characters (Unicode Cf) are refused in a reason and in a
/// decision note, like the bidirectional overrides.
async fn format_characters_in_reasons_are_refused(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let bob = person_with_totp(&app, "bob", &["developer"]).await;
    let carol = person_with_totp(&app, "carol", &["approver"]).await;
    for hidden in [
        '\u{200b}',
        '\u{200d}',
        '\u{2060}',
        '\u{feff}',
        '\u{ad}',
        '\u{202e}',
        '\u{e0041}',
    ] {
        let reason = format!("run migration{hidden} 0042 (TICKET-118)");
        let (status, body) = request(&app, &bob.token, "prod", &["db:write"], "30m", &reason).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "U+{:04X}: {body}", hidden as u32);
        assert_eq!(body["error"]["code"], "invalid_request");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("control characters"),
            "{body}"
        );
    }
    // A decision note is checked the same way.
    let id = request_ok(&app, &bob.token, "prod", &["db:write"], "30m").await;
    let (status, body) = post(
        &app,
        &format!("/v1/escalations/{id}/deny"),
        &carol.token,
        json!({ "reason": "not\u{200b} now" }),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // Plain text in any script still passes.
    let (status, body) = request(
        &app,
        &bob.token,
        "prod",
        &["db:write"],
        "30m",
        "Migration für Kunden №42 – 数据库 ✅",
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

crate::both_backends!(
    control_characters_in_identifiers_get_the_normal_refusal,
    format_characters_in_reasons_are_refused,
);
