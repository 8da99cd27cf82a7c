//! Comparison of a recount with the database, and the report of a run.

use super::{fmt_ms, CellKey, RecountSettings, RecountStats, Value};
use crate::event::DedupMode;
use crate::slice::ALL;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// How a cell differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiffKind {
    /// In both, with different values.
    Mismatched,
    /// Recounted, but no database row.
    MissingInDb,
    /// A database row the recount does not have.
    MissingInRecount,
}

/// One cell that does not match.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difference {
    /// Slice.
    pub slice: String,
    /// Ad.
    pub ad_id: String,
    /// Window start, epoch ms.
    pub window_start: i64,
    /// How it differs.
    pub kind: DiffKind,
    /// The database row, if any.
    pub db: Option<Value>,
    /// The recount, if any.
    pub recount: Option<Value>,
    /// |clicks difference| + |impressions difference|.
    pub abs_diff: u64,
}

/// Cell counts of a comparison.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Distinct cells in either side.
    pub cells: u64,
    /// Equal in both.
    pub matched: u64,
    /// In both, different.
    pub mismatched: u64,
    /// Recount only.
    pub missing_in_db: u64,
    /// Database only.
    pub missing_in_recount: u64,
    /// Clicks of slice `*` in the database (what would be billed).
    pub db_clicks: i64,
    /// Clicks of slice `*` in the recount.
    pub recount_clicks: i64,
}

impl Summary {
    /// Cells that do not match, of any kind.
    pub fn unmatched(&self) -> u64 {
        self.mismatched + self.missing_in_db + self.missing_in_recount
    }
}

/// Compares every cell; differences come worst first (largest absolute
/// difference, then key order), so the top of the list is what to look at.
/// A cell of zero clicks and zero impressions counts as absent: the job
/// never writes one, and it bills nothing either way.
pub fn compare(
    recount: &BTreeMap<CellKey, Value>,
    db: &BTreeMap<CellKey, Value>,
) -> (Summary, Vec<Difference>) {
    let mut s = Summary::default();
    let mut diffs = Vec::new();
    let sum_star = |m: &BTreeMap<CellKey, Value>| -> i64 {
        m.iter()
            .filter(|(k, _)| k.0 == ALL)
            .map(|(_, v)| v.clicks)
            .sum()
    };
    s.db_clicks = sum_star(db);
    s.recount_clicks = sum_star(recount);
    let keys: BTreeSet<&CellKey> = recount.keys().chain(db.keys()).collect();
    let nonzero = |m: &BTreeMap<CellKey, Value>, k: &CellKey| {
        m.get(k).copied().filter(|v| *v != Value::default())
    };
    for k in keys {
        let (r, d) = (nonzero(recount, k), nonzero(db, k));
        if r.is_none() && d.is_none() {
            continue;
        }
        s.cells += 1;
        let kind = match (r, d) {
            (Some(r), Some(d)) if r == d => {
                s.matched += 1;
                continue;
            }
            (Some(_), Some(_)) => {
                s.mismatched += 1;
                DiffKind::Mismatched
            }
            (Some(_), None) => {
                s.missing_in_db += 1;
                DiffKind::MissingInDb
            }
            _ => {
                s.missing_in_recount += 1;
                DiffKind::MissingInRecount
            }
        };
        let (a, b) = (r.unwrap_or_default(), d.unwrap_or_default());
        diffs.push(Difference {
            slice: k.0.clone(),
            ad_id: k.1.clone(),
            window_start: k.2,
            kind,
            db: d,
            recount: r,
            abs_diff: a.clicks.abs_diff(b.clicks) + a.impressions.abs_diff(b.impressions),
        });
    }
    // Stable sort: equal differences stay in key order.
    diffs.sort_by_key(|d| std::cmp::Reverse(d.abs_diff));
    (s, diffs)
}

