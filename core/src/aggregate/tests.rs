//! Unit tests of the Aggregate state machine.

use super::*;

const W: i64 = 60_000;

pub(super) fn settings() -> AggregateSettings {
    AggregateSettings {
        window_ms: W,
        allowed_lateness_ms: W,
        top_n: 2,
        top_windows: vec![1, 2],
        producer: "aggregate-0".into(),
        max_ads_per_window: 1000,
    }
}

fn part(ad: &str, start: i64, clicks: u64, keys: &[u64]) -> PartialCount {
    PartialCount {
        ad_id: ad.into(),
        window_start: start,
        slices: vec!["*".into(), "country=US".into()],
        clicks,
        click_keys: keys.to_vec(),
        ..Default::default()
    }
}

#[test]
fn closes_windows_at_the_watermark() {
    let mut s = AggregateState::new(settings());
    assert!(s
        .apply(vec![part("a", 0, 2, &[]), part("b", 0, 1, &[])])
        .counts
        .is_empty());
    assert!(
        s.advance(W - 1).counts.is_empty(),
        "window not closed before its end"
    );
    let out = s.advance(W);
    assert_eq!(out.counts.len(), 4);
    assert!(out.counts.iter().all(|c| c.revision == 0));
    let top: Vec<_> = out.top.iter().filter(|t| t.slice == "*").collect();
    // Both M = 1 ([0, W)) and M = 2 ([-W, W)) end at W.
    assert_eq!(top.len(), 2, "{top:?}");
    assert_eq!(
        top[0].ads[0],
        AdClicks {
            ad_id: "a".into(),
            clicks: 2
        }
    );
    // M = 2 window [0, 2W) ends at 2W.
    let out = s.advance(2 * W);
    assert!(out
        .top
        .iter()
        .any(|t| t.window_minutes == 2 && t.window_end == 2 * W && t.slice == "*"));
}

#[test]
fn a_closing_window_emits_its_counts_grouped_by_slice() {
    let mut s = AggregateState::new(settings());
    let ads: Vec<PartialCount> = (0..20)
        .map(|i| part(&format!("ad{i}"), 0, 1, &[]))
        .collect();
    s.apply(ads);
    let out = s.advance(W);
    assert_eq!(out.counts.len(), 40);
    // Each slice is one run, so the sink packs it into one message.
    let runs = 1 + out
        .counts
        .windows(2)
        .filter(|p| p[0].slice != p[1].slice)
        .count();
    assert_eq!(
        runs,
        2,
        "{:?}",
        out.counts.iter().map(|c| &*c.slice).collect::<Vec<_>>()
    );
    // Late revisions of several cells leave grouped too.
    let late: Vec<PartialCount> = (0..5).map(|i| part(&format!("ad{i}"), 0, 1, &[])).collect();
    let out = s.apply(late);
    let runs = 1 + out
        .counts
        .windows(2)
        .filter(|p| p[0].slice != p[1].slice)
        .count();
    assert_eq!((out.counts.len(), runs), (10, 2));
}

#[test]
fn late_within_lateness_reemits_with_next_revision() {
    let mut s = AggregateState::new(settings());
    s.apply(vec![part("a", 0, 2, &[])]);
    s.advance(W + 10);
    let out = s.apply(vec![part("a", 0, 1, &[])]);
    let star = out.counts.iter().find(|c| &*c.slice == "*").unwrap();
    assert_eq!((star.clicks, star.revision), (3, 1));
    assert!(out
        .top
        .iter()
        .any(|t| t.window_end == W && t.window_minutes == 1 && t.ads[0].clicks == 3));
    assert!(out.late.is_empty());
}

#[test]
fn too_late_goes_to_side_output_unchanged() {
    let mut s = AggregateState::new(settings());
    s.apply(vec![part("a", 0, 1, &[])]);
    s.advance(2 * W);
    let mut p = part("a", 0, 1, &[]);
    p.raw = Some(b"{original}".to_vec());
    let out = s.apply(vec![p]);
    assert!(out.counts.is_empty());
    assert_eq!(out.late.len(), 1);
    assert_eq!(out.late[0].raw, b"{original}");
    assert_eq!(out.late[0].watermark, Some(2 * W));
}

#[test]
fn duplicates_are_dropped_and_counted() {
    let mut s = AggregateState::new(settings());
    let out = s.apply(vec![part("a", 0, 0, &[1, 2]), part("a", 0, 0, &[2, 3])]);
    assert_eq!(out.duplicates, 1);
    let out = s.advance(W);
    let star = out.counts.iter().find(|c| &*c.slice == "*").unwrap();
    assert_eq!(star.clicks, 3);
}

