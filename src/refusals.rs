//! Bounding what refused callers can write to the audit trail.
//!
//! Every refusal is accounted for, but no caller, with or without credentials, may fill
//! the disk or crowd real issuances out of the audit group-committer. In each window
//! ([`RefusalSettings::window`], 10 s by default):
//!
//! - **Anonymous refusals** (no valid credentials) are grouped by address: an IPv4
//!   address, or an IPv6 /64 (what one host or one customer usually gets; an
//!   IPv4-mapped IPv6 address counts as its IPv4 address). The first `per_address` of a
//!   group are audited one by one, and at most `all_addresses` for all groups together,
//!   so the number of individually audited anonymous refusals per window is bounded
//!   whatever the number of addresses. Beyond either budget a refusal is still refused,
//!   counted, and summarised when the window ends: one `token.refused.suppressed` event
//!   per address group, environment and reason (`budget: "address"`), and one per
//!   environment and reason for everything over the ceiling (`budget: "all_addresses"`,
//!   with the number of address groups seen). At most `all_addresses / per_address`
//!   groups can exhaust their own budget, so the summaries are bounded too.
//! - **Authenticated refusals** (an agent, or a person together with the processes
//!   acting for them, refused by policy) get `per_principal` individually audited events;
//!   beyond that they are counted into one `<kind>.suppressed` event per principal,
//!   kind, environment and reason (`escalation.refused.suppressed`,
//!   `token.refused.suppressed`, ...), with `budget: "principal"`.
//!
//! SECURITY: some refusals are never summarised, because each one is evidence the
//! invariants need on its own: `cross_environment_attempt` (invariant 2: a real
//! credential used at the wrong environment), `grant_bound_to_other_session` and
//! `step_up_required` (invariant 3: a prod grant used from a second session, or without
//! a fresh TOTP code), and `session.refresh_reuse` (a stolen refresh token). Their
//! callers write them directly, without asking this module.
//!
//! Budgets live in the process: behind N replicas, up to N times as many refusals are
//! audited one by one. Summaries are written at the end of each window and when the
//! server shuts down; if one cannot be written it is logged with its counts.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, Weak};

use crate::config::RefusalSettings;
use crate::domain::{NewAuditEvent, Outcome};
use crate::store::{Store, StoreResult};

/// Principals tracked at once; beyond this, new ones share one budget (`*`).
const MAX_PRINCIPALS: usize = 10_000;
/// Address groups counted for the over-the-ceiling summary (the count stops here).
const MAX_COUNTED_GROUPS: usize = 10_000;
/// Longest environment name or reason kept in a summary key.
const MAX_KEY_CHARS: usize = 64;

/// The unit an anonymous budget is kept for: an IPv4 address or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressGroup {
    /// One IPv4 address (also for IPv4-mapped IPv6).
    V4(Ipv4Addr),
    /// The /64 prefix of an IPv6 address (host bits zeroed).
    V6(Ipv6Addr),
}

impl AddressGroup {
    /// The group `ip` belongs to.
    ///
    /// ```
    /// use airlock::refusals::AddressGroup;
    /// let g = |s: &str| AddressGroup::of(s.parse().unwrap()).to_string();
    /// assert_eq!(g("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
    /// assert_eq!(g("::ffff:10.0.0.7"), "10.0.0.7");
    /// ```
    pub fn of(ip: IpAddr) -> AddressGroup {
        match ip {
            IpAddr::V4(v4) => AddressGroup::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddressGroup::V4(v4),
                None => {
                    let mut segments = v6.segments();
                    segments[4..].fill(0);
                    AddressGroup::V6(Ipv6Addr::from(segments))
                }
            },
        }
    }
}

impl fmt::Display for AddressGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressGroup::V4(v4) => write!(f, "{v4}"),
            AddressGroup::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// One address group's window.
