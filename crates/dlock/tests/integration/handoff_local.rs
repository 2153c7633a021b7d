//! Hand-offs between tasks of one client (locks, permits, read-write locks): the release's reply
//! carries the grant to the waiter in the same process, so no pub/sub message is sent, and a
//! reply that never arrives still leaves no waiter asleep on a lock it was handed.

use std::time::Duration;

use dlock::{ClientOptions, LockOptions, Wait};
use dlock_test::RedisServer;
use tokio::time::timeout;

use crate::handoff::granted;
use crate::support::{client, queue_length_reaches};

const QUEUE: &str = "{job}:dlock:queue:job";

/// Waiting options: a re-check (10 s) longer than the test waits (5 s), so only a hand-off or a
/// wake-up explains a grant; a claim as long as the TTL (30 s), whose renewal, a third of it
/// after the grant, comes long after the test has counted the script calls.
fn waiting() -> LockOptions {
    LockOptions::new()
        .claim(Duration::from_secs(30))
        .recheck(Duration::from_secs(10))
        .wait(Wait::Limit(Duration::from_secs(30)))
}

type Waiter = tokio::task::JoinHandle<dlock::Result<dlock::LockGuard>>;

/// A client with a command timeout (5 s) no stall of a loaded machine reaches.
async fn patient_client(server: &RedisServer) -> dlock::Client {
    let options = ClientOptions::new().command_timeout(Duration::from_secs(5));
    dlock::Client::connect_with(&server.url(), options)
        .await
        .unwrap()
}

/// A patient client holding the lock, and a queued waiter of that client, running.
async fn holder_and_waiter(server: &RedisServer) -> (dlock::Client, dlock::LockGuard, Waiter) {
    holder_and_waiter_of(server, patient_client(server).await).await
}

/// [`holder_and_waiter`] with the client `shared`.
async fn holder_and_waiter_of(
    server: &RedisServer,
    shared: dlock::Client,
) -> (dlock::Client, dlock::LockGuard, Waiter) {
    // The release script is loaded (a first call answers NOSCRIPT, and counts as a call).
    let warm = shared.lock("warm").unwrap().try_lock().await.unwrap();
    warm.release().await.unwrap();
    let holder = shared
        .lock_with("job", waiting())
        .unwrap()
        .try_lock()
        .await
        .unwrap();
    let waiter = queue(server, &shared, 1).await;
    (shared, holder, waiter)
}

/// A waiter of `client` that joined the queue as its `place`-th waiter.
async fn queue(server: &RedisServer, client: &dlock::Client, place: i64) -> Waiter {
    let lock = client.lock_with("job", waiting()).unwrap();
    let waiter = tokio::spawn(async move { lock.lock().await });
    queue_length_reaches(server, QUEUE, place).await;
    waiter
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_between_tasks_of_one_client_publishes_nothing() {
    let server = RedisServer::start();
    let (_client, holder, waiter) = holder_and_waiter(&server).await;
    let (publishes, scripts) = (server.command_calls("publish"), server.script_calls());
    let holder_fence = holder.fencing_token();
    holder.release().await.unwrap();
    let guard = granted(waiter).await;
    assert_eq!(
        server.command_calls("publish") - publishes,
        0,
        "the hand-off went by pub/sub"
    );
    assert_eq!(
        server.script_calls() - scripts,
        1,
        "script calls from the release to the new holder (the waiter's own attempt: 2)"
    );
    assert!(guard.is_held());
    assert!(guard.fencing_token() > holder_fence);
    guard.release().await.unwrap();
}

/// A release dropped after its call reached Redis (a timeout around it, a cancelled task):
/// the script handed the lock to the waiter, and the reply that carried the news is gone.
/// Dropping the guard's handle wakes the client's waiters on the lock, and the waiter's retry
/// finds the grant, long before its re-check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_dropped_after_handing_off_still_tells_the_waiter() {
    let mut server = RedisServer::start();
    let (_client, holder, waiter) = holder_and_waiter(&server).await;
    let (publishes, scripts) = (server.command_calls("publish"), server.script_calls());
    server.pause();
    // Sent while the server is stopped (redis-rs writes it at once, and never sends a request
    // whose caller left before it did), then dropped before any reply can come.
    let dropped = timeout(Duration::from_millis(400), holder.release()).await;
    assert!(dropped.is_err(), "a stopped server answered the release");
    server.resume();
    let guard = granted(waiter).await;
    assert!(guard.is_held());
    // The release ran and handed the lock over (by the reply: nothing published), and the
    // waiter's retry found it.
    assert_eq!(server.command_calls("publish") - publishes, 0);
    assert!(server.script_calls() - scripts >= 2);
    guard.release().await.unwrap();
}

/// Two waiters of the holder's client: each release hands the lock on by its reply, and the
/// second waiter sleeps through the first hand-off (nothing wakes it to retry): two releases,
/// two script calls, nothing published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_local_waiter_sleeps_through_a_local_handoff() {
    let server = RedisServer::start();
    let (shared, holder, first) = holder_and_waiter(&server).await;
    let second = queue(&server, &shared, 2).await;
    let (publishes, scripts) = (server.command_calls("publish"), server.script_calls());
    holder.release().await.unwrap();
    let first = granted(first).await;
    let first_fence = first.fencing_token();
    first.release().await.unwrap();
    let second = granted(second).await;
    assert_eq!(server.script_calls() - scripts, 2, "the two releases alone");
    assert_eq!(server.command_calls("publish") - publishes, 0);
    assert!(second.fencing_token() > first_fence);
    second.release().await.unwrap();
}

