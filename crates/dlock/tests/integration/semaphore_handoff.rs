//! Semaphore hand-off: a release grants the permits it frees to the waiters at the head of the
//! wait queue whose permits fit, in the same script call, and the wake-up carries each grant,
//! so a contended permit changes hands in one round trip.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dlock::{Client, LockOptions, Semaphore, SemaphorePermit, Wait};
use dlock_test::RedisServer;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};

pub(crate) use crate::support::granted;
use crate::support::{
    client, client_without_channels, epsilon, queue_length_reaches, subscribers_reach,
};

const HOLDERS: &str = "sem";
pub(crate) const QUEUE: &str = "{sem}:dlock:queue:sem";
const LEASES: &str = "{sem}:dlock:queue-leases:sem";
const WAITERS: &str = "{sem}:dlock:waiters:sem";
const FENCE: &str = "{sem}:dlock:fence:sem";

/// Waiting options: a long re-check, so only a hand-off or a wake-up explains a quick grant.
fn waiting(claim: Duration) -> LockOptions {
    LockOptions::new()
        .claim(claim)
        .recheck(Duration::from_secs(10))
        .wait(Wait::Limit(Duration::from_secs(30)))
}

/// One wait on `semaphore` behind another client, so its wake-up subscription lingers: the
/// next wait is then exactly one attempt before it sleeps.
async fn warm_up(server: &RedisServer, semaphore: &Semaphore) {
    let other = client(server).await;
    let full = other.semaphore("sem", semaphore.permits()).unwrap();
    let holder = full.try_acquire_many(semaphore.permits()).await.unwrap();
    let waiter = spawn_acquire(semaphore, 1);
    queue_length_reaches(server, QUEUE, 1).await;
    holder.release().await.unwrap();
    granted(waiter).await.release().await.unwrap();
}

pub(crate) fn spawn_acquire(
    semaphore: &Semaphore,
    n: u32,
) -> JoinHandle<dlock::Result<SemaphorePermit>> {
    let semaphore = semaphore.clone();
    tokio::spawn(async move { semaphore.acquire_many(n).await })
}

/// Script calls (EVALSHA and EVAL) the server ran so far.
fn script_calls(server: &RedisServer) -> u64 {
    server.script_calls()
}

