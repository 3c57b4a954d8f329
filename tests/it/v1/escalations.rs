//! Escalations over HTTP: requests, the human gate, grants, and the tokens they allow.
//!
//! Every test runs the real server on SQLite and on PostgreSQL (`both_backends!`) and
//! talks to it only over HTTP; the store is read directly only to prove that a refused
//! call left nothing behind (no request, no grant, no token). Each refusal is checked for
//! its status, its error code, that nothing was granted or issued, and its audit event.
//!
//! Sections: smoke (the whole story once) · requests (who may ask for what) · approvals
//! (the human gate: DESIGN.md invariant 4) · concurrency (exactly one grant) · expiry ·
//! cancel and wait · grants and the tokens they allow (invariants 3, 5, 6) · auto-approval.
//!
//! TOTP codes are single-use and only the current time step ±1 is accepted, so a freshly
//! signed-in [`Person`] has one spare code and then one more per 30 s. Tests that need many
//! approvals create several approvers rather than wait; the few that need a second code
//! from the same person accept one wait of at most 30 s.

use std::time::{Duration, Instant};

use airlock::domain::NewAuditEvent;
use reqwest::StatusCode;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::both_backends;
use crate::support::*;

/// How long a test polls for something the background task does (it runs every second).
const BACKGROUND_DEADLINE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Approvers (role `approver`, TOTP enrolled, signed in with a code), one spare code each.
async fn approvers(app: &TestApp, names: &[&str]) -> Vec<Person> {
    let mut out = Vec::new();
    for name in names {
        out.push(person_with_totp(app, name, &["approver"]).await);
    }
    out
}

/// A person who signed in with the password only and enrolled TOTP afterwards: their
/// codes are valid, but this session never confirmed one.
async fn person_enrolled_after_sign_in(app: &TestApp, username: &str, roles: &[&str]) -> Person {
    let token = person_without_totp(app, username, roles).await;
    let (secret, step) = app.enrol_totp(username, PASSWORD).await;
    Person {
        user: airlock::people::find_user(&app.state, username).await.unwrap(),
        secret,
        next_step: step + 1,
        token,
    }
}

/// `POST /v1/grants/{id}/revoke`.
async fn revoke(app: &TestApp, bearer: &str, grant: &str, reason: &str) -> (StatusCode, Value) {
    post(
        app,
        &format!("/v1/grants/{grant}/revoke"),
        bearer,
        json!({ "reason": reason }),
    )
    .await
}

/// Client credentials at `env`: status and JSON body.
async fn agent_token(
    app: &TestApp,
    env: &str,
    agent: &TestAgent,
    scope: Option<&str>,
) -> (StatusCode, Value) {
    status_json(app.token(env, agent, scope).await).await
}

/// How many tokens were issued in `env` (audit `token.issued`).
async fn issued_in(app: &TestApp, env: &str) -> usize {
    events(app, "token.issued")
        .await
        .iter()
        .filter(|e| e.environment.as_deref() == Some(env))
        .count()
}

/// The `escalation.decision_refused` events about request `id`, oldest first.
async fn decision_refusals(app: &TestApp, id: &str) -> Vec<NewAuditEvent> {
    events(app, "escalation.decision_refused")
        .await
        .into_iter()
        .filter(|e| e.subject.as_deref() == Some(id))
        .collect()
}

