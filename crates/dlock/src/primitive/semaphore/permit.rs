//! [`SemaphorePermit`]: one grant of one or more permits, with its own lease.

use crate::engine::handle::{lease_methods, LeaseHandle};
use crate::error::Result;

/// Permits held. Release them with [`SemaphorePermit::release`]; dropping the guard releases
/// them in the background. The watchdog renews the lease while the guard lives and reports its
/// loss through [`SemaphorePermit::lost`], as for a lock.
#[must_use = "dropping the permit gives it back at once (in the background)"]
#[derive(Debug)]
pub struct SemaphorePermit {
    handle: LeaseHandle,
    permits: u32,
}

impl crate::telemetry::Granted for SemaphorePermit {
    fn fencing_token(&self) -> u64 {
        SemaphorePermit::fencing_token(self)
    }
}

impl SemaphorePermit {
    pub(crate) fn new(handle: LeaseHandle, permits: u32) -> SemaphorePermit {
        SemaphorePermit { handle, permits }
    }

    lease_methods!(handle, "semaphore");

    /// How many permits this grant holds.
    pub fn permits(&self) -> u32 {
        self.permits
    }

    /// Gives the permits back (one round trip) and reports whether the lease was held all
    /// along, as [`LockGuard::release`](crate::LockGuard::release) does: `Ok(())` means the
    /// permits were ours until now; a release that fails on a dropped connection is retried on
    /// the new one while the lease can still be valid.
    ///
    /// # Errors
    /// [`Error::Lost`](crate::Error::Lost) when the lease had been lost (expired, freed by a
    /// forced release, lost in a restart) or no answer came before its validity ended; other
    /// errors as they are (the release is then retried in the background).
    ///
    /// # Cancel safety
    /// If the future is dropped, the guard's drop releases the permits in the background.
    pub async fn release(self) -> Result<()> {
        self.handle.release().await
    }
}
