//! Read-write locks on Redlock: readers share a majority, writers exclude them, a waiting
//! writer holds new readers back across its attempts (each with a token of its own) and leaves
//! no queue place behind, a crashed reader frees writers within one TTL, and a reader's
//! fencing token sits between the last write's and the next one's.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dlock::{Client, ClientOptions, LockOptions, Wait};
use dlock_test::RedisServers;
use tokio::time::{sleep, Instant};

const NAME: &str = "rw";
const QUEUE: &str = "{rw}:dlock:rw-queue:rw";
const COUNTER: &str = "{rw}:dlock:fence:rw";

async fn redlock(servers: &RedisServers) -> Client {
    let options = ClientOptions::new()
        .command_timeout(Duration::from_millis(300))
        .connect_timeout(Duration::from_secs(1));
    Client::redlock_with(&servers.urls(), options)
        .await
        .unwrap()
}

fn waiting(limit: Duration) -> LockOptions {
    LockOptions::new().wait(Wait::Limit(limit))
}

#[tokio::test]
async fn readers_share_a_majority_and_a_writer_excludes_them() {
    let servers = RedisServers::start(3);
    let (a, b) = (redlock(&servers).await, redlock(&servers).await);
    let (ra, rb) = (a.rw_lock(NAME).unwrap(), b.rw_lock(NAME).unwrap());
    let first = ra.try_read().await.unwrap();
    let second = rb.try_read().await.unwrap();
    assert!(rb.try_write().await.unwrap_err().is_conflict());
    first.release().await.unwrap();
    second.release().await.unwrap();

    let writer = rb.try_write().await.unwrap();
    assert!(ra.try_read().await.unwrap_err().is_conflict());
    assert!(ra.try_write().await.unwrap_err().is_conflict());
    let written = writer.fencing_token();
    writer.release().await.unwrap();

    let reader = ra.try_read().await.unwrap();
    let read = reader.fencing_token();
    assert!(
        read >= written,
        "a reader's token is at least the last write's: {read} < {written}"
    );
    reader.release().await.unwrap();
    let next = ra.try_write().await.unwrap();
    assert!(next.fencing_token() > read);
    next.release().await.unwrap();
}

/// A write grant rolled back on one master leaves that master's counter above the others'.
/// A reader whose majority includes it carries that counter as its token; a later writer whose
/// majority misses it must still get a larger token, so the reader writes its token back to
/// its majority. Without that, the writer here got a token below the reader's.
#[tokio::test]
async fn a_readers_token_stays_below_every_later_writes() {
    let mut servers = RedisServers::start(3);
    let c = redlock(&servers).await;
    let rw = c.rw_lock(NAME).unwrap();
    let warm = rw.try_write().await.unwrap();
    let written = warm.fencing_token();
    warm.release().await.unwrap();
    // Master 0's counter alone far ahead (as a rolled-back write grant leaves it).
    let ahead = (written + 1_000_000_000).to_string();
    let _: () = servers[0].cmd("SET", &[COUNTER, &ahead]);
    // The reader's majority is masters 0 and 1: master 2 answers late.
    servers[2].client_pause(Duration::from_millis(150));
    let reader = rw.try_read().await.unwrap();
    let read = reader.fencing_token();
    assert_eq!(read.to_string(), ahead);
    reader.release().await.unwrap();
    sleep(Duration::from_millis(150)).await;

    // The next writer's majority misses master 0.
    servers[0].kill();
    let writer = rw.try_write().await.unwrap();
    assert!(
        writer.fencing_token() > read,
        "a write after a read has a larger token: {} <= {read}",
        writer.fencing_token()
    );
    writer.release().await.unwrap();
}

