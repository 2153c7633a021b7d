//! [`RwLock`]: many readers or one writer, each hold with its own lease.
//!
//! # Guarantee
//! While a [`WriteGuard`]'s lease is valid, nobody else holds the name: no reader, no other
//! writer, and no plain [`Lock`](crate::Lock) of the same name (the name's key holds the
//! writer's token exactly as a lock's holds its owner's). While a [`ReadGuard`]'s lease is
//! valid, no writer and no plain lock holds the name; readers share it. Each reader has its own
//! lease, judged by the **server's clock**: a crashed reader blocks writers for at most one TTL,
//! whatever the other readers do, and a reader whose lease ran out is told so at its next
//! renewal.
//!
//! **No writer starvation.** A waiting writer joins the lock's wait queue, and a reader is let
//! in only while no writer waits ahead of it: once a writer waits, new readers wait behind it.
//! A waiting plain [`Lock`](crate::Lock) of the same name (one that queues: the default
//! [`hand-off`](LockOptions::handoff), or fair mode) holds new readers back the same way.
//! The writer is granted as soon as the readers already inside leave (or their leases end).
//! Outside fair mode a waiting reader queues only to be handed the lock (its place holds nobody
//! back), and writers may overtake each other; in fair mode
//! ([`LockOptions::fair`]) everyone queues and is served in arrival order, readers queued
//! together entering together.
//!
//! **Fencing.** A write grant's fencing token is larger than every earlier write grant's (and
//! every earlier plain lock grant's: they share the counter). A read grant carries the token of
//! the last write grant before it (never less, even after a restart that lost the counter, and
//! less than every later write grant's), or, when its read period began with a hand-off to
//! readers, that hand-off's token, drawn from the counter as a write grant's is, which every
//! reader of the period shares: storage that records the largest token it has accepted can refuse a reader
//! that started before a write it has not seen.
//!
//! **On Redlock** every hold is on a majority of the masters; a writer proposes its fencing
//! token (one round trip, the same token on every master), as a lock does. A waiting writer
//! queues on every master under one id for its whole wait (each attempt has a token of its
//! own), withdrawn when the wait ends, so new readers stay behind it. A reader's token is the largest counter
//! its majority answered, written back to that majority: at least the last write's, and
//! below every later write's. Two readers of one read period may carry different tokens
//! (a master's counter raised by a writer's attempt rolled back there, or restarted from the
//! clock): storage should check readers against the largest *writer's* token it accepted,
//! without recording readers' tokens.
//!
//! # Limits
//! As for [`Lock`](crate::Lock): clocks, failover and restarts that lose data. Fair mode is
//! refused on Redlock (as for a lock). The release that frees the lock hands it to the writer at
//! the head of the queue, or to the readers queued at its head (up to 64 per release, in one
//! script call, each told on its client's inbox; one Redis and Cluster; unless a plain lock of
//! the name waits too: then every waiter is woken to retry, as on Redlock). A handed writer or
//! reader that died holds the others back for at most its claim lease. On Redlock a
//! cancelled writer's queue place is withdrawn in the background, once: a master that misses
//! the withdrawal holds readers back there until the writer's waiter lease ends (three
//! re-check intervals). A writer whose attempt meets readers who each got in on a minority
//! (a split vote among readers) takes them for holders and sleeps until a wake-up or its
//! re-check interval.

use std::sync::Arc;
use std::time::Duration;

use redis::{Script, ScriptInvocation};

use crate::engine::acquire::{self, Attempt};
use crate::engine::handle::LeaseHandle;
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
use request::ForSide;

mod guard;
mod request;

pub use guard::{ReadGuard, WriteGuard};

/// A read-write lock: many [`ReadGuard`]s or one [`WriteGuard`] at a time. Cheap to clone; made
/// by [`Client::rw_lock`](crate::Client::rw_lock) or
/// [`Client::rw_lock_with`](crate::Client::rw_lock_with).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), dlock::Error> {
/// # let server = dlock_test::RedisServer::start();
/// # let client = dlock::Client::connect(&server.url()).await?;
/// let config = client.rw_lock("config")?;
/// let first = config.read().await?;
/// let second = config.try_read().await?; // readers share it
/// assert!(config.try_write().await.unwrap_err().is_conflict());
/// first.release().await?;
/// second.release().await?;
/// let writer = config.write().await?;
/// assert!(writer.fencing_token() > 0);
/// writer.release().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RwLock {
    core: Arc<Core>,
    keys: Arc<RwKeys>,
    options: Arc<LockOptions>,
}

