//! Secret material: the master key, encryption of keys at rest, agent secrets.
//!
//! Keeps invariant 8 (secrets at rest): signing keys are sealed with XChaCha20-Poly1305
//! under the master key; agent secrets are 256 random bits and stored only as a keyed
//! hash (HMAC-SHA256 under a key derived from the master key: secrets of that entropy
//! need no slow hash, and a stolen database alone cannot even test guesses).
//! Comparisons of secret-derived values are constant-time.

use std::fmt;
use std::io::Write;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Prefix of every agent secret, so secret scanners can recognise a leaked one.
pub const AGENT_SECRET_PREFIX: &str = "airlock_secret_";

/// Problems with secret material.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The master key is not 32 bytes of base64.
    #[error(
        "the master key must be 32 random bytes, base64-encoded (generate one with `head -c32 /dev/urandom | base64`)"
    )]
    BadMasterKey,
    /// Sealed data did not open: wrong key or altered ciphertext.
    #[error("sealed data could not be opened with this master key")]
    Unseal,
    /// The OS random source failed.
    #[error("the system random number generator failed")]
    Random,
    /// The key file could not be written or read.
    #[error("master key file {path}: {source}")]
    Io {
        /// File concerned.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Fill `buf` from the operating system's CSPRNG.
pub fn random_bytes(buf: &mut [u8]) -> Result<(), SecretError> {
    getrandom::getrandom(buf).map_err(|_| SecretError::Random)
}

/// The master key. Never printed, zeroed on drop.
#[derive(Clone)]
pub struct MasterKey {
    key: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey([redacted])")
    }
}

impl MasterKey {
    /// Parse base64 (standard or URL-safe, padding optional) of exactly 32 bytes.
    pub fn parse(encoded: &SecretString) -> Result<MasterKey, SecretError> {
        let text = encoded.expose_secret().trim();
        let bytes = Zeroizing::new(
            STANDARD
                .decode(text)
                .or_else(|_| URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')))
                .map_err(|_| SecretError::BadMasterKey)?,
        );
        let key: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| SecretError::BadMasterKey)?;
        Ok(MasterKey {
            key: Zeroizing::new(key),
        })
    }

    /// A fresh random key.
    pub fn generate() -> Result<MasterKey, SecretError> {
        let mut key = Zeroizing::new([0u8; 32]);
        random_bytes(key.as_mut())?;
        Ok(MasterKey { key })
    }

    /// Base64 of the key, for writing the development key file.
    pub fn to_base64(&self) -> SecretString {
        SecretString::from(STANDARD.encode(self.key.as_ref()))
    }

    /// Read the key file, or create it with mode 0600 if it does not exist.
    /// Returns the key and whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(MasterKey, bool), SecretError> {
        let io = |source| SecretError::Io {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => Ok((MasterKey::parse(&SecretString::from(text))?, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent() {
                    // SECURITY: the data directory Airlock creates is its user's only.
                    let mut builder = std::fs::DirBuilder::new();
                    builder.recursive(true);
                    #[cfg(unix)]
                    {
                        use std::os::unix::fs::DirBuilderExt;
                        builder.mode(0o700);
                    }
                    builder.create(dir).map_err(io)?;
                }
                let key = MasterKey::generate()?;
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    options.mode(0o600);
                }
                let mut file = options.open(path).map_err(io)?;
                file.write_all(key.to_base64().expose_secret().as_bytes())
                    .and_then(|_| file.write_all(b"\n"))
                    .and_then(|_| file.sync_all())
                    .map_err(io)?;
                Ok((key, true))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Derive a purpose-specific subkey, so one master key never serves two uses.
    fn subkey(&self, purpose: &str) -> Zeroizing<[u8; 32]> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.key.as_ref()).expect("any key length");
        mac.update(b"airlock subkey v1\0");
        mac.update(purpose.as_bytes());
        Zeroizing::new(mac.finalize().into_bytes().into())
    }

