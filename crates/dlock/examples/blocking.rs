//! The blocking API from a plain `fn main()`: no async, no tokio in this program.
//!
//! `DLOCK_REDIS_URL=redis://127.0.0.1:6379/ cargo run -p dlock --example blocking`

use std::time::Duration;

fn main() -> Result<(), dlock::Error> {
    let url = std::env::var("DLOCK_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1/".into());
    let client = dlock::blocking::Client::connect(&url)?;
    let lock = client.lock("examples:blocking")?;
    let guard = lock.lock()?;
    println!("holding the lock, fencing token {}", guard.fencing_token());
    std::thread::sleep(Duration::from_millis(500)); // the work
    guard.release()?;
    println!("released");
    Ok(())
}
