//! [`RwLock`], [`ReadGuard`] and [`WriteGuard`]: the blocking read-write lock.

use std::sync::Arc;

use super::{Client, Shared};
// Only the crate's public API, so the facade keeps working when internals move.
use crate::{LockOptions, Result};

impl Client {
    /// A read-write lock named `name` with default options, as [`crate::Client::rw_lock`].
    /// See [`RwLock`].
    ///
    /// # Errors
    /// As [`crate::Client::rw_lock`].
    pub fn rw_lock(&self, name: &str) -> Result<RwLock> {
        self.rw_lock_with(name, LockOptions::default())
    }

    /// A read-write lock with `options`, as [`crate::Client::rw_lock_with`].
    ///
    /// # Errors
    /// As [`crate::Client::rw_lock_with`].
    pub fn rw_lock_with(&self, name: &str, options: LockOptions) -> Result<RwLock> {
        Ok(RwLock {
            inner: self.shared.client.rw_lock_with(name, options)?,
            shared: self.shared.clone(),
        })
    }
}

/// A blocking read-write lock: many readers or one writer, no writer starvation. See
/// [`crate::RwLock`] for the guarantee and its limits. Cheap to clone; hand a clone to each
/// thread. Made by [`Client::rw_lock`] or [`Client::rw_lock_with`].
///
/// ```
/// # fn main() -> Result<(), dlock::Error> {
/// # let server = dlock_test::RedisServer::start();
/// # let client = dlock::blocking::Client::connect(&server.url())?;
/// let config = client.rw_lock("config")?;
/// let reader = config.read()?;
/// // A writer waits in another thread until the reader leaves.
/// let writer = {
///     let config = config.clone();
///     std::thread::spawn(move || config.write())
/// };
/// reader.release()?;
/// let writer = writer.join().expect("the writing thread")?;
/// assert!(config.try_read().unwrap_err().is_conflict());
/// writer.release()
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RwLock {
    inner: crate::RwLock,
    shared: Arc<Shared>,
}

impl RwLock {
    /// The lock's name (its Redis key), as [`crate::RwLock::name`].
    pub fn name(&self) -> &str {
        self.inner.name()
    }

    /// The lock's settings, as [`crate::RwLock::options`].
    pub fn options(&self) -> &LockOptions {
        self.inner.options()
    }

    /// Takes the read side if no writer holds it or waits ahead; fails at once otherwise, as
    /// [`crate::RwLock::try_read`].
    ///
    /// # Errors
    /// As [`crate::RwLock::try_read`]; [`Error::Config`](crate::Error::Config) inside an
    /// async runtime.
    pub fn try_read(&self) -> Result<ReadGuard> {
        let guard = self.shared.block_on(self.inner.try_read())??;
        Ok(ReadGuard {
            inner: Some(guard),
            shared: self.shared.clone(),
        })
    }

    /// Takes the read side, blocking the calling thread while a writer holds it or waits
    /// ahead, as [`crate::RwLock::read`].
    ///
    /// # Errors
    /// As [`crate::RwLock::read`]; [`Error::Config`](crate::Error::Config) inside an async
    /// runtime.
    pub fn read(&self) -> Result<ReadGuard> {
        let guard = self.shared.block_on(self.inner.read())??;
        Ok(ReadGuard {
            inner: Some(guard),
            shared: self.shared.clone(),
        })
    }

    /// Takes the write side if nobody holds it; fails at once otherwise, as
    /// [`crate::RwLock::try_write`].
    ///
    /// # Errors
    /// As [`crate::RwLock::try_write`]; [`Error::Config`](crate::Error::Config) inside an
    /// async runtime.
    pub fn try_write(&self) -> Result<WriteGuard> {
        let guard = self.shared.block_on(self.inner.try_write())??;
        Ok(WriteGuard {
            inner: Some(guard),
            shared: self.shared.clone(),
        })
    }

    /// Takes the write side, blocking the calling thread while anyone holds it (new readers
    /// wait behind it meanwhile), as [`crate::RwLock::write`].
    ///
    /// # Errors
    /// As [`crate::RwLock::write`]; [`Error::Config`](crate::Error::Config) inside an async
    /// runtime.
    pub fn write(&self) -> Result<WriteGuard> {
        let guard = self.shared.block_on(self.inner.write())??;
        Ok(WriteGuard {
            inner: Some(guard),
            shared: self.shared.clone(),
        })
    }
}

/// A read hold; dropping it releases in the background. See [`crate::ReadGuard`].
#[must_use = "dropping the guard releases the read hold at once (in the background)"]
#[derive(Debug)]
pub struct ReadGuard {
    /// Always `Some` until `release` takes it.
    inner: Option<crate::ReadGuard>,
    shared: Arc<Shared>,
}

impl ReadGuard {
    fn guard(&self) -> &crate::ReadGuard {
        self.inner
            .as_ref()
            .unwrap_or_else(|| unreachable!("only release() takes the guard, consuming self"))
    }

    super::guard::blocking_lease_methods!("crate::ReadGuard", "read-write lock");
}

/// The write hold; dropping it releases in the background. See [`crate::WriteGuard`].
#[must_use = "dropping the guard releases the write hold at once (in the background)"]
#[derive(Debug)]
pub struct WriteGuard {
    /// Always `Some` until `release` takes it.
    inner: Option<crate::WriteGuard>,
    shared: Arc<Shared>,
}

impl WriteGuard {
    fn guard(&self) -> &crate::WriteGuard {
        self.inner
            .as_ref()
            .unwrap_or_else(|| unreachable!("only release() takes the guard, consuming self"))
    }

    super::guard::blocking_lease_methods!("crate::WriteGuard", "read-write lock");
}
