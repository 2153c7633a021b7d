//! The nodes a client locks on: one Redis, or N independent masters for Redlock.
//!
//! # Redlock
//! An operation is sent to every node concurrently, each call bounded by the per-node
//! (command) timeout, and succeeds when a majority (`N / 2 + 1`) agrees, so one dead or frozen
//! node of three costs at most that timeout and never stops a grant. The lock, renewal and
//! release logic is the same as on one node; the acquisition engine adds the validity check
//! (`ttl − elapsed − drift` must still be positive once the grant is complete) and the
//! fencing write-back.
//!
//! # Fencing across nodes
//! A grant's token is the largest any granting node issued, and it is written back
//! (raise-to-at-least) to the granting majority before the grant is returned, while the lock
//! keys on those nodes still exist. Any later grant needs a majority too, and two majorities
//! share at least one node; that node's counter already holds the earlier token, and it can
//! only grant again after the earlier key there is gone, so the later grant's token is larger.
//! This needs each node to keep its counter across restarts, or to restart later than the
//! largest clock offset between nodes plus a TTL (each node's tokens never go below its own
//! clock).

use std::future::Future;

use futures_util::stream::{FuturesUnordered, StreamExt};

use crate::connection::node::Node;
use crate::error::{Error, NodeFailure, Result};

mod settle;

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
    ) -> FuturesUnordered<impl Future<Output = (usize, Result<T>)>>
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

    /// Runs `call` on every node concurrently and returns as soon as `enough` results satisfy
    /// `good`, or when that can no longer happen; the rest are abandoned (their requests may
    /// still land: callers release on every node anyway). Results come as (node index, result).
    pub async fn until<'a, T, F, Fut>(
        &'a self,
        enough: usize,
        good: impl Fn(&Result<T>) -> bool,
        call: F,
    ) -> Vec<(usize, Result<T>)>
    where
        F: Fn(&'a Node) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut pending = self.each(0..self.len(), call);
        let mut results = Vec::with_capacity(self.nodes.len());
        let mut good_count = 0;
        while let Some((index, result)) = pending.next().await {
            if good(&result) {
                good_count += 1;
            }
            results.push((index, result));
            let others = pending.len();
            if good_count >= enough || good_count + others < enough {
                break;
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
    /// Counts one-lease batch replies (`[1]` yes, anything else no), in node order.
    pub fn of(replies: Vec<Result<Vec<i64>>>) -> Tally {
        let mut tally = Tally {
            yes: 0,
            no: 0,
            errors: Vec::new(),
        };
        for (index, reply) in replies.into_iter().enumerate() {
            match reply {
                Ok(reply) if reply == [1] => tally.yes += 1,
                Ok(_) => tally.no += 1,
                Err(e) => tally.errors.push((index, e)),
            }
        }
        tally
    }

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