/// A client whose background work is done before a test counts script calls: its watchdog's
/// link monitor starts with its first lease and checks the leases held then with a script call
/// (a permit's check is a script), and the scripts are in the server's cache (a first call is
/// answered NOSCRIPT, and counts). Takes a permit of another semaphore and holds it until that
/// check has run.
pub(crate) async fn settled_client(server: &RedisServer) -> Client {
    let c = client(server).await;
    let warm = c.semaphore("warm", 1).unwrap();
    let before = script_calls(server);
    let permit = warm.try_acquire().await.unwrap();
    let checked = timeout(Duration::from_secs(5), async {
        while script_calls(server) < before + 2 {
            sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    assert!(
        checked.is_ok(),
        "the watchdog never checked its first permit"
    );
    permit.release().await.unwrap();
    c
}

/// Milliseconds until `token`'s permit lease ends, on the server's clock.
pub(crate) fn lease_left(server: &RedisServer, token: &str) -> i64 {
    let end: f64 = server.cmd("ZSCORE", &[HOLDERS, token]);
    let now: Vec<String> = server.cmd("TIME", &[]);
    let now_ms = now[0].parse::<i64>().unwrap() * 1000 + now[1].parse::<i64>().unwrap() / 1000;
    end as i64 - now_ms
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contended_permit_handoff_costs_the_release_alone() {
    let server = RedisServer::start();
    let a = settled_client(&server).await;
    let b = settled_client(&server).await;
    // Long enough that a loaded machine still takes the hand-off without a round trip (a
    // waiter does so only within a third of the claim from the grant).
    let claim = Duration::from_secs(3);
    let semaphore = b.semaphore_with("sem", 2, waiting(claim)).unwrap();
    warm_up(&server, &semaphore).await;
    let held = a.semaphore_with("sem", 2, waiting(claim)).unwrap();
    let first = held.try_acquire().await.unwrap();
    let second = held.try_acquire().await.unwrap();
    let waiter = spawn_acquire(&semaphore, 1);
    queue_length_reaches(&server, QUEUE, 1).await;
    let token: String = server.cmd("LINDEX", &[QUEUE, "0"]);
    let before = script_calls(&server);
    let released_at = Instant::now();
    first.release().await.unwrap();
    let permit = granted(waiter).await;
    // Before hand-off: the release, then the waiter's own acquire (2).
    assert_eq!(
        script_calls(&server) - before,
        1,
        "script calls from the release to the new holder"
    );
    assert!(permit.is_held());
    assert!(permit.fencing_token() > second.fencing_token());
    let left = lease_left(&server, &token);
    assert!(
        left > 0 && left <= i64::try_from(claim.as_millis()).unwrap(),
        "a handed permit first lasts the claim lease: {left} ms left"
    );
    assert_eq!(server.cmd::<i64>("EXISTS", &[QUEUE, LEASES, WAITERS]), 0);
    // The watchdog renews it to the full TTL within a third of the claim lease.
    let claim_ms = i64::try_from(claim.as_millis()).unwrap();
    let renewed = timeout(claim, async {
        while lease_left(&server, &token) <= claim_ms {
            sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        renewed.is_ok(),
        "not renewed within {claim:?} of the hand-off ({:?} ago)",
        released_at.elapsed()
    );
    let full = i64::try_from(permit.ttl().as_millis()).unwrap();
    assert!(lease_left(&server, &token) > full / 2);
    permit.release().await.unwrap();
    second.release().await.unwrap();
    assert_eq!(server.cmd::<i64>("EXISTS", &[HOLDERS]), 0);
}

/// One release that frees several permits hands them, in the same call and in queue order, to
/// every queued waiter whose permits fit; outside fair mode one that does not fit is passed over
/// (it gets its permits from a later release).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_hands_to_each_waiter_that_fits_in_queue_order() {
    let server = RedisServer::start();
    let a = settled_client(&server).await;
    let claim = Duration::from_secs(5);
    let all = a.semaphore_with("sem", 4, waiting(claim)).unwrap();
    let holder = all.try_acquire_many(4).await.unwrap();
    let mut waiters = Vec::new();
    // Queued in this order: 1, 2, 2, 1 permits.
    for (i, n) in [1, 2, 2, 1].into_iter().enumerate() {
        let c = settled_client(&server).await;
        let semaphore = c.semaphore_with("sem", 4, waiting(claim)).unwrap();
        waiters.push((spawn_acquire(&semaphore, n), c));
        queue_length_reaches(&server, QUEUE, i as i64 + 1).await;
    }
    let third_token: String = server.cmd("LINDEX", &[QUEUE, "2"]);
    let before = script_calls(&server);
    holder.release().await.unwrap();
    // 1 + 2 fit in 4; the third wants 2 with 1 left and is passed over; the fourth's 1 fits.
    let mut waiters = waiters.into_iter().map(|(waiter, _client)| waiter);
    let first = granted(waiters.next().unwrap()).await;
    let second = granted(waiters.next().unwrap()).await;
    let third = waiters.next().unwrap();
    let fourth = granted(waiters.next().unwrap()).await;
    assert_eq!(
        script_calls(&server) - before,
        1,
        "one release served three waiters"
    );
    let queue: Vec<String> = server.cmd("LRANGE", &[QUEUE, "0", "-1"]);
    assert_eq!(queue, [third_token]);
    assert!(first.fencing_token() < second.fencing_token());
    assert!(second.fencing_token() < fourth.fencing_token());
    assert_eq!(
        (first.permits(), second.permits(), fourth.permits()),
        (1, 2, 1)
    );
    assert!(!third.is_finished());
    second.release().await.unwrap();
    let third = granted(third).await;
    assert!(third.fencing_token() > fourth.fencing_token());
    for permit in [first, third, fourth] {
        permit.release().await.unwrap();
    }
    assert_eq!(server.cmd::<i64>("EXISTS", &[HOLDERS, QUEUE]), 0);
}

/// Fair mode: a head that does not fit keeps the permits for itself; a later, smaller waiter is
/// neither handed them nor woken, and the head is handed its permits once they are free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fair_head_that_does_not_fit_is_not_overtaken() {
    let server = RedisServer::start();
    let a = client(&server).await;
    let claim = Duration::from_secs(5);
    let options = waiting(claim).fair(true);
    let held = a.semaphore_with("sem", 3, options.clone()).unwrap();
    let one = held.try_acquire().await.unwrap();
    let two = held.try_acquire().await.unwrap();
    let big_client = client(&server).await;
    let big = big_client
        .semaphore_with("sem", 3, options.clone())
        .unwrap();
    let big_waiter = spawn_acquire(&big, 3);
    queue_length_reaches(&server, QUEUE, 1).await;
    let small_client = client(&server).await;
    let small = small_client.semaphore_with("sem", 3, options).unwrap();
    let small_waiter = spawn_acquire(&small, 1);
    queue_length_reaches(&server, QUEUE, 2).await;
    one.release().await.unwrap();
    // Two permits are free: not enough for the head, and the small waiter behind it must wait.
    sleep(Duration::from_millis(200)).await;
    assert!(!big_waiter.is_finished() && !small_waiter.is_finished());
    assert_eq!(server.cmd::<i64>("ZCARD", &[HOLDERS]), 1);
    two.release().await.unwrap();
    let big = granted(big_waiter).await;
    assert_eq!(big.permits(), 3);
    assert!(!small_waiter.is_finished());
    big.release().await.unwrap();
    granted(small_waiter).await.release().await.unwrap();
}

/// A queue head that died just before its turn (queued with a live waiter lease, nobody
/// listening: the state a process killed right after joining the queue leaves) is handed the
/// permit; the next waiter gets it when the claim lease ends, not a TTL or a re-check later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_head_delays_the_next_waiter_by_at_most_the_claim_lease() {
    let server = RedisServer::start();
    let a = client(&server).await;
    let b = client(&server).await;
    let epsilon = epsilon(&a).await;
    let claim = Duration::from_millis(500);
    let holder = a
        .semaphore_with("sem", 1, waiting(claim))
        .unwrap()
        .try_acquire()
        .await
        .unwrap();
    let dead = "deadbeefdeadbeefdeadbeefdeadbeef";
    plant_dead_waiter(&server, dead, 1, 500);
    let semaphore = b.semaphore_with("sem", 1, waiting(claim)).unwrap();
    let waiter = spawn_acquire(&semaphore, 1);
    queue_length_reaches(&server, QUEUE, 2).await;
    let released_at = Instant::now();
    let holder_fence = holder.fencing_token();
    holder.release().await.unwrap();
    let handed: Vec<String> = server.cmd("ZRANGE", &[HOLDERS, "0", "-1"]);
    assert_eq!(handed, [dead], "the release hands the permit to the head");
    let permit = granted(waiter).await;
    let waited = released_at.elapsed();
    assert!(
        waited <= claim + epsilon,
        "the next waiter got the permit {waited:?} after the release (claim {claim:?}, ε \
         {epsilon:?}); its re-check is 10 s"
    );
    let dead_fence: u64 = server.cmd::<String>("GET", &[FENCE]).parse().unwrap();
    assert_eq!(permit.fencing_token(), dead_fence);
    assert!(permit.fencing_token() > holder_fence + 1);
    permit.release().await.unwrap();
}

/// The releaser may not publish (an ACL user without channel permission): the hand-off is
/// made but its message never sent. The new holder finds its permit at its re-check, with the
/// fencing token the hand-off issued, and renews it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_handoff_message_is_recovered_by_the_recheck() {
    let server = RedisServer::start();
    let mute = client_without_channels(&server, "mute").await;
    let b = client(&server).await;
    let epsilon = epsilon(&b).await;
    let recheck = Duration::from_millis(400);
    let options = waiting(Duration::from_secs(5)).recheck(recheck);
    let semaphore = b.semaphore_with("sem", 1, options).unwrap();
    warm_up(&server, &semaphore).await;
    let holder = mute
        .semaphore("sem", 1)
        .unwrap()
        .try_acquire()
        .await
        .unwrap();
    let waiter = spawn_acquire(&semaphore, 1);
    queue_length_reaches(&server, QUEUE, 1).await;
    let token: String = server.cmd("LINDEX", &[QUEUE, "0"]);
    let released_at = Instant::now();
    holder.release().await.unwrap();
    let handed: Vec<String> = server.cmd("ZRANGE", &[HOLDERS, "0", "-1"]);
    assert_eq!(
        handed,
        std::slice::from_ref(&token),
        "handed over, not freed"
    );
    let permit = granted(waiter).await;
    assert!(
        released_at.elapsed() <= recheck + epsilon,
        "found {:?} after the release (re-check {recheck:?})",
        released_at.elapsed()
    );
    let counter: u64 = server.cmd::<String>("GET", &[FENCE]).parse().unwrap();
    assert_eq!(permit.fencing_token(), counter);
    // The re-check renewed the claim lease to the full TTL.
    assert!(lease_left(&server, &token) > 5_000);
    permit.release().await.unwrap();
}

/// A waiter cancelled just as a permit is handed to it passes the permit on: its undo (or its
/// permit's drop) releases through the same script, which hands the permit to the next waiter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_cancelled_as_it_is_handed_a_permit_passes_it_on() {
    let server = RedisServer::start();
    let a = client(&server).await;
    let b = client(&server).await;
    let c = client(&server).await;
    let claim = Duration::from_secs(5);
    for round in 0..5 {
        let holder = a
            .semaphore_with("sem", 1, waiting(claim))
            .unwrap()
            .try_acquire()
            .await
            .unwrap();
        let cancelled = spawn_acquire(&b.semaphore_with("sem", 1, waiting(claim)).unwrap(), 1);
        queue_length_reaches(&server, QUEUE, 1).await;
        let next = spawn_acquire(&c.semaphore_with("sem", 1, waiting(claim)).unwrap(), 1);
        queue_length_reaches(&server, QUEUE, 2).await;
        holder.release().await.unwrap();
        // At a different moment each round: before, at or after the hand-off reaches b.
        sleep(Duration::from_micros(200 * round)).await;
        cancelled.abort();
        let _ = cancelled.await;
        // Neither a claim lease (5 s) nor a re-check (10 s) may pass: only a hand-off or a
        // wake-up explains a grant this soon.
        let permit = timeout(Duration::from_secs(2), next)
            .await
            .expect("the next waiter was not served within 2 s")
            .unwrap()
            .unwrap();
        permit.release().await.unwrap();
        b.flush().await;
        assert_eq!(
            server.cmd::<i64>("EXISTS", &[HOLDERS, QUEUE, LEASES, WAITERS]),
            0
        );
    }
}

/// A waiter that does not queue (hand-off off) is still woken when a release frees a permit
/// nobody queued for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_does_not_queue_is_woken_by_a_release() {
    let server = RedisServer::start();
    let a = client(&server).await;
    let b = client(&server).await;
    let holder = a.semaphore("sem", 1).unwrap().try_acquire().await.unwrap();
    let options = waiting(Duration::from_secs(1)).handoff(false);
    let semaphore = b.semaphore_with("sem", 1, options).unwrap();
    let waiter = spawn_acquire(&semaphore, 1);
    subscribers_reach(&server, "{sem}:dlock:released:sem", 1).await;
    assert_eq!(server.cmd::<i64>("EXISTS", &[QUEUE]), 0, "it queued");
    holder.release().await.unwrap();
    granted(waiter).await.release().await.unwrap();
}

