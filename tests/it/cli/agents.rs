//! The agent commands of the CLI: `agent create|list|show|...` managing agents, and an
//! agent fetching its token (`agent token`) or running its program under one
//! (`agent run`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};

use crate::support::{
    Backend, Terminal, TestAgent, TestApp, claims, events, free_port, run, spawn_app, spawn_app_with,
};

/// How long the runner may take to react (a child starting, a signal).
const QUICKLY: Duration = Duration::from_secs(20);

/// The `airlock agent token|run` identity arguments.
fn fetch_args<'a>(app: &'a TestApp, env: &'a str, agent: &'a TestAgent) -> [&'a str; 6] {
    [
        "--server",
        app.base.as_str(),
        "--env",
        env,
        "--client-id",
        agent.client_id.as_str(),
    ]
}

// --- agent management ---------------------------------------------------------------

/// A change made by another process (the CLI) reaches the server's agent cache within
/// `AGENT_CACHE_POLL`; poll for the expected answer and fail if it takes longer than the
/// cache's hard TTL.
async fn settles_to(app: &TestApp, agent: &TestAgent, expected: StatusCode, what: &str) {
    let start = std::time::Instant::now();
    loop {
        let status = app.token("staging", agent, None).await.status();
        if status == expected {
            return;
        }
        assert!(
            start.elapsed() <= airlock::store::AGENT_CACHE_TTL,
            "{what}: still {status} after {:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn agents_are_managed_from_the_cli_and_the_server_honours_every_change(backend: Backend) {
    // Arrange
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let sb = Terminal::without_server();

    // Act: create
    let mut cmd = sb.admin(&app);
    cmd.args([
        "agent", "create", "--env", "staging", "--name", "ci-bot", "--scope", "db:read", "--scope",
        "db:write", "--json",
    ]);
    let out = run(&mut cmd).await;

    // Assert
    out.expect_success("agent create");
    let created = out.json();
    let client_id = created["client_id"].as_str().expect("client_id").to_string();
    let secret = created["client_secret"]
        .as_str()
        .expect("client_secret")
        .to_string();
    assert!(client_id.starts_with("agt_"), "{client_id}");
    assert!(secret.starts_with("airlock_secret_"), "{secret}");
    assert_eq!(created["environment"], "staging");
    assert_eq!(created["scopes"], serde_json::json!(["db:read", "db:write"]));
    let agent = TestAgent {
        client_id: client_id.clone(),
        secret: SecretString::from(secret.clone()),
    };
    assert_eq!(app.token("staging", &agent, None).await.status(), StatusCode::OK);

    // list
    let out = run(sb.admin(&app).args(["agent", "list", "--json"])).await;
    out.expect_success("agent list");
    let list = out.json();
    let list = list.as_array().expect("array");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["client_id"], client_id.as_str());
    assert_eq!(list[0]["environment"], "staging");
    assert_eq!(list[0]["name"], "ci-bot");
    assert_eq!(list[0]["disabled"], false);
    assert!(!out.stdout.contains(&secret), "list never shows the secret");
    assert!(!out.stdout.contains("secret_hash"), "list never shows the hash");
    let out = run(sb.admin(&app).args(["agent", "list", "--env", "dev", "--json"])).await;
    out.expect_success("agent list --env dev");
    assert_eq!(out.json(), serde_json::json!([]));

    // show, by client id and by ENV/NAME
    for reference in [client_id.as_str(), "staging/ci-bot"] {
        let out = run(sb.admin(&app).args(["agent", "show", reference, "--json"])).await;
        out.expect_success("agent show");
        let shown = out.json();
        assert_eq!(shown["client_id"], client_id.as_str(), "show {reference}");
        assert_eq!(shown["name"], "ci-bot", "show {reference}");
        assert!(!out.stdout.contains(&secret));
    }
    run(sb.admin(&app).args(["agent", "show", "dev/ci-bot"]))
        .await
        .expect_failure("show of an agent that does not exist")
        .stderr_has("no agent", "show unknown");

    // disable, then enable
    let out = run(sb
        .admin(&app)
        .args(["agent", "disable", client_id.as_str(), "--json"]))
    .await;
    out.expect_success("agent disable");
    assert_eq!(out.json()["disabled"], true);
    settles_to(
        &app,
        &agent,
        StatusCode::UNAUTHORIZED,
        "a disabled agent gets no token",
    )
    .await;
    run(sb.admin(&app).args(["agent", "enable", "staging/ci-bot"]))
        .await
        .expect_success("agent enable");
    settles_to(&app, &agent, StatusCode::OK, "enabled again").await;

    // rotate-secret
    let out = run(sb
        .admin(&app)
        .args(["agent", "rotate-secret", client_id.as_str(), "--json"]))
    .await;
    out.expect_success("rotate-secret");
    let rotated = out.json();
    let new_secret = rotated["client_secret"].as_str().expect("new secret").to_string();
    assert_eq!(rotated["client_id"], client_id.as_str());
    assert_ne!(new_secret, secret);
    settles_to(
        &app,
        &agent,
        StatusCode::UNAUTHORIZED,
        "the old secret stops working",
    )
    .await;
    let renewed = TestAgent {
        client_id: client_id.clone(),
        secret: SecretString::from(new_secret.clone()),
    };
    assert_eq!(
        app.token("staging", &renewed, None).await.status(),
        StatusCode::OK
    );

    // The audit trail names the CLI user and holds no secret.
    let events = app.audit_kinds().await;
    for kind in [
        "agent.created",
        "agent.disabled",
        "agent.enabled",
        "agent.secret_rotated",
    ] {
        let e = events
            .iter()
            .find(|e| e.event.kind == kind)
            .unwrap_or_else(|| panic!("{kind} is audited"));
        assert_eq!(e.event.actor, "cli:tester", "{kind}");
        assert!(e.event.actor.starts_with("cli:"));
        assert_eq!(e.event.subject.as_deref(), Some(client_id.as_str()), "{kind}");
        assert_eq!(e.event.environment.as_deref(), Some("staging"), "{kind}");
    }
    let all = serde_json::to_string(&events).unwrap();
    assert!(!all.contains(&secret), "no secret in the audit trail");
    assert!(!all.contains(&new_secret), "no rotated secret in the audit trail");
}

async fn agent_create_refuses_bad_input_with_a_helpful_message(backend: Backend) {
    // Arrange
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let sb = Terminal::without_server();
    let create = |extra: &[&str]| {
        let mut cmd = sb.admin(&app);
        cmd.args(["agent", "create"]).args(extra);
        cmd
    };

    // Act + Assert
    run(&mut create(&["--env", "qa", "--name", "a", "--scope", "db:read"]))
        .await
        .expect_code(1, "unknown environment")
        .stderr_has("unknown environment \"qa\"", "unknown environment")
        .stderr_has("dev, prod, staging", "lists the configured ones");
    run(&mut create(&[
        "--env", "dev", "--name", "a", "--scope", "db:nuke",
    ]))
    .await
    .expect_code(1, "unknown scope")
    .stderr_has("scope \"db:nuke\" is not offered", "unknown scope")
    .stderr_has("db:read", "lists the known scopes");
    run(&mut create(&[
        "--env",
        "dev",
        "--name",
        "a",
        "--scope",
        "db:read",
        "--scope",
        "db:drop",
        "--default-scope",
        "db:drop",
    ]))
    .await
    .expect_code(1, "destructive default scope")
    .stderr_has("default scope \"db:drop\" is destructive", "destructive default");
    run(&mut create(&["--env", "dev", "--name", "a"]))
        .await
        .expect_code(2, "no --scope is a usage error");

    sb.agent_create(&app, "dev", "twin", &["db:read"]).await;
    run(&mut create(&[
        "--env", "dev", "--name", "twin", "--scope", "db:write",
    ]))
    .await
    .expect_code(1, "duplicate name")
    .stderr_has("already exists", "duplicate name")
    .no_panic();
    // The same name in another environment is a different agent.
    sb.agent_create(&app, "staging", "twin", &["db:read"]).await;

    let agents = app.store().agents(None).await.unwrap();
    assert_eq!(agents.len(), 2, "refusals created nothing");
}

// --- fetching tokens ----------------------------------------------------------------

async fn agent_token_prints_a_jwt_from_a_secret_file_or_the_environment(backend: Backend) {
    // Arrange
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let sb = Terminal::without_server();
    let agent = app
        .create_agent("staging", "fetcher", &["db:read", "db:write"])
        .await;
    let file = sb.secret_file("secret", agent.secret.expose_secret(), 0o600);

    // Act: from the file
    let out = run(sb
        .airlock()
        .args(["agent", "token"])
        .args(fetch_args(&app, "staging", &agent))
        .arg("--secret-file")
        .arg(&file))
    .await;

    // Assert
    out.expect_success("agent token --secret-file");
    let token = out.stdout.trim();
    let claims = claims(token);
    assert_eq!(claims["client_id"], agent.client_id.as_str());
    assert_eq!(claims["aud"], "airlock:staging");
    assert_eq!(claims["scope"], "db:read db:write");
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);

    // From AIRLOCK_CLIENT_SECRET, with --json and a scope.
    let out = run(sb
        .airlock()
        .env("AIRLOCK_CLIENT_SECRET", agent.secret.expose_secret())
        .args(["agent", "token"])
        .args(fetch_args(&app, "staging", &agent))
        .args(["--scope", "db:read", "--json"]))
    .await;
    out.expect_success("agent token from the environment");
    let body = out.json();
    let token_claims = crate::support::claims(body["access_token"].as_str().unwrap());
    assert_eq!(token_claims["scope"], "db:read");
    assert_eq!(body["expires_in"], 600);
    assert_eq!(body["scope"], "db:read");
    assert_eq!(body["token_type"], "Bearer");

    // A file others can read still works, with a warning.
    let loose = sb.secret_file("loose", agent.secret.expose_secret(), 0o644);
    run(sb
        .airlock()
        .args(["agent", "token"])
        .args(fetch_args(&app, "staging", &agent))
        .arg("--secret-file")
        .arg(&loose))
    .await
    .expect_success("loose secret file")
    .stderr_has("readable by other users", "loose secret file");

    let issued = events(&app, "token.issued").await.len();
    assert_eq!(issued, 3);
}

