//! Unit tests of the replay's decisions and dataflow.

use super::*;
use crate::event::{ClickEvent, EventType};
use crate::output::{CountRecord, TopNRecord};
use crate::slice::{FilterDef, SliceConfig};
use crate::truth::{compute, TruthSpec};
use proptest::prelude::*;
use std::collections::HashMap;

const W: i64 = 60_000;

fn facts(wm: Option<i64>) -> RangeFacts {
    RangeFacts {
        window_ms: W,
        now_ms: 100 * W,
        live_watermark: wm,
        allowed_lateness_ms: W,
    }
}

#[test]
fn ranges_are_checked_in_order_usage_then_lateness() {
    let f = facts(Some(10 * W));
    assert!(matches!(
        check_range(1, 2 * W, &f),
        Err(Refusal::Usage(e)) if e.arg == "--from" && e.problem.contains("not aligned")
    ));
    assert!(matches!(
        check_range(3 * W, 2 * W, &f),
        Err(Refusal::Usage(e)) if e.problem.contains("must be before")
    ));
    assert!(matches!(
        check_range(2 * W, 101 * W, &f),
        Err(Refusal::Usage(e)) if e.arg == "--to" && e.problem.contains("in the future")
    ));
    // Watermark 10 W, lateness 1 W: windows up to 9 W are final.
    assert_eq!(check_range(2 * W, 9 * W, &f), Ok(()));
    let Err(Refusal::Precondition(m)) = check_range(2 * W, 10 * W, &f) else {
        panic!("a range inside the lateness must be refused");
    };
    assert!(
        m.contains("allowed lateness") && m.contains("can be replayed"),
        "{m}"
    );
    assert!(matches!(
        check_range(2 * W, 3 * W, &facts(None)),
        Err(Refusal::Precondition(m)) if m.contains("no watermark")
    ));
}

#[test]
fn earliest_replayable_follows_retention() {
    let h = |low, ts| PartitionHistory {
        low_offset: low,
        first_timestamp: ts,
    };
    // Nothing deleted: the topic's history starts at its first record.
    assert_eq!(
        earliest_replayable(&[h(0, Some(5 * W + 7)), h(0, Some(3 * W + 1))], W, 4 * W),
        Some(3 * W)
    );
    // A partition lost records: the next whole window after its first
    // retained record, plus the top-N look-back.
    assert_eq!(
        earliest_replayable(&[h(0, Some(W)), h(9, Some(5 * W + 7))], W, 4 * W),
        Some(10 * W)
    );
    assert_eq!(earliest_replayable(&[h(0, None)], W, 0), None);
    assert!(check_retention(2 * W, Some(3 * W), "t")
        .unwrap_err()
        .to_string()
        .contains("earliest time that can be replayed is"));
    assert!(check_retention(3 * W, Some(3 * W), "t").is_ok());
    assert!(check_retention(3 * W, None, "t").is_err());
    assert_eq!(lookback_ms(W, &[1, 5]), 4 * W);
    assert!(is_replay_epoch(replay_epoch(1_700_000_000_000)));
    assert!(replay_epoch(2) > replay_epoch(1));
}

fn slices() -> SliceConfig {
    SliceConfig {
        dimensions: vec![crate::slice::Dimension::Country],
        filters: vec![FilterDef {
            id: "kr_only".into(),
            country: vec!["KR".into()],
            ..Default::default()
        }],
    }
}

fn settings(from: i64, to: i64) -> ReplaySettings {
    ReplaySettings {
        window_ms: W,
        from,
        to,
        out_of_orderness_ms: 5_000,
        allowed_lateness_ms: W,
        top_n: 3,
        top_windows: vec![1, 3],
        dedup: DedupMode::EventId,
        limits: Limits::default(),
        max_ads_per_window: 1_000_000,
        key_groups: 64,
        epoch: replay_epoch(42),
        producer: "replay-42".into(),
        now_ms: i64::MAX / 4,
    }
}

fn json(e: &ClickEvent) -> Vec<u8> {
    serde_json::json!({
        "ad_id": e.ad_id, "click_timestamp": e.ts_ms, "user_id": e.user_id,
        "ip": e.ip.to_string(), "country": e.country, "event_id": e.event_id,
        "event_type": match e.event_type { EventType::Click => "click", EventType::Impression => "impression" },
    })
    .to_string()
    .into_bytes()
}

type Counts = BTreeMap<(String, String, i64), (u64, u64)>;
type Tops = BTreeMap<(String, u32, i64), Vec<(String, u64)>>;

