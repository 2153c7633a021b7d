//! Finishing a grant a majority made: its fencing token (a re-entry of the grant a majority
//! holds, a proposal every granting node stored, or the largest written back), the replica
//! guard, the validity check, and the undo of the attempt's strays elsewhere.

use tokio::time::Instant;

use super::answers::Answers;
use super::{Acquire, Grant};
use crate::connection::node::ReplicaLink;
use crate::engine::lease::validity;
use crate::engine::pending::{roll_back, Pending};
use crate::engine::Core;
use crate::error::{Error, Result};
use crate::token::Token;
use crate::units::humanize;

/// A majority granted: what finishing the grant needs.
pub(super) struct Granted<'a> {
    pub core: &'a Core,
    pub pending: &'a Pending,
    pub token: &'a Token,
    pub sent_at: Instant,
    /// How many nodes must grant (and confirm the fence write-back).
    pub quorum: usize,
    /// The grant carries the client's proposed fencing token, already stored by every
    /// granting node: no write-back.
    pub fenced: bool,
}

impl Granted<'_> {
    /// Completes the grant (fencing, replica guard, validity) and makes the guard; `None` when
    /// it completed too late. A failure rolls the grant back before it returns.
    pub async fn finish<A: Acquire>(
        self,
        primitive: &A,
        answers: &Answers,
        link: Option<&mut ReplicaLink>,
    ) -> Result<Option<A::Guard>> {
        let nodes = self.core.nodes();
        let rejoined = (!nodes.is_single())
            .then(|| rejoined(answers, self.quorum))
            .flatten();
        let completed = match self.undecided(answers, rejoined) {
            Some(error) => Err(error),
            None => {
                self.complete(primitive, &answers.grants, rejoined, link)
                    .await
            }
        };
        let (fencing_token, holding) = match completed {
            Ok(Some(completed)) => completed,
            Ok(None) => return Ok(None),
            Err(error) => {
                roll_back(self.core, self.pending, self.token.clone()).await;
                return Err(error);
            }
        };
        if !nodes.is_single() {
            self.core.saw_fence(fencing_token);
            self.undo_strays(primitive, fencing_token, &holding);
        }
        let guard = primitive.granted(Grant {
            token: self.token.clone(),
            fencing_token,
            sent_at: self.sent_at,
            fresh: rejoined.is_none() && answers.grants.iter().any(|g| g.2),
        });
        self.pending.settled();
        Ok(Some(guard))
    }

    /// Redlock, for a primitive whose writes outside the grant are strays
    /// ([`Acquire::undo_stray`]): undoes this attempt on every node not known to hold the
    /// grant, quietly and in the background (a write still in flight lands before the undo:
    /// one connection per node keeps them in order).
    fn undo_strays<A: Acquire>(&self, primitive: &A, fence: u64, holding: &[usize]) {
        let Some(undo) = primitive.undo_stray(self.token, fence) else {
            return;
        };
        let others: Vec<usize> = (0..self.core.nodes().len())
            .filter(|node| !holding.contains(node))
            .collect();
        if !others.is_empty() {
            self.core.watchdog().release_in_background_on(undo, others);
        }
    }

    /// Finishes a grant from a majority: the largest token of the granting nodes (on one node,
    /// its token; on Redlock with a proposal, the proposal, which every granting node already
    /// stored; otherwise written back to the granting nodes, see
    /// [`crate::connection::quorum`]); then the replica guard; and only if the lease is still
    /// valid afterwards (`ttl − elapsed − drift > 0`). A re-entry of a grant a majority holds
    /// keeps that grant's token ([`rejoined`]). Returns the fencing token and the nodes that
    /// hold the grant; `None`: too late.
    async fn complete<A: Acquire>(
        &self,
        primitive: &A,
        grants: &[(usize, u64, bool)],
        rejoined: Option<u64>,
        link: Option<&mut ReplicaLink>,
    ) -> Result<Option<(u64, Vec<usize>)>> {
        let nodes = self.core.nodes();
        let fencing_token = rejoined.unwrap_or_else(|| fresh_token(grants, nodes.is_single()));
        let mut holding: Vec<usize> = grants
            .iter()
            .filter(|(_, fence, _)| rejoined.is_none_or(|joined| *fence == joined))
            .map(|(index, _, _)| *index)
            .collect();
        // A proposal is the token of every fresh grant; a node that answered with an earlier
        // grant (a reentrant owner's, not rejoined) needs the write-back all the same.
        let proposed = self.fenced && grants.iter().all(|(_, _, fresh)| *fresh);
        if !nodes.is_single() && !proposed && rejoined.is_none() {
            holding = self.write_back(primitive, grants, fencing_token).await;
            if holding.len() < self.quorum {
                return Ok(None);
            }
        }
        if let Some(guard) = &primitive.options().min_replicas {
            // The replica guard: the grant counts only once enough replicas have it. If they
            // do not, our caller's rollback releases it.
            let link = link.ok_or_else(|| {
                Error::Internal("a guarded grant was made without its replica link".into())
            })?;
            let acked = link.wait_for_replicas(guard).await?;
            if acked < guard.replicas {
                return Err(Error::Unavailable {
                    node: link.name().to_owned(),
                    reason: format!(
                        "only {acked} of {} replicas acknowledged the grant within {}; released it",
                        guard.replicas,
                        humanize(guard.timeout)
                    ),
                });
            }
        }
        let still_valid = Instant::now() < self.sent_at + validity(primitive.options().ttl);
        Ok(still_valid.then_some((fencing_token, holding)))
    }
}

