//! [`Fanout`]: calls to several nodes in flight at once, their results taken as they come.
//!
//! # Why not `FuturesUnordered`
//! `FuturesUnordered` wakes its own task again whenever it has polled every future it holds and
//! all are still pending (its guard against starving the executor). That is the case at the
//! first poll of every fan-out, even of one call to one Redis: the task is queued again and
//! polled for nothing, and on a multi-thread tokio runtime a task that wakes itself is
//! re-queued as a yield, which wakes another worker thread. That was one wasted thread wake-up
//! per acquire and per release, on the hot path of every lock. With a handful of nodes,
//! polling each call still in flight whenever one of them wakes the task costs less.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;

/// Futures polled together; a stream of their outputs in the order they complete (outputs
/// ready at the same poll come in the order the futures were given). Each future is polled
/// only until it completes; dropping the stream drops those still in flight. Never wakes its
/// own task: a wake-up comes from one of the futures. Each wake-up polls every future still
/// in flight, so a fan-out to `n` nodes costs up to `n²` polls: nothing for a few masters.
pub(crate) struct Fanout<Fut> {
    calls: Vec<Option<Pin<Box<Fut>>>>,
    in_flight: usize,
}

impl<Fut> Fanout<Fut> {
    /// How many futures are still in flight.
    pub fn len(&self) -> usize {
        self.in_flight
    }

    /// No future left in flight.
    pub fn is_empty(&self) -> bool {
        self.in_flight == 0
    }
}

impl<Fut: Future> FromIterator<Fut> for Fanout<Fut> {
    fn from_iter<I: IntoIterator<Item = Fut>>(calls: I) -> Self {
        let calls: Vec<_> = calls.into_iter().map(|call| Some(Box::pin(call))).collect();
        Fanout {
            in_flight: calls.len(),
            calls,
        }
    }
}

impl<Fut: Future> Stream for Fanout<Fut> {
    type Item = Fut::Output;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Fut::Output>> {
        let this = self.get_mut();
        if this.in_flight == 0 {
            return Poll::Ready(None);
        }
        for slot in &mut this.calls {
            let Some(call) = slot else { continue };
            if let Poll::Ready(output) = call.as_mut().poll(cx) {
                *slot = None;
                this.in_flight -= 1;
                return Poll::Ready(Some(output));
            }
        }
        Poll::Pending
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.in_flight, Some(self.in_flight))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    use futures_util::StreamExt;

    use super::*;

    /// Counts the wake-ups of the task polling the fan-out.
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn calls_all_pending_do_not_wake_the_task() {
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let (mut senders, receivers): (Vec<_>, Vec<_>) = (0..3)
            .map(|_| tokio::sync::oneshot::channel::<u32>())
            .unzip();
        let mut fanout: Fanout<_> = receivers.into_iter().collect();
        assert!(fanout.poll_next_unpin(&mut cx).is_pending());
        // FuturesUnordered woke the task here (see the module doc).
        assert_eq!(counter.0.load(Ordering::SeqCst), 0);
        senders.remove(1).send(2).unwrap();
        assert_eq!(
            counter.0.load(Ordering::SeqCst),
            1,
            "a call's completion wakes it"
        );
        assert!(matches!(
            fanout.poll_next_unpin(&mut cx),
            Poll::Ready(Some(Ok(2)))
        ));
        assert!(!fanout.is_empty());
        assert!(fanout.poll_next_unpin(&mut cx).is_pending());
        drop(senders);
        // Both remaining senders dropped: each receiver completes (with an error), in turn.
        assert!(matches!(
            fanout.poll_next_unpin(&mut cx),
            Poll::Ready(Some(Err(_)))
        ));
        assert!(matches!(
            fanout.poll_next_unpin(&mut cx),
            Poll::Ready(Some(Err(_)))
        ));
        assert!(fanout.is_empty());
        assert!(matches!(fanout.poll_next_unpin(&mut cx), Poll::Ready(None)));
    }

    /// Random schedules of completions and polls, with a fresh waker at every poll: every
    /// output comes out once, a pending poll leaves no output ready and does not wake itself,
    /// the next completion wakes that poll's waker, and the counts are exact throughout.
    #[test]
    fn random_schedules_lose_no_wake_up_and_repeat_no_output() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..5_000 {
            let n = rng.usize(1..10);
            let (senders, receivers): (Vec<_>, Vec<_>) = (0..n)
                .map(|_| tokio::sync::oneshot::channel::<usize>())
                .unzip();
            let mut senders: Vec<_> = senders.into_iter().map(Some).collect();
            let mut fanout: Fanout<_> = receivers.into_iter().collect();
            let (mut sent, mut out) = (0, vec![false; n]);
            let mut waiting: Option<Arc<Counter>> = None;
            loop {
                if sent < n && rng.bool() {
                    let open: Vec<usize> = (0..n).filter(|&i| senders[i].is_some()).collect();
                    let i = open[rng.usize(..open.len())];
                    senders[i].take().unwrap().send(i).unwrap();
                    sent += 1;
                    if let Some(waiting) = waiting.take() {
                        assert_eq!(waiting.0.load(Ordering::SeqCst), 1, "lost wake-up");
                    }
                    continue;
                }
                let counter = Arc::new(Counter(AtomicUsize::new(0)));
                let waker = Waker::from(counter.clone());
                let returned = out.iter().filter(|&&o| o).count();
                match fanout.poll_next_unpin(&mut Context::from_waker(&waker)) {
                    Poll::Ready(Some(Ok(i))) => assert!(!std::mem::replace(&mut out[i], true)),
                    Poll::Ready(None) => break assert!(out.iter().all(|&o| o)),
                    Poll::Ready(Some(Err(_))) => unreachable!("no sender is dropped"),
                    Poll::Pending => {
                        assert_eq!(sent, returned, "pending while an output is ready");
                        assert_eq!(counter.0.load(Ordering::SeqCst), 0, "woke itself");
                        waiting = Some(counter);
                    }
                }
                let left = n - out.iter().filter(|&&o| o).count();
                assert_eq!((fanout.len(), fanout.is_empty()), (left, left == 0));
            }
        }
    }

    #[test]
    fn dropping_it_drops_the_calls_in_flight() {
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..3)
            .map(|_| tokio::sync::oneshot::channel::<u8>())
            .unzip();
        let mut fanout: Fanout<_> = receivers.into_iter().collect();
        let waker = Waker::from(Arc::new(Counter(AtomicUsize::new(0))));
        assert!(fanout
            .poll_next_unpin(&mut Context::from_waker(&waker))
            .is_pending());
        drop(fanout);
        assert!(senders.iter().all(|sender| sender.is_closed()));
    }

    #[test]
    fn futures_unordered_wakes_itself_when_all_are_pending() {
        // The behaviour this type exists to avoid: if a futures-util update drops it, this
        // test says so, and `Fanout` may go.
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let (_sender, receiver) = tokio::sync::oneshot::channel::<u32>();
        let mut unordered: futures_util::stream::FuturesUnordered<_> =
            std::iter::once(receiver).collect();
        assert!(unordered.poll_next_unpin(&mut cx).is_pending());
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
    }
}
