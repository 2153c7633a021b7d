//! Cancel safety: dropping `lock()` futures at random points leaves no lock behind and no
//! background task alive.

use std::time::Duration;

use dlock::{Client, ClientOptions, LockOptions, Wait};
use dlock_test::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_lock_futures_at_random_points_leaves_nothing_behind() {
    let server = RedisServer::start();
    // No lingering subscription: this test counts tasks, and a lingering one keeps its
    // connection (a bounded cache, tested in waiting.rs).
    let no_linger = ClientOptions::new().subscription_linger(Duration::ZERO);
    let c = Client::connect_with(&server.url(), no_linger.clone())
        .await
        .unwrap();
    let rival = Client::connect_with(&server.url(), no_linger)
        .await
        .unwrap();
    let ttl = Duration::from_secs(30);
    let lock = c
        .lock_with("cancel", LockOptions::new().ttl(ttl).wait(Wait::Forever))
        .unwrap();
    let rival_lock = rival
        .lock_with("cancel", LockOptions::new().ttl(ttl))
        .unwrap();
    // Warm up (scripts loaded, connections open, each watchdog's link monitors started)
    // before counting tasks.
    lock.try_lock().await.unwrap().release().await.unwrap();
    rival_lock
        .try_lock()
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    c.flush().await;
    rival.flush().await;
    // Each watchdog's link monitor connects in the background (its connection's driver is a
    // task too): count only once both are up.
    crate::support::monitored(&server, 2).await;
    let tasks_before = crate::support::quiet_task_count().await;

    let mut granted = 0;
    for round in 0..1000 {
        // Every third round a rival holds the lock, so the future is dropped while waiting.
        let rival_guard = if round % 3 == 0 {
            Some(rival_lock.lock().await.unwrap())
        } else {
            None
        };
        let cut = Duration::from_micros(fastrand::u64(0..600));
        match tokio::time::timeout(cut, lock.lock()).await {
            Ok(Ok(guard)) => {
                granted += 1;
                drop(guard); // released in the background
            }
            Ok(Err(e)) => panic!("round {round}: {e}"),
            Err(_) => {} // the future was dropped mid-flight
        }
        if let Some(guard) = rival_guard {
            guard.release().await.unwrap();
        }
    }
    c.flush().await;

    let exists: i64 = server.cmd("EXISTS", &["cancel"]);
    assert_eq!(exists, 0, "a dropped lock() future left a lock behind");
    assert_eq!(c.held_locks(), 0);
    let tasks_after = crate::support::settled_task_count(tasks_before).await;
    assert_eq!(tasks_after, tasks_before, "background tasks leaked");
    // The test means something only if both outcomes happened.
    assert!(granted > 0 && granted < 1000, "granted {granted} of 1000");
}
