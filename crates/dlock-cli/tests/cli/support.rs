//! Running the `dlock` binary in tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use dlock_test::RedisServer;

/// A `dlock` command pointed at `server` (through `DLOCK_REDIS_URL`, as users would).
pub fn dlock(server: &RedisServer) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dlock"));
    cmd.env("DLOCK_REDIS_URL", server.url())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs `cmd` to completion within `limit` (a hung dlock fails the test instead of CI).
pub fn output(cmd: &mut Command, limit: Duration) -> Output {
    let child = cmd.spawn().expect("spawn dlock");
    finish(child, limit)
}

/// Waits for a spawned dlock within `limit` and collects its output.
pub fn finish(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("poll dlock").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect");
            panic!(
                "dlock did not finish within {limit:?}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("collect dlock output")
}

/// dlock's exit code (panics if it died of a signal: dlock itself never should).
pub fn code(out: &Output) -> i32 {
    out.status
        .code()
        .unwrap_or_else(|| panic!("dlock died of a signal: {:?}\n{}", out.status, stderr(out)))
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Spawns `cmd` and waits until the job it runs creates `marker` (it has the lock and started).
///
/// # Panics
/// When the marker does not appear within 20 s.
pub fn started(cmd: &mut Command, marker: &Path) -> Child {
    let child = cmd.spawn().expect("spawn dlock");
    assert!(
        wait_for_file(marker, Duration::from_secs(20)),
        "the job never started (no {})",
        marker.display()
    );
    child
}

/// A `dlock run KEY` whose job holds the lock for `seconds`, returned once it started (its
/// marker is `holding` in `scratch`).
pub fn holding(server: &RedisServer, scratch: &Scratch, key: &str, seconds: u32) -> Child {
    let marker = scratch.path("holding");
    let job = format!("touch {}; sleep {seconds}", marker.display());
    started(
        dlock(server).args(["run", key, "--", "sh", "-c", &job]),
        &marker,
    )
}

/// Polls until `path` exists, within `limit`.
pub fn wait_for_file(path: &Path, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while !path.exists() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// A scratch directory for marker files the child writes.
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        Scratch {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }
}

/// Whether a Redis key exists.
pub fn exists(server: &RedisServer, key: &str) -> bool {
    let n: i64 = server.cmd("EXISTS", &[key]);
    n == 1
}

/// Sends `signal` to process `pid`.
pub fn send(pid: u32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).unwrap();
}

/// Whether process `pid` is alive (and not a zombie awaiting its parent).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// The state letter of process `pid` from /proc (R, S, T, Z, …); `None` once it is gone.
pub fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    state_and_group(&stat).map(|(state, _)| state)
}

/// The state letters of the processes in process group `group`, from /proc.
pub fn group_states(group: u32) -> Vec<char> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let stat = std::fs::read_to_string(entry.ok()?.path().join("stat")).ok()?;
            let (state, pgrp) = state_and_group(&stat)?;
            (pgrp == group).then_some(state)
        })
        .collect()
}

/// A /proc/PID/stat line's state letter and process group: the fields after the command name
/// (which may hold spaces and parentheses) are state, ppid, pgrp, …
fn state_and_group(stat: &str) -> Option<(char, u32)> {
    let mut fields = stat.rsplit(')').next()?.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let pgrp = fields.nth(1)?.parse().ok()?;
    Some((state, pgrp))
}

/// Polls `condition` every 10 ms until it holds, within `limit`.
pub fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads a pid a job wrote to `path` (waits up to 20 s for it to be written in full).
pub fn read_pid(path: &Path) -> u32 {
    let mut pid = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            pid = std::fs::read_to_string(path)
                .ok()
                .filter(|text| text.ends_with('\n'))
                .and_then(|text| text.trim().parse().ok());
            pid.is_some()
        }),
        "no pid in {}",
        path.display()
    );
    pid.unwrap()
}

/// The ε of a timing bound, measured now on this (loaded, two-core) machine: one whole
/// `dlock run KEY -- true` here (process start, connect, grant, the command's spawn and exit,
/// release, exit), doubled for the machine's noise, plus one 10 ms poll of the test's own.
/// Whatever a bound allows beyond its named duration (a round trip, a signal, a shell running
/// its trap, a process start) is no more than such a run.
pub fn epsilon(server: &RedisServer) -> Duration {
    let started = Instant::now();
    let out = output(
        dlock(server).args(["run", "dlock-test:epsilon", "--", "true"]),
        Duration::from_secs(20),
    );
    let took = started.elapsed();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    took * 2 + Duration::from_millis(10)
}

/// How many clients are subscribed to `channel` (`PUBSUB NUMSUB`): a waiting dlock subscribes
/// to its lock's wake-up channel, `{KEY}:dlock:released:KEY`.
pub fn numsub(server: &RedisServer, channel: &str) -> i64 {
    let reply: Vec<redis::Value> = server.cmd("PUBSUB", &["NUMSUB", channel]);
    match reply.get(1) {
        Some(redis::Value::Int(n)) => *n,
        other => panic!("PUBSUB NUMSUB answered {other:?}"),
    }
}
