//! The waiting loop every primitive shares: attempt, subscribe to wake-ups, retry, sleep until
//! a wake-up (or a hand-off: a release granted us the hold), a re-check or the deadline.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::connection::notify::{Subscription, Woken};
use crate::engine::acquire::{Attempt, Busy, Queue};
use crate::engine::lease::{renewal_interval, Sent};
use crate::engine::Core;
use crate::error::{Error, Result};
use crate::options::{LockOptions, Wait};
use crate::token::Token;

/// Where a waiter waits: the wake-up channels and the settings.
pub(crate) struct Waiting<'a> {
    pub core: &'a Core,
    /// The channels whose releases may let this waiter in (one per lock; a multi-key lock
    /// listens to each member's). Hand-offs and the client's inbox go with the first.
    pub channels: &'a [String],
    pub options: &'a LockOptions,
    /// Whether attempts join the primitive's wait queue (fair mode, or hand-off).
    pub queue: bool,
    /// Whether releases may hand the hold over (then hand-offs go to the client's inbox).
    pub handoff: bool,
    /// Whether attempts queue even when the waiter cannot hear its channel (fair mode, and a
    /// read-write lock's writers, whose place in the queue holds new readers back).
    pub queue_deaf: bool,
}

/// The shortest claim lease a waiter takes without a round trip (as `handoff.lua`'s).
const MIN_CLAIM: Duration = Duration::from_millis(10);

/// A grant a release handed to a waiter (see `Woken::Handed`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Handoff {
    pub fence: u64,
    /// The claim lease it was granted for.
    pub claim: Duration,
    /// No later than the grant: when the waiter's last busy attempt was sent.
    pub since: Sent,
}

impl Handoff {
    /// The hand-off a wake-up brought, if it may be taken without a round trip:
    /// - it was made after the waiter's last busy answer (its fencing token is above the
    ///   counter that answer saw), so its claim lease began after that attempt was sent — a
    ///   message from an earlier hand-off, delivered late, is refused;
    /// - two thirds of its claim lease, counted from that send (plus any time the host spent
    ///   suspended since), are surely left: the watchdog renews it at one third;
    /// - its claim is at least [`MIN_CLAIM`] (the validity keeps 2 ms back) and at most the
    ///   waiter's own.
    ///
    /// Otherwise the waiter's retry finds the grant, if it is still there, and renews it.
    fn of(woken: Option<Woken>, last: Option<(Sent, u64)>, own: Duration) -> Option<Handoff> {
        let (Some(Woken::Handed { fence, claim }), Some((since, seen))) = (woken, last) else {
            return None;
        };
        let suspended = crate::clock::Clock::default()
            .suspended()
            .saturating_sub(since.suspended);
        let elapsed = since.at.elapsed() + suspended;
        let fresh = fence > seen && (MIN_CLAIM..=own).contains(&claim);
        (fresh && elapsed < renewal_interval(claim)).then_some(Handoff {
            fence,
            claim,
            since,
        })
    }
}

