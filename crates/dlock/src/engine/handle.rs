//! One granted lease as its guard sees it: written once for every primitive's guard.
//!
//! A [`LeaseHandle`] is the guard's share of a lease: `lost`, `watch`, `is_held`, `remaining`,
//! `extend` and the end of the hold (`release`, or a primitive's own ending script) live here.
//! Several handles may share one lease (the holds of a reentrant lock): the lease stops being
//! renewed when the last of them ends, and each handle ends its own hold.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument as _;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::connection::quorum::Verdict;
use crate::engine::lease::{Lease, LeaseStatus, LossReason, Sent};
use crate::engine::ops::{self, ReleaseOp};
use crate::engine::riders::add_riders;
use crate::engine::Core;
use crate::error::{Error, Result};
use crate::options::validate_ttl;

/// A lease with a count of the handles (guards) that hold it in this process.
#[derive(Debug)]
pub(crate) struct Shared {
    pub lease: Arc<Lease>,
    handles: AtomicUsize,
}

impl Shared {
    /// A lease with its first handle counted (the one about to be made from it).
    pub fn new(lease: Arc<Lease>) -> Arc<Shared> {
        Arc::new(Shared {
            lease,
            handles: AtomicUsize::new(1),
        })
    }

    /// Counts one more handle, unless the last one has left (the lease is then ending, and
    /// a new handle must get a lease of its own): `false` then. A count that reached zero
    /// never rises again, so the last one out can end the lease without a race.
    pub fn try_join(&self) -> bool {
        self.handles
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n > 0).then_some(n + 1)
            })
            .is_ok()
    }

    /// One handle fewer; the last one stops renewal.
    /// Returns whether this was the last handle and the lease, still held, is now released
    /// (then the caller reports how the hold ended: see `Lease::report_end`).
    fn leave(&self) -> bool {
        self.handles.fetch_sub(1, Ordering::SeqCst) == 1 && self.lease.finish(LeaseStatus::Released)
    }
}

/// A guard's handle on its lease. Dropping it without ending the hold releases the hold in the
/// background.
#[derive(Debug)]
pub(crate) struct LeaseHandle {
    shared: Arc<Shared>,
    core: Arc<Core>,
    /// How to end this handle's hold.
    hold: Arc<dyn ReleaseOp>,
    /// This handle no longer counts among the lease's holders.
    left: bool,
    /// The nodes that have not answered the hold's end (every node until it is sent): `Drop`
    /// sends it to them in the background.
    unended: Vec<usize>,
    /// A release asked for this client's hand-offs in its reply and did not read them all:
    /// `Drop` wakes this client's waiters on the lock, lest one was handed it and never told.
    handoffs_unread: bool,
}

impl LeaseHandle {
    /// A handle on `shared`, which has already counted it ([`Shared::new`] or
    /// [`Shared::try_join`]).
    pub fn new(shared: Arc<Shared>, core: Arc<Core>, hold: Arc<dyn ReleaseOp>) -> LeaseHandle {
        LeaseHandle {
            shared,
            hold,
            unended: (0..core.nodes().len()).collect(),
            left: false,
            handoffs_unread: false,
            core,
        }
    }

    fn lease(&self) -> &Lease {
        &self.shared.lease
    }

    pub fn name(&self) -> &str {
        self.lease().name()
    }

    pub fn fencing_token(&self) -> u64 {
        self.lease().fencing_token
    }

    pub fn ttl(&self) -> Duration {
        self.lease().ttl()
    }

    pub fn remaining(&self) -> Duration {
        if self.lease().is_held() {
            self.lease()
                .valid_until()
                .saturating_duration_since(Instant::now())
        } else {
            Duration::ZERO
        }
    }

    pub fn is_held(&self) -> bool {
        self.lease().is_held() && self.lease().valid_until() > Instant::now()
    }

    pub fn status(&self) -> LeaseStatus {
        self.lease().status()
    }

    pub fn watch(&self) -> watch::Receiver<LeaseStatus> {
        self.lease().subscribe()
    }

    pub async fn lost(&self) -> LossReason {
        let mut status = self.lease().subscribe();
        loop {
            if let LeaseStatus::Lost(reason) = &*status.borrow_and_update() {
                return reason.clone();
            }
            if status.changed().await.is_err() {
                // The lease (and its sender) lives as long as this handle: unreachable, but
                // pending forever is the honest answer if it ever happened.
                std::future::pending::<()>().await;
            }
        }
    }

