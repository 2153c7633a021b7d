//! The task that owns one node's pub/sub connection: it subscribes the registry's channels,
//! delivers their messages, and reconnects (with backoff) when the connection drops.

use std::collections::HashSet;
use std::sync::Weak;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::channel::Channel;
use super::wake::Wake;
use super::{Command, Shared, RECONNECT_MAX, RECONNECT_MIN};
use crate::connection::node::Node;

/// The task that owns the pub/sub connection to one node.
pub(super) struct Listener {
    /// Which listener this is (its node's index).
    pub(super) index: usize,
    /// The node whose current server to subscribe on (it changes after a Sentinel failover).
    pub(super) node: Node,
    pub(super) timeout: Duration,
    pub(super) linger: Duration,
    /// Weak: the task ends when the client and all subscriptions are gone.
    pub(super) shared: Weak<Shared>,
    pub(super) queue: mpsc::UnboundedReceiver<Command>,
    /// What this connection is subscribed to: another listener may expire a channel from the
    /// registry, and this one must then unsubscribe it too.
    pub(super) subscribed: HashSet<String>,
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
    pub(super) async fn run(mut self) {
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
        let connecting = open_pubsub(self.node.clone(), self.timeout);
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
        let wake = Wake::parse(&payload, Instant::now());
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        if message.get_channel_name() == shared.inbox {
            shared.deliver_to_inbox(&wake);
        } else if let Some(channel) = shared.channels().get(message.get_channel_name()) {
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

/// A pub/sub connection to `node`'s server, or on a Cluster to any live master if that one
/// fails (classic pub/sub reaches every node of a cluster); `None` when none answers within
/// `timeout` each.
async fn open_pubsub(node: Node, timeout: Duration) -> Option<redis::aio::PubSub> {
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
}
