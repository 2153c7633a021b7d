//! [`Semaphore`]: at most N permits out at once, each with its own lease.
//!
//! # Guarantee
//! While a [`SemaphorePermit`]'s lease is valid, the permits held by valid leases never add up
//! to more than the semaphore's limit. On Redlock a permit of an N-permit semaphore is granted
//! on more than `M·N/(N+1)` of the M masters, not on a bare majority: three holders of a
//! 2-permit semaphore could each sit on a different two of three masters, while no master
//! holds more than two. With that many, N+1 grants cannot fit (each master holds at most N).
//! The price is fewer masters that may be down (none for N ≥ 2 on three masters; one of five
//! for N ≤ 3). Each permit
//! is a member of a sorted set scored by its lease's end **on the server's clock** (`TIME`
//! inside every script), so a crashed holder's permit is free again within one TTL, and a
//! paused holder whose lease ran out loses its permit and is told so at its next renewal, as
//! a lock holder is. No client clock decides who holds a permit.
//!
//! The limit is stored with the semaphore: a caller naming another limit is refused with
//! [`Error::Config`] (two programs disagreeing on N would otherwise each enforce its own).
//! [`Semaphore::set_limit`] changes it on purpose. The stored limit lives as long as the
//! semaphore has holders or waiters.
//!
//! Every permit grant carries a fencing token larger than every earlier grant's for the same
//! name; holder info (host, pid, label, since) is kept per permit.
//!
//! # Limits
//! As for [`Lock`](crate::Lock): clocks (a paused process may act on an expired permit: check
//! [`SemaphorePermit::is_held`], use fencing), failover and restarts that lose data. Fair mode
//! and the replica guard need a single Redis (Sentinel or Cluster included), as for locks.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::{Script, ScriptInvocation, Value};

use crate::engine::acquire::{self, Acquire, Answer, Attempt, Busy, Grant, Queue};
use crate::engine::handle::{LeaseHandle, Shared};
use crate::engine::ops::{LeaseOps, ReleaseOp, Verify};
use crate::engine::pending::Pending;
use crate::engine::wait::Waiting;
use crate::engine::{Core, Terms};
use crate::error::{Conflict, Error, Result};
use crate::holder::{int, pttl};
use crate::key::LockKeys;
use crate::options::{LockOptions, FENCE_RETENTION};
use crate::scripts;
use crate::telemetry::Kind;
use crate::token::Token;
use crate::units::millis;

pub(crate) mod inspect;
mod permit;

pub use inspect::{SemaphoreHolder, SemaphoreStatus};
pub use permit::SemaphorePermit;

/// A counting semaphore whose permits expire with their holder's lease. Cheap to clone; made by
/// [`Client::semaphore`](crate::Client::semaphore) or
/// [`Client::semaphore_with`](crate::Client::semaphore_with).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), dlock::Error> {
/// # let server = dlock_test::RedisServer::start();
/// # let client = dlock::Client::connect(&server.url()).await?;
/// // At most 2 exports run at once, across every host.
/// let exports = client.semaphore("exports", 2)?;
/// let first = exports.try_acquire().await?;
/// let second = exports.try_acquire().await?;
/// let third = exports.try_acquire().await.unwrap_err();
/// assert!(third.is_conflict());
/// assert!(second.fencing_token() > first.fencing_token());
/// first.release().await?;
/// second.release().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Semaphore {
    core: Arc<Core>,
    keys: Arc<LockKeys>,
    /// The limit this handle names (shared by its clones; `set_limit` changes it).
    limit: Arc<AtomicU32>,
    options: Arc<LockOptions>,
}

impl Semaphore {
    pub(crate) fn new(
        core: Arc<Core>,
        keys: LockKeys,
        limit: u32,
        options: LockOptions,
    ) -> Result<Semaphore> {
        check_limit(limit)?;
        Ok(Semaphore {
            core,
            keys: Arc::new(keys),
            limit: Arc::new(AtomicU32::new(limit)),
            options: Arc::new(options),
        })
    }

    /// The semaphore's name (its Redis key).
    pub fn name(&self) -> &str {
        &self.keys.lock
    }

    /// How many permits there are in all (the limit this handle names).
    pub fn permits(&self) -> u32 {
        self.limit.load(Ordering::SeqCst)
    }

    /// The semaphore's settings.
    pub fn options(&self) -> &LockOptions {
        &self.options
    }

    /// Takes one permit if one is free (in fair mode: and nobody waits ahead), in one round
    /// trip; fails at once otherwise.
    ///
    /// # Errors
    /// [`Error::Conflict`] when no permit is free, naming the holders; [`Error::Config`] when
    /// the semaphore is stored with another limit; connection errors.
    ///
    /// # Cancel safety
    /// Dropping the future leaves no permit behind: if the request may have reached Redis, the
    /// permit is given back in the background (at worst, with Redis unreachable, it expires
    /// with its TTL).
    pub async fn try_acquire(&self) -> Result<SemaphorePermit> {
        self.try_acquire_many(1).await
    }

