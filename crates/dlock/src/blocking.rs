//! A blocking facade for synchronous programs: the same locks, no `async` in the caller.
//!
//! Each [`blocking::Client`](Client) owns a small tokio runtime (one worker thread) that runs
//! the connection and the watchdog, so leases are renewed while the caller's thread is busy or
//! asleep. Calls block the calling thread until Redis answers (within the usual timeouts).
//!
//! Every deployment of [`crate::Client`] has its connector here ([`Client::connect`],
//! [`Client::sentinel`], [`Client::cluster`], [`Client::redlock`]), and [`Lock`],
//! [`LockGuard`], [`ReentrantLock`] and [`ReentrantGuard`] mirror their async namesakes; where
//! an async method is a future to `select!` on ([`crate::LockGuard::lost`],
//! [`crate::LockGuard::renewal_at_risk`]), the blocking one also comes with a timeout
//! ([`LockGuard::lost_timeout`], [`LockGuard::renewal_at_risk_timeout`]).
//!
//! Calling it from inside an async runtime returns [`Error::Config`] instead of blocking (or
//! panicking) the runtime's thread: async code should use [`crate::Client`]. What never waits
//! (`is_held`, `status`, `watch`, …) works anywhere.
//!
//! ```
//! fn main() -> Result<(), dlock::Error> {
//! #   let server = dlock_test::RedisServer::start();
//!     let url = "redis://127.0.0.1/";
//! #   let url = &server.url();
//!     let client = dlock::blocking::Client::connect(url)?;
//!     let guard = client.lock("nightly-report")?.try_lock()?;
//!     println!("fencing token {}", guard.fencing_token());
//!     guard.release()
//! }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

// Only the crate's public API, so the facade keeps working when internals move.
use crate::{
    ClientOptions, Error, LeaseStatus, LockOptions, LockStatus, LossReason, Owner, Result,
    SentinelConfig,
};

/// A blocking client: see the [module docs](self).
#[derive(Debug, Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

/// The runtime and the async client it drives. Dropped last (every lock and guard holds it).
#[derive(Debug)]
struct Shared {
    /// Always `Some` until `Drop` takes it.
    runtime: Option<tokio::runtime::Runtime>,
    client: crate::Client,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        if outside_async().is_ok() {
            // Send the releases of dropped guards before the runtime (and its tasks) goes.
            let client = self.client.clone();
            runtime.block_on(async move {
                let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
            });
        } else {
            // Dropped inside some async runtime, where blocking would panic: shut down without
            // waiting (queued releases are lost; those locks expire with their TTL).
            runtime.shutdown_background();
        }
    }
}

impl Shared {
    fn block_on<F: Future>(&self, future: F) -> Result<F::Output> {
        outside_async()?;
        match &self.runtime {
            Some(runtime) => Ok(runtime.block_on(future)),
            None => Err(Error::Internal("dlock's runtime is gone".into())),
        }
    }
}

/// Blocking calls are refused inside an async runtime, where they would stall (or panic) it.
fn outside_async() -> Result<()> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(Error::Config(
            "dlock::blocking cannot be called from inside an async runtime; use dlock::Client"
                .into(),
        ));
    }
    Ok(())
}

impl Client {
    /// Connects to one Redis server, as [`crate::Client::connect`].
    ///
    /// # Errors
    /// As [`crate::Client::connect`]; [`Error::Config`] inside an async runtime;
    /// [`Error::Internal`] if the runtime cannot start.
    pub fn connect(url: &str) -> Result<Client> {
        Self::connect_with(url, ClientOptions::default())
    }

    /// Connects with explicit [`ClientOptions`], as [`crate::Client::connect_with`].
    ///
    /// # Errors
    /// As [`Client::connect`], and [`Error::Config`] for invalid options.
    pub fn connect_with(url: &str, options: ClientOptions) -> Result<Client> {
        Self::start(crate::Client::connect_with(url, options))
    }