/// Which side of the lock a hold is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Read,
    Write,
}

impl Side {
    fn as_str(self) -> &'static str {
        match self {
            Side::Read => "read",
            Side::Write => "write",
        }
    }

    fn kind(self) -> Kind {
        match self {
            Side::Read => Kind::ReadLock,
            Side::Write => Kind::WriteLock,
        }
    }
}

/// A read-write lock's keys: a plain lock's (the name, holder info, fencing counter, wake-up
/// channel) and its own readers and wait queue, all in the name's cluster slot.
#[derive(Debug)]
pub(crate) struct RwKeys {
    pub base: LockKeys,
    /// Readers: token → lease end, server ms (a zset).
    pub readers: String,
    /// Readers' holder info: token → JSON (a hash).
    pub reader_info: String,
    /// Waiters in arrival order: `w:` or `r:` and the token (a list).
    pub queue: String,
    /// Waiter leases: entry → server ms when it ends (a zset).
    pub queue_leases: String,
    /// Queued waiters' hand-off terms: entry → JSON (a hash, see `handoff.lua`).
    pub waiters: String,
}

impl RwKeys {
    fn new(base: LockKeys) -> RwKeys {
        RwKeys {
            readers: base.companion("readers"),
            reader_info: base.companion("reader-info"),
            queue: base.companion("rw-queue"),
            queue_leases: base.companion("rw-queue-leases"),
            waiters: base.companion("rw-waiters"),
            base,
        }
    }
}

impl RwLock {
    pub(crate) fn new(core: Arc<Core>, keys: LockKeys, options: LockOptions) -> RwLock {
        RwLock {
            core,
            keys: Arc::new(RwKeys::new(keys)),
            options: Arc::new(options),
        }
    }

    /// The lock's name (its Redis key).
    pub fn name(&self) -> &str {
        &self.keys.base.lock
    }

    /// The lock's settings.
    pub fn options(&self) -> &LockOptions {
        &self.options
    }

    /// Takes the lock for reading if no writer holds it or waits for it (in fair mode: if no
    /// writer waits ahead), in one round trip; fails at once otherwise.
    ///
    /// # Errors
    /// [`Error::Conflict`] naming the writer (or the plain lock's holder), or, when a writer
    /// waits while readers hold it, the readers; connection errors as
    /// [`Lock::try_lock`](crate::Lock::try_lock).
    ///
    /// # Cancel safety
    /// Dropping the future leaves no hold behind: if the request may have reached Redis, it
    /// is undone in the background (at worst it expires with its TTL).
    pub async fn try_read(&self) -> Result<ReadGuard> {
        self.try_side(Side::Read).await.map(ReadGuard::new)
    }

    /// Takes the lock for reading, waiting while a writer holds it or waits ahead, up to the
    /// wait limit of the options ([`LockOptions::wait`], 30 s by default). Waiting does not
    /// poll: the reader queues, and the release that frees the lock hands it the read side in
    /// the same script call (with every reader queued at the head; one Redis and Cluster, under
    /// [`LockOptions::handoff`]), or wakes it to retry; a re-check no later than the holder's
    /// lease end (or a waiting writer's waiter lease end) catches what publishes nothing.
    ///
    /// # Errors
    /// [`Error::Timeout`] when the wait limit passes; otherwise as [`RwLock::try_read`].
    ///
    /// # Cancel safety
    /// A dropped future leaves no hold and no queue entry behind (undone in the background; at
    /// worst they expire with their leases).
    pub async fn read(&self) -> Result<ReadGuard> {
        self.wait_side(Side::Read).await.map(ReadGuard::new)
    }

