//! The Lua scripts behind every lock operation, loaded once per process.
//!
//! Each is run with `EVALSHA`, falling back to `SCRIPT LOAD` on `NOSCRIPT` (redis-rs
//! [`redis::Script`]), and receives every key through `KEYS`, so Redis Cluster can route it.

use std::sync::LazyLock;

use redis::Script;

/// An acquire script with the shared grant prelude (`grant.lua`) in front, at compile time.
macro_rules! with_grant {
    ($script:literal) => {
        concat!(include_str!("scripts/grant.lua"), include_str!($script))
    };
}

/// Take a free lock, grant a fencing token, write holder info (see `acquire.lua`).
pub(crate) static ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new(with_grant!("scripts/acquire.lua")));
/// Fair (FIFO) acquisition with a wait queue (see `acquire_fair.lua`).
pub(crate) static ACQUIRE_FAIR: LazyLock<Script> =
    LazyLock::new(|| Script::new(with_grant!("scripts/acquire_fair.lua")));
/// Extend any number of held leases (see `extend.lua`).
pub(crate) static EXTEND: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/extend.lua")));
/// Release any number of held leases and wake their waiters (see `release.lua`).
pub(crate) static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/release.lua")));

/// Adds one lease to an `EXTEND` call: its three keys, then its token, new TTL and, for a
/// reentrant lease, its grant's fencing token (see `extend.lua`).
pub(crate) fn add_extend(
    call: &mut redis::ScriptInvocation<'_>,
    keys: &crate::key::LockKeys,
    token: &crate::token::Token,
    ttl: std::time::Duration,
    grant: Option<u64>,
) {
    call.key(&keys.lock)
        .key(&keys.info)
        .key(&keys.holds)
        .arg(token.as_str())
        .arg(crate::watchdog::millis(ttl))
        .arg(grant.map(|fence| fence.to_string()).unwrap_or_default());
}

/// Take a reentrant lock, or add a hold to one this owner has (see `reentrant_acquire.lua`).
pub(crate) static REENTRANT_ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new(with_grant!("scripts/reentrant_acquire.lua")));
/// Remove one hold from a reentrant lock, freeing it at zero (see `reentrant_release.lua`).
pub(crate) static REENTRANT_RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/reentrant_release.lua")));

/// Adds one lock to a `RELEASE` call: its four keys, then its token and wake-up channel.
pub(crate) fn add_release(
    call: &mut redis::ScriptInvocation<'_>,
    keys: &crate::key::LockKeys,
    token: &crate::token::Token,
) {
    call.key(&keys.lock)
        .key(&keys.info)
        .key(&keys.queue)
        .key(&keys.queue_leases)
        .arg(token.as_str())
        .arg(&keys.channel);
}
/// Release with a minimum hold: keep the lock (unrenewed) for a while (see `keep.lua`).
pub(crate) static KEEP: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/keep.lua")));

/// Read (and optionally break) a lock's state (see `inspect.lua`).
pub(crate) static INSPECT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/inspect.lua")));

/// Write a value only if the writer's fencing token is the largest seen (see `fenced_set.lua`).
pub(crate) static FENCED_SET: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/fenced_set.lua")));

/// Redlock: raise a node's fencing counter to the grant's token (see `fence_raise.lua`).
pub(crate) static FENCE_RAISE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/fence_raise.lua")));
