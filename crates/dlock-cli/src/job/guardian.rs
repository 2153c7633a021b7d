//! The guardian (`dlock __guard`): the command's parent and child subreaper, which KILLs every
//! process of the job if dlock dies (see the parent module's doc for the protocol).

use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt as _;

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, SigSet, Signal};
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::proc::{become_subreaper, below, children, pid_of, ProcStat};
use super::{address, GUARD_POLL};

/// The hidden subcommand that runs [`guard`].
pub const GUARD_COMMAND: &str = "__guard";

/// `dlock __guard SOCKET -- CMD…`, as `dlock run` starts it (see `launch`).
#[derive(Debug)]
struct GuardArgs {
    /// The name of the socket `dlock run` listens on for its guardian.
    socket: String,
    /// The command to start.
    command: Vec<OsString>,
}

/// Runs the guardian if dlock's arguments (`args`, the program name first) ask for it, and
/// returns its exit code; `None` for every other dlock command. Arguments that are not
/// exactly what `dlock run` passes are a usage error: the guardian is not for people.
pub fn guard_from_args(args: impl IntoIterator<Item = OsString>) -> Option<u8> {
    let mut args = args.into_iter().skip(1);
    if args.next()? != GUARD_COMMAND {
        return None;
    }
    let socket = args.next().and_then(|socket| socket.into_string().ok());
    let separator = args.next();
    let command: Vec<OsString> = args.collect();
    match socket {
        Some(socket) if separator.as_deref() == Some("--".as_ref()) && !command.is_empty() => {
            Some(guard(&GuardArgs { socket, command }))
        }
        _ => {
            errln!("dlock: {GUARD_COMMAND} is internal to dlock run");
            Some(crate::exit::USAGE)
        }
    }
}

/// The guardian's whole life (see the module doc): connect to dlock, start the command, report
/// its start and its exit, reap the orphans it inherits, and when dlock's socket ends without
/// `done`, KILL every process of the job until none is left. Returns the exit code.
fn guard(args: &GuardArgs) -> u8 {
    // Signals meant for dlock (Ctrl-C, Ctrl-Z, a TERM to dlock's process group) must not
    // end or stop the guardian: dlock decides the job's fate while it lives. Blocked (not
    // ignored: that needs unsafe code), they simply stay pending until the guardian exits. The
    // command starts with an empty mask (std resets it before exec).
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
    let stream = match address(&args.socket).and_then(|addr| UnixStream::connect_addr(&addr)) {
        Ok(stream) => stream,
        // Nobody listens: dlock died before its guardian connected (or this is a run by
        // hand). Quietly, as nothing was started and nobody may be there to read it.
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return crate::exit::USAGE,
        Err(e) => {
            errln!("dlock: {GUARD_COMMAND} is internal to dlock run ({e})");
            return crate::exit::USAGE;
        }
    };
    let Some((program, command_args)) = args.command.split_first() else {
        return crate::exit::USAGE;
    };
    if !from_parent(&stream) {
        return crate::exit::USAGE;
    }
    let mut words = BufReader::new(&stream);
    // Started ahead of the lock, the guardian starts the command only when dlock says the lock
    // is granted; a socket that ends first (refused, dlock died) means start nothing.
    let Some(fencing_tokens) = next_word(&mut words)
        .as_deref()
        .and_then(|word| word.strip_prefix("start "))
        .and_then(parse_tokens)
    else {
        return 0;
    };
    if let Err(e) = become_subreaper() {
        errln!(
            "dlock: guardian: cannot become a child subreaper ({e}); if dlock is killed, \
             processes that left the command's group keep running"
        );
    }
    let mut report = match stream.try_clone() {
        Ok(report) => report,
        Err(e) => {
            errln!("dlock: guardian: {e}");
            return crate::exit::INTERNAL;
        }
    };
    let leader = match start(program, command_args, &fencing_tokens) {
        // Dropping a std Child neither kills nor reaps it: the guardian reaps it itself.
        Ok(child) => pid_of(child.id()),
        Err(e) => {
            let kind = match e.kind() {
                io::ErrorKind::NotFound => "not-found",
                io::ErrorKind::PermissionDenied => "not-executable",
                _ if e.raw_os_error() == Some(Errno::ENOEXEC as i32) => "not-executable",
                _ => "other",
            };
            let errno = e.raw_os_error().unwrap_or(0);
            let message = e.to_string().replace('\n', " ");
            let _ = writeln!(report, "failed {kind} {errno} {message}");
            let _ = next_word(&mut words);
            return 0;
        }
    };
    let Some(leader) = leader else {
        let _ = writeln!(report, "failed other 0 pid out of range");
        return crate::exit::INTERNAL;
    };
    let _ = writeln!(report, "started {leader}");
    std::thread::spawn(move || reap(leader, &mut report));
    match next_word(&mut words).as_deref() {
        Some("done") => {
            // The job is over: the leader's zombie has kept the group's number ours until now.
            let _ = waitpid(leader, Some(WaitPidFlag::WNOHANG));
        }
        // dlock already said why.
        Some(_) => {
            kill_all(leader);
        }
        None => {
            if kill_all(leader) {
                errln!("dlock: dlock died; killed the processes of its command");
            }
        }
    }
    0
}

