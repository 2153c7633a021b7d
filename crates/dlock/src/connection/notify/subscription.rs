//! One waiter's subscription to a lock's channel: the wake-ups for everyone, and those
//! addressed to it alone.

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;

use super::wake::{id_key, Wake, Woken};
use std::collections::HashMap;

use super::channel::Channel;
use super::{Command, Shared};

/// One waiter's interest in one lock's channel.
#[derive(Debug)]
pub(crate) struct Subscription {
    channel: String,
    /// The waiter id this subscription is registered under (see `Channel::addressed`).
    id: String,
    /// Wake-ups for everyone.
    wake: broadcast::Receiver<Wake>,
    /// Wake-ups addressed to this waiter.
    mine: mpsc::Receiver<Wake>,
    /// Whether the lock channel's SUBSCRIBE is in effect (`None`: not answered yet).
    ready: watch::Receiver<Option<bool>>,
    /// Whether this subscription counts as a user of the client's inbox.
    in_inbox: bool,
    /// The inbox's name, if its SUBSCRIBE is in effect: hand-offs may be sent there.
    inbox: Option<Arc<str>>,
    shared: Arc<Shared>,
}

impl Subscription {
    pub(super) fn new(
        channel: &str,
        token: &str,
        wake: broadcast::Receiver<Wake>,
        mine: mpsc::Receiver<Wake>,
        ready: watch::Receiver<Option<bool>>,
        shared: Arc<Shared>,
    ) -> Subscription {
        Subscription {
            channel: channel.to_owned(),
            id: id_key(token).to_owned(),
            wake,
            mine,
            ready,
            in_inbox: false,
            inbox: None,
            shared,
        }
    }

    /// This subscription also uses the client's inbox (counted, so it stays subscribed while
    /// used), and may name it to releases if `ready`.
    pub(super) fn use_inbox(&mut self, ready: bool) {
        self.in_inbox = true;
        self.inbox = ready.then(|| Arc::from(self.shared.inbox.as_str()));
    }

    /// Whether this waiter hears its lock's channel right now (the SUBSCRIBE took, and the
    /// connection is up): only then may it be handed the lock, since only then does it learn of
    /// it at once.
    pub fn hears(&self) -> bool {
        *self.ready.borrow() == Some(true)
    }

    /// Where a release may send a hand-off for this waiter: the client's inbox, once subscribed
    /// (`None`: on the lock's channel, which this waiter also hears).
    pub fn inbox(&self) -> Option<Arc<str>> {
        self.inbox.clone()
    }

    /// Drops every wake-up received so far: call it right before an acquisition attempt,
    /// whose answer already reflects them.
    pub fn mark_seen(&mut self) {
        while self.mine.try_recv().is_ok() {}
        loop {
            match self.wake.try_recv() {
                Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                Err(_) => return,
            }
        }
    }

