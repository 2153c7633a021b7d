//! The workloads of the primitives beyond the lock and the semaphore: a read-mostly
//! read-write lock, and multi-key locks over overlapping pairs of keys. Each counts, inside
//! this process, every moment exclusion was broken (must be 0).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dlock::{LockOptions, Wait};
use tokio::time::Instant;

use super::occupancy::Occupancy;
use super::stats::{Row, Samples};
use super::workloads::gather;
use crate::cli::Connection;

const PREFIX: &str = "dlock:bench:";

/// In every ten grants of a read-mostly worker, how many are writes.
const WRITES_IN_TEN: u64 = 1;

/// `workers` clients on one read-write lock, nine reads for each write, a critical section
/// that only yields: grants/s, waits, fairness, violations (a writer beside anyone, a reader
/// beside a writer); `max_holders` is the most readers seen at once.
pub async fn read_mostly(
    connection: &Connection,
    workers: usize,
    duration: Duration,
) -> dlock::Result<Row> {
    let key = format!("{PREFIX}rw");
    let writers = Arc::new(Occupancy::new(1));
    let readers = Arc::new(Occupancy::new(u32::MAX));
    let violations = Arc::new(AtomicU64::new(0));
    let options = LockOptions::new().wait(Wait::Limit(duration + Duration::from_secs(10)));
    let mut locks = Vec::with_capacity(workers);
    for _ in 0..workers {
        let client = crate::connect(connection).await?;
        locks.push(client.rw_lock_with(&key, options.clone())?);
    }
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::with_capacity(workers);
    for (w, rw) in locks.into_iter().enumerate() {
        let (writers, readers, violations) = (writers.clone(), readers.clone(), violations.clone());
        tasks.push(tokio::spawn(async move {
            let (mut waits, mut grants) = (Samples::default(), 0u64);
            while Instant::now() < deadline {
                let asked = Instant::now();
                // Staggered, so writes of different workers do not line up.
                let write = (grants + w as u64) % 10 < WRITES_IN_TEN;
                let released = if write {
                    let guard = rw.write().await?;
                    waits.push(asked.elapsed());
                    writers.enter();
                    if readers.inside() > 0 {
                        violations.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::task::yield_now().await;
                    writers.leave();
                    guard.release().await
                } else {
                    let guard = rw.read().await?;
                    waits.push(asked.elapsed());
                    readers.enter();
                    if writers.inside() > 0 {
                        violations.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::task::yield_now().await;
                    readers.leave();
                    guard.release().await
                };
                grants += 1;
                match released {
                    Ok(()) => {}
                    Err(e) if e.is_lost() => {
                        violations.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok::<_, dlock::Error>((grants, waits))
        }));
    }
    let (per_worker, all) = gather(tasks).await?;
    let mut row = Row::new(
        "read-mostly",
        workers,
        per_worker.iter().sum(),
        started.elapsed(),
        all,
    );
    row.violations = violations.load(Ordering::SeqCst) + writers.violations();
    row.min_grants = per_worker.iter().min().copied();
    row.max_grants = per_worker.iter().max().copied();
    row.max_holders = Some(readers.max_holders());
    Ok(row)
}

/// Keys the multi-key workload's pairs are drawn from.
const MULTI_KEYS: usize = 4;

/// `workers` clients, each taking a pair of the 4 keys at once (pairs overlap, in both
/// orders), a critical section that only yields: grants/s, waits, fairness, violations (a key
/// held twice).
pub async fn multi_key(
    connection: &Connection,
    workers: usize,
    duration: Duration,
) -> dlock::Result<Row> {
    let keys: Vec<String> = (0..MULTI_KEYS)
        .map(|k| format!("{PREFIX}multi:{k}"))
        .collect();
    let seen: Arc<Vec<Occupancy>> = Arc::new((0..MULTI_KEYS).map(|_| Occupancy::new(1)).collect());
    let options = LockOptions::new().wait(Wait::Limit(duration + Duration::from_secs(10)));
    let mut locks = Vec::with_capacity(workers);
    for w in 0..workers {
        let client = crate::connect(connection).await?;
        // Worker w takes keys w and w + 1 (mod 4), named in either order.
        let (a, b) = (w % MULTI_KEYS, (w + 1) % MULTI_KEYS);
        let pair = if w % 2 == 0 { [a, b] } else { [b, a] };
        let names = [keys[pair[0]].as_str(), keys[pair[1]].as_str()];
        locks.push((client.multi_lock_with(&names, options.clone())?, pair));
    }
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::with_capacity(workers);
    for (multi, pair) in locks {
        let seen = seen.clone();
        tasks.push(tokio::spawn(async move {
            let (mut waits, mut grants) = (Samples::default(), 0u64);
            while Instant::now() < deadline {
                let asked = Instant::now();
                let guard = multi.lock().await?;
                waits.push(asked.elapsed());
                grants += 1;
                pair.iter().for_each(|&k| seen[k].enter());
                tokio::task::yield_now().await;
                pair.iter().for_each(|&k| seen[k].leave());
                match guard.release().await {
                    Ok(()) => {}
                    Err(e) if e.is_lost() => seen[pair[0]].violation(),
                    Err(e) => return Err(e),
                }
            }
            Ok::<_, dlock::Error>((grants, waits))
        }));
    }
    let (per_worker, all) = gather(tasks).await?;
    let mut row = Row::new(
        "multi-key",
        workers,
        per_worker.iter().sum(),
        started.elapsed(),
        all,
    );
    row.violations = seen.iter().map(Occupancy::violations).sum();
    row.min_grants = per_worker.iter().min().copied();
    row.max_grants = per_worker.iter().max().copied();
    Ok(row)
}
