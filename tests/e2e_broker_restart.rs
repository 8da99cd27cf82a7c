//! The broker restarts mid-stream, twice. tansu runs on its SQLite storage,
//! so it keeps its data; it is killed (SIGKILL) and started again on the
//! same port while `adclick gen` produces a seeded stream and a coordinator,
//! 3 nodes, the writer and the query service run. The Map sources, the
//! sinks, the coordinator and the writer reconnect on their own. When the
//! stream ends, the output topic and the database both equal the ground
//! truth: every (ad, window, slice) count and every top-N list, nothing
//! lost and nothing counted twice.

mod serving_support;
mod support;

use adclick_testkit::{temp_dir, Broker};
use anyhow::Result;
use serving_support::truth::wait_for_database;
use std::time::Duration;
use support::*;

const STREAM: &[&str] = &[
    "--seed",
    "61",
    "--events",
    "30000",
    "--minutes",
    "10",
    "--disorder-ms",
    "1500",
    "--rate",
    "1000",
];

fn events_in(c: &Cluster) -> f64 {
    c.node_counter(3, "events_in_total")
}

#[test]
fn broker_restarts_mid_stream_lose_and_double_nothing() -> Result<()> {
    let dir = temp_dir("broker-restart");
    let mut broker = Broker::start_persistent(&dir)?;
    let config = dir.join("adclick.toml");
    std::fs::write(&config, test_config(""))?;
    let cluster = Cluster::start(&dir, &broker.bootstrap, &config, 3, true)?;
    wait_until("the job to run", Duration::from_secs(60), || {
        cluster.status_json().is_ok_and(|s| s["state"] == "running")
    })?;
    let (gen, truth_path) = spawn_generate(&dir, &broker.bootstrap, &config, STREAM)?;
    for round in 1..=2 {
        let seen = events_in(&cluster);
        wait_until("more events to be read", Duration::from_secs(60), || {
            events_in(&cluster) > seen + 4000.0
        })?;
        broker.restart()?;
        eprintln!("broker restarted ({round})");
    }
    let truth = finish_generate(gen, &truth_path)?;
    let reader = TopicReader::new(&broker.bootstrap, "ad-click-aggregates")?;
    let folded = wait_for_truth(&reader, &truth, Duration::from_secs(240))?;
    assert!(folded.conflicts.is_empty(), "{:?}", folded.conflicts);
    let url = format!("sqlite://{}", cluster.run_dir.join("adclick.db").display());
    wait_for_database(&url, &truth, Duration::from_secs(120))?;
    Ok(())
}
