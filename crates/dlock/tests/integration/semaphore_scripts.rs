//! The counting semaphore's Lua scripts (`src/scripts/semaphore/`), called directly with a
//! plain redis-rs connection against a real server: limits, per-permit leases on the server's
//! clock, the fair queue and its wake-ups, fencing tokens, inspection and cleanup.

use std::sync::LazyLock;
use std::time::Duration;

use dlock_test::RedisServer;
use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSub};
use redis::{from_redis_value_ref, Script, Value};
use serde_json::Value as Json;
use tokio::time::{sleep, timeout, Instant};

static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("../../src/scripts/grant.lua"),
        include_str!("../../src/scripts/handoff.lua"),
        include_str!("../../src/scripts/semaphore/queue.lua"),
        include_str!("../../src/scripts/semaphore/acquire.lua")
    ))
});
static RENEW: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../src/scripts/semaphore/renew.lua")));
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("../../src/scripts/grant.lua"),
        include_str!("../../src/scripts/handoff.lua"),
        include_str!("../../src/scripts/semaphore/queue.lua"),
        include_str!("../../src/scripts/semaphore/release.lua")
    ))
});
static VERIFY: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../src/scripts/semaphore/verify.lua")));
static INSPECT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../src/scripts/semaphore/inspect.lua")));
static SET_LIMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("../../src/scripts/grant.lua"),
        include_str!("../../src/scripts/handoff.lua"),
        include_str!("../../src/scripts/semaphore/queue.lua"),
        include_str!("../../src/scripts/semaphore/set_limit.lua")
    ))
});
static FENCE_RAISE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../src/scripts/semaphore/fence_raise.lua")));

/// A lease no test outlives.
const LONG_MS: u64 = 60_000;
/// A lease that outlasts any few steps of a test, yet ends well before `LONG_MS`.
const MID_MS: u64 = 5_000;
/// A lease that ends within the test (waited for on the server's clock, never guessed).
const SHORT_MS: u64 = 50;
/// Fencing counter retention.
const RETENTION_MS: u64 = 600_000;
/// Acquire modes: not fair, without queueing; fair, without queueing (try_acquire); a
/// positive mode is fair, queued with that waiter lease (ARGV 9 and 11).
const NOT_FAIR: i64 = -1;
const TRY_FAIR: i64 = 0;
const HOST: &str = "host-α";
const PID: &str = "4242";

/// A holder token: 32 hex digits, as the library makes them, told apart by their first 16
/// (the waiter id a wake-up names).
fn token(i: u32) -> String {
    format!("{i:016x}{i:016x}")
}

/// The waiter id a wake-up for `token` names: its first 16 hex digits.
fn id(token: &str) -> &str {
    &token[..16]
}

/// One acquire request (ARGV 2, 3, 4, 8, 9).
#[derive(Debug, Clone, Copy)]
struct Ask {
    n: u32,
    limit: u32,
    ttl_ms: u64,
    mode: i64,
    label: &'static str,
    /// The claim lease of a hand-off this waiter takes (ARGV 12; 0: none, it is woken).
    claim_ms: u64,
}

/// `n` permits of a semaphore of `limit`, not fair, on a long lease.
fn ask(n: u32, limit: u32) -> Ask {
    Ask {
        n,
        limit,
        ttl_ms: LONG_MS,
        mode: NOT_FAIR,
        label: "worker",
        claim_ms: 0,
    }
}

impl Ask {
    fn ttl(self, ttl_ms: u64) -> Ask {
        Ask { ttl_ms, ..self }
    }
    /// Fair, queueing with a waiter lease of `lease_ms`.
    fn fair(self, lease_ms: i64) -> Ask {
        Ask {
            mode: lease_ms,
            ..self
        }
    }
    /// Fair, without queueing (try_acquire).
    fn try_fair(self) -> Ask {
        Ask {
            mode: TRY_FAIR,
            ..self
        }
    }
    fn label(self, label: &'static str) -> Ask {
        Ask { label, ..self }
    }
    /// Queued (not fair) with a waiter lease of `lease_ms`, taking hand-offs for `claim_ms`.
    fn handoff(self, lease_ms: i64, claim_ms: u64) -> Ask {
        Ask {
            mode: lease_ms,
            claim_ms,
            ..self
        }
    }
}

/// acquire.lua's answer.
#[derive(Debug)]
enum Reply {
    Granted(u64),
    Mismatch(i64),
    Busy(Busy),
}

#[derive(Debug)]
struct Busy {
    earliest_ms: i64,
    holders: Vec<Json>,
    now_ms: i64,
    ahead_ms: i64,
    limit: i64,
}

impl Reply {
    #[track_caller]
    fn fence(&self) -> u64 {
        match self {
            Reply::Granted(fence) => *fence,
            other => panic!("expected a grant, got {other:?}"),
        }
    }
    #[track_caller]
    fn busy(self) -> Busy {
        match self {
            Reply::Busy(busy) => busy,
            other => panic!("expected busy, got {other:?}"),
        }
    }
}

/// inspect.lua's answer.
#[derive(Debug)]
struct Inspect {
    limit: i64,
    now_ms: i64,
    counter: Option<String>,
    holders: Vec<Json>,
    freed: i64,
}

/// One semaphore's keys (named as the library will), and a connection to its server.
struct Sem {
    holders: String,
    sem: String,
    fence: String,
    queue: String,
    leases: String,
    waiters: String,
    channel: String,
    con: MultiplexedConnection,
}

