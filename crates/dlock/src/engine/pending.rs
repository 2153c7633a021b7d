//! An acquisition in progress, and its undo if the caller gives up while in doubt.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use redis::ScriptInvocation;

use crate::engine::ops::ReleaseOp;
use crate::engine::watchdog::Watchdog;
use crate::engine::Core;
use crate::error::Result;
use crate::token::Token;

/// How to undo an acquisition made with a given token: the primitive's release of that hold.
pub(crate) type Undo = Box<dyn Fn(Token) -> Arc<dyn ReleaseOp> + Send + Sync>;

/// The undo of an acquisition of several holds at once (a multi-key lock's members): one
/// release per hold.
pub(crate) type UndoAll = Box<dyn Fn(Token) -> Vec<Arc<dyn ReleaseOp>> + Send + Sync>;

/// An acquisition in progress. While a request with its token may have taken the hold without
/// our knowing (sent, no definite answer yet, or failed in transit), dropping it (a cancelled
/// future, an error) queues its undo in the background, so a grant that reached Redis after
/// the caller gave up does not leave an orphaned hold. A definite "busy" answer or a grant
/// clears that doubt, so a plain conflict costs no extra round trip.
pub(crate) struct Pending {
    undo: UndoAll,
    /// The token of the current (latest) attempt.
    token: Mutex<Token>,
    watchdog: Watchdog,
    in_doubt: AtomicBool,
}

impl Pending {
    pub fn new(watchdog: Watchdog, undo: Undo) -> Result<Pending> {
        Pending::new_all(watchdog, Box::new(move |token| vec![undo(token)]))
    }

    /// An acquisition of several holds at once, undone by one release per hold.
    pub fn new_all(watchdog: Watchdog, undo: UndoAll) -> Result<Pending> {
        Ok(Pending {
            undo,
            token: Mutex::new(Token::generate()?),
            watchdog,
            in_doubt: AtomicBool::new(false),
        })
    }

    /// The current attempt's token.
    pub fn token(&self) -> Token {
        self.token
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Starts an attempt with a new token (Redlock); the old one's rollback is the caller's.
    pub fn fresh_token(&self) -> Result<Token> {
        let token = Token::generate()?;
        *self.token.lock().unwrap_or_else(PoisonError::into_inner) = token.clone();
        Ok(token)
    }

    /// The undo of the acquisition made with `token`: one release per hold it may have taken.
    pub fn undo(&self, token: Token) -> Vec<Arc<dyn ReleaseOp>> {
        (self.undo)(token)
    }

    /// A request with this token is about to be sent.
    pub fn sending(&self) {
        self.in_doubt.store(true, Ordering::SeqCst);
    }

    /// Redis answered definitely: either busy (nothing set) or granted (the new lease's guard
    /// is now responsible for the hold).
    pub fn settled(&self) {
        self.in_doubt.store(false, Ordering::SeqCst);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.in_doubt.load(Ordering::SeqCst) {
            for undo in self.undo(self.token()) {
                self.watchdog.release_in_background(undo);
            }
        }
    }
}

/// Before a retry with a larger proposal: undo this attempt's partial grant. The nodes that
/// granted are undone now, so that the retry does not find our own old hold there and take it
/// for a busy lock; every node also gets the undo in the background, for a write that may
/// still land (and a node whose undo failed now).
pub(crate) async fn undo_partial(
    core: &Core,
    pending: &Pending,
    token: Token,
    grants: &[(usize, u64, bool)],
) {
    // Quiet, as every Redlock rollback (see `acquire::not_granted`).
    let undos: Vec<_> = pending
        .undo(token)
        .into_iter()
        .map(|undo| undo.quieted().unwrap_or(undo))
        .collect();
    if !grants.is_empty() {
        let calls = undo_calls(&undos);
        let nodes = core.nodes();
        futures_util::future::join_all(grants.iter().flat_map(|(index, _, _)| {
            let node = nodes.get(*index);
            calls
                .iter()
                .map(move |call| node.eval::<Vec<i64>>(call, node.command_timeout()))
        }))
        .await;
    }
    for undo in undos {
        core.watchdog().release_in_background(undo);
    }
    pending.settled();
}

/// One release call per hold an undo covers.
fn undo_calls(undos: &[Arc<dyn ReleaseOp>]) -> Vec<ScriptInvocation<'_>> {
    undos
        .iter()
        .map(|undo| crate::engine::ops::one(undo.release_script(), |call| undo.add_release(call)))
        .collect()
}

/// Undoes a grant now, so the caller's error means "no hold". If a node cannot confirm, the
/// undo is queued in the background and the next attempt takes a fresh token: with the old
/// one, that late undo could delete the retry's grant (the retry finds its own grant again on
/// one node), leaving a guard that believes it holds what nobody holds.
pub(crate) async fn roll_back(core: &Core, pending: &Pending, token: Token) {
    let undos = pending.undo(token);
    let calls = undo_calls(&undos);
    let nodes = core.nodes();
    let undone = nodes
        .all(|node| async {
            let sent = calls
                .iter()
                .map(|call| node.eval::<Vec<i64>>(call, node.command_timeout()));
            futures_util::future::join_all(sent)
                .await
                .into_iter()
                .collect::<Result<Vec<_>>>()
        })
        .await;
    if !undone.iter().all(Result::is_ok) {
        if pending.fresh_token().is_err() {
            // No fresh token (the OS random source failed): stay in doubt with the old one,
            // whose undo is then sent when the caller gives up (never before a retry that
            // reuses it).
            return;
        }
        for undo in undos {
            core.watchdog().release_in_background(undo);
        }
    }
    pending.settled();
}
