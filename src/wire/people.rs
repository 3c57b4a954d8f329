//! People on the wire: sign-in (`POST /v1/sessions`), the caller's own account
//! (`/v1/me`, TOTP enrolment, step-up) and the admin API (`/v1/users`).
//!
//! Every body here was built with `json!`, so members are declared alphabetically,
//! except [`TotpEnrolment`] (a struct from the start). Requests are read with
//! `deny_unknown_fields`, as their handlers always did.

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// `POST /v1/sessions`: sign in with a password (and a TOTP code once enrolled).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    /// The password.
    #[serde(serialize_with = "super::expose")]
    pub password: SecretString,
    /// A TOTP code, once the person is enrolled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp_code: Option<String>,
    /// Who.
    pub username: String,
}

/// A person as the admin API shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Disabled people sign in nowhere.
    pub disabled: bool,
    /// The roles in effect now (admin and approver roles need TOTP).
    pub effective_roles: Vec<String>,
    /// Stable id (the `sub` of their tokens).
    pub id: Uuid,
    /// Roles held.
    pub roles: Vec<String>,
    /// Whether TOTP is enrolled.
    pub totp_enrolled: bool,
    /// Last change.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// Sign-in name.
    pub username: String,
}

/// `GET /v1/me`: the caller, their roles in effect for this session, and the session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Me {
    /// Created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Always false for a caller who got this far.
    pub disabled: bool,
    /// Roles in effect for this session.
    pub effective_roles: Vec<String>,
    /// Stable id.
    pub id: Uuid,
    /// Roles held.
    pub roles: Vec<String>,
    /// The session.
    pub session: MeSession,
    /// Whether a fresh TOTP code was confirmed recently (admin changes need one).
    pub stepped_up: bool,
    /// Whether TOTP is enrolled.
    pub totp_enrolled: bool,
    /// Last change.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// Sign-in name.
    pub username: String,
}

/// The session part of [`Me`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeSession {
    /// Start.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Absolute end.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Session id.
    pub id: Uuid,
    /// Signed in (or stepped up) with a TOTP code.
    pub totp_verified: bool,
}

/// `POST /v1/users`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// Initial password.
    #[serde(serialize_with = "super::expose")]
    pub password: SecretString,
    /// Roles.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Sign-in name.
    pub username: String,
}

/// `POST /v1/users/{username}/reset`: any of a new password, TOTP removed, new roles.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetUser {
    /// A new password (ends their sessions).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "super::expose_option"
    )]
    pub password: Option<SecretString>,
    /// Remove their TOTP enrolment.
    #[serde(default)]
    pub reset_totp: bool,
    /// Replace their roles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<String>>,
}

/// `POST /v1/me/totp`: the password again, so a copied session alone cannot enrol.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reauthenticate {
    /// The caller's password.
    #[serde(serialize_with = "super::expose")]
    pub password: SecretString,
}

/// `POST /v1/me/step-up` and `POST /v1/me/totp/activate`: a TOTP code.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Code {
    /// The code from the authenticator app.
    pub code: String,
}

/// A TOTP secret awaiting its first code (`POST /v1/me/totp`). Deliberately not `Debug`.
#[derive(Clone, Serialize, Deserialize)]
pub struct TotpEnrolment {
    /// Base32 secret, for typing into an app.
    pub secret: String,
    /// `otpauth://` URI (what the QR code holds).
    pub otpauth_uri: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::compact;
    use serde_json::json;

    fn t() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap()
    }

    #[test]
    fn a_person_and_me_keep_their_alphabetical_bytes() {
        let u = User {
            created_at: t(),
            disabled: false,
            effective_roles: vec!["developer".into()],
            id: Uuid::nil(),
            roles: vec!["developer".into()],
            totp_enrolled: false,
            updated_at: t(),
            username: "bob".into(),
        };
        assert_eq!(
            compact(&u),
            compact(&json!({
                "id": Uuid::nil(), "username": "bob", "roles": ["developer"],
                "effective_roles": ["developer"], "totp_enrolled": false, "disabled": false,
                "created_at": "2023-11-14T22:13:20Z", "updated_at": "2023-11-14T22:13:20Z",
            }))
        );
        let me = Me {
            created_at: t(),
            disabled: false,
            effective_roles: vec![],
            id: Uuid::nil(),
            roles: vec![],
            session: MeSession {
                created_at: t(),
                expires_at: t(),
                id: Uuid::nil(),
                totp_verified: true,
            },
            stepped_up: false,
            totp_enrolled: true,
            updated_at: t(),
            username: "root".into(),
        };
        let mut expected = serde_json::to_value(&u).unwrap();
        expected["username"] = json!("root");
        expected["roles"] = json!([]);
        expected["effective_roles"] = json!([]);
        expected["totp_enrolled"] = json!(true);
        expected["stepped_up"] = json!(false);
        expected["session"] = json!({
            "id": Uuid::nil(), "totp_verified": true,
            "created_at": "2023-11-14T22:13:20Z", "expires_at": "2023-11-14T22:13:20Z",
        });
        assert_eq!(compact(&me), compact(&expected));
    }

    #[test]
    fn requests_carry_their_secret_and_read_back() {
        let sign_in = SignIn {
            password: SecretString::from("pw"),
            totp_code: None,
            username: "bob".into(),
        };
        assert_eq!(
            compact(&sign_in),
            compact(&json!({ "username": "bob", "password": "pw" }))
        );
        let reset = ResetUser {
            password: None,
            reset_totp: true,
            roles: Some(vec!["admin".into()]),
        };
        assert_eq!(
            compact(&reset),
            compact(&json!({ "reset_totp": true, "roles": ["admin"] }))
        );
        let read: ResetUser = serde_json::from_str(r#"{"password":"x"}"#).unwrap();
        assert!(read.password.is_some() && !read.reset_totp && read.roles.is_none());
        assert!(serde_json::from_str::<Code>(r#"{"code":"1","more":2}"#).is_err());
    }
}
