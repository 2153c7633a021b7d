//! Read-write lock hand-off: the release that frees the lock grants it to the writer at the head
//! of the wait queue in the same script call, and the wake-up carries the grant, so a waiting
//! writer starts without a round trip of its own. Readers: `rwlock_reader_handoff`.

use std::time::Duration;

use dlock::{Client, LockOptions, RwLock, Wait, WriteGuard};
use dlock_test::RedisServer;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};

pub(crate) use crate::support::granted;
use crate::support::{client, client_without_channels, epsilon, queue_length_reaches};

pub(crate) const QUEUE: &str = "{doc}:dlock:rw-queue:doc";
pub(crate) const LEASES: &str = "{doc}:dlock:rw-queue-leases:doc";
pub(crate) const WAITERS: &str = "{doc}:dlock:rw-waiters:doc";
const FENCE: &str = "{doc}:dlock:fence:doc";

/// Waiting options: a long re-check, so only a hand-off or a wake-up explains a quick grant.
pub(crate) fn waiting(claim: Duration) -> LockOptions {
    LockOptions::new()
        .claim(claim)
        .recheck(Duration::from_secs(10))
        .wait(Wait::Limit(Duration::from_secs(30)))
}

/// Script calls (EVALSHA and EVAL) the server ran so far.
fn script_calls(server: &RedisServer) -> u64 {
    server.script_calls()
}

/// A client whose background work is done before a test counts script calls: its link monitor
/// started with a first lease (a writer's check is an MGET, not a script) and the read-write
/// scripts are in the server's cache.
pub(crate) async fn settled_client(server: &RedisServer) -> Client {
    let c = client(server).await;
    let warm = c.rw_lock("warm").unwrap();
    let before = server.command_calls("mget");
    let guard = warm.try_write().await.unwrap();
    crate::support::first_check_done(server, before).await;
    guard.release().await.unwrap();
    warm.try_read().await.unwrap().release().await.unwrap();
    c
}

pub(crate) fn spawn_write(lock: &RwLock) -> JoinHandle<dlock::Result<WriteGuard>> {
    let lock = lock.clone();
    tokio::spawn(async move { lock.write().await })
}

