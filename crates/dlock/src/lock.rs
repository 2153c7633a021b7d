//! [`Lock`]: a named lease lock on one Redis server.
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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::Value;
use tokio::time::Instant;

use crate::client::Client;
use crate::error::{Conflict, Error, Result};
use crate::guard::LockGuard;
use crate::holder::{int, pttl, HolderInfo};
use crate::key::LockKeys;
use crate::lease::{validity, Lease};
use crate::node::ReplicaLink;
use crate::notify::Subscription;
use crate::options::{LockOptions, Wait, FENCE_RETENTION};
use crate::quorum::quorum_error;
use crate::scripts;
use crate::token::Token;
use crate::watchdog::millis;

/// A named lease lock. Cheap to clone; made by [`Client::lock`] or [`Client::lock_with`].
///
/// The lock is not reentrant: a holder that locks it again waits (or fails) like anyone else.
#[derive(Debug, Clone)]
pub struct Lock {
    client: Client,
    keys: Arc<LockKeys>,
    options: Arc<LockOptions>,
}

/// The outcome of one acquisition attempt.
pub(crate) enum Attempt<G> {
    Granted(G),
    Busy(Busy),
}

/// A busy answer.
pub(crate) struct Busy {
    pub(crate) conflict: Conflict,
    /// Fair mode: time until the lease of the waiter just ahead of us in the queue ends.
    ahead_lease_left: Option<Duration>,
}

