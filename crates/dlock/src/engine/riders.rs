//! Waiters that join a lock's queue with the release of another task of the same client, so
//! that tasks of one client taking turns on a lock cost one script call per grant, not two.
//!
//! A waiter of a plain lock (hand-off mode, one Redis or Cluster, not fair mode) that is already
//! subscribed (its client waits on the lock, or did a moment ago) and finds the lock held by a
//! guard of its own client, or just handed by a release reply to a waiter of its client, does
//! not send an attempt of its own: it *rides* on that holder's `release()`, which queues it,
//! behind every waiter already queued, in the same script call that passes the lock on (see
//! `release.lua`). Its first attempt would otherwise be a script call of its own (it queues,
//! and answers busy); so tasks of one client taking turns, each holding for less than
//! [`RIDE_LIMIT`], cost one script call per grant instead of two.
//!
//! # Guarantees and limits
//! - A rider is queued in Redis by a release that takes it within [`RIDE_LIMIT`] of its asking;
//!   otherwise (the holder works longer, its guard was dropped), or if that release fails, it
//!   sends its own attempt, and waits for its turn as any waiter does. Queue order among
//!   clients is by arrival in Redis, so a rider comes after the waiters of other clients that
//!   arrived while it rode: by at most [`RIDE_LIMIT`] plus the time its release takes (retries
//!   included). Not in fair mode, which promises the order in which waiters started waiting.
//! - Every outcome of the carrying release is safe to follow with the rider's own attempt:
//!   queueing a token is idempotent, and a grant already made to it is found by its attempt.
//! - A rider that gives up is withdrawn from the queue in the background, like any waiter that
//!   gives up; a release retried after a reconnect may still queue it afterwards (the retry
//!   resends the riders), which costs what a waiter that died in the queue costs: at most its
//!   claim lease if handed the lock, and its entry until its waiter lease ends.
//! - A release carries at most [`MAX_RIDERS`]; the others wait for the next one.
//! - Nothing here touches Redis: it only tells a release whom to queue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::engine::lease::Sent;
use crate::engine::Identity;
use crate::units::millis;

/// How long a waiter rides before it sends its own attempt.
pub(crate) const RIDE_LIMIT: Duration = Duration::from_millis(20);

/// The most riders one release queues: each costs the script about seven commands.
pub(crate) const MAX_RIDERS: usize = 32;

/// How long a lock handed to a waiter of this client counts as held here, until that waiter
/// takes it (its guard then counts) or not.
const HANDED: Duration = Duration::from_millis(20);

/// One client's boards, one per lock (by its wake-up channel) that this client holds or waits
/// on.
#[derive(Debug, Clone, Default)]
pub(crate) struct Riders {
    boards: Arc<Mutex<Boards>>,
}

#[derive(Debug, Default)]
struct Boards {
    by_name: HashMap<String, Board>,
    /// Rider ids, unique per client: a rider that outlived its board never matches another.
    next_id: u64,
    /// How many boards there were after the last sweep (see [`Riders::handed`]).
    swept: usize,
}

#[derive(Debug, Default)]
struct Board {
    /// Guards of this client that hold the lock (two while a hand-off passes between them).
    holds: usize,
    /// A release of this client handed the lock to one of its waiters, which has not taken it
    /// yet: it counts as held until then.
    handed_until: Option<Instant>,
    riders: Vec<Rider>,
}

impl Board {
    fn held(&self) -> bool {
        self.holds > 0
            || self
                .handed_until
                .is_some_and(|until| until > Instant::now())
    }

    fn idle(&self) -> bool {
        !self.held() && self.riders.is_empty()
    }
}

/// What a rider asks the carrying release to queue.
#[derive(Debug)]
pub(crate) struct Rider {
    id: u64,
    pub terms: RiderTerms,
    done: oneshot::Sender<Option<Sent>>,
}

