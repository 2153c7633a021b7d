//! The grant prelude (`src/scripts/grant.lua`) writes fencing tokens and grant times as
//! digits taken from the server's TIME reply rather than formatted from a double: the digits
//! must be exactly the number, whatever the microseconds are (padding), in the counter, in the
//! holder info and in the reply. Called directly with a plain redis-rs connection.

use std::sync::LazyLock;

use dlock_test::RedisServer;
use redis::aio::MultiplexedConnection;
use redis::Script;

const GRANT: &str = include_str!("../../src/scripts/grant.lua");
static ACQUIRE_FREE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("../../src/scripts/grant.lua"),
        include_str!("../../src/scripts/acquire_free.lua")
    ))
});
static ACQUIRE_PROPOSED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("../../src/scripts/grant.lua"),
        include_str!("../../src/scripts/acquire_proposed.lua")
    ))
});
static FENCE_RAISE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../src/scripts/fence_raise.lua")));
/// Every Redlock write-back script: lock, read-write lock (with its prelude), semaphore,
/// reentrant lock. Each takes the counter as KEYS[1] and the token to raise it to as ARGV[1].
static WRITE_BACKS: LazyLock<[(&str, Script); 4]> = LazyLock::new(|| {
    [
        (
            "lock",
            Script::new(include_str!("../../src/scripts/fence_raise.lua")),
        ),
        (
            "read-write lock",
            Script::new(concat!(
                include_str!("../../src/scripts/rwlock/shared.lua"),
                include_str!("../../src/scripts/rwlock/fence_raise.lua")
            )),
        ),
        (
            "semaphore",
            Script::new(include_str!("../../src/scripts/semaphore/fence_raise.lua")),
        ),
        (
            "reentrant lock",
            Script::new(include_str!("../../src/scripts/reentrant_fence.lua")),
        ),
    ]
});

/// Fencing counters nobody should find, but Lua's tonumber takes some of them for numbers
/// (NaN, infinities) and the others for nothing.
const DAMAGED: [&str; 6] = ["nan", "inf", "-inf", "1e999", "abc", ""];

async fn connection(server: &RedisServer) -> MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Runs `body` after the grant prelude, as one script.
async fn with_prelude<T: redis::FromRedisValue>(con: &mut MultiplexedConnection, body: &str) -> T {
    Script::new(&format!("{GRANT}\n{body}"))
        .invoke_async(con)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_time_reply_becomes_its_microseconds_in_digits_whatever_their_padding() {
    let server = RedisServer::start();
    let mut con = connection(&server).await;
    let digits: Vec<String> = with_prelude(
        &mut con,
        "local out = {}
         for _, us in ipairs({'0', '5', '5023', '99999', '100000', '999999'}) do
           table.insert(out, clock_digits({'1796307650', us}))
         end
         return out",
    )
    .await;
    assert_eq!(
        digits,
        [
            "1796307650000000",
            "1796307650000005",
            "1796307650005023",
            "1796307650099999",
            "1796307650100000",
            "1796307650999999"
        ]
    );
}

#[tokio::test]
async fn the_clocks_digits_match_the_formatted_number_for_thousands_of_readings() {
    let server = RedisServer::start();
    let mut con = connection(&server).await;
    // Each call reads the clock 2,000 times and answers the readings whose digits differ
    // from '%.0f' of the number (microseconds and milliseconds), then one reading's pair as a
    // check that the comparison ran. The other branch (a number that is not the last reading)
    // formats, also checked.
    let body = "local wrong = {}
        local us
        for _ = 1, 2000 do
          us = server_now_us()
          if us_text(us) ~= string.format('%.0f', us)
             or ms_text(us) ~= string.format('%.0f', math.floor(us / 1000)) then
            table.insert(wrong, us_text(us))
          end
        end
        if us_text(us + 1) ~= string.format('%.0f', us + 1)
           or ms_text(us + 1000) ~= string.format('%.0f', math.floor((us + 1000) / 1000)) then
          table.insert(wrong, 'formatted')
        end
        return {wrong, us_text(us), ms_text(us)}";
    for _ in 0..20 {
        let (wrong, us, ms): (Vec<String>, String, String) = with_prelude(&mut con, body).await;
        assert!(wrong.is_empty(), "digits that differ: {wrong:?}");
        assert_eq!(us.len(), 16, "{us}");
        assert_eq!(ms, us[..13]);
    }
}

/// The server's clock in microseconds.
async fn server_us(con: &mut MultiplexedConnection) -> u64 {
    let (s, us): (u64, u64) = redis::cmd("TIME").query_async(con).await.unwrap();
    s * 1_000_000 + us
}

/// The keys of the lock the grant tests take.
const LOCK: &str = "grant";
const INFO: &str = "{grant}:dlock:info:grant";
const FENCE: &str = "{grant}:dlock:fence:grant";

async fn set(con: &mut MultiplexedConnection, key: &str, value: impl redis::ToRedisArgs) {
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query_async(con)
        .await
        .unwrap();
}

async fn get(con: &mut MultiplexedConnection, key: &str) -> String {
    redis::cmd("GET").arg(key).query_async(con).await.unwrap()
}

async fn free_lock(con: &mut MultiplexedConnection) {
    let _: () = redis::cmd("DEL").arg(LOCK).query_async(con).await.unwrap();
}

/// The values after the keys of an acquire (acquire_free.lua) by the `i`th token.
fn acquire(script: &Script, i: usize) -> redis::ScriptInvocation<'_> {
    let mut call = script.key(LOCK);
    call.key(INFO)
        .key(FENCE)
        .arg(format!("{i:032x}"))
        .arg(60_000)
        .arg(600_000);
    call.arg("host").arg("1").arg("");
    call
}

