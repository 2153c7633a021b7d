//! Wake-ups for waiters: a release publishes on the lock's channel, and every waiter of that
//! lock retries at once instead of polling.
//!
//! # Design
//! Each client opens at most one extra connection for this, a pub/sub connection, and only
//! when a lock is first waited for. Waiters of the same lock share one channel subscription
//! (reference-counted; the last one to leave unsubscribes), so the number of subscriptions is
//! bounded by the number of distinct locks being waited for, never by the number of waiters.
//! Pub/sub was chosen over blocking lists because it needs no connection per waiter.
//!
//! # Guarantees and limits
//! - A waiter subscribes *before* its second acquisition attempt, so a release after that
//!   attempt is never missed while the connection is up.
//! - Pub/sub is at-most-once: when the connection drops (a network fault, `CLIENT KILL`, a
//!   server restart), every waiter is woken to re-check as soon as it is back, and while it is
//!   down they fall back to timed re-checks.
//! - Releases that publish nothing (a lease that expired, a key deleted by another tool) are
//!   caught by each waiter's timed re-check ([`LockOptions::recheck`](crate::LockOptions::recheck)),
//!   which never waits past the holder's remaining TTL.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};

/// Pause between attempts to (re)open the pub/sub connection.
const RECONNECT_DELAY: Duration = Duration::from_millis(200);

/// The client's pub/sub side: shared registry plus a task that owns the connection.
#[derive(Debug, Clone)]
pub(crate) struct Notifier {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    channels: Mutex<HashMap<String, Channel>>,
    commands: mpsc::UnboundedSender<Command>,
}

#[derive(Debug)]
struct Channel {
    waiters: usize,
    /// Bumped on every wake-up.
    wake: watch::Sender<u64>,
    /// `None` until Redis answered the SUBSCRIBE; then whether it is in effect.
    ready: watch::Sender<Option<bool>>,
}

#[derive(Debug)]
enum Command {
    Subscribe(String),
    Unsubscribe(String),
    Flush(oneshot::Sender<()>),
}

impl Notifier {
    /// Starts the listener task (it connects lazily, on the first subscription).
    pub fn spawn(client: redis::Client, timeout: Duration) -> Notifier {
        let (commands, queue) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            channels: Mutex::new(HashMap::new()),
            commands,
        });
        let listener = Listener {
            client,
            timeout,
            shared: Arc::downgrade(&shared),
            queue,
        };
        tokio::spawn(listener.run());
        Notifier { shared }
    }

    /// Subscribes to `channel` and returns once the subscription is confirmed by Redis (or
    /// could not be made: the subscription then only wakes on reconnects, and the waiter's
    /// timed re-checks carry it).
    ///
    /// # Cancel safety
    /// Dropping the future drops the subscription handle with it: nothing leaks.
    pub async fn subscribe(&self, channel: &str) -> Subscription {
        let (first, wake, mut ready) = {
            let mut channels = self.channels();
            let entry = channels
                .entry(channel.to_owned())
                .or_insert_with(|| Channel {
                    waiters: 0,
                    wake: watch::channel(0).0,
                    ready: watch::channel(None).0,
                });
            entry.waiters += 1;
            (
                entry.waiters == 1,
                entry.wake.subscribe(),
                entry.ready.subscribe(),
            )
        };
        let mut subscription = Subscription {
            channel: channel.to_owned(),
            wake,
            shared: self.shared.clone(),
            confirmed: false,
        };
        if first
            && self
                .shared
                .commands
                .send(Command::Subscribe(channel.to_owned()))
                .is_err()
        {
            return subscription;
        }
        // Every waiter, not only the first, waits until the subscription is in effect.
        subscription.confirmed = matches!(
            ready.wait_for(Option::is_some).await.map(|v| *v),
            Ok(Some(true))
        );
        subscription
    }

    /// Waits until every subscription change queued so far has reached Redis.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.shared.commands.send(Command::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }

    fn channels(&self) -> std::sync::MutexGuard<'_, HashMap<String, Channel>> {
        self.shared
            .channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// One waiter's interest in one lock's channel.
#[derive(Debug)]
pub(crate) struct Subscription {
    channel: String,
    wake: watch::Receiver<u64>,
    shared: Arc<Shared>,
    confirmed: bool,
}

impl Subscription {
    /// Whether Redis confirmed the subscription (else only re-checks wake the waiter).
    pub fn is_confirmed(&self) -> bool {
        self.confirmed
    }

    /// Marks every wake-up so far as seen: call it right before an acquisition attempt.
    pub fn mark_seen(&mut self) {
        self.wake.borrow_and_update();
    }

