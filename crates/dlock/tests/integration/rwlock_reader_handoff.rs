//! Read-write lock hand-off to readers: the release that frees the lock grants the read side to
//! every reader queued at the head of the wait queue (in one script call, with one fresh
//! fencing token), and each reader's wake-up carries its grant, so no reader needs a round trip
//! of its own. A handed reader that died holds the writer behind it up for at most its claim
//! lease; a lost message is found at the reader's re-check.

use std::time::Duration;

use dlock::{Client, ReadGuard, RwLock, Wait};
use dlock_test::RedisServer;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};

use crate::rwlock_handoff::{
    granted, holder_fence, queue_dead_entry, settled_client, spawn_write, waiting, LEASES, QUEUE,
    WAITERS,
};
pub(crate) use crate::support::granted as read_granted;
use crate::support::{client, client_without_channels, epsilon, queue_length_reaches};

const READERS: &str = "{doc}:dlock:readers:doc";

/// The server's clock, in ms.
fn server_ms(server: &RedisServer) -> i64 {
    let now: Vec<String> = server.cmd("TIME", &[]);
    now[0].parse::<i64>().unwrap() * 1000 + now[1].parse::<i64>().unwrap() / 1000
}

pub(crate) fn spawn_read(lock: &RwLock) -> JoinHandle<dlock::Result<ReadGuard>> {
    let lock = lock.clone();
    tokio::spawn(async move { lock.read().await })
}

