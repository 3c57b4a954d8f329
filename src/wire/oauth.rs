//! The OAuth side of the wire: token responses (environment tokens and CLI sessions),
//! the forms a client posts to the token endpoints, the RFC 8628 device authorization,
//! RFC 8414 metadata, RFC 7517 key sets and RFC 7662 introspection answers.
//!
//! Token and device answers are structs in the order RFC 6749 lists their members (as
//! they always were); metadata, key sets and introspection answers were built with
//! `json!`, so their members are declared alphabetically.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `grant_type` of the client-credentials grant (RFC 6749 section 4.4).
pub const CLIENT_CREDENTIALS_GRANT: &str = "client_credentials";
/// `grant_type` of the refresh grant (RFC 6749 section 6).
pub const REFRESH_TOKEN_GRANT: &str = "refresh_token";
/// RFC 8693 grant type.
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// RFC 8628 grant type.
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// `subject_token_type` accepted by the token exchange.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// `actor_token_type` naming a local process launched by `airlock exec`.
pub const PROCESS_TOKEN_TYPE: &str = "urn:airlock:params:oauth:token-type:process";
/// `token_type` of every token Airlock issues.
pub const BEARER: &str = "Bearer";

/// A successful token response (RFC 6749 section 5.1). Deliberately not `Debug`.
#[derive(Clone, Serialize, Deserialize)]
pub struct TokenResponse {
    /// The JWT.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: Cow<'static, str>,
    /// Seconds until expiry.
    pub expires_in: u64,
    /// Granted scopes, space-separated.
    #[serde(default)]
    pub scope: String,
    /// RFC 8693 section 2.2.1: present on token-exchange responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_token_type: Option<Cow<'static, str>>,
}

/// The tokens of a CLI session, from `POST /v1/sessions` and the device-code and refresh
/// grants at `/oauth/token`. Deliberately not `Debug`.
#[derive(Clone, Serialize, Deserialize)]
pub struct SessionTokens {
    /// Session access token (for Airlock only).
    pub access_token: String,
    /// `Bearer`.
    pub token_type: Cow<'static, str>,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Rotating refresh token.
    pub refresh_token: String,
    /// The session.
    pub session_id: Uuid,
    /// Whose.
    pub username: String,
}

/// An RFC 8628 device authorization response. Deliberately not `Debug`.
#[derive(Clone, Serialize, Deserialize)]
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

/// `POST /oauth/device_authorization`'s form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceAuthorizationForm {
    /// Always the CLI's client id.
    pub client_id: String,
}

/// What a client posts to a token endpoint (`application/x-www-form-urlencoded`), one
/// variant per grant, tagged on `grant_type` (sent first). The server reads these forms
/// with its own strict parser (`oauth::parse_params`: no repeated parameter, bounded
/// sizes); a test there checks that it reads every variant as sent. Deliberately not
/// `Debug`: the forms carry secrets.
#[derive(Clone, Serialize, Deserialize)]
#[serde(tag = "grant_type")]
pub enum TokenForm {
    /// An agent's client credentials (the secret travels in `Authorization: Basic`).
    #[serde(rename = "client_credentials")]
    ClientCredentials {
        /// Space-separated scopes; none asks for the agent's defaults.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<String>,
    },
    /// RFC 8693: a session token in, an environment token out.
    #[serde(rename = "urn:ietf:params:oauth:grant-type:token-exchange")]
    TokenExchange {
        /// The CLI's client id.
        client_id: String,
        /// The session access token.
        subject_token: String,
        /// [`ACCESS_TOKEN_TYPE`].
        subject_token_type: String,
        /// Space-separated scopes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<String>,
        /// The process acting for the person (`airlock exec`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        actor_token: Option<String>,
        /// [`PROCESS_TOKEN_TYPE`] with `actor_token`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        actor_token_type: Option<String>,
    },
    /// Rotate a CLI session's refresh token.
    #[serde(rename = "refresh_token")]
    RefreshToken {
        /// The CLI's client id.
        client_id: String,
        /// The current refresh token.
        refresh_token: String,
    },
    /// RFC 8628: poll for the session a person approves in the browser.
    #[serde(rename = "urn:ietf:params:oauth:grant-type:device_code")]
    DeviceCode {
        /// The CLI's client id.
        client_id: String,
        /// From the device authorization.
        device_code: String,
    },
}

