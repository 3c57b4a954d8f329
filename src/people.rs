//! People: sign-in, sessions, the device flow, token exchange, TOTP and administration.
//!
//! Shared by the HTTP API, the web pages and the CLI. Invariant 3: a session token is
//! signed with the session key and only ever exchanged here for an environment token,
//! within the person's roles and never for a prod-tier environment or a destructive
//! scope (those need an escalation). Invariant 4 prepares: admin and approver roles take
//! effect only with TOTP enrolled. Invariant 8: refresh tokens, device codes and web
//! cookies are stored only as keyed hashes; TOTP secrets sealed under the master key.

use std::net::IpAddr;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use uuid::Uuid;

use crate::app::AppState;
use crate::domain::{
    DeviceCode, DeviceStatus, KeySet, NewAuditEvent, Outcome, Session, SessionKind, User, now,
};
use crate::oauth::{OAuthError, TokenResponse};
use crate::password::{MAX_PASSWORD_LEN, PasswordError, check_policy};
use crate::policy::{self, HumanRefusal};
use crate::store::{RefreshOutcome, StoreError, UserChange};
use crate::token::{self, AccessClaims, Actor, SessionClaims};

/// The CLI's public client id (device flow, refresh, token exchange).
pub const CLI_CLIENT_ID: &str = "airlock-cli";
/// `subject_token_type` accepted by the token exchange.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// `actor_token_type` naming a local process launched by `airlock exec`.
pub const PROCESS_TOKEN_TYPE: &str = "urn:airlock:params:oauth:token-type:process";
/// RFC 8693 grant type.
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// RFC 8628 grant type.
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// Characters of user codes: no vowels (no words), no look-alikes (RFC 8628 section 6.1).
const USER_CODE_ALPHABET: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";

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

fn unavailable<E: std::fmt::Debug>(e: E) -> SignInError {
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

/// One throttle counter and the failures it allows before delays start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThrottleKey {
    /// The counter's name in the store (no typed username in clear).
    pub key: String,
    /// Attempts allowed before the first delay.
    pub free: u32,
    /// A wide key (an address, an account from everywhere) only gets a successful
    /// attempt back; the one narrow key (this account from this address, this session)
    /// starts again after a success.
    pub wide: bool,
}

