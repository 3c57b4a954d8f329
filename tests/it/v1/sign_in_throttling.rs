//! Failed sign-ins are throttled: per address and per account, a concurrent burst and a
//! spray over many accounts alike; yet a stranger's failures neither lock the real person
//! out nor block an approver's approval.

use reqwest::StatusCode;
use serde_json::json;

use crate::both_backends;
use crate::support::*;

/// Busy timeout for tests that send a concurrent burst of sign-ins (see below).
const BURST_BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Fail sign-in as `username` from `client` until the server throttles it.
async fn fail_until_throttled(app: &TestApp, client: &reqwest::Client, username: &str) {
    for _ in 0..12 {
        let (status, body) =
            status_json(sign_in_from(app, client, username, "not the password", None).await).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            return;
        }
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }
    panic!("failed sign-ins as {username} were never throttled");
}

async fn a_strangers_failed_sign_ins_do_not_lock_the_person_out(backend: Backend) {
    // Arrange
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    person(&app, "erin", &["developer"]).await;
    let stranger = client_from("127.0.0.2");

    // Act: the stranger guesses until throttled.
    fail_until_throttled(&app, &stranger, "erin").await;

    // Assert: erin, from her own address, signs in at once; the stranger stays blocked,
    // even with the right password.
    let (status, body) = status_json(sign_in(&app, "erin", PASSWORD, None).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = status_json(sign_in_from(&app, &stranger, "erin", PASSWORD, None).await).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
}

async fn the_account_ceiling_stops_guessing_spread_over_addresses(backend: Backend) {
    // Arrange: 2 free failures per address, a ceiling of 4 for the account.
    let Some(app) = spawn_app_with(backend, |s| {
        s.database.busy_timeout = BURST_BUSY_TIMEOUT;
        s.auth.throttle_free_failures = 2;
        s.auth.throttle_account_ceiling = 4;
    })
    .await
    else {
        return;
    };
    person(&app, "erin", &["developer"]).await;

    // Act: one failure from each of five addresses, none of them over its own limit.
    for i in 2..=6 {
        let client = client_from(&format!("127.0.0.{i}"));
        let (status, body) =
            status_json(sign_in_from(&app, &client, "erin", "not the password", None).await).await;
        assert!(
            status == StatusCode::UNAUTHORIZED || status == StatusCode::TOO_MANY_REQUESTS,
            "{status} {body}"
        );
    }

    // Assert: the account is now delayed for everyone, a fresh address included.
    let (status, body) =
        status_json(sign_in_from(&app, &client_from("127.0.0.9"), "erin", PASSWORD, None).await).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
}

async fn hammering_from_one_address_cannot_use_up_the_account_ceiling(backend: Backend) {
    // Arrange: a ceiling of 4 for the account, 2 free failures per address.
    let Some(app) = spawn_app_with(backend, |s| {
        s.auth.throttle_free_failures = 2;
        s.auth.throttle_account_ceiling = 4;
    })
    .await
    else {
        return;
    };
    person(&app, "erin", &["developer"]).await;
    let stranger = client_from("127.0.0.2");

    // Act: a concurrent burst of far more attempts than the ceiling, all from one
    // address (a burst reaches the store before any process has cached a block).
    let mut burst = tokio::task::JoinSet::new();
    for i in 0..16 {
        let (client, url) = (stranger.clone(), app.url("/v1/sessions"));
        burst.spawn(async move {
            let body = json!({ "username": "erin", "password": format!("guess number {i}") });
            client.post(url).json(&body).send().await.unwrap().status()
        });
    }
    while let Some(status) = burst.join_next().await {
        let status = status.unwrap();
        assert!(
            status == StatusCode::UNAUTHORIZED || status == StatusCode::TOO_MANY_REQUESTS,
            "{status}"
        );
    }

    // Assert: attempts the address limit refused never reached the account's ceiling.
    let (status, body) = status_json(sign_in(&app, "erin", PASSWORD, None).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn failed_sign_ins_never_block_an_approvers_approval(backend: Backend) {
    // Arrange: bob asks; a stranger hammers carol's account from another address and
    // from carol's own.
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let bob = person_with_totp(&app, "bob", &["developer"]).await;
    let mut carol = person_with_totp(&app, "carol", &["approver"]).await;
    let id = request_ok(&app, &bob.token, "staging", &["db:drop"], "30m").await;
    fail_until_throttled(&app, &client_from("127.0.0.2"), "carol").await;
    fail_until_throttled(&app, &app.client, "carol").await;

    // Act
    let (status, body) = approve(&app, &mut carol, &id).await;

    // Assert
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "approved", "{body}");
}

async fn a_concurrent_burst_cannot_slip_past_the_throttle(backend: Backend) {
    // A burst of writes to one SQLite file queues behind its single writer; the tests'
    // usual 300 ms busy timeout turns that queue into 503s on a loaded machine, which is
    // not what this test is about. Give the writers time to take turns.
    let Some(app) = spawn_app_with(backend, |s| s.database.busy_timeout = BURST_BUSY_TIMEOUT).await else {
        return;
    };
    person(&app, "alice", &["developer"]).await;
    let mut burst = tokio::task::JoinSet::new();
    for i in 0..24 {
        let (client, url) = (app.client.clone(), app.url("/v1/sessions"));
        burst.spawn(async move {
            let body = json!({ "username": "alice", "password": format!("wrong guess number {i}") });
            client.post(url).json(&body).send().await.unwrap().status()
        });
    }
    let mut verified = 0;
    let mut throttled = 0;
    while let Some(status) = burst.join_next().await {
        match status.unwrap() {
            StatusCode::UNAUTHORIZED => verified += 1,
            StatusCode::TOO_MANY_REQUESTS => throttled += 1,
            other => panic!("unexpected {other}"),
        }
    }
    let free = app.state.settings.auth.throttle_free_failures as usize;
    // The free attempts, plus one let through as the block starts: never the whole burst.
    assert!(verified <= free + 1, "{verified} guesses were checked");
    assert_eq!(verified + throttled, 24);
}

async fn spraying_many_accounts_from_one_address_is_throttled(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    for name in ["a1", "a2", "a3", "a4", "a5", "a6"] {
        person(&app, name, &["developer"]).await;
    }
    let mut statuses = Vec::new();
    for name in ["a1", "a2", "a3", "a4", "a5", "a6"] {
        statuses.push(sign_in(&app, name, "a wrong password here", None).await.status());
    }
    // Each account saw one failure only; the address saw six.
    assert!(statuses.contains(&StatusCode::TOO_MANY_REQUESTS), "{statuses:?}");
    assert_eq!(statuses[0], StatusCode::UNAUTHORIZED);
}

both_backends!(
    a_strangers_failed_sign_ins_do_not_lock_the_person_out,
    the_account_ceiling_stops_guessing_spread_over_addresses,
    hammering_from_one_address_cannot_use_up_the_account_ceiling,
    failed_sign_ins_never_block_an_approvers_approval,
    a_concurrent_burst_cannot_slip_past_the_throttle,
    spraying_many_accounts_from_one_address_is_throttled,
);
