//! What a holder is told about its lease: held, lost (and why), or released.

use std::fmt;

/// Why a lease was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LossReason {
    /// The key no longer holds this owner's token (a lock's key, or a semaphore's set of
    /// permits): it expired, was deleted (e.g. a forced release), or another owner took it
    /// after it expired, or Redis lost it in a restart.
    KeyGone,
    /// Renewal could not reach Redis before the lease's validity ran out; the error says why.
    Unreachable(String),
    /// The lease ran out its TTL without renewal (renewal was off).
    Expired,
    /// The connection to Redis dropped, and when it came back the lock key no longer held our
    /// token: the server restarted (without the key) or failed over, or the key was removed.
    KeyGoneAfterReconnect,
}

impl fmt::Display for LossReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LossReason::KeyGone => {
                write!(
                    f,
                    "the key no longer holds our token (expired, deleted or taken)"
                )
            }
            LossReason::Unreachable(error) => {
                write!(
                    f,
                    "Redis could not be reached before the lease ran out: {error}"
                )
            }
            LossReason::Expired => write!(f, "the lease expired (renewal was off)"),
            LossReason::KeyGoneAfterReconnect => write!(
                f,
                "the connection to Redis dropped and, once it was back, the lock key no longer \
                 held our token (the server restarted or failed over, or the key was removed)"
            ),
        }
    }
}

/// Where a lease stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseStatus {
    /// Held and valid, as far as this client can tell.
    Held,
    /// Lost; once lost, always lost.
    Lost(LossReason),
    /// Released by its owner (or by dropping its guard).
    Released,
}
