//! The waiting loop every primitive shares: attempt, subscribe to wake-ups, retry, sleep until
//! a wake-up (or a hand-off: a release granted us the hold), a re-check or the deadline.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::connection::notify::{Subscription, Woken};
use crate::engine::acquire::{Attempt, Busy, Queue};
use crate::engine::lease::{renewal_interval, Sent};
use crate::engine::pending::Pending;
use crate::engine::riders::{RiderTerms, RIDE_LIMIT};
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
    /// Whether the first attempt may ride on a release by another task of this client instead
    /// (see `engine::riders`; a plain lock's waiters).
    pub ride: Option<Riding<'a>>,
}

/// How a waiter rides (see `engine::riders`): the lock's board, and the acquisition, which is
/// in doubt from the moment a release may queue its token.
pub(crate) struct Riding<'a> {
    pub board: &'a str,
    pub pending: &'a Pending,
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
    /// After a ride (see [`Waiting::rode`]): queued by a release sent at `sent`, with no
    /// fencing counter seen; none is needed, as no grant to this waiter's fresh token came
    /// before it.
    fn rode(sent: Sent) -> LastBusy {
        LastBusy {
            sent,
            fence_seen: 0,
            server_ms: None,
        }
    }

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
        let mut first = true;
        loop {
            if let Some(subscription) = wakeups.as_mut() {
                subscription.mark_seen();
            }
            let queue = self.queue(deadline, wakeups.as_ref());
            let rode = match std::mem::take(&mut first) {
                true => self.rode(token, queue.as_ref(), deadline).await,
                false => None,
            };
            let pause = if let Some(sent) = rode {
                last_busy = Some(LastBusy::rode(sent));
                self.options.recheck.min(self.options.claim_lease())
            } else {
                let answer = attempt(queue).await;
                let (pause, outcome) = match self.settle(answer, &mut failures, &mut last_busy)? {
                    Ok(guard) => return Ok(guard),
                    Err(waiting) => waiting,
                };
                let now = Instant::now();
                if deadline.is_some_and(|d| d <= now) {
                    return Err(self.gave_up(outcome, now - started));
                }
                if wakeups.is_none() && outcome.is_conflict() {
                    // Subscribe, then retry at once: a release published before the
                    // subscription was in effect would otherwise be missed.
                    wakeups = self.subscribe(token, deadline).await;
                    continue;
                }
                pause
            };
            // Without a working wake-up channel (no channel permission, the first Redlock
            // master down, pub/sub reconnecting) the pause is still the re-check: it never
            // sleeps past the holder's TTL, and polling faster only loads Redis.
            let until = earliest(Instant::now().checked_add(pause), deadline);
            let woken = sleep_on(wakeups.as_mut(), token, until).await;
            let handoff = Handoff::of(woken, last_busy, self.options.claim_lease());
            if let Some(guard) = handoff.and_then(&mut handed) {
                return Ok(guard);
            }
        }
    }

    /// What an attempt's answer means: the guard; or how long to pause before the next
    /// attempt, and the error to give up with if the wait ends (busy: the holder; a connection
    /// error: backed off, counted in `failures`); or an error that ends the wait at once.
    fn settle<G>(
        &self,
        answer: Result<Attempt<G>>,
        failures: &mut u32,
        last_busy: &mut Option<LastBusy>,
    ) -> Result<std::result::Result<G, (Duration, Error)>> {
        match answer {
            Ok(Attempt::Granted(guard)) => Ok(Ok(guard)),
            Ok(Attempt::Busy(busy)) => {
                *failures = 0;
                *last_busy = LastBusy::of(&busy);
                Ok(Err((
                    self.recheck_after(&busy),
                    Error::Conflict(busy.conflict),
                )))
            }
            Err(error) if error.is_retryable() => {
                *failures = failures.saturating_add(1);
                Ok(Err((self.options.backoff.delay(*failures - 1), error)))
            }
            Err(error) => Err(error),
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

    /// Rides on a release by another task of this client (see `engine::riders`), if this
    /// waiter may and a guard of its client holds the lock: when that release queued it, the
    /// moment it was sent; `None` when this waiter sends its own attempt. A waiter so queued
    /// sleeps as after a busy answer: until a hand-off (that release may have made one to it,
    /// whose news is in its subscription already) or a wake-up, or until a claim lease would
    /// end, then re-checks.
    async fn rode(
        &self,
        token: &Token,
        queue: Option<&Queue>,
        deadline: Option<Instant>,
    ) -> Option<Sent> {
        let riding = self.ride.as_ref()?;
        // A wait shorter than a ride tries at once.
        if deadline.is_some_and(|d| d < Instant::now() + RIDE_LIMIT) {
            return None;
        }
        // Only a waiter that hears hand-offs on its client's inbox: the release's reply then
        // brings its grant.
        let queue = queue.filter(|queue| queue.hears && queue.inbox.is_some())?;
        let terms = RiderTerms {
            token: token.as_str().to_owned(),
            lease: queue.lease,
            claim: self.options.claim_lease(),
            label: self.options.label.clone().unwrap_or_default(),
        };
        let ride = self.core.riders().ride(riding.board, terms)?;
        // From here a release may queue this token: if the caller gives up, it is withdrawn.
        riding.pending.sending();
        // A release that took it is awaited, but not past the wait's end.
        match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, ride.carried())
                .await
                .ok()
                .flatten(),
            None => ride.carried().await,
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
#[path = "wait_tests.rs"]
mod tests;
