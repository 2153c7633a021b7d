//! Wake-ups for waiters: a release publishes on the lock's channel, and waiters retry at once
//! instead of polling.
//!
//! # Design
//! Each client opens at most one extra connection per node for this (one for a single Redis,
//! Sentinel or Cluster; one per master on Redlock, where a release publishes on every master
//! it reaches, so waiters hear it while some are down), and only when a lock is first waited
//! for. Waiters of the same lock share one channel subscription,
//! so the number of subscriptions is bounded by the number of distinct locks being waited for,
//! never by the number of waiters. Pub/sub was chosen over blocking lists because it needs no
//! connection per waiter. A subscription nobody uses any more lingers for a while
//! ([`ClientOptions::subscription_linger`](crate::ClientOptions::subscription_linger)), so a
//! job that waits for the same lock again and again does not pay a `SUBSCRIBE` each time; the
//! connection closes once no subscription is left.
//!
//! A message carries who it is for: empty for everyone (retry), a waiter's id (the first 16
//! hex digits of its token: only that waiter retries, so a release wakes one waiter, not a
//! herd), or a waiter's id with the fencing token and claim lease of a grant the release
//! handed to it (the waiter holds the lock without a round trip of its own). A message that
//! names a waiter is delivered to that waiter's task alone (`Channel::addressed`), so with
//! many waiters of one lock in one client a hand-off wakes one task, not all of them.
//!
//! # Guarantees and limits
//! - A waiter is subscribed before an attempt whose busy answer it sleeps on, so a release
//!   after that attempt is never missed while the connection is up.
//! - Pub/sub is at-most-once: when the connection drops (a network fault, `CLIENT KILL`, a
//!   server restart), every waiter is woken to re-check as soon as it is back, and while it is
//!   down they fall back to timed re-checks. Reconnects back off (50 ms doubling to 2 s), so a
//!   server that is down or a user without channel permission costs a few connections.
//! - The listener task holds the registry weakly and answers flushes even while disconnected:
//!   it ends when the client is dropped, and a lingering subscription never delays an exit.
//! - Releases that publish nothing (a lease that expired, a key deleted by another tool) are
//!   caught by each waiter's timed re-check ([`LockOptions::recheck`](crate::LockOptions::recheck)),
//!   which never waits past the holder's remaining TTL.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

mod channel;
mod subscription;
mod wake;

use channel::Channel;

pub(crate) use subscription::Subscription;
use wake::Wake;
pub(crate) use wake::Woken;

/// First pause before reopening a lost pub/sub connection (or one whose SUBSCRIBE was refused);
/// doubled after every failed attempt up to [`RECONNECT_MAX`], so a server that is down, or an
/// ACL user without channel permission, costs a few connections, not dozens a second.
const RECONNECT_MIN: Duration = Duration::from_millis(50);
/// Longest pause between attempts to reopen the pub/sub connection.
const RECONNECT_MAX: Duration = Duration::from_secs(2);
/// Wake-ups for everyone buffered per waiter; one that falls further behind simply re-checks.
/// (Addressed wake-ups are queued per waiter without a bound: a waiter gets at most a few
/// before its next attempt drains them.)
const WAKE_BUFFER: usize = 64;

/// The client's pub/sub side: shared registry plus a task that owns the connection.
#[derive(Debug, Clone)]
pub(crate) struct Notifier {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    channels: Mutex<HashMap<String, Channel>>,
    /// The client's inbox: the channel a release publishes a hand-off to when the waiter
    /// queued with it (see `handoff.lua`), so a hand-off reaches this client's one connection
    /// instead of every waiter's. Named like the locks' channels, so the ACL pattern for
    /// wake-ups (`{*}:dlock:released:*`) covers it.
    inbox: String,
    /// Each listener's command queue (one listener per node: Redlock hears every master).
    commands: Vec<mpsc::UnboundedSender<Command>>,
    linger: Duration,
}

#[derive(Debug)]
enum Command {
    Subscribe(String),
    Unsubscribe(String),
    Flush(oneshot::Sender<()>),
}

impl Notifier {
    /// Starts one listener task per node (each connects lazily, on the first subscription).
    /// On Redlock a release publishes on every master it reaches, so hearing every master
    /// keeps wake-ups coming while some are down; a waiter woken twice by one release just
    /// retries once more.
    pub fn spawn(
        nodes: Vec<crate::connection::node::Node>,
        timeout: Duration,
        linger: Duration,
    ) -> Notifier {
        let (commands, queues): (Vec<_>, Vec<_>) =
            nodes.iter().map(|_| mpsc::unbounded_channel()).unzip();
        let shared = Arc::new(Shared {
            channels: Mutex::new(HashMap::new()),
            inbox: inbox_name(),
            commands,
            linger,
        });
        for (index, (node, queue)) in nodes.into_iter().zip(queues).enumerate() {
            let listener = Listener {
                index,
                node,
                timeout,
                linger,
                shared: Arc::downgrade(&shared),
                queue,
                subscribed: HashSet::new(),
            };
            tokio::spawn(listener.run());
        }
        Notifier { shared }
    }

