//! Command-line arguments: every flag documented once, with its default and unit.
//!
//! Parsing turns text into checked values (durations, signals, wait limits) up front, so a bad
//! value is a usage error (exit 64) before anything reaches Redis.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use nix::sys::signal::Signal;

use crate::exit;

/// Run commands under a distributed lock on Redis, so a job never runs twice at once.
#[derive(Debug, Parser)]
#[command(name = "dlock", version, after_help = exit::HELP, propagate_version = true)]
pub struct Cli {
    /// Log what dlock does to stderr (-v: info, -vv: debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

/// dlock's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run CMD only while holding the lock KEY (or, with --limit N, one of N permits);
    /// refuse (exit 75) if another process holds it.
    #[command(after_help = exit::HELP)]
    Run(RunArgs),
    /// Show whether KEY is held, by whom, for how long, and its fencing token; for a
    /// semaphore (--limit), its limit, permits free and every holder.
    Status(StatusArgs),
    /// List the locks held and the semaphores in use through dlock (uses SCAN, never KEYS).
    List(ListArgs),
    /// Break a lock whoever holds it (e.g. a stale lock), or free a semaphore's permits (all,
    /// or one holder's with --holder); prints what it broke.
    Release(ReleaseArgs),
    /// Measure lock throughput, latency and fairness against your Redis, relative to the
    /// round-trip floor of the same run. Writes only keys under dlock:bench:.
    Bench(BenchArgs),
    /// Print a completion script for SHELL to stdout, e.g. `dlock completions bash >
    /// /etc/bash_completion.d/dlock` (see the README for zsh and fish).
    Completions(CompletionsArgs),
    /// Print a man page (roff) to stdout: `dlock man > dlock.1`, and one per command:
    /// `dlock man run > dlock-run.1`.
    Man(ManArgs),
}

/// `dlock completions SHELL`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `dlock man [COMMAND]`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// The command whose page to print (run, status, …); dlock's own page without it.
    pub command: Option<String>,
}

/// Where Redis is.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Connection")]
pub struct Connection {
    /// Redis URL: redis://[user:password@]host[:port][/db], rediss://… (TLS), or
    /// unix:///path/to.sock. Repeat it (3, 5, … independent masters) for Redlock; in the
    /// environment, separate several URLs with spaces. The password is never printed.
    #[arg(
        long,
        env = "DLOCK_REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true,
        value_delimiter = ' ',
        action = clap::ArgAction::Append,
        value_name = "URL"
    )]
    pub redis: Vec<String>,

    /// The --redis URLs are seed nodes of a Redis Cluster.
    #[arg(long, env = "DLOCK_CLUSTER", conflicts_with = "sentinel")]
    pub cluster: bool,

    /// Find the master through these sentinels (repeat for each; their own credentials in the
    /// URL) instead of --redis. Needs --sentinel-master.
    #[arg(long, value_name = "URL", requires = "sentinel_master", action = clap::ArgAction::Append)]
    pub sentinel: Vec<String>,

    /// The master name the sentinels monitor.
    #[arg(
        long,
        env = "DLOCK_SENTINEL_MASTER",
        value_name = "NAME",
        requires = "sentinel"
    )]
    pub sentinel_master: Option<String>,

    /// Password of the master found through Sentinel (not of the sentinels).
    #[arg(
        long,
        env = "DLOCK_SENTINEL_MASTER_PASSWORD",
        hide_env_values = true,
        value_name = "PASSWORD",
        requires = "sentinel"
    )]
    pub sentinel_master_password: Option<String>,

    /// Trust this CA certificate (PEM file) for rediss:// servers instead of the system's
    /// roots, e.g. for a Redis whose certificate a private CA signed.
    #[arg(long, env = "DLOCK_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,

    /// Timeout for each Redis command and for connecting (e.g. 500ms, 2s).
    #[arg(long, default_value = "2s", value_parser = positive_duration, value_name = "DUR")]
    pub redis_timeout: Duration,
}