/// Eight workers on a 3-permit semaphore, each looping acquire → critical section → release
/// through hand-offs: never more than 3 inside at once, every fencing token distinct and
/// increasing per worker, and every worker served alike (FIFO: counts within 10 % of the mean).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permit_handoffs_keep_the_limit_fencing_and_fairness() {
    let server = RedisServer::start();
    let inside = Arc::new(Mutex::new(0u32));
    let most = Arc::new(Mutex::new(0u32));
    let fences = Arc::new(Mutex::new(Vec::new()));
    let stop_at = Instant::now() + Duration::from_secs(2);
    let mut workers = Vec::new();
    for _ in 0..8 {
        let c = client(&server).await;
        let (inside, most, fences) = (inside.clone(), most.clone(), fences.clone());
        workers.push(tokio::spawn(async move {
            let semaphore = c
                .semaphore_with("sem", 3, waiting(Duration::from_secs(1)))
                .unwrap();
            let mut served = 0u32;
            let mut last = 0;
            while Instant::now() < stop_at {
                let permit = semaphore.acquire().await.unwrap();
                {
                    let mut inside = inside.lock().unwrap();
                    *inside += 1;
                    let mut most = most.lock().unwrap();
                    *most = (*most).max(*inside);
                }
                assert!(permit.fencing_token() > last);
                last = permit.fencing_token();
                fences.lock().unwrap().push(last);
                tokio::task::yield_now().await;
                *inside.lock().unwrap() -= 1;
                permit.release().await.unwrap();
                served += 1;
            }
            served
        }));
    }
    let mut counts = Vec::new();
    for worker in workers {
        counts.push(worker.await.unwrap());
    }
    assert!(*most.lock().unwrap() <= 3, "more than 3 inside at once");
    let mut fences = fences.lock().unwrap().clone();
    let granted = fences.len();
    assert!(granted > 100, "only {granted} grants");
    fences.sort_unstable();
    fences.dedup();
    assert_eq!(fences.len(), granted, "a fencing token was issued twice");
    let mean = f64::from(counts.iter().sum::<u32>()) / 8.0;
    assert!(
        counts
            .iter()
            .all(|&n| (f64::from(n) - mean).abs() <= mean * 0.1),
        "FIFO hand-offs serve everyone within 10% of the mean: {counts:?}"
    );
}