/// `n` readers, each on a client of its own (as processes would be), waiting behind the
/// current holder: each is queued (it can hear its hand-off) before the next starts.
async fn queued_readers(
    server: &RedisServer,
    options: &dlock::LockOptions,
    n: i64,
) -> Vec<(JoinHandle<dlock::Result<ReadGuard>>, Client)> {
    let queued = server.cmd::<i64>("LLEN", &[QUEUE]);
    let mut readers = Vec::new();
    for i in 1..=n {
        let c = settled_client(server).await;
        let waiter = spawn_read(&c.rw_lock_with("doc", options.clone()).unwrap());
        queue_length_reaches(server, QUEUE, queued + i).await;
        readers.push((waiter, c));
    }
    readers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writers_release_hands_the_read_side_to_every_queued_reader_in_one_call() {
    let server = RedisServer::start();
    let a = settled_client(&server).await;
    // Long enough that a loaded machine still takes the hand-off without a round trip (a
    // waiter does so only within a third of the claim from the grant).
    let claim = Duration::from_secs(3);
    let options = waiting(claim);
    let holder = a
        .rw_lock_with("doc", options.clone())
        .unwrap()
        .try_write()
        .await
        .unwrap();
    let readers = queued_readers(&server, &options, 3).await;
    let before = server.script_calls();
    let released_at = Instant::now();
    let write_fence = holder.fencing_token();
    holder.release().await.unwrap();
    assert_eq!(
        server.cmd::<String>("GET", &["doc"]),
        "dlock:read-mode",
        "handed to the readers, not freed"
    );
    let mut guards = Vec::new();
    for (waiter, c) in readers {
        guards.push((read_granted(waiter).await, c));
    }
    // Before reader hand-off: the release, then each reader's own acquire (4).
    assert_eq!(
        server.script_calls() - before,
        1,
        "script calls from the release to the three readers"
    );
    let token = guards[0].0.fencing_token();
    assert!(
        token > write_fence,
        "readers' token {token} not above the write's {write_fence}"
    );
    for (guard, _) in &guards {
        assert_eq!(
            guard.fencing_token(),
            token,
            "one token for the read period"
        );
    }
    assert_eq!(token, holder_fence(&server));
    assert_eq!(server.cmd::<i64>("ZCARD", &[READERS]), 3);
    let claim_ms = i64::try_from(claim.as_millis()).unwrap();
    let pttl: i64 = server.cmd("PTTL", &["doc"]);
    assert!(
        pttl > 0 && pttl <= claim_ms,
        "a handed read grant first lasts the claim: {pttl} ms"
    );
    assert_eq!(server.cmd::<i64>("EXISTS", &[QUEUE, LEASES, WAITERS]), 0);
    // Handed, the readers keep writers out, and share with a new reader.
    let other = a.rw_lock("doc").unwrap();
    assert!(other.try_write().await.unwrap_err().is_conflict());
    other.try_read().await.unwrap().release().await.unwrap();
    // The watchdog renews each handed reader to its full TTL.
    let renewed = timeout(claim, async {
        loop {
            let ends: Vec<String> = server.cmd("ZRANGE", &[READERS, "0", "-1", "WITHSCORES"]);
            let now_ms = server_ms(&server);
            let all = ends
                .chunks(2)
                .all(|pair| pair[1].parse::<i64>().unwrap() - now_ms > claim_ms);
            if ends.len() == 6 && all {
                break;
            }
            sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        renewed.is_ok(),
        "not every reader renewed within {claim:?} of the hand-off ({:?} ago)",
        released_at.elapsed()
    );
    // The next write's token is above the readers'.
    let writer = spawn_write(&a.rw_lock_with("doc", options).unwrap());
    queue_length_reaches(&server, QUEUE, 1).await;
    for (guard, _) in guards {
        guard.release().await.unwrap();
    }
    let write = granted(writer).await;
    assert!(write.fencing_token() > token);
    write.release().await.unwrap();
}

/// Readers queued behind a waiting writer are not handed the lock while that writer is ahead:
/// the holder's release hands it to the writer, and the writer's release to the readers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_behind_a_queued_writer_are_handed_the_lock_after_that_writer() {
    let server = RedisServer::start();
    let a = settled_client(&server).await;
    let b = settled_client(&server).await;
    let options = waiting(Duration::from_secs(3));
    let holder = a
        .rw_lock_with("doc", options.clone())
        .unwrap()
        .try_write()
        .await
        .unwrap();
    let writer = spawn_write(&b.rw_lock_with("doc", options.clone()).unwrap());
    queue_length_reaches(&server, QUEUE, 1).await;
    let readers = queued_readers(&server, &options, 2).await;
    holder.release().await.unwrap();
    let write = granted(writer).await;
    sleep(Duration::from_millis(50)).await;
    for (reader, _) in &readers {
        assert!(
            !reader.is_finished(),
            "a reader got in with a writer inside"
        );
    }
    let before = server.script_calls();
    let write_fence = write.fencing_token();
    write.release().await.unwrap();
    for (reader, _) in readers {
        let guard = read_granted(reader).await;
        assert!(guard.fencing_token() > write_fence);
        guard.release().await.unwrap();
    }
    // The release, then one release per reader.
    assert_eq!(server.script_calls() - before, 3);
}

/// Readers that died just after queueing (entries with hand-off terms and live waiter leases,
/// nobody listening) are handed the lock; the writer behind them gets it when their claim
/// ends, not a TTL or a re-check later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_behind_handed_readers_that_died_waits_at_most_the_claim_lease() {
    let server = RedisServer::start();
    let a = client(&server).await;
    let b = client(&server).await;
    let epsilon = epsilon(&a).await;
    let claim = Duration::from_millis(500);
    let holder = a
        .rw_lock_with("doc", waiting(claim))
        .unwrap()
        .try_write()
        .await
        .unwrap();
    for dead in [
        "r:deadbeefdeadbeefdeadbeefdeadbeef",
        "r:feedfacefeedfacefeedfacefeedface",
    ] {
        queue_dead_entry(&server, dead);
    }
    let waiter = spawn_write(&b.rw_lock_with("doc", waiting(claim)).unwrap());
    queue_length_reaches(&server, QUEUE, 3).await;
    let released_at = Instant::now();
    holder.release().await.unwrap();
    assert_eq!(server.cmd::<String>("GET", &["doc"]), "dlock:read-mode");
    assert_eq!(server.cmd::<i64>("ZCARD", &[READERS]), 2);
    let guard = granted(waiter).await;
    let waited = released_at.elapsed();
    assert!(
        waited <= claim + epsilon,
        "the writer got the lock {waited:?} after the release (claim {claim:?}, ε \
         {epsilon:?}); its re-check is 10 s"
    );
    assert_eq!(guard.fencing_token(), holder_fence(&server));
    guard.release().await.unwrap();
}

/// The releaser may not publish (an ACL user without channel permission): the readers are
/// handed the lock but never told. Each finds its grant at its re-check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reader_handoff_message_is_recovered_by_the_recheck() {
    let server = RedisServer::start();
    let mute = client_without_channels(&server, "mute").await;
    let epsilon = epsilon(&mute).await;
    let recheck = Duration::from_millis(400);
    let options = waiting(Duration::from_secs(5)).recheck(recheck);
    let holder = mute.rw_lock("doc").unwrap().try_write().await.unwrap();
    let readers = queued_readers(&server, &options, 2).await;
    let released_at = Instant::now();
    holder.release().await.unwrap();
    assert_eq!(server.cmd::<String>("GET", &["doc"]), "dlock:read-mode");
    for (reader, _) in readers {
        let guard = read_granted(reader).await;
        assert!(
            released_at.elapsed() <= recheck + epsilon,
            "found {:?} after the release (re-check {recheck:?})",
            released_at.elapsed()
        );
        assert_eq!(guard.fencing_token(), holder_fence(&server));
        guard.release().await.unwrap();
    }
}

