//! Pre-aggregation of one micro-batch in a Map actor.
//!
//! Events are grouped by (ad, window, country, filter set, type) before they
//! are sent, so a hot ad costs one entry per batch instead of one message
//! per click. Dedup keys travel with the counts, because deduplication runs
//! at the Aggregate actor that owns the ad (duplicates may arrive on
//! different partitions).

use crate::event::{ClickEvent, DedupMode, EventType};
use crate::keygroup::key_group_of;
use crate::partials::{PackedBuilder, PackedPartials, PartialRef, SliceNames};
use crate::slice::Slicer;
use crate::window::window_start;
use smol_str::SmolStr;
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
    /// Inline (no allocation) for any real country code.
    country: SmolStr,
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
    /// By ad id, inline (no allocation) up to 23 bytes.
    groups: HashMap<SmolStr, Vec<Group>, foldhash::fast::RandomState>,
    singles: Vec<PartialCount>,
    events: usize,
    /// Slice names by country, then filter mask: built once, not once per
    /// group (see [`MapBatcher::flush_packed`]).
    slice_cache: SliceCache,
}

type SliceCache = hashbrown::HashMap<String, Vec<(u64, Vec<String>)>, foldhash::fast::RandomState>;

/// Countries cached at most; input may carry any string, so the cache is
/// emptied beyond this rather than grown without bound.
const SLICE_CACHE_COUNTRIES: usize = 4096;

