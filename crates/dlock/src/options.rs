//! Settings for clients and locks, with their defaults and the reasons for them.
//!
//! Settings are validated once, when a [`Lock`](crate::Lock) or [`Client`](crate::Client) is
//! made, so a bad TTL is a [`Error::Config`] before anything reaches Redis.

use std::time::Duration;

use crate::backoff::Backoff;
use crate::error::{Error, Result};

/// Default lease: 30 s, renewed every 10 s by the watchdog (Redisson's model). Long enough that
/// a slow network or a GC pause does not lose it, short enough that a crashed holder blocks
/// others for at most half a minute.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);
/// Shortest accepted lease. Below this a lease is gone before a renewal can reach Redis.
pub const MIN_TTL: Duration = Duration::from_millis(100);
/// Longest accepted lease. A longer lease defeats the liveness promise (a crashed holder blocks
/// others for a whole lease); long jobs should keep a short lease renewed instead.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Default bound on [`Lock::lock`](crate::Lock::lock)'s wait: nothing waits forever unless the
/// caller asks for [`Wait::Forever`].
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// Default longest pause between a waiter's re-checks of a busy lock. Releases wake waiters at
/// once by pub/sub; the re-check only catches what publishes nothing (a holder that crashed and
/// whose lease expired, a key deleted by another tool, a lost message), so it can be slow.
pub const DEFAULT_RECHECK: Duration = Duration::from_secs(2);
/// Default claim lease of a hand-off: a lock handed to a waiter is first granted for this long
/// and renewed to its full TTL once the new holder runs, so a waiter that died just before its
/// turn holds the queue up for at most this long.
pub const DEFAULT_CLAIM: Duration = Duration::from_secs(1);
/// Default time a wake-up subscription nobody waits on is kept for the next waiter: a job that
/// waits for the same lock again soon skips the `SUBSCRIBE` round trip.
pub const DEFAULT_SUBSCRIPTION_LINGER: Duration = Duration::from_secs(10);
/// Default per-command timeout: a dead or frozen Redis costs a call at most this long.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Default timeout for opening a connection (TCP, TLS and authentication).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a fencing counter outlives the last grant. Tokens never go below the server's clock
/// in microseconds, so a counter that expired after a long idle spell (or was lost in a restart)
/// still yields larger tokens; the counter only guards against a clock that steps back.
pub const FENCE_RETENTION: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// How long [`Lock::lock`](crate::Lock::lock) may wait for a busy lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Give up after this long with [`Error::Timeout`]. A limit too large for the clock
    /// (e.g. `Duration::MAX`) waits forever.
    Limit(Duration),
    /// Wait until the lock is ours, however long that takes.
    Forever,
}

/// Settings of one lock. Build with the methods, pass to
/// [`Client::lock_with`](crate::Client::lock_with).
///
/// ```
/// use std::time::Duration;
/// use dlock::{LockOptions, Wait};
///
/// let options = LockOptions::new()
///     .ttl(Duration::from_secs(10))
///     .wait(Wait::Limit(Duration::from_secs(5)))
///     .label("nightly-report");
/// assert_eq!(options.ttl_value(), Duration::from_secs(10));
/// ```
#[derive(Debug, Clone)]
pub struct LockOptions {
    pub(crate) ttl: Duration,
    pub(crate) renew: bool,
    pub(crate) wait: Wait,
    pub(crate) label: Option<String>,
    pub(crate) backoff: Backoff,
    pub(crate) fair: bool,
    pub(crate) handoff: bool,
    pub(crate) claim: Duration,
    pub(crate) recheck: Duration,
    pub(crate) min_replicas: Option<MinReplicas>,
}

/// The replica guard: how many replicas must acknowledge a grant or renewal, and how long to
/// wait for them (Redis `WAIT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinReplicas {
    /// Replicas that must have the write.
    pub replicas: u32,
    /// How long `WAIT` may block for them.
    pub timeout: Duration,
}

impl Default for LockOptions {
    fn default() -> Self {
        LockOptions {
            ttl: DEFAULT_TTL,
            renew: true,
            wait: Wait::Limit(DEFAULT_WAIT),
            label: None,
            backoff: Backoff::default(),
            fair: false,
            handoff: true,
            claim: DEFAULT_CLAIM,
            recheck: DEFAULT_RECHECK,
            min_replicas: None,
        }
    }
}

impl LockOptions {
    /// The defaults: 30 s lease renewed by the watchdog, waits bounded at 30 s, no label.
    pub fn new() -> Self {
        Self::default()
    }

    /// The lease length (default [`DEFAULT_TTL`]). With renewal on, the watchdog extends the
    /// lease to this length every `ttl / 3`.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Whether the watchdog renews the lease while the guard lives (default `true`). Without
    /// renewal the lease simply ends after its TTL, and the guard reports it lost then.
    pub fn renew(mut self, renew: bool) -> Self {
        self.renew = renew;
        self
    }

    /// How long [`Lock::lock`](crate::Lock::lock) may wait (default 30 s).
    pub fn wait(mut self, wait: Wait) -> Self {
        self.wait = wait;
        self
    }

