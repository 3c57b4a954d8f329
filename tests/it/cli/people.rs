//! The people commands of the CLI, as a person (or an agent in their terminal) runs them.

use airlock::people;
use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{
    Backend, PASSWORD, Terminal, TestApp, claims, enrol, mode, person, run_with_input, spawn_app,
    spawn_app_with, user_id,
};

async fn a_developer_logs_in_gets_a_staging_token_and_logs_out(backend: Backend) {
    // Arrange
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let bob = person(&app, "bob", &["developer"]).await;
    let secret = enrol(&app, &bob).await.0;
    let t = Terminal::new(&app);

    // Act: password, then the TOTP code, both from standard input.
    let step = airlock::totp::step_at(time::OffsetDateTime::now_utc().unix_timestamp());
    let code = airlock::totp::code_at(&secret, step + 1);
    let out = t
        .run(
            &[
                "login",
                "--password",
                "--username",
                "bob",
                "--password-stdin",
                "--code-stdin",
            ],
            &format!("{PASSWORD}\n{code}\n"),
        )
        .await;

    // Assert
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("Logged in"), "{}", out.stdout);
    assert_eq!(mode(&t.session_path()), 0o600);
    assert_eq!(mode(t.session_path().parent().unwrap()), 0o700);
    let me = t.run(&["whoami", "--json"], "").await;
    assert_eq!(me.code, 0, "{}", me.stderr);
    assert_eq!(
        serde_json::from_str::<Value>(&me.stdout).unwrap()["username"],
        "bob"
    );
    let tok = t
        .run(&["token", "--env", "staging", "--scope", "db:read"], "")
        .await;
    assert_eq!(tok.code, 0, "{}", tok.stderr);
    let c = claims(&tok.stdout);
    assert_eq!(
        (c["username"].as_str(), c["env"].as_str(), c["scope"].as_str()),
        (Some("bob"), Some("staging"), Some("db:read"))
    );

    // Logout revokes server-side: the saved access token stops working at once.
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(t.session_path()).unwrap()).unwrap();
    let access = saved["access_token"].as_str().unwrap().to_string();
    let out = t.run(&["logout"], "").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!t.session_path().exists());
    let r = app
        .client
        .get(app.url("/v1/me"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let out = t.run(&["token", "--env", "staging"], "").await;
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("not logged in"), "{}", out.stderr);
}

async fn production_destructive_and_unlisted_environments_are_refused(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |s| {
        let dev = s.roles.get_mut("developer").unwrap();
        dev.tokens
            .insert("dev".into(), vec!["db:read".into(), "db:drop".into()]);
        dev.tokens.remove("staging");
    })
    .await
    else {
        return;
    };
    person(&app, "bob", &["developer"]).await;
    let t = Terminal::new(&app);
    assert_eq!(t.login("bob").await.code, 0);
    for (env, scope, needle) in [
        ("prod", "db:read", "airlock escalate --env prod"),
        ("dev", "db:drop", "airlock escalate --env dev"),
        (
            "staging",
            "db:read",
            "do not give you tokens for environment 'staging'",
        ),
    ] {
        let out = t.run(&["token", "--env", env, "--scope", scope], "").await;
        assert_eq!(out.code, 77, "{env} {scope}: {}", out.stderr);
        assert!(
            out.stderr.contains("access_denied") && out.stderr.contains(needle),
            "{}",
            out.stderr
        );
    }
    assert_eq!(
        t.run(&["token", "--env", "dev", "--scope", "db:read"], "")
            .await
            .code,
        0
    );
}

