//! Redlock on five masters with one dead and one frozen (SIGSTOP): every primitive Redlock
//! offers keeps its guarantees on the three left (a majority), and the frozen master costs
//! each operation at most one command timeout.

use std::time::Duration;

use dlock::{Client, ClientOptions, LockOptions, Wait};
use dlock_test::RedisServers;
use tokio::time::{timeout, Instant};

/// The per-node timeout: what the frozen master may cost one operation.
const TIMEOUT: Duration = Duration::from_millis(300);
/// Scheduling slack on a loaded machine, on top of [`TIMEOUT`].
const SLACK: Duration = Duration::from_millis(400);
/// Leases short enough that "renewed past three TTLs" takes seconds.
const TTL: Duration = Duration::from_secs(1);

/// Five masters with the first one dead, and two clients of them.
async fn five_with_the_first_dead() -> (RedisServers, Client, Client) {
    let mut servers = RedisServers::start(5);
    servers[0].kill();
    let options = ClientOptions::new()
        .command_timeout(TIMEOUT)
        .connect_timeout(Duration::from_secs(1));
    let a = Client::redlock_with(&servers.urls(), options.clone())
        .await
        .unwrap();
    let b = Client::redlock_with(&servers.urls(), options)
        .await
        .unwrap();
    (servers, a, b)
}

/// Long re-checks, so a waiter granted soon after a release was woken, not polling.
fn options() -> LockOptions {
    LockOptions::new()
        .ttl(TTL)
        .wait(Wait::Limit(Duration::from_secs(20)))
        .recheck(Duration::from_secs(15))
}

/// Waits until a live master has a subscriber on a channel naming `name` (a waiter listens).
async fn someone_listens(servers: &RedisServers, name: &str) {
    someone_listens_on(&servers[2], name).await;
}