    pub async fn renewal_at_risk(&self, margin: Duration) {
        self.lease().at_risk(margin).await;
    }

    /// Sets the lease to `ttl` from now, on a majority (one round trip).
    pub async fn extend(&self, ttl: Duration) -> Result<()> {
        validate_ttl(ttl)?;
        self.check_held()?;
        let lease = self.lease();
        // Never beside a renewal of this lease (see `Lease::expiry_change`); the watchdog
        // skips the lease meanwhile, and is told when the extend is done, however it ends
        // (a cancelled extend too).
        let _alone = lease.expiry_change.clone().lock_owned().await;
        let _told = Rewatch {
            core: &self.core,
            lease,
        };
        self.check_held()?;
        if ttl < lease.ttl() {
            lease.shorten_to(ttl);
        }
        let call = ops::one(lease.ops.renew_script(), |call| {
            lease.ops.add_renew(call, ttl)
        });
        let nodes = self.core.nodes();
        let sent_at = Instant::now();
        // Decided by a majority: a frozen master must not hold the extend (and the renewals
        // waiting behind it) for a whole command timeout. One try: an error leaves the lease
        // as it was, for the caller to retry or the watchdog to renew.
        let (tally, _) = nodes
            .settle(
                lease.quorum,
                sent_at,
                |reply: &Vec<i64>| reply.as_slice() == [1],
                |node, timeout| {
                    let call = &call;
                    async move {
                        match &lease.min_replicas {
                            Some(guard) => {
                                node.eval_acked::<Vec<i64>>(call, lease.ops.slot(), guard)
                                    .await
                            }
                            None => node.eval::<Vec<i64>>(call, timeout).await,
                        }
                    }
                },
            )
            .await;
        let verdict = tally.verdict(nodes, lease.quorum);
        // The lease may have run out while the extend was on its way: then it stays lost
        // (the watchdog has let it go), whatever the servers answered.
        self.check_held()?;
        if verdict == Verdict::Agreed {
            lease.extended(sent_at, ttl);
        }
        match verdict {
            Verdict::Agreed => Ok(()),
            Verdict::Refused => {
                lease.finish(LeaseStatus::Lost(LossReason::KeyGone));
                self.check_held()
            }
            Verdict::Undecided => Err(tally.into_error(nodes, lease.quorum, "extending a lease")),
        }
    }

    /// Releases this handle's hold (see `LockGuard::release` for the contract).
    pub async fn release(mut self) -> Result<()> {
        let hold = self.hold.clone();
        // One Redis: a hand-off to a waiter of this client comes back in the reply.
        let with_inbox = hold.handoff_channel().is_some() && self.core.nodes().is_single();
        self.handoffs_unread = with_inbox;
        // Waiters of this client riding on this release are queued by it (see `riders`).
        let board = hold.rider_board().filter(|_| with_inbox);
        let riders = board.map_or_else(Vec::new, |board| self.core.riders().take(board));
        let core = self.core.clone();
        let call = ops::one(hold.release_script(), |call| {
            hold.add_release(call);
            if with_inbox {
                call.arg(core.notifier().inbox());
            }
            add_riders(call, core.identity(), &riders);
        });
        // No later than the call is sent: a rider handed the lock counts its claim from here.
        let sent = Sent::now();
        let result = self.end(call, "releasing").await;
        // Released: the script queued them (an error leaves that in doubt: they retry).
        for rider in riders {
            rider.carried(result.is_ok().then_some(sent));
        }
        result
    }

    /// Ends the hold with a one-lease `call` answered by `[1]` (ours) or `[0]` (`release()`
    /// may get hand-off messages for this client after it, delivered here): this handle
    /// leaves the lease first (the last one out stops renewal), then the call goes to every
    /// node, retried until decided or the lease's validity ends. Nodes that never answered
    /// get the hold's release in the background (via Drop), and only they.
    pub async fn end(self, call: redis::ScriptInvocation<'_>, what: &str) -> Result<()> {
        self.end_traced(call, what, false).await
    }

    /// [`LeaseHandle::end`] for a call that keeps the key (a minimum hold): sent only after a
    /// renewal already in flight, which would otherwise stretch the kept key again.
    pub async fn end_keeping(self, call: redis::ScriptInvocation<'_>, what: &str) -> Result<()> {
        self.end_traced(call, what, true).await
    }

