//! Races between the calls that change one lease's expiry (renewals, `extend`, a re-entry,
//! a release), found by a hostile review: the client must never count on a longer lease than
//! the servers keep, and a failed, cancelled or late call must neither lose a healthy lease
//! nor report one that is gone as extended.

use std::time::Duration;

use dlock::{Client, ClientOptions, LockOptions, Owner};
use dlock_test::{RedisServer, TcpProxy};
use tokio::time::{sleep, timeout, Instant};

/// A re-entry (it joins the owner's lease beside its renewals and extends) sent before an
/// extend and applied after it: its EVALSHA met NOSCRIPT, and the SCRIPT LOAD and resend took
/// two more round trips. The client kept the extend's 60 s (the later sent), the server the
/// re-entry's 2 s, and 2.5 s later another owner took the lock while the first still counted
/// on it. A re-entry now never shortens the lease (PEXPIRE GT).
#[tokio::test]
async fn a_reentry_landing_after_a_longer_extend_never_shortens_the_lease() {
    let server = RedisServer::start();
    let proxy = TcpProxy::start(server.port());
    let a = Client::connect_with(
        &proxy.url(),
        ClientOptions::new().command_timeout(Duration::from_secs(5)),
    )
    .await
    .unwrap();
    let lock = a
        .reentrant_lock_with("ledger", LockOptions::new().ttl(Duration::from_secs(2)))
        .unwrap();
    let owner = Owner::new().unwrap();
    let first = lock.lock(&owner).await.unwrap();
    // Script cache empty (SCRIPT FLUSH here; a restart with persistence or a failover alike).
    let _: String = server.cmd("SCRIPT", &["FLUSH"]);
    // extend.lua is loaded again (by this extend); reentrant_acquire.lua is not.
    first.extend(Duration::from_secs(2)).await.unwrap();
    proxy.delay(Duration::from_millis(50));
    let reentry = {
        let (lock, owner) = (lock.clone(), owner.clone());
        tokio::spawn(async move { lock.try_lock(&owner).await })
    };
    sleep(Duration::from_millis(20)).await;
    first.extend(Duration::from_secs(60)).await.unwrap();
    let second = reentry.await.unwrap().unwrap();
    proxy.delay(Duration::ZERO);
    let b = Client::connect(&server.url()).await.unwrap();
    sleep(Duration::from_millis(2500)).await;
    let other = b
        .reentrant_lock("ledger")
        .unwrap()
        .try_lock(&Owner::new().unwrap())
        .await;
    assert!(
        !(first.is_held() && other.is_ok()),
        "two holders at once: the client trusts the extend, the server kept the re-entry's TTL"
    );
    drop(second);
}

/// An extend to a shorter TTL that fails (a timeout): the guard counts on no more than the
/// shorter TTL from the send (the server may have applied it), and the renewal comes due as
/// early, so the lease is renewed at its old length, not declared lost at ~1 s with a healthy
/// server and no renewal tried (the review's finding on the first version of that rule).
#[tokio::test]
async fn a_failed_extend_to_a_shorter_ttl_keeps_the_lease() {
    let mut server = RedisServer::start();
    let a = Client::connect_with(
        &server.url(),
        ClientOptions::new().command_timeout(Duration::from_millis(200)),
    )
    .await
    .unwrap();
    let guard = a
        .lock_with("job", LockOptions::new().ttl(Duration::from_secs(30)))
        .unwrap()
        .try_lock()
        .await
        .unwrap();
    sleep(Duration::from_millis(100)).await;
    server.pause();
    let extended = guard.extend(Duration::from_secs(1)).await;
    assert!(
        extended.is_err(),
        "extended on a frozen server: {extended:?}"
    );
    sleep(Duration::from_millis(50)).await;
    server.resume();
    let calls_before = server.command_calls("evalsha");
    sleep(Duration::from_millis(1100)).await;
    let pttl: i64 = server.cmd("PTTL", &["job"]);
    let calls_after = server.command_calls("evalsha");
    assert!(
        guard.is_held(),
        "the lease was given up with the server healthy and no renewal tried"
    );
    assert!(calls_after > calls_before, "no renewal was tried");
    assert!(
        pttl > 20_000,
        "not renewed at its old length: PTTL {pttl} ms"
    );
}