    /// A free-form label stored in the holder info (e.g. the job or command), shown by status.
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// Fair mode (default off): waiters get the lock in the order they started waiting, and
    /// `try_lock` never jumps the queue. A waiter that dies or gives up leaves the queue when its
    /// waiter lease ends: `3 × recheck`, or its remaining wait if shorter.
    pub fn fair(mut self, fair: bool) -> Self {
        self.fair = fair;
        self
    }

    /// Hand-off (default on): a waiting [`lock`](crate::Lock::lock) joins the lock's wait queue,
    /// and the holder's release grants the lock to the queue's head in the same script call and
    /// tells it so in the wake-up message, so the next holder starts without a round trip of its
    /// own and waiters are served in arrival order. A waiting
    /// [`acquire`](crate::Semaphore::acquire) of a semaphore does the same: a release hands the
    /// permits it frees to the waiters at the head of the queue whose permits fit, and a
    /// read-write lock's release that frees it hands it to the writer at the head of the queue,
    /// or to the readers there. Off: waiters do not queue (a read-write lock's writers still
    /// do, to hold new readers back); a release wakes all of them and the fastest retry wins
    /// (barging), which is how most Redis locks wait.
    ///
    /// A handed-off grant first lasts the [`claim`](LockOptions::claim) lease and is renewed to
    /// the full TTL by the watchdog once the new holder runs. Hand-off needs one Redis (or
    /// Sentinel, or Cluster) and the watchdog: on Redlock, or with renewal off or a replica
    /// guard, waiters are woken to retry instead. `try_lock` never queues; outside fair mode it
    /// takes a lock that is free even when others queue.
    pub fn handoff(mut self, handoff: bool) -> Self {
        self.handoff = handoff;
        self
    }

    /// The claim lease of a hand-off (default [`DEFAULT_CLAIM`], at most the TTL): how long a
    /// lock handed to a waiter that died just before its turn keeps the others waiting. A
    /// handed-off holder renews to its full TTL within a third of it, so keep it well above a
    /// round trip (10 ms at least; a claim cut below 10 ms by a waiter's ending queue entry wakes
    /// the waiters instead).
    pub fn claim(mut self, claim: Duration) -> Self {
        self.claim = claim;
        self
    }

    /// Longest pause between a waiter's re-checks (default [`DEFAULT_RECHECK`]). Waiters are
    /// woken by pub/sub when the lock is released; this bounds what a release that publishes
    /// nothing (an expired lease, a lost message) can cost them.
    pub fn recheck(mut self, recheck: Duration) -> Self {
        self.recheck = recheck;
        self
    }

    /// The replica guard, for a master with replicas (Sentinel deployments; on a Redis Cluster,
    /// the master of the lock's slot): after every grant, renewal and `extend`, `WAIT` until
    /// `replicas` replicas acknowledged it, at most `timeout`. A grant that too few acknowledge is released and fails with
    /// [`Error::Unavailable`] (a waiting `lock` retries); a renewal that too few acknowledge
    /// counts as failed, so a lease whose replicas stay behind is reported lost when its
    /// validity ends; such an `extend` fails with [`Error::Unavailable`], and the guard keeps
    /// counting on the old expiry only.
    ///
    /// This narrows, but does not close, the failover window in which a promoted replica has
    /// not seen the lock: `WAIT` does not make Redis strongly consistent (a replica may
    /// acknowledge and still lose the write in its own crash, and Sentinel may promote a replica
    /// that did not acknowledge). Use fencing tokens for storage that must never see two
    /// writers.
    pub fn min_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.min_replicas = Some(MinReplicas { replicas, timeout });
        self
    }

    /// The retry delays used after a transient error (Redis unreachable) while waiting. A busy
    /// lock is re-checked at the [`recheck`](LockOptions::recheck) interval instead, wake-ups
    /// or not. The cap must be at most 1 h.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The configured lease length.
    pub fn ttl_value(&self) -> Duration {
        self.ttl
    }

    /// Checks every setting; called once when a lock is made.
    pub(crate) fn validate(&self) -> Result<()> {
        validate_ttl(self.ttl)?;
        if let Some(guard) = self.min_replicas {
            if guard.replicas == 0 || guard.timeout.is_zero() || guard.timeout >= self.ttl {
                return Err(Error::Config(format!(
                    "min_replicas({}, {:?}) is invalid: at least one replica, and a wait longer \
                     than zero and shorter than the TTL {:?}",
                    guard.replicas, guard.timeout, self.ttl
                )));
            }
        }
        if self.recheck < Duration::from_millis(10) || self.recheck > Duration::from_secs(3600) {
            return Err(Error::Config(format!(
                "recheck interval {:?} is out of range (10ms to 1h)",
                self.recheck
            )));
        }
        if self.claim < Duration::from_millis(10) || self.claim > MAX_TTL {
            return Err(Error::Config(format!(
                "claim lease {:?} is out of range (10ms to the TTL)",
                self.claim
            )));
        }
        self.backoff.validate()
    }

    /// Whether waiters with these options take hand-offs: asked for, on one Redis (`single`),
    /// with the watchdog to renew the claim lease, and no replica guard (a handed grant skips
    /// the guard's `WAIT`).
    pub(crate) fn takes_handoffs(&self, single: bool) -> bool {
        self.handoff && self.renew && self.min_replicas.is_none() && single
    }

    /// The claim lease a hand-off grants: the configured one, never longer than the TTL.
    pub(crate) fn claim_lease(&self) -> Duration {
        self.claim.min(self.ttl)
    }

    /// How long a fair-mode waiter's queue entry lives without a refresh, given the time it has
    /// left to wait: three re-check intervals, or less if the waiter gives up sooner.
    pub(crate) fn waiter_lease(&self, wait_left: Option<Duration>) -> Duration {
        let lease = self.recheck * 3;
        wait_left
            .map_or(lease, |left| lease.min(left))
            .max(Duration::from_millis(1))
    }
}

