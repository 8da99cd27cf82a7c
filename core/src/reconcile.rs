//! Reconciliation, the chapter's billing check: recount a closed time range
//! from the raw input topic by a separate, simple batch path and compare
//! every (ad, window, slice) with what the streaming job stored.
//!
//! The recount shares only the parser, the validation limits, the slicer and
//! the dedup key with the streaming job, never its state machines, so a bug
//! in the Map/Aggregate path cannot hide in its own yardstick. It applies the
//! job's rules (`core::aggregate::AggregateState::apply`):
//!
//! 1. **Validation.** Records the recount cannot parse are not counted. The
//!    one rule that depends on wall clock at ingest, the future-skew limit,
//!    is reproduced from the dead-letter topic instead: an event the Map
//!    sent there (its `source.partition/offset` headers name it) is taken
//!    out again, even if it would pass now.
//! 2. **Lateness.** Whether an event was too late depends on the Aggregate's
//!    watermark when it arrived, which depends on arrival interleaving across
//!    partitions, micro-batch timing and wall-clock idleness. None of that is
//!    in the input topic, so it cannot be recomputed. The job writes every
//!    too-late event to the late topic with its original bytes; the recount
//!    takes one copy of that event out per late record (a record re-written
//!    after a crash has the same key and counts once). A late record that
//!    only carries a summary of a pre-aggregated group (rare: an event that
//!    was not behind its own Map's watermark) is subtracted from the cell
//!    counts, and the report is marked approximate.
//! 3. **Per-window ad limit.** An (ad, window) refused by
//!    `job.max_ads_per_window` stays refused while the window is held (the
//!    ad set only grows), so it has no row at all; the recount drops every
//!    (ad, window) named by such a dead letter.
//! 4. **Dedup.** The job keeps the seen keys per (ad, window) for as long as
//!    the window is held, and drops the window only once any further event
//!    for it is too late (retention = allowed lateness + max M windows). A
//!    copy arriving after that goes to the late topic rather than to dedup,
//!    and is handled by rule 2. So the streaming horizon is exactly "the
//!    (ad, window) cell", and the recount dedups per cell over the whole
//!    range. (A range-global dedup would differ: the job counts the same
//!    `event_id` once in every (ad, window) it appears in.)
//!
//! The job checks lateness before dedup, so an event is counted once if any
//! copy of it was on time, whichever copy that was. The recount therefore
//! keeps the number of copies per dedup key, takes late and dead-lettered
//! copies out, and counts a key when copies remain. That makes the result
//! independent of the order in which the topics are read.

use crate::event::{future_reference, parse_event, DedupMode, EventType, Limits};
use crate::slice::Slicer;
use crate::window::window_start;
use chrono::{DateTime, SecondsFormat};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};

/// `(slice, ad_id, window_start)`: the database's primary-key order.
pub type CellKey = (String, String, i64);

/// Clicks and impressions of one cell.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Value {
    /// Clicks.
    pub clicks: i64,
    /// Impressions.
    pub impressions: i64,
}

/// A bad `--from`/`--to`, named by its argument (a usage error).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{arg}: {problem}")]
pub struct RangeError {
    /// `--from` or `--to`.
    pub arg: &'static str,
    /// What is wrong.
    pub problem: String,
}

fn range_err(arg: &'static str, problem: String) -> RangeError {
    RangeError { arg, problem }
}

/// RFC 3339 text of an epoch-ms instant (the raw number when out of range).
pub fn fmt_ms(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |d| d.to_rfc3339_opts(SecondsFormat::Millis, true),
    )
}

/// Parses an instant given as epoch milliseconds or RFC 3339.
pub fn parse_instant(arg: &'static str, text: &str) -> Result<i64, RangeError> {
    let t = text.trim();
    let digits = t.strip_prefix('-').unwrap_or(t);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse::<i64>()
            .map_err(|_| range_err(arg, format!("{t:?} is out of range")));
    }
    DateTime::parse_from_rfc3339(t)
        .map(|d| d.timestamp_millis())
        .map_err(|_| {
            range_err(
                arg,
                format!("{text:?} is neither epoch milliseconds nor RFC 3339"),
            )
        })
}

/// Parses `--from`/`--to` and checks that both are window-aligned and that
/// `from < to`.
pub fn parse_range(from: &str, to: &str, window_ms: i64) -> Result<(i64, i64), RangeError> {
    let f = parse_instant("--from", from)?;
    let t = parse_instant("--to", to)?;
    for (arg, v) in [("--from", f), ("--to", t)] {
        if v.rem_euclid(window_ms) != 0 {
            let below = window_start(v, window_ms);
            return Err(range_err(
                arg,
                format!(
                    "{} is not aligned to the {window_ms} ms window; use {} or {}",
                    fmt_ms(v),
                    fmt_ms(below),
                    fmt_ms(below.saturating_add(window_ms))
                ),
            ));
        }
    }
    if f >= t {
        return Err(range_err(
            "--from",
            format!("{} must be before --to {}", fmt_ms(f), fmt_ms(t)),
        ));
    }
    Ok((f, t))
}

