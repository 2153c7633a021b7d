//! The watchdog: one background task per client that renews leases, reports lost ones, and
//! releases locks whose guards were dropped without `release()`.
//!
//! # Guarantees
//! - **Batched renewal.** Every lease due within half an interval of the earliest due one is
//!   renewed by one `extend` script call per node (all nodes at once, for Redlock), so one tick
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

use crate::key::LockKeys;
use crate::lease::{renewal_interval, Lease, LeaseStatus, LossReason};
use crate::link::{LinkEvent, Links};
use crate::node::ReplicaLink;
use crate::quorum::Nodes;
use crate::scripts;
use crate::token::Token;

/// Most leases renewed or released by one script call; larger batches are split (each part is
/// still one round trip) so no single script blocks Redis for long.
const MAX_BATCH: usize = 1000;

/// How often the watchdog looks at the clocks while leases are held, so a lease that ran out
/// while the host was suspended is reported within this long of the resume.
const SUSPEND_CHECK: Duration = Duration::from_secs(1);

/// Pause before asking a node that failed a re-verification again.
const REVERIFY_RETRY: Duration = Duration::from_millis(50);

/// Work for the watchdog.
#[derive(Debug)]
enum Job {
    /// Renew (if the lease asks for it) and watch this lease until it leaves `Held`.
    Track(Arc<Lease>),
    /// Compare-and-delete a lock in the background (dropped guards, cancelled acquisitions).
    Release { keys: Arc<LockKeys>, token: Token },
    /// Remove one hold from a reentrant lock in the background.
    ReleaseHold {
        keys: Arc<LockKeys>,
        owner: Token,
        acquisition: Token,
        /// The grant's fencing token, when known (see `reentrant::release_call`).
        grant: Option<u64>,
    },
    /// Answer once every job queued before this one is done.
    Flush(oneshot::Sender<()>),
}

/// The handle the client, its locks and guards use to reach the watchdog task.
#[derive(Debug, Clone)]
pub(crate) struct Watchdog {
    jobs: mpsc::UnboundedSender<Job>,
}

impl Watchdog {
    /// Starts the task on the current tokio runtime.
    pub fn spawn(nodes: Nodes) -> Watchdog {
        Self::start(nodes, false)
    }

    /// Starts a task for leases with a replica guard only: each renewal and its `WAIT` run on
    /// a link of their own (see [`crate::node::ReplicaLink`]). A task of their own, because a
    /// `WAIT` may block for the guard's whole timeout, and the renewals of the client's other
    /// leases must not wait behind it.
    pub fn spawn_guarded(nodes: Nodes) -> Watchdog {
        Self::start(nodes, true)
    }

