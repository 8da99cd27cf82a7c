//! Partial counts as they travel from a Map to an Aggregate: a batch of
//! columns, read in place through [`PartialRef`].
//!
//! A batch of protobuf `PartialCount` messages costs several allocations
//! per record on both sides (the id, each slice name, the key lists). As
//! columns, a batch is a dozen vectors whatever its size: ids in one byte
//! buffer, slices as indexes into the batch's few names, counts and dedup
//! keys as packed arrays. The Aggregate reads each record in place.

use crate::map_batch::PartialCount;

/// One partial count, borrowed from an owned [`PartialCount`] or from a
/// checked packed batch.
#[derive(Clone, Copy, Debug)]
pub struct PartialRef<'a> {
    /// The ad.
    pub ad_id: &'a str,
    /// Window start, epoch ms.
    pub window_start: i64,
    /// Slices these events count in.
    pub slices: SliceNames<'a>,
    /// Clicks without a dedup key.
    pub clicks: u64,
    /// Impressions without a dedup key.
    pub impressions: u64,
    /// Dedup keys of clicks.
    pub click_keys: &'a [u64],
    /// Dedup keys of impressions.
    pub impression_keys: &'a [u64],
    /// The original record, for events behind the Map's watermark.
    pub raw: Option<&'a [u8]>,
}

/// The slice names of one partial count.
#[derive(Clone, Copy, Debug)]
pub enum SliceNames<'a> {
    /// Names held by the record itself.
    Owned(&'a [String]),
    /// Indexes into the batch's names (checked to be in range).
    Indexed {
        /// The record's slices.
        ids: &'a [u32],
        /// The batch's slice names.
        names: &'a [String],
    },
}

impl<'a> SliceNames<'a> {
    /// Number of slices.
    pub fn len(self) -> usize {
        match self {
            Self::Owned(n) => n.len(),
            Self::Indexed { ids, .. } => ids.len(),
        }
    }

    /// Whether the record counts in no slice.
    pub fn is_empty(self) -> bool {
        self.len() == 0
    }

    /// The names, in order.
    pub fn iter(self) -> impl Iterator<Item = &'a str> {
        (0..self.len()).map(move |i| match self {
            Self::Owned(n) => n[i].as_str(),
            Self::Indexed { ids, names } => names[ids[i] as usize].as_str(),
        })
    }
}

impl PartialRef<'_> {
    /// Number of events this partial carries.
    pub fn events(&self) -> u64 {
        self.clicks
            + self.impressions
            + self.click_keys.len() as u64
            + self.impression_keys.len() as u64
    }

    /// An owned copy (for the rare record that is side-output).
    pub fn to_owned_partial(&self) -> PartialCount {
        PartialCount {
            ad_id: self.ad_id.to_owned(),
            window_start: self.window_start,
            slices: self.slices.iter().map(str::to_owned).collect(),
            clicks: self.clicks,
            impressions: self.impressions,
            click_keys: self.click_keys.to_vec(),
            impression_keys: self.impression_keys.to_vec(),
            raw: self.raw.map(<[u8]>::to_vec),
        }
    }
}

impl PartialCount {
    /// This record, borrowed.
    pub fn as_partial_ref(&self) -> PartialRef<'_> {
        PartialRef {
            ad_id: &self.ad_id,
            window_start: self.window_start,
            slices: SliceNames::Owned(&self.slices),
            clicks: self.clicks,
            impressions: self.impressions,
            click_keys: &self.click_keys,
            impression_keys: &self.impression_keys,
            raw: self.raw.as_deref(),
        }
    }
}

