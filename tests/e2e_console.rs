//! The operations console against a live 3-node cluster with a flowing
//! stream, in headless Chromium: the job graph lists every actor on its
//! node, the checkpoint table fills, the partition table shows the one
//! partition nobody writes to as idle, and after a kill -9 of a node the
//! graph shows the new generation and placement. Screenshots go to
//! `target/console-*.png` for review.

mod support;

use adclick_testkit::browser::{chromium, dump_dom, screenshot};
use adclick_testkit::tool_missing;
use anyhow::{Context, Result};
use serde_json::Value;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;

/// The test config's input partitions; the last gets no events.
const PARTITIONS: i32 = 4;
const IDLE_PARTITION: i32 = PARTITIONS - 1;

/// Writes events stamped with the wall clock to every partition but the
/// idle one until `stop` is set.
fn feed(bootstrap: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Result<u64>> {
    std::thread::spawn(move || {
        let p = PartitionProducer::new(&bootstrap)?;
        let topic = adclick_core::config::KafkaConfig::default().input_topic;
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            for partition in 0..IDLE_PARTITION {
                let ev = event_json(
                    &format!("ad{:03}", n % 40),
                    support::event_time::now_ms(),
                    &format!("u{n}"),
                    "10.0.0.1",
                    if n.is_multiple_of(2) { "US" } else { "KR" },
                    Some(&format!("console-{n}")),
                    "click",
                );
                p.send(&topic, partition, ev.as_bytes())?;
                n += 1;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(n)
    })
}

fn console_json(query: &str) -> Result<Value> {
    let body = http_get(query, "/v1/console")?;
    serde_json::from_str(&body).with_context(|| format!("/v1/console answered {body}"))
}

fn completed_checkpoints(c: &Value) -> usize {
    c["checkpoints"].as_array().map_or(0, |a| {
        a.iter().filter(|c| c["state"] == "completed").count()
    })
}

fn partition_idle(c: &Value, p: i32) -> Option<bool> {
    c["partitions"]
        .as_array()?
        .iter()
        .find(|x| x["partition"] == p)
        .and_then(|x| x["idle"].as_bool())
}

/// Placements of the running generation, from `adclickctl status`.
fn placements(cluster: &Cluster) -> Result<(u64, Vec<(String, String)>)> {
    let s = cluster.status_json()?;
    let g = s["generation"].as_u64().unwrap_or(0);
    let p = s["actors"]
        .as_array()
        .context("actors")?
        .iter()
        .map(|p| {
            (
                p["actor"].as_str().unwrap_or_default().to_string(),
                p["node"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    Ok((g, p))
}

fn shot(browser: &str, dir: &Path, url: &str, name: &str) -> Result<()> {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("target/console-{name}.png"));
    screenshot(browser, &dir.join(format!("profile-{name}")), url, &file)?;
    Ok(())
}

#[test]
fn the_console_shows_graph_checkpoints_idle_partition_and_a_redeploy() -> Result<()> {
    let browser = match chromium() {
        Ok(b) => b,
        Err(e) => return tool_missing("chromium", &e),
    };
    let (dir, broker, config) = setup("console", "")?;
    create_topics(&broker.bootstrap)?;
    let cluster = Cluster::start(&dir, &broker.bootstrap, &config, 3, true)?;
    let query = format!("127.0.0.1:{}", cluster.base_port + 3);
    let url = format!("http://{query}/console");
    wait_until("the job to run", Duration::from_secs(90), || {
        cluster.status_json().is_ok_and(|s| s["state"] == "running")
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = feed(broker.bootstrap.clone(), stop.clone());

    // The console's data fills: checkpoints, partitions, rates.
    wait_until(
        "checkpoints, partitions and rates",
        Duration::from_secs(90),
        || {
            console_json(&query).is_ok_and(|c| {
                completed_checkpoints(&c) >= 2
                    && partition_idle(&c, IDLE_PARTITION) == Some(true)
                    && partition_idle(&c, 0) == Some(false)
                    && c["edges"].as_array().is_some_and(|e| !e.is_empty())
                    && c["actors"]
                        .as_array()
                        .is_some_and(|a| a.iter().all(|a| a["records_in_per_s"].is_number()))
            })
        },
    )?;
    let c = console_json(&query)?;
    for e in c["edges"].as_array().into_iter().flatten() {
        assert!(
            ["OK", "LOW", "HIGH"].contains(&e["level"].as_str().unwrap_or_default()),
            "{e}"
        );
    }
    assert!(
        c["nodes"]
            .as_array()
            .is_some_and(|n| n.len() == 3 && n.iter().all(|n| n["rss_bytes"].as_u64() > Some(0))),
        "every node reports its memory: {}",
        c["nodes"]
    );
    assert!(c["serving"]["writer"]["partitions"]
        .as_array()
        .is_some_and(|p| !p.is_empty()));

    // The page, as a browser renders it.
    let (g0, before) = placements(&cluster)?;
    let dom = dump_dom(&browser, &dir.join("profile-1"), &url)?;
    std::fs::write(dir.join("console-before.html"), &dom)?;
    assert!(dom.contains("data-loaded=\"true\""), "{dom}");
    for (actor, node) in &before {
        let row = format!("data-actor=\"{actor}\" data-node=\"{node}\" data-generation=\"{g0}\"");
        assert!(
            dom.contains(&row),
            "the graph lists {actor} on {node}: {dom}"
        );
        assert!(dom.contains(&format!(
            "data-graph-actor=\"{actor}\" data-node=\"{node}\""
        )));
    }
    assert!(
        dom.contains("data-state=\"completed\""),
        "checkpoint rows: {dom}"
    );
    assert!(
        dom.contains(&format!(
            "data-partition=\"{IDLE_PARTITION}\" data-idle=\"true\""
        )),
        "the idle partition: {dom}"
    );
    assert!(dom.contains("data-partition=\"0\" data-idle=\"false\""));
    shot(&browser, &dir, &url, "before")?;

    // Backpressure is in Prometheus too.
    let metrics = http_get(&format!("127.0.0.1:{}", cluster.base_port + 40), "/metrics")?;
    for m in [
        "edge_blocked_seconds_total",
        "edge_records_total",
        "mailbox_fill",
    ] {
        assert!(metrics.contains(m), "{m} on node-0's /metrics");
    }

    // A node dies: the graph shows the new generation and placement.
    let victim = before
        .iter()
        .map(|(_, n)| n.clone())
        .find(|n| n != "node-0")
        .context("an actor off node-0")?;
    cluster.signal(&victim, "KILL")?;
    wait_until(
        "a redeploy without the killed node",
        Duration::from_secs(120),
        || {
            placements(&cluster).is_ok_and(|(g, p)| g > g0 && p.iter().all(|(_, n)| *n != victim))
                && cluster.status_json().is_ok_and(|s| s["state"] == "running")
        },
    )?;
    let (g1, after) = placements(&cluster)?;
    wait_until(
        "the console to show the new generation",
        Duration::from_secs(60),
        || {
            console_json(&query).is_ok_and(|c| {
                c["job"]["generation"] == g1
                    && c["actors"]
                        .as_array()
                        .is_some_and(|a| a.iter().all(|a| a["generation"] == g1))
            })
        },
    )?;
    let dom = dump_dom(&browser, &dir.join("profile-2"), &url)?;
    std::fs::write(dir.join("console-after.html"), &dom)?;
    assert!(dom.contains(&format!("id=\"generation\">{g1}<")), "{dom}");
    for (actor, node) in &after {
        let row = format!("data-actor=\"{actor}\" data-node=\"{node}\" data-generation=\"{g1}\"");
        assert!(
            dom.contains(&row),
            "after the kill, {actor} on {node}: {dom}"
        );
    }
    assert!(
        dom.contains(&format!("data-node-row=\"{victim}\" data-alive=\"false\"")),
        "the killed node is shown as lost: {dom}"
    );
    shot(&browser, &dir, &url, "after")?;

    // The coordinator stops answering: the console says so, and still
    // serves what it can reach.
    cluster.signal("coordinator", "STOP")?;
    let down = console_json(&query);
    cluster.signal("coordinator", "CONT")?;
    let down = down?;
    assert_eq!(down["coordinator"]["reachable"], false, "{down}");
    assert!(down["coordinator"]["error"].is_string(), "{down}");
    assert!(down["serving"]["database"].is_string(), "{down}");

    stop.store(true, Ordering::Relaxed);
    let sent = feeder
        .join()
        .map_err(|_| anyhow::anyhow!("feeder panicked"))??;
    assert!(sent > 0);
    Ok(())
}
