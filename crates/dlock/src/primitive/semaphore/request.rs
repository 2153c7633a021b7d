//! One acquisition of a semaphore's permits, as the engine drives it: the acquire call, its
//! answer, and the permit a grant or a hand-off makes.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use redis::{ScriptInvocation, Value};

use super::{inspect, Permit, Semaphore, SemaphorePermit};
use crate::engine::acquire::{Acquire, Answer, Busy, Grant, Queue};
use crate::engine::handle::{LeaseHandle, Shared};
use crate::engine::lease::Lease;
use crate::engine::wait::Handoff;
use crate::engine::Terms;
use crate::error::{Conflict, Error, Result};
use crate::holder::{int, pttl};
use crate::key::LockKeys;
use crate::options::{LockOptions, FENCE_RETENTION};
use crate::scripts;
use crate::telemetry::Kind;
use crate::token::Token;
use crate::units::millis;

/// One acquisition of `n` permits: what the engine drives. Each attempt names the limit the
/// semaphore handle names then (a `set_limit` from a clone during a wait is followed), read
/// once per attempt (`call`) so the grant's quorum and lease agree with what was asked.
pub(super) struct ForPermits<'a> {
    pub(super) semaphore: &'a Semaphore,
    pub(super) n: u32,
    /// The limit the current attempt names.
    pub(super) limit: AtomicU32,
}

impl ForPermits<'_> {
    fn limit(&self) -> u32 {
        self.limit.load(Ordering::SeqCst)
    }

    /// The new lease's terms.
    fn terms(&self) -> Terms {
        let options = &self.semaphore.options;
        Terms {
            ttl: options.ttl,
            renew: options.renew,
            min_replicas: options.min_replicas,
            holders: self.limit(),
            kind: Kind::Semaphore,
        }
    }

    /// The permit a release handed to `token` (see `semaphore/release.lua`): valid for the
    /// claim lease from the grant (see `Handoff::since`), renewed to the full TTL by the watchdog.
    pub(super) fn handed(&self, token: Token, handoff: Handoff) -> SemaphorePermit {
        self.permit(token, |permit| {
            self.semaphore.core.track_handed(
                permit,
                handoff.fence,
                self.terms(),
                handoff.since,
                handoff.claim,
            )
        })
    }

    /// The permit held by `token`, its lease tracked by `track`.
    fn permit(
        &self,
        token: Token,
        track: impl FnOnce(Arc<Permit>) -> Arc<Lease>,
    ) -> SemaphorePermit {
        let semaphore = self.semaphore;
        let permit = Arc::new(Permit::new(semaphore.keys.clone(), token));
        let lease = track(permit.clone());
        let handle = LeaseHandle::new(Shared::new(lease), semaphore.core.clone(), permit);
        SemaphorePermit::new(handle, self.n)
    }
}

impl Acquire for ForPermits<'_> {
    type Guard = SemaphorePermit;

    fn options(&self) -> &LockOptions {
        &self.semaphore.options
    }

    fn slot(&self) -> &str {
        self.semaphore.keys.slot()
    }

    fn holders(&self) -> u32 {
        self.limit()
    }

    fn call(&self, token: &Token, queue: Option<&Queue>) -> ScriptInvocation<'static> {
        let (keys, options) = (&self.semaphore.keys, &self.semaphore.options);
        let identity = self.semaphore.core.identity();
        self.limit.store(self.semaphore.permits(), Ordering::SeqCst);
        let claim = match self.semaphore.hands_off() && queue.is_some_and(|queue| queue.hears) {
            true => millis(options.claim_lease()),
            false => 0,
        };
        let mut call = scripts::SEMAPHORE_ACQUIRE.prepare_invoke();
        super::add_keys(&mut call, keys);
        call.arg(token.as_str())
            .arg(self.n)
            .arg(self.limit())
            .arg(millis(options.ttl))
            .arg(millis(FENCE_RETENTION))
            .arg(&identity.host)
            .arg(identity.pid)
            .arg(options.label.as_deref().unwrap_or(""))
            .arg(queue.map_or(0, |queue| millis(queue.lease)))
            .arg(&keys.channel)
            .arg(if options.fair { "fair" } else { "plain" })
            .arg(claim)
            .arg(queue.and_then(|queue| queue.inbox.as_deref()).unwrap_or(""));
        call
    }

    fn parse(&self, reply: &[Value]) -> Result<Answer> {
        let field = |i: usize| reply.get(i).unwrap_or(&Value::Nil);
        match int(field(0)) {
            Some(1) => {
                let fence = int(field(1))
                    .and_then(|t| u64::try_from(t).ok())
                    .ok_or_else(|| Error::Internal(format!("semaphore grant {reply:?}")))?;
                Ok(Answer::Granted { fence, fresh: true })
            }
            Some(-1) => Err(Error::Config(format!(
                "semaphore {:?} is in use with {} permits, not {}; name the same limit \
                 everywhere, or change it on purpose with Semaphore::set_limit",
                self.semaphore.name(),
                int(field(1)).unwrap_or(-1),
                self.semaphore.permits()
            ))),
            _ => Ok(Answer::Busy(busy(
                &self.semaphore.keys,
                reply,
                self.semaphore.permits(),
            ))),
        }
    }

    fn raise_fence(&self, token: &Token, fence: u64) -> ScriptInvocation<'static> {
        let keys = &self.semaphore.keys;
        let mut call = scripts::SEMAPHORE_FENCE_RAISE.prepare_invoke();
        call.key(&keys.fence)
            .key(&keys.semaphore)
            .key(&keys.lock)
            .arg(fence)
            .arg(millis(FENCE_RETENTION))
            .arg(token.as_str());
        call
    }

    fn granted(&self, grant: Grant) -> SemaphorePermit {
        self.permit(grant.token, |permit| {
            let core = &self.semaphore.core;
            core.track(permit, grant.fencing_token, self.terms(), grant.sent_at)
        })
    }
}

/// Parses a busy answer: `{0, ms until the first lease ends, {holder json...}, server ms,
/// waiter-ahead lease ms, limit, fencing counter}`.
fn busy(keys: &LockKeys, reply: &[Value], asked: u32) -> Busy {
    let field = |i: usize| reply.get(i).unwrap_or(&Value::Nil);
    let server_now_ms = int(field(3))
        .and_then(|ms| u64::try_from(ms).ok())
        .unwrap_or(0);
    let holders: Vec<_> = match field(2) {
        Value::Array(items) => items
            .iter()
            .filter_map(|item| inspect::parse_holder(item, server_now_ms))
            .map(|holder| holder.info)
            .collect(),
        _ => Vec::new(),
    };
    let limit = int(field(5)).and_then(|n| u32::try_from(n).ok());
    Busy {
        conflict: Box::new(Conflict {
            key: keys.lock.clone(),
            ttl_left: pttl(field(1)),
            holder: holders.first().cloned(),
            holders,
            limit: Some(limit.unwrap_or(asked)),
        }),
        ahead_lease_left: pttl(field(4)),
        sent: None,
        server_ms: (server_now_ms > 0).then_some(server_now_ms),
        fence_seen: int(field(6)).and_then(|fence| u64::try_from(fence).ok()),
        split: false,
        shared: false,
    }
}
