//! A Redis restart (or failover) that loses a held lock is always reported: at once when the
//! connection drops and comes back, and at the latest by `release()`, which retries on the new
//! connection instead of giving up with a connection error.
//!
//! The restarts block the test's runtime for a moment; the watchdog then finds the dropped
//! connection as it would after any restart it slept through.

use std::time::Duration;

use dlock::{Client, ClientOptions, Error, LeaseStatus, LockOptions, LossReason, Owner};
use dlock_test::{RedisServer, RedisServers, TcpProxy};
use tokio::time::{timeout, Instant};

use crate::support::{client, monitored};

/// Long enough that the watchdog's next regular renewal (a third of it) is far away: a loss
/// found within a few seconds was found by the reconnect, not by a tick.
const LONG_TTL: Duration = Duration::from_secs(30);
/// How long the re-verification after a restart may take: the reconnect plus a few renewal
/// retries, far below the 10 s renewal interval of `LONG_TTL`.
const REVERIFY_WITHIN: Duration = Duration::from_secs(3);

fn lost_reason(error: Error) -> LossReason {
    match error {
        Error::Lost { reason, .. } => reason,
        other => panic!("expected Lost, got {other:?}"),
    }
}

#[tokio::test]
async fn a_lease_lost_to_a_restart_is_reported_at_once() {
    for fair in [false, true] {
        let mut server = RedisServer::start();
        let holder = client(&server).await;
        let options = LockOptions::new().ttl(LONG_TTL).fair(fair);
        let guard = holder
            .lock_with("nightly", options.clone())
            .unwrap()
            .try_lock()
            .await
            .unwrap();
        monitored(&server, 1).await;
        server.restart_empty();
        let restarted = Instant::now();
        let other = client(&server).await;
        let theirs = other
            .lock_with("nightly", options)
            .unwrap()
            .try_lock()
            .await
            .expect("the restarted server has no lock");
        let reason = timeout(REVERIFY_WITHIN, guard.lost())
            .await
            .unwrap_or_else(|_| panic!("fair={fair}: the loss was not reported after a restart"));
        assert_eq!(reason, LossReason::KeyGoneAfterReconnect, "fair={fair}");
        assert!(restarted.elapsed() < REVERIFY_WITHIN);
        assert_eq!(
            lost_reason(guard.release().await.unwrap_err()),
            LossReason::KeyGoneAfterReconnect
        );
        theirs.release().await.unwrap();
    }
}

#[tokio::test]
async fn a_restart_between_the_grant_and_the_monitors_start_is_caught_too() {
    let mut server = RedisServer::start();
    let holder = client(&server).await;
    let guard = holder
        .lock_with("early", LockOptions::new().ttl(LONG_TTL))
        .unwrap()
        .try_lock()
        .await
        .unwrap();
    // No await between the grant and the restart: the watchdog has not started its monitors.
    server.restart_empty();
    let reason = timeout(REVERIFY_WITHIN, guard.lost())
        .await
        .expect("found when the monitor first connects");
    // The monitor never saw this connection drop: a plain "key gone".
    assert_eq!(reason, LossReason::KeyGone);
}

#[tokio::test]
async fn a_release_after_a_restart_reports_the_loss_instead_of_a_connection_error() {
    // Renewal off: nothing but the release itself touches the dropped connection.
    let mut server = RedisServer::start();
    let holder = client(&server).await;
    let guard = holder
        .lock_with("short-job", LockOptions::new().ttl(LONG_TTL).renew(false))
        .unwrap()
        .try_lock()
        .await
        .unwrap();
    server.restart_empty();
    let other = client(&server).await;
    let theirs = other.lock("short-job").unwrap().try_lock().await.unwrap();
    theirs.release().await.unwrap();
    let error = guard.release().await.expect_err("the lease was lost");
    assert_eq!(lost_reason(error), LossReason::KeyGone);
}

#[tokio::test]
async fn a_release_that_cannot_be_confirmed_before_the_lease_ends_is_a_loss() {
    let mut server = RedisServer::start();
    let holder = Client::connect_with(
        &server.url(),
        ClientOptions::new()
            .command_timeout(Duration::from_millis(300))
            .connect_timeout(Duration::from_millis(300)),
    )
    .await
    .unwrap();
    let ttl = Duration::from_secs(2);
    let guard = holder
        .lock_with("gone", LockOptions::new().ttl(ttl).renew(false))
        .unwrap()
        .try_lock()
        .await
        .unwrap();
    server.kill();
    let started = Instant::now();
    let error = guard.release().await.expect_err("nobody can vouch for it");
    assert!(
        matches!(lost_reason(error), LossReason::Unreachable(_)),
        "an unconfirmed release is an unreachable-loss"
    );
    // Retried until the validity ended, not beyond it by more than one command timeout.
    assert!(started.elapsed() <= ttl + Duration::from_millis(600));
}

