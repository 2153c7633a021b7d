//! Multi-key locks: all members or none, never a partial hold after a refusal, an error or a
//! cancelled future; no deadlock between opposite orders; one guard that loses with any member;
//! one atomic script on one slot, ordered steps across Cluster slots.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dlock::{Client, ClientOptions, Error, LockOptions, LossReason, Wait};
use dlock_test::{RedisCluster, RedisServer, RedisServers};
use tokio::time::{sleep, timeout, Instant};

use crate::support::client;

fn waiting(limit: Duration) -> LockOptions {
    LockOptions::new().wait(Wait::Limit(limit))
}

async fn free(c: &Client, name: &str) -> bool {
    match c.lock(name).unwrap().try_lock().await {
        Ok(guard) => {
            guard.release().await.unwrap();
            true
        }
        Err(e) if e.is_conflict() => false,
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn all_members_or_none_and_a_refusal_names_the_held_member() {
    let server = RedisServer::start();
    let c = client(&server).await;
    let multi = c.multi_lock(&["c", "a", "b"]).unwrap();
    assert_eq!(multi.names().collect::<Vec<_>>(), ["a", "b", "c"]);
    let blocker = c.lock("b").unwrap().try_lock().await.unwrap();
    let refused = multi.try_lock().await.unwrap_err();
    let conflict = refused.conflict().expect("a conflict");
    assert_eq!(conflict.key, "b", "the refusal names the held member");
    assert!(conflict.holder.is_some());
    assert!(
        free(&c, "a").await && free(&c, "c").await,
        "a partial hold was left"
    );
    blocker.release().await.unwrap();

    let guard = multi.try_lock().await.unwrap();
    for name in ["a", "b", "c"] {
        assert!(!free(&c, name).await, "{name} is not held");
        assert!(guard.fencing_token(name).is_some());
    }
    assert_eq!(guard.fencing_token("d"), None);
    assert!(guard.is_held());
    let tokens: Vec<u64> = guard.members().iter().map(|m| m.fencing_token()).collect();
    guard.release().await.unwrap();
    for name in ["a", "b", "c"] {
        assert!(free(&c, name).await, "{name} was not released");
    }
    let again = multi.try_lock().await.unwrap();
    for (member, before) in again.members().iter().zip(tokens) {
        assert!(member.fencing_token() > before, "tokens went back");
    }
    again.release().await.unwrap();
}

/// Tasks ask for {a, b} and {b, a} (and the single members) at once, again and again: all
/// finish (no deadlock), and the test's own count shows one holder per member at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opposite_orders_never_deadlock_and_exclusion_holds() {
    let server = RedisServer::start();
    let inside_a = Arc::new(AtomicUsize::new(0));
    let inside_b = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (i, names) in [
        &["a", "b"][..],
        &["b", "a"],
        &["a"],
        &["b"],
        &["a", "b"],
        &["b", "a"],
    ]
    .into_iter()
    .enumerate()
    {
        let c = client(&server).await;
        let multi = c
            .multi_lock_with(names, waiting(Duration::from_secs(30)))
            .unwrap();
        let (a, b) = (inside_a.clone(), inside_b.clone());
        tasks.push(tokio::spawn(async move {
            let _c = c;
            for _ in 0..15 {
                let guard = multi.lock().await.unwrap();
                let counters: Vec<_> = guard
                    .names()
                    .map(|n| if n == "a" { a.clone() } else { b.clone() })
                    .collect();
                for counter in &counters {
                    assert_eq!(
                        counter.fetch_add(1, Ordering::SeqCst),
                        0,
                        "two holders ({i})"
                    );
                }
                sleep(Duration::from_millis(1)).await;
                for counter in &counters {
                    counter.fetch_sub(1, Ordering::SeqCst);
                }
                guard.release().await.unwrap();
            }
        }));
    }
    let all = futures_util::future::join_all(tasks);
    let done = timeout(Duration::from_secs(60), all)
        .await
        .expect("deadlocked: the tasks never finished");
    for task in done {
        task.unwrap();
    }
}

/// A waiting multi-key lock is woken by the release of the member it waits for, not by its
/// re-check (20 s here), and takes the whole set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_is_woken_by_a_members_release() {
    let server = RedisServer::start();
    let c = client(&server).await;
    let blocker = c.lock("y").unwrap().try_lock().await.unwrap();
    let slow = waiting(Duration::from_secs(30)).recheck(Duration::from_secs(20));
    let multi = c.multi_lock_with(&["x", "y", "z"], slow).unwrap();
    let waiter = tokio::spawn(async move { multi.lock().await });
    sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished());
    assert!(
        free(&c, "x").await && free(&c, "z").await,
        "the waiter holds part of the set"
    );
    blocker.release().await.unwrap();
    let released_at = Instant::now();
    let guard = timeout(Duration::from_secs(5), waiter)
        .await
        .expect("woken long before the 20 s re-check")
        .unwrap()
        .unwrap();
    assert!(released_at.elapsed() < Duration::from_secs(2));
    guard.release().await.unwrap();
}