/// Starts the command as the leader of its own process group, with an empty signal mask. std
/// passes the spawning thread's mask on to the child, and the guardian's main thread blocks
/// signals, so the spawn happens in a short-lived thread that blocks nothing. (While it runs, a
/// signal sent to the guardian's pid could end the guardian: a window of the spawn's duration,
/// against deliberate kills only, since no terminal or group signal reaches the guardian.)
fn start(
    program: &OsString,
    args: &[OsString],
    fencing_tokens: &[u64],
) -> io::Result<std::process::Child> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                SigSet::empty().thread_set_mask()?;
                let mut command = std::process::Command::new(program);
                command
                    .args(args)
                    .env("DLOCK_FENCING_TOKEN", fencing_tokens[0].to_string());
                if fencing_tokens.len() > 1 {
                    let all: Vec<String> = fencing_tokens.iter().map(u64::to_string).collect();
                    command.env("DLOCK_FENCING_TOKENS", all.join(" "));
                }
                command.process_group(0).spawn()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the spawning thread panicked")))
    })
}

/// The fencing tokens of `start T1 [T2 …]` (one per lock held, `--and`): all whole numbers,
/// at least one.
fn parse_tokens(tokens: &str) -> Option<Vec<u64>> {
    let tokens: Vec<u64> = tokens
        .split(' ')
        .map(|token| token.parse().ok())
        .collect::<Option<_>>()?;
    (!tokens.is_empty()).then_some(tokens)
}

/// Whether the socket's other end is the guardian's parent, the dlock that started it. An
/// abstract socket has no permissions: if dlock died between binding the name and this
/// connect, anyone could bind it and say `start`, and the command would run with no lock. A
/// dead dlock's guardian has another parent (a subreaper or init), so that is refused too.
fn from_parent(stream: &UnixStream) -> bool {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    getsockopt(stream, PeerCredentials)
        .is_ok_and(|peer| peer.pid() == nix::unistd::getppid().as_raw())
}

/// Waits for dlock's next word; `None` if the socket ended without one. One reader for the
/// guardian's whole life, so nothing it buffered is lost between two words.
fn next_word(words: &mut BufReader<&UnixStream>) -> Option<String> {
    let mut line = String::new();
    match words.read_line(&mut line) {
        Ok(_) if line.ends_with('\n') => Some(line.trim_end().to_owned()),
        _ => None,
    }
}

