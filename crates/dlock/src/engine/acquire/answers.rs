//! What the nodes answered one acquisition attempt, sorted: grants, the busy answer a waiter
//! goes by, who refused (busy, or a proposal too low) and who failed.

use redis::{ScriptInvocation, Value};

use super::{Acquire, Answer, Busy};
use crate::connection::node::ReplicaLink;
use crate::connection::quorum::{Nodes, Vote};
use crate::error::{Error, Result};

/// What the nodes answered, sorted.
#[derive(Default)]
pub(super) struct Answers {
    /// (node, fencing token, whether the grant is fresh).
    pub grants: Vec<(usize, u64, bool)>,
    pub busy: Option<Busy>,
    /// Each busy node, and the holder (its grant's fencing token) it named, if it named one.
    pub busy_holders: Vec<(usize, Option<u64>)>,
    /// Redlock proposals refused as too low: (node, its counter).
    pub lows: Vec<(usize, u64)>,
    pub failures: Vec<(usize, Error)>,
}

impl Answers {
    /// No majority granted, but one could have, had the proposal been higher.
    pub fn too_low(&self, quorum: usize) -> bool {
        !self.lows.is_empty()
            && self.grants.len() < quorum
            && self.grants.len() + self.lows.len() >= quorum
    }

    /// The nodes where this attempt's token may hold a grant: every node but those that
    /// answered it busy or too low (a definite refusal: the script ran and granted nothing).
    pub fn maybe_granted(&self, nodes: usize) -> Vec<usize> {
        let busy = self.busy_holders.iter().map(|(node, _)| *node);
        let refused: Vec<usize> = busy
            .chain(self.lows.iter().map(|(node, _)| *node))
            .collect();
        (0..nodes).filter(|node| !refused.contains(node)).collect()
    }

    /// Whether one holder (by its grant's fencing token) was named by at least `quorum` busy
    /// nodes.
    pub fn held_by_a_majority(&self, quorum: usize) -> bool {
        let holders = &self.busy_holders;
        holders
            .iter()
            .filter_map(|(_, holder)| *holder)
            .any(|fence| holders.iter().filter(|(_, h)| *h == Some(fence)).count() >= quorum)
    }
}

/// The holder a busy node stands for when readers hold it or a queued writer holds it back:
/// one holder, whoever they are.
const SHARED: u64 = u64::MAX;

/// Sends the acquire call to every node (on the replica link, when guarded) and sorts the
/// answers; returns as soon as a majority granted or can no longer grant. On one node, a
/// failure is returned as it is.
pub(super) async fn send<A: Acquire>(
    nodes: &Nodes,
    quorum: usize,
    primitive: &A,
    call: &ScriptInvocation<'static>,
    link: Option<&mut ReplicaLink>,
) -> Result<Answers> {
    let vote = |answer: &Result<Answer>| match answer {
        Ok(Answer::Granted { .. }) => Vote::Yes,
        Ok(Answer::Low { .. }) => Vote::Maybe,
        _ => Vote::No,
    };
    let replies = match link {
        Some(link) => {
            let node = nodes.first();
            let reply = link.eval::<Vec<Value>>(call, node.command_timeout()).await;
            vec![(0, reply.and_then(|r| primitive.parse(r.as_slice())))]
        }
        None => {
            nodes
                .until(
                    quorum,
                    vote,
                    |answers, silent| settled(answers, silent, quorum),
                    |node| async move {
                        let reply = node.eval::<Vec<Value>>(call, node.command_timeout()).await;
                        reply.and_then(|r| primitive.parse(r.as_slice()))
                    },
                )
                .await
        }
    };
    let mut answers = Answers::default();
    for (index, reply) in replies {
        match reply {
            Ok(Answer::Granted { fence, fresh }) => answers.grants.push((index, fence, fresh)),
            Ok(Answer::Low { counter }) => answers.lows.push((index, counter)),
            Ok(Answer::Busy(busy)) => {
                let holder = match busy.shared {
                    true => Some(SHARED),
                    false => busy.conflict.holder.as_ref().map(|h| h.fencing_token),
                };
                answers.busy_holders.push((index, holder));
                if answers.busy.as_ref().is_none_or(|kept| busier(&busy, kept)) {
                    answers.busy = Some(busy);
                }
            }
            Err(e) if nodes.is_single() => return Err(e),
            Err(e) => answers.failures.push((index, e)),
        }
    }
    Ok(answers)
}

/// Whether a majority of grants is enough to decide: always, unless some are re-entries (a
/// reentrant owner's grant, not fresh) that the nodes still silent could yet make a majority
/// of one grant: then the re-entry joins that grant instead of granting afresh and losing
/// it (see `rejoined`), so wait for them (a frozen node then costs its command timeout).
fn settled(answers: &[(usize, Result<Answer>)], silent: usize, quorum: usize) -> bool {
    let rejoining = answers.iter().filter_map(|(_, answer)| match answer {
        Ok(Answer::Granted {
            fence,
            fresh: false,
        }) => Some(*fence),
        _ => None,
    });
    match most_rejoined(rejoining) {
        None => true,
        Some((_, most)) => most >= quorum || most + silent < quorum,
    }
}

/// Of the fencing tokens nodes answered as re-entries (not fresh), the one most of them
/// answered, and how many did.
fn most_rejoined(fences: impl Iterator<Item = u64>) -> Option<(u64, usize)> {
    let fences: Vec<u64> = fences.collect();
    fences
        .iter()
        .map(|&fence| (fence, fences.iter().filter(|&&f| f == fence).count()))
        .max_by_key(|&(_, count)| count)
}

impl Answers {
    /// The grant most nodes answered as a re-entry, and how many did (see `most_rejoined`).
    pub fn most_rejoined(&self) -> Option<(u64, usize)> {
        let rejoining = self.grants.iter().filter(|g| !g.2).map(|g| g.1);
        most_rejoined(rejoining)
    }
}

/// Which busy answer a waiter goes by: one that names the holder, and of those the one whose
/// lease ends first. A waiter sleeps until then at most (no release publishes when a holder
/// dies), and on Redlock a master may name someone else than the majority's holder: another
/// waiter's partial grant, just made and about to be rolled back, whose fresh lease would
/// have kept the waiter asleep past the real holder's end (the chaos suite saw a waiter
/// sleep its whole 2 s re-check after a SIGKILLed holder's lease had ended).
fn busier(new: &Busy, kept: &Busy) -> bool {
    let ends = |b: &Busy| b.conflict.ttl_left.unwrap_or(std::time::Duration::MAX);
    match (
        new.conflict.holder.is_some(),
        kept.conflict.holder.is_some(),
    ) {
        (true, false) => true,
        (false, true) => false,
        _ => ends(new) < ends(kept),
    }
}