#[test]
fn state_is_dropped_after_retention() {
    let mut s = AggregateState::new(settings());
    s.apply(vec![part("a", 0, 1, &[])]);
    s.advance(W);
    assert_eq!(s.windows(), 1);
    s.advance(W + settings().retention_ms());
    assert_eq!(s.windows(), 0);
}

/// Emission order follows hash order, which differs between two states
/// holding the same cells.
fn sorted(mut c: Vec<CountRecord>) -> Vec<CountRecord> {
    c.sort_by(|a, b| (&a.ad_id, &a.slice).cmp(&(&b.ad_id, &b.slice)));
    c
}

#[test]
fn snapshot_restore_round_trips_and_filters_by_owner() {
    let mut s = AggregateState::new(settings());
    s.apply(vec![
        part("a", 0, 0, &[1, 2]),
        part("b", 0, 3, &[]),
        part("a", W, 1, &[]),
    ]);
    s.advance(W);
    let snap = s.snapshot();
    let mut back = AggregateState::restore(settings(), vec![snap.clone()], |_| true);
    assert_eq!(back.snapshot().cells.len(), snap.cells.len());
    // Dedup keys survive the restore.
    assert_eq!(back.apply(vec![part("a", 0, 0, &[2])]).duplicates, 1);
    let only_b = AggregateState::restore(settings(), vec![snap], |ad| ad == "b");
    assert_eq!(only_b.cells(), 1);
    assert_eq!(only_b.watermark(), Some(W));
    // Same future as the original: closing W..2W emits the same counts.
    let mut twin = AggregateState::restore(settings(), vec![s.snapshot()], |_| true);
    assert_eq!(
        sorted(s.advance(2 * W).counts),
        sorted(twin.advance(2 * W).counts)
    );
}

#[test]
fn top_n_boundaries_are_emitted_once() {
    let mut s = AggregateState::new(settings());
    s.apply(vec![part("a", 0, 1, &[])]);
    let first = s.advance(10 * W);
    let ends: Vec<_> = first
        .top
        .iter()
        .filter(|t| t.slice == "*")
        .map(|t| (t.window_end, t.window_minutes))
        .collect();
    assert_eq!(ends, vec![(W, 1), (W, 2), (2 * W, 2)]);
    assert!(s.advance(11 * W).top.is_empty());
}

#[test]
fn ads_beyond_the_window_limit_go_to_the_dlq_and_stay_out() {
    let mut s = AggregateState::new(AggregateSettings {
        max_ads_per_window: 2,
        ..settings()
    });
    let out = s.apply(vec![
        part("a", 0, 1, &[]),
        part("b", 0, 1, &[]),
        part("c", 0, 2, &[7]),
        part("a", W, 1, &[]),
    ]);
    assert_eq!(out.overflow.len(), 1);
    assert_eq!(out.overflow_events, 3);
    let summary: serde_json::Value = serde_json::from_slice(&out.overflow[0].raw).unwrap();
    assert_eq!(summary["ad_id"], "c");
    assert_eq!(summary["clicks"], 3);
    assert_eq!(summary["window_end"], W);
    assert!(out.overflow[0].reason.contains("max_ads_per_window = 2"));
    // Known ads keep counting; the refused ad stays refused in that window,
    // so its count is never half-reported; other windows are independent.
    let out = s.apply(vec![part("a", 0, 1, &[]), part("c", 0, 1, &[])]);
    assert_eq!(out.overflow.len(), 1);
    assert_eq!(s.cells(), 3);
    let closed = s.advance(W);
    let star: Vec<_> = closed.counts.iter().filter(|c| &*c.slice == "*").collect();
    assert_eq!(star.len(), 2);
    assert!(star.iter().any(|c| c.ad_id == "a" && c.clicks == 2));
    assert!(star.iter().all(|c| c.ad_id != "c"));
}

#[test]
fn a_restored_share_resends_the_boundaries_that_can_still_change() {
    let mut s = AggregateState::new(settings());
    s.apply(vec![
        part("a", 0, 2, &[]),
        part("b", 0, 1, &[]),
        part("a", W, 1, &[]),
    ]);
    s.advance(2 * W);
    assert!(
        AggregateState::new(settings()).resend_lists().is_empty(),
        "nothing passed, nothing to resend"
    );
    let star = |lists: Vec<LocalTopN>| -> Vec<(i64, u32, Vec<AdClicks>)> {
        lists
            .into_iter()
            .filter(|l| l.slice == "*")
            .map(|l| (l.window_end, l.window_minutes, l.ads))
            .collect()
    };
    let ad = |id: &str, clicks| AdClicks {
        ad_id: id.into(),
        clicks,
    };
    // Lateness is one window: the boundary at W expired at watermark 2W;
    // the one at 3W has not been passed.
    assert_eq!(
        star(s.resend_lists()),
        vec![
            (2 * W, 1, vec![ad("a", 1)]),
            (2 * W, 2, vec![ad("a", 3), ad("b", 1)])
        ]
    );
    // The Aggregate that now owns only "b" resends its share.
    let only_b = AggregateState::restore(settings(), vec![s.snapshot()], |ad| ad == "b");
    assert_eq!(
        star(only_b.resend_lists()),
        vec![(2 * W, 2, vec![ad("b", 1)])]
    );
}

