//! Ground truth: the exact expected aggregates of a known event list,
//! computed by the most direct method possible (sort, sum, rank) and
//! deliberately sharing no code with the streaming path, so that a bug in
//! the pipeline cannot hide in its own yardstick.

use crate::event::{ClickEvent, EventType};
use crate::slice::Slicer;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Expected count of one (slice, window, ad).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TruthCount {
    /// Ad.
    pub ad_id: String,
    /// Window start, epoch ms.
    pub window_start: i64,
    /// Slice.
    pub slice: String,
    /// Clicks.
    pub clicks: u64,
    /// Impressions.
    pub impressions: u64,
}

/// Expected top-N of one (slice, M, window end).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TruthTop {
    /// Window end, epoch ms.
    pub window_end: i64,
    /// M.
    pub window_minutes: u32,
    /// Slice.
    pub slice: String,
    /// `(ad_id, clicks)`, best first.
    pub ads: Vec<(String, u64)>,
}

/// Everything an end-to-end test compares against.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Truth {
    /// Records produced (valid, malformed and duplicates).
    pub produced: u64,
    /// Records expected in the dead-letter topic.
    pub malformed: u64,
    /// Re-sent copies expected to be dropped as duplicates.
    pub duplicates: u64,
    /// Every expected count row.
    pub counts: Vec<TruthCount>,
    /// Every expected non-empty top-N list.
    pub top: Vec<TruthTop>,
}

/// Parameters of the computation.
pub struct TruthSpec<'a> {
    /// Window size, ms.
    pub window_ms: i64,
    /// N.
    pub top_n: usize,
    /// M values.
    pub top_windows: &'a [u32],
    /// Named filters (country and `*` are computed here directly).
    pub slicer: &'a Slicer,
    /// Whether the country dimension is configured.
    pub by_country: bool,
}

/// Computes counts and top-N lists of `events` (each counted once).
pub fn compute(events: &[ClickEvent], spec: &TruthSpec<'_>) -> (Vec<TruthCount>, Vec<TruthTop>) {
    let w = spec.window_ms;
    let mut cells: BTreeMap<(String, i64, String), (u64, u64)> = BTreeMap::new();
    for e in events {
        let ws = e.ts_ms - e.ts_ms.rem_euclid(w);
        let mut slices = vec!["*".to_string()];
        if spec.by_country {
            slices.push(format!("country={}", e.country));
        }
        // Named filters only: `*` and country are already listed above.
        let all = spec.slicer.slices_of(e);
        slices.extend(
            all.into_iter()
                .filter(|s| s != "*" && !s.starts_with("country=")),
        );
        for s in slices {
            let c = cells.entry((s, ws, e.ad_id.clone())).or_default();
            match e.event_type {
                EventType::Click => c.0 += 1,
                EventType::Impression => c.1 += 1,
            }
        }
    }
    let counts = cells
        .iter()
        .map(|((slice, ws, ad), (c, i))| TruthCount {
            ad_id: ad.clone(),
            window_start: *ws,
            slice: slice.clone(),
            clicks: *c,
            impressions: *i,
        })
        .collect();
    let mut top = Vec::new();
    let starts: BTreeSet<i64> = cells.keys().map(|k| k.1).collect();
    let slices: BTreeSet<&String> = cells.keys().map(|k| &k.0).collect();
    for &m in spec.top_windows {
        let span = i64::from(m) * w;
        let ends: BTreeSet<i64> = starts
            .iter()
            .flat_map(|s| (1..=i64::from(m)).map(move |k| s + k * w))
            .collect();
        for slice in &slices {
            for &end in &ends {
                let mut sums: HashMap<&str, u64> = HashMap::new();
                for ((s, ws, ad), (c, _)) in cells.range(
                    ((*slice).clone(), end - span, String::new())
                        ..((*slice).clone(), end, String::new()),
                ) {
                    debug_assert_eq!(s, *slice);
                    if *ws >= end - span && *ws < end && *c > 0 {
                        *sums.entry(ad.as_str()).or_default() += c;
                    }
                }
                let mut ranked: Vec<(String, u64)> =
                    sums.into_iter().map(|(a, c)| (a.to_owned(), c)).collect();
                ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                ranked.truncate(spec.top_n);
                if !ranked.is_empty() {
                    top.push(TruthTop {
                        window_end: end,
                        window_minutes: m,
                        slice: (*slice).clone(),
                        ads: ranked,
                    });
                }
            }
        }
    }
    (counts, top)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slice::SliceConfig;

    #[test]
    fn counts_and_tops_by_direct_summation() {
        let slicer = Slicer::new(&SliceConfig {
            dimensions: vec![],
            filters: vec![],
        })
        .unwrap();
        let ev = |ad: &str, ts: i64, t: EventType| ClickEvent {
            ad_id: ad.into(),
            ts_ms: ts,
            user_id: "u".into(),
            ip: "1.1.1.1".parse().unwrap(),
            country: "US".into(),
            event_id: None,
            event_type: t,
        };
        let events = vec![
            ev("a", 0, EventType::Click),
            ev("a", 59_999, EventType::Impression),
            ev("b", 60_000, EventType::Click),
        ];
        let spec = TruthSpec {
            window_ms: 60_000,
            top_n: 5,
            top_windows: &[1, 2],
            slicer: &slicer,
            by_country: true,
        };
        let (counts, top) = compute(&events, &spec);
        assert_eq!(counts.len(), 4);
        let a = counts
            .iter()
            .find(|c| c.slice == "*" && c.ad_id == "a")
            .unwrap();
        assert_eq!((a.clicks, a.impressions), (1, 1));
        let m2: Vec<_> = top
            .iter()
            .filter(|t| t.window_minutes == 2 && t.slice == "*")
            .collect();
        assert_eq!(m2.len(), 3, "{m2:?}");
        assert_eq!(m2[1].ads, vec![("a".to_string(), 1), ("b".to_string(), 1)]);
    }
}
