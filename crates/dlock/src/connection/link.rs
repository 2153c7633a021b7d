//! Link monitors: notice at once when a node's connection drops, so the watchdog can re-verify
//! every lease held there instead of waiting for its next renewal tick.
//!
//! # Why a connection of its own
//! The shared, multiplexed connection (redis-rs `ConnectionManager`) only learns that a server
//! went away when the next call on it fails, which for a holder between two renewals can be a
//! third of a TTL later: a restarted, empty Redis may have granted the lock to someone else by
//! then. The driver's disconnect notice needs RESP3 on the shared connection, which would change
//! reply shapes everywhere and rule out older servers. So while a client holds leases, each node
//! gets one idle monitor connection that speaks RESP3 (it sends no commands, so reply shapes do
//! not matter) and whose driver reads the socket all the time: a server restart, crash or a
//! reset link closes it at once, and the driver reports the disconnection through its push
//! channel. A server that does not speak RESP3 (Redis before 6) is not monitored.
//!
//! # Guarantee
//! For a plain node or a Sentinel-found master, a closed connection is reported within the time
//! the kernel takes to deliver the FIN or RST, and again once a new connection is up. Behind
//! Sentinel the monitor first asks the sentinels for the current master (Sentinel drops every
//! client of a demoted master), so the re-verification reads the new master. A link
//! that silently black-holes (a partition without resets) is not noticed here; renewal and its
//! deadlines cover that case. Redis Cluster connections are not monitored (the cluster client
//! follows its topology itself); their leases are re-verified at the next renewal.

use std::time::Duration;

use redis::{AsyncConnectionConfig, PushKind};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::connection::node::Node;
use crate::connection::quorum::Nodes;

/// Reconnect pauses for a monitor whose server is down: doubling from 50 ms to 2 s, so a
/// restarted server is seen quickly and a dead one is not hammered.
const RECONNECT: crate::Backoff =
    crate::Backoff::new_const(Duration::from_millis(50), Duration::from_secs(2));

/// How long a sentinel watcher listens without a message before it subscribes afresh.
const WATCH_REFRESH: Duration = Duration::from_secs(60);

/// What a monitor saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkEvent {
    /// The connection to node `n` closed (restart, crash, reset).
    Dropped(usize),
    /// The monitor's first connection to node `n` is up. Leases are checked then too: a restart
    /// between a grant and the monitor's start would otherwise go unseen until a renewal.
    Started(usize),
    /// A new connection to node `n` is up after a drop.
    Restored(usize),
}

/// The monitors of one client's nodes. Dropping it stops them (their tasks are aborted).
#[derive(Debug)]
pub(crate) struct Links {
    _tasks: JoinSet<()>,
}

impl Links {
    /// Starts one monitor per monitorable node; events arrive on `events`.
    pub fn start(nodes: &Nodes, events: mpsc::UnboundedSender<LinkEvent>) -> Links {
        let mut tasks = JoinSet::new();
        for index in 0..nodes.len() {
            let node = nodes.get(index).clone();
            if node.is_cluster() {
                continue;
            }
            if let Some((sentinels, master)) = node.sentinel_watch() {
                tasks.spawn(watch_sentinels(
                    index,
                    node.clone(),
                    sentinels,
                    master,
                    events.clone(),
                ));
            }
            tasks.spawn(monitor(index, node, events.clone()));
        }
        Links { _tasks: tasks }
    }
}

/// Keeps one idle connection to `node` open and reports when it closes and when it is up.
async fn monitor(index: usize, node: Node, events: mpsc::UnboundedSender<LinkEvent>) {
    let mut started = false;
    loop {
        let Some((connection, mut notices)) = connect(&node).await else {
            return;
        };
        let event = if started {
            LinkEvent::Restored(index)
        } else {
            LinkEvent::Started(index)
        };
        started = true;
        if events.send(event).is_err() {
            return;
        }
        // Wait for the driver's disconnection notice (or for the channel to close, which
        // means the driver is gone too).
        loop {
            match notices.recv().await {
                Some(notice) if notice.kind == PushKind::Disconnection => break,
                Some(_) => continue,
                None => break,
            }
        }
        drop(connection);
        tracing::info!(node = node.name(), "connection to Redis dropped");
        // Behind Sentinel, a drop may be the demotion of the master: find the new one before
        // the leases are re-verified (a no-op for other nodes).
        let _ = node.switch_if_moved().await;
        if events.send(LinkEvent::Dropped(index)).is_err() {
            return;
        }
    }
}

