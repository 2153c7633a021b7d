//! [`Nodes::settle`]: a one-lease call retried on the nodes that failed until the answers
//! decide, for releases that must survive a dropped connection.

use std::future::Future;

use super::{next_within, straggler_grace, Nodes, Tally, Verdict};
use crate::connection::node::Node;
use crate::error::{Error, Result};

/// How long [`Nodes::settle`] pauses between tries: doubling from 20 ms up to 500 ms, so a
/// reconnect after a dropped connection is found quickly without hammering a dead server.
const SETTLE_BACKOFF: crate::Backoff = crate::Backoff::new_const(
    std::time::Duration::from_millis(20),
    std::time::Duration::from_millis(500),
);

impl Nodes {
    /// Runs a one-lock `call` on every node, retrying the nodes that fail (a dropped connection,
    /// a restart: the driver reconnects in the background) until the answers decide the
    /// outcome or `deadline` passes; there is always at least one try. `yes` reads an answer.
    /// Returns the tally and every node's last answer (`None`: never answered).
    ///
    /// A node whose first try failed *after* the command ran there may answer "no" on the retry
    /// (the first try already did the work): callers treat "no" as "not confirmed", which is the
    /// conservative reading for a release.
    pub async fn settle<'a, T, F, Fut>(
        &'a self,
        quorum: usize,
        deadline: tokio::time::Instant,
        yes: impl Fn(&T) -> bool,
        call: F,
    ) -> (Tally, Vec<Option<T>>)
    where
        F: Fn(&'a Node, std::time::Duration) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut answers: Vec<Option<T>> = (0..self.len()).map(|_| None).collect();
        let mut errors: Vec<Option<Error>> = (0..self.len()).map(|_| None).collect();
        let mut attempt = 0;
        loop {
            // The first try gets a full command timeout even past the deadline, so a release
            // is always sent once.
            let left = match attempt {
                0 => None,
                _ => Some(deadline.saturating_duration_since(tokio::time::Instant::now())),
            };
            self.settle_round(quorum, left, &yes, &call, &mut answers, &mut errors)
                .await;
            let mut tally = Tally {
                yes: answers.iter().flatten().filter(|a| yes(a)).count(),
                no: answers.iter().flatten().filter(|a| !yes(a)).count(),
                errors: Vec::new(),
            };
            let unanswered = self.len() - tally.yes - tally.no;
            let retryable = errors.iter().flatten().all(Error::is_retryable);
            let pause = SETTLE_BACKOFF.delay(attempt);
            attempt = attempt.saturating_add(1);
            let decided = tally.verdict(self, quorum) != Verdict::Undecided || unanswered == 0;
            if decided || !retryable || tokio::time::Instant::now() + pause >= deadline {
                tally.errors = errors
                    .into_iter()
                    .enumerate()
                    .filter_map(|(index, error)| Some((index, error?)))
                    .collect();
                return (tally, answers);
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// One round of [`Nodes::settle`]: asks every node without an answer yet (each call
    /// bounded by `left`, when given), until a majority decided and then for as long again
    /// ([`straggler_grace`]: on Redlock, a release that left the last masters behind queued
    /// the whole release again, on every master); nodes abandoned then count as failed (the
    /// caller retries them, or sends them the call in the background).
    async fn settle_round<'a, T, F, Fut>(
        &'a self,
        quorum: usize,
        left: Option<std::time::Duration>,
        yes: &impl Fn(&T) -> bool,
        call: &F,
        answers: &mut [Option<T>],
        errors: &mut [Option<Error>],
    ) where
        F: Fn(&'a Node, std::time::Duration) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let todo: Vec<usize> = (0..self.len()).filter(|&i| answers[i].is_none()).collect();
        let mut pending = self.each(todo.iter().copied(), |node| {
            let timeout = match left {
                None => node.command_timeout(),
                Some(left) => node.command_timeout().min(left),
            };
            call(node, timeout)
        });
        let started = tokio::time::Instant::now();
        let mut grace_end = None;
        loop {
            let next = next_within(&mut pending, grace_end).await;
            let Some((i, reply)) = next else { break };
            match reply {
                Ok(answer) => {
                    answers[i] = Some(answer);
                    errors[i] = None;
                }
                Err(error) => errors[i] = Some(error),
            }
            if pending.is_empty() {
                break;
            }
            let yes_count = answers.iter().flatten().filter(|a| yes(a)).count();
            let no_count = answers.iter().flatten().count() - yes_count;
            if grace_end.is_none()
                && Verdict::of(yes_count, no_count, self.len(), quorum) != Verdict::Undecided
            {
                grace_end = Some(straggler_grace(started, left));
            }
        }
        drop(pending);
        for &i in &todo {
            if answers[i].is_none() && errors[i].is_none() {
                errors[i] = Some(Error::Unavailable {
                    node: self.nodes[i].name().to_owned(),
                    reason: "no answer before the others decided".into(),
                });
            }
        }
    }
}
