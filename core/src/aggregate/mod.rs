//! State of one Aggregate actor: per-minute counts per (ad, slice), dedup
//! sets, lateness handling and local top-N.
//!
//! Ad ids and slices are interned to integers ([`dict`]) and each window's
//! counts are fixed-size cells in one vector ([`cells`]): at 2M distinct ads
//! almost every event opens its own cell, so per-cell strings and sets were
//! where the memory and the time went.
//!
//! The state machine is pure. The actor feeds it batches and watermarks and
//! ships whatever it returns.

#[cfg(test)]
use crate::map_batch::PartialCount;
use crate::output::CountRecord;
use crate::topn::{AdClicks, TopN};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

mod adset;
mod apply;
mod cells;
mod columns;
mod dict;
mod lines;
mod names;
mod running;
mod side;
mod snapshot;
mod sum_table;
mod window;
use cells::CellValue;
pub use columns::{ColumnParts, WindowColumns};
use dict::{AdDict, SliceDict};
use running::{sum_windows, RunningSums};

pub use side::{PartialSummary, SideEvent};
pub use snapshot::{AggregateSnapshot, CellSnapshot, FrozenAggregate};
use sum_table::SumTable;
use window::Window;

/// Static settings of an Aggregate actor.
#[derive(Clone, Debug)]
pub struct AggregateSettings {
    /// Window size, ms.
    pub window_ms: i64,
    /// How long after a window closed late events still update it.
    pub allowed_lateness_ms: i64,
    /// N of top-N.
    pub top_n: usize,
    /// The M values (in windows) for which top-N is maintained.
    pub top_windows: Vec<u32>,
    /// Producer name stamped on records.
    pub producer: String,
    /// Most ads one window may hold on this actor; new ads beyond it go to
    /// the DLQ, so 10M distinct ads cannot exhaust memory.
    pub max_ads_per_window: usize,
}

impl AggregateSettings {
    fn max_m(&self) -> i64 {
        i64::from(self.top_windows.iter().copied().max().unwrap_or(1))
    }

    /// Minutes are dropped once no late event can touch them nor any top-N
    /// window that may still be recomputed.
    fn retention_ms(&self) -> i64 {
        self.allowed_lateness_ms + self.max_m() * self.window_ms
    }

    /// Whether the window starting at `start` is past its dedup horizon at
    /// `wm` (its end plus the allowed lateness): it takes no event any more.
    fn sealed(&self, start: i64, wm: i64) -> bool {
        start
            .saturating_add(self.window_ms)
            .saturating_add(self.allowed_lateness_ms)
            <= wm
    }

    /// Whether the window starting at `start` is past retention at `wm`.
    fn expired(&self, start: i64, wm: i64) -> bool {
        start
            .saturating_add(self.window_ms)
            .saturating_add(self.retention_ms())
            <= wm
    }

    /// Ends of the top-N windows that contain each window of `starts` and
    /// that `keep` accepts.
    fn boundaries<'a>(
        &self,
        starts: impl IntoIterator<Item = &'a i64>,
        keep: impl Fn(i64) -> bool,
    ) -> BTreeSet<i64> {
        let mut out = BTreeSet::new();
        for start in starts {
            for k in 1..=self.max_m() {
                let t = start + k * self.window_ms;
                if keep(t) {
                    out.insert(t);
                }
            }
        }
        out
    }

    /// Boundaries already emitted that a late change to `starts` revises.
    fn revised_boundaries<'a>(
        &self,
        starts: impl IntoIterator<Item = &'a i64>,
        last: Option<i64>,
    ) -> BTreeSet<i64> {
        self.boundaries(starts, |t| last.is_some_and(|lb| t <= lb))
    }

    /// Boundaries the watermark `wm` passes for the first time.
    fn new_boundaries<'a>(
        &self,
        starts: impl IntoIterator<Item = &'a i64>,
        last: Option<i64>,
        wm: i64,
    ) -> BTreeSet<i64> {
        self.boundaries(starts, |t| t <= wm && last.is_none_or(|lb| t > lb))
    }

    /// Boundaries already passed whose allowed lateness has not expired:
    /// what Reduce may still hold after a rescale.
    fn open_boundaries<'a>(
        &self,
        starts: impl IntoIterator<Item = &'a i64>,
        last: i64,
        wm: Option<i64>,
    ) -> BTreeSet<i64> {
        let lateness = self.allowed_lateness_ms;
        self.boundaries(starts, |t| {
            t <= last && wm.is_none_or(|wm| t.saturating_add(lateness) > wm)
        })
    }
}

