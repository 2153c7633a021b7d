//! Redis Cluster: one connection that routes by slot, and SCAN on every master.

use std::sync::{Arc, RwLock};

use redis::cluster_routing::SingleNodeRoutingInfo;

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
                let (next, found): (u64, Vec<String>) = match &master {
                    Some((host, port)) => {
                        let route = SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port: *port,
                        };
                        self.query_routed(&step(cursor), route).await?
                    }
                    None => self.query(&step(cursor)).await?,
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
        masters
            .into_iter()
            .filter_map(|(host, port)| self.client_at(host, port).ok())
            .collect()
    }

    /// A plain client of the cluster node at `host:port`, with the seed's settings
    /// (credentials, TLS).
    pub(super) fn client_at(&self, host: String, port: u16) -> Result<redis::Client> {
        let info = self.redis_client().get_connection_info().clone();
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
        redis::Client::open(info.set_addr(addr)).map_err(|e| Error::from_redis(&self.name, e))
    }

    /// The cluster's map of slots to masters now (`CLUSTER SLOTS`), asked of the master the
    /// client maps `slot` to (`None`: of any master), never of a replica (which may be the
    /// very one that stalls).
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the node does not answer.
    pub async fn slot_map(&self, slot: Option<&str>) -> Result<SlotMap> {
        use redis::cluster_routing::{Route, SlotAddr};
        let route = match slot {
            Some(slot) => SingleNodeRoutingInfo::SpecificNode(Route::with_key(
                format!("{{{slot}}}"),
                SlotAddr::Master,
            )),
            None => SingleNodeRoutingInfo::RandomPrimary,
        };
        let map = self
            .query_routed(redis::cmd("CLUSTER").arg("SLOTS"), route)
            .await?;
        Ok(SlotMap(map))
    }

    /// Runs `cmd` on the cluster node `route` names (elsewhere, on the server), within the
    /// command timeout.
    async fn query_routed<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        route: SingleNodeRoutingInfo,
    ) -> Result<T> {
        let Conn::Cluster(mut con) = self.con() else {
            return self.query(cmd).await;
        };
        let route = redis::cluster_routing::RoutingInfo::SingleNode(route);
        let reply = self
            .deadline(self.command_timeout, con.route_command(cmd.clone(), route))
            .await?;
        redis::from_redis_value(reply).map_err(|e| Error::from_redis(&self.name, e.into()))
    }

    /// The live masters of a cluster, from `CLUSTER NODES` (asked of a master: a keyless
    /// command may otherwise go to a replica, which may be stalled).
    async fn cluster_masters(&self) -> Result<Vec<(String, u16)>> {
        let nodes: String = self
            .query_routed(
                redis::cmd("CLUSTER").arg("NODES"),
                SingleNodeRoutingInfo::RandomPrimary,
            )
            .await?;
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

/// Redis Cluster's slot for keys whose hashed part (hash tag, or whole key) is `part`: CRC16
/// (XMODEM) modulo 16384, as the Cluster specification defines it.
fn key_slot(part: &str) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(part.as_bytes()) % 16384
}

/// A `CLUSTER SLOTS` reply: ranges of `[start, end, [host, port, id, …], replicas…]`.
#[derive(Debug, Clone)]
pub(crate) struct SlotMap(redis::Value);

impl SlotMap {
    /// The `host:port` of the master serving keys whose hash part is `slot`.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the map names no master for the slot, or none that can be
    /// reached by address: a master announcing no endpoint (`?`, empty or null, as with
    /// `cluster-preferred-endpoint-type unknown-endpoint`) would have to be guessed, and a
    /// guess could send the write, and the seed's credentials, to another server.
    pub fn master_of(&self, slot: &str) -> Result<(String, u16)> {
        let number = key_slot(slot);
        match master_in_map(&self.0, number) {
            Some((host, port)) if !matches!(host.as_str(), "" | "?") => Ok((host, port)),
            found => Err(Error::Unavailable {
                node: format!("cluster slot {number}"),
                reason: match found {
                    None => "the cluster names no master for the slot".into(),
                    Some(_) => "its master announces no endpoint to connect to".into(),
                },
            }),
        }
    }
}

