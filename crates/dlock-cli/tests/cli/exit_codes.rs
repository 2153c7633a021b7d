//! dlock's exit codes, each produced for real.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use dlock_test::RedisServer;

use crate::support::{code, dlock, epsilon, exists, finish, output, started, stderr, Scratch};

const LIMIT: Duration = Duration::from_secs(20);

#[test]
fn the_childs_own_code_passes_through() {
    let server = RedisServer::start();
    for expected in [0, 3, 255] {
        let script = format!("exit {expected}");
        let out = output(
            dlock(&server).args(["run", "k", "--", "sh", "-c", &script]),
            LIMIT,
        );
        assert_eq!(code(&out), expected, "{}", stderr(&out));
    }
}

#[test]
fn a_child_killed_by_signal_n_gives_128_plus_n() {
    let server = RedisServer::start();
    for (signal, expected) in [("KILL", 137), ("TERM", 143), ("SEGV", 139)] {
        let script = format!("kill -{signal} $$");
        let out = output(
            dlock(&server).args(["run", "k", "--", "sh", "-c", &script]),
            LIMIT,
        );
        assert_eq!(code(&out), expected, "{signal}: {}", stderr(&out));
    }
}

#[test]
fn missing_and_unexecutable_commands_give_127_and_126_and_free_the_lock() {
    let server = RedisServer::start();
    let out = output(
        dlock(&server).args(["run", "k", "--", "no-such-command-xyz"]),
        LIMIT,
    );
    assert_eq!(code(&out), 127);
    assert!(
        stderr(&out).contains("command not found: no-such-command-xyz"),
        "{}",
        stderr(&out)
    );
    assert!(!exists(&server, "k"));

    let scratch = Scratch::new();
    let file = scratch.path("not-executable");
    std::fs::write(&file, "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = output(dlock(&server).args(["run", "k", "--"]).arg(&file), LIMIT);
    assert_eq!(code(&out), 126, "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot execute"), "{}", stderr(&out));
    assert!(!exists(&server, "k"));
}

