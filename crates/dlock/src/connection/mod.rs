//! The connection layer: how dlock talks to Redis, knowing nothing of locks.
//!
//! - `node`: one server (multiplexed, auto-reconnecting, a deadline on every call), a master
//!   found through Sentinel (following failovers), or a Redis Cluster; a replica guard's write
//!   and its `WAIT` go on a connection of their own to the server (on a Cluster, the slot's
//!   master) (`node::replica`).
//! - `quorum`: one node or N independent masters for Redlock: concurrent calls, majorities
//!   ([`Verdict`](quorum::Verdict)), and why fencing tokens stay ordered across nodes.
//! - `link`: one idle monitor connection per node that reports drops and reconnects at once.
//! - `notify`: wake-ups for waiters over one pub/sub connection per client.

pub(crate) mod link;
pub(crate) mod node;
pub(crate) mod notify;
pub(crate) mod quorum;
