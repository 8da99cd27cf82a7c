//! Unit tests of the snapshot codec.

use super::*;

#[test]
fn aggregate_round_trip_filters_key_groups() {
    let snap = AggregateSnapshot {
        watermark: Some(5),
        dedup_horizon: Some(6),
        last_boundary: Some(4),
        cells: vec![
            CellSnapshot {
                ad_id: "a".into(),
                window_start: 0,
                slices: vec![(
                    "*".into(),
                    Counts {
                        clicks: 1,
                        impressions: 2,
                        revision: 3,
                    },
                    true,
                )],
                seen: vec![9],
            },
            CellSnapshot {
                ad_id: "b".into(),
                window_start: 0,
                slices: vec![],
                seen: vec![],
            },
        ],
        columns: Vec::new(),
    };
    let pending = vec![pb::PendingEpoch {
        epoch: 7,
        producer: "aggregate-1".into(),
        ..Default::default()
    }];
    let bytes = aggregate_to_pb(snap.clone(), 16, pending.clone()).encode_to_vec();
    let parts = aggregate_parts(bytes.into(), "test").unwrap();
    assert_eq!(pending_from_parts(&parts, "test").unwrap(), pending);
    let all = aggregate_from_parts(&parts, |_| true, "test").unwrap();
    assert_eq!(all.cells.len(), 2);
    assert_eq!(
        (all.watermark, all.dedup_horizon, all.last_boundary),
        (Some(5), Some(6), Some(4))
    );
    let kg_a = key_group_of("a", 16).0;
    let only_a = aggregate_from_parts(&parts, |kg| kg == kg_a, "test").unwrap();
    assert!(only_a
        .cells
        .iter()
        .all(|c| key_group_of(&c.ad_id, 16).0 == kg_a));
    assert!(only_a
        .cells
        .iter()
        .any(|c| c.ad_id == "a" && c.slices == snap.cells[0].slices && c.seen == vec![9]));
}

#[test]
fn key_group_zero_is_found_though_protobuf_omits_it() {
    let ad = (0..1000)
        .map(|i| format!("ad-{i}"))
        .find(|a| key_group_of(a, 16).0 == 0)
        .unwrap();
    let snap = AggregateSnapshot {
        watermark: None,
        dedup_horizon: None,
        last_boundary: None,
        cells: vec![CellSnapshot {
            ad_id: ad.clone(),
            window_start: 60_000,
            slices: vec![],
            seen: vec![],
        }],
        columns: Vec::new(),
    };
    let bytes = aggregate_to_pb(snap, 16, vec![]).encode_to_vec();
    let parts = aggregate_parts(bytes.into(), "test").unwrap();
    let zero = aggregate_from_parts(&parts, |kg| kg == 0, "test").unwrap();
    assert_eq!(zero.cells.len(), 1);
    assert!(aggregate_from_parts(&parts, |kg| kg != 0, "test")
        .unwrap()
        .cells
        .is_empty());
}

#[test]
fn a_restored_reference_covers_exactly_the_key_groups_kept() {
    // Three ads in three different key groups, one window.
    let mut ads: Vec<(String, u32)> = Vec::new();
    for i in 0.. {
        let ad = format!("ad-{i}");
        let kg = key_group_of(&ad, 16).0;
        if ads.iter().all(|(_, k)| *k != kg) {
            ads.push((ad, kg));
        }
        if ads.len() == 3 {
            break;
        }
    }
    let cells = ads
        .iter()
        .map(|(ad, _)| CellSnapshot {
            ad_id: ad.clone(),
            window_start: 0,
            slices: vec![],
            seen: vec![],
        })
        .collect();
    let snap = AggregateSnapshot {
        watermark: None,
        dedup_horizon: None,
        last_boundary: None,
        cells,
        columns: Vec::new(),
    };
    let bytes: prost::bytes::Bytes = aggregate_to_pb(snap, 16, vec![]).encode_to_vec().into();
    let (a, b, c) = (ads[0].1, ads[1].1, ads[2].1);
    let seg = |key_groups: Vec<u32>| pb::WindowSegment {
        window_start: 0,
        object: "aggregate-4/w0.e7".into(),
        bytes: bytes.len() as u64,
        key_groups,
    };
    let ads_of = |s: &AggregateSnapshot| {
        let mut v: Vec<String> = s.cells.iter().map(|c| c.ad_id.clone()).collect();
        v.sort();
        v
    };
    // Everything owned: the whole object, unnarrowed.
    let (all, r) = narrow_segment(seg(vec![]), bytes.clone(), |_| true).unwrap();
    assert_eq!(all.cells.len(), 3);
    assert_eq!(r.unwrap().key_groups, Vec::<u32>::new());
    // A reference narrowed to {a, b}, read by an owner of {b, c}: only b.
    let mut ab = vec![a, b];
    ab.sort();
    let (part, r) = narrow_segment(seg(ab), bytes.clone(), |kg| kg == b || kg == c).unwrap();
    assert_eq!(ads_of(&part), vec![ads[1].0.clone()]);
    assert_eq!(r.unwrap().key_groups, vec![b]);
    // Owning none of what the reference covers: nothing, no reference.
    let (none, r) = narrow_segment(seg(vec![a]), bytes, |kg| kg == c).unwrap();
    assert!(none.cells.is_empty() && r.is_none());
}

