//! A snapshot store that runs out of space, on the real broker (tansu) with
//! a coordinator and 3 nodes. The store is a small tmpfs mounted over the
//! cluster's snapshot directory (the tests run as root); while a seeded
//! stream flows, a filler file takes all but 16 KiB: the coordinator's
//! small files still fit, the Aggregates' snapshots no longer do. Then:
//!
//! - snapshot writes fail and are counted (`snapshot_write_failures_total`
//!   on the nodes, `failed_checkpoints` in `adclickctl status`);
//! - the job keeps running on the same generation (no actor dies, nothing
//!   is redeployed) and reports `degraded`;
//! - once the filler is deleted, checkpoints complete again and the job is
//!   `running`;
//! - every final (ad, window, slice) count and top-N list equals the truth.

mod support;

use anyhow::Result;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::checkpoint_files::{complete_checkpoints, job_dir, referenced};
use support::store_fault::{fill, Tmpfs};
use support::*;

const STREAM: &[&str] = &[
    "--seed",
    "53",
    "--events",
    "24000",
    "--minutes",
    "10",
    "--disorder-ms",
    "1500",
    "--rate",
    "1000",
];

/// Bytes the snapshots of the newest complete checkpoint hold: its own
/// files and the shared objects (windows, saved output) it references.
fn newest_checkpoint_bytes(store: &Path) -> u64 {
    let Some((_, newest)) = complete_checkpoints(store)
        .ok()
        .and_then(|c| c.last().cloned())
    else {
        return 0;
    };
    let size = |p: PathBuf| std::fs::metadata(p).map_or(0, |m| m.len());
    let own: u64 = std::fs::read_dir(&newest)
        .into_iter()
        .flatten()
        .flatten()
        .map(|f| size(f.path()))
        .sum();
    let shared = job_dir(store).join("shared");
    let referenced: u64 = referenced(&newest)
        .unwrap_or_default()
        .iter()
        .map(|o| size(shared.join(o)))
        .sum();
    own + referenced
}

fn failed_checkpoints(c: &Cluster) -> u64 {
    c.status_json()
        .ok()
        .and_then(|s| s["failed_checkpoints"].as_u64())
        .unwrap_or(0)
}

#[test]
fn a_full_snapshot_store_degrades_the_job_until_space_returns() -> Result<()> {
    let (dir, broker, config) = setup("snapshot-store-full", "")?;
    let snapshots = dir.join("cluster").join("snapshots");
    let tmpfs = Tmpfs::mount(&snapshots, "32m")?;
    let env = [("ADCLICK_CHECKPOINT__TIMEOUT_MS", "3000")];
    let cluster = Cluster::start_with_env(&dir, &broker.bootstrap, &config, 3, &env)?;
    wait_until("the job to run", Duration::from_secs(60), || {
        cluster.status_json().is_ok_and(|s| s["state"] == "running")
    })?;
    let (gen, truth_path) = spawn_generate(&dir, &broker.bootstrap, &config, STREAM)?;
    wait_until(
        "checkpoints of 128 KiB and more",
        Duration::from_secs(90),
        || newest_checkpoint_bytes(&snapshots) >= 128 << 10,
    )?;
    let generation_before = generation(&cluster);
    let failed_before = failed_checkpoints(&cluster);

    let filler = snapshots.join("filler");
    fill(&filler, 16 << 10)?;
    wait_until(
        "the job to report degraded",
        Duration::from_secs(60),
        || {
            cluster
                .status_json()
                .is_ok_and(|s| s["state"] == "degraded")
        },
    )?;
    assert!(
        cluster.node_counter(3, "snapshot_write_failures_total") >= 1.0,
        "failed snapshot writes are counted"
    );
    wait_until(
        "the failed checkpoints to be counted",
        Duration::from_secs(30),
        || failed_checkpoints(&cluster) > failed_before,
    )?;
    assert_eq!(
        generation(&cluster),
        generation_before,
        "nothing was redeployed: {}",
        cluster.status()?
    );
    for p in ["coordinator", "node-0", "node-1", "node-2"] {
        assert!(cluster.alive(p), "{p} keeps running");
    }

    std::fs::remove_file(&filler)?;
    let resumed_from = cluster.status_json()?["last_checkpoint"]
        .as_u64()
        .unwrap_or(0);
    wait_until(
        "checkpoints to complete again",
        Duration::from_secs(60),
        || {
            cluster.status_json().is_ok_and(|s| {
                s["state"] == "running" && s["last_checkpoint"].as_u64() > Some(resumed_from)
            })
        },
    )?;
    assert_eq!(generation(&cluster), generation_before);

    let truth = finish_generate(gen, &truth_path)?;
    let reader = TopicReader::new(&broker.bootstrap, "ad-click-aggregates")?;
    let folded = wait_for_truth(&reader, &truth, Duration::from_secs(240))?;
    assert!(folded.conflicts.is_empty(), "{:?}", folded.conflicts);
    drop(cluster);
    drop(tmpfs);
    Ok(())
}