#[derive(Default)]
struct AddressBucket {
    audited: u32,
    suppressed: BTreeMap<(String, &'static str), u64>,
}

/// One principal's window.
#[derive(Default)]
struct PrincipalBucket {
    audited: u32,
    /// (kind, environment, reason) → count.
    suppressed: BTreeMap<(String, String, String), u64>,
}

/// Everything counted in the current window.
#[derive(Default)]
struct Window {
    /// Anonymous refusals audited one by one, all addresses together.
    anonymous_audited: u32,
    addresses: HashMap<AddressGroup, AddressBucket>,
    /// Over the all-addresses ceiling: (environment, reason) → count.
    over_ceiling: BTreeMap<(String, &'static str), u64>,
    /// Address groups seen over the ceiling (counted up to [`MAX_COUNTED_GROUPS`]).
    over_ceiling_groups: HashSet<AddressGroup>,
    principals: HashMap<String, PrincipalBucket>,
}

/// Budgets of individually audited refusals, anonymous and authenticated.
pub struct RefusalLimiter {
    budget: RefusalSettings,
    window: Mutex<Window>,
}

fn short(s: &str) -> String {
    s.chars().take(MAX_KEY_CHARS).collect()
}

impl RefusalLimiter {
    /// A limiter with these budgets; nothing writes its summaries (see [`Self::flush`]).
    pub fn new(budget: RefusalSettings) -> RefusalLimiter {
        RefusalLimiter {
            budget,
            window: Mutex::new(Window::default()),
        }
    }

