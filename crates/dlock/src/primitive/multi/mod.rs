//! [`MultiLock`]: several locks taken all or nothing, held and lost as one.
//!
//! # Guarantee
//! A [`MultiGuard`] holds every member lock; an acquisition that fails holds none. No caller
//! is left holding part of the set after a refusal, an error or a cancelled future: what was
//! taken is released at once (or, for a dropped future or an unreachable Redis, in the
//! background; at worst it expires with its TTL). Each member is a plain
//! [`Lock`](crate::Lock): it excludes plain locks (and `dlock run`) of the same name, and
//! has its own lease and fencing token. The watchdog renews every member (one round trip per
//! node, or per slot on a Cluster, per tick); losing any member is losing the guard.
//!
//! - **One slot** (one Redis or Sentinel; on a Cluster, members whose names share their hash
//!   part, e.g. `{user:42}:a` and `{user:42}:b`): one atomic script takes them all or none.
//! - **Several Cluster slots, or Redlock:** members are taken one at a time in a fixed order
//!   (by name), each as a plain lock is (on Redlock: on a majority of masters, with its own
//!   proposed fencing token), and a refusal releases those already taken. Nobody holds a
//!   member while waiting for another (a waiting multi-lock holds nothing between attempts),
//!   so callers asking for `{a, b}` and `{b, a}` never deadlock.
//!
//! # Limits
//! - Fair mode is refused with [`Error::Config`]: waiters are not queued, and a release of any
//!   member they need wakes them to retry (barging).
//! - Plain `lock()` waiters of a member pass it among themselves by hand-off (the default)
//!   without it ever being free: a multi-key lock waiting for that member can wait until its
//!   limit. A multi-key grant takes a free member ahead of that member's fair-mode queue.
//! - Across Cluster slots and on Redlock the set is taken in steps: while a caller holds some members and
//!   asks for the next, others may be refused a member it is about to give back, and a caller
//!   that crashes between steps leaves its partial set to expire with its TTL. Nobody is ever
//!   told it holds the set when it does not.

use std::sync::{Arc, Mutex, PoisonError};

use redis::{ScriptInvocation, Value};

use crate::engine::acquire::{self, Acquire, Answer, Attempt, Grant, Queue};
use crate::engine::ops::ReleaseOp;
use crate::engine::pending::Pending;
use crate::engine::wait::Waiting;
use crate::engine::Core;
use crate::error::{Error, Result};
use crate::holder::int;
use crate::options::{LockOptions, FENCE_RETENTION};
use crate::primitive::lock::{self, Held, Lock, LockGuard};
use crate::scripts;
use crate::telemetry::Kind;
use crate::token::Token;
use crate::units::millis;

mod guard;

pub use guard::MultiGuard;

/// Most members a multi-key lock may have: every attempt names each of them, and one script
/// call takes them all.
pub const MAX_MEMBERS: usize = 64;

/// Several locks taken all or nothing. Cheap to clone; made by
/// [`Client::multi_lock`](crate::Client::multi_lock) or
/// [`Client::multi_lock_with`](crate::Client::multi_lock_with).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), dlock::Error> {
/// # let server = dlock_test::RedisServer::start();
/// # let client = dlock::Client::connect(&server.url()).await?;
/// let transfer = client.multi_lock(&["account:1", "account:2"])?;
/// let both = transfer.try_lock().await?;
/// // Each member is a plain lock: nobody else can take either.
/// assert!(client.lock("account:2")?.try_lock().await.unwrap_err().is_conflict());
/// assert!(both.fencing_token("account:1").is_some());
/// both.release().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct MultiLock {
    core: Arc<Core>,
    /// Sorted by name: the one order every caller takes them in.
    members: Arc<Vec<Lock>>,
    /// Each member's wake-up channel, in the same order.
    channels: Arc<Vec<String>>,
    options: Arc<LockOptions>,
    /// Whether one script can take them all (one node, or one Cluster slot).
    one_slot: bool,
}

