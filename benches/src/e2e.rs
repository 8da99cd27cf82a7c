//! Shared pieces of the end-to-end benchmark tools (`e2e_throughput`,
//! `recovery_time`): the benchmark config, `adclick gen`, `cluster.sh`,
//! and scraping the processes' `/metrics` and logs.

use anyhow::{bail, Context, Result};
use rdkafka::ClientConfig;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Input topic.
pub const TOPIC: &str = "ad-clicks";
/// Input partitions.
pub const PARTITIONS: i32 = 4;

/// The workspace root (benches/ is one level down).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("benches/ has a parent")
        .to_path_buf()
}

/// The e2e test's configuration with one-minute windows and bigger batches.
pub fn config(batch_max_events: usize) -> String {
    format!(
        r#"
[kafka]
input_partitions = {PARTITIONS}
output_partitions = 4

[cluster]
# The e2e test uses 3 s; under full CPU load a busy node misses that and
# is redeployed, which re-reads input and spoils the measurement.
heartbeat_interval_ms = 500
heartbeat_timeout_ms = 15000

[job]
window_secs = 60
max_out_of_orderness_ms = 15000
idle_timeout_ms = 3000
allowed_lateness_ms = 60000
batch_max_ms = 50
batch_max_events = {batch_max_events}

[aggregate]
replicas = 3
"#
    )
}

/// An rdkafka client config for the local broker.
pub fn client(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4");
    c
}

/// A plain HTTP GET (no client crate: the tool stays light).
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// Sum of `events_in_total` over every node's `/metrics`.
pub fn events_in(base: u16, nodes: u32) -> u64 {
    (0..nodes)
        .filter_map(|i| http_get(&format!("127.0.0.1:{}", base + 40 + i as u16), "/metrics"))
        .flat_map(|text| {
            text.lines()
                .filter(|l| l.starts_with("events_in_total"))
                .filter_map(|l| l.rsplit(' ').next()?.trim().parse::<f64>().ok())
                .collect::<Vec<_>>()
        })
        .sum::<f64>() as u64
}

