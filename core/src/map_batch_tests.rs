//! The Map's batching against plain expectations and a naive grouping.

use super::*;
use crate::slice::SliceConfig;

fn ev(ad: &str, ts: i64, t: EventType, id: Option<&str>) -> ClickEvent {
    ClickEvent {
        ad_id: ad.into(),
        ts_ms: ts,
        user_id: "u".into(),
        ip: "1.2.3.4".parse().unwrap(),
        country: "US".into(),
        event_id: id.map(Into::into),
        event_type: t,
    }
}

#[test]
fn hot_ad_becomes_one_partial_per_window() {
    let slicer = Arc::new(Slicer::new(&SliceConfig::default()).unwrap());
    let owners = Arc::new(crate::ring::Ring::new(2).assign(64));
    let mut b = MapBatcher::new(slicer, 60_000, owners, 2, DedupMode::EventId);
    for i in 0..1000 {
        b.add(ev("hot", i, EventType::Click, None), b"", false);
    }
    b.add(ev("hot", 5, EventType::Impression, Some("x")), b"", false);
    b.add(ev("hot", 60_000, EventType::Click, None), b"", false);
    b.add(ev("hot", 7, EventType::Click, None), b"raw", true);
    assert_eq!(b.len(), 1003);
    let out = b.flush();
    let owner = out.iter().position(|v| !v.is_empty()).unwrap();
    let parts = &out[owner];
    assert_eq!(parts.len(), 3, "{parts:?}");
    let first = parts
        .iter()
        .find(|p| p.window_start == 0 && p.raw.is_none())
        .unwrap();
    assert_eq!(first.clicks, 1000);
    assert_eq!(first.impression_keys.len(), 1);
    assert_eq!(first.slices, vec!["*", "country=US"]);
    assert_eq!(parts.iter().find(|p| p.raw.is_some()).unwrap().events(), 1);
    assert!(b.is_empty());
}

#[test]
fn borrowed_events_batch_exactly_like_owned_ones() {
    let slicer = Arc::new(Slicer::new(&SliceConfig::default()).unwrap());
    let owners = Arc::new(crate::ring::Ring::new(2).assign(64));
    let batcher = || {
        MapBatcher::new(
            slicer.clone(),
            60_000,
            owners.clone(),
            2,
            DedupMode::EventId,
        )
    };
    let (mut owned, mut borrowed) = (batcher(), batcher());
    for i in 0..500i64 {
        let e = ev(
            &format!("ad{}", i % 37),
            i * 311,
            if i % 3 == 0 {
                EventType::Impression
            } else {
                EventType::Click
            },
            (i % 2 == 0).then(|| format!("e{i}")).as_deref(),
        );
        let behind = i % 50 == 0;
        let view = ClickEvent {
            ad_id: std::borrow::Cow::Borrowed(e.ad_id.as_str()),
            ts_ms: e.ts_ms,
            user_id: std::borrow::Cow::Borrowed(e.user_id.as_str()),
            ip: e.ip,
            country: std::borrow::Cow::Borrowed(e.country.as_str()),
            event_id: e.event_id.as_deref().map(std::borrow::Cow::Borrowed),
            event_type: e.event_type,
        };
        borrowed.add(view, b"raw", behind);
        owned.add(e, b"raw", behind);
    }
    let sorted = |mut v: Vec<Vec<PartialCount>>| {
        for parts in &mut v {
            parts.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        }
        v
    };
    assert_eq!(sorted(owned.flush()), sorted(borrowed.flush()));
}