/// The address as the throttle sees it: IPv6 grouped by /64 (one host usually holds a
/// whole /64), IPv4-mapped IPv6 as its IPv4.
pub fn address_group(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
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
fn code_keys(state: &AppState, auth: &Authenticated, peer: Option<IpAddr>) -> Vec<ThrottleKey> {
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

/// Keys the store has blocked, remembered in this process until their block ends, so a
/// flood of attempts on a blocked account or address is refused without touching the
/// store (on SQLite those writes would queue behind the single writer with token
/// issuance). The store stays the authority: this can only refuse earlier, never allow.
#[derive(Default)]
pub struct BlockCache {
    until_us: std::sync::Mutex<std::collections::HashMap<String, i64>>,
}

impl BlockCache {
    const MAX_KEYS: usize = 10_000;

    fn wait_us<'a>(&self, keys: impl IntoIterator<Item = &'a str>, at_us: i64) -> i64 {
        let Ok(map) = self.until_us.lock() else { return 0 };
        keys.into_iter()
            .filter_map(|k| map.get(k))
            .map(|until| until - at_us)
            .max()
            .unwrap_or(0)
    }

    fn remember(&self, key: &str, until_us: i64, at_us: i64) {
        if let Ok(mut map) = self.until_us.lock() {
            if map.len() >= Self::MAX_KEYS {
                map.retain(|_, until| *until > at_us);
                if map.len() >= Self::MAX_KEYS {
                    map.clear();
                }
            }
            map.insert(key.to_string(), until_us);
        }
    }

    fn forget(&self, key: &str) {
        if let Ok(mut map) = self.until_us.lock() {
            map.remove(key);
        }
    }
}

/// Seconds an address must wait before its next sign-in attempt, if the store has
/// already blocked it (checked before a request body is even parsed).
pub fn address_blocked_for(state: &AppState, peer: Option<IpAddr>) -> Option<u64> {
    let ip = peer?;
    let at_us = (now().unix_timestamp_nanos() / 1000) as i64;
    let wait = state.blocks.wait_us([address_key(ip).as_str()], at_us);
    (wait > 0).then(|| ((wait + 999_999) / 1_000_000).max(1) as u64)
}

/// Audit a sign-in refused early because its address is blocked (within the
/// per-address budget of anonymous refusals, then summarised).
pub async fn audit_throttled(state: &AppState, peer: Option<IpAddr>, via: &str) -> Result<(), SignInError> {
    audit_sign_in_failure(state, peer, None, "throttled", via).await
}

/// How long a key is blocked after its `attempts`-th attempt.
pub fn throttle_delay(attempts: i64, free: u32, max: Duration) -> Option<Duration> {
    let over = attempts - i64::from(free);
    if over <= 0 {
        return None;
    }
    let secs = 1u64.checked_shl((over - 1).min(30) as u32).unwrap_or(u64::MAX);
    Some(Duration::from_secs(secs).min(max))
}

/// Count this attempt against the keys in order, atomically, before any password is
/// checked, stopping at the first key that refuses it. An attempt within the free
/// allowance goes ahead; past it, the first attempt after a
/// block has expired goes ahead and blocks the key again, for twice as long; every
/// other attempt is refused. Concurrent attempts are counted one by one by the store,
/// so a burst cannot slip past the limit. Returns the seconds to wait when throttled.
async fn count_attempt(state: &AppState, keys: &[ThrottleKey]) -> Result<(), SignInError> {
    let auth = &state.settings.auth;
    let at_us = (now().unix_timestamp_nanos() / 1000) as i64;
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
async fn release_attempt(state: &AppState, keys: &[ThrottleKey]) -> Result<(), SignInError> {
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

async fn audit_sign_in_failure(
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
    let Some(step) = crate::totp::matching_step(&secret, code, now().unix_timestamp()) else {
        return Ok(false);
    };
    state
        .store
        .use_totp_step(user.id, step)
        .await
        .map_err(unavailable)
}

fn totp_context(user: Uuid) -> String {
    format!("totp:{user}")
}

/// Tokens of a CLI session.
#[derive(Clone, Serialize)]
pub struct SessionTokens {
    /// Session access token (for Airlock only).
    pub access_token: String,
    /// `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Rotating refresh token.
    pub refresh_token: String,
    /// The session.
    pub session_id: Uuid,
    /// Whose.
    pub username: String,
}

fn random_token(prefix: &str) -> Result<String, OAuthError> {
    let mut bytes = [0u8; 32];
    crate::secrets::random_bytes(&mut bytes).map_err(|_| OAuthError::Unavailable)?;
    Ok(format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

fn hash_of(state: &AppState, purpose: &str, secret: &str) -> Vec<u8> {
    state.hasher.hash(purpose, secret).to_vec()
}

/// Sign a session access token for `session`.
fn session_access_token(
    state: &AppState,
    user: &User,
    session: &Session,
) -> Result<(String, u64), OAuthError> {
    let at = now();
    let exp = (at + state.settings.auth.session_access_ttl).min(session.expires_at);
    let claims = SessionClaims {
        iss: state.settings.public_url.clone(),
        sub: user.id.to_string(),
        aud: token::SESSION_AUDIENCE.into(),
        username: user.username.clone(),
        sid: session.id.to_string(),
        iat: at.unix_timestamp(),
        nbf: at.unix_timestamp(),
        exp: exp.unix_timestamp(),
        jti: Uuid::new_v4().to_string(),
    };
    let signer = state
        .keys
        .signer(&KeySet::Session)
        .ok_or(OAuthError::Unavailable)?;
    let jwt = token::sign(&signer, &claims).map_err(|_| OAuthError::Unavailable)?;
    Ok((jwt, (exp - at).whole_seconds().max(0) as u64))
}

fn new_session(
    state: &AppState,
    user: &User,
    kind: SessionKind,
    secret_hash: Option<Vec<u8>>,
    totp_verified: bool,
) -> Session {
    let at = now();
    let lifetime = match kind {
        SessionKind::Cli => state.settings.auth.session_lifetime,
        SessionKind::Web => state.settings.auth.web_session_lifetime,
    };
    Session {
        id: Uuid::new_v4(),
        user_id: user.id,
        kind,
        secret_hash,
        created_at: at,
        last_used_at: at,
        expires_at: at + lifetime,
        revoked_at: None,
        revoked_reason: None,
        totp_verified,
        stepped_up_at: None,
    }
}

fn session_event(kind: &str, user: &User, session: &Session, via: &str) -> NewAuditEvent {
    NewAuditEvent::new(kind, format!("user:{}", user.username), Outcome::Success)
        .subject(session.id.to_string())
        .detail("via", via.to_string())
}

/// Start a CLI session for a signed-in person.
pub async fn start_cli_session(
    state: &AppState,
    signed_in: &SignedIn,
    via: &str,
) -> Result<SessionTokens, OAuthError> {
    let user = &signed_in.user;
    let session = new_session(state, user, SessionKind::Cli, None, signed_in.totp_verified);
    let refresh = random_token("airlock_refresh_")?;
    let event = session_event("session.created", user, &session, via);
    state
        .store
        .create_session(&session, Some(&hash_of(state, "refresh", &refresh)), event)
        .await
        .map_err(|_| OAuthError::Unavailable)?;
    let (access_token, expires_in) = session_access_token(state, user, &session)?;
    Ok(SessionTokens {
        access_token,
        token_type: "Bearer",
        expires_in,
        refresh_token: refresh,
        session_id: session.id,
        username: user.username.clone(),
    })
}

/// Start a browser session; returns the cookie value.
pub async fn start_web_session(
    state: &AppState,
    signed_in: &SignedIn,
) -> Result<(Session, String), OAuthError> {
    let user = &signed_in.user;
    let cookie = random_token("")?;
    let session = new_session(
        state,
        user,
        SessionKind::Web,
        Some(hash_of(state, "web", &cookie)),
        signed_in.totp_verified,
    );
    let event = session_event("session.created", user, &session, "web");
    state
        .store
        .create_session(&session, None, event)
        .await
        .map_err(|_| OAuthError::Unavailable)?;
    Ok((session, cookie))
}

/// Why a session is not usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionError {
    /// Bad, expired, revoked or idle: sign in again.
    Invalid,
    /// The store failed.
    Unavailable,
}

/// A person authenticated by a live session.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// Who.
    pub user: User,
    /// Which session.
    pub session: Session,
}

fn check_session(
    state: &AppState,
    session: &Session,
    user: &User,
    kind: SessionKind,
) -> Result<(), SessionError> {
    let at = now();
    let idle = state.settings.auth.session_idle_timeout;
    let live = session.kind == kind
        && session.revoked_at.is_none()
        && session.expires_at > at
        && session.last_used_at + idle > at
        && session.user_id == user.id
        && !user.disabled;
    if live { Ok(()) } else { Err(SessionError::Invalid) }
}

async fn load(state: &AppState, sid: Uuid, uid: Uuid) -> Result<(Session, User), SessionError> {
    let map = |e: StoreError| match e {
        StoreError::NotFound => SessionError::Invalid,
        _ => SessionError::Unavailable,
    };
    let session = state.store.session(sid).await.map_err(map)?;
    let user = state.store.user_by_id(uid).await.map_err(map)?;
    Ok((session, user))
}

/// Authenticate a session access token (`Authorization: Bearer` or a token exchange's
/// `subject_token`). Revocation, idle and absolute limits and a disabled person all end
/// it at once: every use is checked against the store.
pub async fn authenticate_session(state: &AppState, bearer: &str) -> Result<Authenticated, SessionError> {
    let jwks = state
        .keys
        .jwks(&KeySet::Session)
        .ok_or(SessionError::Unavailable)?;
    let claims = token::verify_session(bearer, &jwks, &state.settings.public_url, now().unix_timestamp())
        .map_err(|_| SessionError::Invalid)?;
    let sid = Uuid::parse_str(&claims.sid).map_err(|_| SessionError::Invalid)?;
    let uid = Uuid::parse_str(&claims.sub).map_err(|_| SessionError::Invalid)?;
    let (session, user) = load(state, sid, uid).await?;
    check_session(state, &session, &user, SessionKind::Cli)?;
    Ok(Authenticated { user, session })
}

/// Authenticate a browser cookie.
pub async fn authenticate_web(state: &AppState, cookie: &str) -> Result<Authenticated, SessionError> {
    if cookie.len() > 128 {
        return Err(SessionError::Invalid);
    }
    let session = match state
        .store
        .session_by_secret(&hash_of(state, "web", cookie))
        .await
    {
        Ok(s) => s,
        Err(StoreError::NotFound) => return Err(SessionError::Invalid),
        Err(_) => return Err(SessionError::Unavailable),
    };
    let (session, user) = load(state, session.id, session.user_id).await?;
    check_session(state, &session, &user, SessionKind::Web)?;
    Ok(Authenticated { user, session })
}

/// The roles that count in this session: admin and approver roles need TOTP enrolled
/// AND this session signed in (or stepped up) with a TOTP code.
pub fn effective_roles(state: &AppState, auth: &Authenticated) -> Vec<String> {
    let strong = auth.user.totp_enrolled() && auth.session.totp_verified;
    policy::effective_roles(&state.settings, &auth.user.roles, strong)
}

/// Whether the session confirmed a fresh TOTP code within `auth.step_up_lifetime`.
pub fn is_stepped_up(state: &AppState, auth: &Authenticated) -> bool {
    auth.session
        .stepped_up_at
        .is_some_and(|t| now() - t < state.settings.auth.step_up_lifetime)
}

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

/// Step up: confirm a fresh TOTP code for this session (needed for admin changes and
/// for the first token under a prod-tier or destructive grant; marks the session as TOTP-verified).
pub async fn step_up(
    state: &AppState,
    peer: Option<IpAddr>,
    auth: &Authenticated,
    code: &str,
) -> Result<(), SignInError> {
    confirm_totp(state, peer, auth, code, "step-up").await?;
    state
        .store
        .step_up_session(auth.session.id, now())
        .await
        .map_err(unavailable)?;
    let event = session_event("session.stepped_up", &auth.user, &auth.session, "totp");
    state.store.append_audit(event).await.map_err(unavailable)?;
    Ok(())
}

/// End a session (logout).
pub async fn end_session(state: &AppState, auth: &Authenticated, reason: &str) -> Result<(), SessionError> {
    let event = session_event("session.revoked", &auth.user, &auth.session, reason);
    match state.store.revoke_session(auth.session.id, reason, event).await {
        Ok(()) | Err(StoreError::NotFound) => Ok(()),
        Err(_) => Err(SessionError::Unavailable),
    }
}

/// `grant_type=refresh_token`: rotate the refresh token; a reused one ends the session.
pub async fn refresh(state: &AppState, presented: &str) -> Result<SessionTokens, OAuthError> {
    let gone = || OAuthError::InvalidGrant("the session has ended; run `airlock login`".into());
    if presented.len() > 256 {
        return Err(gone());
    }
    let old_hash = hash_of(state, "refresh", presented);
    let sid = match state.store.refresh_token_session(&old_hash).await {
        Ok(s) => s,
        Err(StoreError::NotFound) => return Err(gone()),
        Err(_) => return Err(OAuthError::Unavailable),
    };
    let session = state
        .store
        .session(sid)
        .await
        .map_err(|_| OAuthError::Unavailable)?;
    let user = state
        .store
        .user_by_id(session.user_id)
        .await
        .map_err(|_| OAuthError::Unavailable)?;
    check_session(state, &session, &user, SessionKind::Cli).map_err(|_| gone())?;
    let new = random_token("airlock_refresh_")?;
    let actor = format!("user:{}", user.username);
    let rotated = NewAuditEvent::new("session.refreshed", actor.clone(), Outcome::Success);
    let reused = NewAuditEvent::new("session.refresh_reuse", actor, Outcome::Refused)
        .detail("action", "session revoked");
    match state
        .store
        .rotate_refresh_token(
            &old_hash,
            &hash_of(state, "refresh", &new),
            now(),
            rotated,
            reused,
        )
        .await
    {
        Ok(RefreshOutcome::Rotated(_)) => {
            let (access_token, expires_in) = session_access_token(state, &user, &session)?;
            Ok(SessionTokens {
                access_token,
                token_type: "Bearer",
                expires_in,
                refresh_token: new,
                session_id: session.id,
                username: user.username,
            })
        }
        Ok(RefreshOutcome::Reused(_)) => {
            tracing::warn!(session = %session.id, "refresh token reuse; session revoked");
            Err(OAuthError::InvalidGrant(
                "this refresh token was already used, so the session has been ended; run `airlock login`"
                    .into(),
            ))
        }
        Err(_) => Err(OAuthError::Unavailable),
    }
}

/// Parameters of an RFC 8693 exchange.
pub struct ExchangeRequest<'a> {
    /// The session access token.
    pub subject_token: &'a str,
    /// Must be [`ACCESS_TOKEN_TYPE`].
    pub subject_token_type: &'a str,
    /// Name of the process acting for the person, if any.
    pub actor_token: Option<&'a str>,
    /// Must be [`PROCESS_TOKEN_TYPE`] when `actor_token` is given.
    pub actor_token_type: Option<&'a str>,
    /// Requested scopes.
    pub scope: Option<&'a str>,
}

fn actor_from(token: Option<&str>, typ: Option<&str>) -> Result<Option<Actor>, OAuthError> {
    match (token, typ) {
        (None, None) => Ok(None),
        (Some(name), Some(PROCESS_TOKEN_TYPE)) => {
            let clean: String = name
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || "._-".contains(*c))
                .take(64)
                .collect();
            if clean.is_empty() {
                return Err(OAuthError::InvalidRequest(
                    "actor_token must name the process".into(),
                ));
            }
            Ok(Some(Actor {
                sub: format!("process:{clean}"),
            }))
        }
        _ => Err(OAuthError::InvalidRequest(format!(
            "actor_token and actor_token_type go together; the only actor type is {PROCESS_TOKEN_TYPE}"
        ))),
    }
}

/// `grant_type=token-exchange` at environment `env_name`: a session token in, an
/// environment token out, within the person's roles.
pub async fn exchange(
    state: &AppState,
    peer: Option<IpAddr>,
    env_name: &str,
    req: ExchangeRequest<'_>,
) -> Result<TokenResponse, OAuthError> {
    let env = state
        .settings
        .environment(env_name)
        .ok_or_else(|| OAuthError::UnknownEnvironment(env_name.to_string()))?;
    if req.subject_token_type != ACCESS_TOKEN_TYPE {
        return Err(OAuthError::InvalidRequest(format!(
            "subject_token_type must be {ACCESS_TOKEN_TYPE}"
        )));
    }
    let act = actor_from(req.actor_token, req.actor_token_type)?;
    let auth = match authenticate_session(state, req.subject_token).await {
        Ok(a) => a,
        Err(SessionError::Unavailable) => return Err(OAuthError::Unavailable),
        Err(SessionError::Invalid) => {
            let event = NewAuditEvent::new("token.refused", "anonymous", Outcome::Refused)
                .env(env_name)
                .detail("reason", "invalid_session")
                .detail("grant_type", "token-exchange");
            if state.refusals.admit(peer, env_name, "invalid_session") {
                state
                    .store
                    .append_audit(event)
                    .await
                    .map_err(|_| OAuthError::Unavailable)?;
            }
            return Err(OAuthError::InvalidGrant(
                "the session is not valid; run `airlock login`".into(),
            ));
        }
    };
    let user = &auth.user;
    let actor = format!("user:{}", user.username);
    let refuse = |reason: &str| {
        NewAuditEvent::new("token.refused", actor.clone(), Outcome::Refused)
            .env(env_name)
            .subject(user.username.clone())
            .detail("reason", reason.to_string())
            .detail("grant_type", "token-exchange")
            .detail("act", act.as_ref().map(|a| a.sub.clone()))
    };
    // Policy refusals of this person count against their budget (see crate::refusals).
    let audit_refusal = |event: NewAuditEvent| record_refusal(state, &actor, event);
    if state.settings.auth.require_totp && !user.totp_enrolled() {
        audit_refusal(refuse("totp_not_enrolled")).await?;
        return Err(OAuthError::AccessDenied(
            "this server requires TOTP for everyone: run `airlock totp enroll` first".into(),
        ));
    }
    let roles = effective_roles(state, &auth);
    let plan = match policy::human_scope_plan(&state.settings, env, env_name, &roles, req.scope) {
        Ok(p) => p,
        Err(refusal) => {
            let event =
                refuse(refusal.reason()).detail("requested", req.scope.map(|s| known_scopes(state, s)));
            audit_refusal(event).await?;
            return Err(refusal_error(&refusal, env_name));
        }
    };
    // Invariants 3 and 5: production, a destructive scope, or anything the roles do not
    // give needs an active grant of this person covering all of it.
    let grant = if plan.needs_grant.is_empty() {
        None
    } else {
        let holder = crate::domain::person_holder(user.id);
        let actor_sub = act.as_ref().map(|a| a.sub.as_str());
        let found =
            crate::escalations::covering_grant(state, &holder, env_name, &plan.needs_grant, actor_sub)
                .await
                .map_err(|_| OAuthError::Unavailable)?;
        let Some(grant) = found else {
            let refusal = policy::human_refusal(&state.settings, env, env_name, &roles, &plan.needs_grant);
            audit_refusal(
                refuse(refusal.reason()).detail("requested", known_scopes(state, &plan.wanted.join(" "))),
            )
            .await?;
            return Err(refusal_error(&refusal, env_name));
        };
        // A grant that reaches production, or covers a destructive scope in any
        // environment, is bound to one session after a fresh step-up.
        let destructive = grant
            .scopes
            .iter()
            .any(|s| crate::policy::escalation::is_destructive(&state.settings, s));
        if env.tier == crate::config::Tier::Prod || destructive {
            bind_grant(state, &auth, &grant, &refuse).await?;
        }
        Some(grant)
    };
    let scopes = plan.wanted;
    let at = now();
    let mut lifetime = policy::token_lifetime(env).min(Duration::from_secs(
        (auth.session.expires_at - at).whole_seconds().max(0) as u64,
    ));
    if let Some(g) = &grant {
        // Invariant 6: never past the grant's end.
        lifetime = crate::policy::escalation::grant_token_lifetime(lifetime, g, at);
        if lifetime.is_zero() {
            audit_refusal(refuse("grant_ended")).await?;
            return Err(OAuthError::AccessDenied(
                "the grant has ended; ask for a new escalation".into(),
            ));
        }
    }
    let claims = AccessClaims {
        iss: state.settings.issuer(env_name),
        sub: user.id.to_string(),
        username: Some(user.username.clone()),
        aud: env.audience.clone(),
        client_id: CLI_CLIENT_ID.into(),
        scope: scopes.join(" "),
        env: env_name.to_string(),
        iat: at.unix_timestamp(),
        nbf: at.unix_timestamp(),
        exp: at.unix_timestamp() + lifetime.as_secs() as i64,
        jti: Uuid::new_v4().to_string(),
        act,
        grant: grant.as_ref().map(|g| g.id.to_string()),
        sid: Some(auth.session.id.to_string()),
    };
    let signer = state
        .keys
        .signer(&KeySet::Environment(env_name.to_string()))
        .ok_or(OAuthError::Unavailable)?;
    let access_token = token::sign(&signer, &claims).map_err(|_| OAuthError::Unavailable)?;
    let event = NewAuditEvent::new("token.issued", actor, Outcome::Success)
        .env(env_name)
        .subject(user.username.clone())
        .detail("jti", claims.jti.clone())
        .detail("kid", signer.kid.clone())
        .detail("scope", claims.scope.clone())
        .detail("exp", claims.exp)
        .detail("grant_type", "token-exchange")
        .detail("session", auth.session.id.to_string())
        .detail("act", claims.act.as_ref().map(|a| a.sub.clone()))
        .detail("grant", claims.grant.clone());
    state
        .store
        .append_audit(event)
        .await
        .map_err(|_| OAuthError::Unavailable)?;
    let _ = state.store.touch_session(auth.session.id, at).await;
    Ok(TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in: lifetime.as_secs(),
        scope: claims.scope,
        issued_token_type: Some(ACCESS_TOKEN_TYPE),
    })
}

