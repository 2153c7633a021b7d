//! Mutual exclusion, conflicts with holder info, waiting, status and forced release.

use std::time::Duration;

use dlock::{Error, LockOptions, Wait};
use dlock_test::RedisServer;

use crate::support::{client, ttl};

#[tokio::test]
async fn second_owner_gets_a_conflict_naming_the_holder_and_ttl() {
    let server = RedisServer::start();
    let a = client(&server).await;
    let b = client(&server).await;
    let options = ttl(Duration::from_secs(10)).label("rake main:hello");
    let guard = a
        .lock_with("main:hello", options.clone())
        .unwrap()
        .try_lock()
        .await
        .unwrap();

    let err = b
        .lock_with("main:hello", options)
        .unwrap()
        .try_lock()
        .await
        .unwrap_err();
    let Error::Conflict(conflict) = &err else {
        panic!("expected a conflict, got {err:?}")
    };
    assert_eq!(conflict.key, "main:hello");
    let ttl_left = conflict.ttl_left.expect("a dlock lock always has a TTL");
    assert!(ttl_left > Duration::from_secs(8) && ttl_left <= Duration::from_secs(10));
    let holder = conflict.holder.as_ref().expect("dlock writes holder info");
    assert_eq!(holder.pid, Some(std::process::id()));
    assert_eq!(holder.label.as_deref(), Some("rake main:hello"));
    assert_eq!(holder.fencing_token, guard.fencing_token());
    assert!(!holder.host.is_empty());
    assert!(
        err.to_string()
            .contains(&format!("pid {}", std::process::id())),
        "{err}"
    );

    guard.release().await.unwrap();
    let again = b.lock("main:hello").unwrap().try_lock().await.unwrap();
    again.release().await.unwrap();
}

#[tokio::test]
async fn the_plain_lock_is_not_reentrant() {
    let server = RedisServer::start();
    let c = client(&server).await;
    let lock = c
        .lock_with(
            "k",
            LockOptions::new().wait(Wait::Limit(Duration::from_millis(200))),
        )
        .unwrap();
    let guard = lock.try_lock().await.unwrap();
    assert!(lock.try_lock().await.unwrap_err().is_conflict());
    let waited = lock.lock().await.unwrap_err();
    assert!(waited.is_timeout(), "{waited:?}");
    guard.release().await.unwrap();
}

#[tokio::test]
async fn a_lock_set_by_another_tool_excludes_dlock_and_vice_versa() {
    let server = RedisServer::start();
    let c = client(&server).await;
    // The seeds' Rake task: SET name 1 EX 60 NX.
    let _: () = server.cmd("SET", &["main:hello", "1", "EX", "60", "NX"]);
    let err = c.lock("main:hello").unwrap().try_lock().await.unwrap_err();
    let conflict = err.conflict().expect("conflict");
    assert!(
        conflict.holder.is_none(),
        "another tool writes no holder info"
    );
    assert!(conflict.ttl_left.is_some());
    let _: () = server.cmd("DEL", &["main:hello"]);

    let guard = c.lock("main:hello").unwrap().try_lock().await.unwrap();
    let taken: Option<String> = server.cmd("SET", &["main:hello", "1", "EX", "60", "NX"]);
    assert_eq!(
        taken, None,
        "the other tool's SET NX must fail while dlock holds the lock"
    );
    let value: String = server.cmd("GET", &["main:hello"]);
    assert_eq!(value.len(), 32, "the key holds a plain 128-bit hex token");
    guard.release().await.unwrap();
}