async fn agent_token_exits_77_when_refused_and_never_echoes_the_secret(backend: Backend) {
    // Arrange
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let sb = Terminal::without_server();
    let agent = app
        .create_agent("staging", "fetcher", &["db:read", "db:drop"])
        .await;
    let wrong = "airlock_secret_wrong-but-plausible";

    // Act
    let out = run(sb
        .airlock()
        .env("AIRLOCK_CLIENT_SECRET", wrong)
        .args(["agent", "token"])
        .args(fetch_args(&app, "staging", &agent)))
    .await;

    // Assert
    out.expect_code(77, "wrong secret")
        .stderr_has("invalid_client", "wrong secret")
        .no_panic();
    assert!(!out.stderr.contains(wrong), "the secret is never echoed");
    assert!(out.stdout.is_empty(), "no token printed: {}", out.stdout);

    // Another environment's endpoint refuses the agent the same way.
    run(sb
        .airlock()
        .env("AIRLOCK_CLIENT_SECRET", agent.secret.expose_secret())
        .args(["agent", "token"])
        .args(fetch_args(&app, "prod", &agent)))
    .await
    .expect_code(77, "agent of another environment")
    .stderr_has("invalid_client", "other environment");

    // A destructive scope without a grant is refused too.
    run(sb
        .airlock()
        .env("AIRLOCK_CLIENT_SECRET", agent.secret.expose_secret())
        .args(["agent", "token"])
        .args(fetch_args(&app, "staging", &agent))
        .args(["--scope", "db:drop"]))
    .await
    .expect_code(77, "destructive scope")
    .stderr_has("access_denied", "destructive scope")
    .stderr_has("airlock escalate", "destructive scope");
}

