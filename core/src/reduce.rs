//! State of the Reduce actor: merges local top-N lists into the exact global
//! top-N once the watermark shows that every Aggregate actor has reported.
//!
//! An Aggregate actor sends its lists for a window before it forwards a
//! watermark past the window's end, so "min watermark over aggregates ≥ end"
//! means every list has arrived. Late updates replace one aggregate's list
//! and re-emit the merged result with `revision + 1` when it changed.
//!
//! After a rescale the lists it restored are split by the old Aggregates'
//! key groups, which no new Aggregate matches: see [`ReduceState::begin_rebuild`].

use crate::aggregate::LocalTopN;
use crate::output::TopNRecord;
use crate::topn::{merge, AdClicks};
use crate::watermark::InputWatermarks;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A window: (end, M, slice).
type WindowKey = (i64, u32, String);

#[derive(Clone, Debug, Default)]
struct WindowEntry {
    lists: HashMap<u32, Vec<AdClicks>>,
    emitted: Option<(u32, Vec<AdClicks>)>,
}

/// The Reduce actor's state.
#[derive(Clone, Debug)]
pub struct ReduceState {
    top_n: usize,
    allowed_lateness_ms: i64,
    producer: String,
    inputs: InputWatermarks,
    num_inputs: usize,
    windows: BTreeMap<WindowKey, WindowEntry>,
    rebuild: Option<Rebuild>,
    lists_after_lateness: u64,
}

/// A rebuild in progress (see [`ReduceState::begin_rebuild`]).
#[derive(Clone, Debug, Default)]
struct Rebuild {
    /// Inputs that sent a watermark (so every list they resent arrived).
    reported: BTreeSet<u32>,
    /// Emitted windows that got a new list; re-checked when it ends.
    refreshed: BTreeSet<WindowKey>,
}

impl ReduceState {
    /// A reducer with `num_inputs` aggregate inputs.
    pub fn new(
        num_inputs: usize,
        top_n: usize,
        allowed_lateness_ms: i64,
        producer: String,
    ) -> Self {
        Self {
            top_n,
            allowed_lateness_ms,
            producer,
            inputs: InputWatermarks::new(num_inputs),
            num_inputs,
            windows: BTreeMap::new(),
            rebuild: None,
            lists_after_lateness: 0,
        }
    }

    /// Current watermark (minimum over aggregates).
    pub fn watermark(&self) -> Option<i64> {
        self.inputs.current()
    }

    /// Records input `input`'s local list; re-emits when the window was
    /// already emitted and the merged result changed.
    pub fn on_local(&mut self, input: u32, l: LocalTopN) -> Option<TopNRecord> {
        let key = (l.window_end, l.window_minutes, l.slice);
        if !self.windows.contains_key(&key) && self.expired(key.0) {
            // Emitted and dropped already: recreated, it would be emitted
            // again with this one list only (see `on_resend`).
            self.lists_after_lateness += 1;
            return None;
        }
        let entry = self.windows.entry(key.clone()).or_default();
        entry.lists.insert(input, l.ads);
        // A window not emitted yet is emitted when the watermark passes it.
        entry.emitted.as_ref()?;
        if let Some(r) = &mut self.rebuild {
            r.refreshed.insert(key);
            return None;
        }
        self.emit(&key)
    }

    /// After a rescale, the restored lists are split by the old Aggregates'
    /// key groups, so none may be merged with a new Aggregate's list: they
    /// are all dropped, and every new Aggregate resends its lists of the
    /// windows that can still change ([`ReduceState::on_resend`]). Until
    /// every input sent a watermark (which follows its resent lists), no
    /// window is emitted; then each emitted window that got new lists is
    /// re-emitted only if its merge changed, so output stays exact and no
    /// half-merged list is ever written.
    pub fn begin_rebuild(&mut self) {
        for e in self.windows.values_mut() {
            e.lists.clear();
        }
        self.rebuild = Some(Rebuild::default());
    }

    /// Whether a rebuild is waiting for inputs.
    pub fn rebuilding(&self) -> bool {
        self.rebuild.is_some()
    }

    /// A list an Aggregate resent after a restore. Outside a rebuild the
    /// restored lists are already right, so it is ignored; a window this
    /// state no longer holds can never change again, so it is ignored too
    /// (keeping it would emit that window a second time).
    pub fn on_resend(&mut self, input: u32, l: LocalTopN) {
        let Some(r) = &mut self.rebuild else { return };
        let key = (l.window_end, l.window_minutes, l.slice);
        if let Some(entry) = self.windows.get_mut(&key) {
            entry.lists.insert(input, l.ads);
            if entry.emitted.is_some() {
                r.refreshed.insert(key);
            }
        }
    }

