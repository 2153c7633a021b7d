//! Redis Cluster resharding: a waiter keeps being woken promptly when its lock's slot moves to
//! another master (while it waits, or before), when the master that had the slot then dies,
//! and while the slot is caught half-way through its migration.
//!
//! Waiters here re-check only every [`RECHECK`], so a grant within [`PROMPT`] of the release
//! was a wake-up (a hand-off, with the default options), not a re-check.

use std::time::Duration;

use dlock::{Client, ClientOptions, LockGuard, LockOptions, Wait};
use dlock_test::{RedisCluster, RedisServer};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};

/// The waiters' re-check interval: far longer than any wake-up may take.
const RECHECK: Duration = Duration::from_secs(20);
/// How soon after the release a woken waiter holds the lock.
const PROMPT: Duration = Duration::from_secs(2);

/// A client seeded with master 0 only (its pub/sub connection goes there while it lives).
async fn client(cluster: &RedisCluster) -> Client {
    let options = ClientOptions::new().command_timeout(Duration::from_secs(1));
    Client::cluster_with(&cluster.urls()[..1], options)
        .await
        .unwrap()
}

/// Default options (hand-off on) but the re-check, and a wait longer than it.
fn slow_recheck() -> LockOptions {
    LockOptions::new()
        .recheck(RECHECK)
        .wait(Wait::Limit(RECHECK + Duration::from_secs(10)))
}

/// `lock()` on `name` in a task of its own; it yields the guard and when it was granted.
fn spawn_waiter(client: &Client, name: &str) -> JoinHandle<(LockGuard, Instant)> {
    let lock = client.lock_with(name, slow_recheck()).unwrap();
    tokio::spawn(async move {
        let guard = lock.lock().await.expect("granted, not an error");
        (guard, Instant::now())
    })
}

/// Waits until a waiter of `name` has queued for a hand-off (its terms are in the lock's
/// waiters hash, on whichever master serves it): it is subscribed and asleep.
async fn queued(cluster: &RedisCluster, name: &str) {
    let waiters = format!("{{{name}}}:dlock:waiters:{name}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while cluster[cluster.master_of(name)].cmd::<u64>("HLEN", &[&waiters]) == 0 {
        assert!(Instant::now() < deadline, "the waiter never queued");
        sleep(Duration::from_millis(10)).await;
    }
}

/// Releases `holder` and returns the waiter's guard, asserting the waiter was woken: it held
/// the lock within [`PROMPT`] of the release, well before its re-check.
async fn release_and_await(
    holder: LockGuard,
    waiter: JoinHandle<(LockGuard, Instant)>,
) -> LockGuard {
    assert!(!waiter.is_finished(), "the waiter must still be waiting");
    let released = Instant::now();
    holder.release().await.unwrap();
    let release_took = released.elapsed();
    let (guard, granted) = timeout(PROMPT, waiter)
        .await
        .expect("not woken by the release (the re-check is 20 s away)")
        .unwrap();
    let took = granted - released;
    eprintln!("release call {release_took:?}, grant {took:?} after the release");
    assert!(took < PROMPT, "granted {took:?} after the release");
    guard
}

/// Every key of `name`'s slot is on master `to` and none on `from` (if it runs), and the grant
/// `guard` was made there: its fencing counter is the guard's token.
fn assert_moved(cluster: &RedisCluster, name: &str, from: usize, to: usize, guard: &LockGuard) {
    let slot = cluster.key_slot(name).to_string();
    let count = |on: usize| cluster[on].cmd::<u64>("CLUSTER", &["COUNTKEYSINSLOT", &slot]);
    if cluster[from].is_running() {
        assert_eq!(count(from), 0, "keys left on the old master {from}");
    }
    assert!(
        count(to) >= 3,
        "lock, holder info and counter on master {to}"
    );
    assert_eq!(cluster.master_of(name), to);
    let fence: u64 = cluster[to].cmd("GET", &[&format!("{{{name}}}:dlock:fence:{name}")]);
    assert_eq!(fence, guard.fencing_token(), "granted on the new master");
}