/// Absolute counts of one (ad, window, slice).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Clicks.
    pub clicks: u64,
    /// Impressions.
    pub impressions: u64,
    /// Number of times the value was re-emitted after the first emission.
    pub revision: u32,
}

/// A local top-N list, sent Aggregate → Reduce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalTopN {
    /// Window end, epoch ms.
    pub window_end: i64,
    /// M.
    pub window_minutes: u32,
    /// Slice.
    pub slice: String,
    /// Best first; empty means "this aggregate has nothing for it any more".
    pub ads: Vec<AdClicks>,
}

/// Everything one step of the state machine asks the actor to send.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AggregateOutput {
    /// Count records for the sink.
    pub counts: Vec<CountRecord>,
    /// Local top-N lists for Reduce.
    pub top: Vec<LocalTopN>,
    /// Events for the late topic.
    pub late: Vec<SideEvent>,
    /// Partial counts refused by the per-window ad limit, for the DLQ.
    pub overflow: Vec<SideEvent>,
    /// Events those refused partials carried.
    pub overflow_events: u64,
    /// Duplicates dropped in this step.
    pub duplicates: u64,
}

/// The Aggregate actor's state.
#[derive(Clone, Debug)]
pub struct AggregateState {
    settings: AggregateSettings,
    windows: BTreeMap<i64, Window>,
    watermark: Option<i64>,
    /// The highest watermark this state, or any state it was restored
    /// from, reached. A window past its dedup horizon at it takes no event
    /// (it goes to the late topic), and its dedup keys are freed. A restore
    /// after a rescale takes the lowest watermark of its parts, so without
    /// this a window another actor had already sealed would count again a
    /// duplicate whose key was freed.
    dedup_horizon: Option<i64>,
    last_boundary: Option<i64>,
    ads: AdDict,
    slices: SliceDict,
    /// M-window sums carried between boundaries; not part of a snapshot.
    running: RunningSums,
}

impl AggregateState {
    /// Empty state.
    pub fn new(settings: AggregateSettings) -> Self {
        Self {
            settings,
            windows: BTreeMap::new(),
            watermark: None,
            dedup_horizon: None,
            last_boundary: None,
            ads: AdDict::default(),
            slices: SliceDict::default(),
            running: RunningSums::default(),
        }
    }

    /// The actor's current watermark.
    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    /// Number of (ad, window) cells held, for metrics and memory bounds.
    pub fn cells(&self) -> usize {
        self.windows.values().map(Window::ad_count).sum()
    }

    /// Number of windows held.
    pub fn windows(&self) -> usize {
        self.windows.len()
    }

    /// Distinct ads in the dictionary: what an ad-id explosion costs beyond
    /// the cells themselves.
    pub fn interned_ads(&self) -> usize {
        self.ads.len()
    }

    /// Heap bytes of the state (cells, indexes, dedup sets, dictionaries),
    /// so memory per held cell can be measured rather than guessed.
    pub fn heap_bytes(&self) -> usize {
        self.windows.values().map(Window::heap_bytes).sum::<usize>() + self.ads.heap_bytes()
    }

    /// Late but allowed: re-emits the changed cells of closed windows with
    /// revision + 1 and recomputes every already-emitted top-N window that
    /// contains them.
    fn emit_revisions(&mut self, touched_closed: &BTreeSet<i64>, out: &mut AggregateOutput) {
        for start in touched_closed {
            self.emit_window(*start, true, &mut out.counts);
        }
        let revised = self
            .settings
            .revised_boundaries(touched_closed, self.last_boundary);
        for t in revised {
            self.local_top(t, &mut out.top, true);
        }
    }

    /// Emits what a restore brought into windows that are closed here but
    /// whose counts were never emitted, as late revisions. A rescale can
    /// merge the part of an actor that had no watermark yet (its cells
    /// still unemitted) into a state whose watermark, taken from the other
    /// parts, closed their window: without this those counts would wait
    /// for a late event to the same window, which may never come. A state
    /// restored from its own checkpoint holds none: a closed window's
    /// changes are emitted as they happen. Call once, after `restore`.
    pub fn emit_restored(&mut self) -> AggregateOutput {
        let mut out = AggregateOutput::default();
        let unemitted: BTreeSet<i64> = self
            .windows
            .iter()
            .filter(|(_, win)| win.closed && win.cells().any(|c| c.dirty))
            .map(|(start, _)| *start)
            .collect();
        self.emit_revisions(&unemitted, &mut out);
        out
    }

