//! Reentrant locks: an owner may take a lock it already holds; it is freed when every hold is
//! released.
//!
//! # Guarantee
//! Mutual exclusion between owners, as for [`Lock`](crate::Lock). Reentrancy is by explicit
//! [`Owner`], not by thread: async tasks move between threads, so a thread id would let two
//! tasks share a lock by accident (or refuse one task its own lock). Holds are counted in
//! Redis, as a set of acquisition ids, so a cancelled acquisition is undone exactly; the lock
//! is freed when the set is empty; every hold shares the grant's fencing token and lease, and
//! the watchdog renews it once.
//!
//! On Redlock, a grant holds on a majority of the masters. A re-entry that a majority answers
//! as a hold on the owner's current grant joins it (same fencing token and lease); any other
//! majority makes a fresh grant with a new fencing token (the largest answered, written back
//! over the old grant's holds), and the owner's earlier lease is reported lost: a majority
//! holding the old grant is what proves nobody else held the lock since (see
//! `engine::acquire::rejoined`). The attempt's writes on other masters are undone.
//!
//! # Limits
//! As for [`Lock`](crate::Lock) (clocks, failover). Fair mode is not available for reentrant
//! locks. An [`Owner`] lives in one process; it cannot be handed to another. On Redlock, a
//! master that missed a re-entry (down, or its write abandoned once a majority answered)
//! counts one hold fewer and may free its copy before the last release; the majority keeps
//! the grant. A re-entry that finds the owner's grant on some masters but fresh grants on
//! others waits for every master still silent (at most the command timeout); if masters that
//! failed could still make a majority of the owner's grant, it is a retryable error (with a
//! master down for good, until the owner's grant there expires). An owner's attempts on one
//! lock take turns, so a re-entry may wait for another task's attempt of the same owner.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use redis::{ScriptInvocation, Value};

use crate::engine::acquire::{self, Acquire, Answer, Attempt, Grant, Queue};
use crate::engine::handle::{lease_methods, LeaseHandle, Shared};
use crate::engine::lease::{LeaseStatus, LossReason};
use crate::engine::ops::ReleaseOp;
use crate::engine::pending::Pending;
use crate::error::{Error, Result};
use crate::holder::int;
use crate::options::{LockOptions, FENCE_RETENTION};
use crate::primitive::lock::{busy, Lock};
use crate::scripts;
use crate::telemetry::Kind;
use crate::token::Token;
use crate::units::millis;

mod hold;

use hold::{Hold, OfGrant, OwnerLease};

/// The identity reentrancy is keyed on. Clones are the same owner; hand a clone to every task
/// that may re-enter the lock.
///
/// ```
/// let owner = dlock::Owner::new()?;
/// let same = owner.clone();
/// assert_eq!(owner, same);
/// assert_ne!(owner, dlock::Owner::new()?);
/// # Ok::<(), dlock::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Owner {
    inner: Arc<OwnerInner>,
}

