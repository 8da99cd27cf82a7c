//! Stored offsets that no longer match their topic. A cluster with the
//! writer runs a seeded stream on one broker (tansu); then the same run
//! directory (so the same SQLite database and snapshot store, where
//! `cluster.sh` keeps them) is pointed at a new broker whose topics are
//! fresh. Resuming would silently skip every record before the stored
//! offsets, so:
//!
//! - the writer refuses to start, naming the output topic, the partition
//!   and both offsets;
//! - the coordinator does not restore the checkpoint: the job goes to
//!   `failed` with the input topic, partition and offsets as the reason;
//! - with `on_offset_mismatch = "reset"` both start, log the reset and
//!   count it in `offset_resets_total`.
//!
//! Also run against the previous broker's data by `e2e_serving`, where a
//! writer killed mid-stream resumes: tansu reports a partition's end up to
//! one batch short, which the check must not take for a recreated topic.

mod support;

use anyhow::Result;
use std::time::Duration;
use support::*;

const STREAM: &[&str] = &["--seed", "41", "--events", "6000", "--minutes", "4"];

fn writer_metrics(c: &Cluster) -> String {
    http_get(&format!("127.0.0.1:{}", c.base_port + 2), "/metrics").unwrap_or_default()
}

#[test]
fn a_recreated_topic_is_refused_then_reset_on_request() -> Result<()> {
    // The check allows the configured rewind past a partition's end (tansu
    // reports the end up to one record batch short); a small rewind keeps
    // this test's few thousand records well beyond it.
    let job = "window_secs = 2\nmax_out_of_orderness_ms = 3000\nidle_timeout_ms = 3000\n\
               allowed_lateness_ms = 60000\nsource_rewind_records = 100";
    // One count record per message, so the writer's stored offsets, too,
    // run well beyond the allowed rewind (packed, a partition of this
    // stream holds fewer messages than that).
    let toml = config_with_job(job, "\n[writer]\nresume_rewind_records = 100\n").replace(
        "output_partitions = 4\n",
        "output_partitions = 4\ncounts_per_message = 1\n",
    );
    assert!(toml.contains("counts_per_message = 1"));
    let (dir, broker, config) = setup_with("offsets-recreated", &toml)?;
    {
        let cluster = Cluster::start(&dir, &broker.bootstrap, &config, 2, true)?;
        generate(&dir, &broker.bootstrap, &config, STREAM)?;
        wait_until(
            "the writer to store rows and the job to checkpoint",
            Duration::from_secs(120),
            || {
                metric_sum(&writer_metrics(&cluster), "writer_batches_total") >= 1.0
                    && cluster
                        .status_json()
                        .is_ok_and(|s| s["last_checkpoint"].as_u64() >= Some(3))
            },
        )?;
        // Let the writer catch up with the last windows.
        std::thread::sleep(Duration::from_secs(3));
        assert!(
            cluster.run_dir.join("adclick.db").is_file(),
            "cluster.sh keeps the database in its run directory"
        );
    }
    drop(broker);

    // The same run directory on a new, empty broker.
    let fresh = adclick_testkit::Broker::start(&adclick_testkit::temp_dir("offsets-fresh"))?;
    let cluster = Cluster::start(&dir, &fresh.bootstrap, &config, 2, true)?;
    wait_until("the writer to refuse", Duration::from_secs(60), || {
        !cluster.alive("writer")
    })?;
    let log = process_log(&cluster, "writer");
    assert!(
        log.contains(
            "stored offsets do not match the topic: topic ad-click-aggregates partition 0"
        ) && log.contains("is beyond the partition's end 0")
            && log.contains("on_offset_mismatch"),
        "the writer names the mismatch:\n{log}"
    );
    wait_until("the job to fail", Duration::from_secs(60), || {
        cluster.status_json().is_ok_and(|s| s["state"] == "failed")
    })?;
    let status = cluster.status_json()?;
    let reason = status["state_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("does not match the input: topic ad-clicks partition 0")
            && reason.contains("is beyond the partition's end"),
        "{status}"
    );

    // Reset on request: both run, and say so.
    let reset = [
        ("ADCLICK_WRITER__ON_OFFSET_MISMATCH", "reset"),
        ("ADCLICK_JOB__ON_OFFSET_MISMATCH", "reset"),
    ];
    cluster.start_one("writer", &reset)?;
    cluster.signal("coordinator", "KILL")?;
    std::thread::sleep(Duration::from_millis(500));
    cluster.start_one("coordinator", &reset)?;
    wait_until(
        "the job to run after the reset",
        Duration::from_secs(90),
        || cluster.status_json().is_ok_and(|s| s["state"] == "running"),
    )?;
    wait_until(
        "the writer's reset to be counted",
        Duration::from_secs(30),
        || metric_sum(&writer_metrics(&cluster), "offset_resets_total") >= 1.0,
    )?;
    assert!(cluster.alive("writer"));
    wait_until(
        "the Maps' resets to be counted",
        Duration::from_secs(30),
        || cluster.node_counter(2, "offset_resets_total") >= 1.0,
    )?;
    Ok(())
}
