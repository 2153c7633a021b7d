//! Fencing tokens: a number per grant that storage can use to reject a stale holder.
//!
//! # Guarantee
//! For one lock name on one Redis, every grant's token is strictly larger than every earlier
//! grant's. The acquire script computes `max(last + 1, server time in µs)` (`TIME` inside the
//! script), so tokens keep increasing even after a restart that lost the counter, or after the
//! counter expired ([`FENCE_RETENTION`](crate::FENCE_RETENTION)) — as long as the server's
//! clock does not step back by more than the time since the last grant.
//!
//! # Why it matters
//! A lease can end while its holder still runs (a long pause, a partition, a failover that
//! lost the key). The holder then believes it holds the lock while another does: no lock
//! service can prevent that alone. Storage that remembers the largest token it has accepted
//! and refuses smaller ones turns that overlap into a rejected write (Kleppmann, "How to do
//! distributed locking"). Send [`LockGuard::fencing_token`](crate::LockGuard::fencing_token)
//! with every write the lock protects.
//!
//! # Limits
//! Tokens are about 1.7·10¹⁵ today (microseconds since 1970), so they fit a `u64`, an `i64`
//! and a double exactly. They are not dense: do not count grants with them.
