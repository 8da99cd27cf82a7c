//! Hash tables whose buckets are single cache lines, for the lookups every
//! counted event makes: its cells' positions and its dedup key.
//!
//! With `hashbrown` each lookup loaded a control byte group, then a bucket
//! stored elsewhere, then (for positions) the cell itself to compare keys:
//! two or three dependent cache misses, which were about a third of the
//! core path's time at 100k ads. Here an entry and its tag share one 64-byte
//! line, so a lookup costs one miss, and that line can be prefetched for
//! the next events of a batch while the current one is applied, so their
//! misses overlap. Lines are probed in turn (linear probing by line); a
//! line with a free slot ends a probe. Entries are never moved, so within a
//! line the used slots come first.
//!
//! Hashes come from the caller (seeded `foldhash` over the key), and the
//! line is picked by multiplying with the line count, so any number of
//! lines works and a table is sized to its contents, not to a power of two.

/// Slots of a [`TagTable`] line.
const TAG_SLOTS: usize = 10;
/// Slots of a [`SeenTable`] line.
const SEEN_SLOTS: usize = 5;
/// A [`TagTable`] value marking a free slot.
const FREE_VAL: u32 = u32::MAX;
/// A [`TagTable`] value marking a removed entry's slot: still part of
/// probes (it may sit before entries that probed past it) until the table
/// is rebuilt, but taken by the next insert that passes it.
const GONE_VAL: u32 = u32::MAX - 1;
/// A [`SeenTable`] ad marking a free slot (dictionary ids never reach it:
/// that would take four billion ads held at once).
const FREE_AD: u32 = u32::MAX;

/// Asks the CPU to start loading the cache line of `r`.
#[inline(always)]
pub(super) fn prefetch<T>(r: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: a prefetch is a hint that never faults, and the pointer
        // comes from a live reference.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(r).cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = r;
}

/// The line of `hash` among `lines` (> 0): the hash's high bits, scaled.
fn line_of(hash: u64, lines: usize) -> usize {
    ((u128::from(hash) * lines as u128) >> 64) as usize
}

/// Lines for `n` entries of `slots` each, at most seven eighths full.
fn lines_for(n: usize, slots: usize) -> usize {
    (n.saturating_mul(8) / 7).div_ceil(slots).max(1)
}

/// Ten entries: 6.4 bytes each.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
pub(super) struct TagLine {
    /// Low 16 bits of each key's hash: a mismatch rules the entry out
    /// without looking at the key, which lives elsewhere.
    tags: [u16; TAG_SLOTS],
    vals: [u32; TAG_SLOTS],
}

const FREE_TAG_LINE: TagLine = TagLine {
    tags: [0; TAG_SLOTS],
    vals: [FREE_VAL; TAG_SLOTS],
};

/// Lines of entries and their counts: what both tables share.
#[derive(Clone, Debug)]
pub(super) struct LineTable<L> {
    lines: Vec<L>,
    len: usize,
    /// Slots of removed entries (only a [`TagTable`] removes).
    gone: usize,
}

impl<L> Default for LineTable<L> {
    fn default() -> Self {
        Self {
            lines: Vec::new(),
            len: 0,
            gone: 0,
        }
    }
}

impl<L> LineTable<L> {
    /// Entries held.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is held.
    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Heap bytes, for the bytes-per-cell figure.
    pub(super) fn heap_bytes(&self) -> usize {
        std::mem::size_of_val(self.lines.as_slice())
    }

    /// Starts loading the line a lookup of `hash` reads first.
    #[inline]
    pub(super) fn prefetch(&self, hash: u64) {
        if !self.lines.is_empty() {
            prefetch(&self.lines[line_of(hash, self.lines.len())]);
        }
    }
}

/// A set of `u32` values (positions, ids) found by the hash of a key the
/// caller keeps: 6.4 bytes an entry, where `hashbrown::HashTable<u32>`
/// takes 5 but rounds its size up to a power of two.
pub(super) type TagTable = LineTable<TagLine>;

impl TagTable {
    /// The value stored for the key of `hash`, checked by `eq`.
    #[inline]
    pub(super) fn find(&self, hash: u64, mut eq: impl FnMut(u32) -> bool) -> Option<u32> {
        let n = self.lines.len();
        if n == 0 {
            return None;
        }
        let tag = hash as u16;
        let mut l = line_of(hash, n);
        loop {
            let line = &self.lines[l];
            for (&t, &v) in line.tags.iter().zip(&line.vals) {
                if v == FREE_VAL {
                    return None;
                }
                if t == tag && v != GONE_VAL && eq(v) {
                    return Some(v);
                }
            }
            l = if l + 1 == n { 0 } else { l + 1 };
        }
    }

