//! Rescale pause (issue 9): how long output and ingest stop when
//! `adclickctl scale aggregate N` rescales a running job, next to the
//! checkpoint duration of the same run.
//!
//! 1. starts a tansu broker and the 3-node cluster (release build, exactly
//!    once, 3 Aggregates, 2 s windows, 10 min allowed lateness so the
//!    preloaded state stays held);
//! 2. preloads `--ads` distinct ads (2 events each, event time the last
//!    minute) as fast as the broker takes them and waits until the Maps
//!    read them all, the Aggregates' cells stand still and their saved
//!    output is mostly committed (a settled job, not one still writing
//!    the preload's output);
//! 3. `adclick gen --follow` keeps 2,000 events/s flowing, so output is
//!    committed at every checkpoint;
//! 4. scales 3 → 5, then 5 → 3, and for each prints: the time from the
//!    request until the new generation was deployed, until its first
//!    checkpoint completed, and until the first output record of that
//!    checkpoint arrived (the pause); the longest gap in the Maps' input
//!    counter (the ingest gap); and the rescale's own checkpoint.
//!
//! Run from the workspace root:
//! `cargo build --release --bins && cargo run --release -p adclick-benches --features e2e --bin rescale_pause -- --ads 100000`
//!
//! Flags: `--ads N` (100,000), `--rate N` (2,000 events/s), `--bin PATH`
//! (target/release/adclick).

use adclick_benches::e2e::*;
use adclick_benches::follow::*;
use adclick_testkit::{temp_dir, Broker};
use anyhow::{bail, Context, Result};
use rdkafka::Offset;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const NODES: u32 = 3;

struct Args {
    ads: u64,
    rate: u64,
    bin: PathBuf,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        ads: 100_000,
        rate: 2_000,
        bin: workspace_root().join("target/release/adclick"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--ads" => a.ads = val()?.parse()?,
            "--rate" => a.rate = val()?.parse()?,
            "--bin" => a.bin = PathBuf::from(val()?),
            other => bail!("unknown flag {other}; see the doc comment of rescale_pause.rs"),
        }
    }
    Ok(a)
}

fn config() -> String {
    format!(
        r#"
[kafka]
input_partitions = {PARTITIONS}
output_partitions = 4

[cluster]
heartbeat_interval_ms = 500
heartbeat_timeout_ms = 15000

[job]
window_secs = 2
max_out_of_orderness_ms = 1000
idle_timeout_ms = 3000
allowed_lateness_ms = 600000
top_windows = [1, 5]

[aggregate]
replicas = 3

[checkpoint]
timeout_ms = 60000
"#
    )
}

/// Coordinator log after `from_ms_of_day`: when the next generation was
/// deployed, and its first completed checkpoint (ms of day, epoch).
fn rescale_events(log: &str, from_ms_of_day: i64) -> (Option<i64>, Option<(i64, u64)>) {
    let (mut deployed, mut first_cp) = (None, None);
    for line in log.lines() {
        let Some(t) = log_ms_of_day(line) else {
            continue;
        };
        if t < from_ms_of_day {
            continue;
        }
        if deployed.is_none() && line.contains("generation deployed") {
            deployed = Some(t);
        } else if deployed.is_some() && first_cp.is_none() && line.contains("checkpoint complete") {
            let epoch = line
                .split("epoch=")
                .nth(1)
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok());
            first_cp = epoch.map(|e| (t, e));
        }
    }
    (deployed, first_cp)
}