impl Sem {
    async fn open(server: &RedisServer, name: &str) -> Sem {
        let con = redis::Client::open(server.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let companion = |kind: &str| format!("{{{name}}}:dlock:{kind}:{name}");
        Sem {
            holders: name.to_owned(),
            sem: companion("sem"),
            fence: companion("fence"),
            queue: companion("queue"),
            leases: companion("queue-leases"),
            waiters: companion("waiters"),
            channel: companion("released"),
            con,
        }
    }

    async fn try_acquire(&self, token: &str, ask: Ask) -> redis::RedisResult<Reply> {
        let reply: Vec<Value> = ACQUIRE
            .key(&self.holders)
            .key(&self.sem)
            .key(&self.fence)
            .key(&self.queue)
            .key(&self.leases)
            .key(&self.waiters)
            .arg(token)
            .arg(ask.n)
            .arg(ask.limit)
            .arg(ask.ttl_ms)
            .arg(RETENTION_MS)
            .arg(HOST)
            .arg(PID)
            .arg(ask.label)
            .arg(ask.mode.max(0))
            .arg(&self.channel)
            .arg(if ask.mode >= 0 && ask.claim_ms == 0 {
                "fair"
            } else {
                "plain"
            })
            .arg(ask.claim_ms)
            .arg("")
            .invoke_async(&mut self.con.clone())
            .await?;
        let int = |i: usize| from_redis_value_ref::<i64>(&reply[i]).unwrap();
        Ok(match int(0) {
            1 => Reply::Granted(u64::try_from(int(1)).unwrap()),
            -1 => Reply::Mismatch(int(1)),
            0 => {
                assert_eq!(reply.len(), 7, "busy reply: {reply:?}");
                Reply::Busy(Busy {
                    earliest_ms: int(1),
                    holders: jsons(&reply[2]),
                    now_ms: int(3),
                    ahead_ms: int(4),
                    limit: int(5),
                })
            }
            other => panic!("acquire answered {other}: {reply:?}"),
        })
    }

    async fn acquire(&self, token: &str, ask: Ask) -> Reply {
        self.try_acquire(token, ask).await.unwrap()
    }

    async fn renew(&self, permits: &[(&str, u64)]) -> Vec<i64> {
        let mut call = RENEW.prepare_invoke();
        for (token, ttl_ms) in permits {
            call.key(&self.holders)
                .key(&self.sem)
                .arg(*token)
                .arg(*ttl_ms);
        }
        call.invoke_async(&mut self.con.clone()).await.unwrap()
    }

    async fn release(&self, tokens: &[&str]) -> Vec<i64> {
        let mut call = RELEASE.prepare_invoke();
        for token in tokens {
            call.key(&self.holders)
                .key(&self.sem)
                .key(&self.fence)
                .key(&self.queue)
                .key(&self.leases)
                .key(&self.waiters)
                .arg(*token)
                .arg(&self.channel)
                .arg(RETENTION_MS)
                .arg("0");
        }
        call.invoke_async(&mut self.con.clone()).await.unwrap()
    }

    async fn verify(&self, tokens: &[&str]) -> Vec<i64> {
        let mut call = VERIFY.prepare_invoke();
        for token in tokens {
            call.key(&self.holders).arg(*token);
        }
        call.invoke_async(&mut self.con.clone()).await.unwrap()
    }

    async fn inspect(&self, mode: &str, fence: Option<u64>) -> Inspect {
        let (limit, now_ms, counter, holders, freed): (i64, i64, Option<String>, Value, i64) =
            INSPECT
                .key(&self.holders)
                .key(&self.sem)
                .key(&self.fence)
                .arg(mode)
                .arg(fence.map(|f| f.to_string()).unwrap_or_default())
                .arg(&self.channel)
                .invoke_async(&mut self.con.clone())
                .await
                .unwrap();
        Inspect {
            limit,
            now_ms,
            counter,
            holders: jsons(&holders),
            freed,
        }
    }

    async fn set_limit(&self, limit: u32, ttl_ms: u64) -> i64 {
        SET_LIMIT
            .key(&self.holders)
            .key(&self.sem)
            .key(&self.fence)
            .key(&self.queue)
            .key(&self.leases)
            .key(&self.waiters)
            .arg(limit)
            .arg(ttl_ms)
            .arg(&self.channel)
            .arg("0")
            .arg(RETENTION_MS)
            .invoke_async(&mut self.con.clone())
            .await
            .unwrap()
    }

    async fn fence_raise(&self, fence: u64, token: &str) -> i64 {
        FENCE_RAISE
            .key(&self.fence)
            .key(&self.sem)
            .key(&self.holders)
            .arg(fence)
            .arg(RETENTION_MS)
            .arg(token)
            .invoke_async(&mut self.con.clone())
            .await
            .unwrap()
    }

    /// set_limit.lua with a bad limit: its error.
    async fn set_limit_err(&self, limit: &str) -> String {
        SET_LIMIT
            .key(&self.holders)
            .key(&self.sem)
            .key(&self.fence)
            .key(&self.queue)
            .key(&self.leases)
            .key(&self.waiters)
            .arg(limit)
            .arg(LONG_MS)
            .arg(&self.channel)
            .arg("0")
            .arg(RETENTION_MS)
            .invoke_async::<Value>(&mut self.con.clone())
            .await
            .expect_err("a bad limit was accepted")
            .to_string()
    }

    /// Whether `key` exists.
    async fn exists(&self, key: &str) -> bool {
        self.cmd::<i64>("EXISTS", &[key]).await == 1
    }

    /// Runs one plain command.
    async fn cmd<T: redis::FromRedisValue>(&self, name: &str, args: &[&str]) -> T {
        let mut cmd = redis::cmd(name);
        for arg in args {
            cmd.arg(*arg);
        }
        cmd.query_async(&mut self.con.clone()).await.unwrap()
    }

    /// The server's clock, in ms.
    async fn now_ms(&self) -> i64 {
        let (secs, micros): (i64, i64) = self.cmd("TIME", &[]).await;
        secs * 1000 + micros / 1000
    }

    /// The server's clock, in µs.
    async fn now_us(&self) -> u64 {
        let (secs, micros): (u64, u64) = self.cmd("TIME", &[]).await;
        secs * 1_000_000 + micros
    }

    /// When `token`'s lease ends (server ms), if it is in the holders zset.
    async fn lease_end(&self, token: &str) -> Option<i64> {
        self.cmd("ZSCORE", &[&self.holders, token]).await
    }

    /// `token`'s holder info json, if it is in the hash.
    async fn info(&self, token: &str) -> Option<Json> {
        let json: Option<String> = self.cmd("HGET", &[&self.sem, token]).await;
        json.map(|json| serde_json::from_str(&json).unwrap())
    }

    /// Waits until the server's clock is past `ms` (a lease end): polls `TIME`, so the test
    /// follows the clock that decides, not its own.
    async fn wait_past(&self, ms: i64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.now_ms().await <= ms {
            assert!(
                Instant::now() < deadline,
                "the server's clock never passed {ms}"
            );
            sleep(Duration::from_millis(5)).await;
        }
    }

    /// Subscribes to the wake-up channel.
    async fn subscribe(&self, server: &RedisServer) -> Wakeups {
        let mut pubsub = redis::Client::open(server.url())
            .unwrap()
            .get_async_pubsub()
            .await
            .unwrap();
        pubsub.subscribe(&self.channel).await.unwrap();
        Wakeups {
            pubsub,
            channel: self.channel.clone(),
            con: self.con.clone(),
        }
    }
}

/// The wake-up messages a semaphore's scripts publish.
struct Wakeups {
    pubsub: PubSub,
    channel: String,
    con: MultiplexedConnection,
}

impl Wakeups {
    /// The next message (waits up to 5 s for it).
    async fn next(&mut self) -> String {
        let msg = timeout(Duration::from_secs(5), self.pubsub.on_message().next())
            .await
            .expect("no wake-up message within 5 s")
            .expect("the subscription ended");
        msg.get_payload().unwrap()
    }