    /// Takes `n` permits at once (one lease for all), if they are free; fails at once
    /// otherwise.
    ///
    /// # Errors
    /// As [`Semaphore::try_acquire`], and [`Error::Config`] when `n` is 0 or above the limit
    /// (such a request could never be granted).
    ///
    /// # Cancel safety
    /// As [`Semaphore::try_acquire`].
    pub async fn try_acquire_many(&self, n: u32) -> Result<SemaphorePermit> {
        self.core
            .counted(Kind::Semaphore, self.name(), async {
                let attempt = self.for_permits(n)?;
                let pending = self.pending()?;
                match acquire::attempt(&self.core, &attempt, &pending, None).await? {
                    Attempt::Granted(permit) => Ok(permit),
                    Attempt::Busy(busy) => Err(Error::Conflict(busy.conflict)),
                }
            })
            .await
    }

    /// Takes one permit, waiting while none is free, up to the wait limit of the options
    /// ([`LockOptions::wait`], 30 s by default).
    ///
    /// Waiting does not poll: a release publishes a wake-up and waiters retry at once; a
    /// re-check no later than the first holder's lease end catches permits freed by expiry.
    /// In fair mode ([`LockOptions::fair`]) permits go out in arrival order: a waiter for 3
    /// permits is not overtaken by later waiters for 1.
    ///
    /// # Errors
    /// [`Error::Timeout`] when the wait limit passes; otherwise as
    /// [`Semaphore::try_acquire`].
    ///
    /// # Cancel safety
    /// A dropped future leaves no permit and no fair-queue entry behind (both undone in the
    /// background; at worst they expire with their leases).
    pub async fn acquire(&self) -> Result<SemaphorePermit> {
        self.acquire_many(1).await
    }

    /// Takes `n` permits at once (one lease for all), waiting as [`Semaphore::acquire`] does.
    ///
    /// # Errors
    /// As [`Semaphore::acquire`] and [`Semaphore::try_acquire_many`].
    ///
    /// # Cancel safety
    /// As [`Semaphore::acquire`].
    pub async fn acquire_many(&self, n: u32) -> Result<SemaphorePermit> {
        self.core
            .counted(Kind::Semaphore, self.name(), async {
                let attempt = self.for_permits(n)?;
                let pending = self.pending()?;
                self.waiting()
                    .wait_for(
                        &pending.token(),
                        |queue| acquire::attempt(&self.core, &attempt, &pending, queue),
                        |_| None,
                    )
                    .await
            })
            .await
    }

    /// Changes the stored limit to `limit` on purpose, and makes this handle (and its clones)
    /// name it. Holders above a smaller limit keep their permits; no new permit goes out until
    /// there is room under it. While the semaphore stays in use (holders or fair waiters),
    /// programs naming another limit are refused with [`Error::Config`]; once it is idle (and
    /// at least one TTL after this call), the stored limit is gone and the next caller's limit
    /// is stored, as for a new semaphore. Returns the previous stored limit, if any.
    ///
    /// On Redlock a raise is refused with [`Error::Config`] while anyone holds a permit: a
    /// permit granted under one limit sits on as many masters as that limit needed, and a
    /// larger limit needs more (old grants on fewer masters could add up to more than the new
    /// limit). Lowering is always allowed.
    ///
    /// # Errors
    /// [`Error::Config`] for a zero limit; connection errors.
    pub async fn set_limit(&self, limit: u32) -> Result<Option<u32>> {
        check_limit(limit)?;
        let previous = inspect::set_limit(&self.core, &self.keys, limit, self.options.ttl).await?;
        self.limit.store(limit, Ordering::SeqCst);
        Ok(previous)
    }

    /// The semaphore's state: stored limit, holders, permits free.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn status(&self) -> Result<SemaphoreStatus> {
        inspect::read(&self.core, &self.keys, inspect::Break::None).await
    }

    fn for_permits(&self, n: u32) -> Result<ForPermits<'_>> {
        let limit = self.permits();
        if n == 0 || n > limit {
            return Err(Error::Config(format!(
                "asked for {n} permits of semaphore {:?}, which has {limit}: a request for \
                 0 or more than the limit could never be granted",
                self.name()
            )));
        }
        Ok(ForPermits {
            semaphore: self,
            n,
            limit: AtomicU32::new(limit),
        })
    }

    fn pending(&self) -> Result<Pending> {
        let keys = self.keys.clone();
        Pending::new(
            self.core.watchdog().clone(),
            Box::new(move |token| Arc::new(Permit::new(keys.clone(), token))),
        )
    }

    fn waiting(&self) -> Waiting<'_> {
        Waiting {
            core: &self.core,
            channels: std::slice::from_ref(&self.keys.channel),
            options: &self.options,
            queue: self.options.fair,
            handoff: false,
            queue_deaf: self.options.fair,
        }
    }
}

/// A limit must allow one holder at least.
fn check_limit(limit: u32) -> Result<()> {
    if limit == 0 {
        return Err(Error::Config("a semaphore needs at least 1 permit".into()));
    }
    Ok(())
}

