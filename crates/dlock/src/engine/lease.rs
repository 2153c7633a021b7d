//! The state of one granted lease, shared by its guard and the watchdog.
//!
//! A lease moves once, from `Held` to `Lost(reason)` or `Released`, and never back: a holder
//! told its lease is lost can trust that answer. Validity is kept on the monotonic clock and
//! computed conservatively: from the moment a grant or renewal was *sent* (the server's expiry
//! is measured from a later moment), minus a drift allowance for clocks that run at slightly
//! different rates, and minus any time the host spent suspended since then (`clock`), which
//! the monotonic clock does not count.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::clock::Clock;
use crate::engine::ops::LeaseOps;
pub(crate) use crate::status::{LeaseStatus, LossReason};
use crate::telemetry::Labels;

/// The share of the TTL kept back for clock-rate drift between client and server, as in the
/// Redlock paper: 1% plus 2 ms.
pub(crate) fn drift_allowance(ttl: Duration) -> Duration {
    ttl / 100 + Duration::from_millis(2)
}

/// How long after `sent_at` a lease of `ttl` is surely still valid.
pub(crate) fn validity(ttl: Duration) -> Duration {
    ttl.saturating_sub(drift_allowance(ttl))
}

/// How often the watchdog renews a lease of `ttl`: a third of it, so two renewals can fail
/// before the lease is in danger.
pub(crate) fn renewal_interval(ttl: Duration) -> Duration {
    ttl / 3
}

/// When a request was sent: the monotonic clock, and the suspended time read just before.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sent {
    pub at: Instant,
    pub suspended: Duration,
}