/// The slot of a waiter's lock moves to another master while the waiter sleeps on its
/// subscription: the release on the new master still wakes it (and hands it the lock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_is_woken_after_its_slot_moved_while_it_waited() {
    let cluster = RedisCluster::start(3);
    let (a, b) = (client(&cluster).await, client(&cluster).await);
    let holder = a.lock("k").unwrap().try_lock().await.unwrap();
    let waiter = spawn_waiter(&b, "k");
    queued(&cluster, "k").await;
    let slot = cluster.key_slot("k");
    let from = cluster.master_of_slot(slot);
    let to = (from + 1) % cluster.len();
    cluster.move_slot(slot, to);
    let guard = release_and_await(holder, waiter).await;
    assert_moved(&cluster, "k", from, to, &guard);
    guard.release().await.unwrap();
}

/// The slot moves while the holder holds and before the waiter starts: both clients still
/// route it to the old master (MOVED), and the wait and its wake-up work as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_is_woken_when_its_slot_moved_before_it_waited() {
    let cluster = RedisCluster::start(3);
    let (a, b) = (client(&cluster).await, client(&cluster).await);
    let holder = a.lock("k").unwrap().try_lock().await.unwrap();
    let slot = cluster.key_slot("k");
    let from = cluster.master_of_slot(slot);
    let to = (from + 2) % cluster.len();
    cluster.move_slot(slot, to);
    let waiter = spawn_waiter(&b, "k");
    queued(&cluster, "k").await;
    let guard = release_and_await(holder, waiter).await;
    assert_moved(&cluster, "k", from, to, &guard);
    guard.release().await.unwrap();
}

/// The lock's slot lives on the seed, where both clients' pub/sub connections are; it moves
/// to another master, then the seed dies. The waiter's notifier reconnects to a live master
/// (classic pub/sub reaches every node) and the release on the new master still wakes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_is_woken_when_the_master_its_slot_left_then_dies() {
    let mut cluster = RedisCluster::start_tolerant(3);
    let name = (0..)
        .map(|i| format!("k{i}"))
        .find(|name| cluster.master_of(name) == 0)
        .unwrap();
    let (a, b) = (client(&cluster).await, client(&cluster).await);
    let holder = a.lock(&name).unwrap().try_lock().await.unwrap();
    let waiter = spawn_waiter(&b, &name);
    queued(&cluster, &name).await;
    assert!(
        subscribers(&cluster[0], &name) > 0,
        "the waiter listens on the seed"
    );
    cluster.move_slot(cluster.key_slot(&name), 1);
    cluster[0].kill();
    subscribed_on_a_live_master(&cluster, &name).await;
    let guard = release_and_await(holder, waiter).await;
    assert_moved(&cluster, &name, 0, 1, &guard);
    guard.release().await.unwrap();
}

/// Waits until a live master has a subscriber on `name`'s wake-up channel (after the seed
/// died: the waiter's notifier, moved off it).
async fn subscribed_on_a_live_master(cluster: &RedisCluster, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let running = cluster.iter().filter(|master| master.is_running());
        if running.map(|master| subscribers(master, name)).sum::<u64>() > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the notifier never resubscribed");
        sleep(Duration::from_millis(20)).await;
    }
}

/// The connections subscribed on `master` to `name`'s wake-up channel (`PUBSUB NUMSUB`: classic
/// pub/sub subscriptions are each node's own).
fn subscribers(master: &RedisServer, name: &str) -> u64 {
    let channel = format!("{{{name}}}:dlock:released:{name}");
    let (_, count): (String, u64) = master.cmd("PUBSUB", &["NUMSUB", &channel]);
    count
}

/// A semaphore waiter (no hand-off: woken to retry) is woken as promptly after its slot moved
/// while it waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_semaphore_waiter_is_woken_after_its_slot_moved_while_it_waited() {
    let cluster = RedisCluster::start(3);
    let (a, b) = (client(&cluster).await, client(&cluster).await);
    let held = a.semaphore("s", 1).unwrap().try_acquire().await.unwrap();
    let semaphore = b.semaphore_with("s", 1, slow_recheck()).unwrap();
    let waiter = tokio::spawn(async move {
        let permit = semaphore.acquire().await.expect("granted, not an error");
        (permit, Instant::now())
    });
    // The waiter subscribes after its first busy answer: wait for its channel.
    subscribed_on_a_live_master(&cluster, "s").await;
    let slot = cluster.key_slot("s");
    let to = (cluster.master_of_slot(slot) + 1) % cluster.len();
    cluster.move_slot(slot, to);
    assert!(!waiter.is_finished());
    let released = Instant::now();
    held.release().await.unwrap();
    let (permit, granted) = timeout(PROMPT, waiter)
        .await
        .expect("not woken by the release")
        .unwrap();
    let took = granted - released;
    eprintln!("semaphore: permit {took:?} after the release");
    assert!(took < PROMPT, "permit granted {took:?} after the release");
    assert_eq!(cluster.master_of("s"), to);
    permit.release().await.unwrap();
}

