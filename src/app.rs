//! Process assembly: open the store, check the master key, load the signing keys, bind
//! the listener, serve until told to stop.
//!
//! `App::build` does everything that can fail before the first request (so a wrong
//! master key or an unreachable database stops start-up with a clear message), and
//! binds the listener so tests can read the port without sleeping.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::{Mode, Settings};
use crate::domain::KeySet;
use crate::keyring::KeyRing;
use crate::secrets::MasterKey;
pub use crate::state::AppState;
use crate::store::{self, ConnectOptions};

/// Connection options from settings.
pub fn connect_options(settings: &Settings, migrate: bool) -> ConnectOptions {
    ConnectOptions {
        max_connections: settings.database.max_connections,
        busy_timeout: settings.database.busy_timeout,
        acquire_timeout: settings.database.acquire_timeout,
        migrate,
        // Two thirds of the request deadline: the store gives up first, so the caller
        // gets a 503 with a body rather than a cut-off request.
        statement_timeout: settings.limits.request_timeout * 2 / 3,
    }
}

/// The master key: configured, or (development mode only) generated under `data_dir`.
pub fn resolve_master_key(settings: &Settings) -> anyhow::Result<MasterKey> {
    if let Some(encoded) = settings.configured_master_key()? {
        return MasterKey::parse(&encoded).context("AIRLOCK_MASTER_KEY / master_key_file is not usable");
    }
    if settings.mode == Mode::Production {
        anyhow::bail!(
            "mode = \"production\" requires a master key: set AIRLOCK_MASTER_KEY_FILE to a file holding \
             32 random bytes in base64 (e.g. `head -c32 /dev/urandom | base64 > master.key`), or AIRLOCK_MASTER_KEY"
        );
    }
    let path = settings.data_dir.join("master.key");
    let (key, created) = MasterKey::load_or_create(&path)?;
    if created {
        tracing::warn!(path = %path.display(), "generated a NEW MASTER KEY for development");
        eprintln!(
            "\n!!! Airlock generated a new master key at {} (mode 0600).\n\
             !!! It encrypts every signing key. Back it up; without it this database is useless.\n\
             !!! For production set mode = \"production\" and AIRLOCK_MASTER_KEY_FILE.\n",
            path.display()
        );
    }
    Ok(key)
}

/// Open the store, check the master key and load every key set.
pub async fn open_state(mut settings: Settings, migrate: bool) -> anyhow::Result<AppState> {
    // Settings a caller changed after loading still name their environments.
    settings.name_environments();
    let master = resolve_master_key(&settings)?;
    let store = store::connect(&settings.database_url, &connect_options(&settings, migrate)).await?;
    if !migrate {
        store
            .ready()
            .await
            .context("the database schema is not current")?;
    }
    let mut sets: Vec<KeySet> = settings
        .environments
        .keys()
        .map(|e| KeySet::Environment(e.clone()))
        .collect();
    sets.push(KeySet::Session);
    let keys = KeyRing::load(store.as_ref(), &master, &sets).await?;
    let passwords = crate::password::Passwords::new(
        settings.auth.max_concurrent_password_checks,
        settings.auth.password_queue_timeout,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let notifier = crate::notify::Notifier::spawn(&settings, store.clone())
        .map_err(|e| anyhow::anyhow!("webhooks: {e}"))?;
    Ok(AppState {
        clock: Arc::new(crate::clock::SystemClock),
        notifier,
        changes: Arc::new(tokio::sync::Notify::new()),
        stopping: Arc::new(tokio::sync::watch::Sender::new(false)),
        refusals: crate::refusals::RefusalLimiter::start(store.clone(), settings.limits.refusals.clone()),
        passwords: Arc::new(passwords),
        blocks: Arc::new(crate::throttle::BlockCache::default()),
        store,
        keys: Arc::new(keys),
        hasher: Arc::new(master.secret_hasher()),
        master: Arc::new(master),
        settings: Arc::new(settings),
    })
}

/// A built server: state ready, listener bound.
pub struct App {
    listener: TcpListener,
    state: AppState,
}

impl App {
    /// Prepare everything and bind `settings.listen`.
    pub async fn build(settings: Settings) -> anyhow::Result<App> {
        let listen = settings.listen.clone();
        let listener = TcpListener::bind(&listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        Self::with_listener(settings, listener).await
    }

    /// Prepare everything and serve on an already bound listener (tests bind port 0
    /// first so `public_url` can carry the real port).
    pub async fn with_listener(settings: Settings, listener: TcpListener) -> anyhow::Result<App> {
        let state = open_state(settings, true).await?;
        Ok(App { listener, state })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The shared state (tests use its store).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Decide by `clock` instead of the system clock (tests move time ahead with it).
    pub fn set_clock(&mut self, clock: Arc<dyn crate::clock::Clock>) {
        self.state.clock = clock;
    }

    /// Serve until `shutdown` resolves, drain in-flight requests, close the pool.
    ///
    /// On shutdown, requests waiting on an escalation answer at once with its current
    /// state (clients poll again elsewhere), so the drain takes at most one request
    /// deadline rather than a long-poll's minute.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let App { listener, state } = self;
        let store = state.store.clone();
        let notifier = state.notifier.clone();
        let refusals = state.refusals.clone();
        let stopping = state.stopping.clone();
        let limits = crate::http::ConnectionLimits {
            header_read_timeout: state.settings.limits.header_read_timeout,
            max_connections: state.settings.limits.max_connections,
        };
        // Expire requests and record ended grants even when nobody calls the API.
        let sweeper = crate::escalations::spawn_sweeper(state.clone());
        let router = crate::http::router(state);
        let shutdown = async move {
            shutdown.await;
            stopping.send_replace(true);
        };
        crate::http::serve(listener, router, limits, shutdown).await;
        sweeper.abort();
        notifier.drain(std::time::Duration::from_secs(5)).await;
        // What was counted but not yet summarised is written before the pool closes.
        refusals.flush(store.as_ref()).await;
        store.close().await;
        Ok(())
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received; draining");
}
