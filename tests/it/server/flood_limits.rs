//! Floods an authenticated agent or a crowd of addresses could aim at the approvers and
//! the audit trail (issue 8, must-fix 4 and 5): escalation creations are rate-limited per
//! principal (counted in the store, across a create/cancel loop and across replicas), and
//! refusals past a budget are counted into one `*.suppressed` event instead of one event
//! each, for authenticated principals and for anonymous callers on any number of
//! addresses. Limits are kept small through the settings, windows long (an hour) so no
//! window ends during a test, and summaries are flushed by hand.

use std::time::Duration;

use airlock::domain::NewAuditEvent;
use airlock::store::{Creation, CreationLimit};
use reqwest::StatusCode;
use reqwest::header::RETRY_AFTER;
use tokio::task::JoinSet;

use crate::both_backends;
use crate::support::*;

const HOUR: Duration = Duration::from_secs(3600);

/// Write the summaries of the current window now (the server does it every window).
async fn flush(app: &TestApp) {
    app.state.refusals.flush(app.store()).await;
}

fn count(e: &NewAuditEvent) -> u64 {
    e.details["count"]
        .as_u64()
        .unwrap_or_else(|| panic!("no count in {e:?}"))
}

/// An agent of staging and an environment token of it.
async fn agent_with_token(app: &TestApp, name: &str) -> (TestAgent, String) {
    let agent = app.create_agent("staging", name, &["db:read"]).await;
    let token = access_token(app, "staging", &agent, "db:read").await;
    (agent, token)
}

// ---------------------------------------------------------------------------------------
// Must-fix 4 (a): escalation creations are rate-limited per principal
// ---------------------------------------------------------------------------------------

/// A create/cancel loop never has more than one request pending, so the pending cap
/// never stops it; the creation limit does, with a 429 that says when to try again.
async fn a_create_cancel_loop_is_stopped_by_the_creation_rate_limit(backend: Backend) {
    // Arrange
    let Some(app) = spawn_app_with(backend, |s| {
        s.limits.escalation_rate.requests = 3;
        s.limits.escalation_rate.per = HOUR;
    })
    .await
    else {
        return;
    };
    let (_agent, bearer) = agent_with_token(&app, "looper").await;
    let (_other, other_bearer) = agent_with_token(&app, "bystander").await;

    // Act: create and cancel at once, over and over.
    let mut answers = Vec::new();
    for _ in 0..6 {
        let (status, body) = request(
            &app,
            &bearer,
            "staging",
            &["db:drop"],
            "30m",
            "reset the fixtures (TICKET-9)",
        )
        .await;
        if status == StatusCode::CREATED {
            let (cancelled, _) = cancel(&app, &bearer, body["id"].as_str().unwrap()).await;
            assert_eq!(cancelled, StatusCode::OK);
        }
        answers.push((status, body));
    }
    let resp = app
        .client
        .post(app.url("/v1/escalations"))
        .bearer_auth(&bearer)
        .json(&serde_json::json!({
            "environment": "staging", "scopes": ["db:drop"], "duration": "30m",
            "reason": "reset the fixtures (TICKET-9)"
        }))
        .send()
        .await
        .unwrap();
    let retry_after = resp.headers().get(RETRY_AFTER).cloned();
    let (status, body) = status_json(resp).await;

    // Assert: three created, then 429 in the API's error shape with Retry-After.
    let statuses: Vec<StatusCode> = answers.iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses[..3], [StatusCode::CREATED; 3], "{answers:?}");
    assert_eq!(statuses[3..], [StatusCode::TOO_MANY_REQUESTS; 3], "{answers:?}");
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("3 escalation requests in the last 1h") && message.contains("try again in"),
        "{message}"
    );
    let secs: u64 = retry_after
        .expect("Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After in seconds");
    assert!((3500..=3600).contains(&secs), "{secs}");
    assert!(message.contains(&format!("{secs} seconds")), "{message} / {secs}");
    // Nothing more reached the approvers or their webhooks than was created.
    assert_eq!(events(&app, "escalation.requested").await.len(), 3);
    assert_eq!(events(&app, "escalation.cancelled").await.len(), 3);
    let limited: Vec<_> = events(&app, "escalation.refused")
        .await
        .into_iter()
        .filter(|e| e.details["reason"] == "rate_limited")
        .collect();
    assert_eq!(limited.len(), 4);
    assert!(limited[0].actor.starts_with("agent:"), "{:?}", limited[0]);
    // The limit is per principal: another agent is not held back.
    request_ok(&app, &other_bearer, "staging", &["db:drop"], "30m").await;
}