/// Plants a waiter that died just after queueing for `permits` (queued with hand-off terms and
/// a waiter lease of 20 s, nobody listening).
fn plant_dead_waiter(server: &RedisServer, token: &str, permits: u32, claim_ms: u64) {
    let _: () = server.cmd("RPUSH", &[QUEUE, token]);
    let now: Vec<String> = server.cmd("TIME", &[]);
    let now_ms = now[0].parse::<u64>().unwrap() * 1000 + now[1].parse::<u64>().unwrap() / 1000;
    let _: () = server.cmd("ZADD", &[LEASES, &(now_ms + 20_000).to_string(), token]);
    let terms = format!(
        r#"{{"host":"gone","pid":"1","label":"","claim":"{claim_ms}","permits":"{permits}","fair":false}}"#
    );
    let _: () = server.cmd("HSET", &[WAITERS, token, &terms]);
}

/// Review finding: outside fair mode, a permit handed to a dead waiter (past a head that did
/// not fit) came free when its claim lapsed, and the head's re-check purged it without passing
/// it on: the waiter behind, which fits, slept until its own re-check. The purge now hands it
/// on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_claim_is_passed_on_to_a_waiter_that_fits() {
    let server = RedisServer::start();
    let a = client(&server).await;
    let epsilon = epsilon(&a).await;
    let claim = Duration::from_millis(500);
    let held = a.semaphore_with("sem", 2, waiting(claim)).unwrap();
    let one = held.try_acquire().await.unwrap();
    let _two = held.try_acquire().await.unwrap();
    let x_client = client(&server).await;
    let x = spawn_acquire(
        &x_client.semaphore_with("sem", 2, waiting(claim)).unwrap(),
        2,
    );
    queue_length_reaches(&server, QUEUE, 1).await;
    plant_dead_waiter(&server, "deadbeefdeadbeefdeadbeefdeadbeef", 1, 500);
    let y_client = client(&server).await;
    let y = spawn_acquire(
        &y_client.semaphore_with("sem", 2, waiting(claim)).unwrap(),
        1,
    );
    queue_length_reaches(&server, QUEUE, 3).await;
    let released_at = Instant::now();
    one.release().await.unwrap();
    // X (2) does not fit in the one permit free and is passed over; the dead waiter gets it.
    let handed: Vec<String> = server.cmd("ZRANGEBYSCORE", &[HOLDERS, "-inf", "+inf"]);
    assert!(handed.contains(&"deadbeefdeadbeefdeadbeefdeadbeef".to_owned()));
    let permit = timeout(Duration::from_secs(5), y)
        .await
        .expect("Y was not served within 5 s")
        .unwrap()
        .unwrap();
    let waited = released_at.elapsed();
    assert!(
        waited <= claim + epsilon,
        "Y got the lapsed permit {waited:?} after the release (claim {claim:?}, ε {epsilon:?}); \
         its re-check is 10 s"
    );
    assert!(!x.is_finished());
    permit.release().await.unwrap();
    x.abort();
}

