//! The chaos suite's verdict: pure functions over what one run recorded (the storage's logs,
//! each dlock process's `--report json`, every fault with its time, the lock's state probed at
//! each SIGKILL), so that each check can be shown to fail on a doctored record (the tests at
//! the end) as well as on a broken dlock build. The module doc of `chaos.rs` states the checks.
//!
//! All times are wall-clock milliseconds since the Unix epoch on this one machine: the
//! storage's `TIME`, dlock's reports and the fault injector read the same clock.
//!
//! The `--limit` run (a semaphore) shares the records, the fault windows and the kill check;
//! its own checks are in `limit.rs`.

#[path = "limit.rs"]
mod limit;

use std::collections::HashMap;

/// One `dlock run` process of the run.
#[derive(Debug, Clone, Default)]
pub struct Proc {
    /// The lock it asked for.
    pub key: String,
    /// When the worker spawned it.
    pub spawned_ms: u64,
    /// A `--shared` copy (a reader of a read-write lock).
    pub shared: bool,
    /// `--and`: every key it asked for (`key` then names none of them, so the run counts as
    /// no waiter of one key alone).
    pub both: Vec<String>,
    /// How it ended; `None` while it runs.
    pub ended: Option<Ended>,
}

/// How a `dlock run` process ended.
#[derive(Debug, Clone, Default)]
pub struct Ended {
    /// Its exit code (-1: killed by a signal).
    pub code: i32,
    /// Its `--report json`; none when it was SIGKILLed.
    pub report: Option<Report>,
}

/// The fields of a `--report json` line the checks use.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub asked_at_ms: Option<u64>,
    pub waited_ms: u64,
    pub acquired: bool,
    pub loss_reason: Option<String>,
    pub command_ended_at_ms: Option<u64>,
    pub fencing_token: Option<u64>,
}

impl Report {
    pub fn parse(line: &str) -> Option<Report> {
        let value: serde_json::Value = serde_json::from_str(line).ok()?;
        Some(Report {
            asked_at_ms: value["asked_at_ms"].as_u64(),
            waited_ms: value["waited_ms"].as_u64()?,
            acquired: value["acquired"].as_bool()?,
            loss_reason: value["loss_reason"].as_str().map(str::to_owned),
            command_ended_at_ms: value["command_ended_at_ms"].as_u64(),
            fencing_token: value["fencing_token"].as_u64(),
        })
    }
}

/// An injected fault and its time window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// A dlock process SIGKILLed at `at`.
    Kill { pid: u32, at: u64 },
    /// A dlock process SIGSTOPped at `from` and SIGCONTed at `to`.
    Stop { pid: u32, from: u64, to: u64 },
    /// A lock server SIGKILLed at `down` and back, empty, at `up`.
    Restart { down: u64, up: u64 },
    /// A Redlock master frozen (SIGSTOP) from `from` to `to`.
    Pause { from: u64, to: u64 },
}

/// A lock's state on each running master, read right after its holder was SIGKILLed.
#[derive(Debug, Clone)]
pub struct KillProbe {
    pub pid: u32,
    pub key: String,
    pub at: u64,
    /// Per master: the lock key's PTTL, and the pid in its holder info. For a semaphore: the
    /// ms left of the killed holder's permit on the server's clock (its score in the holders
    /// zset less the server's now; −2 when no live permit of that pid is there), and the pid.
    pub masters: Vec<(i64, Option<u32>)>,
}

/// Everything one run recorded.
#[derive(Debug, Default)]
pub struct Run {
    pub masters: usize,
    /// `--limit N`: the keys are semaphores of N permits; `None`: locks.
    pub limit: Option<u32>,
    pub ttl_ms: u64,
    /// The workers' `--redis-timeout`: a grant's reply reaches dlock at most this long after
    /// Redis granted it, so a hold begins no earlier than this before dlock saw the grant.
    pub redis_timeout_ms: u64,
    pub procs: HashMap<u32, Proc>,
    pub faults: Vec<Fault>,
    /// Per lock: the storage's log.
    pub logs: Vec<(String, Vec<String>)>,
    pub kills: Vec<KillProbe>,
}

