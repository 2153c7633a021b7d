//! [`ReadGuard`] and [`WriteGuard`]: one read or write hold, each with its own lease.

use crate::engine::handle::{lease_methods, LeaseHandle};
use crate::error::Result;

/// A read hold on a [`RwLock`](crate::RwLock), shared with other readers. Release it with
/// [`ReadGuard::release`]; dropping it releases in the background. The watchdog renews its
/// lease while it lives and reports a loss through [`ReadGuard::lost`], as for a lock.
#[must_use = "dropping the guard releases the read hold at once (in the background)"]
#[derive(Debug)]
pub struct ReadGuard {
    handle: LeaseHandle,
}

/// The write hold on a [`RwLock`](crate::RwLock): nobody else holds the name. Release it with
/// [`WriteGuard::release`]; dropping it releases in the background.
#[must_use = "dropping the guard releases the write hold at once (in the background)"]
#[derive(Debug)]
pub struct WriteGuard {
    handle: LeaseHandle,
}

impl crate::telemetry::Granted for ReadGuard {
    fn fencing_token(&self) -> u64 {
        ReadGuard::fencing_token(self)
    }
}

impl crate::telemetry::Granted for WriteGuard {
    fn fencing_token(&self) -> u64 {
        WriteGuard::fencing_token(self)
    }
}

impl ReadGuard {
    pub(crate) fn new(handle: LeaseHandle) -> ReadGuard {
        ReadGuard { handle }
    }

    lease_methods!(
        handle,
        "read-write lock",
        "At least the fencing token of every write grant before this read grant, and below \
         every later write grant's: the last write's token (after a restart that lost the \
         counter, the server's clock in µs, as a write grant's would be), or, when this read \
         period began with a hand-off to readers, that hand-off's token, drawn from the \
         counter as a write grant's is. The readers of one read period share it. Storage that \
         records the largest token it has accepted can refuse a reader whose token is below \
         it: that reader began before a write it has not seen."
    );

    /// Releases the read hold (one round trip) and reports whether its lease was held all
    /// along, as [`LockGuard::release`](crate::LockGuard::release) does. The last reader out
    /// wakes waiting writers.
    ///
    /// # Errors
    /// [`Error::Lost`](crate::Error::Lost) when the lease had been lost; other errors as they
    /// are (the release is then retried in the background).
    ///
    /// # Cancel safety
    /// If the future is dropped, the guard's drop releases in the background.
    pub async fn release(self) -> Result<()> {
        self.handle.release().await
    }
}

impl WriteGuard {
    pub(crate) fn new(handle: LeaseHandle) -> WriteGuard {
        WriteGuard { handle }
    }

    lease_methods!(handle, "read-write lock");

    /// Releases the write hold (one round trip), waking every waiter, and reports whether its
    /// lease was held all along, as [`LockGuard::release`](crate::LockGuard::release) does.
    ///
    /// # Errors
    /// As [`ReadGuard::release`].
    ///
    /// # Cancel safety
    /// If the future is dropped, the guard's drop releases in the background.
    pub async fn release(self) -> Result<()> {
        self.handle.release().await
    }
}
