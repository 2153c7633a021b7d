//! An acquisition in progress, and its undo if the caller gives up while in doubt.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::engine::ops::ReleaseOp;
use crate::engine::watchdog::Watchdog;
use crate::error::Result;
use crate::token::Token;

/// How to undo an acquisition made with a given token: the primitive's release of that hold.
pub(crate) type Undo = Box<dyn Fn(Token) -> Arc<dyn ReleaseOp> + Send + Sync>;

/// An acquisition in progress. While a request with its token may have taken the hold without
/// our knowing (sent, no definite answer yet, or failed in transit), dropping it (a cancelled
/// future, an error) queues its undo in the background, so a grant that reached Redis after
/// the caller gave up does not leave an orphaned hold. A definite "busy" answer or a grant
/// clears that doubt, so a plain conflict costs no extra round trip.
pub(crate) struct Pending {
    undo: Undo,
    /// The token of the current (latest) attempt.
    token: Mutex<Token>,
    watchdog: Watchdog,
    in_doubt: AtomicBool,
}

impl Pending {
    pub fn new(watchdog: Watchdog, undo: Undo) -> Result<Pending> {
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

    /// The undo of the acquisition made with `token`.
    pub fn undo(&self, token: Token) -> Arc<dyn ReleaseOp> {
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
            self.watchdog.release_in_background(self.undo(self.token()));
        }
    }
}