/// Write a token-endpoint decision to the audit trail; if it cannot be written, the
/// request fails closed (invariant 7).
async fn record(state: &AppState, event: NewAuditEvent) -> Result<(), OAuthError> {
    state
        .store
        .append_audit(event)
        .await
        .map(|_| ())
        .map_err(|_| OAuthError::Unavailable)
}

/// Write a policy refusal of `principal` at the token endpoint, within its budget (see
/// [`crate::refusals`]); an admitted refusal that cannot be written fails closed.
async fn record_refusal(state: &AppState, principal: &str, event: NewAuditEvent) -> Result<(), OAuthError> {
    state
        .refusals
        .record(state.store.as_ref(), principal, event)
        .await
        .map_err(|_| OAuthError::Unavailable)
}

/// Invariants 3 and 5 for people: a prod-tier grant, or one covering a destructive
/// scope, is used only from the session that first used it, and that first use needs a
/// TOTP code confirmed after the grant started (so a copied session file cannot use it).
async fn bind_grant(
    state: &AppState,
    auth: &Authenticated,
    grant: &crate::domain::Grant,
    refuse: &(dyn Fn(&str) -> NewAuditEvent + Sync),
) -> Result<(), OAuthError> {
    let other_session = || {
        OAuthError::AccessDenied(format!(
            "this grant is bound to the session that first used it; use that session, \
             or ask for a new escalation: {}",
            crate::policy::escalate_command(&grant.environment, &grant.scopes)
        ))
    };
    let audit = |event: NewAuditEvent| record(state, event);
    match grant.session_id {
        Some(sid) if sid == auth.session.id => return Ok(()),
        Some(_) => {
            audit(refuse("grant_bound_to_other_session")).await?;
            return Err(other_session());
        }
        None => {}
    }
    let stepped_up = auth
        .session
        .stepped_up_at
        .is_some_and(|t| t >= grant.starts_at && now() - t < state.settings.auth.step_up_lifetime);
    if !stepped_up {
        audit(refuse("step_up_required")).await?;
        return Err(OAuthError::StepUpRequired(
            "your first token under this grant needs a fresh TOTP code: \
             run `airlock step-up`, then ask again (`airlock token --env ENV` does this for you)"
                .replace("ENV", &grant.environment),
        ));
    }
    let event = NewAuditEvent::new(
        "grant.bound",
        format!("user:{}", auth.user.username),
        Outcome::Success,
    )
    .env(grant.environment.clone())
    .subject(grant.id.to_string())
    .detail("session", auth.session.id.to_string());
    match state
        .store
        .bind_grant_session(grant.id, auth.session.id, now(), event)
        .await
    {
        Ok(()) => Ok(()),
        Err(StoreError::Conflict) => {
            audit(refuse("grant_bound_to_other_session")).await?;
            Err(other_session())
        }
        Err(_) => Err(OAuthError::Unavailable),
    }
}

