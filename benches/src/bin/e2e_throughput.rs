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
//! 5. prints both rates and their ratio (target: pipeline ≥ 0.7 × broker);
//! 6. with `--modes eo,alo` (issue 4) runs step 4 once per mode on the same
//!    input, each a fresh job: `eo` = exactly-once (barrier checkpoints,
//!    output committed per checkpoint), `alo` = `checkpoint.exactly_once =
//!    false` (no checkpoints, output written at once). For every run it also
//!    prints the time until the last output record and, for `eo`, every
//!    checkpoint's duration and size with the peak number of (ad, window)
//!    cells held, which is how the checkpoint cost at 2M distinct ads is
//!    measured (`--ads 2000000`).
//!
//! Build and run from the workspace root:
//! `cargo build --release --bin adclick && cargo run --release -p adclick-benches --features e2e --bin e2e_throughput -- --events 1000000`
//!
//! 7. with `--broker nisshi` (issue 15) everything runs on nisshi 0.7.0,
//!    which serves Kafka transactions; modes `eo-txn` and `eo-replay` force
//!    the transactional or the replay sink (`eo` lets `auto` choose).
//!
//! 8. `--source-property NAME=VALUE` (repeatable; issue 11) sets a
//!    `[kafka.source_consumer]` property of the Map actors' consumer, and the
//!    same property on the broker-only consumer, so both rates use the same
//!    fetch settings. `--consumer-api` also times the broker-only read
//!    through rdkafka's `StreamConsumer::recv` on a tokio runtime, the API
//!    the Map actors use, next to `BaseConsumer::poll`: the cost of taking
//!    records one at a time through the async API. `--reference-property`
//!    sets a property on the broker-only consumer alone, so each side reads
//!    at its fastest settings.
//!
//! 9. for both reads it prints the CPU per record read of every process
//!    involved (the broker included): on shared cores, a pipeline that
//!    keeps them busy reads at about the inverse of its cost per record.
//!
//! Flags and their defaults: `e2e_throughput --help`.

use adclick_benches::e2e::*;
use adclick_testkit::{temp_dir, Broker, BrokerKind};
use anyhow::{bail, Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// End-to-end throughput of the cluster next to the broker-only rate, in
/// one run; see the module documentation for what each step measures.
#[derive(clap::Parser)]
#[command(name = "e2e_throughput")]
struct Args {
    /// Input events to generate.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Distinct ads in the input.
    #[arg(long, default_value_t = 200_000)]
    ads: u64,
    /// Minutes of event time the input spans.
    #[arg(long, default_value_t = 10)]
    minutes: u64,
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 3)]
    nodes: u32,
    /// `map.batch_max_events` of the job.
    #[arg(long, default_value_t = 16_384)]
    batch_max_events: usize,
    /// The adclick binary.
    #[arg(long, default_value_os_t = workspace_root().join("target/release/adclick"))]
    bin: PathBuf,
    /// Pipeline runs, in order, each a fresh job on the same input.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "eo")]
    modes: Vec<Mode>,
    /// `checkpoint.interval_ms` of the job.
    #[arg(long, default_value_t = 10_000)]
    checkpoint_interval_ms: u64,
    /// The broker to run on.
    #[arg(long, value_parser = parse_broker, default_value = "tansu")]
    broker: BrokerKind,
    /// `NAME=VALUE` of `[kafka.source_consumer]` for every run, also set on
    /// the broker-only consumer (repeatable).
    #[arg(long = "source-property", value_parser = parse_property)]
    source_properties: Vec<(String, String)>,
    /// `NAME=VALUE` for the broker-only consumer alone, after the
    /// `--source-property` ones (repeatable): each side at the settings it
    /// reads fastest with (on tansu 0.6, the reference at
    /// `fetch.wait.max.ms=1`, the pipeline at its default of 100).
    #[arg(long = "reference-property", value_parser = parse_property)]
    reference_properties: Vec<(String, String)>,
    /// Also time the broker-only read through `StreamConsumer::recv`.
    #[arg(long)]
    consumer_api: bool,
    /// `kafka.counts_per_message` values: every mode runs once with each,
    /// so packed and one-record-per-message output compare in one run.
    #[arg(long, value_delimiter = ',', default_value = "256")]
    counts_per_message: Vec<u32>,
}

