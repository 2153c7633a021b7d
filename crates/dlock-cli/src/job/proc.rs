//! The job's processes as /proc shows them: the process tree below a pid, a group's members,
//! and what counts as still running. Linux only (elsewhere the walks find nothing).
//!
//! # What counts as running
//! Anything `kill(pid, 0)` does not answer with ESRCH (EPERM is another user's process, still
//! running); a process whose stat cannot be read; a zombie leader whose other threads still
//! run. A walk reads one children list after another, so an orphan being re-parented during a
//! walk can be missed by it: callers take only two empty walks in a row as "nothing left".

use std::collections::HashSet;
use std::io;

use nix::errno::Errno;
use nix::unistd::Pid;

/// Whether the answer to "signal 0 to this process (group)" means something still runs:
/// anything but ESRCH (no such process). EPERM means it runs but is not ours to signal.
pub(super) fn runs(result: nix::Result<()>) -> bool {
    result != Err(Errno::ESRCH)
}

/// The fields of /proc/PID/stat dlock needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ProcStat {
    pub(super) state: char,
    pub(super) ppid: i32,
    pub(super) pgrp: i32,
    /// Live threads of the process (the kernel's count, which keeps a zombie leader in it).
    pub(super) threads: u32,
}

impl ProcStat {
    pub(super) fn read(pid: Pid) -> Option<ProcStat> {
        ProcStat::parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    /// `pid (comm) state ppid pgrp …`; comm may hold spaces and parentheses, so the fields
    /// start after the last ')'.
    pub(super) fn parse(stat: &str) -> Option<ProcStat> {
        let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
        let state = fields.next()?.chars().next()?;
        let ppid = fields.next()?.parse().ok()?;
        let pgrp = fields.next()?.parse().ok()?;
        // num_threads is the 20th field, the 18th after the command name.
        let threads = fields.nth(14)?.parse().ok()?;
        Some(ProcStat {
            state,
            ppid,
            pgrp,
            threads,
        })
    }

    /// A zombie (or a process being torn down): it runs no more. A leader whose main thread
    /// exited (`pthread_exit`) also shows `Z`, while its other threads run on: the kernel's
    /// thread count (which still counts the zombie leader) tells them apart.
    pub(super) fn is_dead(self) -> bool {
        self.state == 'X' || (self.state == 'Z' && self.threads <= 1)
    }
}

/// Every process below `root` in the process tree, dead or alive, with its stat.
pub(super) fn below(root: Pid) -> Vec<(Pid, ProcStat)> {
    let mut found = Vec::new();
    let mut seen = HashSet::new();
    let mut pending = children(root);
    while let Some(pid) = pending.pop() {
        if !seen.insert(pid) {
            continue;
        }
        // A stat we may not read (`/proc` mounted with hidepid, a process of another user)
        // is not a gone process: it counts as running until `kill(pid, 0)` says ESRCH.
        let stat = ProcStat::read(pid).unwrap_or(ProcStat {
            state: '?',
            ppid: 0,
            pgrp: 0,
            threads: 1,
        });
        found.push((pid, stat));
        pending.extend(children(pid));
    }
    found
}

/// The live members of process group `group`, wherever they are in the process tree: a scan of
/// every process. Each pid is asked its group with `getpgid` (one cheap system call) and only
/// members have their stat read (to leave out the dead): reading every process's stat made
/// this scan most of `dlock run`'s own cost on a host with a few hundred processes.
pub(super) fn group_members(group: Pid) -> Vec<Pid> {
    all_pids().filter(|&pid| member(pid, group)).collect()
}

/// Whether `pid` is a live member of `group`. A pid whose group cannot be asked (it exited
/// meanwhile) is not one; one whose stat cannot be read counts as live, like in [`below`].
fn member(pid: Pid, group: Pid) -> bool {
    nix::unistd::getpgid(Some(pid)) == Ok(group)
        && ProcStat::read(pid).is_none_or(|stat| !stat.is_dead())
}

pub(super) fn all_pids() -> impl Iterator<Item = Pid> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .map(Pid::from_raw)
}

/// The children of `pid`: from /proc/PID/task/*/children, or, on kernels built without it,
/// from every process's parent in /proc/*/stat.
pub(super) fn children(pid: Pid) -> Vec<Pid> {
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

pub(super) fn children_by_scan(parent: Pid) -> Vec<Pid> {
    all_pids()
        .filter(|&pid| ProcStat::read(pid).is_some_and(|stat| stat.ppid == parent.as_raw()))
        .collect()
}

pub(super) fn pid_of(pid: u32) -> Option<Pid> {
    i32::try_from(pid).ok().map(Pid::from_raw)
}

/// Makes the calling process the reaper of its descendants' orphans (Linux), so they stay
/// below it in the process tree, visible to [`Job::left`], rather than going to init. dlock
/// does it too: if its guardian dies, the job's orphans come to dlock.
pub fn become_subreaper() -> nix::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    nix::sys::prctl::set_child_subreaper(true)?;
    Ok(())
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
        let stat = "42 (a (weird) name) S 7 42 42 0 -1 4194560 99 0 0 0 10 2 0 0 20 0 3 0 1";
        assert_eq!(
            ProcStat::parse(stat),
            Some(ProcStat {
                state: 'S',
                ppid: 7,
                pgrp: 42,
                threads: 3,
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
