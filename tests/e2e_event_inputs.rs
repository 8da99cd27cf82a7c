//! End-to-end tests of event-time correctness (issue 3), continued: named
//! filters, impressions next to clicks (CTR), bounded resources (huge
//! fields, absurd timestamps; the flood of distinct ads is in
//! `e2e_window_limit.rs`) and the metrics that make all of it visible. Real
//! broker, 3-node cluster, exact values.

mod support;

use anyhow::{bail, Result};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};
use support::event_time::*;
use support::*;

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
            .filter(|r| &*r.slice == "*" && r.window_start == T0)
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