    /// The first value whose tag matches `hash`, unchecked: almost always
    /// the key's (a wrong one is one chance in 65,536), which is
    /// enough to decide what to prefetch, never what to count.
    #[inline]
    pub(super) fn candidate(&self, hash: u64) -> Option<u32> {
        let n = self.lines.len();
        if n == 0 {
            return None;
        }
        let tag = hash as u16;
        let line = &self.lines[line_of(hash, n)];
        line.tags
            .iter()
            .zip(&line.vals)
            .find(|(t, v)| **v == FREE_VAL || (**t == tag && **v != GONE_VAL))
            .map(|(_, v)| *v)
            .filter(|v| *v != FREE_VAL)
    }

    /// Removes `val`, stored for a key of `hash`.
    pub(super) fn remove(&mut self, hash: u64, val: u32) {
        let n = self.lines.len();
        if n == 0 {
            return;
        }
        let mut l = line_of(hash, n);
        loop {
            for v in &mut self.lines[l].vals {
                if *v == FREE_VAL {
                    return;
                }
                if *v == val {
                    *v = GONE_VAL;
                    self.len -= 1;
                    self.gone += 1;
                    return;
                }
            }
            l = if l + 1 == n { 0 } else { l + 1 };
        }
    }

    /// Stores `val` (below `u32::MAX`) for a key of `hash` the table does
    /// not hold; `rehash` gives the hash of a stored value when it grows.
    pub(super) fn insert(&mut self, hash: u64, val: u32, rehash: impl Fn(u32) -> u64) {
        debug_assert!(val < GONE_VAL);
        self.reserve(1, rehash);
        self.put(hash, val);
    }

    /// Makes room for `more` entries without growing again.
    pub(super) fn reserve(&mut self, more: usize, rehash: impl Fn(u32) -> u64) {
        let want = self.len.saturating_add(more);
        if (want + self.gone) * 8 <= self.lines.len() * TAG_SLOTS * 7 {
            return;
        }
        // Mostly removed entries: rebuild at the same size.
        let grown = if self.gone > self.len { 1 } else { 2 };
        let lines = lines_for(want, TAG_SLOTS).max(self.lines.len() * grown);
        let old = std::mem::replace(&mut self.lines, vec![FREE_TAG_LINE; lines]);
        self.len = 0;
        self.gone = 0;
        for &v in old.iter().flat_map(|l| l.vals.iter()) {
            if v < GONE_VAL {
                self.put(rehash(v), v);
            }
        }
    }

    fn put(&mut self, hash: u64, val: u32) {
        let n = self.lines.len();
        let mut l = line_of(hash, n);
        loop {
            let line = &mut self.lines[l];
            if let Some(i) = line.vals.iter().position(|v| *v >= GONE_VAL) {
                self.gone -= usize::from(line.vals[i] == GONE_VAL);
                line.tags[i] = hash as u16;
                line.vals[i] = val;
                self.len += 1;
                return;
            }
            l = if l + 1 == n { 0 } else { l + 1 };
        }
    }
}

/// A dedup key of one ad, packed into three `u32`s.
pub(super) type SeenEntry = [u32; 3];

#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
pub(super) struct SeenLine([SeenEntry; SEEN_SLOTS]);

const FREE_SEEN_LINE: SeenLine = SeenLine([[FREE_AD, 0, 0]; SEEN_SLOTS]);

/// An exact set of (ad, dedup key) pairs: 12.8 bytes an entry, as
/// `hashbrown::HashSet<[u32; 3]>` takes 13, at the same load.
pub(super) type SeenTable = LineTable<SeenLine>;

impl SeenTable {
    /// Adds `e` (whose hash is `hash`); true if it was not held.
    /// `rehash` gives an entry's hash when the table grows.
    #[inline]
    pub(super) fn insert(
        &mut self,
        hash: u64,
        e: SeenEntry,
        rehash: impl Fn(&SeenEntry) -> u64,
    ) -> bool {
        debug_assert!(e[0] != FREE_AD);
        self.reserve(1, rehash);
        self.put(hash, e)
    }

    fn put(&mut self, hash: u64, e: SeenEntry) -> bool {
        let n = self.lines.len();
        let mut l = line_of(hash, n);
        loop {
            for s in &mut self.lines[l].0 {
                if s[0] == FREE_AD {
                    *s = e;
                    self.len += 1;
                    return true;
                }
                if *s == e {
                    return false;
                }
            }
            l = if l + 1 == n { 0 } else { l + 1 };
        }
    }

