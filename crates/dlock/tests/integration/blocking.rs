//! The blocking API from plain synchronous code: no tokio in the caller. Every deployment's
//! connector (one server, Redlock, Cluster, Sentinel), the whole guard API, and the semaphore.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use dlock::blocking::{Client, Semaphore, SemaphorePermit};
use dlock::{
    ClientOptions, LeaseStatus, LockOptions, LossReason, Owner, SemaphoreStatus, SentinelConfig,
    Wait,
};
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
    let rw = a.rw_lock("shared").unwrap();
    let (r1, r2) = (rw.try_read().unwrap(), rw.try_read().unwrap());
    assert!(rw.try_write().unwrap_err().is_conflict());
    r1.release().unwrap();
    r2.release().unwrap();
    let owner = dlock::Owner::new().unwrap();
    let outer = a.reentrant_lock("nested").unwrap().lock(&owner).unwrap();
    let inner = outer.reenter().unwrap();
    assert_eq!(inner.fencing_token(), outer.fencing_token());
    inner.release().unwrap();
    outer.release().unwrap();
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
    // A majority confirmed the release; a master that had not answered yet gets it in the
    // background (like the grant's last write, it may still be landing).
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while servers.iter().any(|s| !present_on(s, &["job"]).is_empty()) {
        assert!(
            std::time::Instant::now() < deadline,
            "not released everywhere"
        );
        std::thread::sleep(Duration::from_millis(10));
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

/// Polls `condition` every 10 ms until it holds; fails the test after 10 s, naming `what`.
fn until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// How many connections of `server` listen for the wake-ups a release of semaphore `name`
/// publishes (its companion channel, `{name}:dlock:released:name`).
fn wakeup_subscribers(server: &RedisServer, name: &str) -> i64 {
    let channel = format!("{{{name}}}:dlock:released:{name}");
    let (_, count): (String, i64) = server.cmd("PUBSUB", &["NUMSUB", &channel]);
    count
}

/// The fencing tokens of a conflict's holders, sorted.
fn tokens<'a>(holders: impl IntoIterator<Item = &'a dlock::HolderInfo>) -> Vec<u64> {
    let mut tokens: Vec<u64> = holders.into_iter().map(|h| h.fencing_token).collect();
    tokens.sort_unstable();
    tokens
}

/// The fencing tokens of a semaphore status's holders, sorted.
fn holder_tokens(status: &SemaphoreStatus) -> Vec<u64> {
    tokens(status.holders.iter().map(|h| &h.info))
}

#[test]
fn a_semaphore_of_two_gives_out_two_permits_and_refuses_a_third_naming_both_holders() {
    let server = RedisServer::start();
    let a = Client::connect(&server.url()).unwrap();
    let b = Client::connect(&server.url()).unwrap();
    assert!(a.semaphore("exports", 0).unwrap_err().is_config());
    let options = LockOptions::new().label("export");
    // Two threads, each with its own client, take one permit each.
    let take = |client: &Client| {
        let semaphore = client
            .semaphore_with("exports", 2, options.clone())
            .unwrap();
        std::thread::spawn(move || semaphore.try_acquire().unwrap())
    };
    let (first, second) = (take(&a), take(&b));
    let (first, second) = (first.join().unwrap(), second.join().unwrap());
    assert_ne!(first.fencing_token(), second.fencing_token());
    assert_eq!((first.permits(), first.name()), (1, "exports"));

    let semaphore = a.semaphore("exports", 2).unwrap();
    assert_eq!(semaphore.permits(), 2);
    let err = semaphore.try_acquire().unwrap_err();
    let conflict = err.conflict().unwrap_or_else(|| panic!("{err:?}"));
    assert_eq!(conflict.key, "exports");
    assert_eq!(conflict.limit, Some(2));
    let mut expected = vec![first.fencing_token(), second.fencing_token()];
    expected.sort_unstable();
    assert_eq!(tokens(&conflict.holders), expected, "{conflict:?}");
    for holder in &conflict.holders {
        assert_eq!(holder.permits, 1);
        assert_eq!(holder.pid, Some(std::process::id()));
        assert_eq!(holder.label.as_deref(), Some("export"));
    }
    assert!(err.to_string().contains("no permit"), "{err}");
    // A program naming another limit is refused rather than enforcing its own.
    let three = b.semaphore("exports", 3).unwrap();
    assert!(three.try_acquire().unwrap_err().is_config());

    // A permit given back is a permit free.
    second.release().unwrap();
    let third = semaphore.try_acquire().unwrap();
    assert!(third.fencing_token() > expected[1]);
    third.release().unwrap();
    first.release().unwrap();
    assert_eq!(a.held_locks() + b.held_locks(), 0);
}