    /// Asserts that nothing was published since the last message read: publishes a marker of
    /// its own, which must then be the next message (one channel's messages keep their order).
    async fn assert_none(&mut self) {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(&self.channel)
            .arg("marker")
            .query_async(&mut self.con)
            .await
            .unwrap();
        assert_eq!(self.next().await, "marker", "an unexpected wake-up");
    }
}

/// A reply array of json strings, parsed.
fn jsons(value: &Value) -> Vec<Json> {
    from_redis_value_ref::<Vec<String>>(value)
        .unwrap()
        .iter()
        .map(|json| serde_json::from_str(json).unwrap())
        .collect()
}

/// A holder info field, which must be a string.
#[track_caller]
fn field<'a>(info: &'a Json, name: &str) -> &'a str {
    info.get(name)
        .and_then(Json::as_str)
        .unwrap_or_else(|| panic!("{name} is not a string field of {info}"))
}

/// A holder info field holding a whole number.
#[track_caller]
fn number(info: &Json, name: &str) -> i64 {
    field(info, name)
        .parse()
        .unwrap_or_else(|e| panic!("{name} of {info}: {e}"))
}

#[tokio::test]
async fn single_permits_stop_at_the_limit() {
    let server = RedisServer::start();
    let sem = Sem::open(&server, "single").await;
    let (a, b, c) = (token(1), token(2), token(3));
    sem.acquire(&a, ask(1, 2)).await.fence();
    sem.acquire(&b, ask(1, 2)).await.fence();
    let busy = sem.acquire(&c, ask(1, 2)).await.busy();
    assert_eq!(busy.holders.len(), 2, "{busy:?}");
    assert_eq!(busy.limit, 2);
    assert!(
        busy.earliest_ms > 0 && busy.earliest_ms <= LONG_MS as i64,
        "{busy:?}"
    );
    assert_eq!(busy.ahead_ms, -1, "nobody queues: {busy:?}");
    assert_eq!(sem.cmd::<i64>("ZCARD", &[&sem.holders]).await, 2);

    assert_eq!(sem.release(&[&a]).await, [1]);
    sem.acquire(&c, ask(1, 2)).await.fence();
    sem.acquire(&a, ask(1, 2)).await.busy();
}

#[tokio::test]
async fn multi_permit_grants_count_every_permit() {
    let server = RedisServer::start();
    let sem = Sem::open(&server, "multi").await;
    let (a, b, c, d) = (token(1), token(2), token(3), token(4));
    sem.acquire(&a, ask(3, 5)).await.fence();
    // 3 + 3 > 5, but 3 + 2 fits; then 5 + 1 does not.
    sem.acquire(&b, ask(3, 5)).await.busy();
    sem.acquire(&c, ask(2, 5)).await.fence();
    let busy = sem.acquire(&d, ask(1, 5)).await.busy();
    let mut held: Vec<i64> = busy.holders.iter().map(|h| number(h, "permits")).collect();
    held.sort_unstable();
    assert_eq!(held, [2, 3]);

    assert_eq!(sem.release(&[&a]).await, [1]);
    sem.acquire(&b, ask(3, 5)).await.fence();
    sem.acquire(&d, ask(1, 5)).await.busy();
}

#[tokio::test]
async fn a_different_limit_is_answered_with_the_stored_one_and_changes_nothing() {
    let server = RedisServer::start();
    let sem = Sem::open(&server, "mismatch").await;
    let (a, b) = (token(1), token(2));
    sem.acquire(&a, ask(1, 2)).await.fence();
    for ask in [
        ask(1, 3),
        ask(1, 3).fair(LONG_MS as i64),
        ask(1, 1).try_fair(),
    ] {
        match sem.acquire(&b, ask).await {
            Reply::Mismatch(stored) => assert_eq!(stored, 2),
            other => panic!("{ask:?}: expected a limit mismatch, got {other:?}"),
        }
    }
    assert_eq!(
        sem.lease_end(&b).await,
        None,
        "granted despite the mismatch"
    );
    assert_eq!(sem.cmd::<i64>("LLEN", &[&sem.queue]).await, 0, "queued");
    assert!(!sem.exists(&sem.leases).await, "queued");
    let limit: String = sem.cmd("HGET", &[&sem.sem, "limit"]).await;
    assert_eq!(limit, "2");
    // The stored limit's own callers still get permits.
    sem.acquire(&b, ask(1, 2)).await.fence();
}

#[tokio::test]
async fn a_retry_with_the_same_token_gets_its_grant_back() {
    let server = RedisServer::start();
    let sem = Sem::open(&server, "retry").await;
    let (a, b, c) = (token(1), token(2), token(3));
    let fence = sem.acquire(&a, ask(1, 2).ttl(MID_MS)).await.fence();
    let first_end = sem.lease_end(&a).await.unwrap();

    // The retry (its first reply lost): same fence, the lease restarts at the new ttl.
    assert_eq!(sem.acquire(&a, ask(1, 2)).await.fence(), fence);
    let second_end = sem.lease_end(&a).await.unwrap();
    assert!(
        second_end >= first_end + (LONG_MS as i64 - MID_MS as i64),
        "{first_end} -> {second_end}"
    );
    let pttl: i64 = sem.cmd("PTTL", &[&sem.holders]).await;
    assert!(
        pttl > MID_MS as i64,
        "the keys must outlast the renewed lease: {pttl}"
    );
    // The permit was not counted twice: one is still free.
    sem.acquire(&b, ask(1, 2)).await.fence();
    sem.acquire(&c, ask(1, 2)).await.busy();
    // A retry is answered with its grant even after the limit changed under it: its permit
    // must not stay held without its owner knowing.
    sem.set_limit(3, LONG_MS).await;
    assert_eq!(sem.acquire(&a, ask(1, 2)).await.fence(), fence);
    assert_eq!(number(&sem.info(&a).await.unwrap(), "fence") as u64, fence);
}

