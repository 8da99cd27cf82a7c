//! Restoring and deploying when things go wrong, on the real broker (tansu)
//! with a coordinator and 3 nodes started by `deploy/local/cluster.sh`:
//!
//! - while a seeded stream flows, every process is killed (SIGKILL) and the
//!   three newest complete checkpoints are damaged: one Aggregate snapshot
//!   deleted, a Reduce snapshot truncated, a bit flipped in another
//!   Aggregate snapshot. Restarted, the coordinator must not restore any of
//!   them (an actor would start empty or wrong and lose counts): it names
//!   each damaged object and restores the newest whole checkpoint;
//! - the coordinator restarts with another `job.map_parallelism` (4 Maps
//!   become 2): each partition resumes from the offset the Map that read it
//!   saved, whichever Map now reads it (deduplication is off, so a
//!   partition read again from its start would double its counts);
//! - deployments that nodes apply but answer with an error (a fail point)
//!   are retried with backoff, the job is `failed` with the reason once
//!   `cluster.deploy_retries` is reached, and `adclickctl rebalance` deploys
//!   it again; a single such error is retried until the job runs.
//!
//! Every final (ad, window, slice) and top-N list equals the truth.

mod support;

use anyhow::{Context, Result};
use std::collections::BTreeSet;
use std::time::Duration;
use support::checkpoint_files::*;
use support::*;

const STREAM: &[&str] = &[
    "--seed",
    "23",
    "--events",
    "24000",
    "--minutes",
    "10",
    "--disorder-ms",
    "1500",
    "--rate",
    "1200",
];

const PROCESSES: [&str; 4] = ["coordinator", "node-0", "node-1", "node-2"];

/// Starts every process again and waits for the job to run.
fn restart_all(cluster: &Cluster) -> Result<()> {
    for p in PROCESSES {
        cluster.start_one(p, &[])?;
    }
    wait_until("the restarted job to run", Duration::from_secs(60), || {
        cluster
            .status_json()
            .is_ok_and(|s| s["generation"].as_u64() > Some(1) && s["state"] == "running")
    })
}

#[test]
fn damaged_checkpoints_are_skipped_for_the_newest_whole_one() -> Result<()> {
    let (dir, broker, config) = setup("restore-damaged", "")?;
    let env = [("ADCLICK_CHECKPOINT__RETAIN", "6")];
    let cluster = Cluster::start_with_env(&dir, &broker.bootstrap, &config, 3, &env)?;
    wait_until("first deployment", Duration::from_secs(60), || {
        generation(&cluster) >= 1
    })?;
    let (gen, truth_path) = spawn_generate(&dir, &broker.bootstrap, &config, STREAM)?;
    let store = cluster.run_dir.join("snapshots");
    wait_until("four complete checkpoints", Duration::from_secs(90), || {
        complete_checkpoints(&store).is_ok_and(|c| c.len() >= 4)
    })?;
    for p in PROCESSES {
        cluster.signal(p, "KILL")?;
    }
    std::thread::sleep(Duration::from_secs(1));
    let complete = complete_checkpoints(&store)?;
    let [.., (whole, _), (flipped, flipped_dir), (cut, cut_dir), (newest, newest_dir)] =
        complete.as_slice()
    else {
        anyhow::bail!("fewer than four complete checkpoints: {complete:?}");
    };
    // The newest misses an Aggregate's snapshot, the one before has a
    // truncated Reduce snapshot, the one before that a flipped bit in an
    // Aggregate's snapshot.
    let victim = newest_dir.join("aggregate-1");
    std::fs::remove_file(&victim).with_context(|| format!("{}", victim.display()))?;
    let reduce = cut_dir.join("reduce-0");
    let bytes = std::fs::read(&reduce).with_context(|| format!("{}", reduce.display()))?;
    std::fs::write(&reduce, &bytes[..bytes.len() / 2])?;
    let aggregate = flipped_dir.join("aggregate-0");
    let mut bytes =
        std::fs::read(&aggregate).with_context(|| format!("{}", aggregate.display()))?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x04;
    std::fs::write(&aggregate, &bytes)?;

    restart_all(&cluster)?;
    let log = process_log(&cluster, "coordinator");
    let skipped = |epoch: &u64, why: &str| {
        log.lines().any(|l| {
            l.contains("checkpoint cannot be restored")
                && l.contains(&format!("epoch={epoch}"))
                && l.contains(why)
        })
    };
    for (epoch, why) in [
        (newest, "snapshots missing for aggregate-1"),
        (cut, "reduce-0 (truncated"),
        (flipped, "aggregate-0 (checksum mismatch"),
    ] {
        assert!(
            skipped(epoch, why),
            "the coordinator says checkpoint {epoch} is skipped ({why}):\n{log}"
        );
    }
    assert!(
        log.contains(&format!("restore_epoch={whole}")),
        "the coordinator restores checkpoint {whole}:\n{log}"
    );
    let truth = finish_generate(gen, &truth_path)?;
    let reader = TopicReader::new(&broker.bootstrap, "ad-click-aggregates")?;
    let folded = wait_for_truth(&reader, &truth, Duration::from_secs(240))?;
    assert!(folded.conflicts.is_empty(), "{:?}", folded.conflicts);
    Ok(())
}

