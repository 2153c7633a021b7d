//! `dlock run --limit N`: at most N copies at once, each on its own permit with a lock's lease,
//! loss and fencing model; and the operator's view of semaphores (status, list, release).

use std::collections::BTreeSet;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use dlock_test::RedisServer;
use serde_json::Value;

use crate::support::{
    code, dlock, epsilon, exists, finish, numsub, output, read_pid, started, stderr, stdout,
    wait_for_file, wait_until, Scratch,
};

const LIMIT: Duration = Duration::from_secs(30);

/// A job that writes its pid and its DLOCK_* variables, says it started, and runs until the
/// test creates `finish-NAME` (however slow this machine is).
fn job(scratch: &Scratch, name: &str) -> String {
    format!(
        "echo $$ > {pid}; echo $DLOCK_LIMIT $DLOCK_FENCING_TOKEN > {env}; touch {started}; \
         while [ ! -e {finish} ]; do sleep 0.02; done",
        pid = scratch.path(&format!("pid-{name}")).display(),
        env = scratch.path(&format!("env-{name}")).display(),
        started = scratch.path(&format!("started-{name}")).display(),
        finish = scratch.path(&format!("finish-{name}")).display(),
    )
}

/// Starts `dlock run ARGS… -- sh -c JOB` and waits until its job runs.
fn holder(server: &RedisServer, scratch: &Scratch, name: &str, args: &[&str]) -> Child {
    started(
        dlock(server)
            .arg("run")
            .args(args)
            .args(["--", "sh", "-c", &job(scratch, name)]),
        &scratch.path(&format!("started-{name}")),
    )
}

/// Lets job `name` end by itself.
fn let_finish(scratch: &Scratch, name: &str) {
    std::fs::write(scratch.path(&format!("finish-{name}")), "").unwrap();
}

fn json(line: &str) -> Value {
    serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
}

/// The pids of a JSON holder list.
fn pids(holders: &Value) -> BTreeSet<u64> {
    holders
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {holders}"))
        .iter()
        .map(|h| h["pid"].as_u64().unwrap())
        .collect()
}

fn status_json(server: &RedisServer, key: &str) -> Value {
    let out = output(dlock(server).args(["status", "--json", key]), LIMIT);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    json(&stdout(&out))
}

