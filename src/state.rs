//! The shared state of a running server: the `AppState` type and nothing else, so every
//! layer above the infrastructure may import it without importing each other.

use std::sync::Arc;

use crate::config::Settings;
use crate::keyring::KeyRing;
use crate::secrets::{MasterKey, SecretHasher};
use crate::store::Store;

/// Everything a request handler or CLI command needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// What time it is, for every decision (the system clock, or a test's).
    pub clock: Arc<dyn crate::clock::Clock>,
    /// Persistence.
    pub store: Arc<dyn Store>,
    /// Loaded signing keys.
    pub keys: Arc<KeyRing>,
    /// Effective settings.
    pub settings: Arc<Settings>,
    /// Keyed hash for agent secrets.
    pub hasher: Arc<SecretHasher>,
    /// Budgets of individually audited refusals (anonymous and authenticated).
    pub refusals: Arc<crate::refusals::RefusalLimiter>,
    /// Bounded Argon2id hashing of people's passwords.
    pub passwords: Arc<crate::password::Passwords>,
    /// Seals TOTP secrets.
    pub master: Arc<MasterKey>,
    /// Sign-in keys the store has blocked, remembered until their block ends.
    pub blocks: Arc<crate::throttle::BlockCache>,
    /// Webhook deliveries.
    pub notifier: Arc<crate::notify::Notifier>,
    /// Wakes requests waiting on an escalation in this process when one changes.
    pub changes: Arc<tokio::sync::Notify>,
    /// Turns `true` once when the server starts shutting down, so requests waiting on an
    /// escalation (`?wait=`) answer at once instead of holding the shutdown.
    pub stopping: Arc<tokio::sync::watch::Sender<bool>>,
}

impl AppState {
    /// Now, by this state's clock.
    pub fn now(&self) -> time::OffsetDateTime {
        self.clock.now()
    }
}
