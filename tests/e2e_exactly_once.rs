//! Exactly-once under failures: real processes are killed (SIGKILL),
//! paused (SIGSTOP) and restarted while a seeded stream flows. The final
//! value of every (ad, window, slice) and every top-N list read back with
//! read_committed must equal the ground truth. A repeated record with the
//! same (producer, epoch, key, revision) and the same value is tolerated;
//! a wrong final value or two different values for one version never are.

mod support;

use anyhow::Result;
use std::time::{Duration, Instant};
use support::*;

const STREAM: &[&str] = &[
    "--seed",
    "11",
    "--events",
    "24000",
    "--minutes",
    "10",
    "--disorder-ms",
    "1500",
    "--rate",
    "1200",
];

#[test]
fn kill_nodes_mid_stream_loses_nothing() -> Result<()> {
    let (dir, broker, config) = setup("eo-kill", "")?;
    let cluster = Cluster::start(&dir, &broker.bootstrap, &config, 3, false)?;
    wait_until("first deployment", Duration::from_secs(60), || {
        generation(&cluster) >= 1
    })?;
    let (gen, truth_path) = spawn_generate(&dir, &broker.bootstrap, &config, STREAM)?;
    // Deterministic "random" victims and moments.
    let victims = ["node-1", "node-2", "node-0"];
    let pauses = [3500u64, 4200, 3100];
    for (victim, pause) in victims.iter().zip(pauses) {
        std::thread::sleep(Duration::from_millis(pause));
        let before = generation(&cluster);
        cluster.signal(victim, "KILL")?;
        wait_until("redeploy after kill", Duration::from_secs(30), || {
            generation(&cluster) > before
        })?;
        cluster.start_one(victim, &[])?;
    }
    let truth = finish_generate(gen, &truth_path)?;
    let reader = TopicReader::new(&broker.bootstrap, "ad-click-aggregates")?;
    let folded = wait_for_truth(&reader, &truth, Duration::from_secs(240))?;
    assert!(folded.conflicts.is_empty(), "{:?}", folded.conflicts);
    assert!(
        generation(&cluster) >= 4,
        "three kills must cause three redeploys"
    );
    assert_every_malformed_record_is_dead_lettered(&broker.bootstrap, truth.malformed)
}

/// Every malformed record reached the DLQ. A replay after a failure may
/// write one again, with the same source identity, so consumers can drop
/// the copy; none may be missing.
fn assert_every_malformed_record_is_dead_lettered(bootstrap: &str, malformed: u64) -> Result<()> {
    let dlq = TopicReader::new(bootstrap, "ad-clicks-dlq")?;
    let mut sources = std::collections::BTreeSet::new();
    let start = Instant::now();
    while (sources.len() as u64) < malformed && start.elapsed() < Duration::from_secs(60) {
        for r in dlq.drain_with_headers(Duration::from_millis(500)) {
            let h = |k: &str| r.headers.get(k).cloned().unwrap_or_default();
            sources.insert((h("source.partition"), h("source.offset")));
        }
    }
    assert!(malformed > 0, "the stream must contain malformed records");
    assert_eq!(sources.len() as u64, malformed, "distinct dead letters");
    Ok(())
}

#[test]
fn failed_dead_letter_writes_are_counted_and_written_again() -> Result<()> {
    // The first two DLQ or late-topic writes of every node fail, as a
    // broker refusing them would (a fail point): the writing actor fails,
    // the failure is counted, and the recovery writes the record again.
    let (dir, broker, config) = setup("eo-side-fail", "")?;
    let env = [("ADCLICK_FAILPOINT", "side_write_error:2")];
    let cluster = Cluster::start_with_env(&dir, &broker.bootstrap, &config, 3, &env)?;
    wait_until("first deployment", Duration::from_secs(60), || {
        generation(&cluster) >= 1
    })?;
    let truth = generate(&dir, &broker.bootstrap, &config, STREAM)?;
    let reader = TopicReader::new(&broker.bootstrap, "ad-click-aggregates")?;
    let folded = wait_for_truth(&reader, &truth, Duration::from_secs(240))?;
    assert!(folded.conflicts.is_empty(), "{:?}", folded.conflicts);
    assert!(
        cluster.node_counter(3, "side_write_failures_total") >= 2.0,
        "failed side writes are counted"
    );
    assert!(
        generation(&cluster) >= 2,
        "the failing actor was recovered: {}",
        cluster.status()?
    );
    assert_every_malformed_record_is_dead_lettered(&broker.bootstrap, truth.malformed)
}

