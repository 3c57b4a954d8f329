//! Persistence of people: users, sessions, refresh tokens, device codes, throttling.
//!
//! A supertrait of [`Store`](super::Store) so the SQL can live beside the rest while
//! keeping each file readable. State changes take their audit event and commit it in
//! the same transaction, as everywhere in the store.

pub(crate) mod devices;

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use super::StoreResult;
use crate::domain::{Attempt, DeviceCode, NewAuditEvent, Session, User};

/// Audited changes to a person.
#[derive(Debug, Clone)]
pub enum UserChange {
    /// Disable (also revokes every session) or enable.
    Disabled(bool),
    /// New password hash (also revokes every session).
    Password(String),
    /// New roles.
    Roles(Vec<String>),
    /// Store a TOTP secret awaiting activation.
    TotpPending(Vec<u8>),
    /// Activate the pending secret, recording the step of the code that proved it.
    TotpActivate {
        /// Sealed secret.
        sealed: Vec<u8>,
        /// Time step used.
        step: i64,
    },
    /// Remove TOTP entirely (admin reset).
    TotpReset,
}

/// Parameters of one atomic throttle step (all times in Unix microseconds).
#[derive(Debug, Clone, Copy)]
pub struct ThrottleRule {
    /// Now.
    pub at_us: i64,
    /// Windows that started before this are over.
    pub window_start_cutoff_us: i64,
    /// Attempts allowed before delays start.
    pub free: i64,
    /// First delay.
    pub base_delay_us: i64,
    /// Longest delay.
    pub max_delay_us: i64,
}

/// Result of presenting a refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// The token was unused; it is now used and the new one stored.
    Rotated(Uuid),
    /// The token had been used before: the session is now revoked (RFC 9700 reuse detection).
    Reused(Uuid),
}

/// People persistence.
#[async_trait]
pub trait PeopleStore: Send + Sync {
    /// Add a person; a taken username is a `Conflict`.
    async fn create_user(&self, user: &User, event: NewAuditEvent) -> StoreResult<()>;
    /// Add the first admin: a `Conflict` if anyone already holds one of `admin_roles`.
    async fn bootstrap_admin(
        &self,
        user: &User,
        admin_roles: &[String],
        event: NewAuditEvent,
    ) -> StoreResult<()>;
    /// By id.
    async fn user_by_id(&self, id: Uuid) -> StoreResult<User>;
    /// By username.
    async fn user_by_username(&self, username: &str) -> StoreResult<User>;
    /// Everyone, by username.
    async fn users(&self) -> StoreResult<Vec<User>>;
    /// Change a person.
    async fn update_user(&self, id: Uuid, change: UserChange, event: NewAuditEvent) -> StoreResult<User>;
    /// Consume a TOTP time step: true if it is later than every step used before.
    async fn use_totp_step(&self, id: Uuid, step: i64) -> StoreResult<bool>;

    /// Start a session, with its first refresh token (CLI sessions).
    async fn create_session(
        &self,
        session: &Session,
        refresh_hash: Option<&[u8]>,
        event: NewAuditEvent,
    ) -> StoreResult<()>;
    /// By id.
    async fn session(&self, id: Uuid) -> StoreResult<Session>;
    /// Web session by cookie hash.
    async fn session_by_secret(&self, secret_hash: &[u8]) -> StoreResult<Session>;
    /// Record use (idle timeout).
    async fn touch_session(&self, id: Uuid, at: OffsetDateTime) -> StoreResult<()>;
    /// End a session.
    async fn revoke_session(&self, id: Uuid, reason: &str, event: NewAuditEvent) -> StoreResult<()>;
    /// Session that a refresh token belongs to.
    async fn refresh_token_session(&self, token_hash: &[u8]) -> StoreResult<Uuid>;
    /// Use a refresh token once: rotate it, or detect reuse and revoke the session.
    async fn rotate_refresh_token(
        &self,
        old_hash: &[u8],
        new_hash: &[u8],
        at: OffsetDateTime,
        rotated: NewAuditEvent,
        reused: NewAuditEvent,
    ) -> StoreResult<RefreshOutcome>;
}

#[derive(sqlx::FromRow)]
pub(super) struct UserRow {
    id: Uuid,
    username: String,
    password_hash: String,
    roles: String,
    totp_sealed: Option<Vec<u8>>,
    totp_pending_sealed: Option<Vec<u8>>,
    totp_last_step: Option<i64>,
    disabled: bool,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
}