#[tokio::test]
async fn expired_holders_are_purged_and_no_longer_count() {
    let server = RedisServer::start();
    let sem = Sem::open(&server, "expiry").await;
    let (long, short, c) = (token(1), token(2), token(3));
    // The long holder keeps the keys alive, so the short one ends without its keys expiring.
    sem.acquire(&long, ask(1, 2)).await.fence();
    sem.acquire(&short, ask(1, 2).ttl(SHORT_MS)).await.fence();
    sem.acquire(&c, ask(1, 2)).await.busy();

    sem.wait_past(sem.lease_end(&short).await.unwrap()).await;
    assert!(sem.lease_end(&short).await.is_some(), "not purged yet");
    sem.acquire(&c, ask(1, 2)).await.fence();
    assert_eq!(sem.lease_end(&short).await, None, "purged from the holders");
    assert_eq!(sem.info(&short).await, None, "purged from the hash");
    assert_eq!(sem.verify(&[&long, &c]).await, [1, 1]);
}

#[tokio::test]
async fn an_ended_lease_is_not_renewed_verified_or_released() {
    let server = RedisServer::start();
    let sem = Sem::open(&server, "ended").await;
    let (long, short) = (token(1), token(2));
    sem.acquire(&long, ask(1, 2)).await.fence();
    sem.acquire(&short, ask(1, 2).ttl(SHORT_MS)).await.fence();
    let end = sem.lease_end(&short).await.unwrap();
    sem.wait_past(end).await;

    assert_eq!(sem.verify(&[&short, &long]).await, [0, 1]);
    assert_eq!(
        sem.renew(&[(&short, LONG_MS), (&long, LONG_MS)]).await,
        [0, 1]
    );
    assert_eq!(
        sem.lease_end(&short).await,
        Some(end),
        "an ended lease was revived"
    );
    assert_eq!(sem.release(&[&short]).await, [0]);
    assert_eq!(sem.lease_end(&short).await, None, "removed all the same");
    assert_eq!(sem.info(&short).await, None);
    assert_eq!(sem.verify(&[&long]).await, [1]);
    assert_eq!(sem.release(&[&long]).await, [1]);
    assert_eq!(sem.verify(&[&long]).await, [0]);
}

#[tokio::test]
async fn renewal_extends_the_lease_and_never_shortens_the_keys() {
    let server = RedisServer::start();
    let sem = Sem::open(&server, "renew").await;
    let (a, b, stranger) = (token(1), token(2), token(3));
    sem.acquire(&a, ask(1, 2).ttl(MID_MS)).await.fence();
    let before = sem.lease_end(&a).await.unwrap();
    assert_eq!(sem.renew(&[(&a, LONG_MS)]).await, [1]);
    let after = sem.lease_end(&a).await.unwrap();
    assert!(
        after >= before + LONG_MS as i64 - MID_MS as i64,
        "{before} -> {after}"
    );
    for key in [&sem.holders, &sem.sem] {
        let pttl: i64 = sem.cmd("PTTL", &[key]).await;
        assert!(
            pttl > MID_MS as i64,
            "{key} expires before the lease: {pttl}"
        );
    }

    // b's shorter grant and renewal must not cut the keys below a's lease.
    sem.acquire(&b, ask(1, 2).ttl(MID_MS)).await.fence();
    for key in [&sem.holders, &sem.sem] {
        let pttl: i64 = sem.cmd("PTTL", &[key]).await;
        assert!(
            pttl > MID_MS as i64,
            "{key} was shortened by a grant: {pttl}"
        );
    }
    assert_eq!(
        sem.renew(&[(&b, MID_MS), (&stranger, LONG_MS)]).await,
        [1, 0]
    );
    for key in [&sem.holders, &sem.sem] {
        let pttl: i64 = sem.cmd("PTTL", &[key]).await;
        assert!(pttl > MID_MS as i64, "{key} was shortened: {pttl}");
    }
    assert_eq!(
        sem.lease_end(&stranger).await,
        None,
        "renewal created a holder"
    );
}

#[tokio::test]
async fn a_fair_head_wanting_three_is_not_overtaken_by_single_permit_waiters() {
    let server = RedisServer::start();
    let sem = Sem::open(&server, "fifo").await;
    let lease = LONG_MS as i64;
    let (holder, three, one, late) = (token(1), token(2), token(3), token(4));
    sem.acquire(&holder, ask(1, 3).fair(lease)).await.fence();
    // Two permits are free: the 3-permit waiter queues first, then a 1-permit one that would
    // fit but is not the head.
    let busy = sem.acquire(&three, ask(3, 3).fair(lease)).await.busy();
    assert_eq!(busy.ahead_ms, -1, "the head has nobody ahead: {busy:?}");
    let busy = sem.acquire(&one, ask(1, 3).fair(lease)).await.busy();
    assert!(
        busy.ahead_ms > 0 && busy.ahead_ms <= lease,
        "the head's lease: {busy:?}"
    );
    sem.acquire(&one, ask(1, 3).fair(lease)).await.busy();
    // try_acquire in fair mode neither overtakes nor queues.
    sem.acquire(&late, ask(1, 3).try_fair()).await.busy();
    let queue: Vec<String> = sem.cmd("LRANGE", &[&sem.queue, "0", "-1"]).await;
    assert_eq!(queue, [three.as_str(), one.as_str()]);

    assert_eq!(sem.release(&[&holder]).await, [1]);
    sem.acquire(&one, ask(1, 3).fair(lease)).await.busy();
    sem.acquire(&three, ask(3, 3).fair(lease)).await.fence();
    sem.acquire(&one, ask(1, 3).fair(lease)).await.busy();
    assert_eq!(sem.release(&[&three]).await, [1]);
    sem.acquire(&one, ask(1, 3).fair(lease)).await.fence();
    assert_eq!(sem.cmd::<i64>("LLEN", &[&sem.queue]).await, 0);
    assert_eq!(sem.cmd::<i64>("ZCARD", &[&sem.leases]).await, 0);
}

