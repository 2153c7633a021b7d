//! [`ReentrantLock`] and [`ReentrantGuard`]: the blocking reentrant lock.

use std::sync::Arc;

use super::Shared;
// Only the crate's public API, so the facade keeps working when internals move.
use crate::{Owner, Result};

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

    super::guard::blocking_lease_methods!("crate::ReentrantGuard", "lock");

    /// The owner this hold belongs to, as [`crate::ReentrantGuard::owner`].
    pub fn owner(&self) -> &Owner {
        self.guard().owner()
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
}
