//! The device-flow and throttle halves of the people store (see [`super::PeopleStore`]).

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{Attempt, ThrottleRule};
use crate::domain::{DeviceCode, NewAuditEvent, Session};
use crate::store::StoreResult;

/// What sign-in needs beyond users and sessions: device codes, step-ups and the
/// throttle counters.
#[async_trait]
pub trait SignInStore: Send + Sync {
    /// Store a new device authorization.
    async fn create_device_code(&self, code: &DeviceCode, event: NewAuditEvent) -> StoreResult<()>;
    /// By device-code hash.
    async fn device_code_by_hash(&self, hash: &[u8]) -> StoreResult<DeviceCode>;
    /// By user code.
    async fn device_code_by_user_code(&self, user_code: &str) -> StoreResult<DeviceCode>;
    /// Record a poll and, if given, a new interval (`slow_down`).
    async fn poll_device_code(&self, id: Uuid, at: OffsetDateTime, interval_secs: i64) -> StoreResult<()>;
    /// Approve or deny a pending, unexpired code; anything else is a `Conflict`.
    async fn decide_device_code(
        &self,
        id: Uuid,
        user_id: Uuid,
        approve: bool,
        totp_verified: bool,
        at: OffsetDateTime,
        event: NewAuditEvent,
    ) -> StoreResult<()>;
    /// Turn an approved code into a session, exactly once (`Conflict` otherwise).
    async fn redeem_device_code(
        &self,
        id: Uuid,
        session: &Session,
        refresh_hash: &[u8],
        event: NewAuditEvent,
    ) -> StoreResult<()>;

    /// Mark a session as confirmed with a fresh TOTP code now.
    async fn step_up_session(&self, id: Uuid, at: OffsetDateTime) -> StoreResult<()>;

    /// Count one sign-in attempt against `key`, atomically, and block the key if this
    /// attempt goes over the limit (see `people::sign_in`). Attempts older than
    /// `window_start_cutoff_us` start a new window.
    async fn throttle_attempt(&self, key: &str, rule: &ThrottleRule) -> StoreResult<Attempt>;
    /// Forget `key` (after a successful sign-in).
    async fn throttle_release(&self, key: &str) -> StoreResult<()>;
    /// Take back one attempt (a success from a shared address); a key back within its
    /// `free` allowance is unblocked.
    async fn throttle_undo(&self, key: &str, free: i64) -> StoreResult<()>;
}