/// Opens the monitor's RESP3 connection to the current server, retrying while it is away;
/// `None` when monitoring cannot work there.
async fn connect(
    node: &Node,
) -> Option<(
    redis::aio::MultiplexedConnection,
    mpsc::UnboundedReceiver<redis::PushInfo>,
)> {
    let mut failures = 0u32;
    loop {
        let (push, notices) = mpsc::unbounded_channel();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(node.connect_timeout()))
            .set_response_timeout(Some(node.command_timeout()))
            .set_push_sender(push);
        // The current server's client (after a Sentinel failover, the new master's).
        let client = resp3_client(&node.redis_client())?;
        match client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(connection) => return Some((connection, notices)),
            Err(error) if !is_connection_trouble(&error) => {
                // Credentials or protocol (no RESP3): monitoring cannot work here; renewal
                // still finds any loss at its next tick.
                tracing::info!(node = node.name(), %error, "not monitoring the connection");
                return None;
            }
            Err(error) => {
                // The server is away (a drop was reported already, or the first connection
                // is still to come): try again. A Sentinel-found master may have been replaced
                // meanwhile: ask the sentinels (a no-op for other nodes), or a master that died
                // before this monitor's first connection is never left, and its leases wait
                // for the next renewal to be checked.
                tracing::debug!(node = node.name(), %error, "link monitor cannot connect");
                node.follow_failover();
                tokio::time::sleep(RECONNECT.delay(failures)).await;
                failures = failures.saturating_add(1);
            }
        }
    }
}

/// The same server and credentials as `client`, over RESP3 (push notices need it).
fn resp3_client(client: &redis::Client) -> Option<redis::Client> {
    let info = client.get_connection_info().clone();
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    redis::Client::open(info.set_redis_settings(settings)).ok()
}

/// Whether a connect failure means "not reachable right now" (retry) rather than "refused".
fn is_connection_trouble(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_timeout()
        || error.is_connection_refusal()
        || error.is_connection_dropped()
}

/// Behind Sentinel: listens for the sentinels' `+switch-master` announcement of our master and,
/// when it comes, switches to the new master and reports the old link as dropped, so every
/// lease is re-verified on the new master at once. Without it, a failover that keeps the old
/// master up (a manual `SENTINEL FAILOVER`, a partition) goes unnoticed until the old master
/// is demoted, which Sentinel may do only seconds later; meanwhile the new master may grant
/// the lock to someone else. One sentinel at a time, the next one when it goes away.
async fn watch_sentinels(
    index: usize,
    node: Node,
    sentinels: Vec<String>,
    master: String,
    events: mpsc::UnboundedSender<LinkEvent>,
) {
    use futures_util::StreamExt;
    let mut failures = 0u32;
    for url in sentinels.iter().cycle() {
        let subscribed = async {
            let mut pubsub = redis::Client::open(url.as_str())?
                .get_async_pubsub()
                .await?;
            pubsub.subscribe("+switch-master").await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = match tokio::time::timeout(node.connect_timeout(), subscribed).await {
            Ok(Ok(pubsub)) => pubsub,
            _ => {
                tokio::time::sleep(RECONNECT.delay(failures)).await;
                failures = failures.saturating_add(1);
                continue;
            }
        };
        failures = 0;
        let mut messages = pubsub.into_on_message();
        // A sentinel that black-holes (a partition without a reset) would hold the watcher
        // forever: after a quiet spell, subscribe afresh (on the next sentinel).
        while let Ok(Some(message)) = tokio::time::timeout(WATCH_REFRESH, messages.next()).await {
            // "<master name> <old ip> <old port> <new ip> <new port>"
            let payload: String = message.get_payload().unwrap_or_default();
            if payload.split(' ').next() != Some(master.as_str()) {
                continue;
            }
            tracing::warn!(node = node.name(), %payload, "sentinels switched the master");
            // The sentinels asked first may lag behind the one announcing: ask again until
            // they name the announced master (or a connect timeout passes), so the leases are
            // re-verified on the new master, not the old one, which still answers as a master
            // until Sentinel demotes it.
            let announced = payload.split(' ').skip(3).collect::<Vec<_>>().join(":");
            let deadline = tokio::time::Instant::now() + node.connect_timeout();
            loop {
                let _ = node.switch_if_moved().await;
                if node.current_address() == announced || tokio::time::Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if events.send(LinkEvent::Dropped(index)).is_err() {
                return;
            }
        }
    }
}
