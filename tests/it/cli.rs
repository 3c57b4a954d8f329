//! The `airlock` binary as an operator and an agent use it: a real subprocess with a
//! clean environment, against the real server and database.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio::process::Command;

use crate::harness::{Backend, TestAgent, TestApp, spawn_app, spawn_app_with};

/// No CLI process may outlive this; a hung child fails the test instead of the suite.
const DEADLINE: Duration = Duration::from_secs(60);
/// For commands that must fail at start-up: a server that starts instead would hang.
const QUICKLY: Duration = Duration::from_secs(20);

// --- running the binary ------------------------------------------------------------

/// A private place for CLI processes: HOME, data dir, TMPDIR and files the tests write.
pub(crate) struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    pub(crate) fn new() -> Sandbox {
        let dir = tempfile::tempdir().expect("temp dir");
        for sub in ["home", "data", "tmp", "out"] {
            std::fs::create_dir(dir.path().join(sub)).expect("sandbox dir");
        }
        Sandbox { dir }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Where child processes put temporary files (the runner's token directory).
    fn tmp(&self) -> PathBuf {
        self.path("tmp")
    }

    /// Where scripts run by `agent run` write what they saw.
    fn out(&self, name: &str) -> PathBuf {
        self.path("out").join(name)
    }

    /// `airlock` with nothing inherited but PATH.
    pub(crate) fn airlock(&self) -> Command {
        let mut cmd = Command::new(TestApp::bin());
        cmd.env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
            )
            .env("HOME", self.path("home"))
            .env("USER", "tester")
            .env("TMPDIR", self.tmp())
            .env("AIRLOCK_DATA_DIR", self.path("data"))
            .env("OUT", self.path("out"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// `airlock --database URL` with the app's master key: store-direct commands.
    fn admin(&self, app: &TestApp) -> Command {
        let mut cmd = self.airlock();
        cmd.env("AIRLOCK_MASTER_KEY", app.master_key_b64())
            .arg("--database")
            .arg(&app.db.url);
        cmd
    }

    /// A file holding `secret`, mode 0600.
    fn secret_file(&self, name: &str, secret: &str, mode: u32) -> PathBuf {
        let path = self.path(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .expect("secret file");
        std::io::Write::write_all(&mut f, format!("{secret}\n").as_bytes()).expect("write secret");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    /// Token directories the runner left behind in TMPDIR.
    fn leftover_token_dirs(&self) -> Vec<String> {
        std::fs::read_dir(self.tmp())
            .expect("read TMPDIR")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("airlock-token-"))
            .collect()
    }
}

/// What a finished CLI process left.
pub(crate) struct Run {
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    /// Assert the exit code, showing the output when it differs.
    pub(crate) fn expect_code(&self, code: i32, what: &str) -> &Run {
        assert_eq!(
            self.code,
            Some(code),
            "{what}: exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    fn expect_success(&self, what: &str) -> &Run {
        self.expect_code(0, what)
    }

    fn expect_failure(&self, what: &str) -> &Run {
        assert!(
            self.code.is_some_and(|c| c != 0),
            "{what}: expected a non-zero exit, got {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code,
            self.stdout,
            self.stderr
        );
        self
    }

    pub(crate) fn stderr_has(&self, needle: &str, what: &str) -> &Run {
        assert!(
            self.stderr.contains(needle),
            "{what}: stderr should mention {needle:?}\n--- stderr\n{}",
            self.stderr
        );
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }

    /// A failure that is a clean message, not a crash.
    pub(crate) fn no_panic(&self) -> &Run {
        for bad in ["panicked", "RUST_BACKTRACE", "stack backtrace"] {
            assert!(
                !self.stderr.contains(bad),
                "stderr shows a panic:\n{}",
                self.stderr
            );
        }
        self
    }
}

/// Run to completion within `limit`.
async fn run_within(cmd: &mut Command, limit: Duration) -> Run {
    let child = cmd.spawn().expect("airlock starts");
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("airlock still running after {limit:?}: {cmd:?}"))
        .expect("airlock output");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub(crate) async fn run(cmd: &mut Command) -> Run {
    run_within(cmd, DEADLINE).await
}

/// Register an agent with `airlock agent create --json`.
async fn cli_create(sb: &Sandbox, app: &TestApp, env: &str, name: &str, scopes: &[&str]) -> TestAgent {
    let mut cmd = sb.admin(app);
    cmd.args(["agent", "create", "--env", env, "--name", name, "--json"]);
    for s in scopes {
        cmd.args(["--scope", s]);
    }
    let out = run(&mut cmd).await;
    out.expect_success("agent create");
    let v = out.json();
    TestAgent {
        client_id: v["client_id"].as_str().expect("client_id").to_string(),
        secret: SecretString::from(v["client_secret"].as_str().expect("client_secret").to_string()),
    }
}

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

/// Three base64url parts, the middle one a JSON object: the claims.
fn jwt_claims(token: &str) -> Value {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT has three parts: {token:?}");
    let payload = URL_SAFE_NO_PAD.decode(parts[1]).expect("base64url payload");
    serde_json::from_slice(&payload).expect("JSON claims")
}

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
    let sb = Sandbox::new();

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
    let sb = Sandbox::new();
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

    cli_create(&sb, &app, "dev", "twin", &["db:read"]).await;
    run(&mut create(&[
        "--env", "dev", "--name", "twin", "--scope", "db:write",
    ]))
    .await
    .expect_code(1, "duplicate name")
    .stderr_has("already exists", "duplicate name")
    .no_panic();
    // The same name in another environment is a different agent.
    cli_create(&sb, &app, "staging", "twin", &["db:read"]).await;

    let agents = app.store().agents(None).await.unwrap();
    assert_eq!(agents.len(), 2, "refusals created nothing");
}

// --- fetching tokens ----------------------------------------------------------------

async fn agent_token_prints_a_jwt_from_a_secret_file_or_the_environment(backend: Backend) {
    // Arrange
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let sb = Sandbox::new();
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
    let claims = jwt_claims(token);
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
    assert_eq!(
        jwt_claims(body["access_token"].as_str().unwrap())["scope"],
        "db:read"
    );
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

    let issued = app
        .audit_kinds()
        .await
        .into_iter()
        .filter(|e| e.event.kind == "token.issued")
        .count();
    assert_eq!(issued, 3);
}

async fn agent_token_exits_77_when_refused_and_never_echoes_the_secret(backend: Backend) {
    // Arrange
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let sb = Sandbox::new();
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
    let sb = Sandbox::new();
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
    let sb = Sandbox::new();
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
    let sb = Sandbox::new();
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
    let claims = jwt_claims(&token);
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
    let sb = Sandbox::new();
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
    let sb = Sandbox::new();
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
    let claims = jwt_claims(&second);
    assert_eq!(claims["client_id"], agent.client_id.as_str());
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        3
    );
    let issued = app
        .audit_kinds()
        .await
        .into_iter()
        .filter(|e| e.event.kind == "token.issued")
        .count();
    assert!(issued >= 2, "the refresh is a real issuance: {issued}");
}

async fn agent_run_forwards_sigterm_and_sigint_to_the_child(backend: Backend) {
    // Arrange
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let sb = Sandbox::new();
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
    let sb = Sandbox::new();
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

// --- audit --------------------------------------------------------------------------

/// A server with some history: 4 key.created, 2 agent.created, 2 token.issued,
/// 1 cross_environment_attempt: 9 events.
async fn app_with_history(backend: Backend) -> Option<(TestApp, Sandbox)> {
    let app = spawn_app(backend).await?;
    let sb = Sandbox::new();
    let a = cli_create(&sb, &app, "staging", "one", &["db:read"]).await;
    cli_create(&sb, &app, "dev", "two", &["db:read"]).await;
    assert_eq!(app.token("staging", &a, None).await.status(), StatusCode::OK);
    assert_eq!(app.token("staging", &a, None).await.status(), StatusCode::OK);
    assert_eq!(
        app.token("dev", &a, None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.audit_kinds().await.len(), 9, "the history the tests assume");
    Some((app, sb))
}

async fn audit_verify(sb: &Sandbox, app: &TestApp) -> Run {
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

// --- configuration and start-up -----------------------------------------------------

#[tokio::test]
async fn config_check_reports_every_problem_naming_its_key() {
    // Arrange
    let sb = Sandbox::new();
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
    let sb = Sandbox::new();
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
    let sb = Sandbox::new();
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
    let sb = Sandbox::new();
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
    let sb = Sandbox::new();
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
    let mut bootstrap = airlock(&["admin", "bootstrap", "--username", "root", "--password-stdin"]);
    bootstrap.stdin(Stdio::piped());
    let mut child = bootstrap.spawn().expect("airlock starts");
    let mut stdin = child.stdin.take().expect("stdin");
    tokio::io::AsyncWriteExt::write_all(&mut stdin, b"a long enough password\n")
        .await
        .expect("password");
    drop(stdin);
    let out = tokio::time::timeout(QUICKLY, child.wait_with_output())
        .await
        .expect("bootstrap finishes")
        .expect("output");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("airlock migrate"));
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
    let sb = Sandbox::new();
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

// --- healthcheck --------------------------------------------------------------------

#[tokio::test]
async fn healthcheck_exits_0_for_a_live_server_and_1_once_it_has_stopped() {
    // Arrange
    let app = spawn_app(Backend::Sqlite).await.expect("sqlite always runs");
    let base = app.base.clone();
    let sb = Sandbox::new();

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
    agents_are_managed_from_the_cli_and_the_server_honours_every_change,
    agent_create_refuses_bad_input_with_a_helpful_message,
    agent_token_prints_a_jwt_from_a_secret_file_or_the_environment,
    agent_token_exits_77_when_refused_and_never_echoes_the_secret,
    agent_run_gives_the_child_a_token_and_never_the_secret,
    agent_run_exits_like_the_child_including_death_by_signal,
    agent_run_rewrites_the_token_file_before_the_token_expires,
    agent_run_forwards_sigterm_and_sigint_to_the_child,
    a_refused_runner_exits_77_and_never_starts_the_child,
    audit_verify_passes_on_an_intact_trail_and_tail_shows_the_latest,
    audit_verify_names_an_edited_event,
    audit_verify_finds_a_deleted_event,
    audit_verify_finds_reordered_events,
    audit_verify_finds_events_removed_from_the_end,
    a_wrong_master_key_stops_serve_and_agent_commands,
);
