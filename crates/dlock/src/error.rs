//! One crate-wide [`Error`]: every failure dlock can report, typed so callers can act on it.
//!
//! [`Error::kind`] gives a field-less [`ErrorKind`] for matching and mapping (the CLI maps kinds
//! to exit codes); predicates such as [`Error::is_conflict`] read well in `if` conditions; and
//! [`Error::is_retryable`] is the one place that decides which failures a wait may retry.
//! No message ever contains a password: node names are URLs with the password replaced.

use std::fmt;
use std::time::Duration;

use crate::holder::HolderInfo;
use crate::status::LossReason;
use crate::units::humanize;

/// Result type of every fallible dlock call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in dlock.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The lock is held by another owner (returned at once by `try_lock`).
    #[error("{0}")]
    Conflict(Box<Conflict>),
    /// A bounded wait for the lock ran out; the lock was still held by another owner.
    #[error("gave up waiting for lock {key:?} after {}: {last}", humanize(*waited))]
    Timeout {
        /// The lock's key.
        key: String,
        /// How long the caller waited.
        waited: Duration,
        /// The last conflict seen (who held the lock when the wait ended).
        last: Box<Conflict>,
    },
    /// The lease is gone: it expired, was deleted or taken over, or could not be renewed in time.
    /// A critical section that was still running may have overlapped another holder's.
    #[error("lease on lock {key:?} was lost: {reason}")]
    Lost {
        /// The lock's key.
        key: String,
        /// Why the lease is gone.
        reason: LossReason,
    },
    /// The caller does not own the lock it tried to act on.
    #[error("not the owner of lock {key:?}")]
    NotOwner {
        /// The lock's key.
        key: String,
    },
    /// Redis could not be reached in time (refused, reset, timed out).
    #[error("Redis unavailable at {node}: {reason}")]
    Unavailable {
        /// The node, as a URL without its password.
        node: String,
        /// What went wrong, for people.
        reason: String,
    },
    /// Too few of a Redlock client's masters answered for an operation that needs a majority;
    /// each failure keeps its own cause. Its kind is [`ErrorKind::Unavailable`].
    #[error(
        "Redis unavailable at {} of {of} nodes: {what} needs {needed} of {of}; failed: {}",
        failures.len(),
        NodeFailure::list(failures)
    )]
    Quorum {
        /// The operation, for people ("acquiring a lock").
        what: String,
        /// How many masters must agree.
        needed: usize,
        /// How many masters there are.
        of: usize,
        /// The masters that failed, and why.
        failures: Vec<NodeFailure>,
    },
    /// Redis refused the credentials (wrong user or password, or none given).
    #[error("Redis at {node} refused authentication: {reason}")]
    Auth {
        /// The node, as a URL without its password.
        node: String,
        /// The server's answer.
        reason: String,
    },
    /// Bad input: URL, TTL, key name or another setting. Nothing was sent to Redis.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Redis answered with an error that fits no other kind (e.g. an ACL denial).
    #[error("Redis error at {node}: {source}")]
    Redis {
        /// The node, as a URL without its password.
        node: String,
        /// The driver's error.
        #[source]
        source: redis::RedisError,
    },
    /// Something that should not happen did (e.g. the OS random source failed).
    #[error("internal error: {0}")]
    Internal(String),
}

/// One master's failure within an [`Error::Quorum`].
#[derive(Debug)]
pub struct NodeFailure {
    /// The master, as a URL without its password.
    pub node: String,
    /// What went wrong there.
    pub error: Box<Error>,
}

