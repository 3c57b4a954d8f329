//! The escalation commands of the CLI, run as the real binary in a private HOME:
//! `airlock escalate [--wait]`, `escalations list|show`, `approve`, `deny`, `cancel`,
//! `grants list|revoke`, and `airlock token` stepping up for a production grant.
//!
//! The other side (an approver deciding, a requester cancelling) acts over HTTP with
//! the helpers of `support`, or through a second terminal.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::both_backends;
use crate::support::*;

/// `airlock escalate --env E --scope S... --duration D --reason REASON [extra]`.
fn escalate_args<'a>(env: &'a str, scopes: &[&'a str], duration: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["escalate", "--env", env];
    for s in scopes {
        args.extend(["--scope", s]);
    }
    args.extend(["--duration", duration, "--reason", REASON]);
    args.extend(extra);
    args
}

/// The first `Request <uuid>` in `text`.
fn printed_id(text: &str) -> Option<String> {
    let rest = &text[text.find("Request ")? + "Request ".len()..];
    let id: String = rest.chars().take(36).collect();
    uuid::Uuid::parse_str(&id).ok().map(|u| u.to_string())
}

/// The request id the running CLI printed (`Request <uuid> created ...`).
async fn request_id(cli: &Running) -> String {
    cli.wait_for("printed a request id", Duration::from_secs(30), |out, err| {
        printed_id(out).or_else(|| printed_id(err))
    })
    .await
}

/// The request as `bearer` sees it now.
async fn state_of(app: &TestApp, bearer: &str, id: &str) -> Value {
    let (status, body) = show(app, bearer, id, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn escalate_prints_the_request_id_and_the_approval_page(backend: Backend) {
    // Arrange
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let mut bob = person_with_totp(&app, "bob", &["developer"]).await;
    let t = Terminal::new(&app);
    t.login_with_code(&mut bob).await;

    // Act: 2h is more than prod's max_grant_duration (1h).
    let out = t.run(&escalate_args("prod", &["db:write"], "2h", &[]), "").await;

    // Assert
    assert_eq!(out.code, 0, "{}", out.stderr);
    let id = printed_id(&out.stdout).expect("the id is printed");
    assert!(
        out.stdout.contains(&format!("{}/approvals#req-{id}", app.base)),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("the grant will last 1h"), "{}", out.stdout);
    assert!(
        out.stdout.contains(&format!("airlock cancel {id}")),
        "{}",
        out.stdout
    );
    let view = state_of(&app, &bob.token, &id).await;
    assert_eq!(view["state"], "pending");
    assert_eq!(view["duration_secs"], 3600);

    // --json prints the server's view.
    let out = t
        .run(
            &escalate_args("prod", &["db:write", "db:drop"], "30m", &["--json"]),
            "",
        )
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v = out.json();
    assert_eq!(v["state"], "pending");
    assert_eq!(v["destructive_scopes"], serde_json::json!(["db:drop"]));
    assert_eq!(v["id"].as_str().unwrap().len(), 36);

    // A refusal prints the server's message and exits non-zero.
    let out = t
        .run(
            &[
                "escalate",
                "--env",
                "prod",
                "--scope",
                "db:write",
                "--duration",
                "30m",
                "--reason",
                "x",
            ],
            "",
        )
        .await;
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("give a reason of at least"), "{}", out.stderr);
    assert!(out.stdout.is_empty(), "{}", out.stdout);

    // A session ended elsewhere: the command says to log in again.
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(t.session_path()).unwrap()).unwrap();
    let r = app
        .client
        .delete(app.url("/v1/sessions/current"))
        .bearer_auth(saved["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let out = t.run(&["escalations", "list"], "").await;
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("airlock login"), "{}", out.stderr);

    // And with no session at all.
    let out = Terminal::new(&app).run(&["escalations", "list"], "").await;
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("not logged in"), "{}", out.stderr);
}