#[test]
fn with_limit_2_two_copies_run_and_a_third_is_refused_with_75_naming_both_holders() {
    let server = RedisServer::start();
    let scratch = Scratch::new();
    let a = holder(&server, &scratch, "a", &["--limit", "2", "exports"]);
    let b = holder(&server, &scratch, "b", &["--limit", "2", "exports"]);
    let (a_pid, b_pid) = (a.id(), b.id());

    let third = output(
        dlock(&server).args([
            "run",
            "--limit",
            "2",
            "--report",
            "json",
            "exports",
            "--",
            "touch",
            scratch.path("third").to_str().unwrap(),
        ]),
        LIMIT,
    );
    assert_eq!(code(&third), 75, "{}", stderr(&third));
    assert!(!scratch.path("third").exists(), "the third copy never ran");
    let said = stderr(&third);
    let mut lines = said.lines();
    let message = lines.next().unwrap();
    assert!(
        message.starts_with("dlock: all 2 permits of exports are taken (held by "),
        "{message}"
    );
    for pid in [a_pid, b_pid] {
        assert!(message.contains(&format!(" pid {pid} for ")), "{message}");
    }
    let report = json(lines.next().expect("the report line"));
    assert_eq!(
        lines.next(),
        None,
        "one message line, one report line: {said}"
    );
    assert_eq!(report["limit"], 2);
    assert_eq!(report["outcome"], "busy");
    assert_eq!(report["acquired"], false);
    assert_eq!(report["dlock_exit_code"], 75);
    assert_eq!(
        pids(&report["holders"]),
        BTreeSet::from([u64::from(a_pid), u64::from(b_pid)])
    );

    // -E and --quiet as for a lock.
    let quiet = output(
        dlock(&server).args([
            "run", "--limit", "2", "-E", "0", "--quiet", "exports", "--", "false",
        ]),
        LIMIT,
    );
    assert_eq!(code(&quiet), 0);
    assert_eq!(stderr(&quiet), "", "--quiet says nothing");

    // Each copy has its own grant: its own fencing token, and the limit in its environment.
    let env = |name: &str| scratch.read(&format!("env-{name}"));
    let (env_a, env_b) = (env("a"), env("b"));
    let token = |env: &str| {
        env.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    assert!(
        env_a.starts_with("2 ") && env_b.starts_with("2 "),
        "{env_a} {env_b}"
    );
    assert_ne!(token(&env_a), token(&env_b));

    let_finish(&scratch, "a");
    let_finish(&scratch, "b");
    for copy in [a, b] {
        let out = finish(copy, LIMIT);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
    }
    assert!(!exists(&server, "exports"), "every permit given back");
    // A plain run reports no limit.
    let plain = output(
        dlock(&server).args(["run", "--report", "json", "exports", "--", "true"]),
        LIMIT,
    );
    let report = json(stderr(&plain).lines().last().unwrap());
    assert!(
        report.get("limit").is_none() && report.get("holders").is_none(),
        "{report}"
    );
}

#[test]
fn a_waiting_copy_gets_a_permit_when_a_holder_finishes_and_gives_up_with_75_otherwise() {
    let server = RedisServer::start();
    let scratch = Scratch::new();
    let epsilon = epsilon(&server);
    let a = holder(&server, &scratch, "a", &["--limit", "2", "w"]);
    let b = holder(&server, &scratch, "b", &["--limit", "2", "w"]);

    let asked = Instant::now();
    let impatient = output(
        dlock(&server).args([
            "run", "--limit", "2", "--wait", "1s", "w", "--", "echo", "no",
        ]),
        LIMIT,
    );
    assert_eq!(code(&impatient), 75, "{}", stderr(&impatient));
    assert!(asked.elapsed() >= Duration::from_secs(1));
    assert_eq!(stdout(&impatient), "", "the command never ran");
    let said = stderr(&impatient);
    assert!(
        said.starts_with("dlock: gave up waiting after 1s")
            && said.contains(": all 2 permits of w are still taken (held by "),
        "{said}"
    );

    let granted = scratch.path("granted");
    let waiter = dlock(&server)
        .args(["run", "--limit", "2", "--wait", "20s", "w", "--", "touch"])
        .arg(&granted)
        .spawn()
        .unwrap();
    // It waits (subscribed to the wake-up channel) while both permits are taken.
    assert!(
        wait_until(LIMIT, || numsub(&server, "{w}:dlock:released:w") >= 1),
        "the waiter never waited"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(!granted.exists(), "granted while both permits were taken");
    let_finish(&scratch, "a");
    let a = finish(a, LIMIT);
    let a_exited = Instant::now();
    assert_eq!(code(&a), 0, "{}", stderr(&a));
    assert!(wait_for_file(&granted, LIMIT), "the waiter never ran");
    let took = a_exited.elapsed();
    assert!(
        took <= epsilon,
        "granted {took:?} after a holder left (at most {epsilon:?})"
    );
    let waiter = finish(waiter, LIMIT);
    assert_eq!(code(&waiter), 0, "{}", stderr(&waiter));
    let_finish(&scratch, "b");
    assert_eq!(code(&finish(b, LIMIT)), 0);
}

#[test]
fn a_sigkilled_holders_permit_comes_back_within_one_ttl() {
    const TTL: Duration = Duration::from_secs(2);
    let server = RedisServer::start();
    let scratch = Scratch::new();
    let epsilon = epsilon(&server);
    let args = ["--limit", "2", "--ttl", "2s", "crashy"];
    let mut a = holder(&server, &scratch, "a", &args);
    let b = holder(&server, &scratch, "b", &args);
    let a_job = read_pid(&scratch.path("pid-a"));

    let granted = scratch.path("granted");
    let waiter = dlock(&server)
        .args(["run", "--wait", "20s"])
        .args(args)
        .args(["--", "touch"])
        .arg(&granted)
        .spawn()
        .unwrap();
    assert!(
        wait_until(LIMIT, || numsub(&server, "{crashy}:dlock:released:crashy")
            >= 1),
        "the waiter never waited"
    );
    a.kill().unwrap(); // SIGKILL: no release, the permit must expire
    let killed = Instant::now();
    a.wait().unwrap();
    assert!(wait_for_file(&granted, LIMIT), "the permit never came back");
    let took = killed.elapsed();
    assert!(
        took <= TTL + epsilon,
        "the dead holder's permit came back {took:?} after the kill (at most {TTL:?} + {epsilon:?})"
    );
    // Its command went with it (the guardian), and the other holder never noticed.
    assert!(
        wait_until(LIMIT, || !crate::support::alive(a_job)),
        "the killed dlock's command outlived it"
    );
    assert_eq!(code(&finish(waiter, LIMIT)), 0);
    let_finish(&scratch, "b");
    let b = finish(b, LIMIT);
    assert_eq!(code(&b), 0, "{}", stderr(&b));
}

#[test]
fn a_lost_permit_stops_its_command_and_exits_76_while_the_other_holder_runs_on() {
    let server = RedisServer::start();
    let scratch = Scratch::new();
    let epsilon = epsilon(&server);
    let args = [
        "--limit",
        "2",
        "--ttl",
        "1s",
        "--stop-timeout",
        "5s",
        "lossy",
    ];
    let a = holder(&server, &scratch, "a", &args);
    let b = holder(&server, &scratch, "b", &args);
    let a_pid = u64::from(a.id());

    let status = status_json(&server, "lossy");
    let holders = status["holders"].as_array().unwrap();
    let a_token = holders
        .iter()
        .find(|h| h["pid"] == a_pid)
        .unwrap_or_else(|| panic!("{status}"))["fencing_token"]
        .as_u64()
        .unwrap();
    let release = output(
        dlock(&server).args([
            "release",
            "--force",
            "--holder",
            &a_token.to_string(),
            "lossy",
        ]),
        LIMIT,
    );
    let released = Instant::now();
    assert_eq!(code(&release), 0, "{}", stderr(&release));
    let said = stdout(&release);
    assert!(
        said.starts_with("released the permit of lossy held by "),
        "{said}"
    );
    assert!(
        said.contains(&format!(" pid {a_pid} for ")) && said.contains(&a_token.to_string()),
        "{said}"
    );

    // The job obeys TERM at once (sh ends its loop), so it is gone within one renewal
    // interval of the loss, plus ε.
    let a = finish(a, LIMIT);
    let took = released.elapsed();
    assert_eq!(code(&a), 76, "{}", stderr(&a));
    assert!(
        stderr(&a).contains("dlock: lost the permit of lossy while the command ran"),
        "{}",
        stderr(&a)
    );
    let interval = Duration::from_millis(333);
    assert!(
        took <= interval + epsilon,
        "stopped {took:?} after the loss (at most {interval:?} + {epsilon:?})"
    );
    // The other holder keeps its permit.
    let status = status_json(&server, "lossy");
    assert_eq!(
        pids(&status["holders"]),
        BTreeSet::from([u64::from(b.id())])
    );
    let_finish(&scratch, "b");
    let b = finish(b, LIMIT);
    assert_eq!(code(&b), 0, "{}", stderr(&b));
}

#[test]
fn status_list_and_release_describe_semaphores_beside_locks() {
    let server = RedisServer::start();
    let scratch = Scratch::new();
    let a = holder(
        &server,
        &scratch,
        "a",
        &[
            "--limit", "3", "--ttl", "3s", "--label", "export-a", "exports",
        ],
    );
    let b = holder(
        &server,
        &scratch,
        "b",
        &[
            "--limit", "3", "--ttl", "3s", "--label", "export-b", "exports",
        ],
    );
    let lock = holder(&server, &scratch, "lock", &["nightly"]);
    let (a_pid, b_pid) = (u64::from(a.id()), u64::from(b.id()));

    let text = output(dlock(&server).args(["status", "exports"]), LIMIT);
    assert_eq!(code(&text), 0, "{}", stderr(&text));
    let text = stdout(&text);
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("exports: semaphore with 3 permits, 2 taken, 1 free"),
        "{text}"
    );
    assert!(
        lines.next().unwrap().split_whitespace().collect::<Vec<_>>()
            == ["HOLDER", "PERMITS", "HELD", "FOR", "TTL", "LEFT", "FENCING", "TOKEN", "COMMAND"],
        "{text}"
    );

    let status = status_json(&server, "exports");
    assert_eq!(status["key"], "exports");
    assert_eq!(status["kind"], "semaphore");
    assert_eq!(status["held"], true);
    assert_eq!(status["limit"], 3);
    assert_eq!(status["free"], 1);
    let holders = status["holders"].as_array().unwrap();
    assert_eq!(pids(&status["holders"]), BTreeSet::from([a_pid, b_pid]));
    let mut tokens = Vec::new();
    for holder in holders {
        let (pid, label) = if holder["pid"] == a_pid {
            (a_pid, "export-a")
        } else {
            (b_pid, "export-b")
        };
        assert_eq!(holder["label"], label, "{holder}");
        assert_eq!(holder["permits"], 1);
        assert!(!holder["host"].as_str().unwrap().is_empty());
        let ttl = holder["ttl_left_ms"].as_u64().unwrap();
        assert!(ttl > 0 && ttl <= 3_000, "{holder}");
        assert!(holder["held_for_ms"].as_u64().unwrap() < 20_000, "{holder}");
        let token = holder["fencing_token"].as_u64().unwrap();
        tokens.push(token);
        // The text shows the same holder on one line: host pid, permits, times, token, label.
        let line = text
            .lines()
            .find(|line| line.contains(&format!(" pid {pid} ")))
            .unwrap_or_else(|| panic!("no line for pid {pid}: {text}"));
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells[3], "1", "{line}");
        assert!(cells.contains(&token.to_string().as_str()), "{line}");
        assert_eq!(cells.last(), Some(&label), "{line}");
    }
    assert_eq!(
        status["last_fencing_token"].as_u64(),
        tokens.iter().max().copied()
    );
    assert!(
        text.contains(&format!(
            "last fencing token: {}",
            tokens.iter().max().unwrap()
        )),
        "{text}"
    );

    // A lock still reads as a lock.
    let lock_status = output(dlock(&server).args(["status", "nightly"]), LIMIT);
    assert!(
        stdout(&lock_status).starts_with("nightly: held by "),
        "{}",
        stdout(&lock_status)
    );
    assert_eq!(status_json(&server, "nightly")["kind"], "lock");

    let list = output(dlock(&server).args(["list"]), LIMIT);
    assert_eq!(code(&list), 0, "{}", stderr(&list));
    let table = stdout(&list);
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0][..2], ["KEY", "TYPE"], "{table}");
    assert_eq!(
        rows.len(),
        4,
        "a header, two permit holders, one lock: {table}"
    );
    for row in &rows[1..3] {
        assert_eq!(row[..3], ["exports", "semaphore", "2/3"], "{table}");
    }
    for pid in [a_pid, b_pid] {
        assert!(table.contains(&format!(" pid {pid} ")), "{table}");
    }
    assert_eq!(rows[3][..2], ["nightly", "lock"], "{table}");
    let list_json = output(dlock(&server).args(["list", "--json"]), LIMIT);
    let lines: Vec<Value> = stdout(&list_json).lines().map(json).collect();
    assert_eq!(lines.len(), 2, "{}", stdout(&list_json));
    assert_eq!(
        (&lines[0]["key"], &lines[0]["kind"]),
        (&"exports".into(), &"semaphore".into())
    );
    assert_eq!(pids(&lines[0]["holders"]), BTreeSet::from([a_pid, b_pid]));
    assert_eq!(
        (&lines[1]["key"], &lines[1]["kind"]),
        (&"nightly".into(), &"lock".into())
    );
    let only = output(dlock(&server).args(["list", "--json", "exp*"]), LIMIT);
    assert_eq!(stdout(&only).lines().count(), 1, "{}", stdout(&only));

    // --holder names one holder of a semaphore: a usage error on a lock, which stays held.
    let wrong = output(
        dlock(&server).args(["release", "--force", "--holder", "7", "nightly"]),
        LIMIT,
    );
    assert_eq!(code(&wrong), 64, "{}", stderr(&wrong));
    assert!(
        stderr(&wrong).contains("nightly is a lock, not a semaphore"),
        "{}",
        stderr(&wrong)
    );
    assert!(exists(&server, "nightly"));
    let unforced = output(dlock(&server).args(["release", "exports"]), LIMIT);
    assert_eq!(code(&unforced), 64);

    // One holder, in JSON: the state before, and whom it freed.
    let a_token = tokens[if holders[0]["pid"] == a_pid { 0 } else { 1 }];
    let one = output(
        dlock(&server).args([
            "release",
            "--force",
            "--json",
            "--holder",
            &a_token.to_string(),
            "exports",
        ]),
        LIMIT,
    );
    assert_eq!(code(&one), 0, "{}", stderr(&one));
    let one = json(&stdout(&one));
    assert_eq!(one["kind"], "semaphore");
    assert_eq!(pids(&one["holders"]), BTreeSet::from([a_pid, b_pid]));
    assert_eq!(pids(&one["released"]), BTreeSet::from([a_pid]));
    assert_eq!(one["released"][0]["fencing_token"], a_token);
    let a = finish(a, LIMIT);
    assert_eq!(code(&a), 76, "{}", stderr(&a));

    // Every holder, in text: it names each one it freed.
    let all = output(
        dlock(&server).args(["release", "--force", "exports"]),
        LIMIT,
    );
    assert_eq!(code(&all), 0, "{}", stderr(&all));
    let said = stdout(&all);
    assert!(
        said.starts_with(
            "released every permit of exports (semaphore with 3 permits); they were held by:\n"
        ),
        "{said}"
    );
    assert_eq!(said.lines().count(), 2, "{said}");
    assert!(
        said.contains(&format!(" pid {b_pid} for ")) && said.contains("export-b"),
        "{said}"
    );
    let b = finish(b, LIMIT);
    assert_eq!(code(&b), 76, "{}", stderr(&b));
    let after = status_json(&server, "exports");
    assert_eq!(
        after["holders"].as_array().map(Vec::len),
        Some(0),
        "{after}"
    );

    let_finish(&scratch, "lock");
    assert_eq!(code(&finish(lock, LIMIT)), 0);
}

