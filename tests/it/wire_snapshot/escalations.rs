//! Escalations over `/v1`: requests, decisions, grants at the token endpoint and their
//! revocation, introspection, and the creation rate.

use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};

use super::Script;
use super::record::Record;
use super::requests::*;
use crate::support::TestAgent;

impl Script<'_> {
    /// `/v1/escalations`: requests, decisions and refusals.
    pub(super) async fn escalations(&mut self) {
        let app = self.app;
        let (dana, drew, rookie, avery, root) = (
            self.kept("dana"),
            self.kept("drew"),
            self.kept("rookie"),
            self.avery.clone(),
            self.root.clone(),
        );
        let agent = self.kept("ci-dev db:read");
        let delegated = self.kept("delegated");
        let dana_other = self.kept("dana other");
        let deployer = TestAgent {
            client_id: self.kept("deployer id"),
            secret: secrecy::SecretString::from(self.kept("deployer secret")),
        };
        let w = &mut self.w;
        let owned = w
            .quiet(client_credentials(app, "dev", &deployer, Some("db:read")))
            .await
            .expect(200, "deployer's token")
            .s("access_token");
        let create = |token: &str, body: Value| bearer_post(app, "/v1/escalations", token, body);
        let e1 = w
            .send(
                "escalations: a person asks for prod",
                create(
                    &dana,
                    escalation("prod", &["db:read"], "30m", "E1 read the prod orders (TICKET-1)"),
                ),
            )
            .await
            .expect(201, "E1")
            .s("id");
        let e2 = w
            .send(
                "escalations: a person asks for a scope beyond the role",
                create(
                    &dana,
                    escalation("staging", &["db:migrate"], "1h", "E2 migrate staging (TICKET-2)"),
                ),
            )
            .await
            .expect(201, "E2")
            .s("id");
        let e3 = w
            .send(
                "escalations: a duration over the maximum is capped",
                create(
                    &dana,
                    escalation(
                        "dev",
                        &["db:drop"],
                        "12h",
                        "E3 drop dev scratch tables (TICKET-3)",
                    ),
                ),
            )
            .await
            .expect(201, "E3")
            .s("id");
        w.send(
            "escalations: an agent asks",
            create(
                &agent,
                escalation("dev", &["db:drop"], "2h", "E4 reset the dev database (TICKET-4)"),
            ),
        )
        .await
        .expect(201, "E4");
        w.send(
            "escalations: an owned agent asks",
            create(
                &owned,
                escalation("dev", &["db:drop"], "10m", "E5 drop the deploy cache (TICKET-5)"),
            ),
        )
        .await
        .expect(201, "E5");
        w.send(
            "escalations: a person with the approver role asks",
            create(
                &drew,
                escalation("prod", &["db:write"], "45m", "E6 fix a prod row (TICKET-6)"),
            ),
        )
        .await
        .expect(201, "E6");
        let e7 = w
            .send(
                "escalations: a process acting for a person asks",
                create(
                    &delegated,
                    escalation(
                        "staging",
                        &["db:migrate"],
                        "15m",
                        "E7 migrate for deploy-bot (TICKET-7)",
                    ),
                ),
            )
            .await
            .expect(201, "E7")
            .s("id");
        w.send(
            "escalations: seconds as a number",
            create(&agent, json!({ "environment": "dev", "scopes": ["db:drop"], "duration": 600, "reason": "E8 a number of seconds (TICKET-8)" })),
        )
        .await
        .expect(201, "E8");

        for (label, token, body) in [
            (
                "escalations: another environment than the agent's",
                &agent,
                escalation("staging", &["db:read"], "10m", "cross"),
            ),
            (
                "escalations: unknown environment",
                &dana,
                escalation("nope", &["db:read"], "10m", "x"),
            ),
            (
                "escalations: unknown scope",
                &dana,
                escalation("dev", &["db:nope"], "10m", "x"),
            ),
            (
                "escalations: no scopes",
                &dana,
                escalation("dev", &[], "10m", "x"),
            ),
            (
                "escalations: no reason",
                &dana,
                escalation("dev", &["db:drop"], "10m", "  "),
            ),
            (
                "escalations: a bad duration",
                &dana,
                escalation("dev", &["db:drop"], "forever", "x"),
            ),
            (
                "escalations: a long duration text",
                &dana,
                escalation("dev", &["db:drop"], &"1".repeat(40), "x"),
            ),
            (
                "escalations: a field too long",
                &dana,
                escalation(&"e".repeat(65), &["db:drop"], "10m", "x"),
            ),
            (
                "escalations: what the role gives anyway",
                &dana,
                escalation("dev", &["db:read"], "10m", "x"),
            ),
            (
                "escalations: a person no role lets escalate",
                &rookie,
                escalation("prod", &["db:read"], "10m", "x"),
            ),
            (
                "escalations: unknown field",
                &dana,
                json!({ "environment": "dev", "scopes": ["db:drop"], "duration": "10m", "reason": "x", "urgent": true }),
            ),
        ] {
            w.send(label, create(token, body)).await;
        }
        w.send(
            "escalations: no credentials",
            post(app, "/v1/escalations").json(&escalation("dev", &["db:drop"], "10m", "x")),
        )
        .await;
        w.send(
            "escalations: JSON syntax error",
            post(app, "/v1/escalations")
                .bearer_auth(&dana)
                .header(CONTENT_TYPE, "application/json")
                .body("{"),
        )
        .await;
        w.send(
            "escalations: no content type",
            post(app, "/v1/escalations")
                .bearer_auth(&dana)
                .body(escalation("dev", &["db:drop"], "10m", "x").to_string()),
        )
        .await;
        w.send(
            "escalations: oversized body",
            post(app, "/v1/escalations")
                .bearer_auth(&dana)
                .header(CONTENT_TYPE, "application/json")
                .body(format!("{{\"reason\":\"{}\"}}", oversized(70_000))),
        )
        .await;

        w.send(
            "escalations: list, a requester",
            bearer_get(app, "/v1/escalations", &dana),
        )
        .await;
        w.send(
            "escalations: list pending, an approver",
            bearer_get(app, "/v1/escalations?pending=true", &avery),
        )
        .await;
        w.send(
            "escalations: list one environment, an admin",
            bearer_get(app, "/v1/escalations?environment=prod&limit=5", &root),
        )
        .await;
        w.send(
            "escalations: list, an agent",
            bearer_get(app, "/v1/escalations", &agent),
        )
        .await;
        w.send(
            "escalations: list, an unknown parameter",
            bearer_get(app, "/v1/escalations?state=pending", &dana),
        )
        .await;
        w.send(
            "escalations: list, a bad limit",
            bearer_get(app, "/v1/escalations?limit=many", &dana),
        )
        .await;
        w.send(
            "escalations: list without credentials",
            get(app, "/v1/escalations"),
        )
        .await;
        let one = |id: &str| format!("/v1/escalations/{id}");
        w.send(
            "escalations: show, the requester",
            bearer_get(app, &one(&e1), &dana),
        )
        .await;
        w.send(
            "escalations: show, someone who may not see it",
            bearer_get(app, &one(&e1), &rookie),
        )
        .await;
        w.send("escalations: show, not an id", bearer_get(app, &one("E1"), &dana))
            .await;
        w.send(
            "escalations: show, unknown id",
            bearer_get(app, &one("00000000-0000-4000-8000-000000000000"), &dana),
        )
        .await;
        w.send(
            "escalations: show, waiting a second",
            bearer_get(app, &format!("{}?wait=1", one(&e3)), &dana),
        )
        .await;
        w.send(
            "escalations: show, a bad wait",
            bearer_get(app, &format!("{}?wait=soon", one(&e3)), &dana),
        )
        .await;

        let approve = |id: &str, token: &str, body: Value| {
            bearer_post(app, &format!("{}/approve", one(id)), token, body)
        };
        w.send(
            "approve: an agent's token",
            approve(&e1, &agent, json!({ "totp": "123456" })),
        )
        .await;
        w.send(
            "approve: one's own request",
            approve(&e1, &dana, json!({ "totp": "123456" })),
        )
        .await;
        w.send(
            "approve: an approver without TOTP",
            approve(&e1, &drew, json!({ "totp": "123456" })),
        )
        .await;
        w.send("approve: no code", approve(&e1, &avery, json!({}))).await;
        w.send(
            "approve: a code too long",
            approve(&e1, &avery, json!({ "totp": "12345678901234567" })),
        )
        .await;
        let wrong = self.avery_totp.wrong();
        w.send(
            "approve: a wrong code",
            approve(&e1, &avery, json!({ "totp": wrong })),
        )
        .await;
        let code = self.avery_totp.code().await;
        let granted = w
            .send(
                "approve: fresh code",
                approve(&e1, &avery, json!({ "totp": code })),
            )
            .await
            .expect(200, "avery approves E1");
        w.send(
            "approve: a used code",
            approve(&e2, &avery, json!({ "totp": code })),
        )
        .await;
        w.send(
            "approve: a decided request",
            approve(&e1, &avery, json!({ "totp": "123456" })),
        )
        .await;
        w.send(
            "approve: not an id",
            approve("E1", &avery, json!({ "totp": "123456" })),
        )
        .await;
        w.send(
            "approve: unknown id",
            approve(
                "00000000-0000-4000-8000-000000000000",
                &avery,
                json!({ "totp": "123456" }),
            ),
        )
        .await;

        let deny =
            |id: &str, token: &str, body: Value| bearer_post(app, &format!("{}/deny", one(id)), token, body);
        w.send("deny: no reason", deny(&e2, &avery, json!({ "reason": " " })))
            .await;
        w.send(
            "deny: someone who may not see it",
            deny(&e2, &rookie, json!({ "reason": "no" })),
        )
        .await;
        w.send(
            "deny: an agent's token",
            deny(&e2, &agent, json!({ "reason": "no" })),
        )
        .await;
        w.send(
            "deny: with a reason",
            deny(
                &e2,
                &avery,
                json!({ "reason": "use the migration window on Thursday" }),
            ),
        )
        .await
        .expect(200, "avery denies E2");
        w.send(
            "deny: a decided request",
            deny(&e2, &avery, json!({ "reason": "again" })),
        )
        .await;

        let cancel = |id: &str, token: &str| post(app, &format!("{}/cancel", one(id))).bearer_auth(token);
        w.send("cancel: someone else's request", cancel(&e3, &avery))
            .await;
        w.send("cancel: own request", cancel(&e3, &dana))
            .await
            .expect(200, "dana cancels E3");
        w.send("cancel: a decided request", cancel(&e3, &dana)).await;
        w.send("cancel: not an id", cancel("E3", &dana)).await;
        w.send("cancel: a process's own request", cancel(&e7, &delegated))
            .await
            .expect(200, "deploy-bot cancels E7");

        // dana's prod grant needs a fresh code in the session that first uses it.
        w.send(
            "exchange: prod under a grant, before stepping up",
            exchange(app, "prod", &dana, Some("db:read"), None),
        )
        .await;
        let code = self
            .dana_totp
            .as_mut()
            .expect("dana's authenticator")
            .code()
            .await;
        w.send(
            "step-up: before using a prod grant",
            bearer_post(app, "/v1/me/step-up", &dana, json!({ "code": code })),
        )
        .await
        .expect(204, "dana steps up");
        w.send(
            "exchange: prod under a grant",
            exchange(app, "prod", &dana, Some("db:read"), None),
        )
        .await
        .expect(200, "dana's prod token");
        w.send(
            "exchange: prod under a grant bound to another session",
            exchange(app, "prod", &dana_other, Some("db:read"), None),
        )
        .await;

        w.send("grants: list, an admin", bearer_get(app, "/v1/grants", &root))
            .await;
        w.send(
            "grants: list active, the holder",
            bearer_get(app, "/v1/grants?active=true", &dana),
        )
        .await;
        w.send(
            "grants: list one environment, an approver",
            bearer_get(app, "/v1/grants?environment=prod", &avery),
        )
        .await;
        w.send("grants: list, an agent", bearer_get(app, "/v1/grants", &agent))
            .await;
        w.send(
            "grants: list, an unknown parameter",
            bearer_get(app, "/v1/grants?holder=dana", &root),
        )
        .await;
        w.send("grants: list without credentials", get(app, "/v1/grants"))
            .await;
        self.keep(
            "e1 grant",
            granted.json()["grant"]["id"]
                .as_str()
                .expect("E1's grant")
                .to_string(),
        );
        self.keep("owned", owned);
    }

    /// Grants at the token endpoint, revocation, and introspection.
    pub(super) async fn grants_and_introspection(&mut self) {
        let app = self.app;
        let (root, dana) = (self.root.clone(), self.kept("dana"));
        let (ci_dev, ci_staging, rs) = (&self.ci_dev, &self.ci_staging, &self.rs_dev);
        let e4 = self.kept("e4");
        let e1_grant = self.kept("e1 grant");
        let (plain, delegated) = (self.kept("ci-dev db:read"), self.kept("delegated"));
        let w = &mut self.w;
        let drop = w
            .send(
                "cc: a destructive scope under a grant",
                client_credentials(app, "dev", ci_dev, Some("db:drop")),
            )
            .await
            .expect(200, "ci-dev's db:drop token")
            .s("access_token");
        w.send(
            "introspect: active, under a grant",
            introspect(app, "dev", rs, &drop),
        )
        .await;
        w.send("introspect: active", introspect(app, "dev", rs, &plain))
            .await;
        w.send(
            "introspect: a person's token for a process",
            introspect(app, "staging", ci_staging, &delegated),
        )
        .await;
        w.send(
            "introspect: another environment's token",
            introspect(app, "dev", rs, &delegated),
        )
        .await;
        w.send(
            "introspect: not a token",
            introspect(app, "dev", rs, "not-a-token"),
        )
        .await;
        w.send("introspect: a session token", introspect(app, "dev", rs, &dana))
            .await;
        w.send(
            "introspect: no credentials",
            form(app, "/envs/dev/introspect", &[("token", plain.as_str())]),
        )
        .await;
        w.send(
            "introspect: client_secret_post",
            form(
                app,
                "/envs/dev/introspect",
                &[
                    ("token", plain.as_str()),
                    ("client_id", rs.client_id.as_str()),
                    ("client_secret", secret(rs)),
                ],
            ),
        )
        .await;
        w.send(
            "introspect: wrong secret",
            form(app, "/envs/dev/introspect", &[("token", plain.as_str())])
                .basic_auth(&rs.client_id, Some("airlock_secret_not-the-right-one-at-all")),
        )
        .await;
        w.send(
            "introspect: another environment's agent",
            introspect(app, "dev", ci_staging, &plain),
        )
        .await;
        w.send(
            "introspect: no token",
            form(app, "/envs/dev/introspect", &[]).basic_auth(&rs.client_id, Some(secret(rs))),
        )
        .await;
        w.send(
            "introspect: JSON body",
            post(app, "/envs/dev/introspect")
                .json(&json!({ "token": plain }))
                .basic_auth(&rs.client_id, Some(secret(rs))),
        )
        .await;
        w.send(
            "introspect: oversized body",
            raw_form(app, "/envs/dev/introspect", format!("token={}", oversized(9000)))
                .basic_auth(&rs.client_id, Some(secret(rs))),
        )
        .await;
        w.send(
            "introspect: unknown environment",
            introspect(app, "nope", rs, &plain),
        )
        .await;

        let e4_view = w
            .send(
                "escalations: show, an approved agent request",
                bearer_get(app, &format!("/v1/escalations/{e4}"), &root),
            )
            .await
            .expect(200, "E4");
        let e4_grant = e4_view.json()["grant"]["id"]
            .as_str()
            .expect("E4's grant")
            .to_string();
        let revoke = |id: &str, token: &str, body: Value| {
            bearer_post(app, &format!("/v1/grants/{id}/revoke"), token, body)
        };
        w.send(
            "revoke: no reason",
            revoke(&e4_grant, &root, json!({ "reason": "" })),
        )
        .await;
        w.send(
            "revoke: someone who may not see it",
            revoke(&e4_grant, &dana, json!({ "reason": "done" })),
        )
        .await;
        w.send(
            "revoke: an admin",
            revoke(&e4_grant, &root, json!({ "reason": "reset is done" })),
        )
        .await
        .expect(200, "root revokes E4's grant");
        w.send(
            "revoke: a revoked grant",
            revoke(&e4_grant, &root, json!({ "reason": "again" })),
        )
        .await;
        w.send("revoke: not an id", revoke("G1", &root, json!({ "reason": "x" })))
            .await;
        w.send(
            "revoke: unknown id",
            revoke(
                "00000000-0000-4000-8000-000000000000",
                &root,
                json!({ "reason": "x" }),
            ),
        )
        .await;
        w.send(
            "introspect: a token under a revoked grant",
            introspect(app, "dev", rs, &drop),
        )
        .await;
        w.send(
            "cc: a destructive scope after the grant was revoked",
            client_credentials(app, "dev", ci_dev, Some("db:drop")),
        )
        .await;
        w.send(
            "revoke: the holder",
            revoke(&e1_grant, &dana, json!({ "reason": "finished early" })),
        )
        .await
        .expect(200, "dana revokes her prod grant");
        w.send(
            "exchange: prod after the grant was revoked",
            exchange(app, "prod", &dana, Some("db:read"), None),
        )
        .await;
        w.send(
            "grants: list after revocations",
            bearer_get(app, "/v1/grants", &root),
        )
        .await;
    }

    /// The escalation creation rate: an agent that asks too often is told when to retry.
    pub(super) async fn creation_rate(&mut self) {
        let app = self.app;
        let w = &mut self.w;
        let token = w
            .quiet(client_credentials(app, "dev", &self.flood, Some("db:read")))
            .await
            .expect(200, "flood's token")
            .s("access_token");
        let ask = |n: usize| {
            bearer_post(
                app,
                "/v1/escalations",
                &token,
                escalation(
                    "dev",
                    &["db:drop"],
                    "10m",
                    &format!("flood request {n} (TICKET-9)"),
                ),
            )
        };
        // The default rate: 10 a minute, counted per agent.
        for n in 1..=10 {
            w.quiet(ask(n)).await.expect(201, "a request within the rate");
        }
        w.send_as(
            "escalations: over the creation rate",
            ask(11),
            Record::VolatileWait,
        )
        .await;
    }
}