async fn escalate_wait_returns_the_grant_when_an_approver_says_yes_and_token_steps_up(backend: Backend) {
    // Arrange
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let mut bob = person_with_totp(&app, "bob", &["developer"]).await;
    let mut carol = person_with_totp(&app, "carol", &["approver"]).await;
    let t = Terminal::new(&app);
    t.login_with_code(&mut bob).await;

    // Act
    let waiting = t.spawn(&escalate_args("prod", &["db:write"], "30m", &["--wait"]));
    waiting.wait_for_stderr("Waiting for approval").await;
    let id = request_id(&waiting).await;
    let (status, body) = approve(&app, &mut carol, &id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let grant_id = body["grant"]["id"].as_str().unwrap().to_string();
    let out = waiting.finish().await;

    // Assert
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("Approved by carol"), "{}", out.stdout);
    assert!(out.stdout.contains(&grant_id), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("Now run: airlock token --env prod --scope db:write"),
        "{}",
        out.stdout
    );

    // The first prod token under the grant asks for bob's code once, then is issued.
    let code = bob.code().await;
    let out = t
        .run(
            &["token", "--env", "prod", "--scope", "db:write", "--code-stdin"],
            &format!("{code}\n"),
        )
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let c = claims(out.stdout.trim());
    assert_eq!(c["grant"], grant_id.as_str());
    assert_eq!(c["scope"], "db:write");
    // A person's subject is their stable id; the username is beside it.
    assert_eq!(c["sub"], user_id(&app, "bob").await);
    assert_eq!(c["username"], "bob");
    // The grant is now bound to this session: no second code is needed.
    let out = t
        .run(&["token", "--env", "prod", "--scope", "db:write"], "")
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(claims(out.stdout.trim())["grant"], grant_id.as_str());
}

async fn a_wrong_step_up_code_gets_no_token(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let mut bob = person_with_totp(&app, "bob", &["developer"]).await;
    let mut carol = person_with_totp(&app, "carol", &["approver"]).await;
    let t = Terminal::new(&app);
    t.login_with_code(&mut bob).await;
    let out = t
        .run(&escalate_args("prod", &["db:write"], "30m", &["--json"]), "")
        .await;
    let id = out.json()["id"].as_str().unwrap().to_string();
    let (status, body) = approve(&app, &mut carol, &id).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let out = t
        .run(
            &["token", "--env", "prod", "--scope", "db:write", "--code-stdin"],
            "000000\n",
        )
        .await;

    assert_eq!(out.code, 77, "{}", out.stderr);
    assert!(out.stdout.is_empty(), "no token printed: {}", out.stdout);
    assert!(out.stderr.contains("that code is wrong"), "{}", out.stderr);
    assert!(!out.stderr.contains("airlock login"), "{}", out.stderr);
}

async fn escalate_wait_reports_denied_expired_and_cancelled_with_their_exit_codes(backend: Backend) {
    // Arrange: requests in staging expire after 2 seconds.
    let Some(app) = spawn_app_with(backend, |s| {
        s.environments
            .get_mut("staging")
            .unwrap()
            .approval
            .pending_timeout = Duration::from_secs(2);
    })
    .await
    else {
        return;
    };
    let mut bob = person_with_totp(&app, "bob", &["developer"]).await;
    let carol = person_with_totp(&app, "carol", &["approver"]).await;
    let t = Terminal::new(&app);
    t.login_with_code(&mut bob).await;

    // Denied: exit 3 with who and why.
    let waiting = t.spawn(&escalate_args("prod", &["db:write"], "30m", &["--wait"]));
    waiting.wait_for_stderr("Waiting for approval").await;
    let id = request_id(&waiting).await;
    let (status, body) = deny(&app, &carol.token, &id, "not during the freeze").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let out = waiting.finish().await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr.contains("Denied by carol: not during the freeze"),
        "{}",
        out.stderr
    );

    // Cancelled (from a second process of the same person): exit 5.
    let waiting = t.spawn(&escalate_args("prod", &["db:write"], "30m", &["--wait"]));
    waiting.wait_for_stderr("Waiting for approval").await;
    let id = request_id(&waiting).await;
    let cancel = t.run(&["cancel", &id], "").await;
    assert_eq!(cancel.code, 0, "{}", cancel.stderr);
    assert!(cancel.stdout.contains("Cancelled request"), "{}", cancel.stdout);
    let out = waiting.finish().await;
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert!(out.stderr.contains("Cancelled by"), "{}", out.stderr);

    // Expired: nobody decided within 2 seconds; exit 4. With --json the final view is
    // the only thing on standard output.
    let waiting = t.spawn(&escalate_args(
        "staging",
        &["db:drop"],
        "30m",
        &["--wait", "--json"],
    ));
    let out = waiting.finish().await;
    assert_eq!(out.code, 4, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("Expired"), "{}", out.stderr);
    assert_eq!(out.json()["state"], "expired");
}