/// How long a test keeps a slot half-migrated: many retries' worth.
const MID_MIGRATION: Duration = Duration::from_secs(1);

/// A waiter that starts while its slot is half-migrated (the lock key already on the new
/// master, its companions still on the old one) gets TRYAGAIN for every attempt (its script
/// names keys on both sides); it retries them as a brief outage instead of failing, queues once
/// the move is done, and is woken by the release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_rides_out_tryagain_while_its_slot_is_half_migrated() {
    let cluster = RedisCluster::start(3);
    let (a, b) = (client(&cluster).await, client(&cluster).await);
    let holder = a.lock("k").unwrap().try_lock().await.unwrap();
    let slot = cluster.key_slot("k");
    let from = cluster.master_of_slot(slot);
    let to = (from + 1) % cluster.len();
    let moving = cluster.begin_slot_move(slot, to);
    moving.migrate(&["k"]);
    let refused = cluster[from].error_replies("TRYAGAIN");
    let waiter = spawn_waiter(&b, "k");
    sleep(MID_MIGRATION).await;
    assert!(!waiter.is_finished(), "the waiter gave up mid-migration");
    let tryagain = cluster[from].error_replies("TRYAGAIN") - refused;
    eprintln!("the waiter got TRYAGAIN {tryagain} times");
    assert!(
        tryagain > 1,
        "the waiter's attempts got TRYAGAIN and were retried"
    );
    moving.migrate_keys();
    moving.finish();
    queued(&cluster, "k").await;
    let guard = release_and_await(holder, waiter).await;
    assert_moved(&cluster, "k", from, to, &guard);
    guard.release().await.unwrap();
}

/// A release sent while the slot is half-migrated gets TRYAGAIN; it is retried until the move
/// is done, then succeeds on the new master and wakes the queued waiter (hands it the lock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_retried_through_a_half_migrated_slot_still_wakes_the_waiter() {
    let cluster = RedisCluster::start(3);
    let (a, b) = (client(&cluster).await, client(&cluster).await);
    let holder = a.lock("k").unwrap().try_lock().await.unwrap();
    let waiter = spawn_waiter(&b, "k");
    queued(&cluster, "k").await;
    let slot = cluster.key_slot("k");
    let from = cluster.master_of_slot(slot);
    let to = (from + 1) % cluster.len();
    let moving = cluster.begin_slot_move(slot, to);
    moving.migrate(&["k"]);
    let release = tokio::spawn(holder.release());
    sleep(MID_MIGRATION).await;
    assert!(!release.is_finished(), "the release ended mid-migration");
    assert!(!waiter.is_finished(), "granted mid-migration");
    let done = Instant::now();
    moving.migrate_keys();
    moving.finish();
    release
        .await
        .unwrap()
        .expect("released once the move was done");
    let (guard, granted) = timeout(PROMPT, waiter)
        .await
        .expect("not woken once the release went through")
        .unwrap();
    let took = granted - done;
    eprintln!("grant {took:?} after the move was done");
    assert!(took < PROMPT, "granted {took:?} after the move was done");
    assert_moved(&cluster, "k", from, to, &guard);
    guard.release().await.unwrap();
}

/// A client whose map of the slots predates a move follows the old master's MOVED to the new
/// one: its first call on the moved slot succeeds. (The cluster client was built to follow no
/// redirect, and this `try_lock` failed with "Redis unavailable: Moved".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_call_after_a_slot_moved_follows_the_redirect() {
    let cluster = RedisCluster::start(3);
    let c = client(&cluster).await;
    let slot = cluster.key_slot("k");
    let from = cluster.master_of_slot(slot);
    let to = (from + 1) % cluster.len();
    crate::support::take_and_release(&c, "k").await;
    cluster.move_slot(slot, to);
    let guard = c.lock("k").unwrap().try_lock().await.expect("granted");
    assert_moved(&cluster, "k", from, to, &guard);
    assert!(
        cluster[from].error_replies("MOVED") > 0,
        "the redirect was followed"
    );
    guard.release().await.unwrap();
}