/// A reader cancelled just as the lock is handed to it passes the lock on: its undo releases
/// its read hold through the same script, and the writer behind gets the lock at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_cancelled_as_it_is_handed_the_lock_passes_it_on() {
    let server = RedisServer::start();
    let a = client(&server).await;
    let w = client(&server).await;
    let options = waiting(Duration::from_secs(5));
    for round in 0..5 {
        let holder = a
            .rw_lock_with("doc", options.clone())
            .unwrap()
            .try_write()
            .await
            .unwrap();
        let mut readers = queued_readers(&server, &options, 1).await;
        let next = spawn_write(&w.rw_lock_with("doc", options.clone()).unwrap());
        queue_length_reaches(&server, QUEUE, 2).await;
        holder.release().await.unwrap();
        sleep(Duration::from_micros(200 * round)).await;
        let (cancelled, c) = readers.pop().unwrap();
        cancelled.abort();
        let _ = cancelled.await;
        let guard = timeout(Duration::from_secs(2), next)
            .await
            .expect("the writer was not served within 2 s")
            .unwrap()
            .unwrap();
        guard.release().await.unwrap();
        c.flush().await;
        assert_eq!(
            server.cmd::<i64>("EXISTS", &["doc", QUEUE, LEASES, WAITERS, READERS]),
            0
        );
    }
}

/// Review finding: readers that give up (their wait limit passes) leave the queue, and a
/// reader's place holds nobody back outside fair mode, so leaving wakes nobody. Each withdrawal
/// published a wake-up for everyone, and every reader still waiting retried: about n²/2 script
/// calls for n readers giving up one after the other (1,020 for 40).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_that_give_up_wake_nobody() {
    let server = RedisServer::start();
    let a = settled_client(&server).await;
    let options = waiting(Duration::from_secs(3)).wait(Wait::Limit(Duration::from_millis(1500)));
    let holder = a
        .rw_lock_with("doc", options.clone())
        .unwrap()
        .try_write()
        .await
        .unwrap();
    let b = settled_client(&server).await;
    let lock = b.rw_lock_with("doc", options).unwrap();
    let n = 40;
    let mut waiters = Vec::new();
    for i in 1..=n {
        waiters.push(spawn_read(&lock));
        queue_length_reaches(&server, QUEUE, i).await;
    }
    let before = server.script_calls();
    for waiter in waiters {
        assert!(waiter.await.unwrap().unwrap_err().is_timeout());
    }
    b.flush().await;
    let calls = server.script_calls() - before;
    // Each reader's last attempt (at its limit, at most) and its withdrawal.
    assert!(
        calls <= 2 * u64::try_from(n).unwrap(),
        "{calls} script calls while {n} readers gave up"
    );
    assert_eq!(server.cmd::<i64>("EXISTS", &[QUEUE, LEASES, WAITERS]), 0);
    holder.release().await.unwrap();
}

/// Review finding: a reader that queued while it could hear and then lost its channel (its
/// user's channel permission revoked, pub/sub reconnecting) kept its place and its hand-off
/// terms, since its deaf retries do not queue; cancelled then, it left them behind, and the
/// release handed the read side to nobody while the writer behind waited out the claim. A
/// reader's attempt that does not queue now leaves the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_can_no_longer_hear_leaves_the_queue() {
    let server = RedisServer::start();
    let a = settled_client(&server).await;
    let c = settled_client(&server).await;
    let acl = ["SETUSER", "deaf", "on", ">pw", "~*", "+@all", "allchannels"];
    let _: () = server.cmd("ACL", &acl);
    let url = format!("redis://deaf:pw@127.0.0.1:{}/", server.port());
    let b = Client::connect(&url).await.unwrap();
    // Its waiter lease is three re-checks (3 s): the entry must go at the first deaf retry, a
    // re-check after its last attempt, not when the lease lapses.
    let options = waiting(Duration::from_secs(2)).recheck(Duration::from_secs(1));
    let holder = a
        .rw_lock_with("doc", options.clone())
        .unwrap()
        .try_write()
        .await
        .unwrap();
    let reader = spawn_read(&b.rw_lock_with("doc", options.clone()).unwrap());
    queue_length_reaches(&server, QUEUE, 1).await;
    // Its subscription is dropped and cannot come back: its next re-check is deaf.
    let _: () = server.cmd("ACL", &["SETUSER", "deaf", "resetchannels"]);
    let left = timeout(Duration::from_secs(2), async {
        while server.cmd::<i64>("EXISTS", &[QUEUE, LEASES, WAITERS]) > 0 {
            sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(left.is_ok(), "the deaf reader kept its place in the queue");
    let writer = spawn_write(&c.rw_lock_with("doc", options).unwrap());
    queue_length_reaches(&server, QUEUE, 1).await;
    reader.abort();
    let _ = reader.await;
    b.flush().await;
    holder.release().await.unwrap();
    let handed: String = server.cmd("GET", &["doc"]);
    assert_ne!(handed, "dlock:read-mode", "handed to the deaf reader");
    granted(writer).await.release().await.unwrap();
}
