//! The approvals page, `/approvals`: the escalation requests a signed-in person may see,
//! with an approve form (a fresh TOTP code) and a deny form (a reason) on each request
//! they may decide, each request's history, and the latest decisions. Webhook
//! notifications link here as `/approvals#req-<id>`; each request carries that anchor.
//! This file holds the handlers and the decisions; [`view`] renders the page and
//! [`flash`] carries what happened across the redirect.
//!
//! Everything goes through [`crate::escalations`], as the JSON API does, so the page can
//! decide nothing the API would refuse (invariant 4 lives there, not here). The parent
//! module's rules hold: cross-site posts refused, session cookie, a CSRF token on every
//! POST checked before anything is decided, strict headers, bounded forms, every value
//! escaped by the template engine, no script.
//!
//! A POST always answers `303 See Other` back to the page (Post/Redirect/Get), so a
//! reload never decides twice. What happened travels in a one-shot flash cookie whose
//! value is MAC'd with the web session, so nobody else can plant a message on the page.

use std::net::{IpAddr, SocketAddr};

use axum::Extension;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use time::OffsetDateTime;
use uuid::Uuid;

use self::flash::Flash;
use super::form::{Form, read_form};
use super::layout::{Nav, forbidden_page, see_other, unavailable_page};
use super::session::{CookiePolicy, append_cookie, cookie_value, refuse_cross_site, session_csrf_ok};
use super::sign_in::{Next, SignInForm, signed_in_or};
use super::words::{clock, sentence};
use crate::auth::{Authenticated, Principal};
use crate::domain::{Escalation, EscalationState, RequesterKind, now};
use crate::escalations::{self as esc, EscalationError, EscalationView, ListQuery};
use crate::people::SignInError;
use crate::state::AppState;

mod flash;
mod view;

/// How many decided requests the page lists under the pending ones.
const RECENT: usize = 10;
/// How long a flash message waits for the redirect that shows it.
const FLASH_MAX_AGE_SECS: u64 = 60;
/// Longest TOTP code read from the form (the JSON API's bound).
const MAX_CODE_CHARS: usize = 16;

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
    let mut r = view::approvals_page(&state, &auth, &nav, flash.as_ref(), &pending, &recent);
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

/// Plain words for a request, e.g. `bob's request for db:write in prod`.
fn describe(e: &Escalation) -> String {
    let who = match (e.requester_kind, &e.sponsor) {
        (RequesterKind::Person, _) => e.requester.clone(),
        (RequesterKind::Agent, Some(sponsor)) => format!("{sponsor}'s agent {}", e.requester),
        (RequesterKind::Agent, None) => format!("agent {}", e.requester),
    };
    format!("{who}'s request for {} in {}", e.scopes.join(", "), e.environment)
}

/// Still waiting for a decision (a pending request past its deadline is expired, whether
/// or not the background task has recorded it yet).
fn is_open(e: &Escalation, at: OffsetDateTime) -> bool {
    e.state == EscalationState::Pending && e.expires_at > at
}
