//! `adclick reconcile`: the billing check. Recounts a closed range of
//! windows from the raw input topic, by a batch path that shares nothing
//! with the streaming actors (see `adclick_core::reconcile` for the rules and
//! why they are exact), compares every (ad, window, slice) with the
//! aggregation database, prints the differences and stores a summary that
//! the query service exports on `/metrics`.
//!
//! Exit codes: 0 everything matches, 1 differences found, 2 usage error (bad
//! arguments or configuration), 3 any other failure (broker, database).
//!
//! The range must be closed: only windows up to the latest one the database
//! holds are accepted. Even then, an event for the range that reaches the
//! input while the run reads it, and that the job has not judged yet (it
//! will be too late, or update a window within its allowed lateness), makes
//! the recount and the database disagree for that cell; run again. Events
//! of a closed range that are still arriving are rare by construction (they
//! are later than the allowed lateness), and the report says when a side
//! record matched no input record read.

use adclick_core::config::Config;
use adclick_core::reconcile::{
    check_closed, compare, parse_range, CellKey, RecountSettings, Recounter, Report, Value,
};
use adclick_core::slice::Slicer;
use adclick_serving::db::{self, ReconcileRun, Store};
use anyhow::{bail, Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{Message, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Arguments of `adclick reconcile`.
#[derive(clap::Args, Clone, Debug)]
pub struct ReconcileArgs {
    /// Configuration file of the job (broker, topics, windows, slices, dedup, database).
    #[arg(long, env = "ADCLICK_CONFIG")]
    pub config: Option<PathBuf>,
    /// First window start of the range: RFC 3339 or epoch ms, window-aligned.
    #[arg(long, allow_hyphen_values = true)]
    pub from: String,
    /// End (exclusive) of the range: RFC 3339 or epoch ms, window-aligned, at
    /// most the end of the latest closed window. Windows less than
    /// job.allowed_lateness_ms older than the watermark may still be updated.
    #[arg(long, allow_hyphen_values = true)]
    pub to: String,
    /// Also write the full report (every difference) as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// When cells differ, replay the windows that hold them (through the
    /// coordinator, as `adclickctl replay` does), wait until the writer has
    /// stored the replay, and reconcile again; the exit code is that of the
    /// second run.
    #[arg(long)]
    pub repair: bool,
    /// Coordinator gRPC address for --repair (default: cluster.coordinator).
    #[arg(long, env = "ADCLICK_COORDINATOR")]
    pub coordinator: Option<String>,
    /// The admin API's bearer token for --repair (default: admin.token_file,
    /// then ADCLICK_ADMIN_TOKEN).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

/// Why a run did not produce a report.
enum Failure {
    /// The invocation is wrong: exit 2.
    Usage(String),
    /// Something failed on the way: exit 3.
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

/// Runs `adclick reconcile` and exits with its code (0 only returns).
pub async fn run(args: ReconcileArgs) -> Result<()> {
    let code = match reconcile(&args).await {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(Failure::Usage(m)) => {
            eprintln!("adclick reconcile: {m}");
            2
        }
        Err(Failure::Other(e)) => {
            eprintln!("adclick reconcile: {e:#}");
            3
        }
    };
    if code != 0 {
        // `exit` skips destructors: hand the report over before it.
        let _ = std::io::Write::flush(&mut std::io::stdout());
        std::process::exit(code);
    }
    Ok(())
}

/// One run; `Ok(true)` when every cell matches.
async fn reconcile(args: &ReconcileArgs) -> Result<bool, Failure> {
    let cfg = adclick_runtime::config::load(args.config.as_deref())
        .map_err(|e| Failure::Usage(format!("{e:#}")))?;
    Slicer::new(&cfg.slices).map_err(|e| Failure::Usage(e.to_string()))?;
    let window_ms = cfg.job.window_ms();
    let (from, to) =
        parse_range(&args.from, &args.to, window_ms).map_err(|e| Failure::Usage(e.to_string()))?;
    let store = db::connect(&cfg.database)
        .await
        .context("opening the aggregation database")?;
    let latest = store
        .latest_window_end()
        .await
        .context("reading the latest closed window")?;
    check_closed(to, latest, adclick_runtime::now_ms())
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let report = reconcile_once(args, &cfg, store.as_ref(), from, to).await?;
    if report.ok || !args.repair {
        return Ok(report.ok);
    }
    let Some((lo, hi)) = crate::repair::range_of(&report.differences, window_ms) else {
        return Ok(false);
    };
    let coordinator = args
        .coordinator
        .clone()
        .unwrap_or_else(|| cfg.cluster.coordinator.clone());
    let token_file = args
        .token_file
        .clone()
        .unwrap_or_else(|| PathBuf::from(&cfg.admin.token_file));
    let token = adclick_runtime::admin_auth::client_token(Some(&token_file))
        .map_err(|e| Failure::Usage(format!("{e:#}")))?;
    crate::repair::replay_and_wait(&coordinator, token.as_deref(), store.as_ref(), lo, hi).await?;
    eprintln!("adclick reconcile: reconciling again after the repair");
    let again = reconcile_once(args, &cfg, store.as_ref(), from, to).await?;
    Ok(again.ok)
}

/// One recount and comparison of `[from, to)`: prints the report, writes
/// the JSON file and records the summary.
async fn reconcile_once(
    args: &ReconcileArgs,
    cfg: &Config,
    store: &dyn Store,
    from: i64,
    to: i64,
) -> Result<Report, Failure> {
    let slicer = Slicer::new(&cfg.slices).map_err(|e| Failure::Usage(e.to_string()))?;
    let window_ms = cfg.job.window_ms();
    let started = Instant::now();
    let settings = RecountSettings {
        window_ms,
        from,
        to,
        dedup: cfg.job.dedup,
        limits: cfg.job.limits(),
        now_ms: adclick_runtime::now_ms(),
    };
    let recounter = Recounter::new(settings.clone(), slicer);
    let kafka_cfg = cfg.clone();
    let recounter = tokio::task::spawn_blocking(move || read_topics(&kafka_cfg, recounter))
        .await
        .context("recount task")??;
    let (recount, stats) = recounter.finish();
    let read_secs = started.elapsed().as_secs_f64();
    // The database is read after the topics: every row the job wrote for
    // the records recounted is there by now (the range is closed).
    let db_cells = db_cells(store, from, to).await?;
    let comparison = compare(&recount, &db_cells);
    let report = Report::new(&settings, adclick_runtime::now_ms(), stats, comparison);
    print!("{}", report.render());
    eprintln!(
        "adclick reconcile: recounted {} records in {read_secs:.1} s, compared {} cells in {:.1} s total",
        report.recount.records,
        report.summary.cells,
        started.elapsed().as_secs_f64()
    );
    if let Some(path) = &args.json {
        let json = serde_json::to_vec_pretty(&report).context("encoding the JSON report")?;
        std::fs::write(path, json)
            .with_context(|| format!("writing the JSON report to {}", path.display()))?;
    }
    record(store, &report).await?;
    Ok(report)
}

/// The database's rows of the range, keyed like the recount.
async fn db_cells(store: &dyn Store, from: i64, to: i64) -> Result<BTreeMap<CellKey, Value>> {
    let rows = store
        .counts_in_range(from, to)
        .await
        .context("reading the database's counts of the range")?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let v = Value {
                clicks: r.clicks,
                impressions: r.impressions,
            };
            ((r.slice, r.ad_id, r.window_start), v)
        })
        .collect())
}

/// Stores the run's summary for the query service's `/metrics`.
async fn record(store: &dyn Store, report: &Report) -> Result<()> {
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let s = &report.summary;
    let run = ReconcileRun {
        run_at_ms: report.run_at_ms,
        range_from: report.from_ms,
        range_to: report.to_ms,
        cells: n(s.cells),
        matched: n(s.matched),
        mismatched: n(s.mismatched),
        missing_in_db: n(s.missing_in_db),
        missing_in_recount: n(s.missing_in_recount),
    };
    store
        .record_reconcile(&run)
        .await
        .context("storing the run's summary in the database")
}

/// Feeds the recount: the input, then the dead letters and late events
/// (which say what the job did not count). Every topic is read to the end
/// of each partition as the fetch finds it.
///
/// The input goes first so that the job has had the longest time to write
/// the side records of what was read: an input record for the range that
/// arrives while this runs, and that the job has not judged yet, is the one
/// thing that can make a correct database look wrong (see the module doc).
fn read_topics(cfg: &Config, mut r: Recounter) -> Result<Recounter> {
    let k = &cfg.kafka;
    let group = format!("{}-reconcile", cfg.cluster.job_name);
    // The Map reads uncommitted; the side topics are written by the sinks
    // (in transactions when `checkpoint.kafka_transactions`), so only their
    // committed records took effect.
    let read_upto = Topic::open(&k.bootstrap, &group, &k.input_topic, false)?
        .read(|m| r.add_input(m.payload().unwrap_or_default(), m.timestamp().to_millis()))?;
    Topic::open(&k.bootstrap, &group, &k.dlq_topic, true)?.read(|m| {
        r.add_dlq(
            m.key(),
            &headers_of(m),
            m.payload().unwrap_or_default(),
            &k.input_topic,
            &read_upto,
        )
    })?;
    Topic::open(&k.bootstrap, &group, &k.late_topic, true)?
        .read(|m| r.add_late(m.key(), m.payload().unwrap_or_default()))?;
    Ok(r)
}

fn headers_of(m: &BorrowedMessage<'_>) -> HashMap<String, String> {
    m.headers()
        .map(|h| {
            h.iter()
                .map(|h| {
                    let v = String::from_utf8_lossy(h.value.unwrap_or_default());
                    (h.key.to_string(), v.into_owned())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// How long a read may go without a record before it is given up.
const STALL: Duration = Duration::from_secs(60);

/// One topic, read by manual assignment of every partition from its
/// beginning: tansu 0.6.0 returns nothing for a fetch that starts inside a
/// record batch, and a batch recount has to see everything anyway (events
/// may be arbitrarily out of order).
///
/// A partition ends where a fetch response says it does (librdkafka's
/// end-of-partition event), not at a ListOffsets answer taken beforehand:
/// tansu 0.6.0 answers ListOffsets(latest) with the base offset of the most
/// recently written batch plus one, which is short of the end whenever that
/// batch holds several records (and was 0 for a late-topic partition that
/// held one record, in the end-to-end test).
struct Topic {
    bootstrap: String,
    group: String,
    name: String,
    read_committed: bool,
    partitions: Vec<i32>,
}

impl Topic {
    fn open(bootstrap: &str, group: &str, name: &str, read_committed: bool) -> Result<Self> {
        let t = Self {
            bootstrap: bootstrap.to_string(),
            group: group.to_string(),
            name: name.to_string(),
            read_committed,
            partitions: Vec::new(),
        };
        let partitions = partitions_of(&t.consumer()?, bootstrap, name)?;
        Ok(Self { partitions, ..t })
    }

    fn consumer(&self) -> Result<BaseConsumer> {
        adclick_runtime::kafka::client_config(&self.bootstrap)
            .set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("fetch.wait.max.ms", "100")
            .set(
                "isolation.level",
                if self.read_committed {
                    "read_committed"
                } else {
                    "read_uncommitted"
                },
            )
            .create()
            .context("creating Kafka consumer")
    }

    fn assigned(&self) -> Result<BaseConsumer> {
        let consumer = self.consumer()?;
        let mut tpl = TopicPartitionList::new();
        for p in &self.partitions {
            tpl.add_partition_offset(&self.name, *p, adclick_runtime::kafka::PARTITION_START)
                .context("building the assignment")?;
        }
        consumer
            .assign(&tpl)
            .with_context(|| format!("assigning {}", self.name))?;
        Ok(consumer)
    }

    /// Calls `f` on every record up to where each partition ends when the
    /// read gets there. Returns the next offset read of each partition.
    fn read(&self, mut f: impl FnMut(&BorrowedMessage<'_>)) -> Result<HashMap<i32, i64>> {
        let mut open: BTreeSet<i32> = self.partitions.iter().copied().collect();
        let mut next: HashMap<i32, i64> = HashMap::new();
        let consumer = self.assigned()?;
        let mut last_record = Instant::now();
        let mut last_error = None;
        while !open.is_empty() {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    last_record = Instant::now();
                    if open.contains(&m.partition()) {
                        next.insert(m.partition(), m.offset() + 1);
                        f(&m);
                    }
                }
                // The end of a partition as the fetch saw it (its high
                // watermark, or the last stable offset when read_committed).
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    last_record = Instant::now();
                    open.remove(&p);
                }
                Some(Err(e)) => last_error = Some(e),
                None => {}
            }
            if last_record.elapsed() > STALL {
                bail!(
                    "reading {}: no record for {STALL:?}, partitions {open:?} not finished \
                     (last error: {last_error:?})",
                    self.name
                );
            }
        }
        Ok(next)
    }
}

/// Partitions of `topic`, retrying briefly while the broker learns of it.
fn partitions_of(consumer: &BaseConsumer, bootstrap: &str, topic: &str) -> Result<Vec<i32>> {
    let mut last = String::new();
    for _ in 0..10 {
        match consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            Ok(md) => match md.topics().iter().find(|t| t.name() == topic) {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                    return Ok(t.partitions().iter().map(|p| p.id()).collect());
                }
                Some(t) => last = format!("{:?}", t.error()),
                None => last = "not in the metadata".into(),
            },
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    bail!("topic {topic} on {bootstrap} has no partitions ({last})")
}
