//! One window held by an Aggregate actor, shared copy-on-write with the
//! checkpoint that froze it.
//!
//! A barrier must capture every window that changed since the last
//! checkpoint. Most of them closed since then and will not change again
//! (only a late event or expiry touches a closed window), so copying them
//! at the barrier, hundreds of thousands of cells at 2M ads, paid for a
//! copy nobody needed. A frozen checkpoint shares a closed window's cells
//! instead; the actor copies them only if a late event arrives while the
//! snapshot is still being written. An open window is written by nearly
//! every batch, so sharing it would only move the copy into the first
//! batch after the barrier: it is copied at the barrier, without its
//! position table.

use super::cells::{CellValue, WindowCells};
use std::sync::Arc;

/// A window: its cells, shared with frozen checkpoints, and the marks the
/// aggregate keeps beside them.
#[derive(Clone, Debug, Default)]
pub(super) struct Window {
    /// The watermark passed its end: its counts were emitted.
    pub closed: bool,
    /// Changed since the last checkpoint froze it: an incremental snapshot
    /// writes only such windows and references the others. Every `&mut`
    /// method sets it, so no mutation can be missed.
    changed: bool,
    cells: Arc<WindowCells>,
}

impl Window {
    /// An empty window.
    pub(super) fn new(closed: bool) -> Self {
        Self {
            closed,
            changed: true,
            cells: Arc::default(),
        }
    }

    /// The copy a checkpoint keeps: a closed window's cells are shared,
    /// an open window's are copied.
    pub(super) fn frozen_copy(&self) -> Self {
        let cells = if self.closed {
            self.cells.clone()
        } else {
            Arc::new(self.cells.frozen_copy())
        };
        Self {
            closed: self.closed,
            changed: self.changed,
            cells,
        }
    }

    /// Whether a frozen copy still shares this window's cells (for tests).
    #[cfg(test)]
    pub(super) fn is_shared(&self) -> bool {
        Arc::strong_count(&self.cells) > 1
    }

    /// The cells, to change: copied first if a frozen checkpoint still
    /// reads them. The check is an atomic compare-and-swap, so a batch
    /// takes this once per record, not once per key and slice.
    pub(super) fn cells_mut(&mut self) -> &mut WindowCells {
        self.changed = true;
        Arc::make_mut(&mut self.cells)
    }

    /// Starts loading what a coming event of `ad` will look up here.
    #[inline]
    pub(super) fn prefetch(&self, ad: u32, slices: &[u32], first_key: Option<u64>) {
        self.cells.prefetch(ad, slices, first_key);
    }

    /// Marks the window closed (its counts are being emitted).
    pub(super) fn close(&mut self) {
        self.closed = true;
        self.changed = true;
    }

    /// Whether the window changed since [`Window::take_changed`] last ran.
    pub(super) fn is_changed(&self) -> bool {
        self.changed
    }

    /// Clears the changed mark, returning what it was (at a checkpoint).
    pub(super) fn take_changed(&mut self) -> bool {
        std::mem::replace(&mut self.changed, false)
    }

    /// Whether `ad` has any cell or dedup key here.
    pub(super) fn has_ad(&self, ad: u32) -> bool {
        self.cells.has_ad(ad)
    }

    /// Distinct ads held.
    pub(super) fn ad_count(&self) -> usize {
        self.cells.ad_count()
    }

    /// Records that `ad` is held; true the first time.
    pub(super) fn add_ad(&mut self, ad: u32) -> bool {
        self.cells_mut().add_ad(ad)
    }

