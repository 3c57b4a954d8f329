//! Signing keys: generation, sealing under the master key, loading, and the JWKS.
//!
//! Invariant 1: each environment has its own Ed25519 key set, and Airlock's own session
//! tokens have another. Invariant 8: private keys exist in the store only sealed under
//! the master key, with the `kid` as associated data.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use ed25519_dalek::SigningKey;
use zeroize::Zeroizing;

use crate::domain::{KeySet, KeyStatus, NewAuditEvent, Outcome, StoredKey, now};
use crate::secrets::{MasterKey, random_bytes};
use crate::store::{Store, StoreError};
use crate::token::{Jwk, Signer, TokenError};

/// Meta key of the master-key check value.
const MASTER_CHECK: &str = "master_key_check";

const MASTER_CHECK_CONTEXT: &str = "airlock master key check v1";

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
    let stored = match store.meta(MASTER_CHECK).await.map_err(store_error)? {
        Some(v) => v,
        None => {
            let sealed = master
                .seal(MASTER_CHECK_CONTEXT, b"airlock")
                .map_err(TokenError::Secret)?;
            store
                .init_meta(MASTER_CHECK, &sealed)
                .await
                .map_err(store_error)?
        }
    };
    master
        .open(MASTER_CHECK_CONTEXT, &stored)
        .map(|_| ())
        .map_err(|_| TokenError::WrongMasterKey)
}

async fn load_set(store: &dyn Store, master: &MasterKey, set: &KeySet) -> Result<LoadedSet, TokenError> {
    let mut keys = store.signing_keys(set).await.map_err(store_error)?;
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
            Err(e) => return Err(store_error(e)),
        }
        keys = store.signing_keys(set).await.map_err(store_error)?;
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
        KeySet::Environment(_) => crate::token::ACCESS_TYP,
        KeySet::Session => crate::token::SESSION_TYP,
    };
    Ok(Signer::new(&stored.kid, key, typ))
}

fn store_error(e: StoreError) -> TokenError {
    TokenError::Store(e.to_string())
}