/// A batch of partial counts as columns, as sent on the wire. Any value may
/// come from a faulty peer, so it is read only through [`CheckedPartials`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PackedPartials {
    /// The ad ids, UTF-8, one after another.
    pub ad_ids: Vec<u8>,
    /// Byte length of each record's id: one entry per record.
    pub ad_id_lens: Vec<u32>,
    /// Per record: its window start minus the previous record's (the first
    /// record's minus 0), so a batch of one window costs a byte per record.
    pub window_deltas: Vec<i64>,
    /// The batch's slice names.
    pub slices: Vec<String>,
    /// Per record: how many entries of `slice_ids` are its.
    pub slice_counts: Vec<u32>,
    /// The records' slices, record after record, as indexes into `slices`.
    pub slice_ids: Vec<u32>,
    /// Per record: clicks without a dedup key.
    pub clicks: Vec<u64>,
    /// Per record: impressions without a dedup key.
    pub impressions: Vec<u64>,
    /// Per record: how many entries of `click_keys` are its.
    pub click_key_counts: Vec<u32>,
    /// Click dedup keys, record after record.
    pub click_keys: Vec<u64>,
    /// Per record: how many entries of `impression_keys` are its.
    pub impression_key_counts: Vec<u32>,
    /// Impression dedup keys, record after record.
    pub impression_keys: Vec<u64>,
    /// Per record: 0 without an original record, else its length + 1.
    pub raw_lens: Vec<u32>,
    /// The original records, one after another.
    pub raws: Vec<u8>,
}

impl PackedPartials {
    /// Packs `parts`, in order.
    pub fn pack(parts: &[PartialCount]) -> Self {
        let mut b = PackedBuilder::with_capacity(parts.len());
        for p in parts {
            b.push(&p.as_partial_ref());
        }
        b.finish()
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.ad_id_lens.len()
    }

    /// Whether the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.ad_id_lens.is_empty()
    }
}

/// Builds a packed batch one record at a time (a Map packs its groups as
/// it drains them, without an owned record per group).
#[derive(Debug, Default)]
pub struct PackedBuilder {
    batch: PackedPartials,
    last_start: i64,
}

impl PackedBuilder {
    /// A builder with room for `records` records (and, as estimates, for
    /// their ids, two slices and a dedup key each), so that a batch does
    /// not grow its columns from empty.
    pub fn with_capacity(records: usize) -> Self {
        Self {
            batch: PackedPartials {
                ad_ids: Vec::with_capacity(records * 8),
                slice_ids: Vec::with_capacity(records * 2),
                click_keys: Vec::with_capacity(records),
                ad_id_lens: Vec::with_capacity(records),
                window_deltas: Vec::with_capacity(records),
                slice_counts: Vec::with_capacity(records),
                clicks: Vec::with_capacity(records),
                impressions: Vec::with_capacity(records),
                click_key_counts: Vec::with_capacity(records),
                impression_key_counts: Vec::with_capacity(records),
                raw_lens: Vec::with_capacity(records),
                ..PackedPartials::default()
            },
            last_start: 0,
        }
    }

    /// Appends one record.
    pub fn push(&mut self, p: &PartialRef<'_>) {
        let b = &mut self.batch;
        b.ad_ids.extend_from_slice(p.ad_id.as_bytes());
        b.ad_id_lens.push(p.ad_id.len() as u32);
        b.window_deltas
            .push(p.window_start.wrapping_sub(self.last_start));
        self.last_start = p.window_start;
        b.slice_counts.push(p.slices.len() as u32);
        for s in p.slices.iter() {
            // A batch has a handful of slices: a scan beats hashing.
            let id = match b.slices.iter().position(|n| n == s) {
                Some(i) => i,
                None => {
                    b.slices.push(s.to_owned());
                    b.slices.len() - 1
                }
            };
            b.slice_ids.push(id as u32);
        }
        b.clicks.push(p.clicks);
        b.impressions.push(p.impressions);
        b.click_key_counts.push(p.click_keys.len() as u32);
        b.click_keys.extend_from_slice(p.click_keys);
        b.impression_key_counts.push(p.impression_keys.len() as u32);
        b.impression_keys.extend_from_slice(p.impression_keys);
        match p.raw {
            Some(raw) => {
                b.raw_lens.push(raw.len() as u32 + 1);
                b.raws.extend_from_slice(raw);
            }
            None => b.raw_lens.push(0),
        }
    }