    /// The distinct ads held.
    pub(super) fn ads(&self) -> impl Iterator<Item = u32> + '_ {
        self.cells.ads()
    }

    /// Records a dedup key of `ad`; true if it is new (the event counts).
    pub(super) fn see(&mut self, ad: u32, dedup_key: u64) -> bool {
        self.cells_mut().see(ad, dedup_key)
    }

    /// Frees the dedup keys once the window is past its dedup horizon
    /// (window end + allowed lateness: no event is taken for it any more);
    /// they were most of the state of the windows kept only for top-N.
    ///
    /// Changes nothing while a frozen checkpoint still shares the cells:
    /// dropping the keys then would copy the whole window. The caller tries
    /// again at the next watermark. The window is not marked changed: a
    /// checkpoint that still holds its keys restores the same counts, and
    /// the restore drops the keys again.
    pub(super) fn forget_seen(&mut self) {
        if !self.cells.has_seen() {
            return;
        }
        if let Some(cells) = Arc::get_mut(&mut self.cells) {
            cells.forget_seen();
        }
    }

    /// Every (ad, dedup key) seen.
    pub(super) fn seen(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.cells.seen()
    }

    /// Whether [`Window::restore_bulk`] may add to this window.
    pub(super) fn takes_bulk(&self) -> bool {
        self.cells.takes_bulk()
    }

    /// Adds restored ads, cells and dedup keys without indexing them (see
    /// [`WindowCells::restore_bulk`] for what the caller guarantees).
    pub(super) fn restore_bulk(
        &mut self,
        ads: impl Iterator<Item = u32>,
        cells: impl Iterator<Item = CellValue>,
        seen: impl Iterator<Item = (u32, u64)>,
    ) {
        self.cells_mut().restore_bulk(ads, cells, seen)
    }

    /// Adds counts to the cell of (ad, slice), creating it if missing,
    /// and marks it for emission.
    #[cfg(test)]
    pub(super) fn add(&mut self, ad: u32, slice: u32, clicks: u64, impressions: u64) {
        self.cells_mut().add(ad, slice, clicks, impressions)
    }

    /// Sets the cell of (ad, slice) to `v` (a restore, cell by cell).
    pub(super) fn put(&mut self, v: &CellValue) {
        self.cells_mut().put(v)
    }

    /// Makes room for `cells` and `seen` more entries at once.
    pub(super) fn reserve(&mut self, cells: usize, seen: usize) {
        self.cells_mut().reserve(cells, seen)
    }

    /// Number of cells.
    pub(super) fn cell_count(&self) -> usize {
        self.cells.cell_count()
    }

    /// Number of dedup keys held.
    pub(super) fn seen_count(&self) -> usize {
        self.cells.seen_count()
    }

    /// A new open window sized like `like`, the newest one before it:
    /// minute after minute the traffic is about the same, and tables that
    /// grow by doubling from empty rehash and copy every entry about twice
    /// on the way to a million cells.
    pub(super) fn sized_like(like: &Window) -> Self {
        let mut w = Self::new(false);
        w.reserve(like.cell_count(), like.seen_count());
        w
    }

    /// All cells, in the order they were created.
    pub(super) fn cells(&self) -> impl Iterator<Item = CellValue> + '_ {
        self.cells.cells()
    }

    /// Emits the cells (the dirty ones, with their revision raised, when
    /// `only_dirty`), each no longer dirty afterwards.
    pub(super) fn emit(&mut self, only_dirty: bool, emit: impl FnMut(CellValue)) {
        self.cells_mut().emit(only_dirty, emit)
    }

    /// Heap bytes held, for the bytes-per-cell figure.
    pub(super) fn heap_bytes(&self) -> usize {
        self.cells.heap_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(w: &Window) -> Vec<(u32, u32, u64)> {
        let mut v: Vec<_> = w.cells().map(|c| (c.ad, c.slice, c.clicks)).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn a_frozen_closed_window_is_shared_until_a_late_event_copies_it() {
        let mut w = Window::new(false);
        w.add_ad(1);
        w.add(1, 0, 2, 0);
        w.see(1, 10);
        let open_copy = w.frozen_copy();
        assert!(!w.is_shared(), "an open window is copied at the barrier");
        w.close();
        let frozen = w.frozen_copy();
        assert!(w.is_shared() && frozen.is_shared());
        // A late event: the actor's window changes, the frozen one not.
        w.add(1, 0, 5, 0);
        assert!(w.see(1, 11));
        assert!(!w.is_shared() && !frozen.is_shared());
        assert_eq!(counts(&w), vec![(1, 0, 7)]);
        assert_eq!(counts(&frozen), vec![(1, 0, 2)]);
        assert_eq!(frozen.seen().count(), 1);
        assert_eq!(counts(&open_copy), vec![(1, 0, 2)]);
        // The actor's copy still finds its cells (the index came along).
        assert!(!w.see(1, 10));
        w.add(1, 0, 1, 0);
        assert_eq!(counts(&w), vec![(1, 0, 8)]);
    }
}
