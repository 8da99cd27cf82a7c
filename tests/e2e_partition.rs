//! A network partition of one node, made with a network namespace and a
//! veth pair: the node runs in its own namespace and reaches the broker,
//! the coordinator and the other nodes only through the veth. Cutting the
//! veth isolates it while its process keeps running (unlike kill -9). The
//! coordinator must declare it lost and redeploy its actors on the others;
//! when the partition heals, the node learns from its first heartbeat that
//! a newer generation exists and stops its stale actors, which never wrote
//! their uncommitted output. The output topic must still equal the ground
//! truth for every (ad, window, slice).
//!
//! Needs root and `ip` (iproute2); under `CI=true` their absence fails.

mod support;

use anyhow::{Context, Result};
use std::path::PathBuf;
use std::time::Duration;
use support::netns::{root_and_ip, Netns};
use support::procs::{ctl_at as ctl, Procs};
use support::*;

fn placements(s: &serde_json::Value) -> Vec<(String, String)> {
    s["actors"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["actor"].as_str().unwrap_or_default().to_string(),
                p["node"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_partitioned_node_is_replaced_and_fenced_when_it_heals() -> Result<()> {
    if let Err(e) = root_and_ip() {
        return adclick_testkit::tool_missing("ip netns", &e);
    }
    let ns = Netns::create(0)?;
    let dir = adclick_testkit::temp_dir("partition");
    let broker = adclick_testkit::Broker::start_on_host(&dir, &ns.root_ip)?;
    let port = |_: ()| adclick_testkit::free_port();
    let coordinator = format!("{}:{}", ns.root_ip, port(()));
    let config: PathBuf = dir.join("adclick.toml");
    std::fs::write(&config, test_config(""))?;
    // Every process (and `ip netns exec` passes its environment on) dials
    // the root namespace's address.
    let env = vec![
        (
            "ADCLICK_CLUSTER__COORDINATOR".to_string(),
            coordinator.clone(),
        ),
        ("ADCLICK_CLUSTER__NODES".to_string(), "3".to_string()),
        (
            "ADCLICK_KAFKA__BOOTSTRAP".to_string(),
            broker.bootstrap.clone(),
        ),
        (
            "ADCLICK_CHECKPOINT__STORE".to_string(),
            dir.join("snapshots").display().to_string(),
        ),
    ];
    let conf = config.display().to_string();
    let s = |v: &str| v.to_string();
    let mut procs = Procs::new(&dir, env);
    procs.spawn(
        "coordinator",
        None,
        vec![
            s("coordinator"),
            s("--config"),
            conf.clone(),
            s("--ops-addr"),
            format!("127.0.0.1:{}", port(())),
        ],
    )?;
    for i in 0..3 {
        let (host, netns) = if i == 2 {
            (ns.ns_ip.clone(), Some(ns.name.as_str()))
        } else {
            (ns.root_ip.clone(), None)
        };
        procs.spawn(
            &format!("node-{i}"),
            netns,
            vec![
                s("node"),
                s("--config"),
                conf.clone(),
                s("--node-id"),
                format!("node-{i}"),
                s("--listen"),
                format!("{host}:{}", port(())),
                s("--ops-addr"),
                format!("127.0.0.1:{}", port(())),
            ],
        )?;
    }
    wait_until("the job to run on 3 nodes", Duration::from_secs(90), || {
        ctl(&coordinator, &["status"]).is_ok_and(|s| {
            s["state"] == "running" && placements(&s).iter().any(|(_, n)| n == "node-2")
        })
    })?;
    let before = ctl(&coordinator, &["status"])?;
    let g0 = before["generation"].as_u64().context("generation")?;

    let (gen, truth_path) = spawn_generate(
        &dir,
        &broker.bootstrap,
        &config,
        &[
            "--seed",
            "23",
            "--events",
            "24000",
            "--minutes",
            "8",
            "--rate",
            "1500",
        ],
    )?;
    std::thread::sleep(Duration::from_secs(3));
    ns.cut()?;
    wait_until(
        "node-2 lost and its actors moved",
        Duration::from_secs(90),
        || {
            ctl(&coordinator, &["status"]).is_ok_and(|s| {
                s["state"] == "running"
                    && s["generation"].as_u64() > Some(g0)
                    && placements(&s).iter().all(|(_, n)| n != "node-2")
            })
        },
    )?;
    // The node still runs, cut off, with its old actors.
    std::thread::sleep(Duration::from_secs(4));
    ns.heal()?;
    wait_until(
        "the healed node to stop its stale actors",
        Duration::from_secs(60),
        || {
            procs
                .log("node-2")
                .contains("replaced by a newer generation")
        },
    )?;

    let truth = finish_generate(gen, &truth_path)?;
    let reader = TopicReader::new(&broker.bootstrap, "ad-click-aggregates")?;
    let folded = wait_for_truth(&reader, &truth, Duration::from_secs(240))?;
    assert!(folded.conflicts.is_empty(), "{:?}", folded.conflicts);
    let after = ctl(&coordinator, &["status"])?;
    let node2 = after["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["node"] == "node-2")
        .cloned();
    assert!(
        node2.is_some_and(|n| n["alive"] == true),
        "the healed node is back in the pool: {after}"
    );
    Ok(())
}
