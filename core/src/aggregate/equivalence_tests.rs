//! The flat, interned state against the state it replaced: on random
//! streams with duplicates, late revisions, the per-window ad limit and
//! key-group moves (snapshot, split by a new owner map, restore), every
//! output and every snapshot must be the same.

use super::reference::ReferenceState;
use super::*;
use crate::partials::{CheckedPartials, PackedPartials};
use proptest::prelude::*;

const W: i64 = 60_000;
const SLICES: [&str; 3] = ["*", "country=US", "country=DE"];

fn settings() -> AggregateSettings {
    AggregateSettings {
        window_ms: W,
        allowed_lateness_ms: W,
        top_n: 3,
        top_windows: vec![1, 3],
        producer: "aggregate-x".into(),
        max_ads_per_window: 6,
    }
}

#[derive(Clone, Debug)]
enum Op {
    Apply(Vec<PartialCount>),
    Advance(i64),
    /// Advances one actor only (by index, modulo the number of actors):
    /// watermarks differ at the next rescale, whose restore takes the
    /// lowest and must keep what the highest sealed.
    AdvanceOne(usize, i64),
    /// New number of actors and a salt that reshuffles which owns an ad.
    Rescale(usize, u64),
    /// An incremental checkpoint of every actor (restores then read the
    /// manifest and the windows it references).
    Checkpoint,
}

/// A pre-aggregated count: mostly small, sometimes at the edge of 32 bits,
/// where the flat state's cells move their counts to the wide table.
fn count(small: u64) -> impl Strategy<Value = u64> {
    let edge = u64::from(u32::MAX);
    prop_oneof![9 => 0..small, 1 => (edge - 2)..(edge + 2)]
}