#[tokio::test]
async fn a_grant_that_leaves_permits_free_wakes_the_next_waiter() {
    let server = RedisServer::start();
    let sem = Sem::open(&server, "cascade").await;
    let lease = LONG_MS as i64;
    let (holder, w1, w2) = (token(1), token(2), token(3));
    sem.acquire(&holder, ask(3, 3).fair(lease)).await.fence();
    sem.acquire(&w1, ask(1, 3).fair(lease)).await.busy();
    sem.acquire(&w2, ask(1, 3).fair(lease)).await.busy();
    let mut wakeups = sem.subscribe(&server).await;

    assert_eq!(sem.release(&[&holder]).await, [1]);
    assert_eq!(wakeups.next().await, id(&w1), "the release wakes the head");
    sem.acquire(&w1, ask(1, 3).fair(lease)).await.fence();
    assert_eq!(
        wakeups.next().await,
        id(&w2),
        "two permits are left: the new head is woken"
    );
    sem.acquire(&w2, ask(1, 3).fair(lease)).await.fence();
    wakeups.assert_none().await;
}

#[tokio::test]
async fn a_release_wakes_the_head_and_withdraws_waiters() {
    let server = RedisServer::start();
    let sem = Sem::open(&server, "wake").await;
    let lease = LONG_MS as i64;
    let (holder, w1, w2) = (token(1), token(2), token(3));
    sem.acquire(&holder, ask(1, 1).fair(lease)).await.fence();
    sem.acquire(&w1, ask(1, 1).fair(lease)).await.busy();
    sem.acquire(&w2, ask(1, 1).fair(lease)).await.busy();
    let mut wakeups = sem.subscribe(&server).await;

    assert_eq!(sem.release(&[&holder]).await, [1]);
    assert_eq!(wakeups.next().await, id(&w1));
    // A cancelled waiter withdraws through release: not released, but the queue moves up.
    assert_eq!(sem.release(&[&w1]).await, [0]);
    assert_eq!(wakeups.next().await, id(&w2));
    let queue: Vec<String> = sem.cmd("LRANGE", &[&sem.queue, "0", "-1"]).await;
    assert_eq!(queue, [w2.as_str()]);
    assert_eq!(
        sem.cmd::<Option<i64>>("ZSCORE", &[&sem.leases, &w1]).await,
        None
    );
    // The last waiter leaves: nobody queues, everyone may retry.
    assert_eq!(sem.release(&[&w2]).await, [0]);
    assert_eq!(wakeups.next().await, "");
    // Releasing what is not ours publishes nothing.
    assert_eq!(sem.release(&[&token(9)]).await, [0]);
    wakeups.assert_none().await;
}

#[tokio::test]
async fn dead_waiters_leave_the_queue_and_the_next_one_is_woken() {
    let server = RedisServer::start();
    let sem = Sem::open(&server, "dead-waiter").await;
    let lease = LONG_MS as i64;
    let (holder, dead, next, newcomer) = (token(1), token(2), token(3), token(4));
    sem.acquire(&holder, ask(1, 2).fair(lease)).await.fence();
    sem.acquire(&dead, ask(2, 2).fair(SHORT_MS as i64))
        .await
        .busy();
    sem.acquire(&next, ask(1, 2).fair(lease)).await.busy();
    let mut wakeups = sem.subscribe(&server).await;

    let dead_end: i64 = sem
        .cmd::<Option<i64>>("ZSCORE", &[&sem.leases, &dead])
        .await
        .unwrap();
    sem.wait_past(dead_end).await;
    // Any acquire purges the dead waiter; a permit is free and the queue moved up.
    let busy = sem.acquire(&newcomer, ask(1, 2).fair(lease)).await.busy();
    assert_eq!(wakeups.next().await, id(&next));
    assert!(busy.ahead_ms > 0, "next is ahead of the newcomer: {busy:?}");
    let queue: Vec<String> = sem.cmd("LRANGE", &[&sem.queue, "0", "-1"]).await;
    assert_eq!(queue, [next.as_str(), newcomer.as_str()]);
    sem.acquire(&next, ask(1, 2).fair(lease)).await.fence();
}

#[tokio::test]
async fn set_limit_grows_shrinks_and_passes_the_room_on_when_it_grows() {
    let server = RedisServer::start();
    let sem = Sem::open(&server, "resize").await;
    let lease = LONG_MS as i64;
    let (a, w, b) = (token(1), token(2), token(3));

    // An idle semaphore: the limit is stored for the given time.
    assert_eq!(sem.set_limit(1, LONG_MS).await, -1);
    let pttl: i64 = sem.cmd("PTTL", &[&sem.sem]).await;
    assert!(pttl > 0 && pttl <= LONG_MS as i64, "{pttl}");
    match sem.acquire(&a, ask(1, 2)).await {
        Reply::Mismatch(stored) => assert_eq!(stored, 1),
        other => panic!("expected a limit mismatch, got {other:?}"),
    }

    sem.acquire(&a, ask(1, 1).fair(lease)).await.fence();
    sem.acquire(&w, ask(1, 1).fair(lease)).await.busy();
    let mut wakeups = sem.subscribe(&server).await;
    assert_eq!(sem.set_limit(2, 1).await, 1);
    // The head takes no hand-offs (no terms): woken to retry, as by a release.
    assert_eq!(wakeups.next().await, id(&w), "a grown limit wakes the head");
    let pttl: i64 = sem.cmd("PTTL", &[&sem.sem]).await;
    assert!(pttl > 1_000, "set_limit shortened the hash's life: {pttl}");
    match sem.acquire(&w, ask(1, 1).fair(lease)).await {
        Reply::Mismatch(stored) => assert_eq!(stored, 2),
        other => panic!("expected a limit mismatch, got {other:?}"),
    }
    sem.acquire(&w, ask(1, 2).fair(lease)).await.fence();

    // Shrinking keeps both holders; nothing more is granted until one leaves room under 1.
    assert_eq!(sem.set_limit(1, LONG_MS).await, 2);
    wakeups.assert_none().await;
    assert_eq!(sem.verify(&[&a, &w]).await, [1, 1]);
    sem.acquire(&b, ask(1, 1)).await.busy();
    assert_eq!(sem.release(&[&a]).await, [1]);
    assert_eq!(wakeups.next().await, "");
    sem.acquire(&b, ask(1, 1)).await.busy();
    assert_eq!(sem.release(&[&w]).await, [1]);
    sem.acquire(&b, ask(1, 1)).await.fence();
}

