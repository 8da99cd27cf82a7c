//! Shared scenario for the serving tests: a seeded set of aggregate records
//! (with late revisions, re-delivered duplicates, stale copies and the top-N
//! trap), its ground truth, a producer, database dumps, the
//! `adclick writer` / `adclick query` processes, and a tiny HTTP client.

#![allow(dead_code)]

pub mod truth;

use adclick_core::output::{CountRecord, OutputRecord, TopNRecord};
use adclick_core::output_wire;
use adclick_core::topn::{top_n, AdClicks};
use adclick_testkit::wait_for_port;
use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One minute, the default window.
pub const MINUTE: i64 = 60_000;
/// First window start of the scenario (2021-03-03T00:00:00Z).
pub const T0: i64 = 1_614_729_600_000;
/// N of top-N in the scenario's config (small, so the trap is easy to build).
pub const TOP_N: usize = 3;
/// Precomputed M values.
pub const TOP_WINDOWS: [u32; 2] = [1, 5];
/// Slices written.
pub const SLICES: [&str; 4] = ["*", "country=US", "country=DE", "na"];
/// The ad that is never in a single minute's top-3 but leads over 5 minutes.
pub const TRAP: &str = "ad-trap";

/// Final value of a count key: `(slice, ad_id, window_start) -> (clicks, impressions)`.
pub type CountTruth = BTreeMap<(String, String, i64), (i64, i64)>;
/// Final value of a top-N key: `(slice, M, window_end) -> ads`.
pub type TopTruth = BTreeMap<(String, i64, i64), Vec<AdClicks>>;

/// The records to produce, in order, and what the database must end up holding.
pub struct Scenario {
    /// Records in production order, including superseded and stale copies.
    pub records: Vec<OutputRecord>,
    /// Exact final counts.
    pub counts: CountTruth,
    /// Exact final top-N lists.
    pub top: TopTruth,
    /// Number of minutes.
    pub minutes: i64,
}

impl Scenario {
    /// Builds the scenario for `minutes` minutes and `ads` background ads.
    pub fn new(seed: u64, minutes: i64, ads: usize) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut counts = CountTruth::new();
        for m in 0..minutes {
            let ws = T0 + m * MINUTE;
            let mut star: Vec<(String, i64, i64)> = Vec::new();
            for a in 0..ads {
                let ad = format!("ad{a:04}");
                // 30 burst ads rotate so each bursts once every 10 minutes.
                let burst = a < 30 && (a as i64) / 3 == m % 10;
                let clicks = if burst {
                    rng.random_range(20..31)
                } else if rng.random_bool(0.6) {
                    rng.random_range(0..4)
                } else {
                    0
                };
                let imps = clicks * rng.random_range(3..9) + rng.random_range(0..3);
                star.push((ad, clicks, imps));
            }
            star.push((TRAP.to_string(), 9, 40));
            for (ad, clicks, imps) in star {
                if clicks == 0 && imps == 0 {
                    continue;
                }
                let us = rng.random_range(0..=clicks);
                let de = clicks - us;
                let (us_i, de_i) = (imps / 2, imps - imps / 2);
                for (slice, c, i) in [
                    ("*", clicks, imps),
                    ("country=US", us, us_i),
                    ("country=DE", de, de_i),
                    ("na", us, us_i),
                ] {
                    if c > 0 || i > 0 {
                        counts.insert((slice.to_string(), ad.clone(), ws), (c, i));
                    }
                }
            }
        }
        let top = top_truth(&counts, minutes);
        let records = records_for(&mut rng, &counts, &top);
        Self {
            records,
            counts,
            top,
            minutes,
        }
    }

    /// Ranked truth over `[from, to)` for `slice`: `(ad, clicks, impressions)`, best first.
    pub fn ranking(&self, slice: &str, from: i64, to: i64) -> Vec<(String, i64, i64)> {
        let mut sums: HashMap<&str, (i64, i64)> = HashMap::new();
        for ((s, ad, ws), (c, i)) in &self.counts {
            if s == slice && *ws >= from && *ws < to {
                let e = sums.entry(ad.as_str()).or_default();
                e.0 += c;
                e.1 += i;
            }
        }
        let mut v: Vec<(String, i64, i64)> = sums
            .into_iter()
            .filter(|(_, (c, _))| *c > 0)
            .map(|(a, (c, i))| (a.to_string(), c, i))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    }

    /// Clicks of one ad over `[from, to)`.
    pub fn clicks(&self, slice: &str, ad: &str, from: i64, to: i64) -> i64 {
        self.counts
            .range(
                (slice.to_string(), ad.to_string(), from)..(slice.to_string(), ad.to_string(), to),
            )
            .map(|(_, (c, _))| c)
            .sum()
    }
}

