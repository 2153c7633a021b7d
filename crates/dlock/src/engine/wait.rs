//! The waiting loop every primitive shares: attempt, subscribe to wake-ups, retry, sleep until
//! a wake-up (or a hand-off: a release granted us the hold), a re-check or the deadline.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::connection::notify::{Subscription, Woken};
use crate::engine::acquire::{Attempt, Busy};
use crate::engine::lease::renewal_interval;
use crate::engine::Core;
use crate::error::{Error, Result};
use crate::options::{LockOptions, Wait};
use crate::token::Token;

/// Where a waiter waits: the name (for errors), the wake-up channel, and the settings.
pub(crate) struct Waiting<'a> {
    pub core: &'a Core,
    pub name: &'a str,
    pub channel: &'a str,
    pub options: &'a LockOptions,
    /// Whether attempts join the primitive's wait queue (fair mode, or hand-off).
    pub queue: bool,
}

/// A grant a release handed to a waiter (see `Woken::Handed`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Handoff {
    pub fence: u64,
    /// The claim lease it was granted for.
    pub claim: Duration,
    /// No later than the grant: the send time of the waiter's last busy answer.
    pub since: Instant,
}

impl Handoff {
    /// The hand-off a wake-up brought, if it may be taken without a round trip: only while two
    /// thirds of its claim lease, counted from `since`, are surely left (the watchdog renews it
    /// at one third). Otherwise the waiter's retry finds the grant and renews it.
    fn of(woken: Option<Woken>, since: Option<Instant>) -> Option<Handoff> {
        let (Some(Woken::Handed { fence, claim }), Some(since)) = (woken, since) else {
            return None;
        };
        (Instant::now() < since + renewal_interval(claim)).then_some(Handoff {
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
        F: FnMut(Option<Duration>) -> Fut,
        Fut: Future<Output = Result<Attempt<G>>>,
        H: FnMut(Handoff) -> Option<G>,
    {
        let started = Instant::now();
        let deadline = self.deadline(started);
        // A subscription another waiter keeps (or one lingering) costs nothing: take it now,
        // and a first busy answer can be slept on at once.
        let mut wakeups: Option<Subscription> = self.core.notifier().live(self.channel);
        let mut failures = 0u32;
        let mut last_busy_sent: Option<Instant> = None;
        loop {
            if let Some(subscription) = wakeups.as_mut() {
                subscription.mark_seen();
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let queue_for = self.queue.then(|| self.options.waiter_lease(left));
            let (pause, outcome) = match attempt(queue_for).await {
                Ok(Attempt::Granted(guard)) => return Ok(guard),
                Ok(Attempt::Busy(busy)) => {
                    failures = 0;
                    last_busy_sent = busy.sent_at;
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
                wakeups = self.subscribe(deadline).await;
                continue;
            }
            // Without a working wake-up channel (no channel permission, the first Redlock
            // master down, pub/sub reconnecting), the re-check interval is still the pause: it
            // already never sleeps past the holder's TTL, and polling faster only loads Redis
            // (it used to retry every few milliseconds). A reconnect wakes the waiter anyway.
            let until = earliest(now.checked_add(pause), deadline);
            let woken = sleep_on(wakeups.as_mut(), token, until).await;
            if let Some(guard) = Handoff::of(woken, last_busy_sent).and_then(&mut handed) {
                return Ok(guard);
            }
        }
    }

    /// When a wait that starts at `started` gives up (`None`: never).
    fn deadline(&self, started: Instant) -> Option<Instant> {
        match self.options.wait {
            // A limit past the clock's range is no limit (it used to panic).
            Wait::Limit(limit) => started.checked_add(limit),
            Wait::Forever => None,
        }
    }

    /// Subscribes to the wake-up channel, giving up at `deadline` (`None`: the caller retries
    /// and asks again).
    async fn subscribe(&self, deadline: Option<Instant>) -> Option<Subscription> {
        let subscribing = self.core.notifier().subscribe(self.channel);
        match deadline {
            Some(d) => tokio::time::timeout_at(d, subscribing).await.ok(),
            None => Some(subscribing.await),
        }
    }

    /// The error for a wait that ran out: a timeout naming the last holder seen, or the last
    /// connection error.
    fn gave_up(&self, last: Error, waited: Duration) -> Error {
        match last {
            Error::Conflict(last) => Error::Timeout {
                key: self.name.to_owned(),
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
/// `until`). A hand-off to another waiter
/// also ends the sleep when its claim lease does (the latest hand-off seen counts): if that
/// waiter died, the lock is free then, and nobody publishes it.
async fn sleep_on(
    subscription: Option<&mut Subscription>,
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
                Woken::HandedElsewhere { claim } => {
                    claim_ends = Instant::now().checked_add(claim + Duration::from_millis(1));
                }
                woken => return Some(woken),
            },
            () = crate::clock::sleep_until(earliest(until, claim_ends)) => return None,
        }
    }
}

/// The earlier of two optional moments (`None`: never).
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