    /// A subscription to `channel` for the waiter with `token`, if one is already in effect
    /// (no round trip), else `None`.
    pub fn live(&self, channel: &str, token: &str, inbox: bool) -> Option<Subscription> {
        let mut channels = self.shared.channels();
        let entry = channels.get_mut(channel)?;
        if !entry.is_ready() {
            return None;
        }
        let mut subscription = entry.join(channel, token, &self.shared);
        if let Some(entry) = channels.get_mut(&self.shared.inbox).filter(|_| inbox) {
            entry.enter();
            subscription.use_inbox(entry.is_ready());
        }
        Some(subscription)
    }

    /// Subscribes to `channel` and returns once the subscription is in effect (or could not
    /// be made: the waiter's timed re-checks then carry it).
    ///
    /// # Cancel safety
    /// Dropping the future drops the subscription handle with it: nothing leaks.
    pub async fn subscribe(&self, channel: &str, token: &str, inbox: bool) -> Subscription {
        let name = self.shared.inbox.clone();
        let (mut subscription, mut ready, inbox_ready) = {
            let mut channels = self.shared.channels();
            let listeners = self.shared.commands.len();
            let entry = channels
                .entry(channel.to_owned())
                .or_insert_with(|| Channel::new(listeners));
            let mut subscription = entry.join(channel, token, &self.shared);
            self.send_subscribe(entry, channel);
            let ready = entry.ready.subscribe();
            let inbox_ready = inbox.then(|| {
                let entry = channels
                    .entry(name.clone())
                    .or_insert_with(|| Channel::new(listeners));
                entry.enter();
                // Counted from here: a future dropped while waiting below leaves it too.
                subscription.use_inbox(false);
                self.send_subscribe(entry, &name);
                entry.ready.subscribe()
            });
            (subscription, ready, inbox_ready)
        };
        // Whether they took or not: if not, the waiter's re-checks carry it.
        let _ = ready.wait_for(Option::is_some).await;
        if let Some(mut inbox_ready) = inbox_ready {
            let _ = inbox_ready.wait_for(Option::is_some).await;
            subscription.use_inbox(*inbox_ready.borrow() == Some(true));
        }
        subscription
    }

    /// Asks the listeners to subscribe `channel` if it is new (its first user, no answer
    /// yet).
    fn send_subscribe(&self, entry: &Channel, channel: &str) {
        if entry.ready.borrow().is_none() && entry.waiters == 1 {
            for commands in &self.shared.commands {
                let _ = commands.send(Command::Subscribe(channel.to_owned()));
            }
        }
    }

    /// Waits until every subscription change queued so far has reached Redis.
    pub async fn flush(&self) {
        let waits = self.shared.commands.iter().filter_map(|commands| {
            let (done, wait) = oneshot::channel();
            commands.send(Command::Flush(done)).ok().map(|()| wait)
        });
        futures_util::future::join_all(waits).await;
    }
}

/// A fresh inbox name for one client: random, so no two clients share one.
fn inbox_name() -> String {
    let id = crate::token::Token::generate()
        .map(|token| token.as_str()[..16].to_owned())
        .unwrap_or_else(|_| format!("{:016x}", fastrand::u64(..)));
    format!("{{inbox}}:dlock:released:{id}")
}

impl Shared {
    fn channels(&self) -> MutexGuard<'_, HashMap<String, Channel>> {
        self.channels.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The task that owns the pub/sub connection to one node.
struct Listener {
    /// Which listener this is (its node's index).
    index: usize,
    /// The node whose current server to subscribe on (it changes after a Sentinel failover).
    node: crate::connection::node::Node,
    timeout: Duration,
    linger: Duration,
    /// Weak: the task ends when the client and all subscriptions are gone.
    shared: Weak<Shared>,
    queue: mpsc::UnboundedReceiver<Command>,
    /// What this connection is subscribed to: another listener may expire a channel from the
    /// registry, and this one must then unsubscribe it too.
    subscribed: HashSet<String>,
}

/// How serving a connection ended.
enum Serve {
    /// The connection dropped or could not be made; `subscribed` if it had been serving
    /// subscriptions (so messages may have been missed).
    Lost { subscribed: bool },
    /// Nobody is subscribed any more: the connection closes until someone is.
    Idle,
    /// The client is gone.
    Closed,
}

impl Listener {
    async fn run(mut self) {
        // Disconnected: serve commands until someone subscribes, then stay connected while
        // any subscription (in use or lingering) exists.
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
            let mut delay = RECONNECT_MIN;
            while self.has_channels() {
                match self.connect_and_serve().await {
                    Serve::Closed => return,
                    Serve::Idle => break,
                    Serve::Lost { subscribed } => {
                        // Lingering channels nobody waits on go now, or an outage would keep
                        // this loop reconnecting for them.
                        self.expire_idle();
                        // Waiters re-check when messages may have been missed; a failed
                        // attempt to reconnect missed nothing new.
                        let index = self.index;
                        self.for_each_channel_mut(|_, channel| {
                            channel.set_ready(index, false);
                            if subscribed {
                                let _ = channel.wake.send(Wake::All);
                            }
                        });
                        if subscribed {
                            delay = RECONNECT_MIN;
                        }
                        if self.offline(tokio::time::sleep(delay)).await.is_none() {
                            return;
                        }
                        delay = (delay * 2).min(RECONNECT_MAX);
                    }
                }
            }
        }
    }