async fn exec_gives_the_child_a_token_and_nothing_that_leads_to_the_session(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    person(&app, "bob", &["developer"]).await;
    let t = Terminal::new(&app);
    assert_eq!(t.login("bob").await.code, 0);
    let saved = std::fs::read_to_string(t.session_path()).unwrap();
    let saved: Value = serde_json::from_str(&saved).unwrap();
    let seen = t.path("child-env");
    let script = format!(
        "env > {seen}; {bin} token --env staging > {seen}.token 2> {seen}.err; echo $? > {seen}.code",
        seen = seen.display(),
        bin = TestApp::bin().display()
    );
    let mut cmd = t.cmd(&[
        "exec", "--env", "staging", "--scope", "db:read", "--", "sh", "-c", &script,
    ]);
    cmd.env("AIRLOCK_CLIENT_SECRET", "airlock_secret_parent")
        .env("AIRLOCK_MASTER_KEY", "parent-master-key");
    let out = run_with_input(cmd, "").await;
    assert_eq!(out.code, 0, "{}", out.stderr);

    let env = std::fs::read_to_string(&seen).unwrap();
    let airlock_vars: Vec<&str> = env.lines().filter(|l| l.starts_with("AIRLOCK_")).collect();
    let names: Vec<&str> = airlock_vars
        .iter()
        .map(|l| l.split('=').next().unwrap())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            "AIRLOCK_ENV",
            "AIRLOCK_SESSION_FILE",
            "AIRLOCK_TOKEN",
            "AIRLOCK_TOKEN_FILE"
        ],
        "{env}"
    );
    assert!(env.contains("AIRLOCK_SESSION_FILE=/dev/null\n"));
    for secret in [
        saved["refresh_token"].as_str().unwrap(),
        saved["access_token"].as_str().unwrap(),
        "airlock_secret_parent",
        "parent-master-key",
    ] {
        assert!(
            !env.contains(secret),
            "the child's environment holds a parent secret"
        );
    }
    let token = env
        .lines()
        .find_map(|l| l.strip_prefix("AIRLOCK_TOKEN="))
        .unwrap();
    let c = claims(token);
    assert_eq!(
        c["act"]["sub"], "process:sh",
        "the token names the process acting for bob"
    );
    assert_eq!(c["sub"], user_id(&app, "bob").await);
    assert_eq!(c["username"], "bob");
    // The child's own airlock CLI finds no session.
    assert_ne!(
        std::fs::read_to_string(format!("{}.code", seen.display()))
            .unwrap()
            .trim(),
        "0"
    );
    assert!(
        std::fs::read_to_string(format!("{}.err", seen.display()))
            .unwrap()
            .contains("no session of its own")
    );
    // The audit trail tells the person from the process acting for them.
    let events = app.audit_kinds().await;
    assert!(
        events
            .iter()
            .any(|e| e.event.kind == "token.issued" && e.event.details["act"] == "process:sh")
    );
}

async fn a_session_file_others_can_read_is_refused(backend: Backend) {
    use std::os::unix::fs::PermissionsExt;
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    person(&app, "bob", &["developer"]).await;
    let t = Terminal::new(&app);
    assert_eq!(t.login("bob").await.code, 0);
    for loose in [0o644, 0o640, 0o604] {
        std::fs::set_permissions(t.session_path(), std::fs::Permissions::from_mode(loose)).unwrap();
        let out = t.run(&["token", "--env", "staging"], "").await;
        assert_ne!(out.code, 0, "mode {loose:o}");
        assert!(out.stderr.contains("other users can access it"), "{}", out.stderr);
        assert!(out.stdout.is_empty(), "no token printed");
    }
}

async fn bootstrap_creates_the_first_admin_only_and_a_wrong_password_is_refused(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let t = Terminal::new(&app);
    let bootstrap = |name: &str| {
        let mut c = t.admin(&app);
        c.args(["admin", "bootstrap", "--username", name, "--password-stdin"]);
        c
    };
    let out = run_with_input(bootstrap("alice"), &format!("{PASSWORD}\n")).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = run_with_input(bootstrap("mallory"), &format!("{PASSWORD}\n")).await;
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("an admin already exists"), "{}", out.stderr);
    assert!(people::find_user(&app.state, "mallory").await.is_err());
    let alice = people::find_user(&app.state, "alice").await.unwrap();
    assert_eq!(alice.roles, vec!["admin".to_string()]);
    // A short password is refused with the rule.
    assert!(
        run_with_input(bootstrap("carol"), "short\n")
            .await
            .stderr
            .contains("at least 12")
    );

    let out = t
        .run(
            &["login", "--password", "--username", "alice", "--password-stdin"],
            "not the password\n",
        )
        .await;
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("wrong username or password"),
        "{}",
        out.stderr
    );
    assert!(!t.session_path().exists());
}

crate::both_backends!(
    a_developer_logs_in_gets_a_staging_token_and_logs_out,
    production_destructive_and_unlisted_environments_are_refused,
    exec_gives_the_child_a_token_and_nothing_that_leads_to_the_session,
    a_session_file_others_can_read_is_refused,
    bootstrap_creates_the_first_admin_only_and_a_wrong_password_is_refused,
);
