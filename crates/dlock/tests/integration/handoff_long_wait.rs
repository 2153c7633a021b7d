//! A waiter that queued long before its turn still takes its hand-off without a round trip: the
//! hand-off says when the server granted it, so the claim lease counts from the grant (by the
//! server's clock, from the waiter's last busy answer) rather than from the waiter's last
//! attempt, and the new holder never counts on more of it than the server has left.

use std::time::Duration;

use dlock_test::RedisServer;
use tokio::time::{sleep, timeout};

use crate::rwlock_handoff::settled_client;
use crate::support::granted as within_5s;
use crate::support::queue_length_reaches;

/// The claim lease: long, so the new holder's first renewal (a script call, due a third of it
/// after the grant) comes well after the test has counted the release's.
const CLAIM: Duration = Duration::from_secs(3);
/// How long the waiter waits after its last attempt: over a third of the claim lease.
const WAIT: Duration = Duration::from_millis(1200);
/// What a handed lease keeps back: 1% + 2 ms of the claim for clock drift, and 1% of the time
/// it counts by the server's clock (at least `WAIT`).
const KEPT_BACK_MS: u128 = 30 + 2 + 12;

/// Long re-checks, so the waiter makes no attempt while it waits.
fn waiting() -> dlock::LockOptions {
    crate::rwlock_handoff::waiting(CLAIM)
}

/// Asserts that a holder counting on `counted` of a lease the server keeps `server_left_ms`
/// more (read first) counts on no more than the server keeps, less what it keeps back (and the
/// server's rounding down to whole ms).
fn within_the_servers_lease(counted: Duration, server_left_ms: f64) {
    assert!(
        counted > Duration::ZERO
            && (counted.as_millis() + KEPT_BACK_MS) as f64 <= server_left_ms.floor() + 1.0,
        "counts on {counted:?} of a claim the server keeps {server_left_ms} ms more"
    );
}

