//! The command dlock runs, as the leader of its own process group, under a **guardian**: a tiny
//! re-exec of dlock (`dlock __guard`) that dlock starts and that starts the command, so that
//! every process of the job can be signalled together and none outlives the lock.
//!
//! # Guarantee
//! The run ends only when no process of the job is left (see `run.rs`, which polls
//! [`Job::left`]): the group, and every descendant that left it (`setsid`, a daemonizing
//! child). The guardian is the command's parent and a child subreaper, so such orphans are
//! re-parented to it rather than to init: they stay below dlock in the process tree, where dlock
//! finds them by walking /proc, and the guardian reaps them. A process dlock may not signal
//! (EPERM, e.g. another user's) counts as running: only "no such process" is gone.
//!
//! If dlock dies, even by SIGKILL, the guardian KILLs every process of the job at once: the
//! command's group and everything below the guardian, again and again until nothing is left.
//! It learns of dlock's death from their socket, which belongs to the dlock *process*, so its
//! end comes with dlock's death whatever thread is running (unlike `PR_SET_PDEATHSIG`, which
//! fires when the spawning *thread* exits). The guardian runs in a process group of its own, so
//! a KILL to dlock's group does not reach it, nor do the terminal's signals.
//!
//! # The group's number is never reused under us
//! The guardian reports the leader's exit status to dlock but does not reap the leader until
//! the job is over: while the leader's zombie exists, no new process can get its pid, so the
//! group's number still names the job's group whenever dlock or the guardian signals it. Once
//! dlock has seen the group empty, it does not signal it again ([`Job::signal`]).
//!
//! # The guardian's socket
//! dlock listens on a Unix socket with a random abstract name, starts the guardian with that
//! name (before it takes the lock, see `launch`), and accepts one connection, from the
//! guardian's pid only (SO_PEERCRED). dlock to guardian, first: `start FENCING_TOKEN` (the lock
//! is granted: start the command); a socket that ends before it means "start nothing". Guardian
//! to dlock, one line each: `started PID`, or `failed KIND ERRNO MESSAGE` if the command could
//! not start; then `exited STATUS` (a raw wait status) when the leader exits. dlock's last
//! word: `done` (the job is over: reap the leader and exit quietly), or `abandon` (processes
//! survived SIGKILL and dlock stops waiting: KILL them until they are gone, quietly). The end of
//! the socket without a last word means dlock died: the guardian KILLs what is left of the job.

use std::io;
use std::os::unix::process::ExitStatusExt as _;
use std::process::ExitStatus;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt as _;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

mod guardian;
mod launch;
mod proc;

pub use guardian::{guard_from_args, GUARD_COMMAND};
use launch::address;
pub use launch::Prepared;
pub use proc::become_subreaper;
use proc::{below, group_members, pid_of, runs, ProcStat};

/// How long the guardian may take to start and connect before dlock gives up on it.
const GUARDIAN_START: Duration = Duration::from_secs(10);
/// How often the guardian reaps the orphans it inherits after the leader's exit, and re-KILLs
/// what is left of a job whose dlock died.
pub(super) const GUARD_POLL: Duration = Duration::from_millis(10);

/// Why the command could not start.
#[derive(Debug)]
pub enum SpawnError {
    /// No such program (exit 127).
    NotFound,
    /// The program exists but cannot be executed (exit 126).
    NotExecutable(io::Error),
    /// Anything else (exit 70), including a guardian that could not start.
    Other(io::Error),
}

/// A running command, its process group and its guardian.
#[derive(Debug)]
pub struct Job {
    /// The command's pid, which is its process group's number.
    group: Pid,
    /// The leader has exited (or the guardian died, so its status will never come).
    leader_done: bool,
    /// No process of the group is left: its number may belong to someone else now.
    group_gone: bool,
    guardian: Guardian,
}

/// dlock's side of the guardian.
#[derive(Debug)]
struct Guardian {
    pid: Pid,
    /// Kept so tokio reaps the guardian once it exits; never killed (that would orphan the
    /// job).
    _child: tokio::process::Child,
    events: OwnedReadHalf,
    /// Bytes read from the guardian that do not make a whole line yet.
    pending: Vec<u8>,
    /// `None` once dlock has said its last word; dropping it ends the socket for the guardian.
    control: Option<OwnedWriteHalf>,
}

/// What the guardian tells dlock.
#[derive(Debug, PartialEq)]
enum Event {
    Started(Pid),
    Failed {
        kind: String,
        errno: i32,
        message: String,
    },
    /// The leader's raw wait status.
    Exited(i32),
    /// The socket ended: the guardian is gone.
    Closed,
}

impl Event {
    fn parse(line: &str) -> Event {
        let mut words = line.trim_end().splitn(4, ' ');
        let number = |word: Option<&str>| word.and_then(|w| w.parse::<i32>().ok());
        match words.next() {
            Some("started") => match number(words.next()) {
                Some(pid) if pid > 1 => Event::Started(Pid::from_raw(pid)),
                _ => Event::Closed,
            },
            Some("failed") => Event::Failed {
                kind: words.next().unwrap_or_default().to_owned(),
                errno: number(words.next()).unwrap_or(0),
                message: words.next().unwrap_or_default().to_owned(),
            },
            Some("exited") => number(words.next()).map_or(Event::Closed, Event::Exited),
            _ => Event::Closed,
        }
    }
}