impl MultiLock {
    /// `members` are locks made with the same options; refuses an empty or over-long set and
    /// a name given twice.
    pub(crate) fn new(
        core: Arc<Core>,
        mut members: Vec<Lock>,
        options: LockOptions,
    ) -> Result<MultiLock> {
        if members.is_empty() || members.len() > MAX_MEMBERS {
            return Err(Error::Config(format!(
                "a multi-key lock needs 1 to {MAX_MEMBERS} names, got {}",
                members.len()
            )));
        }
        members.sort_by(|a, b| a.name().cmp(b.name()));
        if let Some(pair) = members
            .windows(2)
            .find(|pair| pair[0].name() == pair[1].name())
        {
            return Err(Error::Config(format!(
                "lock name {:?} is given twice to one multi-key lock",
                pair[0].name()
            )));
        }
        let nodes = core.nodes();
        let cluster = nodes.first().is_cluster();
        let slot = members[0].keys().slot().to_owned();
        // Redlock: no script spans masters; members go one at a time, each on its majority.
        let one_slot =
            nodes.is_single() && (!cluster || members.iter().all(|m| m.keys().slot() == slot));
        let channels = members.iter().map(|m| m.keys().channel.clone()).collect();
        Ok(MultiLock {
            core,
            members: Arc::new(members),
            channels: Arc::new(channels),
            options: Arc::new(options),
            one_slot,
        })
    }

    /// The members' names, in the order they are taken (sorted).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.members.iter().map(Lock::name)
    }

    /// The settings every member is taken with.
    pub fn options(&self) -> &LockOptions {
        &self.options
    }

    /// Takes every member if all are free; fails at once otherwise, holding none. One round
    /// trip when the members share a slot; one per member (until the first refusal) across
    /// Cluster slots.
    ///
    /// # Errors
    /// [`Error::Conflict`] naming a member that is held, and its holder; connection errors as
    /// [`Lock::try_lock`](crate::Lock::try_lock).
    ///
    /// # Cancel safety
    /// Dropping the future leaves no member held: those taken (or in doubt) are released in
    /// the background (at worst, with Redis unreachable, they expire with their TTL).
    pub async fn try_lock(&self) -> Result<MultiGuard> {
        self.core
            .counted(Kind::MultiLock, self.first_name(), async {
                match self.attempt().await? {
                    Attempt::Granted(guard) => Ok(guard),
                    Attempt::Busy(busy) => Err(Error::Conflict(busy.conflict)),
                }
            })
            .await
    }

    /// Takes every member, waiting while any is held, up to the wait limit of the options
    /// ([`LockOptions::wait`], 30 s by default). Holds nothing while it waits: a release of
    /// any member wakes it to try the whole set again; a re-check no later than the blocking
    /// holder's lease end catches what publishes nothing.
    ///
    /// # Errors
    /// [`Error::Timeout`] when the wait limit passes, naming the member last found held;
    /// otherwise as [`MultiLock::try_lock`].
    ///
    /// # Cancel safety
    /// As [`MultiLock::try_lock`].
    pub async fn lock(&self) -> Result<MultiGuard> {
        self.core
            .counted(Kind::MultiLock, self.first_name(), async {
                let waiter = Token::generate()?;
                let waiting = Waiting {
                    core: &self.core,
                    channels: &self.channels,
                    options: &self.options,
                    queue: false,
                    handoff: false,
                    queue_deaf: false,
                    ride: None,
                };
                waiting
                    .wait_for(&waiter, |_| self.attempt(), |_| None)
                    .await
            })
            .await
    }

    fn first_name(&self) -> &str {
        self.members[0].name()
    }

    /// One attempt at the whole set.
    async fn attempt(&self) -> Result<Attempt<MultiGuard>> {
        if self.one_slot {
            let pending = self.pending()?;
            let all = ForAll {
                multi: self,
                fences: Mutex::new(Vec::new()),
            };
            return acquire::attempt(&self.core, &all, &pending, None).await;
        }
        self.attempt_in_order().await
    }

    /// Across Cluster slots: each member in turn; a refusal or an error releases what was
    /// taken before it is returned. The set is returned only if every member is still held
    /// then: each step checks its own grant's validity, and slow later steps can outlast an
    /// earlier member's lease (found by review).
    async fn attempt_in_order(&self) -> Result<Attempt<MultiGuard>> {
        let mut taken = Vec::with_capacity(self.members.len());
        for member in self.members.iter() {
            let pending = member.pending()?;
            let outcome = acquire::attempt(&self.core, member, &pending, None).await;
            match outcome {
                Ok(Attempt::Granted(guard)) => taken.push(guard),
                Ok(Attempt::Busy(busy)) => {
                    self.give_back(taken).await;
                    return Ok(Attempt::Busy(busy));
                }
                Err(error) => {
                    self.give_back(taken).await;
                    return Err(error);
                }
            }
        }
        if let Some(stale) = taken.iter().find(|guard| !guard.is_held()) {
            let error = Error::Unavailable {
                node: stale.name().to_owned(),
                reason: "its lease ran out while the other members were taken".into(),
            };
            self.give_back(taken).await;
            return Err(error);
        }
        Ok(Attempt::Granted(MultiGuard::new(taken)))
    }

    /// Releases members taken before a refusal, all at once and quietly (this waiter listens
    /// on their channels: a wake-up for everyone would wake it at once, to fail the same way
    /// again); their outcome is nobody's to learn (a member lost meanwhile was never the
    /// caller's to use). Waits at most one command timeout (found by review: a slow node held a refusal up for a whole TTL); releases not
    /// answered by then go on in the background.
    async fn give_back(&self, taken: Vec<LockGuard>) {
        let limit = self.core.nodes().first().command_timeout();
        let releases = futures_util::future::join_all(taken.into_iter().map(LockGuard::give_back));
        let _ = tokio::time::timeout(limit, releases).await;
    }

    /// The undo of a one-slot attempt: every member's release with its token.
    fn pending(&self) -> Result<Pending> {
        let keys: Vec<_> = self.members.iter().map(|m| m.keys().clone()).collect();
        Pending::new_all(
            self.core.watchdog().clone(),
            Box::new(move |token| {
                keys.iter()
                    .map(|k| Arc::new(Held::new(k.clone(), token.clone())) as Arc<dyn ReleaseOp>)
                    .collect()
            }),
        )
    }
}