#[test]
fn a_limit_or_kind_that_differs_from_the_running_copies_is_a_usage_error() {
    let server = RedisServer::start();
    let scratch = Scratch::new();
    let ran = scratch.path("ran");
    // A copy whose command would leave a trace.
    let copy = |args: &[&str]| -> Command {
        let mut cmd = dlock(&server);
        cmd.arg("run").args(args).args(["--", "touch"]).arg(&ran);
        cmd
    };
    let a = holder(&server, &scratch, "a", &["--limit", "2", "pool"]);

    let other = output(
        &mut copy(&["--limit", "3", "--report", "json", "--wait", "5s", "pool"]),
        LIMIT,
    );
    assert_eq!(code(&other), 64, "{}", stderr(&other));
    let said = stderr(&other);
    assert!(
        said.starts_with(
            "dlock: pool is in use with --limit 2, not --limit 3: every copy must name the same limit\n"
        ),
        "{said}"
    );
    let report = json(said.lines().last().unwrap());
    assert_eq!(report["outcome"], "mismatch");
    assert_eq!(report["limit"], 3);

    let as_lock = output(&mut copy(&["pool"]), LIMIT);
    assert_eq!(code(&as_lock), 64, "{}", stderr(&as_lock));
    assert!(
        stderr(&as_lock).starts_with("dlock: pool is in use as a semaphore (dlock run --limit N)"),
        "{}",
        stderr(&as_lock)
    );

    let lock = holder(&server, &scratch, "lock", &["single"]);
    let as_semaphore = output(&mut copy(&["--limit", "2", "single"]), LIMIT);
    assert_eq!(code(&as_semaphore), 64, "{}", stderr(&as_semaphore));
    assert!(
        stderr(&as_semaphore).starts_with("dlock: single is in use as a lock"),
        "{}",
        stderr(&as_semaphore)
    );

    for (args, says) in [
        (&["--limit", "0"][..], "invalid value '0' for '--limit <N>'"),
        (
            &["--limit", "2", "--min-hold", "1m"],
            "dlock: --min-hold cannot be used with --limit",
        ),
    ] {
        let out = output(&mut copy(&[args, &["fresh"]].concat()), LIMIT);
        assert_eq!(code(&out), 64, "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
    assert!(!ran.exists(), "no refused copy ran its command");

    // The holders never noticed.
    let_finish(&scratch, "a");
    let_finish(&scratch, "lock");
    for copy in [a, lock] {
        let out = finish(copy, LIMIT);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
    }
}

/// The child's side of the stress test: under an flock, count itself in, note the count, stay
/// a while, count itself out.
const INSIDE: &str = r#"
exec 9>"$1/flock"
flock 9; n=$(cat "$1/count"); n=$((n + 1)); echo $n > "$1/count"; echo $n >> "$1/seen"; flock -u 9
sleep 0.5
flock 9; n=$(cat "$1/count"); echo $((n - 1)) > "$1/count"; flock -u 9
"#;

#[test]
fn many_concurrent_copies_never_have_more_than_the_limit_inside() {
    const COPIES: usize = 12;
    let server = RedisServer::start();
    let scratch = Scratch::new();
    std::fs::write(scratch.path("count"), "0\n").unwrap();
    let dir = scratch.path("");
    let copies: Vec<Child> = (0..COPIES)
        .map(|_| {
            dlock(&server)
                .args(["run", "--limit", "3", "--wait", "60s", "crowd", "--"])
                .args(["sh", "-c", INSIDE, "inside"])
                .arg(&dir)
                .spawn()
                .unwrap()
        })
        .collect();
    for copy in copies {
        let out = finish(copy, Duration::from_secs(90));
        assert_eq!(code(&out), 0, "{}", stderr(&out));
    }
    let seen: Vec<u32> = scratch
        .read("seen")
        .lines()
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(seen.len(), COPIES, "every copy ran once: {seen:?}");
    let most = seen.iter().copied().max().unwrap();
    assert!(most <= 3, "{most} copies inside at once: {seen:?}");
    // The copies did crowd the semaphore, so the bound was put to the test.
    assert_eq!(most, 3, "never 3 inside at once: {seen:?}");
    assert_eq!(scratch.read("count"), "0\n");
}

#[test]
fn the_limit_holds_across_three_masters_and_status_tells_a_semaphore_from_a_lock() {
    let servers = dlock_test::RedisServers::start(3);
    let scratch = Scratch::new();
    // Every command on the three masters (Redlock), through the environment.
    let on_all = || {
        let mut cmd = dlock(&servers[0]);
        cmd.env("DLOCK_REDIS_URL", servers.urls().join(" "));
        cmd
    };
    let hold = |name: &str, args: &[&str]| {
        started(
            on_all()
                .arg("run")
                .args(args)
                .args(["--", "sh", "-c", &job(&scratch, name)]),
            &scratch.path(&format!("started-{name}")),
        )
    };
    let a = hold("a", &["--limit", "2", "pool"]);
    let b = hold("b", &["--limit", "2", "pool"]);
    let lock = hold("lock", &["single"]);

    let third = output(
        on_all().args(["run", "--limit", "2", "pool", "--", "true"]),
        LIMIT,
    );
    assert_eq!(code(&third), 75, "{}", stderr(&third));
    assert!(
        stderr(&third).starts_with("dlock: all 2 permits of pool are taken (held by "),
        "{}",
        stderr(&third)
    );
    let pool = output(on_all().args(["status", "--json", "pool"]), LIMIT);
    let pool = json(&stdout(&pool));
    assert_eq!(
        (&pool["kind"], &pool["free"]),
        (&"semaphore".into(), &0.into())
    );
    assert_eq!(
        pids(&pool["holders"]),
        BTreeSet::from([u64::from(a.id()), u64::from(b.id())])
    );
    // A lock's key answers WRONGTYPE to the semaphore's read on every master.
    let single = output(on_all().args(["status", "single"]), LIMIT);
    assert!(
        stdout(&single).starts_with("single: held by "),
        "{}{}",
        stdout(&single),
        stderr(&single)
    );
    let mixed = output(
        on_all().args(["run", "--limit", "2", "single", "--", "true"]),
        LIMIT,
    );
    assert_eq!(code(&mixed), 64, "{}", stderr(&mixed));

    for (name, copy) in [("a", a), ("b", b), ("lock", lock)] {
        let_finish(&scratch, name);
        let out = finish(copy, LIMIT);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
    }
}
