//! Access tokens: RFC 9068 JWTs signed with EdDSA (RFC 8037), and their verification.
//!
//! Signing is done here directly with a key parsed once at start (see `keys.rs`), which
//! roughly doubles throughput over re-parsing a PKCS#8 document per signature.
//! Verification uses `jsonwebtoken` with the algorithm, `typ`, issuer and audience all
//! pinned (RFC 8725), so a token of one environment fails in any other three times over:
//! wrong key, wrong `iss`, wrong `aud` (invariant 1).

pub mod keys;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::Signer as _;
use serde::{Deserialize, Serialize};

use crate::secrets::SecretError;
pub use keys::{Jwk, Signer, thumbprint};

/// Token and key errors.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The master key cannot open what the database holds.
    #[error(
        "the master key does not match the one this database was initialised with; \
         start with the original AIRLOCK_MASTER_KEY / AIRLOCK_MASTER_KEY_FILE"
    )]
    WrongMasterKey,
    /// Secret handling failed.
    #[error(transparent)]
    Secret(SecretError),
    /// The store failed.
    #[error("store: {0}")]
    Store(String),
    /// No key loaded for the key set.
    #[error("no signing key for {0}")]
    NoKey(String),
    /// A token did not verify.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// Anything else.
    #[error("{0}")]
    Internal(String),
}

/// `typ` of environment access tokens (RFC 9068).
pub const ACCESS_TYP: &str = "at+jwt";
/// `typ` of Airlock's own session tokens: never accepted where `at+jwt` is expected.
pub const SESSION_TYP: &str = "airlock-session+jwt";
/// Audience of session tokens: Airlock itself.
pub const SESSION_AUDIENCE: &str = "airlock";

/// Claims of a session access token, signed with the session key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClaims {
    /// `{public_url}`.
    pub iss: String,
    /// The person's id.
    pub sub: String,
    /// Always [`SESSION_AUDIENCE`].
    pub aud: String,
    /// Their username, for display.
    pub username: String,
    /// Session id.
    pub sid: String,
    /// Issued at.
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// Expiry.
    pub exp: i64,
    /// Token id.
    pub jti: String,
}

/// The `act` claim (RFC 8693 section 4.1): who acts on behalf of `sub`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The acting party, e.g. `process:claude`.
    pub sub: String,
}

/// Claims of an environment access token (RFC 9068 section 2.2, plus `env`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// `{public_url}/envs/{env}`.
    pub iss: String,
    /// The agent's client id, or the person's stable id (a UUID: a username can change).
    pub sub: String,
    /// A person's username when the token was issued, for display; absent for agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The environment's audience.
    pub aud: String,
    /// The OAuth client the token was issued to.
    pub client_id: String,
    /// Space-separated scopes.
    pub scope: String,
    /// Environment name.
    pub env: String,
    /// Issued at (seconds).
    pub iat: i64,
    /// Not before (seconds).
    pub nbf: i64,
    /// Expiry (seconds).
    pub exp: i64,
    /// Unique token id; recorded in the audit trail.
    pub jti: String,
    /// Delegation: the process acting for the person (RFC 8693).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Actor>,
    /// The grant this token was minted under (production or destructive access).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
    /// The person's session it was exchanged from (its id, not a secret), so that ending
    /// the session makes it inactive at introspection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
}

/// Sign `claims` as a compact JWS with `signer`.
pub fn sign<C: Serialize>(signer: &Signer, claims: &C) -> Result<String, TokenError> {
    let payload = serde_json::to_vec(claims).map_err(|e| TokenError::Internal(e.to_string()))?;
    let mut out = String::with_capacity(signer.header_b64.len() + payload.len() * 4 / 3 + 90);
    out.push_str(&signer.header_b64);
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(&payload, &mut out);
    let signature = signer.key.sign(out.as_bytes());
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(signature.to_bytes(), &mut out);
    Ok(out)
}

/// Verify an access token against one environment's published keys, issuer and audience.
/// `leeway` is in seconds; `now` is passed in so tests never sleep.
pub fn verify(
    token: &str,
    jwks: &[Jwk],
    issuer: &str,
    audience: &str,
    now: i64,
    leeway: u64,
) -> Result<AccessClaims, TokenError> {
    let c: AccessClaims = verify_jws(token, jwks, ACCESS_TYP, issuer, audience, leeway)?;
    check_time(c.exp, c.nbf, now, leeway)?;
    Ok(c)
}