/// Poll `GET /v1/escalations/{id}` until it reaches `state` (the background task's work).
async fn poll_state(app: &TestApp, bearer: &str, id: &str, state: &str) -> Value {
    let deadline = Instant::now() + BACKGROUND_DEADLINE;
    loop {
        let (status, body) = show(app, bearer, id, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if body["state"] == state {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "request {id} did not become {state} in time: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Poll the audit trail until an event of `kind` about `subject` appears.
async fn poll_event(app: &TestApp, kind: &str, subject: &str) -> NewAuditEvent {
    let deadline = Instant::now() + BACKGROUND_DEADLINE;
    loop {
        if let Some(e) = events(app, kind)
            .await
            .into_iter()
            .find(|e| e.subject.as_deref() == Some(subject))
        {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "no {kind} event about {subject} in time"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn unix(rfc3339: &Value) -> i64 {
    OffsetDateTime::parse(rfc3339.as_str().expect("a timestamp"), &Rfc3339)
        .expect("RFC 3339")
        .unix_timestamp()
}

fn history_kinds(view: &Value) -> Vec<String> {
    view["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|h| h["kind"].as_str().unwrap().to_string())
        .collect()
}

fn approver_names(view: &Value) -> Vec<String> {
    view["approvals"]
        .as_array()
        .expect("approvals")
        .iter()
        .map(|a| a["approver"].as_str().unwrap().to_string())
        .collect()
}

/// Settings changes for one environment's approval policy.
fn set_env(
    settings: &mut airlock::config::Settings,
    env: &str,
    f: impl FnOnce(&mut airlock::config::ApprovalSettings),
) {
    f(&mut settings.environments.get_mut(env).expect("environment").approval);
}

// ---------------------------------------------------------------------------------------
// Smoke: the whole story once
// ---------------------------------------------------------------------------------------

async fn a_developer_gets_a_prod_token_after_an_approver_says_yes(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let mut bob = person_with_totp(&app, "bob", &["developer"]).await;
    let mut carol = person_with_totp(&app, "carol", &["approver"]).await;

    // Before any grant: access_denied naming `airlock escalate`.
    let (status, body) = exchange(&app, "prod", &bob.token, Some("db:write"), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("airlock escalate")
    );

    let id = request_ok(&app, &bob.token, "prod", &["db:write"], "30m").await;
    let (status, body) = approve(&app, &mut carol, &id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "approved");
    assert_eq!(body["grant"]["status"], "active");

    // The first prod token under the grant needs a step-up after the grant started.
    let (status, body) = exchange(&app, "prod", &bob.token, Some("db:write"), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"], "insufficient_user_authentication");
    step_up(&app, &mut bob).await;
    let (status, body) = exchange(&app, "prod", &bob.token, Some("db:write"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let c = claims(body["access_token"].as_str().unwrap());
    assert_eq!(c["grant"], body_grant(&app, &bob.token, &id).await);
    assert_eq!(c["scope"], "db:write");
}

async fn body_grant(app: &TestApp, bearer: &str, id: &str) -> Value {
    let (_, body) = show(app, bearer, id, None).await;
    body["grant"]["id"].clone()
}

// ---------------------------------------------------------------------------------------
// Requests: who may ask for what
// ---------------------------------------------------------------------------------------

async fn people_ask_only_for_environments_their_role_lists(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let bob = person_with_totp(&app, "bob", &["developer"]).await;
    let carol = person_with_totp(&app, "carol", &["approver"]).await;

    // Arrange/Act: the developer role lists dev, staging and prod.
    for (env, scope) in [("dev", "db:write"), ("staging", "db:drop"), ("prod", "db:write")] {
        let (status, body) = request(&app, &bob.token, env, &[scope], "30m", REASON).await;
        // Assert: a pending request with everything an approver needs to see.
        assert_eq!(status, StatusCode::CREATED, "{env}: {body}");
        let id = body["id"].as_str().unwrap();
        assert_eq!(body["environment"], env);
        assert_eq!(body["scopes"], json!([scope]));
        assert_eq!(body["state"], "pending");
        assert_eq!(body["requester_kind"], "person");
        assert_eq!(body["requester"], "bob");
        assert_eq!(body["sponsor"], Value::Null);
        assert_eq!(body["holder"], format!("user:{}", bob.user.id));
        assert_eq!(body["quorum"], 1);
        assert_eq!(body["approvals"], json!([]));
        assert_eq!(body["grant"], Value::Null);
        assert_eq!(body["duration_secs"], 1800);
        assert_eq!(body["reason"], REASON);
        assert!(body.get("duration_capped").is_none(), "{body}");
        assert!(
            body["url"]
                .as_str()
                .unwrap()
                .ends_with(&format!("/approvals#req-{id}"))
        );
        assert_eq!(history_kinds(&body), ["created"]);
        let destructive = if scope == "db:drop" {
            json!(["db:drop"])
        } else {
            json!([])
        };
        assert_eq!(body["destructive_scopes"], destructive);
        assert!(
            unix(&body["expires_at"]) - unix(&body["created_at"]) == 3600,
            "{body}"
        );
    }
    assert_eq!(events(&app, "escalation.requested").await.len(), 3);

    // A role that lists no environment to escalate to (approver only): 403, audited.
    let (status, body) = request(&app, &carol.token, "prod", &["db:write"], "30m", REASON).await;
    assert_api_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("prod"),
        "{body}"
    );
    let refused = events(&app, "escalation.refused").await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].actor, "user:carol");
    assert_eq!(refused[0].details["reason"], "not_escalatable");
    assert_eq!(refused[0].environment.as_deref(), Some("prod"));
    assert_eq!(
        stored_escalations(&app).await.len(),
        3,
        "nothing recorded for carol"
    );

    // The pending list shows each caller what they may see, by environment.
    let (status, body) = get(
        &app,
        "/v1/escalations?pending=true&environment=prod",
        &carol.token,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let listed = body["escalations"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{body}");
    assert_eq!(listed[0]["environment"], "prod");
    let (_, body) = get(&app, "/v1/escalations?pending=true", &bob.token).await;
    assert_eq!(body["escalations"].as_array().unwrap().len(), 3, "{body}");
    let eve = person_with_totp(&app, "eve", &["developer"]).await;
    let (_, body) = get(&app, "/v1/escalations?pending=true", &eve.token).await;
    assert_eq!(
        body["escalations"],
        json!([]),
        "an unrelated developer sees nothing"
    );
    let first = listed[0]["id"].as_str().unwrap();
    let (status, body) = show(&app, &eve.token, first, None).await;
    assert_api_error(status, &body, StatusCode::NOT_FOUND, "not_found");
}

async fn malformed_requests_are_refused_and_leave_nothing_behind(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let bob = person_with_totp(&app, "bob", &["developer"]).await;

    // Act/Assert: each refusal is a 400 (404 for the environment) and records nothing but
    // its audit event.
    let cases: [(Value, StatusCode, Option<&str>); 14] = [
        // Reason missing, empty, blank, one short of the minimum.
        (
            json!({ "environment": "prod", "scopes": ["db:write"], "duration": "30m" }),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            json!({ "environment": "prod", "scopes": ["db:write"], "duration": "30m", "reason": "" }),
            StatusCode::BAD_REQUEST,
            Some("reason_too_short"),
        ),
        (
            json!({ "environment": "prod", "scopes": ["db:write"], "duration": "30m", "reason": "            " }),
            StatusCode::BAD_REQUEST,
            Some("reason_too_short"),
        ),
        (
            json!({ "environment": "prod", "scopes": ["db:write"], "duration": "30m", "reason": "123456789" }),
            StatusCode::BAD_REQUEST,
            Some("reason_too_short"),
        ),
        (
            json!({ "environment": "prod", "scopes": ["db:write"], "duration": "30m", "reason": "x".repeat(501) }),
            StatusCode::BAD_REQUEST,
            Some("reason_too_long"),
        ),
        // A reason that could redraw the approver's terminal or reorder the text shown.
        (
            json!({ "environment": "prod", "scopes": ["db:write"], "duration": "30m",
                    "reason": "run migration 0042\u{1b}[2A\u{1b}[2Kenvironment dev" }),
            StatusCode::BAD_REQUEST,
            Some("control_characters"),
        ),
        (
            json!({ "environment": "prod", "scopes": ["db:write"], "duration": "30m",
                    "reason": "run migration \u{202e}8110-TEKCIT" }),
            StatusCode::BAD_REQUEST,
            Some("control_characters"),
        ),
        // Unknown scope, no scope, the same scope twice.
        (
            json!({ "environment": "prod", "scopes": ["db:nuke"], "duration": "30m", "reason": REASON }),
            StatusCode::BAD_REQUEST,
            Some("unknown_scope"),
        ),
        (
            json!({ "environment": "prod", "scopes": [], "duration": "30m", "reason": REASON }),
            StatusCode::BAD_REQUEST,
            Some("bad_scopes"),
        ),
        (
            json!({ "environment": "prod", "scopes": ["db:write", "db:write"], "duration": "30m", "reason": REASON }),
            StatusCode::BAD_REQUEST,
            Some("bad_scopes"),
        ),
        // Too short a duration, as text and as seconds; not a duration at all.
        (
            json!({ "environment": "prod", "scopes": ["db:write"], "duration": "59s", "reason": REASON }),
            StatusCode::BAD_REQUEST,
            Some("duration_too_short"),
        ),
        (
            json!({ "environment": "prod", "scopes": ["db:write"], "duration": 30, "reason": REASON }),
            StatusCode::BAD_REQUEST,
            Some("duration_too_short"),
        ),
        (
            json!({ "environment": "prod", "scopes": ["db:write"], "duration": "soon", "reason": REASON }),
            StatusCode::BAD_REQUEST,
            None,
        ),
        // No such environment.
        (
            json!({ "environment": "qa", "scopes": ["db:write"], "duration": "30m", "reason": REASON }),
            StatusCode::NOT_FOUND,
            Some("unknown_environment"),
        ),
    ];
    let mut audited = 0;
    for (body_sent, want, reason) in cases {
        let (status, body) = post(&app, "/v1/escalations", &bob.token, body_sent.clone()).await;
        let code = if want == StatusCode::NOT_FOUND {
            "not_found"
        } else {
            "invalid_request"
        };
        assert_api_error(status, &body, want, code);
        if let Some(reason) = reason {
            audited += 1;
            let refused = events(&app, "escalation.refused").await;
            assert_eq!(refused.len(), audited, "{body_sent}: {refused:?}");
            assert_eq!(refused[audited - 1].details["reason"], reason, "{body_sent}");
            assert_eq!(refused[audited - 1].actor, "user:bob");
        }
    }
    assert!(stored_escalations(&app).await.is_empty());
    assert!(events(&app, "escalation.requested").await.is_empty());

    // The boundaries themselves are accepted: a reason of exactly 10 characters, 1 minute.
    let (status, body) = request(&app, &bob.token, "prod", &["db:write"], "1m", "TICKET-118").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["duration_secs"], 60);
    let (status, body) = post(
        &app,
        "/v1/escalations",
        &bob.token,
        json!({ "environment": "prod", "scopes": ["db:read"], "duration": 90, "reason": REASON }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["duration_secs"], 90);
}

async fn durations_are_capped_by_the_environments_maximum(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let bob = person_with_totp(&app, "bob", &["developer"]).await;

    // prod: max_grant_duration = 1h.
    let (status, body) = request(&app, &bob.token, "prod", &["db:write"], "8h", REASON).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["duration_secs"], 3600);
    assert_eq!(body["duration_capped"], true);
    let requested = events(&app, "escalation.requested").await;
    assert_eq!(requested[0].details["duration_capped"], true);

    // Exactly the maximum is not "capped"; staging's maximum is 4h.
    let (_, body) = request(&app, &bob.token, "prod", &["db:write"], "1h", REASON).await;
    assert_eq!(body["duration_secs"], 3600);
    assert!(body.get("duration_capped").is_none(), "{body}");
    let (_, body) = request(&app, &bob.token, "staging", &["db:drop"], "1d", REASON).await;
    assert_eq!(body["duration_secs"], 4 * 3600);
    assert_eq!(body["duration_capped"], true);
}

async fn agents_ask_only_in_their_own_environment(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let agent = app.create_agent("staging", "migrator", &["db:read"]).await;
    let token = access_token(&app, "staging", &agent, "db:read").await;

    // Its own environment, even a destructive scope: accepted.
    let (status, body) = request(&app, &token, "staging", &["db:drop"], "30m", REASON).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["requester_kind"], "agent");
    assert_eq!(body["requester"], agent.client_id);
    assert_eq!(body["holder"], format!("agent:{}", agent.client_id));
    assert_eq!(body["sponsor"], Value::Null);
    assert_eq!(body["destructive_scopes"], json!(["db:drop"]));
    let requested = events(&app, "escalation.requested").await;
    assert_eq!(requested.len(), 1);
    assert_eq!(requested[0].actor, format!("agent:{}", agent.client_id));

    // Another environment: 403, and recorded as a cross-environment attempt (whatever
    // else is wrong with the request: here the reason is too short as well).
    for (env, reason) in [("prod", REASON), ("dev", REASON), ("prod", "short")] {
        let (status, body) = request(&app, &token, env, &["db:write"], "30m", reason).await;
        assert_api_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
        assert!(
            body["error"]["message"].as_str().unwrap().contains("recorded"),
            "{body}"
        );
    }
    let attempts = events(&app, "cross_environment_attempt").await;
    assert_eq!(attempts.len(), 3, "{attempts:?}");
    for (e, env) in attempts.iter().zip(["prod", "dev", "prod"]) {
        assert_eq!(e.actor, format!("agent:{}", agent.client_id));
        assert_eq!(e.environment.as_deref(), Some(env));
        assert_eq!(e.outcome, airlock::domain::Outcome::Refused);
        assert_eq!(e.details["reason"], "cross_environment_attempt");
    }
    assert_eq!(
        stored_escalations(&app).await.len(),
        1,
        "only the staging request exists"
    );

    // A token of no environment at all (garbage) is not a caller.
    let (status, body) = request(&app, "not-a-token", "staging", &["db:drop"], "30m", REASON).await;
    assert_api_error(status, &body, StatusCode::UNAUTHORIZED, "unauthenticated");
}

async fn a_delegated_process_names_its_person_as_sponsor(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let bob = person_with_totp(&app, "bob", &["developer"]).await;
    let (status, body) = exchange(&app, "staging", &bob.token, None, Some("claude")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let process = body["access_token"].as_str().unwrap().to_string();

    // Act
    let (status, body) = request(&app, &process, "staging", &["db:drop"], "30m", REASON).await;

    // Assert: the process asks, bob sponsors, and the grant would be bob's for this process only.
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["requester_kind"], "agent");
    assert_eq!(body["requester"], "process:claude");
    assert_eq!(body["sponsor"], "bob");
    assert_eq!(body["holder"], format!("user:{}", bob.user.id));
    assert_eq!(body["holder_actor"], "process:claude");
    let requested = events(&app, "escalation.requested").await;
    assert_eq!(requested[0].details["sponsor"], "bob");

    // A process holding a staging token cannot ask for prod either.
    let (status, body) = request(&app, &process, "prod", &["db:write"], "30m", REASON).await;
    assert_api_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    let attempts = events(&app, "cross_environment_attempt").await;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].actor, "process:claude for user:bob");
    assert_eq!(stored_escalations(&app).await.len(), 1);
}

// ---------------------------------------------------------------------------------------
// Approvals: the human gate (invariant 4)
// ---------------------------------------------------------------------------------------

async fn no_environment_token_can_decide_a_request(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let bob = person_with_totp(&app, "bob", &["developer"]).await;
    // carol is a real approver; her *environment* token must still never decide.
    let carol = person_with_totp(&app, "carol", &["developer", "approver"]).await;
    let agent = app
        .create_agent("staging", "deployer", &["db:read", "db:write", "db:migrate"])
        .await;
    let agent_tok = access_token(&app, "staging", &agent, "db:read db:write db:migrate").await;
    let (status, body) = exchange(&app, "staging", &carol.token, None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let carols_env_token = body["access_token"].as_str().unwrap().to_string();
    let id = request_ok(&app, &bob.token, "prod", &["db:write"], "30m").await;

    // Act/Assert: approve and deny with each token: 403, audited, nothing changes.
    let callers = [
        (agent_tok.as_str(), format!("agent:{}", agent.client_id)),
        (
            carols_env_token.as_str(),
            "process:unnamed for user:carol".to_string(),
        ),
    ];
    for (token, actor) in &callers {
        let (status, body) = approve_with_code(&app, token, &id, "123456").await;
        assert_api_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
        let (status, body) = deny(&app, token, &id, "no agent may say no either").await;
        assert_api_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
        let refusals: Vec<_> = decision_refusals(&app, &id)
            .await
            .into_iter()
            .filter(|e| &e.actor == actor)
            .collect();
        assert_eq!(refusals.len(), 2, "{actor}: {refusals:?}");
        assert_eq!(refusals[0].details["action"], "approve");
        assert_eq!(refusals[1].details["action"], "deny");
        assert!(refusals.iter().all(|e| e.details["reason"] == "agent_token"));
    }
    let (_, view) = show(&app, &bob.token, &id, None).await;
    assert_eq!(view["state"], "pending");
    assert_eq!(view["approvals"], json!([]));
    assert!(stored_grants(&app).await.is_empty());
    assert!(events(&app, "escalation.approval").await.is_empty());
}

async fn only_an_eligible_person_other_than_the_requester_decides(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    // bob both asks and approves in prod; eve is a developer; frank is an approver who
    // never enrolled TOTP, so his approver role is not in effect.
    let mut bob = person_with_totp(&app, "bob", &["developer", "approver"]).await;
    let mut eve = person_with_totp(&app, "eve", &["developer"]).await;
    let frank = person_without_totp(&app, "frank", &["approver"]).await;
    let mut gina = person_enrolled_after_sign_in(&app, "gina", &["approver"]).await;
    let id = request_ok(&app, &bob.token, "prod", &["db:write"], "30m").await;

    // The requester, with a valid fresh code: 403.
    let (status, body) = approve(&app, &mut bob, &id).await;
    assert_api_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("your own request"),
        "{body}"
    );
    let (status, body) = deny(&app, &bob.token, &id, "changed my mind").await;
    assert_api_error(status, &body, StatusCode::FORBIDDEN, "forbidden");

    // Not an approver, and not someone who may see the request: 404, as if it did not
    // exist (nothing about it, not even its environment, is revealed).
    let (status, body) = approve(&app, &mut eve, &id).await;
    assert_api_error(status, &body, StatusCode::NOT_FOUND, "not_found");

    // The approver role without TOTP: 403 saying TOTP is what is missing.
    let (status, body) = approve_with_code(&app, &frank, &id, "123456").await;
    assert_api_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("TOTP"),
        "{body}"
    );
    let (status, body) = deny(&app, &frank, &id, "not without TOTP").await;
    assert_api_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("TOTP"),
        "{body}"
    );

    // TOTP enrolled, but this session signed in without a code: a valid code is not
    // enough, the role is not in effect for this session ...
    let (status, body) = approve_with_code(&app, &gina.token, &id, &gina.peek_code()).await;
    assert_api_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("TOTP"),
        "{body}"
    );

    // Every attempt is audited with its reason; the request is untouched.
    let reasons: Vec<(String, String)> = decision_refusals(&app, &id)
        .await
        .into_iter()
        .map(|e| (e.actor, e.details["reason"].as_str().unwrap().to_string()))
        .collect();
    let want: Vec<(String, String)> = [
        ("user:bob", "own_request"),
        ("user:bob", "own_request"),
        ("user:eve", "not_an_approver"),
        ("user:frank", "not_an_approver"),
        ("user:frank", "not_an_approver"),
        ("user:gina", "not_an_approver"),
    ]
    .iter()
    .map(|(a, r)| (a.to_string(), r.to_string()))
    .collect();
    assert_eq!(reasons, want);
    let (_, view) = show(&app, &bob.token, &id, None).await;
    assert_eq!(view["state"], "pending");
    assert_eq!(view["approvals"], json!([]));
    assert!(stored_grants(&app).await.is_empty());

    // ... until the session steps up: then gina's approval counts.
    step_up(&app, &mut gina).await;
    let (status, body) = approve(&app, &mut gina, &id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "approved");
    assert_eq!(approver_names(&body), ["gina"]);
}

async fn each_approval_needs_a_fresh_unused_totp_code(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let bob = person_with_totp(&app, "bob", &["developer"]).await;
    let mut carol = person_with_totp(&app, "carol", &["approver"]).await;
    let first = request_ok(&app, &bob.token, "prod", &["db:write"], "30m").await;
    let second = request_ok(&app, &bob.token, "prod", &["db:read"], "30m").await;

    // A wrong code: 401 totp_invalid, audited, still pending.
    let (status, body) = approve_with_code(&app, &carol.token, &first, &wrong_code(&carol.secret)).await;
    assert_api_error(status, &body, StatusCode::UNAUTHORIZED, "totp_invalid");
    let (_, view) = show(&app, &bob.token, &first, None).await;
    assert_eq!(view["state"], "pending");
    assert_eq!(view["approvals"], json!([]));

    // The right code approves ...
    let code = carol.code().await;
    let (status, body) = approve_with_code(&app, &carol.token, &first, &code).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "approved");

    // ... once: the same code on another request is a replay.
    let (status, body) = approve_with_code(&app, &carol.token, &second, &code).await;
    assert_api_error(status, &body, StatusCode::UNAUTHORIZED, "totp_invalid");
    let (_, view) = show(&app, &bob.token, &second, None).await;
    assert_eq!(view["state"], "pending");
    assert_eq!(view["approvals"], json!([]));
    assert_eq!(view["grant"], Value::Null);

    let failures: Vec<_> = events(&app, "login.failed")
        .await
        .into_iter()
        .filter(|e| e.details["via"] == "escalation approval")
        .collect();
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert!(
        failures
            .iter()
            .all(|e| e.details["reason"] == "wrong_or_replayed_totp")
    );
    assert_eq!(stored_grants(&app).await.len(), 1);
    assert_eq!(events(&app, "escalation.approval").await.len(), 1);
}

async fn a_sponsor_is_never_the_only_approver(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    // carol launches a process (the sponsor) and is also an approver.
    let mut carol = person_with_totp(&app, "carol", &["developer", "approver"]).await;
    let mut dave = person_with_totp(&app, "dave", &["approver"]).await;
    let (status, body) = exchange(&app, "staging", &carol.token, None, Some("claude")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let process = body["access_token"].as_str().unwrap().to_string();
    let (status, body) = request(&app, &process, "staging", &["db:drop"], "30m", REASON).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["sponsor"], "carol");
    let id = body["id"].as_str().unwrap().to_string();

    // The sponsor's approval is recorded but does not complete a quorum of one.
    let (status, body) = approve(&app, &mut carol, &id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "pending");
    assert_eq!(approver_names(&body), ["carol"]);
    assert_eq!(body["grant"], Value::Null);
    assert!(stored_grants(&app).await.is_empty());

    // Someone else completes it.
    let (status, body) = approve(&app, &mut dave, &id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "approved");
    assert_eq!(approver_names(&body), ["carol", "dave"]);
    assert_eq!(body["decided_by"], "dave");
    assert_eq!(stored_grants(&app).await.len(), 1);

    // The grant is carol's for that process only (a destructive grant: its first use
    // needs a step-up, and binds it to this session).
    step_up(&app, &mut carol).await;
    let (status, body) = exchange(&app, "staging", &carol.token, Some("db:drop"), Some("claude")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let c = claims(body["access_token"].as_str().unwrap());
    assert_eq!(c["scope"], "db:drop");
    assert_eq!(c["act"]["sub"], "process:claude");
    let (status, body) = exchange(&app, "staging", &carol.token, Some("db:drop"), None).await;
    assert_oauth_error(status, &body, StatusCode::FORBIDDEN, "access_denied");
    let (status, body) = exchange(&app, "staging", &carol.token, Some("db:drop"), Some("other")).await;
    assert_oauth_error(status, &body, StatusCode::FORBIDDEN, "access_denied");
}

async fn a_quorum_counts_distinct_people(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |s| set_env(s, "prod", |a| a.quorum = 2)).await else {
        return;
    };
    let bob = person_with_totp(&app, "bob", &["developer"]).await;
    let mut carol = person_with_totp(&app, "carol", &["approver"]).await;
    let mut dave = person_with_totp(&app, "dave", &["approver"]).await;
    let (status, body) = request(&app, &bob.token, "prod", &["db:write"], "30m", REASON).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["quorum"], 2);
    let id = body["id"].as_str().unwrap().to_string();

    // One approval: recorded, still pending.
    let (status, body) = approve(&app, &mut carol, &id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "pending");
    assert_eq!(approver_names(&body), ["carol"]);

    // The same person again, with a fresh valid code (waits for the next time step): 409.
    let (status, body) = approve(&app, &mut carol, &id).await;
    assert_api_error(status, &body, StatusCode::CONFLICT, "conflict");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already approved"),
        "{body}"
    );
    let (_, view) = show(&app, &bob.token, &id, None).await;
    assert_eq!(view["state"], "pending");
    assert_eq!(approver_names(&view), ["carol"]);
    assert!(stored_grants(&app).await.is_empty());

    // A second, distinct approver: approved, exactly one grant, both named.
    let (status, body) = approve(&app, &mut dave, &id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "approved");
    assert_eq!(approver_names(&body), ["carol", "dave"]);
    assert_eq!(body["grant"]["status"], "active");
    let grants = stored_grants(&app).await;
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].escalation_id.to_string(), id);
    let created = events(&app, "grant.created").await;
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].details["approvers"], json!(["carol", "dave"]));
    assert_eq!(events(&app, "escalation.approval").await.len(), 2);
    assert_eq!(
        history_kinds(&body),
        ["created", "approval", "approval", "approved"]
    );
}