/// One wait for `lock`'s write side behind another client, so its wake-up subscription
/// lingers: the next wait is then exactly one attempt before it sleeps.
async fn warm_up(server: &RedisServer, lock: &RwLock) {
    let other = client(server).await;
    let holder = other.rw_lock("doc").unwrap().try_write().await.unwrap();
    let waiter = spawn_write(lock);
    queue_length_reaches(server, QUEUE, 1).await;
    holder.release().await.unwrap();
    granted(waiter).await.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writers_release_hands_the_lock_to_the_next_writer_in_one_call() {
    let server = RedisServer::start();
    let a = settled_client(&server).await;
    let b = settled_client(&server).await;
    // Long enough that a loaded machine still takes the hand-off without a round trip (a
    // waiter does so only within a third of the claim from the grant).
    let claim = Duration::from_secs(3);
    let lock = b.rw_lock_with("doc", waiting(claim)).unwrap();
    warm_up(&server, &lock).await;
    let holder = a
        .rw_lock_with("doc", waiting(claim))
        .unwrap()
        .try_write()
        .await
        .unwrap();
    let waiter = spawn_write(&lock);
    queue_length_reaches(&server, QUEUE, 1).await;
    let token: String = server.cmd("LINDEX", &[QUEUE, "0"]);
    let before = script_calls(&server);
    let released_at = Instant::now();
    let holder_fence = holder.fencing_token();
    holder.release().await.unwrap();
    assert_eq!(server.cmd::<String>("GET", &["doc"]), token[2..]);
    let guard = granted(waiter).await;
    // Before hand-off: the release, then the writer's own acquire (2).
    assert_eq!(
        script_calls(&server) - before,
        1,
        "script calls from the release to the new writer"
    );
    assert!(guard.fencing_token() > holder_fence);
    let pttl: i64 = server.cmd("PTTL", &["doc"]);
    let claim_ms = i64::try_from(claim.as_millis()).unwrap();
    assert!(
        pttl > 0 && pttl <= claim_ms,
        "a handed grant first lasts the claim: {pttl} ms"
    );
    assert_eq!(server.cmd::<i64>("EXISTS", &[QUEUE, LEASES, WAITERS]), 0);
    // Handed, it excludes as any writer does.
    let other = a.rw_lock("doc").unwrap();
    assert!(other.try_read().await.unwrap_err().is_conflict());
    assert!(other.try_write().await.unwrap_err().is_conflict());
    assert!(a
        .lock("doc")
        .unwrap()
        .try_lock()
        .await
        .unwrap_err()
        .is_conflict());
    let renewed = timeout(claim, async {
        while server.cmd::<i64>("PTTL", &["doc"]) <= claim_ms {
            sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        renewed.is_ok(),
        "not renewed within {claim:?} of the hand-off ({:?} ago)",
        released_at.elapsed()
    );
    guard.release().await.unwrap();
}

/// Queues `entry` (`w:TOKEN` or `r:TOKEN`) as a waiter that died right after joining: a live
/// waiter lease (20 s) and hand-off terms with a 500 ms claim, and nobody listening.
pub(crate) fn queue_dead_entry(server: &RedisServer, entry: &str) {
    let now: Vec<String> = server.cmd("TIME", &[]);
    let now_ms = now[0].parse::<u64>().unwrap() * 1000 + now[1].parse::<u64>().unwrap() / 1000;
    let _: () = server.cmd("RPUSH", &[QUEUE, entry]);
    let _: () = server.cmd("ZADD", &[LEASES, &(now_ms + 20_000).to_string(), entry]);
    let terms = r#"{"host":"gone","pid":"1","label":"","claim":"500"}"#;
    let _: () = server.cmd("HSET", &[WAITERS, entry, terms]);
}

/// The fencing counter now (the last write grant's token).
pub(crate) fn holder_fence(server: &RedisServer) -> u64 {
    server.cmd::<String>("GET", &[FENCE]).parse().unwrap()
}

/// The last reader's release hands the lock to the writer waiting behind the readers, in the
/// same call; the writer's fencing token is above every earlier write's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_readers_release_hands_the_lock_to_the_waiting_writer() {
    let server = RedisServer::start();
    let a = settled_client(&server).await;
    let b = settled_client(&server).await;
    let claim = Duration::from_secs(5);
    let lock = b.rw_lock_with("doc", waiting(claim)).unwrap();
    warm_up(&server, &lock).await;
    let readers = a.rw_lock_with("doc", waiting(claim)).unwrap();
    let first = readers.try_read().await.unwrap();
    let second = readers.try_read().await.unwrap();
    let last_write = holder_fence(&server);
    let waiter = spawn_write(&lock);
    queue_length_reaches(&server, QUEUE, 1).await;
    first.release().await.unwrap();
    assert!(!waiter.is_finished(), "a reader is still inside");
    let before = script_calls(&server);
    second.release().await.unwrap();
    let guard = granted(waiter).await;
    assert_eq!(script_calls(&server) - before, 1);
    assert!(guard.fencing_token() > last_write);
    guard.release().await.unwrap();
}

/// A writer that died just after queueing (queued with hand-off terms and a live waiter lease,
/// nobody listening) is handed the lock; the next writer gets it when the claim ends, not a
/// TTL or a re-check later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_writer_at_the_head_delays_the_next_by_at_most_the_claim_lease() {
    let server = RedisServer::start();
    let a = client(&server).await;
    let b = client(&server).await;
    let epsilon = epsilon(&a).await;
    let claim = Duration::from_millis(500);
    let holder = a
        .rw_lock_with("doc", waiting(claim))
        .unwrap()
        .try_write()
        .await
        .unwrap();
    let dead = "w:deadbeefdeadbeefdeadbeefdeadbeef";
    queue_dead_entry(&server, dead);
    let waiter = spawn_write(&b.rw_lock_with("doc", waiting(claim)).unwrap());
    queue_length_reaches(&server, QUEUE, 2).await;
    let released_at = Instant::now();
    holder.release().await.unwrap();
    assert_eq!(server.cmd::<String>("GET", &["doc"]), dead[2..]);
    let guard = granted(waiter).await;
    let waited = released_at.elapsed();
    assert!(
        waited <= claim + epsilon,
        "the next writer got the lock {waited:?} after the release (claim {claim:?}, ε \
         {epsilon:?}); its re-check is 10 s"
    );
    assert_eq!(guard.fencing_token(), holder_fence(&server));
    guard.release().await.unwrap();
}

/// The releaser may not publish (an ACL user without channel permission): the hand-off is
/// made but its message never sent. The writer finds its grant at its re-check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_handoff_message_is_recovered_by_the_recheck() {
    let server = RedisServer::start();
    let mute = client_without_channels(&server, "mute").await;
    let b = client(&server).await;
    let epsilon = epsilon(&b).await;
    let recheck = Duration::from_millis(400);
    let lock = b
        .rw_lock_with("doc", waiting(Duration::from_secs(5)).recheck(recheck))
        .unwrap();
    warm_up(&server, &lock).await;
    let holder = mute.rw_lock("doc").unwrap().try_write().await.unwrap();
    let waiter = spawn_write(&lock);
    queue_length_reaches(&server, QUEUE, 1).await;
    let released_at = Instant::now();
    holder.release().await.unwrap();
    let handed_to: String = server.cmd("GET", &["doc"]);
    assert_eq!(handed_to.len(), 32, "handed over, not freed");
    let guard = granted(waiter).await;
    assert!(
        released_at.elapsed() <= recheck + epsilon,
        "found {:?} after the release (re-check {recheck:?})",
        released_at.elapsed()
    );
    assert_eq!(guard.fencing_token(), holder_fence(&server));
    assert!(server.cmd::<i64>("PTTL", &["doc"]) > 5_000);
    guard.release().await.unwrap();
}

