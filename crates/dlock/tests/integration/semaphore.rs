//! The counting semaphore: never more than N permits out, permits that expire with their
//! holder's lease (server clock), the stored limit, fair order, wake-ups, and every deployment.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dlock::{Client, ClientOptions, Error, LockOptions, LossReason, Wait};
use dlock_test::{RedisCluster, RedisServer, RedisServers, TcpProxy};
use tokio::time::{sleep, timeout, Instant};

use crate::support::{client, epsilon, monitored};

fn waiting(limit: Duration) -> LockOptions {
    LockOptions::new().wait(Wait::Limit(limit))
}

/// Many clients and tasks hammer one semaphore of 3: the number inside (counted by the test,
/// between a grant returning and its release being sent) never exceeds 3, and reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_more_than_n_holders_under_contention() {
    let server = RedisServer::start();
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let c = client(&server).await;
        for _ in 0..3 {
            let semaphore = c
                .semaphore_with("pool", 3, waiting(Duration::from_secs(20)))
                .unwrap();
            let (inside, most) = (inside.clone(), most.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..15 {
                    let permit = semaphore.acquire().await.unwrap();
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    sleep(Duration::from_millis(2)).await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                    permit.release().await.unwrap();
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let most = most.load(Ordering::SeqCst);
    assert!(most <= 3, "{most} holders inside a semaphore of 3");
    assert_eq!(most, 3, "the semaphore never filled up: is it too strict?");
    let idle = client(&server)
        .await
        .semaphore_status("pool")
        .await
        .unwrap();
    assert_eq!(idle.limit, None, "an idle semaphore leaves no limit behind");
    let exists: i64 = server.cmd("EXISTS", &["pool"]);
    assert_eq!(exists, 0);
}

/// Takes a permit on a runtime of its own, then kills that runtime without releasing: the
/// watchdog dies with it, as in a crashed process.
fn take_permit_and_vanish(url: String, ttl: Duration) -> u64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let token = runtime.block_on(async {
        let client = Client::connect(&url).await.unwrap();
        let semaphore = client
            .semaphore_with("crash", 1, LockOptions::new().ttl(ttl))
            .unwrap();
        let permit = semaphore.try_acquire().await.unwrap();
        let token = permit.fencing_token();
        std::mem::forget(permit);
        std::mem::forget(client);
        token
    });
    runtime.shutdown_background();
    token
}

#[tokio::test]
async fn a_crashed_holders_permit_is_free_again_within_one_ttl() {
    let server = RedisServer::start();
    let c = client(&server).await;
    let epsilon = epsilon(&c).await;
    let ttl = Duration::from_secs(1);
    let url = server.url();
    let dead = tokio::task::spawn_blocking(move || take_permit_and_vanish(url, ttl))
        .await
        .unwrap();
    let vanished_at = Instant::now();
    let semaphore = c
        .semaphore_with("crash", 1, waiting(Duration::from_secs(10)))
        .unwrap();
    let busy = semaphore.try_acquire().await.unwrap_err();
    let conflict = busy.conflict().expect("a conflict");
    assert_eq!(conflict.limit, Some(1));
    assert_eq!(conflict.holders.len(), 1, "{conflict:?}");
    let permit = semaphore.acquire().await.expect("free once the lease ends");
    let blocked = vanished_at.elapsed();
    assert!(
        blocked <= ttl + epsilon,
        "blocked {blocked:?} by a dead holder (TTL {ttl:?}, ε {epsilon:?})"
    );
    assert!(permit.fencing_token() > dead);
    permit.release().await.unwrap();
}

/// A holder cut off from Redis knows its permit is gone before anyone else can have it, and
/// its late release reports the loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_holder_is_told_before_its_permit_goes_to_another() {
    let server = RedisServer::start();
    let proxy = TcpProxy::start(server.port());
    let options = ClientOptions::new().command_timeout(Duration::from_millis(300));
    let a = Client::connect_with(&proxy.url(), options).await.unwrap();
    let b = client(&server).await;
    let ttl = Duration::from_secs(1);
    let permit = a
        .semaphore_with("cut", 1, LockOptions::new().ttl(ttl))
        .unwrap()
        .try_acquire()
        .await
        .unwrap();
    proxy.cut();
    a.flush().await;
    let semaphore = b
        .semaphore_with(
            "cut",
            1,
            LockOptions::new().ttl(ttl).wait(Wait::Limit(ttl * 3)),
        )
        .unwrap();
    let (theirs, lost) = tokio::join!(semaphore.acquire(), async {
        let reason = timeout(ttl * 3, permit.lost()).await;
        (reason, Instant::now())
    });
    let theirs = theirs.expect("B gets the permit once A's lease ends");
    let b_granted_at = Instant::now();
    let (reason, a_told_at) = lost;
    assert!(
        matches!(reason, Ok(LossReason::Unreachable(_))),
        "{reason:?}"
    );
    assert!(
        a_told_at < b_granted_at,
        "A was told after B had its permit"
    );
    proxy.heal();
    let late = permit.release().await.unwrap_err();
    assert!(late.is_lost(), "{late:?}");
    assert!(theirs.is_held());
    theirs.release().await.unwrap();
}

