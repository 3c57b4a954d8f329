//! Storage: the [`Store`] trait, its two backends, and the audit group-committer.
//!
//! Every method that changes state is one business step in one transaction and takes
//! the audit event it must write, so nothing can change without being audited
//! (invariant 7). Audit appends on the hot path (token issuance and refusals) go
//! through [`AuditBatcher`], which commits concurrent events together: a caller's
//! future resolves only after the transaction holding its event has committed, so a
//! token is never returned before its audit event is durable.
//!
//! Only this module imports sqlx. The SQL is shared by both backends
//! (see `sql.rs`); each backend file holds its connection options and migrations.

pub mod escalations;
pub mod people;
mod postgres;
mod sql;
mod sqlite;
mod verify;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::domain::{Agent, AuditRecord, KeySet, KeyStatus, NewAuditEvent, StoredKey};

pub use escalations::grants::GrantStore;
pub use escalations::{
    ApproveOutcome, Creation, CreationLimit, EscalationFilter, EscalationStore, GrantFilter,
};
pub use people::devices::SignInStore;
pub use people::{PeopleStore, RefreshOutcome, ThrottleRule, UserChange};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;
pub use verify::{Verified, VerifyError, verify_store};

/// Result of a store call.
pub type StoreResult<T> = Result<T, StoreError>;

/// What can go wrong in the store, without sqlx types.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row does not exist.
    #[error("not found")]
    NotFound,
    /// A uniqueness rule was broken (e.g. an agent name taken in that environment).
    #[error("conflict")]
    Conflict,
    /// The database could not be reached or did not commit. Callers fail closed.
    #[error("store unavailable")]
    Unavailable(#[source] Option<anyhow::Error>),
    /// The schema is older or newer than this binary.
    #[error("migrations pending: run `airlock migrate`")]
    MigrationsPending,
    /// Stored data could not be understood.
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

/// Pool tuning passed to [`connect`].
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Pool size.
    pub max_connections: u32,
    /// SQLite lock wait.
    pub busy_timeout: Duration,
    /// Pool acquire wait.
    pub acquire_timeout: Duration,
    /// Apply pending migrations on connect.
    pub migrate: bool,
    /// PostgreSQL: longest statement, lock wait and idle transaction. Kept below the
    /// request timeout so a stuck lock fails a request with 503, not a hung one.
    pub statement_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            max_connections: 8,
            busy_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(5),
            migrate: true,
            statement_timeout: Duration::from_secs(10),
        }
    }
}

/// Changes to an agent, each audited.
#[derive(Debug, Clone)]
pub enum AgentChange {
    /// Disable (true) or enable (false).
    Disabled(bool),
    /// Replace the secret hash.
    SecretHash(Vec<u8>),
}

/// The persistence contract. One contract test suite runs it against both backends.
#[async_trait]
pub trait Store: PeopleStore + SignInStore + EscalationStore + GrantStore + Send + Sync + 'static {
    /// Cheap liveness check of the database.
    async fn ping(&self) -> StoreResult<()>;
    /// Database reachable and every embedded migration applied.
    async fn ready(&self) -> StoreResult<()>;
    /// Apply pending migrations; returns how many were applied.
    async fn migrate(&self) -> StoreResult<usize>;

    /// A value of the `meta` table.
    async fn meta(&self, key: &str) -> StoreResult<Option<Vec<u8>>>;
    /// Set a `meta` value if absent; returns the value now stored.
    async fn init_meta(&self, key: &str, value: &[u8]) -> StoreResult<Vec<u8>>;

    /// Signing keys of a key set, newest first.
    async fn signing_keys(&self, keyset: &KeySet) -> StoreResult<Vec<StoredKey>>;
    /// Add a key. Adding a second active key to a set is a [`StoreError::Conflict`].
    async fn insert_signing_key(&self, key: &StoredKey, event: NewAuditEvent) -> StoreResult<()>;
    /// Change a key's status.
    async fn set_key_status(&self, kid: &str, status: KeyStatus, event: NewAuditEvent) -> StoreResult<()>;

    /// Register an agent.
    async fn create_agent(&self, agent: &Agent, event: NewAuditEvent) -> StoreResult<()>;
    /// Look an agent up by client id.
    async fn agent_by_client_id(&self, client_id: &str) -> StoreResult<Agent>;
    /// Look an agent up by environment and name.
    async fn agent_by_name(&self, environment: &str, name: &str) -> StoreResult<Agent>;
    /// All agents, optionally of one environment, by environment and name.
    async fn agents(&self, environment: Option<&str>) -> StoreResult<Vec<Agent>>;
    /// Change an agent. Its environment can never change (invariant 2).
    async fn update_agent(&self, id: Uuid, change: AgentChange, event: NewAuditEvent) -> StoreResult<Agent>;

    /// Append one event, durably, as part of a group commit.
    async fn append_audit(&self, event: NewAuditEvent) -> StoreResult<AuditRecord>;
    /// Events with `seq > after`, in order, at most `limit`.
    async fn audit_page(&self, after: i64, limit: u32) -> StoreResult<Vec<AuditRecord>>;
    /// The last `n` events, in order.
    async fn audit_tail(&self, n: u32) -> StoreResult<Vec<AuditRecord>>;
    /// The chain head `(seq, hash)` as the store records it.
    async fn audit_head(&self) -> StoreResult<(i64, Vec<u8>)>;

    /// Close the pool (after the server has drained).
    async fn close(&self);
}

