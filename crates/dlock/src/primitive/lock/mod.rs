//! [`Lock`]: a named lease lock, and the operations its leases give the engine.
//!
//! # Guarantee
//! While a [`LockGuard`] is held (its lease valid), no other owner holds the same name on the
//! same Redis: the key is set only when absent, holds a 128-bit owner token, and is extended or
//! deleted only by a script that checks that token.
//!
//! # Limits
//! - **Clocks.** The guard's validity runs on this process's monotonic clock, conservatively
//!   (from the request's send time, minus 1% + 2 ms of drift). A process paused for longer than
//!   its lease (GC, VM freeze, SIGSTOP) can wake up believing it still holds the lock: check
//!   [`LockGuard::is_held`] before acting, and use the fencing token with storage that can
//!   reject stale writers. A host suspend that the Linux kernel counts in `CLOCK_BOOTTIME`
//!   (the monotonic clock skips it) is subtracted from the validity, so after such a sleep
//!   `is_held` is false and the watchdog reports the loss at its next renewal.
//! - **Failover and restarts.** A replica promoted before it received the lock, or a restart
//!   that lost data, forgets the lock, and a second owner can get it. Fencing tokens still
//!   increase (they never go below the server's clock), so fenced storage stays safe.
//! - **Crash.** A holder that dies without releasing blocks others for at most one TTL.

use std::sync::Arc;
use std::time::Duration;

use redis::{Script, ScriptInvocation, Value};

use crate::engine::acquire::{self, Acquire, Answer, Attempt, Busy, Grant, Queue};
use crate::engine::handle::{LeaseHandle, Shared};
use crate::engine::lease::Lease;
use crate::engine::pending::Pending;
use crate::engine::wait::{Handoff, Riding, Waiting};
use crate::engine::{Core, Terms};
use crate::error::{Conflict, Error, Result};
use crate::holder::{int, pttl, HolderInfo};
use crate::key::LockKeys;
use crate::options::{LockOptions, FENCE_RETENTION};
use crate::scripts;
use crate::telemetry::Kind;
use crate::token::Token;
use crate::units::millis;

mod guard;
mod held;
pub(crate) mod inspect;

pub use guard::LockGuard;
pub(crate) use held::Held;

/// A named lease lock. Cheap to clone; made by [`Client::lock`](crate::Client::lock) or
/// [`Client::lock_with`](crate::Client::lock_with).
///
/// The lock is not reentrant: a holder that locks it again waits (or fails) like anyone else.
#[derive(Debug, Clone)]
pub struct Lock {
    core: Arc<Core>,
    keys: Arc<LockKeys>,
    options: Arc<LockOptions>,
}

impl Lock {
    pub(crate) fn new(core: Arc<Core>, keys: LockKeys, options: LockOptions) -> Lock {
        Lock {
            core,
            keys: Arc::new(keys),
            options: Arc::new(options),
        }
    }

    /// The lock's name (its Redis key).
    pub fn name(&self) -> &str {
        &self.keys.lock
    }

    /// The lock's settings.
    pub fn options(&self) -> &LockOptions {
        &self.options
    }

