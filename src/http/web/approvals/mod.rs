//! The approvals page, `/approvals`: the escalation requests a signed-in person may see,
//! with an approve form (a fresh TOTP code) and a deny form (a reason) on each request
//! they may decide, each request's history, and the latest decisions. Webhook
//! notifications link here as `/approvals#req-<id>`; each request carries that anchor.
//!
//! Everything goes through [`crate::escalations`], as the JSON API does, so the page can
//! decide nothing the API would refuse (invariant 4 lives there, not here). The parent
//! module's rules hold: cross-site posts refused, session cookie, a CSRF token on every
//! POST checked before anything is decided, strict headers, bounded forms, every value
//! escaped, no script.
//!
//! A POST always answers `303 See Other` back to the page (Post/Redirect/Get), so a
//! reload never decides twice. What happened travels in a one-shot flash cookie whose
//! value is MAC'd with the web session, so nobody else can plant a message on the page.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use axum::Extension;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    CSRF_FIELD, CookiePolicy, Form, Nav, Next, SignInForm, append_cookie, capitalised, cookie_value,
    document, escape, forbidden_page, read_form, refuse_cross_site, see_other, session_csrf_ok, signed_in_or,
    tokens_match, unavailable_page,
};
use crate::app::AppState;
use crate::config::Tier;
use crate::domain::{Escalation, EscalationEvent, EscalationState, RequesterKind, now};
use crate::escalations::{self as esc, EscalationError, EscalationView, ListQuery, Principal};
use crate::people::{self, Authenticated, SignInError};
use crate::policy::escalation::{self as rules, ApprovalRefusal};

/// How many decided requests the page lists under the pending ones.
const RECENT: usize = 10;
/// How long a flash message waits for the redirect that shows it.
const FLASH_MAX_AGE_SECS: u64 = 60;
/// Longest flash text kept (the cookie stays far below browsers' 4 KiB).
const MAX_FLASH_CHARS: usize = 600;
/// Longest TOTP code read from the form (the JSON API's bound).
const MAX_CODE_CHARS: usize = 16;

// --- handlers -------------------------------------------------------------------------

/// `GET /approvals`: the requests, or the sign-in form (which comes back here).
pub(super) async fn show_approvals(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let auth = match signed_in_or(
        &state,
        &headers,
        SignInForm {
            next: Next::Approvals,
            ..SignInForm::default()
        },
    )
    .await
    {
        Ok(a) => a,
        Err(r) => return r,
    };
    let nav = Nav::of(&state, &auth);
    let policy = CookiePolicy::of(&state);
    let flash_cookie = cookie_value(&headers, policy.flash_name());
    let principal = Principal::Person(auth.clone());
    let (pending, recent) = match load(&state, &principal).await {
        Ok(lists) => lists,
        // The flash cookie stays for the next, successful, load.
        Err(_) => return unavailable_page(Some(&nav)),
    };
    let flash = flash_cookie.and_then(|c| Flash::open(&state, &auth, c));
    let mut r = approvals_page(&state, &auth, &nav, flash.as_ref(), &pending, &recent);
    if flash_cookie.is_some() {
        append_cookie(&mut r, &policy.set(policy.flash_name(), "", 0));
    }
    r
}

