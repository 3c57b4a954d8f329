//! SQL shared by both backends.
//!
//! Both schemas use the same table and column names, and sqlx maps the Rust types we
//! bind (`Uuid`, `OffsetDateTime`, `Vec<u8>`) to each engine's native column type, so
//! one set of runtime-checked queries serves both. [`impl_sql_store!`] expands the
//! [`Store`](super::Store) implementation for a backend; the contract suite runs it
//! against both engines.

use time::OffsetDateTime;
use uuid::Uuid;

use super::{StoreError, StoreResult};
use crate::domain::{Agent, AuditRecord, KeySet, KeyStatus, NewAuditEvent, Outcome, StoredKey};

/// Map a sqlx error without letting sqlx types out of the store.
pub(super) fn map_err(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::RowNotFound => StoreError::NotFound,
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict,
        other => StoreError::Unavailable(Some(anyhow::Error::new(other))),
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct AgentRow {
    id: Uuid,
    client_id: String,
    name: String,
    environment: String,
    allowed_scopes: String,
    default_scopes: String,
    disabled: bool,
    secret_hash: Vec<u8>,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
    owner_user_id: Option<Uuid>,
    owner: Option<String>,
}

impl TryFrom<AgentRow> for Agent {
    type Error = StoreError;
    fn try_from(r: AgentRow) -> StoreResult<Agent> {
        let scopes = |s: &str| {
            serde_json::from_str::<Vec<String>>(s)
                .map_err(|_| StoreError::Corrupt(format!("scopes of agent {}", r.client_id)))
        };
        Ok(Agent {
            allowed_scopes: scopes(&r.allowed_scopes)?,
            default_scopes: scopes(&r.default_scopes)?,
            id: r.id,
            client_id: r.client_id,
            name: r.name,
            environment: r.environment,
            disabled: r.disabled,
            secret_hash: r.secret_hash,
            created_at: r.created_at,
            updated_at: r.updated_at,
            owner_id: r.owner_user_id,
            owner: r.owner,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct KeyRow {
    kid: String,
    keyset: String,
    public_key: Vec<u8>,
    sealed_private_key: Vec<u8>,
    status: String,
    created_at: OffsetDateTime,
}

impl TryFrom<KeyRow> for StoredKey {
    type Error = StoreError;
    fn try_from(r: KeyRow) -> StoreResult<StoredKey> {
        Ok(StoredKey {
            keyset: KeySet::from_db(&r.keyset)
                .ok_or_else(|| StoreError::Corrupt(format!("keyset of key {}", r.kid)))?,
            status: match r.status.as_str() {
                "active" => KeyStatus::Active,
                "retired" => KeyStatus::Retired,
                _ => return Err(StoreError::Corrupt(format!("status of key {}", r.kid))),
            },
            kid: r.kid,
            public_key: r.public_key,
            sealed_private_key: r.sealed_private_key,
            created_at: r.created_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct AuditRow {
    seq: i64,
    id: Uuid,
    time: OffsetDateTime,
    kind: String,
    actor: String,
    environment: Option<String>,
    subject: Option<String>,
    outcome: String,
    details: String,
    prev_hash: Vec<u8>,
    hash: Vec<u8>,
}

impl TryFrom<AuditRow> for AuditRecord {
    type Error = StoreError;
    fn try_from(r: AuditRow) -> StoreResult<AuditRecord> {
        // A row whose stored fields do not parse is reported as altered content by the
        // verifier rather than hidden: keep the raw text in `details` when it is not JSON.
        let details = serde_json::from_str(&r.details).unwrap_or(serde_json::Value::String(r.details));
        Ok(AuditRecord {
            seq: r.seq,
            event: NewAuditEvent {
                id: r.id,
                time: r.time,
                kind: r.kind,
                actor: r.actor,
                environment: r.environment,
                subject: r.subject,
                outcome: Outcome::parse(&r.outcome)
                    .ok_or_else(|| StoreError::Corrupt(format!("outcome of audit event #{}", r.seq)))?,
                details,
            },
            prev_hash: r.prev_hash,
            hash: r.hash,
        })
    }
}

/// The owner's username is read with the agent (a renamed owner shows under the new name).
pub(super) const AGENT_COLUMNS: &str = "id, client_id, name, environment, allowed_scopes, default_scopes, disabled, secret_hash, \
     created_at, updated_at, owner_user_id, \
     (select users.username from users where users.id = agents.owner_user_id) as owner";
pub(super) const AUDIT_COLUMNS: &str =
    "seq, id, time, kind, actor, environment, subject, outcome, details, prev_hash, hash";

/// Rows per multi-row insert: 11 binds each stays far below both engines' bind limits.
pub(super) const INSERT_CHUNK: usize = 256;

/// Expand the `Store` implementation for `$store`, whose `pool` field is a `Pool<$db>`
/// and whose `batcher` field is an `AuditBatcher`.
macro_rules! impl_sql_store {
    ($store:ty, $db:ty) => {
        /// Lock the chain head, link `events` onto it, insert them and move the head,
        /// inside the caller's transaction.
        async fn append_in_tx(
            conn: &mut <$db as sqlx::Database>::Connection,
            events: Vec<$crate::domain::NewAuditEvent>,
        ) -> $crate::store::StoreResult<Vec<$crate::domain::AuditRecord>> {
            use $crate::store::sql::{map_err, INSERT_CHUNK, AUDIT_COLUMNS};
            if events.is_empty() {
                return Ok(Vec::new());
            }
            // The no-op update takes the row lock (Postgres) or the write lock (SQLite)
            // before we read the head, so concurrent writers in any process serialise here.
            let (seq, hash): (i64, Vec<u8>) =
                sqlx::query_as("update audit_head set seq = seq where id = 1 returning seq, hash")
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(map_err)?;
            let records = $crate::audit::link(seq, &hash, events);
            for chunk in records.chunks(INSERT_CHUNK) {
                let mut qb = sqlx::QueryBuilder::<$db>::new(format!("insert into audit_events ({AUDIT_COLUMNS}) "));
                qb.push_values(chunk, |mut b, r| {
                    b.push_bind(r.seq)
                        .push_bind(r.event.id)
                        .push_bind(r.event.time)
                        .push_bind(r.event.kind.clone())
                        .push_bind(r.event.actor.clone())
                        .push_bind(r.event.environment.clone())
                        .push_bind(r.event.subject.clone())
                        .push_bind(r.event.outcome.as_str())
                        .push_bind(r.event.details.to_string())
                        .push_bind(r.prev_hash.clone())
                        .push_bind(r.hash.clone());
                });
                qb.build().execute(&mut *conn).await.map_err(map_err)?;
            }
            let last = records.last().expect("events is not empty");
            sqlx::query("update audit_head set seq = $1, hash = $2 where id = 1")
                .bind(last.seq)
                .bind(last.hash.clone())
                .execute(&mut *conn)
                .await
                .map_err(map_err)?;
            Ok(records)
        }

        /// Tell every process that cached agents are stale (same transaction as the change).
        async fn bump_agents_counter(
            conn: &mut <$db as sqlx::Database>::Connection,
        ) -> $crate::store::StoreResult<()> {
            sqlx::query("update change_counters set value = value + 1 where name = 'agents'")
                .execute(&mut *conn)
                .await
                .map(|_| ())
                .map_err($crate::store::sql::map_err)
        }

        /// The current value of the agents change counter.
        async fn read_agents_counter(pool: sqlx::Pool<$db>) -> $crate::store::StoreResult<i64> {
            sqlx::query_scalar("select value from change_counters where name = 'agents'")
                .fetch_one(&pool)
                .await
                .map_err($crate::store::sql::map_err)
        }

        /// Commit one batch of audit events in its own transaction.
        async fn commit_batch(
            pool: sqlx::Pool<$db>,
            events: Vec<$crate::domain::NewAuditEvent>,
        ) -> $crate::store::StoreResult<Vec<$crate::domain::AuditRecord>> {
            use $crate::store::sql::map_err;
            let mut tx = begin_write(&pool).await.map_err(map_err)?;
            let records = append_in_tx(&mut tx, events).await?;
            tx.commit().await.map_err(map_err)?;
            Ok(records)
        }

        #[async_trait::async_trait]
        impl $crate::store::Store for $store {
            async fn ping(&self) -> $crate::store::StoreResult<()> {
                sqlx::query("select 1")
                    .execute(&self.pool)
                    .await
                    .map(|_| ())
                    .map_err($crate::store::sql::map_err)
            }

            async fn ready(&self) -> $crate::store::StoreResult<()> {
                // A blank database has no migrations table at all: that is "pending",
                // not "unavailable", as long as the database itself answers.
                let applied: Vec<(i64,)> =
                    match sqlx::query_as("select version from _sqlx_migrations where success = true")
                        .fetch_all(&self.pool)
                        .await
                    {
                        Ok(rows) => rows,
                        Err(sqlx::Error::Database(_)) => {
                            self.ping().await?;
                            return Err($crate::store::StoreError::MigrationsPending);
                        }
                        Err(e) => return Err($crate::store::sql::map_err(e)),
                    };
                let pending = Self::migrator()
                    .iter()
                    .any(|m| !applied.iter().any(|(v,)| *v == m.version));
                if pending { Err($crate::store::StoreError::MigrationsPending) } else { Ok(()) }
            }

            async fn migrate(&self) -> $crate::store::StoreResult<usize> {
                let before: i64 = sqlx::query_scalar("select count(*) from _sqlx_migrations")
                    .fetch_one(&self.pool)
                    .await
                    .unwrap_or(0);
                Self::migrator()
                    .run(&self.pool)
                    .await
                    .map_err(|e| $crate::store::StoreError::Unavailable(Some(anyhow::Error::new(e))))?;
                let after: i64 = sqlx::query_scalar("select count(*) from _sqlx_migrations")
                    .fetch_one(&self.pool)
                    .await
                    .map_err($crate::store::sql::map_err)?;
                Ok((after - before).max(0) as usize)
            }

            async fn meta(&self, key: &str) -> $crate::store::StoreResult<Option<Vec<u8>>> {
                sqlx::query_scalar("select value from meta where key = $1")
                    .bind(key)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err($crate::store::sql::map_err)
            }

            async fn init_meta(&self, key: &str, value: &[u8]) -> $crate::store::StoreResult<Vec<u8>> {
                use $crate::store::sql::map_err;
                sqlx::query("insert into meta (key, value) values ($1, $2) on conflict (key) do nothing")
                    .bind(key)
                    .bind(value)
                    .execute(&self.pool)
                    .await
                    .map_err(map_err)?;
                sqlx::query_scalar("select value from meta where key = $1")
                    .bind(key)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(map_err)
            }

            async fn signing_keys(
                &self,
                keyset: &$crate::domain::KeySet,
            ) -> $crate::store::StoreResult<Vec<$crate::domain::StoredKey>> {
                let rows: Vec<$crate::store::sql::KeyRow> = sqlx::query_as(
                    "select kid, keyset, public_key, sealed_private_key, status, created_at \
                     from signing_keys where keyset = $1",
                )
                .bind(keyset.as_db())
                .fetch_all(&self.pool)
                .await
                .map_err($crate::store::sql::map_err)?;
                // Sorted here, not in SQL: SQLite keeps timestamps as text whose order is
                // not time order within a second.
                let mut keys: Vec<$crate::domain::StoredKey> =
                    rows.into_iter().map(TryInto::try_into).collect::<Result<_, _>>()?;
                keys.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| a.kid.cmp(&b.kid)));
                Ok(keys)
            }

            async fn insert_signing_key(
                &self,
                key: &$crate::domain::StoredKey,
                event: $crate::domain::NewAuditEvent,
            ) -> $crate::store::StoreResult<()> {
                use $crate::store::sql::map_err;
                let mut tx = begin_write(&self.pool).await.map_err(map_err)?;
                sqlx::query(
                    "insert into signing_keys (kid, keyset, public_key, sealed_private_key, status, created_at) \
                     values ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&key.kid)
                .bind(key.keyset.as_db())
                .bind(&key.public_key)
                .bind(&key.sealed_private_key)
                .bind(key.status.as_str())
                .bind(key.created_at)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                append_in_tx(&mut tx, vec![event]).await?;
                tx.commit().await.map_err(map_err)
            }

            async fn set_key_status(
                &self,
                kid: &str,
                status: $crate::domain::KeyStatus,
                event: $crate::domain::NewAuditEvent,
            ) -> $crate::store::StoreResult<()> {
                use $crate::store::sql::map_err;
                let mut tx = begin_write(&self.pool).await.map_err(map_err)?;
                let done = sqlx::query("update signing_keys set status = $1 where kid = $2")
                    .bind(status.as_str())
                    .bind(kid)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                if done.rows_affected() == 0 {
                    return Err($crate::store::StoreError::NotFound);
                }
                append_in_tx(&mut tx, vec![event]).await?;
                tx.commit().await.map_err(map_err)
            }

            async fn create_agent(
                &self,
                agent: &$crate::domain::Agent,
                event: $crate::domain::NewAuditEvent,
            ) -> $crate::store::StoreResult<()> {
                use $crate::store::sql::map_err;
                let mut tx = begin_write(&self.pool).await.map_err(map_err)?;
                sqlx::query(
                    "insert into agents (id, client_id, name, environment, allowed_scopes, default_scopes, \
                     disabled, secret_hash, created_at, updated_at, owner_user_id) \
                     values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                )
                    .bind(agent.id)
                    .bind(&agent.client_id)
                    .bind(&agent.name)
                    .bind(&agent.environment)
                    .bind(serde_json::to_string(&agent.allowed_scopes).unwrap_or_default())
                    .bind(serde_json::to_string(&agent.default_scopes).unwrap_or_default())
                    .bind(agent.disabled)
                    .bind(&agent.secret_hash)
                    .bind(agent.created_at)
                    .bind(agent.updated_at)
                    .bind(agent.owner_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                bump_agents_counter(&mut tx).await?;
                append_in_tx(&mut tx, vec![event]).await?;
                tx.commit().await.map_err(map_err)
            }

            async fn agent_by_client_id(&self, client_id: &str) -> $crate::store::StoreResult<$crate::domain::Agent> {
                let (hit, generation) = self.agents.get(client_id);
                if let Some(agent) = hit {
                    return Ok(agent);
                }
                let row: $crate::store::sql::AgentRow =
                    sqlx::query_as(sqlx::AssertSqlSafe(format!(
                        "select {} from agents where client_id = $1",
                        $crate::store::sql::AGENT_COLUMNS
                    )))
                    .bind(client_id)
                    .fetch_one(&self.pool)
                    .await
                    .map_err($crate::store::sql::map_err)?;
                let agent: $crate::domain::Agent = row.try_into()?;
                self.agents.put(&agent, generation);
                Ok(agent)
            }

            async fn agent_by_name(
                &self,
                environment: &str,
                name: &str,
            ) -> $crate::store::StoreResult<$crate::domain::Agent> {
                let row: $crate::store::sql::AgentRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "select {} from agents where environment = $1 and name = $2",
                    $crate::store::sql::AGENT_COLUMNS
                )))
                .bind(environment)
                .bind(name)
                .fetch_one(&self.pool)
                .await
                .map_err($crate::store::sql::map_err)?;
                row.try_into()
            }

            async fn agents(
                &self,
                environment: Option<&str>,
            ) -> $crate::store::StoreResult<Vec<$crate::domain::Agent>> {
                let rows: Vec<$crate::store::sql::AgentRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "select {} from agents where ($1 is null or environment = $1)",
                    $crate::store::sql::AGENT_COLUMNS
                )))
                .bind(environment)
                .fetch_all(&self.pool)
                .await
                .map_err($crate::store::sql::map_err)?;
                // Byte order, the same on both engines whatever the database collation.
                let mut agents: Vec<$crate::domain::Agent> =
                    rows.into_iter().map(TryInto::try_into).collect::<Result<_, _>>()?;
                agents.sort_by(|a, b| (&a.environment, &a.name).cmp(&(&b.environment, &b.name)));
                Ok(agents)
            }

            async fn update_agent(
                &self,
                id: uuid::Uuid,
                change: $crate::store::AgentChange,
                event: $crate::domain::NewAuditEvent,
            ) -> $crate::store::StoreResult<$crate::domain::Agent> {
                use $crate::store::sql::map_err;
                let mut tx = begin_write(&self.pool).await.map_err(map_err)?;
                let now = $crate::domain::now();
                let done = match change {
                    $crate::store::AgentChange::Disabled(disabled) => {
                        sqlx::query("update agents set disabled = $1, updated_at = $2 where id = $3")
                            .bind(disabled)
                            .bind(now)
                            .bind(id)
                            .execute(&mut *tx)
                            .await
                    }
                    $crate::store::AgentChange::SecretHash(hash) => {
                        sqlx::query("update agents set secret_hash = $1, updated_at = $2 where id = $3")
                            .bind(hash)
                            .bind(now)
                            .bind(id)
                            .execute(&mut *tx)
                            .await
                    }
                }
                .map_err(map_err)?;
                if done.rows_affected() == 0 {
                    return Err($crate::store::StoreError::NotFound);
                }
                let row: $crate::store::sql::AgentRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "select {} from agents where id = $1",
                    $crate::store::sql::AGENT_COLUMNS
                )))
                .bind(id)
                .fetch_one(&mut *tx)
                .await
                .map_err(map_err)?;
                bump_agents_counter(&mut tx).await?;
                append_in_tx(&mut tx, vec![event]).await?;
                tx.commit().await.map_err(map_err)?;
                // SECURITY: before returning, so this process never serves the old state.
                self.agents.clear();
                row.try_into()
            }

            async fn append_audit(
                &self,
                event: $crate::domain::NewAuditEvent,
            ) -> $crate::store::StoreResult<$crate::domain::AuditRecord> {
                self.batcher.append(event).await
            }

            async fn audit_page(
                &self,
                after: i64,
                limit: u32,
            ) -> $crate::store::StoreResult<Vec<$crate::domain::AuditRecord>> {
                let rows: Vec<$crate::store::sql::AuditRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "select {} from audit_events where seq > $1 order by seq limit $2",
                    $crate::store::sql::AUDIT_COLUMNS
                )))
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .map_err($crate::store::sql::map_err)?;
                rows.into_iter().map(TryInto::try_into).collect()
            }

            async fn audit_tail(&self, n: u32) -> $crate::store::StoreResult<Vec<$crate::domain::AuditRecord>> {
                let rows: Vec<$crate::store::sql::AuditRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "select {} from audit_events order by seq desc limit $1",
                    $crate::store::sql::AUDIT_COLUMNS
                )))
                .bind(i64::from(n))
                .fetch_all(&self.pool)
                .await
                .map_err($crate::store::sql::map_err)?;
                let mut records: Vec<$crate::domain::AuditRecord> =
                    rows.into_iter().map(TryInto::try_into).collect::<Result<_, _>>()?;
                records.reverse();
                Ok(records)
            }

            async fn audit_head(&self) -> $crate::store::StoreResult<(i64, Vec<u8>)> {
                sqlx::query_as("select seq, hash from audit_head where id = 1")
                    .fetch_one(&self.pool)
                    .await
                    .map_err($crate::store::sql::map_err)
            }

            async fn close(&self) {
                self.pool.close().await;
            }
        }
    };
}

pub(super) use impl_sql_store;
