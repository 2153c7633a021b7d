//! Latency samples, rows of results, and the table.

use std::time::Duration;

use serde::Serialize;

/// A set of latencies.
#[derive(Debug, Default)]
pub struct Samples {
    values: Vec<Duration>,
}

impl Samples {
    pub fn push(&mut self, value: Duration) {
        self.values.push(value);
    }

    pub fn extend(&mut self, other: Samples) {
        self.values.extend(other.values);
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// The `q`-quantile (0.0..=1.0), nearest rank; zero when empty.
    pub fn quantile(&mut self, q: f64) -> Duration {
        if self.values.is_empty() {
            return Duration::ZERO;
        }
        self.values.sort_unstable();
        let rank = ((self.values.len() as f64 * q).ceil() as usize).clamp(1, self.values.len());
        self.values[rank - 1]
    }
}

/// One workload's result: the JSON line and the table row.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub workload: String,
    pub workers: usize,
    pub ops: u64,
    pub ops_per_sec: f64,
    /// Cycle latency (uncontended, many-keys, floors) or wait for the lock (contended).
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub violations: u64,
    /// Contended: the fewest and most grants any worker got (fairness).
    pub min_grants: Option<u64>,
    pub max_grants: Option<u64>,
    /// Semaphore: how many permits there are, and the most holders seen at once (never more
    /// than the permits, or it counts as a violation). Absent for other workloads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permits: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_holders: Option<u64>,
    /// The floor of this run: one PING round trip (p50).
    pub floor_rtt_us: f64,
    /// The floor cycle rate of this run: raw SET NX PX + EVALSHA by one client.
    pub floor_cycle_per_sec: f64,
    /// Latency (p50) divided by the floor round trip.
    pub rtt_ratio: f64,
    /// Throughput divided by the floor cycle rate.
    pub floor_cycle_ratio: f64,
}

impl Row {
    /// A row from raw counts, to be put `relative_to` the floor.
    pub fn new(
        workload: &str,
        workers: usize,
        ops: u64,
        elapsed: Duration,
        mut samples: Samples,
    ) -> Row {
        let secs = elapsed.as_secs_f64().max(f64::EPSILON);
        Row {
            workload: workload.into(),
            workers,
            ops,
            ops_per_sec: ops as f64 / secs,
            p50_us: micros(samples.quantile(0.50)),
            p99_us: micros(samples.quantile(0.99)),
            max_us: micros(samples.quantile(1.0)),
            violations: 0,
            min_grants: None,
            max_grants: None,
            permits: None,
            max_holders: None,
            floor_rtt_us: 0.0,
            floor_cycle_per_sec: 0.0,
            rtt_ratio: 0.0,
            floor_cycle_ratio: 0.0,
        }
    }

    /// Fills in the floor figures and ratios.
    pub fn relative_to(mut self, floor: &Floor) -> Row {
        self.floor_rtt_us = floor.rtt_us;
        self.floor_cycle_per_sec = floor.cycle_per_sec;
        self.rtt_ratio = ratio(self.p50_us, floor.rtt_us);
        self.floor_cycle_ratio = ratio(self.ops_per_sec, floor.cycle_per_sec);
        self
    }
}

/// The round-trip floor of a run.
#[derive(Debug, Clone)]
pub struct Floor {
    pub ping: Row,
    pub cycle: Row,
    pub rtt_us: f64,
    pub cycle_per_sec: f64,
}

impl Floor {
    pub fn new(ping: Row, cycle: Row) -> Floor {
        let rtt_us = ping.p50_us;
        let cycle_per_sec = cycle.ops_per_sec;
        let mut floor = Floor {
            ping,
            cycle,
            rtt_us,
            cycle_per_sec,
        };
        floor.ping = floor.ping.clone().relative_to(&floor);
        floor.cycle = floor.cycle.clone().relative_to(&floor);
        floor
    }

    pub fn ping_row(&self) -> Row {
        self.ping.clone()
    }

    pub fn cycle_row(&self) -> Row {
        self.cycle.clone()
    }
}

fn ratio(value: f64, floor: f64) -> f64 {
    if floor > 0.0 {
        value / floor
    } else {
        0.0
    }
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

/// The human-readable table.
pub fn table(rows: &[Row], floor: &Floor) -> String {
    let mut out = format!(
        "floor: one round trip (PING p50) = {:.0} µs; raw SET NX PX + EVALSHA cycle = {:.0}/s\n\n",
        floor.rtt_us, floor.cycle_per_sec
    );
    out.push_str(&format!(
        "{:<16} {:>7} {:>10} {:>9} {:>9} {:>10} {:>8} {:>9} {:>10} {:>10} {:>8}\n",
        "workload",
        "workers",
        "ops/s",
        "p50 µs",
        "p99 µs",
        "max µs",
        "x RTT",
        "x cycle",
        "violations",
        "grants",
        "holders"
    ));
    for row in rows {
        let grants = match (row.min_grants, row.max_grants) {
            (Some(min), Some(max)) => format!("{min}-{max}"),
            _ => "-".into(),
        };
        let holders = match (row.max_holders, row.permits) {
            (Some(most), Some(permits)) => format!("{most}/{permits}"),
            _ => "-".into(),
        };
        out.push_str(&format!(
            "{:<16} {:>7} {:>10.0} {:>9.0} {:>9.0} {:>10.0} {:>8.2} {:>9.2} {:>10} {:>10} {:>8}\n",
            row.workload,
            row.workers,
            row.ops_per_sec,
            row.p50_us,
            row.p99_us,
            row.max_us,
            row.rtt_ratio,
            row.floor_cycle_ratio,
            row.violations,
            grants,
            holders
        ));
    }
    out.push_str(
        "\np50/p99/max: cycle latency (floor, uncontended, many-keys) or wait for a grant \
         (contended, semaphore, many-waiters: from the releases).\nx RTT: p50 / one round trip. x cycle: ops/s / raw cycle rate. \
         grants: fewest-most grants of one worker.\nholders (semaphore): most holders at once / \
         permits; more than the permits counts as a violation.\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_nearest_rank() {
        let mut samples = Samples::default();
        for ms in 1..=100 {
            samples.push(Duration::from_millis(ms));
        }
        assert_eq!(samples.quantile(0.5), Duration::from_millis(50));
        assert_eq!(samples.quantile(0.99), Duration::from_millis(99));
        assert_eq!(samples.quantile(1.0), Duration::from_millis(100));
        assert_eq!(Samples::default().quantile(0.5), Duration::ZERO);
    }

    #[test]
    fn rows_are_relative_to_the_floor() {
        let mut samples = Samples::default();
        samples.push(Duration::from_micros(200));
        let ping = Row::new("floor-ping", 1, 10_000, Duration::from_secs(1), {
            let mut s = Samples::default();
            s.push(Duration::from_micros(100));
            s
        });
        let cycle = Row::new(
            "floor-cycle",
            1,
            5_000,
            Duration::from_secs(1),
            Samples::default(),
        );
        let floor = Floor::new(ping, cycle);
        let row =
            Row::new("uncontended", 1, 4_500, Duration::from_secs(1), samples).relative_to(&floor);
        assert!((row.rtt_ratio - 2.0).abs() < 1e-9);
        assert!((row.floor_cycle_ratio - 0.9).abs() < 1e-9);
    }
}
