//! Connections of their own for the replica guard's writes and their `WAIT`.
//!
//! `WAIT n timeout` blocks the connection it runs on until `n` replicas acknowledged every
//! write made *on that connection*. Run on the client's shared connection, it stalled every
//! other call of the client (other locks' acquires and renewals) for up to the guard's timeout;
//! run on a connection that made no write, it would return at once and prove nothing. So a
//! guarded write (the acquire or extend script) and its `WAIT` both go on a [`ReplicaLink`]
//! that nobody else uses meanwhile: the `WAIT` covers exactly that write, and it may block for
//! its whole timeout without holding anyone else up.
//!
//! Links are kept for reuse (a few per server), and one that failed or timed out is dropped, so
//! a `WAIT` still blocking on the server never delays the link's next user.
//!
//! On a Redis Cluster the link goes to the master of the hold's slot, as the cluster maps it
//! when the link is taken (`CLUSTER SLOTS`): the script must run there and its `WAIT` counts
//! that master's replicas. A slot that moved meanwhile (`MOVED`) or is being migrated (`ASK`)
//! is followed once, as the cluster client follows it: the link moves to the master named,
//! so the `WAIT` still follows the write. Links are pooled per master; a master that
//! announces no endpoint (`?`, empty) is never guessed at: the guarded call fails instead.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{FromRedisValue, ScriptInvocation};

use super::cluster::SlotMap;
use super::Node;
use crate::error::{Error, Result};

/// Idle links kept per server; more are opened while more guarded writes run at once.
const MAX_IDLE: usize = 4;

/// Idle links to one server.
type Idle = Arc<Mutex<Vec<MultiplexedConnection>>>;

/// Idle links by server: the node's own server under `""`, a cluster's masters under
/// `host:port` (a new master after a Sentinel failover gets a new set).
pub(super) type Links = Arc<Mutex<HashMap<String, Idle>>>;

/// A connection checked out for one guarded write and its `WAIT`; back to the idle set on drop
/// unless a call on it failed.
pub(crate) struct ReplicaLink {
    con: Option<MultiplexedConnection>,
    idle: Weak<Mutex<Vec<MultiplexedConnection>>>,
    node: Node,
    /// The server the link goes to: the node's name, or on a cluster the slot's master.
    name: Arc<str>,
}

impl std::fmt::Debug for ReplicaLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaLink")
            .field("server", &self.name)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// A link of its own to the server that holds the keys whose Cluster hash part is `slot`
    /// (the current server; on a Cluster, the master of that slot by a fresh slot map), for a
    /// write the replica guard must confirm.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when no connection can be opened within the connect timeout, or
    /// the cluster names no reachable master for the slot.
    pub async fn replica_link(&self, slot: &str) -> Result<ReplicaLink> {
        let map = match self.is_cluster() {
            true => Some(self.slot_map(Some(slot)).await?),
            false => None,
        };
        self.replica_link_by(map.as_ref(), slot).await
    }

    /// [`Node::replica_link`] with the cluster's slot map at hand (`None` off a Cluster).
    pub async fn replica_link_by(&self, map: Option<&SlotMap>, slot: &str) -> Result<ReplicaLink> {
        let master = map.map(|map| map.master_of(slot)).transpose()?;
        let mut link = ReplicaLink {
            con: None,
            idle: Weak::new(),
            node: self.clone(),
            name: self.name.clone(),
        };
        let con = link.connect(master).await?;
        link.con = Some(con);
        Ok(link)
    }

    /// Runs a script on a link of its own and answers only once `guard.replicas` replicas
    /// acknowledged it (an `extend` of a guarded lease, as its grant and renewals are).
    ///
    /// # Errors
    /// [`Error::Unavailable`] when too few replicas acknowledged within the guard's timeout
    /// (the write may stand on the master alone); the link's and the script's errors.
    pub async fn eval_acked<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
        slot: &str,
        guard: &crate::MinReplicas,
    ) -> Result<T> {
        let mut link = self.replica_link(slot).await?;
        let reply = link.eval(invocation, self.command_timeout()).await?;
        let acked = link.wait_for_replicas(guard).await?;
        if acked < guard.replicas {
            return Err(Error::Unavailable {
                node: link.name().to_owned(),
                reason: format!(
                    "only {acked} of {} replicas acknowledged the extend within {}",
                    guard.replicas,
                    crate::units::humanize(guard.timeout)
                ),
            });
        }
        Ok(reply)
    }
}

