//! New leases on their way to the watchdog task, without a task wake-up per lease.
//!
//! A grant pushes its lease here and wakes the task only if the lease needs it sooner than the
//! task already plans to wake (its first renewal or validity end comes first), or if it is the
//! first lease (the link monitors start with it). A short hold on a long lease — the common
//! case — costs a push, not a wake-up: the task takes it in at its next wake, which comes no
//! later than the lease needs (and at least once a second while leases are held, for the
//! suspend check).
//!
//! No lease is missed by a task going to sleep: the task publishes its planned wake and then
//! looks at the queue again; a grant pushes first and reads the plan after. Whichever comes
//! second sees the other (both `SeqCst`), and `Notify` keeps a wake-up sent before the task
//! waits.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::engine::lease::Lease;

/// The plan of a task that is awake (it will look at the queue before sleeping).
const AWAKE: u64 = 0;
/// The plan of a task with nothing to wake for.
const NEVER: u64 = u64::MAX;

#[derive(Debug)]
pub(super) struct Incoming {
    leases: Mutex<Vec<Arc<Lease>>>,
    /// When the task plans to wake, in µs since `base` (or [`AWAKE`], [`NEVER`]).
    plan: AtomicU64,
    /// Whether the task has taken in a lease yet (and started the link monitors).
    started: AtomicBool,
    wake: Notify,
    base: Instant,
}

impl Incoming {
    pub fn new() -> Arc<Incoming> {
        Arc::new(Incoming {
            leases: Mutex::new(Vec::new()),
            plan: AtomicU64::new(AWAKE),
            started: AtomicBool::new(false),
            wake: Notify::new(),
            base: Instant::now(),
        })
    }

    /// Hands `lease` to the task, waking it only if the lease needs it sooner than planned.
    pub fn push(&self, lease: Arc<Lease>) {
        let needed = self.micros(lease.needs_watchdog_by());
        self.queue().push(lease);
        let plan = self.plan.load(Ordering::SeqCst);
        if needed < plan || !self.started.load(Ordering::SeqCst) {
            self.wake.notify_one();
        }
    }

    /// A tracked lease now needs the task by `needed` (it was extended to a shorter TTL): wake
    /// the task if that is sooner than it planned.
    pub fn nudge(&self, needed: Instant) {
        // Awake, the task may be between reading this lease's old timing and publishing its
        // plan: wake it anyway (at most one extra pass).
        let plan = self.plan.load(Ordering::SeqCst);
        if plan == AWAKE || self.micros(needed) < plan {
            self.wake.notify_one();
        }
    }

    /// The leases pushed since the last call.
    pub fn take(&self) -> Vec<Arc<Lease>> {
        let leases = std::mem::take(&mut *self.queue());
        if !leases.is_empty() {
            self.started.store(true, Ordering::SeqCst);
        }
        leases
    }

    /// The task is about to sleep until `wake` (`None`: until something happens). Returns
    /// false if a lease arrived meanwhile: take it in first.
    pub fn plan(&self, wake: Option<Instant>) -> bool {
        let plan = wake.map_or(NEVER, |at| self.micros(at).max(AWAKE + 1));
        self.plan.store(plan, Ordering::SeqCst);
        self.queue().is_empty()
    }

    /// The task woke up: until it plans again, every push may rely on it looking.
    pub fn awake(&self) {
        self.plan.store(AWAKE, Ordering::SeqCst);
    }

    /// Resolves when a push needs the task sooner than planned.
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Lease>>> {
        self.leases.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn micros(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_micros()).unwrap_or(NEVER - 1)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;

    fn lease(ttl: Duration) -> Arc<Lease> {
        Arc::new(Lease::new(
            Arc::new(crate::engine::ops::testing::Noop),
            1,
            ttl,
            Instant::now(),
            true,
            Arc::new(AtomicUsize::new(0)),
        ))
    }

    async fn woke(incoming: &Incoming) -> bool {
        tokio::time::timeout(Duration::from_millis(20), incoming.woken())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_lease_wakes_the_task_only_if_it_needs_it_sooner_than_planned() {
        let incoming = Incoming::new();
        // The first lease always wakes it: the link monitors start with it.
        incoming.push(lease(Duration::from_secs(30)));
        assert!(woke(&incoming).await);
        assert_eq!(incoming.take().len(), 1);
        // The task plans to wake in 1 s: a 30 s lease (first renewal in 10 s) waits for it.
        assert!(incoming.plan(Some(Instant::now() + Duration::from_secs(1))));
        incoming.push(lease(Duration::from_secs(30)));
        assert!(
            !woke(&incoming).await,
            "a wake-up for a lease that could wait"
        );
        // A 300 ms lease (renewal in 100 ms) needs it sooner.
        incoming.push(lease(Duration::from_millis(300)));
        assert!(woke(&incoming).await);
        // Planning with leases still queued: take them in first.
        assert!(!incoming.plan(None));
        assert_eq!(incoming.take().len(), 2);
        // Awake (between its wake and its next plan) the task looks anyway: no wake-up needed.
        incoming.awake();
        assert!(incoming.plan(None));
        incoming.push(lease(Duration::from_secs(30)));
        assert!(
            woke(&incoming).await,
            "planned to sleep for good: the lease wakes it"
        );
    }

    #[tokio::test]
    async fn a_nudge_while_the_task_plans_is_not_lost() {
        let incoming = Incoming::new();
        // The task is awake, has read the lease's old timing, and is about to plan 1 s ahead
        // when the lease is extended to a shorter TTL.
        incoming.awake();
        incoming.nudge(Instant::now() + Duration::from_millis(1));
        assert!(incoming.plan(Some(Instant::now() + Duration::from_secs(1))));
        assert!(woke(&incoming).await, "the nudge was lost");
        // Planned already: only a sooner need wakes it.
        incoming.nudge(Instant::now() + Duration::from_secs(5));
        assert!(!woke(&incoming).await);
        incoming.nudge(Instant::now() + Duration::from_millis(1));
        assert!(woke(&incoming).await);
    }
}
