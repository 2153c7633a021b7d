//! `dlock bench` end to end: every workload runs and its JSON is complete and sane.

use std::time::Duration;

use dlock_test::RedisServer;
use serde_json::Value;

use crate::support::{code, dlock, output, stderr, stdout, Scratch};

#[test]
fn bench_runs_every_workload_and_reports_json_relative_to_the_floor() {
    let server = RedisServer::start();
    let scratch = Scratch::new();
    let chart = scratch.path("chart.svg");
    let out = output(
        dlock(&server)
            .args([
                "bench",
                "--json",
                "--duration",
                "300ms",
                "--workers",
                "4",
                "--keys",
                "8",
                "--svg",
            ])
            .arg(&chart),
        Duration::from_secs(60),
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let rows: Vec<Value> = stdout(&out)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let names: Vec<&str> = rows
        .iter()
        .map(|r| r["workload"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "floor-ping",
            "floor-cycle",
            "uncontended",
            "contended",
            "contended-fair",
            "contended-barging",
            "semaphore",
            "read-mostly",
            "multi-key",
            "many-keys",
            "many-waiters",
            "run-overhead",
        ]
    );
    let floor_rtt = rows[0]["p50_us"].as_f64().unwrap();
    assert!(floor_rtt > 0.0);
    for row in &rows {
        for field in [
            "workers",
            "ops_per_sec",
            "p50_us",
            "p99_us",
            "violations",
            "floor_rtt_us",
            "rtt_ratio",
        ] {
            assert!(!row[field].is_null(), "{field} missing in {row}");
        }
        assert!(row["ops_per_sec"].as_f64().unwrap() > 0.0, "{row}");
        assert_eq!(row["violations"], 0, "{row}");
        assert_eq!(
            row["floor_rtt_us"].as_f64(),
            Some(floor_rtt),
            "one floor per run"
        );
        let ratio = row["rtt_ratio"].as_f64().unwrap();
        let expected = row["p50_us"].as_f64().unwrap() / floor_rtt;
        assert!((ratio - expected).abs() < 1e-6, "{row}");
    }
    let contended = &rows[3];
    assert_eq!(contended["workers"], 4);
    assert!(contended["min_grants"].as_u64().unwrap() <= contended["max_grants"].as_u64().unwrap());
    let fair = &rows[4];
    for queued in [contended, fair] {
        assert!(
            queued["min_grants"].as_u64().unwrap() > 0,
            "hand-off and fair mode starve no worker: {queued}"
        );
    }
    let barging = &rows[5];
    assert_eq!(barging["workers"], 4);
    let semaphore = &rows[6];
    assert_eq!(semaphore["workers"], 4);
    assert_eq!(semaphore["permits"], 3, "the default");
    assert!(
        semaphore["max_holders"].as_u64().unwrap() <= 3,
        "{semaphore}"
    );
    assert!(
        contended.get("max_holders").is_none(),
        "only the semaphore row has it"
    );
    assert_eq!(rows[7]["workers"], 4, "read-mostly");
    assert_eq!(rows[8]["workers"], 4, "multi-key");
    assert_eq!(rows[9]["workers"], 8, "many-keys");
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("<polyline"));
    let leftovers: Vec<String> = server.cmd("KEYS", &["dlock:bench:*"]);
    assert!(leftovers.is_empty(), "the bench cleans up: {leftovers:?}");
    assert!(stderr(&out).contains("[1/"), "progress lines on stderr");
}

/// The read-write and multi-key workloads: no violation, readers really share, every worker
/// progresses, nothing left behind.
#[test]
fn bench_read_mostly_and_multi_key_run_without_violations() {
    let server = RedisServer::start();
    for workload in ["read-mostly", "multi-key"] {
        let out = output(
            dlock(&server).args([
                "bench",
                "--workload",
                workload,
                "--duration",
                "1s",
                "--json",
            ]),
            Duration::from_secs(60),
        );
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let rows: Vec<Value> = stdout(&out)
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        let row = &rows[2];
        assert_eq!(row["workload"], workload, "{row}");
        assert_eq!(row["workers"], 8, "{row}");
        assert_eq!(row["violations"], 0, "{row}");
        assert!(
            row["min_grants"].as_u64().unwrap() > 0,
            "a worker starved: {row}"
        );
        if workload == "read-mostly" {
            let most = row["max_holders"].as_u64().unwrap();
            assert!(most >= 2, "readers never shared the lock: {row}");
        }
    }
    let leftovers: Vec<String> = server.cmd("KEYS", &["dlock:bench:*"]);
    assert!(leftovers.is_empty(), "the bench cleans up: {leftovers:?}");
}

/// Every lock one client waits on is handed to it: whole rounds of grants, none lost.
#[test]
fn bench_many_waiters_hands_every_lock_to_the_waiting_client() {
    let server = RedisServer::start();
    let out = output(
        dlock(&server).args([
            "bench",
            "--json",
            "--workload",
            "many-waiters",
            "--keys",
            "200",
            "--duration",
            "300ms",
        ]),
        Duration::from_secs(60),
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let row: Value = stdout(&out)
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .find(|row| row["workload"] == "many-waiters")
        .expect("a many-waiters row");
    let grants = row["ops"].as_u64().unwrap();
    assert!(grants >= 200 && grants.is_multiple_of(200), "{row}");
    assert_eq!(row["workers"], 200);
    assert_eq!(row["violations"], 0);
    assert!(row["p50_us"].as_f64().unwrap() > 0.0, "{row}");
}

#[test]
fn bench_semaphore_never_sees_more_holders_than_permits() {
    let server = RedisServer::start();
    let out = output(
        dlock(&server).args([
            "bench",
            "--workload",
            "semaphore",
            "--duration",
            "1s",
            "--permits",
            "2",
            "--json",
        ]),
        Duration::from_secs(60),
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let rows: Vec<Value> = stdout(&out)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let names: Vec<&str> = rows
        .iter()
        .map(|r| r["workload"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["floor-ping", "floor-cycle", "semaphore"]);
    let row = &rows[2];
    assert_eq!(row["workers"], 8, "the default: {row}");
    assert_eq!(row["permits"], 2, "{row}");
    let most = row["max_holders"].as_u64().unwrap();
    assert!(
        (1..=2).contains(&most),
        "max_holders {most} out of 1..=2: {row}"
    );
    assert_eq!(row["violations"], 0, "{row}");
    assert!(row["ops"].as_u64().unwrap() > 0, "{row}");
    assert!(row["ops_per_sec"].as_f64().unwrap() > 0.0, "{row}");
    assert!(row["min_grants"].as_u64().unwrap() <= row["max_grants"].as_u64().unwrap());
    let leftovers: Vec<String> = server.cmd("KEYS", &["dlock:bench:*"]);
    assert!(leftovers.is_empty(), "the bench cleans up: {leftovers:?}");
}

#[test]
fn bench_refuses_zero_permits_as_a_usage_error() {
    let server = RedisServer::start();
    let out = output(
        dlock(&server).args(["bench", "--workload", "semaphore", "--permits", "0"]),
        Duration::from_secs(10),
    );
    assert_eq!(code(&out), 64, "{}", stderr(&out));
    assert!(stderr(&out).contains("--permits"), "{}", stderr(&out));
}
