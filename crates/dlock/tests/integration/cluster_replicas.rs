//! The replica guard (`min_replicas`) on a Redis Cluster: each guarded write and its `WAIT` go
//! to the master of the hold's slot, so the grant is on *that* master's replica when the call
//! returns; a slot whose replica stops acknowledging refuses (or loses) only its own holds; and
//! a slot moved to another master is followed.

use std::time::Duration;

use dlock::{LockOptions, LossReason, Owner};
use dlock_test::{RedisCluster, RedisServer};
use tokio::time::{sleep, timeout, Instant};

use crate::cluster::cluster_client;

/// A three-master cluster with one replica per master (`replicas[i]` replicates master `i`).
fn replicated_cluster() -> (RedisCluster, Vec<RedisServer>) {
    let cluster = RedisCluster::start(3);
    let replicas = (0..3).map(|i| cluster.start_replica(i)).collect();
    (cluster, replicas)
}

fn guarded() -> LockOptions {
    LockOptions::new().min_replicas(1, Duration::from_millis(200))
}

/// A guard whose `WAIT` gives a healthy replica 2 s, so a loaded machine never fails a grant
/// the test needs (a replica that answers within 200 ms is not what such a test is about).
fn patiently_guarded() -> LockOptions {
    LockOptions::new().min_replicas(1, Duration::from_secs(2))
}

/// A guard for leases that must keep being renewed on a loaded machine: a `WAIT` of 600 ms
/// (with a 2 s lease, renewed every ~667 ms) gives a healthy replica room; a 1.5 s lease with
/// 200 ms `WAIT`s was lost that way in a full local run.
fn renewably_guarded() -> LockOptions {
    LockOptions::new()
        .ttl(Duration::from_secs(2))
        .min_replicas(1, Duration::from_millis(600))
}

/// A name starting with `prefix` whose slot master `master` serves.
fn name_on(cluster: &RedisCluster, master: usize, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|name| cluster.master_of(name) == master)
        .expect("some name lands on every master")
}

/// `command key` on a cluster replica (after `READONLY`: a cluster replica otherwise
/// redirects every key to its master).
fn on_replica<T: redis::FromRedisValue>(replica: &RedisServer, command: &str, key: &str) -> T {
    let mut con = replica.connection();
    redis::cmd("READONLY").query::<()>(&mut con).unwrap();
    redis::cmd(command).arg(key).query(&mut con).unwrap()
}

/// Whether `key` is on `replica`.
fn on(replica: &RedisServer, key: &str) -> bool {
    on_replica::<i64>(replica, "EXISTS", key) == 1
}

/// Whether `key` is on the master `server`.
fn exists(server: &RedisServer, key: &str) -> bool {
    server.cmd::<i64>("EXISTS", &[key]) == 1
}

/// Every primitive, on every master: a guarded grant is already on the replica of its slot's
/// master when the call returns (the `WAIT` ran there, after the script).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_guarded_grant_is_on_its_slots_replica_when_the_call_returns() {
    let (cluster, replicas) = replicated_cluster();
    let c = cluster_client(&cluster).await;
    let owner = Owner::new().unwrap();
    for (master, replica) in replicas.iter().enumerate() {
        let lock = name_on(&cluster, master, "lock-");
        let guard = c.lock_with(&lock, patiently_guarded()).unwrap();
        let guard = guard.try_lock().await.unwrap();
        let token: Option<String> = on_replica(replica, "GET", &lock);
        assert_eq!(
            token.map(|t| t.len()),
            Some(32),
            "lock {lock} on master {master}"
        );
        guard.release().await.unwrap();

        let held = name_on(&cluster, master, "reentrant-");
        let reentrant = c.reentrant_lock_with(&held, patiently_guarded()).unwrap();
        let outer = reentrant.try_lock(&owner).await.unwrap();
        assert!(on(replica, &held), "reentrant {held} on master {master}");
        outer.reenter().await.unwrap().release().await.unwrap();
        outer.release().await.unwrap();

        let pool = name_on(&cluster, master, "pool-");
        let permit = c.semaphore_with(&pool, 2, patiently_guarded()).unwrap();
        let permit = permit.try_acquire().await.unwrap();
        assert!(on(replica, &pool), "semaphore {pool} on master {master}");
        permit.release().await.unwrap();

        let rw = name_on(&cluster, master, "rw-");
        let rw = c.rw_lock_with(&rw, patiently_guarded()).unwrap();
        let reader = rw.try_read().await.unwrap();
        assert!(on(replica, rw.name()), "read hold on master {master}");
        reader.release().await.unwrap();
        let writer = rw.try_write().await.unwrap();
        let token: String = on_replica(replica, "GET", rw.name());
        assert_eq!(token.len(), 32, "write hold on master {master}");
        writer.release().await.unwrap();
    }
    // A multi-key lock across two masters' slots: each member on its own master's replica.
    let (a, b) = (
        name_on(&cluster, 0, "multi-"),
        name_on(&cluster, 1, "multi-"),
    );
    let multi = c.multi_lock_with(&[&a, &b], patiently_guarded()).unwrap();
    let guard = multi.try_lock().await.unwrap();
    assert!(on(&replicas[0], &a) && on(&replicas[1], &b));
    guard.release().await.unwrap();
}

