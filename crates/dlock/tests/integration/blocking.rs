//! The blocking API from plain synchronous code: no tokio in the caller. Every deployment's
//! connector (one server, Redlock, Cluster, Sentinel) and the whole guard API.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use dlock::blocking::Client;
use dlock::{ClientOptions, LeaseStatus, LockOptions, LossReason, Owner, SentinelConfig, Wait};
use dlock_test::{RedisCluster, RedisServer, RedisServers, Sentinels, MASTER_NAME};

/// Options with a short command timeout, so a dead node costs the test little.
fn quick() -> ClientOptions {
    ClientOptions::new()
        .command_timeout(Duration::from_millis(500))
        .connect_timeout(Duration::from_secs(1))
}

#[test]
fn the_blocking_api_works_from_plain_synchronous_code() {
    let server = RedisServer::start();
    let a = Client::connect(&server.url()).unwrap();
    let b = Client::connect(&server.url()).unwrap();
    let guard = a
        .lock_with("sync", LockOptions::new().ttl(Duration::from_secs(1)))
        .unwrap()
        .try_lock()
        .unwrap();
    assert!(b
        .lock("sync")
        .unwrap()
        .try_lock()
        .unwrap_err()
        .is_conflict());
    // The caller's thread sleeps; the client's own runtime thread renews the 1 s lease.
    std::thread::sleep(Duration::from_secs(3));
    assert!(guard.is_held(), "{:?}", guard.status());
    assert!(b.status("sync").unwrap().held);
    guard.extend(Duration::from_secs(5)).unwrap();

    let waiter = b
        .lock_with(
            "sync",
            LockOptions::new().wait(Wait::Limit(Duration::from_secs(10))),
        )
        .unwrap();
    // Timed from before the spawn: the waiter's grant cannot come before the release below.
    let started = Instant::now();
    let handle = std::thread::spawn(move || {
        let guard = waiter.lock().unwrap();
        (started.elapsed(), guard.fencing_token(), guard.release())
    });
    std::thread::sleep(Duration::from_millis(300));
    let first_token = guard.fencing_token();
    guard.release().unwrap();
    let (waited, token, released) = handle.join().unwrap();
    assert!(waited >= Duration::from_millis(300));
    assert!(token > first_token);
    released.unwrap();
    assert_eq!(a.held_locks(), 0);
}

#[test]
fn dropping_a_blocking_guard_and_client_releases_the_lock() {
    let server = RedisServer::start();
    {
        let client = Client::connect(&server.url()).unwrap();
        let guard = client.lock("sync").unwrap().try_lock().unwrap();
        assert!(guard.is_held());
        // Both dropped here: the client's runtime sends the release before it shuts down.
    }
    let exists: i64 = server.cmd("EXISTS", &["sync"]);
    assert_eq!(exists, 0);
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    assert!(Client::connect("not a url").unwrap_err().is_config());
    let server = RedisServer::start();
    let client = Client::connect(&server.url()).unwrap();
    assert!(client.lock("").unwrap_err().is_config());
}

#[tokio::test]
async fn calling_it_from_inside_an_async_runtime_is_a_config_error() {
    let server = RedisServer::start();
    let url = server.url();
    let urls = [url.clone(), url.clone(), url.clone()];
    let sentinel = SentinelConfig::new(MASTER_NAME, [url.clone()]);
    let refusals = [
        ("connect", Client::connect(&url).unwrap_err()),
        ("sentinel", Client::sentinel(sentinel).unwrap_err()),
        ("cluster", Client::cluster(&urls[..1]).unwrap_err()),
        ("redlock", Client::redlock(&urls).unwrap_err()),
    ];
    for (connector, err) in refusals {
        assert!(err.is_config(), "{connector}: {err:?}");
        assert!(
            err.to_string().contains("dlock::Client"),
            "{connector}: {err}"
        );
    }
}

/// The names of the locks `names` whose key exists on `server`.
fn present_on(server: &RedisServer, names: &[&str]) -> BTreeSet<String> {
    names
        .iter()
        .filter(|name| server.cmd::<i64>("EXISTS", &[name]) == 1)
        .map(|name| (*name).to_owned())
        .collect()
}

