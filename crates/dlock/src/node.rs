//! One Redis server as dlock talks to it: a shared, auto-reconnecting, multiplexed connection
//! (redis-rs [`ConnectionManager`]) whose every call has a deadline.
//!
//! All locks of a client share the node's one connection, so a thousand locks cost one socket.
//! A node is named by its URL with the password removed; that name is what errors show.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, ScriptInvocation};

use crate::error::{humanize, Error, Result};
use crate::options::ClientOptions;

/// How often the connection manager retries a failed (re)connect before reporting the failure.
/// Few, because every caller has its own retry policy and deadline.
const RECONNECT_RETRIES: usize = 2;

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

/// How a Sentinel-backed node finds its master again after a failover.
struct SentinelSource {
    client: tokio::sync::Mutex<redis::sentinel::SentinelClient>,
    /// One re-resolution at a time; errors meanwhile do not start another.
    resolving: AtomicBool,
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
    /// Opens the connection to `url` and checks that the server answers.
    ///
    /// # Errors
    /// [`Error::Config`] for a URL that does not parse, [`Error::Auth`] for refused
    /// credentials, [`Error::Unavailable`] when the server cannot be reached in time.
    pub async fn connect(url: &str, options: &ClientOptions) -> Result<Node> {
        options.validate()?;
        let (client, name) = open_client(url)?;
        let config = manager_config(options);
        // The manager's own retries each have the connect timeout; bound the whole attempt too.
        let limit =
            options.connect_timeout * (RECONNECT_RETRIES as u32 + 1) + Duration::from_secs(1);
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
        let node = Node::fixed(con, client, name, options);
        // The manager connects lazily on some paths; make sure this server really answers
        // (and accepted our credentials) before handing out a client.
        node.ping().await?;
        Ok(node)
    }

    /// A node whose connection is opened on first use (and retried on every use after), for a
    /// Redlock master that is down when the client starts: it joins the quorum when it is back.
    ///
    /// # Errors
    /// [`Error::Config`] for a URL that does not parse.
    pub fn lazy(url: &str, options: &ClientOptions) -> Result<Node> {
        let (client, name) = open_client(url)?;
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
        let mut con = self.con();
        self.deadline(self.command_timeout, cmd.query_async(&mut con))
            .await
    }

    /// `WAIT replicas timeout`: how many replicas acknowledged every write made on this
    /// connection so far (ours included; the connection is shared, so possibly more).
    pub async fn wait_for_replicas(&self, guard: &crate::MinReplicas) -> Result<u32> {
        let Conn::Single(mut con) = self.con() else {
            return Err(Error::Config(
                "replica guards are not available on Redis Cluster".into(),
            ));
        };
        let mut wait = redis::cmd("WAIT");
        wait.arg(guard.replicas)
            .arg(u64::try_from(guard.timeout.as_millis()).unwrap_or(u64::MAX));
        // The server blocks up to the WAIT timeout; allow that on top of the round trip.
        let acked: i64 = self
            .deadline(
                guard.timeout + self.command_timeout,
                wait.query_async(&mut con),
            )
            .await?;
        Ok(u32::try_from(acked).unwrap_or(0))
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
        let outcome = match tokio::time::timeout(timeout, call).await {
            Ok(reply) => reply.map_err(|e| Error::from_redis(&self.name, e)),
            Err(_) => Err(Error::Unavailable {
                node: self.name.to_string(),
                reason: format!("no reply within {}", humanize(timeout)),
            }),
        };
        if outcome.as_ref().is_err_and(Error::is_unavailable) {
            self.follow_failover();
        }
        outcome
    }
}

