//! Reentrant locks on Redlock: re-entries join the grant a majority holds, a re-entry that
//! finds the owner's grant on a minority only is a fresh grant (and the old lease is lost),
//! holds are counted on every master, and owners exclude each other with masters dead and
//! frozen.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dlock::{Client, ClientOptions, LockOptions, LossReason, Owner, Wait};
use dlock_test::RedisServers;
use tokio::time::{sleep, timeout, Instant};

const LOCK: &str = "ledger";
const HOLDS: &str = "{ledger}:dlock:holds:ledger";

async fn redlock(servers: &RedisServers) -> Client {
    let options = ClientOptions::new()
        .command_timeout(Duration::from_millis(300))
        .connect_timeout(Duration::from_secs(1));
    Client::redlock_with(&servers.urls(), options)
        .await
        .unwrap()
}

/// Renewal off: nothing but the calls under test (no renewal that could find a key gone)
/// touches the lease.
fn unrenewed() -> LockOptions {
    LockOptions::new().ttl(Duration::from_secs(30)).renew(false)
}

/// How many holds each running master counts for the lock.
fn holds(servers: &RedisServers) -> Vec<i64> {
    servers
        .iter()
        .filter(|s| s.is_running())
        .map(|s| s.cmd::<i64>("SCARD", &[HOLDS]))
        .collect()
}

/// Waits (up to 2 s) until a majority of masters count `n` holds and none counts more: a call
/// returns once a majority answered; the last master's write lands a moment later, or never
/// (abandoned on a fresh server between `NOSCRIPT` and the script's load).
async fn a_majority_counts(servers: &RedisServers, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(2);
    let settled = |counts: &[i64]| {
        counts.iter().all(|&h| h <= n) && counts.iter().filter(|&&h| h == n).count() >= 2
    };
    while !settled(&holds(servers)) {
        assert!(
            Instant::now() < deadline,
            "holds per master {:?}, expected {n} on a majority and no more on any",
            holds(servers)
        );
        sleep(Duration::from_millis(5)).await;
    }
}

/// A grant needs only a majority: a master's write may have been abandoned (on a fresh
/// server, between `NOSCRIPT` and the script's load), and then it never comes. Give it a
/// moment, then copy the grant there from a master that has it, as it would have landed, so
/// every master holds it before a test takes it away from some.
async fn on_every_master(servers: &RedisServers) {
    let deadline = Instant::now() + Duration::from_millis(500);
    while holds(servers).contains(&0) && Instant::now() < deadline {
        sleep(Duration::from_millis(5)).await;
    }
    let counts = holds(servers);
    let from = counts.iter().position(|&n| n > 0).unwrap();
    for (to, _) in counts.iter().enumerate().filter(|(_, &n)| n == 0) {
        let keys: Vec<String> = servers[from].cmd("KEYS", &["*ledger*"]);
        let mut source = servers[from].connection();
        let mut target = servers[to].connection();
        for key in keys {
            let dump: Vec<u8> = redis::cmd("DUMP").arg(&key).query(&mut source).unwrap();
            let ttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut source).unwrap();
            let () = redis::cmd("RESTORE")
                .arg(&key)
                .arg(ttl.max(0))
                .arg(dump)
                .arg("REPLACE")
                .query(&mut target)
                .unwrap();
        }
    }
}

/// Deletes the owner's keys on master `i`, as an expiry there would.
fn forget_on(servers: &RedisServers, i: usize) {
    let keys: Vec<String> = servers[i].cmd("KEYS", &["*ledger*"]);
    for key in keys.iter().filter(|k| !k.contains(":fence:")) {
        let _: i64 = servers[i].cmd("DEL", &[key]);
    }
}

#[tokio::test]
async fn reentrant_holds_nest_on_every_master_and_other_owners_wait_for_the_last() {
    let servers = RedisServers::start(3);
    let (a, b) = (redlock(&servers).await, redlock(&servers).await);
    let lock = a.reentrant_lock(LOCK).unwrap();
    let owner = Owner::new().unwrap();
    let outer = lock.lock(&owner).await.unwrap();
    on_every_master(&servers).await;
    let inner = outer.reenter().await.unwrap();
    let third = lock.lock(&owner).await.unwrap();
    assert_eq!(inner.fencing_token(), outer.fencing_token());
    assert_eq!(third.fencing_token(), outer.fencing_token());
    assert_eq!(a.held_locks(), 1, "nested holds share one lease");
    a_majority_counts(&servers, 3).await;

    let other = Owner::new().unwrap();
    let theirs = b.reentrant_lock(LOCK).unwrap();
    assert!(theirs.try_lock(&other).await.unwrap_err().is_conflict());
    let waiting = b
        .reentrant_lock_with(
            LOCK,
            LockOptions::new().wait(Wait::Limit(Duration::from_secs(10))),
        )
        .unwrap();
    let waiter = tokio::spawn(async move { waiting.lock(&other).await });

    inner.release().await.unwrap();
    third.release().await.unwrap();
    a_majority_counts(&servers, 1).await;
    assert!(!waiter.is_finished(), "one hold is left");
    let fence = outer.fencing_token();
    outer.release().await.unwrap();
    let next = timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the last release wakes the other owner")
        .unwrap()
        .unwrap();
    assert!(next.fencing_token() > fence);
    next.release().await.unwrap();
    a.flush().await;
    b.flush().await;
    for server in servers.iter() {
        assert_eq!(server.cmd::<i64>("EXISTS", &[LOCK]), 0);
    }
}