/// The master's `(host, port)` for `slot` in a `CLUSTER SLOTS` reply (host empty when the
/// master announces none: null).
fn master_in_map(map: &redis::Value, slot: u16) -> Option<(String, u16)> {
    let redis::Value::Array(ranges) = map else {
        return None;
    };
    let int = |value: Option<&redis::Value>| match value {
        Some(redis::Value::Int(n)) => Some(*n),
        _ => None,
    };
    ranges.iter().find_map(|range| {
        let redis::Value::Array(fields) = range else {
            return None;
        };
        let (start, end) = (int(fields.first())?, int(fields.get(1))?);
        if !(start..=end).contains(&i64::from(slot)) {
            return None;
        }
        let Some(redis::Value::Array(master)) = fields.get(2) else {
            return None;
        };
        let host = match master.first()? {
            redis::Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok()?,
            redis::Value::SimpleString(text) => text.clone(),
            redis::Value::Nil => String::new(),
            _ => return None,
        };
        let port = u16::try_from(int(master.get(1))?).ok()?;
        Some((host, port))
    })
}

#[cfg(test)]
mod tests {
    use redis::Value;

    use super::*;

    #[test]
    fn key_slots_follow_the_cluster_specification() {
        // The specification's CRC16 check value, and slots Redis itself reports.
        assert_eq!(
            crc16::State::<crc16::XMODEM>::calculate(b"123456789"),
            0x31C3
        );
        assert_eq!(key_slot("foo"), 12182);
        assert_eq!(key_slot("user:42"), key_slot("user:42"));
        assert_eq!(key_slot(""), 0);
    }

    #[test]
    fn the_slot_map_names_the_master_of_each_range() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let map = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("10.0.0.1", 7000),
                node("10.0.0.4", 7003),
            ]),
            Value::Array(vec![Value::Int(5461), Value::Int(16383), node("", 7001)]),
        ]);
        assert_eq!(master_in_map(&map, 0), Some(("10.0.0.1".into(), 7000)));
        assert_eq!(master_in_map(&map, 5460), Some(("10.0.0.1".into(), 7000)));
        assert_eq!(master_in_map(&map, 5461), Some((String::new(), 7001)));
        assert_eq!(master_in_map(&Value::Array(vec![]), 1), None);
        assert_eq!(master_in_map(&Value::Nil, 1), None);
        let bad_port = Value::Array(vec![Value::Array(vec![
            Value::Int(0),
            Value::Int(16383),
            node("h", 70_000),
        ])]);
        assert_eq!(master_in_map(&bad_port, 3), None);
    }

    /// A master announcing no endpoint is not guessed at: not the seed, not the node that
    /// answered (which may be another master).
    #[test]
    fn a_master_without_an_endpoint_is_unavailable_not_guessed() {
        let range = |host: Value| {
            Value::Array(vec![
                Value::Int(0),
                Value::Int(16383),
                Value::Array(vec![host, Value::Int(7000)]),
            ])
        };
        for host in [
            Value::Nil,
            Value::BulkString(Vec::new()),
            Value::BulkString(b"?".to_vec()),
        ] {
            let map = SlotMap(Value::Array(vec![range(host.clone())]));
            let err = map.master_of("x").unwrap_err();
            assert!(err.is_unavailable(), "{host:?}: {err:?}");
            assert!(err.to_string().contains("no endpoint"), "{err}");
        }
        let map = SlotMap(Value::Array(vec![range(Value::BulkString(b"h".to_vec()))]));
        assert_eq!(map.master_of("x").unwrap(), ("h".to_owned(), 7000));
        let err = SlotMap(Value::Array(vec![])).master_of("x").unwrap_err();
        assert!(err.to_string().contains("names no master"), "{err}");
    }
}