    async fn end_traced(
        self,
        call: redis::ScriptInvocation<'_>,
        what: &str,
        after_renewals: bool,
    ) -> Result<()> {
        let span = tracing::debug_span!(
            "dlock.release",
            name = self.hold.name(),
            fencing_token = self.lease().fencing_token
        );
        self.end_in(call, what, after_renewals)
            .instrument(span)
            .await
    }

    async fn end_in(
        mut self,
        call: redis::ScriptInvocation<'_>,
        what: &str,
        after_renewals: bool,
    ) -> Result<()> {
        self.left = true;
        let last_out = self.shared.leave();
        // After a renewal already in flight (none starts once the last handle left): one that
        // landed after a release that keeps the key (a minimum hold) would stretch it again.
        // A plain release need not wait (no renewal re-creates a deleted key), and must not:
        // a guarded renewal may sit in its `WAIT` for the guard's whole timeout.
        let _alone = match after_renewals {
            true => Some(self.lease().expiry_change.clone().lock_owned().await),
            false => None,
        };
        let result = self.settle_end(call, what).await;
        if last_out {
            // Known only now: whether the hold was ours to the end (a loss found at release
            // counts as a loss, not a release).
            self.lease().report_end(&match &result {
                Err(Error::Lost { reason, .. }) => LeaseStatus::Lost(reason.clone()),
                _ => LeaseStatus::Released,
            });
        }
        result
    }

    /// Sends the end of the hold and decides what it means (see [`LeaseHandle::end`]).
    async fn settle_end(&mut self, call: redis::ScriptInvocation<'_>, what: &str) -> Result<()> {
        let lost_before = self.lease().lost_reason();
        let nodes = self.core.nodes();
        // A lease already lost has nothing left to confirm: one try, to clean up.
        let deadline = match lost_before {
            Some(_) => Instant::now(),
            None => self.lease().valid_until(),
        };
        let quorum = self.lease().quorum;
        let (tally, answers) = nodes
            .settle(
                quorum,
                deadline,
                |reply: &Vec<redis::Value>| matches!(reply.first(), Some(redis::Value::Int(1))),
                |node, timeout| node.eval::<Vec<redis::Value>>(&call, timeout),
            )
            .await;
        self.unended = tally.errors.iter().map(|(index, _)| *index).collect();
        // Every hand-off the release made is in the reply that released the hold. Any other
        // outcome may hide one behind a lost reply, even one whose only try answered 0: a
        // Cluster connection resends a call whose connection dropped, unseen by us.
        let notifier = self.core.notifier();
        // Handed to a waiter of this client, which has yet to take it: riders may ride on its
        // release meanwhile (marked before it hears of it: its guard then counts instead).
        if let Some(board) = self.hold.rider_board() {
            if notifier.grants_here(answers.iter().flatten(), board) {
                self.core.riders().handed(board);
            }
        }
        let told = answers
            .iter()
            .flatten()
            .map(|r| notifier.deliver_handoffs(r));
        if told.fold(false, |any, released| any | released) {
            self.handoffs_unread = false;
        }
        let lost = |reason: LossReason| Error::Lost {
            key: self.name().to_owned(),
            reason,
        };
        if let Some(reason) = lost_before {
            return Err(lost(reason));
        }
        match tally.verdict(nodes, quorum) {
            Verdict::Agreed => Ok(()),
            Verdict::Refused => Err(lost(LossReason::KeyGone)),
            Verdict::Undecided if tally.errors.iter().all(|(_, e)| e.is_retryable()) => {
                // No majority answered before the lease could have ended.
                Err(lost(LossReason::Unreachable(
                    tally.into_error(nodes, quorum, what).to_string(),
                )))
            }
            Verdict::Undecided => Err(tally.into_error(nodes, quorum, what)),
        }
    }

    fn check_held(&self) -> Result<()> {
        match self.lease().status() {
            LeaseStatus::Held => Ok(()),
            LeaseStatus::Lost(reason) => Err(Error::Lost {
                key: self.name().to_owned(),
                reason,
            }),
            LeaseStatus::Released => Err(Error::NotOwner {
                key: self.name().to_owned(),
            }),
        }
    }
}

/// Tells the watchdog to look at `lease` again when dropped: renewals it skipped while an
/// extend ran are due, and a shorter TTL is due sooner than it planned.
struct Rewatch<'a> {
    core: &'a Core,
    lease: &'a Lease,
}

impl Drop for Rewatch<'_> {
    fn drop(&mut self) {
        self.core.rewatch(self.lease);
    }
}