/// Verify a session token against the session key set.
pub fn verify_session(
    token: &str,
    jwks: &[Jwk],
    issuer: &str,
    now: i64,
) -> Result<SessionClaims, TokenError> {
    let c: SessionClaims = verify_jws(token, jwks, SESSION_TYP, issuer, SESSION_AUDIENCE, 0)?;
    check_time(c.exp, c.nbf, now, 0)?;
    Ok(c)
}

fn check_time(exp: i64, nbf: i64, now: i64, leeway: u64) -> Result<(), TokenError> {
    // Saturating: a signed `exp` near i64::MAX must not overflow (a panic, or with
    // overflow checks off a wrap that reads as expired).
    let leeway = i64::try_from(leeway).unwrap_or(i64::MAX);
    if exp.saturating_add(leeway) <= now || nbf.saturating_sub(leeway) > now {
        return Err(TokenError::Invalid("expired or not yet valid".into()));
    }
    Ok(())
}

fn verify_jws<C: serde::de::DeserializeOwned>(
    token: &str,
    jwks: &[Jwk],
    typ: &str,
    issuer: &str,
    audience: &str,
    leeway: u64,
) -> Result<C, TokenError> {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
    if token.len() > 8192 {
        return Err(TokenError::Invalid("token too long".into()));
    }
    let header = decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
    if header.alg != Algorithm::EdDSA {
        return Err(TokenError::Invalid("unexpected algorithm".into()));
    }
    if header.typ.as_deref() != Some(typ) {
        return Err(TokenError::Invalid("unexpected typ".into()));
    }
    let kid = header.kid.ok_or_else(|| TokenError::Invalid("no kid".into()))?;
    let jwk = jwks
        .iter()
        .find(|k| k.kid == kid)
        .ok_or_else(|| TokenError::Invalid("unknown kid".into()))?;
    let key = DecodingKey::from_ed_components(&jwk.x).map_err(|e| TokenError::Invalid(e.to_string()))?;
    let mut v = Validation::new(Algorithm::EdDSA);
    v.set_issuer(&[issuer]);
    v.set_audience(&[audience]);
    v.set_required_spec_claims(&["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]);
    // The times are checked by `check_time` against the caller's clock (the server's
    // clock, which tests can move), not the library's reading of the system clock. Both
    // claims must still be present (required above).
    v.validate_exp = false;
    v.validate_nbf = false;
    v.leeway = leeway;
    decode::<C>(token, &key, &v)
        .map(|d| d.claims)
        .map_err(|e| TokenError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer_and_jwks() -> (Signer, Vec<Jwk>) {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let header = serde_json::json!({ "alg": "EdDSA", "kid": "k1", "typ": ACCESS_TYP });
        let jwk = Jwk {
            kty: "OKP",
            crv: "Ed25519",
            x: URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes()),
            kid: "k1".into(),
            alg: "EdDSA",
            use_: "sig",
        };
        let signer = Signer {
            kid: "k1".into(),
            key,
            header_b64: URL_SAFE_NO_PAD.encode(header.to_string()),
        };
        (signer, vec![jwk])
    }

    /// Found while writing the `jwt_verify` fuzz target's oracle: `exp + leeway`
    /// overflowed (a panic with overflow checks on, a wrap to "expired" without).
    #[test]
    fn time_checks_with_a_leeway_never_overflow() {
        // Arrange
        let (signer, jwks) = signer_and_jwks();
        // jsonwebtoken checks nbf against the clock, so the test does too.
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let claims = serde_json::json!({
            "iss": "https://a/envs/dev", "sub": "agt_x", "aud": "airlock:dev", "client_id": "agt_x",
            "scope": "db:read", "env": "dev", "iat": now, "nbf": now, "exp": i64::MAX,
            "jti": "00000000-0000-0000-0000-000000000000",
        });
        let token = sign(&signer, &claims).unwrap();

        // Act
        let verified = verify(&token, &jwks, "https://a/envs/dev", "airlock:dev", now, 60);

        // Assert
        assert_eq!(verified.unwrap().exp, i64::MAX);
        assert!(check_time(i64::MAX, i64::MIN, now, u64::MAX).is_ok());
        assert!(check_time(now, i64::MIN, now, 0).is_err());
        assert!(check_time(i64::MIN, i64::MIN, now, u64::MAX).is_err());
    }
}
