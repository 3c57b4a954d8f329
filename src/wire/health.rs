//! `/healthz` and `/readyz`: `{"status":..}`.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// A health answer: `ok`, `ready`, `migrations_pending` or `store_unavailable`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// The state.
    pub status: Cow<'static, str>,
}

impl Health {
    /// `{"status": status}`.
    pub const fn new(status: &'static str) -> Health {
        Health {
            status: Cow::Borrowed(status),
        }
    }
}
