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
    /// No later than the grant: when the waiter's last busy attempt was sent, moved on by how
    /// much later the server granted it (see [`granted_since`]).
    pub since: Sent,
}

/// The waiter's last busy answer: when its attempt was sent, the fencing counter it saw, and
/// the server's clock in it (ms).
#[derive(Debug, Clone, Copy)]
struct LastBusy {
    sent: Sent,
    fence_seen: u64,
    server_ms: Option<u64>,
}

impl LastBusy {
    fn of(busy: &Busy) -> Option<LastBusy> {
        Some(LastBusy {
            sent: busy.sent?,
            fence_seen: busy.fence_seen?,
            server_ms: busy.server_ms,
        })
    }
}

impl Handoff {
    /// The hand-off a wake-up brought, if it may be taken without a round trip:
    /// - it was made after the waiter's last busy answer (its fencing token is above the
    ///   counter that answer saw), so its claim lease began after that attempt was sent — a
    ///   message from an earlier hand-off, delivered late, is refused;
    /// - two thirds of its claim lease, counted from the grant as [`granted_since`] bounds it
    ///   (plus any time the host spent suspended since), are surely left: the watchdog renews
    ///   it at one third;
    /// - its claim is at least [`MIN_CLAIM`] (the validity keeps 2 ms back) and at most the
    ///   waiter's own.
    ///
    /// Otherwise the waiter's retry finds the grant, if it is still there, and renews it.
    fn of(woken: Option<Woken>, last: Option<LastBusy>, own: Duration) -> Option<Handoff> {
        let (
            Some(Woken::Handed {
                fence,
                claim,
                granted_ms,
                received,
            }),
            Some(last),
        ) = (woken, last)
        else {
            return None;
        };
        let since = granted_since(last.sent, last.server_ms, granted_ms, received);
        let suspended = crate::clock::Clock::default()
            .suspended()
            .saturating_sub(since.suspended);
        let elapsed = since.at.elapsed() + suspended;
        let fresh = fence > last.fence_seen && (MIN_CLAIM..=own).contains(&claim);
        (fresh && elapsed < renewal_interval(claim)).then_some(Handoff {
            fence,
            claim,
            since,
        })
    }
}

