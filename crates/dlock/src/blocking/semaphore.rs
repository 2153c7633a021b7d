//! [`Semaphore`] and [`SemaphorePermit`]: the blocking counting semaphore, and the client's
//! semaphore methods.

use std::sync::Arc;

use super::{Client, Shared};
// Only the crate's public API, so the facade keeps working when internals move.
use crate::{LockOptions, Result, SemaphoreStatus};

impl Client {
    /// A counting semaphore named `name` with `permits` permits and default options, as
    /// [`crate::Client::semaphore`]. See [`Semaphore`].
    ///
    /// # Errors
    /// As [`crate::Client::semaphore`].
    pub fn semaphore(&self, name: &str, permits: u32) -> Result<Semaphore> {
        self.semaphore_with(name, permits, LockOptions::default())
    }

    /// A counting semaphore with `options`, as [`crate::Client::semaphore_with`].
    ///
    /// # Errors
    /// As [`crate::Client::semaphore_with`].
    pub fn semaphore_with(
        &self,
        name: &str,
        permits: u32,
        options: LockOptions,
    ) -> Result<Semaphore> {
        Ok(Semaphore {
            inner: self.shared.client.semaphore_with(name, permits, options)?,
            shared: self.shared.clone(),
        })
    }

    /// A semaphore's state (stored limit, holders, permits free) without knowing its limit,
    /// as [`crate::Client::semaphore_status`].
    ///
    /// # Errors
    /// As [`crate::Client::semaphore_status`]; [`Error::Config`](crate::Error::Config)
    /// inside an async runtime.
    pub fn semaphore_status(&self, name: &str) -> Result<SemaphoreStatus> {
        self.shared
            .block_on(self.shared.client.semaphore_status(name))?
    }

    /// Frees a semaphore's permits whoever holds them: every holder's, or with `holder` only
    /// the grant with that fencing token. Returns the state before, with how many holders were
    /// freed. As [`crate::Client::force_release_permits`]; a freed holder, if alive, learns of
    /// the loss at its next renewal.
    ///
    /// ```
    /// # fn main() -> Result<(), dlock::Error> {
    /// # let server = dlock_test::RedisServer::start();
    /// # let client = dlock::blocking::Client::connect(&server.url())?;
    /// let exports = client.semaphore("exports", 2)?;
    /// let stuck = exports.try_acquire()?;
    /// let fine = exports.try_acquire()?;
    /// let before = client.force_release_permits("exports", Some(stuck.fencing_token()))?;
    /// assert_eq!(before.freed, 1);
    /// // The freed holder learns of it at its next renewal, or at once when it releases.
    /// assert!(stuck.release().unwrap_err().is_lost());
    /// fine.release()
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`crate::Client::force_release_permits`]; [`Error::Config`](crate::Error::Config)
    /// inside an async runtime.
    pub fn force_release_permits(
        &self,
        name: &str,
        holder: Option<u64>,
    ) -> Result<SemaphoreStatus> {
        let client = &self.shared.client;
        self.shared
            .block_on(client.force_release_permits(name, holder))?
    }

    /// Every semaphore in use (held or waited for) whose name matches `pattern` (a Redis
    /// glob), sorted by name, as [`crate::Client::list_semaphores`] (a `SCAN`).
    ///
    /// # Errors
    /// As [`crate::Client::list_semaphores`]; [`Error::Config`](crate::Error::Config) inside
    /// an async runtime.
    pub fn list_semaphores(&self, pattern: &str) -> Result<Vec<SemaphoreStatus>> {
        self.shared
            .block_on(self.shared.client.list_semaphores(pattern))?
    }
}

/// A blocking counting semaphore: at most N permits out at once, each with its own lease. See
/// [`crate::Semaphore`] for the guarantee and its limits. Cheap to clone; hand a clone to each
/// thread. Made by [`Client::semaphore`] or [`Client::semaphore_with`].
///
/// ```
/// use std::time::Duration;
/// # fn main() -> Result<(), dlock::Error> {
/// # let server = dlock_test::RedisServer::start();
/// let url = "redis://127.0.0.1/";
/// # let url = &server.url();
/// let client = dlock::blocking::Client::connect(url)?;
/// // At most 2 exports run at once, across every host.
/// let exports = client.semaphore("exports", 2)?;
/// let first = exports.try_acquire()?;
/// let second = exports.try_acquire()?;
/// let busy = exports.try_acquire().unwrap_err();
/// assert_eq!(busy.conflict().map(|c| c.holders.len()), Some(2));
///
/// // A thread that waits gets the first permit given back.
/// let waiter = {
///     let exports = exports.clone();
///     std::thread::spawn(move || exports.acquire())
/// };
/// first.release()?;
/// let third = waiter.join().expect("the waiting thread")?;
/// assert!(third.fencing_token() > second.fencing_token());
/// assert_eq!(third.lost_timeout(Duration::ZERO)?, None, "still ours");
/// third.release()?;
/// second.release()
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Semaphore {
    inner: crate::Semaphore,
    shared: Arc<Shared>,
}