    /// Connects to the master of a Sentinel-monitored group and follows failovers, as
    /// [`crate::Client::sentinel`]: when a call fails, the client asks the sentinels again and
    /// switches to the master they name. Combine with
    /// [`LockOptions::min_replicas`] to narrow the window in which a failover loses a lock.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), dlock::Error> {
    /// let config = dlock::SentinelConfig::new(
    ///     "mymaster",
    ///     ["redis://sentinel-a:26379/", "redis://sentinel-b:26379/"],
    /// );
    /// let client = dlock::blocking::Client::sentinel(config)?;
    /// let guard = client.lock("billing")?.try_lock()?;
    /// guard.release()
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`crate::Client::sentinel`]: [`Error::Config`] for bad sentinel URLs,
    /// [`Error::Unavailable`] when no sentinel names a reachable master, [`Error::Auth`] when
    /// the master refuses the credentials. Also [`Error::Config`] inside an async runtime;
    /// [`Error::Internal`] if the runtime cannot start.
    pub fn sentinel(config: SentinelConfig) -> Result<Client> {
        Self::sentinel_with(config, ClientOptions::default())
    }

    /// [`Client::sentinel`] with explicit [`ClientOptions`], as
    /// [`crate::Client::sentinel_with`].
    ///
    /// # Errors
    /// As [`Client::sentinel`].
    pub fn sentinel_with(config: SentinelConfig, options: ClientOptions) -> Result<Client> {
        Self::start(crate::Client::sentinel_with(config, options))
    }

    /// Connects to a Redis Cluster through `seeds` (any of its nodes), as
    /// [`crate::Client::cluster`]. Every lock's keys share one hash slot, so each lock
    /// operation goes to the master of that slot; renewals of many locks are batched per slot.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), dlock::Error> {
    /// let seeds = ["redis://cluster-a:6379/", "redis://cluster-b:6379/"];
    /// let client = dlock::blocking::Client::cluster(&seeds)?;
    /// let guard = client.lock("billing")?.try_lock()?;
    /// guard.release()
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`crate::Client::cluster`]: [`Error::Config`] for bad URLs, [`Error::Unavailable`]
    /// when no seed answers, [`Error::Auth`] when the cluster refuses the credentials. Also
    /// [`Error::Config`] inside an async runtime; [`Error::Internal`] if the runtime cannot
    /// start.
    pub fn cluster<S: AsRef<str>>(seeds: &[S]) -> Result<Client> {
        Self::cluster_with(seeds, ClientOptions::default())
    }

    /// [`Client::cluster`] with explicit [`ClientOptions`], as
    /// [`crate::Client::cluster_with`].
    ///
    /// # Errors
    /// As [`Client::cluster`].
    pub fn cluster_with<S: AsRef<str>>(seeds: &[S], options: ClientOptions) -> Result<Client> {
        Self::start(crate::Client::cluster_with(seeds, options))
    }

    /// Connects to N independent Redis masters (N odd, at least 3) for Redlock, as
    /// [`crate::Client::redlock`]: every lock, renewal and release needs a majority of them.
    /// Masters that cannot be reached now are retried on every use and join when they are
    /// back, as long as a majority answers now.
    ///
    /// ```
    /// # fn main() -> Result<(), dlock::Error> {
    /// # let servers = dlock_test::RedisServers::start(3);
    /// let masters = [
    ///     "redis://redis-a:6379/",
    ///     "redis://redis-b:6379/",
    ///     "redis://redis-c:6379/",
    /// ];
    /// # let masters = servers.urls();
    /// let client = dlock::blocking::Client::redlock(&masters)?;
    /// assert_eq!(client.masters(), 3);
    /// let guard = client.lock("billing")?.try_lock()?;
    /// guard.release()
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`crate::Client::redlock`]: [`Error::Config`] for a bad URL or an even or too small
    /// N, [`Error::Auth`] when a master refuses the credentials, [`Error::Unavailable`] naming
    /// every unreachable master when fewer than a majority answer. Also [`Error::Config`]
    /// inside an async runtime; [`Error::Internal`] if the runtime cannot start.
    pub fn redlock<S: AsRef<str>>(urls: &[S]) -> Result<Client> {
        Self::redlock_with(urls, ClientOptions::default())
    }

    /// [`Client::redlock`] with explicit [`ClientOptions`], as
    /// [`crate::Client::redlock_with`]; the command timeout is the per-node timeout, so keep
    /// it small against the TTL.
    ///
    /// # Errors
    /// As [`Client::redlock`].
    pub fn redlock_with<S: AsRef<str>>(urls: &[S], options: ClientOptions) -> Result<Client> {
        Self::start(crate::Client::redlock_with(urls, options))
    }

    /// Starts the client's runtime and runs `connect` on it. Nothing of `connect` runs before
    /// the async-runtime check (an async fn's future does nothing until polled).
    fn start(connect: impl Future<Output = Result<crate::Client>>) -> Result<Client> {
        outside_async()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("dlock-blocking")
            .enable_all()
            .build()
            .map_err(|e| Error::Internal(format!("cannot start dlock's runtime: {e}")))?;
        let client = runtime.block_on(connect)?;
        Ok(Client {
            shared: Arc::new(Shared {
                runtime: Some(runtime),
                client,
            }),
        })
    }

    /// A lock with default options, as [`crate::Client::lock`].
    ///
    /// # Errors
    /// As [`crate::Client::lock`].
    pub fn lock(&self, name: &str) -> Result<Lock> {
        self.lock_with(name, LockOptions::default())
    }

    /// A lock with `options`, as [`crate::Client::lock_with`].
    ///
    /// # Errors
    /// As [`crate::Client::lock_with`].
    pub fn lock_with(&self, name: &str, options: LockOptions) -> Result<Lock> {
        Ok(Lock {
            inner: self.shared.client.lock_with(name, options)?,
            shared: self.shared.clone(),
        })
    }

    /// A reentrant lock with default options, as [`crate::Client::reentrant_lock`]: an
    /// [`Owner`] may take it again while holding it.
    ///
    /// # Errors
    /// As [`crate::Client::reentrant_lock`].
    pub fn reentrant_lock(&self, name: &str) -> Result<ReentrantLock> {
        self.reentrant_lock_with(name, LockOptions::default())
    }

    /// A reentrant lock with `options`, as [`crate::Client::reentrant_lock_with`].
    ///
    /// # Errors
    /// As [`crate::Client::reentrant_lock_with`].
    pub fn reentrant_lock_with(&self, name: &str, options: LockOptions) -> Result<ReentrantLock> {
        Ok(ReentrantLock {
            inner: self.shared.client.reentrant_lock_with(name, options)?,
            shared: self.shared.clone(),
        })
    }

    /// A lock's state, as [`crate::Client::status`].
    ///
    /// # Errors
    /// As [`crate::Client::status`].
    pub fn status(&self, name: &str) -> Result<LockStatus> {
        self.shared.block_on(self.shared.client.status(name))?
    }

    /// Breaks a lock whoever holds it (an operator's tool for a stale lock) and returns what
    /// it broke, as [`crate::Client::force_release`]. The holder, if alive, learns of the loss
    /// at its next renewal.
    ///
    /// ```
    /// # fn main() -> Result<(), dlock::Error> {
    /// # let server = dlock_test::RedisServer::start();
    /// # let client = dlock::blocking::Client::connect(&server.url())?;
    /// let guard = client.lock("stuck")?.try_lock()?;
    /// let broken = client.force_release("stuck")?;
    /// assert!(broken.held);
    /// assert!(guard.release().unwrap_err().is_lost());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`crate::Client::force_release`].
    pub fn force_release(&self, name: &str) -> Result<LockStatus> {
        self.shared
            .block_on(self.shared.client.force_release(name))?
    }

    /// Every lock held right now through dlock whose name matches `pattern` (a Redis glob),
    /// sorted by name, as [`crate::Client::list`] (a `SCAN`, safe on a busy server).
    ///
    /// # Errors
    /// As [`crate::Client::list`].
    pub fn list(&self, pattern: &str) -> Result<Vec<LockStatus>> {
        self.shared.block_on(self.shared.client.list(pattern))?
    }

    /// Waits until the releases of guards dropped so far have been sent to Redis, as
    /// [`crate::Client::flush`]. Dropping the last handle of a client does this too (for at
    /// most 2 s); call it to be sure earlier, e.g. before another process must find the lock
    /// free.
    ///
    /// # Errors
    /// [`Error::Config`] inside an async runtime.
    pub fn flush(&self) -> Result<()> {
        self.shared.block_on(self.shared.client.flush())
    }

    /// How many leases this client holds right now, as [`crate::Client::held_locks`].
    pub fn held_locks(&self) -> usize {
        self.shared.client.held_locks()
    }

    /// How many Redis masters this client locks on (1, or N for Redlock), as
    /// [`crate::Client::masters`].
    pub fn masters(&self) -> usize {
        self.shared.client.masters()
    }

    /// The server's URL without its password (the first master's, for Redlock), as
    /// [`crate::Client::server`].
    pub fn server(&self) -> &str {
        self.shared.client.server()
    }
}

