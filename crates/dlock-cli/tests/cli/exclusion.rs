//! The seeds' scenario: two copies of a job start at once; exactly one runs.

use std::time::{Duration, Instant};

use dlock_test::RedisServer;

use crate::support::{
    code, dlock, epsilon, exists, finish, output, started, stderr, stdout, wait_for_file, Scratch,
};

const LIMIT: Duration = Duration::from_secs(20);

#[test]
fn of_two_concurrent_copies_exactly_one_runs_and_the_other_exits_75_naming_the_holder() {
    let server = RedisServer::start();
    let scratch = Scratch::new();
    let job = format!("echo ran >> {}; sleep 1", scratch.path("runs").display());
    let first = dlock(&server)
        .args(["run", "main:hello", "--", "sh", "-c", &job])
        .spawn()
        .unwrap();
    assert!(
        wait_for_file(&scratch.path("runs"), LIMIT),
        "the first copy never ran"
    );
    let second = output(
        dlock(&server).args(["run", "main:hello", "--", "sh", "-c", &job]),
        LIMIT,
    );
    let first = finish(first, LIMIT);

    assert_eq!(code(&first), 0, "{}", stderr(&first));
    assert_eq!(code(&second), 75);
    assert_eq!(scratch.read("runs"), "ran\n", "exactly one copy ran");
    let message = stderr(&second);
    assert_eq!(message.lines().count(), 1, "one line: {message:?}");
    let first_pid = first_pid_from(&message);
    assert!(
        message.starts_with("dlock: another process is already running main:hello (held by ")
            && message.contains(" pid ")
            && message.contains(" for "),
        "{message}"
    );
    assert!(first_pid > 0);
    assert!(!exists(&server, "main:hello"), "released at the end");
}

