//! The apply path: partial counts from the Maps into the windows' cells.
//!
//! Every counted event makes three random lookups (its ad's id, its dedup
//! key, its cells), each a likely cache miss at 100k ads and more. A
//! batch's partials are known up front, so while one is applied, the
//! dictionary line of the partial 2 × [`LOOKAHEAD`] places later and the
//! name, cell and dedup lines of the one [`LOOKAHEAD`] places later are
//! already being loaded: the misses of several partials overlap.

use super::side::{late_event, overflow_event};
use super::window::Window;
use super::{AggregateOutput, AggregateState};
use crate::map_batch::PartialCount;
use crate::partials::{CheckedPartials, PartialRef, SliceNames};
use std::collections::BTreeSet;

/// How many partials ahead of the one being applied the apply path
/// prefetches: far enough for a cache miss to complete, near enough for
/// the lines to still be in the cache when it arrives.
const LOOKAHEAD: usize = 8;

impl AggregateState {
    /// Applies one batch of partial counts.
    pub fn apply(&mut self, partials: Vec<PartialCount>) -> AggregateOutput {
        self.apply_refs(partials.iter().map(PartialCount::as_partial_ref))
    }

    /// Applies one packed batch, reading its records in place.
    pub fn apply_packed(&mut self, batch: &CheckedPartials) -> AggregateOutput {
        self.apply_refs(batch.iter())
    }

    fn apply_refs<'a>(
        &mut self,
        partials: impl Iterator<Item = PartialRef<'a>>,
    ) -> AggregateOutput {
        let mut out = AggregateOutput::default();
        let w = self.settings.window_ms;
        let mut touched_closed = BTreeSet::new();
        // A packed batch's slice names are interned once per batch, not
        // once per record: state slice id by the batch's slice index.
        let (mut memo, mut memo_names): (Vec<Option<u32>>, &[String]) = (Vec::new(), &[]);
        let mut slice_ids: Vec<u32> = Vec::new();
        let partials: Vec<PartialRef<'a>> = partials.collect();
        for (i, &p) in partials.iter().enumerate() {
            if let Some(far) = partials.get(i + 2 * LOOKAHEAD) {
                self.ads.prefetch(far.ad_id);
            }
            if let Some(ahead) = partials.get(i + LOOKAHEAD) {
                self.prefetch_for(ahead, &memo, memo_names);
            }
            let end = p.window_start.saturating_add(w);
            if let Some(h) = self.dedup_horizon {
                if self.settings.sealed(p.window_start, h) {
                    out.late.push(late_event(&p, end, h));
                    continue;
                }
            }
            let wm = self.watermark;
            let closed = wm.is_some_and(|wm| end <= wm);
            let sized = match self.windows.last_key_value() {
                Some((&newest, last)) if !closed && newest < p.window_start => {
                    Some(Window::sized_like(last))
                }
                _ => None,
            };
            if let Some(sized) = sized {
                self.windows.insert(p.window_start, sized);
            }
            let window = self
                .windows
                .entry(p.window_start)
                .or_insert_with(|| Window::new(closed));
            let known = self.ads.get(p.ad_id).filter(|&id| window.has_ad(id));
            let cap = self.settings.max_ads_per_window;
            // A window's ad set only grows while it is held, so a refused
            // (ad, window) stays refused: its count is never half-reported.
            let ad = match known {
                Some(id) => id,
                None if window.ad_count() >= cap => {
                    out.overflow_events += p.events();
                    out.overflow.push(overflow_event(&p, end, cap, wm));
                    continue;
                }
                None => {
                    let id = self.ads.intern_str(p.ad_id);
                    if window.add_ad(id) {
                        self.ads.acquire(id);
                    }
                    id
                }
            };
            // One copy-on-write check (an atomic compare-and-swap) for the
            // whole partial, not one per key and slice.
            let closed = window.closed;
            let cells = window.cells_mut();
            let mut clicks = p.clicks;
            let mut impressions = p.impressions;
            for k in p.click_keys {
                if cells.see(ad, *k) {
                    clicks += 1;
                } else {
                    out.duplicates += 1;
                }
            }
            for k in p.impression_keys {
                if cells.see(ad, *k) {
                    impressions += 1;
                } else {
                    out.duplicates += 1;
                }
            }
            if clicks == 0 && impressions == 0 {
                continue;
            }
            slice_ids.clear();
            match p.slices {
                SliceNames::Indexed { ids, names } => {
                    if !std::ptr::eq(memo_names, names) {
                        memo_names = names;
                        memo.clear();
                        memo.resize(names.len(), None);
                    }
                    for &i in ids {
                        let i = i as usize;
                        let id = match memo.get(i).copied().flatten() {
                            Some(id) => id,
                            None => {
                                let id = self.slices.intern(names.get(i).map_or("", |n| n));
                                if let Some(slot) = memo.get_mut(i) {
                                    *slot = Some(id);
                                }
                                id
                            }
                        };
                        slice_ids.push(id);
                    }
                }
                SliceNames::Owned(names) => {
                    slice_ids.extend(names.iter().map(|n| self.slices.intern(n)));
                }
            }
            for &slice in &slice_ids {
                cells.add(ad, slice, clicks, impressions);
                if closed && clicks > 0 {
                    self.running.add(p.window_start, slice, ad, clicks);
                }
            }
            if closed {
                touched_closed.insert(p.window_start);
            }
        }
        self.emit_revisions(&touched_closed, &mut out);
        out
    }

    /// Starts loading what a coming partial will look up (its ad's name,
    /// its cells' positions and its first dedup key), so that their cache
    /// misses overlap with the work on the partials before it. Only what is
    /// already known is prefetched: an ad the dictionary probably holds
    /// (its index line was prefetched [`LOOKAHEAD`] partials earlier), in a
    /// window that exists, with slices this batch has already interned.
    fn prefetch_for(&self, p: &PartialRef<'_>, memo: &[Option<u32>], memo_names: &[String]) {
        let Some(window) = self.windows.get(&p.window_start) else {
            return;
        };
        let Some(ad) = self.ads.candidate(p.ad_id) else {
            return;
        };
        let mut slices = [0u32; 4];
        let mut n = 0;
        if let SliceNames::Indexed { ids, names } = p.slices {
            if std::ptr::eq(names, memo_names) {
                for &j in ids.iter().take(slices.len()) {
                    if let Some(Some(id)) = memo.get(j as usize) {
                        slices[n] = *id;
                        n += 1;
                    }
                }
            }
        }
        let first_key = p.click_keys.first().or(p.impression_keys.first()).copied();
        window.prefetch(ad, &slices[..n], first_key);
    }
}