async fn one_deny_ends_a_request(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let bob = person_with_totp(&app, "bob", &["developer"]).await;
    let carol = person_with_totp(&app, "carol", &["approver"]).await;
    let mut dave = person_with_totp(&app, "dave", &["approver"]).await;
    let id = request_ok(&app, &bob.token, "prod", &["db:write"], "30m").await;

    // A denial needs a reason.
    let (status, body) = deny(&app, &carol.token, &id, "   ").await;
    assert_api_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    let (_, view) = show(&app, &bob.token, &id, None).await;
    assert_eq!(view["state"], "pending");

    // One "no" ends it.
    let (status, body) = deny(&app, &carol.token, &id, "not during the release freeze").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "denied");
    assert_eq!(body["decided_by"], "carol");
    assert_eq!(body["decision_reason"], "not during the release freeze");
    assert_eq!(body["grant"], Value::Null);
    assert_eq!(history_kinds(&body), ["created", "denied"]);
    let denied = events(&app, "escalation.denied").await;
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0].actor, "user:carol");

    // Nothing further changes it.
    let (status, body) = approve(&app, &mut dave, &id).await;
    assert_api_error(status, &body, StatusCode::CONFLICT, "conflict");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("denied"),
        "{body}"
    );
    let (status, body) = deny(&app, &dave.token, &id, "me too").await;
    assert_api_error(status, &body, StatusCode::CONFLICT, "conflict");
    let (status, body) = cancel(&app, &bob.token, &id).await;
    assert_api_error(status, &body, StatusCode::CONFLICT, "conflict");
    let (_, view) = show(&app, &bob.token, &id, None).await;
    assert_eq!(view["state"], "denied");
    assert_eq!(view["approvals"], json!([]));
    assert!(stored_grants(&app).await.is_empty());
    let (status, body) = exchange(&app, "prod", &bob.token, Some("db:write"), None).await;
    assert_oauth_error(status, &body, StatusCode::FORBIDDEN, "access_denied");
}

