//! TOTP: checking a code (each time step once), confirming a fresh code from a session,
//! and enrolment (a pending secret sealed to the session that started it).

use std::net::IpAddr;

use uuid::Uuid;

use super::admin::ManageError;
use super::sign_in::{
    SignInError, audit_sign_in_failure, code_keys, count_attempt, release_attempt, totp_context, verify_totp,
};
use crate::auth::Authenticated;
use crate::domain::{NewAuditEvent, Outcome};
use crate::state::AppState;
use crate::store::UserChange;

/// Confirm a fresh TOTP code of the signed-in person (throttled per session and per
/// person, never by failed sign-ins; the code's time step is consumed, so it can never
/// be replayed). `via` names the action in the audit trail.
pub async fn confirm_totp(
    state: &AppState,
    peer: Option<IpAddr>,
    auth: &Authenticated,
    code: &str,
    via: &str,
) -> Result<(), SignInError> {
    let user = &auth.user;
    let keys = code_keys(state, auth, peer);
    count_attempt(state, &keys).await?;
    if !user.totp_enrolled() {
        return Err(SignInError::TotpRequired);
    }
    if !verify_totp(state, user, code).await? {
        audit_sign_in_failure(state, peer, Some(user), "wrong_or_replayed_totp", via).await?;
        return Err(SignInError::TotpInvalid);
    }
    release_attempt(state, &keys).await
}

pub use crate::wire::TotpEnrolment;

/// SECURITY: a pending secret is sealed under a context naming the session that
/// started it, with its start time inside the sealed text, so only that session can
/// finish it and only for `auth.totp_enrolment_lifetime`; neither can be edited in the
/// store without breaking the seal.
fn pending_totp_context(user: Uuid, session: Uuid) -> String {
    format!("totp-pending:{user}:{session}")
}

/// Start TOTP enrolment from `auth`'s session: a new pending secret (replacing any
/// earlier pending one).
pub async fn totp_begin(state: &AppState, auth: &Authenticated) -> Result<TotpEnrolment, ManageError> {
    let user = &auth.user;
    if user.totp_enrolled() {
        return Err(ManageError::Conflict(format!(
            "TOTP is already enrolled; an admin can reset it (`airlock user reset {} --totp`)",
            user.username
        )));
    }
    let secret = crate::totp::new_secret().map_err(|_| ManageError::Unavailable)?;
    let mut plain = zeroize::Zeroizing::new(state.now().unix_timestamp().to_be_bytes().to_vec());
    plain.extend_from_slice(&secret);
    let sealed = state
        .master
        .seal(&pending_totp_context(user.id, auth.session.id), &plain)
        .map_err(|_| ManageError::Unavailable)?;
    let event = NewAuditEvent::new(
        "totp.enrolment_started",
        format!("user:{}", user.username),
        Outcome::Success,
    )
    .subject(user.username.clone())
    .detail("session", auth.session.id.to_string());
    state
        .store
        .update_user(user.id, UserChange::TotpPending(sealed), event)
        .await?;
    Ok(TotpEnrolment {
        secret: crate::totp::secret_base32(&secret),
        otpauth_uri: crate::totp::otpauth_uri(&secret, &user.username, "Airlock"),
    })
}

/// Finish enrolment with a correct code from the new secret, from the session that
/// started it, within `auth.totp_enrolment_lifetime`. Every attempt is counted like any
/// other code check (per session, per person, per address), before anything is checked.
pub async fn totp_activate(
    state: &AppState,
    peer: Option<IpAddr>,
    auth: &Authenticated,
    code: &str,
) -> Result<(), ManageError> {
    let user = &auth.user;
    let Some(pending) = &user.totp_pending_sealed else {
        return Err(ManageError::Conflict(
            "no enrolment in progress; start with `airlock totp enroll`".into(),
        ));
    };
    let keys = code_keys(state, auth, peer);
    count_attempt(state, &keys).await?;
    let Ok(plain) = state
        .master
        .open(&pending_totp_context(user.id, auth.session.id), pending)
    else {
        return Err(ManageError::Conflict(
            "this enrolment was started from another session; start again here with \
             airlock totp enroll"
                .into(),
        ));
    };
    let (started, secret) = plain.split_at(8.min(plain.len()));
    let started = i64::from_be_bytes(started.try_into().map_err(|_| ManageError::Unavailable)?);
    let at = state.now();
    let lifetime = state.settings.auth.totp_enrolment_lifetime;
    if at.unix_timestamp() - started > lifetime.as_secs() as i64 {
        return Err(ManageError::Conflict(format!(
            "this enrolment has expired (it lasts {}); start again with airlock totp enroll",
            humantime::format_duration(lifetime)
        )));
    }
    let Some(step) = crate::totp::matching_step(secret, code, at.unix_timestamp()) else {
        audit_sign_in_failure(state, peer, Some(user), "wrong_totp", "totp-enrolment").await?;
        return Err(ManageError::Invalid(
            "that code does not match; check the time on your device".into(),
        ));
    };
    let sealed = state
        .master
        .seal(&totp_context(user.id), secret)
        .map_err(|_| ManageError::Unavailable)?;
    let event = NewAuditEvent::new(
        "totp.enrolled",
        format!("user:{}", user.username),
        Outcome::Success,
    )
    .subject(user.username.clone());
    state
        .store
        .update_user(user.id, UserChange::TotpActivate { sealed, step }, event)
        .await?;
    release_attempt(state, &keys).await?;
    Ok(())
}
