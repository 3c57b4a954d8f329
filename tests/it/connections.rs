//! Connections: slow headers are cut off and the connection cap holds.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Backend, spawn_app_with};

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

crate::both_backends!(
    a_connection_that_never_finishes_its_headers_is_closed,
    at_the_connection_cap_a_new_connection_waits_until_one_closes,
);
