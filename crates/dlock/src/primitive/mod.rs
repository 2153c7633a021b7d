//! The primitives: each is one module plus its scripts, over the acquisition engine.
//!
//! A primitive supplies what only it knows: its acquire script and how to read its answers
//! ([`Acquire`](crate::engine::acquire::Acquire)), how its leases are renewed, checked and
//! released ([`LeaseOps`](crate::engine::ops::LeaseOps),
//! [`ReleaseOp`](crate::engine::ops::ReleaseOp)), and its guard, which embeds a
//! [`LeaseHandle`](crate::engine::handle::LeaseHandle). Waiting, fairness, in-doubt cleanup,
//! Redlock majorities and fencing, renewal and loss reporting come from the engine.
//! `docs/architecture.md` walks through adding one, with the semaphore as the example.

pub(crate) mod lock;
pub(crate) mod multi;
pub(crate) mod reentrant;
pub(crate) mod rwlock;
pub(crate) mod semaphore;