#[test]
fn the_redlock_connector_locks_on_a_majority_and_survives_a_dead_master() {
    let mut servers = RedisServers::start(3);
    let a = Client::redlock_with(&servers.urls(), quick()).unwrap();
    let b = Client::redlock_with(&servers.urls(), quick()).unwrap();
    assert_eq!(a.masters(), 3);
    assert!(
        a.reentrant_lock("job").unwrap_err().is_config(),
        "single Redis only"
    );
    assert!(Client::redlock(&servers.urls()[..2])
        .unwrap_err()
        .is_config());

    let guard = a.lock("job").unwrap().try_lock().unwrap();
    // Granted once a majority said yes; the last master's write may still be landing.
    let holding = servers
        .iter()
        .filter(|s| !present_on(s, &["job"]).is_empty())
        .count();
    assert!(holding >= 2, "the lock is on {holding} of 3 masters");
    assert!(b.lock("job").unwrap().try_lock().unwrap_err().is_conflict());
    guard.release().unwrap();
    for server in servers.iter() {
        assert!(
            present_on(server, &["job"]).is_empty(),
            "released everywhere"
        );
    }

    // A single-server client of the first URL would fail now; a Redlock client does not.
    servers[0].kill();
    let guard = b.lock("after").unwrap().try_lock().unwrap();
    for server in &servers[1..] {
        assert_eq!(
            present_on(server, &["after"]).len(),
            1,
            "on both live masters"
        );
    }
    assert!(a
        .lock("after")
        .unwrap()
        .try_lock()
        .unwrap_err()
        .is_conflict());
    guard.release().unwrap();
}

/// The locks of `names` whose key a cluster master holds itself (`KEYS` answers from the
/// master's own keyspace, where `EXISTS` would be redirected).
fn local_locks(master: &RedisServer, names: &[&str]) -> BTreeSet<String> {
    let keys: Vec<String> = master.cmd("KEYS", &["job-*"]);
    keys.into_iter()
        .filter(|key| names.contains(&key.as_str()))
        .collect()
}

#[test]
fn the_cluster_connector_routes_each_lock_to_its_slots_master() {
    let cluster = RedisCluster::start(3);
    let a = Client::cluster_with(&cluster.urls()[..1], quick()).unwrap();
    let b = Client::cluster_with(&cluster.urls()[1..2], quick()).unwrap();
    let names = [
        "job-a", "job-b", "job-c", "job-d", "job-e", "job-f", "job-g", "job-h",
    ];
    let guards: Vec<_> = names
        .iter()
        .map(|name| a.lock(name).unwrap().try_lock().unwrap())
        .collect();
    // Each lock lives on exactly one master, and not all on the seed: the client followed
    // the slot map rather than sending everything to the one server it was given.
    let per_master: Vec<BTreeSet<String>> =
        cluster.iter().map(|m| local_locks(m, &names)).collect();
    let placed: usize = per_master.iter().map(BTreeSet::len).sum();
    assert_eq!(placed, names.len(), "{per_master:?}");
    assert!(
        per_master.iter().filter(|on| !on.is_empty()).count() > 1,
        "eight names all hashed to one master? {per_master:?}"
    );
    for name in names {
        assert!(b.lock(name).unwrap().try_lock().unwrap_err().is_conflict());
        assert!(b.status(name).unwrap().held);
    }
    for guard in guards {
        guard.release().unwrap();
    }
    for master in cluster.iter() {
        assert!(local_locks(master, &names).is_empty(), "released");
    }
}

#[test]
fn the_sentinel_connector_finds_the_master_through_the_sentinels() {
    let master = RedisServer::start();
    let sentinels = Sentinels::start(&master, 3, 0);
    // Only the sentinels' URLs are given: the master's address comes from them.
    let config = SentinelConfig::new(MASTER_NAME, sentinels.urls());
    let a = Client::sentinel_with(config.clone(), quick()).unwrap();
    let b = Client::sentinel(config).unwrap();
    assert_eq!(a.masters(), 1);
    assert!(a.server().contains("via sentinels"), "{}", a.server());

    let guard = a.lock("job").unwrap().try_lock().unwrap();
    assert_eq!(
        present_on(&master, &["job"]).len(),
        1,
        "the lock is on the master"
    );
    assert!(b.lock("job").unwrap().try_lock().unwrap_err().is_conflict());
    guard.release().unwrap();
    assert!(present_on(&master, &["job"]).is_empty());

    let unknown = SentinelConfig::new("no-such-master", sentinels.urls());
    let err = Client::sentinel_with(unknown, quick()).unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
}

