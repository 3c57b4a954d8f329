//! Refusals and leaks found in review: logs, unauthenticated audit floods, concurrent
//! verification, per-environment scope lists, malformed paths.

use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use secrecy::ExposeSecret;
use serde_json::Value;
use tokio::io::AsyncReadExt;

use crate::harness::{Backend, TestAgent, TestApp, spawn_app, spawn_app_with};

/// The server's own logs, at trace level and in JSON, never carry a secret or a token,
/// whatever the callers send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_logs_never_contain_secrets_or_tokens_even_at_trace_level() {
    // Arrange: a real `airlock serve` process logging everything.
    let dir = tempfile::tempdir().unwrap();
    let master = airlock::secrets::MasterKey::generate().unwrap();
    let master_b64 = master.to_base64().expose_secret().to_string();
    let db = format!("sqlite://{}/a.db", dir.path().display());
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let airlock = |args: &[&str]| {
        let mut c = tokio::process::Command::new(TestApp::bin());
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("AIRLOCK_MASTER_KEY", &master_b64)
            .env("AIRLOCK_DATA_DIR", dir.path())
            .env("AIRLOCK_LISTEN", format!("127.0.0.1:{port}"))
            .env("AIRLOCK_PUBLIC_URL", format!("http://127.0.0.1:{port}"))
            .env("AIRLOCK_LOG", "trace")
            .arg("--database")
            .arg(&db)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    };
    // Operator commands never migrate (only `serve` and `migrate` do): migrate first.
    let migrated = airlock(&["migrate"]).output().await.unwrap();
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    let created = airlock(&[
        "agent", "create", "--env", "staging", "--name", "logbot", "--scope", "db:read", "--json",
    ])
    .output()
    .await
    .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let creds: Value = serde_json::from_slice(&created.stdout).unwrap();
    let id = creds["client_id"].as_str().unwrap().to_string();
    let secret = creds["client_secret"].as_str().unwrap().to_string();
    let mut server = airlock(&["--log-format", "json", "serve"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut up = false;
    for _ in 0..100 {
        if client.get(format!("{base}/healthz")).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "server started");

    // Act: a good request, a wrong secret, a secret pasted as client id, a token as scope.
    let url = format!("{base}/envs/staging/token");
    let ok: Value = client
        .post(&url)
        .basic_auth(&id, Some(&secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = ok["access_token"].as_str().expect("token").to_string();
    let _ = client
        .post(&url)
        .basic_auth(&id, Some("airlock_secret_wrong"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await;
    let _ = client
        .post(&url)
        .basic_auth(&secret, Some(&secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await;
    let _ = client
        .post(&url)
        .basic_auth(&id, Some(&secret))
        .form(&[("grant_type", "client_credentials"), ("scope", token.as_str())])
        .send()
        .await;
    let _ = client
        .post(&url)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", id.as_str()),
            ("client_secret", secret.as_str()),
        ])
        .send()
        .await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut logs = String::new();
    server
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .await
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), server.wait())
        .await
        .unwrap()
        .unwrap();

    // Assert
    assert!(status.success(), "graceful shutdown on SIGTERM");
    assert!(
        logs.lines().count() > 10,
        "trace logging produced output:\n{logs}"
    );
    let signature = token.rsplit('.').next().unwrap();
    for (what, needle) in [
        ("secret", secret.as_str()),
        ("token signature", signature),
        ("basic header", "Basic "),
    ] {
        assert!(!logs.contains(needle), "the logs contain the {what}");
    }
    let json_lines = logs.lines().filter(|l| l.starts_with('{')).count();
    assert!(json_lines > 0, "--log-format json writes JSON lines");
    // And the audit trail holds neither.
    let audit = airlock(&["audit", "tail", "-n", "100", "--json"])
        .output()
        .await
        .unwrap();
    let audit = String::from_utf8_lossy(&audit.stdout);
    assert!(audit.contains("token.issued"));
    assert!(!audit.contains(&secret) && !audit.contains(signature));
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
    let refused = app
        .audit_kinds()
        .await
        .into_iter()
        .filter(|e| e.event.kind == "token.refused")
        .count();
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

async fn audit_verify_is_not_fooled_by_a_busy_server(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let store = app.state.store.clone();
    let writer = tokio::spawn(async move {
        for i in 0..400 {
            let e =
                airlock::domain::NewAuditEvent::new("test.busy", "test", airlock::domain::Outcome::Success)
                    .detail("i", i);
            store.append_audit(e).await.unwrap();
        }
    });
    let mut checks = 0;
    while !writer.is_finished() {
        airlock::store::verify_store(app.store())
            .await
            .expect("an intact chain verifies while it grows");
        checks += 1;
    }
    writer.await.unwrap();
    assert!(checks > 0);
    let v = airlock::store::verify_store(app.store()).await.unwrap();
    assert!(v.events >= 400);
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
    a_flood_of_anonymous_refusals_cannot_fill_the_audit_trail,
    a_scope_not_offered_in_an_environment_is_unknown_there,
    audit_verify_is_not_fooled_by_a_busy_server,
    malformed_paths_get_oauth_errors,
);