#[test]
fn a_thread_waiting_in_acquire_gets_the_permit_another_thread_releases() {
    let server = RedisServer::start();
    let a = Client::connect(&server.url()).unwrap();
    let b = Client::connect(&server.url()).unwrap();
    let held = a.semaphore("exports", 2).unwrap();
    let (first, second) = (held.try_acquire().unwrap(), held.try_acquire().unwrap());

    // Both leases run 30 s and the re-check is a minute away: within the 10 s wait, only the
    // release's wake-up can get the waiter a permit (otherwise it fails with a timeout).
    let patient = LockOptions::new()
        .wait(Wait::Limit(Duration::from_secs(10)))
        .recheck(Duration::from_secs(60));
    let semaphore = b.semaphore_with("exports", 2, patient).unwrap();
    let waiter = std::thread::spawn(move || semaphore.acquire());
    // The waiter subscribes to wake-ups only after it found no permit free.
    until("the waiter subscribed", || {
        wakeup_subscribers(&server, "exports") == 1
    });
    assert!(!waiter.is_finished(), "no permit was free");
    assert_eq!(held.status().unwrap().holders.len(), 2);

    let freed = first.fencing_token();
    first.release().unwrap();
    let permit = waiter.join().unwrap().expect("woken by the release");
    assert!(permit.fencing_token() > second.fencing_token());
    assert!(permit.is_held());
    let holders = held.status().unwrap().holders;
    let now: Vec<u64> = holders.iter().map(|h| h.info.fencing_token).collect();
    assert!(!now.contains(&freed), "{holders:?}");
    assert!(now.contains(&permit.fencing_token()), "{holders:?}");
    permit.release().unwrap();
    second.release().unwrap();
}

#[test]
fn lost_timeout_reports_the_permit_freed_by_force_release_permits_and_spares_the_other() {
    let server = RedisServer::start();
    let client = Client::connect_with(&server.url(), quick()).unwrap();
    let ttl = Duration::from_secs(2);
    let semaphore = client
        .semaphore_with("exports", 2, LockOptions::new().ttl(ttl))
        .unwrap();
    assert_eq!(semaphore.options().ttl_value(), ttl);
    let stuck = semaphore.try_acquire().unwrap();
    let fine = semaphore.try_acquire().unwrap();
    assert_eq!(stuck.ttl(), ttl);
    assert!(stuck.remaining() > Duration::ZERO && stuck.remaining() <= ttl);
    let watch = stuck.watch();
    assert_eq!(*watch.borrow(), LeaseStatus::Held);
    assert_eq!(
        stuck.lost_timeout(Duration::from_millis(300)).unwrap(),
        None
    );
    let margin = Duration::from_millis(500);
    assert!(!stuck
        .renewal_at_risk_timeout(margin, Duration::from_millis(100))
        .unwrap());
    stuck.extend(Duration::from_secs(3)).unwrap();
    assert_eq!(stuck.ttl(), Duration::from_secs(3));

    assert!(client
        .force_release_permits("exports", Some(0))
        .unwrap_err()
        .is_config());
    let before = client
        .force_release_permits("exports", Some(stuck.fencing_token()))
        .unwrap();
    assert_eq!(before.freed, 1);
    assert_eq!(before.holders.len(), 2, "the state before: {before:?}");

    // Its next renewal finds the permit gone; the other holder's renewals go on.
    let reason = stuck.lost_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(reason, Some(LossReason::KeyGone), "{:?}", stuck.status());
    assert_eq!(stuck.lost().unwrap(), LossReason::KeyGone);
    assert!(watch.has_changed().unwrap());
    assert_eq!(stuck.status(), LeaseStatus::Lost(LossReason::KeyGone));
    assert!(!stuck.is_held());
    assert_eq!(stuck.remaining(), Duration::ZERO);
    assert!(stuck
        .renewal_at_risk_timeout(margin, Duration::ZERO)
        .unwrap());
    assert!(stuck.extend(ttl).unwrap_err().is_lost());
    assert_eq!(fine.lost_timeout(Duration::ZERO).unwrap(), None);
    assert!(fine.is_held());
    let after = client.semaphore_status("exports").unwrap();
    assert_eq!(holder_tokens(&after), [fine.fencing_token()]);
    assert_eq!(after.free, 1);

    assert!(stuck.release().unwrap_err().is_lost());
    fine.release().unwrap();
}

