//! Uncommitted output ↔ the `PendingEpoch` of a snapshot.
//!
//! Pending output can be most of a checkpoint (every count record of the
//! windows closed since the last commit), so it is stored as protobuf with
//! the epoch and producer once per epoch, not as JSON per record. Version 1
//! snapshots (JSON) are still read.

use adclick_core::output::{CountRecord, OutputRecord, SideRecord, SideTopic, TopNRecord};
use adclick_core::topn::AdClicks;
use adclick_proto::snapshot as pb;
use anyhow::{Context, Result};

/// One epoch's records → protobuf.
pub fn pending_to_pb(epoch: u64, producer: &str, records: &[OutputRecord]) -> pb::PendingEpoch {
    use pb::pending_record::Kind;
    let typed = records
        .iter()
        .filter_map(|r| {
            let kind = match r {
                OutputRecord::Count(c) => Kind::Count(pb::PendingCount {
                    ad_id: c.ad_id.to_string(),
                    window_start: c.window_start,
                    window_end: c.window_end,
                    slice: c.slice.to_string(),
                    clicks: c.clicks,
                    impressions: c.impressions,
                    revision: c.revision,
                }),
                OutputRecord::TopN(t) => Kind::Top(pb::PendingTop {
                    window_end: t.window_end,
                    window_minutes: t.window_minutes,
                    slice: t.slice.clone(),
                    ad_ids: t.ads.iter().map(|a| a.ad_id.clone()).collect(),
                    clicks: t.ads.iter().map(|a| a.clicks).collect(),
                    revision: t.revision,
                }),
                OutputRecord::Side(s) => Kind::Side(pb::PendingSide {
                    topic: match s.topic {
                        SideTopic::Late => 0,
                        SideTopic::Dlq => 1,
                    },
                    payload: s.payload.clone(),
                    header_keys: s.headers.iter().map(|h| h.0.clone()).collect(),
                    header_values: s.headers.iter().map(|h| h.1.clone()).collect(),
                    seq: s.seq,
                }),
                // Actors never emit a replay's end marker; nothing to keep.
                OutputRecord::ReplayDone(_) => return None,
            };
            Some(pb::PendingRecord { kind: Some(kind) })
        })
        .collect();
    pb::PendingEpoch {
        epoch,
        records: Vec::new(),
        producer: producer.to_owned(),
        typed,
    }
}

/// Protobuf (either version) → one epoch's records.
pub fn pending_from_pb(p: pb::PendingEpoch) -> Result<Vec<OutputRecord>> {
    use pb::pending_record::Kind;
    if !p.records.is_empty() {
        return p
            .records
            .iter()
            .map(|r| serde_json::from_slice::<OutputRecord>(r))
            .collect::<Result<Vec<_>, _>>()
            .context("decoding saved output (version 1)");
    }
    let (epoch, producer): (u64, std::sync::Arc<str>) = (p.epoch, p.producer.into());
    p.typed
        .into_iter()
        .map(|r| {
            Ok(
                match r.kind.context("saved output record without a kind")? {
                    Kind::Count(c) => OutputRecord::Count(CountRecord {
                        ad_id: c.ad_id.into(),
                        window_start: c.window_start,
                        window_end: c.window_end,
                        slice: c.slice.into(),
                        clicks: c.clicks,
                        impressions: c.impressions,
                        revision: c.revision,
                        epoch,
                        producer: producer.clone(),
                    }),
                    Kind::Top(t) => OutputRecord::TopN(TopNRecord {
                        window_end: t.window_end,
                        window_minutes: t.window_minutes,
                        slice: t.slice,
                        ads: t
                            .ad_ids
                            .into_iter()
                            .zip(t.clicks)
                            .map(|(ad_id, clicks)| AdClicks { ad_id, clicks })
                            .collect(),
                        revision: t.revision,
                        epoch,
                        producer: producer.to_string(),
                    }),
                    Kind::Side(s) => OutputRecord::Side(SideRecord {
                        topic: if s.topic == 0 {
                            SideTopic::Late
                        } else {
                            SideTopic::Dlq
                        },
                        payload: s.payload,
                        headers: s.header_keys.into_iter().zip(s.header_values).collect(),
                        producer: producer.to_string(),
                        epoch,
                        seq: s.seq,
                    }),
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_and_json_still_reads() {
        let count = OutputRecord::Count(CountRecord {
            ad_id: "ad1".into(),
            window_start: 0,
            window_end: 60_000,
            slice: "country=US".into(),
            clicks: 3,
            impressions: 7,
            revision: 1,
            epoch: 9,
            producer: "aggregate-1".into(),
        });
        let top = OutputRecord::TopN(TopNRecord {
            window_end: 60_000,
            window_minutes: 5,
            slice: "*".into(),
            ads: vec![AdClicks {
                ad_id: "ad1".into(),
                clicks: 3,
            }],
            revision: 0,
            epoch: 9,
            producer: "aggregate-1".into(),
        });
        let side = OutputRecord::Side(SideRecord {
            topic: SideTopic::Dlq,
            payload: vec![0, 159, 146, 150],
            headers: vec![("reason".into(), "too many ads".into())],
            producer: "aggregate-1".into(),
            epoch: 9,
            seq: 2,
        });
        let records = vec![count, top, side];
        let pb = pending_to_pb(9, "aggregate-1", &records);
        assert_eq!(pending_from_pb(pb).unwrap(), records);
        let v1 = pb::PendingEpoch {
            epoch: 9,
            records: records
                .iter()
                .map(|r| serde_json::to_vec(r).unwrap())
                .collect(),
            ..Default::default()
        };
        assert_eq!(pending_from_pb(v1).unwrap(), records);
    }
}
