//! Distributed locks on Redis: lease locks with fencing tokens and watchdog renewal.
//!
//! # Layout
//! Three layers; each imports only those below it (checked by a test), and a primitive is one
//! module plus its scripts. `docs/architecture.md` follows a call through them.
//! - [`Client`] (`client`): connects to a deployment and makes primitives; `status`, `list`
//!   and forced releases for operators.
//! - **Primitives** (`primitive`): [`Lock`] and [`LockGuard`] (the lease lock);
//!   [`ReentrantLock`] (an [`Owner`] may take it again while holding it); [`Semaphore`] and
//!   [`SemaphorePermit`] (at most N permits out, each with its own lease). Each supplies its
//!   acquire script and reply parsing, how its leases are renewed, checked and released, and
//!   its guard.
//! - **Engine** (`engine`): what every primitive shares. `acquire` runs one attempt (token
//!   policy, fan-out to a majority, Redlock fencing (a proposed token, or a write-back), the
//!   replica guard's `WAIT`, validity, rollback) and `wait` the waiting loop (wake-ups, re-checks, backoff); `pending`
//!   undoes an acquisition left in doubt; `lease` is one lease's state and validity (`clock`
//!   counts suspended time against it) and `handle` what a guard does with it (`lost`,
//!   `watch`, `extend`, `release`, written once); `ops` are the batched scripts a primitive
//!   gives the `watchdog`, which renews, re-verifies and releases any primitive's leases in
//!   one round trip per node and tick.
//! - **Connection** (`connection`): `node` is one server (multiplexed, auto-reconnecting, a
//!   deadline on every call), a master found through Sentinel ([`SentinelConfig`], following
//!   failovers), or a Redis Cluster; `quorum` is N independent masters for Redlock
//!   ([`Client::redlock`]) and the one majority rule; `link` reports dropped connections at
//!   once; `notify` carries wake-ups over one pub/sub connection per client.
//! - [`blocking`]: the same primitives for synchronous programs (a private runtime thread).
//! - [`fencing`]: why and how grants carry strictly increasing tokens.
//! - Shared leaves: [`Error`] (`error`), [`LockOptions`] and [`ClientOptions`] (`options`),
//!   [`HolderInfo`] and [`LockStatus`] (`holder`), `key` (key layout, cluster-slot safe),
//!   `token` (128-bit owner tokens), `scripts` (the Lua scripts), `units`, [`Backoff`].
//!
//! # Guarantees
//! - **Safety:** while a guard's lease is valid, no other owner holds the same lock on the
//!   same Redis (on Redlock: on a majority of the masters). Acquire is one atomic `SET`-if-absent with expiry; extend and release are
//!   compare-and-act scripts keyed on a 128-bit token, so they never touch another owner's
//!   lock.
//! - **Liveness:** every lock has a TTL. A holder that crashes or is cut off blocks others for
//!   at most one TTL.
//! - **No silent loss:** when renewal finds the key gone, or cannot reach Redis before the
//!   lease's conservative validity ends, the guard reports the loss ([`LockGuard::lost`])
//!   within one renewal interval; when a node's connection drops and comes back (a restart,
//!   a failover), every lease there is re-verified at once
//!   ([`LossReason::KeyGoneAfterReconnect`]). [`LockGuard::release`] returns `Ok` only when
//!   the key still held the guard's token: a release that fails on a dropped connection is
//!   retried on the new one, and one that gets no answer before the lease's validity ends is
//!   reported as a loss too.
//! - **Fencing:** each grant's token is larger than every earlier one for the same name, even
//!   after a Redis restart that lost the counter.
//! - **Bounded waits:** `lock` waits 30 s at most unless asked to wait forever.
//!
//! These hold under stated assumptions: the holder's process is not paused for longer than its
//! lease without noticing (check [`LockGuard::is_held`], use fencing), clocks run at nearly the
//! same rate (1% drift is allowed for; time the host spent suspended is counted on Linux), a
//! Redis clock does not step forward while a waiter waits for a hand-off (the new holder counts
//! its claim lease from the grant by that clock; see the README's hand-off section), and
//! Redis does not lose a held lock (a failover to a
//! replica that had not received it, or a restart without persistence, can let a second owner
//! in; fencing tokens still protect storage then).
//!
//! # Quick start
//! ```
//! use std::time::Duration;
//! use dlock::{Client, LockOptions};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), dlock::Error> {
//! # // A throwaway redis-server on a free port (dlock's test kit), in place of yours.
//! # let server = dlock_test::RedisServer::start();
//! let url = "redis://127.0.0.1:6379/";
//! # let url = &server.url();
//! let client = Client::connect(url).await?;
//! let lock = client.lock_with("main:hello", LockOptions::new().ttl(Duration::from_secs(10)))?;
//! match lock.try_lock().await {
//!     Ok(guard) => {
//!         println!("running with fencing token {}", guard.fencing_token());
//!         guard.release().await?;
//!     }
//!     Err(busy) if busy.is_conflict() => eprintln!("{busy}"),
//!     Err(other) => return Err(other),
//! }
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

/// The README's examples compile and stay true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;

mod backoff;
pub mod blocking;
mod client;
mod clock;
mod connection;
mod engine;
mod error;
pub mod fencing;
mod holder;
mod key;
mod options;
mod primitive;
mod scripts;
mod status;
mod telemetry;
mod token;
mod units;

pub use backoff::Backoff;
pub use client::Client;
pub use connection::node::{redact_url, SentinelConfig};
pub use error::{Conflict, Error, ErrorKind, NodeFailure, Result};
pub use holder::{HolderInfo, LockStatus};
pub use key::MAX_NAME_LEN;
pub use options::{
    ClientOptions, LockOptions, MinReplicas, Wait, DEFAULT_CLAIM, DEFAULT_COMMAND_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_RECHECK, DEFAULT_SUBSCRIPTION_LINGER, DEFAULT_TTL,
    DEFAULT_WAIT, FENCE_RETENTION, MAX_TTL, MIN_TTL,
};
pub use primitive::lock::{Lock, LockGuard};
pub use primitive::multi::{MultiGuard, MultiLock, MAX_MEMBERS};
pub use primitive::reentrant::{Owner, ReentrantGuard, ReentrantLock};
pub use primitive::rwlock::{ReadGuard, RwLock, WriteGuard};
pub use primitive::semaphore::{Semaphore, SemaphoreHolder, SemaphorePermit, SemaphoreStatus};
pub use status::{LeaseStatus, LossReason};
