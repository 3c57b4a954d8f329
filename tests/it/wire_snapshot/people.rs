//! People over `/v1`: sign-in and sessions, TOTP self-service, the admin API for people and
//! agents, JSON bodies the routes refuse, and the sign-in throttle.

use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret;
use serde_json::json;

use super::record::{Jar, Record};
use super::requests::*;
use super::{Script, normalise};
use crate::support::PASSWORD;
use crate::support::TestAgent;

impl Script<'_> {
    /// `/v1/sessions`, `/v1/me` and logout.
    pub(super) async fn sessions(&mut self) {
        let app = self.app;
        let wrong_root_code = self.root_totp.wrong();
        let w = &mut self.w;
        let r = w
            .send("sessions: password sign-in", sign_in(app, "dana", PASSWORD, None))
            .await
            .expect(200, "dana signs in");
        let dana = r.s("access_token");
        w.name(&r.s("session_id"), "<session:dana>");
        // Two more sessions of dana's: one to sign out of, one to show a prod grant is
        // bound to the session that first used it.
        let dana_other = w
            .quiet(sign_in(app, "dana", PASSWORD, None))
            .await
            .expect(200, "dana's second session")
            .s("access_token");
        let dana_leaving = w
            .quiet(sign_in(app, "dana", PASSWORD, None))
            .await
            .expect(200, "dana's third session")
            .s("access_token");
        w.name(&sid(&dana_other), "<session:dana 2>");
        w.name(&sid(&dana_leaving), "<session:dana 3>");
        w.send(
            "sessions: wrong password",
            sign_in(app, "dana", "not the password at all", None),
        )
        .await;
        w.send("sessions: unknown person", sign_in(app, "nobody", PASSWORD, None))
            .await;
        w.send("sessions: TOTP needed", sign_in(app, "root", PASSWORD, None))
            .await;
        w.send(
            "sessions: wrong TOTP code",
            sign_in(app, "root", PASSWORD, Some(&wrong_root_code)),
        )
        .await;
        w.send(
            "sessions: password over the length limit",
            sign_in(app, "dana", &oversized(2000), None),
        )
        .await;
        w.send(
            "sessions: JSON syntax error",
            post(app, "/v1/sessions")
                .header(CONTENT_TYPE, "application/json")
                .body("{\"username\":"),
        )
        .await;
        w.send(
            "sessions: unknown field",
            post(app, "/v1/sessions")
                .json(&json!({ "username": "dana", "password": PASSWORD, "remember": true })),
        )
        .await;
        w.send(
            "sessions: missing password",
            post(app, "/v1/sessions").json(&json!({ "username": "dana" })),
        )
        .await;
        let r = w
            .send(
                "sessions: JSON without a JSON content type",
                post(app, "/v1/sessions")
                    .header(CONTENT_TYPE, "text/plain")
                    .body(json!({ "username": "drew", "password": PASSWORD }).to_string()),
            )
            .await
            .expect(200, "drew signs in");
        w.name(&r.s("session_id"), "<session:drew 2>");
        w.send(
            "sessions: oversized body",
            post(app, "/v1/sessions")
                .header(CONTENT_TYPE, "application/json")
                .body(format!("{{\"username\":\"{}\"}}", oversized(70_000))),
        )
        .await;
        let rookie = w
            .send(
                "sessions: admin role without TOTP",
                sign_in(app, "rookie", PASSWORD, None),
            )
            .await
            .expect(200, "rookie signs in")
            .s("access_token");
        let drew = w
            .quiet(sign_in(app, "drew", PASSWORD, None))
            .await
            .expect(200, "drew signs in")
            .s("access_token");
        w.name(&sid(&rookie), "<session:rookie>");
        w.name(&sid(&drew), "<session:drew>");

        w.send("me: a developer", bearer_get(app, "/v1/me", &dana)).await;
        w.send(
            "me: an admin signed in with TOTP",
            bearer_get(app, "/v1/me", &self.root),
        )
        .await;
        w.send(
            "me: lowercase bearer",
            get(app, "/v1/me").header("authorization", format!("bearer {dana}")),
        )
        .await;
        w.send("me: no credentials", get(app, "/v1/me")).await;
        w.send(
            "me: a token that is not a session",
            bearer_get(app, "/v1/me", "not-a-token"),
        )
        .await;
        let env_token = self.kept["ci-dev db:read"].clone();
        w.send("me: an environment token", bearer_get(app, "/v1/me", &env_token))
            .await;

        w.send(
            "sessions: sign out",
            request(app, Method::DELETE, "/v1/sessions/current").bearer_auth(&dana_leaving),
        )
        .await;
        w.send(
            "sessions: sign out again",
            request(app, Method::DELETE, "/v1/sessions/current").bearer_auth(&dana_leaving),
        )
        .await;
        w.send(
            "sessions: sign out without a session",
            request(app, Method::DELETE, "/v1/sessions/current"),
        )
        .await;
        w.send(
            "me: a signed-out session",
            bearer_get(app, "/v1/me", &dana_leaving),
        )
        .await;

        // dana in a browser, before she sets up TOTP (a session without a code stays valid).
        let page = w.quiet(get(app, "/approvals")).await;
        self.dana_web.keep(&page);
        let signed = w
            .quiet(self.dana_web.send(login_form(
                app,
                Some(&page.field("csrf")),
                "approvals",
                "dana",
                PASSWORD,
                "",
            )))
            .await
            .expect(303, "dana signs in on the web");
        self.dana_web.keep(&signed);

        self.keep("dana", dana);
        self.keep("dana other", dana_other);
        self.keep("rookie", rookie);
        self.keep("drew", drew);
    }

    /// TOTP enrolment and step-up over the API.
    pub(super) async fn totp_self_service(&mut self) {
        let app = self.app;
        let dana = self.kept("dana");
        let w = &mut self.w;
        w.send(
            "totp: step-up without TOTP",
            bearer_post(app, "/v1/me/step-up", &dana, json!({ "code": "123456" })),
        )
        .await;
        w.send(
            "totp: enrol with a wrong password",
            bearer_post(
                app,
                "/v1/me/totp",
                &dana,
                json!({ "password": "not the password at all" }),
            ),
        )
        .await;
        w.send(
            "totp: enrol without a body",
            post(app, "/v1/me/totp").bearer_auth(&dana),
        )
        .await;
        w.send(
            "totp: enrol without a session",
            post(app, "/v1/me/totp").json(&json!({ "password": PASSWORD })),
        )
        .await;
        let r = w
            .send(
                "totp: enrol",
                bearer_post(app, "/v1/me/totp", &dana, json!({ "password": PASSWORD })),
            )
            .await
            .expect(200, "dana starts enrolment");
        let shown = r.s("secret");
        let grouped = normalise::grouped(&shown, 4);
        w.name(&shown, &format!("<totp-secret:dana {}>", key_shape(&shown)));
        w.name(&grouped, &format!("<totp-secret:dana {}>", key_shape(&grouped)));
        let secret = data_encoding::BASE32_NOPAD
            .decode(shown.as_bytes())
            .expect("base32 secret");
        let mut totp = Totp { secret, next: 0 };
        w.send(
            "totp: activate with a wrong code",
            bearer_post(
                app,
                "/v1/me/totp/activate",
                &dana,
                json!({ "code": totp.wrong() }),
            ),
        )
        .await;
        let code = totp.code().await;
        w.send(
            "totp: activate",
            bearer_post(app, "/v1/me/totp/activate", &dana, json!({ "code": code })),
        )
        .await
        .expect(204, "dana activates TOTP");
        w.send(
            "totp: activate again",
            bearer_post(app, "/v1/me/totp/activate", &dana, json!({ "code": code })),
        )
        .await;
        w.send(
            "totp: enrol again",
            bearer_post(app, "/v1/me/totp", &dana, json!({ "password": PASSWORD })),
        )
        .await;
        w.send("me: just enrolled", bearer_get(app, "/v1/me", &dana))
            .await;
        self.dana_totp = Some(totp);
    }

    /// The admin API: people and agents.
    pub(super) async fn admin(&mut self) {
        let app = self.app;
        let (root, dana, rookie) = (self.root.clone(), self.kept("dana"), self.kept("rookie"));
        let wrong = self.root_totp.wrong();
        let w = &mut self.w;
        let erin = json!({ "username": "erin", "password": PASSWORD, "roles": ["developer"] });
        w.send("users: list", bearer_get(app, "/v1/users", &root)).await;
        w.send("users: list as a developer", bearer_get(app, "/v1/users", &dana))
            .await;
        w.send(
            "users: list as an admin without TOTP",
            bearer_get(app, "/v1/users", &rookie),
        )
        .await;
        w.send("users: list without a session", get(app, "/v1/users"))
            .await;
        w.send(
            "users: create before stepping up",
            bearer_post(app, "/v1/users", &root, erin.clone()),
        )
        .await;
        w.send(
            "step-up: wrong code",
            bearer_post(app, "/v1/me/step-up", &root, json!({ "code": wrong })),
        )
        .await;
        w.send(
            "step-up: unknown field",
            bearer_post(
                app,
                "/v1/me/step-up",
                &root,
                json!({ "code": "123456", "totp": "1" }),
            ),
        )
        .await;
        let code = self.root_totp.code().await;
        w.send(
            "step-up: fresh code",
            bearer_post(app, "/v1/me/step-up", &root, json!({ "code": code })),
        )
        .await
        .expect(204, "root steps up");
        w.send("me: an admin stepped up", bearer_get(app, "/v1/me", &root))
            .await;
        w.send(
            "users: create",
            bearer_post(app, "/v1/users", &root, erin.clone()),
        )
        .await
        .expect(201, "root creates erin");
        w.send(
            "users: create a taken username",
            bearer_post(app, "/v1/users", &root, erin),
        )
        .await;
        for (label, body) in [
            (
                "users: create with a bad username",
                json!({ "username": "Bad Name!", "password": PASSWORD }),
            ),
            (
                "users: create with a short password",
                json!({ "username": "frank", "password": "short" }),
            ),
            (
                "users: create with an unknown role",
                json!({ "username": "frank", "password": PASSWORD, "roles": ["wizard"] }),
            ),
            ("users: create without a password", json!({ "username": "frank" })),
        ] {
            w.send(label, bearer_post(app, "/v1/users", &root, body)).await;
        }
        w.send(
            "users: create as an admin without TOTP",
            bearer_post(
                app,
                "/v1/users",
                &rookie,
                json!({ "username": "frank", "password": PASSWORD }),
            ),
        )
        .await;
        w.send("users: show", bearer_get(app, "/v1/users/erin", &root))
            .await;
        w.send(
            "users: show, name in capitals",
            bearer_get(app, "/v1/users/ERIN", &root),
        )
        .await;
        w.send("users: show unknown", bearer_get(app, "/v1/users/nobody", &root))
            .await;
        w.send(
            "users: disable",
            bearer_post(app, "/v1/users/erin/disable", &root, json!({})),
        )
        .await;
        w.send(
            "sessions: a disabled person",
            sign_in(app, "erin", PASSWORD, None),
        )
        .await;
        w.send(
            "users: enable",
            bearer_post(app, "/v1/users/erin/enable", &root, json!({})),
        )
        .await;
        w.send(
            "users: disable oneself",
            bearer_post(app, "/v1/users/root/disable", &root, json!({})),
        )
        .await;
        w.send(
            "users: disable unknown",
            bearer_post(app, "/v1/users/nobody/disable", &root, json!({})),
        )
        .await;
        for (label, body) in [
            ("users: reset nothing", json!({})),
            (
                "users: reset the password",
                json!({ "password": "a brand new long password" }),
            ),
            ("users: reset to an unknown role", json!({ "roles": ["wizard"] })),
            (
                "users: reset roles",
                json!({ "roles": ["developer", "approver"] }),
            ),
            ("users: reset TOTP", json!({ "reset_totp": true })),
            ("users: reset with an unknown field", json!({ "totp": true })),
        ] {
            w.send(label, bearer_post(app, "/v1/users/erin/reset", &root, body))
                .await;
        }
        w.send(
            "users: reset unknown",
            bearer_post(
                app,
                "/v1/users/nobody/reset",
                &root,
                json!({ "reset_totp": true }),
            ),
        )
        .await;
        w.send(
            "users: disable as a developer",
            bearer_post(app, "/v1/users/erin/disable", &dana, json!({})),
        )
        .await;

        w.send("agents: list", bearer_get(app, "/v1/agents", &root)).await;
        w.send(
            "agents: list one environment",
            bearer_get(app, "/v1/agents?env=dev", &root),
        )
        .await;
        w.send(
            "agents: list with a repeated filter",
            bearer_get(app, "/v1/agents?env=dev&env=staging", &root),
        )
        .await;
        w.send(
            "agents: list as a developer",
            bearer_get(app, "/v1/agents", &dana),
        )
        .await;
        let deployer = json!({
            "name": "deployer", "environment": "dev", "scopes": ["db:read", "db:drop"], "owner": "dana"
        });
        let r = w
            .send(
                "agents: create",
                bearer_post(app, "/v1/agents", &root, deployer.clone()),
            )
            .await
            .expect(201, "root registers deployer");
        let deployer_agent = TestAgent {
            client_id: r.s("client_id"),
            secret: secrecy::SecretString::from(r.s("client_secret")),
        };
        w.name(&r.s("client_secret"), "<agent-secret:dev/deployer>");
        w.send(
            "agents: create a taken name",
            bearer_post(app, "/v1/agents", &root, deployer),
        )
        .await;
        for (label, body) in [
            (
                "agents: create without an owner",
                json!({ "name": "x1", "environment": "dev", "scopes": ["db:read"] }),
            ),
            (
                "agents: create with an unknown owner",
                json!({ "name": "x1", "environment": "dev", "scopes": ["db:read"], "owner": "nobody" }),
            ),
            (
                "agents: create in an unknown environment",
                json!({ "name": "x1", "environment": "nope", "scopes": ["db:read"], "owner": "dana" }),
            ),
            (
                "agents: create with a bad name",
                json!({ "name": "bad name", "environment": "dev", "scopes": ["db:read"], "owner": "dana" }),
            ),
            (
                "agents: create with an unknown scope",
                json!({ "name": "x1", "environment": "dev", "scopes": ["db:nope"], "owner": "dana" }),
            ),
            (
                "agents: create without scopes",
                json!({ "name": "x1", "environment": "dev", "scopes": [], "owner": "dana" }),
            ),
            (
                "agents: create with an unknown field",
                json!({ "name": "x1", "environment": "dev", "scopes": ["db:read"], "owner": "dana", "ttl": 5 }),
            ),
        ] {
            w.send(label, bearer_post(app, "/v1/agents", &root, body)).await;
        }
        w.send(
            "agents: create as an admin without TOTP",
            bearer_post(
                app,
                "/v1/agents",
                &rookie,
                json!({ "name": "x1", "environment": "dev", "scopes": ["db:read"], "owner": "dana" }),
            ),
        )
        .await;
        let prod_id = self.ci_prod.client_id.clone();
        w.send(
            "agents: show by client id",
            bearer_get(app, &format!("/v1/agents/{}", deployer_agent.client_id), &root),
        )
        .await;
        w.send(
            "agents: show by ENV/NAME",
            bearer_get(app, "/v1/agents/dev%2Fci", &root),
        )
        .await;
        w.send(
            "agents: show by an ambiguous name",
            bearer_get(app, "/v1/agents/ci", &root),
        )
        .await;
        w.send(
            "agents: show unknown client id",
            bearer_get(app, "/v1/agents/agt_00000000000000000000000000000000", &root),
        )
        .await;
        w.send(
            "agents: show unknown name",
            bearer_get(app, "/v1/agents/nothing", &root),
        )
        .await;
        w.send(
            "agents: disable",
            bearer_post(app, &format!("/v1/agents/{prod_id}/disable"), &root, json!({})),
        )
        .await;
        w.send(
            "cc: a disabled agent",
            client_credentials(app, "prod", &self.ci_prod, None),
        )
        .await;
        w.send(
            "agents: enable",
            bearer_post(app, &format!("/v1/agents/{prod_id}/enable"), &root, json!({})),
        )
        .await;
        let r = w
            .send(
                "agents: reset the secret",
                bearer_post(app, &format!("/v1/agents/{prod_id}/reset"), &root, json!({})),
            )
            .await
            .expect(200, "root resets ci-prod's secret");
        w.send(
            "cc: the secret before the reset",
            client_credentials(app, "prod", &self.ci_prod, None),
        )
        .await;
        let rotated = TestAgent {
            client_id: prod_id.clone(),
            secret: secrecy::SecretString::from(r.s("client_secret")),
        };
        w.name(&r.s("client_secret"), "<agent-secret:prod/ci, reset>");
        w.send(
            "cc: the new secret",
            client_credentials(app, "prod", &rotated, None),
        )
        .await;
        w.send(
            "agents: disable as an admin without TOTP",
            bearer_post(app, &format!("/v1/agents/{prod_id}/disable"), &rookie, json!({})),
        )
        .await;
        w.send(
            "agents: disable unknown",
            bearer_post(app, "/v1/agents/nothing/disable", &root, json!({})),
        )
        .await;
        self.keep("deployer id", deployer_agent.client_id);
        self.keep(
            "deployer secret",
            deployer_agent.secret.expose_secret().to_string(),
        );
    }

    /// Every route that reads a JSON body, given a broken one by a caller it accepts.
    pub(super) async fn json_bodies(&mut self) {
        let app = self.app;
        let root = self.root.clone();
        let w = &mut self.w;
        for path in [
            "/v1/me/step-up",
            "/v1/me/totp",
            "/v1/me/totp/activate",
            "/v1/users",
            "/v1/users/erin/reset",
            "/v1/agents",
            "/v1/escalations",
            "/v1/escalations/00000000-0000-4000-8000-000000000000/approve",
            "/v1/escalations/00000000-0000-4000-8000-000000000000/deny",
            "/v1/grants/00000000-0000-4000-8000-000000000000/revoke",
        ] {
            w.send(
                &format!("broken JSON: POST {path}"),
                post(app, path)
                    .bearer_auth(&root)
                    .header(CONTENT_TYPE, "application/json")
                    .body("{\"a\":"),
            )
            .await;
            w.send(
                &format!("JSON of the wrong shape: POST {path}"),
                bearer_post(app, path, &root, json!(["not", "an", "object"])),
            )
            .await;
        }
    }

    /// Failed sign-ins from one address are delayed once past the free allowance.
    pub(super) async fn sign_in_throttle(&mut self) {
        let app = self.app;
        let w = &mut self.w;
        let mut browser = Jar::default();
        let page = w.quiet(get(app, "/approvals")).await;
        browser.keep(&page);
        let token = page.field("csrf");
        // Failures cost no password hashing when the password is over the length limit,
        // so the failure that starts a 1 s delay and the refused attempts recorded below
        // follow each other within milliseconds. How much of the delay is left shows in
        // the answers, so it is not compared; on a machine so slow that the delay ran out
        // before the recorded attempts, they are taken back and the step done again.
        let long = oversized(2000);
        for attempt in 1.. {
            let mut refused = false;
            for _ in 0..40 {
                let r = w.quiet(sign_in(app, "ghost", &long, None)).await;
                if r.status == StatusCode::TOO_MANY_REQUESTS {
                    refused = true;
                    break;
                }
            }
            assert!(refused, "the sign-in throttle never started");
            let api = w
                .send_as(
                    "sessions: throttled",
                    sign_in(app, "ghost", &long, None),
                    Record::VolatileWait,
                )
                .await;
            let page = w
                .send_as(
                    "login: throttled",
                    browser.send(form(
                        app,
                        "/login",
                        &[
                            ("csrf", token.as_str()),
                            ("username", "ghost"),
                            ("password", long.as_str()),
                        ],
                    )),
                    Record::VolatileWait,
                )
                .await;
            let both = [api.status, page.status] == [StatusCode::TOO_MANY_REQUESTS; 2];
            if both {
                break;
            }
            assert!(attempt < 5, "the throttle's delay ran out before every attempt");
            w.retract(2);
        }
    }
}
