//! Signing keys: generation, sealing under the master key, loading, and the JWKS.
//!
//! Invariant 1: each environment has its own Ed25519 key set, and Airlock's own session
//! tokens have another. Invariant 8: private keys exist in the store only sealed under
//! the master key, with the `kid` as associated data.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use serde::Serialize;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::TokenError;
use crate::domain::{KeySet, KeyStatus, NewAuditEvent, Outcome, StoredKey, now};
use crate::secrets::{MasterKey, random_bytes};
use crate::store::{Store, StoreError};

/// Meta key of the master-key check value.
const MASTER_CHECK: &str = "master_key_check";
const MASTER_CHECK_CONTEXT: &str = "airlock master key check v1";

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
    fn ed25519(public: &[u8]) -> Jwk {
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
fn thumbprint(x: &str) -> String {
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

/// What one key set publishes and signs with.
struct LoadedSet {
    signer: Arc<Signer>,
    jwks: Vec<Jwk>,
}

/// Every key set the process signs for, loaded at start.
pub struct KeyRing {
    sets: RwLock<HashMap<KeySet, Arc<LoadedSet>>>,
}

impl KeyRing {
    /// The active signer of a key set.
    pub fn signer(&self, set: &KeySet) -> Option<Arc<Signer>> {
        self.sets.read().ok()?.get(set).map(|s| s.signer.clone())
    }

    /// Published keys of a key set (active first).
    pub fn jwks(&self, set: &KeySet) -> Option<Vec<Jwk>> {
        self.sets.read().ok()?.get(set).map(|s| s.jwks.clone())
    }

    /// Load (creating where missing) the active key of each set.
    pub async fn load(store: &dyn Store, master: &MasterKey, sets: &[KeySet]) -> Result<KeyRing, TokenError> {
        check_master_key(store, master).await?;
        let mut loaded = HashMap::new();
        for set in sets {
            loaded.insert(set.clone(), Arc::new(load_set(store, master, set).await?));
        }
        Ok(KeyRing {
            sets: RwLock::new(loaded),
        })
    }
}

/// Refuse a master key other than the one the database was initialised with.
async fn check_master_key(store: &dyn Store, master: &MasterKey) -> Result<(), TokenError> {
    let stored = match store.meta(MASTER_CHECK).await.map_err(TokenError::Store)? {
        Some(v) => v,
        None => {
            let sealed = master
                .seal(MASTER_CHECK_CONTEXT, b"airlock")
                .map_err(TokenError::Secret)?;
            store
                .init_meta(MASTER_CHECK, &sealed)
                .await
                .map_err(TokenError::Store)?
        }
    };
    master
        .open(MASTER_CHECK_CONTEXT, &stored)
        .map(|_| ())
        .map_err(|_| TokenError::WrongMasterKey)
}

async fn load_set(store: &dyn Store, master: &MasterKey, set: &KeySet) -> Result<LoadedSet, TokenError> {
    let mut keys = store.signing_keys(set).await.map_err(TokenError::Store)?;
    if !keys.iter().any(|k| k.status == KeyStatus::Active) {
        let key = generate(master, set)?;
        let event = NewAuditEvent::new("key.created", "system", Outcome::Success)
            .subject(key.kid.clone())
            .detail("keyset", set.as_db());
        let event = match set {
            KeySet::Environment(e) => event.env(e.clone()),
            KeySet::Session => event,
        };
        match store.insert_signing_key(&key, event).await {
            // Another replica created the key first: use theirs.
            Ok(()) | Err(StoreError::Conflict) => {}
            Err(e) => return Err(TokenError::Store(e)),
        }
        keys = store.signing_keys(set).await.map_err(TokenError::Store)?;
    }
    let active = keys
        .iter()
        .find(|k| k.status == KeyStatus::Active)
        .ok_or_else(|| TokenError::Internal(format!("no active key for {}", set.as_db())))?;
    let signer = open_signer(master, active)?;
    let mut jwks: Vec<Jwk> = vec![Jwk::ed25519(&active.public_key)];
    jwks.extend(
        keys.iter()
            .filter(|k| k.status == KeyStatus::Retired)
            .map(|k| Jwk::ed25519(&k.public_key)),
    );
    Ok(LoadedSet {
        signer: Arc::new(signer),
        jwks,
    })
}

/// A new key for `set`, sealed under the master key.
fn generate(master: &MasterKey, set: &KeySet) -> Result<StoredKey, TokenError> {
    let mut seed = Zeroizing::new([0u8; 32]);
    random_bytes(seed.as_mut()).map_err(TokenError::Secret)?;
    let key = SigningKey::from_bytes(&seed);
    let public = key.verifying_key().to_bytes().to_vec();
    let kid = Jwk::ed25519(&public).kid;
    let sealed = master.seal(&kid, seed.as_ref()).map_err(TokenError::Secret)?;
    Ok(StoredKey {
        kid,
        keyset: set.clone(),
        public_key: public,
        sealed_private_key: sealed,
        status: KeyStatus::Active,
        created_at: now(),
    })
}

fn open_signer(master: &MasterKey, stored: &StoredKey) -> Result<Signer, TokenError> {
    let seed = master
        .open(&stored.kid, &stored.sealed_private_key)
        .map_err(|_| TokenError::WrongMasterKey)?;
    let seed: &[u8; 32] = seed
        .as_slice()
        .try_into()
        .map_err(|_| TokenError::Internal(format!("key {} has a malformed private half", stored.kid)))?;
    let key = SigningKey::from_bytes(seed);
    if key.verifying_key().as_bytes().as_slice() != stored.public_key.as_slice() {
        return Err(TokenError::Internal(format!(
            "key {} does not match its public half",
            stored.kid
        )));
    }
    let typ = match stored.keyset {
        KeySet::Environment(_) => super::ACCESS_TYP,
        KeySet::Session => super::SESSION_TYP,
    };
    let header = serde_json::json!({ "alg": "EdDSA", "kid": stored.kid, "typ": typ });
    Ok(Signer {
        kid: stored.kid.clone(),
        key,
        header_b64: URL_SAFE_NO_PAD.encode(header.to_string()),
    })
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
