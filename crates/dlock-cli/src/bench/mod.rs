//! `dlock bench`: how fast are dlock's locks against *your* Redis, compared with the fastest
//! anything could be on the same connection.
//!
//! Every workload is reported with the round-trip floor measured in the same run (`PING`, and a
//! raw `SET NX PX` + compare-and-delete `EVALSHA` cycle), so figures from different machines
//! compare as ratios. Contended runs count mutual-exclusion violations (must be 0), and report
//! each worker's grants (fairness) and the wait for every grant. The semaphore run does the same
//! for a semaphore of N permits, and also reports the most holders seen at once (never above N:
//! more counts as a violation). The read-mostly and multi-key runs do the same for a read-write
//! lock (nine reads per write) and for multi-key locks over overlapping pairs of keys.
//!
//! The bench writes only keys under `dlock:bench:` and frees them when done.

mod handoffs;
mod mixed;
mod occupancy;
mod stats;
mod svg;
mod workloads;

use crate::cli::{BenchArgs, Connection, Workload};
use crate::report::to_line;
use crate::{connect, exit, fail};

/// Worker counts of the contended sweep when `--workers` is not given.
const SWEEP: [usize; 6] = [1, 2, 4, 8, 16, 32];

/// Workers of the semaphore workload when `--workers` is not given.
const SEMAPHORE_WORKERS: usize = 8;

/// Runs the bench; returns dlock's exit code (1 if any run counted a violation).
pub async fn bench(args: BenchArgs) -> u8 {
    // Single-node workloads and the floor use the first --redis; the redlock workload all.
    let first = Connection {
        redis: args.connection.redis[..1].to_vec(),
        ..args.connection.clone()
    };
    let client = match connect(&first).await {
        Ok(client) => client,
        Err(e) => return fail(&e),
    };
    let floor = match workloads::floor(&first.redis[0], args.duration).await {
        Ok(floor) => floor,
        Err(e) => {
            errln!("dlock: bench: measuring the round-trip floor failed: {e}");
            return exit::UNAVAILABLE;
        }
    };
    let mut rows = vec![floor.ping_row(), floor.cycle_row()];
    let wanted = |w: Workload| args.workload == Workload::All || args.workload == w;
    let sweep: Vec<usize> = args
        .workers
        .map_or(SWEEP.to_vec(), |w| vec![usize::from(w)]);
    let mut plan: Vec<(Workload, usize)> = Vec::new();
    if wanted(Workload::Uncontended) {
        plan.push((Workload::Uncontended, 1));
    }
    for workload in [
        Workload::Contended,
        Workload::ContendedFair,
        Workload::ContendedBarging,
    ] {
        if wanted(workload) {
            plan.extend(sweep.iter().map(|&w| (workload, w)));
        }
    }
    if wanted(Workload::Semaphore) {
        let workers = args.workers.map_or(SEMAPHORE_WORKERS, usize::from);
        plan.push((Workload::Semaphore, workers));
    }
    for workload in [Workload::ReadMostly, Workload::MultiKey] {
        if wanted(workload) {
            plan.push((
                workload,
                args.workers.map_or(SEMAPHORE_WORKERS, usize::from),
            ));
        }
    }
    for workload in [Workload::ManyKeys, Workload::ManyWaiters] {
        if wanted(workload) {
            plan.push((workload, usize::from(args.keys)));
        }
    }
    if wanted(Workload::RunOverhead) {
        plan.push((Workload::RunOverhead, 1));
    }
    let masters = args.connection.redis.len();
    if masters > 1 && wanted(Workload::Redlock) {
        plan.push((Workload::Redlock, masters));
    } else if args.workload == Workload::Redlock {
        errln!("dlock: bench: the redlock workload needs --redis repeated (3, 5, … masters)");
        return exit::USAGE;
    }
    for (step, (workload, workers)) in plan.iter().enumerate() {
        errln!(
            "dlock bench: [{}/{}] {} with {workers} worker(s) for {}",
            step + 1,
            plan.len(),
            workload.name(),
            humantime::format_duration(args.duration)
        );
        let run = match workload {
            Workload::Uncontended => workloads::uncontended(&client, args.duration).await,
            Workload::Contended | Workload::ContendedFair | Workload::ContendedBarging => {
                workloads::contended(&first, *workers, *workload, args.duration).await
            }
            Workload::Semaphore => {
                workloads::semaphore(&first, *workers, args.permits, args.duration).await
            }
            Workload::ManyKeys => workloads::many_keys(&client, *workers, args.duration).await,
            Workload::ManyWaiters => handoffs::many_waiters(&first, *workers, args.duration).await,
            Workload::ReadMostly => mixed::read_mostly(&first, *workers, args.duration).await,
            Workload::MultiKey => mixed::multi_key(&first, *workers, args.duration).await,
            Workload::RunOverhead => workloads::run_overhead(&first, args.duration).await,
            Workload::Redlock => match connect(&args.connection).await {
                Ok(redlock) => workloads::redlock(&redlock, args.duration).await,
                Err(e) => return fail(&e),
            },
            Workload::All => unreachable!("All is expanded above"),
        };
        match run {
            Ok(row) => rows.push(row.relative_to(&floor)),
            Err(e) => return fail(&e),
        }
    }
    if args.json {
        for row in &rows {
            outln!("{}", to_line(row));
        }
    } else {
        out!("{}", stats::table(&rows, &floor));
    }
    if let Some(path) = &args.svg {
        let chart = svg::contended_chart(&rows);
        if let Err(e) = std::fs::write(path, chart) {
            errln!("dlock: bench: cannot write {}: {e}", path.display());
            return exit::INTERNAL;
        }
    }
    client.flush().await;
    if rows.iter().any(|row| row.violations > 0) {
        errln!("dlock: bench: MUTUAL EXCLUSION VIOLATED: see the violations column");
        return 1;
    }
    0
}