/// The latest window end that may be reconciled: the end of the latest
/// window the job has closed and written (`latest_written`), and never past
/// wall clock. Windows after it are not final yet, so comparing them would
/// report rows still on their way as missing.
pub fn check_closed(to: i64, latest_written: Option<i64>, now_ms: i64) -> Result<(), RangeError> {
    let Some(latest) = latest_written else {
        return Err(range_err(
            "--to",
            "the database holds no closed window yet; nothing can be reconciled".into(),
        ));
    };
    let limit = latest.min(now_ms);
    if to > limit {
        return Err(range_err(
            "--to",
            format!(
                "{} is after the latest closed window end {} (later windows are not final)",
                fmt_ms(to),
                fmt_ms(limit)
            ),
        ));
    }
    Ok(())
}

/// What a dead-letter record means for the recount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DlqKind {
    /// The Map rejected this input record (it names its source).
    Rejected {
        /// Input partition.
        partition: i32,
        /// Input offset.
        offset: i64,
    },
    /// An Aggregate refused it for `job.max_ads_per_window`.
    Overflow,
    /// Something else (another topic's source, another writer).
    Other,
}

/// Classifies a dead letter by its headers and key (see
/// `node::actors::map` and `node::kafka::sink` for how they are written).
pub fn classify_dlq(key: Option<&[u8]>, headers: &HashMap<String, String>, input: &str) -> DlqKind {
    if let (Some(topic), Some(p), Some(o)) = (
        headers.get("source.topic"),
        headers.get("source.partition"),
        headers.get("source.offset"),
    ) {
        if topic == input {
            if let (Ok(partition), Ok(offset)) = (p.parse(), o.parse()) {
                return DlqKind::Rejected { partition, offset };
            }
        }
        return DlqKind::Other;
    }
    let from_aggregate = key.is_some_and(|k| k.starts_with(b"dlq/"));
    let overflow = headers
        .get("reason")
        .is_some_and(|r| r.contains("max_ads_per_window"));
    if from_aggregate && overflow {
        DlqKind::Overflow
    } else {
        DlqKind::Other
    }
}

/// A side record that summarises a pre-aggregated group instead of holding
/// the original event (`core::aggregate::PartialSummary`).
#[derive(Deserialize)]
struct SideSummary {
    kind: String,
    ad_id: String,
    window_start: i64,
    slices: Vec<String>,
    clicks: i64,
    impressions: i64,
}

/// Settings of one recount.
#[derive(Clone, Debug)]
pub struct RecountSettings {
    /// Window size, ms.
    pub window_ms: i64,
    /// First window start counted.
    pub from: i64,
    /// End (exclusive) of the last window counted.
    pub to: i64,
    /// The job's dedup mode.
    pub dedup: DedupMode,
    /// The job's validation limits.
    pub limits: Limits,
    /// Wall clock of the run (future-skew limit of the parser).
    pub now_ms: i64,
}

/// What the recount did with the records it read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecountStats {
    /// Input records read.
    pub records: u64,
    /// Input records that fail parsing or validation.
    pub rejected: u64,
    /// Valid now, outside the range.
    pub out_of_range: u64,
    /// Valid now, in range, but dead-lettered by the Map (e.g. too far
    /// ahead of wall clock at ingest): taken out.
    pub dead_lettered: u64,
    /// In range, taken out because the job sent them to the late topic.
    pub late: u64,
    /// In range, of an (ad, window) refused by `job.max_ads_per_window`.
    pub over_ad_limit: u64,
    /// In range, copies of a counted event (same dedup key and cell).
    pub duplicates: u64,
    /// In range and counted.
    pub counted: u64,
    /// Distinct late-topic records read.
    pub late_records: u64,
    /// Late records in range that hold a summary, subtracted from counts.
    pub late_summaries: u64,
    /// Late or dead-lettered events in range that match no input record.
    pub side_unmatched: u64,
    /// (ad, window) pairs refused by the ad limit, in range.
    pub refused_cells: u64,
    /// Side records that could not be interpreted (e.g. cut payloads).
    pub side_unreadable: u64,
}

/// Copies of one deduplicated event in one (ad, window).
struct Copies {
    n: u32,
    country: u32,
    mask: u64,
    event_type: EventType,
}

#[derive(Default)]
struct AdWindow {
    /// Per dedup key: copies still counted and what the event counts in.
    keyed: HashMap<u64, Copies, foldhash::fast::RandomState>,
    /// Events without a dedup key, per (country, filter mask).
    keyless: Vec<(u32, u64, Value)>,
}

