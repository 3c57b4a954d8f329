//! Persistence of escalations, their approvals and history, and grants.
//!
//! The decisions that must happen exactly once happen inside one transaction that first
//! takes the request's row lock (`update ... where state = 'pending' ... returning`):
//! two approvals that arrive together are counted one after the other, so a quorum
//! produces exactly one grant (and `grants.escalation_id` is unique as a backstop);
//! a decision on a request that is no longer pending changes nothing and answers
//! [`StoreError::Conflict`](super::StoreError::Conflict).

pub(crate) mod grants;

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{StoreError, StoreResult};
use crate::domain::{
    Approval, Escalation, EscalationEvent, EscalationState, Grant, NewAuditEvent, RequesterKind,
};

/// Which requests to list.
#[derive(Debug, Clone, Default)]
pub struct EscalationFilter {
    /// Only this state.
    pub state: Option<EscalationState>,
    /// Only this environment.
    pub environment: Option<String>,
    /// Only requests that would be held by this holder (`user:<id>` / `agent:<client_id>`).
    pub holder: Option<String>,
    /// At most this many, newest first.
    pub limit: u32,
}

/// Which grants to list.
#[derive(Debug, Clone, Default)]
pub struct GrantFilter {
    /// Only this holder (`user:<id>` / `agent:<client_id>`).
    pub holder: Option<String>,
    /// Only this environment.
    pub environment: Option<String>,
    /// Only grants active at this time.
    pub active_at: Option<OffsetDateTime>,
    /// At most this many, newest first.
    pub limit: u32,
}

/// What an approval did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApproveOutcome {
    /// Recorded; more approvals are needed.
    Recorded(Escalation),
    /// Recorded, and the quorum is complete: this grant now exists.
    Granted(Escalation, Box<Grant>),
    /// This person had already approved; nothing changed.
    AlreadyApproved(Escalation),
}

/// Builds the audit event of a change the store finds by itself (expiry, grant end).
pub type EventFor<T> = fn(&T) -> NewAuditEvent;

/// At most `requests` requests created by one holder in any `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreationLimit {
    /// Requests allowed per window.
    pub requests: u32,
    /// The sliding window.
    pub per: std::time::Duration,
}

/// What [`EscalationStore::create_escalation_within`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Creation {
    /// Recorded, with its events.
    Created,
    /// Nothing written: the holder is at its limit until this moment.
    Limited {
        /// When one more request will be accepted.
        retry_at: OffsetDateTime,
    },
}

/// Escalation persistence.
#[async_trait]
pub trait EscalationStore: Send + Sync {
    /// Record a new request, with its audit event. An auto-approved request comes with
    /// its grant and a second event.
    async fn create_escalation(
        &self,
        escalation: &Escalation,
        grant: Option<&Grant>,
        events: Vec<NewAuditEvent>,
    ) -> StoreResult<()>;
    /// As [`Self::create_escalation`], unless the request's holder already created
    /// `limit.requests` requests in the `limit.per` before the request's `created_at`;
    /// then nothing is written. Cancelled and decided requests count too. The count and
    /// the insert happen in one transaction that first takes the audit chain's lock (the
    /// one every audited change takes), so concurrent requests, from any replica, are
    /// counted one after the other and the limit holds exactly.
    async fn create_escalation_within(
        &self,
        escalation: &Escalation,
        grant: Option<&Grant>,
        events: Vec<NewAuditEvent>,
        limit: CreationLimit,
    ) -> StoreResult<Creation>;
    /// One request, with its approvals.
    async fn escalation(&self, id: Uuid) -> StoreResult<Escalation>;
    /// A request's history, oldest first.
    async fn escalation_history(&self, id: Uuid) -> StoreResult<Vec<EscalationEvent>>;
    /// Requests, newest first.
    async fn escalations(&self, filter: &EscalationFilter) -> StoreResult<Vec<Escalation>>;
    /// Record `approval` of a pending, unexpired request; complete it (state approved,
    /// a grant with id `grant_id` starting at `at`) when the quorum is reached.
    /// `on_approval` is always written; `on_grant` only with the grant.
    async fn approve_escalation(
        &self,
        id: Uuid,
        approval: &Approval,
        at: OffsetDateTime,
        grant_id: Uuid,
        on_approval: NewAuditEvent,
        on_grant: NewAuditEvent,
    ) -> StoreResult<ApproveOutcome>;
    /// End a pending request as denied or cancelled.
    async fn finish_escalation(
        &self,
        id: Uuid,
        state: EscalationState,
        by: &str,
        note: Option<&str>,
        at: OffsetDateTime,
        event: NewAuditEvent,
    ) -> StoreResult<Escalation>;
}

