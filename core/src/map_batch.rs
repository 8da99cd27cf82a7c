//! Pre-aggregation of one micro-batch in a Map actor.
//!
//! Events are grouped by (ad, window, country, filter set, type) before they
//! are sent, so a hot ad costs one entry per batch instead of one message
//! per click. Dedup keys travel with the counts, because deduplication runs
//! at the Aggregate actor that owns the ad (duplicates may arrive on
//! different partitions).

use crate::event::{ClickEvent, DedupMode, EventType};
use crate::keygroup::key_group_of;
use crate::slice::Slicer;
use crate::window::window_start;
use std::collections::HashMap;
use std::sync::Arc;

/// Partial counts for one (ad, window, slice set), sent Map → Aggregate.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PartialCount {
    /// The ad.
    pub ad_id: String,
    /// Window start, epoch ms.
    pub window_start: i64,
    /// Slices these events count in.
    pub slices: Vec<String>,
    /// Clicks that carry no dedup key (counted as they come).
    pub clicks: u64,
    /// Impressions that carry no dedup key.
    pub impressions: u64,
    /// Dedup keys of clicks; each new key counts one click.
    pub click_keys: Vec<u64>,
    /// Dedup keys of impressions.
    pub impression_keys: Vec<u64>,
    /// The original record, for events that were already behind the Map's
    /// watermark: if the Aggregate finds them too late, they go unchanged to
    /// the late topic.
    pub raw: Option<Vec<u8>>,
}

impl PartialCount {
    /// Number of events this partial carries.
    pub fn events(&self) -> u64 {
        self.clicks
            + self.impressions
            + self.click_keys.len() as u64
            + self.impression_keys.len() as u64
    }
}

#[derive(Default)]
struct Group {
    window_start: i64,
    country: String,
    mask: u64,
    counts: PartialCount,
}

/// Accumulates one micro-batch and splits it by destination aggregate.
pub struct MapBatcher {
    slicer: Arc<Slicer>,
    window_ms: i64,
    num_key_groups: u32,
    owners: Arc<Vec<u32>>,
    num_aggregates: usize,
    dedup: DedupMode,
    groups: HashMap<String, Vec<Group>, foldhash::fast::RandomState>,
    singles: Vec<PartialCount>,
    events: usize,
}

impl MapBatcher {
    /// `owners[kg]` is the aggregate index that owns key group `kg`.
    pub fn new(
        slicer: Arc<Slicer>,
        window_ms: i64,
        owners: Arc<Vec<u32>>,
        num_aggregates: usize,
        dedup: DedupMode,
    ) -> Self {
        Self {
            slicer,
            window_ms,
            num_key_groups: owners.len() as u32,
            owners,
            num_aggregates: num_aggregates.max(1),
            dedup,
            groups: HashMap::default(),
            singles: Vec::new(),
            events: 0,
        }
    }

    /// Events added since the last flush.
    pub fn len(&self) -> usize {
        self.events
    }

    /// Whether nothing was added since the last flush.
    pub fn is_empty(&self) -> bool {
        self.events == 0
    }

    /// Adds a validated event. `behind_watermark` events keep their raw
    /// bytes and are sent on their own, so they can be side-output as late.
    pub fn add(&mut self, e: ClickEvent, raw: &[u8], behind_watermark: bool) {
        self.events += 1;
        let ws = window_start(e.ts_ms, self.window_ms);
        let mask = self.slicer.filter_mask(&e);
        let key = e.dedup_key(self.dedup);
        if behind_watermark {
            let mut p = PartialCount {
                slices: self.slicer.slices(&e.country, mask),
                window_start: ws,
                raw: Some(raw.to_vec()),
                ..Default::default()
            };
            add_one(&mut p, e.event_type, key);
            p.ad_id = e.ad_id;
            self.singles.push(p);
            return;
        }
        // The event is owned: its id becomes the key without a copy.
        let groups = self.groups.entry(e.ad_id).or_default();
        let idx = match groups
            .iter()
            .position(|g| g.window_start == ws && g.mask == mask && g.country == e.country)
        {
            Some(i) => i,
            None => {
                groups.push(Group {
                    window_start: ws,
                    country: e.country,
                    mask,
                    counts: PartialCount::default(),
                });
                groups.len() - 1
            }
        };
        add_one(&mut groups[idx].counts, e.event_type, key);
    }

