//! Signals dlock catches so it can forward them to the command, or stop cleanly while waiting.

use std::io;

use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, SignalKind};

/// The signals dlock receives and forwards: TERM, INT, HUP, QUIT, USR1, USR2; and TSTP and
/// CONT, so Ctrl-Z pauses the command while dlock stays awake to renew the lease (a stopped
/// dlock would let the lease expire under a command that runs on).
#[derive(Debug)]
pub struct Signals {
    streams: Vec<(Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    /// Installs the handlers. From here on these signals no longer kill dlock by default;
    /// dlock decides what they mean. A terminal signal dlock was started ignoring (HUP under
    /// `nohup`, INT and QUIT for a job a shell started with `&`) stays ignored, as it would for
    /// any program, and so it is for the command too (an ignored signal stays ignored across
    /// `exec`): `nohup dlock run …` survives the hang-up.
    pub fn install() -> io::Result<Signals> {
        let ignored = ignored_at_start();
        let kinds = [
            (Signal::SIGTERM, SignalKind::terminate()),
            (Signal::SIGINT, SignalKind::interrupt()),
            (Signal::SIGHUP, SignalKind::hangup()),
            (Signal::SIGQUIT, SignalKind::quit()),
            (Signal::SIGUSR1, SignalKind::user_defined1()),
            (Signal::SIGUSR2, SignalKind::user_defined2()),
            (
                Signal::SIGTSTP,
                SignalKind::from_raw(Signal::SIGTSTP as i32),
            ),
            (
                Signal::SIGCONT,
                SignalKind::from_raw(Signal::SIGCONT as i32),
            ),
        ];
        let streams = kinds
            .into_iter()
            .filter(|(name, _)| !(is_terminal(*name) && ignored.contains(name)))
            .map(|(name, kind)| Ok((name, signal(kind)?)))
            .collect::<io::Result<_>>()?;
        Ok(Signals { streams })
    }

    /// The next signal received.
    ///
    /// # Cancel safety
    /// Cancel safe: a signal that arrives while no one is waiting is kept for the next call.
    pub async fn recv(&mut self) -> Signal {
        let ready = std::future::poll_fn(|cx| {
            for (name, stream) in &mut self.streams {
                if stream.poll_recv(cx).is_ready() {
                    return std::task::Poll::Ready(*name);
                }
            }
            std::task::Poll::Pending
        });
        ready.await
    }

    /// The next signal that asks dlock to end (TERM, INT, HUP, QUIT), for when no command
    /// runs: others are ignored, except TSTP, which stops dlock as it would have by default.
    pub async fn recv_terminating(&mut self) -> Signal {
        loop {
            let signal = self.recv().await;
            if is_terminating(signal) {
                return signal;
            }
            if signal == Signal::SIGTSTP {
                // No lease to keep alive here (or a wait the user wants paused).
                let _ = nix::sys::signal::raise(Signal::SIGSTOP);
            }
        }
    }
}

/// Whether `signal` asks its receiver to end (rather than, say, reopen logs).
pub fn is_terminating(signal: Signal) -> bool {
    matches!(
        signal,
        Signal::SIGTERM | Signal::SIGINT | Signal::SIGHUP | Signal::SIGQUIT
    )
}

/// The signals a shell or `nohup` hands down as ignored, which dlock then leaves ignored.
fn is_terminal(signal: Signal) -> bool {
    matches!(signal, Signal::SIGHUP | Signal::SIGINT | Signal::SIGQUIT)
}

/// The signals this process was started ignoring, from the `SigIgn` mask in
/// `/proc/self/status` (reading the disposition with `sigaction` would need unsafe code).
/// Empty where that file does not exist.
fn ignored_at_start() -> Vec<Signal> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let mask = status
        .lines()
        .find_map(|line| line.strip_prefix("SigIgn:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    Signal::iterator()
        .filter(|&signal| {
            let bit = signal as i32 - 1;
            (0..64).contains(&bit) && mask & (1 << bit) != 0
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ignored_mask_is_read() {
        // Rust ignores SIGPIPE in every program it starts.
        assert!(ignored_at_start().contains(&Signal::SIGPIPE));
        assert!(!ignored_at_start().contains(&Signal::SIGTERM));
    }
}
