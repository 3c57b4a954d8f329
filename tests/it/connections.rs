//! Connections and shutdown: slow headers are cut off, the connection cap holds, a
//! SIGTERM answers `?wait=` long-polls at once; and every `airlock ...` command that an
//! answer suggests runs as printed.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Parser;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::escalation_support::{
    PASSWORD, approve, exchange, get, person_with_totp, post, request_ok, show, status_json, step_up,
};
use crate::harness::{Backend, TestApp, spawn_app, spawn_app_with};

// --- connections ---------------------------------------------------------------------

/// Read until the server closes the connection (EOF or reset); `None` if it is still
/// open after `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut seen = Vec::new();
    let read_all = async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(limit, read_all).await.ok().map(|_| seen)
}

async fn a_connection_that_never_finishes_its_headers_is_closed(backend: Backend) {
    // Arrange: a 1 s header timeout.
    let Some(app) = spawn_app_with(backend, |s| {
        s.limits.header_read_timeout = Duration::from_secs(1);
    })
    .await
    else {
        return;
    };
    let addr = app.base.trim_start_matches("http://").to_string();

    // Act: one client sends half a request and stalls; another connects and sends nothing.
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: airlock\r\nX-Slow: ")
        .await
        .unwrap();
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    let started = Instant::now();

    // Assert: the server closes both well within a few seconds, and never answers 200.
    let seen = closed_within(&mut slow, Duration::from_secs(6))
        .await
        .expect("the server closed the slow connection");
    assert!(
        !String::from_utf8_lossy(&seen).contains(" 200 "),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    closed_within(&mut silent, Duration::from_secs(6))
        .await
        .expect("the server closed the silent connection");
    assert!(started.elapsed() < Duration::from_secs(8));
    // A client that sends its request in time is served as before.
    let ok = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
}

async fn at_the_connection_cap_a_new_connection_waits_until_one_closes(backend: Backend) {
    // Arrange: a cap of 4, all taken by idle connections (the header timeout is long, so
    // they stay open for the whole test).
    let Some(app) = spawn_app_with(backend, |s| {
        s.limits.max_connections = 4;
        s.limits.header_read_timeout = Duration::from_secs(60);
    })
    .await
    else {
        return;
    };
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(&addr).await.unwrap());
    }

    // Act: a fifth client asks for /healthz on a connection of its own.
    let fifth = tokio::spawn({
        let url = app.url("/healthz");
        async move {
            let client = reqwest::Client::new();
            client.get(url).send().await
        }
    });

    // Assert: not served while the cap is reached ...
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !fifth.is_finished(),
        "the fifth connection must wait while four are open"
    );
    // ... and served once one of the four closes, with every layer still in place.
    drop(held.remove(0));
    let resp = tokio::time::timeout(Duration::from_secs(5), fifth)
        .await
        .expect("served after a slot freed")
        .unwrap()
        .expect("an answer");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().contains_key("x-request-id"), "{resp:?}");
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    // One of the held connections, still open, is served too.
    let mut conn = held.remove(0);
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: airlock\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = closed_within(&mut conn, Duration::from_secs(5))
        .await
        .expect("answered and closed");
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

