//! [`Client`]: a connection to Redis shared by every lock made from it.
//!
//! One client holds one multiplexed, auto-reconnecting connection and one watchdog task.
//! Clone it freely (it is a handle); every clone, lock and guard shares both.

use std::sync::Arc;

use crate::connection::node::{Node, SentinelConfig};
use crate::connection::quorum::{check_redlock_size, quorum_error, Nodes};
use crate::engine::Core;
use crate::error::Result;
use crate::holder::LockStatus;
use crate::key::LockKeys;
use crate::options::{ClientOptions, LockOptions};
use crate::primitive::lock::{inspect, Lock};
use crate::primitive::multi::MultiLock;
use crate::primitive::reentrant::ReentrantLock;
use crate::primitive::rwlock::RwLock;
use crate::primitive::semaphore::{self, Semaphore, SemaphoreStatus};

/// A connection to one Redis server, shared by every lock made from it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), dlock::Error> {
/// # let server = dlock_test::RedisServer::start();
/// let url = "redis://127.0.0.1:6379/";
/// # let url = &server.url();
/// let client = dlock::Client::connect(url).await?;
/// let lock = client.lock("reports:nightly")?;
/// let guard = lock.try_lock().await?;
/// println!("fencing token {}", guard.fencing_token());
/// guard.release().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    core: Arc<Core>,
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
    /// within the connect timeout. Messages never contain the password. A URL without a
    /// password for a server that requires one connects (no command is sent at connect, to
    /// save a round trip), and the first call answers [`Error::Auth`](crate::Error::Auth).
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
        Ok(Self::from_nodes(Nodes::single(node), &options))
    }

    /// Connects to the master of a Sentinel-monitored group, and follows failovers: when a
    /// call fails, the client asks the sentinels again and switches to the master they name.
    /// Combine with [`LockOptions::min_replicas`](crate::LockOptions::min_replicas) to narrow
    /// the window in which a failover loses a lock.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) for bad sentinel URLs;
    /// [`Error::Unavailable`](crate::Error::Unavailable) when no sentinel names a reachable
    /// master; [`Error::Auth`](crate::Error::Auth) when the master refuses the credentials.
    pub async fn sentinel(config: SentinelConfig) -> Result<Client> {
        Self::sentinel_with(config, ClientOptions::default()).await
    }

    /// [`Client::sentinel`] with explicit [`ClientOptions`].
    ///
    /// # Errors
    /// As [`Client::sentinel`].
    pub async fn sentinel_with(config: SentinelConfig, options: ClientOptions) -> Result<Client> {
        let node = Node::sentinel(&config, &options).await?;
        Ok(Self::from_nodes(Nodes::single(node), &options))
    }

    /// Connects to a Redis Cluster through `seeds` (any of its nodes). Every lock's keys share
    /// one hash slot, so each lock operation goes to the master of that slot; renewals of many
    /// locks are batched per slot.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) for bad URLs;
    /// [`Error::Unavailable`](crate::Error::Unavailable) when no seed answers;
    /// [`Error::Auth`](crate::Error::Auth) when the cluster refuses the credentials.
    pub async fn cluster<S: AsRef<str>>(seeds: &[S]) -> Result<Client> {
        Self::cluster_with(seeds, ClientOptions::default()).await
    }

    /// [`Client::cluster`] with explicit [`ClientOptions`].
    ///
    /// # Errors
    /// As [`Client::cluster`].
    pub async fn cluster_with<S: AsRef<str>>(
        seeds: &[S],
        options: ClientOptions,
    ) -> Result<Client> {
        let node = Node::cluster(seeds, &options).await?;
        Ok(Self::from_nodes(Nodes::single(node), &options))
    }

    /// Connects to N independent Redis masters (N odd, at least 3) for Redlock: every lock,
    /// renewal and release needs a majority of them. Masters that cannot be reached now are
    /// retried on every use and join when they are back, as long as a majority answers now.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) for a bad URL or an even or too small N;
    /// [`Error::Auth`](crate::Error::Auth) when a master refuses the credentials;
    /// [`Error::Quorum`](crate::Error::Quorum) (kind `Unavailable`) naming every unreachable
    /// master, with its own error, when
    /// fewer than a majority answer.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), dlock::Error> {
    /// # let servers = dlock_test::RedisServers::start(3);
    /// let masters = [
    ///     "redis://redis-a:6379/",
    ///     "redis://redis-b:6379/",
    ///     "redis://redis-c:6379/",
    /// ];
    /// # let masters = servers.urls();
    /// let client = dlock::Client::redlock(&masters).await?;
    /// let guard = client.lock("billing")?.try_lock().await?;
    /// guard.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn redlock<S: AsRef<str>>(urls: &[S]) -> Result<Client> {
        Self::redlock_with(urls, ClientOptions::default()).await
    }

    /// [`Client::redlock`] with explicit [`ClientOptions`]; the command timeout is the
    /// per-node timeout, so keep it small against the TTL.
    ///
    /// # Errors
    /// As [`Client::redlock`].
    pub async fn redlock_with<S: AsRef<str>>(urls: &[S], options: ClientOptions) -> Result<Client> {
        options.validate()?;
        check_redlock_size(urls.len())?;
        // Each master answers a PING (all at once: one round trip): a master that requires a
        // password its URL lacks accepts the connection and refuses only its first command,
        // and without this a quorum of the others would hide it for good, leaving a
        // deployment one failure short of what it was built to survive.
        let attempts = futures_util::future::join_all(urls.iter().map(|url| async {
            let node = Node::connect(url.as_ref(), &options).await?;
            node.ping().await?;
            Ok::<_, crate::Error>(node)
        }))
        .await;
        let mut nodes = Vec::with_capacity(urls.len());
        let mut failures = Vec::new();
        for (index, (url, attempt)) in urls.iter().zip(attempts).enumerate() {
            match attempt {
                Ok(node) => nodes.push(node),
                Err(e) if e.is_unavailable() => {
                    failures.push((index, e));
                    nodes.push(Node::lazy(url.as_ref(), &options)?);
                }
                Err(e) => return Err(e),
            }
        }
        let nodes = Nodes::redlock(nodes)?;
        if nodes.len() - failures.len() < nodes.quorum() {
            return Err(quorum_error(&nodes, nodes.quorum(), "connecting", failures));
        }
        Ok(Self::from_nodes(nodes, &options))
    }

    fn from_nodes(nodes: Nodes, options: &ClientOptions) -> Client {
        Client {
            core: Core::start(nodes, options),
        }
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
        self.check_options(&options)?;
        let keys = LockKeys::new(name)?;
        Ok(Lock::new(self.core.clone(), keys, options))
    }

    /// Validates options and refuses those this deployment cannot honour.
    fn check_options(&self, options: &LockOptions) -> Result<()> {
        options.validate()?;
        if options.fair && !self.core.nodes().is_single() {
            // Not a missing feature: the algorithm does not allow it.
            return Err(crate::Error::Config(
                "fair mode is not available with Redlock: it needs one ordered wait queue, and \
                 independent masters may order waiters differently, with no master able to \
                 speak for the others"
                    .into(),
            ));
        }
        if options.min_replicas.is_some() && !self.core.nodes().is_single() {
            // Not a missing feature: Redlock's masters are independent, and its safety comes
            // from a majority of them, not from replicas.
            return Err(crate::Error::Config(
                "replica guards are not available with Redlock: its masters are meant to run \
                 without replicas, and a majority of them, not a replica, keeps a lock"
                    .into(),
            ));
        }
        Ok(())
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

    /// A multi-key lock over `names` with default options: all of them or none. See
    /// [`MultiLock`].
    ///
    /// # Errors
    /// As [`Client::multi_lock_with`].
    pub fn multi_lock<S: AsRef<str>>(&self, names: &[S]) -> Result<MultiLock> {
        self.multi_lock_with(names, LockOptions::default())
    }

    /// A multi-key lock over `names` with `options`, which apply to every member.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) for an invalid name, no name, more than
    /// [`MAX_MEMBERS`](crate::MAX_MEMBERS), a name given twice, or fair mode; as
    /// [`Client::lock_with`] for the options.
    pub fn multi_lock_with<S: AsRef<str>>(
        &self,
        names: &[S],
        options: LockOptions,
    ) -> Result<MultiLock> {
        if options.fair {
            return Err(crate::Error::Config(
                "multi-key locks have no fair mode: a waiting multi-key lock holds nothing and \
                 queues nowhere"
                    .into(),
            ));
        }
        let members = names
            .iter()
            .map(|name| self.lock_with(name.as_ref(), options.clone().handoff(false)))
            .collect::<Result<Vec<_>>>()?;
        MultiLock::new(self.core.clone(), members, options)
    }

    /// A read-write lock named `name` with default options: many readers or one writer, and
    /// no writer starvation. See [`RwLock`].
    ///
    /// # Errors
    /// As [`Client::rw_lock_with`].
    pub fn rw_lock(&self, name: &str) -> Result<RwLock> {
        self.rw_lock_with(name, LockOptions::default())
    }

    /// A read-write lock named `name` with `options`, which mean for each read or write hold
    /// what they mean for a lock; in fair mode readers and writers are served in arrival order.
    ///
    /// # Errors
    /// As [`Client::lock_with`] (fair mode is refused on Redlock, as for a lock).
    pub fn rw_lock_with(&self, name: &str, options: LockOptions) -> Result<RwLock> {
        self.check_options(&options)?;
        Ok(RwLock::new(
            self.core.clone(),
            LockKeys::new(name)?,
            options,
        ))
    }

    /// A counting semaphore named `name` with `permits` permits and default options (30 s
    /// leases, renewed; waits of at most 30 s). See [`Semaphore`].
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) for an invalid name or a zero limit.
    pub fn semaphore(&self, name: &str, permits: u32) -> Result<Semaphore> {
        self.semaphore_with(name, permits, LockOptions::default())
    }

    /// A counting semaphore with `options` (TTL, renewal, wait limit, fair mode, label, replica
    /// guard), which mean for each permit what they mean for a lock.
    ///
    /// # Errors
    /// As [`Client::lock_with`], and [`Error::Config`](crate::Error::Config) for a zero limit.
    pub fn semaphore_with(
        &self,
        name: &str,
        permits: u32,
        options: LockOptions,
    ) -> Result<Semaphore> {
        self.check_options(&options)?;
        Semaphore::new(self.core.clone(), LockKeys::new(name)?, permits, options)
    }

    /// Reads a semaphore's state (stored limit, holders, permits free) without knowing its
    /// limit. One round trip.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) for an invalid name; connection errors.
    pub async fn semaphore_status(&self, name: &str) -> Result<SemaphoreStatus> {
        let keys = LockKeys::new(name)?;
        semaphore::inspect::read(&self.core, &keys, semaphore::inspect::Break::None).await
    }

    /// Frees a semaphore's permits whoever holds them (an operator's tool for stale holders):
    /// every holder's, or with `holder` only the grant with that fencing token (as
    /// [`Client::semaphore_status`] shows it). Returns the state before, with how many holders
    /// were freed. A freed holder, if alive, learns of the loss at its next renewal.
    ///
    /// # Errors
    /// As [`Client::semaphore_status`]; [`Error::Config`](crate::Error::Config) for a zero
    /// fencing token.
    pub async fn force_release_permits(
        &self,
        name: &str,
        holder: Option<u64>,
    ) -> Result<SemaphoreStatus> {
        let keys = LockKeys::new(name)?;
        let action = match holder {
            None => semaphore::inspect::Break::All,
            Some(fence) => semaphore::inspect::Break::One(semaphore::inspect::holder_fence(fence)?),
        };
        semaphore::inspect::read(&self.core, &keys, action).await
    }

    /// Every semaphore with a stored limit (held or waited for, or freed by a forced release
    /// and not touched since) whose name matches `pattern` (a Redis glob), sorted by name. Walks the keyspace with `SCAN`, as [`Client::list`] does.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn list_semaphores(&self, pattern: &str) -> Result<Vec<SemaphoreStatus>> {
        semaphore::inspect::list(&self.core, pattern).await
    }

    /// Reads a lock's state: held or free, time left, holder, last fencing token. One round
    /// trip, one consistent snapshot.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) for an invalid name; connection errors.
    pub async fn status(&self, name: &str) -> Result<LockStatus> {
        inspect::inspect(&self.core, &LockKeys::new(name)?, false).await
    }

    /// Breaks a lock whoever holds it (an operator's tool for a stale lock), and returns what
    /// it broke. The holder, if alive, learns of the loss at its next renewal.
    ///
    /// # Errors
    /// As [`Client::status`].
    pub async fn force_release(&self, name: &str) -> Result<LockStatus> {
        inspect::inspect(&self.core, &LockKeys::new(name)?, true).await
    }

    /// Every lock held right now through dlock whose name matches `pattern` (a Redis glob:
    /// `*`, `?`, `[abc]`), sorted by name. Walks the keyspace with `SCAN` (never `KEYS`, which
    /// would block the server), so it is safe on a busy production Redis. Locks taken by other
    /// tools carry no holder info and are not listed.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn list(&self, pattern: &str) -> Result<Vec<LockStatus>> {
        inspect::list(&self.core, pattern).await
    }

    /// How many leases this client holds right now (granted, not yet released or lost).
    pub fn held_locks(&self) -> usize {
        self.core.held()
    }

    /// Waits until the releases of guards dropped so far, and the withdrawals of waiters that
    /// gave up, have been sent to Redis. Call it
    /// before a program exits if guards may have been dropped without `release()`.
    ///
    /// It never waits for a wake-up subscription's linger, nor for a pub/sub connection that
    /// is down to come back: a subscription left lingering costs the exit nothing.
    pub async fn flush(&self) {
        self.core.flush().await;
    }

    /// The server's URL, without its password (the first master's, for Redlock).
    pub fn server(&self) -> &str {
        self.core.nodes().first().name()
    }

    /// How many Redis masters this client locks on (1, or N for Redlock).
    pub fn masters(&self) -> usize {
        self.core.nodes().len()
    }

    /// The node of a single-node client (the first master of a Redlock client).
    pub(crate) fn node(&self) -> &Node {
        self.core.nodes().first()
    }

    /// Refuses a feature that works on one Redis only.
    pub(crate) fn single_node_only(&self, feature: &str) -> Result<()> {
        self.core.single_node_only(feature)
    }
}