#[tokio::test]
async fn inspect_reads_breaks_one_holder_and_breaks_all() {
    let server = RedisServer::start();
    let sem = Sem::open(&server, "inspect").await;
    let (a, b, c, d, ended) = (token(1), token(2), token(3), token(4), token(5));
    let fe = sem.acquire(&ended, ask(1, 4).ttl(SHORT_MS)).await.fence();
    let fa = sem.acquire(&a, ask(1, 4).label("a")).await.fence();
    let fb = sem.acquire(&b, ask(1, 4).label("b")).await.fence();
    let fc = sem
        .acquire(&c, ask(1, 4).ttl(LONG_MS * 2).label("c"))
        .await
        .fence();
    sem.wait_past(sem.lease_end(&ended).await.unwrap()).await;
    let mut wakeups = sem.subscribe(&server).await;

    // The ended holder is purged first, and not listed.
    let read = sem.inspect("read", None).await;
    assert_eq!(sem.lease_end(&ended).await, None, "not purged");
    assert_eq!(sem.info(&ended).await, None, "not purged");
    assert_eq!(read.limit, 4);
    assert_eq!(read.counter, Some(fc.to_string()));
    assert_eq!(read.freed, 0);
    let fences: Vec<u64> = read
        .holders
        .iter()
        .map(|h| number(h, "fence") as u64)
        .collect();
    assert_eq!(fences, [fa, fb, fc], "by lease end");
    assert!(fe < fa);
    for holder in &read.holders {
        let left = number(holder, "expires_in_ms");
        assert!(left > 0 && left <= 2 * LONG_MS as i64, "{holder}");
        assert!(number(holder, "since_ms") <= read.now_ms, "{holder}");
    }
    wakeups.assert_none().await;

    // Break the holder with b's fencing token, and only it.
    let broke = sem.inspect("break-one", Some(fb)).await;
    assert_eq!(broke.freed, 1);
    assert_eq!(broke.holders.len(), 3, "the holders before the break");
    assert_eq!(wakeups.next().await, "", "a break wakes every waiter");
    assert_eq!(sem.verify(&[&a, &b, &c]).await, [1, 0, 1]);
    assert_eq!(sem.info(&b).await, None);
    assert_eq!(sem.inspect("break-one", Some(fb)).await.freed, 0);
    wakeups.assert_none().await;

    let broke = sem.inspect("break", None).await;
    assert_eq!(broke.freed, 2);
    let mut fences: Vec<u64> = broke
        .holders
        .iter()
        .map(|h| number(h, "fence") as u64)
        .collect();
    fences.sort_unstable();
    assert_eq!(fences, [fa, fc]);
    assert_eq!(wakeups.next().await, "");
    assert_eq!(sem.verify(&[&a, &c]).await, [0, 0]);

    let read = sem.inspect("read", None).await;
    assert!(read.holders.is_empty(), "{read:?}");
    assert_eq!(read.limit, 4, "a break keeps the limit");
    sem.acquire(&d, ask(4, 4)).await.fence();
    let bad = INSPECT
        .key(&sem.holders)
        .key(&sem.sem)
        .key(&sem.fence)
        .arg("break-one")
        .arg("")
        .arg(&sem.channel)
        .invoke_async::<Value>(&mut sem.con.clone())
        .await;
    assert!(bad.is_err(), "break-one without a fence: {bad:?}");
}

#[tokio::test]
async fn fencing_tokens_strictly_increase_and_never_fall_behind_the_server_clock() {
    let server = RedisServer::start();
    let sem = Sem::open(&server, "fenced").await;
    let mut last = 0;
    for i in 0..60 {
        let holder = token(i);
        let clock = sem.now_us().await;
        let fence = sem.acquire(&holder, ask(1, 3)).await.fence();
        assert!(fence > last, "grant {i}: {last} -> {fence}");
        assert!(
            fence >= clock,
            "grant {i}: {fence} behind the clock {clock}"
        );
        let counter: String = sem.cmd("GET", &[&sem.fence]).await;
        assert_eq!(counter, fence.to_string());
        if i >= 2 {
            assert_eq!(sem.release(&[&token(i - 2)]).await, [1]);
        }
        last = fence;
    }
    let pttl: i64 = sem.cmd("PTTL", &[&sem.fence]).await;
    assert!(
        pttl > LONG_MS as i64 && pttl <= RETENTION_MS as i64,
        "{pttl}"
    );

    // A counter far ahead of the clock grows by one, exactly (no '%.14g' rounding).
    let _: () = sem.cmd("SET", &[&sem.fence, "5000000000000000"]).await;
    let fence = sem.acquire(&token(100), ask(1, 3)).await.fence();
    assert_eq!(fence, 5_000_000_000_000_001);
    let counter: String = sem.cmd("GET", &[&sem.fence]).await;
    assert_eq!(counter, "5000000000000001");
    let info = sem.info(&token(100)).await.unwrap();
    assert_eq!(field(&info, "fence"), "5000000000000001");
}

#[tokio::test]
async fn fence_raise_raises_the_counter_and_rewrites_only_a_live_permits_fence() {
    let server = RedisServer::start();
    let sem = Sem::open(&server, "raise").await;
    let (a, short, stranger) = (token(1), token(2), token(3));
    let fa = sem.acquire(&a, ask(1, 2)).await.fence();
    let raised = fa + 1_000;
    assert_eq!(sem.fence_raise(raised, &a).await, 1);
    let counter: String = sem.cmd("GET", &[&sem.fence]).await;
    assert_eq!(counter, raised.to_string());
    let info = sem.info(&a).await.unwrap();
    assert_eq!(field(&info, "fence"), raised.to_string());
    assert_eq!(
        field(&info, "label"),
        "worker",
        "the rest of the info is kept"
    );
    // inspect names the permit by its new fence.
    assert_eq!(
        number(&sem.inspect("read", None).await.holders[0], "fence") as u64,
        raised
    );

    // A lower token never lowers the counter.
    assert_eq!(sem.fence_raise(fa, &a).await, 1);
    let counter: String = sem.cmd("GET", &[&sem.fence]).await;
    assert_eq!(counter, raised.to_string());

    // Not ours: the counter is raised all the same, but nothing else changes.
    assert_eq!(sem.fence_raise(raised + 5, &stranger).await, 0);
    let counter: String = sem.cmd("GET", &[&sem.fence]).await;
    assert_eq!(counter, (raised + 5).to_string());
    assert_eq!(sem.info(&stranger).await, None);

    // An ended lease is not ours either, even before it is purged.
    let fs = sem.acquire(&short, ask(1, 2).ttl(SHORT_MS)).await.fence();
    sem.wait_past(sem.lease_end(&short).await.unwrap()).await;
    assert_eq!(sem.fence_raise(fs + 10, &short).await, 0);
    assert_eq!(number(&sem.info(&short).await.unwrap(), "fence") as u64, fs);
    // The next grant comes after every raised token.
    assert!(sem.acquire(&token(4), ask(1, 2)).await.fence() > fs + 10);
}