/// The guardian's reaper thread: reaps every child that exits (orphans re-parented to the
/// guardian), reports the leader's exit to dlock but leaves the leader a zombie, so the group's
/// number cannot be reused while the guardian lives.
fn reap(leader: Pid, report: &mut UnixStream) {
    loop {
        match waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Ok(status) if status.pid() == Some(leader) => {
                let _ = writeln!(report, "exited {}", raw_status(status));
                break;
            }
            Ok(status) => {
                if let Some(pid) = status.pid() {
                    let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
                }
            }
            Err(Errno::EINTR) => {}
            // ECHILD: the leader was reaped (the guardian is ending).
            Err(_) => return,
        }
    }
    // waitid would now return the leader's zombie every time: poll instead.
    loop {
        reap_children_but(leader);
        std::thread::sleep(GUARD_POLL);
    }
}

/// Reaps the guardian's exited children, except `leader`.
fn reap_children_but(leader: Pid) {
    for pid in children(nix::unistd::getpid()) {
        if pid != leader && ProcStat::read(pid).is_some_and(ProcStat::is_dead) {
            let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
        }
    }
}

/// dlock is gone or gave up: KILLs the leader's group and everything below the guardian until
/// nothing of the job runs (a process in uninterruptible sleep dies when it wakes), then reaps
/// the leader. Returns whether anything was running.
fn kill_all(leader: Pid) -> bool {
    let me = nix::unistd::getpid();
    let mut any = false;
    // Two empty walks in a row end it: an orphan moving to the guardian while a walk reads
    // the children lists can be missed by that walk, never by the next (see `Job::left`).
    let mut empty_walks = 0;
    for round in 0u32.. {
        // The leader is not reaped yet, so its group's number is still the job's.
        let _ = killpg(leader, Signal::SIGKILL);
        let running: Vec<Pid> = below(me)
            .into_iter()
            .filter(|(_, stat)| !stat.is_dead())
            .map(|(pid, _)| pid)
            .collect();
        if running.is_empty() {
            empty_walks += 1;
            if empty_walks >= 2 {
                break;
            }
            std::thread::sleep(GUARD_POLL);
            continue;
        }
        empty_walks = 0;
        any = true;
        for pid in running {
            let _ = kill(pid, Signal::SIGKILL);
        }
        reap_children_but(leader);
        // Quickly at first; a process that outlives a second of this may take hours.
        std::thread::sleep(if round < 100 {
            GUARD_POLL
        } else {
            GUARD_POLL * 20
        });
    }
    let _ = waitpid(leader, Some(WaitPidFlag::WNOHANG));
    any
}

/// A wait status as the kernel encodes it, for [`ExitStatus::from_raw`].
fn raw_status(status: WaitStatus) -> i32 {
    match status {
        WaitStatus::Exited(_, code) => (code & 0xff) << 8,
        WaitStatus::Signaled(_, signal, core) => signal as i32 | if core { 0x80 } else { 0 },
        _ => 0xff << 8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    #[test]
    fn only_the_exact_guardian_arguments_start_a_guardian() {
        assert_eq!(
            guard_from_args(args(&["dlock", "run", "k", "--", "true"])),
            None
        );
        assert_eq!(guard_from_args(args(&["dlock"])), None);
        // Malformed: a usage error, before any connect or command.
        for bad in [
            &["dlock", GUARD_COMMAND][..],
            &["dlock", GUARD_COMMAND, "name"],
            &["dlock", GUARD_COMMAND, "name", "--"],
            &["dlock", GUARD_COMMAND, "name", "true"],
        ] {
            assert_eq!(
                guard_from_args(args(bad)),
                Some(crate::exit::USAGE),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn start_carries_one_or_more_whole_tokens_and_nothing_else() {
        assert_eq!(parse_tokens("7"), Some(vec![7]));
        assert_eq!(parse_tokens("7 8 9"), Some(vec![7, 8, 9]));
        for bad in ["", " ", "7 ", "7  8", "x", "7 -1", "18446744073709551616"] {
            assert_eq!(parse_tokens(bad), None, "{bad:?}");
        }
    }
}
