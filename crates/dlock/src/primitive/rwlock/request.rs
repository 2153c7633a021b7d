//! One acquisition of one side of a read-write lock, as the engine drives it: the acquire call,
//! its answer, and the hold a grant or a hand-off makes.

use std::sync::Arc;

use redis::{ScriptInvocation, Value};

use super::{RwHold, RwLock, Side};
use crate::engine::acquire::{Acquire, Answer, Busy, Grant, Queue};
use crate::engine::handle::{LeaseHandle, Shared};
use crate::engine::lease::Lease;
use crate::engine::wait::Handoff;
use crate::engine::Terms;
use crate::error::{Conflict, Error, Result};
use crate::holder::{int, pttl, HolderInfo};
use crate::key::LockKeys;
use crate::options::{LockOptions, FENCE_RETENTION};
use crate::scripts;
use crate::token::Token;
use crate::units::millis;

/// One acquisition of one side: what the engine drives.
pub(super) struct ForSide<'a> {
    pub(super) lock: &'a RwLock,
    pub(super) side: Side,
    /// A Redlock writer's id in the wait queue (`None`: the attempt's token).
    pub(super) waiter: Option<Token>,
}

impl Acquire for ForSide<'_> {
    type Guard = LeaseHandle;

    fn options(&self) -> &LockOptions {
        &self.lock.options
    }

    fn slot(&self) -> &str {
        self.lock.keys.base.slot()
    }

    fn call(&self, token: &Token, queue: Option<&Queue>) -> ScriptInvocation<'static> {
        let (keys, options) = (&self.lock.keys, &self.lock.options);
        let identity = self.lock.core.identity();
        let hears = queue.is_some_and(|queue| queue.hears);
        let claim = match self.lock.hands_off() && hears {
            true => millis(options.claim_lease()),
            false => 0,
        };
        let mut call = scripts::RW_ACQUIRE.prepare_invoke();
        call.key(&keys.base.lock)
            .key(&keys.base.info)
            .key(&keys.base.fence)
            .key(&keys.readers)
            .key(&keys.reader_info)
            .key(&keys.queue)
            .key(&keys.queue_leases)
            .key(&keys.base.queue_leases)
            .key(&keys.waiters)
            .arg(token.as_str())
            .arg(millis(options.ttl))
            .arg(millis(FENCE_RETENTION))
            .arg(&identity.host)
            .arg(identity.pid)
            .arg(options.label.as_deref().unwrap_or(""))
            .arg(self.side.as_str())
            .arg(if options.fair { "1" } else { "0" })
            .arg(queue.map_or(0, |queue| millis(queue.lease)))
            .arg(claim)
            .arg(queue.and_then(|queue| queue.inbox.as_deref()).unwrap_or(""))
            .arg(self.waiter.as_ref().map_or("", Token::as_str));
        call
    }

    /// A writer proposes its fencing token (one round trip, the same token on every master);
    /// a reader's token is the last write's, so it does not.
    fn propose(
        &self,
        token: &Token,
        queue: Option<&Queue>,
        fence: u64,
    ) -> Option<ScriptInvocation<'static>> {
        (self.side == Side::Write).then(|| {
            let mut call = self.call(token, queue);
            call.arg(fence);
            call
        })
    }

    fn parse(&self, reply: &[Value]) -> Result<Answer> {
        let code = reply.first().and_then(int);
        if code != Some(1) && code != Some(2) {
            return Ok(Answer::Busy(busy(&self.lock.keys.base, reply)));
        }
        let fence = reply
            .get(1)
            .and_then(int)
            .and_then(|t| u64::try_from(t).ok())
            .ok_or_else(|| Error::Internal(format!("read-write acquire returned {reply:?}")))?;
        Ok(match code {
            Some(2) => Answer::Low { counter: fence },
            _ => Answer::Granted { fence, fresh: true },
        })
    }

    /// Redlock: a writer proposes its token (see `propose`), so this write-back is a lock's, for
    /// completeness (its token is in the name's key). A reader's
    /// token is the largest counter a majority answered: at least the last completed write's
    /// (written back to a majority, which meets the reader's); raising the counters of the
    /// reader's majority to it keeps it below every later write's.
    fn raise_fence(&self, token: &Token, fence: u64) -> ScriptInvocation<'static> {
        let keys = &self.lock.keys;
        match self.side {
            Side::Write => crate::primitive::lock::raise_fence_call(&keys.base, token, fence),
            Side::Read => {
                let mut call = scripts::RW_FENCE_RAISE.prepare_invoke();
                call.key(&keys.base.fence)
                    .key(&keys.readers)
                    .key(&keys.base.lock)
                    .arg(fence)
                    .arg(millis(FENCE_RETENTION))
                    .arg(token.as_str());
                call
            }
        }
    }

    fn granted(&self, grant: Grant) -> LeaseHandle {
        self.handle(grant.token, |hold| {
            let core = &self.lock.core;
            core.track(hold, grant.fencing_token, self.terms(), grant.sent_at)
        })
    }
}

