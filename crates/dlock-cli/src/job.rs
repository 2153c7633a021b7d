//! The command dlock runs: spawned directly (no shell) as the leader of its own process group,
//! so every process it starts can be signalled together and none outlives the lock.
//!
//! # Guarantee
//! [`Job::finish`] returns only when no process of the group is left: the command's leftovers
//! get the stop signal, then KILL after the stop timeout. Only then is the lock released.
//! On Linux dlock makes itself a child subreaper, so orphaned grandchildren are re-parented to
//! it and reaped here, rather than lingering as zombies that look alive.

use std::ffi::OsString;
use std::io;
use std::process::ExitStatus;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::time::{sleep, Instant};

/// How often a stopping process group is checked for survivors.
const GROUP_POLL: Duration = Duration::from_millis(20);
/// How long processes get to vanish after SIGKILL before dlock gives up waiting (a process in
/// uninterruptible sleep cannot die sooner; the lock must not be held forever for it).
const AFTER_KILL: Duration = Duration::from_secs(5);

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

/// A running command and its process group.
#[derive(Debug)]
pub struct Job {
    child: Child,
    group: Pid,
}

impl Job {
    /// Starts `command` (program and arguments) in dlock's environment with `env` set and
    /// `remove` removed.
    pub fn spawn(
        command: &[OsString],
        env: &[(&str, String)],
        remove: &[&str],
    ) -> Result<Job, SpawnError> {
        let (program, args) = command.split_first().ok_or(SpawnError::NotFound)?;
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
        let group =
            Pid::from_raw(i32::try_from(pid).map_err(|_| {
                SpawnError::Other(io::Error::other(format!("pid {pid} out of range")))
            })?);
        Ok(Job { child, group })
    }

    /// Sends `signal` to every process of the command's group.
    pub fn signal(&self, signal: Signal) {
        // ESRCH (nobody left) is fine: there is nothing to signal.
        let _ = killpg(self.group, signal);
    }

    /// Waits for the command (the group leader) to exit.
    ///
    /// # Cancel safety
    /// Cancel safe (tokio's `Child::wait`).
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// After the leader has exited: makes sure no process of its group is left. Survivors get
    /// `stop_signal` (unless a stop is already under way with deadline `kill_at`), then KILL
    /// at the deadline.
    pub async fn finish(
        &self,
        stop_signal: Signal,
        stop_timeout: Duration,
        kill_at: Option<Instant>,
    ) {
        if !self.group_alive() {
            return;
        }
        let kill_at = match kill_at {
            Some(at) => at,
            None => {
                tracing::info!(
                    group = self.group.as_raw(),
                    "stopping processes the command left"
                );
                self.signal(stop_signal);
                Instant::now() + stop_timeout
            }
        };
        if self.wait_group_gone(kill_at).await {
            return;
        }
        self.signal(Signal::SIGKILL);
        if !self.wait_group_gone(Instant::now() + AFTER_KILL).await {
            tracing::warn!(group = self.group.as_raw(), "processes survived SIGKILL");
        }
    }

    async fn wait_group_gone(&self, deadline: Instant) -> bool {
        loop {
            if !self.group_alive() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            sleep(GROUP_POLL.min(deadline - Instant::now())).await;
        }
    }

    /// Whether any process of the group is still running. Reaps the group's zombies that were
    /// re-parented to dlock first, so a dead process does not count as alive.
    fn group_alive(&self) -> bool {
        let group = Pid::from_raw(-self.group.as_raw());
        while let Ok(status) = waitpid(group, Some(WaitPidFlag::WNOHANG)) {
            if status == WaitStatus::StillAlive {
                break;
            }
        }
        killpg(self.group, None).is_ok()
    }
}

/// Makes dlock the reaper of its descendants' orphans (Linux), so [`Job::finish`] can see and
/// reap them. Elsewhere orphans go to init as usual.
pub fn become_subreaper() {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::debug!(%e, "could not become a child subreaper");
    }
}
