//! `dlock run --metrics-file PATH`: the run's outcome in the Prometheus text format, for
//! node_exporter's textfile collector (the usual way to watch cron jobs).
//!
//! # Guarantee
//! The file is replaced whole: written to a temporary file in the same directory, flushed to
//! disk, then renamed over PATH, so a scrape reads the previous run's file or this one's, never
//! half of one. `dlock_run_last_success_timestamp_seconds` survives failed runs: it is carried
//! over from the file being replaced (a run succeeds when the command ran and dlock exits 0).
//! Written by hand (a dozen lines of a documented format); no crate is needed for it.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use crate::report::RunReport;

/// Every outcome a run can have (see [`RunReport::outcome`]): each gets a 0/1 line, so a
/// query can select any of them.
const OUTCOMES: [&str; 12] = [
    "ran",
    "busy",
    "timeout",
    "lost",
    "unconfirmed",
    "max_runtime",
    "survived_kill",
    "not_found",
    "not_executable",
    "interrupted",
    "mismatch",
    "error",
];

const SUCCESS: &str = "dlock_run_last_success_timestamp_seconds";

/// [`write`] in a thread of its own, given at most `limit`; says why on stderr if it fails or
/// takes longer (the thread is then left behind: dlock is exiting).
pub fn write_within(path: &Path, report: &RunReport, limit: std::time::Duration) {
    let (done, outcome) = std::sync::mpsc::channel();
    let (owned_path, owned_report) = (path.to_owned(), report.clone());
    let spawned = std::thread::Builder::new()
        .name("metrics-file".into())
        .spawn(move || {
            let _ = done.send(write(&owned_path, &owned_report));
        });
    let outcome = match spawned {
        Ok(_) => outcome.recv_timeout(limit).ok(),
        Err(e) => Some(Err(e)),
    };
    match outcome {
        Some(Ok(())) => {}
        Some(Err(e)) => errln!(
            "dlock: cannot write the metrics file {}: {e}",
            path.display()
        ),
        None => errln!(
            "dlock: writing the metrics file {} took over {}; gave up",
            path.display(),
            humantime::format_duration(limit)
        ),
    }
}

/// Replaces `path` with `report`'s metrics, keeping the last success time of the file there.
pub fn write(path: &Path, report: &RunReport) -> std::io::Result<()> {
    // Only a regular file is read: opening a FIFO put there would block dlock's exit.
    let previous_success = std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file())
        .then(|| std::fs::read_to_string(path).ok())
        .flatten()
        .and_then(|text| last_success(&text, &report.key));
    let text = render(report, previous_success);
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut temp = tempfile::Builder::new()
        .prefix(".dlock-metrics-")
        .tempfile_in(dir)?;
    temp.write_all(text.as_bytes())?;
    temp.as_file().sync_all()?;
    // The collector reads files as node_exporter's user: the usual 0644, not tempfile's 0600.
    std::fs::set_permissions(
        temp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )?;
    temp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// The metrics text for `report`; `previous_success` is the last success time (seconds) to
/// keep when this run did not succeed.
fn render(report: &RunReport, previous_success: Option<f64>) -> String {
    let key = format!("key=\"{}\"", escape(&report.key));
    let seconds = |ms: u64| ms as f64 / 1000.0;
    let end_ms = report.started_at_ms + report.total_ms;
    let succeeded = report.outcome == "ran" && report.dlock_exit_code == 0;
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: f64| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        let _ = writeln!(out, "{name}{{{key}}} {value}");
    };
    gauge(
        "dlock_run_last_start_timestamp_seconds",
        "When the last dlock run started (Unix time).",
        seconds(report.started_at_ms),
    );
    gauge(
        "dlock_run_last_end_timestamp_seconds",
        "When the last dlock run ended (Unix time).",
        seconds(end_ms),
    );
    gauge(
        "dlock_run_last_duration_seconds",
        "How long the last dlock run took, waiting included.",
        seconds(report.total_ms),
    );
    gauge(
        "dlock_run_last_wait_seconds",
        "How long the last run waited for the lock (granted or not).",
        seconds(report.waited_ms),
    );
    gauge(
        "dlock_run_last_exit_code",
        "dlock's exit code in the last run (the command's, when it ran).",
        f64::from(report.dlock_exit_code),
    );
    if let Some(fence) = report.fencing_token {
        gauge(
            "dlock_run_last_fencing_token",
            "The fencing token of the last run's grant.",
            fence as f64,
        );
    }
    let success = if succeeded {
        Some(seconds(end_ms))
    } else {
        previous_success
    };
    if let Some(at) = success {
        gauge(
            SUCCESS,
            "When a run last succeeded: the command ran and dlock exited 0 (Unix time).",
            at,
        );
    }
    let name = "dlock_run_last_outcome";
    let _ = writeln!(
        out,
        "# HELP {name} The last run's outcome: 1 for the one it had, 0 for the others."
    );
    let _ = writeln!(out, "# TYPE {name} gauge");
    for outcome in OUTCOMES {
        let value = u8::from(outcome == report.outcome);
        let _ = writeln!(out, "{name}{{{key},outcome=\"{outcome}\"}} {value}");
    }
    out
}

