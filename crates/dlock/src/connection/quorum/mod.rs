//! The nodes a client locks on: one Redis, or N independent masters for Redlock.
//!
//! # Redlock
//! An operation is sent to every node concurrently, each call bounded by the per-node
//! (command) timeout, and succeeds when a majority (`N / 2 + 1`) agrees, so one dead or frozen
//! node of three costs at most that timeout and never stops a grant. The lock, renewal and
//! release logic is the same as on one node; the acquisition engine adds the validity check
//! (`ttl − elapsed − drift` must still be positive once the grant is complete) and fencing.
//!
//! # Fencing across nodes
//! On Redlock the client proposes the fencing token: P = its wall clock in microseconds, or
//! one more than the largest token it was granted (on any name) or heard of in this
//! acquisition, whichever is larger. A master grants only if the lock is free there AND P is
//! above its fencing counter; granting stores P as its counter (kept as long as on one node,
//! `FENCE_RETENTION`) and as the holder's fence, in the same script. A master whose counter is
//! at or above P refuses and answers with its counter. The grant's token is P, and it is
//! complete in one round trip: every granting master already holds P when it answers.
//!
//! Why tokens increase. Two grants each need a majority, and two majorities share at least
//! one master. That master stored the earlier grant's P before answering, and it can grant the
//! name again only once the earlier lock key there is gone (released or expired), so only to
//! a proposal above its counter, which is at least P: the later grant's token is larger. A
//! refusal or a rolled-back partial grant writes nothing or only raises counters, which keeps
//! the argument intact (a counter never goes down while it is kept).
//!
//! Low proposals. If no majority granted, but would have with a larger proposal (enough
//! masters refused only for their counters), the partial grant is rolled back as any failed
//! attempt (a fresh owner token per try; the nodes that granted are undone before the retry,
//! every node in the background) and the attempt proposes again at once, above the largest
//! counter it heard of; after a few such tries it reports an error. A counter far ahead on one
//! master (a clock that was ahead once, or set by hand) only costs that master's vote while
//! the others grant: the token is above every granting master's counter, which is all the
//! argument needs; a majority ahead lifts the retry above them all.
//!
//! Limits. A master that lost its counter (a restart without persistence, or a counter idle
//! past its retention) accepts any proposal. If it is the one the two majorities share, the
//! order then rests on the proposers' clocks: a later proposal is larger if its client's clock
//! is not behind the earlier grant's by more than the time between the two grants (as, with
//! masters issuing tokens, it rested on the masters' clocks). So, as before, each master
//! should keep its counter across restarts, or restart later than the largest clock offset
//! between the clients plus a TTL. Tokens are compared as Lua numbers on the masters, exact
//! below 2^53 (wall-clock microseconds stay below that until the year 2255).
//!
//! Primitives that let several hold at once (the semaphore) keep the earlier scheme: each
//! master issues a token from its counter, and the largest is written back (raised to at
//! least) on the granting masters before the grant is returned, a second round trip; the
//! same argument holds with the written-back token in place of P.

use std::future::Future;

use futures_util::stream::StreamExt;

use crate::connection::node::Node;
use crate::error::{Error, NodeFailure, Result};

mod fanout;
mod settle;

use fanout::Fanout;

/// The shortest wait for stragglers. A decision made by a dead master's instant refusal and
/// one quick answer took a single round trip, and on a loaded machine a healthy master's
/// answer can come later than that: a Redlock waiter then heard the holder on one master only,
/// took the lock for a split vote and retried every 10–60 ms while it was held (CI: 5 script
/// calls in 1 s, `redlock_degraded::a_waiter_with_a_dead_master_sleeps_until_woken`).
const MIN_STRAGGLER_GRACE: std::time::Duration = std::time::Duration::from_millis(5);

/// The next reply of `pending`; `None` when none is left, or when `grace_end` (if set)
/// passes first.
async fn next_within<S: futures_util::Stream + Unpin>(
    pending: &mut S,
    grace_end: Option<tokio::time::Instant>,
) -> Option<S::Item> {
    match grace_end {
        None => pending.next().await,
        Some(end) => tokio::time::timeout_at(end, pending.next())
            .await
            .ok()
            .flatten(),
    }
}

