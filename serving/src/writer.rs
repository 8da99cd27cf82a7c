//! `adclick writer`: the database writer.
//!
//! It reads every assigned partition of the aggregates topic with
//! `isolation.level = read_committed` (manual assignment, no consumer group),
//! groups records into batches and applies each batch in one database
//! transaction that also stores the next offset of every partition it read.
//! On start it resumes from the offsets stored in the database, never from the
//! broker's, so a crash between "rows written" and "offsets committed" cannot
//! exist. Stored offsets past a partition's end (the topic was recreated)
//! stop it with an error, or with `writer.on_offset_mismatch = "reset"`
//! restart those partitions from their start. Rows carry absolute values with `(epoch, revision)`, and the upsert
//! keeps only newer versions, so records seen twice change nothing.

use crate::batch::BatchBuilder;
use crate::db::{self, Batch, Store};
use crate::gaps::{GapTracker, Seen};
use adclick_core::config::Config;
use adclick_runtime::kafka;
use adclick_runtime::ops::{self, Readiness};
use adclick_runtime::shutdown::CancellationToken;
use anyhow::{Context, Result};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::Instrument;

/// Runs the writer until `shutdown` is cancelled; the batch in flight is
/// flushed first.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> Result<()> {
    let ready = Readiness::default();
    let ops_addr = cfg
        .writer
        .ops_addr
        .parse()
        .with_context(|| format!("writer.ops_addr {:?}", cfg.writer.ops_addr))?;
    ops::spawn(ops_addr, ready.clone(), shutdown.clone())?;
    let store = db::connect(&cfg.database)
        .await
        .context("opening the aggregation database")?;
    tracing::info!(backend = store.backend(), "database ready");

    let topic = cfg.kafka.output_topic.clone();
    let partitions = assigned_partitions(&cfg).await?;
    let mut stored = store.load_offsets(&topic).await?;
    // Offsets past a partition's end belong to another topic (recreated, or
    // another cluster's): resuming there would silently skip every record
    // before them.
    let check = (
        cfg.kafka.bootstrap.clone(),
        topic.clone(),
        stored.iter().map(|(p, o)| (*p, *o)).collect(),
        cfg.writer.on_offset_mismatch,
        cfg.writer.resume_rewind_records,
    );
    let reset = tokio::task::spawn_blocking(move || {
        kafka::check_stored_offsets(&check.0, &check.1, &check.2, check.4, check.3, "writer")
    })
    .await??;
    for p in reset {
        stored.remove(&p);
    }
    let group = format!("{}-writer", cfg.cluster.job_name);
    let consumer: Arc<StreamConsumer> =
        Arc::new(kafka::consumer(&cfg.kafka.bootstrap, &group, true)?);
    let rewind = cfg.writer.resume_rewind_records;
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        let start = stored.get(p).map_or(kafka::PARTITION_START, |o| {
            Offset::Offset(o.saturating_sub(rewind).max(0))
        });
        tpl.add_partition_offset(&topic, *p, start)
            .context("building partition assignment")?;
    }
    consumer.assign(&tpl).context("assigning partitions")?;
    tracing::info!(%topic, ?partitions, resumed = stored.len(), "writer assigned");

    // Records before these offsets were already applied (see `resume_rewind_records`).
    let resume = stored.clone();
    let mut reader = Reader {
        consumer: consumer.clone(),
        topic: topic.clone(),
        resume,
        gaps: GapTracker::default(),
        recheck_after: (cfg.writer.recheck_gaps_after_ms > 0)
            .then(|| Duration::from_millis(cfg.writer.recheck_gaps_after_ms)),
    };
    for (p, o) in &stored {
        reader.gaps.starts_at(*p, *o);
    }
    let positions: Arc<Mutex<HashMap<i32, i64>>> = Arc::new(Mutex::new(stored));
    tokio::spawn(report_lag(
        consumer.clone(),
        topic.clone(),
        partitions.clone(),
        positions.clone(),
        shutdown.clone(),
    ));
    ready.set(true);

    let max_records = cfg.writer.batch_max_records;
    let max_wait = Duration::from_millis(cfg.writer.batch_max_ms);
    while !shutdown.is_cancelled() {
        let batch = reader.collect(max_records, max_wait, &shutdown).await;
        if batch.is_empty() {
            reader.recheck_due_gaps().await;
            continue;
        }
        let superseded = batch.superseded();
        let records = batch.len();
        let mut batch = batch.finish();
        for (p, next) in &mut batch.offsets {
            *next = reader.gaps.storable(*p, *next);
        }
        let span = tracing::info_span!(
            "batch",
            records,
            counts = batch.counts.len(),
            top_n = batch.top_n.len()
        );
        if !apply_with_retry(store.as_ref(), &batch, superseded, &shutdown)
            .instrument(span)
            .await
        {
            break;
        }
        if let Ok(mut pos) = positions.lock() {
            pos.extend(batch.offsets.iter().copied());
        }
        reader.recheck_due_gaps().await;
    }
    tracing::info!("writer stopped");
    Ok(())
}