#[tokio::test]
async fn lock_waits_for_a_release_and_times_out_when_none_comes() {
    let server = RedisServer::start();
    let a = client(&server).await;
    let b = client(&server).await;
    let holder = a.lock("job").unwrap().try_lock().await.unwrap();
    let waiter = b
        .lock_with(
            "job",
            LockOptions::new().wait(Wait::Limit(Duration::from_secs(10))),
        )
        .unwrap();
    let waiting = tokio::spawn(async move { waiter.lock().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiting.is_finished(),
        "the waiter must not get a held lock"
    );
    holder.release().await.unwrap();
    let guard = waiting.await.unwrap().expect("granted after the release");
    assert!(guard.is_held());

    let impatient = a
        .lock_with(
            "job",
            LockOptions::new().wait(Wait::Limit(Duration::from_millis(300))),
        )
        .unwrap();
    let started = tokio::time::Instant::now();
    let err = impatient.lock().await.unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(300));
    let Error::Timeout { key, waited, last } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(key, "job");
    assert!(*waited >= Duration::from_millis(300));
    assert_eq!(
        last.holder.as_ref().map(|h| h.fencing_token),
        Some(guard.fencing_token())
    );
    guard.release().await.unwrap();
}

#[tokio::test]
async fn status_reports_holder_and_force_release_breaks_the_lock() {
    let server = RedisServer::start();
    let c = client(&server).await;
    let free = c.status("s").await.unwrap();
    assert!(!free.held && free.holder.is_none() && free.ttl_left.is_none());
    assert_eq!(free.last_fencing_token, None);

    let guard = c
        .lock_with("s", ttl(Duration::from_secs(3)).label("nightly"))
        .unwrap()
        .try_lock()
        .await
        .unwrap();
    let held = c.status("s").await.unwrap();
    assert!(held.held);
    assert!(held.ttl_left.unwrap() > Duration::from_secs(2));
    let holder = held.holder.clone().unwrap();
    assert_eq!(holder.label.as_deref(), Some("nightly"));
    assert_eq!(held.last_fencing_token, Some(guard.fencing_token()));

    let broken = c.force_release("s").await.unwrap();
    assert!(broken.held);
    assert_eq!(
        broken.holder.map(|h| (h.label, h.fencing_token)),
        Some((holder.label, holder.fencing_token))
    );
    assert!(!c.status("s").await.unwrap().held);
    // Renewal runs every ttl/3 = 1 s: the loss is seen within that.
    let reason = tokio::time::timeout(Duration::from_millis(1500), guard.lost()).await;
    assert_eq!(
        reason.expect("loss within one renewal interval"),
        dlock::LossReason::KeyGone
    );
    assert!(guard.release().await.unwrap_err().is_lost());
}

#[tokio::test]
async fn list_finds_held_locks_by_pattern_through_scan() {
    let server = RedisServer::start();
    let c = client(&server).await;
    // Unrelated keys, and a lock held by another tool (no holder info): not listed.
    for i in 0..3000 {
        let _: () = server.cmd("SET", &[&format!("noise:{i}"), "x"]);
    }
    let _: () = server.cmd("SET", &["jobs:foreign", "1", "EX", "60"]);
    let mut guards = Vec::new();
    for name in ["jobs:a", "jobs:b", "{user:1}:jobs", "other"] {
        guards.push(c.lock(name).unwrap().try_lock().await.unwrap());
    }
    let names = |list: Vec<dlock::LockStatus>| list.into_iter().map(|s| s.key).collect::<Vec<_>>();
    assert_eq!(names(c.list("jobs:*").await.unwrap()), ["jobs:a", "jobs:b"]);
    assert_eq!(
        names(c.list("*").await.unwrap()),
        ["jobs:a", "jobs:b", "other", "{user:1}:jobs"]
    );
    let all = c.list("*").await.unwrap();
    assert!(all.iter().all(|s| s.held && s.holder.is_some()));
    assert_eq!(server.command_calls("keys"), 0, "list must never use KEYS");
    assert!(
        server.command_calls("scan") >= 2,
        "3000+ keys take several SCAN steps"
    );
    guards.pop().unwrap().release().await.unwrap();
    assert_eq!(names(c.list("oth*").await.unwrap()), Vec::<String>::new());
}