async fn decided_requests_accept_no_further_decisions(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let bob = person_with_totp(&app, "bob", &["developer"]).await;
    let mut ap = approvers(&app, &["carol", "dave", "erin"]).await;

    // Approved.
    let approved = request_ok(&app, &bob.token, "prod", &["db:write"], "30m").await;
    let (status, body) = approve(&app, &mut ap[0], &approved).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = approve(&app, &mut ap[1], &approved).await;
    assert_api_error(status, &body, StatusCode::CONFLICT, "conflict");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("approved"),
        "{body}"
    );
    let (status, body) = deny(&app, &ap[1].token, &approved, "too late to say no").await;
    assert_api_error(status, &body, StatusCode::CONFLICT, "conflict");
    let (status, body) = cancel(&app, &bob.token, &approved).await;
    assert_api_error(status, &body, StatusCode::CONFLICT, "conflict");
    let (_, view) = show(&app, &bob.token, &approved, None).await;
    assert_eq!(view["state"], "approved");
    assert_eq!(approver_names(&view), ["carol"]);

    // Cancelled.
    let cancelled = request_ok(&app, &bob.token, "prod", &["db:read"], "30m").await;
    let (status, body) = cancel(&app, &bob.token, &cancelled).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = approve(&app, &mut ap[2], &cancelled).await;
    assert_api_error(status, &body, StatusCode::CONFLICT, "conflict");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("cancelled"),
        "{body}"
    );
    let (status, body) = deny(&app, &ap[2].token, &cancelled, "too late to say no").await;
    assert_api_error(status, &body, StatusCode::CONFLICT, "conflict");
    let (_, view) = show(&app, &bob.token, &cancelled, None).await;
    assert_eq!(view["state"], "cancelled");
    assert_eq!(view["approvals"], json!([]));

    // Exactly the one grant, and no 409 left a trace of an approval.
    assert_eq!(stored_grants(&app).await.len(), 1);
    assert_eq!(events(&app, "escalation.approval").await.len(), 1);

    // An unknown request (or not a request id at all) is a 404, not a 409.
    let missing = uuid::Uuid::new_v4().to_string();
    let (status, body) = deny(&app, &ap[0].token, &missing, "nothing to deny").await;
    assert_api_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = approve_with_code(&app, &ap[0].token, "not-a-request", "123456").await;
    assert_api_error(status, &body, StatusCode::NOT_FOUND, "not_found");
}

// ---------------------------------------------------------------------------------------
// Concurrency: exactly one grant
// ---------------------------------------------------------------------------------------

const ROUNDS: usize = 5;

/// Approvers `a0`..`a{2n-1}`: one fresh code each, so no round waits for the clock.
async fn approver_pairs(app: &TestApp, n: usize) -> Vec<Person> {
    let mut out = Vec::new();
    for i in 0..2 * n {
        out.push(person_with_totp(app, &format!("a{i}"), &["approver"]).await);
    }
    out
}

/// Both approvers of a pair approve `id` at the same time.
async fn approve_together(app: &TestApp, pair: &mut [Person], id: &str) -> [(StatusCode, Value); 2] {
    let (first, second) = pair.split_at_mut(1);
    let (a, b) = tokio::join!(approve(app, &mut first[0], id), approve(app, &mut second[0], id));
    [a, b]
}

/// Exactly one grant per request, in the store and over the API.
async fn assert_one_grant_each(app: &TestApp, bearer: &str, ids: &[String]) {
    let grants = stored_grants(app).await;
    assert_eq!(grants.len(), ids.len(), "{grants:?}");
    for id in ids {
        let of_this: Vec<_> = grants
            .iter()
            .filter(|g| &g.escalation_id.to_string() == id)
            .collect();
        assert_eq!(of_this.len(), 1, "request {id}: {grants:?}");
        let (_, view) = show(app, bearer, id, None).await;
        assert_eq!(view["state"], "approved", "{view}");
        assert_eq!(view["grant"]["id"], of_this[0].id.to_string());
    }
    let (status, body) = get(app, "/v1/grants?active=true", bearer).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["grants"].as_array().unwrap().len(), ids.len(), "{body}");
    assert_eq!(events(app, "grant.created").await.len(), ids.len());
}

async fn concurrent_approvals_completing_a_quorum_make_exactly_one_grant(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |s| set_env(s, "prod", |a| a.quorum = 2)).await else {
        return;
    };
    let bob = person_with_totp(&app, "bob", &["developer"]).await;
    let mut ap = approver_pairs(&app, ROUNDS).await;
    let mut ids = Vec::new();
    for round in 0..ROUNDS {
        let id = request_ok(&app, &bob.token, "prod", &["db:write"], "30m").await;

        // Act: two distinct approvers at once; together they reach the quorum of 2.
        let answers = approve_together(&app, &mut ap[2 * round..2 * round + 2], &id).await;

        // Assert: both approvals count; exactly one of them completed the request.
        for (status, body) in &answers {
            assert_eq!(*status, StatusCode::OK, "round {round}: {body}");
        }
        let mut states: Vec<&str> = answers
            .iter()
            .map(|(_, b)| b["state"].as_str().unwrap())
            .collect();
        states.sort();
        assert_eq!(states, ["approved", "pending"], "round {round}");
        let (_, view) = show(&app, &bob.token, &id, None).await;
        assert_eq!(view["approvals"].as_array().unwrap().len(), 2, "{view}");
        ids.push(id);
    }
    assert_one_grant_each(&app, &bob.token, &ids).await;
    assert_eq!(events(&app, "escalation.approval").await.len(), 2 * ROUNDS);
    // The audit trail names both approvers of every grant, whichever approval came second.
    for (round, created) in events(&app, "grant.created").await.iter().enumerate() {
        let mut named: Vec<String> = serde_json::from_value(created.details["approvers"].clone()).unwrap();
        named.sort();
        let mut want = vec![
            ap[2 * round].name().to_string(),
            ap[2 * round + 1].name().to_string(),
        ];
        want.sort();
        assert_eq!(named, want, "grant.created of round {round}: {created:?}");
    }
}

