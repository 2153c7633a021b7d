//! The watchdog: renewal keeps short leases alive, losses are reported within one renewal
//! interval, renewals are batched, and renewal stops at release.

use std::time::Duration;

use dlock::{LeaseStatus, LockOptions, LossReason};
use dlock_test::RedisServer;
use tokio::time::{sleep, timeout, Instant};

use crate::support::{client, drift, epsilon, ttl};

#[tokio::test]
async fn a_one_second_lease_is_held_through_five_seconds_of_work() {
    let server = RedisServer::start();
    let c = client(&server).await;
    let other = client(&server).await;
    let guard = c
        .lock_with("work", ttl(Duration::from_secs(1)))
        .unwrap()
        .try_lock()
        .await
        .unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        sleep(Duration::from_millis(250)).await;
        assert!(
            guard.is_held(),
            "lost after {:?}: {:?}",
            started.elapsed(),
            guard.status()
        );
        let pttl: i64 = server.cmd("PTTL", &["work"]);
        assert!(pttl > 0, "key expired after {:?}", started.elapsed());
    }
    assert!(other
        .lock("work")
        .unwrap()
        .try_lock()
        .await
        .unwrap_err()
        .is_conflict());
    // Ok(()) from release proves the token was in the key the whole time.
    guard.release().await.unwrap();
}

#[tokio::test]
async fn a_lock_deleted_behind_the_holders_back_is_reported_lost_within_one_interval() {
    let server = RedisServer::start();
    let c = client(&server).await;
    let guard = c
        .lock_with("gone", ttl(Duration::from_secs(3)))
        .unwrap()
        .try_lock()
        .await
        .unwrap();
    let mut watch = guard.watch();
    let _: () = server.cmd("DEL", &["gone"]);
    let deleted_at = Instant::now();
    let interval = Duration::from_secs(1);
    let reason = timeout(interval + Duration::from_millis(300), guard.lost())
        .await
        .expect("loss reported within one renewal interval");
    assert_eq!(reason, LossReason::KeyGone);
    assert!(deleted_at.elapsed() <= interval + Duration::from_millis(300));
    assert_eq!(
        *watch.borrow_and_update(),
        LeaseStatus::Lost(LossReason::KeyGone)
    );
    assert!(!guard.is_held());
    assert_eq!(c.held_locks(), 0);
    assert!(guard.release().await.unwrap_err().is_lost());
}

#[tokio::test]
async fn a_frozen_redis_is_reported_as_loss_before_the_lease_could_expire() {
    let mut server = RedisServer::start();
    let c = client(&server).await;
    let ttl = Duration::from_secs(1);
    let guard = c
        .lock_with("frozen", crate::support::ttl(ttl))
        .unwrap()
        .try_lock()
        .await
        .unwrap();
    let epsilon = crate::support::epsilon(&c).await;
    // Pause right after a renewal landed, so the lease is as long as it gets.
    let renewals = server.command_calls("evalsha");
    while server.command_calls("evalsha") == renewals {
        sleep(Duration::from_millis(2)).await;
    }
    server.pause();
    // A renewal reply on its way back before the pause still counts: the flush returns once
    // the watchdog has handled it (or given up on it), and A's deadline is fixed from then.
    c.flush().await;
    let deadline = Instant::now() + guard.remaining();
    let reason = timeout(ttl + Duration::from_millis(500), guard.lost()).await;
    let noticed_at = Instant::now();
    server.resume();
    let reason = reason.expect("loss reported while Redis is frozen");
    assert!(matches!(reason, LossReason::Unreachable(_)), "{reason:?}");
    // The loss is declared when the conservative validity ends: not before (the lease was
    // surely valid until then), and not a renewal interval or a command timeout later.
    assert!(
        noticed_at + Duration::from_millis(5) >= deadline,
        "declared lost {:?} before the lease's validity ended",
        deadline - noticed_at
    );
    assert!(
        noticed_at <= deadline + epsilon,
        "noticed {:?} after the validity ended (ε {epsilon:?})",
        noticed_at - deadline
    );
    assert!(guard.release().await.unwrap_err().is_lost());
}

