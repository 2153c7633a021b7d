//! The lease while the command runs: renewed past --ttl; when lost, the command is stopped
//! and dlock exits 76.

use std::time::{Duration, Instant};

use dlock_test::{RedisServer, TcpProxy};
use serde_json::Value;

use crate::support::{
    alive, code, dlock, exists, finish, output, read_pid, started, stderr, stdout, wait_for_file,
    Scratch,
};

const LIMIT: Duration = Duration::from_secs(30);

/// A job that records its pid, records the stop signal, and (if `obey`) exits on it.
fn stubborn_job(scratch: &Scratch, obey: bool) -> String {
    let on_term = if obey { "exit 0" } else { ":" };
    format!(
        "echo $$ > {pid}; trap 'echo TERM >> {log}; {on_term}' TERM; \
         touch {started}; while :; do sleep 0.05; done",
        pid = scratch.path("pid").display(),
        log = scratch.path("log").display(),
        started = scratch.path("started").display(),
    )
}

#[test]
fn a_job_that_outlives_its_ttl_keeps_the_lock() {
    let server = RedisServer::start();
    let job = dlock(&server)
        .args(["run", "--ttl", "1s", "long", "--", "sleep", "3"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2200));
    assert!(exists(&server, "long"), "renewed past its 1 s TTL");
    let duplicate = output(dlock(&server).args(["run", "long", "--", "true"]), LIMIT);
    assert_eq!(code(&duplicate), 75);
    let job = finish(job, LIMIT);
    assert_eq!(code(&job), 0, "{}", stderr(&job));
}

