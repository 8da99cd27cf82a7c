//! One key group of one window, column by column: how snapshot format 5
//! stores an Aggregate's windows.
//!
//! Restoring a window from protobuf cells (a message per (ad, window) with
//! a `String` id and a `String` per slice) cost about 3 µs of CPU per cell,
//! and a rescale at 2M ads restores a few million of them at once. Columns
//! decode as packed integer arrays plus one buffer of ids, and restore
//! straight into the flat state: no string is allocated for an id that fits
//! inline, and every table is sized once.

use super::cells::CellValue;
use super::{FrozenAggregate, Window};
use crate::keygroup::key_group_of;
use std::collections::HashSet;

/// The columns as stored. Any values may come from a damaged object, so
/// they are only used once [`WindowColumns::try_from`] has checked them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ColumnParts {
    /// Key group of every ad here.
    pub key_group: u32,
    /// Window start, epoch ms.
    pub window_start: i64,
    /// The ad ids, UTF-8, one after another.
    pub ad_ids: Vec<u8>,
    /// Byte length of each id in `ad_ids`: one entry per ad.
    pub ad_id_lens: Vec<u32>,
    /// Slice names, indexed by `cell_slices`.
    pub slices: Vec<String>,
    /// Per (ad, slice) cell: index of its ad.
    pub cell_ads: Vec<u32>,
    /// Per cell: index of its slice.
    pub cell_slices: Vec<u32>,
    /// Per cell: clicks.
    pub clicks: Vec<u64>,
    /// Per cell: impressions.
    pub impressions: Vec<u64>,
    /// Per cell: re-emissions after the first.
    pub revisions: Vec<u32>,
    /// Per cell: changed since last emitted.
    pub dirty: Vec<bool>,
    /// Per dedup key: index of its ad.
    pub seen_ads: Vec<u32>,
    /// Per dedup key: the key.
    pub seen_keys: Vec<u64>,
}

/// Columns whose lengths, indices and ids have been checked, so restoring
/// them cannot panic or misattribute a count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowColumns(ColumnParts);

impl TryFrom<ColumnParts> for WindowColumns {
    type Error = String;

    fn try_from(p: ColumnParts) -> Result<Self, String> {
        let ads = p.ad_id_lens.len();
        let total: u64 = p.ad_id_lens.iter().map(|l| u64::from(*l)).sum();
        if total != p.ad_ids.len() as u64 {
            return Err(format!(
                "key group {}: ad id lengths add up to {total} bytes, the ids hold {}",
                p.key_group,
                p.ad_ids.len()
            ));
        }
        if std::str::from_utf8(&p.ad_ids).is_err() {
            return Err(format!("key group {}: ad ids are not UTF-8", p.key_group));
        }
        let mut at = 0usize;
        for len in &p.ad_id_lens {
            let end = at + *len as usize;
            if std::str::from_utf8(&p.ad_ids[at..end]).is_err() {
                return Err(format!(
                    "key group {}: an ad id length splits a character",
                    p.key_group
                ));
            }
            at = end;
        }
        let cells = p.cell_ads.len();
        let lens = [
            ("cell slices", p.cell_slices.len()),
            ("clicks", p.clicks.len()),
            ("impressions", p.impressions.len()),
            ("revisions", p.revisions.len()),
            ("dirty marks", p.dirty.len()),
        ];
        if let Some((name, n)) = lens.iter().find(|(_, n)| *n != cells) {
            return Err(format!(
                "key group {}: {cells} cells but {n} {name}",
                p.key_group
            ));
        }
        if p.seen_keys.len() != p.seen_ads.len() {
            return Err(format!(
                "key group {}: {} dedup keys but {} of their ads",
                p.key_group,
                p.seen_keys.len(),
                p.seen_ads.len()
            ));
        }
        let out_of = |idx: &[u32], n: usize| idx.iter().any(|i| *i as usize >= n);
        if out_of(&p.cell_ads, ads) || out_of(&p.seen_ads, ads) {
            return Err(format!(
                "key group {}: a cell or dedup key names an ad beyond the {ads} held",
                p.key_group
            ));
        }
        if out_of(&p.cell_slices, p.slices.len()) {
            return Err(format!(
                "key group {}: a cell names a slice beyond the {} held",
                p.key_group,
                p.slices.len()
            ));
        }
        Ok(Self(p))
    }
}

