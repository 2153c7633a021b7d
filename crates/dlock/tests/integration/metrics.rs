//! The `metrics` facade: a recorder installed by the application sees every acquisition by
//! outcome, wait and hold times, losses by reason and renewal round trips; the lock's name is
//! a label only when the client opts in.

use std::time::Duration;

use dlock::{Client, ClientOptions, LockOptions, Wait};
use dlock_test::RedisServer;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::MetricKind;

/// One snapshot (taking one drains the recorder's histograms).
type Snapshot = Vec<(
    metrics_util::CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)>;

/// The values of the metrics `name` whose labels include every pair of `labels`.
fn find<'a>(snapshot: &'a Snapshot, name: &str, labels: &[(&str, &str)]) -> Vec<&'a DebugValue> {
    snapshot
        .iter()
        .filter(|(key, ..)| {
            key.key().name() == name
                && labels.iter().all(|(k, v)| {
                    key.key()
                        .labels()
                        .any(|label| label.key() == *k && label.value() == *v)
                })
        })
        .map(|(_, _, _, value)| value)
        .collect()
}

fn recorder_snapshot(taker: &Snapshotter) -> Snapshot {
    taker.snapshot().into_vec()
}

fn counter(snapshot: &Snapshot, name: &str, labels: &[(&str, &str)]) -> u64 {
    find(snapshot, name, labels)
        .into_iter()
        .map(|value| match value {
            DebugValue::Counter(n) => *n,
            other => panic!("{name} is not a counter: {other:?}"),
        })
        .sum()
}

fn samples(snapshot: &Snapshot, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    find(snapshot, name, labels)
        .into_iter()
        .flat_map(|value| match value {
            DebugValue::Histogram(values) => {
                values.iter().map(|v| v.into_inner()).collect::<Vec<_>>()
            }
            other => panic!("{name} is not a histogram: {other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn a_recorder_sees_acquisitions_waits_holds_losses_and_renewals() {
    // The test binary's only global recorder (nextest runs each test in its own process; under
    // plain cargo test, other tests' series differ by their lock names).
    let recorder = DebuggingRecorder::new();
    let taker = recorder.snapshotter();
    recorder.install().expect("no other recorder");

    let server = RedisServer::start();
    let named = Client::connect_with(&server.url(), ClientOptions::new().metrics_name_label(true))
        .await
        .unwrap();
    let name = format!("metrics:{:x}", fastrand::u64(..));
    let short = LockOptions::new()
        .ttl(Duration::from_millis(600))
        .wait(Wait::Limit(Duration::from_millis(100)));
    let lock = named.lock_with(&name, short.clone()).unwrap();

    let guard = lock.try_lock().await.unwrap();
    let other = named.lock_with(&name, short.clone()).unwrap();
    assert!(other.try_lock().await.is_err(), "busy");
    let waited = other.lock().await.unwrap_err();
    assert_eq!(waited.kind(), dlock::ErrorKind::Timeout, "{waited:?}");
    let held_for = Duration::from_millis(250);
    tokio::time::sleep(held_for).await;
    guard.release().await.unwrap();

    // A lease lost: its key deleted behind its back, found gone at the next renewal.
    let doomed = lock.try_lock().await.unwrap();
    let _: () = server.cmd("DEL", &[name.as_str()]);
    tokio::time::timeout(Duration::from_secs(5), doomed.lost())
        .await
        .expect("the loss is reported");

    // A loss found only at release (review: it was counted as a release).
    let unlucky = lock.try_lock().await.unwrap();
    let _: () = server.cmd("DEL", &[name.as_str()]);
    assert!(
        unlucky.release().await.is_err(),
        "the release finds the loss"
    );

    // A wait whose future the caller drops.
    let blocker = lock.try_lock().await.unwrap();
    let patient = named
        .lock_with(&name, short.clone().wait(Wait::Forever))
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(50), patient.lock())
            .await
            .is_err(),
        "still waiting"
    );
    blocker.release().await.unwrap();

    let semaphore = named.semaphore(&format!("{name}:sem"), 2).unwrap();
    let permit = semaphore.try_acquire().await.unwrap();
    permit.release().await.unwrap();

    let snapshot = recorder_snapshot(&taker);

    let lock_with = |outcome: &'static str| {
        [
            ("primitive", "lock"),
            ("name", name.as_str()),
            ("outcome", outcome),
        ]
    };
    let acquisitions = "dlock_acquisitions_total";
    assert_eq!(counter(&snapshot, acquisitions, &lock_with("granted")), 4);
    assert_eq!(counter(&snapshot, acquisitions, &lock_with("cancelled")), 1);
    assert_eq!(counter(&snapshot, acquisitions, &lock_with("busy")), 1);
    assert_eq!(counter(&snapshot, acquisitions, &lock_with("timeout")), 1);
    let sem_name = format!("{name}:sem");
    assert_eq!(
        counter(
            &snapshot,
            acquisitions,
            &[
                ("primitive", "semaphore"),
                ("name", &sem_name),
                ("outcome", "granted")
            ]
        ),
        1
    );
    // The timed-out wait lasted its limit; the others were one round trip.
    let timeout_waits = samples(
        &snapshot,
        "dlock_acquire_wait_seconds",
        &lock_with("timeout"),
    );
    assert_eq!(timeout_waits.len(), 1);
    assert!(timeout_waits[0] >= 0.1, "{timeout_waits:?}");

    let holds = samples(
        &snapshot,
        "dlock_hold_seconds",
        &[("primitive", "lock"), ("name", &name), ("end", "released")],
    );
    // The first guard (held at least its sleep) and the blocker.
    assert_eq!(holds.len(), 2, "{holds:?}");
    assert!(holds[0] >= held_for.as_secs_f64(), "{holds:?}");
    assert_eq!(
        samples(
            &snapshot,
            "dlock_hold_seconds",
            &[("name", &name), ("end", "lost")]
        )
        .len(),
        2,
        "the lease lost during its hold and the one found lost at release"
    );
    assert_eq!(
        counter(
            &snapshot,
            "dlock_leases_lost_total",
            &[
                ("primitive", "lock"),
                ("name", &name),
                ("reason", "key_gone")
            ]
        ),
        2
    );
    assert!(
        !samples(&snapshot, "dlock_renewal_seconds", &[]).is_empty(),
        "no renewal was timed"
    );

    // Without the opt-in, no series carries a name.
    let plain = Client::connect(&server.url()).await.unwrap();
    let unnamed = format!("metrics:plain:{:x}", fastrand::u64(..));
    plain
        .lock(&unnamed)
        .unwrap()
        .try_lock()
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    let later = recorder_snapshot(&taker);
    assert!(
        later
            .iter()
            .all(|(key, ..)| key.key().labels().all(|l| l.value() != unnamed)),
        "a client without the opt-in labelled a metric with its lock's name"
    );
    assert!(later
        .iter()
        .any(|(key, ..)| key.kind() == MetricKind::Counter
            && key.key().name() == acquisitions
            && key.key().labels().all(|l| l.key() != "name")));
}