    /// Takes the lock if it is free, in one round trip; fails at once if it is held.
    ///
    /// # Errors
    /// [`Error::Conflict`] when another owner holds it, with the holder and its remaining TTL;
    /// [`Error::Unavailable`] (on Redlock [`Error::Quorum`], naming each master's failure),
    /// [`Error::Auth`] or [`Error::Redis`] when Redis fails.
    ///
    /// # Cancel safety
    /// Dropping the future leaves no lock behind: if the request may already have reached
    /// Redis, a compare-and-delete with this attempt's token is sent in the background (it
    /// touches nothing if the lock was never set). At worst, if Redis is unreachable then too,
    /// the lock expires with its TTL.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), dlock::Error> {
    /// # let server = dlock_test::RedisServer::start();
    /// let url = "redis://127.0.0.1/";
    /// # let url = &server.url();
    /// let client = dlock::Client::connect(url).await?;
    /// match client.lock("main:hello")?.try_lock().await {
    ///     Ok(guard) => { /* run the job */ guard.release().await?; }
    ///     Err(dlock::Error::Conflict(busy)) => eprintln!("{busy}"),
    ///     Err(other) => return Err(other),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn try_lock(&self) -> Result<LockGuard> {
        self.core
            .counted(Kind::Lock, self.name(), async {
                let pending = self.pending()?;
                match acquire::attempt(&self.core, self, &pending, None).await? {
                    Attempt::Granted(guard) => Ok(guard),
                    Attempt::Busy(busy) => Err(Error::Conflict(busy.conflict)),
                }
            })
            .await
    }

    /// Takes the lock, waiting while it is held, up to the wait limit of its options
    /// ([`LockOptions::wait`], 30 s by default).
    ///
    /// Waiting does not poll: the waiter joins the lock's wait queue and subscribes to its
    /// release channel, and a release hands the lock to the head of the queue in the same
    /// script call, publishing the grant ([`LockOptions::handoff`]): waiters are served in
    /// arrival order, and the new holder starts without a round trip of its own. A waiter that
    /// arrives while another task of this client holds the lock joins the queue with that
    /// task's release, in the same script call (if that release comes within 20 ms; else it
    /// queues on its own). A timed
    /// re-check ([`LockOptions::recheck`], never later than the holder's remaining TTL)
    /// catches what publishes nothing, such as a crashed holder's lease running out or a lost
    /// message. Brief Redis outages are ridden out with backoff.
    ///
    /// # Errors
    /// [`Error::Timeout`] when the wait limit passes (naming the last holder seen);
    /// [`Error::Unavailable`] (on Redlock [`Error::Quorum`]) when Redis was unreachable at the
    /// end of the wait;
    /// [`Error::Auth`] or [`Error::Redis`] at once.
    ///
    /// # Cancel safety
    /// A dropped future leaves no lock behind (at worst one that expires with its TTL when
    /// Redis is unreachable), no fair-queue entry (withdrawn in the background; at worst it
    /// expires with its waiter lease), and no subscription.
    pub async fn lock(&self) -> Result<LockGuard> {
        self.core
            .counted(Kind::Lock, self.name(), async {
                let pending = self.pending()?;
                let handed = |handoff: Handoff| {
                    pending.settled();
                    Some(self.handed(pending.token(), handoff))
                };
                let mut waiting = self.waiting();
                if self.rides() {
                    waiting.ride = Some(Riding {
                        board: &self.keys.channel,
                        pending: &pending,
                    });
                }
                waiting
                    .wait_for(
                        &pending.token(),
                        |queue| acquire::attempt(&self.core, self, &pending, queue),
                        handed,
                    )
                    .await
            })
            .await
    }

    /// This lock's state (see [`Client::status`](crate::Client::status)).
    ///
    /// # Errors
    /// Connection errors.
    pub async fn status(&self) -> Result<crate::LockStatus> {
        inspect::inspect(&self.core, &self.keys, false).await
    }

    pub(crate) fn pending(&self) -> Result<Pending> {
        let keys = self.keys.clone();
        Pending::new(
            self.core.watchdog().clone(),
            Box::new(move |token| Arc::new(Held::new(keys.clone(), token))),
        )
    }

    /// Whether this lock's waiters take hand-offs (see [`LockOptions::takes_handoffs`]).
    fn hands_off(&self) -> bool {
        self.options.takes_handoffs(self.core.nodes().is_single())
    }

    /// Whether this lock's waiters may ride on the release of another task of this client
    /// (see `engine::riders`): they take hand-offs, and not in fair mode, which promises the
    /// order in which waiters started waiting, where a rider reaches Redis only with the
    /// release that carries it.
    fn rides(&self) -> bool {
        self.hands_off() && !self.options.fair
    }

    /// The guard for a grant a release handed to `token` (see `handoff.lua`): valid for the
    /// claim lease from the grant (see `Handoff::since`), renewed to the full TTL by the watchdog.
    fn handed(&self, token: Token, handoff: Handoff) -> LockGuard {
        self.guard(token, |held| {
            let (fence, terms) = (handoff.fence, self.terms());
            self.core
                .track_handed(held, fence, terms, handoff.since, handoff.claim)
        })
    }

    /// The guard for a grant another primitive's script made of this lock (a multi-key lock's
    /// member): `token` holds it with fencing token `fence` since the call sent at `sent_at`.
    pub(crate) fn adopt(
        &self,
        token: Token,
        fence: u64,
        sent_at: tokio::time::Instant,
    ) -> LockGuard {
        self.guard(token, |held| {
            self.core.track(held, fence, self.terms(), sent_at)
        })
    }

    /// The guard over `token`'s lease, tracked by `track` (a grant's or a hand-off's terms).
    fn guard(&self, token: Token, track: impl FnOnce(Arc<Held>) -> Arc<Lease>) -> LockGuard {
        let held = Arc::new(Held::new(self.keys.clone(), token));
        let lease = track(held.clone());
        let handle = LeaseHandle::new(Shared::new(lease), self.core.clone(), held.clone());
        // While it lives, this client's waiters on the lock may ride on its release.
        let holding = self
            .core
            .nodes()
            .is_single()
            .then(|| self.core.riders().hold(&self.keys.channel));
        LockGuard::new(handle, held, holding)
    }

    /// Where this lock's waiters wait.
    pub(crate) fn waiting(&self) -> Waiting<'_> {
        Waiting {
            core: &self.core,
            channels: std::slice::from_ref(&self.keys.channel),
            options: &self.options,
            queue: self.options.fair || self.hands_off(),
            handoff: self.hands_off(),
            queue_deaf: self.options.fair,
            ride: None,
        }
    }

    pub(crate) fn core(&self) -> &Arc<Core> {
        &self.core
    }

    pub(crate) fn keys(&self) -> &Arc<LockKeys> {
        &self.keys
    }

    /// The terms of a lease of another primitive built on this lock (a reentrant lock's).
    pub(crate) fn terms_of(&self, kind: Kind) -> Terms {
        Terms {
            kind,
            ..self.terms()
        }
    }

    /// The new lease's terms.
    pub(crate) fn terms(&self) -> Terms {
        Terms {
            ttl: self.options.ttl,
            renew: self.options.renew,
            min_replicas: self.options.min_replicas,
            holders: 1,
            kind: Kind::Lock,
        }
    }
}