/// A master that lost the owner's key (an expiry, a restart) answers a re-entry with a fresh
/// grant of its own. A majority still holds the owner's grant, so the re-entry joins it: same
/// fencing token, the lease is not lost, and the stray fresh grant is undone, also when the
/// first two answers are the fresh grant and one re-entry. Taking the largest fencing token any
/// master answered (the minority's fresh one) would make the re-entry a fresh grant and report
/// the held lease lost.
#[tokio::test]
async fn a_reentry_joins_the_grant_a_majority_holds_and_undoes_its_stray_hold() {
    let servers = RedisServers::start(3);
    let c = redlock(&servers).await;
    let lock = c.reentrant_lock_with(LOCK, unrenewed()).unwrap();
    let owner = Owner::new().unwrap();
    let outer = lock.lock(&owner).await.unwrap();
    on_every_master(&servers).await;
    forget_on(&servers, 0);
    // Master 2 answers last: the first two answers (a fresh grant, a re-entry) are no
    // majority of one grant, so the re-entry waits for the third.
    servers[2].client_pause(Duration::from_millis(150));

    let inner = outer.reenter().await.unwrap();
    assert_eq!(inner.fencing_token(), outer.fencing_token());
    assert!(outer.is_held(), "{:?}", outer.status());
    assert_eq!(c.held_locks(), 1, "the re-entry joined the outer lease");
    c.flush().await;
    assert_eq!(
        servers[0].cmd::<i64>("EXISTS", &[LOCK]),
        0,
        "the fresh grant on the master that had lost the key is undone"
    );
    assert_eq!(holds(&servers)[1..], [2, 2]);

    inner.release().await.unwrap();
    outer.release().await.unwrap();
    // A straggling master gets the release in the background: wait for it.
    c.flush().await;
    for server in servers.iter() {
        assert_eq!(server.cmd::<i64>("EXISTS", &[LOCK]), 0);
    }
}

/// When a majority no longer holds the owner's grant (and another owner held the lock in
/// between), a re-entry is a fresh grant: a fencing token above the intruder's, the old lease
/// reported lost at once, and the old grant's holds gone from the master that still had them,
/// so the new grant's last release frees the lock everywhere.
#[tokio::test]
async fn a_reentry_after_a_majority_lost_the_grant_is_fresh_and_reports_the_old_lease_lost() {
    let servers = RedisServers::start(3);
    let (a, b) = (redlock(&servers).await, redlock(&servers).await);
    let lock = a.reentrant_lock_with(LOCK, unrenewed()).unwrap();
    let owner = Owner::new().unwrap();
    let outer = lock.lock(&owner).await.unwrap();
    on_every_master(&servers).await;
    let nested = outer.reenter().await.unwrap();
    a_majority_counts(&servers, 2).await;
    forget_on(&servers, 0);
    forget_on(&servers, 1);

    let intruder = b.reentrant_lock_with(LOCK, unrenewed()).unwrap();
    let theirs = intruder.try_lock(&Owner::new().unwrap()).await.unwrap();
    let intruder_token = theirs.fencing_token();
    assert!(intruder_token > outer.fencing_token());
    theirs.release().await.unwrap();
    b.flush().await;
    // Master 0 busy (another owner's stray partial grant), so the re-entry's majority must
    // include master 2, which still has the old grant: it answers as a re-entry of it, and the
    // write-back must clear it there.
    let _: () = servers[0].cmd("SET", &[LOCK, "another-owners-stray", "PX", "30000"]);

    // The watchdog may have found the loss first (it checks its leases when each master's
    // link first connects); either way the re-entry meets the old grant on master 2.
    let again = outer.reenter().await.unwrap();
    assert!(
        again.fencing_token() > intruder_token,
        "a fresh grant carries a fresh token: {} after {intruder_token}",
        again.fencing_token()
    );
    let reason = timeout(Duration::from_millis(100), outer.lost())
        .await
        .expect("the old lease is lost by the time a fresh grant is made");
    assert_eq!(reason, LossReason::KeyGone);
    assert!(again.is_held());
    assert!(nested.release().await.unwrap_err().is_lost());
    assert!(outer.release().await.unwrap_err().is_lost());
    assert!(again.is_held());
    a.flush().await;
    assert_eq!(
        holds(&servers)[1..],
        [1, 1],
        "the new grant's one hold on masters 1 and 2: the old grant's holds were not cleared"
    );

    again.release().await.unwrap();
    a.flush().await;
    for (i, server) in servers.iter().enumerate().skip(1) {
        assert_eq!(
            server.cmd::<i64>("EXISTS", &[LOCK]),
            0,
            "master {i} still holds the lock after the last release"
        );
    }
}