fn partial() -> impl Strategy<Value = PartialCount> {
    (
        0u32..10,
        0i64..8,
        proptest::sample::subsequence(SLICES.to_vec(), 1..=3),
        count(3),
        count(2),
        proptest::collection::vec(0u64..12, 0..3),
        proptest::collection::vec(0u64..12, 0..2),
        any::<bool>(),
    )
        .prop_map(
            |(ad, w, slices, clicks, impressions, ck, ik, raw)| PartialCount {
                ad_id: format!("ad{ad}"),
                window_start: w * W,
                slices: slices.into_iter().map(str::to_owned).collect(),
                clicks,
                impressions,
                click_keys: ck,
                impression_keys: ik,
                raw: raw.then(|| format!("raw-{ad}-{w}").into_bytes()),
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec(partial(), 1..8).prop_map(Op::Apply),
        3 => (0i64..12 * W).prop_map(Op::Advance),
        1 => (0usize..4, 0i64..12 * W).prop_map(|(i, wm)| Op::AdvanceOne(i, wm)),
        1 => (1usize..4, any::<u64>()).prop_map(|(n, salt)| Op::Rescale(n, salt)),
        1 => Just(Op::Checkpoint),
    ]
}

/// An incremental checkpoint of `s` into `store` (the latest copy of each
/// window, as the snapshot store's shared objects hold them): the manifest
/// and the windows it references, as restore reads them.
fn incremental(
    s: &mut AggregateState,
    store: &mut BTreeMap<i64, AggregateSnapshot>,
) -> Vec<AggregateSnapshot> {
    let f = s.freeze_changed(|w| store.contains_key(&w));
    // Stored the way the node writes them: as columns, by key group.
    for (start, groups) in f.window_columns(5) {
        let columns = groups
            .into_iter()
            .map(|g| WindowColumns::try_from(g).expect("columns the state wrote are valid"))
            .collect();
        let snap = AggregateSnapshot {
            watermark: None,
            dedup_horizon: None,
            last_boundary: None,
            cells: Vec::new(),
            columns,
        };
        store.insert(start, snap);
    }
    store.retain(|w, _| f.held().contains(w));
    let mut parts = vec![AggregateSnapshot {
        watermark: f.watermark(),
        dedup_horizon: f.dedup_horizon(),
        last_boundary: f.last_boundary(),
        cells: Vec::new(),
        columns: Vec::new(),
    }];
    parts.extend(store.values().cloned());
    parts
}

fn owner(ad: &str, n: usize, salt: u64) -> usize {
    (xxhash_rust::xxh3::xxh3_64_with_seed(ad.as_bytes(), salt) % n as u64) as usize
}

/// Outputs in a form both states must agree on exactly: count records are
/// sorted (their order within a window follows hash iteration in the old
/// state), everything else keeps its order.
fn normalized(mut o: AggregateOutput) -> AggregateOutput {
    o.counts.sort_by(|a, b| {
        (&a.ad_id, a.window_start, &a.slice).cmp(&(&b.ad_id, b.window_start, &b.slice))
    });
    o
}

/// Cells of closed windows holding a change that was never emitted: a
/// closed window's counts are final output, so any such cell is a count
/// the sink never sees (a billing error) unless a late event happens to
/// touch the same window.
fn unemitted_closed_cells(s: &AggregateSnapshot) -> Vec<(String, i64)> {
    let Some(wm) = s.watermark else {
        return Vec::new();
    };
    s.cells
        .iter()
        .filter(|c| c.window_start + W <= wm && c.slices.iter().any(|(_, _, dirty)| *dirty))
        .map(|c| (c.ad_id.clone(), c.window_start))
        .collect()
}

fn normalized_snapshot(mut s: AggregateSnapshot) -> AggregateSnapshot {
    for c in &mut s.cells {
        c.seen.sort_unstable();
    }
    s.cells
        .sort_by(|a, b| (a.window_start, &a.ad_id).cmp(&(b.window_start, &b.ad_id)));
    s
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn the_flat_state_gives_exactly_the_old_results(ops in proptest::collection::vec(op(), 1..40)) {
        let mut n = 2usize;
        let mut salt = 0u64;
        let mut new: Vec<AggregateState> = (0..n).map(|_| AggregateState::new(settings())).collect();
        let mut old: Vec<ReferenceState> = (0..n).map(|_| ReferenceState::new(settings())).collect();
        let mut stores: Vec<BTreeMap<i64, AggregateSnapshot>> = vec![BTreeMap::new(); n];
        for (step, op) in ops.into_iter().enumerate() {
            match op {
                Op::Checkpoint => {
                    for i in 0..n {
                        incremental(&mut new[i], &mut stores[i]);
                    }
                }
                Op::Apply(parts) => {
                    let mut routed = vec![Vec::new(); n];
                    for p in parts {
                        routed[owner(&p.ad_id, n, salt)].push(p);
                    }
                    for (i, parts) in routed.into_iter().enumerate() {
                        // The new state takes the batch as a Map sends it.
                        let packed = CheckedPartials::try_from(PackedPartials::pack(&parts))
                            .expect("a packed batch is valid");
                        let a = normalized(new[i].apply_packed(&packed));
                        let b = normalized(old[i].apply(parts));
                        prop_assert_eq!(a, b, "step {} apply on actor {}", step, i);
                    }
                }
                Op::Advance(wm) => {
                    for i in 0..n {
                        let a = normalized(new[i].advance(wm));
                        let b = normalized(old[i].advance(wm));
                        prop_assert_eq!(a, b, "step {} advance to {} on actor {}", step, wm, i);
                    }
                }
                Op::AdvanceOne(i, wm) => {
                    let i = i % n;
                    let a = normalized(new[i].advance(wm));
                    let b = normalized(old[i].advance(wm));
                    prop_assert_eq!(a, b, "step {} advance to {} on actor {} alone", step, wm, i);
                }
                Op::Rescale(to, new_salt) => {
                    let new_parts: Vec<AggregateSnapshot> = new.iter().map(AggregateState::snapshot).collect();
                    let old_parts: Vec<AggregateSnapshot> = old.iter().map(ReferenceState::snapshot).collect();
                    for (a, b) in new_parts.iter().zip(&old_parts) {
                        prop_assert_eq!(
                            normalized_snapshot(a.clone()),
                            normalized_snapshot(b.clone()),
                            "step {} snapshot", step
                        );
                    }
                    // The new state restores from incremental checkpoints.
                    let new_parts: Vec<AggregateSnapshot> = new
                        .iter_mut()
                        .zip(stores.iter_mut())
                        .flat_map(|(s, store)| incremental(s, store))
                        .collect();
                    n = to;
                    salt = new_salt;
                    stores = vec![BTreeMap::new(); n];
                    new = (0..n)
                        .map(|i| AggregateState::restore(settings(), new_parts.clone(), |ad| owner(ad, n, salt) == i))
                        .collect();
                    old = (0..n)
                        .map(|i| ReferenceState::restore(settings(), old_parts.clone(), |ad| owner(ad, n, salt) == i))
                        .collect();
                    for i in 0..n {
                        let a = normalized(new[i].emit_restored());
                        let b = normalized(old[i].emit_restored());
                        prop_assert_eq!(a, b, "step {} restored revisions on {}", step, i);
                        prop_assert_eq!(new[i].resend_lists(), old[i].resend_lists(), "step {} resend on {}", step, i);
                        prop_assert_eq!(new[i].cells(), old[i].cells());
                        prop_assert_eq!(new[i].windows(), old[i].windows());
                    }
                }
            }
            for (i, s) in new.iter().enumerate() {
                let unemitted = unemitted_closed_cells(&s.snapshot());
                prop_assert!(unemitted.is_empty(), "step {} actor {} holds unemitted closed cells {:?}", step, i, unemitted);
            }
        }
        for i in 0..n {
            prop_assert_eq!(
                normalized_snapshot(new[i].snapshot()),
                normalized_snapshot(old[i].snapshot())
            );
        }
    }
}

#[test]
fn expired_windows_release_their_ads() {
    let mut s = AggregateState::new(settings());
    let parts: Vec<PartialCount> = (0..5)
        .map(|i| PartialCount {
            ad_id: format!("ad{i}"),
            window_start: (i % 2) * W,
            slices: vec!["*".into()],
            clicks: 1,
            ..Default::default()
        })
        .collect();
    s.apply(parts);
    assert_eq!(s.interned_ads(), 5);
    assert!(s.heap_bytes() > 0);
    // Retention is lateness + max M windows after a window's end.
    s.advance(W + W + 3 * W);
    assert_eq!(s.windows(), 1, "the first window expired");
    assert_eq!(
        s.interned_ads(),
        2,
        "only the ads of the second window remain"
    );
    s.advance(10 * W);
    assert_eq!((s.windows(), s.interned_ads()), (0, 0));
}

#[test]
fn a_frozen_copy_does_not_see_later_changes() {
    let mut s = AggregateState::new(settings());
    let part = |ad: &str, clicks| PartialCount {
        ad_id: ad.into(),
        window_start: 0,
        slices: vec!["*".into()],
        clicks,
        click_keys: vec![7],
        ..Default::default()
    };
    s.apply(vec![part("a", 1), part("b", 2)]);
    let at_barrier = normalized_snapshot(s.snapshot());
    let frozen = s.freeze();
    s.apply(vec![part("a", 5), part("c", 1)]);
    s.advance(20 * W);
    assert_eq!(s.windows(), 0, "the live state moved on and expired");
    assert_eq!(normalized_snapshot(frozen.snapshot()), at_barrier);
    assert_eq!(frozen.cells(), 2);
}

#[test]
fn a_frozen_closed_window_keeps_its_counts_when_a_late_event_revises_it() {
    let mut s = AggregateState::new(settings());
    let part = |ad: &str, window_start, clicks, key| PartialCount {
        ad_id: ad.into(),
        window_start,
        slices: vec!["*".into()],
        clicks,
        click_keys: vec![key],
        ..Default::default()
    };
    s.apply(vec![part("a", 0, 1, 1), part("b", 0, 2, 2)]);
    s.apply(vec![part("a", W, 1, 3)]);
    // The first window closes (its lateness still admits late events).
    s.advance(W + 1);
    let at_barrier = normalized_snapshot(s.snapshot());
    let frozen = s.freeze_changed(|_| false);
    assert_eq!(frozen.copied_windows(), 2);
    // A late event to the closed window, and more to the open one.
    s.apply(vec![part("a", 0, 4, 4), part("c", W, 1, 5)]);
    assert_ne!(normalized_snapshot(s.snapshot()), at_barrier);
    assert_eq!(normalized_snapshot(frozen.snapshot()), at_barrier);
    // The next incremental freeze writes both windows again.
    assert_eq!(s.freeze_changed(|_| true).copied_windows(), 2);
}

#[test]
fn a_rescale_emits_what_an_actor_without_a_watermark_held_in_a_window_closed_elsewhere() {
    // Actor 0 has closed window 0; actor 1 never had a watermark, so its
    // click in window 0 was never emitted.
    let click = |ad: &str, clicks| PartialCount {
        ad_id: ad.into(),
        window_start: 0,
        slices: vec!["*".into()],
        clicks,
        ..Default::default()
    };
    let mut closed_here = AggregateState::new(settings());
    closed_here.apply(vec![click("ad1", 1)]);
    closed_here.advance(2 * W);
    let mut no_watermark = AggregateState::new(settings());
    no_watermark.apply(vec![click("ad3", 2)]);
    let parts = vec![closed_here.snapshot(), no_watermark.snapshot()];
    let mut merged = AggregateState::restore(settings(), parts, |_| true);
    assert_eq!(merged.watermark(), Some(2 * W));
    let out = merged.emit_restored();
    let counts: Vec<_> = out
        .counts
        .iter()
        .map(|c| (c.ad_id.as_str(), c.window_start, c.clicks))
        .collect();
    assert_eq!(counts, vec![("ad3", 0, 2)]);
    assert!(
        out.top
            .iter()
            .any(|t| t.ads.iter().any(|e| e.ad_id == "ad3")),
        "the top-N lists of the boundaries already passed are recomputed with it"
    );
    assert!(merged.emit_restored().counts.is_empty(), "emitted once");
}