impl WindowColumns {
    /// The checked columns.
    pub fn parts(&self) -> &ColumnParts {
        &self.0
    }

    /// The ad ids, in order.
    fn ad_names(&self) -> impl Iterator<Item = &str> + '_ {
        let mut at = 0usize;
        self.0.ad_id_lens.iter().map(move |len| {
            let end = at + *len as usize;
            let name = std::str::from_utf8(&self.0.ad_ids[at..end]).unwrap_or_default();
            at = end;
            name
        })
    }
}

/// No interned id: the ad is not restored here.
const SKIPPED: u32 = u32::MAX;

impl super::AggregateState {
    /// Restores one checked key group of one window into this state,
    /// keeping only the ads `keep` accepts. `restored` holds the (window,
    /// key group) pairs restored so far: the first copy of a key group of a
    /// window that holds nothing indexed goes in without building its hash
    /// tables ([`Window::restore_bulk`]); anything else (a key group seen
    /// twice, a window that already took other cells) cell by cell.
    pub(super) fn restore_columns(
        &mut self,
        cols: &WindowColumns,
        keep: &impl Fn(&str) -> bool,
        restored: &mut HashSet<(i64, u32)>,
    ) {
        let p = cols.parts();
        let w = self.settings.window_ms;
        let wm = self.watermark;
        let start = p.window_start;
        let ids: Vec<u32> = cols
            .ad_names()
            .map(|name| {
                if keep(name) {
                    self.ads.intern_str(name)
                } else {
                    SKIPPED
                }
            })
            .collect();
        // A window none of whose ads are kept is not held here at all.
        if ids.iter().all(|id| *id == SKIPPED) {
            return;
        }
        let window = self
            .windows
            .entry(start)
            .or_insert_with(|| Window::new(wm.is_some_and(|wm| start.saturating_add(w) <= wm)));
        window.reserve(p.cell_ads.len(), p.seen_keys.len());
        let slices: Vec<u32> = p.slices.iter().map(|n| self.slices.intern(n)).collect();
        let kept = |i: &u32| ids[*i as usize] != SKIPPED;
        let cells = (0..p.cell_ads.len())
            .filter(|i| kept(&p.cell_ads[*i]))
            .map(|i| CellValue {
                clicks: p.clicks[i],
                impressions: p.impressions[i],
                ad: ids[p.cell_ads[i] as usize],
                slice: slices[p.cell_slices[i] as usize],
                revision: p.revisions[i],
                dirty: p.dirty[i],
            });
        let seen = p
            .seen_ads
            .iter()
            .zip(&p.seen_keys)
            .filter(|(ad, _)| kept(ad))
            .map(|(ad, key)| (ids[*ad as usize], *key));
        if window.takes_bulk() && restored.insert((start, p.key_group)) {
            // The ids of one key group are distinct (the writer lists a
            // set) and no other key group holds them.
            let ads = ids.iter().copied().filter(|id| *id != SKIPPED);
            for ad in ads.clone() {
                self.ads.acquire(ad);
            }
            window.restore_bulk(ads, cells, seen);
            return;
        }
        for ad in &ids {
            if *ad != SKIPPED && window.add_ad(*ad) {
                self.ads.acquire(*ad);
            }
        }
        for (ad, key) in seen {
            window.see(ad, key);
        }
        for c in cells {
            window.put(&c);
        }
    }
}