/// No later than a hand-off's grant, on this host's clock: the send of the waiter's last busy
/// answer, moved on by the time the server's clock says passed from that answer (`server_ms`)
/// to the grant (`granted_ms`), less 2 ms (each reading is cut to whole ms, and a script's
/// expiries may count from its start, just before its clock reading) and 1% for clock-rate
/// drift.
///
/// Without it, a waiter that queued longer ago than a third of its claim lease would always
/// make a round trip of its own to take a hand-off (a long queue, a long critical section).
///
/// The move never takes the grant past the moment the message was read (`received`), which
/// came after it: a server clock that seems to have run ahead of ours is not trusted, and the
/// send alone counts, as for a release that does not say when it granted. A server clock that
/// stepped forward during the wait, or a grant by another server (a failover, a slot moved)
/// whose clock is ahead, can still move it past the real grant, by at most the time the
/// message took to arrive.
fn granted_since(
    sent: Sent,
    server_ms: Option<u64>,
    granted_ms: Option<u64>,
    received: Instant,
) -> Sent {
    let (Some(answered), Some(granted)) = (server_ms, granted_ms) else {
        return sent;
    };
    let later = Duration::from_millis(granted.saturating_sub(answered).saturating_sub(2));
    let later = later.saturating_sub(later / 100);
    if later > received.saturating_duration_since(sent.at) {
        return sent;
    }
    Sent {
        at: sent.at + later,
        suspended: sent.suspended,
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
        let mut last_busy: Option<LastBusy> = None;
        loop {
            if let Some(subscription) = wakeups.as_mut() {
                subscription.mark_seen();
            }
            let (pause, outcome) = match attempt(self.queue(deadline, wakeups.as_ref())).await {
                Ok(Attempt::Granted(guard)) => return Ok(guard),
                Ok(Attempt::Busy(busy)) => {
                    failures = 0;
                    last_busy = LastBusy::of(&busy);
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
        handed_at(fence, claim_ms, None)
    }

    /// A hand-off message read just now.
    fn handed_at(fence: u64, claim_ms: u64, granted_ms: Option<u64>) -> Option<Woken> {
        Some(Woken::Handed {
            fence,
            claim: Duration::from_millis(claim_ms),
            granted_ms,
            received: Instant::now(),
        })
    }

    /// A busy answer sent `ago`, which saw fencing counter 100 and server time `server_ms`.
    fn busy(ago: Duration, server_ms: Option<u64>) -> Option<LastBusy> {
        Some(LastBusy {
            sent: sent(ago),
            fence_seen: 100,
            server_ms,
        })
    }

    #[tokio::test]
    async fn a_handoff_is_taken_only_if_made_after_the_last_busy_answer_and_still_fresh() {
        let own = Duration::from_secs(1);
        let fresh = busy(Duration::from_millis(5), None);
        assert!(Handoff::of(handed(101, 1000), fresh, own).is_some());
        // A message from a hand-off made before the last busy answer, delivered late.
        assert!(Handoff::of(handed(100, 1000), fresh, own).is_none());
        assert!(Handoff::of(handed(99, 1000), fresh, own).is_none());
        // Too little of the claim left, counted from the busy attempt's send.
        let old = busy(Duration::from_millis(400), None);
        assert!(Handoff::of(handed(101, 1000), old, own).is_none());
        // A claim too short to take safely, or longer than the waiter's own.
        assert!(Handoff::of(handed(101, 9), fresh, own).is_none());
        assert!(Handoff::of(handed(101, 1001), fresh, own).is_none());
        // Not a hand-off, or no busy answer yet.
        assert!(Handoff::of(Some(Woken::Retry), fresh, own).is_none());
        assert!(Handoff::of(handed(101, 1000), None, own).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_wait_counts_the_claim_from_the_grant_by_the_servers_clock() {
        let own = Duration::from_secs(1);
        // Queued 700 ms ago (server time 50,000); granted 650 ms later by the server's clock.
        let waited = busy(Duration::from_millis(700), Some(50_000));
        let handoff = Handoff::of(handed_at(101, 1000, Some(50_650)), waited, own)
            .expect("taken: about 50 ms of the claim are gone");
        let moved = handoff.since.at - waited.unwrap().sent.at;
        // 650 ms less 2 ms of rounding, less 1%.
        assert_eq!(moved, Duration::from_micros(641_520));
        // Granted early in the wait: over a third of the claim is gone.
        assert!(Handoff::of(handed_at(101, 1000, Some(50_300)), waited, own).is_none());
        // The server's clock ran ahead of ours (a step, or another server's clock) by more than
        // the message took: not trusted, the claim counts from the send, and 700 ms are gone.
        assert!(Handoff::of(handed_at(101, 1000, Some(50_900)), waited, own).is_none());
        // Read before the grant could have been made by our clock: not trusted either.
        let early = Some(Woken::Handed {
            fence: 101,
            claim: Duration::from_secs(1),
            granted_ms: Some(50_650),
            received: waited.unwrap().sent.at + Duration::from_millis(600),
        });
        assert!(Handoff::of(early, waited, own).is_none());
        // A grant stamped before the busy answer (a clock stepped back) moves nothing.
        assert!(Handoff::of(handed_at(101, 1000, Some(40_000)), waited, own).is_none());
        let recent = busy(Duration::from_millis(5), Some(50_000));
        let handoff = Handoff::of(handed_at(101, 1000, Some(40_000)), recent, own).unwrap();
        assert_eq!(handoff.since.at, recent.unwrap().sent.at);
        // Without the server's time in the busy answer, or in the hand-off (an older release).
        assert!(Handoff::of(
            handed_at(101, 1000, Some(50_650)),
            busy(Duration::from_millis(700), None),
            own
        )
        .is_none());
        assert!(Handoff::of(handed_at(101, 1000, None), waited, own).is_none());
    }
}
