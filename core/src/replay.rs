//! Recalculation (the chapter's "recalculation service", Kappa style):
//! recompute every window of a closed range from the input topic's retained
//! history, with the current configuration, and let the results supersede
//! what the live job wrote.
//!
//! The replay runs the job's own state machines ([`MapBatcher`],
//! [`AggregateState`], [`ReduceState`]) in one process, over a single
//! Aggregate that owns every key group, so a fix in them (or a new named
//! filter) takes effect. What it decides is pure and lives here: which
//! ranges may be replayed, how far back the input must be read, how its
//! records outrank the live job's, and what it emits.
//!
//! **Superseding.** A replay's records carry an epoch of
//! [`REPLAY_EPOCH_BASE`] plus its start time in ms, above any checkpoint
//! epoch a live job reaches (2^44 epochs of 10 s is five million years), and
//! a later replay outranks an earlier one. Every consumer that keeps the
//! newest `(epoch, revision)` therefore takes the replay's values. When all
//! its records are acknowledged, the replay writes a
//! [`ReplayDoneRecord`](crate::output::ReplayDoneRecord) to every partition
//! of the output topic; once a consumer has seen it on all of them, rows of
//! the range with an older epoch are the ones the fresh computation did not
//! produce, and are deleted.

use crate::aggregate::{AggregateSettings, AggregateState, LocalTopN};
use crate::event::{future_reference, parse_event_borrowed, DedupMode, Limits};
use crate::map_batch::MapBatcher;
use crate::output::OutputRecord;
use crate::reconcile::{fmt_ms, RangeError};
use crate::reduce::ReduceState;
use crate::slice::Slicer;
use crate::window::window_start;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Replay epochs start here; live checkpoint epochs stay far below.
pub const REPLAY_EPOCH_BASE: u64 = 1 << 44;

/// The epoch of a replay started at `started_ms`: later replays outrank
/// earlier ones without any counter to persist.
pub fn replay_epoch(started_ms: i64) -> u64 {
    REPLAY_EPOCH_BASE.saturating_add(u64::try_from(started_ms).unwrap_or(0))
}

/// Whether an epoch was written by a replay rather than a checkpoint.
pub fn is_replay_epoch(epoch: u64) -> bool {
    epoch >= REPLAY_EPOCH_BASE
}

/// What the retained history of one input partition looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionHistory {
    /// First offset still held (0 when nothing was ever deleted).
    pub low_offset: i64,
    /// Record timestamp of the record at `low_offset`, if there is one.
    pub first_timestamp: Option<i64>,
}

/// How much earlier than `--from` the input must be read: the top-N lists
/// ending in the range span up to `max M` windows.
pub fn lookback_ms(window_ms: i64, top_windows: &[u32]) -> i64 {
    let max_m = i64::from(top_windows.iter().copied().max().unwrap_or(1));
    (max_m - 1).max(0).saturating_mul(window_ms)
}

/// The earliest `--from` a replay can start at, or `None` when the topic
/// holds no record at all.
///
/// A record's timestamp (its produce time) is never earlier than its event
/// time, so where a partition lost records to retention (`low_offset > 0`),
/// no lost record belongs to a window starting after that partition's first
/// retained timestamp; the range must also leave room for the top-N
/// look-back. Where nothing was ever deleted, the topic's history starts
/// with its first record, and no window before it ever had input: a replay
/// there would only erase rows the job wrote from other input, so it is
/// refused too.
pub fn earliest_replayable(
    parts: &[PartitionHistory],
    window_ms: i64,
    lookback: i64,
) -> Option<i64> {
    let truncated = parts
        .iter()
        .filter(|p| p.low_offset > 0)
        .filter_map(|p| p.first_timestamp)
        .max();
    if let Some(t) = truncated {
        let ceil = window_start(t.saturating_add(window_ms - 1), window_ms);
        return Some(ceil.saturating_add(lookback));
    }
    let first = parts.iter().filter_map(|p| p.first_timestamp).min()?;
    Some(window_start(first, window_ms))
}

