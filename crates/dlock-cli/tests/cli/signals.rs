//! Signals: forwarded to the command; the lock outlives the command, never the reverse;
//! Ctrl-C while waiting; the whole process group is stopped.

use std::time::{Duration, Instant};

use dlock_test::RedisServer;
use nix::sys::signal::Signal;

use crate::support::{
    alive, code, dlock, exists, finish, output, send, started, stdout, wait_for_file, Scratch,
};

const LIMIT: Duration = Duration::from_secs(30);

/// A job that logs `signal` when it arrives, lingers a second (the lock must still be held
/// then), logs "done" and exits 0.
fn graceful_job(scratch: &Scratch, signal: &str) -> String {
    format!(
        "trap 'echo {signal} >> {log}; sleep 1; echo done >> {log}; exit 0' {signal}; \
         touch {started}; while :; do sleep 0.05; done",
        log = scratch.path("log").display(),
        started = scratch.path("started").display(),
    )
}

fn forwards_and_releases_after_the_child(signal: Signal, name: &str) {
    let server = RedisServer::start();
    let scratch = Scratch::new();
    let job = started(
        dlock(&server).args(["run", "k", "--", "sh", "-c", &graceful_job(&scratch, name)]),
        &scratch.path("started"),
    );
    send(job.id(), signal);
    assert!(
        wait_for_file(&scratch.path("log"), LIMIT),
        "{name} reached the command"
    );
    // The command is winding down: the lock must still be held.
    assert!(!scratch.read("log").contains("done"));
    assert!(exists(&server, "k"), "released before the command exited");
    let out = finish(job, LIMIT);
    assert_eq!(code(&out), 0, "the command's own exit code");
    assert_eq!(scratch.read("log"), format!("{name}\ndone\n"));
    assert!(!exists(&server, "k"), "released after the command exited");
}

#[test]
fn sigterm_reaches_the_child_and_the_lock_is_released_after_it_exits() {
    forwards_and_releases_after_the_child(Signal::SIGTERM, "TERM");
}

#[test]
fn sighup_reaches_the_child_and_the_lock_is_released_after_it_exits() {
    forwards_and_releases_after_the_child(Signal::SIGHUP, "HUP");
}

#[test]
fn usr1_is_forwarded_without_stopping_anything() {
    let server = RedisServer::start();
    let scratch = Scratch::new();
    let script = format!(
        "trap 'echo USR1 >> {log}' USR1; touch {started}; \
         while [ ! -s {log} ]; do sleep 0.05; done; echo finished",
        log = scratch.path("log").display(),
        started = scratch.path("started").display(),
    );
    let job = started(
        dlock(&server).args(["run", "k", "--", "sh", "-c", &script]),
        &scratch.path("started"),
    );
    send(job.id(), Signal::SIGUSR1);
    let out = finish(job, LIMIT);
    assert_eq!(code(&out), 0);
    assert_eq!(stdout(&out), "finished\n");
}

#[test]
fn ctrl_c_while_waiting_exits_cleanly_and_leaves_no_lock() {
    let server = RedisServer::start();
    let scratch = Scratch::new();
    let holder_job = format!("touch {}; sleep 2", scratch.path("holding").display());
    let holder = started(
        dlock(&server).args(["run", "w", "--", "sh", "-c", &holder_job]),
        &scratch.path("holding"),
    );
    let waiter = dlock(&server)
        .args(["run", "--wait", "forever", "w", "--", "echo", "waiter ran"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let interrupted_at = Instant::now();
    send(waiter.id(), Signal::SIGINT);
    let waiter = finish(waiter, LIMIT);
    assert_eq!(code(&waiter), 130, "128 + SIGINT");
    assert!(
        interrupted_at.elapsed() < Duration::from_secs(2),
        "exits promptly"
    );
    assert_eq!(stdout(&waiter), "", "the command never ran");
    assert_eq!(code(&finish(holder, LIMIT)), 0);
    assert!(!exists(&server, "w"), "no lock left behind");
    assert!(!exists(&server, "{w}:dlock:info:w"));
}

#[test]
fn a_grandchild_that_ignores_sigterm_is_killed_when_the_command_is_stopped() {
    let server = RedisServer::start();
    let scratch = Scratch::new();
    let script = format!(
        "sh -c 'trap \"\" TERM; echo $$ > {gc}; while :; do sleep 0.05; done' & wait",
        gc = scratch.path("grandchild").display(),
    );
    let out = output(
        dlock(&server).args([
            "run",
            "--max-runtime",
            "1s",
            "--stop-timeout",
            "1s",
            "k",
            "--",
            "sh",
            "-c",
            &script,
        ]),
        LIMIT,
    );
    assert_eq!(code(&out), 124);
    let grandchild: u32 = scratch.read("grandchild").trim().parse().unwrap();
    assert!(!alive(grandchild), "the grandchild outlived dlock");
    assert!(!exists(&server, "k"));
}

#[test]
fn processes_a_finished_command_left_behind_are_stopped_before_release() {
    let server = RedisServer::start();
    let scratch = Scratch::new();
    // The command exits at once but leaves a background process that ignores TERM.
    let script = format!(
        "sh -c 'trap \"\" TERM; echo $$ > {gc}; while :; do sleep 0.05; done' & \
         sleep 0.2; exit 0",
        gc = scratch.path("grandchild").display(),
    );
    let started = Instant::now();
    let out = output(
        dlock(&server).args([
            "run",
            "--stop-timeout",
            "1s",
            "k",
            "--",
            "sh",
            "-c",
            &script,
        ]),
        LIMIT,
    );
    assert_eq!(code(&out), 0);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited out --stop-timeout"
    );
    let leftover: u32 = scratch.read("grandchild").trim().parse().unwrap();
    assert!(!alive(leftover), "the leftover process survived");
    assert!(!exists(&server, "k"));
}