/// `acquire_free.lua` by the `i`th token: (1 if granted, its fencing token).
async fn acquire_free(con: &mut MultiplexedConnection, i: usize) -> (i64, u64) {
    acquire(&ACQUIRE_FREE, i).invoke_async(con).await.unwrap()
}

#[tokio::test]
async fn every_grant_stores_and_answers_the_same_fencing_token_and_its_time() {
    let server = RedisServer::start();
    let mut con = connection(&server).await;
    let (mut counter, mut from_clock) = (0, 0);
    for i in 0..500 {
        // Every tenth grant finds the counter an hour ahead of the clock: its token is the
        // counter plus one, formatted rather than taken from the clock's digits. The grant
        // after it finds the counter set back behind the clock again.
        let now = server_us(&mut con).await;
        if i % 10 == 9 {
            counter = now + 3_600_000_000;
            set(&mut con, FENCE, counter).await;
        } else if i % 10 == 0 && i > 0 {
            counter = now - 1_000;
            set(&mut con, FENCE, counter).await;
        }
        let before = server_us(&mut con).await;
        let (granted, issued) = acquire_free(&mut con, i).await;
        let after = server_us(&mut con).await;
        assert_eq!(granted, 1);
        // One above the counter, or the clock's reading during the call if that is more.
        if counter + 1 > after {
            assert_eq!(issued, counter + 1);
        } else {
            let lowest = before.max(counter + 1);
            assert!(
                (lowest..=after).contains(&issued),
                "{issued}: {lowest} to {after}"
            );
            from_clock += usize::from(counter < before);
        }
        counter = issued;
        let stored = get(&mut con, FENCE).await;
        let (held, since_ms): (String, u64) = redis::cmd("HMGET")
            .arg(INFO)
            .arg("fence")
            .arg("since_ms")
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(stored, issued.to_string());
        assert_eq!(held, issued.to_string());
        assert!(
            (before / 1000..=after / 1000).contains(&since_ms),
            "{since_ms} for {issued}"
        );
        free_lock(&mut con).await;
    }
    // Most grants took the clock's reading (the others: the counter an hour ahead, or a clock
    // that had not passed the previous grant's token).
    assert!(from_clock >= 250, "{from_clock} of 500 from the clock");
}

#[tokio::test]
async fn a_damaged_counter_restarts_tokens_from_the_clock_and_is_overwritten() {
    let server = RedisServer::start();
    let mut con = connection(&server).await;
    for (i, damage) in DAMAGED.into_iter().enumerate() {
        set(&mut con, FENCE, damage).await;
        let before = server_us(&mut con).await;
        let (granted, issued) = acquire_free(&mut con, i).await;
        let after = server_us(&mut con).await;
        assert_eq!(granted, 1, "{damage:?}");
        assert!((before..=after).contains(&issued), "{damage:?}: {issued}");
        let stored = get(&mut con, FENCE).await;
        assert_eq!(stored, issued.to_string(), "{damage:?}");
        free_lock(&mut con).await;
    }
}

#[tokio::test]
async fn a_damaged_counter_takes_a_proposal_and_a_write_back_and_is_overwritten() {
    let server = RedisServer::start();
    let mut con = connection(&server).await;
    for (i, damage) in DAMAGED.into_iter().enumerate() {
        let proposal = server_us(&mut con).await.to_string();
        set(&mut con, FENCE, damage).await;
        let (granted, issued): (i64, String) = acquire(&ACQUIRE_PROPOSED, i)
            .arg(&proposal)
            .invoke_async(&mut con)
            .await
            .unwrap();
        assert_eq!((granted, &issued), (1, &proposal), "{damage:?}");
        let stored = get(&mut con, FENCE).await;
        assert_eq!(stored, proposal, "{damage:?}");
        // A Redlock write-back onto a damaged counter raises it too.
        set(&mut con, FENCE, damage).await;
        let raised = server_us(&mut con).await.to_string();
        let _: i64 = FENCE_RAISE
            .key(FENCE)
            .key(INFO)
            .key(LOCK)
            .arg(&raised)
            .arg(600_000)
            .arg(format!("{i:032x}"))
            .invoke_async(&mut con)
            .await
            .unwrap();
        let stored = get(&mut con, FENCE).await;
        let kept = matches!(damage, "inf" | "1e999");
        // An infinite counter stays (nothing is above it), and the next grant overwrites it.
        assert_eq!(stored, if kept { damage } else { &raised }, "{damage:?}");
        free_lock(&mut con).await;
    }
}

#[tokio::test]
async fn every_write_back_raises_a_damaged_counter_instead_of_failing() {
    let server = RedisServer::start();
    let mut con = connection(&server).await;
    let fence = "{wb}:dlock:fence:wb";
    for (primitive, script) in WRITE_BACKS.iter() {
        for damage in DAMAGED {
            set(&mut con, fence, damage).await;
            let token = server_us(&mut con).await.to_string();
            // The other keys name nothing held: the write-back answers 0 (not ours) after
            // raising the counter.
            let answer: i64 = script
                .key(fence)
                .key("{wb}:dlock:other:wb")
                .key("wb")
                .key("{wb}:dlock:holds:wb")
                .arg(&token)
                .arg(600_000)
                .arg("owner")
                .arg("acquisition")
                .invoke_async(&mut con)
                .await
                .unwrap_or_else(|e| panic!("{primitive}, counter {damage:?}: {e}"));
            assert_eq!(answer, 0, "{primitive}, counter {damage:?}");
            let stored = get(&mut con, fence).await;
            let kept = matches!(damage, "inf" | "1e999");
            assert_eq!(
                stored,
                if kept { damage } else { &token },
                "{primitive}, {damage:?}"
            );
        }
    }
}
