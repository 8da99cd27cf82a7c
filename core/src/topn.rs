//! Top-N by clicks with a total order, so that merging local lists is exact.
//!
//! Ads are ranked by clicks descending, then `ad_id` ascending. Because every
//! ad lives on exactly one Aggregate actor and the order is total, the global
//! top-N is the top-N of the union of the local top-N lists.

use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// An ad and its clicks within a window.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AdClicks {
    /// The ad.
    pub ad_id: String,
    /// Clicks within the window.
    pub clicks: u64,
}

/// Ranking order: more clicks first, ties broken by `ad_id`.
pub fn rank(a: &AdClicks, b: &AdClicks) -> Ordering {
    b.clicks.cmp(&a.clicks).then_with(|| a.ad_id.cmp(&b.ad_id))
}

/// Heap entry whose `Ord` is the ranking, so the heap's max is the worst kept.
struct Ranked<'a>(&'a str, u64);

impl PartialEq for Ranked<'_> {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Ranked<'_> {}
impl PartialOrd for Ranked<'_> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Ranked<'_> {
    fn cmp(&self, o: &Self) -> Ordering {
        o.1.cmp(&self.1).then_with(|| self.0.cmp(o.0))
    }
}

/// The `n` best ads among `items`, best first. Ads with zero clicks are
/// never ranked. Runs in O(len · log n).
pub fn top_n<'a>(items: impl IntoIterator<Item = (&'a str, u64)>, n: usize) -> Vec<AdClicks> {
    if n == 0 {
        return Vec::new();
    }
    let mut heap: BinaryHeap<Ranked<'a>> = BinaryHeap::with_capacity(n + 1);
    for (ad, clicks) in items {
        if clicks == 0 {
            continue;
        }
        let cand = Ranked(ad, clicks);
        if heap.len() < n {
            heap.push(cand);
        } else if let Some(worst) = heap.peek() {
            if cand < *worst {
                heap.pop();
                heap.push(cand);
            }
        }
    }
    let mut out: Vec<AdClicks> = heap
        .into_iter()
        .map(|r| AdClicks {
            ad_id: r.0.to_owned(),
            clicks: r.1,
        })
        .collect();
    out.sort_by(rank);
    out
}

/// Merges local top-N lists of disjoint ad sets into the global top-N.
pub fn merge<'a>(lists: impl IntoIterator<Item = &'a [AdClicks]>, n: usize) -> Vec<AdClicks> {
    top_n(
        lists
            .into_iter()
            .flatten()
            .map(|a| (a.ad_id.as_str(), a.clicks)),
        n,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn ac(ad: &str, clicks: u64) -> AdClicks {
        AdClicks {
            ad_id: ad.into(),
            clicks,
        }
    }

    #[test]
    fn ties_break_by_ad_id_and_zero_is_dropped() {
        let got = top_n([("b", 5), ("a", 5), ("c", 9), ("z", 0)], 3);
        assert_eq!(got, vec![ac("c", 9), ac("a", 5), ac("b", 5)]);
        assert_eq!(top_n([("a", 1)], 0), vec![]);
    }

    /// The trap from the chapter: an ad that is never first (nor in the
    /// top-10) of any single minute is still in the top-10 over M = 5.
    #[test]
    fn steady_ad_wins_window_without_topping_any_minute() {
        let mut minutes: Vec<HashMap<String, u64>> = Vec::new();
        for m in 0..5 {
            let mut counts = HashMap::new();
            // Eleven bursty ads per minute, each 50 clicks, different each minute.
            for k in 0..11 {
                counts.insert(format!("burst-{m}-{k}"), 50);
            }
            counts.insert("steady".to_string(), 40);
            minutes.push(counts);
        }
        for counts in &minutes {
            let top = top_n(counts.iter().map(|(a, c)| (a.as_str(), *c)), 10);
            assert!(
                top.iter().all(|a| a.ad_id != "steady"),
                "steady must not be in a minute's top-10"
            );
        }
        let mut window: HashMap<&str, u64> = HashMap::new();
        for counts in &minutes {
            for (a, c) in counts {
                *window.entry(a.as_str()).or_default() += c;
            }
        }
        let top = top_n(window.iter().map(|(a, c)| (*a, *c)), 10);
        assert_eq!(top[0], ac("steady", 200));
    }

    proptest! {
        /// Since an ad lives on exactly one aggregate, merging the local
        /// lists must equal the global computation.
        #[test]
        fn merge_of_partitioned_local_lists_is_exact(
            counts in proptest::collection::hash_map("[a-f]{1,3}", 0u64..20, 0..60),
            parts in 1usize..5,
            n in 1usize..8,
        ) {
            let all: Vec<(&str, u64)> = counts.iter().map(|(a, c)| (a.as_str(), *c)).collect();
            let expected = top_n(all.iter().copied(), n);
            let mut locals = vec![Vec::new(); parts];
            for (a, c) in &all {
                let p = crate::keygroup::key_group_of(a, parts as u32).0 as usize;
                locals[p].push((*a, *c));
            }
            let local_tops: Vec<Vec<AdClicks>> = locals.into_iter().map(|l| top_n(l, n)).collect();
            let merged = merge(local_tops.iter().map(|v| v.as_slice()), n);
            prop_assert_eq!(merged, expected);
        }
    }
}
