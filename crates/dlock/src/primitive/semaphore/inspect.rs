//! Reading a semaphore's state for people and tools (`status`, `list`), the forced release of
//! permits, and the deliberate change of its limit.

use std::collections::BTreeSet;
use std::time::{Duration, UNIX_EPOCH};

use redis::Value;

use crate::connection::quorum::quorum_error;
use crate::engine::Core;
use crate::error::{Error, Result};
use crate::holder::{int, text, HolderInfo};
use crate::key::LockKeys;
use crate::scripts;
use crate::units::millis;

/// A semaphore's state, as [`Client::semaphore_status`](crate::Client::semaphore_status) saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SemaphoreStatus {
    /// The semaphore's key.
    pub key: String,
    /// The stored limit; `None` when nobody holds or waits for the semaphore (then the next
    /// caller's limit is stored).
    pub limit: Option<u32>,
    /// Every holder whose lease runs, the first lease to end first.
    pub holders: Vec<SemaphoreHolder>,
    /// Permits free right now (0 when the holders use all, or more after the limit was
    /// lowered).
    pub free: u32,
    /// The last fencing token granted for this name (kept for days after).
    pub last_fencing_token: Option<u64>,
    /// How many holders a forced release freed (0 for a plain read).
    pub freed: u32,
}

/// One holder of a semaphore's permits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SemaphoreHolder {
    /// Who holds them, how many ([`HolderInfo::permits`]), since when, and the grant's
    /// fencing token (which names the holder in a forced release).
    pub info: HolderInfo,
    /// How long the holder's lease still runs, by the server's clock.
    pub ttl_left: Duration,
}

/// What a read also breaks.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Break {
    None,
    /// Free every permit.
    All,
    /// Free the permits of the grant with this fencing token.
    One(u64),
}

/// Reads (and possibly breaks) a semaphore's state on every node. On Redlock a holder counts
/// when a majority of nodes has it.
pub(crate) async fn read(core: &Core, keys: &LockKeys, action: Break) -> Result<SemaphoreStatus> {
    let mut call = scripts::SEMAPHORE_INSPECT.prepare_invoke();
    let (mode, fence) = match action {
        Break::None => ("read", 0),
        Break::All => ("break", 0),
        Break::One(fence) => ("break-one", fence),
    };
    call.key(&keys.lock)
        .key(&keys.semaphore)
        .key(&keys.fence)
        .arg(mode)
        .arg(fence)
        .arg(&keys.channel);
    let nodes = core.nodes();
    let replies = nodes
        .all(|node| node.eval::<Vec<Value>>(&call, node.command_timeout()))
        .await;
    let mut views = Vec::new();
    let mut failures = Vec::new();
    for (index, reply) in replies.into_iter().enumerate() {
        match reply {
            Ok(reply) => views.push(View::parse(&reply)),
            Err(e) if nodes.is_single() => return Err(e),
            Err(e) => failures.push((index, e)),
        }
    }
    if views.len() < nodes.quorum() {
        return Err(quorum_error(
            nodes,
            nodes.quorum(),
            "reading a semaphore",
            failures,
        ));
    }
    // A holder counts where as many masters hold it as a grant under the stored limit needs.
    let limit = views.iter().filter_map(|v| v.limit).max().unwrap_or(1);
    Ok(merge(&keys.lock, views, nodes.quorum_for(limit)))
}

/// One node's answer.
struct View {
    limit: Option<u32>,
    last_fence: Option<u64>,
    holders: Vec<SemaphoreHolder>,
    freed: u32,
}

impl View {
    /// `{stored limit or -1, server ms, last fence or nil, {holder json...}, freed}`.
    fn parse(reply: &[Value]) -> View {
        let field = |i: usize| reply.get(i).unwrap_or(&Value::Nil);
        let server_now_ms = int(field(1))
            .and_then(|ms| u64::try_from(ms).ok())
            .unwrap_or(0);
        let holders = match field(3) {
            Value::Array(items) => items
                .iter()
                .filter_map(|item| parse_holder(item, server_now_ms))
                .collect(),
            _ => Vec::new(),
        };
        View {
            limit: int(field(0)).and_then(|n| u32::try_from(n).ok()),
            last_fence: int(field(2)).and_then(|n| u64::try_from(n).ok()),
            holders,
            freed: int(field(4))
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0),
        }
    }
}