    fn for_each_channel(&self, mut f: impl FnMut(&str, &Channel)) {
        if let Some(shared) = self.shared.upgrade() {
            for (name, channel) in shared.channels().iter() {
                f(name, channel);
            }
        }
    }

    fn for_each_channel_mut(&self, mut f: impl FnMut(&str, &mut Channel)) {
        if let Some(shared) = self.shared.upgrade() {
            for (name, channel) in shared.channels().iter_mut() {
                f(name, channel);
            }
        }
    }

    /// Records listener's answer for channel `name`, if it is still registered.
    fn set_ready(&self, name: &str, ok: bool) {
        if let Some(shared) = self.shared.upgrade() {
            if let Some(channel) = shared.channels().get_mut(name) {
                channel.set_ready(self.index, ok);
            }
        }
    }

    fn has_channels(&self) -> bool {
        self.shared
            .upgrade()
            .is_some_and(|shared| !shared.channels().is_empty())
    }

    fn is_inbox(&self, name: &str) -> bool {
        self.shared
            .upgrade()
            .is_some_and(|shared| shared.inbox == name)
    }

    /// Subscribes the client's inbox, if Redis lets it: refused (an ACL), it is marked not in
    /// effect, and waiters name the lock's channel for their hand-offs instead.
    async fn subscribe_inbox(&self, sink: &mut redis::aio::PubSubSink, name: &str) {
        let ok = self.within(sink.subscribe(name)).await;
        if !ok {
            tracing::debug!("the inbox subscription was refused; hand-offs use lock channels");
        }
        self.set_ready(name, ok);
    }

    fn names(&self) -> Vec<String> {
        let mut names = Vec::new();
        self.for_each_channel(|name, _| names.push(name.to_owned()));
        names
    }

    /// Removes subscriptions idle for longer than the linger; returns their names.
    fn expire_idle(&self) -> Vec<String> {
        let Some(shared) = self.shared.upgrade() else {
            return Vec::new();
        };
        let now = Instant::now();
        let mut channels = shared.channels();
        let expired: Vec<String> = channels
            .iter()
            .filter(|(_, c)| c.idle_since.is_some_and(|since| now >= since + self.linger))
            .map(|(name, _)| name.clone())
            .collect();
        for name in &expired {
            channels.remove(name);
        }
        expired
    }

    /// Runs `step` (a pause or a connection attempt) while disconnected, answering commands
    /// meanwhile: a flush at once (nothing queued before it needs sending: a new connection
    /// subscribes whatever the registry holds then), a new subscription as not in effect (its
    /// waiter re-checks on its own until the reconnect wakes it). `None` when the client is
    /// gone.
    async fn offline<T>(&mut self, step: impl std::future::Future<Output = T>) -> Option<T> {
        let mut step = std::pin::pin!(step);
        loop {
            tokio::select! {
                done = &mut step => return Some(done),
                command = self.queue.recv() => match command {
                    None => return None,
                    Some(Command::Flush(done)) => {
                        let _ = done.send(());
                    }
                    Some(Command::Subscribe(name)) => {
                        if let Some(shared) = self.shared.upgrade() {
                            if let Some(channel) = shared.channels().get_mut(&name) {
                                if channel.ready.borrow().is_none() {
                                    channel.set_ready(self.index, false);
                                }
                            }
                        }
                    }
                    Some(Command::Unsubscribe(_)) => {}
                },
            }
        }
    }