impl FrozenAggregate {
    /// Every copied window as columns, one entry per key group (in key
    /// group order) of `key_groups`: what the node writes as the window's
    /// object.
    pub fn window_columns(
        &self,
        key_groups: u32,
    ) -> impl Iterator<Item = (i64, Vec<ColumnParts>)> + '_ {
        // Shared by every window: ad ids are dense, so a vector indexed by
        // id finds an ad's place without hashing.
        let mut at = AdPlaces::default();
        self.windows
            .iter()
            .map(move |(start, win)| (*start, self.columns_of(*start, win, key_groups, &mut at)))
    }

    /// One window's columns. Every vector is sized before it is filled: a
    /// checkpoint converts millions of cells, and growing thousands of
    /// small vectors cost more in copies and page faults than the
    /// conversion itself.
    fn columns_of(
        &self,
        start: i64,
        win: &Window,
        key_groups: u32,
        at: &mut AdPlaces,
    ) -> Vec<ColumnParts> {
        // The window's ads by key group (stable: within a group they keep
        // the window's order).
        let mut ads: Vec<(u32, u32)> = win
            .ads()
            .map(|ad| {
                let name = self.ad_names.get(ad).as_str();
                (key_group_of(name, key_groups).0, ad)
            })
            .collect();
        ads.sort_by_key(|(kg, _)| *kg);
        at.grow(self.ad_names.len());
        let mut groups: Vec<ColumnParts> = Vec::new();
        for run in ads.chunk_by(|a, b| a.0 == b.0) {
            let g = groups.len() as u32;
            let names = run.iter().map(|(_, ad)| self.ad_names.get(*ad).len());
            let mut group = ColumnParts {
                key_group: run[0].0,
                window_start: start,
                ad_ids: Vec::with_capacity(names.sum()),
                ad_id_lens: Vec::with_capacity(run.len()),
                slices: self.slice_names.clone(),
                ..ColumnParts::default()
            };
            for (i, (_, ad)) in run.iter().enumerate() {
                at.set(*ad, g, i as u32);
                let name = self.ad_names.get(*ad).as_str();
                group.ad_ids.extend_from_slice(name.as_bytes());
                group.ad_id_lens.push(name.len() as u32);
            }
            groups.push(group);
        }
        let mut cells = vec![0usize; groups.len()];
        let mut seen = vec![0usize; groups.len()];
        for c in win.cells() {
            if let Some((g, _)) = at.get(c.ad) {
                cells[g as usize] += 1;
            }
        }
        for (ad, _) in win.seen() {
            if let Some((g, _)) = at.get(ad) {
                seen[g as usize] += 1;
            }
        }
        for (group, (n, k)) in groups.iter_mut().zip(cells.into_iter().zip(seen)) {
            group.cell_ads.reserve_exact(n);
            group.cell_slices.reserve_exact(n);
            group.clicks.reserve_exact(n);
            group.impressions.reserve_exact(n);
            group.revisions.reserve_exact(n);
            group.dirty.reserve_exact(n);
            group.seen_ads.reserve_exact(k);
            group.seen_keys.reserve_exact(k);
        }
        for c in win.cells() {
            if let Some((g, i)) = at.get(c.ad) {
                let group = &mut groups[g as usize];
                group.cell_ads.push(i);
                group.cell_slices.push(c.slice);
                group.clicks.push(c.clicks);
                group.impressions.push(c.impressions);
                group.revisions.push(c.revision);
                group.dirty.push(c.dirty);
            }
        }
        for (ad, key) in win.seen() {
            if let Some((g, i)) = at.get(ad) {
                let group = &mut groups[g as usize];
                group.seen_ads.push(i);
                group.seen_keys.push(key);
            }
        }
        // Unset again, so the next window cannot read this one's places.
        for (_, ad) in &ads {
            at.clear(*ad);
        }
        groups
    }
}

/// Each ad's place in the columns of the window being converted: (its key
/// group's position, its index within the group), by dense ad id.
#[derive(Default)]
struct AdPlaces(Vec<(u32, u32)>);

impl AdPlaces {
    const UNSET: (u32, u32) = (u32::MAX, u32::MAX);

    fn grow(&mut self, ads: usize) {
        if self.0.len() < ads {
            self.0.resize(ads, Self::UNSET);
        }
    }

    fn set(&mut self, ad: u32, group: u32, index: u32) {
        self.0[ad as usize] = (group, index);
    }

    fn clear(&mut self, ad: u32) {
        self.0[ad as usize] = Self::UNSET;
    }