#[test]
fn acquire_many_takes_both_permits_of_a_limit_of_two_as_one_holder() {
    let server = RedisServer::start();
    let a = Client::connect(&server.url()).unwrap();
    let b = Client::connect(&server.url()).unwrap();
    let semaphore = a.semaphore("exports", 2).unwrap();
    for never in [0, 3] {
        let err = semaphore.acquire_many(never).unwrap_err();
        assert!(err.is_config(), "{never} permits: {err:?}");
        assert!(semaphore.try_acquire_many(never).unwrap_err().is_config());
    }

    let both = semaphore.acquire_many(2).unwrap();
    assert_eq!(both.permits(), 2);
    let other = b.semaphore("exports", 2).unwrap();
    let err = other.try_acquire().unwrap_err();
    let conflict = err.conflict().unwrap_or_else(|| panic!("{err:?}"));
    assert_eq!(tokens(&conflict.holders), [both.fencing_token()]);
    assert_eq!(conflict.holders[0].permits, 2);
    let status = other.status().unwrap();
    assert_eq!((status.limit, status.free), (Some(2), 0));
    assert_eq!(status.holders.len(), 1, "{status:?}");
    assert_eq!(status.holders[0].info.permits, 2);

    both.release().unwrap();
    let again = other.try_acquire_many(2).unwrap();
    assert_eq!(again.permits(), 2);
    again.release().unwrap();
}

#[test]
fn status_and_list_semaphores_show_the_holders() {
    let server = RedisServer::start();
    let client = Client::connect(&server.url()).unwrap();
    let exports = client
        .semaphore_with("jobs:exports", 3, LockOptions::new().label("export"))
        .unwrap();
    assert_eq!(exports.name(), "jobs:exports");
    let one = exports.try_acquire().unwrap();
    let two = exports.try_acquire_many(2).unwrap();
    let imports = client.semaphore("jobs:imports", 1).unwrap();
    let imports = imports.try_acquire().unwrap();
    let other = client.semaphore("other", 1).unwrap().try_acquire().unwrap();

    let status = exports.status().unwrap();
    assert_eq!(status.key, "jobs:exports");
    assert_eq!((status.limit, status.free, status.freed), (Some(3), 0, 0));
    assert_eq!(status.last_fencing_token, Some(two.fencing_token()));
    let mut held: Vec<(u64, u32)> = status
        .holders
        .iter()
        .map(|h| (h.info.fencing_token, h.info.permits))
        .collect();
    held.sort_unstable();
    assert_eq!(held, [(one.fencing_token(), 1), (two.fencing_token(), 2)]);
    for holder in &status.holders {
        assert_eq!(holder.info.label.as_deref(), Some("export"));
        assert!(holder.ttl_left > Duration::ZERO && holder.ttl_left <= dlock::DEFAULT_TTL);
    }
    let by_name = client.semaphore_status("jobs:exports").unwrap();
    assert_eq!(holder_tokens(&by_name), holder_tokens(&status));

    let listed: Vec<String> = client
        .list_semaphores("jobs:*")
        .unwrap()
        .into_iter()
        .map(|status| status.key)
        .collect();
    assert_eq!(listed, ["jobs:exports", "jobs:imports"]);
    for permit in [one, two, imports, other] {
        permit.release().unwrap();
    }
    assert!(client.list_semaphores("*").unwrap().is_empty());
}