    /// Resolves at the next wake-up for `token` (or for everyone) after the last
    /// [`Subscription::mark_seen`]. Wake-ups for everyone that were missed (the buffer lagged)
    /// are a retry.
    ///
    /// # Cancel safety
    /// Cancel safe: wake-ups that arrive meanwhile stay buffered.
    pub async fn woken(&mut self, token: &str) -> Woken {
        loop {
            let wake = tokio::select! {
                Some(wake) = self.mine.recv() => wake,
                wake = self.wake.recv() => match wake {
                    Ok(wake) => wake,
                    Err(broadcast::error::RecvError::Lagged(_)) => return Woken::Retry,
                    Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
                },
            };
            if let Some(woken) = wake.for_token(token) {
                return woken;
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut channels = self.shared.channels();
        let id_stays = channels.get_mut(&self.channel).is_some_and(|entry| {
            // Its own queue leaves the registry; other waiters with the same id stay.
            self.mine.close();
            if let Some(senders) = entry.addressed.get_mut(&self.id) {
                senders.retain(|sender| !sender.is_closed());
                if senders.is_empty() {
                    entry.addressed.remove(&self.id);
                }
            }
            entry.addressed.contains_key(&self.id)
        });
        if !id_stays {
            self.shared.note_gone(&self.id, &self.channel);
        }
        leave(&self.shared, &mut channels, &self.channel);
        if self.in_inbox {
            leave(&self.shared, &mut channels, &self.shared.inbox);
        }
    }
}

/// One user fewer of `name`: the last one unsubscribes it, at once or after the linger.
fn leave(shared: &Shared, channels: &mut HashMap<String, Channel>, name: &str) {
    let Some(entry) = channels.get_mut(name) else {
        return;
    };
    entry.waiters -= 1;
    if entry.waiters > 0 {
        return;
    }
    if shared.linger.is_zero() {
        channels.remove(name);
        // Under the registry lock, so a new first subscriber's Subscribe is queued after this
        // Unsubscribe and wins.
        for commands in &shared.commands {
            let _ = commands.send(Command::Unsubscribe(name.to_owned()));
        }
    } else {
        // Kept for the next waiter; the listener unsubscribes it after the linger.
        entry.idle_since = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::Duration;

    use super::super::wake::mac;
    use super::super::Channel;
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaa0000000000000000";
    const B: &str = "bbbbbbbbbbbbbbbb1111111111111111";
    const C: &str = "cccccccccccccccc3333333333333333";

    /// The hand-off of fencing token 5 to `token`, granted at 9 ms, naming `next` (a token)
    /// as next in line.
    fn handed(token: &str, next: Option<&str>, claim: Duration, at: tokio::time::Instant) -> Wake {
        Wake::Handed {
            id: token[..16].into(),
            fence: 5,
            claim,
            granted_ms: Some(9),
            received: at,
            mac: mac(token, 5, claim, Some(9)).into(),
            next: next.map(|next| next[..16].into()),
        }
    }

    async fn next(subscription: &mut Subscription, token: &str) -> Woken {
        tokio::time::timeout(Duration::from_secs(1), subscription.woken(token))
            .await
            .expect("a wake-up")
    }

    /// Nothing is waiting for this waiter, addressed or for everyone.
    fn quiet(subscription: &mut Subscription) -> bool {
        subscription.mine.try_recv().is_err()
            && matches!(
                subscription.wake.try_recv(),
                Err(broadcast::error::TryRecvError::Empty)
            )
    }

    /// A registry (its command queue dropped: nothing is sent anywhere) and one channel.
    fn registry() -> (Arc<Shared>, Channel) {
        let (commands, _queue) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            channels: Mutex::new(HashMap::new()),
            waiting_on: Mutex::new(HashMap::new()),
            inbox: "{inbox}:dlock:released:test".into(),
            commands: vec![commands],
            linger: Duration::from_secs(10),
        });
        let mut channel = Channel::new(1);
        channel.set_ready(0, true);
        (shared, channel)
    }

    /// Redlock: a channel is ready on the first master's answer; when a second master starts
    /// hearing it later, waiters re-check (a release may have been published there only).
    #[tokio::test]
    async fn a_node_that_starts_hearing_a_channel_late_wakes_its_waiters() {
        let (shared, _) = registry();
        let mut channel = Channel::new(2);
        let mut a = channel.join("c", A, &shared);
        channel.set_ready(0, true);
        assert!(a.hears());
        assert!(quiet(&mut a), "the first answer wakes nobody");
        channel.set_ready(1, false);
        assert!(a.hears(), "still heard through the first node");
        channel.set_ready(1, true);
        assert_eq!(next(&mut a, A).await, Woken::Retry);
        channel.set_ready(0, false);
        channel.set_ready(1, false);
        assert!(!a.hears(), "no node hears it any more");
    }

    #[tokio::test]
    async fn waiters_sharing_an_id_each_get_its_wake_ups() {
        const A2: &str = "aaaaaaaaaaaaaaaa2222222222222222";
        let (shared, mut channel) = registry();
        let mut a = channel.join("c", A, &shared);
        let mut a2 = channel.join("c", A2, &shared);
        let claim = Duration::from_secs(1);
        let at = tokio::time::Instant::now();
        channel.deliver(handed(A, None, claim, at));
        assert_eq!(
            next(&mut a, A).await,
            Woken::Handed {
                fence: 5,
                claim,
                granted_ms: Some(9),
                received: at
            }
        );
        // a2 heard it too, and its MAC check turned it down: nothing for a2.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), a2.woken(A2))
                .await
                .is_err()
        );
        drop(a2);
        channel.deliver(Wake::Only(A[..16].into()));
        assert_eq!(
            next(&mut a, A).await,
            Woken::Retry,
            "a2 leaving took a's queue"
        );
    }