/// The same with the extend cancelled (timeout around it) while the server is frozen.
#[tokio::test]
async fn a_cancelled_extend_to_a_shorter_ttl_keeps_the_lease() {
    let mut server = RedisServer::start();
    let a = Client::connect_with(
        &server.url(),
        ClientOptions::new().command_timeout(Duration::from_secs(2)),
    )
    .await
    .unwrap();
    let guard = a
        .lock_with("job", LockOptions::new().ttl(Duration::from_secs(30)))
        .unwrap()
        .try_lock()
        .await
        .unwrap();
    sleep(Duration::from_millis(100)).await;
    server.pause();
    let cancelled = timeout(
        Duration::from_millis(100),
        guard.extend(Duration::from_secs(3)),
    )
    .await;
    assert!(cancelled.is_err(), "the extend finished on a frozen server");
    server.resume();
    sleep(Duration::from_millis(3500)).await;
    assert!(guard.is_held(), "lost after a cancelled extend");
}

/// An extend whose reply arrives after the lease's validity ended (renewal off, replies
/// delayed): the lease is lost, and the extend says so instead of returning `Ok`.
#[tokio::test]
async fn an_extend_answered_after_the_lease_ran_out_reports_the_loss() {
    let server = RedisServer::start();
    let proxy = TcpProxy::start(server.port());
    let a = Client::connect_with(
        &proxy.url(),
        ClientOptions::new().command_timeout(Duration::from_secs(5)),
    )
    .await
    .unwrap();
    let guard = a
        .lock_with(
            "job",
            LockOptions::new().ttl(Duration::from_secs(1)).renew(false),
        )
        .unwrap()
        .try_lock()
        .await
        .unwrap();
    // Loads extend.lua (no NOSCRIPT round trip below) and restarts the 1 s lease.
    guard.extend(Duration::from_secs(1)).await.unwrap();
    sleep(Duration::from_millis(550)).await;
    proxy.delay(Duration::from_millis(250));
    let extended = guard.extend(Duration::from_secs(10)).await;
    proxy.delay(Duration::ZERO);
    assert!(
        extended.is_err() || guard.is_held(),
        "extend returned Ok on a lease the guard reports lost"
    );
}

/// A guarded lease (replica guard) whose replica stopped acknowledging: a release is not held
/// up by the watchdog's renewal sitting in its WAIT (the first version of the rule that keeps
/// renewals and extends apart made it wait 1.8 s).
#[tokio::test]
async fn a_release_does_not_wait_behind_a_guarded_renewals_wait() {
    let master = RedisServer::start();
    let mut replica = RedisServer::start_replica_of(&master);
    let a = Client::connect_with(
        &master.url(),
        ClientOptions::new().command_timeout(Duration::from_millis(500)),
    )
    .await
    .unwrap();
    let guard = a
        .lock_with(
            "job",
            LockOptions::new()
                .ttl(Duration::from_secs(3))
                .min_replicas(1, Duration::from_secs(2)),
        )
        .unwrap()
        .try_lock()
        .await
        .unwrap();
    let renewals = master.command_calls("evalsha");
    replica.pause();
    // The first renewal is due 1 s after the grant; its WAIT then blocks (the replica is
    // frozen) for up to the guard's 2 s.
    timeout(Duration::from_secs(3), async {
        while master.command_calls("evalsha") == renewals {
            sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the watchdog renewed");
    let started = Instant::now();
    let released = guard.release().await;
    replica.resume();
    released.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "release waited {:?} behind the watchdog's WAIT",
        started.elapsed()
    );
}
