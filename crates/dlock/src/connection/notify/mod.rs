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
//! many waiters of one lock in one client a hand-off wakes one task, not all of them. A
//! message of the client's inbox finds the channels of the waiters it names in an index
//! (`Shared::waiting_on`), so its cost does not grow with the number of locks waited for.
//!
//! # Guarantees and limits
//! - A waiter is subscribed before an attempt whose busy answer it sleeps on, so a release
//!   after that attempt is never missed while the connection is up. A hand-off from a release
//!   by this same client comes in that release's reply instead (`deliver_handoffs`); if the
//!   reply is lost, the client wakes its waiters on the lock (`wake_all`) to re-check.
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
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

mod channel;
mod listener;
mod subscription;
mod wake;

use channel::Channel;
use listener::Listener;
use wake::{id_key, Wake};

pub(crate) use subscription::Subscription;
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
    /// The channels each waiter id waits on (the ids of `Channel::addressed`), so a message
    /// of the inbox reaches its waiters without a look at every channel the client waits on.
    /// Locked only while `channels` is held (in that order).
    waiting_on: Mutex<HashMap<String, Vec<String>>>,
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
            waiting_on: Mutex::new(HashMap::new()),
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

    /// This client's inbox: the channel a release publishes this client's hand-offs to.
    pub fn inbox(&self) -> &str {
        &self.shared.inbox
    }

    /// Delivers the hand-offs to this client's waiters in the reply of its own one-lock release
    /// (the messages after the result, see `handoff.lua`, `releaser_inbox`), as if they came on
    /// the inbox. True if the reply says released: then it holds every hand-off the release
    /// made (a reply that says not released may hold some too: a semaphore permit whose lease
    /// ended is still passed on).
    pub fn deliver_handoffs(&self, reply: &[redis::Value]) -> bool {
        let received = tokio::time::Instant::now();
        for message in reply {
            if let redis::Value::BulkString(bytes) = message {
                let wake = Wake::parse(&String::from_utf8_lossy(bytes), received);
                self.shared.deliver_to_inbox(&wake);
            }
        }
        matches!(reply.first(), Some(redis::Value::Int(1)))
    }

    /// Whether a reply of this client's own one-lock release handed the lock to a waiter of
    /// this client waiting on `channel` (a message in it may only tell this client's waiter
    /// that it is next in line after a grant to another client). Asked before the messages are
    /// delivered.
    pub fn grants_here<'a>(
        &self,
        mut replies: impl Iterator<Item = &'a Vec<redis::Value>>,
        channel: &str,
    ) -> bool {
        let waiting_on = self.shared.waiting_on();
        replies.any(|reply| {
            reply.iter().skip(1).any(|message| {
                let redis::Value::BulkString(bytes) = message else {
                    return false;
                };
                let wake =
                    Wake::parse(&String::from_utf8_lossy(bytes), tokio::time::Instant::now());
                let Wake::Handed { id, .. } = &wake else {
                    return false;
                };
                waiting_on
                    .get(id_key(id))
                    .is_some_and(|channels| channels.iter().any(|name| name == channel))
            })
        })
    }

    /// Wakes this client's waiters on `channel` to retry at once: a hand-off meant for them
    /// may have been lost with the reply of the release that made it.
    pub fn wake_all(&self, channel: &str) {
        if let Some(channel) = self.shared.channels().get(channel) {
            channel.deliver(Wake::All);
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

    fn waiting_on(&self) -> MutexGuard<'_, HashMap<String, Vec<String>>> {
        self.waiting_on
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes that waiter `id` waits on `channel` (under the `channels` lock).
    fn note_waiting(&self, id: &str, channel: &str) {
        let mut waiting_on = self.waiting_on();
        let channels = waiting_on.entry(id.to_owned()).or_default();
        if !channels.iter().any(|name| name == channel) {
            channels.push(channel.to_owned());
        }
    }

    /// Notes that no waiter with `id` waits on `channel` any more (under the `channels` lock).
    fn note_gone(&self, id: &str, channel: &str) {
        let mut waiting_on = self.waiting_on();
        if let Some(channels) = waiting_on.get_mut(id) {
            channels.retain(|name| name != channel);
            if channels.is_empty() {
                waiting_on.remove(id);
            }
        }
    }

    /// Delivers a message of the inbox to the waiters it names, wherever they wait (a waiter
    /// whose id merely matches drops a grant whose MAC over its whole token fails).
    fn deliver_to_inbox(&self, wake: &Wake) {
        let channels = self.channels();
        let waiting_on = self.waiting_on();
        let mut names: Vec<&String> = wake
            .named()
            .filter_map(|id| waiting_on.get(id_key(id)))
            .flatten()
            .collect();
        // Once per channel: a channel delivers to every waiter the message names.
        names.sort_unstable();
        names.dedup();
        for name in names {
            if let Some(channel) = channels.get(name.as_str()) {
                channel.deliver_addressed(wake);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaa0000000000000000";
    const B: &str = "bbbbbbbbbbbbbbbb1111111111111111";

    fn reply(messages: &[&String]) -> Vec<redis::Value> {
        let mut reply = vec![redis::Value::Int(1)];
        reply.extend(
            messages
                .iter()
                .map(|m| redis::Value::BulkString(m.as_bytes().to_vec())),
        );
        reply
    }

    #[tokio::test]
    async fn only_a_grant_to_a_waiter_of_this_client_on_that_lock_counts_as_handed_here() {
        let (commands, _queue) = mpsc::unbounded_channel();
        let notifier = Notifier {
            shared: Arc::new(Shared {
                channels: Mutex::new(HashMap::new()),
                waiting_on: Mutex::new(HashMap::new()),
                inbox: "{inbox}:dlock:released:test".into(),
                commands: vec![commands],
                linger: Duration::from_secs(10),
            }),
        };
        let mut channel = Channel::new(1);
        let _a = channel.join("lock", A, &notifier.shared);
        notifier.shared.channels().insert("lock".into(), channel);
        let to_a = format!("{} 5 1000 0123456789abcdef -", &A[..16]);
        // Handed to a waiter of another client; A is only next in line.
        let to_b = format!("{} 5 1000 0123456789abcdef {}", &B[..16], &A[..16]);
        let here = |messages: &[&String], channel: &str| {
            notifier.grants_here([reply(messages)].iter(), channel)
        };
        assert!(here(&[&to_a], "lock"));
        assert!(!here(&[&to_b], "lock"));
        assert!(here(&[&to_b, &to_a], "lock"));
        assert!(!here(&[&to_a], "another lock"));
        assert!(!here(&[], "lock"));
    }
}