/// Delivery mode of one pipeline run.
#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
enum Mode {
    /// Exactly once, the sink chosen by `auto`.
    #[value(name = "eo")]
    ExactlyOnce,
    /// Exactly once with the transactional sink forced.
    #[value(name = "eo-txn")]
    Transactional,
    /// Exactly once with the replay sink forced.
    #[value(name = "eo-replay")]
    Replay,
    /// At least once: no checkpoints, output written at once.
    #[value(name = "alo")]
    AtLeastOnce,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::ExactlyOnce => "exactly-once (sink: auto)",
            Mode::Transactional => "exactly-once, transactional sink",
            Mode::Replay => "exactly-once, replay sink",
            Mode::AtLeastOnce => "at-least-once",
        }
    }

    /// `checkpoint.kafka_transactions` of the run.
    fn transactions(self) -> &'static str {
        match self {
            Mode::Transactional => "true",
            Mode::Replay => "false",
            Mode::ExactlyOnce | Mode::AtLeastOnce => "auto",
        }
    }
}

fn parse_broker(name: &str) -> Result<BrokerKind, String> {
    match name {
        "tansu" => Ok(BrokerKind::Tansu),
        "nisshi" => Ok(BrokerKind::Nisshi),
        other => Err(format!("unknown broker {other}: use tansu or nisshi")),
    }
}

fn parse_property(v: &str) -> Result<(String, String), String> {
    v.split_once('=')
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("{v}: use NAME=VALUE"))
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

/// What the broker-only read measured.
struct BrokerOnlyRun {
    /// Records read.
    records: u64,
    /// Seconds from the first record read to the last.
    secs: f64,
    /// Records per second between 10 % and 90 % of the input.
    steady: f64,
    /// CPU seconds over the same interval: the broker's, and this
    /// process's (the consumer and librdkafka's threads).
    broker_cpu: f64,
    reader_cpu: f64,
}

/// CPU seconds of `pid` now, 0 when it cannot be read (the figure is then
/// visibly wrong rather than the run lost).
fn cpu_now(pid: &str) -> f64 {
    process_cpu_secs(pid).unwrap_or(0.0)
}

/// Reads every record with a plain consumer, timing it from the first
/// record to the last and reading the CPU the broker and the reader used.
fn broker_only(
    a: &Args,
    bootstrap: &str,
    broker_pid: &str,
    expected: u64,
) -> Result<BrokerOnlyRun> {
    let c: BaseConsumer = plain_consumer(a, bootstrap, "e2e-throughput-plain")?;
    let (mut n, mut bytes, mut first) = (0u64, 0u64, None);
    let mut samples = Vec::new();
    let (mut broker_cpu, mut reader_cpu) = (0.0, 0.0);
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
                if first.is_none() {
                    first = Some(Instant::now());
                    broker_cpu = -cpu_now(broker_pid);
                    reader_cpu = -cpu_now("self");
                }
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
    broker_cpu += cpu_now(broker_pid);
    reader_cpu += cpu_now("self");
    let secs = first.map_or(0.0, |f| end.duration_since(f).as_secs_f64());
    eprintln!("broker-only: {n} records, {:.1} MB", bytes as f64 / 1e6);
    Ok(BrokerOnlyRun {
        records: n,
        secs,
        steady: steady_rate(&samples, expected),
        broker_cpu,
        reader_cpu,
    })
}