    /// Takes the lock for writing if nobody holds it (in fair mode: and nobody waits ahead),
    /// in one round trip; fails at once otherwise. A failed `try_write` does not queue, so it
    /// never holds readers back.
    ///
    /// # Errors
    /// [`Error::Conflict`] naming the writer or the readers; connection errors.
    ///
    /// # Cancel safety
    /// As [`RwLock::try_read`].
    pub async fn try_write(&self) -> Result<WriteGuard> {
        self.try_side(Side::Write).await.map(WriteGuard::new)
    }

    /// Takes the lock for writing, waiting while anyone holds it: the writer queues, so new
    /// readers wait behind it, and it is granted once the readers inside have left. The
    /// release that frees the lock hands it to the writer at the head of the queue in the same
    /// script call and tells it so ([`LockOptions::handoff`], as for a lock): the writer starts
    /// without a round trip of its own (queued readers are handed the read side the same way,
    /// see [`RwLock::read`]).
    ///
    /// # Errors
    /// [`Error::Timeout`] when the wait limit passes; otherwise as [`RwLock::try_write`].
    ///
    /// # Cancel safety
    /// As [`RwLock::read`]: a writer that gives up leaves the queue, and readers held back by
    /// it are woken.
    pub async fn write(&self) -> Result<WriteGuard> {
        self.wait_side(Side::Write).await.map(WriteGuard::new)
    }

    async fn try_side(&self, side: Side) -> Result<LeaseHandle> {
        let for_side = ForSide {
            lock: self,
            side,
            waiter: None,
        };
        self.core
            .counted(side.kind(), self.name(), async {
                let pending = self.pending(side)?;
                match acquire::attempt(&self.core, &for_side, &pending, None).await? {
                    Attempt::Granted(handle) => Ok(handle),
                    Attempt::Busy(busy) => Err(Error::Conflict(busy.conflict)),
                }
            })
            .await
    }

    async fn wait_side(&self, side: Side) -> Result<LeaseHandle> {
        // On Redlock each attempt has a token of its own: a waiting writer keeps one place in
        // the queue under an id of its own, withdrawn when it stops waiting.
        let place = match side == Side::Write && !self.core.nodes().is_single() {
            true => Some(QueuePlace::new(self)?),
            false => None,
        };
        let for_side = ForSide {
            lock: self,
            side,
            waiter: place.as_ref().map(|place| place.hold.token.clone()),
        };
        self.core
            .counted(side.kind(), self.name(), async {
                let pending = self.pending(side)?;
                let handed = |handoff: Handoff| {
                    self.hands_off().then(|| {
                        pending.settled();
                        for_side.handed(pending.token(), handoff)
                    })
                };
                self.waiting(side)
                    .wait_for(
                        &pending.token(),
                        |queue| acquire::attempt(&self.core, &for_side, &pending, queue),
                        handed,
                    )
                    .await
            })
            .await
    }

    fn pending(&self, side: Side) -> Result<Pending> {
        let keys = self.keys.clone();
        Pending::new(
            self.core.watchdog().clone(),
            Box::new(move |token| Arc::new(RwHold::new(keys.clone(), token, side))),
        )
    }

    /// Writers queue (their place holds new readers back), and so does everyone in fair mode,
    /// even while they cannot hear their channel; a reader outside fair mode queues only to be
    /// handed the lock, so only once it can hear the hand-off.
    fn waiting(&self, side: Side) -> Waiting<'_> {
        let queue_deaf = self.options.fair || side == Side::Write;
        Waiting {
            core: &self.core,
            channels: std::slice::from_ref(&self.keys.base.channel),
            options: &self.options,
            queue: queue_deaf || self.hands_off(),
            handoff: self.hands_off(),
            queue_deaf,
            ride: None,
        }
    }

    /// Whether waiters (readers and writers alike) take hand-offs, under
    /// [`LockOptions::takes_handoffs`].
    fn hands_off(&self) -> bool {
        self.options.takes_handoffs(self.core.nodes().is_single())
    }
}

