//! The acquisition engine: everything a primitive (lock, reentrant lock, semaphore) shares.
//!
//! A primitive supplies its scripts, reply parsing and guard; the engine owns the rest:
//! - [`Core`]: the nodes, the watchdog(s), the notifier, the holder's identity and the count of
//!   held leases; one per client, shared by every primitive and guard made from it.
//! - `acquire`: one attempt (token policy, fan-out to a majority, fencing on Redlock: a
//!   proposed token or a write-back, the replica guard's `WAIT`, the validity check, rollback)
//!   and `wait` the waiting
//!   loop (wake-ups, re-checks, backoff, the wait limit); `pending` undoes an acquisition that
//!   may have happened when the caller gives up; `riders` lets a waiter be queued by the
//!   release of another task of its client.
//! - `lease` (one lease's state and validity), `handle` (what every guard does with it:
//!   `lost`, `watch`, `is_held`, `remaining`, `extend`, `release`), `ops` (the batched
//!   script operations a primitive gives the engine), `watchdog` (renewal, loss, background
//!   releases, for any primitive).
//!
//! Nothing here knows which primitive it serves, and nothing below it (`connection`) calls up.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::connection::notify::Notifier;
use crate::connection::quorum::Nodes;
use crate::error::{Error, Result};
use crate::options::ClientOptions;
use crate::telemetry::{Granted, Kind, Labels};

pub(crate) mod acquire;
pub(crate) mod handle;
pub(crate) mod lease;
pub(crate) mod ops;
pub(crate) mod pending;
pub(crate) mod riders;
pub(crate) mod wait;
pub(crate) mod watchdog;

use lease::Lease;
use ops::LeaseOps;
use watchdog::Watchdog;

/// What a lock records about its holder beyond the label: who we are.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub host: String,
    pub pid: u32,
}

/// One client's shared machinery.
#[derive(Debug)]
pub(crate) struct Core {
    nodes: Nodes,
    watchdog: Watchdog,
    /// The watchdog of leases with a replica guard, started with the first one.
    guarded_watchdog: OnceLock<Watchdog>,
    notifier: Notifier,
    /// Waiters riding on releases by other tasks of this client (see `riders`).
    riders: riders::Riders,
    held: Arc<AtomicUsize>,
    identity: Identity,
    /// The largest fencing token this client was granted on Redlock, on any name: its next
    /// proposals stay above it even if the wall clock steps back.
    fence_seen: AtomicU64,
    /// Whether metrics carry the lock's name (`ClientOptions::metrics_name_label`).
    metrics_name_label: bool,
}

/// A new lease's terms, as the primitive asked for them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Terms {
    pub ttl: Duration,
    pub renew: bool,
    pub min_replicas: Option<crate::MinReplicas>,
    /// How many may hold at once (1 for a lock, the limit for a semaphore): on Redlock it
    /// sets how many masters must hold the lease (`Nodes::quorum_for`).
    pub holders: u32,
    /// Which primitive, for its metrics.
    pub kind: Kind,
}

impl Core {
    /// Starts the watchdog and the notifier for `nodes` (on the current tokio runtime).
    pub fn start(nodes: Nodes, options: &ClientOptions) -> Arc<Core> {
        let watchdog = Watchdog::spawn(nodes.clone());
        // Wake-ups come from every node: on Redlock a release publishes on each master it
        // reaches, so waiters still hear it while some masters are down.
        let notifier = Notifier::spawn(
            (0..nodes.len()).map(|i| nodes.get(i).clone()).collect(),
            options.connect_timeout,
            options.subscription_linger,
        );
        Arc::new(Core {
            nodes,
            watchdog,
            guarded_watchdog: OnceLock::new(),
            notifier,
            riders: riders::Riders::default(),
            held: Arc::new(AtomicUsize::new(0)),
            identity: Identity {
                host: gethostname::gethostname().to_string_lossy().into_owned(),
                pid: std::process::id(),
            },
            fence_seen: AtomicU64::new(0),
            metrics_name_label: options.metrics_name_label,
        })
    }

    /// The metric labels of primitive `kind` named `name`.
    pub fn labels(&self, kind: Kind, name: &str) -> Labels {
        Labels::new(kind, name, self.metrics_name_label)
    }

