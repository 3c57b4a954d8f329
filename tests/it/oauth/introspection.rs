//! RFC 7662 introspection: a resource server of an environment asks whether a token is
//! still good. Revoking a grant, or its end, makes the tokens minted under it inactive
//! at once (invariant 10); a disabled agent's tokens too.

use std::time::Duration;

use reqwest::StatusCode;

use crate::both_backends;
use crate::support::*;

/// A staging agent asks for `db:drop`; carol approves; the agent's token under the grant.
async fn granted_drop_token(app: &TestApp, agent: &TestAgent, carol: &mut Person) -> (String, String) {
    let bearer = access_token(app, "staging", agent, "db:read").await;
    let id = request_ok(app, &bearer, "staging", &["db:drop"], "30m").await;
    let (status, body) = approve(app, carol, &id).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (StatusCode::OK, Some("approved")),
        "{body}"
    );
    let grant = body["grant"]["id"].as_str().unwrap().to_string();
    (access_token(app, "staging", agent, "db:drop").await, grant)
}

async fn a_token_is_active_until_its_grant_is_revoked(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let resource = app.create_agent("staging", "resource-server", &["db:read"]).await;
    let worker = app.create_agent("staging", "worker", &["db:read"]).await;
    let mut carol = person_with_totp(&app, "carol", &["approver"]).await;

    let plain = access_token(&app, "staging", &worker, "db:read").await;
    let (status, body) = introspect(&app, "staging", &resource, &plain).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["active"], true, "{body}");
    assert_eq!(body["scope"], "db:read");
    assert_eq!(body["client_id"], worker.client_id.as_str());
    assert!(body.get("grant").is_none());

    let (dropper, grant) = granted_drop_token(&app, &worker, &mut carol).await;
    assert_eq!(claims(&dropper)["grant"], grant.as_str());
    let (_, body) = introspect(&app, "staging", &resource, &dropper).await;
    assert_eq!(body["active"], true, "{body}");
    assert_eq!(body["grant"], grant.as_str());
    assert_eq!(body["scope"], "db:drop");

    let (status, body) = post(
        &app,
        &format!("/v1/grants/{grant}/revoke"),
        &carol.token,
        serde_json::json!({ "reason": "migration finished" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "revoked");

    // The token minted under the grant is inactive now; the plain token is not affected.
    let (_, body) = introspect(&app, "staging", &resource, &dropper).await;
    assert_eq!(body, serde_json::json!({ "active": false }));
    let (_, body) = introspect(&app, "staging", &resource, &plain).await;
    assert_eq!(body["active"], true);
    // And no new token is minted under it.
    let (status, body) = status_json(app.token("staging", &worker, Some("db:drop")).await).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("access_denied"))
    );
}

async fn tokens_of_other_environments_and_disabled_agents_are_inactive(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let staging_rs = app.create_agent("staging", "rs", &["db:read"]).await;
    let dev_rs = app.create_agent("dev", "rs", &["db:read"]).await;
    let worker = app.create_agent("staging", "worker", &["db:read"]).await;
    let token = access_token(&app, "staging", &worker, "db:read").await;

    // Asked at dev by a dev resource server: a staging token is not active there.
    let (status, body) = introspect(&app, "dev", &dev_rs, &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, serde_json::json!({ "active": false }));
    // A staging resource server cannot introspect at dev (invariant 2).
    let (status, body) = introspect(&app, "dev", &staging_rs, &token).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );
    // Garbage is inactive, never an error that says why.
    let (_, body) = introspect(&app, "staging", &staging_rs, "not-a-token").await;
    assert_eq!(body, serde_json::json!({ "active": false }));
    // Without client authentication: invalid_client.
    let resp = app
        .client
        .post(app.url("/envs/staging/introspect"))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // Disabling the agent makes its live token inactive at once.
    airlock::agents::set_disabled(app.store(), &worker.client_id, true, "test")
        .await
        .expect("disabled");
    let (_, body) = introspect(&app, "staging", &staging_rs, &token).await;
    assert_eq!(body, serde_json::json!({ "active": false }));
}

async fn a_grant_that_ends_makes_its_tokens_inactive_and_is_audited(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |s| {
        s.environments
            .get_mut("staging")
            .unwrap()
            .approval
            .max_grant_duration = Duration::from_secs(3);
    })
    .await
    else {
        return;
    };
    let resource = app.create_agent("staging", "rs", &["db:read"]).await;
    let worker = app.create_agent("staging", "worker", &["db:read"]).await;
    let mut carol = person_with_totp(&app, "carol", &["approver"]).await;
    let (token, grant) = granted_drop_token(&app, &worker, &mut carol).await;
    let c = claims(&token);
    let grant_view = app
        .store()
        .grant(grant.parse().unwrap())
        .await
        .expect("grant stored");
    assert!(
        c["exp"].as_i64().unwrap() <= grant_view.ends_at.unix_timestamp(),
        "the token never outlives its grant"
    );
    // Wait for the grant's end, and for the background task to record it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let ended = app
            .audit_kinds()
            .await
            .iter()
            .any(|e| e.event.kind == "grant.ended" && e.event.subject.as_deref() == Some(grant.as_str()));
        if ended {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "grant.ended recorded in time"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, body) = introspect(&app, "staging", &resource, &token).await;
    assert_eq!(body["active"], false);
    let (status, _) = status_json(app.token("staging", &worker, Some("db:drop")).await).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

async fn a_persons_token_ends_with_the_session_it_came_from(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let resource = app.create_agent("staging", "rs", &["db:read"]).await;
    let bob = person_with_totp(&app, "bob", &["developer"]).await;
    let (status, body) = exchange(&app, "staging", &bob.token, Some("db:read"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["access_token"].as_str().unwrap().to_string();
    let (_, body) = introspect(&app, "staging", &resource, &token).await;
    assert_eq!(body["active"], true, "{body}");
    assert_eq!(body["sub"], user_id(&app, "bob").await);
    assert_eq!(body["username"], "bob");

    let resp = app
        .client
        .delete(app.url("/v1/sessions/current"))
        .bearer_auth(&bob.token)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "logout: {}", resp.status());
    let (_, body) = introspect(&app, "staging", &resource, &token).await;
    assert_eq!(
        body,
        serde_json::json!({ "active": false }),
        "logout ends the session's tokens"
    );
}

both_backends!(
    a_persons_token_ends_with_the_session_it_came_from,
    a_token_is_active_until_its_grant_is_revoked,
    tokens_of_other_environments_and_disabled_agents_are_inactive,
    a_grant_that_ends_makes_its_tokens_inactive_and_is_audited,
);
