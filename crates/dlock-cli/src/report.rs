//! `--report json` and the JSON of `status`, `list` and `release`: stable field names, units
//! in the names (`_ms`), one object per line.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dlock::{HolderInfo, LockStatus, SemaphoreHolder, SemaphoreStatus};
use serde::Serialize;

/// What happened in one `dlock run`, written once at exit.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunReport {
    /// The lock's name.
    pub key: String,
    /// `--limit N`: how many copies may run at once (absent for a plain lock).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// ran, busy, timeout, lost, unconfirmed (the final release got no answer, so the run may
    /// have overlapped another holder), max_runtime, survived_kill (processes of the job
    /// outlived SIGKILL), not_found, not_executable, interrupted,
    /// mismatch (KEY is in use with another --limit, or as a lock where a semaphore was asked
    /// for, or the reverse), error.
    pub outcome: &'static str,
    /// Whether the lock was granted.
    pub acquired: bool,
    /// Time spent getting (or failing to get) the lock.
    pub waited_ms: u64,
    /// Whether the command started.
    pub ran: bool,
    /// The command's exit code, when it exited normally.
    pub exit_code: Option<i32>,
    /// The signal that ended the command, when one did.
    pub signal: Option<i32>,
    /// Whether the lease was lost, or may have been: while running, found lost at release, or
    /// the release could not be confirmed.
    pub lost: bool,
    /// Why it was lost.
    pub loss_reason: Option<String>,
    /// The grant's fencing token.
    pub fencing_token: Option<u64>,
    /// Who held the lock, when it was busy (with --limit: the holder whose lease ends first).
    pub holder: Option<HolderJson>,
    /// With --limit, when every permit was taken: every holder (absent without --limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holders: Option<Vec<HolderJson>>,
    /// How long the command ran.
    pub run_ms: Option<u64>,
    /// How long the lock was held (grant to release).
    pub held_ms: Option<u64>,
    /// dlock's wall-clock start, in ms since the Unix epoch.
    pub started_at_ms: u64,
    /// When dlock asked for the lock (after connecting), in ms since the Unix epoch; the grant
    /// or refusal came `waited_ms` later.
    pub asked_at_ms: Option<u64>,
    /// When dlock first sent the command a stop signal (lease lost or at risk, --max-runtime,
    /// a forwarded terminating signal, leftovers after the leader exited), in ms since the
    /// Unix epoch; absent when the command ended by itself.
    pub stop_sent_at_ms: Option<u64>,
    /// When dlock saw that no process of the command's job was left, in ms since the Unix
    /// epoch: the job's last moment on the lock is no later than this. Absent when the command
    /// did not start, or dlock gave up waiting for processes that survived SIGKILL.
    pub command_ended_at_ms: Option<u64>,
    /// dlock's whole run.
    pub total_ms: u64,
    /// dlock's own exit code.
    pub dlock_exit_code: u8,
}

/// A lock holder, as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct HolderJson {
    pub host: String,
    pub pid: Option<u32>,
    pub label: Option<String>,
    pub acquired_at_ms: u64,
    pub held_for_ms: u64,
    pub fencing_token: u64,
    /// The job is done; the lock is kept until its --min-hold ends (`ttl_left_ms`).
    pub finished: bool,
    /// How many permits the holder has (1 for a lock).
    pub permits: u32,
    /// Held shared (`--shared`): how many readers share it (this entry is the earliest); 0
    /// for an exclusive holder.
    pub readers: u32,
}

impl From<&HolderInfo> for HolderJson {
    fn from(holder: &HolderInfo) -> Self {
        HolderJson {
            host: holder.host.clone(),
            pid: holder.pid,
            label: holder.label.clone(),
            acquired_at_ms: unix_ms(holder.acquired_at),
            held_for_ms: ms(holder.held_for),
            fencing_token: holder.fencing_token,
            finished: holder.finished,
            permits: holder.permits,
            readers: holder.readers,
        }
    }
}

/// A lock's state, as JSON.
#[derive(Debug, Serialize)]
pub struct StatusJson {
    pub key: String,
    /// Always "lock" (a semaphore's state is a [`SemaphoreJson`]).
    pub kind: &'static str,
    pub held: bool,
    pub ttl_left_ms: Option<u64>,
    pub holder: Option<HolderJson>,
    pub last_fencing_token: Option<u64>,
}

impl From<&LockStatus> for StatusJson {
    fn from(status: &LockStatus) -> Self {
        StatusJson {
            key: status.key.clone(),
            kind: "lock",
            held: status.held,
            ttl_left_ms: status.ttl_left.map(ms),
            holder: status.holder.as_ref().map(HolderJson::from),
            last_fencing_token: status.last_fencing_token,
        }
    }
}

/// A semaphore's state, as JSON (`dlock status`, `list`, `release` of a semaphore key).
#[derive(Debug, Serialize)]
pub struct SemaphoreJson {
    pub key: String,
    /// Always "semaphore".
    pub kind: &'static str,
    /// Some permit is taken.
    pub held: bool,
    /// The stored limit (`--limit N`); null when the semaphore is not in use.
    pub limit: Option<u32>,
    /// Permits free right now.
    pub free: u32,
    /// Every holder, the first lease to end first (`release`: before the release).
    pub holders: Vec<PermitHolderJson>,
    pub last_fencing_token: Option<u64>,
    /// `release` only: the holders it freed (all of `holders`, or the one --holder named).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub released: Option<Vec<PermitHolderJson>>,
}

/// One holder of a semaphore's permits, as JSON.
#[derive(Debug, Serialize)]
pub struct PermitHolderJson {
    #[serde(flatten)]
    pub holder: HolderJson,
    /// How long its lease still runs, by the server's clock.
    pub ttl_left_ms: u64,
}

impl From<&SemaphoreHolder> for PermitHolderJson {
    fn from(holder: &SemaphoreHolder) -> Self {
        PermitHolderJson {
            holder: HolderJson::from(&holder.info),
            ttl_left_ms: ms(holder.ttl_left),
        }
    }
}

impl From<&SemaphoreStatus> for SemaphoreJson {
    fn from(status: &SemaphoreStatus) -> Self {
        SemaphoreJson {
            key: status.key.clone(),
            kind: "semaphore",
            held: !status.holders.is_empty(),
            limit: status.limit,
            free: status.free,
            holders: status.holders.iter().map(PermitHolderJson::from).collect(),
            last_fencing_token: status.last_fencing_token,
            released: None,
        }
    }
}

/// Whole milliseconds.
pub fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Milliseconds since the Unix epoch (0 for times before it).
pub fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map(ms).unwrap_or(0)
}

/// One JSON line (serialising these plain structs cannot fail; an empty object if it did).
pub fn to_line<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "{}".into())
}
