//! The watchdog: one background task per client that renews leases, reports lost ones, and
//! releases locks whose guards were dropped without `release()`.
//!
//! # Guarantees
//! - **Batched renewal.** Every lease due within half an interval of the earliest due one is
//!   renewed by one batched script call per node and kind (all sent at once) (all nodes at once, for Redlock), so one tick
//!   costs one round trip per node however many locks the client holds; leases renewed
//!   together stay in step from then on. A Redlock lease is renewed when a majority says so,
//!   and lost when a majority no longer holds it.
//! - **Loss within one interval.** A renewal that finds the key gone reports the loss at once
//!   ([`LossReason::KeyGone`]); a Redis that stops answering is retried until the lease's
//!   conservative validity ends, and the loss is reported then
//!   ([`LossReason::Unreachable`]), before the server-side key can expire.
//! - **No renewal after release.** A lease leaves `Held` before its release is sent; the
//!   watchdog renews only `Held` leases, and a renewal already in flight cannot outlive the
//!   release because the `extend` script never re-creates a deleted key.
//! - **Owned.** The task ends when its channel closes, that is when the client and every guard
//!   are gone, after it has sent the releases queued before that.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::connection::link::{LinkEvent, Links};
use crate::connection::quorum::Nodes;
use crate::engine::lease::Lease;
use crate::engine::ops::ReleaseOp;

mod background;
mod batch;
mod incoming;
mod renew;
#[cfg(test)]
mod stream_tests;
#[cfg(test)]
mod suspend_tests;
mod verify;

use background::Background;
use incoming::Incoming;
use verify::Verify;

/// How often the watchdog looks at the clocks while leases are held, so a lease that ran out
/// while the host was suspended is reported within this long of the resume.
const SUSPEND_CHECK: Duration = Duration::from_secs(1);

/// Work for the watchdog.
#[derive(Debug)]
enum Job {
    /// Release a hold in the background (dropped guards, undone acquisitions), on these
    /// nodes (`None`: every node).
    Release(Arc<dyn ReleaseOp>, Option<Vec<usize>>),
    /// Answer once every job queued before this one is done.
    Flush(oneshot::Sender<()>),
}

/// The handle the engine and the guards use to reach the watchdog task.
#[derive(Debug, Clone)]
pub(crate) struct Watchdog {
    jobs: mpsc::UnboundedSender<Job>,
    /// New leases (see `incoming`: no task wake-up per lease).
    incoming: Arc<Incoming>,
}

impl Watchdog {
    /// Starts the task on the current tokio runtime.
    pub fn spawn(nodes: Nodes) -> Watchdog {
        Self::start(nodes, false)
    }

    /// Starts a task for leases with a replica guard only: each renewal and its `WAIT` run on
    /// a link of their own (see [`ReplicaLink`](crate::connection::node::ReplicaLink)). A task
    /// of their own, because a `WAIT` may block for the guard's whole timeout, and the
    /// renewals of the client's other leases must not wait behind it.
    pub fn spawn_guarded(nodes: Nodes) -> Watchdog {
        Self::start(nodes, true)
    }

    fn start(nodes: Nodes, guarded: bool) -> Watchdog {
        let (jobs, queue) = mpsc::unbounded_channel();
        let (link_sender, link_events) = mpsc::unbounded_channel();
        let incoming = Incoming::new();
        let task = Task {
            incoming: incoming.clone(),
            nodes,
            queue,
            leases: Vec::new(),
            links: None,
            link_sender,
            link_events,
            verify: None,
            background: Background::new(),
            guarded,
        };
        tokio::spawn(task.run());
        Watchdog { jobs, incoming }
    }

    /// Starts renewing and watching `lease` (until it leaves `Held`). If the task is gone
    /// (its runtime shut down), the lease simply runs out its TTL, which is the crash case the
    /// TTL exists for.
    pub fn track(&self, lease: Arc<Lease>) {
        self.incoming.push(lease);
    }

    /// `lease` (tracked already) changed its timing, e.g. an extend to a shorter TTL: the task
    /// looks again if it now needs renewing sooner than planned.
    pub fn rewatch(&self, lease: &Lease) {
        self.incoming.nudge(lease.needs_watchdog_by());
    }

    /// Releases a hold (if it is still ours) without waiting. Safe to call from `Drop`: it
    /// never blocks and needs no runtime.
    pub fn release_in_background(&self, hold: Arc<dyn ReleaseOp>) {
        let _ = self.jobs.send(Job::Release(hold, None));
    }

    /// [`Watchdog::release_in_background`] on the nodes at `nodes` only (the others answered
    /// the release already).
    pub fn release_in_background_on(&self, hold: Arc<dyn ReleaseOp>, nodes: Vec<usize>) {
        let _ = self.jobs.send(Job::Release(hold, Some(nodes)));
    }