/// A blocking lock: see [`crate::Lock`].
#[derive(Debug, Clone)]
pub struct Lock {
    inner: crate::Lock,
    shared: Arc<Shared>,
}

impl Lock {
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
    /// [`Error::Config`] inside an async runtime.
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
    /// [`Error::Config`] inside an async runtime.
    pub fn lost_timeout(&self, timeout: Duration) -> Result<Option<LossReason>> {
        // `timeout` starts its timer when called, so it must be called on the runtime.
        let lost = async { tokio::time::timeout(timeout, self.guard().lost()).await };
        self.shared.block_on(lost).map(std::result::Result::ok)
    }

    /// Waits up to `timeout` for the moment to wind down, as
    /// [`crate::LockGuard::renewal_at_risk`]: `true` once renewals are failing and at most
    /// `margin` of the lease's conservative validity is left, or once the lease is no longer
    /// held; `false` if neither happened within `timeout` (renewals succeeding never count).
    ///
    /// # Errors
    /// [`Error::Config`] inside an async runtime.
    pub fn renewal_at_risk_timeout(&self, margin: Duration, timeout: Duration) -> Result<bool> {
        let at_risk =
            async { tokio::time::timeout(timeout, self.guard().renewal_at_risk(margin)).await };
        self.shared.block_on(at_risk).map(|at_risk| at_risk.is_ok())
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
    /// As [`crate::LockGuard::release_after`]; [`Error::Config`] inside an async runtime.
    pub fn release_after(mut self, keep: Duration) -> Result<()> {
        let guard = self
            .inner
            .take()
            .unwrap_or_else(|| unreachable!("release_after consumes the guard"));
        self.shared.block_on(guard.release_after(keep))?
    }
}

/// A blocking reentrant lock: see [`crate::ReentrantLock`]. Made by
/// [`Client::reentrant_lock`].
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
    /// The lock's name, as [`crate::ReentrantLock::name`].
    pub fn name(&self) -> &str {
        self.inner.name()
    }

