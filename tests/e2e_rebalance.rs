//! Spreading the job over new nodes, on the real broker (tansu) with real
//! processes started by `deploy/local/cluster.sh`, while a seeded stream
//! flows; every final (ad, window, slice) count and top-N list must equal
//! the ground truth:
//!
//! - two nodes join a 3-node cluster (`start-one node-3`, `node-4`, beyond
//!   `ADCLICK_NODES`); `adclickctl rebalance` takes a checkpoint and
//!   redeploys over all 5;
//! - with `cluster.rebalance_on_join`, a node killed (-9) and started again
//!   after its actors moved away gets work again by itself;
//! - `adclickctl drain` moves a node's actors away and cordons it (its
//!   process stays up and idle, across a coordinator restart), refuses the
//!   last schedulable node, and `uncordon` plus `rebalance` bring it back.

mod support;

use anyhow::Result;
use std::collections::BTreeSet;
use std::time::Duration;
use support::*;

const STREAM: &[&str] = &[
    "--seed",
    "29",
    "--events",
    "24000",
    "--minutes",
    "10",
    "--disorder-ms",
    "1500",
    "--rate",
    "1000",
];

/// Nodes that host actors of the current generation.
fn hosting(c: &Cluster) -> BTreeSet<String> {
    c.ctl(&["actors"])
        .ok()
        .and_then(|a| a.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|a| a["node"].as_str().map(str::to_owned))
        .collect()
}

