//! The blocking API from plain synchronous code: no tokio in the caller.

use std::time::{Duration, Instant};

use dlock::blocking::Client;
use dlock::{LockOptions, Wait};
use dlock_test::RedisServer;

#[test]
fn the_blocking_api_works_from_plain_synchronous_code() {
    let server = RedisServer::start();
    let a = Client::connect(&server.url()).unwrap();
    let b = Client::connect(&server.url()).unwrap();
    let guard = a
        .lock_with("sync", LockOptions::new().ttl(Duration::from_secs(1)))
        .unwrap()
        .try_lock()
        .unwrap();
    assert!(b
        .lock("sync")
        .unwrap()
        .try_lock()
        .unwrap_err()
        .is_conflict());
    // The caller's thread sleeps; the client's own runtime thread renews the 1 s lease.
    std::thread::sleep(Duration::from_secs(3));
    assert!(guard.is_held(), "{:?}", guard.status());
    assert!(b.status("sync").unwrap().held);
    guard.extend(Duration::from_secs(5)).unwrap();

    let waiter = b
        .lock_with(
            "sync",
            LockOptions::new().wait(Wait::Limit(Duration::from_secs(10))),
        )
        .unwrap();
    let handle = std::thread::spawn(move || {
        let started = Instant::now();
        let guard = waiter.lock().unwrap();
        (started.elapsed(), guard.fencing_token(), guard.release())
    });
    std::thread::sleep(Duration::from_millis(300));
    let first_token = guard.fencing_token();
    guard.release().unwrap();
    let (waited, token, released) = handle.join().unwrap();
    assert!(waited >= Duration::from_millis(300));
    assert!(token > first_token);
    released.unwrap();
    assert_eq!(a.held_locks(), 0);
}

#[test]
fn dropping_a_blocking_guard_and_client_releases_the_lock() {
    let server = RedisServer::start();
    {
        let client = Client::connect(&server.url()).unwrap();
        let guard = client.lock("sync").unwrap().try_lock().unwrap();
        assert!(guard.is_held());
        // Both dropped here: the client's runtime sends the release before it shuts down.
    }
    let exists: i64 = server.cmd("EXISTS", &["sync"]);
    assert_eq!(exists, 0);
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    assert!(Client::connect("not a url").unwrap_err().is_config());
    let server = RedisServer::start();
    let client = Client::connect(&server.url()).unwrap();
    assert!(client.lock("").unwrap_err().is_config());
}

#[tokio::test]
async fn calling_it_from_inside_an_async_runtime_is_a_config_error() {
    let server = RedisServer::start();
    let err = Client::connect(&server.url()).unwrap_err();
    assert!(err.is_config(), "{err:?}");
    assert!(err.to_string().contains("dlock::Client"), "{err}");
}

#[test]
fn a_blocking_client_dropped_inside_an_async_runtime_does_not_panic() {
    let server = RedisServer::start();
    let client = Client::connect(&server.url()).unwrap();
    let guard = client.lock("sync").unwrap().try_lock().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        assert!(guard
            .extend(Duration::from_secs(5))
            .unwrap_err()
            .is_config());
        drop(guard);
        drop(client);
    });
}
