//! Hand-off: a release grants the lock to the head of the wait queue in the same script call,
//! and the wake-up carries the grant, so a contended lock changes hands in one round trip.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dlock::{Client, LockOptions, Wait};
use dlock_test::RedisServer;
use tokio::time::{sleep, timeout, Instant};

pub(crate) use crate::support::granted;
use crate::support::{
    client, client_without_channels, epsilon, queue_length_reaches, subscribers_reach,
};

const QUEUE: &str = "{job}:dlock:queue:job";
const LEASES: &str = "{job}:dlock:queue-leases:job";
const WAITERS: &str = "{job}:dlock:waiters:job";

/// Waiting options: a long re-check, so only a hand-off or a wake-up explains a quick grant.
fn waiting(claim: Duration) -> LockOptions {
    LockOptions::new()
        .claim(claim)
        .recheck(Duration::from_secs(10))
        .wait(Wait::Limit(Duration::from_secs(30)))
}

/// One wait for `lock` behind another client, so its wake-up subscription lingers: the next
/// wait is then exactly one attempt before it sleeps (a first wait attempts, subscribes and
/// attempts again, and that second attempt could race a release the test makes).
async fn warm_up(server: &RedisServer, lock: &dlock::Lock) {
    let other = client(server).await;
    let holder = other.lock("job").unwrap().try_lock().await.unwrap();
    let waiter = tokio::spawn({
        let lock = lock.clone();
        async move { lock.lock().await }
    });
    queue_length_reaches(server, QUEUE, 1).await;
    holder.release().await.unwrap();
    waiter.await.unwrap().unwrap().release().await.unwrap();
}

