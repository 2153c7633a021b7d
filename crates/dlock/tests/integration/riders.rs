//! Waiters that ride on a release by another task of their client (`engine::riders`): the
//! release queues them in the same script call that passes the lock on, so tasks of one client
//! taking turns cost one script call per grant. Checked on the release script itself (what it
//! queues, in which order, what it refuses) and through the API (calls per grant, exclusion and
//! fencing order, a rider nobody carries, a rider cancelled after it was queued, waiters of
//! other clients first).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dlock::{LockOptions, Wait};
use dlock_test::{RedisServer, TcpProxy};
use redis::aio::MultiplexedConnection;
use redis::Value;

use crate::release_lean::RELEASE;
use tokio::time::{sleep, timeout, Instant};

use crate::support::{client, granted, queue_length_reaches};

const QUEUE: &str = "{job}:dlock:queue:job";
const LEASES: &str = "{job}:dlock:queue-leases:job";
const WAITERS: &str = "{job}:dlock:waiters:job";
const HOLDER: &str = "0123456789abcdef0123456789abcdef";
const FIRST: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const SECOND: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const INBOX: &str = "{inbox}:dlock:released:0123456789abcdef";

fn keys() -> [String; 6] {
    let companion = |kind: &str| format!("{{job}}:dlock:{kind}:job");
    [
        "job".to_owned(),
        companion("info"),
        companion("fence"),
        companion("queue"),
        companion("queue-leases"),
        companion("waiters"),
    ]
}

