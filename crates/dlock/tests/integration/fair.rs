//! Fair mode: grants in arrival order; dead waiters leave the queue when their lease ends.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dlock::{Client, LockOptions, Wait};
use dlock_test::RedisServer;
use tokio::time::{sleep, timeout, Instant};

use crate::support::{client, epsilon};

const QUEUE: &str = "{fair}:dlock:queue:fair";
const LEASES: &str = "{fair}:dlock:queue-leases:fair";

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

/// The server's clock in milliseconds (`TIME`).
fn server_ms(server: &RedisServer) -> i64 {
    let now: Vec<String> = server.cmd("TIME", &[]);
    now[0].parse::<i64>().unwrap() * 1000 + now[1].parse::<i64>().unwrap() / 1000
}

/// When the waiter lease of `member` ends, on this process's clock (read through the server's
/// clock, so it is right to within one round trip).
fn lease_end(server: &RedisServer, member: &str) -> Instant {
    let ends_ms: String = server.cmd("ZSCORE", &[LEASES, member]);
    let ends_ms: i64 = ends_ms.parse().unwrap();
    let left = ends_ms - server_ms(server);
    Instant::now() + Duration::from_millis(u64::try_from(left.max(0)).unwrap())
}

/// A waiter that dies in the queue holds its place for its waiter lease (3 × recheck) and not
/// a moment longer: the next live waiter is granted within ε of that lease's end, neither
/// before it (the dead waiter's turn is honoured while it may be alive) nor at its own next
/// re-check (the live waiters re-check every 2 s, so waking at the lease's end is what serves
/// them in time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_waiter_in_the_middle_delays_the_rest_by_at_most_its_lease() {
    let server = RedisServer::start();
    let recheck = Duration::from_millis(300);
    let lease = recheck * 3;
    let live = fair(Duration::from_secs(2));
    let holder_client = client(&server).await;
    let epsilon = epsilon(&holder_client).await;
    let holder = holder_client
        .lock_with("fair", live.clone())
        .unwrap()
        .try_lock()
        .await
        .unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    let mut dead = None;
    for i in 0..5 {
        if i == 2 {
            // The third in line dies while queued: its cancelled future is "dropped" with its
            // runtime, so nothing withdraws its entry.
            let url = server.url();
            let options = fair(recheck);
            let dying = tokio::task::spawn_blocking(move || queue_and_die(url, options));
            queue_length_reaches(&server, 3).await;
            let member: String = server.cmd("LINDEX", &[QUEUE, "2"]);
            // Just queued: its lease is one waiter lease from now, not more.
            let ends = lease_end(&server, &member);
            assert!(
                ends <= Instant::now() + lease + epsilon,
                "a waiter lease of {:?} (promised {lease:?})",
                ends - Instant::now()
            );
            let _ = dying.await;
            let died = Instant::now();
            // Its last refresh came before it died.
            let ends = lease_end(&server, &member);
            assert!(
                ends <= died + lease + epsilon,
                "a waiter lease runs {:?} past the waiter's death (lease {lease:?})",
                ends - died
            );
            dead = Some(ends);
            continue;
        }
        let c = client(&server).await;
        let order = order.clone();
        let lock = c.lock_with("fair", live.clone()).unwrap();
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
    let dead_lease_ends = dead.unwrap();
    let next = order[2].1;
    assert!(
        next + epsilon >= dead_lease_ends,
        "waiter 3 jumped the dead waiter {:?} before its lease ended",
        dead_lease_ends - next
    );
    assert!(
        next <= dead_lease_ends + epsilon,
        "waiter 3 was served {:?} after the dead waiter's lease ended (ε {epsilon:?})",
        next - dead_lease_ends
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

/// Issue 12's lean hot path: a plain lock's renewal and release touch only the lock and its
/// holder info (no queue or hold keys); a fair lock's release still withdraws from its queue.
#[tokio::test]
async fn an_uncontended_lock_pays_one_lindex_for_the_queue() {
    let server = RedisServer::start();
    let c = client(&server).await;
    let ttl = Duration::from_millis(300);
    let plain = c
        .lock_with("plain", LockOptions::new().ttl(ttl))
        .unwrap()
        .try_lock()
        .await
        .unwrap();
    // A renewal or two, then the release.
    sleep(ttl).await;
    assert!(plain.is_held());
    plain.release().await.unwrap();
    // The release looks for a waiter to hand the lock to (one LINDEX); nothing else touches
    // the queue, and renewals never do.
    for (queue_work, calls) in [
        ("lrem", 0),
        ("zrem", 0),
        ("lindex", 1),
        ("zrangebyscore", 0),
    ] {
        assert_eq!(
            server.command_calls(queue_work),
            calls,
            "{queue_work} for a plain lock"
        );
    }
    let fair = c
        .lock_with("fair", LockOptions::new().fair(true))
        .unwrap()
        .try_lock()
        .await
        .unwrap();
    fair.release().await.unwrap();
    assert!(
        server.command_calls("zrangebyscore") > 0,
        "a fair acquire purges its queue before looking at its head"
    );
}