#[tokio::test]
async fn a_forced_release_of_one_holder_is_reported_to_it_and_to_no_other() {
    let server = RedisServer::start();
    let c = client(&server).await;
    let options = LockOptions::new()
        .ttl(Duration::from_millis(600))
        .label("export");
    let semaphore = c.semaphore_with("jobs", 3, options).unwrap();
    let one = semaphore.try_acquire().await.unwrap();
    let two = semaphore.try_acquire_many(2).await.unwrap();
    let status = c.semaphore_status("jobs").await.unwrap();
    assert_eq!(status.limit, Some(3));
    assert_eq!(status.free, 0);
    assert_eq!(status.holders.len(), 2);
    let permits: Vec<u32> = status.holders.iter().map(|h| h.info.permits).collect();
    assert_eq!(permits.iter().sum::<u32>(), 3, "{status:?}");
    assert!(status
        .holders
        .iter()
        .all(|h| h.info.label.as_deref() == Some("export") && h.info.pid.is_some()));
    assert_eq!(status.last_fencing_token, Some(two.fencing_token()));

    let listed = c.list_semaphores("jo*").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key, "jobs");
    assert!(c.list_semaphores("other*").await.unwrap().is_empty());

    let before = c
        .force_release_permits("jobs", Some(two.fencing_token()))
        .await
        .unwrap();
    assert_eq!(before.freed, 1);
    let reason = timeout(Duration::from_secs(2), two.lost())
        .await
        .expect("the freed holder is told at its next renewal");
    assert_eq!(reason, LossReason::KeyGone);
    assert!(one.is_held());
    // One permit out of three is in use: two are free again.
    let again = semaphore.try_acquire_many(2).await.unwrap();
    assert!(again.fencing_token() > two.fencing_token());
    assert!(two.release().await.unwrap_err().is_lost());
    one.release().await.unwrap();
    again.release().await.unwrap();
}

#[tokio::test]
async fn a_caller_naming_another_limit_is_refused_until_the_limit_is_changed() {
    let server = RedisServer::start();
    let c = client(&server).await;
    let two = c.semaphore("limit", 2).unwrap();
    let held = two.try_acquire().await.unwrap();
    let three = c.semaphore("limit", 3).unwrap();
    let refused = three.try_acquire().await.unwrap_err();
    assert!(refused.is_config(), "{refused:?}");
    assert!(refused.to_string().contains('2'), "{refused}");
    // Waiting does not hide a mismatch either.
    let refused = three.acquire().await.unwrap_err();
    assert!(refused.is_config(), "{refused:?}");
    assert_eq!(three.set_limit(3).await.unwrap(), Some(2));
    let taken = three.try_acquire_many(2).await.unwrap();
    assert!(two.try_acquire().await.unwrap_err().is_config());
    assert!(c.semaphore("limit", 0).unwrap_err().is_config());
    assert!(three.try_acquire_many(4).await.unwrap_err().is_config());
    assert!(three.try_acquire_many(0).await.unwrap_err().is_config());
    held.release().await.unwrap();
    taken.release().await.unwrap();
    // Idle: the next caller's limit is stored.
    let five = c.semaphore("limit", 5).unwrap();
    five.try_acquire().await.unwrap().release().await.unwrap();
}

