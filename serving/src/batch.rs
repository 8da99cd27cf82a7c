//! Turns consumed aggregate records into one database [`Batch`]: parses,
//! converts to database integers, keeps only the newest version of each key
//! and remembers the next offset per partition. Pure, so it is unit-tested
//! without a broker or a database.

use crate::db::{Batch, CountRow, ReplayMark, TopNRow};
use adclick_core::output::OutputRecord;
use adclick_core::output_wire;
use std::collections::HashMap;

/// Why a record was skipped. It is counted and its offset still advances, so
/// one bad record never stalls the writer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadRecord {
    /// The payload is missing or not an aggregate record.
    #[error("not an aggregate record: {0}")]
    Parse(String),
    /// A number does not fit the database's signed 64-bit integers.
    #[error("{0} out of range")]
    Range(&'static str),
}

/// Accumulates one batch.
#[derive(Debug, Default)]
pub struct BatchBuilder {
    topic: String,
    counts: HashMap<(String, String, i64), CountRow>,
    top_n: HashMap<(String, i64, i64), TopNRow>,
    offsets: HashMap<i32, i64>,
    latest: Option<i64>,
    replay_marks: Vec<ReplayMark>,
    records: usize,
    superseded: u64,
}

fn int(v: u64, what: &'static str) -> Result<i64, BadRecord> {
    i64::try_from(v).map_err(|_| BadRecord::Range(what))
}

fn newer(a: (i64, i64), b: (i64, i64)) -> bool {
    a > b
}

impl BatchBuilder {
    /// An empty batch for `topic`.
    pub fn new(topic: &str) -> Self {
        Self {
            topic: topic.to_string(),
            ..Default::default()
        }
    }

    /// Records consumed so far (including bad and superseded ones).
    pub fn len(&self) -> usize {
        self.records
    }

    /// Whether nothing was consumed.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Records dropped because a newer (or equal) version of the same key
    /// was already in this batch.
    pub fn superseded(&self) -> u64 {
        self.superseded
    }

    /// Adds the message at `offset` of `partition`: one record, or a run of
    /// count records packed together (`adclick_core::output_wire`). The
    /// offset advances even when the payload is bad.
    pub fn push(
        &mut self,
        partition: i32,
        offset: i64,
        payload: Option<&[u8]>,
    ) -> Result<(), BadRecord> {
        let next = offset.saturating_add(1);
        let e = self.offsets.entry(partition).or_insert(next);
        *e = (*e).max(next);
        let records = payload
            .ok_or_else(|| BadRecord::Parse("empty payload".into()))
            .and_then(|bytes| {
                output_wire::decode(bytes).map_err(|e| BadRecord::Parse(e.to_string()))
            });
        let records = match records {
            Ok(records) => records,
            Err(bad) => {
                self.records += 1;
                return Err(bad);
            }
        };
        self.records += records.len();
        let mut first_bad = Ok(());
        for rec in records {
            if let OutputRecord::ReplayDone(r) = &rec {
                match int(r.epoch, "epoch") {
                    Ok(epoch) => self.replay_marks.push(ReplayMark {
                        partition,
                        epoch,
                        replay_id: r.replay_id.clone(),
                        from: r.from,
                        to: r.to,
                        partitions: i64::from(r.partitions),
                    }),
                    Err(bad) => {
                        first_bad = first_bad.and(Err(bad));
                        continue;
                    }
                }
            }
            // One bad row of a packed message does not cost its neighbours.
            if let Err(bad) = self.add(rec) {
                first_bad = first_bad.and(Err(bad));
            }
        }
        first_bad
    }

    /// Adds an already parsed record.
    pub fn add(&mut self, rec: OutputRecord) -> Result<(), BadRecord> {
        match rec {
            OutputRecord::Count(c) => {
                let row = CountRow {
                    window_start: c.window_start,
                    clicks: int(c.clicks, "clicks")?,
                    impressions: int(c.impressions, "impressions")?,
                    epoch: int(c.epoch, "epoch")?,
                    revision: i64::from(c.revision),
                    slice: c.slice.to_string(),
                    ad_id: c.ad_id.into(),
                };
                self.latest = self.latest.max(Some(c.window_end));
                let key = (row.slice.clone(), row.ad_id.clone(), row.window_start);
                match self.counts.get(&key) {
                    Some(old) if !newer((row.epoch, row.revision), (old.epoch, old.revision)) => {
                        self.superseded += 1
                    }
                    Some(_) => {
                        self.superseded += 1;
                        self.counts.insert(key, row);
                    }
                    None => {
                        self.counts.insert(key, row);
                    }
                }
            }
            OutputRecord::TopN(t) => {
                let ads_json =
                    serde_json::to_string(&t.ads).map_err(|e| BadRecord::Parse(e.to_string()))?;
                let row = TopNRow {
                    window_minutes: i64::from(t.window_minutes),
                    window_end: t.window_end,
                    ads_json,
                    epoch: int(t.epoch, "epoch")?,
                    revision: i64::from(t.revision),
                    producer: t.producer,
                    slice: t.slice,
                };
                self.latest = self.latest.max(Some(t.window_end));
                let key = (row.slice.clone(), row.window_minutes, row.window_end);
                match self.top_n.get(&key) {
                    Some(old) if !newer((row.epoch, row.revision), (old.epoch, old.revision)) => {
                        self.superseded += 1
                    }
                    Some(_) => {
                        self.superseded += 1;
                        self.top_n.insert(key, row);
                    }
                    None => {
                        self.top_n.insert(key, row);
                    }
                }
            }
            // Side records go to the late and dead-letter topics, never to
            // this one; there is nothing to store for them.
            OutputRecord::Side(_) => {}
            // Handled in `push`, which knows the partition.
            OutputRecord::ReplayDone(_) => {}
        }
        Ok(())
    }