    /// Records input `input`'s watermark and emits every window it completes.
    pub fn on_watermark(&mut self, input: u32, wm: i64) -> Vec<TopNRecord> {
        let cur = self.inputs.update(input as usize, wm);
        self.after_watermark(input, cur)
    }

    /// Records that input `input` has no data at all.
    pub fn on_idle(&mut self, input: u32) -> Vec<TopNRecord> {
        let cur = self.inputs.set_idle(input as usize);
        self.after_watermark(input, cur)
    }

    fn after_watermark(&mut self, input: u32, cur: Option<i64>) -> Vec<TopNRecord> {
        let mut out = Vec::new();
        if let Some(r) = &mut self.rebuild {
            r.reported.insert(input);
            if r.reported.len() < self.num_inputs {
                return out;
            }
            let refreshed = std::mem::take(&mut r.refreshed);
            self.rebuild = None;
            out.extend(refreshed.iter().filter_map(|k| self.emit(k)));
        }
        out.extend(self.emit_ready(cur));
        out
    }

    fn emit_ready(&mut self, cur: Option<i64>) -> Vec<TopNRecord> {
        let Some(cur) = cur else { return Vec::new() };
        let ready: Vec<_> = self
            .windows
            .iter()
            .filter(|((end, _, _), e)| *end <= cur && e.emitted.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        let out = ready.iter().filter_map(|k| self.emit(k)).collect();
        // Kept while any input, an idle one included, may still revise it.
        let floor = self.inputs.floor().unwrap_or(cur).min(cur);
        let lateness = self.allowed_lateness_ms;
        self.windows
            .retain(|(end, _, _), _| end.saturating_add(lateness) > floor);
        out
    }

    /// Whether a window ending at `end` is past every input's lateness.
    fn expired(&self, end: i64) -> bool {
        self.inputs
            .floor()
            .is_some_and(|f| end.saturating_add(self.allowed_lateness_ms) <= f)
    }

    /// Local lists that arrived for windows already past every input's
    /// allowed lateness, and were ignored (`reduce_lists_after_lateness_total`).
    pub fn lists_after_lateness(&self) -> u64 {
        self.lists_after_lateness
    }

    fn emit(&mut self, key: &WindowKey) -> Option<TopNRecord> {
        let entry = self.windows.get_mut(key)?;
        let merged = merge(entry.lists.values().map(|v| v.as_slice()), self.top_n);
        let revision = match &entry.emitted {
            Some((_, prev)) if *prev == merged => return None,
            Some((rev, _)) => rev + 1,
            None if merged.is_empty() => {
                entry.emitted = Some((0, merged));
                return None;
            }
            None => 0,
        };
        entry.emitted = Some((revision, merged.clone()));
        Some(TopNRecord {
            window_end: key.0,
            window_minutes: key.1,
            slice: key.2.clone(),
            ads: merged,
            revision,
            epoch: 0,
            producer: self.producer.clone(),
        })
    }
}

/// Saved state of one window in the Reduce actor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReduceWindowSnapshot {
    /// Window end.
    pub window_end: i64,
    /// M.
    pub window_minutes: u32,
    /// Slice.
    pub slice: String,
    /// Latest local list of each input.
    pub lists: Vec<(u32, Vec<AdClicks>)>,
    /// Revision and content of the last emission.
    pub emitted: Option<(u32, Vec<AdClicks>)>,
}

impl ReduceState {
    /// Captures the windows at a barrier. Input watermarks are not saved:
    /// the inputs resend theirs after a restore.
    pub fn snapshot(&self) -> Vec<ReduceWindowSnapshot> {
        self.windows
            .iter()
            .map(|((end, m, slice), e)| {
                let mut lists: Vec<(u32, Vec<AdClicks>)> =
                    e.lists.iter().map(|(i, l)| (*i, l.clone())).collect();
                lists.sort_by_key(|(i, _)| *i);
                ReduceWindowSnapshot {
                    window_end: *end,
                    window_minutes: *m,
                    slice: slice.clone(),
                    lists,
                    emitted: e.emitted.clone(),
                }
            })
            .collect()
    }

    /// Rebuilds the state from a snapshot.
    pub fn restore(&mut self, windows: Vec<ReduceWindowSnapshot>) {
        for w in windows {
            self.windows.insert(
                (w.window_end, w.window_minutes, w.slice),
                WindowEntry {
                    lists: w.lists.into_iter().collect(),
                    emitted: w.emitted,
                },
            );
        }
    }
}