/// Why a replay was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The arguments themselves are wrong (a usage error).
    #[error(transparent)]
    Usage(#[from] RangeError),
    /// The arguments are well-formed but the range cannot be replayed now.
    #[error("{0}")]
    Precondition(String),
}

/// Facts about the live job and the input a range is checked against.
#[derive(Clone, Debug)]
pub struct RangeFacts {
    /// Window size, ms.
    pub window_ms: i64,
    /// Wall clock, ms.
    pub now_ms: i64,
    /// The live job's event time (minimum over its Aggregates), if known.
    pub live_watermark: Option<i64>,
    /// `job.allowed_lateness_ms`.
    pub allowed_lateness_ms: i64,
}

/// Checks `[from, to)`: aligned, non-empty, not in the future, and closed
/// for good in the live job (a window still inside the allowed lateness may
/// be revised by the job after the replay, and the two would race).
pub fn check_range(from: i64, to: i64, f: &RangeFacts) -> Result<(), Refusal> {
    let usage = |arg, problem: String| Refusal::Usage(RangeError { arg, problem });
    for (arg, v) in [("--from", from), ("--to", to)] {
        if v.rem_euclid(f.window_ms) != 0 {
            let below = window_start(v, f.window_ms);
            return Err(usage(
                arg,
                format!(
                    "{} is not aligned to the {} ms window; use {} or {}",
                    fmt_ms(v),
                    f.window_ms,
                    fmt_ms(below),
                    fmt_ms(below.saturating_add(f.window_ms))
                ),
            ));
        }
    }
    if from >= to {
        return Err(usage(
            "--from",
            format!("{} must be before --to {}", fmt_ms(from), fmt_ms(to)),
        ));
    }
    if to > f.now_ms {
        return Err(usage(
            "--to",
            format!(
                "{} is in the future (now is {})",
                fmt_ms(to),
                fmt_ms(f.now_ms)
            ),
        ));
    }
    let Some(wm) = f.live_watermark else {
        return Err(Refusal::Precondition(
            "the live job reports no watermark yet, so no window is final; try again once it runs"
                .into(),
        ));
    };
    let final_upto = window_start(wm.saturating_sub(f.allowed_lateness_ms), f.window_ms);
    if to > final_upto {
        return Err(Refusal::Precondition(format!(
            "--to {} is still inside the allowed lateness ({} ms) of the live job, whose \
             watermark is {}: it may still revise those windows. Windows up to {} can be replayed",
            fmt_ms(to),
            f.allowed_lateness_ms,
            fmt_ms(wm),
            fmt_ms(final_upto)
        )));
    }
    Ok(())
}

/// Checks `from` against the retained history (see [`earliest_replayable`]).
pub fn check_retention(from: i64, earliest: Option<i64>, topic: &str) -> Result<(), Refusal> {
    match earliest {
        None => Err(Refusal::Precondition(format!(
            "the input topic {topic} holds no records; there is nothing to replay"
        ))),
        Some(e) if from < e => Err(Refusal::Precondition(format!(
            "--from {} is older than the earliest record retained in {topic}; the earliest \
             time that can be replayed is {}",
            fmt_ms(from),
            fmt_ms(e)
        ))),
        Some(_) => Ok(()),
    }
}

/// Static settings of one replay.
#[derive(Clone, Debug)]
pub struct ReplaySettings {
    /// Window size, ms.
    pub window_ms: i64,
    /// First window start of the range.
    pub from: i64,
    /// End (exclusive) of the range.
    pub to: i64,
    /// `job.max_out_of_orderness_ms`.
    pub out_of_orderness_ms: i64,
    /// `job.allowed_lateness_ms`.
    pub allowed_lateness_ms: i64,
    /// N.
    pub top_n: usize,
    /// M values.
    pub top_windows: Vec<u32>,
    /// Dedup rule.
    pub dedup: DedupMode,
    /// Validation limits.
    pub limits: Limits,
    /// `job.max_ads_per_window`.
    pub max_ads_per_window: usize,
    /// Key groups of the job.
    pub key_groups: u32,
    /// Epoch stamped on every record (see [`replay_epoch`]).
    pub epoch: u64,
    /// Producer name stamped on every record.
    pub producer: String,
    /// Wall clock at the start, for the future-skew limit of records
    /// without a timestamp.
    pub now_ms: i64,
}