/// A rider's queue entry: its token, its waiter lease, the claim lease it takes a hand-off for,
/// and its label.
#[derive(Debug, Clone)]
pub(crate) struct RiderTerms {
    pub token: String,
    pub lease: Duration,
    pub claim: Duration,
    pub label: String,
}

impl Rider {
    /// Tells the rider the outcome of the release that carried it: queued by a call sent at
    /// `sent`, or `None` (not known to be queued: it sends its own attempt).
    pub fn carried(self, sent: Option<Sent>) {
        let _ = self.done.send(sent);
    }
}

impl Riders {
    fn lock(&self) -> MutexGuard<'_, Boards> {
        self.boards.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a guard of this client on the lock of `board` for as long as the returned value
    /// lives.
    pub fn hold(&self, board: &str) -> Holding {
        let mut boards = self.lock();
        let entry = boards.by_name.entry(board.to_owned()).or_default();
        entry.holds += 1;
        entry.handed_until = None;
        Holding {
            riders: self.clone(),
            board: board.to_owned(),
        }
    }

    /// A release of this client handed the lock of `board` to one of its waiters.
    pub fn handed(&self, board: &str) {
        let mut boards = self.lock();
        boards
            .by_name
            .entry(board.to_owned())
            .or_default()
            .handed_until = Instant::now().checked_add(HANDED);
        // A lock handed to a waiter that never took it (it gave up) leaves a board nobody
        // touches again: swept once the boards double since the last sweep, so sweeps cost
        // O(1) per board made.
        if boards.by_name.len() >= (2 * boards.swept).max(64) {
            boards.by_name.retain(|_, entry| !entry.idle());
            boards.swept = boards.by_name.len();
        }
    }

    /// Rides on the next release of the lock of `board` by this client, if a guard of this
    /// client holds it (or it was just handed to one of its waiters); `None` otherwise.
    pub fn ride(&self, board: &str, terms: RiderTerms) -> Option<Ride> {
        let mut boards = self.lock();
        if boards.by_name.get(board).is_some_and(Board::idle) {
            boards.by_name.remove(board);
        }
        let id = boards.next_id;
        let entry = boards.by_name.get_mut(board).filter(|entry| entry.held())?;
        let (done, outcome) = oneshot::channel();
        entry.riders.push(Rider { id, terms, done });
        boards.next_id += 1;
        Some(Ride {
            riders: self.clone(),
            board: board.to_owned(),
            id,
            outcome,
        })
    }

    /// The riders waiting for a release of the lock of `board` (the first [`MAX_RIDERS`]),
    /// for the release about to be sent, which must tell each one its outcome.
    pub fn take(&self, board: &str) -> Vec<Rider> {
        let mut boards = self.lock();
        let Some(entry) = boards.by_name.get_mut(board) else {
            return Vec::new();
        };
        let count = entry.riders.len().min(MAX_RIDERS);
        let riders: Vec<Rider> = entry.riders.drain(..count).collect();
        if entry.idle() {
            boards.by_name.remove(board);
        }
        riders
    }

    /// Forgets rider `id` if no release took it yet; true if it was still waiting (false: a
    /// release took it, or its board went and told it).
    fn leave(&self, board: &str, id: u64) -> bool {
        let mut boards = self.lock();
        let Some(entry) = boards.by_name.get_mut(board) else {
            return false;
        };
        let before = entry.riders.len();
        entry.riders.retain(|rider| rider.id != id);
        let left = entry.riders.len() < before;
        if entry.idle() {
            boards.by_name.remove(board);
        }
        left
    }

    /// One guard fewer on `board`: once none holds it (and no hand-off is on its way), no
    /// release will carry its riders, who send their own attempts at once.
    fn let_go(&self, board: &str) {
        let mut boards = self.lock();
        let Some(entry) = boards.by_name.get_mut(board) else {
            return;
        };
        entry.holds = entry.holds.saturating_sub(1);
        if entry.held() {
            return;
        }
        for rider in std::mem::take(&mut entry.riders) {
            rider.carried(None);
        }
        boards.by_name.remove(board);
    }
}