/// Expand [`SignInStore`] for a backend, in the module where `impl_people_store!` was
/// expanded (it shares that macro's helper functions).
macro_rules! impl_sign_in_store {
    ($store:ty, $db:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::people::devices::SignInStore for $store {
            async fn create_device_code(
                &self,
                code: &$crate::domain::DeviceCode,
                event: $crate::domain::NewAuditEvent,
            ) -> $crate::store::StoreResult<()> {
                use $crate::store::sql::map_err;
                let mut tx = begin_write(&self.pool).await.map_err(map_err)?;
                sqlx::query(
                    "insert into device_codes (id, device_code_hash, user_code, client_id, status, interval_secs, \
                     created_at, expires_at, client_address, client_user_agent) \
                     values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
                .bind(code.id)
                .bind(&code.device_code_hash)
                .bind(&code.user_code)
                .bind(&code.client_id)
                .bind(code.status.as_str())
                .bind(code.interval_secs)
                .bind(code.created_at)
                .bind(code.expires_at)
                .bind(&code.client_address)
                .bind(&code.client_user_agent)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                append_in_tx(&mut tx, vec![event]).await?;
                tx.commit().await.map_err(map_err)
            }

            async fn device_code_by_hash(
                &self,
                hash: &[u8],
            ) -> $crate::store::StoreResult<$crate::domain::DeviceCode> {
                let row: $crate::store::people::DeviceRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "select {} from device_codes where device_code_hash = $1",
                    $crate::store::people::DEVICE_COLUMNS
                )))
                .bind(hash)
                .fetch_one(&self.pool)
                .await
                .map_err($crate::store::sql::map_err)?;
                row.try_into()
            }

            async fn device_code_by_user_code(
                &self,
                user_code: &str,
            ) -> $crate::store::StoreResult<$crate::domain::DeviceCode> {
                let row: $crate::store::people::DeviceRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "select {} from device_codes where user_code = $1",
                    $crate::store::people::DEVICE_COLUMNS
                )))
                .bind(user_code)
                .fetch_one(&self.pool)
                .await
                .map_err($crate::store::sql::map_err)?;
                row.try_into()
            }

            async fn poll_device_code(
                &self,
                id: uuid::Uuid,
                at: time::OffsetDateTime,
                interval_secs: i64,
            ) -> $crate::store::StoreResult<()> {
                sqlx::query("update device_codes set last_polled_at = $1, interval_secs = $2 where id = $3")
                    .bind(at)
                    .bind(interval_secs)
                    .bind(id)
                    .execute(&self.pool)
                    .await
                    .map(|_| ())
                    .map_err($crate::store::sql::map_err)
            }

            async fn decide_device_code(
                &self,
                id: uuid::Uuid,
                user_id: uuid::Uuid,
                approve: bool,
                totp_verified: bool,
                at: time::OffsetDateTime,
                event: $crate::domain::NewAuditEvent,
            ) -> $crate::store::StoreResult<()> {
                use $crate::store::sql::map_err;
                let mut tx = begin_write(&self.pool).await.map_err(map_err)?;
                let done = sqlx::query(
                    "update device_codes set status = $1, user_id = $2, totp_verified = $3 \
                     where id = $4 and status = 'pending' and expires_at > $5",
                )
                .bind(if approve { "approved" } else { "denied" })
                .bind(user_id)
                .bind(totp_verified)
                .bind(id)
                .bind(at)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                if done.rows_affected() == 0 {
                    return Err($crate::store::StoreError::Conflict);
                }
                append_in_tx(&mut tx, vec![event]).await?;
                tx.commit().await.map_err(map_err)
            }

            async fn redeem_device_code(
                &self,
                id: uuid::Uuid,
                session: &$crate::domain::Session,
                refresh_hash: &[u8],
                event: $crate::domain::NewAuditEvent,
            ) -> $crate::store::StoreResult<()> {
                use $crate::store::sql::map_err;
                let mut tx = begin_write(&self.pool).await.map_err(map_err)?;
                // The session first: device_codes.session_id references it. If the code
                // was already redeemed, the update below matches nothing and the whole
                // transaction, session included, is rolled back.
                insert_session(&mut tx, session, Some(refresh_hash)).await?;
                let done = sqlx::query(
                    "update device_codes set status = 'consumed', session_id = $1 \
                     where id = $2 and status = 'approved'",
                )
                .bind(session.id)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                if done.rows_affected() == 0 {
                    return Err($crate::store::StoreError::Conflict);
                }
                append_in_tx(&mut tx, vec![event]).await?;
                tx.commit().await.map_err(map_err)
            }

            async fn step_up_session(
                &self,
                id: uuid::Uuid,
                at: time::OffsetDateTime,
            ) -> $crate::store::StoreResult<()> {
                sqlx::query("update sessions set stepped_up_at = $1, totp_verified = true where id = $2")
                    .bind(at)
                    .bind(id)
                    .execute(&self.pool)
                    .await
                    .map(|_| ())
                    .map_err($crate::store::sql::map_err)
            }

            async fn throttle_attempt(
                &self,
                key: &str,
                rule: &$crate::store::people::ThrottleRule,
            ) -> $crate::store::StoreResult<$crate::domain::Attempt> {
                // One statement, so the row lock makes concurrent attempts count one by
                // one. n = this attempt's number in the window. If the key is blocked, it
                // stays blocked; otherwise an attempt over the limit is let through and
                // blocks the key for base * 2^(n - free - 1), capped.
                let (attempts, blocked_until_us): (i64, i64) = sqlx::query_as(
                    "insert into login_attempts (key, attempts, window_start_us, blocked_until_us) \
                     values ($1, 1, $2, case when 1 > $4 then $2 + $5 else 0 end) \
                     on conflict (key) do update set \
                       attempts = case when login_attempts.window_start_us < $3 then 1 \
                                  else login_attempts.attempts + 1 end, \
                       window_start_us = case when login_attempts.window_start_us < $3 then $2 \
                                  else login_attempts.window_start_us end, \
                       blocked_until_us = case \
                         when login_attempts.window_start_us >= $3 and login_attempts.blocked_until_us > $2 \
                           then login_attempts.blocked_until_us \
                         when (case when login_attempts.window_start_us < $3 then 1 \
                               else login_attempts.attempts + 1 end) > $4 \
                           then $2 + (case when login_attempts.attempts - $4 >= 30 then $6 \
                                 when ($5 << cast(login_attempts.attempts - $4 as integer)) > $6 then $6 \
                                 else ($5 << cast(login_attempts.attempts - $4 as integer)) end) \
                         else 0 end \
                     returning attempts, blocked_until_us",
                )
                .bind(key)
                .bind(rule.at_us)
                .bind(rule.window_start_cutoff_us)
                .bind(rule.free)
                .bind(rule.base_delay_us)
                .bind(rule.max_delay_us)
                .fetch_one(&self.pool)
                .await
                .map_err($crate::store::sql::map_err)?;
                Ok($crate::domain::Attempt { attempts, blocked_until_us })
            }

            async fn throttle_release(&self, key: &str) -> $crate::store::StoreResult<()> {
                sqlx::query("delete from login_attempts where key = $1")
                    .bind(key)
                    .execute(&self.pool)
                    .await
                    .map(|_| ())
                    .map_err($crate::store::sql::map_err)
            }

            async fn throttle_undo(&self, key: &str, free: i64) -> $crate::store::StoreResult<()> {
                sqlx::query(
                    "update login_attempts set attempts = attempts - 1, \
                     blocked_until_us = case when attempts - 1 <= $2 then 0 else blocked_until_us end \
                     where key = $1 and attempts > 0",
                )
                .bind(key)
                .bind(free)
                    .execute(&self.pool)
                    .await
                    .map(|_| ())
                    .map_err($crate::store::sql::map_err)
            }
        }
    };
}

pub(crate) use impl_sign_in_store;
