//! What `dlock run` holds while its command runs: the lock KEY, or (with `--limit N`) one
//! permit of the semaphore KEY.
//!
//! Both are leases with the same model (renewed by the watchdog, lost with a reason, fenced),
//! so the supervision in `run.rs` is written once, against [`Lease`]; only taking and ending
//! one differ. A permit cannot be kept after its command ends (no `--min-hold`): `run` refuses
//! that combination before it connects.

use std::time::Duration;

use dlock::{
    Client, Error, LeaseStatus, Lock, LockGuard, LockOptions, LossReason, Semaphore,
    SemaphorePermit,
};

/// What `run` asks for: a lock, or a permit of a semaphore with this many permits.
pub enum Target {
    Lock(Lock),
    Semaphore(Semaphore),
}

impl Target {
    /// The lock `key`, or with `limit` the semaphore `key` of `limit` permits.
    pub fn new(
        client: &Client,
        key: &str,
        limit: Option<u32>,
        options: LockOptions,
    ) -> dlock::Result<Target> {
        Ok(match limit {
            None => Target::Lock(client.lock_with(key, options)?),
            Some(limit) => Target::Semaphore(client.semaphore_with(key, limit, options)?),
        })
    }

    /// Takes it if it is free; fails at once otherwise.
    ///
    /// # Cancel safety
    /// As the library's `try_lock` / `try_acquire`: nothing is left behind.
    pub async fn try_take(&self) -> dlock::Result<Lease> {
        match self {
            Target::Lock(lock) => lock.try_lock().await.map(Lease::Lock),
            Target::Semaphore(semaphore) => semaphore.try_acquire().await.map(Lease::Permit),
        }
    }

    /// Takes it, waiting as the options say.
    ///
    /// # Cancel safety
    /// As the library's `lock` / `acquire`: nothing is left behind.
    pub async fn take(&self) -> dlock::Result<Lease> {
        match self {
            Target::Lock(lock) => lock.lock().await.map(Lease::Lock),
            Target::Semaphore(semaphore) => semaphore.acquire().await.map(Lease::Permit),
        }
    }
}

/// A held lease: the lock, or one permit.
pub enum Lease {
    Lock(LockGuard),
    Permit(SemaphorePermit),
}

impl Lease {
    /// This grant's fencing token.
    pub fn fencing_token(&self) -> u64 {
        match self {
            Lease::Lock(guard) => guard.fencing_token(),
            Lease::Permit(permit) => permit.fencing_token(),
        }
    }

    /// Where the lease stands.
    pub fn status(&self) -> LeaseStatus {
        match self {
            Lease::Lock(guard) => guard.status(),
            Lease::Permit(permit) => permit.status(),
        }
    }

    /// Resolves when the lease is lost, with the reason.
    ///
    /// # Cancel safety
    /// Cancel safe (it watches a channel).
    pub async fn lost(&self) -> LossReason {
        match self {
            Lease::Lock(guard) => guard.lost().await,
            Lease::Permit(permit) => permit.lost().await,
        }
    }

    /// Resolves when renewals fail and at most `margin` of the lease is left, or it is lost.
    ///
    /// # Cancel safety
    /// Cancel safe (it watches the lease).
    pub async fn renewal_at_risk(&self, margin: Duration) {
        match self {
            Lease::Lock(guard) => guard.renewal_at_risk(margin).await,
            Lease::Permit(permit) => permit.renewal_at_risk(margin).await,
        }
    }

    /// Ends the lease: released, or for a lock with a non-zero `keep`, left to expire after
    /// `keep` (`--min-hold`). `Err(Error::Lost)` when it had been lost.
    ///
    /// # Errors
    /// As the library's `release` / `release_after`; [`Error::Internal`] for a `keep` on a
    /// permit, which `run` never asks for (a permit is released at once instead).
    pub async fn end(self, keep: Duration) -> dlock::Result<()> {
        match self {
            Lease::Lock(guard) if keep.is_zero() => guard.release().await,
            Lease::Lock(guard) => guard.release_after(keep).await,
            Lease::Permit(permit) => {
                let released = permit.release().await;
                if keep.is_zero() {
                    released
                } else {
                    released.and(Err(Error::Internal(
                        "a semaphore permit cannot be kept after its command (--min-hold)".into(),
                    )))
                }
            }
        }
    }
}

/// Whether `error` says the key holds another kind of value than the one asked for (Redis
/// `WRONGTYPE`): a lock and a semaphore share the name (the semaphore's holders live under the
/// bare name). On Redlock, any master answering so is enough.
pub fn is_wrong_type(error: &Error) -> bool {
    match error {
        Error::Redis { source, .. } => source.code() == Some("WRONGTYPE"),
        Error::Quorum { failures, .. } => failures.iter().any(|f| is_wrong_type(&f.error)),
        _ => false,
    }
}
