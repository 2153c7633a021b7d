//! Renewal: every due lease (and those due soon, so they stay in step) in one batched call per
//! node; loss when a majority no longer holds a lease or its validity ends first.

use std::time::Duration;

use tokio::time::Instant;

use super::batch::{self, MAX_BATCH};
use super::{Task, Tracked};
use crate::connection::node::{Node, ReplicaLink, SlotMap};
use crate::connection::quorum::{BatchTally, Verdict};
use crate::engine::lease::{renewal_interval, LeaseStatus, LossReason};
use crate::error::{Error, Result};

/// How long a lease due for renewal waits while an `extend` of it is in flight.
const EXTEND_PAUSE: Duration = Duration::from_millis(50);

impl Task {
    /// Expires leases past their validity, then renews every lease that is due (and those due
    /// soon, so they stay batched) in one call per chunk.
    pub(super) async fn tick(&mut self) {
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
        let (due, rest): (Vec<Tracked>, Vec<Tracked>) =
            std::mem::take(&mut self.leases).into_iter().partition(|t| {
                t.lease.renew && t.due_at() <= now + renewal_interval(t.lease.ttl()) / 2
            });
        self.leases = rest;
        // A lease whose expiry an `extend` is changing sits this round out (see
        // `Lease::expiry_change`) and is looked at again shortly; the extend also wakes the
        // task when it is done.
        let mut alone = Vec::with_capacity(due.len());
        let mut batch = Vec::with_capacity(due.len());
        for mut tracked in due {
            match tracked.lease.expiry_change.clone().try_lock_owned() {
                Ok(guard) => {
                    alone.push(guard);
                    batch.push(tracked);
                }
                Err(_) => {
                    tracked.retry_at = Some(now + EXTEND_PAUSE);
                    self.leases.push(tracked);
                }
            }
        }
        if self.guarded && self.nodes.first().is_cluster() {
            self.renew_by_slot(&mut batch, alone).await;
        } else {
            let mut alone = alone.into_iter();
            for chunk in batch.chunks_mut(MAX_BATCH) {
                let guards = alone.by_ref().take(chunk.len()).collect();
                self.renew(chunk, guards, None, None).await;
            }
        }
        self.leases.append(&mut batch);
        self.expire_invalid();
    }

    /// Guarded leases on a Cluster: each slot's leases are renewed, and their `WAIT` made, on a
    /// link to that slot's master, by one slot map asked for once per tick. The masters are
    /// served at once, each one's slots in turn on its pooled link (a tick costs a link per
    /// master, not per slot); a `WAIT` is cut short when the first lease of the whole tick would
    /// run out, so a master whose replicas stall never holds up another master's leases past
    /// their validity. `alone` are the leases' `expiry_change` guards, in `batch`'s order.
    async fn renew_by_slot(
        &self,
        batch: &mut Vec<Tracked>,
        alone: Vec<tokio::sync::OwnedMutexGuard<()>>,
    ) {
        let node = self.nodes.first();
        let map = node.slot_map(None).await.map_err(|e| e.to_string());
        let master = |tracked: &Tracked| match &map {
            Ok(map) => map.master_of(tracked.lease.ops.slot()).ok(),
            Err(_) => None,
        };
        let mut paired: Vec<_> = std::mem::take(batch)
            .into_iter()
            .zip(alone)
            .map(|(tracked, guard)| (master(&tracked), tracked, guard))
            .collect();
        paired.sort_by(|a, b| (&a.0, a.1.lease.ops.slot()).cmp(&(&b.0, b.1.lease.ops.slot())));
        let mut masters = Vec::new();
        let mut alone = Vec::with_capacity(paired.len());
        for (master, tracked, guard) in paired {
            masters.push(master);
            batch.push(tracked);
            alone.push(guard);
        }
        let tick_end = batch.iter().map(|t| t.lease.valid_until()).min();
        let mut alone = alone.into_iter();
        let mut lanes = Vec::new();
        let mut rest: &mut [Tracked] = batch;
        let mut start = 0;
        while !rest.is_empty() {
            let same = masters[start..]
                .iter()
                .take_while(|m| **m == masters[start])
                .count();
            let (lane, after) = std::mem::take(&mut rest).split_at_mut(same);
            rest = after;
            start += same;
            let mut parts = Vec::new();
            for slot in lane.chunk_by_mut(|a, b| a.lease.ops.slot() == b.lease.ops.slot()) {
                for chunk in slot.chunks_mut(MAX_BATCH) {
                    let guards: Vec<_> = alone.by_ref().take(chunk.len()).collect();
                    parts.push((chunk, guards));
                }
            }
            let map = &map;
            lanes.push(async move {
                for (chunk, guards) in parts {
                    self.renew(chunk, guards, Some(map), tick_end).await;
                }
            });
        }
        futures_util::future::join_all(lanes).await;
    }

