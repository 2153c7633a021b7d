//! A steady stream of grants must not keep the watchdog from renewing, expiring and
//! releasing: found by review (a task that re-planned from scratch whenever a lease arrived
//! while it planned never got to its tick under 2,000 grants a second beside 20,000 held
//! leases; a 300 ms lease stayed `Held` for seconds past its validity).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::connection::node::Node;
use crate::connection::quorum::Nodes;
use crate::engine::lease::{Lease, LeaseStatus};
use crate::engine::watchdog::Watchdog;

fn lease(ttl: Duration, renew: bool, count: &Arc<AtomicUsize>) -> Arc<Lease> {
    Arc::new(Lease::new(
        Arc::new(crate::engine::ops::testing::Noop),
        1,
        ttl,
        Instant::now(),
        renew,
        count.clone(),
    ))
}

/// Pushes `rate` short holds of 30 s leases a second from another thread until `stop`.
fn grants(watchdog: Watchdog, rate: u64, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let count = Arc::new(AtomicUsize::new(0));
        let started = std::time::Instant::now();
        let mut pushed = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let due =
                u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX) * rate / 1_000_000;
            while pushed < due {
                let short = lease(Duration::from_secs(30), true, &count);
                watchdog.track(short.clone());
                short.finish(LeaseStatus::Released);
                pushed += 1;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_grants_never_keeps_the_watchdog_from_its_work() {
    // A node nobody answers on: expiry, not renewal, is what this test watches.
    let node = Node::lazy("redis://127.0.0.1:1/", &Default::default()).expect("valid URL");
    let watchdog = Watchdog::spawn(Nodes::single(node));
    let count = Arc::new(AtomicUsize::new(0));
    // Held all along, renewed long after the test: the task plans its 1 s suspend check.
    let held: Vec<Arc<Lease>> = (0..20_000)
        .map(|_| lease(Duration::from_secs(60), true, &count))
        .collect();
    for lease in &held {
        watchdog.track(lease.clone());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let pusher = grants(watchdog.clone(), 2_000, stop.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Valid for 294 ms: its loss must be reported about then, not seconds later.
    let canary = lease(Duration::from_millis(300), false, &count);
    let granted = Instant::now();
    watchdog.track(canary.clone());
    let mut status = canary.subscribe();
    let reported = tokio::time::timeout(
        Duration::from_secs(4),
        status.wait_for(|s| *s != LeaseStatus::Held),
    )
    .await;
    let lost_after = granted.elapsed();
    let asked = Instant::now();
    let flushed = tokio::time::timeout(Duration::from_secs(4), watchdog.flush()).await;
    let flushed_after = asked.elapsed();
    stop.store(true, Ordering::SeqCst);
    tokio::task::spawn_blocking(move || pusher.join())
        .await
        .expect("join")
        .expect("pusher");
    assert!(
        reported.is_ok(),
        "a 300 ms lease still Held 4 s after its grant"
    );
    assert!(
        lost_after < Duration::from_secs(1),
        "a 300 ms lease's expiry was reported {lost_after:?} after its grant"
    );
    assert!(flushed.is_ok(), "a flush unanswered for 4 s");
    assert!(
        flushed_after < Duration::from_secs(1),
        "flush took {flushed_after:?}"
    );
}