#[test]
fn usage_errors_give_64() {
    let server = RedisServer::start();
    for args in [
        vec!["run", "k"],                                 // no command
        vec!["run", "--ttl", "soon", "k", "--", "true"],  // bad duration
        vec!["run", "--ttl", "0s", "k", "--", "true"],    // zero TTL
        vec!["run", "--ttl", "50ms", "k", "--", "true"],  // below the minimum lease
        vec!["run", "--ttl", "1000d", "k", "--", "true"], // absurd lease
        vec!["run", "", "--", "true"],                    // empty key
        vec!["run", "--stop-signal", "NOPE", "k", "--", "true"],
        vec!["frobnicate"],
        vec!["release", "k"], // without --force
    ] {
        let out = output(dlock(&server).args(&args), LIMIT);
        assert_eq!(code(&out), 64, "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).is_empty(), "{args:?} says why");
    }
    let out = output(
        dlock(&server).args(["run", "--redis", "nonsense://x", "k", "--", "true"]),
        LIMIT,
    );
    assert_eq!(code(&out), 64, "{}", stderr(&out));
}

#[test]
fn an_unreachable_redis_gives_69_and_hides_the_password() {
    let server = RedisServer::start();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://admin:topsecret@127.0.0.1:{port}/");
    let out = output(
        dlock(&server).args([
            "run",
            "--redis",
            &url,
            "--redis-timeout",
            "500ms",
            "k",
            "--",
            "true",
        ]),
        LIMIT,
    );
    assert_eq!(code(&out), 69);
    let message = stderr(&out);
    assert!(
        message.contains(&format!("redis://admin:***@127.0.0.1:{port}")),
        "{message}"
    );
    assert!(!message.contains("topsecret"), "{message}");

    // The URL from the environment is hidden too, in errors and in --help.
    let out = output(
        dlock(&server)
            .env("DLOCK_REDIS_URL", &url)
            .args(["run", "k", "--", "true"]),
        LIMIT,
    );
    assert_eq!(code(&out), 69);
    assert!(!stderr(&out).contains("topsecret"));
    let help = output(
        dlock(&server)
            .env("DLOCK_REDIS_URL", &url)
            .args(["run", "--help"]),
        LIMIT,
    );
    assert_eq!(code(&help), 0);
    assert!(!crate::support::stdout(&help).contains("topsecret"));
}

#[test]
fn a_wrong_password_gives_69() {
    let server = RedisServer::start_with(dlock_test::ServerOptions {
        password: Some("right".into()),
        ..Default::default()
    });
    let scratch = Scratch::new();
    let marker = scratch.path("ran");
    // A wrong password fails the handshake; a missing one, the first command (nothing is
    // sent at connect): the same exit code and message either way, and the command never runs.
    for url in [
        format!("redis://:wrong-one@127.0.0.1:{}/", server.port()),
        format!("redis://127.0.0.1:{}/", server.port()),
    ] {
        let out = output(
            dlock(&server).args([
                "run",
                "--redis",
                &url,
                "k",
                "--",
                "touch",
                marker.to_str().unwrap(),
            ]),
            LIMIT,
        );
        assert_eq!(code(&out), 69, "{url}: {}", stderr(&out));
        assert!(stderr(&out).contains("authentication"), "{}", stderr(&out));
        assert!(!stderr(&out).contains("wrong-one"));
        assert!(!marker.exists(), "{url}: the command ran");
    }
}

#[test]
fn max_runtime_stops_the_command_with_124() {
    const MAX_RUNTIME: Duration = Duration::from_secs(1);
    let server = RedisServer::start();
    let scratch = Scratch::new();
    let epsilon = epsilon(&server);
    let script = format!(
        "touch {started}; exec sleep 30",
        started = scratch.path("started").display()
    );
    let spawned = Instant::now();
    let job = started(
        dlock(&server).args(["run", "--max-runtime", "1s", "k", "--", "sh", "-c", &script]),
        &scratch.path("started"),
    );
    // The command runs from a little before its marker appears.
    let ran_from = Instant::now();
    let out = finish(job, LIMIT);
    let (ran, total) = (ran_from.elapsed(), spawned.elapsed());
    assert_eq!(code(&out), 124, "{}", stderr(&out));
    assert!(
        ran <= MAX_RUNTIME + epsilon,
        "stopped {ran:?} after the command started (at most {MAX_RUNTIME:?} + {epsilon:?})"
    );
    assert!(total >= MAX_RUNTIME, "stopped after {total:?}");
    assert!(stderr(&out).contains("--max-runtime"), "{}", stderr(&out));
    assert!(!exists(&server, "k"));
}

#[test]
fn help_documents_every_exit_code() {
    let server = RedisServer::start();
    let out = output(dlock(&server).args(["run", "--help"]), LIMIT);
    assert_eq!(code(&out), 0);
    let help = crate::support::stdout(&out);
    for needle in [
        "75",
        "76",
        "124",
        "126",
        "127",
        "64",
        "69",
        "70",
        "128+N",
        "--min-hold",
        "[default: 30s]",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
}

/// Issue 9: absurd durations are usage errors, never a panic (`Instant + huge` panics).
#[test]
fn absurd_durations_are_usage_errors() {
    let server = RedisServer::start();
    let huge = "300000000000y";
    for flag in [
        "--wait",
        "--max-runtime",
        "--min-hold",
        "--stop-timeout",
        "--redis-timeout",
        "--ttl",
    ] {
        let out = output(
            dlock(&server).args(["run", flag, huge, "k", "--", "true"]),
            LIMIT,
        );
        let said = stderr(&out);
        assert_eq!(code(&out), 64, "{flag} {huge}: {said}");
        assert!(!said.contains("panicked"), "{flag}: {said}");
        assert!(
            said.contains(flag) && said.contains("too long"),
            "{flag}: {said}"
        );
    }
    let out = output(dlock(&server).args(["bench", "--duration", huge]), LIMIT);
    assert_eq!(code(&out), 64, "{}", stderr(&out));
    assert!(!exists(&server, "k"));
}

/// A pipe whose reading end is already closed: every write to it fails with EPIPE.
fn closed_pipe() -> std::io::PipeWriter {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    writer
}

/// Issue 9: a closed stderr or stdout never makes dlock panic (exit 101) or abandon its job.
#[test]
fn a_closed_stderr_or_stdout_changes_no_exit_code() {
    let server = RedisServer::start();
    // Busy: dlock has to say who holds the lock.
    let _: () = server.cmd("SET", &["busy", "someone", "EX", "60"]);
    let busy = output(
        dlock(&server)
            .stderr(closed_pipe())
            .args(["run", "busy", "--", "sh", "-c", "exit 3"]),
        LIMIT,
    );
    assert_eq!(code(&busy), 75);

    // A normal run that logs (-v) and reports to the closed stderr.
    let ran = output(
        dlock(&server).stderr(closed_pipe()).args([
            "-v", "run", "--report", "json", "k", "--", "sh", "-c", "exit 3",
        ]),
        LIMIT,
    );
    assert_eq!(code(&ran), 3);
    assert!(!exists(&server, "k"), "released");

    // Lost: dlock has to say so while the command runs.
    let scratch = Scratch::new();
    let script = format!(
        "trap 'exit 3' TERM; touch {started}; while :; do sleep 0.05; done",
        started = scratch.path("started").display()
    );
    let lost = crate::support::started(
        dlock(&server)
            .stderr(closed_pipe())
            .args(["run", "--ttl", "1s", "lost", "--", "sh", "-c", &script]),
        &scratch.path("started"),
    );
    let _: () = server.cmd("DEL", &["lost"]);
    let lost = crate::support::finish(lost, LIMIT);
    assert_eq!(code(&lost), 76);

    // status and list print to stdout.
    let _: () = server.cmd("SET", &["k", "someone", "EX", "60"]);
    for args in [vec!["status", "k"], vec!["list"], vec!["list", "--json"]] {
        let out = output(dlock(&server).stdout(closed_pipe()).args(&args), LIMIT);
        assert_eq!(code(&out), 0, "{args:?}: {}", stderr(&out));
    }
}

/// Logs to a pipe or a file are plain text: no colour codes for a log collector to store.
#[test]
fn logs_to_a_pipe_carry_no_colour_codes() {
    let server = RedisServer::start();
    let out = output(
        dlock(&server).args(["-vv", "run", "k", "--", "true"]),
        LIMIT,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let logs = stderr(&out);
    assert!(
        logs.contains("DEBUG") || logs.contains("INFO"),
        "no logs: {logs}"
    );
    assert!(
        !logs.contains('\u{1b}'),
        "colour codes in piped logs: {logs:?}"
    );
}

/// `--metrics-file`: the run's outcome for node_exporter's textfile collector, replaced whole
/// (no temporary file left, readable by the collector), the last success kept across a
/// refused run.
#[test]
fn the_metrics_file_tells_the_outcome_and_keeps_the_last_success() {
    let server = RedisServer::start();
    let scratch = Scratch::new();
    let dir = scratch.path("textfile");
    std::fs::create_dir(&dir).unwrap();
    let metrics = dir.join("job.prom");
    let metrics_arg = metrics.to_str().unwrap();
    let value = |text: &str, series: &str| -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| v.parse().unwrap())
    };
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let ran = output(
        dlock(&server).args(["run", "--metrics-file", metrics_arg, "job", "--", "true"]),
        LIMIT,
    );
    assert_eq!(code(&ran), 0, "{}", stderr(&ran));
    let first = std::fs::read_to_string(&metrics).unwrap();
    let success = value(
        &first,
        r#"dlock_run_last_success_timestamp_seconds{key="job"}"#,
    )
    .expect("a success time");
    assert!(success >= before - 1.0, "{first}");
    assert_eq!(
        value(&first, r#"dlock_run_last_outcome{key="job",outcome="ran"}"#),
        Some(1.0)
    );
    assert!(value(&first, r#"dlock_run_last_fencing_token{key="job"}"#).is_some());

    // Another copy holds the lock: this run is refused, and says so.
    let holder = crate::support::holding(&server, &scratch, "job", 30);
    let busy = output(
        dlock(&server).args(["run", "--metrics-file", metrics_arg, "job", "--", "true"]),
        LIMIT,
    );
    assert_eq!(code(&busy), 75, "{}", stderr(&busy));
    let second = std::fs::read_to_string(&metrics).unwrap();
    assert_eq!(
        value(
            &second,
            r#"dlock_run_last_outcome{key="job",outcome="busy"}"#
        ),
        Some(1.0),
        "{second}"
    );
    assert_eq!(
        value(
            &second,
            r#"dlock_run_last_outcome{key="job",outcome="ran"}"#
        ),
        Some(0.0)
    );
    assert_eq!(
        value(&second, r#"dlock_run_last_exit_code{key="job"}"#),
        Some(75.0)
    );
    assert_eq!(
        value(
            &second,
            r#"dlock_run_last_success_timestamp_seconds{key="job"}"#
        ),
        Some(success),
        "the last success was not kept: {second}"
    );
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(names, ["job.prom"], "a temporary file was left behind");
    let mode = std::fs::metadata(&metrics).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "the collector may not read it");
    crate::support::send(holder.id(), nix::sys::signal::Signal::SIGTERM);
    let _ = finish(holder, LIMIT);
}

/// `valkey://` URLs (Valkey's spelling) work for the CLI as `redis://` ones do.
#[test]
fn a_valkey_url_runs_the_command() {
    let server = RedisServer::start();
    let url = format!("valkey://127.0.0.1:{}/", server.port());
    let out = output(
        dlock(&server).args(["run", "--redis", &url, "k", "--", "true"]),
        LIMIT,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let status = output(dlock(&server).args(["status", "--redis", &url, "k"]), LIMIT);
    assert_eq!(code(&status), 0, "{}", stderr(&status));
}

/// A FIFO where the metrics file goes must not hang dlock at exit (review: reading the old
/// file blocked forever, and dlock's handlers swallowed the SIGTERM meant to end it).
#[test]
fn a_fifo_as_the_metrics_file_does_not_hang_dlock() {
    let server = RedisServer::start();
    let scratch = Scratch::new();
    let fifo = scratch.path("job.prom");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let out = output(
        dlock(&server).args([
            "run",
            "--metrics-file",
            fifo.to_str().unwrap(),
            "k",
            "--",
            "true",
        ]),
        LIMIT,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(std::fs::metadata(&fifo).unwrap().is_file(), "not replaced");
}