#[tokio::test]
async fn an_idle_semaphore_leaves_no_holders_or_limit_behind() {
    let server = RedisServer::start();
    let sem = Sem::open(&server, "idle").await;
    let lease = LONG_MS as i64;
    let (a, b, w) = (token(1), token(2), token(3));

    sem.acquire(&a, ask(1, 2)).await.fence();
    sem.acquire(&b, ask(1, 2)).await.fence();
    assert_eq!(sem.release(&[&a]).await, [1]);
    assert!(sem.exists(&sem.holders).await, "holders is gone");
    assert!(sem.exists(&sem.sem).await, "sem is gone");
    assert_eq!(sem.release(&[&b]).await, [1]);
    assert!(!sem.exists(&sem.holders).await, "holders is left behind");
    assert!(!sem.exists(&sem.sem).await, "sem is left behind");
    // So the next caller may bring another limit.
    sem.acquire(&a, ask(1, 1).fair(lease)).await.fence();

    // A live waiter keeps the limit; its withdrawal removes it.
    sem.acquire(&w, ask(1, 1).fair(lease)).await.busy();
    assert_eq!(sem.release(&[&a]).await, [1]);
    assert!(!sem.exists(&sem.holders).await, "holders is left behind");
    let limit: String = sem.cmd("HGET", &[&sem.sem, "limit"]).await;
    assert_eq!(limit, "1");
    let pttl: i64 = sem.cmd("PTTL", &[&sem.sem]).await;
    assert!(pttl > 0, "the hash must expire with the waiter: {pttl}");
    assert_eq!(sem.release(&[&w]).await, [0]);
    assert!(!sem.exists(&sem.sem).await, "sem is left behind");

    // The limit lives as long as the longest waiter, even past every holder's lease.
    sem.acquire(&a, ask(1, 1).ttl(MID_MS)).await.fence();
    sem.acquire(&w, ask(1, 1).fair(lease)).await.busy();
    let pttl: i64 = sem.cmd("PTTL", &[&sem.sem]).await;
    assert!(
        pttl > MID_MS as i64,
        "the hash must live as long as the waiter: {pttl}"
    );
    assert_eq!(sem.release(&[&w, &a]).await, [0, 1]);
    assert!(!sem.exists(&sem.sem).await, "sem is left behind");

    // A purge that leaves nothing forgets the limit too (the released long lease kept the
    // keys alive, so only the purge can remove them).
    sem.acquire(&a, ask(1, 3)).await.fence();
    sem.acquire(&b, ask(1, 3).ttl(SHORT_MS)).await.fence();
    assert_eq!(sem.release(&[&a]).await, [1]);
    sem.wait_past(sem.lease_end(&b).await.unwrap()).await;
    assert!(sem.exists(&sem.sem).await, "sem is gone");
    sem.acquire(&a, ask(1, 4)).await.fence();
    let limit: String = sem.cmd("HGET", &[&sem.sem, "limit"]).await;
    assert_eq!(limit, "4");
}

#[tokio::test]
async fn holder_info_round_trips_as_json_strings() {
    let server = RedisServer::start();
    let sem = Sem::open(&server, "info").await;
    let (a, b) = (token(1), token(2));
    let label = "nightly \"backup\" / ünïcode \\ 🔒";
    let before = sem.now_ms().await;
    let fence = sem.acquire(&a, ask(2, 2).label(label)).await.fence();

    let busy = sem.acquire(&b, ask(1, 2)).await.busy();
    assert_eq!(busy.holders.len(), 1);
    let info = &busy.holders[0];
    let fields = info.as_object().unwrap();
    let mut names: Vec<&str> = fields.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "expires_in_ms",
            "fence",
            "host",
            "label",
            "permits",
            "pid",
            "since_ms"
        ]
    );
    assert!(
        fields.values().all(Json::is_string),
        "every value is a string: {info}"
    );
    assert_eq!(field(info, "host"), HOST);
    assert_eq!(field(info, "pid"), PID);
    assert_eq!(field(info, "label"), label);
    assert_eq!(field(info, "permits"), "2");
    assert_eq!(field(info, "fence"), fence.to_string());
    let since = number(info, "since_ms");
    assert!(
        before <= since && since <= busy.now_ms,
        "{before} {since} {busy:?}"
    );
    let left = number(info, "expires_in_ms");
    assert!(left > 0 && left <= LONG_MS as i64, "{info}");
    assert_eq!(busy.earliest_ms, left);
    // The stored json has no expires_in_ms (it is computed per answer) and no token.
    let stored = sem.info(&a).await.unwrap();
    assert!(stored.get("expires_in_ms").is_none(), "{stored}");
    assert!(!stored.to_string().contains(&a), "a token leaked: {stored}");
}

#[tokio::test]
async fn impossible_permit_counts_are_refused() {
    let server = RedisServer::start();
    let sem = Sem::open(&server, "bad").await;
    for (n, limit) in [("0", "2"), ("3", "2"), ("1.5", "2"), ("1", "0"), ("x", "2")] {
        let reply = ACQUIRE
            .key(&sem.holders)
            .key(&sem.sem)
            .key(&sem.fence)
            .key(&sem.queue)
            .key(&sem.leases)
            .arg(token(1))
            .arg(n)
            .arg(limit)
            .arg(LONG_MS)
            .arg(RETENTION_MS)
            .arg(HOST)
            .arg(PID)
            .arg("worker")
            .arg(LONG_MS)
            .arg(&sem.channel)
            .invoke_async::<Value>(&mut sem.con.clone())
            .await;
        let err = reply.expect_err(&format!("{n} of {limit} was accepted"));
        assert!(
            err.to_string().contains("whole number"),
            "{n} of {limit}: {err}"
        );
    }
    let keys: Vec<String> = sem.cmd("KEYS", &["*"]).await;
    assert!(keys.is_empty(), "a refused call wrote {keys:?}");
    assert!(sem.set_limit_err("0").await.contains("whole number"));
}

