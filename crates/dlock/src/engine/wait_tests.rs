//! Tests of `engine::wait`: which hand-offs a waiter takes without a round trip.

use super::*;

fn sent(ago: Duration) -> Sent {
    Sent {
        at: Instant::now() - ago,
        suspended: crate::clock::Clock::default().suspended(),
    }
}

fn handed(fence: u64, claim_ms: u64) -> Option<Woken> {
    handed_at(fence, claim_ms, None)
}

/// A hand-off message read just now.
fn handed_at(fence: u64, claim_ms: u64, granted_ms: Option<u64>) -> Option<Woken> {
    Some(Woken::Handed {
        fence,
        claim: Duration::from_millis(claim_ms),
        granted_ms,
        received: Instant::now(),
    })
}

/// A busy answer sent `ago`, which saw fencing counter 100 and server time `server_ms`.
fn busy(ago: Duration, server_ms: Option<u64>) -> Option<LastBusy> {
    Some(LastBusy {
        sent: sent(ago),
        fence_seen: 100,
        server_ms,
    })
}

#[tokio::test]
async fn a_handoff_is_taken_only_if_made_after_the_last_busy_answer_and_still_fresh() {
    let own = Duration::from_secs(1);
    let fresh = busy(Duration::from_millis(5), None);
    assert!(Handoff::of(handed(101, 1000), fresh, own).is_some());
    // A message from a hand-off made before the last busy answer, delivered late.
    assert!(Handoff::of(handed(100, 1000), fresh, own).is_none());
    assert!(Handoff::of(handed(99, 1000), fresh, own).is_none());
    // Too little of the claim left, counted from the busy attempt's send.
    let old = busy(Duration::from_millis(400), None);
    assert!(Handoff::of(handed(101, 1000), old, own).is_none());
    // A claim too short to take safely, or longer than the waiter's own.
    assert!(Handoff::of(handed(101, 9), fresh, own).is_none());
    assert!(Handoff::of(handed(101, 1001), fresh, own).is_none());
    // Not a hand-off, or no busy answer yet.
    assert!(Handoff::of(Some(Woken::Retry), fresh, own).is_none());
    assert!(Handoff::of(handed(101, 1000), None, own).is_none());
}

#[tokio::test(start_paused = true)]
async fn a_long_wait_counts_the_claim_from_the_grant_by_the_servers_clock() {
    let own = Duration::from_secs(1);
    // Queued 700 ms ago (server time 50,000); granted 650 ms later by the server's clock.
    let waited = busy(Duration::from_millis(700), Some(50_000));
    let handoff = Handoff::of(handed_at(101, 1000, Some(50_650)), waited, own)
        .expect("taken: about 50 ms of the claim are gone");
    let moved = handoff.since.at - waited.unwrap().sent.at;
    // 650 ms less 2 ms of rounding, less 1%.
    assert_eq!(moved, Duration::from_micros(641_520));
    // Granted early in the wait: over a third of the claim is gone.
    assert!(Handoff::of(handed_at(101, 1000, Some(50_300)), waited, own).is_none());
    // The server's clock ran ahead of ours (a step, or another server's clock) by more than
    // the message took: not trusted, the claim counts from the send, and 700 ms are gone.
    assert!(Handoff::of(handed_at(101, 1000, Some(50_900)), waited, own).is_none());
    // Read before the grant could have been made by our clock: not trusted either.
    let early = Some(Woken::Handed {
        fence: 101,
        claim: Duration::from_secs(1),
        granted_ms: Some(50_650),
        received: waited.unwrap().sent.at + Duration::from_millis(600),
    });
    assert!(Handoff::of(early, waited, own).is_none());
    // A grant stamped before the busy answer (a clock stepped back) moves nothing.
    assert!(Handoff::of(handed_at(101, 1000, Some(40_000)), waited, own).is_none());
    let recent = busy(Duration::from_millis(5), Some(50_000));
    let handoff = Handoff::of(handed_at(101, 1000, Some(40_000)), recent, own).unwrap();
    assert_eq!(handoff.since.at, recent.unwrap().sent.at);
    // Without the server's time in the busy answer, or in the hand-off (an older release).
    assert!(Handoff::of(
        handed_at(101, 1000, Some(50_650)),
        busy(Duration::from_millis(700), None),
        own
    )
    .is_none());
    assert!(Handoff::of(handed_at(101, 1000, None), waited, own).is_none());
}
