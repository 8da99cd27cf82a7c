//! Shared harness of the end-to-end tests: a real broker, the local cluster
//! started through `deploy/local/cluster.sh`, the generator, and a
//! read_committed reader that folds the aggregates topic into final values.

#![allow(dead_code)]

use adclick_core::output::OutputRecord;
use adclick_core::truth::Truth;
use adclick_testkit::{free_port, Broker};
use anyhow::{bail, Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The adclick binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_adclick")
}

/// The adclickctl binary, built beside adclick by the workspace build.
pub fn ctl_bin() -> PathBuf {
    Path::new(bin()).with_file_name("adclickctl")
}

/// A config tuned for tests: 2-second windows so M = 5 closes in seconds.
pub fn test_config(extra: &str) -> String {
    format!(
        r#"
[kafka]
input_partitions = 4
output_partitions = 4

[cluster]
heartbeat_interval_ms = 500
heartbeat_timeout_ms = 3000

[job]
window_secs = 2
max_out_of_orderness_ms = 3000
idle_timeout_ms = 3000
allowed_lateness_ms = 60000
batch_max_ms = 50

[aggregate]
replicas = 3

[checkpoint]
interval_ms = 1000
timeout_ms = 10000
{extra}
"#
    )
}

/// A running local cluster; stopped on drop.
pub struct Cluster {
    /// Run directory (pids, logs).
    pub run_dir: PathBuf,
    /// Coordinator gRPC address.
    pub coordinator: String,
    /// First port of the cluster's range.
    pub base_port: u16,
    env: Vec<(String, String)>,
}

fn base_port() -> u16 {
    // A block of 64 ports whose first one is free right now.
    loop {
        let p = free_port();
        if p > 1024 && p < 60000 {
            return p;
        }
    }
}

impl Cluster {
    /// Starts a coordinator and `nodes` nodes against `bootstrap`.
    pub fn start(
        dir: &Path,
        bootstrap: &str,
        config: &Path,
        nodes: u32,
        serving: bool,
    ) -> Result<Self> {
        Self::start_full(dir, bootstrap, config, nodes, serving, &[])
    }

    /// Like [`start`](Self::start), without serving, with extra environment
    /// for every process (e.g. a fail point).
    pub fn start_with_env(
        dir: &Path,
        bootstrap: &str,
        config: &Path,
        nodes: u32,
        extra: &[(&str, &str)],
    ) -> Result<Self> {
        Self::start_full(dir, bootstrap, config, nodes, false, extra)
    }

    fn start_full(
        dir: &Path,
        bootstrap: &str,
        config: &Path,
        nodes: u32,
        serving: bool,
        extra: &[(&str, &str)],
    ) -> Result<Self> {
        let base = base_port();
        let run_dir = dir.join("cluster");
        let env = vec![
            ("ADCLICK_BIN".to_string(), bin().to_string()),
            ("ADCLICK_CONFIG".to_string(), config.display().to_string()),
            ("ADCLICK_KAFKA_BOOTSTRAP".to_string(), bootstrap.to_string()),
            ("ADCLICK_NODES".to_string(), nodes.to_string()),
            ("ADCLICK_RUN_DIR".to_string(), run_dir.display().to_string()),
            ("ADCLICK_BASE_PORT".to_string(), base.to_string()),
            (
                "ADCLICK_SERVING".to_string(),
                if serving { "1" } else { "0" }.to_string(),
            ),
        ];
        let c = Self {
            run_dir,
            coordinator: format!("127.0.0.1:{base}"),
            base_port: base,
            env,
        };
        c.script_env("start", &[], extra)?;
        Ok(c)
    }

    fn script(&self, verb: &str) -> Result<String> {
        self.script_env(verb, &[], &[])
    }