/// Review finding: on Redlock two permits can each take the largest fence of their own
/// masters and end up with the same token. The write-back refuses a fence another live holder
/// on that master already has, so one of them fails and retries.
#[tokio::test]
async fn fence_raise_refuses_a_fence_another_live_holder_has() {
    let server = RedisServer::start();
    let sem = Sem::open(&server, "twin").await;
    let (a, b) = (token(1), token(2));
    let fa = sem.acquire(&a, ask(1, 2)).await.fence();
    sem.acquire(&b, ask(1, 2)).await;
    assert_eq!(sem.fence_raise(fa, &b).await, 0, "b took a's fence");
    assert_ne!(number(&sem.info(&b).await.unwrap(), "fence") as u64, fa);
    // Its own fence, or a fresh one, is fine.
    assert_eq!(sem.fence_raise(fa + 7, &b).await, 1);
}

/// Review finding: a caller naming another limit used to stay at the head of the fair queue,
/// so the next waiter waited out its lease. It now leaves and wakes the next one.
#[tokio::test]
async fn a_mismatched_caller_leaves_the_queue_and_wakes_the_next() {
    let server = RedisServer::start();
    let sem = Sem::open(&server, "mismatch").await;
    let (holder, head, next) = (token(1), token(2), token(3));
    sem.acquire(&holder, ask(1, 1)).await;
    let lease = LONG_MS as i64;
    sem.acquire(&head, ask(1, 1).fair(lease)).await;
    sem.acquire(&next, ask(1, 1).fair(lease)).await;
    sem.release(&[&holder]).await;
    let mut wakeups = sem.subscribe(&server).await;
    assert!(matches!(
        sem.try_acquire(&head, ask(1, 2).fair(lease)).await.unwrap(),
        Reply::Mismatch(1)
    ));
    let queue: Vec<String> = sem.cmd("LRANGE", &[&sem.queue, "0", "-1"]).await;
    assert_eq!(
        queue,
        std::slice::from_ref(&next),
        "the mismatched head left the queue"
    );
    assert_eq!(wakeups.next().await, id(&next), "the new head was woken");
}

/// Review finding: holder info of holders whose zset expired with their lease (while waiters
/// kept the hash alive) was never removed. With no live holder, only the limit is kept.
#[tokio::test]
async fn holder_info_of_expired_holders_does_not_pile_up() {
    let server = RedisServer::start();
    let sem = Sem::open(&server, "leak").await;
    let (h, w) = (token(1), token(2));
    sem.acquire(&h, ask(1, 1).ttl(SHORT_MS)).await;
    sem.acquire(&w, ask(1, 1).fair(LONG_MS as i64)).await;
    // The holders key expires with its only lease: no script purges `h` one by one.
    let _: i64 = sem.cmd("DEL", &[&sem.holders]).await;
    sem.acquire(&w, ask(1, 1).fair(LONG_MS as i64))
        .await
        .fence();
    let fields: Vec<String> = sem.cmd("HKEYS", &[&sem.sem]).await;
    assert!(!fields.contains(&h), "{fields:?}");
    assert!(fields.contains(&"limit".to_owned()) && fields.contains(&w));
}

/// Review finding: hand-off terms outlived an attempt that takes no hand-offs (a waiter that
/// cannot hear its channel now), and a plain attempt left an earlier queue entry in place, so
/// a release could hand permits to a waiter that would not learn of them before its re-check.
#[tokio::test]
async fn an_attempt_without_handoff_drops_earlier_terms_and_a_plain_one_leaves_the_queue() {
    let server = RedisServer::start();
    let sem = Sem::open(&server, "terms").await;
    let lease = LONG_MS as i64;
    let (holder, w) = (token(1), token(2));
    sem.acquire(&holder, ask(1, 1)).await.fence();
    sem.acquire(&w, ask(1, 1).handoff(lease, 500)).await.busy();
    let terms: Option<String> = sem.cmd("HGET", &[&sem.waiters, &w]).await;
    let terms: Json = serde_json::from_str(&terms.expect("no terms stored")).unwrap();
    assert_eq!(
        (&terms["permits"], &terms["fair"]),
        (&Json::from("1"), &Json::from(false))
    );
    // Queued again, now without hand-off: its old terms go.
    sem.acquire(&w, ask(1, 1).fair(lease)).await.busy();
    assert_eq!(sem.cmd::<i64>("HEXISTS", &[&sem.waiters, &w]).await, 0);
    assert_eq!(sem.cmd::<i64>("LLEN", &[&sem.queue]).await, 1);
    // A plain attempt that does not queue leaves the queue.
    sem.acquire(&w, ask(1, 1).handoff(lease, 500)).await.busy();
    sem.acquire(&w, ask(1, 1)).await.busy();
    assert_eq!(sem.cmd::<i64>("LLEN", &[&sem.queue]).await, 0);
    assert_eq!(sem.cmd::<i64>("HEXISTS", &[&sem.waiters, &w]).await, 0);
    // So the release hands nothing to it: the permit is free, and everyone is woken.
    assert_eq!(sem.release(&[&holder]).await, [1]);
    assert_eq!(sem.cmd::<i64>("ZCARD", &[&sem.holders]).await, 0);
}

/// Damaged hand-off terms (a permit count that is not a whole number from 1 up) are never
/// handed permits, and never fail a release; the waiter is woken to retry instead.
#[tokio::test]
async fn damaged_permit_counts_in_terms_are_never_handed_permits() {
    let server = RedisServer::start();
    let sem = Sem::open(&server, "damaged").await;
    let lease = LONG_MS as i64;
    let (holder, w) = (token(1), token(2));
    for bad in ["0", "-1", "1.5", "x"] {
        sem.acquire(&holder, ask(1, 2)).await.fence();
        sem.acquire(&token(3), ask(1, 2)).await.fence();
        sem.acquire(&w, ask(1, 2).handoff(lease, 500)).await.busy();
        let terms = format!(r#"{{"claim":"500","permits":"{bad}","fair":false}}"#);
        let _: i64 = sem.cmd("HSET", &[&sem.waiters, &w, &terms]).await;
        let mut wakeups = sem.subscribe(&server).await;
        assert_eq!(sem.release(&[&holder]).await, [1], "{bad}");
        assert_eq!(sem.cmd::<i64>("ZCARD", &[&sem.holders]).await, 1, "{bad}");
        assert_eq!(wakeups.next().await, id(&w), "{bad}: the head is woken");
        assert_eq!(sem.release(&[&token(3), &w]).await, [1, 0]);
    }
}
