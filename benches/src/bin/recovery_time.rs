//! Recovery time (issue 4): from `kill -9` of a node until output resumes.
//!
//! 1. starts a tansu broker and the 3-node cluster (release build, exactly
//!    once, 2 s windows so output flows continuously, `--interval-ms`
//!    between checkpoints, the default 5 s heartbeat timeout);
//! 2. `adclick gen --follow --rate R` produces live events the whole time;
//! 3. a reader follows `ad-click-aggregates` and notes when each record
//!    arrives and its epoch;
//! 4. `--kills K` times: waits for steady output, `kill -9`s a node, waits
//!    for the redeploy and the first checkpoint of the new generation, and
//!    restarts the node (`cluster.sh start-one`);
//! 5. for every kill prints, from the kill: when the coordinator declared
//!    the node lost, when the new generation was deployed, when its first
//!    checkpoint completed, and when the first record of that checkpoint
//!    reached the output topic ("output resumes").
//!
//! Run from the workspace root:
//! `cargo build --release --bin adclick && cargo run --release -p adclick-benches --features e2e --bin recovery_time`
//!
//! Flags: `--kills N` (3), `--rate N` (2,000 events/s), `--interval-ms N`
//! (checkpoint interval, 10,000), `--bin PATH` (target/release/adclick).

use adclick_benches::e2e::*;
use adclick_benches::follow::*;
use adclick_testkit::{temp_dir, Broker};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const NODES: u32 = 3;

struct Args {
    kills: u32,
    rate: u64,
    interval_ms: u64,
    bin: PathBuf,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        kills: 3,
        rate: 2_000,
        interval_ms: 10_000,
        bin: workspace_root().join("target/release/adclick"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--kills" => a.kills = val()?.parse()?,
            "--rate" => a.rate = val()?.parse()?,
            "--interval-ms" => a.interval_ms = val()?.parse()?,
            "--bin" => a.bin = PathBuf::from(val()?),
            other => bail!("unknown flag {other}; see the doc comment of recovery_time.rs"),
        }
    }
    Ok(a)
}

fn config(interval_ms: u64) -> String {
    format!(
        r#"
[kafka]
input_partitions = {PARTITIONS}
output_partitions = 4

[job]
window_secs = 2
max_out_of_orderness_ms = 1000
idle_timeout_ms = 3000
allowed_lateness_ms = 2000
top_windows = [1, 5]

[aggregate]
replicas = 3

[checkpoint]
interval_ms = {interval_ms}
"#
    )
}

/// Coordinator log events after `from_ms_of_day`: (lost, deployed,
/// first completed checkpoint of the new generation as (ms, epoch)).
fn recovery_events(
    log: &str,
    from_ms_of_day: i64,
) -> (Option<i64>, Option<i64>, Option<(i64, u64)>) {
    let (mut lost, mut deployed, mut first_cp) = (None, None, None);
    for line in log.lines() {
        let Some(t) = log_ms_of_day(line) else {
            continue;
        };
        if t < from_ms_of_day {
            continue;
        }
        if lost.is_none() && line.contains("lost") {
            lost = Some(t);
        } else if lost.is_some() && line.contains("generation deployed") {
            deployed = Some(t);
            first_cp = None;
        } else if deployed.is_some() && first_cp.is_none() && line.contains("checkpoint complete") {
            let epoch = line
                .split("epoch=")
                .nth(1)
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok());
            first_cp = epoch.map(|e| (t, e));
        }
    }
    (lost, deployed, first_cp)
}