/// RFC 8414 metadata of Airlock's own authorization server (for people). Alphabetical.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerMetadata {
    /// RFC 8628 endpoint.
    pub device_authorization_endpoint: String,
    /// The device-code and refresh grants.
    pub grant_types_supported: Vec<Cow<'static, str>>,
    /// `public_url`.
    pub issuer: String,
    /// The session key set.
    pub jwks_uri: String,
    /// None: no authorization endpoint.
    pub response_types_supported: Vec<Cow<'static, str>>,
    /// The OpenAPI document.
    pub service_documentation: String,
    /// `/oauth/token`.
    pub token_endpoint: String,
    /// Public clients only.
    pub token_endpoint_auth_methods_supported: Vec<Cow<'static, str>>,
}

/// RFC 8414 metadata of one environment. Alphabetical.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvironmentMetadata {
    /// `EdDSA`.
    pub access_token_signing_alg_values_supported: Vec<Cow<'static, str>>,
    /// Client credentials and token exchange.
    pub grant_types_supported: Vec<Cow<'static, str>>,
    /// RFC 7662 endpoint.
    pub introspection_endpoint: String,
    /// How a resource server authenticates there.
    pub introspection_endpoint_auth_methods_supported: Vec<Cow<'static, str>>,
    /// `{public_url}/envs/{env}`.
    pub issuer: String,
    /// The environment's key set.
    pub jwks_uri: String,
    /// None: no authorization endpoint.
    pub response_types_supported: Vec<Cow<'static, str>>,
    /// Scopes the environment offers.
    pub scopes_supported: Vec<String>,
    /// The environment's token endpoint.
    pub token_endpoint: String,
    /// Client authentication methods.
    pub token_endpoint_auth_methods_supported: Vec<Cow<'static, str>>,
}

/// An RFC 7517 key set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    /// The public keys.
    pub keys: Vec<Jwk>,
}

/// One public key as served: the members of [`crate::token::Jwk`], alphabetical.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// `EdDSA`.
    pub alg: Cow<'static, str>,
    /// `Ed25519`.
    pub crv: Cow<'static, str>,
    /// RFC 7638 thumbprint.
    pub kid: String,
    /// `OKP`.
    pub kty: Cow<'static, str>,
    /// `sig`.
    #[serde(rename = "use")]
    pub use_: Cow<'static, str>,
    /// The public key, base64url.
    pub x: String,
}

impl From<&crate::token::Jwk> for Jwk {
    fn from(k: &crate::token::Jwk) -> Jwk {
        Jwk {
            alg: Cow::Borrowed(k.alg),
            crv: Cow::Borrowed(k.crv),
            kid: k.kid.clone(),
            kty: Cow::Borrowed(k.kty),
            use_: Cow::Borrowed(k.use_),
            x: k.x.clone(),
        }
    }
}

impl Jwks {
    /// The served form of `keys`.
    pub fn of(keys: &[crate::token::Jwk]) -> Jwks {
        Jwks {
            keys: keys.iter().map(Jwk::from).collect(),
        }
    }
}

/// An RFC 7662 introspection answer. Alphabetical; an inactive token is only
/// `{"active":false}`, an active one has every member but `act`, `grant` and `username`
/// (each present when the token has it).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Introspection {
    /// RFC 8693 delegation: the process acting for the person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<IntrospectedActor>,
    /// Whether the token is active.
    pub active: bool,
    /// Audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Client the token was issued to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// Expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    /// The grant it was minted under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
    /// Issued at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Token id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Not before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Space-separated scopes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// `Bearer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_type: Option<Cow<'static, str>>,
    /// A person's username.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

/// The `act` member of an introspection answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntrospectedActor {
    /// The acting party, e.g. `process:claude`.
    pub sub: String,
}

impl Introspection {
    /// `{"active":false}`.
    pub fn inactive() -> Introspection {
        Introspection::default()
    }

