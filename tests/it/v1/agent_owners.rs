//! Agents have a human owner once people exist, and the owner sponsors the agent's
//! escalation requests: their approval is recorded but never counts, so an approver who
//! also holds their agent's secret cannot approve its destructive request alone.

use airlock::agents::{self, AgentError, NewAgent};
use airlock::people;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{
    self, Backend, Terminal, access_token, admin_session, approvals_page, cookie_pair, enrolled, person,
    person_with_totp, run_with_input, session_token, set_cookie, spawn_app, step_up, web_session,
};

crate::both_backends!(
    an_agent_needs_an_enabled_owner_once_people_exist,
    the_cli_records_the_owner_both_on_the_store_and_through_the_admin_api,
    an_owners_approval_never_counts_toward_their_agents_request,
);

const REASON: &str = "drop the scratch tables (TICKET-7)";

// --- helpers ----------------------------------------------------------------------------

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or_default()
}

// --- owners -----------------------------------------------------------------------------

async fn an_agent_needs_an_enabled_owner_once_people_exist(backend: Backend) {
    // Arrange: a first run, nobody registered yet: no owner is needed.
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let first = app
        .create_agent_owned_by("dev", "first-run-bot", &["db:read"], None)
        .await;
    let admin = admin_session(&app).await;
    let dave = person(&app, "dave", &[]).await;
    let erin = person(&app, "erin", &[]).await;
    people::set_user_disabled(&app.state, "test", "erin", true)
        .await
        .unwrap();
    let create = |owner: Option<&str>| {
        let mut body = json!({ "name": "ci-bot", "environment": "staging", "scopes": ["db:read"] });
        if let Some(o) = owner {
            body["owner"] = json!(o);
        }
        support::post(&app, "/v1/agents", &admin, body)
    };

    // Act + Assert: through the library (what the CLI's store path calls), no owner.
    let new = NewAgent {
        name: "ci-bot".into(),
        environment: "staging".into(),
        scopes: vec!["db:read".into()],
        default_scopes: vec![],
        owner: None,
    };
    match agents::create(app.store(), &app.state.settings, &app.state.hasher, new, "test").await {
        Err(AgentError::Invalid(m)) => assert!(m.contains("--owner"), "{m}"),
        other => panic!("an agent without an owner was not refused: {other:?}"),
    }

    // Through the admin API: no owner, an unknown one, a disabled one: 400, each saying why.
    let (status, body) = create(None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(message(&body).contains("--owner"), "{body}");
    assert!(message(&body).contains("\"owner\""), "{body}");
    let (status, body) = create(Some("nobody")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(message(&body).contains("no person"), "{body}");
    let (status, body) = create(Some(&erin.username)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(message(&body).contains("disabled"), "{body}");
    let (_, list) = support::get(&app, "/v1/agents?env=staging", &admin).await;
    assert_eq!(list, json!([]), "nothing was registered");

    // An enabled person: registered, with the owner recorded, listed and audited.
    let (status, created) = create(Some("Dave")).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["owner"], "dave");
    assert_eq!(created["owner_id"], dave.id.to_string());
    let (status, list) = support::get(&app, "/v1/agents", &admin).await;
    assert_eq!(status, StatusCode::OK);
    let owner_of = |client_id: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|a| a["client_id"] == client_id)
            .map(|a| a["owner"].clone())
            .unwrap()
    };
    assert_eq!(owner_of(created["client_id"].as_str().unwrap()), "dave");
    assert_eq!(
        owner_of(&first.client_id),
        Value::Null,
        "an agent from before any person existed keeps working without one"
    );
    let stored = app
        .store()
        .agent_by_client_id(created["client_id"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(
        (stored.owner_id, stored.owner.as_deref()),
        (Some(dave.id), Some("dave"))
    );
    let audited = app.audit_kinds().await;
    let event = audited
        .iter()
        .rev()
        .find(|e| e.event.kind == "agent.created")
        .unwrap();
    assert_eq!(event.event.details["owner"], "dave");
    // The unowned one still gets its tokens.
    let r = app.token("dev", &first, Some("db:read")).await;
    assert_eq!(r.status(), StatusCode::OK);
}

async fn the_cli_records_the_owner_both_on_the_store_and_through_the_admin_api(backend: Backend) {
    // Arrange: an admin (TOTP enrolled) and dave, who will own the agents.
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let mut root = enrolled(&app, "root", &["admin"]).await;
    person(&app, "dave", &[]).await;
    let t = Terminal::new(&app);
    let store_path = |args: &[&str]| {
        let mut c = t.admin(&app);
        c.args(args);
        run_with_input(c, "")
    };
    let create = ["agent", "create", "--env", "staging", "--scope", "db:read"];

    // Act + Assert: store-direct, without and then with --owner.
    let out = store_path(&[&create[..], &["--name", "store-bot"]].concat()).await;
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(out.stderr.contains("--owner"), "{}", out.stderr);
    let out = store_path(&[&create[..], &["--name", "store-bot", "--owner", "dave"]].concat()).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("owner:         dave"), "{}", out.stdout);
    let out = store_path(&["agent", "list"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("OWNER"), "{}", out.stdout);
    let line = out.stdout.lines().find(|l| l.contains("store-bot")).unwrap();
    assert!(line.contains("dave"), "{line}");

    // Logged in here as root (with a code) and stepped up: the agent commands still work
    // on the store they are given, audited as the operating-system user, never through
    // the session (issue 9: `airlock agent` has one path, and says which).
    t.login_with_code(&mut root).await;
    let code = root.code().await;
    let out = t.run(&["step-up", "--code-stdin"], &format!("{code}\n")).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = store_path(&[&create[..], &["--name", "cli-bot", "--owner", "dave"]].concat()).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let created = app
        .audit_kinds()
        .await
        .into_iter()
        .rev()
        .find(|e| e.event.kind == "agent.created")
        .unwrap();
    assert_eq!(
        created.event.actor, "cli:tester",
        "audited as the operator, not as the session's person"
    );

    // Through the admin API (what a remote admin uses), signed in as root and stepped up.
    let code = root.code().await;
    root.token = session_token(&app, "root", Some(&code)).await;
    step_up(&app, &mut root).await;
    let api_create = |owner: Option<&str>| {
        let mut body = json!({ "name": "api-bot", "environment": "staging", "scopes": ["db:read"] });
        if let Some(o) = owner {
            body["owner"] = json!(o);
        }
        support::post(&app, "/v1/agents", &root.token, body)
    };
    let (status, body) = api_create(None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(message(&body).contains("--owner"), "{body}");
    let (status, body) = api_create(Some("dave")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["owner"], "dave");
    let client_id = body["client_id"].as_str().unwrap().to_string();
    let (status, shown) = support::get(&app, &format!("/v1/agents/{client_id}"), &root.token).await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert_eq!(shown["owner"], "dave");
    let (_, list) = support::get(&app, "/v1/agents?env=staging", &root.token).await;
    let listed = list
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "api-bot")
        .expect("api-bot is listed");
    assert_eq!(listed["owner"], "dave");
    for name in ["store-bot", "cli-bot", "api-bot"] {
        let a = app.store().agent_by_name("staging", name).await.unwrap();
        assert_eq!(a.owner.as_deref(), Some("dave"), "{name}");
    }
}

async fn an_owners_approval_never_counts_toward_their_agents_request(backend: Backend) {
    // Arrange: alice approves in staging and owns an agent whose secret she holds; bob
    // approves too. Staging's quorum is 1.
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let mut alice = person_with_totp(&app, "alice", &["approver"]).await;
    let mut bob = person_with_totp(&app, "bob", &["approver"]).await;
    let agent = app
        .create_agent_owned_by("staging", "deployer", &["db:read", "db:drop"], Some("alice"))
        .await;
    let token = access_token(&app, "staging", &agent, "db:read").await;

    // Act: the agent asks for a destructive scope.
    let (status, body) = support::request(&app, &token, "staging", &["db:drop"], "30m", REASON).await;

    // Assert: alice sponsors it, and the view names her as the owner.
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["requester"], agent.client_id);
    assert_eq!(body["holder"], format!("agent:{}", agent.client_id));
    assert_eq!(body["sponsor"], "alice");
    assert_eq!(body["sponsor_user_id"], alice.user.id.to_string());
    assert_eq!(body["owner"], "alice");
    assert_eq!(body["quorum"], 1);
    let id = body["id"].as_str().unwrap().to_string();

    // The approvals page shows alice that she owns it and that her approval will not count.
    let code = alice.code().await;
    let session = web_session(&app, "alice", support::PASSWORD, &code).await;
    let (page, csrf) = approvals_page(&app, &session).await;
    assert!(
        page.contains(&format!(
            "agent <code>{}</code>, owned by <strong class=\"owner\">alice</strong>",
            agent.client_id
        )),
        "{page}"
    );
    assert!(
        page.contains(&format!("id=\"sponsor-{id}\">You own this agent")),
        "{page}"
    );

    // Her approval on the page is recorded but grants nothing.
    let code = alice.code().await;
    let r = app
        .client
        .post(app.url("/approvals"))
        .header("cookie", &session)
        .form(&[
            ("csrf", csrf.as_str()),
            ("id", id.as_str()),
            ("decision", "approve"),
            ("code", code.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let flash = cookie_pair(&set_cookie(r.headers(), "airlock_flash").expect("a flash message"));
    let (page, _) = approvals_page(&app, &format!("{session}; {flash}")).await;
    assert!(
        page.contains("but it does not count: you own this agent"),
        "{page}"
    );
    let (_, view) = support::show(&app, &alice.token, &id, None).await;
    assert_eq!(view["state"], "pending", "{view}");
    assert_eq!(view["approvals"][0]["approver"], "alice", "{view}");
    assert_eq!(view["grant"], Value::Null);
    // Through the API as well: already recorded, still nothing granted.
    let (status, body) = support::approve(&app, &mut alice, &id).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let r = app.token("staging", &agent, Some("db:drop")).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "no grant, no db:drop");

    // Someone else's approval completes the quorum of one.
    let (status, body) = support::approve(&app, &mut bob, &id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "approved", "{body}");
    assert_eq!(body["decided_by"], "bob");
    let (status, body) = support::status_json(app.token("staging", &agent, Some("db:drop")).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

// --- the web forms ----------------------------------------------------------------------
