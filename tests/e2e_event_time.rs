//! End-to-end tests of event-time correctness (issue 3), one per rule, each
//! against a real broker and a 3-node cluster, with exact expected values:
//! idle partitions, allowed lateness and the late side output, duplicates
//! (by id and by content), named filters, impressions next to clicks (CTR),
//! bounded resources and the metrics that make all of it visible.
//!
//! Events are written by hand to explicit partitions, so every expected
//! count, revision, late record and duplicate is known exactly.

mod support;

use adclick_core::output::{CountRecord, OutputRecord};
use anyhow::{bail, Result};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};
use support::*;

const INPUT: &str = "ad-clicks";
const NODES: u32 = 3;
/// Window size of every test config, ms.
const W: i64 = 2_000;
/// A window-aligned event time in the past (2020-09-13), for tests that
/// drive the watermark with their own events only.
const T0: i64 = 1_600_000_000_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn click(ad: &str, ts: i64, id: &str) -> String {
    event_json(ad, ts, "u1", "1.2.3.4", "US", Some(id), "click")
}

/// Every count record read from the aggregates topic, in order, so tests can
/// check revisions and not only final values.
struct Counts {
    reader: TopicReader,
    all: Vec<CountRecord>,
}

impl Counts {
    fn new(bootstrap: &str) -> Result<Self> {
        Ok(Self {
            reader: TopicReader::new(bootstrap, "ad-click-aggregates")?,
            all: Vec::new(),
        })
    }

    fn poll(&mut self) -> Result<()> {
        for p in self.reader.drain(Duration::from_millis(300)) {
            if let OutputRecord::Count(c) = serde_json::from_slice(&p)? {
                self.all.push(c);
            }
        }
        Ok(())
    }

    /// Distinct (revision, clicks, impressions) emitted for one cell, in
    /// revision order (at-least-once may repeat a record).
    fn versions(&self, ad: &str, start: i64, slice: &str) -> Vec<(u32, u64, u64)> {
        let set: BTreeSet<_> = self
            .all
            .iter()
            .filter(|c| c.ad_id == ad && c.window_start == start && c.slice == slice)
            .map(|c| (c.revision, c.clicks, c.impressions))
            .collect();
        set.into_iter().collect()
    }

    /// Newest (clicks, impressions) of every (ad, window, slice).
    fn latest(&self) -> HashMap<(String, i64, String), (u64, u64)> {
        let mut best: HashMap<(String, i64, String), (u32, u64, u64)> = HashMap::new();
        for c in &self.all {
            let e = best
                .entry((c.ad_id.clone(), c.window_start, c.slice.clone()))
                .or_insert((c.revision, c.clicks, c.impressions));
            if c.revision > e.0 {
                *e = (c.revision, c.clicks, c.impressions);
            }
        }
        best.into_iter().map(|(k, (_, c, i))| (k, (c, i))).collect()
    }

    /// Polls until `done` holds or `timeout` passes.
    fn wait(&mut self, timeout: Duration, what: &str, done: impl Fn(&Self) -> bool) -> Result<()> {
        let start = Instant::now();
        loop {
            self.poll()?;
            if done(self) {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!(
                    "timed out after {timeout:?} waiting for {what}; {} count records read",
                    self.all.len()
                );
            }
        }
    }
}

/// Expected (clicks, impressions) per (ad, window start, slice).
type Expected = BTreeMap<(String, i64, String), (u64, u64)>;

/// Differences between `expected` and the newest emitted values of those keys.
fn missing(counts: &Counts, expected: &Expected) -> Vec<String> {
    let latest = counts.latest();
    expected
        .iter()
        .filter_map(|(k, want)| match latest.get(k) {
            Some(got) if got == want => None,
            got => Some(format!("{k:?}: got {got:?}, want {want:?}")),
        })
        .collect()
}

