//! Redlock fencing with tokens the client proposes: one round trip per grant, and tokens that
//! stay strictly increasing when the masters' counters differ wildly.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dlock::{Client, ClientOptions, LockOptions, Wait};
use dlock_test::RedisServers;
use tokio::time::Instant;

async fn redlock(servers: &RedisServers) -> Client {
    let options = ClientOptions::new()
        .command_timeout(Duration::from_secs(1))
        .connect_timeout(Duration::from_secs(1));
    Client::redlock_with(&servers.urls(), options)
        .await
        .unwrap()
}

fn fence_key(name: &str) -> String {
    format!("{{{name}}}:dlock:fence:{name}")
}

fn info_key(name: &str) -> String {
    format!("{{{name}}}:dlock:info:{name}")
}

/// Script calls a master has run (EVALSHA, and EVAL should the script cache be cold).
fn script_calls(servers: &RedisServers) -> Vec<u64> {
    servers.iter().map(|s| s.script_calls()).collect()
}

fn now_us() -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    u64::try_from(now.as_micros()).unwrap()
}

/// The write-back took a second fanned-out round trip (`fence_raise.lua` on the granting
/// masters); a proposed token is stored by the acquire script itself.
#[tokio::test]
async fn an_uncontended_fenced_acquisition_is_one_script_call_per_master() {
    let servers = RedisServers::start(5);
    let c = redlock(&servers).await;
    let lock = c.lock("one-trip").unwrap();
    // Warm up until every master has run the acquire script (its fencing counter is there),
    // so the script is in every master's cache. A grant returns once a majority granted and
    // drops the calls still in flight, and redis-rs never sends a dropped request (nor its
    // NOSCRIPT retry): found in CI, a master the warm-up never reached answered the measured
    // call NOSCRIPT, which counted as its one call while nothing was granted there.
    let warm = Instant::now() + Duration::from_secs(5);
    loop {
        lock.try_lock().await.unwrap().release().await.unwrap();
        let everywhere = servers
            .iter()
            .all(|server| server.cmd::<i64>("EXISTS", &[&fence_key("one-trip")]) == 1);
        if everywhere || Instant::now() > warm {
            break;
        }
    }
    c.flush().await;
    // release() returns once a majority released; wait for the rest to land too, or a late
    // one would be counted below (seen once in a loaded full run).
    let settled = Instant::now() + Duration::from_secs(2);
    while servers
        .iter()
        .any(|server| server.cmd::<i64>("EXISTS", &["one-trip"]) == 1)
        && Instant::now() < settled
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A master the warm-up's grant never reached still gets its (no-op) release, possibly
    // late: wait until no master's script count moves for 300 ms (found in CI: that late
    // release was counted as the acquisition's call, and the fencing counter it never had
    // read as missing).
    let mut counts = script_calls(&servers);
    let mut still_since = Instant::now();
    while still_since.elapsed() < Duration::from_millis(300)
        && Instant::now() < settled + Duration::from_secs(3)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = script_calls(&servers);
        if now != counts {
            counts = now;
            still_since = Instant::now();
        }
    }
    let noscript_before: u64 = servers.iter().map(|s| s.error_replies("NOSCRIPT")).sum();
    let before = script_calls(&servers);
    let guard = lock.try_lock().await.unwrap();
    // The grant returns once a majority granted; the other masters' calls land just after,
    // unless the machine is so loaded that they were dropped before being sent.
    let deadline = Instant::now() + Duration::from_secs(2);
    while script_calls(&servers)
        .iter()
        .zip(&before)
        .any(|(after, before)| after == before)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let calls: Vec<u64> = script_calls(&servers)
        .iter()
        .zip(&before)
        .map(|(after, before)| after - before)
        .collect();
    let noscript: u64 = servers.iter().map(|s| s.error_replies("NOSCRIPT")).sum();
    assert_eq!(
        noscript, noscript_before,
        "a cold script cache after the warm-up"
    );
    assert!(
        calls.iter().all(|&n| n <= 1) && calls.iter().sum::<u64>() >= 3,
        "script calls per master for one try_lock: {calls:?} (at most one each, a majority)"
    );
    // Every master the call reached granted, with the client's token as its counter and the
    // holder's fence: there was no second round trip to write them.
    let token = guard.fencing_token().to_string();
    for (server, _) in servers.iter().zip(&calls).filter(|(_, &n)| n == 1) {
        let counter: String = server.cmd("GET", &[&fence_key("one-trip")]);
        let fence: String = server.cmd("HGET", &[&info_key("one-trip"), "fence"]);
        assert_eq!((&counter, &fence), (&token, &token));
    }
    guard.release().await.unwrap();
}

