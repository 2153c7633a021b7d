//! Starting a job in two steps: the guardian first, while dlock connects and takes the lock, and
//! the command once the lock is granted.
//!
//! # Why two steps
//! Starting the guardian (an exec of dlock's own binary) costs about as much as connecting and
//! taking the lock, and neither needs the other, so `dlock run` starts it first and the two
//! overlap. The guardian connects and then waits for dlock's `start FENCING_TOKEN`; only then
//! does it start the command, with the grant's token in `DLOCK_FENCING_TOKEN`. A guardian told
//! nothing starts nothing: a [`Prepared`] dropped without [`Prepared::start`] (the lock was
//! refused, an error) KILLs it, and if dlock dies, the guardian's socket ends (or its connect
//! is refused) and it exits quietly.

use std::ffi::OsString;
use std::io;
use std::os::unix::net::{SocketAddr, UnixListener};

use nix::unistd::Pid;

use super::{pid_of, Event, Guardian, Job, SpawnError, GUARDIAN_START, GUARD_COMMAND};

/// A guardian started ahead of its command: it waits for [`Prepared::start`]. Dropping it
/// KILLs the guardian (which has started nothing).
#[derive(Debug)]
pub struct Prepared {
    listener: tokio::net::UnixListener,
    pid: Pid,
    /// `None` once handed to the [`Job`], which must never kill it.
    child: Option<tokio::process::Child>,
}

impl Job {
    /// Starts the guardian for `command` (program and arguments), in dlock's environment with
    /// `env` set and `remove` removed, with dlock's stdin, stdout and stderr. The command
    /// starts at [`Prepared::start`].
    pub fn prepare(
        command: &[OsString],
        env: &[(&str, String)],
        remove: &[&str],
    ) -> Result<Prepared, SpawnError> {
        if command.is_empty() {
            return Err(SpawnError::NotFound);
        }
        let (listener, name) = listen().map_err(guardian_error)?;
        // /proc/self/exe still works if dlock's file was replaced or deleted since it started.
        let exe = if cfg!(target_os = "linux") {
            std::path::PathBuf::from("/proc/self/exe")
        } else {
            std::env::current_exe().map_err(guardian_error)?
        };
        let mut cmd = tokio::process::Command::new(exe);
        for name in remove {
            cmd.env_remove(name);
        }
        cmd.arg(GUARD_COMMAND)
            .arg(&name)
            .arg("--")
            .args(command)
            .envs(env.iter().map(|(k, v)| (k, v)))
            // Its own process group: a KILL to dlock's group (`kill -9 %1`, `timeout -s
            // KILL`) must not take the guardian down with dlock. Being in no foreground group,
            // it gets no terminal signals either (Ctrl-C, Ctrl-Z go to the foreground group).
            .process_group(0);
        let child = cmd.spawn().map_err(guardian_error)?;
        let pid = child
            .id()
            .and_then(pid_of)
            .ok_or_else(|| guardian_error(io::Error::other("it has no pid")))?;
        Ok(Prepared {
            listener,
            pid,
            child: Some(child),
        })
    }
}

impl Prepared {
    /// Has the guardian start the command, with the first of `fencing_tokens` (one per lock
    /// held) in `DLOCK_FENCING_TOKEN` and, for several, all of them in `DLOCK_FENCING_TOKENS`,
    /// and returns the running job once the guardian says it started.
    pub async fn start(mut self, fencing_tokens: &[u64]) -> Result<Job, SpawnError> {
        let mut child = self.child.take().expect("a prepared guardian");
        let stream = tokio::select! {
            stream = accept_from(&self.listener, self.pid) => stream,
            status = child.wait() => {
                return Err(guardian_error(io::Error::other(match status {
                    Ok(status) => format!("it exited early ({status})"),
                    Err(e) => e.to_string(),
                })))
            }
            () = tokio::time::sleep(GUARDIAN_START) => {
                // Not started: it may go (a guardian told nothing starts nothing).
                let _ = child.start_kill();
                return Err(guardian_error(io::Error::other("it did not answer")))
            }
        };
        let stream = stream.map_err(|e| {
            let _ = child.start_kill();
            guardian_error(e)
        })?;
        let (events, control) = stream.into_split();
        let mut job = Job {
            group: Pid::from_raw(0),
            leader_done: false,
            group_gone: false,
            guardian: Guardian {
                pid: self.pid,
                _child: child,
                events,
                pending: Vec::new(),
                control: Some(control),
            },
        };
        let tokens: Vec<String> = fencing_tokens.iter().map(u64::to_string).collect();
        job.guardian.tell(&format!("start {}", tokens.join(" ")));
        job.started().await
    }
}

