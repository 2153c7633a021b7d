//! `dlock run --shared`: shared copies run together, an exclusive copy runs alone, and a
//! waiting exclusive copy is not starved by shared ones.

use std::time::{Duration, Instant};

use dlock_test::{RedisServer, RedisServers};
use nix::sys::signal::Signal;

use crate::support::{
    code, dlock, epsilon, exists, finish, output, send, started, stderr, stdout, wait_until,
    Scratch,
};

const LIMIT: Duration = Duration::from_secs(20);

/// A `dlock run --shared KEY` whose job creates `marker` and then sleeps `seconds`.
fn shared(
    server: &RedisServer,
    key: &str,
    marker: &std::path::Path,
    seconds: u32,
) -> std::process::Child {
    let job = format!("touch {}; sleep {seconds}", marker.display());
    started(
        dlock(server).args(["run", "--shared", key, "--", "sh", "-c", &job]),
        marker,
    )
}

#[test]
fn shared_copies_run_together_and_an_exclusive_copy_is_refused_naming_them() {
    let server = RedisServer::start();
    let scratch = Scratch::new();
    let copies: Vec<_> = (0..3)
        .map(|i| shared(&server, "report", &scratch.path(&format!("s{i}")), 2))
        .collect();
    let exclusive = output(dlock(&server).args(["run", "report", "--", "true"]), LIMIT);
    assert_eq!(code(&exclusive), 75, "{}", stderr(&exclusive));
    let message = stderr(&exclusive);
    assert!(
        message.starts_with("dlock: another process is already running report (held by ")
            && message.contains("and 2 other readers"),
        "{message}"
    );
    let status = output(dlock(&server).args(["status", "report"]), LIMIT);
    assert!(
        stdout(&status).contains("shared by:     3 readers"),
        "{}",
        stdout(&status)
    );
    let json = output(dlock(&server).args(["status", "--json", "report"]), LIMIT);
    let json: serde_json::Value = serde_json::from_str(stdout(&json).trim()).unwrap();
    assert_eq!(json["holder"]["readers"], 3, "{json}");
    let list = output(dlock(&server).args(["list"]), LIMIT);
    assert!(stdout(&list).contains("shared 3"), "{}", stdout(&list));
    for copy in copies {
        let out = finish(copy, LIMIT);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
    }
    assert!(!exists(&server, "report"), "released at the end");
    let alone = output(dlock(&server).args(["run", "report", "--", "true"]), LIMIT);
    assert_eq!(code(&alone), 0, "{}", stderr(&alone));
}

/// An exclusive copy waiting behind a shared one makes later shared copies queue behind it:
/// it runs as soon as the first shared copy ends, before the later one.
#[test]
fn a_waiting_exclusive_copy_runs_before_shared_copies_that_came_later() {
    let server = RedisServer::start();
    let scratch = Scratch::new();
    let order = scratch.path("order");
    let first = shared(&server, "db", &scratch.path("first"), 2);
    let exclusive_job = format!("echo exclusive >> {}", order.display());
    let exclusive = dlock(&server)
        .args([
            "run",
            "--wait",
            "20s",
            "db",
            "--",
            "sh",
            "-c",
            &exclusive_job,
        ])
        .spawn()
        .unwrap();
    let queued = wait_until(LIMIT, || {
        server.cmd::<i64>("ZCARD", &["{db}:dlock:queue-leases:db"]) == 1
    });
    assert!(queued, "the exclusive copy never queued");
    let refused = output(
        dlock(&server).args(["run", "--shared", "db", "--", "true"]),
        LIMIT,
    );
    assert_eq!(code(&refused), 75);
    assert!(
        stderr(&refused).contains("an exclusive copy is waiting for db"),
        "{}",
        stderr(&refused)
    );
    let later_job = format!("echo shared >> {}", order.display());
    let later = output(
        dlock(&server).args([
            "run", "--shared", "--wait", "20s", "db", "--", "sh", "-c", &later_job,
        ]),
        LIMIT,
    );
    assert_eq!(code(&later), 0, "{}", stderr(&later));
    for out in [finish(first, LIMIT), finish(exclusive, LIMIT)] {
        assert_eq!(code(&out), 0, "{}", stderr(&out));
    }
    assert_eq!(scratch.read("order"), "exclusive\nshared\n");
}

/// A shared copy killed with SIGKILL (dlock and its job) blocks an exclusive copy for at most
/// its TTL.
#[test]
fn a_killed_shared_copy_frees_the_key_within_its_ttl() {
    let server = RedisServer::start();
    let scratch = Scratch::new();
    let marker = scratch.path("started");
    let job = format!("touch {}; sleep 30", marker.display());
    let mut victim = started(
        dlock(&server).args([
            "run", "--shared", "--ttl", "1s", "k", "--", "sh", "-c", &job,
        ]),
        &marker,
    );
    let pid = victim.id();
    send(pid, Signal::SIGKILL);
    let killed_at = Instant::now();
    let _ = victim.wait();
    let exclusive = output(
        dlock(&server).args(["run", "--wait", "10s", "k", "--", "true"]),
        LIMIT,
    );
    let blocked = killed_at.elapsed();
    assert_eq!(code(&exclusive), 0, "{}", stderr(&exclusive));
    let bound = Duration::from_secs(1) + epsilon(&server) + Duration::from_millis(500);
    assert!(
        blocked <= bound,
        "blocked {blocked:?} by a dead shared copy"
    );
}

#[test]
fn the_job_learns_it_is_shared_and_the_last_exclusive_token() {
    let server = RedisServer::start();
    let exclusive = output(
        dlock(&server).args(["run", "t", "--", "sh", "-c", "echo $DLOCK_FENCING_TOKEN"]),
        LIMIT,
    );
    let token = stdout(&exclusive).trim().to_owned();
    assert!(token.parse::<u64>().is_ok(), "{token:?}");
    let shared = output(
        dlock(&server).args([
            "run",
            "--shared",
            "t",
            "--",
            "sh",
            "-c",
            "echo $DLOCK_SHARED $DLOCK_FENCING_TOKEN",
        ]),
        LIMIT,
    );
    assert_eq!(code(&shared), 0, "{}", stderr(&shared));
    assert_eq!(stdout(&shared).trim(), format!("1 {token}"));
}

#[test]
fn shared_with_limit_or_min_hold_is_a_usage_error_and_redlock_runs_it() {
    let server = RedisServer::start();
    for extra in [&["--limit", "2"][..], &["--min-hold", "1s"]] {
        let out = output(
            dlock(&server)
                .args(["run", "--shared"])
                .args(extra)
                .args(["k", "--", "true"]),
            LIMIT,
        );
        assert_eq!(code(&out), 64, "{extra:?}: {}", stderr(&out));
    }
    let servers = RedisServers::start(3);
    let mut redlock = dlock(&server);
    redlock.args(["run", "--shared"]);
    for url in servers.urls() {
        redlock.args(["--redis", &url]);
    }
    let out = output(redlock.args(["k", "--", "true"]), LIMIT);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}