impl ReplicaLink {
    /// A connection to `master` (`None`: the node's own server), idle or new; the link is
    /// returned to `master`'s idle set from then on.
    async fn connect(&mut self, master: Option<(String, u16)>) -> Result<MultiplexedConnection> {
        let node = &self.node;
        let (client, links) = {
            let current = node.current.read().unwrap_or_else(PoisonError::into_inner);
            (current.client.clone(), current.links.clone())
        };
        let (client, address) = match master {
            None => (client, String::new()),
            Some((host, port)) => {
                let address = match host.contains(':') {
                    true => format!("[{host}]:{port}"),
                    false => format!("{host}:{port}"),
                };
                (node.client_at(host, port)?, address)
            }
        };
        if !address.is_empty() {
            self.name = format!("{address} (cluster master)").into();
        }
        let idle = links
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(address)
            .or_default()
            .clone();
        self.idle = Arc::downgrade(&idle);
        let reused = idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        if let Some(con) = reused {
            return Ok(con);
        }
        // No response timeout of the driver's: each call here has its own deadline, and a
        // WAIT's is longer than the command timeout.
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(node.options.connect_timeout))
            .set_response_timeout(None);
        let connecting = client.get_multiplexed_async_connection_with_config(&config);
        let opened = tokio::time::timeout(node.options.connect_timeout, connecting).await;
        node.settle(&self.name, opened, node.options.connect_timeout)
    }

    /// Runs a script (EVALSHA, loading it on NOSCRIPT) within `timeout`. On a Cluster whose
    /// slot moved (`MOVED`) or is being migrated (`ASK`: the keys are on the target already),
    /// the script is sent once more, to the master named, and the link stays there, so its
    /// `WAIT` follows the write.
    pub async fn eval<T: FromRedisValue>(
        &mut self,
        invocation: &ScriptInvocation<'_>,
        timeout: Duration,
    ) -> Result<T> {
        let timeout = timeout.max(Duration::from_millis(1));
        let deadline = tokio::time::Instant::now() + timeout;
        let mut con = self.take()?;
        let mut outcome =
            tokio::time::timeout_at(deadline, invocation.invoke_async(&mut con)).await;
        if let Some((master, asking)) = redirect(&outcome) {
            drop(con);
            let redirected = tokio::time::timeout_at(deadline, self.connect(Some(master))).await;
            con = redirected.map_err(|_| Error::Unavailable {
                node: self.name.to_string(),
                reason: "no connection to the master a redirect named in time".into(),
            })??;
            if asking {
                let asked = tokio::time::timeout_at(
                    deadline,
                    redis::cmd("ASKING").query_async::<()>(&mut con),
                )
                .await;
                self.node.settle(&self.name, asked, timeout)?;
            }
            outcome = tokio::time::timeout_at(deadline, invocation.invoke_async(&mut con)).await;
        }
        let reply = self.node.settle(&self.name, outcome, timeout);
        self.keep_if_ok(con, &reply);
        reply
    }

    /// The server's name (its URL without a password; on a cluster, the slot's master).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `WAIT replicas timeout`: how many replicas acknowledged every write made on this link,
    /// within the guard's timeout plus one command timeout for the round trip.
    pub async fn wait_for_replicas(&mut self, guard: &crate::MinReplicas) -> Result<u32> {
        let mut con = self.take()?;
        let mut wait = redis::cmd("WAIT");
        wait.arg(guard.replicas)
            .arg(u64::try_from(guard.timeout.as_millis()).unwrap_or(u64::MAX));
        let limit = guard.timeout.saturating_add(self.node.command_timeout());
        let waited = tokio::time::timeout(limit, wait.query_async(&mut con)).await;
        let acked: Result<i64> = self.node.settle(&self.name, waited, limit);
        self.keep_if_ok(con, &acked);
        Ok(u32::try_from(acked?).unwrap_or(0))
    }

    fn take(&mut self) -> Result<MultiplexedConnection> {
        self.con.take().ok_or_else(|| Error::Unavailable {
            node: self.name.to_string(),
            reason: "the replica guard's connection failed earlier".into(),
        })
    }

    /// Keeps `con` for the next call only after a reply: after an error or a timeout the server
    /// may still be busy with the call (a blocked WAIT) and would delay the next one.
    fn keep_if_ok<T>(&mut self, con: MultiplexedConnection, reply: &Result<T>) {
        if reply.is_ok() {
            self.con = Some(con);
        }
    }
}

/// Where a Cluster redirected a call: the master named by `MOVED` or `ASK`, and whether it is
/// an `ASK` (the call must then be preceded by `ASKING` there).
fn redirect<T>(
    outcome: &std::result::Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
) -> Option<((String, u16), bool)> {
    let Ok(Err(error)) = outcome else {
        return None;
    };
    let (address, _slot) = error.redirect_node()?;
    let (host, port) = address.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let asking = error.code() == Some("ASK");
    Some(((host.to_owned(), port.parse().ok()?), asking))
}

impl Drop for ReplicaLink {
    fn drop(&mut self) {
        let (Some(con), Some(idle)) = (self.con.take(), self.idle.upgrade()) else {
            return;
        };
        let mut idle = idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push(con);
        }
    }
}
