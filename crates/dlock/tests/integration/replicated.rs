//! A master with replicas: the replica guard (WAIT), and following a Sentinel failover.

use std::time::Duration;

use dlock::{Client, ClientOptions, LockOptions, SentinelConfig, Wait};
use dlock_test::{RedisServer, Sentinels, MASTER_NAME};
use tokio::time::{timeout, Instant};

use crate::support::{client, take_and_release};

fn guarded() -> LockOptions {
    LockOptions::new().min_replicas(1, Duration::from_millis(200))
}

#[tokio::test]
async fn with_the_replica_up_the_lock_is_on_the_replica_when_the_call_returns() {
    let master = RedisServer::start();
    let replica = RedisServer::start_replica_of(&master);
    let c = client(&master).await;
    let guard = c
        .lock_with("job", guarded())
        .unwrap()
        .try_lock()
        .await
        .unwrap();
    let on_replica: Option<String> = replica.cmd("GET", &["job"]);
    assert_eq!(
        on_replica.map(|t| t.len()),
        Some(32),
        "the replica has the lock already"
    );
    guard.release().await.unwrap();
}

#[tokio::test]
async fn with_the_replica_paused_the_guard_fails_cleanly_and_leaves_no_lock() {
    let master = RedisServer::start();
    let mut replica = RedisServer::start_replica_of(&master);
    let c = client(&master).await;
    replica.pause();
    let err = c
        .lock_with("job", guarded())
        .unwrap()
        .try_lock()
        .await
        .unwrap_err();
    replica.resume();
    assert!(err.is_unavailable(), "{err:?}");
    assert!(err.to_string().contains("0 of 1 replicas"), "{err}");
    assert_eq!(
        master.cmd::<i64>("EXISTS", &["job"]),
        0,
        "no lock left on the master"
    );
    // Without the guard, the same lock is granted (it was the replica, not the lock).
    take_and_release(&c, "job").await;
}

#[tokio::test]
async fn a_lease_whose_replica_stops_acknowledging_is_reported_lost() {
    let master = RedisServer::start();
    let mut replica = RedisServer::start_replica_of(&master);
    let c = client(&master).await;
    let options = guarded().ttl(Duration::from_secs(1));
    let guard = c
        .lock_with("job", options)
        .unwrap()
        .try_lock()
        .await
        .unwrap();
    replica.pause();
    let reason = timeout(Duration::from_secs(3), guard.lost()).await;
    replica.resume();
    match reason.expect("loss reported within the lease") {
        dlock::LossReason::Unreachable(why) => assert!(why.contains("replicas"), "{why}"),
        other => panic!("unexpected loss reason {other:?}"),
    }
}

