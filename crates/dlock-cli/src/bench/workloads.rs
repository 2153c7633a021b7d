//! The workloads. Each runs for a fixed time and returns a [`Row`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dlock::{Client, LockOptions, Wait};
use redis::aio::MultiplexedConnection;
use tokio::time::Instant;

use super::occupancy::Occupancy;
use super::stats::{Floor, Row, Samples};
use crate::cli::{Connection, Workload};

const PREFIX: &str = "dlock:bench:";

/// The floor: a raw `PING` loop, then a raw `SET NX PX` + compare-and-delete `EVALSHA` loop,
/// by one client on one multiplexed connection (the kind dlock's client uses).
pub async fn floor(url: &str, duration: Duration) -> redis::RedisResult<Floor> {
    let client = redis::Client::open(url)?;
    let mut con: MultiplexedConnection = client.get_multiplexed_async_connection().await?;
    let ping = timed(duration, || {
        let mut con = con.clone();
        async move {
            redis::cmd("PING")
                .query_async::<String>(&mut con)
                .await
                .map(drop)
        }
    })
    .await?;
    let release = redis::Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
    );
    release.prepare_invoke().load_async(&mut con).await?;
    let key = format!("{PREFIX}floor");
    let cycle = timed(duration, || {
        let mut con = con.clone();
        let (key, release) = (key.clone(), release.clone());
        async move {
            let _: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg("token")
                .arg("NX")
                .arg("PX")
                .arg(30_000)
                .query_async(&mut con)
                .await?;
            release
                .key(&key)
                .arg("token")
                .invoke_async::<i64>(&mut con)
                .await
                .map(drop)
        }
    })
    .await?;
    Ok(Floor::new(
        Row::new("floor-ping", 1, ping.0, ping.1, ping.2),
        Row::new("floor-cycle", 1, cycle.0, cycle.1, cycle.2),
    ))
}

/// Runs `op` back to back for `duration`: (count, elapsed, latencies).
async fn timed<F, Fut, E>(duration: Duration, mut op: F) -> Result<(u64, Duration, Samples), E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
{
    let started = Instant::now();
    let mut samples = Samples::default();
    while started.elapsed() < duration {
        let t0 = Instant::now();
        op().await?;
        samples.push(t0.elapsed());
    }
    Ok((samples.len() as u64, started.elapsed(), samples))
}

/// One client, one key: `try_lock` + `release` back to back.
pub async fn uncontended(client: &Client, duration: Duration) -> dlock::Result<Row> {
    let lock = client.lock(&format!("{PREFIX}uncontended"))?;
    let (ops, elapsed, samples) = timed(duration, || async {
        lock.try_lock().await?.release().await
    })
    .await?;
    Ok(Row::new("uncontended", 1, ops, elapsed, samples))
}

/// Uncontended cycles on a Redlock client (every master asked at once).
pub async fn redlock(client: &Client, duration: Duration) -> dlock::Result<Row> {
    let lock = client.lock(&format!("{PREFIX}redlock"))?;
    let (ops, elapsed, samples) = timed(duration, || async {
        lock.try_lock().await?.release().await
    })
    .await?;
    Ok(Row::new("redlock", client.masters(), ops, elapsed, samples))
}

/// `dlock run KEY -- true` against `true` alone, alternately, for `duration`: the row's
/// latencies are the extra time per run (p50 of the differences of neighbouring pairs).
pub async fn run_overhead(connection: &Connection, duration: Duration) -> dlock::Result<Row> {
    let dlock = std::env::current_exe()
        .map_err(|e| dlock::Error::Internal(format!("cannot find the dlock binary: {e}")))?;
    let run = |mut cmd: tokio::process::Command| async move {
        let started = Instant::now();
        let status = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .status()
            .await
            .map_err(|e| dlock::Error::Internal(format!("cannot start a process: {e}")))?;
        if !status.success() {
            return Err(dlock::Error::Internal(format!(
                "a benchmark run failed: {status}"
            )));
        }
        Ok(started.elapsed())
    };
    let started = Instant::now();
    let mut extra = Samples::default();
    let mut runs = 0u64;
    while started.elapsed() < duration {
        let plain = run(tokio::process::Command::new("true")).await?;
        let mut locked = tokio::process::Command::new(&dlock);
        locked.arg("run");
        for url in &connection.redis {
            locked.args(["--redis", url]);
        }
        locked.args([&format!("{PREFIX}run-overhead"), "--", "true"]);
        let locked = run(locked).await?;
        extra.push(locked.saturating_sub(plain));
        runs += 1;
    }
    Ok(Row::new("run-overhead", 1, runs, started.elapsed(), extra))
}

/// `keys` tasks on distinct keys sharing one client (its one multiplexed connection).
pub async fn many_keys(client: &Client, keys: usize, duration: Duration) -> dlock::Result<Row> {
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(keys);
    for i in 0..keys {
        let lock = client.lock(&format!("{PREFIX}many:{i}"))?;
        tasks.push(tokio::spawn(async move {
            timed(duration, || async {
                lock.try_lock().await?.release().await
            })
            .await
        }));
    }
    let mut ops = 0;
    let mut all = Samples::default();
    for task in tasks {
        let (count, _, samples) = task
            .await
            .map_err(|e| dlock::Error::Internal(format!("bench task failed: {e}")))??;
        ops += count;
        all.extend(samples);
    }
    Ok(Row::new("many-keys", keys, ops, started.elapsed(), all))
}