#[derive(Debug)]
struct OwnerInner {
    token: Token,
    /// The owner's live holdings by lock name, so nested holds share one lease.
    holdings: Mutex<HashMap<String, Weak<Shared>>>,
    /// One turn at a time per lock name: see [`Owner::turn`].
    turns: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl Owner {
    /// A new owner with a fresh 128-bit identity.
    ///
    /// # Errors
    /// [`Error::Internal`] if the OS random source fails.
    pub fn new() -> Result<Owner> {
        Ok(Owner {
            inner: Arc::new(OwnerInner {
                token: Token::generate()?,
                holdings: Mutex::new(HashMap::new()),
                turns: Mutex::new(HashMap::new()),
            }),
        })
    }

    fn token(&self) -> &Token {
        &self.inner.token
    }

    /// The live holding of `name` with a held lease, if any.
    fn holding(&self, name: &str) -> Option<Arc<Shared>> {
        let holdings = self
            .inner
            .holdings
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        holdings
            .get(name)
            .and_then(Weak::upgrade)
            .filter(|holding| holding.lease.is_held())
    }

    /// The owner's turn to make one acquisition attempt on `name`. Its attempts take turns:
    /// on Redlock an attempt's answers arrive over time, and a concurrent attempt's write-back
    /// (which replaces the owner's grant on a master) could change them before the decision,
    /// so two tasks of one owner could each decide on a different grant of the same lock, and
    /// one would report the other's lease lost while its own held on a minority.
    async fn turn(&self, name: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let gate = {
            let mut turns = self
                .inner
                .turns
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match turns.get(name).and_then(Weak::upgrade) {
                Some(gate) => gate,
                None => {
                    turns.retain(|_, gate| gate.strong_count() > 0);
                    let gate = Arc::new(tokio::sync::Mutex::new(()));
                    turns.insert(name.to_owned(), Arc::downgrade(&gate));
                    gate
                }
            }
        };
        gate.lock_owned().await
    }

    fn remember(&self, name: &str, holding: &Arc<Shared>) {
        let mut holdings = self
            .inner
            .holdings
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        holdings.retain(|_, held| held.strong_count() > 0);
        holdings.insert(name.to_owned(), Arc::downgrade(holding));
    }
}

impl PartialEq for Owner {
    fn eq(&self, other: &Owner) -> bool {
        self.inner.token == other.inner.token
    }
}

impl Eq for Owner {}

/// A named reentrant lock. Made by [`Client::reentrant_lock`](crate::Client::reentrant_lock).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), dlock::Error> {
/// # let server = dlock_test::RedisServer::start();
/// let url = "redis://127.0.0.1/";
/// # let url = &server.url();
/// let client = dlock::Client::connect(url).await?;
/// let lock = client.reentrant_lock("ledger")?;
/// let owner = dlock::Owner::new()?;
/// let outer = lock.lock(&owner).await?;
/// let inner = outer.reenter().await?; // same owner: granted at once, same fencing token
/// assert_eq!(inner.fencing_token(), outer.fencing_token());
/// inner.release().await?; // still held by `outer`
/// outer.release().await?; // freed
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ReentrantLock {
    lock: Lock,
}

impl ReentrantLock {
    pub(crate) fn new(lock: Lock) -> Result<ReentrantLock> {
        if lock.options().fair {
            return Err(Error::Config(
                "fair mode is not available for reentrant locks".into(),
            ));
        }
        Ok(ReentrantLock { lock })
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        self.lock.name()
    }

    /// Takes the lock for `owner` if it is free or already `owner`'s; fails at once otherwise.
    ///
    /// # Errors
    /// [`Error::Conflict`] when another owner holds it; connection errors.
    ///
    /// # Cancel safety
    /// Dropping the future leaves no hold behind: an acquisition that may have reached Redis
    /// is undone in the background (exactly that hold; the owner's others are untouched).
    pub async fn try_lock(&self, owner: &Owner) -> Result<ReentrantGuard> {
        self.lock
            .core()
            .counted(Kind::ReentrantLock, self.name(), async {
                let pending = self.pending(owner)?;
                let attempt = ForOwner { lock: self, owner };
                match attempt.once(&pending).await? {
                    Attempt::Granted(guard) => Ok(guard),
                    Attempt::Busy(busy) => Err(Error::Conflict(busy.conflict)),
                }
            })
            .await
    }

    /// Takes the lock for `owner`, waiting while another owner holds it, as
    /// [`Lock::lock`](crate::Lock::lock) does (wake-ups, re-checks, the wait limit of the
    /// lock's options).
    ///
    /// # Errors
    /// As [`Lock::lock`](crate::Lock::lock).
    ///
    /// # Cancel safety
    /// As [`ReentrantLock::try_lock`].
    pub async fn lock(&self, owner: &Owner) -> Result<ReentrantGuard> {
        self.lock
            .core()
            .counted(Kind::ReentrantLock, self.name(), async {
                let pending = self.pending(owner)?;
                let attempt = ForOwner { lock: self, owner };
                self.lock
                    .waiting()
                    .wait_for(&pending.token(), |_| attempt.once(&pending), |_| None)
                    .await
            })
            .await
    }

    /// The acquisition's token is its hold's id; undoing it removes exactly that hold.
    fn pending(&self, owner: &Owner) -> Result<Pending> {
        let keys = self.lock.keys().clone();
        let owner = owner.token().clone();
        Pending::new(
            self.lock.core().watchdog().clone(),
            Box::new(move |acquisition| {
                Arc::new(Hold {
                    keys: keys.clone(),
                    owner: owner.clone(),
                    acquisition,
                    // The grant is unknown (no reply): any grant of this owner holding this
                    // acquisition id is the one to undo.
                    grant: OfGrant::Any,
                    quiet: false,
                })
            }),
        )
    }
}

/// One acquisition of a reentrant lock for one owner: what the engine drives.
struct ForOwner<'a> {
    lock: &'a ReentrantLock,
    owner: &'a Owner,
}

