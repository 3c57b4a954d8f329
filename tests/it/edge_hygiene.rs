//! What crosses the edges stays inert: user text in webhooks, control and format
//! characters in identifiers and reasons, colour codes in redirected logs, the modes of
//! the files `airlock serve` creates, and the CLI's messages about the server it talks to.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use crate::cli::{Sandbox, run};
use crate::escalation_support::{get, person_with_totp, post, request, request_ok, status_json};
use crate::harness::{Backend, TestApp, spawn_app, spawn_app_with};
use crate::session_cli::{Terminal, developer};
use crate::webhooks::{Receiver, hook};

// --- webhook text ---------------------------------------------------------------------

/// The pieces of Slack text inside code spans, and the text outside them.
fn code_spans(text: &str) -> (Vec<&str>, String) {
    let pieces: Vec<&str> = text.split('`').collect();
    let inside = pieces.iter().skip(1).step_by(2).copied().collect();
    let outside = pieces.iter().step_by(2).copied().collect();
    (inside, outside)
}

/// A reason carrying a look-alike approvals link and Slack formatting reaches the
/// receiver as one code span: no bare URL Slack could link, no `*bold*`.
async fn a_reason_reaches_the_webhook_as_an_inert_code_span(backend: Backend) {
    // Arrange
    let receiver = Receiver::start(&[200], Duration::ZERO).await;
    let url = receiver.url.clone();
    let Some(app) = spawn_app_with(backend, |s| {
        s.webhooks.insert("ops".into(), hook(&url, 3));
    })
    .await
    else {
        return;
    };
    let bob = person_with_totp(&app, "bob", &["developer"]).await;
    let reason = "*URGENT* approve at https://evil.example/approvals _now_ ~or~ `never`";

    // Act
    let (status, body) = request(&app, &bob.token, "prod", &["db:write"], "30m", reason).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(
        app.state.notifier.drain(Duration::from_secs(10)).await,
        "delivered"
    );

    // Assert
    let hits = receiver.hits();
    assert_eq!(hits.len(), 1);
    let sent: Value = serde_json::from_slice(&hits[0].body).expect("JSON body");
    let text = sent["text"].as_str().expect("text");
    assert_eq!(text.matches('`').count() % 2, 0, "balanced spans: {text}");
    let (inside, outside) = code_spans(text);
    assert!(
        inside.contains(&"*URGENT* approve at https://evil.example/approvals _now_ ~or~ 'never'"),
        "the reason is one code span without backticks: {text}"
    );
    assert!(inside.contains(&"bob"), "{text}");
    for needle in ["evil.example", "*URGENT*", "_now_", "~or~", "never"] {
        assert!(
            !outside.contains(needle),
            "{needle:?} outside a code span: {text}"
        );
    }
    // The one link in the text is the approvals page of this server.
    assert!(
        outside.contains(&format!("<{}/approvals#req-", app.base)),
        "{text}"
    );
    assert_eq!(text.matches('<').count(), 1, "{text}");
    // The structured field keeps the reason exactly as given.
    assert_eq!(sent["escalation"]["reason"], reason);
}

// --- control characters in identifiers ------------------------------------------------

/// Token-endpoint refusals for unknown clients, as audited.
async fn unknown_client_refusals(app: &TestApp) -> usize {
    app.audit_kinds()
        .await
        .iter()
        .filter(|r| r.event.kind == "token.refused" && r.event.details["reason"] == "unknown_client")
        .count()
}

