//! Graceful shutdown, as Kubernetes does it: SIGTERM, then SIGKILL after the
//! grace period. A node that gets SIGTERM has the coordinator take a
//! checkpoint and move its actors away before it exits, without waiting for
//! a heartbeat timeout; it rejoins cleanly under the same name. The
//! coordinator takes a final checkpoint before it exits. The output still
//! equals the ground truth.

mod support;

use anyhow::Result;
use std::time::Duration;
use support::*;

const STREAM: &[&str] = &[
    "--seed",
    "23",
    "--events",
    "16000",
    "--minutes",
    "6",
    "--disorder-ms",
    "1500",
    "--rate",
    "1200",
];

fn status(c: &Cluster) -> serde_json::Value {
    c.status_json().unwrap_or(serde_json::Value::Null)
}

fn num(v: &serde_json::Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

/// `key=<number>` from the first log line that contains `line_has`.
fn logged_number(log: &str, line_has: &str, key: &str) -> Option<u64> {
    let line = log.lines().find(|l| l.contains(line_has))?;
    let rest = &line[line.find(&format!("{key}="))? + key.len() + 1..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[test]
fn sigterm_drains_a_node_and_the_coordinator_checkpoints_before_exit() -> Result<()> {
    let (dir, broker, config) = setup("graceful", "")?;
    let cluster = Cluster::start(&dir, &broker.bootstrap, &config, 3, false)?;
    wait_until("first deployment", Duration::from_secs(60), || {
        num(&status(&cluster), "generation") >= 1
    })?;
    let (gen, truth_path) = spawn_generate(&dir, &broker.bootstrap, &config, STREAM)?;
    wait_until("a first checkpoint", Duration::from_secs(60), || {
        num(&status(&cluster), "last_checkpoint") >= 1
    })?;

    // SIGTERM a node mid-stream.
    let before = status(&cluster);
    cluster.signal("node-2", "TERM")?;
    wait_until("node-2 to exit", Duration::from_secs(60), || {
        !cluster.alive("node-2")
    })?;
    let node_log = process_log(&cluster, "node-2");
    assert!(
        node_log.contains("drain complete") && node_log.contains("moved=true"),
        "node-2 drained before it exited:\n{node_log}"
    );
    let drained_at = logged_number(&node_log, "drain complete", "checkpoint").unwrap_or(0);
    assert!(
        drained_at > num(&before, "last_checkpoint"),
        "a checkpoint was taken for the drain ({drained_at} after {})",
        before["last_checkpoint"]
    );
    let after = status(&cluster);
    assert!(num(&after, "generation") > num(&before, "generation"));
    let on_node2: Vec<&serde_json::Value> = after["actors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["node"] == "node-2")
        .collect();
    assert!(on_node2.is_empty(), "actors left on node-2: {on_node2:?}");
    let coord_log = process_log(&cluster, "coordinator");
    assert!(
        coord_log.contains("node node-2 draining") && !coord_log.contains("node node-2 lost"),
        "the move was the drain, not a heartbeat timeout:\n{coord_log}"
    );
    let node_row = |s: &serde_json::Value| {
        s["nodes"]
            .as_array()
            .and_then(|n| n.iter().find(|n| n["node"] == "node-2").cloned())
            .unwrap_or(serde_json::Value::Null)
    };
    assert_eq!(node_row(&after)["draining"], true, "{after}");

    // The pod comes back under the same name and rejoins cleanly.
    cluster.start_one("node-2", &[])?;
    wait_until("node-2 to rejoin", Duration::from_secs(30), || {
        let row = node_row(&status(&cluster));
        row["alive"] == true && row["draining"] == false
    })?;

    // SIGTERM the coordinator: one more checkpoint, complete and committed.
    let last = num(&status(&cluster), "last_checkpoint");
    cluster.signal("coordinator", "TERM")?;
    wait_until("the coordinator to exit", Duration::from_secs(60), || {
        !cluster.alive("coordinator")
    })?;
    let coord_log = process_log(&cluster, "coordinator");
    let final_epoch = logged_number(&coord_log, "final checkpoint complete", "epoch");
    assert!(
        final_epoch.is_some_and(|e| e > last),
        "final checkpoint after {last}: {final_epoch:?}\n{coord_log}"
    );
    cluster.start_one("coordinator", &[])?;

    let truth = finish_generate(gen, &truth_path)?;
    let reader = TopicReader::new(&broker.bootstrap, "ad-click-aggregates")?;
    let folded = wait_for_truth(&reader, &truth, Duration::from_secs(240))?;
    assert!(folded.conflicts.is_empty(), "{:?}", folded.conflicts);
    Ok(())
}
