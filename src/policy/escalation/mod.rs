//! The escalation rules, as pure functions: who may ask for what, who may approve,
//! when a quorum is reached, and which grant covers a token request.
//!
//! Invariant 4 (human sign-off) is [`check_approver`] + [`quorum_reached`]: an approval
//! counts only from a person holding the environment's approver role in effect (TOTP
//! enrolled and signed in with it) who is not the requester; a sponsor is never the
//! only approver; the quorum counts distinct people. The TOTP code each approval needs
//! is checked by the caller before the store records it.

use std::time::Duration;

use time::OffsetDateTime;
use uuid::Uuid;

use crate::config::{Settings, Tier};
use crate::domain::{Escalation, Grant, RequesterKind};

/// Shortest reason accepted: enough to name a ticket and a verb.
pub const MIN_REASON_CHARS: usize = 10;
/// Longest reason accepted.
pub const MAX_REASON_CHARS: usize = 500;
/// Shortest grant asked for.
pub const MIN_DURATION: Duration = Duration::from_secs(60);
/// Longest denial or revocation note.
pub const MAX_NOTE_CHARS: usize = 500;

/// Who is asking.
#[derive(Debug, Clone)]
pub enum Requester {
    /// A signed-in person, with the roles in effect for their session.
    Person {
        /// Id.
        user_id: Uuid,
        /// Username.
        username: String,
        /// Effective roles.
        roles: Vec<String>,
    },
    /// A registered agent, bound to one environment.
    Agent {
        /// Client id.
        client_id: String,
        /// Its environment.
        environment: String,
    },
    /// A process acting for a person (token `sub` = the person, `act` = the process),
    /// holding a token of one environment.
    Delegated {
        /// The person (becomes the sponsor).
        user_id: Uuid,
        /// Their username.
        username: String,
        /// The person's roles that count without a TOTP-verified session.
        roles: Vec<String>,
        /// `process:NAME`.
        actor: String,
        /// The environment of the token it presented.
        environment: String,
    },
}

