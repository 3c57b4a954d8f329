//! Test harness: a fresh database per test on either backend, and the real server on a
//! random port.
//!
//! PostgreSQL tests read `AIRLOCK_TEST_POSTGRES_URL` (a URL of a database the harness
//! may connect to in order to `CREATE DATABASE`). Without it they print a notice and
//! pass as skipped, unless `AIRLOCK_REQUIRE_POSTGRES=1`, which turns the skip into a
//! failure (CI sets it).

use std::path::PathBuf;
use std::sync::Arc;

use airlock::agents::{self, NewAgent};
use airlock::app::{App, AppState};
use airlock::config::{Settings, Sources};
use airlock::secrets::MasterKey;
use airlock::store::{self, ConnectOptions, Store};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::oneshot;

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

/// Settings for a test: a fresh data dir, the given database, a random master key.
pub fn test_settings(db_url: &str, data_dir: &std::path::Path, master: &MasterKey) -> Settings {
    let mut s = Settings::load(&Sources::default()).expect("default settings");
    s.database_url = db_url.to_string();
    s.data_dir = data_dir.to_path_buf();
    s.master_key = Some(master.to_base64());
    s.database.busy_timeout = std::time::Duration::from_millis(300);
    s.database.acquire_timeout = std::time::Duration::from_secs(2);
    s
}

/// A running server.
pub struct TestApp {
    pub base: String,
    pub state: AppState,
    pub client: reqwest::Client,
    pub master: MasterKey,
    pub db: TestDb,
    /// Kept alive for the life of the server.
    _data_dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Start the server on a fresh database; `None` when the backend is skipped.
pub async fn spawn_app(backend: Backend) -> Option<TestApp> {
    spawn_app_with(backend, |_| {}).await
}

/// As [`spawn_app`], with a chance to adjust the settings.
pub async fn spawn_app_with(backend: Backend, customize: impl FnOnce(&mut Settings)) -> Option<TestApp> {
    init_test_logs();
    let db = TestDb::new(backend).await?;
    let data_dir = tempfile::tempdir().expect("temp dir");
    let master = MasterKey::generate().expect("master key");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut settings = test_settings(&db.url, data_dir.path(), &master);
    settings.listen = addr.to_string();
    settings.public_url = format!("http://{addr}");
    customize(&mut settings);
    let app = App::with_listener(settings, listener).await.expect("app builds");
    let state = app.state().clone();
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = rx.await;
    }));
    Some(TestApp {
        base: format!("http://{addr}"),
        state,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client"),
        master,
        db,
        _data_dir: data_dir,
        shutdown: Some(tx),
        server: Some(server),
    })
}

fn init_test_logs() {
    if std::env::var("TEST_LOG").is_ok() {
        airlock::telemetry::init(airlock::config::LogFormat::Pretty, "airlock=debug");
    }
}

/// The person the harness names as owner of the agents it registers once people exist.
pub const AGENT_OWNER: &str = "agent-owner";

/// A registered agent's credentials.
pub struct TestAgent {
    pub client_id: String,
    pub secret: SecretString,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn store(&self) -> &dyn Store {
        self.state.store.as_ref()
    }

    /// Register an agent through the library (as the CLI does). Once people exist, its
    /// owner is [`AGENT_OWNER`], a person with no roles who never approves anything, so
    /// tests about who approves are not changed by who owns the agent.
    pub async fn create_agent(&self, env: &str, name: &str, scopes: &[&str]) -> TestAgent {
        let owner = self.default_agent_owner().await;
        self.create_agent_owned_by(env, name, scopes, owner.as_deref())
            .await
    }

