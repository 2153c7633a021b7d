//! Issue 9: dlock exits as soon as it is done. A lingering wake-up subscription, or a master
//! that is down, never holds the process back (it used to take 10 s: the subscription linger).

use std::process::Command;
use std::time::{Duration, Instant};

use dlock_test::{RedisServer, RedisServers};
use nix::sys::signal::Signal;

use crate::support::{code, dlock, finish, numsub, output, send};

const LIMIT: Duration = Duration::from_secs(30);
const TIMEOUT: Duration = Duration::from_millis(500);

/// How long one whole dlock process takes here (start, connect, one command, exit), doubled:
/// the slack for bounds on a loaded machine.
fn slack(cmd: &mut Command) -> Duration {
    let started = Instant::now();
    let out = output(cmd, LIMIT);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    started.elapsed() * 2
}

/// Three masters, the first one dead, with `key` held on the other two (a majority).
fn first_master_down(key: &str) -> (RedisServers, Vec<String>) {
    let mut servers = RedisServers::start(3);
    servers[0].kill();
    for server in &servers[1..] {
        let _: () = server.cmd("SET", &[key, "someone-else", "EX", "60"]);
    }
    let args = servers
        .urls()
        .into_iter()
        .flat_map(|url| ["--redis".to_owned(), url])
        .collect();
    (servers, args)
}

/// Polls `ready` every 10 ms for up to 20 s.
fn until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_wait_that_times_out_exits_within_a_command_timeout() {
    let server = RedisServer::start();
    let _: () = server.cmd("SET", &["job", "someone-else", "EX", "60"]);
    let slack = slack(dlock(&server).args(["status", "job"]));
    let started = Instant::now();
    let out = output(
        dlock(&server).args([
            "run",
            "--wait",
            "1s",
            "--redis-timeout",
            "500ms",
            "job",
            "--",
            "true",
        ]),
        LIMIT,
    );
    let took = started.elapsed();
    assert_eq!(code(&out), 75);
    let most = Duration::from_secs(1) + TIMEOUT + slack;
    assert!(took <= most, "exited after {took:?} (at most {most:?})");
}

#[test]
fn a_redlock_wait_with_the_first_master_down_exits_within_a_command_timeout() {
    let (servers, args) = first_master_down("job");
    let slack = slack(dlock(&servers[1]).args(["status", "other"]));
    let started = Instant::now();
    let out = output(
        dlock(&servers[1])
            .args(["run", "--wait", "1s", "--redis-timeout", "500ms"])
            .args(&args)
            .args(["job", "--", "true"]),
        LIMIT,
    );
    let took = started.elapsed();
    assert_eq!(code(&out), 75, "{}", String::from_utf8_lossy(&out.stderr));
    let most = Duration::from_secs(1) + TIMEOUT + slack;
    assert!(took <= most, "exited after {took:?} (at most {most:?})");
}

#[test]
fn ctrl_c_while_subscribed_exits_within_a_command_timeout() {
    let server = RedisServer::start();
    let _: () = server.cmd("SET", &["job", "someone-else", "EX", "60"]);
    let slack = slack(dlock(&server).args(["status", "job"]));
    let waiter = dlock(&server)
        .args([
            "run",
            "--wait",
            "forever",
            "--redis-timeout",
            "500ms",
            "job",
            "--",
            "true",
        ])
        .spawn()
        .unwrap();
    until("the waiter subscribed", || {
        numsub(&server, "{job}:dlock:released:job") == 1
    });
    let interrupted = Instant::now();
    send(waiter.id(), Signal::SIGINT);
    let out = finish(waiter, LIMIT);
    let took = interrupted.elapsed();
    assert_eq!(code(&out), 130);
    assert!(took <= TIMEOUT + slack, "exited {took:?} after SIGINT");
}

#[test]
fn ctrl_c_while_waiting_on_redlock_with_the_first_master_down_exits_promptly() {
    let (servers, args) = first_master_down("job");
    let slack = slack(dlock(&servers[1]).args(["status", "other"]));
    let attempts = servers[2].command_calls("evalsha");
    let waiter = dlock(&servers[1])
        .args(["run", "--wait", "forever", "--redis-timeout", "500ms"])
        .args(&args)
        .args(["job", "--", "true"])
        .spawn()
        .unwrap();
    // Busy twice: the first answer, then the retry after (failing to) subscribe; it is now
    // sleeping until its re-check.
    until("the waiter is waiting", || {
        servers[2].command_calls("evalsha") >= attempts + 2
    });
    let interrupted = Instant::now();
    send(waiter.id(), Signal::SIGINT);
    let out = finish(waiter, LIMIT);
    let took = interrupted.elapsed();
    assert_eq!(code(&out), 130, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(took <= TIMEOUT + slack, "exited {took:?} after SIGINT");
}
