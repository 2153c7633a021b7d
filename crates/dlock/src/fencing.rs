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

use crate::client::Client;
use crate::error::Result;
use crate::key::LockKeys;
use crate::scripts;

impl Client {
    /// Writes `value` to the hash `resource` (fields `value` and `fence`) only if `token` is at
    /// least the largest fencing token written there before: the storage-side half of fencing,
    /// for resources that live in Redis. Returns `false` when the write was refused because a
    /// newer holder has written since; the caller's lease is stale and it must stop.
    ///
    /// The resource may live on another Redis than the lock: connect a client to it.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) for an invalid key name; connection errors.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), dlock::Error> {
    /// # let (lock_server, storage_server) =
    /// #     (dlock_test::RedisServer::start(), dlock_test::RedisServer::start());
    /// let (locks_url, storage_url) = ("redis://locks.internal/", "redis://storage.internal/");
    /// # let (locks_url, storage_url) = (&lock_server.url(), &storage_server.url());
    /// let locks = dlock::Client::connect(locks_url).await?;
    /// let storage = dlock::Client::connect(storage_url).await?;
    /// let guard = locks.lock("report")?.lock().await?;
    /// if !storage.fenced_set("report:latest", guard.fencing_token(), "v42").await? {
    ///     eprintln!("a newer holder wrote first: our lease is stale, stopping");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn fenced_set(&self, resource: &str, token: u64, value: &str) -> Result<bool> {
        // Same name rules as a lock key: not empty, bounded.
        LockKeys::new(resource)?;
        self.single_node_only("fenced writes")?;
        let mut call = scripts::FENCED_SET.prepare_invoke();
        call.key(resource).arg(token).arg(value);
        let node = self.node();
        let written: i64 = node.eval(&call, node.command_timeout()).await?;
        Ok(written == 1)
    }
}
