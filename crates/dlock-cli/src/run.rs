//! `dlock run KEY -- CMD…`: run a command only while holding a lock (or, with `--limit N`, one
//! of N permits: see `lease`, which makes both one kind of lease for the supervision here).
//!
//! # Guarantee
//! The command starts only after the lock is granted, and the lock is released only after the
//! command and every process of the job have exited (its group and what left it, see `job`).
//! Ctrl-Z pauses the command, never dlock, so the lease stays renewed while the command holds
//! the lock. If the lease is lost, or renewals fail for so long that the lease could end
//! before a stop (stop signal, KILL after the stop timeout) is over, the command is stopped and
//! dlock exits 76; the stop begins early enough for the command to be gone before the lease's
//! conservative validity ends. If the final release finds the lease gone, or cannot be
//! confirmed, dlock also exits 76 and says the run may have overlapped another holder. With
//! `--limit N`, all of this holds for the command's permit, and at most N commands run at once.

use std::io::Write;
use std::time::{Duration, SystemTime};

use dlock::{Client, Conflict, Error, HolderInfo, LeaseStatus, LockOptions, Wait};
use nix::sys::signal::Signal;
use tokio::time::{sleep, sleep_until, Instant};

use crate::cli::{ReportFormat, RunArgs, WaitLimit};
use crate::exit;
use crate::job::{self, Job, Prepared, SpawnError};
use crate::lease::{is_wrong_type, Kind, Lease, Target};
use crate::report::{ms, to_line, unix_ms, HolderJson, RunReport};
use crate::signals::{is_terminating, Signals};

/// How often a job whose leader has exited is checked for leftover processes.
const JOB_POLL: Duration = Duration::from_millis(20);
/// How long writing --metrics-file may take at exit (a hung NFS server, say) before dlock exits
/// without it: the lock is already released, and dlock's signal handlers would swallow a
/// SIGTERM meant to end it.
const METRICS_WRITE_LIMIT: Duration = Duration::from_secs(10);
/// How long processes get to vanish after SIGKILL before dlock gives up waiting (a process in
/// uninterruptible sleep cannot die sooner; the lock must not be held forever for it).
const AFTER_KILL: Duration = Duration::from_secs(5);
use crate::{connect, fail};

/// Runs `dlock run` and returns dlock's exit code.
pub async fn run(args: RunArgs) -> u8 {
    if args.limit.is_some() && args.min_hold.is_some() {
        // A permit has no minimum hold: the library cannot leave one to expire after its
        // command, and keeping dlock alive to hold it would defeat --min-hold's promise that
        // dlock exits at once.
        errln!(
            "dlock: --min-hold cannot be used with --limit: a semaphore permit cannot be kept \
             after its command ends"
        );
        return exit::USAGE;
    }
    let started = Instant::now();
    let mut report = RunReport {
        key: args.key.clone(),
        limit: args.limit,
        started_at_ms: unix_ms(SystemTime::now()),
        ..RunReport::default()
    };
    let code = Runner {
        args: &args,
        report: &mut report,
    }
    .run()
    .await;
    report.total_ms = ms(started.elapsed());
    report.dlock_exit_code = code;
    if args.report == Some(ReportFormat::Json) {
        write_report(&args, &report);
    }
    if let Some(path) = &args.metrics_file {
        crate::metrics_file::write_within(path, &report, METRICS_WRITE_LIMIT);
    }
    code
}

struct Runner<'a> {
    args: &'a RunArgs,
    report: &'a mut RunReport,
}

/// What [`Runner::supervise`] saw.
struct Supervised {
    /// The command's (the group leader's) exit status.
    status: std::io::Result<std::process::ExitStatus>,
    ending: Ending,
    /// No process of the job is left (false: dlock gave up on processes that survived KILL).
    all_gone: bool,
    /// When dlock first sent a stop signal, if it did.
    stop_sent_at: Option<SystemTime>,
}