/// The success time in a previous file for the same key, if it has one.
fn last_success(text: &str, key: &str) -> Option<f64> {
    let prefix = format!("{SUCCESS}{{key=\"{}\"}} ", escape(key));
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|value| value.trim().parse().ok())
        .filter(|value: &f64| value.is_finite())
}

/// A label value as the text format wants it: backslash, double quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(outcome: &'static str, code: u8) -> RunReport {
        RunReport {
            key: "main:\"hello\"\\x".into(),
            outcome,
            started_at_ms: 1_800_000_000_000,
            total_ms: 2_500,
            waited_ms: 40,
            dlock_exit_code: code,
            fencing_token: (outcome == "ran").then_some(1_796_000_000_000_001),
            ..RunReport::default()
        }
    }

    /// The value of the line that starts with `series` (name and labels).
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| v.parse().expect("a number"))
    }

    #[test]
    fn a_successful_run_sets_every_gauge_and_its_outcome() {
        let text = render(&report("ran", 0), None);
        let key = r#"{key="main:\"hello\"\\x"}"#;
        let at = |name: &str| value(&text, &format!("{name}{key}"));
        assert_eq!(at("dlock_run_last_start_timestamp_seconds"), Some(1.8e9));
        assert_eq!(
            at("dlock_run_last_end_timestamp_seconds"),
            Some(1.8e9 + 2.5)
        );
        assert_eq!(at("dlock_run_last_duration_seconds"), Some(2.5));
        assert_eq!(at("dlock_run_last_wait_seconds"), Some(0.04));
        assert_eq!(at("dlock_run_last_exit_code"), Some(0.0));
        assert_eq!(at(SUCCESS), Some(1.8e9 + 2.5));
        assert!(at("dlock_run_last_fencing_token").is_some());
        let outcome = |o: &str| {
            value(
                &text,
                &format!(r#"dlock_run_last_outcome{{key="main:\"hello\"\\x",outcome="{o}"}}"#),
            )
        };
        assert_eq!(outcome("ran"), Some(1.0));
        assert_eq!(outcome("busy"), Some(0.0));
        // Every sample line is `name{labels} value`, after its HELP and TYPE.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, number) = line.rsplit_once(' ').expect("name and value");
            assert!(
                series.starts_with("dlock_run_") && series.ends_with('}'),
                "{line}"
            );
            number.parse::<f64>().expect("a number");
        }
    }

    #[test]
    fn a_failed_run_keeps_the_last_success_and_names_its_outcome() {
        let first = render(&report("ran", 0), None);
        let key = "main:\"hello\"\\x";
        let kept = last_success(&first, key);
        assert_eq!(kept, Some(1.8e9 + 2.5));
        let busy = render(&report("busy", 75), kept);
        assert_eq!(last_success(&busy, key), kept);
        assert!(busy.contains("outcome=\"busy\"} 1"));
        assert!(!busy.contains("dlock_run_last_fencing_token"));
        // The command ran but failed: not a success either.
        let failed = render(&report("ran", 1), None);
        assert_eq!(last_success(&failed, key), None);
        assert_eq!(last_success(&first, "another-key"), None);
    }
}