/// Readers keep the lock busy without a gap. A writer that starts waiting holds new readers
/// back on every master (each of its attempts has a token of its own, but it keeps one place
/// in the queue) and is granted once the readers inside leave: well within two seconds here
/// (each reader stays 30 ms), however long the stream lasts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_readers_does_not_starve_a_writer() {
    let servers = RedisServers::start(3);
    let c = redlock(&servers).await;
    let rw = c
        .rw_lock_with(NAME, waiting(Duration::from_secs(20)))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicUsize::new(0));
    let mut streams = Vec::new();
    for start in 0..3u64 {
        let (rw, stop, refused) = (rw.clone(), stop.clone(), refused.clone());
        streams.push(tokio::spawn(async move {
            sleep(Duration::from_millis(10 * start)).await;
            while !stop.load(Ordering::SeqCst) {
                match rw.try_read().await {
                    Ok(guard) => {
                        sleep(Duration::from_millis(30)).await;
                        guard.release().await.unwrap();
                    }
                    Err(e) if e.is_conflict() || e.is_unavailable() => {
                        refused.fetch_add(1, Ordering::SeqCst);
                        sleep(Duration::from_millis(1)).await;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }));
    }
    sleep(Duration::from_millis(300)).await;
    // One more reader, inside for the writer's first 100 ms: the writer cannot slip into a
    // gap between the streams' readers (on three masters one may open), it must queue.
    let inside = rw.try_read().await.unwrap();
    let leave = tokio::spawn(async move {
        sleep(Duration::from_millis(100)).await;
        inside.release().await.unwrap();
    });
    let asked = Instant::now();
    let writer = rw.write().await.unwrap();
    let waited = asked.elapsed();
    leave.await.unwrap();
    assert!(
        refused.load(Ordering::SeqCst) > 0,
        "no reader was held back by the writer"
    );
    assert!(
        waited < Duration::from_secs(2),
        "the writer waited {waited:?} behind readers that stay 30 ms each"
    );
    writer.release().await.unwrap();
    stop.store(true, Ordering::SeqCst);
    for stream in streams {
        stream.await.unwrap();
    }
    // Its attempts queued under one id, withdrawn once it was granted: nothing of the writer
    // is left to hold readers back (one entry per attempt would stay until its waiter lease
    // ran out).
    c.flush().await;
    for (i, server) in servers.iter().enumerate() {
        assert_eq!(
            server.cmd::<i64>("LLEN", &[QUEUE]),
            0,
            "master {i} still queues the writer that was granted"
        );
    }
    rw.try_read().await.unwrap().release().await.unwrap();
}

/// A writer that stops waiting (its future dropped) leaves no place in any master's queue:
/// readers get in at once, not after its waiter lease ends (six seconds by default).
#[tokio::test]
async fn a_cancelled_writer_leaves_no_place_in_the_queue() {
    let servers = RedisServers::start(3);
    let (a, b) = (redlock(&servers).await, redlock(&servers).await);
    let reader = a.rw_lock(NAME).unwrap().try_read().await.unwrap();
    let writer = b
        .rw_lock_with(NAME, waiting(Duration::from_secs(20)))
        .unwrap();
    let waiting_writer = tokio::spawn(async move { writer.write().await });
    // On a majority: the reader's grant may have reached only two masters (a write abandoned
    // once a majority answered), and on the third the writer's attempt is granted and undone.
    let queued = || {
        servers
            .iter()
            .filter(|s| s.cmd::<i64>("LLEN", &[QUEUE]) > 0)
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while queued() < 2 {
        assert!(
            Instant::now() < deadline,
            "the writer never queued on a majority"
        );
        sleep(Duration::from_millis(5)).await;
    }
    assert!(a
        .rw_lock(NAME)
        .unwrap()
        .try_read()
        .await
        .unwrap_err()
        .is_conflict());
    waiting_writer.abort();
    assert!(waiting_writer.await.unwrap_err().is_cancelled());
    b.flush().await;
    for (i, server) in servers.iter().enumerate() {
        assert_eq!(
            server.cmd::<i64>("LLEN", &[QUEUE]),
            0,
            "master {i} still queues the writer that stopped waiting"
        );
    }
    let another = a.rw_lock(NAME).unwrap().try_read().await.unwrap();
    another.release().await.unwrap();
    reader.release().await.unwrap();
}

/// A reader that vanishes without releasing (its process crashed: no release, no renewal)
/// keeps a waiting writer out for at most its TTL, judged by each master's clock.
#[tokio::test]
async fn a_crashed_reader_frees_writers_within_one_ttl() {
    let servers = RedisServers::start(3);
    let (a, b) = (redlock(&servers).await, redlock(&servers).await);
    let ttl = Duration::from_secs(1);
    let crashed = a
        .rw_lock_with(NAME, LockOptions::new().ttl(ttl).renew(false))
        .unwrap()
        .try_read()
        .await
        .unwrap();
    let taken = Instant::now();
    std::mem::forget(crashed);
    let writer = b
        .rw_lock_with(NAME, waiting(Duration::from_secs(10)))
        .unwrap()
        .write()
        .await
        .unwrap();
    let waited = taken.elapsed();
    assert!(
        waited >= ttl - Duration::from_millis(50),
        "granted {waited:?} into a {ttl:?} read lease"
    );
    assert!(
        waited < ttl + Duration::from_millis(700),
        "the writer waited {waited:?} for a reader whose lease was {ttl:?}"
    );
    writer.release().await.unwrap();
}

/// Readers and writers of several clients, with one master of five dead and one frozen: a
/// writer is never inside with anyone, readers share, and write tokens only grow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_exclude_everyone_with_a_master_dead_and_one_frozen() {
    let mut servers = RedisServers::start(5);
    servers[3].kill();
    servers[4].pause();
    let writers = Arc::new(AtomicUsize::new(0));
    let readers = Arc::new(AtomicUsize::new(0));
    let most_readers = Arc::new(AtomicUsize::new(0));
    let fences = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for task in 0..4 {
        let client = redlock(&servers).await;
        let (writers, readers) = (writers.clone(), readers.clone());
        let (most_readers, fences) = (most_readers.clone(), fences.clone());
        tasks.push(tokio::spawn(async move {
            let options = waiting(Duration::from_secs(30)).ttl(Duration::from_secs(5));
            let rw = client.rw_lock_with(NAME, options).unwrap();
            for round in 0..4 {
                if (task + round) % 2 == 0 {
                    let guard = rw.write().await.unwrap();
                    assert_eq!(writers.fetch_add(1, Ordering::SeqCst), 0, "two writers");
                    assert_eq!(readers.load(Ordering::SeqCst), 0, "a writer with readers");
                    fences.lock().unwrap().push(guard.fencing_token());
                    sleep(Duration::from_millis(5)).await;
                    writers.fetch_sub(1, Ordering::SeqCst);
                    guard.release().await.unwrap();
                } else {
                    let guard = rw.read().await.unwrap();
                    let inside = readers.fetch_add(1, Ordering::SeqCst) + 1;
                    most_readers.fetch_max(inside, Ordering::SeqCst);
                    assert_eq!(writers.load(Ordering::SeqCst), 0, "a reader with a writer");
                    sleep(Duration::from_millis(20)).await;
                    readers.fetch_sub(1, Ordering::SeqCst);
                    guard.release().await.unwrap();
                }
            }
            client.flush().await;
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let fences = fences.lock().unwrap().clone();
    assert_eq!(fences.len(), 8);
    assert!(
        fences.windows(2).all(|w| w[0] < w[1]),
        "write tokens in grant order: {fences:?}"
    );
    servers[4].resume();
    for server in servers.iter().take(3) {
        assert_eq!(server.cmd::<i64>("EXISTS", &[NAME]), 0);
        assert_eq!(server.cmd::<i64>("LLEN", &[QUEUE]), 0);
    }
}

/// A writer waiting behind readers sleeps until woken: neither its own rollback (on the
/// master where the readers are missing, its grant is undone quietly) nor the readers' holder
/// info, which differs from master to master, sets it polling (the readers are one holder,
/// not a split vote among waiters).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_behind_readers_on_a_bare_majority_does_not_spin() {
    let mut servers = RedisServers::start(3);
    let holder = redlock(&servers).await;
    // Read on exactly two masters: granted with the third down, which comes back empty.
    servers[2].kill();
    let reader = holder.rw_lock(NAME).unwrap().try_read().await.unwrap();
    servers[2].restart_empty();
    let waiter = redlock(&servers).await;
    let slow = waiting(Duration::from_secs(3)).recheck(Duration::from_secs(20));
    let calls = |servers: &RedisServers| servers[0].script_calls();
    let before = calls(&servers);
    let waited = waiter.rw_lock_with(NAME, slow).unwrap().write().await;
    assert!(waited.unwrap_err().is_timeout());
    let spent = calls(&servers) - before;
    assert!(
        spent < 15,
        "{spent} script calls on one master in a 3 s wait: a spin"
    );
    reader.release().await.unwrap();
}

/// A reader held back by a queued writer whose process died (its place stays until its waiter
/// lease ends) sleeps until then: the masters answer busy without naming a holder (the lock is
/// free), which is one holder's place, not a split vote among waiters. Found by review: the
/// reader retried every 10-60 ms for the whole waiter lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_behind_a_dead_writers_queue_place_does_not_spin() {
    let servers = RedisServers::start(3);
    let c = redlock(&servers).await;
    let reader = c.rw_lock(NAME).unwrap().try_read().await.unwrap();
    // A writer queues on every master from a runtime of its own, which then vanishes with it
    // (as in a crashed process: no withdrawal). Its place lasts 3 × its 500 ms re-check.
    let urls = servers.urls();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let options = ClientOptions::new().command_timeout(Duration::from_millis(300));
            let client = Client::redlock_with(&urls, options).await.unwrap();
            let writer = client
                .rw_lock_with(
                    NAME,
                    waiting(Duration::from_secs(30)).recheck(Duration::from_millis(500)),
                )
                .unwrap();
            // Polled until it queued, then never dropped: nothing withdraws its place.
            let mut write = Box::pin(writer.write());
            let _ = tokio::time::timeout(Duration::from_millis(300), &mut write).await;
            std::mem::forget(write);
            std::mem::forget(client);
        });
        runtime.shutdown_background();
    })
    .join()
    .unwrap();
    // Queued on a majority at least: the reader's write to the third master may have been
    // abandoned once a majority answered, and there the writer's attempt was granted and
    // undone instead (seen in CI's Valkey pass).
    let queued = servers
        .iter()
        .filter(|s| s.cmd::<i64>("LLEN", &[QUEUE]) > 0)
        .count();
    assert!(queued >= 2, "the writer queued on {queued} masters of 3");
    reader.release().await.unwrap();

    let calls = || servers[0].script_calls();
    let before = calls();
    let slow = waiting(Duration::from_secs(5)).recheck(Duration::from_secs(20));
    let next = c.rw_lock_with(NAME, slow).unwrap().read().await.unwrap();
    let spent = calls() - before;
    assert!(
        spent < 10,
        "{spent} script calls on one master while a dead writer's place held the lock back"
    );
    next.release().await.unwrap();
}

