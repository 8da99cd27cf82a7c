//! Click sums per (slice, ad) over the last M windows, carried from one
//! window boundary to the next.
//!
//! Recomputing an M-window top-N from scratch visits every cell of the M
//! windows at each boundary, so each cell was summed about M + 1 times. The
//! running sums move instead: at a boundary the window that enters is added
//! and the one that leaves is subtracted, so a boundary costs what changed
//! plus one scan of the sums. Late events into a window inside the range
//! and windows expiring while still inside it update the sums directly, so
//! they stay equal to a recomputation (the property test checks this).

use super::sum_table::SumTable;
use super::window::Window;
use std::collections::BTreeMap;

/// Key of a sum: the slice in the high half, the ad in the low half.
pub(super) fn sum_key(slice: u32, ad: u32) -> u64 {
    (u64::from(slice) << 32) | u64::from(ad)
}

/// Sums over the windows starting in `from..to`, from scratch.
pub(super) fn sum_windows(windows: &BTreeMap<i64, Window>, from: i64, to: i64) -> SumTable {
    let cap: usize = windows.range(from..to).map(|(_, s)| s.cell_count()).sum();
    let mut sums = SumTable::with_capacity(cap);
    for (_, window) in windows.range(from..to) {
        add_window(&mut sums, window);
    }
    sums
}

fn add_window(sums: &mut SumTable, window: &Window) {
    sums.add_all(window.cells().map(|c| (sum_key(c.slice, c.ad), c.clicks)));
}

fn subtract_window(sums: &mut SumTable, window: &Window) {
    sums.sub_all(window.cells().map(|c| (sum_key(c.slice, c.ad), c.clicks)));
}

/// The sums of one M as of the boundary `end`: windows `[end - M·w, end)`.
#[derive(Clone, Debug)]
struct Running {
    end: i64,
    span: i64,
    sums: SumTable,
}

impl Running {
    fn covers(&self, start: i64) -> bool {
        start >= self.end - self.span && start < self.end
    }
}

/// Running sums for every M > 1 of the job, indexed like `top_windows`.
#[derive(Clone, Debug, Default)]
pub(super) struct RunningSums {
    per_m: Vec<Option<Running>>,
}

impl RunningSums {
    /// The sums for the `idx`-th M (`span` = M windows) at boundary `t`,
    /// stepped forward from the previous boundary, or rebuilt when there is
    /// none or the step is a jump past the whole range.
    pub(super) fn at(
        &mut self,
        idx: usize,
        span: i64,
        t: i64,
        windows: &BTreeMap<i64, Window>,
    ) -> &SumTable {
        if self.per_m.len() <= idx {
            self.per_m.resize(idx + 1, None);
        }
        let slot = &mut self.per_m[idx];
        let running = match slot.take() {
            Some(mut r) if r.span == span && r.end <= t && t - r.end < span => {
                for (_, window) in windows.range(r.end - span..t - span) {
                    subtract_window(&mut r.sums, window);
                }
                for (_, window) in windows.range(r.end..t) {
                    add_window(&mut r.sums, window);
                }
                r.end = t;
                r
            }
            _ => Running {
                end: t,
                span,
                sums: sum_windows(windows, t - span, t),
            },
        };
        &slot.insert(running).sums
    }

    /// A cell of the window starting at `start` gained `clicks`.
    pub(super) fn add(&mut self, start: i64, slice: u32, ad: u32, clicks: u64) {
        for r in self.per_m.iter_mut().flatten() {
            if r.covers(start) {
                r.sums.add(sum_key(slice, ad), clicks);
            }
        }
    }

    /// The window starting at `start` is about to be dropped.
    pub(super) fn drop_window(&mut self, start: i64, window: &Window) {
        for r in self.per_m.iter_mut().flatten() {
            if r.covers(start) {
                subtract_window(&mut r.sums, window);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: i64 = 60_000;

    fn window(cells: &[(u32, u32, u64)]) -> Window {
        let mut w = Window::new(true);
        for &(ad, slice, clicks) in cells {
            w.add(ad, slice, clicks, 0);
        }
        w
    }

    fn sorted(m: &SumTable) -> Vec<(u64, u64)> {
        let mut v: Vec<_> = m.iter().collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn stepping_late_adds_and_drops_match_a_recomputation() {
        let mut windows = BTreeMap::new();
        windows.insert(0, window(&[(1, 0, 2), (2, 0, 1)]));
        windows.insert(W, window(&[(1, 0, 1), (3, 1, 4)]));
        windows.insert(2 * W, window(&[(2, 0, 5)]));
        let span = 2 * W;
        let mut r = RunningSums::default();
        assert_eq!(
            sorted(r.at(0, span, 2 * W, &windows)),
            sorted(&sum_windows(&windows, 0, 2 * W))
        );
        // A late click into the window starting at W, inside the range.
        if let Some(w) = windows.get_mut(&W) {
            w.add(2, 0, 3, 0);
        }
        r.add(W, 0, 2, 3);
        // The window at 0 expires while still inside the range.
        if let Some(gone) = windows.remove(&0) {
            r.drop_window(0, &gone);
        }
        windows.insert(3 * W, window(&[(1, 0, 7)]));
        assert_eq!(
            sorted(r.at(0, span, 3 * W, &windows)),
            sorted(&sum_windows(&windows, W, 3 * W))
        );
        assert_eq!(
            sorted(r.at(0, span, 4 * W, &windows)),
            sorted(&sum_windows(&windows, 2 * W, 4 * W))
        );
        // A jump past the whole range rebuilds.
        windows.insert(9 * W, window(&[(5, 0, 1)]));
        assert_eq!(
            sorted(r.at(0, span, 10 * W, &windows)),
            sorted(&sum_windows(&windows, 8 * W, 10 * W))
        );
    }
}