impl Lock {
    pub(crate) fn new(client: Client, keys: LockKeys, options: LockOptions) -> Lock {
        Lock {
            client,
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
    /// [`Error::Unavailable`], [`Error::Auth`] or [`Error::Redis`] when Redis fails.
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
        let pending = PendingAcquisition::new(self, Cleanup::Release, Token::generate()?);
        match self.attempt(&pending, None).await? {
            Attempt::Granted(guard) => Ok(guard),
            Attempt::Busy(busy) => Err(Error::Conflict(Box::new(busy.conflict))),
        }
    }

    /// Takes the lock, waiting while it is held, up to the wait limit of its options
    /// ([`LockOptions::wait`], 30 s by default).
    ///
    /// Waiting does not poll: after one busy answer the waiter subscribes to the lock's release
    /// channel and retries the moment a release is published, so a released lock is handed on
    /// in about one round trip. A timed re-check ([`LockOptions::recheck`], never later than
    /// the holder's remaining TTL) catches releases that publish nothing, such as a crashed
    /// holder's lease running out. In fair mode ([`LockOptions::fair`]) waiters are served in
    /// arrival order. Brief Redis outages are ridden out with backoff.
    ///
    /// # Errors
    /// [`Error::Timeout`] when the wait limit passes (naming the last holder seen);
    /// [`Error::Unavailable`] when Redis was unreachable at the end of the wait;
    /// [`Error::Auth`] or [`Error::Redis`] at once.
    ///
    /// # Cancel safety
    /// A dropped future leaves no lock behind (at worst one that expires with its TTL when
    /// Redis is unreachable), no fair-queue entry (withdrawn in the background; at worst it
    /// expires with its waiter lease), and no subscription.
    pub async fn lock(&self) -> Result<LockGuard> {
        let pending = PendingAcquisition::new(self, Cleanup::Release, Token::generate()?);
        let token = pending.token();
        self.wait_for(&token, |queue_for| self.attempt(&pending, queue_for))
            .await
    }

    /// The waiting loop shared by every lock kind: attempt, subscribe to wake-ups (unless a
    /// subscription is already live), retry, then sleep until a wake-up for `token` (or for
    /// everyone), the re-check or the deadline. `attempt` receives the fair-mode waiter lease
    /// to queue with (`None` outside fair mode).
    pub(crate) async fn wait_for<G, F, Fut>(&self, token: &Token, mut attempt: F) -> Result<G>
    where
        F: FnMut(Option<Duration>) -> Fut,
        Fut: std::future::Future<Output = Result<Attempt<G>>>,
    {
        let started = Instant::now();
        let deadline = match self.options.wait {
            // A limit past the clock's range is no limit (it used to panic).
            Wait::Limit(limit) => started.checked_add(limit),
            Wait::Forever => None,
        };
        // A subscription another waiter keeps (or one lingering) costs nothing: take it now,
        // and a first busy answer can be slept on at once.
        let mut wakeups: Option<Subscription> = self.client.notifier().live(&self.keys.channel);
        let mut failures = 0u32;
        loop {
            if let Some(subscription) = wakeups.as_mut() {
                subscription.mark_seen();
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let queue_for = self.options.fair.then(|| self.options.waiter_lease(left));
            let (pause, outcome) = match attempt(queue_for).await {
                Ok(Attempt::Granted(guard)) => return Ok(guard),
                Ok(Attempt::Busy(busy)) => {
                    failures = 0;
                    (
                        self.recheck_after(&busy),
                        Error::Conflict(Box::new(busy.conflict)),
                    )
                }
                Err(error) if error.is_retryable() => {
                    failures = failures.saturating_add(1);
                    (self.options.backoff.delay(failures - 1), error)
                }
                Err(error) => return Err(error),
            };
            let now = Instant::now();
            if deadline.is_some_and(|d| d <= now) {
                return Err(match outcome {
                    Error::Conflict(last) => Error::Timeout {
                        key: self.keys.lock.clone(),
                        waited: now - started,
                        last,
                    },
                    unavailable => unavailable,
                });
            }
            if wakeups.is_none() && outcome.is_conflict() {
                // Subscribe, then retry at once: a release published before the subscription
                // was in effect would otherwise be missed.
                let subscribing = self.client.notifier().subscribe(&self.keys.channel);
                wakeups = Some(match deadline {
                    Some(d) => match tokio::time::timeout_at(d, subscribing).await {
                        Ok(subscription) => subscription,
                        Err(_) => continue,
                    },
                    None => subscribing.await,
                });
                continue;
            }
            // Without a working wake-up channel (no channel permission, the first Redlock master
            // down, pub/sub reconnecting), the re-check interval is still the pause: it already
            // never sleeps past the holder's TTL, and polling faster only loads Redis (it used
            // to retry every few milliseconds). A reconnect wakes the waiter anyway.
            let until = match (now.checked_add(pause), deadline) {
                (Some(recheck), Some(deadline)) => Some(recheck.min(deadline)),
                (recheck, deadline) => recheck.or(deadline),
            };
            match wakeups.as_mut() {
                Some(subscription) => {
                    tokio::select! {
                        () = subscription.woken(token.as_str()) => {}
                        () = crate::clock::sleep_until(until) => {}
                    }
                }
                None => crate::clock::sleep_until(until).await,
            }
        }
    }

    /// How long a waiter may sleep after a busy answer when no wake-up comes: the re-check
    /// interval, but never past the holder's TTL (an expiry publishes nothing) nor, in fair
    /// mode, past the waiter lease of the one just ahead (a dead waiter is purged then).
    fn recheck_after(&self, busy: &Busy) -> Duration {
        let mut pause = self.options.recheck;
        for bound in [busy.conflict.ttl_left, busy.ahead_lease_left]
            .into_iter()
            .flatten()
        {
            pause = pause.min(bound + Duration::from_millis(1));
        }
        pause
    }

    /// This lock's state (see [`Client::status`]).
    ///
    /// # Errors
    /// Connection errors.
    pub async fn status(&self) -> Result<crate::LockStatus> {
        self.client.status(&self.keys.lock).await
    }

    /// One acquisition attempt with `pending`'s token: one script call. In fair mode,
    /// `queue_for` is the waiter lease to (re)join the queue with; `None` does not queue.
    async fn attempt(
        &self,
        pending: &PendingAcquisition,
        queue_for: Option<Duration>,
    ) -> Result<Attempt<LockGuard>> {
        let identity = self.client.identity();
        let ttl = self.options.ttl;
        let mut call = if self.options.fair {
            scripts::ACQUIRE_FAIR.prepare_invoke()
        } else {
            scripts::ACQUIRE.prepare_invoke()
        };
        call.key(&self.keys.lock)
            .key(&self.keys.info)
            .key(&self.keys.fence);
        if self.options.fair {
            call.key(&self.keys.queue).key(&self.keys.queue_leases);
        }
        // On Redlock every attempt has a fresh token: a failed attempt's rollback runs in the
        // background and may land after a retry; with its own token it can never delete the
        // retry's grant (with one token it did, and two owners held the lock: found by the
        // chaos suite). On one node a busy answer needs no rollback, so the token is kept,
        // which lets a retry whose first reply was lost find its own grant.
        let token = if self.client.nodes().is_single() {
            pending.token()
        } else {
            pending.fresh_token()?
        };
        call.arg(token.as_str())
            .arg(millis(ttl))
            .arg(millis(FENCE_RETENTION))
            .arg(&identity.host)
            .arg(identity.pid)
            .arg(self.options.label.as_deref().unwrap_or(""));
        if self.options.fair {
            call.arg(queue_for.map_or(0, millis))
                .arg(&self.keys.channel);
        }
        let nodes = self.client.nodes();
        // A guarded grant and its WAIT go on a link of their own (see `node::replica`); replica
        // guards are single-node only.
        let mut link = match self.options.min_replicas {
            Some(_) => Some(nodes.first().replica_link().await?),
            None => None,
        };
        pending.sending();
        let sent_at = Instant::now();
        let granted = |reply: &Result<Vec<Value>>| matches!(reply, Ok(reply) if reply.first().and_then(int) == Some(1));
        let replies = match link.as_mut() {
            Some(link) => {
                let node = nodes.first();
                vec![(0, link.eval(&call, node.command_timeout()).await)]
            }
            None => {
                nodes
                    .until(nodes.quorum(), granted, |node| {
                        node.eval::<Vec<Value>>(&call, node.command_timeout())
                    })
                    .await
            }
        };
        let mut fences = Vec::new();
        let mut busy: Option<Busy> = None;
        let mut failures = Vec::new();
        for (index, reply) in replies {
            match reply {
                Ok(reply) if reply.first().and_then(int) == Some(1) => {
                    let fence = reply
                        .get(1)
                        .and_then(int)
                        .and_then(|t| u64::try_from(t).ok());
                    match fence {
                        Some(fence) => fences.push((index, fence)),
                        None => failures.push((index, format!("acquire returned {reply:?}"))),
                    }
                }
                Ok(reply) => {
                    let answer = self.busy(&reply);
                    // Prefer an answer that names the holder.
                    if busy.as_ref().is_none_or(|b| b.conflict.holder.is_none()) {
                        busy = Some(answer);
                    }
                }
                Err(e) if nodes.is_single() => return Err(e),
                Err(e) => failures.push((index, e.to_string())),
            }
        }
        if fences.len() >= nodes.quorum() {
            let completed = match self
                .complete_grant(&token, &fences, sent_at, link.as_mut())
                .await
            {
                Ok(completed) => completed,
                Err(error) => {
                    // Undo the grant now, so the caller's error means "no lock".
                    let mut release = scripts::RELEASE.prepare_invoke();
                    scripts::add_release(&mut release, &self.keys, &token);
                    let undone = nodes
                        .all(|node| node.eval::<Vec<i64>>(&release, node.command_timeout()))
                        .await;
                    if undone.iter().all(Result::is_ok) {
                        pending.settled();
                    }
                    return Err(error);
                }
            };
            if let Some(fencing_token) = completed {
                let lease = Arc::new(
                    Lease::new(
                        self.keys.clone(),
                        token.clone(),
                        fencing_token,
                        ttl,
                        sent_at,
                        self.options.renew,
                        self.client.held_counter().clone(),
                    )
                    .with_min_replicas(self.options.min_replicas),
                );
                self.client.watchdog_for(&lease).track(lease.clone());
                let guard = LockGuard::new(lease, self.client.clone());
                pending.settled();
                return Ok(Attempt::Granted(guard));
            }
            failures.push((fences[0].0, "the grant outlived its validity".into()));
        }
        if !nodes.is_single() {
            // Redlock: undo any partial grant on every node (also those that did not answer:
            // their SET may still land), then report.
            self.client
                .watchdog()
                .release_in_background(self.keys.clone(), token.clone());
            pending.settled();
        } else if busy.is_some() && queue_for.is_none() {
            // A busy answer settles the doubt, unless it put us in the fair queue: that entry
            // must be withdrawn if we give up. A grant refused for arriving too late does not:
            // the key is ours, so it stays in doubt (a retry with this token finds it; giving
            // up releases it).
            pending.settled();
        }
        match busy {
            Some(busy) => Ok(Attempt::Busy(busy)),
            None => Err(quorum_error(nodes, "acquiring a lock", &failures)),
        }
    }

    /// Finishes a grant from a majority: on one node, just the token; on Redlock, the largest
    /// token of the granting nodes, written back to them (see [`crate::quorum`]), and only if
    /// the lease is still valid afterwards (`ttl − elapsed − drift > 0`). `None`: too late.
    async fn complete_grant(
        &self,
        token: &Token,
        fences: &[(usize, u64)],
        sent_at: Instant,
        link: Option<&mut ReplicaLink>,
    ) -> Result<Option<u64>> {
        let nodes = self.client.nodes();
        let fencing_token = fences.iter().map(|(_, fence)| *fence).max().unwrap_or(0);
        if !nodes.is_single() {
            let mut call = scripts::FENCE_RAISE.prepare_invoke();
            call.key(&self.keys.fence)
                .key(&self.keys.info)
                .key(&self.keys.lock)
                .arg(fencing_token)
                .arg(millis(FENCE_RETENTION))
                .arg(token.as_str());
            let written = futures_util::future::join_all(fences.iter().map(|(index, _)| {
                let node = nodes.get(*index);
                node.eval::<i64>(&call, node.command_timeout())
            }))
            .await;
            let confirmed = written.iter().filter(|w| matches!(w, Ok(1))).count();
            if confirmed < nodes.quorum() {
                return Ok(None);
            }
        }
        if let Some(guard) = &self.options.min_replicas {
            // The replica guard: the grant counts only once enough replicas have it. If they
            // do not, our caller's rollback releases it.
            let node = nodes.first();
            let link = link.ok_or_else(|| {
                Error::Internal("a guarded grant was made without its replica link".into())
            })?;
            let acked = link.wait_for_replicas(guard).await?;
            if acked < guard.replicas {
                return Err(Error::Unavailable {
                    node: node.name().to_owned(),
                    reason: format!(
                        "only {acked} of {} replicas acknowledged the lock within {}; released it",
                        guard.replicas,
                        crate::error::humanize(guard.timeout)
                    ),
                });
            }
        }
        let still_valid = Instant::now() < sent_at + validity(self.options.ttl);
        Ok(still_valid.then_some(fencing_token))
    }

    /// Parses a busy answer: `{0, pttl, holder info, server time ms[, waiter-ahead lease ms]}`.
    pub(crate) fn busy(&self, reply: &[Value]) -> Busy {
        let field = |i: usize| reply.get(i).unwrap_or(&Value::Nil);
        let server_now_ms = int(field(3))
            .and_then(|ms| u64::try_from(ms).ok())
            .unwrap_or(0);
        Busy {
            conflict: Conflict {
                key: self.keys.lock.clone(),
                ttl_left: pttl(field(1)),
                holder: HolderInfo::parse(field(2), server_now_ms),
            },
            ahead_lease_left: pttl(field(4)),
        }
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    pub(crate) fn keys(&self) -> &Arc<LockKeys> {
        &self.keys
    }
}

/// An acquisition in progress. While a request with its token may have taken the lock without
/// our knowing (sent, no definite answer yet, or failed in transit), dropping it (a cancelled
/// future, an error) queues its [`Cleanup`] in the background, so a grant that reached Redis
/// after the caller gave up does not leave an orphaned lock. A definite "busy" answer or a
/// grant clears that doubt, so a plain conflict costs no extra round trip.
pub(crate) struct PendingAcquisition {
    keys: Arc<LockKeys>,
    cleanup: Cleanup,
    /// The token of the current (latest) attempt.
    token: std::sync::Mutex<Token>,
    watchdog: crate::watchdog::Watchdog,
    in_doubt: AtomicBool,
}

/// How to undo an acquisition that may have happened.
pub(crate) enum Cleanup {
    /// Compare-and-delete the lock (and withdraw the token from the fair queue).
    Release,
    /// Remove this acquisition's hold from a reentrant lock owned by `owner`.
    ReleaseHold { owner: Token },
}

impl PendingAcquisition {
    pub(crate) fn new(lock: &Lock, cleanup: Cleanup, token: Token) -> Self {
        PendingAcquisition {
            keys: lock.keys.clone(),
            cleanup,
            token: std::sync::Mutex::new(token),
            watchdog: lock.client.watchdog().clone(),
            in_doubt: AtomicBool::new(false),
        }
    }

    /// The current attempt's token.
    pub(crate) fn token(&self) -> Token {
        self.token
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Starts an attempt with a new token (Redlock); the old one's rollback is the caller's.
    pub(crate) fn fresh_token(&self) -> Result<Token> {
        let token = Token::generate()?;
        *self
            .token
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = token.clone();
        Ok(token)
    }

    /// A request with this token is about to be sent.
    pub(crate) fn sending(&self) {
        self.in_doubt.store(true, Ordering::SeqCst);
    }

    /// Redis answered definitely: either busy (nothing set) or granted (the new lease's guard
    /// is now responsible for the lock).
    pub(crate) fn settled(&self) {
        self.in_doubt.store(false, Ordering::SeqCst);
    }
}

impl Drop for PendingAcquisition {
    fn drop(&mut self) {
        if !self.in_doubt.load(Ordering::SeqCst) {
            return;
        }
        let token = self.token();
        match &self.cleanup {
            Cleanup::Release => self
                .watchdog
                .release_in_background(self.keys.clone(), token),
            Cleanup::ReleaseHold { owner } => {
                self.watchdog
                    // The grant is unknown (no reply): any grant of this owner holding this
                    // acquisition id is the one to undo.
                    .release_hold_in_background(self.keys.clone(), owner.clone(), token, None)
            }
        }
    }
}