#[tokio::test]
async fn invalid_replica_guards_are_config_errors() {
    let master = RedisServer::start();
    let c = client(&master).await;
    let zero = LockOptions::new().min_replicas(0, Duration::from_millis(100));
    assert!(c.lock_with("job", zero).unwrap_err().is_config());
    let too_long = LockOptions::new()
        .ttl(Duration::from_secs(1))
        .min_replicas(1, Duration::from_secs(2));
    assert!(c.lock_with("job", too_long).unwrap_err().is_config());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_follows_a_sentinel_failover_and_new_locks_work() {
    let mut master = RedisServer::start();
    let replica = RedisServer::start_replica_of(&master);
    let sentinels = Sentinels::start(&master, 3, 1);
    let options = ClientOptions::new()
        .command_timeout(Duration::from_millis(500))
        .connect_timeout(Duration::from_secs(1));
    let config = SentinelConfig::new(MASTER_NAME, sentinels.urls());
    let c = Client::sentinel_with(config, options).await.unwrap();
    let guard = c.lock("before").unwrap().try_lock().await.unwrap();
    guard.release().await.unwrap();

    let old_port = master.port();
    master.kill();
    // The sentinels must outlive the wait: hand them back from the blocking task.
    let (_sentinels, new_port) = tokio::task::spawn_blocking(move || {
        let port = sentinels.wait_for_failover(old_port);
        (sentinels, port)
    })
    .await
    .unwrap();
    assert_eq!(new_port, replica.port(), "the replica was promoted");
    // The client follows: a waiting lock() rides out the switch.
    let waiting = LockOptions::new().wait(Wait::Limit(Duration::from_secs(20)));
    let guard = c.lock_with("after", waiting).unwrap().lock().await.unwrap();
    let on_new_master: Option<String> = replica.cmd("GET", &["after"]);
    assert!(
        on_new_master.is_some(),
        "the new lock lives on the promoted master"
    );
    // Wake-ups follow too: with a 10 s re-check, only a publish on the new master can hand
    // the lock to a waiter quickly.
    let waiter_lock = c
        .lock_with("after", LockOptions::new().recheck(Duration::from_secs(10)))
        .unwrap();
    let waiter = tokio::spawn(async move { waiter_lock.lock().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = replica.command_calls("evalsha");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        replica.command_calls("evalsha"),
        before,
        "the waiter polled the new master instead of waiting for a wake-up"
    );
    let released = tokio::time::Instant::now();
    guard.release().await.unwrap();
    let handed = timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        released.elapsed() < Duration::from_secs(3),
        "the waiter was not woken"
    );
    handed.release().await.unwrap();
}

/// Polls until a client of `server` is blocked in `WAIT` (the replica guard is stalled).
async fn until_a_wait_blocks(server: &RedisServer) {
    let blocked = timeout(Duration::from_secs(10), async {
        loop {
            let clients: String = server.cmd("CLIENT", &["LIST"]);
            if clients.lines().any(|l| l.contains("cmd=wait")) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(blocked.is_ok(), "no WAIT ever blocked on the master");
}

/// Issue 9: a replica guard's `WAIT` used to run on the client's one shared connection, so a
/// stalled replica froze every other lock of the client behind it (acquires, renewals).
#[tokio::test]
async fn a_stalled_replica_guard_never_delays_the_clients_other_locks() {
    let master = RedisServer::start();
    let mut replica = RedisServer::start_replica_of(&master);
    // The default command timeout (2 s) is longer than the guard's WAIT, so nothing but the
    // WAIT itself bounds the stall.
    let c = Client::connect(&master.url()).await.unwrap();
    let wait = Duration::from_millis(1500);
    let guarded = c
        .lock_with(
            "guarded",
            LockOptions::new()
                .ttl(Duration::from_millis(1800))
                .min_replicas(1, wait),
        )
        .unwrap()
        .try_lock()
        .await
        .unwrap();
    // A short lease renewed every 200 ms: a renewal held up for 1.5 s loses it.
    let short = c
        .lock_with("short", LockOptions::new().ttl(Duration::from_millis(600)))
        .unwrap()
        .try_lock()
        .await
        .unwrap();
    replica.pause();
    until_a_wait_blocks(&master).await;
    let started = Instant::now();
    let other = c.lock("other").unwrap().try_lock().await.unwrap();
    let took = started.elapsed();
    assert!(took < wait / 3, "an unguarded acquire waited {took:?}");
    other.release().await.unwrap();
    // Two whole WAITs of the guarded lease's renewals: the short lease is renewed throughout.
    let lost = timeout(2 * wait, short.lost()).await;
    assert!(lost.is_err(), "the short lease was lost: {lost:?}");
    assert!(short.is_held());
    replica.resume();
    short.release().await.unwrap();
    drop(guarded);
}

/// Issue 9: the guard's `WAIT` may block for its whole timeout; the command timeout used to
/// cut it short (an "unavailable: timed out" instead of the replica count).
#[tokio::test]
async fn a_replica_guard_waits_its_own_timeout_not_the_command_timeout() {
    let master = RedisServer::start();
    let mut replica = RedisServer::start_replica_of(&master);
    let c = client(&master).await; // 500 ms command timeout
    let wait = Duration::from_millis(1200);
    let lock = c
        .lock_with("job", LockOptions::new().min_replicas(1, wait))
        .unwrap();
    replica.pause();
    let started = Instant::now();
    let err = lock.try_lock().await.unwrap_err();
    let took = started.elapsed();
    replica.resume();
    assert!(err.to_string().contains("0 of 1 replicas"), "{err}");
    assert!(took >= wait, "gave up after {took:?}");
    assert_eq!(master.cmd::<i64>("EXISTS", &["job"]), 0, "rolled back");
}
