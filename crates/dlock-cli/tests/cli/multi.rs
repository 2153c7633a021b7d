//! `dlock run KEY --and KEY2`: the command runs only while every lock is held, taken all at
//! once or none; copies naming the keys in other orders never deadlock.

use std::time::Duration;

use dlock_test::{RedisServer, RedisServers};

use crate::support::{code, dlock, exists, finish, holding, output, stderr, stdout, Scratch};

const LIMIT: Duration = Duration::from_secs(20);

#[test]
fn the_command_runs_holding_every_key_and_learns_every_token() {
    let server = RedisServer::start();
    let out = output(
        dlock(&server)
            .args([
                "run",
                "a",
                "--and",
                "b",
                "--and",
                "c",
                "--",
                "sh",
                "-c",
                "echo $DLOCK_FENCING_TOKEN; echo $DLOCK_FENCING_TOKENS; redis-cli -p $PORT GET b",
            ])
            .env("PORT", server.port().to_string()),
        LIMIT,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    let tokens: Vec<u64> = lines[1].split(' ').map(|t| t.parse().unwrap()).collect();
    assert_eq!(tokens.len(), 3, "{text}");
    assert_eq!(
        lines[0],
        tokens[0].to_string(),
        "DLOCK_FENCING_TOKEN is KEY's"
    );
    assert!(
        !lines[2].is_empty(),
        "b was not held while the command ran: {text}"
    );
    for key in ["a", "b", "c"] {
        assert!(!exists(&server, key), "{key} was not released");
    }
}

#[test]
fn a_held_member_refuses_the_set_naming_it_and_nothing_is_left_held() {
    let server = RedisServer::start();
    let scratch = Scratch::new();
    let holder = holding(&server, &scratch, "b", 2);
    let refused = output(
        dlock(&server).args(["run", "a", "--and", "b", "--", "true"]),
        LIMIT,
    );
    assert_eq!(code(&refused), 75);
    assert!(
        stderr(&refused).starts_with("dlock: another process is already running b (held by "),
        "{}",
        stderr(&refused)
    );
    assert!(!exists(&server, "a"), "a partial set was left held");
    let plain = output(dlock(&server).args(["run", "a", "--", "true"]), LIMIT);
    assert_eq!(code(&plain), 0, "{}", stderr(&plain));
    let waited = output(
        dlock(&server).args(["run", "--wait", "10s", "a", "--and", "b", "--", "true"]),
        LIMIT,
    );
    assert_eq!(code(&waited), 0, "{}", stderr(&waited));
    let _ = finish(holder, LIMIT);
}

/// Copies asking for {x, y} and {y, x} at once, several rounds: all run, none deadlocks.
#[test]
fn opposite_orders_all_run() {
    let server = RedisServer::start();
    let scratch = Scratch::new();
    let log = scratch.path("log");
    let job = format!("echo in >> {}; sleep 0.05", log.display());
    let copies: Vec<_> = (0..6)
        .map(|i| {
            let (first, second) = if i % 2 == 0 { ("x", "y") } else { ("y", "x") };
            dlock(&server)
                .args([
                    "run", "--wait", "20s", first, "--and", second, "--", "sh", "-c", &job,
                ])
                .spawn()
                .unwrap()
        })
        .collect();
    for copy in copies {
        let out = finish(copy, Duration::from_secs(40));
        assert_eq!(code(&out), 0, "{}", stderr(&out));
    }
    assert_eq!(scratch.read("log").lines().count(), 6);
}

#[test]
fn and_with_limit_shared_or_fair_is_a_usage_error() {
    let server = RedisServer::start();
    for extra in [
        &["--limit", "2"][..],
        &["--shared"],
        &["--wait", "1s", "--fair"],
    ] {
        let out = output(
            dlock(&server)
                .args(["run", "--and", "b"])
                .args(extra)
                .args(["a", "--", "true"]),
            LIMIT,
        );
        assert_eq!(code(&out), 64, "{extra:?}: {}", stderr(&out));
    }
    let twice = output(
        dlock(&server).args(["run", "a", "--and", "a", "--", "true"]),
        LIMIT,
    );
    assert_eq!(code(&twice), 64, "{}", stderr(&twice));
}

#[test]
fn and_works_on_redlock() {
    let servers = RedisServers::start(3);
    let mut redlock = dlock(&servers[0]);
    redlock.args(["run", "--and", "b"]);
    for url in servers.urls() {
        redlock.args(["--redis", &url]);
    }
    let out = output(
        redlock.args(["a", "--", "sh", "-c", "echo $DLOCK_FENCING_TOKENS"]),
        LIMIT,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        stdout(&out).split_whitespace().count(),
        2,
        "{}",
        stdout(&out)
    );
}
