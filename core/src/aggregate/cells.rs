//! One window's state in flat, fixed-size cells.
//!
//! A cell is one (ad, slice) of the window: 20 bytes, no heap. Cells live in
//! one vector, found through a hash table of their positions, so walking a
//! window is a linear scan and expiring it frees a handful of allocations in
//! one step instead of millions of strings, vectors and sets.

use super::adset::AdSet;
use super::lines::{SeenEntry, SeenTable, TagTable};
use hashbrown::HashMap;
use std::hash::BuildHasher;

type Hasher = foldhash::fast::RandomState;

/// The revision bits of [`Cell::meta`].
const REVISION: u32 = (1 << 30) - 1;
/// [`Cell::meta`]: changed since it was last emitted.
const DIRTY: u32 = 1 << 31;
/// [`Cell::meta`]: a count outgrew 32 bits, and the window's `wide` table
/// holds both counts in full.
const WIDE: u32 = 1 << 30;

/// Counts of one (ad, window, slice), with the ids interned per actor,
/// packed into five `u32`s: counts are exact at any size (a count that
/// outgrows 32 bits moves to the window's `wide` table, which a real
/// stream never fills), the revision has 30 bits, and the flags share its
/// word.
#[derive(Clone, Copy, Debug)]
pub(super) struct Cell {
    clicks: u32,
    impressions: u32,
    ad: u32,
    slice: u32,
    meta: u32,
}

/// A cell as read, written and restored: full-width counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct CellValue {
    /// Interned ad id.
    pub ad: u32,
    /// Interned slice.
    pub slice: u32,
    /// Clicks.
    pub clicks: u64,
    /// Impressions.
    pub impressions: u64,
    /// Re-emissions after the first one.
    pub revision: u32,
    /// Changed since it was last emitted.
    pub dirty: bool,
}

impl Cell {
    fn empty(ad: u32, slice: u32) -> Self {
        Self {
            clicks: 0,
            impressions: 0,
            ad,
            slice,
            meta: 0,
        }
    }

    fn key(&self) -> u64 {
        key(self.ad, self.slice)
    }

    fn is_wide(&self) -> bool {
        self.meta & WIDE != 0
    }
}

/// The cells, dedup keys and ads of one window (held through
/// [`super::window::Window`], which shares it copy-on-write with
/// checkpoints).
#[derive(Clone, Debug, Default)]
pub(super) struct WindowCells {
    cells: Vec<Cell>,
    /// Positions in `cells`, hashed by (ad, slice).
    index: TagTable,
    /// Distinct ads, for the per-window ad limit and for releasing their
    /// dictionary entries when the window expires.
    ads: AdSet,
    /// Dedup keys seen, per ad: exact (ad, key) pairs, so no real click is
    /// ever taken for another ad's duplicate; packed into three `u32`s
    /// (12 bytes, where a `(u32, u64)` tuple takes 16).
    seen: SeenTable,
    /// Full counts of the cells flagged wide, by (ad, slice).
    wide: HashMap<u64, (u64, u64), Hasher>,
    /// What a restore added without indexing it (see [`WindowCells::restore_bulk`]).
    unindexed: Option<Box<Unindexed>>,
    hasher: Hasher,
}

/// Restored dedup keys whose hash set is not built yet; the restored cells
/// are in `WindowCells::cells`, missing from its index, and the restored ads in
/// `WindowCells::ads` (a bitmap costs nothing to fill).
///
/// A rescale restores a few million cells at once, and building the three
/// hash tables of every window was most of that work. Most restored
/// windows are closed and only read (top-N, expiry, the next snapshot),
/// which lists serve as well; the tables are built the first time a window
/// is looked up or changed (a late event), so that cost is paid only for
/// the windows that need it, after output has resumed.
#[derive(Clone, Debug, Default)]
struct Unindexed {
    /// How many of the window's ads came in bulk.
    ads: usize,
    seen: Vec<[u32; 3]>,
}

fn seen_entry(ad: u32, dedup_key: u64) -> SeenEntry {
    [ad, dedup_key as u32, (dedup_key >> 32) as u32]
}

