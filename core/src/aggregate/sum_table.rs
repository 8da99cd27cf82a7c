//! The running sums' table: a flat, open-addressed map from a (slice, ad)
//! key to its clicks, updated a window of cells at a time.
//!
//! At 2M ads a window step adds and subtracts about a million cells, each
//! a random access into a table of several million entries. `hashbrown`
//! keeps its control bytes and its buckets in two places, so each access
//! missed the cache twice, and the core's profile spent a fifth of its time
//! waiting on them. Here a key and its sum share one 16-byte slot found by
//! a multiplicative hash (keys are dense interned ids, not input, so they
//! need no keyed hasher), and a window's cells are applied in small batches
//! whose slots are prefetched together, so their misses overlap.

use super::lines::prefetch;

/// A slot's key when it is free. The one real key equal to it (slice and
/// ad both `u32::MAX`) is kept beside the table.
const EMPTY: u64 = u64::MAX;
/// Cells whose slots are prefetched before any of them is applied.
const BATCH: usize = 16;

#[derive(Clone, Copy, Debug)]
struct Slot {
    key: u64,
    sum: u64,
}

const FREE: Slot = Slot { key: EMPTY, sum: 0 };

/// Positive sums by key; a sum that falls to zero is removed.
#[derive(Clone, Debug)]
pub(super) struct SumTable {
    /// A power of two long, at most three quarters full.
    slots: Vec<Slot>,
    len: usize,
    /// 64 − log2(slots): the hash's top bits pick the home slot.
    shift: u32,
    /// The sum of the key equal to [`EMPTY`], 0 if absent.
    empty_key_sum: u64,
}

impl Default for SumTable {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl SumTable {
    /// A table that takes `n` keys before it grows.
    pub(super) fn with_capacity(n: usize) -> Self {
        let slots = (n.saturating_mul(4) / 3 + 1).next_power_of_two().max(16);
        Self {
            slots: vec![FREE; slots],
            len: 0,
            shift: 64 - slots.trailing_zeros(),
            empty_key_sum: 0,
        }
    }

    /// Keys held.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.len + usize::from(self.empty_key_sum > 0)
    }

    /// The sum of `key`, 0 if absent.
    #[cfg(test)]
    pub(super) fn get(&self, key: u64) -> u64 {
        if key == EMPTY {
            return self.empty_key_sum;
        }
        match self.find(key) {
            Ok(i) => self.slots[i].sum,
            Err(_) => 0,
        }
    }

    /// Adds `v` to `key`'s sum.
    pub(super) fn add(&mut self, key: u64, v: u64) {
        if v == 0 {
            return;
        }
        self.reserve(1);
        self.add_reserved(key, v);
    }

    /// Adds every `(key, v)`, prefetching the slots of a batch before
    /// applying it.
    pub(super) fn add_all(&mut self, items: impl Iterator<Item = (u64, u64)>) {
        self.batched(items, true, Self::add_reserved);
    }

    /// Subtracts every `(key, v)` (saturating, absent keys ignored),
    /// removing the keys whose sums reach zero.
    pub(super) fn sub_all(&mut self, items: impl Iterator<Item = (u64, u64)>) {
        self.batched(items, false, Self::sub);
    }

