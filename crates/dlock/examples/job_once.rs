//! The seeds' scenario with the library: two copies of a one-second job start at once; the
//! lock lets exactly one run, and the other is refused.
//!
//! `DLOCK_REDIS_URL=redis://127.0.0.1:6379/ cargo run -p dlock --example job_once`

use std::time::Duration;

use dlock::{Client, LockOptions};

async fn run_job(copy: u32, url: String) -> Result<(), dlock::Error> {
    let client = Client::connect(&url).await?;
    let lock = client.lock_with(
        "main:hello",
        LockOptions::new().label(format!("copy {copy}")),
    )?;
    match lock.try_lock().await {
        Ok(guard) => {
            tokio::time::sleep(Duration::from_secs(1)).await; // simulate a long-running task
            println!(
                "copy {copy}: ***hello, world*** (fencing token {})",
                guard.fencing_token()
            );
            guard.release().await
        }
        Err(dlock::Error::Conflict(busy)) => {
            println!("copy {copy}: Another process is already running main:hello ({busy})");
            Ok(())
        }
        Err(other) => Err(other),
    }
}

#[tokio::main]
async fn main() -> Result<(), dlock::Error> {
    let url = std::env::var("DLOCK_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1/".into());
    let (a, b) = tokio::join!(run_job(1, url.clone()), run_job(2, url));
    a.and(b)
}
