//! End-to-end throughput of the cluster next to the broker-only rate, in one
//! run (issue 2, item 13).
//!
//! 1. starts a tansu broker (memory engine);
//! 2. produces the input with `adclick gen` (release build);
//! 3. broker-only rate: a plain rdkafka `BaseConsumer`, all input partitions
//!    assigned from the beginning, reads every record;
//! 4. pipeline rate: starts the 3-node cluster with `deploy/local/cluster.sh`
//!    and polls the nodes' `events_in_total` counters until the Map actors
//!    have read every record; the clock runs from the first record read, so
//!    process start-up and deployment are not counted;
//! 5. prints both rates and their ratio (target: pipeline ≥ 0.7 × broker).
//!
//! Build and run from the workspace root:
//! `cargo build --release --bin adclick && cargo run --release -p adclick-benches --features e2e --bin e2e_throughput -- --events 1000000`
//!
//! Flags: `--events N` (1,000,000), `--ads N` (200,000), `--minutes N` (10),
//! `--nodes N` (3), `--batch-max-events N` (16,384), `--bin PATH`
//! (target/release/adclick).

use adclick_testkit::{free_port, temp_dir, Broker};
use anyhow::{bail, Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const TOPIC: &str = "ad-clicks";
const PARTITIONS: i32 = 4;

struct Args {
    events: u64,
    ads: u64,
    minutes: u64,
    nodes: u32,
    batch_max_events: usize,
    bin: PathBuf,
}

fn parse_args() -> Result<Args> {
    let root = workspace_root();
    let mut a = Args {
        events: 1_000_000,
        ads: 200_000,
        minutes: 10,
        nodes: 3,
        batch_max_events: 16_384,
        bin: root.join("target/release/adclick"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--events" => a.events = val()?.parse()?,
            "--ads" => a.ads = val()?.parse()?,
            "--minutes" => a.minutes = val()?.parse()?,
            "--nodes" => a.nodes = val()?.parse()?,
            "--batch-max-events" => a.batch_max_events = val()?.parse()?,
            "--bin" => a.bin = PathBuf::from(val()?),
            other => bail!("unknown flag {other}; see the doc comment of e2e_throughput.rs"),
        }
    }
    Ok(a)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("benches/ has a parent")
        .to_path_buf()
}

/// The e2e test's configuration with one-minute windows and bigger batches.
fn config(batch_max_events: usize) -> String {
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

fn client(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4");
    c
}

/// Records in the input topic (sum of high - low watermarks).
fn topic_records(bootstrap: &str) -> Result<u64> {
    let c: BaseConsumer = client(bootstrap)
        .set("group.id", "e2e-throughput-probe")
        .create()?;
    let mut total = 0;
    for p in 0..PARTITIONS {
        let (lo, hi) = c
            .fetch_watermarks(TOPIC, p, Duration::from_secs(10))
            .context("fetching watermarks")?;
        total += (hi - lo) as u64;
    }
    Ok(total)
}

/// Reads every record with a plain consumer; returns (records, seconds from
/// the first record to the last).
fn broker_only(bootstrap: &str, expected: u64) -> Result<(u64, f64, f64)> {
    // Same fetch settings as the Map actors' consumer (runtime::kafka::consumer).
    let c: BaseConsumer = client(bootstrap)
        .set("group.id", "e2e-throughput-plain")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", "100")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(TOPIC, p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    let (mut n, mut bytes, mut first) = (0u64, 0u64, None);
    let mut samples = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut last = Instant::now();
    let mut end = Instant::now();
    // Stops at `expected`, or after 5 s without a record (then the rate is
    // taken up to the last record read).
    while n < expected && last.elapsed() < Duration::from_secs(5) {
        if Instant::now() > deadline {
            bail!("broker-only consumer read {n} of {expected} records in 600 s");
        }
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                first.get_or_insert_with(Instant::now);
                if n % 10_000 == 0 {
                    samples.push((Instant::now(), n));
                }
                last = Instant::now();
                end = last;
                n += 1;
                bytes += m.payload().map_or(0, |p| p.len() as u64);
            }
            Some(Err(e)) => eprintln!("broker-only consumer: {e}"),
            None => {}
        }
    }
    let secs = first.map_or(0.0, |f| end.duration_since(f).as_secs_f64());
    eprintln!("broker-only: {n} records, {:.1} MB", bytes as f64 / 1e6);
    Ok((n, secs, steady_rate(&samples, expected)))
}

