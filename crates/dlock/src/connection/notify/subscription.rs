//! One waiter's subscription to a lock's channel: the wake-ups for everyone, and those
//! addressed to it alone.

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

use super::wake::{id_key, Wake, Woken};
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
    mine: mpsc::UnboundedReceiver<Wake>,
    shared: Arc<Shared>,
}

impl Subscription {
    pub(super) fn new(
        channel: &str,
        token: &str,
        wake: broadcast::Receiver<Wake>,
        mine: mpsc::UnboundedReceiver<Wake>,
        shared: Arc<Shared>,
    ) -> Subscription {
        Subscription {
            channel: channel.to_owned(),
            id: id_key(token).to_owned(),
            wake,
            mine,
            shared,
        }
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
                wake = self.mine.recv() => match wake {
                    Some(wake) => wake,
                    // The channel entry is gone (it cannot be while this subscription lives).
                    None => std::future::pending().await,
                },
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
        let linger = self.shared.linger;
        let mut channels = self.shared.channels();
        let Some(entry) = channels.get_mut(&self.channel) else {
            return;
        };
        // Unregistered unless another waiter with the same id has registered since.
        self.mine.close();
        if entry.addressed.get(&self.id).is_some_and(|w| w.is_closed()) {
            entry.addressed.remove(&self.id);
        }
        entry.waiters -= 1;
        if entry.waiters > 0 {
            return;
        }
        if linger.is_zero() {
            channels.remove(&self.channel);
            // Under the registry lock, so a new first subscriber's Subscribe is queued after
            // this Unsubscribe and wins.
            let _ = self
                .shared
                .commands
                .send(Command::Unsubscribe(self.channel.clone()));
        } else {
            // Kept for the next waiter; the listener unsubscribes it after the linger.
            entry.idle_since = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::Duration;

    use tokio::sync::watch;

    use super::super::wake::mac;
    use super::super::Channel;
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaa0000000000000000";
    const B: &str = "bbbbbbbbbbbbbbbb1111111111111111";

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

    #[tokio::test]
    async fn an_addressed_wake_up_reaches_its_waiter_alone() {
        let (commands, _queue) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            channels: Mutex::new(HashMap::new()),
            commands,
            linger: Duration::from_secs(10),
        });
        let mut channel = Channel {
            waiters: 0,
            idle_since: None,
            wake: broadcast::channel(8).0,
            addressed: HashMap::new(),
            ready: watch::channel(Some(true)).0,
        };
        let mut a = channel.join("c", A, &shared);
        let mut b = channel.join("c", B, &shared);
        channel.deliver(Wake::Only(A[..16].into()));
        assert_eq!(next(&mut a, A).await, Woken::Retry);
        assert!(quiet(&mut b), "b's task was woken for a");
        // Semaphores publish whole tokens: addressed by their first 16 characters too.
        channel.deliver(Wake::Only(B.into()));
        assert_eq!(next(&mut b, B).await, Woken::Retry);
        assert!(quiet(&mut a));
        let claim = Duration::from_secs(1);
        channel.deliver(Wake::Handed {
            id: B[..16].into(),
            fence: 5,
            claim,
            mac: mac(B, 5, claim).into(),
            next: Some(A[..16].into()),
        });
        assert_eq!(next(&mut b, B).await, Woken::Handed { fence: 5, claim });
        assert_eq!(next(&mut a, A).await, Woken::HandedAhead { claim });
        channel.deliver(Wake::All);
        assert_eq!(next(&mut a, A).await, Woken::Retry);
        assert_eq!(next(&mut b, B).await, Woken::Retry);
    }
}