/// Parses `url` into a driver client, and names it for messages (without its password).
fn open_client(url: &str) -> Result<(redis::Client, Arc<str>)> {
    let name: Arc<str> = redact_url(url).into();
    let client = redis::Client::open(url).map_err(|e| {
        Error::Config(format!(
            "bad Redis URL {name}: {}",
            scrub(&e.to_string(), url)
        ))
    })?;
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

/// Redis Cluster.
impl Node {
    /// A Redis Cluster reached through `seeds` (any of its nodes).
    ///
    /// # Errors
    /// [`Error::Config`] for bad URLs or no seed; [`Error::Unavailable`] when no seed answers;
    /// [`Error::Auth`] when the cluster refuses the credentials.
    pub async fn cluster<S: AsRef<str>>(seeds: &[S], options: &ClientOptions) -> Result<Node> {
        options.validate()?;
        let Some(first) = seeds.first() else {
            return Err(Error::Config(
                "Redis Cluster needs at least one seed URL".into(),
            ));
        };
        let names: Vec<String> = seeds.iter().map(|u| redact_url(u.as_ref())).collect();
        let name: Arc<str> = format!("cluster {}", names.join(", ")).into();
        let bad = |e: redis::RedisError| {
            Error::Config(format!("bad cluster configuration for {name}: {e}"))
        };
        let urls: Vec<String> = seeds.iter().map(|u| u.as_ref().to_owned()).collect();
        let cluster = redis::cluster::ClusterClient::builder(urls)
            .connection_timeout(options.connect_timeout)
            .response_timeout(options.command_timeout)
            .retries(RECONNECT_RETRIES as u32)
            .build()
            .map_err(bad)?;
        let client = redis::Client::open(first.as_ref()).map_err(bad)?;
        let connecting = cluster.get_async_connection();
        let con = match tokio::time::timeout(options.connect_timeout * 2, connecting).await {
            Ok(Ok(con)) => con,
            Ok(Err(e)) => return Err(Error::from_redis(&name, e)),
            Err(_) => {
                return Err(Error::Unavailable {
                    node: name.to_string(),
                    reason: "no seed node answered in time".into(),
                })
            }
        };
        let node = Node {
            current: Arc::new(RwLock::new(Current {
                con: Conn::Cluster(con),
                client,
            })),
            sentinel: None,
            name,
            command_timeout: options.command_timeout,
            options: options.clone(),
        };
        node.ping().await?;
        Ok(node)
    }

    /// Every key matching `pattern`, by `SCAN` (never `KEYS`), on every master of a cluster.
    pub async fn scan(&self, pattern: &str, count: u32) -> Result<Vec<String>> {
        let step = |cursor: u64| {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(count);
            scan
        };
        let mut keys = Vec::new();
        let masters = match self.con() {
            Conn::Single(_) => vec![None],
            Conn::Cluster(_) => self
                .cluster_masters()
                .await?
                .into_iter()
                .map(Some)
                .collect(),
        };
        for master in masters {
            let mut cursor = 0u64;
            loop {
                let (next, found): (u64, Vec<String>) = match (&master, self.con()) {
                    (Some((host, port)), Conn::Cluster(mut con)) => {
                        let route = redis::cluster_routing::RoutingInfo::SingleNode(
                            redis::cluster_routing::SingleNodeRoutingInfo::ByAddress {
                                host: host.clone(),
                                port: *port,
                            },
                        );
                        let reply = self
                            .deadline(self.command_timeout, con.route_command(step(cursor), route))
                            .await?;
                        redis::from_redis_value(reply)
                            .map_err(|e| Error::from_redis(&self.name, e.into()))?
                    }
                    _ => self.query(&step(cursor)).await?,
                };
                keys.extend(found);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(keys)
    }

    /// The live masters of a cluster, from `CLUSTER NODES`.
    async fn cluster_masters(&self) -> Result<Vec<(String, u16)>> {
        let nodes: String = self.query(redis::cmd("CLUSTER").arg("NODES")).await?;
        Ok(nodes
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let flags = fields.get(2)?;
                if !flags.split(',').any(|f| f == "master") || flags.contains("fail") {
                    return None;
                }
                let address = fields.get(1)?.split('@').next()?;
                let (host, port) = address.rsplit_once(':')?;
                Some((host.to_owned(), port.parse().ok()?))
            })
            .collect())
    }
}

/// A master found through Sentinel: which master, which sentinels, how to log in to it.
///
/// ```
/// let config = dlock::SentinelConfig::new("mymaster", ["redis://sentinel-1:26379/"])
///     .password("master-secret")
///     .db(2);
/// assert_eq!(config.master_name(), "mymaster");
/// ```
#[derive(Clone)]
pub struct SentinelConfig {
    master_name: String,
    sentinels: Vec<String>,
    username: Option<String>,
    password: Option<String>,
    db: i64,
}

impl std::fmt::Debug for SentinelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelConfig")
            .field("master_name", &self.master_name)
            .field(
                "sentinels",
                &self
                    .sentinels
                    .iter()
                    .map(|u| redact_url(u))
                    .collect::<Vec<_>>(),
            )
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("db", &self.db)
            .finish()
    }
}