    /// Every `(key, sum)`, in no particular order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.slots
            .iter()
            .filter(|s| s.key != EMPTY)
            .map(|s| (s.key, s.sum))
            .chain((self.empty_key_sum > 0).then_some((EMPTY, self.empty_key_sum)))
    }

    fn batched(
        &mut self,
        items: impl Iterator<Item = (u64, u64)>,
        grows: bool,
        apply: fn(&mut Self, u64, u64),
    ) {
        let mut batch = [(0u64, 0u64); BATCH];
        let mut n = 0;
        for (key, v) in items {
            if v == 0 {
                continue;
            }
            batch[n] = (key, v);
            n += 1;
            if n == BATCH {
                self.apply_batch(&batch, grows, apply);
                n = 0;
            }
        }
        self.apply_batch(&batch[..n], grows, apply);
    }

    fn apply_batch(&mut self, batch: &[(u64, u64)], grows: bool, apply: fn(&mut Self, u64, u64)) {
        // Grow first, so the prefetched slots are the ones written.
        if grows {
            self.reserve(batch.len());
        }
        for &(key, _) in batch {
            prefetch(&self.slots[self.home(key)]);
        }
        for &(key, v) in batch {
            apply(self, key, v);
        }
    }

    fn add_reserved(&mut self, key: u64, v: u64) {
        if key == EMPTY {
            self.empty_key_sum += v;
            return;
        }
        match self.find(key) {
            Ok(i) => self.slots[i].sum += v,
            Err(i) => {
                self.slots[i] = Slot { key, sum: v };
                self.len += 1;
            }
        }
    }

    fn sub(&mut self, key: u64, v: u64) {
        if key == EMPTY {
            self.empty_key_sum = self.empty_key_sum.saturating_sub(v);
            return;
        }
        if let Ok(i) = self.find(key) {
            let sum = self.slots[i].sum.saturating_sub(v);
            if sum == 0 {
                self.remove_at(i);
            } else {
                self.slots[i].sum = sum;
            }
        }
    }

    fn home(&self, key: u64) -> usize {
        (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
    }

    /// `Ok(slot)` holding `key`, or `Err(free slot)` where it would go.
    fn find(&self, key: u64) -> Result<usize, usize> {
        let mask = self.slots.len() - 1;
        let mut i = self.home(key);
        loop {
            let k = self.slots[i].key;
            if k == key {
                return Ok(i);
            }
            if k == EMPTY {
                return Err(i);
            }
            i = (i + 1) & mask;
        }
    }

    /// Frees slot `i`, shifting back the entries after it that probed past
    /// it, so no lookup ever stops early at the gap (no tombstones).
    fn remove_at(&mut self, mut i: usize) {
        let mask = self.slots.len() - 1;
        self.len -= 1;
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let key = self.slots[j].key;
            if key == EMPTY {
                self.slots[i] = FREE;
                return;
            }
            // The entry at j may move to i only if i lies on its probe
            // path, from its home slot up to j.
            let from_home = j.wrapping_sub(self.home(key)) & mask;
            let from_gap = j.wrapping_sub(i) & mask;
            if from_home >= from_gap {
                self.slots[i] = self.slots[j];
                i = j;
            }
        }
    }

    fn reserve(&mut self, extra: usize) {
        let need = self.len + extra;
        if need * 4 <= self.slots.len() * 3 {
            return;
        }
        let mut bigger = Self::with_capacity(need.max(self.len * 2));
        bigger.empty_key_sum = self.empty_key_sum;
        for s in self.slots.iter().filter(|s| s.key != EMPTY) {
            if let Err(i) = bigger.find(s.key) {
                bigger.slots[i] = *s;
                bigger.len += 1;
            }
        }
        *self = bigger;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn sorted(t: &SumTable) -> Vec<(u64, u64)> {
        let mut v: Vec<_> = t.iter().collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn the_key_that_equals_the_free_mark_is_kept_too() {
        let mut t = SumTable::default();
        t.add(EMPTY, 3);
        t.add(7, 1);
        assert_eq!(t.get(EMPTY), 3);
        assert_eq!(t.len(), 2);
        t.sub_all([(EMPTY, 3)].into_iter());
        assert_eq!(sorted(&t), vec![(7, 1)]);
    }

    proptest! {
        /// Any sequence of batched adds, subtracts and single adds gives
        /// the sums a plain map gives, with no zero sum left behind.
        /// Keys are drawn from a small range so probes collide, wrap and
        /// shift back, and the table grows from its smallest size.
        #[test]
        fn matches_a_map(
            ops in proptest::collection::vec(
                (0u8..3, proptest::collection::vec((0u64..200, 0u64..4), 0..40)),
                0..40,
            )
        ) {
            let mut t = SumTable::default();
            let mut m: HashMap<u64, u64> = HashMap::new();
            for (op, items) in ops {
                // Spread some keys over the slice half too.
                let items: Vec<(u64, u64)> = items
                    .into_iter()
                    .map(|(k, v)| (if k % 7 == 0 { k << 32 } else { k }, v))
                    .collect();
                match op {
                    0 => t.add_all(items.iter().copied()),
                    1 => t.sub_all(items.iter().copied()),
                    _ => items.iter().for_each(|&(k, v)| t.add(k, v)),
                }
                for (k, v) in items {
                    if op == 1 {
                        if let Some(s) = m.get_mut(&k) {
                            *s = s.saturating_sub(v);
                            if *s == 0 {
                                m.remove(&k);
                            }
                        }
                    } else if v > 0 {
                        *m.entry(k).or_default() += v;
                    }
                }
                let mut want: Vec<(u64, u64)> = m.iter().map(|(k, v)| (*k, *v)).collect();
                want.sort_unstable();
                prop_assert_eq!(sorted(&t), want);
                prop_assert_eq!(t.len(), m.len());
                for (k, v) in &m {
                    prop_assert_eq!(t.get(*k), *v);
                }
            }
        }
    }
}
