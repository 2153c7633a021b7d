//! What a wake-up message says, and whom it is for.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// Who a wake-up is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Everyone: a plain release, or a reconnect after which messages may have been missed.
    All,
    /// Only the waiter whose token starts with this id (the queue's head).
    Only(Arc<str>),
    /// The lock was handed to the waiter whose token starts with `id`, for `claim`, with
    /// fencing token `fence`, at `granted_ms` by the server's clock (`None` from releases that
    /// did not say); `mac` proves it came from the script (see [`mac`]); `next` is the id of
    /// the waiter now at the head of the queue. `received`: when the client read the message,
    /// no earlier than the grant.
    Handed {
        id: Arc<str>,
        fence: u64,
        claim: Duration,
        granted_ms: Option<u64>,
        received: Instant,
        mac: Arc<str>,
        next: Option<Arc<str>>,
    },
}

/// What woke a waiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Woken {
    /// Retry now.
    Retry,
    /// A release handed the lock to this waiter: its fencing token, the claim lease it was
    /// granted for (counted from no earlier than the waiter's last busy answer), when, by the
    /// server's clock in ms (if the release said), and when the client read the message.
    Handed {
        fence: u64,
        claim: Duration,
        granted_ms: Option<u64>,
        received: Instant,
    },
    /// A release handed the lock to the waiter just ahead of this one, for a claim lease this
    /// long: if that waiter died, the lock is free again by then.
    HandedAhead { claim: Duration },
}

impl Wake {
    /// Reads a wake-up message: "" (everyone), "<id>" or "<id> <fence> <claim ms> <mac>
    /// <next id or -> <granted ms>" (without the last field from older releases). A message of
    /// another shape (another tool publishing on the channel) wakes everyone: a spurious retry
    /// is harmless. `received`: when the client read it.
    pub(super) fn parse(payload: &str, received: Instant) -> Wake {
        let mut parts = payload.split(' ');
        let id = parts.next().unwrap_or_default();
        if id.is_empty() {
            return Wake::All;
        }
        let rest: Vec<&str> = parts.collect();
        let (fence, claim, mac, next, granted) = match rest[..] {
            [] => return Wake::Only(id.into()),
            [fence, claim, mac, next] => (fence, claim, mac, next, None),
            [fence, claim, mac, next, granted] => (fence, claim, mac, next, Some(granted)),
            _ => return Wake::All,
        };
        let granted_ms = match granted.map(str::parse) {
            None => None,
            Some(Ok(ms)) => Some(ms),
            Some(Err(_)) => return Wake::All,
        };
        match (fence.parse(), claim.parse()) {
            (Ok(fence), Ok(claim)) => Wake::Handed {
                id: id.into(),
                fence,
                claim: Duration::from_millis(claim),
                granted_ms,
                received,
                mac: mac.into(),
                next: (next != "-").then(|| next.into()),
            },
            _ => Wake::All,
        }
    }
}

impl Wake {
    /// The waiter ids this wake-up names: none for everyone, the queue's head, or the waiter
    /// handed the lock and the next in line.
    pub(super) fn named(&self) -> impl Iterator<Item = &str> {
        let (id, next) = match self {
            Wake::All => (None, None),
            Wake::Only(id) => (Some(id), None),
            Wake::Handed { id, next, .. } => (Some(id), next.as_ref()),
        };
        id.into_iter().chain(next).map(|id| &**id)
    }

    /// What this wake-up means to the waiter with `token` (`None`: nothing, sleep on).
    pub(super) fn for_token(self, token: &str) -> Option<Woken> {
        match self {
            Wake::All => Some(Woken::Retry),
            Wake::Only(id) => names(&id, token).then_some(Woken::Retry),
            Wake::Handed {
                id,
                fence,
                claim,
                granted_ms,
                received,
                mac: proof,
                next,
            } => {
                if names(&id, token) {
                    // A forged grant (the MAC does not match) is ignored.
                    (*proof == mac(token, fence, claim, granted_ms)).then_some(Woken::Handed {
                        fence,
                        claim,
                        granted_ms,
                        received,
                    })
                } else {
                    let next_in_line = next.is_some_and(|next| names(&next, token));
                    next_in_line.then_some(Woken::HandedAhead { claim })
                }
            }
        }
    }
}

