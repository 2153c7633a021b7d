//! Redis Cluster: locks spread over every master, single-slot companions, batched renewal per
//! slot, list across masters, wake-ups across nodes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use dlock::{Client, ClientOptions, LockOptions, Owner, Wait};
use dlock_test::{RedisCluster, RedisServer};
use tokio::time::{sleep, timeout, Instant};

/// A client of `cluster` seeded with master 0, with a 1 s command timeout.
pub async fn cluster_client(cluster: &RedisCluster) -> Client {
    let options = ClientOptions::new().command_timeout(Duration::from_secs(1));
    Client::cluster_with(&cluster.urls()[..1], options)
        .await
        .unwrap()
}

/// Every key on `server`, by `SCAN` (what the library really wrote, not names the test built).
fn scan_all(server: &RedisServer) -> Vec<String> {
    let mut con = server.connection();
    let mut keys = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query(&mut con)
            .unwrap();
        keys.extend(batch);
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}

/// The lock a key belongs to and what it is: `(name, kind)`, `kind` being `"lock"` for the
/// lock key itself and e.g. `"info"` for a companion `{<slot part>}:dlock:info:<name>`.
fn lock_of(key: &str) -> (String, String) {
    let companion = key.strip_prefix('{').and_then(|rest| {
        let (_, after) = rest.split_once("}:dlock:")?;
        let (kind, name) = after.split_once(':')?;
        Some((name.to_owned(), kind.to_owned()))
    });
    companion.unwrap_or_else(|| (key.to_owned(), "lock".to_owned()))
}

/// EVALSHA calls each master has run so far.
fn evalsha_calls(cluster: &RedisCluster) -> Vec<u64> {
    cluster.iter().map(|m| m.command_calls("evalsha")).collect()
}

/// Waits for the next renewal tick, seen on the server as master `a`'s EVALSHA count moving
/// past `before`, and returns every master's count a third of an interval (1 s) later: the
/// tick's calls (sent together, answered in milliseconds) are in, the next tick far off.
async fn after_next_tick(cluster: &RedisCluster, a: usize, before: u64) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(3);
    while cluster[a].command_calls("evalsha") == before {
        assert!(Instant::now() < deadline, "no renewal tick on master {a}");
        sleep(Duration::from_millis(5)).await;
    }
    sleep(Duration::from_millis(333)).await;
    evalsha_calls(cluster)
}

/// A thousand locks land on every master, and `SCAN` of every master finds each lock's
/// companions (holder info, fencing counter) on the lock key's master and in its slot.
/// Renewal keeps them all; list finds them on every master; dropped guards are released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_locks_spread_over_every_master_with_single_slot_companions() {
    let cluster = RedisCluster::start(3);
    let c = cluster_client(&cluster).await;
    let options = LockOptions::new().ttl(Duration::from_secs(1));
    let mut guards = Vec::new();
    for i in 0..1000 {
        let lock = c.lock_with(&format!("job:{i}"), options.clone()).unwrap();
        guards.push(lock.try_lock().await.unwrap());
    }
    // name -> [(master, key, kind)]
    let mut written: BTreeMap<String, Vec<(usize, String, String)>> = BTreeMap::new();
    for (index, master) in cluster.iter().enumerate() {
        let keys = scan_all(master);
        assert!(
            keys.len() > 3 * 300,
            "every master holds a share of the locks: {} keys on master {index}",
            keys.len()
        );
        for key in keys {
            let (name, kind) = lock_of(&key);
            written.entry(name).or_default().push((index, key, kind));
        }
    }
    let expected: BTreeSet<String> = (0..1000).map(|i| format!("job:{i}")).collect();
    assert_eq!(
        written.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "keys that belong to no lock were written"
    );
    for (name, keys) in &written {
        let kinds: BTreeSet<&str> = keys.iter().map(|(_, _, kind)| kind.as_str()).collect();
        assert!(
            ["lock", "info", "fence"].iter().all(|k| kinds.contains(k)),
            "{name}: {keys:?}"
        );
        let lock_slot = cluster.key_slot(name);
        let lock_master = keys.iter().find(|(_, _, kind)| kind == "lock").unwrap().0;
        for (master, key, _) in keys {
            assert_eq!(*master, lock_master, "{key} is not on {name}'s master");
            assert_eq!(
                cluster.key_slot(key),
                lock_slot,
                "{key} is not in {name}'s slot"
            );
        }
    }
    // Renewal keeps every 1 s lease alive.
    sleep(Duration::from_millis(2500)).await;
    assert!(guards.iter().all(dlock::LockGuard::is_held));
    let listed = c.list("job:*").await.unwrap();
    assert_eq!(listed.len(), 1000, "list scans every master");
    drop(guards);
    c.flush().await;
    assert!(
        c.list("job:*").await.unwrap().is_empty(),
        "released in the background, per slot"
    );
}

