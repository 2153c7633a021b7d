//! The command dlock runs: spawned directly (no shell) as the leader of its own process group,
//! so every process it starts can be signalled together and none outlives the lock.
//!
//! # Guarantee
//! The run ends only when no process of the job is left (see `run.rs`, which polls
//! [`Job::left`]): the group, and every descendant that left it (`setsid`, a daemonizing
//! child). dlock makes itself a child subreaper, so such orphans are re-parented to it rather
//! than to init, found by walking its process tree in /proc, and reaped here. A process dlock
//! may not signal (EPERM, e.g. another user's) counts as running: only "no such process" is
//! gone.
//!
//! If dlock itself is SIGKILLed, its **guardian** takes the job's process group down: a tiny
//! re-exec of dlock (`dlock __guard`), started before the command, that reads the group's
//! number from a pipe and KILLs the group when the pipe closes without dlock having said the
//! job is over. The pipe belongs to the
//! dlock *process*, so its end comes with dlock's death whatever thread is running, unlike
//! `PR_SET_PDEATHSIG`, which fires when the spawning *thread* exits and would cover the leader
//! only, not its children. Processes that left the group are not covered by the guardian.

use std::collections::HashSet;
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::unix::process::CommandExt as _;
use std::process::{ChildStdin, ExitStatus, Stdio};

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

/// Why the command could not start.
#[derive(Debug)]
pub enum SpawnError {
    /// No such program (exit 127).
    NotFound,
    /// The program exists but cannot be executed (exit 126).
    NotExecutable(io::Error),
    /// Anything else (exit 70).
    Other(io::Error),
}

/// A running command, its process group and its guardian.
#[derive(Debug)]
pub struct Job {
    child: Child,
    group: Pid,
    /// The leader has been reaped (by tokio): from then on dlock may reap what is left.
    leader_reaped: bool,
    /// dlock's end of the guardian's pipe, and the guardian's pid; `None` if it could not
    /// start.
    guardian: Option<(ChildStdin, Pid)>,
}

/// What is left of a job whose leader has exited.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Left {
    /// Some process of the job still runs.
    pub any: bool,
    /// Processes of the job dlock is not allowed to signal (they count as running), for
    /// people: "process group 42", "pid 43".
    pub unsignallable: Vec<String>,
}