    /// Records pushed so far.
    pub fn len(&self) -> usize {
        self.batch.len()
    }

    /// Whether nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// The batch.
    pub fn finish(self) -> PackedPartials {
        self.batch
    }
}

/// A packed batch whose lengths, indexes and ids have been checked, so
/// reading it cannot panic or give one record another's data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedPartials {
    /// The batch, its `ad_ids` moved to `ad_ids` below.
    batch: PackedPartials,
    /// The ad ids, checked as UTF-8 once for the whole batch (each id's
    /// ends are checked to be character boundaries), so that reading an
    /// id costs no second check.
    ad_ids: String,
}

fn total(counts: &[u32]) -> u64 {
    counts.iter().map(|c| u64::from(*c)).sum()
}

impl TryFrom<PackedPartials> for CheckedPartials {
    type Error = String;

    fn try_from(mut b: PackedPartials) -> Result<Self, String> {
        let n = b.ad_id_lens.len();
        let per_record = [
            ("window starts", b.window_deltas.len()),
            ("slice counts", b.slice_counts.len()),
            ("clicks", b.clicks.len()),
            ("impressions", b.impressions.len()),
            ("click key counts", b.click_key_counts.len()),
            ("impression key counts", b.impression_key_counts.len()),
            ("raw lengths", b.raw_lens.len()),
        ];
        if let Some((name, got)) = per_record.iter().find(|(_, got)| *got != n) {
            return Err(format!("packed batch: {n} records but {got} {name}"));
        }
        let raw_total: u64 = b
            .raw_lens
            .iter()
            .map(|l| u64::from(l.saturating_sub(1)))
            .sum();
        let sums = [
            ("ad id lengths", total(&b.ad_id_lens), b.ad_ids.len()),
            ("slice counts", total(&b.slice_counts), b.slice_ids.len()),
            (
                "click key counts",
                total(&b.click_key_counts),
                b.click_keys.len(),
            ),
            (
                "impression key counts",
                total(&b.impression_key_counts),
                b.impression_keys.len(),
            ),
            ("raw lengths", raw_total, b.raws.len()),
        ];
        if let Some((name, sum, len)) = sums.iter().find(|(_, sum, len)| *sum != *len as u64) {
            return Err(format!(
                "packed batch: {name} add up to {sum}, but {len} are held"
            ));
        }
        if b.slice_ids.iter().any(|i| *i as usize >= b.slices.len()) {
            return Err(format!(
                "packed batch: a record names a slice beyond the {} held",
                b.slices.len()
            ));
        }
        let not_utf8 = || "packed batch: an ad id is not UTF-8".to_owned();
        let ad_ids = String::from_utf8(std::mem::take(&mut b.ad_ids)).map_err(|_| not_utf8())?;
        let mut at = 0usize;
        for len in &b.ad_id_lens {
            at += *len as usize;
            if !ad_ids.is_char_boundary(at) {
                return Err(not_utf8());
            }
        }
        Ok(Self { batch: b, ad_ids })
    }
}

impl CheckedPartials {
    /// Number of records.
    pub fn len(&self) -> usize {
        self.batch.len()
    }

