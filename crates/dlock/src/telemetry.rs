//! What the library reports through the [`metrics`] facade (numbers) and [`tracing`] (spans):
//! the names, labels and units in one place. Nothing is recorded unless the application
//! installs a `metrics` recorder (an exporter of its choice); dlock forces none.
//!
//! The metrics, their types, units and labels are in one table, the README's "Metrics and
//! tracing" (`tests/integration/metrics.rs` checks them against a recorder).
//!
//! Tracing spans: `dlock.acquire` (fields `primitive`, `name`) around each acquisition call,
//! with an event carrying the grant's `fencing_token`; `dlock.release` (`name`,
//! `fencing_token`) around a release (handle.rs); `dlock.hold` (`primitive`, `name`,
//! `fencing_token`) from the grant until the lease is dropped, holding the `dlock lease ended`
//! event (lease.rs). Never a password or an owner's token.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument as _;

use crate::error::{Error, Result};
use crate::status::{LeaseStatus, LossReason};

pub(crate) const ACQUISITIONS: &str = "dlock_acquisitions_total";
pub(crate) const WAIT: &str = "dlock_acquire_wait_seconds";
pub(crate) const HOLD: &str = "dlock_hold_seconds";
pub(crate) const LOST: &str = "dlock_leases_lost_total";
pub(crate) const RENEWAL: &str = "dlock_renewal_seconds";

/// Which primitive a metric is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Lock,
    ReentrantLock,
    Semaphore,
    ReadLock,
    WriteLock,
    MultiLock,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Lock => "lock",
            Kind::ReentrantLock => "reentrant_lock",
            Kind::Semaphore => "semaphore",
            Kind::ReadLock => "read_lock",
            Kind::WriteLock => "write_lock",
            Kind::MultiLock => "multi_lock",
        }
    }
}

/// The labels every metric of one primitive carries.
#[derive(Debug, Clone)]
pub(crate) struct Labels {
    kind: Kind,
    /// The lock's name, when the client opted in.
    name: Option<Arc<str>>,
}

impl Labels {
    pub fn new(kind: Kind, name: &str, with_name: bool) -> Labels {
        Labels {
            kind,
            name: with_name.then(|| Arc::from(name)),
        }
    }

    /// The `primitive` label's value.
    pub fn primitive(&self) -> &'static str {
        self.kind.as_str()
    }

    fn with(&self, key: &'static str, value: &'static str) -> Vec<metrics::Label> {
        let mut labels = vec![
            metrics::Label::new("primitive", self.kind.as_str()),
            metrics::Label::new(key, value),
        ];
        if let Some(name) = &self.name {
            labels.push(metrics::Label::new("name", name.to_string()));
        }
        labels
    }
}

/// A grant, as an acquisition's span reports it.
pub(crate) trait Granted {
    fn fencing_token(&self) -> u64;
}

/// Runs one acquisition call (`lock`, `try_lock`, `acquire` …) inside a `dlock.acquire` span,
/// and counts and times it by outcome.
pub(crate) async fn acquisition<G, F>(labels: &Labels, name: &str, call: F) -> Result<G>
where
    G: Granted,
    F: Future<Output = Result<G>>,
{
    let span = tracing::debug_span!("dlock.acquire", primitive = labels.kind.as_str(), name);
    // Counted as `cancelled` if the caller drops the future (a timeout or select around it).
    let mut counted = Counted {
        labels,
        started: Instant::now(),
        outcome: "cancelled",
    };
    let result = call.instrument(span.clone()).await;
    if let Ok(grant) = &result {
        span.in_scope(|| tracing::debug!(fencing_token = grant.fencing_token(), "granted"));
    }
    counted.outcome = match &result {
        Ok(_) => "granted",
        Err(Error::Conflict(_)) => "busy",
        Err(Error::Timeout { .. }) => "timeout",
        Err(_) => "error",
    };
    result
}

/// One acquisition call, counted and timed when it ends: returned, or dropped.
struct Counted<'a> {
    labels: &'a Labels,
    started: Instant,
    outcome: &'static str,
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        let tags = self.labels.with("outcome", self.outcome);
        metrics::counter!(ACQUISITIONS, tags.clone()).increment(1);
        metrics::histogram!(WAIT, tags).record(self.started.elapsed().as_secs_f64());
    }
}

/// A lease left `Held` for `status` after `held` since its grant.
pub(crate) fn lease_ended(labels: &Labels, held: Duration, status: &LeaseStatus) {
    let end = match status {
        LeaseStatus::Lost(reason) => {
            let reason = match reason {
                LossReason::KeyGone => "key_gone",
                LossReason::KeyGoneAfterReconnect => "key_gone_after_reconnect",
                LossReason::Unreachable(_) => "unreachable",
                LossReason::Expired => "expired",
            };
            metrics::counter!(LOST, labels.with("reason", reason)).increment(1);
            "lost"
        }
        _ => "released",
    };
    metrics::histogram!(HOLD, labels.with("end", end)).record(held.as_secs_f64());
}

/// One batched renewal call took `round_trip`.
pub(crate) fn renewal(round_trip: Duration) {
    metrics::histogram!(RENEWAL).record(round_trip.as_secs_f64());
}