/// How the supervised command ended, beyond its exit status.
#[derive(Debug, Clone, PartialEq)]
enum Ending {
    /// It exited by itself (or after a forwarded signal).
    Exited,
    /// dlock stopped it because the lease was lost (why).
    Lost(String),
    /// dlock stopped it because renewals kept failing and the lease could end before a
    /// slower stop would be over.
    AtRisk,
    /// dlock stopped it because --max-runtime passed.
    MaxRuntime,
}

impl Runner<'_> {
    async fn run(&mut self) -> u8 {
        let mut signals = match Signals::install() {
            Ok(signals) => signals,
            Err(e) => {
                return self.error(
                    "error",
                    exit::INTERNAL,
                    format!("cannot handle signals: {e}"),
                )
            }
        };
        if let Err(e) = job::become_subreaper() {
            tracing::debug!(%e, "could not become a child subreaper");
        }
        // The guardian starts now, while dlock connects and takes the lock; it starts the
        // command only once told the lock is granted (see job::launch).
        let prepared = self.prepare();
        let client = match connect(&self.args.connection).await {
            Ok(client) => client,
            Err(e) => return self.lib_error(&e),
        };
        let code = self.with_client(&client, &mut signals, prepared).await;
        // Background releases (a cancelled wait, a guard dropped on an error path) go out
        // before the process exits.
        client.flush().await;
        code
    }

    /// Starts the guardian for the command, in dlock's environment minus its secrets, plus
    /// what the command learns of its lock (the fencing token comes with `start`).
    fn prepare(&self) -> Result<Prepared, SpawnError> {
        let (mut env, remove) = scrubbed_env(|name| std::env::var_os(name));
        env.extend([
            ("DLOCK_KEY", self.args.key.clone()),
            ("DLOCK_TTL_MS", ms(self.args.ttl).to_string()),
        ]);
        if let Some(limit) = self.args.limit {
            env.push(("DLOCK_LIMIT", limit.to_string()));
        }
        if self.args.shared {
            env.push(("DLOCK_SHARED", "1".into()));
        }
        Job::prepare(&self.args.command, &env, &remove)
    }

    async fn with_client(
        &mut self,
        client: &Client,
        signals: &mut Signals,
        prepared: Result<Prepared, SpawnError>,
    ) -> u8 {
        let options = LockOptions::new()
            .ttl(self.args.ttl)
            .fair(self.args.fair)
            .label(self.label())
            .wait(match self.args.wait {
                Some(WaitLimit::For(limit)) => Wait::Limit(limit),
                Some(WaitLimit::Forever) => Wait::Forever,
                None => Wait::Limit(Duration::ZERO),
            });
        let kind = match (self.args.limit, self.args.shared) {
            (Some(limit), _) => Kind::Permit(limit),
            (None, true) => Kind::Shared,
            (None, false) if !self.args.and.is_empty() => Kind::And(self.args.and.clone()),
            (None, false) => Kind::Lock,
        };
        let target = match Target::new(client, &self.args.key, kind, options) {
            Ok(target) => target,
            Err(e) => return self.lib_error(&e),
        };
        let asked = Instant::now();
        self.report.asked_at_ms = Some(unix_ms(SystemTime::now()));
        let acquisition = async {
            match self.args.wait {
                None => target.try_take().await,
                Some(_) => target.take().await,
            }
        };
        let granted = tokio::select! {
            granted = acquisition => granted,
            signal = signals.recv_terminating() => {
                // The cancelled wait leaves no lock behind (its in-doubt request is released
                // in the background, flushed before exit).
                self.report.outcome = "interrupted";
                self.report.waited_ms = ms(asked.elapsed());
                return exit::SIGNAL_BASE.saturating_add(signal as u8);
            }
        };
        self.report.waited_ms = ms(asked.elapsed());
        let lease = match granted {
            Ok(lease) => lease,
            Err(e) => return self.refused(client, &e).await,
        };
        self.report.acquired = true;
        self.report.fencing_token = Some(lease.fencing_token());
        let held_since = Instant::now();
        let code = self.run_holding(&lease, signals, prepared).await;
        // --min-hold: what is left of it stays on the key, and dlock exits at once.
        let keep = match self.args.min_hold {
            Some(min_hold) if self.report.outcome == "ran" => {
                min_hold.saturating_sub(held_since.elapsed())
            }
            _ => Duration::ZERO,
        };
        let code = self.release(lease, code, keep).await;
        self.report.held_ms = Some(ms(held_since.elapsed()));
        code
    }

    /// Runs the command under the held lease; returns the exit code before release.
    async fn run_holding(
        &mut self,
        lease: &Lease,
        signals: &mut Signals,
        prepared: Result<Prepared, SpawnError>,
    ) -> u8 {
        let program = self.args.command[0].to_string_lossy().into_owned();
        let started = match prepared {
            Ok(prepared) => prepared.start(&lease.fencing_tokens()).await,
            Err(e) => Err(e),
        };
        let mut job = match started {
            Ok(job) => job,
            Err(SpawnError::NotFound) => {
                return self.error(
                    "not_found",
                    exit::NOT_FOUND,
                    format!("command not found: {program}"),
                )
            }
            Err(SpawnError::NotExecutable(e)) => {
                return self.error(
                    "not_executable",
                    exit::NOT_EXECUTABLE,
                    format!("cannot execute {program}: {e}"),
                )
            }
            Err(SpawnError::Other(e)) => {
                return self.error(
                    "error",
                    exit::INTERNAL,
                    format!("cannot start {program}: {e}"),
                )
            }
        };
        self.report.ran = true;
        if self.stop_margin() >= self.args.ttl {
            tracing::info!(
                "--stop-timeout + --redis-timeout is not shorter than --ttl: if a renewal fails, \
                 the command is stopped at once"
            );
        }
        let run_started = Instant::now();
        let Supervised {
            status,
            ending,
            all_gone,
            stop_sent_at,
        } = self.supervise(&mut job, lease, signals).await;
        if all_gone {
            self.report.command_ended_at_ms = Some(unix_ms(SystemTime::now()));
        }
        self.report.stop_sent_at_ms = stop_sent_at.map(unix_ms);
        let survived = !all_gone;
        self.report.run_ms = Some(ms(run_started.elapsed()));
        let status = match status {
            Ok(status) => status,
            Err(e) => {
                return self.error(
                    "error",
                    exit::INTERNAL,
                    format!("lost track of the command: {e}"),
                )
            }
        };
        {
            use std::os::unix::process::ExitStatusExt;
            self.report.exit_code = status.code();
            self.report.signal = status.signal();
        }
        let code = exit_code(&ending, status, survived);
        match ending {
            Ending::Lost(reason) => {
                self.report.outcome = "lost";
                self.report.lost = true;
                self.report.loss_reason = Some(reason);
            }
            Ending::AtRisk => {
                self.report.outcome = "lost";
                self.report.lost = true;
                self.report.loss_reason = Some(match lease.status() {
                    LeaseStatus::Lost(reason) => reason.to_string(),
                    _ => {
                        "renewals failed; the command was stopped before the lease could end".into()
                    }
                });
            }
            Ending::MaxRuntime => self.report.outcome = "max_runtime",
            Ending::Exited => self.report.outcome = "ran",
        }
        if survived {
            self.say(format!(
                "processes of the command survived SIGKILL for {}; releasing {} while they \
                 may still run, so this run cannot be vouched for",
                humantime::format_duration(AFTER_KILL),
                self.held()
            ));
            self.report.outcome = "survived_kill";
        }
        code
    }

    /// Waits for the command while forwarding signals, watching the lease and --max-runtime;
    /// stops the command when needed. Returns once no process of the job is left (see
    /// [`Job::left`]), or processes survived KILL for [`AFTER_KILL`] (then with `true`: the
    /// guardian goes on KILLing them, dlock stops waiting).
    async fn supervise(&self, job: &mut Job, lease: &Lease, signals: &mut Signals) -> Supervised {
        let max_deadline = self.args.max_runtime.map(|limit| Instant::now() + limit);
        let mut ending = Ending::Exited;
        let mut status = None;
        let mut kill_at: Option<Instant> = None;
        let mut killed = false;
        let mut give_up_at: Option<Instant> = None;
        let mut told_unsignallable = false;
        let mut stop_sent_at = None;
        loop {
            // Every stop sets `kill_at` (the KILL deadline): the first one is the stop's time,
            // noted right after the branch that sent it.
            if kill_at.is_some() && stop_sent_at.is_none() {
                stop_sent_at = Some(SystemTime::now());
            }
            tokio::select! {
                leader = job.wait(), if status.is_none() => {
                    status = Some(leader);
                    if !job.left().any {
                        break;
                    }
                    if kill_at.is_none() {
                        tracing::info!("stopping processes the command left");
                        kill_at = Some(self.begin_stop(job, None));
                    }
                }
                // After the leader: poll until the rest of the job is gone too.
                () = sleep(JOB_POLL), if status.is_some() => {
                    let left = job.left();
                    if !left.any {
                        break;
                    }
                    if !left.unsignallable.is_empty() && !told_unsignallable {
                        told_unsignallable = true;
                        self.say(format!(
                            "not permitted to signal {} of the command; keeping {} until they \
                             exit",
                            left.unsignallable.join(", "), self.held()
                        ));
                    }
                }
                reason = lease.lost(), if ending == Ending::Exited => {
                    self.say(format!(
                        "lost {} while the command ran: {reason}; stopping it",
                        self.held()
                    ));
                    ending = Ending::Lost(reason.to_string());
                    kill_at = Some(self.begin_stop(job, kill_at));
                }
                // Renewals failing: stop now, so the command is gone, KILL included, before
                // the lease's conservative validity can end (see --stop-timeout).
                () = lease.renewal_at_risk(self.stop_margin()), if ending == Ending::Exited => {
                    ending = match lease.status() {
                        LeaseStatus::Lost(reason) => {
                            self.say(format!(
                                "lost {} while the command ran: {reason}; stopping it",
                                self.held()
                            ));
                            Ending::Lost(reason.to_string())
                        }
                        _ => {
                            self.say(format!(
                                "cannot renew {} (Redis unreachable or too slow); stopping the \
                                 command so that it is gone before the lease can end",
                                self.held()
                            ));
                            Ending::AtRisk
                        }
                    };
                    kill_at = Some(self.begin_stop(job, kill_at));
                }
                () = sleep_until_some(max_deadline), if ending == Ending::Exited && max_deadline.is_some() => {
                    self.say(format!(
                        "{}: the command ran longer than --max-runtime {}; stopping it",
                        self.args.key,
                        humantime::format_duration(self.args.max_runtime.unwrap_or_default())
                    ));
                    ending = Ending::MaxRuntime;
                    kill_at = Some(self.begin_stop(job, kill_at));
                }
                signal = signals.recv() => self.forward(job, signal, &mut kill_at),
                () = sleep_until_some(kill_at), if kill_at.is_some() && !killed => {
                    tracing::info!("stop timeout passed; sending KILL");
                    job.kill();
                    killed = true;
                    give_up_at = Some(Instant::now() + AFTER_KILL);
                }
                () = sleep_until_some(give_up_at), if give_up_at.is_some() && status.is_some() => {
                    give_up_at = None;
                    // Processes dlock may not signal are waited for without limit: the lock
                    // stays held while they run.
                    if job.left().unsignallable.is_empty() {
                        job.abandon();
                        return Supervised {
                            status: status.unwrap_or_else(|| Err(std::io::Error::other("no status"))),
                            ending,
                            all_gone: false,
                            stop_sent_at,
                        };
                    }
                }
            }
        }
        job.disarm();
        Supervised {
            status: status.unwrap_or_else(|| Err(std::io::Error::other("no status"))),
            ending,
            all_gone: true,
            stop_sent_at,
        }
    }

    /// Passes a signal dlock received on to the command's process group. Ctrl-Z (TSTP) pauses
    /// the command while dlock stays awake and keeps the lease renewed; CONT resumes it. A
    /// terminating signal is followed by CONT, so a paused command can act on it.
    fn forward(&self, job: &Job, signal: Signal, kill_at: &mut Option<Instant>) {
        tracing::info!(%signal, "forwarding signal to the command");
        job.signal(signal);
        if signal == Signal::SIGTSTP {
            self.say(format!(
                "paused the command; {} stays held. Resume it with: kill -CONT {}",
                self.held(),
                std::process::id()
            ));
        }
        if is_terminating(signal) {
            job.signal(Signal::SIGCONT);
            if kill_at.is_none() {
                *kill_at = Some(Instant::now() + self.args.stop_timeout);
            }
        }
    }

    /// Sends the stop signal to every process of the job and returns the KILL deadline: at
    /// most --stop-timeout from now, or earlier if a stop was already under way.
    fn begin_stop(&self, job: &Job, kill_at: Option<Instant>) -> Instant {
        job.stop(self.args.stop_signal);
        let deadline = Instant::now() + self.args.stop_timeout;
        kill_at.map_or(deadline, |at| at.min(deadline))
    }

    /// How much of the lease's validity must be left when a failing renewal makes dlock stop
    /// the command: the stop timeout, and one Redis timeout for the KILLed processes to be
    /// gone and for the renewal in flight. If the lease is shorter than that, the stop begins
    /// at the first failed renewal.
    fn stop_margin(&self) -> Duration {
        self.args
            .stop_timeout
            .saturating_add(self.args.connection.redis_timeout)
    }

    /// Releases the lease, or, with `keep`, leaves the lock to expire after `keep` (what is
    /// left of --min-hold). A lease found lost, or a release that cannot be confirmed, turns
    /// any exit code into 76: dlock never reports plain success for a run it cannot vouch for.
    async fn release(&mut self, lease: Lease, code: u8, keep: Duration) -> u8 {
        match lease.end(keep).await {
            Ok(()) => code,
            Err(Error::Lost { reason, .. }) => {
                if !self.report.lost {
                    self.say(format!(
                        "{} was lost before the command finished ({reason}); it may have \
                         overlapped another holder",
                        self.held()
                    ));
                    self.report.lost = true;
                    self.report.loss_reason = Some(reason.to_string());
                    self.report.outcome = "lost";
                }
                exit::LOST
            }
            Err(e) => {
                // Redis did not answer (the library retried while the lease could still be
                // valid): whether the lease held to the end is unknown.
                self.say(format!(
                    "could not confirm the release of {} ({e}): the lease may have ended before \
                     the command finished, so the run may have overlapped another holder",
                    self.args.key
                ));
                if !self.report.lost {
                    self.report.lost = true;
                    self.report.loss_reason = Some(format!("release not confirmed: {e}"));
                    self.report.outcome = "unconfirmed";
                }
                exit::LOST
            }
        }
    }

    /// The lock (or every permit) was busy, the wait ran out, or acquisition failed.
    async fn refused(&mut self, client: &Client, error: &Error) -> u8 {
        let Some(conflict) = error.conflict() else {
            return self.mismatch(client, error).await;
        };
        self.report.holder = conflict.holder.as_ref().map(HolderJson::from);
        if self.args.limit.is_some() || self.args.shared {
            self.report.holders = Some(conflict.holders.iter().map(HolderJson::from).collect());
        }
        let timed_out = error.is_timeout();
        self.report.outcome = if timed_out { "timeout" } else { "busy" };
        if !self.args.quiet {
            let waited = || {
                humantime::format_duration(Duration::from_millis(self.report.waited_ms)).to_string()
            };
            // With --and, the member found held.
            let key = &conflict.key;
            let exclusive_waits =
                self.args.shared && conflict.holder.as_ref().is_some_and(|h| h.readers > 0);
            let message = match (conflict.limit, timed_out) {
                (None, false) if exclusive_waits => format!(
                    "an exclusive copy is waiting for {key}, and shared copies queue behind it \
                     ({})",
                    describe_holder(conflict)
                ),
                (None, true) if exclusive_waits => format!(
                    "gave up waiting after {}: an exclusive copy is still waiting for {key}, or \
                     running ({})",
                    waited(),
                    describe_holder(conflict)
                ),
                (None, false) => format!(
                    "another process is already running {key} ({})",
                    describe_holder(conflict)
                ),
                (None, true) => format!(
                    "gave up waiting after {}: another process is still running {key} ({})",
                    waited(),
                    describe_holder(conflict)
                ),
                (Some(limit), false) => describe_taken(key, limit, &conflict.holders, ""),
                (Some(limit), true) => format!(
                    "gave up waiting after {}: {}",
                    waited(),
                    describe_taken(key, limit, &conflict.holders, " still")
                ),
            };
            self.say(message);
        }
        self.args.conflict_exit_code
    }

    /// An acquisition error that is no conflict. A KEY in use with another --limit, or as
    /// the other kind (a lock where a semaphore is asked for, or the reverse), is the caller's
    /// configuration disagreeing with another copy's: a usage error (64), said plainly.
    async fn mismatch(&mut self, client: &Client, error: &Error) -> u8 {
        let key = &self.args.key;
        let message = if is_wrong_type(error) {
            Some(match self.args.limit {
                Some(_) => format!(
                    "{key} is in use as a lock (dlock run without --limit), not as a \
                     semaphore: every copy must name the same --limit, or none"
                ),
                None => format!(
                    "{key} is in use as a semaphore (dlock run --limit N), not as a lock: \
                     every copy must name the same --limit, or none"
                ),
            })
        } else if let (Some(limit), true) = (self.args.limit, error.is_config()) {
            // The library refuses a limit other than the stored one; say which it is.
            match client.semaphore_status(key).await {
                Ok(status) => status
                    .limit
                    .filter(|&stored| stored != limit)
                    .map(|stored| {
                        format!(
                        "{key} is in use with --limit {stored}, not --limit {limit}: every copy \
                         must name the same limit"
                    )
                    }),
                Err(_) => None,
            }
        } else {
            None
        };
        match message {
            Some(message) => self.error("mismatch", exit::USAGE, message),
            None => self.lib_error(error),
        }
    }

    fn lib_error(&mut self, error: &Error) -> u8 {
        self.report.outcome = "error";
        fail(error)
    }

    fn error(&mut self, outcome: &'static str, code: u8, message: String) -> u8 {
        self.report.outcome = outcome;
        self.say(message);
        code
    }

    fn say(&self, message: String) {
        errln!("dlock: {message}");
    }

    /// What this run holds, for messages: "the lock on KEY", "the shared lock on KEY" or "the
    /// permit of KEY".
    fn held(&self) -> String {
        match (self.args.limit, self.args.shared) {
            (Some(_), _) => format!("the permit of {}", self.args.key),
            (None, true) => format!("the shared lock on {}", self.args.key),
            (None, false) if !self.args.and.is_empty() => {
                format!(
                    "the locks on {} and {}",
                    self.args.key,
                    self.args.and.join(", ")
                )
            }
            (None, false) => format!("the lock on {}", self.args.key),
        }
    }

    /// The holder-info label: --label, or the command line.
    fn label(&self) -> String {
        self.args.label.clone().unwrap_or_else(|| {
            self.args
                .command
                .iter()
                .map(|arg| arg.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        })
    }
}