fn cached_slices<'c>(
    cache: &'c mut SliceCache,
    slicer: &Slicer,
    country: &str,
    mask: u64,
) -> &'c [String] {
    if cache.len() >= SLICE_CACHE_COUNTRIES && !cache.contains_key(country) {
        cache.clear();
    }
    let masks = cache.entry_ref(country).or_default();
    let i = match masks.iter().position(|(m, _)| *m == mask) {
        Some(i) => i,
        None => {
            masks.push((mask, slicer.slices(country, mask)));
            masks.len() - 1
        }
    };
    &masks[i].1
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
            slice_cache: SliceCache::default(),
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
    pub fn add<S: AsRef<str> + Into<String>>(
        &mut self,
        e: ClickEvent<S>,
        raw: &[u8],
        behind_watermark: bool,
    ) {
        self.events += 1;
        let ws = window_start(e.ts_ms, self.window_ms);
        let mask = self.slicer.filter_mask(&e);
        let key = e.dedup_key(self.dedup);
        if behind_watermark {
            let mut p = PartialCount {
                slices: self.slicer.slices(e.country.as_ref(), mask),
                window_start: ws,
                raw: Some(raw.to_vec()),
                ..Default::default()
            };
            add_one(&mut p, e.event_type, key);
            p.ad_id = e.ad_id.into();
            self.singles.push(p);
            return;
        }
        // The id and the country are copied only when they start a new
        // group, inline (no allocation) when short, as they nearly always
        // are.
        let groups = match self.groups.get_mut(e.ad_id.as_ref()) {
            Some(groups) => groups,
            None => self
                .groups
                .entry(SmolStr::new(e.ad_id.as_ref()))
                .or_default(),
        };
        let country = e.country.as_ref();
        let idx = match groups
            .iter()
            .position(|g| g.window_start == ws && g.mask == mask && g.country == country)
        {
            Some(i) => i,
            None => {
                groups.push(Group {
                    window_start: ws,
                    country: SmolStr::new(e.country.as_ref()),
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
        for (ad, groups) in self.groups.drain() {
            let owner = owner_index(owners, num_key_groups, num_aggregates, &ad);
            for g in groups {
                let mut p = g.counts;
                p.slices = self.slicer.slices(&g.country, g.mask);
                p.window_start = g.window_start;
                p.ad_id = ad.to_string();
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

impl MapBatcher {
    /// Drains the batch as one packed batch per aggregate index, as a Map
    /// sends it. Groups are packed as they are drained: no owned record, id
    /// copy or list of slice names is built per group.
    pub fn flush_packed(&mut self) -> Vec<PackedPartials> {
        let mut out: Vec<PackedBuilder> = (0..self.num_aggregates)
            .map(|_| PackedBuilder::default())
            .collect();
        let (owners, num_key_groups, num_aggregates) =
            (&self.owners, self.num_key_groups, self.num_aggregates);
        let (slicer, cache) = (&self.slicer, &mut self.slice_cache);
        for (ad, groups) in self.groups.drain() {
            let owner = owner_index(owners, num_key_groups, num_aggregates, &ad);
            for g in &groups {
                let slices = cached_slices(cache, slicer, &g.country, g.mask);
                out[owner].push(&PartialRef {
                    ad_id: &ad,
                    window_start: g.window_start,
                    slices: SliceNames::Owned(slices),
                    clicks: g.counts.clicks,
                    impressions: g.counts.impressions,
                    click_keys: &g.counts.click_keys,
                    impression_keys: &g.counts.impression_keys,
                    raw: None,
                });
            }
        }
        for p in std::mem::take(&mut self.singles) {
            let owner = self.owner_of(&p.ad_id);
            out[owner].push(&p.as_partial_ref());
        }
        self.events = 0;
        out.into_iter().map(PackedBuilder::finish).collect()
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

    #[test]
    fn borrowed_events_batch_exactly_like_owned_ones() {
        let slicer = Arc::new(Slicer::new(&SliceConfig::default()).unwrap());
        let owners = Arc::new(crate::ring::Ring::new(2).assign(64));
        let batcher = || {
            MapBatcher::new(
                slicer.clone(),
                60_000,
                owners.clone(),
                2,
                DedupMode::EventId,
            )
        };
        let (mut owned, mut borrowed) = (batcher(), batcher());
        for i in 0..500i64 {
            let e = ev(
                &format!("ad{}", i % 37),
                i * 311,
                if i % 3 == 0 {
                    EventType::Impression
                } else {
                    EventType::Click
                },
                (i % 2 == 0).then(|| format!("e{i}")).as_deref(),
            );
            let behind = i % 50 == 0;
            let view = ClickEvent {
                ad_id: std::borrow::Cow::Borrowed(e.ad_id.as_str()),
                ts_ms: e.ts_ms,
                user_id: std::borrow::Cow::Borrowed(e.user_id.as_str()),
                ip: e.ip,
                country: std::borrow::Cow::Borrowed(e.country.as_str()),
                event_id: e.event_id.as_deref().map(std::borrow::Cow::Borrowed),
                event_type: e.event_type,
            };
            borrowed.add(view, b"raw", behind);
            owned.add(e, b"raw", behind);
        }
        let sorted = |mut v: Vec<Vec<PartialCount>>| {
            for parts in &mut v {
                parts.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
            }
            v
        };
        assert_eq!(sorted(owned.flush()), sorted(borrowed.flush()));
    }

    #[test]
    fn packed_flushes_hold_exactly_the_records_of_plain_ones() {
        use crate::partials::CheckedPartials;
        let slicer = Arc::new(Slicer::new(&SliceConfig::default()).unwrap());
        let owners = Arc::new(crate::ring::Ring::new(3).assign(64));
        let mut plain = MapBatcher::new(
            slicer.clone(),
            60_000,
            owners.clone(),
            3,
            DedupMode::EventId,
        );
        let mut packed = MapBatcher::new(slicer, 60_000, owners, 3, DedupMode::EventId);
        for round in 0..3 {
            for i in 0..200i64 {
                let mut e = ev(
                    &format!("ad-{}", i % 37),
                    i * 1_000 + round,
                    if i % 3 == 0 {
                        EventType::Impression
                    } else {
                        EventType::Click
                    },
                    (i % 5 == 0).then_some("dup"),
                );
                e.country = ["US", "DE", "KR"][(i % 3) as usize].into();
                let behind = i % 50 == 0;
                plain.add(e.clone(), b"raw", behind);
                packed.add(e, b"raw", behind);
            }
            let sorted = |mut v: Vec<PartialCount>| {
                v.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
                v
            };
            let want: Vec<Vec<PartialCount>> = plain.flush().into_iter().map(sorted).collect();
            let got: Vec<Vec<PartialCount>> = packed
                .flush_packed()
                .into_iter()
                .map(|b| {
                    let b = CheckedPartials::try_from(b).unwrap();
                    sorted(b.iter().map(|p| p.to_owned_partial()).collect())
                })
                .collect();
            assert_eq!(got, want, "round {round}");
            assert!(packed.is_empty());
        }
    }
}