    /// Runs one acquisition call (`lock`, `try_acquire` …) of primitive `kind` named `name`,
    /// counted, timed and traced (see `telemetry`).
    pub async fn counted<G, F>(&self, kind: Kind, name: &str, call: F) -> Result<G>
    where
        G: Granted,
        F: std::future::Future<Output = Result<G>>,
    {
        crate::telemetry::acquisition(&self.labels(kind, name), name, call).await
    }

    pub fn nodes(&self) -> &Nodes {
        &self.nodes
    }

    pub fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    /// Waiters riding on this client's releases (see `riders`).
    pub fn riders(&self) -> &riders::Riders {
        &self.riders
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The watchdog that sends background releases (and renews unguarded leases).
    pub fn watchdog(&self) -> &Watchdog {
        &self.watchdog
    }

    /// How many leases are held right now through this core.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    /// A granted lease, counted and handed to the watchdog that renews it: its own watchdog
    /// for a lease with a replica guard, whose renewals may block in `WAIT`.
    pub fn track(
        &self,
        ops: Arc<dyn LeaseOps>,
        fencing_token: u64,
        terms: Terms,
        sent_at: Instant,
    ) -> Arc<Lease> {
        self.watch(self.lease(ops, fencing_token, terms, sent_at))
    }

    /// A lease a release handed over (see `handoff.lua`): granted for `claim` from no earlier
    /// than `since`, and renewed to its full TTL by the watchdog within a third of that.
    pub fn track_handed(
        &self,
        ops: Arc<dyn LeaseOps>,
        fencing_token: u64,
        terms: Terms,
        since: lease::Sent,
        claim: Duration,
    ) -> Arc<Lease> {
        let lease = self.lease(ops, fencing_token, terms, since.at);
        self.watch(lease.with_first_term(claim, since.suspended))
    }

    fn lease(&self, ops: Arc<dyn LeaseOps>, fence: u64, terms: Terms, sent_at: Instant) -> Lease {
        let labels = self.labels(terms.kind, ops.name());
        Lease::new(
            ops,
            fence,
            terms.ttl,
            sent_at,
            terms.renew,
            self.held.clone(),
        )
        .with_min_replicas(terms.min_replicas)
        .with_quorum(self.nodes.quorum_for(terms.holders))
        .with_labels(labels)
    }

    fn watch(&self, lease: Lease) -> Arc<Lease> {
        let lease = Arc::new(lease);
        self.watchdog_of(&lease).track(lease.clone());
        lease
    }

    /// `lease` changed its timing (an extend): its watchdog looks again if it must sooner.
    pub fn rewatch(&self, lease: &Lease) {
        self.watchdog_of(lease).rewatch(lease);
    }

    /// The watchdog of `lease`: its own for a lease with a replica guard, whose renewals may
    /// block in `WAIT`.
    fn watchdog_of(&self, lease: &Lease) -> &Watchdog {
        match lease.min_replicas {
            None => &self.watchdog,
            Some(_) => self
                .guarded_watchdog
                .get_or_init(|| Watchdog::spawn_guarded(self.nodes.clone())),
        }
    }

    /// The fencing token to propose on Redlock: this host's wall clock in microseconds, but
    /// above `above` (the counters masters refused a lower proposal with) and above every
    /// token this client was granted (see `connection::quorum`, "Fencing across nodes").
    pub fn fence_proposal(&self, above: u64) -> u64 {
        let now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
            });
        let seen = self.fence_seen.load(Ordering::SeqCst);
        now_us.max(above.max(seen).saturating_add(1))
    }

    /// A Redlock grant's fencing token: later proposals go above it.
    pub fn saw_fence(&self, fence: u64) {
        self.fence_seen.fetch_max(fence, Ordering::SeqCst);
    }

    /// Refuses a feature that works on one Redis only.
    pub fn single_node_only(&self, feature: &str) -> Result<()> {
        if self.nodes.is_single() {
            return Ok(());
        }
        Err(Error::Config(format!(
            "{feature} need a single Redis; they are not available with Redlock yet"
        )))
    }

    /// Waits until queued background releases and waiter withdrawals have been sent.
    pub async fn flush(&self) {
        self.watchdog.flush().await;
        if let Some(guarded) = self.guarded_watchdog.get() {
            guarded.flush().await;
        }
        self.notifier.flush().await;
    }
}