fn known_scopes(state: &AppState, raw: &str) -> Vec<String> {
    raw.split(' ')
        .filter(|s| state.settings.scopes.contains_key(*s))
        .map(str::to_string)
        .collect()
}

fn refusal_error(r: &HumanRefusal, env: &str) -> OAuthError {
    if r.is_access_denied() {
        OAuthError::AccessDenied(r.description(env))
    } else {
        OAuthError::InvalidScope(r.description(env))
    }
}

/// An RFC 8628 device authorization response.
#[derive(Clone, Serialize)]
pub struct DeviceAuthorization {
    /// Secret the CLI polls with.
    pub device_code: String,
    /// What the person types.
    pub user_code: String,
    /// The page to open.
    pub verification_uri: String,
    /// The page with the code filled in.
    pub verification_uri_complete: String,
    /// Seconds.
    pub expires_in: u64,
    /// Seconds between polls.
    pub interval: u64,
}

fn new_user_code() -> Result<String, OAuthError> {
    let mut bytes = [0u8; 8];
    crate::secrets::random_bytes(&mut bytes).map_err(|_| OAuthError::Unavailable)?;
    let chars: String = bytes
        .iter()
        // 256 % 20 != 0; the bias (< 1%) does not matter for a short-lived, throttled code.
        .map(|b| USER_CODE_ALPHABET[(*b as usize) % USER_CODE_ALPHABET.len()] as char)
        .collect();
    Ok(format!("{}-{}", &chars[..4], &chars[4..]))
}