/// Waits over a third of the claim lease, then checks the waiter made no attempt meanwhile
/// (its last busy answer is older than that), and returns the script call count.
async fn wait_past_a_third_of_the_claim(server: &RedisServer) -> u64 {
    let before = server.script_calls();
    sleep(WAIT).await;
    assert_eq!(server.script_calls(), before, "an attempt while waiting");
    before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_waiter_queued_long_ago_takes_its_handoff_without_a_round_trip() {
    const QUEUE: &str = "{job}:dlock:queue:job";
    let server = RedisServer::start();
    let a = settled_client(&server).await;
    let b = settled_client(&server).await;
    // The release script in the server's cache (a first call is answered NOSCRIPT, and counts).
    let warm = a.lock("warm").unwrap().try_lock().await.unwrap();
    warm.release().await.unwrap();
    let holder = a.lock("job").unwrap().try_lock().await.unwrap();
    let lock = b.lock_with("job", waiting()).unwrap();
    let waiter = tokio::spawn(async move { lock.lock().await });
    queue_length_reaches(&server, QUEUE, 1).await;
    let before = wait_past_a_third_of_the_claim(&server).await;
    holder.release().await.unwrap();
    let guard = within_5s(waiter).await;
    // Before: the release, then the waiter's own acquire to confirm the grant (2).
    assert_eq!(
        server.script_calls() - before,
        1,
        "script calls from the release"
    );
    // Read the server's side first: what the guard counts on a moment later is less still.
    let pttl: i64 = server.cmd("PTTL", &["job"]);
    assert!(guard.is_held());
    within_the_servers_lease(guard.remaining(), pttl as f64);
    guard.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_semaphore_waiter_queued_long_ago_takes_its_permit_without_a_round_trip() {
    use crate::semaphore_handoff::{granted, lease_left, spawn_acquire, QUEUE};
    let settled_client = crate::semaphore_handoff::settled_client;
    let server = RedisServer::start();
    let a = settled_client(&server).await;
    let b = settled_client(&server).await;
    let held = a.semaphore("sem", 1).unwrap().try_acquire().await.unwrap();
    let semaphore = b.semaphore_with("sem", 1, waiting()).unwrap();
    let waiter = spawn_acquire(&semaphore, 1);
    queue_length_reaches(&server, QUEUE, 1).await;
    let token: String = server.cmd("LINDEX", &[QUEUE, "0"]);
    let before = wait_past_a_third_of_the_claim(&server).await;
    held.release().await.unwrap();
    let permit = granted(waiter).await;
    assert_eq!(
        server.script_calls() - before,
        1,
        "script calls from the release"
    );
    let left = lease_left(&server, &token);
    assert!(permit.is_held());
    within_the_servers_lease(permit.remaining(), left as f64);
    permit.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_queued_long_ago_takes_its_handoff_without_a_round_trip() {
    use crate::rwlock_handoff::QUEUE;
    use crate::rwlock_reader_handoff::{read_granted, spawn_read};
    let server = RedisServer::start();
    let a = settled_client(&server).await;
    let b = settled_client(&server).await;
    let writer = a.rw_lock("doc").unwrap().try_write().await.unwrap();
    let waiter = spawn_read(&b.rw_lock_with("doc", waiting()).unwrap());
    queue_length_reaches(&server, QUEUE, 1).await;
    let token = server.cmd::<String>("LINDEX", &[QUEUE, "0"]);
    let before = wait_past_a_third_of_the_claim(&server).await;
    writer.release().await.unwrap();
    let reader = read_granted(waiter).await;
    assert_eq!(
        server.script_calls() - before,
        1,
        "script calls from the release"
    );
    let end: f64 = server.cmd("ZSCORE", &["{doc}:dlock:readers:doc", &token[2..]]);
    let now: Vec<String> = server.cmd("TIME", &[]);
    let now_ms = now[0].parse::<f64>().unwrap() * 1000.0 + now[1].parse::<f64>().unwrap() / 1000.0;
    assert!(reader.is_held());
    within_the_servers_lease(reader.remaining(), end - now_ms);
    reader.release().await.unwrap();
}

/// The messages (channel, payload) a release hands lock `name` over with, to the first of
/// `queued` (token, hand-off terms), injected as clients would queue them; `expected`: how many.
/// The waiters listen on the inboxes "inbox" and "inbox2".
async fn handoff_messages(
    server: &RedisServer,
    name: &str,
    queued: &[(&str, &str)],
    expected: usize,
) -> Vec<(String, String)> {
    use futures_util::StreamExt as _;
    let (queue, leases, waiters) = (
        format!("{{{name}}}:dlock:queue:{name}"),
        format!("{{{name}}}:dlock:queue-leases:{name}"),
        format!("{{{name}}}:dlock:waiters:{name}"),
    );
    let holder = settled_client(server).await;
    let held = holder.lock(name).unwrap().try_lock().await.unwrap();
    let now: Vec<String> = server.cmd("TIME", &[]);
    let lapses = now[0].parse::<i64>().unwrap() * 1000 + 60_000;
    for (token, terms) in queued {
        let _: i64 = server.cmd("RPUSH", &[&queue, token]);
        let _: i64 = server.cmd("ZADD", &[&leases, &lapses.to_string(), token]);
        let _: i64 = server.cmd("HSET", &[&waiters, token, terms]);
    }
    let listener = redis::Client::open(server.url()).unwrap();
    let mut pubsub = listener.get_async_pubsub().await.unwrap();
    pubsub.subscribe(&["inbox", "inbox2"]).await.unwrap();
    let mut heard = pubsub.into_on_message();
    held.release().await.unwrap();
    let mut messages = Vec::new();
    while messages.len() < expected {
        let message = timeout(Duration::from_secs(5), heard.next())
            .await
            .expect("a hand-off message missing")
            .unwrap();
        messages.push((
            message.get_channel_name().to_owned(),
            message.get_payload().unwrap(),
        ));
    }
    assert_eq!(
        server.cmd::<String>("GET", &[name]),
        queued[0].0,
        "not handed over"
    );
    messages
}

/// The first 16 hex digits of SHA-1 over `text`, as the scripts MAC a hand-off.
fn mac(text: &str) -> String {
    sha1_smol::Sha1::from(text).digest().to_string()[..16].to_owned()
}

/// Hand-off terms on inbox `inbox`, saying the waiter reads a grant's time or not.
fn terms(inbox: &str, stamped: bool) -> String {
    let stamped = if stamped { r#","stamped":true"# } else { "" };
    format!(r#"{{"host":"h","pid":"1","label":"","claim":"1000","inbox":"{inbox}"{stamped}}}"#)
}

/// A waiter whose terms do not say it reads a grant's time (an older client's) is handed the lock
/// in the message every version reads: five fields, the MAC over token, fence and claim. One
/// that says so gets the grant's time too, under the MAC; the next in line, elsewhere, is told
/// in the message every version reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_waiter_is_handed_the_lock_in_a_message_its_version_reads() {
    let server = RedisServer::start();
    let older = "0123456789abcdef0123456789abcdef";
    let messages = handoff_messages(&server, "old", &[(older, &terms("inbox", false))], 1).await;
    let fields: Vec<&str> = messages[0].1.split(' ').collect();
    assert_eq!(fields.len(), 5, "{messages:?}");
    assert_eq!(fields[0], &older[..16]);
    assert_eq!(fields[2], "1000");
    assert_eq!(fields[3], mac(&format!("{older}:{}:1000", fields[1])));
    let newer = "fedcba9876543210fedcba9876543210";
    let next = "00112233445566778899aabbccddeeff";
    let before: Vec<String> = server.cmd("TIME", &[]);
    let queued = [
        (newer, &*terms("inbox", true)),
        (next, &*terms("inbox2", true)),
    ];
    let mut messages = handoff_messages(&server, "new", &queued, 2).await;
    messages.sort();
    let (to_holder, to_next) = (&messages[0], &messages[1]);
    assert_eq!((&*to_holder.0, &*to_next.0), ("inbox", "inbox2"));
    let fields: Vec<&str> = to_holder.1.split(' ').collect();
    assert_eq!(fields.len(), 6, "{messages:?}");
    assert_eq!(fields[4], &next[..16], "names the next in line");
    let granted: i64 = fields[5].parse().unwrap();
    let before_ms =
        before[0].parse::<i64>().unwrap() * 1000 + before[1].parse::<i64>().unwrap() / 1000;
    assert!(
        (before_ms..before_ms + 5_000).contains(&granted),
        "granted at {granted}, asked at {before_ms}"
    );
    assert_eq!(
        fields[3],
        mac(&format!("{newer}:{}:1000:{granted}", fields[1]))
    );
    let told: Vec<&str> = to_next.1.split(' ').collect();
    assert_eq!(told.len(), 5, "the next in line's message: {messages:?}");
    assert_eq!((told[0], told[4]), (&newer[..16], &next[..16]));
    assert_eq!(told[3], mac(&format!("{newer}:{}:1000", told[1])));
}