/// `dlock run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The lock's name (its Redis key), e.g. the job's name: main:hello.
    #[arg(value_name = "KEY")]
    pub key: String,

    /// The command and its arguments, after `--`. Run directly, not through a shell, in
    /// dlock's environment plus DLOCK_KEY (the lock's name), DLOCK_FENCING_TOKEN (this grant's
    /// token), DLOCK_TTL_MS (the lease length) and, with --limit, DLOCK_LIMIT (N), minus
    /// dlock's secrets: DLOCK_REDIS_URL has its passwords replaced by ***,
    /// DLOCK_SENTINEL_MASTER_PASSWORD is removed.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,

    #[command(flatten)]
    pub connection: Connection,

    /// Wait up to DUR for a busy lock instead of failing at once; `forever` waits without
    /// limit. Default: fail at once.
    #[arg(long, value_parser = parse_wait, value_name = "DUR|forever", help_heading = "Waiting")]
    pub wait: Option<WaitLimit>,

    /// With --wait: take the lock in arrival order (FIFO) instead of whoever asks first after a
    /// release; a waiter that dies leaves the queue within 6 s. Needs one Redis or a Cluster.
    #[arg(long, requires = "wait", help_heading = "Waiting")]
    pub fair: bool,

    /// Exit code when the lock is busy or the wait runs out (e.g. 0 for cron).
    #[arg(
        short = 'E',
        long,
        default_value_t = exit::BUSY,
        value_name = "CODE",
        help_heading = "Waiting"
    )]
    pub conflict_exit_code: u8,

    /// Say nothing when the lock is busy (the exit code still tells).
    #[arg(short, long, help_heading = "Waiting")]
    pub quiet: bool,

    /// Lease length. The lease is renewed every TTL/3 while the command runs, so a crashed
    /// dlock frees the lock within one TTL. If renewals keep failing (Redis unreachable), the
    /// command is stopped once at most --stop-timeout + --redis-timeout of the lease is left,
    /// so it is gone before the lease can end; with a TTL shorter than that sum, the stop
    /// begins at the first failed renewal.
    #[arg(long, default_value = "30s", value_parser = positive_duration, value_name = "DUR", help_heading = "Lease")]
    pub ttl: Duration,

    /// Keep the lock at least DUR after the start, even if the command ends sooner, so a late
    /// duplicate of a fast job is still refused (at most 24h). dlock does not wait: when the
    /// command is done it sets the lock to expire when DUR has passed, and exits.
    #[arg(long, value_parser = min_hold, value_name = "DUR", help_heading = "Lease")]
    pub min_hold: Option<Duration>,

    /// Let up to N copies run at once (across every host) instead of one: KEY is then a
    /// counting semaphore, and each copy holds one of its N permits, with its own lease,
    /// renewal, loss and fencing token as a lock's. Every copy must name the same N: a copy
    /// naming another N while the semaphore is in use is a usage error (64), as is a KEY in
    /// use as a plain lock. Not with --min-hold (a permit cannot be kept after the command).
    #[arg(
        long,
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..),
        help_heading = "Lease"
    )]
    pub limit: Option<u32>,

    /// Hold KEY shared, as `flock -s` does: any number of --shared copies run at once, while a
    /// copy without --shared (exclusive) runs alone. Once an exclusive copy waits (--wait),
    /// new --shared copies wait behind it, so a stream of them cannot starve it. Each shared
    /// copy has its own lease; DLOCK_FENCING_TOKEN is then the token of the last exclusive
    /// grant before it (shared copies get the same one; on Redlock, at least that and below
    /// the next exclusive grant's).
    #[arg(long, conflicts_with_all = ["limit", "min_hold"], help_heading = "Lease")]
    pub shared: bool,

    /// Also hold the lock KEY2 (repeat for more): the command runs only while every lock is
    /// held, all taken at once or none (no copy ever holds part of the set, and copies asking
    /// for the same keys in another order never deadlock). Each lock excludes a plain `dlock
    /// run` of its own key. DLOCK_FENCING_TOKEN is KEY's token; DLOCK_FENCING_TOKENS has every
    /// lock's, in command-line order.
    #[arg(
        long = "and",
        value_name = "KEY2",
        conflicts_with_all = ["limit", "shared", "fair"],
        help_heading = "Lease"
    )]
    pub and: Vec<String>,

    /// Label stored with the lock and shown by `status` (default: the command line).
    #[arg(long, value_name = "TEXT", help_heading = "Lease")]
    pub label: Option<String>,

    /// Stop the command after DUR (exit 124).
    #[arg(long, value_parser = positive_duration, value_name = "DUR", help_heading = "Command")]
    pub max_runtime: Option<Duration>,

    /// Signal that asks the command to stop (lease lost, --max-runtime, dlock terminated):
    /// TERM, INT, HUP, QUIT, KILL, USR1, USR2 or a number.
    #[arg(long, default_value = "TERM", value_parser = parse_signal, value_name = "SIGNAL", help_heading = "Command")]
    pub stop_signal: Signal,

    /// How long the command may take to stop after the stop signal before it gets KILL. When
    /// renewals fail, the stop signal goes out this long (plus --redis-timeout) before the
    /// lease could end, so the KILL lands while the lock is surely still held.
    #[arg(long, default_value = "10s", value_parser = positive_duration, value_name = "DUR", help_heading = "Command")]
    pub stop_timeout: Duration,

    /// Write the outcome as one JSON line when dlock exits.
    #[arg(long, value_enum, value_name = "FORMAT", help_heading = "Output")]
    pub report: Option<ReportFormat>,

    /// Where --report writes (default: stderr, so the command's stdout stays its own).
    #[arg(
        long,
        value_name = "PATH",
        requires = "report",
        help_heading = "Output"
    )]
    pub report_file: Option<PathBuf>,

    /// At exit, replace PATH with the run's metrics in the Prometheus text format, for
    /// node_exporter's textfile collector: start, end, duration, wait, exit code, outcome,
    /// fencing token and last success time (kept from the replaced file). One file per job.
    #[arg(long, value_name = "PATH", help_heading = "Output")]
    pub metrics_file: Option<PathBuf>,
}