/// "held by web-1 pid 42 for 3.2s", or what is known of a holder without holder info.
fn describe_holder(conflict: &Conflict) -> String {
    match (&conflict.holder, conflict.ttl_left) {
        (Some(holder), _) => format!("held by {holder}"),
        (None, Some(ttl)) => format!(
            "held by an unknown owner; its lease ends in {}",
            humantime::format_duration(Duration::from_millis(ms(ttl)))
        ),
        (None, None) => "held by an unknown owner, without expiry".into(),
    }
}

/// How many holders a refusal names before it says "and N more".
const NAMED_HOLDERS: usize = 5;

/// A semaphore with no permit for us: "all 3 permits of KEY are taken (held by web-1 pid 42
/// for 3.2s, web-2 pid 7 for 1.0s, web-3 pid 9 for 0.2s)". `still` goes after the verb for a
/// wait that ran out.
fn describe_taken(key: &str, limit: u32, holders: &[HolderInfo], still: &str) -> String {
    if holders.is_empty() {
        // Holders that left no holder info (written by another tool): nothing to count.
        return format!(
            "no permit of {key} is{still} free ({limit} in all, held by owners that left no \
             holder info)"
        );
    }
    let taken: u32 = holders.iter().map(|h| h.permits).sum();
    let what = if taken < limit {
        // Fair mode: permits are free, but promised to earlier waiters.
        let verb = if taken == 1 { "is" } else { "are" };
        format!(
            "{taken} of the {limit} permits of {key} {verb}{still} taken and the rest are \
             promised to earlier waiters"
        )
    } else if limit == 1 {
        format!("the only permit of {key} is{still} taken")
    } else {
        format!("all {limit} permits of {key} are{still} taken")
    };
    let mut named: Vec<String> = holders
        .iter()
        .take(NAMED_HOLDERS)
        .map(ToString::to_string)
        .collect();
    let more = holders.len().saturating_sub(NAMED_HOLDERS);
    if more > 0 {
        named.push(format!("and {more} more"));
    }
    format!("{what} (held by {})", named.join(", "))
}

