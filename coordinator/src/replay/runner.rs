//! The I/O of one replay: probe the input's retained history, read it with
//! a plain consumer from the offsets the broker gives for the start time,
//! drive [`Replayer`], and produce its records and end markers. Runs on a
//! blocking thread beside the live job, with consumers and a producer of
//! its own, so the job's actors never wait for it.

use super::Progress;
use adclick_core::config::Config;
use adclick_core::output::{OutputRecord, ReplayDoneRecord};
use adclick_core::replay::{PartitionHistory, Replayer};
use anyhow::{bail, Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long a read may go without a record or an end-of-partition event.
const STALL: Duration = Duration::from_secs(60);
/// Events per micro-batch, as in a Map actor.
const BATCH: usize = 4096;
/// Deliveries awaited at once.
const IN_FLIGHT: usize = 10_000;

fn consumer(cfg: &Config) -> Result<BaseConsumer> {
    adclick_runtime::kafka::client_config(&cfg.kafka.bootstrap)
        .set("group.id", format!("{}-replay", cfg.cluster.job_name))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "100")
        .set("isolation.level", "read_uncommitted")
        .create()
        .context("creating the replay's Kafka consumer")
}

/// Partitions of the input and what each still holds.
pub fn probe(cfg: &Config) -> Result<BTreeMap<i32, PartitionHistory>> {
    let topic = &cfg.kafka.input_topic;
    let n = adclick_runtime::kafka::partition_count(&cfg.kafka.bootstrap, topic)?;
    let c = consumer(cfg)?;
    let mut tpl = TopicPartitionList::new();
    let mut out = BTreeMap::new();
    for p in 0..n {
        let (low, _) = c
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .with_context(|| format!("reading the offsets of {topic}/{p}"))?;
        out.insert(
            p,
            PartitionHistory {
                low_offset: low.max(0),
                first_timestamp: None,
            },
        );
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .context("building the probe's assignment")?;
    }
    c.assign(&tpl).context("assigning the probe")?;
    // The first record of every partition, or its end when it is empty.
    let mut open: Vec<i32> = out.keys().copied().collect();
    let started = Instant::now();
    while !open.is_empty() && started.elapsed() < Duration::from_secs(30) {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) if open.contains(&m.partition()) => {
                if let Some(h) = out.get_mut(&m.partition()) {
                    h.first_timestamp = m.timestamp().to_millis();
                }
                open.retain(|p| *p != m.partition());
            }
            Some(Err(KafkaError::PartitionEOF(p))) => open.retain(|q| *q != p),
            _ => {}
        }
    }
    if !open.is_empty() {
        bail!("could not read the first record of {topic} partitions {open:?} within 30 s");
    }
    Ok(out)
}

/// Where each partition's read starts: the broker's offset for `start_ms`
/// (offsets-for-times), or the beginning where it has none.
fn start_offsets(
    c: &BaseConsumer,
    topic: &str,
    parts: &[i32],
    start_ms: i64,
) -> TopicPartitionList {
    let mut query = TopicPartitionList::new();
    for p in parts {
        let _ = query.add_partition_offset(topic, *p, Offset::Offset(start_ms));
    }
    let found = c
        .offsets_for_times(query, Duration::from_secs(10))
        .map_err(|e| tracing::warn!("offsets-for-times failed, reading from the beginning: {e}"))
        .ok();
    let mut tpl = TopicPartitionList::new();
    for p in parts {
        let offset = found
            .as_ref()
            .and_then(|f| f.find_partition(topic, *p))
            .map(|e| e.offset())
            .filter(|o| matches!(o, Offset::Offset(x) if *x >= 0))
            .unwrap_or(Offset::Beginning);
        let _ = tpl.add_partition_offset(topic, *p, offset);
    }
    tpl
}

