//! The OAuth side: health and discovery, the fallbacks, `client_credentials` and token
//! exchange at `/envs/{env}/token`, and the device flow at `/oauth/*`.

use reqwest::Method;
use serde_json::{Value, json};

use super::record::{Record, Wire};
use super::requests::*;
use super::{DEVICE_GRANT, Script, TERMINAL, UNKNOWN_ESCALATION};
use crate::support::{ACCESS_TOKEN_TYPE, EXCHANGE, PASSWORD};

impl Script<'_> {
    /// Health, discovery, key sets, the OpenAPI document and the stylesheet.
    pub(super) async fn discovery(&mut self) {
        let app = self.app;
        let w = &mut self.w;
        w.send("health: process", get(app, "/healthz")).await;
        w.send("health: store", get(app, "/readyz")).await;
        w.send("health: HEAD", request(app, Method::HEAD, "/healthz"))
            .await;
        w.send(
            "discovery: broker metadata",
            get(app, "/.well-known/oauth-authorization-server"),
        )
        .await;
        for env in ["dev", "staging", "prod"] {
            let path = format!("/.well-known/oauth-authorization-server/envs/{env}");
            w.send(&format!("discovery: {env} metadata"), get(app, &path))
                .await;
        }
        w.send(
            "discovery: metadata of an unknown environment",
            get(app, "/.well-known/oauth-authorization-server/envs/nope"),
        )
        .await;
        let name_keys = |w: &mut Wire<'_>, set: &str, jwks: Value| {
            for key in jwks["keys"].as_array().expect("keys") {
                w.name(key["kid"].as_str().expect("kid"), &format!("<kid:{set}>"));
                w.name(key["x"].as_str().expect("x"), &format!("<public-key:{set}>"));
            }
        };
        for env in ["dev", "staging", "prod"] {
            let path = format!("/envs/{env}/jwks.json");
            let r = w.send(&format!("keys: {env} JWKS"), get(app, &path)).await;
            name_keys(w, env, r.json());
        }
        w.send(
            "keys: JWKS of an unknown environment",
            get(app, "/envs/nope/jwks.json"),
        )
        .await;
        let r = w.send("keys: session JWKS", get(app, "/oauth/jwks.json")).await;
        name_keys(w, "session", r.json());
        w.send_as(
            "openapi: the served document",
            get(app, "/v1/openapi.json"),
            Record::OpenApi,
        )
        .await;
        w.send("web: stylesheet", get(app, "/static/airlock.css")).await;
    }

    /// The 404 and 405 fallbacks in both shapes, and the control-character filter.
    pub(super) async fn fallbacks(&mut self) {
        let app = self.app;
        let w = &mut self.w;
        for (label, path) in [
            ("404: unknown path", "/nope"),
            ("404: unknown /v1 path", "/v1/nope"),
            ("404: trailing slash", "/v1/me/"),
            ("404: unknown path under an environment", "/envs/dev/nope"),
            ("404: unknown path under /oauth", "/oauth/nope"),
            ("404: unknown well-known document", "/.well-known/nope"),
        ] {
            w.send(label, get(app, path)).await;
        }
        for (label, method, path) in [
            ("405: GET the token endpoint", Method::GET, "/envs/dev/token"),
            ("405: GET introspection", Method::GET, "/envs/dev/introspect"),
            ("405: GET the session token endpoint", Method::GET, "/oauth/token"),
            (
                "405: GET device authorization",
                Method::GET,
                "/oauth/device_authorization",
            ),
            ("405: POST a JWKS", Method::POST, "/envs/dev/jwks.json"),
            (
                "405: POST broker metadata",
                Method::POST,
                "/.well-known/oauth-authorization-server",
            ),
            ("405: POST health", Method::POST, "/healthz"),
            ("405: DELETE /v1/me", Method::DELETE, "/v1/me"),
            ("405: GET sessions", Method::GET, "/v1/sessions"),
            ("405: PUT escalations", Method::PUT, "/v1/escalations"),
            ("405: PATCH users", Method::PATCH, "/v1/users"),
            ("405: GET logout", Method::GET, "/logout"),
            ("405: PUT approvals", Method::PUT, "/approvals"),
            ("405: DELETE device", Method::DELETE, "/device"),
            ("405: POST the stylesheet", Method::POST, "/static/airlock.css"),
        ] {
            w.send(label, request(app, method, path)).await;
        }
        w.send("control character: in a /v1 path", get(app, "/v1/users/%00"))
            .await;
        w.send(
            "control character: in an environment name",
            form(app, "/envs/%01/token", &[("grant_type", "client_credentials")]),
        )
        .await;
        w.send(
            "control character: in a query",
            get(app, "/v1/escalations?environment=%00"),
        )
        .await;
        w.send(
            "control character: in a page query",
            get(app, "/device?user_code=%07"),
        )
        .await;
        // Every route that needs a caller, asked without one (and with an empty JSON body
        // where it takes one): which check answers first is part of the wire.
        for (method, path) in [
            (Method::GET, "/v1/me"),
            (Method::POST, "/v1/me/step-up"),
            (Method::POST, "/v1/me/totp"),
            (Method::POST, "/v1/me/totp/activate"),
            (Method::DELETE, "/v1/sessions/current"),
            (Method::GET, "/v1/users"),
            (Method::POST, "/v1/users"),
            (Method::GET, "/v1/users/erin"),
            (Method::POST, "/v1/users/erin/disable"),
            (Method::POST, "/v1/users/erin/enable"),
            (Method::POST, "/v1/users/erin/reset"),
            (Method::GET, "/v1/agents"),
            (Method::POST, "/v1/agents"),
            (Method::GET, "/v1/agents/dev%2Fci"),
            (Method::POST, "/v1/agents/dev%2Fci/disable"),
            (Method::POST, "/v1/agents/dev%2Fci/enable"),
            (Method::POST, "/v1/agents/dev%2Fci/reset"),
            (Method::GET, "/v1/escalations"),
            (Method::POST, "/v1/escalations"),
            (Method::GET, UNKNOWN_ESCALATION),
            (
                Method::POST,
                "/v1/escalations/00000000-0000-4000-8000-000000000000/approve",
            ),
            (
                Method::POST,
                "/v1/escalations/00000000-0000-4000-8000-000000000000/deny",
            ),
            (
                Method::POST,
                "/v1/escalations/00000000-0000-4000-8000-000000000000/cancel",
            ),
            (Method::GET, "/v1/grants"),
            (
                Method::POST,
                "/v1/grants/00000000-0000-4000-8000-000000000000/revoke",
            ),
        ] {
            let label = format!("no caller: {method} {path}");
            let rb = request(app, method.clone(), path);
            let rb = if method == Method::POST {
                rb.json(&json!({}))
            } else {
                rb
            };
            w.send(&label, rb).await;
        }
    }

    /// `client_credentials` at `/envs/{env}/token`.
    pub(super) async fn client_credentials(&mut self) {
        let app = self.app;
        let (ci_dev, ci_staging, ci_prod) = (&self.ci_dev, &self.ci_staging, &self.ci_prod);
        let w = &mut self.w;
        let id = ci_dev.client_id.as_str();
        w.send(
            "cc: Basic, default scopes",
            client_credentials(app, "dev", ci_dev, None),
        )
        .await
        .expect(200, "a dev token");
        let r = w
            .send(
                "cc: Basic, one scope",
                client_credentials(app, "dev", ci_dev, Some("db:read")),
            )
            .await
            .expect(200, "a dev token for db:read");
        self.kept.insert("ci-dev db:read", r.s("access_token"));
        w.send(
            "cc: client_secret_post, two scopes",
            form(
                app,
                "/envs/dev/token",
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", id),
                    ("client_secret", secret(ci_dev)),
                    ("scope", "db:read db:write"),
                ],
            ),
        )
        .await;
        w.send(
            "cc: Basic with the same client_id in the body",
            form(
                app,
                "/envs/dev/token",
                &[("grant_type", "client_credentials"), ("client_id", id)],
            )
            .basic_auth(id, Some(secret(ci_dev))),
        )
        .await;
        w.send(
            "cc: Basic with another client_id in the body",
            form(
                app,
                "/envs/dev/token",
                &[("grant_type", "client_credentials"), ("client_id", "agt_other")],
            )
            .basic_auth(id, Some(secret(ci_dev))),
        )
        .await;
        w.send(
            "cc: both authentication methods",
            form(
                app,
                "/envs/dev/token",
                &[
                    ("grant_type", "client_credentials"),
                    ("client_secret", secret(ci_dev)),
                ],
            )
            .basic_auth(id, Some(secret(ci_dev))),
        )
        .await;
        w.send(
            "cc: no credentials",
            form(app, "/envs/dev/token", &[("grant_type", "client_credentials")]),
        )
        .await;
        w.send(
            "cc: wrong secret",
            form(app, "/envs/dev/token", &[("grant_type", "client_credentials")])
                .basic_auth(id, Some("airlock_secret_not-the-right-one-at-all")),
        )
        .await;
        w.send(
            "cc: unknown client",
            form(app, "/envs/dev/token", &[("grant_type", "client_credentials")])
                .basic_auth("agt_00000000000000000000000000000000", Some("whatever-secret")),
        )
        .await;
        w.send(
            "cc: client_secret_post with a malformed client id",
            form(
                app,
                "/envs/dev/token",
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", "not an id"),
                    ("client_secret", "whatever-secret"),
                ],
            ),
        )
        .await;
        w.send(
            "cc: Basic that is not base64",
            form(app, "/envs/dev/token", &[("grant_type", "client_credentials")])
                .header("authorization", "Basic !!!"),
        )
        .await;
        w.send(
            "cc: a Bearer header instead of credentials",
            form(app, "/envs/dev/token", &[("grant_type", "client_credentials")]).bearer_auth("some-token"),
        )
        .await;
        w.send(
            "cc: a dev agent at staging",
            client_credentials(app, "staging", ci_dev, Some("db:read")),
        )
        .await;
        w.send(
            "cc: unknown scope",
            client_credentials(app, "dev", ci_dev, Some("db:nope")),
        )
        .await;
        w.send(
            "cc: a scope the agent does not hold",
            client_credentials(app, "staging", ci_staging, Some("db:write")),
        )
        .await;
        w.send(
            "cc: a destructive scope without a grant",
            client_credentials(app, "dev", ci_dev, Some("db:drop")),
        )
        .await;
        w.send("cc: prod agent", client_credentials(app, "prod", ci_prod, None))
            .await;
        w.send(
            "cc: no grant_type",
            form(app, "/envs/dev/token", &[("scope", "db:read")]).basic_auth(id, Some(secret(ci_dev))),
        )
        .await;
        for (label, grant) in [
            ("cc: grant_type password", "password"),
            ("cc: device-code grant at an environment", DEVICE_GRANT),
            ("cc: refresh grant at an environment", "refresh_token"),
        ] {
            w.send(
                label,
                form(app, "/envs/dev/token", &[("grant_type", grant)]).basic_auth(id, Some(secret(ci_dev))),
            )
            .await;
        }
        w.send(
            "cc: a repeated parameter",
            raw_form(
                app,
                "/envs/dev/token",
                "grant_type=client_credentials&scope=db:read&scope=db:write".into(),
            )
            .basic_auth(id, Some(secret(ci_dev))),
        )
        .await;
        let many = (0..33).map(|i| format!("p{i}=x")).collect::<Vec<_>>().join("&");
        w.send(
            "cc: too many parameters",
            raw_form(
                app,
                "/envs/dev/token",
                format!("grant_type=client_credentials&{many}"),
            )
            .basic_auth(id, Some(secret(ci_dev))),
        )
        .await;
        w.send(
            "cc: JSON body",
            post(app, "/envs/dev/token")
                .json(&json!({ "grant_type": "client_credentials" }))
                .basic_auth(id, Some(secret(ci_dev))),
        )
        .await;
        w.send(
            "cc: no content type",
            post(app, "/envs/dev/token")
                .body("grant_type=client_credentials")
                .basic_auth(id, Some(secret(ci_dev))),
        )
        .await;
        w.send(
            "cc: oversized body",
            raw_form(
                app,
                "/envs/dev/token",
                format!("grant_type=client_credentials&pad={}", oversized(9000)),
            )
            .basic_auth(id, Some(secret(ci_dev))),
        )
        .await;
        w.send(
            "cc: unknown environment",
            client_credentials(app, "nope", ci_dev, Some("db:read")),
        )
        .await;
    }

    /// RFC 8693 token exchange at `/envs/{env}/token`.
    pub(super) async fn token_exchange(&mut self) {
        let app = self.app;
        let (dana, rookie) = (self.kept("dana"), self.kept("rookie"));
        let w = &mut self.w;
        w.send(
            "exchange: staging db:read",
            exchange(app, "staging", &dana, Some("db:read"), None),
        )
        .await
        .expect(200, "dana gets a staging token");
        let r = w
            .send(
                "exchange: for a named process",
                exchange(app, "staging", &dana, Some("db:read"), Some("deploy-bot")),
            )
            .await
            .expect(200, "dana gets a staging token for deploy-bot");
        let delegated = r.s("access_token");
        w.send(
            "exchange: dev, default scopes",
            exchange(app, "dev", &dana, None, None),
        )
        .await;
        w.send(
            "exchange: a destructive scope without a grant",
            exchange(app, "dev", &dana, Some("db:drop"), None),
        )
        .await;
        w.send(
            "exchange: prod without a grant",
            exchange(app, "prod", &dana, Some("db:read"), None),
        )
        .await;
        w.send(
            "exchange: a scope the role does not give",
            exchange(app, "staging", &dana, Some("db:migrate"), None),
        )
        .await;
        w.send(
            "exchange: unknown scope",
            exchange(app, "staging", &dana, Some("db:nope"), None),
        )
        .await;
        w.send(
            "exchange: an environment no role gives",
            exchange(app, "staging", &rookie, Some("db:read"), None),
        )
        .await;
        w.send(
            "exchange: not a session token",
            exchange(app, "staging", "not-a-token", Some("db:read"), None),
        )
        .await;
        w.send(
            "exchange: no subject_token",
            form(app, "/envs/staging/token", &[("grant_type", EXCHANGE)]),
        )
        .await;
        w.send(
            "exchange: wrong subject_token_type",
            form(
                app,
                "/envs/staging/token",
                &[
                    ("grant_type", EXCHANGE),
                    ("subject_token", dana.as_str()),
                    ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
                ],
            ),
        )
        .await;
        w.send(
            "exchange: actor_token without its type",
            form(
                app,
                "/envs/staging/token",
                &[
                    ("grant_type", EXCHANGE),
                    ("subject_token", dana.as_str()),
                    ("subject_token_type", ACCESS_TOKEN_TYPE),
                    ("actor_token", "deploy-bot"),
                ],
            ),
        )
        .await;
        w.send(
            "exchange: an actor with no usable name",
            exchange(app, "staging", &dana, Some("db:read"), Some("!!!")),
        )
        .await;
        w.send(
            "exchange: unknown environment",
            exchange(app, "nope", &dana, Some("db:read"), None),
        )
        .await;
        self.keep("delegated", delegated);
    }

    /// RFC 8628 device authorization, the device page, and `/oauth/token`.
    pub(super) async fn device_flow(&mut self) {
        let app = self.app;
        let w = &mut self.w;
        let start = || {
            form(
                app,
                "/oauth/device_authorization",
                &[("client_id", "airlock-cli")],
            )
            .header("user-agent", TERMINAL)
        };
        let d1 = w
            .send("device: authorize", start())
            .await
            .expect(200, "a device code");
        let (device1, user1) = (d1.s("device_code"), d1.s("user_code"));
        w.name(&device1, "<device-code:D1>");
        w.name(&user1, &format!("<user-code:D1 {}>", shape(&user1)));
        let lower = user1.to_lowercase();
        w.name(&lower, &format!("<user-code:D1 {}>", shape(&lower)));
        w.send(
            "device: authorize another client",
            form(
                app,
                "/oauth/device_authorization",
                &[("client_id", "someone-else")],
            ),
        )
        .await;
        w.send(
            "device: authorize without client_id",
            form(app, "/oauth/device_authorization", &[("scope", "x")]),
        )
        .await;
        w.send(
            "device: authorize with JSON",
            post(app, "/oauth/device_authorization").json(&json!({ "client_id": "airlock-cli" })),
        )
        .await;
        w.send(
            "device: authorize, oversized body",
            raw_form(
                app,
                "/oauth/device_authorization",
                format!("client_id=airlock-cli&pad={}", oversized(9000)),
            ),
        )
        .await;
        w.send(
            "device: authorize, repeated client_id",
            raw_form(
                app,
                "/oauth/device_authorization",
                "client_id=airlock-cli&client_id=airlock-cli".into(),
            ),
        )
        .await;
        let poll = |code: &str| {
            form(
                app,
                "/oauth/token",
                &[
                    ("grant_type", DEVICE_GRANT),
                    ("device_code", code),
                    ("client_id", "airlock-cli"),
                ],
            )
        };
        w.send("device: poll, pending", poll(&device1)).await;
        w.send("device: poll too soon", poll(&device1)).await;
        w.send("device: poll an unknown code", poll("airlock_device_unknown"))
            .await;
        w.send(
            "oauth token: another client",
            form(
                app,
                "/oauth/token",
                &[
                    ("grant_type", DEVICE_GRANT),
                    ("device_code", device1.as_str()),
                    ("client_id", "someone-else"),
                ],
            ),
        )
        .await;
        w.send(
            "oauth token: no client_id",
            form(
                app,
                "/oauth/token",
                &[("grant_type", DEVICE_GRANT), ("device_code", device1.as_str())],
            ),
        )
        .await;
        w.send(
            "oauth token: no device_code",
            form(
                app,
                "/oauth/token",
                &[("grant_type", DEVICE_GRANT), ("client_id", "airlock-cli")],
            ),
        )
        .await;
        w.send(
            "oauth token: no grant_type",
            form(app, "/oauth/token", &[("client_id", "airlock-cli")]),
        )
        .await;
        w.send(
            "oauth token: client_credentials",
            form(
                app,
                "/oauth/token",
                &[("grant_type", "client_credentials"), ("client_id", "airlock-cli")],
            ),
        )
        .await;
        w.send(
            "oauth token: JSON body",
            post(app, "/oauth/token").json(&json!({ "grant_type": "refresh_token" })),
        )
        .await;
        w.send(
            "oauth token: oversized body",
            raw_form(
                app,
                "/oauth/token",
                format!("client_id=airlock-cli&pad={}", oversized(9000)),
            ),
        )
        .await;
        w.send(
            "oauth token: repeated parameter",
            raw_form(
                app,
                "/oauth/token",
                "client_id=airlock-cli&client_id=airlock-cli&grant_type=refresh_token".into(),
            ),
        )
        .await;

        // casey approves in a browser.
        let jar = &mut self.casey_web;
        let page = w
            .browse(
                "device page: signed out, with the code",
                jar,
                get(app, &format!("/device?user_code={}", user1.to_lowercase())),
            )
            .await;
        w.browse(
            "login: sign in for the device page",
            jar,
            form(
                app,
                "/login",
                &[
                    ("csrf", page.field("csrf").as_str()),
                    ("next", "device"),
                    ("user_code", user1.as_str()),
                    ("username", "casey"),
                    ("password", PASSWORD),
                    ("code", ""),
                ],
            ),
        )
        .await
        .expect(303, "casey signs in on the web");
        w.browse("device page: enter a code", jar, get(app, "/device"))
            .await;
        w.browse(
            "device page: an unknown code",
            jar,
            get(app, "/device?user_code=BBBB-BBBB"),
        )
        .await;
        let confirm = w
            .browse(
                "device page: confirm",
                jar,
                get(app, &format!("/device?user_code={user1}")),
            )
            .await
            .expect(200, "the confirm page");
        let csrf = confirm.field("csrf");
        w.browse(
            "device page: decide without CSRF",
            jar,
            form(
                app,
                "/device",
                &[("user_code", user1.as_str()), ("decision", "approve")],
            ),
        )
        .await;
        w.browse(
            "device page: decide without a decision",
            jar,
            form(
                app,
                "/device",
                &[("csrf", csrf.as_str()), ("user_code", user1.as_str())],
            ),
        )
        .await;
        w.browse(
            "device page: approve",
            jar,
            form(
                app,
                "/device",
                &[
                    ("csrf", csrf.as_str()),
                    ("user_code", user1.as_str()),
                    ("decision", "approve"),
                ],
            ),
        )
        .await
        .expect(200, "casey approves");
        w.browse(
            "device page: approve a decided code",
            jar,
            form(
                app,
                "/device",
                &[
                    ("csrf", csrf.as_str()),
                    ("user_code", user1.as_str()),
                    ("decision", "approve"),
                ],
            ),
        )
        .await;
        w.browse(
            "device page: approve without a code",
            jar,
            form(
                app,
                "/device",
                &[("csrf", csrf.as_str()), ("decision", "approve")],
            ),
        )
        .await;
        let tokens = w
            .send("device: poll, approved", poll(&device1))
            .await
            .expect(200, "the terminal gets casey's session");
        w.name(&tokens.s("session_id"), "<session:casey, device>");
        w.send("device: poll a redeemed code", poll(&device1)).await;

        // A second code, denied.
        let d2 = w.quiet(start()).await.expect(200, "a second device code");
        w.name(&d2.s("device_code"), "<device-code:D2>");
        w.name(
            &d2.s("user_code"),
            &format!("<user-code:D2 {}>", shape(&d2.s("user_code"))),
        );
        w.browse(
            "device page: deny",
            jar,
            form(
                app,
                "/device",
                &[
                    ("csrf", csrf.as_str()),
                    ("user_code", d2.s("user_code").as_str()),
                    ("decision", "deny"),
                ],
            ),
        )
        .await
        .expect(200, "casey denies");
        w.send("device: poll, denied", poll(&d2.s("device_code"))).await;

        // The session's refresh token rotates; a reused one ends the session.
        let refresh = |t: &str| {
            form(
                app,
                "/oauth/token",
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", t),
                    ("client_id", "airlock-cli"),
                ],
            )
        };
        let first = tokens.s("refresh_token");
        w.send(
            "me: a device-flow session",
            bearer_get(app, "/v1/me", &tokens.s("access_token")),
        )
        .await;
        let rotated = w
            .send("refresh: rotate", refresh(&first))
            .await
            .expect(200, "the refresh token rotates");
        w.send("refresh: reuse", refresh(&first)).await;
        w.send("refresh: after reuse", refresh(&rotated.s("refresh_token")))
            .await;
        w.send("refresh: unknown token", refresh("airlock_refresh_unknown"))
            .await;
        w.send(
            "refresh: no refresh_token",
            form(
                app,
                "/oauth/token",
                &[("grant_type", "refresh_token"), ("client_id", "airlock-cli")],
            ),
        )
        .await;
        w.send(
            "refresh: no client_id",
            form(
                app,
                "/oauth/token",
                &[("grant_type", "refresh_token"), ("refresh_token", first.as_str())],
            ),
        )
        .await;
    }
}