impl SentinelConfig {
    /// The master `master_name` as the sentinels at `sentinels` (their URLs, with their own
    /// credentials if any) report it.
    pub fn new<S: AsRef<str>>(master_name: &str, sentinels: impl IntoIterator<Item = S>) -> Self {
        SentinelConfig {
            master_name: master_name.to_owned(),
            sentinels: sentinels
                .into_iter()
                .map(|s| s.as_ref().to_owned())
                .collect(),
            username: None,
            password: None,
            db: 0,
        }
    }

    /// The ACL user for the master (not the sentinels).
    pub fn username(mut self, username: &str) -> Self {
        self.username = Some(username.to_owned());
        self
    }

    /// The password for the master (not the sentinels).
    pub fn password(mut self, password: &str) -> Self {
        self.password = Some(password.to_owned());
        self
    }

    /// The database number on the master.
    pub fn db(mut self, db: i64) -> Self {
        self.db = db;
        self
    }

    /// The monitored master's name.
    pub fn master_name(&self) -> &str {
        &self.master_name
    }
}

impl Node {
    /// The current master of a Sentinel-monitored group. The node follows failovers: when a
    /// call fails, it asks the sentinels again and switches to the master they name.
    ///
    /// # Errors
    /// [`Error::Config`] for bad sentinel URLs or no sentinel; [`Error::Unavailable`] when no
    /// sentinel answers or none knows the master; [`Error::Auth`] when the master refuses.
    pub async fn sentinel(config: &SentinelConfig, options: &ClientOptions) -> Result<Node> {
        options.validate()?;
        if config.sentinels.is_empty() {
            return Err(Error::Config(
                "Sentinel needs at least one sentinel URL".into(),
            ));
        }
        let name: Arc<str> = format!(
            "{} (via sentinels {})",
            config.master_name,
            config
                .sentinels
                .iter()
                .map(|u| redact_url(u))
                .collect::<Vec<_>>()
                .join(", ")
        )
        .into();
        let mut master = redis::RedisConnectionInfo::default().set_db(config.db);
        if let Some(username) = &config.username {
            master = master.set_username(username);
        }
        if let Some(password) = &config.password {
            master = master.set_password(password);
        }
        let node_info = redis::sentinel::SentinelNodeConnectionInfo::default()
            .set_redis_connection_info(master);
        let mut sentinel = redis::sentinel::SentinelClient::build(
            config.sentinels.clone(),
            &config.master_name,
            Some(node_info),
            redis::sentinel::SentinelServerType::Master,
        )
        .map_err(|e| Error::Config(format!("bad sentinel configuration for {name}: {e}")))?;
        let client = resolve_master(&mut sentinel, &name, options.connect_timeout).await?;
        let con = connect_manager(client.clone(), &name, options).await?;
        let node = Node {
            current: Arc::new(RwLock::new(Current {
                con: Conn::Single(con),
                client,
            })),
            sentinel: Some(Arc::new(SentinelSource {
                client: tokio::sync::Mutex::new(sentinel),
                resolving: AtomicBool::new(false),
            })),
            name,
            command_timeout: options.command_timeout,
            options: options.clone(),
        };
        node.ping().await?;
        Ok(node)
    }

    /// After a failed call on a Sentinel-backed node: ask the sentinels for the master in the
    /// background and switch to it if it moved. The failed call is not retried here; callers
    /// already retry (waits, renewals).
    fn follow_failover(&self) {
        let Some(source) = self.sentinel.clone() else {
            return;
        };
        if source.resolving.swap(true, Ordering::SeqCst) {
            return;
        }
        let node = self.clone();
        tokio::spawn(async move {
            let moved = async {
                let mut sentinel = source.client.lock().await;
                let client =
                    resolve_master(&mut sentinel, &node.name, node.options.connect_timeout).await?;
                let unchanged = node
                    .current
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .client
                    .get_connection_info()
                    .addr()
                    == client.get_connection_info().addr();
                if unchanged {
                    return Ok::<_, Error>(false);
                }
                let con = connect_manager(client.clone(), &node.name, &node.options).await?;
                *node.current.write().unwrap_or_else(PoisonError::into_inner) = Current {
                    con: Conn::Single(con),
                    client,
                };
                Ok(true)
            }
            .await;
            match moved {
                Ok(true) => {
                    tracing::warn!(node = %node.name, "followed a failover to a new master")
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::debug!(node = %node.name, %error, "sentinels could not name a master")
                }
            }
            source.resolving.store(false, Ordering::SeqCst);
        });
    }
}