/// `airlock serve` as a child process on the test app's database and keys, with the same
/// public URL (so tokens the test app issued are valid there too).
async fn serve_child(app: &TestApp, data_dir: &Path) -> (tokio::process::Child, String) {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let child = tokio::process::Command::new(TestApp::bin())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("AIRLOCK_MASTER_KEY", app.master_key_b64())
        .env("AIRLOCK_DATA_DIR", data_dir)
        .env("AIRLOCK_LISTEN", format!("127.0.0.1:{port}"))
        .env("AIRLOCK_PUBLIC_URL", &app.base)
        .args(["--database", app.db.url.as_str(), "serve"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("airlock serve starts");
    let base = format!("http://127.0.0.1:{port}");
    for _ in 0..200 {
        if app.client.get(format!("{base}/healthz")).send().await.is_ok() {
            return (child, base);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("airlock serve did not answer /healthz");
}

async fn sigterm_answers_a_waiting_long_poll_at_once_and_the_server_exits(backend: Backend) {
    // Arrange: a pending request of a staging agent, and a second server process.
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let agent = app.create_agent("staging", "migrator", &["db:read"]).await;
    let (status, body) = status_json(app.token("staging", &agent, Some("db:read")).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["access_token"].as_str().unwrap().to_string();
    let id = request_ok(&app, &token, "staging", &["db:drop"], "30m").await;
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base) = serve_child(&app, dir.path()).await;

    // Act: a long-poll of up to 60 s on the child, then SIGTERM.
    let waiter = tokio::spawn({
        let url = format!("{base}/v1/escalations/{id}?wait=60");
        let client = app.client.clone();
        let token = token.clone();
        async move {
            let resp = client.get(url).bearer_auth(token).send().await?;
            let status = resp.status();
            Ok::<_, reqwest::Error>((status, resp.json::<Value>().await?))
        }
    });
    // Give the request time to reach its handler and start waiting.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(!waiter.is_finished(), "the long-poll waits while pending");
    let stopped_at = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();

    // Assert: the waiter gets the current state, and the process exits, within seconds.
    let (status, view) = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter is answered on shutdown")
        .unwrap()
        .expect("an answer, not a cut connection");
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["id"], id);
    assert_eq!(view["state"], "pending");
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the server exits well within a Kubernetes grace period")
        .unwrap();
    assert!(exit.success(), "graceful exit: {exit}");
    assert!(stopped_at.elapsed() < Duration::from_secs(10));
    // The request is untouched: still pending on the remaining server.
    let (status, view) = show(&app, &token, &id, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view["state"], "pending");
}

// --- suggested commands ----------------------------------------------------------------

/// Split a command line as a POSIX shell would (quotes, no expansions).
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, ' ') => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    assert!(quote.is_none(), "unbalanced quotes in `{line}`");
    if in_word {
        words.push(word);
    }
    words
}

/// The `airlock ...` commands a message suggests. Each must be in backticks; a command
/// outside them fails the test (it would escape this check).
fn suggested_commands(message: &str) -> Vec<String> {
    let parts: Vec<&str> = message.split('`').collect();
    assert!(parts.len() % 2 == 1, "unbalanced backticks: {message}");
    let outside: String = parts.iter().step_by(2).copied().collect();
    assert!(
        !outside.contains("airlock "),
        "a command outside backticks: {message}"
    );
    parts
        .iter()
        .skip(1)
        .step_by(2)
        .filter(|p| p.starts_with("airlock "))
        .map(|p| p.to_string())
        .collect()
}

/// Parse `command` with the real CLI definition.
#[track_caller]
fn assert_runs_as_printed(command: &str, context: &str) {
    let words = shell_words(command);
    if let Err(e) = airlock::cli::Cli::try_parse_from(&words) {
        panic!("`{command}` (suggested in: {context}) does not parse:\n{e}");
    }
}

/// Every command in `message` parses; the number checked.
#[track_caller]
fn check_message(message: &str) -> usize {
    let commands = suggested_commands(message);
    for c in &commands {
        assert_runs_as_printed(c, message);
    }
    commands.len()
}

async fn every_command_a_refusal_suggests_runs_as_printed(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let mut answers: Vec<(&str, String)> = Vec::new();

    // An agent asking for a destructive scope.
    let agent = app.create_agent("staging", "migrator", &["db:read"]).await;
    let (_, body) = status_json(app.token("staging", &agent, Some("db:read db:drop")).await).await;
    answers.push(("destructive scope", body["error_description"].to_string()));
    // No session at /v1.
    let (status, body) = get(&app, "/v1/escalations", "not-a-session").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    answers.push(("no session", body["error"]["message"].to_string()));
    // A person asking for a prod token without a grant (the first-run papercut).
    let mut bob = person_with_totp(&app, "bob", &["developer"]).await;
    let (status, body) = exchange(&app, "prod", &bob.token, Some("db:read"), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    answers.push(("prod without a grant", body["error_description"].to_string()));
    // Enrolling TOTP twice.
    let (status, body) = post(&app, "/v1/me/totp", &bob.token, json!({ "password": PASSWORD })).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    answers.push(("TOTP enrolled twice", body["error"]["message"].to_string()));
    // A prod grant: first use without a step-up, then from a second session.
    let mut carol = person_with_totp(&app, "carol", &["approver"]).await;
    let id = request_ok(&app, &bob.token, "prod", &["db:write"], "30m").await;
    let (status, body) = approve(&app, &mut carol, &id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = exchange(&app, "prod", &bob.token, Some("db:write"), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    answers.push(("step-up needed", body["error_description"].to_string()));
    step_up(&app, &mut bob).await;
    let (status, body) = exchange(&app, "prod", &bob.token, Some("db:write"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let code = bob.code().await;
    let second = app
        .client
        .post(app.url("/v1/sessions"))
        .json(&json!({ "username": "bob", "password": PASSWORD, "totp_code": code }))
        .send()
        .await
        .unwrap();
    let (_, second) = status_json(second).await;
    let second = second["access_token"].as_str().unwrap().to_string();
    let (status, body) = exchange(&app, "prod", &second, Some("db:write"), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    answers.push((
        "grant bound to another session",
        body["error_description"].to_string(),
    ));

    // Assert: each answer suggests at least one command, and each one parses.
    for (what, answer) in &answers {
        let answer: String = serde_json::from_str(answer).unwrap_or_else(|_| panic!("{what}: {answer}"));
        assert!(check_message(&answer) > 0, "{what} suggests a command: {answer}");
    }
}

/// Every command in backticks (or `<code>`) anywhere in `src/` parses: hints the
/// answers above do not reach are checked too. `{...}` format arguments stand for ids,
/// names and environments.
#[test]
fn every_command_written_in_the_source_parses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![root];
    let mut checked = 0;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                files.push(entry.unwrap().path());
            }
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut in_tests = false;
        for (n, line) in text.lines().enumerate() {
            // Skip unit-test modules (`#[cfg(test)]` up to their closing brace at column 0).
            if line.trim() == "#[cfg(test)]" {
                in_tests = true;
            }
            if in_tests {
                in_tests = line != "}";
                continue;
            }
            if line.trim_start().starts_with("//") {
                continue;
            }
            let at = format!("{}:{}", path.display(), n + 1);
            let line = line.replace("<code>", "`").replace("</code>", "`");
            let parts: Vec<&str> = line.split('`').collect();
            if parts.len().is_multiple_of(2) {
                assert!(
                    !parts.last().unwrap().trim_start().starts_with("airlock "),
                    "{at}: keep a suggested command on one line, in backticks"
                );
            }
            for span in parts.iter().skip(1).step_by(2) {
                if !span.starts_with("airlock ") {
                    continue;
                }
                let mut command = String::new();
                let mut in_arg = false;
                for c in span.chars() {
                    match c {
                        '{' => {
                            in_arg = true;
                            command.push('X');
                        }
                        '}' => in_arg = false,
                        c if !in_arg => command.push(c),
                        _ => {}
                    }
                }
                assert_runs_as_printed(&command, &at);
                checked += 1;
            }
        }
    }
    assert!(
        checked > 10,
        "found only {checked} commands: is the scan still working?"
    );
}

#[test]
fn the_escalate_hint_is_complete() {
    let hint = airlock::policy::escalate_command("prod", &["db:read", "db:write"]);
    let commands = suggested_commands(&hint);
    assert_eq!(commands.len(), 1);
    assert_runs_as_printed(&commands[0], &hint);
    assert!(hint.contains("--duration"), "{hint}");
    // RFC 6749 section 5.2: no double quote or backslash in an error description.
    assert!(!hint.contains('"') && !hint.contains('\\'), "{hint}");
}

crate::both_backends!(
    a_connection_that_never_finishes_its_headers_is_closed,
    at_the_connection_cap_a_new_connection_waits_until_one_closes,
    sigterm_answers_a_waiting_long_poll_at_once_and_the_server_exits,
    every_command_a_refusal_suggests_runs_as_printed,
);