async fn concurrent_approvals_of_a_quorum_of_one_make_exactly_one_grant(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let bob = person_with_totp(&app, "bob", &["developer"]).await;
    let mut ap = approver_pairs(&app, ROUNDS).await;
    let mut ids = Vec::new();
    for round in 0..ROUNDS {
        let id = request_ok(&app, &bob.token, "prod", &["db:write"], "30m").await;

        // Act: two approvers at once; either alone completes the request.
        let answers = approve_together(&app, &mut ap[2 * round..2 * round + 2], &id).await;

        // Assert: one wins, the other finds the request already decided.
        let mut statuses: Vec<u16> = answers.iter().map(|(s, _)| s.as_u16()).collect();
        statuses.sort();
        assert_eq!(statuses, [200, 409], "round {round}: {answers:?}");
        for (status, body) in &answers {
            if *status == StatusCode::CONFLICT {
                assert_api_error(*status, body, StatusCode::CONFLICT, "conflict");
            } else {
                assert_eq!(body["state"], "approved");
            }
        }
        let (_, view) = show(&app, &bob.token, &id, None).await;
        assert_eq!(view["approvals"].as_array().unwrap().len(), 1, "{view}");
        ids.push(id);
    }
    assert_one_grant_each(&app, &bob.token, &ids).await;
    assert_eq!(events(&app, "escalation.approval").await.len(), ROUNDS);
}

async fn a_deny_or_cancel_racing_an_approval_never_leaves_a_grant_behind(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let bob = person_with_totp(&app, "bob", &["developer"]).await;
    let dave = person_with_totp(&app, "dave", &["approver"]).await;
    let mut ap = approvers(&app, &["a0", "a1", "a2", "a3", "a4"]).await;
    let mut approved = Vec::new();
    for (round, approver) in ap.iter_mut().enumerate() {
        let id = request_ok(&app, &bob.token, "prod", &["db:write"], "30m").await;

        // Act: an approval, a denial and a cancellation of the same request at once.
        let (a, d, c) = tokio::join!(
            approve(&app, approver, &id),
            deny(&app, &dave.token, &id, "racing the approval"),
            cancel(&app, &bob.token, &id),
        );

        // Assert: exactly one decision wins; the others find it decided; a grant exists
        // exactly when the approval won.
        let answers = [("approved", a), ("denied", d), ("cancelled", c)];
        let summary: Vec<(&str, u16, &Value)> = answers
            .iter()
            .map(|(what, (s, b))| (*what, s.as_u16(), b.get("error").unwrap_or(&b["state"])))
            .collect();
        let winners: Vec<&str> = answers
            .iter()
            .filter(|(_, (s, _))| *s == StatusCode::OK)
            .map(|(state, _)| *state)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {summary:?}");
        for (_, (status, body)) in answers.iter().filter(|(_, (s, _))| *s != StatusCode::OK) {
            assert_api_error(*status, body, StatusCode::CONFLICT, "conflict");
        }
        let (_, view) = show(&app, &bob.token, &id, None).await;
        assert_eq!(view["state"], winners[0], "round {round}: {view}");
        let grant = app
            .store()
            .grant_of_escalation(id.parse().unwrap())
            .await
            .expect("grant look-up");
        assert_eq!(grant.is_some(), winners[0] == "approved", "round {round}: {view}");
        if winners[0] == "approved" {
            approved.push(id);
        }
    }
    assert_eq!(stored_grants(&app).await.len(), approved.len());
}

// ---------------------------------------------------------------------------------------
// Expiry: requests and grants end on time without anyone calling
// ---------------------------------------------------------------------------------------

async fn pending_requests_expire_without_anyone_calling(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |s| {
        set_env(s, "staging", |a| a.pending_timeout = Duration::from_secs(2))
    })
    .await
    else {
        return;
    };
    let bob = person_with_totp(&app, "bob", &["developer"]).await;
    let mut carol = person_with_totp(&app, "carol", &["approver"]).await;
    let id = request_ok(&app, &bob.token, "staging", &["db:drop"], "30m").await;

    // Act: nobody calls anything; the background task notices the deadline.
    let view = poll_state(&app, &bob.token, &id, "expired").await;

    // Assert
    assert_eq!(view["decided_by"], "system");
    assert_eq!(history_kinds(&view), ["created", "expired"]);
    let expired = poll_event(&app, "escalation.expired", &id).await;
    assert_eq!(expired.actor, "system");
    assert_eq!(expired.environment.as_deref(), Some("staging"));
    assert_eq!(events(&app, "escalation.expired").await.len(), 1, "expired once");

    // Too late for any decision.
    let (status, body) = approve(&app, &mut carol, &id).await;
    assert_api_error(status, &body, StatusCode::CONFLICT, "conflict");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("expired"),
        "{body}"
    );
    let (status, body) = deny(&app, &carol.token, &id, "too late anyway").await;
    assert_api_error(status, &body, StatusCode::CONFLICT, "conflict");
    let (status, body) = cancel(&app, &bob.token, &id).await;
    assert_api_error(status, &body, StatusCode::CONFLICT, "conflict");
    let (_, body) = get(&app, "/v1/escalations?pending=true", &carol.token).await;
    assert_eq!(body["escalations"], json!([]));
    assert!(stored_grants(&app).await.is_empty());
}

async fn grants_end_on_time_and_stop_new_tokens(backend: Backend) {
    // A grant cannot be asked for less than a minute, but is capped by the environment.
    let Some(app) = spawn_app_with(backend, |s| {
        set_env(s, "staging", |a| a.max_grant_duration = Duration::from_secs(5))
    })
    .await
    else {
        return;
    };
    let mut carol = person_with_totp(&app, "carol", &["approver"]).await;
    let agent = app.create_agent("staging", "migrator", &["db:read"]).await;
    let rs = app.create_agent("staging", "resource-server", &["db:read"]).await;
    let token = access_token(&app, "staging", &agent, "db:read").await;
    let (status, body) = request(&app, &token, "staging", &["db:drop"], "1m", REASON).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["duration_secs"], 5);
    assert_eq!(body["duration_capped"], true);
    let id = body["id"].as_str().unwrap().to_string();
    let (status, body) = approve(&app, &mut carol, &id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let grant = body["grant"]["id"].as_str().unwrap().to_string();
    let ends_at = unix(&body["grant"]["ends_at"]);
    assert_eq!(ends_at - unix(&body["grant"]["starts_at"]), 5);

    // A token minted now never outlives the grant.
    let dropper = access_token(&app, "staging", &agent, "db:drop").await;
    let c = claims(&dropper);
    assert_eq!(c["grant"], grant);
    assert!(c["exp"].as_i64().unwrap() <= ends_at, "{c} ends {ends_at}");

    // Act: wait for the background task to record the end.
    let ended = poll_event(&app, "grant.ended", &grant).await;

    // Assert
    assert_eq!(ended.actor, "system");
    assert_eq!(ended.details["escalation"], id);
    let (_, view) = show(&app, &token, &id, None).await;
    assert_eq!(view["grant"]["status"], "ended");
    assert!(
        history_kinds(&view).contains(&"grant_ended".to_string()),
        "{view}"
    );
    let (status, body) = agent_token(&app, "staging", &agent, Some("db:drop")).await;
    assert_oauth_error(status, &body, StatusCode::FORBIDDEN, "access_denied");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("airlock escalate"),
        "{body}"
    );
    assert_eq!(
        introspect_ok(&app, "staging", &rs, &dropper).await["active"],
        false
    );
    let (_, body) = get(&app, "/v1/grants?active=true", &token).await;
    assert_eq!(body["grants"], json!([]));
    let (status, body) = revoke(&app, &carol.token, &grant, "already over").await;
    assert_api_error(status, &body, StatusCode::CONFLICT, "conflict");
    assert_eq!(events(&app, "grant.ended").await.len(), 1, "ended once");
}