    /// A limiter whose summaries are written to `store` at the end of every window.
    pub fn start(store: Arc<dyn Store>, budget: RefusalSettings) -> Arc<RefusalLimiter> {
        let period = budget.window;
        let limiter = Arc::new(RefusalLimiter::new(budget));
        let weak: Weak<RefusalLimiter> = Arc::downgrade(&limiter);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(limiter) = weak.upgrade() else { break };
                limiter.flush(store.as_ref()).await;
            }
        });
        limiter
    }

    /// The budgets in force.
    pub fn budget(&self) -> &RefusalSettings {
        &self.budget
    }

    /// Whether this anonymous refusal should be audited on its own; if not, it is counted.
    pub fn admit(&self, peer: Option<IpAddr>, env: &str, reason: &'static str) -> bool {
        // SECURITY: a poisoned lock audits everything rather than nothing.
        let Ok(mut w) = self.window.lock() else {
            return true;
        };
        let w = &mut *w;
        let group = AddressGroup::of(peer.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)));
        if let Some(bucket) = w.addresses.get_mut(&group)
            && bucket.audited >= self.budget.per_address
        {
            *bucket.suppressed.entry((short(env), reason)).or_default() += 1;
            return false;
        }
        if w.anonymous_audited >= self.budget.all_addresses {
            *w.over_ceiling.entry((short(env), reason)).or_default() += 1;
            if w.over_ceiling_groups.len() < MAX_COUNTED_GROUPS {
                w.over_ceiling_groups.insert(group);
            }
            return false;
        }
        // Buckets exist only for admitted groups: at most `all_addresses` per window.
        w.anonymous_audited += 1;
        w.addresses.entry(group).or_default().audited += 1;
        true
    }

    /// Whether `event`, a refusal of the authenticated `principal` (`agent:ID` or
    /// `user:NAME`), should be audited on its own; if not, it is counted under its kind,
    /// environment and `reason` detail.
    pub fn admit_principal(&self, principal: &str, event: &NewAuditEvent) -> bool {
        let Ok(mut w) = self.window.lock() else {
            return true;
        };
        let key = if w.principals.contains_key(principal) || w.principals.len() < MAX_PRINCIPALS {
            principal.to_string()
        } else {
            "*".to_string()
        };
        let bucket = w.principals.entry(key).or_default();
        if bucket.audited < self.budget.per_principal {
            bucket.audited += 1;
            return true;
        }
        let reason = event.details["reason"].as_str().unwrap_or_default();
        let env = event.environment.as_deref().unwrap_or_default();
        *bucket
            .suppressed
            .entry((short(&event.kind), short(env), short(reason)))
            .or_default() += 1;
        false
    }

    /// Audit `event`, a refusal of `principal`, if it is within the principal's budget;
    /// otherwise count it. An error means an admitted event could not be written.
    pub async fn record(&self, store: &dyn Store, principal: &str, event: NewAuditEvent) -> StoreResult<()> {
        if self.admit_principal(principal, &event) {
            store.append_audit(event).await?;
        }
        Ok(())
    }

    /// End the window: summary events for what was counted, and fresh budgets.
    pub fn drain(&self) -> Vec<NewAuditEvent> {
        let Ok(mut w) = self.window.lock() else {
            return vec![];
        };
        let w = std::mem::take(&mut *w);
        let secs = self.budget.window.as_secs();
        let mut events = Vec::new();
        let anonymous = |env: String, reason: &str, count: u64, budget: &str| {
            let event = NewAuditEvent::new("token.refused.suppressed", "anonymous", Outcome::Refused)
                .detail("reason", reason.to_string())
                .detail("count", count)
                .detail("window_secs", secs)
                .detail("budget", budget.to_string());
            if env.is_empty() { event } else { event.env(env) }
        };
        for (group, bucket) in w.addresses {
            for ((env, reason), count) in bucket.suppressed {
                events.push(
                    anonymous(env, reason, count, "address").detail("client_address", group.to_string()),
                );
            }
        }
        for ((env, reason), count) in w.over_ceiling {
            events.push(
                anonymous(env, reason, count, "all_addresses")
                    .detail("addresses", w.over_ceiling_groups.len() as u64),
            );
        }
        for (principal, bucket) in w.principals {
            for ((kind, env, reason), count) in bucket.suppressed {
                let event =
                    NewAuditEvent::new(&format!("{kind}.suppressed"), principal.clone(), Outcome::Refused)
                        .detail("principal", principal.clone())
                        .detail("reason", reason)
                        .detail("count", count)
                        .detail("window_secs", secs)
                        .detail("budget", "principal");
                events.push(if env.is_empty() { event } else { event.env(env) });
            }
        }
        events
    }

    /// Write the summaries of the window that ends now.
    pub async fn flush(&self, store: &dyn Store) {
        for event in self.drain() {
            let (kind, actor, details) = (event.kind.clone(), event.actor.clone(), event.details.to_string());
            if let Err(e) = store.append_audit(event).await {
                // The counts survive in the log at least.
                tracing::error!(error = ?e, kind, actor, details, "cannot record suppressed refusals");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn budget(per_address: u32, all_addresses: u32, per_principal: u32) -> RefusalSettings {
        RefusalSettings {
            window: Duration::from_secs(10),
            per_address,
            all_addresses,
            per_principal,
        }
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn count(e: &NewAuditEvent) -> u64 {
        e.details["count"].as_u64().unwrap()
    }

    #[test]
    fn beyond_the_budget_refusals_are_counted_not_lost() {
        let l = RefusalLimiter::new(budget(30, 300, 30));
        for _ in 0..30 {
            assert!(l.admit(ip("10.0.0.1"), "staging", "unknown_client"));
        }
        for _ in 0..5 {
            assert!(!l.admit(ip("10.0.0.1"), "staging", "unknown_client"));
        }
        assert!(!l.admit(ip("10.0.0.1"), "staging", "invalid_request"));
        assert!(
            l.admit(ip("10.0.0.2"), "staging", "unknown_client"),
            "budgets are per address"
        );
        let events = l.drain();
        assert_eq!(events.len(), 2);
        assert_eq!(events.iter().map(count).sum::<u64>(), 6);
        assert!(events.iter().all(|e| e.details["client_address"] == "10.0.0.1"));
        assert!(events.iter().all(|e| e.details["budget"] == "address"));
        assert!(
            l.admit(ip("10.0.0.1"), "staging", "unknown_client"),
            "a new window has a new budget"
        );
    }

    #[test]
    fn ipv6_addresses_share_their_slash_64_and_mapped_ipv4_is_ipv4() {
        let l = RefusalLimiter::new(budget(3, 300, 30));
        // Three different hosts of one /64 use up one budget...
        for host in [
            "2001:db8:1:2::1",
            "2001:db8:1:2::2",
            "2001:db8:1:2:ffff:ffff:ffff:ffff",
        ] {
            assert!(l.admit(ip(host), "staging", "unknown_client"));
        }
        assert!(!l.admit(ip("2001:db8:1:2:1234::9"), "staging", "unknown_client"));
        // ... the next /64 has its own.
        assert!(l.admit(ip("2001:db8:1:3::1"), "staging", "unknown_client"));
        // An IPv4-mapped address is its IPv4 address.
        for _ in 0..3 {
            assert!(l.admit(ip("192.0.2.7"), "staging", "unknown_client"));
        }
        assert!(!l.admit(ip("::ffff:192.0.2.7"), "staging", "unknown_client"));
        let events = l.drain();
        let mut addresses: Vec<String> = events
            .iter()
            .map(|e| e.details["client_address"].as_str().unwrap().to_string())
            .collect();
        addresses.sort();
        assert_eq!(addresses, ["192.0.2.7", "2001:db8:1:2::/64"]);
    }

    #[test]
    fn the_ceiling_bounds_audited_refusals_whatever_the_number_of_addresses() {
        let l = RefusalLimiter::new(budget(5, 20, 30));
        let mut admitted = 0;
        // 40 loopback addresses, 30 refusals each, as in the report: 1,200 refusals.
        for round in 0..30 {
            for host in 1..=40 {
                let reason = if round % 2 == 0 {
                    "unknown_client"
                } else {
                    "bad_secret"
                };
                if l.admit(ip(&format!("127.0.0.{host}")), "staging", reason) {
                    admitted += 1;
                }
            }
        }
        assert_eq!(admitted, 20, "never more than all_addresses one by one");
        // And 2^64 addresses of one /64 are one group; many /64s still meet the ceiling.
        for n in 0..1000u32 {
            assert!(!l.admit(ip(&format!("2001:db8:{:x}::1", n)), "staging", "unknown_client"));
        }
        let events = l.drain();
        assert_eq!(
            events.iter().map(count).sum::<u64>(),
            1200 + 1000 - 20,
            "nothing lost"
        );
        let over: Vec<_> = events
            .iter()
            .filter(|e| e.details["budget"] == "all_addresses")
            .collect();
        assert_eq!(over.len(), 2, "one summary per environment and reason: {over:?}");
        assert_eq!(
            over.iter()
                .map(|e| e.details["addresses"].as_u64().unwrap())
                .max(),
            Some(1040)
        );
        // Summaries are bounded too: few addresses can exhaust their own budget.
        assert!(events.len() <= 2 + 2 * (20 / 5), "{}", events.len());
        // The next window starts over.
        assert!(l.admit(ip("127.0.0.1"), "staging", "unknown_client"));
    }

    #[test]
    fn authenticated_refusals_have_a_budget_per_principal() {
        let l = RefusalLimiter::new(budget(30, 300, 3));
        let refusal = |reason: &str| {
            NewAuditEvent::new("escalation.refused", "agent:agt_a", Outcome::Refused)
                .env("staging")
                .detail("reason", reason.to_string())
        };
        for _ in 0..3 {
            assert!(l.admit_principal("agent:agt_a", &refusal("reason_too_short")));
        }
        for _ in 0..7 {
            assert!(!l.admit_principal("agent:agt_a", &refusal("reason_too_short")));
        }
        let token = NewAuditEvent::new("token.refused", "agent:agt_a", Outcome::Refused)
            .env("staging")
            .detail("reason", "scope_not_allowed");
        assert!(!l.admit_principal("agent:agt_a", &token));
        assert!(
            l.admit_principal("agent:agt_b", &refusal("reason_too_short")),
            "another principal has its own budget"
        );
        let events = l.drain();
        assert_eq!(events.len(), 2, "{events:?}");
        let esc = events
            .iter()
            .find(|e| e.kind == "escalation.refused.suppressed")
            .unwrap();
        assert_eq!(count(esc), 7);
        assert_eq!(esc.actor, "agent:agt_a");
        assert_eq!(esc.details["principal"], "agent:agt_a");
        assert_eq!(esc.details["reason"], "reason_too_short");
        assert_eq!(esc.environment.as_deref(), Some("staging"));
        let tok = events
            .iter()
            .find(|e| e.kind == "token.refused.suppressed")
            .unwrap();
        assert_eq!(count(tok), 1);
        assert!(
            l.admit_principal("agent:agt_a", &token),
            "a new window, a new budget"
        );
    }

    #[test]
    fn anonymous_and_authenticated_budgets_are_separate() {
        let l = RefusalLimiter::new(budget(1, 1, 1));
        assert!(l.admit(ip("10.0.0.1"), "staging", "unknown_client"));
        assert!(!l.admit(ip("10.0.0.2"), "staging", "unknown_client"));
        let e =
            NewAuditEvent::new("token.refused", "user:bob", Outcome::Refused).detail("reason", "no_scope");
        assert!(l.admit_principal("user:bob", &e));
        assert!(!l.admit_principal("user:bob", &e));
    }
}