fn key(ad: u32, slice: u32) -> u64 {
    (u64::from(slice) << 32) | u64::from(ad)
}

impl WindowCells {
    /// A read-only copy for a checkpoint: everything but the table of
    /// cell positions, which only lookups need and which a snapshot never
    /// reads (a fifth of the copy at a barrier). Nothing may add to the
    /// copy; [`super::FrozenAggregate`] only reads its windows.
    pub(super) fn frozen_copy(&self) -> Self {
        Self {
            cells: self.cells.clone(),
            index: TagTable::default(),
            ads: self.ads.clone(),
            seen: self.seen.clone(),
            wide: self.wide.clone(),
            unindexed: self.unindexed.clone(),
            hasher: self.hasher.clone(),
        }
    }

    /// Whether `ad` has any cell or dedup key here.
    pub(super) fn has_ad(&self, ad: u32) -> bool {
        self.ads.contains(ad)
    }

    /// Distinct ads held.
    pub(super) fn ad_count(&self) -> usize {
        self.ads.len()
    }

    /// Records that `ad` is held; true the first time.
    pub(super) fn add_ad(&mut self, ad: u32) -> bool {
        self.ads.insert(ad)
    }

    /// The distinct ads held.
    pub(super) fn ads(&self) -> impl Iterator<Item = u32> + '_ {
        self.ads.iter()
    }

    /// Starts loading the lines a coming event of `ad` will look up: its
    /// cells of `slices` and its first dedup key's (see [`super::lines`]).
    #[inline]
    pub(super) fn prefetch(&self, ad: u32, slices: &[u32], first_key: Option<u64>) {
        for &slice in slices {
            self.index.prefetch(self.hasher.hash_one(key(ad, slice)));
        }
        if let Some(k) = first_key {
            self.seen.prefetch(self.hasher.hash_one(seen_entry(ad, k)));
        }
    }

    /// Records a dedup key of `ad`; true if it is new (the event counts).
    pub(super) fn see(&mut self, ad: u32, dedup_key: u64) -> bool {
        self.index_now();
        let e = seen_entry(ad, dedup_key);
        let hasher = &self.hasher;
        self.seen
            .insert(hasher.hash_one(e), e, |e| hasher.hash_one(e))
    }

    /// Every (ad, dedup key) seen.
    pub(super) fn seen(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        let restored = self.unindexed.iter().flat_map(|u| u.seen.iter());
        self.seen
            .iter()
            .chain(restored)
            .map(|e| (e[0], u64::from(e[1]) | (u64::from(e[2]) << 32)))
    }

    /// Whether any dedup key is held.
    pub(super) fn has_seen(&self) -> bool {
        !self.seen.is_empty() || self.unindexed.as_ref().is_some_and(|u| !u.seen.is_empty())
    }

    /// Frees every dedup key: the window is past its dedup horizon and
    /// takes no event any more.
    pub(super) fn forget_seen(&mut self) {
        self.seen = SeenTable::default();
        if let Some(u) = &mut self.unindexed {
            u.seen = Vec::new();
        }
    }

    /// Whether [`WindowCells::restore_bulk`] may add to this window: it holds
    /// nothing but what earlier bulk restores added.
    pub(super) fn takes_bulk(&self) -> bool {
        let bulk_ads = self.unindexed.as_ref().map_or(0, |u| u.ads);
        self.seen.is_empty() && self.index.is_empty() && self.ads.len() == bulk_ads
    }

    /// Adds restored ads, cells and dedup keys without indexing them. The
    /// caller guarantees what one restore of one key group guarantees: the
    /// ads are new to this window and distinct, and so are the cells' (ad,
    /// slice) pairs; and that [`WindowCells::takes_bulk`] holds.
    pub(super) fn restore_bulk(
        &mut self,
        ads: impl Iterator<Item = u32>,
        cells: impl Iterator<Item = CellValue>,
        seen: impl Iterator<Item = (u32, u64)>,
    ) {
        debug_assert!(self.takes_bulk());
        let u = self.unindexed.get_or_insert_with(Box::default);
        for ad in ads {
            u.ads += usize::from(self.ads.insert(ad));
        }
        u.seen.extend(seen.map(|(ad, key)| seen_entry(ad, key)));
        for v in cells {
            let mut cell = Cell::empty(v.ad, v.slice);
            write(&mut cell, &mut self.wide, &v);
            self.cells.push(cell);
        }
    }

    /// Builds the hash tables of what a restore added in bulk. A repeated
    /// (ad, slice) keeps the last counts, as restoring cell by cell did.
    fn index_now(&mut self) {
        let Some(u) = self.unindexed.take() else {
            return;
        };
        let hasher = &self.hasher;
        self.seen.reserve(u.seen.len(), |e| hasher.hash_one(e));
        for e in u.seen {
            self.seen
                .insert(hasher.hash_one(e), e, |e| hasher.hash_one(e));
        }
        let restored = std::mem::take(&mut self.cells);
        self.cells.reserve(restored.len());
        for c in restored {
            *self.cell(c.ad, c.slice) = c;
        }
    }

    /// Adds counts to the cell of (ad, slice), creating it if missing,
    /// and marks it for emission.
    pub(super) fn add(&mut self, ad: u32, slice: u32, clicks: u64, impressions: u64) {
        let i = self.position(ad, slice);
        let cell = &mut self.cells[i];
        cell.meta |= DIRTY;
        if !cell.is_wide() {
            let c = u32::try_from(u64::from(cell.clicks) + clicks);
            let m = u32::try_from(u64::from(cell.impressions) + impressions);
            if let (Ok(c), Ok(m)) = (c, m) {
                cell.clicks = c;
                cell.impressions = m;
                return;
            }
            // Outgrew 32 bits: from now on the counts live in `wide`.
            let full = (u64::from(cell.clicks), u64::from(cell.impressions));
            (cell.clicks, cell.impressions) = (0, 0);
            cell.meta |= WIDE;
            self.wide.insert(cell.key(), full);
        }
        let full = self.wide.entry(cell.key()).or_default();
        full.0 += clicks;
        full.1 += impressions;
    }

    /// Sets the cell of (ad, slice) to `v` (a restore, cell by cell).
    pub(super) fn put(&mut self, v: &CellValue) {
        let i = self.position(v.ad, v.slice);
        write(&mut self.cells[i], &mut self.wide, v);
    }

    /// The position of the cell of (ad, slice), created with zero counts
    /// if missing.
    fn position(&mut self, ad: u32, slice: u32) -> usize {
        self.index_now();
        let k = key(ad, slice);
        let hash = self.hasher.hash_one(k);
        let cells = &self.cells;
        let found = self.index.find(hash, |i| cells[i as usize].key() == k);
        match found {
            Some(i) => i as usize,
            None => {
                self.cells.push(Cell::empty(ad, slice));
                let i = self.cells.len() - 1;
                let (cells, hasher) = (&self.cells, &self.hasher);
                self.index
                    .insert(hash, i as u32, |j| hasher.hash_one(cells[j as usize].key()));
                i
            }
        }
    }

    fn cell(&mut self, ad: u32, slice: u32) -> &mut Cell {
        let i = self.position(ad, slice);
        &mut self.cells[i]
    }

    /// Makes room for `cells` and `seen` more entries at once, so a
    /// restore sizes each table once instead of growing it step by step.
    pub(super) fn reserve(&mut self, cells: usize, seen: usize) {
        if let Some(u) = &mut self.unindexed {
            u.seen.reserve(seen);
            self.cells.reserve(cells);
            return;
        }
        let hasher = &self.hasher;
        self.seen.reserve(seen, |e| hasher.hash_one(e));
        self.cells.reserve(cells);
        let all = &self.cells;
        self.index
            .reserve(cells, |j| hasher.hash_one(all[j as usize].key()));
    }

    /// Number of cells.
    pub(super) fn cell_count(&self) -> usize {
        self.cells.len()
    }

    /// Number of dedup keys held.
    pub(super) fn seen_count(&self) -> usize {
        self.seen.len() + self.unindexed.as_ref().map_or(0, |u| u.seen.len())
    }

    /// All cells, in the order they were created.
    pub(super) fn cells(&self) -> impl Iterator<Item = CellValue> + '_ {
        self.cells.iter().map(|c| read(c, &self.wide))
    }

    /// Emits the cells (the dirty ones, with their revision raised, when
    /// `only_dirty`): each is handed to `emit` as it is now, and is no
    /// longer dirty.
    pub(super) fn emit(&mut self, only_dirty: bool, mut emit: impl FnMut(CellValue)) {
        for c in &mut self.cells {
            if only_dirty {
                if c.meta & DIRTY == 0 {
                    continue;
                }
                // 2^30 re-emissions of one cell would take a late batch
                // every millisecond for 12 days: the revision cannot run out
                // within any allowed lateness; it stops rather than wraps.
                let revision = (c.meta & REVISION).saturating_add(1).min(REVISION);
                c.meta = (c.meta & !REVISION) | revision;
            }
            c.meta &= !DIRTY;
            emit(read(c, &self.wide));
        }
    }

    /// Heap bytes held, for the bytes-per-cell figure.
    pub(super) fn heap_bytes(&self) -> usize {
        self.cells.capacity() * std::mem::size_of::<Cell>()
            + self.wide.capacity() * (24 + 1)
            + self.index.heap_bytes()
            + self.ads.heap_bytes()
            + self.seen.heap_bytes()
            + self
                .unindexed
                .as_ref()
                .map_or(0, |u| u.seen.capacity() * 12)
    }
}

