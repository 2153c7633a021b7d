//! Fair mode: grants in arrival order; dead waiters leave the queue when their lease ends.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dlock::{Client, LockOptions, Wait};
use dlock_test::RedisServer;
use tokio::time::{sleep, timeout, Instant};

use crate::support::client;

const QUEUE: &str = "{fair}:dlock:queue:fair";

fn fair(recheck: Duration) -> LockOptions {
    LockOptions::new()
        .fair(true)
        .recheck(recheck)
        .wait(Wait::Limit(Duration::from_secs(30)))
}

async fn queue_length_reaches(server: &RedisServer, n: i64) {
    let reached = timeout(Duration::from_secs(10), async {
        while server.cmd::<i64>("LLEN", &[QUEUE]) < n {
            sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(reached.is_ok(), "the queue never reached {n}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_waiters_get_the_lock_in_the_order_they_queued() {
    let server = RedisServer::start();
    let holder_client = client(&server).await;
    let holder = holder_client
        .lock_with("fair", fair(Duration::from_secs(2)))
        .unwrap()
        .try_lock()
        .await
        .unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for i in 0..8 {
        let c = client(&server).await;
        let order = order.clone();
        let lock = c.lock_with("fair", fair(Duration::from_secs(2))).unwrap();
        waiters.push(tokio::spawn(async move {
            let guard = lock.lock().await.unwrap();
            order.lock().unwrap().push(i);
            sleep(Duration::from_millis(20)).await;
            guard.release().await.unwrap();
        }));
        queue_length_reaches(&server, i + 1).await;
    }
    holder.release().await.unwrap();
    for waiter in waiters {
        timeout(Duration::from_secs(20), waiter)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(*order.lock().unwrap(), (0..8).collect::<Vec<_>>());
}

/// Joins the queue on a runtime of its own, then kills that runtime: a waiter that crashed
/// without withdrawing.
fn queue_and_die(url: String, options: LockOptions) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let c = Client::connect(&url).await.unwrap();
        let lock = c.lock_with("fair", options).unwrap();
        let _ = timeout(Duration::from_millis(300), lock.lock()).await;
        std::mem::forget(lock);
        std::mem::forget(c);
    });
    runtime.shutdown_background();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_waiter_in_the_middle_delays_the_rest_by_at_most_its_lease() {
    let server = RedisServer::start();
    let recheck = Duration::from_millis(300);
    let lease = recheck * 3;
    let holder_client = client(&server).await;
    let holder = holder_client
        .lock_with("fair", fair(recheck))
        .unwrap()
        .try_lock()
        .await
        .unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for i in 0..5 {
        if i == 2 {
            // The third in line dies while queued: its cancelled future is "dropped" with its
            // runtime, so nothing withdraws its entry.
            let url = server.url();
            let options = fair(recheck);
            let _ = tokio::task::spawn_blocking(move || queue_and_die(url, options)).await;
            queue_length_reaches(&server, 3).await;
            continue;
        }
        let c = client(&server).await;
        let order = order.clone();
        let lock = c.lock_with("fair", fair(recheck)).unwrap();
        waiters.push(tokio::spawn(async move {
            let guard = lock.lock().await.unwrap();
            order.lock().unwrap().push((i, Instant::now()));
            guard.release().await.unwrap();
        }));
        queue_length_reaches(&server, i + 1).await;
    }
    holder.release().await.unwrap();
    for waiter in waiters {
        timeout(Duration::from_secs(20), waiter)
            .await
            .unwrap()
            .unwrap();
    }
    let order = order.lock().unwrap();
    let served: Vec<i64> = order.iter().map(|(i, _)| *i).collect();
    assert_eq!(served, [0, 1, 3, 4], "the live waiters keep their order");
    let gap = order[2].1 - order[1].1;
    assert!(
        gap <= lease + recheck + Duration::from_millis(300),
        "the dead waiter held the queue for {gap:?} (lease {lease:?})"
    );
}

#[tokio::test]
async fn try_lock_never_jumps_the_queue() {
    let server = RedisServer::start();
    let c = client(&server).await;
    let lock = c.lock_with("fair", fair(Duration::from_secs(2))).unwrap();
    // A live waiter is queued (its lease runs 1.5 s) while the lock is free.
    let _: () = server.cmd("RPUSH", &[QUEUE, "someone-waiting"]);
    let ends = Instant::now() + Duration::from_millis(1500);
    let server_now: Vec<String> = server.cmd("TIME", &[]);
    let now_ms: u64 =
        server_now[0].parse::<u64>().unwrap() * 1000 + server_now[1].parse::<u64>().unwrap() / 1000;
    let until = (now_ms + 1500).to_string();
    let _: () = server.cmd(
        "ZADD",
        &["{fair}:dlock:queue-leases:fair", &until, "someone-waiting"],
    );
    let err = lock.try_lock().await.unwrap_err();
    assert!(err.is_conflict(), "{err:?}");
    // Once the waiter's lease has ended, its entry is purged and the lock is granted.
    let guard = lock.lock().await.unwrap();
    assert!(
        Instant::now() + Duration::from_millis(50) >= ends,
        "granted before the lease ended"
    );
    let queue_len: i64 = server.cmd("LLEN", &[QUEUE]);
    assert_eq!(queue_len, 0);
    guard.release().await.unwrap();
}