/// A `Vec<u8>` behind a lock, as a tracing writer.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Tracing: the acquisition's span names the lock and its grant's fencing token, the
/// release's span too, and the lease's end says how long it was held; the password in the
/// URL appears nowhere.
#[tokio::test]
async fn spans_name_the_lock_and_its_fencing_token_never_a_password() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // This thread only: the test's current-thread runtime runs every task of the client here.
    let _default = tracing::subscriber::set_default(subscriber);

    let server = dlock_test::RedisServer::start_with(dlock_test::ServerOptions {
        password: Some("trace-pw".into()),
        ..dlock_test::ServerOptions::default()
    });
    let url = format!("redis://:trace-pw@127.0.0.1:{}/", server.port());
    let client = Client::connect(&url).await.unwrap();
    let guard = client.lock("traced").unwrap().try_lock().await.unwrap();
    let fence = guard.fencing_token();
    guard.release().await.unwrap();
    client.flush().await;

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line = |needle: &str| text.lines().find(|l| l.contains(needle)).map(str::to_owned);
    let granted = line("granted").unwrap_or_else(|| panic!("no grant event:\n{text}"));
    assert!(
        granted.contains("dlock.acquire")
            && granted.contains("name=\"traced\"")
            && granted.contains(&format!("fencing_token={fence}")),
        "{granted}"
    );
    let ended = line("dlock lease ended").unwrap_or_else(|| panic!("no end event:\n{text}"));
    assert!(
        ended.contains("dlock.hold") && ended.contains(&format!("fencing_token={fence}")),
        "{ended}"
    );
    assert!(ended.contains("held_ms="), "{ended}");
    assert!(
        !text.contains("trace-pw"),
        "a password in the traces:\n{text}"
    );
}
