//! [`Client`]: a connection to Redis shared by every lock made from it.
//!
//! One client holds one multiplexed, auto-reconnecting connection and one watchdog task.
//! Clone it freely (it is a handle); every clone, lock and guard shares both.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::error::Result;
use crate::holder::{int, pttl, HolderInfo, LockStatus};
use crate::key::{info_scan_pattern, LockKeys};
use crate::lock::Lock;
use crate::node::Node;
use crate::notify::Notifier;
use crate::options::{ClientOptions, LockOptions};
use crate::reentrant::ReentrantLock;
use crate::scripts;
use crate::watchdog::Watchdog;

/// Keys asked for per `SCAN` step: large enough to walk a big keyspace in few round trips,
/// small enough that no step blocks Redis noticeably.
const SCAN_COUNT: u32 = 1000;

/// A connection to one Redis server, shared by every lock made from it.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), dlock::Error> {
/// let client = dlock::Client::connect("redis://127.0.0.1:6379/").await?;
/// let lock = client.lock("reports:nightly")?;
/// let guard = lock.try_lock().await?;
/// println!("fencing token {}", guard.fencing_token());
/// guard.release().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    node: Node,
    watchdog: Watchdog,
    notifier: Notifier,
    held: Arc<AtomicUsize>,
    identity: Identity,
}

/// What a lock records about its holder beyond the label: who we are.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub host: String,
    pub pid: u32,
}

impl Client {
    /// Connects to one Redis server with default [`ClientOptions`].
    ///
    /// Accepted URLs: `redis://[[user]:password@]host[:port][/db]`, `rediss://…` (TLS), and
    /// `unix:///path/to/socket[?db=N&user=U&pass=P]`.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) for a malformed URL,
    /// [`Error::Auth`](crate::Error::Auth) for refused credentials,
    /// [`Error::Unavailable`](crate::Error::Unavailable) when the server cannot be reached
    /// within the connect timeout. Messages never contain the password.
    ///
    /// # Panics
    /// Outside a tokio runtime (the watchdog task needs one).
    pub async fn connect(url: &str) -> Result<Client> {
        Self::connect_with(url, ClientOptions::default()).await
    }

    /// Connects with explicit [`ClientOptions`] (timeouts).
    ///
    /// # Errors
    /// As [`Client::connect`], and [`Error::Config`](crate::Error::Config) for invalid options.
    pub async fn connect_with(url: &str, options: ClientOptions) -> Result<Client> {
        let node = Node::connect(url, &options).await?;
        let watchdog = Watchdog::spawn(node.clone());
        let notifier = Notifier::spawn(
            node.redis_client().clone(),
            options.connect_timeout,
            options.subscription_linger,
        );
        Ok(Client {
            inner: Arc::new(Inner {
                node,
                watchdog,
                notifier,
                held: Arc::new(AtomicUsize::new(0)),
                identity: Identity {
                    host: gethostname::gethostname().to_string_lossy().into_owned(),
                    pid: std::process::id(),
                },
            }),
        })
    }

