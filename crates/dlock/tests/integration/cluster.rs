//! Redis Cluster: locks spread over every master, single-slot companions, batched renewal per
//! slot, list across masters, wake-ups across nodes.

use std::time::Duration;

use dlock::{Client, ClientOptions, LockOptions, Owner, Wait};
use dlock_test::RedisCluster;
use tokio::time::{sleep, timeout, Instant};

async fn cluster_client(cluster: &RedisCluster) -> Client {
    let options = ClientOptions::new().command_timeout(Duration::from_secs(1));
    Client::cluster_with(&cluster.urls()[..1], options)
        .await
        .unwrap()
}

fn slot(cluster: &RedisCluster, key: &str) -> i64 {
    cluster[0].cmd("CLUSTER", &["KEYSLOT", key])
}

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
    for master in cluster.iter() {
        let keys: i64 = master.cmd("DBSIZE", &[]);
        assert!(
            keys > 300,
            "every master holds a share of the locks: {keys}"
        );
    }
    for i in (0..1000).step_by(50) {
        let name = format!("job:{i}");
        let lock_slot = slot(&cluster, &name);
        for companion in [
            format!("{{{name}}}:dlock:info:{name}"),
            format!("{{{name}}}:dlock:fence:{name}"),
            format!("{{{name}}}:dlock:released:{name}"),
        ] {
            assert_eq!(slot(&cluster, &companion), lock_slot, "{companion}");
        }
    }
    // Renewal is batched per slot and keeps every 1 s lease alive.
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
    let replicas = LockOptions::new().min_replicas(1, Duration::from_millis(100));
    assert!(a.lock_with("x", replicas).unwrap_err().is_config());
}
