//! dlock's integration tests: every test starts its own redis-server(s) through `dlock-test`.
//!
//! Table of contents:
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test, with its location
mod bad_input; // malformed URLs, TTLs, names; unreachable hosts; wrong passwords
mod blocking; // the blocking facade from plain synchronous code: locks, reentrant locks, semaphores, every connector
mod bounds; // guards and futures are Send, guards are 'static
mod cancel; // dropping lock() futures at any point leaves no lock and no task behind
mod cluster; // Redis Cluster: spread, companions by SCAN, one call per slot per tick, loss
mod cluster_replicas; // the replica guard on a Cluster: WAIT on each slot's master, per-slot loss, resharding
mod crash; // a vanished holder blocks others for at most one TTL
mod defaults; // the 30 s wait and 2 s command timeout, at their defaults (paused clock)
mod exclusion; // conflicts, waiting, holder info, status and forced release
mod fair; // FIFO grants; dead waiters leave the queue when their lease ends
mod fencing; // tokens strictly increase, across clients and across data loss
mod grant_script; // fencing tokens and grant times as TIME's digits: padding, counter, holder info, reply
mod handoff; // a release grants the lock to the queue's head: one round trip, dead heads, lost messages
mod handoff_local; // a hand-off between tasks of one client rides the release's reply: no pub/sub message, none lost
mod handoff_long_wait; // a waiter queued long before its turn takes its hand-off without a round trip
mod layout; // no import circles between modules, layers point down, small files and functions
mod lease_races; // renewals, extends, re-entries and releases of one lease: never counting on more than the servers keep
mod metrics; // the metrics facade: acquisitions, waits, holds, losses, renewals, the name label
mod multi; // multi-key locks: all or none, no deadlock between opposite orders, one slot or many
mod ownership; // non-owners never touch another owner's lock
mod partition; // a partitioned holder knows its lease is over before anyone else has it
mod redlock; // majorities, dead and frozen masters, validity, fencing, loss of a majority
mod redlock_degraded; // five masters, one dead and one frozen: every primitive Redlock offers
mod redlock_fencing; // proposed fencing tokens: one round trip, counters skewed by hand, retries
mod redlock_reentrant; // re-entries join a majority's grant; a minority's is lost; owners exclude with masters down
mod redlock_rwlock; // readers share a majority, writers exclude; a waiting writer keeps one queue place; reader tokens
mod reentrant; // nesting by explicit owner, freed at zero, one fencing token
mod release_lean; // the release script's lean path does what the general path does, case by case
mod replicated; // the replica guard (WAIT) across real Sentinel failovers, loss after a switch
mod restart; // a restart that loses a held lock is reported at once, and at release
mod riders; // waiters queued by the release of another task of their client: one script call per grant
mod rwlock; // many readers or one writer: no writer starvation, fair order, per-reader leases, fencing
mod rwlock_handoff; // a release that frees the lock hands it to the queued writer: one round trip, dead heads, lost messages
mod rwlock_reader_handoff; // a release that frees the lock hands the read side to every reader queued at the head
mod semaphore; // at most N permits out; expiry by the server's clock; limit; fair; deployments
mod semaphore_handoff; // a release hands freed permits to the heads that fit: one round trip, dead heads, lost messages
mod semaphore_scripts; // the semaphore's Lua scripts, called directly: limits, leases, queue
mod slot_move; // Redis Cluster resharding: waiters woken promptly when their lock's slot moves, mid-migration
mod support;
mod waiting; // wake-ups by pub/sub, bounded re-checks, bounded resources
mod watchdog; // renewal, loss detection, batching, no renewal after release
