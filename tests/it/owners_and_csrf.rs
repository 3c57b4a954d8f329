//! Issue 8, must-fix 10 and 12.
//!
//! Agents have a human owner once people exist, and the owner sponsors the agent's
//! escalation requests: their approval is recorded but never counts, so an approver who
//! also holds their agent's secret cannot approve its destructive request alone.
//!
//! The web forms resist login CSRF on plain-http loopback (where cookies have no
//! `__Host-` prefix and another local port can plant them): the sign-in token is the
//! server's HMAC of the pre-session cookie, and every form posted from another site or
//! origin (`Sec-Fetch-Site`, `Origin`) is refused before it is read.

use airlock::agents::{self, AgentError, NewAgent};
use airlock::people;
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::browser::{cookie_pair, hidden, set_cookie};
use crate::escalation_support::{self as support, Person, person_with_totp};
use crate::harness::{Backend, TestAgent, TestApp, spawn_app};
use crate::people_cli::{self, Terminal};

crate::both_backends!(
    an_agent_needs_an_enabled_owner_once_people_exist,
    the_cli_records_the_owner_both_on_the_store_and_through_the_admin_api,
    an_owners_approval_never_counts_toward_their_agents_request,
    a_sign_in_token_the_server_did_not_mint_for_that_cookie_is_refused,
    forms_posted_from_another_site_or_origin_are_refused_before_anything_happens,
);

const REASON: &str = "drop the scratch tables (TICKET-7)";

// --- helpers ----------------------------------------------------------------------------

/// The agent's own access token for `scope`.
async fn agent_token(app: &TestApp, env: &str, agent: &TestAgent, scope: &str) -> String {
    let (status, body) = support::status_json(app.token(env, agent, Some(scope)).await).await;
    assert_eq!(status, StatusCode::OK, "agent token: {body}");
    body["access_token"].as_str().unwrap().to_string()
}

