//! Bounding what unauthenticated callers can write to the audit trail.
//!
//! Every refusal is accounted for, but a caller without credentials must not be able to
//! fill the disk or crowd real issuances out of the audit group-committer. Per client
//! address, the first [`PER_WINDOW`] anonymous refusals in a [`WINDOW`] are audited one
//! by one; beyond that they are still refused, counted, and written as one
//! `token.refused.suppressed` event per address, environment and reason when the window
//! is flushed. Refusals of authenticated callers and cross-environment attempts are
//! never summarised.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::domain::{NewAuditEvent, Outcome};
use crate::store::Store;

/// Anonymous refusals audited individually per address and window.
pub const PER_WINDOW: u32 = 30;
/// Length of a window, and how often summaries are written.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Addresses tracked at once; beyond this, new addresses share one bucket.
const MAX_ADDRESSES: usize = 10_000;

#[derive(Default)]
struct Bucket {
    audited: u32,
    suppressed: BTreeMap<(String, &'static str), u64>,
}

/// Per-address budget of individually audited anonymous refusals.
#[derive(Default)]
pub struct RefusalLimiter {
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl RefusalLimiter {
    /// A limiter whose summaries are written to `store` every [`WINDOW`].
    pub fn start(store: Arc<dyn Store>) -> Arc<RefusalLimiter> {
        let limiter = Arc::new(RefusalLimiter::default());
        let weak: Weak<RefusalLimiter> = Arc::downgrade(&limiter);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(WINDOW);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(limiter) = weak.upgrade() else { break };
                for event in limiter.drain() {
                    if let Err(e) = store.append_audit(event).await {
                        tracing::error!(error = ?e, "cannot record suppressed refusals");
                    }
                }
            }
        });
        limiter
    }

    /// Whether this refusal should be audited on its own; if not, it is counted.
    pub fn admit(&self, peer: Option<IpAddr>, env: &str, reason: &'static str) -> bool {
        let Ok(mut buckets) = self.buckets.lock() else {
            return true;
        };
        let mut addr = peer.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        if !buckets.contains_key(&addr) && buckets.len() >= MAX_ADDRESSES {
            addr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        }
        let bucket = buckets.entry(addr).or_default();
        if bucket.audited < PER_WINDOW {
            bucket.audited += 1;
            true
        } else {
            *bucket
                .suppressed
                .entry((env.chars().take(64).collect(), reason))
                .or_default() += 1;
            false
        }
    }

    /// End the window: summary events for what was suppressed, and fresh budgets.
    fn drain(&self) -> Vec<NewAuditEvent> {
        let Ok(mut buckets) = self.buckets.lock() else {
            return vec![];
        };
        let mut events = Vec::new();
        for (addr, bucket) in buckets.drain() {
            for ((env, reason), count) in bucket.suppressed {
                events.push(
                    NewAuditEvent::new("token.refused.suppressed", "anonymous", Outcome::Refused)
                        .env(env)
                        .detail("client_address", addr.to_string())
                        .detail("reason", reason)
                        .detail("count", count)
                        .detail("window_secs", WINDOW.as_secs()),
                );
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beyond_the_budget_refusals_are_counted_not_lost() {
        let l = RefusalLimiter::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..PER_WINDOW {
            assert!(l.admit(Some(ip), "staging", "unknown_client"));
        }
        for _ in 0..5 {
            assert!(!l.admit(Some(ip), "staging", "unknown_client"));
        }
        assert!(!l.admit(Some(ip), "staging", "invalid_request"));
        assert!(
            l.admit(Some(other), "staging", "unknown_client"),
            "budgets are per address"
        );
        let events = l.drain();
        assert_eq!(events.len(), 2);
        let counts: Vec<u64> = events
            .iter()
            .map(|e| e.details["count"].as_u64().unwrap())
            .collect();
        assert_eq!(counts.iter().sum::<u64>(), 6);
        assert!(
            l.admit(Some(ip), "staging", "unknown_client"),
            "a new window has a new budget"
        );
    }
}