impl Job {
    /// Starts `command` (program and arguments) in dlock's environment with `env` set and
    /// `remove` removed, then its guardian.
    pub fn spawn(
        command: &[OsString],
        env: &[(&str, String)],
        remove: &[&str],
    ) -> Result<Job, SpawnError> {
        let (program, args) = command.split_first().ok_or(SpawnError::NotFound)?;
        // The guardian starts first, so it is in place (its exec done) before the command
        // runs; it learns the group's number a few microseconds after the command's spawn.
        let guardian = match spawn_guardian() {
            Ok(guardian) => Some(guardian),
            Err(e) => {
                errln!(
                    "dlock: warning: cannot start the guardian ({e}); if dlock is killed with \
                     SIGKILL, the command will keep running"
                );
                None
            }
        };
        let mut cmd = Command::new(program);
        for name in remove {
            cmd.env_remove(name);
        }
        cmd.args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .process_group(0)
            // Backstop: if dlock itself unwinds, the command does not run on unlocked.
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => SpawnError::NotFound,
            io::ErrorKind::PermissionDenied => SpawnError::NotExecutable(e),
            _ if e.raw_os_error() == Some(Errno::ENOEXEC as i32) => SpawnError::NotExecutable(e),
            _ => SpawnError::Other(e),
        })?;
        let pid = child.id().ok_or_else(|| {
            SpawnError::Other(io::Error::other("the command exited before it got a pid"))
        })?;
        let group = pid_of(pid).ok_or_else(|| {
            SpawnError::Other(io::Error::other(format!("pid {pid} out of range")))
        })?;
        // If dlock is killed between the spawn and this write, the command runs unguarded: a
        // window of microseconds that no safe Rust can close (the command would have to start
        // stopped). Dropping the guardian on a failed spawn above ends it quietly.
        let guardian = guardian.and_then(|(mut pipe, pid)| {
            match writeln!(pipe, "{group}").and_then(|()| pipe.flush()) {
                Ok(()) => Some((pipe, pid)),
                Err(e) => {
                    errln!(
                        "dlock: warning: the guardian is gone ({e}); if dlock is killed with \
                         SIGKILL, the command will keep running"
                    );
                    None
                }
            }
        });
        Ok(Job {
            child,
            group,
            leader_reaped: false,
            guardian,
        })
    }

    /// Sends `signal` to every process of the command's group (forwarding a signal dlock got).
    pub fn signal(&self, signal: Signal) {
        // ESRCH (nobody left) is fine: there is nothing to signal.
        let _ = killpg(self.group, signal);
    }

    /// Asks every process of the job to stop: `signal` to the group and to each descendant
    /// that left it, then SIGCONT, so a stopped (Ctrl-Z) process can act on it.
    pub fn stop(&self, signal: Signal) {
        self.signal_everyone(signal);
        if !matches!(signal, Signal::SIGKILL | Signal::SIGCONT) {
            self.signal_everyone(Signal::SIGCONT);
        }
    }

    /// KILLs every process of the job.
    pub fn kill(&self) {
        self.signal_everyone(Signal::SIGKILL);
    }

    fn signal_everyone(&self, signal: Signal) {
        self.signal(signal);
        for process in self.outside_group() {
            let _ = kill(process, signal);
        }
    }

    /// Waits for the command (the group leader) to exit.
    ///
    /// # Cancel safety
    /// Cancel safe (tokio's `Child::wait`).
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        let status = self.child.wait().await;
        self.leader_reaped = true;
        status
    }

    /// After the leader has exited: what is left of the job. Reaps dlock's children that have
    /// exited first, so a dead process does not count as running.
    pub fn left(&self) -> Left {
        debug_assert!(self.leader_reaped, "the leader's status belongs to tokio");
        // The group's zombies re-parented to dlock.
        let group = Pid::from_raw(-self.group.as_raw());
        while let Ok(status) = waitpid(group, Some(WaitPidFlag::WNOHANG)) {
            if status == WaitStatus::StillAlive {
                break;
            }
        }
        let mut left = Left::default();
        let mut note = |result: nix::Result<()>, who: &dyn Fn() -> String| {
            if runs(result) {
                left.any = true;
                if result == Err(Errno::EPERM) {
                    left.unsignallable.push(who());
                }
            }
        };
        note(killpg(self.group, None), &|| {
            format!("process group {}", self.group)
        });
        for process in self.outside_group() {
            note(kill(process, None), &|| format!("pid {process}"));
        }
        left
    }

    /// Tells the guardian the job is over, so dlock's exit no longer KILLs its group (whose
    /// number may be reused by then). Call once nothing of the job is left.
    pub fn disarm(&mut self) {
        if let Some((mut pipe, _)) = self.guardian.take() {
            let _ = pipe.write_all(b"x");
        }
    }

    /// Running descendants of dlock outside the job's group: processes that left it (setsid,
    /// daemons), found through re-parenting to dlock (a subreaper) or below the leader.
    /// Reaps dlock's exited children on the way, except the leader while tokio owns it.
    fn outside_group(&self) -> Vec<Pid> {
        let guardian = self.guardian.as_ref().map(|(_, pid)| *pid);
        let leader = (!self.leader_reaped).then_some(self.group);
        let mut found = Vec::new();
        let mut seen = HashSet::new();
        let mut pending = children(nix::unistd::getpid());
        while let Some(pid) = pending.pop() {
            if Some(pid) == guardian || !seen.insert(pid) {
                continue;
            }
            let Some(process) = ProcStat::read(pid) else {
                continue;
            };
            if process.state == 'Z' || process.state == 'X' {
                if process.ppid == nix::unistd::getpid().as_raw() && Some(pid) != leader {
                    let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
                }
                continue;
            }
            if process.pgrp != self.group.as_raw() {
                found.push(pid);
            }
            pending.extend(children(pid));
        }
        found
    }
}

/// Whether the answer to "signal 0 to this process (group)" means something still runs:
/// anything but ESRCH (no such process). EPERM means it runs but is not ours to signal.
fn runs(result: nix::Result<()>) -> bool {
    result != Err(Errno::ESRCH)
}

/// The fields of /proc/PID/stat dlock needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcStat {
    state: char,
    ppid: i32,
    pgrp: i32,
}

impl ProcStat {
    fn read(pid: Pid) -> Option<ProcStat> {
        ProcStat::parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    /// `pid (comm) state ppid pgrp …`; comm may hold spaces and parentheses, so the fields
    /// start after the last ')'.
    fn parse(stat: &str) -> Option<ProcStat> {
        let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
        let state = fields.next()?.chars().next()?;
        let ppid = fields.next()?.parse().ok()?;
        let pgrp = fields.next()?.parse().ok()?;
        Some(ProcStat { state, ppid, pgrp })
    }
}

/// The children of `pid`: from /proc/PID/task/*/children, or, on kernels built without it,
/// from every process's parent in /proc/*/stat.
fn children(pid: Pid) -> Vec<Pid> {
    let mut found = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return found;
    };
    for task in tasks.flatten() {
        match std::fs::read_to_string(task.path().join("children")) {
            Ok(list) => found.extend(
                list.split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .map(Pid::from_raw),
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound && task.path().exists() => {
                return children_by_scan(pid);
            }
            // The task ended meanwhile.
            Err(_) => {}
        }
    }
    found
}

fn children_by_scan(parent: Pid) -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .map(Pid::from_raw)
        .filter(|&pid| ProcStat::read(pid).is_some_and(|stat| stat.ppid == parent.as_raw()))
        .collect()
}

