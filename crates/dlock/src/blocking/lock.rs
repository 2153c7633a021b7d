//! [`Lock`] and [`LockGuard`]: the blocking lease lock.

use std::sync::Arc;
use std::time::Duration;

use super::Shared;
// Only the crate's public API, so the facade keeps working when internals move.
use crate::{LeaseStatus, LockOptions, LossReason, Result};

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

    /// The lock's name, as [`crate::LockGuard::name`].
    pub fn name(&self) -> &str {
        self.guard().name()
    }

    /// See [`crate::LockGuard::fencing_token`].
    pub fn fencing_token(&self) -> u64 {
        self.guard().fencing_token()
    }

    /// See [`crate::LockGuard::is_held`].
    pub fn is_held(&self) -> bool {
        self.guard().is_held()
    }

    /// See [`crate::LockGuard::status`].
    pub fn status(&self) -> LeaseStatus {
        self.guard().status()
    }

    /// See [`crate::LockGuard::remaining`].
    pub fn remaining(&self) -> Duration {
        self.guard().remaining()
    }

    /// The current lease length, as [`crate::LockGuard::ttl`].
    pub fn ttl(&self) -> Duration {
        self.guard().ttl()
    }

    /// A channel that flips when the lease is lost, as [`crate::LockGuard::watch`].
    ///
    /// Synchronous code can read it without a runtime: [`borrow`](tokio::sync::watch::Receiver::borrow)
    /// gives the current [`LeaseStatus`] and
    /// [`has_changed`](tokio::sync::watch::Receiver::has_changed) says whether it moved since
    /// last seen. To *wait* for a change from synchronous code, use
    /// [`LockGuard::lost_timeout`].
    ///
    /// ```
    /// # fn main() -> Result<(), dlock::Error> {
    /// # let server = dlock_test::RedisServer::start();
    /// # let client = dlock::blocking::Client::connect(&server.url())?;
    /// let guard = client.lock("import")?.try_lock()?;
    /// let status = guard.watch();
    /// assert_eq!(*status.borrow(), dlock::LeaseStatus::Held);
    /// guard.release()
    /// # }
    /// ```
    pub fn watch(&self) -> tokio::sync::watch::Receiver<LeaseStatus> {
        self.guard().watch()
    }

    /// Blocks the calling thread until the lease is lost, and returns why, as
    /// [`crate::LockGuard::lost`].
    ///
    /// **While the lease is held it never returns**: a renewed lease can be held for as long
    /// as the guard lives, so this blocks forever unless something takes the lease away. It
    /// suits only a thread whose sole job is to react to a loss; elsewhere use
    /// [`LockGuard::lost_timeout`], which waits at most a given time.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) inside an async runtime.
    pub fn lost(&self) -> Result<LossReason> {
        self.shared.block_on(self.guard().lost())
    }

    /// Waits up to `timeout` for the lease to be lost: `Some(reason)` as soon as it is (at
    /// once if it already was), `None` if it was still held when `timeout` passed. A zero
    /// `timeout` checks without waiting.
    ///
    /// The blocking counterpart of `select!`-ing on [`crate::LockGuard::lost`]: do a slice of
    /// work, or wait for a worker, between checks.
    ///
    /// ```
    /// use std::time::Duration;
    /// # fn main() -> Result<(), dlock::Error> {
    /// # let server = dlock_test::RedisServer::start();
    /// # let client = dlock::blocking::Client::connect(&server.url())?;
    /// let guard = client.lock("import")?.try_lock()?;
    /// let worker = std::thread::spawn(|| { /* the job */ });
    /// // Wait for the job, checking every 100 ms that the lease is still ours.
    /// while !worker.is_finished() {
    ///     if let Some(reason) = guard.lost_timeout(Duration::from_millis(100))? {
    ///         eprintln!("lease lost ({reason}): the job must stop");
    ///         return Ok(());
    ///     }
    /// }
    /// guard.release()
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) inside an async runtime.
    pub fn lost_timeout(&self, timeout: Duration) -> Result<Option<LossReason>> {
        self.shared.block_on_within(timeout, self.guard().lost())
    }

    /// Waits up to `timeout` for the moment to wind down, as
    /// [`crate::LockGuard::renewal_at_risk`]: `true` once renewals are failing and at most
    /// `margin` of the lease's conservative validity is left, or once the lease is no longer
    /// held; `false` if neither happened within `timeout` (renewals succeeding never count).
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) inside an async runtime.
    pub fn renewal_at_risk_timeout(&self, margin: Duration, timeout: Duration) -> Result<bool> {
        let at_risk = self.guard().renewal_at_risk(margin);
        Ok(self.shared.block_on_within(timeout, at_risk)?.is_some())
    }

    /// See [`crate::LockGuard::extend`].
    ///
    /// # Errors
    /// As [`crate::LockGuard::extend`].
    pub fn extend(&self, ttl: Duration) -> Result<()> {
        self.shared.block_on(self.guard().extend(ttl))?
    }

    /// See [`crate::LockGuard::release`].
    ///
    /// # Errors
    /// As [`crate::LockGuard::release`].
    pub fn release(mut self) -> Result<()> {
        let guard = self
            .inner
            .take()
            .unwrap_or_else(|| unreachable!("release consumes the guard"));
        self.shared.block_on(guard.release())?
    }

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