/// Fair mode: a waiter for 3 permits at the head of the queue is not overtaken by a later
/// waiter for 1, even when 1 permit is free.
#[tokio::test]
async fn fair_mode_serves_a_big_request_before_later_small_ones() {
    let server = RedisServer::start();
    let c = client(&server).await;
    let options = LockOptions::new()
        .fair(true)
        .wait(Wait::Limit(Duration::from_secs(10)));
    let semaphore = c.semaphore_with("fair", 3, options).unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(semaphore.try_acquire().await.unwrap());
    }
    let queue = "{fair}:dlock:queue:fair";
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let big = {
        let (semaphore, order) = (semaphore.clone(), order.clone());
        tokio::spawn(async move {
            let permit = semaphore.acquire_many(3).await.unwrap();
            order.lock().unwrap().push("big");
            sleep(Duration::from_millis(50)).await;
            permit.release().await.unwrap();
        })
    };
    queued(&server, queue, 1).await;
    let small = {
        let (semaphore, order) = (semaphore.clone(), order.clone());
        tokio::spawn(async move {
            let permit = semaphore.acquire().await.unwrap();
            order.lock().unwrap().push("small");
            permit.release().await.unwrap();
        })
    };
    queued(&server, queue, 2).await;
    // One permit frees up: the small waiter would fit, but the big one is ahead.
    held.pop().unwrap().release().await.unwrap();
    // A fair semaphore must not serve `small` now; give it every chance to (its wake-up
    // and a retry take a round trip or two), then let `big` in.
    sleep(Duration::from_millis(200)).await;
    assert!(
        order.lock().unwrap().is_empty(),
        "{:?}",
        order.lock().unwrap()
    );
    for permit in held {
        permit.release().await.unwrap();
    }
    big.await.unwrap();
    small.await.unwrap();
    assert_eq!(*order.lock().unwrap(), ["big", "small"]);
}

/// Waits until the fair queue `key` has `n` waiters.
async fn queued(server: &RedisServer, key: &str, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.cmd::<i64>("LLEN", &[key]) < n {
        assert!(Instant::now() < deadline, "nobody queued on {key}");
        sleep(Duration::from_millis(5)).await;
    }
}

/// A release wakes a waiter at once: far sooner than its re-check or the holder's TTL.
#[tokio::test]
async fn a_release_wakes_a_waiter_without_polling() {
    let server = RedisServer::start();
    let c = client(&server).await;
    let slow_recheck = LockOptions::new()
        .recheck(Duration::from_secs(20))
        .wait(Wait::Limit(Duration::from_secs(20)));
    let semaphore = c.semaphore_with("wake", 1, slow_recheck).unwrap();
    let held = semaphore.try_acquire().await.unwrap();
    let waiter = tokio::spawn({
        let semaphore = semaphore.clone();
        async move { semaphore.acquire().await.map(|p| (p, Instant::now())) }
    });
    // The waiter is subscribed once the channel has a subscriber.
    let channel = "{wake}:dlock:released:wake";
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let subs: Vec<redis::Value> = server.cmd("PUBSUB", &["NUMSUB", channel]);
        if matches!(subs.get(1), Some(redis::Value::Int(n)) if *n > 0) {
            break;
        }
        assert!(Instant::now() < deadline, "the waiter never subscribed");
        sleep(Duration::from_millis(5)).await;
    }
    let released_at = Instant::now();
    held.release().await.unwrap();
    let (permit, granted_at) = timeout(Duration::from_secs(5), waiter)
        .await
        .expect("woken long before the 20 s re-check")
        .unwrap()
        .unwrap();
    assert!(granted_at - released_at < Duration::from_secs(2));
    permit.release().await.unwrap();
}