    /// Aggregate index that owns `ad_id`.
    pub fn owner_of(&self, ad_id: &str) -> usize {
        owner_index(
            &self.owners,
            self.num_key_groups,
            self.num_aggregates,
            ad_id,
        )
    }

    /// Drains the batch: one list of partials per aggregate index.
    pub fn flush(&mut self) -> Vec<Vec<PartialCount>> {
        let mut out: Vec<Vec<PartialCount>> = vec![Vec::new(); self.num_aggregates];
        let (owners, num_key_groups, num_aggregates) =
            (&self.owners, self.num_key_groups, self.num_aggregates);
        // `drain` keeps the map's capacity for the next batch.
        for (mut ad, groups) in self.groups.drain() {
            let owner = owner_index(owners, num_key_groups, num_aggregates, &ad);
            let last = groups.len().saturating_sub(1);
            for (i, g) in groups.into_iter().enumerate() {
                let mut p = g.counts;
                p.slices = self.slicer.slices(&g.country, g.mask);
                p.window_start = g.window_start;
                // Copy the id for all but the last group, which takes it.
                p.ad_id = if i == last {
                    std::mem::take(&mut ad)
                } else {
                    ad.clone()
                };
                out[owner].push(p);
            }
        }
        for p in std::mem::take(&mut self.singles) {
            let owner = self.owner_of(&p.ad_id);
            out[owner].push(p);
        }
        self.events = 0;
        out
    }
}

fn owner_index(owners: &[u32], num_key_groups: u32, num_aggregates: usize, ad_id: &str) -> usize {
    let kg = key_group_of(ad_id, num_key_groups).0 as usize;
    owners
        .get(kg)
        .map_or(0, |o| *o as usize)
        .min(num_aggregates - 1)
}

fn add_one(p: &mut PartialCount, t: EventType, key: Option<u64>) {
    match (t, key) {
        (EventType::Click, Some(k)) => p.click_keys.push(k),
        (EventType::Click, None) => p.clicks += 1,
        (EventType::Impression, Some(k)) => p.impression_keys.push(k),
        (EventType::Impression, None) => p.impressions += 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slice::SliceConfig;

    fn ev(ad: &str, ts: i64, t: EventType, id: Option<&str>) -> ClickEvent {
        ClickEvent {
            ad_id: ad.into(),
            ts_ms: ts,
            user_id: "u".into(),
            ip: "1.2.3.4".parse().unwrap(),
            country: "US".into(),
            event_id: id.map(Into::into),
            event_type: t,
        }
    }

    #[test]
    fn hot_ad_becomes_one_partial_per_window() {
        let slicer = Arc::new(Slicer::new(&SliceConfig::default()).unwrap());
        let owners = Arc::new(crate::ring::Ring::new(2).assign(64));
        let mut b = MapBatcher::new(slicer, 60_000, owners, 2, DedupMode::EventId);
        for i in 0..1000 {
            b.add(ev("hot", i, EventType::Click, None), b"", false);
        }
        b.add(ev("hot", 5, EventType::Impression, Some("x")), b"", false);
        b.add(ev("hot", 60_000, EventType::Click, None), b"", false);
        b.add(ev("hot", 7, EventType::Click, None), b"raw", true);
        assert_eq!(b.len(), 1003);
        let out = b.flush();
        let owner = out.iter().position(|v| !v.is_empty()).unwrap();
        let parts = &out[owner];
        assert_eq!(parts.len(), 3, "{parts:?}");
        let first = parts
            .iter()
            .find(|p| p.window_start == 0 && p.raw.is_none())
            .unwrap();
        assert_eq!(first.clicks, 1000);
        assert_eq!(first.impression_keys.len(), 1);
        assert_eq!(first.slices, vec!["*", "country=US"]);
        assert_eq!(parts.iter().find(|p| p.raw.is_some()).unwrap().events(), 1);
        assert!(b.is_empty());
    }
}