impl ForOwner<'_> {
    /// One attempt, in the owner's turn for this lock (see [`Owner::turn`]).
    async fn once(&self, pending: &Pending) -> Result<Attempt<ReentrantGuard>> {
        let _turn = self.owner.turn(self.lock.name()).await;
        acquire::attempt(self.lock.lock.core(), self, pending, None).await
    }
}

impl Acquire for ForOwner<'_> {
    type Guard = ReentrantGuard;

    fn options(&self) -> &LockOptions {
        self.lock.lock.options()
    }

    fn slot(&self) -> &str {
        self.lock.lock.keys().slot()
    }

    fn call(&self, acquisition: &Token, _queue: Option<&Queue>) -> ScriptInvocation<'static> {
        let keys = self.lock.lock.keys();
        let options = self.options();
        let identity = self.lock.lock.core().identity();
        let mut call = scripts::REENTRANT_ACQUIRE.prepare_invoke();
        call.key(&keys.lock)
            .key(&keys.info)
            .key(&keys.fence)
            .key(&keys.holds)
            .arg(self.owner.token().as_str())
            .arg(acquisition.as_str())
            .arg(millis(options.ttl))
            .arg(millis(FENCE_RETENTION))
            .arg(&identity.host)
            .arg(identity.pid)
            .arg(options.label.as_deref().unwrap_or(""));
        call
    }

    fn propose(
        &self,
        acquisition: &Token,
        _queue: Option<&Queue>,
        fence: u64,
    ) -> Option<ScriptInvocation<'static>> {
        let mut call = self.call(acquisition, None);
        call.arg(fence);
        Some(call)
    }

    fn parse(&self, reply: &[Value]) -> Result<Answer> {
        let code = reply.first().and_then(int);
        if code != Some(1) && code != Some(2) {
            return Ok(Answer::Busy(busy(self.lock.lock.keys(), reply)));
        }
        let fence = reply
            .get(1)
            .and_then(int)
            .and_then(|t| u64::try_from(t).ok())
            .ok_or_else(|| Error::Internal(format!("reentrant acquire returned {reply:?}")))?;
        if code == Some(2) {
            return Ok(Answer::Low { counter: fence });
        }
        let fresh = reply.get(3).and_then(int) == Some(1);
        Ok(Answer::Granted { fence, fresh })
    }

    fn raise_fence(&self, acquisition: &Token, fence: u64) -> ScriptInvocation<'static> {
        // Only for a fresh grant some masters answered as a re-entry of an earlier grant
        // (whose holds must go): a re-entry a majority answered keeps its grant (see
        // `engine::acquire::rejoined`), and a grant every master made fresh carries the
        // proposed token.
        let keys = self.lock.lock.keys();
        let mut call = scripts::REENTRANT_FENCE.prepare_invoke();
        call.key(&keys.fence)
            .key(&keys.info)
            .key(&keys.lock)
            .key(&keys.holds)
            .arg(fence)
            .arg(millis(FENCE_RETENTION))
            .arg(self.owner.token().as_str())
            .arg(acquisition.as_str());
        call
    }

    fn replacing_earlier_grant(&self) {
        let name = &self.lock.lock.keys().lock;
        if let Some(previous) = self.owner.holding(name) {
            if previous
                .lease
                .finish(LeaseStatus::Lost(LossReason::KeyGone))
            {
                tracing::warn!(lock = %name, "lease lost: a re-entry found it on a minority of the masters");
            }
        }
    }

    fn undo_stray(&self, acquisition: &Token, fence: u64) -> Option<Arc<dyn ReleaseOp>> {
        Some(Arc::new(Hold {
            keys: self.lock.lock.keys().clone(),
            owner: self.owner.token().clone(),
            acquisition: acquisition.clone(),
            grant: OfGrant::NotThis(fence),
            quiet: true,
        }))
    }

    fn granted(&self, grant: Grant) -> ReentrantGuard {
        let lock = &self.lock.lock;
        let keys = lock.keys();
        // A fresh grant means the owner's earlier lease on this lock (if this process still
        // counts one as held) ended without our noticing yet: the key expired, was deleted or
        // lost in a restart, and someone else may have held the lock since. That lease is lost,
        // and the new hold gets its own lease and fencing token; extending the old one would
        // hide the loss and hand out a stale token.
        let shared = match self.owner.holding(&keys.lock) {
            // Join the lease this process holds for the same grant (same fencing token), if
            // its last handle has not just left.
            Some(shared)
                if !grant.fresh
                    && shared.lease.fencing_token == grant.fencing_token
                    && shared.try_join() =>
            {
                shared.lease.extended(grant.sent_at, lock.options().ttl);
                shared
            }
            previous => {
                // A fresh grant, or a grant with another fencing token, means the lease this
                // process held for the owner is gone on the server.
                let gone =
                    |p: &Arc<Shared>| grant.fresh || p.lease.fencing_token != grant.fencing_token;
                if let Some(previous) = previous.filter(gone) {
                    if previous
                        .lease
                        .finish(LeaseStatus::Lost(LossReason::KeyGone))
                    {
                        tracing::warn!(lock = %keys.lock, "lease lost: a re-entry found the key gone");
                    }
                }
                let ops = Arc::new(OwnerLease {
                    keys: keys.clone(),
                    owner: self.owner.token().clone(),
                    grant: grant.fencing_token,
                });
                let terms = lock.terms_of(Kind::ReentrantLock);
                let lease = lock
                    .core()
                    .track(ops, grant.fencing_token, terms, grant.sent_at);
                let shared = Shared::new(lease);
                self.owner.remember(&keys.lock, &shared);
                shared
            }
        };
        let hold = Arc::new(Hold {
            keys: keys.clone(),
            owner: self.owner.token().clone(),
            acquisition: grant.token,
            grant: OfGrant::This(grant.fencing_token),
            quiet: false,
        });
        ReentrantGuard {
            handle: LeaseHandle::new(shared, lock.core().clone(), hold),
            lock: self.lock.clone(),
            owner: self.owner.clone(),
        }
    }
}