impl Granted<'_> {
    /// Redlock: an error when the nodes that failed could have made a majority of the grant
    /// some nodes answered as a re-entry of (a reentrant owner's). Granting afresh would then
    /// replace a grant a majority may still hold over a passing failure, and end its lease;
    /// the caller retries instead.
    fn undecided(&self, answers: &Answers, rejoined: Option<u64>) -> Option<Error> {
        if rejoined.is_some() || answers.failures.is_empty() {
            return None;
        }
        let (_, most) = answers.most_rejoined()?;
        if most + answers.failures.len() < self.quorum {
            return None;
        }
        let (index, failure) = &answers.failures[0];
        Some(Error::Unavailable {
            node: self.core.nodes().name(*index).to_owned(),
            reason: format!(
                "a re-entry could not tell whether a majority still holds the owner's grant \
                 ({failure}); retry"
            ),
        })
    }

    /// Redlock's fencing write-back of `fencing_token` to the granting nodes; returns those
    /// that confirmed (the grant holds there).
    async fn write_back<A: Acquire>(
        &self,
        primitive: &A,
        grants: &[(usize, u64, bool)],
        fencing_token: u64,
    ) -> Vec<usize> {
        if grants.iter().any(|&(_, _, fresh)| !fresh) {
            // The write-back replaces an earlier grant where nodes answered with it, whether
            // or not this attempt then succeeds: that grant's lease is over.
            primitive.replacing_earlier_grant();
        }
        let nodes = self.core.nodes();
        let call = primitive.raise_fence(self.token, fencing_token);
        let written = futures_util::future::join_all(grants.iter().map(|(index, _, _)| {
            let node = nodes.get(*index);
            node.eval::<i64>(&call, node.command_timeout())
        }))
        .await;
        grants
            .iter()
            .zip(&written)
            .filter(|(_, written)| matches!(written, Ok(1)))
            .map(|((index, _, _), _)| *index)
            .collect()
    }
}

/// The token of a grant that is not a re-entry: on one node, its answer; on Redlock, the
/// largest answered, and above every earlier grant some nodes answered with (a reentrant
/// owner's, replaced by this one): reusing one would give two grants one token.
fn fresh_token(grants: &[(usize, u64, bool)], single: bool) -> u64 {
    if single {
        return grants.first().map_or(0, |&(_, fence, _)| fence);
    }
    grants
        .iter()
        .map(|&(_, fence, fresh)| match fresh {
            true => fence,
            false => fence.saturating_add(1),
        })
        .max()
        .unwrap_or(0)
}

/// Redlock: the fencing token of a grant a majority still holds for this caller, if at least
/// `quorum` nodes answered with that one grant (a reentrant owner's re-entry: not fresh, one
/// fencing token F). The re-entry is then a hold on grant F, whatever the other nodes said (a
/// fresh grant where the owner's key had expired, another F where a late write landed).
///
/// Why that is safe: a node answers "not fresh, F" only while the owner's key there is the one
/// granted with F (a fresh grant to the owner gets a new fencing token, and a rejoined grant's
/// stray holds are undone, never rewritten to F). Any other grant of the lock held a majority
/// at some moment after F was granted; while it did, F was on a minority, and F's nodes only
/// shrink after that. So a majority answering F means nobody else has held the lock since F
/// was granted: F is still the last grant's token, and the hold joins its lease. Anything else
/// is a fresh grant (the largest token, written back), and an earlier lease is lost.
fn rejoined(answers: &Answers, quorum: usize) -> Option<u64> {
    answers
        .most_rejoined()
        .filter(|&(_, count)| count >= quorum)
        .map(|(fence, _)| fence)
}
