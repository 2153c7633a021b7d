//! [`MultiGuard`]: every member of a multi-key lock, held as one.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::primitive::lock::LockGuard;
use crate::{LeaseStatus, LossReason};

/// Every member of a [`MultiLock`](crate::MultiLock), each a plain lock with its own lease and
/// fencing token, renewed by the watchdog. The set is held while every member is: losing any
/// one is losing the guard, but the other members stay held (and renewed) until the guard is
/// released or dropped, so release it as soon as [`MultiGuard::lost`] resolves. Release it
/// with [`MultiGuard::release`]; dropping it releases every member in the background.
#[must_use = "dropping the guard releases every member at once (in the background)"]
#[derive(Debug)]
pub struct MultiGuard {
    /// Sorted by name, never empty.
    members: Vec<LockGuard>,
}

impl crate::telemetry::Granted for MultiGuard {
    fn fencing_token(&self) -> u64 {
        self.members[0].fencing_token()
    }
}

impl MultiGuard {
    pub(crate) fn new(members: Vec<LockGuard>) -> MultiGuard {
        MultiGuard { members }
    }

    /// The members' guards, sorted by name: each member's name, fencing token and lease.
    pub fn members(&self) -> &[LockGuard] {
        &self.members
    }

    /// The members' names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.members.iter().map(LockGuard::name)
    }

    /// The fencing token of member `name`'s grant (`None`: not a member). Each member's is
    /// larger than every earlier grant's token for that name, as a plain lock's.
    pub fn fencing_token(&self, name: &str) -> Option<u64> {
        self.members
            .iter()
            .find(|member| member.name() == name)
            .map(LockGuard::fencing_token)
    }

    /// Whether every member is still held as far as this client knows.
    pub fn is_held(&self) -> bool {
        self.members.iter().all(LockGuard::is_held)
    }

    /// How much longer every member is surely held by this process's clock: the shortest.
    pub fn remaining(&self) -> Duration {
        self.members
            .iter()
            .map(LockGuard::remaining)
            .min()
            .unwrap_or_default()
    }

    /// Where the set stands: held, or the first lost member's loss.
    pub fn status(&self) -> LeaseStatus {
        self.members
            .iter()
            .map(LockGuard::status)
            .find(|status| *status != LeaseStatus::Held)
            .unwrap_or(LeaseStatus::Held)
    }

    /// Resolves when any member is lost, with its reason; never resolves while all are held.
    ///
    /// # Cancel safety
    /// Cancel safe: it only watches the members' channels.
    pub async fn lost(&self) -> LossReason {
        let each = self.members.iter().map(|member| Box::pin(member.lost()));
        futures_util::future::select_all(each).await.0
    }

    /// Resolves when renewals of any member fail with at most `margin` of its validity left,
    /// or a member is no longer held (see [`LockGuard::renewal_at_risk`]).
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn renewal_at_risk(&self, margin: Duration) {
        let each = self
            .members
            .iter()
            .map(|member| Box::pin(member.renewal_at_risk(margin)));
        futures_util::future::select_all(each).await;
    }

    /// Sets every member's lease to `ttl` from now (one call per member, sent at once).
    ///
    /// # Errors
    /// As [`LockGuard::extend`]: [`Error::Lost`] naming a member that is no longer ours (the
    /// set is then lost), before any other member's error.
    ///
    /// # Cancel safety
    /// As [`LockGuard::extend`].
    pub async fn extend(&self, ttl: Duration) -> Result<()> {
        let each = self.members.iter().map(|member| member.extend(ttl));
        first_loss(futures_util::future::join_all(each).await)
    }

    /// Releases every member (one call per member, sent at once) and reports whether the set
    /// was held all along: `Ok(())` only if every member's lease was.
    ///
    /// # Errors
    /// [`Error::Lost`] naming a member whose lease had been lost, if any; otherwise the first
    /// member's other error (that member is then released in the background).
    ///
    /// # Cancel safety
    /// If the future is dropped, the members' guards release in the background.
    pub async fn release(self) -> Result<()> {
        let each = self.members.into_iter().map(LockGuard::release);
        first_loss(futures_util::future::join_all(each).await)
    }

    /// Ends the owner's use of every member but keeps each taken for `keep` more, as
    /// [`LockGuard::release_after`] does (`dlock run --and … --min-hold`).
    ///
    /// # Errors
    /// As [`MultiGuard::release`].
    pub async fn release_after(self, keep: Duration) -> Result<()> {
        let each = self
            .members
            .into_iter()
            .map(|member| member.release_after(keep));
        first_loss(futures_util::future::join_all(each).await)
    }
}

/// The members' outcomes as one: a loss first (it is what the caller must act on), then any
/// other error.
fn first_loss(outcomes: Vec<Result<()>>) -> Result<()> {
    let mut other = Ok(());
    for outcome in outcomes {
        match outcome {
            Err(lost @ Error::Lost { .. }) => return Err(lost),
            Err(error) if other.is_ok() => other = Err(error),
            _ => {}
        }
    }
    other
}