    /// Encrypt `plaintext`, binding it to `context` (e.g. the key id), so a sealed blob
    /// moved to another row does not open.
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Result<Vec<u8>, SecretError> {
        let key = self.subkey("seal");
        let cipher = XChaCha20Poly1305::new(key.as_ref().into());
        let mut nonce = [0u8; 24];
        random_bytes(&mut nonce)?;
        let ct = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Unseal)?;
        let mut out = Vec::with_capacity(24 + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Decrypt what [`MasterKey::seal`] produced with the same `context`.
    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SecretError> {
        if sealed.len() < 24 + 16 {
            return Err(SecretError::Unseal);
        }
        let key = self.subkey("seal");
        let cipher = XChaCha20Poly1305::new(key.as_ref().into());
        let (nonce, ct) = sealed.split_at(24);
        cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: context.as_bytes(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| SecretError::Unseal)
    }

    /// The hasher for agent secrets.
    pub fn secret_hasher(&self) -> SecretHasher {
        SecretHasher {
            key: self.subkey("agent-secret-hash"),
        }
    }
}

/// Keyed hash of agent secrets.
#[derive(Clone)]
pub struct SecretHasher {
    key: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for SecretHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretHasher([redacted])")
    }
}

impl SecretHasher {
    /// HMAC-SHA256 of the secret, bound to the client id so two agents' hashes never match.
    pub fn hash(&self, client_id: &str, secret: &str) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.key.as_ref()).expect("any key length");
        mac.update(client_id.as_bytes());
        mac.update(b"\0");
        mac.update(secret.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Constant-time check of a presented secret against a stored hash.
    pub fn verify(&self, client_id: &str, secret: &str, stored: &[u8]) -> bool {
        let computed = self.hash(client_id, secret);
        // SECURITY: constant-time; the length check leaks only that a row is malformed.
        stored.len() == computed.len() && bool::from(computed.as_slice().ct_eq(stored))
    }
}

/// A new agent secret: 256 random bits, URL-safe base64, with a recognisable prefix.
pub fn new_agent_secret() -> Result<SecretString, SecretError> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    random_bytes(bytes.as_mut())?;
    Ok(SecretString::from(format!(
        "{AGENT_SECRET_PREFIX}{}",
        URL_SAFE_NO_PAD.encode(bytes.as_ref())
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_data_opens_only_with_the_same_key_and_context() {
        let k = MasterKey::generate().unwrap();
        let other = MasterKey::generate().unwrap();
        let sealed = k.seal("kid-1", b"private").unwrap();
        assert_eq!(k.open("kid-1", &sealed).unwrap().as_slice(), b"private");
        assert!(k.open("kid-2", &sealed).is_err());
        assert!(other.open("kid-1", &sealed).is_err());
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(k.open("kid-1", &flipped).is_err());
    }

    #[test]
    fn master_keys_must_be_32_bytes_of_base64() {
        assert!(MasterKey::parse(&SecretString::from("short".to_string())).is_err());
        let k = MasterKey::generate().unwrap();
        assert!(MasterKey::parse(&k.to_base64()).is_ok());
    }

    #[test]
    fn agent_secrets_verify_only_for_their_client() {
        let h = MasterKey::generate().unwrap().secret_hasher();
        let s = new_agent_secret().unwrap();
        let stored = h.hash("agt_a", s.expose_secret());
        assert!(h.verify("agt_a", s.expose_secret(), &stored));
        assert!(!h.verify("agt_b", s.expose_secret(), &stored));
        assert!(!h.verify("agt_a", "wrong", &stored));
        assert!(s.expose_secret().len() >= AGENT_SECRET_PREFIX.len() + 43);
    }

    #[test]
    fn the_key_file_is_created_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/master.key");
        let (k1, created) = MasterKey::load_or_create(&path).unwrap();
        assert!(created);
        let (k2, created) = MasterKey::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(k1.key.as_ref(), k2.key.as_ref());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
