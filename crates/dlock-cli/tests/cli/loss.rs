//! The lease while the command runs: renewed past --ttl; when lost, the command is stopped
//! and dlock exits 76. A lease found lost only at release (deleted, or lost in a restart, during
//! a short job) exits 76 too.

use std::time::{Duration, Instant};

use dlock_test::{RedisServer, TcpProxy};
use serde_json::Value;

use crate::support::{
    alive, code, dlock, epsilon, finish, output, read_pid, started, stderr, stdout, wait_for_file,
    wait_until, Scratch,
};

const LIMIT: Duration = Duration::from_secs(30);

/// A job that records its pid, records the stop signal, and (if `obey`) exits on it. It
/// waits in `wait`, which a trapped signal interrupts at once, so the log shows when the
/// signal came.
fn stubborn_job(scratch: &Scratch, obey: bool) -> String {
    let on_term = if obey { "exit 0" } else { ":" };
    format!(
        "echo $$ > {pid}; trap 'echo TERM >> {log}; {on_term}' TERM; \
         touch {started}; while :; do sleep 1 & wait $!; done",
        pid = scratch.path("pid").display(),
        log = scratch.path("log").display(),
        started = scratch.path("started").display(),
    )
}

#[test]
fn a_job_that_outlives_its_ttl_keeps_the_lock() {
    let server = RedisServer::start();
    let scratch = Scratch::new();
    // The job runs until the test lets it finish, however slow this machine is.
    let script = format!(
        "touch {started}; while [ ! -e {finish} ]; do sleep 0.01; done",
        started = scratch.path("started").display(),
        finish = scratch.path("finish").display(),
    );
    let job = started(
        dlock(&server).args(["run", "--ttl", "1s", "long", "--", "sh", "-c", &script]),
        &scratch.path("started"),
    );
    // Time itself is what this test is about: two TTLs and a bit after the grant (the job's
    // start), the lease is still there, renewed.
    std::thread::sleep(Duration::from_millis(2200));
    let pttl: i64 = server.cmd("PTTL", &["long"]);
    assert!(
        (1..=1000).contains(&pttl),
        "renewed past its 1 s TTL: PTTL {pttl}"
    );
    let duplicate = output(dlock(&server).args(["run", "long", "--", "true"]), LIMIT);
    assert_eq!(code(&duplicate), 75);
    std::fs::write(scratch.path("finish"), "").unwrap();
    let job = finish(job, LIMIT);
    assert_eq!(code(&job), 0, "{}", stderr(&job));
}

/// The renewal interval of a 1 s lease (a third of it).
const INTERVAL_OF_1S: Duration = Duration::from_millis(333);

