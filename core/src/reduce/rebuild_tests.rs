//! The Reduce state across a rescale: restored lists of the old Aggregates
//! are replaced by the new ones' resent lists, nothing half-merged is
//! emitted, and an unchanged window is not emitted again.

use super::tests::{ac, local};
use super::*;

/// Two old Aggregates: window 100 emitted as [a5, c4]; window 200 has
/// input 0's list [a1] only and is not emitted yet.
fn two_inputs_restored_as_three() -> ReduceState {
    let mut old = ReduceState::new(2, 2, 1_000, "reduce-0".into());
    old.on_local(0, local(100, vec![ac("a", 5), ac("b", 3)]));
    old.on_local(1, local(100, vec![ac("c", 4)]));
    old.on_watermark(0, 150);
    let out = old.on_watermark(1, 150);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].ads, vec![ac("a", 5), ac("c", 4)]);
    old.on_local(0, local(200, vec![ac("a", 1)]));
    let mut new = ReduceState::new(3, 2, 1_000, "reduce-0".into());
    new.restore(old.snapshot());
    new.begin_rebuild();
    new
}

#[test]
fn an_unchanged_window_is_not_emitted_again_and_stale_lists_are_gone() {
    let mut r = two_inputs_restored_as_three();
    r.on_resend(0, local(100, vec![ac("c", 4)]));
    r.on_resend(1, local(100, vec![ac("a", 5)]));
    r.on_resend(2, local(100, vec![ac("b", 3)]));
    // A window the state no longer holds can never change: ignored.
    r.on_resend(1, local(50, vec![ac("z", 99)]));
    assert!(r.on_watermark(0, 150).is_empty());
    assert!(r.on_watermark(1, 150).is_empty());
    assert!(r.rebuilding());
    assert!(
        r.on_watermark(2, 150).is_empty(),
        "same merge: no re-emission"
    );
    assert!(!r.rebuilding());
    // Window 200: the ad moved to input 1. The old input 0 list was dropped,
    // so it is counted once.
    r.on_local(1, local(200, vec![ac("a", 1)]));
    r.on_watermark(0, 250);
    r.on_watermark(1, 250);
    let out = r.on_watermark(2, 250);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].window_end, 200);
    assert_eq!(out[0].ads, vec![ac("a", 1)]);
    assert!(
        r.snapshot().iter().all(|w| w.window_end != 50),
        "the ignored resend left nothing behind"
    );
}

#[test]
fn a_change_during_the_rebuild_is_emitted_once_every_input_reported() {
    let mut r = two_inputs_restored_as_three();
    r.on_resend(0, local(100, vec![ac("c", 4)]));
    r.on_resend(1, local(100, vec![ac("a", 5)]));
    r.on_resend(2, local(100, vec![ac("b", 3)]));
    // A late update on input 2 while input 1 has not reported: held back.
    assert!(r.on_local(2, local(100, vec![ac("b", 9)])).is_none());
    assert!(r.on_watermark(0, 150).is_empty());
    assert!(r.on_watermark(2, 150).is_empty());
    let out = r.on_watermark(1, 150);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].ads, vec![ac("b", 9), ac("a", 5)]);
    assert_eq!(out[0].revision, 1, "the revision never goes back");
}

#[test]
fn resent_lists_are_ignored_without_a_rescale() {
    let mut r = ReduceState::new(1, 2, 1_000, "reduce-0".into());
    r.on_local(0, local(100, vec![ac("a", 5)]));
    assert_eq!(r.on_watermark(0, 150).len(), 1);
    r.on_resend(0, local(100, vec![ac("a", 7)]));
    assert!(r.snapshot()[0].lists[0].1 == vec![ac("a", 5)]);
    assert!(r.on_watermark(0, 160).is_empty());
}
