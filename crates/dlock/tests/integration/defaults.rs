//! The documented defaults, exercised at their defaults (no option set): `lock()` waits 30 s
//! at most, and a silent Redis costs a call 2 s. Both run on tokio's paused clock against a
//! real server, so a 30 s wait takes a second or two.
//!
//! A paused clock jumps to the next timer whenever the runtime is idle, which would also
//! expire a command's timeout while its reply is on the way. So I/O runs with that
//! auto-advance held off ([`real_time`]), and the clock is moved by hand; only where no reply
//! can come (a SIGSTOPped server) is the jump itself the point.

use std::future::Future;
use std::time::Duration;

use dlock::{Client, Error, DEFAULT_COMMAND_TIMEOUT, DEFAULT_WAIT};
use dlock_test::RedisServer;
use tokio::time::Instant;

use crate::support::take_and_release;

/// Runs `work` with the paused clock's auto-advance held off (a blocking task is running
/// meanwhile, which tokio counts as work in progress), so real replies arrive in time.
async fn real_time<F: Future>(work: F) -> F::Output {
    let (done, wait) = std::sync::mpsc::channel::<()>();
    let holder = tokio::task::spawn_blocking(move || {
        let _ = wait.recv();
    });
    let output = work.await;
    drop(done);
    holder.await.unwrap();
    output
}

/// Lets a few milliseconds of real time pass (for replies in flight) without moving the
/// paused clock.
async fn let_io_happen() {
    tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(5)))
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_silent_redis_costs_a_call_the_default_command_timeout() {
    assert_eq!(
        DEFAULT_COMMAND_TIMEOUT,
        Duration::from_secs(2),
        "the documented default"
    );
    let mut server = RedisServer::start();
    let c = real_time(Client::connect(&server.url())).await.unwrap();
    real_time(take_and_release(&c, "warm")).await;
    let lock = c.lock("job").unwrap();
    // SIGSTOP: the connection stays open and nothing answers.
    server.pause();
    let started = Instant::now();
    let outcome = tokio::time::timeout(DEFAULT_COMMAND_TIMEOUT * 2, lock.try_lock()).await;
    let took = started.elapsed();
    server.resume();
    let err = outcome.expect("the call has a deadline").unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    // The paused clock jumps straight to the deadline: exactly the default, give or take the
    // clock's millisecond.
    assert!(
        took >= DEFAULT_COMMAND_TIMEOUT
            && took <= DEFAULT_COMMAND_TIMEOUT + Duration::from_millis(1),
        "a silent server cost {took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn lock_gives_up_after_the_default_thirty_seconds() {
    assert_eq!(
        DEFAULT_WAIT,
        Duration::from_secs(30),
        "the documented default"
    );
    let server = RedisServer::start();
    // Held for ten minutes by another tool: nothing will free it during the wait.
    let _: () = server.cmd("SET", &["job", "another-tool", "PX", "600000"]);
    let c = real_time(Client::connect(&server.url())).await.unwrap();
    let lock = c.lock("job").unwrap();
    let step = Duration::from_millis(100);
    let started = Instant::now();
    let waiter = tokio::spawn(async move { lock.lock().await });
    let finished_at = real_time(async {
        while !waiter.is_finished() {
            assert!(
                started.elapsed() < DEFAULT_WAIT * 2,
                "lock() still waiting after {:?}",
                started.elapsed()
            );
            tokio::time::advance(step).await;
            let_io_happen().await;
        }
        Instant::now()
    })
    .await;
    match waiter.await.unwrap() {
        Err(Error::Timeout { waited, .. }) => {
            assert!(
                waited >= DEFAULT_WAIT && waited < DEFAULT_WAIT + step,
                "waited {waited:?}"
            );
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    let took = finished_at - started;
    assert!(
        took >= DEFAULT_WAIT && took <= DEFAULT_WAIT + step,
        "gave up after {took:?}"
    );
}