    /// Waits until every job queued so far (background releases above all) is done.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.jobs.send(Job::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

/// A lease the task watches, with its retry schedule after a failed renewal.
#[derive(Debug)]
struct Tracked {
    lease: Arc<Lease>,
    retry_at: Option<Instant>,
    last_error: Option<String>,
}

impl Tracked {
    fn due_at(&self) -> Instant {
        self.retry_at.unwrap_or_else(|| self.lease.next_renewal())
    }
}

#[derive(Debug)]
struct Task {
    nodes: Nodes,
    incoming: Arc<Incoming>,
    queue: mpsc::UnboundedReceiver<Job>,
    leases: Vec<Tracked>,
    /// The link monitors, started with the first tracked lease and stopped with the task.
    links: Option<Links>,
    link_sender: mpsc::UnboundedSender<LinkEvent>,
    link_events: mpsc::UnboundedReceiver<LinkEvent>,
    /// A re-verification of every lease is due (a link event), with its retry schedule.
    verify: Option<Verify>,
    /// Background releases in flight.
    background: Background,
    /// Renews on a replica link and checks the replica guard (one Redis, or per slot on a
    /// Cluster).
    guarded: bool,
}

impl Task {
    async fn run(mut self) {
        loop {
            self.take_leases();
            let mut wake = self.next_wake();
            if !self.incoming.plan(wake) {
                // Leases pushed while planning: fold in their needs only. Planning again from
                // scratch (O(every lease)) could be outrun by a stream of grants, and the task
                // would never get to its tick. The published plan is no earlier than this wake,
                // so a push that needs the task sooner still wakes it.
                wake = earliest(wake, self.take_leases());
            }
            let first = tokio::select! {
                () = self.incoming.woken() => None,
                job = self.queue.recv() => match job {
                    Some(job) => Some(job),
                    None => break,
                },
                () = crate::clock::sleep_until(wake) => None,
                Some(event) = self.link_events.recv() => {
                    self.link_changed(event);
                    None
                }
            };
            self.incoming.awake();
            // Before a re-verification, so it covers every lease granted so far.
            self.take_leases();
            let queued: Vec<Job> = std::iter::from_fn(|| self.queue.try_recv().ok()).collect();
            self.take_jobs(first.into_iter().chain(queued));
            if self.verify.is_some_and(|v| v.due <= Instant::now()) {
                self.reverify().await;
            }
            self.tick().await;
        }
    }

    /// Starts tracking the leases granted since the last look (and the link monitors, with the
    /// first); returns when the held ones need the task next.
    fn take_leases(&mut self) -> Option<Instant> {
        let leases = self.incoming.take();
        if leases.is_empty() {
            return None;
        }
        let need = leases
            .iter()
            .filter(|lease| lease.is_held())
            .map(|lease| {
                lease
                    .needs_watchdog_by()
                    .min(Instant::now() + SUSPEND_CHECK)
            })
            .min();
        if self.links.is_none() {
            self.links = Some(Links::start(&self.nodes, self.link_sender.clone()));
        }
        self.leases.extend(leases.into_iter().map(|lease| Tracked {
            lease,
            retry_at: None,
            last_error: None,
        }));
        need
    }

    /// Sends releases beside the loop, never in its way (a slow or cut node must not hold up
    /// renewals and loss reports for the leases still held).
    fn take_jobs(&mut self, jobs: impl Iterator<Item = Job>) {
        let mut releases = Vec::new();
        for job in jobs {
            match job {
                Job::Release(hold, nodes) => releases.push((hold, nodes)),
                Job::Flush(done) => {
                    if !releases.is_empty() {
                        self.background
                            .release(&self.nodes, std::mem::take(&mut releases));
                    }
                    self.background.flush(done);
                }
            }
        }
        if !releases.is_empty() {
            self.background.release(&self.nodes, releases);
        }
    }

    /// The earliest moment something is due: a renewal, or the end of a lease's validity.
    fn next_wake(&self) -> Option<Instant> {
        let verify = self.verify.map(|v| v.due);
        // While leases are held, look at least every SUSPEND_CHECK: the monotonic clock that
        // timers run on stands still while the host is suspended, so only a regular look at
        // the suspended time finds a lease that ran out during a suspend soon after resume.
        let suspend_check = self
            .leases
            .iter()
            .any(|t| t.lease.is_held())
            .then(|| Instant::now() + SUSPEND_CHECK);
        self.leases
            .iter()
            .filter(|t| t.lease.is_held())
            .map(|t| {
                let end = t.lease.valid_until();
                if t.lease.renew {
                    end.min(t.due_at())
                } else {
                    end
                }
            })
            .chain(verify)
            .chain(suspend_check)
            .min()
    }
}

/// The earlier of two optional moments (`None`: never).
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
