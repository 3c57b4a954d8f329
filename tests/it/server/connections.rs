//! Connections and shutdown: slow headers are cut off, the connection cap holds, and a
//! SIGTERM answers `?wait=` long-polls at once.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{
    Backend, Running, Terminal, TestApp, free_port, request_ok, show, spawn, spawn_app, spawn_app_with,
    status_json, wait_until_serving,
};

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
async fn serve_child(app: &TestApp, t: &Terminal) -> (Running, String) {
    let port = free_port();
    let mut cmd = t.admin(app);
    cmd.env("AIRLOCK_LISTEN", format!("127.0.0.1:{port}"))
        .env("AIRLOCK_PUBLIC_URL", &app.base)
        .arg("serve");
    let child = spawn(cmd);
    let base = format!("http://127.0.0.1:{port}");
    wait_until_serving(&base).await;
    (child, base)
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
    let t = Terminal::without_server();
    let (child, base) = serve_child(&app, &t).await;

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
    child.signal(nix::sys::signal::Signal::SIGTERM);

    // Assert: the waiter gets the current state, and the process exits, within seconds.
    let (status, view) = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter is answered on shutdown")
        .unwrap()
        .expect("an answer, not a cut connection");
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["id"], id);
    assert_eq!(view["state"], "pending");
    // The server exits well within a Kubernetes grace period.
    let exit = child.finish_within(Duration::from_secs(10)).await.status;
    assert!(exit.success(), "graceful exit: {exit}");
    assert!(stopped_at.elapsed() < Duration::from_secs(10));
    // The request is untouched: still pending on the remaining server.
    let (status, view) = show(&app, &token, &id, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view["state"], "pending");
}

crate::both_backends!(
    a_connection_that_never_finishes_its_headers_is_closed,
    at_the_connection_cap_a_new_connection_waits_until_one_closes,
    sigterm_answers_a_waiting_long_poll_at_once_and_the_server_exits,
);