/// A consumer with the Map actors' fetch settings
/// (`runtime::kafka::source_consumer`), every input partition assigned from
/// the beginning.
fn plain_consumer<C: rdkafka::config::FromClientConfig + Consumer>(
    a: &Args,
    bootstrap: &str,
    group: &str,
) -> Result<C> {
    let mut cfg = client(bootstrap);
    cfg.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", "100");
    for (name, value) in a.source_properties.iter().chain(&a.reference_properties) {
        cfg.set(name, value);
    }
    let c: C = cfg.create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(TOPIC, p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    Ok(c)
}

/// The broker-only read through `StreamConsumer::recv` on a current-thread
/// tokio runtime, as a Map actor takes records; returns (records, seconds
/// from the first record to the last).
fn broker_only_stream(a: &Args, bootstrap: &str, expected: u64) -> Result<(u64, f64)> {
    use rdkafka::consumer::StreamConsumer;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let c: StreamConsumer = plain_consumer(a, bootstrap, "e2e-throughput-stream")?;
        let (mut n, mut first, mut end) = (0u64, None, Instant::now());
        while n < expected {
            match tokio::time::timeout(Duration::from_secs(5), c.recv()).await {
                Err(_) => break,
                Ok(Err(e)) => eprintln!("stream consumer: {e}"),
                Ok(Ok(m)) => {
                    first.get_or_insert_with(Instant::now);
                    std::hint::black_box(m.payload());
                    n += 1;
                    end = Instant::now();
                }
            }
        }
        let secs = first.map_or(0.0, |f: Instant| end.duration_since(f).as_secs_f64());
        Ok((n, secs))
    })
}

