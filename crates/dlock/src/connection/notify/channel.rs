//! One subscribed channel in a client's registry: its waiters, its broadcast for everyone,
//! and its waiters by id for addressed wake-ups.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;

use super::subscription::Subscription;
use super::wake::{id_key, Wake};
use super::{Shared, WAKE_BUFFER};

#[derive(Debug)]
pub(super) struct Channel {
    pub(super) waiters: usize,
    /// When the last waiter left (`None` while someone waits).
    pub(super) idle_since: Option<Instant>,
    /// Wake-ups for every waiter (a release with nobody queued, a reconnect).
    pub(super) wake: broadcast::Sender<Wake>,
    /// Wake-ups addressed to one waiter (the queue's head, a hand-off, the next in line), by
    /// waiter id: delivered to that waiter's task alone, so a hand-off wakes one task, not
    /// every waiter of the lock in this client.
    /// Several waiters may share an id (a 64-bit prefix): each gets the wake-up, and its MAC
    /// check tells which one it is for. Each queue holds [`WAKE_BUFFER`] wake-ups; more (a
    /// flood from someone publishing on the channel) are dropped, and the waiter's re-check
    /// carries it.
    pub(super) addressed: HashMap<String, Vec<mpsc::Sender<Wake>>>,
    /// `None` until Redis answered the SUBSCRIBE; then whether it is in effect on some node.
    pub(super) ready: watch::Sender<Option<bool>>,
    /// Each listener's last answer for its node (Redlock: one listener per master).
    on: Vec<Option<bool>>,
}

impl Channel {
    /// A channel nobody has subscribed to yet, heard through `listeners` listeners.
    pub(super) fn new(listeners: usize) -> Channel {
        Channel {
            waiters: 0,
            idle_since: None,
            wake: broadcast::channel(WAKE_BUFFER).0,
            addressed: HashMap::new(),
            ready: watch::channel(None).0,
            on: vec![None; listeners],
        }
    }

    /// Listener `index` answered: the SUBSCRIBE is in effect on its node (`ok`), or not (or
    /// no more). The channel is ready while it is in effect on any node; it is "not in effect"
    /// only once every listener has said so: a subscriber waits for the first node that hears
    /// it, not for the first one that failed.
    pub(super) fn set_ready(&mut self, index: usize, ok: bool) {
        // Another node hears it from now on: a release published there before (say, one that
        // reached only the masters whose SUBSCRIBE was slower than the first) was missed, so
        // waiters already sleeping on the first node's answer re-check (found by review).
        let was_ready = *self.ready.borrow() == Some(true);
        if let Some(on) = self.on.get_mut(index) {
            if ok && *on != Some(true) && was_ready {
                let _ = self.wake.send(Wake::All);
            }
            *on = Some(ok);
        }
        let state = if self.on.contains(&Some(true)) {
            Some(true)
        } else if self.on.iter().all(Option::is_some) || self.ready.borrow().is_some() {
            // Every node failed, or the last one that heard it no longer does.
            Some(false)
        } else {
            None
        };
        if state.is_some() {
            self.ready.send_replace(state);
        }
    }

    /// Counts one more user (a waiter, or a waiter's use of the client's inbox).
    pub(super) fn enter(&mut self) {
        self.waiters += 1;
        self.idle_since = None;
    }

    /// Whether the SUBSCRIBE is in effect.
    pub(super) fn is_ready(&self) -> bool {
        *self.ready.borrow() == Some(true)
    }

    /// Registers the waiter with `token` and makes its subscription.
    pub(super) fn join(&mut self, name: &str, token: &str, shared: &Arc<Shared>) -> Subscription {
        self.enter();
        let (send, mine) = mpsc::channel(WAKE_BUFFER);
        self.addressed
            .entry(id_key(token).to_owned())
            .or_default()
            .push(send);
        shared.note_waiting(id_key(token), name);
        Subscription::new(
            name,
            token,
            self.wake.subscribe(),
            mine,
            self.ready.subscribe(),
            shared.clone(),
        )
    }

    /// Delivers a wake-up: to everyone, or to the waiters it names.
    pub(super) fn deliver(&self, wake: Wake) {
        if wake == Wake::All {
            let _ = self.wake.send(wake);
            return;
        }
        self.deliver_addressed(&wake);
    }

    /// Delivers a wake-up to the waiters it names, if they wait here (a message from the
    /// client's inbox comes to each channel its waiters wait on: see `Shared::waiting_on`).
    pub(super) fn deliver_addressed(&self, wake: &Wake) {
        for id in wake.named() {
            for waiter in self.addressed.get(id_key(id)).into_iter().flatten() {
                let _ = waiter.try_send(wake.clone());
            }
        }
    }
}