/// Polls a node counter (summed over nodes) until it equals `want` and stays
/// there for a second, or `timeout` passes; returns the last value.
fn settle_counter(cluster: &Cluster, name: &str, want: f64, timeout: Duration) -> f64 {
    let start = Instant::now();
    let mut equal_since: Option<Instant> = None;
    loop {
        let v = cluster.node_counter(NODES, name);
        if v == want {
            let since = *equal_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(1) {
                return v;
            }
        } else {
            equal_since = None;
        }
        if start.elapsed() > timeout {
            return v;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until the Map actors have read `n` records in total.
fn wait_events_in(cluster: &Cluster, n: f64) -> Result<()> {
    let start = Instant::now();
    while cluster.node_counter(NODES, "events_in_total") < n {
        if start.elapsed() > Duration::from_secs(60) {
            bail!("the cluster did not read {n} events within 60 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// Side-topic records, polled until `n` arrived (then a little longer, to
/// catch extras) or `timeout` passes.
fn side_records(
    bootstrap: &str,
    topic: &str,
    n: usize,
    timeout: Duration,
) -> Result<Vec<SideRecord>> {
    let reader = TopicReader::new(bootstrap, topic)?;
    let start = Instant::now();
    let mut out = Vec::new();
    while out.len() < n && start.elapsed() < timeout {
        out.extend(reader.drain_with_headers(Duration::from_millis(500)));
    }
    out.extend(reader.drain_with_headers(Duration::from_secs(2)));
    Ok(out)
}

/// Job settings shared by the tests that drive time with their own events:
/// 2 s windows, 1 s out-of-orderness, 3 s idleness.
fn job(lateness_ms: i64, more: &str) -> String {
    format!(
        "window_secs = 2\nmax_out_of_orderness_ms = 1000\nidle_timeout_ms = 3000\nallowed_lateness_ms = {lateness_ms}\n{more}"
    )
}

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

const FILTERS: &str = r#"
[[slices.filters]]
id = "na_kr"
country = ["US", "KR"]

[[slices.filters]]
id = "low_ips"
ip = ["0.0.0.0/1", "10.0.0.0/8"]

[[slices.filters]]
id = "not_de"
mode = "exclude"
country = ["DE"]

[[slices.filters]]
id = "us_high_ips"
country = ["US"]
ip = ["128.0.0.0/1"]
"#;

/// Rule 4: every named filter is aggregated as its own slice, next to `*`
/// and the country dimension, and equals the independently computed truth.
#[test]
fn named_filters_are_their_own_slices() -> Result<()> {
    let users: Vec<String> = (0..300).map(|i| format!("\"user{i}\"")).collect();
    let filters = format!(
        "{FILTERS}\n[[slices.filters]]\nid = \"vip\"\nuser_id = [{}]\n",
        users.join(", ")
    );
    let (dir, broker, config) = setup("e2e-filters", &filters)?;
    let truth = generate(
        &dir,
        &broker.bootstrap,
        &config,
        &[
            "--seed",
            "11",
            "--events",
            "6000",
            "--minutes",
            "4",
            "--disorder-ms",
            "1000",
        ],
    )?;
    let mut per_filter: BTreeMap<&str, u64> = BTreeMap::new();
    for c in &truth.counts {
        *per_filter.entry(c.slice.as_str()).or_default() += c.clicks;
    }
    for f in ["na_kr", "low_ips", "not_de", "us_high_ips", "vip"] {
        assert!(
            per_filter.get(f).is_some_and(|n| *n > 0),
            "the data never exercises filter {f}: {per_filter:?}"
        );
    }
    assert!(
        per_filter["not_de"] < per_filter["*"] && per_filter["us_high_ips"] < per_filter["na_kr"]
    );

    let _cluster = Cluster::start(&dir, &broker.bootstrap, &config, NODES, false)?;
    let reader = TopicReader::new(&broker.bootstrap, "ad-click-aggregates")?;
    let folded = wait_for_truth(&reader, &truth, Duration::from_secs(120))?;
    let slices: BTreeSet<&str> = folded.counts.keys().map(|(s, _, _)| s.as_str()).collect();
    for f in ["*", "na_kr", "low_ips", "not_de", "us_high_ips", "vip"] {
        assert!(
            slices.contains(f),
            "slice {f} missing from output: {slices:?}"
        );
    }
    Ok(())
}

/// Rule 4: a bad filter definition stops the coordinator at startup with a
/// message that names the filter.
#[test]
fn bad_filter_is_rejected_at_startup_by_name() -> Result<()> {
    let dir = adclick_testkit::temp_dir("e2e-bad-filter");
    let cases = [
        ("broken_cidr", "[[slices.filters]]\nid = \"broken_cidr\"\nip = [\"10.0.0.0/33\"]\n", "CIDR"),
        ("no_predicate", "[[slices.filters]]\nid = \"no_predicate\"\n", "no predicate"),
        (
            "twice",
            "[[slices.filters]]\nid = \"twice\"\ncountry = [\"US\"]\n[[slices.filters]]\nid = \"twice\"\ncountry = [\"DE\"]\n",
            "twice",
        ),
    ];
    for (name, toml, problem) in cases {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, test_config(toml))?;
        let mut child = std::process::Command::new(bin())
            .args(["coordinator", "--config"])
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if start.elapsed() > Duration::from_secs(30) {
                child.kill()?;
                child.wait()?;
                bail!("coordinator with filter {name} did not exit");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(
            &mut child.stderr.take().expect("piped stderr"),
            &mut stderr,
        )?;
        assert!(!status.success(), "{name}: exit status {status}");
        assert!(
            stderr.contains(&format!("\"{name}\"")) && stderr.contains(problem),
            "{name}: stderr does not name it: {stderr}"
        );
    }
    Ok(())
}

/// Rule 5: impressions are counted next to clicks in every slice (country
/// dimension and named filters too), so CTR = clicks / impressions can be
/// served; an ad with impressions only still gets its rows.
#[test]
fn impressions_are_counted_in_every_slice() -> Result<()> {
    let extra = "[[slices.filters]]\nid = \"us_only\"\ncountry = [\"US\"]\n";
    let (dir, broker, config) = setup_with("e2e-ctr", &config_with_job(&job(30_000, ""), extra))?;
    create_topics(&broker.bootstrap)?;
    let producer = PartitionProducer::new(&broker.bootstrap)?;
    let mut n = 0;
    let mut send = |ad: &str, country: &str, kind: &str, times: usize| -> Result<()> {
        for _ in 0..times {
            n += 1;
            let e = event_json(
                ad,
                T0 + 10 * n as i64,
                "u",
                "1.2.3.4",
                country,
                Some(&format!("e{n}")),
                kind,
            );
            producer.send(INPUT, n % 4, e.as_bytes())?;
        }
        Ok(())
    };
    send("c1", "US", "click", 3)?;
    send("c1", "DE", "click", 2)?;
    send("c1", "US", "impression", 10)?;
    send("c1", "DE", "impression", 5)?;
    send("c2", "US", "impression", 4)?;
    for p in 0..4 {
        producer.send(
            INPUT,
            p,
            click("tick", T0 + 10_000, &format!("tick-{p}")).as_bytes(),
        )?;
    }
    let _cluster = Cluster::start(&dir, &broker.bootstrap, &config, NODES, false)?;
    let mut counts = Counts::new(&broker.bootstrap)?;
    let key = |ad: &str, slice: &str| (ad.to_string(), T0, slice.to_string());
    let expected: Expected = [
        (key("c1", "*"), (5, 15)),
        (key("c1", "country=US"), (3, 10)),
        (key("c1", "country=DE"), (2, 5)),
        (key("c1", "us_only"), (3, 10)),
        (key("c2", "*"), (0, 4)),
        (key("c2", "country=US"), (0, 4)),
        (key("c2", "us_only"), (0, 4)),
    ]
    .into_iter()
    .collect();
    counts.wait(Duration::from_secs(60), "c1 and c2", |c| {
        missing(c, &expected).is_empty()
    })?;
    counts.poll()?;
    let rows: BTreeSet<_> = counts
        .all
        .iter()
        .filter(|c| c.ad_id.starts_with('c') && c.window_start == T0)
        .map(|c| (c.ad_id.clone(), c.slice.clone()))
        .collect();
    assert_eq!(rows.len(), expected.len(), "unexpected rows: {rows:?}");
    Ok(())
}

/// Rule 6: a 1 MB `ad_id`, a timestamp in 2100 and one before 1970 go to the
/// dead-letter topic with a reason; a (valid) 1970 timestamp is simply very
/// late and goes to the late topic without creating state; and the state of
/// thousands of distinct ads is dropped once their windows expire.
#[test]
fn adversarial_inputs_stay_bounded() -> Result<()> {
    let (dir, broker, config) = setup_with(
        "e2e-bounded",
        &config_with_job(&job(2_000, "top_windows = [1, 2]"), ""),
    )?;
    create_topics(&broker.bootstrap)?;
    let producer = PartitionProducer::new(&broker.bootstrap)?;
    let ads = 2_000;
    for i in 0..ads {
        producer.send(
            INPUT,
            i % 4,
            click(&format!("m{i}"), T0 + 500, &format!("m{i}")).as_bytes(),
        )?;
    }
    for p in 0..4 {
        producer.send(
            INPUT,
            p,
            click("tick", T0 + 4_000, &format!("tick-{p}")).as_bytes(),
        )?;
    }
    let cluster = Cluster::start(&dir, &broker.bootstrap, &config, NODES, false)?;
    let mut counts = Counts::new(&broker.bootstrap)?;
    counts.wait(Duration::from_secs(60), "every distinct ad", |c| {
        c.all
            .iter()
            .filter(|r| r.slice == "*" && r.window_start == T0)
            .count()
            >= ads as usize
    })?;
    // The state is there right after the window closed...
    let cells = cluster
        .node_samples(NODES, "aggregate_cells")
        .iter()
        .map(|(_, v)| v)
        .sum::<f64>();
    assert!(
        cells >= ads as f64,
        "aggregate_cells {cells} right after the window closed"
    );

    let big = format!(
        r#"{{"ad_id":"{}","click_timestamp":{},"user_id":"u","ip":"1.2.3.4","country":"US"}}"#,
        "x".repeat(1 << 20),
        T0 + 4_100
    );
    let future = click("f1", 4_102_444_800_000, "future"); // 2100-01-01
    let negative = click("n1", -5, "negative");
    let epoch = click("e1", 0, "epoch"); // 1970-01-01: valid, but very late
    producer.send(INPUT, 0, big.as_bytes())?;
    producer.send(INPUT, 1, future.as_bytes())?;
    producer.send(INPUT, 2, negative.as_bytes())?;
    producer.send(INPUT, 3, epoch.as_bytes())?;

    let dlq = side_records(
        &broker.bootstrap,
        "ad-clicks-dlq",
        3,
        Duration::from_secs(30),
    )?;
    let mut reasons: Vec<(usize, String)> = dlq
        .iter()
        .map(|r| {
            (
                r.payload.len(),
                r.headers.get("reason").cloned().unwrap_or_default(),
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 3, "dead letters: {reasons:?}");
    // The oversized record is kept as a 256 KiB prefix with its real size.
    let cut = dlq
        .iter()
        .find(|r| r.headers.get("original.size") == Some(&big.len().to_string()));
    assert!(
        cut.is_some_and(|r| big.as_bytes().starts_with(&r.payload) && r.payload.len() == 256 * 1024),
        "no cut copy of the 1 MB record"
    );
    assert!(
        reasons
            .iter()
            .any(|(_, r)| r.contains("ad_id") && r.contains("max_field_len")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|(_, r)| r.contains("ahead of wall clock")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|(_, r)| r.contains("before 1970")),
        "{reasons:?}"
    );
    let late = side_records(
        &broker.bootstrap,
        "ad-clicks-late",
        1,
        Duration::from_secs(30),
    )?;
    assert_eq!(late.len(), 1, "{late:?}");
    assert_eq!(late[0].payload, epoch.as_bytes());
    assert_eq!(
        settle_counter(&cluster, "dlq_events_total", 3.0, Duration::from_secs(10)),
        3.0
    );
    assert_eq!(
        settle_counter(&cluster, "late_events_total", 1.0, Duration::from_secs(10)),
        1.0
    );

    // ...and gone once the windows expired (lateness + 2 windows after their
    // end), without any further event: idle sources keep time moving.
    let start = Instant::now();
    loop {
        let cells: f64 = cluster
            .node_samples(NODES, "aggregate_cells")
            .iter()
            .map(|(_, v)| v)
            .sum();
        if cells == 0.0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "aggregate_cells still {cells}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    counts.poll()?;
    assert!(
        counts.all.iter().all(|c| c.window_start >= T0),
        "a 1970 window was emitted"
    );
    Ok(())
}

/// Rule 7: `/metrics` shows the watermark lag of every partition, which
/// partitions are idle, and exact late, duplicate and dead-letter counts.
#[test]
fn metrics_show_lag_idleness_late_duplicates_and_dead_letters() -> Result<()> {
    let ooo = 1_000.0;
    let (dir, broker, config) = setup_with("e2e-metrics", &config_with_job(&job(2_000, ""), ""))?;
    create_topics(&broker.bootstrap)?;
    let cluster = Cluster::start(&dir, &broker.bootstrap, &config, NODES, false)?;
    let producer = PartitionProducer::new(&broker.bootstrap)?;
    for p in 0..4 {
        producer.send(
            INPUT,
            p,
            click("warm", now_ms(), &format!("warm-{p}")).as_bytes(),
        )?;
    }
    wait_events_in(&cluster, 4.0)?;
    // Partitions 0..2 produce at wall-clock speed; partition 3 stays quiet.
    let start = Instant::now();
    let mut k = 0;
    let mut checked = false;
    while start.elapsed() < Duration::from_secs(10) {
        let mut first = String::new();
        for p in 0..3 {
            let e = click(&format!("a{p}"), now_ms(), &format!("a{p}-{k}"));
            producer.send(INPUT, p, e.as_bytes())?;
            if p == 0 {
                first = e;
            }
        }
        match k {
            // A copy of the event just sent to partition 0, on partition 1.
            10 => producer.send(INPUT, 1, first.as_bytes())?,
            20 => producer.send(INPUT, 0, b"not json")?,
            30 => producer.send(
                INPUT,
                2,
                click("old", now_ms() - 60_000, "old-1").as_bytes(),
            )?,
            _ => {}
        }
        k += 1;
        std::thread::sleep(Duration::from_millis(100));
        if !checked && start.elapsed() > Duration::from_secs(7) {
            let idle: HashMap<String, f64> = cluster
                .node_samples(NODES, "partition_idle")
                .into_iter()
                .collect();
            assert_eq!(idle.get("partition=\"3\""), Some(&1.0), "{idle:?}");
            for p in 0..3 {
                assert_eq!(
                    idle.get(&format!("partition=\"{p}\"")),
                    Some(&0.0),
                    "{idle:?}"
                );
            }
            let lag: HashMap<String, f64> = cluster
                .node_samples(NODES, "watermark_lag_ms")
                .into_iter()
                .collect();
            for p in 0..3 {
                let l = lag
                    .get(&format!("partition=\"{p}\""))
                    .copied()
                    .unwrap_or(f64::NAN);
                assert!(
                    (ooo..ooo + 3_000.0).contains(&l),
                    "active partition {p} lag {l}: {lag:?}"
                );
            }
            let quiet = lag.get("partition=\"3\"").copied().unwrap_or(f64::NAN);
            assert!(
                quiet >= ooo + 6_000.0,
                "quiet partition lag {quiet}: {lag:?}"
            );
            checked = true;
        }
    }
    assert!(checked);
    assert_eq!(
        settle_counter(
            &cluster,
            "duplicate_events_total",
            1.0,
            Duration::from_secs(10)
        ),
        1.0,
        "duplicates"
    );
    assert_eq!(
        settle_counter(&cluster, "dlq_events_total", 1.0, Duration::from_secs(10)),
        1.0,
        "dead letters"
    );
    assert_eq!(
        settle_counter(&cluster, "late_events_total", 1.0, Duration::from_secs(10)),
        1.0,
        "late events"
    );
    Ok(())
}
