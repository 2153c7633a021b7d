//! Time the host spent suspended, so a lease never outlives a sleep.
//!
//! Lease validity runs on tokio's `Instant`, which is `CLOCK_MONOTONIC`: on Linux it stops
//! while the host is suspended (a laptop's lid closed, a VM paused). Redis's clock does not,
//! so after a resume that came later than the TTL the lock is gone, while a monotonic deadline
//! would still say it is held. `CLOCK_BOOTTIME` keeps running during a suspend, and
//! `boottime − monotonic` grows by exactly the time spent suspended: leases subtract the growth
//! since their grant or renewal from their validity. Elsewhere (no `CLOCK_BOOTTIME`) nothing
//! is subtracted, as before.

use std::sync::Arc;
use std::time::Duration;

/// Sleeps until `at`, or forever when there is no deadline (a `select!` arm that is off).
pub(crate) async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Where suspended time is read from: the system, or (in tests) a fake.
#[derive(Clone, Default)]
pub(crate) struct Clock {
    fake: Option<Arc<dyn Fn() -> Duration + Send + Sync>>,
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.fake.is_some() {
            "Clock(fake)"
        } else {
            "Clock(system)"
        })
    }
}

impl Clock {
    /// A clock whose suspended time is whatever `source` says (there is no real suspend in a
    /// test).
    #[cfg(test)]
    pub fn fake(source: impl Fn() -> Duration + Send + Sync + 'static) -> Clock {
        Clock {
            fake: Some(Arc::new(source)),
        }
    }

    /// Time spent suspended since an arbitrary fixed moment: only differences between two
    /// readings mean anything.
    pub fn suspended(&self) -> Duration {
        match &self.fake {
            Some(source) => source(),
            None => system_suspended(),
        }
    }
}

#[cfg(target_os = "linux")]
fn system_suspended() -> Duration {
    use nix::time::{clock_gettime, ClockId};
    let read = |clock| clock_gettime(clock).ok().map(Duration::from);
    // Boot time first: the monotonic reading after it is the later one, so scheduling noise
    // between the two reads makes the difference smaller, never a phantom suspend.
    match (
        read(ClockId::CLOCK_BOOTTIME),
        read(ClockId::CLOCK_MONOTONIC),
    ) {
        (Some(boot), Some(monotonic)) => boot.saturating_sub(monotonic),
        _ => Duration::ZERO,
    }
}

#[cfg(not(target_os = "linux"))]
fn system_suspended() -> Duration {
    Duration::ZERO
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    use tokio::time::Instant;

    use super::*;
    use crate::key::LockKeys;
    use crate::lease::{Lease, LeaseStatus, LossReason};
    use crate::token::Token;

    /// A fake clock and the knob that sets its suspended time (in ms).
    fn fake() -> (Clock, Arc<AtomicU64>) {
        let suspended = Arc::new(AtomicU64::new(0));
        let knob = suspended.clone();
        let clock = Clock::fake(move || Duration::from_millis(knob.load(Ordering::SeqCst)));
        (clock, suspended)
    }

    fn lease(ttl: Duration, clock: Clock) -> Lease {
        Lease::new(
            Arc::new(LockKeys::new("k").expect("valid")),
            Token::generate().expect("random"),
            1,
            ttl,
            Instant::now(),
            true,
            Arc::new(AtomicUsize::new(0)),
        )
        .with_clock(clock)
    }

    #[test]
    fn the_system_clock_reads_without_failing() {
        let clock = Clock::default();
        let first = clock.suspended();
        assert!(clock.suspended() + Duration::from_millis(1) >= first);
    }

    #[tokio::test(start_paused = true)]
    async fn a_suspend_longer_than_the_validity_ends_the_lease() {
        let (clock, suspended) = fake();
        let lease = lease(Duration::from_secs(30), clock);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(
            lease.valid_until() > Instant::now(),
            "valid before the suspend"
        );
        // A 31 s suspend: the monotonic clock stood still, Redis's clock did not.
        suspended.store(31_000, Ordering::SeqCst);
        assert!(
            lease.valid_until() <= Instant::now(),
            "still valid after a suspend longer than its TTL"
        );
        // A renewal sent after the resume counts from its own send time.
        lease.extended(Instant::now(), Duration::from_secs(30));
        suspended.store(32_000, Ordering::SeqCst);
        // Conservative: the suspend between the last reading and this renewal's send counts
        // against it once, never in its favour.
        assert!(lease.valid_until() < Instant::now() + Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_reports_a_lease_lost_to_a_suspend() {
        let (clock, suspended) = fake();
        let ttl = Duration::from_secs(30);
        let lease = Arc::new(lease(ttl, clock));
        // Nothing listens there: the renewal fails, and only the suspend can end the lease
        // before its monotonic validity (29.7 s).
        let node = crate::node::Node::lazy("redis://127.0.0.1:1/", &Default::default())
            .expect("valid URL");
        let watchdog = crate::watchdog::Watchdog::spawn(crate::quorum::Nodes::single(node));
        watchdog.track(lease.clone());
        suspended.store(31_000, Ordering::SeqCst);
        let mut status = lease.subscribe();
        let started = Instant::now();
        let lost = tokio::time::timeout(ttl / 2, status.wait_for(|s| *s != LeaseStatus::Held))
            .await
            .expect("reported at the first renewal, long before the monotonic expiry")
            .expect("the lease lives")
            .clone();
        assert!(started.elapsed() < ttl / 2);
        match lost {
            LeaseStatus::Lost(LossReason::Unreachable(why)) => {
                assert!(why.contains("suspended"), "{why}")
            }
            other => panic!("unexpected status {other:?}"),
        }
    }

    /// Issue 9: "a host that sleeps longer than the TTL must find its leases lost at resume".
    /// The watchdog used to sleep on the monotonic clock until the next renewal, so after a
    /// resume `lost()` fired up to a renewal interval (TTL/3) later (found by review).
    // Real time: the watchdog's regular look at the clocks is what is tested (a paused clock
    // would need the runtime idle to advance, which the link monitor's connecting prevents).
    #[tokio::test]
    async fn a_suspend_is_reported_at_resume() {
        let (clock, knob) = fake();
        let lease = Arc::new(lease(Duration::from_secs(30), clock));
        let node = crate::node::Node::lazy("redis://127.0.0.1:1/", &Default::default())
            .expect("valid URL");
        let watchdog = crate::watchdog::Watchdog::spawn(crate::quorum::Nodes::single(node));
        watchdog.track(lease.clone());
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Resume after a 31 s suspend.
        knob.store(31_000, Ordering::SeqCst);
        let mut status = lease.subscribe();
        let resumed = Instant::now();
        // One look interval, and a little for a loaded machine's scheduling.
        let within = Duration::from_millis(1300);
        tokio::time::timeout(within, status.wait_for(|s| *s != LeaseStatus::Held))
            .await
            .unwrap_or_else(|_| panic!("not reported within {within:?} of the resume"))
            .expect("lease lives");
        assert!(resumed.elapsed() < within);
    }
}
