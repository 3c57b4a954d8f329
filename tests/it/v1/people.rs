//! People over HTTP: password sign-in, sessions and their ends, refresh rotation with
//! reuse detection, TOTP, throttling, token exchange for environment tokens, the admin
//! API, the device flow's HTTP side, discovery and the OpenAPI document.

use std::time::Duration;

use airlock::domain::User;
use airlock::people;
use airlock::totp::code_at;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::support::*;

const WRONG: &str = "wrong horse battery staple";

// --- helpers -------------------------------------------------------------------------

fn token_of(session: &Value) -> &str {
    session["access_token"].as_str().expect("access_token")
}

async fn me_status(app: &TestApp, bearer: &str) -> StatusCode {
    app.get("/v1/me", bearer).await.status()
}

async fn audit(app: &TestApp) -> Vec<airlock::domain::AuditRecord> {
    app.audit_kinds().await
}

async fn audit_has(app: &TestApp, kind: &str) -> bool {
    audit(app).await.iter().any(|e| e.event.kind == kind)
}

// --- 1. sessions ---------------------------------------------------------------------

async fn a_password_sign_in_gives_a_session_that_no_environment_accepts(backend: Backend) {
    // Arrange
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    person(&app, "alice", &["developer"]).await;

    // Act
    let resp = sign_in(&app, "Alice", PASSWORD, None).await;

    // Assert
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let s: Value = resp.json().await.unwrap();
    assert_eq!(s["token_type"], "Bearer");
    assert_eq!(s["username"], "alice");
    assert_eq!(s["expires_in"], 300, "session_access_ttl is 5 minutes");
    assert!(
        s["refresh_token"]
            .as_str()
            .unwrap()
            .starts_with("airlock_refresh_")
    );
    let access = token_of(&s);

    let (status, me) = status_and_json(app.get("/v1/me", access).await).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["username"], "alice");
    assert_eq!(me["roles"], json!(["developer"]));
    assert_eq!(me["totp_enrolled"], false);
    assert_eq!(me["session"]["id"], s["session_id"]);
    assert!(me.get("password_hash").is_none());

    // Signed by Airlock's own key, for Airlock only.
    let header = jwt_part(access, 0);
    let claims = jwt_part(access, 1);
    assert_eq!(header["typ"], "airlock-session+jwt");
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(claims["aud"], "airlock");
    assert_eq!(claims["iss"], app.base.as_str());
    assert_eq!(claims["username"], "alice");
    let session_keys = jwks_at(&app, "/oauth/jwks.json").await;
    validate(access, &session_keys, &app.base, "airlock").expect("valid against the session JWKS");

    // No environment accepts it: neither its key nor any key of staging verifies it.
    let staging_keys = jwks_at(&app, "/envs/staging/jwks.json").await;
    assert!(
        validate(
            access,
            &staging_keys,
            &app.url("/envs/staging"),
            "airlock:staging"
        )
        .is_err(),
        "a session token must fail staging validation"
    );
    for jwk in &staging_keys.keys {
        let key = DecodingKey::from_jwk(jwk).unwrap();
        let mut strict = Validation::new(Algorithm::EdDSA);
        strict.validate_aud = false;
        assert!(
            decode::<Value>(access, &key, &strict).is_err(),
            "no staging key verifies the session signature"
        );
    }
    for k in &session_keys.keys {
        assert!(
            staging_keys.find(k.common.key_id.as_deref().unwrap()).is_none(),
            "the session key is not published by staging"
        );
    }

    // And an environment token is no session.
    let env_token = app.exchange("staging", access, Some("db:read"), None).await;
    let env_token: Value = env_token.json().await.unwrap();
    let env_token = env_token["access_token"].as_str().unwrap();
    expect_api_error(
        app.get("/v1/me", env_token).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    )
    .await;
    expect_api_error(
        app.client.get(app.url("/v1/me")).send().await.unwrap(),
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    )
    .await;
    assert!(audit_has(&app, "session.created").await);
}

// --- 2. token exchange ---------------------------------------------------------------

async fn a_developer_exchanges_the_session_for_a_staging_token_within_the_role(backend: Backend) {
    // Arrange
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    person(&app, "alice", &["developer"]).await;
    let s = session(&app, "alice", None).await;
    let access = token_of(&s);

    // Act
    let resp = app.exchange("staging", access, Some("db:read"), None).await;

    // Assert
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "db:read");
    assert_eq!(body["expires_in"], 600, "staging default_ttl");
    assert_eq!(
        body["issued_token_type"], "urn:ietf:params:oauth:token-type:access_token",
        "RFC 8693 section 2.2.1"
    );
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(jwt_part(token, 0)["typ"], "at+jwt");
    let keys = jwks_at(&app, "/envs/staging/jwks.json").await;
    let claims = validate(token, &keys, &app.url("/envs/staging"), "airlock:staging").expect("valid");
    assert_eq!(claims["sub"], user_id(&app, "alice").await);
    assert_eq!(claims["username"], "alice");
    assert_eq!(claims["client_id"], "airlock-cli");
    assert_eq!(claims["scope"], "db:read");
    assert_eq!(claims["env"], "staging");
    assert!(claims.get("act").is_none(), "no actor was named");
    // It is a staging token only.
    let prod_keys = jwks_at(&app, "/envs/prod/jwks.json").await;
    assert!(validate(token, &prod_keys, &app.url("/envs/prod"), "airlock:prod").is_err());
    let issued = audit(&app)
        .await
        .into_iter()
        .find(|e| e.event.kind == "token.issued")
        .expect("issuance audited");
    assert_eq!(issued.event.details["jti"], claims["jti"]);
    assert_eq!(issued.event.details["grant_type"], "token-exchange");
    assert_eq!(issued.event.actor, "user:alice");
}