    /// Advances the watermark: closes windows, emits their counts and the
    /// local top-N of every window boundary passed, and drops expired state.
    pub fn advance(&mut self, wm: i64) -> AggregateOutput {
        let mut out = AggregateOutput::default();
        if self.watermark.is_some_and(|old| wm <= old) {
            return out;
        }
        self.watermark = Some(wm);
        self.dedup_horizon = self.dedup_horizon.max(Some(wm));
        let w = self.settings.window_ms;
        let to_close: Vec<i64> = self
            .windows
            .iter()
            .filter(|(start, win)| !win.closed && start.saturating_add(w) <= wm)
            .map(|(s, _)| *s)
            .collect();
        for start in to_close {
            if let Some(win) = self.windows.get_mut(&start) {
                win.close();
            }
            self.emit_window(start, false, &mut out.counts);
        }
        let boundaries = self
            .settings
            .new_boundaries(self.windows.keys(), self.last_boundary, wm);
        for t in &boundaries {
            self.local_top(*t, &mut out.top, false);
        }
        if let Some(last) = boundaries.last() {
            self.last_boundary = Some(self.last_boundary.map_or(*last, |lb| lb.max(*last)));
        }
        let expired: Vec<i64> = self
            .windows
            .iter()
            .filter(|(start, win)| win.closed && self.settings.expired(**start, wm))
            .map(|(s, _)| *s)
            .collect();
        for start in expired {
            if let Some(win) = self.windows.remove(&start) {
                self.running.drop_window(start, &win);
                for ad in win.ads() {
                    self.ads.release(ad);
                }
            }
        }
        self.forget_sealed_keys();
        out
    }

    /// Frees the dedup keys of every window past its dedup horizon. A
    /// window a checkpoint still shares keeps them until a later call.
    fn forget_sealed_keys(&mut self) {
        let Some(h) = self.dedup_horizon else {
            return;
        };
        for (start, win) in &mut self.windows {
            if !self.settings.sealed(*start, h) {
                // Windows are in start order: the rest are later still.
                break;
            }
            win.forget_seen();
        }
    }

    /// After a rescale, Reduce holds lists split by the old key groups;
    /// this is this actor's share of every window Reduce may still hold:
    /// the local top-N of each boundary already passed whose allowed
    /// lateness has not expired (later ones are sent when the watermark
    /// passes them). Empty lists are included, as on any recompute.
    pub fn resend_lists(&self) -> Vec<LocalTopN> {
        let Some(last) = self.last_boundary else {
            return Vec::new();
        };
        let boundaries = self
            .settings
            .open_boundaries(self.windows.keys(), last, self.watermark);
        let mut out = Vec::new();
        for t in boundaries {
            self.local_top_recomputed(t, &mut out);
        }
        out
    }

    fn emit_window(&mut self, start: i64, only_dirty: bool, out: &mut Vec<CountRecord>) {
        let w = self.settings.window_ms;
        let Some(win) = self.windows.get_mut(&start) else {
            return;
        };
        let (ads, slices) = (&self.ads, &self.slices);
        let producer: Arc<str> = self.settings.producer.as_str().into();
        if !only_dirty {
            out.reserve(win.cell_count());
        }
        // Cells are held in creation order, which alternates slices (an
        // event makes its ad's `*` cell and its country's together). The
        // records leave grouped by slice, so the sink packs each slice's
        // run into few messages (`output_wire`).
        let mut by_slice: Vec<Vec<CountRecord>> = Vec::new();
        win.emit(only_dirty, |c| {
            let i = c.slice as usize;
            if by_slice.len() <= i {
                by_slice.resize_with(i + 1, Vec::new);
            }
            by_slice[i].push(CountRecord {
                ad_id: ads.shared_name(c.ad),
                window_start: start,
                window_end: start + w,
                slice: slices.shared(c.slice),
                clicks: c.clicks,
                impressions: c.impressions,
                revision: c.revision,
                epoch: 0,
                producer: producer.clone(),
            });
        });
        for mut records in by_slice {
            out.append(&mut records);
        }
    }

