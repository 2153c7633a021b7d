//! [`LockGuard`]: proof of a granted lease, and the handle to extend, watch and release it.

use std::sync::Arc;
use std::time::Duration;

use super::Held;
use crate::engine::handle::{lease_methods, LeaseHandle};
use crate::engine::ops;
use crate::engine::riders::Holding;
use crate::error::{Error, Result};
use crate::scripts;
use crate::units::{humanize, millis};

/// A held lock. Release it with [`LockGuard::release`]; dropping it releases in the background.
///
/// Every guard is owned (`'static`): it keeps its client alive, so it can move into
/// `tokio::spawn` or be stored anywhere. A lease's life is bounded by Redis, not by a Rust
/// borrow, so a borrowing guard would add no safety.
///
/// While the guard lives, the watchdog renews the lease (unless renewal was turned off) and
/// reports its loss through [`LockGuard::lost`] and [`LockGuard::status`].
///
/// # Examples
/// Stop work when the lease is lost:
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
#[must_use = "dropping the guard releases the lock at once (in the background)"]
#[derive(Debug)]
pub struct LockGuard {
    handle: LeaseHandle,
    /// The lock's keys and this grant's token, for the lock's own ending (`release_after`).
    held: Arc<Held>,
    /// Counts this guard on its lock's board while it lives (one Redis): this client's waiters
    /// may ride on its release (see `engine::riders`). Dropped after the release's outcome.
    _holding: Option<Holding>,
}

impl crate::telemetry::Granted for LockGuard {
    fn fencing_token(&self) -> u64 {
        LockGuard::fencing_token(self)
    }
}

impl LockGuard {
    pub(crate) fn new(handle: LeaseHandle, held: Arc<Held>, holding: Option<Holding>) -> LockGuard {
        LockGuard {
            handle,
            held,
            _holding: holding,
        }
    }

    lease_methods!(handle, "lock");

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
    /// owner's. Also [`Error::Lost`] with [`LossReason::Unreachable`](crate::LossReason) when
    /// no answer came before the lease's validity ended: nobody can vouch for the lease then.
    /// Other errors (e.g. an ACL refusing the script) are returned as they are; the release is
    /// then retried in the background and the lock otherwise expires with its TTL.
    ///
    /// # Cancel safety
    /// If the future is dropped, the guard's drop queues the release in the background. A
    /// release already sent may have handed the lock to a waiter of this client, whose news
    /// was in the reply: the drop wakes this client's waiters on the lock, and that one finds
    /// its grant.
    pub async fn release(self) -> Result<()> {
        self.handle.release().await
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
                humanize(keep),
                humanize(crate::MAX_TTL)
            )));
        }
        let held = self.held.clone();
        let call = ops::one(&scripts::KEEP, |call| {
            call.key(&held.keys.lock)
                .key(&held.keys.info)
                .key(&held.keys.holds)
                .arg(held.token.as_str())
                .arg(millis(keep));
        });
        self.handle.end_keeping(call, "keeping a lock").await
    }

    /// Releases the lock without the wake-up for everyone (a hand-off to a queued waiter is
    /// still told): a multi-key lock giving back a member it took for an attempt that failed,
    /// whose own waiter listens on that member's channel and would wake itself and spin.
    pub(crate) async fn give_back(self) -> Result<()> {
        let quiet = self.held.quiet();
        let call = ops::one(&scripts::RELEASE, |call| {
            use crate::engine::ops::ReleaseOp as _;
            quiet.add_release(call);
        });
        self.handle.end(call, "giving back").await
    }
}
