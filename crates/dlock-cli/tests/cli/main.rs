//! Tests of the real `dlock` binary against real redis-servers started by `dlock-test`.
//!
//! Table of contents:
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test, with its location
mod bench; // dlock bench end to end, JSON checked
mod deployments; // --redis repeated (Redlock), --sentinel, --cluster: run, status, list, bench
mod exclusion; // one copy runs, the other is refused; -E, --quiet, --wait, --min-hold
mod exit_codes; // the child's code, 128+N, 126, 127, 64, 69, 124
mod inspect; // status, list, release --force, --report json, passwords never shown
mod loss; // renewal past --ttl; key deleted, Redis frozen or restarted: child stopped, or lost at release: exit 76
mod multi; // --and: every key or none, tokens of each, opposite orders all run
mod prompt_exit; // issue 9: no lingering after a timed-out or interrupted wait, even with a master down
mod semaphore; // --limit N: N copies at once, the N+1-th refused or waiting; loss, crash, mismatch; status, list, release
mod shared; // --shared: shared copies together, exclusive alone, no starvation of a waiting exclusive copy
mod signals; // forwarding, release after the child exits, Ctrl-C while waiting, process groups
mod support;