async fn ctrl_c_while_waiting_leaves_the_request_pending_and_says_how_to_cancel(backend: Backend) {
    // Arrange
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let mut bob = person_with_totp(&app, "bob", &["developer"]).await;
    let t = Terminal::new(&app);
    t.login_with_code(&mut bob).await;
    let waiting = t.spawn(&escalate_args("prod", &["db:write"], "30m", &["--wait"]));
    waiting.wait_for_stderr("Waiting for approval").await;
    let id = request_id(&waiting).await;

    // Act
    waiting.signal(nix::sys::signal::Signal::SIGINT);
    let out = waiting.finish().await;

    // Assert
    assert_eq!(out.code, 130, "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("airlock cancel {id}")),
        "{}",
        out.stderr
    );
    assert_eq!(state_of(&app, &bob.token, &id).await["state"], "pending");

    // Cancelling it then works once; a second time is a conflict, with the server's words.
    let out = t.run(&["cancel", &id], "").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(state_of(&app, &bob.token, &id).await["state"], "cancelled");
    let out = t.run(&["cancel", &id], "").await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("409"), "{}", out.stderr);
    assert!(out.stderr.contains("is cancelled"), "{}", out.stderr);
}

async fn an_approver_lists_shows_approves_and_denies_from_the_terminal(backend: Backend) {
    // Arrange: two of bob's requests, one with a destructive scope.
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let bob = person_with_totp(&app, "bob", &["developer"]).await;
    let mut carol = person_with_totp(&app, "carol", &["approver"]).await;
    let first = request_ok(&app, &bob.token, "prod", &["db:write"], "30m").await;
    let second = request_ok(&app, &bob.token, "prod", &["db:write", "db:drop"], "30m").await;
    let t = Terminal::new(&app);
    t.login_with_code(&mut carol).await;

    // list --pending --json: the server's JSON, both requests.
    let out = t.run(&["escalations", "list", "--pending", "--json"], "").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let ids: Vec<String> = out.json()["escalations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert!(ids.contains(&first) && ids.contains(&second), "{ids:?}");

    // The table marks destructive scopes and names the requester.
    let out = t
        .run(&["escalations", "list", "--pending", "--env", "prod"], "")
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let row = out
        .stdout
        .lines()
        .find(|l| l.contains(&second))
        .expect("a row for the second request");
    assert!(
        row.contains("db:drop!") && row.contains("bob") && row.contains("pending"),
        "{row}"
    );
    let out = t
        .run(&["escalations", "list", "--pending", "--env", "dev"], "")
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("No pending requests in dev"),
        "{}",
        out.stdout
    );

    // show: fields and history.
    let out = t.run(&["escalations", "show", &first], "").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    for needle in [
        first.as_str(),
        REASON,
        "created",
        "bob",
        "/approvals#req-",
        "0 of 1",
    ] {
        assert!(out.stdout.contains(needle), "{needle:?} missing:\n{}", out.stdout);
    }
    let out = t.run(&["escalations", "show", &first, "--json"], "").await;
    assert_eq!(out.json()["history"][0]["kind"], "created");

    // A wrong code: refused with the server's message, still pending.
    let out = t.run(&["approve", &first, "--code-stdin"], "000000\n").await;
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("that code is wrong"), "{}", out.stderr);
    assert!(
        out.stderr.contains("run migration 0042"),
        "shows what is approved: {}",
        out.stderr
    );
    assert_eq!(state_of(&app, &carol.token, &first).await["state"], "pending");

    // The right code: approved, with the grant.
    let code = carol.code().await;
    let out = t
        .run(&["approve", &first, "--code-stdin"], &format!("{code}\n"))
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("Approved request"), "{}", out.stdout);
    let view = state_of(&app, &carol.token, &first).await;
    assert_eq!(view["state"], "approved");
    assert_eq!(view["approvals"][0]["approver"], "carol");
    assert!(
        out.stdout.contains(view["grant"]["id"].as_str().unwrap()),
        "{}",
        out.stdout
    );

    // deny, then nothing left to approve (no code asked for).
    let out = t
        .run(&["deny", &second, "--reason", "use a migration, not a drop"], "")
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let view = state_of(&app, &carol.token, &second).await;
    assert_eq!(view["state"], "denied");
    assert_eq!(view["decision_reason"], "use a migration, not a drop");
    let out = t.run(&["approve", &second, "--code-stdin"], "").await;
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("is denied"), "{}", out.stderr);

    // bob, who is no approver, cannot deny; the server says why.
    let mut bob = bob;
    let bt = Terminal::new(&app);
    bt.login_with_code(&mut bob).await;
    let third = request_ok(&app, &bob.token, "prod", &["db:write"], "30m").await;
    let out = bt.run(&["deny", &third, "--reason", "no"], "").await;
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("403"), "{}", out.stderr);
}