    fn start(nodes: Nodes, guarded: bool) -> Watchdog {
        let (jobs, queue) = mpsc::unbounded_channel();
        let (link_sender, link_events) = mpsc::unbounded_channel();
        let task = Task {
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
        Watchdog { jobs }
    }

    /// Starts renewing and watching `lease`.
    pub fn track(&self, lease: Arc<Lease>) {
        // A send fails only when the task is gone (its runtime shut down); the lease then
        // simply runs out its TTL, which is the crash case the TTL exists for.
        let _ = self.jobs.send(Job::Track(lease));
    }

    /// Releases `keys` if `token` still holds it, without waiting. Safe to call from `Drop`:
    /// it never blocks and needs no runtime.
    pub fn release_in_background(&self, keys: Arc<LockKeys>, token: Token) {
        let _ = self.jobs.send(Job::Release { keys, token });
    }

    /// Removes the hold `acquisition` of `owner` from a reentrant lock, without waiting (the
    /// lock is freed if it was the last hold). Safe to call from `Drop`.
    pub fn release_hold_in_background(
        &self,
        keys: Arc<LockKeys>,
        owner: Token,
        acquisition: Token,
        grant: Option<u64>,
    ) {
        let _ = self.jobs.send(Job::ReleaseHold {
            keys,
            owner,
            acquisition,
            grant,
        });
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
    /// Renews on a replica link and checks the replica guard (single node only).
    guarded: bool,
}

/// Background work (releases) running beside the watchdog's loop, so a slow node delays only
/// that work. Flushes wait for what was started before them: every task holds a clone of the
/// current epoch's sender, and a flush closes the epoch and waits for its channel to close.
#[derive(Debug)]
struct Background {
    epoch: mpsc::Sender<()>,
    epoch_closed: mpsc::Receiver<()>,
}

impl Background {
    fn new() -> Background {
        let (epoch, epoch_closed) = mpsc::channel(1);
        Background {
            epoch,
            epoch_closed,
        }
    }

    fn spawn(&self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        let epoch = self.epoch.clone();
        tokio::spawn(async move {
            work.await;
            drop(epoch);
        });
    }

    /// Answers `done` once every task spawned so far has finished.
    fn flush(&mut self, done: oneshot::Sender<()>) {
        let (epoch, epoch_closed) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.epoch, epoch));
        let mut closed = std::mem::replace(&mut self.epoch_closed, epoch_closed);
        tokio::spawn(async move {
            // Nobody sends: `recv` returns `None` once every sender of the epoch is gone.
            while closed.recv().await.is_some() {}
            let _ = done.send(());
        });
    }
}

/// Per lease of a batch: how many nodes said yes (extended, or still ours) and no; and what
/// went wrong on the others.
struct Counted {
    yes: Vec<usize>,
    no: Vec<usize>,
    errors: Vec<String>,
}

/// A pending re-verification of every held lease.
#[derive(Debug, Clone, Copy)]
struct Verify {
    due: Instant,
    /// A connection dropped since the last complete check: a key found gone was lost in a
    /// restart or failover.
    after_drop: bool,
}

