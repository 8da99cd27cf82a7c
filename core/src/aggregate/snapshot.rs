//! Snapshot and restore of the Aggregate state, split so that any new
//! key-group assignment can restore any subset of it.

use super::names::SharedNames;
use super::{AggregateSettings, AggregateState, CellValue, Counts, FastMap, Window, WindowColumns};
use std::collections::BTreeMap;

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
    /// Highest watermark the state had reached, here or in the states it
    /// was restored from: windows past their dedup horizon at it hold no
    /// dedup keys and take no event. Absent in snapshots written before
    /// dedup keys were freed (the watermark stands in).
    pub dedup_horizon: Option<i64>,
    /// Last window end whose top-N was emitted.
    pub last_boundary: Option<i64>,
    /// Every (ad, window) held, one message per cell (format 4 and
    /// before).
    pub cells: Vec<CellSnapshot>,
    /// Key groups of windows held as columns (format 5).
    pub columns: Vec<WindowColumns>,
}

/// A copy of an Aggregate's state at a barrier, taken cheaply so the actor
/// can go on while the copy is encoded and written elsewhere.
///
/// Freezing copies the flat windows (vectors and tables of plain integers,
/// without the position tables only lookups need) and shares the
/// dictionary's names copy-on-write, never allocating a string: at 2M ads
/// it is a memory copy, where building the string snapshot took seconds
/// inside the actor. It costs a second copy of the changed windows until
/// the write finishes.
/// An incremental freeze ([`AggregateState::freeze_changed`]) copies only
/// the windows that changed since the last one.
#[derive(Clone, Debug)]
pub struct FrozenAggregate {
    watermark: Option<i64>,
    dedup_horizon: Option<i64>,
    last_boundary: Option<i64>,
    /// Every window held at the barrier, copied or not.
    held: Vec<i64>,
    /// The windows copied (all of them for a full freeze).
    pub(super) windows: BTreeMap<i64, Window>,
    pub(super) ad_names: SharedNames,
    pub(super) slice_names: Vec<String>,
}

impl FrozenAggregate {
    /// Number of (ad, window) cells in the copy.
    pub fn cells(&self) -> usize {
        self.windows.values().map(Window::ad_count).sum()
    }

    /// Number of windows in the copy (the ones to write).
    pub fn copied_windows(&self) -> usize {
        self.windows.len()
    }

    /// Watermark at the barrier.
    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    /// Highest watermark reached, at the barrier (see
    /// [`AggregateSnapshot::dedup_horizon`]).
    pub fn dedup_horizon(&self) -> Option<i64> {
        self.dedup_horizon
    }

    /// Last window end whose top-N was emitted, at the barrier.
    pub fn last_boundary(&self) -> Option<i64> {
        self.last_boundary
    }

    /// Start of every window held at the barrier, in order: the windows
    /// not copied are unchanged since the previous checkpoint.
    pub fn held(&self) -> &[i64] {
        &self.held
    }

    /// The snapshot of the frozen state, one cell per (ad, window) with its
    /// slices in the order they were created.
    pub fn snapshot(&self) -> AggregateSnapshot {
        let mut cells = Vec::with_capacity(self.cells());
        for (start, win) in &self.windows {
            self.window_cells(*start, win, &mut cells);
        }
        AggregateSnapshot {
            watermark: self.watermark,
            dedup_horizon: self.dedup_horizon,
            last_boundary: self.last_boundary,
            cells,
            columns: Vec::new(),
        }
    }

    /// One snapshot per copied window, each with only that window's cells
    /// and no watermark: the segments of an incremental checkpoint.
    pub fn window_snapshots(&self) -> impl Iterator<Item = (i64, AggregateSnapshot)> + '_ {
        self.windows.iter().map(|(start, win)| {
            let mut cells = Vec::with_capacity(win.ad_count());
            self.window_cells(*start, win, &mut cells);
            let snap = AggregateSnapshot {
                watermark: None,
                dedup_horizon: None,
                last_boundary: None,
                cells,
                columns: Vec::new(),
            };
            (*start, snap)
        })
    }

    fn window_cells(&self, start: i64, win: &Window, cells: &mut Vec<CellSnapshot>) {
        let first = cells.len();
        let mut at: FastMap<u32, usize> =
            FastMap::with_capacity_and_hasher(win.ad_count(), Default::default());
        for ad in win.ads() {
            at.insert(ad, cells.len());
            cells.push(CellSnapshot {
                ad_id: self.ad_names.get(ad).to_string(),
                window_start: start,
                slices: Vec::new(),
                seen: Vec::new(),
            });
        }
        for c in win.cells() {
            if let Some(&i) = at.get(&c.ad) {
                let counts = Counts {
                    clicks: c.clicks,
                    impressions: c.impressions,
                    revision: c.revision,
                };
                let slice = self.slice_names[c.slice as usize].clone();
                cells[i].slices.push((slice, counts, c.dirty));
            }
        }
        for (ad, key) in win.seen() {
            if let Some(&i) = at.get(&ad) {
                cells[i].seen.push(key);
            }
        }
        debug_assert!(cells[first..].iter().all(|c| c.window_start == start));
    }
}

