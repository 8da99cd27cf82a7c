//! The recount's rules, one by one, and a cross-check against `truth`.

use super::*;
use crate::slice::{FilterDef, SliceConfig};
use crate::truth::{compute, TruthSpec};

const W: i64 = 60_000;
const T0: i64 = 1_614_729_600_000;
const NOW: i64 = T0 + 3_600_000;

fn slicer() -> Slicer {
    Slicer::new(&SliceConfig {
        filters: vec![FilterDef {
            id: "us".into(),
            country: vec!["US".into()],
            ..Default::default()
        }],
        ..Default::default()
    })
    .expect("valid slices")
}

fn recounter(dedup: DedupMode, from: i64, to: i64) -> Recounter {
    Recounter::new(
        RecountSettings {
            window_ms: W,
            from,
            to,
            dedup,
            limits: Limits::default(),
            now_ms: NOW,
        },
        slicer(),
    )
}

fn ev(ad: &str, ts: i64, country: &str, id: Option<&str>, t: &str) -> Vec<u8> {
    let mut v = serde_json::json!({
        "ad_id": ad, "click_timestamp": ts, "user_id": "u1", "ip": "1.2.3.4",
        "country": country, "event_type": t,
    });
    if let Some(id) = id {
        v["event_id"] = id.into();
    }
    v.to_string().into_bytes()
}

fn cell(cells: &BTreeMap<CellKey, Value>, slice: &str, ad: &str, ws: i64) -> Option<(i64, i64)> {
    cells
        .get(&(slice.to_string(), ad.to_string(), ws))
        .map(|v| (v.clicks, v.impressions))
}

fn feed(r: &mut Recounter, records: &[Vec<u8>]) {
    for p in records {
        r.add_input(p, None);
    }
}

#[test]
fn ranges_must_be_aligned_ordered_and_closed() {
    assert_eq!(
        parse_range("2021-03-03T00:00:00Z", &(T0 + 2 * W).to_string(), W),
        Ok((T0, T0 + 2 * W))
    );
    let e = parse_range(&(T0 + 1).to_string(), &(T0 + W).to_string(), W).unwrap_err();
    assert_eq!(e.arg, "--from");
    assert!(e.to_string().contains("not aligned"), "{e}");
    assert_eq!(
        parse_range(&T0.to_string(), "2021-03-03T00:00:30Z", W)
            .unwrap_err()
            .arg,
        "--to"
    );
    let e = parse_range(&(T0 + W).to_string(), &T0.to_string(), W).unwrap_err();
    assert!(e.to_string().starts_with("--from: ") && e.to_string().contains("before --to"));
    assert_eq!(
        parse_range(&T0.to_string(), &T0.to_string(), W)
            .unwrap_err()
            .arg,
        "--from"
    );
    assert_eq!(parse_range("yesterday", "1", W).unwrap_err().arg, "--from");
    assert_eq!(
        parse_range("0", "99999999999999999999", W).unwrap_err().arg,
        "--to"
    );

    assert!(check_closed(T0 + W, Some(T0 + W), NOW).is_ok());
    let e = check_closed(T0 + 2 * W, Some(T0 + W), NOW).unwrap_err();
    assert_eq!(e.arg, "--to");
    assert!(e.to_string().contains("latest closed window"), "{e}");
    assert_eq!(check_closed(T0, None, NOW).unwrap_err().arg, "--to");
    // Never past wall clock, whatever the database says.
    assert!(check_closed(NOW + W, Some(NOW + 2 * W), NOW).is_err());
}

#[test]
fn dead_letters_are_told_apart_by_their_headers() {
    let h = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let map = h(&[
        ("reason", "invalid: ..."),
        ("source.topic", "ad-clicks"),
        ("source.partition", "3"),
        ("source.offset", "17"),
    ]);
    assert_eq!(
        classify_dlq(None, &map, "ad-clicks"),
        DlqKind::Rejected {
            partition: 3,
            offset: 17
        }
    );
    assert_eq!(classify_dlq(None, &map, "other"), DlqKind::Other);
    let over = h(&[(
        "reason",
        "window [0, 60000) already holds job.max_ads_per_window = 2 ads",
    )]);
    assert_eq!(
        classify_dlq(Some(b"dlq/aggregate-1/4/0"), &over, "ad-clicks"),
        DlqKind::Overflow
    );
    assert_eq!(classify_dlq(None, &over, "ad-clicks"), DlqKind::Other);
}