fn ctl(a: &Args, base: u16, run_dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(a.bin.with_file_name("adclickctl"))
        .args(["--coordinator", &format!("127.0.0.1:{base}")])
        .arg("--token-file")
        .arg(run_dir.join("admin.token"))
        .args(["-o", "json"])
        .args(args)
        .output()
        .context("running adclickctl")?;
    if !out.status.success() {
        bail!(
            "adclickctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn spawn_follow(a: &Args, cfg: &Path, bootstrap: &str) -> Result<Child> {
    Command::new(&a.bin)
        .args(["gen", "--follow", "--config"])
        .arg(cfg)
        .args(["--bootstrap", bootstrap, "--rate", &a.rate.to_string()])
        .args([
            "--ads",
            "20000",
            "--malformed-every",
            "0",
            "--duplicate-every",
            "0",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting adclick gen --follow")
}

fn main() -> Result<()> {
    let a = parse_args()?;
    require_bin(&a.bin)?;
    let dir = temp_dir("rescale-pause");
    let broker = Broker::start(&dir)?;
    let cfg = dir.join("adclick.toml");
    std::fs::write(&cfg, config())?;
    let base = base_port();
    let run_dir = dir.join("cluster");
    let env = cluster_env(&a.bin, &cfg, &broker.bootstrap, NODES, &run_dir, base);
    let script = workspace_root().join("deploy/local/cluster.sh");
    eprintln!("broker {} · run dir {}", broker.bootstrap, dir.display());
    cluster(&script, "start", &env)?;
    let result = measure(&a, &broker.bootstrap, &cfg, base, &run_dir);
    let stop = cluster(&script, "stop", &env);
    result?;
    stop
}

fn measure(a: &Args, bootstrap: &str, cfg: &Path, base: u16, run_dir: &Path) -> Result<()> {
    // The preload: 2 events per ad over the last minute of event time.
    let start = (wall_ms() - 60_000).to_string();
    let events = (2 * a.ads).to_string();
    let produced = gen(
        &a.bin,
        cfg,
        bootstrap,
        &[
            "--start",
            &start,
            "--minutes",
            "1",
            "--events",
            &events,
            "--ads",
            &a.ads.to_string(),
            "--malformed-every",
            "0",
            "--duplicate-every",
            "0",
        ]
        .map(String::from),
    )?;
    let t = Instant::now();
    while events_in(base, NODES) < produced {
        if t.elapsed() > Duration::from_secs(600) {
            bail!("the preload was not read within 600 s");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let cells = node_metric(base, NODES, "aggregate_cells");
    eprintln!(
        "preload of {produced} records read in {:.1} s; Aggregates hold {cells} cells",
        t.elapsed().as_secs_f64()
    );
    // Writing the preload's output (a count per ad and window) takes the
    // sinks a while; a rescale before they catch up would time that
    // backlog, not the rescale.
    // Settled: the Aggregates' cells stood still for more than a checkpoint
    // interval (the preload is processed), and the output saved at the
    // last barrier is mostly committed.
    let t = Instant::now();
    let (mut cells, mut since) = (-1.0, Instant::now());
    loop {
        let now = node_metric(base, NODES, "aggregate_cells");
        if now != cells {
            (cells, since) = (now, Instant::now());
        }
        let uncommitted = node_metric(base, NODES, "output_uncommitted_records");
        if since.elapsed() > Duration::from_secs(12) && uncommitted < 50_000.0 {
            break;
        }
        if t.elapsed() > Duration::from_secs(600) {
            bail!("the preload's output was not committed within 600 s");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    eprintln!(
        "settled {:.1} s later: {cells} cells, preload output committed",
        t.elapsed().as_secs_f64()
    );
    let mut follow = spawn_follow(a, cfg, bootstrap)?;
    let result = (|| {
        std::thread::sleep(Duration::from_secs(25));
        for to in [5, 3] {
            one_rescale(a, bootstrap, base, run_dir, to)?;
            std::thread::sleep(Duration::from_secs(15));
        }
        Ok(())
    })();
    let _ = follow.kill();
    let _ = follow.wait();
    let log = std::fs::read_to_string(run_dir.join("logs/coordinator.log")).unwrap_or_default();
    let ms: Vec<u64> = checkpoints(&log).into_iter().map(|(ms, _)| ms).collect();
    let (min, median, mean, max) = stats(&ms);
    println!(
        "checkpoints in this run: {} · duration min {min} ms, median {median} ms, mean {mean:.0} ms, max {max} ms",
        ms.len()
    );
    result
}

fn one_rescale(a: &Args, bootstrap: &str, base: u16, run_dir: &Path, to: u32) -> Result<()> {
    let mut out = OutputFollower::from(bootstrap, Offset::End)?;
    out.poll_for(Duration::from_secs(2));
    let asked = wall_ms();
    let asked_day = asked.rem_euclid(86_400_000);
    let mut child = Command::new(a.bin.with_file_name("adclickctl"))
        .args(["--coordinator", &format!("127.0.0.1:{base}")])
        .arg("--token-file")
        .arg(run_dir.join("admin.token"))
        .args(["scale", "aggregate", &to.to_string(), "--no-wait"])
        .stdout(std::process::Stdio::null())
        .spawn()?;
    // Ingest: the longest time the Maps' input counter stood still.
    let (mut last_in, mut last_change, mut gap) = (events_in(base, NODES), asked, 0i64);
    let deadline = Instant::now() + Duration::from_secs(300);
    let (deployed, cp, first) = loop {
        out.poll_for(Duration::from_millis(100));
        let now_in = events_in(base, NODES);
        let now = wall_ms();
        if now_in > last_in {
            gap = gap.max(now - last_change);
            last_in = now_in;
            last_change = now;
        }
        let log = std::fs::read_to_string(run_dir.join("logs/coordinator.log")).unwrap_or_default();
        let (deployed, cp) = rescale_events(&log, asked_day);
        if let Some((_, epoch)) = cp {
            if let Some((t, _)) = out.seen.iter().find(|(t, e)| *e >= epoch && *t >= asked) {
                break (deployed, cp, *t);
            }
        }
        if Instant::now() > deadline {
            bail!("no output of the new generation within 300 s");
        }
    };
    child.wait()?;
    let rel = |t: Option<i64>| {
        t.map_or("-".into(), |t| {
            format!("{:.2} s", (t - asked_day) as f64 / 1000.0)
        })
    };
    let history = ctl(a, base, run_dir, &["checkpoints", "--limit", "10"])?;
    let own = serde_json::from_str::<serde_json::Value>(&history)?
        .as_array()
        .and_then(|l| l.iter().find(|c| c["trigger"] == "rebalance").cloned())
        .map_or("-".into(), |c| {
            format!("{} ms, {} bytes", c["duration_ms"], c["bytes"])
        });
    println!(
        "scale to {to}: deployed {} · first checkpoint {} · output resumes {:.2} s · ingest gap {:.2} s · its checkpoint {own}",
        rel(deployed),
        rel(cp.map(|(t, _)| t)),
        (first - asked) as f64 / 1000.0,
        gap as f64 / 1000.0,
    );
    Ok(())
}
