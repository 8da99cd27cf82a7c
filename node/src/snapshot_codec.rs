//! Core state ↔ versioned protobuf snapshots.

use adclick_core::aggregate::{AggregateSnapshot, CellSnapshot, Counts};
use adclick_core::keygroup::key_group_of;
use adclick_core::reduce::ReduceWindowSnapshot;
use adclick_core::topn::AdClicks;
use adclick_proto::snapshot as pb;
use std::collections::BTreeMap;

/// Current snapshot format version. 2: pending output in protobuf.
pub const VERSION: u32 = 2;

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
    }
}

/// Protobuf → aggregate state, keeping only the key groups `owned` accepts.
pub fn aggregate_from_pb(
    p: pb::AggregateSnapshot,
    owned: impl Fn(u32) -> bool,
) -> AggregateSnapshot {
    let cells = p
        .key_groups
        .into_iter()
        .filter(|g| owned(g.key_group))
        .flat_map(|g| g.cells)
        .map(|c| CellSnapshot {
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
        })
        .collect();
    AggregateSnapshot {
        watermark: p.watermark,
        last_boundary: p.last_boundary,
        cells,
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
        let pb = aggregate_to_pb(snap.clone(), 16, vec![]);
        assert_eq!(aggregate_from_pb(pb.clone(), |_| true).cells.len(), 2);
        let kg_a = key_group_of("a", 16).0;
        let only_a = aggregate_from_pb(pb, |kg| kg == kg_a);
        assert!(only_a
            .cells
            .iter()
            .all(|c| key_group_of(&c.ad_id, 16).0 == kg_a));
        assert!(only_a
            .cells
            .iter()
            .any(|c| c.ad_id == "a" && c.slices == snap.cells[0].slices && c.seen == vec![9]));
    }
}