async fn two_servers_on_one_database_expire_and_end_each_once(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |s| {
        set_env(s, "staging", |a| {
            a.pending_timeout = Duration::from_secs(2);
            a.max_grant_duration = Duration::from_secs(3);
        })
    })
    .await
    else {
        return;
    };
    // Arrange: a second server process on the same database, with its own background task.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut settings = (*app.state.settings).clone();
    settings.listen = listener.local_addr().unwrap().to_string();
    let replica = airlock::app::App::with_listener(settings, listener)
        .await
        .expect("replica builds");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let replica = tokio::spawn(replica.run_until(async {
        let _ = stopped.await;
    }));
    let bob = person_with_totp(&app, "bob", &["developer"]).await;
    let mut ap = approvers(&app, &["carol", "dave"]).await;
    let agent = app.create_agent("staging", "migrator", &["db:read"]).await;
    let agent_tok = access_token(&app, "staging", &agent, "db:read").await;
    let mut pending = Vec::new();
    for _ in 0..5 {
        pending.push(request_ok(&app, &bob.token, "staging", &["db:drop"], "30m").await);
    }
    let mut grants = Vec::new();
    for approver in ap.iter_mut() {
        let (_, body) = request(&app, &agent_tok, "staging", &["db:drop"], "1m", REASON).await;
        let (status, body) = approve(&app, approver, body["id"].as_str().unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        grants.push(body["grant"]["id"].as_str().unwrap().to_string());
    }

    // Act: both servers sweep; wait until every deadline has been handled, then a few
    // more sweeps.
    for id in &pending {
        poll_state(&app, &bob.token, id, "expired").await;
    }
    for g in &grants {
        poll_event(&app, "grant.ended", g).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // Assert: each expiry and each end is recorded exactly once.
    let expired = events(&app, "escalation.expired").await;
    assert_eq!(expired.len(), pending.len(), "{expired:?}");
    for id in &pending {
        assert_eq!(
            expired
                .iter()
                .filter(|e| e.subject.as_deref() == Some(id))
                .count(),
            1
        );
        let (_, view) = show(&app, &bob.token, id, None).await;
        assert_eq!(history_kinds(&view), ["created", "expired"]);
    }
    let ended = events(&app, "grant.ended").await;
    assert_eq!(ended.len(), grants.len(), "{ended:?}");
    let _ = stop.send(());
    replica.await.unwrap().expect("replica stops cleanly");
}

// ---------------------------------------------------------------------------------------
// Cancel and wait
// ---------------------------------------------------------------------------------------

async fn only_the_requester_its_sponsor_or_an_admin_cancels(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let bob = person_with_totp(&app, "bob", &["developer"]).await;
    let eve = person_with_totp(&app, "eve", &["developer"]).await;
    let dave = person_with_totp(&app, "dave", &["approver"]).await;
    let root = person_with_totp(&app, "root", &["admin"]).await;
    let agent = app.create_agent("staging", "migrator", &["db:read"]).await;
    let other = app.create_agent("staging", "other", &["db:read"]).await;
    let agent_tok = access_token(&app, "staging", &agent, "db:read").await;
    let other_tok = access_token(&app, "staging", &other, "db:read").await;

    // A person's request: others who may not see it get 404, an approver 403.
    let id = request_ok(&app, &bob.token, "prod", &["db:write"], "30m").await;
    let (status, body) = cancel(&app, &eve.token, &id).await;
    assert_api_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = cancel(&app, &dave.token, &id).await;
    assert_api_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    let (status, body) = cancel(&app, &agent_tok, &id).await;
    assert_api_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (_, view) = show(&app, &bob.token, &id, None).await;
    assert_eq!(view["state"], "pending");
    assert!(events(&app, "escalation.cancelled").await.is_empty());

    // The requester cancels; only once.
    let (status, body) = cancel(&app, &bob.token, &id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "cancelled");
    assert_eq!(body["decided_by"], "bob");
    assert_eq!(history_kinds(&body), ["created", "cancelled"]);
    let (status, body) = cancel(&app, &bob.token, &id).await;
    assert_api_error(status, &body, StatusCode::CONFLICT, "conflict");

    // An admin may cancel anyone's request.
    let id = request_ok(&app, &bob.token, "prod", &["db:write"], "30m").await;
    let (status, body) = cancel(&app, &root.token, &id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["decided_by"], "root");

    // An agent's request: the agent itself, not another agent, not an unrelated person.
    let (_, body) = request(&app, &agent_tok, "staging", &["db:drop"], "30m", REASON).await;
    let id = body["id"].as_str().unwrap().to_string();
    let (status, body) = cancel(&app, &other_tok, &id).await;
    assert_api_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = cancel(&app, &bob.token, &id).await;
    assert_api_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = cancel(&app, &agent_tok, &id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["decided_by"], format!("agent:{}", agent.client_id));

    // A delegated process's request: its sponsor may withdraw it.
    let (_, body) = exchange(&app, "staging", &bob.token, None, Some("claude")).await;
    let process = body["access_token"].as_str().unwrap().to_string();
    let (_, body) = request(&app, &process, "staging", &["db:drop"], "30m", REASON).await;
    let id = body["id"].as_str().unwrap().to_string();
    let (status, body) = cancel(&app, &eve.token, &id).await;
    assert_api_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = cancel(&app, &bob.token, &id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "cancelled");

    assert_eq!(events(&app, "escalation.cancelled").await.len(), 4);
    assert!(stored_grants(&app).await.is_empty());
}

async fn waiting_returns_as_soon_as_the_request_is_decided(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let bob = person_with_totp(&app, "bob", &["developer"]).await;
    let mut carol = person_with_totp(&app, "carol", &["approver"]).await;
    let id = request_ok(&app, &bob.token, "prod", &["db:write"], "30m").await;
    let wait = Duration::from_secs(10);

    // Arrange: bob waits (as `airlock escalate --wait` does) in another task.
    let waiter = {
        let (client, url, token) = (
            app.client.clone(),
            app.url(&format!("/v1/escalations/{id}?wait={}", wait.as_secs())),
            bob.token.clone(),
        );
        tokio::spawn(async move {
            let started = Instant::now();
            let resp = client.get(url).bearer_auth(token).send().await.unwrap();
            let answer = status_json(resp).await;
            (answer, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Act: carol approves.
    let (status, body) = approve(&app, &mut carol, &id).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Assert: the waiter returns with the decision, well before its wait ran out.
    let ((status, body), elapsed) = waiter.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "approved");
    assert_eq!(body["grant"]["status"], "active");
    assert!(elapsed < wait, "the waiter took {elapsed:?}");
}

async fn waiting_returns_the_pending_request_after_the_wait(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let bob = person_with_totp(&app, "bob", &["developer"]).await;
    let eve = person_with_totp(&app, "eve", &["developer"]).await;
    let id = request_ok(&app, &bob.token, "prod", &["db:write"], "30m").await;

    let started = Instant::now();
    let (status, body) = show(&app, &bob.token, &id, Some(1)).await;
    let elapsed = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "pending");
    assert!(elapsed >= Duration::from_millis(900), "it did wait: {elapsed:?}");

    // Someone who may not see the request learns nothing, and does not wait for it.
    let (status, body) = show(&app, &eve.token, &id, Some(5)).await;
    assert_api_error(status, &body, StatusCode::NOT_FOUND, "not_found");
}

// ---------------------------------------------------------------------------------------
// Grants and the tokens they allow (invariants 3, 5, 6)
// ---------------------------------------------------------------------------------------

async fn an_agents_grant_allows_exactly_the_granted_destructive_scope(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let bob = person_with_totp(&app, "bob", &["developer"]).await;
    let eve = person_with_totp(&app, "eve", &["developer"]).await;
    let mut carol = person_with_totp(&app, "carol", &["approver"]).await;
    let agent = app.create_agent("staging", "migrator", &["db:read"]).await;
    let rs = app.create_agent("staging", "resource-server", &["db:read"]).await;
    let reader = access_token(&app, "staging", &agent, "db:read").await;

    // Without a grant: access_denied naming `airlock escalate`, audited, nothing issued.
    let issued_before = issued_in(&app, "staging").await;
    let (status, body) = agent_token(&app, "staging", &agent, Some("db:drop")).await;
    assert_oauth_error(status, &body, StatusCode::FORBIDDEN, "access_denied");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("airlock escalate"),
        "{body}"
    );
    let refused = events(&app, "token.refused").await;
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].details["reason"], "destructive_scope_needs_escalation");
    assert_eq!(issued_in(&app, "staging").await, issued_before);

    // Arrange: the agent asks, carol approves.
    let (status, body) = request(&app, &reader, "staging", &["db:drop"], "30m", REASON).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    let (status, body) = approve(&app, &mut carol, &id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let grant = body["grant"]["id"].as_str().unwrap().to_string();
    assert_eq!(body["grant"]["holder"], format!("agent:{}", agent.client_id));
    let ends_at = unix(&body["grant"]["ends_at"]);

    // Act/Assert: the granted scope, alone or with the agent's own.
    let dropper = access_token(&app, "staging", &agent, "db:drop").await;
    let c = claims(&dropper);
    assert_eq!(c["grant"], grant);
    assert_eq!(c["scope"], "db:drop");
    assert_eq!(c["env"], "staging");
    let (iat, exp) = (c["iat"].as_i64().unwrap(), c["exp"].as_i64().unwrap());
    assert!(exp <= ends_at, "{c}");
    assert!(exp - iat <= 30 * 60, "staging max_ttl caps it: {c}");
    let both = access_token(&app, "staging", &agent, "db:read db:drop").await;
    assert_eq!(claims(&both)["scope"], "db:read db:drop");
    let issued = events(&app, "token.issued").await;
    assert_eq!(issued.last().unwrap().details["grant"], grant);
    let active = introspect_ok(&app, "staging", &rs, &dropper).await;
    assert_eq!(active["active"], true, "{active}");
    assert_eq!(active["grant"], grant);

    // A grant for db:drop covers nothing else destructive.
    let issued_before = issued_in(&app, "staging").await;
    for scope in ["volume:delete", "db:drop volume:delete"] {
        let (status, body) = agent_token(&app, "staging", &agent, Some(scope)).await;
        assert_oauth_error(status, &body, StatusCode::FORBIDDEN, "access_denied");
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .contains("volume:delete"),
            "{body}"
        );
    }
    assert_eq!(issued_in(&app, "staging").await, issued_before);

    // Invariant 2: no grant takes a staging agent to prod.
    let issued_before = issued_in(&app, "prod").await;
    let (status, body) = agent_token(&app, "prod", &agent, Some("db:drop")).await;
    assert_ne!(status, StatusCode::OK, "{body}");
    assert!(body.get("access_token").is_none(), "{body}");
    assert_eq!(issued_in(&app, "prod").await, issued_before);

    // A token with a destructive scope is still no approver.
    let pending = request_ok(&app, &bob.token, "prod", &["db:write"], "30m").await;
    let (status, body) = approve_with_code(&app, &dropper, &pending, "123456").await;
    assert_api_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(decision_refusals(&app, &pending).await.len(), 1);

    // The grants list shows the holder its grant, and an unrelated person nothing.
    let (_, body) = get(&app, "/v1/grants?active=true", &reader).await;
    assert_eq!(body["grants"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["grants"][0]["id"], grant);
    let (_, body) = get(&app, "/v1/grants?active=true", &eve.token).await;
    assert_eq!(body["grants"], json!([]));

    // Revoked by its holder: its tokens stop being active, no new ones, and only once.
    let (status, body) = revoke(&app, &reader, &grant, "migration finished").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "revoked");
    assert_eq!(body["revoked_by"], format!("agent:{}", agent.client_id));
    assert_eq!(
        introspect_ok(&app, "staging", &rs, &dropper).await["active"],
        false
    );
    let issued_before = issued_in(&app, "staging").await;
    let (status, body) = agent_token(&app, "staging", &agent, Some("db:drop")).await;
    assert_oauth_error(status, &body, StatusCode::FORBIDDEN, "access_denied");
    assert_eq!(issued_in(&app, "staging").await, issued_before);
    let (status, body) = revoke(&app, &reader, &grant, "again").await;
    assert_api_error(status, &body, StatusCode::CONFLICT, "conflict");
    let revoked = events(&app, "grant.revoked").await;
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].subject.as_deref(), Some(grant.as_str()));
}