/// The reader's write-back (`rwlock/fence_raise.lua`, called directly) counts only where the
/// reader still holds: the name in read mode and the reader's lease running. A reader entry
/// left in the zset after the name was freed (a forced release) and taken by a writer, or one
/// whose lease ended, must not confirm it: it always raises the counter, though.
#[tokio::test]
async fn a_readers_write_back_counts_only_where_it_still_reads() {
    let server = dlock_test::RedisServer::start();
    let script = redis::Script::new(concat!(
        include_str!("../../src/scripts/rwlock/shared.lua"),
        include_str!("../../src/scripts/rwlock/fence_raise.lua")
    ));
    let readers = "{rw}:dlock:readers:rw";
    let mut con = server.connection();
    let now_ms: Vec<String> = redis::cmd("TIME").query(&mut con).unwrap();
    let now_ms = now_ms[0].parse::<u64>().unwrap() * 1000;
    let write_back = |con: &mut redis::Connection, fence: u64| -> i64 {
        script
            .key(COUNTER)
            .key(readers)
            .key(NAME)
            .arg(fence)
            .arg(60_000)
            .arg("reader")
            .invoke(con)
            .unwrap()
    };
    let lease_end = (now_ms + 60_000).to_string();
    let _: () = server.cmd("SET", &[NAME, "dlock:read-mode"]);
    let _: () = server.cmd("ZADD", &[readers, &lease_end, "reader"]);
    assert_eq!(write_back(&mut con, 10), 1, "a live reader");
    assert_eq!(server.cmd::<String>("GET", &[COUNTER]), "10");

    let _: () = server.cmd("SET", &[NAME, "a-writers-token"]);
    assert_eq!(write_back(&mut con, 11), 0, "the name is a writer's");
    assert_eq!(server.cmd::<String>("GET", &[COUNTER]), "11");

    let _: () = server.cmd("SET", &[NAME, "dlock:read-mode"]);
    let _: () = server.cmd("ZADD", &[readers, "1", "reader"]);
    assert_eq!(write_back(&mut con, 12), 0, "the reader's lease ended");
}

