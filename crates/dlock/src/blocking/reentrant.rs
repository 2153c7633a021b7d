//! [`ReentrantLock`] and [`ReentrantGuard`]: the blocking reentrant lock.

use std::sync::Arc;
use std::time::Duration;

use super::Shared;
// Only the crate's public API, so the facade keeps working when internals move.
use crate::{LeaseStatus, LossReason, Owner, Result};

/// A blocking reentrant lock: see [`crate::ReentrantLock`]. Made by
/// [`Client::reentrant_lock`](super::Client::reentrant_lock).
///
/// Reentrancy is keyed on an explicit [`Owner`], not on the thread: hand a clone of the owner
/// to every thread that may re-enter the lock.
///
/// ```
/// # fn main() -> Result<(), dlock::Error> {
/// # let server = dlock_test::RedisServer::start();
/// let url = "redis://127.0.0.1/";
/// # let url = &server.url();
/// let client = dlock::blocking::Client::connect(url)?;
/// let lock = client.reentrant_lock("ledger")?;
/// let owner = dlock::Owner::new()?;
/// let outer = lock.lock(&owner)?;
/// let inner = outer.reenter()?; // same owner: granted at once, same fencing token
/// assert_eq!(inner.fencing_token(), outer.fencing_token());
/// inner.release()?; // still held by `outer`
/// outer.release() // freed
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ReentrantLock {
    inner: crate::ReentrantLock,
    shared: Arc<Shared>,
}

impl ReentrantLock {
    pub(super) fn new(inner: crate::ReentrantLock, shared: &Arc<Shared>) -> ReentrantLock {
        ReentrantLock {
            inner,
            shared: shared.clone(),
        }
    }

    /// The lock's name, as [`crate::ReentrantLock::name`].
    pub fn name(&self) -> &str {
        self.inner.name()
    }

    /// Takes the lock for `owner` if it is free or already `owner`'s; fails at once
    /// otherwise. As [`crate::ReentrantLock::try_lock`].
    ///
    /// # Errors
    /// As [`crate::ReentrantLock::try_lock`];
    /// [`Error::Config`](crate::Error::Config) inside an async runtime.
    pub fn try_lock(&self, owner: &Owner) -> Result<ReentrantGuard> {
        let guard = self.shared.block_on(self.inner.try_lock(owner))??;
        Ok(ReentrantGuard::wrap(guard, &self.shared))
    }

    /// Takes the lock for `owner`, waiting while another owner holds it (within the wait
    /// limit of the lock's options), as [`crate::ReentrantLock::lock`].
    ///
    /// # Errors
    /// As [`crate::ReentrantLock::lock`];
    /// [`Error::Config`](crate::Error::Config) inside an async runtime.
    pub fn lock(&self, owner: &Owner) -> Result<ReentrantGuard> {
        let guard = self.shared.block_on(self.inner.lock(owner))??;
        Ok(ReentrantGuard::wrap(guard, &self.shared))
    }
}

/// One hold on a reentrant lock; dropping it releases the hold in the background. The lock is
/// freed when its last hold goes. See [`crate::ReentrantGuard`].
#[must_use = "dropping the guard releases this hold at once (in the background)"]
#[derive(Debug)]
pub struct ReentrantGuard {
    /// Always `Some` until `release` takes it.
    inner: Option<crate::ReentrantGuard>,
    shared: Arc<Shared>,
}

impl ReentrantGuard {
    fn wrap(guard: crate::ReentrantGuard, shared: &Arc<Shared>) -> ReentrantGuard {
        ReentrantGuard {
            inner: Some(guard),
            shared: shared.clone(),
        }
    }

    fn guard(&self) -> &crate::ReentrantGuard {
        self.inner
            .as_ref()
            .unwrap_or_else(|| unreachable!("only release() takes the guard, consuming self"))
    }

    /// The lock's name, as [`crate::ReentrantGuard::name`].
    pub fn name(&self) -> &str {
        self.guard().name()
    }

    /// The owner this hold belongs to, as [`crate::ReentrantGuard::owner`].
    pub fn owner(&self) -> &Owner {
        self.guard().owner()
    }