/// When a call on every node stops waiting for the nodes still silent once the outcome is
/// decided: as long again as the decision took, and at least [`MIN_STRAGGLER_GRACE`] (never
/// past `left`, the time the caller had from `started`). A silent node (frozen, black-holed)
/// is not waited for, so the call still returns within about twice the deciding nodes' round
/// trip, while the rest of the nodes, usually a few microseconds behind, are heard.
fn straggler_grace(
    started: tokio::time::Instant,
    left: Option<std::time::Duration>,
) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    let grace = now.duration_since(started).max(MIN_STRAGGLER_GRACE);
    now + left.map_or(grace, |left| grace.min(left.saturating_sub(grace)))
}

/// One node or a Redlock quorum.
#[derive(Debug, Clone)]
pub(crate) struct Nodes {
    nodes: Vec<Node>,
}

impl Nodes {
    pub fn single(node: Node) -> Nodes {
        Nodes { nodes: vec![node] }
    }

    /// N independent masters; N must be odd and at least 3.
    pub fn redlock(nodes: Vec<Node>) -> Result<Nodes> {
        check_redlock_size(nodes.len())?;
        Ok(Nodes { nodes })
    }

    pub fn is_single(&self) -> bool {
        self.nodes.len() == 1
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// How many nodes must agree for a lock: a majority.
    pub fn quorum(&self) -> usize {
        self.quorum_for(1)
    }

    /// How many nodes must hold a grant of a primitive that lets up to `holders` hold at once
    /// (1 for a lock, N for a semaphore of N permits): more than `M·N/(N+1)` of the M nodes.
    /// Then N+1 grants, each on that many nodes, would put N+1 holders on some node, which no
    /// node allows; a bare majority only does that for N = 1 (three holders of a 2-permit
    /// semaphore can each sit on a different two of three masters). The price: fewer masters
    /// may be down (for N ≥ 2 on three masters, none).
    pub fn quorum_for(&self, holders: u32) -> usize {
        quorum_for(self.nodes.len(), holders)
    }

    /// The first node: the only one of a single-node client; wake-ups use it for Redlock.
    pub fn first(&self) -> &Node {
        &self.nodes[0]
    }

    /// The node at `index`.
    pub fn get(&self, index: usize) -> &Node {
        &self.nodes[index]
    }

    /// Runs `call` on every node concurrently; results in node order.
    pub async fn all<'a, T, F, Fut>(&'a self, call: F) -> Vec<Result<T>>
    where
        F: Fn(&'a Node) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        futures_util::future::join_all(self.nodes.iter().map(call)).await
    }

