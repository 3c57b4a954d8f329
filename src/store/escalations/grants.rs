//! The grant half of the escalation store: ending, finding, binding and revoking grants
//! (see [`super::EscalationStore`]).

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{EventFor, GrantFilter};
use crate::domain::{Escalation, Grant, NewAuditEvent};
use crate::store::StoreResult;

/// Grants and the ends of requests: expiring, ending, finding, binding and revoking.
#[async_trait]
pub trait GrantStore: Send + Sync {
    /// Expire up to `limit` pending requests whose deadline has passed, each with its
    /// own audit event. Safe to run in several processes at once: each expires once.
    async fn expire_escalations(
        &self,
        at: OffsetDateTime,
        limit: u32,
        event: EventFor<Escalation>,
    ) -> StoreResult<Vec<Escalation>>;
    /// Record the end of up to `limit` grants whose time is up (once each).
    async fn end_grants(
        &self,
        at: OffsetDateTime,
        limit: u32,
        event: EventFor<Grant>,
    ) -> StoreResult<Vec<Grant>>;
    /// One grant.
    async fn grant(&self, id: Uuid) -> StoreResult<Grant>;
    /// The grant a request became, if any.
    async fn grant_of_escalation(&self, escalation_id: Uuid) -> StoreResult<Option<Grant>>;
    /// Grants, newest first.
    async fn grants(&self, filter: &GrantFilter) -> StoreResult<Vec<Grant>>;
    /// Bind a grant to the session that first used it. Binding again to the same session
    /// is a no-op; a grant bound to another session is a `Conflict`.
    async fn bind_grant_session(
        &self,
        grant_id: Uuid,
        session_id: Uuid,
        at: OffsetDateTime,
        event: NewAuditEvent,
    ) -> StoreResult<()>;
    /// Revoke a grant that is neither revoked nor ended (`Conflict` otherwise).
    async fn revoke_grant(
        &self,
        id: Uuid,
        by: &str,
        reason: &str,
        at: OffsetDateTime,
        event: NewAuditEvent,
    ) -> StoreResult<Grant>;
}