/// One hold on a reentrant lock. Release it with [`ReentrantGuard::release`]; dropping it
/// releases the hold in the background. The lock is freed when its last hold goes. Every hold
/// of one grant shares its lease and fencing token.
#[must_use = "dropping the guard releases this hold at once (in the background)"]
#[derive(Debug)]
pub struct ReentrantGuard {
    handle: LeaseHandle,
    lock: ReentrantLock,
    owner: Owner,
}

impl crate::telemetry::Granted for ReentrantGuard {
    fn fencing_token(&self) -> u64 {
        ReentrantGuard::fencing_token(self)
    }
}

impl ReentrantGuard {
    lease_methods!(handle, "lock");

    /// The owner this hold belongs to.
    pub fn owner(&self) -> &Owner {
        &self.owner
    }

    /// Takes another hold for the same owner (one round trip on one Redis; never waits for
    /// another owner, since the owner holds the lock). On Redlock it waits for masters still
    /// silent while their answers could decide between the owner's grant and a fresh one (at
    /// most the command timeout), and if a majority no longer holds the owner's grant it is a
    /// fresh grant, and this guard's lease is reported lost.
    ///
    /// # Errors
    /// [`Error::Conflict`] if the lease was lost and another owner took the lock meanwhile;
    /// connection errors.
    pub async fn reenter(&self) -> Result<ReentrantGuard> {
        self.lock.try_lock(&self.owner).await
    }

    /// Releases this hold (one round trip); the lock is freed if it was the last.
    ///
    /// As for [`LockGuard::release`](crate::LockGuard::release), a release that fails on a
    /// dropped connection is retried on the new one while the lease can still be valid.
    ///
    /// # Errors
    /// [`Error::Lost`] when the lease had been lost, or when no answer came before its
    /// validity ended ([`LossReason::Unreachable`]); other errors as they are (the hold is then
    /// released in the background).
    ///
    /// # Cancel safety
    /// If the future is dropped, the guard's drop releases the hold in the background.
    pub async fn release(self) -> Result<()> {
        self.handle.release().await
    }
}