impl TryFrom<UserRow> for User {
    type Error = super::StoreError;
    fn try_from(r: UserRow) -> StoreResult<User> {
        Ok(User {
            roles: serde_json::from_str(&r.roles)
                .map_err(|_| super::StoreError::Corrupt(format!("roles of user {}", r.username)))?,
            id: r.id,
            username: r.username,
            password_hash: r.password_hash,
            totp_sealed: r.totp_sealed,
            totp_pending_sealed: r.totp_pending_sealed,
            totp_last_step: r.totp_last_step,
            disabled: r.disabled,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct SessionRow {
    id: Uuid,
    user_id: Uuid,
    kind: String,
    secret_hash: Option<Vec<u8>>,
    created_at: OffsetDateTime,
    last_used_at: OffsetDateTime,
    expires_at: OffsetDateTime,
    revoked_at: Option<OffsetDateTime>,
    revoked_reason: Option<String>,
    totp_verified: bool,
    stepped_up_at: Option<OffsetDateTime>,
}

impl TryFrom<SessionRow> for Session {
    type Error = super::StoreError;
    fn try_from(r: SessionRow) -> StoreResult<Session> {
        Ok(Session {
            kind: match r.kind.as_str() {
                "cli" => crate::domain::SessionKind::Cli,
                "web" => crate::domain::SessionKind::Web,
                _ => return Err(super::StoreError::Corrupt(format!("kind of session {}", r.id))),
            },
            id: r.id,
            user_id: r.user_id,
            secret_hash: r.secret_hash,
            created_at: r.created_at,
            last_used_at: r.last_used_at,
            expires_at: r.expires_at,
            revoked_at: r.revoked_at,
            revoked_reason: r.revoked_reason,
            totp_verified: r.totp_verified,
            stepped_up_at: r.stepped_up_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct DeviceRow {
    id: Uuid,
    device_code_hash: Vec<u8>,
    user_code: String,
    client_id: String,
    status: String,
    interval_secs: i64,
    created_at: OffsetDateTime,
    expires_at: OffsetDateTime,
    last_polled_at: Option<OffsetDateTime>,
    user_id: Option<Uuid>,
    totp_verified: bool,
    client_address: Option<String>,
    client_user_agent: Option<String>,
}

impl TryFrom<DeviceRow> for DeviceCode {
    type Error = super::StoreError;
    fn try_from(r: DeviceRow) -> StoreResult<DeviceCode> {
        Ok(DeviceCode {
            status: crate::domain::DeviceStatus::parse(&r.status)
                .ok_or_else(|| super::StoreError::Corrupt(format!("status of device code {}", r.id)))?,
            id: r.id,
            device_code_hash: r.device_code_hash,
            user_code: r.user_code,
            client_id: r.client_id,
            interval_secs: r.interval_secs,
            created_at: r.created_at,
            expires_at: r.expires_at,
            last_polled_at: r.last_polled_at,
            user_id: r.user_id,
            totp_verified: r.totp_verified,
            client_address: r.client_address,
            client_user_agent: r.client_user_agent,
        })
    }
}

pub(super) const USER_COLUMNS: &str = "id, username, password_hash, roles, totp_sealed, totp_pending_sealed, \
     totp_last_step, disabled, created_at, updated_at";
pub(super) const SESSION_COLUMNS: &str = "id, user_id, kind, secret_hash, created_at, last_used_at, \
     expires_at, revoked_at, revoked_reason, totp_verified, stepped_up_at";
pub(super) const DEVICE_COLUMNS: &str = "id, device_code_hash, user_code, client_id, status, interval_secs, \
     created_at, expires_at, last_polled_at, user_id, totp_verified, client_address, client_user_agent";

/// Expand [`PeopleStore`] for a backend (same contract as `impl_sql_store!`, whose
/// `append_in_tx` it uses).
macro_rules! impl_people_store {
    ($store:ty, $db:ty) => {
        async fn insert_user(
            conn: &mut <$db as sqlx::Database>::Connection,
            user: &$crate::domain::User,
        ) -> $crate::store::StoreResult<()> {
            sqlx::query(
                "insert into users (id, username, password_hash, roles, totp_sealed, totp_pending_sealed, \
                 totp_last_step, disabled, created_at, updated_at) \
                 values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(user.id)
            .bind(&user.username)
            .bind(&user.password_hash)
            .bind(serde_json::to_string(&user.roles).unwrap_or_default())
            .bind(&user.totp_sealed)
            .bind(&user.totp_pending_sealed)
            .bind(user.totp_last_step)
            .bind(user.disabled)
            .bind(user.created_at)
            .bind(user.updated_at)
            .execute(&mut *conn)
            .await
            .map(|_| ())
            .map_err($crate::store::sql::map_err)
        }

        async fn insert_session(
            conn: &mut <$db as sqlx::Database>::Connection,
            s: &$crate::domain::Session,
            refresh_hash: Option<&[u8]>,
        ) -> $crate::store::StoreResult<()> {
            use $crate::store::sql::map_err;
            sqlx::query(
                "insert into sessions (id, user_id, kind, secret_hash, created_at, last_used_at, expires_at, \
                 totp_verified, stepped_up_at) values ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(s.id)
            .bind(s.user_id)
            .bind(s.kind.as_str())
            .bind(&s.secret_hash)
            .bind(s.created_at)
            .bind(s.last_used_at)
            .bind(s.expires_at)
            .bind(s.totp_verified)
            .bind(s.stepped_up_at)
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
            if let Some(hash) = refresh_hash {
                sqlx::query("insert into refresh_tokens (token_hash, session_id, created_at) values ($1, $2, $3)")
                    .bind(hash)
                    .bind(s.id)
                    .bind(s.created_at)
                    .execute(&mut *conn)
                    .await
                    .map_err(map_err)?;
            }
            Ok(())
        }

        async fn revoke_user_sessions(
            conn: &mut <$db as sqlx::Database>::Connection,
            user_id: uuid::Uuid,
            reason: &str,
        ) -> $crate::store::StoreResult<()> {
            sqlx::query(
                "update sessions set revoked_at = $1, revoked_reason = $2 where user_id = $3 and revoked_at is null",
            )
            .bind($crate::domain::now())
            .bind(reason)
            .bind(user_id)
            .execute(&mut *conn)
            .await
            .map(|_| ())
            .map_err($crate::store::sql::map_err)
        }

        async fn fetch_user(
            conn: &mut <$db as sqlx::Database>::Connection,
            id: uuid::Uuid,
        ) -> $crate::store::StoreResult<$crate::domain::User> {
            let row: $crate::store::people::UserRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "select {} from users where id = $1",
                $crate::store::people::USER_COLUMNS
            )))
            .bind(id)
            .fetch_one(&mut *conn)
            .await
            .map_err($crate::store::sql::map_err)?;
            row.try_into()
        }

        #[async_trait::async_trait]
        impl $crate::store::people::PeopleStore for $store {
            async fn create_user(
                &self,
                user: &$crate::domain::User,
                event: $crate::domain::NewAuditEvent,
            ) -> $crate::store::StoreResult<()> {
                use $crate::store::sql::map_err;
                let mut tx = begin_write(&self.pool).await.map_err(map_err)?;
                insert_user(&mut tx, user).await?;
                append_in_tx(&mut tx, vec![event]).await?;
                tx.commit().await.map_err(map_err)
            }

            async fn bootstrap_admin(
                &self,
                user: &$crate::domain::User,
                admin_roles: &[String],
                event: $crate::domain::NewAuditEvent,
            ) -> $crate::store::StoreResult<()> {
                use $crate::store::sql::map_err;
                let mut tx = begin_write(&self.pool).await.map_err(map_err)?;
                // The audit head lock first: it serialises concurrent bootstraps.
                append_in_tx(&mut tx, vec![event]).await?;
                let roles: Vec<(String,)> = sqlx::query_as("select roles from users")
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(map_err)?;
                let taken = roles.iter().any(|(r,)| {
                    serde_json::from_str::<Vec<String>>(r)
                        .map(|rs| rs.iter().any(|x| admin_roles.contains(x)))
                        .unwrap_or(false)
                });
                if taken {
                    return Err($crate::store::StoreError::Conflict);
                }
                insert_user(&mut tx, user).await?;
                tx.commit().await.map_err(map_err)
            }

            async fn user_by_id(&self, id: uuid::Uuid) -> $crate::store::StoreResult<$crate::domain::User> {
                let mut conn = self.pool.acquire().await.map_err($crate::store::sql::map_err)?;
                fetch_user(&mut conn, id).await
            }

            async fn user_by_username(
                &self,
                username: &str,
            ) -> $crate::store::StoreResult<$crate::domain::User> {
                let row: $crate::store::people::UserRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "select {} from users where username = $1",
                    $crate::store::people::USER_COLUMNS
                )))
                .bind(username)
                .fetch_one(&self.pool)
                .await
                .map_err($crate::store::sql::map_err)?;
                row.try_into()
            }

            async fn users(&self) -> $crate::store::StoreResult<Vec<$crate::domain::User>> {
                let rows: Vec<$crate::store::people::UserRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "select {} from users",
                    $crate::store::people::USER_COLUMNS
                )))
                .fetch_all(&self.pool)
                .await
                .map_err($crate::store::sql::map_err)?;
                let mut users: Vec<$crate::domain::User> =
                    rows.into_iter().map(TryInto::try_into).collect::<Result<_, _>>()?;
                users.sort_by(|a, b| a.username.cmp(&b.username));
                Ok(users)
            }

            async fn update_user(
                &self,
                id: uuid::Uuid,
                change: $crate::store::people::UserChange,
                event: $crate::domain::NewAuditEvent,
            ) -> $crate::store::StoreResult<$crate::domain::User> {
                use $crate::store::people::UserChange;
                use $crate::store::sql::map_err;
                let mut tx = begin_write(&self.pool).await.map_err(map_err)?;
                let now = $crate::domain::now();
                let done = match &change {
                    UserChange::Disabled(d) => {
                        sqlx::query("update users set disabled = $1, updated_at = $2 where id = $3")
                            .bind(*d)
                            .bind(now)
                            .bind(id)
                            .execute(&mut *tx)
                            .await
                    }
                    UserChange::Password(hash) => {
                        sqlx::query("update users set password_hash = $1, updated_at = $2 where id = $3")
                            .bind(hash)
                            .bind(now)
                            .bind(id)
                            .execute(&mut *tx)
                            .await
                    }
                    UserChange::Roles(roles) => {
                        sqlx::query("update users set roles = $1, updated_at = $2 where id = $3")
                            .bind(serde_json::to_string(roles).unwrap_or_default())
                            .bind(now)
                            .bind(id)
                            .execute(&mut *tx)
                            .await
                    }
                    UserChange::TotpPending(sealed) => {
                        sqlx::query("update users set totp_pending_sealed = $1, updated_at = $2 where id = $3")
                            .bind(sealed)
                            .bind(now)
                            .bind(id)
                            .execute(&mut *tx)
                            .await
                    }
                    UserChange::TotpActivate { sealed, step } => {
                        sqlx::query(
                            "update users set totp_sealed = $1, totp_pending_sealed = null, totp_last_step = $2, \
                             updated_at = $3 where id = $4",
                        )
                        .bind(sealed)
                        .bind(*step)
                        .bind(now)
                        .bind(id)
                        .execute(&mut *tx)
                        .await
                    }
                    UserChange::TotpReset => {
                        sqlx::query(
                            "update users set totp_sealed = null, totp_pending_sealed = null, \
                             totp_last_step = null, updated_at = $1 where id = $2",
                        )
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
                // SECURITY: disabling a person or changing their password ends every session at once.
                match &change {
                    UserChange::Disabled(true) => revoke_user_sessions(&mut tx, id, "user_disabled").await?,
                    UserChange::Password(_) => revoke_user_sessions(&mut tx, id, "password_changed").await?,
                    _ => {}
                }
                let user = fetch_user(&mut tx, id).await?;
                append_in_tx(&mut tx, vec![event]).await?;
                tx.commit().await.map_err(map_err)?;
                Ok(user)
            }

            async fn use_totp_step(&self, id: uuid::Uuid, step: i64) -> $crate::store::StoreResult<bool> {
                let done = sqlx::query(
                    "update users set totp_last_step = $1 where id = $2 \
                     and (totp_last_step is null or totp_last_step < $1)",
                )
                .bind(step)
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err($crate::store::sql::map_err)?;
                Ok(done.rows_affected() == 1)
            }

            async fn create_session(
                &self,
                session: &$crate::domain::Session,
                refresh_hash: Option<&[u8]>,
                event: $crate::domain::NewAuditEvent,
            ) -> $crate::store::StoreResult<()> {
                use $crate::store::sql::map_err;
                let mut tx = begin_write(&self.pool).await.map_err(map_err)?;
                insert_session(&mut tx, session, refresh_hash).await?;
                append_in_tx(&mut tx, vec![event]).await?;
                tx.commit().await.map_err(map_err)
            }

            async fn session(&self, id: uuid::Uuid) -> $crate::store::StoreResult<$crate::domain::Session> {
                let row: $crate::store::people::SessionRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "select {} from sessions where id = $1",
                    $crate::store::people::SESSION_COLUMNS
                )))
                .bind(id)
                .fetch_one(&self.pool)
                .await
                .map_err($crate::store::sql::map_err)?;
                row.try_into()
            }

            async fn session_by_secret(
                &self,
                secret_hash: &[u8],
            ) -> $crate::store::StoreResult<$crate::domain::Session> {
                let row: $crate::store::people::SessionRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "select {} from sessions where secret_hash = $1",
                    $crate::store::people::SESSION_COLUMNS
                )))
                .bind(secret_hash)
                .fetch_one(&self.pool)
                .await
                .map_err($crate::store::sql::map_err)?;
                row.try_into()
            }

            async fn touch_session(
                &self,
                id: uuid::Uuid,
                at: time::OffsetDateTime,
            ) -> $crate::store::StoreResult<()> {
                sqlx::query("update sessions set last_used_at = $1 where id = $2")
                    .bind(at)
                    .bind(id)
                    .execute(&self.pool)
                    .await
                    .map(|_| ())
                    .map_err($crate::store::sql::map_err)
            }

            async fn revoke_session(
                &self,
                id: uuid::Uuid,
                reason: &str,
                event: $crate::domain::NewAuditEvent,
            ) -> $crate::store::StoreResult<()> {
                use $crate::store::sql::map_err;
                let mut tx = begin_write(&self.pool).await.map_err(map_err)?;
                let done = sqlx::query(
                    "update sessions set revoked_at = $1, revoked_reason = $2 where id = $3 and revoked_at is null",
                )
                .bind($crate::domain::now())
                .bind(reason)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                if done.rows_affected() == 0 {
                    return Err($crate::store::StoreError::NotFound);
                }
                append_in_tx(&mut tx, vec![event]).await?;
                tx.commit().await.map_err(map_err)
            }

            async fn refresh_token_session(&self, token_hash: &[u8]) -> $crate::store::StoreResult<uuid::Uuid> {
                sqlx::query_scalar("select session_id from refresh_tokens where token_hash = $1")
                    .bind(token_hash)
                    .fetch_one(&self.pool)
                    .await
                    .map_err($crate::store::sql::map_err)
            }

            async fn rotate_refresh_token(
                &self,
                old_hash: &[u8],
                new_hash: &[u8],
                at: time::OffsetDateTime,
                rotated: $crate::domain::NewAuditEvent,
                reused: $crate::domain::NewAuditEvent,
            ) -> $crate::store::StoreResult<$crate::store::people::RefreshOutcome> {
                use $crate::store::people::RefreshOutcome;
                use $crate::store::sql::map_err;
                let mut tx = begin_write(&self.pool).await.map_err(map_err)?;
                // Atomic test-and-set: of two concurrent uses, exactly one rotates.
                let fresh: Option<uuid::Uuid> = sqlx::query_scalar(
                    "update refresh_tokens set used_at = $1 where token_hash = $2 and used_at is null \
                     returning session_id",
                )
                .bind(at)
                .bind(old_hash)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
                if let Some(session_id) = fresh {
                    sqlx::query("insert into refresh_tokens (token_hash, session_id, created_at) values ($1, $2, $3)")
                        .bind(new_hash)
                        .bind(session_id)
                        .bind(at)
                        .execute(&mut *tx)
                        .await
                        .map_err(map_err)?;
                    sqlx::query("update sessions set last_used_at = $1 where id = $2")
                        .bind(at)
                        .bind(session_id)
                        .execute(&mut *tx)
                        .await
                        .map_err(map_err)?;
                    append_in_tx(&mut tx, vec![rotated.subject(session_id.to_string())]).await?;
                    tx.commit().await.map_err(map_err)?;
                    return Ok(RefreshOutcome::Rotated(session_id));
                }
                let session_id: uuid::Uuid =
                    sqlx::query_scalar("select session_id from refresh_tokens where token_hash = $1")
                        .bind(old_hash)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(map_err)?;
                // SECURITY: a used refresh token came back: someone holds a copy. End the session.
                sqlx::query(
                    "update sessions set revoked_at = $1, revoked_reason = 'refresh_token_reuse' \
                     where id = $2 and revoked_at is null",
                )
                .bind(at)
                .bind(session_id)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                append_in_tx(&mut tx, vec![reused.subject(session_id.to_string())]).await?;
                tx.commit().await.map_err(map_err)?;
                Ok(RefreshOutcome::Reused(session_id))
            }
        }
    };
}

pub(super) use impl_people_store;
