//! A holder that vanishes without releasing blocks others for at most one TTL.

use std::time::Duration;

use dlock::{Client, LockOptions, Wait};
use dlock_test::RedisServer;

use crate::support::client;

/// Takes the lock on a runtime of its own, then kills that runtime without releasing: the
/// watchdog dies with it, as in a crashed process.
fn take_and_vanish(url: String, ttl: Duration) -> u64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let token = runtime.block_on(async {
        let client = Client::connect(&url).await.unwrap();
        let guard = client
            .lock_with("crash", LockOptions::new().ttl(ttl))
            .unwrap()
            .try_lock()
            .await
            .unwrap();
        let token = guard.fencing_token();
        // Neither release nor drop-release: the process "dies" here.
        std::mem::forget(guard);
        std::mem::forget(client);
        token
    });
    runtime.shutdown_background();
    token
}

#[tokio::test]
async fn a_vanished_holder_blocks_others_for_at_most_one_ttl() {
    let server = RedisServer::start();
    let ttl = Duration::from_secs(2);
    let url = server.url();
    let dead_token = tokio::task::spawn_blocking(move || take_and_vanish(url, ttl))
        .await
        .unwrap();
    let vanished_at = tokio::time::Instant::now();
    let pttl: i64 = server.cmd("PTTL", &["crash"]);
    assert!(
        pttl > 0 && pttl <= 2000,
        "the abandoned lock must expire within one TTL: {pttl}"
    );

    let survivor = client(&server).await;
    let waiter = survivor
        .lock_with(
            "crash",
            LockOptions::new().wait(Wait::Limit(Duration::from_secs(10))),
        )
        .unwrap();
    let guard = waiter
        .lock()
        .await
        .expect("granted once the dead holder's lease ends");
    let blocked_for = vanished_at.elapsed();
    assert!(
        blocked_for <= ttl + Duration::from_millis(500),
        "blocked for {blocked_for:?}, more than one TTL"
    );
    assert!(guard.fencing_token() > dead_token);
    guard.release().await.unwrap();
}