fn top_truth(counts: &CountTruth, minutes: i64) -> TopTruth {
    let mut top = TopTruth::new();
    for slice in SLICES {
        for m in TOP_WINDOWS {
            let m = i64::from(m);
            for end_idx in m..=minutes {
                let end = T0 + end_idx * MINUTE;
                let from = end - m * MINUTE;
                let mut sums: BTreeMap<&str, u64> = BTreeMap::new();
                for ((s, ad, ws), (c, _)) in counts {
                    if s == slice && *ws >= from && *ws < end {
                        *sums.entry(ad.as_str()).or_default() += *c as u64;
                    }
                }
                let list = top_n(sums.iter().map(|(a, c)| (*a, *c)), TOP_N);
                if !list.is_empty() {
                    top.insert((slice.to_string(), m, end), list);
                }
            }
        }
    }
    top
}

/// Emits every final value, plus: an earlier revision before ~15 % of them,
/// a re-delivered copy after ~10 %, and a stale older-epoch copy after ~5 %.
fn records_for(rng: &mut ChaCha8Rng, counts: &CountTruth, top: &TopTruth) -> Vec<OutputRecord> {
    let mut out = Vec::new();
    for ((slice, ad, ws), (c, i)) in counts {
        let epoch = 10 + ((ws - T0) / MINUTE) as u64;
        let rec = |clicks: i64, imps: i64, epoch: u64, revision: u32| {
            OutputRecord::Count(CountRecord {
                ad_id: ad.as_str().into(),
                window_start: *ws,
                window_end: ws + MINUTE,
                slice: slice.as_str().into(),
                clicks: clicks as u64,
                impressions: imps as u64,
                revision,
                epoch,
                producer: "aggregate-0".into(),
            })
        };
        let revised = rng.random_bool(0.15);
        if revised {
            out.push(rec((c - 1).max(0), (i - 1).max(0), epoch, 0));
        }
        let final_rev = u32::from(revised);
        let final_epoch = epoch + u64::from(revised);
        out.push(rec(*c, *i, final_epoch, final_rev));
        if rng.random_bool(0.10) {
            out.push(rec(*c, *i, final_epoch, final_rev));
        }
        if rng.random_bool(0.05) {
            out.push(rec(c + 100, i + 100, epoch.saturating_sub(5), 7));
        }
    }
    for ((slice, m, end), ads) in top {
        let epoch = 10 + ((end - T0) / MINUTE) as u64;
        let rec = |ads: Vec<AdClicks>, epoch: u64, revision: u32| {
            OutputRecord::TopN(TopNRecord {
                window_end: *end,
                window_minutes: *m as u32,
                slice: slice.clone(),
                ads,
                revision,
                epoch,
                producer: "reduce-0".into(),
            })
        };
        if rng.random_bool(0.2) {
            out.push(rec(ads.iter().rev().cloned().collect(), epoch, 0));
            out.push(rec(ads.clone(), epoch, 1));
        } else {
            out.push(rec(ads.clone(), epoch, 0));
        }
        if rng.random_bool(0.1) {
            out.push(rec(Vec::new(), epoch.saturating_sub(3), 9));
        }
    }
    // Interleave kinds and keys the way a live stream would.
    let mut idx: Vec<usize> = (0..out.len()).collect();
    idx.sort_by_key(|i| match &out[*i] {
        OutputRecord::Count(c) => (c.window_end, 0),
        OutputRecord::TopN(t) => (t.window_end, 1),
        OutputRecord::Side(_) | OutputRecord::ReplayDone(_) => (i64::MAX, 2),
    });
    idx.into_iter().map(|i| out[i].clone()).collect()
}

