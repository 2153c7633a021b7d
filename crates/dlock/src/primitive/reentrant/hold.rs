//! How a reentrant grant's lease is kept (renewed, checked) and how one hold of it is removed.
//! The lock key holds the owner's token, the same for every grant to that owner, so every
//! operation here also names the grant by its fencing token.

use std::sync::Arc;
use std::time::Duration;

use redis::{Script, ScriptInvocation};

use crate::engine::ops::{LeaseOps, ReleaseOp, Verify};
use crate::key::LockKeys;
use crate::primitive::lock::add_extend;
use crate::scripts;
use crate::token::Token;

/// A reentrant grant's lease: the key holds the owner's token (the same for every grant to that
/// owner), so renewal and checks also compare the grant's fencing token in the holder info.
#[derive(Debug)]
pub(super) struct OwnerLease {
    pub keys: Arc<LockKeys>,
    pub owner: Token,
    pub grant: u64,
}

impl LeaseOps for OwnerLease {
    fn name(&self) -> &str {
        &self.keys.lock
    }
    fn slot(&self) -> &str {
        self.keys.slot()
    }
    fn renew_script(&self) -> &'static Script {
        &scripts::EXTEND
    }
    fn add_renew(&self, call: &mut ScriptInvocation<'_>, ttl: Duration) {
        add_extend(call, &self.keys, &self.owner, ttl, Some(self.grant));
    }
    fn verify(&self) -> Verify<'_> {
        // The key holds the owner's token; a later grant to the same owner is told apart at
        // the next renewal (which checks the fencing token too).
        Verify::KeyHolds {
            key: &self.keys.lock,
            value: self.owner.as_str(),
        }
    }
}

/// Which of an owner's grants a hold is removed from: the owner's token is the same for every
/// grant to it, so the fencing token tells them apart.
#[derive(Debug, Clone, Copy)]
pub(super) enum OfGrant {
    /// The grant with this fencing token (a guard's hold).
    This(u64),
    /// Whichever holds the acquisition id (undoing an acquisition whose reply never came).
    Any,
    /// Any but the grant with this fencing token (a Redlock attempt's stray write outside the
    /// grant it made or joined).
    NotThis(u64),
}

impl OfGrant {
    /// The release script's fencing-token argument.
    fn arg(self) -> String {
        match self {
            OfGrant::This(fence) => fence.to_string(),
            OfGrant::Any => String::new(),
            OfGrant::NotThis(fence) => format!("~{fence}"),
        }
    }
}

/// One hold (acquisition id) of an owner's grant, and how to remove it.
#[derive(Debug)]
pub(super) struct Hold {
    pub keys: Arc<LockKeys>,
    pub owner: Token,
    pub acquisition: Token,
    /// Which of the owner's grants the hold may be removed from.
    pub grant: OfGrant,
    /// No wake-up when the lock is freed (the rollback of a Redlock attempt).
    pub quiet: bool,
}

impl ReleaseOp for Hold {
    fn name(&self) -> &str {
        &self.keys.lock
    }
    fn slot(&self) -> &str {
        self.keys.slot()
    }
    fn release_script(&self) -> &'static Script {
        &scripts::REENTRANT_RELEASE
    }
    fn add_release(&self, call: &mut ScriptInvocation<'_>) {
        call.key(&self.keys.lock)
            .key(&self.keys.info)
            .key(&self.keys.holds)
            .arg(self.owner.as_str())
            .arg(self.acquisition.as_str())
            .arg(if self.quiet { "" } else { &self.keys.channel })
            .arg(self.grant.arg());
    }
    fn quieted(&self) -> Option<Arc<dyn ReleaseOp>> {
        Some(Arc::new(Hold {
            keys: self.keys.clone(),
            owner: self.owner.clone(),
            acquisition: self.acquisition.clone(),
            grant: self.grant,
            quiet: true,
        }))
    }
}
