//! What a wake-up message says, and whom it is for.

use std::sync::Arc;
use std::time::Duration;

/// Who a wake-up is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Everyone: a plain release, or a reconnect after which messages may have been missed.
    All,
    /// Only the waiter whose token starts with this id (the queue's head).
    Only(Arc<str>),
    /// The lock was handed to the waiter whose token starts with `id`.
    Handed {
        id: Arc<str>,
        fence: u64,
        claim: Duration,
    },
}

/// What woke a waiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Woken {
    /// Retry now.
    Retry,
    /// A release handed the lock to this waiter: its fencing token, and the claim lease it was
    /// granted for (counted from no earlier than the waiter's last busy answer).
    Handed { fence: u64, claim: Duration },
    /// A release handed the lock to another waiter for a claim lease this long: if that waiter
    /// died, the lock is free again by then.
    HandedElsewhere { claim: Duration },
}

impl Wake {
    /// Reads a wake-up message: "" (everyone), "<id>" or "<id> <fence> <claim ms>". A message
    /// of another shape (another tool publishing on the channel) wakes everyone: a spurious
    /// retry is harmless.
    pub(super) fn parse(payload: &str) -> Wake {
        let mut parts = payload.split(' ');
        let id = parts.next().unwrap_or_default();
        if id.is_empty() {
            return Wake::All;
        }
        let rest: Vec<&str> = parts.collect();
        match rest[..] {
            [] => Wake::Only(id.into()),
            [fence, claim] => match (fence.parse(), claim.parse()) {
                (Ok(fence), Ok(claim)) => Wake::Handed {
                    id: id.into(),
                    fence,
                    claim: Duration::from_millis(claim),
                },
                _ => Wake::All,
            },
            _ => Wake::All,
        }
    }
}

/// Whether a wake-up's waiter id names `token` (ids are token prefixes; older releases and
/// semaphores publish whole tokens, which match too).
pub(super) fn names(id: &str, token: &str) -> bool {
    !id.is_empty() && token.starts_with(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_as_everyone_one_waiter_or_a_handoff() {
        assert_eq!(Wake::parse(""), Wake::All);
        assert_eq!(
            Wake::parse("0123456789abcdef"),
            Wake::Only("0123456789abcdef".into())
        );
        assert_eq!(
            Wake::parse("0123456789abcdef 1700000000000001 1000"),
            Wake::Handed {
                id: "0123456789abcdef".into(),
                fence: 1_700_000_000_000_001,
                claim: Duration::from_secs(1),
            }
        );
        // Another tool's message on the channel: a harmless retry for everyone.
        for odd in ["a b", "a b c d", "a -1 5", "a 5 x", " x"] {
            assert_eq!(Wake::parse(odd), Wake::All, "{odd:?}");
        }
    }

    #[test]
    fn ids_name_the_token_they_start() {
        let token = "0123456789abcdef0123456789abcdef";
        assert!(names("0123456789abcdef", token));
        assert!(names(token, token), "whole tokens (semaphores) match too");
        assert!(!names("", token));
        assert!(!names("0123456789abcdee", token));
    }
}