impl Requester {
    /// Audit actor.
    pub fn actor(&self) -> String {
        match self {
            Requester::Person { username, .. } => format!("user:{username}"),
            Requester::Agent { client_id, .. } => format!("agent:{client_id}"),
            Requester::Delegated { username, actor, .. } => format!("{actor} for user:{username}"),
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestRefusal {
    /// No such environment (404).
    UnknownEnvironment,
    /// An agent asked for an environment other than its own: a security event (403).
    CrossEnvironment {
        /// Where the agent lives.
        own: String,
    },
    /// The person's roles do not list the environment as escalatable (403).
    NotEscalatable,
    /// Reason missing or too short (400).
    ReasonTooShort,
    /// Reason too long (400).
    ReasonTooLong,
    /// No scopes, too many, or malformed (400).
    BadScopes,
    /// A scope the environment does not offer (400).
    UnknownScope(String),
    /// Duration below [`MIN_DURATION`] (400).
    DurationTooShort,
    /// Control characters or direction overrides in the reason (400).
    ControlCharacters,
}

impl RequestRefusal {
    /// Message for the caller.
    pub fn message(&self, env: &str) -> String {
        match self {
            RequestRefusal::UnknownEnvironment => format!("there is no environment '{env}'"),
            RequestRefusal::CrossEnvironment { own } => format!(
                "an agent may ask for escalations only in its own environment ('{own}'), not '{env}'; \
                 this attempt has been recorded"
            ),
            RequestRefusal::NotEscalatable => {
                format!("your roles do not allow escalation requests for environment '{env}'")
            }
            RequestRefusal::ReasonTooShort => format!(
                "give a reason of at least {MIN_REASON_CHARS} characters (what you will do, and the ticket)"
            ),
            RequestRefusal::ReasonTooLong => {
                format!("the reason must be at most {MAX_REASON_CHARS} characters")
            }
            RequestRefusal::BadScopes => {
                format!("name between 1 and {} scopes", super::MAX_SCOPES_PER_REQUEST)
            }
            RequestRefusal::UnknownScope(s) => format!("scope '{s}' does not exist in environment '{env}'"),
            RequestRefusal::DurationTooShort => "the duration must be at least 1m".to_string(),
            RequestRefusal::ControlCharacters => {
                "the reason must be plain text on one line, without control characters".to_string()
            }
        }
    }

    /// Audit reason.
    pub fn reason(&self) -> &'static str {
        match self {
            RequestRefusal::UnknownEnvironment => "unknown_environment",
            RequestRefusal::CrossEnvironment { .. } => "cross_environment_attempt",
            RequestRefusal::NotEscalatable => "not_escalatable",
            RequestRefusal::ReasonTooShort => "reason_too_short",
            RequestRefusal::ReasonTooLong => "reason_too_long",
            RequestRefusal::BadScopes => "bad_scopes",
            RequestRefusal::UnknownScope(_) => "unknown_scope",
            RequestRefusal::DurationTooShort => "duration_too_short",
            RequestRefusal::ControlCharacters => "control_characters",
        }
    }
}

/// What an accepted request becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPlan {
    /// Granted duration: what was asked, capped by `max_grant_duration`.
    pub duration: Duration,
    /// Whether the asked duration was cut.
    pub capped: bool,
    /// Approved by policy at once (non-destructive scopes of a non-production environment
    /// whose config says so).
    pub auto_approve: bool,
    /// Distinct approvals needed.
    pub quorum: u32,
    /// The pending deadline.
    pub pending_timeout: Duration,
}

/// Decide whether `requester` may ask for `scopes` in `env` for `duration`.
pub fn check_request(
    settings: &Settings,
    requester: &Requester,
    env: &str,
    scopes: &[String],
    duration: Duration,
    reason: &str,
) -> Result<RequestPlan, RequestRefusal> {
    let environment = settings
        .environment(env)
        .ok_or(RequestRefusal::UnknownEnvironment)?;
    // SECURITY: invariant 2. Checked first, so an agent learns nothing else about another
    // environment, and the attempt is recorded whatever else is wrong with it.
    match requester {
        Requester::Agent { environment: own, .. } | Requester::Delegated { environment: own, .. }
            if own != env =>
        {
            return Err(RequestRefusal::CrossEnvironment { own: own.clone() });
        }
        // A process asks within its person's roles, never beyond them.
        Requester::Person { roles, .. } | Requester::Delegated { roles, .. } => {
            let may = roles
                .iter()
                .filter_map(|r| settings.roles.get(r))
                .any(|r| r.escalate.iter().any(|e| e == env));
            if !may {
                return Err(RequestRefusal::NotEscalatable);
            }
        }
        _ => {}
    }
    if has_control_chars(reason) {
        return Err(RequestRefusal::ControlCharacters);
    }
    let reason_chars = reason.trim().chars().count();
    if reason_chars < MIN_REASON_CHARS {
        return Err(RequestRefusal::ReasonTooShort);
    }
    if reason.chars().count() > MAX_REASON_CHARS {
        return Err(RequestRefusal::ReasonTooLong);
    }
    if scopes.is_empty() || scopes.len() > super::MAX_SCOPES_PER_REQUEST {
        return Err(RequestRefusal::BadScopes);
    }
    for (i, s) in scopes.iter().enumerate() {
        if scopes[..i].contains(s) {
            return Err(RequestRefusal::BadScopes);
        }
        if !settings.env_offers_scope(environment, s) {
            return Err(RequestRefusal::UnknownScope(s.clone()));
        }
    }
    if duration < MIN_DURATION {
        return Err(RequestRefusal::DurationTooShort);
    }
    let approval = &environment.approval;
    let granted = duration.min(approval.max_grant_duration);
    // SECURITY: never auto-approve production or a destructive scope, whatever the
    // config says (config validation refuses the first; this refuses both again).
    let any_destructive = scopes.iter().any(|s| is_destructive(settings, s));
    let auto_approve = approval.auto_approve && environment.tier != Tier::Prod && !any_destructive;
    Ok(RequestPlan {
        duration: granted,
        capped: granted < duration,
        auto_approve,
        quorum: approval.quorum.max(1),
        pending_timeout: approval.pending_timeout,
    })
}

/// Whether `scope` is destructive in the catalogue (unknown scopes count as destructive).
pub fn is_destructive(settings: &Settings, scope: &str) -> bool {
    settings.scopes.get(scope).is_none_or(|s| s.destructive)
}

/// The destructive scopes among `scopes`, in order.
pub fn destructive_of(settings: &Settings, scopes: &[String]) -> Vec<String> {
    scopes
        .iter()
        .filter(|s| is_destructive(settings, s))
        .cloned()
        .collect()
}

/// Why a person may not approve (or deny) a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApprovalRefusal {
    /// No approver role for the environment in effect.
    NotApprover {
        /// The role that approves there.
        role: String,
        /// They hold the role but it is not in effect (TOTP not enrolled or not used to sign in).
        needs_totp: bool,
    },
    /// The requester themselves.
    OwnRequest,
}

