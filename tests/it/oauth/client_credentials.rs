//! The agent startup credential fetch: `POST /envs/{env}/token` with client credentials.

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use reqwest::StatusCode;
use secrecy::ExposeSecret;
use serde_json::Value;

use crate::support::{
    Backend, TestAgent, jwks, spawn_app, spawn_app_with, status_and_json, validate_with, validation,
};

#[derive(Debug, serde::Deserialize)]
#[allow(dead_code)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    client_id: String,
    scope: String,
    env: String,
    iat: i64,
    nbf: i64,
    exp: i64,
    jti: String,
}

/// Strict validation as a resource server of `env` would do it: algorithm pinned, `typ`
/// checked, key from the environment's JWKS by `kid`, `iss`, `aud` and `exp` required.
fn validate(token: &str, keys: &JwkSet, iss: &str, aud: &str) -> Result<Claims, jsonwebtoken::errors::Error> {
    let header = decode_header(token)?;
    assert_eq!(header.alg, Algorithm::EdDSA);
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    header.kid.expect("kid");
    let mut v = validation(iss, aud);
    v.leeway = 5;
    validate_with(token, keys, &v)
}

// --- the happy path, with a third-party OAuth client -------------------------------

async fn a_third_party_oauth_client_gets_a_token_that_validates_against_the_jwks(backend: Backend) {
    // Arrange
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let agent = app
        .create_agent("staging", "ci-bot", &["db:read", "db:write"])
        .await;
    use oauth2::{AuthUrl, ClientId, ClientSecret, Scope, TokenResponse, TokenUrl, basic::BasicClient};
    let client = BasicClient::new(ClientId::new(agent.client_id.clone()))
        .set_client_secret(ClientSecret::new(agent.secret.expose_secret().to_string()))
        .set_auth_uri(AuthUrl::new(app.url("/unused")).unwrap())
        .set_token_uri(TokenUrl::new(app.url("/envs/staging/token")).unwrap());
    let http = oauth2::reqwest::Client::builder()
        .redirect(oauth2::reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    // Act
    let token = client
        .exchange_client_credentials()
        .add_scope(Scope::new("db:read".into()))
        .request_async(&http)
        .await
        .expect("client credentials grant succeeds");

    // Assert
    let access = token.access_token().secret();
    let meta: Value = app
        .client
        .get(app.url("/.well-known/oauth-authorization-server/envs/staging"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keys: JwkSet = app
        .client
        .get(meta["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let claims = validate(access, &keys, meta["issuer"].as_str().unwrap(), "airlock:staging").expect("valid");
    assert_eq!(claims.iss, app.url("/envs/staging"));
    assert_eq!(claims.sub, agent.client_id);
    assert_eq!(claims.client_id, agent.client_id);
    assert_eq!(claims.scope, "db:read");
    assert_eq!(claims.env, "staging");
    assert_eq!(claims.exp - claims.iat, 600, "staging default_ttl is 10 minutes");
    assert!(uuid::Uuid::parse_str(&claims.jti).is_ok());
    assert_eq!(token.expires_in().unwrap().as_secs(), 600);
    // The issuance is in the audit trail with its jti, and the token is not.
    let events = app.audit_kinds().await;
    let issued = events
        .iter()
        .find(|e| e.event.kind == "token.issued")
        .expect("issuance audited");
    assert_eq!(issued.event.details["jti"], claims.jti.as_str());
    let all = serde_json::to_string(&events).unwrap();
    assert!(!all.contains(access.as_str()), "no token in the audit trail");
    assert!(
        !all.contains(agent.secret.expose_secret()),
        "no secret in the audit trail"
    );
}

async fn client_secret_post_works_and_the_default_scopes_apply(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let agent = app
        .create_agent("dev", "poster", &["db:read", "db:migrate", "db:drop"])
        .await;
    let resp = app
        .client
        .post(app.url("/envs/dev/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", agent.client_id.as_str()),
            ("client_secret", agent.secret.expose_secret()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    // Destructive scopes are never defaults.
    assert_eq!(body["scope"], "db:read db:migrate");
    assert_eq!(body["expires_in"], 900);
}

// --- refusals: authentication -------------------------------------------------------

async fn every_authentication_failure_looks_the_same(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let staging = app.create_agent("staging", "s", &["db:read"]).await;
    let disabled = app.create_agent("staging", "d", &["db:read"]).await;
    airlock::agents::set_disabled(app.store(), &disabled.client_id, true, "test")
        .await
        .unwrap();
    let wrong_secret = TestAgent {
        client_id: staging.client_id.clone(),
        secret: "airlock_secret_nope".to_string().into(),
    };
    let unknown = TestAgent {
        client_id: airlock::domain::new_client_id(),
        secret: staging.secret.clone(),
    };

    let mut bodies = Vec::new();
    for (env, agent, what) in [
        ("prod", &staging, "agent of another environment"),
        ("dev", &staging, "agent of another environment"),
        ("staging", &unknown, "unknown client"),
        ("staging", &wrong_secret, "wrong secret"),
        ("staging", &disabled, "disabled agent"),
    ] {
        let resp = app.token(env, agent, Some("db:read")).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{what}");
        let www = resp
            .headers()
            .get("www-authenticate")
            .expect("WWW-Authenticate")
            .to_str()
            .unwrap()
            .to_string();
        assert!(www.starts_with("Basic"), "{what}: {www}");
        let (_, body) = status_and_json(resp).await;
        assert_eq!(body["error"], "invalid_client", "{what}");
        bodies.push(body);
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "all failures answer alike: {bodies:?}"
    );

    // No credentials at all is also invalid_client.
    let resp = app
        .client
        .post(app.url("/envs/staging/token"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // The audit trail tells them apart; cross-environment use is a security event.
    let events = app.audit_kinds().await;
    let cross: Vec<_> = events
        .iter()
        .filter(|e| e.event.kind == "cross_environment_attempt")
        .collect();
    assert_eq!(cross.len(), 2);
    assert_eq!(cross[0].event.environment.as_deref(), Some("prod"));
    assert_eq!(cross[0].event.details["agent_environment"], "staging");
    let reasons: Vec<&str> = events
        .iter()
        .filter(|e| e.event.kind == "token.refused")
        .filter_map(|e| e.event.details["reason"].as_str())
        .collect();
    for reason in [
        "unknown_client",
        "bad_secret",
        "disabled",
        "no_client_credentials",
    ] {
        assert!(reasons.contains(&reason), "{reason} audited: {reasons:?}");
    }
    assert!(!events.iter().any(|e| e.event.kind == "token.issued"));
}

async fn a_secret_pasted_as_client_id_is_never_recorded(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let agent = app.create_agent("staging", "s", &["db:read"]).await;
    let pasted = TestAgent {
        client_id: agent.secret.expose_secret().to_string(),
        secret: agent.secret.clone(),
    };
    assert_eq!(
        app.token("staging", &pasted, None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let all = serde_json::to_string(&app.audit_kinds().await).unwrap();
    assert!(!all.contains(agent.secret.expose_secret()));
    assert!(all.contains("[malformed]"));
}

async fn a_rotated_secret_replaces_the_old_one_at_once(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let old = app.create_agent("staging", "rot", &["db:read"]).await;
    let (_, new_secret) =
        airlock::agents::rotate_secret(app.store(), &app.state.hasher, &old.client_id, "test")
            .await
            .unwrap();
    assert_eq!(
        app.token("staging", &old, None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let new = TestAgent {
        client_id: old.client_id.clone(),
        secret: new_secret,
    };
    assert_eq!(app.token("staging", &new, None).await.status(), StatusCode::OK);
}

// --- refusals: scopes ---------------------------------------------------------------

async fn unallowed_and_unknown_scopes_are_invalid_scope_and_destructive_ones_access_denied(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let agent = app
        .create_agent("staging", "scoped", &["db:read", "db:drop", "volume:delete"])
        .await;

    let (status, body) = status_and_json(app.token("staging", &agent, Some("db:write")).await).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_scope")),
        "not allowed"
    );

    let (status, body) =
        status_and_json(app.token("staging", &agent, Some("db:read db:nonsense")).await).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_scope")),
        "unknown"
    );

    for destructive in ["db:drop", "volume:delete", "db:read volume:delete"] {
        let (status, body) = status_and_json(app.token("staging", &agent, Some(destructive)).await).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(body["error"], "access_denied");
        let description = body["error_description"].as_str().unwrap();
        assert!(description.contains("approved escalation"), "{description}");
        assert!(description.contains("airlock escalate"), "{description}");
    }
    let events = app.audit_kinds().await;
    assert!(
        !events.iter().any(|e| e.event.kind == "token.issued"),
        "nothing was issued"
    );
    assert!(
        events
            .iter()
            .any(|e| e.event.details["reason"] == "destructive_scope_needs_escalation"),
        "destructive refusal audited"
    );
}

// --- refusals: protocol ---------------------------------------------------------------

async fn malformed_requests_get_rfc_6749_errors_never_html_or_panics(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let agent = app.create_agent("staging", "p", &["db:read"]).await;
    let url = app.url("/envs/staging/token");
    let basic =
        |r: reqwest::RequestBuilder| r.basic_auth(&agent.client_id, Some(agent.secret.expose_secret()));

    // Unknown environment: 404 in the OAuth shape.
    let (status, body) = status_and_json(app.token("qa", &agent, None).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "invalid_request");

    // Wrong method.
    let resp = app.client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()["allow"], "POST");
    let (_, body) = status_and_json(resp).await;
    assert_eq!(body["error"], "invalid_request");

    // Wrong content type.
    let resp = basic(app.client.post(&url))
        .json(&serde_json::json!({"grant_type": "client_credentials"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(status_and_json(resp).await.1["error"], "invalid_request");

    // Oversized body.
    let big = format!("grant_type=client_credentials&pad={}", "x".repeat(20_000));
    let resp = basic(app.client.post(&url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(status_and_json(resp).await.1["error"], "invalid_request");

    // Repeated parameter, missing grant_type, unsupported grant_type.
    for (body, code) in [
        (
            "grant_type=client_credentials&grant_type=client_credentials",
            "invalid_request",
        ),
        ("scope=db:read", "invalid_request"),
        (
            "grant_type=password&username=a&password=b",
            "unsupported_grant_type",
        ),
        ("grant_type=%FF%FE", "unsupported_grant_type"),
    ] {
        let resp = basic(app.client.post(&url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(status_and_json(resp).await.1["error"], code, "{body}");
    }

    // Two authentication methods at once.
    let resp = basic(app.client.post(&url))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_secret", agent.secret.expose_secret()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(status_and_json(resp).await.1["error"], "invalid_request");

    // Garbage Basic credentials.
    let resp = app
        .client
        .post(&url)
        .header("authorization", "Basic !!!not-base64!!!")
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // Unknown routes are JSON too.
    let resp = app.client.get(app.url("/nope")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
}

// --- invariant 1: a staging token is worthless in prod ---------------------------------

async fn a_staging_token_fails_prod_validation_on_key_issuer_and_audience_separately(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let agent = app.create_agent("staging", "iso", &["db:read"]).await;
    let body: Value = app
        .token("staging", &agent, Some("db:read"))
        .await
        .json()
        .await
        .unwrap();
    let token = body["access_token"].as_str().unwrap();
    let staging_keys = jwks(&app, "staging").await;
    let prod_keys = jwks(&app, "prod").await;
    let (s_iss, p_iss) = (app.url("/envs/staging"), app.url("/envs/prod"));

    // Sanity: it is valid where it belongs.
    validate(token, &staging_keys, &s_iss, "airlock:staging").expect("valid in staging");

    // Keys: no prod key has the staging kid, and forcing a prod key fails the signature.
    assert!(
        prod_keys
            .keys
            .iter()
            .all(|k| staging_keys.find(k.common.key_id.as_deref().unwrap()).is_none())
    );
    assert!(
        validate(token, &prod_keys, &s_iss, "airlock:staging").is_err(),
        "kid unknown to prod"
    );
    let prod_key = DecodingKey::from_jwk(&prod_keys.keys[0]).unwrap();
    let mut v = Validation::new(Algorithm::EdDSA);
    v.set_issuer(&[&s_iss]);
    v.set_audience(&["airlock:staging"]);
    let err = decode::<Claims>(token, &prod_key, &v).unwrap_err();
    assert_eq!(err.kind(), &jsonwebtoken::errors::ErrorKind::InvalidSignature);

    // Issuer alone.
    let err = validate(token, &staging_keys, &p_iss, "airlock:staging").unwrap_err();
    assert_eq!(err.kind(), &jsonwebtoken::errors::ErrorKind::InvalidIssuer);

    // Audience alone.
    let err = validate(token, &staging_keys, &s_iss, "airlock:prod").unwrap_err();
    assert_eq!(err.kind(), &jsonwebtoken::errors::ErrorKind::InvalidAudience);

    // And all at once, as a prod resource server would.
    assert!(validate(token, &prod_keys, &p_iss, "airlock:prod").is_err());
}

async fn discovery_documents_describe_each_environment(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    for env in ["dev", "staging", "prod"] {
        let meta: Value = app
            .client
            .get(app.url(&format!("/.well-known/oauth-authorization-server/envs/{env}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let issuer = app.url(&format!("/envs/{env}"));
        assert_eq!(meta["issuer"], issuer.as_str());
        assert_eq!(meta["token_endpoint"], format!("{issuer}/token"));
        assert_eq!(meta["jwks_uri"], format!("{issuer}/jwks.json"));
        assert_eq!(
            meta["grant_types_supported"],
            serde_json::json!([
                "client_credentials",
                "urn:ietf:params:oauth:grant-type:token-exchange"
            ])
        );
        assert_eq!(
            meta["token_endpoint_auth_methods_supported"],
            serde_json::json!(["client_secret_basic", "client_secret_post", "none"])
        );
        let keys = jwks(&app, env).await;
        assert_eq!(keys.keys.len(), 1);
    }
    let resp = app
        .client
        .get(app.url("/.well-known/oauth-authorization-server/envs/qa"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

async fn keys_survive_a_restart_and_differ_per_environment(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let before: Vec<String> = {
        let mut kids = Vec::new();
        for env in ["dev", "staging", "prod"] {
            kids.push(jwks(&app, env).await.keys[0].common.key_id.clone().unwrap());
        }
        kids
    };
    let mut unique = before.clone();
    unique.dedup();
    assert_eq!(unique.len(), 3, "one key per environment");
    // A second process on the same database with the same master key sees the same keys.
    let settings = (*app.state.settings).clone();
    let state = airlock::app::open_state(settings, true)
        .await
        .expect("second process starts");
    for (env, kid) in ["dev", "staging", "prod"].iter().zip(&before) {
        let keys = state
            .keys
            .jwks(&airlock::domain::KeySet::Environment(env.to_string()))
            .unwrap();
        assert_eq!(&keys[0].kid, kid);
    }
}

async fn a_scope_not_offered_in_an_environment_is_unknown_there(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |s| {
        s.environments.get_mut("dev").unwrap().scopes = Some(vec!["db:read".into(), "db:write".into()]);
    })
    .await
    else {
        return;
    };
    let agent = app.create_agent("dev", "narrow", &["db:read"]).await;
    for scope in ["db:migrate", "volume:delete"] {
        let resp = app.token("dev", &agent, Some(scope)).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "invalid_scope");
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .contains("does not exist in environment 'dev'")
        );
    }
    // The catalogue names are recorded, nothing else the caller sent.
    let events = app.audit_kinds().await;
    let refused = events
        .iter()
        .rev()
        .find(|e| e.event.kind == "token.refused")
        .unwrap();
    assert_eq!(
        refused.event.details["requested"]["known"],
        serde_json::json!(["volume:delete"])
    );
}

async fn malformed_paths_get_oauth_errors(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    for path in [
        "/envs/%FF/token",
        "/.well-known/oauth-authorization-server/envs/%FF",
        "/envs/%FF/jwks.json",
    ] {
        let resp = if path.ends_with("/token") {
            app.client
                .post(app.url(path))
                .form(&[("grant_type", "client_credentials")])
                .send()
                .await
                .unwrap()
        } else {
            app.client.get(app.url(path)).send().await.unwrap()
        };
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path}");
        let body: Value = resp.json().await.expect("JSON body");
        assert_eq!(body["error"], "invalid_request", "{path}");
    }
    let long = "x".repeat(5000);
    let resp = app
        .client
        .get(app.url(&format!("/envs/{long}/jwks.json")))
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error_description"].as_str().unwrap().len() < 200,
        "unknown names are not echoed whole"
    );
}

crate::both_backends!(
    a_third_party_oauth_client_gets_a_token_that_validates_against_the_jwks,
    client_secret_post_works_and_the_default_scopes_apply,
    every_authentication_failure_looks_the_same,
    a_secret_pasted_as_client_id_is_never_recorded,
    a_rotated_secret_replaces_the_old_one_at_once,
    unallowed_and_unknown_scopes_are_invalid_scope_and_destructive_ones_access_denied,
    malformed_requests_get_rfc_6749_errors_never_html_or_panics,
    a_staging_token_fails_prod_validation_on_key_issuer_and_audience_separately,
    discovery_documents_describe_each_environment,
    keys_survive_a_restart_and_differ_per_environment,
    a_scope_not_offered_in_an_environment_is_unknown_there,
    malformed_paths_get_oauth_errors,
);
