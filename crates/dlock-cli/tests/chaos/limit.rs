//! The `--limit` run's checks: the keys are semaphores of N permits, so up to N holders are
//! inside at once, each with its own fencing token, and the lock's "one inside, tokens never go
//! back" becomes the checks below. The module doc of `chaos.rs` states them; the fault windows,
//! the hold's beginning and the starvation exemption are the lock's (`checks.rs`).
//!
//! The storage does no fencing in this run. A semaphore's tokens say in which order permits
//! were granted, not which permit a grant took over: a holder with a small token may hold its
//! permit validly for a long time while a larger token's holder is the stale one (stopped past
//! its lease). No rule on tokens alone refuses exactly the stale writers: "keep the N largest
//! tokens inside and refuse smaller ones" refuses a valid long holder as soon as N later grants
//! are inside (its permit outlived theirs), so every refusal would need a fault to blame that
//! the record cannot provide. The storage only logs "enter" and "exit", and the checks judge
//! the log: the count inside, the tokens' uniqueness and their order against the grants'.

use std::collections::HashMap;

use super::{Entry, Fault, Run, Verdict};

/// A holder inside by the storage's log: entered, no "exit" yet.
#[derive(Debug)]
struct Inside {
    token: u64,
    pid: u32,
    since: u64,
}

/// One grant on a key, with the bounds of when the server made it.
struct Grant {
    pid: u32,
    token: u64,
    /// No earlier than this: when dlock asked (or the spawn, for a run that left no report).
    after: u64,
    /// No later than this: when dlock saw the grant (+2 ms of rounding), or the job's "enter".
    before: Option<u64>,
}

impl Run {
    pub(super) fn check_semaphore(
        &self,
        limit: u32,
        logs: &[(&str, Vec<Entry>)],
        verdict: &mut Verdict,
    ) {
        for (key, log) in logs {
            self.check_at_most(key, log, limit as usize, verdict);
            self.check_tokens(key, log, verdict);
        }
        self.check_progress(logs, verdict);
    }

    /// When dlock first saw a grant of `key` after `at` (its report's `asked_at_ms` +
    /// `waited_ms`). The kill check bounds this, not only the job's "enter": after an expiry
    /// the grant follows a waiter's timer (its last busy answer's earliest lease end + 1 ms),
    /// with no release or pub/sub before it, while the job's start after it (dlock's guardian,
    /// `sh`, `redis-cli`) is the noisiest part of every hand-over that ε is measured from. To
    /// the "enter", a kill just after a renewal on a quiet run (ε about 30 ms) overshot
    /// TTL + ε by a few ms, once in 47 runs.
    pub(super) fn first_grant_after(&self, key: &str, at: u64) -> Option<u64> {
        self.procs
            .iter()
            .filter(|(_, p)| p.holds(key))
            .filter_map(|(&pid, _)| {
                let report = self.report(pid).filter(|r| r.acquired)?;
                Some(report.asked_at_ms? + report.waited_ms)
            })
            .filter(|&granted| granted > at)
            .min()
    }

    fn code(&self, pid: u32) -> Option<i32> {
        Some(self.procs.get(&pid)?.ended.as_ref()?.code)
    }

    /// Whether `pid` was SIGKILLed at or before `at`.
    fn killed_by(&self, pid: u32, at: u64) -> bool {
        self.faults
            .iter()
            .any(|f| matches!(*f, Fault::Kill { pid: p, at: k } if p == pid && k <= at))
    }

    /// Whether dlock had seen `pid`'s command gone by `at` (it never writes again).
    fn ended_by(&self, pid: u32, at: u64) -> bool {
        self.report(pid)
            .and_then(|r| r.command_ended_at_ms)
            .is_some_and(|ended| ended <= at)
    }