fn http_get(addr: &str, path: &str) -> Option<String> {
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
fn events_in(base: u16, nodes: u32) -> u64 {
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
fn cpu_secs(pids: &Path) -> Vec<(String, f64)> {
    let tick = 100.0; // USER_HZ on Linux
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
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())) else {
            continue;
        };
        // Fields after the command name: state is field 3, utime 14, stime 15.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let (u, s) = (
            f.get(11).and_then(|v| v.parse::<f64>().ok()),
            f.get(12).and_then(|v| v.parse::<f64>().ok()),
        );
        if let (Some(u), Some(s)) = (u, s) {
            out.push((name, (u + s) / tick));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn cluster(script: &Path, cmd: &str, env: &[(&str, String)]) -> Result<()> {
    let status = Command::new(script)
        .arg(cmd)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .status()?;
    if !status.success() {
        bail!("cluster.sh {cmd} failed: {status}");
    }
    Ok(())
}

/// What the pipeline run measured.
struct PipelineRun {
    /// Seconds from `cluster.sh start` to the first record read.
    startup: f64,
    /// Seconds from the first record read to the last.
    secs: f64,
    /// CPU seconds per cluster process over the same interval.
    cpu: Vec<(String, f64)>,
    /// Records per second between 10 % and 90 % of the input: insensitive
    /// to when the first counter sample lands and to the tail.
    steady: f64,
}

/// Rate between the first samples at or above 10 % and 90 % of `total`.
fn steady_rate(samples: &[(Instant, u64)], total: u64) -> f64 {
    let at = |frac: f64| {
        samples
            .iter()
            .find(|(_, c)| *c as f64 >= frac * total as f64)
    };
    match (at(0.1), at(0.9)) {
        (Some((t0, c0)), Some((t1, c1))) if t1 > t0 => {
            (c1 - c0) as f64 / t1.duration_since(*t0).as_secs_f64()
        }
        _ => f64::NAN,
    }
}

/// Polls the nodes' counters until the Map actors have read `records`.
fn wait_for_pipeline(
    base: u16,
    nodes: u32,
    records: u64,
    run_dir: &Path,
    started: Instant,
) -> Result<PipelineRun> {
    let mut first: Option<Instant> = None;
    let mut cpu_at_first = Vec::new();
    let mut samples = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let seen = events_in(base, nodes);
        samples.push((Instant::now(), seen));
        if seen > 0 && first.is_none() {
            first = Some(Instant::now());
            cpu_at_first = cpu_secs(&run_dir.join("pids"));
        }
        if seen >= records {
            let f = first.expect("set above");
            let cpu = cpu_secs(&run_dir.join("pids"))
                .into_iter()
                .map(|(name, end)| {
                    let start = cpu_at_first
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map_or(0.0, |(_, s)| *s);
                    (name, end - start)
                })
                .collect();
            return Ok(PipelineRun {
                startup: f.duration_since(started).as_secs_f64(),
                secs: f.elapsed().as_secs_f64(),
                steady: steady_rate(&samples, records),
                cpu,
            });
        }
        if Instant::now() > deadline {
            bail!(
                "the Map actors read {seen} of {records} records in 900 s; logs in {}",
                run_dir.join("logs").display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn main() -> Result<()> {
    let a = parse_args()?;
    if !a.bin.exists() {
        bail!(
            "{} not found: run `cargo build --release --bin adclick` first",
            a.bin.display()
        );
    }
    let root = workspace_root();
    let dir = temp_dir("e2e-throughput");
    let broker = Broker::start(&dir)?;
    let cfg_path = dir.join("adclick.toml");
    std::fs::write(&cfg_path, config(a.batch_max_events))?;
    eprintln!("broker {} · run dir {}", broker.bootstrap, dir.display());

    let t = Instant::now();
    let status = Command::new(&a.bin)
        .args(["gen", "--config"])
        .arg(&cfg_path)
        .args(["--bootstrap", &broker.bootstrap])
        .args([
            "--events",
            &a.events.to_string(),
            "--minutes",
            &a.minutes.to_string(),
            "--ads",
            &a.ads.to_string(),
        ])
        .args(["--malformed-every", "0", "--duplicate-every", "0"])
        .stderr(std::process::Stdio::piped())
        .output()
        .context("running adclick gen")?;
    let gen_log = String::from_utf8_lossy(&status.stderr);
    eprint!("{gen_log}");
    if !status.status.success() {
        bail!("adclick gen failed: {}", status.status);
    }
    // `produced N records ...`: the broker's high watermarks can lag it briefly.
    let produced: u64 = gen_log
        .lines()
        .find_map(|l| l.strip_prefix("produced ")?.split(' ').next()?.parse().ok())
        .context("adclick gen did not report how many records it produced")?;
    let in_topic = topic_records(&broker.bootstrap)?;
    eprintln!(
        "gen: {produced} records produced, high watermarks say {in_topic}, {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let (records, broker_secs, broker_steady) = broker_only(&broker.bootstrap, produced)?;
    if records != produced {
        eprintln!("WARNING: the broker served {records} of the {produced} records gen reported as delivered");
    }
    let n = records;
    let broker_rate = n as f64 / broker_secs;

    let base = loop {
        let p = free_port();
        if p > 1024 && p < 60000 {
            break p;
        }
    };
    let run_dir = dir.join("cluster");
    let env = [
        ("ADCLICK_BIN", a.bin.display().to_string()),
        ("ADCLICK_CONFIG", cfg_path.display().to_string()),
        ("ADCLICK_KAFKA_BOOTSTRAP", broker.bootstrap.clone()),
        ("ADCLICK_NODES", a.nodes.to_string()),
        ("ADCLICK_RUN_DIR", run_dir.display().to_string()),
        ("ADCLICK_BASE_PORT", base.to_string()),
        ("ADCLICK_SERVING", "0".to_string()),
    ];
    let script = root.join("deploy/local/cluster.sh");
    let started = Instant::now();
    cluster(&script, "start", &env)?;
    let result = wait_for_pipeline(base, a.nodes, records, &run_dir, started);
    let stop = cluster(&script, "stop", &env);
    let PipelineRun {
        startup,
        secs: pipeline_secs,
        cpu,
        steady,
    } = result?;
    stop?;
    let pipeline_rate = records as f64 / pipeline_secs;
    let coordinator_log =
        std::fs::read_to_string(run_dir.join("logs/coordinator.log")).unwrap_or_default();
    let deployments = coordinator_log
        .lines()
        .filter(|l| l.contains("generation deployed"))
        .count();
    println!("records                 {records}");
    println!("broker-only (1 consumer, {PARTITIONS} partitions)  {broker_rate:>10.0} msgs/s  ({broker_secs:.2} s)");
    println!("pipeline ({} nodes)      {pipeline_rate:>10.0} msgs/s  ({pipeline_secs:.2} s; first record read {startup:.2} s after start)", a.nodes);
    println!(
        "ratio pipeline/broker   {:.2}  (target >= 0.70)",
        pipeline_rate / broker_rate
    );
    println!(
        "steady state (10-90 %)  broker-only {broker_steady:.0} msgs/s, pipeline {steady:.0} msgs/s, ratio {:.2}",
        steady / broker_steady
    );
    let cpu_list: Vec<String> = cpu.iter().map(|(n, s)| format!("{n} {s:.1}s")).collect();
    println!("cpu during the pipeline run: {}", cpu_list.join(", "));
    println!("deployments             {deployments}  (more than 1 means a redeploy re-read input: the run is not valid)");
    Ok(())
}
