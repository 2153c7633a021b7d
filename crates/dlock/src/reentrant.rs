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
//! # Limits
//! As for [`Lock`](crate::Lock) (clocks, failover). Fair mode is not available for reentrant
//! locks. An [`Owner`] lives in one process; it cannot be handed to another.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use redis::Value;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::holder::int;
use crate::key::LockKeys;
use crate::lease::{Lease, LeaseStatus, LossReason};
use crate::lock::{Attempt, Cleanup, Lock, PendingAcquisition};
use crate::options::FENCE_RETENTION;
use crate::scripts;
use crate::token::Token;
use crate::watchdog::millis;

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
    holdings: Mutex<HashMap<String, Weak<Holding>>>,
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
            }),
        })
    }

    fn token(&self) -> &Token {
        &self.inner.token
    }

    /// The live holding of `name` with a held lease, if any.
    fn holding(&self, name: &str) -> Option<Arc<Holding>> {
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

    fn remember(&self, name: &str, holding: &Arc<Holding>) {
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

/// One owner's hold on one lock: the shared lease and how many guards of this process hold it.
#[derive(Debug)]
struct Holding {
    lease: Arc<Lease>,
    guards: AtomicUsize,
}

impl Holding {
    /// One guard fewer; the last one stops renewal.
    fn drop_guard(&self) {
        if self.guards.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.lease.finish(LeaseStatus::Released);
        }
    }
}

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
        let pending = self.pending(owner)?;
        match self.attempt(owner, &pending).await? {
            Attempt::Granted(guard) => Ok(guard),
            Attempt::Busy(busy) => Err(Error::Conflict(Box::new(busy.conflict))),
        }
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
        let pending = self.pending(owner)?;
        self.lock
            .wait_for(&pending.token(), |_| self.attempt(owner, &pending))
            .await
    }

    fn pending(&self, owner: &Owner) -> Result<PendingAcquisition> {
        let cleanup = Cleanup::ReleaseHold {
            owner: owner.token().clone(),
        };
        Ok(PendingAcquisition::new(
            &self.lock,
            cleanup,
            Token::generate()?,
        ))
    }

    async fn attempt(
        &self,
        owner: &Owner,
        pending: &PendingAcquisition,
    ) -> Result<Attempt<ReentrantGuard>> {
        let client = self.lock.client();
        let keys = self.lock.keys();
        let options = self.lock.options();
        let identity = client.identity();
        let mut call = scripts::REENTRANT_ACQUIRE.prepare_invoke();
        call.key(&keys.lock)
            .key(&keys.info)
            .key(&keys.fence)
            .key(&keys.holds)
            .arg(owner.token().as_str())
            .arg(pending.token().as_str())
            .arg(millis(options.ttl))
            .arg(millis(FENCE_RETENTION))
            .arg(&identity.host)
            .arg(identity.pid)
            .arg(options.label.as_deref().unwrap_or(""));
        let node = client.node();
        pending.sending();
        let sent_at = Instant::now();
        let reply: Vec<Value> = node.eval(&call, node.command_timeout()).await?;
        if int(reply.first().unwrap_or(&Value::Nil)) != Some(1) {
            pending.settled();
            return Ok(Attempt::Busy(self.lock.busy(&reply)));
        }
        let fencing_token = reply
            .get(1)
            .and_then(int)
            .and_then(|t| u64::try_from(t).ok())
            .ok_or_else(|| Error::Internal(format!("reentrant acquire returned {reply:?}")))?;
        // A fresh grant means the owner's earlier lease on this lock (if this process still
        // counts one as held) ended without our noticing yet: the key expired, was deleted or
        // lost in a restart, and someone else may have held the lock since. That lease is lost,
        // and the new hold gets its own lease and fencing token; extending the old one would
        // hide the loss and hand out a stale token.
        let fresh = reply.get(3).and_then(int) == Some(1);
        let current = owner.holding(&keys.lock);
        let holding = match current {
            Some(holding) if !fresh => {
                holding.lease.extended(sent_at, options.ttl);
                holding
            }
            previous => {
                if let Some(previous) = previous {
                    if previous
                        .lease
                        .finish(LeaseStatus::Lost(LossReason::KeyGone))
                    {
                        tracing::warn!(lock = %keys.lock, "lease lost: a re-entry found the key gone");
                    }
                }
                let lease = Arc::new(
                    Lease::new(
                        keys.clone(),
                        owner.token().clone(),
                        fencing_token,
                        options.ttl,
                        sent_at,
                        options.renew,
                        client.held_counter().clone(),
                    )
                    .reentrant(),
                );
                client.watchdog().track(lease.clone());
                let holding = Arc::new(Holding {
                    lease,
                    guards: AtomicUsize::new(0),
                });
                owner.remember(&keys.lock, &holding);
                holding
            }
        };
        holding.guards.fetch_add(1, Ordering::SeqCst);
        let guard = ReentrantGuard {
            holding,
            lock: self.clone(),
            owner: owner.clone(),
            acquisition: pending.token(),
            released: false,
        };
        pending.settled();
        Ok(Attempt::Granted(guard))
    }
}

/// One hold on a reentrant lock. Release it with [`ReentrantGuard::release`]; dropping it
/// releases the hold in the background. The lock is freed when its last hold goes.
#[must_use = "dropping the guard releases this hold at once (in the background)"]
#[derive(Debug)]
pub struct ReentrantGuard {
    holding: Arc<Holding>,
    lock: ReentrantLock,
    owner: Owner,
    acquisition: Token,
    released: bool,
}

