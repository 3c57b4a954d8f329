//! `grant_type=refresh_token` at `/oauth/token`: rotate a CLI session's refresh token;
//! a reused one ends the session.

use super::OAuthError;
use crate::domain::{NewAuditEvent, Outcome, SessionKind};
use crate::people::{self, SessionTokens};
use crate::state::AppState;
use crate::store::{RefreshOutcome, StoreError};

/// `grant_type=refresh_token`: rotate the refresh token; a reused one ends the session.
pub async fn refresh(state: &AppState, presented: &str) -> Result<SessionTokens, OAuthError> {
    let gone = || OAuthError::InvalidGrant("the session has ended; run `airlock login`".into());
    if presented.len() > 256 {
        return Err(gone());
    }
    let old_hash = people::hash_of(state, "refresh", presented);
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
    crate::auth::check_session(state, &session, &user, SessionKind::Cli).map_err(|_| gone())?;
    let new = people::random_token("airlock_refresh_").map_err(|_| OAuthError::Unavailable)?;
    let actor = format!("user:{}", user.username);
    let rotated = NewAuditEvent::new("session.refreshed", actor.clone(), Outcome::Success);
    let reused = NewAuditEvent::new("session.refresh_reuse", actor, Outcome::Refused)
        .detail("action", "session revoked");
    match state
        .store
        .rotate_refresh_token(
            &old_hash,
            &people::hash_of(state, "refresh", &new),
            state.now(),
            rotated,
            reused,
        )
        .await
    {
        Ok(RefreshOutcome::Rotated(_)) => {
            people::session_tokens(state, &user, &session, new).map_err(|_| OAuthError::Unavailable)
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