    /// Whether the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// The records, in order, read in place.
    pub fn iter(&self) -> impl Iterator<Item = PartialRef<'_>> + '_ {
        let (b, ad_ids) = (&self.batch, &self.ad_ids);
        let (mut id_at, mut slice_at, mut ck_at, mut ik_at, mut raw_at) = (0, 0, 0, 0, 0);
        let mut start = 0i64;
        (0..b.len()).map(move |i| {
            let take = |at: &mut usize, len: u32| {
                let from = *at;
                *at += len as usize;
                from..*at
            };
            let id = take(&mut id_at, b.ad_id_lens[i]);
            start = start.wrapping_add(b.window_deltas[i]);
            let raw = match b.raw_lens[i] {
                0 => None,
                len => Some(&b.raws[take(&mut raw_at, len - 1)]),
            };
            PartialRef {
                ad_id: ad_ids.get(id).unwrap_or_default(),
                window_start: start,
                slices: SliceNames::Indexed {
                    ids: &b.slice_ids[take(&mut slice_at, b.slice_counts[i])],
                    names: &b.slices,
                },
                clicks: b.clicks[i],
                impressions: b.impressions[i],
                click_keys: &b.click_keys[take(&mut ck_at, b.click_key_counts[i])],
                impression_keys: &b.impression_keys[take(&mut ik_at, b.impression_key_counts[i])],
                raw,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn partial() -> impl Strategy<Value = PartialCount> {
        (
            "[a-z0-9é]{0,12}",
            -3i64..3,
            proptest::collection::vec(prop_oneof!["\\*", "country=[A-Z]{2}"], 0..3),
            0u64..5,
            0u64..5,
            proptest::collection::vec(any::<u64>(), 0..3),
            proptest::collection::vec(any::<u64>(), 0..3),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..6)),
        )
            .prop_map(|(ad_id, w, slices, clicks, impressions, ck, ik, raw)| {
                PartialCount {
                    ad_id,
                    window_start: w * 60_000 + 1_700_000_000_000,
                    slices,
                    clicks,
                    impressions,
                    click_keys: ck,
                    impression_keys: ik,
                    raw,
                }
            })
    }

    proptest! {
        #[test]
        fn a_packed_batch_reads_back_every_record_unchanged(
            parts in proptest::collection::vec(partial(), 0..20)
        ) {
            let checked = CheckedPartials::try_from(PackedPartials::pack(&parts)).unwrap();
            prop_assert_eq!(checked.len(), parts.len());
            let back: Vec<PartialCount> = checked.iter().map(|p| p.to_owned_partial()).collect();
            prop_assert_eq!(back, parts);
        }
    }

    #[test]
    fn a_damaged_batch_is_refused_with_what_is_wrong() {
        let p = PartialCount {
            ad_id: "ad-1".into(),
            window_start: 60_000,
            slices: vec!["*".into()],
            click_keys: vec![7],
            raw: Some(b"{}".to_vec()),
            ..Default::default()
        };
        let two = PackedPartials::pack(&[p.clone(), p.clone()]);
        let good = PackedPartials::pack(&[p]);
        assert!(CheckedPartials::try_from(good.clone()).is_ok());
        let cases: Vec<(PackedPartials, &str)> = vec![
            (
                PackedPartials {
                    clicks: vec![],
                    ..good.clone()
                },
                "1 records but 0 clicks",
            ),
            (
                PackedPartials {
                    ad_id_lens: vec![9],
                    ..good.clone()
                },
                "ad id lengths add up to 9",
            ),
            (
                PackedPartials {
                    slice_ids: vec![3],
                    ..good.clone()
                },
                "slice beyond",
            ),
            (
                PackedPartials {
                    click_keys: vec![],
                    ..good.clone()
                },
                "click key counts add up to 1",
            ),
            (
                PackedPartials {
                    raw_lens: vec![9],
                    ..good.clone()
                },
                "raw lengths add up to 8",
            ),
            (
                PackedPartials {
                    ad_ids: vec![0xff, 0xfe, 0xfd, 0xfc],
                    ..good
                },
                "not UTF-8",
            ),
            (
                // UTF-8 as a whole, but the first id ends inside the `é`.
                PackedPartials {
                    ad_ids: "aé".as_bytes().to_vec(),
                    ad_id_lens: vec![2, 1],
                    ..two
                },
                "not UTF-8",
            ),
        ];
        for (b, want) in cases {
            let err = CheckedPartials::try_from(b).unwrap_err();
            assert!(err.contains(want), "{err}");
        }
    }
}