impl Waiting<'_> {
    /// Attempts until granted, a hard error, or the wait limit: after a busy answer, subscribe
    /// (unless a subscription is already live), retry at once, then sleep until a wake-up for
    /// `token` (or for everyone), the re-check or the deadline. `attempt` receives the waiter
    /// lease to queue with (`None` when this waiter does not queue). A hand-off to `token` is
    /// turned into the guard by `handed` (`None`: retry instead), unless too little of its
    /// claim lease is surely left; then the retry finds the grant and renews it (one round
    /// trip).
    pub async fn wait_for<G, F, Fut, H>(
        &self,
        token: &Token,
        mut attempt: F,
        mut handed: H,
    ) -> Result<G>
    where
        F: FnMut(Option<Queue>) -> Fut,
        Fut: Future<Output = Result<Attempt<G>>>,
        H: FnMut(Handoff) -> Option<G>,
    {
        let started = Instant::now();
        let deadline = self.deadline(started);
        // A subscription another waiter keeps (or one lingering) costs nothing: take it now,
        // and a first busy answer can be slept on at once.
        let mut wakeups = self.live(token);
        let mut failures = 0u32;
        // The last busy answer: when its attempt was sent, and the fencing counter it saw.
        let mut last_busy: Option<(Sent, u64)> = None;
        loop {
            if let Some(subscription) = wakeups.as_mut() {
                subscription.mark_seen();
            }
            let (pause, outcome) = match attempt(self.queue(deadline, wakeups.as_ref())).await {
                Ok(Attempt::Granted(guard)) => return Ok(guard),
                Ok(Attempt::Busy(busy)) => {
                    failures = 0;
                    last_busy = busy.sent.zip(busy.fence_seen);
                    (self.recheck_after(&busy), Error::Conflict(busy.conflict))
                }
                Err(error) if error.is_retryable() => {
                    failures = failures.saturating_add(1);
                    (self.options.backoff.delay(failures - 1), error)
                }
                Err(error) => return Err(error),
            };
            let now = Instant::now();
            if deadline.is_some_and(|d| d <= now) {
                return Err(self.gave_up(outcome, now - started));
            }
            if wakeups.is_none() && outcome.is_conflict() {
                // Subscribe, then retry at once: a release published before the subscription
                // was in effect would otherwise be missed.
                wakeups = self.subscribe(token, deadline).await;
                continue;
            }
            // Without a working wake-up channel (no channel permission, the first Redlock
            // master down, pub/sub reconnecting) the pause is still the re-check: it never
            // sleeps past the holder's TTL, and polling faster only loads Redis.
            let until = earliest(now.checked_add(pause), deadline);
            let woken = sleep_on(wakeups.as_mut(), token, until).await;
            let handoff = Handoff::of(woken, last_busy, self.options.claim_lease());
            if let Some(guard) = handoff.and_then(&mut handed) {
                return Ok(guard);
            }
        }
    }

    /// How the next attempt queues (`None`: it does not): a waiter lease no longer than the wait
    /// left, and the client's inbox for hand-offs once subscribed. A waiter queues only once it
    /// is subscribed: a first attempt without a subscription is a plain one (the lean path when
    /// the lock is free), and the retry right after subscribing queues. One that cannot hear
    /// its channel (refused by an ACL, or reconnecting) is never handed the hold: in fair mode
    /// it queues to be woken, otherwise it does not queue and relies on its re-checks.
    fn queue(&self, deadline: Option<Instant>, wakeups: Option<&Wakeups>) -> Option<Queue> {
        let wakeups = wakeups.filter(|_| self.queue)?.first();
        let hears = wakeups.hears();
        if !hears && !self.queue_deaf {
            return None;
        }
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        Some(Queue {
            lease: self.options.waiter_lease(left),
            inbox: wakeups.inbox().filter(|_| hears),
            hears,
        })
    }

    /// When a wait that starts at `started` gives up (`None`: never).
    fn deadline(&self, started: Instant) -> Option<Instant> {
        match self.options.wait {
            // A limit past the clock's range is no limit (it used to panic).
            Wait::Limit(limit) => started.checked_add(limit),
            Wait::Forever => None,
        }
    }

    /// Subscriptions to every channel that another waiter keeps (or that linger), if all of
    /// them are live: they cost nothing.
    fn live(&self, token: &Token) -> Option<Wakeups> {
        let notifier = self.core.notifier();
        let live: Option<Vec<Subscription>> = self
            .channels
            .iter()
            .enumerate()
            .map(|(i, channel)| notifier.live(channel, token.as_str(), self.handoff && i == 0))
            .collect();
        live.filter(|subscriptions| !subscriptions.is_empty())
            .map(Wakeups)
    }

    /// Subscribes to the wake-up channels, giving up at `deadline` (`None`: the caller retries
    /// and asks again).
    async fn subscribe(&self, token: &Token, deadline: Option<Instant>) -> Option<Wakeups> {
        let notifier = self.core.notifier();
        let subscribing =
            futures_util::future::join_all(self.channels.iter().enumerate().map(|(i, channel)| {
                notifier.subscribe(channel, token.as_str(), self.handoff && i == 0)
            }));
        let subscriptions = match deadline {
            Some(d) => tokio::time::timeout_at(d, subscribing).await.ok()?,
            None => subscribing.await,
        };
        (!subscriptions.is_empty()).then_some(Wakeups(subscriptions))
    }

    /// The error for a wait that ran out: a timeout naming the last holder seen, or the last
    /// connection error.
    fn gave_up(&self, last: Error, waited: Duration) -> Error {
        match last {
            // The key found held last (a multi-key lock's member, say).
            Error::Conflict(last) => Error::Timeout {
                key: last.key.clone(),
                waited,
                last,
            },
            unavailable => unavailable,
        }
    }

    /// How long a waiter may sleep after a busy answer when no wake-up comes: the re-check
    /// interval, but never past the holder's TTL (an expiry publishes nothing) nor, in fair
    /// mode, past the waiter lease of the one just ahead (a dead waiter is purged then).
    fn recheck_after(&self, busy: &Busy) -> Duration {
        let mut pause = self.options.recheck;
        if busy.split {
            // Random, so waiters that split a vote do not collide again.
            pause = pause.min(Duration::from_millis(fastrand::u64(10..60)));
        }
        for bound in [busy.conflict.ttl_left, busy.ahead_lease_left]
            .into_iter()
            .flatten()
        {
            pause = pause.min(bound + Duration::from_millis(1));
        }
        pause
    }
}

