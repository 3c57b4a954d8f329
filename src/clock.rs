//! Time as the services see it. In production the system clock; in tests, a clock that
//! can be moved ahead, so a test of "after the session expires" need not wait for it.
//!
//! Only decisions read this clock (token lifetimes and expiry, session and grant ends,
//! TOTP steps, throttle windows, request deadlines). The store stamps revocations and
//! audit events with the system clock, and waits (long polls, the sweeper's tick) use
//! real time.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use time::OffsetDateTime;

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> OffsetDateTime;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        crate::domain::now()
    }
}

/// The system clock plus an offset that only grows: time keeps flowing, and a test can
/// jump ahead with [`OffsetClock::advance`].
#[derive(Debug, Default)]
pub struct OffsetClock {
    ahead_us: AtomicI64,
}

impl OffsetClock {
    /// Move this clock `by` ahead of where it was.
    pub fn advance(&self, by: Duration) {
        let us = i64::try_from(by.as_micros()).unwrap_or(i64::MAX);
        self.ahead_us.fetch_add(us, Ordering::SeqCst);
    }

    /// How far ahead of the system clock this clock is.
    pub fn ahead(&self) -> Duration {
        Duration::from_micros(self.ahead_us.load(Ordering::SeqCst).max(0) as u64)
    }
}

impl Clock for OffsetClock {
    fn now(&self) -> OffsetDateTime {
        let ahead = time::Duration::microseconds(self.ahead_us.load(Ordering::SeqCst));
        crate::domain::now() + ahead
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offset_clock_moves_ahead_and_keeps_flowing() {
        let clock = OffsetClock::default();
        let before = SystemClock.now();
        clock.advance(Duration::from_secs(3600));
        let ahead = clock.now() - before;
        assert!(ahead >= time::Duration::seconds(3600), "{ahead}");
        assert!(ahead < time::Duration::seconds(3660), "{ahead}");
        assert_eq!(clock.ahead(), Duration::from_secs(3600));
    }
}