async fn connection(server: &RedisServer) -> MultiplexedConnection {
    let client = redis::Client::open(server.url()).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

/// A release of `HOLDER`'s hold with `tail` after its four values (inbox, host, pid, riders).
async fn release(con: &mut MultiplexedConnection, tail: &[&str]) -> redis::RedisResult<Value> {
    let mut call = RELEASE.prepare_invoke();
    for key in keys() {
        call.key(key);
    }
    call.arg(HOLDER)
        .arg("{job}:dlock:released:job")
        .arg(600_000)
        .arg("0")
        .arg(tail);
    call.invoke_async(con).await
}

/// The inbox, host and pid, then 4 values per rider (waiter lease 6 s, claim 1 s).
fn with_riders(riders: &[&'static str]) -> Vec<&'static str> {
    let mut tail = vec![INBOX, "host", "7"];
    for rider in riders {
        tail.extend([*rider, "6000", "1000", "label"]);
    }
    tail
}

fn replies(value: Value) -> Vec<Value> {
    match value {
        Value::Array(items) => items,
        other => panic!("not an array: {other:?}"),
    }
}

#[tokio::test]
async fn a_release_queues_its_riders_then_hands_the_lock_to_the_first_in_its_reply() {
    let server = RedisServer::start();
    let mut con = connection(&server).await;
    server.cmd::<()>("SET", &["job", HOLDER]);
    let reply = replies(
        release(&mut con, &with_riders(&[FIRST, SECOND]))
            .await
            .unwrap(),
    );
    assert_eq!(reply[0], Value::Int(1), "released");
    // The hand-off to the first rider comes back in the reply (its inbox is the releaser's).
    assert_eq!(reply.len(), 2, "{reply:?}");
    let Value::BulkString(message) = &reply[1] else {
        panic!("{reply:?}")
    };
    let message = String::from_utf8_lossy(message);
    assert!(message.starts_with(&FIRST[..16]), "{message}");
    assert_eq!(server.cmd::<String>("GET", &["job"]), FIRST);
    let pttl: i64 = server.cmd("PTTL", &["job"]);
    assert!(
        pttl > 0 && pttl <= 1000,
        "held for the claim lease: {pttl} ms"
    );
    // The second waits, with its lease and terms (host, pid, label, the client's inbox).
    assert_eq!(
        server.cmd::<Vec<String>>("LRANGE", &[QUEUE, "0", "-1"]),
        [SECOND]
    );
    assert!(server
        .cmd::<Option<f64>>("ZSCORE", &[LEASES, SECOND])
        .is_some());
    let terms: String = server.cmd("HGET", &[WAITERS, SECOND]);
    for part in [
        "\"host\":\"host\"",
        "\"pid\":\"7\"",
        "\"label\":\"label\"",
        "\"claim\":\"1000\"",
    ] {
        assert!(terms.contains(part), "{terms}");
    }
    assert!(terms.contains(INBOX), "{terms}");
    for key in [QUEUE, LEASES, WAITERS] {
        assert!(server.cmd::<i64>("PTTL", &[key]) > 0, "{key} expires");
    }
}

#[tokio::test]
async fn riders_queue_behind_waiters_already_queued_and_keep_a_place_they_hold() {
    let server = RedisServer::start();
    let mut con = connection(&server).await;
    server.cmd::<()>("SET", &["job", HOLDER]);
    // SECOND waits (with no hand-off terms: it is woken to retry), then FIRST, each queued by
    // an attempt of its own; FIRST then rides along with the release too.
    let (now_s, _): (u64, u64) = server.cmd("TIME", &[]);
    let lease_end = ((now_s + 60) * 1000).to_string();
    for waiter in [SECOND, FIRST] {
        server.cmd::<()>("RPUSH", &[QUEUE, waiter]);
        server.cmd::<()>("ZADD", &[LEASES, &lease_end, waiter]);
    }
    let reply = replies(release(&mut con, &with_riders(&[FIRST])).await.unwrap());
    // SECOND, first in line, is woken (published, not in the reply); the lock is free; FIRST
    // kept its one place behind SECOND.
    assert_eq!(reply, [Value::Int(1)]);
    assert_eq!(server.cmd::<i64>("EXISTS", &["job"]), 0);
    assert_eq!(
        server.cmd::<Vec<String>>("LRANGE", &[QUEUE, "0", "-1"]),
        [SECOND, FIRST]
    );
    assert!(server
        .cmd::<Option<String>>("HGET", &[WAITERS, FIRST])
        .is_some());
}

#[tokio::test]
async fn a_release_that_finds_the_lock_not_ours_queues_nobody() {
    let server = RedisServer::start();
    let mut con = connection(&server).await;
    server.cmd::<()>("SET", &["job", "someone-else"]);
    let reply = replies(release(&mut con, &with_riders(&[FIRST])).await.unwrap());
    assert_eq!(reply, [Value::Int(0)]);
    assert_eq!(server.cmd::<i64>("EXISTS", &[QUEUE, LEASES, WAITERS]), 0);
    assert_eq!(server.cmd::<String>("GET", &["job"]), "someone-else");
}

#[tokio::test]
async fn malformed_riders_are_refused_before_anything_is_written() {
    let server = RedisServer::start();
    let mut con = connection(&server).await;
    server.cmd::<()>("SET", &["job", HOLDER]);
    let malformed: [&[&str]; 10] = [
        &[INBOX, "host"],
        &[INBOX, "host", "7", FIRST],
        &[INBOX, "host", "7", FIRST, "6000", "1000"],
        &["", "host", "7", FIRST, "6000", "1000", "label"],
        &[INBOX, "host", "7", FIRST, "0", "1000", "label"],
        &[INBOX, "host", "7", FIRST, "1.5", "1000", "label"],
        &[INBOX, "host", "7", FIRST, "6000", "nan", "label"],
        &[INBOX, "host", "7", FIRST, "6000", "1.5", "label"],
        &[INBOX, "host", "7", FIRST, "6000", "-5", "label"],
        &[
            INBOX,
            "host",
            "7",
            FIRST,
            "9007199254740992",
            "1000",
            "label",
        ],
    ];
    for tail in malformed {
        assert!(release(&mut con, tail).await.is_err(), "{tail:?} was taken");
        assert_eq!(server.cmd::<String>("GET", &["job"]), HOLDER, "{tail:?}");
        assert_eq!(server.cmd::<i64>("EXISTS", &[QUEUE, LEASES, WAITERS]), 0);
    }
}

/// Leaves `shared` subscribed to the lock's channel and its inbox (the subscription lingers
/// after its waiter is done): a waiter of `shared` that arrives while it is held has a
/// subscription at once, and may ride.
async fn subscribed(server: &RedisServer, shared: &dlock::Client) {
    let other = client(server).await;
    let holder = other.lock("job").unwrap().try_lock().await.unwrap();
    let lock = shared.lock_with("job", waiting()).unwrap();
    let waiter = tokio::spawn(async move { lock.lock().await });
    queue_length_reaches(server, QUEUE, 1).await;
    holder.release().await.unwrap();
    granted(waiter).await.release().await.unwrap();
}

/// `client`'s guard on the lock, taken at once.
async fn holding(client: &dlock::Client, options: LockOptions) -> dlock::LockGuard {
    client
        .lock_with("job", options)
        .unwrap()
        .try_lock()
        .await
        .unwrap()
}

/// Waiting options: a re-check (10 s) and claim (30 s) longer than the tests run, so only a
/// release explains a grant.
fn waiting() -> LockOptions {
    LockOptions::new()
        .claim(Duration::from_secs(30))
        .recheck(Duration::from_secs(10))
        .wait(Wait::Limit(Duration::from_secs(30)))
}

/// Tasks of one client taking turns: after each task's first wait, every grant costs one
/// script call (the release that queues the next attempt and hands the lock on), against two
/// without riding (the release, and the next attempt that queues). Grants never overlap, and
/// fencing tokens increase in grant order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_of_one_client_taking_turns_cost_one_script_call_per_grant() {
    const TASKS: usize = 4;
    const ROUNDS: usize = 40;
    let server = RedisServer::start();
    let shared = client(&server).await;
    // Scripts loaded, and the client subscribed (it lingers between waits).
    subscribed(&server, &shared).await;
    let inside = Arc::new(AtomicBool::new(false));
    let fences = Arc::new(Mutex::new(Vec::new()));
    let before = server.script_calls();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let lock = shared.lock_with("job", waiting()).unwrap();
            let (inside, fences) = (inside.clone(), fences.clone());
            tokio::spawn(async move {
                for _ in 0..ROUNDS {
                    let guard = lock.lock().await.unwrap();
                    assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
                    fences.lock().unwrap().push(guard.fencing_token());
                    tokio::task::yield_now().await;
                    inside.store(false, Ordering::SeqCst);
                    guard.release().await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        timeout(Duration::from_secs(30), task)
            .await
            .unwrap()
            .unwrap();
    }
    let grants = TASKS * ROUNDS;
    let calls = usize::try_from(server.script_calls() - before).unwrap();
    // Without riding, two per grant (the release, and the next attempt that queues). A task
    // stalled past a ride's 20 ms (a loaded machine) queues on its own: a call more.
    assert!(
        calls <= grants * 5 / 4,
        "{calls} script calls for {grants} grants"
    );
    let fences = fences.lock().unwrap();
    assert!(fences.windows(2).all(|w| w[0] < w[1]), "{fences:?}");
}

/// A rider whose holder works longer than a ride lasts joins the queue with an attempt of its
/// own, and is handed the lock when the holder releases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rider_nobody_carries_queues_on_its_own() {
    let server = RedisServer::start();
    let shared = client(&server).await;
    subscribed(&server, &shared).await;
    let holder = holding(&shared, waiting()).await;
    let lock = shared.lock_with("job", waiting()).unwrap();
    let asked = Instant::now();
    let waiter = tokio::spawn(async move { lock.lock().await });
    queue_length_reaches(&server, QUEUE, 1).await;
    // It rode first (not queued at once), and not for long.
    assert!(
        asked.elapsed() >= Duration::from_millis(20),
        "{:?}",
        asked.elapsed()
    );
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    holder.release().await.unwrap();
    let guard = granted(waiter).await;
    assert!(guard.is_held());
    guard.release().await.unwrap();
}

/// A waiter of another client queued before the holder's release is served before the rider
/// that release queues; and a rider cancelled after it was queued leaves the queue, so the
/// release after the other client's hold frees the lock rather than handing it to nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_clients_waiters_come_first_and_a_cancelled_rider_leaves_no_entry() {
    let server = RedisServer::start();
    let shared = client(&server).await;
    let other = client(&server).await;
    subscribed(&server, &shared).await;
    let holder = holding(&shared, waiting()).await;
    let remote = other.lock_with("job", waiting()).unwrap();
    let remote = tokio::spawn(async move { remote.lock().await });
    queue_length_reaches(&server, QUEUE, 1).await;
    let lock = shared.lock_with("job", waiting()).unwrap();
    let rider = tokio::spawn(async move { lock.lock().await });
    // Riding (unless this task stalls past the ride's 20 ms: it then queued on its own).
    sleep(Duration::from_millis(2)).await;
    holder.release().await.unwrap();
    let remote = granted(remote).await;
    assert!(remote.is_held(), "the other client's waiter came first");
    assert_eq!(
        server.cmd::<i64>("LLEN", &[QUEUE]),
        1,
        "the rider was queued"
    );
    rider.abort();
    queue_length_reaches_zero(&server).await;
    remote.release().await.unwrap();
    // Nobody was handed it: free at once.
    let again = other.lock("job").unwrap().try_lock().await.unwrap();
    again.release().await.unwrap();
}

async fn queue_length_reaches_zero(server: &RedisServer) {
    let emptied = timeout(Duration::from_secs(5), async {
        while server.cmd::<i64>("LLEN", &[QUEUE]) > 0 {
            sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    assert!(emptied.is_ok(), "the cancelled rider's entry stayed");
}

/// A rider handed the lock by the reply of the release that carried it counts its claim lease
/// from before that release was sent, never from its answer: on a link slow both ways, its
/// guard never claims more time than Redis gives the key. (Tried until a ride happens: a test
/// task stalled past the ride's 20 ms makes the rider attempt on its own instead.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rider_counts_its_claim_from_before_the_release_that_carried_it() {
    let server = RedisServer::start();
    let proxy = TcpProxy::start(server.port());
    let options = dlock::ClientOptions::new().command_timeout(Duration::from_secs(5));
    let shared = dlock::Client::connect_with(&proxy.url(), options)
        .await
        .unwrap();
    subscribed(&server, &shared).await;
    // 30 ms each way: the release's answer comes after the ride's limit, which a rider taken
    // by the release waits past.
    proxy.delay(Duration::from_millis(30));
    let claimed = LockOptions::new()
        .claim(Duration::from_millis(300))
        .recheck(Duration::from_secs(10))
        .wait(Wait::Limit(Duration::from_secs(30)));
    for _ in 0..5 {
        let holder = holding(&shared, claimed.clone()).await;
        let lock = shared.lock_with("job", claimed.clone()).unwrap();
        let rider = tokio::spawn(async move { lock.lock().await });
        sleep(Duration::from_millis(2)).await;
        let before = server.script_calls();
        holder.release().await.unwrap();
        let guard = granted(rider).await;
        let asked = Instant::now();
        let remaining = guard.remaining();
        let pttl = Duration::from_millis(server.cmd::<u64>("PTTL", &["job"]));
        let rode = server.script_calls() - before == 1;
        // Read after `remaining`: Redis's expiry is `pttl` plus the time between the reads.
        assert!(
            remaining <= pttl + asked.elapsed() + Duration::from_millis(1),
            "the guard claims {remaining:?}, Redis keeps the key {pttl:?} more"
        );
        guard.release().await.unwrap();
        if rode {
            return;
        }
    }
    panic!("no rider was carried in five tries");
}

/// A release that finds the lock no longer its own (deleted meanwhile) queues nobody: its
/// riders attempt at once and take the free lock, rather than sleep until a re-check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn riders_of_a_release_that_failed_attempt_at_once() {
    let server = RedisServer::start();
    let shared = client(&server).await;
    subscribed(&server, &shared).await;
    // A short TTL: a rider that stalled past its ride queued on its own, and its re-check comes
    // within 2 s; a rider wrongly told it was queued sleeps 10 s (its re-check).
    let holder = holding(&shared, waiting().ttl(Duration::from_secs(2))).await;
    let lock = shared.lock_with("job", waiting()).unwrap();
    let rider = tokio::spawn(async move { lock.lock().await });
    sleep(Duration::from_millis(2)).await;
    server.cmd::<()>("DEL", &["job"]);
    assert!(holder.release().await.is_err(), "the lease was lost");
    let guard = granted(rider).await;
    assert!(guard.is_held());
    guard.release().await.unwrap();
}

/// Fair mode promises the order in which waiters started waiting, so a fair waiter never rides:
/// it queues with its own attempt at once, even while a task of its client holds the lock (a
/// rider would not be in the queue before the release that carries it, or its ride's 20 ms).
/// A waiter of another client that starts after it is served after it. (Tried up to five
/// times: a stalled test task can make even an attempt of its own take 15 ms.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fair_waiter_queues_at_once_even_behind_a_task_of_its_client() {
    let server = RedisServer::start();
    let shared = client(&server).await;
    let other = client(&server).await;
    let fair = || waiting().fair(true);
    subscribed(&server, &shared).await;
    for _ in 0..5 {
        let holder = holding(&shared, fair()).await;
        let lock = shared.lock_with("job", fair()).unwrap();
        let first = tokio::spawn(async move { lock.lock().await });
        let queued = timeout(Duration::from_millis(15), async {
            while server.cmd::<i64>("LLEN", &[QUEUE]) < 1 {
                sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .is_ok();
        let lock = other.lock_with("job", fair()).unwrap();
        let second = tokio::spawn(async move { lock.lock().await });
        queue_length_reaches(&server, QUEUE, 2).await;
        holder.release().await.unwrap();
        let guard = granted(first).await;
        assert!(
            guard.is_held(),
            "the waiter that started first was served first"
        );
        guard.release().await.unwrap();
        granted(second).await.release().await.unwrap();
        if queued {
            return;
        }
    }
    panic!("the fair waiter was never in the queue within 15 ms of asking");
}

/// A rider's wait limit holds even while the release that took it is stuck (Redis paused, the
/// release retrying until its lease could end): it gives up at its limit plus one command
/// timeout, not when the release does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rider_gives_up_at_its_wait_limit_while_its_release_is_stuck() {
    let mut server = RedisServer::start();
    let options = dlock::ClientOptions::new().command_timeout(Duration::from_millis(300));
    let shared = dlock::Client::connect_with(&server.url(), options)
        .await
        .unwrap();
    subscribed(&server, &shared).await;
    let holder = holding(&shared, waiting().ttl(Duration::from_secs(10))).await;
    let lock = shared
        .lock_with(
            "job",
            waiting().wait(Wait::Limit(Duration::from_millis(300))),
        )
        .unwrap();
    let asked = Instant::now();
    let rider = tokio::spawn(async move { lock.lock().await });
    sleep(Duration::from_millis(2)).await;
    server.pause();
    // Takes the rider, then retries while its lease (10 s) may be valid.
    let release = tokio::spawn(holder.release());
    let outcome = timeout(Duration::from_secs(4), rider).await;
    server.resume();
    let outcome = outcome
        .expect("the rider waited for the stuck release")
        .unwrap();
    assert!(outcome.is_err(), "granted while Redis was paused?");
    assert!(asked.elapsed() < Duration::from_secs(4));
    let _ = release.await;
}