    fn script_env(&self, verb: &str, args: &[&str], extra_env: &[(&str, &str)]) -> Result<String> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/local/cluster.sh");
        let out = Command::new("bash")
            .arg(script)
            .arg(verb)
            .args(args)
            .envs(self.env.iter().cloned())
            .envs(
                extra_env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string())),
            )
            .output()
            .context("running cluster.sh")?;
        if !out.status.success() {
            bail!(
                "cluster.sh {verb} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// (Re)starts one process (`coordinator`, `node-1`, ...) with extra
    /// environment variables.
    pub fn start_one(&self, name: &str, extra_env: &[(&str, &str)]) -> Result<()> {
        self.script_env("start-one", &[name], extra_env).map(|_| ())
    }

    /// Sends `signal` (e.g. "KILL", "STOP", "CONT") to a process of the cluster.
    pub fn signal(&self, name: &str, signal: &str) -> Result<()> {
        let pid = self.pid(name)?;
        let st = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()?;
        anyhow::ensure!(st.success(), "kill -{signal} {name} failed");
        Ok(())
    }

    /// Whether a process of the cluster is alive.
    pub fn alive(&self, name: &str) -> bool {
        // A killed process that nobody reaped yet is a zombie: dead.
        self.pid(name).is_ok_and(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
            })
        })
    }

    /// `adclickctl -o json status` against this cluster.
    pub fn status_json(&self) -> Result<serde_json::Value> {
        self.ctl(&["status"])
    }

    /// Runs `adclickctl -o json <args>` against this cluster.
    pub fn ctl(&self, args: &[&str]) -> Result<serde_json::Value> {
        anyhow::ensure!(
            ctl_bin().is_file(),
            "{} is missing: run `cargo build --workspace --bins` (scripts/test.sh does)",
            ctl_bin().display()
        );
        let out = Command::new(ctl_bin())
            .args(["--coordinator", &self.coordinator, "-o", "json"])
            .args(args)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "adclickctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Pid of a process started by the script (`coordinator`, `node-1`, ...).
    pub fn pid(&self, name: &str) -> Result<i32> {
        let text = std::fs::read_to_string(self.run_dir.join("pids").join(format!("{name}.pid")))?;
        Ok(text.trim().parse()?)
    }

    /// Sum of a counter over every node's `/metrics`.
    pub fn node_counter(&self, nodes: u32, name: &str) -> f64 {
        (0..nodes)
            .filter_map(|i| {
                http_get(
                    &format!("127.0.0.1:{}", self.base_port + 40 + i as u16),
                    "/metrics",
                )
                .ok()
            })
            .map(|body| metric_sum(&body, name))
            .sum()
    }

    /// Output of `cluster.sh status`.
    pub fn status(&self) -> Result<String> {
        self.script("status")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.script("stop");
    }
}