/// A paused replica refuses its own master's guarded grants (cleanly: nothing is left there)
/// and no other master's; a multi-key lock with one member there gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_replica_refuses_only_its_masters_grants_and_leaves_nothing() {
    let (cluster, mut replicas) = replicated_cluster();
    let c = cluster_client(&cluster).await;
    let stalled = name_on(&cluster, 1, "job-");
    let other = name_on(&cluster, 2, "job-");
    replicas[1].pause();
    let err = c
        .lock_with(&stalled, guarded())
        .unwrap()
        .try_lock()
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert!(err.to_string().contains("0 of 1 replicas"), "{err}");
    let granted = c
        .lock_with(&other, patiently_guarded())
        .unwrap()
        .try_lock()
        .await;
    let granted = granted.expect("another master's replica acknowledges");
    let pool = name_on(&cluster, 1, "pool-");
    let err = c
        .semaphore_with(&pool, 3, guarded())
        .unwrap()
        .try_acquire()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("0 of 1 replicas"), "{err}");
    let free = name_on(&cluster, 0, "multi-");
    let multi = c.multi_lock_with(&[&free, &stalled], guarded()).unwrap();
    let err = multi.try_lock().await.unwrap_err();
    assert!(err.to_string().contains("0 of 1 replicas"), "{err}");
    replicas[1].resume();
    c.flush().await;
    for (master, key) in [(1, &stalled), (1, &pool), (0, &free)] {
        assert!(!exists(&cluster[master], key), "{key} was left held");
    }
    granted.release().await.unwrap();
}

/// Renewals: leases whose slots' replicas stop acknowledging are reported lost; a lease on
/// another master, renewed by the same guarded watchdog in the same ticks (after them: their
/// slots sort first), stays held, its renewals acknowledged by its own master's replica. A
/// watchdog that renewed every guarded lease on one link (one master) loses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_whose_slot_replica_stops_acknowledging_are_lost_and_no_other() {
    let (cluster, mut replicas) = replicated_cluster();
    let c = cluster_client(&cluster).await;
    let ttl = Duration::from_secs(1);
    let options = LockOptions::new()
        .ttl(ttl)
        .min_replicas(1, Duration::from_millis(800));
    let mut stalled = Vec::new();
    for master in [0, 1] {
        let name = name_on(&cluster, master, "a-renewed-");
        let lock = c.lock_with(&name, options.clone()).unwrap();
        stalled.push(lock.try_lock().await.unwrap());
    }
    let healthy = name_on(&cluster, 2, "z-renewed-");
    let healthy = c.lock_with(&healthy, options).unwrap();
    let healthy = healthy.try_lock().await.unwrap();
    replicas[0].pause();
    replicas[1].pause();
    for guard in &stalled {
        let reason = timeout(3 * ttl, guard.lost()).await;
        match reason.expect("loss reported within the lease") {
            LossReason::Unreachable(why) => assert!(why.contains("replicas"), "{why}"),
            other => panic!("unexpected loss reason {other:?}"),
        }
    }
    // Three more TTLs: only renewals acknowledged on master 2's replica keep it.
    sleep(3 * ttl).await;
    replicas[0].resume();
    replicas[1].resume();
    assert!(healthy.is_held(), "the healthy slot's lease was lost");
    let left: i64 = on_replica(&replicas[2], "PTTL", healthy.name());
    assert!(
        left > 0,
        "the renewal is on master 2's replica: PTTL {left}"
    );
    healthy.release().await.unwrap();
}

/// `extend` with a guard goes to the slot's master and waits for its replica: refused while
/// the replica is paused (the old expiry stands), acknowledged once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarded_extend_waits_for_its_slots_replica() {
    let (cluster, mut replicas) = replicated_cluster();
    let c = cluster_client(&cluster).await;
    let ttl = Duration::from_secs(5);
    let name = name_on(&cluster, 2, "extended-");
    // A healthy replica gets 2 s (the point is the paused one, which refuses either way).
    let guard = c.lock_with(&name, patiently_guarded().ttl(ttl)).unwrap();
    let guard = guard.try_lock().await.unwrap();
    replicas[2].pause();
    let err = guard.extend(Duration::from_secs(60)).await.unwrap_err();
    replicas[2].resume();
    assert!(err.to_string().contains("0 of 1 replicas"), "{err}");
    assert_eq!(
        guard.ttl(),
        ttl,
        "the guard counts on an unacknowledged extend"
    );
    guard.extend(Duration::from_secs(60)).await.unwrap();
    let left: i64 = on_replica(&replicas[2], "PTTL", &name);
    assert!(left > 50_000, "the replica has the extend: PTTL {left}");
    guard.release().await.unwrap();
}