/// Script calls (EVALSHA and EVAL) the server ran so far.
fn script_calls(server: &RedisServer) -> u64 {
    server.script_calls()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contended_handoff_costs_the_release_alone() {
    let server = RedisServer::start();
    let a = client(&server).await;
    let b = client(&server).await;
    let claim = Duration::from_millis(600);
    let lock = b.lock_with("job", waiting(claim)).unwrap();
    warm_up(&server, &lock).await;
    let holder = a
        .lock_with("job", waiting(claim))
        .unwrap()
        .try_lock()
        .await
        .unwrap();
    let waiter = tokio::spawn(async move { lock.lock().await });
    queue_length_reaches(&server, QUEUE, 1).await;
    let before = script_calls(&server);
    let released_at = Instant::now();
    let holder_fence = holder.fencing_token();
    holder.release().await.unwrap();
    let guard = granted(waiter).await;
    let calls = script_calls(&server) - before;
    // Before hand-off: the release, then the waiter's own acquire (2).
    assert_eq!(calls, 1, "script calls from the release to the new holder");
    assert!(guard.is_held());
    assert!(guard.fencing_token() > holder_fence);
    let pttl: i64 = server.cmd("PTTL", &["job"]);
    assert!(
        pttl > 0 && pttl <= i64::try_from(claim.as_millis()).unwrap(),
        "a handed grant first lasts the claim lease: PTTL {pttl} ms"
    );
    assert_eq!(server.cmd::<i64>("EXISTS", &[QUEUE, LEASES, WAITERS]), 0);
    // The watchdog renews it to the full TTL within a third of the claim lease.
    let full = i64::try_from(guard.ttl().as_millis()).unwrap();
    let renewed = timeout(claim, async {
        while server.cmd::<i64>("PTTL", &["job"]) <= i64::try_from(claim.as_millis()).unwrap() {
            sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        renewed.is_ok(),
        "not renewed within {claim:?} of the hand-off ({:?} ago)",
        released_at.elapsed()
    );
    assert!(server.cmd::<i64>("PTTL", &["job"]) > full / 2);
    guard.release().await.unwrap();
}

/// A hand-off whose fencing token is not the server's clock (the counter is ahead of it, so
/// the token is the counter plus one, written from a formatted number rather than from TIME's
/// digits) is taken as it comes: its message's token and MAC agree with what Redis stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_with_the_counter_ahead_of_the_clock_is_taken_as_it_comes() {
    let server = RedisServer::start();
    let a = client(&server).await;
    let b = client(&server).await;
    let lock = b
        .lock_with("job", waiting(Duration::from_millis(600)))
        .unwrap();
    warm_up(&server, &lock).await;
    let holder = a.lock("job").unwrap().try_lock().await.unwrap();
    let waiter = tokio::spawn(async move { lock.lock().await });
    queue_length_reaches(&server, QUEUE, 1).await;
    // An hour past the holder's token (the server's clock when it was granted).
    let ahead = holder.fencing_token() + 3_600_000_000;
    let _: () = server.cmd("SET", &["{job}:dlock:fence:job", &ahead.to_string()]);
    let before = script_calls(&server);
    holder.release().await.unwrap();
    let guard = granted(waiter).await;
    assert_eq!(
        script_calls(&server) - before,
        1,
        "the release alone: no retry"
    );
    assert_eq!(guard.fencing_token(), ahead + 1);
    let fence: String = server.cmd("HGET", &["{job}:dlock:info:job", "fence"]);
    assert_eq!(fence, (ahead + 1).to_string());
    guard.release().await.unwrap();
}

/// A queue head that died just before its turn (queued with a live waiter lease, nobody
/// listening: the state a process killed right after joining the queue leaves) is handed the
/// lock; the next waiter gets it when the claim lease ends, not a TTL or a re-check later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_head_delays_the_next_waiter_by_at_most_the_claim_lease() {
    let server = RedisServer::start();
    let a = client(&server).await;
    let b = client(&server).await;
    let epsilon = epsilon(&a).await;
    let claim = Duration::from_millis(500);
    let holder = a
        .lock_with("job", waiting(claim))
        .unwrap()
        .try_lock()
        .await
        .unwrap();
    // The dead head: queued with hand-off terms and a waiter lease of 20 s.
    let dead = "deadbeefdeadbeefdeadbeefdeadbeef";
    let _: () = server.cmd("RPUSH", &[QUEUE, dead]);
    let now: Vec<String> = server.cmd("TIME", &[]);
    let now_ms = now[0].parse::<u64>().unwrap() * 1000 + now[1].parse::<u64>().unwrap() / 1000;
    let _: () = server.cmd("ZADD", &[LEASES, &(now_ms + 20_000).to_string(), dead]);
    let terms = r#"{"host":"gone","pid":"1","label":"","claim":"500"}"#;
    let _: () = server.cmd("HSET", &[WAITERS, dead, terms]);
    let lock = b.lock_with("job", waiting(claim)).unwrap();
    let waiter = tokio::spawn(async move { lock.lock().await });
    queue_length_reaches(&server, QUEUE, 2).await;
    let released_at = Instant::now();
    let holder_fence = holder.fencing_token();
    holder.release().await.unwrap();
    assert_eq!(
        server.cmd::<String>("GET", &["job"]),
        dead,
        "the release hands the lock to the head"
    );
    let guard = granted(waiter).await;
    let waited = released_at.elapsed();
    assert!(
        waited <= claim + epsilon,
        "the next waiter got the lock {waited:?} after the release (claim {claim:?}, ε \
         {epsilon:?}); its re-check is 10 s"
    );
    let dead_fence: u64 = server
        .cmd::<String>("GET", &["{job}:dlock:fence:job"])
        .parse()
        .unwrap();
    assert_eq!(guard.fencing_token(), dead_fence);
    assert!(guard.fencing_token() > holder_fence + 1);
    guard.release().await.unwrap();
}

/// The releaser may not publish (an ACL user without channel permission): the hand-off is
/// made but its message never sent. The new holder finds its grant at its re-check, with the
/// fencing token the hand-off issued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_handoff_message_is_recovered_by_the_recheck() {
    let server = RedisServer::start();
    let mute = client_without_channels(&server, "mute").await;
    let b = client(&server).await;
    let epsilon = epsilon(&b).await;
    let recheck = Duration::from_millis(400);
    let lock = b
        .lock_with("job", waiting(Duration::from_secs(5)).recheck(recheck))
        .unwrap();
    warm_up(&server, &lock).await;
    let holder = mute.lock("job").unwrap().try_lock().await.unwrap();
    let waiter = tokio::spawn(async move { lock.lock().await });
    queue_length_reaches(&server, QUEUE, 1).await;
    let released_at = Instant::now();
    holder.release().await.unwrap();
    let handed_to: String = server.cmd("GET", &["job"]);
    assert_eq!(handed_to.len(), 32, "handed over, not freed");
    let guard = granted(waiter).await;
    assert!(
        released_at.elapsed() <= recheck + epsilon,
        "found {:?} after the release (re-check {recheck:?})",
        released_at.elapsed()
    );
    let info_fence: u64 = server
        .cmd::<String>("HGET", &["{job}:dlock:info:job", "fence"])
        .parse()
        .unwrap();
    assert_eq!(guard.fencing_token(), info_fence);
    assert_eq!(server.cmd::<String>("GET", &["job"]), handed_to);
    // The re-check renewed the claim lease to the full TTL.
    assert!(server.cmd::<i64>("PTTL", &["job"]) > 5_000);
    guard.release().await.unwrap();
}