/// One acquisition of `n` permits: what the engine drives. Each attempt names the limit the
/// semaphore handle names then (a `set_limit` from a clone during a wait is followed), read
/// once per attempt (`call`) so the grant's quorum and lease agree with what was asked.
struct ForPermits<'a> {
    semaphore: &'a Semaphore,
    n: u32,
    /// The limit the current attempt names.
    limit: AtomicU32,
}

impl ForPermits<'_> {
    fn limit(&self) -> u32 {
        self.limit.load(Ordering::SeqCst)
    }
}

impl Acquire for ForPermits<'_> {
    type Guard = SemaphorePermit;

    fn options(&self) -> &LockOptions {
        &self.semaphore.options
    }

    fn holders(&self) -> u32 {
        self.limit()
    }

    fn call(&self, token: &Token, queue: Option<&Queue>) -> ScriptInvocation<'static> {
        let (keys, options) = (&self.semaphore.keys, &self.semaphore.options);
        let identity = self.semaphore.core.identity();
        self.limit.store(self.semaphore.permits(), Ordering::SeqCst);
        // -1: not fair; 0: fair, without queueing; > 0: fair, queued with this waiter lease.
        let mode: i64 = match (options.fair, queue) {
            (false, _) => -1,
            (true, None) => 0,
            (true, Some(queue)) => i64::try_from(millis(queue.lease)).unwrap_or(i64::MAX),
        };
        let mut call = scripts::SEMAPHORE_ACQUIRE.prepare_invoke();
        call.key(&keys.lock)
            .key(&keys.semaphore)
            .key(&keys.fence)
            .key(&keys.queue)
            .key(&keys.queue_leases)
            .arg(token.as_str())
            .arg(self.n)
            .arg(self.limit())
            .arg(millis(options.ttl))
            .arg(millis(FENCE_RETENTION))
            .arg(&identity.host)
            .arg(identity.pid)
            .arg(options.label.as_deref().unwrap_or(""))
            .arg(mode)
            .arg(&keys.channel);
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
        let semaphore = self.semaphore;
        let permit = Arc::new(Permit::new(semaphore.keys.clone(), grant.token));
        let terms = Terms {
            ttl: semaphore.options.ttl,
            renew: semaphore.options.renew,
            min_replicas: semaphore.options.min_replicas,
            holders: self.limit(),
            kind: Kind::Semaphore,
        };
        let lease = semaphore
            .core
            .track(permit.clone(), grant.fencing_token, terms, grant.sent_at);
        let handle = LeaseHandle::new(Shared::new(lease), semaphore.core.clone(), permit);
        SemaphorePermit::new(handle, self.n)
    }
}

/// Parses a busy answer: `{0, ms until the first lease ends, {holder json...}, server ms,
/// waiter-ahead lease ms, limit}`.
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
        fence_seen: None,
        split: false,
    }
}

/// One permit grant: the semaphore's keys and the grant's token. How the engine renews, checks
/// and releases it.
#[derive(Debug)]
pub(crate) struct Permit {
    keys: Arc<LockKeys>,
    token: Token,
    /// Released without the wake-up for everyone (see `ReleaseOp::quieted`).
    quiet: bool,
}

impl Permit {
    fn new(keys: Arc<LockKeys>, token: Token) -> Permit {
        Permit {
            keys,
            token,
            quiet: false,
        }
    }
}

impl LeaseOps for Permit {
    fn name(&self) -> &str {
        &self.keys.lock
    }
    fn slot(&self) -> &str {
        self.keys.slot()
    }
    fn renew_script(&self) -> &'static Script {
        &scripts::SEMAPHORE_RENEW
    }
    fn add_renew(&self, call: &mut ScriptInvocation<'_>, ttl: Duration) {
        call.key(&self.keys.lock)
            .key(&self.keys.semaphore)
            .arg(self.token.as_str())
            .arg(millis(ttl));
    }
    fn verify(&self) -> Verify<'_> {
        // A permit is ours while its lease runs on the server's clock: only a script can tell.
        Verify::Script(&scripts::SEMAPHORE_VERIFY)
    }
    fn add_verify(&self, call: &mut ScriptInvocation<'_>) {
        call.key(&self.keys.lock).arg(self.token.as_str());
    }
}

impl ReleaseOp for Permit {
    fn name(&self) -> &str {
        &self.keys.lock
    }
    fn slot(&self) -> &str {
        self.keys.slot()
    }
    fn release_script(&self) -> &'static Script {
        &scripts::SEMAPHORE_RELEASE
    }
    fn add_release(&self, call: &mut ScriptInvocation<'_>) {
        call.key(&self.keys.lock)
            .key(&self.keys.semaphore)
            .key(&self.keys.queue)
            .key(&self.keys.queue_leases)
            .arg(self.token.as_str())
            .arg(&self.keys.channel)
            .arg(if self.quiet { "1" } else { "0" });
    }
    fn quieted(&self) -> Option<Arc<dyn ReleaseOp>> {
        Some(Arc::new(Permit {
            keys: self.keys.clone(),
            token: self.token.clone(),
            quiet: true,
        }))
    }
}