#[tokio::test]
async fn a_thousand_leases_cost_one_round_trip_per_tick() {
    let server = RedisServer::start();
    let c = client(&server).await;
    let options = LockOptions::new().ttl(Duration::from_secs(3));
    let mut guards = Vec::new();
    for i in 0..1000 {
        let lock = c.lock_with(&format!("many:{i}"), options.clone()).unwrap();
        guards.push(lock.try_lock().await.unwrap());
    }
    assert_eq!(c.held_locks(), 1000);
    let calls_before = server.command_calls("evalsha");
    // Four seconds: more than the 3 s TTL, so every key exists now only if it was renewed.
    sleep(Duration::from_secs(4)).await;
    let renew_calls = server.command_calls("evalsha") - calls_before;
    let mut con = server.connection();
    let alive: usize = (0..1000)
        .filter(|i| {
            let pttl: i64 = redis::cmd("PTTL")
                .arg(format!("many:{i}"))
                .query(&mut con)
                .unwrap();
            pttl > 0
        })
        .count();
    assert_eq!(alive, 1000, "every lease renewed");
    assert!(guards.iter().all(dlock::LockGuard::is_held));
    // Renewal every 1 s for 4 s: 4 ticks, perhaps 5 (the acquisitions spread over a moment).
    assert!(
        (3..=6).contains(&renew_calls),
        "{renew_calls} EVALSHA calls renewed 1000 leases over 4 ticks"
    );
    drop(guards);
    c.flush().await;
    let left: Vec<String> = server.cmd("KEYS", &["many:*"]);
    assert!(
        left.is_empty(),
        "dropped guards release in the background: {} left",
        left.len()
    );
}

#[tokio::test]
async fn renewal_stops_at_release() {
    let server = RedisServer::start();
    let c = client(&server).await;
    let guard = c
        .lock_with("once", ttl(Duration::from_millis(150)))
        .unwrap()
        .try_lock()
        .await
        .unwrap();
    sleep(Duration::from_millis(200)).await;
    let while_held = server.command_calls("evalsha");
    guard.release().await.unwrap();
    let after_release = server.command_calls("evalsha");
    assert!(after_release > while_held, "the release itself is one call");
    // Ten renewal intervals later, not one more call reached the server.
    sleep(Duration::from_millis(500)).await;
    assert_eq!(server.command_calls("evalsha"), after_release);
    assert_eq!(c.held_locks(), 0);
}

/// Without renewal the guard reports `Expired` when its conservative validity ends: not
/// before `TTL - drift` after the grant's request was sent, and no later than the TTL (plus ε)
/// after the grant, that is before or just as the server drops the key, which it then does.
#[tokio::test]
async fn without_renewal_the_lease_ends_after_its_ttl_and_is_reported() {
    let server = RedisServer::start();
    let c = client(&server).await;
    let epsilon = epsilon(&c).await;
    let ttl = Duration::from_millis(300);
    let options = LockOptions::new().ttl(ttl).renew(false);
    let lock = c.lock_with("plain", options).unwrap();
    let sent = Instant::now();
    let guard = lock.try_lock().await.unwrap();
    let granted = Instant::now();
    let calls = server.command_calls("evalsha");
    let reason = timeout(ttl * 3, guard.lost()).await.expect("loss reported");
    let lost_at = Instant::now();
    assert_eq!(reason, LossReason::Expired);
    // The lease was surely valid until `sent + TTL - drift`: reported no earlier...
    assert!(
        lost_at - sent >= ttl - drift(ttl),
        "reported lost {:?} after the request, before its validity could end (ε {epsilon:?})",
        lost_at - sent
    );
    // ...and no later than one TTL after the grant: when the server drops the key, the holder
    // already knows.
    assert!(
        lost_at - granted <= ttl + epsilon,
        "reported lost {:?} after the grant (TTL {ttl:?}, ε {epsilon:?})",
        lost_at - granted
    );
    assert_eq!(
        server.command_calls("evalsha"),
        calls,
        "no renewal was sent"
    );
    // The key was not renewed behind the guard's back either: the server drops it one TTL
    // after the grant.
    while server.cmd::<i64>("EXISTS", &["plain"]) == 1 {
        assert!(
            granted.elapsed() <= ttl + epsilon,
            "the key outlived its TTL by more than ε ({epsilon:?})"
        );
        sleep(Duration::from_millis(2)).await;
    }
}

