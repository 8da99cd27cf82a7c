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

/// One epoch's records → protobuf. Consecutive count records of one
/// window and slice (an Aggregate emits a closing window's records grouped
/// by slice) are saved as one run of columns: pending output is most of a
/// checkpoint, and a message with two strings per record cost more to
/// build and encode than the rest of the snapshot.
pub fn pending_to_pb(epoch: u64, producer: &str, records: &[OutputRecord]) -> pb::PendingEpoch {
    use pb::pending_record::Kind;
    let same_run = |a: &OutputRecord, b: &OutputRecord| match (a, b) {
        (OutputRecord::Count(a), OutputRecord::Count(b)) => {
            a.window_start == b.window_start && a.window_end == b.window_end && a.slice == b.slice
        }
        _ => false,
    };
    let typed = records
        .chunk_by(same_run)
        .filter_map(|run| {
            let kind = match &run[0] {
                OutputRecord::Count(_) => Kind::Counts(count_run(run)),
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

/// A run of count records of one window and slice as columns.
fn count_run(run: &[OutputRecord]) -> pb::PendingCountRun {
    let counts = run.iter().filter_map(|r| match r {
        OutputRecord::Count(c) => Some(c),
        _ => None,
    });
    let first = counts.clone().next();
    let mut out = pb::PendingCountRun {
        window_start: first.map_or(0, |c| c.window_start),
        window_end: first.map_or(0, |c| c.window_end),
        slice: first.map_or_else(String::new, |c| c.slice.to_string()),
        ad_ids: Vec::with_capacity(counts.clone().map(|c| c.ad_id.len()).sum()),
        ad_id_lens: Vec::with_capacity(run.len()),
        clicks: Vec::with_capacity(run.len()),
        impressions: Vec::with_capacity(run.len()),
        revisions: Vec::with_capacity(run.len()),
    };
    for c in counts {
        out.ad_ids.extend_from_slice(c.ad_id.as_bytes());
        out.ad_id_lens.push(c.ad_id.len() as u32);
        out.clicks.push(c.clicks);
        out.impressions.push(c.impressions);
        out.revisions.push(c.revision);
    }
    out
}

/// A saved run back into count records; a damaged run (columns of
/// different lengths, ids that do not add up or are not UTF-8) is an error,
/// never a partial or misattributed record.
fn count_records(
    run: pb::PendingCountRun,
    epoch: u64,
    producer: &std::sync::Arc<str>,
) -> Result<Vec<OutputRecord>> {
    let n = run.ad_id_lens.len();
    anyhow::ensure!(
        run.clicks.len() == n && run.impressions.len() == n && run.revisions.len() == n,
        "saved count run has {n} ad ids but {} clicks, {} impressions and {} revisions",
        run.clicks.len(),
        run.impressions.len(),
        run.revisions.len()
    );
    let total: u64 = run.ad_id_lens.iter().map(|l| u64::from(*l)).sum();
    anyhow::ensure!(
        total == run.ad_ids.len() as u64,
        "saved count run's ad id lengths add up to {total} bytes, not {}",
        run.ad_ids.len()
    );
    let ids = std::str::from_utf8(&run.ad_ids).context("saved count run's ad ids")?;
    let slice: std::sync::Arc<str> = run.slice.into();
    let mut at = 0usize;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let end = at + run.ad_id_lens[i] as usize;
        let ad_id = ids
            .get(at..end)
            .context("saved count run's ad ids split a character")?;
        at = end;
        out.push(OutputRecord::Count(CountRecord {
            ad_id: ad_id.into(),
            window_start: run.window_start,
            window_end: run.window_end,
            slice: slice.clone(),
            clicks: run.clicks[i],
            impressions: run.impressions[i],
            revision: run.revisions[i],
            epoch,
            producer: producer.clone(),
        }));
    }
    Ok(out)
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
    let mut out = Vec::with_capacity(p.typed.len());
    for r in p.typed {
        out.push(
            match r.kind.context("saved output record without a kind")? {
                Kind::Counts(run) => {
                    out.extend(count_records(run, epoch, &producer)?);
                    continue;
                }
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
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

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

    fn count(ad: &str, start: i64, slice: &str, clicks: u64) -> OutputRecord {
        OutputRecord::Count(CountRecord {
            ad_id: ad.into(),
            window_start: start,
            window_end: start + 60_000,
            slice: slice.into(),
            clicks,
            impressions: clicks * 3,
            revision: (clicks % 2) as u32,
            epoch: 4,
            producer: "aggregate-0".into(),
        })
    }

    #[test]
    fn consecutive_counts_of_a_window_and_slice_are_saved_as_one_run_in_order() {
        let top = OutputRecord::TopN(TopNRecord {
            window_end: 60_000,
            window_minutes: 1,
            slice: "*".into(),
            ads: vec![],
            revision: 0,
            epoch: 4,
            producer: "aggregate-0".into(),
        });
        let records = vec![
            count("a", 0, "*", 1),
            count("bé", 0, "*", 2),
            count("", 0, "*", 3),
            count("a", 0, "country=US", 4),
            count("c", 60_000, "country=US", 5),
            top,
            count("d", 60_000, "country=US", 6),
        ];
        let pb = pending_to_pb(4, "aggregate-0", &records);
        let runs: Vec<usize> = pb
            .typed
            .iter()
            .map(|r| match &r.kind {
                Some(pb::pending_record::Kind::Counts(run)) => run.ad_id_lens.len(),
                _ => 0,
            })
            .collect();
        assert_eq!(runs, vec![3, 1, 1, 0, 1]);
        let bytes = pb.encode_to_vec();
        let decoded = pb::PendingEpoch::decode(bytes.as_slice()).unwrap();
        assert_eq!(pending_from_pb(decoded).unwrap(), records);
        // Format 5 and earlier saved a message per count record: still read.
        let v5 = pb::PendingEpoch {
            epoch: 4,
            producer: "aggregate-0".into(),
            typed: vec![pb::PendingRecord {
                kind: Some(pb::pending_record::Kind::Count(pb::PendingCount {
                    ad_id: "a".into(),
                    window_start: 0,
                    window_end: 60_000,
                    slice: "*".into(),
                    clicks: 1,
                    impressions: 3,
                    revision: 1,
                })),
            }],
            ..Default::default()
        };
        assert_eq!(pending_from_pb(v5).unwrap(), vec![count("a", 0, "*", 1)]);
    }

    #[test]
    fn a_damaged_count_run_is_refused_with_what_is_wrong() {
        let good = match pending_to_pb(4, "p", &[count("ab", 0, "*", 1), count("c", 0, "*", 2)])
            .typed
            .remove(0)
            .kind
        {
            Some(pb::pending_record::Kind::Counts(run)) => run,
            other => panic!("not a run: {other:?}"),
        };
        let damaged = [
            (
                pb::PendingCountRun {
                    clicks: vec![1],
                    ..good.clone()
                },
                "2 ad ids but 1 clicks",
            ),
            (
                pb::PendingCountRun {
                    ad_id_lens: vec![2, 2],
                    ..good.clone()
                },
                "add up to 4 bytes, not 3",
            ),
            (
                pb::PendingCountRun {
                    ad_ids: vec![b'a', 0xff, b'c'],
                    ..good.clone()
                },
                "ad ids",
            ),
            (
                pb::PendingCountRun {
                    ad_ids: "é".as_bytes().to_vec(),
                    ad_id_lens: vec![1, 1],
                    ..good.clone()
                },
                "split a character",
            ),
        ];
        for (run, want) in damaged {
            let epoch = pb::PendingEpoch {
                epoch: 4,
                producer: "p".into(),
                typed: vec![pb::PendingRecord {
                    kind: Some(pb::pending_record::Kind::Counts(run)),
                }],
                ..Default::default()
            };
            let err = format!("{:#}", pending_from_pb(epoch).unwrap_err());
            assert!(err.contains(want), "{want}: {err}");
        }
    }
}