#[test]
fn a_deleted_key_stops_the_command_within_one_renewal_interval_and_exits_76() {
    let server = RedisServer::start();
    let scratch = Scratch::new();
    let epsilon = epsilon(&server);
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
    // Delete the key right after a renewal: the next one, which finds it gone, is a whole
    // interval away (the worst case).
    let renewals = server.command_calls("evalsha");
    assert!(wait_until(LIMIT, || server.command_calls("evalsha") > renewals));
    let deleted_at = Instant::now();
    let _: () = server.cmd("DEL", &["k"]);
    assert!(wait_for_file(&scratch.path("log"), LIMIT), "no TERM");
    let noticed = deleted_at.elapsed();
    let out = finish(job, LIMIT);
    assert_eq!(code(&out), 76, "{}", stderr(&out));
    assert!(
        noticed <= INTERVAL_OF_1S + epsilon,
        "TERM reached the command {noticed:?} after the DEL (at most {INTERVAL_OF_1S:?} + \
         {epsilon:?})"
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

/// The JSON report `--report json` printed last on stderr.
fn report_of(said: &str) -> Value {
    serde_json::from_str(said.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("no JSON report last on stderr ({e}): {said}"))
}

/// Issue 10: a lease found lost only at release (the command finished before any renewal
/// could notice) is no success. The job deletes its own lock and exits 0 at once; the next
/// renewal is 10 s away, so only the release can find the key gone: exit 76, the "may have
/// overlapped" message, and a report that says lost.
#[test]
fn a_key_deleted_during_a_short_job_is_found_at_release_and_exits_76() {
    let server = RedisServer::start();
    let scratch = Scratch::new();
    let script = format!(
        "touch {started}; while [ ! -e {go} ]; do sleep 0.01; done; \
         exec {dlock} release --force k >/dev/null",
        started = scratch.path("started").display(),
        go = scratch.path("go").display(),
        dlock = env!("CARGO_BIN_EXE_dlock")
    );
    let began = Instant::now();
    let job = started(
        dlock(&server).args([
            "run", "--ttl", "30s", "--report", "json", "k", "--", "sh", "-c", &script,
        ]),
        &scratch.path("started"),
    );
    // dlock's watchdog checks its lease once when its link monitor first connects, soon after
    // the grant (one MGET): let that check pass while the key is still there, or it may find
    // the key gone while the command runs, stop it, and leave the release nothing to find.
    assert!(
        wait_until(Duration::from_secs(5), || server.command_calls("mget") > 0),
        "dlock's watchdog never checked its lease when its link monitor connected"
    );
    std::fs::write(scratch.path("go"), "").unwrap();
    let out = finish(job, LIMIT);
    let said = stderr(&out);
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "a renewal may have noticed first: the test proves nothing"
    );
    assert_eq!(code(&out), 76, "{said}");
    assert!(
        said.contains("the lock on k was lost before the command finished")
            && said.contains("may have overlapped another holder"),
        "{said}"
    );
    assert!(!said.contains("while the command ran"), "{said}");
    let report = report_of(&said);
    assert_eq!(
        report["exit_code"], 0,
        "the forced release failed: {report}"
    );
    assert_eq!(report["outcome"], "lost", "{report}");
    assert_eq!(report["lost"], true, "{report}");
    assert!(report["loss_reason"].is_string(), "{report}");
    assert_eq!(report["dlock_exit_code"], 76, "{report}");
}

/// Issue 10: the lock lost in a restart of Redis that the short job did not outlast. The job
/// exits 0 while Redis is down; when Redis is back, empty, the release (or the re-verification
/// after the reconnect) finds the key gone: exit 76, and the report says lost.
#[test]
fn a_lock_lost_in_a_restart_during_a_short_job_is_found_at_release_and_exits_76() {
    let mut server = RedisServer::start();
    let scratch = Scratch::new();
    let script = format!(
        "echo $$ > {pid}; touch {started}; while [ ! -e {go} ]; do sleep 0.01; done; exit 0",
        pid = scratch.path("pid").display(),
        started = scratch.path("started").display(),
        go = scratch.path("go").display(),
    );
    let job = started(
        dlock(&server).args([
            "run", "--ttl", "30s", "--report", "json", "k", "--", "sh", "-c", &script,
        ]),
        &scratch.path("started"),
    );
    let pid = read_pid(&scratch.path("pid"));
    server.kill();
    std::fs::write(scratch.path("go"), "").unwrap();
    assert!(wait_until(LIMIT, || !alive(pid)), "the job never exited");
    // The command has finished; dlock is releasing (or waiting to) when Redis comes back.
    server.restart_empty();
    let out = finish(job, LIMIT);
    let said = stderr(&out);
    assert_eq!(code(&out), 76, "{said}");
    assert!(
        said.contains("the lock on k was lost before the command finished")
            && said.contains("may have overlapped another holder"),
        "{said}"
    );
    let report = report_of(&said);
    assert_eq!(report["exit_code"], 0, "{report}");
    assert_eq!(report["outcome"], "lost", "{report}");
    assert_eq!(report["lost"], true, "{report}");
    assert_eq!(report["dlock_exit_code"], 76, "{report}");
}

/// Issue 10: Redis restarted empty while the job runs. The restart erased the lock: another
/// client is granted it at once, while the first dlock still supervises its job, and nothing
/// dlock does can prevent that overlap. So the first run must exit 76, whether the
/// re-verification after the reconnect stops the job first, or the job ends first and its
/// release finds the key gone.
#[test]
fn a_restart_of_redis_while_the_job_runs_gives_the_lock_to_another_and_exits_76() {
    let mut server = RedisServer::start();
    let scratch = Scratch::new();
    let script = format!(
        "trap 'echo TERM >> {log}; exit 0' TERM; touch {started}; \
         while [ ! -e {go} ]; do sleep 0.01; done; exit 0",
        log = scratch.path("log").display(),
        started = scratch.path("started").display(),
        go = scratch.path("go").display(),
    );
    let job = started(
        dlock(&server).args([
            "run", "--ttl", "30s", "--report", "json", "k", "--", "sh", "-c", &script,
        ]),
        &scratch.path("started"),
    );
    server.restart_empty();
    let second = output(dlock(&server).args(["run", "k", "--", "true"]), LIMIT);
    assert_eq!(
        code(&second),
        0,
        "the restart erased the lock, yet another client was refused: {}",
        stderr(&second)
    );
    std::fs::write(scratch.path("go"), "").unwrap();
    let out = finish(job, LIMIT);
    let said = stderr(&out);
    assert_eq!(code(&out), 76, "{said}");
    let stopped = said.contains("lost the lock on k while the command ran");
    assert_eq!(
        stopped,
        scratch.read("log") == "TERM\n",
        "dlock says it stopped the job exactly when the job got TERM: {said}"
    );
    assert!(
        stopped || said.contains("may have overlapped another holder"),
        "{said}"
    );
    let report = report_of(&said);
    assert_eq!(report["exit_code"], 0, "{report}");
    assert_eq!(report["outcome"], "lost", "{report}");
    assert_eq!(report["lost"], true, "{report}");
    assert_eq!(report["dlock_exit_code"], 76, "{report}");
}
