//! Waiting without polling: wake-ups by pub/sub, bounded re-checks, bounded resources.

use std::time::Duration;

use dlock::{Client, ClientOptions, LockOptions, Wait};
use dlock_test::RedisServer;
use tokio::time::{sleep, timeout, Instant};

use crate::support::{client, take_and_release};

fn waiting(recheck: Duration) -> LockOptions {
    LockOptions::new()
        .wait(Wait::Limit(Duration::from_secs(30)))
        .recheck(recheck)
}

/// A holder that sends nothing while it holds (no renewal), so every command the server counts
/// meanwhile is the waiter's.
async fn silent_holder(c: &Client, name: &str) -> dlock::LockGuard {
    let options = LockOptions::new().ttl(Duration::from_secs(60)).renew(false);
    c.lock_with(name, options)
        .unwrap()
        .try_lock()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_blocked_waiter_sends_a_handful_of_commands_and_is_woken_by_the_release() {
    let server = RedisServer::start();
    let (a, b) = (client(&server).await, client(&server).await);
    let holder = silent_holder(&a, "job").await;
    let evals = server.command_calls("evalsha");
    let subscribes = server.command_calls("subscribe");

    // A 10 s re-check: over 5 s, only a wake-up can get the waiter the lock quickly.
    let lock = b
        .lock_with("job", waiting(Duration::from_secs(10)))
        .unwrap();
    let waiter = tokio::spawn(async move {
        let guard = lock.lock().await;
        (guard, Instant::now())
    });
    sleep(Duration::from_secs(5)).await;
    assert!(!waiter.is_finished());
    let sent = server.command_calls("evalsha") - evals;
    assert!(
        sent <= 3,
        "a waiter blocked for 5 s sent {sent} acquire attempts"
    );
    // The lock's channel, and the client's inbox for hand-offs (its own SUBSCRIBE: an ACL
    // may refuse it alone).
    assert_eq!(server.command_calls("subscribe") - subscribes, 2);

    let released_at = Instant::now();
    holder.release().await.unwrap();
    let (guard, granted_at) = timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    let guard = guard.unwrap();
    let handoff = granted_at - released_at;
    // Well inside the 10 s re-check: the release's publish woke the waiter.
    assert!(
        handoff < Duration::from_secs(1),
        "hand-off took {handoff:?}"
    );
    guard.release().await.unwrap();
}

#[tokio::test]
async fn with_default_settings_a_five_second_wait_costs_a_handful_of_commands() {
    let server = RedisServer::start();
    let (a, b) = (client(&server).await, client(&server).await);
    let holder = silent_holder(&a, "job").await;
    let before = server.command_calls("evalsha") + server.command_calls("subscribe");
    let lock = b.lock_with("job", LockOptions::new()).unwrap();
    let waiter = tokio::spawn(async move { lock.lock().await });
    sleep(Duration::from_secs(5)).await;
    let sent = server.command_calls("evalsha") + server.command_calls("subscribe") - before;
    // Two attempts (a first plain one and the queued retry: two scripts, each loaded on
    // first use, NOSCRIPT then EVALSHA), two SUBSCRIBEs (the lock's channel and the client's
    // inbox), then one re-check per DEFAULT_RECHECK (2 s): at most 8, never a poll.
    assert!(sent <= 8, "{sent} commands in 5 s of waiting");
    holder.release().await.unwrap();
    waiter.await.unwrap().unwrap().release().await.unwrap();
}

#[tokio::test]
async fn a_killed_notification_connection_still_ends_in_a_grant_within_the_recheck_bound() {
    let server = RedisServer::start();
    let (a, b) = (client(&server).await, client(&server).await);
    let holder = silent_holder(&a, "job").await;
    let recheck = Duration::from_secs(1);
    let lock = b.lock_with("job", waiting(recheck)).unwrap();
    let waiter = tokio::spawn(async move { lock.lock().await });
    // Wait until the waiter has subscribed, then cut its pub/sub connection and release at
    // once: the release's message may be lost.
    let subscribed = timeout(Duration::from_secs(5), async {
        while server
            .cmd::<Vec<redis::Value>>("PUBSUB", &["NUMSUB", "{job}:dlock:released:job"])
            .get(1)
            .map(|v| matches!(v, redis::Value::Int(1)))
            != Some(true)
        {
            sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(subscribed.is_ok(), "the waiter never subscribed");
    let killed: i64 = server.cmd("CLIENT", &["KILL", "TYPE", "pubsub"]);
    assert_eq!(killed, 1, "one pub/sub connection for the client");
    let released_at = Instant::now();
    holder.release().await.unwrap();
    let guard = timeout(recheck + Duration::from_millis(700), waiter)
        .await
        .expect("granted within the re-check bound")
        .unwrap()
        .unwrap();
    assert!(released_at.elapsed() <= recheck + Duration::from_millis(700));
    guard.release().await.unwrap();
}

#[tokio::test]
async fn a_release_that_publishes_nothing_is_caught_by_the_recheck() {
    let server = RedisServer::start();
    let b = client(&server).await;
    // Another tool's lock, deleted with a plain DEL: no wake-up is published.
    let _: () = server.cmd("SET", &["job", "other-tool", "EX", "60"]);
    let recheck = Duration::from_millis(500);
    let lock = b.lock_with("job", waiting(recheck)).unwrap();
    let waiter = tokio::spawn(async move { lock.lock().await });
    sleep(Duration::from_millis(300)).await;
    let _: () = server.cmd("DEL", &["job"]);
    let deleted_at = Instant::now();
    let guard = timeout(Duration::from_secs(3), waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(deleted_at.elapsed() <= recheck + Duration::from_millis(300));
    guard.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_waiters_share_one_connection_and_leave_nothing_behind_when_dropped() {
    for fair in [false, true] {
        let server = RedisServer::start();
        let a = client(&server).await;
        let no_linger = ClientOptions::new().subscription_linger(Duration::ZERO);
        let b = Client::connect_with(&server.url(), no_linger)
            .await
            .unwrap();
        let holder = silent_holder(&a, "crowded").await;
        let lock = b
            .lock_with("crowded", LockOptions::new().fair(fair).wait(Wait::Forever))
            .unwrap();
        lock.try_lock().await.unwrap_err(); // scripts loaded, connections open
        take_and_release(&b, "warm-up").await; // the watchdog's link monitor started
        b.flush().await;
        // Both clients' link monitors connected (their connections' drivers are tasks too).
        crate::support::monitored(&server, 2).await;
        let tasks_before = crate::support::quiet_task_count().await;
        let waiters: Vec<_> = (0..1000)
            .map(|_| {
                let lock = lock.clone();
                tokio::spawn(async move { lock.lock().await })
            })
            .collect();
        // Let every waiter reach its wait (and, in fair mode, the queue).
        let queued = timeout(Duration::from_secs(20), async {
            loop {
                let enqueued: i64 = server.cmd("ZCARD", &["{crowded}:dlock:queue-leases:crowded"]);
                let numsub: Vec<redis::Value> =
                    server.cmd("PUBSUB", &["NUMSUB", "{crowded}:dlock:released:crowded"]);
                let subscribed = matches!(numsub.get(1), Some(redis::Value::Int(1)));
                if subscribed && (!fair || enqueued == 1000) {
                    break;
                }
                sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(queued.is_ok(), "fair={fair}: waiters never all queued");
        let pubsub_clients: String = server.cmd("CLIENT", &["LIST", "TYPE", "pubsub"]);
        assert_eq!(
            pubsub_clients.lines().count(),
            1,
            "one pub/sub connection for 1000 waiters"
        );

        for waiter in &waiters {
            waiter.abort();
        }
        for waiter in waiters {
            assert!(waiter.await.unwrap_err().is_cancelled());
        }
        b.flush().await;
        let leftovers: i64 = server.cmd(
            "EXISTS",
            &[
                "{crowded}:dlock:queue:crowded",
                "{crowded}:dlock:queue-leases:crowded",
            ],
        );
        assert_eq!(leftovers, 0, "fair={fair}: waiter state left in Redis");
        let numsub: Vec<redis::Value> =
            server.cmd("PUBSUB", &["NUMSUB", "{crowded}:dlock:released:crowded"]);
        assert_eq!(
            numsub.get(1),
            Some(&redis::Value::Int(0)),
            "subscription left behind"
        );
        assert_eq!(
            crate::support::settled_task_count(tasks_before).await,
            tasks_before
        );
        assert_eq!(b.held_locks(), 0);
        let value: String = server.cmd("GET", &["crowded"]);
        assert_eq!(value.len(), 32, "the holder's lock is untouched");
        holder.release().await.unwrap();
    }
}

#[tokio::test]
async fn waiting_still_works_for_a_user_without_pubsub_permissions() {
    let server = RedisServer::start();
    let _: () = server.cmd(
        "ACL",
        &[
            "SETUSER",
            "locker",
            "on",
            ">pw",
            "~*",
            "+@all",
            "resetchannels",
        ],
    );
    let url = format!("redis://locker:pw@127.0.0.1:{}/", server.port());
    let a = Client::connect(&url).await.unwrap();
    let b = Client::connect(&url).await.unwrap();
    let holder = a.lock("job").unwrap().try_lock().await.unwrap();
    let lock = b
        .lock_with("job", waiting(Duration::from_millis(500)))
        .unwrap();
    let waiter = tokio::spawn(async move { lock.lock().await });
    sleep(Duration::from_millis(300)).await;
    holder.release().await.unwrap(); // the publish is refused; the release is not
    let guard = timeout(Duration::from_secs(3), waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    guard.release().await.unwrap();
}

fn numsub(server: &RedisServer, channel: &str) -> i64 {
    let reply: Vec<redis::Value> = server.cmd("PUBSUB", &["NUMSUB", channel]);
    match reply.get(1) {
        Some(redis::Value::Int(n)) => *n,
        other => panic!("PUBSUB NUMSUB answered {other:?}"),
    }
}

#[tokio::test]
async fn an_idle_subscription_lingers_for_the_next_waiter_then_goes() {
    let server = RedisServer::start();
    let a = client(&server).await;
    let linger = Duration::from_millis(600);
    let b = Client::connect_with(
        &server.url(),
        ClientOptions::new().subscription_linger(linger),
    )
    .await
    .unwrap();
    let channel = "{job}:dlock:released:job";
    for round in 0..3 {
        let holder = silent_holder(&a, "job").await;
        let lock = b
            .lock_with("job", waiting(Duration::from_secs(10)))
            .unwrap();
        let waiter = tokio::spawn(async move { lock.lock().await });
        sleep(Duration::from_millis(100)).await;
        holder.release().await.unwrap();
        let guard = timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        guard.release().await.unwrap();
        assert_eq!(
            numsub(&server, channel),
            1,
            "round {round}: kept for the next waiter"
        );
    }
    assert_eq!(
        server.command_calls("subscribe"),
        2,
        "later waiters reused the subscriptions (the lock's channel and the client's inbox)"
    );
    let gone = timeout(Duration::from_secs(5), async {
        while numsub(&server, channel) != 0 {
            sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "the idle subscription outlived its linger");
    let pubsub_clients: String = server.cmd("CLIENT", &["LIST", "TYPE", "pubsub"]);
    assert_eq!(
        pubsub_clients.lines().count(),
        0,
        "the idle pub/sub connection was closed"
    );
}

/// `total_connections_received` from `INFO stats`.
fn connections_received(server: &RedisServer) -> u64 {
    let info: String = server.cmd("INFO", &["stats"]);
    info.lines()
        .find_map(|l| l.strip_prefix("total_connections_received:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("INFO stats lists total_connections_received")
}

/// Issue 9: a waiter whose wake-ups cannot work (an ACL user without channel permission) used
/// to retry every few milliseconds, and its client reconnected for pub/sub without backing off.
#[tokio::test]
async fn a_waiter_without_wakeups_rechecks_at_its_interval_and_reconnects_with_backoff() {
    let server = RedisServer::start();
    let _: () = server.cmd(
        "ACL",
        &[
            "SETUSER",
            "locker",
            "on",
            ">pw",
            "~*",
            "+@all",
            "resetchannels",
        ],
    );
    let url = format!("redis://locker:pw@127.0.0.1:{}/", server.port());
    let (a, b) = (
        Client::connect(&url).await.unwrap(),
        Client::connect(&url).await.unwrap(),
    );
    let holder = silent_holder(&a, "job").await;
    let recheck = Duration::from_millis(300);
    let wait = Duration::from_secs(3);
    let lock = b
        .lock_with(
            "job",
            LockOptions::new().wait(Wait::Limit(wait)).recheck(recheck),
        )
        .unwrap();
    let (evals, connections) = (
        server.command_calls("evalsha"),
        connections_received(&server),
    );
    let err = lock.lock().await.unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    let attempts = server.command_calls("evalsha") - evals;
    let most = (wait.as_millis() / recheck.as_millis()) as u64 + 4;
    assert!(
        attempts <= most,
        "{attempts} attempts in {wait:?} (at most {most})"
    );
    // Reconnects back off from 50 ms to 2 s: 0, 50, 150, 350, 750, 1550, 2950 ms.
    let reconnects = connections_received(&server) - connections;
    assert!(reconnects <= 10, "{reconnects} connections in {wait:?}");
    holder.release().await.unwrap();
}

/// Issue 9: an absurd wait limit means "forever", not a panic on `Instant + Duration`.
#[tokio::test]
async fn an_absurd_wait_limit_waits_and_is_granted() {
    let server = RedisServer::start();
    let (a, b) = (client(&server).await, client(&server).await);
    let holder = silent_holder(&a, "job").await;
    let lock = b
        .lock_with("job", LockOptions::new().wait(Wait::Limit(Duration::MAX)))
        .unwrap();
    let waiter = tokio::spawn(async move { lock.lock().await });
    let subscribed = timeout(Duration::from_secs(5), async {
        while numsub(&server, "{job}:dlock:released:job") != 1 {
            sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(subscribed.is_ok(), "the waiter never subscribed");
    holder.release().await.unwrap();
    let guard = timeout(Duration::from_secs(5), waiter)
        .await
        .expect("granted after the release")
        .expect("no panic")
        .unwrap();
    guard.release().await.unwrap();
}