/// The full value of `c`.
fn read(c: &Cell, wide: &HashMap<u64, (u64, u64), Hasher>) -> CellValue {
    let (clicks, impressions) = if c.is_wide() {
        wide.get(&c.key()).copied().unwrap_or_default()
    } else {
        (u64::from(c.clicks), u64::from(c.impressions))
    };
    CellValue {
        ad: c.ad,
        slice: c.slice,
        clicks,
        impressions,
        revision: c.meta & REVISION,
        dirty: c.meta & DIRTY != 0,
    }
}

/// Sets `c` (of the same ad and slice) to `v`, in `wide` if its counts
/// need more than 32 bits.
fn write(c: &mut Cell, wide: &mut HashMap<u64, (u64, u64), Hasher>, v: &CellValue) {
    let mut meta = v.revision.min(REVISION);
    if v.dirty {
        meta |= DIRTY;
    }
    match (u32::try_from(v.clicks), u32::try_from(v.impressions)) {
        (Ok(clicks), Ok(impressions)) => {
            if c.is_wide() {
                wide.remove(&c.key());
            }
            (c.clicks, c.impressions) = (clicks, impressions);
        }
        _ => {
            (c.clicks, c.impressions) = (0, 0);
            meta |= WIDE;
            wide.insert(c.key(), (v.clicks, v.impressions));
        }
    }
    c.meta = meta;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::window::Window;

    #[test]
    fn a_cell_is_found_again_and_stays_small() {
        assert_eq!(std::mem::size_of::<Cell>(), 20);
        let mut w = Window::new(false);
        w.add(1, 0, 2, 0);
        w.add(2, 0, 1, 0);
        w.add(1, 1, 0, 1);
        w.add(1, 0, 1, 0);
        let got: Vec<(u32, u32, u64, u64)> = w
            .cells()
            .map(|c| (c.ad, c.slice, c.clicks, c.impressions))
            .collect();
        assert_eq!(got, vec![(1, 0, 3, 0), (2, 0, 1, 0), (1, 1, 0, 1)]);
    }

    #[test]
    fn counts_past_32_bits_stay_exact_through_adds_emits_and_restores() {
        let big = u64::from(u32::MAX);
        let mut w = Window::new(false);
        w.add(1, 0, big - 1, 5);
        w.add(2, 0, 1, 1);
        w.add(1, 0, 3, big);
        w.add(1, 0, 1, 1);
        let full = |w: &Window| -> Vec<(u32, u64, u64)> {
            w.cells().map(|c| (c.ad, c.clicks, c.impressions)).collect()
        };
        assert_eq!(full(&w), vec![(1, big + 3, big + 6), (2, 1, 1)]);
        let mut emitted = Vec::new();
        w.emit(true, |c| {
            emitted.push((c.ad, c.clicks, c.revision, c.dirty))
        });
        assert_eq!(emitted, vec![(1, big + 3, 1, false), (2, 1, 1, false)]);
        // Restored in bulk (as a checkpoint of columns is) and by cell.
        let values: Vec<CellValue> = w.cells().collect();
        let mut bulk = Window::new(true);
        bulk.restore_bulk(
            [1, 2].into_iter(),
            values.clone().into_iter(),
            [].into_iter(),
        );
        assert_eq!(bulk.cells().collect::<Vec<_>>(), values);
        bulk.add(1, 0, 1, 0);
        assert_eq!(full(&bulk)[..1], [(1, big + 4, big + 6)]);
        let mut by_cell = Window::new(true);
        for v in &values {
            by_cell.put(v);
        }
        assert_eq!(by_cell.cells().collect::<Vec<_>>(), values);
        // A small value put over a wide cell leaves it narrow again.
        by_cell.put(&CellValue {
            clicks: 7,
            impressions: 1,
            ..values[0]
        });
        assert_eq!(full(&by_cell)[0], (1, 7, 1));
        assert_eq!(by_cell.cells().next().map(|c| c.revision), Some(1));
    }

    #[test]
    fn a_bulk_restored_window_is_indexed_on_first_use_without_counting_as_a_change() {
        let cell = |ad, slice, clicks| CellValue {
            clicks,
            impressions: 0,
            ad,
            slice,
            revision: 1,
            dirty: false,
        };
        let mut w = Window::new(true);
        assert!(w.takes_bulk());
        w.restore_bulk(
            [1, 2].into_iter(),
            [cell(1, 0, 3), cell(2, 0, 4), cell(1, 1, 5)].into_iter(),
            [(1, 7), (2, 8)].into_iter(),
        );
        // Readable before any index exists.
        assert_eq!(w.ad_count(), 2);
        let mut ads: Vec<u32> = w.ads().collect();
        ads.sort_unstable();
        assert_eq!(ads, vec![1, 2]);
        assert_eq!(w.seen().count(), 2);
        assert_eq!(w.cell_count(), 3);
        // Looking an ad up needs no index and is no change to checkpoint.
        assert!(w.take_changed());
        assert!(w.has_ad(2) && !w.has_ad(3));
        assert!(!w.is_changed());
        assert!(w.takes_bulk(), "it still holds only what came in bulk");
        // Everything restored is found again.
        assert!(!w.see(1, 7), "a restored dedup key is still a duplicate");
        assert!(!w.takes_bulk());
        assert!(w.see(1, 8));
        w.add(1, 1, 1, 0);
        let mut got: Vec<(u32, u32, u64)> = w.cells().map(|c| (c.ad, c.slice, c.clicks)).collect();
        got.sort_unstable();
        assert_eq!(got, vec![(1, 0, 3), (1, 1, 6), (2, 0, 4)]);
        assert!(!w.add_ad(1) && w.add_ad(3));
        assert_eq!(w.ad_count(), 3);
    }

    #[test]
    fn dedup_keys_are_per_ad() {
        let mut w = Window::new(false);
        assert!(w.see(1, 7));
        assert!(!w.see(1, 7));
        assert!(w.see(2, 7), "the same key for another ad is another event");
        assert!(w.see(1, 7 | (1 << 40)), "all 64 bits of the key count");
        let mut seen: Vec<(u32, u64)> = w.seen().collect();
        seen.sort_unstable();
        assert_eq!(seen, vec![(1, 7), (1, 7 | (1 << 40)), (2, 7)]);
    }
}