/// Mutual exclusion between owners with one master of five dead and one frozen: owners nest
/// holds and release them in any order; no two owners are ever inside at once, every grant's
/// fencing token is above the previous grant's, and the lock ends free on every live master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_exclude_each_other_with_a_master_dead_and_one_frozen() {
    let mut servers = RedisServers::start(5);
    servers[3].kill();
    servers[4].pause();
    let inside = Arc::new(AtomicUsize::new(0));
    let fences = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let client = redlock(&servers).await;
        let (inside, fences) = (inside.clone(), fences.clone());
        tasks.push(tokio::spawn(async move {
            let options = LockOptions::new()
                .ttl(Duration::from_secs(5))
                .wait(Wait::Limit(Duration::from_secs(30)));
            let lock = client.reentrant_lock_with(LOCK, options).unwrap();
            let owner = Owner::new().unwrap();
            for round in 0..4 {
                let outer = lock.lock(&owner).await.unwrap();
                assert_eq!(
                    inside.fetch_add(1, Ordering::SeqCst),
                    0,
                    "two owners inside"
                );
                fences.lock().unwrap().push(outer.fencing_token());
                let inner = outer.reenter().await.unwrap();
                assert_eq!(inner.fencing_token(), outer.fencing_token());
                sleep(Duration::from_millis(5)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                // Alternate which hold goes last: either frees the lock.
                if round % 2 == 0 {
                    inner.release().await.unwrap();
                    outer.release().await.unwrap();
                } else {
                    outer.release().await.unwrap();
                    inner.release().await.unwrap();
                }
            }
            client.flush().await;
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let fences = fences.lock().unwrap().clone();
    assert_eq!(fences.len(), 16);
    assert!(
        fences.windows(2).all(|w| w[0] < w[1]),
        "fencing tokens in grant order: {fences:?}"
    );
    servers[4].resume();
    for server in servers.iter().take(3) {
        assert_eq!(server.cmd::<i64>("EXISTS", &[LOCK]), 0);
    }
}

/// A waiter's failed attempt is undone on every master that may hold it: on the master where
/// it was a fresh grant, the undo frees the lock, and a loud undo would wake the waiter
/// itself, which would retry at once and spin while the lock is held (as found for plain
/// locks). Reentrant undos are quiet too: the waiter sleeps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_behind_a_bare_majority_does_not_spin() {
    let mut servers = RedisServers::start(3);
    let holder = redlock(&servers).await;
    // Held on exactly two masters: granted with the third down, which then comes back empty.
    servers[2].kill();
    let held = holder
        .reentrant_lock(LOCK)
        .unwrap()
        .try_lock(&Owner::new().unwrap())
        .await
        .unwrap();
    servers[2].restart_empty();
    let waiter = redlock(&servers).await;
    let slow = LockOptions::new()
        .recheck(Duration::from_secs(20))
        .wait(Wait::Limit(Duration::from_secs(3)));
    let calls = |servers: &RedisServers| servers[0].script_calls();
    let before = calls(&servers);
    let waited = waiter
        .reentrant_lock_with(LOCK, slow)
        .unwrap()
        .lock(&Owner::new().unwrap())
        .await;
    assert!(waited.is_err());
    let spent = calls(&servers) - before;
    assert!(
        spent < 15,
        "{spent} script calls on one master in a 3 s wait: a spin"
    );
    held.release().await.unwrap();
}

/// A re-entry that finds the owner's grant on one master only makes a fresh grant, whose
/// write-back replaces the old grant there; if the attempt then fails (here it completes after
/// its short validity: the third master answered late), its rollback frees the lock on the
/// masters it had taken, and no new grant is made. The old lease must be reported lost all the
/// same. Found by review: it went on counting itself held.
#[tokio::test]
async fn a_failed_reentry_that_replaced_the_old_grant_reports_its_lease_lost() {
    let servers = RedisServers::start(3);
    let c = redlock(&servers).await;
    let owner = Owner::new().unwrap();
    let outer = c
        .reentrant_lock_with(LOCK, unrenewed())
        .unwrap()
        .lock(&owner)
        .await
        .unwrap();
    on_every_master(&servers).await;
    forget_on(&servers, 1);
    forget_on(&servers, 2);
    // Master 2 answers after the lease's validity: the first two answers (the old grant, a
    // fresh one) could still be joined by a third old one, so the attempt waits for it.
    servers[2].client_pause(Duration::from_millis(150));

    // The same lock with a lease shorter than that wait.
    let short = LockOptions::new()
        .ttl(Duration::from_millis(100))
        .renew(false);
    let reentry = c
        .reentrant_lock_with(LOCK, short)
        .unwrap()
        .try_lock(&owner)
        .await;
    assert!(reentry.is_err(), "completed past its validity: {reentry:?}");
    c.flush().await;
    assert_eq!(
        servers[0].cmd::<i64>("EXISTS", &[LOCK]),
        0,
        "the rollback freed the master whose copy of the old grant the write-back replaced"
    );
    let reason = timeout(Duration::from_millis(100), outer.lost())
        .await
        .expect("the old grant was replaced: its lease is lost");
    assert_eq!(reason, LossReason::KeyGone);
}

/// A re-entry that finds the owner's grant on one master, a fresh grant on another and the
/// third unreachable cannot tell whether a majority still holds the grant (the silent master
/// may): it fails with a retryable error and replaces nothing, rather than grant afresh and end
/// a lease that may be fine. Found by review: a passing timeout ended a healthy lease.
#[tokio::test]
async fn a_reentry_that_cannot_tell_leaves_the_grant_alone_and_is_retryable() {
    let mut servers = RedisServers::start(3);
    let c = redlock(&servers).await;
    let owner = Owner::new().unwrap();
    let outer = c
        .reentrant_lock_with(LOCK, unrenewed())
        .unwrap()
        .lock(&owner)
        .await
        .unwrap();
    on_every_master(&servers).await;
    let fence = outer.fencing_token().to_string();
    forget_on(&servers, 2);
    servers[1].pause();

    let error = outer.reenter().await.unwrap_err();
    assert!(error.is_retryable(), "{error:?}");
    c.flush().await;
    assert!(outer.is_held(), "{:?}", outer.status());
    let info = "{ledger}:dlock:info:ledger";
    assert_eq!(
        servers[0].cmd::<Option<String>>("HGET", &[info, "fence"]),
        Some(fence),
        "the old grant is untouched where it was"
    );
    assert_eq!(
        servers[2].cmd::<i64>("EXISTS", &[LOCK]),
        0,
        "the stray fresh grant is undone"
    );
    servers[1].resume();
    outer.release().await.unwrap();
}

/// Whether a majority of the running masters hold `owner`'s key with grant `fence`.
fn on_a_majority(servers: &RedisServers, fence: u64) -> bool {
    let info = "{ledger}:dlock:info:ledger";
    let holding = servers
        .iter()
        .filter(|s| s.is_running())
        .filter(|s| s.cmd::<Option<String>>("HGET", &[info, "fence"]) == Some(fence.to_string()))
        .count();
    holding * 2 > servers.len()
}

/// Two tasks of one owner re-enter at once while the owner's grant is on one master, a fresh
/// grant is to be had on another and the third is silent: each attempt's answers arrive over
/// time, and the other's write-back could change them before it decides. The attempts take
/// turns, so whatever each decides, every guard that counts itself held has its grant on a
/// majority. Found by review: one attempt rejoined a grant the other had just replaced, and
/// its guard counted itself held on one master of three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reentries_of_one_owner_never_leave_a_guard_on_a_minority() {
    let mut servers = RedisServers::start(3);
    let c = redlock(&servers).await;
    let lock = c.reentrant_lock_with(LOCK, unrenewed()).unwrap();
    let owner = Owner::new().unwrap();
    let outer = lock.lock(&owner).await.unwrap();
    on_every_master(&servers).await;
    forget_on(&servers, 2);
    servers[1].pause();
    let (first, second) = tokio::join!(outer.reenter(), outer.reenter());
    servers[1].resume();
    c.flush().await;
    let guards = [Ok(&outer), first.as_ref(), second.as_ref()];
    for guard in guards.into_iter().flatten() {
        if guard.is_held() {
            assert!(
                on_a_majority(&servers, guard.fencing_token()),
                "a guard counts itself held, but its grant {} is on a minority",
                guard.fencing_token()
            );
        }
    }
}