impl NodeFailure {
    fn list(failures: &[NodeFailure]) -> String {
        failures
            .iter()
            .map(|f| format!("{} ({})", f.node, f.error))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The kind of an [`Error`], without its data: for `match` and exit-code tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// See [`Error::Conflict`].
    Conflict,
    /// See [`Error::Timeout`].
    Timeout,
    /// See [`Error::Lost`].
    Lost,
    /// See [`Error::NotOwner`].
    NotOwner,
    /// See [`Error::Unavailable`].
    Unavailable,
    /// See [`Error::Auth`].
    Auth,
    /// See [`Error::Config`].
    Config,
    /// See [`Error::Redis`].
    Redis,
    /// See [`Error::Internal`].
    Internal,
}

impl Error {
    /// This error's kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Conflict(_) => ErrorKind::Conflict,
            Error::Timeout { .. } => ErrorKind::Timeout,
            Error::Lost { .. } => ErrorKind::Lost,
            Error::NotOwner { .. } => ErrorKind::NotOwner,
            Error::Unavailable { .. } | Error::Quorum { .. } => ErrorKind::Unavailable,
            Error::Auth { .. } => ErrorKind::Auth,
            Error::Config(_) => ErrorKind::Config,
            Error::Redis { .. } => ErrorKind::Redis,
            Error::Internal(_) => ErrorKind::Internal,
        }
    }

    /// The lock is held by someone else.
    pub fn is_conflict(&self) -> bool {
        self.kind() == ErrorKind::Conflict
    }

    /// A bounded wait ran out.
    pub fn is_timeout(&self) -> bool {
        self.kind() == ErrorKind::Timeout
    }

    /// The lease was lost.
    pub fn is_lost(&self) -> bool {
        self.kind() == ErrorKind::Lost
    }

    /// Redis could not be reached.
    pub fn is_unavailable(&self) -> bool {
        self.kind() == ErrorKind::Unavailable
    }

    /// Bad input or settings.
    pub fn is_config(&self) -> bool {
        self.kind() == ErrorKind::Config
    }

    /// Whether trying the same call again later may succeed: the lock was busy or Redis was
    /// briefly unreachable. Bad input, refused credentials and lost leases never heal by retrying.
    pub fn is_retryable(&self) -> bool {
        match self {
            // A majority failed: worth retrying only if some master's failure may heal.
            Error::Quorum { failures, .. } => failures.iter().any(|f| f.error.is_retryable()),
            _ => matches!(self.kind(), ErrorKind::Conflict | ErrorKind::Unavailable),
        }
    }

    /// Who held the lock, when the error is a conflict or a wait that ran out.
    pub fn conflict(&self) -> Option<&Conflict> {
        match self {
            Error::Conflict(conflict) | Error::Timeout { last: conflict, .. } => Some(&**conflict),
            _ => None,
        }
    }

    /// Maps a driver error, naming the node it came from.
    pub(crate) fn from_redis(node: &str, error: redis::RedisError) -> Error {
        let node = node.to_owned();
        let code = error.code().unwrap_or_default();
        // A server that wants a password answers an unauthenticated client's first command
        // with NOAUTH, or, when the command is longer than it lets strangers send (more than
        // 10 arguments, as a script call has), with "Protocol error: unauthenticated …
        // length" (and closes the connection).
        let text = error.to_string();
        if text.contains("Protocol error: unauthenticated") || code == "NOAUTH" {
            return Error::Auth {
                node,
                reason: "the server requires a password and the URL gives none".into(),
            };
        }
        if error.kind() == redis::ErrorKind::AuthenticationFailed || code == "WRONGPASS" {
            return Error::Auth { node, reason: text };
        }
        // A master demoted to replica: its blocked WAIT is aborted (UNBLOCKED), and a WAIT sent
        // to it is refused. Both say the master moved, as READONLY does.
        let demoted = code == "UNBLOCKED" || text.contains("WAIT cannot be used with replica");
        if demoted
            || error.is_io_error()
            || error.is_timeout()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
            // A cluster node whose connection the client dropped (it died) and has not made
            // again: the node is down, as a refused connection says.
            || error.kind() == redis::ErrorKind::ClusterConnectionNotFound
            // READONLY: a master that was demoted to replica by a failover. CLUSTERDOWN: a
            // cluster node that (re)started and has not met the others yet. TRYAGAIN: a script
            // whose keys a slot migration has split between two masters, until it is done.
            // MOVED/ASK left after the cluster client's own redirects: slots still moving (a
            // node rejoining).
            || matches!(
                code,
                "LOADING"
                    | "BUSY"
                    | "TRYAGAIN"
                    | "MASTERDOWN"
                    | "READONLY"
                    | "CLUSTERDOWN"
                    | "MOVED"
                    | "ASK"
            )
        {
            return Error::Unavailable {
                node,
                reason: error.to_string(),
            };
        }
        Error::Redis {
            node,
            source: error,
        }
    }
}

