//! Compile-time checks: guards move into spawned tasks; every future is Send.

use dlock::{Client, Lock, LockGuard};

fn send<T: Send>(_: &T) {}
fn send_sync_static<T: Send + Sync + 'static>() {}

#[allow(dead_code, unused_must_use, clippy::let_underscore_future)]
fn futures_are_send(client: Client, lock: Lock, guard: LockGuard) {
    send(&Client::connect("redis://127.0.0.1/"));
    send(&client.status("k"));
    send(&client.force_release("k"));
    send(&client.flush());
    send(&lock.try_lock());
    send(&lock.lock());
    send(&guard.extend(std::time::Duration::from_secs(1)));
    send(&guard.lost());
    send(&guard.release());
}

#[test]
fn guards_and_handles_are_send_sync_static() {
    send_sync_static::<Client>();
    send_sync_static::<Lock>();
    send_sync_static::<LockGuard>();
    send_sync_static::<dlock::Error>();
}
