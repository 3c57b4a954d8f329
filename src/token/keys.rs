//! Public keys and signers: the JWK of an Ed25519 key (with its RFC 7638 thumbprint as
//! `kid`) and a signer holding one private key. Loading, sealing and rotating them is
//! [`crate::keyring`]'s work.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// One public key in RFC 7517 / RFC 8037 form.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Jwk {
    /// Always `OKP`.
    pub kty: &'static str,
    /// Always `Ed25519`.
    pub crv: &'static str,
    /// Public key, base64url.
    pub x: String,
    /// Key id (RFC 7638 thumbprint).
    pub kid: String,
    /// Always `EdDSA`.
    pub alg: &'static str,
    /// Always `sig`.
    #[serde(rename = "use")]
    pub use_: &'static str,
}

impl Jwk {
    /// The public JWK of an Ed25519 key (its `kid` is the RFC 7638 thumbprint).
    pub fn ed25519(public: &[u8]) -> Jwk {
        let x = URL_SAFE_NO_PAD.encode(public);
        Jwk {
            kty: "OKP",
            crv: "Ed25519",
            kid: thumbprint(&x),
            x,
            alg: "EdDSA",
            use_: "sig",
        }
    }
}

/// RFC 7638 thumbprint of an Ed25519 public key given as base64url `x`.
pub fn thumbprint(x: &str) -> String {
    // Required members in lexicographic order, no whitespace (RFC 7638 section 3.2).
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

/// The key that signs for a key set, parsed once.
pub struct Signer {
    /// Key id placed in every header.
    pub kid: String,
    pub(super) key: SigningKey,
    /// base64url of the JWS header `{"alg":"EdDSA","kid":..,"typ":"at+jwt"}`.
    pub(super) header_b64: String,
}

impl Signer {
    /// A signer for `key` under `kid`, whose tokens carry `typ` in their header.
    pub fn new(kid: &str, key: SigningKey, typ: &str) -> Signer {
        let header = serde_json::json!({ "alg": "EdDSA", "kid": kid, "typ": typ });
        Signer {
            kid: kid.to_string(),
            key,
            header_b64: URL_SAFE_NO_PAD.encode(header.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprints_follow_rfc_7638() {
        // RFC 8037 appendix A.3: thumbprint of the example Ed25519 key.
        let x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
        assert_eq!(thumbprint(x), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }
}
