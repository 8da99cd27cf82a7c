//! Conversions between core types and their protobuf forms.

use adclick_core::aggregate::LocalTopN;
use adclick_core::map_batch::PartialCount;
use adclick_core::partials::{CheckedPartials, PackedPartials};
use adclick_core::topn::AdClicks;
use adclick_proto::dataflow as pb;

/// A Map's packed batch for one Aggregate, in its protobuf form.
pub fn batch_to_pb(b: PackedPartials) -> pb::CountBatch {
    pb::CountBatch {
        counts: Vec::new(),
        packed: Some(pb::PackedCounts {
            ad_ids: b.ad_ids,
            ad_id_lens: b.ad_id_lens,
            window_deltas: b.window_deltas,
            slices: b.slices,
            slice_counts: b.slice_counts,
            slice_ids: b.slice_ids,
            clicks: b.clicks,
            impressions: b.impressions,
            click_key_counts: b.click_key_counts,
            click_keys: b.click_keys,
            impression_key_counts: b.impression_key_counts,
            impression_keys: b.impression_keys,
            raw_lens: b.raw_lens,
            raws: b.raws,
        }),
    }
}

/// Records a batch carries, packed or not (for metrics).
pub fn batch_records(b: &pb::CountBatch) -> u64 {
    b.counts.len() as u64 + b.packed.as_ref().map_or(0, |p| p.ad_id_lens.len() as u64)
}

/// What an Aggregate applies from a received batch.
pub enum ReceivedBatch {
    /// One message per record (an older Map).
    Records(Vec<PartialCount>),
    /// Checked columns.
    Packed(Box<CheckedPartials>),
}

/// A received batch, checked; an error names what is wrong with it.
pub fn batch_from_pb(b: pb::CountBatch) -> Result<ReceivedBatch, String> {
    let Some(p) = b.packed else {
        return Ok(ReceivedBatch::Records(
            b.counts.into_iter().map(partial_from_pb).collect(),
        ));
    };
    if !b.counts.is_empty() {
        return Err("a count batch holds both records and packed columns".to_owned());
    }
    CheckedPartials::try_from(PackedPartials {
        ad_ids: p.ad_ids,
        ad_id_lens: p.ad_id_lens,
        window_deltas: p.window_deltas,
        slices: p.slices,
        slice_counts: p.slice_counts,
        slice_ids: p.slice_ids,
        clicks: p.clicks,
        impressions: p.impressions,
        click_key_counts: p.click_key_counts,
        click_keys: p.click_keys,
        impression_key_counts: p.impression_key_counts,
        impression_keys: p.impression_keys,
        raw_lens: p.raw_lens,
        raws: p.raws,
    })
    .map(|c| ReceivedBatch::Packed(Box::new(c)))
}

fn partial_from_pb(p: pb::PartialCount) -> PartialCount {
    PartialCount {
        ad_id: p.ad_id,
        window_start: p.window_start,
        slices: p.slices,
        clicks: p.clicks,
        impressions: p.impressions,
        click_keys: p.click_keys,
        impression_keys: p.impression_keys,
        raw: p.raw,
    }
}

/// Core local top-N → protobuf.
pub fn top_to_pb(t: LocalTopN) -> pb::LocalTopN {
    pb::LocalTopN {
        window_end: t.window_end,
        window_minutes: t.window_minutes,
        slice: t.slice,
        ads: t
            .ads
            .into_iter()
            .map(|a| pb::AdClicks {
                ad_id: a.ad_id,
                clicks: a.clicks,
            })
            .collect(),
    }
}

/// Protobuf local top-N → core.
pub fn top_from_pb(t: pb::LocalTopN) -> LocalTopN {
    LocalTopN {
        window_end: t.window_end,
        window_minutes: t.window_minutes,
        slice: t.slice,
        ads: t
            .ads
            .into_iter()
            .map(|a| AdClicks {
                ad_id: a.ad_id,
                clicks: a.clicks,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(ad: &str) -> PartialCount {
        PartialCount {
            ad_id: ad.into(),
            window_start: 120_000,
            slices: vec!["*".into(), "country=DE".into()],
            clicks: 2,
            click_keys: vec![5, 6],
            raw: Some(b"{\"late\":1}".to_vec()),
            ..Default::default()
        }
    }

    fn records(b: ReceivedBatch) -> Vec<PartialCount> {
        match b {
            ReceivedBatch::Records(r) => r,
            ReceivedBatch::Packed(p) => p.iter().map(|r| r.to_owned_partial()).collect(),
        }
    }

    #[test]
    fn a_batch_crosses_the_wire_packed_and_unchanged() {
        use prost::Message as _;
        let parts = vec![part("ad-1"), part("ad-2")];
        let sent = batch_to_pb(PackedPartials::pack(&parts));
        assert!(sent.counts.is_empty() && sent.packed.is_some());
        assert_eq!(batch_records(&sent), 2);
        let wire = pb::CountBatch::decode(sent.encode_to_vec().as_slice()).unwrap();
        let got = batch_from_pb(wire).unwrap();
        assert!(matches!(got, ReceivedBatch::Packed(_)));
        assert_eq!(records(got), parts);
    }

    #[test]
    fn record_batches_are_still_read_and_a_mixed_or_damaged_one_is_refused() {
        let legacy = pb::CountBatch {
            counts: vec![pb::PartialCount {
                ad_id: "ad-1".into(),
                window_start: 120_000,
                slices: vec!["*".into(), "country=DE".into()],
                clicks: 2,
                click_keys: vec![5, 6],
                raw: Some(b"{\"late\":1}".to_vec()),
                ..Default::default()
            }],
            packed: None,
        };
        assert_eq!(batch_records(&legacy), 1);
        assert_eq!(
            records(batch_from_pb(legacy.clone()).unwrap()),
            vec![part("ad-1")]
        );
        let mut mixed = batch_to_pb(PackedPartials::pack(&[part("ad-2")]));
        mixed.counts = legacy.counts;
        assert!(batch_from_pb(mixed).err().unwrap().contains("both"));
        let mut damaged = batch_to_pb(PackedPartials::pack(&[part("ad-2")]));
        if let Some(p) = damaged.packed.as_mut() {
            p.clicks.clear();
        }
        let err = batch_from_pb(damaged).err().unwrap();
        assert!(err.contains("clicks"), "{err}");
    }
}
