//! A network partition between one holder and Redis, while others still reach it.

use std::time::Duration;

use dlock::{Client, ClientOptions, LockOptions, LossReason, Wait};
use dlock_test::{RedisServer, TcpProxy};
use tokio::time::{sleep, timeout, Instant};

use crate::support::client;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_holder_knows_its_lease_is_over_before_anyone_else_can_have_it() {
    let server = RedisServer::start();
    let proxy = TcpProxy::start(server.port());
    let options = ClientOptions::new().command_timeout(Duration::from_millis(300));
    let a = Client::connect_with(&proxy.url(), options).await.unwrap();
    let b = client(&server).await;
    let ttl = Duration::from_secs(1);
    let guard = a
        .lock_with("part", LockOptions::new().ttl(ttl))
        .unwrap()
        .try_lock()
        .await
        .unwrap();
    sleep(Duration::from_millis(400)).await; // renewed at least once
    proxy.cut();
    // From here no renewal can reach Redis: A's conservative deadline is fixed.
    let a_deadline = Instant::now() + guard.remaining();
    assert!(guard.is_held());

    let waiting = LockOptions::new().wait(Wait::Limit(Duration::from_secs(5)));
    let theirs = b.lock_with("part", waiting).unwrap().lock().await.unwrap();
    let b_granted_at = Instant::now();
    // The heart of the lease model: the holder's own deadline (send time of its last renewal
    // plus TTL, minus drift) passes before the server can hand the lock to anyone else.
    assert!(
        a_deadline < b_granted_at,
        "B was granted {:?} before A's lease ended by A's own clock",
        a_deadline - b_granted_at
    );
    // And A is told, within one renewal interval of that deadline.
    let reason = timeout(Duration::from_secs(2), guard.lost())
        .await
        .expect("A learns of the loss");
    assert!(matches!(reason, LossReason::Unreachable(_)), "{reason:?}");
    assert!(Instant::now() <= a_deadline + ttl / 3 + Duration::from_millis(200));
    assert!(!guard.is_held());

    proxy.heal();
    // A's stale release cannot touch B's lock.
    assert!(guard.release().await.unwrap_err().is_lost());
    assert!(theirs.is_held());
    theirs.release().await.unwrap();
}

#[tokio::test]
async fn a_slow_link_still_holds_the_lease_when_replies_come_within_the_timeout() {
    let server = RedisServer::start();
    let proxy = TcpProxy::start(server.port());
    let options = ClientOptions::new().command_timeout(Duration::from_millis(500));
    let a = Client::connect_with(&proxy.url(), options).await.unwrap();
    let guard = a
        .lock_with("slow", LockOptions::new().ttl(Duration::from_secs(1)))
        .unwrap()
        .try_lock()
        .await
        .unwrap();
    proxy.delay(Duration::from_millis(50)); // 100 ms round trips
    sleep(Duration::from_secs(2)).await;
    assert!(guard.is_held(), "{:?}", guard.status());
    guard.release().await.unwrap();
}