impl Task {
    async fn run(mut self) {
        loop {
            let wake = self.next_wake();
            let first = tokio::select! {
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
            let mut releases = Vec::new();
            let mut holds = Vec::new();
            let mut flushes = Vec::new();
            let queued = std::iter::from_fn(|| self.queue.try_recv().ok());
            for job in first.into_iter().chain(queued.collect::<Vec<_>>()) {
                match job {
                    Job::Track(lease) => {
                        if self.links.is_none() {
                            self.links = Some(Links::start(&self.nodes, self.link_sender.clone()));
                        }
                        self.leases.push(Tracked {
                            lease,
                            retry_at: None,
                            last_error: None,
                        });
                    }
                    Job::Release { keys, token } => releases.push((keys, token)),
                    Job::ReleaseHold {
                        keys,
                        owner,
                        acquisition,
                        grant,
                    } => holds.push((keys, owner, acquisition, grant)),
                    Job::Flush(done) => flushes.push(done),
                }
            }
            // Releases run beside the watchdog, never in its way: a slow or cut node must
            // not hold up renewals and loss reports for the leases still held.
            if !releases.is_empty() {
                let nodes = self.nodes.clone();
                self.background
                    .spawn(async move { release(&nodes, releases).await });
            }
            for (keys, owner, acquisition, grant) in holds {
                // Reentrant locks are single-node only.
                let node = self.nodes.first().clone();
                self.background.spawn(async move {
                    let call = crate::reentrant::release_call(&keys, &owner, &acquisition, grant);
                    if let Err(error) = node.eval::<Vec<i64>>(&call, node.command_timeout()).await {
                        tracing::warn!(lock = %keys.lock, %error, "background release of a hold failed");
                    }
                });
            }
            for done in flushes {
                self.background.flush(done);
            }
            if self.verify.is_some_and(|v| v.due <= Instant::now()) {
                self.reverify().await;
            }
            self.tick().await;
        }
    }

    /// Counts a batch call's per-node answers (from [`Nodes::decide`]) per lease; abandoned
    /// nodes (the others decided every lease) count for nothing.
    fn count(
        &self,
        replies: Vec<Option<crate::error::Result<Vec<bool>>>>,
        leases: usize,
        what: &str,
    ) -> Counted {
        let mut counted = Counted {
            yes: vec![0; leases],
            no: vec![0; leases],
            errors: Vec::new(),
        };
        for (index, reply) in replies.into_iter().enumerate() {
            match reply {
                None => {}
                Some(Ok(answers)) if answers.len() == leases => {
                    for (lease, yes) in answers.into_iter().enumerate() {
                        if yes {
                            counted.yes[lease] += 1;
                        } else {
                            counted.no[lease] += 1;
                        }
                    }
                }
                Some(Ok(answers)) => counted.errors.push(format!(
                    "{}: {what} returned {} results for {leases} leases",
                    self.nodes.name(index),
                    answers.len(),
                )),
                Some(Err(e)) if self.nodes.is_single() => counted.errors.push(e.to_string()),
                Some(Err(e)) => counted
                    .errors
                    .push(format!("{}: {e}", self.nodes.name(index))),
            }
        }
        counted
    }

    /// A node's connection dropped, came back, or was first seen: every held lease is
    /// re-verified now (a read-only ownership check, retried on failure until each lease's
    /// validity ends). A key found gone after a drop was lost in a restart or failover.
    fn link_changed(&mut self, event: LinkEvent) {
        tracing::debug!(?event, leases = self.leases.len(), "re-verifying leases");
        let dropped = !matches!(event, LinkEvent::Started(_));
        self.verify = Some(Verify {
            due: Instant::now(),
            after_drop: dropped || self.verify.is_some_and(|v| v.after_drop),
        });
    }

    /// Checks that every held lease's key still holds its token (`MGET` per node and slot;
    /// nothing is written, so it never races an `extend`). A lease a majority no longer holds
    /// is lost; nodes that fail are asked again shortly.
    async fn reverify(&mut self) {
        let Some(verify) = self.verify.take() else {
            return;
        };
        self.leases.retain(|t| t.lease.is_held());
        let mut undecided = false;
        for chunk in self.leases.chunks(MAX_BATCH) {
            let slots: Vec<&str> = chunk.iter().map(|t| slot_of(&t.lease.keys)).collect();
            // Never wait past the first lease's validity: a black-holed link must not delay
            // that lease's loss report (nor the renewals of the others).
            let now = Instant::now();
            let until_first_end = chunk
                .iter()
                .map(|t| t.lease.valid_until())
                .min()
                .unwrap_or(now)
                .saturating_duration_since(now);
            let replies = self
                .nodes
                .decide(chunk.len(), |node| {
                    let timeout = node.command_timeout().min(until_first_end);
                    owned_per_slot(node, chunk, &slots, timeout)
                })
                .await;
            let Counted {
                yes: owned,
                no: gone,
                errors,
            } = self.count(replies, chunk.len(), "MGET");
            if !errors.is_empty() {
                tracing::debug!(errors = %errors.join("; "), "re-verification failed; will retry");
            }
            for (lease, tracked) in chunk.iter().enumerate() {
                if gone[lease] > self.nodes.len() - self.nodes.quorum() {
                    let reason = if verify.after_drop {
                        LossReason::KeyGoneAfterReconnect
                    } else {
                        LossReason::KeyGone
                    };
                    if tracked.lease.finish(LeaseStatus::Lost(reason.clone())) {
                        tracing::warn!(lock = %tracked.lease.keys.lock, %reason, "lease lost");
                    }
                } else if owned[lease] < self.nodes.quorum() {
                    undecided = true;
                }
            }
        }
        if undecided {
            // A node is still away; ask again soon (the leases' validity still bounds it).
            self.verify = Some(Verify {
                due: Instant::now() + REVERIFY_RETRY,
                ..verify
            });
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

    /// Expires leases past their validity, then renews every lease that is due (and those due
    /// soon, so they stay batched) in one call per chunk.
    async fn tick(&mut self) {
        self.leases.retain(|t| t.lease.is_held());
        self.expire_invalid();
        let now = Instant::now();
        if !self
            .leases
            .iter()
            .any(|t| t.lease.renew && t.due_at() <= now)
        {
            return;
        }
        let (mut batch, rest): (Vec<Tracked>, Vec<Tracked>) =
            std::mem::take(&mut self.leases).into_iter().partition(|t| {
                t.lease.renew && t.due_at() <= now + renewal_interval(t.lease.ttl()) / 2
            });
        self.leases = rest;
        for chunk in batch.chunks_mut(MAX_BATCH) {
            self.renew(chunk).await;
        }
        self.leases.append(&mut batch);
        self.expire_invalid();
    }

    async fn renew(&self, chunk: &mut [Tracked]) {
        let ttls: Vec<Duration> = chunk.iter().map(|t| t.lease.ttl()).collect();
        let slots: Vec<&str> = chunk.iter().map(|t| slot_of(&t.lease.keys)).collect();
        let extend = |leases: &[usize]| {
            let mut call = scripts::EXTEND.prepare_invoke();
            for &i in leases {
                let lease = &chunk[i].lease;
                scripts::add_extend(
                    &mut call,
                    &lease.keys,
                    &lease.token,
                    ttls[i],
                    lease.grant_check(),
                );
            }
            call
        };
        // Give up on this try by the time the first lease would become invalid, so the loss is
        // reported on time even while Redis is frozen.
        let sent_at = Instant::now();
        let first_end = chunk
            .iter()
            .map(|t| t.lease.valid_until())
            .min()
            .unwrap_or(sent_at);
        let until_first_end = first_end.saturating_duration_since(sent_at);
        let leases = chunk.len();
        let mut link = None;
        let replies = if self.guarded {
            // The extend and its WAIT on one link of their own (replica guards are single-node).
            let node = self.nodes.first();
            let timeout = node.command_timeout().min(until_first_end);
            let all: Vec<usize> = (0..chunk.len()).collect();
            // Opening a link is bounded by the lease's validity too.
            let opening = tokio::time::timeout(
                until_first_end.max(Duration::from_millis(1)),
                node.replica_link(),
            );
            let reply = match opening.await.unwrap_or_else(|_| {
                Err(crate::error::Error::Unavailable {
                    node: node.name().to_owned(),
                    reason: "no replica link before the lease ran out".into(),
                })
            }) {
                Ok(opened) => {
                    link.insert(opened)
                        .eval::<Vec<i64>>(&extend(&all), timeout)
                        .await
                }
                Err(e) => Err(e),
            };
            vec![Some(reply.map(|results| {
                results.into_iter().map(|r| r == 1).collect()
            }))]
        } else {
            let (slots, extend) = (&slots, &extend);
            self.nodes
                .decide(leases, |node| {
                    let timeout = node.command_timeout().min(until_first_end);
                    async move {
                        let results = eval_per_slot(node, slots, timeout, extend).await?;
                        Ok(results.into_iter().map(|result| result == 1).collect())
                    }
                })
                .await
        };
        // Per lease: how many nodes extended it, and how many no longer hold it.
        let Counted {
            yes: mut extended,
            no: gone,
            mut errors,
        } = self.count(replies, chunk.len(), "extend");
        if let Some(link) = link.as_mut() {
            self.check_replicas(link, chunk, first_end, &mut extended, &mut errors)
                .await;
        }
        let quorum = self.nodes.quorum();
        let retry_at = Instant::now() + retry_delay(chunk);
        for (lease, (tracked, ttl)) in chunk.iter_mut().zip(ttls).enumerate() {
            if extended[lease] >= quorum {
                tracked.lease.extended(sent_at, ttl);
                tracked.retry_at = None;
                tracked.last_error = None;
                tracked.lease.set_renewal_failing(false);
            } else if gone[lease] > self.nodes.len() - quorum {
                if tracked.lease.finish(LeaseStatus::Lost(LossReason::KeyGone)) {
                    tracing::warn!(lock = %tracked.lease.keys.lock, "lease lost: key gone");
                }
            } else {
                let error = errors.join("; ");
                tracing::debug!(%error, "renewal failed; will retry");
                tracked.retry_at = Some(retry_at);
                tracked.last_error = Some(error);
                tracked.lease.set_renewal_failing(true);
            }
        }
    }

    /// The replica guard on renewal (single node only): one `WAIT` for the strictest guard in
    /// the chunk; a lease whose guard asks for more replicas than acknowledged does not count
    /// as renewed this tick.
    async fn check_replicas(
        &self,
        link: &mut ReplicaLink,
        chunk: &[Tracked],
        first_end: Instant,
        extended: &mut [usize],
        errors: &mut Vec<String>,
    ) {
        let strictest = chunk
            .iter()
            .filter_map(|t| t.lease.min_replicas)
            .max_by_key(|guard| (guard.replicas, guard.timeout));
        let Some(guard) = strictest else { return };
        // A WAIT past the first lease's validity could not save it, and would delay its loss
        // report: give up then.
        let waiting = tokio::time::timeout_at(first_end, link.wait_for_replicas(&guard));
        let acked = match waiting.await {
            Ok(Ok(acked)) => acked,
            Ok(Err(e)) => {
                errors.push(format!("WAIT for replicas failed: {e}"));
                0
            }
            Err(_) => {
                errors.push("no replica acknowledged the renewal before the lease ran out".into());
                0
            }
        };
        for (tracked, count) in chunk.iter().zip(extended.iter_mut()) {
            if let Some(required) = tracked.lease.min_replicas {
                if acked < required.replicas && *count > 0 {
                    *count = 0;
                    errors.push(format!(
                        "only {acked} of {} replicas acknowledged the renewal",
                        required.replicas
                    ));
                }
            }
        }
    }

    /// Declares every lease whose validity has ended lost.
    fn expire_invalid(&mut self) {
        let now = Instant::now();
        self.leases.retain(|tracked| {
            if tracked.lease.valid_until() > now {
                return tracked.lease.is_held();
            }
            let suspended = tracked.lease.lost_to_suspension(now);
            let reason = match (&tracked.lease.renew, &tracked.last_error) {
                (_, _) if suspended.is_some() => LossReason::Unreachable(format!(
                    "the host was suspended for {} and the lease ran out meanwhile",
                    crate::error::humanize(suspended.unwrap_or_default())
                )),
                (false, _) => LossReason::Expired,
                (true, Some(error)) => LossReason::Unreachable(error.clone()),
                (true, None) => LossReason::Unreachable("renewal did not complete in time".into()),
            };
            if tracked.lease.finish(LeaseStatus::Lost(reason.clone())) {
                tracing::warn!(lock = %tracked.lease.keys.lock, %reason, "lease lost");
            }
            false
        });
    }
}

/// Compare-and-deletes queued locks, a chunk per call. Failures are logged, not retried:
/// such a lock expires with its TTL.
async fn release(nodes: &Nodes, releases: Vec<(Arc<LockKeys>, Token)>) {
    for chunk in releases.chunks(MAX_BATCH) {
        let slots: Vec<&str> = chunk.iter().map(|(keys, _)| slot_of(keys)).collect();
        let release = |locks: &[usize]| {
            let mut call = scripts::RELEASE.prepare_invoke();
            for &i in locks {
                scripts::add_release(&mut call, &chunk[i].0, &chunk[i].1);
            }
            call
        };
        let outcomes = nodes
            .all(|node| eval_per_slot(node, &slots, node.command_timeout(), &release))
            .await;
        for (index, outcome) in outcomes.into_iter().enumerate() {
            if let Err(error) = outcome {
                tracing::warn!(
                    node = nodes.name(index),
                    %error,
                    locks = chunk.len(),
                    "background release failed; the locks expire with their TTL"
                );
            }
        }
    }
}

/// Pause before retrying a failed renewal: a quarter interval of the shortest lease in the
/// chunk, within 10-250 ms, so a short lease still gets several tries before it runs out.
fn retry_delay(chunk: &[Tracked]) -> Duration {
    let shortest = chunk
        .iter()
        .map(|t| renewal_interval(t.lease.ttl()))
        .min()
        .unwrap_or(Duration::from_secs(1));
    (shortest / 4).clamp(Duration::from_millis(10), Duration::from_millis(250))
}

/// What decides a lock's cluster slot: its hash tag, else its whole name (companion keys
/// follow it). Locks with equal slot parts surely share a slot.
fn slot_of(keys: &LockKeys) -> &str {
    crate::key::hash_tag(&keys.lock).unwrap_or(&keys.lock)
}

/// Runs a per-lock batch script for locks `0..slots.len()` on `node`: one call, or on a Redis
/// Cluster one call per slot (all at once, so still one round trip), where a script's keys must
/// share a slot. `build` makes the call for a set of lock indices; results come back in order.
async fn eval_per_slot<'s>(
    node: &crate::node::Node,
    slots: &[&str],
    timeout: Duration,
    build: &impl Fn(&[usize]) -> redis::ScriptInvocation<'s>,
) -> crate::error::Result<Vec<i64>> {
    let all: Vec<usize> = (0..slots.len()).collect();
    if !node.is_cluster() {
        return node.eval(&build(&all), timeout).await;
    }
    let mut groups: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
    for (i, slot) in slots.iter().enumerate() {
        groups.entry(slot).or_default().push(i);
    }
    let calls: Vec<_> = groups.values().map(|locks| build(locks)).collect();
    let replies = futures_util::future::join_all(
        calls
            .iter()
            .map(|call| node.eval::<Vec<i64>>(call, timeout)),
    )
    .await;
    let mut results = vec![0; slots.len()];
    for (locks, reply) in groups.values().zip(replies) {
        for (&i, result) in locks.iter().zip(reply?) {
            results[i] = result;
        }
    }
    Ok(results)
}

/// Whether each lease's key still holds its token on `node`: one `MGET`, or on a Redis Cluster
/// one per slot (all at once), where a multi-key command must stay in one slot.
async fn owned_per_slot(
    node: &crate::node::Node,
    leases: &[Tracked],
    slots: &[&str],
    timeout: Duration,
) -> crate::error::Result<Vec<bool>> {
    if node.is_sentinel() {
        // A demoted master still answers reads, from data the new master may not have: only
        // a master's answer counts. A replica's sends us after the failover and retries.
        let role: Vec<redis::Value> = node.query_within(&redis::cmd("ROLE"), timeout).await?;
        if role.first().and_then(crate::holder::text).as_deref() != Some("master") {
            node.follow_failover();
            return Err(crate::error::Error::Unavailable {
                node: node.name().to_owned(),
                reason: "a replica answered: a failover is under way".into(),
            });
        }
    }
    let mut groups: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
    for (i, slot) in slots.iter().enumerate() {
        let group = if node.is_cluster() { slot } else { "" };
        groups.entry(group).or_default().push(i);
    }
    let calls: Vec<redis::Cmd> = groups
        .values()
        .map(|indices| {
            let mut mget = redis::cmd("MGET");
            for &i in indices {
                mget.arg(&leases[i].lease.keys.lock);
            }
            mget
        })
        .collect();
    let replies = futures_util::future::join_all(
        calls
            .iter()
            .map(|cmd| node.query_within::<Vec<Option<String>>>(cmd, timeout)),
    )
    .await;
    let mut owned = vec![false; leases.len()];
    for (indices, reply) in groups.values().zip(replies) {
        for (&i, value) in indices.iter().zip(reply?) {
            owned[i] = value.as_deref() == Some(leases[i].lease.token.as_str());
        }
    }
    Ok(owned)
}

/// Whole milliseconds for `PX`/`PEXPIRE`, never 0 (which Redis rejects).
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}