#[cfg(test)]
mod rebuild_tests;

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn ac(ad: &str, clicks: u64) -> AdClicks {
        AdClicks {
            ad_id: ad.into(),
            clicks,
        }
    }

    pub(super) fn local(end: i64, ads: Vec<AdClicks>) -> LocalTopN {
        LocalTopN {
            window_end: end,
            window_minutes: 1,
            slice: "*".into(),
            ads,
        }
    }

    /// An ad that is never first on any single aggregate is first globally.
    #[test]
    fn merges_exactly_once_every_aggregate_reported() {
        let mut r = ReduceState::new(2, 2, 60_000, "reduce-0".into());
        // "c" is second on both aggregates' local lists only if it were on
        // both; it lives on aggregate 1 and is its second, yet first overall.
        assert!(r
            .on_local(0, local(100, vec![ac("a", 50), ac("b", 40)]))
            .is_none());
        assert!(
            r.on_watermark(0, 100).is_empty(),
            "aggregate 1 has not reported"
        );
        r.on_local(1, local(100, vec![ac("d", 70), ac("c", 60)]));
        let out = r.on_watermark(1, 100);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].ads, vec![ac("d", 70), ac("c", 60)]);
        assert_eq!(out[0].revision, 0);
    }

    #[test]
    fn restored_state_does_not_emit_twice() {
        let mut r = ReduceState::new(1, 2, 60_000, "reduce-0".into());
        r.on_local(0, local(100, vec![ac("a", 5)]));
        r.on_local(0, local(200, vec![ac("b", 5)]));
        assert_eq!(r.on_watermark(0, 100).len(), 1);
        let mut back = ReduceState::new(1, 2, 60_000, "reduce-0".into());
        back.restore(r.snapshot());
        let out = back.on_watermark(0, 200);
        assert_eq!(out.len(), 1, "only the window ending at 200 is new");
        assert_eq!(out[0].window_end, 200);
    }

    #[test]
    fn late_update_reemits_only_when_changed() {
        let mut r = ReduceState::new(1, 2, 60_000, "reduce-0".into());
        r.on_local(0, local(100, vec![ac("a", 5)]));
        assert_eq!(r.on_watermark(0, 100).len(), 1);
        assert!(r.on_local(0, local(100, vec![ac("a", 5)])).is_none());
        let rev = r
            .on_local(0, local(100, vec![ac("b", 9), ac("a", 5)]))
            .unwrap();
        assert_eq!(rev.revision, 1);
        assert_eq!(rev.ads[0], ac("b", 9));
    }

    /// A list for a window Reduce already emitted and then dropped (its
    /// allowed lateness expired at Reduce's watermark) must not bring the
    /// window back: emitted again, it would hold one Aggregate's list only,
    /// at a later epoch than the exact merge, and replace it downstream.
    #[test]
    fn a_list_for_a_dropped_window_does_not_emit_it_again() {
        let mut r = ReduceState::new(2, 2, 1_000, "reduce-0".into());
        r.on_local(0, local(100, vec![ac("a", 5)]));
        r.on_local(1, local(100, vec![ac("b", 4)]));
        r.on_watermark(0, 100);
        assert_eq!(r.on_watermark(1, 100).len(), 1);
        // Both inputs move past the window's lateness: it is dropped.
        r.on_watermark(0, 5_000);
        assert!(r.on_watermark(1, 5_000).is_empty());
        // A revision of input 0 arrives after all.
        assert!(r.on_local(0, local(100, vec![ac("a", 6)])).is_none());
        let out = r.on_watermark(0, 6_000);
        assert!(
            out.iter().all(|t| t.window_end != 100),
            "the dropped window came back: {out:?}"
        );
    }

    /// An Aggregate left out of the minimum while idle can come back and
    /// revise a window the others have long passed: Reduce keeps the window
    /// until that input's watermark passes its lateness too.
    #[test]
    fn an_idle_input_can_still_revise_what_the_others_passed() {
        let mut r = ReduceState::new(2, 2, 1_000, "reduce-0".into());
        r.on_local(0, local(100, vec![ac("a", 5)]));
        r.on_local(1, local(100, vec![ac("b", 4)]));
        r.on_watermark(1, 100);
        r.on_idle(1);
        assert_eq!(r.on_watermark(0, 5_000).len(), 1);
        let rev = r
            .on_local(1, local(100, vec![ac("b", 9)]))
            .expect("the revision is merged and emitted");
        assert_eq!(rev.revision, 1);
        assert_eq!(rev.ads, vec![ac("b", 9), ac("a", 5)]);
        assert_eq!(r.lists_after_lateness(), 0);
    }
}
