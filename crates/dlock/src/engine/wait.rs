//! The waiting loop every primitive shares: attempt, subscribe to wake-ups, retry, sleep until
//! a wake-up, a re-check or the deadline.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::connection::notify::Subscription;
use crate::engine::acquire::{Attempt, Busy};
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
}

impl Waiting<'_> {
    /// Attempts until granted, a hard error, or the wait limit: after a busy answer, subscribe
    /// (unless a subscription is already live), retry at once, then sleep until a wake-up for
    /// `token` (or for everyone), the re-check or the deadline. `attempt` receives the fair-mode
    /// waiter lease to queue with (`None` outside fair mode).
    pub async fn wait_for<G, F, Fut>(&self, token: &Token, mut attempt: F) -> Result<G>
    where
        F: FnMut(Option<Duration>) -> Fut,
        Fut: Future<Output = Result<Attempt<G>>>,
    {
        let started = Instant::now();
        let deadline = match self.options.wait {
            // A limit past the clock's range is no limit (it used to panic).
            Wait::Limit(limit) => started.checked_add(limit),
            Wait::Forever => None,
        };
        // A subscription another waiter keeps (or one lingering) costs nothing: take it now,
        // and a first busy answer can be slept on at once.
        let mut wakeups: Option<Subscription> = self.core.notifier().live(self.channel);
        let mut failures = 0u32;
        loop {
            if let Some(subscription) = wakeups.as_mut() {
                subscription.mark_seen();
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let queue_for = self.options.fair.then(|| self.options.waiter_lease(left));
            let (pause, outcome) = match attempt(queue_for).await {
                Ok(Attempt::Granted(guard)) => return Ok(guard),
                Ok(Attempt::Busy(busy)) => {
                    failures = 0;
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
            match wakeups.as_mut() {
                Some(subscription) => {
                    tokio::select! {
                        () = subscription.woken(token.as_str()) => {}
                        () = crate::clock::sleep_until(until) => {}
                    }
                }
                None => crate::clock::sleep_until(until).await,
            }
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

/// The earlier of two optional moments (`None`: never).
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