async fn grants_are_revoked_by_their_holder_an_approver_or_an_admin_only(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let mut ap = approvers(&app, &["carol", "dave"]).await;
    let eve = person_with_totp(&app, "eve", &["developer"]).await;
    let root = person_with_totp(&app, "root", &["admin"]).await;
    let agent = app.create_agent("staging", "migrator", &["db:read"]).await;
    let other = app.create_agent("staging", "other", &["db:read"]).await;
    let agent_tok = access_token(&app, "staging", &agent, "db:read").await;
    let other_tok = access_token(&app, "staging", &other, "db:read").await;
    let mut grants = Vec::new();
    for approver in ap.iter_mut() {
        let (_, body) = request(&app, &agent_tok, "staging", &["db:drop"], "30m", REASON).await;
        let id = body["id"].as_str().unwrap().to_string();
        let (status, body) = approve(&app, approver, &id).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        grants.push(body["grant"]["id"].as_str().unwrap().to_string());
    }

    // Neither an unrelated person nor another agent may even see them.
    for bearer in [&eve.token, &other_tok] {
        let (status, body) = revoke(&app, bearer, &grants[0], "not mine to end").await;
        assert_api_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    }
    // A reason is required.
    let (status, body) = revoke(&app, &ap[0].token, &grants[0], "").await;
    assert_api_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    assert!(events(&app, "grant.revoked").await.is_empty());
    let (_, body) = get(&app, "/v1/grants?active=true", &agent_tok).await;
    assert_eq!(body["grants"].as_array().unwrap().len(), 2, "{body}");

    // An approver of the environment (not the one who approved it), then an admin.
    let (status, body) = revoke(&app, &ap[1].token, &grants[0], "incident 77").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["revoked_by"], "user:dave");
    let (status, body) = revoke(&app, &root.token, &grants[1], "incident 77").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["revoked_by"], "user:root");
    assert_eq!(body["revoked_reason"], "incident 77");

    let (_, body) = get(&app, "/v1/grants?active=true", &agent_tok).await;
    assert_eq!(body["grants"], json!([]));
    let (status, body) = agent_token(&app, "staging", &agent, Some("db:drop")).await;
    assert_oauth_error(status, &body, StatusCode::FORBIDDEN, "access_denied");
    assert_eq!(events(&app, "grant.revoked").await.len(), 2);
}

async fn a_prod_grant_is_bound_to_the_session_that_first_stepped_up(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let mut bob = person_with_totp(&app, "bob", &["developer"]).await;
    let mut carol = person_with_totp(&app, "carol", &["approver"]).await;
    let id = request_ok(&app, &bob.token, "prod", &["db:write"], "30m").await;
    let (status, body) = approve(&app, &mut carol, &id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let grant = body["grant"]["id"].as_str().unwrap().to_string();
    let ends_at = unix(&body["grant"]["ends_at"]);

    // Act: bob steps up after the grant started, then asks for a prod token.
    step_up(&app, &mut bob).await;
    let (status, body) = exchange(&app, "prod", &bob.token, Some("db:write"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["access_token"].as_str().unwrap().to_string();

    // Assert: a real JWT library accepts it with prod's keys, issuer and audience ...
    let prod_keys = jwks(&app, "prod").await;
    let c = validate(&token, &prod_keys, &app.url("/envs/prod"), "airlock:prod").expect("valid in prod");
    assert_eq!(c["grant"], grant);
    assert_eq!(c["scope"], "db:write");
    assert_eq!(c["sub"], user_id(&app, "bob").await);
    assert_eq!(c["username"], "bob");
    let (iat, exp) = (c["iat"].as_i64().unwrap(), c["exp"].as_i64().unwrap());
    assert!(exp <= ends_at, "{c}");
    assert!(exp - iat <= 15 * 60, "prod max_ttl caps it: {c}");
    // ... and rejects it with staging's, however the rest is configured.
    let staging_keys = jwks(&app, "staging").await;
    assert!(
        validate(
            &token,
            &staging_keys,
            &app.url("/envs/staging"),
            "airlock:staging"
        )
        .is_err()
    );
    assert!(validate(&token, &staging_keys, &app.url("/envs/prod"), "airlock:prod").is_err());

    // The grant is now bound to this session.
    let bound = events(&app, "grant.bound").await;
    assert_eq!(bound.len(), 1);
    assert_eq!(bound[0].subject.as_deref(), Some(grant.as_str()));
    let stored = stored_grants(&app).await;
    assert!(stored[0].session_id.is_some());
    assert_eq!(
        history_kinds(&show(&app, &bob.token, &id, None).await.1)
            .last()
            .unwrap(),
        "grant_bound"
    );

    // The grant covers only its scopes.
    let (status, body) = exchange(&app, "prod", &bob.token, Some("db:read"), None).await;
    assert_oauth_error(status, &body, StatusCode::FORBIDDEN, "access_denied");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("airlock escalate"),
        "{body}"
    );

    // A second session of bob (a second `airlock login`) cannot use it.
    let code = bob.code().await;
    let second = session_token(&app, "bob", Some(&code)).await;
    let issued_before = issued_in(&app, "prod").await;
    let (status, body) = exchange(&app, "prod", &second, Some("db:write"), None).await;
    assert_oauth_error(status, &body, StatusCode::FORBIDDEN, "access_denied");
    assert!(
        body["error_description"].as_str().unwrap().contains("bound"),
        "{body}"
    );
    assert_eq!(issued_in(&app, "prod").await, issued_before);
    let refused = events(&app, "token.refused").await;
    assert_eq!(
        refused.last().unwrap().details["reason"],
        "grant_bound_to_other_session"
    );
    // The first session still can.
    let (status, body) = exchange(&app, "prod", &bob.token, Some("db:write"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn a_step_up_before_the_grant_does_not_count(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let mut bob = person_with_totp(&app, "bob", &["developer"]).await;
    let mut carol = person_with_totp(&app, "carol", &["approver"]).await;

    // Arrange: bob steps up first, then asks; carol approves afterwards.
    step_up(&app, &mut bob).await;
    let id = request_ok(&app, &bob.token, "prod", &["db:write"], "30m").await;
    let (status, body) = approve(&app, &mut carol, &id).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Act
    let (status, body) = exchange(&app, "prod", &bob.token, Some("db:write"), None).await;

    // Assert: a fresh step-up is needed; nothing issued, nothing bound.
    assert_oauth_error(
        status,
        &body,
        StatusCode::FORBIDDEN,
        "insufficient_user_authentication",
    );
    assert_eq!(issued_in(&app, "prod").await, 0);
    let refused = events(&app, "token.refused").await;
    assert_eq!(refused.last().unwrap().details["reason"], "step_up_required");
    assert!(events(&app, "grant.bound").await.is_empty());
    assert!(stored_grants(&app).await[0].session_id.is_none());
}

// ---------------------------------------------------------------------------------------
// Auto-approval
// ---------------------------------------------------------------------------------------

async fn auto_approval_covers_only_non_destructive_scopes_outside_production(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |s| set_env(s, "dev", |a| a.auto_approve = true)).await else {
        return;
    };
    let bob = person_with_totp(&app, "bob", &["developer"]).await;

    // A non-destructive dev scope: approved at once by policy, with its grant.
    let (status, body) = request(&app, &bob.token, "dev", &["db:migrate"], "30m", REASON).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["state"], "approved");
    assert_eq!(body["decided_by"], "policy:auto_approve");
    assert_eq!(body["approvals"], json!([]));
    assert_eq!(body["grant"]["status"], "active");
    assert_eq!(history_kinds(&body), ["created", "approved"]);
    let created = events(&app, "grant.created").await;
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].actor, "policy:auto_approve");

    // A destructive scope in the same environment, or any other environment: pending.
    for (env, scope) in [("dev", "db:drop"), ("staging", "db:write"), ("prod", "db:read")] {
        let (status, body) = request(&app, &bob.token, env, &[scope], "30m", REASON).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["state"], "pending", "{env} {scope}");
        assert_eq!(body["grant"], Value::Null);
    }
    // Mixed: one destructive scope is enough to need a human.
    let (_, body) = request(
        &app,
        &bob.token,
        "dev",
        &["db:read", "volume:delete"],
        "30m",
        REASON,
    )
    .await;
    assert_eq!(body["state"], "pending");
    assert_eq!(stored_grants(&app).await.len(), 1);
    let (status, body) = exchange(&app, "dev", &bob.token, Some("db:drop"), None).await;
    assert_oauth_error(status, &body, StatusCode::FORBIDDEN, "access_denied");
}