    /// Starts `call` on the nodes at `indices`, all at once; their replies arrive tagged with
    /// the node's index, in the order they come.
    fn each<'a, T, F, Fut>(
        &'a self,
        indices: impl IntoIterator<Item = usize>,
        call: F,
    ) -> Fanout<impl Future<Output = (usize, Result<T>)>>
    where
        F: Fn(&'a Node) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        indices
            .into_iter()
            .map(|index| {
                let reply = call(&self.nodes[index]);
                async move { (index, reply.await) }
            })
            .collect()
    }

    /// Runs `call` on every node concurrently and returns as soon as `enough` results are
    /// [`Vote::Yes`] and `settled` (given the results so far and how many nodes are still
    /// silent) agrees, or when that can no longer happen even if every [`Vote::Maybe`] turned
    /// into a yes, after waiting for the nodes still silent then as long again as that took
    /// ([`straggler_grace`]): a refusal's caller learns what every healthy node said (who
    /// holds the lock where, which tells a split vote from a lock held by a majority), while a
    /// frozen node costs little. The rest are abandoned (their requests may still land:
    /// callers release on every node anyway). Results come as (node index, result).
    pub async fn until<'a, T, F, Fut>(
        &'a self,
        enough: usize,
        vote: impl Fn(&Result<T>) -> Vote,
        settled: impl Fn(&[(usize, Result<T>)], usize) -> bool,
        call: F,
    ) -> Vec<(usize, Result<T>)>
    where
        F: Fn(&'a Node) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let started = tokio::time::Instant::now();
        let mut pending = self.each(0..self.len(), call);
        let mut results = Vec::with_capacity(self.nodes.len());
        let (mut yes, mut maybe) = (0, 0);
        let mut grace_end = None;
        loop {
            let next = next_within(&mut pending, grace_end).await;
            let Some((index, result)) = next else { break };
            match vote(&result) {
                Vote::Yes => yes += 1,
                Vote::Maybe => maybe += 1,
                Vote::No => {}
            }
            results.push((index, result));
            if (yes >= enough && settled(&results, pending.len())) || pending.is_empty() {
                break;
            }
            if grace_end.is_none() && yes + maybe + pending.len() < enough {
                grace_end = Some(straggler_grace(started, None));
            }
        }
        results
    }

    /// Runs a batch `call` (one yes/no per lease) on every node concurrently, and returns as
    /// soon as every lease is decided (a majority said yes, or so many said no that a majority
    /// no longer can) or every node answered. A node still silent then is abandoned, so a
    /// black-holed Redlock master never holds up a decision the others already made (its
    /// request may still land; batch calls are idempotent). Replies come in node order
    /// (`None`: abandoned).
    pub async fn decide<'a, F, Fut>(
        &'a self,
        quorums: &[usize],
        call: F,
    ) -> Vec<Option<Result<Vec<bool>>>>
    where
        F: Fn(&'a Node) -> Fut,
        Fut: Future<Output = Result<Vec<bool>>>,
    {
        let mut pending = self.each(0..self.len(), call);
        let mut replies: Vec<Option<Result<Vec<bool>>>> = (0..self.len()).map(|_| None).collect();
        let leases = quorums.len();
        let mut yes = vec![0; leases];
        let mut no = vec![0; leases];
        while let Some((index, reply)) = pending.next().await {
            if let Ok(answers) = &reply {
                for (lease, &answer) in answers.iter().enumerate().take(leases) {
                    if answer {
                        yes[lease] += 1;
                    } else {
                        no[lease] += 1;
                    }
                }
            }
            replies[index] = Some(reply);
            let decided = (0..leases).all(|lease| {
                Verdict::of(yes[lease], no[lease], self.len(), quorums[lease]) != Verdict::Undecided
            });
            if decided {
                break;
            }
        }
        replies
    }

    /// The names of the nodes at these indices (URLs without passwords).
    pub fn name(&self, index: usize) -> &str {
        self.nodes[index].name()
    }
}

/// How one node's answer counts for [`Nodes::until`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Vote {
    Yes,
    /// Not yet a yes, but the caller may turn it into one by asking again (a proposed
    /// fencing token too low for that node): worth hearing the other nodes out.
    Maybe,
    No,
}

/// What a majority decided about one lease (or one request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A majority said yes.
    Agreed,
    /// So many said no that a majority can no longer say yes.
    Refused,
    /// Neither, yet: too many nodes failed or were not asked.
    Undecided,
}

impl Verdict {
    /// The one decision rule for `yes` and `no` answers out of `nodes` nodes, `quorum` of
    /// which must say yes (a majority for a lock, see [`Nodes::quorum_for`]).
    pub fn of(yes: usize, no: usize, nodes: usize, quorum: usize) -> Verdict {
        if yes >= quorum {
            Verdict::Agreed
        } else if no > nodes.saturating_sub(quorum) {
            Verdict::Refused
        } else {
            Verdict::Undecided
        }
    }
}

/// Per-node yes/no answers about one lease, counted, with the failures.
#[derive(Debug)]
pub(crate) struct Tally {
    pub yes: usize,
    pub no: usize,
    pub errors: Vec<(usize, Error)>,
}

impl Tally {
    pub fn verdict(&self, nodes: &Nodes, quorum: usize) -> Verdict {
        Verdict::of(self.yes, self.no, nodes.len(), quorum)
    }

    /// The error for an undecided outcome: the node's own on one node, else one naming all.
    pub fn into_error(mut self, nodes: &Nodes, quorum: usize, what: &str) -> Error {
        if nodes.is_single() {
            if let Some((_, error)) = self.errors.pop() {
                return error;
            }
        }
        quorum_error(nodes, quorum, what, self.errors)
    }
}

/// Per-lease yes/no answers of a batch call on every node, with the failed nodes.
#[derive(Debug)]
pub(crate) struct BatchTally {
    pub yes: Vec<usize>,
    pub no: Vec<usize>,
    pub errors: Vec<(usize, Error)>,
}