impl Acquire for Lock {
    type Guard = LockGuard;

    fn options(&self) -> &LockOptions {
        &self.options
    }

    fn slot(&self) -> &str {
        self.keys.slot()
    }

    fn call(&self, token: &Token, queue: Option<&Queue>) -> ScriptInvocation<'static> {
        if queue.is_none() && !self.options.fair {
            return self.grant_call(&scripts::ACQUIRE_FREE, token);
        }
        let options = &self.options;
        let claim = match self.hands_off() && queue.is_some_and(|queue| queue.hears) {
            true => millis(options.claim_lease()),
            false => 0,
        };
        let mut call = self.grant_call(&scripts::ACQUIRE, token);
        call.key(&self.keys.queue)
            .key(&self.keys.queue_leases)
            .key(&self.keys.waiters)
            .arg(if options.fair { "fair" } else { "plain" })
            .arg(queue.map_or(0, |queue| millis(queue.lease)))
            .arg(&self.keys.channel)
            .arg(claim)
            .arg(queue.and_then(|queue| queue.inbox.as_deref()).unwrap_or(""));
        call
    }

    /// Plain locks propose their fencing token on Redlock (fair ones are single-node only).
    fn propose(
        &self,
        token: &Token,
        _queue: Option<&Queue>,
        fence: u64,
    ) -> Option<ScriptInvocation<'static>> {
        if self.options.fair {
            return None;
        }
        let mut call = self.grant_call(&scripts::ACQUIRE_PROPOSED, token);
        call.arg(fence);
        Some(call)
    }

    fn parse(&self, reply: &[Value]) -> Result<Answer> {
        let code = reply.first().and_then(int);
        if code != Some(1) && code != Some(2) {
            return Ok(Answer::Busy(busy(&self.keys, reply)));
        }
        let fence = reply
            .get(1)
            .and_then(int)
            .and_then(|t| u64::try_from(t).ok())
            .ok_or_else(|| Error::Internal(format!("acquire returned {reply:?}")))?;
        Ok(match code {
            Some(2) => Answer::Low { counter: fence },
            _ => Answer::Granted { fence, fresh: true },
        })
    }

    fn raise_fence(&self, token: &Token, fence: u64) -> ScriptInvocation<'static> {
        raise_fence_call(&self.keys, token, fence)
    }

    fn granted(&self, grant: Grant) -> LockGuard {
        self.guard(grant.token, |held| {
            let terms = self.terms();
            self.core
                .track(held, grant.fencing_token, terms, grant.sent_at)
        })
    }
}

