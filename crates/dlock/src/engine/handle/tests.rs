//! Unit tests of the handle count (`Shared`).

use super::*;
use crate::engine::ops::testing::Noop;

fn shared() -> Arc<Shared> {
    let lease = Lease::new(
        Arc::new(Noop),
        1,
        Duration::from_secs(1),
        Instant::now(),
        false,
        Arc::new(AtomicUsize::new(0)),
    );
    Shared::new(Arc::new(lease))
}

/// The reentrant race the review found: a re-entry joining a lease whose last handle is
/// just leaving would have sat on a released lease, never renewed. A count that reached
/// zero now refuses new members, so the re-entry gets a lease of its own.
#[test]
fn the_last_handle_out_ends_the_lease_and_nobody_joins_it_after() {
    let shared = shared();
    assert!(
        shared.try_join(),
        "a held lease with a handle takes another"
    );
    shared.leave();
    assert!(shared.lease.is_held(), "one handle is left");
    shared.leave();
    assert_eq!(shared.lease.status(), LeaseStatus::Released);
    assert!(
        !shared.try_join(),
        "joined a lease whose last handle had left"
    );
}