/// Renewal is batched per slot: two groups of 200 locks, each group in one slot on its own
/// master, cost each of those masters exactly one EVALSHA per renewal tick (not one per
/// lock), and the third master nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_costs_one_call_per_slot_and_master_per_tick() {
    let cluster = RedisCluster::start(3);
    let c = cluster_client(&cluster).await;
    // Two hash tags served by different masters.
    let first = "{batch-0}";
    let second = (1..)
        .map(|i| format!("{{batch-{i}}}"))
        .find(|tag| cluster.master_of(tag) != cluster.master_of(first))
        .unwrap();
    let (a, b) = (cluster.master_of(first), cluster.master_of(&second));
    let idle = 3 - a - b;
    // A 3 s lease is renewed every second; taken all at once, the 400 leases are due within
    // half an interval of each other and are renewed in the same ticks.
    let options = LockOptions::new().ttl(Duration::from_secs(3));
    let takes = [first.to_owned(), second.clone()]
        .into_iter()
        .flat_map(|tag| {
            let (c, options) = (c.clone(), options.clone());
            (0..200).map(move |i| {
                let lock = c.lock_with(&format!("{tag}:job:{i}"), options.clone());
                async move { lock.unwrap().try_lock().await.unwrap() }
            })
        });
    let guards = futures_util::future::join_all(takes).await;
    let mut counts = after_next_tick(&cluster, a, cluster[a].command_calls("evalsha")).await;
    for tick in 1..=3 {
        let now = after_next_tick(&cluster, a, counts[a]).await;
        let per_master: Vec<u64> = now.iter().zip(&counts).map(|(n, c)| n - c).collect();
        let mut expected = vec![1, 1, 1];
        expected[idle] = 0;
        assert_eq!(
            per_master, expected,
            "tick {tick}: EVALSHA per master (tags on masters {a} and {b})"
        );
        counts = now;
    }
    assert!(guards.iter().all(dlock::LockGuard::is_held));
    drop(guards);
    c.flush().await;
}

#[tokio::test]
async fn waiting_fair_and_reentrant_locks_work_on_a_cluster() {
    let cluster = RedisCluster::start(3);
    let (a, b) = (
        cluster_client(&cluster).await,
        cluster_client(&cluster).await,
    );
    let holder = a.lock("orders").unwrap().try_lock().await.unwrap();
    let lock = b
        .lock_with(
            "orders",
            LockOptions::new()
                .recheck(Duration::from_secs(10))
                .wait(Wait::Limit(Duration::from_secs(10))),
        )
        .unwrap();
    let waiter = tokio::spawn(async move {
        let guard = lock.lock().await;
        (guard, Instant::now())
    });
    sleep(Duration::from_millis(300)).await;
    let released = Instant::now();
    holder.release().await.unwrap();
    let (guard, granted) = timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    assert!(
        granted - released < Duration::from_secs(2),
        "woken by the release's publish"
    );
    guard.unwrap().release().await.unwrap();

    let fair = a
        .lock_with("{shard}:fair", LockOptions::new().fair(true))
        .unwrap();
    fair.try_lock().await.unwrap().release().await.unwrap();
    let owner = Owner::new().unwrap();
    let reentrant = a.reentrant_lock("ledger").unwrap();
    let outer = reentrant.lock(&owner).await.unwrap();
    let inner = outer.reenter().await.unwrap();
    inner.release().await.unwrap();
    outer.release().await.unwrap();
}