async fn a_token_for_a_launched_process_names_it_in_act_and_in_the_audit_trail(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    person(&app, "alice", &["developer"]).await;
    let s = session(&app, "alice", None).await;

    let resp = app
        .exchange("staging", token_of(&s), Some("db:read"), Some("claude"))
        .await;

    let (status, body) = status_and_json(resp).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["access_token"].as_str().unwrap();
    let keys = jwks_at(&app, "/envs/staging/jwks.json").await;
    let claims = validate(token, &keys, &app.url("/envs/staging"), "airlock:staging").unwrap();
    assert_eq!(claims["sub"], user_id(&app, "alice").await);
    assert_eq!(claims["username"], "alice");
    assert_eq!(claims["act"], json!({ "sub": "process:claude" }));
    let issued = audit(&app)
        .await
        .into_iter()
        .find(|e| e.event.kind == "token.issued")
        .expect("issuance audited");
    assert_eq!(issued.event.details["act"], "process:claude");
    assert_eq!(issued.event.details["jti"], claims["jti"]);
    // An actor token of another type is refused.
    let resp = app
        .client
        .post(app.url("/envs/staging/token"))
        .form(&[
            ("grant_type", EXCHANGE),
            ("subject_token", token_of(&s)),
            ("subject_token_type", ACCESS_TOKEN_TYPE),
            ("actor_token", "claude"),
            ("actor_token_type", ACCESS_TOKEN_TYPE),
        ])
        .send()
        .await
        .unwrap();
    expect_oauth_error(resp, StatusCode::BAD_REQUEST, "invalid_request").await;
}

async fn production_needs_an_escalation(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    person(&app, "alice", &["developer"]).await;
    let s = session(&app, "alice", None).await;

    let resp = app.exchange("prod", token_of(&s), Some("db:read"), None).await;

    let body = expect_oauth_error(resp, StatusCode::FORBIDDEN, "access_denied").await;
    let description = body["error_description"].as_str().unwrap();
    assert!(description.contains("airlock escalate"), "{description}");
    assert!(description.contains("--env prod"), "{description}");
    assert!(body.get("access_token").is_none());
    // Also without a scope parameter.
    let resp = app.exchange("prod", token_of(&s), None, None).await;
    expect_oauth_error(resp, StatusCode::FORBIDDEN, "access_denied").await;
    let events = audit(&app).await;
    assert!(!events.iter().any(|e| e.event.kind == "token.issued"));
    let refused = events
        .iter()
        .find(|e| e.event.kind == "token.refused")
        .expect("refusal audited");
    assert_eq!(refused.event.details["reason"], "needs_escalation");
    assert_eq!(refused.event.environment.as_deref(), Some("prod"));
}

async fn a_destructive_scope_needs_an_escalation_even_in_dev(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |s| {
        s.roles
            .get_mut("developer")
            .unwrap()
            .tokens
            .insert("dev".into(), vec!["db:read".into(), "db:drop".into()]);
    })
    .await
    else {
        return;
    };
    person(&app, "alice", &["developer"]).await;
    let s = session(&app, "alice", None).await;

    let resp = app
        .exchange("dev", token_of(&s), Some("db:read db:drop"), None)
        .await;

    let body = expect_oauth_error(resp, StatusCode::FORBIDDEN, "access_denied").await;
    let description = body["error_description"].as_str().unwrap();
    assert!(description.contains("airlock escalate"), "{description}");
    assert!(description.contains("db:drop"), "{description}");
    // Without a scope, the destructive one is not a default.
    let (status, body) = status_and_json(app.exchange("dev", token_of(&s), None, None).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["scope"], "db:read");
}

async fn an_environment_the_role_does_not_give_is_access_denied(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |s| {
        s.roles.get_mut("developer").unwrap().tokens.remove("staging");
    })
    .await
    else {
        return;
    };
    person(&app, "alice", &["developer"]).await;
    let approver = person(&app, "carol", &["approver"]).await;
    let (secret, step) = enrol(&app, &approver).await;
    let alice = session(&app, "alice", None).await;
    let carol = session(&app, "carol", Some(&code_at(&secret, step + 1))).await;

    let resp = app
        .exchange("staging", token_of(&alice), Some("db:read"), None)
        .await;

    let body = expect_oauth_error(resp, StatusCode::FORBIDDEN, "access_denied").await;
    assert!(
        body["error_description"].as_str().unwrap().contains("staging"),
        "{body}"
    );
    // The role still gives dev.
    let (status, body) =
        status_and_json(app.exchange("dev", token_of(&alice), Some("db:read"), None).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // An approver, even with TOTP, gets no environment tokens from that role.
    for env in ["dev", "staging"] {
        let resp = app.exchange(env, token_of(&carol), Some("db:read"), None).await;
        expect_oauth_error(resp, StatusCode::FORBIDDEN, "access_denied").await;
    }
    let reasons: Vec<String> = audit(&app)
        .await
        .iter()
        .filter(|e| e.event.kind == "token.refused")
        .map(|e| e.event.details["reason"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        reasons.iter().any(|r| r == "no_role_for_environment"),
        "{reasons:?}"
    );
}

async fn a_scope_outside_the_role_is_invalid_scope_and_a_bad_session_invalid_grant(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    person(&app, "alice", &["developer"]).await;
    let s = session(&app, "alice", None).await;

    // staging gives developers db:read and db:write, not db:migrate.
    let resp = app
        .exchange("staging", token_of(&s), Some("db:migrate"), None)
        .await;
    let body = expect_oauth_error(resp, StatusCode::BAD_REQUEST, "invalid_scope").await;
    assert!(
        body["error_description"].as_str().unwrap().contains("db:migrate"),
        "{body}"
    );
    let resp = app.exchange("staging", token_of(&s), Some("db:nope"), None).await;
    expect_oauth_error(resp, StatusCode::BAD_REQUEST, "invalid_scope").await;

    for garbage in ["garbage", "a.b.c", "eyJhbGciOiJub25lIn0.e30."] {
        let resp = app.exchange("staging", garbage, Some("db:read"), None).await;
        expect_oauth_error(resp, StatusCode::BAD_REQUEST, "invalid_grant").await;
    }
    // An environment token is not a subject token.
    let (_, env_token) =
        status_and_json(app.exchange("staging", token_of(&s), Some("db:read"), None).await).await;
    let resp = app
        .exchange(
            "staging",
            env_token["access_token"].as_str().unwrap(),
            Some("db:read"),
            None,
        )
        .await;
    expect_oauth_error(resp, StatusCode::BAD_REQUEST, "invalid_grant").await;
    // The wrong subject_token_type is refused.
    let resp = app
        .client
        .post(app.url("/envs/staging/token"))
        .form(&[
            ("grant_type", EXCHANGE),
            ("subject_token", token_of(&s)),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
        ])
        .send()
        .await
        .unwrap();
    expect_oauth_error(resp, StatusCode::BAD_REQUEST, "invalid_request").await;
}

// --- 3. refresh rotation -------------------------------------------------------------

async fn a_refresh_token_rotates_and_a_reused_one_ends_the_session(backend: Backend) {
    // Arrange
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    person(&app, "alice", &["developer"]).await;
    let s = session(&app, "alice", None).await;
    let first = s["refresh_token"].as_str().unwrap().to_string();

    // Act: rotate once.
    let resp = refresh(&app, &first).await;

    // Assert
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let rotated: Value = resp.json().await.unwrap();
    let second = rotated["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(second, first, "a new refresh token every time");
    assert_eq!(rotated["session_id"], s["session_id"]);
    let current = token_of(&rotated).to_string();
    assert_eq!(me_status(&app, &current).await, StatusCode::OK);
    assert!(audit_has(&app, "session.refreshed").await);

    // Act: the used one comes back.
    let resp = refresh(&app, &first).await;

    // Assert: refused, and the whole session is over.
    let body = expect_oauth_error(resp, StatusCode::BAD_REQUEST, "invalid_grant").await;
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("already used"),
        "{body}"
    );
    assert_eq!(me_status(&app, &current).await, StatusCode::UNAUTHORIZED);
    assert_eq!(me_status(&app, token_of(&s)).await, StatusCode::UNAUTHORIZED);
    expect_oauth_error(
        refresh(&app, &second).await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
    )
    .await;
    let resp = app.exchange("staging", &current, Some("db:read"), None).await;
    expect_oauth_error(resp, StatusCode::BAD_REQUEST, "invalid_grant").await;
    let events = audit(&app).await;
    let reuse = events
        .iter()
        .find(|e| e.event.kind == "session.refresh_reuse")
        .expect("reuse audited");
    assert_eq!(reuse.event.subject.as_deref(), s["session_id"].as_str());
    let all = serde_json::to_string(&events).unwrap();
    assert!(
        !all.contains(&first) && !all.contains(&second),
        "no refresh token in the audit trail"
    );
    // Signing in again starts a new session.
    let again = session(&app, "alice", None).await;
    assert_eq!(me_status(&app, token_of(&again)).await, StatusCode::OK);
}

async fn the_token_endpoint_refuses_other_clients_and_grants(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    person(&app, "alice", &["developer"]).await;
    let s = session(&app, "alice", None).await;
    let rt = s["refresh_token"].as_str().unwrap();

    let resp = oauth_token(
        &app,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt),
            ("client_id", "other"),
        ],
    )
    .await;
    expect_oauth_error(resp, StatusCode::UNAUTHORIZED, "invalid_client").await;
    let resp = oauth_token(&app, &[("grant_type", "refresh_token"), ("refresh_token", rt)]).await;
    expect_oauth_error(resp, StatusCode::UNAUTHORIZED, "invalid_client").await;
    let resp = oauth_token(&app, &[("grant_type", "password"), ("client_id", "airlock-cli")]).await;
    expect_oauth_error(resp, StatusCode::BAD_REQUEST, "unsupported_grant_type").await;
    let resp = oauth_token(
        &app,
        &[("grant_type", "refresh_token"), ("client_id", "airlock-cli")],
    )
    .await;
    expect_oauth_error(resp, StatusCode::BAD_REQUEST, "invalid_request").await;
    let resp = refresh(&app, "airlock_refresh_made-up").await;
    expect_oauth_error(resp, StatusCode::BAD_REQUEST, "invalid_grant").await;
    // None of that spent the real refresh token.
    assert_eq!(refresh(&app, rt).await.status(), StatusCode::OK);
}

