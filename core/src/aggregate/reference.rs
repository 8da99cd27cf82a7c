//! The Aggregate state as it was before the flat, interned layout: kept,
//! for tests only, as the oracle the property test compares the new state
//! against (same outputs on random streams, late revisions, duplicates and
//! key-group moves).

#![allow(dead_code)]

use super::side::{late_event, overflow_event};
use super::{
    AggregateOutput, AggregateSettings, AggregateSnapshot, CellSnapshot, Counts, LocalTopN,
};
use crate::map_batch::PartialCount;
use crate::output::CountRecord;
use crate::topn::top_n;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

#[derive(Clone, Debug)]
struct SliceEntry {
    slice: String,
    counts: Counts,
    dirty: bool,
}

#[derive(Clone, Debug, Default)]
struct AdMinute {
    slices: Vec<SliceEntry>,
    /// Dedup keys are already xxh3 digests; foldhash mixes them far faster
    /// than SipHash (one insert per event).
    seen: HashSet<u64, foldhash::fast::RandomState>,
}

#[derive(Clone, Debug, Default)]
struct MinuteState {
    ads: HashMap<String, AdMinute>,
    closed: bool,
}

/// The Aggregate actor's state.
#[derive(Clone, Debug)]
pub(super) struct ReferenceState {
    settings: AggregateSettings,
    minutes: BTreeMap<i64, MinuteState>,
    watermark: Option<i64>,
    /// Highest watermark reached here or in a restored part: minutes whose
    /// end plus the allowed lateness it passed take no event and keep no
    /// dedup keys.
    dedup_horizon: Option<i64>,
    last_boundary: Option<i64>,
}

impl ReferenceState {
    /// Empty state.
    pub fn new(settings: AggregateSettings) -> Self {
        Self {
            settings,
            minutes: BTreeMap::new(),
            watermark: None,
            dedup_horizon: None,
            last_boundary: None,
        }
    }

    /// The actor's current watermark.
    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    /// Number of (ad, window) cells held, for metrics and memory bounds.
    pub fn cells(&self) -> usize {
        self.minutes.values().map(|m| m.ads.len()).sum()
    }

    /// Number of windows held.
    pub fn windows(&self) -> usize {
        self.minutes.len()
    }

    /// Applies one batch of partial counts.
    pub fn apply(&mut self, partials: Vec<PartialCount>) -> AggregateOutput {
        let mut out = AggregateOutput::default();
        let w = self.settings.window_ms;
        let mut touched_closed = BTreeSet::new();
        for mut p in partials {
            let end = p.window_start.saturating_add(w);
            if let Some(h) = self.dedup_horizon {
                if end.saturating_add(self.settings.allowed_lateness_ms) <= h {
                    out.late.push(late_event(&p.as_partial_ref(), end, h));
                    continue;
                }
            }
            let wm = self.watermark;
            let minute = self
                .minutes
                .entry(p.window_start)
                .or_insert_with(|| MinuteState {
                    ads: HashMap::new(),
                    closed: wm.is_some_and(|wm| end <= wm),
                });
            let closed = minute.closed;
            let cap = self.settings.max_ads_per_window;
            // A window's ad set only grows while it is held, so a refused
            // (ad, window) stays refused: its count is never half-reported.
            if minute.ads.len() >= cap && !minute.ads.contains_key(p.ad_id.as_str()) {
                out.overflow_events += p.events();
                out.overflow
                    .push(overflow_event(&p.as_partial_ref(), end, cap, wm));
                continue;
            }
            let ad = match minute.ads.get_mut(p.ad_id.as_str()) {
                Some(a) => a,
                // The partial is owned: move its id instead of cloning it.
                None => minute.ads.entry(std::mem::take(&mut p.ad_id)).or_default(),
            };
            let mut clicks = p.clicks;
            let mut impressions = p.impressions;
            for k in &p.click_keys {
                if ad.seen.insert(*k) {
                    clicks += 1;
                } else {
                    out.duplicates += 1;
                }
            }
            for k in &p.impression_keys {
                if ad.seen.insert(*k) {
                    impressions += 1;
                } else {
                    out.duplicates += 1;
                }
            }
            if clicks == 0 && impressions == 0 {
                continue;
            }
            for s in p.slices {
                let entry = match ad.slices.iter_mut().position(|e| e.slice == s) {
                    Some(i) => &mut ad.slices[i],
                    None => {
                        ad.slices.push(SliceEntry {
                            slice: s,
                            counts: Counts::default(),
                            dirty: false,
                        });
                        let last = ad.slices.len() - 1;
                        &mut ad.slices[last]
                    }
                };
                entry.counts.clicks += clicks;
                entry.counts.impressions += impressions;
                entry.dirty = true;
            }
            if closed {
                touched_closed.insert(p.window_start);
            }
        }
        self.emit_revisions(&touched_closed, &mut out);
        out
    }