/// `POST /approvals`: approve (with a TOTP code) or deny (with a reason) one request,
/// then go back to the page with what happened.
pub(super) async fn decide_escalation(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Some(refused) = refuse_cross_site(&state, &headers) {
        return refused;
    }
    let form = match read_form(&state, &headers, body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let auth = match signed_in_or(
        &state,
        &headers,
        SignInForm {
            next: Next::Approvals,
            message: Some(
                "Your sign-in has ended, so nothing was decided. Sign in again, then decide.".into(),
            ),
            status: StatusCode::UNAUTHORIZED,
            ..SignInForm::default()
        },
    )
    .await
    {
        Ok(a) => a,
        Err(r) => return r,
    };
    // SECURITY: the CSRF check comes before anything is decided.
    if !session_csrf_ok(&state, &auth, &form) {
        return forbidden_page(Some(&Nav::of(&state, &auth)));
    }
    let peer: Option<IpAddr> = peer.map(|Extension(ConnectInfo(a))| a.ip());
    let flash = decide(&state, peer, &auth, &form).await;
    let policy = CookiePolicy::of(&state);
    let mut r = see_other("approvals");
    append_cookie(
        &mut r,
        &policy.set(
            policy.flash_name(),
            &flash.seal(&state, &auth),
            FLASH_MAX_AGE_SECS,
        ),
    );
    r
}

/// The pending requests `principal` may see, and the latest decided ones.
async fn load(
    state: &AppState,
    principal: &Principal,
) -> Result<(Vec<EscalationView>, Vec<EscalationView>), EscalationError> {
    let pending = esc::list(
        state,
        principal,
        &ListQuery {
            pending: true,
            ..ListQuery::default()
        },
    )
    .await?;
    // The newest requests of any state include the pending ones: skip past them.
    let limit = (pending.len() + RECENT).min(esc::MAX_LIST as usize) as u32;
    let at = now();
    let recent = esc::list(
        state,
        principal,
        &ListQuery {
            pending: false,
            environment: None,
            limit: Some(limit),
        },
    )
    .await?
    .into_iter()
    .filter(|v| !is_open(&v.escalation, at))
    .take(RECENT)
    .collect();
    Ok((pending, recent))
}

/// Carry out one decision; what to tell the person.
async fn decide(state: &AppState, peer: Option<IpAddr>, auth: &Authenticated, form: &Form) -> Flash {
    let Some(id) = form.get("id").and_then(|s| Uuid::parse_str(s.trim()).ok()) else {
        return Flash::error(
            "The form named no request, so nothing was decided. Reload the page and try again.",
        );
    };
    match form.get("decision") {
        Some("approve") => {
            let code: String = form
                .get("code")
                .unwrap_or_default()
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            if code.is_empty() {
                return Flash::error("Enter the code from your authenticator app to approve.");
            }
            if code.chars().count() > MAX_CODE_CHARS {
                return Flash::error("That is not an authenticator code: enter the 6 digits your app shows.");
            }
            match esc::approve(state, peer, auth, id, &code).await {
                Ok(v) => approved(&v, auth),
                Err(e) => refused(e),
            }
        }
        Some("deny") => match esc::deny(state, auth, id, form.get("reason").unwrap_or_default()).await {
            Ok(v) => Flash::notice(format!(
                "Denied {}. The requester can see your reason.",
                describe(&v.escalation)
            )),
            Err(e) => refused(e),
        },
        _ => Flash::error(
            "The form did not say whether to approve or deny, so nothing was decided. \
             Reload the page and press one of the buttons.",
        ),
    }
}

/// What an accepted approval did: completed the request, or counted towards it.
fn approved(v: &EscalationView, auth: &Authenticated) -> Flash {
    let e = &v.escalation;
    if e.state == EscalationState::Approved {
        let until = v
            .grant
            .as_ref()
            .map(|g| format!(" The grant lasts until {}.", clock(g.grant.ends_at)))
            .unwrap_or_default();
        return Flash::notice(format!("Approved {}.{until}", describe(e)));
    }
    let n = e.approvals.len();
    let q = e.quorum as usize;
    if e.sponsor_user_id == Some(auth.user.id) && e.agent_owner().is_some() {
        return Flash::notice(format!(
            "Your approval is recorded ({n} of {q}), but it does not count: you own this agent, so \
             someone else must approve its request."
        ));
    }
    if e.sponsor_user_id == Some(auth.user.id) && n >= q {
        return Flash::notice(format!(
            "Your approval is recorded ({n} of {q}). You launched this agent, so you cannot be its only \
             approver: someone else must approve it too."
        ));
    }
    let more = q.saturating_sub(n).max(1);
    let approvers = if more == 1 { "approver" } else { "approvers" };
    Flash::notice(format!(
        "Your approval of {} is recorded: {n} of {q}. It needs {more} more {approvers}.",
        describe(e)
    ))
}

/// A refused or failed decision, in words (never internals).
fn refused(e: EscalationError) -> Flash {
    Flash::error(match e {
        EscalationError::Unauthenticated => "Your sign-in has ended. Sign in again, then decide.".to_string(),
        EscalationError::NotFound | EscalationError::UnknownEnvironment => {
            "That request does not exist, or you may not see it.".to_string()
        }
        EscalationError::Forbidden(m)
        | EscalationError::BadRequest(m)
        | EscalationError::Conflict(m)
        | EscalationError::RateLimited { message: m, .. } => sentence(&m),
        EscalationError::Totp(SignInError::TotpRequired) => {
            "Approving needs an authenticator app: set one up first.".to_string()
        }
        EscalationError::Totp(t) => format!("{} Nothing was approved.", sentence(&t.message())),
        EscalationError::Unavailable => {
            "Airlock cannot record this right now, so nothing was decided. Try again in a few seconds."
                .to_string()
        }
    })
}

// --- the flash message ----------------------------------------------------------------

/// A one-shot message for the page after a POST.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Flash {
    error: bool,
    text: String,
}