/// Loss detection on a Cluster (no link monitors there: renewal finds it at its tick): a lock
/// whose key is deleted is reported lost within one renewal interval (+ ε); one whose slot's
/// master restarts empty is reported lost by the first renewal after the master serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_key_or_a_restarted_master_is_reported_lost_within_one_interval() {
    let mut cluster = RedisCluster::start(3);
    let c = cluster_client(&cluster).await;
    let epsilon = crate::support::epsilon(&c).await;
    let ttl = Duration::from_millis(1500);
    let interval = ttl / 3;
    let deleted = c.lock_with("deleted", LockOptions::new().ttl(ttl)).unwrap();
    let deleted = deleted.try_lock().await.unwrap();
    let on = cluster.master_of("deleted");
    let _: () = cluster[on].cmd("DEL", &["deleted"]);
    let at = Instant::now();
    let reason = timeout(ttl, deleted.lost()).await.expect("reported");
    assert_eq!(reason, dlock::LossReason::KeyGone);
    assert!(
        at.elapsed() <= interval + epsilon,
        "reported {:?} after the deletion (interval {interval:?}, ε {epsilon:?})",
        at.elapsed()
    );

    // A restarted cluster node answers CLUSTERDOWN until it has met the others again (about a
    // second), so this lease is long enough to outlive that: 6 s, renewed every 2 s.
    let ttl = Duration::from_secs(6);
    let interval = ttl / 3;
    let restarted = c
        .lock_with("restarted", LockOptions::new().ttl(ttl))
        .unwrap();
    let restarted = restarted.try_lock().await.unwrap();
    let on = cluster.master_of("restarted");
    cluster[on].restart_empty();
    let serving = timeout(ttl, async {
        loop {
            let info: String = cluster[on].cmd("CLUSTER", &["INFO"]);
            if info.contains("cluster_state:ok") {
                return Instant::now();
            }
            sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the restarted master serves again");
    let reason = timeout(ttl, restarted.lost())
        .await
        .expect("a lease lost in its master's restart is reported");
    assert_eq!(reason, dlock::LossReason::KeyGone);
    // The next tick, or a renewal retry (at most a quarter interval) after a failed one.
    assert!(
        serving.elapsed() <= interval + epsilon,
        "reported {:?} after the master served again (interval {interval:?}, ε {epsilon:?})",
        serving.elapsed()
    );
}

/// A restarted cluster node answers CLUSTERDOWN until it has met the others again: a waiting
/// `lock()` rides that out like any brief outage (backoff, retry) instead of failing at once
/// with a Redis error.
#[tokio::test]
async fn a_waiting_lock_rides_out_a_restarting_cluster_node() {
    let mut cluster = RedisCluster::start(3);
    let c = cluster_client(&cluster).await;
    let on = cluster.master_of("riding");
    cluster[on].restart_empty();
    let info: String = cluster[on].cmd("CLUSTER", &["INFO"]);
    assert!(
        !info.contains("cluster_state:ok"),
        "the node must still be rejoining for this test to mean anything"
    );
    let lock = c
        .lock_with(
            "riding",
            LockOptions::new().wait(dlock::Wait::Limit(Duration::from_secs(10))),
        )
        .unwrap();
    let guard = lock
        .lock()
        .await
        .expect("granted once the node serves again, not a CLUSTERDOWN error");
    guard.release().await.unwrap();
}

/// Wake-ups survive the loss of the seed node: the pub/sub connection moves to another live
/// master (classic pub/sub reaches every node), so a waiter whose re-check is 20 s away is
/// still woken by the release. It used to reconnect to the dead seed only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_ups_move_off_a_dead_seed_node() {
    let mut cluster = RedisCluster::start_tolerant(3);
    let c = cluster_client(&cluster).await;
    let name = (0..200)
        .map(|i| format!("job:{i}"))
        .find(|name| cluster.master_of(name) != 0)
        .expect("a name served by another master than the seed");
    cluster[0].kill();
    let guard = timeout(Duration::from_secs(10), async {
        loop {
            match c.lock(&name).unwrap().try_lock().await {
                Ok(guard) => break guard,
                Err(_) => sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
    .expect("the surviving masters never served the lock");
    let slow = LockOptions::new()
        .recheck(Duration::from_secs(20))
        .wait(Wait::Limit(Duration::from_secs(30)));
    let waiter_lock = c.lock_with(&name, slow).unwrap();
    let waiter = tokio::spawn(async move { waiter_lock.lock().await });
    sleep(Duration::from_millis(1500)).await;
    assert!(!waiter.is_finished());
    let released = Instant::now();
    guard.release().await.unwrap();
    let handed = timeout(Duration::from_secs(5), waiter)
        .await
        .expect("woken long before the 20 s re-check")
        .unwrap()
        .unwrap();
    assert!(released.elapsed() < Duration::from_secs(2));
    handed.release().await.unwrap();
}
