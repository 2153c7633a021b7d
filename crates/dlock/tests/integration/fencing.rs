//! Fencing tokens strictly increase per name: across clients, and across data loss.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dlock::{LockOptions, Wait};
use dlock_test::RedisServer;

use crate::support::client;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_strictly_increase_over_1000_grants_from_several_clients() {
    let server = RedisServer::start();
    let grants: Arc<Mutex<Vec<u64>>> = Arc::default();
    let mut workers = Vec::new();
    for _ in 0..4 {
        let c = client(&server).await;
        let grants = grants.clone();
        workers.push(tokio::spawn(async move {
            let lock = c
                .lock_with(
                    "fenced",
                    LockOptions::new().wait(Wait::Limit(Duration::from_secs(60))),
                )
                .unwrap();
            for _ in 0..250 {
                let guard = lock.lock().await.unwrap();
                // Recorded inside the critical section, so the order is the grant order.
                grants.lock().unwrap().push(guard.fencing_token());
                guard.release().await.unwrap();
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    let grants = grants.lock().unwrap();
    assert_eq!(grants.len(), 1000);
    for pair in grants.windows(2) {
        assert!(
            pair[0] < pair[1],
            "token went from {} to {}",
            pair[0],
            pair[1]
        );
    }
}

#[tokio::test]
async fn tokens_keep_increasing_after_a_restart_that_lost_all_data() {
    let mut server = RedisServer::start();
    let before = {
        let c = client(&server).await;
        let guard = c.lock("fenced").unwrap().try_lock().await.unwrap();
        let token = guard.fencing_token();
        guard.release().await.unwrap();
        token
    };
    server.restart_empty();
    let keys: Vec<String> = server.cmd("KEYS", &["*"]);
    assert!(
        keys.is_empty(),
        "the restart must have lost everything: {keys:?}"
    );
    let c = client(&server).await;
    let guard = c.lock("fenced").unwrap().try_lock().await.unwrap();
    assert!(
        guard.fencing_token() > before,
        "{} <= {before}",
        guard.fencing_token()
    );
    guard.release().await.unwrap();
}

#[tokio::test]
async fn a_counter_ahead_of_the_clock_still_grows_by_one() {
    let server = RedisServer::start();
    let c = client(&server).await;
    // A counter far ahead of the server clock (e.g. written while the clock was ahead).
    let ahead = "5000000000000000";
    let _: () = server.cmd("SET", &["{fenced}:dlock:fence:fenced", ahead]);
    let guard = c.lock("fenced").unwrap().try_lock().await.unwrap();
    assert_eq!(guard.fencing_token(), 5_000_000_000_000_001);
    assert_eq!(
        c.status("fenced").await.unwrap().last_fencing_token,
        Some(5_000_000_000_000_001)
    );
    guard.release().await.unwrap();
}

#[tokio::test]
async fn fenced_storage_rejects_a_paused_old_holders_write() {
    let lock_server = RedisServer::start();
    let storage_server = RedisServer::start();
    let (a, b) = (client(&lock_server).await, client(&lock_server).await);
    let storage = client(&storage_server).await;
    // A holder whose lease runs out while it is "paused" (no renewal, short TTL).
    let short = LockOptions::new()
        .ttl(Duration::from_millis(200))
        .renew(false);
    let old = a.lock_with("res", short).unwrap().try_lock().await.unwrap();
    assert!(storage
        .fenced_set("res:data", old.fencing_token(), "old-1")
        .await
        .unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await; // the pause outlives the lease
    let new = b.lock("res").unwrap().try_lock().await.unwrap();
    assert!(new.fencing_token() > old.fencing_token());
    assert!(storage
        .fenced_set("res:data", new.fencing_token(), "new-1")
        .await
        .unwrap());
    // The old holder wakes up and writes with its stale token: refused.
    assert!(!storage
        .fenced_set("res:data", old.fencing_token(), "old-2")
        .await
        .unwrap());
    let value: String = storage_server.cmd("HGET", &["res:data", "value"]);
    assert_eq!(value, "new-1");
    // The current holder may write again with the same token.
    assert!(storage
        .fenced_set("res:data", new.fencing_token(), "new-2")
        .await
        .unwrap());
    new.release().await.unwrap();
}