impl Flash {
    fn notice(text: impl Into<String>) -> Flash {
        Flash {
            error: false,
            text: text.into(),
        }
    }

    fn error(text: impl Into<String>) -> Flash {
        Flash {
            error: true,
            text: text.into(),
        }
    }

    /// The cookie value: the message, then a MAC binding it to this web session.
    fn seal(&self, state: &AppState, auth: &Authenticated) -> String {
        let text: String = self.text.chars().take(MAX_FLASH_CHARS).collect();
        let payload = URL_SAFE_NO_PAD.encode(format!("{}{text}", if self.error { 'e' } else { 'n' }));
        format!("{payload}.{}", flash_mac(state, auth, &payload))
    }

    /// The message in a cookie value, if this session sealed it.
    fn open(state: &AppState, auth: &Authenticated, value: &str) -> Option<Flash> {
        let (payload, mac) = value.split_once('.')?;
        // SECURITY: constant-time; a message planted by anyone else is ignored.
        if !tokens_match(&flash_mac(state, auth, payload), mac) {
            return None;
        }
        let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        let mut chars = raw.chars();
        let error = match chars.next()? {
            'e' => true,
            'n' => false,
            _ => return None,
        };
        Some(Flash {
            error,
            text: chars.as_str().to_string(),
        })
    }

    fn html(&self) -> String {
        let (class, role) = if self.error {
            ("error", "alert")
        } else {
            ("notice", "status")
        };
        format!(
            "<p class=\"{class}\" id=\"flash\" role=\"{role}\">{}</p>\n",
            escape(&self.text)
        )
    }
}

fn flash_mac(state: &AppState, auth: &Authenticated, payload: &str) -> String {
    hex::encode(state.hasher.hash(&format!("flash:{}", auth.session.id), payload))
}

// --- the page -------------------------------------------------------------------------

/// Still waiting for a decision (a pending request past its deadline is expired, whether
/// or not the background task has recorded it yet).
fn is_open(e: &Escalation, at: OffsetDateTime) -> bool {
    e.state == EscalationState::Pending && e.expires_at > at
}

fn approvals_page(
    state: &AppState,
    auth: &Authenticated,
    nav: &Nav,
    flash: Option<&Flash>,
    pending: &[EscalationView],
    recent: &[EscalationView],
) -> Response {
    let at = now();
    let effective = people::effective_roles(state, auth);
    let mut body = String::from(
        "<p class=\"lead\">Requests for production or destructive access wait here until a person \
         with the approver role for their environment, who did not ask, says yes. Approving takes a \
         fresh code from your authenticator app.</p>\n",
    );
    if let Some(f) = flash {
        body.push_str(&f.html());
    }
    body.push_str(&role_notices(state, auth, &effective));
    let _ = write!(
        body,
        "<section id=\"pending\">\n<h2>Waiting for a decision <span class=\"count\" id=\"pending-count\">{}</span></h2>\n",
        pending.len()
    );
    if pending.is_empty() {
        body.push_str("<p class=\"muted\" id=\"none-pending\">Nothing is waiting for a decision.</p>\n");
    }
    for v in pending {
        body.push_str(&request_html(state, auth, &effective, nav, v, at));
    }
    body.push_str("</section>\n");
    if !recent.is_empty() {
        body.push_str("<section id=\"recent\">\n<h2>Recently decided</h2>\n");
        for v in recent {
            body.push_str(&request_html(state, auth, &effective, nav, v, at));
        }
        body.push_str("</section>\n");
    }
    document(StatusCode::OK, "Approvals", Some(nav), &body, true)
}

/// Why someone who holds an approver role cannot use it in this session, or a word that
/// they approve nowhere.
fn role_notices(state: &AppState, auth: &Authenticated, effective: &[String]) -> String {
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
    let mut out = String::new();
    for (role, envs) in dormant {
        let envs = envs.join(", ");
        let how = if auth.user.totp_enrolled() {
            "This session was signed in without a code: sign out, then sign in again with the code from \
             your authenticator app."
                .to_string()
        } else {
            "You have no authenticator app yet: set one up on the <a href=\"totp\">authenticator page</a>, \
             then sign out and sign in again with a code."
                .to_string()
        };
        let _ = writeln!(
            out,
            "<p class=\"error\" id=\"role-needs-totp\" role=\"alert\">Your role <strong>{}</strong> approves \
             requests for {} only in a session signed in with an authenticator code. {how}</p>",
            escape(role),
            escape(&envs),
        );
    }
    if out.is_empty() && !approves_somewhere && !state.settings.is_admin(effective) {
        out.push_str(
            "<p class=\"muted\" id=\"not-an-approver\">You do not approve requests in any environment, so \
             this page shows only requests you made or sponsored.</p>\n",
        );
    }
    out
}

