//! Sign-in with a password (and a TOTP code once enrolled), throttled per address, per
//! (account, address) and per account; TOTP codes checked from a session are throttled
//! on keys of their own.

use std::net::IpAddr;

use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

use crate::auth::Authenticated;
use crate::domain::{NewAuditEvent, Outcome, User};
use crate::password::{MAX_PASSWORD_LEN, PasswordError};
use crate::state::AppState;
use crate::store::StoreError;
use crate::throttle::{ThrottleKey, address_group, throttle_delay};

/// Why a sign-in failed. Wrong username and wrong password are the same answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignInError {
    /// Unknown person, wrong password, or disabled.
    InvalidCredentials,
    /// The password was right; a TOTP code is needed too.
    TotpRequired,
    /// The TOTP code was wrong or already used.
    TotpInvalid,
    /// Too many failures: retry after this many seconds.
    Throttled(u64),
    /// Too many sign-ins at once.
    Busy,
    /// The store failed.
    Unavailable,
}

impl SignInError {
    /// A message for the person.
    pub fn message(&self) -> String {
        match self {
            SignInError::InvalidCredentials => "wrong username or password".into(),
            SignInError::TotpRequired => "enter the code from your authenticator app".into(),
            SignInError::TotpInvalid => {
                "that code is wrong or was already used; wait for the next one".into()
            }
            SignInError::Throttled(1) => "too many failed sign-ins; try again in 1 second".into(),
            SignInError::Throttled(s) => format!("too many failed sign-ins; try again in {s} seconds"),
            SignInError::Busy => "too many sign-ins at once; try again in a few seconds".into(),
            SignInError::Unavailable => "Airlock cannot record sign-ins right now; try again shortly".into(),
        }
    }

    /// Stable code for APIs.
    pub fn code(&self) -> &'static str {
        match self {
            SignInError::InvalidCredentials => "invalid_credentials",
            SignInError::TotpRequired => "totp_required",
            SignInError::TotpInvalid => "totp_invalid",
            SignInError::Throttled(_) => "throttled",
            SignInError::Busy => "busy",
            SignInError::Unavailable => "unavailable",
        }
    }
}

pub(super) fn unavailable<E: std::fmt::Debug>(e: E) -> SignInError {
    tracing::error!(error = ?e, "store failure during sign-in");
    SignInError::Unavailable
}

/// Normalise a username: trimmed, lowercase, 1-64 of `a-z0-9._-@`, not `agt_...`.
pub fn normalize_username(raw: &str) -> Option<String> {
    let u = raw.trim().to_ascii_lowercase();
    let ok = !u.is_empty()
        && u.len() <= 64
        && !u.starts_with(crate::domain::CLIENT_ID_PREFIX)
        && u.chars().all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c));
    ok.then_some(u)
}

fn address_key(ip: IpAddr) -> String {
    format!("ip:{}", address_group(ip))
}

/// Sign-in throttle keys, in the order they are counted. SECURITY: a stranger's failures
/// must not lock the real person out, so the tight per-account limit is per (account,
/// address); the address is limited on its own; and a much higher account-wide ceiling,
/// counted last, stops guessing spread over many addresses. Only attempts the address
/// keys let through reach the ceiling, so hammering from one address cannot use it up.
/// The account appears only as a keyed hash, so a password typed as the username is
/// never stored in clear.
fn sign_in_keys(state: &AppState, username: &str, peer: Option<IpAddr>) -> Vec<ThrottleKey> {
    let auth = &state.settings.auth;
    let account = hex::encode(state.hasher.hash("throttle", username));
    let from = peer.map(address_group).unwrap_or_else(|| "-".into());
    let mut keys = Vec::with_capacity(3);
    if let Some(ip) = peer {
        keys.push(ThrottleKey {
            key: address_key(ip),
            free: auth.throttle_free_failures,
            wide: true,
        });
    }
    keys.push(ThrottleKey {
        key: format!("user:{account}@{from}"),
        free: auth.throttle_free_failures,
        wide: false,
    });
    keys.push(ThrottleKey {
        key: format!("user:{account}"),
        free: auth.throttle_account_ceiling,
        wide: true,
    });
    keys
}