/// A writer cancelled just as the lock is handed to it passes the lock on: its undo releases
/// through the same script, which hands the lock to the next writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_cancelled_as_it_is_handed_the_lock_passes_it_on() {
    let server = RedisServer::start();
    let a = client(&server).await;
    let b = client(&server).await;
    let c = client(&server).await;
    let claim = Duration::from_secs(5);
    for round in 0..5 {
        let holder = a
            .rw_lock_with("doc", waiting(claim))
            .unwrap()
            .try_write()
            .await
            .unwrap();
        let cancelled = spawn_write(&b.rw_lock_with("doc", waiting(claim)).unwrap());
        queue_length_reaches(&server, QUEUE, 1).await;
        let next = spawn_write(&c.rw_lock_with("doc", waiting(claim)).unwrap());
        queue_length_reaches(&server, QUEUE, 2).await;
        holder.release().await.unwrap();
        sleep(Duration::from_micros(200 * round)).await;
        cancelled.abort();
        let _ = cancelled.await;
        let guard = timeout(Duration::from_secs(2), next)
            .await
            .expect("the next writer was not served within 2 s")
            .unwrap()
            .unwrap();
        guard.release().await.unwrap();
        b.flush().await;
        assert_eq!(
            server.cmd::<i64>("EXISTS", &["doc", QUEUE, LEASES, WAITERS]),
            0
        );
    }
}

