//! Retry delays: exponential backoff with full jitter.
//!
//! Jitter spreads retries of many contenders over time so they do not hit Redis in lockstep;
//! the cap keeps a long wait responsive. Used while waiting for a busy lock and when retrying
//! after a transient error.

use std::time::Duration;

use crate::error::{Error, Result};

/// Exponential backoff with full jitter: attempt `n` sleeps a random time in
/// `[initial·factorⁿ / 2, initial·factorⁿ]`, capped at `max`.
///
/// ```
/// use std::time::Duration;
/// use dlock::Backoff;
///
/// let backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(200));
/// let first = backoff.delay(0);
/// assert!(first >= Duration::from_millis(5) && first <= Duration::from_millis(10));
/// assert!(backoff.delay(30) <= Duration::from_millis(200));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    factor: f64,
}

impl Default for Backoff {
    /// 5 ms doubling up to 200 ms.
    fn default() -> Self {
        Backoff::new(Duration::from_millis(5), Duration::from_millis(200))
    }
}

impl Backoff {
    /// Delays doubling from `initial` up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            factor: 2.0,
        }
    }

    /// As [`Backoff::new`], in a constant.
    pub(crate) const fn new_const(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            factor: 2.0,
        }
    }

    /// The delay before retry number `attempt` (0-based), jittered.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        // Half fixed, half random: never zero (no hot loop), never in lockstep.
        ceiling.mul_f64(0.5 + fastrand::f64() * 0.5)
    }

    /// The un-jittered upper bound for retry number `attempt`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let grown = self.initial.as_secs_f64() * self.factor.powi(attempt.min(64) as i32);
        Duration::from_secs_f64(grown.min(self.max.as_secs_f64()))
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.initial.is_zero() || self.max < self.initial {
            return Err(Error::Config(format!(
                "backoff from {:?} to {:?} is invalid: the first delay must be positive and not \
                 above the cap",
                self.initial, self.max
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_then_cap_and_stay_jittered_within_bounds() {
        let b = Backoff::new(Duration::from_millis(10), Duration::from_millis(100));
        assert_eq!(b.ceiling(0), Duration::from_millis(10));
        assert_eq!(b.ceiling(1), Duration::from_millis(20));
        assert_eq!(b.ceiling(10), Duration::from_millis(100));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_millis(100));
        for attempt in 0..20 {
            let d = b.delay(attempt);
            let c = b.ceiling(attempt);
            assert!(d >= c / 2 && d <= c, "{d:?} outside [{:?}, {c:?}]", c / 2);
        }
    }

    #[test]
    fn invalid_backoff_is_rejected() {
        let b = Backoff::new(Duration::ZERO, Duration::from_millis(1));
        assert!(b.validate().is_err());
        let b = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert!(b.validate().is_err());
        assert!(Backoff::default().validate().is_ok());
    }
}