/// `workers` clients (each its own connections, as separate processes would have) contend for
/// one key with an almost empty critical section. Counts violations: a grant while another
/// worker is inside, and a release that finds the lease lost (the worker may have overlapped
/// the next holder).
///
/// The critical section yields once: on dlock's current-thread runtime nothing else runs
/// between entering and leaving unless the holder awaits, so without the yield no other
/// worker could ever observe it inside.
pub async fn contended(
    connection: &Connection,
    workers: usize,
    workload: Workload,
    duration: Duration,
) -> dlock::Result<Row> {
    let name = workload.name();
    let key = format!("{PREFIX}{name}");
    let inside = Arc::new(AtomicU64::new(0));
    let violations = Arc::new(AtomicU64::new(0));
    let options = LockOptions::new()
        .fair(workload == Workload::ContendedFair)
        .handoff(workload != Workload::ContendedBarging)
        .wait(Wait::Limit(duration + Duration::from_secs(10)));
    let mut locks = Vec::with_capacity(workers);
    for _ in 0..workers {
        let client = crate::connect(connection).await?;
        locks.push(client.lock_with(&key, options.clone())?);
    }
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::with_capacity(workers);
    for lock in locks {
        let (inside, violations) = (inside.clone(), violations.clone());
        tasks.push(tokio::spawn(async move {
            let mut waits = Samples::default();
            let mut grants = 0u64;
            while Instant::now() < deadline {
                let asked = Instant::now();
                let guard = lock.lock().await?;
                waits.push(asked.elapsed());
                grants += 1;
                if inside.fetch_add(1, Ordering::SeqCst) > 0 {
                    violations.fetch_add(1, Ordering::SeqCst);
                }
                // Let every other task run (and every reply that arrived meanwhile be read)
                // while this worker is inside.
                tokio::task::yield_now().await;
                inside.fetch_sub(1, Ordering::SeqCst);
                match guard.release().await {
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
    let ops = per_worker.iter().sum();
    let mut row = Row::new(name, workers, ops, started.elapsed(), all);
    row.violations = violations.load(Ordering::SeqCst);
    row.min_grants = per_worker.iter().min().copied();
    row.max_grants = per_worker.iter().max().copied();
    Ok(row)
}

/// `workers` clients (each its own connections, as for `contended`) share one semaphore of
/// `permits` permits; each acquires (waiting), holds an almost empty critical section and
/// releases. Records the most holders at once, counted in this process from the moment an
/// acquire returns until just before the release is sent; a count above `permits` is a
/// violation, and so is a release that finds the lease lost.
///
/// The critical section yields once, as in [`contended`]: otherwise no other worker could run
/// while one holds a permit, and the count could never exceed 1.
pub async fn semaphore(
    connection: &Connection,
    workers: usize,
    permits: u32,
    duration: Duration,
) -> dlock::Result<Row> {
    let key = format!("{PREFIX}semaphore");
    let seen = Arc::new(Occupancy::new(permits));
    let options = LockOptions::new()
        .fair(false)
        .wait(Wait::Limit(duration + Duration::from_secs(10)));
    let mut semaphores = Vec::with_capacity(workers);
    for _ in 0..workers {
        let client = crate::connect(connection).await?;
        semaphores.push(client.semaphore_with(&key, permits, options.clone())?);
    }
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::with_capacity(workers);
    for semaphore in semaphores {
        let seen = seen.clone();
        tasks.push(tokio::spawn(async move {
            let mut waits = Samples::default();
            let mut grants = 0u64;
            while Instant::now() < deadline {
                let asked = Instant::now();
                let permit = semaphore.acquire().await?;
                waits.push(asked.elapsed());
                grants += 1;
                seen.enter();
                tokio::task::yield_now().await;
                seen.leave();
                match permit.release().await {
                    Ok(()) => {}
                    Err(e) if e.is_lost() => seen.violation(),
                    Err(e) => return Err(e),
                }
            }
            Ok::<_, dlock::Error>((grants, waits))
        }));
    }
    let (per_worker, all) = gather(tasks).await?;
    let ops = per_worker.iter().sum();
    let mut row = Row::new("semaphore", workers, ops, started.elapsed(), all);
    row.violations = seen.violations();
    row.min_grants = per_worker.iter().min().copied();
    row.max_grants = per_worker.iter().max().copied();
    row.permits = Some(permits);
    row.max_holders = Some(seen.max_holders());
    Ok(row)
}

/// Waits for contending workers; each reports its grants and its waits. Returns the grants
/// per worker and every wait.
pub(super) async fn gather(
    tasks: Vec<tokio::task::JoinHandle<dlock::Result<(u64, Samples)>>>,
) -> dlock::Result<(Vec<u64>, Samples)> {
    let mut per_worker = Vec::with_capacity(tasks.len());
    let mut all = Samples::default();
    for task in tasks {
        let (grants, waits) = task
            .await
            .map_err(|e| dlock::Error::Internal(format!("bench task failed: {e}")))??;
        per_worker.push(grants);
        all.extend(waits);
    }
    Ok((per_worker, all))
}