    /// A lock named `name` with default [`LockOptions`] (30 s lease, renewed; waits of at
    /// most 30 s).
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) for an invalid name (empty, longer than
    /// [`MAX_NAME_LEN`](crate::MAX_NAME_LEN), or with a stray `}`).
    pub fn lock(&self, name: &str) -> Result<Lock> {
        self.lock_with(name, LockOptions::default())
    }

    /// A lock named `name` with `options`.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) for an invalid name or options (e.g. a TTL
    /// outside [`MIN_TTL`](crate::MIN_TTL)..=[`MAX_TTL`](crate::MAX_TTL)).
    pub fn lock_with(&self, name: &str, options: LockOptions) -> Result<Lock> {
        options.validate()?;
        let keys = LockKeys::new(name)?;
        Ok(Lock::new(self.clone(), keys, options))
    }

    /// A reentrant lock named `name` with default options: an [`Owner`](crate::Owner) may
    /// take it again while holding it.
    ///
    /// # Errors
    /// As [`Client::lock`].
    pub fn reentrant_lock(&self, name: &str) -> Result<ReentrantLock> {
        self.reentrant_lock_with(name, LockOptions::default())
    }

    /// A reentrant lock named `name` with `options` (fair mode is not available).
    ///
    /// # Errors
    /// As [`Client::lock_with`], and [`Error::Config`](crate::Error::Config) for fair mode.
    pub fn reentrant_lock_with(&self, name: &str, options: LockOptions) -> Result<ReentrantLock> {
        ReentrantLock::new(self.lock_with(name, options)?)
    }

    /// Reads a lock's state: held or free, time left, holder, last fencing token. One round
    /// trip, one consistent snapshot.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) for an invalid name; connection errors.
    pub async fn status(&self, name: &str) -> Result<LockStatus> {
        self.inspect(name, false).await
    }

    /// Breaks a lock whoever holds it (an operator's tool for a stale lock), and returns what
    /// it broke. The holder, if alive, learns of the loss at its next renewal.
    ///
    /// # Errors
    /// As [`Client::status`].
    pub async fn force_release(&self, name: &str) -> Result<LockStatus> {
        self.inspect(name, true).await
    }

    /// Every lock held right now through dlock whose name matches `pattern` (a Redis glob:
    /// `*`, `?`, `[abc]`), sorted by name. Walks the keyspace with `SCAN` (never `KEYS`, which
    /// would block the server), so it is safe on a busy production Redis. Locks taken by other
    /// tools carry no holder info and are not listed.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn list(&self, pattern: &str) -> Result<Vec<LockStatus>> {
        let node = self.node();
        let pattern = info_scan_pattern(pattern);
        let mut names = BTreeSet::new();
        let mut cursor = 0u64;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT);
            let (next, keys): (u64, Vec<String>) = node.query(&scan).await?;
            names.extend(
                keys.iter()
                    .filter_map(|key| LockKeys::name_from_info_key(key))
                    .map(str::to_owned),
            );
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let mut held = Vec::with_capacity(names.len());
        for name in names {
            let status = self.status(&name).await?;
            // A lease may have ended between the scan and the read.
            if status.held {
                held.push(status);
            }
        }
        Ok(held)
    }

    /// How many leases this client holds right now (granted, not yet released or lost).
    pub fn held_locks(&self) -> usize {
        self.inner.held.load(Ordering::SeqCst)
    }

    /// Waits until the releases of guards dropped so far, and the withdrawals of waiters that
    /// gave up, have been sent to Redis. Call it
    /// before a program exits if guards may have been dropped without `release()`.
    pub async fn flush(&self) {
        self.inner.watchdog.flush().await;
        self.inner.notifier.flush().await;
    }

    /// The server's URL, without its password.
    pub fn server(&self) -> &str {
        self.inner.node.name()
    }

    pub(crate) fn node(&self) -> &Node {
        &self.inner.node
    }

    pub(crate) fn watchdog(&self) -> &Watchdog {
        &self.inner.watchdog
    }

    pub(crate) fn notifier(&self) -> &Notifier {
        &self.inner.notifier
    }

    pub(crate) fn held_counter(&self) -> &Arc<AtomicUsize> {
        &self.inner.held
    }

    pub(crate) fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    async fn inspect(&self, name: &str, break_it: bool) -> Result<LockStatus> {
        let keys = LockKeys::new(name)?;
        let mut call = scripts::INSPECT.prepare_invoke();
        call.key(&keys.lock)
            .key(&keys.info)
            .key(&keys.fence)
            .arg(if break_it { "break" } else { "read" });
        let node = self.node();
        let reply: Vec<redis::Value> = node.eval(&call, node.command_timeout()).await?;
        let field = |i: usize| reply.get(i).unwrap_or(&redis::Value::Nil);
        let held = int(field(0)) == Some(1);
        let server_now_ms = int(field(3))
            .and_then(|ms| u64::try_from(ms).ok())
            .unwrap_or(0);
        Ok(LockStatus {
            key: keys.lock,
            held,
            ttl_left: pttl(field(1)),
            holder: HolderInfo::parse(field(2), server_now_ms).filter(|_| held),
            last_fencing_token: int(field(4)).and_then(|t| u64::try_from(t).ok()),
        })
    }
}
