//! The production backend: PostgreSQL, safe for several replicas on one database.
//!
//! Audit appends lock the single `audit_head` row, so replicas append to one chain in
//! a total order; the group-committer takes that lock once per batch, not per event.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Pool, Postgres};

use super::escalations::grants::impl_grant_store;
use super::escalations::impl_escalation_store;
use super::people::devices::impl_sign_in_store;
use super::people::impl_people_store;
use super::sql::impl_sql_store;
use super::{AgentCache, AuditBatcher, ConnectOptions};

/// A write transaction (PostgreSQL's row locks need nothing more than `BEGIN`).
async fn begin_write(pool: &Pool<Postgres>) -> Result<sqlx::Transaction<'static, Postgres>, sqlx::Error> {
    pool.begin().await
}

/// PostgreSQL implementation of [`Store`](super::Store).
pub struct PgStore {
    pool: Pool<Postgres>,
    batcher: AuditBatcher,
    agents: std::sync::Arc<AgentCache>,
}

impl PgStore {
    /// Connect to `url` and, if asked, migrate.
    pub async fn connect(url: &str, options: &ConnectOptions) -> anyhow::Result<PgStore> {
        let connect = PgConnectOptions::from_str(url)
            .map_err(|_| anyhow::anyhow!("invalid PostgreSQL URL {}", crate::config::redact_url(url)))?
            .application_name("airlock")
            .options([
                ("lock_timeout", options.busy_timeout.as_millis().to_string()),
                (
                    "statement_timeout",
                    options.statement_timeout.as_millis().to_string(),
                ),
                (
                    "idle_in_transaction_session_timeout",
                    options.statement_timeout.as_millis().to_string(),
                ),
            ]);
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot connect to PostgreSQL at {}: {e}",
                    crate::config::redact_url(url)
                )
            })?;
        if options.migrate {
            Self::migrator()
                .run(&pool)
                .await
                .map_err(|e| anyhow::anyhow!("cannot apply PostgreSQL migrations: {e}"))?;
        }
        let batch_pool = pool.clone();
        let batcher = AuditBatcher::spawn(move |events| commit_batch(batch_pool.clone(), events));
        let agents = AgentCache::new();
        let poll_pool = pool.clone();
        agents.spawn_poller(move || read_agents_counter(poll_pool.clone()));
        Ok(PgStore {
            pool,
            batcher,
            agents,
        })
    }

    fn migrator() -> &'static sqlx::migrate::Migrator {
        static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");
        &MIGRATOR
    }
}

impl_sql_store!(PgStore, Postgres);
impl_escalation_store!(PgStore, Postgres);
impl_grant_store!(PgStore, Postgres);
impl_people_store!(PgStore, Postgres);
impl_sign_in_store!(PgStore, Postgres);