#[tokio::test]
async fn agent_token_exits_69_when_the_server_cannot_be_reached() {
    let sb = Terminal::without_server();
    let out = run(sb
        .airlock()
        .env("AIRLOCK_CLIENT_SECRET", "airlock_secret_x")
        .args([
            "agent",
            "token",
            "--server",
            "http://127.0.0.1:1",
            "--env",
            "dev",
            "--client-id",
            "agt_00000000000000000000000000000000",
        ]))
    .await;
    out.expect_code(69, "unreachable")
        .stderr_has("cannot reach", "unreachable")
        .no_panic();
    assert!(!out.stderr.contains("airlock_secret_x"));
}

#[tokio::test]
async fn secrets_are_never_accepted_as_command_line_arguments() {
    let sb = Terminal::without_server();
    let base = [
        "agent",
        "token",
        "--server",
        "http://127.0.0.1:1",
        "--env",
        "dev",
        "--client-id",
        "agt_00000000000000000000000000000000",
    ];

    // Neither a file nor the environment variable.
    run(sb.airlock().args(base))
        .await
        .expect_code(1, "no secret at all")
        .stderr_has("never accepted as command-line arguments", "no secret");

    // Flags that look like they take a secret are usage errors, for token and run alike.
    for flag in ["--secret", "--client-secret", "--password"] {
        run(sb.airlock().args(base).args([flag, "xyz"]))
            .await
            .expect_code(2, flag);
        let mut cmd = sb.airlock();
        cmd.args(["agent", "run"])
            .args(&base[2..])
            .args([flag, "xyz", "--", "true"]);
        run(&mut cmd).await.expect_code(2, flag);
    }
}

// --- agent run ----------------------------------------------------------------------