    /// At most N inside, and the excess told. At each "enter" (the count inside only grows
    /// there), the holders inside are those that entered and wrote no "exit", less those
    /// SIGKILLed by then (their guardian ends the job, which never writes "exit", and the kill
    /// explains any excess after it) and, once more than N are inside, those whose command dlock
    /// had already ended. Of these, the ones with no fault in their hold up to this entry (the
    /// lock's `fault_of`, from the hold's beginning or the entry, whichever is earlier) and not
    /// starved and told may number N at most: the semaphore grants N valid permits at most,
    /// and a holder loses its permit without a fault only by starvation. And at least (inside −
    /// N) of them must have been SIGKILLed or exited 76: that many hold no valid permit, and a
    /// holder whose permit ends while its command runs is stopped and exits 76.
    fn check_at_most(&self, key: &str, log: &[Entry], limit: usize, verdict: &mut Verdict) {
        let mut inside: Vec<Inside> = Vec::new();
        for entry in log {
            match *entry {
                Entry::Write {
                    enter: false,
                    token,
                    pid,
                    ..
                } => inside.retain(|h| (h.token, h.pid) != (token, pid)),
                Entry::Write {
                    enter: true,
                    token,
                    pid,
                    at,
                    ..
                } => {
                    verdict.grants += 1;
                    inside.retain(|h| !self.killed_by(h.pid, at));
                    inside.push(Inside {
                        token,
                        pid,
                        since: at,
                    });
                    if inside.len() <= limit {
                        continue;
                    }
                    verdict.crowded += 1;
                    inside.retain(|h| !self.ended_by(h.pid, at));
                    if inside.len() <= limit {
                        verdict.ended_before += 1;
                        continue;
                    }
                    self.judge_crowd(key, at, &inside, limit, verdict);
                }
                Entry::Refused { .. } | Entry::Overlap { .. } => verdict.violations.push(format!(
                    "{key}: the --limit run's storage logs no {entry:?}"
                )),
            }
        }
    }

    /// More than `limit` holders inside at `at`, none of them ended by dlock or killed by then.
    fn judge_crowd(&self, key: &str, at: u64, inside: &[Inside], limit: usize, v: &mut Verdict) {
        let unfaulted: Vec<&Inside> = inside
            .iter()
            .filter(|h| {
                let from = self.hold_start(h.pid).min(h.since);
                self.fault_of(h.pid, from, at).is_none()
            })
            .collect();
        let unexcused = unfaulted
            .iter()
            .filter(|h| !self.starved(h.pid, at))
            .count();
        let list = |holders: &[&Inside]| -> String {
            holders
                .iter()
                .map(|h| {
                    format!(
                        "\n  token {} since {}: {}",
                        h.token,
                        h.since,
                        self.describe(h.pid)
                    )
                })
                .collect()
        };
        if unexcused > limit {
            v.violations.push(format!(
                "{key}: {} holders inside at {at}, more than {limit}, and only {} of them \
                 faulted or starved and told; unfaulted:{}",
                inside.len(),
                inside.len() - unexcused,
                list(&unfaulted)
            ));
        } else if unfaulted.len() > limit {
            v.starved += 1;
        }
        let told = inside
            .iter()
            .filter(|h| self.killed(h.pid) || self.code(h.pid) == Some(76))
            .count();
        if told < inside.len() - limit {
            v.violations.push(format!(
                "{key}: {} holders inside at {at}, more than {limit}, so {} at least hold no \
                 valid permit, but only {told} were SIGKILLed or exited 76:{}",
                inside.len(),
                inside.len() - limit,
                list(&inside.iter().collect::<Vec<_>>())
            ));
        }
    }