/// What the checks found.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Accepted "enter" writes.
    pub grants: u64,
    /// Writes the storage refused (token below the largest accepted), all explained by faults.
    pub refused: u64,
    /// Overlaps the storage recorded.
    pub overlaps: u64,
    /// Of those, how many were none: dlock had already ended the old holder's command (its
    /// report's `command_ended_at_ms`) when the new one entered.
    pub ended_before: u64,
    /// Real overlaps excused by a holder starved past its lease, told (exit 76) and fenced.
    pub starved: u64,
    /// SIGKILLs whose holder still held the lock, checked for kill → next grant.
    pub kill_grants: Vec<u64>,
    /// SIGKILLs not checked for the next grant: the key was already gone (PTTL −2) or held by
    /// someone else, nobody was waiting, or a lock server was down or frozen meanwhile.
    pub kills_unchecked: u64,
    /// The ε of kill → next grant ≤ TTL + ε: the slowest hand-over measured in this run.
    pub epsilon_ms: u64,
    /// How many hand-overs ε was measured from.
    pub handoffs: usize,
    /// `--limit` run: entries at which more than N holders were inside by the storage's log
    /// (SIGKILLed holders left out); `ended_before` and `starved` count those that dlock had
    /// ended commands enough to be none, and those excused by starvation.
    pub crowded: u64,
    /// `--limit` run: pairs of grants on one key whose order is certain (one was seen before
    /// the other was asked for), checked for increasing tokens.
    pub ordered_grants: u64,
    /// `--limit` run: faults after which someone asked for the key, checked for a grant.
    pub progress_checked: u64,
    pub violations: Vec<String>,
}

/// One line of the storage's log.
#[derive(Debug, Clone, PartialEq)]
enum Entry {
    /// An accepted write: "enter" or "exit"; `shared` for a `--shared` copy's (its token is
    /// the last exclusive grant's, so other readers share it).
    Write {
        enter: bool,
        token: u64,
        pid: u32,
        at: u64,
        shared: bool,
    },
    /// A write refused because its token was below `max`.
    Refused {
        token: u64,
        pid: u32,
        at: u64,
        max: u64,
    },
    /// `new_pid` entered while `old_pid` (inside since `old_since`) had not left.
    Overlap {
        old_pid: u32,
        old_since: u64,
        new_pid: u32,
        new_at: u64,
    },
}

fn parse(line: &str) -> Entry {
    let f: Vec<&str> = line.split(' ').collect();
    let n = |i: usize| -> u64 {
        f.get(i)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad log entry {line:?}"))
    };
    match f[0] {
        "enter" | "exit" => Entry::Write {
            enter: f[0] == "enter",
            token: n(1),
            pid: n(2) as u32,
            at: n(3),
            shared: f.get(4) == Some(&"r"),
        },
        "refused" => Entry::Refused {
            token: n(1),
            pid: n(2) as u32,
            at: n(3),
            max: n(5),
        },
        "overlap" => Entry::Overlap {
            old_pid: n(2) as u32,
            old_since: n(3),
            new_pid: n(5) as u32,
            new_at: n(6),
        },
        _ => panic!("unexpected log entry {line:?}"),
    }
}

impl Proc {
    /// Whether this run asked for `key` (alone, or among the keys of `--and`).
    pub fn holds(&self, key: &str) -> bool {
        self.key == key || self.both.iter().any(|k| k == key)
    }
}

impl Run {
    fn redlock(&self) -> bool {
        self.masters > 1
    }

    fn report(&self, pid: u32) -> Option<&Report> {
        self.procs.get(&pid)?.ended.as_ref()?.report.as_ref()
    }

    /// The earliest moment `pid` can have held its lock: when dlock saw the grant, less one
    /// Redis timeout (the grant's reply took at most that); its spawn if it left no report.
    fn hold_start(&self, pid: u32) -> u64 {
        match self.report(pid) {
            Some(Report {
                asked_at_ms: Some(asked),
                waited_ms,
                ..
            }) => (asked + waited_ms).saturating_sub(self.redis_timeout_ms),
            _ => self.procs.get(&pid).map_or(0, |p| p.spawned_ms),
        }
    }

    fn killed(&self, pid: u32) -> bool {
        self.faults
            .iter()
            .any(|f| matches!(f, Fault::Kill { pid: p, .. } if *p == pid))
    }

    /// The fault, if any, that explains `pid` losing its lock within `[from, to]`: it was
    /// killed then, stopped (any part of its stop in the window), or, on one Redis, the server
    /// lost its data (restarted empty) then. On Redlock a restarted master rejoins only after a
    /// TTL, so a restart explains nothing there, nor does a frozen master.
    fn fault_of(&self, pid: u32, from: u64, to: u64) -> Option<Fault> {
        self.faults.iter().copied().find(|fault| match *fault {
            Fault::Kill { pid: p, at } => p == pid && (from..=to).contains(&at),
            Fault::Stop {
                pid: p,
                from: s,
                to: c,
            } => p == pid && s <= to && c >= from,
            Fault::Restart { down, .. } => !self.redlock() && (from..=to).contains(&down),
            Fault::Pause { .. } => false,
        })
    }

    /// Whether `pid` exited 76 saying Redis could not be reached before its lease ran out: a
    /// holder starved (here: of CPU) past its lease, told, and fenced off by its token. Only
    /// for what happened at `at` or later than a whole TTL after its hold began: without a
    /// fault, no server hands the lock on before the lease it granted has run out, so a
    /// "starved" holder overtaken sooner was robbed by the lock service (found by review: the
    /// exemption had no window and hid such a double grant).
    fn starved(&self, pid: u32, at: u64) -> bool {
        at >= self.hold_start(pid) + self.ttl_ms && self.exited_unreachable(pid)
    }