    /// Makes room for `more` entries without growing again.
    pub(super) fn reserve(&mut self, more: usize, rehash: impl Fn(&SeenEntry) -> u64) {
        let want = self.len.saturating_add(more);
        if want * 8 <= self.lines.len() * SEEN_SLOTS * 7 {
            return;
        }
        let lines = lines_for(want, SEEN_SLOTS).max(self.lines.len() * 2);
        let old = std::mem::replace(&mut self.lines, vec![FREE_SEEN_LINE; lines]);
        self.len = 0;
        for e in old.iter().flat_map(|l| l.0.iter()) {
            if e[0] != FREE_AD {
                self.put(rehash(e), *e);
            }
        }
    }

    /// Every entry, in no particular order.
    pub(super) fn iter(&self) -> impl Iterator<Item = &SeenEntry> + '_ {
        self.lines
            .iter()
            .flat_map(|l| l.0.iter())
            .filter(|e| e[0] != FREE_AD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{HashMap, HashSet};

    /// A deliberately poor hash (few distinct lines) so probes run long
    /// and wrap around the end.
    fn weak(k: u64) -> u64 {
        (k % 7).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (k % 3)
    }

    proptest! {
        #[test]
        fn a_tag_table_finds_what_a_map_holds_through_inserts_and_removals(
            keys in proptest::collection::vec((0u64..400, any::<bool>()), 0..300),
            poor in any::<bool>(),
        ) {
            let hash = |k: u64| if poor { weak(k) } else { k.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ (k >> 7) };
            // Values are positions in `stored`, keys live outside the table.
            let mut stored: Vec<u64> = Vec::new();
            let mut t = TagTable::default();
            let mut model: HashMap<u64, u32> = HashMap::new();
            for (k, remove) in keys {
                let found = t.find(hash(k), |v| stored[v as usize] == k);
                prop_assert_eq!(found, model.get(&k).copied());
                if let (Some(v), true) = (found, remove) {
                    t.remove(hash(k), v);
                    model.remove(&k);
                } else if found.is_none() {
                    let v = stored.len() as u32;
                    stored.push(k);
                    let s = &stored;
                    t.insert(hash(k), v, |v| hash(s[v as usize]));
                    model.insert(k, v);
                }
                prop_assert_eq!(t.len(), model.len());
            }
            for (k, v) in &model {
                prop_assert_eq!(t.find(hash(*k), |x| stored[x as usize] == *k), Some(*v));
            }
        }

        #[test]
        fn a_seen_table_is_an_exact_set(
            entries in proptest::collection::vec((0u32..50, 0u64..40), 0..300),
            poor in any::<bool>(),
        ) {
            let hash = |e: &SeenEntry| {
                let k = u64::from(e[0]) << 40 ^ u64::from(e[1]) ^ u64::from(e[2]) << 20;
                if poor { weak(k) } else { k.wrapping_mul(0x2545_F491_4F6C_DD1D) }
            };
            let mut t = SeenTable::default();
            let mut model: HashSet<SeenEntry> = HashSet::new();
            for (ad, key) in entries {
                let e = [ad, key as u32, (key >> 32) as u32 | (key as u32 & 1) << 31];
                prop_assert_eq!(t.insert(hash(&e), e, hash), model.insert(e));
                prop_assert_eq!(t.len(), model.len());
            }
            let held: HashSet<SeenEntry> = t.iter().copied().collect();
            prop_assert_eq!(held, model);
        }
    }

    #[test]
    fn a_candidate_is_the_tag_match_of_the_home_line_and_goes_with_its_entry() {
        let mut t = TagTable::default();
        assert_eq!(t.candidate(42), None);
        t.insert(42, 7, |_| 42);
        assert_eq!(t.candidate(42), Some(7));
        assert_eq!(t.candidate(42 ^ (1 << 10)), None, "another tag");
        t.remove(42, 7);
        assert_eq!((t.candidate(42), t.find(42, |_| true)), (None, None));
        t.insert(42, 8, |_| 42);
        assert_eq!(t.candidate(42), Some(8), "the removed slot is taken again");
    }

    #[test]
    fn tables_are_sized_to_their_contents() {
        let mut t = TagTable::default();
        t.reserve(1000, |_| 0);
        assert_eq!(t.heap_bytes(), lines_for(1000, TAG_SLOTS) * 64);
        assert!(
            t.heap_bytes() < 1000 * 64 / 10 * 8 / 7 + 64,
            "about 6.4 bytes an entry"
        );
        let mut s = SeenTable::default();
        s.reserve(1000, |_| 0);
        assert!(
            s.heap_bytes() < 1000 * 64 / 5 * 8 / 7 + 64,
            "about 13 bytes an entry"
        );
    }
}