// --- 4. logout -----------------------------------------------------------------------

async fn logout_ends_the_session_for_every_use(backend: Backend) {
    // Arrange
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    person(&app, "alice", &["developer"]).await;
    let s = session(&app, "alice", None).await;
    let other = session(&app, "alice", None).await;

    // Act
    let resp = app
        .client
        .delete(app.url("/v1/sessions/current"))
        .bearer_auth(token_of(&s))
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    expect_api_error(
        app.get("/v1/me", token_of(&s)).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    )
    .await;
    let resp = app.exchange("staging", token_of(&s), Some("db:read"), None).await;
    expect_oauth_error(resp, StatusCode::BAD_REQUEST, "invalid_grant").await;
    let resp = refresh(&app, s["refresh_token"].as_str().unwrap()).await;
    expect_oauth_error(resp, StatusCode::BAD_REQUEST, "invalid_grant").await;
    // Logging out again is not possible without a session.
    let resp = app
        .client
        .delete(app.url("/v1/sessions/current"))
        .bearer_auth(token_of(&s))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // Only that session ended.
    assert_eq!(me_status(&app, token_of(&other)).await, StatusCode::OK);
    let revoked = audit(&app)
        .await
        .into_iter()
        .find(|e| e.event.kind == "session.revoked")
        .expect("logout audited");
    assert_eq!(revoked.event.subject.as_deref(), s["session_id"].as_str());
}

// --- 5. disabled person --------------------------------------------------------------

async fn disabling_a_person_ends_their_sessions_at_once_and_sign_in_fails_alike(backend: Backend) {
    // Arrange
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let admin = admin_session(&app).await;
    person(&app, "bob", &["developer"]).await;
    let bob = session(&app, "bob", None).await;
    assert_eq!(me_status(&app, token_of(&bob)).await, StatusCode::OK);
    let (_, wrong_password) = status_and_json(sign_in(&app, "bob", WRONG, None).await).await;

    // Act
    let resp = app.post_json("/v1/users/bob/disable", &admin, json!({})).await;

    // Assert
    let (status, body) = status_and_json(resp).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["disabled"], true);
    assert_eq!(me_status(&app, token_of(&bob)).await, StatusCode::UNAUTHORIZED);
    let resp = app
        .exchange("staging", token_of(&bob), Some("db:read"), None)
        .await;
    expect_oauth_error(resp, StatusCode::BAD_REQUEST, "invalid_grant").await;
    let resp = refresh(&app, bob["refresh_token"].as_str().unwrap()).await;
    expect_oauth_error(resp, StatusCode::BAD_REQUEST, "invalid_grant").await;
    let (status, body) = status_and_json(sign_in(&app, "bob", PASSWORD, None).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "invalid_credentials");
    assert_eq!(
        body, wrong_password,
        "a disabled account answers as a wrong password does"
    );
    let events = audit(&app).await;
    assert!(events.iter().any(|e| e.event.kind == "user.disabled"
        && e.event.actor == "user:root"
        && e.event.subject.as_deref() == Some("bob")));
    assert!(
        events
            .iter()
            .any(|e| e.event.kind == "login.failed" && e.event.details["reason"] == "disabled")
    );
    // An admin cannot disable themselves; enabling bob lets him sign in again.
    let resp = app.post_json("/v1/users/root/disable", &admin, json!({})).await;
    expect_api_error(resp, StatusCode::CONFLICT, "conflict").await;
    let resp = app.post_json("/v1/users/bob/enable", &admin, json!({})).await;
    assert_eq!(resp.status(), StatusCode::OK);
    session(&app, "bob", None).await;
}

