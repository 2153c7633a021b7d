//! What every blocking guard does with its lease, written once.

/// The lease methods every blocking guard has, forwarded to its async guard (`self.guard()`,
/// `self.inner`, `self.shared`), with their docs written once. `$async` names the async guard
/// in the docs, `$what` what it holds.
macro_rules! blocking_lease_methods {
    ($async:literal, $what:literal) => {
        #[doc = concat!("The ", $what, "'s name, as [`", $async, "::name`].")]
        pub fn name(&self) -> &str {
            self.guard().name()
        }

        #[doc = concat!("This grant's fencing token, as [`", $async, "::fencing_token`].")]
        pub fn fencing_token(&self) -> u64 {
            self.guard().fencing_token()
        }

        #[doc = concat!("Whether the lease is still held, as [`", $async, "::is_held`].")]
        pub fn is_held(&self) -> bool {
            self.guard().is_held()
        }

        #[doc = concat!("Where the lease stands, as [`", $async, "::status`].")]
        pub fn status(&self) -> $crate::LeaseStatus {
            self.guard().status()
        }

        #[doc = concat!(
                    "How much longer the lease is surely valid by this process's clock (zero once \
             lost), as [`", $async, "::remaining`]."
                )]
        pub fn remaining(&self) -> std::time::Duration {
            self.guard().remaining()
        }

        #[doc = concat!("The current lease length, as [`", $async, "::ttl`].")]
        pub fn ttl(&self) -> std::time::Duration {
            self.guard().ttl()
        }

        #[doc = concat!("A channel that flips when the lease is lost, as [`", $async, "::watch`].")]
        ///
        /// Synchronous code can read it without a runtime:
        /// [`borrow`](tokio::sync::watch::Receiver::borrow) gives the current
        /// [`LeaseStatus`](crate::LeaseStatus) and
        /// [`has_changed`](tokio::sync::watch::Receiver::has_changed) says whether it moved
        /// since last seen. To *wait* for a change from synchronous code, use `lost_timeout`.
        ///
        /// ```
        /// # fn main() -> Result<(), dlock::Error> {
        /// # let server = dlock_test::RedisServer::start();
        /// # let client = dlock::blocking::Client::connect(&server.url())?;
        /// let guard = client.lock("import")?.try_lock()?;
        /// let status = guard.watch();
        /// assert_eq!(*status.borrow(), dlock::LeaseStatus::Held);
        /// guard.release()
        /// # }
        /// ```
        pub fn watch(&self) -> tokio::sync::watch::Receiver<$crate::LeaseStatus> {
            self.guard().watch()
        }

        #[doc = concat!(
                    "Blocks the calling thread until the lease is lost, and returns why, as [`",
                    $async, "::lost`]."
                )]
        ///
        /// **While the lease is held it never returns**: a renewed lease can be held for as long
        /// as the guard lives, so this blocks forever unless something takes the lease away. It
        /// suits only a thread whose sole job is to react to a loss; elsewhere use
        /// `lost_timeout`, which waits at most a given time.
        ///
        /// # Errors
        /// [`Error::Config`](crate::Error::Config) inside an async runtime.
        pub fn lost(&self) -> $crate::Result<$crate::LossReason> {
            self.shared.block_on(self.guard().lost())
        }

        /// Waits up to `timeout` for the lease to be lost: `Some(reason)` as soon as it is (at
        /// once if it already was), `None` if it was still held when `timeout` passed. A zero
        /// `timeout` checks without waiting.
        ///
        #[doc = concat!("The blocking counterpart of `select!`-ing on [`", $async, "::lost`]:")]
        /// do a slice of work, or wait for a worker, between checks.
        ///
        /// ```
        /// use std::time::Duration;
        /// # fn main() -> Result<(), dlock::Error> {
        /// # let server = dlock_test::RedisServer::start();
        /// # let client = dlock::blocking::Client::connect(&server.url())?;
        /// let guard = client.lock("import")?.try_lock()?;
        /// let worker = std::thread::spawn(|| { /* the job */ });
        /// // Wait for the job, checking every 100 ms that the lease is still ours.
        /// while !worker.is_finished() {
        ///     if let Some(reason) = guard.lost_timeout(Duration::from_millis(100))? {
        ///         eprintln!("lease lost ({reason}): the job must stop");
        ///         return Ok(());
        ///     }
        /// }
        /// guard.release()
        /// # }
        /// ```
        ///
        /// # Errors
        /// [`Error::Config`](crate::Error::Config) inside an async runtime.
        pub fn lost_timeout(
            &self,
            timeout: std::time::Duration,
        ) -> $crate::Result<Option<$crate::LossReason>> {
            self.shared.block_on_within(timeout, self.guard().lost())
        }

        #[doc = concat!(
                    "Waits up to `timeout` for the moment to wind down, as [`", $async,
                    "::renewal_at_risk`]:"
                )]
        /// `true` once renewals are failing and at most `margin` of the lease's conservative
        /// validity is left, or once the lease is no longer held; `false` if neither happened
        /// within `timeout` (renewals succeeding never count).
        ///
        /// # Errors
        /// [`Error::Config`](crate::Error::Config) inside an async runtime.
        pub fn renewal_at_risk_timeout(
            &self,
            margin: std::time::Duration,
            timeout: std::time::Duration,
        ) -> $crate::Result<bool> {
            let at_risk = self.guard().renewal_at_risk(margin);
            Ok(self.shared.block_on_within(timeout, at_risk)?.is_some())
        }

        #[doc = concat!("Sets the lease to `ttl` from now, as [`", $async, "::extend`].")]
        ///
        /// # Errors
        #[doc = concat!("As [`", $async, "::extend`].")]
        pub fn extend(&self, ttl: std::time::Duration) -> $crate::Result<()> {
            self.shared.block_on(self.guard().extend(ttl))?
        }

        #[doc = concat!("Releases the hold, as [`", $async, "::release`].")]
        ///
        /// # Errors
        #[doc = concat!("As [`", $async, "::release`].")]
        pub fn release(mut self) -> $crate::Result<()> {
            let guard = self
                .inner
                .take()
                .unwrap_or_else(|| unreachable!("release consumes the guard"));
            self.shared.block_on(guard.release())?
        }
    };
}
pub(super) use blocking_lease_methods;