/// Open the store named by `url`: `sqlite:...` or `postgres://...`.
pub async fn connect(url: &str, options: &ConnectOptions) -> anyhow::Result<Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(url, options).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::connect(url, options).await?))
    } else {
        anyhow::bail!(
            "unsupported database URL scheme in {}; use sqlite://PATH or postgres://USER@HOST/DB",
            crate::config::redact_url(url)
        )
    }
}

/// Largest number of events one group commit carries.
const MAX_BATCH: usize = 512;

type Job = (NewAuditEvent, oneshot::Sender<StoreResult<AuditRecord>>);

/// Group commit of audit events.
///
/// One task owns the commit loop: it takes the first waiting event, then every event
/// that queued up meanwhile (up to [`MAX_BATCH`]), commits them in one transaction and
/// answers each caller. Under load, a commit carries many events; when idle, one.
#[derive(Clone)]
pub(crate) struct AuditBatcher {
    jobs: mpsc::Sender<Job>,
}

impl AuditBatcher {
    /// Start the commit loop; `commit` links and writes a batch in one transaction.
    pub(crate) fn spawn<F, Fut>(commit: F) -> AuditBatcher
    where
        F: Fn(Vec<NewAuditEvent>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = StoreResult<Vec<AuditRecord>>> + Send,
    {
        let (jobs, mut rx) = mpsc::channel::<Job>(8 * MAX_BATCH);
        tokio::spawn(async move {
            let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
            while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
                let (events, waiters): (Vec<_>, Vec<_>) = batch.drain(..).unzip();
                match commit(events).await {
                    Ok(records) => {
                        for (waiter, record) in waiters.into_iter().zip(records) {
                            let _ = waiter.send(Ok(record));
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = ?e, events = waiters.len(), "audit commit failed; failing the batch closed");
                        for waiter in waiters {
                            let _ = waiter.send(Err(StoreError::Unavailable(None)));
                        }
                    }
                }
            }
        });
        AuditBatcher { jobs }
    }

    /// Queue one event and wait for its commit.
    pub(crate) async fn append(&self, event: NewAuditEvent) -> StoreResult<AuditRecord> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send((event, tx))
            .await
            .map_err(|_| StoreError::Unavailable(None))?;
        // A dropped sender means the commit loop died: fail closed.
        rx.await.unwrap_or(Err(StoreError::Unavailable(None)))
    }
}

/// How often each process checks whether another process changed an agent.
pub const AGENT_CACHE_POLL: Duration = Duration::from_millis(250);
/// No cached agent is used after this long, whatever the poller says.
pub const AGENT_CACHE_TTL: Duration = Duration::from_secs(1);
const AGENT_CACHE_MAX: usize = 10_000;

/// Cache of agents by client id, for the token endpoint's hot path.
///
/// SECURITY: a change made through this process (disable, rotate) clears the cache
/// before the call returns. A change made by another process (the CLI, another replica)
/// bumps `change_counters.agents` in the same transaction; a poller sees it within
/// [`AGENT_CACHE_POLL`] and clears the cache. No entry outlives [`AGENT_CACHE_TTL`].
/// Only agents that exist are cached, so a new agent is usable at once.
pub(crate) struct AgentCache {
    inner: std::sync::RwLock<CacheState>,
}

struct CacheState {
    generation: u64,
    entries: std::collections::HashMap<String, (Agent, tokio::time::Instant)>,
}

impl AgentCache {
    pub(crate) fn new() -> Arc<AgentCache> {
        Arc::new(AgentCache {
            inner: std::sync::RwLock::new(CacheState {
                generation: 0,
                entries: Default::default(),
            }),
        })
    }

    /// A fresh cached agent and the generation to present when inserting after a miss.
    pub(crate) fn get(&self, client_id: &str) -> (Option<Agent>, u64) {
        let Ok(state) = self.inner.read() else {
            return (None, u64::MAX);
        };
        let hit = state
            .entries
            .get(client_id)
            .filter(|(_, at)| at.elapsed() < AGENT_CACHE_TTL)
            .map(|(a, _)| a.clone());
        (hit, state.generation)
    }

    /// Insert what was read from the store, unless the cache was cleared since `generation`.
    pub(crate) fn put(&self, agent: &Agent, generation: u64) {
        if let Ok(mut state) = self.inner.write()
            && state.generation == generation
        {
            if state.entries.len() >= AGENT_CACHE_MAX {
                state.entries.clear();
            }
            state.entries.insert(
                agent.client_id.clone(),
                (agent.clone(), tokio::time::Instant::now()),
            );
        }
    }

    /// Forget everything.
    pub(crate) fn clear(&self) {
        if let Ok(mut state) = self.inner.write() {
            state.generation += 1;
            state.entries.clear();
        }
    }

    /// Clear the cache whenever `read_counter` changes. Stops when the cache is dropped.
    /// A failed read also clears it: when in doubt, go to the store.
    pub(crate) fn spawn_poller<F, Fut>(self: &Arc<Self>, read_counter: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = StoreResult<i64>> + Send,
    {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut last: Option<i64> = None;
            let mut tick = tokio::time::interval(AGENT_CACHE_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(cache) = weak.upgrade() else { break };
                match read_counter().await {
                    Ok(v) if last == Some(v) => {}
                    Ok(v) => {
                        last = Some(v);
                        cache.clear();
                    }
                    Err(_) => {
                        last = None;
                        cache.clear();
                    }
                }
            }
        });
    }
}