/// A waiter cancelled just as the lock is handed to it passes the lock on: its undo (or its
/// guard's drop) releases through the same script, which hands the lock to the next waiter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_cancelled_as_it_is_handed_the_lock_passes_it_on() {
    let server = RedisServer::start();
    let a = client(&server).await;
    let b = client(&server).await;
    let c = client(&server).await;
    let claim = Duration::from_secs(5);
    for round in 0..5 {
        let holder = a
            .lock_with("job", waiting(claim))
            .unwrap()
            .try_lock()
            .await
            .unwrap();
        let lock_b = b.lock_with("job", waiting(claim)).unwrap();
        let cancelled = tokio::spawn(async move { lock_b.lock().await });
        queue_length_reaches(&server, QUEUE, 1).await;
        let lock_c = c.lock_with("job", waiting(claim)).unwrap();
        let next = tokio::spawn(async move { lock_c.lock().await });
        queue_length_reaches(&server, QUEUE, 2).await;
        holder.release().await.unwrap();
        // At a different moment each round: before, at or after the hand-off reaches b.
        sleep(Duration::from_micros(200 * round)).await;
        cancelled.abort();
        let _ = cancelled.await;
        // Neither a claim lease (5 s) nor a re-check (10 s) may pass: only a hand-off or a
        // wake-up explains a grant this soon.
        let guard = timeout(Duration::from_secs(2), next)
            .await
            .expect("the next waiter was not served within 2 s")
            .unwrap()
            .unwrap();
        guard.release().await.unwrap();
        b.flush().await;
        assert_eq!(
            server.cmd::<i64>("EXISTS", &["job", QUEUE, LEASES, WAITERS]),
            0
        );
    }
}

/// Eight workers on one lock, each looping lock → critical section → release through hand-offs:
/// never two inside at once, fencing tokens strictly increasing in grant order, and every
/// worker served (FIFO: counts within a few of each other).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoffs_keep_exclusion_fencing_order_and_fairness() {
    let server = RedisServer::start();
    let inside = Arc::new(Mutex::new(false));
    let grants = Arc::new(Mutex::new(Vec::new()));
    let stop_at = Instant::now() + Duration::from_secs(2);
    let mut workers = Vec::new();
    for worker in 0..8 {
        let c = client(&server).await;
        let inside = inside.clone();
        let grants = grants.clone();
        workers.push(tokio::spawn(async move {
            let lock = c.lock_with("job", waiting(Duration::from_secs(1))).unwrap();
            let mut served = 0u32;
            while Instant::now() < stop_at {
                let guard = lock.lock().await.unwrap();
                assert!(
                    !std::mem::replace(&mut *inside.lock().unwrap(), true),
                    "two inside"
                );
                grants.lock().unwrap().push(guard.fencing_token());
                tokio::task::yield_now().await;
                *inside.lock().unwrap() = false;
                guard.release().await.unwrap();
                served += 1;
            }
            (worker, served)
        }));
    }
    let mut counts = Vec::new();
    for worker in workers {
        counts.push(worker.await.unwrap().1);
    }
    let grants = grants.lock().unwrap();
    assert!(grants.len() > 100, "only {} grants", grants.len());
    assert!(
        grants.windows(2).all(|w| w[0] < w[1]),
        "fencing tokens out of grant order"
    );
    // Workers start a few milliseconds apart; beyond that, FIFO serves everyone alike.
    let mean = f64::from(counts.iter().sum::<u32>()) / 8.0;
    assert!(
        counts
            .iter()
            .all(|&n| (f64::from(n) - mean).abs() <= mean * 0.1),
        "FIFO hand-offs serve everyone within 10% of the mean: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_handoff_off_waiters_do_not_queue() {
    let server = RedisServer::start();
    let a = client(&server).await;
    let b = client(&server).await;
    let holder = a.lock("job").unwrap().try_lock().await.unwrap();
    let lock = b
        .lock_with("job", waiting(Duration::from_secs(1)).handoff(false))
        .unwrap();
    let waiter = tokio::spawn(async move { lock.lock().await });
    // Subscribed and sleeping on its busy answer.
    subscribers_reach(&server, "{job}:dlock:released:job", 1).await;
    assert_eq!(server.cmd::<i64>("EXISTS", &[QUEUE]), 0, "it queued");
    holder.release().await.unwrap();
    let guard = granted(waiter).await;
    guard.release().await.unwrap();
}

