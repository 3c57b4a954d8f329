//! The embedded default backend: one SQLite file in WAL mode.
//!
//! `synchronous = FULL` makes every commit durable before the caller is answered, which
//! is what invariant 7 needs; the audit group-committer keeps that affordable.

use std::str::FromStr;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Pool, Sqlite};

use super::escalations::impl_escalation_store;
use super::people::impl_people_store;
use super::sql::impl_sql_store;
use super::{AgentCache, AuditBatcher, ConnectOptions};

/// SQLite implementation of [`Store`](super::Store).
pub struct SqliteStore {
    pool: Pool<Sqlite>,
    batcher: AuditBatcher,
    agents: std::sync::Arc<AgentCache>,
}

impl SqliteStore {
    /// Open (creating if missing) the database at `url` and, if asked, migrate it.
    pub async fn connect(url: &str, options: &ConnectOptions) -> anyhow::Result<SqliteStore> {
        let connect = SqliteConnectOptions::from_str(url)
            .map_err(|e| anyhow::anyhow!("invalid SQLite URL: {e}"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(options.busy_timeout)
            .foreign_keys(true);
        if let Some(dir) = connect.get_filename().parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| {
                anyhow::anyhow!("cannot create the database directory {}: {e}", dir.display())
            })?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open the SQLite database: {e}"))?;
        if options.migrate {
            Self::migrator()
                .run(&pool)
                .await
                .map_err(|e| anyhow::anyhow!("cannot apply SQLite migrations: {e}"))?;
        }
        let batch_pool = pool.clone();
        let batcher = AuditBatcher::spawn(move |events| commit_batch(batch_pool.clone(), events));
        let agents = AgentCache::new();
        let poll_pool = pool.clone();
        agents.spawn_poller(move || read_agents_counter(poll_pool.clone()));
        Ok(SqliteStore {
            pool,
            batcher,
            agents,
        })
    }

    fn migrator() -> &'static sqlx::migrate::Migrator {
        static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
        &MIGRATOR
    }
}

impl_sql_store!(SqliteStore, Sqlite);
impl_escalation_store!(SqliteStore, Sqlite);
impl_people_store!(SqliteStore, Sqlite);