    /// [`TestApp::create_agent`] with the owner named (`None`: no owner, as on a first run).
    pub async fn create_agent_owned_by(
        &self,
        env: &str,
        name: &str,
        scopes: &[&str],
        owner: Option<&str>,
    ) -> TestAgent {
        let new = NewAgent {
            name: name.into(),
            environment: env.into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            default_scopes: vec![],
            owner: owner.map(str::to_string),
        };
        let (agent, secret) = agents::create(
            self.store(),
            &self.state.settings,
            &self.state.hasher,
            new,
            "test",
        )
        .await
        .expect("agent created");
        TestAgent {
            client_id: agent.client_id,
            secret,
        }
    }

    /// The owner the harness gives agents: `None` while nobody exists (an owner is then
    /// optional), otherwise [`AGENT_OWNER`], created on first use.
    pub async fn default_agent_owner(&self) -> Option<String> {
        if self.store().users().await.expect("users").is_empty() {
            return None;
        }
        if airlock::people::find_user(&self.state, AGENT_OWNER)
            .await
            .is_err()
        {
            // Two tasks may race to create it; either way it exists afterwards.
            let _ = airlock::people::create_user(
                &self.state,
                "test",
                AGENT_OWNER,
                &SecretString::from("the agent owner's long password"),
                vec![],
            )
            .await;
            airlock::people::find_user(&self.state, AGENT_OWNER)
                .await
                .expect("the agent owner exists");
        }
        Some(AGENT_OWNER.to_string())
    }

    /// POST a client-credentials request with Basic authentication.
    pub async fn token(&self, env: &str, agent: &TestAgent, scope: Option<&str>) -> reqwest::Response {
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(s) = scope {
            form.push(("scope", s));
        }
        self.client
            .post(self.url(&format!("/envs/{env}/token")))
            .basic_auth(&agent.client_id, Some(agent.secret.expose_secret()))
            .form(&form)
            .send()
            .await
            .expect("request sent")
    }

    /// Audit events of one kind, oldest first.
    pub async fn audit_kinds(&self) -> Vec<airlock::domain::AuditRecord> {
        self.store().audit_page(0, 10_000).await.expect("audit page")
    }

    /// Enrol TOTP for `username` as the person would: sign in with `password`, start the
    /// enrolment from that session and activate it there with the previous time step's
    /// code (the server accepts ±1 step; later steps stay free for a sign-in and a
    /// step-up). Returns the secret and the step used.
    pub async fn enrol_totp(&self, username: &str, password: &str) -> (Vec<u8>, i64) {
        use airlock::people;
        let signed_in = people::sign_in(
            &self.state,
            None,
            username,
            SecretString::from(password.to_string()),
            None,
            "test",
        )
        .await
        .expect("signed in to enrol");
        let tokens = people::start_cli_session(&self.state, &signed_in, "test")
            .await
            .expect("session to enrol from");
        let auth = airlock::auth::authenticate_session(&self.state, &tokens.access_token)
            .await
            .expect("session authenticates");
        let enrolment = people::totp_begin(&self.state, &auth)
            .await
            .expect("enrolment begins");
        let secret = data_encoding::BASE32_NOPAD
            .decode(enrolment.secret.as_bytes())
            .expect("base32 secret");
        let auth = airlock::auth::authenticate_session(&self.state, &tokens.access_token)
            .await
            .expect("session authenticates");
        let step = airlock::totp::step_at(time::OffsetDateTime::now_utc().unix_timestamp()) - 1;
        people::totp_activate(&self.state, None, &auth, &airlock::totp::code_at(&secret, step))
            .await
            .expect("enrolment activates");
        (secret, step)
    }

    /// The master key as the CLI would be given it.
    pub fn master_key_b64(&self) -> String {
        self.master.to_base64().expose_secret().to_string()
    }

    /// Path of the `airlock` binary built for the tests.
    pub fn bin() -> PathBuf {
        PathBuf::from(env!("CARGO_BIN_EXE_airlock"))
    }

    /// Stop the server and wait for it to drain.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.server.take() {
            let _ = h.await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Generate one `#[tokio::test]` per backend for each named `async fn(Backend)`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::harness::Backend::Sqlite).await
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::harness::Backend::Postgres).await
                }
            )+
        }
    };
}