/// The configured partitions, or every partition of the topic (creating
/// the job's topics if the coordinator has not yet).
async fn assigned_partitions(cfg: &Config) -> Result<Vec<i32>> {
    if !cfg.writer.partitions.is_empty() {
        return Ok(cfg.writer.partitions.clone());
    }
    kafka::ensure_topics(&cfg.kafka).await?;
    let (bootstrap, topic) = (cfg.kafka.bootstrap.clone(), cfg.kafka.output_topic.clone());
    let n =
        tokio::task::spawn_blocking(move || kafka::partition_count(&bootstrap, &topic)).await??;
    Ok((0..n).collect())
}

/// The consumer and what the writer knows about the offsets it read.
struct Reader {
    consumer: Arc<StreamConsumer>,
    topic: String,
    /// Records before these offsets were already applied (see
    /// `resume_rewind_records`).
    resume: HashMap<i32, i64>,
    gaps: GapTracker,
    /// `writer.recheck_gaps_after_ms`; `None` when 0 (gaps are not tracked).
    recheck_after: Option<Duration>,
}

impl Reader {
    /// Reads one batch: waits for a first record, then takes more until the
    /// batch is full or `max_wait` has passed since the first. An idle
    /// writer also returns, empty, when a gap is due for its re-read.
    async fn collect(
        &mut self,
        max_records: usize,
        max_wait: Duration,
        shutdown: &CancellationToken,
    ) -> BatchBuilder {
        let mut batch = BatchBuilder::new(&self.topic);
        let mut deadline: Option<tokio::time::Instant> = self
            .recheck_after
            .and_then(|d| self.gaps.next_due(d))
            // Past due means its seek failed: retried after the next batch.
            .filter(|due| *due > Instant::now())
            .map(tokio::time::Instant::from_std);
        let mut recovered = 0u64;
        while batch.len() < max_records {
            let recv = self.consumer.recv();
            let msg = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break,
                m = recv => m,
            };
            match msg {
                Ok(m) => {
                    let (partition, offset) = (m.partition(), m.offset());
                    if self.resume.get(&partition).is_some_and(|r| offset < *r) {
                        metrics::counter!("writer_rewound_skipped_total").increment(1);
                        continue;
                    }
                    if self.recheck_after.is_some() {
                        let before = self.gaps.gaps_seen();
                        if self.gaps.observe(partition, offset, Instant::now()) == Seen::Recovered {
                            metrics::counter!("writer_gap_records_recovered_total").increment(1);
                            recovered += 1;
                        }
                        if self.gaps.gaps_seen() > before {
                            metrics::counter!("writer_offset_gaps_total").increment(1);
                        }
                    }
                    // The first message starts the wait, however many
                    // records it holds (a packed run holds many).
                    if batch.is_empty() {
                        deadline = Some(tokio::time::Instant::now() + max_wait);
                    }
                    if let Err(e) = batch.push(partition, offset, m.payload()) {
                        metrics::counter!("writer_bad_records_total").increment(1);
                        tracing::warn!(partition, offset, "skipping record: {e}");
                    }
                }
                Err(e) => {
                    metrics::counter!("writer_kafka_errors_total").increment(1);
                    tracing::warn!("kafka: {e}");
                    if batch.is_empty() {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
        if recovered > 0 {
            tracing::warn!(
                recovered,
                "re-reading an offset gap found records the broker had not served the first time"
            );
        }
        batch
    }

    /// Moves the reader of every partition with a gap older than
    /// `recheck_gaps_after_ms` back to its earliest gap, so what a broker
    /// served late is read after all. A failed seek is retried after the
    /// next batch; the stored offset stays at the gap meanwhile.
    async fn recheck_due_gaps(&mut self) {
        let Some(delay) = self.recheck_after else {
            return;
        };
        for (partition, from) in self.gaps.due(Instant::now(), delay) {
            let (consumer, topic) = (self.consumer.clone(), self.topic.clone());
            let seek = tokio::task::spawn_blocking(move || {
                consumer.seek(
                    &topic,
                    partition,
                    Offset::Offset(from),
                    Duration::from_secs(5),
                )
            })
            .await;
            match seek {
                Ok(Ok(())) => {
                    self.gaps.rechecking(partition);
                    metrics::counter!("writer_gap_rereads_total").increment(1);
                    tracing::debug!(partition, from, "re-reading an offset gap");
                }
                Ok(Err(e)) => tracing::warn!(partition, from, "seeking back to a gap: {e}"),
                Err(e) => tracing::warn!(partition, from, "seeking back to a gap: {e}"),
            }
        }
    }
}

/// Applies `batch`, retrying database errors until it succeeds. Returns
/// false when shutdown came first; the batch is then simply re-read on the
/// next start, because its offsets were not stored.
async fn apply_with_retry(
    store: &dyn Store,
    batch: &Batch,
    superseded: u64,
    shutdown: &CancellationToken,
) -> bool {
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = Instant::now();
        match store.apply(batch).await {
            Ok(applied) => {
                let stale = superseded
                    + (batch.counts.len() as u64).saturating_sub(applied.counts_written)
                    + (batch.top_n.len() as u64).saturating_sub(applied.top_n_written);
                metrics::histogram!("writer_batch_seconds").record(started.elapsed().as_secs_f64());
                metrics::counter!("writer_batches_total").increment(1);
                metrics::counter!("writer_rows_written_total", "kind" => "count")
                    .increment(applied.counts_written);
                metrics::counter!("writer_rows_written_total", "kind" => "top_n")
                    .increment(applied.top_n_written);
                metrics::counter!("writer_stale_skipped_total").increment(stale);
                if applied.replays_completed > 0 {
                    metrics::counter!("writer_replays_completed_total")
                        .increment(applied.replays_completed);
                    metrics::counter!("writer_rows_superseded_total")
                        .increment(applied.rows_superseded);
                    tracing::info!(
                        replays = applied.replays_completed,
                        deleted = applied.rows_superseded,
                        "replay complete in the database; rows it did not produce deleted"
                    );
                }
                tracing::debug!(
                    written = applied.counts_written + applied.top_n_written,
                    stale,
                    "batch committed"
                );
                return true;
            }
            Err(e) => {
                metrics::counter!("writer_db_errors_total").increment(1);
                tracing::warn!(
                    retry_in_ms = backoff.as_millis() as u64,
                    "batch failed: {e}"
                );
                tokio::select! {
                    _ = shutdown.cancelled() => return false,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Publishes `writer_lag_records{partition}`: high watermark minus the next
/// offset the database has stored.
async fn report_lag(
    consumer: Arc<StreamConsumer>,
    topic: String,
    partitions: Vec<i32>,
    positions: Arc<Mutex<HashMap<i32, i64>>>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        let (c, t, parts) = (consumer.clone(), topic.clone(), partitions.clone());
        let highs = tokio::task::spawn_blocking(move || {
            parts
                .iter()
                .filter_map(|p| {
                    c.fetch_watermarks(&t, *p, Duration::from_secs(2))
                        .ok()
                        .map(|(_, high)| (*p, high))
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let pos = positions.lock().map(|p| p.clone()).unwrap_or_default();
        for (p, high) in highs {
            let next = pos.get(&p).copied().unwrap_or(0);
            metrics::gauge!("writer_lag_records", "partition" => p.to_string())
                .set((high - next).max(0) as f64);
        }
    }
}
