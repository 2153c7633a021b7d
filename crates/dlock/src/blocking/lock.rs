//! [`Lock`] and [`LockGuard`]: the blocking lease lock.

use std::sync::Arc;
use std::time::Duration;

use super::Shared;
// Only the crate's public API, so the facade keeps working when internals move.
use crate::{LockOptions, Result};

/// A blocking lock: see [`crate::Lock`].
#[derive(Debug, Clone)]
pub struct Lock {
    inner: crate::Lock,
    shared: Arc<Shared>,
}

impl Lock {
    pub(super) fn new(inner: crate::Lock, shared: &Arc<Shared>) -> Lock {
        Lock {
            inner,
            shared: shared.clone(),
        }
    }

    /// The lock's name (its Redis key), as [`crate::Lock::name`].
    pub fn name(&self) -> &str {
        self.inner.name()
    }

    /// The lock's settings, as [`crate::Lock::options`].
    pub fn options(&self) -> &LockOptions {
        self.inner.options()
    }

    /// Takes the lock if free, as [`crate::Lock::try_lock`].
    ///
    /// # Errors
    /// As [`crate::Lock::try_lock`].
    pub fn try_lock(&self) -> Result<LockGuard> {
        let guard = self.shared.block_on(self.inner.try_lock())??;
        Ok(self.wrap(guard))
    }

    /// Takes the lock, waiting within the options' wait limit, as [`crate::Lock::lock`].
    ///
    /// # Errors
    /// As [`crate::Lock::lock`].
    pub fn lock(&self) -> Result<LockGuard> {
        let guard = self.shared.block_on(self.inner.lock())??;
        Ok(self.wrap(guard))
    }

    fn wrap(&self, guard: crate::LockGuard) -> LockGuard {
        LockGuard {
            inner: Some(guard),
            shared: self.shared.clone(),
        }
    }
}

/// A held lock; dropping it releases the lock in the background. See [`crate::LockGuard`].
#[must_use = "dropping the guard releases the lock at once (in the background)"]
#[derive(Debug)]
pub struct LockGuard {
    /// Always `Some` until `release` or `release_after` takes it.
    inner: Option<crate::LockGuard>,
    shared: Arc<Shared>,
}

impl LockGuard {
    fn guard(&self) -> &crate::LockGuard {
        self.inner.as_ref().unwrap_or_else(|| {
            unreachable!("only release() and release_after() take the guard, consuming self")
        })
    }

    super::guard::blocking_lease_methods!("crate::LockGuard", "lock");

    /// Ends the owner's use of the lock but keeps it taken for `keep` more (then it expires),
    /// as [`crate::LockGuard::release_after`]: a duplicate of a job that finished quickly is
    /// still refused for a while. A zero `keep` is a plain [`release`](LockGuard::release).
    ///
    /// ```
    /// use std::time::Duration;
    /// # fn main() -> Result<(), dlock::Error> {
    /// # let server = dlock_test::RedisServer::start();
    /// # let client = dlock::blocking::Client::connect(&server.url())?;
    /// let guard = client.lock("nightly-report")?.try_lock()?;
    /// // ... the job, done in seconds ...
    /// // A duplicate started in the next 5 minutes is still refused.
    /// guard.release_after(Duration::from_secs(300))?;
    /// let late = client.lock("nightly-report")?.try_lock().unwrap_err();
    /// assert!(late.conflict().and_then(|c| c.holder.as_ref()).is_some_and(|h| h.finished));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`crate::LockGuard::release_after`];
    /// [`Error::Config`](crate::Error::Config) inside an async runtime.
    pub fn release_after(mut self, keep: Duration) -> Result<()> {
        let guard = self
            .inner
            .take()
            .unwrap_or_else(|| unreachable!("release_after consumes the guard"));
        self.shared.block_on(guard.release_after(keep))?
    }
}