    /// Fencing per permit: a token belongs to one holder and a holder to one token (the log's
    /// "enter"s and the reports together), and a grant made after another (its run asked after
    /// the other's grant was seen or entered) has the larger token. Tokens are the server's
    /// clock in µs at the grant or the counter + 1, whichever is larger, so they increase across
    /// an empty restart too: no exemption.
    fn check_tokens(&self, key: &str, log: &[Entry], verdict: &mut Verdict) {
        let mut grants: HashMap<u32, Grant> = HashMap::new();
        let mut seen: Vec<(u64, u32, &str)> = Vec::new();
        let mut pids: Vec<u32> = self
            .procs
            .iter()
            .filter(|(_, p)| p.key == key)
            .map(|(&pid, _)| pid)
            .collect();
        pids.sort_unstable();
        for &pid in &pids {
            let Some(report) = self.report(pid).filter(|r| r.acquired) else {
                continue;
            };
            let Some(token) = report.fencing_token else {
                verdict.violations.push(format!(
                    "{key}: pid {pid} was granted without a fencing token"
                ));
                continue;
            };
            seen.push((token, pid, "report"));
            let after = report.asked_at_ms.unwrap_or(self.procs[&pid].spawned_ms);
            grants.insert(
                pid,
                Grant {
                    pid,
                    token,
                    after,
                    before: report.asked_at_ms.map(|asked| asked + report.waited_ms + 2),
                },
            );
        }
        for entry in log {
            if let Entry::Write {
                enter: true,
                token,
                pid,
                at,
                ..
            } = *entry
            {
                seen.push((token, pid, "enter"));
                let after = self.procs.get(&pid).map_or(0, |p| p.spawned_ms);
                let grant = grants.entry(pid).or_insert(Grant {
                    pid,
                    token,
                    after,
                    before: None,
                });
                grant.before = Some(grant.before.map_or(at, |b| b.min(at)));
            }
        }
        let mut by_token: HashMap<u64, (u32, &str)> = HashMap::new();
        let mut by_pid: HashMap<u32, (u64, &str)> = HashMap::new();
        for &(token, pid, source) in &seen {
            if let Some(&(other, was)) = by_token.get(&token).filter(|(p, _)| *p != pid) {
                verdict.violations.push(format!(
                    "{key}: fencing token {token} handed to two holders: pid {other} ({was}) \
                     and pid {pid} ({source})"
                ));
            }
            if let Some(&(other, was)) = by_pid.get(&pid).filter(|(t, _)| *t != token) {
                verdict.violations.push(format!(
                    "{key}: pid {pid} had two fencing tokens: {other} ({was}) and {token} \
                     ({source})"
                ));
            }
            by_token.insert(token, (pid, source));
            by_pid.insert(pid, (token, source));
        }
        let mut grants: Vec<Grant> = grants.into_values().collect();
        grants.sort_by_key(|g| (g.after, g.pid));
        for earlier in &grants {
            let Some(before) = earlier.before else {
                continue;
            };
            for later in grants.iter().filter(|g| g.after > before) {
                verdict.ordered_grants += 1;
                if later.token <= earlier.token {
                    verdict.violations.push(format!(
                        "{key}: pid {} asked at {} after pid {}'s grant (by {before}), yet got \
                         token {} <= {}: {}; {}",
                        later.pid,
                        later.after,
                        earlier.pid,
                        later.token,
                        earlier.token,
                        self.describe(later.pid),
                        self.describe(earlier.pid)
                    ));
                }
            }
        }
    }

