//! The approvals page itself: the pending requests, the latest decided ones, and on each
//! request its facts, the forms (or why this person may not decide) and its history.

use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};
use time::OffsetDateTime;
use uuid::Uuid;

use super::flash::Flash;
use super::is_open;
use crate::auth::{self, Authenticated};
use crate::config::Tier;
use crate::domain::{Escalation, EscalationEvent, EscalationState, RequesterKind, now};
use crate::escalations::EscalationView;
use crate::http::web::CSRF_FIELD;
use crate::http::web::layout::{Nav, document, text};
use crate::http::web::words::{ago, capitalised, clock, sentence, span};
use crate::policy::escalation::{self as rules, ApprovalRefusal};
use crate::state::AppState;

/// Who is looking, and what the page needs to know about them on every request.
struct Viewer<'a> {
    state: &'a AppState,
    auth: &'a Authenticated,
    /// The roles in effect in this session.
    effective: Vec<String>,
    nav: &'a Nav,
    at: OffsetDateTime,
}

pub(super) fn approvals_page(
    state: &AppState,
    auth: &Authenticated,
    nav: &Nav,
    flash: Option<&Flash>,
    pending: &[EscalationView],
    recent: &[EscalationView],
) -> Response {
    let viewer = Viewer {
        state,
        auth,
        effective: auth::effective_roles(state, auth),
        nav,
        at: now(),
    };
    let body = html! {
        p class="lead" {
            "Requests for production or destructive access wait here until a person with the approver \
             role for their environment, who did not ask, says yes. Approving takes a fresh code from \
             your authenticator app."
        }
        @if let Some(f) = flash {
            (f)
        }
        (role_notices(&viewer))
        section id="pending" {
            h2 {
                "Waiting for a decision "
                span class="count" id="pending-count" { (pending.len()) }
            }
            @if pending.is_empty() {
                p class="muted" id="none-pending" { "Nothing is waiting for a decision." }
            }
            @for v in pending {
                (request(&viewer, v))
            }
        }
        @if !recent.is_empty() {
            section id="recent" {
                h2 { "Recently decided" }
                @for v in recent {
                    (request(&viewer, v))
                }
            }
        }
    };
    document(StatusCode::OK, "Approvals", Some(nav), body, true)
}

/// Why someone who holds an approver role cannot use it in this session, or a word that
/// they approve nowhere.
fn role_notices(viewer: &Viewer) -> Markup {
    let Viewer {
        state,
        auth,
        effective,
        ..
    } = viewer;
    let mut dormant: Vec<(&str, Vec<&str>)> = Vec::new();
    let mut approves_somewhere = false;
    for (name, env) in &state.settings.environments {
        let role = env.approval.approver_role.as_str();
        if effective.iter().any(|r| r == role) {
            approves_somewhere = true;
        } else if auth.user.roles.iter().any(|r| r == role) {
            match dormant.iter_mut().find(|(r, _)| *r == role) {
                Some((_, envs)) => envs.push(name),
                None => dormant.push((role, vec![name])),
            }
        }
    }
    let approves_nowhere = dormant.is_empty() && !approves_somewhere && !state.settings.is_admin(effective);
    html! {
        @for (role, envs) in &dormant {
            p class="error" id="role-needs-totp" role="alert" {
                "Your role " strong { (text(role)) } " approves requests for " (text(&envs.join(", ")))
                " only in a session signed in with an authenticator code. "
                @if auth.user.totp_enrolled() {
                    "This session was signed in without a code: sign out, then sign in again with the code \
                     from your authenticator app."
                } @else {
                    "You have no authenticator app yet: set one up on the " a href="totp" { "authenticator page" }
                    ", then sign out and sign in again with a code."
                }
            }
        }
        @if approves_nowhere {
            p class="muted" id="not-an-approver" {
                "You do not approve requests in any environment, so this page shows only requests you made \
                 or sponsored."
            }
        }
    }
}

