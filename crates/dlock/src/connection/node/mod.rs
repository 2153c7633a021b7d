//! One Redis server as dlock talks to it: a shared, auto-reconnecting, multiplexed connection
//! (redis-rs [`ConnectionManager`]) whose every call has a deadline.
//!
//! All locks of a client share the node's one connection, so a thousand locks cost one socket.
//! A node is named by its URL with the password removed (`redact`); that name is what errors
//! show. The same node type also stands for a master found through Sentinel, which it follows
//! across failovers (`sentinel`), and for a Redis Cluster, whose connection routes every call
//! to the master of its key's slot (`cluster`).

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, ScriptInvocation};

use crate::error::{Error, Result};
use crate::options::ClientOptions;
use crate::units::humanize;

mod cluster;
mod redact;
mod replica;
mod sentinel;

pub(crate) use cluster::SlotMap;
pub use redact::redact_url;
use redact::{scrub, scrub_error};
pub(crate) use replica::ReplicaLink;
pub use sentinel::SentinelConfig;
use sentinel::SentinelSource;

/// How often the connection manager retries a failed (re)connect before reporting the failure:
/// never. Every caller has its own retry policy and deadline, and a retry here made every call
/// to a refused Redlock master wait out the retries' backoff, and every connect to a frozen one
/// pay the connect timeout once per retry. (A cluster's client has its own count, to follow
/// redirects: see `cluster`.)
const RECONNECT_RETRIES: usize = 0;

/// A connected Redis server.
#[derive(Clone)]
pub(crate) struct Node {
    /// The current connection: fixed for a plain URL, swapped for the newly promoted master
    /// after a Sentinel failover.
    current: Arc<RwLock<Current>>,
    /// Set for a master found through Sentinel.
    sentinel: Option<Arc<SentinelSource>>,
    name: Arc<str>,
    command_timeout: Duration,
    options: ClientOptions,
}

#[derive(Clone)]
struct Current {
    con: Conn,
    /// A plain client of the server (for a cluster, of the first seed node), for dedicated
    /// connections such as pub/sub: cluster nodes relay every PUBLISH to all nodes.
    client: redis::Client,
    /// Connections of their own for the replica guard (see `replica`), to this server (on a
    /// cluster, to its masters).
    links: replica::Links,
}

/// The connection calls go through.
#[derive(Clone)]
enum Conn {
    /// One server: multiplexed and auto-reconnecting.
    Single(ConnectionManager),
    /// Redis Cluster: routes each call to the master of its key's slot, follows MOVED/ASK
    /// and topology changes.
    Cluster(redis::cluster_async::ClusterConnection),
}

/// Delegation, so every call works on either connection.
impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(con) => con.req_packed_command(cmd),
            Conn::Cluster(con) => con.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(con) => con.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(con) => con.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(con) => con.get_db(),
            Conn::Cluster(con) => con.get_db(),
        }
    }
}

impl Node {
    fn fixed(
        con: ConnectionManager,
        client: redis::Client,
        name: Arc<str>,
        options: &ClientOptions,
    ) -> Node {
        Node {
            current: Arc::new(RwLock::new(Current {
                con: Conn::Single(con),
                client,
                links: Default::default(),
            })),
            sentinel: None,
            name,
            command_timeout: options.command_timeout,
            options: options.clone(),
        }
    }

    fn con(&self) -> Conn {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .con
            .clone()
    }

    /// Whether this node is a master found through Sentinel (it may move in a failover).
    pub fn is_sentinel(&self) -> bool {
        self.sentinel.is_some()
    }