#[test]
fn lost_timeout_is_none_while_held_and_the_reason_once_the_key_is_deleted() {
    let server = RedisServer::start();
    let client = Client::connect_with(&server.url(), quick()).unwrap();
    let ttl = Duration::from_secs(2);
    let guard = client
        .lock_with("job", LockOptions::new().ttl(ttl))
        .unwrap()
        .try_lock()
        .unwrap();
    assert_eq!(guard.name(), "job");
    assert_eq!(guard.ttl(), ttl);
    let watch = guard.watch();
    assert_eq!(*watch.borrow(), LeaseStatus::Held);

    // Held: it waits out the whole timeout (the lease outlives it) and says so.
    let started = Instant::now();
    assert_eq!(
        guard.lost_timeout(Duration::from_millis(300)).unwrap(),
        None
    );
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "it did wait"
    );
    assert_eq!(guard.lost_timeout(Duration::ZERO).unwrap(), None);
    let margin = Duration::from_millis(500);
    assert!(!guard
        .renewal_at_risk_timeout(margin, Duration::from_millis(100))
        .unwrap());
    assert!(!watch.has_changed().unwrap());

    // Another connection deletes the key: the next renewal finds it gone.
    assert_eq!(server.cmd::<i64>("DEL", &["job"]), 1);
    let reason = guard.lost_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(reason, Some(LossReason::KeyGone), "{:?}", guard.status());

    // Every view agrees, and none of them waits now.
    assert_eq!(
        guard.lost_timeout(Duration::ZERO).unwrap(),
        Some(LossReason::KeyGone)
    );
    assert_eq!(guard.lost().unwrap(), LossReason::KeyGone);
    assert!(watch.has_changed().unwrap());
    assert_eq!(*watch.borrow(), LeaseStatus::Lost(LossReason::KeyGone));
    assert!(guard
        .renewal_at_risk_timeout(margin, Duration::ZERO)
        .unwrap());
    assert!(!guard.is_held());
    assert_eq!(guard.remaining(), Duration::ZERO);
    assert!(guard.release().unwrap_err().is_lost());
}

#[test]
fn release_after_keeps_the_lock_taken_and_marked_finished() {
    let server = RedisServer::start();
    let a = Client::connect(&server.url()).unwrap();
    let b = Client::connect(&server.url()).unwrap();
    let guard = a.lock("report").unwrap().try_lock().unwrap();
    guard.release_after(Duration::from_secs(60)).unwrap();
    assert_eq!(a.held_locks(), 0, "the owner is done with it");

    let late = b.lock("report").unwrap().try_lock().unwrap_err();
    let holder = late.conflict().and_then(|c| c.holder.clone());
    assert!(holder.is_some_and(|h| h.finished), "{late:?}");
    let status = b.status("report").unwrap();
    assert!(status.held);
    assert!(status
        .ttl_left
        .is_some_and(|left| left <= Duration::from_secs(60)));

    // An operator can still break the hold early.
    assert!(b.force_release("report").unwrap().held);
    b.lock("report")
        .unwrap()
        .try_lock()
        .unwrap()
        .release()
        .unwrap();
}

#[test]
fn list_force_release_and_flush_from_plain_synchronous_code() {
    let server = RedisServer::start();
    let client = Client::connect(&server.url()).unwrap();
    let lock = client
        .lock_with("jobs:b", LockOptions::new().ttl(Duration::from_secs(7)))
        .unwrap();
    assert_eq!(lock.name(), "jobs:b");
    assert_eq!(lock.options().ttl_value(), Duration::from_secs(7));
    let b = lock.try_lock().unwrap();
    let a = client.lock("jobs:a").unwrap().try_lock().unwrap();
    let other = client.lock("other").unwrap().try_lock().unwrap();
    let listed: Vec<String> = client
        .list("jobs:*")
        .unwrap()
        .into_iter()
        .map(|status| status.key)
        .collect();
    assert_eq!(listed, ["jobs:a", "jobs:b"]);

    let broken = client.force_release("jobs:a").unwrap();
    assert!(broken.held);
    assert!(broken.holder.is_some(), "{broken:?}");
    assert!(!client.status("jobs:a").unwrap().held);
    assert!(a.release().unwrap_err().is_lost());

    // A dropped guard is released in the background; flush waits until that was done. With
    // writes paused for a while, the releases are still pending when flush is called.
    let _: () = server.cmd("CLIENT", &["PAUSE", "1000", "WRITE"]);
    drop(b);
    drop(other);
    assert_eq!(
        server.cmd::<i64>("EXISTS", &["jobs:b", "other"]),
        2,
        "not yet"
    );
    client.flush().unwrap();
    assert_eq!(server.cmd::<i64>("EXISTS", &["jobs:b", "other"]), 0);
    assert!(client.list("*").unwrap().is_empty());
}