/// The whole report, as written by `--json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// First window start, epoch ms.
    pub from_ms: i64,
    /// End of the range (exclusive), epoch ms.
    pub to_ms: i64,
    /// `from_ms` as RFC 3339.
    pub from: String,
    /// `to_ms` as RFC 3339.
    pub to: String,
    /// Wall clock of the run, epoch ms.
    pub run_at_ms: i64,
    /// Window size, ms.
    pub window_ms: i64,
    /// Dedup mode applied.
    pub dedup: DedupMode,
    /// Whether everything matched.
    pub ok: bool,
    /// Cell counts.
    pub summary: Summary,
    /// What the recount did with the records.
    pub recount: RecountStats,
    /// Whether some subtraction was approximate (see `notes`).
    pub approximate: bool,
    /// Caveats worth an operator's attention.
    pub notes: Vec<String>,
    /// The worst differences (up to [`WORST`]).
    pub worst: Vec<Difference>,
    /// Every difference, worst first.
    pub differences: Vec<Difference>,
}

/// How many differences the text report lists.
pub const WORST: usize = 20;

impl Report {
    /// Builds the report of one run.
    pub fn new(
        s: &RecountSettings,
        run_at_ms: i64,
        stats: RecountStats,
        (summary, differences): (Summary, Vec<Difference>),
    ) -> Self {
        let mut notes = Vec::new();
        if stats.late_summaries > 0 {
            notes.push(format!(
                "{} late records hold only a summary of a pre-aggregated group; their counts \
                 were subtracted, which is exact unless those events had on-time duplicates",
                stats.late_summaries
            ));
        }
        if stats.side_unmatched > 0 {
            notes.push(format!(
                "{} late or dead-lettered events of the range match no input record read \
                 (input retention, a rewritten input topic, or input that arrived during the run)",
                stats.side_unmatched
            ));
        }
        if stats.side_unreadable > 0 {
            notes.push(format!(
                "{} side records could not be read (e.g. payloads cut to the side-topic limit)",
                stats.side_unreadable
            ));
        }
        Self {
            from_ms: s.from,
            to_ms: s.to,
            from: fmt_ms(s.from),
            to: fmt_ms(s.to),
            run_at_ms,
            window_ms: s.window_ms,
            dedup: s.dedup,
            ok: summary.unmatched() == 0,
            approximate: !notes.is_empty(),
            notes,
            worst: differences.iter().take(WORST).cloned().collect(),
            summary,
            recount: stats,
            differences,
        }
    }