#[test]
fn crash_after_checkpoint_before_commit_commits_it_exactly_once() -> Result<()> {
    let (dir, broker, config) = setup("eo-crash-commit", "")?;
    let truth = generate(
        &dir,
        &broker.bootstrap,
        &config,
        &[
            "--seed",
            "12",
            "--events",
            "8000",
            "--minutes",
            "6",
            "--disorder-ms",
            "1500",
        ],
    )?;
    // Every node aborts when its first checkpoint completes, before its
    // sinks commit (fail point compiled in with --features failpoints).
    let cluster = crash_every_node_before_commit(&dir, &broker.bootstrap, &config)?;
    let committed_before = TopicReader::new(&broker.bootstrap, "ad-click-aggregates")?
        .drain(Duration::from_secs(2))
        .len();
    for n in ["node-0", "node-1", "node-2"] {
        cluster.start_one(n, &[])?;
    }
    let reader = TopicReader::new(&broker.bootstrap, "ad-click-aggregates")?;
    let folded = wait_for_truth(&reader, &truth, Duration::from_secs(180))?;
    assert!(folded.conflicts.is_empty(), "{:?}", folded.conflicts);
    assert!(
        logs_contain(
            &cluster,
            "committing output saved in the restored checkpoint"
        ),
        "recovery did not commit the saved epoch"
    );
    assert_eq!(
        committed_before, 0,
        "nothing may be visible before the crashed commit is recovered"
    );
    Ok(())
}

#[test]
fn paused_zombie_node_does_not_change_output() -> Result<()> {
    let (dir, broker, config) = setup("eo-zombie", "")?;
    let cluster = Cluster::start(&dir, &broker.bootstrap, &config, 3, false)?;
    wait_until("first deployment", Duration::from_secs(60), || {
        generation(&cluster) >= 1
    })?;
    let (gen, truth_path) = spawn_generate(&dir, &broker.bootstrap, &config, STREAM)?;
    std::thread::sleep(Duration::from_secs(4));
    let before = generation(&cluster);
    cluster.signal("node-1", "STOP")?;
    wait_until(
        "the paused node to be replaced",
        Duration::from_secs(30),
        || generation(&cluster) > before,
    )?;
    std::thread::sleep(Duration::from_secs(2));
    cluster.signal("node-1", "CONT")?;
    let truth = finish_generate(gen, &truth_path)?;
    let reader = TopicReader::new(&broker.bootstrap, "ad-click-aggregates")?;
    let folded = wait_for_truth(&reader, &truth, Duration::from_secs(240))?;
    assert!(folded.conflicts.is_empty(), "{:?}", folded.conflicts);
    Ok(())
}

#[test]
fn coordinator_killed_and_restarted_carries_on() -> Result<()> {
    let (dir, broker, config) = setup("eo-coordinator", "")?;
    let cluster = Cluster::start(&dir, &broker.bootstrap, &config, 3, false)?;
    wait_until("first deployment", Duration::from_secs(60), || {
        generation(&cluster) >= 1
    })?;
    let (gen, truth_path) = spawn_generate(&dir, &broker.bootstrap, &config, STREAM)?;
    std::thread::sleep(Duration::from_secs(6));
    let last_checkpoint = cluster.status_json()?["last_checkpoint"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        last_checkpoint > 0,
        "checkpoints must complete before the crash"
    );
    cluster.signal("coordinator", "KILL")?;
    std::thread::sleep(Duration::from_secs(1));
    cluster.start_one("coordinator", &[])?;
    wait_until(
        "the restarted coordinator to redeploy",
        Duration::from_secs(60),
        || {
            cluster
                .status_json()
                .is_ok_and(|s| s["generation"].as_u64() > Some(1) && s["state"] == "running")
        },
    )?;
    let truth = finish_generate(gen, &truth_path)?;
    let reader = TopicReader::new(&broker.bootstrap, "ad-click-aggregates")?;
    let folded = wait_for_truth(&reader, &truth, Duration::from_secs(240))?;
    assert!(folded.conflicts.is_empty(), "{:?}", folded.conflicts);
    // Epochs continue after the restart instead of starting over.
    let status = cluster.status_json()?;
    assert!(
        status["last_checkpoint"].as_u64() > Some(last_checkpoint),
        "{status}"
    );
    Ok(())
}