/// Normalise what a person typed: case, spaces and the dash do not matter.
pub fn normalize_user_code(raw: &str) -> Option<String> {
    let c: String = raw
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    (c.len() == 8 && c.bytes().all(|b| USER_CODE_ALPHABET.contains(&b)))
        .then(|| format!("{}-{}", &c[..4], &c[4..]))
}

/// Longest `User-Agent` kept for the device approval page.
const MAX_USER_AGENT_CHARS: usize = 160;

/// A `User-Agent` fit to show a person: control and format characters (which could
/// reorder or hide text) become spaces, runs of spaces fold, and it is cut to
/// [`MAX_USER_AGENT_CHARS`]. `None` when nothing printable is left.
pub fn clean_user_agent(raw: &str) -> Option<String> {
    let mut out = String::new();
    let mut buf = [0u8; 4];
    for c in raw.chars() {
        let c = if crate::policy::escalation::has_control_chars(c.encode_utf8(&mut buf)) {
            ' '
        } else {
            c
        };
        if c == ' ' && (out.is_empty() || out.ends_with(' ')) {
            continue;
        }
        if out.chars().count() >= MAX_USER_AGENT_CHARS {
            out.push('…');
            break;
        }
        out.push(c);
    }
    let out = out.trim_end().to_string();
    (!out.is_empty()).then_some(out)
}