/// A hand-off message someone else published (a user who may publish on the channel, and saw
/// the waiter's id) is not a grant: its MAC does not match the waiter's whole token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_handoff_message_is_ignored() {
    let server = RedisServer::start();
    let a = client(&server).await;
    let b = client(&server).await;
    let lock = b.lock_with("job", waiting(Duration::from_secs(1))).unwrap();
    warm_up(&server, &lock).await;
    let holder = a.lock("job").unwrap().try_lock().await.unwrap();
    let waiter = tokio::spawn(async move { lock.lock().await });
    queue_length_reaches(&server, QUEUE, 1).await;
    let token: String = server.cmd("LINDEX", &[QUEUE, "0"]);
    let forged = format!("{} 99999999999999999 1000 0123456789abcdef -", &token[..16]);
    let _: i64 = server.cmd("PUBLISH", &["{job}:dlock:released:job", &forged]);
    sleep(Duration::from_millis(300)).await;
    assert!(
        !waiter.is_finished(),
        "a forged message was taken as a grant"
    );
    holder.release().await.unwrap();
    let guard = granted(waiter).await;
    assert!(guard.fencing_token() < 99_999_999_999_999_999);
    guard.release().await.unwrap();
}

/// Damaged queue data (the waiter-lease zset evicted while the list and the hand-off terms
/// remain) never makes a release fail: an error in the script would fail every lease the
/// watchdog batched with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_queue_data_never_fails_a_release() {
    let server = RedisServer::start();
    let a = client(&server).await;
    for damage in ["leases", "terms"] {
        let holder = a.lock("job").unwrap().try_lock().await.unwrap();
        let orphan = "0123456789abcdef0123456789abcdef";
        let _: () = server.cmd("RPUSH", &[QUEUE, orphan]);
        let _: () = server.cmd("HSET", &[WAITERS, orphan, "{not json"]);
        if damage == "terms" {
            // A lease, but terms that do not parse: woken to retry instead of handed.
            let _: () = server.cmd("ZADD", &[LEASES, "99999999999999", orphan]);
        }
        holder.release().await.unwrap();
        assert_eq!(server.cmd::<i64>("EXISTS", &["job"]), 0, "{damage}");
        let _: () = server.cmd("DEL", &[QUEUE, LEASES, WAITERS]);
    }
}

/// A hand-off goes to the new holder's client inbox, not to the lock's channel (which every
/// waiting client hears): one delivery per hand-off, however many clients wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_reaches_only_the_new_holders_client() {
    use futures_util::StreamExt as _;
    let server = RedisServer::start();
    let a = client(&server).await;
    let b = client(&server).await;
    let lock = b.lock_with("job", waiting(Duration::from_secs(1))).unwrap();
    warm_up(&server, &lock).await;
    let listener = redis::Client::open(server.url()).unwrap();
    let mut pubsub = listener.get_async_pubsub().await.unwrap();
    pubsub.subscribe("{job}:dlock:released:job").await.unwrap();
    let mut heard = pubsub.into_on_message();
    let holder = a.lock("job").unwrap().try_lock().await.unwrap();
    let waiter = tokio::spawn(async move { lock.lock().await });
    queue_length_reaches(&server, QUEUE, 1).await;
    holder.release().await.unwrap();
    let guard = granted(waiter).await;
    let on_the_lock_channel = timeout(Duration::from_millis(200), heard.next()).await;
    assert!(
        on_the_lock_channel.is_err(),
        "the hand-off went to the lock's channel: {:?}",
        on_the_lock_channel.map(|m| m.map(|m| m.get_payload::<String>()))
    );
    guard.release().await.unwrap();
}