    /// Renews `chunk`, whose leases' `expiry_change` guards are `alone`: they are let go once
    /// the renewal is answered, before any replica check (whose `WAIT` may last the guard's
    /// whole timeout, and must not hold up an extend).
    /// On a Cluster, `map` is the tick's slot map (or why there is none), and a replica check
    /// ends by `wait_until` at the latest.
    async fn renew(
        &self,
        chunk: &mut [Tracked],
        alone: Vec<tokio::sync::OwnedMutexGuard<()>>,
        map: Option<&std::result::Result<SlotMap, String>>,
        wait_until: Option<Instant>,
    ) {
        let ttls: Vec<Duration> = chunk.iter().map(|t| t.lease.ttl()).collect();
        let quorums: Vec<usize> = chunk.iter().map(|t| t.lease.quorum).collect();
        // Give up on this try by the time the first lease would become invalid, so the loss is
        // reported on time even while Redis is frozen.
        let sent_at = Instant::now();
        let first_end = chunk
            .iter()
            .map(|t| t.lease.valid_until())
            .min()
            .unwrap_or(sent_at);
        let until_first_end = first_end.saturating_duration_since(sent_at);
        let mut link = None;
        let replies = if self.guarded {
            let node = self.nodes.first();
            let reply = renew_on_link(node, map, chunk, &ttls, until_first_end, &mut link).await;
            vec![Some(reply)]
        } else {
            let (leases, ttls) = (&*chunk, &ttls);
            self.nodes
                .decide(&quorums, |node| {
                    let timeout = node.command_timeout().min(until_first_end);
                    batch::run(
                        node,
                        leases.len(),
                        timeout,
                        |i| leases[i].lease.ops.renew_script(),
                        |i| leases[i].lease.ops.slot(),
                        |i, call| leases[i].lease.ops.add_renew(call, ttls[i]),
                    )
                })
                .await
        };
        crate::telemetry::renewal(sent_at.elapsed());
        drop(alone);
        let mut tally = BatchTally::of(replies, chunk.len(), &self.nodes);
        if let Some(link) = link.as_mut() {
            let wait_end = wait_until.map_or(first_end, |end| end.min(first_end));
            check_replicas(link, chunk, wait_end, &mut tally).await;
        }
        self.record(chunk, &tally, sent_at, &ttls);
    }

    /// Records each lease's renewal outcome: renewed (from `sent_at`), lost, or to retry.
    fn record(
        &self,
        chunk: &mut [Tracked],
        tally: &BatchTally,
        sent_at: Instant,
        ttls: &[Duration],
    ) {
        let retry_at = Instant::now() + retry_delay(chunk);
        for (lease, (tracked, &ttl)) in chunk.iter_mut().zip(ttls).enumerate() {
            match tally.verdict(lease, &self.nodes, tracked.lease.quorum) {
                Verdict::Agreed => {
                    tracked.lease.extended(sent_at, ttl);
                    tracked.retry_at = None;
                    tracked.last_error = None;
                    tracked.lease.set_renewal_failing(false);
                }
                Verdict::Refused => {
                    if tracked.lease.finish(LeaseStatus::Lost(LossReason::KeyGone)) {
                        tracing::warn!(lock = %tracked.lease.name(), "lease lost: key gone");
                    }
                }
                Verdict::Undecided => {
                    let error = tally.describe_errors(&self.nodes);
                    tracing::debug!(%error, "renewal failed; will retry");
                    tracked.retry_at = Some(retry_at);
                    tracked.last_error = Some(error);
                    tracked.lease.set_renewal_failing(true);
                }
            }
        }
    }