/// `POST /oauth/device_authorization`.
pub async fn device_authorize(
    state: &AppState,
    peer: Option<IpAddr>,
    user_agent: Option<&str>,
    client_id: &str,
) -> Result<DeviceAuthorization, OAuthError> {
    if client_id != CLI_CLIENT_ID {
        return Err(OAuthError::InvalidClient);
    }
    // An unauthenticated endpoint that writes: bounded per address like other anonymous calls.
    if !state.refusals.admit(peer, "device", "device_authorization") {
        return Err(OAuthError::SlowDown);
    }
    let auth = &state.settings.auth;
    let device_code = random_token("airlock_device_")?;
    let at = now();
    for _ in 0..3 {
        let code = DeviceCode {
            id: Uuid::new_v4(),
            device_code_hash: hash_of(state, "device", &device_code),
            user_code: new_user_code()?,
            client_id: client_id.to_string(),
            status: DeviceStatus::Pending,
            interval_secs: auth.device_poll_interval.as_secs().max(1) as i64,
            created_at: at,
            expires_at: at + auth.device_code_lifetime,
            last_polled_at: None,
            user_id: None,
            totp_verified: false,
            client_address: peer.map(|p| p.to_string()),
            client_user_agent: user_agent.and_then(clean_user_agent),
        };
        let event = NewAuditEvent::new("device.requested", "anonymous", Outcome::Success)
            .subject(code.id.to_string())
            .detail("client_address", peer.map(|p| p.to_string()));
        match state.store.create_device_code(&code, event).await {
            Ok(()) => {
                let uri = format!("{}/device", state.settings.public_url);
                return Ok(DeviceAuthorization {
                    device_code,
                    verification_uri_complete: format!("{uri}?user_code={}", code.user_code),
                    user_code: code.user_code,
                    verification_uri: uri,
                    expires_in: auth.device_code_lifetime.as_secs(),
                    interval: code.interval_secs as u64,
                });
            }
            Err(StoreError::Conflict) => continue,
            Err(_) => return Err(OAuthError::Unavailable),
        }
    }
    Err(OAuthError::Unavailable)
}