#[tokio::test]
async fn a_cancelled_wait_leaves_no_member_held() {
    let server = RedisServer::start();
    let c = client(&server).await;
    let blocker = c.lock("q").unwrap().try_lock().await.unwrap();
    let multi = c
        .multi_lock_with(&["p", "q"], waiting(Duration::from_secs(30)))
        .unwrap();
    assert!(timeout(Duration::from_millis(300), multi.lock())
        .await
        .is_err());
    c.flush().await;
    assert!(
        free(&c, "p").await,
        "a cancelled multi-key lock left a member held"
    );
    blocker.release().await.unwrap();
    assert!(free(&c, "q").await);
}

/// Losing any member is losing the guard: told at the next renewal, and at release.
#[tokio::test]
async fn losing_one_member_loses_the_guard() {
    let server = RedisServer::start();
    let c = client(&server).await;
    let options = LockOptions::new().ttl(Duration::from_millis(600));
    let guard = c
        .multi_lock_with(&["m1", "m2"], options)
        .unwrap()
        .try_lock()
        .await
        .unwrap();
    c.force_release("m2").await.unwrap();
    let reason = timeout(Duration::from_secs(3), guard.lost())
        .await
        .expect("the loss of a member was not reported");
    assert_eq!(reason, LossReason::KeyGone);
    assert!(!guard.is_held());
    match guard.release().await {
        Err(Error::Lost { key, .. }) => assert_eq!(key, "m2"),
        other => panic!("expected Lost naming m2, got {other:?}"),
    }
    assert!(free(&c, "m1").await, "the other member was not released");
}

/// On a Cluster: members sharing a hash tag go in one script; members in different slots are
/// taken in order, and a refusal releases those already taken; opposite orders still finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_one_slot_and_many_slots_are_all_or_nothing() {
    let cluster = RedisCluster::start(3);
    let c = Client::cluster(&cluster.urls()).await.unwrap();
    let tagged = c.multi_lock(&["{user:1}:a", "{user:1}:b"]).unwrap();
    tagged.try_lock().await.unwrap().release().await.unwrap();

    let names = ["alpha", "bravo", "charlie", "delta"];
    let spread = c.multi_lock(&names).unwrap();
    let blocker = c.lock("delta").unwrap().try_lock().await.unwrap();
    let refused = spread.try_lock().await.unwrap_err();
    assert_eq!(refused.conflict().map(|c| c.key.as_str()), Some("delta"));
    for name in &names[..3] {
        assert!(
            free(&c, name).await,
            "{name} was left held after the refusal"
        );
    }
    blocker.release().await.unwrap();
    let guard = spread.try_lock().await.unwrap();
    for name in names {
        assert!(!free(&c, name).await, "{name} is not held");
    }
    guard.release().await.unwrap();

    let mut tasks = Vec::new();
    for order in [["alpha", "delta"], ["delta", "alpha"], ["alpha", "delta"]] {
        let multi = c
            .multi_lock_with(&order, waiting(Duration::from_secs(30)))
            .unwrap();
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                multi.lock().await.unwrap().release().await.unwrap();
            }
        }));
    }
    let done = timeout(
        Duration::from_secs(60),
        futures_util::future::join_all(tasks),
    )
    .await
    .expect("deadlocked across slots");
    for task in done {
        task.unwrap();
    }
}

#[tokio::test]
async fn bad_sets_and_unsupported_modes_are_config_errors() {
    let server = RedisServer::start();
    let c = client(&server).await;
    let none: [&str; 0] = [];
    assert!(c.multi_lock(&none).unwrap_err().is_config());
    assert!(c.multi_lock(&["a", "b", "a"]).unwrap_err().is_config());
    assert!(c.multi_lock(&["a", ""]).unwrap_err().is_config());
    let many: Vec<String> = (0..=dlock::MAX_MEMBERS).map(|i| format!("k{i}")).collect();
    assert!(c.multi_lock(&many).unwrap_err().is_config());
    let fair = LockOptions::new().fair(true);
    assert!(c
        .multi_lock_with(&["a", "b"], fair)
        .unwrap_err()
        .is_config());
}

