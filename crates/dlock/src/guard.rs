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
    /// ```no_run
    /// # async fn job() {}
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), dlock::Error> {
    /// # let client = dlock::Client::connect("redis://127.0.0.1/").await?;
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
        scripts::add_extend(&mut call, &self.lease.keys, &self.lease.token, ttl);
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
    /// # Errors
    /// [`Error::Lost`] when the lease had been lost (expired, deleted, taken over, or reported
    /// lost earlier): the critical section may have overlapped another owner's. Connection
    /// errors: the release was retried in the background and the lock otherwise expires with
    /// its TTL.
    ///
    /// # Cancel safety
    /// If the future is dropped, the guard's drop queues the release in the background.
    pub async fn release(mut self) -> Result<()> {
        let lost_before = match self.lease.status() {
            LeaseStatus::Lost(reason) => Some(reason),
            _ => None,
        };
        // Leave `Held` first: from here on the watchdog sends no renewal for this lease.
        self.lease.finish(LeaseStatus::Released);
        let mut call = scripts::RELEASE.prepare_invoke();
        scripts::add_release(&mut call, &self.lease.keys, &self.lease.token);
        let nodes = self.client.nodes();
        let tally = Tally::of(
            nodes
                .all(|node| node.eval(&call, node.command_timeout()))
                .await,
        );
        // Nodes that did not answer get the release again in the background (via Drop).
        self.released = tally.errors.is_empty();
        let lost = |reason: Option<LossReason>| Error::Lost {
            key: self.lease.keys.lock.clone(),
            reason: reason.unwrap_or(LossReason::KeyGone),
        };
        match lost_before {
            Some(reason) => Err(lost(Some(reason))),
            None if tally.agreed(nodes) => Ok(()),
            None if tally.refused(nodes) => Err(lost(None)),
            None => Err(tally.into_error(nodes, "releasing a lock")),
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
