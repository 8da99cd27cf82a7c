//! The dedup horizon: a window's dedup keys are kept until its end plus the
//! allowed lateness, then freed, and from then on the window takes no
//! event, even after a restore that lowers the watermark.

use super::*;

const W: i64 = 60_000;

/// Top-N over five windows keeps each window held four windows after its
/// dedup keys were freed.
fn settings() -> AggregateSettings {
    AggregateSettings {
        top_windows: vec![1, 5],
        ..super::tests::settings()
    }
}

fn click(ad: &str, start: i64, key: u64) -> PartialCount {
    PartialCount {
        ad_id: ad.into(),
        window_start: start,
        slices: vec!["*".into()],
        click_keys: vec![key],
        ..Default::default()
    }
}

fn keys_held(s: &AggregateState) -> usize {
    s.snapshot().cells.iter().map(|c| c.seen.len()).sum()
}

#[test]
fn a_duplicate_within_the_lateness_is_caught_and_the_keys_go_after_it() {
    let mut s = AggregateState::new(settings());
    s.apply(vec![click("a", 0, 1), click("b", 0, 2)]);
    s.advance(W);
    let out = s.apply(vec![click("a", 0, 1), click("a", 0, 3)]);
    assert_eq!(out.duplicates, 1, "a late duplicate is still caught");
    assert_eq!(out.counts.len(), 1);
    assert_eq!((out.counts[0].clicks, out.counts[0].revision), (2, 1));
    assert_eq!(keys_held(&s), 3);
    let heap = s.heap_bytes();
    s.advance(2 * W - 1);
    assert_eq!(keys_held(&s), 3, "the window still takes late events");
    s.advance(2 * W);
    assert_eq!(keys_held(&s), 0, "past its dedup horizon");
    assert!(s.heap_bytes() < heap);
    assert_eq!(s.windows(), 1, "the window is still held for top-N");
    let out = s.apply(vec![click("a", 0, 1), click("c", 0, 4)]);
    assert_eq!((out.late.len(), out.duplicates), (2, 0));
    assert!(out.counts.is_empty());
}

#[test]
fn a_restore_that_lowers_the_watermark_keeps_sealed_windows_sealed() {
    // Actor A reached 2W: window 0 is sealed there and its keys are gone.
    // Actor B only reached W.
    let mut a = AggregateState::new(settings());
    a.apply(vec![click("a", 0, 1)]);
    a.advance(2 * W);
    let mut b = AggregateState::new(settings());
    b.apply(vec![click("b", 0, 2)]);
    b.advance(W);
    let mut r = AggregateState::restore(settings(), vec![a.snapshot(), b.snapshot()], |_| true);
    assert_eq!(
        r.watermark(),
        Some(W),
        "the lowest watermark closes windows"
    );
    // A duplicate of A's click would count again if window 0 took it.
    let out = r.apply(vec![click("a", 0, 1), click("b", 0, 5)]);
    assert_eq!(out.late.len(), 2);
    assert!(out.counts.is_empty() && out.duplicates == 0);
    // The horizon outlives the next snapshot and restore.
    let snap = r.snapshot();
    assert_eq!((snap.watermark, snap.dedup_horizon), (Some(W), Some(2 * W)));
    let mut again = AggregateState::restore(settings(), vec![snap], |_| true);
    assert_eq!(again.apply(vec![click("a", 0, 1)]).late.len(), 1);
}

#[test]
fn a_snapshot_without_a_horizon_is_sealed_by_its_watermark() {
    let mut s = AggregateState::new(settings());
    s.apply(vec![click("a", 0, 1)]);
    s.advance(W);
    let mut snap = s.snapshot();
    assert_eq!(keys_held(&s), 1);
    // As written before the horizon existed, at a later watermark.
    snap.watermark = Some(2 * W);
    snap.dedup_horizon = None;
    let mut r = AggregateState::restore(settings(), vec![snap], |_| true);
    assert_eq!(keys_held(&r), 0, "the restore frees the sealed keys");
    assert_eq!(r.apply(vec![click("a", 0, 1)]).late.len(), 1);
}

#[test]
fn keys_a_checkpoint_still_shares_are_freed_at_a_later_watermark() {
    let mut s = AggregateState::new(settings());
    s.apply(vec![click("a", 0, 1)]);
    s.advance(W);
    let frozen = s.freeze();
    s.advance(2 * W);
    // Freeing them now would copy the window the checkpoint reads.
    assert_eq!(keys_held(&s), 1);
    assert_eq!(frozen.snapshot().cells[0].seen, vec![1]);
    drop(frozen);
    s.advance(2 * W + 1);
    assert_eq!(keys_held(&s), 0);
}
