//! End-to-end tests of event-time correctness (issue 3), one per rule, each
//! against a real broker and a 3-node cluster, with exact expected values:
//! idle partitions, allowed lateness and the late side output, and
//! duplicates (by id and by content). `e2e_event_inputs.rs` has the rest.
//!
//! Events are written by hand to explicit partitions, so every expected
//! count, revision, late record and duplicate is known exactly.

mod support;

use anyhow::Result;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use support::event_time::*;
use support::*;

/// Rule 1: a quiet partition does not hold the watermark back while the
/// others are active, and once every producer stops every window still
/// closes without dummy events.
///
/// Event time runs five times faster than wall clock (a replay), so a quiet
/// partition that merely advanced at wall-clock speed would hold every
/// window back for minutes: the windows after its last event must close
/// while the other partitions are still producing.
#[test]
fn idle_partitions_do_not_stall_windows() -> Result<()> {
    let (idle_ms, ooo_ms, lateness_ms) = (3_000, 1_000, 2_000);
    let (dir, broker, config) =
        setup_with("e2e-idle", &config_with_job(&job(lateness_ms, ""), ""))?;
    create_topics(&broker.bootstrap)?;
    let cluster = Cluster::start(&dir, &broker.bootstrap, &config, NODES, false)?;
    let mut counts = Counts::new(&broker.bootstrap)?;
    let producer = PartitionProducer::new(&broker.bootstrap)?;

    let e0 = now_ms() / W * W - 10_000;
    let mut expected = Expected::new();
    let mut expect = |ad: &str, ts: i64| {
        for slice in ["*", "country=US"] {
            expected
                .entry((ad.to_string(), ts / W * W, slice.to_string()))
                .or_insert((0, 0))
                .0 += 1;
        }
    };
    // Every partition starts; partition 3 then goes quiet for good.
    for p in 0..4 {
        producer.send(
            INPUT,
            p,
            click(&format!("warm{p}"), e0 + 100, &format!("warm{p}")).as_bytes(),
        )?;
        expect(&format!("warm{p}"), e0 + 100);
    }
    producer.send(INPUT, 3, click("quiet", e0 + 1_500, "quiet-1").as_bytes())?;
    expect("quiet", e0 + 1_500);
    wait_events_in(&cluster, 5.0)?;

    // Partitions 0..2 keep producing for 10 s of wall clock; their event
    // time runs five times faster (50 s), whatever the broker's latency.
    let bootstrap = broker.bootstrap.clone();
    let feeder = std::thread::spawn(move || -> Result<(Instant, Vec<(String, i64)>)> {
        let producer = PartitionProducer::new(&bootstrap)?;
        let start = Instant::now();
        let mut sent = Vec::new();
        let mut k = 0;
        while start.elapsed() < Duration::from_secs(10) {
            let ts = e0 + 4_000 + 5 * start.elapsed().as_millis() as i64;
            let batch: Vec<(i32, Vec<u8>)> = (0..3)
                .map(|p| {
                    (
                        p,
                        click(&format!("a{p}"), ts, &format!("a{p}-{k}")).into_bytes(),
                    )
                })
                .collect();
            producer.send_all(INPUT, &batch)?;
            sent.extend((0..3).map(|p| (format!("a{p}"), ts)));
            k += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok((Instant::now(), sent))
    });

    // While they are active, windows well after partition 3's last event
    // (e0 + 1.5 s) close: by then a0's event time is far ahead of wall clock.
    let probe = e0 + 30_000;
    let mut closed_while_active = false;
    while !feeder.is_finished() {
        counts.poll()?;
        if counts
            .all
            .iter()
            .any(|c| c.ad_id == "a0" && c.window_start >= probe)
        {
            closed_while_active = !feeder.is_finished();
            break;
        }
    }
    let (stopped, sent) = feeder
        .join()
        .map_err(|_| anyhow::anyhow!("feeder panicked"))??;
    for (ad, ts) in &sent {
        expect(ad, *ts);
    }
    let last_ts = sent.iter().map(|(_, ts)| *ts).max().unwrap_or(e0);
    assert!(
        last_ts > probe + 10_000,
        "the feeder was too slow: event time only reached {last_ts}"
    );
    assert!(
        closed_while_active,
        "window [{probe}, ..) of active partitions did not close while partition 3 was quiet"
    );

    // Every producer stopped: every window still emits, exactly, within
    // idle_timeout + max_out_of_orderness + allowed_lateness plus a few seconds.
    let bound =
        Duration::from_millis((idle_ms + ooo_ms + lateness_ms) as u64) + Duration::from_secs(5);
    counts.wait(Duration::from_secs(60), "every window", |c| {
        missing(c, &expected).is_empty()
    })?;
    let took = stopped.elapsed();
    assert!(
        took <= bound,
        "last windows closed {took:?} after the producers stopped, bound {bound:?}"
    );
    let last_start = last_ts / W * W;
    let in_last = sent
        .iter()
        .filter(|(ad, ts)| ad == "a0" && ts / W * W == last_start)
        .count() as u64;
    assert_eq!(
        counts.versions("a0", last_start, "*"),
        vec![(0, in_last, 0)],
        "the last window of a0"
    );
    assert!(
        counts.all.iter().all(|c| c.revision == 0),
        "nothing was late, so nothing is revised"
    );
    Ok(())
}

/// Rule 2: events behind the watermark but within the allowed lateness
/// re-emit their window with revision + 1 and the new absolute count; later
/// events are not counted and land unchanged in `ad-clicks-late` with the
/// reason and the watermark, each counted once in `late_events_total`.
#[test]
fn allowed_lateness_revisions_and_late_side_output() -> Result<()> {
    let lateness = 30_000;
    let (dir, broker, config) =
        setup_with("e2e-lateness", &config_with_job(&job(lateness, ""), ""))?;
    create_topics(&broker.bootstrap)?;
    let producer = PartitionProducer::new(&broker.bootstrap)?;
    let cluster = Cluster::start(&dir, &broker.bootstrap, &config, NODES, false)?;
    let mut counts = Counts::new(&broker.bootstrap)?;

    for i in 0..5 {
        producer.send(
            INPUT,
            0,
            click("a1", T0 + 100 * (i + 1), &format!("a1-{i}")).as_bytes(),
        )?;
    }
    for p in 0..4 {
        producer.send(
            INPUT,
            p,
            click("tick", T0 + 10_000, &format!("tick-a-{p}")).as_bytes(),
        )?;
    }
    counts.wait(Duration::from_secs(60), "first emission of a1", |c| {
        !c.versions("a1", T0, "*").is_empty()
    })?;
    assert_eq!(counts.versions("a1", T0, "*"), vec![(0, 5, 0)]);

    // Behind the watermark (T0 + 9 s), within the lateness (window end + 30 s).
    producer.send(INPUT, 1, click("a1", T0 + 1_500, "a1-late-ok-1").as_bytes())?;
    let revised = |n: usize| {
        move |c: &Counts| {
            ["*", "country=US"]
                .iter()
                .all(|s| c.versions("a1", T0, s).len() == n)
        }
    };
    counts.wait(Duration::from_secs(30), "revision 1", revised(2))?;
    producer.send(
        INPUT,
        2,
        event_json(
            "a1",
            T0 + 1_999,
            "u2",
            "1.2.3.4",
            "US",
            Some("a1-late-ok-2"),
            "impression",
        )
        .as_bytes(),
    )?;
    counts.wait(Duration::from_secs(30), "revision 2", revised(3))?;
    for slice in ["*", "country=US"] {
        assert_eq!(
            counts.versions("a1", T0, slice),
            vec![(0, 5, 0), (1, 6, 0), (2, 6, 1)],
            "slice {slice}"
        );
    }

    // Move the watermark past window end + lateness for the windows below.
    producer.send(INPUT, 0, click("a1", T0 + 40_000, "a1-w20").as_bytes())?;
    for p in 0..4 {
        producer.send(
            INPUT,
            p,
            click("tick", T0 + 60_000, &format!("tick-b-{p}")).as_bytes(),
        )?;
    }
    counts.wait(Duration::from_secs(30), "a1's window at T0+40s", |c| {
        !c.versions("a1", T0 + 40_000, "*").is_empty()
    })?;

    let too_late = [
        (1, click("a1", T0 + 300, "a1-too-late-1")),
        (
            2,
            event_json(
                "a1",
                T0 + 1_999,
                "u3",
                "5.6.7.8",
                "DE",
                Some("a1-too-late-2"),
                "impression",
            ),
        ),
        (3, click("a1", T0 + 7_000, "a1-too-late-3")),
    ];
    for (p, e) in &too_late {
        producer.send(INPUT, *p, e.as_bytes())?;
    }
    let late = side_records(
        &broker.bootstrap,
        "ad-clicks-late",
        too_late.len(),
        Duration::from_secs(30),
    )?;
    assert_eq!(late.len(), too_late.len(), "late records: {late:?}");
    let sent: BTreeSet<Vec<u8>> = too_late
        .iter()
        .map(|(_, e)| e.as_bytes().to_vec())
        .collect();
    let got: BTreeSet<Vec<u8>> = late.iter().map(|r| r.payload.clone()).collect();
    assert_eq!(got, sent, "late records are the original bytes");
    for r in &late {
        let reason = r
            .headers
            .get("reason")
            .map(String::as_str)
            .unwrap_or_default();
        assert!(
            reason.contains("allowed lateness expired"),
            "reason header: {reason:?}"
        );
        let wm: i64 = r
            .headers
            .get("watermark")
            .and_then(|w| w.parse().ok())
            .unwrap_or(i64::MIN);
        assert!(
            (T0 + 42_000..T0 + 60_000).contains(&wm),
            "watermark header {wm} (window at T0+40s closed, newest event T0+60s)"
        );
    }
    assert_eq!(
        settle_counter(&cluster, "late_events_total", 3.0, Duration::from_secs(10)),
        3.0,
        "late_events_total"
    );

    // Not counted: no new revision, and no cell for the too-late window.
    counts.poll()?;
    assert_eq!(
        counts.versions("a1", T0, "*"),
        vec![(0, 5, 0), (1, 6, 0), (2, 6, 1)]
    );
    assert!(counts.versions("a1", T0 + 6_000, "*").is_empty());
    Ok(())
}

/// Rule 3 (`dedup = "event_id"`): re-sent events are dropped whether the
/// copy arrives on the same partition, on another one, or after the window
/// closed; every dropped copy is counted exactly once.
#[test]
fn duplicates_by_event_id_across_partitions() -> Result<()> {
    let (dir, broker, config) = setup_with(
        "e2e-dedup-id",
        &config_with_job(&job(30_000, "dedup = \"event_id\""), ""),
    )?;
    create_topics(&broker.bootstrap)?;
    let producer = PartitionProducer::new(&broker.bootstrap)?;
    let clicks: Vec<String> = (0..10)
        .map(|i| click("d1", T0 + 100 + i * 10, &format!("c{i}")))
        .collect();
    let imps: Vec<String> = (0..4)
        .map(|i| {
            event_json(
                "d1",
                T0 + 200 + i * 10,
                "u9",
                "1.2.3.4",
                "US",
                Some(&format!("i{i}")),
                "impression",
            )
        })
        .collect();
    for (i, e) in clicks.iter().chain(&imps).enumerate() {
        producer.send(INPUT, i as i32 % 4, e.as_bytes())?;
    }
    // Copies: c0..c2 on their own partition, c3 and c4 on another partition,
    // c5 twice on two other partitions, impression i1 on another partition.
    let copies = [
        (0, &clicks[0]),
        (1, &clicks[1]),
        (2, &clicks[2]),
        (0, &clicks[3]),
        (1, &clicks[4]),
        (2, &clicks[5]),
        (3, &clicks[5]),
        (3, &imps[1]),
    ];
    for (p, e) in copies {
        producer.send(INPUT, p, e.as_bytes())?;
    }
    for p in 0..4 {
        producer.send(
            INPUT,
            p,
            click("tick", T0 + 10_000, &format!("tick-{p}")).as_bytes(),
        )?;
    }
    let cluster = Cluster::start(&dir, &broker.bootstrap, &config, NODES, false)?;
    let mut counts = Counts::new(&broker.bootstrap)?;
    counts.wait(Duration::from_secs(60), "d1", |c| {
        !c.versions("d1", T0, "*").is_empty()
    })?;
    assert_eq!(counts.versions("d1", T0, "*"), vec![(0, 10, 4)]);
    assert_eq!(
        settle_counter(
            &cluster,
            "duplicate_events_total",
            8.0,
            Duration::from_secs(10)
        ),
        8.0
    );

    // A copy arriving after the window closed (within lateness) is still a
    // duplicate: no revision, one more drop.
    producer.send(INPUT, 3, clicks[7].as_bytes())?;
    assert_eq!(
        settle_counter(
            &cluster,
            "duplicate_events_total",
            9.0,
            Duration::from_secs(20)
        ),
        9.0
    );
    counts.poll()?;
    assert_eq!(
        counts.versions("d1", T0, "*"),
        vec![(0, 10, 4)],
        "a duplicate must not revise the window"
    );
    Ok(())
}

/// Rule 3 (`dedup = "content"`): events without ids are deduplicated by a
/// hash of their fields, across partitions; events with ids by their id.
#[test]
fn duplicates_by_content_without_ids() -> Result<()> {
    let (dir, broker, config) = setup_with(
        "e2e-dedup-content",
        &config_with_job(&job(30_000, "dedup = \"content\""), ""),
    )?;
    create_topics(&broker.bootstrap)?;
    let producer = PartitionProducer::new(&broker.bootstrap)?;
    // Five distinct events without ids, each sent twice on two partitions.
    for i in 0..5 {
        let e = event_json(
            "k1",
            T0 + 500,
            &format!("user{i}"),
            "1.2.3.4",
            "US",
            None,
            "click",
        );
        producer.send(INPUT, i % 4, e.as_bytes())?;
        producer.send(INPUT, (i + 1) % 4, e.as_bytes())?;
    }
    // Same content with two different ids: two events.
    for id in ["x1", "x2"] {
        producer.send(
            INPUT,
            0,
            event_json("k1", T0 + 500, "user0", "1.2.3.4", "US", Some(id), "click").as_bytes(),
        )?;
    }
    // Same fields but an impression: not a copy of a click.
    producer.send(
        INPUT,
        1,
        event_json("k1", T0 + 500, "user0", "1.2.3.4", "US", None, "impression").as_bytes(),
    )?;
    for p in 0..4 {
        producer.send(
            INPUT,
            p,
            click("tick", T0 + 10_000, &format!("tick-{p}")).as_bytes(),
        )?;
    }
    let cluster = Cluster::start(&dir, &broker.bootstrap, &config, NODES, false)?;
    let mut counts = Counts::new(&broker.bootstrap)?;
    counts.wait(Duration::from_secs(60), "k1", |c| {
        !c.versions("k1", T0, "*").is_empty()
    })?;
    assert_eq!(counts.versions("k1", T0, "*"), vec![(0, 7, 1)]);
    assert_eq!(
        settle_counter(
            &cluster,
            "duplicate_events_total",
            5.0,
            Duration::from_secs(10)
        ),
        5.0
    );
    Ok(())
}