async fn grants_are_listed_and_revoked_from_the_terminal(backend: Backend) {
    // Arrange: bob holds a prod grant.
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let mut bob = person_with_totp(&app, "bob", &["developer"]).await;
    let mut carol = person_with_totp(&app, "carol", &["approver"]).await;
    let id = request_ok(&app, &bob.token, "prod", &["db:write"], "30m").await;
    let (status, body) = approve(&app, &mut carol, &id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let grant_id = body["grant"]["id"].as_str().unwrap().to_string();
    let t = Terminal::new(&app);
    t.login_with_code(&mut bob).await;

    // Act / Assert: list
    let out = t.run(&["grants", "list", "--active", "--json"], "").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let grants = out.json()["grants"].as_array().unwrap().clone();
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert_eq!(grants[0]["id"], grant_id.as_str());
    let out = t.run(&["grants", "list"], "").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let row = out.stdout.lines().find(|l| l.contains(&grant_id)).expect("a row");
    assert!(
        row.contains("db:write") && row.contains("active") && row.contains("bob"),
        "{row}"
    );

    // revoke: the grant ends, and no prod token follows.
    let out = t
        .run(&["grants", "revoke", &grant_id, "--reason", "migration done"], "")
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("Revoked grant"), "{}", out.stdout);
    let out = t.run(&["grants", "list", "--active", "--json"], "").await;
    assert_eq!(out.json()["grants"], serde_json::json!([]));
    let out = t
        .run(&["grants", "revoke", &grant_id, "--reason", "again"], "")
        .await;
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("409"), "{}", out.stderr);
    let out = t
        .run(
            &["token", "--env", "prod", "--scope", "db:write", "--code-stdin"],
            "",
        )
        .await;
    assert_eq!(out.code, 77, "{}", out.stderr);
    assert!(out.stderr.contains("airlock escalate"), "{}", out.stderr);
}

/// A TCP proxy in front of the server that can drop every connection for a while.
struct FlakyProxy {
    base: String,
    down: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl FlakyProxy {
    async fn start(target: SocketAddr) -> FlakyProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let down = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (d, c) = (down.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if d.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                c.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                }));
            }
        });
        FlakyProxy {
            base,
            down,
            conns,
            accept,
        }
    }

    /// Drop every open connection and refuse new ones until [`FlakyProxy::up`].
    fn down(&self) {
        self.down.store(true, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn up(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

impl Drop for FlakyProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.down();
    }
}

async fn escalate_wait_keeps_waiting_through_a_network_outage(backend: Backend) {
    // Arrange: bob's CLI reaches Airlock through a proxy that will fail for a while.
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let mut bob = person_with_totp(&app, "bob", &["developer"]).await;
    let mut carol = person_with_totp(&app, "carol", &["approver"]).await;
    let target: SocketAddr = app.base.trim_start_matches("http://").parse().unwrap();
    let proxy = FlakyProxy::start(target).await;
    let t = Terminal::with_server(&proxy.base);
    t.login_with_code(&mut bob).await;
    let waiting = t.spawn(&escalate_args("prod", &["db:write"], "30m", &["--wait"]));
    waiting.wait_for_stderr("Waiting for approval").await;
    let id = request_id(&waiting).await;

    // Act: the connection drops, polls fail, then the network comes back and carol approves.
    proxy.down();
    waiting.wait_for_stderr("retrying").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.up();
    let (status, body) = approve(&app, &mut carol, &id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let out = waiting.finish().await;

    // Assert
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("cannot reach Airlock"), "{}", out.stderr);
    assert!(out.stdout.contains("Approved by carol"), "{}", out.stdout);
}

both_backends!(
    escalate_prints_the_request_id_and_the_approval_page,
    escalate_wait_returns_the_grant_when_an_approver_says_yes_and_token_steps_up,
    a_wrong_step_up_code_gets_no_token,
    escalate_wait_reports_denied_expired_and_cancelled_with_their_exit_codes,
    ctrl_c_while_waiting_leaves_the_request_pending_and_says_how_to_cancel,
    an_approver_lists_shows_approves_and_denies_from_the_terminal,
    grants_are_listed_and_revoked_from_the_terminal,
    escalate_wait_keeps_waiting_through_a_network_outage,
);
