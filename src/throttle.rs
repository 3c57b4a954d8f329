//! Sign-in throttling's building blocks: the counters' keys, the address grouping, the
//! delay schedule, and the in-process cache of keys the store has blocked. Which keys a
//! given check counts is the caller's policy (`people::sign_in`).

use std::net::IpAddr;
use std::time::Duration;

/// One throttle counter and the failures it allows before delays start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThrottleKey {
    /// The counter's name in the store (no typed username in clear).
    pub key: String,
    /// Attempts allowed before the first delay.
    pub free: u32,
    /// A wide key (an address, an account from everywhere) only gets a successful
    /// attempt back; the one narrow key (this account from this address, this session)
    /// starts again after a success.
    pub wide: bool,
}

/// The address as the throttle sees it: IPv6 grouped by /64 (one host usually holds a
/// whole /64), IPv4-mapped IPv6 as its IPv4.
pub fn address_group(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// Keys the store has blocked, remembered in this process until their block ends, so a
/// flood of attempts on a blocked account or address is refused without touching the
/// store (on SQLite those writes would queue behind the single writer with token
/// issuance). The store stays the authority: this can only refuse earlier, never allow.
#[derive(Default)]
pub struct BlockCache {
    until_us: std::sync::Mutex<std::collections::HashMap<String, i64>>,
}

impl BlockCache {
    const MAX_KEYS: usize = 10_000;

    /// Microseconds until the latest block among `keys` ends (0 or less: none).
    pub fn wait_us<'a>(&self, keys: impl IntoIterator<Item = &'a str>, at_us: i64) -> i64 {
        let Ok(map) = self.until_us.lock() else { return 0 };
        keys.into_iter()
            .filter_map(|k| map.get(k))
            .map(|until| until - at_us)
            .max()
            .unwrap_or(0)
    }

    /// Remember that `key` is blocked until `until_us`.
    pub fn remember(&self, key: &str, until_us: i64, at_us: i64) {
        if let Ok(mut map) = self.until_us.lock() {
            if map.len() >= Self::MAX_KEYS {
                map.retain(|_, until| *until > at_us);
                if map.len() >= Self::MAX_KEYS {
                    map.clear();
                }
            }
            map.insert(key.to_string(), until_us);
        }
    }

    /// Forget `key` (a check passed; the store re-decides).
    pub fn forget(&self, key: &str) {
        if let Ok(mut map) = self.until_us.lock() {
            map.remove(key);
        }
    }
}

/// How long a key is blocked after its `attempts`-th attempt.
pub fn throttle_delay(attempts: i64, free: u32, max: Duration) -> Option<Duration> {
    let over = attempts - i64::from(free);
    if over <= 0 {
        return None;
    }
    let secs = 1u64.checked_shl((over - 1).min(30) as u32).unwrap_or(u64::MAX);
    Some(Duration::from_secs(secs).min(max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_after_the_free_failures_and_are_capped() {
        let max = Duration::from_secs(900);
        assert_eq!(throttle_delay(3, 3, max), None);
        assert_eq!(throttle_delay(4, 3, max), Some(Duration::from_secs(1)));
        assert_eq!(throttle_delay(6, 3, max), Some(Duration::from_secs(4)));
        assert_eq!(throttle_delay(60, 3, max), Some(max));
    }
}
