//! A blocking facade for synchronous programs: the same locks and semaphores, no `async` in
//! the caller.
//!
//! Each [`blocking::Client`](Client) owns a small tokio runtime (one worker thread) that runs
//! the connection and the watchdog, so leases are renewed while the caller's thread is busy or
//! asleep. Calls block the calling thread until Redis answers (within the usual timeouts).
//!
//! Every deployment of [`crate::Client`] has its connector here ([`Client::connect`],
//! [`Client::sentinel`], [`Client::cluster`], [`Client::redlock`]), and [`Lock`],
//! [`LockGuard`], [`MultiLock`], [`MultiGuard`], [`ReentrantLock`], [`ReentrantGuard`],
//! [`RwLock`], [`ReadGuard`], [`WriteGuard`], [`Semaphore`] and [`SemaphorePermit`] mirror
//! their async namesakes; where an async method is a future to `select!` on
//! ([`crate::LockGuard::lost`], [`crate::LockGuard::renewal_at_risk`]), the blocking one also
//! comes with a timeout ([`LockGuard::lost_timeout`], [`LockGuard::renewal_at_risk_timeout`]).
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
use crate::{ClientOptions, Error, LockOptions, LockStatus, Result, SentinelConfig};

mod guard;
mod lock;
mod multi;
mod reentrant;
mod rwlock;
mod semaphore;

pub use lock::{Lock, LockGuard};
pub use multi::{MultiGuard, MultiLock};
pub use reentrant::{ReentrantGuard, ReentrantLock};
pub use rwlock::{ReadGuard, RwLock, WriteGuard};
pub use semaphore::{Semaphore, SemaphorePermit};

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

    /// Runs `future` for at most `timeout`: `None` if it had not finished by then. A zero
    /// `timeout` polls it once.
    fn block_on_within<F: Future>(
        &self,
        timeout: Duration,
        future: F,
    ) -> Result<Option<F::Output>> {
        // `timeout` starts its timer when called, so it must be called on the runtime.
        let bounded = async { tokio::time::timeout(timeout, future).await.ok() };
        self.block_on(bounded)
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
        let lock = self.shared.client.lock_with(name, options)?;
        Ok(Lock::new(lock, &self.shared))
    }

    /// A reentrant lock with default options, as [`crate::Client::reentrant_lock`]: an
    /// [`Owner`](crate::Owner) may take it again while holding it.
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
        let lock = self.shared.client.reentrant_lock_with(name, options)?;
        Ok(ReentrantLock::new(lock, &self.shared))
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
