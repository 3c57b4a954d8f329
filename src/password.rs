//! Human passwords: Argon2id with explicit parameters, verified off the async workers
//! with a bound on how many run at once.
//!
//! A login flood therefore costs at most `max_concurrent_password_checks` cores; every
//! other request keeps the rest. An unknown username is verified against a dummy hash
//! so it costs the same as a wrong password (no user enumeration by timing).

use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;

/// Argon2id memory cost in KiB: OWASP's minimum recommendation (19 MiB).
pub const M_COST_KIB: u32 = 19 * 1024;
/// Argon2id iterations.
pub const T_COST: u32 = 2;
/// Argon2id lanes.
pub const P_COST: u32 = 1;
/// Longest password accepted (bounds the work of one verification).
pub const MAX_PASSWORD_LEN: usize = 1024;

/// Why a password operation did not produce an answer.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// Too many verifications are queued: the caller should retry shortly.
    #[error("too many sign-ins at once; retry in a few seconds")]
    Busy,
    /// Hashing failed.
    #[error("password hashing failed")]
    Internal,
}

fn argon2() -> Argon2<'static> {
    let params = Params::new(M_COST_KIB, T_COST, P_COST, None).expect("valid Argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes and verifies passwords on the blocking pool, at most N at a time.
pub struct Passwords {
    permits: Arc<Semaphore>,
    queue_timeout: Duration,
    dummy_hash: String,
}

impl Passwords {
    /// A hasher allowing `concurrency` verifications at once.
    pub fn new(concurrency: usize, queue_timeout: Duration) -> Result<Passwords, PasswordError> {
        let mut random = [0u8; 24];
        crate::secrets::random_bytes(&mut random).map_err(|_| PasswordError::Internal)?;
        let dummy_hash = hash_blocking(&SecretString::from(hex::encode(random)))?;
        Ok(Passwords {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            queue_timeout,
            dummy_hash,
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PasswordError> {
        let permit = tokio::time::timeout(self.queue_timeout, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| PasswordError::Busy)?
            .map_err(|_| PasswordError::Internal)?;
        let out = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .map_err(|_| PasswordError::Internal)?;
        Ok(out)
    }

    /// Hash a new password.
    pub async fn hash(&self, password: SecretString) -> Result<String, PasswordError> {
        self.run(move || hash_blocking(&password)).await?
    }

    /// Verify `password` against `stored`, or against a dummy when there is no such
    /// person (the answer is then always false, after the same work).
    pub async fn verify(
        &self,
        password: SecretString,
        stored: Option<String>,
    ) -> Result<bool, PasswordError> {
        let exists = stored.is_some();
        let phc = stored.unwrap_or_else(|| self.dummy_hash.clone());
        let ok = self
            .run(move || {
                let Ok(parsed) = PasswordHash::new(&phc) else {
                    return false;
                };
                argon2()
                    .verify_password(password.expose_secret().as_bytes(), &parsed)
                    .is_ok()
            })
            .await?;
        Ok(ok && exists)
    }
}

fn hash_blocking(password: &SecretString) -> Result<String, PasswordError> {
    let mut salt = [0u8; 16];
    crate::secrets::random_bytes(&mut salt).map_err(|_| PasswordError::Internal)?;
    let salt = SaltString::encode_b64(&salt).map_err(|_| PasswordError::Internal)?;
    argon2()
        .hash_password(password.expose_secret().as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| PasswordError::Internal)
}

/// Check a new password against the policy; the message says what to change.
pub fn check_policy(username: &str, password: &str, min_len: usize) -> Result<(), String> {
    let chars = password.chars().count();
    if chars < min_len {
        return Err(format!("the password must be at least {min_len} characters long"));
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(format!(
            "the password must be at most {MAX_PASSWORD_LEN} bytes long"
        ));
    }
    if password.trim().eq_ignore_ascii_case(username.trim()) {
        return Err("the password must not be the username".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_use_the_documented_argon2id_parameters_and_verify() {
        let p = Passwords::new(1, Duration::from_secs(5)).unwrap();
        let h = p
            .hash(SecretString::from("correct horse battery".to_string()))
            .await
            .unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(
            p.verify(
                SecretString::from("correct horse battery".to_string()),
                Some(h.clone())
            )
            .await
            .unwrap()
        );
        assert!(
            !p.verify(SecretString::from("wrong".to_string()), Some(h))
                .await
                .unwrap()
        );
        assert!(
            !p.verify(SecretString::from("correct horse battery".to_string()), None)
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn a_full_queue_answers_busy_instead_of_waiting_forever() {
        let p = Arc::new(Passwords::new(1, Duration::from_millis(1)).unwrap());
        let held = p.permits.clone().acquire_owned().await.unwrap();
        let r = p.verify(SecretString::from("x".to_string()), None).await;
        assert!(matches!(r, Err(PasswordError::Busy)));
        drop(held);
    }

    #[test]
    fn the_policy_refuses_short_passwords_and_the_username() {
        assert!(check_policy("alice", "short", 12).is_err());
        assert!(check_policy("alicealice12", "AliceAlice12", 12).is_err());
        assert!(check_policy("alice", "a perfectly fine one", 12).is_ok());
    }
}
