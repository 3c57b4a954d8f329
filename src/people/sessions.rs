//! Starting and ending sessions: CLI sessions (a session access token signed with the
//! session key, which no environment accepts, and a rotating refresh token) and browser
//! sessions (a cookie), both stored as keyed hashes only (invariant 8).

use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use uuid::Uuid;

use super::sign_in::{SignInError, SignedIn, unavailable};
use super::totp::confirm_totp;
use crate::auth::{Authenticated, SessionError};
use crate::domain::{KeySet, NewAuditEvent, Outcome, Session, SessionKind, User};
use crate::state::AppState;
use crate::store::StoreError;
use crate::token::{self, SessionClaims};

/// Tokens of a CLI session (their body is part of the wire).
pub use crate::wire::SessionTokens;

/// A random secret with a recognisable prefix (refresh tokens, device codes, cookies).
pub(crate) fn random_token(prefix: &str) -> Result<String, SessionError> {
    let mut bytes = [0u8; 32];
    crate::secrets::random_bytes(&mut bytes).map_err(|_| SessionError::Unavailable)?;
    Ok(format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// The keyed hash a secret of this `purpose` is stored as.
pub(crate) fn hash_of(state: &AppState, purpose: &str, secret: &str) -> Vec<u8> {
    state.hasher.hash(purpose, secret).to_vec()
}

/// Sign a session access token for `session`.
fn session_access_token(
    state: &AppState,
    user: &User,
    session: &Session,
) -> Result<(String, u64), SessionError> {
    let at = state.now();
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
        .ok_or(SessionError::Unavailable)?;
    let jwt = token::sign(&signer, &claims).map_err(|e| {
        tracing::error!(error = ?e, "signing a session token failed");
        SessionError::Unavailable
    })?;
    Ok((jwt, (exp - at).whole_seconds().max(0) as u64))
}

/// A new session of `kind` for `user`, starting now.
pub(crate) fn new_session(
    state: &AppState,
    user: &User,
    kind: SessionKind,
    secret_hash: Option<Vec<u8>>,
    totp_verified: bool,
) -> Session {
    let at = state.now();
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

/// The audit event of a change to `session`.
pub(crate) fn session_event(kind: &str, user: &User, session: &Session, via: &str) -> NewAuditEvent {
    NewAuditEvent::new(kind, format!("user:{}", user.username), Outcome::Success)
        .subject(session.id.to_string())
        .detail("via", via.to_string())
}

/// The tokens of a CLI session that has just started or rotated its refresh token.
pub(crate) fn session_tokens(
    state: &AppState,
    user: &User,
    session: &Session,
    refresh_token: String,
) -> Result<SessionTokens, SessionError> {
    let (access_token, expires_in) = session_access_token(state, user, session)?;
    Ok(SessionTokens {
        access_token,
        token_type: std::borrow::Cow::Borrowed(crate::wire::oauth::BEARER),
        expires_in,
        refresh_token,
        session_id: session.id,
        username: user.username.clone(),
    })
}

/// Start a CLI session for a signed-in person.
pub async fn start_cli_session(
    state: &AppState,
    signed_in: &SignedIn,
    via: &str,
) -> Result<SessionTokens, SessionError> {
    let user = &signed_in.user;
    let session = new_session(state, user, SessionKind::Cli, None, signed_in.totp_verified);
    let refresh = random_token("airlock_refresh_")?;
    let event = session_event("session.created", user, &session, via);
    state
        .store
        .create_session(&session, Some(&hash_of(state, "refresh", &refresh)), event)
        .await
        .map_err(|_| SessionError::Unavailable)?;
    session_tokens(state, user, &session, refresh)
}

/// Start a browser session; returns the cookie value.
pub async fn start_web_session(
    state: &AppState,
    signed_in: &SignedIn,
) -> Result<(Session, String), SessionError> {
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
        .map_err(|_| SessionError::Unavailable)?;
    Ok((session, cookie))
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
        .step_up_session(auth.session.id, state.now())
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