/// `grant_type=device_code`: the CLI's poll (RFC 8628 section 3.4/3.5).
pub async fn device_poll(
    state: &AppState,
    device_code: &str,
    client_id: &str,
) -> Result<SessionTokens, OAuthError> {
    let bad = || OAuthError::InvalidGrant("unknown device code; run `airlock login` again".into());
    if device_code.len() > 256 {
        return Err(bad());
    }
    let code = match state
        .store
        .device_code_by_hash(&hash_of(state, "device", device_code))
        .await
    {
        Ok(c) => c,
        Err(StoreError::NotFound) => return Err(bad()),
        Err(_) => return Err(OAuthError::Unavailable),
    };
    if code.client_id != client_id {
        return Err(bad());
    }
    let at = now();
    if at >= code.expires_at {
        return Err(OAuthError::ExpiredToken);
    }
    match code.status {
        DeviceStatus::Denied => Err(OAuthError::AccessDenied(
            "the sign-in was denied in the browser".into(),
        )),
        DeviceStatus::Consumed => Err(OAuthError::InvalidGrant(
            "this device code was already used".into(),
        )),
        DeviceStatus::Pending => {
            let too_soon = code
                .last_polled_at
                .is_some_and(|last| at - last < time::Duration::seconds(code.interval_secs));
            let interval = if too_soon {
                code.interval_secs + 5
            } else {
                code.interval_secs
            };
            state
                .store
                .poll_device_code(code.id, at, interval)
                .await
                .map_err(|_| OAuthError::Unavailable)?;
            Err(if too_soon {
                OAuthError::SlowDown
            } else {
                OAuthError::AuthorizationPending
            })
        }
        DeviceStatus::Approved => {
            let uid = code.user_id.ok_or(OAuthError::Unavailable)?;
            let user = state
                .store
                .user_by_id(uid)
                .await
                .map_err(|_| OAuthError::Unavailable)?;
            if user.disabled {
                return Err(OAuthError::AccessDenied("this account is disabled".into()));
            }
            // SECURITY: RFC 8628 section 5.4. Whoever started this login may not be the
            // person who approved it in the browser (an agent can get a code approved), so
            // the CLI session starts without TOTP: approver and admin rights count only
            // after `airlock step-up` from the CLI itself, with a code from the person's
            // authenticator.
            let session = new_session(state, &user, SessionKind::Cli, None, false);
            let refresh = random_token("airlock_refresh_")?;
            let event = session_event("session.created", &user, &session, "device");
            match state
                .store
                .redeem_device_code(code.id, &session, &hash_of(state, "refresh", &refresh), event)
                .await
            {
                Ok(()) => {}
                Err(StoreError::Conflict) => {
                    return Err(OAuthError::InvalidGrant(
                        "this device code was already used".into(),
                    ));
                }
                Err(_) => return Err(OAuthError::Unavailable),
            }
            let (access_token, expires_in) = session_access_token(state, &user, &session)?;
            Ok(SessionTokens {
                access_token,
                token_type: "Bearer",
                expires_in,
                refresh_token: refresh,
                session_id: session.id,
                username: user.username,
            })
        }
    }
}

/// Why a device code cannot be decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceError {
    /// No pending code by that name (also: expired or already decided).
    Unknown,
    /// The store failed.
    Unavailable,
}

/// The pending, unexpired device request a person typed the code of.
pub async fn pending_device(state: &AppState, user_code: &str) -> Result<DeviceCode, DeviceError> {
    let code = normalize_user_code(user_code).ok_or(DeviceError::Unknown)?;
    match state.store.device_code_by_user_code(&code).await {
        Ok(c) if c.status == DeviceStatus::Pending && c.expires_at > now() => Ok(c),
        Ok(_) | Err(StoreError::NotFound) => Err(DeviceError::Unknown),
        Err(_) => Err(DeviceError::Unavailable),
    }
}

/// Approve or deny a device code as `auth`'s person.
pub async fn decide_device(
    state: &AppState,
    auth: &Authenticated,
    user_code: &str,
    approve: bool,
) -> Result<(), DeviceError> {
    let code = pending_device(state, user_code).await?;
    let kind = if approve {
        "device.approved"
    } else {
        "device.denied"
    };
    let event = NewAuditEvent::new(kind, format!("user:{}", auth.user.username), Outcome::Success)
        .subject(code.id.to_string())
        .detail("web_session", auth.session.id.to_string());
    match state
        .store
        .decide_device_code(
            code.id,
            auth.user.id,
            approve,
            auth.session.totp_verified,
            now(),
            event,
        )
        .await
    {
        Ok(()) => Ok(()),
        Err(StoreError::Conflict) => Err(DeviceError::Unknown),
        Err(_) => Err(DeviceError::Unavailable),
    }
}

/// Why an administrative or self-service change failed.
#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    /// Bad input; the message says what to change.
    #[error("{0}")]
    Invalid(String),
    /// No such person.
    #[error("no such user")]
    NotFound,
    /// Taken, or not allowed in the current state.
    #[error("{0}")]
    Conflict(String),
    /// Hashing queue full.
    #[error("too busy; retry shortly")]
    Busy,
    /// The store failed.
    #[error("the store is unavailable")]
    Unavailable,
    /// Too many wrong codes: retry after this many seconds.
    #[error("too many failed attempts; try again in {0} seconds")]
    Throttled(u64),
}

impl From<SignInError> for ManageError {
    fn from(e: SignInError) -> Self {
        match e {
            SignInError::Throttled(s) => ManageError::Throttled(s),
            SignInError::Busy => ManageError::Busy,
            _ => ManageError::Unavailable,
        }
    }
}

impl From<StoreError> for ManageError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ManageError::NotFound,
            StoreError::Conflict => ManageError::Conflict("that username is taken".into()),
            _ => ManageError::Unavailable,
        }
    }
}

impl From<PasswordError> for ManageError {
    fn from(e: PasswordError) -> Self {
        match e {
            PasswordError::Busy => ManageError::Busy,
            PasswordError::Internal => ManageError::Unavailable,
        }
    }
}