#[test]
fn references_to_one_object_merge_into_the_union_of_their_key_groups() {
    let r = |object: &str, key_groups: Vec<u32>| pb::WindowSegment {
        window_start: 0,
        object: object.into(),
        bytes: 1,
        key_groups,
    };
    let merged = merge_references(vec![
        r("a", vec![3, 1]),
        r("b", vec![2]),
        r("a", vec![2, 3]),
        r("c", vec![5]),
        r("c", vec![]),
    ]);
    let got: Vec<(&str, &[u32])> = merged
        .iter()
        .map(|m| (m.object.as_str(), m.key_groups.as_slice()))
        .collect();
    assert_eq!(
        got,
        vec![("a", &[1, 2, 3][..]), ("b", &[2][..]), ("c", &[][..])]
    );
}

fn settings() -> adclick_core::aggregate::AggregateSettings {
    adclick_core::aggregate::AggregateSettings {
        window_ms: 60_000,
        allowed_lateness_ms: 60_000,
        top_n: 3,
        top_windows: vec![1],
        producer: "aggregate-0".into(),
        max_ads_per_window: 1000,
    }
}

fn state_with_two_windows() -> adclick_core::aggregate::AggregateState {
    use adclick_core::map_batch::PartialCount;
    let mut s = adclick_core::aggregate::AggregateState::new(settings());
    s.apply(
        (0..40)
            .map(|i| PartialCount {
                ad_id: format!("ad-{}", i % 13),
                window_start: 60_000 * (i % 2),
                slices: vec!["*".into(), format!("country={}", i % 3)],
                clicks: 1,
                impressions: i as u64 % 2,
                click_keys: vec![i as u64],
                ..Default::default()
            })
            .collect(),
    );
    s
}

fn canonical(mut s: AggregateSnapshot) -> AggregateSnapshot {
    for c in &mut s.cells {
        c.seen.sort_unstable();
        c.slices.sort_by(|a, b| a.0.cmp(&b.0));
    }
    s.cells
        .sort_by(|a, b| (a.window_start, &a.ad_id).cmp(&(b.window_start, &b.ad_id)));
    s
}

#[test]
fn windows_written_as_columns_restore_exactly_the_key_groups_owned() {
    use adclick_core::aggregate::AggregateState;
    let s = state_with_two_windows();
    let frozen = s.freeze();
    let objects: Vec<prost::bytes::Bytes> = frozen
        .window_columns(16)
        .map(|(_, groups)| window_to_pb(groups).encode_to_vec().into())
        .collect();
    assert_eq!(objects.len(), 2);
    let restore = |owned: &dyn Fn(u32) -> bool| {
        let parts: Vec<AggregateSnapshot> = objects
            .iter()
            .map(|b| {
                let p = aggregate_parts(b.clone(), "test").unwrap();
                aggregate_from_parts(&p, owned, "test").unwrap()
            })
            .collect();
        let back = AggregateState::restore(settings(), parts, |_| true);
        canonical(back.snapshot())
    };
    let mut want = s.snapshot();
    want.watermark = None;
    want.last_boundary = None;
    assert_eq!(restore(&|_| true), canonical(want.clone()));
    // Only even key groups: exactly their ads, with all their state.
    want.cells
        .retain(|c| key_group_of(&c.ad_id, 16).0.is_multiple_of(2));
    assert!(!want.cells.is_empty());
    assert_eq!(restore(&|kg| kg.is_multiple_of(2)), canonical(want));
}

#[test]
fn a_damaged_column_object_is_an_error_that_names_it() {
    let frozen = state_with_two_windows().freeze();
    let (_, mut groups) = frozen.window_columns(16).next().unwrap();
    groups[0].clicks.pop();
    let bytes = window_to_pb(groups).encode_to_vec();
    let parts = aggregate_parts(bytes.into(), "window 0 (aggregate-1/w0.e3)").unwrap();
    let err = aggregate_from_parts(&parts, |_| true, "window 0 (aggregate-1/w0.e3)").unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("aggregate-1/w0.e3") && msg.contains("clicks"),
        "{msg}"
    );
}

#[test]
fn a_truncated_snapshot_is_an_error_that_names_it() {
    let snap = AggregateSnapshot {
        watermark: Some(1),
        dedup_horizon: None,
        last_boundary: None,
        cells: vec![],
        columns: Vec::new(),
    };
    let mut bytes = aggregate_to_pb(snap, 16, vec![pb::PendingEpoch::default()]).encode_to_vec();
    bytes.truncate(bytes.len() - 1);
    let err = aggregate_parts(bytes.into(), "1/aggregate-0").unwrap_err();
    assert!(format!("{err:#}").contains("1/aggregate-0"), "{err:#}");
}

#[test]
fn an_incremental_manifest_keeps_the_watermark_and_the_dedup_horizon() {
    let bytes = aggregate_manifest(
        Some(5),
        Some(9),
        Some(4),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    )
    .encode_to_vec();
    let parts = aggregate_parts(bytes.into(), "test").unwrap();
    let snap = aggregate_from_parts(&parts, |_| true, "test").unwrap();
    assert_eq!(
        (snap.watermark, snap.dedup_horizon, snap.last_boundary),
        (Some(5), Some(9), Some(4))
    );
}
