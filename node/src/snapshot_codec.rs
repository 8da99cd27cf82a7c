//! Core state ↔ versioned protobuf snapshots.

use adclick_core::aggregate::{
    AggregateSnapshot, CellSnapshot, ColumnParts, Counts, WindowColumns,
};
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
/// 5: window objects hold their key groups as columns (`PackedCells`).
/// 6: saved output holds runs of count records of one window and slice as
/// columns (`PendingCountRun`).
pub const VERSION: u32 = 6;

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

/// One window's object: its key groups as columns
/// (`FrozenAggregate::window_columns`).
pub fn window_to_pb(groups: Vec<ColumnParts>) -> pb::AggregateSnapshot {
    pb::AggregateSnapshot {
        version: VERSION,
        key_groups: groups
            .into_iter()
            .map(|g| pb::KeyGroupState {
                key_group: g.key_group,
                cells: Vec::new(),
                packed: Some(pb::PackedCells {
                    window_start: g.window_start,
                    ad_ids: g.ad_ids,
                    ad_id_lens: g.ad_id_lens,
                    slices: g.slices,
                    cell_ads: g.cell_ads,
                    cell_slices: g.cell_slices,
                    clicks: g.clicks,
                    impressions: g.impressions,
                    revisions: g.revisions,
                    dirty: g.dirty,
                    seen_ads: g.seen_ads,
                    seen_keys: g.seen_keys,
                }),
            })
            .collect(),
        ..Default::default()
    }
}

fn columns_from_pb(key_group: u32, p: pb::PackedCells) -> Result<WindowColumns, String> {
    WindowColumns::try_from(ColumnParts {
        key_group,
        window_start: p.window_start,
        ad_ids: p.ad_ids,
        ad_id_lens: p.ad_id_lens,
        slices: p.slices,
        cell_ads: p.cell_ads,
        cell_slices: p.cell_slices,
        clicks: p.clicks,
        impressions: p.impressions,
        revisions: p.revisions,
        dirty: p.dirty,
        seen_ads: p.seen_ads,
        seen_keys: p.seen_keys,
    })
}

/// Aggregate state → protobuf, split by key group, one message per cell:
/// format 4, which nodes still read. Kept to test that they do, and to
/// compare the formats in `benches`.
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
        dedup_horizon: s.dedup_horizon,
        last_boundary: s.last_boundary,
        key_groups: groups
            .into_iter()
            .map(|(key_group, cells)| pb::KeyGroupState {
                key_group,
                cells,
                packed: None,
            })
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
    dedup_horizon: Option<i64>,
    last_boundary: Option<i64>,
    pending: Vec<pb::PendingEpoch>,
    segments: Vec<pb::WindowSegment>,
    output_refs: Vec<pb::OutputRef>,
) -> pb::AggregateSnapshot {
    pb::AggregateSnapshot {
        version: VERSION,
        watermark,
        dedup_horizon,
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
    let mut columns = Vec::new();
    for blob in &p.key_groups {
        let head = pb::KeyGroupHead::decode(blob.clone())
            .map_err(|e| anyhow::anyhow!("decoding a key group of {what}: {e}"))?;
        if !owned(head.key_group) {
            continue;
        }
        let group = pb::KeyGroupState::decode(blob.clone())
            .map_err(|e| anyhow::anyhow!("decoding key group {} of {what}: {e}", head.key_group))?;
        cells.extend(group.cells.into_iter().map(cell_from_pb));
        if let Some(packed) = group.packed {
            let cols = columns_from_pb(head.key_group, packed)
                .map_err(|e| anyhow::anyhow!("{what} is damaged: {e}"))?;
            columns.push(cols);
        }
    }
    Ok(AggregateSnapshot {
        watermark: p.watermark,
        dedup_horizon: p.dedup_horizon,
        last_boundary: p.last_boundary,
        cells,
        columns,
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
#[path = "snapshot_codec_tests.rs"]
mod tests;