    /// The grant's fencing token, the same for every hold of one grant, as
    /// [`crate::ReentrantGuard::fencing_token`].
    pub fn fencing_token(&self) -> u64 {
        self.guard().fencing_token()
    }

    /// See [`crate::ReentrantGuard::is_held`].
    pub fn is_held(&self) -> bool {
        self.guard().is_held()
    }

    /// See [`crate::ReentrantGuard::status`].
    pub fn status(&self) -> LeaseStatus {
        self.guard().status()
    }

    /// The shared lease's current length, as [`crate::ReentrantGuard::ttl`].
    pub fn ttl(&self) -> Duration {
        self.guard().ttl()
    }

    /// How much longer the shared lease is surely valid by this process's clock (zero once
    /// lost), as [`crate::ReentrantGuard::remaining`].
    pub fn remaining(&self) -> Duration {
        self.guard().remaining()
    }

    /// A channel that flips when the shared lease is lost, as [`crate::ReentrantGuard::watch`].
    /// Synchronous code reads it without a runtime, as
    /// [`LockGuard::watch`](super::LockGuard::watch) shows.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<LeaseStatus> {
        self.guard().watch()
    }

    /// Blocks the calling thread until the shared lease is lost, and returns why, as
    /// [`crate::ReentrantGuard::lost`]. **While the lease is held it never returns**; see
    /// [`ReentrantGuard::lost_timeout`] for the bounded wait.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) inside an async runtime.
    pub fn lost(&self) -> Result<LossReason> {
        self.shared.block_on(self.guard().lost())
    }

    /// Waits up to `timeout` for the shared lease to be lost: `Some(reason)` as soon as it is
    /// (at once if it already was), `None` if it was still held when `timeout` passed. As
    /// [`LockGuard::lost_timeout`](super::LockGuard::lost_timeout).
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) inside an async runtime.
    pub fn lost_timeout(&self, timeout: Duration) -> Result<Option<LossReason>> {
        self.shared.block_on_within(timeout, self.guard().lost())
    }

    /// Waits up to `timeout` for the moment to wind down, as
    /// [`crate::ReentrantGuard::renewal_at_risk`]: `true` once renewals of the shared lease are
    /// failing and at most `margin` of its conservative validity is left, or once it is no
    /// longer held; `false` if neither happened within `timeout`. As
    /// [`LockGuard::renewal_at_risk_timeout`](super::LockGuard::renewal_at_risk_timeout).
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) inside an async runtime.
    pub fn renewal_at_risk_timeout(&self, margin: Duration, timeout: Duration) -> Result<bool> {
        let at_risk = self.guard().renewal_at_risk(margin);
        Ok(self.shared.block_on_within(timeout, at_risk)?.is_some())
    }

    /// Takes another hold for the same owner (one round trip; never waits), as
    /// [`crate::ReentrantGuard::reenter`].
    ///
    /// # Errors
    /// As [`crate::ReentrantGuard::reenter`];
    /// [`Error::Config`](crate::Error::Config) inside an async runtime.
    pub fn reenter(&self) -> Result<ReentrantGuard> {
        let guard = self.shared.block_on(self.guard().reenter())??;
        Ok(ReentrantGuard::wrap(guard, &self.shared))
    }

    /// Sets the shared lease to `ttl` from now, as [`crate::ReentrantGuard::extend`].
    ///
    /// # Errors
    /// As [`crate::ReentrantGuard::extend`];
    /// [`Error::Config`](crate::Error::Config) inside an async runtime.
    pub fn extend(&self, ttl: Duration) -> Result<()> {
        self.shared.block_on(self.guard().extend(ttl))?
    }

    /// Releases this hold (one round trip); the lock is freed if it was the last. As
    /// [`crate::ReentrantGuard::release`].
    ///
    /// # Errors
    /// As [`crate::ReentrantGuard::release`];
    /// [`Error::Config`](crate::Error::Config) inside an async runtime (the hold is then released
    /// in the background).
    pub fn release(mut self) -> Result<()> {
        let guard = self
            .inner
            .take()
            .unwrap_or_else(|| unreachable!("release consumes the guard"));
        self.shared.block_on(guard.release())?
    }
}