/// Throttle keys of a TOTP code checked from a signed-in session (step-up, approvals,
/// enrolment). They share nothing with sign-in keys: failed sign-ins by a stranger never
/// block a signed-in approver. Each session has its own tight limit (a copied session
/// file guesses slowly), and the person has an account-wide ceiling across sessions.
pub(super) fn code_keys(state: &AppState, auth: &Authenticated, peer: Option<IpAddr>) -> Vec<ThrottleKey> {
    let s = &state.settings.auth;
    let mut keys = vec![ThrottleKey {
        key: format!("code:session:{}", auth.session.id),
        free: s.throttle_free_failures,
        wide: false,
    }];
    if let Some(ip) = peer {
        keys.push(ThrottleKey {
            key: format!("code:ip:{}", address_group(ip)),
            free: s.throttle_account_ceiling,
            wide: true,
        });
    }
    keys.push(ThrottleKey {
        key: format!("code:user:{}", auth.user.id),
        free: s.throttle_account_ceiling,
        wide: true,
    });
    keys
}

/// Seconds an address must wait before its next sign-in attempt, if the store has
/// already blocked it (checked before a request body is even parsed).
pub fn address_blocked_for(state: &AppState, peer: Option<IpAddr>) -> Option<u64> {
    let ip = peer?;
    let at_us = (state.now().unix_timestamp_nanos() / 1000) as i64;
    let wait = state.blocks.wait_us([address_key(ip).as_str()], at_us);
    (wait > 0).then(|| ((wait + 999_999) / 1_000_000).max(1) as u64)
}

/// Audit a sign-in refused early because its address is blocked (within the
/// per-address budget of anonymous refusals, then summarised).
pub async fn audit_throttled(state: &AppState, peer: Option<IpAddr>, via: &str) -> Result<(), SignInError> {
    audit_sign_in_failure(state, peer, None, "throttled", via).await
}

/// Count this attempt against the keys in order, atomically, before any password is
/// checked, stopping at the first key that refuses it. An attempt within the free
/// allowance goes ahead; past it, the first attempt after a
/// block has expired goes ahead and blocks the key again, for twice as long; every
/// other attempt is refused. Concurrent attempts are counted one by one by the store,
/// so a burst cannot slip past the limit. Returns the seconds to wait when throttled.
pub(super) async fn count_attempt(state: &AppState, keys: &[ThrottleKey]) -> Result<(), SignInError> {
    let auth = &state.settings.auth;
    let at_us = (state.now().unix_timestamp_nanos() / 1000) as i64;
    let window = (auth.throttle_max_delay * 2).as_micros() as i64;
    let known = state.blocks.wait_us(keys.iter().map(|k| k.key.as_str()), at_us);
    if known > 0 {
        return Err(SignInError::Throttled(
            ((known + 999_999) / 1_000_000).max(1) as u64
        ));
    }
    let mut wait_us = 0i64;
    for key in keys {
        let rule = crate::store::ThrottleRule {
            at_us,
            window_start_cutoff_us: at_us - window,
            free: i64::from(key.free),
            base_delay_us: 1_000_000,
            max_delay_us: auth.throttle_max_delay.as_micros() as i64,
        };
        let a = state
            .store
            .throttle_attempt(&key.key, &rule)
            .await
            .map_err(unavailable)?;
        let within_allowance = a.attempts <= rule.free;
        // The store set the block from this attempt's own clock only if it let it through.
        let let_through = throttle_delay(a.attempts, key.free, auth.throttle_max_delay)
            .is_some_and(|d| a.blocked_until_us == at_us + d.as_micros() as i64);
        if a.blocked_until_us > at_us {
            state.blocks.remember(&key.key, a.blocked_until_us, at_us);
        }
        if !within_allowance && !let_through {
            // Refused here: the keys after this one never see the attempt, so a flood
            // that an address key already stops cannot use up an account's ceiling.
            wait_us = a.blocked_until_us - at_us;
            break;
        }
    }
    if wait_us > 0 {
        Err(SignInError::Throttled(
            ((wait_us + 999_999) / 1_000_000).max(1) as u64
        ))
    } else {
        Ok(())
    }
}

/// A check passed: the narrow key (this account from this address, or this session)
/// starts again; every wide key gets this attempt back, so people behind one NAT, or
/// one person's own successes, do not use up a shared allowance.
pub(super) async fn release_attempt(state: &AppState, keys: &[ThrottleKey]) -> Result<(), SignInError> {
    for key in keys {
        // The cache can only refuse earlier than the store; the store re-decides.
        state.blocks.forget(&key.key);
        let done = if key.wide {
            state.store.throttle_undo(&key.key, i64::from(key.free)).await
        } else {
            state.store.throttle_release(&key.key).await
        };
        done.map_err(unavailable)?;
    }
    Ok(())
}