/// Waits until `server` has a subscriber on a channel naming `name`.
async fn someone_listens_on(server: &dlock_test::RedisServer, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let channels: Vec<String> = server.cmd("PUBSUB", &["CHANNELS", "*"]);
        if channels.iter().any(|c| c.ends_with(&format!(":{name}"))) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no waiter subscribed: {channels:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Asserts that no live master still holds any key of `name`.
fn nothing_left(servers: &RedisServers, name: &str) {
    for (index, server) in servers.iter().enumerate().skip(1) {
        let keys: Vec<String> = server.cmd("KEYS", &[&format!("*{name}")]);
        let held: Vec<&String> = keys.iter().filter(|k| !k.contains(":fence:")).collect();
        assert!(held.is_empty(), "master {index} still has {held:?}");
    }
}

#[tokio::test]
async fn a_lock_is_granted_excluded_renewed_handed_on_and_fenced() {
    let (mut servers, a, b) = five_with_the_first_dead().await;
    let warm = a.lock("job").unwrap().try_lock().await.unwrap();
    let first = warm.fencing_token();
    warm.release().await.unwrap();
    servers[1].pause();

    let started = Instant::now();
    let held = a
        .lock_with("job", options())
        .unwrap()
        .try_lock()
        .await
        .unwrap();
    assert!(
        started.elapsed() < TIMEOUT + SLACK,
        "{:?}",
        started.elapsed()
    );
    assert!(held.fencing_token() > first);
    let refused = b.lock_with("job", options()).unwrap().try_lock().await;
    assert!(refused.unwrap_err().is_conflict());
    assert!(
        timeout(TTL * 3, held.lost()).await.is_err(),
        "lost although three masters of five answer: {:?}",
        held.status()
    );

    // A long lease from here: a waiter also looks again when the holder's lease would end.
    held.extend(Duration::from_secs(30)).await.unwrap();
    let waiter = b.lock_with("job", options()).unwrap();
    let waiting = tokio::spawn(async move { waiter.lock().await });
    someone_listens(&servers, "job").await;
    let released = Instant::now();
    let token = held.fencing_token();
    held.release().await.unwrap();
    let next = waiting.await.unwrap().unwrap();
    assert!(
        released.elapsed() < TIMEOUT * 2 + SLACK,
        "the waiter was not woken: granted {:?} after the release",
        released.elapsed()
    );
    assert!(next.fencing_token() > token);

    servers[1].resume();
    next.release().await.unwrap();
    a.flush().await;
    b.flush().await;
    nothing_left(&servers, "job");
}

#[tokio::test]
async fn a_reentrant_lock_nests_excludes_renews_and_wakes_the_next_owner() {
    let (mut servers, a, b) = five_with_the_first_dead().await;
    servers[1].pause();
    let owner = dlock::Owner::new().unwrap();
    let lock = a.reentrant_lock_with("ledger", options()).unwrap();
    let started = Instant::now();
    let outer = lock.try_lock(&owner).await.unwrap();
    let inner = outer.reenter().await.unwrap();
    assert!(
        started.elapsed() < (TIMEOUT + SLACK) * 2,
        "{:?}",
        started.elapsed()
    );
    assert_eq!(inner.fencing_token(), outer.fencing_token());
    let theirs = b.reentrant_lock_with("ledger", options()).unwrap();
    let other = dlock::Owner::new().unwrap();
    assert!(theirs.try_lock(&other).await.unwrap_err().is_conflict());
    assert!(
        timeout(TTL * 3, outer.lost()).await.is_err(),
        "lost although three masters of five answer: {:?}",
        outer.status()
    );

    let waiting = tokio::spawn(async move { theirs.lock(&other).await });
    someone_listens(&servers, "ledger").await;
    inner.release().await.unwrap();
    assert!(!waiting.is_finished(), "the outer hold is left");
    let token = outer.fencing_token();
    let released = Instant::now();
    outer.release().await.unwrap();
    let next = waiting.await.unwrap().unwrap();
    assert!(
        released.elapsed() < TIMEOUT * 2 + SLACK,
        "the waiter was not woken: granted {:?} after the release",
        released.elapsed()
    );
    assert!(next.fencing_token() > token);

    servers[1].resume();
    next.release().await.unwrap();
    a.flush().await;
    b.flush().await;
    nothing_left(&servers, "ledger");
}

#[tokio::test]
async fn a_one_permit_semaphore_keeps_its_limit_renews_and_wakes_its_waiter() {
    let (mut servers, a, b) = five_with_the_first_dead().await;
    let warm = a.semaphore("pool", 1).unwrap().try_acquire().await.unwrap();
    let first = warm.fencing_token();
    warm.release().await.unwrap();
    servers[1].pause();

    let started = Instant::now();
    let semaphore = a.semaphore_with("pool", 1, options()).unwrap();
    let held = semaphore.try_acquire().await.unwrap();
    assert!(
        started.elapsed() < TIMEOUT * 2 + SLACK,
        "{:?}",
        started.elapsed()
    );
    assert!(held.fencing_token() > first);
    let other = b.semaphore_with("pool", 1, options()).unwrap();
    assert!(other.try_acquire().await.unwrap_err().is_conflict());
    assert!(
        timeout(TTL * 3, held.lost()).await.is_err(),
        "lost although three masters of five answer: {:?}",
        held.status()
    );

    // A long lease from here: a waiter also looks again when the holder's lease would end.
    held.extend(Duration::from_secs(30)).await.unwrap();
    let waiting = tokio::spawn(async move { other.acquire().await });
    someone_listens(&servers, "pool").await;
    let released = Instant::now();
    let token = held.fencing_token();
    held.release().await.unwrap();
    let next = waiting.await.unwrap().unwrap();
    assert!(
        released.elapsed() < TIMEOUT * 3 + SLACK,
        "the waiter was not woken: granted {:?} after the release",
        released.elapsed()
    );
    assert!(next.fencing_token() > token);

    servers[1].resume();
    next.release().await.unwrap();
    a.flush().await;
    b.flush().await;
    nothing_left(&servers, "pool");
}

/// Two permits need more than 5·2/3 masters, four of five: with three left they are refused,
/// promptly, as unavailable rather than busy, and nothing is left held.
#[tokio::test]
async fn a_two_permit_semaphore_is_refused_as_unavailable_within_a_timeout() {
    let (mut servers, a, _) = five_with_the_first_dead().await;
    servers[1].pause();
    let started = Instant::now();
    let semaphore = a.semaphore_with("pool", 2, options()).unwrap();
    let err = semaphore.try_acquire().await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert!(
        err.to_string().contains("needs 4 of 5"),
        "the error says how many masters a grant needs: {err}"
    );
    assert!(
        started.elapsed() < TIMEOUT * 2 + SLACK,
        "{:?}",
        started.elapsed()
    );
    servers[1].resume();
    a.flush().await;
    nothing_left(&servers, "pool");
}

#[tokio::test]
async fn a_multi_key_lock_takes_every_member_and_excludes_each() {
    let (mut servers, a, b) = five_with_the_first_dead().await;
    servers[1].pause();
    let started = Instant::now();
    let both = a.multi_lock_with(&["left", "right"], options()).unwrap();
    let held = both.try_lock().await.unwrap();
    // Members are taken one at a time on Redlock: one timeout each, at most.
    assert!(
        started.elapsed() < TIMEOUT * 2 + SLACK,
        "{:?}",
        started.elapsed()
    );
    for name in ["left", "right"] {
        let refused = b.lock_with(name, options()).unwrap().try_lock().await;
        assert!(refused.unwrap_err().is_conflict(), "{name} was not held");
    }
    assert!(
        timeout(TTL * 3, held.lost()).await.is_err(),
        "lost although three masters of five answer"
    );
    held.release().await.unwrap();
    servers[1].resume();
    a.flush().await;
    nothing_left(&servers, "left");
    nothing_left(&servers, "right");
}

/// An extend that waits for the frozen master (one command timeout) overlaps a renewal of the
/// same lease. The renewal, built with the old TTL and sent after the extend, used to reach
/// the masters after it and undo it, while its reply (the most recently sent) won on the
/// client: `extend` returned `Ok` and the lease went on at the old length. The same overlap
/// with the other order of arrival would leave the client believing in a longer lease than the
/// masters keep. Extends and renewals of one lease no longer overlap.
#[tokio::test]
async fn an_extend_that_waits_for_the_frozen_master_is_not_undone_by_a_renewal() {
    let (mut servers, a, _) = five_with_the_first_dead().await;
    // Renewed every 300 ms: a renewal was due while the extend waited for the frozen master
    // (300 ms); long enough that a loaded machine does not lose the lease meanwhile.
    let short = Duration::from_millis(900);
    // Frozen before the grant, so the grant is on all three live masters (a grant may reach a
    // bare majority only, and then one of those not answering leaves the extend undecided).
    servers[1].pause();
    let guard = a
        .lock_with("job", LockOptions::new().ttl(short))
        .unwrap()
        .try_lock()
        .await
        .unwrap();
    let long = Duration::from_secs(30);
    guard.extend(long).await.unwrap();
    // A few renewal intervals of the old length later, the new length stands everywhere.
    tokio::time::sleep(short * 3).await;
    assert_eq!(guard.ttl(), long);
    assert!(guard.is_held());
    for server in servers.iter().skip(2) {
        let pttl: i64 = server.cmd("PTTL", &["job"]);
        assert!(pttl > 20_000, "the extend was undone: PTTL {pttl} ms");
    }
    servers[1].resume();
    guard.release().await.unwrap();
}

/// A waiter behind a lock held on every live master, with one master of three dead, sleeps
/// until woken. The attempt stopped listening once a grant was out of reach (one busy answer
/// and the dead master), so it saw the holder on one master only, took that for a split vote
/// (nobody on a majority, so nobody would publish a release) and retried every 10–60 ms for
/// as long as the lock was held.
#[tokio::test]
async fn a_waiter_with_a_dead_master_sleeps_until_woken() {
    let mut servers = RedisServers::start(3);
    servers[0].kill();
    let options = ClientOptions::new().command_timeout(TIMEOUT);
    let a = Client::redlock_with(&servers.urls(), options.clone())
        .await
        .unwrap();
    let b = Client::redlock_with(&servers.urls(), options)
        .await
        .unwrap();
    let long = options_with_ttl(Duration::from_secs(30));
    let held = a
        .lock_with("job", long.clone())
        .unwrap()
        .try_lock()
        .await
        .unwrap();
    let waiter = b.lock_with("job", long).unwrap();
    let waiting = tokio::spawn(async move { waiter.lock().await });
    someone_listens_on(&servers[1], "job").await;
    let before = servers[1].command_calls("evalsha");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let calls = servers[1].command_calls("evalsha") - before;
    assert!(calls <= 3, "the waiter polled: {calls} script calls in 1 s");
    let released = Instant::now();
    held.release().await.unwrap();
    let next = waiting.await.unwrap().unwrap();
    assert!(
        released.elapsed() < TIMEOUT + SLACK,
        "{:?}",
        released.elapsed()
    );
    next.release().await.unwrap();
}

fn options_with_ttl(ttl: Duration) -> LockOptions {
    options().ttl(ttl)
}