/// Adds `riders` to a one-lock release call that already has its inbox: the client's host
/// and pid, then each rider's token, waiter lease, claim lease (ms) and label.
pub(crate) fn add_riders(
    call: &mut redis::ScriptInvocation<'_>,
    identity: &Identity,
    riders: &[Rider],
) {
    if riders.is_empty() {
        return;
    }
    call.arg(&identity.host).arg(identity.pid);
    for rider in riders {
        let terms = &rider.terms;
        call.arg(terms.token.as_str())
            .arg(millis(terms.lease))
            .arg(millis(terms.claim))
            .arg(terms.label.as_str());
    }
}

/// A guard's count on its lock's board (see [`Riders::hold`]).
#[derive(Debug)]
pub(crate) struct Holding {
    riders: Riders,
    board: String,
}

impl Drop for Holding {
    fn drop(&mut self) {
        self.riders.let_go(&self.board);
    }
}

/// A waiter riding on a release (see [`Riders::ride`]).
#[derive(Debug)]
pub(crate) struct Ride {
    riders: Riders,
    board: String,
    id: u64,
    outcome: oneshot::Receiver<Option<Sent>>,
}

impl Ride {
    /// When the release that queued this rider was sent, or `None`: no release took it within
    /// [`RIDE_LIMIT`], or the one that did failed (or was dropped), so the rider sends its own
    /// attempt. Once a release took it, its answer is awaited however long it takes (the
    /// release has its own deadline), so a slow link does not send the rider to attempt while
    /// a release may be queueing it.
    ///
    /// # Cancel safety
    /// Dropping the future forgets the rider; a release that already took it queues it anyway,
    /// which the caller's undo of its token covers.
    pub async fn carried(mut self) -> Option<Sent> {
        if let Ok(outcome) = tokio::time::timeout(RIDE_LIMIT, &mut self.outcome).await {
            return outcome.ok().flatten();
        }
        if self.riders.leave(&self.board, self.id) {
            return None;
        }
        (&mut self.outcome).await.ok().flatten()
    }
}

impl Drop for Ride {
    fn drop(&mut self) {
        let _ = self.riders.leave(&self.board, self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(token: &str) -> RiderTerms {
        RiderTerms {
            token: token.into(),
            lease: Duration::from_secs(6),
            claim: Duration::from_secs(1),
            label: String::new(),
        }
    }

    fn sent() -> Sent {
        Sent {
            at: Instant::now(),
            suspended: Duration::ZERO,
        }
    }

    #[tokio::test]
    async fn a_waiter_rides_only_while_a_guard_of_its_client_holds_the_lock() {
        let riders = Riders::default();
        assert!(
            riders.ride("k", terms("a")).is_none(),
            "nobody holds it here"
        );
        let holding = riders.hold("k");
        let ride = riders.ride("k", terms("a")).expect("held here");
        let taken = riders.take("k");
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].terms.token, "a");
        let at = sent();
        for rider in taken {
            rider.carried(Some(at));
        }
        assert_eq!(ride.carried().await.map(|s| s.at), Some(at.at));
        drop(holding);
        assert!(riders.ride("k", terms("b")).is_none());
        assert!(
            riders.lock().by_name.is_empty(),
            "no board outlives its use"
        );
    }