/// A Redlock writer's place in the wait queue, under an id that outlives its attempts (whose
/// tokens are fresh each time): every attempt queues under it, so new readers stay behind the
/// writer between attempts, and dropping it (the wait is over: granted, given up, cancelled)
/// withdraws it on every master in the background, waking the readers it held back.
struct QueuePlace {
    hold: Arc<RwHold>,
    watchdog: crate::engine::watchdog::Watchdog,
}

impl QueuePlace {
    fn new(lock: &RwLock) -> Result<QueuePlace> {
        // A release of a write hold by a token that holds nothing withdraws its queue entry.
        let hold = RwHold::new(lock.keys.clone(), Token::generate()?, Side::Write);
        Ok(QueuePlace {
            hold: Arc::new(hold),
            watchdog: lock.core.watchdog().clone(),
        })
    }
}

impl Drop for QueuePlace {
    fn drop(&mut self) {
        self.watchdog.release_in_background(self.hold.clone());
    }
}

/// One read or write hold: its keys, token and side. How the engine renews, checks and
/// releases it.
#[derive(Debug)]
pub(crate) struct RwHold {
    keys: Arc<RwKeys>,
    token: Token,
    side: Side,
    /// A release without the wake-up for everyone (the rollback of a Redlock attempt).
    quiet: bool,
}

impl RwHold {
    fn new(keys: Arc<RwKeys>, token: Token, side: Side) -> RwHold {
        RwHold {
            keys,
            token,
            side,
            quiet: false,
        }
    }
}

impl LeaseOps for RwHold {
    fn name(&self) -> &str {
        &self.keys.base.lock
    }
    fn slot(&self) -> &str {
        self.keys.base.slot()
    }
    /// A writer renews as a plain lock does (its token in the name's key).
    fn renew_script(&self) -> &'static Script {
        match self.side {
            Side::Read => &scripts::RW_RENEW,
            Side::Write => &scripts::EXTEND_PLAIN,
        }
    }
    fn add_renew(&self, call: &mut ScriptInvocation<'_>, ttl: Duration) {
        let keys = &self.keys;
        call.key(&keys.base.lock).key(&keys.base.info);
        if self.side == Side::Read {
            call.key(&keys.readers).key(&keys.reader_info);
        }
        call.arg(self.token.as_str()).arg(millis(ttl));
    }
    fn verify(&self) -> Verify<'_> {
        match self.side {
            Side::Read => Verify::Script(&scripts::RW_VERIFY),
            Side::Write => Verify::KeyHolds {
                key: &self.keys.base.lock,
                value: self.token.as_str(),
            },
        }
    }
    fn add_verify(&self, call: &mut ScriptInvocation<'_>) {
        call.key(&self.keys.base.lock)
            .key(&self.keys.readers)
            .arg(self.token.as_str());
    }
}

impl ReleaseOp for RwHold {
    fn name(&self) -> &str {
        &self.keys.base.lock
    }
    fn slot(&self) -> &str {
        self.keys.base.slot()
    }
    fn release_script(&self) -> &'static Script {
        &scripts::RW_RELEASE
    }
    /// Also withdraws the token from the wait queue: the same call undoes a waiter.
    fn add_release(&self, call: &mut ScriptInvocation<'_>) {
        let keys = &self.keys;
        call.key(&keys.base.lock)
            .key(&keys.base.info)
            .key(&keys.readers)
            .key(&keys.reader_info)
            .key(&keys.queue)
            .key(&keys.queue_leases)
            .key(&keys.base.fence)
            .key(&keys.waiters)
            .key(&keys.base.queue_leases)
            .arg(self.token.as_str())
            .arg(match self.quiet {
                true => format!("{}:quiet", self.side.as_str()),
                false => self.side.as_str().to_owned(),
            })
            .arg(&keys.base.channel)
            .arg(millis(FENCE_RETENTION));
    }
    fn handoff_channel(&self) -> Option<&str> {
        Some(&self.keys.base.channel)
    }
    fn quieted(&self) -> Option<Arc<dyn ReleaseOp>> {
        Some(Arc::new(RwHold {
            quiet: true,
            ..RwHold::new(self.keys.clone(), self.token.clone(), self.side)
        }))
    }
}