impl Drop for LeaseHandle {
    fn drop(&mut self) {
        // Their retries go down the connection the release went down, behind it, so they find
        // its grant; only a reconnect in between could put a retry first (the re-check then).
        if let (true, Some(channel)) = (self.handoffs_unread, self.hold.handoff_channel()) {
            self.core.notifier().wake_all(channel);
        }
        if !self.left && self.shared.leave() {
            // Released in the background: its outcome is nobody's to learn.
            self.lease().report_end(&LeaseStatus::Released);
        }
        if !self.unended.is_empty() {
            // Never block in Drop: the lease no longer counts this handle (no more renewals
            // once the last one is gone), and the watchdog sends the release to the nodes
            // that have not answered it. It runs even if the lease was lost, in case the key
            // still holds our token (e.g. renewal replies were lost), so others need not wait
            // out the TTL.
            self.core
                .watchdog()
                .release_in_background_on(self.hold.clone(), std::mem::take(&mut self.unended));
        }
    }
}

impl crate::telemetry::Granted for LeaseHandle {
    fn fencing_token(&self) -> u64 {
        LeaseHandle::fencing_token(self)
    }
}

/// The lease methods every guard has, forwarded to its [`LeaseHandle`] field `$handle`, with
/// their docs written once. `$what` names what the guard holds in the docs ("lock", "permit").
/// A third argument replaces the doc of `fencing_token` (a reader's token means something else).
macro_rules! lease_methods {
    ($handle:ident, $what:literal) => {
        lease_methods!(
            $handle,
            $what,
            "This grant's fencing token: larger than every earlier grant's token for the same \
             name, even across a Redis restart that lost the counter. Pass it to storage that \
             rejects writes carrying a token smaller than one it has already seen."
        );
    };
    ($handle:ident, $what:literal, $fence_doc:literal) => {
        #[doc = concat!("The ", $what, "'s name.")]
        pub fn name(&self) -> &str {
            self.$handle.name()
        }

        #[doc = $fence_doc]
        pub fn fencing_token(&self) -> u64 {
            self.$handle.fencing_token()
        }

        /// The current lease length.
        pub fn ttl(&self) -> std::time::Duration {
            self.$handle.ttl()
        }

        /// How much longer the lease is surely valid by this process's clock: zero once lost.
        pub fn remaining(&self) -> std::time::Duration {
            self.$handle.remaining()
        }

        /// Whether the lease is still held as far as this client knows: not lost, and within
        /// its conservative validity.
        pub fn is_held(&self) -> bool {
            self.$handle.is_held()
        }

        /// Where the lease stands (held or lost, with the reason).
        pub fn status(&self) -> $crate::LeaseStatus {
            self.$handle.status()
        }

        /// A channel that flips when the lease is lost, for `select!` loops that outlive a
        /// borrow.
        pub fn watch(&self) -> tokio::sync::watch::Receiver<$crate::LeaseStatus> {
            self.$handle.watch()
        }

        /// Resolves when the lease is lost, with the reason; never resolves while it is held.
        ///
        /// # Cancel safety
        /// Cancel safe: it only watches a channel.
        pub async fn lost(&self) -> $crate::LossReason {
            self.$handle.lost().await
        }

        /// Sets the lease to `ttl` from now (one round trip). With renewal on, the watchdog
        /// keeps renewing to the new length.
        ///
        /// # Errors
        /// [`Error::Config`](crate::Error::Config) for a TTL out of range;
        /// [`Error::Lost`](crate::Error::Lost) when the lease is no longer ours (the guard
        /// then reports the loss too); connection errors, after which the lease keeps its old
        /// expiry.
        ///
        /// # Cancel safety
        /// Cancel safe: the lease is either extended or not, and the guard's view stays
        /// conservative.
        pub async fn extend(&self, ttl: std::time::Duration) -> $crate::Result<()> {
            self.$handle.extend(ttl).await
        }

        /// Resolves when renewals are failing and at most `margin` of the lease's conservative
        /// validity is left, or when the lease is no longer held: the moment to start winding
        /// down work that must be finished (or stopped) before the lease can end. Never
        /// resolves while renewals succeed.
        ///
        /// # Cancel safety
        /// Cancel safe: it only watches the lease.
        pub async fn renewal_at_risk(&self, margin: std::time::Duration) {
            self.$handle.renewal_at_risk(margin).await
        }
    };
}
pub(crate) use lease_methods;

#[cfg(test)]
mod tests;
