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