/// One request: its facts, then the forms or why not, then its history.
fn request(viewer: &Viewer, v: &EscalationView) -> Markup {
    let e = &v.escalation;
    let id = e.id;
    let open = is_open(e, viewer.at);
    let shown_state = if e.state == EscalationState::Pending && !open {
        "expired"
    } else {
        e.state.as_str()
    };
    let class = if open { "request" } else { "request decided" };
    let prod = viewer.state.settings.tier_of(&e.environment) == Tier::Prod;
    let approvers: Vec<&str> = e.approvals.iter().map(|a| a.approver.as_str()).collect();
    html! {
        article class=(class) id={ "req-" (id) } {
            h3 {
                span class="env" { (text(&e.environment)) } " · " (text(&e.scopes.join(", "))) " "
                span class={ "state state-" (shown_state) } { (shown_state) }
            }
            dl class="facts" {
                dt { "Requested by" } dd class="requester" { (requester(e)) }
                dt { "Environment" }
                dd class="environment" {
                    (text(&e.environment))
                    @if prod {
                        " " span class="tag tier-prod" { "production" }
                    }
                }
                dt { "Scopes" }
                dd {
                    ul class="scopes" {
                        @for s in &e.scopes {
                            @if v.destructive_scopes.contains(s) {
                                li class="destructive" {
                                    code { (text(s)) } " " span class="tag destructive" { "destructive" }
                                }
                            } @else {
                                li { code { (text(s)) } }
                            }
                        }
                    }
                }
                dt { "For" } dd class="duration" { (span(e.duration_secs)) }
                dt { "Reason" } dd class="reason" { (text(&e.reason)) }
                dt { "Asked" }
                dd class="age" {
                    (ago(e.created_at, viewer.at)) " " span class="muted" { "(" (clock(e.created_at)) ")" }
                    @if open {
                        "; expires in " (span(expires_in(e, viewer.at)))
                    }
                }
                dt { "Approvals" }
                dd class="approvals" {
                    (e.approvals.len()) " of " (e.quorum)
                    @if !approvers.is_empty() {
                        ": " (text(&approvers.join(", ")))
                    }
                }
                @if !open {
                    (outcome(v, shown_state))
                }
            }
            @if open {
                (actions(viewer, e))
            }
            (history(id, &v.history))
        }
    }
}

/// Seconds until a request expires: whole minutes are precise enough, until the last one.
fn expires_in(e: &Escalation, at: OffsetDateTime) -> i64 {
    let left = (e.expires_at - at).whole_seconds();
    if left >= 60 { left - left % 60 } else { left }
}

/// A person, or an agent and the person who owns or launched it.
fn requester(e: &Escalation) -> Markup {
    html! {
        @if let Some(owner) = e.agent_owner() {
            "agent " code { (text(&e.requester)) } ", owned by " strong class="owner" { (text(owner)) }
        } @else {
            @match (e.requester_kind, &e.sponsor) {
                (RequesterKind::Person, _) => { strong { (text(&e.requester)) } },
                (RequesterKind::Agent, Some(sponsor)) => {
                    "agent " code { (text(&e.requester)) } ", launched by " strong { (text(sponsor)) }
                },
                (RequesterKind::Agent, None) => { "agent " code { (text(&e.requester)) } },
            }
        }
    }
}

/// How a decided request ended, and its grant.
fn outcome(v: &EscalationView, shown_state: &str) -> Markup {
    let e = &v.escalation;
    html! {
        dt { "Outcome" }
        dd class="outcome" id={ "outcome-" (e.id) } {
            @if shown_state == "expired" {
                "Expired: nobody decided in time"
            } @else {
                (capitalised(shown_state))
                @if let Some(by) = &e.decided_by {
                    " by " strong { (text(by)) }
                }
                @if let Some(note) = &e.decision_reason {
                    ": " span class="note" { (text(note)) }
                }
            }
            @if let Some(at) = e.decided_at {
                " " span class="muted" { "(" (clock(at)) ")" }
            }
        }
        @if let Some(g) = &v.grant {
            dt { "Grant" }
            dd class="grant" {
                (text(g.status)) " for " strong { (text(&g.holder_name)) } ", until " (clock(g.grant.ends_at))
            }
        }
    }
}