/// The command inherits dlock's environment, minus dlock's secrets: `DLOCK_REDIS_URL` with
/// every password replaced by `***` (the command may still want to know which Redis), and no
/// `DLOCK_SENTINEL_MASTER_PASSWORD`. A nested dlock must get its password another way.
/// Returns the variables to set and those to remove.
fn scrubbed_env(
    var: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> (Vec<(&'static str, String)>, Vec<&'static str>) {
    let mut set = Vec::new();
    let mut remove = vec!["DLOCK_SENTINEL_MASTER_PASSWORD"];
    if let Some(urls) = var("DLOCK_REDIS_URL") {
        match urls.to_str() {
            Some(urls) => {
                let redacted: Vec<String> = urls.split(' ').map(dlock::redact_url).collect();
                set.push(("DLOCK_REDIS_URL", redacted.join(" ")));
            }
            // Not text, so not something we can redact: drop it.
            None => remove.push("DLOCK_REDIS_URL"),
        }
    }
    (set, remove)
}

/// dlock's exit code for a run that ended as `ending`, the command having exited with `status`.
/// `survived`: processes of the job outlived SIGKILL for [`AFTER_KILL`] and the lock is being
/// released while they may still run.
fn exit_code(ending: &Ending, status: std::process::ExitStatus, survived: bool) -> u8 {
    if survived {
        // Whatever the command's own code: dlock cannot vouch for a run that goes on unlocked.
        return exit::LOST;
    }
    match ending {
        Ending::Lost(_) | Ending::AtRisk => exit::LOST,
        Ending::MaxRuntime => exit::MAX_RUNTIME,
        Ending::Exited => exit::for_status(status),
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn write_report(args: &RunArgs, report: &RunReport) {
    let line = to_line(report);
    let written = match &args.report_file {
        Some(path) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut file| writeln!(file, "{line}")),
        None => writeln!(std::io::stderr(), "{line}"),
    };
    if let Err(e) = written {
        errln!("dlock: cannot write the report: {e}");
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use super::*;

    #[test]
    fn the_commands_environment_carries_no_secret() {
        let env = |name: &str| match name {
            "DLOCK_REDIS_URL" => Some(OsString::from(
                "redis://admin:pw1@a:6379 rediss://:pw2@b:6380/0 redis://c:6379",
            )),
            "DLOCK_SENTINEL_MASTER_PASSWORD" => Some(OsString::from("pw3")),
            _ => None,
        };
        let (set, remove) = scrubbed_env(env);
        assert_eq!(
            set,
            [(
                "DLOCK_REDIS_URL",
                "redis://admin:***@a:6379 rediss://:***@b:6380/0 redis://c:6379".to_owned()
            )]
        );
        assert_eq!(remove, ["DLOCK_SENTINEL_MASTER_PASSWORD"]);

        let (set, remove) = scrubbed_env(|_| None);
        assert!(set.is_empty());
        assert_eq!(remove, ["DLOCK_SENTINEL_MASTER_PASSWORD"]);
    }

    /// Issue 9: processes of the job that survive SIGKILL (uninterruptible sleep) make dlock
    /// release the lock while they may still run: never the command's own code then, not even
    /// 0. (A seam: an unkillable process cannot be made in a test without root and a hung
    /// filesystem.)
    #[test]
    fn a_run_whose_processes_survived_sigkill_exits_76_whatever_the_commands_code() {
        use std::os::unix::process::ExitStatusExt;
        let ok = std::process::ExitStatus::from_raw(0);
        let killed = std::process::ExitStatus::from_raw(9);
        for ending in [Ending::Exited, Ending::MaxRuntime, Ending::AtRisk] {
            for status in [ok, killed] {
                assert_eq!(exit_code(&ending, status, true), exit::LOST, "{ending:?}");
            }
        }
        assert_eq!(exit_code(&Ending::Exited, ok, false), 0);
        assert_eq!(exit_code(&Ending::Exited, killed, false), 137);
        assert_eq!(exit_code(&Ending::MaxRuntime, ok, false), exit::MAX_RUNTIME);
        assert_eq!(
            exit_code(&Ending::Lost("gone".into()), ok, false),
            exit::LOST
        );
    }

    fn holder(pid: u32, permits: u32) -> HolderInfo {
        HolderInfo {
            host: "web-1".into(),
            pid: Some(pid),
            label: None,
            acquired_at: SystemTime::UNIX_EPOCH,
            held_for: Duration::from_millis(3200),
            fencing_token: 1,
            finished: false,
            permits,
            readers: 0,
        }
    }

    #[test]
    fn a_refusal_says_how_many_permits_are_taken_and_by_whom() {
        let two = [holder(42, 1), holder(7, 2)];
        assert_eq!(
            describe_taken("k", 3, &two, ""),
            "all 3 permits of k are taken (held by web-1 pid 42 for 3.2s, web-1 pid 7 \
             (2 permits) for 3.2s)"
        );
        assert_eq!(
            describe_taken("k", 1, &two[..1], " still"),
            "the only permit of k is still taken (held by web-1 pid 42 for 3.2s)"
        );
        assert_eq!(
            describe_taken("k", 3, &two[..1], ""),
            "1 of the 3 permits of k is taken and the rest are promised to earlier waiters \
             (held by web-1 pid 42 for 3.2s)"
        );
        let many: Vec<HolderInfo> = (1..=7).map(|pid| holder(pid, 1)).collect();
        let said = describe_taken("k", 7, &many, "");
        assert!(said.ends_with("pid 5 for 3.2s, and 2 more)"), "{said}");
        assert!(!said.contains("pid 6"), "{said}");
        assert_eq!(
            describe_taken("k", 2, &[], ""),
            "no permit of k is free (2 in all, held by owners that left no holder info)"
        );
    }

    #[test]
    fn a_url_that_is_not_text_is_dropped_rather_than_passed_on() {
        use std::os::unix::ffi::OsStringExt;
        let (set, remove) = scrubbed_env(|name| {
            (name == "DLOCK_REDIS_URL").then(|| OsString::from_vec(b"redis://:\xffpw@a".to_vec()))
        });
        assert!(set.is_empty());
        assert!(remove.contains(&"DLOCK_REDIS_URL"));
    }
}
