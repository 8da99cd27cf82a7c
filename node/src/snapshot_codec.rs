//! Core state ↔ versioned protobuf snapshots.

use adclick_core::aggregate::{AggregateSnapshot, CellSnapshot, Counts};
use adclick_core::keygroup::key_group_of;
use adclick_core::reduce::ReduceWindowSnapshot;
use adclick_core::topn::AdClicks;
use adclick_proto::snapshot as pb;

/// The references an incremental snapshot holds to one window and to one
/// epoch of output.
pub use adclick_proto::snapshot::{OutputRef, WindowSegment};
use prost::Message;
use std::collections::BTreeMap;

/// Current snapshot format version. 2: pending output in protobuf.
/// 3: an Aggregate's windows are shared objects its snapshot references.
/// 4: a window reference may name the key groups it covers (a restored
/// Aggregate references the objects it restored from).
pub const VERSION: u32 = 4;

/// Refuses a snapshot written by a newer release: reading it with this
/// one could silently skip fields it does not know (such as saved output).
pub fn check_version(version: u32, what: &str) -> anyhow::Result<()> {
    if version > VERSION {
        anyhow::bail!(
            "{what} has snapshot format {version}; this release reads up to {VERSION}: \
             upgrade the nodes before restoring it"
        );
    }
    Ok(())
}

/// Aggregate state → protobuf, split by key group.
pub fn aggregate_to_pb(
    s: AggregateSnapshot,
    key_groups: u32,
    pending: Vec<pb::PendingEpoch>,
) -> pb::AggregateSnapshot {
    let mut groups: BTreeMap<u32, Vec<pb::Cell>> = BTreeMap::new();
    for c in s.cells {
        let kg = key_group_of(&c.ad_id, key_groups).0;
        groups.entry(kg).or_default().push(pb::Cell {
            ad_id: c.ad_id,
            window_start: c.window_start,
            slices: c
                .slices
                .into_iter()
                .map(|(slice, k, dirty)| pb::SliceCounts {
                    slice,
                    clicks: k.clicks,
                    impressions: k.impressions,
                    revision: k.revision,
                    dirty,
                })
                .collect(),
            seen: c.seen,
        });
    }
    pb::AggregateSnapshot {
        version: VERSION,
        watermark: s.watermark,
        last_boundary: s.last_boundary,
        key_groups: groups
            .into_iter()
            .map(|(key_group, cells)| pb::KeyGroupState { key_group, cells })
            .collect(),
        pending,
        segments: Vec::new(),
        output_refs: Vec::new(),
    }
}

/// An Aggregate's incremental snapshot: the watermark, the saved output
/// (inline, or by reference to the object of an epoch) and a reference to
/// the object of every window held.
pub fn aggregate_manifest(
    watermark: Option<i64>,
    last_boundary: Option<i64>,
    pending: Vec<pb::PendingEpoch>,
    segments: Vec<pb::WindowSegment>,
    output_refs: Vec<pb::OutputRef>,
) -> pb::AggregateSnapshot {
    pb::AggregateSnapshot {
        version: VERSION,
        watermark,
        last_boundary,
        key_groups: Vec::new(),
        pending,
        segments,
        output_refs,
    }
}

/// Reads an encoded Aggregate snapshot without decoding its key groups or
/// saved output: after a rescale each Aggregate reads every old snapshot,
/// and decoding all of them in full made restore time grow with the
/// number of Aggregates (`aggregate_from_parts` decodes only what it owns).
pub fn aggregate_parts(
    bytes: prost::bytes::Bytes,
    what: &str,
) -> anyhow::Result<pb::AggregateSnapshotParts> {
    let parts = pb::AggregateSnapshotParts::decode(bytes)
        .map_err(|e| anyhow::anyhow!("decoding {what}: {e}"))?;
    check_version(parts.version, what)?;
    Ok(parts)
}

/// The key groups `owned` accepts, decoded; the others are skipped after
/// reading their number.
pub fn aggregate_from_parts(
    p: &pb::AggregateSnapshotParts,
    owned: impl Fn(u32) -> bool,
    what: &str,
) -> anyhow::Result<AggregateSnapshot> {
    let mut cells = Vec::new();
    for blob in &p.key_groups {
        let head = pb::KeyGroupHead::decode(blob.clone())
            .map_err(|e| anyhow::anyhow!("decoding a key group of {what}: {e}"))?;
        if !owned(head.key_group) {
            continue;
        }
        let group = pb::KeyGroupState::decode(blob.clone())
            .map_err(|e| anyhow::anyhow!("decoding key group {} of {what}: {e}", head.key_group))?;
        cells.extend(group.cells.into_iter().map(cell_from_pb));
    }
    Ok(AggregateSnapshot {
        watermark: p.watermark,
        last_boundary: p.last_boundary,
        cells,
    })
}

/// The key groups an encoded Aggregate snapshot holds, in its order; only
/// their numbers are decoded.
pub fn key_groups_in(p: &pb::AggregateSnapshotParts, what: &str) -> anyhow::Result<Vec<u32>> {
    p.key_groups
        .iter()
        .map(|blob| {
            pb::KeyGroupHead::decode(blob.clone())
                .map(|h| h.key_group)
                .map_err(|e| anyhow::anyhow!("decoding a key group of {what}: {e}"))
        })
        .collect()
}