/// The head waits in the holder's client, the next in line in another: the head's hand-off
/// comes back in the reply, and the next in line is told by pub/sub, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_next_in_line_elsewhere_is_still_told_by_pub_sub() {
    let server = RedisServer::start();
    let (_shared, holder, first) = holder_and_waiter(&server).await;
    let other = patient_client(&server).await;
    let second = queue(&server, &other, 2).await;
    let publishes = server.command_calls("publish");
    holder.release().await.unwrap();
    let first = granted(first).await;
    assert_eq!(
        server.command_calls("publish") - publishes,
        1,
        "one message: to the next in line's client"
    );
    first.release().await.unwrap();
    granted(second).await.release().await.unwrap();
}

/// A release whose first reply is lost (the server stops for longer than the command timeout)
/// retries, and the retry answers "not ours": the first try had already handed the lock over,
/// and its reply, with the hand-off, is gone. The release reports the loss, and the client's
/// waiters on the lock are woken: the waiter finds its grant long before its re-check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_whose_reply_is_lost_still_tells_the_waiter() {
    let mut server = RedisServer::start();
    let (_client, holder, waiter) = holder_and_waiter_of(&server, client(&server).await).await;
    let publishes = server.command_calls("publish");
    server.pause();
    let release = tokio::spawn(holder.release());
    // Longer than the client's command timeout (500 ms): the first try has failed.
    tokio::time::sleep(Duration::from_millis(800)).await;
    server.resume();
    let released = timeout(Duration::from_secs(10), release).await;
    let error = released.expect("release settled").unwrap().unwrap_err();
    assert!(error.is_lost(), "{error}");
    let guard = granted(waiter).await;
    assert!(guard.is_held());
    assert_eq!(server.command_calls("publish") - publishes, 0);
    guard.release().await.unwrap();
}

/// On a Cluster the release runs on the lock's master and its reply carries the hand-off the
/// same way: nothing is published on any master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_within_one_cluster_client_publishes_nothing() {
    let cluster = dlock_test::RedisCluster::start(3);
    let shared = crate::cluster::cluster_client(&cluster).await;
    let holder = shared
        .lock_with("job", waiting())
        .unwrap()
        .try_lock()
        .await
        .unwrap();
    let lock = shared.lock_with("job", waiting()).unwrap();
    let waiter = tokio::spawn(async move { lock.lock().await });
    let published = || -> u64 { cluster.iter().map(|m| m.command_calls("publish")).sum() };
    let queued = timeout(Duration::from_secs(10), async {
        // The queue is on one master; the others answer MOVED.
        let length = |m: &RedisServer| -> i64 {
            let llen = redis::cmd("LLEN").arg(QUEUE).query(&mut m.connection());
            llen.unwrap_or(0)
        };
        while !cluster.iter().any(|m| length(m) == 1) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    queued.await.expect("the waiter queued");
    let before = published();
    holder.release().await.unwrap();
    let guard = granted(waiter).await;
    assert_eq!(published() - before, 0, "the hand-off went by pub/sub");
    guard.release().await.unwrap();
}

/// A semaphore's release hands a freed permit to a waiter of its own client by its reply too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permit_handed_within_one_client_publishes_nothing() {
    use crate::semaphore_handoff::{granted, spawn_acquire, QUEUE};
    let server = RedisServer::start();
    let shared = patient_client(&server).await;
    let semaphore = shared.semaphore_with("sem", 1, waiting()).unwrap();
    // The release script is loaded, and the permit's first lease started.
    semaphore
        .try_acquire()
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    let holder = semaphore.try_acquire().await.unwrap();
    let waiter = spawn_acquire(&semaphore, 1);
    queue_length_reaches(&server, QUEUE, 1).await;
    let (publishes, scripts) = (server.command_calls("publish"), server.script_calls());
    holder.release().await.unwrap();
    let permit = granted(waiter).await;
    assert_eq!(server.command_calls("publish") - publishes, 0);
    assert_eq!(server.script_calls() - scripts, 1, "the release alone");
    permit.release().await.unwrap();
}

/// A read-write lock's release hands the write side to a writer of its own client by its reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_side_handed_within_one_client_publishes_nothing() {
    use crate::rwlock_handoff::{granted, settled_client, spawn_write, QUEUE};
    let server = RedisServer::start();
    let shared = settled_client(&server).await;
    let lock = shared.rw_lock_with("doc", waiting()).unwrap();
    let holder = lock.try_write().await.unwrap();
    let waiter = spawn_write(&lock);
    queue_length_reaches(&server, QUEUE, 1).await;
    let (publishes, scripts) = (server.command_calls("publish"), server.script_calls());
    holder.release().await.unwrap();
    let guard = granted(waiter).await;
    assert_eq!(server.command_calls("publish") - publishes, 0);
    assert_eq!(server.script_calls() - scripts, 1, "the release alone");
    guard.release().await.unwrap();
}
