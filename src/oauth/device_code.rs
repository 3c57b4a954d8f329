//! The CLI's side of the RFC 8628 device flow: `POST /oauth/device_authorization` and
//! `grant_type=urn:ietf:params:oauth:grant-type:device_code` at `/oauth/token`.

use std::net::IpAddr;

use uuid::Uuid;

use super::OAuthError;
use crate::domain::{CLI_CLIENT_ID, DeviceCode, DeviceStatus, NewAuditEvent, Outcome, SessionKind};
use crate::people::{self, SessionTokens, USER_CODE_ALPHABET, clean_user_agent};
use crate::state::AppState;
use crate::store::StoreError;

pub use crate::wire::DeviceAuthorization;

/// A fresh user code: eight characters of [`USER_CODE_ALPHABET`] as `XXXX-XXXX`.
pub fn new_user_code() -> Result<String, OAuthError> {
    let mut bytes = [0u8; 8];
    crate::secrets::random_bytes(&mut bytes).map_err(|_| OAuthError::Unavailable)?;
    let chars: String = bytes
        .iter()
        // 256 % 20 != 0; the bias (< 1%) does not matter for a short-lived, throttled code.
        .map(|b| USER_CODE_ALPHABET[(*b as usize) % USER_CODE_ALPHABET.len()] as char)
        .collect();
    Ok(format!("{}-{}", &chars[..4], &chars[4..]))
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
    let device_code = people::random_token("airlock_device_").map_err(|_| OAuthError::Unavailable)?;
    let at = state.now();
    for _ in 0..3 {
        let code = DeviceCode {
            id: Uuid::new_v4(),
            device_code_hash: people::hash_of(state, "device", &device_code),
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
        .device_code_by_hash(&people::hash_of(state, "device", device_code))
        .await
    {
        Ok(c) => c,
        Err(StoreError::NotFound) => return Err(bad()),
        Err(_) => return Err(OAuthError::Unavailable),
    };
    if code.client_id != client_id {
        return Err(bad());
    }
    let at = state.now();
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
            let session = people::new_session(state, &user, SessionKind::Cli, None, false);
            let refresh = people::random_token("airlock_refresh_").map_err(|_| OAuthError::Unavailable)?;
            let event = people::session_event("session.created", &user, &session, "device");
            match state
                .store
                .redeem_device_code(
                    code.id,
                    &session,
                    &people::hash_of(state, "refresh", &refresh),
                    event,
                )
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
            people::session_tokens(state, &user, &session, refresh).map_err(|_| OAuthError::Unavailable)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::people::normalize_user_code;

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
}
