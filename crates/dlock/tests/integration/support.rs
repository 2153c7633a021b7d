//! Helpers shared by the integration tests.

use std::time::Duration;

use dlock::{Client, ClientOptions, LockOptions};
use dlock_test::RedisServer;

/// A client of `server` with a short command timeout, so fault tests stay quick.
pub async fn client(server: &RedisServer) -> Client {
    Client::connect_with(
        &server.url(),
        ClientOptions::new().command_timeout(Duration::from_millis(500)),
    )
    .await
    .expect("connect to the test server")
}

/// Lock options with `ttl` (renewed).
pub fn ttl(ttl: Duration) -> LockOptions {
    LockOptions::new().ttl(ttl)
}

/// Takes `name` on `client` (it must be free) and releases it: the "does this lock work at
/// all" step many tests need.
pub async fn take_and_release(client: &Client, name: &str) {
    let guard = client.lock(name).unwrap().try_lock().await.unwrap();
    guard.release().await.unwrap();
}

/// Waits (up to 5 s) until the runtime has `expected` live tasks, and returns the count
/// then: background tasks that finished their work (a flush's waiter, a release) may need a
/// scheduler turn to end, which on a loaded 2-core machine took over a second (a clean CI
/// run saw one more task after 1 s), but a leaked one never ends.
pub async fn settled_task_count(expected: usize) -> usize {
    let metrics = tokio::runtime::Handle::current().metrics();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let alive = metrics.num_alive_tasks();
        if alive == expected || tokio::time::Instant::now() >= deadline {
            return alive;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The runtime's live tasks once the count has held still for 200 ms (up to 5 s): a count
/// taken while a background task (a connection's driver starting, a release) comes or goes
/// would make a baseline nothing can match (seen: 11 before, 10 after, no leak).
pub async fn quiet_task_count() -> usize {
    let metrics = tokio::runtime::Handle::current().metrics();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut count = metrics.num_alive_tasks();
    let mut since = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = metrics.num_alive_tasks();
        if now != count {
            (count, since) = (now, tokio::time::Instant::now());
        } else if since.elapsed() >= Duration::from_millis(200)
            || tokio::time::Instant::now() >= deadline
        {
            return count;
        }
    }
}

/// The slack (ε) for a timing bound, derived from this machine's speed right now rather than
/// guessed: four times the slowest of ten warm `status` round trips through `client` (the
/// library's own path: a script call and its reply), plus two scheduling periods (CFS targets
/// 12 ms per period on 2 cores): on a loaded machine a task woken by its timer or by a reply
/// may wait that long for a core, once in the library and once in the test. On an idle
/// machine that is ~30 ms; on a loaded one it grows with the round trips the test measures.
pub async fn epsilon(client: &Client) -> Duration {
    // The first call loads the script (a NOSCRIPT round trip): not a typical round trip.
    client.status("epsilon:probe").await.unwrap();
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let started = tokio::time::Instant::now();
        client.status("epsilon:probe").await.unwrap();
        slowest = slowest.max(started.elapsed());
    }
    slowest * 4 + SCHEDULING_PERIOD * 2
}

/// One period of the kernel's scheduler on a 2-core machine (CFS: 6 ms × (1 + log2 cores)).
const SCHEDULING_PERIOD: Duration = Duration::from_millis(12);

/// The drift allowance the library keeps back from a lease of `ttl` (1% + 2 ms, DESIGN §0):
/// a lease is surely valid for `ttl - drift(ttl)` after its request was sent.
pub fn drift(ttl: Duration) -> Duration {
    ttl / 100 + Duration::from_millis(2)
}

/// Waits until `server` has `n` link-monitor connections (the only RESP3 ones dlock opens), so a
/// restart is seen as a dropped connection rather than found when the monitor first connects.
pub async fn monitored(server: &RedisServer, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let clients: String = server.cmd("CLIENT", &["LIST"]);
        if clients.matches("resp=3").count() >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no link monitor connected:\n{clients}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (up to 5 s) until the watchdog's first-connect check has read `server`: more than
/// `before` MGETs (count them before the client's first grant).
///
/// A client's watchdog re-verifies every held lease once when its link monitor first connects,
/// in the background soon after the client's first grant. A test that then removes or replaces
/// a lease's key behind its holder's back and expects a later step (a re-entry, a stale extend)
/// to be the first to notice must let that check pass first: run after the change, it reports
/// the loss itself. Leases whose key holds the holder's token (locks, reentrant locks, writers,
/// multi-key members) are checked with one MGET; permits and readers by a script (EVALSHA).
pub async fn first_check_done(server: &RedisServer, before: u64) {
    let seen = tokio::time::timeout(Duration::from_secs(5), async {
        while server.command_calls("mget") <= before {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    assert!(
        seen.is_ok(),
        "no MGET on port {} within 5 s: the watchdog never checked its leases when its link \
         monitor first connected",
        server.port()
    );
}

/// A client of the ACL user `user`, made on `server`: every key and command, but no pub/sub
/// channel, so it can neither publish wake-ups nor hear them.
pub async fn client_without_channels(server: &RedisServer, user: &str) -> Client {
    let acl = ["SETUSER", user, "on", ">pw", "~*", "+@all", "resetchannels"];
    let _: () = server.cmd("ACL", &acl);
    let url = format!("redis://{user}:pw@127.0.0.1:{}/", server.port());
    Client::connect(&url).await.unwrap()
}

/// Waits (at most 10 s) until the wait queue (list) `queue` holds `n` waiters.
pub async fn queue_length_reaches(server: &RedisServer, queue: &str, n: i64) {
    let reached = tokio::time::timeout(Duration::from_secs(10), async {
        while server.cmd::<i64>("LLEN", &[queue]) < n {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    assert!(reached.is_ok(), "the queue {queue} never reached {n}");
}

/// Waits (at most 5 s) until `n` connections subscribe to `channel`.
pub async fn subscribers_reach(server: &RedisServer, channel: &str, n: i64) {
    let reached = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let (_, count): (String, i64) = server.cmd("PUBSUB", &["NUMSUB", channel]);
            if count >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(reached.is_ok(), "{channel} never had {n} subscribers");
}

/// What a spawned wait returns (a guard, a permit), within 5 s.
pub async fn granted<G>(waiter: tokio::task::JoinHandle<dlock::Result<G>>) -> G {
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("not granted within 5 s")
        .unwrap()
        .unwrap()
}
