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

use redis::{Script, ScriptInvocation};

use crate::engine::acquire::{self, Attempt};
use crate::engine::ops::{LeaseOps, ReleaseOp, Verify};
use crate::engine::pending::Pending;
use crate::engine::wait::{Handoff, Waiting};
use crate::engine::Core;
use crate::error::{Error, Result};
use crate::key::LockKeys;
use crate::options::{LockOptions, FENCE_RETENTION};
use crate::scripts;
use crate::telemetry::Kind;
use crate::token::Token;
use crate::units::millis;
use request::ForPermits;

pub(crate) mod inspect;
mod permit;
mod request;

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
    /// Waiting does not poll: the waiter joins the semaphore's wait queue and subscribes to
    /// its release channel, and a release hands the permits it frees to the waiters at the
    /// head of the queue whose permits fit, in the same script call, publishing each grant
    /// ([`LockOptions::handoff`]): the new holder starts without a round trip of its own. A
    /// timed re-check, no later than the first holder's lease end, catches permits freed by
    /// expiry. Outside fair mode a free permit goes to whoever asks, and a release wakes
    /// everyone when the queue's head needs more permits than are free. In fair mode
    /// ([`LockOptions::fair`]) permits go out in arrival order: a waiter for 3 permits is not
    /// overtaken by later waiters for 1.
    ///
    /// # Errors
    /// [`Error::Timeout`] when the wait limit passes; otherwise as
    /// [`Semaphore::try_acquire`].
    ///
    /// # Cancel safety
    /// A dropped future leaves no permit and no queue entry behind (both undone in the
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
                let handed = |handoff: Handoff| {
                    pending.settled();
                    Some(attempt.handed(pending.token(), handoff))
                };
                self.waiting()
                    .wait_for(
                        &pending.token(),
                        |queue| acquire::attempt(&self.core, &attempt, &pending, queue),
                        handed,
                    )
                    .await
            })
            .await
    }

    /// Changes the stored limit to `limit` on purpose, and makes this handle (and its clones)
    /// name it. Holders above a smaller limit keep their permits; no new permit goes out until
    /// there is room under it. While the semaphore stays in use (holders or waiters),
    /// programs naming another limit are refused with [`Error::Config`]; once it is idle (and
    /// at least one TTL after this call), the stored limit is gone and the next caller's limit
    /// is stored, as for a new semaphore. Returns the previous stored limit, if any. The room a
    /// raise makes is handed to queued waiters in the same call, as a release's is.
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
            queue: self.options.fair || self.hands_off(),
            handoff: self.hands_off(),
            queue_deaf: self.options.fair,
            ride: None,
        }
    }

    /// Whether this semaphore's waiters take hand-offs (see [`LockOptions::takes_handoffs`]).
    fn hands_off(&self) -> bool {
        self.options.takes_handoffs(self.core.nodes().is_single())
    }
}

/// Adds the keys every semaphore script that passes permits on takes, in its order (see
/// `semaphore/queue.lua`): holders, hash, fencing counter, wait queue, waiter leases, hand-off
/// terms.
fn add_keys(call: &mut ScriptInvocation<'_>, keys: &LockKeys) {
    call.key(&keys.lock)
        .key(&keys.semaphore)
        .key(&keys.fence)
        .key(&keys.queue)
        .key(&keys.queue_leases)
        .key(&keys.waiters);
}

/// A limit must allow one holder at least.
fn check_limit(limit: u32) -> Result<()> {
    if limit == 0 {
        return Err(Error::Config("a semaphore needs at least 1 permit".into()));
    }
    Ok(())
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
        add_keys(call, &self.keys);
        call.arg(self.token.as_str())
            .arg(&self.keys.channel)
            .arg(millis(FENCE_RETENTION))
            .arg(if self.quiet { "1" } else { "0" });
    }
    fn handoff_channel(&self) -> Option<&str> {
        Some(&self.keys.channel)
    }
    fn quieted(&self) -> Option<Arc<dyn ReleaseOp>> {
        Some(Arc::new(Permit {
            keys: self.keys.clone(),
            token: self.token.clone(),
            quiet: true,
        }))
    }
}