/// The sign-in form of `/approvals` as a fresh browser gets it: the pre-session cookie
/// (`name=value`) and the form's CSRF token.
async fn sign_in_form(app: &TestApp) -> (String, String) {
    let r = app.client.get(app.url("/approvals")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let cookie = cookie_pair(&set_cookie(r.headers(), "airlock_csrf").expect("a pre-session cookie"));
    let token = hidden(&r.text().await.unwrap(), "csrf");
    (cookie, token)
}

/// `POST /login` with a pre-session cookie, a token and extra headers.
async fn post_sign_in(
    app: &TestApp,
    cookie: &str,
    token: &str,
    username: &str,
    password: &str,
    code: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = app
        .client
        .post(app.url("/login"))
        .header("cookie", cookie)
        .form(&[
            ("csrf", token),
            ("next", "approvals"),
            ("username", username),
            ("password", password),
            ("code", code),
        ]);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

/// Sign `username` in on the web as a browser would; their session cookie (`name=value`).
async fn web_session(app: &TestApp, username: &str, password: &str, code: &str) -> String {
    let (cookie, token) = sign_in_form(app).await;
    let r = post_sign_in(app, &cookie, &token, username, password, code, &[]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "web sign-in of {username}");
    cookie_pair(&set_cookie(r.headers(), "airlock_web").expect("a session cookie"))
}

/// The approvals page for a session, and its CSRF token.
async fn approvals_page(app: &TestApp, session: &str) -> (String, String) {
    let r = app
        .client
        .get(app.url("/approvals"))
        .header("cookie", session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let page = r.text().await.unwrap();
    let token = hidden(&page, "csrf");
    (page, token)
}

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
    let admin = crate::people::admin_session(&app).await;
    let dave = people::create_user(
        &app.state,
        "test",
        "dave",
        &SecretString::from(support::PASSWORD),
        vec![],
    )
    .await
    .unwrap();
    let erin = people::create_user(
        &app.state,
        "test",
        "erin",
        &SecretString::from(support::PASSWORD),
        vec![],
    )
    .await
    .unwrap();
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
    let root = people_cli::person(&app, "root", &["admin"]).await;
    let secret = people_cli::enrol(&app, &root).await;
    // Enrolment used the step before now; the next codes start at now.
    let mut root = Person {
        user: root,
        secret,
        next_step: airlock::totp::step_at(time::OffsetDateTime::now_utc().unix_timestamp()),
        token: String::new(),
    };
    people_cli::person(&app, "dave", &[]).await;
    let t = Terminal::new(&app);
    let store_path = |args: &[&str]| {
        let mut c = t.cmd(args);
        c.env("AIRLOCK_MASTER_KEY", app.master_key_b64())
            .env("AIRLOCK_DATA_DIR", std::env::temp_dir())
            .arg("--database")
            .arg(&app.db.url);
        Terminal::run_cmd(c, "")
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
    let code = root.code().await;
    let out = t
        .run(
            &[
                "login",
                "--password",
                "--username",
                "root",
                "--password-stdin",
                "--code-stdin",
            ],
            &format!("{}\n{code}\n", people_cli::PASSWORD),
        )
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
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
    assert!(
        created.event.actor.starts_with("cli:"),
        "audited as the operator, not the session: {}",
        created.event.actor
    );

    // Through the admin API (what a remote admin uses), signed in as root and stepped up.
    let code = root.code().await;
    let (status, session) = support::status_json(
        app.client
            .post(app.url("/v1/sessions"))
            .json(&json!({ "username": "root", "password": people_cli::PASSWORD, "totp_code": code }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{session}");
    root.token = session["access_token"].as_str().unwrap().to_string();
    support::step_up(&app, &mut root).await;
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
    let token = agent_token(&app, "staging", &agent, "db:read").await;

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

async fn a_sign_in_token_the_server_did_not_mint_for_that_cookie_is_refused(backend: Backend) {
    // Arrange: erin, and a pre-session pair another local port could plant: any
    // well-formed cookie, with a token of the planter's choosing.
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    people::create_user(
        &app.state,
        "test",
        "erin",
        &SecretString::from(support::PASSWORD),
        vec![],
    )
    .await
    .unwrap();
    let planted = "A".repeat(43);
    let planted_cookie = format!("airlock_csrf={planted}");
    let (minted_cookie, minted_token) = sign_in_form(&app).await;
    let sign_in = |cookie: String, token: String| {
        let app = &app;
        async move { post_sign_in(app, &cookie, &token, "erin", support::PASSWORD, "", &[]).await }
    };

    // Act + Assert: the cookie's value as the token (the old double submit), another
    // token, and a real token minted for another pre-session: all 403, nobody signed in.
    for (cookie, token) in [
        (planted_cookie.clone(), planted.clone()),
        (planted_cookie.clone(), "0".repeat(64)),
        (planted_cookie.clone(), minted_token.clone()),
        (
            minted_cookie.clone(),
            minted_cookie["airlock_csrf=".len()..].to_string(),
        ),
    ] {
        let r = sign_in(cookie.clone(), token.clone()).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{cookie} / {token}");
        assert!(set_cookie(r.headers(), "airlock_web").is_none());
    }

    // The pair the server minted signs in.
    let r = sign_in(minted_cookie, minted_token).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(set_cookie(r.headers(), "airlock_web").is_some());
}

async fn forms_posted_from_another_site_or_origin_are_refused_before_anything_happens(backend: Backend) {
    // Arrange: erin signed in on the web, a device code waiting for her decision, and a
    // request waiting on the approvals page.
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let mut carol = person_with_totp(&app, "carol", &["approver"]).await;
    let bob = person_with_totp(&app, "bob", &["developer"]).await;
    let id = support::request_ok(&app, &bob.token, "prod", &["db:write"], "30m").await;
    let code = carol.code().await;
    let session = web_session(&app, "carol", support::PASSWORD, &code).await;
    let (_, csrf) = approvals_page(&app, &session).await;
    let (status, device) = support::status_json(
        app.client
            .post(app.url("/oauth/device_authorization"))
            .form(&[("client_id", airlock::domain::CLI_CLIENT_ID)])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{device}");
    let user_code = device["user_code"].as_str().unwrap().to_string();
    let own_origin = app.base.clone();
    let other_port = "http://127.0.0.1:1".to_string();
    let elsewhere: Vec<Vec<(&str, &str)>> = vec![
        vec![("sec-fetch-site", "cross-site")],
        // Another port of the same loopback host is "same-site": the cookie planter.
        vec![("sec-fetch-site", "same-site"), ("origin", other_port.as_str())],
        vec![("origin", other_port.as_str())],
        vec![("origin", "https://evil.example")],
        // `null` vouched for by nobody.
        vec![("origin", "null")],
    ];
    let post = |path: &str, form: Vec<(&str, String)>, headers: &[(&str, &str)]| {
        let mut req = app
            .client
            .post(app.url(path))
            .header("cookie", &session)
            .form(&form);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send()
    };
    let approve_code = carol.code().await;
    let forms: Vec<(&str, Vec<(&str, String)>)> = vec![
        (
            "/device",
            vec![
                ("csrf", csrf.clone()),
                ("user_code", user_code.clone()),
                ("decision", "approve".into()),
            ],
        ),
        (
            "/approvals",
            vec![
                ("csrf", csrf.clone()),
                ("id", id.clone()),
                ("decision", "approve".into()),
                ("code", approve_code.clone()),
            ],
        ),
        ("/totp", vec![("csrf", csrf.clone()), ("code", "123456".into())]),
        ("/logout", vec![("csrf", csrf.clone())]),
    ];

    // Act + Assert: every form, with a valid session and token, from elsewhere: 403.
    for (path, form) in &forms {
        for headers in &elsewhere {
            let r = post(path, form.clone(), headers).await.unwrap();
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path} {headers:?}");
            assert!(set_cookie(r.headers(), "airlock_flash").is_none());
            let page = r.text().await.unwrap();
            assert!(page.contains("not Airlock&#39;s own"), "{path}: {page}");
        }
    }
    // Nothing happened: the code is pending, the request too, the session lives.
    assert!(people::pending_device(&app.state, &user_code).await.is_ok());
    let (_, view) = support::show(&app, &carol.token, &id, None).await;
    assert_eq!(view["state"], "pending", "{view}");
    assert_eq!(view["approvals"], json!([]), "{view}");
    let (page, _) = approvals_page(&app, &session).await;
    assert!(page.contains(&format!("id=\"approve-{id}\"")), "still signed in");

    // Sign-in too, even with a server-minted pair.
    let (cookie, token) = sign_in_form(&app).await;
    let code = carol.code().await;
    for headers in &elsewhere {
        let r = post_sign_in(&app, &cookie, &token, "carol", support::PASSWORD, &code, headers).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{headers:?}");
        assert!(set_cookie(r.headers(), "airlock_web").is_none());
    }

    // What a browser sends from Airlock's own page passes: `same-origin`, with `Origin`
    // ours or `null` (our pages send `Referrer-Policy: no-referrer`).
    let r = post_sign_in(
        &app,
        &cookie,
        &token,
        "carol",
        support::PASSWORD,
        &code,
        &[("sec-fetch-site", "same-origin"), ("origin", "null")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let r = post(
        "/device",
        forms[0].1.clone(),
        &[("sec-fetch-site", "same-origin"), ("origin", own_origin.as_str())],
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("Approved: return to your terminal.")
    );
}