/// A held, guarded lock whose slot moves to another master (a resharding) keeps being renewed
/// there, through that master's replica; a new guarded grant of the slot goes there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarded_lease_follows_its_slot_to_another_master() {
    let (cluster, replicas) = replicated_cluster();
    let c = cluster_client(&cluster).await;
    let ttl = Duration::from_secs(2);
    let name = name_on(&cluster, 0, "moving-");
    let held = c.lock_with(&name, renewably_guarded()).unwrap();
    let held = held.try_lock().await.unwrap();
    cluster.move_slot(cluster.key_slot(&name), 1);
    let moved_at = Instant::now();
    // Two TTLs after the move: only renewals made on master 1 (and acknowledged by its
    // replica) can have kept it.
    sleep(2 * ttl).await;
    assert!(
        held.is_held(),
        "lost after the move: {:?}",
        held.lost().await
    );
    let left: i64 = on_replica(&replicas[1], "PTTL", &name);
    assert!(
        left > 0 && moved_at.elapsed() > ttl,
        "master 1's replica has the renewed lock: PTTL {left}"
    );
    held.release().await.unwrap();
    let again = c
        .lock_with(&name, patiently_guarded())
        .unwrap()
        .try_lock()
        .await
        .unwrap();
    assert!(
        on(&replicas[1], &name),
        "the new grant is on master 1's replica"
    );
    again.release().await.unwrap();
}

/// A long `WAIT` on one master (its replica paused, a guard allowing 8 s) never costs a short
/// lease on another master its renewals: the healthy lease's key stays on its master the whole
/// time, and the lease stays held. (Found by review: the tick waited for every master's
/// `WAIT`, and the short lease ran out on the server while its holder counted it held.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_wait_on_one_master_never_starves_a_short_lease_on_another() {
    let (cluster, mut replicas) = replicated_cluster();
    let c = cluster_client(&cluster).await;
    let patient = LockOptions::new()
        .ttl(Duration::from_secs(12))
        .min_replicas(1, Duration::from_secs(8));
    let slow = name_on(&cluster, 0, "slow-");
    let slow = c
        .lock_with(&slow, patient)
        .unwrap()
        .try_lock()
        .await
        .unwrap();
    // Short next to the other's 8 s `WAIT`, yet with room for a healthy replica slowed by a
    // loaded machine (a 1 s lease with 200 ms `WAIT`s was lost that way in CI).
    let fast = name_on(&cluster, 2, "fast-");
    let fast = c
        .lock_with(&fast, renewably_guarded())
        .unwrap()
        .try_lock()
        .await
        .unwrap();
    replicas[0].pause();
    let started = Instant::now();
    let mut gone_at = None;
    while started.elapsed() < Duration::from_secs(5) && gone_at.is_none() {
        let pttl: i64 = cluster[2].cmd("PTTL", &[fast.name()]);
        if pttl < 0 {
            gone_at = Some(started.elapsed());
        }
        sleep(Duration::from_millis(50)).await;
    }
    replicas[0].resume();
    assert_eq!(
        gone_at, None,
        "the healthy master's lease ran out on the server"
    );
    assert!(fast.is_held(), "the healthy master's lease was lost");
    fast.release().await.unwrap();
    drop(slow);
}

/// A guarded lease whose slot is half-way through a migration (its keys moved to the target,
/// the slot still the source's by `CLUSTER SLOTS`) keeps being renewed: the source answers
/// `ASK`, and the renewal follows it to the target (with `ASKING`) and waits for the target's
/// replica there, as the cluster client does for unguarded calls. (Found by review: the
/// guarded lease was lost while an unguarded one in the same slot rode through.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarded_lease_rides_out_its_slots_migration() {
    let (cluster, _replicas) = replicated_cluster();
    let c = cluster_client(&cluster).await;
    let ttl = Duration::from_secs(2);
    let name = "{mig}guarded";
    let guarded_lock = c.lock_with(name, renewably_guarded()).unwrap();
    let held = guarded_lock.try_lock().await.unwrap();
    let plain = c
        .lock_with("{mig}plain", LockOptions::new().ttl(ttl))
        .unwrap();
    let plain = plain.try_lock().await.unwrap();
    let slot = cluster.key_slot(name);
    let to = (cluster.master_of_slot(slot) + 1) % 3;
    let moving = cluster.begin_slot_move(slot, to);
    moving.migrate_keys();
    // Three TTLs: only renewals acknowledged by a replica (the target's) kept it.
    sleep(3 * ttl).await;
    let (plain_held, guarded_held) = (plain.is_held(), held.is_held());
    moving.finish();
    assert!(plain_held, "the unguarded lease was lost mid-migration");
    assert!(guarded_held, "the guarded lease was lost mid-migration");
    held.release().await.unwrap();
    plain.release().await.unwrap();
}