    /// Resolves at the next wake-up after the last [`Subscription::mark_seen`].
    ///
    /// # Cancel safety
    /// Cancel safe: a wake-up that arrives meanwhile is kept until seen.
    pub async fn woken(&mut self) {
        if self.wake.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut channels = self
            .shared
            .channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = channels.get_mut(&self.channel) {
            entry.waiters -= 1;
            if entry.waiters == 0 {
                channels.remove(&self.channel);
                // Under the registry lock, so a new first subscriber's Subscribe is queued
                // after this Unsubscribe and wins.
                let _ = self
                    .shared
                    .commands
                    .send(Command::Unsubscribe(self.channel.clone()));
            }
        }
    }
}

/// The task that owns the pub/sub connection.
struct Listener {
    client: redis::Client,
    timeout: Duration,
    /// Weak: the task ends when the client and all subscriptions are gone.
    shared: std::sync::Weak<Shared>,
    queue: mpsc::UnboundedReceiver<Command>,
}

impl Listener {
    async fn run(mut self) {
        // Disconnected: serve commands until someone subscribes, then stay connected while
        // anyone is subscribed.
        loop {
            match self.queue.recv().await {
                None => return,
                Some(Command::Flush(done)) => {
                    let _ = done.send(());
                    continue;
                }
                Some(Command::Unsubscribe(_)) => continue,
                // The channel is in the registry: it is subscribed with the rest below.
                Some(Command::Subscribe(_)) => {}
            }
            while self.has_subscribers() {
                match self.connect_and_serve().await {
                    Serve::Closed => return,
                    Serve::Idle => break,
                    Serve::Lost => {
                        self.set_ready(Some(false));
                        self.wake_all();
                        tokio::time::sleep(RECONNECT_DELAY).await;
                    }
                }
            }
        }
    }

    /// Records whether the subscriptions are in effect, for every registered channel.
    fn set_ready(&self, ready: Option<bool>) {
        if let Some(shared) = self.shared.upgrade() {
            for channel in shared
                .channels
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .values()
            {
                channel.ready.send_replace(ready);
            }
        }
    }

    fn set_channel_ready(&self, channel: &str, ready: bool) {
        if let Some(shared) = self.shared.upgrade() {
            if let Some(entry) = shared
                .channels
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(channel)
            {
                entry.ready.send_replace(Some(ready));
            }
        }
    }

    fn has_subscribers(&self) -> bool {
        self.shared.upgrade().is_some_and(|shared| {
            !shared
                .channels
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_empty()
        })
    }

    fn registered(&self) -> Vec<String> {
        self.shared
            .upgrade()
            .map(|shared| {
                shared
                    .channels
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .keys()
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Wakes every waiter, e.g. after a reconnect, when messages may have been missed.
    fn wake_all(&self) {
        if let Some(shared) = self.shared.upgrade() {
            for channel in shared
                .channels
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .values()
            {
                channel.wake.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }

    fn wake(&self, channel: &str) {
        if let Some(shared) = self.shared.upgrade() {
            if let Some(entry) = shared
                .channels
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(channel)
            {
                entry.wake.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }

    /// Connects, subscribes every registered channel, then relays messages and commands until
    /// the connection drops, nobody is subscribed any more, or the client is gone.
    async fn connect_and_serve(&mut self) -> Serve {
        let connecting = tokio::time::timeout(self.timeout, self.client.get_async_pubsub());
        let Ok(Ok(pubsub)) = connecting.await else {
            tracing::debug!("pub/sub connection failed; waiters fall back to re-checks");
            return Serve::Lost;
        };
        let (mut sink, mut stream) = pubsub.split();
        let channels = self.registered();
        if !channels.is_empty() && !self.within(sink.subscribe(&channels)).await {
            return Serve::Lost;
        }
        self.set_ready(Some(true));
        // Anything published while we were not subscribed was missed: re-check everyone.
        self.wake_all();
        loop {
            tokio::select! {
                message = stream.next() => match message {
                    Some(message) => self.wake(message.get_channel_name()),
                    None => return Serve::Lost,
                },
                command = self.queue.recv() => match command {
                    None => return Serve::Closed,
                    Some(Command::Subscribe(channel)) => {
                        let ok = self.within(sink.subscribe(&channel)).await;
                        self.set_channel_ready(&channel, ok);
                        if !ok {
                            return Serve::Lost;
                        }
                    }
                    Some(Command::Unsubscribe(channel)) => {
                        if !self.within(sink.unsubscribe(&channel)).await {
                            return Serve::Lost;
                        }
                        if !self.has_subscribers() {
                            return Serve::Idle;
                        }
                    }
                    Some(Command::Flush(done)) => {
                        let _ = done.send(());
                    }
                },
            }
        }
    }

    async fn within(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<()>>,
    ) -> bool {
        matches!(tokio::time::timeout(self.timeout, call).await, Ok(Ok(())))
    }
}

/// How serving a connection ended.
enum Serve {
    /// The connection dropped or could not be made.
    Lost,
    /// Nobody waits any more: the connection is closed until someone does.
    Idle,
    /// The client is gone.
    Closed,
}