impl ReentrantGuard {
    /// The lock's name.
    pub fn name(&self) -> &str {
        self.lock.name()
    }

    /// The owner this hold belongs to.
    pub fn owner(&self) -> &Owner {
        &self.owner
    }

    /// The grant's fencing token: the same for every hold of one grant.
    pub fn fencing_token(&self) -> u64 {
        self.holding.lease.fencing_token
    }

    /// Whether the lease is still held as far as this client knows.
    pub fn is_held(&self) -> bool {
        self.holding.lease.is_held() && self.holding.lease.valid_until() > Instant::now()
    }

    /// Where the shared lease stands.
    pub fn status(&self) -> LeaseStatus {
        self.holding.lease.status()
    }

    /// Resolves when the lease is lost, with the reason.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn lost(&self) -> LossReason {
        let mut status = self.holding.lease.subscribe();
        loop {
            if let LeaseStatus::Lost(reason) = &*status.borrow_and_update() {
                return reason.clone();
            }
            if status.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Takes another hold for the same owner (one round trip; never waits, since the owner
    /// holds the lock).
    ///
    /// # Errors
    /// [`Error::Conflict`] if the lease was lost and another owner took the lock meanwhile;
    /// connection errors.
    pub async fn reenter(&self) -> Result<ReentrantGuard> {
        self.lock.try_lock(&self.owner).await
    }

    /// Sets the shared lease to `ttl` from now.
    ///
    /// # Errors
    /// As [`LockGuard::extend`](crate::LockGuard::extend).
    pub async fn extend(&self, ttl: Duration) -> Result<()> {
        crate::options::validate_ttl(ttl)?;
        let lease = &self.holding.lease;
        if let LeaseStatus::Lost(reason) = lease.status() {
            return Err(self.lost_error(reason));
        }
        let mut call = scripts::EXTEND.prepare_invoke();
        scripts::add_extend(
            &mut call,
            &lease.keys,
            &lease.token,
            ttl,
            lease.grant_check(),
        );
        let node = self.lock.lock.client().node();
        let sent_at = Instant::now();
        let reply: Vec<i64> = node.eval(&call, node.command_timeout()).await?;
        if reply == [1] {
            lease.extended(sent_at, ttl);
            return Ok(());
        }
        lease.finish(LeaseStatus::Lost(LossReason::KeyGone));
        Err(self.lost_error(LossReason::KeyGone))
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
    pub async fn release(mut self) -> Result<()> {
        let lease = self.holding.lease.clone();
        let lost_before = lease.lost_reason();
        let call = release_call(
            &lease.keys,
            self.owner.token(),
            &self.acquisition,
            Some(lease.fencing_token),
        );
        let deadline = match lost_before {
            Some(_) => Instant::now(),
            None => lease.valid_until(),
        };
        let nodes = self.lock.lock.client().nodes();
        let (tally, answers) = nodes
            .settle(
                deadline,
                |reply: &Vec<i64>| reply.first() == Some(&1),
                |node, timeout| node.eval::<Vec<i64>>(&call, timeout),
            )
            .await;
        let answer = answers.into_iter().next().flatten();
        if answer.is_none() && tally.errors.iter().any(|(_, e)| !e.is_retryable()) {
            // Not a connection problem (an ACL, a script error): leave the hold to Drop.
            return Err(tally.into_error(nodes, "releasing a hold"));
        }
        if answer.is_some() {
            self.released = true;
            self.holding.drop_guard();
        }
        // Otherwise Drop drops this guard's count and queues the release in the background.
        match (answer.as_deref(), lost_before) {
            (Some([1, left]), None) => {
                if *left == 0 {
                    lease.finish(LeaseStatus::Released);
                }
                Ok(())
            }
            (_, Some(reason)) => Err(self.lost_error(reason)),
            (Some(_), None) => Err(self.lost_error(LossReason::KeyGone)),
            (None, None) => Err(self.lost_error(LossReason::Unreachable(
                tally.into_error(nodes, "releasing a hold").to_string(),
            ))),
        }
    }

    fn lost_error(&self, reason: LossReason) -> Error {
        Error::Lost {
            key: self.name().to_owned(),
            reason,
        }
    }
}

impl Drop for ReentrantGuard {
    fn drop(&mut self) {
        if !self.released {
            self.holding.drop_guard();
            self.lock
                .lock
                .client()
                .watchdog()
                .release_hold_in_background(
                    self.holding.lease.keys.clone(),
                    self.owner.token().clone(),
                    self.acquisition.clone(),
                    Some(self.holding.lease.fencing_token),
                );
        }
    }
}

/// A `REENTRANT_RELEASE` call removing hold `acquisition` of `owner` from `keys`' lock, if
/// the lock is still the grant with fencing token `grant` (`None`: any grant of `owner`, for
/// undoing an acquisition whose reply never came).
pub(crate) fn release_call<'a>(
    keys: &LockKeys,
    owner: &Token,
    acquisition: &Token,
    grant: Option<u64>,
) -> redis::ScriptInvocation<'a> {
    let mut call = scripts::REENTRANT_RELEASE.prepare_invoke();
    call.key(&keys.lock)
        .key(&keys.info)
        .key(&keys.holds)
        .arg(owner.as_str())
        .arg(acquisition.as_str())
        .arg(&keys.channel)
        .arg(grant.map(|fence| fence.to_string()).unwrap_or_default());
    call
}