/// One one-slot attempt at the whole set: what the engine drives. `parse` keeps every
/// member's fencing token for `granted` (the engine passes on one).
struct ForAll<'a> {
    multi: &'a MultiLock,
    fences: Mutex<Vec<u64>>,
}

impl Acquire for ForAll<'_> {
    type Guard = MultiGuard;

    fn options(&self) -> &LockOptions {
        &self.multi.options
    }

    /// One slot for all (else the members are taken one at a time, as plain locks).
    fn slot(&self) -> &str {
        self.multi.members[0].keys().slot()
    }

    fn call(&self, token: &Token, _queue: Option<&Queue>) -> ScriptInvocation<'static> {
        let identity = self.multi.core.identity();
        let options = &self.multi.options;
        let mut call = scripts::MULTI_ACQUIRE.prepare_invoke();
        for member in self.multi.members.iter() {
            let keys = member.keys();
            call.key(&keys.lock).key(&keys.info).key(&keys.fence);
        }
        call.arg(token.as_str())
            .arg(millis(options.ttl))
            .arg(millis(FENCE_RETENTION))
            .arg(&identity.host)
            .arg(identity.pid)
            .arg(options.label.as_deref().unwrap_or(""));
        call
    }

    fn parse(&self, reply: &[Value]) -> Result<Answer> {
        let members = &self.multi.members;
        if reply.first().and_then(int) != Some(1) {
            let index = reply
                .get(4)
                .and_then(int)
                .and_then(|i| usize::try_from(i).ok());
            let member = index.and_then(|i| members.get(i)).unwrap_or(&members[0]);
            let mut busy = lock::busy(member.keys(), reply);
            busy.ahead_lease_left = None;
            busy.fence_seen = None;
            return Ok(Answer::Busy(busy));
        }
        let fences: Option<Vec<u64>> = reply[1..]
            .iter()
            .map(|fence| int(fence).and_then(|t| u64::try_from(t).ok()))
            .collect();
        let fences = fences
            .filter(|fences| fences.len() == members.len())
            .ok_or_else(|| Error::Internal(format!("multi-key acquire returned {reply:?}")))?;
        let first = fences[0];
        *self.fences.lock().unwrap_or_else(PoisonError::into_inner) = fences;
        Ok(Answer::Granted {
            fence: first,
            fresh: true,
        })
    }

    /// Never called: on Redlock the members are taken one at a time, as plain locks.
    fn raise_fence(&self, token: &Token, fence: u64) -> ScriptInvocation<'static> {
        lock::raise_fence_call(self.multi.members[0].keys(), token, fence)
    }

    fn granted(&self, grant: Grant) -> MultiGuard {
        let fences =
            std::mem::take(&mut *self.fences.lock().unwrap_or_else(PoisonError::into_inner));
        let guards = self
            .multi
            .members
            .iter()
            .zip(fences)
            .map(|(member, fence)| member.adopt(grant.token.clone(), fence, grant.sent_at))
            .collect();
        MultiGuard::new(guards)
    }
}