fn request_html(
    state: &AppState,
    auth: &Authenticated,
    effective: &[String],
    nav: &Nav,
    v: &EscalationView,
    at: OffsetDateTime,
) -> String {
    let e = &v.escalation;
    let id = e.id;
    let open = is_open(e, at);
    let shown_state = if e.state == EscalationState::Pending && !open {
        "expired"
    } else {
        e.state.as_str()
    };
    let mut out = String::new();
    let _ = write!(
        out,
        "<article class=\"request{}\" id=\"req-{id}\">\n<h3><span class=\"env\">{}</span> · {} \
         <span class=\"state state-{shown_state}\">{shown_state}</span></h3>\n<dl class=\"facts\">\n",
        if open { "" } else { " decided" },
        escape(&e.environment),
        escape(&e.scopes.join(", ")),
    );
    let _ = writeln!(
        out,
        "<dt>Requested by</dt><dd class=\"requester\">{}</dd>",
        requester_html(e)
    );
    let tier = match state.settings.environment(&e.environment).map(|env| env.tier) {
        Some(Tier::Prod) | None => " <span class=\"tag tier-prod\">production</span>",
        Some(_) => "",
    };
    let _ = writeln!(
        out,
        "<dt>Environment</dt><dd class=\"environment\">{}{tier}</dd>",
        escape(&e.environment)
    );
    out.push_str("<dt>Scopes</dt><dd><ul class=\"scopes\">");
    for s in &e.scopes {
        if v.destructive_scopes.contains(s) {
            let _ = write!(
                out,
                "<li class=\"destructive\"><code>{}</code> <span class=\"tag destructive\">destructive</span></li>",
                escape(s)
            );
        } else {
            let _ = write!(out, "<li><code>{}</code></li>", escape(s));
        }
    }
    out.push_str("</ul></dd>\n");
    let _ = writeln!(
        out,
        "<dt>For</dt><dd class=\"duration\">{}</dd>",
        span(e.duration_secs)
    );
    let _ = writeln!(
        out,
        "<dt>Reason</dt><dd class=\"reason\">{}</dd>",
        escape(&e.reason)
    );
    let asked = format!(
        "{} <span class=\"muted\">({})</span>",
        ago(e.created_at, at),
        clock(e.created_at)
    );
    let asked = if open {
        // Whole minutes are precise enough, until the last one.
        let left = (e.expires_at - at).whole_seconds();
        let left = if left >= 60 { left - left % 60 } else { left };
        format!("{asked}; expires in {}", span(left))
    } else {
        asked
    };
    let _ = writeln!(out, "<dt>Asked</dt><dd class=\"age\">{asked}</dd>");
    let names: Vec<String> = e.approvals.iter().map(|a| escape(&a.approver)).collect();
    let _ = writeln!(
        out,
        "<dt>Approvals</dt><dd class=\"approvals\">{} of {}{}</dd>",
        e.approvals.len(),
        e.quorum,
        if names.is_empty() {
            String::new()
        } else {
            format!(": {}", names.join(", "))
        }
    );
    if !open {
        out.push_str(&outcome_html(v, shown_state));
    }
    out.push_str("</dl>\n");
    if open {
        out.push_str(&actions_html(state, auth, effective, nav, e));
    }
    out.push_str(&history_html(id, &v.history));
    out.push_str("</article>\n");
    out
}

/// A person, or an agent and the person who owns or launched it.
fn requester_html(e: &Escalation) -> String {
    if let Some(owner) = e.agent_owner() {
        return format!(
            "agent <code>{}</code>, owned by <strong class=\"owner\">{}</strong>",
            escape(&e.requester),
            escape(owner)
        );
    }
    match (e.requester_kind, &e.sponsor) {
        (RequesterKind::Person, _) => format!("<strong>{}</strong>", escape(&e.requester)),
        (RequesterKind::Agent, Some(sponsor)) => format!(
            "agent <code>{}</code>, launched by <strong>{}</strong>",
            escape(&e.requester),
            escape(sponsor)
        ),
        (RequesterKind::Agent, None) => format!("agent <code>{}</code>", escape(&e.requester)),
    }
}