impl ApprovalRefusal {
    /// Message for the person.
    pub fn message(&self, env: &str) -> String {
        match self {
            ApprovalRefusal::NotApprover {
                role,
                needs_totp: true,
            } => format!(
                "your role '{role}' approves in '{env}' only once TOTP is enrolled and this session signed in \
                 with a code (`airlock totp enroll`, then `airlock step-up`)"
            ),
            ApprovalRefusal::NotApprover {
                role,
                needs_totp: false,
            } => {
                format!("approving requests for '{env}' needs the '{role}' role, which you do not have")
            }
            ApprovalRefusal::OwnRequest => "you cannot decide your own request".to_string(),
        }
    }

    /// Audit reason.
    pub fn reason(&self) -> &'static str {
        match self {
            ApprovalRefusal::NotApprover { .. } => "not_an_approver",
            ApprovalRefusal::OwnRequest => "own_request",
        }
    }
}

/// Whether the person `user_id`, holding `all_roles` of which `effective_roles` are in
/// effect, may approve or deny `escalation`.
pub fn check_approver(
    settings: &Settings,
    escalation: &Escalation,
    user_id: Uuid,
    all_roles: &[String],
    effective_roles: &[String],
) -> Result<(), ApprovalRefusal> {
    let role = settings
        .environment(&escalation.environment)
        .map(|e| e.approval.approver_role.clone())
        .unwrap_or_default();
    if role.is_empty() || !effective_roles.contains(&role) {
        return Err(ApprovalRefusal::NotApprover {
            needs_totp: !role.is_empty() && all_roles.contains(&role),
            role,
        });
    }
    if escalation.requester_kind == RequesterKind::Person && escalation.requester_user_id == Some(user_id) {
        return Err(ApprovalRefusal::OwnRequest);
    }
    Ok(())
}

/// Whether the approvals by `approvers` complete a quorum of `quorum` distinct people.
/// The request's `sponsor` (the person behind a requesting process, or the owner of a
/// requesting registered agent) may approve, and the approval is recorded, but it never
/// counts: the grant is theirs or their agent's, so counting it would make them one of
/// their own approvers, and it can never be the only one.
pub fn quorum_reached(quorum: u32, approvers: &[Uuid], sponsor: Option<Uuid>) -> bool {
    let mut counted: Vec<Uuid> = approvers
        .iter()
        .copied()
        .filter(|a| Some(*a) != sponsor)
        .collect();
    counted.sort();
    counted.dedup();
    counted.len() >= quorum.max(1) as usize
}

/// Whether `text` holds a character that changes how text around it is shown rather
/// than showing itself: a control character (Unicode general category Cc), a format
/// character (Cf: the bidirectional overrides, zero-width spaces and joiners, the word
/// joiner, the byte-order mark, the soft hyphen, ...) or a line or paragraph separator
/// (Zl, Zp). Refused in reasons and notes, which approvers read in terminals and on
/// pages, so a reason cannot rewrite, hide or split what is shown around it.
///
/// The Cf test is the Unicode table of `unicode-properties` (already built for
/// PostgreSQL's SASLprep), not a hand-picked list, so a new format character is caught
/// when the table is updated.
pub fn has_control_chars(text: &str) -> bool {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
    text.chars().any(|c| {
        c.is_control()
            || matches!(
                c.general_category(),
                GeneralCategory::Format
                    | GeneralCategory::LineSeparator
                    | GeneralCategory::ParagraphSeparator
            )
    })
}

