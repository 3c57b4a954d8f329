//! The operator's commands, which open the store or start the server: `audit verify` and
//! `audit tail`, `config check` and `config show`, the master key at start-up, and
//! `healthcheck`.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use reqwest::StatusCode;

use crate::support::{Backend, Out, Terminal, TestApp, run, run_with_input, run_within, spawn_app};

/// For commands that must fail at start-up: a server that starts instead would hang.
const QUICKLY: Duration = Duration::from_secs(20);

/// Run SQL against the test database behind the server's back.
async fn tamper(app: &TestApp, statements: &[&'static str]) {
    use sqlx::Connection;
    match app.db.backend {
        Backend::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&app.db.url)
                .await
                .expect("connect");
            for s in statements {
                sqlx::query(*s).execute(&mut c).await.expect(s);
            }
            c.close().await.expect("close");
        }
        Backend::Postgres => {
            let mut c = sqlx::PgConnection::connect(&app.db.url).await.expect("connect");
            for s in statements {
                sqlx::query(*s).execute(&mut c).await.expect(s);
            }
            c.close().await.expect("close");
        }
    }
}

fn another_master_key() -> String {
    let mut key = [0u8; 32];
    airlock::secrets::random_bytes(&mut key).expect("random");
    STANDARD.encode(key)
}