/// Minimal HTTP/1.0 GET returning the body.
pub fn http_get(addr: &str, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    Ok(buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}

/// Sum of every sample of metric `name` in a Prometheus text body.
pub fn metric_sum(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split([' ', '{']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Starts `adclick gen` in the background (e.g. with `--rate`) so faults can
/// be injected while data flows; the truth is read after it exits.
pub fn spawn_generate(
    dir: &Path,
    bootstrap: &str,
    config: &Path,
    args: &[&str],
) -> Result<(std::process::Child, PathBuf)> {
    let truth_path = dir.join("truth.json");
    let log = std::fs::File::create(dir.join("gen.log"))?;
    let child = Command::new(bin())
        .arg("gen")
        .args(["--bootstrap", bootstrap, "--truth"])
        .arg(&truth_path)
        .arg("--config")
        .arg(config)
        .args(args)
        .stderr(log)
        .spawn()
        .context("starting adclick gen")?;
    Ok((child, truth_path))
}

/// Waits for a background generator and reads its truth.
pub fn finish_generate(mut child: std::process::Child, truth_path: &Path) -> Result<Truth> {
    let st = child.wait()?;
    anyhow::ensure!(st.success(), "gen failed: {st}");
    Ok(serde_json::from_slice(&std::fs::read(truth_path)?)?)
}

/// Runs `adclick gen` and returns its ground truth.
pub fn generate(dir: &Path, bootstrap: &str, config: &Path, args: &[&str]) -> Result<Truth> {
    let truth_path = dir.join("truth.json");
    let out = Command::new(bin())
        .arg("gen")
        .args(["--bootstrap", bootstrap, "--truth"])
        .arg(&truth_path)
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .context("running adclick gen")?;
    if !out.status.success() {
        bail!("gen failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&std::fs::read(&truth_path)?)?)
}

type CountKey = (String, i64, String);
type TopKey = (String, u32, i64);

/// The aggregates topic folded to the newest version of every key.
#[derive(Default, Debug)]
pub struct Folded {
    /// (slice, window_start, ad) → ((epoch, revision), clicks, impressions).
    pub counts: HashMap<CountKey, ((u64, u32), u64, u64)>,
    /// (slice, M, window_end) → ((epoch, revision), ads).
    pub tops: HashMap<TopKey, ((u64, u32), Vec<(String, u64)>)>,
    /// Same key and version with different values: never acceptable.
    pub conflicts: Vec<String>,
    /// Records read.
    pub records: u64,
}

impl Folded {
    fn add(&mut self, r: OutputRecord) {
        self.records += 1;
        let v = r.version();
        match r {
            OutputRecord::Count(c) => {
                let key = (c.slice.clone(), c.window_start, c.ad_id.clone());
                match self.counts.get(&key) {
                    Some((old, cl, im)) if *old == v && (*cl, *im) != (c.clicks, c.impressions) => {
                        self.conflicts.push(format!(
                            "count {key:?} version {v:?}: {cl}/{im} vs {}/{}",
                            c.clicks, c.impressions
                        ))
                    }
                    Some((old, _, _)) if *old >= v => {}
                    _ => {
                        self.counts.insert(key, (v, c.clicks, c.impressions));
                    }
                }
            }
            OutputRecord::TopN(t) => {
                let key = (t.slice.clone(), t.window_minutes, t.window_end);
                let ads: Vec<(String, u64)> =
                    t.ads.into_iter().map(|a| (a.ad_id, a.clicks)).collect();
                match self.tops.get(&key) {
                    Some((old, prev)) if *old == v && *prev != ads => self
                        .conflicts
                        .push(format!("top {key:?} version {v:?} differs")),
                    Some((old, _)) if *old >= v => {}
                    _ => {
                        self.tops.insert(key, (v, ads));
                    }
                }
            }
        }
    }

    /// Differences from the truth, at most `limit` of them (empty = equal).
    pub fn diff(&self, truth: &Truth, limit: usize) -> Vec<String> {
        let mut out: Vec<String> = self.conflicts.iter().take(limit).cloned().collect();
        let mut expected: BTreeMap<CountKey, (u64, u64)> = BTreeMap::new();
        for c in &truth.counts {
            expected.insert(
                (c.slice.clone(), c.window_start, c.ad_id.clone()),
                (c.clicks, c.impressions),
            );
        }
        for (k, want) in &expected {
            match self.counts.get(k) {
                None => out.push(format!("missing count {k:?} (want {want:?})")),
                Some((_, c, i)) if (*c, *i) != *want => out.push(format!(
                    "wrong count {k:?}: got {:?}, want {want:?}",
                    (c, i)
                )),
                _ => {}
            }
            if out.len() >= limit {
                return out;
            }
        }
        for k in self.counts.keys() {
            if !expected.contains_key(k) {
                out.push(format!("unexpected count {k:?}"));
                if out.len() >= limit {
                    return out;
                }
            }
        }
        let mut expected_top: BTreeMap<TopKey, &Vec<(String, u64)>> = BTreeMap::new();
        for t in &truth.top {
            expected_top.insert((t.slice.clone(), t.window_minutes, t.window_end), &t.ads);
        }
        for (k, want) in &expected_top {
            match self.tops.get(k) {
                None => out.push(format!("missing top {k:?}")),
                Some((_, got)) if got != *want => {
                    out.push(format!("wrong top {k:?}: got {got:?}, want {want:?}"))
                }
                _ => {}
            }
            if out.len() >= limit {
                return out;
            }
        }
        for (k, (_, ads)) in &self.tops {
            if !expected_top.contains_key(k) && !ads.is_empty() {
                out.push(format!("unexpected top {k:?}"));
                if out.len() >= limit {
                    return out;
                }
            }
        }
        out
    }
}

/// Reads a topic from the beginning with read_committed.
pub struct TopicReader {
    consumer: BaseConsumer,
}

impl TopicReader {
    /// Assigns every partition of `topic` from the beginning.
    pub fn new(bootstrap: &str, topic: &str) -> Result<Self> {
        let consumer: BaseConsumer = adclick_runtime_consumer(bootstrap)?;
        let parts = partitions(&consumer, topic)?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..parts {
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        Ok(Self { consumer })
    }

    /// Everything available within `wait` (payloads).
    pub fn drain(&self, wait: Duration) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let until = Instant::now() + wait;
        while Instant::now() < until {
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => out.push(m.payload().unwrap_or_default().to_vec()),
                Some(Err(_)) | None => {}
            }
        }
        out
    }
}

fn adclick_runtime_consumer(bootstrap: &str) -> Result<BaseConsumer> {
    Ok(rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("group.id", "adclick-test-reader")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?)
}

fn partitions(c: &BaseConsumer, topic: &str) -> Result<i32> {
    for _ in 0..100 {
        if let Ok(md) = c.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            if let Some(t) = md.topics().iter().find(|t| t.name() == topic) {
                if !t.partitions().is_empty() {
                    return Ok(t.partitions().len() as i32);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("topic {topic} not found")
}

/// Folds the aggregates topic until it equals `truth` (twice, a second
/// apart, so late extras are caught too) or `timeout` passes.
pub fn wait_for_truth(reader: &TopicReader, truth: &Truth, timeout: Duration) -> Result<Folded> {
    let mut folded = Folded::default();
    let start = Instant::now();
    let mut equal_since: Option<Instant> = None;
    loop {
        for payload in reader.drain(Duration::from_millis(500)) {
            let rec: OutputRecord =
                serde_json::from_slice(&payload).context("aggregates record is not valid JSON")?;
            folded.add(rec);
        }
        let diff = folded.diff(truth, 10);
        if diff.is_empty() {
            match equal_since {
                Some(t) if t.elapsed() > Duration::from_secs(3) => return Ok(folded),
                None => equal_since = Some(Instant::now()),
                _ => {}
            }
        } else {
            equal_since = None;
        }
        if start.elapsed() > timeout {
            bail!(
                "output does not match ground truth after {timeout:?} ({} records read):\n{}",
                folded.records,
                diff.join("\n")
            );
        }
    }
}

/// Starts a broker and writes the test config; returns both and the dir.
pub fn setup(name: &str, extra_config: &str) -> Result<(PathBuf, Broker, PathBuf)> {
    let dir = adclick_testkit::temp_dir(name);
    let broker = Broker::start(&dir)?;
    let config = dir.join("adclick.toml");
    std::fs::write(&config, test_config(extra_config))?;
    Ok((dir, broker, config))
}

// ---------------------------------------------------------------------------
// Helpers of the event-time tests (tests/e2e_event_time.rs): hand-made events
// on explicit partitions, full custom configs, side topics with headers and
// per-label metric samples.

/// A full test config with the given `[job]` body and extra sections, for
/// tests that must override job keys (`[job]` is already a table in
/// [`test_config`], so it cannot be extended from `extra`).
pub fn config_with_job(job: &str, extra: &str) -> String {
    format!(
        r#"
[kafka]
input_partitions = 4
output_partitions = 4

[cluster]
heartbeat_interval_ms = 500
heartbeat_timeout_ms = 3000

[job]
batch_max_ms = 50
{job}

[aggregate]
replicas = 3

[checkpoint]
interval_ms = 1000
timeout_ms = 10000
{extra}
"#
    )
}

/// Like [`setup`], with a complete config file.
pub fn setup_with(name: &str, full_toml: &str) -> Result<(PathBuf, Broker, PathBuf)> {
    let dir = adclick_testkit::temp_dir(name);
    let broker = Broker::start(&dir)?;
    let config = dir.join("adclick.toml");
    std::fs::write(&config, full_toml)?;
    Ok((dir, broker, config))
}

/// Creates the job's topics (4 input partitions) so events can be written to
/// explicit partitions before or while the cluster starts.
pub fn create_topics(bootstrap: &str) -> Result<()> {
    let k = adclick_core::config::KafkaConfig {
        bootstrap: bootstrap.to_string(),
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(adclick_runtime::kafka::ensure_topics(&k))?;
    adclick_runtime::kafka::partition_count(bootstrap, &k.input_topic)?;
    Ok(())
}

/// A producer that writes to explicit partitions and waits for every ack.
pub struct PartitionProducer {
    producer: rdkafka::producer::FutureProducer,
    rt: tokio::runtime::Runtime,
}

impl PartitionProducer {
    /// A producer to `bootstrap` that accepts records up to 10 MB (the
    /// oversized-field test writes a 1 MB `ad_id`).
    pub fn new(bootstrap: &str) -> Result<Self> {
        let producer = rdkafka::config::ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("broker.address.family", "v4")
            .set("message.max.bytes", "10000000")
            .set("linger.ms", "0")
            .create()
            .context("creating test producer")?;
        Ok(Self {
            producer,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        })
    }

    /// Writes `payload` to `topic`/`partition` and waits for the ack.
    pub fn send(&self, topic: &str, partition: i32, payload: &[u8]) -> Result<()> {
        let rec = rdkafka::producer::FutureRecord::<(), [u8]>::to(topic)
            .partition(partition)
            .payload(payload);
        self.rt
            .block_on(self.producer.send(rec, Duration::from_secs(30)))
            .map_err(|(e, _)| anyhow::anyhow!("producing to {topic}/{partition}: {e}"))?;
        Ok(())
    }
}

/// A JSON input event; `id = None` leaves out `event_id`.
pub fn event_json(
    ad: &str,
    ts: i64,
    user: &str,
    ip: &str,
    country: &str,
    id: Option<&str>,
    event_type: &str,
) -> String {
    let mut v = serde_json::json!({
        "ad_id": ad, "click_timestamp": ts, "user_id": user, "ip": ip, "country": country, "event_type": event_type,
    });
    if let Some(id) = id {
        v["event_id"] = serde_json::Value::from(id);
    }
    v.to_string()
}

/// A record of a side topic (dead letters, late events).
#[derive(Clone, Debug)]
pub struct SideRecord {
    /// Bytes as written.
    pub payload: Vec<u8>,
    /// Kafka headers (`reason`, `watermark`, ...).
    pub headers: HashMap<String, String>,
}

impl TopicReader {
    /// Everything available within `wait`, with headers.
    pub fn drain_with_headers(&self, wait: Duration) -> Vec<SideRecord> {
        use rdkafka::message::Headers;
        let mut out = Vec::new();
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if let Some(Ok(m)) = self.consumer.poll(Duration::from_millis(100)) {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(SideRecord {
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers,
                });
            }
        }
        out
    }
}

impl Cluster {
    /// Every sample of metric `name` over every node's `/metrics`, as
    /// (label text, value), e.g. (`partition="3"`, 1.0).
    pub fn node_samples(&self, nodes: u32, name: &str) -> Vec<(String, f64)> {
        let mut out = Vec::new();
        for i in 0..nodes {
            let Ok(body) = http_get(
                &format!("127.0.0.1:{}", self.base_port + 40 + i as u16),
                "/metrics",
            ) else {
                continue;
            };
            for l in body.lines().filter(|l| !l.starts_with('#')) {
                let Some((head, value)) = l.rsplit_once(' ') else {
                    continue;
                };
                let (metric, labels) = match head.split_once('{') {
                    Some((m, rest)) => (m, rest.trim_end_matches('}')),
                    None => (head, ""),
                };
                if metric == name {
                    if let Ok(v) = value.parse::<f64>() {
                        out.push((labels.to_string(), v));
                    }
                }
            }
        }
        out
    }
}

impl PartitionProducer {
    /// Writes every `(partition, payload)` to `topic` at once, then waits for
    /// all acks (much faster than one round trip per record).
    pub fn send_all(&self, topic: &str, records: &[(i32, Vec<u8>)]) -> Result<()> {
        self.rt.block_on(async {
            let mut acks = Vec::new();
            for (p, payload) in records {
                let rec = rdkafka::producer::FutureRecord::<(), [u8]>::to(topic)
                    .partition(*p)
                    .payload(payload.as_slice());
                acks.push(
                    self.producer
                        .send_result(rec)
                        .map_err(|(e, _)| anyhow::anyhow!("producing to {topic}/{p}: {e}"))?,
                );
            }
            for ack in acks {
                ack.await?
                    .map_err(|(e, _)| anyhow::anyhow!("producing to {topic}: {e}"))?;
            }
            Ok(())
        })
    }
}