    /// Late but allowed: re-emits the touched cells with revision + 1 and
    /// recomputes every already-emitted top-N window that contains them.
    fn emit_revisions(&mut self, touched_closed: &BTreeSet<i64>, out: &mut AggregateOutput) {
        for start in touched_closed {
            self.emit_minute(*start, true, &mut out.counts);
        }
        let revised = self
            .settings
            .revised_boundaries(touched_closed, self.last_boundary);
        for t in revised {
            self.local_top(t, &mut out.top, true);
        }
    }

    /// Emits the never-emitted counts a restore brought into closed
    /// minutes, as late revisions (see `AggregateState::emit_restored`).
    pub fn emit_restored(&mut self) -> AggregateOutput {
        let mut out = AggregateOutput::default();
        let unemitted: BTreeSet<i64> = self
            .minutes
            .iter()
            .filter(|(_, m)| m.closed && m.ads.values().any(|a| a.slices.iter().any(|e| e.dirty)))
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
            .minutes
            .iter()
            .filter(|(start, m)| !m.closed && start.saturating_add(w) <= wm)
            .map(|(s, _)| *s)
            .collect();
        for start in to_close {
            if let Some(m) = self.minutes.get_mut(&start) {
                m.closed = true;
            }
            self.emit_minute(start, false, &mut out.counts);
        }
        let boundaries = self
            .settings
            .new_boundaries(self.minutes.keys(), self.last_boundary, wm);
        for t in &boundaries {
            self.local_top(*t, &mut out.top, false);
        }
        if let Some(last) = boundaries.last() {
            self.last_boundary = Some(self.last_boundary.map_or(*last, |lb| lb.max(*last)));
        }
        let settings = &self.settings;
        self.minutes
            .retain(|start, m| !(m.closed && settings.expired(*start, wm)));
        self.forget_sealed_keys();
        out
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
            .open_boundaries(self.minutes.keys(), last, self.watermark);
        let mut out = Vec::new();
        for t in boundaries {
            self.local_top(t, &mut out, true);
        }
        out
    }

    fn emit_minute(&mut self, start: i64, only_dirty: bool, out: &mut Vec<CountRecord>) {
        let w = self.settings.window_ms;
        let Some(m) = self.minutes.get_mut(&start) else {
            return;
        };
        for (ad_id, ad) in m.ads.iter_mut() {
            for e in ad.slices.iter_mut() {
                if only_dirty && !e.dirty {
                    continue;
                }
                if only_dirty {
                    e.counts.revision += 1;
                }
                e.dirty = false;
                out.push(CountRecord {
                    ad_id: ad_id.as_str().into(),
                    window_start: start,
                    window_end: start + w,
                    slice: e.slice.as_str().into(),
                    clicks: e.counts.clicks,
                    impressions: e.counts.impressions,
                    revision: e.counts.revision,
                    epoch: 0,
                    producer: self.settings.producer.as_str().into(),
                });
            }
        }
    }

