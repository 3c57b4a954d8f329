//! Escalations and grants on the wire: `/v1/escalations` and `/v1/grants`.
//!
//! One request (`GET`, `POST`, a decision) is shown in the order of its fields: the
//! request's own, then what the caller may see of it. Lists always went through a
//! `serde_json::Value`, so their items are sent [`Sorted`]. Requests are read with
//! `deny_unknown_fields`, as their handlers always did.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use super::Sorted;
use crate::domain::{EscalationState, RequesterKind};

/// `POST /v1/escalations`. Members alphabetical (the CLI built it with `json!`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEscalation {
    /// How long the grant should last once approved.
    pub duration: DurationField,
    /// Environment.
    pub environment: String,
    /// Why (shown to approvers).
    pub reason: String,
    /// Scopes asked for.
    pub scopes: Vec<String>,
}

/// A duration as `"30m"` or a number of seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DurationField {
    /// Seconds.
    Seconds(u64),
    /// `30m`, `2h`, `90s`.
    Text(String),
}

/// `POST /v1/escalations/{id}/approve`: the approver's fresh TOTP code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approve {
    /// The code.
    pub totp: String,
}

/// `POST /v1/escalations/{id}/deny` and `POST /v1/grants/{id}/revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reason {
    /// Why.
    pub reason: String,
}

/// `GET /v1/escalations?pending=true&environment=E&limit=N`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationQuery {
    /// Only requests still waiting for a decision.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
    /// Only this environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// At most this many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// `GET /v1/escalations/{id}?wait=N`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    /// Seconds to wait for the request to leave `pending`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<u64>,
}

/// `GET /v1/grants?active=true&environment=E`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantQuery {
    /// Only grants in force now.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub active: bool,
    /// Only this environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
}

/// An escalation request with what the caller may see of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EscalationView {
    /// Id.
    pub id: Uuid,
    /// Target environment.
    pub environment: String,
    /// Scopes asked for.
    pub scopes: Vec<String>,
    /// How long the grant lasts once approved (already capped).
    pub duration_secs: i64,
    /// Why.
    pub reason: String,
    /// Person or agent.
    pub requester_kind: RequesterKind,
    /// Username, agent client id, or `process:NAME`.
    pub requester: String,
    /// The requesting person's id.
    pub requester_user_id: Option<Uuid>,
    /// The person behind a process, or a registered agent's owner.
    pub sponsor: Option<String>,
    /// The sponsor's id.
    pub sponsor_user_id: Option<Uuid>,
    /// Who will hold the grant: `user:<id>` or `agent:<client_id>`.
    pub holder: String,
    /// For a delegated process: the only actor the grant covers.
    pub holder_actor: Option<String>,
    /// Distinct approvals needed.
    pub quorum: u32,
    /// Where it stands (as stored: an overdue `pending` one is expired all the same).
    pub state: EscalationState,
    /// Created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Pending until.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// When it left `pending`.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub decided_at: Option<OffsetDateTime>,
    /// Who ended it.
    pub decided_by: Option<String>,
    /// The denial or cancellation reason.
    pub decision_reason: Option<String>,
    /// Approvals so far, oldest first.
    pub approvals: Vec<Approval>,
    /// Its destructive scopes.
    pub destructive_scopes: Vec<String>,
    /// Its grant, once approved.
    pub grant: Option<GrantView>,
    /// Its history, oldest first.
    pub history: Vec<HistoryEntry>,
    /// The approvals page for it.
    pub url: String,
    /// Whether the duration asked for was cut to the environment's maximum (sent only
    /// when it was).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duration_capped: bool,
    /// A requesting registered agent's owner (sent only for those).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// One approval of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// The approver's id.
    pub approver_id: Uuid,
    /// Their username.
    pub approver: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub approved_at: OffsetDateTime,
}

/// One step in a request's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// `created`, `approval`, `approved`, `denied`, `cancelled`, `expired`, ...
    pub kind: String,
    /// Who.
    pub actor: String,
    /// A reason, if any.
    pub note: Option<String>,
}

/// A grant as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantView {
    /// Id (the `grant` claim of tokens minted under it).
    pub id: Uuid,
    /// The request it came from.
    pub escalation_id: Uuid,
    /// Environment.
    pub environment: String,
    /// Scopes covered.
    pub scopes: Vec<String>,
    /// `user:<id>` or `agent:<client_id>`.
    pub holder: String,
    /// For a delegated process: the only actor it covers.
    pub holder_actor: Option<String>,
    /// Start.
    #[serde(with = "time::serde::rfc3339")]
    pub starts_at: OffsetDateTime,
    /// End.
    #[serde(with = "time::serde::rfc3339")]
    pub ends_at: OffsetDateTime,
    /// The session a person's prod-tier grant is bound to.
    pub session_id: Option<Uuid>,
    /// When revoked.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    /// By whom.
    pub revoked_by: Option<String>,
    /// Why.
    pub revoked_reason: Option<String>,
    /// `active`, `revoked` or `ended`.
    pub status: Cow<'static, str>,
    /// Who holds it, readable (`bob`, `agent <client id>`).
    pub holder_name: String,
}

