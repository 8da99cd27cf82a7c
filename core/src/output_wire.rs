//! The messages of `ad-click-aggregates`: how output records are packed into
//! Kafka messages, and how any reader gets the records back.
//!
//! A closing window emits one count record per (ad, slice) cell, which at
//! the chapter's scale is more records than there were input events, and a
//! Kafka client's cost (locks, clock reads, queueing, checksums) is paid per
//! message. So a run of count records of one window, slice, epoch and
//! producer travels as one `counts` message whose rows are arrays
//! `[ad_id, clicks, impressions, revision]`. Top-N lists, replay marks and a
//! run of one count record keep the one-record-per-message form, which is
//! also what `kafka.counts_per_message = 1` writes throughout.
//!
//! Every reader of the topic goes through [`decode`], which gives the same
//! [`OutputRecord`]s for either form. Packing moves a later revision of a
//! cell to whatever message (and partition) its run lands in, so readers
//! keep the newest `(epoch, revision)` per key rather than the last one
//! read; the writer, the tests and the query service already do.

use crate::output::{CountRecord, OutputRecord, ReplayDoneRecord, SideRecord, TopNRecord};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};
use smol_str::SmolStr;
use std::sync::Arc;

/// Count records per message unless `kafka.counts_per_message` says
/// otherwise: a few kilobytes, far below any broker's message size limit
/// even at `job.max_field_len`-long ad ids, and enough that the per-message
/// cost is spread thin.
pub const DEFAULT_COUNTS_PER_MESSAGE: u32 = 256;

/// Most bytes a packed message may take, whatever `kafka.counts_per_message`
/// and `job.max_field_len` allow: a quarter of the 1 MB message limit of
/// Kafka's and librdkafka's defaults, so a run is never refused for its
/// size.
pub const MAX_PACKED_BYTES: usize = 256 * 1024;

/// An upper bound on the bytes `s` takes in JSON: every byte escaped as
/// `\u00XX`, plus quotes and a separator.
fn json_str_bound(s: &str) -> usize {
    s.len() * 6 + 3
}

/// An upper bound on a row's bytes: its ad id, three numbers (20 digits at
/// most each) and the punctuation.
fn row_bound(c: &CountRecord) -> usize {
    json_str_bound(&c.ad_id) + 3 * 21 + 2
}

/// Whether two count records may share a message: the fields a `counts`
/// message carries once must be equal.
fn same_run(a: &CountRecord, b: &CountRecord) -> bool {
    a.window_start == b.window_start
        && a.window_end == b.window_end
        && a.epoch == b.epoch
        && a.slice == b.slice
        && a.producer == b.producer
}

/// How many records at the head of `records` make up the next message: a
/// run of count records that share window, slice, epoch and producer, at
/// most `max` of them and [`MAX_PACKED_BYTES`] together; one for any other
/// record (or a count record too large to share); zero for no records.
pub fn next_message_len(records: &[OutputRecord], max: usize) -> usize {
    let Some(OutputRecord::Count(first)) = records.first() else {
        return records.len().min(1);
    };
    // The fields a packed message carries once, their names and numbers.
    let mut bytes = json_str_bound(&first.slice) + json_str_bound(&first.producer) + 160;
    let run = records
        .iter()
        .take(max.max(1))
        .take_while(|r| match r {
            OutputRecord::Count(c) if same_run(first, c) => {
                bytes += row_bound(c);
                bytes <= MAX_PACKED_BYTES
            }
            _ => false,
        })
        .count();
    run.max(1)
}