    /// Takes the lock for `owner` if it is free or already `owner`'s; fails at once
    /// otherwise. As [`crate::ReentrantLock::try_lock`].
    ///
    /// # Errors
    /// As [`crate::ReentrantLock::try_lock`]; [`Error::Config`] inside an async runtime.
    pub fn try_lock(&self, owner: &Owner) -> Result<ReentrantGuard> {
        let guard = self.shared.block_on(self.inner.try_lock(owner))??;
        Ok(ReentrantGuard::wrap(guard, &self.shared))
    }

    /// Takes the lock for `owner`, waiting while another owner holds it (within the wait
    /// limit of the lock's options), as [`crate::ReentrantLock::lock`].
    ///
    /// # Errors
    /// As [`crate::ReentrantLock::lock`]; [`Error::Config`] inside an async runtime.
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

    /// Blocks the calling thread until the shared lease is lost, and returns why, as
    /// [`crate::ReentrantGuard::lost`]. **While the lease is held it never returns**; see
    /// [`ReentrantGuard::lost_timeout`] for the bounded wait.
    ///
    /// # Errors
    /// [`Error::Config`] inside an async runtime.
    pub fn lost(&self) -> Result<LossReason> {
        self.shared.block_on(self.guard().lost())
    }

    /// Waits up to `timeout` for the shared lease to be lost: `Some(reason)` as soon as it is
    /// (at once if it already was), `None` if it was still held when `timeout` passed. As
    /// [`LockGuard::lost_timeout`].
    ///
    /// # Errors
    /// [`Error::Config`] inside an async runtime.
    pub fn lost_timeout(&self, timeout: Duration) -> Result<Option<LossReason>> {
        let lost = async { tokio::time::timeout(timeout, self.guard().lost()).await };
        self.shared.block_on(lost).map(std::result::Result::ok)
    }

    /// Takes another hold for the same owner (one round trip; never waits), as
    /// [`crate::ReentrantGuard::reenter`].
    ///
    /// # Errors
    /// As [`crate::ReentrantGuard::reenter`]; [`Error::Config`] inside an async runtime.
    pub fn reenter(&self) -> Result<ReentrantGuard> {
        let guard = self.shared.block_on(self.guard().reenter())??;
        Ok(ReentrantGuard::wrap(guard, &self.shared))
    }

    /// Sets the shared lease to `ttl` from now, as [`crate::ReentrantGuard::extend`].
    ///
    /// # Errors
    /// As [`crate::ReentrantGuard::extend`]; [`Error::Config`] inside an async runtime.
    pub fn extend(&self, ttl: Duration) -> Result<()> {
        self.shared.block_on(self.guard().extend(ttl))?
    }

    /// Releases this hold (one round trip); the lock is freed if it was the last. As
    /// [`crate::ReentrantGuard::release`].
    ///
    /// # Errors
    /// As [`crate::ReentrantGuard::release`]; [`Error::Config`] inside an async runtime (the
    /// hold is then released in the background).
    pub fn release(mut self) -> Result<()> {
        let guard = self
            .inner
            .take()
            .unwrap_or_else(|| unreachable!("release consumes the guard"));
        self.shared.block_on(guard.release())?
    }
}