// --- 6. expired sessions -------------------------------------------------------------

async fn an_idle_session_ends(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |s| {
        s.auth.session_access_ttl = Duration::from_secs(3600);
        s.auth.session_idle_timeout = Duration::from_secs(2);
        s.auth.session_lifetime = Duration::from_secs(3600);
    })
    .await
    else {
        return;
    };
    person(&app, "alice", &["developer"]).await;
    let s = session(&app, "alice", None).await;
    assert_eq!(me_status(&app, token_of(&s)).await, StatusCode::OK);

    app.advance(Duration::from_millis(2500));

    // The access token itself is still within its hour: the session's idle limit ends it.
    let exp = jwt_part(token_of(&s), 1)["exp"].as_i64().unwrap();
    assert!(exp > time::OffsetDateTime::now_utc().unix_timestamp() + 60);
    assert_eq!(me_status(&app, token_of(&s)).await, StatusCode::UNAUTHORIZED);
    let resp = refresh(&app, s["refresh_token"].as_str().unwrap()).await;
    expect_oauth_error(resp, StatusCode::BAD_REQUEST, "invalid_grant").await;
    let resp = app.exchange("staging", token_of(&s), Some("db:read"), None).await;
    expect_oauth_error(resp, StatusCode::BAD_REQUEST, "invalid_grant").await;
}

async fn a_session_ends_at_its_absolute_lifetime_even_when_refreshed(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |s| {
        s.auth.session_access_ttl = Duration::from_secs(1);
        s.auth.session_idle_timeout = Duration::from_secs(3600);
        s.auth.session_lifetime = Duration::from_secs(3);
    })
    .await
    else {
        return;
    };
    person(&app, "alice", &["developer"]).await;
    let s = session(&app, "alice", None).await;
    assert!(s["expires_in"].as_u64().unwrap() <= 1);

    // The 1 s access token expires; a refresh gives a new one while the session lives.
    app.advance(Duration::from_millis(1500));
    assert_eq!(me_status(&app, token_of(&s)).await, StatusCode::UNAUTHORIZED);
    let (status, rotated) = status_and_json(refresh(&app, s["refresh_token"].as_str().unwrap()).await).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    assert_eq!(me_status(&app, token_of(&rotated)).await, StatusCode::OK);

    // Past the absolute lifetime nothing works, refreshed or not.
    app.advance(Duration::from_millis(2000));
    assert_eq!(
        me_status(&app, token_of(&rotated)).await,
        StatusCode::UNAUTHORIZED
    );
    let resp = refresh(&app, rotated["refresh_token"].as_str().unwrap()).await;
    expect_oauth_error(resp, StatusCode::BAD_REQUEST, "invalid_grant").await;
}

// --- 7. TOTP at sign-in --------------------------------------------------------------

async fn an_enrolled_person_needs_a_fresh_totp_code_that_cannot_be_replayed(backend: Backend) {
    // Arrange
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let alice = person(&app, "alice", &["developer"]).await;
    let (secret, step) = enrol(&app, &alice).await;
    let good = code_at(&secret, step + 1);
    let near: Vec<String> = (step - 1..=step + 3).map(|s| code_at(&secret, s)).collect();
    let wrong = ["000000", "111111", "222222", "333333", "444444"]
        .into_iter()
        .find(|c| !near.iter().any(|n| n == c))
        .unwrap();

    // Act + Assert: no code.
    let resp = sign_in(&app, "alice", PASSWORD, None).await;
    let body = expect_api_error(resp, StatusCode::UNAUTHORIZED, "totp_required").await;
    assert!(body.get("access_token").is_none());

    // A wrong code.
    let resp = sign_in(&app, "alice", PASSWORD, Some(wrong)).await;
    expect_api_error(resp, StatusCode::UNAUTHORIZED, "totp_invalid").await;

    // A correct code from the wrong password is still the password answer.
    let resp = sign_in(&app, "alice", WRONG, Some(&good)).await;
    expect_api_error(resp, StatusCode::UNAUTHORIZED, "invalid_credentials").await;

    // The code of the step used to activate is spent already.
    let resp = sign_in(&app, "alice", PASSWORD, Some(&code_at(&secret, step))).await;
    expect_api_error(resp, StatusCode::UNAUTHORIZED, "totp_invalid").await;

    // A correct, fresh code works once.
    let s = session(&app, "alice", Some(&good)).await;
    assert_eq!(me_status(&app, token_of(&s)).await, StatusCode::OK);
    let resp = sign_in(&app, "alice", PASSWORD, Some(&good)).await;
    expect_api_error(resp, StatusCode::UNAUTHORIZED, "totp_invalid").await;

    let reasons: Vec<String> = audit(&app)
        .await
        .iter()
        .filter(|e| e.event.kind == "login.failed")
        .map(|e| e.event.details["reason"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        reasons.iter().any(|r| r == "wrong_or_replayed_totp"),
        "{reasons:?}"
    );
}

// --- 8. throttling -------------------------------------------------------------------

fn retry_after(resp: &reqwest::Response) -> u64 {
    resp.headers()
        .get("retry-after")
        .expect("a throttled sign-in carries Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After in seconds")
}

async fn failed_sign_ins_are_throttled_alike_and_audited_without_the_password(backend: Backend) {
    // Arrange
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    person(&app, "alice", &["developer"]).await;

    // Act + Assert: the free failures are plain 401s, unknown names answered alike.
    let (status, wrong_password) = status_and_json(sign_in(&app, "alice", WRONG, None).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong_password["error"]["code"], "invalid_credentials");
    let (status, unknown) = status_and_json(sign_in(&app, "nobody", WRONG, None).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        unknown, wrong_password,
        "an unknown name answers as a wrong password does"
    );
    let (status, third) = status_and_json(sign_in(&app, "alice", WRONG, None).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(third, wrong_password);

    // Further failures are delayed, with growing waits; wait them out until the current
    // block is long enough to try the right password inside it.
    let mut tries = 0;
    loop {
        tries += 1;
        assert!(tries < 20, "throttling never reached a 2 s block");
        let resp = sign_in(&app, "alice", WRONG, None).await;
        if resp.status() == StatusCode::UNAUTHORIZED {
            // Not blocked (yet, or any more): this failure makes the next block longer.
            continue;
        }
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        let wait = retry_after(&resp);
        assert!(wait >= 1);
        let body = expect_api_error(resp, StatusCode::TOO_MANY_REQUESTS, "throttled").await;
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&format!("try again in {wait} second")),
            "{body}"
        );
        if wait >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(wait)).await;
    }

    // Even the right password is refused while throttled.
    let resp = sign_in(&app, "alice", PASSWORD, None).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    retry_after(&resp);
    expect_api_error(resp, StatusCode::TOO_MANY_REQUESTS, "throttled").await;

    let events = audit(&app).await;
    let failed: Vec<&airlock::domain::AuditRecord> =
        events.iter().filter(|e| e.event.kind == "login.failed").collect();
    let reason_of = |r: &str| failed.iter().any(|e| e.event.details["reason"] == r);
    assert!(reason_of("wrong_password") && reason_of("unknown_user") && reason_of("throttled"));
    assert!(failed.iter().any(|e| e.event.subject.as_deref() == Some("alice")));
    assert!(
        failed
            .iter()
            .any(|e| e.event.subject.as_deref() == Some("[unknown]"))
    );
    let all = serde_json::to_string(&events).unwrap();
    assert!(!all.contains(WRONG), "no password in the audit trail");
    assert!(!all.contains(PASSWORD), "no password in the audit trail");
}