    /// Whether this node is a Redis Cluster (multi-key scripts must then stay in one slot).
    pub fn is_cluster(&self) -> bool {
        matches!(self.con(), Conn::Cluster(_))
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Opens the connection to `url` (and authenticates, if it names credentials).
    ///
    /// # Errors
    /// [`Error::Config`] for a URL that does not parse, [`Error::Auth`] for refused
    /// credentials, [`Error::Unavailable`] when the server cannot be reached in time.
    pub async fn connect(url: &str, options: &ClientOptions) -> Result<Node> {
        options.validate()?;
        let (client, name) = open_client(url, options)?;
        let config = manager_config(options);
        // One attempt (no retries), bounded by the connect timeout as a whole.
        let limit = options.connect_timeout;
        let connecting = ConnectionManager::new_with_config(client.clone(), config);
        let con = match tokio::time::timeout(limit, connecting).await {
            Ok(Ok(con)) => con,
            Ok(Err(e)) => return Err(scrub_error(Error::from_redis(&name, e), url)),
            Err(_) => {
                return Err(Error::Unavailable {
                    node: name.to_string(),
                    reason: format!("could not connect within {}", humanize(limit)),
                })
            }
        };
        // No PING: the connection is open and any credentials given were accepted by the
        // handshake. A server that requires a password nobody gave refuses the first command
        // (NOAUTH), which is an `Error::Auth` there; a round trip at every connect (it was
        // most of a `dlock run`'s Redis time) is too much to pay for moving that error.
        Ok(Node::fixed(con, client, name, options))
    }

    /// A node whose connection is opened on first use (and retried on every use after), for a
    /// Redlock master that is down when the client starts: it joins the quorum when it is back.
    ///
    /// # Errors
    /// [`Error::Config`] for a URL that does not parse.
    pub fn lazy(url: &str, options: &ClientOptions) -> Result<Node> {
        let (client, name) = open_client(url, options)?;
        let con = ConnectionManager::new_lazy_with_config(client.clone(), manager_config(options))
            .map_err(|e| Error::from_redis(&name, e))?;
        Ok(Node::fixed(con, client, name, options))
    }

    /// The node's URL without its password.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The driver's client of the current server, for dedicated connections (pub/sub).
    pub fn redis_client(&self) -> redis::Client {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .client
            .clone()
    }

    /// The per-command timeout.
    pub fn command_timeout(&self) -> Duration {
        self.command_timeout
    }

    /// The timeout for opening a connection.
    pub fn connect_timeout(&self) -> Duration {
        self.options.connect_timeout
    }

    /// `PING`, within the command timeout.
    pub async fn ping(&self) -> Result<()> {
        let mut con = self.con();
        let reply: String = self
            .deadline(
                self.command_timeout,
                redis::cmd("PING").query_async(&mut con),
            )
            .await?;
        debug_assert_eq!(reply, "PONG");
        Ok(())
    }

    /// Runs one command within the command timeout.
    pub async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T> {
        self.query_within(cmd, self.command_timeout).await
    }

    /// Runs one command within `timeout`.
    pub async fn query_within<T: FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        timeout: Duration,
    ) -> Result<T> {
        let mut con = self.con();
        self.deadline(timeout, cmd.query_async(&mut con)).await
    }

    /// Runs a script (EVALSHA, loading it on NOSCRIPT) within `timeout`.
    pub async fn eval<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
        timeout: Duration,
    ) -> Result<T> {
        let mut con = self.con();
        self.deadline(timeout, invocation.invoke_async(&mut con))
            .await
    }

    async fn deadline<T>(
        &self,
        timeout: Duration,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        // At least a millisecond: a zero deadline would fail calls that could have succeeded.
        let timeout = timeout.max(Duration::from_millis(1));
        let outcome = tokio::time::timeout(timeout, call).await;
        self.settle(&self.name, outcome, timeout)
    }

    /// The outcome of a call to server `name` bounded by `timeout`, as dlock's result; an
    /// unavailable server makes a Sentinel-found node look for the current master.
    fn settle<T>(
        &self,
        name: &str,
        outcome: std::result::Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
        timeout: Duration,
    ) -> Result<T> {
        let outcome = match outcome {
            Ok(reply) => reply.map_err(|e| Error::from_redis(name, e)),
            Err(_) => Err(Error::Unavailable {
                node: name.to_owned(),
                reason: format!("no reply within {}", humanize(timeout)),
            }),
        };
        if outcome.as_ref().is_err_and(Error::is_unavailable) {
            self.follow_failover();
        }
        outcome
    }
}

/// Parses `url` into a driver client (trusting the options' TLS root certificate, if any),
/// and names it for messages (without its password).
fn open_client(url: &str, options: &ClientOptions) -> Result<(redis::Client, Arc<str>)> {
    let name: Arc<str> = redact_url(url).into();
    let bad = |e: redis::RedisError| {
        Error::Config(format!(
            "bad Redis URL {name}: {}",
            scrub(&e.to_string(), url)
        ))
    };
    let client = match &options.tls_root_cert {
        Some(pem) => {
            if !(url.starts_with("rediss://") || url.starts_with("valkeys://")) {
                return Err(Error::Config(format!(
                    "a TLS root certificate was given, but {name} is not a rediss:// (or \
                     valkeys://) URL"
                )));
            }
            let certificates = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.to_vec()),
            };
            redis::Client::build_with_tls(url, certificates).map_err(bad)?
        }
        None => redis::Client::open(url).map_err(bad)?,
    };
    Ok((client, name))
}

fn manager_config(options: &ClientOptions) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(options.connect_timeout))
        .set_response_timeout(Some(options.command_timeout))
        .set_number_of_retries(RECONNECT_RETRIES)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(1))
}
