//! [`MultiLock`] and [`MultiGuard`]: the blocking multi-key lock.

use std::sync::Arc;
use std::time::Duration;

use super::{Client, Shared};
// Only the crate's public API, so the facade keeps working when internals move.
use crate::{LeaseStatus, LockOptions, LossReason, Result};

impl Client {
    /// A multi-key lock over `names` with default options, as [`crate::Client::multi_lock`].
    ///
    /// # Errors
    /// As [`crate::Client::multi_lock`].
    pub fn multi_lock<S: AsRef<str>>(&self, names: &[S]) -> Result<MultiLock> {
        self.multi_lock_with(names, LockOptions::default())
    }

    /// A multi-key lock over `names` with `options`, as [`crate::Client::multi_lock_with`].
    ///
    /// # Errors
    /// As [`crate::Client::multi_lock_with`].
    pub fn multi_lock_with<S: AsRef<str>>(
        &self,
        names: &[S],
        options: LockOptions,
    ) -> Result<MultiLock> {
        Ok(MultiLock {
            inner: self.shared.client.multi_lock_with(names, options)?,
            shared: self.shared.clone(),
        })
    }
}

/// A blocking multi-key lock: every member or none. See [`crate::MultiLock`] for the guarantee
/// and its limits. Cheap to clone. Made by [`Client::multi_lock`] or
/// [`Client::multi_lock_with`].
///
/// ```
/// # fn main() -> Result<(), dlock::Error> {
/// # let server = dlock_test::RedisServer::start();
/// # let client = dlock::blocking::Client::connect(&server.url())?;
/// let both = client.multi_lock(&["account:1", "account:2"])?.try_lock()?;
/// assert!(client.lock("account:1")?.try_lock().unwrap_err().is_conflict());
/// assert!(both.fencing_token("account:2").is_some());
/// both.release()
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct MultiLock {
    inner: crate::MultiLock,
    shared: Arc<Shared>,
}

impl MultiLock {
    /// The members' names, sorted, as [`crate::MultiLock::names`].
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.inner.names()
    }

    /// Takes every member if all are free; fails at once otherwise, holding none, as
    /// [`crate::MultiLock::try_lock`].
    ///
    /// # Errors
    /// As [`crate::MultiLock::try_lock`]; [`Error::Config`](crate::Error::Config) inside an
    /// async runtime.
    pub fn try_lock(&self) -> Result<MultiGuard> {
        let guard = self.shared.block_on(self.inner.try_lock())??;
        Ok(self.wrap(guard))
    }

    /// Takes every member, blocking the calling thread while any is held, as
    /// [`crate::MultiLock::lock`].
    ///
    /// # Errors
    /// As [`crate::MultiLock::lock`]; [`Error::Config`](crate::Error::Config) inside an async
    /// runtime.
    pub fn lock(&self) -> Result<MultiGuard> {
        let guard = self.shared.block_on(self.inner.lock())??;
        Ok(self.wrap(guard))
    }

    fn wrap(&self, guard: crate::MultiGuard) -> MultiGuard {
        MultiGuard {
            inner: Some(guard),
            shared: self.shared.clone(),
        }
    }
}

/// Every member held; dropping it releases them in the background. See [`crate::MultiGuard`].
#[must_use = "dropping the guard releases every member at once (in the background)"]
#[derive(Debug)]
pub struct MultiGuard {
    /// Always `Some` until `release` takes it.
    inner: Option<crate::MultiGuard>,
    shared: Arc<Shared>,
}

impl MultiGuard {
    fn guard(&self) -> &crate::MultiGuard {
        self.inner
            .as_ref()
            .unwrap_or_else(|| unreachable!("only release() takes the guard, consuming self"))
    }

    /// The members' names, sorted, as [`crate::MultiGuard::names`].
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.guard().names()
    }

    /// Member `name`'s fencing token, as [`crate::MultiGuard::fencing_token`].
    pub fn fencing_token(&self, name: &str) -> Option<u64> {
        self.guard().fencing_token(name)
    }

    /// Whether every member is still held, as [`crate::MultiGuard::is_held`].
    pub fn is_held(&self) -> bool {
        self.guard().is_held()
    }

    /// How long every member is surely held, as [`crate::MultiGuard::remaining`].
    pub fn remaining(&self) -> Duration {
        self.guard().remaining()
    }

    /// Where the set stands, as [`crate::MultiGuard::status`].
    pub fn status(&self) -> LeaseStatus {
        self.guard().status()
    }

    /// Waits up to `timeout` for any member to be lost: `Some(reason)` as soon as one is,
    /// `None` if all were still held when `timeout` passed (a zero `timeout` checks without
    /// waiting). The blocking counterpart of `select!`-ing on [`crate::MultiGuard::lost`].
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) inside an async runtime.
    pub fn lost_timeout(&self, timeout: Duration) -> Result<Option<LossReason>> {
        self.shared.block_on_within(timeout, self.guard().lost())
    }

    /// Sets every member's lease to `ttl` from now, as [`crate::MultiGuard::extend`].
    ///
    /// # Errors
    /// As [`crate::MultiGuard::extend`]; [`Error::Config`](crate::Error::Config) inside an
    /// async runtime.
    pub fn extend(&self, ttl: Duration) -> Result<()> {
        self.shared.block_on(self.guard().extend(ttl))?
    }

    /// Releases every member, as [`crate::MultiGuard::release`].
    ///
    /// # Errors
    /// As [`crate::MultiGuard::release`]; [`Error::Config`](crate::Error::Config) inside an
    /// async runtime.
    pub fn release(mut self) -> Result<()> {
        let guard = self
            .inner
            .take()
            .unwrap_or_else(|| unreachable!("release consumes the guard"));
        self.shared.block_on(guard.release())?
    }
}