async fn a_password_typed_as_the_username_is_never_recorded(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    person(&app, "alice", &["developer"]).await;
    let pasted = "hunter2-is-my-secret-password";

    let (status, body) = status_and_json(sign_in(&app, pasted, PASSWORD, None).await).await;

    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "invalid_credentials");
    let all = serde_json::to_string(&audit(&app).await).unwrap();
    assert!(all.contains("login.failed"));
    assert!(!all.contains(pasted));
}

// --- 9. privileged roles need TOTP ---------------------------------------------------

async fn an_admin_role_takes_effect_only_with_totp(backend: Backend) {
    // Arrange
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    person(&app, "root", &["admin"]).await;
    person(&app, "alice", &["developer"]).await;
    let root = session(&app, "root", None).await;
    let alice = session(&app, "alice", None).await;

    // Act + Assert: not yet.
    let body = expect_api_error(
        app.get("/v1/users", token_of(&root)).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    assert!(
        body["error"]["message"].as_str().unwrap().contains("TOTP"),
        "{body}"
    );
    let (_, me) = status_and_json(app.get("/v1/me", token_of(&root)).await).await;
    assert_eq!(me["roles"], json!(["admin"]));
    assert_eq!(me["effective_roles"], json!([]));

    // Enrol over HTTP: a secret, then a correct code.
    let resp = app
        .post_json("/v1/me/totp", token_of(&root), json!({ "password": PASSWORD }))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let enrolment: Value = resp.json().await.unwrap();
    assert!(
        enrolment["otpauth_uri"]
            .as_str()
            .unwrap()
            .starts_with("otpauth://totp/")
    );
    let secret = data_encoding::BASE32_NOPAD
        .decode(enrolment["secret"].as_str().unwrap().as_bytes())
        .unwrap();
    let resp = app
        .post_json(
            "/v1/me/totp/activate",
            token_of(&root),
            json!({ "code": "000000x" }),
        )
        .await;
    expect_api_error(resp, StatusCode::BAD_REQUEST, "invalid_request").await;
    let resp = app
        .post_json(
            "/v1/me/totp/activate",
            token_of(&root),
            json!({ "code": code_now(&secret) }),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);

    // Now the admin role counts.
    let (status, users) = status_and_json(app.get("/v1/users", token_of(&root)).await).await;
    assert_eq!(status, StatusCode::OK, "{users}");
    assert_eq!(users.as_array().unwrap().len(), 2);
    let (_, me) = status_and_json(app.get("/v1/me", token_of(&root)).await).await;
    assert_eq!(me["effective_roles"], json!(["admin"]));
    assert_eq!(me["totp_enrolled"], true);
    // Enrolling again is a conflict.
    let resp = app
        .post_json("/v1/me/totp", token_of(&root), json!({ "password": PASSWORD }))
        .await;
    expect_api_error(resp, StatusCode::CONFLICT, "conflict").await;

    // A developer is no admin.
    for path in ["/v1/users", "/v1/agents", "/v1/users/root"] {
        let body = expect_api_error(
            app.get(path, token_of(&alice)).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
        assert!(
            body["error"]["message"].as_str().unwrap().contains("admin"),
            "{body}"
        );
    }
    let resp = app
        .post_json(
            "/v1/users",
            token_of(&alice),
            json!({ "username": "mallory", "password": "a long enough password", "roles": ["admin"] }),
        )
        .await;
    expect_api_error(resp, StatusCode::FORBIDDEN, "forbidden").await;
    assert!(people::find_user(&app.state, "mallory").await.is_err());
    // And nobody without a session.
    let resp = app.client.get(app.url("/v1/users")).send().await.unwrap();
    expect_api_error(resp, StatusCode::UNAUTHORIZED, "unauthenticated").await;
}

// --- 10. admin API -------------------------------------------------------------------

async fn admins_manage_people_over_the_api_without_echoing_passwords(backend: Backend) {
    // Arrange
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let admin = admin_session(&app).await;
    let bobs = "bob's first long password";

    // Act: create.
    let resp = app
        .post_json(
            "/v1/users",
            &admin,
            json!({ "username": "Bob", "password": bobs, "roles": ["developer"] }),
        )
        .await;

    // Assert
    assert_eq!(resp.status(), StatusCode::CREATED);
    let text = resp.text().await.unwrap();
    assert!(!text.contains(bobs), "the response never echoes a password");
    let created: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(created["username"], "bob");
    assert_eq!(created["roles"], json!(["developer"]));
    assert_eq!(created["disabled"], false);
    assert!(created.get("password").is_none() && created.get("password_hash").is_none());

    // Refusals: taken, weak, unknown role, unknown field, wrong type.
    let resp = app
        .post_json(
            "/v1/users",
            &admin,
            json!({ "username": "bob", "password": bobs }),
        )
        .await;
    expect_api_error(resp, StatusCode::CONFLICT, "conflict").await;
    let resp = app
        .post_json(
            "/v1/users",
            &admin,
            json!({ "username": "carol", "password": "short" }),
        )
        .await;
    expect_api_error(resp, StatusCode::BAD_REQUEST, "invalid_request").await;
    let resp = app
        .post_json(
            "/v1/users",
            &admin,
            json!({ "username": "carol", "password": bobs, "roles": ["wizard"] }),
        )
        .await;
    expect_api_error(resp, StatusCode::BAD_REQUEST, "invalid_request").await;
    let secret_text = "the secret text of carol";
    for body in [
        json!({ "username": "carol", "password": secret_text, "admin": true }),
        json!({ "username": "carol", "password": [secret_text] }),
    ] {
        let resp = app.post_json("/v1/users", &admin, body).await;
        let (status, err) = status_and_json(resp).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
        assert_eq!(err["error"]["code"], "invalid_request");
        assert!(err["error"]["message"].is_string());
        assert_eq!(err.as_object().unwrap().len(), 1, "only the error object: {err}");
        assert!(!err.to_string().contains(secret_text), "{err}");
    }
    let resp = app
        .client
        .post(app.url("/v1/users"))
        .bearer_auth(&admin)
        .body("{not json")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    expect_api_error(resp, StatusCode::BAD_REQUEST, "invalid_request").await;
    assert!(people::find_user(&app.state, "carol").await.is_err());

    // List and show.
    let (status, list) = status_and_json(app.get("/v1/users", &admin).await).await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bob", "root"]);
    let (status, shown) = status_and_json(app.get("/v1/users/bob", &admin).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["id"], created["id"]);
    expect_api_error(
        app.get("/v1/users/nobody", &admin).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    // Reset the password: bob's sessions end, the old password stops working.
    let bob_session = {
        let (status, s) = status_and_json(sign_in(&app, "bob", bobs, None).await).await;
        assert_eq!(status, StatusCode::OK, "{s}");
        s
    };
    let new_password = "bob's second long password";
    let resp = app
        .post_json("/v1/users/bob/reset", &admin, json!({ "password": new_password }))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();
    assert!(!text.contains(new_password));
    assert_eq!(
        me_status(&app, token_of(&bob_session)).await,
        StatusCode::UNAUTHORIZED
    );
    let resp = refresh(&app, bob_session["refresh_token"].as_str().unwrap()).await;
    expect_oauth_error(resp, StatusCode::BAD_REQUEST, "invalid_grant").await;
    assert_eq!(
        sign_in(&app, "bob", bobs, None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        sign_in(&app, "bob", new_password, None).await.status(),
        StatusCode::OK
    );
    let resp = app.post_json("/v1/users/bob/reset", &admin, json!({})).await;
    expect_api_error(resp, StatusCode::BAD_REQUEST, "invalid_request").await;

    let all = serde_json::to_string(&audit(&app).await).unwrap();
    for kind in ["user.created", "user.password_reset"] {
        assert!(all.contains(kind), "{kind} audited");
    }
    assert!(
        !all.contains(bobs) && !all.contains(new_password),
        "no password in the audit trail"
    );
}

async fn admins_register_agents_that_then_fetch_tokens(backend: Backend) {
    // Arrange
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let admin = admin_session(&app).await;

    // Act
    let resp = app
        .post_json(
            "/v1/agents",
            &admin,
            json!({ "name": "ci-bot", "environment": "staging", "scopes": ["db:read"], "owner": "root" }),
        )
        .await;

    // Assert: the secret is shown once.
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let created: Value = resp.json().await.unwrap();
    let client_id = created["client_id"].as_str().unwrap().to_string();
    let secret = created["client_secret"].as_str().unwrap().to_string();
    assert!(client_id.starts_with("agt_"));
    assert_eq!(created["environment"], "staging");
    assert!(created.get("secret_hash").is_none());
    let agent = TestAgent {
        client_id: client_id.clone(),
        secret: SecretString::from(secret.clone()),
    };
    let (status, body) = status_and_json(app.token("staging", &agent, Some("db:read")).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["scope"], "db:read");
    // Bound to staging.
    assert_eq!(
        app.token("dev", &agent, Some("db:read")).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // List and show never carry the secret.
    let (status, list) = status_and_json(app.get("/v1/agents?env=staging", &admin).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (_, none) = status_and_json(app.get("/v1/agents?env=dev", &admin).await).await;
    assert_eq!(none, json!([]));
    let (status, shown) = status_and_json(app.get(&format!("/v1/agents/{client_id}"), &admin).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["name"], "ci-bot");
    for v in [&list, &shown] {
        assert!(!v.to_string().contains(&secret));
    }
    expect_api_error(
        app.get("/v1/agents/agt_nope", &admin).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    // Unknown fields are refused; an unknown environment too.
    let resp = app
        .post_json(
            "/v1/agents",
            &admin,
            json!({ "name": "x", "environment": "staging", "scopes": ["db:read"], "env": "prod" }),
        )
        .await;
    expect_api_error(resp, StatusCode::BAD_REQUEST, "invalid_request").await;
    let resp = app
        .post_json(
            "/v1/agents",
            &admin,
            json!({ "name": "x", "environment": "nowhere", "scopes": ["db:read"] }),
        )
        .await;
    expect_api_error(resp, StatusCode::BAD_REQUEST, "invalid_request").await;

    // Disable: no more tokens.
    let resp = app
        .post_json(&format!("/v1/agents/{client_id}/disable"), &admin, json!({}))
        .await;
    let (status, body) = status_and_json(resp).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["disabled"], true);
    let resp = app.token("staging", &agent, Some("db:read")).await;
    expect_oauth_error(resp, StatusCode::UNAUTHORIZED, "invalid_client").await;
    // Enable and reset: a new secret, the old one dead.
    let resp = app
        .post_json(&format!("/v1/agents/{client_id}/enable"), &admin, json!({}))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = app
        .post_json(&format!("/v1/agents/{client_id}/reset"), &admin, json!({}))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let reset: Value = resp.json().await.unwrap();
    let new_secret = reset["client_secret"].as_str().unwrap().to_string();
    assert_ne!(new_secret, secret);
    assert_eq!(
        app.token("staging", &agent, Some("db:read")).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let agent = TestAgent {
        client_id,
        secret: SecretString::from(new_secret.clone()),
    };
    assert_eq!(
        app.token("staging", &agent, Some("db:read")).await.status(),
        StatusCode::OK
    );
    let all = serde_json::to_string(&audit(&app).await).unwrap();
    assert!(!all.contains(&secret) && !all.contains(&new_secret));
}

// --- 11. device flow (HTTP side) -----------------------------------------------------

async fn approver_of(app: &TestApp, user: &User) -> airlock::auth::Authenticated {
    let signed_in = people::SignedIn {
        user: user.clone(),
        totp_verified: false,
    };
    let (_, cookie) = people::start_web_session(&app.state, &signed_in)
        .await
        .expect("web session");
    airlock::auth::authenticate_web(&app.state, &cookie)
        .await
        .expect("authenticated")
}

async fn the_device_flow_answers_each_poll_as_rfc_8628_says(backend: Backend) {
    // Arrange
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let alice = person(&app, "alice", &["developer"]).await;

    // Act: start.
    let resp = device_authorization(&app, "airlock-cli").await;

    // Assert
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let d: Value = resp.json().await.unwrap();
    let user_code = d["user_code"].as_str().unwrap().to_string();
    let device_code = d["device_code"].as_str().unwrap().to_string();
    let shape = user_code.len() == 9
        && user_code.as_bytes()[4] == b'-'
        && user_code
            .chars()
            .enumerate()
            .all(|(i, c)| i == 4 || c.is_ascii_uppercase());
    assert!(shape, "user code XXXX-XXXX: {user_code}");
    assert_eq!(d["verification_uri"], app.url("/device").as_str());
    assert!(
        d["verification_uri_complete"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/device?user_code={user_code}"))
    );
    assert_eq!(d["interval"], 5);
    assert_eq!(d["expires_in"], 600);
    assert_ne!(device_code, user_code);

    // Pending, then too fast.
    expect_oauth_error(
        device_poll(&app, &device_code).await,
        StatusCode::BAD_REQUEST,
        "authorization_pending",
    )
    .await;
    expect_oauth_error(
        device_poll(&app, &device_code).await,
        StatusCode::BAD_REQUEST,
        "slow_down",
    )
    .await;
    expect_oauth_error(
        device_poll(&app, "airlock_device_unknown").await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
    )
    .await;
    let resp = oauth_token(
        &app,
        &[
            ("grant_type", DEVICE_GRANT),
            ("device_code", &device_code),
            ("client_id", "someone-else"),
        ],
    )
    .await;
    expect_oauth_error(resp, StatusCode::UNAUTHORIZED, "invalid_client").await;

    // Approved in the browser (the page is tested elsewhere).
    let auth = approver_of(&app, &alice).await;
    people::decide_device(&app.state, &auth, &user_code.to_lowercase(), true)
        .await
        .expect("approved");
    let resp = device_poll(&app, &device_code).await;
    let (status, tokens) = status_and_json(resp).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    assert_eq!(tokens["username"], "alice");
    assert_eq!(tokens["token_type"], "Bearer");
    assert!(
        tokens["refresh_token"]
            .as_str()
            .unwrap()
            .starts_with("airlock_refresh_")
    );
    assert_eq!(me_status(&app, token_of(&tokens)).await, StatusCode::OK);
    let resp = app
        .exchange("staging", token_of(&tokens), Some("db:read"), None)
        .await;
    assert_eq!(resp.status(), StatusCode::OK);

    // A code is redeemed once.
    expect_oauth_error(
        device_poll(&app, &device_code).await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
    )
    .await;
    let events = audit(&app).await;
    for kind in ["device.requested", "device.approved", "session.created"] {
        assert!(events.iter().any(|e| e.event.kind == kind), "{kind} audited");
    }
    let all = serde_json::to_string(&events).unwrap();
    assert!(!all.contains(&device_code), "no device code in the audit trail");
}

async fn a_denied_device_code_is_access_denied(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let alice = person(&app, "alice", &["developer"]).await;
    let d: Value = device_authorization(&app, "airlock-cli")
        .await
        .json()
        .await
        .unwrap();
    let auth = approver_of(&app, &alice).await;

    people::decide_device(&app.state, &auth, d["user_code"].as_str().unwrap(), false)
        .await
        .expect("denied");

    let resp = device_poll(&app, d["device_code"].as_str().unwrap()).await;
    expect_oauth_error(resp, StatusCode::FORBIDDEN, "access_denied").await;
    // A decided code cannot be decided again.
    assert!(
        people::decide_device(&app.state, &auth, d["user_code"].as_str().unwrap(), true)
            .await
            .is_err()
    );
}

async fn an_expired_device_code_is_expired_token(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |s| {
        s.auth.device_code_lifetime = Duration::from_secs(2);
        s.auth.device_poll_interval = Duration::from_secs(1);
    })
    .await
    else {
        return;
    };
    let alice = person(&app, "alice", &["developer"]).await;
    let d: Value = device_authorization(&app, "airlock-cli")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(d["interval"], 1);
    assert_eq!(d["expires_in"], 2);
    let device_code = d["device_code"].as_str().unwrap();
    expect_oauth_error(
        device_poll(&app, device_code).await,
        StatusCode::BAD_REQUEST,
        "authorization_pending",
    )
    .await;

    app.advance(Duration::from_millis(2200));

    expect_oauth_error(
        device_poll(&app, device_code).await,
        StatusCode::BAD_REQUEST,
        "expired_token",
    )
    .await;
    // Nor can it be approved any more.
    let auth = approver_of(&app, &alice).await;
    assert!(
        people::decide_device(&app.state, &auth, d["user_code"].as_str().unwrap(), true)
            .await
            .is_err()
    );
    expect_oauth_error(
        device_poll(&app, device_code).await,
        StatusCode::BAD_REQUEST,
        "expired_token",
    )
    .await;
}

async fn device_authorization_is_for_the_cli_client_only(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };

    for client in ["someone-else", ""] {
        let resp = device_authorization(&app, client).await;
        assert!(resp.headers().contains_key("www-authenticate"));
        expect_oauth_error(resp, StatusCode::UNAUTHORIZED, "invalid_client").await;
    }
    let resp = app
        .client
        .post(app.url("/oauth/device_authorization"))
        .json(&json!({ "client_id": "airlock-cli" }))
        .send()
        .await
        .unwrap();
    expect_oauth_error(resp, StatusCode::UNSUPPORTED_MEDIA_TYPE, "invalid_request").await;
}

// --- 12. discovery and OpenAPI -------------------------------------------------------

async fn the_broker_metadata_names_its_endpoints(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };

    let (status, meta) = status_and_json(
        app.client
            .get(app.url("/.well-known/oauth-authorization-server"))
            .send()
            .await
            .unwrap(),
    )
    .await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(meta["issuer"], app.base.as_str());
    assert_eq!(meta["token_endpoint"], app.url("/oauth/token").as_str());
    assert_eq!(
        meta["device_authorization_endpoint"],
        app.url("/oauth/device_authorization").as_str()
    );
    assert_eq!(meta["jwks_uri"], app.url("/oauth/jwks.json").as_str());
    let grants = meta["grant_types_supported"].as_array().unwrap();
    assert!(grants.contains(&json!(DEVICE_GRANT)));
    assert!(grants.contains(&json!("refresh_token")));
    // The session JWKS is its own: no environment's key is in it.
    let session_keys = jwks_at(&app, "/oauth/jwks.json").await;
    assert!(!session_keys.keys.is_empty());
    for env in ["dev", "staging", "prod"] {
        let env_keys = jwks_at(&app, &format!("/envs/{env}/jwks.json")).await;
        for k in &session_keys.keys {
            assert!(env_keys.find(k.common.key_id.as_deref().unwrap()).is_none());
        }
    }
}

/// `(path, methods)` of every `.route(...)` in a router source file.
fn routes_in(source: &str) -> Vec<(String, Vec<&'static str>)> {
    let mut out = Vec::new();
    let mut rest = source;
    while let Some(i) = rest.find(".route(") {
        rest = &rest[i + ".route(".len()..];
        let start = rest.find('"').expect("route path") + 1;
        let end = start + rest[start..].find('"').unwrap();
        let path = rest[start..end].to_string();
        // The handler chain runs to the parenthesis closing `.route(`.
        let mut depth = 1;
        let close = end
            + rest[end..]
                .char_indices()
                .find(|(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .expect("closing parenthesis")
                .0;
        let chain = &rest[end..close];
        let methods = ["get", "post", "put", "patch", "delete"]
            .into_iter()
            .filter(|m| {
                chain.contains(&format!("({m}("))
                    || chain.contains(&format!(" {m}("))
                    || chain.contains(&format!(".{m}("))
            })
            .collect();
        out.push((path, methods));
    }
    out
}

fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
    doc.pointer(reference.strip_prefix('#')?)
}

fn check_refs(doc: &Value, node: &Value, at: &str) {
    match node {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "$ref" {
                    let r = v.as_str().unwrap();
                    assert!(resolve(doc, r).is_some(), "{at}: dangling $ref {r}");
                } else {
                    check_refs(doc, v, &format!("{at}/{k}"));
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| check_refs(doc, v, at)),
        _ => {}
    }
}

async fn the_openapi_document_describes_every_route(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };

    let resp = app.client.get(app.url("/v1/openapi.json")).send().await.unwrap();

    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let doc: Value = resp.json().await.expect("valid JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let paths = doc["paths"].as_object().expect("paths");
    let sources = [
        ("api.rs", include_str!("../../../src/http/api.rs")),
        ("session.rs", include_str!("../../../src/http/session.rs")),
        ("tokens.rs", include_str!("../../../src/http/tokens.rs")),
        ("discovery.rs", include_str!("../../../src/http/discovery.rs")),
        ("health.rs", include_str!("../../../src/http/health.rs")),
        ("escalations.rs", include_str!("../../../src/http/escalations.rs")),
    ];
    let mut registered = Vec::new();
    for (file, source) in sources {
        let routes = routes_in(source);
        assert!(!routes.is_empty(), "routes found in {file}");
        for (path, methods) in routes {
            assert!(!methods.is_empty(), "{file}: methods of {path}");
            let item = paths
                .get(&path)
                .unwrap_or_else(|| panic!("{file}: {path} is not documented"));
            for m in methods {
                let op = item
                    .get(m)
                    .unwrap_or_else(|| panic!("{file}: {m} {path} is not documented"));
                assert!(
                    op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                    "{m} {path}"
                );
                assert!(
                    op["summary"].is_string() || op["description"].is_string(),
                    "{m} {path}"
                );
                // Every path parameter is declared.
                for param in path.split('/').filter(|s| s.starts_with('{')) {
                    let name = param.trim_matches(|c| c == '{' || c == '}');
                    let declared = item["parameters"]
                        .as_array()
                        .into_iter()
                        .chain(op["parameters"].as_array())
                        .flatten()
                        .map(|p| match p.get("$ref") {
                            Some(r) => resolve(&doc, r.as_str().unwrap()).unwrap(),
                            None => p,
                        })
                        .any(|p| p["name"] == name && p["in"] == "path");
                    assert!(declared, "{m} {path}: path parameter {name} declared");
                }
                // /v1 routes that need a session say so.
                if path.starts_with("/v1/") && !matches!(path.as_str(), "/v1/openapi.json" | "/v1/sessions") {
                    let sec = op.get("security").or(doc.get("security"));
                    assert!(
                        sec.is_some_and(|s| s.to_string().contains("bearer")),
                        "{m} {path} names the bearer scheme"
                    );
                }
            }
            registered.push(path);
        }
    }
    // Nothing documented that does not exist.
    for documented in paths.keys() {
        assert!(
            registered.contains(documented),
            "{documented} is documented but not routed"
        );
    }
    check_refs(&doc, &doc, "#");
    assert!(resolve(&doc, "#/components/securitySchemes").is_some());
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

crate::both_backends!(
    a_password_sign_in_gives_a_session_that_no_environment_accepts,
    a_developer_exchanges_the_session_for_a_staging_token_within_the_role,
    a_token_for_a_launched_process_names_it_in_act_and_in_the_audit_trail,
    production_needs_an_escalation,
    a_destructive_scope_needs_an_escalation_even_in_dev,
    an_environment_the_role_does_not_give_is_access_denied,
    a_scope_outside_the_role_is_invalid_scope_and_a_bad_session_invalid_grant,
    a_refresh_token_rotates_and_a_reused_one_ends_the_session,
    the_token_endpoint_refuses_other_clients_and_grants,
    logout_ends_the_session_for_every_use,
    disabling_a_person_ends_their_sessions_at_once_and_sign_in_fails_alike,
    an_idle_session_ends,
    a_session_ends_at_its_absolute_lifetime_even_when_refreshed,
    an_enrolled_person_needs_a_fresh_totp_code_that_cannot_be_replayed,
    failed_sign_ins_are_throttled_alike_and_audited_without_the_password,
    a_password_typed_as_the_username_is_never_recorded,
    an_admin_role_takes_effect_only_with_totp,
    admins_manage_people_over_the_api_without_echoing_passwords,
    admins_register_agents_that_then_fetch_tokens,
    the_device_flow_answers_each_poll_as_rfc_8628_says,
    a_denied_device_code_is_access_denied,
    an_expired_device_code_is_expired_token,
    device_authorization_is_for_the_cli_client_only,
    the_broker_metadata_names_its_endpoints,
    the_openapi_document_describes_every_route,
);