async fn agent_run_gives_the_child_a_token_and_never_the_secret(backend: Backend) {
    // Arrange
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let sb = Terminal::without_server();
    let agent = app.create_agent("staging", "runner", &["db:read"]).await;
    let script = r#"
        env > "$OUT/env.txt"
        cat "$AIRLOCK_TOKEN_FILE" > "$OUT/file.txt"
        stat -c %a "$AIRLOCK_TOKEN_FILE" > "$OUT/mode.txt"
        stat -c %a "$(dirname "$AIRLOCK_TOKEN_FILE")" > "$OUT/dirmode.txt"
        exit 7
    "#;

    // Act
    let out = run(sb
        .airlock()
        .env("AIRLOCK_CLIENT_SECRET", agent.secret.expose_secret())
        .args(["agent", "run"])
        .args(fetch_args(&app, "staging", &agent))
        .args(["--", "sh", "-c", script]))
    .await;

    // Assert
    out.expect_code(7, "the child's exit status is the runner's");
    let env = std::fs::read_to_string(sb.out("env.txt")).expect("the child ran");
    let var = |name: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .map(str::to_string)
    };
    let token = var("AIRLOCK_TOKEN").expect("AIRLOCK_TOKEN");
    let claims = claims(&token);
    assert_eq!(claims["client_id"], agent.client_id.as_str());
    assert_eq!(claims["aud"], "airlock:staging");
    assert_eq!(var("AIRLOCK_ENV").as_deref(), Some("staging"));
    assert_eq!(var("AIRLOCK_CLIENT_SECRET"), None, "the secret is removed");
    assert!(
        !env.contains(agent.secret.expose_secret()),
        "the secret appears nowhere in the child's environment"
    );
    let token_file = PathBuf::from(var("AIRLOCK_TOKEN_FILE").expect("AIRLOCK_TOKEN_FILE"));
    assert!(token_file.starts_with(sb.tmp()), "{}", token_file.display());
    assert_eq!(std::fs::read_to_string(sb.out("file.txt")).unwrap(), token);
    assert_eq!(std::fs::read_to_string(sb.out("mode.txt")).unwrap().trim(), "600");
    assert_eq!(
        std::fs::read_to_string(sb.out("dirmode.txt")).unwrap().trim(),
        "700"
    );
    let dir = token_file.parent().unwrap();
    assert!(!dir.exists(), "the token directory is removed: {}", dir.display());
    assert_eq!(sb.leftover_token_dirs(), Vec::<String>::new());
}

async fn agent_run_exits_like_the_child_including_death_by_signal(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let sb = Terminal::without_server();
    let agent = app.create_agent("dev", "runner", &["db:read"]).await;
    for (script, expected) in [("exit 0", 0), ("exit 3", 3), ("kill -9 $$", 128 + 9)] {
        run(sb
            .airlock()
            .env("AIRLOCK_CLIENT_SECRET", agent.secret.expose_secret())
            .args(["agent", "run"])
            .args(fetch_args(&app, "dev", &agent))
            .args(["--", "sh", "-c", script]))
        .await
        .expect_code(expected, script);
    }
    assert_eq!(sb.leftover_token_dirs(), Vec::<String>::new());
}

async fn agent_run_rewrites_the_token_file_before_the_token_expires(backend: Backend) {
    // Arrange: dev tokens live 3 seconds, so the runner refreshes after 2.
    let Some(app) = spawn_app_with(backend, |s| {
        let e = s.environments.get_mut("dev").unwrap();
        e.default_ttl = Duration::from_secs(3);
    })
    .await
    else {
        return;
    };
    let sb = Terminal::without_server();
    let agent = app.create_agent("dev", "long-job", &["db:read"]).await;
    let secret = sb.secret_file("secret", agent.secret.expose_secret(), 0o600);
    // Poll for up to 4 s (the token lives 3): the file must change before the old token dies.
    let script = r#"
        first=$(cat "$AIRLOCK_TOKEN_FILE")
        [ "$first" = "$AIRLOCK_TOKEN" ] && echo FIRST-IS-ENV
        i=0
        while [ $i -lt 40 ]; do
            second=$(cat "$AIRLOCK_TOKEN_FILE")
            [ -n "$second" ] && [ "$second" != "$first" ] && break
            sleep 0.1
            i=$((i+1))
        done
        if [ -n "$second" ] && [ "$second" != "$first" ]; then echo REFRESHED; else echo STALE; fi
        printf %s "$second" > "$OUT/second.txt"
    "#;

    // Act
    let out = run(sb
        .airlock()
        .args(["agent", "run"])
        .args(fetch_args(&app, "dev", &agent))
        .arg("--secret-file")
        .arg(&secret)
        .args(["--", "sh", "-c", script]))
    .await;

    // Assert
    out.expect_success("runner");
    assert!(out.stdout.contains("FIRST-IS-ENV"), "{}", out.stdout);
    assert!(out.stdout.contains("REFRESHED"), "{}\n{}", out.stdout, out.stderr);
    let second = std::fs::read_to_string(sb.out("second.txt")).unwrap();
    let claims = claims(&second);
    assert_eq!(claims["client_id"], agent.client_id.as_str());
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        3
    );
    let issued = events(&app, "token.issued").await.len();
    assert!(issued >= 2, "the refresh is a real issuance: {issued}");
}

