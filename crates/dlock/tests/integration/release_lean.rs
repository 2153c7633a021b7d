//! The lock's release script runs a lean path ahead of its preludes (`release_lean.lua`): it
//! must do exactly what `release.lua` does in the cases it takes, and leave every other case
//! to it. Checked differentially against the script without the lean path, on a real server:
//! every combination of lock state, queue state, quiet flag and releaser's inbox, compared by
//! reply, by every key left behind and by every message published.

use std::sync::LazyLock;

use dlock_test::RedisServer;
use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSub};
use redis::{Script, Value};

/// The release as dlock sends it (crates/dlock/src/scripts.rs).
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("../../src/scripts/release_lean.lua"),
        include_str!("../../src/scripts/grant.lua"),
        include_str!("../../src/scripts/handoff.lua"),
        include_str!("../../src/scripts/release.lua")
    ))
});
/// The same release without its lean path.
static GENERAL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("../../src/scripts/grant.lua"),
        include_str!("../../src/scripts/handoff.lua"),
        include_str!("../../src/scripts/release.lua")
    ))
});

const LOCK: &str = "lean";
const MINE: &str = "0123456789abcdef0123456789abcdef";
const WAITER: &str = "fedcba9876543210fedcba9876543210";
/// Published after each call: everything before it on the subscriber came from the call.
const MARKER: &str = "end-of-call";

fn keys() -> [String; 6] {
    let companion = |kind: &str| format!("{{{LOCK}}}:dlock:{kind}:{LOCK}");
    [
        LOCK.to_owned(),
        companion("info"),
        companion("fence"),
        companion("queue"),
        companion("queue-leases"),
        companion("waiters"),
    ]
}

fn channel() -> String {
    format!("{{{LOCK}}}:dlock:released:{LOCK}")
}

#[derive(Clone, Copy, Debug)]
enum LockState {
    Mine,
    Another,
    Free,
    AHash,
}

#[derive(Clone, Copy, Debug)]
enum QueueState {
    Empty,
    /// A live waiter that takes no hand-off (it is woken to retry).
    LiveWaiter,
    /// A waiter whose lease lapsed (purged by the release).
    LapsedWaiter,
    /// The queue's name holds a string.
    WrongType,
}

/// Sets the keys to `lock` and `queue`, from nothing; waiter leases count from `now_s` (the
/// server's clock at the test's start, so both scripts of a case see the same scores).
async fn prepare(con: &mut MultiplexedConnection, lock: LockState, queue: QueueState, now_s: u64) {
    let [lock_key, info, fence, list, leases, _] = keys();
    let _: () = redis::cmd("FLUSHALL").query_async(con).await.unwrap();
    let mut setup = redis::pipe();
    setup
        .hset_multiple(&info, &[("host", "h"), ("pid", "1"), ("fence", "7")])
        .pexpire(&info, 60_000)
        .set(&fence, "7");
    match lock {
        LockState::Mine => setup.set(&lock_key, MINE),
        LockState::Another => setup.set(&lock_key, "someone-else"),
        LockState::Free => &mut setup,
        LockState::AHash => setup.hset(&lock_key, "field", MINE),
    };
    match queue {
        QueueState::Empty => &mut setup,
        QueueState::LiveWaiter => {
            setup
                .rpush(&list, WAITER)
                .zadd(&leases, WAITER, (now_s + 600) * 1000)
        }
        QueueState::LapsedWaiter => {
            setup
                .rpush(&list, WAITER)
                .zadd(&leases, WAITER, (now_s - 60) * 1000)
        }
        QueueState::WrongType => setup.set(&list, "not a list"),
    };
    let _: () = setup.query_async(con).await.unwrap();
}

/// What a call did: its reply (an error only by kind: the line it names differs), and each
/// key's type, serialized value and whether it expires.
#[derive(Debug, PartialEq)]
struct Outcome {
    reply: Result<Value, String>,
    keys: Vec<(String, Option<Vec<u8>>, bool)>,
    messages: Vec<String>,
}