/// Plain words for a request, e.g. `bob's request for db:write in prod`.
fn describe(e: &Escalation) -> String {
    let who = match (e.requester_kind, &e.sponsor) {
        (RequesterKind::Person, _) => e.requester.clone(),
        (RequesterKind::Agent, Some(sponsor)) => format!("{sponsor}'s agent {}", e.requester),
        (RequesterKind::Agent, None) => format!("agent {}", e.requester),
    };
    format!("{who}'s request for {} in {}", e.scopes.join(", "), e.environment)
}

/// How a decided request ended, and its grant.
fn outcome_html(v: &EscalationView, shown_state: &str) -> String {
    let e = &v.escalation;
    let mut out = String::new();
    let by = e
        .decided_by
        .as_deref()
        .map(|b| format!(" by <strong>{}</strong>", escape(b)))
        .unwrap_or_default();
    let when = e
        .decided_at
        .map(|t| format!(" <span class=\"muted\">({})</span>", clock(t)))
        .unwrap_or_default();
    let note = e
        .decision_reason
        .as_deref()
        .map(|r| format!(": <span class=\"note\">{}</span>", escape(r)))
        .unwrap_or_default();
    let what = match shown_state {
        "expired" => "Expired: nobody decided in time".to_string(),
        s => format!("{}{by}{note}", capitalised(s)),
    };
    let _ = writeln!(
        out,
        "<dt>Outcome</dt><dd class=\"outcome\" id=\"outcome-{}\">{what}{when}</dd>",
        e.id
    );
    if let Some(g) = &v.grant {
        let _ = writeln!(
            out,
            "<dt>Grant</dt><dd class=\"grant\">{} for <strong>{}</strong>, until {}</dd>",
            escape(g.status),
            escape(&g.holder_name),
            clock(g.grant.ends_at)
        );
    }
    out
}

/// The approve and deny forms, or why this person may not decide.
fn actions_html(
    state: &AppState,
    auth: &Authenticated,
    effective: &[String],
    nav: &Nav,
    e: &Escalation,
) -> String {
    let id = e.id;
    // One's own request: that reason first, whatever one's roles (the rules refuse it too).
    let own = e.requester_kind == RequesterKind::Person && e.requester_user_id == Some(auth.user.id);
    let check = if own {
        Err(ApprovalRefusal::OwnRequest)
    } else {
        rules::check_approver(&state.settings, e, auth.user.id, &auth.user.roles, effective)
    };
    if let Err(refusal) = check {
        return format!(
            "<p class=\"why\" id=\"why-{id}\">{}</p>\n",
            escape(&refusal_text(&refusal, &e.environment))
        );
    }
    let csrf = escape(&nav.csrf);
    let mut out = String::from("<div class=\"decisions\">\n");
    if e.approvals.iter().any(|a| a.approver_id == auth.user.id) {
        let _ = writeln!(
            out,
            "<p class=\"muted\" id=\"approved-{id}\">You have approved this request; it needs another approver.</p>"
        );
    } else {
        if e.sponsor_user_id == Some(auth.user.id) && e.agent_owner().is_some() {
            let _ = writeln!(
                out,
                "<p class=\"muted\" id=\"sponsor-{id}\">You own this agent: your approval is recorded but \
                 does not count toward its request, so someone else must approve.</p>"
            );
        } else if e.sponsor_user_id == Some(auth.user.id) {
            let _ = writeln!(
                out,
                "<p class=\"muted\" id=\"sponsor-{id}\">You launched this agent: your approval counts, but someone \
                 else must approve too.</p>"
            );
        }
        let _ = write!(
            out,
            r#"<form method="post" action="approvals" class="approve-form" id="approve-{id}">
<input type="hidden" name="{CSRF_FIELD}" value="{csrf}">
<input type="hidden" name="id" value="{id}">
<input type="hidden" name="decision" value="approve">
<label for="code-{id}">Code from your authenticator app</label>
<input type="text" id="code-{id}" name="code" inputmode="numeric" autocomplete="one-time-code" maxlength="8" required>
<button type="submit" class="approve">Approve</button>
</form>
"#
        );
    }
    let _ = write!(
        out,
        r#"<form method="post" action="approvals" class="deny-form" id="deny-{id}">
<input type="hidden" name="{CSRF_FIELD}" value="{csrf}">
<input type="hidden" name="id" value="{id}">
<input type="hidden" name="decision" value="deny">
<label for="reason-{id}">Reason for denying <span class="hint">(the requester sees it)</span></label>
<input type="text" id="reason-{id}" name="reason" maxlength="{max}" required>
<button type="submit" class="deny">Deny</button>
</form>
</div>
"#,
        max = rules::MAX_NOTE_CHARS,
    );
    out
}

