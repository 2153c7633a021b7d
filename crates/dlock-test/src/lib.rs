//! Test kit for dlock: real `redis-server` processes, never mocks.
//!
//! # Layout
//! - [`RedisServer`] starts one `redis-server` on a free loopback port in a private temp
//!   directory, waits until it answers `PING`, and kills it on drop. Faults: [`RedisServer::kill`]
//!   (SIGKILL), [`RedisServer::pause`]/[`RedisServer::resume`] (SIGSTOP/SIGCONT),
//!   [`RedisServer::restart_empty`] (restart with every key lost), [`RedisServer::debug_sleep`],
//!   [`RedisServer::client_pause`].
//! - [`RedisServers`] starts N independent servers (Redlock tests).
//! - [`RedisServer::start_replica_of`] starts a replica and waits until it has synced;
//!   [`Sentinels`] starts sentinels monitoring a master, for real failovers.
//! - [`RedisCluster`] starts a small Redis Cluster (N masters, every slot assigned).
//!   [`RedisCluster::master_of`] says which master serves a key; [`RedisCluster::move_slot`]
//!   reshards one slot (and its keys) to another master, and [`RedisCluster::begin_slot_move`]
//!   stops half-way ([`SlotMove`]) to test what clients see while a slot migrates.
//! - [`TcpProxy`] forwards a loopback port to a server and can cut or delay that link: a
//!   partition between one client and Redis while others still reach it.
//! - [`find_redis_server`] says where the binary comes from: `DLOCK_REDIS_SERVER`, else `PATH`.
//!
//! The kit panics on failure (it is for tests) and every panic carries the server's log.

mod cluster;
mod proxy;
mod reshard;
mod sentinel;
mod server;

pub use cluster::RedisCluster;
pub use proxy::TcpProxy;
pub use reshard::SlotMove;
pub use sentinel::{Sentinels, MASTER_NAME};
pub use server::{find_redis_server, RedisServer, RedisServers, ServerOptions};