/// The state a majority agrees on: holders (by fencing token) present on `quorum` views.
fn merge(key: &str, views: Vec<View>, quorum: usize) -> SemaphoreStatus {
    let limit = views.iter().filter_map(|v| v.limit).max();
    let last_fencing_token = views.iter().filter_map(|v| v.last_fence).max();
    let freed = views.iter().map(|v| v.freed).max().unwrap_or(0);
    let mut holders: Vec<SemaphoreHolder> = Vec::new();
    for view in &views {
        for holder in &view.holders {
            let fence = holder.info.fencing_token;
            let seen_on = views
                .iter()
                .filter(|v| v.holders.iter().any(|h| h.info.fencing_token == fence))
                .count();
            if seen_on >= quorum && !holders.iter().any(|h| h.info.fencing_token == fence) {
                holders.push(holder.clone());
            }
        }
    }
    holders.sort_by_key(|h| h.ttl_left);
    let used: u64 = holders.iter().map(|h| u64::from(h.info.permits)).sum();
    let free = u64::from(limit.unwrap_or(0)).saturating_sub(used);
    SemaphoreStatus {
        key: key.to_owned(),
        free: u32::try_from(free).unwrap_or(u32::MAX),
        limit,
        holders,
        last_fencing_token,
        freed,
    }
}

/// Parses one holder's info json (every value a string; see `semaphore/acquire.lua`).
pub(crate) fn parse_holder(item: &Value, server_now_ms: u64) -> Option<SemaphoreHolder> {
    let json: serde_json::Value = serde_json::from_str(&text(item)?).ok()?;
    let field = |name: &str| json.get(name).and_then(serde_json::Value::as_str);
    let number = |name: &str| field(name).and_then(|v| v.parse::<u64>().ok());
    let since_ms = number("since_ms")?;
    let info = HolderInfo {
        host: field("host")?.to_owned(),
        pid: field("pid").and_then(|pid| pid.parse().ok()),
        label: field("label").filter(|l| !l.is_empty()).map(str::to_owned),
        acquired_at: UNIX_EPOCH + Duration::from_millis(since_ms),
        held_for: Duration::from_millis(server_now_ms.saturating_sub(since_ms)),
        fencing_token: number("fence")?,
        finished: false,
        // A read-write lock's readers (same JSON, see `rwlock/acquire.lua`) have no count.
        permits: number("permits").map_or(Some(1), |n| u32::try_from(n).ok())?,
        readers: 0,
    };
    Some(SemaphoreHolder {
        info,
        ttl_left: Duration::from_millis(number("expires_in_ms").unwrap_or(0)),
    })
}

/// Stores a new limit on every node (a majority must confirm); the previous one, if any.
pub(crate) async fn set_limit(
    core: &Core,
    keys: &LockKeys,
    limit: u32,
    keep: Duration,
) -> Result<Option<u32>> {
    let nodes = core.nodes();
    // On Redlock a raise must wait for the holders granted under the old limit to leave.
    let strict = !nodes.is_single();
    let replies = store_limit(core, keys, &limit.to_string(), keep, strict).await;
    if replies.iter().any(|reply| matches!(reply, Ok(-2))) {
        restore(core, keys, keep, &replies).await;
        return Err(Error::Config(format!(
            "semaphore {:?} has holders: on Redlock its limit can only be raised while nobody \
             holds a permit (permits granted under the old limit sit on fewer masters than the \
             new one needs); lowering it is always allowed",
            keys.lock
        )));
    }
    let mut previous = None;
    let mut failures = Vec::new();
    for (index, reply) in replies.into_iter().enumerate() {
        match reply {
            Ok(stored) => previous = previous.max(u32::try_from(stored).ok()),
            Err(e) if nodes.is_single() => return Err(e),
            Err(e) => failures.push((index, e)),
        }
    }
    if nodes.len() - failures.len() < nodes.quorum() {
        return Err(quorum_error(
            nodes,
            nodes.quorum(),
            "changing a semaphore's limit",
            failures,
        ));
    }
    Ok(previous)
}