/// Fair mode: readers queued ahead of a writer are handed the lock together when the writer
/// inside leaves, and share it; the writer behind them is handed it by the last reader out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fair_queued_readers_share_a_handoff_and_the_writer_behind_them_comes_next() {
    let server = RedisServer::start();
    let a = client(&server).await;
    let fair = waiting(Duration::from_secs(5)).fair(true);
    let holder = a
        .rw_lock_with("doc", fair.clone())
        .unwrap()
        .try_write()
        .await
        .unwrap();
    let mut readers = Vec::new();
    for i in 0..2i64 {
        let c = client(&server).await;
        let lock = c.rw_lock_with("doc", fair.clone()).unwrap();
        readers.push((tokio::spawn(async move { lock.read().await }), c));
        queue_length_reaches(&server, QUEUE, i + 1).await;
    }
    let w = client(&server).await;
    let writer = spawn_write(&w.rw_lock_with("doc", fair).unwrap());
    queue_length_reaches(&server, QUEUE, 3).await;
    holder.release().await.unwrap();
    let mut guards = Vec::new();
    for (reader, _client) in readers {
        let guard = timeout(Duration::from_secs(2), reader)
            .await
            .expect("a queued reader was not served")
            .unwrap()
            .unwrap();
        guards.push(guard);
    }
    assert!(
        !writer.is_finished(),
        "the writer got in with readers inside"
    );
    for guard in guards {
        guard.release().await.unwrap();
    }
    granted(writer).await.release().await.unwrap();
}

/// Review finding: rw writers handing the lock on among themselves kept it from a plain lock of
/// the same name waiting on its own queue: the plain waiter was never woken, and its re-checks
/// always found the name held. While a plain lock waits, a release wakes everyone instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rw_writers_never_keep_the_name_from_a_waiting_plain_lock() {
    let server = RedisServer::start();
    let stop_at = Instant::now() + Duration::from_secs(6);
    let mut writers = Vec::new();
    for _ in 0..2 {
        let c = client(&server).await;
        let lock = c
            .rw_lock_with("doc", waiting(Duration::from_secs(1)))
            .unwrap();
        writers.push(tokio::spawn(async move {
            while Instant::now() < stop_at {
                let guard = lock.write().await.unwrap();
                sleep(Duration::from_millis(20)).await;
                guard.release().await.unwrap();
            }
            drop(c);
        }));
    }
    sleep(Duration::from_millis(200)).await;
    let p = client(&server).await;
    let plain = p
        .lock_with(
            "doc",
            waiting(Duration::from_secs(1)).wait(Wait::Limit(Duration::from_secs(5))),
        )
        .unwrap();
    let guard = plain
        .lock()
        .await
        .unwrap_or_else(|e| panic!("the plain lock never got the name from the rw writers: {e}"));
    guard.release().await.unwrap();
    for writer in writers {
        writer.await.unwrap();
    }
}

/// Review finding: hand-off terms with a claim that is not a whole, finite number of ms
/// (damaged data) made the release script fail (its SET PX refused the value), and with it
/// every release batched in the same call. Such terms are not a hand-off: the release frees
/// the lock and wakes everyone. A fractional claim is cut to whole ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_claims_in_hand_off_terms_never_fail_a_release() {
    let server = RedisServer::start();
    let a = client(&server).await;
    let lock = a.rw_lock("doc").unwrap();
    for (claim, handed) in [
        ("nan", false),
        ("inf", false),
        ("-5", false),
        ("0.5", false),
        ("15.5", true),
    ] {
        let holder = lock.try_write().await.unwrap();
        let entry = "w:0123456789abcdef0123456789abcdef";
        let _: () = server.cmd("RPUSH", &[QUEUE, entry]);
        let _: () = server.cmd("ZADD", &[LEASES, "99999999999999", entry]);
        let terms = format!(r#"{{"host":"h","pid":"1","label":"","claim":"{claim}"}}"#);
        let _: () = server.cmd("HSET", &[WAITERS, entry, &terms]);
        holder.release().await.unwrap();
        let held: Option<String> = server.cmd("GET", &["doc"]);
        assert_eq!(held.is_some(), handed, "claim {claim}: {held:?}");
        if handed {
            let pttl: i64 = server.cmd("PTTL", &["doc"]);
            assert!(pttl <= 15, "claim {claim}: PTTL {pttl}");
        }
        let _: () = server.cmd(
            "DEL",
            &["doc", "{doc}:dlock:info:doc", QUEUE, LEASES, WAITERS],
        );
    }
}
