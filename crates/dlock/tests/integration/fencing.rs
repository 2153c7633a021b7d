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