/// The part of a referenced window object (`bytes`) this actor restores:
/// the key groups it owns that `seg` covers. Also returns the reference
/// the actor's next snapshot makes instead of writing them again: `None`
/// when it keeps none of them, the whole object when it keeps all, else
/// narrowed to the kept key groups.
pub fn narrow_segment(
    seg: pb::WindowSegment,
    bytes: prost::bytes::Bytes,
    owned: impl Fn(u32) -> bool,
) -> anyhow::Result<(AggregateSnapshot, Option<pb::WindowSegment>)> {
    let what = format!("window {} ({})", seg.window_start, seg.object);
    let parts = aggregate_parts(bytes, &what)?;
    let covered: std::collections::BTreeSet<u32> = seg.key_groups.iter().copied().collect();
    let accept = |kg: u32| owned(kg) && (covered.is_empty() || covered.contains(&kg));
    let held = key_groups_in(&parts, &what)?;
    let kept: Vec<u32> = held.iter().copied().filter(|kg| accept(*kg)).collect();
    let reference = match kept.len() {
        0 => None,
        n if n == held.len() => Some(pb::WindowSegment {
            key_groups: Vec::new(),
            ..seg
        }),
        _ => Some(pb::WindowSegment {
            key_groups: kept,
            ..seg
        }),
    };
    Ok((aggregate_from_parts(&parts, accept, &what)?, reference))
}

/// One reference per object: after a rescale several old snapshots
/// reference the same object, each narrowed to the key groups its actor
/// owned; together they cover the union (all of it if any covers all).
pub fn merge_references(refs: Vec<pb::WindowSegment>) -> Vec<pb::WindowSegment> {
    let mut by_object: BTreeMap<String, pb::WindowSegment> = BTreeMap::new();
    for r in refs {
        match by_object.get_mut(&r.object) {
            None => {
                by_object.insert(r.object.clone(), r);
            }
            Some(m) if m.key_groups.is_empty() || r.key_groups.is_empty() => {
                m.key_groups.clear();
            }
            Some(m) => {
                m.key_groups.extend(r.key_groups);
                m.key_groups.sort_unstable();
                m.key_groups.dedup();
            }
        }
    }
    by_object.into_values().collect()
}

/// The saved, possibly uncommitted output of an Aggregate snapshot.
pub fn pending_from_parts(
    p: &pb::AggregateSnapshotParts,
    what: &str,
) -> anyhow::Result<Vec<pb::PendingEpoch>> {
    p.pending
        .iter()
        .map(|b| {
            pb::PendingEpoch::decode(b.clone())
                .map_err(|e| anyhow::anyhow!("decoding saved output of {what}: {e}"))
        })
        .collect()
}

fn cell_from_pb(c: pb::Cell) -> CellSnapshot {
    CellSnapshot {
        ad_id: c.ad_id,
        window_start: c.window_start,
        slices: c
            .slices
            .into_iter()
            .map(|s| {
                (
                    s.slice,
                    Counts {
                        clicks: s.clicks,
                        impressions: s.impressions,
                        revision: s.revision,
                    },
                    s.dirty,
                )
            })
            .collect(),
        seen: c.seen,
    }
}

fn list_to_pb(input: u32, ads: &[AdClicks]) -> pb::TopList {
    pb::TopList {
        input,
        ad_ids: ads.iter().map(|a| a.ad_id.clone()).collect(),
        clicks: ads.iter().map(|a| a.clicks).collect(),
    }
}

fn list_from_pb(l: &pb::TopList) -> Vec<AdClicks> {
    l.ad_ids
        .iter()
        .zip(&l.clicks)
        .map(|(a, c)| AdClicks {
            ad_id: a.clone(),
            clicks: *c,
        })
        .collect()
}

/// Reduce state → protobuf.
pub fn reduce_to_pb(
    windows: Vec<ReduceWindowSnapshot>,
    pending: Vec<pb::PendingEpoch>,
) -> pb::ReduceSnapshot {
    pb::ReduceSnapshot {
        version: VERSION,
        windows: windows
            .into_iter()
            .map(|w| pb::ReduceWindow {
                window_end: w.window_end,
                window_minutes: w.window_minutes,
                slice: w.slice,
                lists: w.lists.iter().map(|(i, l)| list_to_pb(*i, l)).collect(),
                emitted: w.emitted.is_some(),
                revision: w.emitted.as_ref().map_or(0, |e| e.0),
                emitted_list: w.emitted.as_ref().map(|e| list_to_pb(0, &e.1)),
            })
            .collect(),
        pending,
    }
}

/// Protobuf → reduce state.
pub fn reduce_from_pb(p: &pb::ReduceSnapshot) -> Vec<ReduceWindowSnapshot> {
    p.windows
        .iter()
        .map(|w| ReduceWindowSnapshot {
            window_end: w.window_end,
            window_minutes: w.window_minutes,
            slice: w.slice.clone(),
            lists: w.lists.iter().map(|l| (l.input, list_from_pb(l))).collect(),
            emitted: w.emitted.then(|| {
                (
                    w.revision,
                    w.emitted_list
                        .as_ref()
                        .map(list_from_pb)
                        .unwrap_or_default(),
                )
            }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregate_round_trip_filters_key_groups() {
        let snap = AggregateSnapshot {
            watermark: Some(5),
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
        assert_eq!((all.watermark, all.last_boundary), (Some(5), Some(4)));
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
            last_boundary: None,
            cells: vec![CellSnapshot {
                ad_id: ad.clone(),
                window_start: 60_000,
                slices: vec![],
                seen: vec![],
            }],
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
            last_boundary: None,
            cells,
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

    #[test]
    fn a_truncated_snapshot_is_an_error_that_names_it() {
        let snap = AggregateSnapshot {
            watermark: Some(1),
            last_boundary: None,
            cells: vec![],
        };
        let mut bytes =
            aggregate_to_pb(snap, 16, vec![pb::PendingEpoch::default()]).encode_to_vec();
        bytes.truncate(bytes.len() - 1);
        let err = aggregate_parts(bytes.into(), "1/aggregate-0").unwrap_err();
        assert!(format!("{err:#}").contains("1/aggregate-0"), "{err:#}");
    }
}