    /// The answer for a live token with these claims.
    pub fn active(claims: crate::token::AccessClaims) -> Introspection {
        Introspection {
            act: claims.act.map(|a| IntrospectedActor { sub: a.sub }),
            active: true,
            aud: Some(claims.aud),
            client_id: Some(claims.client_id),
            env: Some(claims.env),
            exp: Some(claims.exp),
            grant: claims.grant,
            iat: Some(claims.iat),
            iss: Some(claims.iss),
            jti: Some(claims.jti),
            nbf: Some(claims.nbf),
            scope: Some(claims.scope),
            sub: Some(claims.sub),
            token_type: Some(Cow::Borrowed(BEARER)),
            username: claims.username,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::compact;
    use serde_json::json;

    #[test]
    fn token_answers_keep_the_rfc_order_and_leave_out_what_is_absent() {
        let t = TokenResponse {
            access_token: "a.b.c".into(),
            token_type: Cow::Borrowed(BEARER),
            expires_in: 600,
            scope: "db:read".into(),
            issued_token_type: None,
        };
        assert_eq!(
            compact(&t),
            r#"{"access_token":"a.b.c","token_type":"Bearer","expires_in":600,"scope":"db:read"}"#
        );
        let s = SessionTokens {
            access_token: "a.b.c".into(),
            token_type: Cow::Borrowed(BEARER),
            expires_in: 300,
            refresh_token: "airlock_refresh_x".into(),
            session_id: Uuid::nil(),
            username: "bob".into(),
        };
        assert_eq!(
            compact(&s),
            r#"{"access_token":"a.b.c","token_type":"Bearer","expires_in":300,"refresh_token":"airlock_refresh_x","session_id":"00000000-0000-0000-0000-000000000000","username":"bob"}"#
        );
    }

    #[test]
    fn json_built_documents_keep_their_alphabetical_order() {
        let keys = Jwks {
            keys: vec![Jwk {
                alg: "EdDSA".into(),
                crv: "Ed25519".into(),
                kid: "k".into(),
                kty: "OKP".into(),
                use_: "sig".into(),
                x: "x".into(),
            }],
        };
        assert_eq!(
            compact(&keys),
            compact(
                &json!({ "keys": [{ "kty": "OKP", "crv": "Ed25519", "x": "x", "kid": "k", "alg": "EdDSA", "use": "sig" }] })
            )
        );
        assert_eq!(compact(&Introspection::inactive()), r#"{"active":false}"#);
        let claims = crate::token::AccessClaims {
            iss: "i".into(),
            sub: "s".into(),
            username: Some("bob".into()),
            aud: "a".into(),
            client_id: "c".into(),
            scope: "db:read".into(),
            env: "dev".into(),
            iat: 1,
            nbf: 2,
            exp: 3,
            jti: "j".into(),
            act: Some(crate::token::Actor {
                sub: "process:x".into(),
            }),
            grant: Some("g".into()),
            sid: Some("never shown".into()),
        };
        assert_eq!(
            compact(&Introspection::active(claims)),
            compact(&json!({
                "active": true, "scope": "db:read", "client_id": "c", "sub": "s", "aud": "a",
                "iss": "i", "exp": 3, "iat": 1, "nbf": 2, "jti": "j", "token_type": "Bearer",
                "env": "dev", "username": "bob", "act": { "sub": "process:x" }, "grant": "g",
            }))
        );
    }

    #[test]
    fn forms_name_their_grant_first() {
        let form = TokenForm::RefreshToken {
            client_id: "airlock-cli".into(),
            refresh_token: "r".into(),
        };
        let v = serde_json::to_value(&form).unwrap();
        assert_eq!(v["grant_type"], REFRESH_TOKEN_GRANT);
        for (form, grant) in [
            (
                TokenForm::ClientCredentials { scope: None },
                CLIENT_CREDENTIALS_GRANT,
            ),
            (
                TokenForm::DeviceCode {
                    client_id: String::new(),
                    device_code: String::new(),
                },
                DEVICE_CODE_GRANT,
            ),
            (
                TokenForm::TokenExchange {
                    client_id: String::new(),
                    subject_token: String::new(),
                    subject_token_type: String::new(),
                    scope: None,
                    actor_token: None,
                    actor_token_type: None,
                },
                TOKEN_EXCHANGE_GRANT,
            ),
        ] {
            let text = compact(&form);
            assert!(
                text.starts_with(&format!(r#"{{"grant_type":"{grant}""#)),
                "{text}"
            );
        }
    }
}