    /// Declares every lease whose validity has ended lost.
    pub(super) fn expire_invalid(&mut self) {
        let now = Instant::now();
        self.leases.retain(|tracked| {
            if tracked.lease.valid_until() > now {
                return tracked.lease.is_held();
            }
            let suspended = tracked.lease.lost_to_suspension(now);
            let reason = match (&tracked.lease.renew, &tracked.last_error) {
                (_, _) if suspended.is_some() => LossReason::Unreachable(format!(
                    "the host was suspended for {} and the lease ran out meanwhile",
                    crate::units::humanize(suspended.unwrap_or_default())
                )),
                (false, _) => LossReason::Expired,
                (true, Some(error)) => LossReason::Unreachable(error.clone()),
                (true, None) => LossReason::Unreachable("renewal did not complete in time".into()),
            };
            if tracked.lease.finish(LeaseStatus::Lost(reason.clone())) {
                tracing::warn!(lock = %tracked.lease.name(), %reason, "lease lost");
            }
            false
        });
    }
}

/// A guarded renewal: the extend and its `WAIT` on one link of their own (replica guards are
/// single-node, or per slot on a Cluster: `chunk` is then one slot's); opening the link is
/// bounded by the first lease's validity too.
async fn renew_on_link(
    node: &Node,
    map: Option<&std::result::Result<SlotMap, String>>,
    chunk: &[Tracked],
    ttls: &[Duration],
    until_first_end: Duration,
    link: &mut Option<ReplicaLink>,
) -> Result<Vec<bool>> {
    let timeout = node.command_timeout().min(until_first_end);
    let opening = tokio::time::timeout(until_first_end.max(Duration::from_millis(1)), async {
        let slot = chunk.first().map_or("", |t| t.lease.ops.slot());
        match map {
            None => node.replica_link(slot).await,
            Some(Ok(map)) => node.replica_link_by(Some(map), slot).await,
            Some(Err(why)) => Err(Error::Unavailable {
                node: node.name().to_owned(),
                reason: format!("no slot map: {why}"),
            }),
        }
    });
    let opened = opening.await.unwrap_or_else(|_| {
        Err(Error::Unavailable {
            node: node.name().to_owned(),
            reason: "no replica link before the lease ran out".into(),
        })
    })?;
    let link = link.insert(opened);
    // Leases with a replica guard are single-node (or one slot's) leases, one script at a
    // time: one call per script keeps the link's single request in flight.
    let mut answers = vec![false; chunk.len()];
    let mut by_script: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
    for (i, tracked) in chunk.iter().enumerate() {
        by_script
            .entry(tracked.lease.ops.renew_script().get_hash())
            .or_default()
            .push(i);
    }
    for members in by_script.values() {
        let mut call = chunk[members[0]].lease.ops.renew_script().prepare_invoke();
        for &i in members {
            chunk[i].lease.ops.add_renew(&mut call, ttls[i]);
        }
        let results: Vec<i64> = link.eval(&call, timeout).await?;
        if results.len() != members.len() {
            return Err(Error::Internal(format!(
                "{}: a renewal answered {} times for {} leases",
                node.name(),
                results.len(),
                members.len()
            )));
        }
        for (&i, result) in members.iter().zip(results) {
            answers[i] = result == 1;
        }
    }
    Ok(answers)
}

/// The replica guard on renewal (one Redis, or one Cluster slot's master): one `WAIT` for the
/// strictest guard in the chunk, given up at `first_end`; a lease whose guard asks for more
/// replicas than acknowledged does not count as renewed this tick.
async fn check_replicas(
    link: &mut ReplicaLink,
    chunk: &[Tracked],
    first_end: Instant,
    tally: &mut BatchTally,
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
            tally.errors.push((0, e));
            0
        }
        Err(_) => {
            tally.errors.push((
                0,
                Error::Unavailable {
                    node: link.name().to_owned(),
                    reason: "no replica acknowledged the renewal before the lease ran out".into(),
                },
            ));
            0
        }
    };
    for (tracked, count) in chunk.iter().zip(tally.yes.iter_mut()) {
        if let Some(required) = tracked.lease.min_replicas {
            if acked < required.replicas && *count > 0 {
                *count = 0;
                tally.errors.push((
                    0,
                    Error::Unavailable {
                        node: link.name().to_owned(),
                        reason: format!(
                            "only {acked} of {} replicas acknowledged the renewal",
                            required.replicas
                        ),
                    },
                ));
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
