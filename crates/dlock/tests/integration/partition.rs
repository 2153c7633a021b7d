//! A network partition between one holder and Redis, while others still reach it.

use std::time::Duration;

use dlock::{Client, ClientOptions, LockOptions, LossReason, Wait};
use dlock_test::{RedisServer, TcpProxy};
use tokio::time::{sleep, timeout, Instant};

use crate::support::{client, epsilon};

/// A holder cut off from Redis (its link black-holed, no reset) blocks the others for at most
/// one TTL from the cut, and knows its lease is over before anyone else can have it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_holder_knows_its_lease_is_over_before_anyone_else_can_have_it() {
    let server = RedisServer::start();
    let proxy = TcpProxy::start(server.port());
    let options = ClientOptions::new().command_timeout(Duration::from_millis(300));
    let a = Client::connect_with(&proxy.url(), options).await.unwrap();
    let b = client(&server).await;
    let epsilon = epsilon(&b).await;
    let ttl = Duration::from_secs(1);
    let guard = a
        .lock_with("part", LockOptions::new().ttl(ttl))
        .unwrap()
        .try_lock()
        .await
        .unwrap();
    // Cut right after a renewal landed (the key's PTTL jumps back up): the server's expiry
    // is then fixed at most one TTL after the cut.
    let renewals = server.command_calls("evalsha");
    while server.command_calls("evalsha") == renewals {
        sleep(Duration::from_millis(2)).await;
    }
    proxy.cut();
    let cut_at = Instant::now();
    // From here no renewal can reach Redis. The reply to the renewal just seen may still be on
    // its way into A's watchdog (it came back before the cut): a flush returns only after the
    // watchdog has handled it, and A's conservative deadline is fixed from then on.
    a.flush().await;
    let a_deadline = Instant::now() + guard.remaining();
    assert!(guard.is_held());

    let waiting = LockOptions::new().wait(Wait::Limit(ttl * 2));
    let lock = b.lock_with("part", waiting).unwrap();
    let (theirs, a_lost) = tokio::join!(lock.lock(), async {
        let reason = timeout(ttl * 2, guard.lost()).await;
        (reason, Instant::now())
    });
    let theirs = theirs.expect("B is granted the lock once A's lease has ended");
    let b_granted_at = Instant::now();
    // Liveness: the partitioned holder blocked B for at most one TTL.
    assert!(
        b_granted_at - cut_at <= ttl + epsilon,
        "B was blocked {:?} after the cut (TTL {ttl:?}, ε {epsilon:?})",
        b_granted_at - cut_at
    );
    // The heart of the lease model: the holder's own deadline (send time of its last renewal
    // plus TTL, minus drift) passes before the server can hand the lock to anyone else.
    assert!(
        a_deadline < b_granted_at,
        "B was granted {:?} before A's lease ended by A's own clock",
        a_deadline - b_granted_at
    );
    // And A is told at that deadline, not a renewal interval or a command timeout later.
    let (reason, a_lost_at) = a_lost;
    let reason = reason.expect("A learns of the loss");
    assert!(matches!(reason, LossReason::Unreachable(_)), "{reason:?}");
    assert!(
        a_lost_at <= a_deadline + epsilon,
        "A was told {:?} after its deadline (ε {epsilon:?})",
        a_lost_at - a_deadline
    );
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