#[test]
fn packed_flushes_hold_exactly_the_records_of_plain_ones() {
    use crate::partials::CheckedPartials;
    let slicer = Arc::new(Slicer::new(&SliceConfig::default()).unwrap());
    let owners = Arc::new(crate::ring::Ring::new(3).assign(64));
    let mut plain = MapBatcher::new(
        slicer.clone(),
        60_000,
        owners.clone(),
        3,
        DedupMode::EventId,
    );
    let mut packed = MapBatcher::new(slicer, 60_000, owners, 3, DedupMode::EventId);
    for round in 0..3 {
        for i in 0..200i64 {
            let mut e = ev(
                &format!("ad-{}", i % 37),
                i * 1_000 + round,
                if i % 3 == 0 {
                    EventType::Impression
                } else {
                    EventType::Click
                },
                (i % 5 == 0).then_some("dup"),
            );
            e.country = ["US", "DE", "KR"][(i % 3) as usize].into();
            let behind = i % 50 == 0;
            plain.add(e.clone(), b"raw", behind);
            packed.add(e, b"raw", behind);
        }
        let sorted = |mut v: Vec<PartialCount>| {
            v.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
            v
        };
        let want: Vec<Vec<PartialCount>> = plain.flush().into_iter().map(sorted).collect();
        let got: Vec<Vec<PartialCount>> = packed
            .flush_packed()
            .into_iter()
            .map(|b| {
                let b = CheckedPartials::try_from(b).unwrap();
                sorted(b.iter().map(|p| p.to_owned_partial()).collect())
            })
            .collect();
        assert_eq!(got, want, "round {round}");
        assert!(packed.is_empty());
    }
}

/// Each event on its own, grouped the plainest way: what a batch must
/// hold.
fn naive(b: &MapBatcher, slicer: &Slicer, events: &[(ClickEvent, bool)]) -> Vec<Vec<PartialCount>> {
    use std::collections::BTreeMap;
    let mut out = vec![Vec::new(); b.num_aggregates];
    let mut groups: BTreeMap<(String, i64, String), PartialCount> = BTreeMap::new();
    for (e, behind) in events {
        let ws = window_start(e.ts_ms, 60_000);
        let mut single = PartialCount::default();
        let p = if *behind {
            single.raw = Some(b"raw".to_vec());
            &mut single
        } else {
            groups
                .entry((e.ad_id.clone(), ws, e.country.clone()))
                .or_default()
        };
        p.ad_id = e.ad_id.clone();
        p.window_start = ws;
        p.slices = slicer.slices(&e.country, slicer.filter_mask(e));
        add_one(p, e.event_type, e.dedup_key(DedupMode::EventId));
        if *behind {
            out[b.owner_of(&e.ad_id)].push(single);
        }
    }
    for p in groups.into_values() {
        out[b.owner_of(&p.ad_id)].push(p);
    }
    for parts in &mut out {
        parts.sort_by_key(|p| format!("{p:?}"));
    }
    out
}

proptest::proptest! {
    #[test]
    fn batches_hold_exactly_the_events_grouped_naively(
        rounds in proptest::collection::vec(
            proptest::collection::vec(
                (0..6u8, 0..180_000i64, 0..3usize, proptest::bool::ANY,
                 proptest::option::of(0..20u8), proptest::bool::weighted(0.1)),
                0..150,
            ),
            1..4,
        )
    ) {
        let slicer = Arc::new(Slicer::new(&SliceConfig::default()).unwrap());
        let owners = Arc::new(crate::ring::Ring::new(3).assign(64));
        let mut b = MapBatcher::new(slicer.clone(), 60_000, owners, 3, DedupMode::EventId);
        for round in rounds {
            let events: Vec<(ClickEvent, bool)> = round
                .into_iter()
                .map(|(ad, ts, country, click, id, behind)| {
                    let kind = if click { EventType::Click } else { EventType::Impression };
                    let mut e = ev(&format!("ad{ad}"), ts, kind, id.map(|i| format!("e{i}")).as_deref());
                    e.country = ["US", "DE", "KR"][country].into();
                    (e, behind)
                })
                .collect();
            for (e, behind) in &events {
                b.add(e.clone(), b"raw", *behind);
            }
            let mut got = b.flush();
            for parts in &mut got {
                parts.sort_by_key(|p| format!("{p:?}"));
            }
            proptest::prop_assert_eq!(got, naive(&b, &slicer, &events));
            proptest::prop_assert!(b.is_empty());
        }
    }
}