/// How long `run` waits for a busy lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitLimit {
    /// At most this long.
    For(Duration),
    /// Until granted.
    Forever,
}

/// Report formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// One JSON object on one line.
    Json,
}

/// `dlock status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The lock's name.
    #[arg(value_name = "KEY")]
    pub key: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connection: Connection,
}

/// `dlock list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only names matching this Redis glob (*, ?, [abc]).
    #[arg(value_name = "PATTERN", default_value = "*")]
    pub pattern: String,
    /// Print one JSON object per lock, one per line.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connection: Connection,
}

/// `dlock release`.
#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// The lock's (or semaphore's) name.
    #[arg(value_name = "KEY")]
    pub key: String,
    /// Required: breaking a lock (or freeing a permit) lets another copy of the job start
    /// while the first may still run.
    #[arg(long)]
    pub force: bool,
    /// For a semaphore: free only the permits of the holder whose grant has this fencing
    /// token (as `dlock status KEY` shows it), not every holder's.
    #[arg(long, value_name = "FENCING_TOKEN", value_parser = clap::value_parser!(u64).range(1..))]
    pub holder: Option<u64>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connection: Connection,
}

/// `dlock bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Which workload to run.
    #[arg(long, value_enum, default_value = "all")]
    pub workload: Workload,
    /// How long each workload runs.
    #[arg(long, default_value = "5s", value_parser = positive_duration, value_name = "DUR")]
    pub duration: Duration,
    /// Contended workloads: run only with this many workers (default: 1, 2, 4, 8, 16, 32).
    /// semaphore: this many workers (default: 8).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024), value_name = "N")]
    pub workers: Option<u16>,
    /// semaphore: how many permits the workers share (at least 1).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    pub permits: u32,
    /// many-keys: how many tasks, each on its own key, share one client; many-waiters: on how
    /// many locks one client waits at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=4096), value_name = "N")]
    pub keys: u16,
    /// Print one JSON object per workload instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also draw contended grants/s and p99 wait against workers as an SVG file.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    #[command(flatten)]
    pub connection: Connection,
}

/// `dlock bench` workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Every workload below.
    All,
    /// One client, one key, lock + unlock back to back.
    Uncontended,
    /// N clients on one key, a critical section that only yields: grants/s, waits, fairness,
    /// violations.
    Contended,
    /// As contended, in fair (FIFO) mode.
    ContendedFair,
    /// As contended, with hand-off off: every release wakes every waiter and the fastest
    /// retry wins (barging), as most Redis locks wait.
    ContendedBarging,
    /// W clients (--workers, default 8) share one semaphore of --permits permits, a critical
    /// section that only yields: grants/s, waits, fairness, most holders at once, violations.
    Semaphore,
    /// N tasks on distinct keys sharing one client.
    ManyKeys,
    /// One client waits on N locks (--keys) that another holds, and gets them all handed over
    /// at once: grants/s and the wait from the releases to each grant.
    ManyWaiters,
    /// Uncontended cycles on N independent masters (needs --redis repeated, 3 or more).
    Redlock,
    /// What `dlock run KEY -- true` adds over running `true` directly (process start,
    /// connect, lock, unlock).
    RunOverhead,
    /// W clients (--workers, default 8) on one read-write lock, nine reads for each write:
    /// grants/s, waits, fairness, most readers at once, violations.
    ReadMostly,
    /// W clients (--workers, default 8), each taking two of four keys at once with a multi-key
    /// lock (the pairs overlap, named in both orders): grants/s, waits, fairness, violations.
    MultiKey,
}

impl Workload {
    /// The name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Workload::All => "all",
            Workload::Uncontended => "uncontended",
            Workload::Contended => "contended",
            Workload::ContendedFair => "contended-fair",
            Workload::ContendedBarging => "contended-barging",
            Workload::Semaphore => "semaphore",
            Workload::ManyKeys => "many-keys",
            Workload::ManyWaiters => "many-waiters",
            Workload::Redlock => "redlock",
            Workload::RunOverhead => "run-overhead",
            Workload::ReadMostly => "read-mostly",
            Workload::MultiKey => "multi-key",
        }
    }
}

