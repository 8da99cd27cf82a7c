//! End-to-end test of the per-window ad limit (issue 3, rule 6: "10 million
//! distinct ads must not exhaust memory"), against a real broker and a
//! 3-node cluster, with exact expected values.

mod support;

use anyhow::Result;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use support::event_time::*;
use support::*;

/// Rule 6, a flood of distinct ads: each Aggregate holds at most
/// `job.max_ads_per_window` ads per window, so memory stays bounded however
/// many distinct ads arrive. Events of further ads are not dropped: they go
/// to the DLQ with the reason and their counts, and are counted in
/// `window_overflow_events_total`. An (ad, window) is either wholly counted
/// or wholly in the DLQ, even when its events arrive on different
/// partitions, and the next window starts with room again.
#[test]
fn distinct_ads_beyond_the_window_limit_go_to_the_dlq() -> Result<()> {
    use adclick_core::keygroup::key_group_of;
    use adclick_core::ring::Ring;
    let (cap, ads, key_groups) = (150usize, 1_200u32, 4096u32);
    let (dir, broker, config) = setup_with(
        "e2e-window-limit",
        &config_with_job(&job(2_000, &format!("max_ads_per_window = {cap}")), ""),
    )?;
    create_topics(&broker.bootstrap)?;
    let producer = PartitionProducer::new(&broker.bootstrap)?;
    // Two clicks per ad, on two different partitions.
    for i in 0..ads {
        let ad = format!("flood{i}");
        for k in 0..2 {
            let e = click(&ad, T0 + 100 + i64::from(k), &format!("{ad}-{k}"));
            producer.send(INPUT, ((i + k) % 4) as i32, e.as_bytes())?;
        }
    }
    for p in 0..4 {
        producer.send(
            INPUT,
            p,
            click("tick", T0 + 2 * W + 10, &format!("tick-{p}")).as_bytes(),
        )?;
        producer.send(
            INPUT,
            p,
            click("tock", T0 + 4 * W, &format!("tock-{p}")).as_bytes(),
        )?;
    }
    let owners = Ring::new(3).assign(key_groups);
    let mut owned = [0usize; 3];
    for i in 0..ads {
        let kg = key_group_of(&format!("flood{i}"), key_groups).0 as usize;
        owned[owners[kg] as usize] += 1;
    }
    let want_counted: usize = owned.iter().map(|n| (*n).min(cap)).sum();
    assert!(
        want_counted < ads as usize,
        "the test must overflow: {owned:?}"
    );

    let cluster = Cluster::start(&dir, &broker.bootstrap, &config, NODES, false)?;
    let mut counts = Counts::new(&broker.bootstrap)?;
    counts.wait(
        Duration::from_secs(60),
        "the flood window and the tick window",
        |c| {
            let flood = c
                .all
                .iter()
                .filter(|r| &*r.slice == "*" && r.window_start == T0)
                .count();
            let tick = c.all.iter().any(|r| r.ad_id == "tick" && &*r.slice == "*");
            flood >= want_counted && tick
        },
    )?;
    let latest = counts.latest();
    let mut ads_per_agg: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for c in counts
        .all
        .iter()
        .filter(|r| &*r.slice == "*" && r.window_start == T0)
    {
        ads_per_agg
            .entry(c.producer.to_string())
            .or_default()
            .insert(c.ad_id.to_string());
    }
    let counted_per_agg: BTreeMap<String, usize> = ads_per_agg
        .iter()
        .map(|(a, s)| (a.clone(), s.len()))
        .collect();
    let counted: BTreeSet<String> = latest
        .iter()
        .filter(|((_, start, slice), _)| *start == T0 && slice == "*")
        .map(|((ad, _, _), (clicks, _))| {
            assert_eq!(*clicks, 2, "{ad} counted partially");
            ad.clone()
        })
        .collect();
    assert_eq!(
        counted.len(),
        want_counted,
        "per aggregate: {counted_per_agg:?}"
    );
    let mut per_agg: Vec<usize> = counted_per_agg.values().copied().collect();
    per_agg.sort_unstable();
    let mut want_per_agg: Vec<usize> = owned.iter().map(|n| (*n).min(cap)).collect();
    want_per_agg.sort_unstable();
    assert_eq!(per_agg, want_per_agg, "ads counted per aggregate");
    assert_eq!(
        latest.get(&("tick".into(), T0 + 2 * W, "*".into())),
        Some(&(4, 0))
    );

    // Every other ad's clicks are in the DLQ, as summaries, exactly once.
    let refused_clicks = 2 * (ads as u64 - want_counted as u64);
    let reader = TopicReader::new(&broker.bootstrap, "ad-clicks-dlq")?;
    let (mut dlq, start) = (Vec::new(), Instant::now());
    let mut dlq_clicks: BTreeMap<String, u64> = BTreeMap::new();
    while dlq_clicks.values().sum::<u64>() < refused_clicks
        && start.elapsed() < Duration::from_secs(60)
    {
        for r in reader.drain_with_headers(Duration::from_millis(500)) {
            let v: serde_json::Value = serde_json::from_slice(&r.payload)?;
            let ad = v["ad_id"].as_str().unwrap_or_default().to_string();
            *dlq_clicks.entry(ad).or_default() += v["clicks"].as_u64().unwrap_or_default();
            dlq.push(r);
        }
    }
    dlq.extend(reader.drain_with_headers(Duration::from_secs(2)));
    assert_eq!(dlq_clicks.values().sum::<u64>(), refused_clicks);
    assert!(
        dlq_clicks.values().all(|c| *c == 2),
        "split ads: {dlq_clicks:?}"
    );
    assert!(
        dlq_clicks.keys().all(|ad| !counted.contains(ad)),
        "counted and refused"
    );
    assert_eq!(dlq_clicks.len() + counted.len(), ads as usize);
    let identities: BTreeSet<(String, String, String)> = dlq
        .iter()
        .map(|r| {
            let h = |k: &str| r.headers.get(k).cloned().unwrap_or_default();
            assert!(
                h("reason").contains("max_ads_per_window = 150"),
                "{:?}",
                r.headers
            );
            (h("producer"), h("epoch"), h("seq"))
        })
        .collect();
    assert_eq!(
        identities.len(),
        dlq.len(),
        "a dead letter was written twice"
    );
    assert_eq!(
        settle_counter(
            &cluster,
            "window_overflow_events_total",
            refused_clicks as f64,
            Duration::from_secs(10)
        ),
        refused_clicks as f64
    );
    assert_eq!(
        settle_counter(
            &cluster,
            "dlq_events_total",
            dlq.len() as f64,
            Duration::from_secs(10)
        ),
        dlq.len() as f64
    );
    Ok(())
}
