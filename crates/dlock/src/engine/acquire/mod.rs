//! One acquisition attempt, for any primitive: the token policy, the fan-out to a majority,
//! fencing on Redlock (a token the client proposes, or the masters' tokens written back), the
//! replica guard, the validity check and the rollback.
//!
//! A primitive implements [`Acquire`]: its acquire call, how to read a node's answer, how it is
//! fenced on Redlock, and how to make its guard from a grant. [`attempt`] does the rest, the
//! same way for every primitive.

use std::sync::Arc;
use std::time::Duration;

use redis::{ScriptInvocation, Value};
use tokio::time::Instant;

use crate::connection::quorum::{quorum_error, Nodes};
use crate::engine::lease::Sent;
use crate::engine::ops::ReleaseOp;
use crate::engine::pending::{undo_partial, Pending};
use crate::engine::Core;
use crate::error::{Conflict, Error, Result};
use crate::options::LockOptions;
use crate::token::Token;

mod answers;
mod granted;

use answers::{send, Answers};
use granted::Granted;

/// The outcome of one acquisition attempt.
pub(crate) enum Attempt<G> {
    Granted(G),
    Busy(Busy),
}

/// A busy answer: who holds it, and when to look again.
#[derive(Debug)]
pub(crate) struct Busy {
    pub conflict: Box<Conflict>,
    /// Fair mode: time until the lease of the waiter just ahead of us in the queue ends.
    pub ahead_lease_left: Option<Duration>,
    /// When the attempt that answered was sent (set by [`attempt`]). A hand-off made after
    /// this answer (its fencing token is above [`Busy::fence_seen`]) was granted after this
    /// moment, so its claim lease counts from no earlier.
    pub sent: Option<Sent>,
    /// The server's clock at this answer, in ms: a hand-off that says when it was granted by
    /// the same clock is counted from then (see `engine::wait`).
    pub server_ms: Option<u64>,
    /// The fencing counter at this answer: any hand-off made before it has a token no larger
    /// (the primitives that hand off: locks, semaphores, read-write locks; a hand-off to
    /// readers draws a fresh token from the counter for this).
    pub fence_seen: Option<u64>,
    /// Redlock: no holder was found on a majority (a split vote among waiters, each on a
    /// minority): retry after a short random pause. Their undos publish nothing (a waiter's
    /// own undo must not wake it), so no wake-up would come.
    pub split: bool,
    /// Held by readers (a read-write lock's read mode), or held back for a queued writer:
    /// either counts as one holder when telling a lock a majority holds from a split vote (each
    /// master names its own first reader, or no holder at all).
    pub shared: bool,
}

/// One node's answer to an acquire call.
pub(crate) enum Answer {
    /// Granted with this fencing token; `fresh` is false when the token already held it (a
    /// retry whose first reply was lost, or a reentrant owner's re-entry).
    Granted {
        fence: u64,
        fresh: bool,
    },
    Busy(Busy),
    /// Redlock: refused because the proposed fencing token is not above this node's counter,
    /// which it answers with (nothing was written).
    Low {
        counter: u64,
    },
}

/// How many fencing tokens one Redlock attempt proposes at most: the first, then one above
/// the counters heard each time a majority refused only for being too low (a second refusal
/// needs a master silent the first time, or a rival raising the counters meanwhile).
const PROPOSALS: usize = 4;

/// How a waiter queues (fair mode, hand-off): its waiter lease, where a hand-off goes (its
/// client's inbox; `None`: the lock's channel), whether it may be handed the hold (it hears).
#[derive(Debug, Clone)]
pub(crate) struct Queue {
    pub lease: Duration,
    pub inbox: Option<std::sync::Arc<str>>,
    pub hears: bool,
}

/// A grant a majority made, complete (fenced, guarded, still valid).
pub(crate) struct Grant {
    pub token: Token,
    pub fencing_token: u64,
    /// When the acquire call was sent: the lease's validity counts from here.
    pub sent_at: Instant,
    pub fresh: bool,
}