#[test]
fn a_deleted_key_stops_the_command_and_exits_76() {
    let server = RedisServer::start();
    let scratch = Scratch::new();
    let job = started(
        dlock(&server).args([
            "run",
            "--ttl",
            "1s",
            "k",
            "--",
            "sh",
            "-c",
            &stubborn_job(&scratch, true),
        ]),
        &scratch.path("started"),
    );
    let _: () = server.cmd("DEL", &["k"]);
    let deleted_at = Instant::now();
    let out = finish(job, LIMIT);
    assert_eq!(code(&out), 76, "{}", stderr(&out));
    assert!(
        deleted_at.elapsed() < Duration::from_secs(3),
        "noticed within a renewal interval"
    );
    assert_eq!(
        scratch.read("log"),
        "TERM\n",
        "the command got the stop signal"
    );
    assert!(
        stderr(&out).contains("lost the lock on k"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_command_that_ignores_the_stop_signal_is_killed_after_the_stop_timeout() {
    let server = RedisServer::start();
    let scratch = Scratch::new();
    let job = started(
        dlock(&server)
            .args([
                "run",
                "--ttl",
                "1s",
                "--stop-timeout",
                "1s",
                "--report",
                "json",
                "k",
                "--",
                "sh",
                "-c",
            ])
            .arg(stubborn_job(&scratch, false)),
        &scratch.path("started"),
    );
    let pid: u32 = scratch.read("pid").trim().parse().unwrap();
    let before_delete = wall_ms();
    let _: () = server.cmd("DEL", &["k"]);
    let deleted_at = Instant::now();
    let out = finish(job, LIMIT);
    let seen_ended = wall_ms();
    assert_eq!(code(&out), 76, "{}", stderr(&out));
    assert!(scratch.read("log").starts_with("TERM"), "stop signal first");
    assert!(
        deleted_at.elapsed() >= Duration::from_secs(1),
        "KILL only after --stop-timeout"
    );
    assert!(!alive(pid), "the command was killed");
    // The report says when dlock began the stop and when the job was gone: the stop after
    // the DEL, the end after the stop timeout, both before dlock exited.
    let report: Value = serde_json::from_str(stderr(&out).lines().last().unwrap()).unwrap();
    let at = |field: &str| {
        report[field]
            .as_u64()
            .unwrap_or_else(|| panic!("{field}: {report}"))
    };
    assert!(before_delete <= at("stop_sent_at_ms"), "{report}");
    assert!(
        at("stop_sent_at_ms") + 1000 <= at("command_ended_at_ms"),
        "{report}"
    );
    assert!(at("command_ended_at_ms") <= seen_ended, "{report}");
}

/// Wall-clock ms since the Unix epoch, as the report's `_at_ms` fields.
fn wall_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.unwrap().as_millis() as u64
}

#[test]
fn a_frozen_redis_stops_the_command_and_exits_76() {
    let mut server = RedisServer::start();
    let scratch = Scratch::new();
    let job = started(
        dlock(&server)
            .args([
                "run",
                "--ttl",
                "1s",
                "--redis-timeout",
                "300ms",
                "k",
                "--",
                "sh",
                "-c",
            ])
            .arg(stubborn_job(&scratch, true)),
        &scratch.path("started"),
    );
    server.pause();
    let out = finish(job, LIMIT);
    server.resume();
    assert_eq!(code(&out), 76, "{}", stderr(&out));
    assert_eq!(scratch.read("log"), "TERM\n");
    // Stopped while renewals failed, before the lease could end (issue 9).
    assert!(
        stderr(&out).contains("cannot renew the lock on k (Redis unreachable"),
        "{}",
        stderr(&out)
    );
}

/// Issue 9: once renewals fail, the command is stopped early enough that it is gone (KILL
/// included) before the lease can end and another client be granted the lock.
#[test]
fn a_partitioned_dlock_kills_a_stubborn_command_before_another_client_gets_the_lock() {
    let server = RedisServer::start();
    let proxy = TcpProxy::start(server.port());
    let scratch = Scratch::new();
    let job = started(
        dlock(&server)
            .env("DLOCK_REDIS_URL", proxy.url())
            .args([
                "run",
                "--ttl",
                "2s",
                "--redis-timeout",
                "200ms",
                "--stop-timeout",
                "1s",
                "k",
                "--",
                "sh",
                "-c",
            ])
            .arg(stubborn_job(&scratch, false)),
        &scratch.path("started"),
    );
    let pid = read_pid(&scratch.path("pid"));
    proxy.cut();
    // Another client, straight to Redis, takes the lock as soon as it can and records whether
    // the first command was still running at that moment.
    let verdict = format!("if kill -0 {pid} 2>/dev/null; then echo alive; else echo gone; fi");
    let second = output(
        dlock(&server).args(["run", "--wait", "20s", "k", "--", "sh", "-c", &verdict]),
        LIMIT,
    );
    let first = finish(job, LIMIT);
    assert_eq!(code(&second), 0, "{}", stderr(&second));
    assert_eq!(
        stdout(&second),
        "gone\n",
        "the first command still ran when the second client got the lock"
    );
    assert!(!alive(pid));
    assert_eq!(code(&first), 76, "{}", stderr(&first));
}

/// Issue 9: a release that cannot be confirmed is not a success: exit 76, and the report
/// says the run may have overlapped another holder.
#[test]
fn a_release_that_cannot_reach_redis_exits_76() {
    let server = RedisServer::start();
    let proxy = TcpProxy::start(server.port());
    let scratch = Scratch::new();
    // The job asks the test to cut dlock's link, waits until it is cut, and exits 0.
    let script = format!(
        "touch {cut_me}; while [ ! -e {cut} ]; do sleep 0.01; done; exit 0",
        cut_me = scratch.path("cut-me").display(),
        cut = scratch.path("cut").display(),
    );
    let job = dlock(&server)
        .env("DLOCK_REDIS_URL", proxy.url())
        .args([
            "run",
            "--ttl",
            "1s",
            "--redis-timeout",
            "200ms",
            "--report",
            "json",
            "k",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .spawn()
        .unwrap();
    assert!(wait_for_file(&scratch.path("cut-me"), LIMIT));
    proxy.cut();
    std::fs::write(scratch.path("cut"), "").unwrap();
    let out = finish(job, LIMIT);
    assert_eq!(code(&out), 76, "{}", stderr(&out));
    let said = stderr(&out);
    assert!(said.contains("may have overlapped"), "{said}");
    let report: Value = serde_json::from_str(said.lines().last().unwrap()).unwrap();
    assert_ne!(report["outcome"], "ran", "{report}");
    assert_eq!(report["exit_code"], 0, "{report}");
    assert_eq!(report["lost"], true, "{report}");
    assert_eq!(report["dlock_exit_code"], 76, "{report}");
}