    fn exited_unreachable(&self, pid: u32) -> bool {
        self.procs
            .get(&pid)
            .and_then(|p| p.ended.as_ref())
            .is_some_and(|e| {
                e.code == 76
                    && e.report.as_ref().is_some_and(|r| {
                        r.loss_reason
                            .as_deref()
                            .is_some_and(|r| r.contains("could not be reached"))
                    })
            })
    }

    /// Whether a lock server was down or frozen at any time in `[from, to]`.
    fn server_fault_within(&self, from: u64, to: u64) -> bool {
        self.faults.iter().any(|fault| match *fault {
            Fault::Restart { down: a, up: b } | Fault::Pause { from: a, to: b } => {
                a <= to && b >= from
            }
            _ => false,
        })
    }

    /// `--shared` runs: whether another exclusive copy of `key` was stopped or killed while
    /// its place in the queue could still hold readers back in `[from, to]`: a waiting writer
    /// keeps its place until its waiter lease ends (at most the copies' 2 s wait after its last
    /// retry), and new readers wait behind it, not just the killed holder's TTL (found in CI: a
    /// reader granted 1.4 s after a writer's kill, behind a stopped writer).
    fn queued_writer_faulted(&self, key: &str, killed: u32, from: u64, to: u64) -> bool {
        const WAIT_MS: u64 = 2000;
        let writer = |pid: u32| {
            pid != killed
                && self
                    .procs
                    .get(&pid)
                    .is_some_and(|p| p.key == key && !p.shared)
        };
        self.faults.iter().any(|fault| match *fault {
            Fault::Kill { pid, at } => writer(pid) && at <= to && at + WAIT_MS >= from,
            Fault::Stop {
                pid,
                from: s,
                to: c,
            } => writer(pid) && s <= to && c + WAIT_MS >= from,
            _ => false,
        })
    }

    /// A fault that touches `pid` within `[from, to]` (for hand-over measurements).
    fn pid_fault_within(&self, pid: u32, from: u64, to: u64) -> bool {
        self.faults.iter().any(|fault| match *fault {
            Fault::Kill { pid: p, at } => p == pid && at <= to,
            Fault::Stop {
                pid: p,
                from: s,
                to: c,
            } => p == pid && s <= to && c >= from,
            _ => false,
        })
    }

    fn describe(&self, pid: u32) -> String {
        let faults: Vec<_> = self
            .faults
            .iter()
            .filter(|f| match f {
                Fault::Kill { pid: p, .. } | Fault::Stop { pid: p, .. } => *p == pid,
                _ => true,
            })
            .collect();
        format!(
            "pid {pid}: {:?}; faults of it and of the servers: {faults:?}",
            self.procs.get(&pid)
        )
    }

    pub fn check(&self) -> Verdict {
        let mut verdict = Verdict::default();
        let logs: Vec<(&str, Vec<Entry>)> = self
            .logs
            .iter()
            .map(|(key, lines)| (key.as_str(), lines.iter().map(|l| parse(l)).collect()))
            .collect();
        self.check_handoffs(&logs, &mut verdict);
        match self.limit {
            None => {
                for (key, log) in &logs {
                    self.check_log(key, log, &mut verdict);
                }
            }
            Some(limit) => self.check_semaphore(limit, &logs, &mut verdict),
        }
        self.check_kills(&logs, &mut verdict);
        verdict
    }