    /// Connects, subscribes every registered channel, then relays messages and commands until
    /// the connection drops, no channel is left, or the client is gone.
    async fn connect_and_serve(&mut self) -> Serve {
        let (node, timeout) = (self.node.clone(), self.timeout);
        // The node's server first; on a Cluster, any live master if it fails.
        let connecting = async move {
            let open = |client: redis::Client| async move {
                tokio::time::timeout(timeout, client.get_async_pubsub())
                    .await
                    .ok()?
                    .ok()
            };
            if let Some(pubsub) = open(node.redis_client()).await {
                return Some(pubsub);
            }
            for client in node.pubsub_fallbacks().await {
                if let Some(pubsub) = open(client).await {
                    return Some(pubsub);
                }
            }
            None
        };
        let Some(connected) = self.offline(connecting).await else {
            return Serve::Closed;
        };
        let Some(pubsub) = connected else {
            tracing::debug!("pub/sub connection failed; waiters fall back to re-checks");
            return Serve::Lost { subscribed: false };
        };
        let (mut sink, stream) = pubsub.split();
        self.subscribed.clear();
        // Read after connecting: subscriptions made meanwhile are in it.
        let names = self.names();
        if names.is_empty() {
            // Every waiter left while we connected (their Unsubscribes went by offline): an
            // idle connection would stay open for nobody.
            return Serve::Idle;
        }
        // The inbox goes on its own: an ACL that allows only some lock channels refuses it,
        // and that must cost the hand-offs their inbox, not every wake-up.
        let (inbox, names): (Vec<String>, Vec<String>) =
            names.into_iter().partition(|name| self.is_inbox(name));
        if !names.is_empty() && !self.within(sink.subscribe(&names)).await {
            return Serve::Lost { subscribed: false };
        }
        for name in inbox {
            self.subscribe_inbox(&mut sink, &name).await;
            self.subscribed.insert(name);
        }
        // Anything published while we were not subscribed was missed: re-check everyone. Only
        // the channels just subscribed are in effect; later ones are when their Subscribe is.
        if let Some(shared) = self.shared.upgrade() {
            let mut channels = shared.channels();
            for name in &names {
                if let Some(channel) = channels.get_mut(name) {
                    channel.set_ready(self.index, true);
                    let _ = channel.wake.send(Wake::All);
                }
            }
        }
        self.subscribed.extend(names);
        self.serve(sink, stream).await
    }

    /// Relays messages and commands over a subscribed connection until it drops, no channel
    /// is left, or the client is gone.
    async fn serve(
        &mut self,
        mut sink: redis::aio::PubSubSink,
        mut stream: redis::aio::PubSubStream,
    ) -> Serve {
        let sweep_every = (self.linger / 2).max(Duration::from_millis(50));
        let mut sweep = tokio::time::interval_at(Instant::now() + sweep_every, sweep_every);
        loop {
            tokio::select! {
                message = stream.next() => match message {
                    Some(message) => self.deliver(&message),
                    None => return Serve::Lost { subscribed: true },
                },
                _ = sweep.tick(), if !self.linger.is_zero() => {
                    self.expire_idle();
                    // Expired by this listener or another: gone from the registry.
                    let registered: HashSet<String> = self.names().into_iter().collect();
                    let expired: Vec<String> =
                        self.subscribed.difference(&registered).cloned().collect();
                    if !expired.is_empty() && !self.within(sink.unsubscribe(&expired)).await {
                        return Serve::Lost { subscribed: true };
                    }
                    for name in &expired {
                        self.subscribed.remove(name);
                    }
                    if !self.has_channels() {
                        return Serve::Idle;
                    }
                }
                command = self.queue.recv() => match command {
                    None => return Serve::Closed,
                    Some(Command::Subscribe(name)) if self.is_inbox(&name) => {
                        self.subscribe_inbox(&mut sink, &name).await;
                        self.subscribed.insert(name);
                    }
                    Some(Command::Subscribe(name)) => {
                        let ok = self.within(sink.subscribe(&name)).await;
                        self.set_ready(&name, ok);
                        if !ok {
                            return Serve::Lost { subscribed: true };
                        }
                        self.subscribed.insert(name);
                    }
                    Some(Command::Unsubscribe(name)) => {
                        if !self.within(sink.unsubscribe(&name)).await {
                            return Serve::Lost { subscribed: true };
                        }
                        self.subscribed.remove(&name);
                        if !self.has_channels() {
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

    fn deliver(&self, message: &redis::Msg) {
        let payload: String = message.get_payload().unwrap_or_default();
        let wake = Wake::parse(&payload);
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let channels = shared.channels();
        if message.get_channel_name() == shared.inbox {
            channels
                .values()
                .for_each(|channel| channel.deliver_addressed(&wake));
        } else if let Some(channel) = channels.get(message.get_channel_name()) {
            channel.deliver(wake);
        }
    }

    async fn within(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<()>>,
    ) -> bool {
        matches!(tokio::time::timeout(self.timeout, call).await, Ok(Ok(())))
    }
}
