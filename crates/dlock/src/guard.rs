//! [`LockGuard`]: proof of a granted lease, and the handle to extend, watch and release it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::lease::{Lease, LeaseStatus, LossReason};
use crate::options::validate_ttl;
use crate::quorum::Tally;
use crate::scripts;

/// A held lock. Release it with [`LockGuard::release`]; dropping it releases in the background.
///
/// Every guard is owned (`'static`): it keeps its client alive, so it can move into
/// `tokio::spawn` or be stored anywhere. A lease's life is bounded by Redis, not by a Rust
/// borrow, so a borrowing guard would add no safety.
///
/// While the guard lives, the watchdog renews the lease (unless renewal was turned off) and
/// reports its loss through [`LockGuard::lost`] and [`LockGuard::status`].
#[must_use = "dropping the guard releases the lock at once (in the background)"]
#[derive(Debug)]
pub struct LockGuard {
    lease: Arc<Lease>,
    client: Client,
    /// Set once `release()` has completed its round trip; `Drop` then has nothing to do.
    released: bool,
}

impl LockGuard {
    pub(crate) fn new(lease: Arc<Lease>, client: Client) -> LockGuard {
        LockGuard {
            lease,
            client,
            released: false,
        }
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.lease.keys.lock
    }

    /// This grant's fencing token: larger than every earlier grant's token for the same name,
    /// even across a Redis restart that lost the counter. Pass it to storage that rejects
    /// writes carrying a token smaller than one it has already seen.
    pub fn fencing_token(&self) -> u64 {
        self.lease.fencing_token
    }

    /// The current lease length.
    pub fn ttl(&self) -> Duration {
        self.lease.ttl()
    }

    /// How much longer the lease is surely valid by this process's clock: zero once lost.
    pub fn remaining(&self) -> Duration {
        if self.lease.is_held() {
            self.lease
                .valid_until()
                .saturating_duration_since(Instant::now())
        } else {
            Duration::ZERO
        }
    }

    /// Whether the lease is still held as far as this client knows: not lost, and within its
    /// conservative validity.
    pub fn is_held(&self) -> bool {
        self.lease.is_held() && self.lease.valid_until() > Instant::now()
    }

    /// Where the lease stands (held or lost, with the reason).
    pub fn status(&self) -> LeaseStatus {
        self.lease.status()
    }

    /// A channel that flips when the lease is lost, for `select!` loops that outlive a borrow.
    pub fn watch(&self) -> watch::Receiver<LeaseStatus> {
        self.lease.subscribe()
    }

