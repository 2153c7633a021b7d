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
    use super::*;

    #[test]
    fn the_system_clock_reads_without_failing() {
        let clock = Clock::default();
        let first = clock.suspended();
        assert!(clock.suspended() + Duration::from_millis(1) >= first);
    }
}