/// A lock held by another owner (or a semaphore with no permit left): who, and for how much
/// longer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Conflict {
    /// The lock's (or semaphore's) key.
    pub key: String,
    /// How long the current lease still runs (`None` when the key has no expiry: a lock set by
    /// another tool without a TTL, which only a forced release frees). For a semaphore: until
    /// the first permit's lease ends.
    pub ttl_left: Option<Duration>,
    /// Who holds it, when the holder wrote holder info (dlock does; other tools do not). For a
    /// semaphore: the holder whose lease ends first.
    pub holder: Option<HolderInfo>,
    /// Every holder that wrote holder info: the lock's one, or each permit holder of a
    /// semaphore.
    pub holders: Vec<HolderInfo>,
    /// A semaphore's permit limit (`None` for a lock).
    pub limit: Option<u32>,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.limit {
            None => write!(f, "lock {:?} is held", self.key)?,
            Some(limit) => write!(
                f,
                "no permit of semaphore {:?} is free ({limit} in all)",
                self.key
            )?,
        }
        if self.limit.is_some() && !self.holders.is_empty() {
            let holders: Vec<String> = self.holders.iter().map(ToString::to_string).collect();
            write!(f, ", held by {}", holders.join(", "))?;
        } else if let Some(holder) = &self.holder {
            write!(f, " by {holder}")?;
        }
        match (self.ttl_left, self.limit) {
            (Some(ttl), None) => write!(f, " (lease ends in {})", humanize(ttl)),
            (Some(ttl), Some(_)) => write!(f, " (the first lease ends in {})", humanize(ttl)),
            (None, None) => write!(f, " (no expiry)"),
            (None, Some(_)) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_predicates_agree() {
        let conflict = Conflict {
            key: "k".into(),
            ttl_left: Some(Duration::from_secs(3)),
            holder: None,
            holders: Vec::new(),
            limit: None,
        };
        let err = Error::Conflict(Box::new(conflict.clone()));
        assert!(err.is_conflict() && err.is_retryable());
        assert_eq!(err.conflict(), Some(&conflict));
        assert_eq!(err.to_string(), "lock \"k\" is held (lease ends in 3.0s)");
        let err = Error::Config("bad".into());
        assert!(err.is_config() && !err.is_retryable());
    }

    /// What a cluster answers while slots move, or while a node is down, is a brief outage:
    /// retried by waiters and releases.
    #[test]
    fn cluster_redirects_and_missing_node_connections_are_retryable() {
        use redis::{ErrorKind, ServerErrorKind};
        for kind in [
            ErrorKind::Server(ServerErrorKind::TryAgain),
            ErrorKind::Server(ServerErrorKind::Moved),
            ErrorKind::Server(ServerErrorKind::Ask),
            ErrorKind::ClusterConnectionNotFound,
        ] {
            let err = Error::from_redis("cluster", redis::RedisError::from((kind, "test")));
            assert!(
                err.is_unavailable() && err.is_retryable(),
                "{kind:?}: {err:?}"
            );
        }
    }

    /// A WAIT cut short, or refused, because its master became a replica: the master moved,
    /// so a waiting caller retries (it was a hard error).
    #[test]
    fn a_demoted_masters_wait_errors_are_retryable() {
        for reply in [
            &b"-UNBLOCKED force unblock from blocking operation, instance state changed \
               (master -> replica?)\r\n"[..],
            b"-ERR WAIT cannot be used with replica instances. Please also note ...\r\n",
        ] {
            let value = redis::parse_redis_value(reply).expect("a RESP error reply");
            let error = value.extract_error().expect_err("an error reply");
            let err = Error::from_redis("master", error);
            assert!(err.is_unavailable() && err.is_retryable(), "{err:?}");
        }
    }
}