fn first_pid_from(message: &str) -> u32 {
    let after = message.split(" pid ").nth(1).unwrap();
    after.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn conflict_exit_code_and_quiet() {
    let server = RedisServer::start();
    let _: () = server.cmd("SET", &["cron-job", "someone", "EX", "60"]);
    let zero = output(
        dlock(&server).args(["run", "-E", "0", "cron-job", "--", "true"]),
        LIMIT,
    );
    assert_eq!(code(&zero), 0);
    assert!(stderr(&zero).contains("another process is already running cron-job"));
    assert!(stderr(&zero).contains("unknown owner"), "{}", stderr(&zero));

    let quiet = output(
        dlock(&server).args(["run", "--quiet", "cron-job", "--", "true"]),
        LIMIT,
    );
    assert_eq!(code(&quiet), 75);
    assert_eq!(stderr(&quiet), "", "--quiet says nothing");
    assert_eq!(stdout(&quiet), "");
}

#[test]
fn wait_succeeds_when_the_holder_finishes_in_time_and_times_out_with_75_otherwise() {
    let server = RedisServer::start();
    let scratch = Scratch::new();
    let holder_job = format!("touch {}; sleep 1", scratch.path("holding").display());
    let holder = started(
        dlock(&server).args(["run", "w", "--", "sh", "-c", &holder_job]),
        &scratch.path("holding"),
    );
    let waiter = output(
        dlock(&server).args(["run", "--wait", "3s", "w", "--", "echo", "mine"]),
        LIMIT,
    );
    assert_eq!(code(&waiter), 0, "{}", stderr(&waiter));
    assert_eq!(stdout(&waiter), "mine\n");
    assert_eq!(code(&finish(holder, LIMIT)), 0);

    let long_job = format!("touch {}; sleep 5", scratch.path("long").display());
    let holder = started(
        dlock(&server).args(["run", "w", "--", "sh", "-c", &long_job]),
        &scratch.path("long"),
    );
    let started = Instant::now();
    let impatient = output(
        dlock(&server).args(["run", "--wait", "1s", "w", "--", "echo", "no"]),
        LIMIT,
    );
    assert_eq!(code(&impatient), 75);
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(stdout(&impatient), "", "the command never ran");
    assert!(
        stderr(&impatient).contains("gave up waiting after 1s"),
        "{}",
        stderr(&impatient)
    );
    assert_eq!(code(&finish(holder, LIMIT)), 0);
}

#[test]
fn min_hold_refuses_a_late_duplicate_of_a_fast_job_without_dlock_staying() {
    const MIN_HOLD: Duration = Duration::from_secs(4);
    let server = RedisServer::start();
    let scratch = Scratch::new();
    let epsilon = epsilon(&server);
    let spawned = Instant::now();
    let fast = output(
        dlock(&server).args(["run", "--min-hold", "4s", "fast", "--", "true"]),
        LIMIT,
    );
    let exited = Instant::now();
    assert_eq!(code(&fast), 0, "{}", stderr(&fast));
    // As fast as a plain run: dlock does not sit out --min-hold.
    let took = exited - spawned;
    assert!(
        took <= epsilon,
        "dlock stayed {took:?} (at most {epsilon:?}) instead of exiting at once"
    );
    let status = output(dlock(&server).args(["status", "fast"]), LIMIT);
    let said = stdout(&status);
    assert!(
        said.contains("held for --min-hold (the job finished)") && said.contains(" left"),
        "{said}"
    );
    let list = stdout(&output(dlock(&server).args(["list"]), LIMIT));
    assert!(list.contains("(finished; --min-hold)"), "{list}");
    let json = stdout(&output(
        dlock(&server).args(["status", "--json", "fast"]),
        LIMIT,
    ));
    assert!(json.contains(r#""finished":true"#), "{json}");
    let late = output(
        dlock(&server).args(["run", "fast", "--", "echo", "duplicate"]),
        LIMIT,
    );
    assert_eq!(code(&late), 75, "a late duplicate is refused");
    assert_eq!(stdout(&late), "");
    // A duplicate that waits is granted when the hold ends (--min-hold after the grant, which
    // came between the spawn and the exit of the fast job), not before, and promptly.
    let granted = scratch.path("granted");
    let waiter = dlock(&server)
        .args(["run", "--wait", "10s", "fast", "--", "touch"])
        .arg(&granted)
        .spawn()
        .unwrap();
    assert!(wait_for_file(&granted, LIMIT), "the waiter never ran");
    let ran_at = Instant::now();
    assert_eq!(code(&finish(waiter, LIMIT)), 0);
    assert!(
        ran_at >= spawned + MIN_HOLD,
        "granted {:?} after the fast job's spawn, before --min-hold ended",
        ran_at - spawned
    );
    assert!(
        ran_at <= exited + MIN_HOLD + epsilon,
        "granted {:?} after the fast job's exit (at most {MIN_HOLD:?} + {epsilon:?})",
        ran_at - exited
    );
}

#[test]
fn the_child_gets_the_key_fencing_token_and_ttl_in_its_environment() {
    let server = RedisServer::start();
    let out = output(
        dlock(&server).args([
            "run",
            "--ttl",
            "12s",
            "env-job",
            "--",
            "sh",
            "-c",
            "echo $DLOCK_KEY $DLOCK_FENCING_TOKEN $DLOCK_TTL_MS",
        ]),
        LIMIT,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let printed = stdout(&out);
    let fields: Vec<&str> = printed.split_whitespace().collect();
    assert_eq!(fields[0], "env-job");
    assert!(fields[1].parse::<u64>().unwrap() > 1_000_000_000_000_000);
    assert_eq!(fields[2], "12000");
}

#[test]
fn fair_waiters_run_in_the_order_they_arrived() {
    let server = RedisServer::start();
    let scratch = Scratch::new();
    let order = scratch.path("order");
    let holder_job = format!("touch {}; sleep 1", scratch.path("holding").display());
    let holder = started(
        dlock(&server).args(["run", "q", "--", "sh", "-c", &holder_job]),
        &scratch.path("holding"),
    );
    let mut waiters = Vec::new();
    for i in 0..4 {
        let job = format!("echo {i} >> {}", order.display());
        waiters.push(
            dlock(&server)
                .args([
                    "run", "--wait", "10s", "--fair", "q", "--", "sh", "-c", &job,
                ])
                .spawn()
                .unwrap(),
        );
        // Each waiter has joined the queue before the next starts.
        let queued = Instant::now() + LIMIT;
        while server.cmd::<i64>("LLEN", &["{q}:dlock:queue:q"]) < i + 1 {
            assert!(Instant::now() < queued, "waiter {i} never queued");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    assert_eq!(code(&finish(holder, LIMIT)), 0);
    for waiter in waiters {
        assert_eq!(code(&finish(waiter, LIMIT)), 0);
    }
    assert_eq!(std::fs::read_to_string(&order).unwrap(), "0\n1\n2\n3\n");
    // --fair without --wait is a usage error.
    let bad = output(
        dlock(&server).args(["run", "--fair", "q", "--", "true"]),
        LIMIT,
    );
    assert_eq!(code(&bad), 64);
}

/// Issue 9: the command never sees dlock's credentials.
#[test]
fn the_childs_environment_holds_no_password() {
    let server = RedisServer::start_with(dlock_test::ServerOptions {
        password: Some("s3cret-pw".into()),
        ..Default::default()
    });
    let out = output(
        dlock(&server)
            .env("DLOCK_REDIS_URL", server.url())
            .args(["run", "env-job", "--", "env"]),
        LIMIT,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let env = stdout(&out);
    assert!(env.contains("DLOCK_KEY=env-job"), "{env}");
    assert!(
        env.contains("DLOCK_REDIS_URL=redis://:***@127.0.0.1:"),
        "{env}"
    );
    assert!(
        !env.contains("s3cret-pw"),
        "the password reached the command: {env}"
    );
}