impl Lock {
    /// An acquire call by `script` for `token`: the lock, holder info and fencing counter keys,
    /// the token, TTL, counter retention and holder identity (a script's own arguments follow).
    fn grant_call(&self, script: &'static Script, token: &Token) -> ScriptInvocation<'static> {
        let identity = self.core.identity();
        let mut call = script.prepare_invoke();
        call.key(&self.keys.lock)
            .key(&self.keys.info)
            .key(&self.keys.fence)
            .arg(token.as_str())
            .arg(millis(self.options.ttl))
            .arg(millis(FENCE_RETENTION))
            .arg(&identity.host)
            .arg(identity.pid)
            .arg(self.options.label.as_deref().unwrap_or(""));
        call
    }
}

/// Redlock's fencing write-back for a lock's key held by `token` (see `fence_raise.lua`): also
/// what the primitives whose holds are plain lock keys (a writer, a multi-key lock's members)
/// would send, were they allowed on Redlock.
pub(crate) fn raise_fence_call(
    keys: &LockKeys,
    token: &Token,
    fence: u64,
) -> ScriptInvocation<'static> {
    let mut call = scripts::FENCE_RAISE.prepare_invoke();
    call.key(&keys.fence)
        .key(&keys.info)
        .key(&keys.lock)
        .arg(fence)
        .arg(millis(FENCE_RETENTION))
        .arg(token.as_str());
    call
}

/// Parses a busy answer: `{0, pttl, holder info, server time ms[, waiter-ahead lease ms or -1,
/// fencing counter]}`.
pub(crate) fn busy(keys: &LockKeys, reply: &[Value]) -> Busy {
    let field = |i: usize| reply.get(i).unwrap_or(&Value::Nil);
    let server_now_ms = int(field(3))
        .and_then(|ms| u64::try_from(ms).ok())
        .unwrap_or(0);
    let holder = HolderInfo::parse(field(2), server_now_ms);
    Busy {
        conflict: Box::new(Conflict {
            key: keys.lock.clone(),
            ttl_left: pttl(field(1)),
            holders: holder.iter().cloned().collect(),
            holder,
            limit: None,
        }),
        ahead_lease_left: pttl(field(4)),
        sent: None,
        server_ms: (server_now_ms > 0).then_some(server_now_ms),
        fence_seen: int(field(5)).and_then(|fence| u64::try_from(fence).ok()),
        split: false,
        shared: false,
    }
}

/// Adds one lease to an `EXTEND` call: its three keys, then its token, new TTL and, for a
/// reentrant lease, its grant's fencing token (see `extend.lua`).
pub(crate) fn add_extend(
    call: &mut ScriptInvocation<'_>,
    keys: &LockKeys,
    token: &Token,
    ttl: Duration,
    grant: Option<u64>,
) {
    call.key(&keys.lock)
        .key(&keys.info)
        .key(&keys.holds)
        .arg(token.as_str())
        .arg(millis(ttl))
        .arg(grant.map(|fence| fence.to_string()).unwrap_or_default());
}
