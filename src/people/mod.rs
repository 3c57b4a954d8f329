//! People: sign-in, sessions, TOTP, the person's side of the device flow, and
//! administration. Shared by the HTTP API, the web pages and the CLI.
//!
//! Invariant 3: a session token is signed with the session key, which no environment
//! accepts; only `oauth::token_exchange` turns it into an environment token. Invariant 4
//! prepares: admin and approver roles take effect only with TOTP enrolled (see
//! [`crate::auth::effective_roles`]). Invariant 8: refresh tokens, device codes and web
//! cookies are stored only as keyed hashes; TOTP secrets sealed under the master key.

mod admin;
mod device;
mod sessions;
mod sign_in;
mod totp;

pub use admin::{ManageError, bootstrap_admin, create_user, find_user, reset_user, set_user_disabled};
pub use device::{
    DeviceError, USER_CODE_ALPHABET, clean_user_agent, decide_device, normalize_user_code, pending_device,
};
pub use sessions::{SessionTokens, end_session, start_cli_session, start_web_session, step_up};
pub(crate) use sessions::{hash_of, new_session, random_token, session_event, session_tokens};
pub use sign_in::verify_totp;
pub use sign_in::{SignInError, SignedIn, address_blocked_for, audit_throttled, normalize_username, sign_in};
pub use totp::{TotpEnrolment, confirm_totp, totp_activate, totp_begin};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_normalised_and_cannot_pose_as_agents() {
        assert_eq!(normalize_username(" Alice "), Some("alice".into()));
        assert_eq!(normalize_username("agt_0123"), None);
        assert_eq!(normalize_username("a b"), None);
    }
}