/// A read grant needs only a majority: a master's write may have been abandoned (on a fresh
/// server, between `NOSCRIPT` and the script's load), and then it never comes. Give the `n`
/// readers of `name` a moment, then copy the read mode from a master that has them all, as it
/// would have landed (CI: `list` read a master that had one reader of two).
async fn readers_on_every_master(servers: &RedisServers, name: &str, n: i64) {
    let readers = format!("{{{name}}}:dlock:readers:{name}");
    let counts = || -> Vec<i64> {
        (0..3)
            .map(|i| servers[i].cmd("ZCARD", &[&readers]))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_millis(500);
    while counts().iter().any(|&c| c < n) && Instant::now() < deadline {
        sleep(Duration::from_millis(5)).await;
    }
    let counts = counts();
    let from = counts.iter().position(|&c| c == n).unwrap();
    let pattern = format!("{{{name}}}:*");
    for (to, _) in counts.iter().enumerate().filter(|(_, &c)| c < n) {
        let keys: Vec<String> = servers[from].cmd("KEYS", &[&pattern]);
        let mut source = servers[from].connection();
        let mut target = servers[to].connection();
        for key in keys.iter().filter(|k| !k.contains(":fence:")) {
            let dump: Vec<u8> = redis::cmd("DUMP").arg(key).query(&mut source).unwrap();
            let ttl: i64 = redis::cmd("PTTL").arg(key).query(&mut source).unwrap();
            let () = redis::cmd("RESTORE")
                .arg(key)
                .arg(ttl.max(0))
                .arg(dump)
                .arg("REPLACE")
                .query(&mut target)
                .unwrap();
        }
    }
}

/// `list` on Redlock shows every primitive a majority holds: a read-write lock in read mode
/// (with its readers), one in write mode, and a reentrant lock.
#[tokio::test]
async fn list_shows_read_write_and_reentrant_locks_a_majority_holds() {
    let servers = RedisServers::start(3);
    let c = redlock(&servers).await;
    let shared = c.rw_lock("jobs:shared").unwrap();
    let (r1, r2) = (
        shared.try_read().await.unwrap(),
        shared.try_read().await.unwrap(),
    );
    let written = c
        .rw_lock("jobs:written")
        .unwrap()
        .try_write()
        .await
        .unwrap();
    let owner = dlock::Owner::new().unwrap();
    let nested = c
        .reentrant_lock("jobs:nested")
        .unwrap()
        .try_lock(&owner)
        .await
        .unwrap();
    readers_on_every_master(&servers, "jobs:shared", 2).await;
    let listed = c.list("jobs:*").await.unwrap();
    let keys: Vec<&str> = listed.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(keys, ["jobs:nested", "jobs:shared", "jobs:written"]);
    let readers = listed[1].holder.as_ref().map(|h| h.readers);
    assert_eq!(readers, Some(2), "{:?}", listed[1]);
    assert_eq!(
        listed[2].holder.as_ref().map(|h| h.fencing_token),
        Some(written.fencing_token())
    );
    for guard in [r1, r2] {
        guard.release().await.unwrap();
    }
    written.release().await.unwrap();
    nested.release().await.unwrap();
}

/// Script calls each master has run (EVALSHA, and EVAL should the script cache be cold).
fn script_calls(servers: &RedisServers) -> Vec<u64> {
    servers.iter().map(|s| s.script_calls()).collect()
}

/// Waits until no master's script count moves for 300 ms (late calls of a grant or release
/// that returned once a majority answered).
async fn quiet(servers: &RedisServers) -> Vec<u64> {
    let mut last = script_calls(servers);
    loop {
        sleep(Duration::from_millis(300)).await;
        let now = script_calls(servers);
        if now == last {
            return now;
        }
        last = now;
    }
}

/// A writer proposes its fencing token: one script call per master, no write-back round trip,
/// and the same token on every master.
#[tokio::test]
async fn a_write_grant_is_one_script_call_per_master() {
    let servers = RedisServers::start(3);
    let c = redlock(&servers).await;
    let rw = c.rw_lock(NAME).unwrap();
    // Warm up until every master has run the acquire script (a call dropped once a majority
    // answered may never reach a master, nor load the script there).
    let warm = Instant::now() + Duration::from_secs(5);
    while servers
        .iter()
        .any(|s| s.cmd::<i64>("EXISTS", &[COUNTER]) == 0)
        && Instant::now() < warm
    {
        rw.try_write().await.unwrap().release().await.unwrap();
    }
    c.flush().await;
    let before = quiet(&servers).await;
    let writer = rw.try_write().await.unwrap();
    let after = quiet(&servers).await;
    let calls: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(
        calls,
        [1, 1, 1],
        "script calls per master for one write grant"
    );
    let info = "{rw}:dlock:info:rw";
    for server in servers.iter() {
        assert_eq!(
            server.cmd::<Option<String>>("HGET", &[info, "fence"]),
            Some(writer.fencing_token().to_string())
        );
    }
    writer.release().await.unwrap();
}