impl BatchTally {
    /// Counts [`Nodes::decide`]'s replies for `leases` leases; abandoned nodes (`None`: the
    /// others decided every lease) count for nothing.
    pub fn of(replies: Vec<Option<Result<Vec<bool>>>>, leases: usize, nodes: &Nodes) -> BatchTally {
        let mut tally = BatchTally {
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
                            tally.yes[lease] += 1;
                        } else {
                            tally.no[lease] += 1;
                        }
                    }
                }
                Some(Ok(answers)) => tally.errors.push((
                    index,
                    Error::Internal(format!(
                        "{}: a batch call returned {} results for {leases} leases",
                        nodes.name(index),
                        answers.len()
                    )),
                )),
                Some(Err(e)) => tally.errors.push((index, e)),
            }
        }
        tally
    }

    pub fn verdict(&self, lease: usize, nodes: &Nodes, quorum: usize) -> Verdict {
        Verdict::of(self.yes[lease], self.no[lease], nodes.len(), quorum)
    }

    /// The failures, for logs and loss reasons.
    pub fn describe_errors(&self, nodes: &Nodes) -> String {
        self.errors
            .iter()
            .map(|(index, e)| match nodes.is_single() {
                true => e.to_string(),
                false => format!("{}: {e}", nodes.name(*index)),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// How many of `nodes` must grant when up to `holders` may hold at once: see
/// [`Nodes::quorum_for`].
fn quorum_for(nodes: usize, holders: u32) -> usize {
    let (m, n) = (nodes as u128, u128::from(holders.max(1)));
    let needed = (m * n / (n + 1) + 1).min(m);
    usize::try_from(needed).unwrap_or(nodes)
}

/// Redlock needs an odd number (≥ 3) of independent masters.
pub(crate) fn check_redlock_size(n: usize) -> Result<()> {
    if n < 3 || n.is_multiple_of(2) {
        return Err(Error::Config(format!(
            "Redlock needs an odd number of independent masters, at least 3 (got {n}): with an \
             even number a split in half grants no one, and one node is a single Redis"
        )));
    }
    Ok(())
}

/// One error for a failed quorum operation (`quorum` nodes needed), keeping every failed
/// node's own error.
pub(crate) fn quorum_error(
    nodes: &Nodes,
    quorum: usize,
    what: &str,
    failures: Vec<(usize, Error)>,
) -> Error {
    Error::Quorum {
        what: what.to_owned(),
        needed: quorum,
        of: nodes.len(),
        failures: failures
            .into_iter()
            .map(|(index, error)| NodeFailure {
                node: nodes.name(index).to_owned(),
                error: Box::new(error),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redlock_sizes_are_odd_and_at_least_three() {
        for bad in [0, 1, 2, 4, 6] {
            assert!(
                check_redlock_size(bad).expect_err("bad size").is_config(),
                "{bad}"
            );
        }
        for good in [3, 5, 7] {
            assert!(check_redlock_size(good).is_ok());
        }
    }

    /// More than M·N/(N+1) nodes: N+1 grants on that many nodes each cannot fit on M nodes that
    /// hold at most N each (pigeonhole), so no more than N are ever held.
    #[test]
    fn a_grant_for_n_holders_needs_more_than_m_n_over_n_plus_one_nodes() {
        assert_eq!(quorum_for(3, 1), 2);
        assert_eq!(quorum_for(5, 1), 3);
        assert_eq!(quorum_for(3, 2), 3);
        assert_eq!(quorum_for(5, 2), 4);
        assert_eq!(quorum_for(5, 3), 4);
        assert_eq!(quorum_for(5, 4), 5);
        assert_eq!(quorum_for(7, 2), 5);
        assert_eq!(quorum_for(1, u32::MAX), 1);
        assert_eq!(quorum_for(7, u32::MAX), 7);
        for m in [1usize, 3, 5, 7, 9] {
            for n in 1u32..=12 {
                let q = quorum_for(m, n);
                let holders = usize::try_from(n).unwrap() + 1;
                // N+1 holders on q nodes each need more than M·N node slots.
                assert!(holders * q > m * (holders - 1), "M={m} N={n} q={q}");
                assert!(q <= m);
            }
        }
    }
}