/// Runs a replay over `records` (partition, payload) read in that order,
/// folding its output to the newest value per key.
fn run(
    s: ReplaySettings,
    records: &[(i32, Vec<u8>)],
    parts: &[i32],
) -> (Counts, Tops, ReplayStats) {
    let mut r = Replayer::new(s.clone(), Slicer::new(&slices()).unwrap(), parts);
    let mut out = Vec::new();
    for (i, (p, payload)) in records.iter().enumerate() {
        r.add(*p, payload, None);
        if i % 7 == 6 {
            out.extend(r.flush());
        }
    }
    for p in parts {
        r.end_partition(*p);
    }
    out.extend(r.finish());
    let mut counts: HashMap<(String, String, i64), CountRecord> = HashMap::new();
    let mut tops: HashMap<(String, u32, i64), TopNRecord> = HashMap::new();
    for rec in out {
        assert_eq!(rec.version().0, s.epoch);
        match rec {
            OutputRecord::Count(c) => {
                let k = (c.slice.to_string(), c.ad_id.to_string(), c.window_start);
                if counts.get(&k).is_none_or(|o| o.revision < c.revision) {
                    counts.insert(k, c);
                }
            }
            OutputRecord::TopN(t) => {
                let k = (t.slice.clone(), t.window_minutes, t.window_end);
                if tops.get(&k).is_none_or(|o| o.revision < t.revision) {
                    tops.insert(k, t);
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let counts = counts
        .into_iter()
        .map(|(k, c)| (k, (c.clicks, c.impressions)))
        .collect();
    let tops = tops
        .into_iter()
        .filter(|(_, t)| !t.ads.is_empty())
        .map(|(k, t)| (k, t.ads.into_iter().map(|a| (a.ad_id, a.clicks)).collect()))
        .collect();
    (counts, tops, r.stats().clone())
}

fn truth(events: &[ClickEvent], from: i64, to: i64) -> (Counts, Tops) {
    let slicer = Slicer::new(&slices()).unwrap();
    let spec = TruthSpec {
        window_ms: W,
        top_n: 3,
        top_windows: &[1, 3],
        slicer: &slicer,
        by_country: true,
    };
    let (c, t) = compute(events, &spec);
    let counts = c
        .into_iter()
        .filter(|c| c.window_start >= from && c.window_start < to)
        .map(|c| {
            (
                (c.slice, c.ad_id, c.window_start),
                (c.clicks, c.impressions),
            )
        })
        .collect();
    let tops = t
        .into_iter()
        .filter(|t| t.window_end > from && t.window_end <= to)
        .map(|t| ((t.slice, t.window_minutes, t.window_end), t.ads))
        .collect();
    (counts, tops)
}

fn event(ad: u8, ts: i64, country: &str, id: u32, click: bool) -> ClickEvent {
    ClickEvent {
        ad_id: format!("ad{ad}"),
        ts_ms: ts,
        user_id: "u".into(),
        ip: "10.0.0.1".parse().unwrap(),
        country: country.into(),
        event_id: Some(format!("e{id}")),
        event_type: if click {
            EventType::Click
        } else {
            EventType::Impression
        },
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Over a stream with bounded disorder spread over partitions (some
    /// events sent twice), the replay's counts and top-N lists of the range
    /// equal a direct recount, and nothing outside the range is emitted.
    #[test]
    fn replay_equals_a_direct_recount(
        raw in proptest::collection::vec((0u8..6, 0i64..(8 * W), 0usize..3, any::<bool>(), 0u8..10), 1..300),
        from_w in 0i64..4,
        len_w in 1i64..5,
    ) {
        let mut events: Vec<ClickEvent> = raw
            .iter()
            .enumerate()
            .map(|(i, (ad, ts, c, click, _))| event(*ad, *ts, ["US", "KR", "DE"][*c], i as u32, *click))
            .collect();
        // Bounded disorder: sort by time, then swap neighbours a little.
        events.sort_by_key(|e| e.ts_ms);
        let mut records = Vec::new();
        for (i, e) in events.iter().enumerate() {
            let p = (i % 3) as i32;
            records.push((p, json(e)));
            if raw[i].4 == 0 {
                records.push((p, json(e))); // a duplicate
            }
        }
        records.push((1, b"not json".to_vec()));
        let (from, to) = (from_w * W, (from_w + len_w) * W);
        let (counts, tops, stats) = run(settings(from, to), &records, &[0, 1, 2]);
        let (want_counts, want_tops) = truth(&events, from, to);
        prop_assert_eq!(counts, want_counts);
        prop_assert_eq!(tops, want_tops);
        prop_assert_eq!(stats.rejected, 1);
        prop_assert_eq!(stats.late, 0);
    }
}

#[test]
fn an_unread_partition_holds_the_watermark_back() {
    // Partition 1 is read after partition 0 went far ahead: its old events
    // are not late, because it held the watermark until it was read.
    let a = event(1, 10, "US", 1, true);
    let b = event(1, 6 * W, "US", 2, true);
    let c = event(1, 20, "US", 3, true);
    let records = vec![(0, json(&a)), (0, json(&b)), (1, json(&c))];
    let (counts, _, stats) = run(settings(0, W), &records, &[0, 1]);
    assert_eq!(stats.late, 0);
    assert_eq!(counts.get(&("*".into(), "ad1".into(), 0)), Some(&(2, 0)));
}