    /// Local top-N for every M and slice of the window ending at `t`, at
    /// a boundary the watermark just passed: M-window sums come from the
    /// running sums, stepped forward by one window.
    fn local_top(&mut self, t: i64, out: &mut Vec<LocalTopN>, recompute: bool) {
        if recompute {
            return self.local_top_recomputed(t, out);
        }
        let w = self.settings.window_ms;
        let (n, slices) = (self.settings.top_n, self.slices.len());
        for (idx, &m) in self.settings.top_windows.iter().enumerate() {
            let span = i64::from(m) * w;
            let tops = match single_window(&self.windows, t - span, t) {
                Some(window) => rank_one(window, &self.ads, slices, n),
                None => rank_sums(
                    self.running.at(idx, span, t, &self.windows),
                    &self.ads,
                    slices,
                    n,
                ),
            };
            push_lists(&self.slices, t, m, tops, false, out);
        }
    }

    /// Local top-N of an already-passed boundary, recomputed from the
    /// windows (a late event changed one of them, or a rescale asks for
    /// this actor's share). Empty lists are sent too so Reduce can replace
    /// old ones.
    fn local_top_recomputed(&self, t: i64, out: &mut Vec<LocalTopN>) {
        let w = self.settings.window_ms;
        let (n, slices) = (self.settings.top_n, self.slices.len());
        for &m in &self.settings.top_windows {
            let span = i64::from(m) * w;
            let tops = match single_window(&self.windows, t - span, t) {
                Some(window) => rank_one(window, &self.ads, slices, n),
                None => rank_sums(
                    &sum_windows(&self.windows, t - span, t),
                    &self.ads,
                    slices,
                    n,
                ),
            };
            push_lists(&self.slices, t, m, tops, true, out);
        }
    }
}

/// Pushes one list per slice that had an ad with clicks, in slice-name
/// order (empty ones too on a recompute, so Reduce replaces old lists).
fn push_lists(
    slices: &SliceDict,
    t: i64,
    m: u32,
    tops: Vec<TopN<'_>>,
    recompute: bool,
    out: &mut Vec<LocalTopN>,
) {
    let mut order: Vec<(usize, TopN<'_>)> = tops
        .into_iter()
        .enumerate()
        .filter(|(_, top)| top.offered())
        .collect();
    order.sort_by(|a, b| slices.name(a.0 as u32).cmp(slices.name(b.0 as u32)));
    for (i, top) in order {
        let ads = top.finish();
        if !ads.is_empty() || recompute {
            out.push(LocalTopN {
                window_end: t,
                window_minutes: m,
                slice: slices.name(i as u32).to_owned(),
                ads,
            });
        }
    }
}

/// The only window held in `from..to`, if exactly one is: an (ad, slice)
/// is unique within a window, so its cells need no summing.
fn single_window(windows: &BTreeMap<i64, Window>, from: i64, to: i64) -> Option<&Window> {
    let mut it = windows.range(from..to);
    match (it.next(), it.next()) {
        (Some((_, w)), None) => Some(w),
        _ => None,
    }
}

/// Per slice id, the best `n` ads of one window, ranked in one pass over
/// its cells.
fn rank_one<'a>(window: &Window, ads: &'a AdDict, slices: usize, n: usize) -> Vec<TopN<'a>> {
    let mut tops: Vec<TopN<'a>> = (0..slices).map(|_| TopN::new(n)).collect();
    for c in window.cells() {
        tops[c.slice as usize].offer(c.clicks, || ads.name(c.ad));
    }
    tops
}

/// Per slice id, the best `n` ads of the summed clicks, ranked in one pass
/// over the sums.
fn rank_sums<'a>(sums: &SumTable, ads: &'a AdDict, slices: usize, n: usize) -> Vec<TopN<'a>> {
    let mut tops: Vec<TopN<'a>> = (0..slices).map(|_| TopN::new(n)).collect();
    for (k, clicks) in sums.iter() {
        tops[(k >> 32) as usize].offer(clicks, || ads.name(k as u32));
    }
    tops
}

/// A hash map with foldhash (randomly seeded per map, much faster than
/// SipHash on short keys) for the per-boundary scratch maps of `local_top`.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[cfg(test)]
mod dedup_horizon_tests;
#[cfg(test)]
mod equivalence_tests;
#[cfg(test)]
mod reference;

#[cfg(test)]
mod tests;
