//! The person's side of the RFC 8628 device flow: the code they type in the browser,
//! and their approval or denial of it. (The CLI's side is `oauth::device_code`.)

use crate::auth::Authenticated;
use crate::domain::{DeviceCode, DeviceStatus, NewAuditEvent, Outcome};
use crate::state::AppState;
use crate::store::StoreError;

/// Characters of user codes: no vowels (no words), no look-alikes (RFC 8628 section 6.1).
pub const USER_CODE_ALPHABET: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";

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
        Ok(c) if c.status == DeviceStatus::Pending && c.expires_at > state.now() => Ok(c),
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
            state.now(),
            event,
        )
        .await
    {
        Ok(()) => Ok(()),
        Err(StoreError::Conflict) => Err(DeviceError::Unknown),
        Err(_) => Err(DeviceError::Unavailable),
    }
}