impl Sent {
    /// Now, for a request about to be sent.
    pub fn now() -> Sent {
        let suspended = crate::clock::Clock::default().suspended();
        Sent {
            at: Instant::now(),
            suspended,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Timing {
    /// The lease length renewals ask for.
    ttl: Duration,
    /// The length of the latest grant or renewal: `ttl`, except for a handed-off grant's claim
    /// lease until its first renewal.
    term: Duration,
    sent_at: Instant,
    valid_until: Instant,
    /// Suspended time read no later than the send: what counts against this validity is the
    /// growth since (conservative: a suspend just before the send counts too).
    suspended_at_send: Duration,
    /// The latest reading, taken when the grant or renewal was recorded.
    suspended_seen: Duration,
}

/// One granted lease.
#[derive(Debug)]
pub(crate) struct Lease {
    /// How the watchdog renews and checks this lease (the primitive's scripts).
    pub ops: Arc<dyn LeaseOps>,
    pub fencing_token: u64,
    pub renew: bool,
    /// How many nodes must hold the lease (a majority for a lock; see
    /// `Nodes::quorum_for`). 1 on a single node.
    pub quorum: usize,
    /// The replica guard every renewal must pass.
    pub min_replicas: Option<crate::MinReplicas>,
    timing: Mutex<Timing>,
    /// Held by whoever is changing the lease's expiry on the server (a renewal, an `extend`),
    /// so two such calls never overlap: replies may arrive in any order, and requests may
    /// even reach a server in another order than they were sent, so with an overlap the
    /// server could keep one call's TTL and the client record the other's (a lost extend, or,
    /// worse, a client that believes in a longer lease than the server keeps).
    pub expiry_change: Arc<tokio::sync::Mutex<()>>,
    /// Where time spent suspended is read.
    clock: Clock,
    status: watch::Sender<LeaseStatus>,
    /// Whether the latest renewal attempt failed (cleared by the next success), so a holder
    /// can start winding down before the validity ends (see `LockGuard::renewal_at_risk`).
    renewal_failing: watch::Sender<bool>,
    held_count: Arc<AtomicUsize>,
    /// Its metrics' labels (none in unit tests), and when it was granted (for the hold time).
    labels: Option<Labels>,
    granted_at: Instant,
    /// `dlock.hold`, open from the grant until the lease is dropped; its end is an event in it.
    span: tracing::Span,
}

impl Lease {
    /// A lease granted by a request sent at `sent_at`. `held_count` is the client's count of
    /// held leases, kept exact by this type.
    pub fn new(
        ops: Arc<dyn LeaseOps>,
        fencing_token: u64,
        ttl: Duration,
        sent_at: Instant,
        renew: bool,
        held_count: Arc<AtomicUsize>,
    ) -> Lease {
        held_count.fetch_add(1, Ordering::SeqCst);
        let clock = Clock::default();
        let suspended = clock.suspended();
        Lease {
            ops,
            fencing_token,
            renew,
            quorum: 1,
            min_replicas: None,
            timing: Mutex::new(Timing {
                ttl,
                term: ttl,
                sent_at,
                valid_until: sent_at + validity(ttl),
                suspended_at_send: suspended,
                suspended_seen: suspended,
            }),
            expiry_change: Arc::new(tokio::sync::Mutex::new(())),
            clock,
            status: watch::channel(LeaseStatus::Held).0,
            renewal_failing: watch::channel(false).0,
            held_count,
            labels: None,
            granted_at: Instant::now(),
            span: tracing::Span::none(),
        }
    }

    fn timing(&self) -> Timing {
        *self.timing.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Granted for `term` (a hand-off's claim lease), not the full TTL: valid and due for
    /// renewal accordingly until the first renewal. `suspended_at_send` is the suspended time
    /// read when the request it counts from was sent: a suspend since counts against it.
    pub fn with_first_term(self, term: Duration, suspended_at_send: Duration) -> Lease {
        {
            let mut timing = self.timing.lock().unwrap_or_else(PoisonError::into_inner);
            timing.term = term;
            timing.valid_until = timing.sent_at + validity(term);
            timing.suspended_at_send = suspended_at_send;
        }
        self
    }

    /// Needs `quorum` nodes to hold it (Redlock).
    /// Reports its end (hold time, loss reason) under `labels`.
    pub fn with_labels(mut self, labels: Labels) -> Lease {
        self.span = tracing::debug_span!(
            "dlock.hold",
            primitive = labels.primitive(),
            name = self.ops.name(),
            fencing_token = self.fencing_token
        );
        self.labels = Some(labels);
        self
    }

    pub fn with_quorum(mut self, quorum: usize) -> Lease {
        self.quorum = quorum;
        self
    }

    /// Requires every renewal to pass the replica guard.
    pub fn with_min_replicas(mut self, guard: Option<crate::MinReplicas>) -> Lease {
        self.min_replicas = guard;
        self
    }

    /// What is held (a lock's or semaphore's name), for logs and errors.
    pub fn name(&self) -> &str {
        self.ops.name()
    }

    /// The current lease length.
    pub fn ttl(&self) -> Duration {
        self.timing().ttl
    }

    /// Reads suspended time from `clock` (tests inject a fake one).
    #[cfg(test)]
    pub fn with_clock(mut self, clock: Clock) -> Lease {
        let suspended = clock.suspended();
        let timing = self
            .timing
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        timing.suspended_at_send = suspended;
        timing.suspended_seen = suspended;
        self.clock = clock;
        self
    }

    /// Until when the lease is surely valid (monotonic clock), minus the time the host spent
    /// suspended since the grant or renewal was sent.
    pub fn valid_until(&self) -> Instant {
        let timing = self.timing();
        let suspended = self.suspended_since(&timing);
        // Before `sent_at` is just as past as any earlier moment.
        timing
            .valid_until
            .checked_sub(suspended)
            .unwrap_or(timing.sent_at)
    }

    /// How long the host was suspended since the grant or renewal was sent, when that is what
    /// ended the lease's validity by `now` (it would still be valid without it).
    pub fn lost_to_suspension(&self, now: Instant) -> Option<Duration> {
        let timing = self.timing();
        let suspended = self.suspended_since(&timing);
        (timing.valid_until > now && self.valid_until() <= now).then_some(suspended)
    }

    fn suspended_since(&self, timing: &Timing) -> Duration {
        self.clock
            .suspended()
            .saturating_sub(timing.suspended_at_send)
    }

    /// When the watchdog should renew next.
    pub fn next_renewal(&self) -> Instant {
        let timing = self.timing();
        timing.sent_at + renewal_interval(timing.term)
    }

    /// When the watchdog must first look at this lease: its first renewal, or the end of its
    /// validity if it is not renewed.
    pub fn needs_watchdog_by(&self) -> Instant {
        match self.renew {
            true => self.next_renewal().min(self.valid_until()),
            false => self.valid_until(),
        }
    }

    /// Records a successful extension sent at `sent_at` to `ttl` (by the holder of
    /// [`Lease::expiry_change`], so calls that change the expiry never overlap; the most
    /// recently sent one still wins, as a safeguard).
    pub fn extended(&self, sent_at: Instant, ttl: Duration) {
        let suspended = self.clock.suspended();
        let mut timing = self.timing.lock().unwrap_or_else(PoisonError::into_inner);
        if sent_at >= timing.sent_at {
            *timing = Timing {
                ttl,
                term: ttl,
                sent_at,
                valid_until: sent_at + validity(ttl),
                // The last reading before this one was taken before this renewal was sent.
                suspended_at_send: timing.suspended_seen,
                suspended_seen: suspended,
            };
        }
    }

    /// Before an extend to `ttl` is sent: if that is shorter than the current lease, the
    /// lease is valid no longer than `ttl` from now, whatever the extend's outcome (the server
    /// may apply it and the reply be lost, or the caller give up on it).
    /// Renewal comes due as early as for a term of `ttl`, so a failed or cancelled extend
    /// leaves a lease the watchdog renews (at its old length) before the shorter view ends.
    pub fn shorten_to(&self, ttl: Duration) {
        let mut timing = self.timing.lock().unwrap_or_else(PoisonError::into_inner);
        timing.valid_until = timing.valid_until.min(Instant::now() + validity(ttl));
        timing.term = timing.term.min(ttl);
    }

    /// Records whether the latest renewal attempt failed.
    pub fn set_renewal_failing(&self, failing: bool) {
        self.renewal_failing.send_if_modified(|current| {
            let changed = *current != failing;
            *current = failing;
            changed
        });
    }

    /// Resolves once the lease is no longer held, or renewals are failing and at most `margin`
    /// of its conservative validity is left.
    pub async fn at_risk(&self, margin: Duration) {
        let mut status = self.subscribe();
        let mut failing = self.renewal_failing.subscribe();
        loop {
            if *status.borrow_and_update() != LeaseStatus::Held {
                return;
            }
            let deadline = (*failing.borrow_and_update()).then(|| {
                let end = self.valid_until();
                end.checked_sub(margin).unwrap_or(end.min(Instant::now()))
            });
            if deadline.is_some_and(|at| at <= Instant::now()) {
                return;
            }
            // The status sender lives as long as `self`: `changed` cannot fail while we borrow it.
            tokio::select! {
                _ = status.changed() => {}
                _ = failing.changed() => {}
                () = crate::clock::sleep_until(deadline) => return,
            }
        }
    }

    pub fn status(&self) -> LeaseStatus {
        self.status.borrow().clone()
    }

    /// Why the lease was lost, if it was.
    pub fn lost_reason(&self) -> Option<LossReason> {
        match &*self.status.borrow() {
            LeaseStatus::Lost(reason) => Some(reason.clone()),
            _ => None,
        }
    }

    pub fn is_held(&self) -> bool {
        *self.status.borrow() == LeaseStatus::Held
    }

    pub fn subscribe(&self) -> watch::Receiver<LeaseStatus> {
        self.status.subscribe()
    }

    /// Moves the lease out of `Held`; returns false if it had already left.
    pub fn finish(&self, status: LeaseStatus) -> bool {
        let lost = matches!(status, LeaseStatus::Lost(_)).then(|| status.clone());
        let changed = self.status.send_if_modified(|current| {
            if *current == LeaseStatus::Held {
                *current = status;
                true
            } else {
                false
            }
        });
        if changed {
            self.held_count.fetch_sub(1, Ordering::SeqCst);
            // A release is reported by its caller once Redis answered (it may find a loss).
            if let Some(lost) = lost {
                self.report_end(&lost);
            }
        }
        changed
    }

    /// Reports how the hold ended, once: metrics (hold time, loss reason) and a trace event.
    pub fn report_end(&self, end: &LeaseStatus) {
        if let Some(labels) = &self.labels {
            crate::telemetry::lease_ended(labels, self.granted_at.elapsed(), end);
        }
        tracing::debug!(
            parent: &self.span,
            name = self.ops.name(),
            fencing_token = self.fencing_token,
            held_ms = self.granted_at.elapsed().as_millis() as u64,
            end = ?end,
            "dlock lease ended"
        );
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Keeps the client's count exact even if a lease is dropped while still Held.
        self.finish(LeaseStatus::Released);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(ttl: Duration, counter: &Arc<AtomicUsize>) -> Lease {
        Lease::new(
            Arc::new(crate::engine::ops::testing::Noop),
            1,
            ttl,
            Instant::now(),
            true,
            counter.clone(),
        )
    }

    #[test]
    fn validity_keeps_a_drift_allowance() {
        assert_eq!(
            validity(Duration::from_secs(10)),
            Duration::from_millis(9898)
        );
        assert_eq!(validity(Duration::from_millis(1)), Duration::ZERO);
        assert_eq!(
            renewal_interval(Duration::from_secs(30)),
            Duration::from_secs(10)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn later_sent_extension_wins_over_earlier_one() {
        let counter = Arc::new(AtomicUsize::new(0));
        let lease = lease(Duration::from_secs(3), &counter);
        let early = Instant::now();
        tokio::time::advance(Duration::from_secs(1)).await;
        let late = Instant::now();
        lease.extended(late, Duration::from_secs(6));
        lease.extended(early, Duration::from_secs(3));
        assert_eq!(lease.ttl(), Duration::from_secs(6));
        assert_eq!(lease.valid_until(), late + validity(Duration::from_secs(6)));
        assert_eq!(lease.next_renewal(), late + Duration::from_secs(2));
    }

    #[tokio::test]
    async fn a_lease_finishes_once_and_keeps_the_count_exact() {
        let counter = Arc::new(AtomicUsize::new(0));
        let lease = lease(Duration::from_secs(1), &counter);
        assert_eq!(counter.load(Ordering::SeqCst), 1);
        assert!(lease.finish(LeaseStatus::Lost(LossReason::KeyGone)));
        assert!(!lease.finish(LeaseStatus::Released));
        assert_eq!(lease.status(), LeaseStatus::Lost(LossReason::KeyGone));
        assert_eq!(counter.load(Ordering::SeqCst), 0);
        drop(lease);
        assert_eq!(counter.load(Ordering::SeqCst), 0);
    }
}