impl Job {
    /// The guardian's answer to `start`: the job with its group, or why the command did not
    /// start.
    async fn started(mut self) -> Result<Job, SpawnError> {
        match self.guardian.next_event().await {
            Event::Started(leader) => {
                self.group = leader;
                Ok(self)
            }
            Event::Failed {
                kind,
                errno,
                message,
            } => {
                self.guardian.say("done");
                let error = if errno > 0 {
                    io::Error::from_raw_os_error(errno)
                } else {
                    io::Error::other(message)
                };
                Err(match kind.as_str() {
                    "not-found" => SpawnError::NotFound,
                    "not-executable" => SpawnError::NotExecutable(error),
                    _ => SpawnError::Other(error),
                })
            }
            Event::Exited(_) | Event::Closed => Err(guardian_error(io::Error::other(
                "it ended before starting the command",
            ))),
        }
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            // Told nothing, it has started nothing: KILLing it leaves nothing behind, and
            // keeps it from saying anything on dlock's stderr. Reaped here, since dlock may
            // exit next: an orphaned zombie per refused run would pile up under a parent that
            // does not reap (a container's PID 1, a supervisor that is a subreaper). Bounded,
            // for a guardian stuck in uninterruptible sleep (its exec on a hung file system).
            let _ = child.start_kill();
            for _ in 0..REAP_TRIES {
                if !matches!(child.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(REAP_PAUSE);
            }
        }
    }
}

/// How often, and how long apart, a dismissed guardian's exit is looked for (at most 1 s).
const REAP_TRIES: u32 = 1000;
const REAP_PAUSE: std::time::Duration = std::time::Duration::from_millis(1);

fn guardian_error(e: io::Error) -> SpawnError {
    SpawnError::Other(io::Error::new(
        e.kind(),
        format!("cannot start the guardian: {e}"),
    ))
}

/// The socket's address for `name`: abstract on Linux (nothing to clean up, nothing on disk).
pub(super) fn address(name: &str) -> io::Result<SocketAddr> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        #[cfg(target_os = "android")]
        use std::os::android::net::SocketAddrExt as _;
        #[cfg(target_os = "linux")]
        use std::os::linux::net::SocketAddrExt as _;
        SocketAddr::from_abstract_name(name)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        SocketAddr::from_pathname(std::env::temp_dir().join(name))
    }
}

/// A listening socket with a fresh random name, for one guardian.
fn listen() -> io::Result<(tokio::net::UnixListener, String)> {
    let mut attempts = 0;
    loop {
        let name = format!(
            "dlock-guard-{}-{:016x}",
            std::process::id(),
            fastrand::u64(..)
        );
        match UnixListener::bind_addr(&address(&name)?) {
            Ok(listener) => {
                listener.set_nonblocking(true)?;
                return Ok((tokio::net::UnixListener::from_std(listener)?, name));
            }
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && attempts < 3 => attempts += 1,
            Err(e) => return Err(e),
        }
    }
}

/// The first connection that comes from `pid`; others (anyone may connect to an abstract
/// socket) are dropped.
async fn accept_from(
    listener: &tokio::net::UnixListener,
    pid: Pid,
) -> io::Result<tokio::net::UnixStream> {
    loop {
        let (stream, _) = listener.accept().await?;
        if stream.peer_cred()?.pid() == Some(pid.as_raw()) {
            return Ok(stream);
        }
    }
}