async fn run(
    script: &Script,
    con: &mut MultiplexedConnection,
    sub: &mut PubSub,
    tail: &[&str],
) -> Outcome {
    let mut call = script.prepare_invoke();
    for key in keys() {
        call.key(key);
    }
    call.arg(MINE).arg(channel()).arg(600_000).arg(tail);
    let reply = call
        .invoke_async::<Value>(con)
        .await
        .map_err(|e| e.code().unwrap_or("?").to_owned());
    let _: () = redis::cmd("PUBLISH")
        .arg(channel())
        .arg(MARKER)
        .query_async(con)
        .await
        .unwrap();
    let mut messages = Vec::new();
    let mut stream = sub.on_message();
    loop {
        let message: String = stream.next().await.unwrap().get_payload().unwrap();
        if message == MARKER {
            break;
        }
        messages.push(message);
    }
    drop(stream);
    let mut state = Vec::new();
    for key in keys() {
        let kind: String = redis::cmd("TYPE").arg(&key).query_async(con).await.unwrap();
        let dump: Option<Vec<u8>> = redis::cmd("DUMP").arg(&key).query_async(con).await.unwrap();
        let ttl: i64 = redis::cmd("PTTL").arg(&key).query_async(con).await.unwrap();
        state.push((kind, dump, ttl > 0));
    }
    Outcome {
        reply,
        keys: state,
        messages,
    }
}

/// Runs both scripts on the same state and checks they did the same; returns what they did.
async fn same_outcome(
    con: &mut MultiplexedConnection,
    sub: &mut PubSub,
    (lock, queue, now_s): (LockState, QueueState, u64),
    tail: &[&str],
) -> Outcome {
    prepare(con, lock, queue, now_s).await;
    let general = run(&GENERAL, con, sub, tail).await;
    prepare(con, lock, queue, now_s).await;
    let lean = run(&RELEASE, con, sub, tail).await;
    assert_eq!(
        lean, general,
        "{lock:?}, {queue:?}, arguments after the token and channel {tail:?}"
    );
    lean
}

#[tokio::test]
async fn the_lean_release_does_what_the_general_release_does_in_every_case() {
    let server = RedisServer::start();
    let client = redis::Client::open(server.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let mut sub = client.get_async_pubsub().await.unwrap();
    sub.subscribe(channel()).await.unwrap();
    let (now_s, _): (u64, u64) = redis::cmd("TIME").query_async(&mut con).await.unwrap();
    let locks = [
        LockState::Mine,
        LockState::Another,
        LockState::Free,
        LockState::AHash,
    ];
    let queues = [
        QueueState::Empty,
        QueueState::LiveWaiter,
        QueueState::LapsedWaiter,
        QueueState::WrongType,
    ];
    let inbox = "{inbox}:dlock:released:0123456789abcdef";
    let mut lean_cases = 0;
    for (lock, queue) in locks.into_iter().flat_map(|l| queues.map(|q| (l, q))) {
        for quiet in ["0", "1", "", "x"] {
            // The quiet flag alone, then with an inbox (empty or named), then malformed
            // counts: retention without the flag, and one value too many.
            let tails: [&[&str]; 5] = [
                &[quiet],
                &[quiet, ""],
                &[quiet, inbox],
                &[],
                &[quiet, inbox, "x"],
            ];
            for tail in tails {
                let outcome = same_outcome(&mut con, &mut sub, (lock, queue, now_s), tail).await;
                let lean = matches!((lock, queue), (LockState::Mine, QueueState::Empty));
                if lean && matches!(tail.len(), 1 | 2) {
                    lean_cases += 1;
                    assert_eq!(outcome.reply, Ok(Value::Array(vec![Value::Int(1)])));
                    assert_eq!(outcome.messages.len(), usize::from(quiet != "1"));
                    assert!(outcome.keys[..2].iter().all(|(_, dump, _)| dump.is_none()));
                }
            }
        }
    }
    // The lean path's cases were among them: 4 quiet flags, each without an inbox, with an
    // empty one and with a named one.
    assert_eq!(lean_cases, 12);
}