#[test]
fn deploys_answered_with_errors_are_retried_then_the_job_fails_until_asked() -> Result<()> {
    let (dir, broker, config) = setup("deploy-retry", "")?;
    let truth = generate(
        &dir,
        &broker.bootstrap,
        &config,
        &["--seed", "31", "--events", "4000", "--minutes", "4"],
    )?;
    let cluster = Cluster::start_with_env(
        &dir,
        &broker.bootstrap,
        &config,
        3,
        &[
            ("ADCLICK_FAILPOINT", "deploy_error_always"),
            ("ADCLICK_CLUSTER__DEPLOY_RETRIES", "3"),
        ],
    )?;
    wait_until("the job to fail", Duration::from_secs(60), || {
        cluster.status_json().is_ok_and(|s| s["state"] == "failed")
    })?;
    let status = cluster.status_json()?;
    let reason = status["state_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("3 deployments failed") && reason.contains("fail point"),
        "{status}"
    );
    assert_eq!(
        status["last_checkpoint"], 0,
        "no checkpoint while failed: {status}"
    );
    let log = process_log(&cluster, "coordinator");
    assert!(
        log.contains("retrying the failed deployment (attempt 2)"),
        "{log}"
    );

    // The nodes come back with a single lost answer each; the operator asks
    // again; the retry after that error runs the job.
    for n in ["node-0", "node-1", "node-2"] {
        cluster.signal(n, "KILL")?;
    }
    std::thread::sleep(Duration::from_secs(1));
    for n in ["node-0", "node-1", "node-2"] {
        cluster.start_one(n, &[("ADCLICK_FAILPOINT", "deploy_error_after_apply")])?;
    }
    wait_until(
        "the nodes to register again",
        Duration::from_secs(30),
        || {
            cluster.ctl(&["nodes"]).is_ok_and(|n| {
                n.as_array()
                    .is_some_and(|l| l.iter().filter(|x| x["alive"] == true).count() == 3)
            })
        },
    )?;
    let r = cluster.ctl(&["rebalance", "--no-wait"])?;
    assert_eq!(r["started"], true, "{r}");
    wait_until(
        "the job to run and checkpoint",
        Duration::from_secs(90),
        || {
            cluster
                .status_json()
                .is_ok_and(|s| s["state"] == "running" && s["last_checkpoint"].as_u64() >= Some(2))
        },
    )?;
    let reader = TopicReader::new(&broker.bootstrap, "ad-click-aggregates")?;
    let folded = wait_for_truth(&reader, &truth, Duration::from_secs(180))?;
    assert!(folded.conflicts.is_empty(), "{:?}", folded.conflicts);
    Ok(())
}

#[test]
fn partitions_keep_their_saved_offsets_when_the_maps_change() -> Result<()> {
    let job = "window_secs = 2\nmax_out_of_orderness_ms = 3000\nidle_timeout_ms = 3000\nallowed_lateness_ms = 60000\ndedup = \"none\"";
    let (dir, broker, config) = setup_with("restore-maps", &config_with_job(job, ""))?;
    let cluster = Cluster::start(&dir, &broker.bootstrap, &config, 3, false)?;
    wait_until("first deployment", Duration::from_secs(60), || {
        generation(&cluster) >= 1
    })?;
    let stream = [STREAM, &["--duplicate-every", "0"]].concat();
    let (gen, truth_path) = spawn_generate(&dir, &broker.bootstrap, &config, &stream)?;
    wait_until("checkpoints with offsets", Duration::from_secs(60), || {
        cluster
            .status_json()
            .is_ok_and(|s| s["last_checkpoint"].as_u64() >= Some(4))
    })?;
    let maps = |c: &Cluster| -> BTreeSet<String> {
        c.ctl(&["actors"])
            .ok()
            .and_then(|a| a.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|a| a["actor"].as_str().map(str::to_owned))
            .filter(|a| a.starts_with("map-"))
            .collect()
    };
    assert_eq!(maps(&cluster).len(), 4, "one Map per input partition");
    let before = generation(&cluster);
    cluster.signal("coordinator", "KILL")?;
    std::thread::sleep(Duration::from_secs(1));
    cluster.start_one("coordinator", &[("ADCLICK_JOB__MAP_PARALLELISM", "2")])?;
    wait_until(
        "the job to run with 2 Maps",
        Duration::from_secs(60),
        || generation(&cluster) > before && maps(&cluster).len() == 2,
    )?;
    let truth = finish_generate(gen, &truth_path)?;
    let reader = TopicReader::new(&broker.bootstrap, "ad-click-aggregates")?;
    let folded = wait_for_truth(&reader, &truth, Duration::from_secs(240))?;
    assert!(folded.conflicts.is_empty(), "{:?}", folded.conflicts);
    Ok(())
}