/// An event as the recount files it.
struct Filed {
    cell: (String, i64),
    key: Option<u64>,
    country: u32,
    mask: u64,
    event_type: EventType,
}

/// The batch recount. Feed every input record and every side record, in
/// any order, then [`finish`](Self::finish).
pub struct Recounter {
    s: RecountSettings,
    slicer: Slicer,
    /// Country codes, interned: there are few, and every event has one.
    countries: Vec<String>,
    country_ids: HashMap<String, u32>,
    late_keys: HashSet<Vec<u8>>,
    /// Late and dead-lettered events, taken out of the cells at the end.
    taken_out: Vec<(Filed, bool)>,
    summaries: Vec<SideSummary>,
    refused: HashSet<(String, i64)>,
    cells: HashMap<(String, i64), AdWindow>,
    stats: RecountStats,
}

impl Recounter {
    /// An empty recount of `s.from..s.to`.
    pub fn new(s: RecountSettings, slicer: Slicer) -> Self {
        Self {
            s,
            slicer,
            countries: Vec::new(),
            country_ids: HashMap::new(),
            late_keys: HashSet::new(),
            taken_out: Vec::new(),
            summaries: Vec::new(),
            refused: HashSet::new(),
            cells: HashMap::new(),
            stats: RecountStats::default(),
        }
    }

    fn in_range(&self, ws: i64) -> bool {
        ws >= self.s.from && ws < self.s.to
    }

    /// Parses `payload` and files it, if it is a valid event of the range.
    fn file(&mut self, payload: &[u8], now_ms: i64) -> Result<Option<Filed>, ()> {
        let e = parse_event(payload, &self.s.limits, now_ms).map_err(|_| ())?;
        let ws = window_start(e.ts_ms, self.s.window_ms);
        if !self.in_range(ws) {
            return Ok(None);
        }
        let key = e.dedup_key(self.s.dedup);
        let mask = self.slicer.filter_mask(&e);
        let country = match self.country_ids.get(&e.country) {
            Some(id) => *id,
            None => {
                let id = self.countries.len() as u32;
                self.country_ids.insert(e.country.clone(), id);
                self.countries.push(e.country);
                id
            }
        };
        Ok(Some(Filed {
            cell: (e.ad_id, ws),
            key,
            country,
            mask,
            event_type: e.event_type,
        }))
    }

    /// One input record, with its Kafka timestamp (the Map judges
    /// `max_future_skew_ms` against it, so the recount does too).
    pub fn add_input(&mut self, payload: &[u8], record_timestamp_ms: Option<i64>) {
        self.stats.records += 1;
        let reference = future_reference(record_timestamp_ms, self.s.now_ms);
        let f = match self.file(payload, reference) {
            Err(()) => {
                self.stats.rejected += 1;
                return;
            }
            Ok(None) => {
                self.stats.out_of_range += 1;
                return;
            }
            Ok(Some(f)) => f,
        };
        let w = self.cells.entry(f.cell).or_default();
        match f.key {
            Some(k) => {
                w.keyed
                    .entry(k)
                    .or_insert(Copies {
                        n: 0,
                        country: f.country,
                        mask: f.mask,
                        event_type: f.event_type,
                    })
                    .n += 1;
            }
            None => {
                add(&mut w.keyless, f.country, f.mask, f.event_type, 1);
            }
        }
    }

    /// Notes that one copy of the event in `payload` must come out (`late`
    /// or dead-lettered); false if it is not a valid event of the range.
    fn take_out(&mut self, payload: &[u8], now_ms: i64, late: bool) -> bool {
        match self.file(payload, now_ms) {
            Ok(Some(f)) => {
                self.taken_out.push((f, late));
                true
            }
            _ => false,
        }
    }

    /// Takes one copy of `f` out of its cell; false if there was none.
    fn apply_take_out(cells: &mut HashMap<(String, i64), AdWindow>, f: &Filed) -> bool {
        let Some(w) = cells.get_mut(&f.cell) else {
            return false;
        };
        match f.key {
            Some(k) => match w.keyed.get_mut(&k) {
                Some(c) if c.n > 0 => {
                    c.n -= 1;
                    true
                }
                _ => false,
            },
            None => add(&mut w.keyless, f.country, f.mask, f.event_type, -1),
        }
    }

