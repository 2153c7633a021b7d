//! A plain lock's hold as the engine keeps and ends it: renewal, the ownership check and the
//! release (which also hands the lock on, and queues this client's riders).

use std::sync::Arc;
use std::time::Duration;

use redis::{Script, ScriptInvocation};

use crate::engine::ops::{LeaseOps, ReleaseOp, Verify};
use crate::key::LockKeys;
use crate::options::FENCE_RETENTION;
use crate::scripts;
use crate::token::Token;
use crate::units::millis;

/// A plain lock's lease: its keys and token. How the engine renews, checks and releases it.
#[derive(Debug)]
pub(crate) struct Held {
    pub(super) keys: Arc<LockKeys>,
    pub(super) token: Token,
    /// Released without the wake-up for everyone (see `ReleaseOp::quieted`).
    quiet: bool,
}

impl Held {
    pub(crate) fn new(keys: Arc<LockKeys>, token: Token) -> Held {
        Held {
            keys,
            token,
            quiet: false,
        }
    }

    /// This hold, released without the wake-up for everyone.
    pub(crate) fn quiet(&self) -> Arc<Held> {
        Arc::new(Held {
            keys: self.keys.clone(),
            token: self.token.clone(),
            quiet: true,
        })
    }
}

impl LeaseOps for Held {
    fn name(&self) -> &str {
        &self.keys.lock
    }
    fn slot(&self) -> &str {
        self.keys.slot()
    }
    fn renew_script(&self) -> &'static Script {
        &scripts::EXTEND_PLAIN
    }
    fn add_renew(&self, call: &mut ScriptInvocation<'_>, ttl: Duration) {
        call.key(&self.keys.lock)
            .key(&self.keys.info)
            .arg(self.token.as_str())
            .arg(millis(ttl));
    }
    fn verify(&self) -> Verify<'_> {
        Verify::KeyHolds {
            key: &self.keys.lock,
            value: self.token.as_str(),
        }
    }
}

impl ReleaseOp for Held {
    fn name(&self) -> &str {
        &self.keys.lock
    }
    fn slot(&self) -> &str {
        self.keys.slot()
    }
    fn release_script(&self) -> &'static Script {
        &scripts::RELEASE
    }
    /// Also withdraws the token from the wait queue: the same call undoes a waiter, and passes
    /// on a lock handed to it meanwhile.
    fn add_release(&self, call: &mut ScriptInvocation<'_>) {
        call.key(&self.keys.lock)
            .key(&self.keys.info)
            .key(&self.keys.fence)
            .key(&self.keys.queue)
            .key(&self.keys.queue_leases)
            .key(&self.keys.waiters)
            .arg(self.token.as_str())
            .arg(&self.keys.channel)
            .arg(millis(FENCE_RETENTION))
            .arg(if self.quiet { "1" } else { "0" });
    }
    fn quieted(&self) -> Option<Arc<dyn ReleaseOp>> {
        Some(self.quiet())
    }
    fn handoff_channel(&self) -> Option<&str> {
        Some(&self.keys.channel)
    }
    fn rider_board(&self) -> Option<&str> {
        Some(&self.keys.channel)
    }
}