/// Runs `set_limit.lua` with `limit` (a number, or `unset`) on every node.
async fn store_limit(
    core: &Core,
    keys: &LockKeys,
    limit: &str,
    keep: Duration,
    strict: bool,
) -> Vec<Result<i64>> {
    let call = limit_call(keys, limit, keep, strict);
    core.nodes()
        .all(|node| node.eval::<i64>(&call, node.command_timeout()))
        .await
}

/// A `set_limit.lua` call: `limit` is a number or `unset`; `strict` refuses a raise while
/// permits are out (Redlock).
fn limit_call(
    keys: &LockKeys,
    limit: &str,
    keep: Duration,
    strict: bool,
) -> redis::ScriptInvocation<'static> {
    let mut call = scripts::SEMAPHORE_SET_LIMIT.prepare_invoke();
    super::add_keys(&mut call, keys);
    call.arg(limit)
        .arg(millis(keep))
        .arg(&keys.channel)
        .arg(if strict { "1" } else { "0" })
        .arg(millis(crate::options::FENCE_RETENTION));
    call
}

/// A raise refused on some masters: puts back what the others had (their previous limit, or
/// none), so the masters never disagree on the limit. Best effort; a master that cannot be
/// reached keeps the new limit until the semaphore is idle there (callers naming the old one
/// are refused by it, which is safe).
async fn restore(core: &Core, keys: &LockKeys, keep: Duration, replies: &[Result<i64>]) {
    for (index, reply) in replies.iter().enumerate() {
        let previous = match reply {
            Ok(-2) | Err(_) => continue,
            Ok(-1) => "unset".to_owned(),
            Ok(limit) => limit.to_string(),
        };
        let node = core.nodes().get(index);
        let call = limit_call(keys, &previous, keep, false);
        if let Err(error) = node.eval::<i64>(&call, node.command_timeout()).await {
            tracing::warn!(node = node.name(), %error, "could not put a semaphore's limit back");
        }
    }
}

/// Every semaphore in use whose name matches `pattern`, sorted by name.
pub(crate) async fn list(core: &Core, pattern: &str) -> Result<Vec<SemaphoreStatus>> {
    let found =
        crate::primitive::lock::inspect::scan_every_node(core, &format!("{{*}}:{MARK}{pattern}"))
            .await?;
    let names: BTreeSet<&str> = found.iter().filter_map(|key| name_of(key)).collect();
    let mut in_use = Vec::with_capacity(names.len());
    for name in names {
        let status = match read(core, &LockKeys::new(name)?, Break::None).await {
            // The name became a lock since the scan (a key of another type): not ours.
            Err(error) if crate::primitive::lock::inspect::changed_type(&error) => continue,
            other => other?,
        };
        // It may have gone idle between the scan and the read.
        if status.limit.is_some() {
            in_use.push(status);
        }
    }
    Ok(in_use)
}

/// What follows the slot tag in every semaphore hash's key.
const MARK: &str = "dlock:sem:";

/// The semaphore name behind a semaphore hash key, as `SCAN` finds them.
fn name_of(key: &str) -> Option<&str> {
    let rest = key.strip_prefix('{')?;
    let close = rest.find('}')?;
    let name = rest[close + 1..].strip_prefix(':')?.strip_prefix(MARK)?;
    (LockKeys::new(name).ok()?.semaphore == key).then_some(name)
}

/// Refuses an unreadable fencing token for a forced release of one holder.
pub(crate) fn holder_fence(fence: u64) -> Result<u64> {
    if fence == 0 {
        return Err(Error::Config(
            "a holder is named by its fencing token, which is never 0".into(),
        ));
    }
    Ok(fence)
}