/// Sleeps until a wake-up for `token` (or everyone), or `until` (without a subscription: until
/// `until`). A hand-off to the waiter just ahead also ends the sleep when its claim lease does
/// (the latest such hand-off counts): if that waiter died, the lock is free then, and nobody
/// publishes it. Only the next in line re-checks then, not every waiter.
async fn sleep_on(
    subscription: Option<&mut Wakeups>,
    token: &Token,
    until: Option<Instant>,
) -> Option<Woken> {
    let Some(subscription) = subscription else {
        crate::clock::sleep_until(until).await;
        return None;
    };
    let mut claim_ends: Option<Instant> = None;
    loop {
        tokio::select! {
            woken = subscription.woken(token.as_str()) => match woken {
                Woken::HandedAhead { claim } => {
                    claim_ends = Instant::now().checked_add(claim + Duration::from_millis(1));
                }
                woken => return Some(woken),
            },
            () = crate::clock::sleep_until(earliest(until, claim_ends)) => return None,
        }
    }
}

/// A waiter's subscriptions: one per channel, never empty. The first carries hand-offs.
pub(crate) struct Wakeups(Vec<Subscription>);

impl Wakeups {
    fn first(&self) -> &Subscription {
        &self.0[0]
    }

    fn mark_seen(&mut self) {
        for subscription in &mut self.0 {
            subscription.mark_seen();
        }
    }

    /// The next wake-up for `token` (or everyone) on any of the channels.
    ///
    /// # Cancel safety
    /// As [`Subscription::woken`]: dropping it loses no wake-up.
    async fn woken(&mut self, token: &str) -> Woken {
        if let [only] = self.0.as_mut_slice() {
            return only.woken(token).await;
        }
        let each = self
            .0
            .iter_mut()
            .map(|subscription| Box::pin(subscription.woken(token)));
        futures_util::future::select_all(each).await.0
    }
}

/// The earlier of two optional moments (`None`: never).
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(ago: Duration) -> Sent {
        Sent {
            at: Instant::now() - ago,
            suspended: crate::clock::Clock::default().suspended(),
        }
    }

    fn handed(fence: u64, claim_ms: u64) -> Option<Woken> {
        Some(Woken::Handed {
            fence,
            claim: Duration::from_millis(claim_ms),
        })
    }

    #[tokio::test]
    async fn a_handoff_is_taken_only_if_made_after_the_last_busy_answer_and_still_fresh() {
        let own = Duration::from_secs(1);
        let fresh = Some((sent(Duration::from_millis(5)), 100));
        assert!(Handoff::of(handed(101, 1000), fresh, own).is_some());
        // A message from a hand-off made before the last busy answer, delivered late.
        assert!(Handoff::of(handed(100, 1000), fresh, own).is_none());
        assert!(Handoff::of(handed(99, 1000), fresh, own).is_none());
        // Too little of the claim left, counted from the busy attempt's send.
        let old = Some((sent(Duration::from_millis(400)), 100));
        assert!(Handoff::of(handed(101, 1000), old, own).is_none());
        // A claim too short to take safely, or longer than the waiter's own.
        assert!(Handoff::of(handed(101, 9), fresh, own).is_none());
        assert!(Handoff::of(handed(101, 1001), fresh, own).is_none());
        // Not a hand-off, or no busy answer yet.
        assert!(Handoff::of(Some(Woken::Retry), fresh, own).is_none());
        assert!(Handoff::of(handed(101, 1000), None, own).is_none());
    }
}
