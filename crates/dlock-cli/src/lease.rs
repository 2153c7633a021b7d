//! What `dlock run` holds while its command runs: the lock KEY, (with `--limit N`) one permit
//! of the semaphore KEY, (with `--shared`) a read hold on the read-write lock KEY, or (with
//! `--and KEY2 …`) the locks KEY, KEY2 … all at once.
//!
//! All are leases with the same model (renewed by the watchdog, lost with a reason, fenced),
//! so the supervision in `run.rs` is written once, against [`Lease`]; only taking and ending
//! one differ. A permit cannot be kept after its command ends (no `--min-hold`): `run` refuses
//! that combination before it connects.

use std::time::Duration;

use dlock::{
    Client, Error, LeaseStatus, Lock, LockGuard, LockOptions, LossReason, MultiGuard, MultiLock,
    ReadGuard, RwLock, Semaphore, SemaphorePermit,
};

/// What `run` asks for: a lock, a permit of a semaphore with this many permits, or a shared
/// (read) hold.
pub enum Target {
    Lock(Lock),
    Semaphore(Semaphore),
    Shared(RwLock),
    /// The locks KEY and every `--and` KEY, in that order (for the fencing tokens).
    Multi(MultiLock, Vec<String>),
}

/// Which kind of hold `run` asks for (`--limit N`, `--shared`, `--and KEY2 …`, or none).
#[derive(Debug, Clone)]
pub enum Kind {
    Lock,
    Permit(u32),
    Shared,
    /// The other keys (`--and`).
    And(Vec<String>),
}

impl Target {
    /// The lock `key`, the semaphore `key` of `limit` permits, or the read-write lock `key`.
    pub fn new(
        client: &Client,
        key: &str,
        kind: Kind,
        options: LockOptions,
    ) -> dlock::Result<Target> {
        Ok(match kind {
            Kind::Lock => Target::Lock(client.lock_with(key, options)?),
            Kind::Permit(limit) => Target::Semaphore(client.semaphore_with(key, limit, options)?),
            Kind::Shared => Target::Shared(client.rw_lock_with(key, options)?),
            Kind::And(others) => {
                let mut keys = vec![key.to_owned()];
                keys.extend(others);
                Target::Multi(client.multi_lock_with(&keys, options)?, keys)
            }
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
            Target::Shared(rw) => rw.try_read().await.map(Lease::Shared),
            Target::Multi(multi, keys) => multi
                .try_lock()
                .await
                .map(|guard| Lease::Multi(guard, keys.clone())),
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
            Target::Shared(rw) => rw.read().await.map(Lease::Shared),
            Target::Multi(multi, keys) => multi
                .lock()
                .await
                .map(|guard| Lease::Multi(guard, keys.clone())),
        }
    }
}

/// A held lease: the lock, one permit, or a shared hold.
pub enum Lease {
    Lock(LockGuard),
    Permit(SemaphorePermit),
    Shared(ReadGuard),
    /// Every lock of `--and`, and the keys in command-line order.
    Multi(MultiGuard, Vec<String>),
}

impl Lease {
    /// This grant's fencing token (with `--and`, KEY's).
    pub fn fencing_token(&self) -> u64 {
        self.fencing_tokens()[0]
    }

    /// The fencing tokens of every lock held, in command-line order (KEY first); never empty.
    pub fn fencing_tokens(&self) -> Vec<u64> {
        match self {
            Lease::Lock(guard) => vec![guard.fencing_token()],
            Lease::Permit(permit) => vec![permit.fencing_token()],
            Lease::Shared(guard) => vec![guard.fencing_token()],
            Lease::Multi(guard, keys) => keys
                .iter()
                .map(|key| guard.fencing_token(key).unwrap_or_default())
                .collect(),
        }
    }

    /// Where the lease stands.
    pub fn status(&self) -> LeaseStatus {
        match self {
            Lease::Lock(guard) => guard.status(),
            Lease::Permit(permit) => permit.status(),
            Lease::Shared(guard) => guard.status(),
            Lease::Multi(guard, _) => guard.status(),
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
            Lease::Shared(guard) => guard.lost().await,
            Lease::Multi(guard, _) => guard.lost().await,
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
            Lease::Shared(guard) => guard.renewal_at_risk(margin).await,
            Lease::Multi(guard, _) => guard.renewal_at_risk(margin).await,
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
            Lease::Multi(guard, _) if keep.is_zero() => guard.release().await,
            Lease::Multi(guard, _) => guard.release_after(keep).await,
            Lease::Shared(guard) => guard.release().await.and(match keep.is_zero() {
                true => Ok(()),
                false => Err(Error::Internal(
                    "a shared hold cannot be kept after its command (--min-hold)".into(),
                )),
            }),
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