/// What a replay read and wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayStats {
    /// Input records read.
    pub records: u64,
    /// Records that failed parsing or validation (not counted).
    pub rejected: u64,
    /// Events too late for their window, judged by the replay's watermark.
    pub late: u64,
    /// Duplicate events dropped.
    pub duplicates: u64,
    /// Events refused by the per-window ad limit.
    pub overflow: u64,
    /// Count records emitted for the range.
    pub counts: u64,
    /// Top-N records emitted for the range.
    pub top_n: u64,
}

#[derive(Clone, Copy, Debug, Default)]
struct PartitionClock {
    max_ts: Option<i64>,
    done: bool,
}

/// The replay's dataflow: parse → pre-aggregate → aggregate → reduce, with
/// per-partition watermarks. A partition that is read to its end (or far
/// enough past `to` that nothing it holds can still touch the range) stops
/// holding the watermark back; an unread one holds it, so reading order
/// does not change which events are late.
pub struct Replayer {
    settings: ReplaySettings,
    slicer: Arc<Slicer>,
    batcher: MapBatcher,
    aggregate: AggregateState,
    reduce: ReduceState,
    partitions: BTreeMap<i32, PartitionClock>,
    watermark: Option<i64>,
    stats: ReplayStats,
}

impl Replayer {
    /// A replay of `partitions` of the input.
    pub fn new(settings: ReplaySettings, slicer: Slicer, partitions: &[i32]) -> Self {
        let slicer = Arc::new(slicer);
        let owners = Arc::new(vec![0u32; settings.key_groups.max(1) as usize]);
        let batcher = MapBatcher::new(
            slicer.clone(),
            settings.window_ms,
            owners,
            1,
            settings.dedup,
        );
        let aggregate = AggregateState::new(AggregateSettings {
            window_ms: settings.window_ms,
            allowed_lateness_ms: settings.allowed_lateness_ms,
            top_n: settings.top_n,
            top_windows: settings.top_windows.clone(),
            producer: settings.producer.clone(),
            max_ads_per_window: settings.max_ads_per_window,
        });
        let reduce = ReduceState::new(
            1,
            settings.top_n,
            settings.allowed_lateness_ms,
            settings.producer.clone(),
        );
        Self {
            partitions: partitions
                .iter()
                .map(|p| (*p, PartitionClock::default()))
                .collect(),
            settings,
            slicer,
            batcher,
            aggregate,
            reduce,
            watermark: None,
            stats: ReplayStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> &ReplayStats {
        &self.stats
    }

    /// The replay's event time.
    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    /// Events waiting in the current micro-batch.
    pub fn pending(&self) -> usize {
        self.batcher.len()
    }

    /// Whether nothing more is needed from `partition`: its watermark is
    /// past the range's end plus the allowed lateness, so any later event of
    /// the range would be too late.
    pub fn partition_done(&self, partition: i32) -> bool {
        self.partitions.get(&partition).is_none_or(|c| {
            c.done
                || c.max_ts.is_some_and(|t| {
                    t.saturating_sub(self.settings.out_of_orderness_ms)
                        >= self
                            .settings
                            .to
                            .saturating_add(self.settings.allowed_lateness_ms)
                })
        })
    }

    /// Whether every partition is done.
    pub fn all_done(&self) -> bool {
        self.partitions.keys().all(|p| self.partition_done(*p))
    }

    /// Adds one input record of `partition`, with its Kafka timestamp.
    pub fn add(&mut self, partition: i32, payload: &[u8], record_timestamp_ms: Option<i64>) {
        self.stats.records += 1;
        let reference = future_reference(record_timestamp_ms, self.settings.now_ms);
        match parse_event_borrowed(payload, &self.settings.limits, reference) {
            Ok(e) => {
                let clock = self.partitions.entry(partition).or_default();
                clock.max_ts = Some(clock.max_ts.map_or(e.ts_ms, |m| m.max(e.ts_ms)));
                self.batcher.add(e, payload, false);
            }
            Err(_) => self.stats.rejected += 1,
        }
    }

    /// Marks `partition` as read to its end.
    pub fn end_partition(&mut self, partition: i32) {
        self.partitions.entry(partition).or_default().done = true;
    }

    /// Runs the current micro-batch through the dataflow and returns the
    /// records it emitted for the range.
    pub fn flush(&mut self) -> Vec<OutputRecord> {
        let mut out = Vec::new();
        let partials = self.batcher.flush().into_iter().flatten().collect();
        let applied = self.aggregate.apply(partials);
        self.take(applied, &mut out);
        let wm = if self.all_done() {
            None
        } else {
            self.current_watermark()
        };
        if let Some(wm) = wm {
            self.advance(wm, &mut out);
        }
        out
    }

    /// Closes every window (all input is read) and returns the rest.
    pub fn finish(&mut self) -> Vec<OutputRecord> {
        let mut out = self.flush();
        let end = self
            .settings
            .to
            .saturating_add(self.settings.allowed_lateness_ms)
            .saturating_add(lookback_ms(
                self.settings.window_ms,
                &self.settings.top_windows,
            ))
            .saturating_add(2 * self.settings.window_ms);
        self.advance(end.max(self.watermark.unwrap_or(end)), &mut out);
        out
    }

    /// Minimum over partitions still being read; an unread partition with
    /// no event yet holds it back.
    fn current_watermark(&self) -> Option<i64> {
        let ooo = self.settings.out_of_orderness_ms;
        let mut wm = i64::MAX;
        for (p, c) in &self.partitions {
            if self.partition_done(*p) {
                continue;
            }
            wm = wm.min(c.max_ts?.saturating_sub(ooo));
        }
        (wm != i64::MAX).then_some(wm)
    }

    fn advance(&mut self, wm: i64, out: &mut Vec<OutputRecord>) {
        if self.watermark.is_some_and(|old| wm <= old) {
            return;
        }
        self.watermark = Some(wm);
        let advanced = self.aggregate.advance(wm);
        self.take(advanced, out);
        let tops = self.reduce.on_watermark(0, wm);
        self.keep_tops(tops, out);
    }

    fn take(&mut self, a: crate::aggregate::AggregateOutput, out: &mut Vec<OutputRecord>) {
        self.stats.late += a.late.len() as u64;
        self.stats.duplicates += a.duplicates;
        self.stats.overflow += a.overflow_events;
        let (from, to) = (self.settings.from, self.settings.to);
        for mut c in a.counts {
            if c.window_start >= from && c.window_start < to {
                c.epoch = self.settings.epoch;
                self.stats.counts += 1;
                out.push(OutputRecord::Count(c));
            }
        }
        let tops: Vec<_> = a
            .top
            .into_iter()
            .filter_map(|l: LocalTopN| self.reduce.on_local(0, l))
            .collect();
        self.keep_tops(tops, out);
    }

    fn keep_tops(&mut self, tops: Vec<crate::output::TopNRecord>, out: &mut Vec<OutputRecord>) {
        let (from, to) = (self.settings.from, self.settings.to);
        for mut t in tops {
            if t.window_end > from && t.window_end <= to {
                t.epoch = self.settings.epoch;
                self.stats.top_n += 1;
                out.push(OutputRecord::TopN(t));
            }
        }
    }

    /// The slicer in use (the replay's configuration).
    pub fn slice_ids(&self) -> Vec<String> {
        self.slicer.filter_ids()
    }
}

#[cfg(test)]
mod tests;
