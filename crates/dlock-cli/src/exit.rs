//! Exit codes: the one table, used by every command, `--help` and the README.
//!
//! They follow sysexits(3) where one fits (64 usage, 69 unavailable, 70 internal, 75 temporary
//! failure) and the conventions of `timeout(1)` and shells (124, 126, 127, 128+N), so cron,
//! systemd and scripts can tell "another copy is running" from "the job failed".

use dlock::ErrorKind;

/// The lock is held by another process (with `--limit`: every permit is taken), or `--wait`
/// ran out (override with `-E`).
pub const BUSY: u8 = 75;
/// The lease was lost while the command ran; the command was stopped. Also when the final
/// release finds the lease already gone, or cannot be confirmed (Redis did not answer): the
/// run may have overlapped another holder. Also when processes of the job survived SIGKILL and
/// the lock was released while they may still run.
pub const LOST: u8 = 76;
/// `--max-runtime` passed; the command was stopped.
pub const MAX_RUNTIME: u8 = 124;
/// The command exists but could not be executed (permissions, not a program).
pub const NOT_EXECUTABLE: u8 = 126;
/// The command was not found.
pub const NOT_FOUND: u8 = 127;
/// Bad usage: unknown flag, bad duration, URL or key name; also a `--limit` that disagrees
/// with the copies already running (another N, or none where they use one, or the reverse):
/// a configuration error, which no retry heals.
pub const USAGE: u8 = 64;
/// Redis unreachable, or it refused our credentials.
pub const UNAVAILABLE: u8 = 69;
/// Anything else that went wrong inside dlock.
pub const INTERNAL: u8 = 70;
/// dlock was interrupted by signal N while waiting for the lock: 128 + N.
pub const SIGNAL_BASE: u8 = 128;

/// The exit-code table as `--help` shows it.
pub const HELP: &str = "\
Exit codes:
  <n>   the command's own exit code
  128+N the command died of signal N (also: dlock interrupted by signal N while waiting)
  75    lock busy (with --limit: every permit taken), or --wait timed out
        (change with -E/--conflict-exit-code, e.g. -E 0 for cron)
  76    lease lost while the command ran (command stopped), or found lost or not confirmed
        at release, or processes of the job survived SIGKILL and the lock was released
        anyway: the run may have overlapped another holder
  124   --max-runtime reached (command stopped)
  126   command not executable
  127   command not found
  64    usage error (bad flag, duration, URL or key), or --limit differs from the running
        copies' (another N, or a lock where they use a semaphore, or the reverse)
  69    Redis unavailable or authentication failed
  70    internal error";

/// The exit code for a library error that ends a command.
pub fn for_error(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::Conflict | ErrorKind::Timeout => BUSY,
        ErrorKind::Lost => LOST,
        ErrorKind::Config => USAGE,
        ErrorKind::Unavailable | ErrorKind::Auth => UNAVAILABLE,
        _ => INTERNAL,
    }
}

/// The exit code for a child that ended with `status`: its code, or 128 + the signal.
pub fn for_status(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        // Exit codes are 0-255 on Unix; the cast keeps the low byte as the shell does.
        (Some(code), _) => code as u8,
        (None, Some(signal)) => SIGNAL_BASE.saturating_add(signal as u8),
        (None, None) => INTERNAL,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    use super::*;

    #[test]
    fn child_statuses_map_like_a_shell() {
        assert_eq!(for_status(ExitStatus::from_raw(0)), 0);
        assert_eq!(for_status(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(for_status(ExitStatus::from_raw(255 << 8)), 255);
        assert_eq!(for_status(ExitStatus::from_raw(9)), 137); // SIGKILL
        assert_eq!(for_status(ExitStatus::from_raw(15)), 143); // SIGTERM
    }

    #[test]
    fn error_kinds_map_to_the_table() {
        assert_eq!(for_error(ErrorKind::Conflict), BUSY);
        assert_eq!(for_error(ErrorKind::Timeout), BUSY);
        assert_eq!(for_error(ErrorKind::Config), USAGE);
        assert_eq!(for_error(ErrorKind::Unavailable), UNAVAILABLE);
        assert_eq!(for_error(ErrorKind::Auth), UNAVAILABLE);
        assert_eq!(for_error(ErrorKind::Internal), INTERNAL);
    }

    #[test]
    fn help_lists_every_code() {
        for code in [
            BUSY,
            LOST,
            MAX_RUNTIME,
            NOT_EXECUTABLE,
            NOT_FOUND,
            USAGE,
            UNAVAILABLE,
            INTERNAL,
        ] {
            assert!(
                HELP.contains(&format!("  {code} ")),
                "{code} missing from the help table"
            );
        }
    }
}