impl AggregateState {
    /// A consistent copy of the whole state for a checkpoint (see
    /// [`FrozenAggregate`]).
    pub fn freeze(&self) -> FrozenAggregate {
        FrozenAggregate {
            watermark: self.watermark,
            dedup_horizon: self.dedup_horizon,
            last_boundary: self.last_boundary,
            held: self.windows.keys().copied().collect(),
            windows: self
                .windows
                .iter()
                .map(|(start, win)| (*start, win.frozen_copy()))
                .collect(),
            ad_names: self.ads.names(),
            slice_names: self.slices.names(),
        }
    }

    /// A copy for an incremental checkpoint: only the windows that changed
    /// since the last call, or that `written` says have no durable copy
    /// yet (after a restore or a failed write, none has). Clears the
    /// changed marks, so the caller must pass everything it did not copy
    /// through `written` from the last snapshot that was written whole.
    pub fn freeze_changed(&mut self, written: impl Fn(i64) -> bool) -> FrozenAggregate {
        let mut windows = BTreeMap::new();
        for (start, win) in &mut self.windows {
            let changed = win.take_changed();
            if changed || !written(*start) {
                windows.insert(*start, win.frozen_copy());
            }
        }
        FrozenAggregate {
            watermark: self.watermark,
            dedup_horizon: self.dedup_horizon,
            last_boundary: self.last_boundary,
            held: self.windows.keys().copied().collect(),
            windows,
            ad_names: self.ads.names(),
            slice_names: self.slices.names(),
        }
    }

    /// Marks every window unchanged, right after a restore: the restored
    /// windows have durable copies (the objects they were restored from),
    /// which the next incremental checkpoint references instead of writing
    /// again. [`AggregateState::freeze_changed`] still copies any window
    /// its `written` does not cover.
    pub fn clear_changed(&mut self) {
        for win in self.windows.values_mut() {
            win.take_changed();
        }
    }

    /// Windows changed since the last incremental freeze, for tests and
    /// metrics.
    pub fn changed_windows(&self) -> usize {
        self.windows.values().filter(|w| w.is_changed()).count()
    }

    /// Captures the state at a barrier (freezes it and converts the copy).
    pub fn snapshot(&self) -> AggregateSnapshot {
        self.freeze().snapshot()
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
        // The lowest watermark closes windows (none is left unemitted); the
        // highest one seals them: a part that freed a window's dedup keys
        // must not find it taking events again here.
        s.dedup_horizon = parts
            .iter()
            .filter_map(|p| p.dedup_horizon.max(p.watermark))
            .max();
        s.last_boundary = parts.iter().filter_map(|p| p.last_boundary).min();
        let w = s.settings.window_ms;
        let wm = s.watermark;
        let mut restored = std::collections::HashSet::new();
        for p in parts {
            for cols in &p.columns {
                s.restore_columns(cols, &keep, &mut restored);
            }
            for c in p.cells.into_iter().filter(|c| keep(&c.ad_id)) {
                let window = s.windows.entry(c.window_start).or_insert_with(|| {
                    Window::new(wm.is_some_and(|wm| c.window_start.saturating_add(w) <= wm))
                });
                let ad = s.ads.intern(c.ad_id);
                if window.add_ad(ad) {
                    s.ads.acquire(ad);
                }
                for key in c.seen {
                    window.see(ad, key);
                }
                for (slice, counts, dirty) in c.slices {
                    window.put(&CellValue {
                        ad,
                        slice: s.slices.intern(&slice),
                        clicks: counts.clicks,
                        impressions: counts.impressions,
                        revision: counts.revision,
                        dirty,
                    });
                }
            }
        }
        s.forget_sealed_keys();
        s
    }
}