fn check_roles(state: &AppState, roles: &[String]) -> Result<(), ManageError> {
    for r in roles {
        if !state.settings.roles.contains_key(r) {
            return Err(ManageError::Invalid(format!(
                "unknown role {r:?}; configured roles: {}",
                state
                    .settings
                    .roles
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    Ok(())
}

async fn new_user(
    state: &AppState,
    raw_username: &str,
    password: &SecretString,
    roles: Vec<String>,
) -> Result<User, ManageError> {
    let username = normalize_username(raw_username).ok_or_else(|| {
        ManageError::Invalid(
            "usernames are 1-64 characters of a-z, 0-9 and '._-@', not starting with agt_".into(),
        )
    })?;
    check_policy(
        &username,
        password.expose_secret(),
        state.settings.auth.password_min_length,
    )
    .map_err(ManageError::Invalid)?;
    check_roles(state, &roles)?;
    let hash = state.passwords.hash(password.clone()).await?;
    let at = now();
    Ok(User {
        id: Uuid::new_v4(),
        username,
        password_hash: hash,
        roles,
        totp_sealed: None,
        totp_pending_sealed: None,
        totp_last_step: None,
        disabled: false,
        created_at: at,
        updated_at: at,
    })
}

/// Create the first admin (store-direct; refused once anyone holds an admin role).
pub async fn bootstrap_admin(
    state: &AppState,
    username: &str,
    password: &SecretString,
    actor: &str,
) -> Result<User, ManageError> {
    let admin_roles: Vec<String> = state
        .settings
        .roles
        .iter()
        .filter(|(_, r)| r.admin)
        .map(|(n, _)| n.clone())
        .collect();
    let role = admin_roles
        .first()
        .cloned()
        .ok_or_else(|| ManageError::Invalid("no role has admin = true in the configuration".into()))?;
    let user = new_user(state, username, password, vec![role]).await?;
    let event = NewAuditEvent::new("user.bootstrapped", actor, Outcome::Success)
        .subject(user.username.clone())
        .detail("roles", user.roles.clone());
    match state.store.bootstrap_admin(&user, &admin_roles, event).await {
        Ok(()) => Ok(user),
        Err(StoreError::Conflict) => Err(ManageError::Conflict(
            "an admin already exists (or the username is taken); bootstrap only creates the first admin"
                .into(),
        )),
        Err(e) => Err(e.into()),
    }
}

/// Create a person.
pub async fn create_user(
    state: &AppState,
    actor: &str,
    username: &str,
    password: &SecretString,
    roles: Vec<String>,
) -> Result<User, ManageError> {
    let user = new_user(state, username, password, roles).await?;
    let event = NewAuditEvent::new("user.created", actor, Outcome::Success)
        .subject(user.username.clone())
        .detail("roles", user.roles.clone());
    state.store.create_user(&user, event).await?;
    Ok(user)
}

/// Look a person up by username.
pub async fn find_user(state: &AppState, username: &str) -> Result<User, ManageError> {
    let u = normalize_username(username).ok_or(ManageError::NotFound)?;
    Ok(state.store.user_by_username(&u).await?)
}

/// Disable (ending every session at once) or enable a person.
pub async fn set_user_disabled(
    state: &AppState,
    actor: &str,
    username: &str,
    disabled: bool,
) -> Result<User, ManageError> {
    let user = find_user(state, username).await?;
    let kind = if disabled { "user.disabled" } else { "user.enabled" };
    let event = NewAuditEvent::new(kind, actor, Outcome::Success).subject(user.username.clone());
    Ok(state
        .store
        .update_user(user.id, UserChange::Disabled(disabled), event)
        .await?)
}

/// Reset a person: a new password (ends their sessions) and/or remove their TOTP.
pub async fn reset_user(
    state: &AppState,
    actor: &str,
    username: &str,
    password: Option<&SecretString>,
    reset_totp: bool,
    roles: Option<Vec<String>>,
) -> Result<User, ManageError> {
    let mut user = find_user(state, username).await?;
    if password.is_none() && !reset_totp && roles.is_none() {
        return Err(ManageError::Invalid(
            "nothing to reset: give a password, reset_totp or roles".into(),
        ));
    }
    if let Some(p) = password {
        check_policy(
            &user.username,
            p.expose_secret(),
            state.settings.auth.password_min_length,
        )
        .map_err(ManageError::Invalid)?;
        let hash = state.passwords.hash(p.clone()).await?;
        let event =
            NewAuditEvent::new("user.password_reset", actor, Outcome::Success).subject(user.username.clone());
        user = state
            .store
            .update_user(user.id, UserChange::Password(hash), event)
            .await?;
    }
    if reset_totp {
        let event =
            NewAuditEvent::new("user.totp_reset", actor, Outcome::Success).subject(user.username.clone());
        user = state
            .store
            .update_user(user.id, UserChange::TotpReset, event)
            .await?;
    }
    if let Some(roles) = roles {
        check_roles(state, &roles)?;
        let event = NewAuditEvent::new("user.roles_changed", actor, Outcome::Success)
            .subject(user.username.clone())
            .detail("roles", roles.clone());
        user = state
            .store
            .update_user(user.id, UserChange::Roles(roles), event)
            .await?;
    }
    Ok(user)
}

/// A TOTP secret awaiting its first code.
#[derive(Clone, Serialize)]
pub struct TotpEnrolment {
    /// Base32 secret, for typing into an app.
    pub secret: String,
    /// `otpauth://` URI (what the QR code holds).
    pub otpauth_uri: String,
}

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
    let mut plain = zeroize::Zeroizing::new(now().unix_timestamp().to_be_bytes().to_vec());
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
    let at = now();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_after_the_free_failures_and_are_capped() {
        let max = Duration::from_secs(900);
        assert_eq!(throttle_delay(3, 3, max), None);
        assert_eq!(throttle_delay(4, 3, max), Some(Duration::from_secs(1)));
        assert_eq!(throttle_delay(6, 3, max), Some(Duration::from_secs(4)));
        assert_eq!(throttle_delay(60, 3, max), Some(max));
    }

    #[test]
    fn user_codes_are_typed_forgivingly() {
        let c = new_user_code().unwrap();
        assert_eq!(normalize_user_code(&c.to_lowercase().replace('-', " ")), Some(c));
        assert_eq!(
            normalize_user_code("ABCD-EFGH"),
            None,
            "vowels are not in the alphabet"
        );
        assert_eq!(normalize_user_code("BCDF"), None);
    }

    #[test]
    fn usernames_are_normalised_and_cannot_pose_as_agents() {
        assert_eq!(normalize_username(" Alice "), Some("alice".into()));
        assert_eq!(normalize_username("agt_0123"), None);
        assert_eq!(normalize_username("a b"), None);
    }
}