/// What is left of a job whose leader has exited.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Left {
    /// Some process of the job still runs.
    pub any: bool,
    /// Processes of the job dlock is not allowed to signal (they count as running), for
    /// people: "pid 43".
    pub unsignallable: Vec<String>,
}

impl Left {
    /// Counts `pid` if it still runs (anything but ESRCH; EPERM: running, not ours to signal).
    fn note(&mut self, pid: Pid) {
        let result = kill(pid, None);
        if runs(result) {
            self.any = true;
            if result == Err(Errno::EPERM) {
                self.unsignallable.push(format!("pid {pid}"));
            }
        }
    }
}

impl Job {
    /// Sends `signal` to every process of the command's group (forwarding a signal dlock got),
    /// unless the group is known to be gone (its number may have been reused since).
    pub fn signal(&self, signal: Signal) {
        if !self.group_gone {
            // ESRCH (nobody left) is fine: there is nothing to signal.
            let _ = killpg(self.group, signal);
        }
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
        for (pid, stat) in self.running() {
            if stat.pgrp != self.group.as_raw() {
                let _ = kill(pid, signal);
            }
        }
    }

    /// Waits for the command (the group leader) to exit. An error means the guardian died
    /// first: the command's status is unknown.
    ///
    /// # Cancel safety
    /// Cancel safe: what was read of a message is kept for the next call.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            match self.guardian.next_event().await {
                Event::Exited(raw) => {
                    self.leader_done = true;
                    return Ok(ExitStatus::from_raw(raw));
                }
                Event::Closed => {
                    self.leader_done = true;
                    return Err(io::Error::other("the guardian died"));
                }
                Event::Started(_) | Event::Failed { .. } => {}
            }
        }
    }

    /// After the leader has exited: what is left of the job, that is, every live process below
    /// dlock (except the guardian), and, once there is none, every live member of the job's
    /// group (a process that joined it from elsewhere). Once nothing is left, the group is gone
    /// for good: dlock signals it no more.
    pub fn left(&mut self) -> Left {
        debug_assert!(
            self.leader_done,
            "the leader's status comes from the guardian"
        );
        // A walk of the tree reads one children list after another: an orphan re-parented
        // from a dying process to its subreaper between two reads is in neither. Such a move
        // is over before the walk ends, so a second walk right after sees it: only two empty
        // walks in a row mean nothing is left below dlock. The group's members are then
        // looked for once: that scan reads every process on the host (the most expensive
        // step of a short run on a busy host), and a flat scan has no such gap (a re-parented
        // process keeps its group), so a second one would find nothing the first missed.
        for _ in 0..2 {
            let below = self.tree_left();
            if below.any {
                return below;
            }
        }
        let members = self.group_left();
        self.group_gone = !members.any;
        members
    }

    /// One walk of the job's process tree: what of it still runs.
    fn tree_left(&self) -> Left {
        let mut left = Left::default();
        for (pid, _) in self.running() {
            left.note(pid);
        }
        left
    }

    /// One scan of every process for members of the job's group that still run (those outside
    /// its tree: nothing below dlock is left when this is asked).
    fn group_left(&self) -> Left {
        let mut left = Left::default();
        for pid in group_members(self.group) {
            left.note(pid);
        }
        left
    }

    /// Tells the guardian the job is over, so it exits without KILLing anything. Call once
    /// nothing of the job is left.
    pub fn disarm(&mut self) {
        self.guardian.say("done");
    }

    /// Leaves what is left of the job (processes that survived SIGKILL) to the guardian, which
    /// goes on KILLing them, quietly, until they are gone. It holds the leader's zombie until
    /// then, so the group's number it signals cannot have been reused.
    pub fn abandon(&mut self) {
        self.guardian.say("abandon");
    }

    /// Every live process below dlock but the guardian: the job's processes, in its group or
    /// not. Reaps dlock's own exited children on the way (orphans of a guardian that died).
    fn running(&self) -> Vec<(Pid, ProcStat)> {
        let me = nix::unistd::getpid();
        below(me)
            .into_iter()
            .filter(|&(pid, stat)| {
                if pid == self.guardian.pid {
                    return false;
                }
                if stat.is_dead() {
                    if stat.ppid == me.as_raw() {
                        let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
                    }
                    return false;
                }
                true
            })
            .collect()
    }
}

impl Guardian {
    /// The next message from the guardian.
    ///
    /// # Cancel safety
    /// Cancel safe: bytes read are kept in `pending`.
    async fn next_event(&mut self) -> Event {
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                return Event::parse(&String::from_utf8_lossy(&line));
            }
            let mut chunk = [0u8; 256];
            match self.events.read(&mut chunk).await {
                Ok(0) | Err(_) => return Event::Closed,
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// A word to the guardian that is not the last (`start`).
    fn tell(&mut self, word: &str) {
        if let Some(control) = &self.control {
            // A few bytes into an empty socket buffer: never blocks.
            let _ = control.try_write(format!("{word}\n").as_bytes());
        }
    }

    /// dlock's last word to the guardian; the socket's end follows.
    fn say(&mut self, word: &str) {
        if let Some(control) = self.control.take() {
            // A few bytes into an empty socket buffer: never blocks.
            let _ = control.try_write(format!("{word}\n").as_bytes());
        }
    }
}