/// Produces `records` with an idempotent producer, `per_flush` at a time.
///
/// Not transactional: tansu 0.6.0 does not route `EndTxn` (its ApiVersions
/// answer lacks key 26), so librdkafka's `commit_transaction` fails against
/// it. The writer still reads with `read_committed`, which shows
/// non-transactional records as they are.
pub async fn produce(
    bootstrap: &str,
    topic: &str,
    records: &[OutputRecord],
    per_flush: usize,
) -> Result<()> {
    let producer: FutureProducer = adclick_runtime::kafka::producer(bootstrap)?;
    for chunk in records.chunks(per_flush.max(1)) {
        send_all(&producer, topic, chunk).await?;
    }
    producer.flush(Duration::from_secs(30)).context("flush")?;
    Ok(())
}

/// Sum of the high watermarks of `topic`, i.e. how many records it holds.
pub fn topic_size(bootstrap: &str, topic: &str) -> Result<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = adclick_runtime::kafka::consumer(bootstrap, "serving-test-size", false)?;
    let n = adclick_runtime::kafka::partition_count(bootstrap, topic)?;
    let mut total = 0;
    for p in 0..n {
        let (low, high) = c.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        total += high - low;
    }
    Ok(total)
}

/// Most count records per message: small, so a scenario has runs cut at
/// the cap as well as runs cut by a change of window, slice or epoch.
const PACKED_COUNTS: usize = 5;

/// Enqueues every record, then waits for all deliveries.
async fn send_all(producer: &FutureProducer, topic: &str, records: &[OutputRecord]) -> Result<()> {
    let mut pending = Vec::with_capacity(records.len());
    let mut rest = records;
    while !rest.is_empty() {
        // Runs of counts share a message, as the nodes' sinks write them.
        let n = output_wire::next_message_len(rest, PACKED_COUNTS);
        let (mut key, mut payload) = (String::new(), Vec::new());
        output_wire::encode(&rest[..n], &mut key, &mut payload)?;
        rest = &rest[n..];
        let fut = producer
            .send_result(FutureRecord::to(topic).key(&key).payload(&payload))
            .map_err(|(e, _)| anyhow::anyhow!("enqueue: {e}"))?;
        pending.push(fut);
    }
    for f in pending {
        f.await
            .context("delivery cancelled")?
            .map_err(|(e, _)| anyhow::anyhow!("delivery: {e}"))?;
    }
    Ok(())
}

/// Writes the scenario's config file and returns its path.
pub fn write_config(
    dir: &Path,
    bootstrap: &str,
    db_url: &str,
    writer_ops: u16,
    query_port: u16,
    batch: usize,
) -> Result<PathBuf> {
    let path = dir.join("adclick.toml");
    let text = format!(
        r#"[kafka]
bootstrap = "{bootstrap}"
output_partitions = 4

[job]
top_n = {TOP_N}
top_windows = [1, 5]

[[slices.filters]]
id = "na"
country = ["US", "CA"]

[database]
url = "{db_url}"
retention_minutes = 120

[writer]
batch_max_records = {batch}
batch_max_ms = 100
ops_addr = "127.0.0.1:{writer_ops}"

[query]
listen = "127.0.0.1:{query_port}"
"#
    );
    std::fs::write(&path, text).context("writing config")?;
    Ok(path)
}

/// A child process killed (SIGKILL) on drop.
pub struct Proc {
    /// The child.
    pub child: Child,
}