/// Expand [`GrantStore`] for a backend, in the module where `impl_escalation_store!` was
/// expanded (it shares that macro's helper functions).
macro_rules! impl_grant_store {
    ($store:ty, $db:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::escalations::grants::GrantStore for $store {
            async fn expire_escalations(
                &self,
                at: time::OffsetDateTime,
                limit: u32,
                event: $crate::store::escalations::EventFor<$crate::domain::Escalation>,
            ) -> $crate::store::StoreResult<Vec<$crate::domain::Escalation>> {
                use $crate::store::sql::map_err;
                let mut tx = begin_write(&self.pool).await.map_err(map_err)?;
                // The update takes each row's lock; a row another process expired first no
                // longer matches `state = 'pending'`, so each request expires once.
                let ids: Vec<(uuid::Uuid,)> = sqlx::query_as(
                    "update escalations set state = 'expired', decided_at = $1, decided_by = 'system' \
                     where id in (select id from escalations where state = 'pending' and expires_at <= $1 \
                     order by expires_at limit $2) and state = 'pending' returning id",
                )
                .bind(at)
                .bind(i64::from(limit.max(1)))
                .fetch_all(&mut *tx)
                .await
                .map_err(map_err)?;
                let mut out = Vec::with_capacity(ids.len());
                let mut events = Vec::with_capacity(ids.len());
                for (id,) in ids {
                    esc_history(&mut tx, id, at, "expired", "system", None).await?;
                    let e = esc_fetch(&mut tx, id).await?;
                    events.push(event(&e));
                    out.push(e);
                }
                append_in_tx(&mut tx, events).await?;
                tx.commit().await.map_err(map_err)?;
                Ok(out)
            }

            async fn end_grants(
                &self,
                at: time::OffsetDateTime,
                limit: u32,
                event: $crate::store::escalations::EventFor<$crate::domain::Grant>,
            ) -> $crate::store::StoreResult<Vec<$crate::domain::Grant>> {
                use $crate::store::sql::map_err;
                let mut tx = begin_write(&self.pool).await.map_err(map_err)?;
                let ids: Vec<(uuid::Uuid,)> = sqlx::query_as(
                    "update grants set end_recorded = true \
                     where id in (select id from grants where end_recorded = false and ends_at <= $1 \
                     and revoked_at is null order by ends_at limit $2) and end_recorded = false returning id",
                )
                .bind(at)
                .bind(i64::from(limit.max(1)))
                .fetch_all(&mut *tx)
                .await
                .map_err(map_err)?;
                let mut out = Vec::with_capacity(ids.len());
                let mut events = Vec::with_capacity(ids.len());
                for (id,) in ids {
                    let g = esc_fetch_grant(&mut tx, id).await?;
                    esc_history(&mut tx, g.escalation_id, at, "grant_ended", "system", None).await?;
                    events.push(event(&g));
                    out.push(g);
                }
                append_in_tx(&mut tx, events).await?;
                tx.commit().await.map_err(map_err)?;
                Ok(out)
            }

            async fn grant(&self, id: uuid::Uuid) -> $crate::store::StoreResult<$crate::domain::Grant> {
                let mut conn = self.pool.acquire().await.map_err($crate::store::sql::map_err)?;
                esc_fetch_grant(&mut conn, id).await
            }

            async fn grant_of_escalation(
                &self,
                escalation_id: uuid::Uuid,
            ) -> $crate::store::StoreResult<Option<$crate::domain::Grant>> {
                let row: Option<$crate::store::escalations::GrantRow> =
                    sqlx::query_as(sqlx::AssertSqlSafe(format!(
                        "select {} from grants where escalation_id = $1",
                        $crate::store::escalations::GRANT_COLUMNS
                    )))
                    .bind(escalation_id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err($crate::store::sql::map_err)?;
                row.map(TryInto::try_into).transpose()
            }

            async fn grants(
                &self,
                filter: &$crate::store::escalations::GrantFilter,
            ) -> $crate::store::StoreResult<Vec<$crate::domain::Grant>> {
                use $crate::store::sql::map_err;
                let mut qb = sqlx::QueryBuilder::<$db>::new(format!(
                    "select {} from grants where 1 = 1",
                    $crate::store::escalations::GRANT_COLUMNS
                ));
                if let Some(holder) = &filter.holder {
                    qb.push(" and holder = ").push_bind(holder.clone());
                }
                if let Some(env) = &filter.environment {
                    qb.push(" and environment = ").push_bind(env.clone());
                }
                if let Some(at) = filter.active_at {
                    qb.push(" and revoked_at is null and starts_at <= ")
                        .push_bind(at)
                        .push(" and ends_at > ")
                        .push_bind(at);
                }
                qb.push(" order by starts_at desc limit ")
                    .push_bind(i64::from(filter.limit.clamp(1, 1000)));
                let rows: Vec<$crate::store::escalations::GrantRow> =
                    qb.build_query_as().fetch_all(&self.pool).await.map_err(map_err)?;
                rows.into_iter().map(TryInto::try_into).collect()
            }

            async fn bind_grant_session(
                &self,
                grant_id: uuid::Uuid,
                session_id: uuid::Uuid,
                at: time::OffsetDateTime,
                event: $crate::domain::NewAuditEvent,
            ) -> $crate::store::StoreResult<()> {
                use $crate::store::sql::map_err;
                let mut tx = begin_write(&self.pool).await.map_err(map_err)?;
                let g = esc_fetch_grant(&mut tx, grant_id).await?;
                if g.session_id == Some(session_id) {
                    return Ok(());
                }
                let done = sqlx::query(
                    "update grants set session_id = $1 where id = $2 and session_id is null \
                     and revoked_at is null and ends_at > $3",
                )
                .bind(session_id)
                .bind(grant_id)
                .bind(at)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                if done.rows_affected() != 1 {
                    return Err($crate::store::StoreError::Conflict);
                }
                esc_history(&mut tx, g.escalation_id, at, "grant_bound", "system", None).await?;
                append_in_tx(&mut tx, vec![event]).await?;
                tx.commit().await.map_err(map_err)
            }

            async fn revoke_grant(
                &self,
                id: uuid::Uuid,
                by: &str,
                reason: &str,
                at: time::OffsetDateTime,
                event: $crate::domain::NewAuditEvent,
            ) -> $crate::store::StoreResult<$crate::domain::Grant> {
                use $crate::store::sql::map_err;
                let mut tx = begin_write(&self.pool).await.map_err(map_err)?;
                let done = sqlx::query(
                    "update grants set revoked_at = $1, revoked_by = $2, revoked_reason = $3 \
                     where id = $4 and revoked_at is null and ends_at > $1",
                )
                .bind(at)
                .bind(by)
                .bind(reason)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                let g = esc_fetch_grant(&mut tx, id).await?;
                if done.rows_affected() != 1 {
                    return Err($crate::store::StoreError::Conflict);
                }
                esc_history(&mut tx, g.escalation_id, at, "grant_revoked", by, Some(reason)).await?;
                append_in_tx(&mut tx, vec![event]).await?;
                tx.commit().await.map_err(map_err)?;
                Ok(g)
            }
        }
    };
}

pub(crate) use impl_grant_store;