    /// Tokens, refused writes, overlaps and overtaken holders, in one key's log.
    fn check_log(&self, key: &str, log: &[Entry], verdict: &mut Verdict) {
        // The largest reader's and writer's tokens accepted: a reader is checked against
        // writers only (two readers of one read period may carry different tokens on Redlock,
        // each at least the last write's), a writer against everyone before it (a reader's
        // token is below every later write's).
        let (mut last_read, mut last_write) = (0, 0);
        let mut entered_by: HashMap<u64, u32> = HashMap::new();
        for entry in log {
            match *entry {
                Entry::Write {
                    enter,
                    token,
                    pid,
                    at,
                    shared,
                } => {
                    // The storage script refuses tokens below the last write's, so for readers
                    // this only guards the script.
                    // A writer's token is above every reader's before it (a reader's token
                    // is below every later write's), and at least the last write's (its own).
                    if token < last_write || (!shared && token <= last_read) {
                        verdict.violations.push(format!(
                            "{key}: accepted token went back: {} -> {token}",
                            last_write.max(last_read)
                        ));
                    }
                    match shared {
                        true => last_read = last_read.max(token),
                        false => last_write = last_write.max(token),
                    }
                    if enter {
                        verdict.grants += 1;
                    }
                    // Readers share their read period's token (the last exclusive grant's, or
                    // that of the hand-off that began the period).
                    if enter && !shared {
                        if let Some(&other) = entered_by.get(&token).filter(|&&p| p != pid) {
                            verdict.violations.push(format!(
                                "{key}: fencing token {token} handed to two holders, pids \
                                 {other} and {pid} (at {at})"
                            ));
                        }
                        entered_by.insert(token, pid);
                    }
                }
                Entry::Refused {
                    token,
                    pid,
                    at,
                    max,
                } => {
                    verdict.refused += 1;
                    let from = self.hold_start(pid);
                    if self.fault_of(pid, from, at).is_none() && !self.starved(pid, at) {
                        verdict.violations.push(format!(
                            "{key}: write with token {token} refused at {at} (largest {max}) \
                             from a holder not faulted since its grant (from {from}): {}",
                            self.describe(pid)
                        ));
                    }
                }
                Entry::Overlap {
                    old_pid,
                    old_since,
                    new_pid,
                    new_at,
                } => {
                    verdict.overlaps += 1;
                    // dlock ended the old holder's command (lease lost or at risk) before it
                    // could write "exit": its section was over when dlock saw its job gone.
                    let ended = self.report(old_pid).and_then(|r| r.command_ended_at_ms);
                    if ended.is_some_and(|ended| ended <= new_at) {
                        verdict.ended_before += 1;
                        continue;
                    }
                    let from = self.hold_start(old_pid).min(old_since);
                    let starved = self.starved(old_pid, new_at);
                    if self.fault_of(old_pid, from, new_at).is_none() {
                        if starved {
                            verdict.starved += 1;
                        } else {
                            verdict.violations.push(format!(
                                "{key}: pid {new_pid} entered at {new_at} while pid {old_pid} \
                                 (inside since {old_since}) was, unfaulted since {from}: old \
                                 {}; new {}",
                                self.describe(old_pid),
                                self.describe(new_pid)
                            ));
                        }
                    }
                    // Whatever the cause, an overtaken holder must say so: exit 76 ("lost" or
                    // "may have overlapped"), unless it was SIGKILLed.
                    let code = self
                        .procs
                        .get(&old_pid)
                        .and_then(|p| p.ended.as_ref())
                        .map(|e| e.code);
                    if !self.killed(old_pid) && code != Some(76) {
                        verdict.violations.push(format!(
                            "{key}: pid {old_pid}, overtaken at {new_at} by pid {new_pid}, \
                             exited {code:?}, not 76: {}",
                            self.describe(old_pid)
                        ));
                    }
                }
            }
        }
    }

    /// ε: the slowest hand-over in this run from a holder's "exit" to the next holder's
    /// "enter", where the next one was already waiting and no fault touched either or a lock
    /// server meanwhile. A hand-over after an expiry does less (the waiter's timer, set to the
    /// holder's remaining TTL + 1 ms, replaces the release and its pub/sub wake-up), so the
    /// same ε bounds it: an acquire round trip, dlock starting the job, and the job's first
    /// write, on this machine under this load.
    fn check_handoffs(&self, logs: &[(&str, Vec<Entry>)], verdict: &mut Verdict) {
        let mut handoffs = Vec::new();
        for (key, log) in logs {
            // Adjacent in the log: nothing (a refused write, say) came between.
            for pair in log.windows(2) {
                let [Entry::Write {
                    enter: false,
                    pid: old,
                    at: left,
                    ..
                }, Entry::Write {
                    enter: true,
                    pid: new,
                    at: entered,
                    ..
                }] = *pair
                else {
                    continue;
                };
                // A run that asked for this key alone (one that also asked for another key,
                // `--and`, may have waited on that one).
                let waiting = self.procs.get(&new).is_some_and(|p| p.key == *key)
                    && self
                        .report(new)
                        .and_then(|r| r.asked_at_ms)
                        .is_some_and(|asked| asked <= left);
                // Nobody else was granted the lock in between (one whose job never wrote).
                let granted_between = self.procs.iter().any(|(&pid, proc)| {
                    pid != new
                        && proc.key == *key
                        && self.report(pid).is_some_and(|r| {
                            r.asked_at_ms.is_some_and(|asked| {
                                r.acquired && (left..entered).contains(&(asked + r.waited_ms))
                            })
                        })
                });
                if waiting
                    && !granted_between
                    && !self.server_fault_within(left, entered)
                    && !self.pid_fault_within(old, left, entered)
                    && !self.pid_fault_within(new, left, entered)
                {
                    handoffs.push(entered - left);
                }
            }
        }
        verdict.handoffs = handoffs.len();
        verdict.epsilon_ms = handoffs.into_iter().max().unwrap_or(0);
    }

