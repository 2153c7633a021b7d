//! What the engine needs from a primitive to keep and end a lease without knowing which
//! primitive it belongs to: batched script operations.
//!
//! Every batched script takes a fixed group of `KEYS` and `ARGV` per lease and answers one `1`
//! (yes: renewed, still ours, released) or `0` (no: not ours any more) per lease, in order.
//! So the watchdog renews the leases of many locks, permits and holds of one node in one call
//! per script (per slot on a Cluster), whatever their kind: it groups them by script and sends
//! the groups at once, which is still one round trip.

use std::fmt::Debug;
use std::time::Duration;

use redis::{Script, ScriptInvocation};

/// How to end one hold: release a lock, a permit, one hold of a reentrant lock. Used by
/// `release()`, by the background release of a dropped guard, and to undo an acquisition that
/// may have happened.
pub(crate) trait ReleaseOp: Send + Sync + Debug {
    /// What is held (the lock's or semaphore's name), for logs and errors.
    fn name(&self) -> &str;
    /// The part of the keys that Redis Cluster hashes: holds with equal slot parts share a slot.
    fn slot(&self) -> &str;
    /// The batched release script.
    fn release_script(&self) -> &'static Script;
    /// Adds this hold's keys and arguments to a release call.
    fn add_release(&self, call: &mut ScriptInvocation<'_>);
    /// The wake-up channel of the waiters this hold's release may hand it to, if the release
    /// script also takes the releasing client's inbox (one more argument after the lease's)
    /// and answers, after the per-lease results, the hand-off messages meant for that inbox
    /// (see `release.lua`): `release()` then delivers them in this process, with no pub/sub
    /// message.
    fn handoff_channel(&self) -> Option<&str> {
        None
    }
    /// Where waiters of this client may ride on this hold's `release()` (see
    /// `engine::riders`): the board's name, if the release script takes riders (after the
    /// inbox: the client's host and pid, then four values per rider; see `release.lua`).
    fn rider_board(&self) -> Option<&str> {
        None
    }
    /// The same release without the wake-up for everyone, where the primitive has one (a
    /// lock's, a permit's): for undoing a Redlock attempt that no majority granted, whose
    /// waiter would otherwise wake itself with its own undo and spin while the lock is held.
    fn quieted(&self) -> Option<std::sync::Arc<dyn ReleaseOp>> {
        None
    }
}

/// How to keep one lease: renew it, and check that it is still ours (read-only, after a
/// dropped connection).
pub(crate) trait LeaseOps: Send + Sync + Debug {
    /// What is held, for logs and errors.
    fn name(&self) -> &str;
    /// The part of the keys that Redis Cluster hashes.
    fn slot(&self) -> &str;
    /// The batched renewal script.
    fn renew_script(&self) -> &'static Script;
    /// Adds this lease's keys and arguments to a renewal to `ttl`.
    fn add_renew(&self, call: &mut ScriptInvocation<'_>, ttl: Duration);
    /// How to check, read-only, that the lease is still ours.
    fn verify(&self) -> Verify<'_>;
    /// Adds this lease's keys and arguments to a [`Verify::Script`] check.
    fn add_verify(&self, _call: &mut ScriptInvocation<'_>) {}
}

/// A read-only ownership check.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Verify<'a> {
    /// Ours while `key` holds `value`: a plain read, batched with others into one `MGET`.
    KeyHolds { key: &'a str, value: &'a str },
    /// Ask this batched, read-only script (arguments from `add_verify`).
    Script(&'static Script),
}

/// A one-lease call of a batched script (`extend`, `release`), answered by `[1]` or `[0]`.
pub(crate) fn one<'a>(
    script: &'a Script,
    add: impl FnOnce(&mut ScriptInvocation<'a>),
) -> ScriptInvocation<'a> {
    let mut call = script.prepare_invoke();
    add(&mut call);
    call
}

#[cfg(test)]
pub(crate) mod testing {
    //! Lease operations for unit tests that never reach a working Redis.
    use std::sync::LazyLock;

    use super::*;

    static NOOP: LazyLock<Script> = LazyLock::new(|| Script::new("return {}"));

    /// A lease named `k` whose scripts do nothing.
    #[derive(Debug)]
    pub struct Noop;

    impl LeaseOps for Noop {
        fn name(&self) -> &str {
            "k"
        }
        fn slot(&self) -> &str {
            "k"
        }
        fn renew_script(&self) -> &'static Script {
            &NOOP
        }
        fn add_renew(&self, call: &mut ScriptInvocation<'_>, ttl: Duration) {
            call.key("k").arg(crate::units::millis(ttl));
        }
        fn verify(&self) -> Verify<'_> {
            Verify::KeyHolds {
                key: "k",
                value: "token",
            }
        }
    }
}