/// The MAC of a hand-off to `token` (as `handoff.lua` makes it): the first 16 hex digits of
/// SHA-1 over the whole token, the fencing token, the claim lease in ms and the grant's server
/// time in ms (older releases: without it). Only the script and the waiter know the whole
/// token, so a user who may publish on the channel but not read the keys cannot forge a grant,
/// nor make a real one look more recent.
pub(super) fn mac(token: &str, fence: u64, claim: Duration, granted_ms: Option<u64>) -> String {
    let claim = claim.as_millis();
    let digest = sha1_smol::Sha1::from(match granted_ms {
        Some(granted) => format!("{token}:{fence}:{claim}:{granted}"),
        None => format!("{token}:{fence}:{claim}"),
    });
    digest.digest().to_string()[..16].to_owned()
}

/// The part of a waiter id (or a whole token, as older releases published) that addresses a
/// waiter: its first 16 characters.
pub(super) fn id_key(id: &str) -> &str {
    id.get(..16).unwrap_or(id)
}

/// Whether a wake-up's waiter id names `token` (ids are token prefixes; older releases
/// published whole tokens, which match too).
pub(super) fn names(id: &str, token: &str) -> bool {
    !id.is_empty() && token.starts_with(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(payload: &str) -> Wake {
        Wake::parse(payload, Instant::now())
    }

    #[test]
    fn messages_read_as_everyone_one_waiter_or_a_handoff() {
        assert_eq!(parse(""), Wake::All);
        assert_eq!(
            parse("0123456789abcdef"),
            Wake::Only("0123456789abcdef".into())
        );
        let received = Instant::now();
        assert_eq!(
            Wake::parse(
                "0123456789abcdef 1700000000000001 1000 fedcba9876543210 - 1700000000000",
                received
            ),
            Wake::Handed {
                id: "0123456789abcdef".into(),
                fence: 1_700_000_000_000_001,
                claim: Duration::from_secs(1),
                granted_ms: Some(1_700_000_000_000),
                received,
                mac: "fedcba9876543210".into(),
                next: None,
            }
        );
        // From an older release: no grant time.
        assert!(matches!(
            parse("0123456789abcdef 1700000000000001 1000 fedcba9876543210 -"),
            Wake::Handed {
                granted_ms: None,
                ..
            }
        ));
        assert!(matches!(
            parse("a 1 2 m 0123456789abcdef"),
            Wake::Handed { next: Some(next), .. } if &*next == "0123456789abcdef"
        ));
        // Another tool's message on the channel: a harmless retry for everyone.
        for odd in [
            "a b",
            "a b c",
            "a 1 2 m",
            "a -1 5 m -",
            "a 5 x m -",
            " x",
            "a 1 2 m - x",
            "a 1 2 m - -3",
            "a 1 2 m - 4 5",
        ] {
            assert_eq!(parse(odd), Wake::All, "{odd:?}");
        }
    }

    #[test]
    fn ids_name_the_token_they_start() {
        let token = "0123456789abcdef0123456789abcdef";
        assert!(names("0123456789abcdef", token));
        assert!(
            names(token, token),
            "whole tokens (older releases) match too"
        );
        assert!(!names("", token));
        assert!(!names("0123456789abcdee", token));
    }

    #[test]
    fn a_handoff_is_taken_only_with_the_mac_over_all_its_terms() {
        let token = "0123456789abcdef0123456789abcdef";
        let claim = Duration::from_secs(1);
        let received = Instant::now();
        let message = |granted: &str, mac: &str| {
            Wake::parse(
                &format!("0123456789abcdef 7 1000 {mac} -{granted}"),
                received,
            )
            .for_token(token)
        };
        let proof = mac(token, 7, claim, Some(1_000));
        assert_eq!(
            message(" 1000", &proof),
            Some(Woken::Handed {
                fence: 7,
                claim,
                granted_ms: Some(1_000),
                received
            })
        );
        // A real message made to look more recent, or stripped of its grant time: forged.
        assert_eq!(message(" 1001", &proof), None);
        assert_eq!(message("", &proof), None);
        // An older release's message, MAC'd without a grant time.
        let older = mac(token, 7, claim, None);
        assert_eq!(
            message("", &older),
            Some(Woken::Handed {
                fence: 7,
                claim,
                granted_ms: None,
                received
            })
        );
    }
}
