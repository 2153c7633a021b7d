//! Release and extend by a non-owner never touch another owner's lock.

use std::time::Duration;

use dlock::LockOptions;
use dlock_test::RedisServer;

use crate::support::{client, first_check_done};

/// A holder whose lease ran out on the server before it noticed (renewal off, so no tick
/// looks) still believes it holds the lock. Its extend and release reach Redis, and the
/// scripts' token check alone keeps the new owner's lock untouched.
#[tokio::test]
async fn an_expired_holder_cannot_release_or_extend_the_new_owners_lock() {
    let server = RedisServer::start();
    let a = client(&server).await;
    let b = client(&server).await;
    for op in ["extend", "release"] {
        let name = format!("k-{op}");
        let unrenewed = LockOptions::new().ttl(Duration::from_secs(10)).renew(false);
        let mgets = server.command_calls("mget");
        let stale = a
            .lock_with(&name, unrenewed)
            .unwrap()
            .try_lock()
            .await
            .unwrap();
        // The watchdog checks its leases once when its link monitor first connects (A's first
        // lease): let that check pass while the key is still ours, so nothing but the stale
        // call looks again.
        if op == "extend" {
            first_check_done(&server, mgets).await;
        }
        a.flush().await;
        // The lease runs out on the server long before A's clock says so.
        let _: () = server.cmd("PEXPIRE", &[&name, "1"]);
        while server.cmd::<i64>("EXISTS", &[&name]) == 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // B takes the lock over; A has not noticed anything.
        let owner = b
            .lock_with(&name, LockOptions::new().ttl(Duration::from_secs(10)))
            .unwrap()
            .try_lock()
            .await
            .unwrap();
        assert!(stale.is_held(), "{op}: A must not know yet");
        let token_before: String = server.cmd("GET", &[&name]);
        let calls = server.command_calls("evalsha");

        let err = match op {
            "extend" => stale.extend(Duration::from_secs(60)).await.unwrap_err(),
            _ => stale.release().await.unwrap_err(),
        };
        assert!(err.is_lost(), "{op}: {err:?}");
        assert!(
            server.command_calls("evalsha") > calls,
            "{op}: the stale call must reach Redis, so the script's check is what refused it"
        );
        let token_after: String = server.cmd("GET", &[&name]);
        assert_eq!(
            token_before, token_after,
            "{op}: B's lock must be untouched"
        );
        let pttl: i64 = server.cmd("PTTL", &[&name]);
        assert!(
            pttl > 0 && pttl <= 10_000,
            "{op}: A must not have lengthened or removed B's lease: {pttl}"
        );
        assert!(owner.is_held());
        owner.release().await.unwrap();
    }
}

#[tokio::test]
async fn a_holder_whose_key_was_replaced_cannot_touch_it() {
    let server = RedisServer::start();
    let a = client(&server).await;
    let guard = a
        .lock_with("k", LockOptions::new().ttl(Duration::from_secs(30)))
        .unwrap()
        .try_lock()
        .await
        .unwrap();
    // Someone else's token replaces ours (as after an expiry and a new grant).
    let _: () = server.cmd("SET", &["k", "someone-else", "PX", "30000"]);
    let err = guard.extend(Duration::from_secs(5)).await.unwrap_err();
    assert!(err.is_lost(), "{err:?}");
    let pttl: i64 = server.cmd("PTTL", &["k"]);
    assert!(
        pttl > 25_000,
        "extend must not shorten the other owner's lease: {pttl}"
    );
    assert!(guard.release().await.unwrap_err().is_lost());
    let value: String = server.cmd("GET", &["k"]);
    assert_eq!(value, "someone-else");
}

#[tokio::test]
async fn releasing_a_held_lock_reports_success_and_frees_it() {
    let server = RedisServer::start();
    let c = client(&server).await;
    let guard = c.lock("k").unwrap().try_lock().await.unwrap();
    guard.extend(Duration::from_secs(45)).await.unwrap();
    let pttl: i64 = server.cmd("PTTL", &["k"]);
    assert!(pttl > 40_000, "extend sets the new lease: {pttl}");
    assert_eq!(guard.ttl(), Duration::from_secs(45));
    guard.release().await.unwrap();
    let exists: i64 = server.cmd("EXISTS", &["k", "{k}:dlock:info:k"]);
    assert_eq!(exists, 0, "release removes the lock and its holder info");
    assert_eq!(c.held_locks(), 0);
}

#[tokio::test]
async fn a_grant_that_arrives_after_its_validity_is_refused_and_leaves_no_lock() {
    let server = RedisServer::start();
    let options = dlock::ClientOptions::new().command_timeout(Duration::from_secs(2));
    let c = dlock::Client::connect_with(&server.url(), options)
        .await
        .unwrap();
    c.lock("warm")
        .unwrap()
        .try_lock()
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    // Redis answers only after 500 ms: a 300 ms lease is over before the reply arrives.
    server.client_pause(Duration::from_millis(500));
    let short = LockOptions::new().ttl(Duration::from_millis(300));
    let err = c
        .lock_with("late", short)
        .unwrap()
        .try_lock()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("validity"), "{err}");
    c.flush().await;
    // The key was set (with 300 ms to live) when Redis resumed; it must be gone now, not
    // left to block others until it expires.
    let exists: i64 = server.cmd("EXISTS", &["late"]);
    assert_eq!(exists, 0, "the refused grant was left behind");
}
