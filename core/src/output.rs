//! Records written to `ad-click-aggregates`.
//!
//! Counts are absolute values, never deltas: a later `revision` (or a later
//! `epoch`) replaces an earlier one, so every consumer's upsert is idempotent.

use crate::topn::AdClicks;
use serde::{Deserialize, Serialize};
use smol_str::SmolStr;
use std::sync::Arc;

/// Clicks and impressions of one ad in one window and slice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountRecord {
    /// The ad.
    pub ad_id: SmolStr,
    /// Window start, epoch ms (inclusive).
    pub window_start: i64,
    /// Window end, epoch ms (exclusive).
    pub window_end: i64,
    /// `*`, `country=US`, or a named filter id. Shared: every record of a
    /// window's slice names the same one, so emitting a record copies no
    /// string but the ad's.
    pub slice: Arc<str>,
    /// Absolute click count.
    pub clicks: u64,
    /// Absolute impression count.
    pub impressions: u64,
    /// 0 for the first emission, +1 for every late update (counts a
    /// rescale restore emits late start at 1: `emit_restored`).
    pub revision: u32,
    /// Checkpoint epoch the record was produced in.
    pub epoch: u64,
    /// Producing actor, e.g. `aggregate-2`. Shared, like the slice.
    pub producer: Arc<str>,
}

/// The global top-N of one window of `window_minutes` minutes ending at `window_end`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopNRecord {
    /// Window end, epoch ms (exclusive); the window is `[end - M, end)`.
    pub window_end: i64,
    /// M, in windows (minutes by default).
    pub window_minutes: u32,
    /// Slice.
    pub slice: String,
    /// Best first.
    pub ads: Vec<AdClicks>,
    /// 0 for the first emission, +1 for every late update.
    pub revision: u32,
    /// Checkpoint epoch the record was produced in.
    pub epoch: u64,
    /// Producing actor, e.g. `reduce-0`.
    pub producer: String,
}

/// The side topics an Aggregate writes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SideTopic {
    /// `kafka.late_topic`: events behind their window's allowed lateness.
    Late,
    /// `kafka.dlq_topic`: input the job could not count.
    Dlq,
}

/// A record for a side topic. It travels through the same per-epoch buffer
/// as the counts, so a recovery neither loses nor repeats it: a copy written
/// again after a crash has the same key (`topic/producer/epoch/seq`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SideRecord {
    /// Which side topic.
    pub topic: SideTopic,
    /// The bytes written, unchanged from the input where they exist.
    pub payload: Vec<u8>,
    /// Kafka headers (reason, watermark, ...).
    pub headers: Vec<(String, String)>,
    /// Producing actor.
    pub producer: String,
    /// Checkpoint epoch the record was produced in.
    pub epoch: u64,
    /// Position within the producer's output of that epoch.
    pub seq: u64,
}

/// The last record of a replay (`adclickctl replay`), written to every
/// partition of the aggregates topic once all its records were acknowledged.
/// A consumer that has seen it on all `partitions` has every value of the
/// replay, so rows of windows in `[from, to)` (top-N lists ending in
/// `(from, to]`) with an older epoch are the ones the fresh computation did
/// not produce, and it deletes them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayDoneRecord {
    /// The replay, as `adclickctl replays` lists it.
    pub replay_id: String,
    /// First window start of the range.
    pub from: i64,
    /// End (exclusive) of the range.
    pub to: i64,
    /// The replay's epoch (see `core::replay::replay_epoch`).
    pub epoch: u64,
    /// Partitions of the aggregates topic, each of which carries one copy.
    pub partitions: u32,
    /// The replay's producer name.
    pub producer: String,
}

/// One message an actor emits: a row of the aggregates topic, or a side record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OutputRecord {
    /// A count row.
    Count(CountRecord),
    /// A top-N list.
    TopN(TopNRecord),
    /// A record for the late or dead-letter topic.
    Side(SideRecord),
    /// The end of a replay (never produced by an actor).
    ReplayDone(ReplayDoneRecord),
}

impl OutputRecord {
    /// Kafka message key of the record sent alone: the identity that later
    /// revisions replace (a packed run has its own key, see `output_wire`).
    pub fn key(&self) -> String {
        let mut key = String::new();
        self.write_key(&mut key);
        key
    }

    /// [`key`](Self::key), appended to `out`: a sink writing a closing
    /// window's records one after another reuses one buffer.
    pub fn write_key(&self, out: &mut String) {
        use std::fmt::Write;
        // Writing to a String cannot fail.
        let _ = match self {
            OutputRecord::Count(c) => {
                write!(out, "count/{}/{}/{}", c.slice, c.window_start, c.ad_id)
            }
            OutputRecord::TopN(t) => {
                write!(
                    out,
                    "top_n/{}/{}/{}",
                    t.slice, t.window_minutes, t.window_end
                )
            }
            OutputRecord::Side(s) => {
                let topic = match s.topic {
                    SideTopic::Late => "late",
                    SideTopic::Dlq => "dlq",
                };
                write!(out, "{topic}/{}/{}/{}", s.producer, s.epoch, s.seq)
            }
            OutputRecord::ReplayDone(r) => write!(out, "replay_done/{}", r.epoch),
        };
    }

    /// Stamps the epoch (known only when the epoch closes) and the record's
    /// position within it, which gives side records a stable identity.
    pub fn stamp(&mut self, epoch: u64, seq: u64) {
        match self {
            OutputRecord::Count(c) => c.epoch = epoch,
            OutputRecord::TopN(t) => t.epoch = epoch,
            OutputRecord::Side(s) => {
                s.epoch = epoch;
                s.seq = seq;
            }
            OutputRecord::ReplayDone(_) => {}
        }
    }

    /// `(epoch, revision)`, the version that decides which copy wins.
    pub fn version(&self) -> (u64, u32) {
        match self {
            OutputRecord::Count(c) => (c.epoch, c.revision),
            OutputRecord::TopN(t) => (t.epoch, t.revision),
            OutputRecord::Side(s) => (s.epoch, 0),
            OutputRecord::ReplayDone(r) => (r.epoch, 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_is_tagged_by_kind() {
        let r = OutputRecord::Count(CountRecord {
            ad_id: "ad1".into(),
            window_start: 0,
            window_end: 60_000,
            slice: "*".into(),
            clicks: 3,
            impressions: 9,
            revision: 0,
            epoch: 4,
            producer: "aggregate-0".into(),
        });
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["kind"], "count");
        assert_eq!(json["clicks"], 3);
        let back: OutputRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, r);
        assert_eq!(r.key(), "count/*/0/ad1");
    }
}