/// Why a person may not decide a request, with what to do about it on this page.
fn refusal_text(refusal: &ApprovalRefusal, env: &str) -> String {
    let mut text = sentence(&refusal.message(env));
    if matches!(refusal, ApprovalRefusal::NotApprover { needs_totp: true, .. }) {
        text.push_str(" Here: sign out, then sign in again with your authenticator code.");
    }
    text
}

fn history_html(id: Uuid, history: &[EscalationEvent]) -> String {
    let mut out = format!(
        "<details class=\"history\" id=\"history-{id}\">\n<summary>History ({} {})</summary>\n<ol>\n",
        history.len(),
        if history.len() == 1 { "event" } else { "events" }
    );
    for ev in history {
        let actor = format!("<span class=\"actor\">{}</span>", escape(&ev.actor));
        let what = match ev.kind.as_str() {
            "created" => format!("asked by {actor}"),
            "approval" => format!("approved by {actor}"),
            "approved" => format!("granted (quorum reached) by {actor}"),
            "denied" => format!("denied by {actor}"),
            "cancelled" => format!("cancelled by {actor}"),
            "expired" => "expired: nobody decided in time".to_string(),
            "grant_bound" => "grant bound to the holder's session (TOTP step-up)".to_string(),
            "grant_revoked" => format!("grant revoked by {actor}"),
            "grant_ended" => "grant ended".to_string(),
            other => format!("{} by {actor}", escape(other)),
        };
        // The creation note is the reason, shown above already.
        let note = match (&ev.note, ev.kind.as_str()) {
            (Some(n), k) if k != "created" => format!(": <span class=\"note\">{}</span>", escape(n)),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "<li><span class=\"when\">{}</span> {what}{note}</li>",
            clock(ev.at)
        );
    }
    out.push_str("</ol>\n</details>\n");
    out
}

// --- words for times ------------------------------------------------------------------

/// A UTC timestamp, `2025-03-01 14:03:09 UTC`.
fn clock(t: OffsetDateTime) -> String {
    crate::domain::utc_stamp(t)
}

/// `3 minutes ago`.
fn ago(t: OffsetDateTime, at: OffsetDateTime) -> String {
    let secs = (at - t).whole_seconds();
    if secs < 5 {
        "just now".to_string()
    } else {
        format!("{} ago", span(secs))
    }
}

/// A length of time in words, to the two largest units: `1 hour 30 minutes`.
fn span(secs: i64) -> String {
    let secs = secs.max(0);
    let units = [(86_400, "day"), (3_600, "hour"), (60, "minute"), (1, "second")];
    let mut parts = Vec::new();
    let mut left = secs;
    for (size, name) in units {
        let n = left / size;
        if n > 0 {
            parts.push(format!("{n} {name}{}", if n == 1 { "" } else { "s" }));
            left -= n * size;
        }
        if parts.len() == 2 || (!parts.is_empty() && n == 0) {
            break;
        }
    }
    if parts.is_empty() {
        "0 seconds".to_string()
    } else {
        parts.join(" ")
    }
}

/// A message as a sentence: capitalised, with a full stop.
fn sentence(m: &str) -> String {
    let mut s = capitalised(m.trim());
    if !s.ends_with(['.', '!', '?', ')']) {
        s.push('.');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_as_words_to_two_units() {
        assert_eq!(span(0), "0 seconds");
        assert_eq!(span(1), "1 second");
        assert_eq!(span(30 * 60), "30 minutes");
        assert_eq!(span(90 * 60), "1 hour 30 minutes");
        assert_eq!(span(3_600 + 1), "1 hour");
        assert_eq!(span(2 * 86_400 + 3_600 + 61), "2 days 1 hour");
        assert_eq!(span(-5), "0 seconds");
    }

    #[test]
    fn messages_become_sentences() {
        assert_eq!(
            sentence("you cannot decide your own request"),
            "You cannot decide your own request."
        );
        assert_eq!(sentence("done."), "Done.");
    }

    #[test]
    fn clock_is_utc() {
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        assert_eq!(clock(t), "2023-11-14 22:13:20 UTC");
    }
}
