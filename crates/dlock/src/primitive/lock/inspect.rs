//! Reading a lock's state for people and tools: `status`, `list`, and the forced release.

use crate::engine::Core;
use crate::error::Result;
use crate::holder::{int, pttl, HolderInfo, LockStatus};
use crate::key::{info_scan_pattern, LockKeys};
use crate::scripts;

/// Keys asked for per `SCAN` step: large enough to walk a big keyspace in few round trips,
/// small enough that no step blocks Redis noticeably.
pub(crate) const SCAN_COUNT: u32 = 1000;

/// Reads (and with `break_it`, deletes) a lock's state on every node. On Redlock the lock
/// counts as held when a majority of nodes hold it.
pub(crate) async fn inspect(core: &Core, keys: &LockKeys, break_it: bool) -> Result<LockStatus> {
    let mut call = scripts::INSPECT.prepare_invoke();
    call.key(&keys.lock)
        .key(&keys.info)
        .key(&keys.fence)
        .arg(if break_it { "break" } else { "read" });
    let nodes = core.nodes();
    let replies = nodes
        .all(|node| node.eval::<Vec<redis::Value>>(&call, node.command_timeout()))
        .await;
    let mut failures = Vec::new();
    let mut held_on = 0;
    let mut status = LockStatus {
        key: keys.lock.clone(),
        held: false,
        ttl_left: None,
        holder: None,
        last_fencing_token: None,
    };
    for (index, reply) in replies.into_iter().enumerate() {
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) if nodes.is_single() => return Err(e),
            Err(e) => {
                failures.push((index, e));
                continue;
            }
        };
        if merge(&mut status, &reply) {
            held_on += 1;
        }
    }
    if nodes.len() - failures.len() < nodes.quorum() {
        return Err(crate::connection::quorum::quorum_error(
            nodes,
            nodes.quorum(),
            "reading a lock",
            failures,
        ));
    }
    status.held = held_on >= nodes.quorum();
    if !status.held {
        status.ttl_left = None;
        status.holder = None;
    }
    Ok(status)
}

/// Merges one node's `inspect.lua` reply into `status`; true when that node holds the lock.
fn merge(status: &mut LockStatus, reply: &[redis::Value]) -> bool {
    let field = |i: usize| reply.get(i).unwrap_or(&redis::Value::Nil);
    let held = int(field(0)) == Some(1);
    let server_now_ms = int(field(3))
        .and_then(|ms| u64::try_from(ms).ok())
        .unwrap_or(0);
    if held {
        let ttl = pttl(field(1));
        status.ttl_left = match (status.ttl_left, ttl) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if status.holder.is_none() {
            status.holder = HolderInfo::parse(field(2), server_now_ms);
        }
    }
    let fence = int(field(4)).and_then(|t| u64::try_from(t).ok());
    status.last_fencing_token = status.last_fencing_token.max(fence);
    held
}

/// The keys matching `pattern` on every node (on Redlock, every master: a lock need not be on
/// the first, which may even be down). On Redlock a majority must answer, since a lock held on
/// a majority is on at least one of any majority; fewer fail the listing.
pub(crate) async fn scan_every_node(core: &Core, pattern: &str) -> Result<Vec<String>> {
    let nodes = core.nodes();
    let scans = nodes.all(|node| node.scan(pattern, SCAN_COUNT)).await;
    let mut keys = Vec::new();
    let mut failures = Vec::new();
    for (index, scan) in scans.into_iter().enumerate() {
        match scan {
            Ok(found) => keys.extend(found),
            Err(e) if nodes.is_single() => return Err(e),
            Err(e) => failures.push((index, e)),
        }
    }
    if nodes.len() - failures.len() < nodes.quorum() {
        let listing = "listing locks";
        return Err(crate::connection::quorum::quorum_error(
            nodes,
            nodes.quorum(),
            listing,
            failures,
        ));
    }
    Ok(keys)
}

/// Every lock held right now through dlock whose name matches `pattern`, sorted by name.
pub(crate) async fn list(core: &Core, pattern: &str) -> Result<Vec<LockStatus>> {
    let keys = scan_every_node(core, &info_scan_pattern(pattern)).await?;
    let names: std::collections::BTreeSet<String> = keys
        .iter()
        .filter_map(|key| LockKeys::name_from_info_key(key))
        .map(str::to_owned)
        .collect();
    let mut held = Vec::with_capacity(names.len());
    for name in names {
        let status = match inspect(core, &LockKeys::new(&name)?, false).await {
            // The name became a semaphore since the scan (a key of another type): not a lock.
            Err(error) if changed_type(&error) => continue,
            other => other?,
        };
        // A lease may have ended between the scan and the read.
        if status.held {
            held.push(status);
        }
    }
    Ok(held)
}

/// Whether `error` says a key holds another type than expected (on one node a server error,
/// on Redlock a quorum of them): what a name that changed kind since a `SCAN` answers.
pub(crate) fn changed_type(error: &crate::Error) -> bool {
    match error {
        crate::Error::Quorum { .. } => !error.is_retryable(),
        _ => error.kind() == crate::ErrorKind::Redis,
    }
}