async fn agent_run_forwards_sigterm_and_sigint_to_the_child(backend: Backend) {
    // Arrange
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let sb = Terminal::without_server();
    let agent = app.create_agent("dev", "daemon", &["db:read"]).await;
    use nix::sys::signal::Signal;
    for (signal, name, code) in [(Signal::SIGTERM, "TERM", 42), (Signal::SIGINT, "INT", 43)] {
        let marker = sb.out(&format!("started-{name}"));
        let script = format!(
            r#"trap "exit {code}" {name}; touch "{}"; while true; do sleep 0.1; done"#,
            marker.display()
        );
        let mut cmd = sb.airlock();
        cmd.env("AIRLOCK_CLIENT_SECRET", agent.secret.expose_secret())
            .args(["agent", "run"])
            .args(fetch_args(&app, "dev", &agent))
            .args(["--", "sh", "-c", &script]);
        let child = cmd.spawn().expect("runner starts");
        let pid = child.id().expect("pid");
        wait_for_file(&marker).await;

        // Act
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).expect("signal sent");
        let out = tokio::time::timeout(QUICKLY, child.wait_with_output())
            .await
            .expect("the runner exits after the child")
            .expect("output");

        // Assert
        assert_eq!(
            out.status.code(),
            Some(code),
            "SIG{name} reached the child's trap\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(sb.leftover_token_dirs(), Vec::<String>::new());
}

async fn wait_for_file(path: &Path) {
    let deadline = tokio::time::Instant::now() + QUICKLY;
    while !path.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn a_refused_runner_exits_77_and_never_starts_the_child(backend: Backend) {
    // Arrange
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let sb = Terminal::without_server();
    let agent = app.create_agent("staging", "runner", &["db:read"]).await;

    // Act
    let out = run(sb
        .airlock()
        .env("AIRLOCK_CLIENT_SECRET", "airlock_secret_wrong")
        .args(["agent", "run"])
        .args(fetch_args(&app, "staging", &agent))
        .args(["--", "sh", "-c", r#"touch "$OUT/ran""#]))
    .await;

    // Assert
    out.expect_code(77, "refused runner")
        .stderr_has("invalid_client", "refused runner");
    assert!(!sb.out("ran").exists(), "the child never started");
    assert_eq!(sb.leftover_token_dirs(), Vec::<String>::new());
}

#[tokio::test]
async fn a_refused_connection_is_named_in_the_cli_error() {
    let sb = Terminal::without_server();
    let server = format!("http://127.0.0.1:{}", free_port());
    let out = run(sb
        .airlock()
        .env("AIRLOCK_CLIENT_SECRET", "airlock_secret_x")
        .args([
            "agent",
            "token",
            "--server",
            &server,
            "--env",
            "dev",
            "--client-id",
            "agt_00000000000000000000000000000000",
        ]))
    .await;
    out.expect_code(69, "unreachable")
        .stderr_has(&format!("cannot reach Airlock at {server}"), "unreachable")
        .stderr_has("Connection refused", "the cause")
        .no_panic();
    assert!(!out.stderr.contains("airlock_secret_x"));
    let health = run(sb.airlock().args(["healthcheck", "--url", &server])).await;
    health
        .expect_code(1, "healthcheck")
        .stderr_has("Connection refused", "the cause");
}

crate::both_backends!(
    agents_are_managed_from_the_cli_and_the_server_honours_every_change,
    agent_create_refuses_bad_input_with_a_helpful_message,
    agent_token_prints_a_jwt_from_a_secret_file_or_the_environment,
    agent_token_exits_77_when_refused_and_never_echoes_the_secret,
    agent_run_gives_the_child_a_token_and_never_the_secret,
    agent_run_exits_like_the_child_including_death_by_signal,
    agent_run_rewrites_the_token_file_before_the_token_expires,
    agent_run_forwards_sigterm_and_sigint_to_the_child,
    a_refused_runner_exits_77_and_never_starts_the_child,
);