#[tokio::test]
async fn redlock_reports_a_loss_when_a_majority_restarts_and_not_when_one_master_does() {
    let mut servers = RedisServers::start(3);
    let holder = Client::redlock_with(
        &servers.urls(),
        ClientOptions::new().command_timeout(Duration::from_millis(500)),
    )
    .await
    .unwrap();
    let guard = holder
        .lock_with("quorum", LockOptions::new().ttl(LONG_TTL))
        .unwrap()
        .try_lock()
        .await
        .unwrap();

    for server in servers.iter() {
        monitored(server, 1).await;
    }
    // A grant needs only a majority: the third node's SET may have been abandoned. Restart a
    // node the lease does not need (the non-holder if there is one): the re-verification runs
    // (the restarted server sees an MGET) and the lease stays held.
    let holding: Vec<usize> = (0..3)
        .filter(|&i| servers[i].cmd::<i64>("EXISTS", &["quorum"]) == 1)
        .collect();
    let spare = (0..3).find(|i| !holding.contains(i)).unwrap_or(0);
    let others: Vec<usize> = (0..3).filter(|&i| i != spare).collect();
    let reads = |servers: &RedisServers| -> u64 {
        others
            .iter()
            .map(|&i| servers[i].command_calls("mget"))
            .sum()
    };
    let reads_before = reads(&servers);
    servers[spare].restart_empty();
    // Re-verified at once, not at the next tick in 10 s. The nodes that stayed up are asked
    // (the restarted one may not be: the check ends as soon as a majority has answered).
    let deadline = Instant::now() + REVERIFY_WITHIN;
    while reads(&servers) == reads_before {
        assert!(
            Instant::now() < deadline,
            "no re-verification after a restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The watchdog handles a flush only after the renewal in progress is tallied.
    holder.flush().await;
    assert_eq!(guard.status(), LeaseStatus::Held);

    // A node that holds it restarts too: only one of three is left.
    let needed = holding.into_iter().find(|&i| i != spare).unwrap();
    servers[needed].restart_empty();
    let reason = timeout(REVERIFY_WITHIN, guard.lost())
        .await
        .expect("a majority lost the key: reported at once");
    assert_eq!(reason, LossReason::KeyGoneAfterReconnect);
}

#[tokio::test]
async fn a_reentrant_lease_lost_to_a_restart_is_reported_at_once() {
    let mut server = RedisServer::start();
    let holder = client(&server).await;
    let owner = Owner::new().unwrap();
    let guard = holder
        .reentrant_lock_with("ledger", LockOptions::new().ttl(LONG_TTL))
        .unwrap()
        .try_lock(&owner)
        .await
        .unwrap();
    monitored(&server, 1).await;
    server.restart_empty();
    let reason = timeout(REVERIFY_WITHIN, guard.lost())
        .await
        .expect("reported after the restart");
    assert_eq!(reason, LossReason::KeyGoneAfterReconnect);
    assert!(guard.release().await.unwrap_err().is_lost());
}

#[tokio::test]
async fn a_reentrant_release_after_a_restart_reports_the_loss() {
    let mut server = RedisServer::start();
    let holder = client(&server).await;
    let owner = Owner::new().unwrap();
    let guard = holder
        .reentrant_lock_with("ledger", LockOptions::new().ttl(LONG_TTL).renew(false))
        .unwrap()
        .try_lock(&owner)
        .await
        .unwrap();
    server.restart_empty();
    let other = client(&server).await;
    let theirs = other
        .reentrant_lock("ledger")
        .unwrap()
        .try_lock(&Owner::new().unwrap())
        .await
        .unwrap();
    assert_eq!(
        lost_reason(guard.release().await.unwrap_err()),
        LossReason::KeyGone
    );
    theirs.release().await.unwrap();
}

#[tokio::test]
async fn a_redlock_release_after_a_majority_restarted_reports_the_loss() {
    let mut servers = RedisServers::start(3);
    let holder = Client::redlock_with(
        &servers.urls(),
        ClientOptions::new().command_timeout(Duration::from_millis(500)),
    )
    .await
    .unwrap();
    let guard = holder
        .lock_with("quorum", LockOptions::new().ttl(LONG_TTL).renew(false))
        .unwrap()
        .try_lock()
        .await
        .unwrap();
    servers[0].restart_empty();
    servers[1].restart_empty();
    let error = guard.release().await.expect_err("a majority lost the key");
    assert_eq!(lost_reason(error), LossReason::KeyGone);
}

#[tokio::test]
async fn reverify_blocks_loss_reporting_past_validity() {
    let server = RedisServer::start();
    let proxy = TcpProxy::start(server.port());
    let client = Client::connect_with(
        &proxy.url(),
        ClientOptions::new()
            .command_timeout(Duration::from_secs(3))
            .connect_timeout(Duration::from_secs(3)),
    )
    .await
    .unwrap();
    let guard = client
        .lock_with("rv", LockOptions::new().ttl(Duration::from_secs(1)))
        .unwrap()
        .try_lock()
        .await
        .unwrap();
    monitored(&server, 1).await;
    let valid_end = Instant::now() + guard.remaining();
    // A black hole, then the server drops every client: the monitor sees the drop at once
    // (the proxy forwards the FIN even while cut) and a re-verification starts.
    proxy.cut();
    let _: () = server.cmd("CLIENT", &["KILL", "TYPE", "normal"]);
    let _ = timeout(Duration::from_secs(10), guard.lost())
        .await
        .expect("lost at some point");
    let late = Instant::now().saturating_duration_since(valid_end);
    assert!(
        late < Duration::from_millis(300),
        "loss reported {late:?} after the lease's validity ended (watchdog blocked in reverify)"
    );
}

/// Behind Sentinel, a manual failover keeps the old master up, writable, for seconds (Sentinel
/// demotes it later: about 10 s here), while the new master may grant the lock to anyone. Here
/// the promoted replica never had the lock, so the lease is lost: reported as soon as the
/// sentinels announce the switch (`+switch-master`), with the re-verification reading the new
/// master. Before, the loss was found only when the old master was demoted 10 s later.
#[tokio::test]
async fn behind_sentinel_a_failover_to_a_replica_without_the_lock_is_reported_at_once() {
    use dlock::SentinelConfig;
    use dlock_test::{Sentinels, MASTER_NAME};
    let master = RedisServer::start();
    let replica = RedisServer::start_replica_of(&master);
    let sentinels = Sentinels::start(&master, 3, 1);
    let config = SentinelConfig::new(MASTER_NAME, sentinels.urls());
    let holder = Client::sentinel_with(
        config,
        ClientOptions::new()
            .command_timeout(Duration::from_millis(500))
            .connect_timeout(Duration::from_secs(1)),
    )
    .await
    .unwrap();
    let guard = holder
        .lock_with("failover", LockOptions::new().ttl(LONG_TTL))
        .unwrap()
        .try_lock()
        .await
        .unwrap();
    monitored(&master, 1).await;
    // The replica loses the lock behind the master's back (a write it never got, in effect).
    let deadline = Instant::now() + Duration::from_secs(5);
    while replica.cmd::<i64>("EXISTS", &["failover"]) == 0 {
        assert!(Instant::now() < deadline, "the replica never got the lock");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _: () = replica.cmd("CONFIG", &["SET", "replica-read-only", "no"]);
    let _: () = replica.cmd("DEL", &["failover"]);
    let old_port = master.port();
    let sentinel_port: u16 = sentinels.urls()[0]
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let mut sentinel = redis::Client::open(format!("redis://127.0.0.1:{sentinel_port}/"))
        .unwrap()
        .get_connection()
        .unwrap();
    // A sentinel may not count the replica as promotable yet (NOGOODSLAVE) right after it
    // (re)connected: ask again until it does.
    let asked = Instant::now();
    loop {
        let reply: redis::RedisResult<()> = redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg(MASTER_NAME)
            .query(&mut sentinel);
        match reply {
            Ok(()) => break,
            Err(e)
                if e.code() == Some("NOGOODSLAVE") && asked.elapsed() < Duration::from_secs(20) =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("SENTINEL FAILOVER: {e}"),
        }
    }
    let (_sentinels, new_port) = tokio::task::spawn_blocking(move || {
        let port = sentinels.wait_for_failover(old_port);
        (sentinels, port)
    })
    .await
    .unwrap();
    assert_eq!(new_port, replica.port());
    let switched = Instant::now();
    let reason = timeout(REVERIFY_WITHIN, guard.lost())
        .await
        .expect("the lease lost in the failover is reported at once");
    assert_eq!(reason, LossReason::KeyGoneAfterReconnect);
    assert!(switched.elapsed() < REVERIFY_WITHIN);
}
