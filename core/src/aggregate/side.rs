//! Events the Aggregate cannot count, turned into side-output records.
//!
//! Nothing is dropped silently: an event too late for its window goes to the
//! late topic, and a partial count refused because its window already holds
//! the maximum number of ads goes to the dead-letter topic. Both carry the
//! reason and the watermark, and enough content to replay them.

use crate::partials::PartialRef;
use serde::Serialize;

/// An event (or pre-aggregated group of events) that was not counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SideEvent {
    /// The original record when the Map kept it, otherwise a JSON summary of
    /// the partial count (see [`PartialSummary`]).
    pub raw: Vec<u8>,
    /// Why it was not counted.
    pub reason: String,
    /// The actor's watermark when it arrived (none before the first one).
    pub watermark: Option<i64>,
}

/// What a dead-letter record holds when the original bytes were not kept:
/// a Map pre-aggregates on-time events, so only their counts exist here.
/// Counts are totals as received, before deduplication.
#[derive(Debug, Serialize)]
pub struct PartialSummary<'a> {
    /// Marks the record as a summary rather than an original event.
    pub kind: &'static str,
    /// The ad.
    pub ad_id: &'a str,
    /// Window start, epoch ms.
    pub window_start: i64,
    /// Window end, epoch ms.
    pub window_end: i64,
    /// Slices the events would have counted in.
    pub slices: Vec<&'a str>,
    /// Clicks, including those with event ids.
    pub clicks: u64,
    /// Impressions, including those with event ids.
    pub impressions: u64,
}

/// Bytes that stand for `p` on a side topic: the original record, or a
/// summary of its counts.
fn raw_or_summary(p: &PartialRef<'_>, window_end: i64) -> Vec<u8> {
    if let Some(raw) = p.raw {
        return raw.to_vec();
    }
    let summary = PartialSummary {
        kind: "partial_count",
        ad_id: p.ad_id,
        window_start: p.window_start,
        window_end,
        slices: p.slices.iter().collect(),
        clicks: p.clicks + p.click_keys.len() as u64,
        impressions: p.impressions + p.impression_keys.len() as u64,
    };
    // Serialising a struct of strings and integers cannot fail.
    serde_json::to_vec(&summary).unwrap_or_default()
}

/// An event behind its window's end plus the allowed lateness.
pub(super) fn late_event(p: &PartialRef<'_>, end: i64, wm: i64) -> SideEvent {
    let reason = format!(
        "window [{}, {end}) closed and its allowed lateness expired (watermark {wm})",
        p.window_start
    );
    // Only events that were behind the Map's watermark can be late, and
    // those carry their bytes; the summary covers the case where that breaks.
    SideEvent {
        raw: raw_or_summary(p, end),
        reason,
        watermark: Some(wm),
    }
}

/// A new ad for a window that already holds `cap` ads on this actor.
pub(super) fn overflow_event(
    p: &PartialRef<'_>,
    end: i64,
    cap: usize,
    wm: Option<i64>,
) -> SideEvent {
    let reason = format!(
        "window [{}, {end}) already holds job.max_ads_per_window = {cap} ads on this \
         aggregate; {} events of a new ad were not counted",
        p.window_start,
        p.events()
    );
    SideEvent {
        raw: raw_or_summary(p, end),
        reason,
        watermark: wm,
    }
}