#[test]
fn set_limit_and_a_forced_release_of_every_holder_from_plain_synchronous_code() {
    let server = RedisServer::start();
    let client = Client::connect(&server.url()).unwrap();
    let exports = client.semaphore("exports", 3).unwrap();
    let one = exports.try_acquire().unwrap();
    let two = exports.try_acquire_many(2).unwrap();

    // A deliberate change of the limit: one more permit free, and the old limit refused.
    assert_eq!(exports.set_limit(4).unwrap(), Some(3));
    assert_eq!(exports.permits(), 4);
    assert_eq!(client.semaphore_status("exports").unwrap().free, 1);
    let stale = client.semaphore("exports", 3).unwrap();
    assert!(stale.try_acquire().unwrap_err().is_config());

    // A forced release frees every holder but keeps the stored limit (waiters may need it);
    // the next release that leaves nothing behind drops it, and the semaphore is idle.
    let before = client.force_release_permits("exports", None).unwrap();
    assert_eq!(before.freed, 2);
    assert_eq!(
        holder_tokens(&before),
        [one.fencing_token(), two.fencing_token()]
    );
    let freed = client.semaphore_status("exports").unwrap();
    assert_eq!((freed.limit, freed.free), (Some(4), 4), "{freed:?}");
    assert!(freed.holders.is_empty(), "{freed:?}");
    assert!(one.release().unwrap_err().is_lost());
    assert!(two.release().unwrap_err().is_lost());
    exports.try_acquire_many(4).unwrap().release().unwrap();
    let idle = client.semaphore_status("exports").unwrap();
    assert_eq!((idle.limit, idle.holders.len()), (None, 0), "{idle:?}");
    assert!(client.list_semaphores("*").unwrap().is_empty());
}

/// Every blocking semaphore call that may wait, made once, with its name and outcome.
fn every_waiting_call(
    client: &Client,
    semaphore: &Semaphore,
    permit: &SemaphorePermit,
) -> Vec<(&'static str, dlock::Result<()>)> {
    let margin = Duration::from_millis(500);
    vec![
        ("try_acquire", semaphore.try_acquire().map(drop)),
        ("acquire", semaphore.acquire().map(drop)),
        ("try_acquire_many", semaphore.try_acquire_many(2).map(drop)),
        ("acquire_many", semaphore.acquire_many(2).map(drop)),
        ("set_limit", semaphore.set_limit(3).map(drop)),
        ("status", semaphore.status().map(drop)),
        (
            "semaphore_status",
            client.semaphore_status("exports").map(drop),
        ),
        ("list_semaphores", client.list_semaphores("*").map(drop)),
        (
            "force_release_permits",
            client.force_release_permits("exports", None).map(drop),
        ),
        ("lost", permit.lost().map(drop)),
        (
            "lost_timeout",
            permit.lost_timeout(Duration::ZERO).map(drop),
        ),
        (
            "renewal_at_risk_timeout",
            permit
                .renewal_at_risk_timeout(margin, Duration::ZERO)
                .map(drop),
        ),
        ("extend", permit.extend(Duration::from_secs(5))),
    ]
}

#[test]
fn a_blocking_semaphore_refuses_to_wait_inside_an_async_runtime() {
    let server = RedisServer::start();
    let client = Client::connect(&server.url()).unwrap();
    let semaphore = client.semaphore("exports", 2).unwrap();
    let permit = semaphore.try_acquire().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for (method, result) in every_waiting_call(&client, &semaphore, &permit) {
            let err = result.unwrap_err();
            assert!(err.is_config(), "{method}: {err:?}");
        }
        // What needs no waiting still answers.
        assert!(permit.is_held());
        assert_eq!(*permit.watch().borrow(), LeaseStatus::Held);
        assert_eq!(semaphore.permits(), 2);
    });
    // Nothing was taken, changed or broken meanwhile.
    let status = client.semaphore_status("exports").unwrap();
    assert_eq!(status.limit, Some(2));
    assert_eq!(holder_tokens(&status), [permit.fencing_token()]);

    // A release refused there still gives the permit back, in the background.
    let refused = runtime.block_on(async { permit.release() });
    assert!(refused.unwrap_err().is_config());
    client.flush().unwrap();
    assert!(client
        .semaphore_status("exports")
        .unwrap()
        .holders
        .is_empty());
}
