//! The Lua scripts behind every lock operation, loaded once per process.
//!
//! Each is run with `EVALSHA`, falling back to `SCRIPT LOAD` on `NOSCRIPT` (redis-rs
//! [`redis::Script`]), and receives every key through `KEYS`, so Redis Cluster can route it.

use std::sync::LazyLock;

use redis::Script;

/// Take a free lock, grant a fencing token, write holder info (see `acquire.lua`).
pub(crate) static ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/acquire.lua")));
/// Fair (FIFO) acquisition with a wait queue (see `acquire_fair.lua`).
pub(crate) static ACQUIRE_FAIR: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/acquire_fair.lua")));
/// Extend any number of held leases (see `extend.lua`).
pub(crate) static EXTEND: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/extend.lua")));
/// Release any number of held leases and wake their waiters (see `release.lua`).
pub(crate) static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/release.lua")));

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
/// Read (and optionally break) a lock's state (see `inspect.lua`).
pub(crate) static INSPECT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/inspect.lua")));