/// Checks a lease length against [`MIN_TTL`] and [`MAX_TTL`].
pub(crate) fn validate_ttl(ttl: Duration) -> Result<()> {
    if ttl < MIN_TTL || ttl > MAX_TTL {
        return Err(Error::Config(format!(
            "TTL {ttl:?} is out of range: a lease must last from {MIN_TTL:?} to {}h",
            MAX_TTL.as_secs() / 3600
        )));
    }
    Ok(())
}

/// Settings of a [`Client`](crate::Client)'s connections.
#[derive(Clone)]
pub struct ClientOptions {
    pub(crate) command_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) subscription_linger: Duration,
    pub(crate) tls_root_cert: Option<std::sync::Arc<[u8]>>,
    pub(crate) metrics_name_label: bool,
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("command_timeout", &self.command_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("subscription_linger", &self.subscription_linger)
            .field("tls_root_cert", &self.tls_root_cert.as_ref().map(|_| "set"))
            .field("metrics_name_label", &self.metrics_name_label)
            .finish()
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            subscription_linger: DEFAULT_SUBSCRIPTION_LINGER,
            tls_root_cert: None,
            metrics_name_label: false,
        }
    }
}

impl ClientOptions {
    /// The defaults ([`DEFAULT_COMMAND_TIMEOUT`], [`DEFAULT_CONNECT_TIMEOUT`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Upper bound on one command's round trip.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Upper bound on opening a connection.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Trust this root certificate (PEM) for `rediss://` servers instead of the system's
    /// roots: for a Redis whose certificate a private CA signed.
    pub fn tls_root_cert_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_root_cert = Some(pem.into().into());
        self
    }

    /// How long a wake-up subscription nobody waits on is kept for the next waiter (default
    /// [`DEFAULT_SUBSCRIPTION_LINGER`]); zero unsubscribes at once.
    pub fn subscription_linger(mut self, linger: Duration) -> Self {
        self.subscription_linger = linger;
        self
    }

    /// Label every metric (the table is in the README's "Metrics and tracing") with the lock's name
    /// too. Off by default: names can be unbounded (one per user, per job), and every label
    /// value makes a time series in the application's metrics system.
    pub fn metrics_name_label(mut self, on: bool) -> Self {
        self.metrics_name_label = on;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.subscription_linger > Duration::from_secs(3600) {
            return Err(Error::Config(format!(
                "subscription linger {:?} is out of range (at most 1h)",
                self.subscription_linger
            )));
        }
        for (name, value) in [
            ("command timeout", self.command_timeout),
            ("connect timeout", self.connect_timeout),
        ] {
            if value.is_zero() || value > Duration::from_secs(3600) {
                return Err(Error::Config(format!(
                    "{name} {value:?} is out of range (more than 0, at most 1h)"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_bounds_are_enforced() {
        assert!(validate_ttl(Duration::ZERO).expect_err("zero").is_config());
        assert!(validate_ttl(MIN_TTL - Duration::from_millis(1)).is_err());
        assert!(validate_ttl(MAX_TTL + Duration::from_secs(1)).is_err());
        assert!(validate_ttl(Duration::from_secs(u64::MAX)).is_err());
        assert!(validate_ttl(MIN_TTL).is_ok());
        assert!(validate_ttl(MAX_TTL).is_ok());
        assert!(LockOptions::new().validate().is_ok());
        let bad = LockOptions::new().recheck(Duration::from_millis(1));
        assert!(bad.validate().expect_err("too frequent").is_config());
    }

    #[test]
    fn waiter_leases_never_outlive_the_wait() {
        let options = LockOptions::new().recheck(Duration::from_secs(2));
        assert_eq!(options.waiter_lease(None), Duration::from_secs(6));
        assert_eq!(
            options.waiter_lease(Some(Duration::from_secs(1))),
            Duration::from_secs(1)
        );
        assert_eq!(
            options.waiter_lease(Some(Duration::ZERO)),
            Duration::from_millis(1)
        );
    }

    #[test]
    fn client_timeouts_are_checked() {
        assert!(ClientOptions::new().validate().is_ok());
        let zero = ClientOptions::new().command_timeout(Duration::ZERO);
        assert!(zero.validate().expect_err("zero").is_config());
    }
}
