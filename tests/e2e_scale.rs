//! Online rescaling of the Aggregate actors (`adclickctl scale aggregate N`)
//! on the real broker (tansu) with real processes started by
//! `deploy/local/cluster.sh`, while a seeded stream flows; every final
//! (ad, window, slice) count and top-N list must equal the ground truth,
//! with no two values at one `(epoch, revision)`:
//!
//! - 3 → 5 → 2 Aggregates, with a node killed (-9) between the rescales,
//!   and the refused requests (bad counts, a rescale while one runs) with
//!   their messages and exit codes (a stopped job: `e2e_savepoint.rs`);
//! - the coordinator killed (-9) in the middle of a rescale: the restarted
//!   one deploys the new count, which survives a further restart.

mod support;

use anyhow::Result;
use std::time::Duration;
use support::*;

const STREAM: &[&str] = &[
    "--seed",
    "41",
    "--events",
    "30000",
    "--minutes",
    "10",
    "--disorder-ms",
    // Beyond max_out_of_orderness (3 s), within allowed lateness (60 s):
    // late events keep changing emitted windows, so Reduce re-emits top-N
    // lists across every rescale, and stale per-Aggregate lists would show.
    "12000",
    "--rate",
    "1000",
];

fn replicas(c: &Cluster) -> String {
    c.status_json()
        .ok()
        .and_then(|s| s["aggregate_replicas"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn running(c: &Cluster) -> bool {
    c.status_json().is_ok_and(|s| s["state"] == "running")
}

/// The refusal's exit code and message.
fn refused(c: &Cluster, args: &[&str]) -> Result<(Option<i32>, String)> {
    let (code, _, err) = c.ctl_raw(args)?;
    Ok((code, err))
}

#[test]
fn scale_up_and_down_while_the_stream_flows_stays_exact() -> Result<()> {
    let (dir, broker, config) = setup("scale-up-down", "")?;
    let cluster = Cluster::start(&dir, &broker.bootstrap, &config, 3, false)?;
    wait_until("first deployment", Duration::from_secs(60), || {
        running(&cluster)
    })?;
    assert_eq!(replicas(&cluster), "3 configured, 3 deployed");
    for (args, needle) in [
        (&["scale", "aggregate", "0"][..], "at least 1"),
        (&["scale", "aggregate", "4097"][..], "job.key_groups = 4096"),
        (&["scale", "map", "2"][..], "only \"aggregate\""),
        (&["scale", "aggregate", "-1"][..], "-1"),
    ] {
        let (code, err) = refused(&cluster, args)?;
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let r = cluster.ctl(&["scale", "aggregate", "3"])?;
    assert_eq!(r["started"], false, "already 3: {r}");

    let (gen, truth_path) = spawn_generate(&dir, &broker.bootstrap, &config, STREAM)?;
    std::thread::sleep(Duration::from_secs(4));
    let r = cluster.ctl(&["scale", "aggregate", "5", "--no-wait"])?;
    assert_eq!(r["started"], true, "{r}");
    // One rescale at a time.
    let (code, err) = refused(&cluster, &["scale", "aggregate", "2"])?;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("already running"), "{err}");
    wait_until("5 Aggregates", Duration::from_secs(120), || {
        running(&cluster) && replicas(&cluster) == "5 configured, 5 deployed"
    })?;
    let status = cluster.status_json()?;
    assert!(
        status["state_reason"]
            .as_str()
            .is_some_and(|r| r.contains("rescaled aggregate 3 -> 5")),
        "{status}"
    );

    std::thread::sleep(Duration::from_secs(3));
    let before = generation(&cluster);
    cluster.signal("node-1", "KILL")?;
    wait_until(
        "recovery from the lost node",
        Duration::from_secs(90),
        || generation(&cluster) > before && running(&cluster),
    )?;
    assert_eq!(replicas(&cluster), "5 configured, 5 deployed");

    std::thread::sleep(Duration::from_secs(3));
    let r = cluster.ctl(&["scale", "aggregate", "2", "--timeout", "120"])?;
    assert_eq!(
        (r["from"].as_u64(), r["to"].as_u64()),
        (Some(5), Some(2)),
        "{r}"
    );
    // The reply says how long output paused (the figure itself is not
    // checked: machines are noisy).
    assert!(r.get("took_ms").is_some_and(|v| v.is_u64()), "{r}");
    assert_eq!(replicas(&cluster), "2 configured, 2 deployed");
    // Every rescaled Aggregate that restored cells references the windows
    // it restored them from (narrowed to its key groups) rather than
    // writing them again at its next checkpoint.
    let restores = || -> Vec<String> {
        ["node-0", "node-1", "node-2"]
            .iter()
            .flat_map(|n| {
                process_log(&cluster, n)
                    .lines()
                    .filter(|l| {
                        l.contains("restored aggregate state") && l.contains("rescaled=true")
                    })
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    // `scale` returns once the new generation is deployed; its Aggregates
    // may still be restoring.
    wait_until(
        "the 3 -> 5 and 5 -> 2 restores",
        Duration::from_secs(60),
        || restores().len() >= 7,
    )?;
    let restores = restores();
    let field = |l: &str, name: &str| {
        l.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.parse::<u64>().ok())
    };
    for l in &restores {
        if field(l, "cells=").is_some_and(|c| c > 0) {
            assert!(
                field(l, "windows_referenced=").is_some_and(|w| w > 0),
                "{l}"
            );
        }
    }

    let truth = finish_generate(gen, &truth_path)?;
    let reader = TopicReader::new(&broker.bootstrap, "ad-click-aggregates")?;
    let folded = wait_for_truth(&reader, &truth, Duration::from_secs(240))?;
    assert!(folded.conflicts.is_empty(), "{:?}", folded.conflicts);
    // Reduce rebuilt its lists from the Aggregates' resent ones.
    assert!(logs_contain(&cluster, "rebuilding the top-N lists"));
    assert!(logs_contain(
        &cluster,
        "rescaled: resending local top-N lists"
    ));
    Ok(())
}

#[test]
fn a_coordinator_killed_during_a_rescale_deploys_the_new_count() -> Result<()> {
    let (dir, broker, config) = setup("scale-coordinator-kill", "")?;
    let cluster = Cluster::start(&dir, &broker.bootstrap, &config, 3, false)?;
    wait_until("first deployment", Duration::from_secs(60), || {
        running(&cluster)
    })?;
    let (gen, truth_path) = spawn_generate(&dir, &broker.bootstrap, &config, STREAM)?;
    std::thread::sleep(Duration::from_secs(5));
    let r = cluster.ctl(&["scale", "aggregate", "4", "--no-wait"])?;
    assert_eq!(r["started"], true, "{r}");
    cluster.signal("coordinator", "KILL")?;
    std::thread::sleep(Duration::from_secs(1));
    cluster.start_one("coordinator", &[])?;
    wait_until(
        "4 Aggregates after the restart",
        Duration::from_secs(120),
        || running(&cluster) && replicas(&cluster) == "4 configured, 4 deployed",
    )?;
    // The chosen count survives a planned restart too.
    std::thread::sleep(Duration::from_secs(3));
    cluster.signal("coordinator", "TERM")?;
    wait_until("the coordinator to stop", Duration::from_secs(30), || {
        !cluster.alive("coordinator")
    })?;
    cluster.start_one("coordinator", &[])?;
    wait_until("running again", Duration::from_secs(120), || {
        running(&cluster) && replicas(&cluster) == "4 configured, 4 deployed"
    })?;
    let truth = finish_generate(gen, &truth_path)?;
    let reader = TopicReader::new(&broker.bootstrap, "ad-click-aggregates")?;
    let folded = wait_for_truth(&reader, &truth, Duration::from_secs(240))?;
    assert!(folded.conflicts.is_empty(), "{:?}", folded.conflicts);
    Ok(())
}