pub(super) async fn audit_sign_in_failure(
    state: &AppState,
    peer: Option<IpAddr>,
    user: Option<&User>,
    reason: &'static str,
    via: &str,
) -> Result<(), SignInError> {
    // SECURITY: name the account only if it exists, so a password typed into the
    // username field is never recorded.
    let event = NewAuditEvent::new("login.failed", "anonymous", Outcome::Refused)
        .subject(
            user.map(|u| u.username.clone())
                .unwrap_or_else(|| "[unknown]".into()),
        )
        .detail("reason", reason)
        .detail("via", via.to_string())
        .detail("client_address", peer.map(|p| p.to_string()));
    if user.is_some() || state.refusals.admit(peer, "login", reason) {
        state.store.append_audit(event).await.map_err(unavailable)?;
    }
    Ok(())
}

/// Check a person's password (and TOTP code when enrolled), with throttling per account
/// and per client address. `via` names the channel for the audit trail.
pub async fn sign_in(
    state: &AppState,
    peer: Option<IpAddr>,
    raw_username: &str,
    password: SecretString,
    totp_code: Option<&str>,
    via: &str,
) -> Result<SignedIn, SignInError> {
    let username = normalize_username(raw_username).unwrap_or_else(|| "[invalid]".into());
    let keys = sign_in_keys(state, &username, peer);
    if let Err(e) = count_attempt(state, &keys).await {
        if let SignInError::Throttled(_) = e {
            audit_sign_in_failure(state, peer, None, "throttled", via).await?;
        }
        return Err(e);
    }
    let user = match state.store.user_by_username(&username).await {
        Ok(u) => Some(u),
        Err(StoreError::NotFound) => None,
        Err(e) => return Err(unavailable(e)),
    };
    let too_long = password.expose_secret().len() > MAX_PASSWORD_LEN;
    let stored = user.as_ref().map(|u| u.password_hash.clone());
    let ok = if too_long {
        false
    } else {
        state
            .passwords
            .verify(password, stored)
            .await
            .map_err(|e| match e {
                PasswordError::Busy => SignInError::Busy,
                PasswordError::Internal => SignInError::Unavailable,
            })?
    };
    let user = match user {
        Some(u) if ok && !u.disabled => u,
        other => {
            let reason = match &other {
                None => "unknown_user",
                Some(u) if u.disabled && ok => "disabled",
                Some(_) => "wrong_password",
            };
            audit_sign_in_failure(state, peer, other.as_ref(), reason, via).await?;
            return Err(SignInError::InvalidCredentials);
        }
    };
    let mut totp_used = false;
    if user.totp_enrolled() {
        let Some(code) = totp_code else {
            // The password was right: the first half of a two-step sign-in is not a
            // failed attempt.
            for key in &keys {
                state
                    .store
                    .throttle_undo(&key.key, i64::from(key.free))
                    .await
                    .map_err(unavailable)?;
            }
            return Err(SignInError::TotpRequired);
        };
        if !verify_totp(state, &user, code).await? {
            audit_sign_in_failure(state, peer, Some(&user), "wrong_or_replayed_totp", via).await?;
            return Err(SignInError::TotpInvalid);
        }
        totp_used = true;
    }
    // Success: this account's count from this address starts again, and the wider
    // counters get the attempt back.
    release_attempt(state, &keys).await?;
    Ok(SignedIn {
        user,
        totp_verified: totp_used,
    })
}

/// A successful sign-in.
#[derive(Debug, Clone)]
pub struct SignedIn {
    /// Who.
    pub user: User,
    /// Whether a TOTP code was part of it (admin and approver roles need that).
    pub totp_verified: bool,
}

/// Check a TOTP code of `user` and consume its time step (no replay).
pub async fn verify_totp(state: &AppState, user: &User, code: &str) -> Result<bool, SignInError> {
    let Some(sealed) = &user.totp_sealed else {
        return Ok(false);
    };
    let secret = state
        .master
        .open(&totp_context(user.id), sealed)
        .map_err(unavailable)?;
    let Some(step) = crate::totp::matching_step(&secret, code, state.now().unix_timestamp()) else {
        return Ok(false);
    };
    state
        .store
        .use_totp_step(user.id, step)
        .await
        .map_err(unavailable)
}

pub(super) fn totp_context(user: Uuid) -> String {
    format!("totp:{user}")
}