/// On Redlock each member is taken on a majority, one at a time: all or none with a master
/// dead, a refusal leaves nothing held, and opposite orders never deadlock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redlock_members_are_taken_on_a_majority_all_or_none() {
    let mut servers = RedisServers::start(3);
    let options = ClientOptions::new().command_timeout(Duration::from_millis(300));
    let c = Client::redlock_with(&servers.urls(), options)
        .await
        .unwrap();
    servers[2].kill();
    let multi = c
        .multi_lock_with(&["a", "b", "c"], waiting(Duration::from_secs(20)))
        .unwrap();
    let guard = multi.try_lock().await.unwrap();
    for name in ["a", "b", "c"] {
        let held = (0..2)
            .filter(|&i| servers[i].cmd::<i64>("EXISTS", &[name]) == 1)
            .count();
        assert_eq!(held, 2, "{name} is not on the live majority");
        assert!(guard.fencing_token(name).is_some());
    }
    guard.release().await.unwrap();
    let blocker = c.lock("c").unwrap().try_lock().await.unwrap();
    let refused = multi.try_lock().await.unwrap_err();
    assert_eq!(refused.conflict().map(|c| c.key.as_str()), Some("c"));
    assert!(
        free(&c, "a").await && free(&c, "b").await,
        "a partial set was left"
    );
    blocker.release().await.unwrap();
    let mut tasks = Vec::new();
    for order in [["a", "c"], ["c", "a"], ["a", "c"]] {
        let multi = c
            .multi_lock_with(&order, waiting(Duration::from_secs(30)))
            .unwrap();
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                multi.lock().await.unwrap().release().await.unwrap();
            }
        }));
    }
    let done = timeout(
        Duration::from_secs(60),
        futures_util::future::join_all(tasks),
    )
    .await
    .expect("deadlocked on Redlock");
    for task in done {
        task.unwrap();
    }
}

#[tokio::test]
async fn members_lost_to_a_restart_are_reported() {
    let mut server = RedisServer::start();
    let c = client(&server).await;
    let guard = c
        .multi_lock(&["r1", "r2"])
        .unwrap()
        .try_lock()
        .await
        .unwrap();
    crate::support::monitored(&server, 1).await;
    server.restart_empty();
    let reason = timeout(Duration::from_secs(3), guard.lost())
        .await
        .expect("the loss was not reported");
    assert_eq!(reason, LossReason::KeyGoneAfterReconnect);
    assert!(matches!(guard.release().await, Err(Error::Lost { .. })));
}

/// Which master of `cluster` serves `name` (the others answer MOVED).
fn owner(cluster: &RedisCluster, name: &str) -> usize {
    for (i, master) in cluster.iter().enumerate() {
        let mut con = master.connection();
        let answer: redis::RedisResult<Option<String>> =
            redis::cmd("GET").arg(name).query(&mut con);
        if answer.is_ok() {
            return i;
        }
    }
    panic!("nobody serves {name}");
}

/// Three names, sorted, each on a different master: (names, their masters).
fn spread(cluster: &RedisCluster) -> ([String; 3], [usize; 3]) {
    let mut picked: Vec<(String, usize)> = Vec::new();
    for i in 0..200 {
        let name = format!("m{i:03}");
        let master = owner(cluster, &name);
        if picked.iter().all(|(_, p)| *p != master) {
            picked.push((name, master));
        }
        if picked.len() == 3 {
            break;
        }
    }
    picked.sort();
    (
        [
            picked[0].0.clone(),
            picked[1].0.clone(),
            picked[2].0.clone(),
        ],
        [picked[0].1, picked[1].1, picked[2].1],
    )
}

/// Found by review: across slots, each step checked only its own grant, so slow later steps
/// returned a set whose first member's lease had run out (another client could take it).
/// Now the set comes back only if every member is still held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_slots_a_set_whose_first_member_ran_out_meanwhile_is_not_returned() {
    let cluster = RedisCluster::start(3);
    let c = Client::cluster(&cluster.urls()).await.unwrap();
    let (names, masters) = spread(&cluster);
    let options = LockOptions::new()
        .ttl(Duration::from_millis(1000))
        .renew(false);
    let multi = c.multi_lock_with(&names, options).unwrap();
    multi.try_lock().await.unwrap().release().await.unwrap();
    // The first member's master answers at once; the second's sleeps 0..700 ms, the third's
    // 400..1400 ms: each step's own validity holds, the first member's lease ends at ~1 s.
    let _second = cluster[masters[1]].debug_sleep(Duration::from_millis(700));
    let third_port = cluster[masters[2]].port();
    let third = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(400));
        let client = redis::Client::open(format!("redis://127.0.0.1:{third_port}/")).unwrap();
        let mut con = client.get_connection().unwrap();
        let _: redis::RedisResult<()> = redis::cmd("DEBUG").arg("SLEEP").arg("1.0").query(&mut con);
    });
    sleep(Duration::from_millis(20)).await;
    match multi.try_lock().await {
        Ok(guard) => {
            let held: Vec<_> = guard.members().iter().map(|m| m.is_held()).collect();
            panic!("a set came back with members held {held:?}");
        }
        Err(e) => assert!(e.is_retryable(), "{e}"),
    }
    third.join().unwrap();
}