    /// Progress after every fault: when someone asked for a key after a fault on it ended (a
    /// holder's kill or SIGCONT: its key; a server's return: every key), some holder entered
    /// it after that. A fault that wedged the semaphore (a permit that never expires, a limit
    /// that stays refused) leaves every later asker timing out and nobody entering.
    fn check_progress(&self, logs: &[(&str, Vec<Entry>)], verdict: &mut Verdict) {
        for fault in &self.faults {
            let (end, only) = match *fault {
                Fault::Kill { pid, at } => (at, self.procs.get(&pid).map(|p| p.key.as_str())),
                Fault::Stop { pid, to, .. } => (to, self.procs.get(&pid).map(|p| p.key.as_str())),
                Fault::Restart { up, .. } => (up, None),
                Fault::Pause { to, .. } => (to, None),
            };
            for (key, log) in logs {
                if only.is_some_and(|k| k != *key) {
                    continue;
                }
                let asker = self
                    .procs
                    .iter()
                    .filter(|(_, p)| p.key == *key)
                    .filter_map(|(&pid, _)| Some((pid, self.report(pid)?.asked_at_ms?)))
                    .filter(|&(_, asked)| asked >= end)
                    .min_by_key(|&(_, asked)| asked);
                let Some((asker, asked)) = asker else {
                    continue;
                };
                verdict.progress_checked += 1;
                let entered = log
                    .iter()
                    .any(|e| matches!(*e, Entry::Write { enter: true, at, .. } if at > end));
                if !entered {
                    verdict.violations.push(format!(
                        "{key}: nobody entered after {fault:?} ended at {end}, though pid \
                         {asker} asked at {asked}: {}",
                        self.describe(asker)
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Each `--limit` check says no on a doctored record.
    use super::super::{Ended, Proc, Report};
    use super::*;

    const T0: u64 = 1_000_000;

    fn proc(code: i32, asked: u64, waited: u64, token: u64, ended: Option<u64>) -> Proc {
        Proc {
            key: "k".into(),
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
                    fencing_token: Some(token),
                }),
            }),
        }
    }

    /// Limit 2. Pids 1 and 2 enter at T0+10 and T0+20; pid 3 enters at T0+1500 while both are
    /// still inside (pid 1 never writes "exit": dlock stopped it at T0+1600, exit 76).
    fn crowded() -> Run {
        Run {
            masters: 1,
            limit: Some(2),
            ttl_ms: 1000,
            redis_timeout_ms: 300,
            procs: HashMap::from([
                (1, proc(76, T0, 5, 100, Some(T0 + 1600))),
                (2, proc(0, T0 + 2, 10, 110, Some(T0 + 1710))),
                (3, proc(0, T0 + 400, 1090, 200, Some(T0 + 1810))),
            ]),
            logs: vec![(
                "k".into(),
                vec![
                    format!("enter 100 1 {}", T0 + 10),
                    format!("enter 110 2 {}", T0 + 20),
                    format!("enter 200 3 {}", T0 + 1500),
                    format!("exit 110 2 {}", T0 + 1700),
                    format!("exit 200 3 {}", T0 + 1800),
                ],
            )],
            ..Run::default()
        }
    }

    fn report(run: &mut Run, pid: u32) -> &mut Report {
        run.procs
            .get_mut(&pid)
            .and_then(|p| p.ended.as_mut())
            .and_then(|e| e.report.as_mut())
            .unwrap()
    }

    #[test]
    fn more_than_n_inside_without_a_fault_is_a_violation() {
        let mut run = crowded();
        let verdict = run.check();
        assert_eq!(verdict.crowded, 1);
        assert_eq!(verdict.violations.len(), 1, "{:#?}", verdict.violations);
        assert!(verdict.violations[0].contains("3 holders inside"));
        // A stop of pid 1 during its hold explains the excess: its permit ran out.
        run.faults = vec![Fault::Stop {
            pid: 1,
            from: T0 + 100,
            to: T0 + 1600,
        }];
        assert!(run.check().violations.is_empty());
        // A stop after the third holder entered explains nothing.
        run.faults = vec![Fault::Stop {
            pid: 1,
            from: T0 + 1550,
            to: T0 + 3000,
        }];
        assert_eq!(run.check().violations.len(), 1);
        // A restart during the holds explains it; one before them does not.
        run.faults = vec![Fault::Restart {
            down: T0 + 700,
            up: T0 + 800,
        }];
        assert!(run.check().violations.is_empty());
        run.faults = vec![Fault::Restart {
            down: T0 - 400,
            up: T0 - 300,
        }];
        assert_eq!(run.check().violations.len(), 1);
        // The new holder's own fault counts too: stopped between its grant and its "enter",
        // it may enter on a permit that ran out meanwhile.
        run.faults = vec![Fault::Stop {
            pid: 3,
            from: T0 + 1000,
            to: T0 + 1450,
        }];
        assert!(run.check().violations.is_empty());
    }

    #[test]
    fn no_excess_when_dlock_had_ended_a_command_or_a_holder_was_killed_before() {
        let mut run = crowded();
        report(&mut run, 1).command_ended_at_ms = Some(T0 + 1490);
        let verdict = run.check();
        assert_eq!((verdict.crowded, verdict.ended_before), (1, 1));
        assert!(verdict.violations.is_empty(), "{:#?}", verdict.violations);
        // A holder SIGKILLed before the entry is not counted inside.
        let mut run = crowded();
        run.procs.get_mut(&1).unwrap().ended = Some(Ended {
            code: -1,
            report: None,
        });
        run.faults = vec![Fault::Kill {
            pid: 1,
            at: T0 + 900,
        }];
        let verdict = run.check();
        assert_eq!(verdict.crowded, 0);
        assert!(verdict.violations.is_empty(), "{:#?}", verdict.violations);
        // Killed after the entry, it was inside then, unfaulted.
        run.faults = vec![Fault::Kill {
            pid: 1,
            at: T0 + 1510,
        }];
        let verdict = run.check();
        assert_eq!(verdict.violations.len(), 1, "{:#?}", verdict.violations);
        assert!(verdict.violations[0].contains("3 holders inside"));
    }

    #[test]
    fn starvation_excuses_an_excess_only_a_ttl_after_the_hold_began() {
        let mut run = crowded();
        report(&mut run, 1).loss_reason =
            Some("Redis could not be reached before the lease ran out: timed out".into());
        let verdict = run.check();
        assert!(verdict.violations.is_empty(), "{:#?}", verdict.violations);
        assert_eq!(verdict.starved, 1);
        // The same, 400 ms into pid 1's hold: the semaphore gave a valid permit away.
        let log = &mut run.logs[0].1;
        log[2] = format!("enter 200 3 {}", T0 + 400);
        report(&mut run, 3).waited_ms = 0;
        let verdict = run.check();
        assert_eq!(verdict.violations.len(), 1, "{:#?}", verdict.violations);
        assert_eq!(verdict.starved, 0);
    }

    #[test]
    fn the_excess_must_be_told_unless_killed() {
        let mut run = crowded();
        run.faults = vec![Fault::Stop {
            pid: 1,
            from: T0 + 100,
            to: T0 + 1600,
        }];
        run.procs.get_mut(&1).unwrap().ended.as_mut().unwrap().code = 0;
        let verdict = run.check();
        assert_eq!(verdict.violations.len(), 1, "{:#?}", verdict.violations);
        assert!(verdict.violations[0].contains("exited 76"));
        // Any one of them told is enough for an excess of one (which one lost its permit is
        // not in the record)...
        run.procs.get_mut(&2).unwrap().ended.as_mut().unwrap().code = 76;
        assert!(run.check().violations.is_empty());
        // ...and a kill, even after the excess, counts as told.
        run.procs.get_mut(&2).unwrap().ended.as_mut().unwrap().code = 0;
        run.faults.push(Fault::Kill {
            pid: 1,
            at: T0 + 1650,
        });
        assert!(run.check().violations.is_empty());
    }

    #[test]
    fn a_token_of_two_holders_or_a_later_grant_with_a_smaller_token_is_a_violation() {
        let run = crowded();
        let verdict = run.check();
        // Pid 3 asked at T0+400, after pid 1 saw its grant (T0+5) and pid 2 its (T0+12).
        assert_eq!(verdict.ordered_grants, 2);
        // Pid 3's token below pid 2's, in its report and in its "enter".
        let mut run = crowded();
        report(&mut run, 3).fencing_token = Some(105);
        run.logs[0].1[2] = format!("enter 105 3 {}", T0 + 1500);
        run.logs[0].1[4] = format!("exit 105 3 {}", T0 + 1800);
        run.faults = vec![Fault::Restart {
            down: T0 + 700,
            up: T0 + 800,
        }];
        let verdict = run.check();
        assert_eq!(verdict.violations.len(), 1, "{:#?}", verdict.violations);
        assert!(verdict.violations[0].contains("token 105 <= 110"));
        // Pid 3 handed pid 2's token.
        report(&mut run, 3).fencing_token = Some(110);
        run.logs[0].1[2] = format!("enter 110 3 {}", T0 + 1500);
        let verdict = run.check();
        assert!(
            verdict.violations.iter().any(|v| v.contains("two holders")),
            "{:#?}",
            verdict.violations
        );
        // A job entering with another token than its grant's.
        let mut run = crowded();
        run.faults = vec![Fault::Restart {
            down: T0 + 700,
            up: T0 + 800,
        }];
        run.logs[0].1[2] = format!("enter 201 3 {}", T0 + 1500);
        let verdict = run.check();
        assert!(
            verdict
                .violations
                .iter()
                .any(|v| v.contains("two fencing tokens")),
            "{:#?}",
            verdict.violations
        );
    }

    #[test]
    fn grants_whose_order_is_uncertain_are_not_compared() {
        // Pid 3 asked before pid 2's grant was seen: either may have been granted first.
        let mut run = crowded();
        run.faults = vec![Fault::Restart {
            down: T0 + 700,
            up: T0 + 800,
        }];
        report(&mut run, 2).waited_ms = 500;
        report(&mut run, 3).fencing_token = Some(105);
        run.logs[0].1 = vec![
            format!("enter 100 1 {}", T0 + 10),
            format!("enter 110 2 {}", T0 + 510),
            format!("enter 105 3 {}", T0 + 1500),
        ];
        let verdict = run.check();
        assert_eq!(verdict.ordered_grants, 1, "only pid 1 before pid 3");
        assert!(verdict.violations.is_empty(), "{:#?}", verdict.violations);
    }

    #[test]
    fn nobody_entering_after_a_fault_while_someone_asked_is_a_violation() {
        let mut run = crowded();
        // Pid 1 stopped until T0+1400 (it explains the excess); pid 4 asks at T0+2000 and times
        // out. Pid 3 entered after the stop: progress.
        run.faults = vec![Fault::Stop {
            pid: 1,
            from: T0 + 100,
            to: T0 + 1400,
        }];
        let mut waiter = proc(75, T0 + 2000, 2000, 0, None);
        if let Some(r) = waiter.ended.as_mut().and_then(|e| e.report.as_mut()) {
            r.acquired = false;
            r.fencing_token = None;
        }
        run.procs.insert(4, waiter);
        let verdict = run.check();
        assert!(verdict.violations.is_empty(), "{:#?}", verdict.violations);
        assert_eq!(verdict.progress_checked, 1);
        // A restart after pid 3 entered: nobody entered after it, though pid 4 asked.
        run.faults.push(Fault::Restart {
            down: T0 + 1520,
            up: T0 + 1530,
        });
        let verdict = run.check();
        assert_eq!(verdict.progress_checked, 2);
        assert_eq!(verdict.violations.len(), 1, "{:#?}", verdict.violations);
        assert!(verdict.violations[0].contains("nobody entered"));
    }

    /// The lock's kill check, on a permit: at most one TTL left, and with pid 3 waiting from
    /// T0+400, the next grant (pid 3's, seen at T0+1490; it entered at T0+1500) within TTL + ε
    /// (0 here) of the kill.
    #[test]
    fn a_killed_holders_permit_must_be_free_within_one_ttl() {
        let mut run = crowded();
        run.procs.get_mut(&1).unwrap().ended = Some(Ended {
            code: -1,
            report: None,
        });
        run.faults = vec![Fault::Kill {
            pid: 1,
            at: T0 + 500,
        }];
        run.kills = vec![super::super::KillProbe {
            pid: 1,
            key: "k".into(),
            at: T0 + 500,
            masters: vec![(990, Some(1))],
        }];
        let verdict = run.check();
        assert!(verdict.violations.is_empty(), "{:#?}", verdict.violations);
        assert_eq!(verdict.kill_grants, [990]);
        run.kills[0].masters = vec![(1001, Some(1))];
        let verdict = run.check();
        assert_eq!(verdict.violations.len(), 1, "{:#?}", verdict.violations);
        assert!(verdict.violations[0].contains("more than one TTL"));
        run.kills[0].masters = vec![(990, Some(1))];
        let kill_at = |run: &mut Run, at: u64| {
            run.faults = vec![Fault::Kill { pid: 1, at }];
            run.kills[0].at = at;
            run.check()
        };
        // Killed at T0+495: the grant (T0+1490) is in time, though the "enter" is not.
        let verdict = kill_at(&mut run, T0 + 495);
        assert!(verdict.violations.is_empty(), "{:#?}", verdict.violations);
        assert_eq!(verdict.kill_grants, [995]);
        // Killed at T0+400, the permit was free by T0+1400 and pid 3 still waited.
        let verdict = kill_at(&mut run, T0 + 400);
        assert_eq!(verdict.violations.len(), 1, "{:#?}", verdict.violations);
        assert!(verdict.violations[0].contains("next grant"));
    }
}