#[test]
fn a_reentrant_lock_is_taken_again_by_its_owner_on_any_thread_and_freed_by_the_last_hold() {
    let server = RedisServer::start();
    let a = Client::connect(&server.url()).unwrap();
    let b = Client::connect(&server.url()).unwrap();
    let lock = a.reentrant_lock("ledger").unwrap();
    assert_eq!(lock.name(), "ledger");
    let owner = Owner::new().unwrap();
    let outer = lock.lock(&owner).unwrap();
    assert_eq!(outer.name(), "ledger");
    assert_eq!(outer.owner(), &owner);

    // The same owner on another thread (a clone of it) re-enters at once.
    let (same, other_thread) = {
        let (lock, owner) = (lock.clone(), owner.clone());
        std::thread::spawn(move || {
            let guard = lock.try_lock(&owner).unwrap();
            let token = guard.fencing_token();
            (token, guard)
        })
        .join()
        .unwrap()
    };
    assert_eq!(same, outer.fencing_token());
    let inner = outer.reenter().unwrap();
    assert_eq!(inner.fencing_token(), outer.fencing_token());

    // Another owner is refused, here and on another client.
    let stranger = Owner::new().unwrap();
    assert!(lock.try_lock(&stranger).unwrap_err().is_conflict());
    let elsewhere = b.reentrant_lock("ledger").unwrap();
    assert!(elsewhere.try_lock(&stranger).unwrap_err().is_conflict());

    inner.extend(Duration::from_secs(60)).unwrap();
    assert_eq!(
        outer.ttl(),
        Duration::from_secs(60),
        "one lease for every hold"
    );
    assert!(
        outer.remaining() > Duration::from_secs(30),
        "{:?}",
        outer.remaining()
    );
    assert!(inner.is_held());
    assert_eq!(inner.status(), LeaseStatus::Held);
    assert_eq!(inner.lost_timeout(Duration::from_millis(50)).unwrap(), None);
    inner.release().unwrap();
    other_thread.release().unwrap();
    assert!(b.status("ledger").unwrap().held, "the outer hold remains");
    outer.release().unwrap();
    assert!(!b.status("ledger").unwrap().held, "freed by the last hold");
    elsewhere.try_lock(&stranger).unwrap().release().unwrap();
}

#[test]
fn a_reentrant_guard_reports_the_loss_of_its_shared_lease() {
    let server = RedisServer::start();
    let client = Client::connect_with(&server.url(), quick()).unwrap();
    let lock = client
        .reentrant_lock_with("ledger", LockOptions::new().ttl(Duration::from_secs(2)))
        .unwrap();
    let owner = Owner::new().unwrap();
    let outer = lock.try_lock(&owner).unwrap();
    let inner = outer.reenter().unwrap();
    assert_eq!(inner.ttl(), Duration::from_secs(2));
    let remaining = inner.remaining();
    assert!(remaining > Duration::ZERO && remaining <= Duration::from_secs(2));
    let watch = outer.watch();
    assert_eq!(*watch.borrow(), LeaseStatus::Held);
    let margin = Duration::from_millis(500);
    assert!(!inner
        .renewal_at_risk_timeout(margin, Duration::from_millis(100))
        .unwrap());

    assert_eq!(server.cmd::<i64>("DEL", &["ledger"]), 1);
    let reason = inner.lost_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(reason, Some(LossReason::KeyGone), "{:?}", inner.status());
    assert!(
        watch.has_changed().unwrap(),
        "the outer hold's channel flipped too"
    );
    assert_eq!(*watch.borrow(), LeaseStatus::Lost(LossReason::KeyGone));
    assert_eq!(outer.remaining(), Duration::ZERO);
    assert!(outer
        .renewal_at_risk_timeout(margin, Duration::ZERO)
        .unwrap());
    assert_eq!(
        outer.lost().unwrap(),
        LossReason::KeyGone,
        "one lease, both holds"
    );
    assert!(!outer.is_held());
    assert!(inner.release().unwrap_err().is_lost());
    assert!(outer.release().unwrap_err().is_lost());
}

#[test]
fn a_blocking_client_dropped_inside_an_async_runtime_does_not_panic() {
    let server = RedisServer::start();
    let client = Client::connect(&server.url()).unwrap();
    let guard = client.lock("sync").unwrap().try_lock().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        assert!(guard
            .extend(Duration::from_secs(5))
            .unwrap_err()
            .is_config());
        assert!(guard.lost().unwrap_err().is_config());
        assert!(guard.lost_timeout(Duration::ZERO).unwrap_err().is_config());
        assert!(client.flush().unwrap_err().is_config());
        // What needs no waiting still answers.
        assert!(guard.is_held());
        assert_eq!(*guard.watch().borrow(), LeaseStatus::Held);
        drop(guard);
        drop(client);
    });
}