/// Review finding: in fair mode a waiter without hand-off terms (it waits with hand-off off)
/// that became the head once the waiter ahead was handed its permit was not woken, though
/// permits were free for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fair_waiter_without_handoff_is_woken_when_it_becomes_the_head() {
    let server = RedisServer::start();
    let a = client(&server).await;
    let fair = waiting(Duration::from_secs(5)).fair(true);
    let holder = a
        .semaphore_with("sem", 2, fair.clone())
        .unwrap()
        .try_acquire_many(2)
        .await
        .unwrap();
    let first_client = client(&server).await;
    let first = spawn_acquire(
        &first_client.semaphore_with("sem", 2, fair.clone()).unwrap(),
        1,
    );
    queue_length_reaches(&server, QUEUE, 1).await;
    let second_client = client(&server).await;
    let options = fair.handoff(false);
    let second = spawn_acquire(&second_client.semaphore_with("sem", 2, options).unwrap(), 1);
    queue_length_reaches(&server, QUEUE, 2).await;
    holder.release().await.unwrap();
    let first = granted(first).await;
    // Its re-check is 10 s and the first one's claim 5 s: only a wake-up explains this.
    let second = timeout(Duration::from_secs(2), second)
        .await
        .expect("the second waiter was not woken")
        .unwrap()
        .unwrap();
    first.release().await.unwrap();
    second.release().await.unwrap();
}

