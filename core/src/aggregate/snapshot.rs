//! Snapshot and restore of the Aggregate state, split so that any new
//! key-group assignment can restore any subset of it.

use super::{AggregateSettings, AggregateState, Counts, MinuteState, SliceEntry};
use std::collections::HashMap;

/// Saved state of one (ad, window): per-slice counts and the dedup keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CellSnapshot {
    /// The ad.
    pub ad_id: String,
    /// Window start, epoch ms.
    pub window_start: i64,
    /// `(slice, counts, dirty)`.
    pub slices: Vec<(String, Counts, bool)>,
    /// Dedup keys seen.
    pub seen: Vec<u64>,
}

/// Saved state of an Aggregate actor (cells are split by key group by the
/// caller, so a new assignment can restore any subset).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AggregateSnapshot {
    /// Watermark at the barrier.
    pub watermark: Option<i64>,
    /// Last window end whose top-N was emitted.
    pub last_boundary: Option<i64>,
    /// Every (ad, window) held.
    pub cells: Vec<CellSnapshot>,
}

impl AggregateState {
    /// Captures the state at a barrier.
    pub fn snapshot(&self) -> AggregateSnapshot {
        let mut cells = Vec::with_capacity(self.cells());
        for (start, m) in &self.minutes {
            for (ad, a) in &m.ads {
                cells.push(CellSnapshot {
                    ad_id: ad.clone(),
                    window_start: *start,
                    slices: a
                        .slices
                        .iter()
                        .map(|e| (e.slice.clone(), e.counts, e.dirty))
                        .collect(),
                    seen: a.seen.iter().copied().collect(),
                });
            }
        }
        AggregateSnapshot {
            watermark: self.watermark,
            last_boundary: self.last_boundary,
            cells,
        }
    }

    /// Rebuilds state from snapshots, keeping only the ads `keep` accepts
    /// (those whose key groups this actor now owns).
    pub fn restore(
        settings: AggregateSettings,
        parts: Vec<AggregateSnapshot>,
        keep: impl Fn(&str) -> bool,
    ) -> Self {
        let mut s = Self::new(settings);
        s.watermark = parts.iter().filter_map(|p| p.watermark).min();
        s.last_boundary = parts.iter().filter_map(|p| p.last_boundary).min();
        let w = s.settings.window_ms;
        for p in parts {
            for c in p.cells.into_iter().filter(|c| keep(&c.ad_id)) {
                let closed = s
                    .watermark
                    .is_some_and(|wm| c.window_start.saturating_add(w) <= wm);
                let minute = s
                    .minutes
                    .entry(c.window_start)
                    .or_insert_with(|| MinuteState {
                        ads: HashMap::new(),
                        closed,
                    });
                let ad = minute.ads.entry(c.ad_id).or_default();
                ad.seen.extend(c.seen);
                for (slice, counts, dirty) in c.slices {
                    ad.slices.push(SliceEntry {
                        slice,
                        counts,
                        dirty,
                    });
                }
            }
        }
        s
    }
}