#[test]
fn counts_every_slice_and_dedups_per_ad_and_window() {
    let mut r = recounter(DedupMode::EventId, T0, T0 + 2 * W);
    feed(
        &mut r,
        &[
            ev("a", T0, "US", Some("e1"), "click"),
            ev("a", T0 + 5, "US", Some("e1"), "click"), // duplicate in the cell
            ev("a", T0 + W - 1, "DE", Some("e2"), "impression"),
            ev("a", T0 + W, "DE", Some("e1"), "click"), // same id, next window: counted
            ev("b", T0, "US", Some("e1"), "click"),     // same id, other ad: counted
            ev("b", T0 + 1, "US", None, "click"),       // no id: counted as it comes
            ev("b", T0 + 1, "US", None, "click"),
            b"not json".to_vec(),
            ev("a", T0 + 2 * W, "US", Some("e9"), "click"), // outside the range
        ],
    );
    let (cells, stats) = r.finish();
    assert_eq!(cell(&cells, "*", "a", T0), Some((1, 1)));
    assert_eq!(cell(&cells, "country=US", "a", T0), Some((1, 0)));
    assert_eq!(cell(&cells, "country=DE", "a", T0), Some((0, 1)));
    assert_eq!(cell(&cells, "us", "a", T0), Some((1, 0)));
    assert_eq!(cell(&cells, "*", "a", T0 + W), Some((1, 0)));
    assert_eq!(cell(&cells, "*", "b", T0), Some((3, 0)));
    assert_eq!(cells.len(), 9, "{cells:?}");
    assert_eq!(
        (
            stats.records,
            stats.counted,
            stats.duplicates,
            stats.rejected,
            stats.out_of_range
        ),
        (9, 6, 1, 1, 1)
    );
}

#[test]
fn dedup_modes_follow_the_job() {
    let records = [
        ev("a", T0, "US", None, "click"),
        ev("a", T0, "US", None, "click"),
        ev("a", T0, "US", Some("x"), "click"),
        ev("a", T0 + 1, "US", Some("x"), "click"),
    ];
    for (mode, clicks) in [
        (DedupMode::EventId, 3),
        (DedupMode::Content, 2),
        (DedupMode::None, 4),
    ] {
        let mut r = recounter(mode, T0, T0 + W);
        feed(&mut r, &records);
        assert_eq!(
            cell(&r.finish().0, "*", "a", T0),
            Some((clicks, 0)),
            "{mode:?}"
        );
    }
}

#[test]
fn late_events_are_taken_out_once_per_late_record_in_any_order() {
    let on_time = ev("a", T0, "US", Some("e1"), "click");
    let other = ev("a", T0 + 1, "US", Some("e2"), "click");
    let late_new = ev("a", T0 + 2, "US", Some("e3"), "click");
    let keyless = ev("a", T0 + 3, "DE", None, "impression");
    let input = [
        on_time.clone(),
        other,
        on_time.clone(),
        late_new.clone(),
        keyless.clone(),
        keyless.clone(),
    ];
    // A late copy of e1 and the late e3, whose record was written twice
    // (same key, after a crash), and one of two keyless impressions: e1
    // still counts once, one impression remains.
    let side = |r: &mut Recounter| {
        r.add_late(Some(b"late/aggregate-0/3/0"), &on_time);
        r.add_late(Some(b"late/aggregate-0/3/1"), &late_new);
        r.add_late(Some(b"late/aggregate-0/3/1"), &late_new);
        r.add_late(Some(b"late/aggregate-1/3/0"), &keyless);
    };
    for side_first in [true, false] {
        let mut r = recounter(DedupMode::EventId, T0, T0 + W);
        if side_first {
            side(&mut r);
        }
        feed(&mut r, &input);
        if !side_first {
            side(&mut r);
        }
        let (cells, stats) = r.finish();
        assert_eq!(
            cell(&cells, "*", "a", T0),
            Some((2, 1)),
            "side first: {side_first}"
        );
        assert_eq!(cell(&cells, "country=DE", "a", T0), Some((0, 1)));
        assert_eq!(
            (
                stats.late,
                stats.late_records,
                stats.duplicates,
                stats.counted
            ),
            (3, 3, 0, 3)
        );
        assert_eq!(stats.side_unmatched, 0);
    }
}

#[test]
fn late_summaries_are_subtracted_and_unmatched_late_events_reported() {
    let mut r = recounter(DedupMode::EventId, T0, T0 + W);
    let summary = serde_json::json!({
        "kind": "partial_count", "ad_id": "a", "window_start": T0, "window_end": T0 + W,
        "slices": ["*", "country=US"], "clicks": 2, "impressions": 0,
    });
    r.add_late(
        Some(b"late/aggregate-0/1/0"),
        summary.to_string().as_bytes(),
    );
    r.add_late(
        Some(b"late/aggregate-0/1/1"),
        &ev("zz", T0, "US", Some("q"), "click"),
    );
    r.add_late(Some(b"late/aggregate-0/1/2"), b"cut {\"ad_");
    feed(
        &mut r,
        &[
            ev("a", T0, "US", Some("1"), "click"),
            ev("a", T0, "US", Some("2"), "click"),
            ev("a", T0, "US", Some("3"), "click"),
        ],
    );
    let settings = r.s.clone();
    let (cells, stats) = r.finish();
    assert_eq!(cell(&cells, "*", "a", T0), Some((1, 0)));
    assert_eq!(
        cell(&cells, "us", "a", T0),
        Some((3, 0)),
        "not in the summary's slices"
    );
    assert_eq!(
        (
            stats.late_summaries,
            stats.side_unmatched,
            stats.side_unreadable
        ),
        (1, 1, 1)
    );
    let report = Report::new(&settings, NOW, stats, compare(&cells, &cells));
    assert!(report.ok && report.approximate);
    assert_eq!(report.notes.len(), 3, "{:?}", report.notes);
}

