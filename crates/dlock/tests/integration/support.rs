//! Helpers shared by the integration tests.

use std::time::Duration;

use dlock::{Client, ClientOptions, LockOptions};
use dlock_test::RedisServer;

/// A client of `server` with a short command timeout, so fault tests stay quick.
pub async fn client(server: &RedisServer) -> Client {
    Client::connect_with(
        &server.url(),
        ClientOptions::new().command_timeout(Duration::from_millis(500)),
    )
    .await
    .expect("connect to the test server")
}

/// Lock options with `ttl` (renewed).
pub fn ttl(ttl: Duration) -> LockOptions {
    LockOptions::new().ttl(ttl)
}

/// Takes `name` on `client` (it must be free) and releases it: the "does this lock work at
/// all" step many tests need.
pub async fn take_and_release(client: &Client, name: &str) {
    let guard = client.lock(name).unwrap().try_lock().await.unwrap();
    guard.release().await.unwrap();
}

/// Waits (up to a second) until the runtime has `expected` live tasks, and returns the count
/// then: background tasks that finished their work (a flush's waiter, a release) may need a
/// scheduler turn to end, but a leaked one never does.
pub async fn settled_task_count(expected: usize) -> usize {
    let metrics = tokio::runtime::Handle::current().metrics();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        let alive = metrics.num_alive_tasks();
        if alive == expected || tokio::time::Instant::now() >= deadline {
            return alive;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