    #[tokio::test]
    async fn an_addressed_wake_up_reaches_its_waiter_alone() {
        let (shared, mut channel) = registry();
        let mut a = channel.join("c", A, &shared);
        let mut b = channel.join("c", B, &shared);
        channel.deliver(Wake::Only(A[..16].into()));
        assert_eq!(next(&mut a, A).await, Woken::Retry);
        assert!(quiet(&mut b), "b's task was woken for a");
        // Older releases published whole tokens: addressed by their first 16 characters too.
        channel.deliver(Wake::Only(B.into()));
        assert_eq!(next(&mut b, B).await, Woken::Retry);
        assert!(quiet(&mut a));
        let claim = Duration::from_secs(1);
        let at = tokio::time::Instant::now();
        channel.deliver(handed(B, Some(A), claim, at));
        assert_eq!(
            next(&mut b, B).await,
            Woken::Handed {
                fence: 5,
                claim,
                granted_ms: Some(9),
                received: at
            }
        );
        assert_eq!(next(&mut a, A).await, Woken::HandedAhead { claim });
        channel.deliver(Wake::All);
        assert_eq!(next(&mut a, A).await, Woken::Retry);
        assert_eq!(next(&mut b, B).await, Woken::Retry);
    }

    /// A registry whose channels `names` are subscribed.
    fn registry_with(names: &[String]) -> Arc<Shared> {
        let (shared, _) = registry();
        for name in names {
            let mut channel = Channel::new(1);
            channel.set_ready(0, true);
            shared.channels().insert(name.clone(), channel);
        }
        shared
    }

    /// The waiter with `token` joins channel `name` of `shared`.
    fn join(shared: &Arc<Shared>, name: &str, token: &str) -> Subscription {
        let mut channels = shared.channels();
        channels.get_mut(name).unwrap().join(name, token, shared)
    }

    #[tokio::test]
    async fn an_inbox_message_reaches_the_waiters_it_names_once_wherever_they_wait() {
        let names: Vec<String> = (0..1000).map(|i| format!("c{i}")).collect();
        let shared = registry_with(&names);
        // a and b wait on one lock; b (a multi-key waiter) on a second one too; c elsewhere.
        let (mut a, mut b) = (join(&shared, "c500", A), join(&shared, "c500", B));
        let mut b_too = join(&shared, "c7", B);
        let mut c = join(&shared, "c8", C);
        let claim = Duration::from_secs(1);
        let at = tokio::time::Instant::now();
        shared.deliver_to_inbox(&handed(A, Some(B), claim, at));
        let handed = Woken::Handed {
            fence: 5,
            claim,
            granted_ms: Some(9),
            received: at,
        };
        assert_eq!(next(&mut a, A).await, handed);
        assert_eq!(next(&mut b, B).await, Woken::HandedAhead { claim });
        assert_eq!(next(&mut b_too, B).await, Woken::HandedAhead { claim });
        // Once each, though a and b share a channel; nothing for c.
        assert!(quiet(&mut a) && quiet(&mut b) && quiet(&mut b_too) && quiet(&mut c));
    }

    /// The index and the channels agree: every id a channel routes lists that channel, and
    /// every channel an id lists routes it.
    fn assert_index_matches(shared: &Shared) {
        let channels = shared.channels();
        let waiting_on = shared.waiting_on();
        for (name, channel) in channels.iter() {
            for id in channel.addressed.keys() {
                let listed = waiting_on.get(id).is_some_and(|names| names.contains(name));
                assert!(listed, "{id} waits on {name}, not in the index");
            }
        }
        for (id, names) in waiting_on.iter() {
            for name in names {
                let routed = channels
                    .get(name)
                    .is_some_and(|channel| channel.addressed.contains_key(id));
                assert!(
                    routed,
                    "the index has {id} on {name}, which does not route it"
                );
            }
        }
    }

    #[tokio::test]
    async fn the_index_follows_waiters_as_they_join_and_leave() {
        const A2: &str = "aaaaaaaaaaaaaaaa2222222222222222";
        let shared = registry_with(&["c".to_owned(), "d".to_owned(), "e".to_owned()]);
        let a = join(&shared, "c", A);
        let a2 = join(&shared, "c", A2);
        let b = join(&shared, "c", B);
        // b waits on two locks (a multi-key lock): d and e.
        let b_d = join(&shared, "d", B);
        let mut b_e = join(&shared, "e", B);
        assert_index_matches(&shared);
        drop(a);
        assert_index_matches(&shared);
        assert!(
            shared.waiting_on().contains_key(&A[..16]),
            "a2 still waits on c"
        );
        drop(b);
        assert_index_matches(&shared);
        drop(b_d);
        assert_index_matches(&shared);
        // b still hears on e what names it, also by its whole token (older releases).
        shared.deliver_to_inbox(&Wake::Only(B.into()));
        assert_eq!(next(&mut b_e, B).await, Woken::Retry);
        drop((a2, b_e));
        assert_index_matches(&shared);
        assert!(shared.waiting_on().is_empty(), "{:?}", shared.waiting_on());
    }
}