impl Semaphore {
    /// The semaphore's name (its Redis key), as [`crate::Semaphore::name`].
    pub fn name(&self) -> &str {
        self.inner.name()
    }

    /// How many permits there are in all (the limit this handle names), as
    /// [`crate::Semaphore::permits`].
    pub fn permits(&self) -> u32 {
        self.inner.permits()
    }

    /// The semaphore's settings, as [`crate::Semaphore::options`].
    pub fn options(&self) -> &LockOptions {
        self.inner.options()
    }

    /// Takes one permit if one is free; fails at once otherwise, as
    /// [`crate::Semaphore::try_acquire`].
    ///
    /// # Errors
    /// As [`crate::Semaphore::try_acquire`] ([`Error::Conflict`](crate::Error::Conflict)
    /// naming the holders when none is free); [`Error::Config`](crate::Error::Config) inside
    /// an async runtime.
    pub fn try_acquire(&self) -> Result<SemaphorePermit> {
        self.try_acquire_many(1)
    }

    /// Takes `n` permits at once (one lease for all) if they are free; fails at once
    /// otherwise, as [`crate::Semaphore::try_acquire_many`].
    ///
    /// # Errors
    /// As [`crate::Semaphore::try_acquire_many`]; [`Error::Config`](crate::Error::Config)
    /// inside an async runtime.
    pub fn try_acquire_many(&self, n: u32) -> Result<SemaphorePermit> {
        let permit = self.shared.block_on(self.inner.try_acquire_many(n))??;
        Ok(self.wrap(permit))
    }

    /// Takes one permit, blocking the calling thread while none is free, within the wait limit
    /// of the options, as [`crate::Semaphore::acquire`] (woken by releases, no polling).
    ///
    /// # Errors
    /// As [`crate::Semaphore::acquire`]; [`Error::Config`](crate::Error::Config) inside an
    /// async runtime.
    pub fn acquire(&self) -> Result<SemaphorePermit> {
        self.acquire_many(1)
    }

    /// Takes `n` permits at once (one lease for all), waiting as [`Semaphore::acquire`]
    /// does, as [`crate::Semaphore::acquire_many`].
    ///
    /// # Errors
    /// As [`crate::Semaphore::acquire_many`]; [`Error::Config`](crate::Error::Config) inside
    /// an async runtime.
    pub fn acquire_many(&self, n: u32) -> Result<SemaphorePermit> {
        let permit = self.shared.block_on(self.inner.acquire_many(n))??;
        Ok(self.wrap(permit))
    }

    /// Changes the stored limit to `limit` on purpose and makes this handle (and its clones)
    /// name it; returns the previous stored limit, if any. As
    /// [`crate::Semaphore::set_limit`].
    ///
    /// # Errors
    /// As [`crate::Semaphore::set_limit`]; [`Error::Config`](crate::Error::Config) inside an
    /// async runtime.
    pub fn set_limit(&self, limit: u32) -> Result<Option<u32>> {
        self.shared.block_on(self.inner.set_limit(limit))?
    }

    /// The semaphore's state: stored limit, holders, permits free, as
    /// [`crate::Semaphore::status`].
    ///
    /// # Errors
    /// As [`crate::Semaphore::status`]; [`Error::Config`](crate::Error::Config) inside an
    /// async runtime.
    pub fn status(&self) -> Result<SemaphoreStatus> {
        self.shared.block_on(self.inner.status())?
    }

    fn wrap(&self, permit: crate::SemaphorePermit) -> SemaphorePermit {
        SemaphorePermit {
            inner: Some(permit),
            shared: self.shared.clone(),
        }
    }
}

/// Permits held; dropping it gives them back in the background. The client's runtime renews
/// the lease while the calling thread works. See [`crate::SemaphorePermit`].
#[must_use = "dropping the permit gives it back at once (in the background)"]
#[derive(Debug)]
pub struct SemaphorePermit {
    /// Always `Some` until `release` takes it.
    inner: Option<crate::SemaphorePermit>,
    shared: Arc<Shared>,
}

impl SemaphorePermit {
    fn guard(&self) -> &crate::SemaphorePermit {
        self.inner
            .as_ref()
            .unwrap_or_else(|| unreachable!("only release() takes the permit, consuming self"))
    }

    super::guard::blocking_lease_methods!("crate::SemaphorePermit", "semaphore");

    /// How many permits this grant holds, as [`crate::SemaphorePermit::permits`].
    pub fn permits(&self) -> u32 {
        self.guard().permits()
    }
}