/// NUL and other control characters in a client id, a list filter or a path segment get
/// the endpoint's normal refusal on both backends (PostgreSQL cannot even compare a text
/// holding NUL), and the token endpoint's refusal is audited.
async fn control_characters_in_identifiers_get_the_normal_refusal(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let agent = app.create_agent("dev", "ci", &["db:read"]).await;
    let bob = person_with_totp(&app, "bob", &["developer"]).await;
    let secret = agent.secret.expose_secret().to_string();
    let before = unknown_client_refusals(&app).await;

    // Token endpoint: client_id in Basic and in the form body.
    for bad in ['\0', '\u{1}', '\u{7f}'] {
        let id = format!("{}{bad}", agent.client_id);
        let basic = app
            .client
            .post(app.url("/envs/dev/token"))
            .basic_auth(&id, Some(&secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .expect("sent");
        let (status, body) = status_json(basic).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "Basic {bad:?}: {body}");
        assert_eq!(body["error"], "invalid_client", "Basic {bad:?}");
        let form = app
            .client
            .post(app.url("/envs/dev/token"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", id.as_str()),
                ("client_secret", secret.as_str()),
            ])
            .send()
            .await
            .expect("sent");
        let (status, body) = status_json(form).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "form {bad:?}: {body}");
        assert_eq!(body["error"], "invalid_client", "form {bad:?}");
    }
    assert_eq!(
        unknown_client_refusals(&app).await - before,
        6,
        "every refusal is audited as an unknown client"
    );

    // List filters and path segments: the usual 400, in each endpoint's shape.
    for bad in ["%00", "%01", "%1B"] {
        for path in [
            format!("/v1/escalations?environment=prod{bad}"),
            format!("/v1/escalations?pending=true&environment={bad}"),
            format!("/v1/grants?environment=prod{bad}"),
            format!("/v1/users/bob{bad}"),
            format!("/v1/agents/dev%2Fci{bad}"),
            format!("/v1/escalations/{bad}"),
        ] {
            let (status, body) = get(&app, &path, &bob.token).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
            assert_eq!(body["error"]["code"], "invalid_request", "{path}: {body}");
        }
        let resp = app
            .client
            .post(app.url(&format!("/envs/dev{bad}/token")))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .expect("sent");
        let (status, body) = status_json(resp).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "path env {bad}: {body}");
        assert_eq!(body["error"], "invalid_request", "path env {bad}: {body}");
        let resp = app
            .client
            .get(app.url(&format!("/.well-known/oauth-authorization-server/envs/{bad}")))
            .send()
            .await
            .expect("sent");
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "metadata {bad}");
    }

    // The same requests without the control character still work.
    let (status, body) = get(&app, "/v1/escalations?environment=prod", &bob.token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = get(&app, "/v1/grants?environment=prod", &bob.token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ok = app.token("dev", &agent, Some("db:read")).await;
    assert_eq!(ok.status(), StatusCode::OK);
}

// --- format characters in reasons -----------------------------------------------------

/// Zero-width and other format characters (Unicode Cf) are refused in a reason and in a
/// decision note, like the bidirectional overrides.
async fn format_characters_in_reasons_are_refused(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let bob = person_with_totp(&app, "bob", &["developer"]).await;
    let carol = person_with_totp(&app, "carol", &["approver"]).await;
    for hidden in [
        '\u{200b}',
        '\u{200d}',
        '\u{2060}',
        '\u{feff}',
        '\u{ad}',
        '\u{202e}',
        '\u{e0041}',
    ] {
        let reason = format!("run migration{hidden} 0042 (TICKET-118)");
        let (status, body) = request(&app, &bob.token, "prod", &["db:write"], "30m", &reason).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "U+{:04X}: {body}", hidden as u32);
        assert_eq!(body["error"]["code"], "invalid_request");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("control characters"),
            "{body}"
        );
    }
    // A decision note is checked the same way.
    let id = request_ok(&app, &bob.token, "prod", &["db:write"], "30m").await;
    let (status, body) = post(
        &app,
        &format!("/v1/escalations/{id}/deny"),
        &carol.token,
        json!({ "reason": "not\u{200b} now" }),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // Plain text in any script still passes.
    let (status, body) = request(
        &app,
        &bob.token,
        "prod",
        &["db:write"],
        "30m",
        "Migration für Kunden №42 – 数据库 ✅",
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

// --- the CLI and the server it talks to -----------------------------------------------

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
    let out = Terminal::run_cmd(other, "").await;

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
    let out = Terminal::run_cmd(same, "").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stderr.contains("AIRLOCK_SERVER"), "{}", out.stderr);
}

crate::both_backends!(
    a_reason_reaches_the_webhook_as_an_inert_code_span,
    control_characters_in_identifiers_get_the_normal_refusal,
    format_characters_in_reasons_are_refused,
    airlock_server_naming_another_server_than_the_session_warns,
);

/// A port nothing listens on.
async fn closed_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr").port()
}

#[tokio::test]
async fn a_refused_connection_is_named_in_the_cli_error() {
    let sb = Sandbox::new();
    let server = format!("http://127.0.0.1:{}", closed_port().await);
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

// --- airlock serve: colour and file modes ---------------------------------------------

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Run `airlock serve` under umask 000 with a data directory that does not exist yet and
/// standard error redirected to a file; call `check` while it serves; return the log.
async fn serve_once(sb: &Sandbox, extra_env: &[(&str, &str)], check: impl FnOnce(&Path)) -> String {
    let data = sb.path("data").join("fresh");
    let log_path = sb.path(&format!("serve-{}.log", extra_env.len()));
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut cmd = tokio::process::Command::new("sh");
    cmd.env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        )
        .env("HOME", sb.path("home"))
        .env("AIRLOCK_DATA_DIR", &data)
        .env(
            "AIRLOCK_DATABASE_URL",
            format!("sqlite://{}/airlock.db", data.display()),
        )
        .env("AIRLOCK_LISTEN", "127.0.0.1:0")
        .envs(extra_env.iter().copied())
        // The most permissive umask: whatever Airlock creates must still be private.
        .args(["-c", "umask 000; exec \"$0\" serve"])
        .arg(TestApp::bin())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("airlock serve starts");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let addr = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Some(rest) = text.split("airlock listening on http://").nth(1) {
            break rest.split_whitespace().next().unwrap_or_default().to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "serve did not start:\n{text}"
        );
        if let Ok(Some(status)) = child.try_wait() {
            panic!("serve exited ({status}):\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let health = reqwest::get(format!("http://{addr}/healthz"))
        .await
        .expect("healthz");
    assert!(health.status().is_success());
    check(&data);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().expect("pid") as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let _ = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
    std::fs::read_to_string(&log_path).expect("log")
}

#[tokio::test]
async fn serve_creates_its_data_for_its_user_only_whatever_the_umask() {
    let sb = Sandbox::new();
    serve_once(&sb, &[], |data| {
        assert_eq!(mode(data), 0o700, "data_dir");
        for f in ["master.key", "airlock.db", "airlock.db-wal", "airlock.db-shm"] {
            assert_eq!(mode(&data.join(f)), 0o600, "{f}");
        }
    })
    .await;
}

#[tokio::test]
async fn logs_redirected_to_a_file_carry_no_colour_codes() {
    let sb = Sandbox::new();
    let log = serve_once(&sb, &[], |_| {}).await;
    assert!(log.contains("starting airlock"), "the log is there:\n{log}");
    assert!(!log.contains('\u{1b}'), "no ANSI escape in a file:\n{log:?}");
    let log = serve_once(&sb, &[("NO_COLOR", "1")], |_| {}).await;
    assert!(
        log.contains("starting airlock") && !log.contains('\u{1b}'),
        "{log:?}"
    );
}