/// Total CPU seconds (user + system) of the processes whose pid files are in `pids`.
pub fn cpu_secs(pids: &Path) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(pids).into_iter().flatten().flatten() {
        let name = entry
            .path()
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Ok(pid) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        if let Some(secs) = process_cpu_secs(pid.trim()) {
            out.push((name, secs));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// CPU seconds (user + system, all threads) process `pid` has used so far
/// (`"self"` for this one); `None` once it has gone.
pub fn process_cpu_secs(pid: &str) -> Option<f64> {
    let tick = 100.0; // USER_HZ on Linux
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let u = f.get(11).and_then(|v| v.parse::<f64>().ok())?;
    let s = f.get(12).and_then(|v| v.parse::<f64>().ok())?;
    Some((u + s) / tick)
}

/// Runs `cluster.sh cmd` with `env`.
pub fn cluster(script: &Path, cmd: &str, env: &[(&str, String)]) -> Result<()> {
    cluster_args(script, &[cmd], env)
}

/// Runs `cluster.sh args...` with `env`, e.g. `start-one node-1`.
pub fn cluster_args(script: &Path, args: &[&str], env: &[(&str, String)]) -> Result<()> {
    let status = Command::new(script)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .status()?;
    if !status.success() {
        bail!("cluster.sh {} failed: {status}", args.join(" "));
    }
    Ok(())
}

/// Fails with the build command when the release binary is missing.
pub fn require_bin(bin: &Path) -> Result<()> {
    if !bin.exists() {
        bail!(
            "{} not found: run `cargo build --release --bin adclick` first",
            bin.display()
        );
    }
    Ok(())
}

/// Sum of every sample of metric `name` over the nodes' `/metrics`.
pub fn node_metric(base: u16, nodes: u32, name: &str) -> f64 {
    (0..nodes)
        .filter_map(|i| http_get(&format!("127.0.0.1:{}", base + 40 + i as u16), "/metrics"))
        .map(|text| metric_sum(&text, name))
        .sum()
}

/// Sum of the samples of `name` (with or without labels) in a Prometheus text page.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.trim().parse::<f64>().ok())
        .sum()
}

/// A free TCP port with room for the cluster's port block above it.
pub fn base_port() -> u16 {
    loop {
        let p = adclick_testkit::free_port();
        if p > 1024 && p < 60000 {
            return p;
        }
    }
}

/// The environment `cluster.sh` needs for one cluster.
pub fn cluster_env(
    bin: &Path,
    cfg: &Path,
    bootstrap: &str,
    nodes: u32,
    run_dir: &Path,
    base: u16,
) -> Vec<(&'static str, String)> {
    vec![
        ("ADCLICK_BIN", bin.display().to_string()),
        ("ADCLICK_CONFIG", cfg.display().to_string()),
        ("ADCLICK_KAFKA_BOOTSTRAP", bootstrap.to_string()),
        ("ADCLICK_NODES", nodes.to_string()),
        ("ADCLICK_RUN_DIR", run_dir.display().to_string()),
        ("ADCLICK_BASE_PORT", base.to_string()),
        ("ADCLICK_SERVING", "0".to_string()),
    ]
}

/// Runs `adclick gen` to completion with `args`; returns how many records
/// it reported as produced.
pub fn gen(bin: &Path, cfg: &Path, bootstrap: &str, args: &[String]) -> Result<u64> {
    let out = Command::new(bin)
        .args(["gen", "--config"])
        .arg(cfg)
        .args(["--bootstrap", bootstrap])
        .args(args)
        .stderr(std::process::Stdio::piped())
        .output()
        .context("running adclick gen")?;
    let log = String::from_utf8_lossy(&out.stderr);
    eprint!("{log}");
    if !out.status.success() {
        bail!("adclick gen failed: {}", out.status);
    }
    // `produced N records ...`: the broker's high watermarks can lag it briefly.
    log.lines()
        .find_map(|l| l.strip_prefix("produced ")?.split(' ').next()?.parse().ok())
        .context("adclick gen did not report how many records it produced")
}

/// `(ms, bytes)` of every completed checkpoint in a coordinator log.
pub fn checkpoints(log: &str) -> Vec<(u64, u64)> {
    log.lines()
        .filter(|l| l.contains("checkpoint complete"))
        .filter_map(|l| Some((field(l, "ms=")?, field(l, "bytes=")?)))
        .collect()
}

/// One actor's stop for one checkpoint, in microseconds.
pub struct Pause {
    /// Wall time the actor stopped.
    pub wall: u64,
    /// Of which freezing its state (the rest is forwarding the barrier).
    pub freeze: u64,
    /// CPU the freeze used (less than `freeze` when it waited for a core).
    pub freeze_cpu: Option<u64>,
}

/// How long each actor of `kind` (`map`, `aggregate`, `reduce`) stopped
/// for a checkpoint, from the nodes' log lines.
pub fn checkpoint_pauses_us(log: &str, kind: &str) -> Vec<Pause> {
    let actor = format!("actor={kind}-");
    log.lines()
        .filter(|l| l.contains("checkpoint state frozen") && l.contains(&actor))
        .filter_map(|l| {
            Some(Pause {
                wall: field(l, "pause_us=")?,
                freeze: field(l, "freeze_us=")?,
                freeze_cpu: field(l, "freeze_cpu_us="),
            })
        })
        .collect()
}

/// The integer after `key` in a tracing log line.
fn field(line: &str, key: &str) -> Option<u64> {
    let at = line.find(&format!(" {key}"))? + 1 + key.len();
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Min, median, mean and max of `v` (NaN when empty).
pub fn stats(v: &[u64]) -> (f64, f64, f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN, f64::NAN);
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    let mean = s.iter().sum::<u64>() as f64 / s.len() as f64;
    (
        s[0] as f64,
        s[s.len() / 2] as f64,
        mean,
        s[s.len() - 1] as f64,
    )
}

/// When the output stopped, and what the cluster spent up to then and after.
pub struct OutputEnd {
    /// When `output_records_total` last grew.
    pub last: Instant,
    /// CPU per process at the first poll that saw it stop growing.
    pub cpu_at_last: Vec<(String, f64)>,
    /// CPU-seconds per second of all processes over the settle period.
    pub idle_cpu_rate: f64,
    /// Most cells seen meanwhile.
    pub peak_cells: f64,
}

/// Polls the nodes' `output_records_total` until it has not grown for
/// `settle` (every window closed and, in exactly-once mode, committed).
/// CPU is sampled at every poll, so the figure "to the last output" does
/// not include the settle wait; that wait gives the idle rate instead.
pub fn wait_for_output(base: u16, nodes: u32, settle: Duration, pids: &Path) -> OutputEnd {
    let total = |cpu: &[(String, f64)]| cpu.iter().map(|(_, s)| s).sum::<f64>();
    let mut last = -1.0;
    let mut changed = Instant::now();
    let mut cpu_at_last = cpu_secs(pids);
    let mut peak = 0.0f64;
    let deadline = Instant::now() + Duration::from_secs(900);
    while changed.elapsed() < settle && Instant::now() < deadline {
        let now = node_metric(base, nodes, "output_records_total");
        let cpu = cpu_secs(pids);
        peak = peak.max(node_metric(base, nodes, "aggregate_cells"));
        if now != last {
            last = now;
            changed = Instant::now();
            cpu_at_last = cpu;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let idle_secs = changed.elapsed().as_secs_f64();
    let idle_cpu = total(&cpu_secs(pids)) - total(&cpu_at_last);
    OutputEnd {
        last: changed,
        cpu_at_last,
        idle_cpu_rate: idle_cpu / idle_secs.max(1e-9),
        peak_cells: peak,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_checkpoint_lines_and_metrics() {
        let log = "2026-11-22T00:00:00Z  INFO adclick_coordinator::checkpointing: checkpoint complete epoch=3 ms=412 bytes=1048576\nother";
        assert_eq!(checkpoints(log), vec![(412, 1_048_576)]);
        let page = "events_in_total{actor=\"map-0\"} 5\nevents_in_total_x 9\nevents_in_total 2\n";
        assert_eq!(metric_sum(page, "events_in_total"), 7.0);
    }
}