/// The scopes of a token request that need a grant: all of them in a prod-tier
/// environment (invariant 3), the destructive ones anywhere (invariant 5).
pub fn gated_scopes(settings: &Settings, env: &str, scopes: &[String]) -> Vec<String> {
    let prod = settings.tier_of(env) == Tier::Prod;
    scopes
        .iter()
        .filter(|s| prod || is_destructive(settings, s))
        .cloned()
        .collect()
}

/// The grant that covers every scope in `needed` for a token minted at `at` by `actor`
/// (the delegated process, if any). Among several, the one ending last. Grants of other
/// holders or environments must already be filtered out by the caller; this checks again.
pub fn covering_grant<'a>(
    grants: &'a [Grant],
    holder: &str,
    env: &str,
    needed: &[String],
    actor: Option<&str>,
    at: OffsetDateTime,
) -> Option<&'a Grant> {
    grants
        .iter()
        .filter(|g| g.holder == holder && g.environment == env && g.is_active(at))
        .filter(|g| match &g.holder_actor {
            None => true,
            Some(only) => actor == Some(only.as_str()),
        })
        .filter(|g| needed.iter().all(|s| g.scopes.contains(s)))
        .max_by_key(|g| g.ends_at)
}

/// Lifetime of a token minted under `grant` at `at`: the environment's lifetime, cut to
/// the grant's end (invariant 6). Zero if the grant has ended.
pub fn grant_token_lifetime(env_lifetime: Duration, grant: &Grant, at: OffsetDateTime) -> Duration {
    let left = (grant.ends_at - at).whole_seconds().max(0) as u64;
    env_lifetime.min(Duration::from_secs(left))
}

/// A grant for an escalation approved at `at`.
pub fn grant_for(escalation: &Escalation, id: Uuid, at: OffsetDateTime) -> Grant {
    Grant {
        id,
        escalation_id: escalation.id,
        environment: escalation.environment.clone(),
        scopes: escalation.scopes.clone(),
        holder: escalation.holder.clone(),
        holder_actor: escalation.holder_actor.clone(),
        starts_at: at,
        ends_at: at + time::Duration::seconds(escalation.duration_secs),
        session_id: None,
        revoked_at: None,
        revoked_by: None,
        revoked_reason: None,
    }
}

/// When a holder whose latest requests were created at `recent` may create another at
/// `at`, if at most `requests` may be created in any `per`: `None` for now, else the
/// moment enough of them have left the window. A burst of `requests` is allowed; cancelled
/// requests count like any other, so a create/cancel loop is bounded too.
///
/// ```
/// use std::time::Duration;
/// use airlock::policy::escalation::creation_retry_at;
/// let at = time::OffsetDateTime::UNIX_EPOCH + Duration::from_secs(1000);
/// let secs = |s: u64| time::OffsetDateTime::UNIX_EPOCH + Duration::from_secs(s);
/// let minute = Duration::from_secs(60);
/// assert_eq!(creation_retry_at(&[secs(990), secs(980)], at, 3, minute), None);
/// assert_eq!(creation_retry_at(&[secs(990), secs(980), secs(950)], at, 3, minute), Some(secs(1010)));
/// // Older than the window: forgotten.
/// assert_eq!(creation_retry_at(&[secs(990), secs(980), secs(900)], at, 3, minute), None);
/// ```
pub fn creation_retry_at(
    recent: &[OffsetDateTime],
    at: OffsetDateTime,
    requests: u32,
    per: Duration,
) -> Option<OffsetDateTime> {
    let since = at - per;
    let mut inside: Vec<OffsetDateTime> = recent.iter().copied().filter(|t| *t > since).collect();
    let requests = requests.max(1) as usize;
    if inside.len() < requests {
        return None;
    }
    inside.sort();
    // Once this one leaves the window, requests - 1 remain: room for one more.
    Some(inside[inside.len() - requests] + per)
}

#[cfg(test)]
mod tests;
