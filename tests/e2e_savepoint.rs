//! Savepoints, stop and restore on the real broker (tansu) with real
//! processes started by `deploy/local/cluster.sh`, while a seeded stream
//! flows; every final (ad, window, slice) count and top-N list must equal
//! the ground truth:
//!
//! - `savepoint` takes one that outlives checkpoint retention; `stop`
//!   stops the job with another (the nodes stay up and idle, the job stays
//!   stopped across a coordinator restart); what a stopped job refuses
//!   (scale, savepoint, a missing or corrupt savepoint, deleting the one it
//!   resumes from); `restore` with another Aggregate count carries on
//!   exactly while events kept arriving;
//! - `stop --drain` emits every open window: with a 10-minute idle timeout
//!   the last windows would otherwise never close.

mod support;

use anyhow::{Context, Result};
use std::path::PathBuf;
use std::time::Duration;
use support::*;

const STREAM: &[&str] = &[
    "--seed",
    "53",
    "--events",
    "30000",
    "--minutes",
    "10",
    "--disorder-ms",
    "1500",
    "--rate",
    "1000",
];

fn state(c: &Cluster) -> String {
    c.status_json()
        .ok()
        .and_then(|s| s["state"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The directory of checkpoint `epoch` in the local snapshot store.
fn checkpoint_dir(c: &Cluster, epoch: u64) -> PathBuf {
    c.run_dir
        .join("snapshots/checkpoints/adclick")
        .join(format!("{epoch:020}"))
}

fn savepoint_ids(c: &Cluster) -> Vec<String> {
    c.ctl(&["savepoints"])
        .ok()
        .and_then(|l| l.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|s| s["id"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn stop_with_a_savepoint_and_restore_it_with_other_replicas() -> Result<()> {
    let (dir, broker, config) = setup("savepoint-stop-restore", "")?;
    let env = [("ADCLICK_JOB__IDLE_TIMEOUT_MS", "600000")];
    let cluster = Cluster::start_with_env(&dir, &broker.bootstrap, &config, 3, &env)?;
    wait_until("first deployment", Duration::from_secs(60), || {
        state(&cluster) == "running"
    })?;
    let (gen, truth_path) = spawn_generate(&dir, &broker.bootstrap, &config, STREAM)?;
    std::thread::sleep(Duration::from_secs(3));

    let sp = cluster.ctl(&["savepoint"])?;
    let first = sp["id"].as_str().context("savepoint id")?.to_owned();
    let first_epoch = sp["epoch"].as_u64().context("savepoint epoch")?;
    // Retention (3 checkpoints, one per second) does not delete it.
    std::thread::sleep(Duration::from_secs(6));
    assert!(checkpoint_dir(&cluster, first_epoch)
        .join("_metadata")
        .is_file());
    assert!(savepoint_ids(&cluster).contains(&first));

    let stopped = cluster.ctl(&["stop"])?;
    let id = stopped["savepoint"]
        .as_str()
        .context("stop savepoint")?
        .to_owned();
    let status = cluster.status_json()?;
    assert_eq!(status["state"], "stopped", "{status}");
    assert_eq!(status["stopped_savepoint"], id.as_str(), "{status}");
    assert_eq!(status["actors"].as_array().map(Vec::len), Some(0));
    assert!(["node-0", "node-1", "node-2"]
        .iter()
        .all(|n| cluster.alive(n)));

    // Still stopped after a coordinator restart.
    cluster.signal("coordinator", "TERM")?;
    wait_until("the coordinator to exit", Duration::from_secs(30), || {
        !cluster.alive("coordinator")
    })?;
    cluster.start_one("coordinator", &env)?;
    wait_until("the coordinator back", Duration::from_secs(30), || {
        cluster.status_json().is_ok()
    })?;
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(state(&cluster), "stopped");

    // What a stopped job refuses, each with exit code 1 and the reason.
    let corrupt = checkpoint_dir(&cluster, first_epoch).join("reduce-0");
    std::fs::write(&corrupt, b"\xff\xff\xff not a snapshot")?;
    for (args, needle) in [
        (vec!["scale", "aggregate", "4"], "stopped"),
        (vec!["savepoint"], "stopped"),
        (vec!["restore", "sp-999999"], "no savepoint sp-999999"),
        (vec!["restore", &first], "reduce-0 is corrupt"),
        (vec!["savepoint", "delete", &id], "resumes from"),
        (vec!["stop"], "stopped"),
    ] {
        let (code, _, err) = cluster.ctl_raw(&args)?;
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let (code, _, err) = cluster.ctl_raw(&["restore", &id, "--aggregate-replicas", "0"])?;
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(state(&cluster), "stopped", "refusals change nothing");
    let r = cluster.ctl(&["savepoint", "delete", &first])?;
    assert!(
        r["message"].as_str().is_some_and(|m| m.contains("deleted")),
        "{r}"
    );
    assert_eq!(savepoint_ids(&cluster), vec![id.clone()]);

    // Events kept arriving while stopped; the restored job reads them.
    let r = cluster.ctl(&["restore", &id, "--aggregate-replicas", "2"])?;
    assert_eq!(r["aggregates"], 2, "{r}");
    let truth = finish_generate(gen, &truth_path)?;
    std::thread::sleep(Duration::from_secs(3));
    // The last windows close only because of the drain (10-minute idle
    // timeout), and the job commits them before it stops.
    cluster.ctl(&["stop", "--drain"])?;
    let status = cluster.status_json()?;
    assert_eq!(status["drained"], true, "{status}");
    let reader = TopicReader::new(&broker.bootstrap, "ad-click-aggregates")?;
    let folded = wait_for_truth(&reader, &truth, Duration::from_secs(60))?;
    assert!(folded.conflicts.is_empty(), "{:?}", folded.conflicts);
    Ok(())
}
