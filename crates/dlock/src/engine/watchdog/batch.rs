//! One batched script operation on one node for many leases, whatever their kind.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::{Script, ScriptInvocation};

use crate::connection::node::Node;
use crate::error::Result;

/// Most leases renewed or released by one script call; larger batches are split (each part is
/// still one round trip) so no single script blocks Redis for long.
pub(super) const MAX_BATCH: usize = 1000;

/// Runs a batched operation (see [`crate::engine::ops`]) for leases `0..count` on `node`: the
/// leases are grouped by script and, on a Redis Cluster, by slot (a script's keys must share
/// one); every group's call is sent at once, so it is still one round trip. `add` puts lease
/// `i`'s keys and arguments into its group's call. Answers (`true`: yes) come in lease order.
pub(super) async fn run<'s>(
    node: &Node,
    count: usize,
    timeout: Duration,
    script: impl Fn(usize) -> &'s Script,
    slot: impl Fn(usize) -> &'s str,
    add: impl Fn(usize, &mut ScriptInvocation<'s>),
) -> Result<Vec<bool>> {
    let mut groups: BTreeMap<(&str, &str), (&Script, Vec<usize>)> = BTreeMap::new();
    let cluster = node.is_cluster();
    for i in 0..count {
        let script = script(i);
        let slot = if cluster { slot(i) } else { "" };
        groups
            .entry((script.get_hash(), slot))
            .or_insert_with(|| (script, Vec::new()))
            .1
            .push(i);
    }
    let calls: Vec<ScriptInvocation<'s>> = groups
        .values()
        .map(|(script, members)| {
            let mut call = script.prepare_invoke();
            for &i in members {
                add(i, &mut call);
            }
            call
        })
        .collect();
    let replies = futures_util::future::join_all(
        calls
            .iter()
            .map(|call| node.eval::<Vec<i64>>(call, timeout)),
    )
    .await;
    let mut answers = vec![false; count];
    for ((_, members), reply) in groups.values().zip(replies) {
        let reply = reply?;
        if reply.len() != members.len() {
            return Err(crate::error::Error::Internal(format!(
                "{}: a batch call answered {} times for {} leases",
                node.name(),
                reply.len(),
                members.len()
            )));
        }
        for (&i, answer) in members.iter().zip(reply) {
            answers[i] = answer == 1;
        }
    }
    Ok(answers)
}