fn alive_nodes(c: &Cluster) -> usize {
    c.ctl(&["nodes"])
        .ok()
        .and_then(|a| a.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter(|n| n["alive"] == true)
        .count()
}

#[test]
fn two_new_nodes_join_then_rebalance_spreads_the_job() -> Result<()> {
    let (dir, broker, config) = setup("rebalance-join", "")?;
    let cluster = Cluster::start(&dir, &broker.bootstrap, &config, 3, false)?;
    // Running, not only a generation: placements are set once it is deployed.
    wait_until("first deployment", Duration::from_secs(60), || {
        cluster
            .status_json()
            .is_ok_and(|s| s["generation"].as_u64() >= Some(1) && s["state"] == "running")
    })?;
    // Nothing to do yet: every node hosts actors.
    let r = cluster.ctl(&["rebalance"])?;
    assert_eq!(r["started"], false, "{r}");
    let (gen, truth_path) = spawn_generate(&dir, &broker.bootstrap, &config, STREAM)?;
    std::thread::sleep(Duration::from_secs(4));
    let before = generation(&cluster);
    cluster.start_one("node-3", &[])?;
    cluster.start_one("node-4", &[])?;
    wait_until("5 live nodes", Duration::from_secs(30), || {
        alive_nodes(&cluster) == 5
    })?;
    // Joined nodes stay idle until asked (rebalance_on_join is off).
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(hosting(&cluster).len(), 3, "new nodes got work unasked");
    assert_eq!(generation(&cluster), before);

    let r = cluster.ctl(&["rebalance"])?;
    assert_eq!(r["started"], true, "{r}");
    assert_eq!(
        r["nodes"].as_array().map(Vec::len),
        Some(5),
        "the new generation runs on every node: {r}"
    );
    wait_until("actors on all 5 nodes", Duration::from_secs(30), || {
        hosting(&cluster).len() == 5
    })?;
    // The rebalance waited for a checkpoint of its own.
    let history = cluster.ctl(&["checkpoints", "--limit", "100"])?;
    assert!(
        history.as_array().is_some_and(|l| l
            .iter()
            .any(|c| c["trigger"] == "rebalance" && c["state"] == "completed")),
        "{history:#}"
    );
    let truth = finish_generate(gen, &truth_path)?;
    let reader = TopicReader::new(&broker.bootstrap, "ad-click-aggregates")?;
    let folded = wait_for_truth(&reader, &truth, Duration::from_secs(240))?;
    assert!(folded.conflicts.is_empty(), "{:?}", folded.conflicts);
    Ok(())
}

#[test]
fn a_restarted_node_gets_work_again_with_rebalance_on_join() -> Result<()> {
    let (dir, broker, config) = setup("rebalance-rejoin", "")?;
    let cluster = Cluster::start_with_env(
        &dir,
        &broker.bootstrap,
        &config,
        3,
        &[("ADCLICK_CLUSTER__REBALANCE_ON_JOIN", "true")],
    )?;
    // Running, not only a generation: placements are set once it is deployed.
    wait_until("first deployment", Duration::from_secs(60), || {
        cluster
            .status_json()
            .is_ok_and(|s| s["generation"].as_u64() >= Some(1) && s["state"] == "running")
    })?;
    let (gen, truth_path) = spawn_generate(&dir, &broker.bootstrap, &config, STREAM)?;
    std::thread::sleep(Duration::from_secs(4));
    let first = generation(&cluster);
    cluster.signal("node-1", "KILL")?;
    wait_until(
        "the job to move off node-1",
        Duration::from_secs(60),
        || generation(&cluster) > first && !hosting(&cluster).contains("node-1"),
    )?;
    let moved = generation(&cluster);
    cluster.start_one("node-1", &[("ADCLICK_CLUSTER__REBALANCE_ON_JOIN", "true")])?;
    wait_until(
        "node-1 to host actors again",
        Duration::from_secs(90),
        || generation(&cluster) > moved && hosting(&cluster).len() == 3,
    )?;
    let log = process_log(&cluster, "coordinator");
    assert!(log.contains("node(s) node-1 joined"), "{log}");
    let truth = finish_generate(gen, &truth_path)?;
    let reader = TopicReader::new(&broker.bootstrap, "ad-click-aggregates")?;
    let folded = wait_for_truth(&reader, &truth, Duration::from_secs(240))?;
    assert!(folded.conflicts.is_empty(), "{:?}", folded.conflicts);
    Ok(())
}

#[test]
fn drained_nodes_stay_up_and_idle_until_uncordoned() -> Result<()> {
    let (dir, broker, config) = setup("rebalance-drain", "")?;
    let cluster = Cluster::start(&dir, &broker.bootstrap, &config, 3, false)?;
    // Running, not only a generation: placements are set once it is deployed.
    wait_until("first deployment", Duration::from_secs(60), || {
        cluster
            .status_json()
            .is_ok_and(|s| s["generation"].as_u64() >= Some(1) && s["state"] == "running")
    })?;
    let (gen, truth_path) = spawn_generate(&dir, &broker.bootstrap, &config, STREAM)?;
    std::thread::sleep(Duration::from_secs(3));
    for node in ["node-2", "node-1"] {
        let r = cluster.ctl(&["drain", node])?;
        assert_eq!(r["moved"], true, "{r}");
        assert!(
            !hosting(&cluster).contains(node),
            "{node} still hosts actors"
        );
    }
    assert_eq!(hosting(&cluster), BTreeSet::from(["node-0".to_string()]));
    // The drained processes stay up, alive and cordoned.
    let nodes = cluster.ctl(&["nodes"])?;
    for n in nodes.as_array().cloned().unwrap_or_default() {
        let cordoned = n["node"] != "node-0";
        assert_eq!(n["cordoned"], cordoned, "{n}");
        assert_eq!(n["alive"], true, "{n}");
    }
    assert!(cluster.alive("node-1") && cluster.alive("node-2"));
    // Refused: the last schedulable node, an unknown one, uncordoning one
    // that is not cordoned.
    let (code, _, err) = cluster.ctl_raw(&["drain", "node-0"])?;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("last schedulable node"), "{err}");
    let (code, _, err) = cluster.ctl_raw(&["drain", "node-9"])?;
    assert!(code == Some(1) && err.contains("not registered"), "{err}");
    let (code, _, err) = cluster.ctl_raw(&["uncordon", "node-0"])?;
    assert!(code == Some(1) && err.contains("not cordoned"), "{err}");
    let (code, _, err) = cluster.ctl_raw(&["drain"])?;
    assert_eq!(code, Some(2), "a missing argument is a usage error: {err}");
    // The status says what state the job is in, since when and why.
    let status = cluster.status_json()?;
    assert_eq!(status["state"], "running", "{status}");
    assert!(status["state_since"].is_string(), "{status}");
    assert!(
        status["state_reason"]
            .as_str()
            .is_some_and(|r| r.contains("deployed")),
        "{status}"
    );
    assert_eq!(
        status["aggregate_replicas"], "3 configured, 3 deployed",
        "{status}"
    );
    // The other output formats: YAML, and tables in their column order.
    let run = |format: &str, args: &[&str]| -> Result<String> {
        let out = std::process::Command::new(ctl_bin())
            .args(["--coordinator", &cluster.coordinator, "-o", format])
            .args(cluster.token_args())
            .args(args)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let yaml = run("yaml", &["status"])?;
    assert!(
        yaml.contains("state: running") && yaml.contains("generation: "),
        "{yaml}"
    );
    let table = run("table", &["checkpoints", "--limit", "3"])?;
    assert!(
        table
            .lines()
            .next()
            .is_some_and(|h| h.starts_with("EPOCH") && h.contains("ACKS")),
        "{table}"
    );

    // The cordons survive a coordinator restart.
    let before = generation(&cluster);
    cluster.signal("coordinator", "KILL")?;
    std::thread::sleep(Duration::from_secs(1));
    cluster.start_one("coordinator", &[])?;
    wait_until(
        "the restarted coordinator to deploy",
        Duration::from_secs(60),
        || {
            cluster
                .status_json()
                .is_ok_and(|s| s["generation"].as_u64() > Some(before) && s["state"] == "running")
        },
    )?;
    assert_eq!(hosting(&cluster), BTreeSet::from(["node-0".to_string()]));

    for node in ["node-1", "node-2"] {
        cluster.ctl(&["uncordon", node])?;
    }
    let r = cluster.ctl(&["rebalance"])?;
    assert_eq!(r["nodes"].as_array().map(Vec::len), Some(3), "{r}");
    let truth = finish_generate(gen, &truth_path)?;
    let reader = TopicReader::new(&broker.bootstrap, "ad-click-aggregates")?;
    let folded = wait_for_truth(&reader, &truth, Duration::from_secs(240))?;
    assert!(folded.conflicts.is_empty(), "{:?}", folded.conflicts);
    Ok(())
}