#[derive(sqlx::FromRow)]
pub(super) struct EscalationRow {
    id: Uuid,
    environment: String,
    scopes: String,
    duration_secs: i64,
    reason: String,
    requester_kind: String,
    requester: String,
    requester_user_id: Option<Uuid>,
    sponsor: Option<String>,
    sponsor_user_id: Option<Uuid>,
    holder: String,
    holder_actor: Option<String>,
    quorum: i64,
    state: String,
    created_at: OffsetDateTime,
    expires_at: OffsetDateTime,
    decided_at: Option<OffsetDateTime>,
    decided_by: Option<String>,
    decision_reason: Option<String>,
}

impl EscalationRow {
    pub(super) fn into_escalation(self, approvals: Vec<Approval>) -> StoreResult<Escalation> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("{what} of escalation {}", self.id));
        Ok(Escalation {
            scopes: serde_json::from_str(&self.scopes).map_err(|_| corrupt("scopes"))?,
            requester_kind: match self.requester_kind.as_str() {
                "person" => RequesterKind::Person,
                "agent" => RequesterKind::Agent,
                _ => return Err(corrupt("requester kind")),
            },
            state: EscalationState::parse(&self.state).ok_or_else(|| corrupt("state"))?,
            quorum: u32::try_from(self.quorum).map_err(|_| corrupt("quorum"))?,
            id: self.id,
            environment: self.environment,
            duration_secs: self.duration_secs,
            reason: self.reason,
            requester: self.requester,
            requester_user_id: self.requester_user_id,
            sponsor: self.sponsor,
            sponsor_user_id: self.sponsor_user_id,
            holder: self.holder,
            holder_actor: self.holder_actor,
            created_at: self.created_at,
            expires_at: self.expires_at,
            decided_at: self.decided_at,
            decided_by: self.decided_by,
            decision_reason: self.decision_reason,
            approvals,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct ApprovalRow {
    pub(super) approver_id: Uuid,
    pub(super) approver: String,
    pub(super) approved_at: OffsetDateTime,
}

#[derive(sqlx::FromRow)]
pub(super) struct EventRow {
    at: OffsetDateTime,
    kind: String,
    actor: String,
    note: Option<String>,
}

impl From<EventRow> for EscalationEvent {
    fn from(r: EventRow) -> Self {
        EscalationEvent {
            at: r.at,
            kind: r.kind,
            actor: r.actor,
            note: r.note,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct GrantRow {
    id: Uuid,
    escalation_id: Uuid,
    environment: String,
    scopes: String,
    holder: String,
    holder_actor: Option<String>,
    starts_at: OffsetDateTime,
    ends_at: OffsetDateTime,
    session_id: Option<Uuid>,
    revoked_at: Option<OffsetDateTime>,
    revoked_by: Option<String>,
    revoked_reason: Option<String>,
}

impl TryFrom<GrantRow> for Grant {
    type Error = StoreError;
    fn try_from(r: GrantRow) -> StoreResult<Grant> {
        Ok(Grant {
            scopes: serde_json::from_str(&r.scopes)
                .map_err(|_| StoreError::Corrupt(format!("scopes of grant {}", r.id)))?,
            id: r.id,
            escalation_id: r.escalation_id,
            environment: r.environment,
            holder: r.holder,
            holder_actor: r.holder_actor,
            starts_at: r.starts_at,
            ends_at: r.ends_at,
            session_id: r.session_id,
            revoked_at: r.revoked_at,
            revoked_by: r.revoked_by,
            revoked_reason: r.revoked_reason,
        })
    }
}

impl From<ApprovalRow> for Approval {
    fn from(r: ApprovalRow) -> Self {
        Approval {
            approver_id: r.approver_id,
            approver: r.approver,
            approved_at: r.approved_at,
        }
    }
}

pub(super) const ESCALATION_COLUMNS: &str = "id, environment, scopes, duration_secs, reason, requester_kind, \
     requester, requester_user_id, sponsor, sponsor_user_id, holder, holder_actor, quorum, state, created_at, \
     expires_at, decided_at, decided_by, decision_reason";
pub(super) const GRANT_COLUMNS: &str = "id, escalation_id, environment, scopes, holder, holder_actor, starts_at, \
     ends_at, session_id, revoked_at, revoked_by, revoked_reason";

/// Expand [`EscalationStore`] for a backend (uses `append_in_tx` of `impl_sql_store!`).
macro_rules! impl_escalation_store {
    ($store:ty, $db:ty) => {
        async fn esc_history(
            conn: &mut <$db as sqlx::Database>::Connection,
            id: uuid::Uuid,
            at: time::OffsetDateTime,
            kind: &str,
            actor: &str,
            note: Option<&str>,
        ) -> $crate::store::StoreResult<()> {
            sqlx::query(
                "insert into escalation_events (escalation_id, at, kind, actor, note) values ($1, $2, $3, $4, $5)",
            )
            .bind(id)
            .bind(at)
            .bind(kind)
            .bind(actor)
            .bind(note)
            .execute(&mut *conn)
            .await
            .map(|_| ())
            .map_err($crate::store::sql::map_err)
        }

        async fn esc_approvals(
            conn: &mut <$db as sqlx::Database>::Connection,
            id: uuid::Uuid,
        ) -> $crate::store::StoreResult<Vec<$crate::domain::Approval>> {
            let rows: Vec<$crate::store::escalations::ApprovalRow> = sqlx::query_as(
                "select approver_id, approver, approved_at from escalation_approvals \
                 where escalation_id = $1 order by approved_at, approver",
            )
            .bind(id)
            .fetch_all(&mut *conn)
            .await
            .map_err($crate::store::sql::map_err)?;
            Ok(rows.into_iter().map(Into::into).collect())
        }

        async fn esc_fetch(
            conn: &mut <$db as sqlx::Database>::Connection,
            id: uuid::Uuid,
        ) -> $crate::store::StoreResult<$crate::domain::Escalation> {
            let row: $crate::store::escalations::EscalationRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "select {} from escalations where id = $1",
                $crate::store::escalations::ESCALATION_COLUMNS
            )))
            .bind(id)
            .fetch_one(&mut *conn)
            .await
            .map_err($crate::store::sql::map_err)?;
            let approvals = esc_approvals(conn, id).await?;
            row.into_escalation(approvals)
        }

        async fn esc_insert_grant(
            conn: &mut <$db as sqlx::Database>::Connection,
            g: &$crate::domain::Grant,
        ) -> $crate::store::StoreResult<()> {
            sqlx::query(
                "insert into grants (id, escalation_id, environment, scopes, holder, holder_actor, starts_at, \
                 ends_at) values ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(g.id)
            .bind(g.escalation_id)
            .bind(&g.environment)
            .bind(serde_json::to_string(&g.scopes).unwrap_or_default())
            .bind(&g.holder)
            .bind(&g.holder_actor)
            .bind(g.starts_at)
            .bind(g.ends_at)
            .execute(&mut *conn)
            .await
            .map(|_| ())
            .map_err($crate::store::sql::map_err)
        }

        async fn esc_insert(
            tx: &mut <$db as sqlx::Database>::Connection,
            e: &$crate::domain::Escalation,
            grant: Option<&$crate::domain::Grant>,
            events: Vec<$crate::domain::NewAuditEvent>,
        ) -> $crate::store::StoreResult<()> {
            use $crate::store::sql::map_err;
            sqlx::query(
                "insert into escalations (id, environment, scopes, duration_secs, reason, requester_kind, \
                 requester, requester_user_id, sponsor, sponsor_user_id, holder, holder_actor, quorum, state, \
                 created_at, expires_at, decided_at, decided_by) \
                 values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)",
            )
            .bind(e.id)
            .bind(&e.environment)
            .bind(serde_json::to_string(&e.scopes).unwrap_or_default())
            .bind(e.duration_secs)
            .bind(&e.reason)
            .bind(e.requester_kind.as_str())
            .bind(&e.requester)
            .bind(e.requester_user_id)
            .bind(&e.sponsor)
            .bind(e.sponsor_user_id)
            .bind(&e.holder)
            .bind(&e.holder_actor)
            .bind(i64::from(e.quorum))
            .bind(e.state.as_str())
            .bind(e.created_at)
            .bind(e.expires_at)
            .bind(e.decided_at)
            .bind(&e.decided_by)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
            let actor = e.sponsor.as_ref().map_or_else(
                || e.requester.clone(),
                |s| format!("{} for {s}", e.requester),
            );
            esc_history(&mut *tx, e.id, e.created_at, "created", &actor, Some(&e.reason)).await?;
            if let Some(g) = grant {
                esc_insert_grant(&mut *tx, g).await?;
                esc_history(&mut *tx, e.id, g.starts_at, "approved", "policy:auto_approve", None).await?;
            }
            append_in_tx(&mut *tx, events).await?;
            Ok(())
        }

        async fn esc_fetch_grant(
            conn: &mut <$db as sqlx::Database>::Connection,
            id: uuid::Uuid,
        ) -> $crate::store::StoreResult<$crate::domain::Grant> {
            let row: $crate::store::escalations::GrantRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "select {} from grants where id = $1",
                $crate::store::escalations::GRANT_COLUMNS
            )))
            .bind(id)
            .fetch_one(&mut *conn)
            .await
            .map_err($crate::store::sql::map_err)?;
            row.try_into()
        }

        /// Take the row lock of a pending, unexpired request; `Conflict` if it is not
        /// pending (or past its deadline), `NotFound` if it does not exist.
        async fn esc_lock_pending(
            conn: &mut <$db as sqlx::Database>::Connection,
            id: uuid::Uuid,
            at: time::OffsetDateTime,
        ) -> $crate::store::StoreResult<$crate::domain::Escalation> {
            use $crate::store::sql::map_err;
            let locked: Option<(uuid::Uuid,)> = sqlx::query_as(
                "update escalations set state = state where id = $1 and state = 'pending' and expires_at > $2 \
                 returning id",
            )
            .bind(id)
            .bind(at)
            .fetch_optional(&mut *conn)
            .await
            .map_err(map_err)?;
            match locked {
                // Checked again here: SQLite compares the stored timestamps as text, which
                // is not exact within one second.
                Some(_) => {
                    let e = esc_fetch(conn, id).await?;
                    if e.expires_at <= at {
                        return Err($crate::store::StoreError::Conflict);
                    }
                    Ok(e)
                }
                None => {
                    // Exists but is decided or past its deadline: Conflict; else NotFound.
                    esc_fetch(conn, id).await?;
                    Err($crate::store::StoreError::Conflict)
                }
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::escalations::EscalationStore for $store {
            async fn create_escalation(
                &self,
                e: &$crate::domain::Escalation,
                grant: Option<&$crate::domain::Grant>,
                events: Vec<$crate::domain::NewAuditEvent>,
            ) -> $crate::store::StoreResult<()> {
                use $crate::store::sql::map_err;
                let mut tx = begin_write(&self.pool).await.map_err(map_err)?;
                esc_insert(&mut tx, e, grant, events).await?;
                tx.commit().await.map_err(map_err)
            }

            async fn create_escalation_within(
                &self,
                e: &$crate::domain::Escalation,
                grant: Option<&$crate::domain::Grant>,
                events: Vec<$crate::domain::NewAuditEvent>,
                limit: $crate::store::escalations::CreationLimit,
            ) -> $crate::store::StoreResult<$crate::store::escalations::Creation> {
                use $crate::store::sql::map_err;
                let mut tx = begin_write(&self.pool).await.map_err(map_err)?;
                // The audit chain's lock first (the row lock on Postgres, the write lock on
                // SQLite): creations of every replica are counted one after the other.
                sqlx::query("update audit_head set seq = seq where id = 1")
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                // Two seconds of slack: SQLite compares the stored timestamps as text; the
                // exact window is applied to the values read.
                let since = e.created_at - limit.per - std::time::Duration::from_secs(2);
                let recent: Vec<(time::OffsetDateTime,)> = sqlx::query_as(
                    "select created_at from escalations where holder = $1 and created_at > $2 \
                     order by created_at desc limit $3",
                )
                .bind(&e.holder)
                .bind(since)
                .bind(i64::from(limit.requests.max(1)))
                .fetch_all(&mut *tx)
                .await
                .map_err(map_err)?;
                let recent: Vec<time::OffsetDateTime> = recent.into_iter().map(|(t,)| t).collect();
                if let Some(retry_at) =
                    $crate::policy::escalation::creation_retry_at(&recent, e.created_at, limit.requests, limit.per)
                {
                    tx.rollback().await.map_err(map_err)?;
                    return Ok($crate::store::escalations::Creation::Limited { retry_at });
                }
                esc_insert(&mut tx, e, grant, events).await?;
                tx.commit().await.map_err(map_err)?;
                Ok($crate::store::escalations::Creation::Created)
            }

            async fn escalation(&self, id: uuid::Uuid) -> $crate::store::StoreResult<$crate::domain::Escalation> {
                let mut conn = self.pool.acquire().await.map_err($crate::store::sql::map_err)?;
                esc_fetch(&mut conn, id).await
            }

            async fn escalation_history(
                &self,
                id: uuid::Uuid,
            ) -> $crate::store::StoreResult<Vec<$crate::domain::EscalationEvent>> {
                let rows: Vec<$crate::store::escalations::EventRow> = sqlx::query_as(
                    "select at, kind, actor, note from escalation_events where escalation_id = $1 order by id",
                )
                .bind(id)
                .fetch_all(&self.pool)
                .await
                .map_err($crate::store::sql::map_err)?;
                Ok(rows.into_iter().map(Into::into).collect())
            }

            async fn escalations(
                &self,
                filter: &$crate::store::escalations::EscalationFilter,
            ) -> $crate::store::StoreResult<Vec<$crate::domain::Escalation>> {
                use $crate::store::sql::map_err;
                let mut qb = sqlx::QueryBuilder::<$db>::new(format!(
                    "select {} from escalations where 1 = 1",
                    $crate::store::escalations::ESCALATION_COLUMNS
                ));
                if let Some(state) = filter.state {
                    qb.push(" and state = ").push_bind(state.as_str());
                }
                if let Some(env) = &filter.environment {
                    qb.push(" and environment = ").push_bind(env.clone());
                }
                if let Some(holder) = &filter.holder {
                    qb.push(" and holder = ").push_bind(holder.clone());
                }
                qb.push(" order by created_at desc limit ")
                    .push_bind(i64::from(filter.limit.clamp(1, 1000)));
                let mut conn = self.pool.acquire().await.map_err(map_err)?;
                let rows: Vec<$crate::store::escalations::EscalationRow> =
                    qb.build_query_as().fetch_all(&mut *conn).await.map_err(map_err)?;
                let mut out = Vec::with_capacity(rows.len());
                for row in rows {
                    let approvals = esc_approvals(&mut conn, $crate::store::escalations::row_id(&row)).await?;
                    out.push(row.into_escalation(approvals)?);
                }
                Ok(out)
            }

            async fn approve_escalation(
                &self,
                id: uuid::Uuid,
                approval: &$crate::domain::Approval,
                at: time::OffsetDateTime,
                grant_id: uuid::Uuid,
                on_approval: $crate::domain::NewAuditEvent,
                on_grant: $crate::domain::NewAuditEvent,
            ) -> $crate::store::StoreResult<$crate::store::escalations::ApproveOutcome> {
                use $crate::store::escalations::ApproveOutcome;
                use $crate::store::sql::map_err;
                let mut tx = begin_write(&self.pool).await.map_err(map_err)?;
                let current = esc_lock_pending(&mut tx, id, at).await?;
                if current.approvals.iter().any(|a| a.approver_id == approval.approver_id) {
                    return Ok(ApproveOutcome::AlreadyApproved(current));
                }
                sqlx::query(
                    "insert into escalation_approvals (escalation_id, approver_id, approver, approved_at) \
                     values ($1, $2, $3, $4)",
                )
                .bind(id)
                .bind(approval.approver_id)
                .bind(&approval.approver)
                .bind(approval.approved_at)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                esc_history(&mut tx, id, at, "approval", &approval.approver, None).await?;
                let approvers: Vec<uuid::Uuid> = current
                    .approvals
                    .iter()
                    .map(|a| a.approver_id)
                    .chain(std::iter::once(approval.approver_id))
                    .collect();
                let done = $crate::policy::escalation::quorum_reached(
                    current.quorum,
                    &approvers,
                    current.sponsor_user_id,
                );
                if !done {
                    append_in_tx(&mut tx, vec![on_approval]).await?;
                    let e = esc_fetch(&mut tx, id).await?;
                    tx.commit().await.map_err(map_err)?;
                    return Ok(ApproveOutcome::Recorded(e));
                }
                sqlx::query(
                    "update escalations set state = 'approved', decided_at = $1, decided_by = $2 where id = $3",
                )
                .bind(at)
                .bind(&approval.approver)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                let grant = $crate::policy::escalation::grant_for(&current, grant_id, at);
                esc_insert_grant(&mut tx, &grant).await?;
                esc_history(&mut tx, id, at, "approved", &approval.approver, None).await?;
                // The caller built `on_grant` from the request as it read it, before this
                // lock: an approval committed since (a concurrent approver's) is known only
                // here, and the trail must name every approver the quorum counted.
                let approver_names: Vec<String> = current
                    .approvals
                    .iter()
                    .map(|a| a.approver.clone())
                    .chain(std::iter::once(approval.approver.clone()))
                    .collect();
                let on_grant = on_grant.detail("approvers", approver_names);
                append_in_tx(&mut tx, vec![on_approval, on_grant]).await?;
                let e = esc_fetch(&mut tx, id).await?;
                tx.commit().await.map_err(map_err)?;
                Ok(ApproveOutcome::Granted(e, Box::new(grant)))
            }

            async fn finish_escalation(
                &self,
                id: uuid::Uuid,
                state: $crate::domain::EscalationState,
                by: &str,
                note: Option<&str>,
                at: time::OffsetDateTime,
                event: $crate::domain::NewAuditEvent,
            ) -> $crate::store::StoreResult<$crate::domain::Escalation> {
                use $crate::store::sql::map_err;
                let mut tx = begin_write(&self.pool).await.map_err(map_err)?;
                esc_lock_pending(&mut tx, id, at).await?;
                sqlx::query(
                    "update escalations set state = $1, decided_at = $2, decided_by = $3, decision_reason = $4 \
                     where id = $5",
                )
                .bind(state.as_str())
                .bind(at)
                .bind(by)
                .bind(note)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                esc_history(&mut tx, id, at, state.as_str(), by, note).await?;
                append_in_tx(&mut tx, vec![event]).await?;
                let e = esc_fetch(&mut tx, id).await?;
                tx.commit().await.map_err(map_err)?;
                Ok(e)
            }
        }
    };
}

pub(super) use impl_escalation_store;

pub(super) fn row_id(row: &EscalationRow) -> Uuid {
    row.id
}
