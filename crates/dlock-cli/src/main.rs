//! The `dlock` command: run any command under a distributed lock on Redis.
//!
//! Layout: `cli` (arguments), `exit` (the exit-code table), `run` (the `run` command),
//! `lease` (what `run` holds: a lock, or a semaphore's permit with `--limit`),
//! `job` (the supervised command, its process group and its descendants; `job::guardian`, the
//! process that starts the command and kills every process of the job if dlock is SIGKILLed;
//! `job::launch`, which starts it while dlock takes the lock; `job::proc`, the job as /proc
//! shows it), `signals`, `inspect` (`status`, `list`, `release`), `report` (JSON output),
//! `bench` (`dlock bench`), `manual` (`completions`, `man`: generated from `cli`),
//! `metrics_file` (`run --metrics-file`, the Prometheus text format).

/// Every message dlock prints goes through these: a closed or broken stdout/stderr (EPIPE;
/// Rust ignores SIGPIPE, so writes fail instead of killing dlock) must never panic dlock the
/// way `println!` would, because it still has a command to stop and a lock to release.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

/// [`out!`] with a newline.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// A line on stderr, ignoring write errors (see [`out!`]).
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod bench;
mod cli;
mod exit;
mod inspect;
mod job;
mod lease;
mod manual;
mod metrics_file;
mod report;
mod run;
mod signals;

use std::process::ExitCode;

use clap::error::ErrorKind as ClapErrorKind;
use clap::Parser;
use dlock::{Client, ClientOptions, SentinelConfig};

use crate::cli::{Cli, Command, Connection};

fn main() -> ExitCode {
    // The guardian (internal to `dlock run`) is not a clap command: it starts on every run, so
    // it skips building the parser, and no completion or man page can offer it.
    if let Some(code) = job::guard_from_args(std::env::args_os()) {
        return ExitCode::from(code);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(match e.kind() {
                ClapErrorKind::DisplayHelp | ClapErrorKind::DisplayVersion => 0,
                _ => exit::USAGE,
            });
        }
    };
    match &cli.command {
        Command::Completions(args) => return ExitCode::from(manual::completions(args.shell)),
        Command::Man(args) => return ExitCode::from(manual::man(args.command.as_deref())),
        _ => {}
    }
    block_terminal_stop();
    init_logging(cli.verbose);
    // One thread is plenty for one lock and one child, and starts fastest.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            errln!("dlock: cannot start the async runtime: {e}");
            return ExitCode::from(exit::INTERNAL);
        }
    };
    let code = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run::run(args).await,
            Command::Status(args) => inspect::status(args).await,
            Command::List(args) => inspect::list(args).await,
            Command::Release(args) => inspect::release(args).await,
            Command::Bench(args) => bench::bench(args).await,
            Command::Completions(_) | Command::Man(_) => exit::INTERNAL,
        }
    });
    ExitCode::from(code)
}

/// Connects to the Redis of `connection`: a Sentinel-monitored master, a Cluster, one URL, or
/// Redlock over several.
async fn connect(connection: &Connection) -> dlock::Result<Client> {
    let mut options = client_options(connection);
    if let Some(path) = &connection.tls_ca {
        let pem = std::fs::read(path).map_err(|e| {
            dlock::Error::Config(format!("cannot read --tls-ca {}: {e}", path.display()))
        })?;
        options = options.tls_root_cert_pem(pem);
    }
    if let Some(master) = &connection.sentinel_master {
        let mut config = SentinelConfig::new(master, &connection.sentinel);
        if let Some(password) = &connection.sentinel_master_password {
            config = config.password(password);
        }
        return Client::sentinel_with(config, options).await;
    }
    if connection.cluster {
        return Client::cluster_with(&connection.redis, options).await;
    }
    match connection.redis.as_slice() {
        [url] => Client::connect_with(url, options).await,
        urls => Client::redlock_with(urls, options).await,
    }
}

fn client_options(connection: &Connection) -> ClientOptions {
    ClientOptions::new()
        .command_timeout(connection.redis_timeout)
        .connect_timeout(connection.redis_timeout)
}

/// Prints a library error for people and returns its exit code. Messages never contain a
/// password (the library redacts URLs).
fn fail(error: &dlock::Error) -> u8 {
    errln!("dlock: {error}");
    exit::for_error(error.kind())
}

/// A background dlock that writes to a terminal set to `stty tostop` would be stopped by
/// `SIGTTOU` (its default action), and a stopped dlock renews nothing while its command runs on:
/// the job would outlive its lease. With the signal blocked, the kernel lets the write through
/// instead. Blocked, not ignored: the command starts with an empty signal mask (its guardian
/// spawns it from a thread that blocks nothing; std passes the spawning thread's mask on), so it
/// still gets the terminal's usual job control, whereas an ignored disposition would be
/// inherited. Done before any thread exists, so every thread inherits it.
fn block_terminal_stop() {
    let mut stop = nix::sys::signal::SigSet::empty();
    stop.add(nix::sys::signal::Signal::SIGTTOU);
    if let Err(e) = stop.thread_block() {
        tracing::debug!(%e, "cannot block SIGTTOU");
    }
}

/// Whether logs are coloured: only on a terminal, and not when `NO_COLOR` is set to anything
/// but the empty string (no-color.org), so files, pipes and journald get plain text.
fn colors(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|value| value.is_empty())
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => return,
        1 => tracing::Level::INFO,
        _ => tracing::Level::DEBUG,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(colors(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR"),
        ))
        .with_writer(std::io::stderr)
        // A failed write would otherwise be reported with eprintln!, which panics on EPIPE.
        .log_internal_errors(false)
        .with_target(false)
        .init();
}

#[cfg(test)]
mod tests {
    #[test]
    fn logs_are_coloured_only_on_a_terminal_without_no_color() {
        use super::colors;
        assert!(colors(true, None));
        assert!(colors(true, Some("".into())), "an empty NO_COLOR is unset");
        assert!(!colors(true, Some("1".into())));
        assert!(!colors(false, None), "a pipe or file gets plain text");
    }
}