/// A server with some history: 4 key.created, 2 agent.created, 2 token.issued,
/// 1 cross_environment_attempt: 9 events.
async fn app_with_history(backend: Backend) -> Option<(TestApp, Terminal)> {
    let app = spawn_app(backend).await?;
    let sb = Terminal::without_server();
    let a = sb.agent_create(&app, "staging", "one", &["db:read"]).await;
    sb.agent_create(&app, "dev", "two", &["db:read"]).await;
    assert_eq!(app.token("staging", &a, None).await.status(), StatusCode::OK);
    assert_eq!(app.token("staging", &a, None).await.status(), StatusCode::OK);
    assert_eq!(
        app.token("dev", &a, None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.audit_kinds().await.len(), 9, "the history the tests assume");
    Some((app, sb))
}

async fn audit_verify(sb: &Terminal, app: &TestApp) -> Out {
    // The audit commands need no master key.
    run(sb
        .airlock()
        .arg("--database")
        .arg(&app.db.url)
        .args(["audit", "verify"]))
    .await
}

async fn audit_verify_passes_on_an_intact_trail_and_tail_shows_the_latest(backend: Backend) {
    // Arrange
    let Some((app, sb)) = app_with_history(backend).await else {
        return;
    };
    let events = app.audit_kinds().await;
    let last = events.last().unwrap();

    // Act + Assert: verify
    let out = audit_verify(&sb, &app).await;
    out.expect_success("audit verify");
    assert!(out.stdout.contains("intact"), "{}", out.stdout);
    assert!(out.stdout.contains("9 events"), "{}", out.stdout);
    let out = run(sb
        .airlock()
        .arg("--database")
        .arg(&app.db.url)
        .args(["audit", "verify", "--json"]))
    .await;
    out.expect_success("audit verify --json");
    let v = out.json();
    assert_eq!(v["ok"], true);
    assert_eq!(v["events"], 9);
    assert_eq!(v["head_seq"], 9);
    assert_eq!(v["head_hash"], hex::encode(&last.hash));

    // tail --json
    let out = run(sb
        .airlock()
        .arg("--database")
        .arg(&app.db.url)
        .args(["audit", "tail", "--json"]))
    .await;
    out.expect_success("audit tail --json");
    let tail = out.json();
    let tail = tail.as_array().expect("array");
    assert_eq!(tail.len(), 9);
    assert_eq!(tail.first().unwrap()["seq"], 1);
    assert_eq!(tail.last().unwrap()["seq"], last.seq);
    assert_eq!(tail.last().unwrap()["kind"], "cross_environment_attempt");

    // tail -n 2
    let out = run(sb
        .airlock()
        .arg("--database")
        .arg(&app.db.url)
        .args(["audit", "tail", "-n", "2"]))
    .await;
    out.expect_success("audit tail -n 2");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    assert!(lines[0].starts_with("#8 "), "{}", lines[0]);
    assert!(lines[1].starts_with("#9 "), "{}", lines[1]);
    assert!(lines[1].contains("cross_environment_attempt"), "{}", lines[1]);
}

async fn audit_verify_names_an_edited_event(backend: Backend) {
    let Some((app, sb)) = app_with_history(backend).await else {
        return;
    };
    tamper(&app, &["update audit_events set actor = 'mallory' where seq = 2"]).await;

    audit_verify(&sb, &app)
        .await
        .expect_code(1, "edited event")
        .stderr_has("event #2 was altered", "edited event")
        .no_panic();
    let out = run(sb
        .airlock()
        .arg("--database")
        .arg(&app.db.url)
        .args(["audit", "verify", "--json"]))
    .await;
    out.expect_code(1, "edited event, JSON");
    let v = out.json();
    assert_eq!(v["ok"], false);
    assert!(v["error"].as_str().unwrap().contains("#2"), "{v}");
}

async fn audit_verify_finds_a_deleted_event(backend: Backend) {
    let Some((app, sb)) = app_with_history(backend).await else {
        return;
    };
    tamper(&app, &["delete from audit_events where seq = 5"]).await;

    audit_verify(&sb, &app)
        .await
        .expect_code(1, "deleted event")
        .stderr_has("event #6 follows #4", "deleted event")
        .stderr_has("missing or out of order", "deleted event");
}

async fn audit_verify_finds_reordered_events(backend: Backend) {
    let Some((app, sb)) = app_with_history(backend).await else {
        return;
    };
    tamper(
        &app,
        &[
            "update audit_events set seq = -1 where seq = 5",
            "update audit_events set seq = 5 where seq = 6",
            "update audit_events set seq = 6 where seq = -1",
        ],
    )
    .await;

    audit_verify(&sb, &app)
        .await
        .expect_code(1, "reordered events")
        .stderr_has("event #5 does not link", "reordered events");
}

async fn audit_verify_finds_events_removed_from_the_end(backend: Backend) {
    let Some((app, sb)) = app_with_history(backend).await else {
        return;
    };
    tamper(&app, &["delete from audit_events where seq = 9"]).await;

    audit_verify(&sb, &app)
        .await
        .expect_code(1, "truncated trail")
        .stderr_has("ends at event #8", "truncated trail")
        .stderr_has("head says #9", "truncated trail")
        .stderr_has("removed from the end", "truncated trail");
}

#[tokio::test]
async fn config_check_reports_every_problem_naming_its_key() {
    // Arrange
    let sb = Terminal::without_server();
    let bad = sb.path("bad.toml");
    std::fs::write(
        &bad,
        r#"
[environments.prod.approval]
auto_approve = true

[environments.staging.approval]
quorum = 0

[environments.dev]
max_ttl = "1m"
scopes = ["db:read", "db:write", "db:migrate", "db:teleport"]
"#,
    )
    .unwrap();
    let good = sb.path("good.toml");
    std::fs::write(&good, "[environments.dev]\ndefault_ttl = \"5m\"\n").unwrap();

    // Act
    let out = run(sb.airlock().args(["config", "check"]).arg(&bad)).await;

    // Assert
    out.expect_failure("bad config").no_panic();
    for key in [
        "environments.prod.approval.auto_approve",
        "environments.staging.approval.quorum",
        "environments.dev.max_ttl (1m) is below default_ttl (15m)",
        "environments.dev.scopes names unknown scope \"db:teleport\"",
    ] {
        out.stderr_has(key, "one message per problem");
    }
    let problems = out.stderr.lines().filter(|l| l.starts_with("  - ")).count();
    assert_eq!(problems, 4, "exactly the four problems:\n{}", out.stderr);

    let out = run(sb.airlock().args(["config", "check"]).arg(&good)).await;
    out.expect_success("good config");
    assert!(out.stdout.starts_with("configuration OK"), "{}", out.stdout);

    run(sb
        .airlock()
        .args(["config", "check"])
        .arg(sb.path("missing.toml")))
    .await
    .expect_failure("missing file")
    .stderr_has("does not exist", "missing file");
}

#[tokio::test]
async fn config_show_redacts_the_database_password_and_the_master_key() {
    let sb = Terminal::without_server();
    let key = another_master_key();
    for json in [false, true] {
        let mut cmd = sb.airlock();
        cmd.env("AIRLOCK_DATABASE_URL", "postgres://u:hunter2@h/db")
            .env("AIRLOCK_MASTER_KEY", &key)
            .args(["config", "show"]);
        if json {
            cmd.arg("--json");
        }
        let out = run(&mut cmd).await;
        out.expect_success("config show");
        for leaked in ["hunter2", key.as_str()] {
            assert!(
                !out.stdout.contains(leaked),
                "stdout leaks {leaked}:\n{}",
                out.stdout
            );
            assert!(
                !out.stderr.contains(leaked),
                "stderr leaks {leaked}:\n{}",
                out.stderr
            );
        }
        // The settings were really read from the environment, just redacted.
        assert!(out.stdout.contains("postgres://u:***@h/db"), "{}", out.stdout);
        assert!(out.stdout.contains("[redacted]"), "{}", out.stdout);
    }
}

#[tokio::test]
async fn production_mode_refuses_to_start_without_a_master_key() {
    let sb = Terminal::without_server();
    let db = format!("sqlite://{}/x.db", sb.path("data").display());
    let out = run_within(
        sb.airlock()
            .env("AIRLOCK_MODE", "production")
            .env("AIRLOCK_LISTEN", "127.0.0.1:0")
            .env("AIRLOCK_PUBLIC_URL", "https://airlock.test")
            .args(["--database", db.as_str(), "serve"]),
        QUICKLY,
    )
    .await;
    out.expect_code(1, "production without a key")
        .stderr_has("AIRLOCK_MASTER_KEY_FILE", "production without a key")
        .no_panic();
    assert!(
        !sb.path("data").join("master.key").exists(),
        "production never generates a key"
    );
}

#[tokio::test]
async fn a_malformed_master_key_is_refused_with_a_hint() {
    let sb = Terminal::without_server();
    let db = format!("sqlite://{}/x.db", sb.path("data").display());
    for args in [
        vec!["serve"],
        vec![
            "agent", "create", "--env", "dev", "--name", "x", "--scope", "db:read",
        ],
    ] {
        let out = run_within(
            sb.airlock()
                .env("AIRLOCK_MASTER_KEY", "short")
                .env("AIRLOCK_LISTEN", "127.0.0.1:0")
                .args(["--database", db.as_str()])
                .args(&args),
            QUICKLY,
        )
        .await;
        out.expect_code(1, "malformed key")
            .stderr_has("32 random bytes", "malformed key")
            .no_panic();
        assert!(
            !out.stderr.contains("short"),
            "the key is not echoed: {}",
            out.stderr
        );
    }
}

/// Only `serve` and `migrate` change the schema: every other operator command refuses a
/// database that is behind, says to run `airlock migrate`, and leaves it as it was.
#[tokio::test]
async fn operator_commands_refuse_a_database_that_is_not_migrated() {
    // Arrange: a fresh database and a master key.
    let sb = Terminal::without_server();
    let db = format!("sqlite://{}/fresh.db", sb.path("data").display());
    let key = another_master_key();
    let airlock = |args: &[&str]| {
        let mut cmd = sb.airlock();
        cmd.env("AIRLOCK_MASTER_KEY", &key)
            .args(["--database", db.as_str()])
            .args(args);
        cmd
    };

    // Act + Assert
    for args in [
        vec![
            "agent", "create", "--env", "dev", "--name", "x", "--scope", "db:read",
        ],
        vec!["agent", "list"],
        vec!["audit", "tail"],
        vec!["audit", "verify"],
    ] {
        run_within(&mut airlock(&args), QUICKLY)
            .await
            .expect_code(1, &args.join(" "))
            .stderr_has("airlock migrate", &args.join(" "))
            .no_panic();
    }
    let bootstrap = airlock(&["admin", "bootstrap", "--username", "root", "--password-stdin"]);
    run_with_input(bootstrap, "a long enough password\n")
        .await
        .expect_code(1, "admin bootstrap")
        .stderr_has("airlock migrate", "admin bootstrap");
    // Nothing was migrated meanwhile: `migrate` still has every migration to apply.
    let out = run_within(&mut airlock(&["migrate", "--json"]), QUICKLY).await;
    out.expect_success("migrate");
    assert!(out.json()["applied"].as_u64().unwrap_or(0) > 0, "{}", out.stdout);
    run_within(&mut airlock(&["agent", "list"]), QUICKLY)
        .await
        .expect_success("agent list once migrated");
}

async fn a_wrong_master_key_stops_serve_and_agent_commands(backend: Backend) {
    // Arrange: the app initialised the database with its own key.
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let sb = Terminal::without_server();
    let wrong = another_master_key();

    for args in [
        vec!["serve"],
        vec![
            "agent", "create", "--env", "dev", "--name", "x", "--scope", "db:read",
        ],
        vec!["agent", "list"],
    ] {
        // Act
        let out = run_within(
            sb.airlock()
                .env("AIRLOCK_MASTER_KEY", &wrong)
                .env("AIRLOCK_LISTEN", "127.0.0.1:0")
                .arg("--database")
                .arg(&app.db.url)
                .args(&args),
            QUICKLY,
        )
        .await;

        // Assert
        out.expect_code(1, &args.join(" "))
            .stderr_has("master key does not match", &args.join(" "))
            .no_panic();
        assert!(!out.stderr.contains(&wrong), "the key is not echoed");
    }
    assert!(
        app.store().agents(None).await.unwrap().is_empty(),
        "nothing was created"
    );
    assert!(
        !sb.path("data").join("master.key").exists(),
        "no development key was generated"
    );
}

#[tokio::test]
async fn healthcheck_exits_0_for_a_live_server_and_1_once_it_has_stopped() {
    // Arrange
    let app = spawn_app(Backend::Sqlite).await.expect("sqlite always runs");
    let base = app.base.clone();
    let sb = Terminal::without_server();

    // Act + Assert
    run(sb.airlock().args(["healthcheck", "--url", base.as_str()]))
        .await
        .expect_success("live server");
    app.stop().await;
    run(sb.airlock().args(["healthcheck", "--url", base.as_str()]))
        .await
        .expect_code(1, "stopped server")
        .stderr_has("unhealthy: cannot reach", "stopped server")
        .no_panic();
}

crate::both_backends!(
    audit_verify_passes_on_an_intact_trail_and_tail_shows_the_latest,
    audit_verify_names_an_edited_event,
    audit_verify_finds_a_deleted_event,
    audit_verify_finds_reordered_events,
    audit_verify_finds_events_removed_from_the_end,
    a_wrong_master_key_stops_serve_and_agent_commands,
);