    #[tokio::test]
    async fn the_last_guard_gone_sends_its_riders_off_at_once() {
        let riders = Riders::default();
        let holding = riders.hold("k");
        let ride = riders.ride("k", terms("a")).unwrap();
        drop(holding);
        let started = std::time::Instant::now();
        assert!(ride.carried().await.is_none());
        assert!(started.elapsed() < RIDE_LIMIT, "it waited for the limit");
        assert!(riders.lock().by_name.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_rider_nobody_carries_gives_up_at_the_limit_and_leaves_the_board() {
        let riders = Riders::default();
        let _holding = riders.hold("k");
        let ride = riders.ride("k", terms("a")).unwrap();
        let started = Instant::now();
        assert!(ride.carried().await.is_none());
        assert_eq!(started.elapsed(), RIDE_LIMIT);
        assert!(
            riders.take("k").is_empty(),
            "a rider that left is not carried"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lock_handed_to_a_waiter_counts_as_held_until_taken_or_for_a_while() {
        let riders = Riders::default();
        riders.handed("k");
        let ride = riders.ride("k", terms("a")).expect("handed here");
        // The waiter took it: its guard holds it now.
        let holding = riders.hold("k");
        drop(ride);
        drop(holding);
        assert!(riders.ride("k", terms("b")).is_none());
        riders.handed("k");
        tokio::time::advance(HANDED).await;
        assert!(riders.ride("k", terms("c")).is_none(), "never taken");
        assert!(riders.lock().by_name.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn boards_of_hand_offs_never_taken_are_swept() {
        let riders = Riders::default();
        for i in 0..63 {
            riders.handed(&format!("k{i}"));
        }
        tokio::time::advance(HANDED).await;
        riders.handed("last");
        assert_eq!(riders.lock().by_name.len(), 1, "only the live one is left");
    }

    #[tokio::test]
    async fn a_ride_that_outlived_its_board_never_evicts_a_newer_rider() {
        let riders = Riders::default();
        let holding = riders.hold("k");
        let stale = riders.ride("k", terms("a")).unwrap();
        // The guard goes: the board goes with it, and the stale ride is told to attempt...
        drop(holding);
        // ...but before its task drops the ride, a new guard and rider come.
        let _holding = riders.hold("k");
        let _fresh = riders.ride("k", terms("b")).unwrap();
        drop(stale);
        let taken = riders.take("k");
        assert_eq!(taken.len(), 1, "the newer rider was evicted");
        assert_eq!(taken[0].terms.token, "b");
    }

    #[tokio::test]
    async fn a_release_carries_at_most_max_riders_and_leaves_the_rest_for_the_next() {
        let riders = Riders::default();
        let _holding = riders.hold("k");
        let rides: Vec<_> = (0..MAX_RIDERS + 3)
            .map(|i| riders.ride("k", terms(&format!("t{i}"))).unwrap())
            .collect();
        let first = riders.take("k");
        assert_eq!(first.len(), MAX_RIDERS);
        assert_eq!(first[0].terms.token, "t0", "in arrival order");
        assert_eq!(riders.take("k").len(), 3);
        drop(rides);
    }

    #[tokio::test(start_paused = true)]
    async fn a_rider_taken_by_a_release_waits_for_its_answer_past_the_limit() {
        let riders = Riders::default();
        let _holding = riders.hold("k");
        let ride = riders.ride("k", terms("a")).unwrap();
        let taken = riders.take("k");
        let at = sent();
        let answer = tokio::spawn(async move {
            // A slow link: the release answers long after the limit.
            tokio::time::sleep(RIDE_LIMIT * 5).await;
            for rider in taken {
                rider.carried(Some(at));
            }
        });
        assert_eq!(ride.carried().await.map(|s| s.at), Some(at.at));
        answer.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_rider_whose_release_was_dropped_attempts_at_once() {
        let riders = Riders::default();
        let _holding = riders.hold("k");
        let ride = riders.ride("k", terms("a")).unwrap();
        let taken = riders.take("k");
        let dropped = tokio::spawn(async move {
            tokio::time::sleep(RIDE_LIMIT * 5).await;
            drop(taken);
        });
        assert!(ride.carried().await.is_none());
        dropped.await.unwrap();
    }

    #[tokio::test]
    async fn a_failed_release_sends_its_riders_off() {
        let riders = Riders::default();
        let _holding = riders.hold("k");
        let ride = riders.ride("k", terms("a")).unwrap();
        for rider in riders.take("k") {
            rider.carried(None);
        }
        assert!(ride.carried().await.is_none());
    }
}
