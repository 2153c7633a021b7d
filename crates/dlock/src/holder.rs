//! Who holds a lock: the holder info dlock writes beside every lock it grants.
//!
//! Holder info lives in a hash next to the lock key and expires with the lease, so it never
//! outlives the lock it describes. Locks taken by other tools have none: their holder shows as
//! unknown, but they still exclude dlock's owners and vice versa.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::Value;

use crate::units::humanize;

/// The holder of a lock, as recorded when it was granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderInfo {
    /// Host name of the holder's machine.
    pub host: String,
    /// Process id of the holder on that host.
    pub pid: Option<u32>,
    /// Free-form label given by the holder (e.g. the command it runs); `None` when empty.
    pub label: Option<String>,
    /// When the lock was granted, by the Redis server's clock.
    pub acquired_at: SystemTime,
    /// How long it has been held, by the Redis server's clock (no client clock involved).
    pub held_for: Duration,
    /// The fencing token of this grant.
    pub fencing_token: u64,
    /// The holder's work is done and it released the lock with a minimum hold
    /// ([`LockGuard::release_after`](crate::LockGuard::release_after)): the lock stays taken
    /// until its TTL ends, and nobody renews it.
    pub finished: bool,
    /// How many permits this holder has (1 for a lock; a semaphore's holder may take more).
    pub permits: u32,
    /// A read-write lock held for reading: how many readers share it (this info names the
    /// earliest); 0 for an exclusive holder.
    pub readers: u32,
}

impl fmt::Display for HolderInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.host)?;
        if let Some(pid) = self.pid {
            write!(f, " pid {pid}")?;
        }
        match self.readers {
            0 => {}
            1 => write!(f, " (reading)")?,
            n => write!(f, " and {} other readers", n - 1)?,
        }
        if self.permits > 1 {
            write!(f, " ({} permits)", self.permits)?;
        }
        write!(f, " for {}", humanize(self.held_for))?;
        if self.finished {
            write!(f, " (finished; kept for its minimum hold)")?;
        }
        Ok(())
    }
}

impl HolderInfo {
    /// Parses the `HGETALL` of a holder-info hash; `server_now_ms` is the server's clock at the
    /// same moment. `None` when the hash is missing or incomplete (a lock set by another tool).
    pub(crate) fn parse(fields: &Value, server_now_ms: u64) -> Option<HolderInfo> {
        let Value::Array(items) = fields else {
            return None;
        };
        let mut host = None;
        let mut pid = None;
        let mut label = None;
        let mut since_ms = None;
        let mut fence = None;
        let mut finished = false;
        let mut readers = 0;
        for pair in items.chunks_exact(2) {
            let (Some(name), Some(value)) = (text(&pair[0]), text(&pair[1])) else {
                continue;
            };
            match name.as_str() {
                "host" => host = Some(value),
                "pid" => pid = value.parse().ok(),
                "label" => label = Some(value).filter(|l| !l.is_empty()),
                "since_ms" => since_ms = value.parse::<u64>().ok(),
                "fence" => fence = value.parse().ok(),
                "finished" => finished = value == "1",
                "readers" => readers = value.parse().unwrap_or(0),
                _ => {}
            }
        }
        let since_ms = since_ms?;
        Some(HolderInfo {
            host: host?,
            pid,
            label,
            acquired_at: UNIX_EPOCH + Duration::from_millis(since_ms),
            held_for: Duration::from_millis(server_now_ms.saturating_sub(since_ms)),
            fencing_token: fence?,
            finished,
            permits: 1,
            readers,
        })
    }
}

/// A lock's state as [`Client::status`](crate::Client::status) saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockStatus {
    /// The lock's key.
    pub key: String,
    /// Whether some owner (dlock or another tool) holds the lock.
    pub held: bool,
    /// Time left on the lease; `None` when free, or held without an expiry.
    pub ttl_left: Option<Duration>,
    /// Holder info, when the holder wrote it.
    pub holder: Option<HolderInfo>,
    /// The last fencing token granted for this name (kept for days after the lock was freed).
    pub last_fencing_token: Option<u64>,
}

/// A Redis bulk or simple string as UTF-8 text (lossy: names and labels are for display).
pub(crate) fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A Redis integer (or a number sent as a string).
pub(crate) fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        other => text(other)?.parse().ok(),
    }
}

/// A `PTTL` reply as a duration: `None` for "no expiry" (-1) or "no key" (-2).
pub(crate) fn pttl(value: &Value) -> Option<Duration> {
    int(value)
        .and_then(|ms| u64::try_from(ms).ok())
        .map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn parses_complete_holder_info() {
        let fields = Value::Array(
            [
                "host",
                "web-1",
                "pid",
                "42",
                "label",
                "rake main:hello",
                "since_ms",
                "1000",
                "fence",
                "77",
            ]
            .into_iter()
            .map(bulk)
            .collect(),
        );
        let info = HolderInfo::parse(&fields, 4500).expect("complete");
        assert_eq!(info.host, "web-1");
        assert_eq!(info.pid, Some(42));
        assert_eq!(info.label.as_deref(), Some("rake main:hello"));
        assert_eq!(info.held_for, Duration::from_millis(3500));
        assert_eq!(info.fencing_token, 77);
        assert_eq!(info.to_string(), "web-1 pid 42 for 3.5s");
    }

    #[test]
    fn missing_or_foreign_info_is_none() {
        assert_eq!(HolderInfo::parse(&Value::Array(vec![]), 0), None);
        assert_eq!(HolderInfo::parse(&Value::Nil, 0), None);
        let partial = Value::Array(vec![bulk("host"), bulk("x")]);
        assert_eq!(HolderInfo::parse(&partial, 0), None);
    }

    #[test]
    fn pttl_special_values_are_none() {
        assert_eq!(pttl(&Value::Int(-1)), None);
        assert_eq!(pttl(&Value::Int(-2)), None);
        assert_eq!(pttl(&Value::Int(1500)), Some(Duration::from_millis(1500)));
    }
}