/// Three clients take the lock in turns, `rounds` times each; inside, each checks that a
/// majority of masters hold its grant with the token as their counter and holder fence (so
/// the token is above what every granting master's counter was). Returns the tokens in grant
/// order.
async fn grants_by_three_clients(servers: &RedisServers, name: &str, rounds: usize) -> Vec<u64> {
    let tokens: Arc<Mutex<Vec<u64>>> = Arc::default();
    let mut workers = Vec::new();
    for _ in 0..3 {
        let c = redlock(servers).await;
        let options = LockOptions::new()
            .wait(Wait::Limit(Duration::from_secs(20)))
            .recheck(Duration::from_millis(50));
        let lock = c.lock_with(name, options).unwrap();
        let urls = servers.urls();
        let (tokens, name) = (tokens.clone(), name.to_owned());
        workers.push(tokio::spawn(async move {
            for _ in 0..rounds {
                let guard = lock.lock().await.unwrap();
                let token = guard.fencing_token();
                tokens.lock().unwrap().push(token);
                let holding = holding_masters(&urls, &name, token).await;
                assert!(holding >= 3, "token {token} held on {holding} masters");
                guard.release().await.unwrap();
            }
            c.flush().await;
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    let tokens = tokens.lock().unwrap().clone();
    for pair in tokens.windows(2) {
        assert!(
            pair[0] < pair[1],
            "{} then {}: {tokens:?}",
            pair[0],
            pair[1]
        );
    }
    tokens
}

/// How many masters record `token` as the holder's fence of `name`; each of them must also
/// have it as its counter (nothing above it: the master granted it).
async fn holding_masters(urls: &[String], name: &str, token: u64) -> usize {
    let mut holding = 0;
    for url in urls {
        let mut con = redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let fence: Option<u64> = redis::cmd("HGET")
            .arg(info_key(name))
            .arg("fence")
            .query_async(&mut con)
            .await
            .unwrap();
        if fence == Some(token) {
            let counter: u64 = redis::cmd("GET")
                .arg(fence_key(name))
                .query_async(&mut con)
                .await
                .unwrap();
            assert_eq!(counter, token, "{url}: a granting master's counter");
            holding += 1;
        }
    }
    holding
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_strictly_increase_when_one_masters_counter_is_far_ahead() {
    let servers = RedisServers::start(5);
    let hour_ahead = now_us() + 3_600_000_000;
    let _: () = servers[0].cmd("SET", &[&fence_key("skewed"), &hour_ahead.to_string()]);
    // The master ahead refuses the proposal and the other four grant it: its counter costs
    // its vote, not a retry, and does not drag the token an hour ahead.
    let c = redlock(&servers).await;
    let guard = c.lock("skewed").unwrap().try_lock().await.unwrap();
    let first = guard.fencing_token();
    assert!(first < hour_ahead, "{first}");
    guard.release().await.unwrap();
    c.flush().await;
    let counter: u64 = servers[0].cmd("GET", &[&fence_key("skewed")]);
    assert_eq!(counter, hour_ahead, "a refusal writes nothing");
    // Contended grants: a split vote (some masters still held, the one ahead refusing) may
    // retry above it, and the order holds either way.
    let tokens = grants_by_three_clients(&servers, "skewed", 10).await;
    assert!(tokens[0] > first, "{} after {first}", tokens[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_a_majority_is_ahead_the_retry_goes_above_every_counter() {
    let servers = RedisServers::start(5);
    let now = now_us();
    let ahead = [
        now + 1_800_000_000,
        now + 7_200_000_000,
        now + 3_600_000_000,
    ];
    for (server, counter) in servers.iter().zip(ahead) {
        let _: () = server.cmd("SET", &[&fence_key("ahead"), &counter.to_string()]);
    }
    // A first proposal at the clock is refused by three masters and granted by two (rolled
    // back); the retry goes above the largest counter, so all five grant it.
    let c = redlock(&servers).await;
    let guard = c.lock("ahead").unwrap().try_lock().await.unwrap();
    let first = guard.fencing_token();
    assert!(first > ahead[1], "{first} not above {}", ahead[1]);
    guard.release().await.unwrap();
    c.flush().await;
    // Every counter is now two hours ahead of the clients' clocks: each client's first
    // proposal is refused everywhere, and its retries keep the order.
    let tokens = grants_by_three_clients(&servers, "ahead", 10).await;
    assert!(tokens[0] > first, "{} after {first}", tokens[0]);
}

#[tokio::test]
async fn proposals_a_majority_always_refuses_end_in_an_error_and_leave_no_hold() {
    let servers = RedisServers::start(5);
    // Counters no proposal can pass (as compared in Lua, i64::MAX + 1 is i64::MAX).
    for server in servers.iter().take(3) {
        let _: () = server.cmd("SET", &[&fence_key("stuck"), &i64::MAX.to_string()]);
    }
    let c = redlock(&servers).await;
    let err = c.lock("stuck").unwrap().try_lock().await.unwrap_err();
    assert!(!err.is_conflict(), "not busy: {err}");
    assert!(err.to_string().contains("fencing"), "{err}");
    c.flush().await;
    for server in servers.iter() {
        assert_eq!(
            server.cmd::<i64>("EXISTS", &["stuck"]),
            0,
            "a partial grant left"
        );
    }
}

/// The first proposal is granted by one of the two live masters of three and refused by the
/// other; the retry needs both, so the partial grant must be undone before it goes out
/// (undone only in the background, our own old hold there answered "busy").
#[tokio::test]
async fn a_retry_is_not_refused_by_its_own_partial_grant() {
    let mut servers = RedisServers::start(3);
    servers[2].kill();
    let ahead = now_us() + 3_600_000_000;
    let _: () = servers[0].cmd("SET", &[&fence_key("retry"), &ahead.to_string()]);
    let c = redlock(&servers).await;
    let guard = c.lock("retry").unwrap().try_lock().await.unwrap();
    assert!(guard.fencing_token() > ahead, "{}", guard.fencing_token());
    guard.release().await.unwrap();
}

/// A Redlock attempt refused by every master (the lock is held) sends no undo: each master's
/// busy answer says the script ran and granted nothing. It used to release its token on every
/// master in the background, doubling a waiter's script calls while the lock was held.
#[tokio::test]
async fn a_refused_attempt_sends_no_undo_to_the_masters_that_refused_it() {
    let servers = RedisServers::start(3);
    let a = redlock(&servers).await;
    let b = redlock(&servers).await;
    let holder = a.lock("held").unwrap().try_lock().await.unwrap();
    let lock = b.lock("held").unwrap();
    // Warm up b's connections and script cache, then count one refused attempt.
    assert!(lock.try_lock().await.unwrap_err().is_conflict());
    b.flush().await;
    let before = script_calls(&servers);
    assert!(lock.try_lock().await.unwrap_err().is_conflict());
    b.flush().await;
    let calls: Vec<u64> = script_calls(&servers)
        .iter()
        .zip(&before)
        .map(|(after, before)| after - before)
        .collect();
    // At least a majority answered busy before the attempt gave up: those get nothing more. A
    // master still silent then may have granted (its undo is right), so it may see two calls.
    let attempt_only = calls.iter().filter(|&&n| n == 1).count();
    assert!(
        attempt_only >= 2 && calls.iter().all(|&n| n <= 2),
        "script calls per master for one refused try_lock: {calls:?} (the attempt only, on a \
         majority at least)"
    );
    holder.release().await.unwrap();
}
