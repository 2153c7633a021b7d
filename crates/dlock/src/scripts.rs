//! The Lua scripts behind every operation, loaded once per process.
//!
//! Each is run with `EVALSHA`, falling back to `SCRIPT LOAD` on `NOSCRIPT` (redis-rs
//! [`redis::Script`]), and receives every key through `KEYS`, so Redis Cluster can route it.
//! Scripts that renew, verify or release take a fixed group of keys and arguments per lease and
//! answer one 1/0 per lease, so the watchdog batches them whatever the primitive (see
//! `engine::ops`); a lock's one-lease `release()` may also get hand-off messages after its 1
//! (see `release.lua`). A primitive's scripts are listed under its name.

use std::sync::LazyLock;

use redis::Script;

/// A script with the shared grant prelude (`grant.lua`: server clock, fencing counter, holder
/// info) in front, at compile time.
macro_rules! with_grant {
    ($script:literal) => {
        LazyLock::new(|| {
            Script::new(concat!(
                include_str!("scripts/grant.lua"),
                include_str!($script)
            ))
        })
    };
}

/// A lock script with both preludes in front: `grant.lua`, then `handoff.lua` (the wait queue
/// and the hand-off of a freed lock to its head).
macro_rules! with_handoff {
    ($script:literal) => {
        LazyLock::new(|| {
            Script::new(concat!(
                include_str!("scripts/grant.lua"),
                include_str!("scripts/handoff.lua"),
                include_str!($script)
            ))
        })
    };
}

/// A semaphore script with its preludes in front: `grant.lua`, `handoff.lua`, then
/// `semaphore/queue.lua` (how free permits pass on to queued waiters).
macro_rules! semaphore {
    ($script:literal) => {
        LazyLock::new(|| {
            Script::new(concat!(
                include_str!("scripts/grant.lua"),
                include_str!("scripts/handoff.lua"),
                include_str!("scripts/semaphore/queue.lua"),
                include_str!($script)
            ))
        })
    };
}

/// A script from `scripts/`.
macro_rules! script {
    ($script:literal) => {
        LazyLock::new(|| Script::new(include_str!($script)))
    };
}

// The lock (`primitive::lock`).
/// Take a free lock without queueing, outside fair mode (see `acquire_free.lua`).
pub(crate) static ACQUIRE_FREE: LazyLock<Script> = with_grant!("scripts/acquire_free.lua");
/// Take a free lock (fencing token, holder info), or join its wait queue (see `acquire.lua`).
pub(crate) static ACQUIRE: LazyLock<Script> = with_handoff!("scripts/acquire.lua");
/// Redlock: take a free lock with the client's proposed fencing token, if it is above the
/// master's counter (see `acquire_proposed.lua`).
pub(crate) static ACQUIRE_PROPOSED: LazyLock<Script> = with_grant!("scripts/acquire_proposed.lua");
/// Extend held leases (see `extend.lua`); reentrant leases too.
pub(crate) static EXTEND: LazyLock<Script> = script!("scripts/extend.lua");
/// Extend plain locks: only the lock and its holder info (see `extend_plain.lua`).
pub(crate) static EXTEND_PLAIN: LazyLock<Script> = script!("scripts/extend_plain.lua");
/// Release held locks and pass each on: handed to its queue's head, or waiters woken (see
/// `release.lua`).
// The lean release first, ahead of the preludes it does not need (see release_lean.lua).
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("scripts/release_lean.lua"),
        include_str!("scripts/grant.lua"),
        include_str!("scripts/handoff.lua"),
        include_str!("scripts/release.lua")
    ))
});
/// Release with a minimum hold: keep the lock (unrenewed) for a while (see `keep.lua`).
pub(crate) static KEEP: LazyLock<Script> = script!("scripts/keep.lua");
/// Read (and optionally break) a lock's state (see `inspect.lua`).
pub(crate) static INSPECT: LazyLock<Script> = script!("scripts/inspect.lua");
/// Redlock: raise a node's fencing counter to the grant's token (see `fence_raise.lua`).
pub(crate) static FENCE_RAISE: LazyLock<Script> = script!("scripts/fence_raise.lua");

// The reentrant lock (`primitive::reentrant`).
/// Take a reentrant lock, or add a hold to one this owner has (see `reentrant_acquire.lua`).
pub(crate) static REENTRANT_ACQUIRE: LazyLock<Script> =
    with_grant!("scripts/reentrant_acquire.lua");
