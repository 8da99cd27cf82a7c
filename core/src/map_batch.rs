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

/// One (ad, window, country, filter set) group of the open batch. Groups
/// live in one vector and an ad's groups are chained through `next`, so
/// a new ad or group allocates nothing once the batch's vectors have grown.
struct Group {
    window_start: i64,
    /// Inline (no allocation) for any real country code.
    country: SmolStr,
    mask: u64,
    clicks: u64,
    impressions: u64,
    /// The same ad's next group, or [`NO_GROUP`].
    next: u32,
}

/// The end of an ad's chain of groups.
const NO_GROUP: u32 = u32::MAX;

/// An ad's first and last group.
#[derive(Clone, Copy)]
struct Chain {
    first: u32,
    last: u32,
}

/// Dedup keys of one type, in arrival order, with the group each belongs
/// to; put in group order (stably) only when the batch is drained.
#[derive(Default)]
struct KeyList {
    tagged: Vec<(u32, u64)>,
    /// Where each group's keys start in `sorted` (one more entry than
    /// groups); scratch of the drain.
    starts: Vec<u32>,
    sorted: Vec<u64>,
}

impl KeyList {
    /// Puts the keys in group order, keeping arrival order within a group.
    fn sort(&mut self, groups: usize) {
        self.starts.clear();
        self.starts.resize(groups + 1, 0);
        for &(g, _) in &self.tagged {
            self.starts[g as usize + 1] += 1;
        }
        for i in 1..self.starts.len() {
            self.starts[i] += self.starts[i - 1];
        }
        self.sorted.clear();
        self.sorted.resize(self.tagged.len(), 0);
        // `starts[g]` walks through group g's range as it is filled, then
        // holds where group g + 1 starts: shifted back below.
        for &(g, key) in &self.tagged {
            let at = &mut self.starts[g as usize];
            self.sorted[*at as usize] = key;
            *at += 1;
        }
        self.starts.rotate_right(1);
        self.starts[0] = 0;
        self.tagged.clear();
    }

    /// Group `g`'s keys, once sorted.
    fn of(&self, g: usize) -> &[u64] {
        match (self.starts.get(g), self.starts.get(g + 1)) {
            (Some(&a), Some(&b)) => self.sorted.get(a as usize..b as usize).unwrap_or(&[]),
            _ => &[],
        }
    }
}

/// Accumulates one micro-batch and splits it by destination aggregate.
pub struct MapBatcher {
    slicer: Arc<Slicer>,
    window_ms: i64,
    num_key_groups: u32,
    owners: Arc<Vec<u32>>,
    num_aggregates: usize,
    dedup: DedupMode,
    /// Each ad's chain of groups, by ad id (inline, no allocation, up to
    /// 23 bytes).
    ads: HashMap<SmolStr, Chain, foldhash::fast::RandomState>,
    groups: Vec<Group>,
    click_keys: KeyList,
    impression_keys: KeyList,
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
            ads: HashMap::default(),
            groups: Vec::new(),
            click_keys: KeyList::default(),
            impression_keys: KeyList::default(),
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
        let g = self.group_of(e.ad_id.as_ref(), ws, mask, e.country.as_ref());
        match (e.event_type, key) {
            (EventType::Click, Some(k)) => self.click_keys.tagged.push((g, k)),
            (EventType::Impression, Some(k)) => self.impression_keys.tagged.push((g, k)),
            (EventType::Click, None) => self.groups[g as usize].clicks += 1,
            (EventType::Impression, None) => self.groups[g as usize].impressions += 1,
        }
    }

    /// The index of the event's group, opened if new. The id and the
    /// country are copied only when they start a new group, inline (no
    /// allocation) when short, as they nearly always are.
    fn group_of(&mut self, ad_id: &str, window_start: i64, mask: u64, country: &str) -> u32 {
        let chain = self.ads.get(ad_id).copied();
        let mut at = chain.map_or(NO_GROUP, |c| c.first);
        while let Some(g) = self.groups.get(at as usize) {
            if g.window_start == window_start && g.mask == mask && g.country == country {
                return at;
            }
            at = g.next;
        }
        let new = self.groups.len() as u32;
        self.groups.push(Group {
            window_start,
            country: SmolStr::new(country),
            mask,
            clicks: 0,
            impressions: 0,
            next: NO_GROUP,
        });
        match chain {
            Some(c) => {
                if let Some(last) = self.groups.get_mut(c.last as usize) {
                    last.next = new;
                }
                if let Some(c) = self.ads.get_mut(ad_id) {
                    c.last = new;
                }
            }
            None => {
                self.ads.insert(
                    SmolStr::new(ad_id),
                    Chain {
                        first: new,
                        last: new,
                    },
                );
            }
        }
        new
    }

    /// Empties the batch's groups, handing each to `visit` with its owner,
    /// ad id and dedup keys. The vectors keep their capacity for the next
    /// batch.
    fn drain_groups(&mut self, mut visit: impl FnMut(usize, &str, &Group, &[u64], &[u64])) {
        let n = self.groups.len();
        self.click_keys.sort(n);
        self.impression_keys.sort(n);
        let (owners, num_key_groups, num_aggregates) =
            (&self.owners, self.num_key_groups, self.num_aggregates);
        for (ad, chain) in self.ads.drain() {
            let owner = owner_index(owners, num_key_groups, num_aggregates, &ad);
            let mut at = chain.first;
            while let Some(g) = self.groups.get(at as usize) {
                let i = at as usize;
                visit(
                    owner,
                    &ad,
                    g,
                    self.click_keys.of(i),
                    self.impression_keys.of(i),
                );
                at = g.next;
            }
        }
        self.groups.clear();
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
        let slicer = self.slicer.clone();
        self.drain_groups(|owner, ad, g, click_keys, impression_keys| {
            out[owner].push(PartialCount {
                ad_id: ad.to_owned(),
                window_start: g.window_start,
                slices: slicer.slices(&g.country, g.mask),
                clicks: g.clicks,
                impressions: g.impressions,
                click_keys: click_keys.to_vec(),
                impression_keys: impression_keys.to_vec(),
                raw: None,
            });
        });
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
            .map(|_| PackedBuilder::with_capacity(self.groups.len() / self.num_aggregates + 1))
            .collect();
        let slicer = self.slicer.clone();
        let mut cache = std::mem::take(&mut self.slice_cache);
        self.drain_groups(|owner, ad, g, click_keys, impression_keys| {
            let slices = cached_slices(&mut cache, &slicer, &g.country, g.mask);
            out[owner].push(&PartialRef {
                ad_id: ad,
                window_start: g.window_start,
                slices: SliceNames::Owned(slices),
                clicks: g.clicks,
                impressions: g.impressions,
                click_keys,
                impression_keys,
                raw: None,
            });
        });
        self.slice_cache = cache;
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
#[path = "map_batch_tests.rs"]
mod tests;
