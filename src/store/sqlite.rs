//! The embedded default backend: one SQLite file in WAL mode.
//!
//! `synchronous = FULL` makes every commit durable before the caller is answered, which
//! is what invariant 7 needs; the audit group-committer keeps that affordable.

use std::str::FromStr;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Pool, Sqlite};

use super::escalations::grants::impl_grant_store;
use super::escalations::impl_escalation_store;
use super::people::devices::impl_sign_in_store;
use super::people::impl_people_store;
use super::sql::impl_sql_store;
use super::{AgentCache, AuditBatcher, ConnectOptions};

/// Every write transaction takes SQLite's write lock when it begins (`BEGIN IMMEDIATE`).
/// A deferred transaction that reads and then writes fails at once with
/// `SQLITE_BUSY_SNAPSHOT` when another connection commits in between (WAL mode), which no
/// busy timeout retries: the caller would get a spurious 503. Taking the lock first makes
/// it wait its turn, up to the busy timeout, instead.
async fn begin_write(pool: &Pool<Sqlite>) -> Result<sqlx::Transaction<'static, Sqlite>, sqlx::Error> {
    pool.begin_with("BEGIN IMMEDIATE").await
}

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
        if !(url.contains(":memory:") || url.contains("mode=memory")) {
            create_private(connect.get_filename())?;
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

/// SECURITY: the database holds agent secret hashes and sealed signing keys, so Airlock
/// creates it for its own user only, whatever the umask: a missing directory 0700 and a
/// missing database file 0600 (empty, which SQLite opens as a new database). SQLite
/// creates the `-wal` and `-shm` files with the database file's mode, so they are 0600
/// too. Existing directories and files keep the mode the operator gave them.
fn create_private(db: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = db.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| anyhow::anyhow!("cannot create the database directory {}: {e}", dir.display()))?;
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(db)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(anyhow::anyhow!(
            "cannot create the database {}: {e}",
            db.display()
        )),
    }
}

impl_sql_store!(SqliteStore, Sqlite);
impl_escalation_store!(SqliteStore, Sqlite);
impl_grant_store!(SqliteStore, Sqlite);
impl_people_store!(SqliteStore, Sqlite);
impl_sign_in_store!(SqliteStore, Sqlite);