/// Redlock: raise a node's fencing counter to a reentrant grant's token and make the owner's
/// key that grant's (see `reentrant_fence.lua`).
pub(crate) static REENTRANT_FENCE: LazyLock<Script> = script!("scripts/reentrant_fence.lua");
/// Remove holds from reentrant locks, freeing each at zero (see `reentrant_release.lua`).
pub(crate) static REENTRANT_RELEASE: LazyLock<Script> = script!("scripts/reentrant_release.lua");

// Storage-side fencing (`fencing`).
/// Write a value only if the writer's fencing token is the largest seen (see `fenced_set.lua`).
pub(crate) static FENCED_SET: LazyLock<Script> = script!("scripts/fenced_set.lua");

// The semaphore (`primitive::semaphore`).
/// Take permits, fair or not (see `semaphore/acquire.lua`).
pub(crate) static SEMAPHORE_ACQUIRE: LazyLock<Script> = semaphore!("scripts/semaphore/acquire.lua");
/// Renew permits (see `semaphore/renew.lua`).
pub(crate) static SEMAPHORE_RENEW: LazyLock<Script> = script!("scripts/semaphore/renew.lua");
/// Check, read-only, that permits are still held (see `semaphore/verify.lua`).
pub(crate) static SEMAPHORE_VERIFY: LazyLock<Script> = script!("scripts/semaphore/verify.lua");
/// Give back permits and pass them on: handed to the queue's head, or waiters woken (see
/// `semaphore/release.lua`).
pub(crate) static SEMAPHORE_RELEASE: LazyLock<Script> = semaphore!("scripts/semaphore/release.lua");
/// Read (and optionally break) a semaphore's state (see `semaphore/inspect.lua`).
pub(crate) static SEMAPHORE_INSPECT: LazyLock<Script> = script!("scripts/semaphore/inspect.lua");
/// Change a semaphore's limit (see `semaphore/set_limit.lua`).
pub(crate) static SEMAPHORE_SET_LIMIT: LazyLock<Script> =
    semaphore!("scripts/semaphore/set_limit.lua");
/// Redlock: raise a node's fencing counter to a permit's token (see `semaphore/fence_raise.lua`).
pub(crate) static SEMAPHORE_FENCE_RAISE: LazyLock<Script> =
    script!("scripts/semaphore/fence_raise.lua");

/// A read-write lock script with its prelude (`rwlock/shared.lua`: how read mode is kept) in
/// front; `queue` also puts `grant.lua` (fencing counter, writer grants) and `handoff.lua` (the
/// wait queue, and the hand-off to a writer) first.
macro_rules! rwlock {
    (queue $script:literal) => {
        LazyLock::new(|| {
            Script::new(concat!(
                include_str!("scripts/grant.lua"),
                include_str!("scripts/handoff.lua"),
                include_str!("scripts/rwlock/shared.lua"),
                include_str!($script)
            ))
        })
    };
    ($script:literal) => {
        LazyLock::new(|| {
            Script::new(concat!(
                include_str!("scripts/rwlock/shared.lua"),
                include_str!($script)
            ))
        })
    };
}

// The read-write lock (`primitive::rwlock`).
/// Take the read or write side, or queue for it (see `rwlock/acquire.lua`).
pub(crate) static RW_ACQUIRE: LazyLock<Script> = rwlock!(queue "scripts/rwlock/acquire.lua");
/// Release read or write holds, or withdraw waiters, and pass a freed lock on: handed to a
/// queued writer, or waiters woken (see `rwlock/release.lua`).
pub(crate) static RW_RELEASE: LazyLock<Script> = rwlock!(queue "scripts/rwlock/release.lua");
/// Renew readers' leases (see `rwlock/renew.lua`); writers renew as plain locks.
pub(crate) static RW_RENEW: LazyLock<Script> = rwlock!("scripts/rwlock/renew.lua");
/// Redlock: raise a master's fencing counter to a reader's token (see `rwlock/fence_raise.lua`).
pub(crate) static RW_FENCE_RAISE: LazyLock<Script> = rwlock!("scripts/rwlock/fence_raise.lua");
/// Check, read-only, that readers still hold (see `rwlock/verify.lua`).
pub(crate) static RW_VERIFY: LazyLock<Script> = rwlock!("scripts/rwlock/verify.lua");

// The multi-key lock (`primitive::multi`).
/// Take several one-slot locks at once, all or none (see `multi/acquire.lua`); the members
/// are plain locks, renewed and released by the lock's scripts.
pub(crate) static MULTI_ACQUIRE: LazyLock<Script> = with_grant!("scripts/multi/acquire.lua");