    /// The batch to apply; offsets sorted by partition for stable locking.
    pub fn finish(self) -> Batch {
        let mut offsets: Vec<(i32, i64)> = self.offsets.into_iter().collect();
        offsets.sort_unstable();
        Batch {
            topic: self.topic,
            counts: self.counts.into_values().collect(),
            top_n: self.top_n.into_values().collect(),
            offsets,
            latest_window_end: self.latest,
            replay_marks: self.replay_marks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use adclick_core::output::{CountRecord, TopNRecord};
    use adclick_core::topn::AdClicks;

    fn count(ad: &str, clicks: u64, epoch: u64, revision: u32) -> Vec<u8> {
        serde_json::to_vec(&OutputRecord::Count(CountRecord {
            ad_id: ad.into(),
            window_start: 60_000,
            window_end: 120_000,
            slice: "*".into(),
            clicks,
            impressions: clicks.saturating_mul(2),
            revision,
            epoch,
            producer: "aggregate-0".into(),
        }))
        .unwrap()
    }

    #[test]
    fn newest_version_of_a_key_wins_within_a_batch() {
        let mut b = BatchBuilder::new("t");
        b.push(0, 10, Some(&count("a", 5, 2, 0))).unwrap();
        b.push(0, 11, Some(&count("a", 7, 2, 1))).unwrap();
        b.push(1, 3, Some(&count("a", 6, 1, 5))).unwrap(); // older epoch: stale
        b.push(1, 4, Some(&count("a", 7, 2, 1))).unwrap(); // exact duplicate
        assert_eq!(b.superseded(), 3);
        let batch = b.finish();
        assert_eq!(batch.counts.len(), 1);
        assert_eq!((batch.counts[0].clicks, batch.counts[0].revision), (7, 1));
        assert_eq!(batch.offsets, vec![(0, 12), (1, 5)]);
        assert_eq!(batch.latest_window_end, Some(120_000));
    }

    #[test]
    fn bad_payload_is_reported_but_its_offset_advances() {
        let mut b = BatchBuilder::new("t");
        assert!(matches!(
            b.push(2, 7, Some(b"{nope")),
            Err(BadRecord::Parse(_))
        ));
        assert!(b.push(2, 8, None).is_err());
        let huge = count("a", u64::MAX, 1, 0);
        assert_eq!(b.push(2, 9, Some(&huge)), Err(BadRecord::Range("clicks")));
        let batch = b.finish();
        assert!(batch.counts.is_empty());
        assert_eq!(batch.offsets, vec![(2, 10)]);
    }

    /// One message packing the counts of `ads` (name, clicks), as a sink
    /// writes a closing window's run.
    fn packed(ads: &[(&str, u64)], epoch: u64) -> Vec<u8> {
        let records: Vec<OutputRecord> = ads
            .iter()
            .map(|(ad, clicks)| {
                let one = count(ad, *clicks, epoch, 0);
                serde_json::from_slice(&one).unwrap()
            })
            .collect();
        let (mut key, mut payload) = (String::new(), Vec::new());
        output_wire::encode(&records, &mut key, &mut payload).unwrap();
        assert!(key.starts_with("counts/"), "{key}");
        payload
    }

    #[test]
    fn a_packed_message_gives_every_row_and_one_offset() {
        let mut b = BatchBuilder::new("t");
        b.push(0, 4, Some(&packed(&[("a", 1), ("b", 2), ("c", 3)], 2)))
            .unwrap();
        // A newer version of "b" in a later message of another partition.
        b.push(1, 0, Some(&packed(&[("b", 5), ("d", 1)], 3)))
            .unwrap();
        // A row out of the database's range costs only itself.
        assert_eq!(
            b.push(1, 1, Some(&packed(&[("e", u64::MAX), ("f", 4)], 3))),
            Err(BadRecord::Range("clicks"))
        );
        assert_eq!(b.len(), 7);
        let batch = b.finish();
        let mut rows: Vec<(String, i64, i64)> = batch
            .counts
            .iter()
            .map(|c| (c.ad_id.clone(), c.clicks, c.epoch))
            .collect();
        rows.sort();
        let want = [
            ("a", 1, 2),
            ("b", 5, 3),
            ("c", 3, 2),
            ("d", 1, 3),
            ("f", 4, 3),
        ];
        let want: Vec<(String, i64, i64)> = want
            .iter()
            .map(|(a, c, e)| (a.to_string(), *c, *e))
            .collect();
        assert_eq!(rows, want);
        assert_eq!(batch.offsets, vec![(0, 5), (1, 2)]);
    }

    #[test]
    fn top_n_rows_keep_their_ads_as_json() {
        let mut b = BatchBuilder::new("t");
        b.add(OutputRecord::TopN(TopNRecord {
            window_end: 300_000,
            window_minutes: 5,
            slice: "*".into(),
            ads: vec![AdClicks {
                ad_id: "x".into(),
                clicks: 9,
            }],
            revision: 0,
            epoch: 3,
            producer: "reduce-0".into(),
        }))
        .unwrap();
        let batch = b.finish();
        assert_eq!(batch.top_n[0].ads_json, r#"[{"ad_id":"x","clicks":9}]"#);
        assert_eq!(batch.latest_window_end, Some(300_000));
    }
}