#[tokio::test]
async fn a_permit_lost_to_a_restart_is_reported_at_once() {
    let mut server = RedisServer::start();
    let holder = client(&server).await;
    let options = LockOptions::new().ttl(Duration::from_secs(30));
    let permit = holder
        .semaphore_with("nightly", 2, options)
        .unwrap()
        .try_acquire()
        .await
        .unwrap();
    monitored(&server, 1).await;
    server.restart_empty();
    let reason = timeout(Duration::from_secs(3), permit.lost())
        .await
        .expect("the loss was not reported after a restart");
    assert_eq!(reason, LossReason::KeyGoneAfterReconnect);
    match permit.release().await.unwrap_err() {
        Error::Lost { reason, .. } => assert_eq!(reason, LossReason::KeyGoneAfterReconnect),
        other => panic!("expected Lost, got {other:?}"),
    }
}

#[tokio::test]
async fn renewal_keeps_a_permit_past_its_ttl() {
    let server = RedisServer::start();
    let c = client(&server).await;
    let ttl = Duration::from_millis(300);
    let permit = c
        .semaphore_with("renewed", 1, LockOptions::new().ttl(ttl))
        .unwrap()
        .try_acquire()
        .await
        .unwrap();
    sleep(ttl * 4).await;
    assert!(permit.is_held());
    let other = c.semaphore("renewed", 1).unwrap().try_acquire().await;
    assert!(other.unwrap_err().is_conflict());
    permit.release().await.unwrap();
}

#[tokio::test]
async fn a_lock_and_a_semaphore_cannot_share_a_name() {
    let server = RedisServer::start();
    let c = client(&server).await;
    let lock = c.lock("shared-name").unwrap().try_lock().await.unwrap();
    let err = c
        .semaphore("shared-name", 2)
        .unwrap()
        .try_acquire()
        .await
        .unwrap_err();
    assert!(!err.is_conflict(), "{err:?}");
    lock.release().await.unwrap();
}

/// Redlock: a permit of a 2-permit semaphore needs more than M·N/(N+1) masters (4 of 5), so
/// one dead master of five changes nothing; fencing tokens keep increasing across the masters.
#[tokio::test]
async fn on_redlock_permits_survive_a_dead_master_of_five() {
    let mut servers = RedisServers::start(5);
    let options = ClientOptions::new().command_timeout(Duration::from_millis(300));
    let c = Client::redlock_with(&servers.urls(), options)
        .await
        .unwrap();
    let semaphore = c.semaphore("rl", 2).unwrap();
    let before = semaphore.try_acquire().await.unwrap();
    let first_token = before.fencing_token();
    before.release().await.unwrap();
    // One master of five dies: grants need 4, so they land on every live one. (A permit
    // granted on exactly four masters before one of them died would be held on three, fewer
    // than its grant needed: lost, as a Redlock lock on a bare majority is.)
    servers[0].kill();
    let a = semaphore.try_acquire().await.unwrap();
    let b = semaphore.try_acquire().await.unwrap();
    assert!(b.fencing_token() > first_token);
    assert!(semaphore.try_acquire().await.unwrap_err().is_conflict());
    a.release().await.unwrap();
    let c2 = semaphore.try_acquire().await.unwrap();
    assert!(c2.fencing_token() > b.fencing_token());
    assert!(semaphore.try_acquire().await.unwrap_err().is_conflict());
    // A holder counts where as many masters hold it as its grant needed: `c2` is on every
    // live one.
    let status = c.semaphore_status("rl").await.unwrap();
    assert!(
        status
            .holders
            .iter()
            .any(|h| h.info.fencing_token == c2.fencing_token()),
        "{status:?}"
    );
    assert!(c
        .semaphore_with("rl", 2, LockOptions::new().fair(true))
        .unwrap_err()
        .is_config());
    b.release().await.unwrap();
    c2.release().await.unwrap();
}