/// Runs the replay to its end; `progress` is updated as it goes.
pub fn run(
    cfg: &Config,
    mut replayer: Replayer,
    parts: &[i32],
    start_ms: i64,
    progress: &Progress,
) -> Result<()> {
    let topic = cfg.kafka.input_topic.clone();
    let c = consumer(cfg)?;
    let tpl = start_offsets(&c, &topic, parts, start_ms);
    let mut total = 0u64;
    for e in tpl.elements() {
        let (low, high) = c
            .fetch_watermarks(&topic, e.partition(), Duration::from_secs(10))
            .unwrap_or((0, 0));
        let from = match e.offset() {
            Offset::Offset(o) => o,
            _ => low,
        };
        total += u64::try_from(high - from).unwrap_or(0);
    }
    progress.update(|i| i.records_total = total);
    c.assign(&tpl).context("assigning the input")?;
    tracing::info!(%topic, ?parts, total, "replay reading the input");

    let producer: FutureProducer = adclick_runtime::kafka::client_config(&cfg.kafka.bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .set("message.timeout.ms", "60000")
        .create()
        .context("creating the replay's producer")?;
    let mut out = Output {
        producer: &producer,
        topic: &cfg.kafka.output_topic,
        pending: Vec::new(),
    };
    let mut last_event = Instant::now();
    let mut last_flush = Instant::now();
    let mut paused = Vec::new();
    while !replayer.all_done() {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last_event = Instant::now();
                let p = m.partition();
                if replayer.partition_done(p) {
                    if !paused.contains(&p) {
                        pause(&c, &topic, p);
                        paused.push(p);
                    }
                    continue;
                }
                replayer.add(
                    p,
                    m.payload().unwrap_or_default(),
                    m.timestamp().to_millis(),
                );
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                last_event = Instant::now();
                replayer.end_partition(p);
            }
            Some(Err(e)) => tracing::warn!("replay read: {e}"),
            None => {}
        }
        if replayer.pending() >= BATCH || last_flush.elapsed() > Duration::from_millis(200) {
            out.send(replayer.flush())?;
            last_flush = Instant::now();
            report(&replayer, progress);
        }
        if last_event.elapsed() > STALL {
            bail!("reading {topic}: nothing for {STALL:?} before every partition was read");
        }
    }
    out.send(replayer.finish())?;
    out.wait()?;
    report(&replayer, progress);
    // Every record is acknowledged: now the end marker, on every partition.
    let partitions = adclick_runtime::kafka::partition_count(&cfg.kafka.bootstrap, out.topic)?;
    let info = progress.snapshot();
    for p in 0..partitions {
        let done = OutputRecord::ReplayDone(ReplayDoneRecord {
            replay_id: info.id.clone(),
            from: info.from_ms,
            to: info.to_ms,
            epoch: info.epoch,
            partitions: u32::try_from(partitions).unwrap_or(0),
            producer: format!("replay-{}", info.id),
        });
        out.send_to(&done, Some(p))?;
    }
    out.wait()?;
    producer
        .flush(Duration::from_secs(30))
        .context("flushing the replay's producer")?;
    Ok(())
}

fn pause(c: &BaseConsumer, topic: &str, p: i32) {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, p);
    if let Err(e) = c.pause(&tpl) {
        tracing::debug!("pausing {topic}/{p}: {e}");
    }
}

fn report(r: &Replayer, progress: &Progress) {
    let s = r.stats().clone();
    let wm = r.watermark();
    progress.update(|i| {
        i.records_read = s.records;
        i.rejected = s.rejected;
        i.late = s.late;
        i.duplicates = s.duplicates;
        i.counts_written = s.counts;
        i.top_n_written = s.top_n;
        i.watermark = wm;
    });
}

/// The replay's writes to the aggregates topic, one record per message
/// (readers keep the newest version of a key, wherever it landed).
struct Output<'a> {
    producer: &'a FutureProducer,
    topic: &'a str,
    pending: Vec<DeliveryFuture>,
}

impl Output<'_> {
    fn send(&mut self, records: Vec<OutputRecord>) -> Result<()> {
        for r in &records {
            self.send_to(r, None)?;
        }
        Ok(())
    }

    fn send_to(&mut self, r: &OutputRecord, partition: Option<i32>) -> Result<()> {
        let key = r.key();
        let payload = serde_json::to_vec(r).context("encoding a replay record")?;
        let mut rec = FutureRecord::to(self.topic).key(&key).payload(&payload);
        if let Some(p) = partition {
            rec = rec.partition(p);
        }
        loop {
            match self.producer.send_result(rec) {
                Ok(f) => break self.pending.push(f),
                Err((
                    KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    back,
                )) => {
                    rec = back;
                    self.wait()?;
                }
                Err((e, _)) => return Err(e).context("producing a replay record"),
            }
        }
        if self.pending.len() >= IN_FLIGHT {
            self.wait()?;
        }
        Ok(())
    }

    /// Waits until every record sent so far is acknowledged.
    fn wait(&mut self) -> Result<()> {
        for f in self.pending.drain(..) {
            futures::executor::block_on(f)
                .context("delivery canceled")?
                .map_err(|(e, _)| e)
                .context("a replay record was not delivered")?;
        }
        Ok(())
    }
}