fn spawn_gen(a: &Args, cfg: &Path, bootstrap: &str) -> Result<Child> {
    Command::new(&a.bin)
        .args(["gen", "--follow", "--config"])
        .arg(cfg)
        .args([
            "--bootstrap",
            bootstrap,
            "--rate",
            &a.rate.to_string(),
            "--ads",
            "20000",
        ])
        .args(["--malformed-every", "0", "--duplicate-every", "0"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting adclick gen --follow")
}

fn main() -> Result<()> {
    let a = parse_args()?;
    require_bin(&a.bin)?;
    let dir = temp_dir("recovery-time");
    let broker = Broker::start(&dir)?;
    let cfg = dir.join("adclick.toml");
    std::fs::write(&cfg, config(a.interval_ms))?;
    let base = base_port();
    let run_dir = dir.join("cluster");
    let env = cluster_env(&a.bin, &cfg, &broker.bootstrap, NODES, &run_dir, base);
    let script = workspace_root().join("deploy/local/cluster.sh");
    eprintln!("broker {} · run dir {}", broker.bootstrap, dir.display());
    cluster(&script, "start", &env)?;
    let mut gen = spawn_gen(&a, &cfg, &broker.bootstrap)?;
    let result = measure(&a, &broker.bootstrap, &script, &env, &run_dir);
    let _ = gen.kill();
    let _ = gen.wait();
    let stop = cluster(&script, "stop", &env);
    result?;
    stop
}

fn measure(
    a: &Args,
    bootstrap: &str,
    script: &Path,
    env: &[(&str, String)],
    run_dir: &Path,
) -> Result<()> {
    let mut out = OutputFollower::new(bootstrap)?;
    let mut rows = Vec::new();
    for k in 0..a.kills {
        // Steady output first: records of at least two checkpoints.
        let start = Instant::now();
        loop {
            out.poll_for(Duration::from_secs(1));
            let recent: std::collections::BTreeSet<u64> = out
                .seen
                .iter()
                .filter(|(t, _)| *t > wall_ms() - 2 * a.interval_ms as i64 - 5_000)
                .map(|(_, e)| *e)
                .collect();
            if recent.len() >= 2 {
                break;
            }
            if start.elapsed() > Duration::from_secs(180) {
                bail!(
                    "no steady output within 180 s; logs in {}",
                    run_dir.join("logs").display()
                );
            }
        }
        out.poll_for(Duration::from_millis(1_000 + (k as u64 * 1_700) % 3_000));
        let victim = format!("node-{}", 1 + k % (NODES - 1));
        let pid = std::fs::read_to_string(run_dir.join(format!("pids/{victim}.pid")))?;
        let killed_at = wall_ms();
        let status = Command::new("kill").args(["-9", pid.trim()]).status()?;
        if !status.success() {
            bail!("kill -9 {victim} failed");
        }
        let kill_day_ms = killed_at.rem_euclid(86_400_000);
        // Wait for the new generation's first checkpoint and its output.
        let deadline = Instant::now() + Duration::from_secs(180);
        let (lost, deployed, resumed) = loop {
            out.poll_for(Duration::from_millis(200));
            let log =
                std::fs::read_to_string(run_dir.join("logs/coordinator.log")).unwrap_or_default();
            let (lost, deployed, cp) = recovery_events(&log, kill_day_ms);
            if let Some((cp_ms, epoch)) = cp {
                if let Some((t, _)) = out
                    .seen
                    .iter()
                    .find(|(t, e)| *e >= epoch && *t >= killed_at)
                {
                    break (lost, deployed, Some((cp_ms, *t)));
                }
            }
            if Instant::now() > deadline {
                break (lost, deployed, None);
            }
        };
        let rel = |t: Option<i64>| {
            t.map_or("-".to_string(), |t| {
                format!("{:.2} s", (t - kill_day_ms) as f64 / 1000.0)
            })
        };
        let (cp, first) = match resumed {
            Some((cp, first)) => (
                rel(Some(cp)),
                format!("{:.2} s", (first - killed_at) as f64 / 1000.0),
            ),
            None => ("-".into(), "not within 180 s".into()),
        };
        println!("kill {k} ({victim}): lost {} · deployed {} · first checkpoint {cp} · output resumes {first}", rel(lost), rel(deployed));
        rows.push(first);
        cluster_args(script, &["start-one", &victim], env)?;
    }
    println!(
        "checkpoint interval {} ms, heartbeat timeout 5000 ms (default), rate {} events/s",
        a.interval_ms, a.rate
    );
    Ok(())
}
