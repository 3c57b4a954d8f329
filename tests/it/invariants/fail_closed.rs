//! Invariant 7: when the store cannot record a decision, nothing is issued.

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{Backend, TestApp, events, spawn_app};

/// Something that keeps the database from committing until dropped.
enum Outage {
    /// A writer holding SQLite's write lock (readers still work in WAL mode, so the
    /// agent look-up succeeds and the audit commit is what fails).
    SqliteLock(sqlx::SqliteConnection),
    /// The test database refuses connections and every backend was terminated.
    Postgres { admin: String, name: String },
}

async fn take_store_away(app: &TestApp) -> Outage {
    use sqlx::Connection;
    match app.db.backend {
        Backend::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&app.db.url).await.unwrap();
            sqlx::query("begin exclusive").execute(&mut c).await.unwrap();
            sqlx::query("update audit_head set seq = seq")
                .execute(&mut c)
                .await
                .unwrap();
            Outage::SqliteLock(c)
        }
        Backend::Postgres => {
            let mut url = url::Url::parse(&app.db.url).unwrap();
            let name = url.path().trim_start_matches('/').to_string();
            url.set_path("postgres");
            let admin = url.to_string();
            let mut c = sqlx::PgConnection::connect(&admin).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "alter database \"{name}\" allow_connections false"
            )))
            .execute(&mut c)
            .await
            .unwrap();
            sqlx::query("select pg_terminate_backend(pid) from pg_stat_activity where datname = $1")
                .bind(&name)
                .execute(&mut c)
                .await
                .unwrap();
            Outage::Postgres { admin, name }
        }
    }
}

async fn bring_store_back(outage: Outage) {
    use sqlx::Connection;
    match outage {
        Outage::SqliteLock(mut c) => {
            sqlx::query("rollback").execute(&mut c).await.unwrap();
        }
        Outage::Postgres { admin, name } => {
            let mut c = sqlx::PgConnection::connect(&admin).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "alter database \"{name}\" allow_connections true"
            )))
            .execute(&mut c)
            .await
            .unwrap();
        }
    }
}

async fn the_store_going_away_gives_503_and_no_token(backend: Backend) {
    // Arrange: a working agent, one token already issued.
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let agent = app.create_agent("staging", "ci", &["db:read"]).await;
    assert_eq!(app.token("staging", &agent, None).await.status(), StatusCode::OK);

    // Act: the database stops accepting writes (SQLite) or connections (Postgres).
    let outage = take_store_away(&app).await;
    let resp = app.token("staging", &agent, None).await;
    let refusal = app.token("staging", &agent, Some("db:drop")).await;

    // Assert: 503 temporarily_unavailable, no token in the body, for issuance and refusal alike.
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable");
    assert!(body.get("access_token").is_none());
    assert_eq!(refusal.status(), StatusCode::SERVICE_UNAVAILABLE);

    // When the store comes back, the trail shows exactly the one token that was returned.
    bring_store_back(outage).await;
    let resp = app.token("staging", &agent, None).await;
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "service recovers once the store is back"
    );
    let issued = events(&app, "token.issued").await.len();
    assert_eq!(issued, 2, "only the two tokens that were returned are recorded");
}

/// PostgreSQL only: a transaction stuck holding the chain head (a hung replica, an
/// operator's open psql session) makes requests fail promptly with a well-formed 503,
/// instead of hanging until the request deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_lock_on_postgres_gives_a_prompt_503() {
    use sqlx::Connection;
    let Some(app) = spawn_app(Backend::Postgres).await else {
        return;
    };
    let agent = app.create_agent("staging", "ci", &["db:read"]).await;
    let mut holder = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    sqlx::query("begin").execute(&mut holder).await.unwrap();
    sqlx::query("select seq from audit_head where id = 1 for update")
        .execute(&mut holder)
        .await
        .unwrap();

    let started = std::time::Instant::now();
    let resp = app.token("staging", &agent, None).await;
    let waited = started.elapsed();

    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable");
    assert!(
        waited < app.state.settings.limits.request_timeout,
        "failed by the lock timeout ({waited:?}), not the request deadline"
    );
    sqlx::query("rollback").execute(&mut holder).await.unwrap();
    assert_eq!(app.token("staging", &agent, None).await.status(), StatusCode::OK);
}

/// PostgreSQL only: an embedded SQLite file cannot become unreachable while open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_reports_an_unreachable_postgres() {
    let Some(app) = spawn_app(Backend::Postgres).await else {
        return;
    };
    let outage = take_store_away(&app).await;
    let resp = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let resp = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "liveness does not depend on the store"
    );
    bring_store_back(outage).await;
}

crate::both_backends!(the_store_going_away_gives_503_and_no_token);