/// `renewal_at_risk` fires once renewals fail and at most the margin of validity is left,
/// while the lease is still held, so a holder can wind down before the lease can end.
#[tokio::test]
async fn renewal_at_risk_fires_before_the_lease_can_end_when_renewals_fail() {
    let server = dlock_test::RedisServer::start();
    let proxy = dlock_test::TcpProxy::start(server.port());
    let holder = dlock::Client::connect_with(
        &proxy.url(),
        dlock::ClientOptions::new().command_timeout(Duration::from_millis(200)),
    )
    .await
    .unwrap();
    let guard = holder
        .lock_with("risky", LockOptions::new().ttl(Duration::from_secs(3)))
        .unwrap()
        .try_lock()
        .await
        .unwrap();
    let margin = Duration::from_secs(1);
    // Healthy renewals never put the lease at risk: two renewals (1 s apart) pass meanwhile.
    assert!(
        timeout(Duration::from_millis(2500), guard.renewal_at_risk(margin))
            .await
            .is_err(),
        "at risk while renewals succeed"
    );
    proxy.cut();
    let cut_at = tokio::time::Instant::now();
    guard.renewal_at_risk(margin).await;
    let at_risk = tokio::time::Instant::now();
    assert!(guard.is_held(), "at risk comes before the loss");
    assert!(
        guard.remaining() <= margin,
        "fired with {:?} left, more than the margin",
        guard.remaining()
    );
    let reason = guard.lost().await;
    assert!(matches!(reason, LossReason::Unreachable(_)), "{reason:?}");
    let lost_at = tokio::time::Instant::now();
    assert!(
        lost_at - at_risk >= margin - Duration::from_millis(50),
        "at risk {:?} after the cut, lost {:?} after it: the margin was not kept",
        at_risk - cut_at,
        lost_at - cut_at
    );
}

/// `release_after` keeps the lock, unrenewed, for the given time, marks it finished, and it
/// then expires by itself.
#[tokio::test]
async fn release_after_keeps_the_lock_for_its_minimum_hold_then_it_expires() {
    let server = dlock_test::RedisServer::start();
    let (a, b) = (client(&server).await, client(&server).await);
    let guard = a
        .lock_with("nightly", LockOptions::new().ttl(Duration::from_secs(30)))
        .unwrap()
        .try_lock()
        .await
        .unwrap();
    let keep = Duration::from_millis(1500);
    let kept_at = tokio::time::Instant::now();
    guard.release_after(keep).await.unwrap();
    let pttl: i64 = server.cmd("PTTL", &["nightly"]);
    assert!(
        pttl > 0 && pttl <= 1500,
        "kept for the minimum hold, not the TTL: {pttl}"
    );
    let busy = b.lock("nightly").unwrap().try_lock().await.unwrap_err();
    let holder = busy.conflict().unwrap().holder.clone().unwrap();
    assert!(holder.finished, "status says the job finished: {holder:?}");
    assert_eq!(a.held_locks(), 0, "nothing renews it any more");
    // It expires by itself at the end of the hold (not renewed, not earlier).
    while server.cmd::<i64>("EXISTS", &["nightly"]) == 1 {
        assert!(
            kept_at.elapsed() < keep + Duration::from_millis(500),
            "renewed past its hold"
        );
        sleep(Duration::from_millis(20)).await;
    }
    assert!(kept_at.elapsed() >= keep - Duration::from_millis(100));

    // A lease already gone: the hold is refused as a loss.
    let guard = a.lock("nightly").unwrap().try_lock().await.unwrap();
    let _: () = server.cmd("DEL", &["nightly"]);
    assert!(guard.release_after(keep).await.unwrap_err().is_lost());
    assert_eq!(
        server.cmd::<i64>("EXISTS", &["nightly"]),
        0,
        "nothing re-created"
    );
}

/// An extend to a shorter TTL is renewed on the shorter schedule: the watchdog is told (found by
/// review: a 30 s lock extended to 300 ms was renewed on the 30 s schedule and reported lost,
/// "renewal did not complete in time", against a healthy Redis).
#[tokio::test]
async fn an_extend_to_a_shorter_ttl_is_renewed_in_time() {
    let server = RedisServer::start();
    let c = client(&server).await;
    let guard = c
        .lock_with("job", ttl(Duration::from_secs(30)))
        .unwrap()
        .try_lock()
        .await
        .unwrap();
    let short = Duration::from_millis(300);
    guard.extend(short).await.unwrap();
    // Five short leases later: still held, renewed to the short TTL.
    sleep(short * 5).await;
    assert!(guard.is_held(), "{:?}", guard.status());
    let pttl: i64 = server.cmd("PTTL", &["job"]);
    assert!(pttl > 0 && pttl <= 300, "PTTL {pttl}");
    guard.release().await.unwrap();
}