    /// A dead letter; `key` is its Kafka key. `read_upto` is how far each
    /// input partition was read: a rejected record beyond it was never
    /// counted, so it is not taken out.
    pub fn add_dlq(
        &mut self,
        key: Option<&[u8]>,
        headers: &HashMap<String, String>,
        payload: &[u8],
        input_topic: &str,
        read_upto: &HashMap<i32, i64>,
    ) {
        match classify_dlq(key, headers, input_topic) {
            DlqKind::Rejected { partition, offset } => {
                if read_upto.get(&partition).is_none_or(|end| offset >= *end) {
                    return;
                }
                // Judged like its input copy was: most records here fail now
                // too; those that pass (too far ahead back then) come out.
                self.take_out(payload, self.s.now_ms, false);
            }
            // Side records passed validation when they were written.
            DlqKind::Overflow => match self.file(payload, i64::MAX) {
                Ok(Some(f)) => self.refuse(f.cell),
                Ok(None) => {}
                Err(()) => match summary(payload) {
                    Some(sum) => self.refuse((sum.ad_id, sum.window_start)),
                    None => self.stats.side_unreadable += 1,
                },
            },
            DlqKind::Other => {}
        }
    }

    fn refuse(&mut self, cell: (String, i64)) {
        if self.in_range(cell.1) && self.refused.insert(cell) {
            self.stats.refused_cells += 1;
        }
    }

    /// A record of the late topic; `key` is its Kafka key (its identity).
    pub fn add_late(&mut self, key: Option<&[u8]>, payload: &[u8]) {
        if let Some(k) = key {
            if !self.late_keys.insert(k.to_vec()) {
                return; // the same record written again after a crash
            }
        }
        self.stats.late_records += 1;
        if self.take_out(payload, i64::MAX, true) {
            return;
        }
        match summary(payload) {
            Some(sum) if self.in_range(sum.window_start) => {
                self.stats.late_summaries += 1;
                self.summaries.push(sum);
            }
            Some(_) => {}
            // Valid, outside the range.
            None if parse_event(payload, &self.s.limits, i64::MAX).is_ok() => {}
            None => self.stats.side_unreadable += 1,
        }
    }

    /// Every non-empty cell of the range, and what was done to get it.
    pub fn finish(mut self) -> (BTreeMap<CellKey, Value>, RecountStats) {
        for (f, late) in &self.taken_out {
            match (Self::apply_take_out(&mut self.cells, f), late) {
                (true, true) => self.stats.late += 1,
                (true, false) => self.stats.dead_lettered += 1,
                (false, _) => self.stats.side_unmatched += 1,
            }
        }
        let mut out: BTreeMap<CellKey, Value> = BTreeMap::new();
        for ((ad, ws), w) in self.cells {
            let mut groups = w.keyless;
            let mut events: u64 = groups.iter().map(|g| events_of(g.2)).sum();
            for c in w.keyed.values().filter(|c| c.n > 0) {
                self.stats.duplicates += u64::from(c.n - 1);
                events += 1;
                add(&mut groups, c.country, c.mask, c.event_type, 1);
            }
            if self.refused.contains(&(ad.clone(), ws)) {
                self.stats.over_ad_limit += events;
                continue;
            }
            self.stats.counted += events;
            for (country, mask, v) in groups {
                let Some(code) = self.countries.get(country as usize) else {
                    continue;
                };
                for slice in self.slicer.slices(code, mask) {
                    let c = out.entry((slice, ad.clone(), ws)).or_default();
                    c.clicks += v.clicks;
                    c.impressions += v.impressions;
                }
            }
        }
        for sum in self.summaries {
            for slice in sum.slices {
                if let Some(c) = out.get_mut(&(slice, sum.ad_id.clone(), sum.window_start)) {
                    c.clicks = (c.clicks - sum.clicks).max(0);
                    c.impressions = (c.impressions - sum.impressions).max(0);
                }
            }
        }
        out.retain(|_, v| *v != Value::default());
        (out, self.stats)
    }
}

/// The summary a side record holds instead of an event, if it is one.
fn summary(payload: &[u8]) -> Option<SideSummary> {
    serde_json::from_slice::<SideSummary>(payload)
        .ok()
        .filter(|s| s.kind == "partial_count")
}

fn events_of(v: Value) -> u64 {
    u64::try_from(v.clicks + v.impressions).unwrap_or(0)
}

/// Adds `delta` (+1 or -1) events of `event_type` to the group of
/// (country, mask); false if a removal found nothing to remove.
fn add(
    groups: &mut Vec<(u32, u64, Value)>,
    country: u32,
    mask: u64,
    t: EventType,
    delta: i64,
) -> bool {
    let i = match groups.iter().position(|g| g.0 == country && g.1 == mask) {
        Some(i) => i,
        None if delta < 0 => return false,
        None => {
            groups.push((country, mask, Value::default()));
            groups.len() - 1
        }
    };
    let v = &mut groups[i].2;
    let field = match t {
        EventType::Click => &mut v.clicks,
        EventType::Impression => &mut v.impressions,
    };
    if *field + delta < 0 {
        return false;
    }
    *field += delta;
    true
}

mod report;
pub use report::{compare, DiffKind, Difference, Report, Summary, WORST};

#[cfg(test)]
mod tests;