/// An ACL user allowed only its locks' channels (so not the client inbox) still waits without
/// polling, with hand-off or without: a refused inbox costs the hand-offs their inbox (they go
/// on the lock's channel), not every wake-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_allowed_only_its_lock_channels_still_waits_without_polling() {
    let server = RedisServer::start();
    let acl = [
        "SETUSER",
        "narrow",
        "on",
        ">pw",
        "~*",
        "+@all",
        "resetchannels",
        "&{job}:dlock:released:*",
    ];
    let _: () = server.cmd("ACL", &acl);
    let url = format!("redis://narrow:pw@127.0.0.1:{}/", server.port());
    for handoff in [true, false] {
        let a = Client::connect(&url).await.unwrap();
        let b = Client::connect(&url).await.unwrap();
        let recheck = Duration::from_secs(5);
        let holder = a.lock("job").unwrap().try_lock().await.unwrap();
        let options = waiting(Duration::from_secs(1))
            .recheck(recheck)
            .handoff(handoff);
        let lock = b.lock_with("job", options).unwrap();
        let waiter = tokio::spawn(async move { lock.lock().await });
        let subscribed = timeout(Duration::from_secs(5), async {
            loop {
                let reply: Vec<redis::Value> =
                    server.cmd("PUBSUB", &["NUMSUB", "{job}:dlock:released:job"]);
                if reply.get(1) == Some(&redis::Value::Int(1)) {
                    return;
                }
                sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(subscribed.is_ok(), "handoff={handoff}: never subscribed");
        let released_at = Instant::now();
        holder.release().await.unwrap();
        let guard = timeout(Duration::from_secs(2), waiter)
            .await
            .unwrap_or_else(|_| panic!("handoff={handoff}: not woken, left to its re-check"))
            .unwrap()
            .unwrap();
        assert!(released_at.elapsed() < recheck);
        guard.release().await.unwrap();
    }
}

/// A waiter that cannot hear its channel (an ACL user without channel permission) is never
/// handed the lock, which it would not learn of until its re-check while everyone else waited:
/// outside fair mode it does not queue at all, and a release frees the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_cannot_hear_is_never_handed_the_lock() {
    let server = RedisServer::start();
    let deaf = client_without_channels(&server, "deaf").await;
    let a = client(&server).await;
    let holder = a.lock("job").unwrap().try_lock().await.unwrap();
    let recheck = Duration::from_millis(500);
    let lock = deaf
        .lock_with("job", waiting(Duration::from_secs(5)).recheck(recheck))
        .unwrap();
    let waiter = tokio::spawn(async move { lock.lock().await });
    // Its attempts (the first, and the retry after its refused SUBSCRIBE) never queue it.
    let watched = Instant::now();
    while watched.elapsed() < recheck / 2 {
        assert_eq!(
            server.cmd::<i64>("EXISTS", &[QUEUE]),
            0,
            "a deaf waiter queued"
        );
        sleep(Duration::from_millis(5)).await;
    }
    holder.release().await.unwrap();
    assert_eq!(
        server.cmd::<i64>("EXISTS", &["job"]),
        0,
        "handed to a waiter that cannot hear"
    );
    let guard = granted(waiter).await;
    guard.release().await.unwrap();
}

/// Review finding: a lock and a semaphore of one name share the queue keys, and a lock's
/// release handed the lock to a semaphore waiter queued there (its terms ask for permits),
/// which took it for a permit. A lock's release now only wakes such a waiter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_semaphore_waiter_is_never_handed_a_lock() {
    let server = RedisServer::start();
    let a = client(&server).await;
    let holder = a.lock("job").unwrap().try_lock().await.unwrap();
    let waiter = "0123456789abcdef0123456789abcdef";
    let _: () = server.cmd("RPUSH", &[QUEUE, waiter]);
    let _: () = server.cmd("ZADD", &[LEASES, "99999999999999", waiter]);
    let terms = r#"{"host":"h","pid":"1","label":"","claim":"1000","permits":"1","fair":false}"#;
    let _: () = server.cmd("HSET", &[WAITERS, waiter, terms]);
    holder.release().await.unwrap();
    assert_eq!(
        server.cmd::<i64>("EXISTS", &["job"]),
        0,
        "the lock was handed to a semaphore waiter"
    );
}