/// What the pipeline run measured.
struct PipelineRun {
    /// Seconds from `cluster.sh start` to the first record read.
    startup: f64,
    /// Seconds from the first record read to the last.
    secs: f64,
    /// CPU seconds per cluster process over the same interval.
    cpu: Vec<(String, f64)>,
    /// The broker's CPU seconds over the same interval.
    broker_cpu: f64,
    /// CPU seconds per cluster process from the first record read to the
    /// last output record (the closing windows' output and the idle wait
    /// for the last window to close included), sampled at the first poll
    /// that saw the output stop growing.
    cpu_to_last_output: Vec<(String, f64)>,
    /// CPU seconds per second all cluster processes use once the output
    /// has stopped (timers, heartbeats, fetch polls, idle checkpoints):
    /// a cost per second, not per event.
    idle_cpu_rate: f64,
    /// Records per second between 10 % and 90 % of the input: insensitive
    /// to when the first counter sample lands and to the tail.
    steady: f64,
    /// Seconds from the first record read to the last output record
    /// written (in exactly-once mode: committed).
    to_last_output: f64,
    /// Most (ad, window) cells the aggregates held at once.
    peak_cells: f64,
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
    (records, broker_pid): (u64, &str),
    run_dir: &Path,
    started: Instant,
    settle: Duration,
) -> Result<PipelineRun> {
    let mut first: Option<Instant> = None;
    let mut cpu_at_first = Vec::new();
    let mut broker_cpu_at_first = 0.0;
    let mut samples = Vec::new();
    let mut peak_cells = 0.0f64;
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let seen = node_metric(base, nodes, "events_in_total") as u64;
        samples.push((Instant::now(), seen));
        if seen > 0 && first.is_none() {
            first = Some(Instant::now());
            cpu_at_first = cpu_secs(&run_dir.join("pids"));
            broker_cpu_at_first = cpu_now(broker_pid);
        }
        // Scraping costs the nodes CPU: the cell count once a second only.
        if samples.len() % 20 == 0 {
            peak_cells = peak_cells.max(node_metric(base, nodes, "aggregate_cells"));
        }
        if seen >= records {
            let f = first.expect("set above");
            let secs = f.elapsed().as_secs_f64();
            let since_first = |at_end: Vec<(String, f64)>| -> Vec<(String, f64)> {
                at_end
                    .into_iter()
                    .map(|(name, end)| {
                        let start = cpu_at_first
                            .iter()
                            .find(|(n, _)| *n == name)
                            .map_or(0.0, |(_, s)| *s);
                        (name, end - start)
                    })
                    .collect()
            };
            let cpu = since_first(cpu_secs(&run_dir.join("pids")));
            let broker_cpu = cpu_now(broker_pid) - broker_cpu_at_first;
            let out = wait_for_output(base, nodes, settle, &run_dir.join("pids"));
            let cpu_to_last_output = since_first(out.cpu_at_last);
            return Ok(PipelineRun {
                startup: f.duration_since(started).as_secs_f64(),
                secs,
                steady: steady_rate(&samples, records),
                cpu,
                broker_cpu,
                cpu_to_last_output,
                idle_cpu_rate: out.idle_cpu_rate,
                to_last_output: out.last.duration_since(f).as_secs_f64(),
                peak_cells: peak_cells.max(out.peak_cells),
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

/// One pipeline run of `mode` over the input already in the broker.
fn run_pipeline(
    a: &Args,
    dir: &Path,
    (bootstrap, broker_pid): (&str, &str),
    records: u64,
    round: usize,
    (mode, per_message): (Mode, u32),
) -> Result<(PipelineRun, String)> {
    let cfg_path = dir.join(format!("adclick-{round}.toml"));
    let mut text = config(a.batch_max_events);
    if !a.source_properties.is_empty() {
        text.push_str("\n[kafka.source_consumer]\n");
        for (name, value) in &a.source_properties {
            text.push_str(&format!("{name:?} = {value:?}\n"));
        }
    }
    std::fs::write(&cfg_path, text)?;
    let base = base_port();
    let run_dir = dir.join(format!("cluster-{round}"));
    let mut env = cluster_env(&a.bin, &cfg_path, bootstrap, a.nodes, &run_dir, base);
    // A fresh job per run: its own name (sink markers), its own snapshots.
    env.push(("ADCLICK_CLUSTER__JOB_NAME", format!("bench{round}")));
    env.push((
        "ADCLICK_CHECKPOINT__EXACTLY_ONCE",
        (mode != Mode::AtLeastOnce).to_string(),
    ));
    env.push((
        "ADCLICK_CHECKPOINT__KAFKA_TRANSACTIONS",
        mode.transactions().to_string(),
    ));
    env.push(("ADCLICK_KAFKA__COUNTS_PER_MESSAGE", per_message.to_string()));
    env.push((
        "ADCLICK_CHECKPOINT__INTERVAL_MS",
        a.checkpoint_interval_ms.to_string(),
    ));
    let script = workspace_root().join("deploy/local/cluster.sh");
    let started = Instant::now();
    cluster(&script, "start", &env)?;
    // Output stops growing once the last window closed (idle sources move
    // time on after 3 s) and, in exactly-once mode, after one more checkpoint.
    let settle = Duration::from_millis(a.checkpoint_interval_ms + 8_000);
    let result = wait_for_pipeline(
        base,
        a.nodes,
        (records, broker_pid),
        &run_dir,
        started,
        settle,
    );
    let stop = cluster(&script, "stop", &env);
    let run = result?;
    stop?;
    // The coordinator's log, then every node's (checkpoint pauses).
    let mut log = std::fs::read_to_string(run_dir.join("logs/coordinator.log")).unwrap_or_default();
    for i in 0..a.nodes {
        let node = run_dir.join(format!("logs/node-{i}.log"));
        log.push_str(&std::fs::read_to_string(node).unwrap_or_default());
    }
    Ok((run, log))
}

fn main() -> Result<()> {
    let a = <Args as clap::Parser>::parse();
    require_bin(&a.bin)?;
    let dir = temp_dir("e2e-throughput");
    let broker = Broker::start_on(a.broker, &dir)?;
    let gen_cfg = dir.join("adclick.toml");
    std::fs::write(&gen_cfg, config(a.batch_max_events))?;
    eprintln!(
        "broker {} ({}) · run dir {}",
        broker.bootstrap,
        a.broker.program(),
        dir.display()
    );

    let t = Instant::now();
    let produced = gen(
        &a.bin,
        &gen_cfg,
        &broker.bootstrap,
        &[
            "--events".into(),
            a.events.to_string(),
            "--minutes".into(),
            a.minutes.to_string(),
            "--ads".into(),
            a.ads.to_string(),
            "--malformed-every".into(),
            "0".into(),
            "--duplicate-every".into(),
            "0".into(),
        ],
    )?;
    let in_topic = topic_records(&broker.bootstrap)?;
    eprintln!(
        "gen: {produced} records produced, high watermarks say {in_topic}, {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let broker_pid = broker.pid().to_string();
    let reference = broker_only(&a, &broker.bootstrap, &broker_pid, produced)?;
    let (records, broker_secs, broker_steady) =
        (reference.records, reference.secs, reference.steady);
    if records != produced {
        eprintln!("WARNING: the broker served {records} of the {produced} records gen reported as delivered");
    }
    let broker_rate = records as f64 / broker_secs;
    println!("records                 {records}");
    println!("broker                  {}", a.broker.program());
    println!("broker-only (1 consumer, {PARTITIONS} partitions)  {broker_rate:>10.0} msgs/s  ({broker_secs:.2} s; 10-90 % {broker_steady:.0} msgs/s)");
    println!(
        "broker-only CPU while reading: broker {:.2} s, reader {:.2} s; {:.2} us per record in all, {:.2} of the {} cores busy",
        reference.broker_cpu,
        reference.reader_cpu,
        (reference.broker_cpu + reference.reader_cpu) / records as f64 * 1e6,
        (reference.broker_cpu + reference.reader_cpu) / broker_secs,
        cores()
    );
    if !a.source_properties.is_empty() {
        println!("source consumer properties  {:?}", a.source_properties);
    }
    if !a.reference_properties.is_empty() {
        println!("broker-only consumer alone  {:?}", a.reference_properties);
    }
    if a.consumer_api {
        let (n, secs) = broker_only_stream(&a, &broker.bootstrap, produced)?;
        println!(
            "broker-only, StreamConsumer::recv  {:>10.0} msgs/s  ({n} records, {secs:.2} s; {:.2} of poll)",
            n as f64 / secs,
            n as f64 / secs / broker_rate
        );
    }
    let runs = a
        .modes
        .iter()
        .flat_map(|m| a.counts_per_message.iter().map(move |c| (*m, *c)));
    for (round, (mode, per_message)) in runs.enumerate() {
        let (run, log) = run_pipeline(
            &a,
            &dir,
            (&broker.bootstrap, &broker_pid),
            records,
            round,
            (mode, per_message),
        )?;
        report(
            &a,
            round,
            (mode, per_message),
            &run,
            &log,
            records,
            &reference,
        );
    }
    Ok(())
}

fn report(
    a: &Args,
    round: usize,
    (mode, per_message): (Mode, u32),
    run: &PipelineRun,
    log: &str,
    records: u64,
    reference: &BrokerOnlyRun,
) {
    let broker_rate = reference.records as f64 / reference.secs;
    let rate = records as f64 / run.secs;
    let deployments = log
        .lines()
        .filter(|l| l.contains("generation deployed"))
        .count();
    println!(
        "--- run {round}: {}, {per_message} count records per message ---",
        mode.name()
    );
    println!("pipeline ({} nodes)      {rate:>10.0} msgs/s  ({:.2} s; first record read {:.2} s after start)", a.nodes, run.secs, run.startup);
    println!(
        "ratio pipeline/broker   {:.2}  (target >= 0.85 against the broker-only read at its fastest settings)",
        rate / broker_rate
    );
    println!("steady state (10-90 %)  {:.0} msgs/s", run.steady);
    println!(
        "first record read -> last output record  {:.2} s",
        run.to_last_output
    );
    println!("peak (ad, window) cells held  {:.0}", run.peak_cells);
    let cpu_list: Vec<String> = run
        .cpu
        .iter()
        .map(|(n, s)| format!("{n} {s:.1}s"))
        .collect();
    println!("cpu: {}", cpu_list.join(", "));
    cpu_budget(run, records, reference);
    let total: f64 = run.cpu_to_last_output.iter().map(|(_, s)| s).sum();
    let cpu_list: Vec<String> = run
        .cpu_to_last_output
        .iter()
        .map(|(n, s)| format!("{n} {s:.1}s"))
        .collect();
    println!(
        "cpu to last output: {} (total {total:.1}s)",
        cpu_list.join(", ")
    );
    let idle = run.idle_cpu_rate * run.to_last_output;
    println!(
        "idle cpu of all processes {:.3} cpu-s/s once the output stopped; to last output less that rate over the same {:.1} s: {:.1}s",
        run.idle_cpu_rate,
        run.to_last_output,
        total - idle
    );
    println!("deployments             {deployments}  (more than 1 means a redeploy re-read input: the run is not valid)");
    let cps = checkpoints(log);
    if !cps.is_empty() {
        let ms: Vec<u64> = cps.iter().map(|c| c.0).collect();
        let (min, med, mean, max) = stats(&ms);
        let mb = cps.iter().map(|c| c.1).max().unwrap_or(0) as f64 / 1e6;
        println!("checkpoints {}: duration min {min:.0} / median {med:.0} / mean {mean:.0} / max {max:.0} ms; largest {mb:.1} MB", cps.len());
        let all: Vec<String> = cps
            .iter()
            .map(|(ms, b)| format!("{ms}ms/{:.1}MB", *b as f64 / 1e6))
            .collect();
        println!("  each: {}", all.join(" "));
    }
    for kind in ["map", "aggregate", "reduce"] {
        let pauses = checkpoint_pauses_us(log, kind);
        if pauses.is_empty() {
            continue;
        }
        let paused: Vec<u64> = pauses.iter().map(|p| p.wall).collect();
        let frozen: Vec<u64> = pauses.iter().map(|p| p.freeze).collect();
        let cpu: Vec<u64> = pauses.iter().filter_map(|p| p.freeze_cpu).collect();
        let (min, med, _, max) = stats(&paused);
        let (_, fmed, _, fmax) = stats(&frozen);
        let (_, cmed, _, cmax) = stats(&cpu);
        println!(
            "{kind} paused per checkpoint ({} snapshots): min {:.1} / median {:.1} / max {:.1} ms; freezing median {:.1} / max {:.1} ms, the rest forwarding the barrier; CPU used freezing median {:.1} / max {:.1} ms, the rest of the freeze waiting for a core",
            pauses.len(),
            min / 1e3,
            med / 1e3,
            max / 1e3,
            fmed / 1e3,
            fmax / 1e3,
            cmed / 1e3,
            cmax / 1e3
        );
    }
}

/// Cores this machine has (what a CPU-bound read can use at most).
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Where the read rate's ceiling is when every process shares the cores:
/// the CPU each read record costs in all (broker included) in the pipeline
/// next to the broker-only read. When both keep the cores busy, the rates'
/// ratio is about the inverse of these costs' ratio.
fn cpu_budget(run: &PipelineRun, records: u64, reference: &BrokerOnlyRun) {
    let nodes: f64 = run.cpu.iter().map(|(_, s)| s).sum();
    let per = |cpu: f64, n: u64| cpu / n as f64 * 1e6;
    let pipeline_us = per(nodes + run.broker_cpu, records);
    let reference_us = per(
        reference.broker_cpu + reference.reader_cpu,
        reference.records,
    );
    println!(
        "CPU per record read: pipeline {pipeline_us:.2} us (broker {:.2}, cluster {:.2}; {:.2} of the {} cores busy) vs broker-only {reference_us:.2} us; ratio of costs {:.2}",
        per(run.broker_cpu, records),
        per(nodes, records),
        (nodes + run.broker_cpu) / run.secs,
        cores(),
        reference_us / pipeline_us
    );
}