/// A person and the processes acting for them share one budget, so a new process name
/// does not buy new requests.
async fn a_persons_delegated_processes_share_the_persons_creation_limit(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |s| {
        s.limits.escalation_rate.requests = 2;
        s.limits.escalation_rate.per = HOUR;
    })
    .await
    else {
        return;
    };
    let bob = person_with_totp(&app, "bob", &["developer"]).await;
    request_ok(&app, &bob.token, "prod", &["db:write"], "30m").await;
    // A process acting for bob, with a staging token.
    let (status, body) = exchange(&app, "staging", &bob.token, Some("db:read"), Some("process:one")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let process = body["access_token"].as_str().unwrap().to_string();
    request_ok(&app, &process, "staging", &["db:drop"], "30m").await;

    for bearer in [&bob.token, &process] {
        let (status, body) = request(
            &app,
            bearer,
            "staging",
            &["db:drop"],
            "30m",
            "reset the fixtures (TICKET-9)",
        )
        .await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    }
    let (status, body) = exchange(&app, "staging", &bob.token, Some("db:read"), Some("process:two")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let renamed = body["access_token"].as_str().unwrap().to_string();
    let (status, body) = request(
        &app,
        &renamed,
        "staging",
        &["db:drop"],
        "30m",
        "reset the fixtures (TICKET-9)",
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
}

/// Two replicas (two pools on one database) creating for one holder at the same time:
/// the count is taken under the audit chain's lock, so exactly `requests` get through.
async fn concurrent_creations_on_two_replicas_never_pass_the_limit(backend: Backend) {
    let Some((_db, a, b)) = replicas(backend).await else {
        return;
    };
    let bob = stored_user(a.as_ref(), "bob").await;
    let limit = CreationLimit {
        requests: 3,
        per: HOUR,
    };
    let mut set = JoinSet::new();
    for i in 0..12 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        let e = new_request(&bob, 1, airlock::domain::now() + HOUR);
        set.spawn(async move {
            store
                .create_escalation_within(&e, None, vec![event("escalation.requested")], limit)
                .await
        });
    }
    let mut created = 0;
    let mut limited = 0;
    while let Some(r) = set.join_next().await {
        match r.unwrap() {
            Ok(Creation::Created) => created += 1,
            Ok(Creation::Limited { retry_at }) => {
                assert!(retry_at > airlock::domain::now() + Duration::from_secs(3500));
                limited += 1;
            }
            // SQLite may time out a writer under this much contention: nothing written.
            Err(e) => assert_eq!(backend, Backend::Sqlite, "{e:?}"),
        }
    }
    assert_eq!(created, 3, "exactly the limit (limited: {limited})");
    let stored = a
        .audit_page(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.event.kind == "escalation.requested")
        .count();
    assert_eq!(stored, 3);
    // Another holder has its own count.
    let carol = stored_user(b.as_ref(), "carol").await;
    let e = new_request(&carol, 1, airlock::domain::now() + HOUR);
    let r = b.create_escalation_within(&e, None, vec![], limit).await.unwrap();
    assert_eq!(r, Creation::Created);
}

// ---------------------------------------------------------------------------------------
// Must-fix 4 (b): authenticated refusals have a budget
// ---------------------------------------------------------------------------------------

/// Past `per_principal`, an agent's refusals are counted, and one `*.suppressed` event
/// per kind, environment and reason carries the count. Cross-environment attempts stay
/// individually audited whatever the budget says.
async fn an_agents_refusals_past_its_budget_are_summarised_with_their_count(backend: Backend) {
    // Arrange
    let Some(app) = spawn_app_with(backend, |s| {
        s.limits.refusals.per_principal = 4;
        s.limits.refusals.window = HOUR;
    })
    .await
    else {
        return;
    };
    let (agent, bearer) = agent_with_token(&app, "noisy").await;
    let actor = format!("agent:{}", agent.client_id);

    // Act: 10 token refusals, 7 refused escalation requests, 3 attempts to approve, and
    // 5 cross-environment attempts, all past the budget but the first 4.
    for _ in 0..10 {
        let resp = app.token("staging", &agent, Some("db:write")).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    }
    for _ in 0..7 {
        let (status, body) = request(&app, &bearer, "staging", &["db:drop"], "30m", "short").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }
    let missing = uuid::Uuid::new_v4().to_string();
    for _ in 0..3 {
        let (status, body) = approve_with_code(&app, &bearer, &missing, "123456").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    }
    for _ in 0..3 {
        assert_eq!(
            app.token("prod", &agent, Some("db:read")).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    for _ in 0..2 {
        let (status, body) = request(
            &app,
            &bearer,
            "prod",
            &["db:write"],
            "30m",
            "reset the fixtures (TICKET-9)",
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    }
    let before_flush = app.audit_kinds().await;
    flush(&app).await;

    // Assert: 4 individual refusals, all token refusals (they came first).
    let individual = before_flush
        .iter()
        .filter(|r| {
            r.event.actor == actor
                && matches!(
                    r.event.kind.as_str(),
                    "token.refused" | "escalation.refused" | "escalation.decision_refused"
                )
        })
        .count();
    assert_eq!(individual, 4);
    assert!(
        !before_flush.iter().any(|r| r.event.kind.ends_with(".suppressed")),
        "summaries wait for the window's end"
    );
    // Every cross-environment attempt is there on its own.
    assert_eq!(events(&app, "cross_environment_attempt").await.len(), 5);
    // One summary per kind, environment and reason, with the right counts.
    let token = events(&app, "token.refused.suppressed").await;
    assert_eq!(token.len(), 1, "{token:?}");
    assert_eq!(count(&token[0]), 6);
    assert_eq!(token[0].actor, actor);
    assert_eq!(token[0].details["principal"], actor.as_str());
    assert_eq!(token[0].details["reason"], "scope_not_allowed");
    assert_eq!(token[0].details["budget"], "principal");
    assert_eq!(token[0].environment.as_deref(), Some("staging"));
    let esc = events(&app, "escalation.refused.suppressed").await;
    assert_eq!(esc.len(), 1, "{esc:?}");
    assert_eq!(count(&esc[0]), 7);
    assert_eq!(esc[0].environment.as_deref(), Some("staging"));
    let decisions = events(&app, "escalation.decision_refused.suppressed").await;
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    assert_eq!(count(&decisions[0]), 3);
    assert_eq!(decisions[0].details["reason"], "agent_token");
    // Nothing lost: individual events plus counts make every refusal.
    let summarised: u64 = [&token, &esc, &decisions]
        .iter()
        .flat_map(|v| v.iter())
        .map(count)
        .sum();
    assert_eq!(individual as u64 + summarised, 10 + 7 + 3);
    // The next window starts with a fresh budget.
    assert_eq!(
        app.token("staging", &agent, Some("db:write")).await.status(),
        StatusCode::BAD_REQUEST
    );
    let after = events(&app, "token.refused").await;
    assert_eq!(after.iter().filter(|e| e.actor == actor).count(), 5);
}

/// A person's token-exchange refusals have the same budget.
async fn a_persons_token_refusals_past_the_budget_are_summarised(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |s| {
        s.limits.refusals.per_principal = 2;
        s.limits.refusals.window = HOUR;
    })
    .await
    else {
        return;
    };
    let bob = person_with_totp(&app, "bob", &["developer"]).await;
    for _ in 0..5 {
        let (status, body) = exchange(&app, "prod", &bob.token, Some("db:drop"), None).await;
        assert!(status.is_client_error(), "{status} {body}");
    }
    let individual = events(&app, "token.refused")
        .await
        .into_iter()
        .filter(|e| e.actor == "user:bob")
        .count();
    assert_eq!(individual, 2);
    flush(&app).await;
    let summary = events(&app, "token.refused.suppressed").await;
    assert_eq!(summary.len(), 1, "{summary:?}");
    assert_eq!(summary[0].actor, "user:bob");
    assert_eq!(summary[0].environment.as_deref(), Some("prod"));
    assert_eq!(count(&summary[0]), 3);
}

// ---------------------------------------------------------------------------------------
// Must-fix 5: one ceiling for anonymous refusals, whatever the number of addresses
// ---------------------------------------------------------------------------------------

/// 20 loopback addresses, 5 refusals each: without a global ceiling every one of the
/// 100 would be audited (each address is within its own budget).
async fn anonymous_refusals_from_many_addresses_meet_one_ceiling(backend: Backend) {
    // Arrange
    let Some(app) = spawn_app_with(backend, |s| {
        s.limits.refusals.per_address = 6;
        s.limits.refusals.all_addresses = 12;
        s.limits.refusals.window = HOUR;
    })
    .await
    else {
        return;
    };
    let ghost = TestAgent {
        client_id: airlock::domain::new_client_id(),
        secret: "not-a-secret".to_string().into(),
    };
    let clients: Vec<reqwest::Client> = (1..=20).map(|h| client_from(&format!("127.0.0.{h}"))).collect();

    // Act
    for _ in 0..5 {
        for c in &clients {
            let resp = c
                .post(app.url("/envs/staging/token"))
                .basic_auth(&ghost.client_id, Some("not-a-secret"))
                .form(&[("grant_type", "client_credentials")])
                .send()
                .await
                .expect("sent");
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        }
    }
    let individual = events(&app, "token.refused").await;
    flush(&app).await;

    // Assert: never more than the ceiling one by one, from several addresses ...
    assert_eq!(individual.len(), 12);
    let addresses: std::collections::HashSet<&str> = individual
        .iter()
        .map(|e| e.details["client_address"].as_str().unwrap())
        .collect();
    assert!(addresses.len() > 1, "{addresses:?}");
    // ... and the rest counted: one summary over the ceiling, naming how many addresses.
    let summaries = events(&app, "token.refused.suppressed").await;
    assert_eq!(summaries.len(), 1, "{summaries:?}");
    let s = &summaries[0];
    assert_eq!(count(s), 100 - 12);
    assert_eq!(s.details["budget"], "all_addresses");
    assert_eq!(s.details["addresses"], 20);
    assert_eq!(s.details["reason"], "unknown_client");
    assert_eq!(s.environment.as_deref(), Some("staging"));
}

/// Under the ceiling, the per-address budget still applies, and its summary names the
/// address.
async fn one_address_past_its_budget_gets_its_own_summary(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |s| {
        s.limits.refusals.per_address = 3;
        s.limits.refusals.all_addresses = 100;
        s.limits.refusals.window = HOUR;
    })
    .await
    else {
        return;
    };
    let ghost = TestAgent {
        client_id: airlock::domain::new_client_id(),
        secret: "x".to_string().into(),
    };
    let noisy = client_from("127.0.0.7");
    for _ in 0..8 {
        let resp = noisy
            .post(app.url("/envs/dev/token"))
            .basic_auth(&ghost.client_id, Some("x"))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
    // A quiet neighbour is still audited.
    assert_eq!(
        app.token("dev", &ghost, None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(events(&app, "token.refused").await.len(), 4);
    flush(&app).await;
    let summaries = events(&app, "token.refused.suppressed").await;
    assert_eq!(summaries.len(), 1, "{summaries:?}");
    assert_eq!(summaries[0].details["client_address"], "127.0.0.7");
    assert_eq!(summaries[0].details["budget"], "address");
    assert_eq!(count(&summaries[0]), 5);
}

async fn a_flood_of_anonymous_refusals_cannot_fill_the_audit_trail(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let ghost = TestAgent {
        client_id: airlock::domain::new_client_id(),
        secret: "x".to_string().into(),
    };
    let per_address = app.state.settings.limits.refusals.per_address as usize;
    let flood = per_address + 20;
    for _ in 0..flood {
        assert_eq!(
            app.token("staging", &ghost, None).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let refused = events(&app, "token.refused").await.len();
    assert_eq!(refused, per_address, "beyond the budget, refusals are summarised");
    // An authenticated agent is unaffected: its refusals count against its own budget.
    let agent = app.create_agent("staging", "real", &["db:read"]).await;
    assert_eq!(app.token("staging", &agent, None).await.status(), StatusCode::OK);
    assert_eq!(
        app.token("staging", &agent, Some("db:write")).await.status(),
        StatusCode::BAD_REQUEST
    );
    let events = app.audit_kinds().await;
    assert!(events.iter().any(|e| e.event.kind == "token.issued"));
    assert!(
        events
            .iter()
            .any(|e| e.event.details["reason"] == "scope_not_allowed")
    );
}

both_backends!(
    a_create_cancel_loop_is_stopped_by_the_creation_rate_limit,
    a_persons_delegated_processes_share_the_persons_creation_limit,
    concurrent_creations_on_two_replicas_never_pass_the_limit,
    an_agents_refusals_past_its_budget_are_summarised_with_their_count,
    a_persons_token_refusals_past_the_budget_are_summarised,
    anonymous_refusals_from_many_addresses_meet_one_ceiling,
    one_address_past_its_budget_gets_its_own_summary,
    a_flood_of_anonymous_refusals_cannot_fill_the_audit_trail,
);