/// What a primitive supplies to the engine to acquire one hold.
pub(crate) trait Acquire: Sync {
    /// The primitive's guard.
    type Guard;
    /// The primitive's settings (TTL, renewal, replica guard, waiting).
    fn options(&self) -> &LockOptions;
    /// The part of its keys Redis Cluster hashes: the call runs on that slot's master (and a
    /// replica guard's `WAIT` there).
    fn slot(&self) -> &str;
    /// How many may hold at once: 1 for a lock, the limit for a semaphore. On Redlock it sets
    /// how many masters must grant ([`Nodes::quorum_for`]).
    fn holders(&self) -> u32 {
        1
    }
    /// The acquire call for `token`; `queue` says how to queue (`None`: do not queue)
    /// (`None`: do not queue).
    fn call(&self, token: &Token, queue: Option<&Queue>) -> ScriptInvocation<'static>;
    /// Reads one node's reply.
    ///
    /// # Errors
    /// A malformed reply, or a refusal that is not "busy" (a semaphore's limit mismatch).
    fn parse(&self, reply: &[Value]) -> Result<Answer>;
    /// Redlock in one round trip: the acquire call for `token` (queueing as `queue` says)
    /// proposing the fencing token `fence`. Each master grants only if the hold is free there
    /// and `fence` is above its counter, stores `fence` as its counter and the grant's, and
    /// otherwise answers [`Answer::Low`] with its counter (see [`crate::connection::quorum`]).
    /// `None` (the default): the masters issue tokens and the engine writes the largest back
    /// ([`Acquire::raise_fence`]), a second round trip.
    fn propose(
        &self,
        _token: &Token,
        _queue: Option<&Queue>,
        _fence: u64,
    ) -> Option<ScriptInvocation<'static>> {
        None
    }
    /// Redlock's fencing write-back, for a primitive that does not [`propose`](Acquire::propose):
    /// raise a node's counter to `fence` and record it as the grant's; the script answers 1
    /// when the hold on that node is still `token`'s.
    fn raise_fence(&self, token: &Token, fence: u64) -> ScriptInvocation<'static>;
    /// Redlock: the write-back is about to replace an earlier grant that some nodes answered
    /// with (not fresh: a reentrant owner's). Its lease ends here, even if this attempt fails
    /// after (the replaced nodes no longer hold it).
    fn replacing_earlier_grant(&self) {}
    /// Redlock: how to undo this attempt's write (`token`'s) on a node outside the grant,
    /// whose fencing token is `fence`, unless that node holds the grant after all. `None` (the
    /// default): such a write is the grant's own, which renewals and the release find by its
    /// token (a lock's, a permit's). A reentrant lock's write there is a stray: a fresh grant
    /// with a fencing token of its own, which the lease would never renew or free.
    fn undo_stray(&self, _token: &Token, _fence: u64) -> Option<Arc<dyn ReleaseOp>> {
        None
    }
    /// The guard for a complete grant.
    fn granted(&self, grant: Grant) -> Self::Guard;
}

/// What one fan-out came to.
enum Tried<G> {
    Done(Attempt<G>),
    /// A majority could have granted but for proposals too low: these nodes' counters.
    Low(Vec<(usize, u64)>),
}

/// One acquisition attempt with `pending`'s token: one script call per node. On Redlock with a
/// proposing primitive, a proposal refused as too low by enough masters is rolled back and
/// retried at once above their counters, up to [`PROPOSALS`] times, within the same attempt.
pub(crate) async fn attempt<A: Acquire>(
    core: &Core,
    primitive: &A,
    pending: &Pending,
    queue: Option<Queue>,
) -> Result<Attempt<A::Guard>> {
    let nodes = core.nodes();
    if nodes.is_single() {
        return match once(core, primitive, pending, queue.as_ref(), None).await? {
            Tried::Done(attempt) => Ok(attempt),
            Tried::Low(lows) => Err(too_low(nodes, 1, lows)),
        };
    }
    let mut above = 0;
    let mut lows = Vec::new();
    for _ in 0..PROPOSALS {
        let proposal = Some(core.fence_proposal(above));
        match once(core, primitive, pending, queue.as_ref(), proposal).await? {
            Tried::Done(attempt) => return Ok(attempt),
            Tried::Low(refused) => lows = refused,
        }
        above = lows
            .iter()
            .map(|(_, counter)| *counter)
            .fold(above, u64::max);
    }
    Err(too_low(nodes, nodes.quorum_for(primitive.holders()), lows))
}

/// One fan-out of the acquire call (proposing `proposal` when the primitive can), and what it
/// came to: a guard, a busy answer, or proposals too low (already rolled back).
async fn once<A: Acquire>(
    core: &Core,
    primitive: &A,
    pending: &Pending,
    queue: Option<&Queue>,
    proposal: Option<u64>,
) -> Result<Tried<A::Guard>> {
    let nodes = core.nodes();
    let token = attempt_token(nodes, pending)?;
    let proposed = proposal.and_then(|fence| primitive.propose(&token, queue, fence));
    let fenced = proposed.is_some();
    let call = proposed.unwrap_or_else(|| primitive.call(&token, queue));
    // A guarded grant and its WAIT go on a link of their own to the hold's server (see
    // `node::replica`); replica guards are single-node (or Cluster) only.
    let mut link = match primitive.options().min_replicas {
        Some(_) => Some(nodes.first().replica_link(primitive.slot()).await?),
        None => None,
    };
    pending.sending();
    let suspended = crate::clock::Clock::default().suspended();
    let sent_at = Instant::now();
    let quorum = nodes.quorum_for(primitive.holders());
    // An error answer leaves the acquisition in doubt: this call granted nothing, but an
    // earlier attempt with the same token may have (or queued it), and the undo scripts
    // tolerate a key of another type, so undoing costs nothing.
    let mut answers = send(nodes, quorum, primitive, &call, link.as_mut()).await?;
    if let Some(busy) = answers.busy.as_mut() {
        busy.sent = Some(Sent {
            at: sent_at,
            suspended,
        });
        if !nodes.is_single() {
            // Whose clock it was is not known: only a single node's hand-offs use it.
            busy.server_ms = None;
        }
    }
    if answers.grants.len() >= quorum {
        let granted = Granted {
            core,
            pending,
            token: &token,
            sent_at,
            quorum,
            fenced,
        };
        match granted.finish(primitive, &answers, link.as_mut()).await? {
            Some(guard) => return Ok(Tried::Done(Attempt::Granted(guard))),
            None => answers.failures.push(too_late(nodes, answers.grants[0].0)),
        }
    }
    if answers.too_low(quorum) {
        undo_partial(core, pending, token, &answers.grants).await;
        return Ok(Tried::Low(answers.lows));
    }
    not_granted(core, pending, token, queue.is_some(), answers, quorum).map(Tried::Done)
}