#[test]
fn empty_epochs_and_manual_checkpoints_keep_the_job_healthy() -> Result<()> {
    let (dir, broker, config) = setup("eo-empty", "")?;
    let truth = generate(
        &dir,
        &broker.bootstrap,
        &config,
        &["--seed", "13", "--events", "4000", "--minutes", "4"],
    )?;
    let cluster = Cluster::start(&dir, &broker.bootstrap, &config, 3, false)?;
    let reader = TopicReader::new(&broker.bootstrap, "ad-click-aggregates")?;
    wait_for_truth(&reader, &truth, Duration::from_secs(180))?;
    // No more input: the following epochs carry no output at all.
    let first = cluster.status_json()?["last_checkpoint"]
        .as_u64()
        .unwrap_or(0);
    let triggered = cluster.ctl(&["checkpoint"])?["triggered_epoch"]
        .as_u64()
        .unwrap_or(0);
    assert!(triggered > first);
    wait_until("empty epochs to complete", Duration::from_secs(30), || {
        cluster
            .status_json()
            .is_ok_and(|s| s["last_checkpoint"].as_u64() >= Some(triggered.max(first + 3)))
    })?;
    let status = cluster.status_json()?;
    assert_eq!(status["state"], "running", "{status}");
    assert_eq!(status["failed_checkpoints"], 0, "{status}");
    // The history lists them, newest first: the manual one among periodic
    // ones, each completed one acked by every actor.
    let history = cluster.ctl(&["checkpoints", "--limit", "50"])?;
    let rows = history.as_array().cloned().unwrap_or_default();
    let manual = rows
        .iter()
        .find(|c| c["epoch"].as_u64() == Some(triggered))
        .cloned()
        .unwrap_or_default();
    assert_eq!(manual["trigger"], "manual", "{history:#}");
    assert_eq!(manual["state"], "completed", "{history:#}");
    assert!(manual["duration_ms"].is_u64(), "{manual}");
    assert!(
        rows.iter()
            .any(|c| c["trigger"] == "interval" && c["state"] == "completed"),
        "{history:#}"
    );
    let epochs: Vec<u64> = rows.iter().filter_map(|c| c["epoch"].as_u64()).collect();
    assert!(
        epochs.windows(2).all(|w| w[0] > w[1]),
        "newest first: {epochs:?}"
    );
    for c in rows.iter().filter(|c| c["state"] == "completed") {
        let acks = c["acks"].as_str().unwrap_or_default();
        let (got, want) = acks.split_once('/').unwrap_or_default();
        assert_eq!(got, want, "a completed checkpoint has every ack: {c}");
    }
    // And nothing new (no duplicate, no stray record) was written.
    let extra = reader.drain(Duration::from_secs(2));
    assert!(
        extra.is_empty(),
        "empty epochs wrote {} records",
        extra.len()
    );
    Ok(())
}

#[test]
fn stalled_checkpoints_report_degraded_and_recover() -> Result<()> {
    let (dir, broker, config) = setup("eo-degraded", "")?;
    let truth = generate(
        &dir,
        &broker.bootstrap,
        &config,
        &["--seed", "14", "--events", "4000", "--minutes", "4"],
    )?;
    let cluster = Cluster::start(&dir, &broker.bootstrap, &config, 3, false)?;
    wait_until("checkpoints to complete", Duration::from_secs(60), || {
        cluster
            .status_json()
            .is_ok_and(|s| s["last_checkpoint"].as_u64() >= Some(2) && s["state"] == "running")
    })?;
    // Pause every node: no checkpoint can complete, and no live node is left
    // to redeploy on. After 3 intervals the status must say so.
    for n in ["node-0", "node-1", "node-2"] {
        cluster.signal(n, "STOP")?;
    }
    wait_until("status to report degraded", Duration::from_secs(30), || {
        cluster
            .status_json()
            .is_ok_and(|s| s["state"] == "degraded")
    })?;
    // The checkpoint history shows the one the paused nodes never acked,
    // aborted by checkpoint.timeout_ms, with how many acks it had.
    let mut aborted = serde_json::Value::Null;
    wait_until(
        "a checkpoint aborted by its timeout",
        Duration::from_secs(30),
        || {
            let Ok(list) = cluster.ctl(&["checkpoints"]) else {
                return false;
            };
            let found = list.as_array().and_then(|l| {
                l.iter()
                    .find(|c| {
                        c["state"] == "aborted"
                            && c["reason"]
                                .as_str()
                                .is_some_and(|r| r.contains("timed out"))
                    })
                    .cloned()
            });
            found.map(|c| aborted = c).is_some()
        },
    )?;
    let acks = aborted["acks"].as_str().unwrap_or_default().to_owned();
    let (got, want) = acks.split_once('/').unwrap_or_default();
    assert!(
        got.parse::<u32>().ok() < want.parse::<u32>().ok(),
        "an aborted checkpoint lacks acks: {aborted}"
    );
    assert!(
        aborted["duration_ms"].is_u64(),
        "an aborted checkpoint records how long it ran: {aborted}"
    );
    for n in ["node-0", "node-1", "node-2"] {
        cluster.signal(n, "CONT")?;
    }
    wait_until("status to recover", Duration::from_secs(60), || {
        cluster.status_json().is_ok_and(|s| s["state"] == "running")
    })?;
    let reader = TopicReader::new(&broker.bootstrap, "ad-click-aggregates")?;
    let folded = wait_for_truth(&reader, &truth, Duration::from_secs(180))?;
    assert!(folded.conflicts.is_empty(), "{:?}", folded.conflicts);
    Ok(())
}
