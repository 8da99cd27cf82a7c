//! Nodes whose wall clocks are off change no count. On the real broker
//! (tansu) with a coordinator and 3 nodes, node-0 runs 10 minutes behind
//! and node-1 10 minutes ahead (`ADCLICK_CLOCK_SKEW_MS`); node-2 is right.
//! The seeded stream's event times are around the real now, so a node that
//! judged `job.max_future_skew_ms` (5 minutes) by its own clock would send
//! the events of its partitions to the DLQ. The limit is judged against
//! each record's Kafka timestamp instead, so every final (ad, window,
//! slice) count and top-N list equals the truth, as on a cluster whose
//! clocks agree.

mod support;

use anyhow::Result;
use std::time::Duration;
use support::event_time::now_ms;
use support::*;

#[test]
fn skewed_node_clocks_change_no_count() -> Result<()> {
    let (dir, broker, config) = setup("clock-skew", "")?;
    let cluster = Cluster::start(&dir, &broker.bootstrap, &config, 3, false)?;
    wait_until("the first deployment", Duration::from_secs(60), || {
        generation(&cluster) >= 1
    })?;
    let before = generation(&cluster);
    for (node, skew) in [("node-0", "-600000"), ("node-1", "600000")] {
        cluster.signal(node, "KILL")?;
        std::thread::sleep(Duration::from_millis(300));
        cluster.start_one(node, &[("ADCLICK_CLOCK_SKEW_MS", skew)])?;
    }
    wait_until(
        "the job to run on the skewed nodes",
        Duration::from_secs(90),
        || {
            generation(&cluster) > before
                && cluster.status_json().is_ok_and(|s| {
                    s["state"] == "running"
                        && s["nodes"]
                            .as_array()
                            .is_some_and(|n| n.iter().filter(|x| x["alive"] == true).count() == 3)
                })
        },
    )?;
    // Event times from two minutes ago: 8 minutes in the future for node-0.
    let start = (now_ms() - 120_000).to_string();
    let stream = [
        "--seed",
        "71",
        "--events",
        "12000",
        "--minutes",
        "10",
        "--start",
        &start,
        "--rate",
        "2000",
    ];
    let truth = generate(&dir, &broker.bootstrap, &config, &stream)?;
    let reader = TopicReader::new(&broker.bootstrap, "ad-click-aggregates")?;
    let folded = wait_for_truth(&reader, &truth, Duration::from_secs(180))?;
    assert!(folded.conflicts.is_empty(), "{:?}", folded.conflicts);
    let actors = cluster.ctl(&["actors"])?;
    let maps_on_skewed = actors.as_array().is_some_and(|a| {
        a.iter().any(|x| {
            x["actor"].as_str().is_some_and(|n| n.starts_with("map-"))
                && x["node"].as_str().is_some_and(|n| n == "node-0")
        })
    });
    assert!(maps_on_skewed, "a Map ran on the slow node: {actors}");
    Ok(())
}