fn pid_of(pid: u32) -> Option<Pid> {
    i32::try_from(pid).ok().map(Pid::from_raw)
}

/// Starts `dlock __guard` with a pipe on its stdin (see the module doc).
fn spawn_guardian() -> io::Result<(ChildStdin, Pid)> {
    // /proc/self/exe still works if dlock's file was replaced or deleted since it started.
    let exe = if cfg!(target_os = "linux") {
        std::path::PathBuf::from("/proc/self/exe")
    } else {
        std::env::current_exe()?
    };
    let mut guardian = std::process::Command::new(exe)
        .arg(GUARD_COMMAND)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        // Its own process group: a KILL to dlock's group (`kill -9 %1`, `timeout -s KILL`)
        // must not take the guardian down with dlock. Being in no foreground group, it gets
        // no terminal signals either (Ctrl-C, Ctrl-Z go to the foreground group).
        .process_group(0)
        .spawn()?;
    let pid = pid_of(guardian.id()).ok_or_else(|| io::Error::other("guardian pid"))?;
    let pipe = guardian
        .stdin
        .take()
        .ok_or_else(|| io::Error::other("no pipe to the guardian"))?;
    // The guardian is never waited for: it exits with dlock, and init reaps it.
    Ok((pipe, pid))
}

/// The hidden subcommand that runs [`guard`].
pub const GUARD_COMMAND: &str = "__guard";

/// The guardian's whole life: read the job's process group from dlock's pipe, wait for the
/// pipe to end, and KILL the group unless dlock said first that the job is over. Returns the
/// exit code.
pub fn guard() -> u8 {
    // Signals meant for dlock (Ctrl-C, Ctrl-Z, a TERM to dlock's process group) must not
    // end or stop the guardian: dlock decides the job's fate while it lives. Blocked (not
    // ignored: that needs unsafe code), they simply stay pending until the guardian exits.
    let mut blocked = SigSet::empty();
    for signal in [
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGHUP,
        Signal::SIGTERM,
        Signal::SIGTSTP,
        Signal::SIGTTIN,
        Signal::SIGTTOU,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGPIPE,
    ] {
        blocked.add(signal);
    }
    let _ = blocked.thread_block();
    let mut stdin = io::stdin().lock();
    let mut line = String::new();
    // EOF before a number: dlock never started the command (or died first); nothing to do.
    if io::BufRead::read_line(&mut stdin, &mut line).is_err() || !line.ends_with('\n') {
        return 0;
    }
    let Ok(group) = line.trim().parse::<i32>() else {
        errln!("dlock: {GUARD_COMMAND} is internal to dlock run");
        return crate::exit::USAGE;
    };
    // Never group 0 (our own) or 1; and when the group's leader still exists, it must be our
    // sibling, started by the same dlock: a guardian guards nothing else.
    let sibling = ProcStat::read(Pid::from_raw(group))
        .is_none_or(|leader| leader.ppid == nix::unistd::getppid().as_raw());
    if group <= 1 || !sibling {
        errln!("dlock: {GUARD_COMMAND} is internal to dlock run");
        return crate::exit::USAGE;
    }
    let mut byte = [0u8; 1];
    let disarmed = loop {
        match stdin.read(&mut byte) {
            Ok(n) => break n > 0,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break false,
        }
    };
    if !disarmed && killpg(Pid::from_raw(group), Signal::SIGKILL).is_ok() {
        errln!("dlock: dlock died; killed its command's process group {group}");
    }
    0
}

/// Makes dlock the reaper of its descendants' orphans (Linux), so they stay visible to
/// [`Job::left`] and are reaped there. Elsewhere orphans go to init as usual.
pub fn become_subreaper() {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::debug!(%e, "could not become a child subreaper");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_no_such_process_means_gone() {
        assert!(runs(Ok(())));
        assert!(runs(Err(Errno::EPERM)), "not ours to signal, but running");
        assert!(runs(Err(Errno::EINVAL)));
        assert!(!runs(Err(Errno::ESRCH)));
    }

    #[test]
    fn proc_stat_fields_are_read_after_the_command_name() {
        let stat = "42 (a (weird) name) S 7 42 42 0 -1 4194560 99";
        assert_eq!(
            ProcStat::parse(stat),
            Some(ProcStat {
                state: 'S',
                ppid: 7,
                pgrp: 42
            })
        );
        assert_eq!(ProcStat::parse("garbage"), None);
        let own = ProcStat::read(nix::unistd::getpid()).expect("our own stat");
        assert_eq!(own.ppid, nix::unistd::getppid().as_raw());
    }

    #[test]
    fn children_are_found_in_proc() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("spawn sleep");
        let pid = pid_of(child.id()).expect("pid");
        let me = nix::unistd::getpid();
        assert!(children(me).contains(&pid));
        assert!(children_by_scan(me).contains(&pid));
        let _ = child.kill();
        let _ = child.wait();
    }
}
