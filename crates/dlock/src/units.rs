//! Durations in the two forms dlock prints and sends: text for people, whole milliseconds for
//! Redis.

use std::time::Duration;

/// Durations for people: whole milliseconds, so `1.5s` rather than `1.500321987s`.
pub(crate) fn humanize(duration: Duration) -> String {
    let ms = Duration::from_millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
    humantime_like(ms)
}

fn humantime_like(duration: Duration) -> String {
    let ms = duration.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", duration.as_secs_f64())
    } else {
        let secs = duration.as_secs();
        format!("{}m{:02}s", secs / 60, secs % 60)
    }
}

/// Whole milliseconds for `PX`/`PEXPIRE`, never 0 (which Redis rejects).
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(humanize(Duration::from_micros(1500)), "1ms");
        assert_eq!(humanize(Duration::from_millis(1500)), "1.5s");
        assert_eq!(humanize(Duration::from_secs(125)), "2m05s");
    }

    #[test]
    fn millis_are_never_zero() {
        assert_eq!(millis(Duration::ZERO), 1);
        assert_eq!(millis(Duration::from_micros(2500)), 2);
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }
}