/// The approve and deny forms, or why this person may not decide.
fn actions(viewer: &Viewer, e: &Escalation) -> Markup {
    let Viewer { state, auth, nav, .. } = viewer;
    let id = e.id;
    // One's own request: that reason first, whatever one's roles (the rules refuse it too).
    let own = e.requester_kind == RequesterKind::Person && e.requester_user_id == Some(auth.user.id);
    let check = if own {
        Err(ApprovalRefusal::OwnRequest)
    } else {
        rules::check_approver(
            &state.settings,
            e,
            auth.user.id,
            &auth.user.roles,
            &viewer.effective,
        )
    };
    if let Err(refusal) = check {
        return html! {
            p class="why" id={ "why-" (id) } { (text(&refusal_text(&refusal, &e.environment))) }
        };
    }
    let sponsor = e.sponsor_user_id == Some(auth.user.id);
    html! {
        div class="decisions" {
            @if e.approvals.iter().any(|a| a.approver_id == auth.user.id) {
                p class="muted" id={ "approved-" (id) } {
                    "You have approved this request; it needs another approver."
                }
            } @else {
                @if sponsor && e.agent_owner().is_some() {
                    p class="muted" id={ "sponsor-" (id) } {
                        "You own this agent: your approval is recorded but does not count toward its \
                         request, so someone else must approve."
                    }
                } @else if sponsor {
                    p class="muted" id={ "sponsor-" (id) } {
                        "You launched this agent: your approval counts, but someone else must approve too."
                    }
                }
                form method="post" action="approvals" class="approve-form" id={ "approve-" (id) } {
                    input type="hidden" name=(CSRF_FIELD) value=(text(&nav.csrf));
                    input type="hidden" name="id" value=(id);
                    input type="hidden" name="decision" value="approve";
                    label for={ "code-" (id) } { "Code from your authenticator app" }
                    input type="text" id={ "code-" (id) } name="code" inputmode="numeric"
                        autocomplete="one-time-code" maxlength="8" required;
                    button type="submit" class="approve" { "Approve" }
                }
            }
            form method="post" action="approvals" class="deny-form" id={ "deny-" (id) } {
                input type="hidden" name=(CSRF_FIELD) value=(text(&nav.csrf));
                input type="hidden" name="id" value=(id);
                input type="hidden" name="decision" value="deny";
                label for={ "reason-" (id) } {
                    "Reason for denying " span class="hint" { "(the requester sees it)" }
                }
                input type="text" id={ "reason-" (id) } name="reason" maxlength=(rules::MAX_NOTE_CHARS) required;
                button type="submit" class="deny" { "Deny" }
            }
        }
    }
}

/// Why a person may not decide a request, with what to do about it on this page.
fn refusal_text(refusal: &ApprovalRefusal, env: &str) -> String {
    let mut words = sentence(&refusal.message(env));
    if matches!(refusal, ApprovalRefusal::NotApprover { needs_totp: true, .. }) {
        words.push_str(" Here: sign out, then sign in again with your authenticator code.");
    }
    words
}

/// What happened to a request, oldest first.
fn history(id: Uuid, history: &[EscalationEvent]) -> Markup {
    let events = if history.len() == 1 { "event" } else { "events" };
    html! {
        details class="history" id={ "history-" (id) } {
            summary { "History (" (history.len()) " " (events) ")" }
            ol {
                @for ev in history {
                    li { span class="when" { (clock(ev.at)) } " " (event(ev)) }
                }
            }
        }
    }
}

/// One event in words, with its note (the creation note is the reason, shown above).
fn event(ev: &EscalationEvent) -> Markup {
    let actor = html! { span class="actor" { (text(&ev.actor)) } };
    let kind = ev.kind.as_str();
    html! {
        @match kind {
            "created" => { "asked by " (actor) },
            "approval" => { "approved by " (actor) },
            "approved" => { "granted (quorum reached) by " (actor) },
            "denied" => { "denied by " (actor) },
            "cancelled" => { "cancelled by " (actor) },
            "expired" => "expired: nobody decided in time",
            "grant_bound" => "grant bound to the holder's session (TOTP step-up)",
            "grant_revoked" => { "grant revoked by " (actor) },
            "grant_ended" => "grant ended",
            other => { (text(other)) " by " (actor) },
        }
        @if let Some(note) = ev.note.as_ref().filter(|_| kind != "created") {
            ": " span class="note" { (text(note)) }
        }
    }
}
