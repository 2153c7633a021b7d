//! Counting, inside the bench's process, how many workers hold a semaphore's permits at once.
//!
//! Every worker calls [`Occupancy::enter`] right after its acquire returns and
//! [`Occupancy::leave`] right before it sends the release, so the count can only be too high
//! if the server really granted more permits than there are (a permit released on the server
//! is no longer counted here by then; one granted is counted at once).

use std::sync::atomic::{AtomicU64, Ordering};

/// The holders of one semaphore seen by this process: now, at most, and above the permits.
#[derive(Debug)]
pub struct Occupancy {
    permits: u64,
    inside: AtomicU64,
    most: AtomicU64,
    violations: AtomicU64,
}

impl Occupancy {
    /// No holders yet, of a semaphore with `permits` permits.
    pub fn new(permits: u32) -> Occupancy {
        Occupancy {
            permits: u64::from(permits),
            inside: AtomicU64::new(0),
            most: AtomicU64::new(0),
            violations: AtomicU64::new(0),
        }
    }

    /// One more holder (its acquire just returned). Seeing more holders than permits is a
    /// violation.
    pub fn enter(&self) {
        let now = self.inside.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        if now > self.permits {
            self.violations.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// How many hold right now.
    pub fn inside(&self) -> u64 {
        self.inside.load(Ordering::SeqCst)
    }

    /// One holder fewer (it is about to send its release).
    pub fn leave(&self) {
        self.inside.fetch_sub(1, Ordering::SeqCst);
    }

    /// A violation seen otherwise (a release that found the lease lost: the worker may have
    /// held a permit someone else was granted).
    pub fn violation(&self) {
        self.violations.fetch_add(1, Ordering::SeqCst);
    }

    /// The most holders at once so far.
    pub fn max_holders(&self) -> u64 {
        self.most.load(Ordering::SeqCst)
    }

    /// The violations so far.
    pub fn violations(&self) -> u64 {
        self.violations.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_up_to_the_permits_are_no_violation() {
        let seen = Occupancy::new(2);
        for _ in 0..3 {
            seen.enter();
            seen.enter();
            seen.leave();
            seen.leave();
        }
        seen.enter();
        assert_eq!(seen.max_holders(), 2);
        assert_eq!(seen.violations(), 0);
    }

    #[test]
    fn a_holder_above_the_permits_is_a_violation() {
        // A deliberately wrong sequence: a third holder enters while two hold both permits.
        let seen = Occupancy::new(2);
        seen.enter();
        seen.enter();
        seen.enter();
        assert_eq!(seen.max_holders(), 3);
        assert_eq!(seen.violations(), 1);
        seen.leave();
        seen.leave();
        seen.leave();
        seen.enter();
        seen.enter();
        assert_eq!(
            seen.violations(),
            1,
            "back within the permits: no new violation"
        );
        seen.enter();
        assert_eq!(
            seen.violations(),
            2,
            "every observation above the permits counts"
        );
        assert_eq!(seen.max_holders(), 3);
    }

    #[test]
    fn a_lost_release_is_a_violation() {
        let seen = Occupancy::new(1);
        seen.enter();
        seen.leave();
        seen.violation();
        assert_eq!(seen.max_holders(), 1);
        assert_eq!(seen.violations(), 1);
    }
}
