//! Redis Cluster: one connection that routes by slot, and SCAN on every master.

use std::sync::{Arc, RwLock};

use super::{redact_url, Conn, Current, Node};
use crate::error::{Error, Result};
use crate::options::ClientOptions;

/// How many times the cluster client may resend one call. It follows a `MOVED` (the slot moved
/// to another master since the client last mapped the slots: resharding, a failover) or an
/// `ASK` (the slot is being migrated) only by resending, so at 0, the count all other
/// connections use, it followed no redirect at all: the first call after a slot moved failed
/// with `MOVED` (a `try_lock` reported Redis unavailable). Two cover a redirect and one more
/// (after a `MOVED`, an `ASK`). The same count lets it resend after a dropped connection or a
/// `TRYAGAIN` (pausing at most [`CLUSTER_RETRY_WAIT_MS`]); dlock's own retries take over after
/// that, and the command timeout bounds the call with all its resends.
const CLUSTER_RETRIES: u32 = 2;
/// Longest pause (ms) the cluster client takes before resending a call after `TRYAGAIN` or
/// `CLUSTERDOWN` (redirects are followed at once): short, as dlock's callers retry on their own.
const CLUSTER_RETRY_WAIT_MS: u64 = 20;

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
            .retries(CLUSTER_RETRIES)
            .min_retry_wait(0)
            .max_retry_wait(CLUSTER_RETRY_WAIT_MS)
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
                links: Default::default(),
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

    /// Where else a dedicated pub/sub connection may go when the server's own
    /// ([`Node::redis_client`]) fails: on a Cluster, every live master (classic pub/sub
    /// messages reach every node of a cluster, so any will do, and the seed may be the one
    /// that failed); elsewhere nowhere.
    pub async fn pubsub_fallbacks(&self) -> Vec<redis::Client> {
        if !self.is_cluster() {
            return Vec::new();
        }
        let masters = self.cluster_masters().await.unwrap_or_default();
        let info = self.redis_client().get_connection_info().clone();
        let mut clients = Vec::new();
        for (host, port) in masters {
            let addr = match info.addr().clone() {
                redis::ConnectionAddr::TcpTls {
                    insecure,
                    tls_params,
                    ..
                } => redis::ConnectionAddr::TcpTls {
                    host,
                    port,
                    insecure,
                    tls_params,
                },
                _ => redis::ConnectionAddr::Tcp(host, port),
            };
            if let Ok(client) = redis::Client::open(info.clone().set_addr(addr)) {
                clients.push(client);
            }
        }
        clients
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