/// `GET /v1/escalations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EscalationList {
    /// Newest first.
    pub escalations: Vec<Sorted<EscalationView>>,
}

/// `GET /v1/grants`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantList {
    /// Newest first.
    pub grants: Vec<Sorted<GrantView>>,
}

impl From<&crate::domain::Approval> for Approval {
    fn from(a: &crate::domain::Approval) -> Approval {
        Approval {
            approver_id: a.approver_id,
            approver: a.approver.clone(),
            approved_at: a.approved_at,
        }
    }
}

impl From<crate::domain::EscalationEvent> for HistoryEntry {
    fn from(e: crate::domain::EscalationEvent) -> HistoryEntry {
        HistoryEntry {
            at: e.at,
            kind: e.kind,
            actor: e.actor,
            note: e.note,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::compact;
    use serde_json::json;

    fn t() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap()
    }

    fn grant() -> GrantView {
        GrantView {
            id: Uuid::nil(),
            escalation_id: Uuid::nil(),
            environment: "prod".into(),
            scopes: vec!["db:drop".into()],
            holder: "user:x".into(),
            holder_actor: None,
            starts_at: t(),
            ends_at: t(),
            session_id: None,
            revoked_at: None,
            revoked_by: None,
            revoked_reason: None,
            status: "active".into(),
            holder_name: "bob".into(),
        }
    }

    fn view() -> EscalationView {
        EscalationView {
            id: Uuid::nil(),
            environment: "prod".into(),
            scopes: vec!["db:drop".into()],
            duration_secs: 600,
            reason: "why".into(),
            requester_kind: RequesterKind::Person,
            requester: "bob".into(),
            requester_user_id: Some(Uuid::nil()),
            sponsor: None,
            sponsor_user_id: None,
            holder: "user:x".into(),
            holder_actor: None,
            quorum: 1,
            state: EscalationState::Approved,
            created_at: t(),
            expires_at: t(),
            decided_at: Some(t()),
            decided_by: Some("alice".into()),
            decision_reason: None,
            approvals: vec![Approval {
                approver_id: Uuid::nil(),
                approver: "alice".into(),
                approved_at: t(),
            }],
            destructive_scopes: vec!["db:drop".into()],
            grant: Some(grant()),
            history: vec![HistoryEntry {
                at: t(),
                kind: "created".into(),
                actor: "bob".into(),
                note: None,
            }],
            url: "u".into(),
            duration_capped: false,
            owner: None,
        }
    }

    #[test]
    fn one_request_keeps_its_field_order_its_nulls_and_its_optional_members() {
        let text = compact(&view());
        assert!(text.starts_with(r#"{"id":"#), "{text}");
        assert!(
            text.contains(r#""sponsor":null,"sponsor_user_id":null"#),
            "{text}"
        );
        assert!(
            text.contains(r#""grant":{"id":"00000000-0000-0000-0000-000000000000","escalation_id""#),
            "{text}"
        );
        assert!(
            text.contains(r#""status":"active","holder_name":"bob"}"#),
            "{text}"
        );
        assert!(text.ends_with(r#""url":"u"}"#), "{text}");
        let mut capped = view();
        capped.duration_capped = true;
        capped.owner = Some("dave".into());
        assert!(compact(&capped).ends_with(r#""url":"u","duration_capped":true,"owner":"dave"}"#));
        let back: EscalationView = serde_json::from_str(&compact(&capped)).unwrap();
        assert_eq!(back, capped);
    }

    #[test]
    fn lists_come_out_sorted_as_they_always_did() {
        let list = EscalationList {
            escalations: vec![Sorted(view())],
        };
        let value = serde_json::to_value(view()).unwrap();
        assert_eq!(compact(&list), compact(&json!({ "escalations": [value] })));
        let grants = GrantList {
            grants: vec![Sorted(grant())],
        };
        let value = serde_json::to_value(grant()).unwrap();
        assert_eq!(compact(&grants), compact(&json!({ "grants": [value] })));
    }

    #[test]
    fn a_duration_is_text_or_seconds() {
        let body: NewEscalation =
            serde_json::from_str(r#"{"environment":"prod","scopes":[],"duration":600,"reason":"r"}"#)
                .unwrap();
        assert_eq!(body.duration, DurationField::Seconds(600));
        let body = NewEscalation {
            duration: DurationField::Text("30m".into()),
            environment: "prod".into(),
            reason: "r".into(),
            scopes: vec!["db:drop".into()],
        };
        assert_eq!(
            compact(&body),
            compact(
                &json!({ "environment": "prod", "scopes": ["db:drop"], "duration": "30m", "reason": "r" })
            )
        );
    }
}