    /// The human-readable report printed on stdout.
    pub fn render(&self) -> String {
        let (s, r) = (&self.summary, &self.recount);
        let mut out = format!(
            "reconcile [{}, {}) window {} ms, dedup {:?}\n\
             recount: {} records read, {} counted, {} rejected, {} dead-lettered, {} duplicates, \
             {} late, {} over the ad limit, {} outside the range\n\
             cells: {} compared, {} matched, {} mismatched, {} missing in db, {} missing in recount\n\
             clicks (slice *): db {}, recount {}\n",
            self.from, self.to, self.window_ms, self.dedup, r.records, r.counted, r.rejected,
            r.dead_lettered, r.duplicates, r.late, r.over_ad_limit, r.out_of_range, s.cells,
            s.matched, s.mismatched, s.missing_in_db, s.missing_in_recount, s.db_clicks,
            s.recount_clicks,
        );
        for n in &self.notes {
            out.push_str(&format!("note: {n}\n"));
        }
        if !self.worst.is_empty() {
            out.push_str(&format!(
                "worst differences ({} of {}):\n  {:<18} {:<26} {:<20} {:>15} {:>15} {:>8}\n",
                self.worst.len(),
                self.differences.len(),
                "kind",
                "window_start",
                "slice / ad",
                "db clk/imp",
                "recount clk/imp",
                "diff"
            ));
            let show = |v: Option<Value>| {
                v.map_or("-".into(), |v| format!("{}/{}", v.clicks, v.impressions))
            };
            for d in &self.worst {
                out.push_str(&format!(
                    "  {:<18} {:<26} {:<20} {:>15} {:>15} {:>8}\n",
                    format!("{:?}", d.kind),
                    fmt_ms(d.window_start),
                    format!("{} / {}", d.slice, d.ad_id),
                    show(d.db),
                    show(d.recount),
                    d.abs_diff
                ));
            }
        }
        out.push_str(&if self.ok {
            "RESULT: OK, every cell matches\n".to_string()
        } else {
            format!("RESULT: MISMATCH, {} cells differ\n", s.unmatched())
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Limits;

    fn key(slice: &str, ad: &str, ws: i64) -> CellKey {
        (slice.to_string(), ad.to_string(), ws)
    }

    fn v(clicks: i64, impressions: i64) -> Value {
        Value {
            clicks,
            impressions,
        }
    }

    #[test]
    fn differences_are_classified_and_worst_first() {
        let recount: BTreeMap<CellKey, Value> = [
            (key("*", "a", 0), v(5, 1)),
            (key("*", "b", 0), v(7, 0)),
            (key("*", "c", 0), v(2, 2)),
            (key("us", "d", 0), v(1, 0)),
        ]
        .into_iter()
        .collect();
        let db: BTreeMap<CellKey, Value> = [
            (key("*", "a", 0), v(5, 1)),
            (key("*", "b", 0), v(4, 0)),
            (key("*", "c", 0), v(2, 2)),
            (key("*", "e", 0), v(10, 30)),
        ]
        .into_iter()
        .collect();
        let (s, diffs) = compare(&recount, &db);
        assert_eq!(
            (
                s.cells,
                s.matched,
                s.mismatched,
                s.missing_in_db,
                s.missing_in_recount
            ),
            (5, 2, 1, 1, 1)
        );
        assert_eq!((s.db_clicks, s.recount_clicks, s.unmatched()), (21, 14, 3));
        let order: Vec<(&str, DiffKind, u64)> = diffs
            .iter()
            .map(|d| (d.ad_id.as_str(), d.kind, d.abs_diff))
            .collect();
        assert_eq!(
            order,
            vec![
                ("e", DiffKind::MissingInRecount, 40),
                ("b", DiffKind::Mismatched, 3),
                ("d", DiffKind::MissingInDb, 1),
            ]
        );
        assert_eq!(diffs[1].db, Some(v(4, 0)));
        assert_eq!(diffs[1].recount, Some(v(7, 0)));
    }

    #[test]
    fn report_lists_at_most_the_worst_twenty_and_round_trips() {
        let recount: BTreeMap<CellKey, Value> = (0..30)
            .map(|i| (key("*", &format!("ad{i:02}"), 0), v(i, 0)))
            .collect();
        let settings = RecountSettings {
            window_ms: 60_000,
            from: 0,
            to: 60_000,
            dedup: DedupMode::EventId,
            limits: Limits::default(),
            now_ms: 0,
        };
        let r = Report::new(
            &settings,
            1,
            RecountStats::default(),
            compare(&recount, &BTreeMap::new()),
        );
        assert!(!r.ok && !r.approximate);
        assert_eq!((r.worst.len(), r.differences.len()), (WORST, 29));
        assert_eq!(r.worst[0].ad_id, "ad29");
        let text = r.render();
        assert!(text.contains("worst differences (20 of 29)"), "{text}");
        assert!(text.contains("RESULT: MISMATCH, 29 cells differ"), "{text}");
        let back: Report =
            serde_json::from_str(&serde_json::to_string(&r).expect("json")).expect("parse");
        assert_eq!(back, r);
        let clean = Report::new(
            &settings,
            1,
            RecountStats::default(),
            compare(&recount, &recount),
        );
        assert!(clean.ok && clean.render().contains("RESULT: OK"));
    }
}