#[test]
fn dead_lettered_events_and_refused_ad_windows_are_not_counted() {
    let mut r = recounter(DedupMode::EventId, T0, T0 + 2 * W);
    let headers = |pairs: &[(&str, String)]| -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    };
    let ahead = ev("a", T0, "US", Some("1"), "click");
    feed(
        &mut r,
        &[
            ahead.clone(),
            ev("big", T0, "US", Some("2"), "click"),
            ev("big", T0 + 3, "US", Some("3"), "impression"),
            ev("big", T0 + W, "US", Some("4"), "click"), // next window: not refused
            ev("big2", T0 + W + 1, "US", Some("5"), "click"),
            ev("c", T0, "US", Some("6"), "click"),
        ],
    );
    let read_upto: HashMap<i32, i64> = [(0, 6)].into_iter().collect();
    // Offset 0 was too far ahead of wall clock when the Map read it; it
    // passes now, and comes out. A reject beyond what was read stays in.
    let reject = |offset: i64| {
        headers(&[
            ("source.topic", "ad-clicks".into()),
            ("source.partition", "0".into()),
            ("source.offset", offset.to_string()),
        ])
    };
    r.add_dlq(None, &reject(0), &ahead, "ad-clicks", &read_upto);
    r.add_dlq(
        None,
        &reject(6),
        &ev("c", T0, "US", Some("6"), "click"),
        "ad-clicks",
        &read_upto,
    );
    r.add_dlq(None, &reject(3), b"not json", "ad-clicks", &read_upto);
    let over = headers(&[(
        "reason",
        "already holds job.max_ads_per_window = 1 ads".into(),
    )]);
    let summary = serde_json::json!({
        "kind": "partial_count", "ad_id": "big", "window_start": T0, "window_end": T0 + W,
        "slices": ["*"], "clicks": 1, "impressions": 0,
    });
    let key = |k: &'static [u8]| Some(k);
    r.add_dlq(
        key(b"dlq/aggregate-0/2/0"),
        &over,
        summary.to_string().as_bytes(),
        "ad-clicks",
        &read_upto,
    );
    let big2 = ev("big2", T0 + W, "US", None, "click");
    r.add_dlq(
        key(b"dlq/aggregate-0/2/1"),
        &over,
        &big2,
        "ad-clicks",
        &read_upto,
    );
    let (cells, stats) = r.finish();
    assert_eq!(cell(&cells, "*", "a", T0), None);
    assert_eq!(cell(&cells, "*", "c", T0), Some((1, 0)));
    assert_eq!(cell(&cells, "*", "big", T0), None);
    assert_eq!(cell(&cells, "*", "big", T0 + W), Some((1, 0)));
    assert_eq!(cell(&cells, "*", "big2", T0 + W), None);
    assert_eq!(
        (
            stats.dead_lettered,
            stats.over_ad_limit,
            stats.refused_cells
        ),
        (1, 3, 2)
    );
    assert_eq!((stats.counted, stats.side_unmatched), (2, 0));
}

/// With unique events the recount equals the ground truth, an independent
/// direct summation; re-sent copies change nothing.
#[test]
fn unique_events_recount_to_the_ground_truth() {
    let s = slicer();
    let mut events = Vec::new();
    let mut records = Vec::new();
    for i in 0..2_000i64 {
        let ad = format!("ad{}", (i * 7919) % 37);
        let ts = T0 + (i * 104_729) % (5 * W);
        let country = ["US", "DE", "KR"][(i % 3) as usize];
        let t = if i % 4 == 0 { "impression" } else { "click" };
        let raw = ev(&ad, ts, country, Some(&format!("id{i}")), t);
        let e = parse_event(&raw, &Limits::default(), NOW).expect("valid");
        records.push(raw.clone());
        if i % 13 == 0 {
            records.push(raw);
        }
        events.push(e);
    }
    let mut r = recounter(DedupMode::EventId, T0, T0 + 5 * W);
    feed(&mut r, &records);
    let (cells, stats) = r.finish();
    let (truth, _) = compute(
        &events,
        &TruthSpec {
            window_ms: W,
            top_n: 10,
            top_windows: &[1],
            slicer: &s,
            by_country: true,
        },
    );
    let want: BTreeMap<CellKey, Value> = truth
        .into_iter()
        .map(|c| {
            let v = Value {
                clicks: c.clicks as i64,
                impressions: c.impressions as i64,
            };
            ((c.slice, c.ad_id, c.window_start), v)
        })
        .collect();
    assert_eq!(cells, want);
    assert_eq!(stats.duplicates, 154);
}