/// Raising the limit passes the new room on as a release does: a queued waiter is handed its
/// permit by `set_limit`'s own call, without retrying (review finding: a raise woke every
/// waiter, and in fair mode all but the head retried in vain).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raised_limit_hands_the_new_room_to_queued_waiters() {
    let server = RedisServer::start();
    let a = settled_client(&server).await;
    let b = settled_client(&server).await;
    let claim = Duration::from_secs(3);
    let semaphore = b.semaphore_with("sem", 1, waiting(claim)).unwrap();
    warm_up(&server, &semaphore).await;
    let held = a.semaphore_with("sem", 1, waiting(claim)).unwrap();
    let holder = held.try_acquire().await.unwrap();
    // Loads set_limit's script (a first call is answered NOSCRIPT, and counts).
    assert_eq!(held.set_limit(1).await.unwrap(), Some(1));
    let waiter = spawn_acquire(&semaphore, 1);
    queue_length_reaches(&server, QUEUE, 1).await;
    let before = script_calls(&server);
    assert_eq!(held.set_limit(2).await.unwrap(), Some(1));
    let permit = granted(waiter).await;
    assert_eq!(
        script_calls(&server) - before,
        1,
        "script calls from the raise to the new holder"
    );
    assert!(permit.fencing_token() > holder.fencing_token());
    permit.release().await.unwrap();
    holder.release().await.unwrap();
}