/// Writes the message for `run` (the head of a slice, as long as
/// [`next_message_len`] said) to `payload`, and its key to `key`. Both are
/// appended to, so a sink reuses its buffers.
///
/// A single record keeps its own key. A packed run is keyed by its window,
/// slice, producer and first ad: the same run written again after a crash
/// gets the same key, and runs spread over the partitions.
pub fn encode(
    run: &[OutputRecord],
    key: &mut String,
    payload: &mut Vec<u8>,
) -> serde_json::Result<()> {
    match run {
        [one] => {
            one.write_key(key);
            serde_json::to_writer(payload, one)
        }
        [OutputRecord::Count(first), ..]
            if run
                .iter()
                .all(|r| matches!(r, OutputRecord::Count(c) if same_run(first, c))) =>
        {
            use std::fmt::Write;
            // Writing to a String cannot fail.
            let _ = write!(
                key,
                "counts/{}/{}/{}/{}",
                first.slice, first.window_start, first.producer, first.ad_id
            );
            serde_json::to_writer(payload, &PackedCounts { first, run })
        }
        // A caller that did not cut the run with `next_message_len` gets an
        // error rather than a message that leaves records out.
        _ => Err(serde::ser::Error::custom(format!(
            "{} records are not one message: only count records of one window, \
             slice, epoch and producer share a message",
            run.len()
        ))),
    }
}

/// A run of count records, serialised as one `counts` message without
/// copying it.
struct PackedCounts<'a> {
    first: &'a CountRecord,
    run: &'a [OutputRecord],
}

impl Serialize for PackedCounts<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let f = self.first;
        let mut m = s.serialize_struct("CountsMessage", 7)?;
        m.serialize_field("kind", "counts")?;
        m.serialize_field("window_start", &f.window_start)?;
        m.serialize_field("window_end", &f.window_end)?;
        m.serialize_field("slice", &*f.slice)?;
        m.serialize_field("epoch", &f.epoch)?;
        m.serialize_field("producer", &*f.producer)?;
        m.serialize_field("rows", &Rows(self.run))?;
        m.end()
    }
}

/// The rows of a packed run, each `[ad_id, clicks, impressions, revision]`.
struct Rows<'a>(&'a [OutputRecord]);

impl Serialize for Rows<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().filter_map(|r| match r {
            OutputRecord::Count(c) => Some((c.ad_id.as_str(), c.clicks, c.impressions, c.revision)),
            _ => None,
        }))
    }
}

/// A `counts` message as read back.
#[derive(Deserialize)]
struct CountsMessage {
    window_start: i64,
    window_end: i64,
    slice: String,
    epoch: u64,
    producer: String,
    rows: Vec<(SmolStr, u64, u64, u32)>,
}

/// Any message of the topic, tagged by `kind` like [`OutputRecord`].
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Message {
    Count(CountRecord),
    Counts(CountsMessage),
    TopN(TopNRecord),
    Side(SideRecord),
    ReplayDone(ReplayDoneRecord),
}

/// The records of one message of `ad-click-aggregates`, in either form.
/// A payload that is not a message of the topic is an error, never an
/// empty list, so a reader can count and report it.
pub fn decode(payload: &[u8]) -> serde_json::Result<Vec<OutputRecord>> {
    Ok(match serde_json::from_slice::<Message>(payload)? {
        Message::Count(c) => vec![OutputRecord::Count(c)],
        Message::TopN(t) => vec![OutputRecord::TopN(t)],
        Message::Side(s) => vec![OutputRecord::Side(s)],
        Message::ReplayDone(r) => vec![OutputRecord::ReplayDone(r)],
        Message::Counts(m) => {
            let slice: Arc<str> = m.slice.into();
            let producer: Arc<str> = m.producer.into();
            m.rows
                .into_iter()
                .map(|(ad_id, clicks, impressions, revision)| {
                    OutputRecord::Count(CountRecord {
                        ad_id,
                        window_start: m.window_start,
                        window_end: m.window_end,
                        slice: slice.clone(),
                        clicks,
                        impressions,
                        revision,
                        epoch: m.epoch,
                        producer: producer.clone(),
                    })
                })
                .collect()
        }
    })
}

#[cfg(test)]
#[path = "output_wire_tests.rs"]
mod tests;
