//! Sessions as credentials: a session access token (CLI) or a browser cookie, checked
//! against the store on every use, and the roles that count in a session.

use uuid::Uuid;

use crate::domain::{KeySet, Session, SessionKind, User};
use crate::policy;
use crate::state::AppState;
use crate::store::StoreError;
use crate::token;

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

pub(crate) fn check_session(
    state: &AppState,
    session: &Session,
    user: &User,
    kind: SessionKind,
) -> Result<(), SessionError> {
    let at = state.now();
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
    let claims = token::verify_session(
        bearer,
        &jwks,
        &state.settings.public_url,
        state.now().unix_timestamp(),
    )
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
        .session_by_secret(state.hasher.hash("web", cookie).as_ref())
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
        .is_some_and(|t| state.now() - t < state.settings.auth.step_up_lifetime)
}