impl Proc {
    /// Starts `adclick <sub> --config <cfg>`, logging to `dir/<name>.log`.
    pub fn start(dir: &Path, name: &str, sub: &str, cfg: &Path) -> Result<Self> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{name}.log")))?;
        let child = Command::new(env!("CARGO_BIN_EXE_adclick"))
            .args([sub, "--config"])
            .arg(cfg)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting adclick {sub}"))?;
        Ok(Self { child })
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `GET path` on `addr`; returns status and body.
pub fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").context("no header end")?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .context("no status")?
        .parse()?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// `GET` returning parsed JSON, failing on non-200.
pub fn get_json(addr: &str, path: &str) -> Result<serde_json::Value> {
    let (status, body) = http_get(addr, path)?;
    if status != 200 {
        bail!("GET {path}: {status} {body}");
    }
    serde_json::from_str(&body).with_context(|| format!("GET {path}: not JSON: {body}"))
}

/// Waits until `addr` accepts connections, or fails after `secs`.
pub fn wait_port(addr: &str, secs: u64) -> Result<()> {
    wait_for_port(addr, Duration::from_secs(secs))
}

/// The database's full contents, comparable with the truth.
pub struct Dump {
    /// Counts.
    pub counts: CountTruth,
    /// Top-N lists.
    pub top: TopTruth,
}

/// Raw count rows: (slice, ad_id, window_start, clicks, impressions).
type CountRows = Vec<(String, String, i64, i64, i64)>;
/// Raw top-N rows: (slice, window_minutes, window_end, ads JSON).
type TopRows = Vec<(String, i64, i64, String)>;

/// Reads every count and top-N row.
pub async fn dump(url: &str) -> Result<Dump> {
    let (c, t): (CountRows, TopRows) = if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(url).await?;
        let c =
            sqlx::query_as("SELECT slice, ad_id, window_start, clicks, impressions FROM counts")
                .fetch_all(&pool)
                .await?;
        let t = sqlx::query_as("SELECT slice, window_minutes, window_end, ads FROM top_n")
            .fetch_all(&pool)
            .await?;
        pool.close().await;
        (c, t)
    } else {
        let pool = sqlx::PgPool::connect(url).await?;
        let c =
            sqlx::query_as("SELECT slice, ad_id, window_start, clicks, impressions FROM counts")
                .fetch_all(&pool)
                .await?;
        let t = sqlx::query_as("SELECT slice, window_minutes, window_end, ads FROM top_n")
            .fetch_all(&pool)
            .await?;
        pool.close().await;
        (c, t)
    };
    let counts = c
        .into_iter()
        .map(|(s, a, w, c, i)| ((s, a, w), (c, i)))
        .collect();
    let mut top = TopTruth::new();
    for (s, m, e, ads) in t {
        top.insert((s, m, e), serde_json::from_str(&ads)?);
    }
    Ok(Dump { counts, top })
}

/// Polls the database until it equals the truth; returns the last dump either way.
pub async fn wait_for_truth(url: &str, sc: &Scenario, secs: u64) -> Result<Dump> {
    let start = Instant::now();
    loop {
        let d = match dump(url).await {
            Ok(d) => d,
            Err(_) if start.elapsed() < Duration::from_secs(secs) => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        if (d.counts == sc.counts && d.top == sc.top) || start.elapsed() > Duration::from_secs(secs)
        {
            return Ok(d);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Describes how a dump differs from the truth (first few keys).
pub fn diff(d: &Dump, sc: &Scenario) -> String {
    let mut out = Vec::new();
    for (k, v) in &sc.counts {
        if d.counts.get(k) != Some(v) {
            out.push(format!("count {k:?}: want {v:?} got {:?}", d.counts.get(k)));
        }
    }
    out.extend(
        d.counts
            .keys()
            .filter(|k| !sc.counts.contains_key(*k))
            .map(|k| format!("extra count {k:?}")),
    );
    for (k, v) in &sc.top {
        if d.top.get(k) != Some(v) {
            out.push(format!("top {k:?}: want {v:?} got {:?}", d.top.get(k)));
        }
    }
    out.extend(
        d.top
            .keys()
            .filter(|k| !sc.top.contains_key(*k))
            .map(|k| format!("extra top {k:?}")),
    );
    format!(
        "{} differences, first: {:#?}",
        out.len(),
        &out[..out.len().min(8)]
    )
}

/// Polls the database (blocking) until its counts equal `want` on reads 3 s
/// apart, or fails with the first differences.
pub fn wait_for_db_counts(url: &str, want: &CountTruth, timeout: Duration) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let start = Instant::now();
    let mut equal_since: Option<Instant> = None;
    loop {
        let got = rt.block_on(dump(url)).map(|d| d.counts);
        match &got {
            Ok(c) if c == want => match equal_since {
                Some(t) if t.elapsed() > Duration::from_secs(3) => return Ok(()),
                None => equal_since = Some(Instant::now()),
                _ => {}
            },
            _ => equal_since = None,
        }
        if start.elapsed() > timeout {
            let diff: Vec<String> = match &got {
                Ok(c) => want
                    .iter()
                    .filter(|(k, v)| c.get(*k) != Some(*v))
                    .take(5)
                    .map(|(k, v)| format!("{k:?}: want {v:?}, got {:?}", c.get(k)))
                    .chain(
                        c.keys()
                            .filter(|k| !want.contains_key(*k))
                            .take(5)
                            .map(|k| format!("extra {k:?}")),
                    )
                    .collect(),
                Err(e) => vec![format!("{e:#}")],
            };
            bail!("database counts differ from the truth after {timeout:?}: {diff:#?}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