    /// The place of `ad`, if the window being converted holds it.
    fn get(&self, ad: u32) -> Option<(u32, u32)> {
        self.0
            .get(ad as usize)
            .copied()
            .filter(|p| *p != Self::UNSET)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts() -> ColumnParts {
        ColumnParts {
            key_group: 3,
            window_start: 60_000,
            ad_ids: b"ab".to_vec(),
            ad_id_lens: vec![1, 1],
            slices: vec!["*".into()],
            cell_ads: vec![1],
            cell_slices: vec![0],
            clicks: vec![4],
            impressions: vec![5],
            revisions: vec![0],
            dirty: vec![true],
            seen_ads: vec![0],
            seen_keys: vec![9],
        }
    }

    #[test]
    fn damaged_columns_are_refused_with_what_is_wrong() {
        assert!(WindowColumns::try_from(parts()).is_ok());
        let cases: Vec<(ColumnParts, &str)> = vec![
            (
                ColumnParts {
                    ad_id_lens: vec![1, 2],
                    ..parts()
                },
                "add up to 3 bytes",
            ),
            (
                ColumnParts {
                    ad_ids: vec![b'a', 0xff],
                    ..parts()
                },
                "not UTF-8",
            ),
            (
                ColumnParts {
                    ad_ids: "é".as_bytes().to_vec(),
                    ..parts()
                },
                "splits a character",
            ),
            (
                ColumnParts {
                    clicks: vec![],
                    ..parts()
                },
                "1 cells but 0 clicks",
            ),
            (
                ColumnParts {
                    cell_ads: vec![2],
                    ..parts()
                },
                "beyond the 2 held",
            ),
            (
                ColumnParts {
                    cell_slices: vec![1],
                    ..parts()
                },
                "slice beyond",
            ),
            (
                ColumnParts {
                    seen_keys: vec![],
                    ..parts()
                },
                "0 dedup keys",
            ),
        ];
        for (p, want) in cases {
            let err = WindowColumns::try_from(p).unwrap_err();
            assert!(err.contains(want) && err.contains("key group 3"), "{err}");
        }
    }

    #[test]
    fn a_window_converts_to_one_group_per_key_group_in_order_with_every_cell() {
        use crate::aggregate::tests::settings;
        use crate::aggregate::AggregateState;
        use crate::map_batch::PartialCount;
        const KEY_GROUPS: u32 = 7;
        let mut s = AggregateState::new(settings());
        let ads: Vec<String> = (0..60).map(|i| format!("ad-{i}")).collect();
        // Two windows with different ads, so places set for the first
        // window must not leak into the second.
        let parts = ads.iter().enumerate().map(|(i, ad)| PartialCount {
            ad_id: ad.clone(),
            window_start: if i.is_multiple_of(3) { 60_000 } else { 0 },
            slices: vec!["*".into(), "country=US".into()],
            clicks: i as u64 + 1,
            click_keys: vec![i as u64],
            ..Default::default()
        });
        s.apply(parts.collect());
        let frozen = s.freeze();
        let mut seen_ads = 0;
        for (start, groups) in frozen.window_columns(KEY_GROUPS) {
            let kgs: Vec<u32> = groups.iter().map(|g| g.key_group).collect();
            assert!(kgs.windows(2).all(|w| w[0] < w[1]), "{kgs:?}");
            for g in groups {
                let cols = WindowColumns::try_from(g).expect("valid columns");
                let p = cols.parts();
                let names: Vec<&str> = cols.ad_names().collect();
                assert_eq!(p.cell_ads.len(), 2 * names.len(), "two slices per ad");
                assert_eq!(p.seen_keys.len(), names.len(), "one key per ad");
                for (c, ad) in p.cell_ads.iter().enumerate() {
                    let name = names[*ad as usize];
                    let i: u64 = name[3..].parse().expect("ad-N");
                    assert_eq!(key_group_of(name, KEY_GROUPS).0, p.key_group);
                    assert_eq!(
                        start == 60_000,
                        i.is_multiple_of(3),
                        "{name} in window {start}"
                    );
                    // The unkeyed clicks and the keyed one.
                    assert_eq!(p.clicks[c], i + 2, "{name}");
                }
                for (ad, key) in p.seen_ads.iter().zip(&p.seen_keys) {
                    assert_eq!(format!("ad-{key}"), names[*ad as usize]);
                }
                seen_ads += names.len();
            }
        }
        assert_eq!(seen_ads, ads.len());
    }
}
