//! `airlock serve` as a process: its logs never carry a secret or a token, carry no
//! colour codes when redirected to a file, and the files it creates are private
//! whatever the umask.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use secrecy::ExposeSecret;
use serde_json::Value;

use crate::support::{Terminal, TestApp, free_port, mode, run, spawn, wait_until_serving};

/// The server's own logs, at trace level and in JSON, never carry a secret or a token,
/// whatever the callers send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_logs_never_contain_secrets_or_tokens_even_at_trace_level() {
    // Arrange: a real `airlock serve` process logging everything.
    let t = Terminal::without_server();
    let master = airlock::secrets::MasterKey::generate().unwrap();
    let master_b64 = master.to_base64().expose_secret().to_string();
    let db = format!("sqlite://{}/a.db", t.path("data").display());
    let port = free_port();
    let airlock = |args: &[&str]| {
        let mut c = t.cmd(args);
        c.env("AIRLOCK_MASTER_KEY", &master_b64)
            .env("AIRLOCK_LISTEN", format!("127.0.0.1:{port}"))
            .env("AIRLOCK_PUBLIC_URL", format!("http://127.0.0.1:{port}"))
            .env("AIRLOCK_LOG", "trace")
            .arg("--database")
            .arg(&db);
        c
    };
    // Operator commands never migrate (only `serve` and `migrate` do): migrate first.
    run(&mut airlock(&["migrate"])).await.expect_success("migrate");
    let created = run(&mut airlock(&[
        "agent", "create", "--env", "staging", "--name", "logbot", "--scope", "db:read", "--json",
    ]))
    .await;
    assert!(created.status.success(), "{}", created.stderr);
    let creds = created.json();
    let id = creds["client_id"].as_str().unwrap().to_string();
    let secret = creds["client_secret"].as_str().unwrap().to_string();
    let server = spawn(airlock(&["--log-format", "json", "serve"]));
    let base = format!("http://127.0.0.1:{port}");
    wait_until_serving(&base).await;
    let client = reqwest::Client::new();

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
    server.signal(nix::sys::signal::Signal::SIGTERM);
    let out = server.finish_within(Duration::from_secs(20)).await;
    let (status, logs) = (out.status, out.stderr);

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
    let audit = run(&mut airlock(&["audit", "tail", "-n", "100", "--json"]))
        .await
        .stdout;
    assert!(audit.contains("token.issued"));
    assert!(!audit.contains(&secret) && !audit.contains(signature));
}

/// Run `airlock serve` under umask 000 with a data directory that does not exist yet and
/// standard error redirected to a file; call `check` while it serves; return the log.
async fn serve_once(sb: &Terminal, extra_env: &[(&str, &str)], check: impl FnOnce(&Path)) -> String {
    let data = sb.path("data").join("fresh");
    let log_path = sb.path(&format!("serve-{}.log", extra_env.len()));
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut cmd = sb.program("sh");
    cmd.env("AIRLOCK_DATA_DIR", &data)
        .env(
            "AIRLOCK_DATABASE_URL",
            format!("sqlite://{}/airlock.db", data.display()),
        )
        .env("AIRLOCK_LISTEN", "127.0.0.1:0")
        .envs(extra_env.iter().copied())
        // The most permissive umask: whatever Airlock creates must still be private.
        .args(["-c", "umask 000; exec \"$0\" serve"])
        .arg(TestApp::bin())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
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
    let sb = Terminal::without_server();
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
    let sb = Terminal::without_server();
    let log = serve_once(&sb, &[], |_| {}).await;
    assert!(log.contains("starting airlock"), "the log is there:\n{log}");
    assert!(!log.contains('\u{1b}'), "no ANSI escape in a file:\n{log:?}");
    let log = serve_once(&sb, &[("NO_COLOR", "1")], |_| {}).await;
    assert!(
        log.contains("starting airlock") && !log.contains('\u{1b}'),
        "{log:?}"
    );
}