    /// Local top-N for every M and slice of the window ending at `t`. On a
    /// recompute, empty lists are sent too so Reduce can replace old ones.
    ///
    /// This runs over every cell of the last M windows at each boundary, so
    /// it is the hottest loop of the actor at 2M ads: it hashes with foldhash
    /// instead of SipHash, sums across windows only when M spans more than
    /// one held window (an (ad, slice) is unique within one window), and
    /// keys the sums by (slice, ad) in one pre-sized map.
    fn local_top(&self, t: i64, out: &mut Vec<LocalTopN>, recompute: bool) {
        let w = self.settings.window_ms;
        for &m in &self.settings.top_windows {
            let from = t - i64::from(m) * w;
            let minutes: Vec<&MinuteState> = self.minutes.range(from..t).map(|(_, s)| s).collect();
            // Per slice, every ad with clicks in the window, each ad once.
            let mut per_slice: Vec<(&str, Vec<(&str, u64)>)> = Vec::new();
            let mut slot_of: FastMap<&str, usize> = FastMap::default();
            if let [minute] = minutes.as_slice() {
                for (ad_id, ad) in &minute.ads {
                    for e in &ad.slices {
                        if e.counts.clicks > 0 {
                            let i = slot(&mut slot_of, &mut per_slice, &e.slice);
                            per_slice[i].1.push((ad_id.as_str(), e.counts.clicks));
                        }
                    }
                }
            } else {
                let cap: usize = minutes.iter().map(|s| s.ads.len() * 2).sum();
                let mut sums: FastMap<(&str, &str), u64> =
                    FastMap::with_capacity_and_hasher(cap, Default::default());
                for minute in &minutes {
                    for (ad_id, ad) in &minute.ads {
                        for e in &ad.slices {
                            if e.counts.clicks > 0 {
                                *sums.entry((e.slice.as_str(), ad_id.as_str())).or_default() +=
                                    e.counts.clicks;
                            }
                        }
                    }
                }
                for ((slice, ad), clicks) in sums {
                    let i = slot(&mut slot_of, &mut per_slice, slice);
                    per_slice[i].1.push((ad, clicks));
                }
            }
            per_slice.sort_by(|a, b| a.0.cmp(b.0));
            for (slice, ads) in per_slice {
                let ads = top_n(ads, self.settings.top_n);
                if !ads.is_empty() || recompute {
                    out.push(LocalTopN {
                        window_end: t,
                        window_minutes: m,
                        slice: slice.to_owned(),
                        ads,
                    });
                }
            }
        }
    }
}

/// A hash map with foldhash (randomly seeded per map, much faster than
/// SipHash on short keys) for the per-boundary scratch maps of `local_top`.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Index of `slice` in `per_slice`, adding an empty list the first time.
fn slot<'a>(
    slot_of: &mut FastMap<&'a str, usize>,
    per_slice: &mut Vec<(&'a str, Vec<(&'a str, u64)>)>,
    slice: &'a str,
) -> usize {
    *slot_of.entry(slice).or_insert_with(|| {
        per_slice.push((slice, Vec::new()));
        per_slice.len() - 1
    })
}

impl ReferenceState {
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
            dedup_horizon: self.dedup_horizon,
            last_boundary: self.last_boundary,
            cells,
            columns: Vec::new(),
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
        s.dedup_horizon = parts
            .iter()
            .filter_map(|p| match (p.dedup_horizon, p.watermark) {
                (Some(h), Some(wm)) => Some(h.max(wm)),
                (h, wm) => h.or(wm),
            })
            .max();
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
        s.forget_sealed_keys();
        s
    }

    /// Empties the dedup sets of the minutes past their dedup horizon.
    fn forget_sealed_keys(&mut self) {
        let Some(h) = self.dedup_horizon else {
            return;
        };
        let reach = self.settings.window_ms + self.settings.allowed_lateness_ms;
        for (start, m) in &mut self.minutes {
            if start.saturating_add(reach) <= h {
                for a in m.ads.values_mut() {
                    a.seen.clear();
                }
            }
        }
    }
}
