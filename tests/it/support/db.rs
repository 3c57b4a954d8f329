//! A fresh database per test on either backend, and rows written straight into a store.
//!
//! PostgreSQL tests read `AIRLOCK_TEST_POSTGRES_URL` (a URL of a database the harness
//! may connect to in order to `CREATE DATABASE`). Without it they print a notice and
//! pass as skipped, unless `AIRLOCK_REQUIRE_POSTGRES=1`, which turns the skip into a
//! failure (CI sets it).

use std::sync::Arc;

use airlock::domain::{
    self, AuditRecord, Escalation, EscalationState, NewAuditEvent, Outcome, RequesterKind, User,
};
use airlock::store::{self, ConnectOptions, Store};
use time::OffsetDateTime;
use uuid::Uuid;

/// Which store a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database that exists only for one test.
pub struct TestDb {
    pub url: String,
    pub backend: Backend,
    _dir: Option<tempfile::TempDir>,
    pg: Option<(String, String)>, // (admin url, database name)
}

fn require_postgres() -> bool {
    std::env::var("AIRLOCK_REQUIRE_POSTGRES").is_ok_and(|v| v == "1" || v == "true")
}

impl TestDb {
    pub async fn new(backend: Backend) -> Option<TestDb> {
        match backend {
            Backend::Sqlite => Some(TestDb::sqlite()),
            Backend::Postgres => TestDb::postgres().await,
        }
    }

    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}/airlock.db", dir.path().display());
        TestDb {
            url,
            backend: Backend::Sqlite,
            _dir: Some(dir),
            pg: None,
        }
    }

    pub async fn postgres() -> Option<TestDb> {
        let Ok(admin) = std::env::var("AIRLOCK_TEST_POSTGRES_URL") else {
            if require_postgres() {
                panic!("AIRLOCK_REQUIRE_POSTGRES=1 but AIRLOCK_TEST_POSTGRES_URL is not set");
            }
            eprintln!("notice: skipping a PostgreSQL test: set AIRLOCK_TEST_POSTGRES_URL to run it");
            return None;
        };
        use sqlx::Connection;
        let mut conn = match sqlx::PgConnection::connect(&admin).await {
            Ok(c) => c,
            Err(e) => panic!("cannot connect to AIRLOCK_TEST_POSTGRES_URL: {e}"),
        };
        let name = format!("airlock_t_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("create database \"{name}\"")))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let _ = conn.close().await;
        let mut url = url::Url::parse(&admin).expect("postgres URL");
        url.set_path(&name);
        Some(TestDb {
            url: url.to_string(),
            backend: Backend::Postgres,
            _dir: None,
            pg: Some((admin, name)),
        })
    }

    /// A store on this database (a second "replica" when called twice).
    pub async fn store(&self) -> Arc<dyn Store> {
        store::connect(&self.url, &ConnectOptions::default())
            .await
            .expect("connect store")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin, name)) = self.pg.take() {
            // Drop runs outside async; use a private runtime on a scoped thread.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                rt.block_on(async {
                    use sqlx::Connection;
                    let mut c = sqlx::PgConnection::connect(&admin).await.ok()?;
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "drop database if exists \"{name}\" with (force)"
                    )))
                    .execute(&mut c)
                    .await
                    .ok()?;
                    Some(())
                })
            })
            .join();
        }
    }
}

/// A fresh, migrated database and one store on it; `None` when the backend is skipped.
pub async fn fresh(backend: Backend) -> Option<(TestDb, Arc<dyn Store>)> {
    let db = TestDb::new(backend).await?;
    let store = db.store().await;
    Some((db, store))
}

/// A fresh database with two stores on it, two "replicas" that can race each other.
pub async fn replicas(backend: Backend) -> Option<(TestDb, Arc<dyn Store>, Arc<dyn Store>)> {
    let db = TestDb::new(backend).await?;
    let a = db.store().await;
    let b = db.store().await;
    Some((db, a, b))
}

/// Stored audit records of one kind, oldest first.
pub async fn events_of(store: &dyn Store, kind: &str) -> Vec<AuditRecord> {
    store
        .audit_page(0, 100_000)
        .await
        .expect("audit page")
        .into_iter()
        .filter(|r| r.event.kind == kind)
        .collect()
}

/// A successful audit event of `kind` by `test`, to pass along with a store write.
pub fn event(kind: &str) -> NewAuditEvent {
    NewAuditEvent::new(kind, "test", Outcome::Success)
}

/// An approver written straight into the store (no password anyone could use).
pub async fn stored_user(store: &dyn Store, name: &str) -> User {
    let at = domain::now();
    let u = User {
        id: Uuid::new_v4(),
        username: name.to_string(),
        password_hash: "$argon2id$unused".into(),
        roles: vec!["approver".into()],
        totp_sealed: None,
        totp_pending_sealed: None,
        totp_last_step: None,
        disabled: false,
        created_at: at,
        updated_at: at,
    };
    store.create_user(&u, event("user.created")).await.expect("user");
    u
}

/// A pending prod request of `requester` for `db:write`, not stored yet.
pub fn new_request(requester: &User, quorum: u32, expires_at: OffsetDateTime) -> Escalation {
    let at = domain::now();
    Escalation {
        id: Uuid::new_v4(),
        environment: "prod".into(),
        scopes: vec!["db:write".into()],
        duration_secs: 1800,
        reason: "run migration 0042 (TICKET-118)".into(),
        requester_kind: RequesterKind::Person,
        requester: requester.username.clone(),
        requester_user_id: Some(requester.id),
        sponsor: None,
        sponsor_user_id: None,
        holder: domain::person_holder(requester.id),
        holder_actor: None,
        quorum,
        state: EscalationState::Pending,
        created_at: at,
        expires_at,
        decided_at: None,
        decided_by: None,
        decision_reason: None,
        approvals: vec![],
    }
}