    /// Resolves when the lease is lost, with the reason; never resolves while it is held.
    ///
    /// # Cancel safety
    /// Cancel safe: it only watches a channel.
    ///
    /// # Examples
    /// ```
    /// # async fn job() {}
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), dlock::Error> {
    /// # let server = dlock_test::RedisServer::start();
    /// # let client = dlock::Client::connect(&server.url()).await?;
    /// let guard = client.lock("import")?.lock().await?;
    /// tokio::select! {
    ///     () = job() => guard.release().await?,
    ///     reason = guard.lost() => eprintln!("stopped: lease lost ({reason})"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn lost(&self) -> LossReason {
        let mut status = self.lease.subscribe();
        loop {
            if let LeaseStatus::Lost(reason) = &*status.borrow_and_update() {
                return reason.clone();
            }
            if status.changed().await.is_err() {
                // The lease (and its sender) lives as long as this guard: unreachable, but
                // pending forever is the honest answer if it ever happened.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Sets the lease to `ttl` from now (one round trip). With renewal on, the watchdog keeps
    /// renewing to the new length.
    ///
    /// # Errors
    /// [`Error::Config`] for a TTL out of range; [`Error::Lost`] when the lease is no longer
    /// ours (the guard then reports the loss too); connection errors, after which the lease
    /// keeps its old expiry.
    ///
    /// # Cancel safety
    /// Cancel safe: the lease is either extended or not, and the guard's view stays
    /// conservative.
    pub async fn extend(&self, ttl: Duration) -> Result<()> {
        validate_ttl(ttl)?;
        self.check_held()?;
        let mut call = scripts::EXTEND.prepare_invoke();
        scripts::add_extend(&mut call, &self.lease.keys, &self.lease.token, ttl, None);
        let nodes = self.client.nodes();
        let sent_at = Instant::now();
        let tally = Tally::of(
            nodes
                .all(|node| node.eval(&call, node.command_timeout()))
                .await,
        );
        if tally.agreed(nodes) {
            self.lease.extended(sent_at, ttl);
            return Ok(());
        }
        if tally.refused(nodes) {
            self.lease.finish(LeaseStatus::Lost(LossReason::KeyGone));
            return self.check_held();
        }
        Err(tally.into_error(nodes, "extending a lease"))
    }

    /// Releases the lock (one round trip) and reports whether the lease was held all along.
    ///
    /// `Ok(())` means the key still held this guard's token, so no other owner held the lock
    /// at any time since it was granted. Renewal stops before the release is sent.
    ///
    /// A release that fails on a dropped connection (a Redis restart, a network blip) is
    /// retried on the new connection while the lease can still be valid, so a restart that
    /// lost the key is reported as a loss rather than as a connection error.
    ///
    /// # Errors
    /// [`Error::Lost`] when the lease had been lost (expired, deleted, taken over, lost in a
    /// restart, or reported lost earlier): the critical section may have overlapped another
    /// owner's. Also [`Error::Lost`] with [`LossReason::Unreachable`] when no answer came
    /// before the lease's validity ended: nobody can vouch for the lease then. Other errors
    /// (e.g. an ACL refusing the script) are returned as they are; the release is then retried
    /// in the background and the lock otherwise expires with its TTL.
    ///
    /// # Cancel safety
    /// If the future is dropped, the guard's drop queues the release in the background.
    pub async fn release(self) -> Result<()> {
        let mut call = scripts::RELEASE.prepare_invoke();
        scripts::add_release(&mut call, &self.lease.keys, &self.lease.token);
        self.end(call, "releasing a lock").await
    }

    /// Ends the owner's use of the lock but keeps it taken for `keep` more (then it expires),
    /// so a duplicate of a job that finished quickly is still refused for a while: a
    /// "minimum hold" that costs no waiting and survives this process's death. Renewal stops;
    /// [`HolderInfo::finished`](crate::HolderInfo::finished) marks the lock. A zero `keep` is a
    /// plain [`release`](LockGuard::release).
    ///
    /// # Errors
    /// As [`LockGuard::release`]; [`Error::Config`] when `keep` is longer than
    /// [`MAX_TTL`](crate::MAX_TTL).
    ///
    /// # Cancel safety
    /// If the future is dropped, the lock is released in the background (without the hold).
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), dlock::Error> {
    /// # let server = dlock_test::RedisServer::start();
    /// # let client = dlock::Client::connect(&server.url()).await?;
    /// let guard = client.lock("nightly-report")?.try_lock().await?;
    /// // ... the job, done in seconds ...
    /// // A duplicate started in the next 5 minutes is still refused.
    /// guard.release_after(Duration::from_secs(300)).await?;
    /// let late = client.lock("nightly-report")?.try_lock().await.unwrap_err();
    /// assert!(late.conflict().and_then(|c| c.holder.as_ref()).is_some_and(|h| h.finished));
    /// # Ok(()) }
    /// ```
    pub async fn release_after(self, keep: Duration) -> Result<()> {
        if keep.is_zero() {
            return self.release().await;
        }
        if keep > crate::MAX_TTL {
            return Err(Error::Config(format!(
                "a minimum hold of {} is longer than the longest lease ({})",
                crate::error::humanize(keep),
                crate::error::humanize(crate::MAX_TTL)
            )));
        }
        let mut call = scripts::KEEP.prepare_invoke();
        call.key(&self.lease.keys.lock)
            .key(&self.lease.keys.info)
            .key(&self.lease.keys.holds)
            .arg(self.lease.token.as_str())
            .arg(crate::watchdog::millis(keep));
        self.end(call, "keeping a lock").await
    }

    /// Resolves when renewals are failing and at most `margin` of the lease's conservative
    /// validity is left, or when the lease is no longer held: the moment to start winding
    /// down work that must be finished (or stopped) before the lease can end. Never resolves
    /// while renewals succeed.
    ///
    /// # Cancel safety
    /// Cancel safe: it only watches the lease.
    ///
    /// # Examples
    /// Stop work early enough to finish cleanly before the lease can end:
    /// ```
    /// use std::time::Duration;
    /// # async fn work() {}
    /// # async fn wind_down() {}
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), dlock::Error> {
    /// # let server = dlock_test::RedisServer::start();
    /// # let client = dlock::Client::connect(&server.url()).await?;
    /// let guard = client.lock("import")?.lock().await?;
    /// tokio::select! {
    ///     () = work() => {}
    ///     () = guard.renewal_at_risk(Duration::from_secs(5)) => wind_down().await,
    /// }
    /// guard.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn renewal_at_risk(&self, margin: Duration) {
        self.lease.at_risk(margin).await;
    }

    /// Ends the lease with a one-lock release-like `call` (release, keep): renewal stops first,
    /// then the call goes to every node, retried until decided or the lease's validity ends.
    /// Nodes that never answered get a release in the background (via Drop).
    async fn end(mut self, call: redis::ScriptInvocation<'_>, what: &str) -> Result<()> {
        let lost_before = self.lease.lost_reason();
        // Leave `Held` first: from here on the watchdog sends no renewal for this lease.
        self.lease.finish(LeaseStatus::Released);
        let nodes = self.client.nodes();
        // A lease already lost has nothing left to confirm: one try, to clean up.
        let deadline = match lost_before {
            Some(_) => Instant::now(),
            None => self.lease.valid_until(),
        };
        let (tally, _) = nodes
            .settle(
                deadline,
                |reply: &Vec<i64>| reply.as_slice() == [1],
                |node, timeout| node.eval::<Vec<i64>>(&call, timeout),
            )
            .await;
        self.released = tally.errors.is_empty();
        let lost = |reason: LossReason| Error::Lost {
            key: self.lease.keys.lock.clone(),
            reason,
        };
        match lost_before {
            Some(reason) => Err(lost(reason)),
            None if tally.agreed(nodes) => Ok(()),
            None if tally.refused(nodes) => Err(lost(LossReason::KeyGone)),
            None if tally.errors.iter().all(|(_, e)| e.is_retryable()) => {
                // No majority answered before the lease could have ended.
                Err(lost(LossReason::Unreachable(
                    tally.into_error(nodes, what).to_string(),
                )))
            }
            None => Err(tally.into_error(nodes, what)),
        }
    }

    fn check_held(&self) -> Result<()> {
        match self.lease.status() {
            LeaseStatus::Held => Ok(()),
            LeaseStatus::Lost(reason) => Err(Error::Lost {
                key: self.lease.keys.lock.clone(),
                reason,
            }),
            LeaseStatus::Released => Err(Error::NotOwner {
                key: self.lease.keys.lock.clone(),
            }),
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if !self.released {
            // Never block in Drop: flag the lease (no more renewals) and let the watchdog send
            // the compare-and-delete. It runs even if the lease was lost, in case the key still
            // holds our token (e.g. renewal replies were lost), so others need not wait out
            // the TTL.
            self.lease.finish(LeaseStatus::Released);
            self.client
                .watchdog()
                .release_in_background(self.lease.keys.clone(), self.lease.token.clone());
        }
    }
}