/// No majority granted: on Redlock, undo any partial grant on every node (also those that did
/// not answer: their write may still land); then report who holds it, or why nobody granted.
fn not_granted<G>(
    core: &Core,
    pending: &Pending,
    token: Token,
    queued: bool,
    mut answers: Answers,
    quorum: usize,
) -> Result<Attempt<G>> {
    let nodes = core.nodes();
    if !nodes.is_single() {
        // Quiet: this waiter's own undo must not wake it (it would retry at once, be refused
        // by the same majority, undo again, and spin for as long as the lock is held). Only
        // where the token may hold a grant: a waiter behind a held lock sends nothing more.
        let maybe = answers.maybe_granted(nodes.len());
        for undo in pending
            .undo(token)
            .into_iter()
            .filter(|_| !maybe.is_empty())
        {
            let undo = undo.quieted().unwrap_or(undo);
            core.watchdog()
                .release_in_background_on(undo, maybe.clone());
        }
        pending.settled();
    } else if answers.busy.is_some() && !queued {
        // A busy answer settles the doubt, unless it put us in the fair queue: that entry must
        // be withdrawn if we give up. A grant refused for arriving too late does not: the hold
        // is ours, so it stays in doubt (a retry with this token finds it; giving up
        // releases it).
        pending.settled();
    }
    // Only for one holder at a time: a semaphore's busy nodes name any of its holders.
    let split =
        !nodes.is_single() && quorum == nodes.quorum() && !answers.held_by_a_majority(quorum);
    match answers.busy {
        Some(mut busy) => {
            busy.split = split;
            Ok(Attempt::Busy(busy))
        }
        None => {
            let lows = answers.lows.into_iter().map(|low| low_failure(nodes, low));
            answers.failures.extend(lows);
            Err(refusal(nodes, quorum, answers.failures))
        }
    }
}

/// A node that refused a proposal as too low, as a failure.
fn low_failure(nodes: &Nodes, (index, counter): (usize, u64)) -> (usize, Error) {
    let error = Error::Unavailable {
        node: nodes.name(index).to_owned(),
        reason: format!("the proposed fencing token was not above its counter {counter}"),
    };
    (index, error)
}

/// The error after every proposal was refused as too low by too many masters.
fn too_low(nodes: &Nodes, quorum: usize, lows: Vec<(usize, u64)>) -> Error {
    let failures = lows
        .into_iter()
        .map(|low| low_failure(nodes, low))
        .collect();
    quorum_error(nodes, quorum, "acquiring", failures)
}

/// The token of an attempt. On Redlock every attempt has a fresh token: a failed attempt's
/// rollback runs in the background and may land after a retry; with its own token it can
/// never delete the retry's grant (with one token it did, and two owners held the lock: found
/// by the chaos suite). On one node a busy answer needs no rollback, so the token is kept,
/// which lets a retry whose first reply was lost find its own grant.
fn attempt_token(nodes: &Nodes, pending: &Pending) -> Result<Token> {
    match nodes.is_single() {
        true => Ok(pending.token()),
        false => pending.fresh_token(),
    }
}

/// The failure of a grant that completed after its validity had ended.
fn too_late(nodes: &Nodes, index: usize) -> (usize, Error) {
    let error = Error::Unavailable {
        node: nodes.name(index).to_owned(),
        reason: "the grant outlived its validity".into(),
    };
    (index, error)
}

/// The error when no majority granted and nobody said busy: a refusal that retrying cannot
/// heal, given by every node that failed (a semaphore's limit mismatch, a key of another
/// type: enough nodes said so that no majority can grant), as it is; on one node its own
/// error; otherwise one naming every failed node.
fn refusal(nodes: &Nodes, quorum: usize, mut failures: Vec<(usize, Error)>) -> Error {
    let permanent = !failures.is_empty() && failures.iter().all(|(_, e)| !e.is_retryable());
    if permanent || (nodes.is_single() && failures.len() == 1) {
        return failures.swap_remove(0).1;
    }
    quorum_error(nodes, quorum, "acquiring", failures)
}