    /// Each SIGKILLed holder's lock: never without expiry, at most one TTL left, and, when
    /// someone was waiting, the next grant (the next "enter" in the storage's log) within
    /// TTL + ε of the kill.
    fn check_kills(&self, logs: &[(&str, Vec<Entry>)], verdict: &mut Verdict) {
        let ttl = self.ttl_ms;
        let epsilon = verdict.epsilon_ms;
        for probe in &self.kills {
            let KillProbe {
                pid, ref key, at, ..
            } = *probe;
            if probe.masters.iter().any(|&(pttl, _)| pttl == -1) {
                verdict.violations.push(format!(
                    "{key}: a lock key without expiry (PTTL -1) when pid {pid} was killed at \
                     {at}: {:?}",
                    probe.masters
                ));
            }
            if probe.masters.iter().any(|&(pttl, _)| pttl > ttl as i64) {
                verdict.violations.push(format!(
                    "{key}: more than one TTL ({ttl} ms) left when pid {pid} was killed at \
                     {at}: {:?}",
                    probe.masters
                ));
            }
            // A killed reader: a writer may wait for other readers still inside, whose jobs
            // can outlast the killed one's TTL; its lease's own bound is the PTTL check above.
            if self.procs.get(&pid).is_some_and(|p| p.shared) {
                verdict.kills_unchecked += 1;
                continue;
            }
            // Held by the killed holder (on a majority of all masters): a key already gone
            // (PTTL -2) or held by another bounds nothing about this kill.
            let held = probe
                .masters
                .iter()
                .filter(|&&(pttl, holder)| pttl != -2 && holder == Some(pid))
                .count();
            let latest = at + ttl + epsilon;
            if held * 2 <= self.masters || self.server_fault_within(at, latest) {
                verdict.kills_unchecked += 1;
                continue;
            }
            // The next entry on this key, or (`--and`) by a run that holds it among others:
            // entering its first key shows it was granted them all at once, and it may be
            // faulted (killed, stopped) before it enters this one.
            let mut next = logs
                .iter()
                .flat_map(|(k, log)| log.iter().map(move |e| (*k, e)))
                .filter_map(|(k, e)| match *e {
                    Entry::Write {
                        enter: true,
                        at: entered,
                        pid,
                        ..
                    } if entered > at
                        && (k == key.as_str()
                            || self.procs.get(&pid).is_some_and(|p| p.holds(key))) =>
                    {
                        Some(entered)
                    }
                    _ => None,
                })
                .min();
            if self.limit.is_some() || self.procs.values().any(|p| !p.both.is_empty()) {
                // A semaphore: the next grant dlock saw, if earlier (see `limit.rs`). With
                // `--and`, too: a run granted both keys enters them one after the other, and
                // a fault between its two entries (it is "inside" the first) delays the second
                // entry, not the grant (found in CI: a stop of a run granted just after the
                // kill put the next entry 1.8 s later).
                next = match (next, self.first_grant_after(key, at)) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            // Someone asked before the lease could have run out and was still waiting at
            // TTL + ε (it timed out later, or was granted later).
            let waiter = self.procs.iter().find(|(&other, proc)| {
                other != pid
                    && proc.key == *key
                    && self.report(other).is_some_and(|r| {
                        r.asked_at_ms
                            .is_some_and(|asked| asked <= at + ttl && asked + r.waited_ms >= latest)
                    })
            });
            // The next entry is a reader's (a queued writer holds readers back, not writers).
            let reader_next = |next: u64| {
                logs.iter().filter(|(k, _)| *k == key.as_str()).any(|(_, log)| {
                    log.iter().any(|e| {
                        matches!(*e, Entry::Write { enter: true, at: a, shared: true, .. } if a == next)
                    })
                })
            };
            match (next, waiter) {
                (Some(next), _) if next <= latest => verdict.kill_grants.push(next - at),
                (Some(next), Some(_))
                    if reader_next(next) && self.queued_writer_faulted(key, pid, at, latest) =>
                {
                    verdict.kills_unchecked += 1
                }
                (next, Some((&waiter, _))) => verdict.violations.push(format!(
                    "{key}: pid {pid} killed at {at}, next grant {:?} ms later, more than TTL \
                     {ttl} + ε {epsilon} ms, while pid {waiter} was waiting: {:?}",
                    next.map(|n| n - at),
                    self.report(waiter)
                )),
                _ => verdict.kills_unchecked += 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Each check says no on a doctored record.
    use super::*;

    const T0: u64 = 1_000_000;

    fn proc(key: &str, code: i32, asked: u64, waited: u64, ended: Option<u64>) -> Proc {
        Proc {
            key: key.into(),
            spawned_ms: asked,
            shared: false,
            both: Vec::new(),
            ended: Some(Ended {
                code,
                report: Some(Report {
                    asked_at_ms: Some(asked),
                    waited_ms: waited,
                    acquired: true,
                    loss_reason: (code == 76).then(|| "the lock key no longer holds".into()),
                    command_ended_at_ms: ended,
                    fencing_token: None,
                }),
            }),
        }
    }

    /// Pid 1 enters at T0+10 and is overtaken by pid 2 at T0+1500; pid 1's exit is refused.
    fn overtaken(masters: usize) -> Run {
        let log = vec![
            format!("enter 100 1 {}", T0 + 10),
            format!("overlap 100 1 {} 200 2 {}", T0 + 10, T0 + 1500),
            format!("enter 200 2 {}", T0 + 1500),
            format!("refused 100 1 {} exit 200", T0 + 1600),
            format!("exit 200 2 {}", T0 + 1700),
        ];
        Run {
            masters,
            ttl_ms: 1000,
            redis_timeout_ms: 300,
            procs: HashMap::from([
                (1, proc("k", 76, T0, 5, Some(T0 + 1650))),
                (2, proc("k", 0, T0 + 400, 1090, Some(T0 + 1710))),
            ]),
            logs: vec![("k".into(), log)],
            ..Run::default()
        }
    }

    /// Review finding: a double grant 190 ms into a 1 s lease hid behind the old holder's
    /// later "could not be reached" loss. A starved holder is excused only once its lease
    /// could have run out (a TTL after its hold began); the same loss later is still excused.
    #[test]
    fn starvation_excuses_nothing_before_the_lease_could_have_run_out() {
        for masters in [1, 3] {
            let mut run = overtaken(masters);
            run.logs[0].1 = vec![
                format!("enter 100 1 {}", T0 + 10),
                format!("overlap 100 1 {} 200 2 {}", T0 + 10, T0 + 200),
                format!("enter 200 2 {}", T0 + 200),
                format!("refused 100 1 {} exit 200", T0 + 5000),
                format!("exit 200 2 {}", T0 + 300),
            ];
            if let Some(r) = run
                .procs
                .get_mut(&2)
                .and_then(|p| p.ended.as_mut())
                .and_then(|e| e.report.as_mut())
            {
                r.waited_ms = 190;
            }
            if let Some(r) = run
                .procs
                .get_mut(&1)
                .and_then(|p| p.ended.as_mut())
                .and_then(|e| e.report.as_mut())
            {
                r.loss_reason =
                    Some("Redis could not be reached before the lease ran out: timed out".into());
                r.command_ended_at_ms = Some(T0 + 5000);
            }
            let verdict = run.check();
            assert!(
                !verdict.violations.is_empty(),
                "masters={masters}: a double grant passed as starvation"
            );
            assert_eq!(verdict.starved, 0);
        }
    }

    /// The `--shared` run: readers entering with the last writer's token are no double grant;
    /// two writers with one token are; a writer overtaking an unfaulted reader is a violation.
    #[test]
    fn readers_share_a_token_but_writers_never_do_and_a_reader_is_not_overtaken() {
        let mut run = overtaken(1);
        run.procs
            .insert(3, proc("k", 0, T0 + 1700, 5, Some(T0 + 1900)));
        run.procs
            .insert(4, proc("k", 0, T0 + 1700, 5, Some(T0 + 1900)));
        run.logs[0].1 = vec![
            format!("enter 100 1 {} w", T0 + 10),
            format!("exit 100 1 {} w", T0 + 100),
            format!("enter 100 3 {} r", T0 + 1710),
            format!("enter 100 4 {} r", T0 + 1720),
            format!("exit 100 3 {} r", T0 + 1800),
            format!("exit 100 4 {} r", T0 + 1810),
        ];
        let verdict = run.check();
        assert!(verdict.violations.is_empty(), "{:#?}", verdict.violations);

        // (Also a writer's token not above the readers' before it.)
        run.logs[0].1.push(format!("enter 100 2 {} w", T0 + 1900));
        let verdict = run.check();
        assert!(
            verdict.violations.iter().any(|v| v.contains("two holders")),
            "{:#?}",
            verdict.violations
        );

        run.logs[0].1 = vec![
            format!("enter 100 3 {} r", T0 + 1710),
            format!("overlap 100 3 {} 200 2 {}", T0 + 1710, T0 + 1750),
            format!("enter 200 2 {} w", T0 + 1750),
        ];
        let verdict = run.check();
        assert!(
            verdict.violations.iter().any(|v| v.contains("entered at")),
            "{:#?}",
            verdict.violations
        );
    }

    #[test]
    fn an_unfaulted_overtaken_holder_is_a_violation() {
        let run = overtaken(1);
        let verdict = run.check();
        // The overlap, and the refused write of a holder nothing faulted.
        assert_eq!(verdict.violations.len(), 2, "{:#?}", verdict.violations);
    }

    #[test]
    fn a_fault_explains_an_overlap_only_within_the_old_holders_hold() {
        let mut run = overtaken(1);
        run.faults = vec![Fault::Stop {
            pid: 1,
            from: T0 + 100,
            to: T0 + 1600,
        }];
        assert!(run.check().violations.is_empty());
        // The same stop after the new holder entered explains nothing.
        run.faults = vec![Fault::Stop {
            pid: 1,
            from: T0 + 1550,
            to: T0 + 3000,
        }];
        assert_eq!(
            run.check().violations.len(),
            1,
            "the overlap, not the refusal"
        );
        // Nor a kill, or a restart before the old holder's grant.
        run.faults = vec![Fault::Kill {
            pid: 1,
            at: T0 + 1501,
        }];
        assert!(!run.check().violations.is_empty());
        run.faults = vec![Fault::Restart {
            down: T0 - 400,
            up: T0 - 300,
        }];
        assert_eq!(run.check().violations.len(), 2);
        // A restart during the hold explains it on one Redis, never on Redlock.
        run.faults = vec![Fault::Restart {
            down: T0 + 700,
            up: T0 + 800,
        }];
        assert!(run.check().violations.is_empty());
        run.masters = 3;
        assert_eq!(run.check().violations.len(), 2);
    }

    #[test]
    fn an_overtaken_holder_must_exit_76_unless_killed() {
        let mut run = overtaken(1);
        run.faults = vec![Fault::Restart {
            down: T0 + 700,
            up: T0 + 800,
        }];
        run.procs.get_mut(&1).unwrap().ended.as_mut().unwrap().code = 0;
        assert_eq!(run.check().violations.len(), 1);
        run.faults.push(Fault::Kill {
            pid: 1,
            at: T0 + 900,
        });
        assert!(run.check().violations.is_empty());
    }

    #[test]
    fn an_overlap_after_dlock_ended_the_old_command_is_none() {
        let mut run = overtaken(1);
        let report = run.procs.get_mut(&1).unwrap().ended.as_mut().unwrap();
        report.report.as_mut().unwrap().command_ended_at_ms = Some(T0 + 1400);
        let verdict = run.check();
        assert_eq!(verdict.ended_before, 1);
        assert_eq!(verdict.violations.len(), 1, "only the refused write");
    }

    #[test]
    fn a_refused_write_of_a_new_holder_is_a_violation() {
        // A token below the largest accepted handed to a holder nothing faulted: dlock's
        // tokens went back, and the storage refused the new holder's first write.
        let mut run = overtaken(1);
        run.faults = vec![Fault::Kill {
            pid: 1,
            at: T0 + 900,
        }];
        run.logs[0].1 = vec![
            format!("enter 100 1 {}", T0 + 10),
            format!("refused 90 2 {} enter 100", T0 + 1500),
        ];
        let verdict = run.check();
        assert_eq!(verdict.violations.len(), 1, "{:#?}", verdict.violations);
        assert!(verdict.violations[0].contains("refused"));
        // The same token handed to two holders.
        run.logs[0].1 = vec![
            format!("enter 100 1 {}", T0 + 10),
            format!("overlap 100 1 {} 100 2 {}", T0 + 10, T0 + 1500),
            format!("enter 100 2 {}", T0 + 1500),
        ];
        let verdict = run.check();
        assert!(
            verdict.violations.iter().any(|v| v.contains("two holders")),
            "{:#?}",
            verdict.violations
        );
    }

    /// Pid 1 is killed at T0+500 holding "k" with 800 ms left; pid 2 waits from T0+100.
    fn killed(next_enter: u64) -> Run {
        let mut run = Run {
            masters: 1,
            limit: None,
            ttl_ms: 1000,
            redis_timeout_ms: 300,
            procs: HashMap::from([
                (1, proc("k", -1, T0, 5, None)),
                (2, proc("k", 0, T0 + 100, next_enter - T0 - 120, None)),
                (4, proc("k", 0, T0 + 2900, 130, None)),
            ]),
            faults: vec![Fault::Kill {
                pid: 1,
                at: T0 + 500,
            }],
            logs: vec![(
                "k".into(),
                vec![
                    format!("enter 100 1 {}", T0 + 10),
                    format!("enter 200 2 {next_enter}"),
                    // A hand-over taking 40 ms: ε.
                    format!("exit 200 2 {}", T0 + 3000),
                    format!("enter 300 4 {}", T0 + 3040),
                ],
            )],
            kills: vec![KillProbe {
                pid: 1,
                key: "k".into(),
                at: T0 + 500,
                masters: vec![(800, Some(1))],
            }],
        };
        run.procs
            .get_mut(&1)
            .unwrap()
            .ended
            .as_mut()
            .unwrap()
            .report = None;
        run
    }

    #[test]
    fn a_killed_holders_lock_must_go_to_a_waiter_within_ttl_and_epsilon() {
        let run = killed(T0 + 1530);
        let verdict = run.check();
        assert_eq!(verdict.epsilon_ms, 40);
        assert!(verdict.violations.is_empty(), "{:#?}", verdict.violations);
        assert_eq!(verdict.kill_grants, [1030]);
        let verdict = killed(T0 + 1560).check();
        assert_eq!(verdict.violations.len(), 1, "{:#?}", verdict.violations);
    }

    /// Readers are checked against writers' tokens only (two readers of one read period may
    /// carry different tokens on Redlock), writers against every token before them.
    #[test]
    fn a_readers_token_is_checked_against_writers_and_a_writers_against_everyone() {
        let run = |lines: &[&str]| {
            let mut run = killed(T0 + 1530);
            run.kills.clear();
            for pid in [7, 8, 9] {
                let mut reader = proc("k", 0, T0, 5, None);
                reader.shared = true;
                run.procs.insert(pid, reader);
            }
            run.logs = vec![("k".into(), lines.iter().map(|l| l.to_string()).collect())];
            run.check().violations
        };
        let t = T0 + 100;
        let readers_apart = [
            format!("enter 100 1 {t} w"),
            format!("exit 100 1 {} w", t + 1),
            format!("enter 150 7 {} r", t + 2),
            format!("enter 120 8 {} r", t + 3),
            format!("exit 120 8 {} r", t + 4),
            format!("exit 150 7 {} r", t + 5),
            format!("enter 200 2 {} w", t + 6),
        ];
        let lines: Vec<&str> = readers_apart.iter().map(String::as_str).collect();
        assert!(run(&lines).is_empty(), "{:#?}", run(&lines));
        let writer_at_a_reader = [
            format!("enter 100 1 {t} w"),
            format!("exit 100 1 {} w", t + 1),
            format!("enter 150 7 {} r", t + 2),
            format!("exit 150 7 {} r", t + 3),
            format!("enter 150 2 {} w", t + 4),
        ];
        let lines: Vec<&str> = writer_at_a_reader.iter().map(String::as_str).collect();
        assert_eq!(run(&lines).len(), 1, "{:#?}", run(&lines));
        let writer_below_a_reader = [
            format!("enter 100 1 {t} w"),
            format!("exit 100 1 {} w", t + 1),
            format!("enter 150 7 {} r", t + 2),
            format!("exit 150 7 {} r", t + 3),
            format!("enter 140 2 {} w", t + 4),
        ];
        let lines: Vec<&str> = writer_below_a_reader.iter().map(String::as_str).collect();
        assert_eq!(run(&lines).len(), 1, "{:#?}", run(&lines));
        let reader_below_a_writer = [
            format!("enter 100 1 {t} w"),
            format!("exit 100 1 {} w", t + 1),
            format!("enter 90 7 {} r", t + 2),
        ];
        let lines: Vec<&str> = reader_below_a_writer.iter().map(String::as_str).collect();
        assert_eq!(run(&lines).len(), 1, "{:#?}", run(&lines));
    }

    /// In a `--shared` run, a late grant after a kill is excused only when the next entry is
    /// a reader's and another exclusive copy of the key was stopped or killed while its queue
    /// place could still hold readers back: a queued writer holding readers back.
    #[test]
    fn a_late_grant_behind_a_stopped_queued_writer_is_excused_in_shared_runs() {
        // Pid 2 (a reader unless `writer_next`) enters late; pid 5 is another copy.
        let late = |fault: Option<Fault>, five_shared: bool, writer_next: bool| {
            let mut run = killed(T0 + 1900);
            run.procs.get_mut(&2).unwrap().shared = !writer_next;
            if !writer_next {
                run.logs[0].1[1] = format!("enter 200 2 {} r", T0 + 1900);
                run.logs[0].1[2] = format!("exit 200 2 {} r", T0 + 3000);
            }
            let mut five = proc("k", 0, T0 + 300, 2000, None);
            five.shared = five_shared;
            run.procs.insert(5, five);
            run.faults.extend(fault);
            run.check().violations.len()
        };
        let stopped = Fault::Stop {
            pid: 5,
            from: T0 + 800,
            to: T0 + 2300,
        };
        assert_eq!(late(None, false, false), 1, "not excused without a fault");
        assert_eq!(late(Some(stopped), false, false), 0, "a stopped writer");
        assert_eq!(late(Some(stopped), true, false), 1, "a stopped reader");
        assert_eq!(late(Some(stopped), false, true), 1, "a writer next");
        let killed_long_before = Fault::Kill {
            pid: 5,
            at: T0 - 3000,
        };
        assert_eq!(
            late(Some(killed_long_before), false, false),
            1,
            "a kill long before"
        );
    }

    #[test]
    fn a_lock_without_expiry_or_beyond_its_ttl_is_a_violation() {
        let mut run = killed(T0 + 1530);
        run.kills[0].masters = vec![(-1, Some(1))];
        // No expiry: reported as such, and the grant is checked all the same.
        assert!(run.check().violations[0].contains("PTTL -1"));
        run.kills[0].masters = vec![(1001, Some(1))];
        assert!(run.check().violations[0].contains("more than one TTL"));
        // Gone already: nothing to bound.
        run.kills[0].masters = vec![(-2, None)];
        let verdict = run.check();
        assert!(verdict.violations.is_empty());
        assert_eq!(verdict.kills_unchecked, 1);
    }
}