/// Cells in a canonical order, so two snapshots of the same state compare
/// equal whatever order they were built in.
fn canonical(mut s: AggregateSnapshot) -> AggregateSnapshot {
    for c in &mut s.cells {
        c.slices.sort_by(|a, b| a.0.cmp(&b.0));
        c.seen.sort_unstable();
    }
    s.cells
        .sort_by(|a, b| (a.window_start, &a.ad_id).cmp(&(b.window_start, &b.ad_id)));
    s
}

#[test]
fn incremental_freezes_copy_only_changed_windows_and_restore_exactly() {
    let mut s = AggregateState::new(settings());
    s.apply(vec![
        part("a", 0, 1, &[1]),
        part("b", W, 2, &[]),
        part("c", 2 * W, 1, &[]),
    ]);
    s.advance(2 * W);
    // The latest copy of every window, as the store would hold it.
    let mut store: BTreeMap<i64, AggregateSnapshot> = BTreeMap::new();
    let take = |f: &FrozenAggregate, store: &mut BTreeMap<i64, AggregateSnapshot>| {
        for (start, snap) in f.window_snapshots() {
            store.insert(start, snap);
        }
        assert!(f.held().iter().all(|w| store.contains_key(w)));
        f.copied_windows()
    };
    // Nothing written yet: every window is copied.
    let first = s.freeze_changed(|_| false);
    assert_eq!(take(&first, &mut store), 3);
    assert_eq!(s.changed_windows(), 0);
    // Only the open window changes.
    s.apply(vec![part("c", 2 * W, 1, &[]), part("d", 2 * W, 1, &[])]);
    assert_eq!(s.changed_windows(), 1);
    let second = s.freeze_changed(|w| store.contains_key(&w));
    assert_eq!(take(&second, &mut store), 1);
    // A late event revises a closed window; a duplicate changes nothing
    // the snapshot holds but is still written (its key was looked up).
    s.apply(vec![part("b", W, 1, &[])]);
    let third = s.freeze_changed(|w| store.contains_key(&w));
    assert_eq!(take(&third, &mut store), 1);
    // A window without a durable copy is copied even when unchanged.
    let fourth = s.freeze_changed(|w| w != 0);
    assert_eq!(fourth.copied_windows(), 1);
    // Restoring the manifest plus the referenced windows gives the same
    // state as a full snapshot, and the same future.
    let mut parts = vec![AggregateSnapshot {
        watermark: third.watermark(),
        dedup_horizon: third.dedup_horizon(),
        last_boundary: third.last_boundary(),
        cells: Vec::new(),
        columns: Vec::new(),
    }];
    parts.extend(store.into_values());
    let mut back = AggregateState::restore(settings(), parts, |_| true);
    assert_eq!(canonical(back.snapshot()), canonical(s.snapshot()));
    assert_eq!(
        sorted(s.advance(3 * W).counts),
        sorted(back.advance(3 * W).counts)
    );
    // Closing a window changes it (its cells are no longer dirty).
    assert_eq!(s.changed_windows(), 1);
}

#[test]
fn a_new_window_starts_sized_like_the_newest_one() {
    let mut s = AggregateState::new(settings());
    let ads: Vec<PartialCount> = (0..500)
        .map(|i| part(&format!("ad{i}"), 0, 1, &[i]))
        .collect();
    s.apply(ads);
    s.apply(vec![part("late-comer", W, 1, &[1])]);
    assert_eq!(s.windows[&W].cell_count(), 2);
    let (first, second) = (s.windows[&0].heap_bytes(), s.windows[&W].heap_bytes());
    // Room for the first window's 1,000 cells and 500 keys from the start.
    assert!(second >= first / 2, "{second} vs {first}");
    // A window opened before the newest (a late one) is not sized.
    s.apply(vec![part("early", -W, 1, &[2])]);
    assert!(s.windows[&-W].heap_bytes() < first / 10);
}