/// Found by review: a refusal across slots waited for its give-back until the member's
/// lease ended (whole TTLs) when a master was slow; now at most one command timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_slots_a_refusal_gives_back_within_one_command_timeout() {
    let mut cluster = RedisCluster::start(3);
    let options = ClientOptions::new().command_timeout(Duration::from_millis(300));
    let c = Client::cluster_with(&cluster.urls(), options)
        .await
        .unwrap();
    let (names, masters) = spread(&cluster);
    let lock_options = LockOptions::new()
        .ttl(Duration::from_secs(5))
        .wait(Wait::Limit(Duration::from_millis(100)));
    let multi = c.multi_lock_with(&names[..2], lock_options).unwrap();
    let blocker = c.lock(&names[1]).unwrap().try_lock().await.unwrap();
    // The second member's master answers (busy) only after 400 ms; meanwhile the first's
    // master stops for 2 s, so the first member's give-back gets no answer.
    let _slow = cluster[masters[1]].debug_sleep(Duration::from_millis(400));
    let asked = Instant::now();
    let attempt = {
        let multi = multi.clone();
        tokio::spawn(async move { multi.lock().await })
    };
    sleep(Duration::from_millis(200)).await;
    cluster[masters[0]].pause();
    let outcome = attempt.await.unwrap();
    let took = asked.elapsed();
    cluster[masters[0]].resume();
    assert!(outcome.is_err());
    assert!(
        took < Duration::from_millis(1500),
        "a refusal took {took:?}, not about one command timeout"
    );
    blocker.release().await.unwrap();
}

/// Found by review: a multi-key wait that ran out named the first member, not the one held.
#[tokio::test]
async fn a_timeout_names_the_member_found_held() {
    let server = RedisServer::start();
    let c = client(&server).await;
    let blocker = c.lock("t2").unwrap().try_lock().await.unwrap();
    let multi = c
        .multi_lock_with(&["t1", "t2"], waiting(Duration::from_millis(200)))
        .unwrap();
    match multi.lock().await {
        Err(Error::Timeout { key, last, .. }) => {
            assert_eq!(key, "t2");
            assert_eq!(last.key, "t2");
        }
        other => panic!("expected a timeout, got {:?}", other.map(drop)),
    }
    blocker.release().await.unwrap();
}

/// Found by review: on Redlock (and across Cluster slots) a waiting multi-key lock took its
/// free member, found the next one held, gave the first back with a wake-up on that member's
/// channel, which it listens to, and so woke itself and spun. Give-backs are quiet now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_multi_key_lock_on_redlock_does_not_spin() {
    let servers = RedisServers::start(3);
    let options = ClientOptions::new().command_timeout(Duration::from_millis(300));
    let c = Client::redlock_with(&servers.urls(), options)
        .await
        .unwrap();
    let blocker = c.lock("b").unwrap().try_lock().await.unwrap();
    let slow = waiting(Duration::from_secs(2)).recheck(Duration::from_secs(20));
    let multi = c.multi_lock_with(&["a", "b"], slow).unwrap();
    let before = servers[0].command_calls("evalsha");
    assert!(multi.lock().await.unwrap_err().is_timeout());
    let calls = servers[0].command_calls("evalsha") - before;
    assert!(
        calls < 40,
        "{calls} script calls on one master in a 2 s wait: a spin"
    );
    blocker.release().await.unwrap();
}

/// On Redlock with one master frozen: each member is granted by the other two within the
/// per-node timeout, the set comes back whole, and its release reaches the live majority.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redlock_a_frozen_master_costs_each_member_at_most_one_timeout() {
    let mut servers = RedisServers::start(3);
    let options = ClientOptions::new().command_timeout(Duration::from_millis(300));
    let c = Client::redlock_with(&servers.urls(), options)
        .await
        .unwrap();
    let multi = c.multi_lock(&["f1", "f2"]).unwrap();
    multi.try_lock().await.unwrap().release().await.unwrap();
    servers[1].pause();
    let asked = Instant::now();
    let guard = multi.try_lock().await.unwrap();
    let took = asked.elapsed();
    assert!(
        took < Duration::from_millis(2 * 300 + 500),
        "a frozen master cost {took:?} for two members"
    );
    assert!(guard.is_held());
    guard.release().await.unwrap();
    servers[1].resume();
    for name in ["f1", "f2"] {
        let left = [0, 2]
            .iter()
            .filter(|&&i| servers[i].cmd::<i64>("EXISTS", &[name]) == 1)
            .count();
        assert_eq!(left, 0, "{name} was left on a live master");
    }
}