impl ForSide<'_> {
    /// The new lease's terms.
    fn terms(&self) -> Terms {
        let options = &self.lock.options;
        Terms {
            ttl: options.ttl,
            renew: options.renew,
            min_replicas: options.min_replicas,
            holders: 1,
            kind: self.side.kind(),
        }
    }

    /// The hold a release handed to `token` (see `rwlock/release.lua`): valid for the claim
    /// lease from the grant (see `Handoff::since`), renewed to the full TTL by the watchdog.
    pub(super) fn handed(&self, token: Token, handoff: Handoff) -> LeaseHandle {
        self.handle(token, |hold| {
            let core = &self.lock.core;
            core.track_handed(
                hold,
                handoff.fence,
                self.terms(),
                handoff.since,
                handoff.claim,
            )
        })
    }

    /// The handle over `token`'s hold, its lease tracked by `track`.
    fn handle(&self, token: Token, track: impl FnOnce(Arc<RwHold>) -> Arc<Lease>) -> LeaseHandle {
        let lock = self.lock;
        let hold = Arc::new(RwHold::new(lock.keys.clone(), token, self.side));
        let lease = track(hold.clone());
        LeaseHandle::new(Shared::new(lease), lock.core.clone(), hold)
    }
}

/// Parses a busy answer: `{0, pttl, holder info fields, server ms, ms until the earliest
/// waiter lease ends, {reader JSON…}, fencing counter}`. The conflict names the readers when readers hold it,
/// else the writer (or plain lock holder).
fn busy(keys: &LockKeys, reply: &[Value]) -> Busy {
    let field = |i: usize| reply.get(i).unwrap_or(&Value::Nil);
    let server_now_ms = int(field(3))
        .and_then(|ms| u64::try_from(ms).ok())
        .unwrap_or(0);
    let holder = HolderInfo::parse(field(2), server_now_ms);
    let readers: Vec<HolderInfo> = match field(5) {
        Value::Array(items) => items
            .iter()
            .filter_map(|item| {
                crate::primitive::semaphore::inspect::parse_holder(item, server_now_ms)
            })
            .map(|reader| HolderInfo {
                readers: 1,
                ..reader.info
            })
            .collect(),
        _ => Vec::new(),
    };
    // Readers holding it, or (no holder at all) a queued writer's place holding the free lock
    // back: either stands for one holder when telling a held lock from a split vote.
    let shared = !readers.is_empty() || holder.is_none();
    Busy {
        conflict: Box::new(Conflict {
            key: keys.lock.clone(),
            ttl_left: pttl(field(1)),
            holders: match readers.is_empty() {
                true => holder.iter().cloned().collect(),
                false => readers,
            },
            holder,
            limit: None,
        }),
        ahead_lease_left: pttl(field(4)),
        sent: None,
        server_ms: (server_now_ms > 0).then_some(server_now_ms),
        fence_seen: int(field(6)).and_then(|fence| u64::try_from(fence).ok()),
        split: false,
        shared,
    }
}
