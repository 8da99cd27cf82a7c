//! The distinct ads of one window, as a bitmap over the actor's dense ad
//! ids: an ad costs one bit, a lookup is a shift and a mask, and listing
//! them (when the window expires) is a scan in id order. A hash set took
//! about 9 bytes per ad with its slack.
//!
//! A bitmap is sized by the highest id, not by how many ads it holds, so a
//! window with few ads in a large dictionary costs more than a set would:
//! at most the dictionary's size in bits, which the windows' cells dwarf
//! whenever the dictionary is large.

/// A set of dense ad ids.
#[derive(Clone, Debug, Default)]
pub(super) struct AdSet {
    words: Vec<u64>,
    len: usize,
}

impl AdSet {
    /// Whether `ad` is in the set.
    pub(super) fn contains(&self, ad: u32) -> bool {
        let (word, bit) = place(ad);
        self.words.get(word).is_some_and(|w| w & bit != 0)
    }

    /// Adds `ad`; true if it was not there.
    pub(super) fn insert(&mut self, ad: u32) -> bool {
        let (word, bit) = place(ad);
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        let w = &mut self.words[word];
        let new = *w & bit == 0;
        *w |= bit;
        self.len += usize::from(new);
        new
    }

    /// Number of ads.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The ads, in id order.
    pub(super) fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            let mut rest = w;
            std::iter::from_fn(move || {
                if rest == 0 {
                    return None;
                }
                let bit = rest.trailing_zeros();
                rest &= rest - 1;
                Some(i as u32 * 64 + bit)
            })
        })
    }

    /// Heap bytes held.
    pub(super) fn heap_bytes(&self) -> usize {
        self.words.capacity() * 8
    }
}

fn place(ad: u32) -> (usize, u64) {
    ((ad / 64) as usize, 1u64 << (ad % 64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn behaves_as_a_set(ads in proptest::collection::vec(0u32..5_000, 0..300)) {
            let mut set = AdSet::default();
            let mut model = std::collections::BTreeSet::new();
            for ad in &ads {
                prop_assert_eq!(set.insert(*ad), model.insert(*ad));
            }
            prop_assert_eq!(set.len(), model.len());
            prop_assert_eq!(set.iter().collect::<Vec<_>>(), model.iter().copied().collect::<Vec<_>>());
            for probe in 0..5_100 {
                prop_assert_eq!(set.contains(probe), model.contains(&probe));
            }
        }
    }

    #[test]
    fn word_edges_are_kept_apart() {
        let mut set = AdSet::default();
        for ad in [63, 64, 127, 1_000_063] {
            assert!(set.insert(ad));
        }
        assert!(!set.contains(62) && !set.contains(65) && !set.contains(1_000_000));
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![63, 64, 127, 1_000_063]);
    }
}