async fn resolve_master(
    sentinel: &mut redis::sentinel::SentinelClient,
    name: &str,
    timeout: Duration,
) -> Result<redis::Client> {
    match tokio::time::timeout(timeout, sentinel.async_get_client()).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(Error::Unavailable {
            node: name.to_owned(),
            reason: format!("no sentinel named a master: {e}"),
        }),
        Err(_) => Err(Error::Unavailable {
            node: name.to_owned(),
            reason: format!("the sentinels did not answer within {}", humanize(timeout)),
        }),
    }
}

async fn connect_manager(
    client: redis::Client,
    name: &str,
    options: &ClientOptions,
) -> Result<ConnectionManager> {
    let connecting = ConnectionManager::new_with_config(client, manager_config(options));
    match tokio::time::timeout(options.connect_timeout * 2, connecting).await {
        Ok(Ok(con)) => Ok(con),
        Ok(Err(e)) => Err(Error::from_redis(name, e)),
        Err(_) => Err(Error::Unavailable {
            node: name.to_owned(),
            reason: "could not connect to the master in time".into(),
        }),
    }
}

/// `url` with any password replaced by `***` (userinfo, or a `pass`/`password` query
/// parameter as redis-rs accepts for `unix://` URLs), for messages and logs.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            let secret_query = parsed
                .query_pairs()
                .any(|(name, _)| matches!(name.as_ref(), "pass" | "password"));
            if secret_query {
                let pairs: Vec<(String, String)> = parsed
                    .query_pairs()
                    .map(|(name, value)| {
                        let value = if matches!(name.as_ref(), "pass" | "password") {
                            "***".to_owned()
                        } else {
                            value.into_owned()
                        };
                        (name.into_owned(), value)
                    })
                    .collect();
                parsed.query_pairs_mut().clear().extend_pairs(pairs);
            }
            parsed.to_string()
        }
        // Unparseable: keep the scheme and host part people need to spot the typo, drop any
        // userinfo, which is where a password would be.
        Err(_) => match (url.find("://"), url.rfind('@')) {
            (Some(scheme_end), Some(at)) if at > scheme_end => {
                format!("{}://***@{}", &url[..scheme_end], &url[at + 1..])
            }
            _ => url.to_owned(),
        },
    }
}

/// Removes the password of `url` from `text` (belt and braces for driver messages).
fn scrub(text: &str, url: &str) -> String {
    match url::Url::parse(url)
        .ok()
        .and_then(|u| u.password().map(str::to_owned))
    {
        Some(password) if !password.is_empty() => text.replace(&password, "***"),
        _ => text.to_owned(),
    }
}

fn scrub_error(error: Error, url: &str) -> Error {
    match error {
        Error::Unavailable { node, reason } => Error::Unavailable {
            node,
            reason: scrub(&reason, url),
        },
        Error::Auth { node, reason } => Error::Auth {
            node,
            reason: scrub(&reason, url),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_survive_redaction() {
        assert_eq!(
            redact_url("redis://user:hunter2@db.example:6380/2"),
            "redis://user:***@db.example:6380/2"
        );
        assert_eq!(redact_url("redis://:hunter2@h/"), "redis://:***@h/");
        assert_eq!(redact_url("redis://h:6379/"), "redis://h:6379/");
        let unix = redact_url("unix:///run/redis.sock?db=1&pass=hunter2");
        assert!(!unix.contains("hunter2") && unix.contains("db=1"), "{unix}");
        let broken = redact_url("redis://u:hunter2@h:notaport");
        assert!(!broken.contains("hunter2"), "{broken}");
    }

    #[test]
    fn scrub_removes_the_password_from_messages() {
        assert_eq!(
            scrub("failed for redis://:pw1@h", "redis://:pw1@h"),
            "failed for redis://:***@h"
        );
    }
}