/// A grant covers whatever it names, not only production and destructive scopes: a
/// scope outside the person's role or the agent's own list, asked in any order.
async fn a_grant_covers_scopes_outside_the_role_in_any_order(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let bob = person_with_totp(&app, "bob", &["developer"]).await;
    let mut carol = person_with_totp(&app, "carol", &["approver"]).await;
    // db:migrate is not in the developer role for staging.
    let (status, body) = exchange(&app, "staging", &bob.token, Some("db:migrate"), None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_scope"))
    );
    let id = request_ok(&app, &bob.token, "staging", &["db:migrate"], "30m").await;
    let (status, body) = approve(&app, &mut carol, &id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let grant = body["grant"]["id"].as_str().unwrap().to_string();
    let (status, body) = exchange(&app, "staging", &bob.token, Some("db:read db:migrate"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let c = claims(body["access_token"].as_str().unwrap());
    assert_eq!(
        (c["grant"].as_str(), c["scope"].as_str()),
        (Some(grant.as_str()), Some("db:read db:migrate"))
    );
    // Without a scope only the role's own scopes, and no grant claim.
    let (status, body) = exchange(&app, "staging", &bob.token, None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        claims(body["access_token"].as_str().unwrap())
            .get("grant")
            .is_none()
    );

    // An agent whose grant names a scope of its own list and a destructive one.
    let agent = app.create_agent("staging", "mixer", &["db:read"]).await;
    let bearer = access_token(&app, "staging", &agent, "db:read").await;
    let (status, body) = request(
        &app,
        &bearer,
        "staging",
        &["db:drop", "db:write"],
        "30m",
        "rebuild the staging fixtures (TICKET-7)",
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    let (status, body) = approve(&app, &mut carol, &id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for order in ["db:drop db:write", "db:write db:drop", "db:read db:write db:drop"] {
        let (status, body) = status_json(app.token("staging", &agent, Some(order)).await).await;
        assert_eq!(status, StatusCode::OK, "{order}: {body}");
        assert_eq!(body["scope"], order);
    }
    // A scope the grant does not name is still refused.
    let (status, body) = status_json(app.token("staging", &agent, Some("db:write db:migrate")).await).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_scope")),
        "{body}"
    );
}

/// An agent that asks for no scope (as `airlock agent run` does without `--scope`) gets
/// its defaults plus what its active grant gives, until the grant is revoked.
async fn an_agents_next_default_token_carries_its_granted_scope(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let mut carol = person_with_totp(&app, "carol", &["approver"]).await;
    let new = airlock::agents::NewAgent {
        name: "runner".into(),
        environment: "staging".into(),
        scopes: vec!["db:read".into()],
        default_scopes: vec!["db:read".into()],
        owner: app.default_agent_owner().await,
    };
    let (agent, secret) =
        airlock::agents::create(app.store(), &app.state.settings, &app.state.hasher, new, "test")
            .await
            .expect("agent");
    let agent = TestAgent {
        client_id: agent.client_id,
        secret,
    };
    let (status, body) = agent_token(&app, "staging", &agent, None).await;
    assert_eq!(
        (status, body["scope"].as_str()),
        (StatusCode::OK, Some("db:read")),
        "{body}"
    );
    let bearer = body["access_token"].as_str().unwrap().to_string();
    assert!(claims(&bearer).get("grant").is_none());

    let (status, body) = request(
        &app,
        &bearer,
        "staging",
        &["db:drop"],
        "30m",
        "reset the fixtures (TICKET-9)",
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    let (status, body) = approve(&app, &mut carol, &id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let grant = body["grant"]["id"].as_str().unwrap().to_string();

    let (status, body) = agent_token(&app, "staging", &agent, None).await;
    assert_eq!(
        (status, body["scope"].as_str()),
        (StatusCode::OK, Some("db:read db:drop")),
        "{body}"
    );
    assert_eq!(
        claims(body["access_token"].as_str().unwrap())["grant"],
        grant.as_str()
    );
    // An explicit scope gets exactly that, without the grant.
    let (_, body) = agent_token(&app, "staging", &agent, Some("db:read")).await;
    assert_eq!(body["scope"], "db:read");
    assert!(
        claims(body["access_token"].as_str().unwrap())
            .get("grant")
            .is_none()
    );

    let (status, body) = post(
        &app,
        &format!("/v1/grants/{grant}/revoke"),
        &carol.token,
        json!({ "reason": "fixtures are reset" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, body) = agent_token(&app, "staging", &agent, None).await;
    assert_eq!(
        body["scope"], "db:read",
        "the revoked grant no longer adds its scope"
    );
}

/// One holder has at most 20 pending requests: a looping agent cannot bury the approvers
/// (or flood their webhooks). Cancelling one makes room again.
async fn a_holder_has_a_bounded_number_of_pending_requests(backend: Backend) {
    // The creation rate limit (10 a minute by default) would answer first; it has tests
    // of its own (flood_limits.rs), so it is out of the way here.
    let Some(app) = spawn_app_with(backend, |s| s.limits.escalation_rate.requests = 100).await else {
        return;
    };
    let agent = app.create_agent("staging", "looper", &["db:read"]).await;
    let bearer = access_token(&app, "staging", &agent, "db:read").await;
    let mut ids = Vec::new();
    for _ in 0..airlock::escalations::MAX_PENDING_PER_HOLDER {
        ids.push(request_ok(&app, &bearer, "staging", &["db:drop"], "30m").await);
    }
    let (status, body) = request(
        &app,
        &bearer,
        "staging",
        &["db:drop"],
        "30m",
        "one more (TICKET-9)",
    )
    .await;
    assert_api_error(status, &body, StatusCode::CONFLICT, "conflict");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("airlock cancel"),
        "{body}"
    );
    let refused = events(&app, "escalation.refused").await;
    assert_eq!(refused.last().unwrap().details["reason"], "too_many_pending");
    let (status, _) = cancel(&app, &bearer, &ids[0]).await;
    assert_eq!(status, StatusCode::OK);
    request_ok(&app, &bearer, "staging", &["db:drop"], "30m").await;
}

both_backends!(
    a_holder_has_a_bounded_number_of_pending_requests,
    an_agents_next_default_token_carries_its_granted_scope,
    a_grant_covers_scopes_outside_the_role_in_any_order,
    a_developer_gets_a_prod_token_after_an_approver_says_yes,
    people_ask_only_for_environments_their_role_lists,
    malformed_requests_are_refused_and_leave_nothing_behind,
    durations_are_capped_by_the_environments_maximum,
    agents_ask_only_in_their_own_environment,
    a_delegated_process_names_its_person_as_sponsor,
    no_environment_token_can_decide_a_request,
    only_an_eligible_person_other_than_the_requester_decides,
    each_approval_needs_a_fresh_unused_totp_code,
    a_sponsor_is_never_the_only_approver,
    a_quorum_counts_distinct_people,
    one_deny_ends_a_request,
    decided_requests_accept_no_further_decisions,
    concurrent_approvals_completing_a_quorum_make_exactly_one_grant,
    concurrent_approvals_of_a_quorum_of_one_make_exactly_one_grant,
    a_deny_or_cancel_racing_an_approval_never_leaves_a_grant_behind,
    pending_requests_expire_without_anyone_calling,
    grants_end_on_time_and_stop_new_tokens,
    two_servers_on_one_database_expire_and_end_each_once,
    only_the_requester_its_sponsor_or_an_admin_cancels,
    waiting_returns_as_soon_as_the_request_is_decided,
    waiting_returns_the_pending_request_after_the_wait,
    an_agents_grant_allows_exactly_the_granted_destructive_scope,
    grants_are_revoked_by_their_holder_an_approver_or_an_admin_only,
    a_prod_grant_is_bound_to_the_session_that_first_stepped_up,
    a_step_up_before_the_grant_does_not_count,
    auto_approval_covers_only_non_destructive_scopes_outside_production,
);
