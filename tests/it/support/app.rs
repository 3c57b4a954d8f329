//! The real server on a random port, on a fresh database, and what a test does with it
//! directly: register agents, ask for client-credentials tokens, read the audit trail.
//!
//! Requests that return the raw `reqwest::Response` are methods of [`TestApp`]; the
//! helpers in the sibling modules answer `(StatusCode, Value)` or assert.

use std::path::PathBuf;

use airlock::agents::{self, NewAgent};
use airlock::app::{App, AppState};
use airlock::config::{Settings, Sources};
use airlock::domain::NewAuditEvent;
use airlock::secrets::MasterKey;
use airlock::store::Store;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio::sync::oneshot;

use super::db::{Backend, TestDb};
use super::oauth::{ACCESS_TOKEN_TYPE, EXCHANGE, PROCESS_TYPE};

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
    /// The clock every decision of this server reads; [`TestApp::advance`] moves it.
    pub clock: std::sync::Arc<airlock::clock::OffsetClock>,
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
    let mut app = App::with_listener(settings, listener).await.expect("app builds");
    let clock = std::sync::Arc::new(airlock::clock::OffsetClock::default());
    app.set_clock(clock.clone());
    let state = app.state().clone();
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = rx.await;
    }));
    Some(TestApp {
        base: format!("http://{addr}"),
        state,
        clock,
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
    /// Move the server's clock `by` ahead, instead of sleeping until a session, grant or
    /// enrolment ends. (The server checks TOTP codes by this clock too: a test that moves
    /// it by more than a step computes codes at `app.state.now()`.)
    pub fn advance(&self, by: std::time::Duration) {
        self.clock.advance(by);
    }

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

    /// `GET path` with a bearer token.
    pub async fn get(&self, path: &str, bearer: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(bearer)
            .send()
            .await
            .expect("request sent")
    }

    /// `POST path` with a bearer token and a JSON body.
    pub async fn post_json(&self, path: &str, bearer: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(bearer)
            .json(&body)
            .send()
            .await
            .expect("request sent")
    }

    /// RFC 8693 exchange of a session token (`subject`) for a token of `env`, optionally
    /// for a process acting for the person (`actor`).
    pub async fn exchange(
        &self,
        env: &str,
        subject: &str,
        scope: Option<&str>,
        actor: Option<&str>,
    ) -> reqwest::Response {
        let mut form = vec![
            ("grant_type", EXCHANGE),
            ("subject_token", subject),
            ("subject_token_type", ACCESS_TOKEN_TYPE),
        ];
        if let Some(s) = scope {
            form.push(("scope", s));
        }
        if let Some(a) = actor {
            form.push(("actor_token", a));
            form.push(("actor_token_type", PROCESS_TYPE));
        }
        self.client
            .post(self.url(&format!("/envs/{env}/token")))
            .form(&form)
            .send()
            .await
            .expect("request sent")
    }

    /// Every audit record, oldest first.
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
        // The previous step's code, which the server accepts until the step after this one
        // ends. Close to a step's end, wait for the next step first: otherwise the server
        // could check the code a step later, when it is two steps old.
        let into_step = self.state.now().unix_timestamp().rem_euclid(30);
        if into_step >= 27 {
            tokio::time::sleep(std::time::Duration::from_secs((30 - into_step) as u64 + 1)).await;
        }
        let step = airlock::totp::step_at(self.state.now().unix_timestamp()) - 1;
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

/// Audit events of `kind`, oldest first.
pub async fn events(app: &TestApp, kind: &str) -> Vec<NewAuditEvent> {
    all_events(app)
        .await
        .into_iter()
        .filter(|e| e.kind == kind)
        .collect()
}

/// Every audit event, oldest first.
pub async fn all_events(app: &TestApp) -> Vec<NewAuditEvent> {
    app.audit_kinds().await.into_iter().map(|r| r.event).collect()
}

/// A client whose connections come from `ip` (any 127.0.0.0/8 address reaches the
/// server on loopback), so a test can be a stranger at another address.
pub fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<std::net::IpAddr>().expect("address"))
        .build()
        .expect("client")
}

/// Every stored request.
pub async fn stored_escalations(app: &TestApp) -> Vec<airlock::domain::Escalation> {
    app.store()
        .escalations(&airlock::store::EscalationFilter {
            state: None,
            environment: None,
            holder: None,
            limit: 1000,
        })
        .await
        .expect("escalations")
}

/// Every stored grant.
pub async fn stored_grants(app: &TestApp) -> Vec<airlock::domain::Grant> {
    app.store()
        .grants(&airlock::store::GrantFilter {
            holder: None,
            environment: None,
            active_at: None,
            limit: 1000,
        })
        .await
        .expect("grants")
}