/// The review's counter-example to a bare majority: on three masters with 2 permits, holders
/// A on masters {0, 1} and B on {1, 2} leave masters 0 and 2 one permit each. A majority rule
/// would grant C on {0, 2}: three permits out of two. Needing more than M·N/(N+1) = 2 masters
/// refuses it (master 1 is full).
#[tokio::test]
async fn on_redlock_a_permit_needs_enough_masters_that_no_node_can_hold_n_plus_one() {
    let servers = RedisServers::start(3);
    let urls = servers.urls();
    let mut placed = Vec::new();
    for master in [0, 1, 1, 2] {
        let single = Client::connect(&urls[master]).await.unwrap();
        let permit = single
            .semaphore("split", 2)
            .unwrap()
            .try_acquire()
            .await
            .unwrap();
        placed.push((single, permit));
    }
    let c = Client::redlock(&urls).await.unwrap();
    let refused = c
        .semaphore("split", 2)
        .unwrap()
        .try_acquire()
        .await
        .unwrap_err();
    assert!(
        refused.is_conflict(),
        "a third permit was granted: {refused:?}"
    );
    for (_, permit) in placed {
        permit.release().await.unwrap();
    }
    let granted = c
        .semaphore("split", 2)
        .unwrap()
        .try_acquire()
        .await
        .unwrap();
    granted.release().await.unwrap();
}

/// Cluster: each semaphore's keys live in one slot, on that slot's master; renewal and release
/// work there.
#[tokio::test]
async fn on_a_cluster_each_semaphore_lives_in_its_slot() {
    let cluster = RedisCluster::start(3);
    let options = ClientOptions::new().command_timeout(Duration::from_secs(1));
    let c = Client::cluster_with(&cluster.urls()[..1], options)
        .await
        .unwrap();
    let ttl = Duration::from_millis(300);
    let mut permits = Vec::new();
    for name in ["alpha", "bravo", "charlie", "delta"] {
        let semaphore = c
            .semaphore_with(name, 1, LockOptions::new().ttl(ttl))
            .unwrap();
        permits.push(semaphore.try_acquire().await.unwrap());
    }
    sleep(ttl * 3).await;
    for permit in &permits {
        assert!(permit.is_held(), "{} not renewed", permit.name());
        let again = c.semaphore(permit.name(), 1).unwrap().try_acquire().await;
        assert!(again.unwrap_err().is_conflict());
    }
    for permit in permits {
        permit.release().await.unwrap();
    }
    for name in ["alpha", "bravo", "charlie", "delta"] {
        assert_eq!(c.semaphore_status(name).await.unwrap().limit, None);
    }
}

/// A name taken by a lock is refused at once on Redlock too: every master's refusal is
/// permanent, so waiting does not retry it until the wait limit (it used to, as a quorum
/// "unavailable" error).
#[tokio::test]
async fn on_redlock_a_name_held_by_a_lock_is_refused_at_once_not_waited_for() {
    let servers = RedisServers::start(3);
    let c = Client::redlock(&servers.urls()).await.unwrap();
    let lock = c.lock("taken").unwrap().try_lock().await.unwrap();
    let semaphore = c
        .semaphore_with("taken", 2, waiting(Duration::from_secs(10)))
        .unwrap();
    let asked = Instant::now();
    let err = timeout(Duration::from_secs(5), semaphore.acquire())
        .await
        .expect("refused long before the 10 s wait limit")
        .unwrap_err();
    assert!(!err.is_retryable(), "{err:?}");
    assert!(asked.elapsed() < Duration::from_secs(2));
    lock.release().await.unwrap();
}

