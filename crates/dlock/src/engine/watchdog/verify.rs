//! Re-verification after a link event: every held lease is checked at once (read-only), so a
//! lease lost in a restart or failover is reported without waiting for its next renewal.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use super::batch::{self, MAX_BATCH};
use super::{Task, Tracked};
use crate::connection::link::LinkEvent;
use crate::connection::node::Node;
use crate::connection::quorum::{BatchTally, Verdict};
use crate::engine::lease::{LeaseStatus, LossReason};
use crate::engine::ops::Verify as Probe;
use crate::error::{Error, Result};

/// Pause before asking a node that failed a re-verification again.
const REVERIFY_RETRY: Duration = Duration::from_millis(50);

/// A pending re-verification of every held lease.
#[derive(Debug, Clone, Copy)]
pub(super) struct Verify {
    pub due: Instant,
    /// A connection dropped since the last complete check: a key found gone was lost in a
    /// restart or failover.
    after_drop: bool,
}

impl Task {
    /// A node's connection dropped, came back, or was first seen: every held lease is
    /// re-verified now (a read-only ownership check, retried on failure until each lease's
    /// validity ends). A key found gone after a drop was lost in a restart or failover.
    pub(super) fn link_changed(&mut self, event: LinkEvent) {
        tracing::debug!(?event, leases = self.leases.len(), "re-verifying leases");
        let dropped = !matches!(event, LinkEvent::Started(_));
        self.verify = Some(Verify {
            due: Instant::now(),
            after_drop: dropped || self.verify.is_some_and(|v| v.after_drop),
        });
    }

    /// Checks that every held lease is still ours (the primitives' verify scripts; nothing is
    /// written, so it never races an `extend`). A lease a majority no longer holds is lost;
    /// nodes that fail are asked again shortly.
    pub(super) async fn reverify(&mut self) {
        let Some(verify) = self.verify.take() else {
            return;
        };
        self.leases.retain(|t| t.lease.is_held());
        let mut undecided = false;
        for chunk in self.leases.chunks(MAX_BATCH) {
            let quorums: Vec<usize> = chunk.iter().map(|t| t.lease.quorum).collect();
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
                .decide(&quorums, |node| {
                    let timeout = node.command_timeout().min(until_first_end);
                    owned(node, chunk, timeout)
                })
                .await;
            let tally = BatchTally::of(replies, chunk.len(), &self.nodes);
            if !tally.errors.is_empty() {
                let errors = tally.describe_errors(&self.nodes);
                tracing::debug!(%errors, "re-verification failed; will retry");
            }
            for (lease, tracked) in chunk.iter().enumerate() {
                match tally.verdict(lease, &self.nodes, quorums[lease]) {
                    Verdict::Refused => {
                        let reason = if verify.after_drop {
                            LossReason::KeyGoneAfterReconnect
                        } else {
                            LossReason::KeyGone
                        };
                        if tracked.lease.finish(LeaseStatus::Lost(reason.clone())) {
                            tracing::warn!(lock = %tracked.lease.name(), %reason, "lease lost");
                        }
                    }
                    Verdict::Undecided => undecided = true,
                    Verdict::Agreed => {}
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
}

/// Whether each lease is still ours on `node`: the leases' key reads in one `MGET` (per slot
/// on a Cluster) and their scripts in one batch, all at once.
async fn owned(node: &Node, leases: &[Tracked], timeout: Duration) -> Result<Vec<bool>> {
    if node.is_sentinel() {
        // A demoted master still answers reads, from data the new master may not have: only
        // a master's answer counts. A replica's sends us after the failover and retries.
        let role: Vec<redis::Value> = node.query_within(&redis::cmd("ROLE"), timeout).await?;
        if role.first().and_then(crate::holder::text).as_deref() != Some("master") {
            node.follow_failover();
            return Err(Error::Unavailable {
                node: node.name().to_owned(),
                reason: "a replica answered: a failover is under way".into(),
            });
        }
    }
    let probes: Vec<Probe<'_>> = leases.iter().map(|t| t.lease.ops.verify()).collect();
    let (reads, scripted): (Vec<usize>, Vec<usize>) =
        (0..leases.len()).partition(|&i| matches!(probes[i], Probe::KeyHolds { .. }));
    let by_script = batch::run(
        node,
        scripted.len(),
        timeout,
        |i| match probes[scripted[i]] {
            Probe::Script(script) => script,
            Probe::KeyHolds { .. } => unreachable!("partitioned above"),
        },
        |i| leases[scripted[i]].lease.ops.slot(),
        |i, call| leases[scripted[i]].lease.ops.add_verify(call),
    );
    let (read, scripted_answers) =
        futures_util::future::join(key_reads(node, leases, &probes, &reads, timeout), by_script)
            .await;
    let mut owned = vec![false; leases.len()];
    for (i, answer) in reads.iter().zip(read?) {
        owned[*i] = answer;
    }
    for (i, answer) in scripted.iter().zip(scripted_answers?) {
        owned[*i] = answer;
    }
    Ok(owned)
}

/// `KeyHolds` probes: one `MGET`, or on a Redis Cluster one per slot (all at once), where a
/// multi-key command must stay in one slot. Answers in the order of `indices`.
async fn key_reads(
    node: &Node,
    leases: &[Tracked],
    probes: &[Probe<'_>],
    indices: &[usize],
    timeout: Duration,
) -> Result<Vec<bool>> {
    let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (position, &i) in indices.iter().enumerate() {
        let group = if node.is_cluster() {
            leases[i].lease.ops.slot()
        } else {
            ""
        };
        groups.entry(group).or_default().push(position);
    }
    let key_and_value = |position: usize| match probes[indices[position]] {
        Probe::KeyHolds { key, value } => (key, value),
        Probe::Script(_) => unreachable!("only key reads are grouped here"),
    };
    let calls: Vec<redis::Cmd> = groups
        .values()
        .map(|positions| {
            let mut mget = redis::cmd("MGET");
            for &position in positions {
                mget.arg(key_and_value(position).0);
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
    let mut owned = vec![false; indices.len()];
    for (positions, reply) in groups.values().zip(replies) {
        for (&position, value) in positions.iter().zip(reply?) {
            owned[position] = value.as_deref() == Some(key_and_value(position).1);
        }
    }
    Ok(owned)
}