#[test]
fn incremental_checkpoints_share_unchanged_windows_and_retention_keeps_what_they_reference(
) -> Result<()> {
    let (dir, broker, config) = setup("restore-incremental", "")?;
    let env = [("ADCLICK_CHECKPOINT__RETAIN", "3")];
    let cluster = Cluster::start_with_env(&dir, &broker.bootstrap, &config, 3, &env)?;
    wait_until("first deployment", Duration::from_secs(60), || {
        generation(&cluster) >= 1
    })?;
    let (gen, truth_path) = spawn_generate(&dir, &broker.bootstrap, &config, STREAM)?;
    let store = cluster.run_dir.join("snapshots");
    let epoch_of = object_epoch;
    // A checkpoint that wrote a window and referenced others written
    // before it: only what changed was written. The kill waits until the
    // two newest checkpoints (the one restored below is one of them) also
    // hold a window left unchanged for two checkpoints, which is closed:
    // the replay after the restore cannot touch it, so the restored
    // generation has a window it must reference rather than write. (An
    // open window is rightly rewritten once the replay adds to it.)
    let settled =
        |e: u64, r: &BTreeSet<String>| r.iter().any(|o| o.contains("/w") && epoch_of(o) + 2 <= e);
    wait_until(
        "a checkpoint referencing unchanged windows",
        Duration::from_secs(90),
        || {
            complete_checkpoints(&store).is_ok_and(|c| {
                let wrote_and_referenced = c.last().is_some_and(|(e, d)| {
                    referenced(d).is_ok_and(|r| {
                        let windows: Vec<&String> = r.iter().filter(|o| o.contains("/w")).collect();
                        windows.iter().any(|o| epoch_of(o) == *e)
                            && windows.iter().any(|o| epoch_of(o) < *e)
                    })
                });
                wrote_and_referenced
                    && c.len() >= 2
                    && c[c.len() - 2..]
                        .iter()
                        .all(|(e, d)| referenced(d).is_ok_and(|r| settled(*e, &r)))
            })
        },
    )?;
    for p in PROCESSES {
        cluster.signal(p, "KILL")?;
    }
    std::thread::sleep(Duration::from_secs(1));
    // Every window a kept checkpoint references is there.
    let complete = complete_checkpoints(&store)?;
    let on_disk = shared_objects(&store)?;
    for (e, d) in &complete {
        for o in referenced(d)? {
            assert!(
                on_disk.contains(&o),
                "checkpoint {e} references {o}, which is gone"
            );
        }
    }
    // Losing a window written by the newest checkpoint makes that
    // checkpoint unrestorable: the one before it is restored, exactly.
    let (newest, newest_dir) = complete.last().context("no complete checkpoint")?;
    let lost = referenced(newest_dir)?
        .into_iter()
        .find(|o| o.contains("/w") && epoch_of(o) == *newest)
        .with_context(|| format!("checkpoint {newest} wrote no window"))?;
    std::fs::remove_file(store.join("checkpoints/adclick/shared").join(&lost))?;
    restart_all(&cluster)?;
    let log = process_log(&cluster, "coordinator");
    assert!(
        log.lines()
            .any(|l| l.contains("checkpoint cannot be restored")
                && l.contains(&format!("epoch={newest}"))
                && l.contains(&format!("shared object {lost} missing"))),
        "the coordinator skips checkpoint {newest}, whose window {lost} is lost:\n{log}"
    );
    // The restored Aggregates reference the windows they restored instead
    // of writing them again: a checkpoint of the new generation references
    // windows written before the kill.
    wait_until(
        "a restored generation's checkpoint referencing restored windows",
        Duration::from_secs(90),
        || {
            complete_checkpoints(&store).is_ok_and(|c| {
                c.iter().any(|(e, d)| {
                    *e > *newest
                        && referenced(d).is_ok_and(|r| {
                            r.iter().any(|o| o.contains("/w") && epoch_of(o) < *newest)
                        })
                })
            })
        },
    )?;
    let truth = finish_generate(gen, &truth_path)?;
    let reader = TopicReader::new(&broker.bootstrap, "ad-click-aggregates")?;
    let folded = wait_for_truth(&reader, &truth, Duration::from_secs(240))?;
    assert!(folded.conflicts.is_empty(), "{:?}", folded.conflicts);
    // Retention deletes the windows no kept checkpoint references (those
    // of expired windows and of deleted checkpoints), between checkpoints.
    wait_until(
        "only referenced windows to be kept",
        Duration::from_secs(60),
        || {
            let Ok(complete) = complete_checkpoints(&store) else {
                return false;
            };
            let newest = complete.last().map_or(0, |(e, _)| *e);
            let mut kept = BTreeSet::new();
            for (_, d) in &complete {
                match referenced(d) {
                    Ok(r) => kept.extend(r),
                    Err(_) => return false,
                }
            }
            shared_objects(&store).is_ok_and(|objs| {
                objs.iter()
                    .all(|o| kept.contains(o) || epoch_of(o) > newest)
            })
        },
    )?;
    Ok(())
}