/// A lock's forced release refuses a semaphore's name (it used to wipe every permit behind
/// the holders' backs), and a name that changes type under a held lease fails that lease
/// alone: the other leases renewed in the same batched call keep being renewed (a permit
/// beside a permit, a lock beside a lock).
#[tokio::test]
async fn a_name_that_changes_type_harms_only_its_own_leases() {
    let server = RedisServer::start();
    let c = client(&server).await;
    let other = client(&server).await;
    let ttl = Duration::from_millis(600);
    let options = LockOptions::new().ttl(ttl);
    let permit = |name: &'static str| {
        let semaphore = c.semaphore_with(name, 2, options.clone()).unwrap();
        async move { semaphore.try_acquire().await.unwrap() }
    };
    let lock = |name: &'static str| {
        let lock = c.lock_with(name, options.clone()).unwrap();
        async move { lock.try_lock().await.unwrap() }
    };
    let (doomed_permit, steady_permit) = (permit("switch-p").await, permit("steady-p").await);
    let (doomed_lock, steady_lock) = (lock("switch-l").await, lock("steady-l").await);
    let err = c.force_release("switch-p").await.unwrap_err();
    assert!(err.to_string().contains("not a lock"), "{err}");
    assert_eq!(
        c.semaphore_status("switch-p").await.unwrap().holders.len(),
        1
    );
    // An operator frees both, and the names change type while their holders still believe
    // in their leases.
    c.force_release_permits("switch-p", None).await.unwrap();
    c.force_release("switch-l").await.unwrap();
    let _: () = server.cmd("SET", &["switch-p", "someone-else", "PX", "60000"]);
    let theirs = other
        .semaphore("switch-l", 1)
        .unwrap()
        .try_acquire()
        .await
        .unwrap();
    for (what, lost) in [
        ("permit", timeout(ttl * 2, doomed_permit.lost()).await),
        ("lock", timeout(ttl * 2, doomed_lock.lost()).await),
    ] {
        assert_eq!(lost.expect(what), LossReason::KeyGone, "{what}");
    }
    // The leases batched with them were renewed all along: held two TTLs later.
    sleep(ttl * 2).await;
    assert!(steady_permit.is_held(), "{:?}", steady_permit.status());
    assert!(steady_lock.is_held(), "{:?}", steady_lock.status());
    steady_permit.release().await.unwrap();
    steady_lock.release().await.unwrap();
    theirs.release().await.unwrap();
}

/// Review finding: raising the limit on Redlock while permits are out let permits granted
/// on fewer masters (under the old limit) add up to more than the new one. A raise now waits
/// for the holders to leave; lowering is always allowed.
#[tokio::test]
async fn on_redlock_the_limit_is_raised_only_while_nobody_holds_a_permit() {
    let servers = RedisServers::start(5);
    let c = Client::redlock(&servers.urls()).await.unwrap();
    let semaphore = c.semaphore("grow", 1).unwrap();
    let held = semaphore.try_acquire().await.unwrap();
    let refused = semaphore.set_limit(3).await.unwrap_err();
    assert!(refused.is_config(), "{refused:?}");
    assert_eq!(semaphore.permits(), 1, "the handle kept its limit");
    // The refused raise left no master with the new limit (the idle ones had taken it).
    for server in servers.iter() {
        let stored: Option<String> = server.cmd("HGET", &["{grow}:dlock:sem:grow", "limit"]);
        assert_ne!(stored.as_deref(), Some("3"), "port {}", server.port());
    }
    held.release().await.unwrap();
    // Masters the release did not wait for get it in the background.
    c.flush().await;
    assert_eq!(
        semaphore.set_limit(3).await.unwrap(),
        None,
        "idle: nothing stored"
    );
    let a = semaphore.try_acquire_many(2).await.unwrap();
    assert_eq!(
        semaphore.set_limit(2).await.unwrap(),
        Some(3),
        "lowering is allowed"
    );
    a.release().await.unwrap();
}