/// The longest duration any flag takes. Far beyond any sensible wait, hold or timeout, yet far
/// from the range where `Instant + duration` overflows and panics (humantime happily parses
/// `300000000000y`): every deadline dlock computes from a flag stays representable.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// A duration like `30s`, `1m30s`, `500ms`, `2h` (humantime); zero is refused.
fn positive_duration(text: &str) -> Result<Duration, String> {
    let duration = bounded_duration(text, "")?;
    if duration.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(duration)
}

/// A duration of at most [`MAX_DURATION`]; `hint` completes the error for a bad one.
fn bounded_duration(text: &str, hint: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text.trim())
        .map_err(|e| format!("{e} (expected a duration such as 500ms, 30s, 5m or 1h30m{hint})"))?;
    if duration > MAX_DURATION {
        return Err(format!("too long: at most 365 days{hint}"));
    }
    Ok(duration)
}

/// --min-hold: a positive duration no longer than the longest lease, which is how long the
/// lock can be left to expire on its own.
fn min_hold(text: &str) -> Result<Duration, String> {
    let duration = positive_duration(text)?;
    if duration > dlock::MAX_TTL {
        return Err(format!(
            "too long: at most {}h (the longest lease)",
            dlock::MAX_TTL.as_secs() / 3600
        ));
    }
    Ok(duration)
}

fn parse_wait(text: &str) -> Result<WaitLimit, String> {
    if text.trim().eq_ignore_ascii_case("forever") {
        return Ok(WaitLimit::Forever);
    }
    bounded_duration(text, ", or 'forever'").map(WaitLimit::For)
}

fn parse_signal(text: &str) -> Result<Signal, String> {
    let text = text.trim();
    if let Ok(number) = text.parse::<i32>() {
        return Signal::try_from(number).map_err(|_| format!("no signal number {number}"));
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>().map_err(|_| {
        format!("unknown signal {text:?} (use TERM, INT, HUP, QUIT, KILL, USR1, USR2 or a number)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_parse_and_zero_is_refused() {
        assert_eq!(positive_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(positive_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(positive_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(positive_duration("0s").is_err());
        assert!(positive_duration("soon").is_err());
        assert!(positive_duration("-1s").is_err());
        assert_eq!(positive_duration("365d"), Ok(MAX_DURATION));
        let too_long = positive_duration("300000000000y").expect_err("absurd");
        assert!(too_long.contains("too long"), "{too_long}");
        assert!(positive_duration("366d").is_err());
    }

    #[test]
    fn min_hold_is_at_most_the_longest_lease() {
        assert_eq!(min_hold("24h"), Ok(dlock::MAX_TTL));
        assert!(min_hold("25h").expect_err("too long").contains("too long"));
        assert!(min_hold("0s").is_err());
    }

    #[test]
    fn waits_take_a_duration_or_forever() {
        assert_eq!(parse_wait("forever"), Ok(WaitLimit::Forever));
        assert_eq!(parse_wait("2s"), Ok(WaitLimit::For(Duration::from_secs(2))));
        assert!(parse_wait("later").is_err());
        assert!(parse_wait("300000000000y").is_err());
    }

    #[test]
    fn signals_parse_by_name_or_number() {
        assert_eq!(parse_signal("TERM"), Ok(Signal::SIGTERM));
        assert_eq!(parse_signal("sigint"), Ok(Signal::SIGINT));
        assert_eq!(parse_signal("9"), Ok(Signal::SIGKILL));
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("999").is_err());
    }

    #[test]
    fn limit_is_a_positive_count() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(
                ["dlock", "run"]
                    .iter()
                    .chain(args)
                    .chain(&["k", "--", "true"]),
            )
        };
        let Command::Run(run) = parse(&["--limit", "3"]).expect("valid").command else {
            panic!("run")
        };
        assert_eq!(run.limit, Some(3));
        for bad in [
            &["--limit", "0"][..],
            &["--limit", "-1"],
            &["--limit", "many"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn run_takes_key_then_command_after_double_dash() {
        let cli = Cli::try_parse_from([
            "dlock",
            "run",
            "--ttl",
            "5s",
            "main:hello",
            "--",
            "rake",
            "--trace",
            "main:hello",
        ])
        .expect("valid");
        let Command::Run(run) = cli.command else {
            panic!("run")
        };
        assert_eq!(run.key, "main:hello");
        assert_eq!(run.command, ["rake", "--trace", "main:hello"]);
        assert_eq!(run.ttl, Duration::from_secs(5));
        assert_eq!(run.wait, None);
        assert_eq!(run.conflict_exit_code, exit::BUSY);
        assert_eq!(run.stop_signal, Signal::SIGTERM);
        assert_eq!(run.limit, None);
        assert!(
            Cli::try_parse_from(["dlock", "run", "k"]).is_err(),
            "a command is required"
        );
    }
}
