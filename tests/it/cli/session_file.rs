//! The CLI's session file under concurrency: processes that refresh at the same time,
//! a long `airlock exec` beside other commands, logging in again, shared directories,
//! and an `AIRLOCK_SERVER` that disagrees with the session.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{
    Backend, Terminal, TestApp, developer, events, mode, run_with_input, spawn_app, spawn_app_with,
};

async fn refresh_reuses(app: &TestApp) -> usize {
    events(app, "session.refresh_reuse").await.len()
}

async fn whoami_is(t: &Terminal, username: &str) {
    let me = t.run(&["whoami", "--json"], "").await;
    assert_eq!(me.code, 0, "the session was ended: {}", me.stderr);
    assert_eq!(
        serde_json::from_str::<Value>(&me.stdout).unwrap()["username"],
        username
    );
}

async fn concurrent_refreshes_keep_the_session(backend: Backend) {
    // Arrange: session access tokens that are stale almost at once.
    let Some(app) = spawn_app_with(backend, |s| s.auth.session_access_ttl = Duration::from_secs(1)).await
    else {
        return;
    };
    developer(&app, "bob").await;
    let t = Terminal::new(&app);
    let out = t.login("bob").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Act: six processes that all need to refresh, at once.
    let children: Vec<_> = (0..6)
        .map(|_| {
            tokio::spawn(run_with_input(
                t.cmd(&["token", "--env", "staging", "--scope", "db:read"]),
                "",
            ))
        })
        .collect();
    let mut outs = Vec::new();
    for c in children {
        outs.push(c.await.unwrap());
    }

    // Assert
    for out in &outs {
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert!(out.stdout.trim().split('.').count() == 3, "{}", out.stdout);
    }
    assert_eq!(refresh_reuses(&app).await, 0);
    whoami_is(&t, "bob").await;
    let lock = PathBuf::from(format!("{}.lock", t.session_path().display()));
    assert_eq!(mode(&lock), 0o600);
}

async fn a_long_exec_survives_refreshes_by_other_commands(backend: Backend) {
    // Arrange: stale session access tokens after 1 s; staging tokens the runner renews
    // after 2 s.
    let Some(app) = spawn_app_with(backend, |s| {
        s.auth.session_access_ttl = Duration::from_secs(1);
        let staging = s.environments.get_mut("staging").unwrap();
        staging.default_ttl = Duration::from_secs(3);
    })
    .await
    else {
        return;
    };
    developer(&app, "bob").await;
    let t = Terminal::new(&app);
    assert_eq!(t.login("bob").await.code, 0);

    // Act: the child outlives two renewals; another command refreshes in between.
    let exec = tokio::spawn(run_with_input(
        t.cmd(&[
            "exec", "--env", "staging", "--scope", "db:read", "--", "sleep", "5",
        ]),
        "",
    ));
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let other = t
        .run(&["token", "--env", "staging", "--scope", "db:read"], "")
        .await;
    let exec = exec.await.unwrap();

    // Assert
    assert_eq!(other.code, 0, "{}", other.stderr);
    assert_eq!(exec.code, 0, "{}", exec.stderr);
    let events = app.audit_kinds().await;
    let by_runner = events
        .iter()
        .filter(|e| e.event.kind == "token.issued" && e.event.details["act"] == "process:sleep")
        .count();
    assert!(
        by_runner >= 2,
        "the runner renewed the child's token ({by_runner} issued): {}",
        exec.stderr
    );
    assert_eq!(refresh_reuses(&app).await, 0, "{}", exec.stderr);
    whoami_is(&t, "bob").await;
}

async fn logging_in_again_ends_the_previous_session(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    developer(&app, "bob").await;
    let t = Terminal::new(&app);
    let out = t.login("bob").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let first = t.saved();
    let first_access = first["access_token"].as_str().unwrap().to_string();
    let me = |token: String| {
        let r = app.client.get(app.url("/v1/me")).bearer_auth(token).send();
        async move { r.await.unwrap().status() }
    };
    assert_eq!(me(first_access.clone()).await, StatusCode::OK);

    let out = t.login("bob").await;

    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(me(first_access).await, StatusCode::UNAUTHORIZED);
    let second = t.saved();
    assert_ne!(second["session_id"], first["session_id"]);
    assert_eq!(
        me(second["access_token"].as_str().unwrap().to_string()).await,
        StatusCode::OK
    );
    whoami_is(&t, "bob").await;
}

async fn a_chosen_shared_directory_keeps_its_mode(backend: Backend) {
    use std::os::unix::fs::PermissionsExt;
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    developer(&app, "bob").await;
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut t = Terminal::new(&app);
    t.session_file = Some(shared.path().join("session.json"));

    let out = t.login("bob").await;

    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(mode(shared.path()), 0o755, "a chosen directory is left alone");
    assert_eq!(mode(&t.session_path()), 0o600);
    let tok = t
        .run(&["token", "--env", "staging", "--scope", "db:read"], "")
        .await;
    assert_eq!(tok.code, 0, "{}", tok.stderr);
    whoami_is(&t, "bob").await;
    assert_eq!(mode(shared.path()), 0o755);

    // A chosen directory that does not exist yet is created private.
    let mut t2 = Terminal::new(&app);
    let fresh = shared.path().join("new/airlock-session");
    t2.session_file = Some(fresh.join("session.json"));
    assert_eq!(t2.login("bob").await.code, 0);
    assert_eq!(mode(&fresh), 0o700);
    assert_eq!(mode(shared.path()), 0o755);
}

/// `AIRLOCK_SERVER` naming another server than the session's is not silently ignored.
async fn airlock_server_naming_another_server_than_the_session_warns(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    developer(&app, "dana").await;
    let t = Terminal::new(&app);
    let login = t.login("dana").await;
    assert_eq!(login.code, 0, "login: {}", login.stderr);

    // Act: the session is with app.base; the variable names another server.
    let mut other = t.cmd(&["whoami"]);
    other.env("AIRLOCK_SERVER", "http://127.0.0.1:9");
    let out = run_with_input(other, "").await;

    // Assert: the command still uses the session's server, and says so.
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("dana"), "{}", out.stdout);
    assert!(
        out.stderr
            .contains("warning: AIRLOCK_SERVER is http://127.0.0.1:9")
            && out.stderr.contains(&format!("signed in to {}", app.base))
            && out.stderr.contains("airlock login --server http://127.0.0.1:9"),
        "{}",
        out.stderr
    );
    // The same server (even with a trailing slash) is no reason to warn.
    let mut same = t.cmd(&["whoami"]);
    same.env("AIRLOCK_SERVER", format!("{}/", app.base));
    let out = run_with_input(same, "").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stderr.contains("AIRLOCK_SERVER"), "{}", out.stderr);
}

crate::both_backends!(
    concurrent_refreshes_keep_the_session,
    a_long_exec_survives_refreshes_by_other_commands,
    logging_in_again_ends_the_previous_session,
    a_chosen_shared_directory_keeps_its_mode,
    airlock_server_naming_another_server_than_the_session_warns,
);
