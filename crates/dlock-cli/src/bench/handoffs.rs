//! A client that waits on many locks at once: every one of them handed to it together.

use std::time::Duration;

use dlock::{Client, LockGuard, LockOptions, Wait};
use redis::aio::MultiplexedConnection;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::stats::{Row, Samples};
use crate::cli::Connection;

const PREFIX: &str = "dlock:bench:many-waiters:";

/// How long the waiters may take to queue before the run gives up.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(60);

/// One client holds `keys` locks while a second one waits on all of them (a task and a
/// subscription per lock); once every waiter has queued, the holder releases all of them at
/// once, so `keys` hand-offs reach the waiting client's inbox together. Repeats for
/// `duration`. The row's latencies are the waits from the moment the releases start to each
/// grant; a waiter's release that finds its lease lost counts as a violation.
pub async fn many_waiters(
    connection: &Connection,
    keys: usize,
    duration: Duration,
) -> dlock::Result<Row> {
    let holder = crate::connect(connection).await?;
    let waiter = crate::connect(connection).await?;
    let mut queues = queue_connection(&connection.redis[0]).await?;
    let started = Instant::now();
    let (mut grants, mut waits, mut violations) = (0, Samples::default(), 0);
    while grants == 0 || started.elapsed() < duration {
        let held = take_all(&holder, keys).await?;
        let mut waiting = JoinSet::new();
        for i in 0..keys {
            let lock = waiter.lock_with(
                &name(i),
                LockOptions::new().wait(Wait::Limit(duration + QUEUE_TIMEOUT)),
            )?;
            waiting.spawn(async move { lock.lock().await.map(|guard| (Instant::now(), guard)) });
        }
        all_queued(&mut queues, keys).await?;
        let released = Instant::now();
        release_all(held).await?;
        let mut taken = Vec::with_capacity(keys);
        while let Some(joined) = waiting.join_next().await {
            let (at, guard) = joined.map_err(internal)??;
            waits.push(at - released);
            taken.push(guard);
        }
        grants += keys as u64;
        violations += release_all(taken).await?;
    }
    let mut row = Row::new("many-waiters", keys, grants, started.elapsed(), waits);
    row.violations = violations;
    Ok(row)
}

fn name(i: usize) -> String {
    format!("{PREFIX}{i}")
}

fn internal(e: impl std::fmt::Display) -> dlock::Error {
    dlock::Error::Internal(format!("bench task failed: {e}"))
}

/// The holder takes every lock (none may be held by anyone else).
async fn take_all(holder: &Client, keys: usize) -> dlock::Result<Vec<LockGuard>> {
    let mut held = Vec::with_capacity(keys);
    for i in 0..keys {
        held.push(holder.lock(&name(i))?.try_lock().await?);
    }
    Ok(held)
}

/// Releases every guard at once; returns how many found their lease lost.
async fn release_all(guards: Vec<LockGuard>) -> dlock::Result<u64> {
    let mut releases = JoinSet::new();
    for guard in guards {
        releases.spawn(guard.release());
    }
    let mut lost = 0;
    while let Some(released) = releases.join_next().await {
        match released.map_err(internal)? {
            Ok(()) => {}
            Err(e) if e.is_lost() => lost += 1,
            Err(e) => return Err(e),
        }
    }
    Ok(lost)
}

async fn queue_connection(url: &str) -> dlock::Result<MultiplexedConnection> {
    let unavailable = |e: redis::RedisError| dlock::Error::Unavailable {
        node: "bench".into(),
        reason: e.to_string(),
    };
    redis::Client::open(url)
        .map_err(unavailable)?
        .get_multiplexed_async_connection()
        .await
        .map_err(unavailable)
}

/// Waits until every lock's wait queue holds its waiter (one pipelined `LLEN` per look).
async fn all_queued(queues: &mut MultiplexedConnection, keys: usize) -> dlock::Result<()> {
    let deadline = Instant::now() + QUEUE_TIMEOUT;
    loop {
        let mut lengths = redis::pipe();
        for i in 0..keys {
            let name = name(i);
            lengths.llen(format!("{{{name}}}:dlock:queue:{name}"));
        }
        let lengths: Vec<usize> =
            lengths
                .query_async(queues)
                .await
                .map_err(|e| dlock::Error::Unavailable {
                    node: "bench".into(),
                    reason: e.to_string(),
                })?;
        if lengths.iter().all(|&length| length >= 1) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(dlock::Error::Internal(format!(
                "the waiters did not queue within {QUEUE_TIMEOUT:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
