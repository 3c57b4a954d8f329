//! Escalations: requests for production or destructive access, their human approval,
//! the grants they become, and the background task that expires them.
//!
//! The rules are pure functions in [`crate::policy::escalation`]; the exactly-once
//! state changes are single transactions in the store ([`crate::store::EscalationStore`]).
//! This module applies the rules to an authenticated caller ([`crate::auth::Principal`]),
//! checks each approver's fresh TOTP code, and announces what happened (audit trail,
//! local waiters, webhooks).

mod decisions;
mod grants;
mod requests;
mod sweeper;
mod views;

pub use decisions::{approve, cancel, deny};
pub use grants::{covering_grant, revoke_grant};
pub use requests::{NewRequest, create};
pub use sweeper::{spawn_sweeper, sweep};
pub use views::{EscalationView, GrantView, ListQuery, get, grants, list, page_url};

use std::time::Duration;

use crate::domain::{Escalation, Grant, RequesterKind};
use crate::people::SignInError;
use crate::policy::escalation as rules;
use crate::state::AppState;
use crate::store::StoreError;

/// Longest `?wait=` a caller may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// How often a waiting request re-reads the store (changes made by other processes).
const WAIT_POLL: Duration = Duration::from_millis(500);

/// How often the background task looks for expired requests and ended grants.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Most rows one sweep handles (the rest wait for the next tick).
const SWEEP_BATCH: u32 = 200;

/// Most requests one holder may have pending at once: enough for any real need, and a
/// bound on what a misbehaving agent can put in front of approvers (and their webhooks).
pub const MAX_PENDING_PER_HOLDER: usize = 20;

/// Most requests or grants one list returns.
pub const MAX_LIST: u32 = 200;

/// Why an escalation call failed. Each maps to one HTTP answer.
#[derive(Debug)]
pub enum EscalationError {
    /// 401.
    Unauthenticated,
    /// 403 with the reason.
    Forbidden(String),
    /// 400 with what to change.
    BadRequest(String),
    /// 404.
    NotFound,
    /// 404: no such environment.
    UnknownEnvironment,
    /// 409: the request is no longer pending (or the grant no longer active).
    Conflict(String),
    /// 429: too many requests created lately; try again in `retry_after_secs`.
    RateLimited {
        /// What happened and when to try again.
        message: String,
        /// Seconds until one more request is accepted (at least 1).
        retry_after_secs: u64,
    },
    /// The approver's TOTP code was refused (401 / 429 / 503).
    Totp(SignInError),
    /// 503: fail closed.
    Unavailable,
}

impl From<crate::auth::AuthError> for EscalationError {
    fn from(e: crate::auth::AuthError) -> Self {
        match e {
            crate::auth::AuthError::Unauthenticated => EscalationError::Unauthenticated,
            crate::auth::AuthError::Unavailable => EscalationError::Unavailable,
        }
    }
}

fn store_err(e: StoreError) -> EscalationError {
    match e {
        StoreError::NotFound => EscalationError::NotFound,
        other => {
            tracing::error!(error = ?other, "escalation store call failed");
            EscalationError::Unavailable
        }
    }
}

/// Queue webhook notifications (never blocks, never fails the caller).
fn announce(
    state: &AppState,
    event: &'static str,
    e: &Escalation,
    grant: Option<&Grant>,
    actor: Option<&str>,
) {
    let requester = match (&e.requester_kind, &e.sponsor) {
        (RequesterKind::Person, _) => e.requester.clone(),
        (RequesterKind::Agent, Some(s)) => format!("{} (for {s})", e.requester),
        (RequesterKind::Agent, None) => format!("agent {}", e.requester),
    };
    state.notifier.notify(crate::notify::Notification {
        event,
        escalation_id: e.id,
        environment: e.environment.clone(),
        scopes: e.scopes.clone(),
        destructive_scopes: rules::destructive_of(&state.settings, &e.scopes),
        requester,
        sponsor: e.sponsor.clone(),
        reason: e.reason.clone(),
        state: e.state.as_str().to_string(),
        actor: actor.map(str::to_string),
        grant_id: grant.map(|g| g.id),
        grant_ends_at: grant.map(|g| g.ends_at),
        duration_secs: e.duration_secs.max(0) as u64,
        url: page_url(state, e.id),
    });
}

/// Check a free-text note (denial or revocation reason): trimmed, not empty, one line of
/// plain text, at most [`rules::MAX_NOTE_CHARS`]. `what` names it in the error. Public
/// so the fuzz targets run this very code.
pub fn check_note(raw: &str, what: &str) -> Result<String, EscalationError> {
    let t = raw.trim();
    if t.is_empty() {
        return Err(EscalationError::BadRequest(format!("give a {what}")));
    }
    if rules::has_control_chars(t) {
        return Err(EscalationError::BadRequest(format!(
            "the {what} must be plain text on one line, without control characters"
        )));
    }
    if t.chars().count() > rules::MAX_NOTE_CHARS {
        return Err(EscalationError::BadRequest(format!(
            "the {what} must be at most {} characters",
            rules::MAX_NOTE_CHARS
        )));
    }
    Ok(t.to_string())
}
