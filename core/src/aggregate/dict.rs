//! Dictionaries that turn ad ids and slice names into small integers.
//!
//! At 2M distinct ads nearly every event opens its own (ad, window) cell, so
//! a heap-allocated id per cell dominated both memory and the time spent
//! walking cells. Each Aggregate actor interns an ad id once, however many
//! windows hold it; cells carry the `u32`. An ad's entry is freed when the
//! last window holding it expires, so the dictionary follows the held state
//! instead of growing with every ad ever seen.

use super::lines::{prefetch, TagTable};
use super::names::SharedNames;
use smol_str::SmolStr;
use std::hash::BuildHasher;
use std::sync::Arc;

/// Seeded once per dictionary; foldhash is far faster than SipHash on short
/// ids, and the random seed keeps adversarial ids from colliding on purpose.
type Hasher = foldhash::fast::RandomState;

/// Dense ids for ad ids, reference-counted by the windows holding them.
///
/// Names are `SmolStr`: ids up to 23 bytes (all real ones) sit inline, with
/// no allocation of their own, and longer ones are shared. They are kept in
/// copy-on-write chunks, so a checkpoint freezes the dictionary
/// ([`AdDict::names`]) by sharing them.
#[derive(Clone, Debug, Default)]
pub(super) struct AdDict {
    names: SharedNames,
    /// Windows holding each ad; 0 means the slot is free.
    refs: Vec<u32>,
    free: Vec<u32>,
    /// Ids by the hash of their name (see [`super::lines`]).
    index: TagTable,
    hasher: Hasher,
    /// Shared by free slots, so releasing an ad allocates nothing.
    empty: SmolStr,
}

impl AdDict {
    /// The id of `name`, if some held window has it.
    pub(super) fn get(&self, name: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(name);
        self.index.find(hash, |i| &**self.names.get(i) == name)
    }

    /// Starts loading the index line a lookup of `name` reads.
    #[inline]
    pub(super) fn prefetch(&self, name: &str) {
        self.index.prefetch(self.hasher.hash_one(name));
    }

    /// The probable id of `name`, its name's slot prefetched: good enough
    /// to prefetch what the id leads to, never to count (see
    /// [`TagTable::candidate`]).
    #[inline]
    pub(super) fn candidate(&self, name: &str) -> Option<u32> {
        let id = self.index.candidate(self.hasher.hash_one(name))?;
        if (id as usize) < self.names.len() {
            prefetch(self.names.get(id));
        }
        Some(id)
    }

    /// The id of `name`, adding it (without a reference) if it is new.
    pub(super) fn intern(&mut self, name: String) -> u32 {
        self.intern_str(&name)
    }

    /// The id of `name`, adding it (without a reference) if it is new.
    /// Borrows the id: one hash, and no allocation for ids that fit inline
    /// (a restore interns millions of ids read from a buffer).
    pub(super) fn intern_str(&mut self, name: &str) -> u32 {
        let hash = self.hasher.hash_one(name);
        let names = &self.names;
        let found = self.index.find(hash, |i| &**names.get(i) == name);
        if let Some(id) = found {
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.names.replace(id, SmolStr::new(name));
                id
            }
            None => {
                self.names.push(SmolStr::new(name));
                self.refs.push(0);
                (self.names.len() - 1) as u32
            }
        };
        let (names, hasher) = (&self.names, &self.hasher);
        self.index
            .insert(hash, id, |i| hasher.hash_one(&**names.get(i)));
        id
    }

    /// One more window holds `id`.
    pub(super) fn acquire(&mut self, id: u32) {
        self.refs[id as usize] += 1;
    }

    /// A window holding `id` expired; the last one frees the entry.
    pub(super) fn release(&mut self, id: u32) {
        let r = &mut self.refs[id as usize];
        if *r == 0 {
            return;
        }
        *r -= 1;
        if *r > 0 {
            return;
        }
        let name = self.names.replace(id, self.empty.clone());
        let hash = self.hasher.hash_one(&*name);
        self.index.remove(hash, id);
        self.free.push(id);
    }

    /// The ad id behind `id`.
    pub(super) fn name(&self, id: u32) -> &str {
        self.names.get(id)
    }

    /// The ad's name as a count record carries it: a copy of the inline
    /// name (no allocation) for any id up to 23 bytes.
    pub(super) fn shared_name(&self, id: u32) -> smol_str::SmolStr {
        self.names.get(id).clone()
    }

    /// Every slot's name (free slots hold an empty name), indexed by id,
    /// sharing its chunks with the dictionary.
    pub(super) fn names(&self) -> SharedNames {
        self.names.clone()
    }

    /// Ads currently interned (held by at least one window, or just added).
    pub(super) fn len(&self) -> usize {
        self.names.len() - self.free.len()
    }

    /// Heap bytes of the dictionary, for the bytes-per-cell figure.
    pub(super) fn heap_bytes(&self) -> usize {
        // Names longer than the inline size have an allocation of their own.
        let names: usize = self
            .names
            .iter()
            .filter(|n| n.is_heap_allocated())
            .map(|n| n.len() + 16)
            .sum();
        names
            + self.names.slot_bytes()
            + self.refs.capacity() * 4
            + self.free.capacity() * 4
            + self.index.heap_bytes()
    }
}

/// Dense ids for slice names (`*`, `country=US`, ...). There are few of them
/// and they recur in every window, so they are never freed.
#[derive(Clone, Debug, Default)]
pub(super) struct SliceDict {
    /// Shared with the count records that name them.
    names: Vec<Arc<str>>,
}

impl SliceDict {
    /// The id of `name`, adding it if it is new. A linear scan: a job has a
    /// handful of slices, and this beats hashing for that size.
    pub(super) fn intern(&mut self, name: &str) -> u32 {
        if let Some(i) = self.names.iter().position(|n| &**n == name) {
            return i as u32;
        }
        self.names.push(name.into());
        (self.names.len() - 1) as u32
    }

    /// The slice name behind `id`.
    pub(super) fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }

    /// The slice name behind `id`, shared (a count record's).
    pub(super) fn shared(&self, id: u32) -> Arc<str> {
        self.names[id as usize].clone()
    }

    /// Every slice name, indexed by id.
    pub(super) fn names(&self) -> Vec<String> {
        self.names.iter().map(|n| n.to_string()).collect()
    }

    /// Number of slices seen.
    pub(super) fn len(&self) -> usize {
        self.names.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_reused_after_the_last_window_releases_them() {
        let mut d = AdDict::default();
        let a = d.intern("ad-a".into());
        let b = d.intern("ad-b".into());
        assert_ne!(a, b);
        assert_eq!(d.intern("ad-a".into()), a);
        d.acquire(a);
        d.acquire(a);
        d.release(a);
        assert_eq!(d.get("ad-a"), Some(a), "still held by one window");
        d.release(a);
        assert_eq!(d.get("ad-a"), None);
        assert_eq!(d.len(), 1);
        let c = d.intern("ad-c".into());
        assert_eq!(c, a, "the freed slot is reused");
        assert_eq!(d.name(c), "ad-c");
        assert_eq!(d.get("ad-b"), Some(b));
    }

    #[test]
    fn slices_keep_their_ids() {
        let mut s = SliceDict::default();
        assert_eq!(s.intern("*"), 0);
        assert_eq!(s.intern("country=US"), 1);
        assert_eq!(s.intern("*"), 0);
        assert_eq!(s.name(1), "country=US");
        assert_eq!(s.len(), 2);
    }
}
