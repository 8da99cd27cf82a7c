//! The ad dictionary's names, in chunks shared copy-on-write with the
//! frozen copies a checkpoint takes.
//!
//! A barrier freezes the names with the windows that changed, and at 2M ads
//! copying one `SmolStr` per ad took tens of milliseconds of the actor's
//! pause even when no window had changed. Cloning the chunk list costs one
//! reference count per 4,096 names; the actor copies a chunk only when it
//! writes to it while a snapshot still reads it (a new ad in the last
//! chunk, or a freed slot reused).

use smol_str::SmolStr;
use std::sync::Arc;

/// Names per chunk: 96 KiB, small enough that the copy a write may cost
/// is short, large enough that a freeze clones few pointers.
const CHUNK: usize = 4096;

/// Names by dense id; cloning it shares every chunk.
#[derive(Clone, Debug, Default)]
pub(crate) struct SharedNames {
    chunks: Vec<Arc<Vec<SmolStr>>>,
    len: usize,
}

impl SharedNames {
    /// The name of slot `id`.
    pub(crate) fn get(&self, id: u32) -> &SmolStr {
        let i = id as usize;
        &self.chunks[i / CHUNK][i % CHUNK]
    }

    /// Replaces the name of slot `id`, returning the old one; copies the
    /// chunk first if a frozen copy shares it.
    pub(crate) fn replace(&mut self, id: u32, name: SmolStr) -> SmolStr {
        let i = id as usize;
        let chunk = Arc::make_mut(&mut self.chunks[i / CHUNK]);
        std::mem::replace(&mut chunk[i % CHUNK], name)
    }

    /// Adds a slot at the end.
    pub(crate) fn push(&mut self, name: SmolStr) {
        if self.len.is_multiple_of(CHUNK) {
            self.chunks.push(Arc::new(Vec::with_capacity(CHUNK)));
        }
        if let Some(last) = self.chunks.last_mut() {
            Arc::make_mut(last).push(name);
        }
        self.len += 1;
    }

    /// Number of slots, free ones included.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Every slot's name, in id order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &SmolStr> + '_ {
        self.chunks.iter().flat_map(|c| c.iter())
    }

    /// Bytes of the slots themselves (names longer than the inline size
    /// have an allocation of their own besides).
    pub(crate) fn slot_bytes(&self) -> usize {
        self.chunks.iter().map(|c| c.capacity()).sum::<usize>() * std::mem::size_of::<SmolStr>()
            + self.chunks.capacity() * std::mem::size_of::<Arc<Vec<SmolStr>>>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clone_keeps_the_names_it_saw_while_the_original_changes() {
        let mut names = SharedNames::default();
        for i in 0..(2 * CHUNK + 10) {
            names.push(SmolStr::new(format!("ad{i}")));
        }
        let frozen = names.clone();
        let old = names.replace(5, SmolStr::new("new-5"));
        assert_eq!(old, "ad5");
        let last = (2 * CHUNK + 9) as u32;
        names.replace(last, SmolStr::new("new-last"));
        names.push(SmolStr::new("ad-after"));
        assert_eq!(frozen.get(5), "ad5");
        assert_eq!(frozen.get(last), &SmolStr::new(format!("ad{last}")));
        assert_eq!(frozen.len(), 2 * CHUNK + 10);
        assert_eq!(names.get(5), "new-5");
        assert_eq!(names.get(last), "new-last");
        assert_eq!(names.get(last + 1), "ad-after");
        assert_eq!(names.len(), 2 * CHUNK + 11);
        // Chunks nobody wrote to are still shared.
        assert!(Arc::ptr_eq(&names.chunks[1], &frozen.chunks[1]));
        assert!(!Arc::ptr_eq(&names.chunks[0], &frozen.chunks[0]));
        let all: Vec<&SmolStr> = frozen.iter().collect();
        assert_eq!(all.len(), frozen.len());
        assert_eq!(all[CHUNK], &SmolStr::new(format!("ad{CHUNK}")));
    }
}
